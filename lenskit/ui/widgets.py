"""Widgets the pages share: chart keys that can be reset, and the "Position" selector."""

from __future__ import annotations

from collections.abc import Callable

import streamlit as st

from lenskit.results import LensResult
from lenskit.ui.state import app_state

__all__ = ["chart_key", "clear_selection", "position_select"]


def chart_key(name: str) -> str:
    """The widget key of the chart ``name`` (e.g. "overview_chart") in this script run."""
    generation = app_state().chart_generation.get(name, 0)
    return name if generation == 0 else f"{name}_{generation}"


def clear_selection(name: str) -> None:
    """Forget the chart's brush or click: the chart is remounted under a new key.

    A chart's ``on_select`` fires only when its selection changes, so after a slider or
    selector moved away from what was brushed or clicked, the same gesture again must count.
    """
    counters = app_state().chart_generation
    counters[name] = counters.get(name, 0) + 1


def position_select(
    result: LensResult,
    key: str,
    format_func: Callable[[int], str],
    on_change: Callable[[], None] | None = None,
) -> int:
    """A "Position" selector over the prompt's positions, its value in ``key`` (the last
    position when the value does not fit this result)."""
    t = result.n_positions
    if st.session_state.get(key) not in range(t):
        st.session_state[key] = t - 1
    return st.selectbox(
        "Position",
        list(range(t)),
        key=key,
        format_func=format_func,
        persist_state="session",
        on_change=on_change,
    )
