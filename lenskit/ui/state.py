"""The app's session state, typed: widget keys in :class:`Keys`, everything else in :class:`AppState`.

Streamlit keeps a widget's value in ``st.session_state`` under the widget's key, so the form
fields, selectors and sliders live there, under the names listed once in :class:`Keys`. What the
app itself remembers between reruns (the last good results and what they were computed for,
the messages of the last run, the run in progress, chart remount counters) lives in one
:class:`AppState` object per browser session, read with :func:`app_state`. Nothing here is
shared between sessions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import streamlit as st

from lenskit.dataset import DatasetResult
from lenskit.requests import DatasetRequest, LensRequest, SweepRequest
from lenskit.results import LensResult, SweepReport

__all__ = [
    "STATE_KEY",
    "AppState",
    "DatasetSpec",
    "DatasetState",
    "Job",
    "Keys",
    "LensChoice",
    "LensState",
    "Message",
    "ModelRef",
    "SweepState",
    "app_state",
]

#: The ``st.session_state`` key of the session's :class:`AppState`.
STATE_KEY = "lenskit_app"

Level = Literal["error", "warning", "info"]
Kind = Literal["lens", "sweep"]
LensKind = Literal["logit", "cached", "dir"]


class Keys:
    """Widget keys (``st.session_state[Keys.PROMPT]`` is the prompt field's text)."""

    # Sidebar (the logit-lens form)
    EXAMPLE = "example"
    MODEL_CHOICE = "model_choice"
    MODEL_PATH = "model_path"
    PROMPT = "prompt"
    CHAT = "chat"
    SYSTEM = "system"
    TOP_K = "top_k"
    TARGET = "target"
    LENS_SUBMIT = "lens_submit"
    # Sidebar, below the form: the lens
    LENS_CHOICE = "lens_choice"
    LENS_DIR = "lens_dir"
    SUBLAYERS = "sublayers"
    LENS_TRAIN = "lens_train"
    LENS_TRAIN_STOP = "lens_train_stop"
    # Logit-lens page
    METRIC = "metric"
    DETAIL_RANGE = "detail_range"
    DRILL_POS = "drill_pos"
    FIDELITY = "fidelity"
    # Generation & interventions page
    SWEEP_LAYERS = "sweep_layers"
    SWEEP_MAX_NEW = "sweep_max_new"
    SWEEP_SEED = "sweep_seed"
    SWEEP_INTERVENTION = "sweep_intervention"
    SWEEP_POS_MODE = "sweep_pos_mode"
    SWEEP_POSITIONS = "sweep_positions"
    SWEEP_SUBMIT = "sweep_submit"
    SWEEP_SCALE = "sweep_scale"
    GEN_METRIC = "gen_metric"
    PAIR_POS = "pair_pos"
    # Dataset page
    DS_SOURCE = "ds_source"
    DS_FILE = "ds_file"
    DS_SKIP_INVALID = "ds_skip_invalid"
    DS_LIMIT = "ds_limit"
    DS_USER_TOKENS = "ds_user_tokens"
    DS_MAX_NEW = "ds_max_new"
    DS_TOP_K = "ds_top_k"
    DS_BATCH = "ds_batch"
    DS_SEED = "ds_seed"
    DS_SWEEP = "ds_sweep"
    DS_SUBMIT = "ds_submit"
    DS_STAT = "ds_stat"
    DS_K = "ds_k"
    DS_CATEGORY = "ds_category"
    DS_LAYER = "ds_layer"
    DS_COLUMN = "ds_column"
    DS_PROMPT = "ds_prompt"


@dataclass(frozen=True)
class Message:
    """A message for the user; ``text`` is markdown-safe (user text escaped)."""

    level: Level
    text: str


@dataclass(frozen=True)
class ModelRef:
    """Which model a computation runs on: part of every cache key.

    Attributes:
        spec: what the user chose ("default", a hub id, a directory or a .gguf file).
        device: the device it is loaded on (:func:`lenskit.model.default_device`).
        default: what "default" means right now (``$LENSKIT_DEFAULT_MODEL``, "" for the
            embedded model).
    """

    spec: str
    device: str
    default: str = ""


@dataclass(frozen=True)
class LensChoice:
    """Which lens reads the inner rows: the sidebar's choice, part of every job.

    The request a page builds holds the logit lens in its ``lens`` field until the model is
    loaded; then :func:`lenskit.ui.cached.lens_object` loads the chosen lens and it replaces
    that field (:func:`lenskit.ui.cached.with_lens`). The cached computations are keyed by the
    choice *resolved* (:func:`lenskit.ui.lenses.resolve`): ``path`` and ``stamp`` filled in.

    Attributes:
        kind: ``"logit"``; ``"cached"`` (the model's own lens trained here, kept in lenskit's
            cache: :mod:`lenskit.lens.store`); ``"dir"`` (a tuned-lens directory).
        path: the directory (for ``"dir"`` as the user typed it; once resolved, for
            ``"cached"`` too, the cache's directory of the model's lens).
        stamp: once resolved, the lens file's modification time (ns; 0 when it has none), so
            that a lens trained or replaced in place is a new cache key.
    """

    kind: LensKind = "logit"
    path: str = ""
    stamp: int = 0

    @property
    def is_logit(self) -> bool:
        return self.kind == "logit"


@dataclass(frozen=True)
class Job:
    """One run: a request on a model through a lens. Kept as the pending run while it runs,
    and with its result as what that result was computed for."""

    kind: Kind
    model: ModelRef
    request: LensRequest | SweepRequest
    lens: LensChoice = LensChoice()


@dataclass
class LensState:
    """The last good logit-lens run and the messages of the latest attempt."""

    job: Job | None = None
    result: LensResult | None = None
    messages: list[Message] = field(default_factory=list)


@dataclass
class SweepState:
    """The last good sweep and the messages of the latest attempt.

    ``n_blocks`` and ``prompt_ids`` are the model and prompt the sweep form's inputs were last
    fitted to (a new model resets the layers, a new prompt the picked positions).
    """

    job: Job | None = None
    report: SweepReport | None = None
    messages: list[Message] = field(default_factory=list)
    n_blocks: int | None = None
    prompt_ids: tuple[int, ...] | None = None


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset run as the user asked for it: kept as the pending run until it is handed
    to the background, and with its result as what that result was computed for.

    Attributes:
        model: the model it runs on.
        request: the options (:class:`~lenskit.requests.DatasetRequest`).
        source: ``"bundled"`` or the uploaded file's name.
        data: the uploaded file's bytes (None for the bundled set).
        limit: only the first ``limit`` prompts (None: all).
        skip_invalid: leave the file's bad lines out instead of stopping at the first.
        lens: the lens (``request.lens`` is the logit lens until the run starts).
    """

    model: ModelRef
    request: DatasetRequest
    source: str
    data: bytes | None = field(default=None, repr=False)
    limit: int | None = None
    skip_invalid: bool = False
    lens: LensChoice = LensChoice()


@dataclass
class DatasetState:
    """The dataset page: the last good run, the run in the background, and messages.

    Attributes:
        spec, result: the last good run and what it was asked for.
        output: the :class:`lenskit.ui.jobs.DatasetRun` holding ``result`` and its temporary
            directory (its records; removed when another result replaces it).
        records, replies: ``result.records`` and ``result.prompts``, read once (None until
            first needed).
        job: the run in the background (a :class:`lenskit.ui.jobs.BackgroundJob`), or None.
        running: what ``job`` was asked for.
        pending: a run started and not yet handed to the background (the prompts are read
            and the model loaded in the script first); left behind, it was interrupted.
        rerun: the user asked to run ``pending`` again.
        open_lens: a prompt was sent to the sidebar: switch to the lens page and run it.
        messages: the messages of the latest attempt.
        bug: an exception the background run ended with that is not the library's message.
    """

    spec: DatasetSpec | None = None
    result: DatasetResult | None = None
    output: Any = None
    records: Any = None
    replies: Any = None
    job: Any = None
    running: DatasetSpec | None = None
    pending: DatasetSpec | None = None
    rerun: bool = False
    open_lens: bool = False
    messages: list[Message] = field(default_factory=list)
    bug: BaseException | None = None


@dataclass
class AppState:
    """Everything one browser session remembers besides its widgets' values.

    Attributes:
        lens: the logit-lens run (shown on both pages).
        sweep: the intervention sweep.
        dataset: the dataset page (its run in the background, its result).
        pending: the runs started and not yet finished, by kind. A run is recorded here before
            it starts and removed when it ends (with a result or a message); a record left at
            the start of a script run means that run was interrupted.
        rerun: a kind whose pending run the user asked to run again.
        run_requested: run the sidebar's form on this script run (an example was picked).
        started: the first script run is done (it runs the example prompt).
        training: the lens directory of the training this session started
            (:func:`lenskit.ui.jobs.training_job`), until its lens is first run.
        model_device: where the last loaded model lives (e.g. "cpu"), for the sidebar.
        chart_generation: remount counters of the charts with selections (see
            :func:`lenskit.ui.widgets.chart_key`).
    """

    lens: LensState = field(default_factory=LensState)
    sweep: SweepState = field(default_factory=SweepState)
    dataset: DatasetState = field(default_factory=DatasetState)
    pending: dict[str, Job] = field(default_factory=dict)
    rerun: Kind | None = None
    run_requested: bool = False
    started: bool = False
    training: str | None = None
    model_device: str | None = None
    chart_generation: dict[str, int] = field(default_factory=dict)


def app_state() -> AppState:
    """This session's :class:`AppState` (made on first use)."""
    state = st.session_state.get(STATE_KEY)
    if not isinstance(state, AppState):
        state = AppState()
        st.session_state[STATE_KEY] = state
    return state
