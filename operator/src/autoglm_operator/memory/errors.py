"""The one error type of the memory planner: an input it cannot estimate, with the spec field to fix."""

from __future__ import annotations


class MemoryFitError(ValueError):
    """The spec (or a model config) does not allow an estimate.

    ``field_path`` is the spec path a user should look at (named as :class:`SpecError`'s), e.g. ``spec.model.source`` or
    ``spec.resources.gpu.product``; the operator puts it in the Degraded condition and the CLI prints it.
    """

    def __init__(self, field_path: str, message: str) -> None:
        super().__init__(f"{field_path}: {message}")
        self.field_path = field_path
        self.message = message


# How to get a fit check when the GPU is unknown (the same words in status, Events and the CLI).
GPU_UNKNOWN_HINT = (
    "set spec.resources.gpu.product (e.g. NVIDIA-L4) or spec.resources.gpu.memory (e.g. 24Gi), "
    "or label the GPU nodes with GPU feature discovery (nvidia.com/gpu.product, nvidia.com/gpu.memory)"
)


class GpuUnknownError(MemoryFitError):
    """Neither the spec nor any node label tells the GPU's memory."""

    def __init__(self) -> None:
        super().__init__(
            "spec.resources.gpu.product",
            f"the GPU is unknown: no product or memory in the spec and no node label says it; {GPU_UNKNOWN_HINT}",
        )
