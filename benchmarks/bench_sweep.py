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
other jobs: CPU time is the steadier of the two; the load average is recorded). Writes the
``bench_sweep`` section of docs/benchmarks.md unless ``--no-write``.

Also timed, for the README's load times: the first load of the default model in a fresh
process with an empty cache (GGUF dequantisation, tokenizer build and cache write, into a
temporary ``LENSKIT_CACHE_DIR`` that is deleted afterwards), and the cached load in this
process.

Usage: ``python benchmarks/bench_sweep.py [--no-write] [--repeats 3] [--no-conversion]``
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

PROMPT = "What is the capital of Australia?"
TARGET_S = 10.0
STRATEGIES = ("prefix", "batched", "sequential")


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of the fast variants")
    parser.add_argument(
        "--sequential-repeats", type=int, default=1, help="repeats of the slow reference"
    )
    parser.add_argument(
        "--no-conversion", action="store_true", help="skip timing the first (converting) load"
    )
    args = parser.parse_args()

    import numpy as np
    import torch
    from _report import machine, stamp, timed, write_section

    from lenskit.interventions import greedy_generate, intervention_sweep
    from lenskit.models import load_model
    from lenskit.prompts import encode_prompt

    convert_s = None if args.no_conversion else first_load_s()
    t0 = time.perf_counter()
    model, tok = load_model("default")
    load_s = time.perf_counter() - t0
    n_blocks = model.config.num_hidden_layers
    enc = encode_prompt(tok, PROMPT)
    # Warm-up: the first forward pass faults the weights in and initialises the kernels.
    intervention_sweep(model, tok, PROMPT, layers=[n_blocks - 1])
    _, gen_wall, gen_cpu = timed(lambda: greedy_generate(model, enc.input_ids, 5), args.repeats)
    load_before = os.getloadavg()[0]

    rows = {}
    results = {}
    for strategy in STRATEGIES:
        repeats = args.sequential_repeats if strategy == "sequential" else args.repeats
        res, wall, cpu = timed(
            lambda s=strategy: intervention_sweep(model, tok, PROMPT, strategy=s), repeats
        )
        results[strategy] = res
        rows[strategy] = (wall, cpu, repeats)
        print(f"{strategy:10s} wall {wall:6.2f} s  cpu {cpu:6.2f} s  (best of {repeats})")
    load_after = os.getloadavg()[0]

    ref = results["sequential"]
    res = results["prefix"]
    assert res.kl.shape == (n_blocks, 5), res.kl.shape
    answer = tok.convert_tokens_to_string(res.generated_tokens.tolist())
    seq_wall = rows["sequential"][0]
    lines = [
        stamp(),
        "",
        f"`intervention_sweep` on the default model ({n_blocks} blocks): {PROMPT!r} in the chat "
        f"template ({len(enc)} tokens), greedy answer {answer!r}; skip at the "
        f"{res.positions.size} template positions (from position {int(res.positions.min())}), "
        f"all {n_blocks} blocks x {res.n_generated} generated tokens. Each time includes the "
        "generation and the clean run; best of the repeats after a warm-up sweep. Target: "
        f"under {TARGET_S:.0f} s.",
        "",
        "| strategy | wall (s) | CPU (s) | speed-up vs sequential (wall) | max abs ΔKL vs sequential (nats) |",
        "|---|---:|---:|---:|---:|",
    ]
    for strategy in STRATEGIES:
        wall, cpu, _ = rows[strategy]
        diff = float(np.abs(results[strategy].kl - ref.kl).max())
        name = f"{strategy} (default)" if strategy == "prefix" else strategy
        lines.append(f"| {name} | {wall:.2f} | {cpu:.2f} | {seq_wall / wall:.1f}x | {diff:.1e} |")
    lines += [
        "",
        f"Greedy generation of 5 tokens alone (part of every row): {gen_wall:.2f} s wall, "
        f"{gen_cpu:.2f} s CPU. Model load (cached conversion): {load_s:.1f} s."
        + (
            ""
            if convert_s is None
            else f" First load in a fresh process with an empty cache (import, GGUF "
            f"conversion, cache write): {convert_s:.1f} s."
        ),
        f"Largest KL: {float(res.kl.max()):.2f} nats (block {int(res.layers[res.kl.max(1).argmax()])}). "
        f"Load average during the run: {load_before:.1f} -> {load_after:.1f} "
        f"(other jobs share these {os.cpu_count()} cores; torch threads: "
        f"{torch.get_num_threads()}).",
        f"Default strategy {'meets' if rows['prefix'][0] < TARGET_S else 'MISSES'} the "
        f"{TARGET_S:.0f} s target.",
    ]
    body = "\n".join(lines)
    print()
    print(body)
    if not args.no_write:
        write_section("bench_sweep", body)
        print(f"\nwrote the bench_sweep section of docs/benchmarks.md ({machine()})")


if __name__ == "__main__":
    main()
