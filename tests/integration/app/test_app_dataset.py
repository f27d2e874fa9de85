"""The "Dataset" page under AppTest, with the tiny random model as "default".

The page reads the prompts (the bundled set or an uploaded file) and loads the sidebar's model
in the script, then runs the dataset mode in a background thread (lenskit.ui.jobs) whose
progress a polling fragment shows. AppTest does not poll: the tests wait for the job
(``state.dataset.job.wait()``) and run the script again, as the fragment's poll would. AppTest
cannot click a chart, so a heatmap click is sent as the chart's widget state (what the browser
sends; test_browser.py clicks for real).
"""

from __future__ import annotations

import io
import json
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from app_helpers import APP, TIMEOUT, messages, plain, state
from streamlit.proto.WidgetStates_pb2 import WidgetState
from streamlit.testing.v1 import AppTest

from lenskit.dataset import bundled_prompts
from lenskit.errors import InputError
from lenskit.requests import DATASET_NEW_TOKENS, DATASET_TOP_K, USER_TOKENS, DatasetRequest
from lenskit.ui import jobs

PAGE = "lenskit/ui/pages/dataset.py"
PROMPTS = "\n".join(
    json.dumps(item)
    for item in [
        {"prompt": "What is the capital of France?", "answer": "Paris", "category": "capitals"},
        {"prompt": "What is the capital of Japan?", "answer": "Tokyo", "category": "capitals"},
        {"prompt": "one two three four five", "answer": "six", "category": "counting"},
        {"prompt": "six seven eight nine", "answer": "ten", "category": "counting"},
    ]
)


@pytest.fixture
def app(tiny_default_model: Path) -> AppTest:
    """A fresh session (its first lens run done) on the Dataset page."""
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    at.switch_page(PAGE).run()
    assert not at.exception, at.exception
    return at


def dataset(at: AppTest):
    return state(at).dataset


def upload(at: AppTest, text: str, name: str = "questions.jsonl") -> AppTest:
    at.radio(key="ds_source").set_value("upload").run()
    at.file_uploader(key="ds_file").set_value((name, text.encode(), "application/octet-stream"))
    return at.run()


def submit(at: AppTest, *, wait: bool = True, **numbers) -> AppTest:
    """Fill the options (number inputs by key; ``ds_sweep`` a checkbox), press Run, and with
    ``wait`` wait for the background run and show its outcome."""
    numbers.setdefault("ds_max_new", 4)
    for key, value in numbers.items():
        widget = at.checkbox(key=key) if key == "ds_sweep" else at.number_input(key=key)
        widget.set_value(value)
    at.button(key="ds_submit").click().run()
    job = dataset(at).job
    if wait and job is not None:
        assert job.wait(TIMEOUT), "the background run did not finish"
        at.run()
    assert not at.exception, at.exception
    return at


def heatmap(at: AppTest) -> dict:
    """The heatmap's spec (the chart with the cell selection: its id ends in its key)."""
    element = next(e for e in at.get("vega_lite_chart") if "dataset_chart" in e.proto.id)
    return json.loads(element.proto.spec)


def colour_title(spec: dict) -> str:
    rect = next(layer for layer in spec["layer"] if layer["mark"]["type"] == "rect")
    return rect["encoding"]["color"]["title"]


def chart_titles(at: AppTest) -> list[str]:
    return [json.dumps(json.loads(e.proto.spec).get("title")) for e in at.get("vega_lite_chart")]


def click_cell(at: AppTest, layer: str, column: int) -> AppTest:
    """Send a click on the heatmap's cell as the browser does: the chart's selection state."""
    element = next(e for e in at.get("vega_lite_chart") if "dataset_chart" in e.proto.id)
    states = at._tree.get_widget_states()
    click = WidgetState(id=element.proto.id)
    click.string_value = json.dumps({"selection": {"cell": [{"layer": layer, "column": column}]}})
    states.widgets.append(click)
    return at._run(states)


def progress_texts(at: AppTest) -> list[str]:
    return [plain(p.proto.text) for p in at.get("progress")]


# --- the page, a run, its charts ---------------------------------------------------------------


def test_page_renders_with_the_bundled_set(app: AppTest) -> None:
    assert app.radio(key="ds_source").value == "bundled"
    n = len(bundled_prompts())
    assert any(f"{n} prompts in 11 categories" in plain(c.value) for c in app.caption)
    # every option from its IntOption: label, range, default, help; no bounds of the app's own
    for key, option in [
        ("ds_user_tokens", USER_TOKENS),
        ("ds_max_new", DATASET_NEW_TOKENS),
        ("ds_top_k", DATASET_TOP_K),
    ]:
        widget = app.number_input(key=key)
        assert widget.proto.label == f"{option.label} ({option.lo}\u2013{option.hi})"
        assert widget.value == option.default and option.help in widget.proto.help
        assert not widget.proto.has_min and not widget.proto.has_max
    assert app.number_input(key="ds_limit").value is None  # all prompts
    assert not app.checkbox(key="ds_sweep").value
    assert not app.get("vega_lite_chart") or not any(
        "dataset_chart" in e.proto.id for e in app.get("vega_lite_chart")
    )
    assert any("Run on the prompt set" in i.value for i in app.info)


