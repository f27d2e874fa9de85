"""The CUDA kernels of torch.ops.lenskit.{entropy, entropy_lse, kl_div, pairwise_kl}.

Each op is compared with a float64 oracle written here (independent of lenskit.reference) on
fresh random inputs: dtypes x row counts x vocabulary sizes, -inf masks, large logits,
non-contiguous and misaligned views, plus the edge semantics of the numerical contract
(DESIGN.md), argument errors, torch.library.opcheck, and agreement with the CPU kernels.

Tolerances: rtol 1e-4 with atol 1e-5 (fp32 accumulation of values that are O(1-10); the atol
only matters for results near 0). pairwise_kl uses the one-GEMM identity
KL = sum p log p - (P @ log Q^T), whose fp32 dot products over V entries lose about
sqrt(V) * 2^-24 * |cross-entropy| in absolute terms, so its atol grows with sqrt(V).

Skipped without a GPU.
"""

from __future__ import annotations

import math

import pytest
import torch

import lenskit

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
DTYPE_IDS = ["f32", "f16", "bf16"]
VOCABS = [1, 7, 1271, 32000, 49152, 128256, 262144]
ROWS = [1, 3, 257]
RTOL = 1e-4
ATOL = 1e-5
INF = float("inf")
NAN = float("nan")


def _pairwise_atol(v: int) -> float:
    return ATOL + 2e-6 * math.sqrt(max(v, 1))


# ---------------------------------------------------------------------------------------------
# float64 oracles
# ---------------------------------------------------------------------------------------------


def entropy_f64(x: torch.Tensor) -> torch.Tensor:
    """Entropy in nats over the last dim, computed in float64, contract semantics."""
    x = x.double()
    if x.shape[-1] == 0:
        return torch.full(x.shape[:-1], NAN, dtype=torch.float32, device=x.device)
    bad = (x.isnan() | (x == INF)).any(dim=-1)
    m = x.amax(dim=-1, keepdim=True)
    ok = torch.isfinite(m.squeeze(-1)) & ~bad
    m = torch.where(torch.isfinite(m), m, 0.0)
    z = x - m
    e = z.exp()
    s = e.sum(dim=-1)
    t = torch.where(e > 0, e * z, 0.0).sum(dim=-1)
    h = s.log() - t / s
    return torch.where(ok, h, NAN).float()


def lse_f64(x: torch.Tensor) -> torch.Tensor:
    """logsumexp over the last dim in float64, entropy_lse semantics (NaN where H is NaN)."""
    x = x.double()
    if x.shape[-1] == 0:
        return torch.full(x.shape[:-1], NAN, dtype=torch.float32, device=x.device)
    bad = (x.isnan() | (x == INF)).any(dim=-1)
    m = x.amax(dim=-1, keepdim=True)
    ok = torch.isfinite(m.squeeze(-1)) & ~bad
    m = torch.where(torch.isfinite(m), m, 0.0)
    lse = m.squeeze(-1) + (x - m).exp().sum(dim=-1).log()
    return torch.where(ok, lse, NAN).float()


LSE_RTOL = 1e-5
LSE_ATOL = 1e-5


def check_entropy_lse(x: torch.Tensor) -> None:
    """entropy_lse(x) against float64, and its entropy bit-identical to entropy(x)."""
    ent, lse = entropy_lse(x)
    assert ent.shape == lse.shape == x.shape[:-1]
    check(ent, entropy_f64(x))
    check(lse, lse_f64(x), rtol=LSE_RTOL, atol=LSE_ATOL)
    assert torch.equal(ent.nan_to_num(123.0), entropy(x).nan_to_num(123.0))


