"""The engine on a CUDA device: the read-out, the sweeps and the CLI give what they give on the
CPU. Tiny random models in float32 on both sides, so only float rounding may differ; a part
left on the wrong device raises, an intervention that does nothing there gives KL 0.

Skipped without a GPU; ``benchmarks/gpu_session.sh`` runs this file on a lent one.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import make_chatml_tokenizer, make_tiny_model
from conftest import strong_model as _strong

import lenskit
from lenskit import intervention_sweep, layer_pairwise_kl, lens_on_generation
from lenskit.cli import main

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

PROMPT = "What is the capital of Australia?"
GPU = "cuda"
# CPU against GPU float32 forward passes: rounding only (nats, and relative).
ATOL, RTOL = 1e-4, 1e-3


@pytest.fixture(scope="module")
def tok():
    return make_chatml_tokenizer()


@pytest.fixture(scope="module")
def llama_pair(tok):
    """The same strong tiny Llama on the CPU and on the GPU."""
    cpu = _strong(make_tiny_model("llama", len(tok)))
    gpu = _strong(make_tiny_model("llama", len(tok))).to(GPU)
    assert next(gpu.parameters()).is_cuda
    return cpu, gpu


def test_lens_matches_cpu(tok):
    cpu_model = make_tiny_model("gemma2", len(tok))  # soft-capped logits
    gpu_model = make_tiny_model("gemma2", len(tok)).to(GPU)
    a = lenskit.run_lens(cpu_model, tok, PROMPT, target=" Canberra")
    b = lenskit.run_lens(gpu_model, tok, PROMPT, target=" Canberra")
    np.testing.assert_allclose(a.entropy, b.entropy, atol=ATOL)
    np.testing.assert_allclose(a.kl_to_final, b.kl_to_final, atol=ATOL)
    np.testing.assert_allclose(a.target_prob, b.target_prob, atol=ATOL)
    np.testing.assert_array_equal(a.top_ids, b.top_ids)


def test_lens_bfloat16_on_gpu(tok):
    ref = lenskit.run_lens(make_tiny_model("llama", len(tok)), tok, PROMPT)
    res = lenskit.run_lens(make_tiny_model("llama", len(tok)).to(GPU, torch.bfloat16), tok, PROMPT)
    assert res.entropy.dtype == np.float32 and np.isfinite(res.entropy).all()
    np.testing.assert_allclose(res.entropy, ref.entropy, atol=0.15)


@pytest.mark.parametrize(
    ("intervention", "strategy"),
    [
        ("skip", "auto"),
        ("skip", "prefix"),
        ("skip", "batched"),
        ("skip", "sequential"),
        ("mean", "auto"),
        ("noise", "auto"),
    ],
)
def test_sweep_matches_cpu(llama_pair, tok, intervention, strategy):
    cpu, gpu = llama_pair
    kw = dict(max_new_tokens=4, intervention=intervention, strategy=strategy, seed=3)
    a = intervention_sweep(cpu, tok, PROMPT, **kw)
    b = intervention_sweep(gpu, tok, PROMPT, **kw)
    np.testing.assert_array_equal(a.generated_ids, b.generated_ids)
    np.testing.assert_array_equal(a.positions, b.positions)
    assert a.kl.max() > 0.01, "the intervention changed nothing on the CPU"
    np.testing.assert_allclose(b.kl, a.kl, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(b.generated_prob_intervened, a.generated_prob_intervened, atol=ATOL)
    np.testing.assert_array_equal(a.top_ids_intervened, b.top_ids_intervened)


def test_sweep_without_positions_on_gpu(llama_pair, tok):
    """An empty position list: the clean run only (its own code path), KL 0 everywhere."""
    a, b = (intervention_sweep(m, tok, PROMPT, max_new_tokens=3, positions=[]) for m in llama_pair)
    np.testing.assert_array_equal(b.generated_ids, a.generated_ids)
    assert not b.kl.any()
    np.testing.assert_allclose(b.generated_prob_intervened, a.generated_prob_intervened, atol=ATOL)
    np.testing.assert_allclose(b.generated_prob_clean, a.generated_prob_clean, atol=ATOL)


def test_generation_lens_and_layer_kl_match_cpu(llama_pair, tok):
    cpu, gpu = llama_pair
    (a, na), (b, nb) = (lens_on_generation(m, tok, PROMPT, max_new_tokens=4) for m in llama_pair)
    assert na == nb
    np.testing.assert_array_equal(a.token_ids, b.token_ids)
    np.testing.assert_allclose(b.entropy, a.entropy, atol=ATOL)
    np.testing.assert_allclose(b.kl_to_final, a.kl_to_final, rtol=RTOL, atol=ATOL)
    (names_a, kl_a), (names_b, kl_b) = (layer_pairwise_kl(m, tok, PROMPT, -1) for m in llama_pair)
    assert names_a == names_b
    assert kl_a.max() > 0.01
    np.testing.assert_allclose(kl_b, kl_a, rtol=RTOL, atol=ATOL)


def test_cli_on_gpu(tiny_model_dir, tmp_path):
    """``--device cuda`` loads the model there and writes what the CPU run writes."""
    outs = {}
    for device in ("cpu", "cuda"):
        for cmd in ("lens", "sweep"):
            out = tmp_path / f"{cmd}-{device}.json"
            args = [cmd, PROMPT, "--model", str(tiny_model_dir), "--device", device, "-q"]
            assert main([*args, "--out", str(out)]) == 0
            outs[cmd, device] = json.loads(out.read_text())
    lens_cpu = lenskit.LensResult.from_json(json.dumps(outs["lens", "cpu"]))
    lens_gpu = lenskit.LensResult.from_json(json.dumps(outs["lens", "cuda"]))
    np.testing.assert_allclose(lens_gpu.entropy, lens_cpu.entropy, atol=ATOL)
    sweep_cpu, sweep_gpu = outs["sweep", "cpu"], outs["sweep", "cuda"]
    assert sweep_gpu["generated_ids"] == sweep_cpu["generated_ids"]
    np.testing.assert_allclose(sweep_gpu["kl"], sweep_cpu["kl"], rtol=RTOL, atol=ATOL)
