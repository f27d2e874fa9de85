"""The intervention registry: a new intervention is one entry; the sweep report."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_chatml_tokenizer, make_tiny_model, strong_model

import lenskit
from lenskit.errors import UnknownInterventionError
from lenskit.interventions import INTERVENTIONS, Intervention, register
from lenskit.requests import SweepRequest

PROMPT = "What is the capital of Australia?"


@pytest.fixture(scope="module")
def tok():
    return make_chatml_tokenizer()


@pytest.fixture(scope="module")
def llama(tok):
    return strong_model(make_tiny_model("llama", len(tok)))


@pytest.fixture
def zero_intervention():
    """A throwaway intervention: block l's output at the positions set to zero."""
    entry = register(Intervention("zero", "block l's output is zeroed", lambda e: e.output * 0))
    yield entry
    del INTERVENTIONS["zero"]


def test_a_new_intervention_is_one_entry(tok, llama, zero_intervention):
    with pytest.raises(UnknownInterventionError):
        lenskit.intervention_sweep(llama, tok, PROMPT, intervention="zap", max_new_tokens=2)
    res = lenskit.intervention_sweep(
        llama, tok, PROMPT, intervention="zero", layers=[0, 1], max_new_tokens=2
    )
    assert res.intervention == "zero" and res.kl.shape == (2, res.n_generated)
    assert (res.kl > 1e-4).any()
    again = lenskit.SweepResult.from_json(res.to_json())  # validated by the registry too
    np.testing.assert_array_equal(again.kl, res.kl)
    slow = lenskit.intervention_sweep(
        llama, tok, PROMPT, intervention="zero", layers=[0, 1], max_new_tokens=2,
        strategy="sequential",
    )  # fmt: skip
    np.testing.assert_allclose(slow.kl, res.kl, atol=2e-5)


def test_registered_names_are_checked_everywhere(zero_intervention):
    assert "zero" in INTERVENTIONS and SweepRequest("hi", intervention="zero")
    with pytest.raises(ValueError, match="registered already"):
        register(Intervention("zero", "again", lambda e: e.output))


def test_every_intervention_has_help():
    for name, entry in INTERVENTIONS.items():
        assert entry.name == name and len(entry.help) > 20


def test_sweep_report_reads_the_sweeps_own_generation(tok, llama):
    request = SweepRequest(PROMPT, max_new_tokens=3, layers=(0, 1), generation_lens=True, top_k=3)
    report = lenskit.run(llama, tok, request)
    gen = report.generation
    assert report.warning is None and gen is not None
    np.testing.assert_array_equal(gen.generated_ids, report.sweep.generated_ids)
    direct, n_prompt = lenskit.lens_on_generation(
        llama, tok, PROMPT, generated_ids=report.sweep.generated_ids.tolist(), top_k=3
    )
    assert n_prompt == gen.n_prompt
    np.testing.assert_allclose(gen.result.entropy, direct.entropy, rtol=1e-5, atol=1e-6)


def test_sweep_report_keeps_the_sweep_at_the_contexts_edge(tok, llama):
    prompt = " ".join([PROMPT] * 8)
    n_prompt = len(lenskit.encode_prompt(tok, prompt))
    edge = llama.config.max_position_embeddings - n_prompt + 1  # the sweep fits, the lens not
    assert 1 <= edge <= 64, edge
    old = llama.generation_config.eos_token_id
    llama.generation_config.eos_token_id = None  # generate all tokens
    try:
        with torch.no_grad():
            report = lenskit.run(
                llama, tok,
                SweepRequest(prompt, max_new_tokens=edge, layers=(0,),
                             generation_lens=True),
            )  # fmt: skip
    finally:
        llama.generation_config.eos_token_id = old
    assert report.generation is None and "context" in report.warning
    assert report.sweep.n_generated == edge
