"""The lens: one read-out engine, the lens interface, and the views built on them."""

from lenskit.lens.lenses import LENSES, Lens, LogitLens, get_lens
from lenskit.lens.readout import DEFAULT_CHUNK_BYTES, ReadoutEngine, blocked_topk, layer_names
from lenskit.lens.views import (
    generation_lens,
    layer_pairwise_kl,
    lens_on_generation,
    lens_result,
    pairwise_result,
    run_lens,
)

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "LENSES",
    "Lens",
    "LogitLens",
    "ReadoutEngine",
    "blocked_topk",
    "generation_lens",
    "get_lens",
    "layer_names",
    "layer_pairwise_kl",
    "lens_on_generation",
    "lens_result",
    "pairwise_result",
    "run_lens",
]
