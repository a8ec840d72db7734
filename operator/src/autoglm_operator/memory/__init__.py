"""Memory fit: estimate what a model needs per quantization mode and pick one that fits (torch-free).

Public API (used by render, the CLI and status):

- ``plan_memory(spec, node_gpu=None) -> MemoryPlan``
- ``resolve_shape(model_spec) -> ModelShape`` (catalog, hub metadata when allowed, spec hints)
- ``resolve_gpu(gpu_spec, node_labels=None) -> GpuInfo | None``
- ``estimate(shape, quantization, gpu, count, ...) -> Estimate``
"""

from autoglm_operator.memory.types import GIB, Estimate, GpuInfo, MemoryPlan, ModelShape

__all__ = ["GIB", "Estimate", "GpuInfo", "MemoryPlan", "ModelShape"]
