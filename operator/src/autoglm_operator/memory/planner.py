"""From an AutoGLMDeployment spec to a :class:`MemoryPlan`: which quantization the pods run, and why.

``quantization: auto`` takes the least lossy mode that fits inside the budget minus the headroom,
in the order bf16 (only on compute capability >= 8.0; unknown = not bf16) -> fp16 -> int8 -> nf4.
An explicit mode is planned as asked; when it does not fit, the reason carries the numbers and a
suggestion. Inputs that allow no estimate raise :class:`MemoryFitError` naming the spec field.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING

from autoglm_operator.memory.catalog import catalog_names, lookup_model
from autoglm_operator.memory.errors import GPU_UNKNOWN_HINT, GpuUnknownError, MemoryFitError
from autoglm_operator.memory.estimator import MODES, Workload, estimate
from autoglm_operator.memory.gpus import parse_quantity, resolve_gpu
from autoglm_operator.memory.types import GIB, Estimate, GpuInfo, MemoryPlan, ModelShape, format_gib, gib

if TYPE_CHECKING:
    from autoglm_operator.api import AutoGLMDeploymentSpec, ModelSpec

AUTO_ORDER = ("bf16", "fp16", "int8", "nf4")
UNKNOWN_GPU = "unknown GPU"
_HINT_FIELDS = ("parameters", "num_layers", "num_kv_heads", "head_dim", "hidden_size", "vocab_size")
_HINT_CAMEL = {
    "parameters": "parameters",
    "num_layers": "numLayers",
    "num_kv_heads": "numKvHeads",
    "head_dim": "headDim",
    "hidden_size": "hiddenSize",
    "vocab_size": "vocabSize",
}


def workload_of(spec: AutoGLMDeploymentSpec) -> Workload:
    """The serving limits of ``spec`` that size the step and the KV cache."""
    s = spec.serving
    return Workload(
        max_batch_size=s.max_batch_size,
        max_input_tokens=s.max_input_tokens,
        max_new_tokens=s.max_new_tokens,
        max_batch_tokens=s.max_batch_tokens,
        kv_cache_tokens=s.kv_cache_tokens,
    )


def resolve_shape(
    model_spec: ModelSpec, *, allow_network: bool = False, token: str | None = None, timeout: float = 5.0
) -> ModelShape:
    """The model's shape: the built-in catalog, else the hub (only when ``allow_network``), then
    ``spec.model.shape`` hints override whatever they set."""
    source = model_spec.source
    hints = {
        k: v for k, v in (model_spec.shape.model_dump() if model_spec.shape else {}).items() if v is not None
    }
    base = lookup_model(source)
    fetch_error: MemoryFitError | None = None
    if base is None and allow_network and not source.lower().startswith("pvc://"):
        from autoglm_operator.memory.hub import fetch_shape

        try:
            base = fetch_shape(source, revision=model_spec.revision, token=token, timeout=timeout)
        except MemoryFitError as exc:
            fetch_error = exc
    if base is None:
        missing = [f for f in _HINT_FIELDS if f not in hints]
        if missing:
            why = f"{fetch_error.message}; " if fetch_error else ""
            where = "" if allow_network else " and the network is not used"
            raise MemoryFitError(
                "spec.model.shape" if hints else "spec.model.source",
                f"{why}{source} is not in the built-in catalog ({', '.join(catalog_names())}){where}: "
                f"set spec.model.shape ({', '.join(_HINT_CAMEL[f] for f in missing)})",
            )
        return ModelShape(
            name=source,
            parameters=hints["parameters"],
            num_layers=hints["num_layers"],
            num_kv_heads=hints["num_kv_heads"],
            head_dim=hints["head_dim"],
            hidden_size=hints["hidden_size"],
            vocab_size=hints["vocab_size"],
            tie_word_embeddings=bool(hints.get("tie_word_embeddings", False)),
            source="spec.model.shape",
        )
    if not hints:
        return base
    # Hints change the structure: the exact Linear counts of the base no longer hold, derive them again.
    return dataclasses.replace(
        base,
        **hints,
        linear_parameters=None,
        linear_out_features=None,
        intermediate_size=base.intermediate_size if set(hints) <= {"tie_word_embeddings"} else None,
        source=f"{base.source} + spec.model.shape",
    )


def _pair(a: int, b: int) -> tuple[str, str]:
    """Two byte counts in GiB, with two decimals when one decimal would show them equal."""
    digits = 1 if round(a / GIB, 1) != round(b / GIB, 1) else 2
    return f"{a / GIB:.{digits}f}", f"{b / GIB:.{digits}f}"


def _usable(e: Estimate) -> str:
    return f"{gib(e.usable_bytes)} GiB usable"


def _where(gpu: GpuInfo | None, count: int) -> str:
    if gpu is None:
        return "the CPU"
    return f"{count} x {gpu.name}" if count > 1 else gpu.name


def _why_not(e: Estimate) -> str:
    if not e.supported:
        return f"{e.quantization}: {e.note}"
    need, usable = _pair(e.total_bytes, e.usable_bytes)
    return f"{e.quantization} needs {need} GiB > {usable} GiB usable"


def _fits(e: Estimate) -> str:
    need, usable = _pair(e.total_bytes, e.usable_bytes)
    return f"{e.quantization} fits: {need} GiB of {usable} GiB usable"


def _bigger_hardware(e: Estimate, gpu: GpuInfo | None, count: int, percent: int, headroom: int) -> str:
    """How much GPU memory the mode would need (per GPU, at this count and these percentages)."""
    if gpu is None:
        return "a larger container memory limit"
    share = percent / 100 * (1 - headroom / 100)
    per_gpu = e.total_bytes / share / max(count, 1)
    return f"GPUs with >= {per_gpu / 2**30:.0f} GiB each, or more GPUs per replica"


def _largest_fitting(low: int, high: int, fits: Callable[[int], bool]) -> int | None:
    """The largest value in [low, high] for which ``fits`` holds (``fits`` is monotone: true up to
    some value, false above it), or None."""
    if high < low or not fits(low):
        return None
    while low < high:
        mid = (low + high + 1) // 2
        if fits(mid):
            low = mid
        else:
            high = mid - 1
    return low


def _smaller_workload(
    shape: ModelShape,
    mode: str,
    gpu: GpuInfo | None,
    count: int,
    workload: Workload,
    kwargs: dict[str, object],
) -> list[str]:
    """What would make ``mode`` fit: a smaller step token budget (activations) and/or shorter
    requests (the KV blocks of one full-length request). Batch size barely matters any more: the
    engine's step is bounded by maxBatchTokens, not by maxBatchSize x maxInputTokens."""

    def fits(**change: int) -> bool:
        trial = dataclasses.replace(workload, **change)
        return estimate(shape, mode, gpu, count, workload=trial, **kwargs).fits  # type: ignore[arg-type]

    on_gpu = gpu is not None and count > 0
    hints = []
    step = workload.step_tokens(on_gpu=on_gpu)
    tokens = _largest_fitting(workload.max_batch_size, step - 1, lambda n: fits(max_batch_tokens=n))
    if tokens is not None:
        hints.append(f"serving.maxBatchTokens <= {tokens}")
    length = _largest_fitting(1, workload.max_input_tokens - 1, lambda n: fits(max_input_tokens=n))
    if length is not None:
        hints.append(
            f"serving.maxInputTokens <= {length} (requests of {length + workload.max_new_tokens} tokens)"
        )
    return hints


