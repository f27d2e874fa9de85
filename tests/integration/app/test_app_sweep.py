"""The "Generation & interventions" page under AppTest, with the tiny random model as "default".

The page reuses the sidebar's model and prompt (the last good logit-lens run); its own inputs
live in a form (key "sweep_form") submitted by the button with key "sweep_submit". The
session's typed state (lenskit.ui.state.AppState) holds the sweep report. Charts are
"vega_lite_chart" elements; charts without selections carry no id, so they are told apart by
their title text.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import REPO_ROOT
from streamlit.testing.v1 import AppTest

from lenskit.ui.pages import PAGES
from lenskit.ui.state import STATE_KEY, AppState

APP = str(REPO_ROOT / "app.py")
TIMEOUT = 120
TAB = "Generation & interventions"
#: Page files, relative to app.py, by title.
PAGE_FILES = {p.title: str(p.path.relative_to(REPO_ROOT)) for p in PAGES}


@pytest.fixture
def app(tiny_default_model: Path) -> AppTest:
    """A fresh app session: first run (the example prompt, chat template) done, page opened."""
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, at.exception
    return open_tab(at)


def open_tab(at: AppTest, label: str = TAB) -> AppTest:
    """Switch pages (only the open page runs)."""
    at.switch_page(PAGE_FILES[label]).run()
    assert not at.exception, at.exception
    return at


def state(at: AppTest) -> AppState:
    return at.session_state[STATE_KEY]


def lens_result(at: AppTest):
    return state(at).lens.result


def sweep_result(at: AppTest):
    report = state(at).sweep.report
    return None if report is None else report.sweep


def run_lens(at: AppTest, **fields) -> AppTest:
    """Fill the sidebar form (by widget key) and press Run logit lens."""
    for key, value in fields.items():
        at.session_state[key] = value
    at.sidebar.button[0].click()
    at.run()
    return at


def tab(at: AppTest):
    """The page's main area."""
    return at.main


def specs(at: AppTest) -> dict[str, dict]:
    """The tab's Vega-Lite specs by kind: "sweep", "gen_lens", "pairwise"."""
    out: dict[str, dict] = {}
    for element in tab(at).get("vega_lite_chart"):
        spec = json.loads(element.proto.spec)
        title = json.dumps(spec.get("title", ""))
        if "Intervention sweep" in title:
            out["sweep"] = spec
        elif "generated tokens" in title:
            out["gen_lens"] = spec
        elif "Layer" in title:
            out["pairwise"] = spec
    return out


def run_sweep(at: AppTest, **fields) -> AppTest:
    """Set the tab's form fields (by widget key) and press Run sweep."""
    for key, value in fields.items():
        at.session_state[key] = value
    at.button(key="sweep_submit").click()
    at.run()
    return at


def tab_messages(at: AppTest) -> str:
    """The page's errors and warnings as they read (user text is escaped with backslashes)."""
    t = tab(at)
    return " | ".join(e.value for e in [*t.error, *t.warning]).replace("\\", "")


def rect_layer(spec: dict) -> dict:
    return next(x for x in spec.get("layer", [spec]) if x.get("mark", {}).get("type") == "rect")


def test_tab_exists_and_waits_for_a_run(app: AppTest) -> None:
    assert [p.title for p in PAGES][:2] == ["Logit lens", TAB]
    assert app.button(key="sweep_submit")  # this page's form is on screen
    assert "sweep" not in specs(app)
    assert any("Run sweep" in i.value for i in tab(app).info)
    # the layer x layer KL view is there without a sweep (prompt positions of the lens run)
    assert "pairwise" in specs(app)
    lens = lens_result(app)
    assert app.selectbox(key="pair_pos").value == lens.n_positions - 1
    # defaults: all blocks, template positions, skip, 5 tokens
    n_blocks = lens.n_rows - 1
    assert app.multiselect(key="sweep_layers").value == list(range(n_blocks))
    assert app.radio(key="sweep_pos_mode").value == "template"
    assert app.radio(key="sweep_intervention").value == "skip"
    assert app.number_input(key="sweep_max_new").value == 5


