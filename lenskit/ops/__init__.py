"""The fused ops: ``entropy``, ``entropy_lse``, ``kl_div``, ``pairwise_kl``, ``count_above``
and ``backend``.

When the compiled extension ``lenskit._C`` is importable it registers
``torch.ops.lenskit.{entropy,entropy_lse,kl_div,pairwise_kl,count_above}`` (C++ on CPU, CUDA on
GPUs) and the
functions here call those ops. Otherwise, or with ``LENSKIT_BACKEND=torch``, they call the
pure-PyTorch versions in :mod:`lenskit.ops.reference`, which follow the same contract.
"""

from __future__ import annotations

import os

import torch

from lenskit.errors import InputError
from lenskit.ops import reference

__all__ = [
    "entropy",
    "entropy_lse",
    "kl_div",
    "pairwise_kl",
    "count_above",
    "backend",
    "extension_error",
]

try:
    from lenskit import _C  # noqa: F401  (importing registers torch.ops.lenskit.*)

    _EXTENSION_ERROR: str | None = None
except ImportError as exc:  # the extension was not built: fall back to PyTorch
    _C = None
    _EXTENSION_ERROR = f"{type(exc).__name__}: {exc}"


def extension_error() -> str | None:
    """Why ``lenskit._C`` could not be imported, or None when it was."""
    return _EXTENSION_ERROR


def _has_cuda_kernels() -> bool:
    return _C is not None and bool(torch.ops.lenskit.has_cuda())


def backend(device: str | torch.device = "cpu") -> str:
    """Which implementation serves tensors on ``device``: "cuda", "cpp" or "torch".

    ``LENSKIT_BACKEND=torch`` in the environment forces the PyTorch fallback (``auto`` or
    unset: the compiled ops where they serve the device).

    Raises:
        InputError: ``LENSKIT_BACKEND`` holds anything else (a typo must not go unnoticed).
    """
    forced = os.environ.get("LENSKIT_BACKEND", "").strip().lower()
    if forced not in ("", "auto", "torch"):
        raise InputError(
            f"LENSKIT_BACKEND={os.environ['LENSKIT_BACKEND']!r}: use 'torch' to force the "
            "PyTorch fallback, or 'auto' / unset for the compiled ops"
        )
    if forced == "torch" or _C is None:
        return "torch"
    dev = torch.device(device)
    if dev.type == "cpu":
        return "cpp"
    if dev.type == "cuda" and _has_cuda_kernels():
        return "cuda"
    return "torch"


