"""One log line format for every runtime process (``serve`` and the ``fetch`` init container).

JSON in pods (one object per line: ts, level, logger, message, exc_info), text for people; any
secret handed in (hub token, API keys) is replaced by ``***`` in the final line, covering messages,
arguments and tracebacks alike.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable


class LogFormatter(logging.Formatter):
    def __init__(self, json_lines: bool, secrets: Iterable[str] = ()) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
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
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        return self._scrub(json.dumps(entry, ensure_ascii=False))
