"""Bytes one replica needs for a model in one quantization mode, and the KV pool left over.

The engine runs at most ``max_batch_tokens`` tokens per forward step and keeps the KV cache in a pool
of fixed-size blocks sized after loading from what is left of the budget. The shared formula (step
budget, activations, blocks, fragmentation, the pool) lives in :mod:`autoglm_runtime.kvplan`, which
the runtime imports too, so the fit check here and the pool the runtime allocates agree.

Every constant is documented in ``docs/memory.md`` ("Will my model fit?"); keep the two in step.
"""

from __future__ import annotations

from dataclasses import dataclass

from autoglm_operator.memory.types import GIB, MIB, Estimate, GpuInfo, ModelShape
from autoglm_runtime import kvplan
from autoglm_runtime.serving_settings import DEFAULT_MAX_BATCH_SIZE

MODES = ("none", "bf16", "fp16", "int8", "nf4", "fp4")

# Bytes per parameter of the 16/32-bit modes.
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "fp32": 4, "fp16": 2, "bf16": 2}
# bitsandbytes 4-bit: weights packed two per byte, one absmax scale per block of 64 weights.
FOUR_BIT_BLOCK = 64
# Double quantization stores the absmax scales as 8-bit, with one fp32 scale per 256 of them.
DOUBLE_QUANT_BLOCK = 256
# CUDA context + cuBLAS workspace + kernels loaded by torch, per GPU (measured 300-600 MiB).
CUDA_CONTEXT_BYTES = 512 * MIB
# Resident size of the runtime process itself (Python, torch, transformers) when it runs on the CPU.
CPU_PROCESS_BYTES = 1 * GIB


@dataclass(frozen=True)
class Workload:
    """The serving limits that size the step and the KV cache (spec.serving)."""

    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    max_input_tokens: int = 4096
    max_new_tokens: int = 512
    max_batch_tokens: int | None = None  # tokens per engine step; None = the device's default
    kv_cache_tokens: int | None = None  # cap on the KV pool in tokens; None = all the memory left

    @property
    def request_tokens(self) -> int:
        """Tokens of one full-length request: the longest prompt plus the most new tokens."""
        return self.max_input_tokens + self.max_new_tokens

    @property
    def kv_tokens(self) -> int:
        """KV slots the fit check reserves: one full-length request, in whole blocks."""
        return kvplan.blocks_for(self.request_tokens) * kvplan.BLOCK_SIZE

    def step_tokens(self, *, on_gpu: bool) -> int:
        """Tokens of the largest forward pass: the step budget (decode tokens + prompt chunks)."""
        return kvplan.step_tokens(self.max_batch_tokens, self.max_batch_size, on_gpu=on_gpu)


def compute_dtype_bytes(
    quantization: str, shape: ModelShape, *, on_cpu: bool = False, compute_dtype: str = "bf16"
) -> int:
    """Bytes of activations and KV-cache entries: the dtype the model computes in."""
    if quantization == "none":
        return 4 if on_cpu else DTYPE_BYTES.get(shape.torch_dtype, 2)
    if quantization in ("nf4", "fp4"):
        return DTYPE_BYTES.get(compute_dtype, 2)
    return 2  # fp16, bf16; int8 keeps non-quantized tensors and activations in 16-bit


