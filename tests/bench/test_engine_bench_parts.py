"""The engine benchmark's report section, and the overhead benchmark's stub runner driving a real engine."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from benchmarks.report import engine_section, load


def _engine_results() -> dict[str, Any]:
    return {
        "model": "fp32 on the CPU",
        "prefix": {
            "model": "random GLM",
            "workload": {"sessions": 8, "steps": 6, "system_prompt_tokens": 1500, "output_tokens": 16},
            "servers": {
                "prefix-on": {"ttft_p50_s_per_step": [0.5, 1.0], "ttft_p50_s_step3_on": 1.0,
                              "output_tokens_per_s": 43.0, "errors": 0},
                "transformers-serve-cb": {"error": "RuntimeError: boom"},
            },
            "ratios": {"ttft p50 from step 3, off / on": 8.7},
            "targets": [{"name": "prefix", "status": "PASS"}],
        },
        "stall": {
            "model": "SmolLM2",
            "workload": {"streams": 8, "stream_tokens": 160, "long_prompt_tokens": 4001},
            "runs": {"budget 512": {"max_gap_s": 6.1, "p50_gap_s": 0.24, "long_prompt_s": 34.6,
                                    "budgeted_step_s": 4.3, "peak_above_loaded_mib": 264.5}},
            "memory": {"measured_peak_above_loaded_mib": 264.5, "predicted_mib": 284.0, "pool_mib": 238.0,
                       "activation_mib": 20.0, "measured / predicted": 0.93},
        },
        "targets": [{"name": "prefix", "status": "PASS"}],
    }  # fmt: skip


def test_engine_section_shows_both_parts_and_a_peer_that_could_not_run() -> None:
    text = engine_section(_engine_results())
    assert "8 concurrent sessions, a 1500-token system prompt" in text
    assert "0.50 / 1.00" in text
    assert "could not run: RuntimeError: boom" in text
    assert "ttft p50 from step 3, off / on: **8.7x**" in text
    assert "4001-token prompt" in text
    assert "**0.93x**" in text


def test_engine_results_are_a_report_part(tmp_path: Path) -> None:
    import json

    (tmp_path / "engine.json").write_text(json.dumps(_engine_results()))
    data = load(tmp_path)
    assert "engine" in data
    assert data["targets"] == [{"name": "prefix", "status": "PASS"}]


def test_the_overhead_benchmarks_stub_runner_drives_the_engine(tiny_model_dir_for_bench: Path) -> None:
    from transformers import AutoTokenizer

    from autoglm_runtime.engine import Engine, EngineConfig, SamplingParams
    from benchmarks.stub_server import StubRunner

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir_for_bench)
    engine = Engine(EngineConfig(max_batch_size=4), tokenizer)
    engine.start(StubRunner(tokenizer), "stub")  # type: ignore[arg-type]

    async def run() -> list[str]:
        handles = [await engine.submit(f"hello {i}", SamplingParams(max_tokens=5)) for i in range(6)]
        return [await h.collect() for h in handles]

    try:
        texts = asyncio.run(run())
    finally:
        engine.stop()
    assert len(texts) == 6
    assert all(t.strip() for t in texts)
    assert engine.stats().kv_blocks_total > 0