def test_run_on_an_uploaded_file_shows_the_heatmap(app: AppTest) -> None:
    upload(app, PROMPTS)
    assert any("4 prompts in 2 categories" in plain(c.value) for c in app.caption)
    submit(app)
    assert not app.error, messages(app)
    result = dataset(app).result
    assert result is not None and result.n_prompts == 4
    assert result.categories == ["capitals", "counting"]
    assert result.state["prompts"]["source"] == "questions.jsonl"
    assert result.state["options"]["max_new_tokens"] == 4
    spec = heatmap(app)
    assert colour_title(spec) == "Answer hit rate (top-1)"
    titles = chart_titles(app)
    assert any("by category" in t for t in titles)
    assert not any("Causal check" in t for t in titles)  # no sweep asked for
    assert dataset(app).job is None and not progress_texts(app)


def test_statistic_and_k_change_the_chart(app: AppTest) -> None:
    submit(app, ds_limit=4)
    assert dataset(app).result.n_prompts == 4
    assert colour_title(heatmap(app)) == "Answer hit rate (top-1)"
    app.radio(key="ds_k").set_value(5).run()
    assert colour_title(heatmap(app)) == "Answer hit rate (top-5)"
    app.selectbox(key="ds_stat").set_value("lift").run()
    assert colour_title(heatmap(app)).startswith("Lift (answer hit - control hit), top-5")
    app.selectbox(key="ds_stat").set_value("entropy").run()
    assert colour_title(heatmap(app)) == "Mean entropy (nats)"
    assert app.radio(key="ds_k").proto.disabled  # k means nothing for a mean
    app.selectbox(key="ds_category").set_value("capitals").run()
    assert "category capitals" in json.dumps(heatmap(app)["title"])
    assert not app.exception


def test_sweep_shows_the_causal_check(app: AppTest) -> None:
    submit(app, ds_limit=3, ds_sweep=True)
    assert not app.error, messages(app)
    titles = " ".join(chart_titles(app))
    assert "KL when a block is skipped" in titles
    assert "answers that flip" in titles and "Read vs cause" in titles


def test_a_bad_file_shows_the_library_message(app: AppTest) -> None:
    bad = PROMPTS.replace('"answer": "Tokyo"', '"answer": "Tokyo city"')
    upload(app, bad, "bad.jsonl")
    shown = plain(" ".join(e.value for e in app.error))
    assert "bad.jsonl, line 2: the answer must be one word" in shown, shown
    assert "lenskit-upload" not in shown  # the user's file, not the temporary one
    submit(app)
    assert dataset(app).job is None and dataset(app).result is None
    assert "bad.jsonl, line 2" in plain(messages(app))
    # skipping invalid lines: the line is listed, the rest runs
    app.checkbox(key="ds_skip_invalid").check().run()
    assert any("3 prompts" in plain(c.value) for c in app.caption)
    assert any("1 invalid line skipped" in e.proto.label for e in app.expander)
    submit(app)
    assert not app.error, messages(app)
    assert dataset(app).result.n_prompts == 3


def test_out_of_range_option_is_the_requests_message(app: AppTest) -> None:
    submit(app, ds_user_tokens=40)
    assert "user_tokens must be an integer in 1..16" in plain(messages(app))
    assert dataset(app).job is None


# --- a cell's prompts, the lens page, exports ----------------------------------------------------


def test_clicking_a_cell_lists_its_prompts_and_opens_one_in_the_lens(app: AppTest) -> None:
    upload(app, PROMPTS)
    submit(app)
    click_cell(app, "out", -1)
    assert not app.exception, app.exception
    assert app.selectbox(key="ds_layer").value == "out"
    assert app.selectbox(key="ds_column").value == -1
    table = app.dataframe[-1].value
    assert list(table["#"]) == [0, 1, 2, 3]
    assert {"top-1 token", "top-1 is the answer", "reply", "prompt"} <= set(table.columns)
    records = dataset(app).result.records
    at_cell = records[(records["layer"] == "out") & (records["column"] == -1)]
    is_answer = (at_cell["top1_id"] == at_cell["answer_id"]).tolist()
    assert table["top-1 is the answer"].tolist() == is_answer
    assert all(isinstance(t, str) and t for t in table["top-1 token"])
    # a category narrows the list
    app.selectbox(key="ds_category").set_value("counting").run()
    assert list(app.dataframe[-1].value["#"]) == [2, 3]
    # open the second prompt of the list in the lens page
    app.selectbox(key="ds_prompt").set_value(3).run()
    app.button(key="ds_open_lens").click().run()
    assert not app.exception and not app.error, messages(app)
    ss = app.session_state
    assert ss["prompt"] == "six seven eight nine" and ss["chat"] is True
    assert ss["target"] in (" ten", "")  # " ten" when it is one token of this tokenizer
    lens = state(app).lens.result
    assert lens.prompt == "six seven eight nine" and lens.chat
    assert "Overview" in [s.value for s in app.subheader]  # the lens page
    assert "ds_submit" not in [b.key for b in app.button]


