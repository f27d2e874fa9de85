"""The lens: one read-out engine, the lens interface, and the views built on them."""

from lenskit.lens.fidelity import FidelityReport, compare_fidelity, lens_fidelity
from lenskit.lens.lenses import LENSES, Lens, LogitLens, get_lens
from lenskit.lens.readout import DEFAULT_CHUNK_BYTES, ReadoutEngine, blocked_topk, layer_names
from lenskit.lens.store import cached_lens, lens_cache_dir, train_cached_lens
from lenskit.lens.train import train_lens
from lenskit.lens.tuned import TunedLens, load_lens
from lenskit.lens.views import (
    generation_lens,
    layer_pairwise_kl,
    lens_on_generation,
    lens_result,
    pairwise_result,
    run_lens,
)

__all__ = [
    "FidelityReport",
    "DEFAULT_CHUNK_BYTES",
    "LENSES",
    "Lens",
    "LogitLens",
    "ReadoutEngine",
    "TunedLens",
    "blocked_topk",
    "cached_lens",
    "compare_fidelity",
    "generation_lens",
    "get_lens",
    "layer_names",
    "layer_pairwise_kl",
    "lens_cache_dir",
    "lens_fidelity",
    "lens_on_generation",
    "lens_result",
    "load_lens",
    "pairwise_result",
    "run_lens",
    "train_cached_lens",
    "train_lens",
]
