"""Admission control: token buckets (global and per key) and the bounded concurrency gate."""

from __future__ import annotations

import asyncio

import pytest

from autoglm_runtime.admission import InFlight, RateLimitedError, RateLimiter, ShuttingDownError, TokenBucket


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def admitted(limiter: RateLimiter, key: str | None = None) -> bool:
    try:
        limiter.check(key)
    except RateLimitedError:
        return False
    return True


def test_bucket_burst_then_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=2.0, burst=3, clock=clock)
    for _ in range(3):
        assert bucket.wait_time() == 0
        bucket.take()
    assert bucket.wait_time() == pytest.approx(0.5)
    clock.now += 0.25
    assert bucket.wait_time() == pytest.approx(0.25)
    clock.now += 0.25
    assert bucket.wait_time() == 0
    clock.now += 100  # refill is capped at the burst
    assert bucket.full


def test_global_limit_and_retry_after() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate_rps=1.0, burst=2, clock=clock)
    assert admitted(limiter)
    assert admitted(limiter)
    with pytest.raises(RateLimitedError) as err:
        limiter.check()
    assert err.value.retry_after_s == pytest.approx(1.0)
    assert err.value.retry_after_header == "1"
    assert err.value.status == 429
    clock.now += 1.0
    assert admitted(limiter)


def test_burst_zero_means_one_second_of_tokens() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate_rps=5.0, clock=clock)
    assert sum(admitted(limiter) for _ in range(20)) == 5
    slow = RateLimiter(rate_rps=0.2, clock=clock)  # < 1 rps still admits one request
    assert [admitted(slow) for _ in range(3)] == [True, False, False]
    with pytest.raises(RateLimitedError) as err:
        slow.check()
    assert err.value.retry_after_header == "5"


def test_per_key_buckets_are_independent() -> None:
    clock = FakeClock()
    limiter = RateLimiter(per_key_rps=1.0, per_key_burst=2, clock=clock)
    assert [admitted(limiter, "k-a") for _ in range(3)] == [True, True, False]
    assert [admitted(limiter, "k-b") for _ in range(3)] == [True, True, False]
    assert admitted(limiter, None)  # no key (auth off): no per-key limit
    with pytest.raises(RateLimitedError, match="API key"):
        limiter.check("k-a")


def test_refused_request_spends_no_token_anywhere() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate_rps=1.0, burst=1, per_key_rps=10.0, per_key_burst=3, clock=clock)
    assert admitted(limiter, "k-a")
    # The server bucket is empty: key a's tokens must not be spent by refused attempts.
    assert not admitted(limiter, "k-a")
    assert not admitted(limiter, "k-a")
    clock.now += 1.0
    assert admitted(limiter, "k-a")
    clock.now += 1.0
    assert admitted(limiter, "k-a")  # still had tokens: 3 burst - 2 spent


def test_per_key_table_is_bounded() -> None:
    limiter = RateLimiter(per_key_rps=1.0, max_keys=3)
    for i in range(100):
        limiter.check(f"k-{i}")
    assert len(limiter._keys) == 3


def test_disabled_limiter_admits_everything() -> None:
    limiter = RateLimiter()
    assert not limiter.enabled
    assert all(admitted(limiter, "k") for _ in range(1000))


async def test_in_flight_counts_and_drains() -> None:
    tracker = InFlight()
    assert await tracker.wait_idle(0)
    release = asyncio.Event()

    async def request() -> None:
        async with tracker.track():
            await release.wait()

    tasks = [asyncio.create_task(request()) for _ in range(3)]
    await asyncio.sleep(0)
    assert tracker.count == 3
    tracker.close()  # shutdown: running requests go on, new ones are refused
    with pytest.raises(ShuttingDownError) as err:
        tracker.enter()
    assert err.value.status == 503
    assert err.value.retry_after_header == "1"
    assert not await tracker.wait_idle(0.01)
    release.set()
    await asyncio.gather(*tasks)
    assert tracker.count == 0
    assert await tracker.wait_idle(1)


async def test_in_flight_leaves_on_error() -> None:
    tracker = InFlight()
    with pytest.raises(RuntimeError):
        async with tracker.track():
            raise RuntimeError("handler failed")
    assert tracker.count == 0
    assert await tracker.wait_idle(0)