def weights_bytes(
    shape: ModelShape, quantization: str, *, double_quant: bool = True, on_cpu: bool = False
) -> int:
    """Bytes of the weights as they sit in memory after loading.

    bitsandbytes (int8, nf4, fp4) quantizes only the decoder's Linear weights; embeddings, lm_head,
    norms, biases (and, in this estimate, a vision tower) stay 16-bit.
    """
    if quantization in ("fp16", "bf16"):
        return 2 * shape.parameters
    if quantization == "none":
        return (4 if on_cpu else DTYPE_BYTES.get(shape.torch_dtype, 2)) * shape.parameters
    if quantization == "fp32":
        return 4 * shape.parameters
    linear = shape.quantizable_parameters
    kept = 2 * (shape.parameters - linear)
    if quantization == "int8":
        # LLM.int8: one int8 per weight + one fp32 scale per output row.
        return kept + linear + 4 * shape.quantizable_rows
    if quantization in ("nf4", "fp4"):
        blocks = -(-linear // FOUR_BIT_BLOCK)
        scales = (blocks + 4 * -(-blocks // DOUBLE_QUANT_BLOCK)) if double_quant else 4 * blocks
        return kept + -(-linear // 2) + scales
    raise ValueError(f"unknown quantization {quantization!r}; expected one of {', '.join(MODES)}")


def activation_bytes(
    shape: ModelShape, quantization: str, workload: Workload, *, dtype_bytes: int = 2, on_gpu: bool = True
) -> int:
    """Peak working set of one engine step (:func:`autoglm_runtime.kvplan.activation_bytes`)."""
    return kvplan.activation_bytes(
        hidden_size=shape.hidden_size,
        mlp_width=shape.mlp_width,
        vocab_size=shape.vocab_size,
        quantization=quantization,
        batch_tokens=workload.step_tokens(on_gpu=on_gpu),
        max_rows=workload.max_batch_size,
        dtype_bytes=dtype_bytes,
    )


def _pool_capacity(
    budget: int, used: int, headroom_percent: int, activations: int, kv_per_token: int, workload: Workload
) -> tuple[int, int]:
    """Tokens the runtime's KV pool will hold (the runtime's own formula, capped by kvCacheTokens),
    and how many full-length requests that is."""
    pool = kvplan.pool_fit(
        budget_bytes=budget,
        used_bytes=used,
        headroom_percent=headroom_percent,
        activation=activations,
        kv_per_token=kv_per_token,
    )
    blocks = pool.blocks
    if workload.kv_cache_tokens:
        blocks = min(blocks, kvplan.blocks_for(workload.kv_cache_tokens))
    return blocks * kvplan.BLOCK_SIZE, blocks // kvplan.blocks_for(workload.request_tokens)


def estimate(
    shape: ModelShape,
    quantization: str,
    gpu: GpuInfo | None,
    count: int = 1,
    *,
    workload: Workload | None = None,
    gpu_memory_percent: int = 90,
    headroom_percent: int = 10,
    double_quant: bool = True,
    compute_dtype: str = "bf16",
    host_budget_bytes: int | None = None,
) -> Estimate:
    """The :class:`Estimate` of one mode on ``count`` x ``gpu`` (or the CPU when ``gpu`` is None / count 0).

    GPU budget = memory x count x gpu_memory_percent / 100; CPU budget = ``host_budget_bytes`` (the
    container memory limit x hostMemoryPercent, computed by the planner); None there means no limit.

    The fit check counts weights + context + one step's activations + the KV blocks of one
    full-length request + fragmentation; the pool is what the runtime will allocate from the rest
    (:func:`autoglm_runtime.kvplan.pool_fit` with the same inputs).
    """
    workload = workload or Workload()
    on_cpu = gpu is None or count == 0
    weights = weights_bytes(shape, quantization, double_quant=double_quant, on_cpu=on_cpu)
    dtype_bytes = compute_dtype_bytes(quantization, shape, on_cpu=on_cpu, compute_dtype=compute_dtype)
    kv_per_token = shape.kv_bytes_per_token(dtype_bytes)
    kv = kv_per_token * workload.kv_tokens
    activations = activation_bytes(shape, quantization, workload, dtype_bytes=dtype_bytes, on_gpu=not on_cpu)
    context = CPU_PROCESS_BYTES if on_cpu else CUDA_CONTEXT_BYTES * count
    fragmentation = kvplan.fragmentation_bytes(activations + kv)
    overhead = context + activations + fragmentation
    total = weights + kv + overhead

    supported, note = True, ""
    if on_cpu:
        if host_budget_bytes is None:
            budget, headroom = total, 0
            note = "CPU without a container memory limit: fits by definition"
        else:
            budget = host_budget_bytes
            headroom = budget * headroom_percent // 100
    else:
        assert gpu is not None
        budget = gpu.memory_bytes * count * gpu_memory_percent // 100
        headroom = budget * headroom_percent // 100
        cc = gpu.compute_capability
        uses_bf16 = quantization == "bf16" or (quantization == "none" and shape.torch_dtype == "bfloat16")
        if uses_bf16 and cc is not None and cc < (8, 0):
            supported = False
            note = f"bf16 needs compute capability >= 8.0; {gpu.name} has {cc[0]}.{cc[1]}"
        elif uses_bf16 and cc is None:
            note = "compute capability unknown: bf16 assumed to work (set resources.gpu.computeCapability)"
    pool_tokens = full_requests = None
    if budget > 0 and not (on_cpu and host_budget_bytes is None):
        pool_tokens, full_requests = _pool_capacity(
            budget, weights + context, headroom_percent, activations, kv_per_token, workload
        )
    return Estimate(
        quantization=quantization,
        weights_bytes=weights,
        kv_cache_bytes=kv,
        overhead_bytes=overhead,
        budget_bytes=budget,
        headroom_bytes=headroom,
        supported=supported,
        note=note,
        kv_tokens=workload.kv_tokens,
        kv_bytes_per_token=kv_per_token,
        context_bytes=context,
        activation_bytes=activations,
        fragmentation_bytes=fragmentation,
        step_tokens=workload.step_tokens(on_gpu=not on_cpu),
        request_tokens=workload.request_tokens,
        kv_pool_tokens=pool_tokens,
        concurrent_full_requests=full_requests,
    )
