"""python -m lenskit dataset: options from the requests, prompt files checked before the model,
skipped lines, the run directory (refused, overwritten, resumed), charts, and torchrun."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import conftest
import numpy as np
import pytest

import lenskit
from lenskit.cli import build_parser, main
from lenskit.cli.common import ProcessError
from lenskit.cli.dataset import CHART_NAMES, SKIPPED, together
from lenskit.dataset import MEAN_STATS, RATE_STATS, DatasetResult, bundled_prompts
from lenskit.dataset.distributed import Ranks
from lenskit.requests import (
    DATASET_BATCH_SIZE,
    DATASET_NEW_TOKENS,
    DATASET_TOP_K,
    SEED,
    USER_TOKENS,
    DatasetRequest,
)

ROOT = conftest.REPO_ROOT
#: Prompts of different token lengths in three categories: batches are cut from the whole set
#: and dealt to the processes, so each prompt has the same batch partners (and padding) with
#: one process or two, and the runs agree to 1e-6.
PROMPTS = [
    {"prompt": "What is the capital of France?", "answer": "Paris", "category": "capitals"},
    {"prompt": "Please answer briefly. What is the capital of Japan?", "answer": "Tokyo",
     "category": "capitals"},
    {"prompt": "What is the capital of Australia?", "answer": "Canberra", "category": "capitals"},
    {"prompt": "six seven eight nine", "answer": "ten", "category": "count"},
    {"prompt": "three four five six", "answer": "seven", "category": "count"},
    {"prompt": "four five six seven", "answer": "eight", "category": "count"},
    {"prompt": "eight nine ten one", "answer": "two", "category": "count"},
    {"prompt": "Sydney Melbourne Canberra Brisbane Perth Adelaide Hobart", "answer": "Darwin",
     "category": "cities"},
]  # fmt: skip
CHART_EXTS = (".png", ".svg", ".html")


def _write_prompts(path: Path, items: list[dict] = PROMPTS, extra: str = "") -> Path:
    path.write_text("".join(json.dumps(p) + "\n" for p in items) + extra)
    return path


@pytest.fixture
def prompts_file(tmp_path) -> Path:
    return _write_prompts(tmp_path / "prompts.jsonl")


@pytest.fixture
def no_chart_files(monkeypatch) -> list[Path]:
    """Charts are built but not rendered (fast): each file written is recorded and empty."""
    from lenskit import charts

    written: list[Path] = []

    def save(chart, path):
        charts.chart_spec(chart)  # the spec must still be valid
        Path(path).write_bytes(b"")
        written.append(Path(path))

    monkeypatch.setattr(charts, "save_chart", save)
    return written


def _args(prompts: Path, out: Path, model: Path, *extra: str) -> list[str]:
    return [
        "dataset", str(prompts), "-o", str(out), "--model", str(model),
        "--max-new-tokens", "3", "--batch-size", "4", "-q", *extra,
    ]  # fmt: skip


def _fails(capsys, args: list[str]) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lenskit: error:") and "\n" not in err and "Traceback" not in err
    return err


def _no_model_load(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded: the check came too late")

    monkeypatch.setattr(lenskit, "load_model", refuse)


def _same_summaries(a: DatasetResult, b: DatasetResult, rtol: float = 1e-6) -> None:
    for stat in MEAN_STATS + RATE_STATS:
        np.testing.assert_allclose(
            a.summary(stat, 1).to_numpy(), b.summary(stat, 1).to_numpy(), rtol=rtol, atol=0,
            equal_nan=True, err_msg=stat,
        )  # fmt: skip


# --- options -----------------------------------------------------------------------------------


def test_defaults_are_the_requests():
    args = build_parser().parse_args(["dataset", "-o", "d"])
    request = DatasetRequest()
    assert args.prompts is None  # the bundled set
    assert (args.user_tokens, args.max_new_tokens, args.top_k, args.batch_size, args.seed) == (
        request.user_tokens, request.max_new_tokens, request.top_k, request.batch_size,
        request.seed,
    )  # fmt: skip
    assert not args.sweep and not request.sweep
    assert not args.skip_invalid and not args.overwrite and args.model == "default"


def test_help_comes_from_the_options(capsys):
    with pytest.raises(SystemExit):
        main(["dataset", "--help"])
    text = "".join(capsys.readouterr().out.split())  # argparse wraps lines anywhere
    for option in (DATASET_NEW_TOKENS, DATASET_TOP_K, USER_TOKENS, DATASET_BATCH_SIZE):
        for part in (option.help, option.describe(), f"(default {option.default})"):
            assert "".join(part.split()) in text, part
    assert "".join(SEED.describe().split()) in text
    for flag in ("--sweep", "--skip-invalid", "--overwrite", "--device", "--dtype", "-q"):
        assert flag in text


@pytest.mark.parametrize(
    "flag, value, option",
    [("--top-k", "51", DATASET_TOP_K), ("--max-new-tokens", "0", DATASET_NEW_TOKENS),
     ("--user-tokens", "17", USER_TOKENS), ("--batch-size", "0", DATASET_BATCH_SIZE)],
)  # fmt: skip
def test_ranges_are_the_options(tmp_path, capsys, monkeypatch, flag, value, option):
    _no_model_load(monkeypatch)
    with pytest.raises(lenskit.InputError) as expected:
        option.check(int(value))
    err = _fails(capsys, ["dataset", "-o", str(tmp_path / "d"), flag, value])
    assert str(expected.value) in err


# --- the prompt file ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, where",
    [('{"prompt": "ok"}\n{"prompt": "fine"}\n{"prompt": 3}\n', "line 3"),
     ('{"prompt": "ok"}\nnot json\n', "line 2"),
     ('{"prompt": "ok", "answer": "two words"}\n', "line 1")],
)  # fmt: skip
def test_bad_prompt_file_fails_before_the_model(tmp_path, capsys, monkeypatch, text, where):
    _no_model_load(monkeypatch)
    path = tmp_path / "bad.jsonl"
    path.write_text(text)
    err = _fails(capsys, ["dataset", str(path), "-o", str(tmp_path / "d")])
    assert f"{path}, {where}:" in err
    assert not (tmp_path / "d").exists()


def test_missing_prompt_file_fails_before_the_model(tmp_path, capsys, monkeypatch):
    _no_model_load(monkeypatch)
    err = _fails(capsys, ["dataset", str(tmp_path / "nope.jsonl"), "-o", str(tmp_path / "d")])
    assert "nope.jsonl" in err and "no such file" in err


def test_output_that_is_a_file_fails_before_the_model(prompts_file, tmp_path, capsys, monkeypatch):
    _no_model_load(monkeypatch)
    (tmp_path / "f").write_text("x")
    err = _fails(capsys, ["dataset", str(prompts_file), "-o", str(tmp_path / "f")])
    assert "is a file" in err


def test_no_prompts_is_the_bundled_set_on_the_default_model(
    tiny_default_model, tmp_path, capsys, monkeypatch
):
    """Without PROMPTS the bundled set runs on the default model (stopped at the run)."""
    seen = {}

    def stop(model, tokenizer, prompts, request, **kwargs):
        seen.update(prompts=prompts, request=request, kwargs=kwargs)
        raise lenskit.InputError("stopped here")

    monkeypatch.setattr("lenskit.cli.dataset.run_dataset_result", stop)
    err = _fails(capsys, ["dataset", "-o", str(tmp_path / "d"), "-q"])
    assert err == "lenskit: error: stopped here"
    assert seen["prompts"].source == "bundled"
    assert len(seen["prompts"]) == len(bundled_prompts())
    request = seen["request"]
    assert request.lens.name == "logit"  # the CLI resolves the spec once, after the model loads
    assert dataclasses.replace(request, lens="logit") == DatasetRequest()
    assert seen["kwargs"]["output_dir"] == tmp_path / "d" and not seen["kwargs"]["overwrite"]


def test_skip_invalid_reports_and_writes_skipped(tiny_model_dir, tmp_path, capsys, no_chart_files):
    bad = '{"prompt": "x", "answer": "two words"}\n{"answer": "Paris"}\n'
    path = _write_prompts(tmp_path / "p.jsonl", PROMPTS[:3], extra=bad)
    out = tmp_path / "d"
    err = _fails(capsys, _args(path, out, tiny_model_dir))  # without --skip-invalid: line 4
    assert f"{path}, line 4:" in err
    assert main(_args(path, out, tiny_model_dir, "--skip-invalid")) == 0
    captured = capsys.readouterr()
    assert "skipped 2 invalid line(s)" in captured.err and "line 4:" in captured.err
    assert "line 5:" in captured.err and str(out / SKIPPED) in captured.err
    skipped = json.loads((out / SKIPPED).read_text())
    assert [s["line"] for s in skipped["skipped"]] == [4, 5]
    assert "one word" in skipped["skipped"][0]["reason"] and skipped["prompts"] == 3
    result = DatasetResult.load(out)
    assert result.n_prompts == 3 and sorted(result.prompts["prompt_index"]) == [0, 1, 2]


def test_a_prompt_past_the_context_is_named_after_the_model_loads(tmp_path, capsys, no_chart_files):
    """The tokenizer check: a prompt longer than the model's context names its line; with
    --skip-invalid it is skipped."""
    tok = conftest.make_chatml_tokenizer()
    model = conftest.make_tiny_model("llama", len(tok))
    model.config.max_position_embeddings = 60
    model.save_pretrained(tmp_path / "ckpt", safe_serialization=True)
    tok.save_pretrained(tmp_path / "ckpt")
    capsys.readouterr()  # the save's progress bar
    long = {"prompt": "one two three " * 20, "answer": "four"}
    path = _write_prompts(tmp_path / "p.jsonl", [*PROMPTS[:2], long, PROMPTS[3]])
    out = tmp_path / "d"
    err = _fails(capsys, _args(path, out, tmp_path / "ckpt"))
    assert f"{path}, line 3:" in err and "context of 60 tokens" in err
    assert main(_args(path, out, tmp_path / "ckpt", "--skip-invalid")) == 0
    assert [s["line"] for s in json.loads((out / SKIPPED).read_text())["skipped"]] == [3]


# --- the run directory -------------------------------------------------------------------------


def test_summary_on_stdout(prompts_file, tiny_model_dir, tmp_path, capsys, no_chart_files):
    out = tmp_path / "d"
    assert main(_args(prompts_file, out, tiny_model_dir)) == 0
    text = capsys.readouterr().out
    assert f"dataset: {len(PROMPTS)} prompts, 3 categories" in text
    assert "best answer hit rate (top-1):" in text and "best lift" in text
    assert f"results: {out}" in text
    result = DatasetResult.load(out)
    assert sorted(result.prompts["prompt_index"]) == list(range(len(PROMPTS)))
    assert not (out / SKIPPED).exists()  # only with --skip-invalid


def test_other_options_in_the_same_directory(
    prompts_file, tiny_model_dir, tmp_path, capsys, no_chart_files
):
    """A second run of other options is the library's error (exit 2); --overwrite replaces it."""
    out = tmp_path / "d"
    assert main(_args(prompts_file, out, tiny_model_dir)) == 0
    first = (out / "summary.json").read_text()
    capsys.readouterr()
    err = _fails(capsys, [*_args(prompts_file, out, tiny_model_dir), "--top-k", "3"])
    assert "holds a run of another prompt set or other options" in err and "--overwrite" in err
    assert (out / "summary.json").read_text() == first
    assert main([*_args(prompts_file, out, tiny_model_dir), "--top-k", "3", "--overwrite"]) == 0
    assert DatasetResult.load(out).state["options"]["top_k"] == 3


