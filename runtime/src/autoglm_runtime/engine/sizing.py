"""How many KV blocks the pool gets: the memory left after loading, by the fit check's formula.

The budget is the one the operator planned with (:mod:`autoglm_runtime.kvplan`): on a GPU
``gpuMemoryPercent`` of the visible devices' memory; on a CPU ``hostMemoryPercent`` of the
container's memory limit (found the way the JVM finds it, :mod:`autoglm_runtime.memory`). What the
process already holds (weights, CUDA context, allocator cache; or its resident set on a CPU) is
measured, not estimated; activations for one step of the token budget, fragmentation and the
headroom are kept free; the rest becomes blocks. ``kv_cache_tokens`` caps the pool, and so does
what every admitted request at full length could use (more would only hold cached prefixes).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from autoglm_runtime import kvplan, memory
from autoglm_runtime.engine.requests import EngineConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PoolSizing:
    """The engine's pool on this device: :func:`kvplan.pool_fit`'s blocks for the memory left,
    capped by what the admitted requests could use and ``kv_cache_tokens``, and the step budget."""

    blocks: int
    block_size: int
    step_tokens: int
    budget_bytes: int
    used_bytes: int
    activation_bytes: int
    kv_bytes_per_token: int
    source: str

    @property
    def tokens(self) -> int:
        return self.blocks * self.block_size

    def describe(self) -> str:
        gib = self.tokens * self.kv_bytes_per_token / 2**30
        return (
            f"{self.blocks} blocks x {self.block_size} tokens = {self.tokens} tokens ({gib:.2f} GiB, "
            f"{self.kv_bytes_per_token} B/token); step budget {self.step_tokens} tokens "
            f"({self.activation_bytes / 2**20:.0f} MiB activations); {self.source}"
        )


def resident_bytes() -> int:
    """This process's resident set (``/proc/self/statm``); 0 where it cannot be read."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _budget(runner: Any, config: EngineConfig, on_gpu: bool) -> tuple[int, int, str]:
    """(budget, bytes already used, where the numbers come from)."""
    if on_gpu:
        torch = runner.torch
        budget = used = 0
        for i in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(i)
            budget += total * config.gpu_memory_percent // 100
            used += total - free
        return budget, used, f"{config.gpu_memory_percent}% of GPU memory"
    plan = memory.plan_device_budget(config.host_memory_percent, config.gpu_memory_percent, gpus=[])
    limit = "no container limit" if plan.container_limit_bytes is None else "container limit"
    return plan.cpu_budget_bytes, resident_bytes(), f"{config.host_memory_percent}% of memory ({limit})"


def size_pool(runner: Any, config: EngineConfig) -> PoolSizing:
    """The pool for ``runner`` (its ``device``, ``kv_bytes_per_token()`` and ``model_dims()``)."""
    on_gpu = str(runner.device).startswith("cuda")
    step = kvplan.step_tokens(config.max_batch_tokens, config.max_batch_size, on_gpu=on_gpu)
    kv = runner.kv_bytes_per_token()
    hidden, mlp_width, vocab, dtype_bytes = runner.model_dims()
    activation = kvplan.activation_bytes(
        hidden_size=hidden,
        mlp_width=mlp_width,
        vocab_size=vocab,
        quantization=str(config.quantization),
        batch_tokens=step,
        max_rows=config.max_batch_size,
        dtype_bytes=dtype_bytes,
    )
    budget, used, source = _budget(runner, config, on_gpu)
    plan = kvplan.pool_fit(
        budget_bytes=budget,
        used_bytes=used,
        headroom_percent=config.headroom_percent,
        activation=activation,
        kv_per_token=kv,
    )
    size = plan.block_size
    full = kvplan.blocks_for(config.max_input_tokens + config.max_new_tokens, size)
    cap = config.max_concurrent_requests * full
    blocks = min(plan.blocks, cap) if kv else cap  # kv == 0: a runner that keeps no cache (a stub)
    if config.kv_cache_tokens:
        blocks = min(blocks, kvplan.blocks_for(config.kv_cache_tokens, size))
        source += f", capped at kv_cache_tokens={config.kv_cache_tokens}"
    if blocks < full:
        log.warning(
            "The KV cache holds %d tokens, less than one request at max_input_tokens + max_new_tokens "
            "(%d): longer requests get a 400; lower the limits or give the pod more memory",
            blocks * size,
            config.max_input_tokens + config.max_new_tokens,
        )
    return PoolSizing(max(1, blocks), size, step, budget, used, activation, kv, source)
