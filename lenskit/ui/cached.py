"""What the app caches: one model pool for the process, and results by request.

* :func:`model_pool` (``st.cache_resource``): one :class:`~lenskit.model.ModelPool` shared by
  every browser session, so two sessions on two models keep both loaded (within the pool's
  count and memory budget) instead of reloading on every run.
* :func:`lens_result`, :func:`sweep_report`, :func:`pairwise_kl` (``st.cache_data``): the
  results of :func:`lenskit.run`, keyed by the request and the :class:`~lenskit.ui.state.ModelRef`
  (spec, device, what "default" means). Results are numpy-only dataclasses: cached as objects,
  and every session gets its own copy.
* :func:`prompt_set` (``st.cache_data``): a dataset page's prompt set, the bundled one or an
  uploaded file's, keyed by the file's bytes.
* :func:`lens_object` (``st.cache_resource``): the lens of a sidebar choice on a model, loaded
  once per (model, resolved choice: :func:`lenskit.ui.lenses.resolve`); the computations above
  take the resolved choice as part of their key and put the lens object into the request
  (:func:`with_lens`). :func:`fidelity` (``st.cache_data``): the fidelity report of the logit
  lens vs a tuned lens, once per (model, lens).

The progress bars of the cached functions are made inside them: Streamlit replays the
elements a cached function made when it answers from the cache, so a bar made outside and
updated inside could not be replayed.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import streamlit as st

import lenskit
from lenskit.dataset import BUNDLED, PromptSet, load_prompts
from lenskit.errors import LenskitError
from lenskit.lens import FidelityReport, Lens, LogitLens
from lenskit.model import ModelPool, default_device, model_device
from lenskit.progress import Progress
from lenskit.requests import LensRequest, PairwiseRequest, SweepRequest
from lenskit.results import LensResult, PairwiseKL, SweepReport
from lenskit.ui import lenses
from lenskit.ui.lenses import LOGIT
from lenskit.ui.state import LensChoice, ModelRef
from lenskit.ui.text import md_escape

__all__ = [
    "bar_progress",
    "fidelity",
    "lens_key",
    "lens_object",
    "lens_result",
    "load",
    "model_pool",
    "model_ref",
    "pairwise_kl",
    "prompt_set",
    "sweep_report",
    "with_lens",
]

#: The environment variable that says what "default" loads (read by lenskit.load_model).
DEFAULT_MODEL_ENV = "LENSKIT_DEFAULT_MODEL"


def model_ref(spec: str) -> ModelRef:
    """``spec`` on the app's device (:func:`lenskit.model.default_device`), with what
    "default" means right now (so that the caches never mix two models)."""
    return ModelRef(spec, default_device(), os.environ.get(DEFAULT_MODEL_ENV, "").strip())


@st.cache_resource(show_spinner=False, max_entries=4)
def model_pool(default: str = "") -> ModelPool:
    """The process's model pool (one per meaning of "default", which only tests change)."""
    return ModelPool()


def _clamp01(x: float) -> float:
    return min(max(float(x), 0.0), 1.0)


def bar_progress(bar: Any) -> Progress:
    """A ``progress(fraction, message)`` callback that moves the Streamlit progress bar."""
    return lambda f, m: bar.progress(_clamp01(f), text=md_escape(str(m)))


@contextmanager
def _progress_bar(text: str) -> Iterator[Progress]:
    """A progress bar while the block runs, removed afterwards."""
    bar = st.progress(0.0, text=text)
    try:
        yield bar_progress(bar)
    finally:
        bar.empty()


def load(ref: ModelRef, progress: Progress | None = None) -> tuple[Any, Any]:
    """``(model, tokenizer)`` from the pool, loading them on first use; returns at once when
    the model is loaded already. Raises :class:`~lenskit.errors.ModelLoadError`."""
    return model_pool(ref.default).get(ref.spec, ref.device, progress=progress)


def device_of(model: Any) -> str:
    """Where ``model`` lives ("cpu", "cuda:0", "mps:0")."""
    return str(model_device(model))


