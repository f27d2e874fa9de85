"""The "Dataset" page: the lens at the chat-template tokens over a prompt set (the dataset mode,
docs/architecture.md).

The prompts (lenskit's own set or an uploaded .jsonl / .csv / .txt file) are read here, the
model of the sidebar is loaded here, then the run goes on in a background thread
(:mod:`lenskit.ui.jobs`) while a fragment polls its progress, so the page stays responsive and
the user may switch pages and come back. Every option's label, range, default and help comes
from its :class:`~lenskit.requests.IntOption`; the :class:`~lenskit.requests.DatasetRequest`
checks them. Statistics, intervals and charts come from :class:`~lenskit.dataset.DatasetResult`
and :mod:`lenskit.charts`. Clicking a heatmap cell lists the prompts with their top-1 token
there; one of them can be opened in the logit-lens page.
"""

from __future__ import annotations

import io
from typing import Any

import altair as alt
import pandas as pd
import streamlit as st

from lenskit import charts, requests
from lenskit.dataset import BUNDLED, FORMATS, HIT_KS, RATE_STATS, DatasetResult, PromptSet
from lenskit.errors import LenskitError, TargetError
from lenskit.requests import DatasetRequest, IntOption
from lenskit.text import byte_level_vocabulary, format_token, target_token_id, vocab_strings
from lenskit.ui import cached, jobs, lens_panel, lenses
from lenskit.ui.downloads import chart_downloads
from lenskit.ui.lens_panel import run_model
from lenskit.ui.pages import PAGES
from lenskit.ui.state import DatasetSpec, DatasetState, Keys, Message, ModelRef, app_state
from lenskit.ui.text import error_message, has_error, md_escape, show_messages
from lenskit.ui.widgets import chart_key, clear_selection

__all__ = ["lens_target", "render"]

#: The run's integer options, by widget key (the request's field is the option's name).
OPTIONS: dict[str, IntOption] = {
    Keys.DS_USER_TOKENS: requests.USER_TOKENS,
    Keys.DS_MAX_NEW: requests.DATASET_NEW_TOKENS,
    Keys.DS_TOP_K: requests.DATASET_TOP_K,
    Keys.DS_BATCH: requests.DATASET_BATCH_SIZE,
    Keys.DS_SEED: requests.DATASET_SEED,
}
SOURCES = {"bundled": "lenskit's own questions", "upload": "a file (.jsonl, .csv, .txt)"}
#: Seconds between two looks at a background run's progress.
POLL_SECONDS = 1.0
HEATMAP = "dataset_chart"
#: The heatmap's point selection (a clicked cell: its layer and column).
CELL = "cell"
ALL = "all prompts"
LENS_PAGE = next(p.path for p in PAGES if p.file == "lens.py")


# --- the prompts and the options -------------------------------------------------------------


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _describe(prompts: PromptSet) -> str:
    cats = prompts.categories
    listed = ", ".join(f"{md_escape(c)} {n}" for c, n in cats.items())
    in_cats = f" in {_count(len(cats), 'category', 'categories')} ({listed})" if cats else ""
    answers = sum(item.answer is not None for item in prompts)
    return f"{len(prompts)} prompts{in_cats}; {answers} with a gold answer."


def _show_skipped(prompts: PromptSet) -> None:
    if prompts.skipped:
        rows = [{"line": s.line, "reason": s.reason, "text": s.text} for s in prompts.skipped]
        with st.expander(f"{_count(len(rows), 'invalid line', 'invalid lines')} skipped"):
            st.dataframe(pd.DataFrame(rows), hide_index=True)


def _source() -> tuple[str, bytes | None, bool]:
    """The prompt source (``"bundled"`` or the upload's name), the upload's bytes and whether
    to skip invalid lines; shows what the set holds, or the library's message about it."""
    choice = st.radio(
        "Prompts", list(SOURCES), key=Keys.DS_SOURCE, horizontal=True, format_func=SOURCES.get,
        persist_state="session",
    )  # fmt: skip
    name, data, skip = BUNDLED, None, False
    if choice == "upload":
        upload = st.file_uploader(
            "Prompt file",
            type=[f.lstrip(".") for f in FORMATS],
            key=Keys.DS_FILE,
            help="JSON lines with a 'prompt' (and optional 'system', 'answer' (one word), "
            "'category'); CSV with a header naming the same columns; or text, one prompt a line.",
        )
        skip = st.checkbox(
            "Skip invalid lines (instead of stopping at the first)",
            key=Keys.DS_SKIP_INVALID,
            persist_state="session",
        )
        if upload is None:
            st.info("Upload a prompt file, or choose lenskit's own questions.")
            return choice, None, skip
        name, data = upload.name, upload.getvalue()
    try:
        prompts = cached.prompt_set(name, data, skip)
    except LenskitError as exc:
        st.error(md_escape(str(exc)))
    else:
        st.caption(_describe(prompts))
        _show_skipped(prompts)
    return name, data, skip


