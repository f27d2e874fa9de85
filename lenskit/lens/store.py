"""A model's own trained lens, kept under lenskit's cache so it is trained once.

The directory is ``cache_dir()/lenses/<model>-<unembedding hash>-<options hash>``
(:func:`lens_cache_dir`); it is an ordinary :func:`~lenskit.lens.train.train_lens` output
directory (tuned-lens's format plus the run's checkpoint), so a killed training resumes and
the finished lens loads with :func:`~lenskit.lens.tuned.load_lens` like any other. The lens
spec ``"tuned"`` (CLI ``--lens tuned``, the app's lens choice) names it.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from lenskit.errors import InputError
from lenskit.lens.train import STATE_FILE, train_lens
from lenskit.lens.train_options import default_options
from lenskit.lens.tuned import CONFIG_FILE, PARAMS_FILE, TunedLens, unembed_hash
from lenskit.model.architecture import find_readout, model_name
from lenskit.model.gguf import cache_dir
from lenskit.progress import Progress

__all__ = [
    "CACHED_LENS",
    "cached_lens",
    "lens_cache_dir",
    "newest_cached_lens",
    "require_cached_lens",
    "train_cached_lens",
]

#: The lens spec that names the model's cached trained lens.
CACHED_LENS = "tuned"


def _key(options: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:8]


def _model_prefix(model: Any) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(model_name(model) or "model").name)[:60]
    return f"{name}-{unembed_hash(model)[:12]}-"


def lens_cache_dir(model: Any, **options: Any) -> Path:
    """Where the lens trained for ``model`` with ``options`` (over the defaults of
    :func:`~lenskit.lens.train.train_lens`) is kept. Not created here."""
    opts = {**default_options(), **options}
    return cache_dir() / "lenses" / f"{_model_prefix(model)}{_key(opts)}"


def _finished(directory: Path) -> bool:
    state = directory / STATE_FILE
    if not (state.is_file() and (directory / CONFIG_FILE).is_file()):
        return False
    if not (directory / PARAMS_FILE).is_file():
        return False
    try:
        return "result" in json.loads(state.read_text())
    except (OSError, json.JSONDecodeError):
        return False


def cached_lens(model: Any, **options: Any) -> TunedLens | None:
    """The finished cached lens of ``model`` (on its unembedding's device), or None when it
    has not been trained (or its training did not finish)."""
    directory = lens_cache_dir(model, **options)
    if not _finished(directory):
        return None
    lens = TunedLens.load(directory).to(find_readout(model).unembed.weight.device)
    lens.check(model)
    return lens


def newest_cached_lens(model: Any) -> TunedLens | None:
    """The lens trained with the default options when cached, else the most recently
    finished cached lens of ``model`` (trained with other options), else None."""
    lens = cached_lens(model)
    if lens is not None:
        return lens
    root = cache_dir() / "lenses"
    found = [d for d in root.glob(_model_prefix(model) + "*") if _finished(d)]
    if not found:
        return None
    newest = max(found, key=lambda d: (d / STATE_FILE).stat().st_mtime)
    lens = TunedLens.load(newest).to(find_readout(model).unembed.weight.device)
    lens.check(model)
    return lens


def require_cached_lens(model: Any) -> TunedLens:
    """:func:`newest_cached_lens`, or an InputError saying how to train one."""
    lens = newest_cached_lens(model)
    if lens is None:
        raise InputError(
            f"no trained lens is cached for {model_name(model) or 'this model'}: train it once "
            "with `lenskit train-lens` (no -o: it goes to the cache) or the app's Train button, "
            "or give a tuned lens directory"
        )
    return lens


def train_cached_lens(
    model: Any, tokenizer: Any, *, progress: Progress | bool | None = None, **options: Any
) -> TunedLens:
    """Train ``model``'s lens on its own chat transcripts of the bundled prompt set into
    :func:`lens_cache_dir` (resuming an unfinished run there), and return it."""
    directory = lens_cache_dir(model, **options)
    if _finished(directory):
        lens = cached_lens(model, **options)
        assert lens is not None
        return lens
    resume = (directory / STATE_FILE).is_file()
    return train_lens(model, tokenizer, None, out=directory, resume=resume, progress=progress,
                      **options)  # fmt: skip
