"""Progress lines at a bounded frequency: bytes, percent, rate, files — never one line per chunk."""

from __future__ import annotations

import threading
import time

from autoglm_runtime.fetch.logs import human_bytes, log


class Progress:
    def __init__(self, total_bytes: int, total_files: int, interval_s: float, already: int = 0) -> None:
        self.total = total_bytes
        self.already = already  # resumed partial bytes: count toward percent, not toward the rate
        self.total_files = total_files
        self.interval = interval_s
        self.done = already
        self.files_done = 0
        self.started = time.monotonic()
        self._last = self.started
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        with self._lock:
            self.done += n
            now = time.monotonic()
            if now - self._last < self.interval:
                return
            self._last = now
            line = self._line(now)
        log.info("progress: %s", line)

    def rewind(self, n: int) -> None:
        """Bytes thrown away (a restarted or failed download) no longer count as done."""
        with self._lock:
            self.done = max(0, self.done - n)

    def file_done(self) -> None:
        with self._lock:
            self.files_done += 1

    def rate(self) -> float:
        return max(self.done - self.already, 0) / max(time.monotonic() - self.started, 1e-6)

    def _line(self, now: float) -> str:
        pct = 100.0 * self.done / self.total if self.total else 100.0
        rate = max(self.done - self.already, 0) / max(now - self.started, 1e-6)
        eta = f", eta {int((self.total - self.done) / rate)}s" if rate > 0 and self.done < self.total else ""
        return (
            f"{human_bytes(self.done)} / {human_bytes(self.total)} ({pct:.1f}%) at {human_bytes(rate)}/s, "
            f"{self.files_done} of {self.total_files} files{eta}"
        )

    def summary(self) -> str:
        with self._lock:
            return self._line(time.monotonic())
