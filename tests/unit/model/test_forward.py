"""The one forward helper: logits_to_keep only where the forward names it, never a retry."""

from __future__ import annotations

import pytest
import torch
from conftest import make_chatml_tokenizer, make_tiny_model

from lenskit.model import forward_pass as fwd


class _Recorder(torch.nn.Module):
    """A model whose forward records its keywords and returns fixed logits."""

    def __init__(self, fail: bool = False) -> None:
        super().__init__()
        self.calls: list[dict] = []
        self.fail = fail
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids=None, use_cache=None, **kwargs):  # noqa: D401
        self.calls.append(dict(kwargs, use_cache=use_cache))
        if self.fail:
            raise TypeError("a bug inside the model")
        logits = torch.zeros(input_ids.shape[0], input_ids.shape[1], 7)

        class Out:
            pass

        out = Out()
        out.logits = logits
        return out


class _KeepingRecorder(_Recorder):
    def forward(self, input_ids=None, use_cache=None, logits_to_keep=0, **kwargs):
        return super().forward(input_ids, use_cache, logits_to_keep=logits_to_keep, **kwargs)


def test_logits_to_keep_only_where_named():
    ids = torch.zeros(1, 4, dtype=torch.long)
    plain, keeping = _Recorder(), _KeepingRecorder()
    assert not fwd.accepts(plain, "logits_to_keep") and fwd.accepts(keeping, "logits_to_keep")
    assert fwd.model_logits(plain, ids, 2).shape == (1, 2, 7)
    fwd.model_logits(keeping, ids, 2)
    assert "logits_to_keep" not in plain.calls[0]
    assert keeping.calls[0]["logits_to_keep"] == 2


def test_an_error_inside_the_model_is_not_retried():
    model = _Recorder(fail=True)
    with pytest.raises(TypeError, match="a bug inside the model"):
        fwd.model_logits(model, torch.zeros(1, 3, dtype=torch.long), 1)
    assert len(model.calls) == 1  # one forward pass, not a second one without logits_to_keep


def test_hf_models_get_logits_to_keep():
    tok = make_chatml_tokenizer()
    model = make_tiny_model("llama", len(tok))
    assert fwd.accepts(model, "logits_to_keep")
    ids = torch.tensor([tok.encode("What is the capital")])
    hidden, last = fwd.hidden_states_forward(model, ids)
    assert len(hidden) == model.config.num_hidden_layers + 1 and last.shape == (1, len(tok))
    full = model(ids).logits[:, -1]
    torch.testing.assert_close(last, full)


def test_eos_and_cache_keywords():
    tok = make_chatml_tokenizer()
    model = make_tiny_model("llama", len(tok))
    name = fwd.cache_kwarg(model)  # transformers 5 names it "cache", older ones not
    assert name in ("cache", "past_key_values") and fwd.accepts(model, name)
    model.generation_config.eos_token_id = [5, 7]
    assert fwd.eos_token_ids(model) == {5, 7}
    assert fwd.ids_list(torch.tensor([[1, 2]])) == [1, 2]
