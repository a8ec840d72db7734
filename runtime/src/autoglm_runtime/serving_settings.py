"""The serving settings, each declared once.

A serving setting is one field below: its name, type, default, bounds and description. Everything
else follows from that field, so adding a setting is one declaration (plus its line in the walk
test, ``tests/operator/test_serving_settings.py``, which checks every layer):

* the runtime's setting: :class:`autoglm_runtime.settings.RuntimeSettings` inherits these classes,
  so the env var is ``AUTOGLM_<NAME>`` and the ``autoglm-runtime serve`` flag ``--<name-with-dashes>``;
* the engine's config: :class:`EngineSettings` *is* the engine's part (``EngineConfig`` subclasses it);
* the CR field: a field carrying :class:`InSpec` is ``spec.<section>.<camelName>`` of an
  AutoGLMDeployment (:func:`spec_fields` builds the CR model's fields, hence the CRD schema);
* the operator's CR → env rendering (:func:`spec_values`) and its reverse map (:func:`spec_path`);
* a setting's earlier name, when it carries :class:`Renamed`: still read from the env
  (``AUTOGLM_<OLD>``) and as a flag (``--<old>``), with a warning naming the new one (:func:`renamed`).
  The operator renders the new name only.

One name per setting in every layer: ``request_timeout_seconds`` is ``requestTimeoutSeconds`` in the
CR and ``AUTOGLM_REQUEST_TIMEOUT_SECONDS`` in the pod. One "not set": ``None`` (the env var is left
out), and :class:`InSpec.unset` says what the runtime does then. The CR states a few things more
strictly than the runtime (every number bounded, integers where a pod needs no fraction); those are
the only differences and they sit in the setting's :class:`InSpec`.

This module is torch-free: the operator imports it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, Literal, get_origin

import annotated_types
from pydantic import BaseModel, ConfigDict, Field, StrictBool
from pydantic.alias_generators import to_camel
from pydantic.fields import FieldInfo

MIB = 1_048_576
DEFAULT_MAX_BATCH_SIZE = 8
DEFAULT_MAX_BODY_BYTES = 20 * MIB  # a phone screenshot as a PNG data URL fits (also the remote image limit)
HOST_PATTERN = r"^(\*\.)?[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"

Section = Literal["serving", "memory"]


class Quantization(StrEnum):
    """How the weights are held in memory. ``none`` keeps the checkpoint's dtype (fp32 on CPU)."""

    NONE = "none"
    FP16 = "fp16"
    BF16 = "bf16"
    INT8 = "int8"
    NF4 = "nf4"
    FP4 = "fp4"

    @property
    def is_4bit(self) -> bool:
        return self in (Quantization.NF4, Quantization.FP4)

    @property
    def is_bitsandbytes(self) -> bool:
        return self in (Quantization.INT8, Quantization.NF4, Quantization.FP4)


@dataclass(frozen=True)
class InSpec:
    """A setting users set in the CR, at ``spec.<section>.<camelName>``; the fields other than
    ``section`` are what the CR states differently from the runtime (None: the same)."""

    section: Section
    type: Any = None  # the CR's type (int where the runtime also takes a fraction; a list for a CSV)
    ge: float | None = None
    le: float | None = None
    max_length: int | None = None
    description: str | None = None  # when the CR's words differ (e.g. the Service port)
    unset: str | None = None  # what None means (in the description of both)


@dataclass(frozen=True)
class Renamed:
    """The setting's name before a rename: ``AUTOGLM_<OLD>`` and ``--<old>`` are still accepted,
    deprecated (one warning naming the new name); the new name wins where both are set."""

    old: str


