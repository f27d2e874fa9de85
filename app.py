"""lenskit Streamlit app: layout and widgets only.

The maths lives in :mod:`lenskit.lens` (``run_lens``), the charts in :mod:`lenskit.charts`
(shared with the CLI). Run with ``make app`` (``streamlit run app.py --server.port 8501``;
server settings in ``.streamlit/config.toml``).

State: the model is cached process-wide (``st.cache_resource``, one model at a time, on the
device :func:`app_device` names), lens results are cached as JSON text (``st.cache_data``,
keyed by model spec, device and inputs), and everything a user did lives in
``st.session_state`` only, so two browser sessions never see each other's results. User text is only ever shown through ``st.code`` / ``st.dataframe`` /
chart text marks or escaped markdown: never as HTML.

The second tab ("Generation & interventions") sweeps interventions over the blocks of the
last good lens run's model and prompt (:mod:`lenskit.interventions`), cached the same way.

Tabs: :data:`TABS` lists ``(title, function)`` pairs; add a view by appending one.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import streamlit as st
import torch

from lenskit import charts
from lenskit.interventions import (
    INTERVENTIONS,
    MAX_NEW_TOKENS,
    GenerationLengthError,
    SweepResult,
    intervention_sweep,
    layer_pairwise_kl,
    lens_on_generation,
)
from lenskit.lens import LensResult, run_lens
from lenskit.models import ModelLoadError, load_model
from lenskit.tokens import format_token

DEFAULT_PROMPT = "What is the capital of Australia?"
#: Top-k range of the sidebar form (checked by the app, see :func:`_range_error`).
MAX_TOP_K = 50
#: Largest noise seed (the sweep's generator takes 32-bit seeds).
MAX_SEED = 2**31 - 1
#: Prompts longer than this (characters) are shown in a scrolling box of PROMPT_BOX_PX
#: pixels, so a long prompt does not push the charts a page down.
LONG_PROMPT_CHARS = 400
PROMPT_BOX_PX = 120

#: Example prompts: label -> (prompt, chat, target).
EXAMPLES: dict[str, tuple[str, bool, str]] = {
    "Capital of Australia (chat)": (DEFAULT_PROMPT, True, " Canberra"),
    "Capital of France (chat)": ("What is the capital of France?", True, " Paris"),
    "Counting (raw text)": ("one, two, three, four, five,", False, " six"),
    "Eiffel Tower (raw text)": ("The Eiffel Tower is located in the city of", False, " Paris"),
    "Translation (chat)": ("Translate to French: cheese", True, " fromage"),
}

# Defaults of the sidebar form (session-state keys of its widgets).
FORM_DEFAULTS: dict[str, Any] = {
    "model_choice": "default",
    "model_path": "",
    "prompt": DEFAULT_PROMPT,
    "chat": True,
    "system": "",
    "top_k": 5,
    "target": " Canberra",
}


# --------------------------------------------------------------------------------------------
# Cached computation (shared across sessions; nothing mutable is shared besides the model)
# --------------------------------------------------------------------------------------------


def app_device() -> str:
    """The device the app runs models on: ``LENSKIT_DEVICE`` when set (cpu, cuda, cuda:N, mps,
    auto; see :func:`lenskit.load_model`), else the GPU when torch sees one, else the CPU."""
    device = os.environ.get("LENSKIT_DEVICE", "").strip()
    if device:
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def _load_key() -> tuple[str, str]:
    """Part of every cache key: what "default" means right now (LENSKIT_DEFAULT_MODEL may
    point elsewhere) and the device (:func:`app_device`)."""
    return os.environ.get("LENSKIT_DEFAULT_MODEL", "").strip(), app_device()


def _clamp01(x: float) -> float:
    return min(max(float(x), 0.0), 1.0)


def _bar_callback(bar: Any) -> Callable[[float, str], None]:
    """A ``progress(fraction, message)`` callback that updates the Streamlit progress bar."""
    return lambda f, m: bar.progress(_clamp01(f), text=_md_escape(str(m)))


@st.cache_resource(max_entries=1, show_spinner=False)
def get_model(spec: str, load_key: tuple[str, str] = ("", "cpu")) -> tuple[Any, Any]:
    """``load_model(spec)`` on the device ``load_key[1]``, cached process-wide, one model at a
    time. ``load_key`` (:func:`_load_key`) is part of the cache key: "default" names another
    model when ``LENSKIT_DEFAULT_MODEL`` changes.
    """
    # Elements made inside a cached function are replayed on cache hits, so the progress bar
    # is created (and removed) in here, never updated from outside.
    bar = st.progress(0.0, text="Loading the model\u2026")
    try:
        return load_model(spec, device=load_key[1], progress=_bar_callback(bar))
    finally:
        bar.empty()


@st.cache_data(max_entries=32, show_spinner=False)
def lens_json(
    spec: str,
    load_key: tuple[str, str],
    prompt: str,
    chat: bool,
    system: str | None,
    top_k: int,
    target: str | None,
) -> str:
    """Run the logit lens; the result is cached as JSON text (hashable and pickle-safe)."""
    model, tokenizer = get_model(spec, load_key)
    bar = st.progress(0.0, text="Reading out every layer\u2026")
    try:
        result = run_lens(
            model,
            tokenizer,
            prompt,
            chat=chat,
            system=system,
            top_k=top_k,
            target=target,
            progress=_bar_callback(bar),
        )
    finally:
        bar.empty()
    return result.to_json()


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$&:=\"'])")


def _md_escape(text: str) -> str:
    """Escape markdown (and the HTML that markdown would pass through) in user/engine text."""
    return _MD_SPECIAL.sub(r"\\\1", text)


def _show_prompt(text: str) -> None:
    """The prompt as plain text; a long one in a fixed-height box that scrolls."""
    long = len(text) > LONG_PROMPT_CHARS or text.count("\n") > 5
    st.code(text, language=None, wrap_lines=True, height=PROMPT_BOX_PX if long else "content")


@dataclass(frozen=True)
class LensRequest:
    spec: str
    prompt: str
    chat: bool
    system: str | None
    top_k: int
    target: str | None


def _say(level: str, text: str) -> None:
    """Queue a message for the lens tab (kept until the next run)."""
    st.session_state.setdefault("messages", []).append((level, text))


def _show_messages(key: str = "messages") -> None:
    """Show the (level, text) messages queued under ``st.session_state[key]``."""
    for level, text in st.session_state.get(key, []):
        {"error": st.error, "warning": st.warning, "info": st.info}[level](text)


def _result() -> LensResult | None:
    return st.session_state.get("lens_result")


def _chart_key(name: str) -> str:
    """The widget key of the chart ``name`` ("overview_chart", "detail_chart") this run."""
    generation = st.session_state.get(f"{name}_generation", 0)
    return name if generation == 0 else f"{name}_{generation}"


def _clear_selection(name: str) -> None:
    """Forget the chart's brush / click: a new key remounts it with no selection.

    A chart's on_select fires only when its selection changes, so after the slider or the
    Position box moved away from what was brushed / clicked, the same brush / click again
    would do nothing (QA).
    """
    key = f"{name}_generation"
    st.session_state[key] = st.session_state.get(key, 0) + 1


def _set_result(text: str) -> None:
    """Store a new lens result; reset what was chosen for the previous one if its tokens differ.

    Positions are indices into the prompt's tokens: for another token sequence the detail
    range, the drill-down and the layer x layer KL position go back to their defaults
    (writing a widget's state also sends its new label to the browser, which otherwise keeps
    showing the old token), and sweep messages about the old prompt go too. A run on the same
    tokens (another target or top-k) keeps them, so two targets compare at one position.
    """
    result = LensResult.from_json(text)
    ss = st.session_state
    old = ss.get("lens_result")
    ss["lens_json"] = text
    ss["lens_result"] = result
    if old is not None and (old.model_name, old.token_ids.tolist()) == (
        result.model_name,
        result.token_ids.tolist(),
    ):
        return
    ss["detail_range"] = charts.default_detail_range(result)
    ss["drill_pos"] = result.n_positions - 1
    ss["pair_pos"] = result.n_positions - 1
    ss["sweep_messages"] = []
    if old is not None:  # its charts' selections point at the old tokens
        _clear_selection("overview_chart")
        _clear_selection("detail_chart")


def _range_error(name: str, value: Any, lo: int, hi: int) -> str | None:
    """The message for a number input outside ``lo..hi`` (None when it is inside).

    The number inputs have no min/max of their own: Streamlit's browser side silently
    refuses an out-of-range value (a small red "!" on the field, and the button then runs
    nothing), so the app takes any number and says here what is allowed.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        return f"{name} must be a whole number between {lo} and {hi}."
    if not lo <= value <= hi:
        return f"{name} must be between {lo} and {hi}; got {value}."
    return None


