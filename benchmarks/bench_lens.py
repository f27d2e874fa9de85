"""Benchmark run_lens on the default model: streamed vs naive read-out, and the GEMM floor.

Every variant runs in a fresh subprocess; "extra peak" is its peak resident memory (VmHWM,
reset just before the run) minus the resident memory after loading the model and one tiny
warm-up run (so the model, the torch runtime and one-time buffers are not counted).

* streamed: ``lenskit.run_lens`` as shipped (chunked read-out, fused ops); then its parts, timed
  apart through the public engine: ``ReadoutEngine.forward`` (the forward pass) and
  ``ReadoutEngine.statistics`` (the read-out alone).
* naive: the same forward pass, then all ``[T, R, V]`` fp32 logits at once
  (``ReadoutEngine.row_logits``) and the same fused ops on them (what streaming avoids).
  Skipped when the machine lacks the memory for it.
* GEMM floor: only the unembedding matmuls for the same R x T rows (chunked like the
  read-out, into a reused buffer): the read-out cannot be cheaper than this.

Times are the best of a few repeats, wall clock and process CPU time (the machine may be
shared: CPU time is the steadier of the two). Results: ``benchmarks/results/bench_lens.json``,
besides the common fields (see _report.py) ``results``, one entry per prompt length and
variant: ``tokens``, ``rows`` (R), ``vocab`` (V), best times ``<part>_wall`` / ``<part>_cpu``
(s) for the parts ``run_lens``, ``cold`` (the first call in the process), ``forward``,
``readout``, ``gemm``, ``gemm_oneshot``, every repeat in ``repeats_s``, ``peak_extra_mib``,
``chunk_positions`` and ``readout_over_gemm`` (wall and CPU ratios); a naive run that did not
fit has ``skipped`` instead.

Usage: ``python benchmarks/bench_lens.py [--quick] [--no-write] [--long-tokens 1000]``
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _report  # noqa: E402
import render  # noqa: E402

SHORT = "What is the capital of Australia? Answer in one word, then explain briefly."
_FILLER = (
    "Australia is a country in the southern hemisphere. Its largest cities are Sydney and "
    "Melbourne, which competed to become the national capital; the compromise was a new city "
    "planned between them. "
)
TOP_K = 5
SHORT_TOKENS, SHORT_REPEATS = 40, 3
LONG_TOKENS, QUICK_LONG_TOKENS = 1000, 100


def _status_mib(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024.0  # kB
    return float("nan")


def _reset_peak() -> float:
    """Reset the peak-RSS mark (Linux: writing 5 to clear_refs resets VmHWM) and return the
    current RSS in MiB: the baseline the next peak is measured against. Loading the model
    peaks higher than the read-out, so without the reset ru_maxrss would hide it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return _status_mib("VmRSS")


def _peak_mib() -> float:
    peak = _status_mib("VmHWM")
    if peak != peak:  # NaN: no /proc
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return peak


def _mem_available_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**20
    return 0.0


def _long_prompt(tokenizer, n_tokens: int) -> str:
    import lenskit

    text = ""
    while True:
        candidate = text + _FILLER
        if len(lenskit.encode_prompt(tokenizer, candidate + "What is the capital?")) > n_tokens:
            break
        text = candidate
    words = _FILLER.split()
    for w in words:  # top up word by word
        candidate = text + w + " "
        if len(lenskit.encode_prompt(tokenizer, candidate + "What is the capital?")) > n_tokens:
            break
        text = candidate
    return text + "What is the capital?"


def _put(info: dict, part: str, timing: dict) -> None:
    """Store one part's best times, and every repeat under ``repeats_s``."""
    info[f"{part}_wall"], info[f"{part}_cpu"] = timing["wall_s"], timing["cpu_s"]
    info.setdefault("repeats_s", {})[part] = {
        "wall": timing["wall_all_s"],
        "cpu": timing["cpu_all_s"],
    }


