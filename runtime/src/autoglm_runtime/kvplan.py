"""How the engine spends memory: a per-step token budget and a paged KV-cache pool (torch-free).

One module, imported by both sides so they agree on the numbers:

- the operator's fit check (``autoglm_operator.memory.estimator``) predicts, before scheduling,
  whether weights + activations for one step of ``max_batch_tokens`` + at least one full-length
  request's KV blocks fit the GPU's budget, and how many full-length requests the pool left over
  holds;
- the runtime (``autoglm_runtime.engine``) sizes its block pool after loading from what is left
  of the same budget, with the same activation, fragmentation and headroom terms.

The engine never runs more than ``max_batch_tokens`` tokens in one forward pass (decode tokens of
the running rows plus prompt chunks), so activations are bounded by the budget, not by
``max_batch_size x max_input_tokens``; the KV cache is a pool of fixed-size blocks handed out as
rows grow, so memory is planned by what the pool holds, not by a padded worst case.

Every constant is documented in docs/memory.md.
"""

from __future__ import annotations

from dataclasses import dataclass

# Tokens per KV block. 16 is vLLM's default: small enough that a row wastes < 16 slots, large
# enough that block tables stay short and a prefix hash covers a useful span.
BLOCK_SIZE = 16
# The step token budget when none is set: a GPU runs one 2048-token step at about the cost of a
# few decode steps (vLLM's default for online serving); a CPU is compute-bound, so smaller chunks
# keep the gap between two tokens of a running stream short.
DEFAULT_BATCH_TOKENS_GPU = 2048
DEFAULT_BATCH_TOKENS_CPU = 512
# fp32 logits of the positions whose next token is sampled, times the copies sampling makes
# (penalties, softmax probabilities).
LOGITS_COPIES = 3
# The caching allocator's slack on what is allocated and freed while serving (KV pool, activations).
FRAGMENTATION_PERCENT = 10


def default_batch_tokens(on_gpu: bool) -> int:
    return DEFAULT_BATCH_TOKENS_GPU if on_gpu else DEFAULT_BATCH_TOKENS_CPU


def step_tokens(max_batch_tokens: int | None, max_batch_size: int, *, on_gpu: bool) -> int:
    """The effective per-step token budget: the setting (or the device's default), and never less
    than one decode token per row of a full batch."""
    return max(max_batch_tokens or default_batch_tokens(on_gpu), max_batch_size)


def kv_bytes_per_token(layers: int, kv_heads: int, head_dim: int, dtype_bytes: int) -> int:
    """Keys and values of one token in every attention layer."""
    return 2 * layers * kv_heads * head_dim * dtype_bytes


def blocks_for(tokens: int, block_size: int = BLOCK_SIZE) -> int:
    return -(-tokens // block_size)


def activation_bytes(
    *,
    hidden_size: int,
    mlp_width: int,
    vocab_size: int,
    quantization: str,
    batch_tokens: int,
    max_rows: int,
    dtype_bytes: int = 2,
) -> int:
    """Peak working set of one engine step of ``batch_tokens`` tokens, plus the logits of its rows.

    Inference frees each layer's activations before the next, so the peak is one layer's: the
    residual stream and the normed input (2 x hidden) live while the gated MLP holds gate+up (2 x
    intermediate), the activation and the product (2 x intermediate): (2h + 4i) per token. int8
    matmuls add an int8 copy of the input and an int32 result before it is dequantized; 4-bit
    matmuls on more than one token dequantize one weight matrix (the fused gate+up, h x 2i) to
    16-bit. Logits are computed only for the rows that sample (at most ``max_rows``).
    """
    h, i = hidden_size, mlp_width
    per_token = dtype_bytes * (2 * h + 4 * i)
    if quantization == "int8":
        per_token = max(per_token, dtype_bytes * 2 * h + h + 2 * i * 4 + 2 * i * dtype_bytes)
    total = batch_tokens * per_token
    if quantization in ("nf4", "fp4"):
        total += h * 2 * i * dtype_bytes
    return total + min(max_rows, batch_tokens) * vocab_size * 4 * LOGITS_COPIES


def fragmentation_bytes(working_set: int) -> int:
    """Rounded up, so that a plan which fits also has room for its pool (see PoolFit.pool_bytes)."""
    return -(-working_set * FRAGMENTATION_PERCENT // 100)


@dataclass(frozen=True)
class PoolFit:
    """What is left for the KV pool once weights, the runtime itself and one step are paid for."""

    available_bytes: int  # budget - headroom - weights - context
    activation_bytes: int
    kv_bytes_per_token: int
    block_size: int = BLOCK_SIZE

    @property
    def pool_bytes(self) -> int:
        """The largest pool with pool + activations + fragmentation(pool + activations) <= available."""
        if self.kv_bytes_per_token <= 0:
            return 0
        usable = self.available_bytes * 100 // (100 + FRAGMENTATION_PERCENT) - self.activation_bytes
        block = self.kv_bytes_per_token * self.block_size
        return max(0, usable // block) * block

    @property
    def blocks(self) -> int:
        block = self.kv_bytes_per_token * self.block_size
        return self.pool_bytes // block if block else 0

    @property
    def tokens(self) -> int:
        return self.blocks * self.block_size

    def full_requests(self, request_tokens: int) -> int:
        """How many requests of ``request_tokens`` (prompt + new tokens) the pool holds at once."""
        need = blocks_for(request_tokens, self.block_size)
        return self.blocks // need if need else 0


def pool_fit(
    *,
    budget_bytes: int,
    used_bytes: int,
    headroom_percent: int,
    activation: int,
    kv_per_token: int,
    block_size: int = BLOCK_SIZE,
) -> PoolFit:
    """The pool for a budget (GPU: memory x gpuMemoryPercent; CPU: the container limit x
    hostMemoryPercent) of which ``used_bytes`` (weights + CUDA context or process) is taken and
    ``headroom_percent`` of the budget is kept free."""
    headroom = budget_bytes * headroom_percent // 100
    return PoolFit(
        available_bytes=max(0, budget_bytes - headroom - used_bytes),
        activation_bytes=activation,
        kv_bytes_per_token=kv_per_token,
        block_size=block_size,
    )