def _number(key: str, option: IntOption) -> None:
    st.session_state.setdefault(key, option.default)
    bounds = f"{option.lo}\u2013{option.hi}" if option.hi is not None else f"\u2265 {option.lo}"
    # No min/max: the browser silently refuses a value outside them; the request says what
    # is allowed instead.
    st.number_input(
        f"{option.label} ({bounds})", step=1, key=key, persist_state="session",
        help=f"{option.help}: {option.describe()}.",
    )  # fmt: skip


def _form(running: bool) -> bool:
    """The run's options; returns whether the form was submitted."""
    with st.form("dataset_form"):
        cols = st.columns(len(OPTIONS) + 1)
        cols[0].number_input(
            "First N prompts", value=None, step=1, key=Keys.DS_LIMIT, placeholder="all",
            persist_state="session",
            help="Run only the first N prompts of the set (e.g. 20 to try it quickly); "
            "empty: all of them.",
        )  # fmt: skip
        for col, (key, option) in zip(cols[1:], OPTIONS.items(), strict=True):
            with col:
                _number(key, option)
        st.session_state.setdefault(Keys.DS_SWEEP, False)
        st.checkbox(
            "Causal check: skip each block at the template positions",
            key=Keys.DS_SWEEP,
            persist_state="session",
            help="Per prompt and block: KL of the reply's next-token distributions when the "
            "block adds nothing at the template tokens, and whether the answer flips (slower).",
        )
        return st.form_submit_button(
            "Run on the prompt set", type="primary", key=Keys.DS_SUBMIT, disabled=running,
            help="A run is going on: stop it or wait for it." if running else None,
        )  # fmt: skip


def _spec(name: str, data: bytes | None, skip: bool, messages: list[Message]) -> DatasetSpec | None:
    """The form as a run; None (with a message) when it cannot run."""
    ss = st.session_state
    if name != BUNDLED and data is None:
        messages.append(Message("error", "Upload a prompt file first (or choose lenskit's own)."))
        return None
    limit = ss.get(Keys.DS_LIMIT)
    if limit is not None and int(limit) < 1:
        messages.append(Message("error", "First N prompts must be 1 or more (empty: all)."))
        return None
    try:
        request = DatasetRequest(
            **{option.name: ss[key] for key, option in OPTIONS.items()},
            sweep=bool(ss[Keys.DS_SWEEP]),
        )
    except LenskitError as exc:
        messages.append(error_message(exc))
        return None
    limit = None if limit is None else int(limit)
    return DatasetSpec(run_model(), request, name, data, limit, skip, lens_panel.choice())


# --- the run ---------------------------------------------------------------------------------


def _load(ref: ModelRef) -> tuple[Any, Any]:
    """The model and tokenizer from the pool, with a progress bar while it loads."""
    box = st.empty()
    with box.status(f"Loading model {md_escape(ref.spec)}\u2026", expanded=True):
        bar = st.progress(0.0, text="Loading the model\u2026")
        model, tokenizer = cached.load(ref, progress=cached.bar_progress(bar))
    box.empty()
    app_state().model_device = cached.device_of(model)
    return model, tokenizer


def _start(spec: DatasetSpec) -> None:
    """Read the prompts and load the model here (a page switch meanwhile leaves ``pending``
    behind), then hand the run to a background thread."""
    ds = app_state().dataset
    ds.pending, ds.bug = spec, None
    try:
        prompts = cached.prompt_set(spec.source, spec.data, spec.skip_invalid)
        model, tokenizer = _load(spec.model)  # then the sidebar's lens object goes in
        request = cached.with_lens(spec.model, spec.request, lenses.resolve(spec.lens, model))
    except LenskitError as exc:
        ds.pending = None
        ds.messages.append(error_message(exc))
        return
    except Exception:
        ds.pending = None  # a bug, not an interruption
        raise
    ds.job = jobs.start_dataset_run(model, tokenizer, prompts, request, spec.limit)
    ds.running, ds.pending = spec, None