def _estimate_options(spec: AutoGLMDeploymentSpec, gpu: GpuInfo | None) -> dict[str, object]:
    """The spec's budget and 4-bit options, as :func:`estimate` takes them (the same for every mode)."""
    options = spec.quantization_options
    host_budget = None
    if gpu is None and spec.resources.limits.memory:
        limit = parse_quantity(spec.resources.limits.memory, "spec.resources.limits.memory")
        host_budget = limit * spec.memory.host_memory_percent // 100
    return {
        "gpu_memory_percent": spec.memory.gpu_memory_percent,
        "headroom_percent": spec.memory.headroom_percent,
        "double_quant": options.double_quant if options else True,
        "compute_dtype": options.compute_dtype.value if options else "bf16",
        "host_budget_bytes": host_budget,
    }


def _choose_auto(by_mode: dict[str, Estimate], gpu: GpuInfo | None) -> tuple[Estimate | None, list[str]]:
    """``quantization: auto``: the first mode of :data:`AUTO_ORDER` allowed here that fits (None when
    none does), and why each one before it was passed over."""
    skipped: list[str] = []
    for mode in AUTO_ORDER:
        e = by_mode[mode]
        if not _auto_allowed(mode, gpu):
            cc = gpu.compute_capability if gpu else None
            skipped.append(
                f"bf16 skipped: compute capability {cc[0]}.{cc[1]} < 8.0"
                if cc
                else "bf16 skipped: compute capability unknown (set spec.resources.gpu.computeCapability)"
            )
            continue
        if e.fits:
            return e, skipped
        skipped.append(_why_not(e))
    return None, skipped


