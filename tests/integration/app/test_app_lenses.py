"""The lens choice of the sidebar under AppTest, with the tiny random model as "default".

The sidebar's lens (key "lens_choice": "logit", "cached" = the model's own lens trained here,
"dir" = a tuned lens directory in "lens_dir") and the "Sub-block rows" toggle ("sublayers")
sit below the form; changing one runs the form again. The model's own lens is trained with
``lenskit.ui.lenses.TRAIN_OPTIONS``, made tiny here, in a background thread
(``lenskit.ui.jobs.training_job``): AppTest does not poll, so the tests wait for the job and
run the script again, as the fragment's poll would. Lenses live under LENSKIT_CACHE_DIR, a
tmp dir per test (the ``tiny_default_model`` fixture).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from app_helpers import APP, TIMEOUT, lens_result, messages, plain, state
from streamlit.testing.v1 import AppTest

import lenskit
from lenskit.lens import TunedLens, lens_cache_dir, train_cached_lens
from lenskit.ui import jobs, lenses
from lenskit.ui.pages import PAGES

#: Tiny training options (seconds on the tiny model).
TINY = dict(steps=2, reply_tokens=2, sequences=1, positions=16, eval_positions=16)
PAGE = {p.file: str(p.path.relative_to(Path(APP).parent)) for p in PAGES}


@pytest.fixture
def app(tiny_default_model: Path, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    """A fresh session (its first lens run done), the app's training options tiny."""
    monkeypatch.setattr(lenses, "TRAIN_OPTIONS", dict(TINY))
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, at.exception
    return at


@pytest.fixture
def model_and_tokenizer(tiny_default_model: Path):
    """The app's model, loaded here too (the same weights: the same lens directory)."""
    return lenskit.load_model(str(tiny_default_model))


