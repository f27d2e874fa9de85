"""python -m lenskit sweep: outputs and one-line errors."""

from __future__ import annotations

import io
import json
import sys

import numpy as np
import pandas as pd
import pytest

import lenskit
from lenskit.cli import main, parse_layers, parse_positions
from lenskit.interventions import get_intervention
from lenskit.requests import MAX_NEW_TOKENS, POSITION_MODES, SEED, TOP_K

PROMPT = "What is the capital of Australia?"


def test_parse_layers_ranges():
    assert parse_layers("0,15-17,27") == [0, 15, 16, 17, 27]
    assert parse_layers("3") == [3]


def test_parse_positions_ranges():
    assert parse_positions("30-32,35") == [30, 31, 32, 35]
    assert parse_positions("template") == "template"
    assert parse_positions("all-prompt") == "all-prompt"


def test_sweep_json(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "s.json"
    args = ["sweep", PROMPT, "--model", str(tiny_model_dir), "--max-new-tokens", "3"]
    assert main([*args, "--layers", "0-1", "--out", str(out)]) == 0
    result = lenskit.SweepResult.from_json(out.read_text())
    assert list(result.layers) == [0, 1]
    assert result.kl.shape == (2, 3)
    assert result.intervention == "skip"
    assert "wrote" in capsys.readouterr().err


def test_sweep_csv_explicit_positions(tiny_model_dir, tmp_path):
    out = tmp_path / "s.csv"
    args = ["sweep", PROMPT, "--model", str(tiny_model_dir), "--max-new-tokens", "2", "-q"]
    assert main([*args, "--positions", "1,2", "--intervention", "noise", "--out", str(out)]) == 0
    frame = pd.read_csv(out)
    assert len(frame) > 0 and "kl" in frame.columns
    assert (frame["kl"] >= 0).all()


def test_sweep_png(tiny_model_dir, tmp_path):
    out = tmp_path / "s.png"
    args = ["sweep", PROMPT, "--model", str(tiny_model_dir), "--max-new-tokens", "2", "-q"]
    assert main([*args, "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--max-new-tokens", "0"], "1..64"),
        (["--max-new-tokens", "65"], "1..64"),
        (["--layers", "99"], "99"),
        (["--layers", "x"], "block indices"),
        (["--layers", "5-3"], "runs backwards"),
        (["--layers", "0-100000000"], "spans 100000001 blocks"),  # not a 1 GB list
        (["--layers", "3-100000"], "out of range"),  # expanded, reported elided
        (["--raw"], "no chat-template tokens"),  # default --positions template would sweep nothing
        (["--seed", "-1"], f"seed must be {SEED.describe()}, got -1"),
        (["--positions", "9999"], "9999"),
        (["--positions", ""], "selects no position"),
        (["--positions", " , "], "selects no position"),
        (["--positions", "5-3"], "position range '5-3' runs backwards"),  # and nothing more
        (["--positions", "templat"], f"one of {tuple(POSITION_MODES)}"),
        (["--intervention", "zap"], "zap"),
    ],
)
def test_sweep_bad_arguments(tiny_model_dir, tmp_path, capsys, extra, message):
    out = tmp_path / "s.json"
    args = ["sweep", PROMPT, "--model", str(tiny_model_dir), "-q", "--out", str(out)]
    assert main([*args, *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lenskit: error:") and len(err.splitlines()) == 1
    assert message in err and len(err) < 300
    assert not out.exists()


def test_sweep_error_is_not_printed_on_a_progress_bar(tiny_model_dir, tmp_path, capsys):
    """Review: with progress bars on, a bad --positions left the sweep's bar open and the
    error was printed on its line; the bar starts only after the checks."""
    out = tmp_path / "s.json"
    args = ["sweep", PROMPT, "--model", str(tiny_model_dir), "--positions", "999"]
    assert main([*args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "Sweep" not in err and err.strip().splitlines()[-1].startswith("lenskit: error:")


@pytest.mark.parametrize("intervention", ["mean", "noise"])
def test_sweep_intervention_and_seed_are_used(tiny_model_dir, tmp_path, intervention):
    """--intervention / --seed reach the sweep: the CLI gives the API's result."""
    out = tmp_path / "s.json"
    args = ["sweep", PROMPT, "--model", str(tiny_model_dir), "--max-new-tokens", "2", "-q"]
    extra = ["--positions", "3,5", "--intervention", intervention, "--seed", "5"]
    assert main([*args, *extra, "--out", str(out)]) == 0
    result = lenskit.SweepResult.from_json(out.read_text())
    assert (result.intervention, result.seed) == (intervention, 5)
    model, tokenizer = lenskit.load_model(str(tiny_model_dir))
    api = lenskit.intervention_sweep(
        model, tokenizer, PROMPT, max_new_tokens=2, positions=[3, 5],
        intervention=intervention, seed=5,
    )  # fmt: skip
    assert result.kl.max() > 0
    np.testing.assert_allclose(result.kl, api.kl, rtol=1e-4, atol=1e-10)


# --- the CLI's messages come from the request and the registry -------------------------------


def _fails(capsys, args: list[str]) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lenskit: error:") and "\n" not in err and "Traceback" not in err
    return err


@pytest.mark.parametrize(
    ("flag", "value", "option"),
    [
        ("--max-new-tokens", "0", MAX_NEW_TOKENS),
        ("--max-new-tokens", "65", MAX_NEW_TOKENS),
        ("--seed", "-1", SEED),
        ("--top-k", "51", TOP_K),
    ],
)
def test_sweep_messages_are_the_requests(tmp_path, capsys, monkeypatch, flag, value, option):
    """Each integer option's range and message is its IntOption's, found before the model
    loads."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded: the check came too late")

    monkeypatch.setattr(lenskit, "load_model", refuse)
    with pytest.raises(lenskit.InputError) as expected:
        option.check(int(value))
    args = ["sweep", PROMPT, flag, value, "-q", "--out", str(tmp_path / "s.json")]
    assert _fails(capsys, args) == f"lenskit: error: {expected.value}"


def test_unknown_intervention_is_the_registrys_message(tmp_path, capsys):
    with pytest.raises(lenskit.UnknownInterventionError) as expected:
        get_intervention("zap")
    args = ["sweep", PROMPT, "--intervention", "zap", "-q", "--out", str(tmp_path / "s.json")]
    assert _fails(capsys, args) == f"lenskit: error: {expected.value}"


def test_sweep_help_comes_from_the_request_and_the_registry(capsys):
    with pytest.raises(SystemExit):
        main(["sweep", "--help"])
    text = "".join(capsys.readouterr().out.split())  # argparse wraps lines anywhere
    parts = [option.help for option in (MAX_NEW_TOKENS, SEED, TOP_K)]
    parts += [MAX_NEW_TOKENS.describe(), SEED.describe(), "--generation-lens"]
    parts += [spec.help for spec in lenskit.INTERVENTIONS.values()]
    parts += list(POSITION_MODES.values())
    for part in parts:
        assert "".join(part.split()) in text, part


def test_sweep_defaults_are_the_requests():
    from lenskit.cli import build_parser

    args = build_parser().parse_args(["sweep", "hi", "--out", "x.json"])
    request = lenskit.SweepRequest("hi")
    assert (args.max_new_tokens, args.seed, args.top_k) == (
        request.max_new_tokens, request.seed, request.top_k,
    )  # fmt: skip
    assert (args.positions, args.intervention, args.layers) == (
        request.positions, request.intervention, request.layers,
    )  # fmt: skip
    assert not args.generation_lens and not request.generation_lens


def test_sweep_system_prompt_with_raw_is_the_librarys_rule(tiny_model_dir, tmp_path, capsys):
    _, tok = lenskit.load_model(str(tiny_model_dir))
    with pytest.raises(lenskit.PromptError) as expected:
        lenskit.encode_prompt(tok, PROMPT, chat=False, system="x")
    args = ["sweep", PROMPT, "--raw", "--system", "x", "--positions", "all-prompt"]
    args += ["--model", str(tiny_model_dir), "-q", "--out", str(tmp_path / "s.json")]
    assert _fails(capsys, args) == "lenskit: error: " + " ".join(str(expected.value).split())


def test_sweep_prompt_from_stdin(tiny_model_dir, tmp_path, monkeypatch):
    """Bug: the prompt "-" was taken literally; it reads the prompt from stdin."""
    data = io.BytesIO((PROMPT + "\n").encode())
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(data, encoding="utf-8"))
    out = tmp_path / "s.json"
    args = ["sweep", "-", "--model", str(tiny_model_dir), "--max-new-tokens", "2", "-q"]
    assert main([*args, "--out", str(out)]) == 0
    assert lenskit.SweepResult.from_json(out.read_text()).prompt == PROMPT


# --- the lens over the generation (--generation-lens) ----------------------------------------


def _sweep(tiny_model_dir, out, *extra: str) -> int:
    args = ["sweep", PROMPT, "--model", str(tiny_model_dir), "--max-new-tokens", "3", "-q"]
    return main([*args, "--layers", "0-1", *extra, "--out", str(out)])


def test_generation_lens_json(tiny_model_dir, tmp_path):
    """Bug: the lens over the generated tokens after a sweep was only in the app; --generation-lens
    writes it beside the sweep, over the sweep's own generation, as the API computes it."""
    out = tmp_path / "s.json"
    assert _sweep(tiny_model_dir, out, "--generation-lens", "--top-k", "7") == 0
    sweep = lenskit.SweepResult.from_json(out.read_text())
    data = json.loads((tmp_path / "s.generation.json").read_text())
    gen = lenskit.GenerationLens(lenskit.LensResult.from_dict(data["result"]), data["n_prompt"])
    assert gen.n_prompt == sweep.n_prompt and gen.result.top_k == 7
    np.testing.assert_array_equal(gen.generated_ids, sweep.generated_ids)
    model, tokenizer = lenskit.load_model(str(tiny_model_dir))
    api = lenskit.lens_on_generation(
        model, tokenizer, PROMPT, generated_ids=sweep.generated_ids.tolist(), top_k=7
    )
    np.testing.assert_array_equal(gen.result.token_ids, api.result.token_ids)
    np.testing.assert_allclose(gen.result.entropy, api.result.entropy, rtol=1e-4, atol=1e-6)


def test_generation_lens_csv(tiny_model_dir, tmp_path):
    out = tmp_path / "s.csv"
    assert _sweep(tiny_model_dir, out, "--generation-lens") == 0
    frame = pd.read_csv(tmp_path / "s.generation.csv")
    sweep = pd.read_csv(out)
    n_prompt = int(sweep["predicting_position"].min()) + 1
    predicting = frame.dropna(subset=["predicts_gen"]).drop_duplicates("position")
    assert predicting["position"].tolist() == [n_prompt - 1 + j for j in range(3)]
    assert predicting["predicts_gen"].astype(int).tolist() == [0, 1, 2]
    assert frame["position"].max() == n_prompt + 2


def test_generation_lens_chart(tiny_model_dir, tmp_path):
    out = tmp_path / "s.png"
    assert _sweep(tiny_model_dir, out, "--generation-lens") == 0
    for path in (out, tmp_path / "s.generation.png"):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_generation_lens_by_default(tiny_model_dir, tmp_path):
    assert _sweep(tiny_model_dir, tmp_path / "s.json") == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.json"]


def test_generation_lens_at_the_context_edge(tiny_model_dir, tmp_path, capsys):
    """The lens over the generation reads one token more than the sweep: at the context's
    edge the sweep is written and a warning says why the second file is missing."""
    model, tok = lenskit.load_model(str(tiny_model_dir))
    prompt = " ".join(["one two three four five six seven eight nine ten"] * 9)
    n_prompt = len(lenskit.encode_prompt(tok, prompt, chat=False))
    n_new = model.config.max_position_embeddings + 1 - n_prompt
    out = tmp_path / "s.json"
    args = ["sweep", prompt, "--raw", "--positions", "all-prompt", "--layers", "0"]
    args += ["--max-new-tokens", str(n_new), "--generation-lens", "--model", str(tiny_model_dir)]
    assert main([*args, "-q", "--out", str(out)]) == 0
    assert lenskit.SweepResult.from_json(out.read_text()).n_generated == n_new
    assert not (tmp_path / "s.generation.json").exists()
    err = capsys.readouterr().err.strip()
    assert err.startswith("lenskit: warning: No lens over the generation:") and "context" in err


def test_generation_lens_output_is_checked_first(tiny_model_dir, tmp_path, capsys):
    (tmp_path / "s.generation.json").mkdir()
    err = _fails(
        capsys, ["sweep", PROMPT, "--generation-lens", "-q", "--out", str(tmp_path / "s.json")]
    )
    assert "s.generation.json: it is a directory" in err
