"""Benchmark the dataset mode on the default model and the bundled prompt set.

Four parts, all on CPU with ``--threads`` torch threads (default 2), in this process unless
stated:

1. Speed: ``lenskit.run_dataset`` (batched) against what a user would write by hand, a loop
   over the prompts of ``greedy_generate`` (the reply, up to ``max_new_tokens``, stopping at
   the end of the turn) + ``run_lens(top_k=10, target=<the gold answer's token>)``; and with
   the causal check, ``run_dataset(sweep=True)`` against that loop +
   ``intervention_sweep(max_new_tokens=..., positions="template", intervention="skip")``.
   Both on the same ``--prompts`` prompts, in ``--rounds`` rounds; within a round the loop
   and the batched run take turns (loop first in even rounds, batched first in odd ones) so
   both see the same machine state. Targets: batched >= 3x the loop without the sweep,
   >= 2x with it, judged round by round. The loop's replies are checked against the batched
   run's (same token ids).
2. Memory: peak RSS of ``run_dataset`` over 100 vs 400 prompts (``--rss-prompts``), each in
   a fresh subprocess that loads the model, resets the peak mark (VmHWM) and runs only
   ``run_dataset``. "Run peak" = VmHWM after the run (the model's resident memory included,
   the load's own transient peak not); "process peak" = the child's ru_maxrss read by this
   process after it exits (``os.wait4``), which includes the model load. Target: run peak at
   the larger size within 10% of the smaller's.
3. Processes: the CLI (``python -m lenskit dataset FILE -o DIR -q``) on the same prompts, one
   process (``OMP_NUM_THREADS=threads``) against ``torchrun --standalone --nproc_per_node=2``
   (``OMP_NUM_THREADS=threads/2`` each), wall time of the whole command (start-up, model load
   and chart files included) and of the run itself (``state.json`` to ``summary.json``
   modification times); the two summaries are compared (counts equal, largest difference of
   the rates and means).
4. What the bundled set shows (for the README): a run over the whole set at the CLI's
   defaults (``--set-prompts``; or, when skipped, the largest run above): the best cell by
   lift and by answer hit rate at k=10 among the template columns (and among the user's
   last tokens, for comparison), and the share of prompts whose reply holds the answer.

Prompt order: the bundled set interleaved round-robin over its categories (so any prefix is
spread evenly over them), cycled past its 321 prompts; from the second cycle on, `` [c]``
(c = the cycle, 1, 2, ...) is appended to the prompt text so that prompts stay distinct.

Results: ``benchmarks/results/bench_dataset.json``, besides the common fields (see
_report.py) ``load_avg_1min`` (start, end), ``subset`` (n, categories), ``speed`` (``lens``
and ``sweep``: per round the loop's and the batched run's wall / CPU seconds, the speed-up,
whether it met the target; medians, prompts per second, rounds met; ``replies_equal``),
``rss`` (per size: wall, RSS after load, run peak, extra over the load, process peak; ratios
and the verdict), ``torchrun`` (per launch: processes, threads, wall, run, prompts per
second; the speed-up and the comparison of the summaries; or ``error``; null when skipped)
and ``bundled`` (the run it is read from, correct share overall and per category, best
cells).

Usage: ``python benchmarks/bench_dataset.py [--quick] [--no-write] [--prompts 48]
[--rounds 2] [--rss-prompts 100,400] [--skip-rss] [--skip-torchrun] [--set-prompts 321]``
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _report  # noqa: E402
import render  # noqa: E402

TARGET_LENS = 3.0
TARGET_SWEEP = 2.0
TARGET_RSS = 0.10
TOP_K = 10
K = 10  # the k of the bundled set's figures
# Seconds per prompt on a quiet 2-core machine at max_new_tokens 24 (for the estimate only;
# the generation scales with the tokens, the rest not).
COST_S = {"loop": 1.9, "loop_sweep": 5.0, "batched": 0.4, "batched_sweep": 2.1}
LOAD_S = 8.0  # a fresh process: import and cached model load
FULL = {
    "prompts": 48, "max_new_tokens": 24, "batch_size": 16, "rounds": 2,
    "rss_prompts": "100,400", "rss_max_new_tokens": 8, "set_prompts": 321,
    "set_max_new_tokens": 24,
}  # fmt: skip
QUICK = {
    "prompts": 6, "max_new_tokens": 4, "batch_size": 8, "rounds": 1,
    "rss_prompts": "8,16", "rss_max_new_tokens": 2, "set_prompts": 12,
    "set_max_new_tokens": 4,
}  # fmt: skip


# --------------------------------------------------------------------------------------------
# Prompts and settings
# --------------------------------------------------------------------------------------------


def prompt_items(n: int) -> list[dict[str, Any]]:
    """The first ``n`` prompts of the bundled set interleaved over its categories, cycled
    (`` [c]`` appended from the second cycle on), as dicts for ``run_dataset``."""
    import lenskit

    bundled = lenskit.bundled_prompts()
    by_cat: dict[str, list[Any]] = {}
    for item in bundled:
        by_cat.setdefault(item.category or "", []).append(item)
    order = []
    for i in range(max(len(v) for v in by_cat.values())):
        order += [items[i] for items in by_cat.values() if i < len(items)]
    out = []
    for i in range(n):
        item, cycle = order[i % len(order)], i // len(order)
        text = item.prompt if cycle == 0 else f"{item.prompt} [{cycle}]"
        out.append({"prompt": text, "answer": item.answer, "category": item.category})
    return out


def settings_of(args: argparse.Namespace, quick: bool) -> dict[str, Any]:
    base = QUICK if quick else FULL

    def pick(name: str) -> Any:
        value = getattr(args, name)
        return base[name] if value is None else value

    rss = [int(x) for x in str(pick("rss_prompts")).split(",") if x.strip()]
    return {
        "model": "default",
        "prompts": pick("prompts"),
        "max_new_tokens": pick("max_new_tokens"),
        "batch_size": pick("batch_size"),
        "top_k": TOP_K,
        "rounds": pick("rounds"),
        "threads": args.threads,
        "rss_prompts": [] if args.skip_rss else rss,
        "rss_max_new_tokens": pick("rss_max_new_tokens"),
        "torchrun": not args.skip_torchrun,
        "nproc": args.nproc,
        "set_prompts": pick("set_prompts"),
        "set_max_new_tokens": base["set_max_new_tokens"],
        "prompt_order": "bundled set interleaved round-robin over its categories, cycled; "
        "' [c]' appended to the prompt text in cycle c >= 1",
        "targets": {"lens": TARGET_LENS, "sweep": TARGET_SWEEP, "rss": TARGET_RSS},
        "quick": quick,
    }


def estimate_s(st: dict[str, Any]) -> float:
    """Rough duration on a quiet 2-core machine (seconds), from :data:`COST_S`."""
    scale = (0.3 + 0.7 * st["max_new_tokens"] / 24) * (2 / max(st["threads"], 1))
    n = st["prompts"]
    speed = sum(COST_S.values()) * n * st["rounds"] * scale
    rss_scale = 0.3 + 0.7 * st["rss_max_new_tokens"] / 24
    rss = sum(LOAD_S + COST_S["batched"] * m * rss_scale for m in st["rss_prompts"])
    # One process, then nproc processes (each loads the model); chart files ~10 s each.
    torchrun = (2 * (LOAD_S + 10) + 2 * COST_S["batched"] * n * scale) if st["torchrun"] else 0
    set_scale = 0.3 + 0.7 * st["set_max_new_tokens"] / 24
    full_set = COST_S["batched"] * st["set_prompts"] * set_scale
    return LOAD_S + speed + rss + torchrun + full_set + 2 * COST_S["loop_sweep"]


# --------------------------------------------------------------------------------------------
# 1. Speed: the loop against run_dataset
# --------------------------------------------------------------------------------------------


def by_hand(model, tok, items: list[dict[str, Any]], st: dict[str, Any], sweep: bool) -> list:
    """What a user writes by hand: per prompt the reply, the lens (and the sweep); returns
    the replies' token ids."""
    import lenskit
    from lenskit.dataset.targets import spelled_answer
    from lenskit.model import eos_token_ids

    stop = eos_token_ids(model, tok)
    replies = []
    for item in items:
        enc = lenskit.encode_prompt(tok, item["prompt"])
        replies.append(
            lenskit.greedy_generate(model, enc.input_ids, st["max_new_tokens"], eos_token_ids=stop)
        )
        target = spelled_answer(tok, item["answer"])
        lenskit.run_lens(model, tok, item["prompt"], top_k=st["top_k"], target=target)
        if sweep:
            lenskit.intervention_sweep(
                model, tok, item["prompt"], max_new_tokens=st["max_new_tokens"],
                positions="template", intervention="skip",
            )  # fmt: skip
    return replies


