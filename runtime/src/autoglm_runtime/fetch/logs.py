"""Log lines of the init container: JSON (pods) or text, with secrets scrubbed from every line."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterable

LOGGER_NAME = "autoglm_runtime.fetch"
log = logging.getLogger(LOGGER_NAME)


class _RedactingFormatter(logging.Formatter):
    """Formats, then replaces each secret by ``***`` — covers messages, arguments and tracebacks alike."""

    def __init__(self, json_lines: bool, secrets: Iterable[str]) -> None:
        super().__init__("%(asctime)s %(levelname)s %(message)s")
        self.json_lines = json_lines
        # Longest first, so a secret containing another is scrubbed whole; short strings would scrub noise.
        self.secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def _scrub(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text

    def format(self, record: logging.LogRecord) -> str:
        if not self.json_lines:
            return self._scrub(super().format(record))
        doc = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return self._scrub(json.dumps(doc, ensure_ascii=False))


_installed: logging.Handler | None = None


def setup_logging(fmt: str, level: str, secrets: Iterable[str] = ()) -> None:
    """(Re)install one stderr handler on the fetch logger; safe to call once per ``run``."""
    global _installed
    if _installed is not None:
        log.removeHandler(_installed)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_RedactingFormatter(fmt == "json", secrets))
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