def _chunk_positions(n_pos: int, n_rows: int, vocab: int) -> int:
    """Positions per chunk as ``ReadoutEngine.statistics`` picks them without ``chunk_size``
    (the floor must use the same chunking as the read-out it is the floor of)."""
    from lenskit.lens.readout import DEFAULT_CHUNK_BYTES

    step = max(1, max(1, DEFAULT_CHUNK_BYTES // (4 * vocab)) // n_rows)
    n_chunks = max(1, -(-n_pos // step))
    return max(1, -(-n_pos // n_chunks))


def _streamed(info: dict, model, tok, prompt: str, repeats: int) -> None:
    """run_lens cold and warm, its forward pass and read-out apart, and the GEMM floor."""
    import torch

    import lenskit

    engine = lenskit.ReadoutEngine(model, tokenizer=tok)
    base = _reset_peak()
    _, timing = _report.timed(lambda: lenskit.run_lens(model, tok, prompt), 1)
    info["peak_extra_mib"] = _peak_mib() - base
    _put(info, "cold", timing)
    # warm: a fresh process's first large forward passes are slower (allocator warm-up)
    _, timing = _report.timed(lambda: lenskit.run_lens(model, tok, prompt), repeats)
    _put(info, "run_lens", timing)
    ids = lenskit.encode_prompt(tok, prompt).input_ids
    (hidden, _), timing = _report.timed(lambda: engine.forward(ids), repeats)
    _put(info, "forward", timing)
    _, timing = _report.timed(lambda: engine.statistics(hidden, top_k=TOP_K), repeats)
    _put(info, "readout", timing)

    # the floor: the unembedding GEMMs alone, same rows, same chunking
    weight = engine.readout.unembed.weight
    n_rows, t = engine.n_rows, info["tokens"]
    step = _chunk_positions(t, n_rows, engine.vocab_size) * n_rows
    info["chunk_positions"] = step // n_rows
    with torch.inference_mode():
        x = torch.randn(n_rows * t, weight.shape[1])
        buf = torch.empty(min(step, n_rows * t), weight.shape[0])

        def gemm() -> None:
            for s in range(0, x.shape[0], step):
                rows = x[s : s + step]
                torch.mm(rows, weight.T, out=buf[: rows.shape[0]])

        _, timing = _report.timed(gemm, repeats)
        _put(info, "gemm", timing)
        if n_rows * t * weight.shape[0] * 4 <= 512 << 20:  # one-shot GEMM when it is small
            _, timing = _report.timed(lambda: x @ weight.T, repeats)
            _put(info, "gemm_oneshot", timing)
    info["readout_over_gemm"] = {
        "wall": info["readout_wall"] / info["gemm_wall"],
        "cpu": info["readout_cpu"] / info["gemm_cpu"],
    }


def _naive(info: dict, model, tok, prompt: str) -> None:
    """The forward pass, then every row's logits at every position at once."""
    import torch

    import lenskit

    engine = lenskit.ReadoutEngine(model, tokenizer=tok)
    ids = lenskit.encode_prompt(tok, prompt).input_ids
    t, n_rows = info["tokens"], engine.n_rows

    def naive() -> None:
        hidden, _ = engine.forward(ids)
        with torch.inference_mode():
            z = engine.row_logits(hidden, range(t))  # [T, R, V]
            lenskit.entropy(z)
            for i in range(t):
                lenskit.kl_div(z[i, -1].expand(n_rows, -1), z[i])
            vals, _ = torch.topk(z, TOP_K, dim=-1)
            torch.exp(vals - torch.logsumexp(z, dim=-1, keepdim=True))

    base = _reset_peak()
    _, timing = _report.timed(naive, 1)
    info["peak_extra_mib"] = _peak_mib() - base
    _put(info, "run_lens", timing)


def child(variant: str, n_tokens: int, repeats: int) -> dict:
    """One measurement in this (fresh) process; returns a JSON-able dict."""
    import lenskit

    model, tok = lenskit.load_model("default")
    prompt = SHORT if n_tokens <= 64 else _long_prompt(tok, n_tokens)
    lenskit.run_lens(model, tok, "Hi")  # warm-up: lazy inits are not the read-out's memory
    engine = lenskit.ReadoutEngine(model, tokenizer=tok)
    info: dict[str, Any] = {
        "variant": variant,
        "tokens": len(lenskit.encode_prompt(tok, prompt)),
        "rows": engine.n_rows,
        "vocab": engine.vocab_size,
    }
    if variant == "streamed":
        _streamed(info, model, tok, prompt, repeats)
    else:
        _naive(info, model, tok, prompt)
    return info


def _spawn(variant: str, n_tokens: int, repeats: int) -> dict:
    cmd = [sys.executable, __file__, "--child", variant, str(n_tokens), str(repeats)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"{variant} {n_tokens} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def settings_of(args: argparse.Namespace, quick: bool) -> dict:
    """The options and what the run reads out: the default model, its dtype and device."""
    import lenskit
    from lenskit.model import model_device, model_name

    # Loading here also makes sure the GGUF conversion is cached before the children time it.
    model, _ = lenskit.load_model("default")
    long_tokens = args.long_tokens or (QUICK_LONG_TOKENS if quick else LONG_TOKENS)
    return {
        "model": model_name(model),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "device": model_device(model).type,
        "backend": lenskit.backend(),
        "top_k": TOP_K,
        "short_prompt": SHORT,
        "prompt_tokens_asked": [SHORT_TOKENS, long_tokens],
        "repeats": [1 if quick else SHORT_REPEATS, 1],
        "quick": quick,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--long-tokens",
        type=int,
        default=None,
        help=f"the long prompt's length (default {LONG_TOKENS}; {QUICK_LONG_TOKENS} with --quick)",
    )
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    _report.add_common_args(parser)
    args = parser.parse_args()
    if args.child:
        variant, n_tokens, repeats = args.child
        print(json.dumps(child(variant, int(n_tokens), int(repeats))))
        return

    data = _report.header("bench_lens", settings_of(args, _report.is_quick(args)))
    results = []
    for n_tokens, repeats in zip(
        data["settings"]["prompt_tokens_asked"], data["settings"]["repeats"], strict=True
    ):
        streamed = _spawn("streamed", n_tokens, repeats)
        results.append(streamed)
        print(json.dumps(streamed), flush=True)
        need_gib = 1.5 * streamed["rows"] * streamed["tokens"] * streamed["vocab"] * 4 / 2**30 + 2
        if _mem_available_gib() > need_gib:
            naive = _spawn("naive", n_tokens, 1)
        else:
            naive = {
                "variant": "naive",
                "tokens": streamed["tokens"],
                "skipped": f"needs ~{need_gib:.0f} GiB free",
            }
        results.append(naive)
        print(json.dumps(naive), flush=True)
    data["results"] = results
    print(render.section("bench_lens", data))
    _report.save("bench_lens", data, args)


if __name__ == "__main__":
    main()
