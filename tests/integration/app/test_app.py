"""The Streamlit app under AppTest, with a tiny random model as "default" (fast, offline).

AppTest runs app.py in this process; the model is selected through LENSKIT_DEFAULT_MODEL.
Widgets are set by their keys (lenskit.ui.state.Keys); the app's own state (results, messages,
the pending run) is the typed AppState (app_helpers.state). Charts appear as elements of type
"vega_lite_chart" whose ``proto.spec`` is the Vega-Lite JSON (the cell data travel separately
as Arrow datasets). AppTest cannot brush a chart, so
the detail range is driven through its slider (key "detail_range"), which is the state the
brush callback writes; the real brush is exercised in test_browser.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from app_helpers import APP, TIMEOUT, lens_result, messages, plain, save_tiny, submit
from conftest import make_plain_tokenizer, make_tiny_model
from streamlit.testing.v1 import AppTest


@pytest.fixture
def app(tiny_default_model: Path) -> AppTest:
    """A fresh app session whose first run (the example prompt) is done."""
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, at.exception
    return at


def charts_of(at: AppTest) -> dict[str, dict]:
    """Vega-Lite specs by chart key (overview_chart, detail_chart, drill_chart)."""
    out = {}
    for element in at.get("vega_lite_chart"):
        spec = json.loads(element.proto.spec)
        if element.proto.id:  # charts with selections are widgets: their id ends in the key
            key = element.proto.id.rsplit("-", 1)[-1]
            out[re.sub(r"_\d+$", "", key)] = spec  # lenskit.ui.widgets.chart_key: "detail_chart_2"
        elif "vconcat" in spec:
            out["drill_chart"] = spec
    return out


def cell_layer(spec: dict) -> dict:
    return next(layer for layer in spec["layer"] if layer.get("mark", {}).get("type") == "rect")


def detail_positions(at: AppTest) -> list[int]:
    return cell_layer(charts_of(at)["detail_chart"])["encoding"]["x"]["scale"]["domain"]


def colour_title(at: AppTest, key: str = "overview_chart") -> str:
    return cell_layer(charts_of(at)[key])["encoding"]["color"]["title"]


def assert_usable(at: AppTest) -> None:
    """No exception, and the last good result is still on screen."""
    assert not at.exception, at.exception
    assert {"overview_chart", "detail_chart"} <= set(charts_of(at))


def test_first_run_shows_example(app: AppTest) -> None:
    specs = charts_of(app)
    assert set(specs) == {"overview_chart", "detail_chart", "drill_chart"}
    assert not app.error
    result = lens_result(app)
    assert result.prompt == "What is the capital of Australia?"
    assert result.chat and result.template_positions.size > 0
    # default detail range: the end of the question and every template token
    positions = detail_positions(app)
    assert positions[-1] == result.n_positions - 1
    assert positions[0] <= int(result.template_positions.min())
    # the prompt is shown as text (st.code), not rendered
    assert any(c.value == result.prompt for c in app.code)
    # the overview colours by entropy on the fixed 0 .. ln V domain
    scale = cell_layer(specs["overview_chart"])["encoding"]["color"]["scale"]
    assert scale["domain"][0] == 0
    assert scale["domain"][1] == pytest.approx(__import__("math").log(result.vocab_size))
    assert len(app.get("download_button")) == 2 + 9


def test_submit_new_prompt_updates_charts(app: AppTest) -> None:
    before = lens_result(app)
    submit(app, prompt="The quick brown fox jumps over the lazy dog.", chat=False, target="")
    assert_usable(app)
    assert not app.error
    result = lens_result(app)
    assert result is not before
    assert result.prompt == "The quick brown fox jumps over the lazy dog." and not result.chat
    assert result.target is None
    sort = cell_layer(charts_of(app)["overview_chart"])["encoding"]["x"]["scale"]["domain"]
    assert sort == list(range(result.n_positions))
    assert any(c.value == result.prompt for c in app.code)


def test_detail_range_follows_selection(app: AppTest) -> None:
    app.slider(key="detail_range").set_value((2, 6)).run()
    assert not app.exception
    assert detail_positions(app) == [2, 3, 4, 5, 6]
    # the overview carries the brush that drives this range in a browser
    overview = charts_of(app)["overview_chart"]
    params = [
        *overview.get("params", []),
        *(p for x in overview["layer"] for p in x.get("params", [])),
    ]
    assert "brush" in {p["name"] for p in params}


def test_detail_range_is_capped(app: AppTest) -> None:
    long_prompt = " ".join(["one two three four five six seven eight nine ten"] * 5)
    submit(app, prompt=long_prompt, chat=False, target="")
    assert_usable(app)
    t = lens_result(app).n_positions
    assert t > 45
    app.slider(key="detail_range").set_value((0, t - 1)).run()
    assert not app.exception
    assert detail_positions(app) == list(range(40))
    assert any("at most 40 positions" in i.value for i in app.info)


def test_metric_selector(app: AppTest) -> None:
    assert colour_title(app).startswith("Entropy")
    app.radio(key="metric").set_value("kl_to_final").run()
    assert "KL" in colour_title(app) and "KL" in colour_title(app, "detail_chart")
    app.radio(key="metric").set_value("top1_prob").run()
    assert colour_title(app).startswith("Top-1")
    app.radio(key="metric").set_value("target_prob").run()  # the example has a target
    assert colour_title(app).startswith("Target")
    assert not app.warning
    # without a target: a warning and the entropy view, no exception
    submit(app, target="")
    app.radio(key="metric").set_value("target_prob").run()
    assert not app.exception
    assert any("target token" in w.value for w in app.warning)
    assert colour_title(app).startswith("Entropy")


def test_drilldown_position(app: AppTest) -> None:
    app.selectbox(key="drill_pos").set_value(3).run()
    assert not app.exception
    table = app.dataframe[0].value
    assert list(table["layer"])[0] == "out" and list(table["layer"])[-1] == "emb"
    title = charts_of(app)["drill_chart"]["title"]
    assert "Position 3" in json.dumps(title)


def test_detail_outlines_the_drilldown_position(app: AppTest, monkeypatch) -> None:
    """The detail view is drawn with the drill-down's position marked (the box itself is
    checked in test_charts)."""
    from lenskit import charts

    seen = []
    heatmap = charts.lens_heatmap

    def spy(*args, **kwargs):
        seen.append(kwargs.get("marked"))
        return heatmap(*args, **kwargs)

    monkeypatch.setattr(charts, "lens_heatmap", spy)
    app.slider(key="detail_range").set_value((2, 6)).run()
    app.selectbox(key="drill_pos").set_value(4).run()
    assert seen[-1] == 4
    # the rect layers of the detail chart include the drawn box
    strokes = [layer["mark"].get("stroke") for layer in charts_of(app)["detail_chart"]["layer"]]
    assert charts.HIGHLIGHT_COLOR in strokes


def test_drilldown_table_rank_and_probabilities(app: AppTest) -> None:
    """Ranks are 1-based and say so, as on the chart; probabilities keep 3 significant digits
    (6e-6 is not 0.000)."""
    pos = app.selectbox(key="drill_pos").value
    result = lens_result(app)
    table = app.dataframe[0].value
    assert "target rank" not in table.columns
    ranks = table["target rank (1 = top)"].tolist()
    assert ranks == (result.target_rank[::-1, pos] + 1).tolist()
    columns = json.loads(app.dataframe[0].proto.columns)
    formats = {name: c.get("type_config", {}).get("format") for name, c in columns.items()}
    target_col = next(c for c in table.columns if c.startswith("p("))
    # charts.PROB_PRINTF: exponent notation, one style per column (%.3g mixed 0.00000612, 4.17e-7)
    assert formats[target_col] == formats["p1"] == "%.2e"
    assert formats["entropy (nats)"] == "%.3f"
    drill = charts_of(app)["drill_chart"]
    assert "1 = top" in drill["vconcat"][1]["encoding"]["y"]["title"]


def test_drilldown_is_stacked(app: AppTest) -> None:
    """The drill-down's two panels are stacked so they fit the narrow right column."""
    drill = charts_of(app)["drill_chart"]
    assert len(drill["vconcat"]) == 2 and "hconcat" not in drill


