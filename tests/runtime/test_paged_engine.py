"""The paged engine: token budget (chunked prefill), KV blocks admitted by capacity with
preemption, prefix reuse — each checked against a reference: greedy output must not change."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from autoglm_runtime.engine import ModelRunner, PromptTooLongError, SamplingParams
from autoglm_runtime.engine.blocks import BlockPool, NoFreeBlocksError, block_hash

SYSTEM = " ".join(f"rule {i}: tap the right element and report what the screen shows." for i in range(30))


def greedy(n: int) -> SamplingParams:
    return SamplingParams(max_tokens=n, temperature=0, min_tokens=n)


async def outputs(engine: Any, prompts: list[Any], n: int = 8, *, together: bool = True) -> list[str]:
    async def one(p: Any) -> str:
        return await (await engine.submit(p, greedy(n))).collect()

    if together:
        return list(await asyncio.gather(*(one(p) for p in prompts)))
    return [await one(p) for p in prompts]


async def settled(engine: Any) -> None:
    """The worker frees a finished row's blocks just after its last delta: wait for that."""
    for _ in range(200):
        if engine.stats().kv_blocks_used == 0:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"KV blocks still held after every request finished: {engine.stats()}")


# --- the block pool (no model) ----------------------------------------------------------------------
def test_pool_allocates_releases_and_evicts_cached_blocks_least_recently_used_first() -> None:
    pool = BlockPool(4, 16)
    a = pool.allocate(2)
    h0, h1 = block_hash(b"", [1] * 16), block_hash(block_hash(b"", [1] * 16), [2] * 16)
    pool.register(a[0], h0)
    pool.register(a[1], h1)
    pool.release(a)
    assert (pool.available, pool.cached, pool.used) == (4, 2, 0)
    assert pool.lookup([h0, h1, b"x"]) == a  # the prefix is found and referenced again
    assert pool.used == 2
    pool.release(a)
    b = pool.allocate(3)  # 2 free + the least recently used cached block (the tail, released first)
    assert a[1] in b
    assert a[0] not in b
    assert pool.lookup([h0]) == [a[0]]
    assert pool.lookup([h1]) == []
    with pytest.raises(NoFreeBlocksError):
        pool.allocate(1)


def test_block_hash_covers_tokens_prefix_and_image_content() -> None:
    base = block_hash(b"", [5] * 16)
    assert base == block_hash(b"", [5] * 16)
    assert base != block_hash(b"p", [5] * 16)
    assert base != block_hash(b"", [5] * 15 + [6])
    assert block_hash(b"", [9] * 16, [b"img-a"]) != block_hash(b"", [9] * 16, [b"img-b"])


def test_pool_without_prefix_caching_never_hits() -> None:
    pool = BlockPool(2, 16, prefix_caching=False)
    a = pool.allocate(1)
    pool.register(a[0], b"h")
    pool.release(a)
    assert pool.lookup([b"h"]) == []
    assert pool.cached == 0


