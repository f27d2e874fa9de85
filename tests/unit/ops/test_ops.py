"""Tests of the fused ops on CPU: every op and backend against a float64 oracle written here.

Backends: "cpp" (the extension's best kernels for this CPU), "cpp-avx2" and "cpp-scalar" (the
same op with the kernels capped by LENSKIT_CPU_ISA, so every ISA path is checked on a machine
that has AVX-512) and "torch" (LENSKIT_BACKEND=torch: lenskit/reference.py).
CUDA tests live in tests/test_ops_cuda.py.
"""

from __future__ import annotations

import math
import os

import pytest
import torch

import lenskit

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
BACKENDS = ["cpp", "cpp-avx2", "cpp-scalar", "torch"]
RTOL = 1e-4
ATOL = 2e-6  # absolute floor (nats) where the value is ~0

HAVE_EXT = lenskit.extension_error() is None
FORCED_TORCH = os.environ.get("LENSKIT_BACKEND", "").lower() == "torch"


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    """Selects a backend through the environment; cpp* skip when the extension is absent."""
    name = request.param
    if name == "torch":
        monkeypatch.setenv("LENSKIT_BACKEND", "torch")
        assert lenskit.backend("cpu") == "torch"
        return name
    if not HAVE_EXT or FORCED_TORCH:
        pytest.skip("extension not available or LENSKIT_BACKEND=torch (see test_extension_built)")
    monkeypatch.delenv("LENSKIT_BACKEND", raising=False)
    if name == "cpp":
        monkeypatch.delenv("LENSKIT_CPU_ISA", raising=False)
    else:
        monkeypatch.setenv("LENSKIT_CPU_ISA", name.split("-", 1)[1])
    assert lenskit.backend("cpu") == "cpp"
    return name


# ----------------------------------------------------------------------------- float64 oracle


def ref_entropy(x: torch.Tensor) -> torch.Tensor:
    """Entropy in float64 following the contract (computed from the given, rounded, input)."""
    x = x.double()
    if x.shape[-1] == 0:
        return torch.full(x.shape[:-1], math.nan, dtype=torch.float64)
    m = x.amax(-1, keepdim=True)
    ok = torch.isfinite(m)  # NaN, +inf, all -inf -> not ok
    z = x - torch.where(ok, m, 0.0)
    e = z.exp()
    s = e.sum(-1)
    t = torch.where(e > 0, e * z, 0.0).sum(-1)
    return torch.where(ok.squeeze(-1), s.log() - t / s, math.nan)


def ref_lse(x: torch.Tensor) -> torch.Tensor:
    """logsumexp in float64 following the entropy_lse contract (NaN where entropy is NaN)."""
    x = x.double()
    if x.shape[-1] == 0:
        return torch.full(x.shape[:-1], math.nan, dtype=torch.float64)
    m = x.amax(-1, keepdim=True)
    ok = torch.isfinite(m)
    z = x - torch.where(ok, m, 0.0)
    lse = m.squeeze(-1) + z.exp().sum(-1).log()
    return torch.where(ok.squeeze(-1), lse, math.nan)


LSE_RTOL = 1e-5
LSE_ATOL = 1e-5  # logit units, where lse is ~0


def assert_entropy_lse(x: torch.Tensor, backend: str | None = None) -> None:
    """entropy_lse(x) against the float64 oracle; on cpp* also bit-identical to entropy(x)."""
    ent, lse = lenskit.entropy_lse(x)
    assert_close(ent, ref_entropy(x))
    assert_close(lse, ref_lse(x), rtol=LSE_RTOL, atol=LSE_ATOL)
    if backend is not None and backend.startswith("cpp"):
        assert torch.equal(ent.nan_to_num(123.0), lenskit.entropy(x).nan_to_num(123.0))


