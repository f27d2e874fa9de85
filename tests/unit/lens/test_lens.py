"""run_lens on tiny random models: exactness, chunking, reference values, errors, exports."""

from __future__ import annotations

import ast
import json
import re

import numpy as np
import pytest
import torch
from conftest import FAMILIES, make_chatml_tokenizer, make_plain_tokenizer, make_tiny_model

import lenskit
from lenskit import LensResult, TargetError, layer_names
from lenskit.errors import PromptError
from lenskit.lens.readout import blocked_topk as _topk
from lenskit.text.targets import target_token_id

PROMPT = "What is the capital of Australia?"


@pytest.fixture(scope="module")
def tok():
    return make_chatml_tokenizer()


@pytest.fixture(scope="module")
def llama(tok):
    return make_tiny_model("llama", len(tok))


def _manual_logits(family: str, model, hidden: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """[R, T, V] float64 read-out written out by hand per family (independent of lenskit)."""
    if family == "gpt2":
        norm, head = model.transformer.ln_f, model.lm_head
    elif family == "opt":
        dec = model.model.decoder
        norm = lambda h: dec.project_out(dec.final_layer_norm(h))  # noqa: E731
        head = model.lm_head
    else:
        norm, head = model.model.norm, model.lm_head
    rows = [head(norm(h[0])) for h in hidden[:-1]] + [head(hidden[-1][0])]
    z = torch.stack(rows).double()
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        z = torch.tanh(z / cap) * cap
    return z


@pytest.mark.parametrize("family", ["llama", "gemma2", "gpt2", "opt", "qwen3"])
def test_matches_float64_reference(family, tok):
    model = make_tiny_model(family, len(tok))
    res = lenskit.run_lens(model, tok, PROMPT, top_k=4, target=" Canberra", chunk_size=7)
    ids = torch.tensor([res.token_ids.tolist()])
    with torch.inference_mode():
        out = model(ids, output_hidden_states=True)
        z = _manual_logits(family, model, out.hidden_states)
    logp = torch.log_softmax(z, dim=-1)
    p = logp.exp()
    ent = -(p * logp).sum(-1)
    kl = (p[-1:] * (logp[-1:] - logp)).sum(-1)
    np.testing.assert_allclose(res.entropy, ent.numpy(), atol=2e-5, rtol=1e-5)
    np.testing.assert_allclose(res.kl_to_final, kl.numpy(), atol=5e-5, rtol=1e-4)
    top_p, top_i = p.topk(4, dim=-1)
    np.testing.assert_array_equal(res.top_ids, top_i.numpy())
    np.testing.assert_allclose(res.top_probs, top_p.numpy(), atol=2e-6, rtol=1e-4)
    tid = tok.encode(" Canberra", add_special_tokens=False)[0]
    np.testing.assert_allclose(res.target_prob, p[..., tid].numpy(), atol=2e-6, rtol=1e-4)
    rank = (z > z[..., tid : tid + 1]).sum(-1)
    np.testing.assert_array_equal(res.target_rank, rank.numpy())
    # row "out" is the model's own logits
    np.testing.assert_allclose(z[-1].numpy(), out.logits[0].double().numpy(), atol=1e-5)
    assert (res.kl_to_final[-1] == 0).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_out_row_is_model_logits(family, tok):
    """For every family the out row's statistics are those of model(...).logits."""
    model = make_tiny_model(family, len(tok))
    res = lenskit.run_lens(model, tok, PROMPT, top_k=3)
    with torch.inference_mode():
        logits = model(torch.tensor([res.token_ids.tolist()])).logits[0].double()
    logp = torch.log_softmax(logits, -1)
    np.testing.assert_allclose(res.entropy[-1], -(logp.exp() * logp).sum(-1).numpy(), atol=2e-5)
    np.testing.assert_array_equal(res.top_ids[-1], logits.topk(3, -1).indices.numpy())
    assert res.n_rows == len(lenskit.decoder_layers(model)) + 1


def test_chunked_equals_unchunked(llama, tok):
    small = lenskit.run_lens(llama, tok, PROMPT, chunk_size=1, target=" Canberra")
    large = lenskit.run_lens(llama, tok, PROMPT, chunk_size=10**6, target=" Canberra")
    for name in ("entropy", "kl_to_final", "top_probs", "target_prob"):
        np.testing.assert_allclose(getattr(small, name), getattr(large, name), atol=1e-5, rtol=1e-5)
    for name in ("top_ids", "target_rank", "token_ids"):
        np.testing.assert_array_equal(getattr(small, name), getattr(large, name))


def test_shapes_and_labels(llama, tok):
    res = lenskit.run_lens(llama, tok, PROMPT, top_k=5)
    r, t = res.entropy.shape
    assert r == 4 and list(res.layer_names) == ["emb", "1", "2", "out"]
    assert res.top_ids.shape == (r, t, 5) and res.top_tokens.shape == (r, t, 5)
    assert res.vocab_size == len(tok)
    assert res.chat and res.prompt == PROMPT
    assert [res.tokens[i] for i in res.template_positions] == [
        "<|im_end|>",
        "\u010a",
        "<|im_start|>",
        *tok.tokenize("assistant"),
        "\u010a",
    ]
    assert res.is_special[0] and not res.is_special[res.template_positions[1]]
    assert (res.entropy >= 0).all() and (res.entropy <= np.log(res.vocab_size) + 1e-4).all()
    assert (res.kl_to_final >= 0).all()
    assert np.all(np.diff(res.top_probs, axis=-1) <= 1e-7)
    assert res.top_tokens[0, 0, 0] == tok.convert_ids_to_tokens(int(res.top_ids[0, 0, 0]))
    assert res.target is None and res.target_prob is None


def test_layer_names():
    assert layer_names(3) == ["emb", "1", "2", "out"]
    assert len(layer_names(30)) == 31


def test_raw_prompt(llama, tok):
    res = lenskit.run_lens(llama, tok, PROMPT, chat=False)
    assert not res.chat and res.template_positions.size == 0
    assert len(res.token_ids) == len(tok(PROMPT)["input_ids"])


def test_progress_callback(llama, tok):
    seen = []
    lenskit.run_lens(llama, tok, PROMPT, chunk_size=4, progress=lambda f, m: seen.append((f, m)))
    assert seen[0][0] == 0.0 and seen[-1][0] == 1.0
    assert all(isinstance(m, str) for _, m in seen)


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"prompt": ""}, PromptError, "empty"),
        ({"prompt": "  \n\t "}, PromptError, "empty"),
        ({"prompt": "capital " * 200}, PromptError, "longer than the model's context of 128"),
        ({"target": " Canberra is"}, TargetError, "tokens"),
        ({"target": ""}, TargetError, "empty"),
        ({"top_k": 0}, ValueError, "top_k"),
        ({"top_k": 10**6}, ValueError, "top_k"),
        ({"chunk_size": 0}, ValueError, "chunk_size"),
        ({"chat": False, "system": "x"}, PromptError, "system"),
        # Command-line bytes that are not UTF-8 arrive as lone surrogates.
        ({"prompt": "hi \udcff"}, PromptError, "not valid UTF-8 .* character 3"),
        ({"system": "\udcfe"}, PromptError, "system prompt is not valid UTF-8"),
        ({"target": "\udcff"}, TargetError, "target is not valid UTF-8"),
        ({"prompt": 123}, PromptError, "must be text .* got int"),
        ({"prompt": [{"role": "user", "content": None}]}, PromptError, "content of the last"),
        ({"prompt": [{"role": 1, "content": "hi"}]}, PromptError, "role of message 0"),
        ({"target": 3.0}, TargetError, "must be text .* got float"),
        ({"target": True}, TargetError, "got bool"),
    ],
)
def test_bad_inputs(llama, tok, kwargs, error, pattern):
    args = {"prompt": PROMPT, **kwargs}
    with pytest.raises(error, match=pattern):
        lenskit.run_lens(llama, tok, args.pop("prompt"), **args)


