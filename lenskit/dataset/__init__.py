"""Dataset mode: rehearsal at the template tokens measured over many prompts.

:func:`run_dataset` reads the lens at the aligned columns (the user's last tokens and every
template slot) of each prompt of a set (:func:`load_prompts`), scores each cell against the
answer / next / later / control tokens, and sums mergeable statistics
(:class:`DatasetResult`), on one process or many (torchrun).
"""

from lenskit.dataset.align import Alignment, align
from lenskit.dataset.prompts import (
    BUNDLED,
    FORMATS,
    PromptItem,
    PromptSet,
    SkippedLine,
    bundled_prompts,
    load_prompts,
    prompt_items,
)
from lenskit.dataset.result import DatasetResult
from lenskit.dataset.run import dataset_result, run_dataset
from lenskit.dataset.stats import HIT_KS, MEAN_STATS, RATE_STATS, interval_kind

__all__ = [
    "BUNDLED",
    "FORMATS",
    "HIT_KS",
    "MEAN_STATS",
    "RATE_STATS",
    "Alignment",
    "DatasetResult",
    "PromptItem",
    "PromptSet",
    "SkippedLine",
    "align",
    "bundled_prompts",
    "dataset_result",
    "interval_kind",
    "load_prompts",
    "prompt_items",
    "run_dataset",
]
