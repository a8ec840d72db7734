"""Admission control: who gets in, and when to tell the rest to come back.

Cheap enough to run before a request body is even read:

* :class:`RateLimiter` — token buckets, one global and one per API key (by :func:`auth.key_id`,
  never the key). A rejected request learns exactly when a token will be there (``Retry-After``).
* :class:`InFlight` — what is being served right now, and whether new work may start (shutdown).

Bounded concurrency and the bounded queue live in the engine (``max_concurrent_requests``,
``max_queue`` → 429 ``queue_full``), which is the one place that knows what is waiting for the model.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from autoglm_runtime.errors import RetryableError


class AdmissionError(RetryableError):
    """Admission refused; ``retry_after`` (seconds) is when trying again makes sense."""

    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"

    @property
    def retry_after_s(self) -> float:
        return self.retry_after

    @property
    def retry_after_header(self) -> str:
        return self.headers["Retry-After"]


class RateLimitedError(AdmissionError):
    """A token bucket is empty."""


class ShuttingDownError(AdmissionError):
    """The server is draining for shutdown; another replica should take the request."""

    status = 503
    type = "service_unavailable"
    code = "server_shutting_down"


class TokenBucket:
    """Classic token bucket: ``rate`` tokens per second, at most ``burst`` saved up. Not thread-safe alone."""

    def __init__(self, rate: float, burst: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0:
            raise ValueError("rate must be > 0")
        if burst < 1:
            raise ValueError("burst must be >= 1")
        self.rate = rate
        self.burst = float(burst)
        self._clock = clock
        self._tokens = float(burst)
        self._stamp = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    def wait_time(self) -> float:
        """Seconds until one token is available (0 when one is available now)."""
        self._refill()
        return 0.0 if self._tokens >= 1 else (1 - self._tokens) / self.rate

    def take(self) -> None:
        """Spend one token; call only after :meth:`wait_time` returned 0."""
        self._tokens -= 1

    @property
    def full(self) -> bool:
        self._refill()
        return self._tokens >= self.burst


def default_burst(rate: float, burst: int) -> float:
    """``burst`` 0 means one second's worth of tokens, and never less than one request."""
    return float(burst) if burst > 0 else max(1.0, rate)


class RateLimiter:
    """A global bucket and per-key buckets; a request spends a token only when *both* allow it.

    Per-key buckets live in an LRU bounded by ``max_keys`` (a key id is one of a small, configured
    set, but anonymous ids must never grow memory without bound); an evicted bucket is recreated
    full, which only ever errs towards admitting.
    """

    def __init__(
        self,
        rate_rps: float = 0.0,
        burst: int = 0,
        per_key_rps: float = 0.0,
        per_key_burst: int = 0,
        *,
        max_keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._global = (
            TokenBucket(rate_rps, default_burst(rate_rps, burst), clock=clock) if rate_rps > 0 else None
        )
        self.per_key_rps = per_key_rps
        self.per_key_burst = default_burst(per_key_rps, per_key_burst) if per_key_rps > 0 else 0.0
        self.max_keys = max_keys
        self._keys: OrderedDict[str, TokenBucket] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self._global is not None or self.per_key_rps > 0

    def _bucket_for(self, key: str) -> TokenBucket:
        bucket = self._keys.get(key)
        if bucket is None:
            bucket = TokenBucket(self.per_key_rps, self.per_key_burst, clock=self._clock)
            self._keys[key] = bucket
            if len(self._keys) > self.max_keys:
                self._keys.popitem(last=False)
        else:
            self._keys.move_to_end(key)
        return bucket

    def check(self, key: str | None = None) -> None:
        """Admit (spending tokens) or raise :class:`RateLimitedError` with the wait until a retry succeeds."""
        with self._lock:
            buckets = []
            if self._global is not None:
                buckets.append(("server", self._global))
            if self.per_key_rps > 0 and key is not None:
                buckets.append(("API key", self._bucket_for(key)))
            waits = [(b.wait_time(), scope) for scope, b in buckets]
            worst = max(waits, default=(0.0, ""))
            if worst[0] > 0:
                raise RateLimitedError(
                    f"Rate limit exceeded for this {worst[1]}; retry after the Retry-After delay", worst[0]
                )
            for _, b in buckets:
                b.take()


class InFlight:
    """Counts requests being served (streams until their last byte) and stops admitting on shutdown.

    The engine already bounds concurrency and its queue (429 ``queue_full``); this only answers the
    two questions a graceful shutdown asks: is anything still running, and may new work start?
    """

    def __init__(self) -> None:
        self._count = 0
        self._idle: asyncio.Event | None = None
        self._closed = False

    @property
    def count(self) -> int:
        return self._count

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Stop admitting (SIGTERM). Safe to call from a signal handler: it only sets a flag."""
        self._closed = True

    def _event(self) -> asyncio.Event:
        if self._idle is None:
            self._idle = asyncio.Event()
            if self._count == 0:
                self._idle.set()
        return self._idle

    def enter(self) -> None:
        """Admit one request, or raise :class:`ShuttingDownError` once :meth:`close` was called."""
        if self._closed:
            raise ShuttingDownError("Server is shutting down; retry on another replica", 1.0)
        self._count += 1
        self._event().clear()

    def leave(self) -> None:
        self._count -= 1
        if self._count == 0:
            self._event().set()

    @asynccontextmanager
    async def track(self) -> AsyncIterator[None]:
        self.enter()
        try:
            yield
        finally:
            self.leave()

    async def wait_idle(self, timeout_s: float | None = None) -> bool:
        """Wait until nothing is in flight; False when ``timeout_s`` passed first."""
        if self._count == 0:
            return True
        try:
            await asyncio.wait_for(self._event().wait(), timeout_s)
        except TimeoutError:
            return False
        return True