def _position_label(result: LensResult, p: int) -> str:
    return f"{p}: {format_token(str(result.tokens[p]), 24, byte_level=result.byte_level)}"


def _position_select(
    result: LensResult,
    key: str,
    format_func: Callable[[int], str],
    on_change: Callable[[], None] | None = None,
) -> int:
    """A "Position" selectbox over the prompt, its state in ``key`` (the last position when
    the state does not fit this result)."""
    t = result.n_positions
    if st.session_state.get(key) not in range(t):
        st.session_state[key] = t - 1
    return st.selectbox(
        "Position",
        list(range(t)),
        key=key,
        format_func=format_func,
        persist_state="page",
        on_change=on_change,
    )


def _position_labeller(result: LensResult) -> Callable[[int], str]:
    """``_position_label`` with " (template)" after the chat template's positions."""
    template = {int(p) for p in result.template_positions}
    return lambda p: _position_label(result, p) + (" (template)" if p in template else "")


# --------------------------------------------------------------------------------------------
# Sidebar: the input form (typing does not rerun; the submit button does)
# --------------------------------------------------------------------------------------------


def _apply_example() -> None:
    choice = st.session_state.get("example")
    if choice in EXAMPLES:
        prompt, chat, target = EXAMPLES[choice]
        st.session_state.update(prompt=prompt, chat=chat, target=target, system="")
        st.session_state["run_requested"] = True
    # Back to the placeholder, so that picking the same example again fires again (QA).
    st.session_state["example"] = None