def plan_memory(
    spec: AutoGLMDeploymentSpec,
    node_gpu: GpuInfo | None = None,
    *,
    allow_network: bool = False,
    token: str | None = None,
) -> MemoryPlan:
    """Plan one replica of ``spec``: resolve the model shape and the GPU, estimate every mode, pick one."""
    shape = resolve_shape(spec.model, allow_network=allow_network, token=token)
    gpu_spec = spec.resources.gpu
    try:
        gpu = resolve_gpu(gpu_spec, node_gpu)
    except GpuUnknownError as exc:
        if spec.quantization.value == "auto":
            raise MemoryFitError(
                exc.field_path,
                "quantization auto cannot choose a mode without knowing the GPU: the spec names no GPU "
                f"product or memory and no node label says it; {GPU_UNKNOWN_HINT} (or set an explicit "
                "spec.quantization to deploy without a fit check)",
            ) from None
        return _plan_unknown_gpu(spec, shape)
    count = gpu_spec.count if gpu is not None else 0
    workload = workload_of(spec)
    kwargs = _estimate_options(spec, gpu)
    table = [estimate(shape, mode, gpu, count, workload=workload, **kwargs) for mode in MODES]  # type: ignore[arg-type]
    by_mode = {e.quantization: e for e in table}
    requested = spec.quantization.value
    where = _where(gpu, count)

    def suggestion(failed: Estimate) -> str:
        fitting = [m for m in AUTO_ORDER if by_mode[m].fits and _auto_allowed(m, gpu)]
        if fitting:
            return f"suggest {fitting[0]} ({gib(by_mode[fitting[0]].total_bytes)} GiB)"
        smallest = by_mode["nf4"]
        hints = _smaller_workload(shape, "nf4", gpu, count, workload, kwargs)
        if hints:
            return "nf4 fits with " + " or ".join(hints)
        hardware = _bigger_hardware(
            smallest, gpu, count, spec.memory.gpu_memory_percent, spec.memory.headroom_percent
        )
        return (
            f"even nf4 needs {gib(smallest.total_bytes)} GiB: use {hardware} or lower "
            "serving.maxInputTokens + serving.maxNewTokens"
        )

    if requested == "auto":
        chosen, skipped = _choose_auto(by_mode, gpu)
        if chosen is not None:
            reason = "; ".join([*skipped, _fits(chosen)]) + f" on {where}"
        else:
            chosen = by_mode["nf4"]
            reason = f"nothing fits on {where}: " + "; ".join(skipped) + f"; {suggestion(chosen)}"
    else:
        chosen = by_mode[requested]
        if chosen.fits:
            reason = f"{_fits(chosen)} on {where}"
        elif not chosen.supported:
            reason = f"{_why_not(chosen)}; {suggestion(chosen)}"
        else:
            reason = (
                f"{requested} needs {gib(chosen.total_bytes)} GiB, budget {gib(chosen.budget_bytes)} GiB "
                f"({_usable(chosen)} after {spec.memory.headroom_percent}% headroom) on {where}; {suggestion(chosen)}"
            )
    if chosen.note and chosen.note not in reason and chosen.supported:
        reason += f" ({chosen.note})"
    return MemoryPlan(
        shape=shape, gpu=gpu, gpu_count=count, requested=requested, chosen=chosen, table=table, reason=reason
    )


def _plan_unknown_gpu(spec: AutoGLMDeploymentSpec, shape: ModelShape) -> MemoryPlan:
    """An explicit mode on a GPU nobody described: what the replica needs, and no verdict."""
    gpu = GpuInfo(UNKNOWN_GPU, 0)
    count = spec.resources.gpu.count
    workload = workload_of(spec)
    options = spec.quantization_options
    table = [
        estimate(
            shape,
            mode,
            gpu,
            count,
            workload=workload,
            gpu_memory_percent=spec.memory.gpu_memory_percent,
            headroom_percent=spec.memory.headroom_percent,
            double_quant=options.double_quant if options else True,
            compute_dtype=options.compute_dtype.value if options else "bf16",
        )
        for mode in MODES
    ]
    chosen = next(e for e in table if e.quantization == spec.quantization.value)
    per_gpu = chosen.total_bytes / max(count, 1) / (spec.memory.gpu_memory_percent / 100)
    per_gpu /= 1 - spec.memory.headroom_percent / 100
    reason = (
        f"{chosen.quantization} needs {gib(chosen.total_bytes)} GiB per replica (GPUs with >= "
        f"{per_gpu / GIB:.0f} GiB each at these percentages); not checked against the GPU, which is "
        f"unknown: to get a fit check, {GPU_UNKNOWN_HINT}"
    )
    return MemoryPlan(
        shape=shape,
        gpu=gpu,
        gpu_count=count,
        requested=spec.quantization.value,
        chosen=chosen,
        table=table,
        reason=reason,
        gpu_known=False,
    )


def _auto_allowed(mode: str, gpu: GpuInfo | None) -> bool:
    """bf16 only where it is known to run natively: compute capability >= 8.0, or the CPU."""
    if mode != "bf16" or gpu is None:
        return True
    return gpu.compute_capability is not None and gpu.compute_capability >= (8, 0)


__all__ = ["AUTO_ORDER", "format_gib", "plan_memory", "resolve_shape", "workload_of"]
