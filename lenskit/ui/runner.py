"""Running a job: the pending-run record, a status box with progress, and the outcome.

:func:`execute` records the job as pending before it starts and removes the record when the
run ends, with a result or with the library's message. Streamlit stops a running script when
the user switches page or presses a button; the record then stays behind, and
:func:`interrupted_notice` says so on the next script run and offers to run it again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import streamlit as st

from lenskit import charts
from lenskit.errors import LenskitError
from lenskit.results import LensResult
from lenskit.ui import cached, lenses
from lenskit.ui.state import AppState, Job, Keys, Kind, Message, app_state
from lenskit.ui.text import error_message, md_escape, show_prompt
from lenskit.ui.widgets import clear_selection

__all__ = ["execute", "interrupted_notice", "run_lens", "take_rerun"]

#: The status box's label while each kind of run computes (after the model is loaded).
STAGES: dict[str, str] = {
    "lens": "Reading out every layer\u2026",
    "sweep": "Generating, sweeping the blocks, reading out the generation\u2026",
}
#: What each kind of run is called in messages.
NAMES: dict[str, str] = {"lens": "logit-lens run", "sweep": "sweep"}


def messages_of(state: AppState, kind: Kind) -> list[Message]:
    return state.lens.messages if kind == "lens" else state.sweep.messages


def _compute(job: Job, status: Any) -> Any:
    """Load the model (progress bar), then run the cached computation through the job's lens
    (resolved on the model: its directory and file stamp are part of the cache key)."""
    bar = st.progress(0.0, text="Loading the model\u2026")
    try:
        model, _ = cached.load(job.model, progress=cached.bar_progress(bar))
    finally:
        bar.empty()
    app_state().model_device = cached.device_of(model)
    # expanded=True again: update() without it collapses the box and hides the progress bars.
    status.update(label=STAGES[job.kind], expanded=True)
    return cached.COMPUTE[job.kind](job.model, job.request, lenses.resolve(job.lens, model))


def execute(job: Job, keep: Callable[[Any], None]) -> bool:
    """Run ``job`` and ``keep(result)``; False after adding the library's message to the
    job's messages instead. A bug (any other exception) propagates; an interruption leaves
    the pending record behind.

    ``keep`` runs as soon as the result is there, before any other Streamlit call (each may
    be where an interruption lands), and the record goes with it.
    """
    state = app_state()
    state.pending[job.kind] = job
    placeholder = st.empty()
    try:
        # Expanded: the progress bars inside are the only sign of life in a long run.
        with placeholder.status(
            f"Loading model {md_escape(job.model.spec)}\u2026", expanded=True
        ) as status:
            keep(_compute(job, status))
            state.pending.pop(job.kind, None)
    except LenskitError as exc:
        state.pending.pop(job.kind, None)
        messages_of(state, job.kind).append(error_message(exc))
        return False
    except Exception:
        state.pending.pop(job.kind, None)  # a bug, not an interruption
        raise
    placeholder.empty()
    return True


def _same_tokens(old: LensResult | None, new: LensResult) -> bool:
    return old is not None and (old.model_name, old.token_ids.tolist()) == (
        new.model_name,
        new.token_ids.tolist(),
    )


def store_lens(job: Job, result: LensResult) -> None:
    """Keep a new lens result; reset what was chosen for the previous one if its tokens differ.

    Positions index the prompt's tokens: for another token sequence the detail range, the
    drill-down and the layer x layer KL position go back to their defaults (writing a
    widget's state also sends its new label to the browser), and the sweep's messages about
    the old prompt go. A run on the same tokens (another target or top-k) keeps them, so two
    targets compare at one position.
    """
    state = app_state()
    old = state.lens.result
    state.lens.job, state.lens.result = job, result
    if _same_tokens(old, result):
        return
    st.session_state[Keys.DETAIL_RANGE] = charts.default_detail_range(result)
    st.session_state[Keys.DRILL_POS] = result.n_positions - 1
    st.session_state[Keys.PAIR_POS] = result.n_positions - 1
    state.sweep.messages = []
    if old is not None:  # the charts' selections point at the old tokens
        clear_selection("overview_chart")
        clear_selection("detail_chart")


def run_lens(job: Job | None) -> None:
    """Run a logit-lens job (None: its request was refused, the message is queued) and keep
    its result; on failure the last good result stays."""
    if job is not None:
        execute(job, lambda result: store_lens(job, result))


def take_rerun(kind: Kind) -> Job | None:
    """The pending job of ``kind`` when the user pressed its "Run again" (once)."""
    state = app_state()
    if state.rerun != kind:
        return None
    state.rerun = None
    return state.pending.get(kind)


def _ask_rerun(kind: Kind) -> None:
    app_state().rerun = kind


def _dismiss(kind: Kind) -> None:
    app_state().pending.pop(kind, None)


def interrupted_notice(kind: Kind, *, has_result: bool) -> None:
    """Say that the last run of ``kind`` was interrupted, with "Run again" and "Dismiss"."""
    job = app_state().pending.get(kind)
    if job is None:
        return
    shown = (
        "The result shown is from an earlier run."
        if has_result
        else "There is no result of it to show."
    )
    st.warning(
        f"The {NAMES[kind]} below was interrupted before it finished (the page was changed or "
        f"a button was pressed while it ran). {shown}"
    )
    show_prompt(str(job.request.prompt), job.request.system)
    left, right, _ = st.columns([1, 1, 4])
    left.button(
        "Run again",
        key=f"run_again_{kind}",
        type="primary",
        on_click=_ask_rerun,
        args=(kind,),
        width="stretch",
    )
    right.button("Dismiss", key=f"dismiss_{kind}", on_click=_dismiss, args=(kind,), width="stretch")