def _keep(ds: DatasetState, spec: DatasetSpec | None, run: jobs.DatasetRun) -> None:
    """A finished run replaces the last (whose directory goes); the cell picked goes too."""
    old = ds.output
    ds.spec, ds.result, ds.output, ds.records, ds.replies = spec, run.result, run, None, None
    if old is not None:
        old.close()
    st.session_state[Keys.DS_LAYER] = st.session_state[Keys.DS_COLUMN] = None
    if st.session_state.get(Keys.DS_CATEGORY) not in [ALL, *run.result.categories]:
        st.session_state[Keys.DS_CATEGORY] = ALL
    clear_selection(HEATMAP)


def _collect(ds: DatasetState) -> None:
    """Take the background run's outcome once it is done: the result, or a message."""
    job = ds.job
    if job is None or not job.done:
        return
    spec, ds.job, ds.running = ds.running, None, None
    if job.result is not None:
        _keep(ds, spec, job.result)
    elif job.error is not None:
        ds.messages.append(error_message(job.error))
    elif job.cancelled:
        ds.messages.append(Message("info", "The dataset run was stopped: nothing was kept."))
    else:
        ds.bug = job.bug or RuntimeError("the dataset run ended without a result")


@st.fragment(run_every=POLL_SECONDS)
def _progress() -> None:
    """The background run's progress, polled; the whole page reruns when it is done."""
    job = app_state().dataset.job
    if job is None:
        return
    if job.done:
        st.rerun()
    snap = job.progress()
    text = "Stopping after the current batch\u2026" if job.stopping else snap.message
    st.progress(snap.fraction, text=md_escape(f"Dataset run: {text} ({snap.elapsed:.0f} s)"))
    st.button("Stop the run", key="ds_stop", on_click=job.cancel, disabled=job.stopping)


def _set(**values: Any) -> None:
    """A button's callback: set fields of the dataset page's state."""
    for name, value in values.items():
        setattr(app_state().dataset, name, value)


def _interrupted(ds: DatasetState) -> None:
    """Say that a run was interrupted before it reached the background, with "Run again"."""
    if ds.pending is None or ds.job is not None:
        return
    shown = "The result shown is from an earlier run." if ds.result is not None else ""
    st.warning(
        "The dataset run was interrupted before it started (the page was changed or a button "
        f"was pressed while its prompts were read or its model loaded). {shown}"
    )
    st.caption(_run_caption(ds.pending))
    left, right, _ = st.columns([1, 1, 4])
    left.button("Run again", key="run_again_dataset", type="primary", on_click=_set,
                kwargs={"rerun": True})  # fmt: skip
    right.button("Dismiss", key="dismiss_dataset", on_click=_set, kwargs={"pending": None})


def _run_caption(spec: DatasetSpec) -> str:
    source = SOURCES["bundled"] if spec.data is None else md_escape(spec.source)
    first = f"the first {spec.limit} prompts of " if spec.limit else ""
    check = " with the causal check" if spec.request.sweep else ""
    lens = "" if spec.lens.is_logit else f" through the {md_escape(lenses.describe(spec.lens))}"
    return f"{first}{source} on {md_escape(spec.model.spec)}{lens}{check}"


# --- the result ------------------------------------------------------------------------------


def _summary(result: DatasetResult, spec: DatasetSpec | None) -> str:
    options, cats = result.state.get("options", {}), len(result.categories)
    parts = [
        f"Model {md_escape(str(result.state.get('model') or '?'))}",
        f"{result.n_prompts} prompts ({_run_caption(spec) if spec else 'a dataset run'})"
        + (f" in {_count(cats, 'category', 'categories')}" if cats else ""),
        f"{len(result.rows)} read-outs \u00d7 {len(result.columns)} columns (the user's last "
        f"{options.get('user_tokens', '?')} tokens, then the template's)",
        f"top-{options.get('top_k', '?')}, replies of up to {options.get('max_new_tokens', '?')} "
        "tokens",
    ]
    return " \u00b7 ".join(parts)


