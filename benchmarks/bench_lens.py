"""Benchmark run_lens on the default model: streamed vs naive read-out, and the GEMM floor.

Every variant runs in a fresh subprocess; "extra peak" is its peak resident memory (VmHWM,
reset just before the run) minus the resident memory after loading the model and one tiny
warm-up run (so the model, the torch runtime and one-time buffers are not counted).

* streamed: ``lenskit.run_lens`` as shipped (chunked read-out, fused ops).
* naive: the same forward pass, then all ``[R, T, V]`` fp32 logits at once and the same fused
  ops on them (what streaming avoids). Skipped when the machine lacks the memory for it.
* GEMM floor: only the unembedding matmuls for the same R x T rows (chunked like the
  read-out, into a reused buffer): the read-out cannot be cheaper than this.

Times are the best of a few repeats, wall clock and process CPU time (the machine may be
shared: CPU time is the steadier of the two). Writes the ``bench_lens`` section of
docs/benchmarks.md unless ``--no-write``.

Usage: ``python benchmarks/bench_lens.py [--no-write] [--long-tokens 1000]``
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

SHORT = "What is the capital of Australia? Answer in one word, then explain briefly."
_FILLER = (
    "Australia is a country in the southern hemisphere. Its largest cities are Sydney and "
    "Melbourne, which competed to become the national capital; the compromise was a new city "
    "planned between them. "
)


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


def child(variant: str, n_tokens: int, repeats: int) -> dict:
    """One measurement in this (fresh) process; returns a JSON-able dict."""
    import torch
    from _report import timed

    import lenskit
    from lenskit import lens as lens_mod

    model, tok = lenskit.load_model("default")
    prompt = SHORT if n_tokens <= 64 else _long_prompt(tok, n_tokens)
    lenskit.run_lens(model, tok, "Hi")  # warm-up: lazy inits are not the read-out's memory
    readout = lenskit.find_readout(model)
    weight = readout.unembed.weight
    n_rows = len(lenskit.decoder_layers(model)) + 1
    enc = lenskit.encode_prompt(tok, prompt)
    t = len(enc)
    info: dict = {"variant": variant, "tokens": t, "rows": n_rows, "vocab": readout.vocab_size}

    if variant == "streamed":
        base = _reset_peak()
        _, wall, cpu = timed(lambda: lenskit.run_lens(model, tok, prompt), 1)
        info["peak_extra_mib"] = _peak_mib() - base
        info["cold_wall"], info["cold_cpu"] = wall, cpu
        # warm: a fresh process's first large forward passes are slower (allocator warm-up)
        _, wall, cpu = timed(lambda: lenskit.run_lens(model, tok, prompt), repeats)
        info["run_lens_wall"], info["run_lens_cpu"] = wall, cpu
        ids = torch.tensor([enc.input_ids])
        with torch.inference_mode():
            (hidden, _), fw_wall, fw_cpu = timed(lambda: lens_mod._forward(model, ids), repeats)
            info["forward_wall"], info["forward_cpu"] = fw_wall, fw_cpu
            chunk = max(1, lens_mod.DEFAULT_CHUNK_BYTES // (4 * readout.vocab_size))
            step = max(1, chunk // n_rows) * n_rows
            _, ro_wall, ro_cpu = timed(
                lambda: lens_mod._read_out(
                    readout, hidden, 5, None, None, weight.device, lambda f, m: None
                ),
                repeats,
            )
            info["readout_wall"], info["readout_cpu"] = ro_wall, ro_cpu
            # the floor: the unembedding GEMMs alone, same rows, same chunking
            x = torch.randn(n_rows * t, weight.shape[1])
            buf = torch.empty(min(step, n_rows * t), weight.shape[0])

            def gemm() -> None:
                for s in range(0, x.shape[0], step):
                    rows = x[s : s + step]
                    torch.mm(rows, weight.T, out=buf[: rows.shape[0]])

            _, g_wall, g_cpu = timed(gemm, repeats)
            info["gemm_wall"], info["gemm_cpu"] = g_wall, g_cpu
            if n_rows * t * weight.shape[0] * 4 <= 512 << 20:  # one-shot GEMM when it is small
                _, g1_wall, g1_cpu = timed(lambda: x @ weight.T, repeats)
                info["gemm_oneshot_wall"], info["gemm_oneshot_cpu"] = g1_wall, g1_cpu
    else:  # naive: every logit at once
        ids = torch.tensor([enc.input_ids])

        def naive() -> None:
            with torch.inference_mode():
                hidden, _ = lens_mod._forward(model, ids)
                inner = torch.stack([h[0] for h in hidden[:-1]])  # [L, T, d]
                x = torch.cat([readout.normalize(inner), hidden[-1][0][None]])  # [R, T, d]
                z = readout.transform(torch.nn.functional.linear(x, weight))  # [R, T, V]
                lenskit.entropy(z)
                for i in range(t):
                    lenskit.kl_div(z[-1, i].expand(n_rows, -1), z[:, i])
                vals, _ = torch.topk(z, 5, dim=-1)
                torch.exp(vals - torch.logsumexp(z, dim=-1, keepdim=True))

        base = _reset_peak()
        _, wall, cpu = timed(naive, 1)
        info["peak_extra_mib"] = _peak_mib() - base
        info["run_lens_wall"], info["run_lens_cpu"] = wall, cpu
    return info


def _spawn(variant: str, n_tokens: int, repeats: int) -> dict:
    cmd = [sys.executable, __file__, "--child", variant, str(n_tokens), str(repeats)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"{variant} {n_tokens} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _fmt(sec: float) -> str:
    return f"{sec:.2f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--long-tokens", type=int, default=1000)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        variant, n_tokens, repeats = args.child
        print(json.dumps(child(variant, int(n_tokens), int(repeats))))
        return

    from _report import stamp, write_section

    import lenskit

    lenskit.load_model("default")  # make sure the GGUF conversion is cached before timing
    results = []
    for n_tokens, repeats in ((40, 3), (args.long_tokens, 1)):
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

    lines = [
        stamp(),
        "",
        f"Default model (SmolLM2-135M-Instruct, R = {results[0]['rows']} rows, V = {results[0]['vocab']}), "
        f"chat template, top-5, fp32 on CPU, backend `{lenskit.backend()}`. Extra peak = peak RSS "
        "during the run (VmHWM, reset before it) minus RSS after loading the model and a warm-up "
        "run; each variant in a fresh process.",
        "",
        "| prompt tokens | read-out | run_lens total, warm (wall / CPU) | first call in the process (wall) | extra peak RSS |",
        "|---:|---|---:|---:|---:|",
    ]
    for r in results:
        if "skipped" in r:
            lines.append(f"| {r['tokens']} | naive (all logits) | skipped: {r['skipped']} | | |")
            continue
        label = (
            "streamed (shipped)" if r["variant"] == "streamed" else "naive (all logits, one run)"
        )
        lines.append(
            f"| {r['tokens']} | {label} | {_fmt(r['run_lens_wall'])} / {_fmt(r['run_lens_cpu'])} "
            f"| {_fmt(r.get('cold_wall', r['run_lens_wall']))} | {r['peak_extra_mib']:.0f} MiB |"
        )
    lines += [
        "",
        "Read-out alone (entropy + top-5 + KL to final, after the forward pass) against its floor, "
        "the bare unembedding GEMM for the same rows x positions (same chunking; one-shot in "
        "brackets where it fits):",
        "",
        "| prompt tokens | cells (R x T) | forward | read-out (wall / CPU) | GEMM floor (wall / CPU) | read-out / GEMM (wall, CPU) |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        if r["variant"] != "streamed":
            continue
        one = ""
        if "gemm_oneshot_wall" in r:
            one = f" [{_fmt(r['gemm_oneshot_wall'])} / {_fmt(r['gemm_oneshot_cpu'])}]"
        lines.append(
            f"| {r['tokens']} | {r['rows'] * r['tokens']} | {_fmt(r['forward_wall'])} | "
            f"{_fmt(r['readout_wall'])} / {_fmt(r['readout_cpu'])} | "
            f"{_fmt(r['gemm_wall'])} / {_fmt(r['gemm_cpu'])}{one} | "
            f"{r['readout_wall'] / r['gemm_wall']:.2f}x, {r['readout_cpu'] / r['gemm_cpu']:.2f}x |"
        )
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        write_section("bench_lens", body)


if __name__ == "__main__":
    main()
