"""Models: loading, devices, architecture discovery and the one forward helper."""

from lenskit.model.architecture import (
    Readout,
    context_length,
    decoder_layers,
    find_readout,
    model_name,
    vocabulary_mismatch,
)
from lenskit.model.devices import DEVICE_ENV, default_device
from lenskit.model.forward_pass import (
    accepts,
    cache_kwarg,
    eos_token_ids,
    forward,
    hidden_states_forward,
    ids_list,
    model_device,
    model_logits,
)
from lenskit.model.gguf import DEFAULT_GGUF_NAME, cache_dir, default_model_path
from lenskit.model.load import load_model
from lenskit.model.pool import ModelPool

__all__ = [
    "DEFAULT_GGUF_NAME",
    "DEVICE_ENV",
    "ModelPool",
    "Readout",
    "accepts",
    "cache_dir",
    "cache_kwarg",
    "context_length",
    "decoder_layers",
    "default_device",
    "default_model_path",
    "eos_token_ids",
    "find_readout",
    "forward",
    "hidden_states_forward",
    "ids_list",
    "load_model",
    "model_device",
    "model_logits",
    "model_name",
    "vocabulary_mismatch",
]
