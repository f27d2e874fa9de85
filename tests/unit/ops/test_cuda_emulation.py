"""The CUDA kernels' per-row code, run on the CPU (cuda_emulation/emulate.cu beside this file).

csrc/cuda/rows.cuh holds everything the kernels compute per row: each thread's walk over its
part of the row, the online-softmax state updates, the merges, and the final formulas. The
emulator compiles that header for the host (with AddressSanitizer and UBSan) and runs it thread
by thread, with the kernels' launch choice (warp, 256- or 1024-thread block per row) and their
reduction order. Only the device instructions differ: ex2.approx and max.NaN become exp2 and a
NaN-propagating max, __ldg a memcpy that aborts on a misaligned address. So these tests check
the arithmetic, the partition into threads, the misaligned heads and tails, and the edge
semantics of the numerical contract on any machine with the CUDA toolkit, GPU or not;
tests/test_ops_cuda.py checks the real kernels where there is a GPU.

Needs the CUDA toolkit's headers (CUDA_HOME or /usr/local/cuda, found by its nvcc): skipped
without it, except under CI, where the CUDA sources are always compiled and a missing toolkit
is an error.
"""

from __future__ import annotations

import math
import os
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT
from test_ops_cuda import ATOL, INF, LSE_ATOL, LSE_RTOL, NAN, RTOL, entropy_f64, kl_f64, lse_f64

ROOT = REPO_ROOT
SOURCE = Path(__file__).resolve().parent / "cuda_emulation" / "emulate.cu"
HEADER = ROOT / "csrc" / "cuda" / "rows.cuh"
H200_SMS = 132
DTYPES = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16"}
DTYPE_IDS = list(DTYPES.values())


def _cuda_include() -> Path | None:
    """The CUDA toolkit's include folder (cuda_fp16.h, cuda_bf16.h), where nvcc lives too."""
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and (Path(home) / "bin" / "nvcc").exists():
            return Path(home) / "include"
    return None


@pytest.fixture(scope="session")
def emulator(tmp_path_factory) -> Path:
    """The emulator, built by the host C++ compiler (what nvcc hands host code to) with
    AddressSanitizer and UBSan, so that a read past a row's buffer or an overflowing index
    aborts the run."""
    include = _cuda_include()
    if include is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("CUDA toolkit not found: CI must compile the CUDA code (set CUDA_HOME)")
        pytest.skip("CUDA toolkit not found (set CUDA_HOME)")
    exe = tmp_path_factory.mktemp("emulator") / "emulate"
    cxx = os.environ.get("CXX", "g++")
    cmd = [cxx, "-x", "c++", "-std=c++20", "-O1", "-g", f"-I{include}", "-o", str(exe)]
    cmd += ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", str(SOURCE)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stderr}"
    return exe


def _storage(x: torch.Tensor, path: Path) -> tuple[int, int]:
    """Writes x's storage to path; returns (offset, row stride) in elements for x as [rows, V]."""
    assert x.dim() == 2 and (x.shape[1] <= 1 or x.stride(1) == 1)
    raw = torch.empty(0, dtype=torch.uint8).set_(x.untyped_storage())
    path.write_bytes(raw.numpy().tobytes())
    return x.storage_offset(), x.stride(0)


def run(*args, **kwargs) -> torch.Tensor:
    """The emulated kernel's output for [rows, V] CPU tensors (entropy_lse: [2, rows])."""
    return run_full(*args, **kwargs)[0]