def perturbed_lens(model, directory: Path, seed: int = 0, scale: float = 0.3) -> Path:
    """A tuned lens for ``model`` with random translators, saved at ``directory``."""
    lens = TunedLens.from_model(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for linear in lens.translators:
            linear.weight.copy_(scale * torch.randn(linear.weight.shape, generator=gen))
            linear.bias.copy_(scale * torch.randn(linear.bias.shape, generator=gen))
    return lens.save(directory)


def choose(at: AppTest, kind: str, path: str | None = None) -> AppTest:
    """Pick the lens in the sidebar (the form runs again)."""
    if path is not None:
        at.text_input(key="lens_dir").set_value(path)
    at.radio(key="lens_choice").set_value(kind).run()
    assert not at.exception, at.exception
    return at


def titles(at: AppTest) -> list[str]:
    """The titles of the charts on screen (their text, first line)."""
    out = []
    for element in at.get("vega_lite_chart"):
        title = json.loads(element.proto.spec).get("title", "")
        text = title.get("text", "") if isinstance(title, dict) else title
        out.append(text if isinstance(text, str) else " ".join(text))
    return out


def captions(at: AppTest, where=None) -> str:
    return plain(" | ".join(c.value for c in (where or at).caption))


def sidebar_errors(at: AppTest) -> str:
    return plain(" | ".join(e.value for e in at.sidebar.error))


def test_lens_choice_defaults_to_logit(app: AppTest) -> None:
    assert app.radio(key="lens_choice").value == "logit"
    assert app.toggle(key="sublayers").value is False
    assert state(app).lens.job.lens.is_logit
    assert lens_result(app).lens == "logit"
    assert any(t.startswith("Logit lens") for t in titles(app)), titles(app)
    assert "logit lens" in captions(app, app.main)
    # nothing to train, nothing to compare
    assert {"lens_train", "fidelity"}.isdisjoint(_keys(app))


def _keys(at: AppTest) -> set[str]:
    keys = set()
    for kind in ("button", "toggle", "radio", "text_input"):
        for widget in at.get(kind):
            if getattr(widget, "key", None):
                keys.add(widget.key)
    return keys


def test_own_cached_lens_changes_the_result_and_names_it(app: AppTest, model_and_tokenizer):
    logit = lens_result(app)
    model, tok = model_and_tokenizer
    train_cached_lens(model, tok, **TINY)
    choose(app, "cached")
    result = lens_result(app)
    assert not app.main.error, messages(app)
    assert state(app).lens.job.lens.kind == "cached"
    assert result.lens == "tuned"
    assert np.array_equal(result.token_ids, logit.token_ids)
    inner = slice(1, -1)  # row out is the model's own, the same through every lens
    assert not np.allclose(result.kl_to_final[inner], logit.kl_to_final[inner])
    np.testing.assert_allclose(result.kl_to_final[-1], 0.0, atol=1e-6)
    assert any(t.startswith("Tuned lens") for t in titles(app)), titles(app)
    assert "tuned lens (trained here)" in captions(app, app.main)
    assert "Trained for this model" in captions(app, app.sidebar)
    assert "lens_train" not in _keys(app)
    # the fidelity of that lens, on the held-out transcripts of its training
    app.toggle(key="fidelity").set_value(True).run()
    assert not app.exception, app.exception
    assert any(t.startswith("Lens fidelity: logit, tuned") for t in titles(app)), titles(app)
    assert "held-out transcripts of the lens's own training" in captions(app, app.main)


def test_train_button_trains_in_the_background_then_runs_the_lens(
    app: AppTest, model_and_tokenizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, _ = model_and_tokenizer
    directory = str(lens_cache_dir(model, **TINY))
    # The first training waits at its first progress report until Stop was pressed.
    gate, train = threading.Event(), jobs.train_cached_lens

    def gated(model, tokenizer, *, progress, **options):
        def report(fraction, message):
            gate.wait(TIMEOUT)
            progress(fraction, message)

        return train(model, tokenizer, progress=report, **options)

    monkeypatch.setattr(jobs, "train_cached_lens", gated)
    choose(app, "cached")
    assert "not trained yet" in plain(messages(app))  # the run could not use it
    assert lens_result(app).lens == "logit"  # the last good result stays
    assert "Not trained for this model yet" in captions(app, app.sidebar)
    # Train, then Stop (the progress's button): it says so, and Train resumes it
    app.button(key="lens_train").click().run()
    assert not app.exception, app.exception
    stopped = jobs.training_job(directory)
    assert stopped is not None and state(app).training == directory
    assert "lens_train" not in _keys(app)  # the progress and its Stop button instead
    app.button(key="lens_train_stop").click().run()
    gate.set()
    assert stopped.wait(TIMEOUT) and stopped.cancelled, stopped.error or stopped.bug
    monkeypatch.setattr(jobs, "train_cached_lens", train)
    app.run()
    assert not app.exception, app.exception
    assert "Train resumes it" in plain(" | ".join(i.value for i in app.sidebar.info))
    assert "unfinished training" in captions(app, app.sidebar)
    assert lens_result(app).lens == "logit"
    # Train again: it goes on across a page switch, then the form runs through the new lens
    app.button(key="lens_train").click().run()
    job = jobs.training_job(directory)
    assert job is not stopped
    app.switch_page(PAGE["sweep.py"]).run()
    assert not app.exception, app.exception
    assert job.wait(TIMEOUT), "the training did not finish"
    assert job.result is not None, job.error or job.bug
    app.switch_page(PAGE["lens.py"]).run()  # the script's next run, as the poll's would be
    assert not app.exception, app.exception
    assert lens_result(app).lens == "tuned"
    assert state(app).training is None
    assert "Trained for this model" in captions(app, app.sidebar)
    assert lenskit.lens.cached_lens(model, **TINY) is not None


def test_lens_from_a_directory(app: AppTest, model_and_tokenizer, tmp_path: Path) -> None:
    logit = lens_result(app)
    model, _ = model_and_tokenizer
    directory = perturbed_lens(model, tmp_path / "my_lens")
    choose(app, "dir", str(directory))
    assert not app.main.error, messages(app)
    result = lens_result(app)
    assert result.lens == "tuned"
    assert not np.allclose(result.entropy[1:-1], logit.entropy[1:-1])
    assert any(t.startswith("Tuned lens") for t in titles(app)), titles(app)
    assert "tuned lens from" in captions(app, app.main) and "my_lens" in captions(app, app.main)
    assert "Loaded: a tuned lens" in captions(app, app.sidebar)
    assert not app.sidebar.warning, [w.value for w in app.sidebar.warning]
    # without held-out transcripts, the fidelity reads lenskit's own prompts
    app.toggle(key="fidelity").set_value(True).run()
    assert not app.exception, app.exception
    assert any(t.startswith("Lens fidelity") for t in titles(app)), titles(app)
    assert "lenskit's own prompts" in captions(app, app.main)
    # back to the logit lens: the same result as before
    choose(app, "logit")
    np.testing.assert_allclose(lens_result(app).entropy, logit.entropy, rtol=1e-5)


@pytest.mark.parametrize(
    "make, says",
    [
        (lambda model, d: d / "missing", "no such directory"),
        (lambda model, d: d, "config.json: no such file"),
        (lambda model, d: (d / "config.json").write_text("{") and d, "not a readable JSON file"),
        (lambda model, d: _other_shape(model, d), "trained for a model with d_model="),
    ],
    ids=["missing", "empty", "bad-json", "other-model"],
)
def test_bad_directory_shows_the_message(app, model_and_tokenizer, tmp_path, make, says):
    logit = lens_result(app)
    directory = make(model_and_tokenizer[0], tmp_path)
    choose(app, "dir", str(directory))
    assert says in plain(messages(app)), messages(app)
    assert says in sidebar_errors(app), sidebar_errors(app)
    assert lens_result(app) is not None and lens_result(app).lens == "logit"
    assert np.array_equal(lens_result(app).entropy, logit.entropy)


def test_a_lens_of_another_unembedding_warns_in_the_sidebar(app, model_and_tokenizer, tmp_path):
    lens = TunedLens.load(perturbed_lens(model_and_tokenizer[0], tmp_path / "my_lens"))
    lens.config.unembed_hash = "0" * len(lens.config.unembed_hash)
    directory = lens.save(tmp_path / "other_unembedding")
    with pytest.warns(UserWarning, match="unembedding differs"):  # the library's warning
        choose(app, "dir", str(directory))
    warnings = plain(" | ".join(w.value for w in app.sidebar.warning))
    assert "The model's unembedding differs from the one this tuned lens" in warnings, warnings
    assert lens_result(app).lens == "tuned"  # a warning only: the lens is used


def _other_shape(model, directory: Path) -> Path:
    lens = TunedLens.from_model(model)
    lens.config.d_model += 1
    return TunedLens(lens.config).save(directory / "other")


def test_empty_directory_field_says_what_to_do(app: AppTest) -> None:
    choose(app, "dir", "")
    assert "Type the path of a tuned lens directory" in plain(messages(app))
    assert "Type the path" in captions(app, app.sidebar)


def test_sublayer_toggle_adds_attention_rows(app: AppTest, model_and_tokenizer, tmp_path):
    n_blocks = lens_result(app).n_rows - 1
    app.toggle(key="sublayers").set_value(True).run()
    assert not app.exception, app.exception
    result = lens_result(app)
    names = [str(n) for n in result.layer_names]
    assert result.n_rows == 2 * n_blocks + 1
    assert [n for n in names if n.endswith(".attn")] == [
        f"{i}.attn" for i in range(1, n_blocks + 1)
    ]
    assert state(app).lens.job.request.sublayers
    assert "after attention (i.attn)" in captions(app, app.main)
    # the sweep page still counts the blocks, not the rows
    app.switch_page(PAGE["sweep.py"]).run()
    assert not app.exception, app.exception
    assert app.multiselect(key="sweep_layers").options == [str(i) for i in range(n_blocks)]
    # a tuned lens has no translators for them: the library's message, the result stays
    app.switch_page(PAGE["lens.py"]).run()
    directory = perturbed_lens(model_and_tokenizer[0], tmp_path / "lens")
    choose(app, "dir", str(directory))
    assert "reads block rows only" in plain(messages(app)), messages(app)
    assert lens_result(app).n_rows == 2 * n_blocks + 1 and lens_result(app).lens == "logit"


def test_sweep_and_pairwise_read_through_the_lens(app, model_and_tokenizer, tmp_path):
    directory = perturbed_lens(model_and_tokenizer[0], tmp_path / "lens")
    choose(app, "dir", str(directory))
    app.switch_page(PAGE["sweep.py"]).run()
    app.number_input(key="sweep_max_new").set_value(2)
    app.button(key="sweep_submit").click().run()
    assert not app.exception, app.exception
    report = state(app).sweep.report
    assert report is not None, messages(app)
    assert state(app).sweep.job.lens.kind == "dir"
    assert report.generation.result.lens == "tuned"
    assert "Tuned lens on the generated tokens" in [h.value for h in app.subheader]
    pair = next(
        json.loads(e.proto.spec)
        for e in app.get("vega_lite_chart")
        if "Layer" in json.dumps(json.loads(e.proto.spec).get("title"))
    )
    assert "Tuned lens" in json.dumps(pair["title"]), pair["title"]


def test_dataset_runs_through_the_lens(app, model_and_tokenizer, tmp_path):
    directory = perturbed_lens(model_and_tokenizer[0], tmp_path / "lens")
    choose(app, "dir", str(directory))
    app.switch_page(PAGE["dataset.py"]).run()
    app.number_input(key="ds_limit").set_value(2)
    app.number_input(key="ds_max_new").set_value(2)
    app.button(key="ds_submit").click().run()
    job = state(app).dataset.job
    assert job is not None, messages(app)
    assert job.wait(TIMEOUT), "the dataset run did not finish"
    app.run()
    assert not app.exception, app.exception
    ds = state(app).dataset
    assert ds.result is not None, messages(app)
    assert ds.spec.lens.kind == "dir"
    assert ds.result.state["options"]["lens"] == "tuned"
    assert "through the tuned lens from" in captions(app, app.main)
    assert any(t.startswith("Tuned lens") for t in titles(app)), titles(app)
