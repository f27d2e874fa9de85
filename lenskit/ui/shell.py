"""What every page shares: the sidebar, the logit-lens run it asks for, and the bug guard."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import streamlit as st

from lenskit.ui import lens_panel, runner, sidebar
from lenskit.ui.state import app_state

__all__ = ["frame", "guard"]


def frame() -> None:
    """Draw the sidebar and run the logit lens when asked to (the form's button, an example,
    a change of the lens, "Run again", or the app's first open, which runs the first
    example); otherwise say if the last run was interrupted. Then the lens's status in the
    sidebar (the model is loaded by now). Every page shows the lens run's messages."""
    state = app_state()
    submitted, device_slot, lens_slot = sidebar.draw()
    first_open = not state.started
    state.started = True
    again = runner.take_rerun("lens")
    if again is not None:
        state.lens.messages = []
        runner.run_lens(again)
    elif submitted or first_open:
        state.lens.messages = []
        runner.run_lens(sidebar.form_job())
    else:
        runner.interrupted_notice("lens", has_result=state.lens.result is not None)
    sidebar.show_device(device_slot)
    lens_panel.draw_status(lens_slot)


@contextmanager
def guard() -> Iterator[None]:
    """Show a bug (an exception that is not a :class:`~lenskit.errors.LenskitError` message)
    with its traceback, instead of a half-drawn page. Streamlit's own control flow (page
    switches, reruns) passes through."""
    try:
        yield
    except Exception as exc:
        st.error(
            "Something went wrong inside lenskit: this is a bug, not a problem with the input. "
            "The traceback below says where."
        )
        with st.expander("Traceback", expanded=False):
            st.exception(exc)
