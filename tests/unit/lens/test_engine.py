"""The read-out engine and its lens interface: every view reads out through one engine."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_chatml_tokenizer, make_tiny_model

import lenskit
from lenskit.errors import InputError, ModelLoadError
from lenskit.lens import LENSES, Lens, LogitLens, ReadoutEngine
from lenskit.text.prompts import encode_prompt

PROMPT = "What is the capital of Australia?"


@pytest.fixture(scope="module")
def tok():
    return make_chatml_tokenizer()


@pytest.fixture(scope="module")
def llama(tok):
    return make_tiny_model("llama", len(tok))


class _Shrink(Lens):
    """A lens that scales every inner row's state: only the inner rows change."""

    name = "shrink"

    def __init__(self) -> None:
        self.seen_rows: list[int] = []

    def translate(self, states, rows):
        self.seen_rows = list(rows)
        return states * 0.5


def test_a_lens_changes_the_inner_rows_only(tok, llama):
    base = lenskit.run_lens(llama, tok, PROMPT, top_k=3)
    lens = _Shrink()
    other = lenskit.run_lens(llama, tok, PROMPT, top_k=3, lens=lens)
    assert other.lens == "shrink" and base.lens == "logit"
    assert lens.seen_rows == list(range(base.n_rows - 1))  # rows 0..L-1, never "out"
    np.testing.assert_array_equal(other.entropy[-1], base.entropy[-1])
    np.testing.assert_array_equal(other.top_ids[-1], base.top_ids[-1])
    assert not np.allclose(other.entropy[:-1], base.entropy[:-1])


def test_the_views_share_the_lens(tok, llama):
    lens = _Shrink()
    pair = lenskit.layer_pairwise_kl(llama, tok, PROMPT, -1, lens=lens)
    gen, n_prompt = lenskit.lens_on_generation(llama, tok, PROMPT, max_new_tokens=2, lens=lens)
    assert pair.lens == "shrink" and gen.lens == "shrink"
    own = lenskit.run_lens(llama, tok, PROMPT, lens=lens)
    np.testing.assert_allclose(gen.entropy[:, :n_prompt], own.entropy, rtol=1e-5, atol=1e-5)


def test_logit_lens_is_the_default_and_registered():
    assert isinstance(lenskit.lens.get_lens(None), LogitLens) and LENSES["logit"] is LogitLens
    with pytest.raises(InputError, match="unknown lens"):
        lenskit.LensRequest("hi", lens="nope")


def test_statistics_at_chosen_positions_and_several_targets(tok, llama):
    engine = ReadoutEngine(llama, tokenizer=tok)
    enc = encode_prompt(tok, PROMPT)
    hidden, _ = engine.forward(enc.input_ids)
    full = engine.statistics(hidden, top_k=4, targets=[5, 9])
    some = engine.statistics(hidden, top_k=4, targets=[5, 9], positions=[2, 7], chunk_size=3)
    np.testing.assert_allclose(some["entropy"], full["entropy"][:, [2, 7]], rtol=1e-6)
    assert full["target_prob"].shape == (engine.n_rows, len(enc), 2)
    np.testing.assert_array_equal(some["target_rank"], full["target_rank"][:, [2, 7]])
    logits = engine.row_logits(hidden, [7])[0].float()  # [R, V]
    probs = torch.softmax(logits, -1)[:, [5, 9]].numpy()
    np.testing.assert_allclose(some["target_prob"][:, 1], probs, rtol=1e-4, atol=1e-7)


def _mismatched_checkpoint(tmp_path, tok):
    """A checkpoint with a 100-token vocabulary saved beside a 512-token tokenizer."""
    import transformers

    config = transformers.LlamaConfig(
        vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
    )  # fmt: skip
    model = transformers.LlamaForCausalLM(config)
    model.save_pretrained(tmp_path, safe_serialization=True)
    tok.save_pretrained(tmp_path)
    return model


def test_a_vocabulary_smaller_than_the_tokenizer_fails_at_load(tmp_path, tok):
    model = _mismatched_checkpoint(tmp_path, tok)
    with pytest.raises(ModelLoadError, match=rf"tokenizer has {len(tok)} tokens.*only 100"):
        lenskit.load_model(str(tmp_path))
    # The same pair handed over directly (no load_model): one InputError, not an IndexError.
    with pytest.raises(InputError, match=rf"{len(tok)} tokens.*only 100"):
        lenskit.run_lens(model, tok, PROMPT, target=" Canberra")
