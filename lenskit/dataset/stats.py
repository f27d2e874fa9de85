"""Mergeable sufficient statistics of a dataset run, and the summaries drawn from them.

Per group (all prompts, then each category), row and column: counts, sums and sums of squares
of every per-cell quantity, and hit counts (rank < k) at k = 1, 5, 10. Shards of a run add up
exactly, so processes and resumed runs merge by addition. Means come with a normal 95%
interval; rates (hits) with a Wilson 95% interval. The lift is paired per prompt: the mean,
over the prompts with both a gold answer and a control token, of (answer hit - control hit),
with a normal interval; on a set where every prompt has a gold answer it equals the answer
hit rate minus the control hit rate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from lenskit.errors import InputError

__all__ = ["HIT_KS", "MEAN_STATS", "RATE_STATS", "SufficientStats", "SweepStats", "interval_kind"]

#: The k of the hit rates (rank < k; rank 0 = top-1).
HIT_KS = (1, 5, 10)
#: Per-cell quantities whose mean a summary gives.
MEAN_STATS = (
    "entropy",
    "kl_to_final",
    "answer_prob",
    "answer_rank",
    "next_prob",
    "next_rank",
    "later_rank",
    "control_prob",
    "control_rank",
)
#: Rates: the share of prompts whose rank is below k (and the lift, their difference).
RATE_STATS = ("answer_hit", "next_hit", "later_hit", "control_hit", "lift")
_HIT_SOURCES = {"answer_hit": "answer_rank", "next_hit": "next_rank", "later_hit": "later_rank"}
_Z95 = 1.959963984540054


@dataclass
class SufficientStats:
    """Sums over prompts per (group, row, column).

    Attributes:
        groups: ``["all", *categories]``.
        rows: R row names.
        columns: C column ints.
        sums: name -> ``[G, R, C]`` float64 arrays (see the module doc).
    """

    groups: list[str]
    rows: list[str]
    columns: list[int]
    sums: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def empty(cls, groups: Sequence[str], rows: Sequence[str], columns: Sequence[int]) -> Any:
        shape = (len(groups), len(rows), len(columns))
        names = [f"{s}_{part}" for s in MEAN_STATS for part in ("n", "sum", "sumsq")]
        names += [f"{h}_n" for h in (*_HIT_SOURCES, "control_hit")]
        names += [f"{h}_at{k}" for h in (*_HIT_SOURCES, "control_hit") for k in HIT_KS]
        names += [f"lift_at{k}_{part}" for k in HIT_KS for part in ("sum", "sumsq")]
        names += ["lift_n"]
        return cls(list(groups), list(rows), list(columns), {n: np.zeros(shape) for n in names})

    def add_records(self, records: pd.DataFrame) -> None:
        """Add the cells of ``records`` (the dataset records' columns) to the sums."""
        if records.empty:
            return
        row_of = {name: i for i, name in enumerate(self.rows)}
        col_of = {c: j for j, c in enumerate(self.columns)}
        r = records["layer"].map(row_of).to_numpy()
        c = records["column"].map(col_of).to_numpy()
        if np.isnan(r.astype(float)).any() or np.isnan(c.astype(float)).any():
            raise InputError("these records have rows or columns this summary does not have")
        r, c = r.astype(int), c.astype(int)
        for g, group in enumerate(self.groups):
            keep = np.ones(len(records), bool) if g == 0 else (records["category"] == group)
            keep = np.asarray(keep, bool)
            self._add_group(records[keep], g, r[keep], c[keep])

    def _add_group(self, part: pd.DataFrame, g: int, r: np.ndarray, c: np.ndarray) -> None:
        def add(name: str, values: np.ndarray, mask: np.ndarray) -> None:
            np.add.at(self.sums[name], (g, r[mask], c[mask]), values[mask])

        for stat in MEAN_STATS:
            x = part[stat].to_numpy(dtype=float)
            ok = ~np.isnan(x)
            add(f"{stat}_n", np.ones_like(x), ok)
            add(f"{stat}_sum", x, ok)
            add(f"{stat}_sumsq", x * x, ok)
        ranks = {h: part[src].to_numpy(dtype=float) for h, src in _HIT_SOURCES.items()}
        ranks["control_hit"] = part["control_rank"].to_numpy(dtype=float)
        for hit, rank in ranks.items():
            ok = ~np.isnan(rank)
            add(f"{hit}_n", np.ones_like(rank), ok)
            for k in HIT_KS:
                add(f"{hit}_at{k}", (rank < k).astype(float), ok)
        both = ~np.isnan(ranks["answer_hit"]) & ~np.isnan(ranks["control_hit"])
        add("lift_n", np.ones(len(part)), both)
        for k in HIT_KS:
            d = (ranks["answer_hit"] < k).astype(float) - (ranks["control_hit"] < k).astype(float)
            add(f"lift_at{k}_sum", d, both)
            add(f"lift_at{k}_sumsq", d * d, both)

    def merge(self, other: SufficientStats) -> SufficientStats:
        """The sums of both (the same groups, rows and columns)."""
        if (self.groups, self.rows, self.columns) != (other.groups, other.rows, other.columns):
            raise InputError(
                "cannot merge dataset summaries of different shapes: groups, rows or columns "
                "differ (another model, options or prompt set)"
            )
        return SufficientStats(self.groups, self.rows, self.columns, _add(self.sums, other.sums))

    def flat(self) -> np.ndarray:
        """Every sum in one float64 vector (name order): what processes all-reduce."""
        return _flat(self.sums)

    def with_flat(self, vector: np.ndarray) -> SufficientStats:
        """A copy whose sums are read back from :meth:`flat`'s layout."""
        return SufficientStats(self.groups, self.rows, self.columns, _unflat(self.sums, vector))

    def to_dict(self) -> dict[str, Any]:
        return {
            "groups": self.groups,
            "rows": self.rows,
            "columns": self.columns,
            "sums": {n: v.tolist() for n, v in sorted(self.sums.items())},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SufficientStats:
        sums = {n: np.asarray(v, dtype=float) for n, v in data["sums"].items()}
        return cls(
            list(data["groups"]), list(data["rows"]), [int(c) for c in data["columns"]], sums
        )

    # ----------------------------------------------------------------------------- summaries

    def _group(self, category: str | None) -> int:
        return _group_index(self.groups, category)

    def estimate(
        self, stat: str, k: int = 1, category: str | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(value, low, high, n)`` ``[R, C]`` arrays: the mean (or rate) and its 95% interval."""
        g = self._group(category)
        if stat in MEAN_STATS:
            n = self.sums[f"{stat}_n"][g]
            return (*_normal(self.sums[f"{stat}_sum"][g], self.sums[f"{stat}_sumsq"][g], n), n)
        if k not in HIT_KS:
            raise InputError(f"k must be one of {HIT_KS}, got {k!r}")
        if stat == "lift":
            n = self.sums["lift_n"][g]
            s, ss = self.sums[f"lift_at{k}_sum"][g], self.sums[f"lift_at{k}_sumsq"][g]
            return (*_normal(s, ss, n), n)
        if stat in RATE_STATS:
            n = self.sums[f"{stat}_n"][g]
            return (*_wilson(self.sums[f"{stat}_at{k}"][g], n), n)
        raise InputError(f"unknown statistic {stat!r}; choose one of {MEAN_STATS + RATE_STATS}")

    def frame(self, values: np.ndarray) -> pd.DataFrame:
        """``[R, C]`` values as a DataFrame (index = row names, columns = column ints)."""
        return pd.DataFrame(values, index=pd.Index(self.rows, name="layer"), columns=self.columns)


def interval_kind(stat: str) -> str:
    """How a statistic's 95% interval is computed, for tooltips."""
    if stat in MEAN_STATS or stat == "lift":
        return "normal 95% interval of the mean"
    return "Wilson 95% interval of the rate"


def _normal(total: np.ndarray, total_sq: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, ...]:
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = total / n
        var = np.maximum(total_sq / n - mean * mean, 0.0) * n / np.maximum(n - 1, 1)
        half = _Z95 * np.sqrt(var / n)
    return mean, mean - half, mean + half


def _wilson(hits: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, ...]:
    z2 = _Z95 * _Z95
    with np.errstate(invalid="ignore", divide="ignore"):
        p = hits / n
        centre = (p + z2 / (2 * n)) / (1 + z2 / n)
        half = _Z95 * np.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return p, centre - half, centre + half


def _add(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    if set(a) != set(b):
        raise InputError("cannot merge dataset summaries with different statistics")
    return {n: a[n] + b[n] for n in a}


def _flat(sums: dict[str, np.ndarray]) -> np.ndarray:
    return np.concatenate([sums[n].ravel() for n in sorted(sums)])


def _unflat(like: dict[str, np.ndarray], vector: np.ndarray) -> dict[str, np.ndarray]:
    out, at = {}, 0
    for name in sorted(like):
        size = like[name].size
        out[name] = np.asarray(vector[at : at + size], dtype=float).reshape(like[name].shape)
        at += size
    return out


@dataclass
class SweepStats:
    """Sums of the causal check per (group, block, generated token) and per (group, block).

    ``kl_*``: KL(clean || skip at the template positions) ``[G, L, N]`` (N = max_new_tokens);
    ``flip_n`` / ``flip_count`` ``[G, L]``: prompts whose reply held the gold answer, and
    those among them whose answer token is no longer the top-1 at its position when block l
    is skipped (teacher-forced).
    """

    groups: list[str]
    n_blocks: int
    max_new_tokens: int
    sums: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def empty(cls, groups: Sequence[str], n_blocks: int, max_new_tokens: int) -> SweepStats:
        cell = (len(groups), n_blocks, max_new_tokens)
        sums = {n: np.zeros(cell) for n in ("kl_n", "kl_sum", "kl_sumsq")}
        sums |= {n: np.zeros(cell[:2]) for n in ("flip_n", "flip_count")}
        return cls(list(groups), n_blocks, max_new_tokens, sums)

    def add_records(self, records: pd.DataFrame) -> None:
        """Add sweep records (prompt_index, category, block, gen_index, kl, flipped)."""
        for g, group in enumerate(self.groups):
            part = records if g == 0 else records[records["category"] == group]
            b, j = part["block"].to_numpy(int), part["gen_index"].to_numpy(int)
            kl = part["kl"].to_numpy(float)
            np.add.at(self.sums["kl_n"], (g, b, j), 1.0)
            np.add.at(self.sums["kl_sum"], (g, b, j), kl)
            np.add.at(self.sums["kl_sumsq"], (g, b, j), kl * kl)
            flips = part.drop_duplicates(["prompt_index", "block"])
            flips = flips[flips["flipped"].notna()]
            fb = flips["block"].to_numpy(int)
            np.add.at(self.sums["flip_n"], (g, fb), 1.0)
            np.add.at(self.sums["flip_count"], (g, fb), flips["flipped"].to_numpy(float))

    def merge(self, other: SweepStats) -> SweepStats:
        return SweepStats(
            self.groups, self.n_blocks, self.max_new_tokens, _add(self.sums, other.sums)
        )

    def flat(self) -> np.ndarray:
        return _flat(self.sums)

    def with_flat(self, vector: np.ndarray) -> SweepStats:
        return SweepStats(
            self.groups, self.n_blocks, self.max_new_tokens, _unflat(self.sums, vector)
        )

    def mean_kl(self, category: str | None = None) -> tuple[np.ndarray, ...]:
        """``(mean, low, high, n)`` ``[L, N]``: KL per (block, generated token), nats."""
        g = _group_index(self.groups, category)
        n = self.sums["kl_n"][g]
        return (*_normal(self.sums["kl_sum"][g], self.sums["kl_sumsq"][g], n), n)

    def flip_rate(self, category: str | None = None) -> tuple[np.ndarray, ...]:
        """``(rate, low, high, n)`` ``[L]``: the share of answered prompts whose answer flips."""
        g = _group_index(self.groups, category)
        n = self.sums["flip_n"][g]
        return (*_wilson(self.sums["flip_count"][g], n), n)

    def to_dict(self) -> dict[str, Any]:
        return {
            "groups": self.groups,
            "n_blocks": self.n_blocks,
            "max_new_tokens": self.max_new_tokens,
            "sums": {n: v.tolist() for n, v in sorted(self.sums.items())},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SweepStats:
        sums = {n: np.asarray(v, dtype=float) for n, v in data["sums"].items()}
        return cls(list(data["groups"]), int(data["n_blocks"]), int(data["max_new_tokens"]), sums)


def _group_index(groups: list[str], category: str | None) -> int:
    name = "all" if category is None else category
    if name not in groups:
        raise InputError(f"unknown category {name!r}; the run has {groups[1:]}")
    return groups.index(name)
