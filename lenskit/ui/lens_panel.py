"""The lens: its choice in the sidebar (below the form), the training of the model's own lens,
and the fidelity panel of the lens page.

* :func:`draw_choice` (in the sidebar, before the run): the lens (logit; the model's own tuned
  lens trained here; a tuned lens from a directory), the directory's path and the "Sub-block
  rows" toggle. Changing any of them runs the form again, like picking an example.
* :func:`draw_status` (after the run, once the model is loaded): whether the chosen lens is
  there. For the model's own lens, a "Train" button when it is not: the training runs in the
  background (:func:`lenskit.ui.jobs.start_training`) while a fragment polls its progress,
  so the app stays usable and a page switch does not stop it; a stopped or killed training
  resumes from its last checkpoint on the next click. When a training this session started
  finishes, the form runs again through the new lens. For a directory, the library's message
  when it does not load.
* :func:`fidelity_panel` (the lens page): the logit lens vs the result's tuned lens on
  held-out transcripts (:func:`lenskit.ui.cached.fidelity`), on request.
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from lenskit import charts
from lenskit.errors import LenskitError
from lenskit.ui import cached, jobs, lenses
from lenskit.ui.state import Job, Keys, LensChoice, ModelRef, app_state
from lenskit.ui.text import md_escape

__all__ = ["choice", "draw_choice", "draw_status", "fidelity_panel", "run_model", "sublayers"]

#: The lens widgets' initial values, by widget key.
DEFAULTS: dict[str, Any] = {Keys.LENS_CHOICE: "logit", Keys.LENS_DIR: "", Keys.SUBLAYERS: False}
#: Seconds between two looks at a training's progress.
POLL_SECONDS = 1.0


def choice() -> LensChoice:
    """The sidebar's lens choice (the path only for "dir")."""
    ss = st.session_state
    kind = ss.get(Keys.LENS_CHOICE, "logit")
    if kind not in lenses.CHOICES:
        kind = "logit"
    return LensChoice(kind, str(ss.get(Keys.LENS_DIR, "")) if kind == "dir" else "")


def sublayers() -> bool:
    """The "Sub-block rows" toggle."""
    return bool(st.session_state.get(Keys.SUBLAYERS, False))


def run_model() -> ModelRef:
    """The sidebar's model: the last logit-lens run's, else the form's choice."""
    job = app_state().lens.job
    if job is not None:
        return job.model
    ss = st.session_state
    pick = ss.get(Keys.MODEL_CHOICE, "default")
    return cached.model_ref("default" if pick == "default" else ss[Keys.MODEL_PATH].strip())


def _request_run() -> None:
    app_state().run_requested = True


def _request_run_if_dir() -> None:
    if st.session_state.get(Keys.LENS_CHOICE) == "dir":
        _request_run()


def _trained() -> None:
    """Once the training this session started has finished with a lens, run the form again
    (through it, when the own lens is still the choice)."""
    state = app_state()
    job = jobs.training_job(state.training) if state.training else None
    if job is None or not job.done:
        return
    state.training = None
    if job.result is not None and choice().kind == "cached":
        state.run_requested = True


def draw_choice() -> Any:
    """The lens widgets (call inside the sidebar); returns the slot :func:`draw_status`
    fills after the run."""
    for key, value in DEFAULTS.items():
        st.session_state.setdefault(key, value)
    _trained()
    st.radio(
        "Lens",
        list(lenses.CHOICES),
        key=Keys.LENS_CHOICE,
        format_func=lenses.CHOICES.get,
        on_change=_request_run,
        help="How the inner rows are read. The logit lens reads every row through the "
        "model's own final norm and unembedding; a tuned lens first applies a learned affine "
        "map per row (Belrose et al., 2023). Row out is the model's own output either way.",
    )
    st.text_input(
        "Tuned lens directory",
        key=Keys.LENS_DIR,
        placeholder="path/to/lens (config.json + params.pt)",
        on_change=_request_run_if_dir,
        help="Used when Lens is 'Tuned lens from a directory': tuned-lens's format, e.g. the "
        "output of `lenskit train-lens -o DIR`.",
    )
    st.toggle(
        "Sub-block rows",
        key=Keys.SUBLAYERS,
        on_change=_request_run,
        help="Also read the residual stream after each block's attention, before its MLP "
        "(rows 1.attn, 2.attn, ...; logit-lens page). Logit lens only; not for models whose "
        "blocks run attention and the MLP in parallel.",
    )
    return st.container()