def sidebar() -> tuple[LensRequest, bool]:
    """The input form; returns the request and whether to run it now."""
    with st.sidebar:
        st.title("lenskit")
        st.caption("Logit lens: what every layer predicts at every position.")
        st.caption(
            f"Device: {_md_escape(app_device())} (set `LENSKIT_DEVICE` to choose: cpu, cuda, "
            "cuda:N, mps, auto)"
        )
        st.selectbox(
            "Example prompts",
            list(EXAMPLES),
            index=None,
            key="example",
            placeholder="Pick an example\u2026",
            on_change=_apply_example,
        )
        with st.form("lens_form"):
            st.radio(
                "Model",
                ["default", "other"],
                key="model_choice",
                format_func=lambda c: (
                    "Default (embedded SmolLM2-135M-Instruct)"
                    if c == "default"
                    else "Other: hub id, local dir or .gguf"
                ),
            )
            st.text_input(
                "Hub id, local directory or .gguf path",
                key="model_path",
                placeholder="HuggingFaceTB/SmolLM2-135M-Instruct",
                help="Used when Model is 'Other'. Nothing is downloaded unless the hub is reachable.",
            )
            st.text_area("Prompt", key="prompt", height=110)
            st.checkbox("Wrap in the chat template", key="chat")
            st.text_input(
                "System prompt (optional)",
                key="system",
                help="Chat template only. Empty: the template's default.",
            )
            # No min/max: out-of-range values reach run_request, which says what is allowed.
            st.number_input(
                f"Top-k tokens per cell (1\u2013{MAX_TOP_K})",
                step=1,
                key="top_k",
                help=f"How many top tokens each cell keeps (hover, drill-down): 1..{MAX_TOP_K}.",
            )
            st.text_input(
                "Target token (optional)",
                key="target",
                help="One token, e.g. ' Canberra' vs ' Sydney' (mind the leading space).",
            )
            submitted = st.form_submit_button("Run logit lens", type="primary", width="stretch")
    ss = st.session_state
    custom = ss["model_choice"] == "other"
    request = LensRequest(
        spec=(ss["model_path"].strip() if custom else "default"),
        prompt=ss["prompt"],
        chat=bool(ss["chat"]),
        system=ss["system"] if ss["system"].strip() else None,
        top_k=int(ss["top_k"]),
        # " " is a token too: only an empty field means no target.
        target=ss["target"] if ss["target"] != "" else None,
    )
    run_now = submitted or ss.pop("run_requested", False)
    return request, bool(run_now)


def run_request(request: LensRequest) -> None:
    """Validate, load the model, run the lens; on failure keep the last good result."""
    st.session_state["messages"] = []
    top_k_error = _range_error("Top-k", request.top_k, 1, MAX_TOP_K)
    if top_k_error:
        _say("error", top_k_error)
        return
    if not request.prompt.strip():
        _say("error", "The prompt is empty (or only whitespace): type some text and run again.")
        return
    if not request.spec:
        _say("error", "Model is 'Other' but no hub id, directory or .gguf path was given.")
        return
    system = request.system
    if system is not None and not request.chat:
        _say("warning", "The system prompt is ignored without the chat template.")
        system = None
    # The status box shows progress while running and is removed afterwards; outcomes are
    # reported through the message list, which outlives this run.
    placeholder = st.empty()
    try:
        # Expanded: the progress bars inside are the only sign of life in a long run.
        with placeholder.status(
            f"Loading model {_md_escape(request.spec)}\u2026", expanded=True
        ) as status:
            text = _compute(request, system, status)
    finally:
        placeholder.empty()
    if text is not None:
        _set_result(text)
        # The generation tab works on the last good lens run's model and prompt.
        st.session_state["lens_request"] = replace(request, system=system)


def _compute(request: LensRequest, system: str | None, status: Any) -> str | None:
    """Load the model and run the lens; errors become messages and None."""
    spec_shown = _md_escape(request.spec)
    try:
        get_model(request.spec, _load_key())
    except ModelLoadError as exc:
        _say("error", f"Could not load model {spec_shown}: {_md_escape(str(exc))}")
        return None
    except Exception as exc:  # noqa: BLE001 - anything else a loader can raise
        _say(
            "error",
            f"Could not load model {spec_shown}: {type(exc).__name__}: {_md_escape(str(exc))}",
        )
        return None
    # expanded=True again: update() without it collapses the box (Streamlit 1.67 clears the
    # flag), which hid the progress bars of a long read-out behind a spinner.
    status.update(label="Reading out every layer\u2026", expanded=True)
    try:
        return lens_json(
            request.spec,
            _load_key(),
            request.prompt,
            request.chat,
            system,
            request.top_k,
            request.target,
        )
    except ValueError as exc:  # PromptError and TargetError are ValueErrors
        _say("error", _md_escape(str(exc)))
    except Exception as exc:  # noqa: BLE001 - keep the app usable whatever happens
        _say("error", f"The read-out failed: {type(exc).__name__}: {_md_escape(str(exc))}")
    return None


# --------------------------------------------------------------------------------------------
# The logit-lens tab
# --------------------------------------------------------------------------------------------


