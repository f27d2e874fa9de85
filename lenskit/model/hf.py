"""``from_pretrained`` for a model and its tokenizer, every failure a ModelLoadError."""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from lenskit.errors import ModelLoadError
from lenskit.model.architecture import vocabulary_mismatch


def _check_causal_lm(model: Any, what: str) -> None:
    if not hasattr(model, "get_output_embeddings") or model.get_output_embeddings() is None:
        raise ModelLoadError(
            f"{what} loaded but has no output embedding (language-model head): the logit lens "
            "needs a causal language model (e.g. a *ForCausalLM checkpoint)."
        )


def _load_hf(
    source: str,
    *,
    what: str,
    dtype: torch.dtype | str,
    trust_remote_code: bool,
    device_map: Any,
    gguf_file: str | None = None,
    local_files_only: bool = False,
    on_stage: Callable[[str], None] | None = None,
) -> tuple[Any, Any]:
    """from_pretrained for model + tokenizer, every failure turned into ModelLoadError.

    ``on_stage`` is called with "config", "model" and "tokenizer" as each load begins (a
    GGUF conversion spends tens of seconds in each: progress for the caller to show)."""
    import transformers

    def stage(name: str) -> None:
        if on_stage is not None:
            on_stage(name)

    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if local_files_only:
        kwargs["local_files_only"] = True
    if gguf_file is not None:
        kwargs["gguf_file"] = gguf_file
    stage("config")
    try:
        config = transformers.AutoConfig.from_pretrained(source, **kwargs)
    except Exception as exc:  # noqa: BLE001 - any failure here means "cannot load this"
        raise ModelLoadError(_explain(source, what, exc, gguf_file)) from exc
    archs = [a for a in (getattr(config, "architectures", None) or []) if a]
    if archs and not set(archs) & _causal_lm_class_names():
        raise ModelLoadError(
            f"{what} is a {', '.join(archs)} checkpoint ({getattr(config, 'model_type', '?')}), "
            "not a causal language model: the logit lens needs one "
            "(a *ForCausalLM checkpoint such as Llama, Qwen, Gemma, GPT-2)."
        )
    model_kwargs = dict(kwargs)
    model_kwargs["dtype"] = dtype
    if gguf_file is None:
        # safetensors when the checkpoint has them; pickled .bin only as a fallback.
        model_kwargs["use_safetensors"] = _has_safetensors(source)
    if device_map is not None:
        model_kwargs["device_map"] = device_map
    stage("model")
    try:
        with _gguf_bar_follows_hf(gguf_file is not None):
            model = transformers.AutoModelForCausalLM.from_pretrained(source, **model_kwargs)
    except ValueError as exc:
        if "Unrecognized configuration class" in str(exc) or "does not support" in str(exc):
            raise ModelLoadError(
                f"{what} is a {type(config).__name__} ({getattr(config, 'model_type', '?')}), "
                "which is not a causal language model: the logit lens needs one "
                "(a *ForCausalLM checkpoint such as Llama, Qwen, Gemma, GPT-2)."
            ) from exc
        raise ModelLoadError(_explain(source, what, exc, gguf_file)) from exc
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(_explain(source, what, exc, gguf_file)) from exc
    stage("tokenizer")
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(source, **kwargs)
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(
            f"{what}: the model loaded but its tokenizer did not ({type(exc).__name__}: "
            f"{_first_line(exc)}). The checkpoint needs tokenizer files next to the weights."
        ) from exc
    _check_causal_lm(model, what)
    mismatch = vocabulary_mismatch(model, tokenizer)
    if mismatch is not None:
        raise ModelLoadError(f"{what}: {mismatch}")
    return model, tokenizer


@contextlib.contextmanager
def _gguf_bar_follows_hf(gguf: bool) -> Iterator[None]:
    """transformers draws its GGUF de-quantization bar with a bare tqdm that ignores
    ``disable_progress_bar()``; while loading a GGUF quietly, hand it a disabled one."""
    from transformers.utils import logging as hf_logging

    module = sys.modules.get("transformers.modeling_gguf_pytorch_utils") if gguf else None
    original = getattr(module, "tqdm", None)
    if original is None or hf_logging.is_progress_bar_enabled():
        yield
        return
    module.tqdm = functools.partial(original, disable=True)
    try:
        yield
    finally:
        module.tqdm = original


#: One GGUF conversion at a time per process: _gguf_parsed_once swaps module attributes, and


def _causal_lm_class_names() -> set[str]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    names: set[str] = set()
    for value in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():
        names.update([value] if isinstance(value, str) else value)
    return names


def _has_safetensors(source: str) -> bool | None:
    p = Path(source).expanduser()
    if p.is_dir():
        return any(p.glob("*.safetensors")) or None
    return None  # hub: let transformers prefer safetensors and fall back by itself


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _explain(source: str, what: str, exc: BaseException, gguf_file: str | None = None) -> str:
    msg = f"Could not load {what} ({type(exc).__name__}: {_first_line(exc)})."
    if "trust_remote_code" in str(exc):
        return msg + " It needs custom code: pass trust_remote_code=True if you trust it."
    if gguf_file is not None:
        return msg + (
            " Check that it is a complete GGUF file of a causal LM (a partial download or "
            "another format fails like this) and that the gguf package is installed."
        )
    if Path(source).expanduser().exists():
        return (
            msg
            + " Check that the directory holds a complete Hugging Face checkpoint (config.json, weights, tokenizer files)."
        )
    return (
        msg + " Check the hub id (e.g. 'HuggingFaceTB/SmolLM2-135M-Instruct'), that it is in the "
        "local Hugging Face cache or the network is reachable, or pass a local directory / .gguf file."
    )


#: Progress of a GGUF conversion at the start of each stage of :func:`_load_hf`, from the
#: share of time each took converting the default model (2 CPU cores, ~15 s in all: the one
