"""The "Generation & interventions" page: an intervention sweep over the blocks of the last
good logit-lens run's model and prompt (KL heatmap, lens on the generated tokens), and the
layer x layer KL at one prompt position.

The sweep's inputs live in a form (typing does not rerun). Every range, default and help text
comes from :mod:`lenskit.requests` and :data:`lenskit.interventions.INTERVENTIONS`; the
:class:`~lenskit.requests.SweepRequest` checks the inputs. The charts' own selectors and the
layer x layer KL are fragments: they rerun alone.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import streamlit as st

from lenskit import charts
from lenskit.errors import LenskitError
from lenskit.interventions import INTERVENTIONS
from lenskit.requests import MAX_NEW_TOKENS, POSITION_MODES, SEED, PairwiseRequest, SweepRequest
from lenskit.results import LensResult, SweepReport
from lenskit.text import format_token
from lenskit.ui import cached, runner
from lenskit.ui.downloads import chart_downloads, data_downloads
from lenskit.ui.state import Job, Keys, Message, app_state
from lenskit.ui.text import (
    error_message,
    has_error,
    md_escape,
    position_labeller,
    show_messages,
    show_prompt,
)
from lenskit.ui.widgets import position_select

__all__ = ["render"]

#: The positions choice besides the library's named modes: the prompt positions picked in
#: the form.
PICKED = "explicit"
_MODE_HELP = {**POSITION_MODES, PICKED: "the prompt positions picked below"}


def _request_default(name: str) -> Any:
    return next(f.default for f in fields(SweepRequest) if f.name == name)


def _n_blocks(lens: LensResult) -> int:
    """The model's blocks: the lens result's rows but emb and the sub-block rows "i.attn"."""
    return sum(1 for name in lens.layer_names if str(name).isdigit()) + 1


def _sync_inputs(lens: LensResult) -> None:
    """Defaults, and inputs that no longer fit the current model or prompt, before the widgets.

    A new model (another number of blocks) resets the blocks to all of them; a new prompt
    clears the picked positions (their indices meant other tokens).
    """
    ss, state = st.session_state, app_state().sweep
    ss.setdefault(Keys.SWEEP_MAX_NEW, MAX_NEW_TOKENS.default)
    ss.setdefault(Keys.SWEEP_SEED, SEED.default)
    ss.setdefault(Keys.SWEEP_INTERVENTION, _request_default("intervention"))
    ss.setdefault(Keys.SWEEP_POS_MODE, _request_default("positions"))
    ss.setdefault(Keys.SWEEP_POSITIONS, [])
    n_blocks = _n_blocks(lens)
    if state.n_blocks != n_blocks:
        state.n_blocks = n_blocks
        ss[Keys.SWEEP_LAYERS] = list(range(n_blocks))
    prompt_ids = tuple(int(i) for i in lens.token_ids)
    if state.prompt_ids != prompt_ids:
        if state.prompt_ids is not None and ss[Keys.SWEEP_POSITIONS]:
            st.info("The prompt changed: the picked positions were cleared.")
        state.prompt_ids = prompt_ids
        ss[Keys.SWEEP_POSITIONS] = []


def _set_layers(layers: list[int]) -> None:
    """Quick-pick buttons: fill the form's block selection."""
    st.session_state[Keys.SWEEP_LAYERS] = list(layers)


def _quick_picks(n_blocks: int) -> None:
    band = charts.band_layers(n_blocks)
    cols = st.columns([1, 2, 1])
    everything = list(range(n_blocks))
    cols[0].button(
        "All blocks", key="sweep_pick_all", on_click=_set_layers, args=(everything,),
        width="stretch",
    )  # fmt: skip
    cols[1].button(
        f"Quick pick: {charts.describe_range(band)}",
        key="sweep_pick_band",
        on_click=_set_layers,
        args=(band,),
        help=f"The first block, a middle band and a late block of this {n_blocks}-block "
        "model (the seed figure's 0, 15\u201321, 27 for a 30-block model).",
        width="stretch",
    )
    cols[2].button(
        "Clear", key="sweep_pick_none", on_click=_set_layers, args=([],), width="stretch"
    )