def _on_brush() -> None:
    """Brushing the overview sets the detail range (the slider's state)."""
    event = st.session_state.get(_chart_key("overview_chart")) or {}
    positions = charts.selected_positions(event.get("selection", {}).get("brush", {}))
    if positions:
        st.session_state["detail_range"] = (positions[0], positions[-1])


def _on_pick() -> None:
    """Clicking a cell in the detail view selects its position for the drill-down."""
    event = st.session_state.get(_chart_key("detail_chart")) or {}
    positions = charts.selected_positions(event.get("selection", {}).get("pick", []))
    if positions:
        st.session_state["drill_pos"] = positions[0]


def _download_row(label: str, chart: Any, stem: str) -> None:
    cols = st.columns(3)
    for col, fmt, mime in zip(
        cols, ("png", "svg", "html"), ("image/png", "image/svg+xml", "text/html"), strict=True
    ):
        col.download_button(
            f"{label} .{fmt}",
            data=lambda fmt=fmt: charts.chart_bytes(chart, fmt),  # rendered on click only
            file_name=f"{stem}.{fmt}",
            mime=mime,
            on_click="ignore",
            key=f"dl_{stem}_{fmt}",
            width="stretch",
        )


def _data_downloads(
    result: LensResult | SweepResult, label: str, json_text: str, *, stem: str, key: str
) -> None:
    """ "<label> as CSV" and "<label> as JSON" buttons side by side (``stem``.csv/.json)."""
    col_csv, col_json = st.columns(2)
    col_csv.download_button(
        f"{label} as CSV",
        data=lambda: result.to_frame().to_csv(index=False),  # built on click only
        file_name=f"{stem}.csv",
        mime="text/csv",
        on_click="ignore",
        key=f"{key}_csv",
        width="stretch",
    )
    col_json.download_button(
        f"{label} as JSON",
        data=json_text,
        file_name=f"{stem}.json",
        mime="application/json",
        on_click="ignore",
        key=f"{key}_json",
        width="stretch",
    )


def lens_tab() -> None:
    """Overview heatmap with a brush, labelled detail view, per-position drill-down, export."""
    _show_messages()
    result = _result()
    if result is None:
        st.info("Type a prompt in the sidebar and press **Run logit lens**.")
        return
    if any(level == "error" for level, _ in st.session_state.get("messages", [])):
        st.caption("Showing the last good result.")

    chat = "chat template" if result.chat else "raw text"
    st.caption(
        f"Model: {_md_escape(result.model_name or '?')} \u00b7 {result.n_positions} "
        f"token{'s' if result.n_positions != 1 else ''} "
        f"({chat}) \u00b7 {result.n_rows} read-outs (emb, blocks 1\u2013{result.n_rows - 2}, "
        f"out) \u00b7 V = {result.vocab_size}"
    )
    _show_prompt(result.prompt)

    keys = list(charts.METRICS)
    metric = st.radio(
        "Colour by",
        keys,
        key="metric",
        horizontal=True,
        persist_state="page",
        format_func=lambda k: charts.METRICS[k].label,
    )
    if charts.METRICS[metric].needs_target and result.target_prob is None:
        st.warning(
            "Target probability needs a target token: set one in the sidebar and run again. "
            "Showing entropy."
        )
        metric = "entropy"

    # Detail range: the slider's state, also set by brushing the overview.
    t = result.n_positions
    lo, hi = st.session_state.get("detail_range", charts.default_detail_range(result))
    lo, hi = max(0, min(int(lo), t - 1)), max(0, min(int(hi), t - 1))
    if lo > hi:
        lo, hi = hi, lo
    st.session_state["detail_range"] = (lo, hi)
    shown_hi = min(hi, lo + charts.DETAIL_MAX_POSITIONS - 1)

    st.subheader("Overview")
    overview = charts.lens_heatmap(
        result, metric, labels=False, brush=True, highlight=(lo, shown_hi)
    )
    st.altair_chart(
        overview,
        key=_chart_key("overview_chart"),
        on_select=_on_brush,
        selection_mode="brush",
        theme=None,
        width="stretch",
    )
    if t > 1:
        st.slider(
            "Positions in the detail view (or drag across the overview)",
            min_value=0,
            max_value=t - 1,
            key="detail_range",
            persist_state="page",
            on_change=_clear_selection,
            args=("overview_chart",),
        )
    if hi > shown_hi:
        st.info(
            f"The detail view shows at most {charts.DETAIL_MAX_POSITIONS} positions: showing "
            f"{lo}\u2013{shown_hi} of the selected {lo}\u2013{hi}. Narrow the selection to see "
            "the rest."
        )

    st.subheader("Detail")
    st.caption(
        "Each cell: the layer's top-1 token (\u2423 = space, \u21b5 = newline, \u21e5 = tab, "
        "\u237d = other space, `<F0 9F>` = bytes of a token that holds only part of a character); hover for "
        "the top-k. Template (\u201cdummy\u201d) tokens are boxed in purple. Click a cell to "
        "drill down; the drilled-down position is outlined in black."
    )
    detail = charts.lens_heatmap(
        result,
        metric,
        positions=range(lo, shown_hi + 1),
        click=True,
        marked=st.session_state.get("drill_pos"),
    )
    st.altair_chart(
        detail,
        key=_chart_key("detail_chart"),
        on_select=_on_pick,
        selection_mode="pick",
        theme=None,
        width="content",
    )

    st.subheader("Drill-down")
    pos = _position_select(
        result,
        "drill_pos",
        lambda p: _position_label(result, p),
        on_change=lambda: _clear_selection("detail_chart"),
    )
    table_col, chart_col = st.columns([5, 6])
    with table_col:
        table = charts.position_table(result, pos)
        # Probabilities (p(target), p1..pk) with 3 significant digits: 6.2e-6 is not 0.000.
        fmt = {
            c: st.column_config.NumberColumn(
                format=charts.PROB_PRINTF if c.startswith("p") else "%.3f"
            )
            for c in table.columns
            if table[c].dtype.kind == "f"
        }
        st.dataframe(table, hide_index=True, column_config=fmt, height=360)
    with chart_col:
        drill = charts.position_drilldown_chart(result, pos)
        # Stacked panels, each as wide as this column (Streamlit sizes a vconcat's panels).
        st.altair_chart(drill, theme=None, width="stretch", key="drill_chart")
        if result.target_prob is None:
            st.caption("Set a target token to plot its probability and rank across layers.")

    with st.expander("Export"):
        _data_downloads(result, "Grid", st.session_state["lens_json"], stem="lens", key="dl")
        st.caption("Charts (PNG/SVG rendered offline; HTML is standalone, no network needed):")
        _download_row("Overview", overview, "lens_overview")
        _download_row("Detail", detail, "lens_detail")
        _download_row("Drill-down", drill, "lens_drilldown")


