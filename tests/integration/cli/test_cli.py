"""python -m lenskit: outputs and one-line errors."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import conftest
import numpy as np
import pandas as pd
import pytest

import lenskit
from lenskit.cli import COMMANDS, build_parser, main
from lenskit.requests import TOP_K

ROOT = conftest.REPO_ROOT
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
        (
            ["lens", PROMPT, "--top-k", "0", "--out", "{tmp}/r.json"],
            f"top_k must be {TOP_K.describe()}",
        ),
        (["lens", PROMPT, "--top-k", "x", "--out", "{tmp}/r.json"], "--top-k: top_k must be"),
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
        (
            ["lens", PROMPT, "--metric", "entropyy", "--out", "{tmp}/r.json"],
            "unknown metric 'entropyy'",
        ),
        (
            ["lens", PROMPT, "--target", "x", "--target-id", "3", "--out", "{tmp}/r.json"],
            "not allowed with argument --target",
        ),
        (
            ["lens", PROMPT, "--target-id", "-3", "--out", "{tmp}/r.json"],
            "id -3 is outside the vocab",
        ),
        (["lens", PROMPT, "--target-id", "99999", "--out", "{tmp}/r.json"], "outside the vocab"),
        (
            ["lens", PROMPT, "--metric", "entropyy", "--out", "{tmp}/r.csv"],
            "unknown metric 'entropyy'",
        ),
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
    _, tok = lenskit.load_model(str(tiny_model_dir))
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


# --- the CLI's options and messages come from the request ------------------------------------

LONG_PROMPT = " ".join(["one two three four five six seven eight nine ten"] * 5)


def _fails(capsys, args: list[str]) -> str:
    """Run ``args``, expect exit status 2; the one-line stderr message."""
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lenskit: error:") and "\n" not in err and "Traceback" not in err
    return err


def _message(exc: BaseException) -> str:
    return "lenskit: error: " + " ".join(str(exc).split())


def _help(command: str, capsys) -> str:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    return "".join(capsys.readouterr().out.split())  # argparse wraps lines anywhere


def _no_model_load(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded: the check came too late")

    monkeypatch.setattr(lenskit, "load_model", refuse)


@pytest.mark.parametrize("value", [0, 51, 5000])
def test_top_k_limit_is_the_requests(tmp_path, capsys, monkeypatch, value):
    """Bug: --top-k took anything up to V (5000 took 2.3 GB) where the app stops at 50. The
    limit and the message are TOP_K's, found before the model loads."""
    _no_model_load(monkeypatch)
    with pytest.raises(lenskit.InputError) as expected:
        TOP_K.check(value)
    args = ["lens", PROMPT, "--top-k", str(value), "-q", "--out", str(tmp_path / "r.json")]
    assert _fails(capsys, args) == _message(expected.value)
    assert not (tmp_path / "r.json").exists()


def test_top_k_upper_limit_is_accepted(tiny_model_dir, tmp_path):
    out = tmp_path / "r.json"
    args = ["lens", PROMPT, "--model", str(tiny_model_dir), "--top-k", str(TOP_K.hi), "-q"]
    assert main([*args, "--out", str(out)]) == 0
    assert lenskit.LensResult.from_json(out.read_text()).top_k == TOP_K.hi


def test_lens_help_comes_from_the_request(capsys):
    text = _help("lens", capsys)
    for part in (TOP_K.flag, TOP_K.help, TOP_K.describe(), f"default {TOP_K.default}", "--range"):
        assert "".join(part.split()) in text, part
    from lenskit import charts

    assert "".join(charts.metric_help(target_hint="needs --target").split()) in text


def test_defaults_are_the_requests():
    args = build_parser().parse_args(["lens", "hi", "--out", "x.json"])
    request = lenskit.LensRequest("hi")
    assert args.top_k == request.top_k


# --- the prompt from stdin -------------------------------------------------------------------


def _stdin(monkeypatch, data: bytes) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))


