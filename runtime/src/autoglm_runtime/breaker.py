"""Circuit breaker around the model: stop sending work to a model that keeps failing, then probe.

States::

    closed ──(failure_threshold consecutive failures within window_s)──▶ open
    open ──(cooldown_s passed)──▶ half_open          (reported as ready again, see below)
    half_open ──(one probe request admitted; it succeeds)──▶ closed
    half_open ──(the probe fails)──▶ open            (a fresh cooldown)

While open, requests are refused at once with 503 + ``Retry-After`` (the time left in the
cooldown) instead of queueing behind a model that is, say, out of GPU memory, and ``/readyz`` says
503 so Kubernetes sends traffic to other replicas. Half-open counts as *ready* on purpose: an unready
pod receives no traffic from its Service, so if readiness waited for the probe to succeed, no probe
request would ever arrive and the pod would stay out of rotation forever.

A failure is a model-side error of a whole batch (generation raised, CUDA out of memory); client
errors (bad input, rate limits) are never recorded here. The breaker is thread-safe: the engine's
worker thread records outcomes while the event loop asks :meth:`allow`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from enum import StrEnum


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitOpenError(Exception):
    """The model is failing; ``retry_after_s`` is when the breaker will let a probe through."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class CircuitBreaker:
    def __init__(
        self,
        failure_threshold: int = 5,
        window_s: float = 60.0,
        cooldown_s: float = 10.0,
        *,
        probe_timeout_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[BreakerState], None] | None = None,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be >= 1")
        self.failure_threshold = failure_threshold
        self.window_s = window_s
        self.cooldown_s = cooldown_s
        # A probe whose outcome never arrives (its client went away before the model ran) must not
        # wedge the breaker half-open: after this long another request may probe.
        self.probe_timeout_s = probe_timeout_s if probe_timeout_s is not None else max(cooldown_s, 30.0)
        self._clock = clock
        self._on_change = on_change
        self._lock = threading.Lock()
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._streak_start = 0.0
        self._opened_at = 0.0
        self._probe_started: float | None = None
        self.opened_total = 0
        self.last_error: str | None = None

    # --- reading ---------------------------------------------------------------------------------
    def _advance(self, now: float) -> BreakerState | None:
        """Open → half-open once the cooldown has passed; returns the new state when it changed."""
        if self._state is BreakerState.OPEN and now - self._opened_at >= self.cooldown_s:
            self._state = BreakerState.HALF_OPEN
            self._probe_started = None
            return self._state
        return None

    @property
    def state(self) -> BreakerState:
        with self._lock:
            changed = self._advance(self._clock())
            state = self._state
        self._notify(changed)
        return state

    @property
    def is_open(self) -> bool:
        """True only while fully open: what ``/readyz`` and the ``autoglm_circuit_breaker_open`` gauge report."""
        return self.state is BreakerState.OPEN

    def retry_after_s(self) -> float:
        with self._lock:
            if self._state is BreakerState.OPEN:
                return max(0.0, self.cooldown_s - (self._clock() - self._opened_at))
            return 0.0

    # --- admitting -------------------------------------------------------------------------------
    def allow(self) -> bool:
        """May a request go to the model now? Raises :class:`CircuitOpenError` when not.

        Returns True when the caller is the half-open probe (it should be the only request sent
        until its outcome is recorded), False for ordinary admission while closed.
        """
        now = self._clock()
        with self._lock:
            changed = self._advance(now)
            state = self._state
            probe = False
            probe_due = self._probe_started is None or now - self._probe_started >= self.probe_timeout_s
            if state is BreakerState.HALF_OPEN and probe_due:
                self._probe_started = now
                probe = True
            retry = max(1.0, self.cooldown_s - (now - self._opened_at)) if state is BreakerState.OPEN else 1.0
        self._notify(changed)
        if state is BreakerState.OPEN:
            raise CircuitOpenError("Model is failing repeatedly; the circuit breaker is open", retry)
        if state is BreakerState.HALF_OPEN and not probe:
            raise CircuitOpenError("Model is recovering; a probe request is in progress", retry)
        return probe

    def cancel_probe(self) -> None:
        """The probe request ended without reaching the model: let the next request probe instead."""
        with self._lock:
            if self._state is BreakerState.HALF_OPEN:
                self._probe_started = None

    # --- recording -------------------------------------------------------------------------------
    def record_success(self) -> None:
        with self._lock:
            changed = self._state if self._state is not BreakerState.CLOSED else None
            self._state = BreakerState.CLOSED
            self._failures = 0
            self._probe_started = None
        self._notify(BreakerState.CLOSED if changed else None)

    def record_failure(self, error: BaseException | str | None = None) -> None:
        now = self._clock()
        with self._lock:
            if error is not None:
                self.last_error = error if isinstance(error, str) else type(error).__name__
            changed: BreakerState | None = None
            if self._state is BreakerState.HALF_OPEN:
                changed = self._open(now)
            elif self._state is BreakerState.CLOSED:
                if self._failures == 0 or now - self._streak_start > self.window_s:
                    self._failures = 0
                    self._streak_start = now
                self._failures += 1
                if self._failures >= self.failure_threshold:
                    changed = self._open(now)
            # Already open: late failures of batches queued before it opened change nothing.
        self._notify(changed)

    def _open(self, now: float) -> BreakerState:
        self._state = BreakerState.OPEN
        self._opened_at = now
        self._failures = 0
        self._probe_started = None
        self.opened_total += 1
        return self._state

    def _notify(self, changed: BreakerState | None) -> None:
        if changed is not None and self._on_change is not None:
            self._on_change(changed)
