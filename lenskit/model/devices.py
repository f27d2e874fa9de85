"""Devices and dtypes: what ``device=`` and ``dtype=`` accept, checked before a slow load."""

from __future__ import annotations

import os
from typing import Any

import torch

from lenskit.errors import ModelLoadError

__all__ = ["DEVICE_ENV", "default_device"]

#: Environment variable naming the device of the app (and of ``device="env"``).
DEVICE_ENV = "LENSKIT_DEVICE"


def default_device() -> str:
    """The device the app runs models on: ``$LENSKIT_DEVICE`` when set (cpu, cuda, cuda:N,
    mps, xpu, auto), else ``"auto"``: a GPU when torch sees one (CUDA, then MPS), else the
    CPU. The value is checked by :func:`lenskit.load_model`."""
    return os.environ.get(DEVICE_ENV, "").strip() or "auto"


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
