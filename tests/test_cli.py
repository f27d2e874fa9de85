"""python -m lenskit: outputs and one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import lenskit
from lenskit.__main__ import COMMANDS, build_parser, main

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "What is the capital of Australia?"


def _run(args: list[str], **env: str) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", **env}
    return subprocess.run(
        [sys.executable, "-m", "lenskit", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=full_env,
        timeout=300,
    )


def test_json_subprocess(tiny_model_dir, tmp_path):
    out = tmp_path / "r.json"
    proc = _run(
        ["lens", PROMPT, "--model", str(tiny_model_dir), "--target", " Canberra", "--out", str(out)]
    )
    assert proc.returncode == 0, proc.stderr
    result = lenskit.LensResult.from_json(out.read_text())
    assert result.n_rows == 4 and result.target == " Canberra" and result.chat
    assert "wrote" in proc.stderr


def test_csv_in_process(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "r.csv"
    args = ["lens", PROMPT, "--model", str(tiny_model_dir), "--raw", "--top-k", "3", "-q"]
    assert main([*args, "--out", str(out)]) == 0
    frame = pd.read_csv(out)
    assert {"layer", "position", "entropy", "kl_to_final", "top3_prob"} <= set(frame.columns)
    assert not frame["is_template"].any()
    assert capsys.readouterr().err == ""  # --quiet: nothing on stderr


def test_system_prompt(tiny_model_dir, tmp_path):
    out = tmp_path / "r.json"
    assert (
        main(
            [
                "lens",
                PROMPT,
                "--model",
                str(tiny_model_dir),
                "--system",
                "Be brief.",
                "-q",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert json.loads(out.read_text())["system"] == "Be brief."


def test_default_model_via_env(tiny_default_model, tmp_path):
    out = tmp_path / "r.json"
    assert main(["lens", PROMPT, "-q", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["model_name"] == str(tiny_default_model)


def test_chart_output(tiny_model_dir, tmp_path):
    pytest.importorskip("lenskit.charts")
    out = tmp_path / "r.svg"
    assert main(["lens", PROMPT, "--model", str(tiny_model_dir), "-q", "--out", str(out)]) == 0
    assert out.read_text().lstrip().startswith("<svg")


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        (["lens", "", "--out", "{tmp}/r.json"], "empty"),
        (["lens", "   ", "--out", "{tmp}/r.json"], "empty"),
        (["lens", PROMPT, "--out", "{tmp}/r.txt"], "extension"),
        (["lens", PROMPT, "--top-k", "0", "--out", "{tmp}/r.json"], "top-k"),
        (["lens", PROMPT, "--top-k", "x", "--out", "{tmp}/r.json"], "top-k"),
        (["lens", PROMPT, "--model", "/no/such/model", "--out", "{tmp}/r.json"], "No such file"),
        (
            ["lens", PROMPT, "--model", "no-such-org-lenskit/none", "--out", "{tmp}/r.json"],
            "hub id",
        ),
        (["lens", PROMPT, "--target", " Canberra is", "--out", "{tmp}/r.json"], "tokens"),
        (["lens", PROMPT * 30, "--out", "{tmp}/r.json"], "context"),
        (["lens", PROMPT, "--raw", "--system", "x", "--out", "{tmp}/r.json"], "system"),
        (["lens", PROMPT], "--out"),
        (["lens", PROMPT, "--out", "{tmp}/missing/r.json"], "does not exist"),
        # output problems are found before the model loads, not after the work
        (["lens", PROMPT, "--out", "{tmp}/dir.json"], "is a directory"),
        (["lens", PROMPT, "--out", "{tmp}/file.json/r.json"], "is not a directory"),
        (["lens", PROMPT, "--device", "meta", "--out", "{tmp}/r.json"], "Unsupported device"),
        (["lens", PROMPT, "--metric", "entropyy", "--out", "{tmp}/r.json"], "unknown --metric"),
        (
            ["lens", PROMPT, "--target", "x", "--target-id", "3", "--out", "{tmp}/r.json"],
            "not both",
        ),
        (["lens", PROMPT, "--target-id", "-3", "--out", "{tmp}/r.json"], ">= 0"),
        (["lens", PROMPT, "--target-id", "99999", "--out", "{tmp}/r.json"], "outside the vocab"),
        (["lens", PROMPT, "--metric", "entropyy", "--out", "{tmp}/r.csv"], "unknown --metric"),
        (["lens", "hi \udcff", "--out", "{tmp}/r.json"], "not valid UTF-8"),
        (["lens", PROMPT, "--system", "\udcff", "--out", "{tmp}/r.json"], "not valid UTF-8"),
        (["lens", PROMPT, "--target", "\udcff", "--out", "{tmp}/r.json"], "not valid UTF-8"),
        (["nosuchcommand"], "invalid choice"),
        ([], "COMMAND"),
    ],
)
def test_bad_arguments_one_line(tiny_model_dir, tmp_path, capsys, args, pattern):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    (tmp_path / "dir.json").mkdir()
    (tmp_path / "file.json").write_text("{}")
    if args and args[0] == "lens" and "--model" not in args:
        args += ["--model", str(tiny_model_dir)]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    assert main([*args, "-q"] if args and args[0] == "lens" else args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lenskit: error:") and "\n" not in err and "Traceback" not in err
    assert pattern in err


def test_chart_files_keep_full_width_cells(tiny_model_dir, tmp_path, monkeypatch):
    """The app narrows wide detail views to fit its column; a file has no column, so the
    CLI's labelled heatmap keeps 62 px cells (readable labels) whatever the width."""
    from lenskit import charts

    seen = []
    heatmap = charts.lens_heatmap

    def spy(*args, **kwargs):
        seen.append((kwargs.get("labels"), kwargs.get("cell_width")))
        return heatmap(*args, **kwargs)

    monkeypatch.setattr(charts, "lens_heatmap", spy)
    out = tmp_path / "r.svg"
    args = ["lens", "one two three", "--raw", "--model", str(tiny_model_dir), "-q"]
    assert main([*args, "--out", str(out)]) == 0
    assert seen == [(True, charts.DETAIL_MAX_CELL)]


def test_target_id(tiny_model_dir, tmp_path):
    """--target-id names a token by id (one that is part of a character has no text)."""
    from lenskit.models import load_model

    _, tok = load_model(str(tiny_model_dir))
    tid = tok.encode(" Canberra", add_special_tokens=False)[0]
    outs = {}
    for flag, value in (("--target", " Canberra"), ("--target-id", str(tid))):
        out = tmp_path / f"{flag}.json"
        args = ["lens", PROMPT, "--model", str(tiny_model_dir), "-q", flag, value]
        assert main([*args, "--out", str(out)]) == 0
        outs[flag] = lenskit.LensResult.from_json(out.read_text())
    assert outs["--target"].target_id == outs["--target-id"].target_id == tid
    np.testing.assert_array_equal(outs["--target"].target_prob, outs["--target-id"].target_prob)


def test_bad_arguments_subprocess_no_traceback(tmp_path):
    proc = _run(
        ["lens", PROMPT, "--model", str(tmp_path / "nope"), "-q", "--out", str(tmp_path / "r.json")]
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lenskit: error:"), proc.stderr


def test_subcommands_are_pluggable():
    assert "lens" in COMMANDS
    parser = build_parser()
    args = parser.parse_args(["lens", "hi", "--out", "x.json"])
    assert args.command == "lens" and args.top_k == 5 and args.model == "default"
