"""How the report prints numbers and words: the papers' formats, shared by tables, figures and pages.

Kept apart from the table builders so the figures (legends) and the writers (alignment) use the
same rules without importing pandas-heavy table code.
"""

from __future__ import annotations

import math
import re

import pandas as pd

DASH = "—"


def _missing(value: float | None) -> bool:
    return value is None or math.isnan(value)


def fmt_value(value: float, digits: int = 2) -> str:
    return DASH if _missing(value) else f"{value:.{digits}f}"


def fmt_pm(mean: float, std: float, digits: int = 2) -> str:
    """``mean ± std``, or the mean alone when one run gives no spread."""
    if _missing(mean):
        return DASH
    if _missing(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def fmt_ci(low: float, high: float, digits: int = 2) -> str:
    if _missing(low):
        return DASH
    return f"[{low:.{digits}f}, {high:.{digits}f}]"


def fmt_x(value: float) -> str:
    """A compression ratio as the papers print it: ``280x``, ``12.3x``."""
    if _missing(value):
        return DASH
    return f"{value:.0f}x" if value >= 100 else f"{value:.1f}x"


def fmt_x_pm(mean: float, std: float) -> str:
    if _missing(mean):
        return DASH
    if _missing(std):
        return fmt_x(mean)
    digits = 0 if mean >= 100 else 1
    return f"{fmt_x(mean)} ± {std:.{digits}f}"


def fmt_layers(values: list[float] | tuple[float, ...] | None) -> str:
    """Per-layer sparsity in the papers' dashed form, e.g. ``98.9-97.2-62.0``."""
    if not values:
        return DASH
    return "-".join(f"{v:.1f}" for v in values)


def fmt_count(value: float) -> str:
    return DASH if _missing(value) else f"{value:,.0f}"


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """``1 seed``, ``2 seeds``: a count with its noun in the right number."""
    return f"{count} {noun if count == 1 else (nouns or noun + 's')}"


def show_setting(runs: pd.DataFrame) -> bool:
    """A setting column is only worth showing when some method has more than one."""
    return bool((runs.setting != "default").any())


def is_text(value: object) -> bool:
    """Words rather than a formatted number ("1.92 ± 0.05", "[1.8, 2.0]", "68x", "—")."""
    return isinstance(value, str) and not re.match(r"^[\s\d.,±x%()\[\]=n*†≈—-]+$", value)


def text_column(values: pd.Series) -> bool:
    """Columns of words read left-aligned, columns of numbers right-aligned so the digits line up."""
    return any(is_text(v) for v in values)
