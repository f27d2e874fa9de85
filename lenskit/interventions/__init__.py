"""Interventions: a registry of edits to a block's output, the hooks that apply them, the
replay machinery of the fast sweep, the sweep itself and the sweep report."""

from lenskit.interventions.registry import (
    INTERVENTIONS,
    NOISE_SCALE,
    Edit,
    Intervention,
    get_intervention,
    register,
    standard_noise,
)
from lenskit.interventions.report import sweep_report
from lenskit.interventions.sweep import intervention_sweep, sweep_result, sweep_token_ids

__all__ = [
    "INTERVENTIONS",
    "NOISE_SCALE",
    "Edit",
    "Intervention",
    "get_intervention",
    "intervention_sweep",
    "register",
    "standard_noise",
    "sweep_report",
    "sweep_result",
    "sweep_token_ids",
]
