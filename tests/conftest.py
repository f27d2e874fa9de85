"""Shared test fixtures: tiny tokenizers and tiny random causal LMs, all built offline.

Nothing here downloads anything: tokenizers are trained with the ``tokenizers`` library on
an in-code corpus, models are built from configs with random weights.

Public helpers (other test modules import them from ``conftest``):

* :func:`make_chatml_tokenizer` - ByteLevel BPE, ChatML template like SmolLM2's.
* :func:`make_llama3_tokenizer` - ByteLevel BPE, Llama-3 style template, BOS post-processor.
* :func:`make_tiny_model` - tiny random causal LM of a given family.
* :data:`FAMILIES` - the family names :func:`make_tiny_model` knows.

Fixtures: ``chatml_tokenizer``, ``llama3_tokenizer`` (session), ``default_model`` (session: the
real SmolLM2 model + tokenizer, for slow tests), ``tiny_model_dir`` (session:
a saved tiny Llama + ChatML tokenizer; ``lenskit.load_model(str(path))`` loads it, and app
tests can point ``LENSKIT_DEFAULT_MODEL`` at it), ``tiny_default_model`` (function: sets
``LENSKIT_DEFAULT_MODEL`` to that dir and ``LENSKIT_CACHE_DIR`` to a tmp dir).
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

# Tests never reach the hub. huggingface_hub reads this once at import, so it must be set
# before transformers is imported; without it an unknown hub id waits ~20 s on retries here.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

# Make `import conftest` work from test modules whatever the rootdir/import mode.
sys.path.insert(0, str(Path(__file__).resolve().parent))

#: The repository's root folder.
REPO_ROOT = Path(__file__).resolve().parent.parent

_CORPUS = [
    "What is the capital of Australia? The capital of Australia is Canberra.",
    "What is the capital of France? The capital of France is Paris.",
    "What is the capital of Japan? The capital of Japan is Tokyo.",
    "The quick brown fox jumps over the lazy dog.",
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face",
    "system user assistant Hello! How can I help you today?",
    "A logit lens reads every layer of a language model through the unembedding.",
    "Entropy is measured in nats; KL divergence compares two distributions.",
    "Sydney Melbourne Canberra Brisbane Perth Adelaide Hobart Darwin",
    "one two three four five six seven eight nine ten 0 1 2 3 4 5 6 7 8 9",
    "Please answer briefly.\nThank you.\n\nYes, no, maybe.",
] * 4

CHATML_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
LLAMA3_SPECIALS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
]

# SmolLM2-135M-Instruct's template (default system prompt when none is given).
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Llama-3 instruct style: BOS in the text, header tokens, content trimmed, eot after each turn.
LLAMA3_TEMPLATE = (
    "{{- bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)


def _train_bpe(specials: list[str], vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,  # ids 0..len(specials)-1
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    return tok


@functools.cache
def _chatml_backend(vocab_size: int) -> str:
    tok = _train_bpe(CHATML_SPECIALS, vocab_size)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok.to_str()


@functools.cache
def _llama3_backend(vocab_size: int) -> str:
    tok = _train_bpe(LLAMA3_SPECIALS, vocab_size)
    bos = "<|begin_of_text|>"
    # Like the real Llama-3 tokenizer: plain encode() prepends BOS (so a template text that
    # already starts with BOS gets a double BOS unless add_special_tokens=False).
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, 0)]
            ),
        ]
    )
    return tok.to_str()


def make_chatml_tokenizer(vocab_size: int = 512) -> transformers.PreTrainedTokenizerFast:
    """ByteLevel BPE tokenizer (~``vocab_size`` tokens) with SmolLM2's ChatML chat template.

    Special tokens: ``<|endoftext|>`` (id 0, bos/eos/unk/pad), ``<|im_start|>`` (1),
    ``<|im_end|>`` (2). ``len(tokenizer)`` is the vocabulary size to give a tiny model.
    """
    tok = Tokenizer.from_str(_chatml_backend(vocab_size))
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
        chat_template=CHATML_TEMPLATE,
        model_max_length=8192,
    )


def make_llama3_tokenizer(vocab_size: int = 512) -> transformers.PreTrainedTokenizerFast:
    """ByteLevel BPE tokenizer with a Llama-3 style template; encode() prepends BOS."""
    tok = Tokenizer.from_str(_llama3_backend(vocab_size))
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        pad_token="<|end_of_text|>",
        additional_special_tokens=["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
        chat_template=LLAMA3_TEMPLATE,
        model_max_length=8192,
    )


def make_plain_tokenizer(vocab_size: int = 512) -> transformers.PreTrainedTokenizerFast:
    """Same vocabulary as the ChatML one but without a chat template."""
    tok = make_chatml_tokenizer(vocab_size)
    tok.chat_template = None
    return tok


# hidden 32-64, 2-3 layers, small context (so "prompt too long" is easy to test).
_D, _L, _H, _FF, _CTX = 32, 3, 4, 64, 128
# Token ids inside any tiny vocabulary (the defaults, e.g. GPT-2's 50256, are not).
_IDS = dict(bos_token_id=0, eos_token_id=0, pad_token_id=0)


def _cfg(family: str, v: int) -> transformers.PretrainedConfig:
    llama_like = dict(
        vocab_size=v,
        hidden_size=_D,
        intermediate_size=_FF,
        num_hidden_layers=_L,
        num_attention_heads=_H,
        num_key_value_heads=2,
        max_position_embeddings=_CTX,
        tie_word_embeddings=False,
        **_IDS,
    )
    if family == "llama":
        return transformers.LlamaConfig(**llama_like)
    if family == "llama_tied":
        return transformers.LlamaConfig(**{**llama_like, "tie_word_embeddings": True})
    if family == "mistral":
        return transformers.MistralConfig(**llama_like, sliding_window=None)
    if family == "qwen2":
        return transformers.Qwen2Config(**llama_like)
    if family == "qwen3":
        return transformers.Qwen3Config(**llama_like, head_dim=8)
    if family == "gemma2":
        return transformers.Gemma2Config(
            **llama_like,
            head_dim=8,
            final_logit_softcapping=5.0,  # small, so the cap visibly changes the logits
            attn_logit_softcapping=50.0,
            query_pre_attn_scalar=8,
            sliding_window=16,
        )
    if family == "gemma3":
        return transformers.Gemma3TextConfig(
            **llama_like,
            head_dim=8,
            final_logit_softcapping=5.0,
            query_pre_attn_scalar=8,
            sliding_window=16,
        )
    if family == "cohere":
        return transformers.CohereConfig(**llama_like, logit_scale=0.5)
    if family == "granite":
        return transformers.GraniteConfig(**llama_like, logits_scaling=4.0)
    if family == "phi3":
        return transformers.Phi3Config(
            **{k: w for k, w in llama_like.items() if k != "num_key_value_heads"},
            num_key_value_heads=_H,
        )
    if family == "gpt2":
        return transformers.GPT2Config(
            vocab_size=v, n_embd=_D, n_layer=_L, n_head=_H, n_positions=_CTX, n_inner=_FF, **_IDS
        )
    if family == "gpt_neox":
        return transformers.GPTNeoXConfig(
            vocab_size=v,
            hidden_size=_D,
            intermediate_size=_FF,
            num_hidden_layers=_L,
            num_attention_heads=_H,
            max_position_embeddings=_CTX,
            tie_word_embeddings=False,
            **_IDS,
        )
    if family == "opt":
        # word_embed_proj_dim != hidden_size exercises project_out (and project_in).
        return transformers.OPTConfig(
            vocab_size=v,
            hidden_size=_D,
            ffn_dim=_FF,
            num_hidden_layers=_L,
            num_attention_heads=_H,
            max_position_embeddings=_CTX,
            word_embed_proj_dim=16,
            do_layer_norm_before=True,
            **_IDS,
        )
    raise ValueError(f"unknown tiny model family {family!r}; known: {FAMILIES}")


#: Families make_tiny_model builds (the first ten are the required ones).
FAMILIES = (
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "gemma2",
    "gemma3",
    "gpt2",
    "gpt_neox",
    "phi3",
    "opt",
    "cohere",
    "granite",
    "llama_tied",
)


def make_tiny_model(family: str, vocab_size: int, seed: int = 0) -> transformers.PreTrainedModel:
    """Tiny random causal LM (hidden 32, 3 blocks, context 128) in eval mode, float32.

    Args:
        family: one of :data:`FAMILIES` (``gemma3`` is ``Gemma3ForCausalLM`` on a text config).
        vocab_size: number of logits; use ``len(tokenizer)``.
        seed: torch seed for the random weights.
    """
    config = _cfg(family, vocab_size)
    # eager attention: identical maths everywhere, no sdpa/flash differences between runs.
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    if family == "gemma3":
        model = transformers.Gemma3ForCausalLM(config)
    else:
        model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    # Random init leaves norms at 1 and biases at 0: perturb them so a missing or doubled
    # norm (or a dropped bias) changes the read-out measurably.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(0.3 * torch.randn_like(p))
            elif "embed" in name or "wte" in name or "lm_head" in name:
                p.normal_(0.0, 0.5)
    return model.float().eval()


@pytest.fixture(scope="session")
def chatml_tokenizer() -> transformers.PreTrainedTokenizerFast:
    return make_chatml_tokenizer()


@pytest.fixture(scope="session")
def llama3_tokenizer() -> transformers.PreTrainedTokenizerFast:
    return make_llama3_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny random Llama + ChatML tokenizer (safetensors); returns the directory."""
    path = tmp_path_factory.mktemp("tiny_llama")
    tok = make_chatml_tokenizer()
    model = make_tiny_model("llama", len(tok))
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path


