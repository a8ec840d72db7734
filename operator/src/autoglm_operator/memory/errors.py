"""The one error type of the memory planner: an input it cannot estimate, with the spec field to fix."""

from __future__ import annotations


class MemoryFitError(ValueError):
    """The spec (or a model config) does not allow an estimate.

    ``field`` is the spec path a user should look at, e.g. ``spec.model.source`` or
    ``spec.resources.gpu.product``; the operator puts it in the Degraded condition and the CLI prints it.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
