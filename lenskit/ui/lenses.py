"""The app's lenses: what each choice of the sidebar's lens loads, and the data its fidelity
is measured on. No Streamlit calls here (:mod:`lenskit.ui.cached` caches what these return,
:mod:`lenskit.ui.lens_panel` draws the choice).

Choices (:class:`~lenskit.ui.state.LensChoice`):

* ``"logit"``: the logit lens;
* ``"cached"``: the model's own tuned lens trained here, kept in lenskit's cache
  (:mod:`lenskit.lens.store`), trained with :data:`TRAIN_OPTIONS` by the sidebar's Train
  button (:func:`lenskit.ui.jobs.start_training`);
* ``"dir"``: a tuned lens directory (tuned-lens's format), loaded with
  :func:`lenskit.lens.tuned.load_lens`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lenskit.dataset import bundled_prompts
from lenskit.errors import InputError
from lenskit.lens.lenses import Lens, LogitLens
from lenskit.lens.store import cached_lens, lens_cache_dir
from lenskit.lens.train import HELDOUT_FILE, STATE_FILE
from lenskit.lens.tuned import PARAMS_FILE, load_lens
from lenskit.ui.state import LensChoice

__all__ = [
    "CHOICES",
    "FIDELITY_PROMPTS",
    "FIDELITY_TRANSCRIPTS",
    "LOGIT",
    "TRAIN_OPTIONS",
    "NotTrained",
    "cache_directory",
    "describe",
    "fidelity_data",
    "load",
    "resolve",
    "unfinished",
]

#: The sidebar's lens choices and their labels.
CHOICES: dict[str, str] = {
    "logit": "Logit lens",
    "cached": "Tuned lens (trained here)",
    "dir": "Tuned lens from a directory",
}
LOGIT = LensChoice()
#: The options the app trains the model's own lens with, over the defaults of
#: :func:`lenskit.lens.train.train_lens` (empty: the defaults, the lens that ``lenskit
#: train-lens`` without ``-o`` and ``--lens tuned`` use too). Tests make them tiny.
TRAIN_OPTIONS: dict[str, Any] = {}
#: The most held-out transcripts a fidelity report reads.
FIDELITY_TRANSCRIPTS = 64
#: Without held-out transcripts of the lens's training: this many bundled prompts instead.
FIDELITY_PROMPTS = 16


class NotTrained(InputError):
    """The model's own tuned lens is not trained yet (the message says how to train it)."""


def cache_directory(model: Any) -> Path:
    """Where ``model``'s own lens (trained with :data:`TRAIN_OPTIONS`) is kept."""
    return lens_cache_dir(model, **TRAIN_OPTIONS)


def unfinished(model: Any) -> bool:
    """A training of ``model``'s own lens was started and did not finish (it resumes)."""
    return (cache_directory(model) / STATE_FILE).is_file()


def _stamp(directory: Path) -> int:
    try:
        return (directory / PARAMS_FILE).stat().st_mtime_ns
    except OSError:
        return 0


def resolve(choice: LensChoice, model: Any) -> LensChoice:
    """The choice as a cache key: the lens's directory and its file's stamp filled in."""
    if choice.kind == "logit":
        return LOGIT
    if choice.kind == "cached":
        directory = cache_directory(model)
    elif not choice.path.strip():
        return LensChoice("dir")
    else:
        directory = Path(choice.path.strip()).expanduser()
    return LensChoice(choice.kind, str(directory), _stamp(directory))


def load(choice: LensChoice, model: Any) -> Lens:
    """The lens of a resolved choice, checked against ``model`` (on its device).

    Raises:
        InputError: the model's own lens is not trained yet; no directory, not a directory,
            or a lens directory that :func:`~lenskit.lens.tuned.load_lens` refuses (its
            message names the file at fault, or the two shapes).
    """
    if choice.kind == "logit":
        return LogitLens()
    if choice.kind == "cached":
        lens = cached_lens(model, **TRAIN_OPTIONS)
        if lens is None:
            raise NotTrained(
                "The tuned lens of this model is not trained yet: press Train under Lens in "
                "the sidebar (it trains once, in the background, and is kept in lenskit's "
                "cache), or choose another lens."
            )
        return lens
    if not choice.path:
        raise InputError(
            "Type the path of a tuned lens directory (holding config.json and params.pt) "
            "under Lens in the sidebar, or choose another lens."
        )
    if not Path(choice.path).is_dir():
        raise InputError(
            f"{choice.path}: no such directory (a tuned lens directory holds config.json and "
            "params.pt)"
        )
    return load_lens(model, choice.path)


def describe(choice: LensChoice) -> str:
    """The choice in words, for captions: "logit lens", "tuned lens (trained here)",
    "tuned lens from DIR" (DIR as typed: escape it for markdown)."""
    if choice.kind == "logit":
        return "logit lens"
    if choice.kind == "cached":
        return "tuned lens (trained here)"
    return f"tuned lens from {choice.path or '?'}"


def _heldout_file(path: Path) -> list[dict[str, Any]] | None:
    """The held-out transcripts a training saved (``heldout.pt``), or None when there are
    none or they do not read as such (a file of tensors only: ``weights_only=True``)."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # an unreadable file: the bundled prompts stand in
        return None
    keys = {"input_ids", "template_mask", "user_mask"}
    if (
        isinstance(data, list)
        and data
        and all(isinstance(d, dict) and keys <= set(d) for d in data)
    ):
        return data
    return None


def fidelity_data(choice: LensChoice, lens: Lens) -> tuple[list[Any], str]:
    """What the fidelity of a resolved choice is measured on, and that in words: the
    held-out transcripts of the lens's training (its directory's ``heldout.pt``, else
    ``lens.training``), at most :data:`FIDELITY_TRANSCRIPTS`; without them the first
    :data:`FIDELITY_PROMPTS` bundled prompts in the chat template."""
    heldout = None
    if choice.path and (Path(choice.path) / HELDOUT_FILE).is_file():
        heldout = _heldout_file(Path(choice.path) / HELDOUT_FILE)
    training = getattr(lens, "training", None)
    if heldout is None and training is not None and getattr(training, "heldout", None):
        heldout = list(training.heldout)
    if heldout:
        shown = heldout[:FIDELITY_TRANSCRIPTS]
        return shown, (
            f"{len(shown)} held-out transcripts of the lens's own training (model-written "
            "chat transcripts it was not trained on)"
        )
    prompts = [item.prompt for item in bundled_prompts().items[:FIDELITY_PROMPTS]]
    return prompts, (
        f"the first {len(prompts)} of lenskit's own prompts in the chat template (the lens "
        "came without held-out transcripts)"
    )