def test_paged_attention_equals_masked_softmax_attention_per_row() -> None:
    import torch

    from autoglm_runtime.engine import kvcache

    torch.manual_seed(0)
    heads, kv_heads, dim = 4, 2, 8
    keys, values = torch.randn(64, kv_heads, dim), torch.randn(64, kv_heads, dim)
    # A prompt chunk of 5 tokens after 3 cached ones (block 0), a decode row with 20 cached (blocks 1-2),
    # and a first chunk with no context (block 3).
    rows = [kvcache.RowSpan(0, 5, 3, [0]), kvcache.RowSpan(5, 1, 20, [1, 2]), kvcache.RowSpan(6, 4, 0, [3])]
    query = torch.randn(1, heads, 10, dim)
    out, _ = kvcache.paged_attention(
        None, query, keys, values, None, scaling=0.3, autoglm_layout=kvcache.StepLayout(16, rows)
    )

    def reference(q: Any, slots: list[int]) -> Any:
        k = keys[slots].transpose(0, 1).repeat_interleave(heads // kv_heads, 0)
        v = values[slots].transpose(0, 1).repeat_interleave(heads // kv_heads, 0)
        scores = (q[0] @ k.transpose(-1, -2)) * 0.3
        n, width = q.shape[2], len(slots)
        scores = scores.masked_fill(~torch.ones(n, width, dtype=torch.bool).tril(width - n), float("-inf"))
        return (scores.softmax(-1) @ v).transpose(0, 1)

    for row, slots in zip(rows, [list(range(8)), list(range(16, 37)), list(range(48, 52))], strict=True):
        got = out[0, row.q_start : row.q_start + row.q_len]
        torch.testing.assert_close(got, reference(query[:, :, row.q_start : row.q_start + row.q_len], slots))


# --- the engine on the tiny GLM (fp32) -------------------------------------------------------------


@pytest.mark.slow
async def test_prefix_reuse_changes_nothing_but_the_work(make_engine: Any, tiny_loaded: Any) -> None:
    prompts = [SYSTEM + f" Step {i}: the screen shows item {i}." for i in range(4)]
    on = make_engine(max_batch_size=4, prefix_caching=True)
    off = make_engine(max_batch_size=4, prefix_caching=False)
    want = await outputs(off, prompts, together=False)
    assert await outputs(on, prompts, together=False) == want
    stats = on.stats()
    prompt_len = len(on.tokenize_prompt(prompts[0]))
    # The second to fourth prompts find the shared system prompt's full blocks.
    assert stats.prefix_hit_tokens >= 3 * (len(on.tokenize_prompt(SYSTEM)) // 16 - 1) * 16
    assert stats.prefix_hit_tokens < stats.prefix_query_tokens
    assert off.stats().prefix_hit_tokens == 0
    # The same prompt again reuses all its full blocks but the last token's.
    before = on.stats().prefix_hit_tokens
    assert await outputs(on, prompts[:1], together=False) == want[:1]
    assert on.stats().prefix_hit_tokens - before == (prompt_len - 1) // 16 * 16
    # ... and concurrently, batched with others, still the same text.
    assert await outputs(on, prompts) == want


@pytest.mark.slow
async def test_chunked_prefill_gives_the_same_text_as_one_pass(make_engine: Any) -> None:
    prompts = [SYSTEM, "Hi", SYSTEM + " Then what?"]
    whole = make_engine(max_batch_size=4, max_batch_tokens=4096, prefix_caching=False)
    chunked = make_engine(max_batch_size=4, max_batch_tokens=24, prefix_caching=False)
    steps: list[int] = []
    chunked.batch_observers.append(steps.append)
    assert await outputs(chunked, prompts) == await outputs(whole, prompts)
    # A ~400-token prompt at 24 tokens a step: many steps, none over the budget.
    assert len(steps) > len(whole.tokenize_prompt(SYSTEM)) // 24


@pytest.mark.slow
async def test_running_streams_get_a_token_every_step_while_a_long_prompt_prefills(make_engine: Any) -> None:
    engine = make_engine(max_batch_size=4, max_batch_tokens=32, prefix_caching=False)
    seen: dict[int, list[int]] = {}
    original = engine._append

    def record(r: Any, token: int) -> None:
        seen.setdefault(r.id, []).append(engine._steps)
        original(r, token)

    engine._append = record
    streams = [await engine.submit(f"stream {i}", greedy(40)) for i in range(2)]
    await asyncio.sleep(0.2)
    long = await engine.submit(SYSTEM, greedy(2))
    await asyncio.gather(*(h.collect() for h in [*streams, long]))
    long_steps = seen[long.id]
    for h in streams:
        steps = seen[h.id]
        gaps = [b - a for a, b in zip(steps, steps[1:], strict=False)]
        assert max(gaps) == 1, f"a stream waited {max(gaps)} steps"
    assert long_steps[0] > min(seen[streams[0].id]) + 5  # the long prompt took several steps


@pytest.mark.slow
async def test_a_full_pool_preempts_and_recomputes_without_changing_the_text(
    make_engine: Any, tiny_loaded: Any
) -> None:
    prompts = [f"Row {i}" for i in range(6)]
    roomy = make_engine(max_batch_size=6, batch_window_ms=200, prefix_caching=False)
    # 10 blocks of 16 tokens: six short prompts are admitted together (a block each), but at ~45
    # tokens each row needs 3 blocks: rows must give theirs back and be recomputed later.
    tight = make_engine(
        max_batch_size=6, batch_window_ms=200, kv_cache_tokens=160, max_new_tokens=40, prefix_caching=False
    )
    want = await outputs(roomy, prompts, n=40)
    assert await outputs(tight, prompts, n=40) == want
    stats = tight.stats()
    assert stats.kv_blocks_total == 10
    assert stats.max_batch_seen == 6
    assert stats.preemptions > 0
    assert stats.inflight == 0
    await settled(tight)


@pytest.mark.slow
async def test_a_request_larger_than_the_whole_pool_is_refused_at_once(make_engine: Any) -> None:
    engine = make_engine(kv_cache_tokens=64, max_new_tokens=16)
    with pytest.raises(PromptTooLongError, match="KV cache"):
        await engine.submit(SYSTEM, greedy(8))
    assert await outputs(engine, ["Hi"], n=4)  # and the server goes on


@pytest.mark.slow
async def test_prefix_reuse_with_images_keys_on_the_image_content(tiny_vlm_loaded: Any) -> None:
    from PIL import Image

    from autoglm_runtime.engine import Engine, EngineConfig

    vision = tiny_vlm_loaded.vision
    engines = []
    for caching in (True, False):
        engine = Engine(EngineConfig(max_batch_size=4, prefix_caching=caching, max_batch_tokens=64))
        engine.start(ModelRunner(tiny_vlm_loaded.model, tiny_vlm_loaded.tokenizer, vision=vision), "vlm")
        engines.append(engine)
    try:

        def chat(color: tuple[int, int, int], question: str) -> tuple[list[int], Any]:
            image = Image.new("RGB", (224, 448), color)
            mm = vision.prepare([image], ["screen"])
            messages = [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]},
            ]
            return engines[0].chat_prompt(messages, mm), mm

        steps = [
            chat((10, 20, 30), "What now?"),
            chat((10, 20, 30), "And then?"),
            chat((200, 0, 0), "What now?"),
        ]

        async def run(engine: Any) -> list[str]:
            out = []
            for ids, mm in steps:
                out.append(await (await engine.submit(ids, greedy(6), images=mm)).collect())
            return out

        on, off = engines
        assert await run(on) == await run(off)

        def shared(a: list[int], b: list[int]) -> int:  # full blocks reusable from a for b
            same = next(
                (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
            )
            return min(same, len(b) - 1) // 16 * 16

        (first, _), (second, _), (third, _) = steps
        image_start = first.index(vision.image_token_id)
        assert first == third  # the same tokens: only the image differs
        # Step 2 reuses the system prompt and the same image, up to its own question; step 3 has
        # the same tokens as step 1 but another image: only the blocks before the image are reused.
        expected = shared(first, second) + min(image_start, len(third) - 1) // 16 * 16
        assert shared(first, second) > image_start + first.count(vision.image_token_id) - 16
        assert on.stats().prefix_hit_tokens == expected
    finally:
        for engine in engines:
            engine.stop()


@pytest.mark.slow
async def test_metrics_report_blocks_prefix_hits_and_preemptions(make_engine: Any) -> None:
    from autoglm_runtime.metrics import RuntimeMetrics

    engine = make_engine(max_batch_size=2)
    metrics = RuntimeMetrics(gpu_reader=dict)
    metrics.bind_engine(engine)
    prompt = SYSTEM + " Go."
    await outputs(engine, [prompt, prompt], together=False)
    text = metrics.render().decode()
    stats = engine.stats()
    assert stats.prefix_hit_tokens > 0
    assert f"autoglm_prefix_cache_hit_tokens_total {float(stats.prefix_hit_tokens)}" in text
    assert f"autoglm_prefix_cache_queried_tokens_total {float(stats.prefix_query_tokens)}" in text
    ratio = stats.prefix_hit_tokens / stats.prefix_query_tokens
    assert f"autoglm_prefix_cache_hit_ratio {ratio}" in text
    assert 'autoglm_kv_cache_blocks{state="cached"}' in text
    assert "autoglm_preemptions_total 0.0" in text
    await settled(engine)
    assert engine.stats().kv_blocks_cached > 0
