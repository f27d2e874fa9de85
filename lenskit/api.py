"""``lenskit.run(model, tokenizer, request)``: the one call the app and the CLI make."""

from __future__ import annotations

from typing import Any

from lenskit.progress import Progress
from lenskit.requests import LensRequest, PairwiseRequest, SweepRequest
from lenskit.results import LensResult, PairwiseKL, SweepReport

__all__ = ["run"]


def run(
    model: Any,
    tokenizer: Any,
    request: LensRequest | SweepRequest | PairwiseRequest,
    *,
    progress: Progress | bool | None = None,
) -> LensResult | SweepReport | PairwiseKL:
    """Compute what ``request`` asks for on ``model``.

    * :class:`~lenskit.requests.LensRequest` -> :class:`~lenskit.results.LensResult`
    * :class:`~lenskit.requests.SweepRequest` -> :class:`~lenskit.results.SweepReport`
    * :class:`~lenskit.requests.PairwiseRequest` -> :class:`~lenskit.results.PairwiseKL`
    """
    if isinstance(request, LensRequest):
        from lenskit.lens.views import lens_result

        return lens_result(model, tokenizer, request, progress=progress)
    if isinstance(request, SweepRequest):
        from lenskit.interventions.report import sweep_report

        return sweep_report(model, tokenizer, request, progress=progress)
    if isinstance(request, PairwiseRequest):
        from lenskit.lens.views import pairwise_result

        return pairwise_result(model, tokenizer, request)
    raise TypeError(f"run() takes a LensRequest, SweepRequest or PairwiseRequest, got {request!r}")
