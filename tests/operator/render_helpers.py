"""Shared bits of the render tests: CR builders and validation of rendered objects."""

from __future__ import annotations

import copy
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.conftest import REPO

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


# Released third-party CRDs, read from ../shared/crds beside the clone (never copied into it).
SHARED_CRDS = REPO.parent / "shared" / "crds"
THIRD_PARTY_CRDS = {
    ("inference.networking.k8s.io/v1", "InferencePool"): "inference.networking.k8s.io_inferencepools.yaml",
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): "gateway.networking.k8s.io_httproutes.yaml",
    ("gateway.networking.k8s.io/v1", "Gateway"): "gateway.networking.k8s.io_gateways.yaml",
    ("llm-d.ai/v1alpha2", "InferenceObjective"): "llm-d.ai_inferenceobjectives.yaml",
}


def _closed(schema: Any) -> Any:
    """The schema with ``additionalProperties: false`` wherever it lists properties and says nothing
    of others: the API server prunes unknown fields silently, strict field validation refuses them."""
    if isinstance(schema, dict):
        out = {k: _closed(v) for k, v in schema.items()}
        if (
            "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_closed(v) for v in schema]
    return schema


@cache
def crd_schema(api_version: str, kind: str) -> dict[str, Any]:
    """``openAPIV3Schema`` of a released third-party CRD (skips the test when ../shared is absent)."""
    path = SHARED_CRDS / THIRD_PARTY_CRDS[(api_version, kind)]
    if not path.exists():
        pytest.skip(
            f"{path} not found: the released third-party CRDs live in ../shared/crds beside the clone"
        )
    crd = yaml.safe_load(Path(path).read_text())
    version = api_version.rpartition("/")[2]
    (entry,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    schema = copy.deepcopy(entry["schema"]["openAPIV3Schema"])
    schema["properties"]["metadata"] = {"type": "object"}  # the API server checks metadata itself
    return _closed(schema)


def validate_object(obj: dict[str, Any]) -> None:
    """Raise when ``obj`` is not a valid object: Kubernetes' own schemas (strict: no unknown fields)
    for built-in kinds, the released CRDs for the routing kinds, the subset schema above for the
    ServiceMonitor custom resource."""
    if obj["kind"] == "ServiceMonitor":
        jsonschema.validate(obj, SERVICE_MONITOR_SCHEMA)
        return
    if (obj["apiVersion"], obj["kind"]) in THIRD_PARTY_CRDS:
        jsonschema.validate(obj, crd_schema(obj["apiVersion"], obj["kind"]))
        return
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