def _stat_names() -> list[str]:
    names = list(DatasetResult.statistics())
    return ["answer_hit", *(n for n in names if n != "answer_hit")]


def _choices(result: DatasetResult) -> tuple[str, int, str | None]:
    """The statistic, its k and the category (None: all prompts) to show."""
    ss = st.session_state
    ss.setdefault(Keys.DS_STAT, "answer_hit")
    ss.setdefault(Keys.DS_K, HIT_KS[0])
    if ss.get(Keys.DS_CATEGORY) not in [ALL, *result.categories]:
        ss[Keys.DS_CATEGORY] = ALL
    stat_col, k_col, cat_col = st.columns([3, 2, 2])
    stat = stat_col.selectbox(
        "Statistic", _stat_names(), key=Keys.DS_STAT, persist_state="session",
        format_func=lambda s: charts.STAT_TITLES.get(s, s),
    )  # fmt: skip
    k = k_col.radio(
        "k (a hit: rank < k)", list(HIT_KS), key=Keys.DS_K, horizontal=True,
        persist_state="session", disabled=stat not in RATE_STATS and result.sweep is None,
        help="The hit rates', the lift's and read-vs-cause's k: the token is among the top k.",
    )  # fmt: skip
    category = cat_col.selectbox(
        "Category", [ALL, *result.categories], key=Keys.DS_CATEGORY, persist_state="session",
        disabled=not result.categories,
    )  # fmt: skip
    return stat, int(k), None if category == ALL else category


def _on_cell() -> None:
    """Clicking a heatmap cell picks its layer and column."""
    event = st.session_state.get(chart_key(HEATMAP)) or {}
    points = event.get("selection", {}).get(CELL) or []
    if points and "layer" in points[0] and "column" in points[0]:
        st.session_state[Keys.DS_LAYER] = str(points[0]["layer"])
        st.session_state[Keys.DS_COLUMN] = int(points[0]["column"])


def _heatmap(result: DatasetResult, stat: str, k: int, category: str | None) -> Any:
    """The heatmap (click a cell); returns it without its selection, for the exports."""
    chart = charts.dataset_heatmap(result, stat, k, category, vocab_size=result.vocab_size)
    pick = alt.selection_point(name=CELL, fields=["layer", "column"], on="click", clear="dblclick")
    st.altair_chart(
        chart.add_params(pick), key=chart_key(HEATMAP), on_select=_on_cell,
        selection_mode=CELL, theme=None, width="content",
    )  # fmt: skip
    return chart


def _frames(ds: DatasetState) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The run's records and prompts, read from its directory once."""
    if ds.records is None or ds.replies is None:
        ds.records, ds.replies = ds.result.records, ds.result.prompts
    return ds.records, ds.replies


def _cell_pickers(result: DatasetResult) -> tuple[str | None, int | None]:
    ss = st.session_state
    if ss.get(Keys.DS_LAYER) not in result.rows:
        ss[Keys.DS_LAYER] = None
    if ss.get(Keys.DS_COLUMN) not in result.columns:
        ss[Keys.DS_COLUMN] = None
    labels = dict(zip(result.columns, result.column_labels, strict=True))
    left, right, _ = st.columns([2, 2, 3])
    layer = left.selectbox(
        "Layer", list(result.rows), key=Keys.DS_LAYER, placeholder="click a cell",
        on_change=clear_selection, args=(HEATMAP,),
    )  # fmt: skip
    column = right.selectbox(
        "Column", list(result.columns), key=Keys.DS_COLUMN, placeholder="click a cell",
        format_func=lambda c: f"{labels[c]} ({c})", on_change=clear_selection, args=(HEATMAP,),
    )  # fmt: skip
    return layer, column


