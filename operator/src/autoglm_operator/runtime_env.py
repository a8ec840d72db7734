"""The runtime's settings for one CR (the ConfigMap the pod reads as ``AUTOGLM_*`` env vars).

The serving settings come from the CR as their declarations say
(:mod:`autoglm_runtime.serving_settings`); the rest (paths of mounted files, the resolved
quantization, the shutdown grace) the operator derives. The values are checked against the
runtime's own bounds here, so a CR the runtime would refuse is a spec error naming its field, not a
crash-looping pod.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from functools import cache
from typing import Any

import pydantic

from autoglm_operator import api, pod
from autoglm_operator.api import AutoGLMDeploymentSpec
from autoglm_operator.memory.types import MemoryPlan
from autoglm_operator.spec_errors import SpecError
from autoglm_runtime import serving_settings
from autoglm_runtime.settings import RuntimeSettings

SETTINGS_CHECKSUM_ANNOTATION = "autoglm.io/settings-checksum"


@cache
def _settings_checker() -> type[pydantic.BaseModel]:
    """The runtime settings' fields and bounds as a plain model: ``RuntimeSettings`` itself would
    read the operator's own environment when validating, and render must stay pure."""
    fields: dict[str, Any] = {n: (f.annotation, f) for n, f in RuntimeSettings.model_fields.items()}
    return pydantic.create_model("RuntimeSettingsCheck", **fields)


# Spec field of each runtime setting the operator derives (not a serving setting of the same name),
# to name the right field when the runtime would refuse it; the serving settings name their own.
_DERIVED_SOURCE = {
    "served_model_name": "spec.model.servedModelName",
    "quantization": "spec.quantization",
    "double_quant": "spec.quantizationOptions.doubleQuant",
    "compute_dtype": "spec.quantizationOptions.computeDtype",
}


def setting_source(name: str) -> str:
    """The spec field a runtime setting comes from (``spec`` when none does)."""
    if name in serving_settings.spec_settings():
        return serving_settings.spec_path(name)
    return _DERIVED_SOURCE.get(name, "spec")


def runtime_settings(spec: AutoGLMDeploymentSpec, plan: MemoryPlan, loc: pod.ModelLocation) -> dict[str, Any]:
    """Runtime settings values (field name → value) for one CR: every serving setting the CR sets
    (not set: left out, the runtime's default), then what the operator derives (paths, the plan)."""
    s = spec.serving
    tls = s.tls_secret is not None
    values: dict[str, Any] = serving_settings.spec_values({"serving": s, "memory": spec.memory})
    values |= {
        "model": loc.model_path,
        "served_model_name": spec.model.served_model_name or loc.served_name,
        "trust_remote_code": spec.model.trust_remote_code,
        "quantization": plan.quantization,
        "api_keys_file": f"{pod.API_KEYS_DIR}/{pod.API_KEYS_FILE}" if s.api_key_secret else None,
        "tls_cert_file": f"{pod.TLS_DIR}/tls.crt" if tls else None,
        "tls_key_file": f"{pod.TLS_DIR}/tls.key" if tls else None,
        "tls_client_ca_file": f"{pod.CLIENT_CA_DIR}/{pod.CLIENT_CA_FILE}" if s.client_ca_secret else None,
        "shutdown_grace_s": pod.SHUTDOWN_GRACE_SECONDS,
        "log_format": "json",
    }
    if plan.quantization in ("nf4", "fp4"):
        opts = spec.quantization_options or api.QuantizationOptions()
        values["double_quant"] = opts.double_quant
        values["compute_dtype"] = opts.compute_dtype
    try:
        _settings_checker().model_validate(values)
    except pydantic.ValidationError as exc:
        err = exc.errors()[0]
        field = str(err["loc"][0])
        raise SpecError(
            setting_source(field), f"the runtime would refuse {field}={err.get('input')!r}: {err['msg']}"
        ) from None
    return values


def settings_checksum(data: Mapping[str, str]) -> str:
    """sha256 of the ConfigMap data; on the pod template it rolls the pods when a setting changes."""
    return hashlib.sha256(json.dumps(dict(data), sort_keys=True, separators=(",", ":")).encode()).hexdigest()