def _number_fields() -> None:
    # No min/max: the browser silently refuses a value outside them (the button then runs
    # nothing); the request says what is allowed instead.
    st.number_input(
        f"{MAX_NEW_TOKENS.label} (columns, {MAX_NEW_TOKENS.lo}\u2013{MAX_NEW_TOKENS.hi})",
        step=1,
        key=Keys.SWEEP_MAX_NEW,
        persist_state="session",
        help=f"{MAX_NEW_TOKENS.help} (greedy; stops early at an end-of-sequence token): "
        f"{MAX_NEW_TOKENS.describe()}.",
    )
    st.number_input(
        f"{SEED.label} ({SEED.lo}\u2013{SEED.hi})",
        step=1,
        key=Keys.SWEEP_SEED,
        persist_state="session",
        help=f"{SEED.help}: the same seed gives the same result; {SEED.describe()}.",
    )


def _form(lens: LensResult) -> bool:
    """The sweep's inputs; returns whether the form was submitted."""
    n_blocks = _n_blocks(lens)
    _quick_picks(n_blocks)
    with st.form("sweep_form"):
        st.multiselect(
            "Blocks to intervene on (rows)",
            list(range(n_blocks)),
            key=Keys.SWEEP_LAYERS,
            persist_state="session",
            help=f"0-based decoder blocks 0..{n_blocks - 1}; one sweep row each. Block l's "
            "output is row l + 1 of the logit-lens page (emb is row 0), so intervening at "
            "block l changes rows l + 1 .. out there.",
        )
        left, middle, right = st.columns([2, 3, 3])
        with left:
            _number_fields()
        with middle:
            st.radio(
                "Intervention",
                list(INTERVENTIONS),
                key=Keys.SWEEP_INTERVENTION,
                persist_state="session",
                captions=[INTERVENTIONS[name].help for name in INTERVENTIONS],
            )
        with right:
            st.radio(
                "Intervened prompt positions",
                list(_MODE_HELP),
                key=Keys.SWEEP_POS_MODE,
                persist_state="session",
                captions=list(_MODE_HELP.values()),
                help="Generated tokens are never intervened on.",
            )
            st.multiselect(
                f"Picked positions (with '{PICKED}')",
                list(range(lens.n_positions)),
                key=Keys.SWEEP_POSITIONS,
                persist_state="session",
                format_func=position_labeller(lens),
            )
        return st.form_submit_button("Run sweep", type="primary", key=Keys.SWEEP_SUBMIT)


def _positions(messages: list[Message]) -> str | tuple[int, ...] | None:
    """The positions of the form: a mode of POSITION_MODES or the picked indices (None, with
    a message, when 'picked' has none: the library would sweep no position at all)."""
    ss = st.session_state
    mode = ss[Keys.SWEEP_POS_MODE]
    picked = tuple(sorted({int(p) for p in ss[Keys.SWEEP_POSITIONS] or []}))
    if mode == PICKED:
        if not picked:
            messages.append(
                Message(
                    "error",
                    f"No positions picked: pick prompt positions, or choose "
                    f"{' or '.join(POSITION_MODES)}.",
                )
            )
            return None
        return picked
    if picked:
        messages.append(
            Message(
                "info",
                f"The picked positions are not used: this sweep intervenes on "
                f"{md_escape(POSITION_MODES[mode])}. Choose '{PICKED}' to use them.",
            )
        )
    return mode


