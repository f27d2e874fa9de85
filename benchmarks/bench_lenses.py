"""Benchmark the tuned lens on the default model on CPU: training, fidelity, read-out time.

Three parts, in this process, with ``--threads`` torch threads (default 2):

1. Training: ``lenskit.lens.train.train_lens(model, tokenizer, out=<temporary dir>)`` with the
   default options (the default lens: the bundled prompt set's chat transcripts written by
   the model itself; ``--steps`` changes the number of steps), wall and CPU seconds, split
   into phases by the times of the progress callback's messages: ``transcripts`` (up to the
   last "Sampling replies" message: the prompt set and the sampled replies), ``to_first_step``
   (the held-out split, the held-out KL of the zero lens, step 1), ``steps`` (from the first
   "Step" message to the last: steps 2..N, checkpoints included; steps/s = (N - 1) / that),
   ``after_steps`` (the held-out KL of the trained lens, train.json). The held-out KL per
   inner row before / after training comes from ``lens.training``. Target (issue 17): the
   whole run in 15 minutes or less on a 2-core machine.
2. Fidelity: ``lens_fidelity(model, tokenizer, ["logit", lens], heldout)`` on the training
   run's held-out transcripts: per row and region (template positions, the user's text) the
   mean KL(out || row) and the top-1 agreement with row "out"; per region the mean over rows
   1..L-1 (the block rows: not "emb", not "out") of both lenses and the reduction
   ``100 x (1 - tuned / logit)`` %. Target: >= 50 % at template and at user positions each.
3. Read-out time: ``run_lens`` on a ~1000-token prompt (bench_lens.py's long prompt, chat
   template, top-5) with the tuned lens against the logit lens: one warm-up call each, then
   ``--repeats`` calls each, interleaved (the order alternates round by round); medians of
   wall and CPU time, ratio tuned / logit. Target: <= 1.15.

Results: ``benchmarks/results/bench_lenses.json`` (``--out``; in quick mode a temporary
folder, see _report.py), besides the common fields ``load_avg_1min`` (start, end),
``training`` (wall_s, cpu_s, phases_s, steps_per_s, n_transcripts, n_train, n_heldout,
heldout_kl_before / heldout_kl_after per inner row "emb", "1" .. "L-1", their means over rows
1..L-1, first and last losses, met), ``fidelity`` (layer_names, lenses, n per region, per
lens and region the mean KL and top-1 agreement per row, ``summary`` per region: the means
over rows 1..L-1, reduction_pct, met; wall_s) and ``readout`` (tokens, rows, vocab, every
call's wall / CPU per lens, medians, ratio, met, whether row "out" was the same).

Usage: ``python benchmarks/bench_lenses.py [--quick] [--steps N] [--out FILE] [--no-write]
[--threads 2] [--repeats 5] [--tokens 1000] [--keep-lens DIR]``
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
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

NAME = "bench_lenses"
TARGET_TRAIN_S = 15 * 60.0
TARGET_REDUCTION_PCT = 50.0
TARGET_READOUT_RATIO = 1.15
TOP_K = 5
# Part 1's training options over train_lens's defaults, part 3's prompt and repeats. Full:
# the defaults (None = the bundled set, all of it). Quick: a smoke test of a minute or two.
FULL = {"prompts": None, "train": {}, "tokens": 1000, "repeats": 5}
QUICK = {
    "prompts": 8,
    "train": {
        "steps": 3, "sequences": 2, "positions": 16, "reply_tokens": 4, "eval_positions": 32,
        "heldout_percent": 25, "checkpoint_every": 2,
    },
    "tokens": 64,
    "repeats": 1,
}  # fmt: skip


def settings_of(args: argparse.Namespace, quick: bool) -> dict[str, Any]:
    from lenskit.lens.train_options import default_options

    base = QUICK if quick else FULL
    train = {**default_options(), **base["train"]}
    if args.steps is not None:
        train["steps"] = args.steps
    data = "the bundled prompt set"
    if base["prompts"] is not None:
        data += f", {base['prompts']} of its prompts across its categories"
    return {
        "model": "default",
        "threads": args.threads,
        "prompts": base["prompts"],
        "data": data,
        "train_options": train,
        "readout_tokens_asked": args.tokens or base["tokens"],
        "repeats": args.repeats or base["repeats"],
        "top_k": TOP_K,
        "targets": {
            "train_s": TARGET_TRAIN_S,
            "reduction_pct": TARGET_REDUCTION_PCT,
            "readout_ratio": TARGET_READOUT_RATIO,
        },
        "quick": quick,
    }


def _finite(values: Any) -> list[float | None]:
    """Floats for JSON (NaN -> None)."""
    return [None if not math.isfinite(float(v)) else float(v) for v in values]


def _block_mean(values: list[float]) -> float | None:
    """The mean over rows 1..L-1 of per-row values of the inner rows (emb, 1 .. L-1)."""
    rows = values[1:]
    return float(sum(rows) / len(rows)) if rows else None


# --------------------------------------------------------------------------------------------
# 1. Training
# --------------------------------------------------------------------------------------------


def _data(st: dict[str, Any]) -> Any:
    """train_lens's data: None (the bundled set) or its first prompts spread over the
    categories (bench_dataset.py's order)."""
    if st["prompts"] is None:
        return None
    import bench_dataset

    return bench_dataset.prompt_items(st["prompts"])


def _phases(events: list[tuple[float, str]], t0: float, t_end: float) -> dict[str, float]:
    """Wall seconds per phase from the progress messages' times (see the module docstring)."""
    sampling = [t for t, msg in events if msg.startswith("Sampling replies")]
    steps = [t for t, msg in events if msg.startswith("Step ")]
    t_data = sampling[-1] if sampling else t0  # no message: the transcripts were cached
    first, last = (steps[0], steps[-1]) if steps else (t_end, t_end)
    return {
        "transcripts": t_data - t0,
        "to_first_step": first - t_data,
        "steps": last - first,
        "after_steps": t_end - last,
    }


def train(model, tok, st: dict[str, Any], out: Path) -> tuple[Any, dict[str, Any]]:
    """Train the lens into ``out``; the lens and part 1's figures."""
    from lenskit.lens.train import train_lens

    events: list[tuple[float, str]] = []
    last_print = [0.0]

    def progress(fraction: float, message: str) -> None:
        now = time.perf_counter()
        events.append((now, message))
        if now - last_print[0] > 30 or fraction >= 1.0:
            last_print[0] = now
            print(f"  [{now - t0:6.0f} s] {message}", flush=True)

    options = st["train_options"]
    t0, c0 = time.perf_counter(), time.process_time()
    lens = train_lens(model, tok, _data(st), out=out, progress=progress, **options)
    t_end, cpu = time.perf_counter(), time.process_time() - c0
    log = lens.training
    phases = _phases(events, t0, t_end)
    n_steps = log.steps
    before, after = list(log.heldout_kl_before), list(log.heldout_kl_after)
    mean_before, mean_after = _block_mean(before), _block_mean(after)
    n_transcripts = _n_transcripts(out)
    wall = t_end - t0
    return lens, {
        "wall_s": wall,
        "cpu_s": cpu,
        "phases_s": phases,
        "steps": n_steps,
        "steps_per_s": (n_steps - 1) / phases["steps"] if n_steps > 1 and phases["steps"] else None,
        "n_transcripts": n_transcripts,
        "n_heldout": len(log.heldout),
        "n_train": n_transcripts - len(log.heldout),
        "heldout_tokens": int(sum(len(r["input_ids"]) for r in log.heldout)),
        "heldout_kl_before": before,
        "heldout_kl_after": after,
        "heldout_kl_block_mean": {"before": mean_before, "after": mean_after},
        "loss_first": log.losses[0] if log.losses else None,
        "loss_last": log.losses[-1] if log.losses else None,
        "met": wall <= TARGET_TRAIN_S,
    }


def _n_transcripts(out: Path) -> int:
    """How many transcripts the run trained and evaluated on (its transcripts file)."""
    import torch

    from lenskit.lens.train import TRANSCRIPTS_FILE

    saved = torch.load(out / TRANSCRIPTS_FILE, map_location="cpu", weights_only=True)
    return len(saved["records"])


# --------------------------------------------------------------------------------------------
# 2. Fidelity
# --------------------------------------------------------------------------------------------


def fidelity(model, tok, lens) -> dict[str, Any]:
    """The logit lens against the tuned lens on the run's held-out transcripts."""
    import numpy as np

    from lenskit.lens.fidelity import FIDELITY_REGIONS, lens_fidelity

    t0 = time.perf_counter()
    report = lens_fidelity(model, tok, ["logit", lens], lens.training.heldout)
    wall = time.perf_counter() - t0
    names = report.lenses.tolist()
    summary = {}
    for r, region in enumerate(FIDELITY_REGIONS):
        kl = report.mean_kl[:, r, 1:-1]  # rows 1..L-1
        top1 = report.top1_agreement[:, r, 1:-1]
        logit, tuned = float(np.mean(kl[0])), float(np.mean(kl[1]))
        reduction = 100.0 * (1.0 - tuned / logit) if logit > 0 else float("nan")
        summary[region] = {
            "n": int(report.n[r]),
            "mean_kl_logit": logit,
            "mean_kl_tuned": tuned,
            "reduction_pct": reduction,
            "top1_logit": float(np.mean(top1[0])),
            "top1_tuned": float(np.mean(top1[1])),
            "met": bool(reduction >= TARGET_REDUCTION_PCT),
        }
    return {
        "layer_names": report.layer_names.tolist(),
        "lenses": names,
        "regions": list(FIDELITY_REGIONS),
        "n": report.n.tolist(),
        "n_transcripts": report.n_transcripts,
        "mean_kl": {
            name: {reg: _finite(report.mean_kl[i, r]) for r, reg in enumerate(FIDELITY_REGIONS)}
            for i, name in enumerate(names)
        },
        "top1_agreement": {
            name: {
                reg: _finite(report.top1_agreement[i, r]) for r, reg in enumerate(FIDELITY_REGIONS)
            }
            for i, name in enumerate(names)
        },
        "summary": summary,
        "wall_s": wall,
    }


# --------------------------------------------------------------------------------------------
# 3. Read-out time
# --------------------------------------------------------------------------------------------


def readout(model, tok, lens, st: dict[str, Any]) -> dict[str, Any]:
    """run_lens with the tuned lens against the logit lens, interleaved."""
    import numpy as np
    from bench_lens import _long_prompt

    import lenskit

    prompt = _long_prompt(tok, st["readout_tokens_asked"])
    lenses = {"logit": "logit", "tuned": lens}
    calls: dict[str, dict[str, list[float]]] = {k: {"wall": [], "cpu": []} for k in lenses}
    results = {}
    for name, spec in lenses.items():  # warm-up
        results[name] = lenskit.run_lens(model, tok, prompt, top_k=TOP_K, lens=spec)
    for i in range(st["repeats"]):
        order = list(lenses) if i % 2 == 0 else list(reversed(lenses))
        for name in order:
            w0, c0 = time.perf_counter(), time.process_time()
            lenskit.run_lens(model, tok, prompt, top_k=TOP_K, lens=lenses[name])
            calls[name]["wall"].append(time.perf_counter() - w0)
            calls[name]["cpu"].append(time.process_time() - c0)
        print(
            f"  round {i + 1}/{st['repeats']}: logit {calls['logit']['wall'][-1]:.2f} s, "
            f"tuned {calls['tuned']['wall'][-1]:.2f} s",
            flush=True,
        )
    median = {k: {m: statistics.median(v[m]) for m in ("wall", "cpu")} for k, v in calls.items()}
    ratio = {m: median["tuned"][m] / median["logit"][m] for m in ("wall", "cpu")}
    logit, tuned = results["logit"], results["tuned"]
    return {
        "tokens": int(logit.top_ids.shape[1]),
        "rows": int(logit.top_ids.shape[0]),
        "vocab": int(lenskit.ReadoutEngine(model).vocab_size),
        "calls_s": calls,
        "median_s": median,
        "ratio": ratio,
        "met": bool(ratio["wall"] <= TARGET_READOUT_RATIO),
        "out_row_equal": bool(np.array_equal(logit.top_ids[-1], tuned.top_ids[-1])),
    }


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--steps", type=int, default=None, help="training steps (default: train_lens's, 250)")
    add("--threads", type=int, default=2, help="torch threads (default 2)")
    add("--repeats", type=int, default=None, help="run_lens calls per lens, part 3 (5)")
    add("--tokens", type=int, default=None, help="part 3's prompt length (default 1000)")
    add("--keep-lens", type=Path, default=None, help="train into this new folder and keep it")
    add(
        "--out",
        type=Path,
        default=None,
        help=f"the results file (default <results>/{NAME}.json: benchmarks/results, or a "
        "temporary folder with --quick)",
    )
    _report.add_common_args(parser)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    import torch

    torch.set_num_threads(args.threads)
    import lenskit
    from lenskit.model import model_name

    data = _report.header(NAME, settings_of(args, _report.is_quick(args)))
    st = data["settings"]
    load_before = os.getloadavg()[0]
    model, tok = lenskit.load_model("default")
    st["model"] = model_name(model)
    with tempfile.TemporaryDirectory(prefix="bench_lenses-") as tmp:
        out = args.keep_lens or Path(tmp) / "lens"
        print(f"1. training the lens into {out} ({st['train_options']['steps']} steps)", flush=True)
        lens, data["training"] = train(model, tok, st, out)
        print("2. fidelity on the held-out transcripts", flush=True)
        data["fidelity"] = fidelity(model, tok, lens)
        print("3. read-out time, tuned vs logit lens", flush=True)
        data["readout"] = readout(model, tok, lens, st)
    data["load_avg_1min"] = {"start": load_before, "end": os.getloadavg()[0]}
    print()
    print(render.section(NAME, data))
    if args.no_write:
        return
    path = args.out or _report.results_dir(args) / f"{NAME}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {path}", flush=True)


if __name__ == "__main__":
    main()
