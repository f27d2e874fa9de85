"""Architecture discovery: where a causal LM keeps its blocks, final norm and unembedding.

Table-driven (attribute paths per family), so a new family is one entry in a path table.
:func:`find_readout` gives a :class:`Readout` whose ``logits(hidden)`` is the logit-lens
read-out of a residual state; :func:`attention_site` says where a family's attention sits
inside a block and how the residual stream "after attention, before the MLP" is formed (the
sub-block rows of ``run_lens(..., sublayers=True)``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lenskit.errors import InputError, ReadoutError

__all__ = [
    "AttentionSite",
    "Readout",
    "attention_site",
    "context_length",
    "decoder_layers",
    "find_readout",
    "model_name",
    "vocabulary_mismatch",
]


def model_name(model: Any) -> str:
    """What ``model`` was loaded from (as given to :func:`load_model`), else its name_or_path."""
    name = getattr(model, "_lenskit_name", None)
    if name:
        return str(name)
    return str(getattr(model, "name_or_path", "") or getattr(model.config, "_name_or_path", ""))


def context_length(model: Any) -> int | None:
    """Longest input the model supports, in tokens (``max_position_embeddings`` or the
    family's equivalent), or None when the config does not say."""
    config = _text_config(model.config)
    for key in (
        "max_position_embeddings",
        "n_positions",
        "max_sequence_length",
        "seq_length",
        "n_ctx",
    ):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _text_config(config: Any) -> Any:
    get = getattr(config, "get_text_config", None)
    if callable(get):
        try:
            return get()
        except Exception:  # noqa: BLE001 - old/odd configs
            return config
    return config


def _get_path(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


# Where each family keeps its blocks and final norm (attribute paths from the *ForCausalLM).
# Families not listed are tried against all known paths.
_LAYER_PATHS = (
    "model.layers",  # llama, mistral, qwen2/3, gemma*, phi3, cohere, granite, olmo ...
    "model.decoder.layers",  # opt
    "transformer.h",  # gpt2, gpt-j, falcon, bloom, codegen
    "gpt_neox.layers",  # gpt-neox, pythia
    "model.language_model.layers",  # multimodal wrappers (gemma3, llava ...)
    "language_model.model.layers",
    "transformer.blocks",  # mpt
    "transformer.layers",
    "backbone.layers",
    "model.h",
)
_NORM_PATHS = (
    "model.norm",
    "model.decoder.final_layer_norm",
    "transformer.ln_f",
    "gpt_neox.final_layer_norm",
    "model.final_layernorm",  # phi-1/2
    "model.language_model.norm",
    "language_model.model.norm",
    "transformer.norm_f",  # mpt
    "transformer.final_layernorm",
    "backbone.norm_f",
    "model.ln_f",
)
_PROJECT_OUT_PATHS = ("model.decoder.project_out",)  # opt with word_embed_proj_dim != hidden


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The model's decoder blocks, in order (L of them; ``hidden_states`` has L + 1 entries).

    Raises:
        ReadoutError: the architecture keeps its blocks somewhere unknown.
    """
    for path in _LAYER_PATHS:
        layers = _get_path(model, path)
        if isinstance(layers, nn.ModuleList) and len(layers) > 0:
            return layers
    raise ReadoutError(
        f"lenskit does not know where {type(model).__name__} "
        f"(model_type={getattr(model.config, 'model_type', '?')!r}) keeps its decoder blocks; "
        f"looked for {', '.join(_LAYER_PATHS)}."
    )


@dataclass
class Readout:
    """How a model turns a residual-stream state into logits.

    ``logits(h) = transform(unembed(project_out(norm(h))))`` where ``transform`` multiplies by
    ``scale`` and then soft-caps: ``cap * tanh(z / cap)`` when ``softcap`` is set.

    Attributes:
        norm: the final normalisation (``nn.Identity`` when the model has none).
        unembed: the output embedding (``model.get_output_embeddings()``), ``[V, d]`` weight.
        project_out: OPT's projection after the final norm, else None.
        softcap: final logit soft-capping (Gemma 2/3 ``final_logit_softcapping``), else None.
        scale: multiplier on the logits (Cohere ``logit_scale``, Granite
            ``1 / logits_scaling``), 1.0 otherwise.
        architecture: the model class name, for messages.
    """

    norm: nn.Module
    unembed: nn.Module
    project_out: nn.Module | None = None
    softcap: float | None = None
    scale: float = 1.0
    architecture: str = ""

    @property
    def vocab_size(self) -> int:
        """V, the number of logits (rows of the unembedding weight)."""
        return int(self.unembed.weight.shape[0])

    def normalize(self, hidden: torch.Tensor) -> torch.Tensor:
        """Residual state ``[..., d]`` -> what the unembedding reads (final norm, projection)."""
        out = self.norm(hidden)
        if self.project_out is not None:
            out = self.project_out(out)
        # With a device_map the final norm may sit on another GPU than the unembedding.
        return out.to(self.unembed.weight.device)

    def transform(self, logits: torch.Tensor, *, inplace: bool = False) -> torch.Tensor:
        """Apply the model's own scaling and soft-capping to raw unembedding outputs.

        ``inplace=True`` overwrites ``logits`` (same operations, same values): the streamed
        read-out reuses one logits buffer across chunks.
        """
        if self.scale != 1.0:
            logits = logits.mul_(self.scale) if inplace else logits * self.scale
        if self.softcap is not None:
            if inplace:
                logits = logits.div_(self.softcap).tanh_().mul_(self.softcap)
            else:
                logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    def final_logits(self, final_hidden: torch.Tensor) -> torch.Tensor:
        """Logits ``[..., V]`` from HF's LAST hidden state ``[..., d]``, which is already
        normalised: unembedding and the model's logit scaling / soft-capping only (never a
        second norm)."""
        return self.transform(self.unembed(final_hidden))

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logit-lens read-out ``[..., V]`` of an intermediate residual state ``[..., d]``."""
        return self.final_logits(self.normalize(hidden))


def find_readout(model: nn.Module) -> Readout:
    """Discover the final norm, unembedding and logit transform of a causal LM.

    Raises:
        ReadoutError: naming the architecture, when a part cannot be found.
    """
    arch = type(model).__name__
    model_type = getattr(model.config, "model_type", "?")
    unembed = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if unembed is None or getattr(unembed, "weight", None) is None:
        raise ReadoutError(
            f"{arch} (model_type={model_type!r}) has no output embedding (get_output_embeddings() "
            "is None): the logit lens needs a causal LM head."
        )
    norm = None
    found_path = False
    for path in _NORM_PATHS:
        parent, _, leaf = path.rpartition(".")
        owner = _get_path(model, parent) if parent else model
        if owner is not None and hasattr(owner, leaf):
            found_path = True
            norm = getattr(owner, leaf)
            break
    if not found_path:
        raise ReadoutError(
            f"lenskit does not know where {arch} (model_type={model_type!r}) keeps its final "
            f"norm; looked for {', '.join(_NORM_PATHS)}."
        )
    if norm is None:  # e.g. OPT-350m: final_layer_norm = None (post-norm blocks)
        norm = nn.Identity()
    project_out = None
    for path in _PROJECT_OUT_PATHS:
        project_out = _get_path(model, path)
        if project_out is not None:
            break
    config = _text_config(model.config)
    softcap = getattr(config, "final_logit_softcapping", None)
    scale = 1.0
    if getattr(config, "logit_scale", None) is not None and model_type.startswith("cohere"):
        scale = float(config.logit_scale)
    if getattr(config, "logits_scaling", None):
        scale = 1.0 / float(config.logits_scaling)
    return Readout(
        norm=norm,
        unembed=unembed,
        project_out=project_out,
        softcap=float(softcap) if softcap else None,
        scale=scale,
        architecture=arch,
    )


def vocabulary_mismatch(model: nn.Module, tokenizer: Any) -> str | None:
    """Why ``tokenizer`` cannot drive ``model``, or None when it can.

    A tokenizer with more tokens than the model has logits (a checkpoint saved beside another
    model's tokenizer) would feed the embedding ids it does not have. A model with more logits
    than the tokenizer has tokens is fine (vocabularies are often padded).
    """
    unembed = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    weight = getattr(unembed, "weight", None)
    if weight is None or tokenizer is None:
        return None
    n_logits = int(weight.shape[0])
    try:
        n_tokens = len(tokenizer)
    except TypeError:
        return None
    if n_tokens <= n_logits:
        return None
    return (
        f"the tokenizer has {n_tokens} tokens but the model's vocabulary has only {n_logits} "
        "(its unembedding rows): they do not belong together. Load the tokenizer saved with "
        "this checkpoint."
    )


# --- sub-blocks: the residual stream after attention, before the MLP ------------------------


@dataclass(frozen=True)
class AttentionSite:
    """Where a block's attention sits and how the residual stream after it is formed.

    ``mid = after_norm(h_in + multiplier * post_norm(attn_out))`` where ``h_in`` is the block's
    input and ``attn_out`` the attention module's output (its first element when it returns a
    tuple); each part applies only where the family has it (all names are attributes of the
    block).

    Attributes:
        attention: the attention module's attribute (``"self_attn"``, ``"attn"`` ...).
        post_norm: a norm on the attention output before the residual add (Gemma 2/3, OLMo 2/3
            ``post_attention_layernorm``), else None.
        multiplier: a scale on the attention output (Granite ``residual_multiplier``), else None.
        after_norm: a norm on the sum (post-norm OPT ``self_attn_layer_norm``), else None.
    """

    attention: str
    post_norm: str | None = None
    multiplier: str | None = None
    after_norm: str | None = None

    def module(self, block: nn.Module) -> nn.Module:
        """The attention module of ``block``."""
        return getattr(block, self.attention)

    def residual(
        self, block: nn.Module, block_input: torch.Tensor, attn_out: torch.Tensor
    ) -> torch.Tensor:
        """The residual stream after the attention of ``block``, ``[..., d]``."""
        x = attn_out
        if self.post_norm is not None:
            x = getattr(block, self.post_norm)(x)
        if self.multiplier is not None:
            x = x * getattr(block, self.multiplier)
        mid = block_input + x.to(block_input.dtype)
        if self.after_norm is not None:
            mid = getattr(block, self.after_norm)(mid)
        return mid


_PRE_NORM = AttentionSite("self_attn")
_POST_NORM = AttentionSite("self_attn", post_norm="post_attention_layernorm")
_GRANITE = AttentionSite("self_attn", multiplier="residual_multiplier")
# model_type -> site, for families whose blocks are always sequential (attention, then MLP).
_ATTENTION_SITES: dict[str, AttentionSite] = {
    **dict.fromkeys(
        (
            "llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "phi3",
            "gemma", "olmo", "smollm3", "starcoder2", "deepseek_v3",
        ),
        _PRE_NORM,
    ),
    **dict.fromkeys(("gemma2", "gemma3", "gemma3_text", "olmo2", "olmo3", "exaone4"), _POST_NORM),
    **dict.fromkeys(("granite", "granitemoe"), _GRANITE),
    **dict.fromkeys(("gpt2", "gpt_bigcode"), AttentionSite("attn")),
}  # fmt: skip
#: Families whose attention and MLP both read the block's input (parallel blocks).
_PARALLEL = ("gptj", "codegen", "phi", "cohere", "cohere2")


def _conditional_site(model_type: str, config: Any) -> AttentionSite | None | str:
    """Families whose block layout depends on the config: a site, "parallel", or None
    (not one of them)."""
    if model_type in ("gpt_neox", "stablelm"):
        if getattr(config, "use_parallel_residual", False):
            return "parallel"
        return AttentionSite("attention" if model_type == "gpt_neox" else "self_attn")
    if model_type == "falcon":
        if getattr(config, "parallel_attn", True) or getattr(
            config, "new_decoder_architecture", False
        ):
            return "parallel"
        return AttentionSite("self_attention")
    if model_type == "opt":
        post = not getattr(config, "do_layer_norm_before", True)
        return AttentionSite("self_attn", after_norm="self_attn_layer_norm" if post else None)
    return None


def attention_site(model: nn.Module) -> AttentionSite:
    """Where the attention of ``model``'s blocks sits, for the sub-block rows.

    Raises:
        InputError: the blocks compute attention and the MLP in parallel (GPT-J, GPT-NeoX with
            ``use_parallel_residual``, Phi-1/2, Cohere, Falcon with parallel attention ...),
            so no residual state lies between them; or lenskit does not know the family.
    """
    arch = type(model).__name__
    config = _text_config(model.config)
    model_type = str(
        getattr(config, "model_type", None) or getattr(model.config, "model_type", "?")
    )
    what = f"{arch} (model_type={model_type!r})"
    site = _ATTENTION_SITES.get(model_type) or _conditional_site(model_type, config)
    if site == "parallel" or model_type in _PARALLEL:
        raise InputError(
            f"{what} computes attention and the MLP in parallel from the same block input: its "
            "blocks have no residual state after attention and before the MLP, so there are no "
            "sub-block rows. Run without sublayers."
        )
    if not isinstance(site, AttentionSite):
        known = ", ".join(sorted({*_ATTENTION_SITES, "gpt_neox", "stablelm", "falcon", "opt"}))
        raise InputError(
            f"lenskit does not know where {what} keeps attention inside its blocks, so it "
            f"cannot read sub-block rows for it (known families: {known}). Run without sublayers."
        )
    for i, block in enumerate(decoder_layers(model)):
        names = [n for n in (site.attention, site.post_norm, site.multiplier, site.after_norm) if n]
        missing = [n for n in names if getattr(block, n, None) is None]
        if missing:
            raise InputError(
                f"{what}: block {i} has no {', '.join(missing)}, where lenskit expects this "
                "family's attention; sub-block rows are not available. Run without sublayers."
            )
    return site
