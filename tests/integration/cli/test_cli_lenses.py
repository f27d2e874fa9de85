"""python -m lenskit with other lenses: --lens (a tuned lens directory, the cached lens),
--sublayers, train-lens into the cache, and the fidelity command."""

from __future__ import annotations

import json

import conftest
import numpy as np
import pandas as pd
import pytest
import torch

import lenskit
import lenskit.lens.store as store
import lenskit.lens.train as train_module
from lenskit.cli import COMMANDS, main
from lenskit.lens import FidelityReport, TunedLens, lens_cache_dir
from lenskit.lens.train import HELDOUT_FILE

PROMPT = "What is the capital of Australia?"
PROMPTS = ["What is the capital of France?", "Name a colour.", "Say hello.", "Count to three."]
#: train-lens options small enough for a test (the bundled set, one reply token each).
FAST = {"steps": 2, "positions": 8, "sequences": 2, "reply_tokens": 1, "eval_positions": 8}
FAST_ARGS = [a for k, v in FAST.items() for a in (f"--{k.replace('_', '-')}", str(v))]


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """lenskit's cache (the trained lenses) in the test's own directory."""
    monkeypatch.setenv("LENSKIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def loaded(tiny_model_dir):
    return lenskit.load_model(str(tiny_model_dir))


@pytest.fixture(scope="module")
def lens_dir(loaded, tmp_path_factory):
    """A tuned lens for the tiny model with random (non-zero) translators, saved."""
    lens = TunedLens.from_model(loaded[0])
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in lens.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return lens.save(tmp_path_factory.mktemp("lenses") / "my_lens")


@pytest.fixture
def prompts_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    return path


@pytest.fixture
def small_bundled(prompts_file, monkeypatch):
    """The cached lens trains on the bundled set (321 prompts): here, on the 4 of
    ``prompts_file`` (a test's worth of transcripts)."""
    load = train_module.load_prompts
    monkeypatch.setattr(
        train_module, "load_prompts", lambda data, **kw: load(data or prompts_file, **kw)
    )


def _lens(model_dir, out, *flags) -> lenskit.LensResult:
    args = ["lens", PROMPT, "--model", str(model_dir), "-q", "--out", str(out), *flags]
    assert main(args) == 0
    return lenskit.LensResult.from_json(out.read_text())


def _fails(capsys, args: list[str]) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lenskit: error:") and len(err.splitlines()) == 1, err
    return err


# --------------------------------------------------------------------------------------------
# --lens
# --------------------------------------------------------------------------------------------


def test_lens_directory_changes_the_inner_rows(tiny_model_dir, lens_dir, tmp_path):
    logit = _lens(tiny_model_dir, tmp_path / "logit.json")
    tuned = _lens(tiny_model_dir, tmp_path / "tuned.json", "--lens", str(lens_dir))
    assert (logit.lens, tuned.lens) == ("logit", "tuned")
    assert not np.allclose(logit.kl_to_final[:-1], tuned.kl_to_final[:-1], atol=1e-3)
    np.testing.assert_allclose(logit.entropy[-1], tuned.entropy[-1], rtol=1e-5)  # row out
    explicit = _lens(tiny_model_dir, tmp_path / "explicit.json", "--lens", "logit")
    np.testing.assert_array_equal(explicit.kl_to_final, logit.kl_to_final)


def test_lens_chart_title_names_the_lens(tiny_model_dir, lens_dir, tmp_path):
    pytest.importorskip("lenskit.charts")
    out = tmp_path / "r.svg"
    args = ["lens", PROMPT, "--model", str(tiny_model_dir), "-q", "--lens", str(lens_dir)]
    assert main([*args, "--out", str(out)]) == 0
    assert "Tuned lens" in out.read_text()


def test_lens_tuned_without_a_cached_lens_exits_2(tiny_model_dir, tmp_path, capsys):
    args = ["lens", PROMPT, "--model", str(tiny_model_dir), "-q", "--lens", "tuned"]
    err = _fails(capsys, [*args, "--out", str(tmp_path / "r.json")])
    assert "no trained lens is cached" in err and "train-lens" in err
    assert not (tmp_path / "r.json").exists()


def test_unknown_lens_is_refused_before_the_model_loads(tmp_path, capsys):
    args = ["lens", PROMPT, "--model", str(tmp_path / "no_model"), "--lens", "nope"]
    err = _fails(capsys, [*args, "-q", "--out", str(tmp_path / "r.json")])
    assert "--lens 'nope'" in err and "tuned lens directory" in err


def test_sweep_generation_lens_reads_the_lens(tiny_model_dir, lens_dir, tmp_path, capsys):
    out = tmp_path / "s.json"
    base = ["sweep", PROMPT, "--model", str(tiny_model_dir), "-q", "--max-new-tokens", "2"]
    args = [*base, "--generation-lens", "--lens", str(lens_dir), "--out", str(out)]
    assert main(args) == 0
    generation = json.loads((tmp_path / "s.generation.json").read_text())
    assert generation["result"]["lens"] == "tuned"
    err = _fails(capsys, [*base, "--lens", str(lens_dir), "--out", str(out)])
    assert "--generation-lens" in err


def test_dataset_reads_the_lens(tiny_model_dir, lens_dir, prompts_file, tmp_path):
    out = tmp_path / "run"
    args = ["dataset", str(prompts_file), "--model", str(tiny_model_dir), "-q", "-o", str(out)]
    assert main([*args, "--max-new-tokens", "2", "--lens", str(lens_dir)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["state"]["options"]["lens"] == "tuned"


# --------------------------------------------------------------------------------------------
# --sublayers
# --------------------------------------------------------------------------------------------


def test_sublayers_add_the_attention_rows(tiny_model_dir, tmp_path):
    plain = _lens(tiny_model_dir, tmp_path / "plain.json")
    result = _lens(tiny_model_dir, tmp_path / "sub.json", "--sublayers")
    names = result.layer_names.tolist()
    assert names == ["emb", "1.attn", "1", "2.attn", "2", "3.attn", "out"]
    block_rows = [i for i, name in enumerate(names) if ".attn" not in name]
    np.testing.assert_allclose(result.entropy[block_rows], plain.entropy, rtol=1e-5, atol=1e-6)
    args = ["lens", PROMPT, "--model", str(tiny_model_dir), "-q", "--sublayers"]
    assert main([*args, "--out", str(tmp_path / "sub.csv")]) == 0
    frame = pd.read_csv(tmp_path / "sub.csv")
    assert {"1.attn", "2.attn", "3.attn"} <= set(frame["layer"])


def test_sublayers_chart_files(tiny_model_dir, tmp_path):
    pytest.importorskip("lenskit.charts")
    args = ["lens", PROMPT, "--model", str(tiny_model_dir), "-q", "--sublayers"]
    for ext in (".png", ".svg", ".html"):
        assert main([*args, "--range", "all", "--out", str(tmp_path / f"r{ext}")]) == 0
    assert (tmp_path / "r.png").read_bytes().startswith(b"\x89PNG")
    assert "3.attn" in (tmp_path / "r.svg").read_text()
    assert "3.attn" in (tmp_path / "r.html").read_text()


def test_sublayers_refused_for_a_tuned_lens_and_parallel_blocks(
    tiny_model_dir, lens_dir, tmp_path, capsys
):
    out = str(tmp_path / "r.json")
    args = ["lens", PROMPT, "--model", str(tiny_model_dir), "-q", "--sublayers"]
    err = _fails(capsys, [*args, "--lens", str(lens_dir), "--out", out])
    assert "sub-block rows" in err
    tok = conftest.make_chatml_tokenizer()
    model = conftest.make_tiny_model("gpt_neox", len(tok))
    model.save_pretrained(tmp_path / "neox")
    tok.save_pretrained(tmp_path / "neox")
    capsys.readouterr()  # transformers' save bar
    err = _fails(capsys, ["lens", PROMPT, "--model", str(tmp_path / "neox"), "-q",
                          "--sublayers", "--out", out])  # fmt: skip
    assert "parallel" in err


# --------------------------------------------------------------------------------------------
# train-lens without -o
# --------------------------------------------------------------------------------------------


def test_train_lens_into_the_cache_then_lens_tuned(
    tiny_model_dir, loaded, small_bundled, tmp_path, capsys, monkeypatch
):
    # These options play the defaults here, whose lens "--lens tuned" loads.
    defaults = store.default_options
    monkeypatch.setattr(store, "default_options", lambda: {**defaults(), **FAST})
    directory = lens_cache_dir(loaded[0])
    base = ["train-lens", "--model", str(tiny_model_dir), *FAST_ARGS]
    assert main(base) == 0
    captured = capsys.readouterr()
    assert f"wrote {directory} (tuned lens, 2 steps" in captured.out
    assert "'--lens tuned' loads it" in captured.out
    assert "Step 2/2" in captured.err  # the tqdm bar
    assert (directory / HELDOUT_FILE).is_file()
    result = _lens(tiny_model_dir, tmp_path / "r.json", "--lens", "tuned")
    assert result.lens == "tuned"
    logit = _lens(tiny_model_dir, tmp_path / "logit.json")
    assert not np.array_equal(result.kl_to_final[:-1], logit.kl_to_final[:-1])
    assert main([*base, "-q"]) == 0
    assert f"already trained: {directory}" in capsys.readouterr().out


def test_train_lens_into_the_cache_with_other_options_says_how_to_load_it(
    tiny_model_dir, loaded, small_bundled, tmp_path, capsys
):
    assert main(["train-lens", "--model", str(tiny_model_dir), "-q", *FAST_ARGS]) == 0
    directory = lens_cache_dir(loaded[0], **FAST)
    assert directory != lens_cache_dir(loaded[0])
    out = capsys.readouterr().out
    assert "these are not the default options" in out
    assert f"this one is --lens {directory}" in out
    by_dir = _lens(tiny_model_dir, tmp_path / "r.json", "--lens", str(directory))
    assert by_dir.lens == "tuned"
    # without the default options' lens, "tuned" is the newest cached one: this one
    by_name = _lens(tiny_model_dir, tmp_path / "n.json", "--lens", "tuned")
    np.testing.assert_array_equal(by_name.kl_to_final, by_dir.kl_to_final)
    logit = _lens(tiny_model_dir, tmp_path / "logit.json")
    assert not np.array_equal(by_dir.kl_to_final[:-1], logit.kl_to_final[:-1])


def test_lens_tuned_with_nothing_cached_says_how_to_train(tiny_model_dir, tmp_path, capsys):
    err = _fails(capsys, ["lens", PROMPT, "--model", str(tiny_model_dir), "--lens", "tuned",
                          "-q", "--out", str(tmp_path / "r.json")])  # fmt: skip
    assert "no trained lens is cached" in err and "lenskit train-lens" in err


def test_train_lens_on_a_prompt_file_needs_out(tiny_model_dir, prompts_file, small_bundled, capsys):
    args = ["train-lens", str(prompts_file), "--model", str(tiny_model_dir), "-q", *FAST_ARGS]
    assert "give -o DIR" in _fails(capsys, args)


# --------------------------------------------------------------------------------------------
# fidelity
# --------------------------------------------------------------------------------------------


def test_fidelity_writes_the_table_and_the_chart(
    tiny_model_dir, lens_dir, prompts_file, tmp_path, capsys
):
    base = ["fidelity", str(prompts_file), "--model", str(tiny_model_dir), "-q"]
    lens_name = f"tuned:{lens_dir.name}"
    assert main([*base, "--lens", str(lens_dir), "-o", str(tmp_path / "f.json")]) == 0
    table = capsys.readouterr().out
    assert "logit" in table and lens_name in table and "template" in table
    assert "user text" in table and f"transcripts of {prompts_file}" in table
    report = FidelityReport.from_json((tmp_path / "f.json").read_text())
    assert report.lenses.tolist() == ["logit", lens_name]
    assert report.n_transcripts == len(PROMPTS) and report.n.min() > 0
    inner = report.mean_kl[:, :, :-1]
    assert (inner[1] > inner[0]).all()  # random translators read worse than the logit lens
    assert main([*base, "--lens", str(lens_dir), "-o", str(tmp_path / "f.csv")]) == 0
    frame = pd.read_csv(tmp_path / "f.csv")
    assert set(frame["lens"]) == {"logit", lens_name}
    assert set(frame["region"]) == {"template", "user"}
    pytest.importorskip("lenskit.charts")
    assert main([*base, "--lens", str(lens_dir), "-o", str(tmp_path / "f.png")]) == 0
    assert (tmp_path / "f.png").read_bytes().startswith(b"\x89PNG")


def test_fidelity_reads_a_lens_directory_heldout_set(
    tiny_model_dir, loaded, lens_dir, tmp_path, capsys
):
    """Without DATA, the held-out transcripts of the lens's training run are read."""
    model, tok = loaded
    directory = tmp_path / "lens"
    TunedLens.load(lens_dir).save(directory)
    enc = lenskit.encode_prompt(tok, PROMPT)
    n = len(enc)
    template = torch.zeros(n, dtype=torch.bool)
    template[list(enc.template_positions)] = True
    user = torch.zeros(n, dtype=torch.bool)
    user[enc.user_span[0] : enc.user_span[1]] = True
    record = {"input_ids": torch.tensor(enc.input_ids), "template_mask": template,
              "user_mask": user}  # fmt: skip
    torch.save([record, record], directory / HELDOUT_FILE)
    out = tmp_path / "f.json"
    args = ["fidelity", "--model", str(tiny_model_dir), "-q", "--lens", str(directory)]
    assert main([*args, "-o", str(out)]) == 0
    assert f"transcripts of {directory / HELDOUT_FILE}" in capsys.readouterr().out
    report = FidelityReport.from_json(out.read_text())
    assert report.n_transcripts == 2 and report.n.tolist() == [2 * template.sum(), 2 * user.sum()]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["{prompts}", "--heldout", "{tmp}/h.pt"], "not both"),
        (["--heldout", "{tmp}/missing.pt"], "no such file"),
        (["--heldout", "{prompts}"], "not a held-out set"),
        (["--lens", "nope"], "--lens 'nope'"),
        (["--lens", "tuned"], "no trained lens is cached"),
    ],
)
def test_fidelity_bad_arguments_exit_2(tiny_model_dir, prompts_file, tmp_path, capsys, args, says):
    args = [a.replace("{tmp}", str(tmp_path)).replace("{prompts}", str(prompts_file)) for a in args]
    base = ["fidelity", "--model", str(tiny_model_dir), "-q", "-o", str(tmp_path / "f.json")]
    assert says in _fails(capsys, [*base, *args])
    assert "fidelity" in COMMANDS
