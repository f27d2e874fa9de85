"""The tuned lens: tuned-lens's file format (round trip, refusals, warnings) and its maths
through the one read-out engine (h + W h + b, final norm, unembedding; row "out" untouched)."""

from __future__ import annotations

import builtins
import json
import warnings

import conftest
import numpy as np
import pytest
import torch

from lenskit.errors import InputError
from lenskit.lens import LogitLens, TunedLens, load_lens, run_lens
from lenskit.lens.readout import ReadoutEngine
from lenskit.lens.tuned import CONFIG_FILE, PARAMS_FILE, model_shape, unembed_hash
from lenskit.model.architecture import find_readout
from lenskit.text.prompts import encode_prompt

CONFIG_KEYS = {
    "base_model_name_or_path",
    "d_model",
    "num_hidden_layers",
    "bias",
    "base_model_revision",
    "unembed_hash",
    "lens_type",
}
PROMPT = "What is the capital of France?"


@pytest.fixture(scope="module")
def tok():
    return conftest.make_chatml_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return conftest.strong_model(conftest.make_tiny_model("llama", len(tok)))


def random_lens(model, seed: int = 0, scale: float = 0.3) -> TunedLens:
    lens = TunedLens.from_model(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lens.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * scale)
    return lens


def test_save_load_round_trip(model, tmp_path):
    lens = random_lens(model)
    lens.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [CONFIG_FILE, PARAMS_FILE]
    config = json.loads((tmp_path / CONFIG_FILE).read_text())
    d, n_layers = model_shape(model)
    assert set(config) == CONFIG_KEYS
    assert (config["d_model"], config["num_hidden_layers"]) == (d, n_layers) == (32, 3)
    assert config["lens_type"] == "linear_tuned_lens" and config["bias"] is True
    assert config["unembed_hash"] == unembed_hash(model)
    state = torch.load(tmp_path / PARAMS_FILE, weights_only=True)
    assert set(state) == {f"{i}.{k}" for i in range(n_layers) for k in ("weight", "bias")}
    for i in range(n_layers):
        assert state[f"{i}.weight"].shape == (d, d) and state[f"{i}.bias"].shape == (d,)
    loaded = load_lens(model, tmp_path)
    assert isinstance(loaded, TunedLens) and loaded.name == "tuned"
    assert loaded.config == lens.config
    for a, b in zip(loaded.parameters(), lens.parameters(), strict=True):
        assert torch.equal(a, b)


def test_load_lens_names():
    model = conftest.make_tiny_model("llama", 64)
    assert isinstance(load_lens(model, None), LogitLens)
    assert isinstance(load_lens(model, "logit"), LogitLens)
    with pytest.raises(InputError, match="unknown lens 'nope'"):
        load_lens(model, "nope")


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [("num_hidden_layers", 4, "4 blocks"), ("d_model", 64, "d_model=64")],
)
def test_lens_for_another_model_shape_names_both(model, tmp_path, key, value, says):
    lens = TunedLens.from_model(model)
    setattr(lens.config, key, value)
    lens = TunedLens(lens.config)  # translators of that shape
    lens.save(tmp_path)
    with pytest.raises(InputError) as info:
        load_lens(model, tmp_path)
    message = str(info.value)
    assert says in message and "d_model=32 and 3 blocks" in message


def test_unknown_config_key_warns(model, tmp_path):
    TunedLens.from_model(model).save(tmp_path)
    config = json.loads((tmp_path / CONFIG_FILE).read_text())
    (tmp_path / CONFIG_FILE).write_text(json.dumps({**config, "lens_flavour": "sour"}))
    with pytest.warns(UserWarning, match="lens_flavour"):
        assert isinstance(load_lens(model, tmp_path), TunedLens)


class _Payload:
    """A pickle that would run code when unpickled without weights_only."""

    def __reduce__(self):
        return (exec, ("import builtins; builtins._lenskit_ran_code = True",))


def test_params_that_are_not_plain_tensors_are_refused(model, tmp_path):
    TunedLens.from_model(model).save(tmp_path)
    state = torch.load(tmp_path / PARAMS_FILE, weights_only=True)
    torch.save({**state, "0.bias": _Payload()}, tmp_path / PARAMS_FILE)
    with pytest.raises(InputError, match=r"params\.pt: refused") as info:
        load_lens(model, tmp_path)
    assert str(tmp_path / PARAMS_FILE) in str(info.value)
    assert not hasattr(builtins, "_lenskit_ran_code")


def test_missing_or_bad_files_name_the_file(model, tmp_path):
    with pytest.raises(InputError, match=r"config\.json: no such file"):
        load_lens(model, tmp_path)
    TunedLens.from_model(model).save(tmp_path)
    (tmp_path / PARAMS_FILE).unlink()
    with pytest.raises(InputError, match=r"params\.pt: no such file"):
        load_lens(model, tmp_path)
    (tmp_path / CONFIG_FILE).write_text("{not json")
    with pytest.raises(InputError, match=r"config\.json: not a readable JSON"):
        load_lens(model, tmp_path)
    (tmp_path / CONFIG_FILE).write_text(json.dumps({"d_model": 32, "num_hidden_layers": 3}))
    with pytest.raises(InputError, match="base_model_name_or_path"):
        load_lens(model, tmp_path)