class EngineSettings(BaseModel):
    """The settings the engine reads (``EngineConfig``): batching, limits, memory, the breaker."""

    model_config = ConfigDict(frozen=True)

    # --- batching and queueing ------------------------------------------------------------------
    max_batch_size: Annotated[int, InSpec("serving")] = Field(
        DEFAULT_MAX_BATCH_SIZE, ge=1, le=256, description="Requests decoded together; 1 disables batching."
    )
    max_batch_tokens: Annotated[int | None, InSpec("serving", unset="2048 on a GPU, 512 on a CPU")] = Field(
        None,
        ge=1,
        le=1048576,
        description="Tokens one engine step runs (decode tokens of the running requests + prompt chunks); "
        "bounds the activation memory.",
    )
    kv_cache_tokens: Annotated[
        int | None, InSpec("serving", unset="every block the memory budget leaves")
    ] = Field(None, ge=1, le=100000000, description="Cap on the KV-cache pool, in tokens.")
    prefix_caching: Annotated[bool, InSpec("serving")] = Field(
        True, description="Reuse the KV blocks of prompt prefixes seen before (shared system prompts)."
    )
    batch_window_ms: Annotated[float, InSpec("serving", type=int)] = Field(
        5, ge=0, le=1000, description="Milliseconds to wait to fill a batch."
    )
    max_concurrent_requests: Annotated[int, InSpec("serving")] = Field(
        64, ge=1, le=10000, description="Requests in flight per pod."
    )
    max_queue: Annotated[int, InSpec("serving")] = Field(
        256, ge=0, le=100000, description="Waiting requests per pod; beyond it 429."
    )
    max_queue_wait_seconds: Annotated[
        float | None, InSpec("serving", unset="a request waits until requestTimeoutSeconds")
    ] = Field(
        None,
        ge=0.1,
        le=86400,
        description="Longest a request may wait in the queue before its first step; then 429 with Retry-After "
        "(the client retries, or another pod takes it).",
    )
    max_input_tokens: Annotated[int, InSpec("serving")] = Field(
        4096, ge=1, le=1048576, description="Longest prompt in tokens; longer → 400."
    )
    max_new_tokens: Annotated[int, InSpec("serving")] = Field(
        512, ge=1, le=1048576, description="Most tokens generated per request."
    )
    request_timeout_seconds: Annotated[
        float, InSpec("serving", type=int, ge=1, le=86400), Renamed("request_timeout_s")
    ] = Field(
        300, gt=0, description="Wall-clock limit per request."
    )

    # --- memory ---------------------------------------------------------------------------------
    gpu_memory_percent: Annotated[int, InSpec("memory")] = Field(
        90,
        ge=10,
        le=100,
        description="Share of each GPU's memory the runtime may use (torch per-process fraction).",
    )
    host_memory_percent: Annotated[int, InSpec("memory")] = Field(
        75,
        ge=10,
        le=100,
        description="Share of the container memory limit for offloaded weights (accelerate max_memory).",
    )
    headroom_percent: Annotated[int, InSpec("memory"), Renamed("memory_headroom_percent")] = Field(
        10,
        ge=0,
        le=50,
        description="Margin kept free within the memory budget: by the fit check, and by the runtime "
        "when it sizes the KV-cache pool.",
    )
    # The operator renders this from the plan (auto resolved), not from a CR field of the same name.
    quantization: Quantization = Field(Quantization.NONE, description="none, fp16, bf16, int8, nf4 or fp4.")

    # --- circuit breaker (runtime only) -----------------------------------------------------------
    breaker_failure_threshold: int = Field(
        5,
        ge=1,
        le=1000,
        description="Requests failing in a row (each in a batch of its own) that open the breaker.",
    )
    breaker_window_s: float = Field(
        60.0, gt=0, description="The failures must fall within this many seconds."
    )
    breaker_cooldown_s: float = Field(
        10.0, gt=0, description="Open breaker: seconds of fast 503s before one probe request is let through."
    )


class ServingSettings(EngineSettings):
    """The engine's settings plus those the HTTP layer reads: body and image limits, rate limits, port."""

    port: Annotated[
        int, InSpec("serving", ge=1024, description="Container and Service port (non-root: >= 1024).")
    ] = Field(8000, ge=1, le=65535, description="Bind port.")
    max_body_bytes: Annotated[int, InSpec("serving", le=1073741824)] = Field(
        DEFAULT_MAX_BODY_BYTES,
        ge=1024,
        description="Largest request body; larger → 413. 20 MiB holds a phone screenshot as a PNG data URL.",
    )
    max_images_per_request: Annotated[int, InSpec("serving")] = Field(
        10, ge=0, le=256, description="Images one chat request may carry (vision models); more → 400."
    )
    max_image_pixels: Annotated[int | None, InSpec("serving", le=100000000, unset="the model's own")] = Field(
        None,
        ge=12544,
        description="Pixels an image is resized to at most before it becomes tokens (the image processor's "
        "max_pixels; 28x28 pixels = 1 token).",
    )
    max_decoded_pixels: Annotated[int, InSpec("serving", le=1000000000)] = Field(
        40000000,
        ge=1,
        description="Largest image (width x height) decoded at all; bigger (decompression bombs) → 400.",
    )
    image_url_hosts: Annotated[
        str,
        InSpec(
            "serving",
            type=list[Annotated[str, Field(max_length=253, pattern=HOST_PATTERN)]],
            max_length=32,
            description="Hosts whose http(s) image URLs the runtime fetches (*.example.com for subdomains; "
            "public addresses only, same-host redirects, size and time limits); empty: only inline data: URLs.",
        ),
    ] = Field(
        "",
        max_length=4096,
        description="Comma-separated hosts whose http(s) image URLs are fetched (*.example.com for "
        "subdomains); empty = remote image URLs are refused (send data: URLs).",
    )
    image_url_timeout_seconds: Annotated[float, InSpec("serving", ge=1), Renamed("image_url_timeout_s")] = Field(
        10, gt=0, le=300, description="Time limit of one remote image fetch (with imageUrlHosts)."
    )
    image_url_max_bytes: Annotated[int, InSpec("serving", le=1073741824)] = Field(
        DEFAULT_MAX_BODY_BYTES, ge=1024, description="Largest remote image fetched (with imageUrlHosts)."
    )
    rate_limit_rps: Annotated[float, InSpec("serving", le=100000)] = Field(
        0, ge=0, description="Requests per second per pod; 0 = unlimited."
    )
    rate_limit_per_key_rps: Annotated[float, InSpec("serving", le=100000)] = Field(
        0, ge=0, description="Requests per second per API key; 0 = off."
    )


