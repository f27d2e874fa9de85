"""Training a tuned lens on a tiny model: the held-out KL falls, a killed run resumes to the
same lens, progress is reported, the held-out split is fixed by the seed, files are written."""

from __future__ import annotations

import json

import conftest
import pytest
import torch

import lenskit.lens.train as train_module
from lenskit.errors import InputError
from lenskit.lens import TunedLens, load_lens, train_lens
from lenskit.lens.train import (
    CHECKPOINT_FILE,
    HELDOUT_FILE,
    STATE_FILE,
    TRANSCRIPTS_FILE,
    split_heldout,
)
from lenskit.text.prompts import encode_prompt

PROMPTS = [
    "What is the capital of France?",
    "What is the capital of Japan?",
    "Name a colour.",
    "Count to three.",
    "Say hello.",
    "What is two plus two?",
    "Who are you?",
    "Tell me a fact.",
    "What is a lens?",
    "Name a city in Australia.",
]
SMALL = dict(reply_tokens=6, sequences=3, positions=48, heldout_percent=20, eval_positions=96)


@pytest.fixture(scope="module")
def tok():
    return conftest.make_chatml_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return conftest.strong_model(conftest.make_tiny_model("llama", len(tok)))


def _params(lens: TunedLens) -> list[torch.Tensor]:
    return [p.detach().clone() for p in lens.parameters()]


# A tiny random model needs larger steps than Adam's default rate (sized for real models).
@pytest.mark.parametrize("optimizer, lr_scale", [("adam", 30.0), ("sgd", 1.0)])
def test_training_lowers_the_heldout_kl_and_writes_a_lens(
    model, tok, tmp_path, optimizer, lr_scale
):
    calls = []
    lens = train_lens(
        model, tok, PROMPTS, steps=30, out=tmp_path, progress=lambda f, m: calls.append((f, m)),
        optimizer=optimizer, lr_scale=lr_scale, **SMALL,
    )  # fmt: skip
    log = lens.training
    assert len(log.heldout_kl_before) == len(log.heldout_kl_after) == 3  # rows emb, 1, 2
    assert sum(log.heldout_kl_after) < 0.7 * sum(log.heldout_kl_before)
    assert log.steps == 30 and len(log.losses) == 30
    fractions = [f for f, _ in calls]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert any(m.startswith("Step 30/30") for _, m in calls)
    assert any(m.startswith("Sampling replies") for _, m in calls)
    for name in ("config.json", "params.pt", CHECKPOINT_FILE, STATE_FILE, TRANSCRIPTS_FILE):
        assert (tmp_path / name).is_file(), name
    loaded = load_lens(model, tmp_path)
    for a, b in zip(loaded.parameters(), lens.parameters(), strict=True):
        assert torch.equal(a, b)
    summary = json.loads((tmp_path / STATE_FILE).read_text())["result"]
    assert summary["heldout_kl_after"] == pytest.approx(log.heldout_kl_after)
    # The model is left as it was: no gradients, requires_grad restored.
    assert all(p.grad is None and p.requires_grad for p in model.parameters())


def test_heldout_split_is_fixed_by_the_seed_and_saved(model, tok, tmp_path):
    train, held = split_heldout(50, 10, seed=0)
    assert (train, held) == split_heldout(50, 10, seed=0)
    assert held != split_heldout(50, 10, seed=1)[1]
    assert len(held) == 5 and sorted(train + held) == list(range(50))
    assert split_heldout(5, 0, seed=0) == ([0, 1, 2, 3, 4], [])
    with pytest.raises(InputError, match="nothing to train on"):
        split_heldout(1, 10, seed=0)

    lens = train_lens(model, tok, PROMPTS, steps=1, out=tmp_path, **SMALL)
    saved = torch.load(tmp_path / HELDOUT_FILE, weights_only=True)
    assert len(saved) == 2 == len(lens.training.heldout)
    suffix = encode_prompt(tok, PROMPTS[0]).tokens[
        encode_prompt(tok, PROMPTS[0]).template_positions[0] :
    ]
    suffix_ids = tok.convert_tokens_to_ids(suffix)
    held_prompts = {PROMPTS[i] for i in split_heldout(len(PROMPTS), 20, seed=0)[1]}
    for record in saved:
        assert set(record) == {"input_ids", "template_mask", "user_mask"}
        ids, template, user = record["input_ids"], record["template_mask"], record["user_mask"]
        assert ids.dtype == torch.int64 and template.dtype == user.dtype == torch.bool
        assert ids[template].tolist() == suffix_ids  # the template's tokens, then the reply
        assert tok.decode(ids[user]).strip() in held_prompts
        assert int(template.nonzero()[0]) == int(user.nonzero()[-1]) + 1