def test_a_killed_run_resumes(
    prompts_file, tiny_model_dir, tmp_path, capsys, monkeypatch, no_chart_files
):
    from lenskit.dataset import batch as batch_module

    real = batch_module.run_batch
    calls: list[list[int]] = []

    def dies_in_the_second_batch(plan, indices):
        calls.append(list(indices))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(plan, indices)

    monkeypatch.setattr("lenskit.dataset.run.run_batch", dies_in_the_second_batch)
    out = tmp_path / "d"
    assert main(_args(prompts_file, out, tiny_model_dir)) == 130
    assert "run the same command again" in capsys.readouterr().err
    assert not (out / "summary.json").exists()
    calls.clear()
    monkeypatch.setattr(
        "lenskit.dataset.run.run_batch", lambda p, i: calls.append(list(i)) or real(p, i)
    )
    assert main(_args(prompts_file, out, tiny_model_dir)) == 0
    assert calls == [[4, 5, 6, 7]]  # the first batch of 4 was done
    resumed = DatasetResult.load(out)
    assert sorted(resumed.prompts["prompt_index"]) == list(range(len(PROMPTS)))
    assert main(_args(prompts_file, tmp_path / "whole", tiny_model_dir)) == 0
    _same_summaries(resumed, DatasetResult.load(tmp_path / "whole"))


