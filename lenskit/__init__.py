"""lenskit: logit-lens explorer with fused entropy/KL kernels.

Public API::

    model, tokenizer = lenskit.load_model("default")          # or a hub id / dir / .gguf
    result = lenskit.run_lens(model, tokenizer, "What is the capital of Australia?")
    result.entropy            # [R, T] nats, R = L + 1 rows ("emb", "1".."L-1", "out")
"""

from lenskit.interventions import (
    INTERVENTIONS,
    MAX_NEW_TOKENS,
    GenerationLengthError,
    InterventionError,
    LayerSelectionError,
    PositionSelectionError,
    SweepResult,
    UnknownInterventionError,
    greedy_generate,
    intervention_sweep,
    layer_pairwise_kl,
    lens_on_generation,
)
from lenskit.lens import LensResult, TargetError, layer_names, run_lens
from lenskit.models import (
    ModelLoadError,
    Readout,
    ReadoutError,
    cache_dir,
    decoder_layers,
    find_readout,
    load_model,
)
from lenskit.ops import backend, entropy, entropy_lse, extension_error, kl_div, pairwise_kl
from lenskit.prompts import EncodedPrompt, PromptError, encode_prompt

__all__ = [
    "INTERVENTIONS",
    "MAX_NEW_TOKENS",
    "GenerationLengthError",
    "InterventionError",
    "LayerSelectionError",
    "PositionSelectionError",
    "SweepResult",
    "UnknownInterventionError",
    "greedy_generate",
    "intervention_sweep",
    "layer_pairwise_kl",
    "lens_on_generation",
    "EncodedPrompt",
    "LensResult",
    "ModelLoadError",
    "PromptError",
    "Readout",
    "ReadoutError",
    "TargetError",
    "backend",
    "cache_dir",
    "decoder_layers",
    "encode_prompt",
    "entropy",
    "entropy_lse",
    "extension_error",
    "find_readout",
    "kl_div",
    "layer_names",
    "load_model",
    "pairwise_kl",
    "run_lens",
]
__version__ = "0.1.0"