def run_full(
    emulator: Path,
    op: str,
    p: torch.Tensor,
    q: torch.Tensor | None = None,
    *,
    sms: int = H200_SMS,
    tmp: Path,
    row_threads: str | None = None,
) -> tuple[torch.Tensor, int]:
    """run's output, and the threads per row the launch choice gave."""
    rows, v = p.shape
    args = [str(emulator), op, DTYPES[p.dtype], str(rows), str(v), str(sms)]
    off, stride = _storage(p, tmp / "p.bin")
    args += [str(tmp / "p.bin"), str(off), str(stride)]
    if q is not None:
        assert q.dtype == p.dtype and q.shape == p.shape
        off, stride = _storage(q, tmp / "q.bin")
        args += [str(tmp / "q.bin"), str(off), str(stride)]
    args.append(str(tmp / "out.bin"))
    env = {k: v for k, v in os.environ.items() if k != "LENSKIT_CUDA_ROW_THREADS"}
    if row_threads is not None:
        env["LENSKIT_CUDA_ROW_THREADS"] = row_threads
    proc = subprocess.run(args, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    out = torch.frombuffer(bytearray((tmp / "out.bin").read_bytes()), dtype=torch.float32)
    threads = int(proc.stdout.split()[1])
    return (out.view(2, rows) if op == "entropy_lse" else out), threads


def randn(shape, dtype=torch.float32, *, scale: float = 3.0, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g) * scale).to(dtype)


def mask_(x: torch.Tensor, frac: float, *, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x[torch.rand(x.shape, generator=g) < frac] = -INF
    return x


def check(actual: torch.Tensor, expected: torch.Tensor, *, rtol=RTOL, atol=ATOL) -> None:
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, equal_nan=True)


# (rows, V, sms): each of the three kernel shapes, the warp kernel chosen both ways.
CASES = [
    (3, 1, H200_SMS),
    (3, 7, H200_SMS),
    (5, 1000, H200_SMS),  # warp: <= 128 vectors (fp32: 250 -> block 256)
    (40, 3000, 4),  # warp with many rows on 4 SMs (16-bit: 375 vectors)
    (3, 4099, H200_SMS),
    (2, 70001, H200_SMS),  # block 1024 (fp32: 17501 vectors)
    (1, 262144, H200_SMS),
]


@pytest.mark.parametrize("dtype", list(DTYPES), ids=DTYPE_IDS)
@pytest.mark.parametrize("rows,v,sms", CASES)
def test_matches_float64(emulator, tmp_path, dtype, rows, v, sms):
    p = mask_(randn((rows, v), dtype, seed=v), 0.1, seed=1)
    q = mask_(randn((rows, v), dtype, seed=v + 1), 0.05, seed=2)
    q[p == -INF] = -INF  # no dead q entries: finite KL to compare
    check(run(emulator, "entropy", p, sms=sms, tmp=tmp_path), entropy_f64(p))
    ent, lse = run(emulator, "entropy_lse", p, sms=sms, tmp=tmp_path)
    check(ent, entropy_f64(p))
    check(lse, lse_f64(p), rtol=LSE_RTOL, atol=LSE_ATOL)
    check(run(emulator, "kl_div", p, q, sms=sms, tmp=tmp_path), kl_f64(p, q))


def test_cases_cover_every_kernel_shape(emulator, tmp_path):
    shapes = set()
    for rows, v, sms in CASES:
        for dtype in DTYPES:
            x = torch.zeros(rows, v, dtype=dtype)
            shapes.add(run_full(emulator, "entropy", x, sms=sms, tmp=tmp_path)[1])
    assert shapes == {32, 256, 1024}


@pytest.mark.parametrize("dtype", list(DTYPES), ids=DTYPE_IDS)
def test_large_logits_and_rising_maxima(emulator, tmp_path, dtype):
    """|x| ~ 1e4, and rows whose max keeps rising (a rescale per vector)."""
    v = 20000
    x = randn((3, v), dtype, seed=3, scale=8e3)
    y = (x.float() + randn((3, v), seed=4, scale=800.0)).to(dtype)
    check(run(emulator, "entropy", x, tmp=tmp_path), entropy_f64(x))
    check(run(emulator, "kl_div", x, y, tmp=tmp_path), kl_f64(x, y))
    check(run(emulator, "kl_div", y, x, tmp=tmp_path), kl_f64(y, x))
    ramp = (torch.linspace(-30, 30, v).repeat(2, 1) + randn((2, v), seed=5, scale=0.5)).to(dtype)
    ramp[1] = ramp[1].flip(0)
    check(run(emulator, "entropy", ramp, tmp=tmp_path), entropy_f64(ramp))
    check(run(emulator, "kl_div", ramp, ramp.flip(0), tmp=tmp_path), kl_f64(ramp, ramp.flip(0)))