def test_out_of_range_top_k_is_explained(app: AppTest) -> None:
    """The browser silently refuses values outside a number_input's min/max (the button then
    runs nothing, with no message), so the field has no bounds of its own: the request's
    message says what is allowed, and the last result stays."""
    widget = app.number_input(key="top_k")
    assert not widget.proto.has_min and not widget.proto.has_max
    assert "1\u201350" in widget.proto.label
    good = lens_result(app)
    for bad in (100, 0, -3):
        submit(app, top_k=bad)
        assert_usable(app)
        # the library's message (lenskit.requests.TOP_K), not an app-side copy
        assert "top_k must be an integer in 1..50" in plain(messages(app)), messages(app)
        assert lens_result(app) is good
    submit(app, top_k=7)
    assert_usable(app)
    assert not app.error
    assert lens_result(app).top_k == 7


def test_lens_progress_is_visible(tiny_default_model: Path, monkeypatch) -> None:
    """The progress bars of a run sit in an st.status box: it opens expanded and stays so
    when its label changes (update() without expanded=True collapses it), so a long read-out
    shows its progress rather than a bare spinner."""
    from streamlit.delta_generator import DeltaGenerator
    from streamlit.elements.lib.mutable_status_container import StatusContainer

    calls: list[dict] = []
    original = DeltaGenerator.status
    original_update = StatusContainer.update

    def status(self, label, *args, **kwargs):
        calls.append({"label": label, **kwargs})
        return original(self, label, *args, **kwargs)

    def update(self, **kwargs):
        calls.append({"update": True, **kwargs})
        return original_update(self, **kwargs)

    monkeypatch.setattr(DeltaGenerator, "status", status)
    monkeypatch.setattr(StatusContainer, "update", update)
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, at.exception
    assert calls, "the lens run shows no status box"
    assert any(call.get("update") for call in calls), calls  # the label does change
    # (the final update(state="complete") on leaving the box may collapse it: it is removed)
    shown = [call for call in calls if "label" in call]
    assert all(call.get("expanded") is True for call in shown), calls


