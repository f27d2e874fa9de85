"""The tuned lens (Belrose et al., 2023): one learned affine translator per inner row.

Row i (0 = embeddings, 1..L-1 = block outputs) is read out as ``h + W_i h + b_i``, then the
model's own final norm, unembedding and logit transform (docs/architecture.md, "Rows"); row
"out" never goes through a lens. The translators are residual and start at zero, so an
untrained tuned lens is the logit lens exactly.

Files: a lens is a directory in tuned-lens's own format, so lenses trained by either tool
load in the other:

* ``config.json``: ``base_model_name_or_path``, ``d_model``, ``num_hidden_layers``, ``bias``,
  ``base_model_revision``, ``unembed_hash``, ``lens_type`` (``"linear_tuned_lens"``); unknown
  keys are ignored with a warning.
* ``params.pt``: the state dict of a ``torch.nn.ModuleList`` of ``nn.Linear(d, d)``, keys
  ``"{i}.weight"`` ``[d, d]`` and ``"{i}.bias"`` ``[d]`` for i = 0 .. num_hidden_layers - 1.
  It is read with ``torch.load(weights_only=True)``: a lens file never runs code.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lenskit.errors import InputError
from lenskit.lens.lenses import LENSES, Lens, LogitLens
from lenskit.model.architecture import decoder_layers, find_readout

__all__ = [
    "CONFIG_FILE",
    "LENS_TYPE",
    "PARAMS_FILE",
    "TunedLens",
    "TunedLensConfig",
    "load_lens",
    "model_shape",
    "unembed_hash",
]

CONFIG_FILE = "config.json"
PARAMS_FILE = "params.pt"
#: The only lens type of tuned-lens's format that lenskit reads.
LENS_TYPE = "linear_tuned_lens"


def unembed_hash(model: Any) -> str:
    """tuned-lens's fingerprint of the unembedding: sha256 of numpy's summarised print of
    the fp32 weight at precision 1 (robust to dtype; it sees the matrix's corners only)."""
    weight = find_readout(model).unembed.weight.detach()
    array = weight.to("cpu", torch.float32).numpy()
    # numpy's defaults spelled out: a caller's np.set_printoptions must not change the hash.
    with np.printoptions(
        precision=1, threshold=1000, edgeitems=3, linewidth=75, suppress=False, nanstr="nan",
        infstr="inf", sign="-", floatmode="maxprec", formatter=None, legacy=False,
    ):  # fmt: skip
        return hashlib.sha256(np.array_str(array, precision=1).encode()).hexdigest()


def model_shape(model: Any) -> tuple[int, int]:
    """``(d_model, number of decoder blocks)`` of a causal LM."""
    config = model.config
    text = getattr(config, "text_config", None)
    d = getattr(text, "hidden_size", None) or getattr(config, "hidden_size", None)
    if not isinstance(d, int):
        d = int(model.get_input_embeddings().weight.shape[-1])
    return int(d), len(decoder_layers(model))


@dataclass
class TunedLensConfig:
    """``config.json`` of a lens directory (tuned-lens's ``TunedLensConfig``)."""

    base_model_name_or_path: str
    d_model: int
    num_hidden_layers: int
    bias: bool = True
    base_model_revision: str | None = None
    unembed_hash: str | None = None
    lens_type: str = LENS_TYPE

    @classmethod
    def from_dict(cls, raw: Any, where: str) -> TunedLensConfig:
        """The config of a parsed ``config.json``; InputError naming ``where`` when a key is
        missing or of the wrong type, a warning per unknown key."""
        if not isinstance(raw, dict):
            raise InputError(f"{where}: expected a JSON object, got {type(raw).__name__}")
        known = {f.name for f in fields(cls)}
        for key in sorted(set(raw) - known):
            warnings.warn(f"{where}: ignoring unknown config key {key!r}", stacklevel=3)
        values = {k: v for k, v in raw.items() if k in known}
        for key in ("base_model_name_or_path", "d_model", "num_hidden_layers"):
            if key not in values:
                raise InputError(f"{where}: the config has no {key!r}")
        for key in ("d_model", "num_hidden_layers"):
            value = values[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"{where}: {key} must be a positive integer, got {value!r}")
        if not isinstance(values.get("bias", True), bool):
            raise InputError(f"{where}: bias must be true or false, got {values['bias']!r}")
        if values.get("lens_type", LENS_TYPE) != LENS_TYPE:
            raise InputError(
                f"{where}: lens_type {values['lens_type']!r} is not supported (only {LENS_TYPE!r})"
            )
        return cls(**values)


class TunedLens(Lens):
    """A tuned lens: inner row i read out as ``h + W_i h + b_i`` (then norm, unembedding).

    Attributes:
        config: what the lens was trained for (:class:`TunedLensConfig`).
        translators: ``nn.ModuleList`` of ``num_hidden_layers`` ``nn.Linear(d, d)``.
        training: what :func:`lenskit.lens.train.train_lens` reports about the run that made
            this lens (None for a lens loaded from files).
    """

    name = "tuned"
    #: One translator per block row; the sub-block rows ("i.attn") have none.
    supports_sublayers = False

    def __init__(self, config: TunedLensConfig, translators: nn.ModuleList | None = None):
        self.config = config
        if translators is None:
            d = config.d_model
            translators = nn.ModuleList(
                nn.Linear(d, d, bias=config.bias) for _ in range(config.num_hidden_layers)
            )
            with torch.no_grad():
                for linear in translators:
                    linear.weight.zero_()
                    if linear.bias is not None:
                        linear.bias.zero_()
        self.translators = translators
        self.training: Any = None

    @classmethod
    def from_model(cls, model: Any, *, bias: bool = True, revision: str | None = None) -> TunedLens:
        """A zero (= logit lens) tuned lens for ``model``, translators in fp32 on the device
        of its unembedding."""
        d, n_layers = model_shape(model)
        name = str(getattr(model.config, "name_or_path", "") or "")
        config = TunedLensConfig(name, d, n_layers, bias, revision, unembed_hash(model))
        lens = cls(config)
        lens.translators.to(find_readout(model).unembed.weight.device)
        return lens

    @property
    def identity(self) -> str:
        digest = hashlib.sha256()
        for key, value in sorted(self.translators.state_dict().items()):
            digest.update(key.encode())
            digest.update(value.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
        return f"{self.name}:{digest.hexdigest()[:16]}"

    def parameters(self) -> list[nn.Parameter]:
        """The trainable parameters (every translator's weight and bias)."""
        return list(self.translators.parameters())

    def check(self, model: Any) -> None:
        d, n_layers = model_shape(model)
        cfg = self.config
        if (cfg.d_model, cfg.num_hidden_layers) != (d, n_layers):
            raise InputError(
                f"this tuned lens was trained for a model with d_model={cfg.d_model} and "
                f"{cfg.num_hidden_layers} blocks ({cfg.base_model_name_or_path or 'unnamed'}), "
                f"but the model has d_model={d} and {n_layers} blocks: load the lens trained "
                "for this model, or train one (lenskit train-lens)."
            )
        mismatch = self.unembedding_mismatch(model)
        if mismatch:
            warnings.warn(mismatch, stacklevel=2)

    def unembedding_mismatch(self, model: Any) -> str | None:
        """What to warn of when ``model``'s unembedding (its hash) is not the one this lens
        was trained with; None when it is, or when the lens records no hash."""
        cfg = self.config
        if not cfg.unembed_hash or cfg.unembed_hash == unembed_hash(model):
            return None
        return (
            "the model's unembedding differs from the one this tuned lens was trained with "
            f"({cfg.base_model_name_or_path or 'unnamed'}): its read-out may be off."
        )

    def translate(self, states: torch.Tensor, rows: Sequence[int]) -> torch.Tensor:
        rows = list(rows)
        if states.shape[-2] != len(rows):
            raise InputError(f"{states.shape[-2]} rows of states for {len(rows)} row indices")
        out = []
        for j, row in enumerate(rows):
            if isinstance(row, float) or not 0 <= row < len(self.translators):
                raise InputError(
                    f"the tuned lens has no translator for row {row!r} (it has one per block "
                    f"row 0..{len(self.translators) - 1}, none for the sub-block rows)"
                )
            linear = self.translators[int(row)]
            h = states[..., j, :]
            weight = linear.weight.to(h.device)
            bias = None if linear.bias is None else linear.bias.to(h.device)
            x = h.to(weight.dtype)
            out.append((x + nn.functional.linear(x, weight, bias)).to(states.dtype))
        return torch.stack(out, dim=-2)

    def to(self, device: torch.device | str) -> TunedLens:
        """Move the translators to ``device`` (returns the lens)."""
        self.translators.to(device)
        return self

    def save(self, directory: str | Path) -> Path:
        """Write ``config.json`` and ``params.pt`` (tuned-lens's format) into ``directory``."""
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().clone() for k, v in self.translators.state_dict().items()}
        torch.save(state, path / PARAMS_FILE)
        (path / CONFIG_FILE).write_text(json.dumps(asdict(self.config), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> TunedLens:
        """A lens directory's lens (fp32, on the CPU); InputError naming the file at fault."""
        path = Path(directory)
        config = _read_config(path / CONFIG_FILE)
        state = _read_params(path / PARAMS_FILE)
        lens = cls(config)
        expected = lens.translators.state_dict()
        missing = sorted(set(expected) - set(state), key=_key_order)
        extra = sorted(set(state) - set(expected), key=_key_order)
        if missing or extra:
            raise InputError(
                f"{path / PARAMS_FILE}: the parameters do not fit {CONFIG_FILE} "
                f"(num_hidden_layers={config.num_hidden_layers}, bias={config.bias}): missing "
                f"{_few(missing)}, unexpected {_few(extra)}"
            )
        for key, value in state.items():
            if tuple(value.shape) != tuple(expected[key].shape):
                raise InputError(
                    f"{path / PARAMS_FILE}: {key} has shape {tuple(value.shape)}, expected "
                    f"{tuple(expected[key].shape)} (d_model={config.d_model})"
                )
        lens.translators.load_state_dict({k: v.float() for k, v in state.items()})
        return lens


def _key_order(key: str) -> tuple[int, str]:
    head, _, tail = key.partition(".")
    return (int(head) if head.isdigit() else -1, tail)


def _few(keys: list[str], shown: int = 4) -> str:
    if not keys:
        return "none"
    return ", ".join(keys[:shown]) + (f" and {len(keys) - shown} more" if len(keys) > shown else "")


def _read_config(path: Path) -> TunedLensConfig:
    if not path.is_file():
        raise InputError(f"{path}: no such file (a tuned lens directory holds {CONFIG_FILE})")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not a readable JSON file ({exc})") from None
    return TunedLensConfig.from_dict(raw, str(path))


def _read_params(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise InputError(f"{path}: no such file (a tuned lens directory holds {PARAMS_FILE})")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(
            f"{path}: refused: not a plain file of tensors (read with weights_only=True, a lens "
            f"file never runs code): {first}"
        ) from None
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise InputError(f"{path}: expected a dict of tensors (a ModuleList's state dict)")
    return state


def load_lens(model: Any, spec: str | Path | Lens | None) -> Lens:
    """The lens ``spec`` names, checked against ``model``.

    ``spec``: a :class:`~lenskit.lens.lenses.Lens` (checked, returned), None or ``"logit"``
    (the logit lens), another name of :data:`~lenskit.lens.lenses.LENSES`, ``"tuned"`` (the
    model's own lens from lenskit's cache, :mod:`lenskit.lens.store`), or a directory
    holding a tuned lens (``config.json`` + ``params.pt``), moved to the device of the
    model's unembedding.

    Raises:
        InputError: an unknown name, a missing or bad lens file (naming it), or a lens for
            another model shape (naming both).
    """
    if spec is None:
        lens: Lens = LogitLens()
    elif isinstance(spec, Lens):
        lens = spec
    elif isinstance(spec, str) and spec in LENSES:
        lens = LENSES[spec]()
    elif spec == "tuned":
        from lenskit.lens.store import require_cached_lens

        return require_cached_lens(model)
    elif isinstance(spec, (str, Path)) and Path(spec).is_dir():
        lens = TunedLens.load(spec).to(find_readout(model).unembed.weight.device)
    else:
        raise InputError(
            f"unknown lens {str(spec)!r}: give one of {(*LENSES, 'tuned')} or a tuned lens "
            f"directory (holding {CONFIG_FILE} and {PARAMS_FILE})"
        )
    lens.check(model)
    return lens
