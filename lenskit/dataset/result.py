"""The result of a dataset run: its summaries (sufficient statistics) and its records on disk."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lenskit.dataset.stats import MEAN_STATS, RATE_STATS, SufficientStats, SweepStats
from lenskit.dataset.store import RunDirectory
from lenskit.errors import InputError

__all__ = ["DatasetResult"]

#: Version of summary.json's layout.
FORMAT = 1


@dataclass
class DatasetResult:
    """A dataset run: rows x aligned columns, summed over prompts.

    Attributes:
        stats: the sufficient statistics (overall and per category).
        sweep: the causal check's statistics, or None when it was not run.
        column_labels: ``[C]`` a label per column (``"user -1"``, template tokens as shown).
        state: the prompt set (source, sha256, size), the options and the model.
        n_prompts: prompts summed over.
        directory: the run's output directory (records, parts), or None for a result read
            from JSON alone or merged from others.

    Shapes: R rows (``rows``, as :attr:`lenskit.LensResult.layer_names`), C columns
    (``columns``: -k..-1 for the user's last tokens, 0..S-1 for the template slots).
    """

    stats: SufficientStats
    sweep: SweepStats | None
    column_labels: list[str]
    state: dict[str, Any]
    n_prompts: int
    directory: Path | None = None
    _tmp: Any = field(default=None, repr=False, compare=False)

    @property
    def rows(self) -> list[str]:
        return self.stats.rows

    @property
    def columns(self) -> list[int]:
        return self.stats.columns

    @property
    def categories(self) -> list[str]:
        return self.stats.groups[1:]

    @property
    def vocab_size(self) -> int | None:
        """V of the model the run read out (entropy is at most ln V), when recorded."""
        value = self.state.get("vocab_size")
        return None if value is None else int(value)

    # --------------------------------------------------------------------------- summaries

    def summary(self, stat: str, k: int = 1, category: str | None = None) -> pd.DataFrame:
        """Rows x columns: the mean over prompts of ``stat`` (``"entropy"``,
        ``"kl_to_final"``, ``"answer_prob"``, ``"next_rank"``, ...), or for ``"answer_hit"``,
        ``"next_hit"``, ``"later_hit"``, ``"control_hit"`` the rate at which the rank is
        below ``k``, and for ``"lift"`` answer hit rate - control hit rate.

        Returns:
            DataFrame, index = row names, columns = column ints; NaN where no prompt counted.
        """
        return self.stats.frame(self.stats.estimate(stat, k, category)[0])

    def interval(
        self, stat: str, k: int = 1, category: str | None = None
    ) -> tuple[pd.DataFrame, pd.DataFrame]:
        """``(low, high)`` of the 95% interval of :meth:`summary` (Wilson for rates, normal
        for means and the lift)."""
        _, low, high, _ = self.stats.estimate(stat, k, category)
        return self.stats.frame(low), self.stats.frame(high)

    def summary_frame(self, stat: str, k: int = 1, category: str | None = None) -> pd.DataFrame:
        """Long table for charts: layer, row, column, label, value, low, high, n."""
        value, low, high, n = self.stats.estimate(stat, k, category)
        r, c = np.meshgrid(np.arange(len(self.rows)), np.arange(len(self.columns)), indexing="ij")
        r, c = r.ravel(), c.ravel()
        return pd.DataFrame(
            {
                "layer": np.asarray(self.rows, dtype=object)[r],
                "row": r,
                "column": np.asarray(self.columns)[c],
                "label": np.asarray(self.column_labels, dtype=object)[c],
                "value": value[r, c],
                "low": low[r, c],
                "high": high[r, c],
                "n": n[r, c],
            }
        )

    @staticmethod
    def statistics() -> tuple[str, ...]:
        """The names :meth:`summary` takes."""
        return MEAN_STATS + RATE_STATS

    # ------------------------------------------------------------------------------ records

    def _directory(self) -> RunDirectory:
        if self.directory is None:
            raise InputError(
                "this result has no run directory (it was read from JSON or merged): load the "
                "run's directory with DatasetResult.load(dir) for its records."
            )
        return RunDirectory(self.directory)

    @property
    def records(self) -> pd.DataFrame:
        """One row per (prompt, row, column), read from the run's parts."""
        return self._directory().read_all("records")

    @property
    def prompts(self) -> pd.DataFrame:
        """One row per prompt: reply, answer / next / control tokens, correct."""
        return self._directory().read_all("prompts")

    @property
    def sweep_records(self) -> pd.DataFrame:
        """One row per (prompt, block, generated token) of the causal check."""
        return self._directory().read_all("sweep")

    # ------------------------------------------------------------------- merge and files

    def merge(self, other: DatasetResult) -> DatasetResult:
        """Both runs' statistics summed (shards of one prompt set, or several sets)."""
        if self.column_labels != other.column_labels:
            raise InputError("cannot merge dataset results with different columns")
        sweep = None
        if self.sweep is not None and other.sweep is not None:
            sweep = self.sweep.merge(other.sweep)
        state = {"merged": [self.state, other.state]}
        return DatasetResult(
            self.stats.merge(other.stats), sweep, list(self.column_labels), state,
            self.n_prompts + other.n_prompts,
        )  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "state": self.state,
            "n_prompts": self.n_prompts,
            "column_labels": self.column_labels,
            "stats": self.stats.to_dict(),
            "sweep": None if self.sweep is None else self.sweep.to_dict(),
        }

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_dict(cls, data: dict[str, Any], directory: Path | None = None) -> DatasetResult:
        if data.get("format") != FORMAT:
            raise InputError(f"not a lenskit dataset summary (format {data.get('format')!r})")
        sweep = data.get("sweep")
        return cls(
            stats=SufficientStats.from_dict(data["stats"]),
            sweep=None if sweep is None else SweepStats.from_dict(sweep),
            column_labels=list(data["column_labels"]),
            state=data["state"],
            n_prompts=int(data["n_prompts"]),
            directory=directory,
        )

    @classmethod
    def from_json(cls, text: str) -> DatasetResult:
        return cls.from_dict(json.loads(text))

    @classmethod
    def load(
        cls, directory: str | Path, *, temporary: tempfile.TemporaryDirectory | None = None
    ) -> DatasetResult:
        """The finished run in ``directory`` (its summary.json, and its parts for records).

        ``temporary``: the TemporaryDirectory holding ``directory``, kept as long as the
        result lives (a run without an output directory)."""
        run = RunDirectory(directory)
        result = cls.from_dict(run.read_summary(), directory=run.path)
        result._tmp = temporary
        return result