def _log_softmax64(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    m = x.amax(-1, keepdim=True)
    ok = torch.isfinite(m)
    z = x - torch.where(ok, m, 0.0)
    return z - z.exp().sum(-1, keepdim=True).log(), ok.squeeze(-1)


def ref_kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(softmax(p) || softmax(q)) in float64 following the contract (broadcasts)."""
    x, y = torch.broadcast_tensors(p.double(), q.double())
    if x.shape[-1] == 0:
        return torch.full(x.shape[:-1], math.nan, dtype=torch.float64)
    lp, ok_p = _log_softmax64(x)
    lq, ok_q = _log_softmax64(y)
    live = x > -math.inf
    kl = torch.where(live, lp.exp() * (lp - lq), 0.0).sum(-1).clamp_min(0.0)
    kl = torch.where((live & (y == -math.inf)).any(-1), math.inf, kl)
    return torch.where(ok_p & ok_q, kl, math.nan)


def assert_close(out: torch.Tensor, ref: torch.Tensor, rtol=RTOL, atol=ATOL) -> None:
    assert out.dtype == torch.float32
    assert out.shape == ref.shape, (out.shape, ref.shape)
    o = out.double()
    nan_o, nan_r = torch.isnan(o), torch.isnan(ref)
    assert torch.equal(nan_o, nan_r), f"NaN mismatch at {torch.nonzero(nan_o ^ nan_r)[:5]}"
    inf_o, inf_r = torch.isinf(o), torch.isinf(ref)
    assert torch.equal(inf_o, inf_r), f"inf mismatch at {torch.nonzero(inf_o ^ inf_r)[:5]}"
    assert torch.equal(o[inf_o], ref[inf_r])
    fin = torch.isfinite(ref)
    err = (o[fin] - ref[fin]).abs()
    tol = rtol * ref[fin].abs() + atol
    if err.numel():
        worst = int(torch.argmax(err / tol))
        assert bool((err <= tol).all()), (
            f"max error {float(err[worst]):.3g} (tol {float(tol[worst]):.3g}) at value "
            f"{float(ref[fin][worst]):.6g}"
        )


# ----------------------------------------------------------------------------- inputs


def make_logits(shape, dtype, seed, *, scale=3.0, mask_prob=0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * scale
    if mask_prob > 0:
        x = x.masked_fill(torch.rand(shape, generator=g) < mask_prob, -math.inf)
    return x.to(dtype)


N_VALUES = [1, 3, 257]
V_VALUES = [1, 7, 1271, 32000, 49152, 128256, 262144]
# Every (N, V) pair but the large ones: the suite stays fast (<= 2^20 elements per input).
SHAPES = [(n, v) for n in N_VALUES for v in V_VALUES if n * v <= (1 << 20)]


def _id(shape):
    return "x".join(map(str, shape))


# ----------------------------------------------------------------------------- the extension


def test_extension_built():
    """The C++ extension must build and import, unless LENSKIT_BACKEND=torch is set."""
    if FORCED_TORCH:
        pytest.skip("LENSKIT_BACKEND=torch")
    assert lenskit.backend("cpu") == "cpp", (
        f"lenskit._C did not import: {lenskit.extension_error()}"
    )
    assert torch.ops.lenskit.cpu_isa() in ("avx512", "avx2", "scalar")
    assert isinstance(torch.ops.lenskit.has_cuda(), bool)


@pytest.mark.skipif(not HAVE_EXT, reason="extension not built")
def test_cpu_isa_override(monkeypatch):
    best = torch.ops.lenskit.cpu_isa()
    monkeypatch.setenv("LENSKIT_CPU_ISA", "scalar")
    assert torch.ops.lenskit.cpu_isa() == "scalar"
    monkeypatch.setenv("LENSKIT_CPU_ISA", "avx512")  # capped at what the CPU has
    assert torch.ops.lenskit.cpu_isa() == best


@pytest.mark.parametrize(
    ("name", "value"),
    [("LENSKIT_CPU_ISA", "avx9"), ("LENSKIT_CPU_PREFETCH", "maybe"), ("LENSKIT_BACKEND", "foo")],
)
def test_bad_backend_environment_is_an_error(monkeypatch, name, value):
    """A typo in a backend switch must fail loudly, not run the default silently."""
    if name != "LENSKIT_BACKEND" and not HAVE_EXT:
        pytest.skip("extension not built")
    monkeypatch.delenv("LENSKIT_BACKEND", raising=False)
    monkeypatch.setenv(name, value)
    with pytest.raises((ValueError, RuntimeError), match=f"{name}='{value}'"):
        lenskit.entropy(torch.zeros(2, 8))


def _cpu_vendor_is_intel() -> bool | None:
    try:
        with open("/proc/cpuinfo") as f:
            return "GenuineIntel" in f.read()
    except OSError:
        return None


@pytest.mark.skipif(not HAVE_EXT, reason="extension not built")
def test_prefetch_choice(monkeypatch):
    """The CPU kernels prefetch by default on Intel CPUs only; LENSKIT_CPU_PREFETCH=1/0
    overrides."""
    monkeypatch.delenv("LENSKIT_CPU_ISA", raising=False)
    monkeypatch.delenv("LENSKIT_CPU_PREFETCH", raising=False)
    vector = torch.ops.lenskit.cpu_isa() != "scalar"
    intel = _cpu_vendor_is_intel()
    if intel is not None:
        assert torch.ops.lenskit.cpu_prefetch() == (vector and intel)
    monkeypatch.setenv("LENSKIT_CPU_PREFETCH", "1")
    assert torch.ops.lenskit.cpu_prefetch() == vector
    monkeypatch.setenv("LENSKIT_CPU_PREFETCH", "0")
    assert not torch.ops.lenskit.cpu_prefetch()
    monkeypatch.setenv("LENSKIT_CPU_ISA", "scalar")  # no prefetching variant there
    monkeypatch.setenv("LENSKIT_CPU_PREFETCH", "1")
    assert not torch.ops.lenskit.cpu_prefetch()


def _bit_identical(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same values bit for bit, NaN where the other has NaN."""
    nan = torch.isnan(a)
    return torch.equal(nan, torch.isnan(b)) and torch.equal(a[~nan], b[~nan])


def _kl_variety(dtype_p: torch.dtype, dtype_q: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Row pairs that take every KL code path: several blocks and a tail, masks, ramps within
    and beyond the slack, large magnitudes, NaN, +inf and q-dead rows."""
    v = 5 * 1024 + 13
    g = torch.Generator().manual_seed(7)
    p = torch.randn(12, v, generator=g) * 3
    q = torch.randn(12, v, generator=g) * 3
    mask = torch.rand(12, v, generator=g) < 0.1
    p[1:3] = p[1:3].masked_fill(mask[1:3], -INF)
    q[2:4] = q[2:4].masked_fill(mask[2:4], -INF)  # row 3: q-dead (+inf)
    p[4] = torch.linspace(-30, 30, v)  # rises by ~6 logits a block: within the slack
    q[4] = p[4] + 0.01 * q[4]
    p[5] = torch.linspace(-300, 300, v)  # beyond it: blocks redone
    q[5] = p[5].flip(-1)
    p[6] *= 1e4
    q[6] *= 1e4
    p[7, v - 3] = NAN
    q[8, v // 2] = INF
    p[9, : v // 2] = -INF
    q[9, : v // 2] = -INF
    q[10] = p[10]  # KL(p, p) == 0 (when p and q have the same dtype)
    p[11, v // 2 :] = -INF  # the second half masked in both (the two-half code's empty state)
    q[11, v // 2 :] = -INF
    return p.to(dtype_p), q.to(dtype_q)


@pytest.mark.skipif(not HAVE_EXT or FORCED_TORCH, reason="extension not built")
@pytest.mark.parametrize("isa", ["avx512", "avx2"])
@pytest.mark.parametrize(
    "dtypes",
    [
        (torch.float32, torch.float32),
        (torch.bfloat16, torch.bfloat16),
        (torch.float16, torch.float16),
        (torch.float32, torch.bfloat16),
        (torch.bfloat16, torch.float16),
    ],
    ids=lambda d: f"{str(d[0])[6:]}-{str(d[1])[6:]}",
)
def test_kl_prefetch_variants(monkeypatch, isa, dtypes):
    """Both KL kernels (with and without the prefetch) match the oracle, whichever of them this
    CPU runs by default (the rest of the suite tests that one), and each other bit for bit,
    except where the prefetching code reads a row as two halves (fp32 rows on AVX-512: other
    sums, so rounding-level differences)."""
    monkeypatch.setenv("LENSKIT_CPU_ISA", isa)
    if torch.ops.lenskit.cpu_isa() != isa:
        pytest.skip(f"this CPU has no {isa}")
    p, q = _kl_variety(*dtypes)
    # Row-strided views too (the rows of a wider buffer).
    wide_p = torch.full((p.shape[0], p.shape[1] + 40), -INF, dtype=p.dtype)
    wide_p[:, 20 : 20 + p.shape[1]] = p
    p_view = wide_p[:, 20 : 20 + p.shape[1]]
    outs = {}
    for flag in ("1", "0"):
        monkeypatch.setenv("LENSKIT_CPU_PREFETCH", flag)
        assert torch.ops.lenskit.cpu_prefetch() == (flag == "1")
        outs[flag] = lenskit.kl_div(p, q)
        assert_close(outs[flag], ref_kl(p, q))
        assert _bit_identical(lenskit.kl_div(p_view, q), outs[flag])
    if isa == "avx512" and dtypes == (torch.float32, torch.float32):
        assert torch.equal(outs["1"].isnan(), outs["0"].isnan())
        assert_close(outs["1"], outs["0"].double(), rtol=1e-5, atol=1e-6)
        assert not _bit_identical(outs["1"], outs["0"])  # the two-half code did run
    else:
        assert _bit_identical(outs["1"], outs["0"])
    assert float(outs["1"][3]) == INF
    if dtypes[0] == dtypes[1]:
        assert float(outs["1"][10]) == 0.0


@pytest.mark.skipif(not HAVE_EXT or FORCED_TORCH, reason="extension not built")
@pytest.mark.parametrize("isa", ["avx512", "avx2"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("v", [1024 + 48, 2048 + 24])
def test_kl_p_masked_last_block(monkeypatch, isa, dtype, v):
    """p all -inf in the last (short) block while q is live there: the careful code's p-masked
    branch still sums q over every vector (the 24 / 48 element tails take its one-vector
    loop on both ISAs)."""
    monkeypatch.setenv("LENSKIT_CPU_ISA", isa)
    if torch.ops.lenskit.cpu_isa() != isa:
        pytest.skip(f"this CPU has no {isa}")
    g = torch.Generator().manual_seed(v)
    p = torch.randn(3, v, generator=g) * 3
    q = torch.randn(3, v, generator=g) * 3
    p[:, v // 1024 * 1024 :] = -INF
    p, q = p.to(dtype), q.to(dtype)
    for flag in ("1", "0"):
        monkeypatch.setenv("LENSKIT_CPU_PREFETCH", flag)
        assert_close(lenskit.kl_div(p, q), ref_kl(p, q))


def _entropy_variety(v: int, dtype: torch.dtype) -> torch.Tensor:
    """Rows for the two-stream entropy code (a segment read as two halves): maxima in either
    half, a half all masked, NaN / +inf in one half only, one-hot, uniform, large magnitudes,
    the second half's first block masked."""
    g = torch.Generator().manual_seed(v)
    x = torch.randn(13, v, generator=g) * 3
    x[1] = x[1].masked_fill(torch.rand(v, generator=g) < 0.1, -INF)
    x[2] = torch.linspace(-300, 300, v)  # the max in the second half, rising block by block
    x[3] = torch.linspace(300, -300, v)
    x[4, : v // 2] = -INF
    x[5, v // 2 :] = -INF
    x[6] = -INF
    x[6, v - 1] = 2.0  # one-hot at the very end: entropy exactly 0
    x[7, v - 2] = NAN
    x[8, 3] = INF
    x[9] = 0.5  # uniform: log V
    x[10] *= 1e4
    x[11, v // 2 + 5] = 60.0  # one dominant entry in the second half
    # The second half (from whole blocks of kPairBlock = 1024 past the middle) starts with an
    # all-masked block: it must not take the fast code before its own max is finite.
    half = (-(-v // 1024) + 1) // 2 * 1024
    x[12, half : half + 1024] = -INF
    return x.to(dtype)


@pytest.mark.skipif(not HAVE_EXT or FORCED_TORCH, reason="extension not built")
@pytest.mark.parametrize("isa", ["avx512", "avx2"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("v", [3000, 4096, 5 * 1024 + 13, 7 * 1024, 49152])
def test_entropy_prefetch_variants(monkeypatch, isa, dtype, v):
    """Entropy with and without the prefetching (two-stream) kernels: both match the oracle,
    entropy_lse's entropy equals entropy's bit for bit under each, and the special rows keep
    their exact values."""
    monkeypatch.setenv("LENSKIT_CPU_ISA", isa)
    if torch.ops.lenskit.cpu_isa() != isa:
        pytest.skip(f"this CPU has no {isa}")
    x = _entropy_variety(v, dtype)
    for flag in ("1", "0"):
        monkeypatch.setenv("LENSKIT_CPU_PREFETCH", flag)
        assert torch.ops.lenskit.cpu_prefetch() == (flag == "1")
        out = lenskit.entropy(x)
        assert_close(out, ref_entropy(x))
        assert_entropy_lse(x, backend="cpp")
        assert float(out[6]) == 0.0
        assert bool(torch.isnan(out[7])) and bool(torch.isnan(out[8]))
        assert float(out[9]) == pytest.approx(math.log(v), rel=1e-5)


# ----------------------------------------------------------------------------- accuracy


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=_id)
def test_entropy_random(backend, shape, dtype):
    x = make_logits(shape, dtype, seed=shape[0] * 7 + shape[1], mask_prob=0.1)
    assert_close(lenskit.entropy(x), ref_entropy(x))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=_id)
def test_kl_div_random(backend, shape, dtype):
    seed = shape[0] * 11 + shape[1]
    p = make_logits(shape, dtype, seed=seed)
    q = make_logits(shape, dtype, seed=seed + 1)
    assert_close(lenskit.kl_div(p, q), ref_kl(p, q))
    # The same random mask on both: finite KL, masked entries skipped on both sides.
    mask = make_logits(shape, torch.float32, seed=seed + 2, mask_prob=0.1) == -math.inf
    p, q = p.masked_fill(mask, -math.inf), q.masked_fill(mask, -math.inf)
    assert_close(lenskit.kl_div(p, q), ref_kl(p, q))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("nmv", [(1, 1, 1), (3, 4, 7), (17, 5, 1271), (3, 2, 32000)], ids=_id)
def test_pairwise_kl_random(backend, nmv, dtype):
    n, m, v = nmv
    p = make_logits((n, v), dtype, seed=n + v, mask_prob=0.05)
    q = make_logits((m, v), dtype, seed=m + v + 1)
    out = lenskit.pairwise_kl(p, q)
    assert out.shape == (n, m)
    assert_close(out, ref_kl(p[:, None, :], q[None, :, :]), atol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("v", [1000, 5000])  # 5000: several blocks (the single-pass code)
def test_kl_div_mixed_dtypes(backend, dtype, v):
    p = make_logits((3, v), torch.float32, seed=1)
    q = make_logits((3, v), dtype, seed=2)
    assert_close(lenskit.kl_div(p, q), ref_kl(p, q))
    assert_close(lenskit.kl_div(q, p), ref_kl(q, p))
    # bf16 rows are loaded in another element order on some ISAs: pairing must survive that.
    other = torch.float16 if dtype == torch.bfloat16 else torch.bfloat16
    r = make_logits((3, v), other, seed=3)
    assert_close(lenskit.kl_div(q, r), ref_kl(q, r))
    assert_close(lenskit.kl_div(r, q), ref_kl(r, q))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_large_magnitudes(backend, dtype):
    # |x| ~ 1e4: exp underflows for all but a few entries; the max subtraction must be exact.
    x = make_logits((5, 5000), dtype, seed=3, scale=1e4)
    y = make_logits((5, 5000), dtype, seed=4, scale=1e4)
    assert_close(lenskit.entropy(x), ref_entropy(x))
    assert_close(lenskit.kl_div(x, y), ref_kl(x, y))
    # Near-ties at a large offset: the entropy is not ~0 here.
    z = (1e4 + make_logits((4, 3000), torch.float32, seed=5, scale=1.0)).to(dtype)
    assert_close(lenskit.entropy(z), ref_entropy(z))
    assert_close(lenskit.kl_div(z, z.flip(-1)), ref_kl(z, z.flip(-1)))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_running_max_rescaling(backend, dtype):
    # Increasing logits: the running max grows in every block (the single-pass code hands every
    # block to the two-pass rescale path), and a row whose max sits in its first block (every
    # later block is committed by the single pass).
    # The ramps rise by ~3 (within kl_div's slack: the block is committed against the old max,
    # then rescaled) and by ~30 logits a block (beyond it: the block is redone).
    v = 20000
    for top in (30.0, 300.0):
        up = torch.linspace(-top, top, v)[None].repeat(2, 1)
        up[1] = up[1].flip(-1)
        up = up.to(dtype)
        assert_close(lenskit.entropy(up), ref_entropy(up))
        assert_close(lenskit.kl_div(up, up.flip(0)), ref_kl(up, up.flip(0)))
        # Nearly equal p and q with rising maxima: KL ~1e-4, where a wrong shift of u shows.
        g = torch.Generator().manual_seed(int(top))
        near = (up.float() + 0.01 * torch.randn(up.shape, generator=g)).to(dtype)
        assert_close(lenskit.kl_div(up, near), ref_kl(up, near))
        assert_close(lenskit.kl_div(near, up), ref_kl(near, up))


# ----------------------------------------------------------------------------- layouts


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_non_contiguous(backend, dtype):
    base = make_logits((1300, 6), dtype, seed=6)
    views = {
        "transposed": base.t(),  # [6, 1300], stride along V = 6
        "strided_cols": make_logits((4, 2600), dtype, seed=7)[:, ::2],
        "strided_rows": make_logits((8, 1300), dtype, seed=8)[::3],
        "expanded": make_logits((1, 1300), dtype, seed=9).expand(5, 1300),
        "sliced": make_logits((6, 1400), dtype, seed=10)[1:, 50:1350],
    }
    for name, x in views.items():
        assert not x.is_contiguous(), name
        assert_close(lenskit.entropy(x), ref_entropy(x))
        y = make_logits(x.shape, dtype, seed=11)
        assert_close(lenskit.kl_div(x, y), ref_kl(x, y))
        assert_close(lenskit.kl_div(y, x), ref_kl(y, x))
    p = base.t()
    assert_close(lenskit.pairwise_kl(p, p[:3]), ref_kl(p[:, None], p[None, :3]), atol=1e-5)


def test_leading_dims(backend):
    x = make_logits((2, 3, 4, 513), torch.float32, seed=12, mask_prob=0.2)
    y = make_logits((2, 3, 4, 513), torch.float32, seed=13)
    out = lenskit.entropy(x)
    assert out.shape == (2, 3, 4)
    assert_close(out, ref_entropy(x))
    assert_close(lenskit.entropy(x[0, 0, 0]), ref_entropy(x[0, 0, 0]))  # 1-D -> 0-d
    assert lenskit.entropy(x[0, 0, 0]).shape == ()
    y = y.masked_fill(x == -math.inf, -math.inf)
    assert_close(lenskit.kl_div(x, y), ref_kl(x, y))


@pytest.mark.parametrize(
    "shape", [(0,), (0, 5), (2, 0, 7), (5, 0), (2, 0)], ids=lambda s: "x".join(map(str, s))
)
def test_empty(backend, shape):
    x = torch.zeros(shape)
    out = lenskit.entropy(x)
    assert out.shape == shape[:-1] and out.dtype == torch.float32
    assert bool(torch.isnan(out).all())  # V == 0 rows are NaN (no rows: vacuous)
    kl = lenskit.kl_div(x, x)
    assert kl.shape == shape[:-1] and bool(torch.isnan(kl).all())


def test_pairwise_empty(backend):
    assert lenskit.pairwise_kl(torch.zeros(0, 5), torch.zeros(3, 5)).shape == (0, 3)
    assert lenskit.pairwise_kl(torch.zeros(2, 5), torch.zeros(0, 5)).shape == (2, 0)
    out = lenskit.pairwise_kl(torch.zeros(2, 0), torch.zeros(3, 0))
    assert out.shape == (2, 3) and bool(torch.isnan(out).all())


# ----------------------------------------------------------------------------- edge semantics

NAN, INF = math.nan, math.inf
V_EDGE = [1, 5, 16, 3000, 20000]  # 3000 / 20000: a vector tail, several blocks


@pytest.mark.parametrize("v", V_EDGE)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_entropy_edges(backend, v, dtype):
    g = torch.Generator().manual_seed(v)
    rows = []
    base = torch.randn(v, generator=g)
    rows.append(torch.full((v,), -INF))  # all masked -> NaN
    for pos in {0, v // 2, v - 1}:
        r = base.clone()
        r[pos] = NAN
        rows.append(r)  # NaN anywhere -> NaN
        r = base.clone()
        r[pos] = INF
        rows.append(r)  # +inf anywhere -> NaN
        r = torch.full((v,), -INF)
        r[pos] = 2.5
        rows.append(r)  # one live entry -> 0
        r = torch.full((v,), -INF)
        r[pos] = NAN
        rows.append(r)  # NaN among masked entries -> NaN
        if v > 1:
            r = base.clone()
            r[pos] = -INF
            rows.append(r)  # one masked entry (maybe in a late block only) -> finite
    rows.append(torch.full((v,), 7.0))  # uniform -> log V
    r = base.clone()
    r[: v // 2] = -INF  # masked first half (all -inf leading blocks)
    rows.append(r)
    x = torch.stack(rows).to(dtype)
    out = lenskit.entropy(x)
    assert_close(out, ref_entropy(x))
    assert bool(torch.isnan(out[0]))
    assert float(out[-2]) == pytest.approx(math.log(v), rel=1e-5)
    if v == 1:
        assert float(lenskit.entropy(torch.tensor([[3.0]], dtype=dtype))) == 0.0


@pytest.mark.parametrize("v", V_EDGE)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_kl_div_edges(backend, v, dtype):
    g = torch.Generator().manual_seed(v + 1)
    bp, bq = torch.randn(v, generator=g), torch.randn(v, generator=g)
    cases = []  # (p row, q row, expected class)
    cases.append((torch.full((v,), -INF), bq, "nan"))  # p all masked
    cases.append((bp, torch.full((v,), -INF), "nan"))  # q all masked
    for pos in {0, v // 2, v - 1}:
        for bad in (NAN, INF):
            r = bp.clone()
            r[pos] = bad
            cases.append((r, bq, "nan"))
            r = bq.clone()
            r[pos] = bad
            cases.append((bp, r, "nan"))
        if v == 1:
            continue  # a masked entry would mask the whole row
        r = bq.clone()
        r[pos] = -INF  # q masked where p is live -> +inf
        cases.append((bp, r, "inf"))
        rp = bp.clone()
        rp[pos] = -1e4  # p live but its probability underflows: still +inf
        cases.append((rp, r, "inf"))
        rp = bp.clone()
        rp[pos] = -INF  # both masked there: finite
        cases.append((rp, r, "finite"))
        r2 = r.clone()
        r2[(pos + 1) % v] = NAN  # q-dead and NaN: NaN wins
        cases.append((bp, r2, "nan"))
    cases.append((bp, bp, "zero"))
    p = torch.stack([c[0] for c in cases]).to(dtype)
    q = torch.stack([c[1] for c in cases]).to(dtype)
    out = lenskit.kl_div(p, q)
    assert_close(out, ref_kl(p, q))
    for k, (_, _, kind) in enumerate(cases):
        val = float(out[k])
        if kind == "nan":
            assert math.isnan(val), k
        elif kind == "inf":
            assert val == INF, k
        elif kind == "zero":
            assert val == 0.0, k
        else:
            assert math.isfinite(val) and val >= 0, k
    one = torch.tensor([[1.5]], dtype=dtype)
    assert float(lenskit.kl_div(one, one * 2)) == 0.0  # V == 1


def test_pairwise_kl_edges(backend):
    v = 1000
    g = torch.Generator().manual_seed(0)
    p = torch.randn(4, v, generator=g)
    q = torch.randn(5, v, generator=g)
    p[1] = -INF  # all masked -> NaN row
    p[2, 10] = NAN
    q[3, 7] = -INF  # masked where p is live -> +inf column (except NaN rows)
    q[4, 0] = INF  # -> NaN column
    out = lenskit.pairwise_kl(p, q)
    assert_close(out, ref_kl(p[:, None], q[None]), atol=1e-5)
    assert bool(torch.isnan(out[1]).all()) and bool(torch.isnan(out[:, 4]).all())
    assert float(out[0, 3]) == INF and float(out[3, 3]) == INF


def test_split_rows_across_threads(backend):
    """Fewer rows than threads: the vocabulary is split and partial states merged."""
    prev = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        v = 70000
        g = torch.Generator().manual_seed(1)
        p = torch.randn(3, v, generator=g) * 3
        q = torch.randn(3, v, generator=g) * 3
        p[0, : v // 2] = -INF  # first segments all masked
        q[0, : v // 2] = -INF
        p[1, v - 5] = 40.0  # the max sits in the last segment
        q[2, : v // 3] = -INF  # q masked in the first segment only, p live there -> inf
        assert_close(lenskit.entropy(p), ref_entropy(p))
        assert_close(lenskit.kl_div(p, q), ref_kl(p, q))
        assert_close(lenskit.kl_div(q, p), ref_kl(q, p))
        p2 = p.clone()
        p2[1, v - 3] = NAN  # NaN in the last segment only
        assert bool(torch.isnan(lenskit.entropy(p2)[1]))
        assert bool(torch.isnan(lenskit.kl_div(p2, q)[1]))
        one = torch.randn(1, 262144, generator=g)
        assert_close(lenskit.entropy(one), ref_entropy(one))
        assert_close(lenskit.kl_div(one, one.flip(-1)), ref_kl(one, one.flip(-1)))
    finally:
        torch.set_num_threads(prev)


# ----------------------------------------------------------------------------- entropy_lse


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=_id)
def test_entropy_lse_random(backend, shape, dtype):
    x = make_logits(shape, dtype, seed=shape[0] * 13 + shape[1], mask_prob=0.1)
    assert_entropy_lse(x, backend)
    assert_entropy_lse(make_logits(shape, dtype, seed=shape[1]), backend)  # no mask


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_entropy_lse_large_magnitudes(backend, dtype):
    assert_entropy_lse(make_logits((5, 5000), dtype, seed=3, scale=1e4), backend)
    z = (1e4 + make_logits((4, 3000), torch.float32, seed=5, scale=1.0)).to(dtype)
    assert_entropy_lse(z, backend)
    assert_entropy_lse(-z, backend)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_entropy_lse_layouts(backend, dtype):
    views = [
        make_logits((1300, 6), dtype, seed=6).t(),
        make_logits((4, 2600), dtype, seed=7)[:, ::2],
        make_logits((8, 1300), dtype, seed=8)[::3],
        make_logits((1, 1300), dtype, seed=9).expand(5, 1300),
        make_logits((6, 1400), dtype, seed=10)[1:, 50:1350],
    ]
    for x in views:
        assert not x.is_contiguous()
        assert_entropy_lse(x, backend)
    x = make_logits((2, 3, 4, 513), dtype, seed=12, mask_prob=0.2)
    ent, lse = lenskit.entropy_lse(x)
    assert ent.shape == lse.shape == (2, 3, 4)
    assert_entropy_lse(x, backend)
    ent1, lse1 = lenskit.entropy_lse(x[0, 0, 0])  # 1-D -> 0-d
    assert ent1.shape == lse1.shape == ()
    # Up- and down-running maxima (the rescale path), and a thread-split single long row.
    up = torch.linspace(-30, 30, 20000)[None].repeat(2, 1)
    up[1] = up[1].flip(-1)
    assert_entropy_lse(up.to(dtype), backend)


def test_entropy_lse_split_rows_across_threads(backend):
    prev = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        g = torch.Generator().manual_seed(2)
        p = torch.randn(3, 70000, generator=g) * 3
        p[0, :35000] = -INF
        p[1, 69995] = 40.0
        assert_entropy_lse(p, backend)
        assert_entropy_lse(torch.randn(1, 262144, generator=g), backend)
        p[2, 69997] = NAN
        ent, lse = lenskit.entropy_lse(p)
        assert bool(torch.isnan(ent[2])) and bool(torch.isnan(lse[2]))
    finally:
        torch.set_num_threads(prev)


@pytest.mark.parametrize("v", V_EDGE)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_entropy_lse_edges(backend, v, dtype):
    g = torch.Generator().manual_seed(v)
    base = torch.randn(v, generator=g)
    rows = [torch.full((v,), -INF)]  # all masked -> NaN, NaN
    for pos in {0, v // 2, v - 1}:
        for bad in (NAN, INF):
            r = base.clone()
            r[pos] = bad
            rows.append(r)  # NaN / +inf anywhere -> NaN, NaN
        r = torch.full((v,), -INF)
        r[pos] = 2.5
        rows.append(r)  # one live entry -> H = 0, lse = 2.5
    rows.append(torch.full((v,), 7.0))  # uniform -> H = log V, lse = 7 + log V
    x = torch.stack(rows).to(dtype)
    ent, lse = lenskit.entropy_lse(x)
    assert_close(ent, ref_entropy(x))
    assert_close(lse, ref_lse(x), rtol=LSE_RTOL, atol=LSE_ATOL)
    assert bool(torch.isnan(ent[0])) and bool(torch.isnan(lse[0]))
    nan_rows = [i for i, r in enumerate(rows) if bool((r.isnan() | (r == INF)).any())]
    assert bool(torch.isnan(ent[nan_rows]).all()) and bool(torch.isnan(lse[nan_rows]).all())
    one_rows = [
        i for i, r in enumerate(rows[:-1]) if i not in nan_rows and int((r > -INF).sum()) == 1
    ]
    assert bool((ent[one_rows] == 0).all()) and bool((lse[one_rows] == 2.5).all())
    assert float(lse[-1]) == pytest.approx(7.0 + math.log(v), rel=1e-6)
    if backend.startswith("cpp"):
        assert torch.equal(ent.nan_to_num(123.0), lenskit.entropy(x).nan_to_num(123.0))


@pytest.mark.parametrize(
    "shape", [(0,), (0, 5), (2, 0, 7), (5, 0), (2, 0)], ids=lambda s: "x".join(map(str, s))
)
def test_entropy_lse_empty(backend, shape):
    ent, lse = lenskit.entropy_lse(torch.zeros(shape))
    for out in (ent, lse):
        assert out.shape == shape[:-1] and out.dtype == torch.float32
        assert bool(torch.isnan(out).all())


# ----------------------------------------------------------------------------- bad input

BAD = [
    # (callable, args, exception, message pattern)
    ("entropy", (torch.zeros(3, 4, dtype=torch.int64),), TypeError, r"float32, float16 or bfloat16.*int64"),
    ("entropy", (torch.zeros(3, 4, dtype=torch.float64),), TypeError, r"float32, float16 or bfloat16.*float64"),
    ("entropy", (torch.tensor(1.0),), ValueError, r"at least 1 dimension.*0-d"),
    ("entropy_lse", (torch.zeros(3, 4, dtype=torch.float64),), TypeError, r"float32, float16 or bfloat16.*float64"),
    ("entropy_lse", (torch.tensor(1.0),), ValueError, r"at least 1 dimension.*0-d"),
    ("kl_div", (torch.zeros(3, 4), torch.zeros(3, 5)), ValueError, r"same shape.*\[3, 4\].*\[3, 5\]|same shape.*\(3, 4\).*\(3, 5\)"),
    ("kl_div", (torch.zeros(3, 4), torch.zeros(3, 4, dtype=torch.int32)), TypeError, r"q_logits.*int32"),
    ("kl_div", (torch.tensor(1.0), torch.tensor(1.0)), ValueError, r"0-d"),
    ("kl_div", (torch.zeros(3, 4), torch.zeros(2, 4)), ValueError, r"same shape"),
    ("kl_div", (torch.zeros(2, 3, 4), torch.zeros(6, 4)), ValueError, r"same shape"),
    ("pairwise_kl", (torch.zeros(3, 4), torch.zeros(2, 5)), ValueError, r"\[N, V\].*\[M, V\]"),
    ("pairwise_kl", (torch.zeros(2, 3, 4), torch.zeros(2, 4)), ValueError, r"\[N, V\]"),
    ("pairwise_kl", (torch.zeros(3, 4), torch.zeros(2, 4, 4)), ValueError, r"\[N, V\]"),
    ("pairwise_kl", (torch.zeros(3, 4, dtype=torch.uint8), torch.zeros(2, 4)), TypeError, r"p_logits.*uint8"),
]  # fmt: skip


@pytest.mark.parametrize("case", BAD, ids=lambda c: f"{c[0]}-{c[3][:20]}")
def test_bad_input_python(backend, case):
    name, args, exc, pattern = case
    with pytest.raises(exc, match=pattern):
        getattr(lenskit, name)(*args)


@pytest.mark.skipif(not HAVE_EXT, reason="extension not built")
@pytest.mark.parametrize("case", BAD, ids=lambda c: f"{c[0]}-{c[3][:20]}")
def test_bad_input_cpp(case):
    """The C++ checks (what a direct torch.ops.lenskit call, or the CUDA kernels, meet)."""
    name, args, exc, pattern = case
    with pytest.raises(exc, match=pattern):
        getattr(torch.ops.lenskit, name)(*args)


def test_device_mismatch(backend):
    p = torch.zeros(2, 4)
    q = torch.zeros(2, 4, device="meta")
    with pytest.raises(ValueError, match=r"p_logits is on cpu but q_logits is on meta"):
        lenskit.kl_div(p, q)
    with pytest.raises(ValueError, match=r"cpu.*meta"):
        lenskit.pairwise_kl(p, q)


# ----------------------------------------------------------------------------- torch integration


def _samples():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 70, generator=g)
    y = torch.randn(3, 5, 70, generator=g).to(torch.bfloat16)
    return [
        ("entropy", (x,)),
        ("entropy", (x.to(torch.float16).transpose(0, 1),)),
        ("entropy_lse", (x,)),
        ("entropy_lse", (y.transpose(0, 1),)),
        ("kl_div", (x, x.flip(-1))),
        ("kl_div", (y, y.flip(0))),
        ("pairwise_kl", (x[0], x[1, :3])),
        ("pairwise_kl", (y[0], y[2])),
    ]


@pytest.mark.skipif(not HAVE_EXT, reason="extension not built")
@pytest.mark.parametrize("sample", _samples(), ids=lambda s: s[0])
def test_opcheck(sample):
    name, args = sample
    torch.library.opcheck(getattr(torch.ops.lenskit, name).default, args)


@pytest.mark.skipif(not HAVE_EXT, reason="extension not built")
@pytest.mark.parametrize("sample", _samples()[::2], ids=lambda s: s[0])
def test_opcheck_autograd(sample):
    name, args = sample
    args = tuple(a.detach().clone().requires_grad_() for a in args)
    torch.library.opcheck(getattr(torch.ops.lenskit, name).default, args)


def _f64_ops():
    """Float64 autograd oracles (log_softmax, not lenskit.reference) for each op's gradient."""

    def ent(x):
        lp = torch.log_softmax(x, -1)
        return -(lp.exp() * lp).sum(-1)

    def kl(x, y):
        lp, lq = torch.log_softmax(x, -1), torch.log_softmax(y, -1)
        return (lp.exp() * (lp - lq)).sum(-1)

    def pair(x, y):
        return kl(x[:, None], y[None])

    return [
        ("entropy", lenskit.entropy, ent, 1),
        (
            "entropy_lse",
            lambda x: sum(lenskit.entropy_lse(x)),
            lambda x: ent(x) + x.logsumexp(-1),
            1,
        ),
        ("lse_only", lambda x: lenskit.entropy_lse(x)[1], lambda x: x.logsumexp(-1), 1),
        ("kl_div", lenskit.kl_div, kl, 2),
        ("pairwise_kl", lenskit.pairwise_kl, pair, 2),
    ]


@pytest.mark.parametrize("op", _f64_ops(), ids=lambda o: o[0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gradients(op, dtype):
    """Every backend is differentiable (the compiled ops used to return no gradient)."""
    _, fn, oracle, n_in = op
    g = torch.Generator().manual_seed(3)
    xs = [torch.randn(4, 300, generator=g).to(dtype) for _ in range(n_in)]
    leaves = [x.clone().requires_grad_() for x in xs]
    out = fn(*leaves)
    weight = torch.rand(out.shape, generator=g)
    (out * weight).sum().backward()
    leaves64 = [x.double().requires_grad_() for x in xs]
    (oracle(*leaves64) * weight.double()).sum().backward()
    for leaf, leaf64 in zip(leaves, leaves64, strict=True):
        assert leaf.grad is not None and leaf.grad.dtype == dtype
        tol = 1e-5 if dtype == torch.float32 else 2e-2
        torch.testing.assert_close(leaf.grad.double(), leaf64.grad, atol=tol, rtol=tol)


@pytest.mark.skipif(not HAVE_EXT or FORCED_TORCH, reason="extension not built")
def test_torch_compile_fullgraph():
    @torch.compile(fullgraph=True)
    def f(x, y):
        return lenskit.entropy(x) + 2 * lenskit.kl_div(x, y), lenskit.pairwise_kl(x[0], y[0])

    x = make_logits((2, 3, 300), torch.float32, seed=1)
    y = make_logits((2, 3, 300), torch.float32, seed=2)
    a, b = f(x, y)
    assert_close(a, ref_entropy(x) + 2 * ref_kl(x, y), atol=1e-5)
    assert_close(b, ref_kl(x[0][:, None], y[0][None]), atol=1e-5)


@pytest.mark.skipif(not HAVE_EXT or FORCED_TORCH, reason="extension not built")
@pytest.mark.parametrize("setting", [None, "auto", " Auto "])
def test_compiled_ops_serve_cpu_unless_torch_is_forced(monkeypatch, setting):
    """Unset or 'auto' means the compiled ops: the PyTorch fallback must never run silently
    in their place (it is correct, so only the dispatch itself can tell them apart)."""
    if setting is None:
        monkeypatch.delenv("LENSKIT_BACKEND", raising=False)
    else:
        monkeypatch.setenv("LENSKIT_BACKEND", setting)
    monkeypatch.delenv("LENSKIT_CPU_ISA", raising=False)
    assert lenskit.backend("cpu") == "cpp"

    def fallback(*args, **kwargs):
        raise AssertionError("the PyTorch fallback ran instead of the compiled op")

    for name in ("entropy", "entropy_lse", "kl_div", "pairwise_kl"):
        monkeypatch.setattr(f"lenskit.ops.reference.{name}", fallback)
    x = make_logits((3, 50), torch.float32, seed=1)
    y = make_logits((3, 50), torch.float32, seed=2)
    assert_close(lenskit.entropy(x), ref_entropy(x))
    ent, lse = lenskit.entropy_lse(x)
    assert_close(ent, ref_entropy(x))
    assert_close(lse, ref_lse(x))
    assert_close(lenskit.kl_div(x, y), ref_kl(x, y))
    assert_close(lenskit.pairwise_kl(x, y), ref_kl(x[:, None], y[None]))
