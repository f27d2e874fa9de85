"""What every chart shares: sizes, colours, number formats and wording (the Altair pieces are
in :mod:`lenskit.charts.marks`).

Layout conventions (the seed figures'): layers on y with ``emb`` at the bottom and ``out`` at
the top, positions on x (one column per position, so repeated tokens stay separate), a fixed
colour domain per metric (blue = low entropy / confident, red = high entropy), and the
chat-template ("dummy") tokens boxed and coloured on the x axis.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from lenskit.text.tokens import format_token

__all__ = [
    "DEFAULT_DETAIL_WIDTH",
    "DETAIL_CELLS_BUDGET",
    "DETAIL_MAX_CELL",
    "DETAIL_MAX_POSITIONS",
    "DETAIL_MIN_CELL",
    "DETAIL_TITLE_LIMIT",
    "GEN_CELLS_BUDGET",
    "HIGHLIGHT_COLOR",
    "HIGHLIGHT_DASH",
    "MIN_PLOT_HEIGHT",
    "PROB_FLOOR",
    "PROB_FORMAT",
    "PROB_PRINTF",
    "RANK_CONVENTION",
    "TEMPLATE_COLOR",
    "TOOLTIP_TOP_K",
    "compact_ranges",
    "describe_range",
    "display_rank",
    "format_prob",
    "lens_title",
]

#: Most positions the labelled (detail) heatmap shows at once; wider ranges are cut.
DETAIL_MAX_POSITIONS = 40
#: Positions the detail view shows by default: the end of the question + the template tokens.
DEFAULT_DETAIL_WIDTH = 12

#: Most pixels of the detail view's title and subtitle (wider than any narrow plot).
DETAIL_TITLE_LIMIT = 900
#: Pixels the detail view's cells may take together before they shrink (from 62 px each down
#: to DETAIL_MIN_CELL): 40 positions then stay in a ~1000 px column with their legend.
DETAIL_CELLS_BUDGET = 880
DETAIL_MAX_CELL = 62
DETAIL_MIN_CELL = 22
#: Top-k entries a cell's tooltip lists; the drill-down table and the exports keep all k (a
#: top-50 tooltip is taller than a browser window).
TOOLTIP_TOP_K = 10
#: Pixels the sweep / generation heatmaps' cells may take together (axes and legend come on
#: top, ~200 px).
GEN_CELLS_BUDGET = 850
#: Least plot height of the generation heatmaps: beside a shorter plot, a 1-4 block sweep's
#: axis title and colour legend would be cut or overlap.
MIN_PLOT_HEIGHT = 110

TEMPLATE_COLOR = "#7b2ff7"  # template ("dummy") tokens: box and axis labels (purple)
#: The detail range, boxed in the overview: black dashes over a white line (a "marquee"),
#: so that purple means only "template token" and the box shows on dark and light cells.
HIGHLIGHT_COLOR = "#111111"
HIGHLIGHT_DASH = [6, 3]
PROB_FLOOR = 1e-5  # target probabilities are drawn on a log scale from here to 1
#: Ranks shown to users are 1-based (1 = the top-1 token); ``LensResult.target_rank`` (the
#: data and exports) stays 0-based. Every label of a displayed rank says which it is.
RANK_CONVENTION = "1 = top"
#: Probabilities are shown with 3 significant digits in exponent notation everywhere
#: ("9.98e-1", "6.12e-6", "4.17e-7"): 6.2e-6 does not read "0.000", and one column (or one
#: tooltip field) keeps one style. The "g" formats would switch style inside a column (the
#: browser writes %.3g / .3~g as 0.00000612 above 1e-6 and 4.17e-7 below).
#: d3-format of probabilities in tooltips.
PROB_FORMAT = ".2e"
#: printf-format of probabilities in tables (``st.column_config.NumberColumn``, sprintf-js).
PROB_PRINTF = "%.2e"


def display_rank(rank: Any) -> np.ndarray:
    """0-based ranks (``LensResult.target_rank``) as shown to users: 1-based (1 = top)."""
    return np.asarray(rank, dtype=np.int64) + 1


def format_prob(p: float) -> str:
    """A probability as :data:`PROB_FORMAT` writes it: "9.98e-1", "1.23e-2", "6.20e-6"."""
    p = float(p)
    if not math.isfinite(p):
        return str(p)
    mantissa, exponent = f"{p:.2e}".split("e")
    return f"{mantissa}e{int(exponent):+d}"


def format_bound(value: float) -> str:
    """A scale's end as captions write it: "1e-5", "0", "6.91"."""
    value = float(value)
    if value > 0:
        exponent = math.log10(value)
        if exponent == int(exponent) and abs(exponent) >= 3:
            return f"1e{int(exponent)}"
    return f"{value:.3g}"


def lens_title(lens: str | None) -> str:
    """A lens's name as chart titles write it: "logit" -> "Logit lens", "tuned" -> "Tuned lens"."""
    name = str(lens or "logit").strip() or "logit"
    return f"{name[0].upper()}{name[1:]} lens"


def _plural(noun: str) -> str:
    return noun[:-1] + "ies" if noun.endswith("y") and noun[-2:-1] not in "aeiou" else noun + "s"


def count_noun(n: int, noun: str, plural: str | None = None) -> str:
    """``"1 block"``, ``"3 blocks"``."""
    return f"{n} {noun if n == 1 else plural or _plural(noun)}"


def compact_ranges(values: Iterable[int]) -> str:
    """Sorted, de-duplicated integers as runs: [0, 15, 16, 17, 27] -> "0, 15\u201317, 27"."""
    runs: list[list[int]] = []
    for v in sorted({int(v) for v in values}):
        if runs and v == runs[-1][1] + 1:
            runs[-1][1] = v
        else:
            runs.append([v, v])
    return ", ".join(str(a) if a == b else f"{a}\u2013{b}" for a, b in runs)


def describe_range(values: Iterable[int], noun: str = "block", plural: str | None = None) -> str:
    """Integers with their noun, singular for one: "block 1", "blocks 1\u20133",
    "blocks 0, 15\u201321, 27", "no blocks" (for captions such as a model's read-out rows)."""
    picked = sorted({int(v) for v in values})
    many = plural or _plural(noun)
    if not picked:
        return f"no {many}"
    return f"{noun if len(picked) == 1 else many} {compact_ranges(picked)}"


def shown(result: Any, raw: Any, max_len: int) -> str:
    """A vocabulary string of ``result`` (LensResult / SweepResult) for display."""
    return format_token(str(raw), max_len, byte_level=getattr(result, "byte_level", None))


def text_dark_mask(norm: np.ndarray) -> np.ndarray:
    """True where the cell colour is dark enough that its label should be white."""
    return (norm < 0.2) | (norm > 0.8)


def row_axis_values(n_rows: int | Iterable[str], every: int = 5) -> list[str]:
    """Read-out rows to label when rows are thin: ``emb``, ``out`` and every ``every``-th
    block of the rows "emb", "1" .. "L-1", "out" (``n_rows`` = L + 1). Given the row names
    instead of their number, sub-block rows ("3.attn") are left unlabelled and the blocks are
    counted by their names."""
    if isinstance(n_rows, (int, np.integer)):
        return ["emb", "out", *(str(i) for i in range(every, int(n_rows) - 1, every))]
    names = [str(n) for n in n_rows]
    blocks = sorted((n for n in names if n.isdigit() and int(n) % every == 0), key=int)
    return ["emb", "out", *blocks]