def test_sweep_shows_heatmap(app: AppTest) -> None:
    run_sweep(app, sweep_max_new=3)
    assert not app.exception, app.exception
    assert not tab(app).error, tab_messages(app)
    result = sweep_result(app)
    lens = lens_result(app)
    assert result.kl.shape == (lens.n_rows - 1, result.n_generated)
    assert 1 <= result.n_generated <= 3
    assert result.positions.tolist() == lens.template_positions.tolist()
    found = specs(app)
    assert {"sweep", "gen_lens", "pairwise"} <= set(found)
    cells = rect_layer(found["sweep"])
    x_domain = cells["encoding"]["x"]["scale"]["domain"]
    assert x_domain[0].startswith("Gen0 \u00b7 ")
    assert len(x_domain) == result.n_generated
    # block 0 at the bottom: the y domain runs from the last block down to 0
    assert cells["encoding"]["y"]["scale"]["domain"][-1] == 0
    colour = cells["encoding"]["color"]["scale"]
    assert colour["domain"] == [0.0, 2.0] and colour["scheme"] == "yelloworangered"
    gen_x = rect_layer(found["gen_lens"])["encoding"]["x"]["scale"]["domain"]
    assert gen_x == x_domain[: len(gen_x)] and len(gen_x) == result.n_generated
    # exports: CSV, JSON and chart downloads in the tab
    keys = {b.proto.id.rsplit("-", 1)[-1] for b in tab(app).get("download_button")}
    assert {"dl_sweep_csv", "dl_sweep_json", "dl_sweep_kl_png", "dl_sweep_kl_svg"} <= keys
    # the lens tab is untouched
    assert lens_result(app) is lens


def test_sweep_kept_when_the_generation_lens_does_not_fit(app: AppTest) -> None:
    """At the context's edge the sweep fits (it never reads its last token) and the lens over
    the generation does not: the sweep is shown, with a warning instead of that lens."""
    run_lens(app, prompt="word " * 10)  # 77 tokens with the template; the context is 128
    n_prompt = lens_result(app).n_positions
    run_sweep(app, sweep_max_new=129 - n_prompt, sweep_layers=[0])  # reads 128, the lens 129
    assert not app.exception and not tab(app).error, tab_messages(app)
    assert sweep_result(app).n_generated == 129 - n_prompt
    assert state(app).sweep.report.generation is None
    assert "sweep" in specs(app) and "gen_lens" not in specs(app)
    assert "no lens over the generation" in tab_messages(app).lower()


def test_unused_picked_positions_are_mentioned(app: AppTest) -> None:
    """Picked positions are used only with 'explicit': otherwise the page says so."""
    run_sweep(app, sweep_pos_mode="template", sweep_positions=[1, 2], sweep_max_new=1)
    assert not tab(app).error, tab_messages(app)
    lens = lens_result(app)
    assert sweep_result(app).positions.tolist() == lens.template_positions.tolist()
    assert any("picked positions are not used" in i.value for i in tab(app).info)
    run_sweep(app, sweep_positions=[])
    assert not any("picked positions" in i.value for i in tab(app).info)


def test_quick_pick_and_options(app: AppTest) -> None:
    app.button(key="sweep_pick_band").click().run()
    assert not app.exception
    n_blocks = lens_result(app).n_rows - 1
    from lenskit.charts import band_layers

    assert app.multiselect(key="sweep_layers").value == band_layers(n_blocks)
    run_sweep(
        app,
        sweep_layers=[0, n_blocks - 1],
        sweep_pos_mode="explicit",
        sweep_positions=[1, 2],
        sweep_intervention="noise",
        sweep_seed=7,
        sweep_max_new=2,
    )
    assert not app.exception and not tab(app).error, tab_messages(app)
    result = sweep_result(app)
    assert result.layers.tolist() == [0, n_blocks - 1]
    assert result.positions.tolist() == [1, 2]
    assert result.intervention == "noise" and result.seed == 7
    y = rect_layer(specs(app)["sweep"])["encoding"]["y"]["scale"]["domain"]
    assert y == [n_blocks - 1, 0]


def test_pairwise_position(app: AppTest) -> None:
    app.selectbox(key="pair_pos").set_value(2).run()
    assert not app.exception
    spec = specs(app)["pairwise"]
    assert "position 2" in json.dumps(spec["title"])
    lens = lens_result(app)
    assert len(spec["encoding"]["x"]["scale"]["domain"]) == lens.n_rows


def chart_frame(at: AppTest, kind: str):
    """The cell data of one of the tab's charts (sent beside the spec as an Arrow dataset)."""
    import pyarrow as pa

    for element in tab(at).get("vega_lite_chart"):
        if json.loads(element.proto.spec) == specs(at)[kind]:
            (dataset,) = element.proto.datasets
            return pa.ipc.open_stream(dataset.data.data).read_all().to_pandas()
    raise AssertionError(f"no {kind} chart")