# --------------------------------------------------------------------------------------------
# The generation & interventions tab
# --------------------------------------------------------------------------------------------

#: Intervention -> one-line help (radio captions); the definitions are intervention_sweep's.
INTERVENTION_HELP: dict[str, str] = {
    "skip": "Remove the block's update at the chosen positions (its output = its input).",
    "mean": "Replace the block's output there by its mean over the other prompt positions.",
    "noise": "Add Gaussian noise as large as the residual itself (seeded).",
}
POSITION_MODES: dict[str, str] = {
    "template": "Template tokens",
    "all-prompt": "All prompt tokens",
    "explicit": "Pick positions",
}
GEN_METRICS = ("entropy", "kl_to_final", "top1_prob")


@st.cache_data(max_entries=16, show_spinner=False)
def sweep_json(
    spec: str,
    load_key: tuple[str, str],
    prompt: str,
    chat: bool,
    system: str | None,
    max_new_tokens: int,
    layers: tuple[int, ...],
    positions: str | tuple[int, ...],
    intervention: str,
    seed: int,
) -> str:
    """Run the intervention sweep; the result is cached as JSON text."""
    model, tokenizer = get_model(spec, load_key)
    bar = st.progress(0.0, text=f"Generating, then sweeping {len(layers)} blocks\u2026")
    try:
        result = intervention_sweep(
            model,
            tokenizer,
            prompt,
            chat=chat,
            system=system,
            max_new_tokens=max_new_tokens,
            layers=list(layers),
            positions=positions if isinstance(positions, str) else list(positions),
            intervention=intervention,
            seed=seed,
            progress=_bar_callback(bar),
        )
    finally:
        bar.empty()
    return result.to_json()


@st.cache_data(max_entries=16, show_spinner=False)
def generation_lens_json(
    spec: str,
    load_key: tuple[str, str],
    prompt: str,
    chat: bool,
    system: str | None,
    generated_ids: tuple[int, ...],
    top_k: int,
) -> tuple[str, int]:
    """Logit lens over prompt + the sweep's greedy continuation (not generated again):
    (LensResult JSON, number of prompt tokens)."""
    model, tokenizer = get_model(spec, load_key)
    result, n_prompt = lens_on_generation(
        model,
        tokenizer,
        prompt,
        chat=chat,
        system=system,
        generated_ids=list(generated_ids),
        top_k=top_k,
    )
    return result.to_json(), n_prompt


@st.cache_data(max_entries=32, show_spinner=False)
def pairwise_kl_data(
    spec: str,
    load_key: tuple[str, str],
    prompt: str,
    chat: bool,
    system: str | None,
    position: int,
) -> tuple[list[str], list[list[float]]]:
    """KL between every pair of read-out rows at one prompt position (names, [R][R] nats)."""
    model, tokenizer = get_model(spec, load_key)
    names, kl = layer_pairwise_kl(model, tokenizer, prompt, position, chat=chat, system=system)
    return list(names), kl.tolist()


@dataclass(frozen=True)
class SweepRequest:
    """Everything a sweep depends on (its cache key, and what the result was computed for)."""

    spec: str
    prompt: str
    chat: bool
    system: str | None
    top_k: int
    max_new_tokens: int
    layers: tuple[int, ...]
    positions: str | tuple[int, ...]
    intervention: str
    seed: int


def _sweep_say(level: str, text: str) -> None:
    st.session_state.setdefault("sweep_messages", []).append((level, text))


def _set_layers(layers: list[int]) -> None:
    """Quick-pick buttons: fill the (form's) layer multiselect."""
    st.session_state["sweep_layers"] = list(layers)


