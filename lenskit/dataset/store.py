"""A dataset run's output directory: its state, its per-batch parts, resuming, the summary.

Layout::

    DIR/state.json                  prompt set (source, sha256, size) and options
    DIR/parts/records-P.parquet     one row per (prompt, row, column) of a batch
    DIR/parts/sweep-P.parquet       the causal check of that batch (sweep runs only)
    DIR/parts/prompts-P.parquet     one row per prompt of that batch: reply, targets
    DIR/summary.json                the merged sufficient statistics (written last)

``P`` is the batch's first prompt index. A batch is committed by its prompts file, written
last and atomically (a temporary name, then a rename): a run killed mid-batch leaves files
without it, which the next start deletes, and the done prompts are those of the prompts files.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pandas as pd

from lenskit.errors import InputError

__all__ = ["RunDirectory"]

STATE = "state.json"
SUMMARY = "summary.json"
PARTS = "parts"
_KINDS = ("records", "sweep", "prompts")


class RunDirectory:
    """The files of one dataset run in ``path``."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).expanduser()
        self.parts_dir = self.path / PARTS

    # ------------------------------------------------------------------------------- state

    def state(self) -> dict[str, Any] | None:
        """The recorded state, or None when the directory holds no run."""
        try:
            return json.loads((self.path / STATE).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise InputError(
                f"{self.path / STATE} cannot be read ({exc}): use --overwrite"
            ) from exc

    def prepare(self, state: dict[str, Any], overwrite: bool) -> None:
        """Start or resume a run with ``state`` (one process: rank 0); ``overwrite`` starts
        afresh, deleting the run's own files there.

        Raises:
            InputError: the directory holds a run of other options or another prompt set, or
                other files, and ``overwrite`` is False.
        """
        if self.path.exists() and not self.path.is_dir():
            raise InputError(f"{self.path} is a file: give a directory for the run's output.")
        old = self.state() if self.path.is_dir() else None
        if old is not None and old != state and not overwrite:
            raise InputError(_mismatch(self.path, old, state))
        foreign = self._foreign_files() if old is None else []
        if foreign and not overwrite:
            raise InputError(
                f"{self.path} is not empty and holds no lenskit dataset run (e.g. "
                f"{foreign[0].name}): use another directory, or --overwrite (overwrite=True) "
                "to write the run there anyway."
            )
        if overwrite:
            self.clear()
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        _write_atomic(self.path / STATE, json.dumps(state, indent=1, sort_keys=True))
        self._drop_uncommitted()

    def check(self, state: dict[str, Any]) -> None:
        """Another process's view: the state rank 0 prepared must be ``state``."""
        if self.state() != state:
            raise InputError(_mismatch(self.path, self.state() or {}, state))

    def clear(self) -> None:
        """Delete this run's own files (parts, state, summary); other files stay."""
        shutil.rmtree(self.parts_dir, ignore_errors=True)
        for name in (STATE, SUMMARY):
            (self.path / name).unlink(missing_ok=True)

    def _foreign_files(self) -> list[Path]:
        if not self.path.is_dir():
            return []
        return [p for p in sorted(self.path.iterdir()) if p.name not in (STATE, SUMMARY, PARTS)]

    def _drop_uncommitted(self) -> None:
        committed = set(self.part_ids())
        for path in self.parts_dir.iterdir():
            kind, _, rest = path.name.partition("-")
            part = rest.split(".")[0]
            if path.name.endswith(".tmp") or (kind in _KINDS and part not in committed):
                path.unlink(missing_ok=True)

    # ------------------------------------------------------------------------------- parts

    def part_ids(self) -> list[str]:
        """The committed parts, in prompt order."""
        if not self.parts_dir.is_dir():
            return []
        names = [p.name for p in self.parts_dir.glob("prompts-*.parquet")]
        return sorted(n[len("prompts-") : -len(".parquet")] for n in names)

    def done_prompts(self) -> set[int]:
        """Prompt indices whose batch is committed."""
        done: set[int] = set()
        for part in self.part_ids():
            done.update(int(i) for i in self.read("prompts", part)["prompt_index"])
        return done

    def write_part(self, first_prompt: int, frames: dict[str, pd.DataFrame]) -> None:
        """Write one batch's frames; the prompts frame last, as the commit."""
        part = f"{first_prompt:07d}"
        for kind in sorted(frames, key=lambda k: k == "prompts"):
            target = self.parts_dir / f"{kind}-{part}.parquet"
            tmp = target.with_name(target.name + ".tmp")
            frames[kind].to_parquet(tmp, index=False)
            os.replace(tmp, target)

    def read(self, kind: str, part: str) -> pd.DataFrame:
        """One committed part's frame of ``kind`` (empty when the part has none)."""
        path = self.parts_dir / f"{kind}-{part}.parquet"
        return pd.read_parquet(path) if path.is_file() else pd.DataFrame()

    def read_all(self, kind: str) -> pd.DataFrame:
        """Every committed part's frame of ``kind``, in prompt order."""
        frames = [self.read(kind, part) for part in self.part_ids()]
        frames = [f for f in frames if not f.empty]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def write_summary(self, summary: dict[str, Any]) -> None:
        _write_atomic(self.path / SUMMARY, json.dumps(summary))

    def read_summary(self) -> dict[str, Any]:
        try:
            return json.loads((self.path / SUMMARY).read_text())
        except FileNotFoundError:
            raise InputError(
                f"{self.path} holds no finished dataset run (no {SUMMARY}): run it (again) "
                "with this directory to finish it."
            ) from None


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _mismatch(path: Path, old: dict[str, Any], new: dict[str, Any]) -> str:
    diffs = []
    for key in ("prompts", "options", "model"):
        if old.get(key) != new.get(key):
            diffs.append(f"{key}: {old.get(key)} there, {new.get(key)} now")
    detail = "; ".join(diffs) or "a different state"
    return (
        f"{path} holds a run of another prompt set or other options ({detail}). Use another "
        "directory, or --overwrite (overwrite=True) to replace it."
    )
