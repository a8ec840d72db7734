"""The benchmark report: targets and tables come from the result files, plots are written (no model)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from benchmarks.report import load, render
from benchmarks.targets import target


def test_target_lines_say_pass_miss_or_skip() -> None:
    assert target("x", ">= 3x", 3.5, True, unit="x")["line"].startswith(
        "[PASS] x: target >= 3x, measured 3.5 x"
    )
    assert target("y", "<= 2 ms", 8.0, False, unit="ms", note="batch window")["status"] == "MISS"
    skipped = target("z", "<= 1", math.nan, None, note="no CUDA")
    assert skipped["status"] == "SKIP"
    assert "n/a" in skipped["line"]


def _summary(conc: int, tok_s: float) -> dict:
    dist = {"mean_ms": 10.0, "p50_ms": 10.0, "p99_ms": 20.0}
    return {
        "workload": {"concurrency": conc},
        "completed": 4,
        "errors": 0,
        "skipped": 0,
        "output_throughput": tok_s,
        "request_throughput": 1.0,
        "ttft": dist,
        "tpot": dist,
        "itl": dist,
        "e2e": dist,
    }


def test_report_renders_tables_targets_and_plots(tmp_path: Path) -> None:
    results = tmp_path / "results"
    results.mkdir()
    runtime = {
        "command": "python -m benchmarks.runtime_bench",
        "machine": {"cpu": "Test CPU", "cores": 2, "versions": {}, "gpu": None},
        "load": {
            "input_tokens": 8,
            "output_tokens": 4,
            "concurrencies": [1, 4],
            "requests": [2, 4],
            "max_duration_s": 5,
            "threads": 1,
        },  # fmt: skip
        "load_average_start": [1.0],
        "load_average_end": [1.0],
        "batching": {
            "model": "tiny",
            "servers": {},
            "runs": {
                "ours": [_summary(1, 10.0), _summary(4, 40.0)],
                "peer": [_summary(1, 9.0), _summary(4, 20.0)],
            },
        },
        "gpu": {"skipped": "no CUDA", "targets": []},
        "targets": [target("batching", ">= 3x", 4.0, True, unit="x"), target("peer", ">= 1.3x", 1.1, False)],
    }
    (results / "runtime.json").write_text(json.dumps(runtime))
    data = load(results)
    md = render(data, tmp_path / "docs", notes=None)
    assert "| **PASS** | batching | >= 3x | 4 x |" in md
    assert "| **MISS** | peer |" in md
    assert "| ours | 4 | 4/4 | 40.0 |" in md
    assert "Test CPU — 2 cores" in md
    assert "Skipped: no CUDA" in md
    png = tmp_path / "docs" / "img" / "bench-runtime-batching.png"
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_agent_section_shows_servers_ratios_and_a_peer_that_could_not_run() -> None:
    from benchmarks.report import agent_section

    data = {
        "workload": {
            "sessions": 4,
            "steps_per_session": 3,
            "output_tokens": 16,
            "screenshot": "1080x2400 PNG data URL (3354 image tokens)",
            "model": "tiny random GLM-4V",
        },
        "servers": {
            "autoglm": {
                "steps_per_s": 0.5,
                "step_latency_s": {"p50": 7.5, "p95": 7.8},
                "ttft_s": {"p50": 6.3},
            },
            "transformers-serve": {
                "error": "RuntimeError: Glm4vVideoProcessor requires the Torchvision library"
            },
        },
        "ratios": {"steps_per_s vs autoglm-batch1": 0.92},
    }
    text = agent_section(data)
    assert "| autoglm | 0.500 | 7.50 | 7.80 |" in text
    assert "could not run: RuntimeError: Glm4vVideoProcessor requires the Torchvision library" in text
    assert "steps_per_s vs autoglm-batch1: **0.92x**" in text