def _sync_sweep_inputs(lens: LensResult) -> None:
    """Defaults, and inputs that no longer fit the current model/prompt, before the widgets.

    A new model (another number of blocks) resets the layer selection to all blocks; a new
    prompt clears explicitly picked positions (their indices meant other tokens).
    """
    ss = st.session_state
    n_blocks = lens.n_rows - 1
    ss.setdefault("sweep_max_new", 5)
    ss.setdefault("sweep_pos_mode", "template")
    ss.setdefault("sweep_positions", [])
    ss.setdefault("sweep_intervention", "skip")
    ss.setdefault("sweep_seed", 0)
    if ss.get("sweep_n_blocks") != n_blocks:
        ss["sweep_n_blocks"] = n_blocks
        ss["sweep_layers"] = list(range(n_blocks))
    prompt_key = tuple(int(i) for i in lens.token_ids)
    if ss.get("sweep_prompt_key") != prompt_key:
        if ss.get("sweep_prompt_key") is not None and ss["sweep_positions"]:
            st.info("The prompt changed: the picked positions were cleared.")
        ss["sweep_prompt_key"] = prompt_key
        ss["sweep_positions"] = []


def _sweep_form(lens: LensResult) -> bool:
    """The sweep's inputs (a form: typing does not rerun); returns whether it was submitted."""
    n_blocks = lens.n_rows - 1
    band = charts.band_layers(n_blocks)
    band_text = _compact_ranges(band)
    cols = st.columns([1, 2, 1])
    cols[0].button(
        "All blocks",
        key="sweep_pick_all",
        on_click=_set_layers,
        args=(list(range(n_blocks)),),
        width="stretch",
    )
    cols[1].button(
        f"Quick pick: {band_text}",
        key="sweep_pick_band",
        on_click=_set_layers,
        args=(band,),
        help="First block, the middle band floor(L/2)..floor(0.7 L) and block floor(0.9 L) "
        f"(L = {n_blocks} blocks here): the seed figure's 0, 15\u201321, 27 for a 30-block "
        "model.",
        width="stretch",
    )
    cols[2].button(
        "Clear", key="sweep_pick_none", on_click=_set_layers, args=([],), width="stretch"
    )
    with st.form("sweep_form"):
        st.multiselect(
            "Blocks to intervene on (rows)",
            list(range(n_blocks)),
            key="sweep_layers",
            persist_state="page",
            help=f"0-based decoder blocks 0..{n_blocks - 1}; one sweep row each. Block l's "
            "output is row l + 1 of the logit-lens tab (emb is row 0), so intervening at "
            "block l changes rows l + 1 .. out there.",
        )
        left, middle, right = st.columns([2, 3, 3])
        with left:
            # No min/max (see _range_error): _sweep_request says what is allowed.
            st.number_input(
                f"Tokens to generate (columns, 1\u2013{MAX_NEW_TOKENS})",
                step=1,
                key="sweep_max_new",
                persist_state="page",
                help=f"Greedy; 1..{MAX_NEW_TOKENS}. Stops early at an end-of-sequence token.",
            )
            st.number_input(
                "Noise seed (0 or more)",
                step=1,
                key="sweep_seed",
                persist_state="page",
                help=f"Only used by 'noise': the same seed gives the same result. 0..{MAX_SEED}.",
            )
        with middle:
            st.radio(
                "Intervention",
                list(INTERVENTIONS),
                key="sweep_intervention",
                persist_state="page",
                captions=[INTERVENTION_HELP[i] for i in INTERVENTIONS],
            )
        with right:
            st.radio(
                "Intervened prompt positions",
                list(POSITION_MODES),
                key="sweep_pos_mode",
                persist_state="page",
                format_func=POSITION_MODES.__getitem__,
                help="Template: the tokens the chat template adds between the question and "
                "the answer. Generated tokens are never intervened on.",
            )
            st.multiselect(
                "Picked positions (with 'Pick positions')",
                list(range(lens.n_positions)),
                key="sweep_positions",
                persist_state="page",
                format_func=_position_labeller(lens),
            )
        return st.form_submit_button("Run sweep", type="primary", key="sweep_submit")


def _compact_ranges(values: list[int]) -> str:
    """[0, 15, 16, 17, 27] -> "0, 15\u201317, 27"."""
    runs: list[list[int]] = []
    for v in values:
        if runs and v == runs[-1][1] + 1:
            runs[-1][1] = v
        else:
            runs.append([v, v])
    return ", ".join(str(a) if a == b else f"{a}\u2013{b}" for a, b in runs) or "none"


