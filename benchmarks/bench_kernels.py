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

On CPU a second table times kl_div with q placed at a few distances from p in one buffer
(on 1 thread and on all), since that placement once cost kl_div up to 1.7x (see
csrc/cpu/kernel_impl.h, kFastPrefetchLocality).

Times are medians over ``--reps`` calls (``--eager-reps`` for eager) after one warm-up call;
the contenders take turns call by call, so that drift on a shared machine hits all of them
alike; each case is measured ``--rounds`` times and the table gives the medians over the
rounds, with the range of the speed-up ratios. Effective GB/s = bytes of the input(s) read
once / time. The table goes to docs/benchmarks.md (section bench_kernels).
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
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    times: dict = {name: [] for name in fns}
    for fn in fns.values():
        fn(*args)
        sync()
    for r in range(max(reps.values())):
        for name, fn in fns.items():
            if r >= reps[name]:
                continue
            t0 = time.perf_counter()
            fn(*args)
            sync()
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
        fns["avx2"] = capped_to_avx2(fast)
        reps_of["avx2"] = reps
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
        "read_gbs": nbytes / t_read / 1e9,
        "vs_eager": t_eager / t_fast,
        "vs_comp": t_comp / t_fast,
        "avx2_ms": t["avx2"] * 1e3 if "avx2" in t else None,
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
        "| q at p + size + | threads | lenskit kl_div ms | read pass ms |\n|---|---:|---:|---:|\n"
    )
    lines = []
    try:
        for nt in sorted({1, threads}):
            torch.set_num_threads(nt)
            for k in LAYOUT_STEPS:
                q = buf[n + k * 1024 : 2 * n + k * 1024].view(LAYOUT_SHAPE)
                t = interleaved_times(
                    {"fast": lenskit.kl_div, "read": read_pass},
                    (p, q),
                    {"fast": reps, "read": reps},
                )
                lines.append(
                    f"| {4 * k} KiB | {nt} | {t['fast'] * 1e3:.1f} | {t['read'] * 1e3:.1f} |\n"
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


def capped_to_avx2(fn):
    """fn run with LENSKIT_CPU_ISA=avx2 (read by the extension on every call)."""

    def run(*args):
        old = os.environ.get("LENSKIT_CPU_ISA")
        os.environ["LENSKIT_CPU_ISA"] = "avx2"
        try:
            return fn(*args)
        finally:
            if old is None:
                del os.environ["LENSKIT_CPU_ISA"]
            else:
                os.environ["LENSKIT_CPU_ISA"] = old

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
    return out


def _ratio(r: dict, key: str) -> str:
    lo, hi = r[key + "_range"]
    return f"{r[key]:.1f}" if lo == hi else f"{r[key]:.1f} ({lo:.1f}-{hi:.1f})"


def table(rows: list[dict]) -> str:
    avx2 = any(r["avx2_ms"] is not None for r in rows)
    head = (
        "| op | shape | dtype | lenskit ms | lenskit GB/s | read pass GB/s | eager ms | "
        "compile ms | x eager | x compile |"
        + (" lenskit AVX2 ms |" if avx2 else "")
        + "\n|---|---|---|---:|---:|---:|---:|---:|---:|---:|"
        + ("---:|" if avx2 else "")
        + "\n"
    )
    body = "".join(
        f"| {r['op']} | {r['shape']} | {r['dtype']} | {r['fast_ms']:.1f} | {r['fast_gbs']:.1f} | "
        f"{r['read_gbs']:.1f} | {r['eager_ms']:.1f} | {r['comp_ms']:.1f} | "
        f"{_ratio(r, 'vs_eager')} | {_ratio(r, 'vs_comp')} |"
        + (f" {r['avx2_ms']:.1f} |" if avx2 else "")
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
    ap.add_argument("--no-write", action="store_true", help="print only, leave the doc alone")
    args = ap.parse_args()

    load_before = os.getloadavg()[0]
    compiled = (
        torch.compile(entropy_logsoftmax, dynamic=False),
        torch.compile(kl_logsoftmax, dynamic=False),
    )
    sections = []
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    for dev in devices:
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
            title += f", kernels {torch.ops.lenskit.cpu_isa()}"
        title += ")\n\n"
        extra = ""
        if dev.type == "cuda":
            extra = f"\nDevice-to-device copy: {copy_bandwidth(dev):.0f} GB/s (read + write).\n"
        if dev.type == "cpu" and lenskit.backend(dev) == "cpp":
            extra = (
                "\nkl_div against the placement of q (one buffer, "
                f"{'x'.join(map(str, LAYOUT_SHAPE))} float32, median of {args.reps} calls):\n\n"
                + layout_table(args.reps)
            )
        sections.append(title + table(rows) + extra)

    load = (
        f"load average (1 min) {load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end"
    )
    body = (
        f"{stamp()} Shared machine: {load}.\n\n"
        f"Each case measured in {args.rounds} rounds; every figure is the median over the "
        "rounds of the median wall time per call, the contenders taking turns call by call "
        "(the ranges in brackets: lowest and highest ratio of the rounds); GB/s = input "
        "bytes read once / time; x eager and x compile = their time / lenskit's time. eager = the faster of the log_softmax formula "
        "and torch.distributions.Categorical(...).entropy() (kl_div: F.kl_div(log_target=True)); "
        "compile = torch.compile of the log_softmax formula; read pass = x.sum(-1) over the "
        "same input(s); lenskit AVX2 = the same op with LENSKIT_CPU_ISA=avx2 (what CPUs "
        "without AVX-512 run). See benchmarks/bench_kernels.py for the exact expressions.\n\n"
        + "\n".join(sections)
    )
    print(body)
    if not args.no_write:
        write_section("bench_kernels", body)


if __name__ == "__main__":
    main()
