"""Kernel benchmark: lenskit.entropy / lenskit.kl_div against PyTorch eager and torch.compile.

Run by ``make bench`` (not by the tests). Everything is measured in the same run:

* ``lenskit``: the fused op (C++ kernel on CPU, CUDA kernel on GPU).
* ``eager``: the natural PyTorch expression, unfused, taking the faster of two spellings:
  entropy ``lp = log_softmax(x.float(), -1); -(lp.exp() * lp).sum(-1)`` and
  ``torch.distributions.Categorical(logits=x.float(), validate_args=False).entropy()``;
  kl_div ``lp, lq = log_softmax(p.float()), log_softmax(q.float()); (lp.exp() * (lp - lq)).sum(-1)``
  and ``F.kl_div(lq, lp, reduction="none", log_target=True).sum(-1)``.
* ``compile``: ``torch.compile(dynamic=False)`` of the log_softmax spelling (Inductor's fused
  kernel), compiled before timing.
* ``read``: ``x.sum(-1)`` (kl_div: of both inputs), a plain read pass: the memory-bound floor.
* ``lenskit AVX2`` (CPU, when the default kernels are AVX-512): the op with
  ``LENSKIT_CPU_ISA=avx2``, what CPUs without AVX-512 run.
* ``lenskit, prefetch flipped`` (CPU, vector kernels): the op with the other setting of
  ``LENSKIT_CPU_PREFETCH`` than this CPU's default (see csrc/cpu/kernel_impl.h,
  kPrefetchBytes), so that every run shows whether the default suits its CPU.
* ``256- / 1024-thread rows`` (CUDA): the op with ``LENSKIT_CUDA_ROW_THREADS`` forced.

On CPU a second measurement times kl_div with q placed at a few distances from p in one buffer
(on 1 thread and on all), with and without its software prefetch (LENSKIT_CPU_PREFETCH=1 / 0):
with a prefetch some placements make kl_div much slower on AMD Zen 4, while on Intel the
prefetch is faster at every placement tried, so the default depends on the CPU vendor (see
csrc/cpu/kernel_impl.h, kPrefetchBytes); the layout figures show which default fits the CPU
that runs it.

Times are medians over ``--reps`` calls (``--eager-reps`` for eager) after one warm-up call;
the contenders take turns call by call, so that drift on a shared machine hits all of them
alike; each case is measured ``--rounds`` times. Effective GB/s = bytes of the input(s) read
once / time. The project's targets (from the kernels issue) are judged round by round.

Results: the CPU to ``benchmarks/results/bench_kernels.json``, the GPU to ``bench_gpu.json``
(``--device`` picks which are run, so a GPU machine can refresh its file without touching the
CPU numbers of the 2-core machines); ``benchmarks/render.py`` makes docs/benchmarks.md of them.
Besides the common fields (see _report.py) each file holds ``device`` (type, backend, ISA,
prefetch or GPU name), ``load_avg_1min`` (start, end), ``copy_gbs`` (CUDA), ``cases`` (per op,
shape and dtype: ``median`` of every figure over the rounds, ``ratio_range`` of the speed-ups,
and ``rounds``, every figure of every round), ``targets`` (goal, median value, rounds met) and,
on CPU, ``layout`` (kl_div against the placement of q).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _report  # noqa: E402
import render  # noqa: E402

import lenskit  # noqa: E402

CPU_SHAPES = [(2048, 49152), (512, 128256)]
CUDA_EXTRA_CASES = [(_report.CUDA_TARGET_SHAPE, torch.bfloat16)]
QUICK_CPU_SHAPES = [(256, 8192)]
QUICK_CUDA_EXTRA_CASES = [((1024, 32768), torch.bfloat16)]
DTYPES = [torch.float32, torch.bfloat16]
CUDA_BATCH = 5  # calls per timed sample on a GPU
LAYOUT_STEPS = (0, 1, 2, 3)


def entropy_logsoftmax(x: torch.Tensor) -> torch.Tensor:
    lp = torch.log_softmax(x.float(), dim=-1)
    return -(lp.exp() * lp).sum(-1)


def entropy_categorical(x: torch.Tensor) -> torch.Tensor:
    return torch.distributions.Categorical(logits=x.float(), validate_args=False).entropy()


def kl_logsoftmax(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    lp = torch.log_softmax(p.float(), dim=-1)
    lq = torch.log_softmax(q.float(), dim=-1)
    return (lp.exp() * (lp - lq)).sum(-1)


def kl_functional(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    lp = torch.log_softmax(p.float(), dim=-1)
    lq = torch.log_softmax(q.float(), dim=-1)
    return F.kl_div(lq, lp, reduction="none", log_target=True).sum(-1)


def read_pass(*xs: torch.Tensor) -> list[torch.Tensor]:
    return [x.sum(-1) for x in xs]


def median_time(fn, args, reps: int) -> float:
    """Median wall time of fn(*args) in seconds, after one warm-up call."""
    return interleaved_times({"fn": fn}, args, {"fn": reps})["fn"]


def interleaved_times(fns: dict, args, reps: dict) -> dict:
    """Median wall time (s) of each fn(*args), after one warm-up call each.

    The calls take turns (one call of each per round, for as many rounds as that fn's reps),
    so that a drift of the shared machine's memory bandwidth or load during the run hits every
    contender alike instead of whichever happened to run then.
    """
    dev = args[0].device
    cuda = dev.type == "cuda"
    times: dict = {name: [] for name in fns}
    for fn in fns.values():
        fn(*args)
    if cuda:
        torch.cuda.synchronize(dev)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for r in range(max(reps.values())):
        for name, fn in fns.items():
            if r >= reps[name]:
                continue
            if cuda:
                # Device time of CUDA_BATCH calls queued back to back (the host's dispatch
                # overlaps the previous call), by CUDA events: a per-call host sync would add
                # its ~10-30 us to sub-millisecond kernels.
                start.record()
                for _ in range(CUDA_BATCH):
                    fn(*args)
                end.record()
                end.synchronize()
                times[name].append(start.elapsed_time(end) / 1e3 / CUDA_BATCH)
            else:
                t0 = time.perf_counter()
                fn(*args)
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def copy_bandwidth(device: torch.device, nbytes: int = 1 << 30) -> float:
    """Device-to-device copy GB/s (read + write bytes)."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    t = median_time(lambda a: dst.copy_(a), (src,), 10)
    return 2 * nbytes / t / 1e9


def bench_case(op: str, shape, dtype, device, compiled, reps: int, eager_reps: int) -> dict:
    """One round of one case: every contender's median time (ms) and the figures made of them."""
    gen = torch.Generator(device=device).manual_seed(0)
    x = (torch.randn(shape, generator=gen, device=device) * 4).to(dtype)
    if op == "entropy":
        args = (x,)
        fast, eagers, comp = lenskit.entropy, (entropy_logsoftmax, entropy_categorical), compiled[0]
    else:
        y = (torch.randn(shape, generator=gen, device=device) * 4).to(dtype)
        args = (x, y)
        fast, eagers, comp = lenskit.kl_div, (kl_logsoftmax, kl_functional), compiled[1]
    nbytes = sum(a.numel() * a.element_size() for a in args)
    fns = {
        "fast": fast,
        "eager_formula": eagers[0],
        "eager_library": eagers[1],
        "comp": comp,
        "read": read_pass,
    }
    reps_of = dict.fromkeys(fns, reps)
    reps_of["eager_formula"] = reps_of["eager_library"] = eager_reps
    if with_avx2(device):
        fns["avx2"] = with_env(fast, "LENSKIT_CPU_ISA", "avx2")
    if device.type == "cpu" and lenskit.backend(device) == "cpp":
        flipped = "0" if torch.ops.lenskit.cpu_prefetch() else "1"
        fns["flipped"] = with_env(fast, "LENSKIT_CPU_PREFETCH", flipped)
    if device.type == "cuda":
        for threads in ("256", "1024"):
            fns["rt" + threads] = with_env(fast, "LENSKIT_CUDA_ROW_THREADS", threads)
    for name in fns:
        reps_of.setdefault(name, reps)
    t = interleaved_times(fns, args, reps_of)
    out = {f"{name}_ms": sec * 1e3 for name, sec in t.items()}
    t_eager = min(t["eager_formula"], t["eager_library"])
    out.update(
        eager_ms=t_eager * 1e3,
        fast_gbs=nbytes / t["fast"] / 1e9,
        read_gbs=nbytes / t["read"] / 1e9,
        vs_eager=t_eager / t["fast"],
        vs_comp=t["comp"] / t["fast"],
        eager_vs_read=t_eager / t["read"],
    )
    return out


def layout_rows(shape: tuple[int, int], reps: int) -> list[dict]:
    """kl_div's sensitivity to where q sits relative to p (CPU, fp32): median ms per row.

    q is placed in one buffer with p at p + size + k * 4 KiB for each k in LAYOUT_STEPS (k = 1
    is the distance two same-shaped tensors allocated one after the other usually get), on 1
    thread and on all threads; the read pass over the same pair is timed for comparison.
    """
    n = shape[0] * shape[1]
    gen = torch.Generator().manual_seed(0)
    buf = torch.randn(2 * n + max(LAYOUT_STEPS) * 1024, generator=gen) * 4
    p = buf[:n].view(shape)
    threads = torch.get_num_threads()
    fns = {
        "prefetch": with_env(lenskit.kl_div, "LENSKIT_CPU_PREFETCH", "1"),
        "no_prefetch": with_env(lenskit.kl_div, "LENSKIT_CPU_PREFETCH", "0"),
        "read": read_pass,
    }
    rows = []
    try:
        for nt in sorted({1, threads}):
            torch.set_num_threads(nt)
            for k in LAYOUT_STEPS:
                q = buf[n + k * 1024 : 2 * n + k * 1024].view(shape)
                t = interleaved_times(fns, (p, q), dict.fromkeys(fns, reps))
                row = {"offset_kib": 4 * k, "threads": nt}
                row.update({f"{name}_ms": sec * 1e3 for name, sec in t.items()})
                print(f"layout {row}", flush=True)
                rows.append(row)
    finally:
        torch.set_num_threads(threads)
    return rows


def with_avx2(device: torch.device) -> bool:
    """Whether to time the AVX2 kernels too (CPU, when the default kernels are AVX-512)."""
    return (
        device.type == "cpu"
        and lenskit.backend(device) == "cpp"
        and torch.ops.lenskit.cpu_isa() == "avx512"
    )


def with_env(fn, name: str, value: str):
    """fn run with the environment variable name=value (the extension reads LENSKIT_CPU_ISA,
    LENSKIT_CPU_PREFETCH and LENSKIT_CUDA_ROW_THREADS on every call)."""

    def run(*args):
        old = os.environ.get(name)
        os.environ[name] = value
        try:
            return fn(*args)
        finally:
            if old is None:
                del os.environ[name]
            else:
                os.environ[name] = old

    return run


def combine(op: str, shape, dtype, nbytes: int, runs: list[dict]) -> dict:
    """One case from its rounds: the medians over the rounds, the range of the speed-ups, and
    every round as measured."""
    return {
        "op": op,
        "shape": "x".join(map(str, shape)),
        "dtype": str(dtype).removeprefix("torch."),
        "input_bytes": nbytes,
        "median": {key: statistics.median(r[key] for r in runs) for key in runs[0]},
        "ratio_range": {
            key: [min(r[key] for r in runs), max(r[key] for r in runs)]
            for key in ("vs_eager", "vs_comp")
        },
        "rounds": runs,
    }


def _target(case: dict, metric: str, against: str, goal: float, key: str, **extra) -> dict:
    """One target of one case: the goal, the median figure, and in how many rounds the
    round's ``key`` figure reached ``goal`` (``extra["scale"]`` scales the goal first)."""
    scale = extra.pop("scale", 1.0)
    value = extra.pop("value") if "value" in extra else case["median"][metric]
    return {
        "op": case["op"],
        "shape": case["shape"],
        "dtype": case["dtype"],
        "metric": metric,
        "against": against,
        "goal": goal,
        "value": value,
        "rounds_met": sum(r[key] >= goal * scale for r in case["rounds"]),
        "rounds": len(case["rounds"]),
        **extra,
    }


def targets(device: torch.device, cases: list[dict], case_key, copy_gbs=None) -> list[dict]:
    """Each target of the kernels issue for this device, judged in every round."""
    out = []
    for c in cases:
        if (c["shape"], c["dtype"]) != case_key:
            continue
        if device.type == "cpu":
            goal = _report.CPU_TARGET_COMPILE
            out.append(_target(c, "vs_comp", "torch.compile", goal, "vs_comp"))
            # What a kernel running at the speed of a plain read of its inputs would score:
            # the eager target is out of reach where this is below it.
            read = c["median"]["eager_vs_read"]
            goal = _report.CPU_TARGET_EAGER
            out.append(_target(c, "vs_eager", "eager", goal, "vs_eager", read_pass_vs_eager=read))
            continue
        goal = _report.CUDA_TARGET_COMPILE
        out.append(_target(c, "vs_comp", "torch.compile", goal, "vs_comp"))
        if copy_gbs:
            goal, gbs = _report.CUDA_TARGET_COPY_FRACTION, c["median"]["fast_gbs"]
            out.append(
                _target(
                    c,
                    "copy_fraction",
                    "copy",
                    goal,
                    "fast_gbs",
                    scale=copy_gbs,
                    value=gbs / copy_gbs,
                    gbs=gbs,
                )
            )
    return out


def device_info(dev: torch.device) -> dict:
    """What the table's title names: the backend, and the CPU kernels' ISA and prefetch."""
    info = {"type": dev.type, "backend": lenskit.backend(dev)}
    if dev.type == "cpu" and info["backend"] == "cpp":
        info["cpu_isa"] = torch.ops.lenskit.cpu_isa()
        info["cpu_prefetch"] = bool(torch.ops.lenskit.cpu_prefetch())
    if dev.type == "cuda":
        info["name"] = torch.cuda.get_device_name(dev)
    return info


def settings_of(args: argparse.Namespace, quick: bool) -> dict:
    """The run's settings: the options, or the smaller sizes and counts of quick mode."""
    return {
        "device": args.device,
        "reps": 3 if quick else args.reps,
        "eager_reps": 1 if quick else args.eager_reps,
        "rounds": 1 if quick else args.rounds,
        "cuda_batch": CUDA_BATCH,
        "cpu_shapes": [list(s) for s in (QUICK_CPU_SHAPES if quick else CPU_SHAPES)],
        "dtypes": [str(d).removeprefix("torch.") for d in DTYPES],
        "quick": quick,
    }


def measure_device(dev: torch.device, settings: dict, compiled) -> dict:
    """Every case, round by round, on one device; the targets; the CPU layout rows."""
    data = _report.header("bench_kernels" if dev.type == "cpu" else "bench_gpu", settings)
    data["device"] = device_info(dev)
    load_before = os.getloadavg()[0]
    shapes = [tuple(s) for s in settings["cpu_shapes"]]
    cases = [(s, d) for s in shapes for d in DTYPES]
    if dev.type == "cuda":
        cases += QUICK_CUDA_EXTRA_CASES if settings["quick"] else CUDA_EXTRA_CASES
    # Compile every case first: Inductor's compile workers must be idle while timing.
    for shape, dtype in cases:
        x = torch.zeros(shape, dtype=dtype, device=dev)
        compiled[0](x)
        compiled[1](x, x)
        del x
    rows = []
    for shape, dtype in cases:
        for op in ("entropy", "kl_div"):
            runs = []
            for _ in range(settings["rounds"]):
                r = bench_case(
                    op, shape, dtype, dev, compiled, settings["reps"], settings["eager_reps"]
                )
                print(
                    f"{dev.type} {op} {'x'.join(map(str, shape))} {dtype}: lenskit "
                    f"{r['fast_ms']:.3f} ms ({r['fast_gbs']:.1f} GB/s), x eager "
                    f"{r['vs_eager']:.1f}, x compile {r['vs_comp']:.1f}",
                    flush=True,
                )
                runs.append(r)
            nbytes = shape[0] * shape[1] * dtype.itemsize * (1 if op == "entropy" else 2)
            rows.append(combine(op, shape, dtype, nbytes, runs))
    data["cases"] = rows
    if dev.type == "cuda":
        data["copy_gbs"] = copy_bandwidth(dev)
        target_case = cases[-1]
    else:
        target_case = (shapes[0], torch.float32)
    key = ("x".join(map(str, target_case[0])), str(target_case[1]).removeprefix("torch."))
    data["targets"] = targets(dev, rows, key, data.get("copy_gbs"))
    if dev.type == "cpu" and data["device"]["backend"] == "cpp":
        data["layout"] = {
            "shape": list(shapes[0]),
            "dtype": "float32",
            "reps": settings["reps"],
            "rows": layout_rows(shapes[0], settings["reps"]),
        }
    data["load_avg_1min"] = {"start": load_before, "end": os.getloadavg()[0]}
    return data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=11, help="timed calls per lenskit/compile case")
    ap.add_argument("--eager-reps", type=int, default=3, help="timed calls per eager case")
    ap.add_argument(
        "--rounds", type=int, default=3, help="measurements of each case (medians are reported)"
    )
    ap.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="auto (default): the CPU, plus the GPU when there is one",
    )
    _report.add_common_args(ap)
    args = ap.parse_args()

    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: torch sees no CUDA device")
    devices = []
    if args.device in ("auto", "cpu"):
        devices.append(torch.device("cpu"))
    if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()):
        devices.append(torch.device("cuda"))
    settings = settings_of(args, _report.is_quick(args))
    compiled = (
        torch.compile(entropy_logsoftmax, dynamic=False),
        torch.compile(kl_logsoftmax, dynamic=False),
    )
    for dev in devices:
        data = measure_device(dev, settings, compiled)
        print(render.section(data["benchmark"], data))
        _report.save(data["benchmark"], data, args)


if __name__ == "__main__":
    main()