def test_open_in_lens_targets_the_answer_with_a_space(app: AppTest) -> None:
    upload(app, PROMPTS)
    submit(app)
    app.selectbox(key="ds_layer").set_value("out").run()
    app.selectbox(key="ds_column").set_value(0).run()
    app.selectbox(key="ds_prompt").set_value(0).run()
    app.button(key="ds_open_lens").click().run()
    assert app.session_state["target"] == " Paris"  # one token of the tiny tokenizer
    assert state(app).lens.result.target == " Paris"


def test_lens_target_prefers_the_answer_after_a_space(tiny_model_dir: Path) -> None:
    from conftest import make_chatml_tokenizer

    from lenskit.ui.pages.dataset import lens_target

    tok = make_chatml_tokenizer()
    first = tok.encode("Paris", add_special_tokens=False)[0]  # "Paris" is two tokens here
    assert len(tok.encode(" Paris", add_special_tokens=False)) == 1
    # the reply's spelling of the answer is its first token "P"; " Paris" is one token
    assert lens_target(tok, "Paris", first) == " Paris"
    # " Zanzibar" is several tokens: the answer's token as the reply spells it
    pieces = tok.encode(" Zanzibar", add_special_tokens=False)
    assert len(pieces) > 1
    assert lens_target(tok, "Zanzibar", pieces[0]) == tok.decode([pieces[0]])
    assert lens_target(tok, None, None) == ""  # no gold answer: no target


def test_downloads_have_the_right_types(app: AppTest, monkeypatch) -> None:
    from streamlit.delta_generator import DeltaGenerator

    seen: dict[str, dict] = {}
    original = DeltaGenerator.download_button

    def spy(self, label, data, file_name=None, mime=None, **kwargs):
        seen[file_name] = {"mime": mime, "data": data}
        return original(self, label, data, file_name=file_name, mime=mime, **kwargs)

    monkeypatch.setattr(DeltaGenerator, "download_button", spy)
    submit(app, ds_limit=3, ds_sweep=True)
    mimes = {name: d["mime"] for name, d in seen.items()}
    assert mimes["dataset_summary.json"] == "application/json"
    assert mimes["dataset_records.csv"] == mimes["dataset_prompts.csv"] == "text/csv"
    assert mimes["dataset_records.parquet"] == "application/vnd.apache.parquet"
    for chart in ("heatmap", "by_category", "sweep_kl", "flip_rate", "read_vs_cause"):
        assert mimes[f"dataset_{chart}.png"] == "image/png"
        assert mimes[f"dataset_{chart}.svg"] == "image/svg+xml"
        assert mimes[f"dataset_{chart}.html"] == "text/html"
    result = dataset(app).result
    assert json.loads(seen["dataset_summary.json"]["data"]())["n_prompts"] == 3
    parquet = pd.read_parquet(io.BytesIO(seen["dataset_records.parquet"]["data"]()))
    assert len(parquet) == len(result.records)
    csv = pd.read_csv(io.StringIO(seen["dataset_records.csv"]["data"]()))
    assert len(csv) == len(result.records)
    assert seen["dataset_heatmap.png"]["data"]().startswith(b"\x89PNG")


# --- the background run ------------------------------------------------------------------------


def test_progress_shows_while_the_run_goes_on_across_pages(app: AppTest, monkeypatch) -> None:
    release = threading.Event()
    real = jobs.dataset_result

    def slow(model, tokenizer, prompts, request, **kwargs):
        kwargs["progress"](0.5, "2/4 prompts")
        assert release.wait(TIMEOUT)
        return real(model, tokenizer, prompts, request, **kwargs)

    monkeypatch.setattr(jobs, "dataset_result", slow)
    submit(app, ds_limit=4, wait=False)
    job = dataset(app).job
    assert job is not None and not job.done
    deadline = time.monotonic() + TIMEOUT
    while job.progress().message != "2/4 prompts" and time.monotonic() < deadline:
        time.sleep(0.02)
    app.run()  # what the fragment's poll shows
    assert any("2/4 prompts" in t for t in progress_texts(app)), progress_texts(app)
    assert app.button(key="ds_submit").disabled
    app.switch_page("lenskit/ui/pages/lens.py").run()
    app.switch_page(PAGE).run()
    assert any("2/4 prompts" in t for t in progress_texts(app))  # still going
    release.set()
    assert job.wait(TIMEOUT)
    app.run()
    assert not app.exception and not app.error, messages(app)
    assert dataset(app).result.n_prompts == 4 and dataset(app).job is None
    assert not progress_texts(app)
    assert colour_title(heatmap(app)) == "Answer hit rate (top-1)"


