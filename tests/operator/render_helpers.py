"""Shared bits of the render tests: CR builders and validation of rendered objects."""

from __future__ import annotations

import copy
from functools import cache
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.conftest import REPO

# Released CRDs of the projects we plug into (KEDA, Gateway API, InferencePool), kept beside the
# repository (../shared/crds, copied next to the clone in CI), never in it.
SHARED_CRDS = REPO.parent / "shared" / "crds"
THIRD_PARTY_GROUPS = frozenset(
    {"keda.sh", "gateway.networking.k8s.io", "inference.networking.k8s.io", "llm-d.ai"}
)

K8S_VERSION = "1.33.0"  # the oldest Kubernetes the pods are meant for must accept them
OPERATOR_VERSION = "0.1.0"  # fixed so goldens do not change with the package version

BASE: dict[str, Any] = {
    "apiVersion": "autoglm.io/v1alpha1",
    "kind": "AutoGLMDeployment",
    "metadata": {"name": "glm", "namespace": "ml"},
    "spec": {
        "model": {"source": "hf://THUDM/glm-4-9b-chat"},
        "quantization": "int8",
        "resources": {"gpu": {"count": 1, "product": "L40S"}},
    },
}


def cr(uid: str | None = None, **spec: Any) -> dict[str, Any]:
    """BASE with top-level spec fields replaced."""
    obj = copy.deepcopy(BASE)
    obj["spec"].update(spec)
    if uid:
        obj["metadata"]["uid"] = uid
    return obj


def by_kind(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for o in objects:
        assert o["kind"] not in out, f"two {o['kind']} objects"
        out[o["kind"]] = o
    return out


# The part of prometheus-operator's ServiceMonitor schema (monitoring.coreos.com/v1) the operator
# uses, closed with additionalProperties: false so a misspelled field fails like --strict would.
_SECRET_KEY = {
    "type": "object",
    "required": ["name", "key"],
    "properties": {"name": {"type": "string"}, "key": {"type": "string"}, "optional": {"type": "boolean"}},
    "additionalProperties": False,
}
SERVICE_MONITOR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {"type": "object"},
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "selector": {
                    "type": "object",
                    "properties": {
                        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}}
                    },
                    "additionalProperties": False,
                },
                "namespaceSelector": {"type": "object"},
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "interval": {
                                "type": "string",
                                "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$",
                            },
                            "scheme": {"enum": ["http", "https"]},
                            "tlsConfig": {
                                "type": "object",
                                "additionalProperties": False,
                                "properties": {
                                    "ca": {
                                        "type": "object",
                                        "properties": {"secret": _SECRET_KEY, "configMap": _SECRET_KEY},
                                        "additionalProperties": False,
                                    },
                                    "serverName": {"type": "string"},
                                    "insecureSkipVerify": {"type": "boolean"},
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}


def _closed(schema: Any) -> Any:
    """A CRD schema with unknown fields refused (``--strict``): every object with ``properties`` and
    no ``additionalProperties`` / ``x-kubernetes-preserve-unknown-fields`` gets ``additionalProperties: false``."""
    if isinstance(schema, list):
        return [_closed(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _closed(v) for k, v in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@cache
def third_party_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) → the closed openAPIV3Schema of each served version in ../shared/crds."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(SHARED_CRDS.glob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text()):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                if version.get("served"):
                    schema = _closed(version["schema"]["openAPIV3Schema"])
                    schema["properties"]["metadata"] = {"type": "object"}
                    out[(f"{group}/{version['name']}", kind)] = schema
    return out


def crd_schema(api_version: str, kind: str) -> dict[str, Any]:
    """The closed ``openAPIV3Schema`` of a released third-party CRD (skips when ../shared is absent)."""
    if not SHARED_CRDS.is_dir():
        pytest.skip(f"{SHARED_CRDS} (the released third-party CRDs) is not beside the repository")
    return third_party_schemas()[(api_version, kind)]


def validate_object(obj: dict[str, Any]) -> None:
    """Raise when ``obj`` is not a valid object: Kubernetes' own schemas (strict: no unknown fields)
    for built-in kinds, the released CRDs in ../shared/crds (closed the same way) for third-party
    ones, the subset schema above for the ServiceMonitor custom resource."""
    if obj["kind"] == "ServiceMonitor":
        jsonschema.validate(obj, SERVICE_MONITOR_SCHEMA)
        return
    if obj["apiVersion"].split("/")[0] in THIRD_PARTY_GROUPS:
        if not SHARED_CRDS.is_dir():
            pytest.skip(f"{SHARED_CRDS} (the released third-party CRDs) is not beside the repository")
        schema = third_party_schemas().get((obj["apiVersion"], obj["kind"]))
        assert schema is not None, f"no released CRD in {SHARED_CRDS} serves {obj['apiVersion']} {obj['kind']}"
        jsonschema.validate(obj, schema)
        return
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
