"""Pure-PyTorch versions of the ops: the fallback backend and the tests' second opinion.

Every function but :func:`count_above` (a count, see its docstring) follows the numerical
contract in docs/architecture.md: inputs float32/float16/bfloat16,
reduction over the last dim in float32, output float32 of shape ``logits.shape[:-1]``
(``[N, M]`` for :func:`pairwise_kl`).

* ``-inf`` entries are masked: they contribute exactly 0.
* A row that is all ``-inf`` (or has length 0) gives NaN.
* A row containing NaN or ``+inf`` gives NaN.
* KL is ``+inf`` where q is masked and p is not.
* Tiny negative KL from rounding is clamped to 0 (KL is non-negative by definition).

Rows are processed in chunks so the extra memory stays bounded (about
``chunk_elements`` float32 temporaries), whatever the number of rows.
"""

from __future__ import annotations

import math

import torch

from lenskit.errors import InputError

__all__ = [
    "entropy",
    "entropy_lse",
    "kl_div",
    "pairwise_kl",
    "count_above",
    "DEFAULT_CHUNK_ELEMENTS",
]

#: Elements per temporary (float32) in the chunked loops: 2^24 elements = 64 MiB.
DEFAULT_CHUNK_ELEMENTS = 1 << 24

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_NEG_BIG = torch.finfo(torch.float32).min


def check_logits(name: str, x: torch.Tensor) -> None:
    """Raise a clear error unless ``x`` is a floating tensor the ops accept."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"lenskit: {name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(
            f"lenskit: {name} must be float32, float16 or bfloat16, got {x.dtype} "
            f"(shape {tuple(x.shape)})"
        )
    if x.dim() < 1:
        raise InputError(
            f"lenskit: {name} must have at least 1 dimension (the vocabulary), got a 0-d tensor"
        )


def check_pair(p: torch.Tensor, q: torch.Tensor, *, same_shape: bool) -> None:
    """Check a (p, q) pair of logits: dtypes, devices and shapes, naming both."""
    check_logits("p_logits", p)
    check_logits("q_logits", q)
    if p.device != q.device:
        raise InputError(f"lenskit: p_logits is on {p.device} but q_logits is on {q.device}")
    if same_shape:
        if p.shape != q.shape:
            raise InputError(
                f"lenskit: p_logits and q_logits must have the same shape, got "
                f"{tuple(p.shape)} and {tuple(q.shape)}"
            )
    else:
        if p.dim() != 2 or q.dim() != 2 or p.shape[1] != q.shape[1]:
            raise InputError(
                f"lenskit: pairwise_kl needs p_logits [N, V] and q_logits [M, V] with the same V, "
                f"got {tuple(p.shape)} and {tuple(q.shape)}"
            )


def check_count_above(logits: torch.Tensor, thresholds: torch.Tensor) -> None:
    """Check count_above's arguments: logits [M, V] and thresholds [M, n], float32 or the
    logits' dtype, on the same device."""
    check_logits("logits", logits)
    if not isinstance(thresholds, torch.Tensor):
        raise TypeError(
            f"lenskit: thresholds must be a torch.Tensor, got {type(thresholds).__name__}"
        )
    if thresholds.dtype not in (torch.float32, logits.dtype):
        raise TypeError(
            f"lenskit: thresholds must be torch.float32 or the dtype of logits ({logits.dtype}), "
            f"got {thresholds.dtype} (shape {tuple(thresholds.shape)})"
        )
    if logits.device != thresholds.device:
        raise InputError(
            f"lenskit: logits is on {logits.device} but thresholds is on {thresholds.device}"
        )
    if logits.dim() != 2 or thresholds.dim() != 2 or logits.shape[0] != thresholds.shape[0]:
        raise InputError(
            f"lenskit: count_above needs logits [M, V] and thresholds [M, n] with the same M, "
            f"got {tuple(logits.shape)} and {tuple(thresholds.shape)}"
        )
    if logits.shape[1] > torch.iinfo(torch.int32).max:
        raise InputError(
            f"lenskit: count_above: the last dim of logits ({logits.shape[1]}) is too long for "
            "int32 counts"
        )