def _sweep_job(lens_job: Job) -> Job | None:
    """The form's sweep of the lens run's prompt and model; None (with the library's
    message) when the request is refused."""
    ss, messages = st.session_state, app_state().sweep.messages
    positions = _positions(messages)
    if positions is None:
        return None
    lens = lens_job.request
    try:
        request = SweepRequest(
            lens.prompt,
            chat=lens.chat,
            system=lens.system,
            max_new_tokens=ss[Keys.SWEEP_MAX_NEW],
            layers=tuple(sorted({int(b) for b in ss[Keys.SWEEP_LAYERS] or []})),
            positions=positions,
            intervention=ss[Keys.SWEEP_INTERVENTION],
            seed=ss[Keys.SWEEP_SEED],
            generation_lens=True,
            top_k=lens.top_k,
        )
    except LenskitError as exc:
        messages.append(error_message(exc))
        return None
    return Job("sweep", lens_job.model, request, lens_job.lens)


def _keep(job: Job, report: SweepReport) -> None:
    state = app_state().sweep
    state.job, state.report = job, report
    if report.warning:
        state.messages.append(Message("warning", md_escape(report.warning)))


def _run(job: Job | None) -> None:
    """Run the sweep; on failure the last good sweep stays."""
    if job is not None:
        runner.execute(job, lambda report: _keep(job, report))


def _answer(report: SweepReport) -> None:
    sweep = report.sweep
    # One string: a character split over two tokens reads whole.
    text = "".join(str(t) for t in sweep.generated_tokens)
    answer = format_token(text, max_len=0, byte_level=sweep.byte_level)
    st.caption(f"Greedy answer ({sweep.n_generated} tokens, \u2423 = space, \u21b5 = newline):")
    st.code(answer, language=None, wrap_lines=True)


def _scale_label(scale: str) -> str:
    if scale == "linear":
        return f"linear, 0\u2013{charts.SWEEP_KL_MAX:g} nats"
    return "log, {:g}\u2013{:g} nats".format(*charts.SWEEP_LOG_DOMAIN)


@st.fragment
def _sweep_charts(report: SweepReport) -> None:
    """The KL heatmap, the lens on the generated tokens and their exports."""
    scale = st.radio(
        "Colour scale",
        ["linear", "log"],
        key=Keys.SWEEP_SCALE,
        horizontal=True,
        persist_state="session",
        format_func=_scale_label,
        help="Both fixed (comparable across sweeps) and clamped. Linear shows large effects "
        "like the seed figure; log also separates the small ones.",
    )
    sweep_chart = charts.sweep_heatmap(report.sweep, scale=scale)
    st.altair_chart(sweep_chart, theme=None, width="content", key="sweep_chart")
    name = report.generation.result.lens if report.generation is not None else "logit"
    st.subheader(f"{charts.lens_title(name)} on the generated tokens")
    gen_chart = None
    if report.generation is not None:
        metric = st.radio(
            "Colour by",
            charts.generation_metric_names(),
            key=Keys.GEN_METRIC,
            persist_state="session",
            horizontal=True,
            format_func=lambda k: charts.METRICS[k].label,
        )
        gen_chart = charts.generation_lens_heatmap(report.generation, metric=metric)
        st.altair_chart(gen_chart, theme=None, width="content", key="gen_lens_chart")
    with st.expander("Export the sweep"):
        data_downloads(report.sweep, "Sweep", stem="sweep", key="dl_sweep")
        st.caption("Charts (PNG/SVG rendered offline; HTML is standalone):")
        chart_downloads("Sweep", sweep_chart, "sweep_kl")
        if gen_chart is not None:
            chart_downloads("Lens on generation", gen_chart, "generation_lens")


