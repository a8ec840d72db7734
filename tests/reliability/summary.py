"""Figures of the reliability suite: every check records what it tried, and the run prints one table.

A check calls :func:`record` once with its counts (cases tried, faults injected, failures seen and
any extra figures). ``conftest.py`` prints the table at the end of the pytest run and writes it to
``build/reliability/summary.json`` (what ``docs/reliability.md`` quotes).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

FULL = os.environ.get("AUTOGLM_RELIABILITY") == "1"
"""``make reliability`` sets AUTOGLM_RELIABILITY=1: long runs and large counts; else the fast subset."""

OUTPUT = Path(__file__).resolve().parents[2] / "build" / "reliability" / "summary.json"


def scale(fast: int, full: int) -> int:
    """A count for this run: ``full`` under ``make reliability``, ``fast`` in ``make test``.
    ``AUTOGLM_RELIABILITY_SCALE`` multiplies the full counts (e.g. 0.1 for a quick rehearsal)."""
    if not FULL:
        return fast
    factor = float(os.environ.get("AUTOGLM_RELIABILITY_SCALE", "1"))
    return max(fast, int(full * factor))


@dataclass
class Row:
    area: str
    check: str
    cases: int
    faults: int = 0
    failures: int = 0
    notes: dict[str, Any] = field(default_factory=dict)


ROWS: list[Row] = []


def record(area: str, check: str, *, cases: int, faults: int = 0, failures: int = 0, **notes: Any) -> Row:
    row = Row(area, check, cases, faults, failures, notes)
    ROWS.append(row)
    return row


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def table(rows: list[Row]) -> str:
    header = ("area", "check", "cases", "faults", "failures", "figures")
    lines = [
        (
            r.area,
            r.check,
            str(r.cases),
            str(r.faults),
            str(r.failures),
            ", ".join(f"{k}={_fmt(v)}" for k, v in r.notes.items()),
        )
        for r in rows
    ]
    widths = [
        max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(header)
    ]
    out = [" | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    out.append("-+-".join("-" * w for w in widths))
    out += [" | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in lines]
    total = (sum(r.cases for r in rows), sum(r.faults for r in rows), sum(r.failures for r in rows))
    out.append(f"total: {total[0]} cases, {total[1]} faults injected, {total[2]} failures")
    return "\n".join(out)


def write(rows: list[Row], path: Path = OUTPUT) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"full": FULL, "rows": [asdict(r) for r in rows]}, indent=2) + "\n")