def test_stop_ends_the_run_with_a_word(app: AppTest, monkeypatch) -> None:
    def endless(model, tokenizer, prompts, request, **kwargs):
        while True:
            kwargs["progress"](0.1, "working")
            time.sleep(0.01)

    monkeypatch.setattr(jobs, "dataset_result", endless)
    submit(app, ds_limit=4, wait=False)
    job = dataset(app).job
    app.button(key="ds_stop").click().run()
    assert job.wait(TIMEOUT) and job.cancelled
    app.run()
    assert any("stopped" in i.value for i in app.info)
    assert dataset(app).job is None and dataset(app).result is None


def test_an_error_in_the_job_is_shown(app: AppTest, monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise InputError("prompt 2 (line 3): the prompt is longer than the model's context")

    monkeypatch.setattr(jobs, "dataset_result", refuse)
    submit(app, ds_limit=4)
    assert "prompt 2 (line 3): the prompt is longer" in plain(messages(app))
    assert dataset(app).job is None and dataset(app).result is None
    assert not app.exception


def test_a_bug_in_the_job_is_shown_with_its_traceback(app: AppTest, monkeypatch) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(jobs, "dataset_result", broken)
    app.button(key="ds_submit").click().run()
    assert dataset(app).job.wait(TIMEOUT)
    app.run()
    assert any("bug inside lenskit" in e.value for e in app.error)
    assert any("boom" in e.message for e in app.exception)


def test_an_interrupted_start_says_so_and_runs_again(app: AppTest, monkeypatch) -> None:
    """A page switch while the model loads stops the script before the run reaches the
    background: the page says so and "Run again" runs it."""
    from streamlit.runtime.scriptrunner_utils.exceptions import StopException

    from lenskit.ui import cached

    real = cached.load

    def stopped(ref, progress=None):
        if progress is not None:  # the dataset page's load, with its progress bar
            raise StopException()
        return real(ref, progress)

    monkeypatch.setattr(cached, "load", stopped)
    submit(app, ds_limit=3)
    assert dataset(app).pending is not None and dataset(app).job is None
    app.run()
    assert any("interrupted" in w.value for w in app.warning)
    monkeypatch.undo()
    app.button(key="run_again_dataset").click().run()
    assert dataset(app).job is not None and dataset(app).pending is None
    assert dataset(app).job.wait(TIMEOUT)
    app.run()
    assert not any("interrupted" in w.value for w in app.warning)
    assert dataset(app).result.n_prompts == 3


def test_the_job_runner_runs_in_a_thread(tiny_model_dir: Path) -> None:
    """lenskit.ui.jobs without Streamlit: the outcome of each kind, and a real run."""
    import lenskit

    main = threading.current_thread().name

    def work(progress):
        progress(0.5, "half")
        return threading.current_thread().name

    job = jobs.BackgroundJob(work, "worker").start()
    assert job.wait(10) and job.result == "worker" != main
    assert job.progress().fraction == 0.5 and job.progress().message == "half"
    for exc, field in ((InputError("no"), "error"), (RuntimeError("bug"), "bug")):

        def fail(progress, exc=exc):
            raise exc

        failed = jobs.BackgroundJob(fail).start()
        assert failed.wait(10) and getattr(failed, field) is exc and failed.result is None

    model, tokenizer = lenskit.load_model(str(tiny_model_dir), device="cpu")
    prompts = bundled_prompts()
    run_job = jobs.start_dataset_run(
        model, tokenizer, prompts, DatasetRequest(max_new_tokens=3), limit=3
    )
    assert run_job.wait(TIMEOUT) and run_job.error is None and run_job.bug is None
    run = run_job.result
    assert run.result.n_prompts == 3
    assert run.result.state["prompts"]["source"] == "bundled (first 3)"
    assert run_job.progress().fraction == 1.0 and run_job.progress().message == "3/3 prompts"
    directory = run.result.directory
    assert directory.is_dir() and len(run.result.records) > 0
    run.close()
    assert not directory.exists()
    first = jobs.first_prompts(prompts, 3)
    assert [item.line for item in first] == [1, 2, 3]
    assert jobs.first_prompts(prompts, None) is prompts
