"""The runtime sizes its KV pool with the formula the operator's fit check uses (kvplan)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from autoglm_runtime import kvplan
from autoglm_runtime.engine import sizing
from autoglm_runtime.engine.requests import EngineConfig

GIB = 2**30


class FakeRunner:
    """What size_pool reads from a ModelRunner: the device, the model's dimensions, the KV bytes per token."""

    device = "cpu"

    def model_dims(self) -> tuple[int, int, int, int]:
        return 4096, 13696, 151552, 2  # GLM-4-9B, bf16

    def kv_bytes_per_token(self) -> int:
        return kvplan.kv_bytes_per_token(40, 2, 128, 2)  # GLM-4-9B in 16-bit


@pytest.fixture
def cpu_budget(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    numbers = {"budget": 24 * GIB, "used": 6 * GIB}

    def plan_device_budget(host: int, gpu: int, **_: Any) -> Any:
        return SimpleNamespace(cpu_budget_bytes=numbers["budget"], container_limit_bytes=32 * GIB)

    monkeypatch.setattr(sizing.memory, "plan_device_budget", plan_device_budget)
    monkeypatch.setattr(sizing, "resident_bytes", lambda: numbers["used"])
    return numbers


def test_pool_is_the_kvplan_pool_of_the_budget_left(cpu_budget: dict[str, int]) -> None:
    config = EngineConfig(max_batch_size=8, max_concurrent_requests=1000, quantization="int8")
    got = sizing.size_pool(FakeRunner(), config)
    step = kvplan.step_tokens(None, 8, on_gpu=False)
    activation = kvplan.activation_bytes(
        hidden_size=4096,
        mlp_width=13696,
        vocab_size=151552,
        quantization="int8",
        batch_tokens=step,
        max_rows=8,
        dtype_bytes=2,
    )
    want = kvplan.pool_fit(
        budget_bytes=24 * GIB,
        used_bytes=6 * GIB,
        headroom_percent=10,
        activation=activation,
        kv_per_token=FakeRunner().kv_bytes_per_token(),
    )
    assert got.blocks == want.blocks > 0
    assert got.step_tokens == step == kvplan.DEFAULT_BATCH_TOKENS_CPU
    # pool + activations + fragmentation stay inside budget - headroom - used
    pool = got.tokens * got.kv_bytes_per_token
    assert pool + activation + kvplan.fragmentation_bytes(pool + activation) <= 24 * GIB * 0.9 - 6 * GIB
    assert "blocks x 16 tokens" in got.describe()


def test_pool_is_capped_by_the_setting_and_by_what_admitted_requests_can_use(
    cpu_budget: dict[str, int],
) -> None:
    capped = sizing.size_pool(FakeRunner(), EngineConfig(kv_cache_tokens=1000))
    assert capped.tokens == 1008  # rounded up to whole blocks, as the estimator's cap
    few = sizing.size_pool(FakeRunner(), EngineConfig(max_concurrent_requests=2))
    assert few.blocks == 2 * kvplan.blocks_for(4096 + 512)


def test_a_budget_with_no_room_left_still_gives_a_pool_and_says_so(
    cpu_budget: dict[str, int], caplog: pytest.LogCaptureFixture
) -> None:
    cpu_budget["used"] = 30 * GIB
    got = sizing.size_pool(FakeRunner(), EngineConfig())
    assert got.blocks == 1
    assert "less than one request" in caplog.text


def test_step_budget_never_starves_decode_rows() -> None:
    assert kvplan.step_tokens(4, 8, on_gpu=True) == 8
    assert kvplan.step_tokens(None, 8, on_gpu=True) == kvplan.DEFAULT_BATCH_TOKENS_GPU
    assert kvplan.step_tokens(300, 8, on_gpu=False) == 300


def test_a_plan_that_fits_holds_one_full_request() -> None:
    # Exactly enough for one request's blocks plus activations plus fragmentation, to the byte.
    kv, act, need = 1000, 5000, kvplan.blocks_for(100) * 16 * 1000
    exact = need + act + kvplan.fragmentation_bytes(need + act)
    plan = kvplan.pool_fit(
        budget_bytes=exact, used_bytes=0, headroom_percent=0, activation=act, kv_per_token=kv
    )
    assert plan.full_requests(100) == 1