# --------------------------------------------------------------------------------------------------
# What follows from the declarations
# --------------------------------------------------------------------------------------------------


def in_spec(name: str) -> InSpec | None:
    """The CR placement of a serving setting, or None for a runtime-only one."""
    info = ServingSettings.model_fields[name]
    return next((m for m in info.metadata if isinstance(m, InSpec)), None)


def renamed(model: type[BaseModel] = ServingSettings) -> dict[str, str]:
    """The earlier names of a model's settings that carry :class:`Renamed`: ``old → new``."""
    return {
        m.old: name for name, info in model.model_fields.items() for m in info.metadata if isinstance(m, Renamed)
    }


def spec_settings(section: Section | None = None) -> list[str]:
    """The settings users set in the CR (of one section), in declaration order."""
    return [
        name
        for name in ServingSettings.model_fields
        if (where := in_spec(name)) is not None and section in (None, where.section)
    ]


def spec_path(name: str) -> str:
    """Where a setting sits in the CR: ``max_batch_size`` → ``spec.serving.maxBatchSize``."""
    where = in_spec(name)
    if where is None:
        raise KeyError(f"{name} is not set in the CR")
    return f"spec.{where.section}.{to_camel(name)}"


def description(name: str, *, for_spec: bool = False) -> str:
    """The setting's description (the CR's own words where it has them), with what unset means."""
    info = ServingSettings.model_fields[name]
    where = in_spec(name)
    text = (where.description if for_spec and where is not None else None) or info.description or ""
    if where is not None and where.unset:
        text += f" Default: {where.unset}."
    return text


def _runtime_bounds(info: FieldInfo) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for m in info.metadata:
        if isinstance(m, annotated_types.Ge):
            out["ge"] = m.ge
        elif isinstance(m, annotated_types.Gt):
            out["gt"] = m.gt
        elif isinstance(m, annotated_types.Le):
            out["le"] = m.le
        elif isinstance(m, annotated_types.MaxLen):
            out["max_length"] = m.max_length
    return out


def spec_bounds(name: str) -> dict[str, Any]:
    """The bounds of the CR field: the runtime's, tightened where :class:`InSpec` says so."""
    where = in_spec(name)
    assert where is not None
    bounds = _runtime_bounds(ServingSettings.model_fields[name])
    if where.type is not None and not _is_number(where.type):
        bounds = {}  # a different shape (a list): its own bounds only
    if where.ge is not None:
        bounds.pop("gt", None)
        bounds["ge"] = where.ge
    for key in ("le", "max_length"):
        if getattr(where, key) is not None:
            bounds[key] = getattr(where, key)
    return bounds


def _is_number(kind: Any) -> bool:
    return kind in (int, float)


def spec_fields(section: Section) -> dict[str, Any]:
    """The CR model's fields of a section (``create_model`` arguments): ``name → (type, Field)``."""
    fields: dict[str, Any] = {}
    for name in spec_settings(section):
        info = ServingSettings.model_fields[name]
        where = in_spec(name)
        assert where is not None
        kind: Any = where.type if where.type is not None else info.annotation
        if kind is bool:
            kind = StrictBool  # the CR takes true/false only; the runtime parses env text
        optional = info.default is None
        default: Any = info.default
        if where.type is int and isinstance(default, float):
            default = int(default)
        extra: dict[str, Any] = (
            {"default_factory": list} if get_origin(kind) is list else {"default": default}
        )
        if optional and kind is not info.annotation:
            kind = kind | None
        fields[name] = (
            kind,
            Field(**extra, **spec_bounds(name), description=description(name, for_spec=True)),
        )
    return fields


def encode(name: str, value: Any) -> Any:
    """A CR value as the runtime takes it (a list of hosts → comma-separated)."""
    if isinstance(value, list | tuple):
        return ",".join(value)
    return value


def spec_values(sections: Mapping[str, Any]) -> dict[str, Any]:
    """Runtime settings values from the CR's sections (``{"serving": spec.serving, ...}``): every
    setting the CR carries; not set (None, or an empty list) is left out, for the runtime's default."""
    values: dict[str, Any] = {}
    for name in spec_settings():
        where = in_spec(name)
        assert where is not None
        value = getattr(sections[where.section], name)
        if value is None or value == []:
            continue
        values[name] = encode(name, value)
    return values
