"""lenskit.count_above (torch.ops.lenskit.count_above): per row, how many logits exceed each
threshold, against the torch expression it replaces,
``torch.sum(logits > thresholds[:, j:j+1], dim=-1, dtype=torch.int32)`` for each j.

The result must be *equal* (not close) for every input: ties, -0.0 / +0.0, +-inf and NaN on
either side, float32 thresholds between two bfloat16 / float16 values, vocabulary sizes around
the vector widths (tails), more thresholds than one group of 8 (several passes over a row),
strided views, and the edge shapes M = 0, n = 0, V = 0. Backends: "cpp" (best kernels of this
CPU), "cpp-avx2", "cpp-scalar" (LENSKIT_CPU_ISA caps) and "torch" (the reference). The CUDA
kernel's tests at the end are skipped without a GPU.
"""

from __future__ import annotations

import math
import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lenskit
from lenskit.ops import count_above

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
DTYPE_IDS = ["f32", "f16", "bf16"]
BACKENDS = ["cpp", "cpp-avx2", "cpp-scalar", "torch"]
HAVE_EXT = lenskit.extension_error() is None
FORCED_TORCH = os.environ.get("LENSKIT_BACKEND", "").lower() == "torch"
HAVE_CUDA = torch.cuda.is_available()
INF = math.inf
NAN = math.nan
# Values that make ties, signed zeros and the special cases likely.
SPECIALS = [-INF, -3.0, -1.5, -0.0, 0.0, 0.5, 1.0, 1.5, 2.0, 1e4, INF, NAN]


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    """Selects a backend through the environment; cpp* skip when the extension is absent."""
    name = request.param
    if name == "torch":
        monkeypatch.setenv("LENSKIT_BACKEND", "torch")
        return name
    if not HAVE_EXT or FORCED_TORCH:
        pytest.skip("extension not available or LENSKIT_BACKEND=torch")
    monkeypatch.delenv("LENSKIT_BACKEND", raising=False)
    if name == "cpp":
        monkeypatch.delenv("LENSKIT_CPU_ISA", raising=False)
    else:
        monkeypatch.setenv("LENSKIT_CPU_ISA", name.split("-", 1)[1])
    assert lenskit.backend("cpu") == "cpp"
    return name


def expected(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The torch expression count_above replaces (int32 [M, n])."""
    cols = [torch.sum(x > t[:, j : j + 1], dim=-1, dtype=torch.int32) for j in range(t.shape[1])]
    if not cols:
        return torch.zeros(x.shape[0], 0, dtype=torch.int32, device=x.device)
    return torch.stack(cols, dim=-1)


def assert_counts(x: torch.Tensor, t: torch.Tensor) -> None:
    out = count_above(x, t)
    ref = expected(x, t)
    assert out.dtype == torch.int32 and out.device == x.device
    assert out.shape == ref.shape, (out.shape, ref.shape)
    bad = torch.nonzero(out != ref)[:5].tolist()
    assert torch.equal(out, ref), f"mismatch at {bad}: {[(out[i, j], ref[i, j]) for i, j in bad]}"


def make_case(m, v, n, dtype, seed, *, t_dtype=None, device="cpu"):
    """Random logits with some specials, and thresholds that are partly row values (ties),
    partly specials, partly float32 values between the representable ones of ``dtype``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, v, generator=g) * 3
    sel = torch.rand(m, v, generator=g)
    specials = torch.tensor(SPECIALS)
    x = torch.where(sel < 0.05, specials[torch.randint(len(SPECIALS), (m, v), generator=g)], x)
    x = x.to(dtype)
    cols = torch.randint(0, max(v, 1), (m, n), generator=g)
    t = x.gather(1, cols).float() if v else torch.zeros(m, n)
    kind = torch.randint(0, 3, (m, n), generator=g)
    t = torch.where(kind == 1, specials[torch.randint(len(SPECIALS), (m, n), generator=g)], t)
    if t_dtype == torch.float32:  # between two values of `dtype` where that one is 16-bit
        t = torch.where(kind == 2, t + torch.rand(m, n, generator=g) * 1e-3, t)
    t = t.to(t_dtype or dtype)
    return x.to(device), t.to(device)


# ----------------------------------------------------------------------------- CPU and reference

V_VALUES = [1, 7, 15, 16, 17, 33, 1000, 49157]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("v", V_VALUES)
@pytest.mark.parametrize("t_same", [True, False], ids=["t-same", "t-f32"])
def test_random(backend, dtype, v, t_same):
    for n in range(1, 11):
        x, t = make_case(3, v, n, dtype, seed=v * 31 + n, t_dtype=None if t_same else torch.float32)
        assert_counts(x, t)