@pytest.fixture
def tiny_default_model(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """Make ``load_model("default")`` load the tiny model (and cache into a tmp dir); the app
    runs it on the CPU even where there is a GPU (its results are compared with CPU runs)."""
    monkeypatch.setenv("LENSKIT_DEFAULT_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("LENSKIT_DEVICE", "cpu")
    monkeypatch.setenv("LENSKIT_CACHE_DIR", str(tmp_path / "cache"))
    return tiny_model_dir


if os.environ.get("LENSKIT_TEST_THREADS"):
    torch.set_num_threads(int(os.environ["LENSKIT_TEST_THREADS"]))


@pytest.fixture(scope="session")
def default_model():
    """The real default model (SmolLM2-135M-Instruct GGUF, cached after the first
    conversion), loaded once per session: ``(model, tokenizer)``. Ignores
    ``LENSKIT_DEFAULT_MODEL`` so it is always the real one."""
    import lenskit

    saved = os.environ.pop("LENSKIT_DEFAULT_MODEL", None)
    try:
        return lenskit.load_model("default")
    finally:
        if saved is not None:
            os.environ["LENSKIT_DEFAULT_MODEL"] = saved


def strong_model(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Re-draw the blocks' matrices large enough that every block matters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and not any(k in name for k in ("embed", "lm_head", "wte", "wpe")):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return model