def test_params_that_do_not_fit_the_config_are_refused(model, tmp_path):
    TunedLens.from_model(model).save(tmp_path)
    state = torch.load(tmp_path / PARAMS_FILE, weights_only=True)
    del state["2.bias"]
    torch.save(state, tmp_path / PARAMS_FILE)
    with pytest.raises(InputError, match=r"missing 2\.bias"):
        load_lens(model, tmp_path)
    state["2.bias"] = torch.zeros(31)
    torch.save(state, tmp_path / PARAMS_FILE)
    with pytest.raises(InputError, match=r"2\.bias has shape \(31,\)"):
        load_lens(model, tmp_path)


def test_another_unembedding_warns(model, tok, tmp_path):
    TunedLens.from_model(model).save(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_lens(model, tmp_path)  # its own model: no warning
    other = conftest.make_tiny_model("llama", len(tok), seed=1)
    with pytest.warns(UserWarning, match="unembedding differs"):
        lens = load_lens(other, tmp_path)
    assert lens.unembedding_mismatch(model) is None
    assert "unembedding differs" in lens.unembedding_mismatch(other)


def _manual_logits(model, lens, ids):
    """Every inner row by hand: h + W h + b, the final norm, the unembedding."""
    with torch.no_grad():
        hidden = model(torch.tensor([ids]), output_hidden_states=True).hidden_states
        readout = find_readout(model)
        rows = []
        for i, h in enumerate(hidden[:-1]):
            linear = lens.translators[i]
            x = h[0] + h[0] @ linear.weight.T + linear.bias
            rows.append(model.lm_head(readout.norm(x)))
        rows.append(model(torch.tensor([ids])).logits[0])
    return torch.stack(rows)  # [R, T, V]


def test_translate_is_h_plus_wh_plus_b_then_the_readout(model, tok):
    lens = random_lens(model)
    engine = ReadoutEngine(model, lens)
    ids = encode_prompt(tok, PROMPT).input_ids
    hidden, _ = engine.forward(ids)
    ours = engine.row_logits(hidden, range(len(ids))).transpose(0, 1)  # [R, T, V]
    theirs = _manual_logits(model, lens, ids)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    logit = _manual_logits(model, TunedLens.from_model(model), ids)
    assert (ours[:-1] - logit[:-1]).abs().max() > 0.1  # the lens changed the inner rows

    result = run_lens(model, tok, PROMPT, lens=lens, top_k=3)
    assert result.lens == "tuned"
    logp = torch.log_softmax(theirs, dim=-1)
    entropy = -(logp.exp() * logp).sum(-1)
    np.testing.assert_allclose(result.entropy, entropy.numpy(), rtol=1e-4, atol=1e-4)
    kl = (logp[-1].exp() * (logp[-1] - logp)).sum(-1)
    np.testing.assert_allclose(result.kl_to_final, kl.numpy(), rtol=1e-4, atol=1e-4)


def test_zero_lens_is_the_logit_lens_and_row_out_never_changes(model, tok):
    logit = run_lens(model, tok, PROMPT, lens="logit")
    zero = run_lens(model, tok, PROMPT, lens=TunedLens.from_model(model))
    tuned = run_lens(model, tok, PROMPT, lens=random_lens(model, seed=3))
    for name in ("entropy", "kl_to_final", "top_ids", "top_probs"):
        assert np.array_equal(getattr(zero, name), getattr(logit, name)), name
        assert np.array_equal(getattr(tuned, name)[-1], getattr(logit, name)[-1]), name
    assert not np.allclose(tuned.entropy[:-1], logit.entropy[:-1])


def test_translate_keeps_shape_and_dtype(model):
    lens = random_lens(model)
    states = torch.randn(2, 5, 3, 32, dtype=torch.float64)
    out = lens.translate(states, range(3))
    assert out.shape == states.shape and out.dtype == states.dtype
    one = lens.translate(states[..., 1:2, :], [1])
    torch.testing.assert_close(one[..., 0, :], out[..., 1, :])
    with pytest.raises(InputError, match="sub-block"):
        lens.translate(states[..., :1, :], [0.5])


def test_sub_block_rows_are_refused(model):
    with pytest.raises(InputError, match="tuned lens reads block rows only"):
        ReadoutEngine(model, random_lens(model), sublayers=True)


def test_the_unembedding_hash_ignores_numpy_print_options(model):
    expected = unembed_hash(model)
    with np.printoptions(sign="+", suppress=True, floatmode="fixed", edgeitems=5):
        assert unembed_hash(model) == expected