@pytest.mark.parametrize("dtype", list(DTYPES), ids=DTYPE_IDS)
def test_entropy_edges(emulator, tmp_path, dtype):
    assert (run(emulator, "entropy", randn((5, 1), dtype), tmp=tmp_path) == 0).all()
    for v in (2, 7, 1271, 262144):
        out = run(emulator, "entropy", torch.zeros(2, v, dtype=dtype), tmp=tmp_path)
        check(out, torch.full((2,), math.log(v)))
    x = randn((6, 3000), dtype, seed=4)
    x[0] = -INF
    x[1, 5] = NAN
    x[2, 2999] = INF  # in the tail of the last thread's part
    x[3, :2999] = -INF  # a single live entry: exactly 0
    out = run(emulator, "entropy", x, tmp=tmp_path)
    assert out[:3].isnan().all()
    assert out[3] == 0
    assert out[4:].isfinite().all()
    check(out, entropy_f64(x))
    ent, lse = run(emulator, "entropy_lse", x, tmp=tmp_path)
    assert torch.equal(ent.nan_to_num(7.0), out.nan_to_num(7.0))
    check(lse, lse_f64(x), rtol=LSE_RTOL, atol=LSE_ATOL)


@pytest.mark.parametrize("dtype", list(DTYPES), ids=DTYPE_IDS)
def test_nan_survives_a_rescale_to_zero(emulator, tmp_path, dtype):
    """A NaN, then (in the same thread's part) a max 300 higher: rescaling by e^-300 == 0 zeroes
    the sums the NaN had spoilt, so only the NaN flags keep the result NaN. V = 7, fp32: thread 0
    reads elements 0-3 as one vector (its max must propagate the NaN), then element 4; 16-bit:
    one element per thread, the rescale happening in the merge."""
    x = torch.zeros(2, 7, dtype=dtype)
    x[:, 1] = NAN
    x[:, 4] = 300.0
    x[1, 1] = 0.0  # the control row: finite
    out = run(emulator, "entropy", x, tmp=tmp_path)
    assert out[0].isnan() and out[1].isfinite()
    q = torch.zeros(2, 7, dtype=dtype)
    assert run(emulator, "kl_div", x, q, tmp=tmp_path)[0].isnan()
    assert run(emulator, "kl_div", q, x, tmp=tmp_path)[0].isnan()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_entropy_extreme_logits_in_different_threads(emulator, tmp_path, dtype):
    """-3e38 and +3e38 read by different threads: the merge's rescale factor e^-6e38
    underflows to 0 and must drop the old sums (0 * -inf would be NaN). One-hot rows give 0,
    two equal maxima log 2."""
    x = torch.full((3, 8), -INF)
    x[:, 0] = -3e38
    x[:, 4] = 3e38
    x[1, 5] = 3e38
    out = run(emulator, "entropy", x.to(dtype), tmp=tmp_path)
    assert out.isfinite().all(), out
    check(out, torch.tensor([0.0, math.log(2), 0.0]))
    y = torch.full((1, 4096), -INF)
    y[0, 0], y[0, 4095] = -3e38, 3e38
    assert run(emulator, "entropy", y.to(dtype), tmp=tmp_path)[0] == 0


