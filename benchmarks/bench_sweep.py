"""Benchmark the intervention sweep on the default model: the shipped strategy vs the reference.

The case from the issue: "What is the capital of Australia?" (chat template), all 30 blocks
x 5 generated tokens, "skip" at the template positions. Strategies of
``lenskit.intervention_sweep`` (all give the same KL to float rounding; the largest
difference from "sequential" is reported):

* prefix (the default, "auto"): one batch row per block; a row starts at its own block from
  the clean hidden state and at the first intervened position (earlier positions come from
  the clean KV cache), about L(L+1)/2 block evaluations over the suffix only.
* batched: full forward passes with one batch row per block (hooks edit their own row).
* sequential: one full forward pass per block with a hook (the straightforward reference).

Every variant includes the greedy generation and the clean run. Times are the best of a few
repeats after a warm-up, wall clock and process CPU time (the machine may be shared with
other jobs: CPU time is the steadier of the two; the load average is recorded).

Also timed, for the README's load times: the first load of the default model in a fresh
process with an empty cache (GGUF dequantisation, tokenizer build and cache write, into a
temporary ``LENSKIT_CACHE_DIR`` that is deleted afterwards), and the cached load in this
process.

Results: ``benchmarks/results/bench_sweep.json``, besides the common fields (see _report.py)
``load_avg_1min`` (start, end) and ``results``: the case (``n_blocks``, ``prompt_tokens``,
``answer``, ``n_positions``, ``first_position``, ``n_generated``), ``strategies`` (per
strategy: best and every repeat's wall / CPU seconds, the speed-up over sequential, the largest
KL difference from it), ``generation``, ``load_s``, ``first_load_s`` and ``largest_kl``.

Usage: ``python benchmarks/bench_sweep.py [--quick] [--no-write] [--repeats 3] [--no-conversion]``
"""

from __future__ import annotations

import argparse
import os
import shutil
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

PROMPT = "What is the capital of Australia?"
TARGET_S = 10.0
STRATEGIES = ("prefix", "batched", "sequential")
DEFAULT_STRATEGY = "prefix"  # what strategy="auto" picks for this case
MAX_NEW_TOKENS = 5


def first_load_s() -> float:
    """Wall time (s) of a fresh process that imports lenskit and loads the default model
    with an empty cache, so the GGUF is converted and written as a first-time user's is."""
    tmp = tempfile.mkdtemp(prefix="lenskit-bench-cache-")
    try:
        env = {**os.environ, "LENSKIT_CACHE_DIR": tmp}
        code = "import lenskit; lenskit.load_model('default')"
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, check=True)
        return time.perf_counter() - t0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def settings_of(args: argparse.Namespace, quick: bool) -> dict:
    """The options (quick mode: one repeat each, no first-load timing) and the case."""
    return {
        "prompt": PROMPT,
        "chat": True,
        "intervention": "skip",
        "positions": "template",
        "max_new_tokens": MAX_NEW_TOKENS,
        "repeats": 1 if quick else args.repeats,
        "sequential_repeats": args.sequential_repeats,
        "time_first_load": not (quick or args.no_conversion),
        "target_s": TARGET_S,
        "quick": quick,
    }


def time_strategies(model, tok, settings: dict) -> tuple[list[dict], Any]:
    """Each strategy timed (best of its repeats) with its KL against sequential's; returns
    the rows and the default strategy's result."""
    import numpy as np

    from lenskit import intervention_sweep

    timings, results = {}, {}
    for strategy in STRATEGIES:
        repeats = settings["sequential_repeats" if strategy == "sequential" else "repeats"]
        results[strategy], timings[strategy] = _report.timed(
            lambda s=strategy: intervention_sweep(
                model, tok, PROMPT, max_new_tokens=MAX_NEW_TOKENS, strategy=s
            ),
            repeats,
        )
        wall, cpu = timings[strategy]["wall_s"], timings[strategy]["cpu_s"]
        print(f"{strategy:10s} wall {wall:6.2f} s  cpu {cpu:6.2f} s  (best of {repeats})")
    ref = results["sequential"]
    rows = [
        {
            "strategy": strategy,
            "default": strategy == DEFAULT_STRATEGY,
            **timings[strategy],
            "speedup_vs_sequential": timings["sequential"]["wall_s"] / timings[strategy]["wall_s"],
            "max_abs_dkl_vs_sequential": float(np.abs(results[strategy].kl - ref.kl).max()),
        }
        for strategy in STRATEGIES
    ]
    return rows, results[DEFAULT_STRATEGY]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="repeats of the fast variants")
    parser.add_argument(
        "--sequential-repeats", type=int, default=1, help="repeats of the slow reference"
    )
    parser.add_argument(
        "--no-conversion", action="store_true", help="skip timing the first (converting) load"
    )
    _report.add_common_args(parser)
    args = parser.parse_args()

    from lenskit import encode_prompt, greedy_generate, intervention_sweep, load_model

    data = _report.header("bench_sweep", settings_of(args, _report.is_quick(args)))
    st = data["settings"]
    first_load = first_load_s() if st["time_first_load"] else None
    t0 = time.perf_counter()
    model, tok = load_model("default")
    load_s = time.perf_counter() - t0
    n_blocks = model.config.num_hidden_layers
    enc = encode_prompt(tok, PROMPT)
    # Warm-up: the first forward pass faults the weights in and initialises the kernels.
    intervention_sweep(model, tok, PROMPT, layers=[n_blocks - 1])
    _, gen = _report.timed(
        lambda: greedy_generate(model, enc.input_ids, MAX_NEW_TOKENS), st["repeats"]
    )
    load_before = os.getloadavg()[0]
    rows, res = time_strategies(model, tok, st)
    data["load_avg_1min"] = {"start": load_before, "end": os.getloadavg()[0]}
    assert res.kl.shape == (n_blocks, MAX_NEW_TOKENS), res.kl.shape
    data["results"] = {
        "n_blocks": n_blocks,
        "prompt_tokens": len(enc),
        "answer": tok.convert_tokens_to_string(res.generated_tokens.tolist()),
        "n_positions": int(res.positions.size),
        "first_position": int(res.positions.min()),
        "n_generated": int(res.n_generated),
        "strategies": rows,
        "generation": gen,
        "load_s": load_s,
        "first_load_s": first_load,
        "largest_kl": {
            "nats": float(res.kl.max()),
            "block": int(res.layers[res.kl.max(1).argmax()]),
        },
    }
    print()
    print(render.section("bench_sweep", data))
    _report.save("bench_sweep", data, args)


if __name__ == "__main__":
    main()
