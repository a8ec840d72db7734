"""The engine on the tiny random GLM: real batching, streaming, cancellation, limits, failures."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from autoglm_runtime.engine import (
    GenerationFailedError,
    ModelRunner,
    PromptTooLongError,
    QueueFullError,
    SamplingParams,
)

pytestmark = pytest.mark.slow

PROMPTS = [
    "Hello world",
    "The quick brown fox jumps over",
    "Paris is",
    "A language model predicts the next token from",
    "Kubernetes",
    "0123",
    "Quantization stores weights in fewer bits",
    "Hi",
]
LONG = 3000  # tokens: far longer than any test waits; such requests are always cancelled


def greedy(n: int) -> SamplingParams:
    # min_tokens: a random model may emit EOS early; lengths must be exact to compare.
    return SamplingParams(max_tokens=n, temperature=0, min_tokens=n)


async def run_one(engine: Any, prompt: str, params: SamplingParams) -> tuple[str, int, str | None]:
    handle = await engine.submit(prompt, params)
    text = await handle.collect()
    return text, handle.completion_tokens, handle.finish_reason


async def wait_for(predicate: Any, tries: int = 400) -> None:
    for _ in range(tries):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


async def test_batched_greedy_equals_unbatched_and_each_stops_at_its_own_limit(make_engine: Any) -> None:
    batched = make_engine(max_batch_size=8, batch_window_ms=200)
    sizes: list[int] = []
    batched.batch_observers.append(sizes.append)
    limits = [6 + 3 * i for i in range(len(PROMPTS))]
    together = await asyncio.gather(
        *(run_one(batched, p, greedy(n)) for p, n in zip(PROMPTS, limits, strict=True))
    )
    assert max(sizes) > 1, "concurrent requests were not decoded together"

    single = make_engine(max_batch_size=1, batch_window_ms=0)
    alone = [await run_one(single, p, greedy(n)) for p, n in zip(PROMPTS, limits, strict=True)]
    assert [r[1] for r in together] == limits
    assert all(r[2] == "length" for r in together)
    assert together == alone


async def test_request_joining_a_running_batch_matches_running_alone(make_engine: Any) -> None:
    engine = make_engine(max_batch_size=4, batch_window_ms=0)
    reference = make_engine(max_batch_size=1, batch_window_ms=0)
    long_ref = await run_one(reference, PROMPTS[3], greedy(60))
    short_ref = await run_one(reference, PROMPTS[6], greedy(10))

    long_handle = await engine.submit(PROMPTS[3], greedy(60))
    long_task = asyncio.ensure_future(long_handle.collect())
    await wait_for(lambda: long_handle.completion_tokens >= 5)
    short = await run_one(engine, PROMPTS[6], greedy(10))  # joins mid-flight, leaves first
    await long_task
    assert short == short_ref
    assert (long_handle.text, long_handle.completion_tokens) == long_ref[:2]
    assert engine.stats().max_batch_seen == 2


async def test_streaming_deltas_add_up_to_the_completion(make_engine: Any) -> None:
    engine = make_engine()
    expected = await run_one(engine, PROMPTS[1], greedy(20))
    handle = await engine.submit(PROMPTS[1], greedy(20))
    deltas = [d async for d in handle]
    assert len(deltas) > 1
    assert "".join(deltas) == expected[0]
    assert handle.finish_reason == "length"


async def test_cancelled_request_leaves_the_batch(make_engine: Any) -> None:
    engine = make_engine(max_batch_size=4, max_new_tokens=LONG)
    stays = asyncio.ensure_future(run_one(engine, PROMPTS[0], greedy(40)))
    handle = await engine.submit(PROMPTS[1], greedy(LONG))
    stream = handle.__aiter__()
    await stream.__anext__()
    await stream.aclose()  # what a disconnecting client's stream does
    await wait_for(lambda: engine.stats().running <= 1)
    result = await stays
    assert result[1] == 40  # the other request was not disturbed
    await wait_for(lambda: engine.stats().inflight == 0)
    assert handle.completion_tokens < LONG


async def test_stop_sequence_cuts_the_text(make_engine: Any) -> None:
    engine = make_engine()
    full, _, _ = await run_one(engine, PROMPTS[2], greedy(30))
    clean = full.replace("\ufffd", "")
    stop = clean[len(clean) // 2 : len(clean) // 2 + 2]
    params = SamplingParams(max_tokens=30, temperature=0, min_tokens=30, stop=(stop,))
    text, _, finish = await run_one(engine, PROMPTS[2], params)
    assert finish == "stop"
    assert stop not in text
    assert full.startswith(text)


async def test_seeded_sampling_is_reproducible(make_engine: Any) -> None:
    engine = make_engine()
    params = SamplingParams(max_tokens=20, temperature=1.0, top_p=0.9, seed=7, min_tokens=20)
    first, second = await asyncio.gather(run_one(engine, "Hi", params), run_one(engine, "Hi", params))
    assert first == second
    other = await run_one(engine, "Hi", SamplingParams(max_tokens=20, temperature=1.0, seed=8, min_tokens=20))
    assert other != first


async def test_prompt_over_the_limit_is_refused(make_engine: Any) -> None:
    engine = make_engine(max_input_tokens=8)
    with pytest.raises(PromptTooLongError, match="at most 8"):
        await engine.submit("The quick brown fox jumps over the lazy dog. " * 3, greedy(2))


async def test_full_queue_rejects_at_once(make_engine: Any) -> None:
    engine = make_engine(max_batch_size=1, max_queue=1, batch_window_ms=0, max_new_tokens=LONG)
    first = await engine.submit("Hi", greedy(LONG))  # holds the only slot until cancelled
    second = await engine.submit("Hi", greedy(2))  # waits for the slot
    with pytest.raises(QueueFullError) as err:
        await engine.submit("Hi", greedy(2))
    assert err.value.retry_after_s > 0
    first.cancel()
    assert (await second.collect()) is not None


async def test_a_request_waiting_past_max_queue_wait_is_refused(make_engine: Any) -> None:
    """``max_queue_wait_seconds``: a request that got no step within it is refused (429 +
    Retry-After at the HTTP layer); the one being served is not."""
    engine = make_engine(
        max_batch_size=1, batch_window_ms=0, max_new_tokens=LONG, max_queue_wait_seconds=0.3
    )
    first = await engine.submit("Hi", greedy(LONG))  # holds the only slot until cancelled
    await wait_for(lambda: first.completion_tokens > 0)
    second = await engine.submit("Hi", greedy(2))  # waits for the slot, longer than 0.3 s
    with pytest.raises(QueueFullError, match="in the queue") as err:
        await asyncio.wait_for(second.collect(), 10)
    assert err.value.retry_after_s > 0
    assert first.finish_reason is None  # still decoding
    first.cancel()


async def test_without_max_queue_wait_a_request_waits_for_its_slot(make_engine: Any) -> None:
    engine = make_engine(max_batch_size=1, batch_window_ms=0, max_new_tokens=LONG)
    first = await engine.submit("Hi", greedy(LONG))
    await wait_for(lambda: first.completion_tokens > 0)
    second = await engine.submit("Hi", greedy(2))
    await asyncio.sleep(0.5)
    first.cancel()
    assert await asyncio.wait_for(second.collect(), 30) is not None


class FailingRunner(ModelRunner):
    """Failure injection: the n-th model step raises as a CUDA OOM would."""

    def __init__(self, model: Any, tokenizer: Any, fail_at: int) -> None:
        super().__init__(model, tokenizer)
        self.calls, self.fail_at = 0, fail_at

    def step(self, chunks: Any) -> Any:
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("CUDA out of memory (injected)")
        return super().step(chunks)


async def test_failed_step_is_retried_in_smaller_batches_and_the_engine_keeps_serving(
    make_engine: Any, tiny_loaded: Any
) -> None:
    engine = make_engine(
        FailingRunner(tiny_loaded.model, tiny_loaded.tokenizer, fail_at=3), batch_window_ms=100
    )
    results = await asyncio.gather(
        run_one(engine, "Hi", greedy(10)), run_one(engine, "Hello", greedy(10)), return_exceptions=True
    )
    # One failed step: its two rows are re-run one by one (from prompt + tokens so far) and finish.
    assert [r[1] for r in results if isinstance(r, tuple)] == [10, 10], results
    assert engine.failed_steps == 1
    assert engine.retried_rows == 2
    assert (await run_one(engine, "Hi", greedy(5)))[1] == 5
    assert engine.stats().inflight == 0


async def test_a_failed_row_finishes_once_and_gives_its_blocks_back_once(
    make_engine: Any, tiny_loaded: Any
) -> None:
    from autoglm_runtime.engine import RequestStatus

    engine = make_engine(FailingRunner(tiny_loaded.model, tiny_loaded.tokenizer, fail_at=2))
    scheduler = engine.scheduler
    released: list[list[int]] = []
    held: list[list[int]] = []  # the row's blocks when it finished
    finished: list[RequestStatus] = []
    pool_release, finish = scheduler.pool.release, scheduler.finish

    def spy_release(blocks: Any) -> None:
        released.append(list(blocks))
        pool_release(blocks)

    def spy_finish(r: Any, status: RequestStatus) -> bool:
        held.append(list(r.blocks))
        done = finish(r, status)
        if done:
            finished.append(r.status)
        return done

    scheduler.pool.release, scheduler.finish = spy_release, spy_finish
    handle = await engine.submit("Hi", greedy(10))
    with pytest.raises(GenerationFailedError):
        await handle.collect()
    assert held[0]
    assert released == [held[0]]  # once, not once per failure handler
    assert finished == [RequestStatus.FINISHED_ERROR]
    assert handle._request.status is RequestStatus.FINISHED_ERROR
    assert not handle._request.blocks
    assert scheduler.pool.used == 0
    assert engine.stats().inflight == 0


async def test_a_row_that_fails_alone_gets_generation_failed(make_engine: Any, tiny_loaded: Any) -> None:
    engine = make_engine(FailingRunner(tiny_loaded.model, tiny_loaded.tokenizer, fail_at=2))
    with pytest.raises(GenerationFailedError):
        await run_one(engine, "Hi", greedy(10))
    assert (await run_one(engine, "Hi", greedy(5)))[1] == 5