@pytest.mark.parametrize("dtype", list(DTYPES), ids=DTYPE_IDS)
@pytest.mark.parametrize("v", [500, 5000, 70001])
def test_kl_div_edges(emulator, tmp_path, dtype, v):
    p = randn((9, v), dtype, seed=5)
    q = randn((9, v), dtype, seed=6)
    assert (run(emulator, "kl_div", p, p, tmp=tmp_path) == 0).all()
    p[0] = -INF  # p all masked: NaN
    q[1] = -INF  # q all masked: NaN, not +inf
    p[2, 3] = NAN
    q[3, v - 1] = INF
    q[4, 10] = -INF  # p live there: +inf
    p[5, 10] = -INF
    q[5, 10] = -INF  # masked in both: finite
    p[6, 20] = -INF  # masked in p only: finite
    p[7, 30] = -200.0  # live in p with e^(x - max) below fp32's range, dead in q: +inf
    q[7, 30] = -INF
    p[8, ::2] = -INF  # half of p masked, q dead exactly there: finite
    q[8, ::2] = -INF
    out = run(emulator, "kl_div", p, q, tmp=tmp_path)
    assert out[:4].isnan().all()
    assert out[4] == INF and out[7] == INF
    assert out[5:7].isfinite().all() and out[8].isfinite()
    check(out, kl_f64(p, q))
    ones = randn((4, 1), dtype), randn((4, 1), dtype, seed=1)
    assert (run(emulator, "kl_div", *ones, tmp=tmp_path) == 0).all()


def test_kl_div_nonnegative_near_zero(emulator, tmp_path):
    p = randn((16, 4096), seed=7)
    for q in (p + 1e-3 * randn((16, 4096), seed=8, scale=1.0), p + 5.0):
        out = run(emulator, "kl_div", p, q, tmp=tmp_path)
        assert (out >= 0).all()
        check(out, kl_f64(p, q))


@pytest.mark.parametrize("dtype", list(DTYPES), ids=DTYPE_IDS)
@pytest.mark.parametrize("v", [100, 9000])
def test_misaligned_views(emulator, tmp_path, dtype, v):
    """Rows that start off a 16-byte boundary: scalar heads and tails around the vector body,
    and (kl_div) p and q at different phases, which read the whole row with scalar loads."""
    base_p = mask_(randn((4, v + 9), dtype, seed=9), 0.1, seed=10)
    base_q = randn((4, v + 9), dtype, seed=11)
    base_q[base_p == -INF] = -INF
    for a, b in ((1, 1), (3, 3), (1, 2), (0, 5), (7, 0)):
        p, q = base_p[:, a : a + v], base_q[:, b : b + v]
        check(run(emulator, "entropy", p, tmp=tmp_path), entropy_f64(p))
        check(run(emulator, "kl_div", p, q, tmp=tmp_path), kl_f64(p, q))
    every_other = base_p[::2, 2 : 2 + v]  # row stride of two rows
    check(run(emulator, "entropy", every_other, tmp=tmp_path), entropy_f64(every_other))


@pytest.mark.parametrize("dtype", list(DTYPES), ids=DTYPE_IDS)
def test_row_threads_override(emulator, tmp_path, dtype):
    """LENSKIT_CUDA_ROW_THREADS=256|1024 picks the block size of block-per-row launches: both
    must give the float64 results (one row partitioned 4x finer or coarser)."""
    p = mask_(randn((2, 70001), dtype, seed=12), 0.1, seed=13)
    q = randn((2, 70001), dtype, seed=14)
    q[p == -INF] = -INF
    # V = 70001 takes 1024 threads by default; an unknown value is ignored.
    for setting, expected in ((None, 1024), ("256", 256), ("1024", 1024), ("bogus", 1024)):
        out, threads = run_full(emulator, "entropy", p, tmp=tmp_path, row_threads=setting)
        assert threads == expected
        check(out, entropy_f64(p))
        check(run(emulator, "kl_div", p, q, tmp=tmp_path, row_threads=setting), kl_f64(p, q))
    # Rows short enough for a warp each keep it.
    short = randn((3, 300), dtype)
    assert run_full(emulator, "entropy", short, tmp=tmp_path, row_threads="256")[1] == 32