def test_pairwise_chart_values(app: AppTest) -> None:
    """The cells show KL(p_i || p_j) with i on y and j on x: the matrix of
    lenskit.layer_pairwise_kl itself, not its transpose (KL is not symmetric)."""
    import numpy as np

    from lenskit import layer_pairwise_kl, load_model

    app.selectbox(key="pair_pos").set_value(3).run()
    assert not app.exception
    lens = lens_result(app)
    model, tokenizer = load_model("default")
    names, kl = layer_pairwise_kl(
        model, tokenizer, lens.prompt, 3, chat=lens.chat, system=lens.system
    )
    assert not np.allclose(kl, kl.T, rtol=1e-3, atol=0)  # a transposed chart would show
    frame = chart_frame(app, "pairwise")
    shown = frame.pivot(index="p", columns="q", values="kl").loc[list(names), list(names)]
    np.testing.assert_allclose(shown.to_numpy(), kl, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"sweep_layers": []}, "layers is empty"),
        ({"sweep_pos_mode": "explicit", "sweep_positions": []}, "no positions picked"),
        ({"sweep_pos_mode": "all-prompt", "sweep_intervention": "mean"}, "mean"),
    ],
    ids=["no-layers", "no-positions", "mean-without-sources"],
)
def test_bad_input_keeps_last_sweep(app: AppTest, fields: dict, expected: str) -> None:
    run_sweep(app, sweep_max_new=2)
    good = state(app).sweep.report
    run_sweep(app, **fields)
    assert not app.exception, app.exception
    text = tab_messages(app).lower()
    assert expected in text, text
    assert state(app).sweep.report is good
    assert "sweep" in specs(app)  # the last good sweep is still on screen
    assert any("last good sweep" in c.value for c in tab(app).caption)


def test_generation_past_the_context_is_a_message(app: AppTest) -> None:
    """The tiny model's context is 128 tokens: a long prompt + 64 new tokens does not fit."""
    run_lens(app, prompt="word " * 10)  # 77 tokens with the template
    assert not app.exception and not app.error
    run_sweep(app, sweep_max_new=64)
    assert not app.exception, app.exception
    assert "context" in tab_messages(app).lower()
    assert sweep_result(app) is None


def test_out_of_range_numbers_are_explained(app: AppTest) -> None:
    """Out-of-range numbers give a visible message: the browser silently refuses values
    outside a number_input's min/max, so the fields have no bounds of their own; the labels
    say the range and the request's message says what is allowed."""
    for key in ("sweep_max_new", "sweep_seed"):
        widget = app.number_input(key=key)
        assert not widget.proto.has_min and not widget.proto.has_max, key
    assert "1\u201364" in app.number_input(key="sweep_max_new").proto.label
    for bad in (500, 65, 0, -1):
        run_sweep(app, sweep_max_new=bad)
        assert not app.exception, app.exception
        text = tab_messages(app).lower()
        # the library's message (lenskit.requests.MAX_NEW_TOKENS), not an app-side copy
        assert "max_new_tokens must be an integer in 1..64" in text, text
        assert sweep_result(app) is None
        # the error is the message: no "press Run sweep" as if nothing had happened
        assert not any("Run sweep" in i.value for i in tab(app).info)
    run_sweep(app, sweep_max_new=2, sweep_seed=-5)
    assert "seed must be an integer in 0.." in tab_messages(app).lower()
    assert sweep_result(app) is None
    run_sweep(app, sweep_max_new=2, sweep_seed=3)
    assert not tab(app).error, tab_messages(app)
    assert sweep_result(app).max_new_tokens == 2


def test_new_prompt_resets_pairwise_position(app: AppTest) -> None:
    """The layer x layer KL position is reset with the drill-down's when the prompt changes,
    and the browser is sent the label of the new token (not the old prompt's token at that
    position)."""
    app.selectbox(key="pair_pos").set_value(2).run()
    assert "position 2 " in json.dumps(specs(app)["pairwise"]["title"])
    run_lens(app, prompt="What is the capital of France?", target=" Paris")
    assert not app.exception and not app.error
    lens = lens_result(app)
    last = lens.n_positions - 1
    box = app.selectbox(key="pair_pos")
    assert box.value == last == app.session_state["drill_pos"]
    # the label the browser shows: sent with the new value, and naming the current token
    assert box.proto.set_value and box.proto.raw_value == box.proto.options[last]
    from lenskit.text import format_token

    assert box.proto.raw_value.startswith(f"{last}: {format_token(str(lens.tokens[last]), 24)}")
    assert f"position {last} " in json.dumps(specs(app)["pairwise"]["title"])


