"""lenskit's tuned lens against tuned-lens 0.2.0, the reference implementation of its files.

A lens saved by lenskit must load in tuned-lens and read out the same, and a lens made and
saved by tuned-lens must load in lenskit and read out the same: same config, same
translators, same translated states and logits per row (row i = ``hidden_states[i]``,
0 = embeddings, as ``h + translator_i(h)``, then the final norm and the unembedding).

The other side is played twice:

* ``package``: tuned-lens itself (``tuned_lens.nn.lenses.TunedLens``: ``from_model``,
  ``from_model_and_pretrained(model, directory)``, ``save``, ``transform_hidden``,
  ``forward``). Skipped when it is not installed (``pip install --no-deps tuned-lens==0.2.0``:
  these parts need only torch, transformers, huggingface_hub and numpy).
* ``transcribed``: the same parts of tuned-lens 0.2.0 transcribed from its source
  (``tuned_lens/nn/lenses.py``, ``nn/unembed.py``, ``load_artifacts.py``, ``utils.tensor_hash``,
  ``model_surgery.get_final_norm``), so that the format stays checked where the package is
  not installed.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import conftest
import numpy as np
import pytest
import torch

from lenskit.lens import TunedLens, load_lens
from lenskit.lens.readout import ReadoutEngine

# Families tuned-lens 0.2.0 knows (model_surgery.get_final_norm) and whose unembedding reads
# the last hidden state directly (not OPT with project_out), tied and untied unembeddings.
FAMILIES = ("llama", "llama_tied", "gpt2", "gpt_neox")
IMPLEMENTATIONS = ("package", "transcribed")
TOL = {"rtol": 1e-5, "atol": 1e-5}
N_TOKENS = 12


def _tensor_hash(array: np.ndarray) -> str:
    """tuned_lens.utils.tensor_hash."""
    return hashlib.sha256(str.encode(np.array_str(array, precision=1))).hexdigest()


def _final_norm(model: Any) -> torch.nn.Module:
    """tuned_lens.model_surgery.get_final_norm for the families of this file."""
    base = model.base_model
    for name in ("norm", "ln_f", "final_layer_norm"):  # llama, gpt2, gpt_neox
        if getattr(base, name, None) is not None:
            return getattr(base, name)
    raise NotImplementedError(f"Unknown model type {type(base)}")


class TranscribedTunedLens(torch.nn.Module):
    """tuned-lens 0.2.0's ``TunedLens`` (with its ``Unembed``): what touches the files and
    the read-out, line for line."""

    _KEYS = (
        "base_model_name_or_path", "d_model", "num_hidden_layers", "bias",
        "base_model_revision", "unembed_hash", "lens_type",
    )  # fmt: skip

    def __init__(self, model: Any, config: dict[str, Any]):
        super().__init__()
        self.final_norm = copy.deepcopy(_final_norm(model))
        self.unembedding = copy.deepcopy(model.get_output_embeddings())
        self.requires_grad_(False)
        self.config = config
        weight = self.unembedding.weight.data.detach().cpu().float().numpy()
        config["unembed_hash"] = _tensor_hash(weight)
        w = self.unembedding.weight
        dtype = w.dtype if torch.is_floating_point(w) else torch.float16
        d = config["d_model"]
        translator = torch.nn.Linear(d, d, bias=config["bias"], dtype=dtype)
        translator.weight.data.zero_()
        translator.bias.data.zero_()
        self.layer_translators = torch.nn.ModuleList(
            [copy.deepcopy(translator) for _ in range(config["num_hidden_layers"])]
        )

    @classmethod
    def from_model(cls, model: Any) -> TranscribedTunedLens:
        config = {
            "base_model_name_or_path": model.config.name_or_path,
            "d_model": model.config.hidden_size,
            "num_hidden_layers": model.config.num_hidden_layers,
            "bias": True,
            "base_model_revision": None,
            "unembed_hash": None,
            "lens_type": "linear_tuned_lens",
        }
        return cls(model, config)

    @classmethod
    def from_model_and_pretrained(cls, model: Any, directory: str) -> TranscribedTunedLens:
        path = Path(directory)
        assert (path / "config.json").exists() and (path / "params.pt").exists()
        raw = json.loads((path / "config.json").read_text())
        for key in set(raw) - set(cls._KEYS):
            logging.warning(f"Ignoring config key '{key}'")
            del raw[key]
        config = {"bias": True, "base_model_revision": None, "unembed_hash": None}
        config.update({"lens_type": "linear_tuned_lens", **raw})
        lens = cls(model, dict(config))
        if config["unembed_hash"] and lens.config["unembed_hash"] != config["unembed_hash"]:
            logging.warning("The unembedding matrix hash does not match the lens' hash.")
        lens.layer_translators.load_state_dict(torch.load(path / "params.pt"))
        return lens

    def save(self, directory: str | Path) -> None:
        path = Path(directory)
        path.mkdir(exist_ok=True, parents=True)
        torch.save(self.layer_translators.state_dict(), path / "params.pt")
        with open(path / "config.json", "w") as f:
            json.dump(self.config, f)

    def transform_hidden(self, h: torch.Tensor, idx: int) -> torch.Tensor:
        return h + self.layer_translators[idx](h)

    def forward(self, h: torch.Tensor, idx: int) -> torch.Tensor:
        return self.unembedding(self.final_norm(self.transform_hidden(h, idx)))


def _implementation(name: str) -> Any:
    if name == "package":
        lenses = pytest.importorskip("tuned_lens.nn.lenses")
        return lenses.TunedLens
    return TranscribedTunedLens


def _config(reference: Any) -> dict[str, Any]:
    config = reference.config
    return dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)


@pytest.fixture(scope="module", params=FAMILIES)
def model(request):
    return conftest.strong_model(conftest.make_tiny_model(request.param, 64))


def _perturb(params: Any, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.copy_(torch.randn(p.shape, generator=gen).to(p.dtype) * 0.3)


def _check_same_lens(model: Any, ours: TunedLens, theirs: Any) -> None:
    """Same config and translators, and the same translated states and logits per inner row
    as lenskit's read-out engine (row "out" has no translator on either side)."""
    assert _config(theirs) == dataclasses.asdict(ours.config)
    n_layers = ours.config.num_hidden_layers
    assert len(theirs.layer_translators) == len(ours.translators) == n_layers
    for i in range(n_layers):
        for key in ("weight", "bias"):
            a = getattr(ours.translators[i], key)
            b = getattr(theirs.layer_translators[i], key).float()
            assert torch.equal(a, b), f"translator {i} {key}"

    engine = ReadoutEngine(model, ours)
    ids = torch.randint(1, 64, (N_TOKENS,), generator=torch.Generator().manual_seed(1))
    hidden, _ = engine.forward(ids.tolist())
    assert len(hidden) == n_layers + 1
    positions = range(N_TOKENS)
    ours_logits = engine.row_logits(hidden, positions)  # [T, R, V]
    inner = torch.stack([h[0] for h in hidden[:-1]], dim=1)  # [T, L, d]
    ours_states = ours.translate(inner, list(range(n_layers)))
    with torch.inference_mode():
        for i in range(n_layers):
            theirs_state = theirs.transform_hidden(hidden[i][0], i)
            torch.testing.assert_close(ours_states[:, i], theirs_state, **TOL, msg=f"row {i}")
            theirs_logits = theirs(hidden[i][0], i)
            torch.testing.assert_close(ours_logits[:, i], theirs_logits, **TOL, msg=f"row {i}")
    # the lens changed the read-out (so the comparison above is not the logit lens's)
    logit = ReadoutEngine(model, "logit").row_logits(hidden, positions)
    assert (logit[:, :-1] - ours_logits[:, :-1]).abs().max() > 0.1
    assert torch.equal(logit[:, -1], ours_logits[:, -1])


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_a_lens_saved_by_lenskit_loads_in_tuned_lens(impl, model, tmp_path, caplog):
    reference = _implementation(impl)
    ours = TunedLens.from_model(model)
    _perturb(ours.parameters(), seed=0)
    ours.save(tmp_path)
    with caplog.at_level(logging.WARNING):
        theirs = reference.from_model_and_pretrained(model, str(tmp_path))
    # tuned-lens warns on the root logger of an unknown config key or another unembedding
    said = [r.getMessage() for r in caplog.records if r.name == "root"]
    assert not said, said
    _check_same_lens(model, ours, theirs)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_a_lens_saved_by_tuned_lens_loads_in_lenskit(impl, model, tmp_path):
    reference = _implementation(impl)
    theirs = reference.from_model(model)
    _perturb(theirs.layer_translators.parameters(), seed=1)
    theirs.save(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no unknown key, the same unembedding hash
        ours = load_lens(model, tmp_path)
    assert isinstance(ours, TunedLens)
    _check_same_lens(model, ours, theirs)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_a_bf16_lens_saved_by_tuned_lens_loads_in_lenskit(impl, tmp_path):
    """tuned-lens makes its translators in the unembedding's dtype, so a bf16 model's lens
    file holds bf16 tensors: lenskit reads them as fp32 (exactly) and the hash still fits."""
    reference = _implementation(impl)
    model = conftest.make_tiny_model("llama", 64).to(torch.bfloat16)
    theirs = reference.from_model(model)
    _perturb(theirs.layer_translators.parameters(), seed=2)
    theirs.save(tmp_path)
    assert {v.dtype for v in torch.load(tmp_path / "params.pt").values()} == {torch.bfloat16}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ours = load_lens(model, tmp_path)
    assert _config(theirs) == dataclasses.asdict(ours.config)
    for a, b in zip(ours.parameters(), theirs.layer_translators.parameters(), strict=True):
        assert a.dtype == torch.float32 and torch.equal(a, b.float())
