"""Circuit breaker: closed → open → half-open → closed/open, thread safety, state callbacks."""

from __future__ import annotations

import threading

import pytest

from autoglm_runtime.breaker import BreakerState, CircuitBreaker, CircuitOpenError


class FakeClock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def changes() -> list[BreakerState]:
    return []


@pytest.fixture
def breaker(clock: FakeClock, changes: list[BreakerState]) -> CircuitBreaker:
    return CircuitBreaker(
        failure_threshold=3, window_s=10, cooldown_s=5, clock=clock, on_change=changes.append
    )


def test_opens_after_threshold_consecutive_failures(breaker: CircuitBreaker, changes: list) -> None:
    for _ in range(2):
        breaker.record_failure(RuntimeError("boom"))
        assert breaker.allow() is False
    breaker.record_failure(RuntimeError("boom"))
    assert breaker.state is BreakerState.OPEN
    assert breaker.is_open
    assert changes == [BreakerState.OPEN]
    assert breaker.last_error == "RuntimeError"
    with pytest.raises(CircuitOpenError) as err:
        breaker.allow()
    assert err.value.retry_after_s == pytest.approx(5)


def test_success_resets_the_streak(breaker: CircuitBreaker) -> None:
    breaker.record_failure()
    breaker.record_failure()
    breaker.record_success()
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED


def test_failures_spread_beyond_the_window_do_not_open(breaker: CircuitBreaker, clock: FakeClock) -> None:
    for _ in range(6):
        breaker.record_failure()
        clock.now += 6  # 3 failures take 12 s > window 10 s
    assert breaker.state is BreakerState.CLOSED


def test_half_open_admits_one_probe_and_closes_on_success(
    breaker: CircuitBreaker, clock: FakeClock, changes: list
) -> None:
    for _ in range(3):
        breaker.record_failure()
    clock.now += 3
    with pytest.raises(CircuitOpenError) as err:
        breaker.allow()
    assert err.value.retry_after_s == pytest.approx(2)
    assert breaker.retry_after_s() == pytest.approx(2)
    clock.now += 2
    assert breaker.state is BreakerState.HALF_OPEN
    assert not breaker.is_open  # ready again, so traffic can arrive to probe
    assert breaker.allow() is True  # the probe
    with pytest.raises(CircuitOpenError, match="probe"):
        breaker.allow()  # everyone else waits for its outcome
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED
    assert breaker.allow() is False
    assert changes == [BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.CLOSED]


def test_failed_probe_reopens_for_a_fresh_cooldown(breaker: CircuitBreaker, clock: FakeClock) -> None:
    for _ in range(3):
        breaker.record_failure()
    clock.now += 5
    assert breaker.allow() is True
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    assert breaker.retry_after_s() == pytest.approx(5)
    assert breaker.opened_total == 2


def test_lost_probe_does_not_wedge_half_open(clock: FakeClock) -> None:
    breaker = CircuitBreaker(failure_threshold=1, cooldown_s=5, probe_timeout_s=20, clock=clock)
    breaker.record_failure()
    clock.now += 5
    assert breaker.allow() is True
    clock.now += 19
    with pytest.raises(CircuitOpenError):
        breaker.allow()
    clock.now += 1
    assert breaker.allow() is True  # the first probe never reported back
    breaker.cancel_probe()
    assert breaker.allow() is True


def test_late_failures_while_open_do_not_extend_it(breaker: CircuitBreaker, clock: FakeClock) -> None:
    for _ in range(3):
        breaker.record_failure()
    clock.now += 4
    breaker.record_failure()  # a batch queued before it opened
    clock.now += 1
    assert breaker.state is BreakerState.HALF_OPEN


def test_thread_safe_counting(clock: FakeClock) -> None:
    breaker = CircuitBreaker(failure_threshold=1000, window_s=1e9, clock=clock)
    barrier = threading.Barrier(8)

    def hammer() -> None:
        barrier.wait()
        for _ in range(124):
            breaker.record_failure()
            breaker.allow()

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # 992 failures: not open; 8 more: exactly at the threshold, opened exactly once.
    assert breaker.state is BreakerState.CLOSED
    for _ in range(8):
        breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    assert breaker.opened_total == 1


def test_threshold_must_be_positive() -> None:
    with pytest.raises(ValueError, match="failure_threshold"):
        CircuitBreaker(failure_threshold=0)