def batched(model, tok, items: list[dict[str, Any]], st: dict[str, Any], sweep: bool) -> Any:
    import lenskit

    return lenskit.run_dataset(
        model, tok, items, max_new_tokens=st["max_new_tokens"], top_k=st["top_k"],
        sweep=sweep, batch_size=st["batch_size"],
    )  # fmt: skip


def _timed_once(fn) -> tuple[Any, dict[str, float]]:
    out, t = _report.timed(fn, 1)
    return out, {"wall_s": t["wall_s"], "cpu_s": t["cpu_s"]}


def _speed_case(rounds: list[dict[str, Any]], n: int, target: float) -> dict[str, Any]:
    for r in rounds:
        r["speedup"] = r["loop"]["wall_s"] / r["batched"]["wall_s"]
        r["met"] = r["speedup"] >= target
    med = {k: statistics.median(r[k]["wall_s"] for r in rounds) for k in ("loop", "batched")}
    return {
        "rounds": rounds,
        "median_speedup": statistics.median(r["speedup"] for r in rounds),
        "speedup_range": [min(r["speedup"] for r in rounds), max(r["speedup"] for r in rounds)],
        "median_wall_s": med,
        "prompts_per_s": {k: n / v for k, v in med.items()},
        "target": target,
        "rounds_met": sum(r["met"] for r in rounds),
    }


