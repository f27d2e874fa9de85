"""Kernel benchmark: lenskit.entropy / lenskit.kl_div against PyTorch eager and torch.compile.

Run by ``make bench`` (not by the tests). Everything in the table is measured in the same run:

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

On CPU a second table times kl_div with q placed at a few distances from p in one buffer
(on 1 thread and on all), with and without its software prefetch (LENSKIT_CPU_PREFETCH=1 / 0):
with a prefetch some placements cost kl_div up to 1.7x on AMD Zen 4, while on Intel the
prefetch is 20-30% faster at every placement tried, so the default depends on the CPU vendor
(see csrc/cpu/kernel_impl.h, kPrefetchBytes). The table shows which default fits the CPU
that runs it.

Times are medians over ``--reps`` calls (``--eager-reps`` for eager) after one warm-up call;
the contenders take turns call by call, so that drift on a shared machine hits all of them
alike; each case is measured ``--rounds`` times and the table gives the medians over the
rounds, with the range of the speed-up ratios. Effective GB/s = bytes of the input(s) read
once / time. Each table ends with the project's targets for it (from the kernels issue), met or
missed, counted round by round. The CPU tables go to docs/benchmarks.md section bench_kernels,
the CUDA table to section bench_gpu (``--device`` picks which are run; a GPU machine can
refresh its section without touching the CPU numbers of the 2-core machines).
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

from _report import stamp, write_section  # noqa: E402

import lenskit  # noqa: E402

CPU_SHAPES = [(2048, 49152), (512, 128256)]
CUDA_EXTRA_SHAPES = [((8192, 128256), torch.bfloat16)]
DTYPES = [torch.float32, torch.bfloat16]
CUDA_BATCH = 5  # calls per timed sample on a GPU


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
    fns = {"fast": fast, "eager0": eagers[0], "eager1": eagers[1], "comp": comp, "read": read_pass}
    reps_of = {"fast": reps, "eager0": eager_reps, "eager1": eager_reps, "comp": reps, "read": reps}
    if with_avx2(device):
        fns["avx2"] = with_env(fast, "LENSKIT_CPU_ISA", "avx2")
        reps_of["avx2"] = reps
    if device.type == "cpu" and lenskit.backend(device) == "cpp":
        flipped = "0" if torch.ops.lenskit.cpu_prefetch() else "1"
        fns["flipped"] = with_env(fast, "LENSKIT_CPU_PREFETCH", flipped)
        reps_of["flipped"] = reps
    if device.type == "cuda":
        for threads in ("256", "1024"):
            fns["rt" + threads] = with_env(fast, "LENSKIT_CUDA_ROW_THREADS", threads)
            reps_of["rt" + threads] = reps
    t = interleaved_times(fns, args, reps_of)
    t_fast, t_comp, t_read = t["fast"], t["comp"], t["read"]
    t_eager = min(t["eager0"], t["eager1"])
    return {
        "op": op,
        "shape": "x".join(map(str, shape)),
        "dtype": str(dtype).removeprefix("torch."),
        "fast_ms": t_fast * 1e3,
        "fast_gbs": nbytes / t_fast / 1e9,
        "eager_ms": t_eager * 1e3,
        "comp_ms": t_comp * 1e3,
        "read_ms": t_read * 1e3,
        "read_gbs": nbytes / t_read / 1e9,
        "vs_eager": t_eager / t_fast,
        "vs_comp": t_comp / t_fast,
        "avx2_ms": t["avx2"] * 1e3 if "avx2" in t else None,
        "flipped_ms": t["flipped"] * 1e3 if "flipped" in t else None,
        "rt256_ms": t["rt256"] * 1e3 if "rt256" in t else None,
        "rt1024_ms": t["rt1024"] * 1e3 if "rt1024" in t else None,
    }


LAYOUT_SHAPE = (2048, 49152)
LAYOUT_STEPS = (0, 1, 2, 3)


def layout_table(reps: int) -> str:
    """kl_div's sensitivity to where q sits relative to p (CPU, fp32).

    q is placed in one buffer with p at p + size + k * 4 KiB for each k in LAYOUT_STEPS (k = 1
    is the distance two same-shaped tensors allocated one after the other usually get), on 1
    thread and on all threads; the read pass over the same pair is given for comparison.
    """
    n = LAYOUT_SHAPE[0] * LAYOUT_SHAPE[1]
    gen = torch.Generator().manual_seed(0)
    buf = torch.randn(2 * n + max(LAYOUT_STEPS) * 1024, generator=gen) * 4
    p = buf[:n].view(LAYOUT_SHAPE)
    threads = torch.get_num_threads()
    head = (
        "| q at p + size + | threads | kl_div, prefetch ms | kl_div, no prefetch ms | "
        "read pass ms |\n|---|---:|---:|---:|---:|\n"
    )
    fns = {
        "prefetch": with_env(lenskit.kl_div, "LENSKIT_CPU_PREFETCH", "1"),
        "plain": with_env(lenskit.kl_div, "LENSKIT_CPU_PREFETCH", "0"),
        "read": read_pass,
    }
    lines = []
    try:
        for nt in sorted({1, threads}):
            torch.set_num_threads(nt)
            for k in LAYOUT_STEPS:
                q = buf[n + k * 1024 : 2 * n + k * 1024].view(LAYOUT_SHAPE)
                t = interleaved_times(fns, (p, q), dict.fromkeys(fns, reps))
                lines.append(
                    f"| {4 * k} KiB | {nt} | {t['prefetch'] * 1e3:.1f} | {t['plain'] * 1e3:.1f} "
                    f"| {t['read'] * 1e3:.1f} |\n"
                )
                print(lines[-1], end="", flush=True)
    finally:
        torch.set_num_threads(threads)
    return head + "".join(lines)


def with_avx2(device: torch.device) -> bool:
    """Whether to time the AVX2 kernels too (CPU, when the default kernels are AVX-512)."""
    return (
        device.type == "cpu"
        and lenskit.backend(device) == "cpp"
        and torch.ops.lenskit.cpu_isa() == "avx512"
    )


def with_env(fn, name: str, value: str):
    """fn run with the environment variable name=value (the extension reads LENSKIT_CPU_ISA and
    LENSKIT_CPU_PREFETCH on every call)."""

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


def combine(runs: list[dict]) -> dict:
    """One row from several rounds of a case: medians, and the range of the speed-up ratios."""
    out = dict(runs[0])
    for key in runs[0]:
        vals = [r[key] for r in runs if isinstance(r[key], float)]
        if vals:
            out[key] = statistics.median(vals)
    for key in ("vs_eager", "vs_comp"):
        out[key + "_range"] = (min(r[key] for r in runs), max(r[key] for r in runs))
    out["runs"] = runs
    return out


# Targets from the kernels issue. CPU: at [2048, 49152] fp32, >= 3x torch.compile and >= 30x
# eager. CUDA: at [8192, 128256] bf16, >= 85% of the device-to-device copy bandwidth (input
# bytes read / time against copy bytes read + written / time) and >= 1.5x torch.compile.
CPU_TARGET_CASE = ("2048x49152", "float32")
CPU_TARGETS = (("vs_comp", 3.0, "torch.compile"), ("vs_eager", 30.0, "eager"))
CUDA_TARGET_CASE = ("8192x128256", "bfloat16")
CUDA_TARGET_COMPILE = 1.5
CUDA_TARGET_COPY_FRACTION = 0.85


def _verdict(n_met: int, n: int) -> str:
    if n_met == n:
        return f"met in all {n} rounds"
    if n_met == 0:
        return f"MISSED in all {n} rounds"
    return f"met in {n_met} of {n} rounds (MISSED in the others)"


def targets(device: torch.device, rows: list[dict], copy_gbs: float | None = None) -> str:
    """Markdown lines: each target of the issue for this device, with the measured figures."""
    case = CPU_TARGET_CASE if device.type == "cpu" else CUDA_TARGET_CASE
    lines = []
    for r in rows:
        if (r["shape"], r["dtype"]) != case:
            continue
        runs = r["runs"]
        name = f"{r['op']} {r['shape']} {r['dtype']}"
        if device.type == "cpu":
            for key, goal, what in CPU_TARGETS:
                met = sum(x[key] >= goal for x in runs)
                lines.append(
                    f"- {name}: x {what} {r[key]:.1f} (target >= {goal:g}): "
                    f"{_verdict(met, len(runs))}."
                )
            # What a kernel running at the speed of a plain read of its inputs would score: the
            # 30x eager target is out of reach where this is below 30 and the op is not faster
            # than the read pass.
            read_only = statistics.median(x["eager_ms"] / x["read_ms"] for x in runs)
            lines[-1] = lines[-1][:-1] + (
                f"; for comparison, the read pass (x.sum) over the same input would be x eager "
                f"{read_only:.1f}."
            )
        else:
            met = sum(x["vs_comp"] >= CUDA_TARGET_COMPILE for x in runs)
            lines.append(
                f"- {name}: x torch.compile {r['vs_comp']:.2f} (target >= "
                f"{CUDA_TARGET_COMPILE:g}): {_verdict(met, len(runs))}."
            )
            if copy_gbs:
                goal = CUDA_TARGET_COPY_FRACTION * copy_gbs
                met = sum(x["fast_gbs"] >= goal for x in runs)
                lines.append(
                    f"- {name}: {r['fast_gbs']:.0f} GB/s = {r['fast_gbs'] / copy_gbs:.0%} of the "
                    f"copy bandwidth (target >= {CUDA_TARGET_COPY_FRACTION:.0%}): "
                    f"{_verdict(met, len(runs))}."
                )
    if not lines:
        return ""
    return "\nTargets:\n\n" + "\n".join(lines) + "\n"


def _ratio(r: dict, key: str) -> str:
    lo, hi = r[key + "_range"]
    return f"{r[key]:.1f}" if lo == hi else f"{r[key]:.1f} ({lo:.1f}-{hi:.1f})"


def table(rows: list[dict]) -> str:
    avx2 = any(r["avx2_ms"] is not None for r in rows)
    flipped = any(r["flipped_ms"] is not None for r in rows)
    row_threads = any(r["rt256_ms"] is not None for r in rows)
    # Sub-millisecond GPU times need more digits.
    f = (lambda v: f"{v:.3f}") if row_threads else (lambda v: f"{v:.1f}")
    head = (
        "| op | shape | dtype | lenskit ms | lenskit GB/s | read pass GB/s | eager ms | "
        "compile ms | x eager | x compile |"
        + (" lenskit AVX2 ms |" if avx2 else "")
        + (" lenskit, prefetch flipped ms |" if flipped else "")
        + (" 256-thread rows ms | 1024-thread rows ms |" if row_threads else "")
        + "\n|---|---|---|---:|---:|---:|---:|---:|---:|---:|"
        + ("---:|" if avx2 else "")
        + ("---:|" if flipped else "")
        + ("---:|---:|" if row_threads else "")
        + "\n"
    )
    body = "".join(
        f"| {r['op']} | {r['shape']} | {r['dtype']} | {f(r['fast_ms'])} | {r['fast_gbs']:.1f} | "
        f"{r['read_gbs']:.1f} | {f(r['eager_ms'])} | {f(r['comp_ms'])} | "
        f"{_ratio(r, 'vs_eager')} | {_ratio(r, 'vs_comp')} |"
        + (f" {r['avx2_ms']:.1f} |" if avx2 else "")
        + (f" {r['flipped_ms']:.1f} |" if flipped else "")
        + (f" {f(r['rt256_ms'])} | {f(r['rt1024_ms'])} |" if row_threads else "")
        + "\n"
        for r in rows
    )
    return head + body


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
    ap.add_argument("--no-write", action="store_true", help="print only, leave the doc alone")
    args = ap.parse_args()

    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: torch sees no CUDA device")
    devices = []
    if args.device in ("auto", "cpu"):
        devices.append(torch.device("cpu"))
    if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()):
        devices.append(torch.device("cuda"))

    compiled = (
        torch.compile(entropy_logsoftmax, dynamic=False),
        torch.compile(kl_logsoftmax, dynamic=False),
    )
    for dev in devices:
        load_before = os.getloadavg()[0]
        cases = [(s, d) for s in CPU_SHAPES for d in DTYPES]
        if dev.type == "cuda":
            cases += CUDA_EXTRA_SHAPES
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
                for _ in range(args.rounds):
                    r = bench_case(op, shape, dtype, dev, compiled, args.reps, args.eager_reps)
                    print(
                        f"{dev.type} {op} {r['shape']} {r['dtype']}: lenskit {r['fast_ms']:.1f} "
                        f"ms ({r['fast_gbs']:.1f} GB/s, read pass {r['read_gbs']:.1f} GB/s), "
                        f"eager {r['eager_ms']:.1f} ms (x{r['vs_eager']:.1f}), compile "
                        f"{r['comp_ms']:.1f} ms (x{r['vs_comp']:.1f})",
                        flush=True,
                    )
                    runs.append(r)
                rows.append(combine(runs))
        title = f"### {dev.type.upper()} (backend {lenskit.backend(dev)}"
        if dev.type == "cpu" and lenskit.backend(dev) == "cpp":
            title += f", kernels {torch.ops.lenskit.cpu_isa()}, prefetch " + (
                "on" if torch.ops.lenskit.cpu_prefetch() else "off"
            )
        title += ")\n\n"
        extra = ""
        if dev.type == "cuda":
            copy_gbs = copy_bandwidth(dev)
            extra = f"\nDevice-to-device copy: {copy_gbs:.0f} GB/s (read + write).\n"
            extra += targets(dev, rows, copy_gbs)
        else:
            extra = targets(dev, rows)
            if lenskit.backend(dev) == "cpp":
                extra += (
                    "\nkl_div against the placement of q (one buffer, "
                    f"{'x'.join(map(str, LAYOUT_SHAPE))} float32, median of {args.reps} calls):"
                    "\n\n" + layout_table(args.reps)
                )
        load = (
            f"load average (1 min) {load_before:.1f} at the start, "
            f"{os.getloadavg()[0]:.1f} at the end"
        )
        body = (
            f"{stamp()} Shared machine: {load}.\n\n"
            f"Each case measured in {args.rounds} rounds; every figure is the median over the "
            "rounds of the median time per call ("
            + (
                "wall time of one call"
                if dev.type == "cpu"
                else f"device time by CUDA events over {CUDA_BATCH} calls queued back to back"
            )
            + "), the contenders taking turns call by call "
            "(the ranges in brackets: lowest and highest ratio of the rounds); GB/s = input "
            "bytes read once / time; x eager and x compile = their time / lenskit's time. "
            "eager = the faster of the log_softmax formula "
            "and torch.distributions.Categorical(...).entropy() (kl_div: "
            "F.kl_div(log_target=True)); compile = torch.compile of the log_softmax formula; "
            "read pass = x.sum(-1) over the same input(s)"
            + (
                "; lenskit AVX2 = the same op with LENSKIT_CPU_ISA=avx2 (what CPUs without "
                "AVX-512 run); prefetch flipped = the same op with the other "
                "LENSKIT_CPU_PREFETCH setting than this CPU's default"
                if dev.type == "cpu"
                else "; 256- / 1024-thread rows = the same op with LENSKIT_CUDA_ROW_THREADS=256 "
                "/ 1024 (rows short enough for a warp each keep it)"
            )
            + ". See benchmarks/bench_kernels.py for the exact expressions.\n\n"
            + title
            + table(rows)
            + extra
        )
        print(body)
        if not args.no_write:
            write_section("bench_kernels" if dev.type == "cpu" else "bench_gpu", body)


if __name__ == "__main__":
    main()
