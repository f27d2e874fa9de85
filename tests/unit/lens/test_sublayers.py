"""Sub-block rows (``run_lens(..., sublayers=True)``): the residual stream after attention.

Each "i.attn" row is checked against states captured by this test's own hooks (block input +
attention output by the family's formula, and the state the block's MLP side reads), the
block rows against the run without sublayers, and the families without such a point (parallel
attention + MLP) or unknown to lenskit against their InputError.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers
from conftest import FAMILIES, make_chatml_tokenizer, make_tiny_model

import lenskit
from lenskit import InputError
from lenskit.charts import lens_heatmap
from lenskit.charts.export import iter_layers
from lenskit.lens import Lens, LogitLens
from lenskit.lens.readout import ReadoutEngine, layer_names, lens_rows
from lenskit.model.architecture import decoder_layers, find_readout
from lenskit.requests import LensRequest
from lenskit.results import LensResult

PROMPT = "What is the capital of Australia?"
PARALLEL = {"gpt_neox", "cohere"}  # the tiny families whose blocks are parallel
SEQUENTIAL = [f for f in FAMILIES if f not in PARALLEL]


@pytest.fixture(scope="module")
def tok():
    return make_chatml_tokenizer()


def _opt_post_norm(vocab: int) -> transformers.PreTrainedModel:
    """A tiny post-norm OPT (OPT-350m layout: the norm after each residual add)."""
    config = transformers.OPTConfig(
        vocab_size=vocab, hidden_size=32, ffn_dim=64, num_hidden_layers=3,
        num_attention_heads=4, max_position_embeddings=128, word_embed_proj_dim=32,
        do_layer_norm_before=False, bos_token_id=0, eos_token_id=0, pad_token_id=0,
    )  # fmt: skip
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = transformers.OPTForCausalLM(config)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.3 * torch.randn_like(p))
    return model.float().eval()


def _model(family: str, vocab: int) -> transformers.PreTrainedModel:
    if family == "opt_post":
        return _opt_post_norm(vocab)
    model = make_tiny_model(family, vocab)
    if family == "granite":  # the default multiplier is 1: make it count
        model.config.residual_multiplier = 0.5
        for block in decoder_layers(model):
            block.residual_multiplier = 0.5
    return model


def _attention(block: torch.nn.Module) -> torch.nn.Module:
    for name in ("self_attn", "attn"):
        if hasattr(block, name):
            return getattr(block, name)
    raise AssertionError(f"no attention in {type(block).__name__}")


def _formula(family: str, block, h_in: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
    """This test's own statement of each family's residual state after attention."""
    if family in ("gemma2", "gemma3"):
        return h_in + block.post_attention_layernorm(attn)
    if family == "granite":
        return h_in + attn * block.residual_multiplier
    if family == "opt_post":
        return block.self_attn_layer_norm(h_in + attn)
    return h_in + attn


def _mlp_side(family: str, block) -> tuple[torch.nn.Module, str]:
    """The module whose input (``"in"``) or output (``"out"``) is the state after attention."""
    if family in ("gemma2", "gemma3"):
        return block.pre_feedforward_layernorm, "in"
    if family == "gpt2":
        return block.ln_2, "in"
    if family == "opt":
        return block.final_layer_norm, "in"  # fed [B*T, d]
    if family == "opt_post":
        return block.self_attn_layer_norm, "out"
    return block.post_attention_layernorm, "in"


def _captured(family: str, model, ids: torch.Tensor) -> tuple[list, list]:
    """Per block: (block input + attention output by the formula, the MLP side's state)."""
    blocks = decoder_layers(model)
    h_in, attn, side = {}, {}, {}
    handles = []
    for i, block in enumerate(blocks):

        def pre(mod, args, kwargs, i=i):
            h_in[i] = args[0] if args else kwargs["hidden_states"]

        def post(mod, args, out, i=i):
            attn[i] = out[0] if isinstance(out, tuple) else out

        module, where = _mlp_side(family, block)

        def mlp_in(mod, args, i=i):
            side[i] = args[0]

        def mlp_out(mod, args, out, i=i):
            side[i] = out

        handles += [
            block.register_forward_pre_hook(pre, with_kwargs=True),
            _attention(block).register_forward_hook(post),
            module.register_forward_pre_hook(mlp_in)
            if where == "in"
            else module.register_forward_hook(mlp_out),
        ]
    try:
        with torch.inference_mode():
            model(ids)
            mids = [_formula(family, b, h_in[i], attn[i]) for i, b in enumerate(blocks)]
    finally:
        for h in handles:
            h.remove()
    sides = [side[i].reshape(mids[i].shape) for i in range(len(blocks))]
    return mids, sides


def _stats(logits: torch.Tensor, out: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Entropy, KL(out || row), top-3 ids of float64 logits ``[T, V]``."""
    logp = torch.log_softmax(logits.double(), -1)
    logq = torch.log_softmax(out.double(), -1)
    ent = -(logp.exp() * logp).sum(-1)
    kl = (logq.exp() * (logq - logp)).sum(-1)
    return ent.numpy(), kl.numpy(), logp.topk(3, -1).indices.numpy()


@pytest.mark.parametrize("family", [*SEQUENTIAL, "opt_post"])
def test_attn_rows_read_out_the_state_after_attention(family, tok):
    model = _model(family, len(tok))
    res = lenskit.run_lens(model, tok, PROMPT, top_k=3, sublayers=True, chunk_size=9)
    n = len(decoder_layers(model))
    assert list(res.layer_names) == layer_names(n, sublayers=True)
    assert res.n_rows == 2 * n + 1 and res.layer_names[1] == "1.attn"
    ids = torch.tensor([res.token_ids.tolist()])
    mids, sides = _captured(family, model, ids)
    readout = find_readout(model)
    with torch.inference_mode():
        out = model(ids).logits[0]
        for i, (mid, side) in enumerate(zip(mids, sides, strict=True)):
            # The formula and the state the MLP side reads agree: the test's own hooks are right.
            torch.testing.assert_close(mid, side, atol=1e-5, rtol=1e-5)
            ent, kl, top = _stats(readout.logits(mid[0]), out)
            row = 2 * i + 1  # "i+1.attn"
            assert res.layer_names[row] == f"{i + 1}.attn"
            np.testing.assert_allclose(res.entropy[row], ent, atol=3e-5, rtol=1e-5)
            np.testing.assert_allclose(res.kl_to_final[row], kl, atol=5e-5, rtol=1e-4)
            np.testing.assert_array_equal(res.top_ids[row], top)


@pytest.mark.parametrize("family", SEQUENTIAL)
def test_block_rows_equal_the_run_without_sublayers(family, tok):
    model = make_tiny_model(family, len(tok))
    base = lenskit.run_lens(model, tok, PROMPT, top_k=3, target=" Canberra")
    sub = lenskit.run_lens(model, tok, PROMPT, top_k=3, target=" Canberra", sublayers=True)
    blocks = slice(0, None, 2)  # emb, 1, ..., L-1, out
    assert list(sub.layer_names[blocks]) == list(base.layer_names)
    for name in ("entropy", "kl_to_final", "top_ids", "top_probs", "target_prob", "target_rank"):
        np.testing.assert_array_equal(getattr(sub, name)[blocks], getattr(base, name), name)
    assert (sub.kl_to_final[-1] == 0).all() and (sub.kl_to_final[1::2] > 0).any()


@pytest.mark.parametrize("family", sorted(PARALLEL))
def test_parallel_blocks_are_refused_before_the_forward_pass(family, tok):
    model = make_tiny_model(family, len(tok))
    calls = []
    handle = model.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(InputError, match="in parallel.*no residual state after attention"):
            lenskit.run_lens(model, tok, PROMPT, sublayers=True)
    finally:
        handle.remove()
    assert calls == []
    assert lenskit.run_lens(model, tok, PROMPT).n_rows == 4  # without sublayers: as before


def test_unknown_family_is_refused(tok):
    model = make_tiny_model("llama", len(tok))
    model.config.model_type = "mystery"
    with pytest.raises(InputError, match="does not know where .*mystery.*attention"):
        lenskit.run_lens(model, tok, PROMPT, sublayers=True)


def test_neox_without_parallel_residual_is_supported(tok):
    config = transformers.GPTNeoXConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=128, use_parallel_residual=False,
        bos_token_id=0, eos_token_id=0, pad_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.GPTNeoXForCausalLM(config).eval()
    res = lenskit.run_lens(model, tok, PROMPT, sublayers=True)
    ids = torch.tensor([res.token_ids.tolist()])
    h_in, attn = [], []
    block = decoder_layers(model)[1]
    block.register_forward_pre_hook(lambda m, a, k: h_in.append(a[0]), with_kwargs=True)
    block.attention.register_forward_hook(lambda m, a, o: attn.append(o[0]))
    with torch.inference_mode():
        out = model(ids).logits[0]
        ent, _, _ = _stats(find_readout(model).logits((h_in[0] + attn[0])[0]), out)
    np.testing.assert_allclose(res.entropy[3], ent, atol=3e-5)  # row "2.attn"


class BlockRowsLens(Lens):
    """A lens with one translator per block row (like a tuned lens): no sub-block rows."""

    name = "blockwise"

    def translate(self, states, rows):
        return states


class RecordingLens(Lens):
    name = "recording"
    supports_sublayers = True

    def __init__(self):
        self.seen = []

    def translate(self, states, rows):
        self.seen.append(list(rows))
        return states


def test_lens_rows_tell_sub_block_rows_apart(tok):
    model = make_tiny_model("llama", len(tok))
    with pytest.raises(InputError, match="blockwise lens reads block rows only"):
        lenskit.run_lens(model, tok, PROMPT, lens=BlockRowsLens(), sublayers=True)
    assert lenskit.run_lens(model, tok, PROMPT, lens=BlockRowsLens()).n_rows == 4
    lens = RecordingLens()
    res = lenskit.run_lens(model, tok, PROMPT, lens=lens, sublayers=True)
    assert lens.seen[0] == [0, 0.5, 1, 1.5, 2, 2.5] == lens_rows(3, sublayers=True)
    assert [type(r) for r in lens.seen[0]] == [int, float] * 3
    assert res.lens == "recording" and res.n_rows == 7
    assert lens_rows(3) == [0, 1, 2]
    engine = ReadoutEngine(model, LogitLens(), tok, sublayers=True)
    assert engine.row_names == ["emb", "1.attn", "1", "2.attn", "2", "3.attn", "out"]


def test_request_field_is_validated():
    assert LensRequest("hi").sublayers is False
    assert LensRequest("hi", sublayers=True).sublayers is True
    with pytest.raises(InputError, match="sublayers must be True or False"):
        LensRequest("hi", sublayers="yes")


def test_exports_keep_the_sub_block_rows(tok, tmp_path):
    model = make_tiny_model("gpt2", len(tok))
    res = lenskit.run_lens(model, tok, PROMPT, top_k=2, sublayers=True)
    frame = res.to_frame()
    assert list(frame["layer"].unique()) == list(res.layer_names)
    assert frame["layer_index"].max() == 6
    csv = tmp_path / "lens.csv"
    frame.to_csv(csv, index=False)
    assert "2.attn" in csv.read_text()
    back = LensResult.from_json(res.to_json())
    assert list(back.layer_names) == list(res.layer_names)


def _sublayer_result(n_layers: int, t: int = 6, k: int = 2, vocab: int = 100) -> LensResult:
    """A synthetic LensResult with sub-block rows (2L + 1 of them)."""
    rng = np.random.default_rng(0)
    r = 2 * n_layers + 1
    tokens = [f"t{i}" for i in range(t)]
    return LensResult(
        token_ids=np.arange(t), tokens=tokens, display_tokens=tokens,
        layer_names=layer_names(n_layers, sublayers=True),
        entropy=rng.uniform(0, 4, (r, t)), kl_to_final=rng.uniform(0, 4, (r, t)),
        top_ids=rng.integers(0, vocab, (r, t, k)), top_tokens=rng.choice(["a", "b"], (r, t, k)),
        top_probs=np.full((r, t, k), 0.2), is_special=[False] * t, template_positions=[4, 5],
        vocab_size=vocab, model_name="synthetic",
    )  # fmt: skip


@pytest.mark.parametrize("labels", [False, True])
def test_heatmap_orders_and_labels_sub_block_rows(labels):
    res = _sublayer_result(30)  # 61 rows: thin rows in the overview
    spec = lens_heatmap(res, "entropy", labels=labels).to_dict()
    layers = list(iter_layers(spec))
    y = next(la["encoding"]["y"] for la in layers if "y" in la.get("encoding", {}))
    assert y["sort"] == [str(n) for n in res.layer_names[::-1]]
    assert y["sort"][:3] == ["out", "30.attn", "29"] and y["sort"][-2:] == ["1.attn", "emb"]
    values = y.get("axis", {}).get("values")
    if not labels:  # thin rows: emb, out and every 5th block, never a sub-block row
        assert values == ["emb", "out", "5", "10", "15", "20", "25"]
    cells = [v for d in spec.get("datasets", {}).values() for v in d if "layer" in v]
    assert {v["layer"] for v in cells} == set(res.layer_names)
    colour = next(la["encoding"]["color"] for la in layers if "color" in la.get("encoding", {}))
    assert colour["scale"]["domain"] == pytest.approx([0.0, np.log(100)])  # fixed: [0, ln V]