def _row_chunk(n_cols: int, chunk_elements: int) -> int:
    return max(1, chunk_elements // max(1, n_cols))


def _entropy_lse_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(entropy in nats, logsumexp) of softmax over dim -1 of an fp32 [n, V] block."""
    if x.shape[-1] == 0:
        nan = torch.full(x.shape[:-1], float("nan"), dtype=torch.float32, device=x.device)
        return nan, nan.clone()
    m = x.amax(dim=-1, keepdim=True)  # NaN propagates; +inf or all -inf make z NaN below
    z = x - m
    e = z.exp()
    s = e.sum(dim=-1)
    # Masked entries have e == 0 and z == -inf; clamping z keeps their term 0 instead of NaN.
    t = (e * z.clamp_min(_NEG_BIG)).sum(dim=-1)
    h = s.log() - t / s
    lse = m.squeeze(-1) + s.log()
    # An all -inf row has m == -inf: z is NaN there only if V > 0, so force it.
    ok = torch.isfinite(m.squeeze(-1))
    return torch.where(ok, h, torch.nan), torch.where(ok, lse, torch.nan)


def _entropy_rows(x: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of softmax over dim -1 of an fp32 [n, V] block."""
    return _entropy_lse_rows(x)[0]


def _kl_rows(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """KL(softmax(x) || softmax(y)) in nats per row of fp32 [n, V] blocks."""
    if x.shape[-1] == 0:
        return torch.full(x.shape[:-1], float("nan"), dtype=torch.float32, device=x.device)
    mp = x.amax(dim=-1, keepdim=True)
    mq = y.amax(dim=-1, keepdim=True)
    zp = x - mp
    zq = y - mq
    ep = zp.exp()
    sp = ep.sum(dim=-1)
    sq = zq.exp().sum(dim=-1)
    # p_i = 0 contributes 0 even where q_i is masked too (their difference is NaN there).
    u = torch.where(ep > 0, ep * (zp - zq), 0.0).sum(dim=-1)
    kl = (u / sp - sp.log() + sq.log()).clamp_min(0.0)
    p_live_q_dead = ((x > float("-inf")) & (y == float("-inf"))).any(dim=-1)
    kl = torch.where(p_live_q_dead, torch.inf, kl)
    ok = torch.isfinite(mp.squeeze(-1)) & torch.isfinite(mq.squeeze(-1))
    return torch.where(ok, kl, torch.nan)


def entropy(logits: torch.Tensor, *, chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> torch.Tensor:
    """Entropy of softmax(logits) over the last dim, in nats.

    Args:
        logits: ``[..., V]`` float32/float16/bfloat16, any strides.
        chunk_elements: bound on the elements of each fp32 temporary.

    Returns:
        float32 tensor of shape ``logits.shape[:-1]``.
    """
    check_logits("logits", logits)
    lead = logits.shape[:-1]
    v = logits.shape[-1]
    x = logits.reshape(math.prod(lead), v)  # not (-1, v): ambiguous when V == 0
    out = torch.empty(x.shape[0], dtype=torch.float32, device=logits.device)
    step = _row_chunk(v, chunk_elements)
    for i in range(0, x.shape[0], step):
        out[i : i + step] = _entropy_rows(x[i : i + step].float())
    return out.reshape(lead)


def entropy_lse(
    logits: torch.Tensor, *, chunk_elements: int = DEFAULT_CHUNK_ELEMENTS
) -> tuple[torch.Tensor, torch.Tensor]:
    """Entropy of softmax(logits) and logsumexp(logits) over the last dim, from one pass.

    ``-inf`` entries contribute 0 to both sums (lse = max + log sum exp(x - max)); a row that
    is all ``-inf``, empty, or holds a NaN or ``+inf`` gives NaN in both outputs.

    Args:
        logits: ``[..., V]`` float32/float16/bfloat16, any strides.
        chunk_elements: bound on the elements of each fp32 temporary.

    Returns:
        ``(entropy, lse)``: two float32 tensors of shape ``logits.shape[:-1]``, the entropy in
        nats and the log-normaliser in logit units (the same values as :func:`entropy` and
        ``torch.logsumexp(logits.float(), -1)`` on the rows where those are finite).
    """
    check_logits("logits", logits)
    lead = logits.shape[:-1]
    v = logits.shape[-1]
    x = logits.reshape(math.prod(lead), v)  # not (-1, v): ambiguous when V == 0
    ent = torch.empty(x.shape[0], dtype=torch.float32, device=logits.device)
    lse = torch.empty(x.shape[0], dtype=torch.float32, device=logits.device)
    step = _row_chunk(v, chunk_elements)
    for i in range(0, x.shape[0], step):
        ent[i : i + step], lse[i : i + step] = _entropy_lse_rows(x[i : i + step].float())
    return ent.reshape(lead), lse.reshape(lead)


def kl_div(
    p_logits: torch.Tensor, q_logits: torch.Tensor, *, chunk_elements: int = DEFAULT_CHUNK_ELEMENTS
) -> torch.Tensor:
    """KL(softmax(p) || softmax(q)) per row over the last dim, in nats.

    Args:
        p_logits: ``[..., V]`` logits of the reference distribution p.
        q_logits: same shape, logits of q.

    Returns:
        float32 tensor of shape ``p_logits.shape[:-1]``.
    """
    check_pair(p_logits, q_logits, same_shape=True)
    lead = p_logits.shape[:-1]
    v = p_logits.shape[-1]
    x = p_logits.reshape(math.prod(lead), v)
    y = q_logits.reshape(math.prod(lead), v)
    out = torch.empty(x.shape[0], dtype=torch.float32, device=p_logits.device)
    step = _row_chunk(2 * v, chunk_elements)
    for i in range(0, x.shape[0], step):
        out[i : i + step] = _kl_rows(x[i : i + step].float(), y[i : i + step].float())
    return out.reshape(lead)


def _log_softmax_parts(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(p, log p with masked entries set to 0, row ok) for an fp32 [n, V] block."""
    m = x.amax(dim=-1, keepdim=True)
    ok = torch.isfinite(m.squeeze(-1))
    logp = torch.log_softmax(x, dim=-1)
    p = logp.exp()
    logp0 = torch.where(x == float("-inf"), 0.0, logp)
    return p, logp0, ok


def pairwise_kl(
    p_logits: torch.Tensor, q_logits: torch.Tensor, *, chunk_elements: int = DEFAULT_CHUNK_ELEMENTS
) -> torch.Tensor:
    """KL(P_i || Q_j) for every pair of rows, in nats.

    Uses KL(P_i || Q_j) = sum_v p_iv log p_iv - (P @ log Q^T)_ij, one fp32 GEMM per chunk
    (TF32 off, so the cancellation between the two terms stays at fp32 accuracy).

    Args:
        p_logits: ``[N, V]``.
        q_logits: ``[M, V]``.

    Returns:
        float32 ``[N, M]``.
    """
    check_pair(p_logits, q_logits, same_shape=False)
    n, v = p_logits.shape
    m_rows = q_logits.shape[0]
    out = torch.empty(n, m_rows, dtype=torch.float32, device=p_logits.device)
    if n == 0 or m_rows == 0:
        return out
    if v == 0:
        return out.fill_(float("nan"))
    step = _row_chunk(3 * v, chunk_elements)
    prev_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        for j in range(0, m_rows, step):
            y = q_logits[j : j + step].float()
            _, logq0, q_ok = _log_softmax_parts(y)
            q_dead = (y == float("-inf")).float()
            for i in range(0, n, step):
                x = p_logits[i : i + step].float()
                p, logp0, p_ok = _log_softmax_parts(x)
                neg_h = (p * logp0).sum(dim=-1, keepdim=True)
                kl = (neg_h - p @ logq0.T).clamp_min(0.0)
                p_live = (x > float("-inf")).float()
                kl = torch.where((p_live @ q_dead.T) > 0, torch.inf, kl)
                kl = torch.where(p_ok[:, None] & q_ok[None, :], kl, torch.nan)
                out[i : i + step, j : j + step] = kl
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev_tf32
    return out


def count_above(
    logits: torch.Tensor,
    thresholds: torch.Tensor,
    *,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> torch.Tensor:
    """Per row, how many logits exceed each threshold: ``out[m, j] = #{v : logits[m, v] >
    thresholds[m, j]}``, torch's ``>`` (strict; NaN on either side never counts).

    Args:
        logits: ``[M, V]`` float32/float16/bfloat16.
        thresholds: ``[M, n]``, float32 or the dtype of ``logits``.
        chunk_elements: bound on the elements of each (bool) temporary.

    Returns:
        int32 ``[M, n]``.
    """
    check_count_above(logits, thresholds)
    m, v = logits.shape
    n = thresholds.shape[1]
    out = torch.empty(m, n, dtype=torch.int32, device=logits.device)
    step = _row_chunk(v, chunk_elements)
    for i in range(0, m, step):
        x, t = logits[i : i + step], thresholds[i : i + step]
        for j in range(n):
            out[i : i + step, j] = torch.sum(x > t[:, j : j + 1], dim=-1, dtype=torch.int32)
    return out
