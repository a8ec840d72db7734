"""Retries with exponential backoff and jitter (tenacity), honoring ``Retry-After``.

An attempt that fails after moving bytes resets the count: a long download through a flaky link
keeps going as long as it makes progress, and gives up after ``max_attempts`` stalls in a row.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import TypeVar

from tenacity import RetryCallState, Retrying, retry_if_exception_type
from tenacity.stop import stop_base
from tenacity.wait import wait_base

from autoglm_runtime.fetch.errors import ExitCode, FetchError, TransientError
from autoglm_runtime.fetch.logs import log

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 8
    backoff_initial: float = 1.0
    backoff_max: float = 60.0
    max_retry_after: float = 300.0


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date); None when absent or garbled."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


class _Stalls:
    """Counts consecutive failed attempts that made no progress."""

    def __init__(self) -> None:
        self.count = 0

    def record(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        self.count = 1 if isinstance(exc, TransientError) and exc.progressed else self.count + 1


class _StopAfterStalls(stop_base):
    def __init__(self, stalls: _Stalls, limit: int) -> None:
        self.stalls, self.limit = stalls, limit

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self.stalls.count >= self.limit


class _BackoffWithRetryAfter(wait_base):
    """``initial * 2**(stalls-1)`` capped at ``max``, scaled by a random factor in [0.5, 1] (jitter so
    replicas do not retry in lockstep) — or the server's ``Retry-After`` when that is longer."""

    def __init__(self, stalls: _Stalls, policy: RetryPolicy) -> None:
        self.stalls, self.policy = stalls, policy

    def __call__(self, retry_state: RetryCallState) -> float:
        p = self.policy
        base = min(p.backoff_max, p.backoff_initial * 2 ** max(self.stalls.count - 1, 0))
        delay = base * random.uniform(0.5, 1.0)
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        if isinstance(exc, TransientError) and exc.retry_after is not None:
            delay = max(delay, min(exc.retry_after, p.max_retry_after))
        return delay


def with_retries(fn: Callable[[], T], policy: RetryPolicy, what: str) -> T:
    """Call ``fn`` until it succeeds, raises a non-transient error, or stalls ``max_attempts`` times."""
    stalls = _Stalls()

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        log.warning(
            "%s: %s; retrying in %.1fs (stall %d of %d)",
            what,
            getattr(exc, "message", exc),
            wait,
            stalls.count,
            policy.max_attempts,
        )

    retrying = Retrying(
        retry=retry_if_exception_type(TransientError),
        stop=_StopAfterStalls(stalls, max(policy.max_attempts, 1)),
        wait=_BackoffWithRetryAfter(stalls, policy),
        after=stalls.record,
        before_sleep=before_sleep,
        reraise=True,
    )
    try:
        return retrying(fn)
    except TransientError as exc:
        raise FetchError(
            ExitCode.NETWORK,
            f"{what}: gave up after {stalls.count} attempts without progress; last error: {exc.message}. "
            "Check that the pod can reach the hub or mirror (egress NetworkPolicy, proxy, DNS) and retry; "
            "the partial download is kept and resumes on the next run",
        ) from None
