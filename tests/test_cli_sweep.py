"""python -m lenskit sweep: outputs and one-line errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import lenskit
from lenskit.__main__ import _layer_list, _position_spec, main

PROMPT = "What is the capital of Australia?"


def test_layer_list_parses_ranges():
    assert _layer_list("0,15-17,27") == [0, 15, 16, 17, 27]
    assert _layer_list("3") == [3]


def test_position_spec_parses_ranges():
    assert _position_spec("30-32,35") == [30, 31, 32, 35]
    assert _position_spec("template") == "template"
    assert _position_spec("all-prompt") == "all-prompt"


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
        (["--raw"], "no template tokens"),  # default --positions template would sweep nothing
        (["--seed", "-1"], ">= 0"),
        (["--positions", "9999"], "9999"),
        (["--positions", ""], "selects no position"),
        (["--positions", " , "], "selects no position"),
        (["--positions", "5-3"], "position range '5-3' runs backwards"),  # and nothing more
        (["--positions", "templat"], "'template' / 'all-prompt'"),
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