def _sweep_view(report: SweepReport, job: Job, lens_job: Job) -> None:
    sweep, request = report.sweep, job.request
    stale = (job.model, job.lens, request.prompt, request.chat, request.system) != (
        lens_job.model,
        lens_job.lens,
        lens_job.request.prompt,
        lens_job.request.chat,
        lens_job.request.system,
    )
    if stale:
        st.caption(
            "This sweep was computed for an earlier prompt, model or lens (below); press "
            "**Run sweep** to sweep the current one."
        )
        show_prompt(str(request.prompt), request.system)
    _answer(report)
    st.subheader("KL(clean \u2016 intervened) per generated token")
    st.caption(
        f"Row l: block l intervened ({md_escape(sweep.intervention)}) at the chosen prompt "
        "positions; column Gen j: the distribution that produced the j-th answer token. "
        "Colour on a fixed scale (values beyond it clamped to the darkest red; hover for exact "
        "values). Cell text: the new top-1 token where the intervention changed it."
    )
    _sweep_charts(report)


@st.fragment
def _pairwise(lens: LensResult, lens_job: Job) -> None:
    """KL between every pair of read-out rows at one position (its own selector)."""
    st.subheader("Layer \u00d7 layer KL at one position")
    st.caption(
        "KL(p_i \u2016 p_j) between the read-out distributions (through the lens page's lens) "
        "of every pair of rows (emb, blocks, out) at one prompt position; row out is the lens view's "
        "KL(out \u2016 layer). Fixed 0\u2013ln V colour scale, as in the lens view."
    )
    pos = position_select(lens, Keys.PAIR_POS, position_labeller(lens))
    request = lens_job.request
    try:
        pair = cached.pairwise_kl(
            lens_job.model,
            PairwiseRequest(request.prompt, int(pos), chat=request.chat, system=request.system),
            cached.lens_key(lens_job.model, lens_job.lens),
        )
    except LenskitError as exc:
        st.error(md_escape(str(exc)))
        return
    token = format_token(str(lens.tokens[pos]), 20, byte_level=lens.byte_level)
    chart = charts.layer_pairwise_heatmap(
        pair,
        vocab_size=lens.vocab_size,
        subtitle=f"{charts.lens_title(pair.lens)} \u00b7 position {pos} ({token}) \u00b7 "
        f"{lens.model_name or 'model'}",
    )
    st.altair_chart(chart, theme=None, width="content", key="pair_chart")
    with st.expander("Export the layer \u00d7 layer KL"):
        chart_downloads("Layer KL", chart, "layer_kl")


def _caption(lens: LensResult) -> str:
    n_blocks, t = _n_blocks(lens), lens.n_positions
    return (
        f"Which blocks, at which prompt positions, does the answer depend on? Model "
        f"{md_escape(lens.model_name or '?')} \u00b7 {n_blocks} block{'s' * (n_blocks != 1)} "
        f"\u00b7 prompt of the logit-lens page ({t} token{'s' * (t != 1)}, "
        f"{'chat template' if lens.chat else 'raw text'}); change it in the sidebar."
    )


def _results(lens_job: Job) -> None:
    """The sweep's messages and its last good result (or what to do)."""
    state = app_state().sweep
    show_messages(state.messages)
    failed = has_error(state.messages)
    if state.report is None or state.job is None:
        if not failed:  # after an error, the error says what to do
            st.info("Choose blocks and positions, then press **Run sweep**.")
        return
    if failed:
        st.caption("Showing the last good sweep.")
    _sweep_view(state.report, state.job, lens_job)


def render() -> None:
    """The page: the lens run's messages, the sweep form and run, the views."""
    state = app_state()
    show_messages(state.lens.messages)  # the sidebar's run may be started from this page
    lens, lens_job = state.lens.result, state.lens.job
    if lens is None or lens_job is None:
        st.info("Run the logit lens first (sidebar): this page uses the same model and prompt.")
        return
    st.caption(_caption(lens))
    _sync_inputs(lens)
    submitted = _form(lens)
    again = runner.take_rerun("sweep")
    if again is not None or submitted:
        state.sweep.messages = []
        _run(again if again is not None else _sweep_job(lens_job))
    else:
        runner.interrupted_notice("sweep", has_result=state.sweep.report is not None)
    _results(lens_job)
    _pairwise(lens, lens_job)


if __name__ == "__main__":  # run as a page of st.navigation
    render()