def test_long_prompt_scrolls(tiny_default_model: Path, monkeypatch) -> None:
    """A long prompt is shown in a fixed-height box, so that it does not push the charts
    down the page; a short one at its own height."""
    import streamlit as st

    shown: dict[str, object] = {}
    original = st.code

    def code(body, *args, **kwargs):
        shown[str(body)] = kwargs.get("height", "content")
        return original(body, *args, **kwargs)

    monkeypatch.setattr(st, "code", code)
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    assert shown[lens_result(at).prompt] == "content"
    long_prompt = "\n".join(["one", "two", "three", "four", "five", "six", "seven"])
    at.session_state["prompt"] = long_prompt
    at.sidebar.button[0].click()
    at.run()
    assert not at.exception and not at.error, at.error
    assert lens_result(at).prompt == long_prompt
    assert isinstance(shown[long_prompt], int) and 60 <= shown[long_prompt] <= 300


def _device_caption(at: AppTest) -> str:
    return next(c.value for c in at.sidebar.caption if c.value.startswith("Device:"))


def test_device_from_environment(tiny_default_model: Path, monkeypatch) -> None:
    """LENSKIT_DEVICE is where the app loads models (shown in the sidebar); a bad one is a
    message, and the next good one loads (the device is part of the model's cache key)."""
    monkeypatch.setenv("LENSKIT_DEVICE", "meta")
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, at.exception
    assert "Unsupported device" in messages(at) and "meta" in messages(at)
    assert _device_caption(at).startswith("Device: meta")
    assert lens_result(at) is None
    monkeypatch.setenv("LENSKIT_DEVICE", "cpu")
    submit(at)
    assert not at.error, messages(at)
    assert _device_caption(at).startswith("Device: cpu")
    assert "the model runs on cpu" in _device_caption(at)
    assert_usable(at)


def test_device_defaults_to_a_gpu(tiny_default_model: Path, monkeypatch) -> None:
    """Without LENSKIT_DEVICE the app asks for the library's "auto" (CUDA, then MPS, then the
    CPU) and says where the model runs; when torch sees a GPU (here: pretend) the model goes
    there (here the move fails, and the library's message names the GPU)."""
    import torch

    monkeypatch.delenv("LENSKIT_DEVICE")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    assert not at.exception and not at.error, messages(at)
    assert _device_caption(at).startswith("Device: auto")
    assert "the model runs on cpu" in _device_caption(at)
    import streamlit as st

    st.cache_resource.clear()  # the CPU model above would be reused
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, at.exception
    assert _device_caption(at).startswith("Device: auto")
    assert "cuda" in messages(at).lower(), messages(at)


def test_example_picker(app: AppTest) -> None:
    app.selectbox(key="example").set_value("Counting (raw text)").run()
    assert_usable(app)
    result = lens_result(app)
    assert result.prompt.startswith("one, two, three") and not result.chat
    assert result.target == " six"


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"prompt": ""}, "empty"),
        ({"prompt": "   \n\t "}, "empty"),
        ({"prompt": "word " * 400}, "context"),
        ({"model_choice": "other", "model_path": "/no/such/model/dir"}, "no such file"),
        ({"model_choice": "other", "model_path": ""}, "no model given"),
        ({"target": " Canberra Sydney Melbourne Perth"}, "token"),
    ],
    ids=["empty", "whitespace", "too-long", "bad-model", "no-model-path", "multi-token-target"],
)
def test_bad_input_keeps_last_result(app: AppTest, fields: dict, expected: str) -> None:
    good = lens_result(app)
    submit(app, **fields)
    assert_usable(app)
    text = plain(messages(app)).lower()
    assert expected in text, text
    assert lens_result(app) is good
    assert any("last good result" in c.value for c in app.caption)
    # and a good run afterwards recovers
    submit(
        app,
        prompt="What is the capital of France?",
        model_choice="default",
        target=" Paris",
    )
    assert_usable(app)
    assert not app.error
    assert lens_result(app).prompt == "What is the capital of France?"