def kl_f64(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """KL(softmax(x) || softmax(y)) over the last dim in float64, contract semantics."""
    x = x.double()
    y = y.double()
    if x.shape[-1] == 0:
        return torch.full(x.shape[:-1], NAN, dtype=torch.float32, device=x.device)
    bad = (x.isnan() | (x == INF) | y.isnan() | (y == INF)).any(dim=-1)
    ok = torch.isfinite(x.amax(dim=-1)) & torch.isfinite(y.amax(dim=-1)) & ~bad  # all -inf rows too
    lp = torch.log_softmax(x, dim=-1)
    lq = torch.log_softmax(y, dim=-1)
    p_live = x > -INF
    q_live = y > -INF
    term = torch.where(p_live & q_live, lp.exp() * (lp - lq), 0.0)
    kl = term.sum(dim=-1).clamp_min(0.0)
    kl = torch.where((p_live & ~q_live).any(dim=-1), INF, kl)
    return torch.where(ok, kl, NAN).float()


def pairwise_f64(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    out = torch.empty(p.shape[0], q.shape[0], dtype=torch.float32, device=p.device)
    for j in range(q.shape[0]):
        out[:, j] = kl_f64(p, q[j].expand_as(p))
    return out


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def randn(shape, dtype=torch.float32, *, scale: float = 3.0, seed: int = 0) -> torch.Tensor:
    g = torch.Generator(device="cuda").manual_seed(seed)
    return (torch.randn(shape, generator=g, device="cuda") * scale).to(dtype)


def mask_(x: torch.Tensor, frac: float, *, seed: int) -> torch.Tensor:
    """Set about `frac` of the entries of x to -inf, in place; returns x."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    x[torch.rand(x.shape, generator=g, device="cuda") < frac] = -INF
    return x


def check(actual: torch.Tensor, expected: torch.Tensor, *, rtol=RTOL, atol=ATOL) -> None:
    assert actual.dtype == torch.float32
    assert actual.device == expected.device
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    torch.testing.assert_close(actual.cpu(), expected.cpu(), rtol=rtol, atol=atol, equal_nan=True)


entropy = torch.ops.lenskit.entropy if lenskit.extension_error() is None else None
entropy_lse = torch.ops.lenskit.entropy_lse if lenskit.extension_error() is None else None
kl_div = torch.ops.lenskit.kl_div if lenskit.extension_error() is None else None
pairwise_kl = torch.ops.lenskit.pairwise_kl if lenskit.extension_error() is None else None


@pytest.fixture(autouse=True)
def _cuda_backend_is_built():
    """Every test here is about the CUDA kernels: fail (not skip) when they are missing."""
    if lenskit.backend("cuda") != "cuda":
        pytest.fail(
            "lenskit.backend('cuda') is "
            f"{lenskit.backend('cuda')!r}, expected 'cuda'; "
            f"extension_error: {lenskit.extension_error()!r}"
        )


def test_backend_is_cuda():
    assert lenskit.backend("cuda") == "cuda", lenskit.extension_error()
    assert lenskit.backend(torch.device("cuda", 0)) == "cuda"


# ---------------------------------------------------------------------------------------------
# accuracy: dtypes x rows x vocabulary sizes
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("v", VOCABS)
@pytest.mark.parametrize("n", ROWS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_entropy_matches_float64(dtype, n, v):
    x = randn((n, v), dtype, seed=n * 7 + v)
    check(entropy(x), entropy_f64(x))
    mask_(x, 0.3, seed=v)
    check(entropy(x), entropy_f64(x))


@pytest.mark.parametrize("v", VOCABS)
@pytest.mark.parametrize("n", ROWS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_kl_div_matches_float64(dtype, n, v):
    p = randn((n, v), dtype, seed=n + v)
    q = (p.float() + randn((n, v), seed=n + v + 1, scale=1.0)).to(dtype)
    check(kl_div(p, q), kl_f64(p, q))
    # Masks: p and q masked at the same entries (finite KL) ...
    mask_(p, 0.2, seed=v)
    q[p == -INF] = -INF
    mask_(q, 0.1, seed=v + 1)
    p[q == -INF] = -INF
    check(kl_div(p, q), kl_f64(p, q))
    # ... and q masked where p is live in some rows (+inf there).
    if v > 1:
        q[::2, v // 2] = -INF
        p[::2, v // 2] = 1.0
    check(kl_div(p, q), kl_f64(p, q))


@pytest.mark.parametrize("v", [1, 7, 1271])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_many_rows_small_vocab(dtype, v):
    """70000 rows: more than 65535, so any 1-D grid must loop over rows."""
    n = 70000
    x = randn((n, v), dtype, seed=v)
    mask_(x, 0.1, seed=v + 3)
    check(entropy(x), entropy_f64(x))
    y = randn((n, v), dtype, seed=v + 5)
    y[x == -INF] = -INF
    check(kl_div(x, y), kl_f64(x, y))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_many_rows_block_per_row(dtype):
    """More rows than the capped grid of the one-block-per-row kernels (32 blocks per SM)."""
    n, v = 10000, 4200
    x = randn((n, v), dtype, seed=11)
    check(entropy(x), entropy_f64(x))
    y = randn((n, v), dtype, seed=12)
    check(kl_div(x, y), kl_f64(x, y))


def test_row_threads_override_typo_is_an_error(monkeypatch):
    monkeypatch.setenv("LENSKIT_CUDA_ROW_THREADS", "512")
    with pytest.raises(RuntimeError, match="LENSKIT_CUDA_ROW_THREADS='512'"):
        entropy(randn((2, 4200), torch.float32, seed=0))


@pytest.mark.parametrize("setting", ["256", "1024"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_row_threads_override(monkeypatch, dtype, setting):
    """LENSKIT_CUDA_ROW_THREADS forces the block size of block-per-row launches (the benchmark
    times both): either gives the float64 results, on rows of every block-per-row length."""
    monkeypatch.setenv("LENSKIT_CUDA_ROW_THREADS", setting)
    for v in (4200, 70001, 262144):
        x = mask_(randn((3, v), dtype, seed=v), 0.05, seed=1)
        y = randn((3, v), dtype, seed=v + 1)
        y[x == -INF] = -INF
        check(entropy(x), entropy_f64(x))
        check(entropy_lse(x)[1], lse_f64(x), rtol=LSE_RTOL, atol=LSE_ATOL)
        check(kl_div(x, y), kl_f64(x, y))


@pytest.mark.parametrize("v", [7, 1271, 32000, 262144])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_large_logits(dtype, v):
    """|x| ~ 1e4: exp must be taken relative to the row max (no overflow), ties in 16-bit."""
    scale = 8e3  # keeps 5-sigma draws inside float16's range
    x = randn((5, v), dtype, seed=v, scale=scale)
    check(entropy(x), entropy_f64(x))
    y = (x.float() + randn((5, v), seed=v + 1, scale=0.1 * scale)).to(dtype)
    check(kl_div(x, y), kl_f64(x, y))
    check(kl_div(y, x), kl_f64(y, x))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_mixed_dtypes_kl(dtype):
    p = randn((4, 1000), dtype, seed=1)
    for other in DTYPES:
        q = randn((4, 1000), other, seed=2)
        check(kl_div(p, q), kl_f64(p, q))


# ---------------------------------------------------------------------------------------------
# layouts: non-contiguous, misaligned, strided, expanded, any leading shape
# ---------------------------------------------------------------------------------------------


def _views(base_rows: int, v: int, dtype: torch.dtype, seed: int) -> dict[str, torch.Tensor]:
    wide = randn((base_rows, v + 5), dtype, seed=seed)
    return {
        "offset1": wide[:, 1 : v + 1],  # base off by one element, row stride v + 5
        "offset3": wide[:, 3 : v + 3],
        "transposed": randn((v, base_rows), dtype, seed=seed + 1).t(),
        "last_dim_step2": randn((base_rows, 2 * v), dtype, seed=seed + 2)[:, ::2],
        "collapsible_3d": randn((2, 6, v), dtype, seed=seed + 3)[:, ::2, :],
        "permuted_3d": randn((3, 4, v), dtype, seed=seed + 4).permute(1, 0, 2),
        "row_stride_0": randn((1, v), dtype, seed=seed + 5).expand(base_rows, v),
        "expanded_3d": randn((base_rows, v), dtype, seed=seed + 6)[:, None, :].expand(
            base_rows, 3, v
        ),
        "one_d": randn((v,), dtype, seed=seed + 7),
        "four_d": randn((2, 1, 3, v), dtype, seed=seed + 8),
    }


VIEW_NAMES = [
    "offset1",
    "offset3",
    "transposed",
    "last_dim_step2",
    "collapsible_3d",
    "permuted_3d",
    "row_stride_0",
    "expanded_3d",
    "one_d",
    "four_d",
]


@pytest.mark.parametrize("name", VIEW_NAMES)
@pytest.mark.parametrize("v", [1, 7, 1271, 32001, 131075])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_entropy_views(dtype, v, name):
    views = _views(5, v, dtype, seed=v)
    assert list(views) == VIEW_NAMES
    x = views[name]
    out = entropy(x)
    assert out.shape == x.shape[:-1]
    check(out, entropy_f64(x))


@pytest.mark.parametrize("name", VIEW_NAMES)
@pytest.mark.parametrize("v", [1, 7, 1271, 32001, 131075])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_kl_div_views(dtype, v, name):
    p = _views(5, v, dtype, seed=v)[name]
    q = _views(5, v, dtype, seed=v + 100)[name]
    check(kl_div(p, q), kl_f64(p, q))
    # p and q contiguous vs a view of the other: different strides and alignments per operand.
    qc = q.contiguous()
    check(kl_div(p, qc), kl_f64(p, qc))
    check(kl_div(qc, p), kl_f64(qc, p))


@pytest.mark.parametrize("v", [9, 1271, 65539])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_kl_div_different_misalignment(dtype, v):
    """p and q off a 16-byte boundary by different amounts (no joint vector loads)."""
    wide_p = randn((6, v + 4), dtype, seed=1)
    wide_q = randn((6, v + 4), dtype, seed=2)
    for a in range(4):
        for b in range(4):
            p, q = wide_p[:, a : a + v], wide_q[:, b : b + v]
            check(kl_div(p, q), kl_f64(p, q))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_bad_entries_in_head_body_and_tail(dtype):
    """NaN / +inf / -inf placed in the scalar head, the vector body and the scalar tail."""
    v = 1000
    wide = randn((8, v + 8), dtype, seed=3)
    for offset in (0, 1, 3):
        for pos in (0, 1, v // 2, v - 2, v - 1):
            for bad in (NAN, INF):
                x = wide[:, offset : offset + v].contiguous()  # aligned rows
                x_view = wide.clone()[:, offset : offset + v]  # rows off a 16-byte boundary
                for t in (x, x_view):
                    t[1, pos] = bad
                    t[2, pos] = -INF
                    out = entropy(t)
                    check(out, entropy_f64(t))
                    assert out[1].isnan() and out[2].isfinite()
                    y = randn(t.shape, dtype, seed=pos)
                    check(kl_div(t, y), kl_f64(t, y))
                    check(kl_div(y, t), kl_f64(y, t))


# ---------------------------------------------------------------------------------------------
# edge semantics
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_entropy_edges(dtype):
    # V == 1: entropy exactly 0.
    assert (entropy(randn((5, 1), dtype)) == 0).all()
    # Uniform rows: log V.
    for v in (2, 7, 1271, 262144):
        check(
            entropy(torch.zeros(3, v, dtype=dtype, device="cuda")),
            torch.full((3,), math.log(v), device="cuda"),
        )
    # -inf entries contribute nothing; all -inf rows give NaN; NaN / +inf give NaN.
    x = randn((6, 300), dtype, seed=4)
    padded = torch.cat([x, torch.full((6, 77), -INF, dtype=dtype, device="cuda")], dim=1)
    check(entropy(padded), entropy(x), rtol=1e-6, atol=1e-6)
    x[0] = -INF
    x[1, 5] = NAN
    x[2, 7] = INF
    x[3, :299] = -INF  # a single live entry: 0
    out = entropy(x)
    assert out[:3].isnan().all()
    assert out[3] == 0
    assert out[4:].isfinite().all()
    check(out, entropy_f64(x))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_kl_div_edges(dtype):
    p = randn((8, 500), dtype, seed=5)
    q = randn((8, 500), dtype, seed=6)
    # Identical distributions: exactly 0 (the same per-row arithmetic on both sides).
    assert (kl_div(p, p) == 0).all()
    p[0] = -INF  # p all masked: NaN
    q[1] = -INF  # q all masked: NaN, not +inf
    p[2, 3] = NAN
    q[3, 4] = INF
    q[4, 10] = -INF  # p live there: +inf
    p[5, 10] = -INF
    q[5, 10] = -INF  # masked in both: finite
    p[6, 20] = -INF  # masked in p only: finite
    out = kl_div(p, q)
    assert out[:4].isnan().all()
    assert out[4] == INF
    assert out[5:].isfinite().all()
    check(out, kl_f64(p, q))
    # V == 1: 0.
    assert (kl_div(randn((4, 1), dtype), randn((4, 1), dtype, seed=1)) == 0).all()


def test_kl_div_nonnegative_near_zero():
    """Tiny negative rounding results are clamped: close and shifted distributions give >= 0."""
    p = randn((64, 4096), seed=7)
    close = p + 1e-3 * randn((64, 4096), seed=8, scale=1.0)
    shifted = p + 5.0  # the same distribution
    for q in (close, shifted):
        out = kl_div(p, q)
        assert (out >= 0).all()
        check(out, kl_f64(p, q))


@pytest.mark.parametrize("shape", [(0, 5), (3, 0), (0, 0), (2, 0, 4), (2, 3, 0), (0,)])
def test_empty_and_zero_vocab(shape):
    x = torch.empty(shape, device="cuda")
    out = entropy(x)
    assert out.shape == x.shape[:-1] and out.dtype == torch.float32 and out.is_cuda
    check(out, entropy_f64(x))
    check(kl_div(x, x.clone()), kl_f64(x, x))
    if x.dim() == 2:
        q = torch.empty((4, x.shape[1]), device="cuda")
        out = pairwise_kl(x, q)
        assert out.shape == (x.shape[0], 4)
        check(out, pairwise_f64(x, q))


def test_scalar_output_for_1d_input():
    x = randn((1000,))
    out = entropy(x)
    assert out.shape == ()
    check(out, entropy_f64(x))
    check(kl_div(x, x.flip(0)), kl_f64(x, x.flip(0)))


# ---------------------------------------------------------------------------------------------
# entropy_lse
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("v", VOCABS)
@pytest.mark.parametrize("n", ROWS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_entropy_lse_matches_float64(dtype, n, v):
    x = randn((n, v), dtype, seed=n * 5 + v)
    check_entropy_lse(x)
    check_entropy_lse(mask_(x, 0.3, seed=v))
    check_entropy_lse(randn((n, v), dtype, scale=1e4, seed=v))  # |x| ~ 1e4


@pytest.mark.parametrize("name", VIEW_NAMES)
@pytest.mark.parametrize("v", [1, 7, 1271, 32001, 131075])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_entropy_lse_views(dtype, v, name):
    check_entropy_lse(_views(5, v, dtype, seed=v)[name])


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_entropy_lse_edges(dtype):
    x = randn((7, 300), dtype, seed=4)
    x[0] = -INF
    x[1, 5] = NAN
    x[2, 7] = INF
    x[3, :299] = -INF  # a single live entry: H = 0, lse = that entry
    x[4] = 7.0  # uniform: H = log V, lse = 7 + log V
    ent, lse = entropy_lse(x)
    assert ent[:3].isnan().all() and lse[:3].isnan().all()
    assert ent[3] == 0 and lse[3] == x[3, 299].float()
    assert float(lse[4]) == pytest.approx(7.0 + math.log(300), rel=1e-6)
    assert ent[3:].isfinite().all() and lse[3:].isfinite().all()
    check_entropy_lse(x)
    for shape in [(0, 5), (3, 0), (2, 0, 4), (0,)]:
        e = torch.empty(shape, device="cuda")
        ent, lse = entropy_lse(e)
        assert ent.shape == lse.shape == e.shape[:-1]
        assert ent.isnan().all() and lse.isnan().all()


# ---------------------------------------------------------------------------------------------
# pairwise_kl
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("v", [1, 7, 1271, 32000, 128256])
@pytest.mark.parametrize("nm", [(1, 1), (3, 5), (31, 31)], ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_pairwise_kl_matches_float64(dtype, nm, v):
    n, m = nm
    p = randn((n, v), dtype, seed=v)
    q = randn((m, v), dtype, seed=v + 1)
    check(pairwise_kl(p, q), pairwise_f64(p, q), atol=_pairwise_atol(v))
    mask_(p, 0.2, seed=1)
    mask_(q, 0.2, seed=2)
    q[:, : v // 2] = torch.where(p[0, : v // 2] == -INF, -INF, q[:, : v // 2])
    check(pairwise_kl(p, q), pairwise_f64(p, q), atol=_pairwise_atol(v))


def test_pairwise_kl_masks_and_bad_rows():
    v = 3000
    p = randn((6, v), seed=1)
    q = randn((5, v), seed=2)
    p[0] = -INF  # NaN row
    q[1] = -INF  # NaN column
    p[2, 9] = NAN  # NaN row
    q[3, 11] = INF  # NaN column
    q[4, 100] = -INF  # +inf where p is live at 100 ...
    p[5, 100] = -INF  # ... except row 5
    out = pairwise_kl(p, q)
    assert out[[0, 2]].isnan().all() and out[:, [1, 3]].isnan().all()
    assert (out[[1, 3, 4], 4] == INF).all()
    assert out[5, 4].isfinite()
    check(out, pairwise_f64(p, q), atol=_pairwise_atol(v))


def test_pairwise_kl_agrees_with_kl_div():
    p = randn((7, 5000), torch.bfloat16, seed=3)
    q = randn((4, 5000), torch.float16, seed=4)
    pw = pairwise_kl(p, q)
    for j in range(4):
        check(pw[:, j], kl_div(p.float(), q[j].float().expand(7, -1)), atol=_pairwise_atol(5000))


def test_pairwise_kl_chunks():
    """V = 262144: the 2^24-element temporaries hold 21 rows, so 25 x 25 runs 2 x 2 chunks."""
    v = 262144
    p = randn((25, v), torch.bfloat16, seed=5)
    q = randn((25, v), torch.bfloat16, seed=6)
    check(pairwise_kl(p, q), pairwise_f64(p, q), atol=_pairwise_atol(v))


def test_pairwise_kl_ignores_global_tf32_and_restores_it():
    prev = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = True
        p = randn((16, 32000), seed=7)
        q = (p + randn((16, 32000), seed=8, scale=0.3))[torch.randperm(16, device="cuda")]
        out = pairwise_kl(p, q)
        assert torch.backends.cuda.matmul.allow_tf32 is True
        check(out, pairwise_f64(p, q), atol=_pairwise_atol(32000))
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev


# ---------------------------------------------------------------------------------------------
# errors, devices, streams
# ---------------------------------------------------------------------------------------------


def test_argument_errors_name_what_was_passed():
    x = randn((3, 10))
    with pytest.raises(TypeError, match="int64"):
        entropy(torch.ones(3, 10, dtype=torch.int64, device="cuda"))
    with pytest.raises(TypeError, match="float64"):
        kl_div(x, x.double())
    with pytest.raises(ValueError, match="0-d"):
        entropy(torch.tensor(1.0, device="cuda"))
    with pytest.raises(ValueError, match=r"\[3, 10\].*\[3, 11\]"):
        kl_div(x, randn((3, 11)))
    with pytest.raises(ValueError, match="cpu"):
        kl_div(x, x.cpu())
    with pytest.raises(ValueError, match="cpu"):
        kl_div(x.cpu(), x)
    with pytest.raises(ValueError, match="cpu"):
        pairwise_kl(x, x.cpu())
    with pytest.raises(ValueError, match=r"\[2, 3, 10\]"):
        pairwise_kl(x.reshape(1, 3, 10).expand(2, 3, 10), x)
    with pytest.raises(ValueError, match=r"\[3, 10\].*\[3, 9\]"):
        pairwise_kl(x, randn((3, 9)))


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_second_device():
    x = randn((4, 5000)).to("cuda:1")
    y = randn((4, 5000), seed=1).to("cuda:1")
    assert torch.cuda.current_device() == 0
    out = entropy(x)
    assert out.device == x.device
    check(out, entropy_f64(x))
    check(kl_div(x, y), kl_f64(x, y))
    check(pairwise_kl(x, y), pairwise_f64(x, y), atol=_pairwise_atol(5000))
    with pytest.raises(ValueError, match="cuda:1"):
        kl_div(x, y.to("cuda:0"))


def test_runs_on_the_current_stream():
    x = randn((300, 50000), seed=9)
    expected = entropy_f64(x)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        out = entropy(x)
        kl = kl_div(x, x.flip(-1))
        pw = pairwise_kl(x[:8], x[8:16])
    stream.synchronize()
    check(out, expected)
    check(kl, kl_f64(x, x.flip(-1)))
    check(pw, pairwise_f64(x[:8], x[8:16]), atol=_pairwise_atol(50000))


# ---------------------------------------------------------------------------------------------
# integration: opcheck, public API, CPU agreement, torch.compile
# ---------------------------------------------------------------------------------------------


def _opcheck_cases():
    wide = randn((4, 1280), torch.bfloat16, seed=1)
    return [
        ("f32", randn((3, 1271)), randn((3, 1271), seed=1)),
        ("bf16_misaligned", wide[:, 1:1272], wide[:, 3:1274]),
        ("f16_3d", randn((2, 3, 700), torch.float16), randn((2, 3, 700), torch.float16, seed=2)),
    ]


@pytest.mark.parametrize("case", range(3))
def test_opcheck(case):
    _, p, q = _opcheck_cases()[case]
    torch.library.opcheck(torch.ops.lenskit.entropy.default, (p,))
    torch.library.opcheck(torch.ops.lenskit.entropy_lse.default, (p,))
    torch.library.opcheck(torch.ops.lenskit.kl_div.default, (p, q))
    p2, q2 = p.reshape(-1, p.shape[-1]), q.reshape(-1, q.shape[-1])
    torch.library.opcheck(torch.ops.lenskit.pairwise_kl.default, (p2, q2[:2]))


def test_public_api_uses_the_cuda_kernels():
    x = randn((5, 3000), torch.bfloat16)
    y = randn((5, 3000), torch.bfloat16, seed=1)
    assert torch.equal(lenskit.entropy(x), entropy(x))
    for a, b in zip(lenskit.entropy_lse(x), entropy_lse(x), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(lenskit.kl_div(x, y), kl_div(x, y))
    assert torch.equal(lenskit.pairwise_kl(x, y), pairwise_kl(x, y))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_cuda_agrees_with_cpu_kernels(dtype):
    assert lenskit.backend("cpu") == "cpp", lenskit.extension_error()
    p = mask_(randn((33, 4099), dtype, seed=1), 0.05, seed=2)
    q = randn((33, 4099), dtype, seed=3)
    q[p == -INF] = -INF
    p[3] = -INF
    p[4, 7] = NAN
    q[5, 8] = -INF
    p[5, 8] = 0.0
    check(entropy(p), entropy(p.cpu()).cuda())
    check(entropy_lse(p)[1], entropy_lse(p.cpu())[1].cuda(), rtol=LSE_RTOL, atol=LSE_ATOL)
    check(kl_div(p, q), kl_div(p.cpu(), q.cpu()).cuda())
    check(
        pairwise_kl(p[:9], q[:11]),
        pairwise_kl(p[:9].cpu(), q[:11].cpu()).cuda(),
        atol=_pairwise_atol(4099),
    )


def test_torch_compile():
    x = randn((6, 2000))
    y = randn((6, 2000), seed=1)

    def f(a, b):
        return torch.ops.lenskit.entropy(a) + 2 * torch.ops.lenskit.kl_div(a, b)

    compiled = torch.compile(f, fullgraph=True)
    check(compiled(x, y), f(x, y))