@pytest.mark.parametrize("n", [1, 4, 8, 9, 17])
def test_many_rows_across_threads(backend, n):
    x, t = make_case(301, 5003, n, torch.float32, seed=n)
    assert_counts(x, t)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_specials_exhaustive(backend, dtype):
    """Every special value against every special threshold, in every lane position."""
    vals = torch.tensor(SPECIALS)
    v = 3 * 16 + 5
    x = vals[torch.arange(len(SPECIALS))[:, None].add(torch.arange(v)) % len(SPECIALS)]
    x = x.to(dtype)
    t = vals.expand(len(SPECIALS), -1).to(dtype)
    assert_counts(x, t)
    assert_counts(x, t.float())
    # All NaN / all -inf rows: nothing exceeds anything.
    for fill in (NAN, -INF):
        xs = torch.full((2, 40), fill, dtype=dtype)
        assert_counts(xs, torch.tensor([[-INF, NAN, 0.0], [INF, -1.0, 1.0]], dtype=dtype))


def test_float32_thresholds_between_16_bit_values(backend):
    """A float32 threshold is compared as float32, not rounded to the logits' dtype."""
    x = torch.tensor([[1.0, 1.0078125, 1.015625, 2.0]], dtype=torch.bfloat16)
    t = torch.tensor([[1.005, 1.0078125, 1.0078126, 0.99999994]])  # 1.005, 0.99999994: not bf16
    assert count_above(x, t).tolist() == [[3, 2, 2, 4]]
    assert_counts(x, t)


def test_layouts(backend):
    base, tb = make_case(6, 300, 5, torch.float32, seed=9)
    assert_counts(base[:, 1:], tb)  # rows not aligned, row stride != V
    assert_counts(base[::2], tb[::2])  # every other row
    assert_counts(base.t().contiguous().t(), tb)  # last dim not contiguous
    assert_counts(base[:1].expand(4, -1), tb[:4])  # row stride 0
    assert_counts(base, tb.t().contiguous().t())  # thresholds column-major
    assert_counts(base, tb[:, ::2])


@pytest.mark.parametrize("shape", [(0, 5, 3), (4, 5, 0), (4, 0, 3), (0, 0, 0)])
def test_empty(backend, shape):
    m, v, n = shape
    out = count_above(torch.zeros(m, v), torch.zeros(m, n))
    assert out.shape == (m, n) and out.dtype == torch.int32
    assert bool((out == 0).all())


SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@SETTINGS
@given(data=st.data())
def test_property_equals_torch_expression(backend, data):
    m = data.draw(st.integers(1, 4))
    v = data.draw(st.integers(0, 70))
    n = data.draw(st.integers(0, 12))
    dtype = data.draw(st.sampled_from(DTYPES))
    vals = st.one_of(st.sampled_from(SPECIALS), st.floats(-5, 5, width=32))
    x = torch.tensor(data.draw(st.lists(vals, min_size=m * v, max_size=m * v))).reshape(m, v)
    t = torch.tensor(data.draw(st.lists(vals, min_size=m * n, max_size=m * n))).reshape(m, n)
    t_dtype = data.draw(st.sampled_from([dtype, torch.float32]))
    assert_counts(x.to(dtype), t.to(t_dtype))


# ----------------------------------------------------------------------------- bad input

BAD = [
    ((torch.zeros(3, 4, dtype=torch.int64), torch.zeros(3, 1)), TypeError, r"float32, float16 or bfloat16.*int64"),
    ((torch.zeros(3, 4), torch.zeros(3, 1, dtype=torch.float64)), TypeError, r"thresholds must be torch.float32 or the dtype of logits.*float64"),
    ((torch.zeros(3, 4, dtype=torch.bfloat16), torch.zeros(3, 1, dtype=torch.float16)), TypeError, r"dtype of logits \(torch.bfloat16\).*float16"),
    ((torch.zeros(3, 4), torch.zeros(2, 1)), ValueError, r"\[M, V\].*\[M, n\].*same M.*\[3, 4\].*\[2, 1\]|same M.*\(3, 4\).*\(2, 1\)"),
    ((torch.zeros(3, 4), torch.zeros(3)), ValueError, r"\[M, n\]"),
    ((torch.zeros(2, 3, 4), torch.zeros(2, 1)), ValueError, r"\[M, V\]"),
    ((torch.tensor(1.0), torch.zeros(1, 1)), ValueError, r"0-d"),
]  # fmt: skip


@pytest.mark.parametrize("case", BAD, ids=lambda c: c[2][:24])
def test_bad_input_python(backend, case):
    args, exc, pattern = case
    with pytest.raises(exc, match=pattern):
        count_above(*args)


@pytest.mark.skipif(not HAVE_EXT, reason="extension not built")
@pytest.mark.parametrize("case", BAD, ids=lambda c: c[2][:24])
def test_bad_input_cpp(case):
    args, exc, pattern = case
    with pytest.raises(exc, match=pattern):
        torch.ops.lenskit.count_above(*args)


