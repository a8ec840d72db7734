"""Data types of the memory-fit planner (torch-free). Contract between the estimator and render."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from autoglm_runtime import kvplan

if TYPE_CHECKING:
    from autoglm_operator.api import MemoryEstimateStatus

GIB = 1024**3
MIB = 1024**2


def gib(n_bytes: int) -> float:
    """Bytes as GiB rounded to 0.1 (what status and the CLI show)."""
    return round(n_bytes / GIB, 1)


def format_gib(n_bytes: int) -> str:
    """Bytes as a Kubernetes-style quantity string, e.g. ``10.2Gi`` (status.estimatedGpuMemory)."""
    return f"{n_bytes / GIB:.1f}Gi"


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
    # --- optional detail (added after the first contract; all defaulted) ------------------------
    num_attention_heads: int | None = None
    intermediate_size: int | None = None  # MLP width; None = derived from the parameter count
    # Parameters in the decoder's Linear weights: what bitsandbytes quantizes. None = derived as
    # parameters - embeddings - vision tower - norms (see ``quantizable_parameters``).
    linear_parameters: int | None = None
    # Sum of the output rows of those Linear layers: int8 keeps one fp32 scale per row.
    linear_out_features: int | None = None
    vision_parameters: int = 0  # vision tower of a multimodal model (kept 16-bit in the estimate)
    max_position_embeddings: int | None = None
    source: str = ""  # where the shape came from: "catalog", "config.json", "hub", "spec.model.shape"

    @property
    def embedding_parameters(self) -> int:
        """Input embeddings plus lm_head (one matrix when tied); bitsandbytes keeps them 16-bit."""
        return self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)

    @property
    def quantizable_parameters(self) -> int:
        if self.linear_parameters is not None:
            return self.linear_parameters
        norms = 2 * self.hidden_size * self.num_layers + self.hidden_size
        return max(0, self.parameters - self.embedding_parameters - self.vision_parameters - norms)

    @property
    def unquantized_parameters(self) -> int:
        """Parameters that stay 16-bit under bitsandbytes: embeddings, lm_head, norms, biases, vision."""
        return self.parameters - self.quantizable_parameters

    @property
    def mlp_width(self) -> int:
        """``intermediate_size``, or solved from the per-layer parameter count when unknown."""
        if self.intermediate_size is not None:
            return self.intermediate_size
        h = self.hidden_size
        q = (self.num_attention_heads * self.head_dim) if self.num_attention_heads else h
        attention = h * (q + 2 * self.num_kv_heads * self.head_dim) + q * h
        per_layer = self.quantizable_parameters // max(1, self.num_layers)
        # gate, up and down projections: 3 * hidden * intermediate
        return max(h, (per_layer - attention) // (3 * h))

    @property
    def quantizable_rows(self) -> int:
        """``linear_out_features``, or the usual q/k/v/o + gate/up/down rows per layer."""
        if self.linear_out_features is not None:
            return self.linear_out_features
        h = self.hidden_size
        q = (self.num_attention_heads * self.head_dim) if self.num_attention_heads else h
        return self.num_layers * (q + 2 * self.num_kv_heads * self.head_dim + h + 2 * self.mlp_width + h)

    def kv_bytes_per_token(self, dtype_bytes: int = 2) -> int:
        """Key + value for every layer: 2 x layers x kv_heads x head_dim x dtype bytes."""
        return kvplan.kv_bytes_per_token(self.num_layers, self.num_kv_heads, self.head_dim, dtype_bytes)


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
    # --- breakdown (added after the first contract; all defaulted) ------------------------------
    kv_tokens: int = 0  # KV slots the fit check reserves: one full-length request, in whole blocks
    kv_bytes_per_token: int = 0  # 2 x layers x kv_heads x head_dim x dtype bytes
    context_bytes: int = 0  # CUDA context per GPU x count (or the CPU process baseline)
    activation_bytes: int = 0  # one engine step's working set + logits (+ int8/4-bit matmul buffers)
    fragmentation_bytes: int = 0  # allocator slack on the dynamic part (KV + activations)
    step_tokens: int = 0  # tokens of one engine step (maxBatchTokens or the device default)
    request_tokens: int = 0  # one full-length request: max input + max new tokens
    # The KV pool the runtime will allocate from what the budget leaves (None: no budget to size it
    # from, i.e. a CPU without a memory limit or an unknown GPU), and how many full-length requests
    # it holds at once.
    kv_pool_tokens: int | None = None
    concurrent_full_requests: int | None = None

    @property
    def kv_pool_bytes(self) -> int | None:
        return None if self.kv_pool_tokens is None else self.kv_pool_tokens * self.kv_bytes_per_token

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_cache_bytes + self.overhead_bytes

    @property
    def fits(self) -> bool:
        return self.supported and self.total_bytes <= self.budget_bytes - self.headroom_bytes

    @property
    def usable_bytes(self) -> int:
        """What the total must stay under: budget minus headroom."""
        return self.budget_bytes - self.headroom_bytes

    def to_status(self) -> MemoryEstimateStatus:
        from autoglm_operator.api import MemoryEstimateStatus

        return MemoryEstimateStatus(
            weights_gib=gib(self.weights_bytes),
            kv_cache_gib=gib(self.kv_cache_bytes),
            overhead_gib=gib(self.overhead_bytes),
            total_gib=gib(self.total_bytes),
            budget_gib=gib(self.budget_bytes),
            fits=self.fits,
            kv_pool_tokens=self.kv_pool_tokens,
            concurrent_full_requests=self.concurrent_full_requests,
        )


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
    gpu_known: bool = True  # False: an explicit mode on a GPU nobody described; no fit check

    @property
    def fits(self) -> bool:
        """The chosen mode fits the budget (always False when the GPU is unknown: see ``gpu_known``)."""
        return self.gpu_known and self.chosen.fits

    @property
    def quantization(self) -> str:
        """The mode the pods run (``auto`` resolved): status.quantization."""
        return self.chosen.quantization

    @property
    def estimated_gpu_memory(self) -> str:
        """Per-replica total as a quantity string, e.g. ``10.2Gi``: status.estimatedGpuMemory."""
        return format_gib(self.chosen.total_bytes)

    def to_status(self) -> MemoryEstimateStatus:
        """The chosen mode's breakdown in GiB (rounded to 0.1): status.estimate."""
        return self.chosen.to_status()

    def estimate_for(self, quantization: str) -> Estimate | None:
        return next((e for e in self.table if e.quantization == quantization), None)