def measure_speed(model, tok, items: list[dict[str, Any]], st: dict[str, Any], clock) -> dict:
    """Rounds of loop vs batched, without and with the sweep (turns alternate per round)."""
    # Warm-up: lazy initialisations and the first forward passes are not the runs' cost.
    by_hand(model, tok, items[:2], st, sweep=True)
    batched(model, tok, items[:2], st, sweep=True)
    out: dict[str, Any] = {}
    last: dict[str, Any] = {}
    for case, sweep in (("lens", False), ("sweep", True)):
        rounds = []
        for r in range(st["rounds"]):
            order = ("loop", "batched") if r % 2 == 0 else ("batched", "loop")
            row: dict[str, Any] = {"order": f"{order[0]} first"}
            for who in order:
                fn = by_hand if who == "loop" else batched
                last[who], row[who] = _timed_once(lambda f=fn, s=sweep: f(model, tok, items, st, s))
                clock(f"{case} round {r + 1}/{st['rounds']}: {who} {row[who]['wall_s']:.1f} s")
            rounds.append(row)
        out[case] = _speed_case(rounds, len(items), TARGET_LENS if case == "lens" else TARGET_SWEEP)
        out[case]["replies_equal"] = _replies_equal(last["loop"], last["batched"])
        out[case]["result"] = last["batched"]
    return out


def _replies_equal(loop_replies: list, result: Any) -> int:
    """How many prompts got the same reply token ids from the loop and from run_dataset."""
    frame = result.prompts.sort_values("prompt_index")
    return sum(
        list(a) == [int(x) for x in b]
        for a, b in zip(loop_replies, frame["reply_ids"], strict=True)
    )


# --------------------------------------------------------------------------------------------
# 2. Memory: 100 vs 400 prompts, each in a fresh process
# --------------------------------------------------------------------------------------------