def _cell_table(ds: DatasetState, layer: str, column: int, category: str | None) -> pd.DataFrame:
    """One row per prompt at the cell: its top-1 token there, the answer, the reply."""
    records, replies = _frames(ds)
    cell = records[(records["layer"] == layer) & (records["column"] == column)]
    if category is not None:
        cell = cell[cell["category"] == category]
    _, tokenizer = cached.load(ds.spec.model) if ds.spec else (None, None)
    ids = cell["top1_id"].to_numpy()
    raw = vocab_strings(tokenizer, ids) if tokenizer is not None else ids
    byte_level = byte_level_vocabulary(tokenizer) if tokenizer is not None else None
    tokens = [format_token(str(t), 24, byte_level=byte_level) for t in raw]
    rank = cell["answer_rank"].astype("Float64")
    shown_rank = pd.array([None] * len(cell), dtype="Int64")
    known = rank.notna().to_numpy()
    shown_rank[known] = charts.display_rank(rank[known].to_numpy())
    table = pd.DataFrame(
        {
            "#": cell["prompt_index"].to_numpy(),
            "category": cell["category"].to_numpy(),
            "top-1 token": tokens,
            "p(top-1)": cell["top1_prob"].to_numpy(),
            "top-1 is the answer": (cell["top1_id"] == cell["answer_id"]).to_numpy(),
            "answer rank (1 = top)": shown_rank,
        }
    )
    keep = ["prompt_index", "prompt", "system", "answer", "answer_id", "reply"]
    table = table.merge(replies[keep], left_on="#", right_on="prompt_index", how="left")
    return table.drop(columns="prompt_index")


def lens_target(tokenizer: Any, answer: Any, answer_id: Any) -> str:
    """The lens target for a prompt: the answer after a space when that is one token, else
    the answer's token as the reply spells it; "" when neither is one token."""
    candidates = [] if pd.isna(answer) else [f" {answer}"]
    if not pd.isna(answer_id):
        candidates.append(tokenizer.decode([int(answer_id)]))
    for text in candidates:
        try:
            target_token_id(tokenizer, text)
        except TargetError:
            continue
        return text
    return ""


def _open_in_lens(model: ModelRef, row: dict[str, Any]) -> None:
    """Put the prompt (and its answer as the target) into the sidebar's form; the page then
    switches to the logit-lens page, which runs it."""
    _, tokenizer = cached.load(model)
    ss = st.session_state
    ss[Keys.MODEL_CHOICE] = "default" if model.spec == "default" else "other"
    if model.spec != "default":
        ss[Keys.MODEL_PATH] = model.spec
    system = row.get("system")
    ss[Keys.PROMPT] = row["prompt"]
    ss[Keys.CHAT] = True
    ss[Keys.SYSTEM] = "" if pd.isna(system) else str(system)
    ss[Keys.TARGET] = lens_target(tokenizer, row.get("answer"), row.get("answer_id"))
    app_state().dataset.open_lens = True


def _switch_to_lens() -> None:
    """After "Open in the lens page": run the sidebar's form there."""
    ds = app_state().dataset
    if ds.open_lens:
        ds.open_lens = False
        app_state().run_requested = True
        st.switch_page(LENS_PAGE)


def _prompts_at_cell(ds: DatasetState, category: str | None) -> None:
    st.subheader("Prompts at a cell")
    st.caption("Click a heatmap cell (or pick its layer and column) to list the prompts there.")
    layer, column = _cell_pickers(ds.result)
    if layer is None or column is None:
        return
    table = _cell_table(ds, layer, column, category)
    if table.empty:
        st.info("No prompt has this column (their text is too short for it).")
        return
    shown = table.drop(columns=["system", "answer_id"])
    st.dataframe(
        shown, hide_index=True, key="ds_cell_table",
        column_config={"p(top-1)": st.column_config.NumberColumn(format=charts.PROB_PRINTF)},
    )  # fmt: skip
    rows = {int(r["#"]): r for r in table.to_dict("records")}
    if st.session_state.get(Keys.DS_PROMPT) not in rows:
        st.session_state[Keys.DS_PROMPT] = next(iter(rows))
    pick, button = st.columns([4, 2], vertical_alignment="bottom")
    chosen = pick.selectbox(
        "Prompt", list(rows), key=Keys.DS_PROMPT,
        format_func=lambda i: f"#{i}: {str(rows[i]['prompt'])[:80]}",
    )  # fmt: skip
    if ds.spec is None:
        return
    button.button(
        "Open in the lens page", key="ds_open_lens", on_click=_open_in_lens,
        args=(ds.spec.model, rows[chosen]),
        help="Puts the prompt (chat template) and its answer as the target into the sidebar "
        "and runs the logit lens on it.",
    )  # fmt: skip


