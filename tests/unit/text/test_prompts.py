"""encode_prompt: template positions, BOS handling, errors."""

from __future__ import annotations

import pytest
from conftest import make_chatml_tokenizer, make_llama3_tokenizer, make_plain_tokenizer

from lenskit.errors import PromptError
from lenskit.text.prompts import EncodedPrompt, encode_prompt

Q = "What is the capital of Australia?"


@pytest.fixture(scope="module")
def chatml():
    return make_chatml_tokenizer()


@pytest.fixture(scope="module")
def llama3():
    return make_llama3_tokenizer()


def _template_tokens(enc: EncodedPrompt) -> list[str]:
    return [enc.tokens[i] for i in enc.template_positions]


@pytest.mark.parametrize("system", [None, "Be brief."])
def test_chatml_template_positions(chatml, system):
    enc = encode_prompt(chatml, Q, system=system)
    assert _template_tokens(enc) == [
        "<|im_end|>",
        "\u010a",
        "<|im_start|>",
        *chatml.tokenize("assistant"),
        "\u010a",
    ]
    # they are the last tokens, right after the user's text
    assert enc.template_positions == list(range(enc.user_span[1], len(enc)))
    assert chatml.decode(enc.input_ids[enc.user_span[0] : enc.user_span[1]]) == Q
    assert enc.text.endswith("<|im_start|>assistant\n")
    if system is None:  # SmolLM2's template adds its default system prompt
        assert "You are a helpful AI assistant" in enc.text
    else:
        assert "<|im_start|>system\nBe brief.<|im_end|>" in enc.text
    assert enc.is_special[0] and enc.tokens[0] == "<|im_start|>"
    assert [enc.is_special[i] for i in enc.template_positions][:3] == [True, False, True]


@pytest.mark.parametrize("system", [None, "Be brief."])
def test_llama3_template_positions_and_single_bos(llama3, system):
    enc = encode_prompt(llama3, "  " + Q + "  ", system=system)  # the template trims content
    assert _template_tokens(enc) == [
        "<|eot_id|>",
        "<|start_header_id|>",
        *llama3.tokenize("assistant"),
        "<|end_header_id|>",
        "\u010a",
        "\u010a",
    ]
    bos = llama3.bos_token_id
    assert enc.input_ids[0] == bos and enc.input_ids.count(bos) == 1  # no double BOS
    assert llama3.decode(enc.input_ids[enc.user_span[0] : enc.user_span[1]]) == Q
    # the plain tokenizer call would have added a second BOS
    assert llama3(enc.text)["input_ids"][:2] == [bos, bos]


def test_raw_prompt(chatml, llama3):
    enc = encode_prompt(chatml, Q, chat=False)
    assert enc.template_positions == [] and not enc.chat
    assert enc.input_ids == chatml(Q)["input_ids"]
    enc3 = encode_prompt(llama3, Q, chat=False)
    assert enc3.input_ids[0] == llama3.bos_token_id  # raw text keeps the tokenizer's BOS


def test_messages_input(chatml):
    messages = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help you today?"},
        {"role": "user", "content": Q},
    ]
    enc = encode_prompt(chatml, messages)
    assert enc.prompt == Q
    assert len(enc.template_positions) == 4 + len(chatml.tokenize("assistant"))


def test_user_text_repeated_in_system(chatml):
    """The user's text also appearing earlier (in the system prompt) must not confuse it."""
    enc = encode_prompt(chatml, "Hello", system="Say Hello")
    assert _template_tokens(enc)[0] == "<|im_end|>"
    assert enc.template_positions[0] == enc.user_span[1]


@pytest.mark.parametrize("prompt", ["", "   ", "\n\t"])
def test_empty_prompt(chatml, prompt):
    with pytest.raises(PromptError, match="empty"):
        encode_prompt(chatml, prompt)
    with pytest.raises(PromptError, match="empty"):
        encode_prompt(chatml, prompt, chat=False)


def test_no_chat_template(chatml):
    plain = make_plain_tokenizer()
    with pytest.raises(PromptError, match="no chat template") as info:
        encode_prompt(plain, Q)
    assert isinstance(info.value, ValueError)
    assert encode_prompt(plain, Q, chat=False).input_ids


def test_too_long(chatml):
    with pytest.raises(PromptError, match="longer than the model's context of 10"):
        encode_prompt(chatml, Q, max_length=10)
    assert len(encode_prompt(chatml, Q, chat=False, max_length=100)) <= 100


def test_system_needs_chat(chatml):
    with pytest.raises(PromptError, match="system"):
        encode_prompt(chatml, Q, chat=False, system="x")


def test_template_rejecting_messages():
    tok = make_chatml_tokenizer()
    tok.chat_template = "{{ raise_exception('System role not supported') }}"
    with pytest.raises(PromptError, match="System role not supported"):
        encode_prompt(tok, Q)


def test_encoded_prompt_validation():
    with pytest.raises(ValueError):
        EncodedPrompt([1, 2], ["a"], [False, False], [], "ab", chat=False)
    with pytest.raises(ValueError):
        EncodedPrompt([1, 2], ["a", "b"], [False, False], [5], "ab", chat=True)
    with pytest.raises(PromptError):
        EncodedPrompt([], [], [], [], "", chat=False)