def test_a_killed_run_resumes_to_the_same_lens(model, tok, tmp_path, monkeypatch):
    whole = train_lens(
        model, tok, PROMPTS, steps=6, checkpoint_every=2, out=tmp_path / "a", **SMALL
    )

    def kill(fraction, message):
        if message.startswith("Step 5/6"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_lens(
            model, tok, PROMPTS, steps=6, checkpoint_every=2, out=tmp_path / "b", progress=kill,
            **SMALL,
        )  # fmt: skip
    assert torch.load(tmp_path / "b" / CHECKPOINT_FILE, weights_only=True)["step"] == 4
    with pytest.raises(InputError, match="resume"):
        train_lens(model, tok, PROMPTS, steps=6, checkpoint_every=2, out=tmp_path / "b", **SMALL)
    with pytest.raises(InputError, match="other options"):
        train_lens(model, tok, PROMPTS, steps=7, out=tmp_path / "b", resume=True, **SMALL)

    def no_sampling(*args, **kwargs):
        raise AssertionError("the transcripts are cached in the output directory")

    monkeypatch.setattr(train_module, "chat_transcripts", no_sampling)
    steps = []
    resumed = train_lens(
        model, tok, PROMPTS, steps=6, checkpoint_every=2, out=tmp_path / "b", resume=True,
        progress=lambda f, m: steps.append(m), **SMALL,
    )  # fmt: skip
    assert [m.split(":")[0] for m in steps] == ["Step 5/6", "Step 6/6"]
    for a, b in zip(_params(resumed), _params(whole), strict=True):
        assert torch.equal(a, b)
    assert resumed.training.losses == whole.training.losses


def test_text_files(model, tok, tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 12)
    lens = train_lens(model, tok, text, text=True, steps=2, seq_len=16, **SMALL)
    assert lens.training.steps == 2 and lens.training.heldout
    assert not any(r["template_mask"].any() or r["user_mask"].any() for r in lens.training.heldout)
    with pytest.raises(InputError, match="no such text file"):
        train_lens(model, tok, tmp_path / "missing.txt", text=True, steps=1)


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        (dict(steps=0), "steps must be an integer in 1..1000000"),
        (dict(positions=-1), "positions must be"),
        (dict(heldout_percent=51), "heldout_percent must be an integer in 0..50"),
        (dict(lr_scale=0.0), "lr_scale must be a number > 0"),
        (dict(resume=True), "resume=True needs the output directory"),
    ],
)
def test_bad_options(model, tok, kwargs, says):
    with pytest.raises(InputError, match=says):
        train_lens(model, tok, PROMPTS, **kwargs)


def test_the_kl_loss_and_its_gradient_match_autograd():
    from lenskit.lens.train import _KLToTarget

    gen = torch.Generator().manual_seed(0)
    z = torch.randn(5, 11, generator=gen, dtype=torch.float64, requires_grad=True)
    target = torch.log_softmax(torch.randn(5, 11, generator=gen, dtype=torch.float64), -1)
    p = target.exp()
    plogp = (p * target).sum(-1)
    ours = _KLToTarget.apply(z, p, plogp)
    (grad,) = torch.autograd.grad(ours, z)
    reference = (p * (target - torch.log_softmax(z, -1))).sum(-1).mean()
    (expected,) = torch.autograd.grad(reference, z)
    torch.testing.assert_close(ours, reference)
    torch.testing.assert_close(grad, expected)
    assert torch.autograd.gradcheck(
        lambda x: _KLToTarget.apply(x, p, plogp), (z.detach().requires_grad_(),)
    )
