"""Sampled replies in a batch: each row is the reply its prompt gets alone with its seed."""

from __future__ import annotations

import pytest
from conftest import make_chatml_tokenizer, make_tiny_model, strong_model

import lenskit
from lenskit.errors import InterventionError
from lenskit.model.generate import sample_batch

PROMPTS = [
    "What is the capital of France?",
    "Say hello.",
    "Sydney Melbourne Canberra Brisbane Perth Adelaide Hobart Darwin",
]


@pytest.fixture(scope="module")
def tok():
    return make_chatml_tokenizer()


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_a_batched_sample_equals_each_prompt_alone(tok, family):
    model = strong_model(make_tiny_model(family, len(tok)))
    ids = [lenskit.encode_prompt(tok, p).input_ids for p in PROMPTS]
    assert len({len(i) for i in ids}) > 1  # different lengths: padding matters
    seeds = [3, 4, 5]
    together = sample_batch(model, ids, [9, 5, 9], seeds)
    alone = [
        sample_batch(model, [i], n, [s])[0] for i, n, s in zip(ids, [9, 5, 9], seeds, strict=True)
    ]
    assert together == alone
    assert all(1 <= len(r) <= n for r, n in zip(together, [9, 5, 9], strict=True))
    assert together != sample_batch(model, ids, [9, 5, 9], [6, 7, 8])  # the seed matters


def test_sample_batch_checks_its_arguments(tok):
    model = make_tiny_model("llama", len(tok))
    with pytest.raises(InterventionError):
        sample_batch(model, [[1, 2]], 4, [0, 1])
    with pytest.raises(InterventionError):
        sample_batch(model, [[1, 2]], [0], [0])