def _causal(result: DatasetResult, k: int, category: str | None) -> dict[str, Any]:
    """The causal check's charts (a run with the check only), by export name."""
    if result.sweep is None:
        return {}
    st.subheader("Causal check: skipping each block at the template tokens")
    shown = {
        "dataset_sweep_kl": charts.dataset_sweep_heatmap(result, category),
        "dataset_flip_rate": charts.dataset_flip_chart(result, category),
        "dataset_read_vs_cause": charts.read_vs_cause_chart(result, k, category),
    }
    for name, chart in shown.items():
        st.altair_chart(chart, theme=None, width="content", key=name)
    return shown


def _parquet(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


def _exports(ds: DatasetState, shown: dict[str, Any]) -> None:
    result = ds.result
    with st.expander("Export"):
        files = [
            ("Summary .json", "dataset_summary.json", "application/json",
             lambda: result.to_json(indent=1)),
            ("Records .csv", "dataset_records.csv", "text/csv",
             lambda: _frames(ds)[0].to_csv(index=False)),
            ("Records .parquet", "dataset_records.parquet", "application/vnd.apache.parquet",
             lambda: _parquet(_frames(ds)[0])),
            ("Prompts .csv", "dataset_prompts.csv", "text/csv",
             lambda: _frames(ds)[1].to_csv(index=False)),
        ]  # fmt: skip
        for col, (label, name, mime, data) in zip(st.columns(len(files)), files, strict=True):
            col.download_button(
                label, data=data, file_name=name, mime=mime, on_click="ignore",
                key=f"dl_{name.replace('.', '_')}", width="stretch",
            )  # fmt: skip
        st.caption("Charts (PNG/SVG rendered offline; HTML is standalone, no network needed):")
        for name, chart in shown.items():
            chart_downloads(name.split("_", 1)[1].replace("_", " ").capitalize(), chart, name)


@st.fragment
def _views(ds: DatasetState) -> None:
    """The statistic's heatmap, the prompts at a cell, the categories, the causal check and
    the exports (rerun alone when one of their widgets changes)."""
    _switch_to_lens()
    result = ds.result
    stat, k, category = _choices(result)
    shown = {"dataset_heatmap": _heatmap(result, stat, k, category)}
    _prompts_at_cell(ds, category)
    if result.categories:
        st.subheader("By category")
        chart = charts.dataset_category_heatmaps(result, stat, k, vocab_size=result.vocab_size)
        st.altair_chart(chart, theme=None, width="content", key="dataset_categories")
        shown["dataset_by_category"] = chart
    shown |= _causal(result, k, category)
    _exports(ds, shown)


def _results(ds: DatasetState) -> None:
    show_messages(ds.messages)
    if ds.bug is not None:
        st.error(
            "The dataset run stopped on a bug inside lenskit, not a problem with the input. "
            "The traceback below says where."
        )
        with st.expander("Traceback", expanded=False):
            st.exception(ds.bug)
    if ds.result is None:
        if ds.job is None and not has_error(ds.messages):
            st.info("Choose the prompts and press **Run on the prompt set**.")
        return
    if has_error(ds.messages) or ds.job is not None:
        st.caption("Showing the last finished run.")
    st.caption(_summary(ds.result, ds.spec))
    if ds.spec is not None:
        _show_skipped(cached.prompt_set(ds.spec.source, ds.spec.data, ds.spec.skip_invalid))
    _views(ds)


def render() -> None:
    """The page: the prompts and options, the run (in the background), the result."""
    state = app_state()
    ds = state.dataset
    _switch_to_lens()
    show_messages(state.lens.messages)  # the sidebar's run may be started from this page
    st.caption(
        "The logit lens at the user's last tokens and the chat template's tokens, summed over "
        f"a set of prompts, on the sidebar's model ({md_escape(run_model().spec)})."
    )
    _collect(ds)
    name, data, skip = _source()
    submitted = _form(running=ds.job is not None)
    if ds.rerun and ds.pending is not None and ds.job is None:
        ds.rerun, ds.messages = False, []
        _start(ds.pending)
    elif submitted and ds.job is None:
        ds.messages = []
        spec = _spec(name, data, skip, ds.messages)
        if spec is not None:
            _start(spec)
    else:
        ds.rerun = False
        _interrupted(ds)
    if ds.job is not None:
        st.caption(f"Running: {_run_caption(ds.running)}" if ds.running else "Running")
        _progress()
    _results(ds)


if __name__ == "__main__":  # run as a page of st.navigation
    render()