# --- charts --------------------------------------------------------------------------------


def test_chart_files_are_valid(prompts_file, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "d"
    assert main(_args(prompts_file, out, tiny_model_dir, "--sweep")) == 0
    for name in CHART_NAMES:
        png = (out / f"{name}.png").read_bytes()
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000, name
        svg = ET.fromstring((out / f"{name}.svg").read_text())
        assert svg.tag.endswith("svg") and len(list(svg.iter())) > 20, name
        html = (out / f"{name}.html").read_text()
        assert "<html" in html and "vegaEmbed" in html, name
        assert not re.search(r"<script[^>]+src=[\"']https?://", html), name  # opens offline
    assert "read_vs_cause" in capsys.readouterr().out


def test_sweep_charts_only_with_sweep(prompts_file, tiny_model_dir, tmp_path, no_chart_files):
    """Without --sweep there are no sweep charts, and an earlier run's are removed."""
    out = tmp_path / "d"
    assert main(_args(prompts_file, out, tiny_model_dir, "--sweep")) == 0
    assert {p.name for p in no_chart_files} == {f"{n}{e}" for n in CHART_NAMES for e in CHART_EXTS}
    no_chart_files.clear()
    assert main(_args(prompts_file, out, tiny_model_dir, "--overwrite")) == 0
    names = {p.stem for p in no_chart_files}
    assert names == {"answer_hit", "lift", "answer_hit_by_category"}
    for name in ("sweep_kl", "flip_rate", "read_vs_cause"):
        assert not any((out / f"{name}{e}").exists() for e in CHART_EXTS), name


def test_no_categories_no_category_chart(tiny_model_dir, tmp_path, no_chart_files):
    path = _write_prompts(tmp_path / "p.jsonl", [{"prompt": p["prompt"]} for p in PROMPTS[:3]])
    assert main(_args(path, tmp_path / "d", tiny_model_dir)) == 0
    assert {p.stem for p in no_chart_files} == {"answer_hit", "lift"}


# --- processes -------------------------------------------------------------------------------


class _FakeRanks(Ranks):
    """A rank of a launch whose other processes' failures are ``others`` (by rank)."""

    def __init__(self, rank: int, world: int, others: dict[int, bool]):
        super().__init__(rank, world, rank)
        object.__setattr__(self, "others", others)

    def sum(self, vector):
        extra = np.zeros_like(vector)
        for rank, failed in self.others.items():
            extra[rank] = float(failed)
        return vector + extra


def _bad():
    raise lenskit.InputError("bad file")


def test_together_prints_one_error():
    """Every process stops when one fails; rank 0's error alone is printed when it failed
    too, else the failing processes name themselves and rank 0 names them."""
    assert together(_FakeRanks(0, 2, {1: False}), lambda: 7) == 7
    with pytest.raises(lenskit.InputError, match="bad file"):  # rank 0's own: printed
        together(_FakeRanks(0, 2, {1: True}), _bad)
    with pytest.raises(lenskit.InputError) as rank1:  # the same on rank 1: not printed
        together(_FakeRanks(1, 2, {0: True}), _bad)
    assert not isinstance(rank1.value, ProcessError)
    with pytest.raises(ProcessError, match="process 1 of 2: bad file"):
        together(_FakeRanks(1, 2, {0: False}), _bad)
    with pytest.raises(ProcessError, match="process 1 of 2 failed"):
        together(_FakeRanks(0, 2, {1: True}), lambda: 7)


def _env() -> dict[str, str]:
    # One thread per process in both runs: the same arithmetic (torchrun's default).
    return {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _torchrun(args: list[str]) -> subprocess.CompletedProcess:
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "lenskit", *args]
    return subprocess.run(
        command, capture_output=True, text=True, cwd=ROOT, env=_env(), timeout=180
    )


def test_torchrun_gives_the_one_process_summaries(prompts_file, tiny_model_dir, tmp_path):
    tok = conftest.make_chatml_tokenizer()
    lengths = {len(lenskit.encode_prompt(tok, p["prompt"])) for p in PROMPTS}
    assert len(lengths) > 1  # padding differs between batches (see PROMPTS)
    args = [str(prompts_file), "--model", str(tiny_model_dir), "--max-new-tokens", "4"]
    args += ["--batch-size", "2", "-q"]
    start = time.perf_counter()
    two = _torchrun(["dataset", *args, "-o", str(tmp_path / "two")])
    seconds = time.perf_counter() - start
    assert two.returncode == 0, two.stderr
    one = subprocess.run(
        [sys.executable, "-m", "lenskit", "dataset", *args, "-o", str(tmp_path / "one")],
        capture_output=True, text=True, cwd=ROOT, env=_env(), timeout=180,
    )  # fmt: skip
    assert one.returncode == 0, one.stderr
    a, b = DatasetResult.load(tmp_path / "one"), DatasetResult.load(tmp_path / "two")
    assert a.n_prompts == b.n_prompts == len(PROMPTS)
    _same_summaries(a, b)
    for result in (a, b):
        assert sorted(result.prompts["prompt_index"]) == list(range(len(PROMPTS)))
        assert len(result.records) == len(PROMPTS) * len(result.rows) * len(result.columns)
    assert two.stdout.count("best answer hit rate") == 1  # rank 0 alone prints
    assert (tmp_path / "two" / "answer_hit.png").is_file()
    print(f"torchrun, 2 processes: {seconds:.1f} s")


def test_torchrun_error_stops_every_process(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "ok"}\n{"prompt": "ok", "answer": "two words"}\n')
    proc = _torchrun(["dataset", str(path), "-o", str(tmp_path / "d"), "-q"])
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("lenskit: error:")]
    assert len(errors) == 1 and f"{path}, line 2:" in errors[0], proc.stderr
    # Every process exits 2 (torchrun may stop the later one while it is already exiting).
    codes = re.findall(r"exitcode\s*: (-?\d+)", proc.stderr)
    assert "2" in codes and set(codes) <= {"2", "-15"}, proc.stderr
    assert "lenskit/cli" not in proc.stderr  # no traceback of ours
