"""python -m lenskit train-lens: trains a few steps on the tiny model into a loadable lens
directory, resumes, and exits 2 on bad arguments."""

from __future__ import annotations

import json

import pytest
import torch

import lenskit
from lenskit.cli import COMMANDS, build_parser, main
from lenskit.lens import TunedLens, load_lens
from lenskit.lens.train import CHECKPOINT_FILE, HELDOUT_FILE
from lenskit.lens.train_options import TRAIN_STEPS

PROMPTS = ["What is the capital of France?", "Name a colour.", "Say hello.", "Count to three."]
FAST = ["--reply-tokens", "4", "--positions", "16", "--sequences", "2", "--eval-positions", "16"]


@pytest.fixture
def prompts_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    return path


def _fails(capsys, args: list[str]) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lenskit: error:") and len(err.splitlines()) == 1, err
    return err


def test_trains_a_loadable_lens_and_resumes(tiny_model_dir, prompts_file, tmp_path, capsys):
    out = tmp_path / "lens"
    base = ["train-lens", str(prompts_file), "-o", str(out), "--model", str(tiny_model_dir)]
    base += ["--optimizer", "sgd", "--lr-scale", "0.5"]
    assert main([*base, "--steps", "3", "--checkpoint-every", "2", *FAST]) == 0
    options = json.loads((out / "train.json").read_text())["options"]
    assert options["optimizer"] == "sgd" and options["lr_scale"] == 0.5
    captured = capsys.readouterr()
    assert f"wrote {out} (tuned lens, 3 steps" in captured.out
    assert "Step 3/3" in captured.err  # the tqdm bar
    model, _ = lenskit.load_model(str(tiny_model_dir))
    lens = load_lens(model, out)
    assert isinstance(lens, TunedLens) and lens.config.num_hidden_layers == 3
    assert any(p.abs().sum() > 0 for p in lens.parameters())  # trained, not the zero lens
    assert (out / HELDOUT_FILE).is_file()
    assert torch.load(out / CHECKPOINT_FILE, weights_only=True)["step"] == 3

    err = _fails(capsys, [*base, "--steps", "3", "--checkpoint-every", "2", *FAST, "-q"])
    assert "--resume" in err
    assert main([*base, "--steps", "3", "--checkpoint-every", "2", *FAST, "-q", "--resume"]) == 0


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--steps", "0"], f"steps must be {TRAIN_STEPS.describe()}"),
        (["--steps", "many"], "steps must be"),
        (["--heldout-percent", "80"], "heldout_percent must be an integer in 0..50"),
        (["--text"], "--text needs DATA"),
        (["a.jsonl", "b.jsonl"], "several files need --text"),
        (["missing.jsonl"], "missing.jsonl"),
        (["--lr-scale", "0"], "lr_scale must be a number > 0"),
    ],
)
def test_bad_arguments_exit_2(tiny_model_dir, tmp_path, capsys, monkeypatch, args, says):
    monkeypatch.chdir(tmp_path)
    err = _fails(capsys, ["train-lens", "-o", "out", "--model", str(tiny_model_dir), *args])
    assert says in err


def test_out_is_optional():
    """Without -o the lens goes to lenskit's cache (tests/integration/cli/test_cli_lenses.py)."""
    assert build_parser().parse_args(["train-lens"]).out is None
    assert "train-lens" in COMMANDS