def test_target_message_shows_tokenization(llama, tok):
    with pytest.raises(TargetError) as info:
        lenskit.run_lens(llama, tok, PROMPT, target="Canberra!!")
    assert "Canberra!!" in str(info.value) and "[" in str(info.value)


@pytest.mark.parametrize("target", ["Canberra!!", " Canberrazz", "\U0001f998 x"])
def test_target_message_suggests_a_piece_that_works(llama, tok, target):
    """The first piece the message offers is accepted as a target and is the first token."""
    with pytest.raises(TargetError) as info:
        target_token_id(tok, target)
    first = tok.encode(target, add_special_tokens=False)[0]
    suggested = re.search(r"the first piece is ('.*?'|\".*?\") if", str(info.value))
    if suggested:
        assert target_token_id(tok, ast.literal_eval(suggested.group(1))) == first
    else:  # a single byte of a character (this tokenizer's emoji): named by its id
        assert f"part of a character: give its id {first}" in str(info.value)
        assert "\U0001f998" in target


def test_fragments_of_characters_display_as_bytes(llama, tok):
    """An emoji split over byte-level tokens shows its pieces as <F0 9F> ...; the flag travels
    with the result (JSON included); results saved before it existed load as unknown."""
    text = "A kangaroo \U0001f998 and caf\u00e9"
    res = lenskit.run_lens(llama, tok, text, chat=False)
    assert res.byte_level is True
    shown = "".join(res.display_tokens)
    assert "<F0" in shown and "\u00f0" not in shown  # no stand-in characters
    # The display spells exactly the prompt's bytes: text where whole, <XX ..> where not.
    parts = re.split(r"<([0-9A-F]{2}(?: [0-9A-F]{2})*)>", shown.replace("\u2423", " "))
    data = b"".join(bytes.fromhex(part) if i % 2 else part.encode() for i, part in enumerate(parts))
    assert data == text.encode()
    back = LensResult.from_json(res.to_json())
    assert back.byte_level is True and list(back.display_tokens) == list(res.display_tokens)
    old = json.loads(res.to_json())
    del old["byte_level"]
    assert LensResult.from_dict(old).byte_level is None