def test_model_without_chat_template(app: AppTest, tmp_path: Path) -> None:
    tok = make_plain_tokenizer()
    model = make_tiny_model("llama", len(tok))
    model.save_pretrained(tmp_path / "plain")
    tok.save_pretrained(tmp_path / "plain")
    good = lens_result(app)
    submit(app, model_choice="other", model_path=str(tmp_path / "plain"), chat=True)
    assert_usable(app)
    assert "chat template" in messages(app).lower()
    assert lens_result(app) is good
    # the same model with a raw prompt works
    submit(app, chat=False, target="")
    assert_usable(app)
    assert not app.error
    assert str(tmp_path / "plain") in lens_result(app).model_name


def test_system_prompt_without_chat_is_an_error(app: AppTest) -> None:
    """A system prompt needs the chat template: the library refuses it on a raw prompt and
    the app shows that message (it used to drop the system prompt with its own warning)."""
    good = lens_result(app)
    submit(app, chat=False, system="Be terse.", target="")
    assert_usable(app)
    assert "system prompt" in plain(messages(app)).lower()
    assert lens_result(app) is good
    assert any("last good result" in c.value for c in app.caption)
    # with the chat template it runs, and a warning-free run shows no "last good result"
    submit(app, chat=True)
    assert_usable(app)
    assert not app.error and lens_result(app).system == "Be terse."
    assert not any("last good result" in c.value for c in app.caption)


def chart_keys(at: AppTest) -> set[str]:
    return {e.proto.id.rsplit("-", 1)[-1] for e in at.get("vega_lite_chart") if e.proto.id}


def test_same_tokens_keep_range_and_drilldown(app: AppTest) -> None:
    """Another target or top-k on the same tokens keeps the detail range, the drill-down and
    the charts' selections, so two targets compare at one position; another prompt resets
    them."""
    app.slider(key="detail_range").set_value((2, 6)).run()
    app.selectbox(key="drill_pos").set_value(4).run()
    keys = chart_keys(app)
    submit(app, target=" capital", top_k=4)
    assert_usable(app)
    assert not app.error
    assert lens_result(app).target == " capital"
    assert app.session_state["detail_range"] == (2, 6) and app.session_state["drill_pos"] == 4
    assert detail_positions(app) == [2, 3, 4, 5, 6]
    assert chart_keys(app) == keys
    submit(app, prompt="The quick brown fox jumps over the lazy dog.", chat=False, target="")
    t = lens_result(app).n_positions
    assert app.session_state["drill_pos"] == t - 1
    assert chart_keys(app).isdisjoint(keys - {"drill_chart"})  # selections of old tokens gone


def test_moving_a_widget_clears_the_chart_selection(app: AppTest) -> None:
    """A chart's on_select fires only when its selection changes: after the Position box (or
    the slider) moved away from the clicked (brushed) cell, clicking it again must count, so
    the chart is remounted with no selection."""
    keys = chart_keys(app)
    assert {"overview_chart", "detail_chart"} <= keys
    app.selectbox(key="drill_pos").set_value(2).run()
    after_pick = chart_keys(app)
    assert "overview_chart" in after_pick and "detail_chart" not in after_pick
    assert any(k.startswith("detail_chart_") for k in after_pick)
    app.slider(key="detail_range").set_value((1, 5)).run()
    assert not any(k == "overview_chart" for k in chart_keys(app))
    assert detail_positions(app) == [1, 2, 3, 4, 5]


def test_same_example_twice(app: AppTest) -> None:
    """Picking the example that was picked last time runs it again."""
    app.selectbox(key="example").set_value("Counting (raw text)").run()
    submit(app, prompt="The quick brown fox", target="")
    assert lens_result(app).prompt == "The quick brown fox"
    app.selectbox(key="example").set_value("Counting (raw text)").run()
    assert_usable(app)
    assert lens_result(app).prompt.startswith("one, two, three")


