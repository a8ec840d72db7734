"""The model-server protocol gauges an endpoint picker scores pods by (Gateway API Inference
Extension): requests waiting, requests running, KV-cache usage (0..1), and the pool's shape as an
info gauge — scraped from the runtime's /metrics while a real engine works under load."""

from __future__ import annotations

import asyncio
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from autoglm_runtime.engine import SamplingParams
from autoglm_runtime.metrics import (
    KV_CACHE_BLOCK_SIZE_LABEL,
    KV_CACHE_CONFIG_INFO,
    KV_CACHE_NUM_BLOCKS_LABEL,
    KV_CACHE_USAGE,
    QUEUE_DEPTH,
    RUNNING_REQUESTS,
    RuntimeMetrics,
)

PROMPT = " ".join(f"step {i}: open the settings app and read the battery level." for i in range(8))


def scrape(metrics: RuntimeMetrics) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return out


def value(samples: dict[str, list[tuple[dict[str, str], float]]], name: str) -> float:
    ((_, v),) = samples[name]
    return v


async def test_waiting_running_usage_and_pool_info_follow_the_engine_under_load(make_engine: Any) -> None:
    batch = 2
    engine = make_engine(max_batch_size=batch, batch_window_ms=0)
    metrics = RuntimeMetrics(gpu_reader=dict)
    metrics.bind_engine(engine)
    pool = engine.scheduler.pool

    idle = scrape(metrics)
    assert value(idle, QUEUE_DEPTH) == 0
    assert value(idle, RUNNING_REQUESTS) == 0
    assert value(idle, KV_CACHE_USAGE) == 0
    ((labels, one),) = idle[KV_CACHE_CONFIG_INFO]
    assert one == 1
    assert labels == {
        KV_CACHE_BLOCK_SIZE_LABEL: str(pool.block_size),
        KV_CACHE_NUM_BLOCKS_LABEL: str(pool.num_blocks),
    }

    params = SamplingParams(max_tokens=48, min_tokens=48, temperature=0)
    handles = [await engine.submit(f"{PROMPT} request {i}", params) for i in range(3 * batch)]
    collecting = asyncio.gather(*(h.collect() for h in handles))
    waiting, running, usage = [], [], []
    while not collecting.done():
        s = scrape(metrics)
        waiting.append(value(s, QUEUE_DEPTH))
        running.append(value(s, RUNNING_REQUESTS))
        usage.append(value(s, KV_CACHE_USAGE))
        await asyncio.sleep(0.005)
    await collecting

    assert max(waiting) >= batch, waiting  # six submitted, two batch slots: the rest wait
    assert max(running) == batch
    assert all(r <= batch for r in running)
    assert max(usage) > 0
    assert all(0 <= u <= 1 for u in usage)
    for u in usage:  # a share of whole blocks of this pool
        blocks = u * pool.num_blocks
        assert abs(blocks - round(blocks)) < 1e-6, u
    # the rows held at least one block per prompt while running
    assert max(usage) * pool.num_blocks >= batch

    for _ in range(200):  # the worker frees a finished row's blocks just after its last token
        if engine.stats().kv_blocks_used == 0:
            break
        await asyncio.sleep(0.01)
    done = scrape(metrics)
    assert value(done, QUEUE_DEPTH) == value(done, RUNNING_REQUESTS) == 0
    # blocks kept only for prefix reuse are not "in use": a new request may evict them
    assert engine.stats().kv_blocks_cached > 0
    assert value(done, KV_CACHE_USAGE) == 0


def test_usage_is_the_share_of_blocks_held_by_running_requests() -> None:
    from autoglm_runtime.engine import EngineStats

    class Stub:
        ready = True
        batch_observers: list[Any] = []

        def stats(self) -> EngineStats:
            s = EngineStats(queue_depth=3, running=2, inflight=5, steps=0, max_batch_seen=2)
            s.kv_blocks_total, s.kv_block_size, s.kv_blocks_used, s.kv_blocks_cached = 200, 16, 50, 30
            return s

    metrics = RuntimeMetrics(gpu_reader=dict)
    metrics.bind_engine(Stub())
    s = scrape(metrics)
    assert value(s, KV_CACHE_USAGE) == 0.25
    assert value(s, QUEUE_DEPTH) == 3
    assert value(s, RUNNING_REQUESTS) == 2
    assert s[KV_CACHE_CONFIG_INFO] == [({"block_size": "16", "num_blocks": "200"}, 1.0)]


async def test_the_picker_config_names_only_metrics_a_live_runtime_exports(
    tiny_loaded: Any, tiny_model_dir: Any
) -> None:
    """The operator's engineConfigs entry against a served runtime's real /metrics."""
    import httpx

    from autoglm_operator.routing import engine_config
    from autoglm_runtime.app import create_app
    from autoglm_runtime.engine import Engine, EngineConfig, ModelRunner
    from autoglm_runtime.settings import RuntimeSettings

    settings = RuntimeSettings(model=str(tiny_model_dir), served_model_name="tiny")
    engine = Engine(EngineConfig.from_settings(settings))
    app = create_app(settings, engine)
    engine.start(ModelRunner(tiny_loaded.model, tiny_loaded.tokenizer), "tiny")
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://pod") as c:
            chat = {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
            assert (await c.post("/v1/chat/completions", json=chat)).status_code == 200
            text = (await c.get("/metrics")).text
    finally:
        engine.stop()
    samples: dict[str, list[dict[str, str]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(dict(sample.labels))
    config = engine_config()
    for key in ("queuedRequestsSpec", "runningRequestsSpec", "kvUsageSpec", "cacheInfoSpec"):
        assert config[key] in samples, f"{key}: {config[key]} is not in the runtime's /metrics"
    (info,) = samples[config["cacheInfoSpec"]]
    assert int(info[config["cacheBlockSizeLabelName"]]) > 0
    assert int(info[config["cacheNumBlocksLabelName"]]) > 0
