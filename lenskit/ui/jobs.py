"""Work in a background thread, so that a long run keeps the page responsive.

A :class:`BackgroundJob` runs ``work(progress)`` in a daemon thread. The thread makes no
Streamlit call: the work only reports ``progress(fraction, message)``, which the job keeps in
a small record under a lock; a page reads that record (:meth:`BackgroundJob.progress`) from
its own script runs, e.g. in an ``st.fragment(run_every=...)`` that polls, and takes the
outcome (:attr:`~BackgroundJob.result`, :attr:`~BackgroundJob.error` for the library's
message, :attr:`~BackgroundJob.bug` for anything else) once :attr:`~BackgroundJob.done`.
The job lives in the session's state, so the user may switch pages and come back to it.

:meth:`BackgroundJob.cancel` asks the work to stop: the next progress report raises
:class:`Cancelled` inside the work (between two batches of a dataset run).

:func:`start_dataset_run` starts a dataset run (:func:`lenskit.dataset.dataset_result`) this
way, into a temporary output directory of its own that lives as long as its result
(:class:`DatasetRun`), so that the library's resume / overwrite rules never meet another run.

:func:`start_training` trains a model's own tuned lens into lenskit's cache
(:func:`lenskit.lens.store.train_cached_lens`) this way. Trainings are kept per lens
directory for the whole process (:func:`training_job`), not per session: every session sees a
training going on, none starts a second into the same directory, and a stopped or killed one
resumes from its last checkpoint when it is started again.
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from lenskit.dataset import DatasetResult, PromptSet, dataset_result, prompt_items
from lenskit.errors import LenskitError
from lenskit.lens.store import train_cached_lens
from lenskit.lens.tuned import TunedLens
from lenskit.progress import Progress
from lenskit.requests import DatasetRequest

__all__ = [
    "BackgroundJob",
    "Cancelled",
    "DatasetRun",
    "Snapshot",
    "first_prompts",
    "start_dataset_run",
    "start_training",
    "training_job",
]

T = TypeVar("T")

#: The progress message before the work's first report.
STARTING = "Starting\u2026"


class Cancelled(Exception):
    """Raised inside the work by its progress callback once the user stopped the job."""


@dataclass(frozen=True)
class Snapshot:
    """The job's progress at one moment: ``fraction`` in [0, 1], the work's last message,
    and the seconds since it started."""

    fraction: float
    message: str
    elapsed: float


class BackgroundJob(Generic[T]):
    """``work(progress)`` in a daemon thread, with its progress and its outcome.

    Exactly one of :attr:`result`, :attr:`error` (a :class:`~lenskit.errors.LenskitError`:
    the user's mistake, shown as the library's message), :attr:`bug` (any other exception)
    or :attr:`cancelled` is set once :attr:`done` is true (what the thread wrote before it
    set ``done`` is visible to every thread that sees ``done``).
    """

    def __init__(self, work: Callable[[Progress], T], name: str = "lenskit-job") -> None:
        self._work = work
        self._lock = threading.Lock()
        self._fraction, self._message = 0.0, STARTING
        self._stop = threading.Event()
        self._done = threading.Event()
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self.result: T | None = None
        self.error: LenskitError | None = None
        self.bug: BaseException | None = None
        self.cancelled = False

    def start(self) -> BackgroundJob[T]:
        self._started = time.monotonic()
        self._thread.start()
        return self

    def report(self, fraction: float, message: str) -> None:
        """The progress callback the work is given; raises :class:`Cancelled` once the job
        was asked to stop."""
        if self._stop.is_set():
            raise Cancelled()
        with self._lock:
            self._fraction = min(max(float(fraction), 0.0), 1.0)
            self._message = str(message)

    def _main(self) -> None:
        try:
            self.result = self._work(self.report)
        except Cancelled:
            self.cancelled = True
        except LenskitError as exc:
            self.error = exc
        except BaseException as exc:  # kept for the page to show
            self.bug = exc
        finally:
            self._done.set()

    def progress(self) -> Snapshot:
        with self._lock:
            return Snapshot(self._fraction, self._message, time.monotonic() - self._started)

    @property
    def done(self) -> bool:
        return self._done.is_set()

    @property
    def stopping(self) -> bool:
        """The user asked it to stop and it has not yet."""
        return self._stop.is_set() and not self.done

    def cancel(self) -> None:
        """Ask the work to stop at its next progress report."""
        self._stop.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until it is done (at most ``timeout`` s); whether it is."""
        return self._done.wait(timeout)


@dataclass
class DatasetRun:
    """A finished dataset run and the temporary directory holding its records."""

    result: DatasetResult
    output: tempfile.TemporaryDirectory

    def close(self) -> None:
        """Remove the run's directory (its result's records go with it)."""
        self.output.cleanup()


def first_prompts(prompts: PromptSet, limit: int | None) -> PromptSet:
    """The set's first ``limit`` prompts (None: all), their lines kept so that messages still
    name them, the hash that of the prompts kept."""
    if limit is None or limit >= len(prompts):
        return prompts
    items = prompts.items[:limit]
    sha = prompt_items(items).sha256
    return PromptSet(items, f"{prompts.source} (first {limit})", sha, list(prompts.skipped))


def _dataset_work(
    model: Any, tokenizer: Any, prompts: PromptSet, request: DatasetRequest
) -> Callable[[Progress], DatasetRun]:
    def work(progress: Progress) -> DatasetRun:
        output = tempfile.TemporaryDirectory(prefix="lenskit-app-dataset-")
        try:
            result = dataset_result(
                model, tokenizer, prompts, request, output_dir=output.name, overwrite=True,
                progress=progress,
            )  # fmt: skip
        except BaseException:
            output.cleanup()
            raise
        return DatasetRun(result, output)

    return work


def start_dataset_run(
    model: Any,
    tokenizer: Any,
    prompts: PromptSet,
    request: DatasetRequest,
    limit: int | None = None,
) -> BackgroundJob[DatasetRun]:
    """Start :func:`lenskit.dataset.dataset_result` of ``prompts`` (the first ``limit``) in
    the background, into a new temporary directory (removed on failure, else with
    :meth:`DatasetRun.close`)."""
    work = _dataset_work(model, tokenizer, first_prompts(prompts, limit), request)
    return BackgroundJob(work, "lenskit-dataset").start()


#: The trainings of the process by lens directory (the last one of each), and their lock.
_TRAININGS: dict[str, BackgroundJob[TunedLens]] = {}
_TRAININGS_LOCK = threading.Lock()


def training_job(directory: str) -> BackgroundJob[TunedLens] | None:
    """The last training started into ``directory`` in this process (running or done)."""
    with _TRAININGS_LOCK:
        return _TRAININGS.get(directory)


def start_training(
    model: Any, tokenizer: Any, directory: str, options: dict[str, Any]
) -> BackgroundJob[TunedLens]:
    """Train ``model``'s own lens with ``options`` into lenskit's cache (``directory`` is
    :func:`lenskit.lens.store.lens_cache_dir` of them) in the background, resuming an
    unfinished run there; the training already going on into ``directory`` if there is one."""
    with _TRAININGS_LOCK:
        job = _TRAININGS.get(directory)
        if job is not None and not job.done:
            return job

        def work(progress: Progress) -> TunedLens:
            return train_cached_lens(model, tokenizer, progress=progress, **options)

        job = _TRAININGS[directory] = BackgroundJob(work, "lenskit-train-lens").start()
        return job