def _sweep_request(lens: LensResult, lens_request: LensRequest) -> SweepRequest | None:
    """The sweep to run from the form's state, or None (with a message) when it is invalid."""
    ss = st.session_state
    max_new = ss.get("sweep_max_new")
    seed = ss.get("sweep_seed", 0)
    errors = [
        _range_error("Tokens to generate", max_new, 1, MAX_NEW_TOKENS),
        _range_error("Noise seed", seed, 0, MAX_SEED),
    ]
    if any(errors):
        for error in filter(None, errors):
            _sweep_say("error", error)
        return None
    layers = tuple(sorted({int(b) for b in ss.get("sweep_layers") or []}))
    if not layers:
        _sweep_say("error", "No blocks selected: pick at least one block (or press All blocks).")
        return None
    mode = ss.get("sweep_pos_mode", "template")
    positions: str | tuple[int, ...]
    if mode == "explicit":
        positions = tuple(sorted({int(p) for p in ss.get("sweep_positions") or []}))
        if not positions:
            _sweep_say(
                "error",
                "No positions picked: pick prompt positions, or choose Template tokens or "
                "All prompt tokens.",
            )
            return None
        bad = [p for p in positions if not 0 <= p < lens.n_positions]
        if bad:
            _sweep_say(
                "error",
                f"Positions {bad} are outside the prompt (0..{lens.n_positions - 1}).",
            )
            return None
    elif mode == "template" and lens.template_positions.size == 0:
        _sweep_say(
            "error",
            "This prompt has no template tokens (it is raw text): wrap it in the chat "
            "template, or intervene on all prompt tokens or picked positions.",
        )
        return None
    else:
        positions = mode
        if ss.get("sweep_positions"):
            _sweep_say(
                "info",
                f"The picked positions are not used: this sweep intervenes on "
                f"{POSITION_MODES[mode].lower()}. Choose Pick positions to use them.",
            )
    return SweepRequest(
        spec=lens_request.spec,
        prompt=lens_request.prompt,
        chat=lens_request.chat,
        system=lens_request.system,
        top_k=lens_request.top_k,
        max_new_tokens=max_new,
        layers=layers,
        positions=positions,
        intervention=str(ss.get("sweep_intervention", "skip")),
        seed=int(seed),
    )


def run_sweep(request: SweepRequest) -> None:
    """Run the sweep and the lens on the generated tokens; errors keep the last good sweep."""
    key = _load_key()
    try:
        get_model(request.spec, key)
        text = sweep_json(
            request.spec,
            key,
            request.prompt,
            request.chat,
            request.system,
            request.max_new_tokens,
            request.layers,
            request.positions,
            request.intervention,
            request.seed,
        )
        sweep = SweepResult.from_json(text)
        gen_text: str | None = None
        n_prompt = sweep.n_prompt
        with st.spinner("Logit lens on the generated tokens\u2026"):
            try:
                gen_text, n_prompt = generation_lens_json(
                    request.spec,
                    key,
                    request.prompt,
                    request.chat,
                    request.system,
                    tuple(int(i) for i in sweep.generated_ids),
                    request.top_k,
                )
            except GenerationLengthError as exc:
                # At the context's edge the sweep fits (it never reads its last token) and
                # this lens, which reads it, does not: keep the sweep.
                _sweep_say("warning", f"No logit lens on the generated tokens: {exc}")
    except ModelLoadError as exc:
        _sweep_say("error", f"Could not load the model: {_md_escape(str(exc))}")
        return
    except ValueError as exc:  # InterventionError, PromptError: bad input, said plainly
        _sweep_say("error", _md_escape(str(exc)))
        return
    except Exception as exc:  # noqa: BLE001 - keep the app usable whatever happens
        _sweep_say("error", f"The sweep failed: {type(exc).__name__}: {_md_escape(str(exc))}")
        return
    ss = st.session_state
    ss["sweep_json"] = text
    ss["sweep_result"] = sweep
    ss["sweep_request"] = request
    ss["gen_lens_result"] = None if gen_text is None else LensResult.from_json(gen_text)
    ss["gen_n_prompt"] = int(n_prompt)


def _sweep_view(result: SweepResult, request: SweepRequest, lens_request: LensRequest) -> None:
    stale = (request.spec, request.prompt, request.chat, request.system) != (
        lens_request.spec,
        lens_request.prompt,
        lens_request.chat,
        lens_request.system,
    )
    if stale:
        st.caption(
            "This sweep was computed for an earlier prompt or model (below); press "
            "**Run sweep** to sweep the current one."
        )
        _show_prompt(request.prompt)
    # Formatted as one string: a character split over two tokens reads whole.
    answer = format_token(
        "".join(str(t) for t in result.generated_tokens), max_len=0, byte_level=result.byte_level
    )
    st.caption(f"Greedy answer ({result.n_generated} tokens, \u2423 = space, \u21b5 = newline):")
    st.code(answer, language=None, wrap_lines=True)

    st.subheader("KL(clean \u2016 intervened) per generated token")
    st.caption(
        f"Row l: block l intervened ({_md_escape(result.intervention)}) at the chosen prompt "
        "positions; column Gen j: the distribution that produced the j-th answer token. "
        "Colour on a fixed scale (values beyond it clamped to the darkest red; hover for exact "
        "values). Cell text: the new top-1 token where the intervention changed it."
    )
    scale = st.radio(
        "Colour scale",
        ["linear", "log"],
        key="sweep_scale",
        horizontal=True,
        persist_state="page",
        format_func=lambda k: (
            f"linear, 0\u2013{charts.SWEEP_KL_MAX:g} nats"
            if k == "linear"
            else "log, {:g}\u2013{:g} nats".format(*charts.SWEEP_LOG_DOMAIN)
        ),
        help="Both fixed (comparable across sweeps) and clamped. Linear shows large effects "
        "like the seed figure; log also separates the small ones.",
    )
    sweep_chart = charts.sweep_heatmap(result, scale=scale)
    st.altair_chart(sweep_chart, theme=None, width="content", key="sweep_chart")

    st.subheader("Logit lens on the generated tokens")
    gen = st.session_state.get("gen_lens_result")
    gen_chart = None
    if gen is not None:
        metric = st.radio(
            "Colour by",
            list(GEN_METRICS),
            key="gen_metric",
            persist_state="page",
            horizontal=True,
            format_func=lambda k: charts.METRICS[k].label,
        )
        gen_chart = charts.generation_lens_heatmap(gen, st.session_state["gen_n_prompt"], metric)
        st.altair_chart(gen_chart, theme=None, width="content", key="gen_lens_chart")

    with st.expander("Export the sweep"):
        _data_downloads(
            result, "Sweep", st.session_state["sweep_json"], stem="sweep", key="dl_sweep"
        )
        st.caption("Charts (PNG/SVG rendered offline; HTML is standalone):")
        _download_row("Sweep", sweep_chart, "sweep_kl")
        if gen_chart is not None:
            _download_row("Lens on generation", gen_chart, "generation_lens")