def test_prompt_from_stdin(tiny_model_dir, tmp_path, monkeypatch):
    """Bug: `lens -` took "-" as the prompt; it reads the prompt from stdin (the shell's
    final newline dropped)."""
    _stdin(monkeypatch, (PROMPT + "\n").encode())
    out = tmp_path / "r.json"
    assert main(["lens", "-", "--model", str(tiny_model_dir), "-q", "--out", str(out)]) == 0
    assert lenskit.LensResult.from_json(out.read_text()).prompt == PROMPT


def test_prompt_from_stdin_keeps_inner_lines(tiny_model_dir, tmp_path, monkeypatch):
    _stdin(monkeypatch, b"Line one.\nLine two.\r\n")
    out = tmp_path / "r.json"
    args = ["lens", "-", "--raw", "--model", str(tiny_model_dir), "-q", "--out", str(out)]
    assert main(args) == 0
    assert lenskit.LensResult.from_json(out.read_text()).prompt == "Line one.\nLine two."


def test_prompt_from_stdin_not_utf8(tiny_model_dir, tmp_path, capsys, monkeypatch):
    _stdin(monkeypatch, b"hi \xff\n")
    args = ["lens", "-", "--model", str(tiny_model_dir), "-q", "--out", str(tmp_path / "r.json")]
    assert "not valid UTF-8" in _fails(capsys, args)


