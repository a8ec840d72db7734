"""Data types of the memory-fit planner (torch-free). Contract between the estimator and render."""

from __future__ import annotations

from dataclasses import dataclass, field

GIB = 1024**3


@dataclass(frozen=True)
class ModelShape:
    """What the estimator needs to know about a decoder-only model."""

    name: str
    parameters: int
    num_layers: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int
    vocab_size: int
    tie_word_embeddings: bool = False
    torch_dtype: str = "bfloat16"  # checkpoint dtype; quantization "none" keeps it


@dataclass(frozen=True)
class GpuInfo:
    """One GPU (or MIG slice) as the estimator sees it."""

    name: str  # canonical product name, e.g. "NVIDIA-L4"
    memory_bytes: int
    compute_capability: tuple[int, int] | None = None  # None = unknown (bf16 not assumed)
    bandwidth_gbps: float | None = None  # peak memory bandwidth in GB/s, for benchmarks


@dataclass(frozen=True)
class Estimate:
    """Per-replica memory estimate for one quantization mode (bytes)."""

    quantization: str  # none|fp16|bf16|int8|nf4|fp4
    weights_bytes: int
    kv_cache_bytes: int
    overhead_bytes: int
    budget_bytes: int  # gpu memory x count x gpuMemoryPercent
    headroom_bytes: int  # kept free inside the budget
    supported: bool = True  # False e.g. bf16 on compute capability < 8
    note: str = ""

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_cache_bytes + self.overhead_bytes

    @property
    def fits(self) -> bool:
        return self.supported and self.total_bytes <= self.budget_bytes - self.headroom_bytes


@dataclass(frozen=True)
class MemoryPlan:
    """The decision: which quantization the pods use and why."""

    shape: ModelShape
    gpu: GpuInfo | None  # None when gpu.count == 0 (CPU)
    gpu_count: int
    requested: str  # as in the spec, may be "auto"
    chosen: Estimate  # the mode pods will run (for an explicit mode: that mode, fitting or not)
    table: list[Estimate] = field(default_factory=list)  # every mode, for the CLI table
    reason: str = ""  # one line for status/Events: why this mode, or why nothing fits

    @property
    def fits(self) -> bool:
        return self.chosen.fits
