"""Log lines of the init container: JSON (pods) or text, with secrets scrubbed from every line."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable

from autoglm_runtime.logs import LogFormatter

LOGGER_NAME = "autoglm_runtime.fetch"
log = logging.getLogger(LOGGER_NAME)


_installed: logging.Handler | None = None


def setup_logging(fmt: str, level: str, secrets: Iterable[str] = ()) -> None:
    """(Re)install one stderr handler on the fetch logger; safe to call once per ``run``."""
    global _installed
    if _installed is not None:
        log.removeHandler(_installed)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogFormatter(fmt == "json", secrets))
    log.addHandler(handler)
    log.propagate = False
    try:
        log.setLevel(level.upper())
    except ValueError:
        log.setLevel(logging.INFO)
    _installed = handler


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