def test_new_prompt_clears_sweep_messages(app: AppTest) -> None:
    """A sweep error is about the prompt it was raised for: a new prompt clears it."""
    app.selectbox(key="example").set_value("Counting (raw text)").run()
    run_sweep(app)
    assert "no chat-template tokens" in tab_messages(app).lower()
    app.selectbox(key="example").set_value("Capital of France (chat)").run()
    assert not app.exception, app.exception
    assert lens_result(app).prompt == "What is the capital of France?"
    assert not tab(app).error, tab_messages(app)
    assert any("Run sweep" in i.value for i in tab(app).info)


def test_raw_prompt_without_template(app: AppTest) -> None:
    run_lens(app, chat=False, target="")
    assert not app.exception
    run_sweep(app)
    assert "no chat-template tokens" in tab_messages(app).lower()
    run_sweep(app, sweep_pos_mode="all-prompt", sweep_max_new=2)
    assert not tab(app).error, tab_messages(app)
    assert not sweep_result(app).chat


def test_switching_tabs_keeps_inputs_and_results(tiny_default_model: Path) -> None:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    assert not at.get("multiselect")  # only the open tab runs: the sweep tab is idle
    at.radio(key="metric").set_value("kl_to_final").run()
    at.slider(key="detail_range").set_value((2, 6)).run()
    open_tab(at)
    assert "overview_chart" not in json.dumps([e.proto.id for e in at.get("vega_lite_chart")])
    run_sweep(at, sweep_max_new=2, sweep_layers=[1, 2], sweep_intervention="mean")
    assert not at.exception and not tab(at).error, tab_messages(at)
    open_tab(at, "Logit lens")
    assert at.radio(key="metric").value == "kl_to_final"
    assert at.slider(key="detail_range").value == (2, 6)
    open_tab(at)
    assert at.multiselect(key="sweep_layers").value == [1, 2]
    assert at.radio(key="sweep_intervention").value == "mean"
    assert at.number_input(key="sweep_max_new").value == 2
    assert "sweep" in specs(at)


def test_lens_errors_show_in_this_tab(app: AppTest) -> None:
    run_sweep(app, sweep_layers=[0], sweep_max_new=2)
    assert not tab(app).error
    run_lens(app, model_choice="other", model_path="/no/such/model")
    assert not app.exception
    assert "no such file" in tab_messages(app).lower()  # the sidebar's error, shown here
    assert "sweep" in specs(app)  # the last good sweep stays


def test_user_text_is_not_rendered(app: AppTest) -> None:
    evil = "<script>alert(1)</script> **bold** [x](javascript:alert(1))"
    run_lens(app, prompt=evil, target="")
    run_sweep(app, sweep_max_new=2)
    assert not app.exception
    t = tab(app)
    for element in [*t.markdown, *t.caption, *t.error, *t.warning, *t.info]:
        assert not getattr(element.proto, "allow_html", False)
        assert "<script>" not in element.value and "**bold**" not in element.value


def test_generation_lens_metric_selector(app: AppTest) -> None:
    """The "Colour by" radio under the generation lens recolours that chart."""
    run_sweep(app, sweep_max_new=2)
    assert not tab(app).error, tab_messages(app)
    for key, start in (("kl_to_final", "KL"), ("top1_prob", "Top-1"), ("entropy", "Entropy")):
        app.radio(key="gen_metric").set_value(key).run()
        assert not app.exception, app.exception
        colour = rect_layer(specs(app)["gen_lens"])["encoding"]["color"]
        assert colour["title"].startswith(start), (key, colour["title"])


def test_interrupted_sweep_says_so_and_runs_again(app: AppTest, monkeypatch) -> None:
    """A sweep stopped half-way (as by a page switch) is never lost without a word: back on
    this page, it says so; "Run again" runs it."""
    import streamlit as st
    from streamlit.runtime.scriptrunner_utils.exceptions import StopException

    import lenskit
    from lenskit.requests import SweepRequest

    real = lenskit.run

    def run(model, tokenizer, request, **kwargs):
        if isinstance(request, SweepRequest):
            raise StopException()
        return real(model, tokenizer, request, **kwargs)

    st.cache_data.clear()
    monkeypatch.setattr(lenskit, "run", run)
    run_sweep(app, sweep_max_new=2, sweep_layers=[0])
    assert sweep_result(app) is None
    open_tab(app, "Logit lens")
    assert not any("interrupted" in w.value for w in app.warning)  # the lens run is fine
    open_tab(app)
    assert any("sweep below was interrupted" in w.value for w in tab(app).warning)
    monkeypatch.undo()
    app.button(key="run_again_sweep").click().run()
    assert not app.exception and not tab(app).error, tab_messages(app)
    assert sweep_result(app).layers.tolist() == [0] and sweep_result(app).n_generated <= 2
    assert not any("interrupted" in w.value for w in tab(app).warning)
    assert "sweep" in specs(app)