def test_bad_input_non_tensor_and_device(backend):
    with pytest.raises(TypeError, match="thresholds must be a torch.Tensor"):
        count_above(torch.zeros(2, 3), [[0.0], [1.0]])
    with pytest.raises(ValueError, match=r"logits is on cpu but thresholds is on meta"):
        count_above(torch.zeros(2, 3), torch.zeros(2, 1, device="meta"))


# ----------------------------------------------------------------------------- torch integration


def _samples():
    x, t = make_case(4, 70, 3, torch.float32, seed=1)
    xb, tb = make_case(3, 50, 9, torch.bfloat16, seed=2, t_dtype=torch.float32)
    xh, th = make_case(2, 33, 2, torch.float16, seed=3)
    return [(x, t), (xb, tb), (xh, th), (x[:, 1:], t[:, ::2]), (x[:0], t[:0])]


@pytest.mark.skipif(not HAVE_EXT, reason="extension not built")
@pytest.mark.parametrize("sample", range(len(_samples())))
def test_opcheck(sample):
    x, t = _samples()[sample]
    torch.library.opcheck(torch.ops.lenskit.count_above.default, (x, t))


@pytest.mark.skipif(not HAVE_EXT, reason="extension not built")
def test_opcheck_requires_grad():
    """An integer count: no gradient, and no autograd kernel is needed for that."""
    x, t = _samples()[0]
    args = (x.clone().requires_grad_(), t.clone().requires_grad_())
    torch.library.opcheck(torch.ops.lenskit.count_above.default, args)
    assert not count_above(*args).requires_grad


@pytest.mark.skipif(not HAVE_EXT or FORCED_TORCH, reason="extension not built")
def test_torch_compile_fullgraph():
    f = torch.compile(lambda x, t: count_above(x, t) + 1, fullgraph=True)
    x, t = make_case(5, 300, 4, torch.float32, seed=4)
    assert torch.equal(f(x, t), expected(x, t) + 1)


@pytest.mark.skipif(not HAVE_EXT or FORCED_TORCH, reason="extension not built")
def test_compiled_op_serves_cpu(monkeypatch):
    monkeypatch.delenv("LENSKIT_BACKEND", raising=False)

    def fallback(*args, **kwargs):
        raise AssertionError("the PyTorch fallback ran instead of the compiled op")

    monkeypatch.setattr("lenskit.ops.reference.count_above", fallback)
    assert_counts(*make_case(3, 100, 4, torch.float32, seed=5))


# ----------------------------------------------------------------------------- CUDA kernel

cuda_only = [
    pytest.mark.cuda,
    pytest.mark.skipif(not (HAVE_CUDA and HAVE_EXT and not FORCED_TORCH), reason="needs CUDA"),
]


def _on_cuda(fn):
    for mark in cuda_only:
        fn = mark(fn)
    return fn


@_on_cuda
def test_cuda_backend():
    assert lenskit.backend("cuda") == "cuda"


@_on_cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("v", [1, 7, 255, 1025, 49152, 128257])
@pytest.mark.parametrize("t_same", [True, False], ids=["t-same", "t-f32"])
def test_cuda_random(dtype, v, t_same):
    for n in (1, 3, 8, 9, 10):
        x, t = make_case(
            5, v, n, dtype, seed=v + n, t_dtype=None if t_same else torch.float32, device="cuda"
        )
        assert_counts(x, t)
        assert torch.equal(count_above(x, t).cpu(), expected(x.cpu(), t.cpu()))


@_on_cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_cuda_specials_layouts_and_many_rows(dtype):
    vals = torch.tensor(SPECIALS)
    x = vals[torch.arange(len(SPECIALS))[:, None].add(torch.arange(1000)) % len(SPECIALS)]
    x = x.to(dtype).cuda()
    t = vals.expand(len(SPECIALS), -1).to(dtype).cuda()
    assert_counts(x, t)
    assert_counts(x[:, 1:], t[:, ::2])
    assert_counts(x.t().contiguous().t(), t.float())
    assert_counts(x[:1].expand(3, -1), t[:3])
    many, tm = make_case(9000, 9, 2, dtype, seed=6, device="cuda")  # rows > the grid cap
    assert_counts(many, tm)


@_on_cuda
def test_cuda_empty_and_errors():
    for m, v, n in [(0, 5, 3), (4, 5, 0), (4, 0, 3)]:
        out = count_above(torch.zeros(m, v, device="cuda"), torch.zeros(m, n, device="cuda"))
        assert out.shape == (m, n) and out.device.type == "cuda" and bool((out == 0).all())
    with pytest.raises(ValueError, match="thresholds is on cpu"):
        torch.ops.lenskit.count_above(torch.zeros(2, 3, device="cuda"), torch.zeros(2, 1))


@_on_cuda
def test_cuda_opcheck():
    for x, t in _samples():
        torch.library.opcheck(torch.ops.lenskit.count_above.default, (x.cuda(), t.cuda()))