def _status_mib(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024.0  # kB
    return float("nan")


def rss_child(n: int, st: dict[str, Any]) -> dict[str, Any]:
    """In a fresh process: load, reset the peak mark, run_dataset over ``n`` prompts only."""
    import torch

    import lenskit

    torch.set_num_threads(st["threads"])
    model, tok = lenskit.load_model("default")
    items = prompt_items(n)
    load_rss = _status_mib("VmRSS")
    with contextlib.suppress(OSError):  # Linux: writing 5 resets VmHWM
        Path("/proc/self/clear_refs").write_text("5")
    t0 = time.perf_counter()
    result = lenskit.run_dataset(
        model, tok, items, max_new_tokens=st["rss_max_new_tokens"], top_k=st["top_k"],
        batch_size=st["batch_size"],
    )  # fmt: skip
    wall = time.perf_counter() - t0
    peak = _status_mib("VmHWM")
    return {
        "prompts": result.n_prompts,
        "wall_s": wall,
        "prompts_per_s": result.n_prompts / wall,
        "load_rss_mib": load_rss,
        "run_peak_mib": peak,
        "extra_mib": peak - load_rss,
    }


def spawn_rss(n: int, st: dict[str, Any]) -> dict[str, Any]:
    """:func:`rss_child` in a subprocess; its ru_maxrss from ``os.wait4`` after it exits."""
    fd, path = tempfile.mkstemp(suffix=".json", prefix="lenskit-bench-rss-")
    os.close(fd)
    cmd = [sys.executable, __file__, "--child-rss", str(n), json.dumps(st), path]
    proc = subprocess.Popen(cmd, cwd=ROOT)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    try:
        if proc.returncode != 0:
            raise RuntimeError(f"the RSS child for {n} prompts failed ({proc.returncode})")
        info = json.loads(Path(path).read_text())
    finally:
        Path(path).unlink(missing_ok=True)
    info["process_peak_mib"] = usage.ru_maxrss / 1024.0  # Linux: kB
    return info


def measure_rss(st: dict[str, Any], clock) -> dict[str, Any] | None:
    sizes = st["rss_prompts"]
    if len(sizes) < 2:
        return None
    runs = []
    for n in sizes:
        runs.append(spawn_rss(n, st))
        clock(f"RSS {n} prompts: run peak {runs[-1]['run_peak_mib']:.0f} MiB")
    small, large = runs[0], runs[-1]
    growth = large["run_peak_mib"] / small["run_peak_mib"] - 1
    return {
        "max_new_tokens": st["rss_max_new_tokens"],
        "runs": runs,
        "run_peak_growth": growth,
        "process_peak_growth": large["process_peak_mib"] / small["process_peak_mib"] - 1,
        "extra_growth_mib": large["extra_mib"] - small["extra_mib"],
        "target": TARGET_RSS,
        "met": growth <= TARGET_RSS,
    }


# --------------------------------------------------------------------------------------------
# 3. Processes: the CLI, one process against torchrun
# --------------------------------------------------------------------------------------------


def _torchrun() -> list[str]:
    exe = Path(sys.executable).parent / "torchrun"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "torch.distributed.run"]