def test_leading_space_hint_only_when_it_helps(tok):
    """The message suggests ' word' only where that is one token (QA: it suggested
    ' Canberra city', itself two tokens)."""
    assert len(tok.encode("Canberra", add_special_tokens=False)) > 1
    with pytest.raises(TargetError, match="' Canberra' is one token"):
        target_token_id(tok, "Canberra")
    with pytest.raises(TargetError) as info:
        target_token_id(tok, "Canberra city")
    assert "leading space" not in str(info.value)


@pytest.mark.parametrize("text", ["\u00e9", "\u00fc", "\u00b0", "\u00a3"])
def test_text_target_is_never_read_as_a_byte(tok, text):
    """Review: "é" is also the byte-level entry for the byte 0xE9 (part of other characters);
    typed as text it is two tokens, an error, not that byte's id."""
    assert len(tok.encode(text, add_special_tokens=False)) > 1
    assert tok.convert_tokens_to_ids(text) != tok.unk_token_id
    with pytest.raises(TargetError, match="tokens"):
        target_token_id(tok, text)


def test_earlier_turns_may_hold_structured_content(llama, tok):
    """Only the last message (the user's text) must be text; a template decides the rest."""
    messages = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": None},
        {"role": "user", "content": PROMPT},
    ]
    # This ChatML template cannot render None: its own error, not a "must be text" one.
    with pytest.raises(PromptError, match="chat template rejected"):
        lenskit.run_lens(llama, tok, messages)


