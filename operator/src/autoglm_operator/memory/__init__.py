"""Memory fit: estimate what a model needs per quantization mode and pick one that fits (torch-free).

Public API (used by render, the CLI and status):

- ``plan_memory(spec, node_gpu=None, *, allow_network=False) -> MemoryPlan``
- ``resolve_shape(model_spec, *, allow_network=False) -> ModelShape`` (catalog, hub metadata when
  allowed, spec hints)
- ``resolve_gpu(gpu_spec, node_gpu=None) -> GpuInfo | None``; ``gpu_from_node_labels(labels)``
- ``estimate(shape, quantization, gpu, count, ...) -> Estimate``
- ``shape_from_config(config_dict, name) -> ModelShape``; ``lookup_model(source)``; ``lookup_gpu(name)``
- ``MemoryFitError(ValueError)`` with ``.field_path`` (the spec path to fix)

The formula and every constant: docs/memory.md.
"""

from autoglm_operator.memory.catalog import catalog_names, lookup_model, repo_id
from autoglm_operator.memory.errors import MemoryFitError
from autoglm_operator.memory.estimator import MODES, Workload, estimate, weights_bytes
from autoglm_operator.memory.gpus import (
    GPU_CATALOG,
    GpuModel,
    gpu_from_node_labels,
    lookup_gpu,
    mig_profile,
    parse_quantity,
    resolve_gpu,
)
from autoglm_operator.memory.planner import AUTO_ORDER, plan_memory, resolve_shape
from autoglm_operator.memory.shapes import shape_from_config
from autoglm_operator.memory.types import GIB, Estimate, GpuInfo, MemoryPlan, ModelShape, format_gib, gib

__all__ = [
    "AUTO_ORDER",
    "GIB",
    "GPU_CATALOG",
    "MODES",
    "Estimate",
    "GpuInfo",
    "GpuModel",
    "MemoryFitError",
    "MemoryPlan",
    "ModelShape",
    "Workload",
    "catalog_names",
    "estimate",
    "format_gib",
    "gib",
    "gpu_from_node_labels",
    "lookup_gpu",
    "lookup_model",
    "mig_profile",
    "parse_quantity",
    "plan_memory",
    "repo_id",
    "resolve_gpu",
    "resolve_shape",
    "shape_from_config",
    "weights_bytes",
]
