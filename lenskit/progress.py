"""The progress protocol of the public API.

Every long-running function takes ``progress``: a callback ``progress(fraction, message)``
(fraction in [0, 1]), ``True`` for a tqdm bar on stderr, or None / False for silence.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

__all__ = ["Progress", "check_progress", "progress_reporter", "silent"]

#: ``progress(fraction in [0, 1], message)``.
Progress = Callable[[float, str], None]

#: Longest message a tqdm bar shows (the rest of the line is the bar).
_BAR_MESSAGE_CHARS = 90


def silent(fraction: float, message: str) -> None:
    """A progress callback that reports nothing."""


def check_progress(progress: Any) -> None:
    """TypeError unless ``progress`` is a callback, a bool or None (see progress_reporter)."""
    if not (progress is None or isinstance(progress, bool) or callable(progress)):
        raise TypeError(
            "progress must be a callback progress(fraction, message), True (a progress bar) "
            f"or None, got {type(progress).__name__}"
        )


def _tqdm_progress(desc: str) -> tuple[Progress, Callable[[], None]]:
    """A tqdm bar that appears at the first report: checks that fail before any work print
    their error on a line of their own, not after an empty bar."""
    from tqdm.auto import tqdm

    bars: list[Any] = []

    def update(fraction: float, message: str) -> None:
        if not bars:
            bars.append(
                tqdm(
                    total=100,
                    desc=desc,
                    file=sys.stderr,
                    leave=False,
                    bar_format="{l_bar}{bar}| {elapsed}",
                )
            )
        bar = bars[0]
        bar.set_description_str(message[:_BAR_MESSAGE_CHARS])
        bar.n = int(round(100 * min(max(fraction, 0.0), 1.0)))
        bar.refresh()

    def close() -> None:
        if bars:
            bars.pop().close()

    return update, close


def progress_reporter(
    progress: Progress | bool | None, desc: str
) -> tuple[Progress, Callable[[], None] | None]:
    """``(report(fraction, message), close)`` for the ``progress`` argument of the public API.

    ``progress`` is a ``progress(fraction in [0, 1], message)`` callback, True (a tqdm bar on
    stderr titled ``desc``, shown from the first report on and removed by ``close()``) or
    None / False (silent); ``close`` is None unless a bar was asked for.
    """
    check_progress(progress)
    if progress is True:
        return _tqdm_progress(desc)
    if progress is None or progress is False:
        return silent, None
    return progress, None


def scaled(report: Progress, start: float, stop: float) -> Progress:
    """``report`` for a stage that covers ``[start, stop]`` of the whole run."""
    return lambda fraction, message: report(start + (stop - start) * fraction, message)