def test_target_by_vocabulary_spelling(tok):
    """A vocabulary entry with a space / byte marker (byte-level "\u0120Canberra") names
    its own id."""
    for text in [" Canberra", " the"]:
        tid = tok.encode(text, add_special_tokens=False)[0]
        spelling = tok.convert_ids_to_tokens(tid)
        assert tok.encode(spelling, add_special_tokens=False) != [tid]
        assert target_token_id(tok, spelling) == tid


def test_chat_without_template_errors(llama):
    with pytest.raises(PromptError, match="no chat template"):
        lenskit.run_lens(llama, make_plain_tokenizer(), PROMPT)
    res = lenskit.run_lens(llama, make_plain_tokenizer(), PROMPT, chat=False)
    assert res.n_positions > 0


def test_target_by_id(llama, tok):
    tid = tok.encode(" Canberra", add_special_tokens=False)[0]
    a = lenskit.run_lens(llama, tok, PROMPT, target=tid)
    b = lenskit.run_lens(llama, tok, PROMPT, target=" Canberra")
    assert a.target_id == b.target_id == tid
    np.testing.assert_array_equal(a.target_prob, b.target_prob)


def test_json_round_trip_and_frame(llama, tok):
    res = lenskit.run_lens(llama, tok, PROMPT, system="Be brief.", target=" Canberra", top_k=3)
    back = LensResult.from_json(res.to_json())
    for name in ("entropy", "kl_to_final", "top_probs", "target_prob"):
        np.testing.assert_array_equal(getattr(back, name), getattr(res, name))
    for name in ("token_ids", "top_ids", "template_positions", "is_special", "target_rank"):
        np.testing.assert_array_equal(getattr(back, name), getattr(res, name))
    assert list(back.top_tokens.ravel()) == list(res.top_tokens.ravel())
    assert back.system == "Be brief." and back.target == " Canberra" and back.units == res.units
    json.loads(res.to_json())  # plain JSON
    frame = res.to_frame()
    assert len(frame) == res.n_rows * res.n_positions
    assert {"entropy", "kl_to_final", "top1_token", "top3_prob", "target_prob"} <= set(
        frame.columns
    )
    assert frame["is_template"].sum() == res.n_rows * len(res.template_positions)
    assert (frame["target"] == " Canberra").all() and (frame["target_id"] == res.target_id).all()
    assert (frame["lens"] == res.lens).all()  # a CSV says which lens read it


def test_blocked_topk_matches_torch():
    torch.manual_seed(0)
    for v in (4096, 4100, 49152 + 17):
        z = torch.randn(37, v) * 4
        z[3, -1] = 100.0  # the maximum in the ragged tail
        vals, ids = _topk(z, 5)
        ref = torch.topk(z, 5, dim=-1)
        torch.testing.assert_close(vals, ref.values, rtol=0, atol=0)
        torch.testing.assert_close(ids, ref.indices)


def test_bfloat16_model(tok):
    model = make_tiny_model("llama", len(tok)).to(torch.bfloat16)
    res = lenskit.run_lens(model, tok, PROMPT)
    ref = lenskit.run_lens(make_tiny_model("llama", len(tok)), tok, PROMPT)
    assert res.entropy.dtype == np.float32
    np.testing.assert_allclose(res.entropy, ref.entropy, atol=0.15)


def test_display_tokens_are_formatted(llama, tok):
    """display_tokens (and the frame's display_token column) are the readable spellings."""
    from lenskit.text.tokens import format_token

    res = lenskit.run_lens(llama, tok, PROMPT)
    assert list(res.display_tokens) == [format_token(str(t)) for t in res.tokens]
    newline = res.template_positions[1]
    assert res.tokens[newline] == "\u010a" and res.display_tokens[newline] == "\u21b5"
    assert res.to_frame().query("layer_index == 0")["display_token"].tolist() == list(
        res.display_tokens
    )
