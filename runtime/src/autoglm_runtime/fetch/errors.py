"""Exit codes of ``autoglm-runtime fetch`` and the errors that carry them."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """One code per thing the operator (or a person reading ``kubectl describe``) can act on."""

    OK = 0
    INTERNAL = 1  # a bug: report it with the log
    USAGE = 2  # bad flags, bad source, token file missing (argparse also exits 2)
    AUTH = 3  # 401/403: token missing, rejected, or without access to a gated/private repo
    NOT_FOUND = 4  # 404: repo, revision or file; or nothing matches the allow patterns
    CHECKSUM = 5  # a file kept failing its sha256/size check; the bad copy is deleted
    DISK = 6  # cache volume full (ENOSPC/EDQUOT) or not writable
    NETWORK = 7  # retries exhausted: 429/5xx, connection errors, timeouts
    OFFLINE_INCOMPLETE = 8  # offline mode and the cache does not hold the complete revision
    LOCK_TIMEOUT = 9  # another fetch held the cache lock longer than --lock-timeout


class FetchError(Exception):
    """A failure with a user-facing message (no stack trace) and an exit code."""

    def __init__(self, code: ExitCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class TransientError(Exception):
    """Worth retrying: 429/5xx, connection reset, timeout, truncated body.

    ``progressed`` says whether the failed attempt still moved bytes to disk; a download that keeps
    making progress through flaky connections is not counted as stalled.
    """

    def __init__(self, message: str, *, retry_after: float | None = None, progressed: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after
        self.progressed = progressed


class CancelledError(Exception):
    """Another worker failed for good; this one stops between chunks."""