def test_space_is_a_target(app: AppTest) -> None:
    """ " " is a token: only an empty field means no target."""
    submit(app, prompt="one two three", chat=False, target=" ")
    assert_usable(app)
    assert lens_result(app).target == " "


def test_user_text_is_never_rendered(app: AppTest) -> None:
    evil = "<script>alert(1)</script> **bold** [link](javascript:alert(1)) <img src=x onerror=alert(2)>"
    submit(app, prompt=evil, chat=True, target="")
    assert_usable(app)
    assert any(c.value == evil for c in app.code)  # shown verbatim as text
    for element in [*app.markdown, *app.caption, *app.error, *app.warning, *app.info]:
        assert not getattr(element.proto, "allow_html", False)
        assert "<script>" not in element.value
        assert "**bold**" not in element.value
    # a hostile model spec ends up escaped in the error message too
    submit(app, model_choice="other", model_path="/x/<b>bold</b>/**y**")
    assert_usable(app)
    assert app.error and "<b>" not in app.error[0].value and "**y**" not in app.error[0].value


def test_two_sessions_are_independent(tiny_default_model: Path) -> None:
    a = AppTest.from_file(APP, default_timeout=TIMEOUT)
    b = AppTest.from_file(APP, default_timeout=TIMEOUT)
    a.run()
    b.run()
    submit(a, prompt="What is the capital of Japan?", target="")
    b.run()
    assert lens_result(a).prompt == "What is the capital of Japan?"
    assert lens_result(b).prompt == "What is the capital of Australia?"
    assert not a.exception and not b.exception


# --- display ---------------------------------------------------------------------------------


def test_drilldown_table_shows_every_row_in_fitting_columns(app: AppTest, monkeypatch) -> None:
    """The drill-down table is as tall as its rows (no inner scroll that hid all but 9 rows)
    and every column has a fixed narrow width (the top-5 tokens and p1..p5 fit a 1600 px
    window; the browser test measures it)."""
    import streamlit as st

    from lenskit.ui.pages.lens import TABLE_PX

    shown: list[dict] = []
    original = st.dataframe

    def dataframe(data, *args, **kwargs):
        shown.append({"rows": len(data), **kwargs})
        return original(data, *args, **kwargs)

    monkeypatch.setattr(st, "dataframe", dataframe)
    app.run()
    (call,) = shown
    assert call["height"] == "content" and call["rows"] == lens_result(app).n_rows
    columns = json.loads(app.dataframe[0].proto.columns)
    widths = [c.get("width") for name, c in columns.items() if name != "_index"]
    assert all(isinstance(w, int) for w in widths), columns
    # top-5 table: layer, 5 tokens, 5 probabilities, p(target), rank, entropy, KL
    assert len(widths) == 15
    assert sum(widths) == TABLE_PX <= 1100


def test_system_prompt_is_shown_with_the_result(app: AppTest) -> None:
    system = "Answer in <b>one</b> **word**."
    submit(app, system=system, target="")
    assert_usable(app)
    assert not app.error, messages(app)
    assert lens_result(app).system == system
    assert any(c.value == system for c in app.code)  # verbatim, as text
    assert any(c.value == "System prompt:" for c in app.caption)
    for element in [*app.markdown, *app.caption]:
        assert "<b>one</b>" not in element.value and "**word**" not in element.value


def test_caption_of_a_two_block_model(app: AppTest, tmp_path: Path) -> None:
    """A 2-block model has one inner read-out row: "block 1", not "blocks 1-1"."""
    two = save_tiny(tmp_path / "two", n_blocks=2)
    submit(app, model_choice="other", model_path=str(two), target="")
    assert_usable(app)
    caption = next(c.value for c in app.caption if c.value.startswith("Model:"))
    assert "(emb, block 1, out)" in caption and "1\u20131" not in caption, caption
    assert lens_result(app).n_rows == 3


def test_errors_are_the_librarys_messages(app: AppTest) -> None:
    """The message shown is the library's exception message itself (escaped for markdown)."""
    from lenskit import LensRequest
    from lenskit.errors import InputError

    with pytest.raises(InputError) as refused:
        LensRequest("x", top_k=51)
    submit(app, top_k=51)
    assert [plain(e.value) for e in app.error] == [str(refused.value)]
    submit(app, top_k=5, model_choice="other", model_path="/no/such/model/dir")
    from lenskit import ModelLoadError, load_model

    with pytest.raises(ModelLoadError) as failed:
        load_model("/no/such/model/dir")
    assert [plain(e.value) for e in app.error] == [str(failed.value)]
