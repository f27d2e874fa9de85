"""A sweep and the lens over its generation: what the app and the CLI show for a sweep."""

from __future__ import annotations

from typing import Any

from lenskit.errors import GenerationLengthError
from lenskit.interventions.sweep import sweep_result
from lenskit.lens.readout import ReadoutEngine
from lenskit.lens.views import generation_lens
from lenskit.model.architecture import context_length
from lenskit.progress import Progress, progress_reporter, scaled
from lenskit.requests import SweepRequest, check_context, check_top_k_vocab
from lenskit.results import SweepReport

__all__ = ["sweep_report"]


def sweep_report(
    model: Any,
    tokenizer: Any,
    request: SweepRequest,
    *,
    progress: Progress | bool | None = None,
) -> SweepReport:
    """Run the sweep of ``request`` and, when ``request.generation_lens``, the lens over the
    prompt and the sweep's own generation (no second generation).

    The lens over the generation reads the last generated token, so it needs one token more
    of context than the sweep: at the context's very edge the sweep is kept and
    ``warning`` says why the second view is missing.
    """
    engine = None
    if request.generation_lens:
        engine = ReadoutEngine(model, request.lens, tokenizer)
        check_top_k_vocab(request.top_k, engine.vocab_size)
    report, close = progress_reporter(progress, "Sweep")
    try:
        share = 0.85 if engine is not None else 1.0
        sweep, enc = sweep_result(model, tokenizer, request, progress=scaled(report, 0.0, share))
        if engine is None:
            return SweepReport(sweep)
        try:
            check_context(
                len(enc), sweep.n_generated, context_length(model), reads_last=True,
                what=f"{sweep.n_generated} generated tokens",
            )  # fmt: skip
        except GenerationLengthError as exc:
            return SweepReport(sweep, warning=f"No lens over the generation: {exc}")
        lens = generation_lens(
            engine, tokenizer, enc, sweep.generated_ids.tolist(), request.top_k,
            scaled(report, share, 1.0),
        )  # fmt: skip
        return SweepReport(sweep, lens)
    finally:
        if close is not None:
            close()
