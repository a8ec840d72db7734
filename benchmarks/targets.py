"""Targets the benchmarks report against: each one a measured value, PASS/MISS, and a note."""

from __future__ import annotations

import math
from typing import Any


def fmt_number(x: float) -> str:
    """3 significant digits, without scientific notation for large values."""
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def target(
    name: str, goal: str, measured: float | None, passed: bool | None, *, unit: str = "", note: str = ""
) -> dict[str, Any]:
    """``passed=None`` means not measured here (e.g. no GPU); the line says why in ``note``."""
    if measured is None or (isinstance(measured, float) and math.isnan(measured)):
        status = "SKIP"
        shown = "n/a"
    else:
        status = "PASS" if passed else "MISS"
        shown = f"{fmt_number(measured)}{(' ' + unit) if unit else ''}"
    line = f"[{status}] {name}: target {goal}, measured {shown}" + (f" ({note})" if note else "")
    return {
        "name": name,
        "target": goal,
        "measured": measured,
        "unit": unit,
        "status": status,
        "note": note,
        "line": line,
    }
