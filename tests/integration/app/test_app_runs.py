"""Runs under AppTest: a run finishes or the page says it was interrupted (and runs it again),
and models stay loaded across sessions (one shared model pool).

AppTest runs app.py in this process with the tiny random model as "default". Streamlit stops a
running script when the user switches page or presses a button; the tests stop it the same
way (a StopException from inside the run).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from app_helpers import APP, TIMEOUT, lens_result, messages, save_tiny, state, submit
from streamlit.testing.v1 import AppTest


@pytest.fixture
def app(tiny_default_model: Path) -> AppTest:
    """A fresh app session whose first run (the example prompt) is done."""
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, at.exception
    return at


# --- each run finishes, or the page says it was interrupted -----------------------------------


def _interrupt_prompt(monkeypatch, prompt: str) -> None:
    """Make the run of ``prompt`` stop the script, as Streamlit does when the user switches
    page (or presses a button) while it runs."""
    import streamlit as st
    from streamlit.runtime.scriptrunner_utils.exceptions import StopException

    import lenskit

    st.cache_data.clear()  # an earlier test's cached result would not run at all
    real = lenskit.run

    def run(model, tokenizer, request, **kwargs):
        if request.prompt == prompt:
            raise StopException()
        return real(model, tokenizer, request, **kwargs)

    monkeypatch.setattr(lenskit, "run", run)


def test_interrupted_run_says_so_and_runs_again(app: AppTest, monkeypatch) -> None:
    """A run stopped half-way is never lost without a word: the next script run (here a page
    switch) says it was interrupted, under which prompt, and "Run again" runs it."""
    prompt = "What is the capital of Japan?"
    good = lens_result(app)
    _interrupt_prompt(monkeypatch, prompt)
    submit(app, prompt=prompt, target="")
    assert lens_result(app) is good  # the run did not finish
    app.switch_page("lenskit/ui/pages/sweep.py").run()
    assert not app.exception, app.exception
    warning = " ".join(w.value for w in app.warning)
    assert "interrupted" in warning and "earlier run" in warning, warning
    assert any(c.value == prompt for c in app.code)  # the interrupted run's prompt
    monkeypatch.undo()
    app.button(key="run_again_lens").click().run()
    assert not app.exception and not app.error, messages(app)
    assert lens_result(app).prompt == prompt
    assert not any("interrupted" in w.value for w in app.warning)
    assert not state(app).pending
    app.switch_page("lenskit/ui/pages/lens.py").run()
    assert not any("interrupted" in w.value for w in app.warning)
    assert lens_result(app).prompt == prompt


def test_finished_and_failed_runs_leave_no_pending_record(app: AppTest) -> None:
    """Only an interrupted run leaves its record: a good run and a refused one do not."""
    assert not state(app).pending
    submit(app, prompt="")
    assert app.error and not state(app).pending
    app.run()
    assert not any("interrupted" in w.value for w in app.warning)


def test_interrupted_notice_can_be_dismissed(app: AppTest, monkeypatch) -> None:
    _interrupt_prompt(monkeypatch, "one two three")
    submit(app, prompt="one two three", chat=False, target="")
    app.run()
    assert any("interrupted" in w.value for w in app.warning)
    app.button(key="dismiss_lens").click().run()
    assert not any("interrupted" in w.value for w in app.warning)
    assert not state(app).pending


# --- models stay loaded ----------------------------------------------------------------------


def test_two_models_stay_loaded(tiny_default_model: Path, tmp_path: Path, monkeypatch) -> None:
    """Sessions on two models share one model pool: each model is loaded once, not on every
    switch between them (one model at a time reloaded on almost every run)."""
    import streamlit as st

    import lenskit.model.load as load

    calls: list[str] = []
    real = load.load_model

    def counting(spec, **kwargs):
        calls.append(spec)
        return real(spec, **kwargs)

    monkeypatch.setattr(load, "load_model", counting)
    st.cache_resource.clear()  # a new pool, with the counting loader
    other = str(save_tiny(tmp_path / "other"))
    a = AppTest.from_file(APP, default_timeout=TIMEOUT)
    b = AppTest.from_file(APP, default_timeout=TIMEOUT)
    a.run()
    b.run()
    for i in range(2):
        submit(b, model_choice="other", model_path=other, prompt=f"Question {i}?", target="")
        submit(a, prompt=f"Another question {i}?", target="")
    for at in (a, b):
        assert not at.exception and not at.error, messages(at)
    assert str(lens_result(b).model_name) == other
    assert calls.count("default") == 1 and calls.count(other) == 1, calls