def test_prompt_from_stdin_subprocess(tiny_model_dir, tmp_path):
    out = tmp_path / "r.json"
    proc = subprocess.run(
        [sys.executable, "-m", "lenskit", "lens", "-", "--model", str(tiny_model_dir), "-q"]
        + ["--out", str(out)],
        input=PROMPT + "\n", capture_output=True, text=True, cwd=ROOT, timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert lenskit.LensResult.from_json(out.read_text()).prompt == PROMPT


# --- the chart's positions (--range) ---------------------------------------------------------


def _spy_heatmap(monkeypatch) -> list[tuple]:
    from lenskit import charts

    seen = []
    heatmap = charts.lens_heatmap

    def spy(result, *args, **kwargs):
        seen.append((result, list(kwargs["positions"]), kwargs["labels"], kwargs["cell_width"]))
        return heatmap(result, *args, **kwargs)

    monkeypatch.setattr(charts, "lens_heatmap", spy)
    return seen


def _lens_chart(tiny_model_dir, tmp_path, *extra: str, prompt: str = LONG_PROMPT) -> Path:
    out = tmp_path / "r.svg"
    args = ["lens", prompt, "--raw", "--model", str(tiny_model_dir), "-q", *extra]
    assert main([*args, "--out", str(out)]) == 0
    assert out.read_text().lstrip().startswith("<svg")
    return out


def test_long_prompt_chart_defaults_to_the_detail_range(tiny_model_dir, tmp_path, monkeypatch):
    """Bug: a long prompt became an unlabelled strip; the chart file shows the app's default
    detail range (the end of the question and the template tokens), labelled."""
    from lenskit import charts

    seen = _spy_heatmap(monkeypatch)
    _lens_chart(tiny_model_dir, tmp_path)
    ((result, positions, labels, width),) = seen
    assert result.n_positions > charts.DETAIL_MAX_POSITIONS
    first, last = charts.default_detail_range(result)
    assert positions == list(range(first, last + 1)) and last == result.n_positions - 1
    assert labels and width == charts.DETAIL_MAX_CELL


def test_chat_chart_default_range_holds_the_template(tiny_model_dir, tmp_path, monkeypatch):
    seen = _spy_heatmap(monkeypatch)
    out = tmp_path / "r.png"
    args = ["lens", LONG_PROMPT, "--model", str(tiny_model_dir), "-q", "--out", str(out)]
    assert main(args) == 0
    ((result, positions, labels, _),) = seen
    assert len(result.template_positions) and set(result.template_positions) <= set(positions)
    assert labels


def test_range_option(tiny_model_dir, tmp_path, monkeypatch):
    seen = _spy_heatmap(monkeypatch)
    _lens_chart(tiny_model_dir, tmp_path, "--range", "30-45")
    _lens_chart(tiny_model_dir, tmp_path, "--range", "7")
    assert [(s[1], s[2]) for s in seen] == [(list(range(30, 46)), True), ([7], True)]


def test_range_all(tiny_model_dir, tmp_path, monkeypatch):
    """--range all: every position, labelled while they fit the detail view, else colour
    only (the overview)."""
    from lenskit import charts

    seen = _spy_heatmap(monkeypatch)
    _lens_chart(tiny_model_dir, tmp_path, "--range", "all")
    _lens_chart(tiny_model_dir, tmp_path, "--range", "all", prompt="one two three")
    (long, long_pos, long_labels, long_width), (short, short_pos, short_labels, _) = seen
    assert long_pos == list(range(long.n_positions)) and not long_labels and long_width is None
    assert short_pos == list(range(short.n_positions)) and short_labels
    assert long.n_positions > charts.DETAIL_MAX_POSITIONS >= short.n_positions


@pytest.mark.parametrize(
    ("value", "pattern"),
    [
        ("40-500", "--range 40-500: position 500 out of range: the prompt has"),
        ("500", "position 500 out of range"),
        ("0-45", "spans 46 positions; a labelled chart shows at most 40"),
        ("9-3", "the position range '9-3' runs backwards"),
        ("3,5", "expected a position range like '30-45'"),
        ("x", "expected position indices like '30-45', got 'x'"),
        ("", "expected a position range like '30-45'"),
    ],
)
def test_bad_range(tiny_model_dir, tmp_path, capsys, monkeypatch, value, pattern):
    """A range outside the prompt (or wider than the detail view) is an error before the
    read-out; the prompt's length is in the message."""

    def refuse(*args, **kwargs):
        raise AssertionError("the read-out ran: the check came too late")

    monkeypatch.setattr(lenskit, "run", refuse)
    args = ["lens", LONG_PROMPT, "--raw", "--model", str(tiny_model_dir), "-q"]
    err = _fails(capsys, [*args, f"--range={value}", "--out", str(tmp_path / "r.svg")])
    assert pattern in err


def test_range_error_names_the_prompt_length(tiny_model_dir, tmp_path, capsys):
    _, tok = lenskit.load_model(str(tiny_model_dir))
    n = len(lenskit.encode_prompt(tok, LONG_PROMPT, chat=False))
    with pytest.raises(lenskit.InputError) as expected:
        from lenskit.requests import check_position

        check_position(n, n)
    args = ["lens", LONG_PROMPT, "--raw", "--model", str(tiny_model_dir), "-q"]
    err = _fails(capsys, [*args, "--range", f"0-{n}", "--out", str(tmp_path / "r.svg")])
    assert err == f"lenskit: error: --range 0-{n}: {expected.value}"


def test_metric_needing_a_target_fails_before_the_model(tmp_path, capsys, monkeypatch):
    _no_model_load(monkeypatch)
    args = ["lens", PROMPT, "--metric", "target_prob", "-q", "--out", str(tmp_path / "r.svg")]
    assert "--metric target_prob needs --target or --target-id" in _fails(capsys, args)


def test_metric_needing_a_target_is_no_error_for_data(tiny_model_dir, tmp_path):
    """Data files hold every metric: the chart's metric does not apply to them."""
    out = tmp_path / "r.json"
    args = ["lens", PROMPT, "--model", str(tiny_model_dir), "--metric", "target_prob", "-q"]
    assert main([*args, "--out", str(out)]) == 0


def test_metric_is_used(tiny_model_dir, tmp_path, monkeypatch):
    from lenskit import charts

    metrics = []
    heatmap = charts.lens_heatmap
    monkeypatch.setattr(
        charts, "lens_heatmap", lambda *a, **k: metrics.append(k["metric"]) or heatmap(*a, **k)
    )
    _lens_chart(tiny_model_dir, tmp_path, "--metric", "kl_to_final")
    assert metrics == ["kl_to_final"]


# --- errors: one line for a LenskitError, a traceback for a bug ------------------------------


def test_vocab_smaller_than_tokenizer_is_a_load_error(tmp_path):
    """Bug: a checkpoint whose vocabulary is smaller than its tokenizer gave IndexError and a
    traceback (exit 1); the load fails with one line naming both sizes (exit 2)."""
    tok = conftest.make_chatml_tokenizer()
    small = 64
    assert len(tok) > small
    model = conftest.make_tiny_model("llama", small)
    model.save_pretrained(tmp_path / "ckpt", safe_serialization=True)
    tok.save_pretrained(tmp_path / "ckpt")
    out = tmp_path / "r.json"
    proc = _run(["lens", PROMPT, "--model", str(tmp_path / "ckpt"), "-q", "--out", str(out)])
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lenskit: error:"), proc.stderr
    assert f"{len(tok)} tokens" in lines[0] and f"only {small}" in lines[0]
    assert not out.exists()


def test_system_prompt_with_raw_is_the_librarys_rule(tiny_model_dir, tmp_path, capsys):
    """The rule "a system prompt needs the chat template" lives in the library; the CLI
    prints its message and has no check of its own."""
    _, tok = lenskit.load_model(str(tiny_model_dir))
    with pytest.raises(lenskit.PromptError) as expected:
        lenskit.encode_prompt(tok, PROMPT, chat=False, system="Be brief.")
    assert "A system prompt needs the chat template" in str(expected.value)
    args = ["lens", PROMPT, "--raw", "--system", "Be brief.", "--model", str(tiny_model_dir)]
    assert _fails(capsys, [*args, "-q", "--out", str(tmp_path / "r.json")]) == _message(
        expected.value
    )


def test_a_bug_keeps_its_traceback(tiny_model_dir, tmp_path, monkeypatch):
    """Only LenskitErrors are one-line messages: anything else is a bug and propagates."""

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(lenskit, "run", broken)
    args = ["lens", PROMPT, "--model", str(tiny_model_dir), "-q", "--out", str(tmp_path / "r.json")]
    with pytest.raises(RuntimeError, match="a bug"):
        main(args)


def test_a_bug_exits_1_with_a_traceback(tmp_path):
    code = (
        "import sys, lenskit\n"
        "from lenskit.cli import main\n"
        "def broken(*a, **k): raise RuntimeError('a bug')\n"
        "lenskit.load_model = broken\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, "lens", PROMPT, "-q", "--out", str(tmp_path / "r.json")],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "a bug" in proc.stderr


# --- without the app extra --------------------------------------------------------------------


def _without(monkeypatch, module: str) -> None:
    """Make ``module`` (and lenskit.charts, which imports it) fail to import."""
    monkeypatch.setitem(sys.modules, module, None)
    for name in [
        m for m in sys.modules if m == "lenskit.charts" or m.startswith("lenskit.charts.")
    ]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.delattr(lenskit, "charts", raising=False)


@pytest.mark.parametrize("missing", ["altair", "vl_convert"])
def test_charts_without_the_app_extra(tiny_model_dir, tmp_path, capsys, monkeypatch, missing):
    _without(monkeypatch, missing)
    args = ["lens", PROMPT, "--model", str(tiny_model_dir), "-q"]
    err = _fails(capsys, [*args, "--out", str(tmp_path / "r.png")])
    assert "need the 'app' extra" in err and missing in err and "lenskit[app]" in err
    out = tmp_path / "r.json"
    assert main([*args, "--out", str(out)]) == 0
    assert lenskit.LensResult.from_json(out.read_text()).n_rows == 4


def test_data_files_without_altair(tiny_model_dir, tmp_path, capsys, monkeypatch):
    """JSON/CSV need no altair: --help and a --metric (unused by data files) still work."""
    _without(monkeypatch, "altair")
    assert "chartfiles(needsthe'app'extra)" in _help("lens", capsys)
    out = tmp_path / "r.csv"
    args = ["lens", PROMPT, "--model", str(tiny_model_dir), "--metric", "kl_to_final", "-q"]
    assert main([*args, "--out", str(out)]) == 0
    assert "entropy" in pd.read_csv(out).columns