def _pairwise_view(lens: LensResult, lens_request: LensRequest) -> None:
    st.subheader("Layer \u00d7 layer KL at one position")
    st.caption(
        "KL(p_i \u2016 p_j) between the logit-lens distributions of every pair of read-outs "
        "(emb, blocks, out) at one prompt position; row out is the lens view's "
        "KL(out \u2016 layer). Fixed 0\u2013ln V colour scale, as in the lens view."
    )
    pos = _position_select(lens, "pair_pos", _position_labeller(lens))
    try:
        names, kl = pairwise_kl_data(
            lens_request.spec,
            _load_key(),
            lens_request.prompt,
            lens_request.chat,
            lens_request.system,
            int(pos),
        )
    except Exception as exc:  # noqa: BLE001 - a message, never a traceback
        st.error(f"Layer \u00d7 layer KL failed: {type(exc).__name__}: {_md_escape(str(exc))}")
        return
    chart = charts.layer_pairwise_heatmap(
        names,
        kl,
        vocab_size=lens.vocab_size,
        subtitle=f"position {pos} ({format_token(str(lens.tokens[pos]), 20, byte_level=lens.byte_level)}) \u00b7 "
        f"{lens.model_name or 'model'}",
    )
    st.altair_chart(chart, theme=None, width="content", key="pair_chart")
    with st.expander("Export the layer \u00d7 layer KL"):
        _download_row("Layer KL", chart, "layer_kl")


def sweep_tab() -> None:
    """Intervention sweep (KL heatmap), lens on the generated tokens, layer x layer KL."""
    _show_messages()  # the sidebar's (lens run's) messages: it may be pressed from this tab
    lens = _result()
    lens_request = st.session_state.get("lens_request")
    if lens is None or lens_request is None:
        st.info("Run the logit lens first (sidebar): this tab uses the same model and prompt.")
        return
    st.caption(
        f"Which blocks, at which prompt positions, does the answer depend on? Model "
        f"{_md_escape(lens.model_name or '?')} \u00b7 {lens.n_rows - 1} blocks \u00b7 "
        f"prompt of the logit-lens tab ({lens.n_positions} tokens, "
        f"{'chat template' if lens.chat else 'raw text'}); change it in the sidebar."
    )
    _sync_sweep_inputs(lens)
    submitted = _sweep_form(lens)
    if submitted:
        st.session_state["sweep_messages"] = []
        request = _sweep_request(lens, lens_request)
        if request is not None:
            run_sweep(request)
    _show_messages("sweep_messages")

    result: SweepResult | None = st.session_state.get("sweep_result")
    failed = any(level == "error" for level, _ in st.session_state.get("sweep_messages", []))
    if result is None:
        if not failed:  # after an error, the error says what to do
            st.info("Choose blocks and positions, then press **Run sweep**.")
    else:
        if failed:
            st.caption("Showing the last good sweep.")
        _sweep_view(result, st.session_state["sweep_request"], lens_request)
    _pairwise_view(lens, lens_request)


#: The app's tabs: (title, function drawing it). Add a tab by appending to this list.
TABS: list[tuple[str, Callable[[], None]]] = [
    ("Logit lens", lens_tab),
    ("Generation & interventions", sweep_tab),
]


def main() -> None:
    st.set_page_config(
        page_title="lenskit \u00b7 logit lens", page_icon="\U0001f50e", layout="wide"
    )
    for key, value in FORM_DEFAULTS.items():
        st.session_state.setdefault(key, value)
    request, run_now = sidebar()
    # First open: run the example prompt so a heatmap is on screen without typing anything.
    if not st.session_state.get("started"):
        st.session_state["started"] = True
        run_now = True
    if run_now:
        run_request(request)
    # Only the open tab runs (switching tabs reruns the app): the sweep tab's model calls do
    # not slow the lens view down. Tab widgets keep their values while hidden (persist_state).
    tabs = st.tabs([title for title, _ in TABS], key="active_tab", on_change="rerun")
    for tab, (_, draw) in zip(tabs, TABS, strict=True):
        if tab.open:
            with tab:
                draw()


main()
