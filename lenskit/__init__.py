"""lenskit: logit-lens explorer with fused entropy/KL kernels."""

from lenskit.lens import LensResult, run_lens
from lenskit.ops import backend, entropy, extension_error, kl_div, pairwise_kl

__all__ = [
    "LensResult",
    "backend",
    "entropy",
    "extension_error",
    "kl_div",
    "pairwise_kl",
    "run_lens",
]
__version__ = "0.1.0"
