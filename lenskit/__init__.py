"""lenskit: logit-lens explorer with fused entropy/KL kernels.

Public API::

    model, tokenizer = lenskit.load_model("default")          # or a hub id / dir / .gguf
    result = lenskit.run_lens(model, tokenizer, "What is the capital of Australia?")
    result.entropy            # [R, T] nats, R = L + 1 rows ("emb", "1".."L-1", "out")

The layers, the data flow and the definitions are in docs/architecture.md.
"""

from lenskit.api import run
from lenskit.dataset.prompts import PromptItem, PromptSet, bundled_prompts, load_prompts
from lenskit.dataset.result import DatasetResult
from lenskit.dataset.run import run_dataset
from lenskit.errors import (
    GenerationLengthError,
    InputError,
    InterventionError,
    LayerSelectionError,
    LenskitError,
    ModelLoadError,
    PositionSelectionError,
    PromptError,
    ReadoutError,
    TargetError,
    UnknownInterventionError,
)
from lenskit.interventions import INTERVENTIONS, intervention_sweep, sweep_report
from lenskit.lens import (
    FidelityReport,
    Lens,
    LogitLens,
    ReadoutEngine,
    TunedLens,
    cached_lens,
    compare_fidelity,
    layer_names,
    layer_pairwise_kl,
    lens_fidelity,
    lens_on_generation,
    load_lens,
    run_lens,
    train_cached_lens,
    train_lens,
)
from lenskit.model import (
    Readout,
    cache_dir,
    decoder_layers,
    find_readout,
    load_model,
)
from lenskit.model.generate import greedy_generate
from lenskit.ops import backend, entropy, entropy_lse, extension_error, kl_div, pairwise_kl
from lenskit.requests import MAX_NEW_TOKENS as _MAX_NEW_TOKENS_OPTION
from lenskit.requests import LensRequest, PairwiseRequest, SweepRequest
from lenskit.results import GenerationLens, LensResult, PairwiseKL, SweepReport, SweepResult
from lenskit.text import EncodedPrompt, encode_prompt

#: Upper bound of ``max_new_tokens`` (:data:`lenskit.requests.MAX_NEW_TOKENS`).
MAX_NEW_TOKENS: int = _MAX_NEW_TOKENS_OPTION.hi

__all__ = [
    "INTERVENTIONS",
    "MAX_NEW_TOKENS",
    "DatasetResult",
    "EncodedPrompt",
    "FidelityReport",
    "GenerationLengthError",
    "GenerationLens",
    "InputError",
    "InterventionError",
    "LayerSelectionError",
    "Lens",
    "LensRequest",
    "LensResult",
    "LenskitError",
    "LogitLens",
    "ModelLoadError",
    "PairwiseKL",
    "PairwiseRequest",
    "PositionSelectionError",
    "PromptItem",
    "PromptSet",
    "PromptError",
    "Readout",
    "ReadoutEngine",
    "ReadoutError",
    "SweepReport",
    "SweepRequest",
    "SweepResult",
    "TargetError",
    "TunedLens",
    "UnknownInterventionError",
    "backend",
    "bundled_prompts",
    "cache_dir",
    "cached_lens",
    "compare_fidelity",
    "decoder_layers",
    "encode_prompt",
    "entropy",
    "entropy_lse",
    "extension_error",
    "find_readout",
    "greedy_generate",
    "intervention_sweep",
    "kl_div",
    "layer_names",
    "layer_pairwise_kl",
    "lens_fidelity",
    "lens_on_generation",
    "load_lens",
    "load_model",
    "load_prompts",
    "pairwise_kl",
    "run",
    "run_dataset",
    "run_lens",
    "sweep_report",
    "train_cached_lens",
    "train_lens",
]
__version__ = "0.1.0"
