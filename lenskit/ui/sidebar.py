"""The sidebar: example prompts, the logit-lens form (typing does not rerun; the button does)
and, below it, the lens (:mod:`lenskit.ui.lens_panel`).

The form's fields become a :class:`~lenskit.requests.LensRequest`, which checks them; the
sidebar holds no ranges or rules of its own (the top-k field's label, default and help come
from :data:`lenskit.requests.TOP_K`).
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from lenskit.errors import LenskitError
from lenskit.model import DEVICE_ENV
from lenskit.requests import TOP_K, LensRequest
from lenskit.ui import lens_panel
from lenskit.ui.cached import model_ref
from lenskit.ui.examples import EXAMPLES
from lenskit.ui.state import Job, Keys, app_state
from lenskit.ui.text import error_message, md_escape

__all__ = ["draw", "form_job", "show_device"]

_FIRST = next(iter(EXAMPLES.values()))
#: The form's initial values, by widget key.
FORM_DEFAULTS: dict[str, Any] = {
    Keys.MODEL_CHOICE: "default",
    Keys.MODEL_PATH: "",
    Keys.PROMPT: _FIRST.prompt,
    Keys.CHAT: _FIRST.chat,
    Keys.SYSTEM: "",
    Keys.TOP_K: TOP_K.default,
    Keys.TARGET: _FIRST.target,
}
_MODEL_CHOICES = {
    "default": "Default (embedded SmolLM2-135M-Instruct)",
    "other": "Other: hub id, local dir or .gguf",
}


def _apply_example() -> None:
    """Copy the picked example into the form and run it."""
    example = EXAMPLES.get(st.session_state.get(Keys.EXAMPLE))
    if example is not None:
        st.session_state.update(
            {
                Keys.PROMPT: example.prompt,
                Keys.CHAT: example.chat,
                Keys.TARGET: example.target,
                Keys.SYSTEM: "",
            }
        )
        app_state().run_requested = True
    # Back to the placeholder, so that picking the same example again fires again.
    st.session_state[Keys.EXAMPLE] = None


def _form_fields() -> None:
    st.radio("Model", list(_MODEL_CHOICES), key=Keys.MODEL_CHOICE, format_func=_MODEL_CHOICES.get)
    st.text_input(
        "Hub id, local directory or .gguf path",
        key=Keys.MODEL_PATH,
        placeholder="HuggingFaceTB/SmolLM2-135M-Instruct",
        help="Used when Model is 'Other'. Nothing is downloaded unless the hub is reachable.",
    )
    st.text_area("Prompt", key=Keys.PROMPT, height=110)
    st.checkbox("Wrap in the chat template", key=Keys.CHAT)
    st.text_input(
        "System prompt (optional)",
        key=Keys.SYSTEM,
        help="Chat template only. Empty: the template's default.",
    )
    # No min/max: the browser silently refuses a value outside them (the button then runs
    # nothing); the request says what is allowed instead.
    st.number_input(
        f"{TOP_K.label} tokens per cell ({TOP_K.lo}\u2013{TOP_K.hi})",
        step=1,
        key=Keys.TOP_K,
        help=f"{TOP_K.help}: {TOP_K.describe()}.",
    )
    st.text_input(
        "Target token (optional)",
        key=Keys.TARGET,
        help="One token, e.g. ' Canberra' vs ' Sydney' (mind the leading space).",
    )


def draw() -> tuple[bool, Any, Any]:
    """The sidebar; returns whether the form was submitted (or an example picked, or the lens
    changed), the slot of the device caption (filled by :func:`show_device` after the run)
    and that of the lens's status (:func:`lenskit.ui.lens_panel.draw_status`)."""
    for key, value in FORM_DEFAULTS.items():
        st.session_state.setdefault(key, value)
    with st.sidebar:
        st.title("lenskit")
        st.caption("Logit lens: what every layer predicts at every position.")
        device_slot = st.empty()
        st.selectbox(
            "Example prompts",
            list(EXAMPLES),
            index=None,
            key=Keys.EXAMPLE,
            placeholder="Pick an example\u2026",
            on_change=_apply_example,
        )
        with st.form("lens_form"):
            _form_fields()
            submitted = st.form_submit_button(
                "Run logit lens", type="primary", width="stretch", key=Keys.LENS_SUBMIT
            )
        lens_slot = lens_panel.draw_choice()
    state = app_state()
    requested, state.run_requested = state.run_requested, False
    return bool(submitted or requested), device_slot, lens_slot


def form_job() -> Job | None:
    """The form's request on its model through the sidebar's lens; None (with the library's
    message queued) when the request is refused."""
    ss = st.session_state
    spec = "default" if ss[Keys.MODEL_CHOICE] == "default" else ss[Keys.MODEL_PATH].strip()
    system = ss[Keys.SYSTEM]
    try:
        request = LensRequest(
            ss[Keys.PROMPT],
            chat=bool(ss[Keys.CHAT]),
            system=system if system.strip() else None,
            top_k=ss[Keys.TOP_K],
            # " " is a token too: only an empty field means no target.
            target=ss[Keys.TARGET] if ss[Keys.TARGET] != "" else None,
            sublayers=lens_panel.sublayers(),
        )
    except LenskitError as exc:
        app_state().lens.messages.append(error_message(exc))
        return None
    return Job("lens", model_ref(spec), request, lens_panel.choice())


def show_device(slot: Any) -> None:
    """The device caption: what the app asks for and, once a model is loaded, where it runs."""
    ref = model_ref("default")
    where = app_state().model_device
    runs = f" \u00b7 the model runs on {md_escape(where)}" if where else ""
    slot.caption(
        f"Device: {md_escape(ref.device)}{runs} (set `{DEVICE_ENV}`: cpu, cuda, cuda:N, mps, "
        "xpu or auto)"
    )