def lens_key(ref: ModelRef, choice: LensChoice) -> LensChoice:
    """``choice`` resolved on ``ref``'s model (loaded if it is not): the cache key of the
    computations through that lens (:func:`lenskit.ui.lenses.resolve`)."""
    model, _ = load(ref)
    return lenses.resolve(choice, model)


@st.cache_resource(show_spinner=False, max_entries=8)
def lens_object(ref: ModelRef, lens: LensChoice) -> Lens:
    """The lens of a resolved choice on ``ref``'s model, loaded once (shared by the sessions:
    lenses are only read). Raises :class:`~lenskit.errors.InputError` with what to do when it
    cannot be loaded (nothing is cached then)."""
    model, _ = load(ref)
    return lenses.load(lens, model)


def with_lens(ref: ModelRef, request: Any, lens: LensChoice) -> Any:
    """``request`` with the lens object of a resolved choice in its ``lens`` field."""
    return replace(request, lens=lens_object(ref, lens))


def _run(ref: ModelRef, request: Any, lens: LensChoice, text: str) -> Any:
    model, tokenizer = load(ref)
    request = with_lens(ref, request, lens)
    with _progress_bar(text) as progress:
        return lenskit.run(model, tokenizer, request, progress=progress)


@st.cache_data(max_entries=32, show_spinner=False)
def lens_result(ref: ModelRef, request: LensRequest, lens: LensChoice = LOGIT) -> LensResult:
    """The lens of ``request`` on ``ref``'s model, read through ``lens`` (resolved)."""
    return _run(ref, request, lens, "Reading out every layer\u2026")


@st.cache_data(max_entries=16, show_spinner=False)
def sweep_report(ref: ModelRef, request: SweepRequest, lens: LensChoice = LOGIT) -> SweepReport:
    """The sweep of ``request`` (and the lens over its generation) on ``ref``'s model."""
    text = "Generating, then sweeping the blocks\u2026"
    return _run(ref, request, lens, text)


@st.cache_data(max_entries=32, show_spinner=False)
def pairwise_kl(ref: ModelRef, request: PairwiseRequest, lens: LensChoice = LOGIT) -> PairwiseKL:
    """KL between every pair of read-out rows at one position."""
    model, tokenizer = load(ref)
    return lenskit.run(model, tokenizer, with_lens(ref, request, lens))


@st.cache_data(max_entries=8, show_spinner=False)
def fidelity(ref: ModelRef, lens: LensChoice) -> tuple[FidelityReport, str]:
    """The logit lens and the lens of a resolved choice side by side
    (:func:`lenskit.lens_fidelity`) on held-out transcripts
    (:func:`lenskit.ui.lenses.fidelity_data`), and what those are in words."""
    model, tokenizer = load(ref)
    tuned = lens_object(ref, lens)
    data, source = lenses.fidelity_data(lens, tuned)
    with _progress_bar("Reading held-out transcripts through both lenses\u2026") as progress:
        report = lenskit.lens_fidelity(
            model, tokenizer, [LogitLens(), tuned], data, progress=progress
        )
    return report, source


@st.cache_data(max_entries=8, show_spinner=False)
def prompt_set(source: str, data: bytes | None, skip_invalid: bool = False) -> PromptSet:
    """The bundled prompt set (``data`` None), or an uploaded file's (``source``: its name).

    The upload is written to a temporary file of the same name and read by
    :func:`lenskit.dataset.load_prompts`, so that its messages (which name the file and the
    line) and the set's source name the user's file, not the temporary one.
    """
    if data is None:
        return load_prompts(BUNDLED, skip_invalid=skip_invalid)
    name = Path(source).name or "prompts.txt"
    with tempfile.TemporaryDirectory(prefix="lenskit-upload-") as folder:
        path = Path(folder) / name
        path.write_bytes(data)
        try:
            prompts = load_prompts(path, skip_invalid=skip_invalid)
        except LenskitError as exc:
            raise type(exc)(str(exc).replace(str(path), name)) from None
    return replace(prompts, source=name)


#: The cached computation of each kind of run: ``(model, request, resolved lens) -> result``.
COMPUTE: dict[str, Callable[[ModelRef, Any, LensChoice], Any]] = {
    "lens": lens_result,
    "sweep": sweep_report,
}