def draw_status(slot: Any) -> None:
    """Under the lens choice: whether the chosen tuned lens is there for the last run's
    model (nothing for the logit lens, or before a model was loaded)."""
    picked, job = choice(), app_state().lens.job
    if picked.is_logit or job is None:
        return
    with slot:
        try:
            model, _ = cached.load(job.model)
        except LenskitError:
            return  # the page shows the model's own message
        if picked.kind == "cached":
            _own_lens(job.model, model)
        else:
            _directory(job.model, picked, model)


def _directory(ref: ModelRef, picked: LensChoice, model: Any) -> None:
    key = lenses.resolve(picked, model)
    if not key.path:
        st.caption("Type the path of a tuned lens directory above.")
        return
    try:
        lens = cached.lens_object(ref, key)
    except LenskitError as exc:
        st.error(md_escape(str(exc)))
        return
    config = getattr(lens, "config", None)
    if config is not None:
        st.caption(
            f"Loaded: a tuned lens for {md_escape(config.base_model_name_or_path or 'a model')} "
            f"({config.num_hidden_layers} translators, d_model = {config.d_model})."
        )
        mismatch = lens.unembedding_mismatch(model)
        if mismatch:
            st.warning(md_escape(mismatch[0].upper() + mismatch[1:]))


def _outcome(job: jobs.BackgroundJob) -> None:
    """How the last training of this lens ended, when it did not end with the lens."""
    if job.error is not None:
        st.error(md_escape(str(job.error)))
    elif job.cancelled:
        st.info("Training stopped. Train resumes it from its last checkpoint.")
    elif job.bug is not None:
        st.error("The training stopped on a bug inside lenskit (not a problem with the input).")
        with st.expander("Traceback", expanded=False):
            st.exception(job.bug)


def _own_lens(ref: ModelRef, model: Any) -> None:
    """The model's own lens: there, training (progress), or the Train button."""
    directory = str(lenses.cache_directory(model))
    job = jobs.training_job(directory)
    if job is not None and not job.done:
        _training_progress(directory)
        return
    try:
        cached.lens_object(ref, lenses.resolve(LensChoice("cached"), model))
    except lenses.NotTrained:
        pass
    except LenskitError as exc:
        st.error(md_escape(str(exc)))
    else:
        st.caption("Trained for this model; kept in lenskit's cache.")
        return
    if job is not None:
        _outcome(job)
    st.caption(
        "An unfinished training of this model's lens is in the cache: Train resumes it."
        if lenses.unfinished(model)
        else "Not trained for this model yet. Train reads transcripts the model writes "
        "itself; it runs in the background (the default model: about 15 minutes on a CPU)."
    )
    st.button(
        "Train", key=Keys.LENS_TRAIN, type="primary", width="stretch", on_click=_train,
        args=(ref, directory),
    )  # fmt: skip


def _train(ref: ModelRef, directory: str) -> None:
    """The Train button: start the training before the script runs, so that this run draws
    its progress instead of the button."""
    model, tokenizer = cached.load(ref)
    app_state().training = directory
    jobs.start_training(model, tokenizer, directory, dict(lenses.TRAIN_OPTIONS))


@st.fragment(run_every=POLL_SECONDS)
def _training_progress(directory: str) -> None:
    """The training's progress, polled; the whole app reruns when it is done."""
    job = jobs.training_job(directory)
    if job is None:
        return
    if job.done:
        st.rerun()
    snap = job.progress()
    text = "Stopping at the next step\u2026" if job.stopping else snap.message
    st.progress(snap.fraction, text=md_escape(f"Training: {text} ({snap.elapsed:.0f} s)"))
    st.button(
        "Stop training",
        key=Keys.LENS_TRAIN_STOP,
        on_click=job.cancel,
        disabled=job.stopping,
        help="Stops at the next step; Train resumes from the last checkpoint.",
    )


def fidelity_panel(job: Job) -> None:
    """When the lens page's result was read through a tuned lens: on request, the logit lens
    and that lens side by side on held-out transcripts (computed once per model and lens)."""
    if job.lens.is_logit:
        return
    shown = st.toggle(
        "Lens fidelity: compare with the logit lens on held-out transcripts",
        key=Keys.FIDELITY,
        persist_state="session",
        help="Per read-out row: the mean KL(out \u2016 row) and how often the row's top-1 "
        "token is out's, at the chat template's tokens and at the user's text. Computed once "
        "per model and lens.",
    )
    if not shown:
        return
    try:
        report, source = cached.fidelity(job.model, cached.lens_key(job.model, job.lens))
    except LenskitError as exc:
        st.error(md_escape(str(exc)))
        return
    st.caption(
        f"On {md_escape(source)}. Lower KL and higher agreement: the lens reads the row closer "
        "to what the model finally predicts."
    )
    chart = charts.fidelity_chart(report)
    st.altair_chart(chart, theme=None, width="content", key="fidelity_chart")