if _C is not None:

    @torch.library.register_fake("lenskit::entropy")
    def _entropy_fake(logits: torch.Tensor) -> torch.Tensor:
        return logits.new_empty(logits.shape[:-1], dtype=torch.float32)

    @torch.library.register_fake("lenskit::entropy_lse")
    def _entropy_lse_fake(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = logits.shape[:-1]
        return (
            logits.new_empty(shape, dtype=torch.float32),
            logits.new_empty(shape, dtype=torch.float32),
        )

    @torch.library.register_fake("lenskit::kl_div")
    def _kl_div_fake(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
        torch._check(p_logits.shape == q_logits.shape)
        return p_logits.new_empty(p_logits.shape[:-1], dtype=torch.float32)

    @torch.library.register_fake("lenskit::pairwise_kl")
    def _pairwise_kl_fake(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
        torch._check(p_logits.dim() == 2 and q_logits.dim() == 2)
        torch._check(p_logits.shape[1] == q_logits.shape[1])
        return p_logits.new_empty((p_logits.shape[0], q_logits.shape[0]), dtype=torch.float32)

    @torch.library.register_fake("lenskit::count_above")
    def _count_above_fake(logits: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
        torch._check(logits.dim() == 2 and thresholds.dim() == 2)
        torch._check(logits.shape[0] == thresholds.shape[0])
        return logits.new_empty((logits.shape[0], thresholds.shape[1]), dtype=torch.int32)

    def _reference_backward(fn):  # type: ignore[no-untyped-def]
        """Backward of a compiled op: the vector-Jacobian product of its PyTorch reference,
        recomputed from the saved inputs. The forward stays fused, and gradients are the
        fallback's own on every backend (without this they silently came back as None)."""

        def setup_context(ctx, inputs, output):  # type: ignore[no-untyped-def]
            ctx.save_for_backward(*inputs)

        def backward(ctx, *grads):  # type: ignore[no-untyped-def]
            inputs = ctx.saved_tensors
            outputs, vjp = torch.func.vjp(fn, *inputs)
            if isinstance(outputs, tuple):  # entropy_lse: a gradient may be missing
                grads = tuple(
                    torch.zeros_like(o) if g is None else g
                    for o, g in zip(outputs, grads, strict=True)
                )
                return vjp(grads)
            return vjp(grads[0])

        return backward, setup_context

    for _name, _fn in (
        ("entropy", reference.entropy),
        ("entropy_lse", reference.entropy_lse),
        ("kl_div", reference.kl_div),
        ("pairwise_kl", reference.pairwise_kl),
    ):
        _backward, _setup = _reference_backward(_fn)
        torch.library.register_autograd(f"lenskit::{_name}", _backward, setup_context=_setup)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(logits) over the last dim, in nats.

    Args:
        logits: ``[..., V]`` float32/float16/bfloat16, any strides.

    Returns:
        float32 tensor of shape ``logits.shape[:-1]``.
    """
    reference.check_logits("logits", logits)
    if backend(logits.device) == "torch":
        return reference.entropy(logits)
    return torch.ops.lenskit.entropy(logits)


def entropy_lse(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Entropy of softmax(logits) and logsumexp(logits) over the last dim, in one pass.

    The entropy is the same tensor :func:`entropy` returns (bit for bit on the same backend);
    the log-normaliser comes from the same running max and sum. ``-inf`` entries contribute 0;
    a row that is all ``-inf``, empty, or holds a NaN or ``+inf`` gives NaN in both outputs.

    Args:
        logits: ``[..., V]`` float32/float16/bfloat16, any strides.

    Returns:
        ``(entropy, lse)``: float32 tensors of shape ``logits.shape[:-1]``; entropy in nats,
        lse = log sum_v exp(logits[..., v]) in logit units.
    """
    reference.check_logits("logits", logits)
    if backend(logits.device) == "torch":
        return reference.entropy_lse(logits)
    ent, lse = torch.ops.lenskit.entropy_lse(logits)
    return ent, lse


def kl_div(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax(p) || softmax(q)) per row over the last dim, in nats.

    Args:
        p_logits: ``[..., V]`` logits of p (the reference distribution).
        q_logits: same shape, dtype may differ, same device.

    Returns:
        float32 tensor of shape ``p_logits.shape[:-1]``.
    """
    reference.check_pair(p_logits, q_logits, same_shape=True)
    if backend(p_logits.device) == "torch":
        return reference.kl_div(p_logits, q_logits)
    return torch.ops.lenskit.kl_div(p_logits, q_logits)


def pairwise_kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """KL(P_i || Q_j) for all pairs of rows, in nats.

    Args:
        p_logits: ``[N, V]``.
        q_logits: ``[M, V]``.

    Returns:
        float32 ``[N, M]``.
    """
    reference.check_pair(p_logits, q_logits, same_shape=False)
    if backend(p_logits.device) == "torch":
        return reference.pairwise_kl(p_logits, q_logits)
    return torch.ops.lenskit.pairwise_kl(p_logits, q_logits)


def count_above(logits: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """Per row, the number of logits strictly above each threshold, from one read of the row.

    ``out[m, j] = #{v : logits[m, v] > thresholds[m, j]}``: exactly
    ``torch.sum(logits > thresholds[:, j:j+1], dim=-1, dtype=torch.int32)`` for every j
    (compared in float32, which is exact for float16 / bfloat16; NaN on either side never
    counts, ``-inf`` exceeds nothing, nothing exceeds ``+inf``). With ``thresholds`` the
    target logits, ``out`` is each target's 0-based rank (ties share the better rank).
    Not differentiable (an integer count).

    Args:
        logits: ``[M, V]`` float32/float16/bfloat16 (rows of any stride; a last dim that is
            not contiguous is copied).
        thresholds: ``[M, n]`` in logit units, float32 or the dtype of ``logits``, same device.

    Returns:
        int32 ``[M, n]`` counts (``0..V``).

    Raises:
        TypeError: a non-tensor, or a dtype other than the above.
        InputError: shapes that are not ``[M, V]`` / ``[M, n]`` with the same M, or different
            devices.
    """
    reference.check_count_above(logits, thresholds)
    if backend(logits.device) == "torch":
        return reference.count_above(logits, thresholds)
    return torch.ops.lenskit.count_above(logits, thresholds)
