"""``lenskit sweep "PROMPT" --out FILE``: generate, then intervene at each decoder block.

The arguments become a :class:`~lenskit.requests.SweepRequest` (positions, intervention and
seed from the request module and the intervention registry), run by :func:`lenskit.run`;
``--generation-lens`` also writes the lens over the prompt and the generated tokens beside
``--out``, read through ``--lens`` (resolved once, after the model loads).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from lenskit.cli.common import (
    CliError,
    add_int_option,
    add_lens_argument,
    add_out_argument,
    add_prompt_arguments,
    charts_for,
    check_lens_spec,
    check_out,
    load_model,
    parse_layers,
    parse_positions,
    progress_flag,
    read_prompt,
    resolve_lens,
    say,
    write_data,
    write_file,
)
from lenskit.requests import MAX_NEW_TOKENS, POSITION_MODES, SEED, TOP_K, SweepRequest

__all__ = ["HELP", "add_sweep_arguments", "generation_path", "run_sweep"]

#: The subcommand's one-line help.
HELP = "generate, then KL(clean || intervened) for interventions at each decoder block"


def add_sweep_arguments(parser: argparse.ArgumentParser) -> None:
    from lenskit.interventions import INTERVENTIONS

    add_prompt_arguments(parser)
    add_int_option(parser, MAX_NEW_TOKENS)
    parser.add_argument(
        "--layers",
        type=parse_layers,
        default=None,
        help="decoder blocks to intervene on, e.g. '0,15-21,27' (default: all)",
    )
    modes = "; ".join(f"'{name}': {text}" for name, text in POSITION_MODES.items())
    parser.add_argument(
        "--positions",
        type=parse_positions,
        default=next(iter(POSITION_MODES)),
        help=f"intervened positions: prompt indices, e.g. '30,31' or '30-36', or {modes} "
        f"(default {next(iter(POSITION_MODES))})",
    )
    names = list(INTERVENTIONS)
    parser.add_argument(
        "--intervention",
        default=names[0],
        metavar="{" + ",".join(names) + "}",
        help="; ".join(f"{name}: {spec.help}" for name, spec in INTERVENTIONS.items())
        + f" (default {names[0]})",
    )
    add_int_option(parser, SEED)
    parser.add_argument(
        "--generation-lens",
        action="store_true",
        help="also the lens over the prompt and the generated tokens, written beside --out "
        "as NAME.generation.EXT (.json: {'n_prompt', 'result'}; .csv: one row per cell)",
    )
    add_int_option(parser, TOP_K)
    add_lens_argument(parser, " of --generation-lens")
    add_out_argument(parser)


def generation_path(out: Path) -> Path:
    """Where ``sweep --generation-lens`` writes the lens over the generation:
    ``s.json`` -> ``s.generation.json``."""
    return out.with_name(f"{out.stem}.generation{out.suffix}")


def write_generation_data(generation: Any, out: Path) -> None:
    """The lens over prompt + generation: .json ``{"n_prompt", "result"}`` (a LensResult's
    dict), or .csv with ``predicts_gen`` = j on the row of the position that predicts Gen j."""
    if out.suffix.lower() == ".json":
        text = json.dumps({"n_prompt": generation.n_prompt, "result": generation.result.to_dict()})
        write_file(out, lambda p: p.write_text(text))
        return
    frame = generation.result.to_frame()
    j = frame["position"] - (generation.n_prompt - 1)
    n_gen = generation.result.n_positions - generation.n_prompt
    frame["predicts_gen"] = j.where((j >= 0) & (j < n_gen)).astype("Int64")
    write_file(out, lambda p: frame.to_csv(p, index=False))


def run_sweep(args: argparse.Namespace) -> int:
    out = check_out(args.out)
    gen_out = check_out(generation_path(out)) if args.generation_lens else None
    charts = charts_for(out)
    check_lens_spec(args.lens)
    if args.lens != "logit" and not args.generation_lens:
        raise CliError(
            f"--lens {args.lens} is the lens over the generation: add --generation-lens (the "
            "sweep itself reads the model's output, through no lens)"
        )
    request = SweepRequest(
        read_prompt(args.prompt), chat=not args.raw, system=args.system,
        max_new_tokens=args.max_new_tokens, layers=args.layers, positions=args.positions,
        intervention=args.intervention, seed=args.seed, generation_lens=args.generation_lens,
        top_k=args.top_k,
    )  # fmt: skip

    import lenskit

    model, tokenizer = load_model(args)
    if args.generation_lens:
        request = replace(request, lens=resolve_lens(model, args.lens))
    report = lenskit.run(model, tokenizer, request, progress=progress_flag(args.quiet))
    sweep = report.sweep
    if charts is None:
        write_data(sweep, out)
    else:
        write_file(out, lambda p: charts.save_chart(charts.sweep_heatmap(sweep), p))
    say(
        args,
        f"wrote {out} ({len(sweep.layers)} blocks x {sweep.n_generated} generated tokens, "
        f"max KL {float(sweep.kl.max()):.3g} nats)",
    )
    if report.warning is not None:
        print(f"lenskit: warning: {' '.join(report.warning.split())}", file=sys.stderr)
    generation = report.generation
    if gen_out is not None and generation is not None:
        if charts is None:
            write_generation_data(generation, gen_out)
        else:
            chart = charts.generation_lens_heatmap(generation)
            write_file(gen_out, lambda p: charts.save_chart(chart, p))
        say(
            args,
            f"wrote {gen_out} ({generation.result.lens} lens over the prompt and "
            f"{sweep.n_generated} generated tokens, {generation.result.n_rows} read-out rows)",
        )
    return 0
