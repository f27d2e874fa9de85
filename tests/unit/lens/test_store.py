"""The cached lens (lenskit.lens.store): one directory per model and options, None until a
training there finishes, and an unfinished run resumed by the next train_cached_lens."""

from __future__ import annotations

import json

import conftest
import pytest
import torch

import lenskit.lens.train as train_module
from lenskit.errors import InputError
from lenskit.lens import TunedLens, cached_lens, lens_cache_dir, train_cached_lens
from lenskit.lens.store import require_cached_lens
from lenskit.lens.train import STATE_FILE
from lenskit.lens.train_options import default_options

PROMPTS = ["What is the capital of France?", "Name a colour.", "Say hello.", "Count to three."]
SMALL = dict(steps=4, checkpoint_every=2, positions=8, sequences=2, reply_tokens=2,
             eval_positions=8)  # fmt: skip


class Killed(Exception):
    """Stands for a kill in the middle of a run."""


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LENSKIT_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def small_bundled(tmp_path, monkeypatch):
    """The cached lens trains on the bundled set (321 prompts): here, on 4 prompts."""
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    load = train_module.load_prompts
    monkeypatch.setattr(train_module, "load_prompts", lambda data, **kw: load(data or path, **kw))


@pytest.fixture(scope="module")
def tok():
    return conftest.make_chatml_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return conftest.make_tiny_model("llama", len(tok))


def test_the_directory_differs_by_options_and_by_model(model, tok, cache):
    default = lens_cache_dir(model)
    assert default.parent == cache / "lenses"
    assert default == lens_cache_dir(model, **default_options())  # the defaults, spelled out
    assert lens_cache_dir(model, steps=3) != default
    assert lens_cache_dir(model, steps=3) != lens_cache_dir(model, steps=4)
    assert lens_cache_dir(model, seed=1) != default
    other = conftest.make_tiny_model("llama", len(tok), seed=1)  # another unembedding
    assert lens_cache_dir(other) != default
    assert not default.exists()  # not created by asking


def test_none_before_training_a_tuned_lens_after(model, tok, small_bundled):
    assert cached_lens(model, **SMALL) is None
    with pytest.raises(InputError, match="no trained lens is cached"):
        require_cached_lens(model)
    lens = train_cached_lens(model, tok, **SMALL)
    found = cached_lens(model, **SMALL)
    assert isinstance(found, TunedLens)
    for a, b in zip(found.parameters(), lens.parameters(), strict=True):
        assert torch.equal(a.cpu(), b.cpu())
    assert any(p.abs().sum() > 0 for p in found.parameters())
    assert cached_lens(model) is None  # the default options' lens is another one ...
    newest = require_cached_lens(model)  # ... so "tuned" falls back to the newest trained one
    for a, b in zip(newest.parameters(), lens.parameters(), strict=True):
        assert torch.equal(a.cpu(), b.cpu())
    calls = []
    again = train_cached_lens(model, tok, progress=lambda f, m: calls.append(m), **SMALL)
    assert calls == []  # found, not trained again
    for a, b in zip(again.parameters(), lens.parameters(), strict=True):
        assert torch.equal(a.cpu(), b.cpu())


def test_an_unfinished_run_is_not_returned_and_is_resumed(model, tok, small_bundled):
    def kill_after_step_2(fraction: float, message: str) -> None:
        if message.startswith("Step 2/4"):  # after its checkpoint
            raise Killed

    with pytest.raises(Killed):
        train_cached_lens(model, tok, progress=kill_after_step_2, **SMALL)
    directory = lens_cache_dir(model, **SMALL)
    state = json.loads((directory / STATE_FILE).read_text())
    assert "result" not in state  # unfinished
    assert (directory / "params.pt").is_file()  # a loadable lens of step 2 is there ...
    assert cached_lens(model, **SMALL) is None  # ... but it is not the finished lens

    messages = []
    lens = train_cached_lens(model, tok, progress=lambda f, m: messages.append(m), **SMALL)
    steps = [m.split(":")[0] for m in messages if m.startswith("Step")]
    assert steps == ["Step 3/4", "Step 4/4"]  # resumed from the checkpoint of step 2
    assert not any(m.startswith("Sampling replies") for m in messages)  # transcripts kept
    assert lens.training.steps == 4 and len(lens.training.losses) == 4
    assert "result" in json.loads((directory / STATE_FILE).read_text())
    assert isinstance(cached_lens(model, **SMALL), TunedLens)


def test_the_lens_identity_tells_tuned_lenses_apart(model):
    from lenskit.lens.lenses import lens_identity

    a, b = TunedLens.from_model(model), TunedLens.from_model(model)
    assert a.identity == b.identity and a.identity.startswith("tuned:")
    with torch.no_grad():
        b.translators[0].bias[0] = 1.0
    assert a.identity != b.identity
    assert lens_identity("logit") == "logit" and lens_identity(None) == "logit"