def _cli_run(prefix: list[str], file: Path, out: Path, st: dict, threads: int) -> dict:
    cmd = [
        *prefix, "-m", "lenskit", "dataset", str(file), "-o", str(out), "-q",
        "--max-new-tokens", str(st["max_new_tokens"]), "--batch-size", str(st["batch_size"]),
        "--top-k", str(st["top_k"]),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(
            f"`{' '.join(cmd)}` failed ({proc.returncode}): "
            f"{(proc.stderr or proc.stdout).strip()[-1500:]}"
        )
    run_s = (out / "summary.json").stat().st_mtime - (out / "state.json").stat().st_mtime
    return {"wall_s": wall, "run_s": run_s, "stdout": proc.stdout.strip().splitlines()}


def _check_cli() -> None:
    """A clear error when the CLI has no ``dataset`` subcommand (yet)."""
    cmd = [sys.executable, "-m", "lenskit", "dataset", "--help"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(
            f"the CLI has no working `dataset` subcommand (`{' '.join(cmd)}` exited "
            f"{proc.returncode}: {(proc.stderr or proc.stdout).strip()[-500:]})"
        )


def _compare(a: Any, b: Any) -> dict[str, Any]:
    """Two summaries of the same prompts: counts equal, largest differences."""
    import numpy as np

    counts = all(
        np.array_equal(a.stats.sums[name], b.stats.sums[name])
        for name in a.stats.sums
        if name.endswith("_n")
    )
    diff = {}
    for stat, k in (("answer_hit", K), ("lift", K), ("entropy", 1), ("answer_prob", 1)):
        x, y = a.summary(stat, k).to_numpy(), b.summary(stat, k).to_numpy()
        diff[f"{stat}@{k}" if stat in ("answer_hit", "lift") else stat] = float(
            np.nanmax(np.abs(x - y))
        )
    agree = counts and a.n_prompts == b.n_prompts and max(diff.values()) < 1e-3
    return {"counts_equal": counts, "max_abs_diff": diff, "agree": agree}


def measure_torchrun(items: list[dict[str, Any]], st: dict[str, Any], clock) -> dict | None:
    if not st["torchrun"]:
        return None
    import lenskit

    tmp = Path(tempfile.mkdtemp(prefix="lenskit-bench-torchrun-"))
    try:
        _check_cli()
        file = tmp / "prompts.jsonl"
        file.write_text("".join(json.dumps(item) + "\n" for item in items))
        nproc, threads = st["nproc"], st["threads"]
        launches = [
            (1, threads, [sys.executable]),
            (nproc, max(threads // nproc, 1), [*_torchrun(), "--standalone",
                                               f"--nproc_per_node={nproc}"]),
        ]  # fmt: skip
        runs, results = [], []
        for procs, per, prefix in launches:
            out = tmp / f"run-{procs}"
            run = {"processes": procs, "threads_each": per, **_cli_run(prefix, file, out, st, per)}
            run["prompts_per_s"] = len(items) / run["wall_s"]
            run["run_prompts_per_s"] = len(items) / run["run_s"]
            runs.append(run)
            results.append(lenskit.DatasetResult.load(out))
            clock(f"CLI {procs} process(es): {run['wall_s']:.1f} s (run {run['run_s']:.1f} s)")
    except RuntimeError as exc:
        msg = f"the CLI dataset command did not run: {exc}"
        print(f"bench_dataset: torchrun part FAILED: {msg}", file=sys.stderr, flush=True)
        return {"error": msg}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "prompts": len(items),
        "runs": runs,
        "speedup_wall": runs[0]["wall_s"] / runs[1]["wall_s"],
        "speedup_run": runs[0]["run_s"] / runs[1]["run_s"],
        "summaries": _compare(results[0], results[1]),
    }


# --------------------------------------------------------------------------------------------
# 4. What the bundled set shows
# --------------------------------------------------------------------------------------------


def _best_cell(result: Any, stat: str, template: bool) -> dict[str, Any] | None:
    frame = result.summary_frame(stat, K).dropna(subset=["value"])
    frame = frame[(frame["column"] >= 0) if template else (frame["column"] < 0)]
    if frame.empty:
        return None
    cell = frame.loc[frame["value"].idxmax()]
    return {
        "row": str(cell["layer"]),
        "column": int(cell["column"]),
        "label": str(cell["label"]),
        "value": float(cell["value"]),
        "low": float(cell["low"]),
        "high": float(cell["high"]),
        "n": int(cell["n"]),
    }


def findings(result: Any, source: str, max_new: int, timing: dict | None) -> dict[str, Any]:
    """Best cells by lift and answer hit rate at k=10, and the share answered correctly."""
    prompts = result.prompts
    correct = prompts["correct"].dropna().astype(bool)
    by_cat = prompts.dropna(subset=["correct"]).groupby("category")["correct"]
    return {
        "source": source,
        "prompts": result.n_prompts,
        "max_new_tokens": max_new,
        "timing": timing,
        "k": K,
        "correct": {
            "n": int(correct.size),
            "share": float(correct.mean()) if correct.size else None,
            "by_category": {
                str(c): {"n": int(s.size), "share": float(s.astype(bool).mean())} for c, s in by_cat
            },
        },
        "best": {
            stat: {
                "template": _best_cell(result, stat, True),
                "user": _best_cell(result, stat, False),
            }
            for stat in ("lift", "answer_hit")
        },
    }


def bundled_run(model, tok, st: dict[str, Any], speed: dict, clock) -> dict[str, Any]:
    """Part 4 over ``set_prompts`` prompts (all 321: the bundled PromptSet itself); with 0,
    the sweep runs' batched result from part 1."""
    import lenskit

    n = st["set_prompts"]
    if n <= 0:
        source = "part 1's last batched run with the sweep"
        return findings(speed["sweep"]["result"], source, st["max_new_tokens"], None)
    bundled = lenskit.bundled_prompts()
    prompts = bundled if n == len(bundled) else prompt_items(n)
    max_new = st["set_max_new_tokens"]
    set_st = {**st, "max_new_tokens": max_new}
    result, timing = _timed_once(lambda: batched(model, tok, prompts, set_st, sweep=False))
    timing["prompts_per_s"] = result.n_prompts / timing["wall_s"]
    clock(f"set run, {n} prompts: {timing['wall_s']:.1f} s")
    source = "the whole bundled set" if n == len(bundled) else f"{n} prompts of the set"
    return findings(result, source, max_new, timing)


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--prompts", type=int, default=None, help="prompts of parts 1 and 3 (default 48)")
    add("--rounds", type=int, default=None, help="rounds of part 1 (default 2)")
    add("--max-new-tokens", type=int, default=None, help="reply tokens, parts 1, 3 (24)")
    add(
        "--batch-size",
        type=int,
        default=None,
        help="run_dataset's batch size (default 16, the library's)",
    )
    add("--threads", type=int, default=2, help="torch threads in total (default 2)")
    add("--rss-prompts", default=None, help="sizes of part 2 (default 100,400)")
    add("--rss-max-new-tokens", type=int, default=None, help="reply tokens, part 2 (8)")
    add("--skip-rss", action="store_true", help="skip part 2")
    add("--skip-torchrun", action="store_true", help="skip part 3")
    add("--nproc", type=int, default=2, help="processes of the torchrun launch (default 2)")
    add(
        "--set-prompts",
        type=int,
        default=None,
        help="prompts of part 4's own run (default 321, the whole set, at 24 tokens; 0: "
        "read part 4 from part 1's last run with the sweep)",
    )
    add("--child-rss", nargs=3, help=argparse.SUPPRESS)
    _report.add_common_args(parser)
    args = parser.parse_args()
    if args.prompts is not None and args.prompts < 2:
        parser.error("--prompts must be at least 2 (the dataset mode needs 2 prompts)")
    return args


def _clock(t0: float, total: float):
    def clock(message: str) -> None:
        spent = time.perf_counter() - t0
        print(f"[{spent:6.0f} s / ~{total:.0f} s] {message}", flush=True)

    return clock


def main() -> None:
    args = parse_args()
    if args.child_rss:
        n, st, path = args.child_rss
        Path(path).write_text(json.dumps(rss_child(int(n), json.loads(st))))
        return
    import torch

    torch.set_num_threads(args.threads)
    from lenskit import load_model

    data = _report.header("bench_dataset", settings_of(args, _report.is_quick(args)))
    st = data["settings"]
    total = estimate_s(st)
    print(f"bench_dataset: expected duration on a quiet 2-core machine ~{total / 60:.0f} min "
          f"({total:.0f} s)", flush=True)  # fmt: skip
    clock = _clock(time.perf_counter(), total)
    load_before = os.getloadavg()[0]
    model, tok = load_model("default")
    items = prompt_items(st["prompts"])
    cats: dict[str, int] = {}
    for item in items:
        cats[item["category"]] = cats.get(item["category"], 0) + 1
    data["subset"] = {"n": len(items), "categories": cats}
    speed = measure_speed(model, tok, items, st, clock)
    data["rss"] = measure_rss(st, clock)
    data["torchrun"] = measure_torchrun(items, st, clock)
    data["bundled"] = bundled_run(model, tok, st, speed, clock)
    data["speed"] = {
        case: {k: v for k, v in s.items() if k != "result"} for case, s in speed.items()
    }
    data["load_avg_1min"] = {"start": load_before, "end": os.getloadavg()[0]}
    print()
    print(render.section("bench_dataset", data))
    _report.save("bench_dataset", data, args)


if __name__ == "__main__":
    main()
