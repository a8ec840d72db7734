"""Generate the AutoGLMDeployment CRD from the pydantic API models.

The output is a structural schema: every node typed, ``$defs`` inlined, no ``anyOf`` with null
(optional fields are simply not required), titles dropped, descriptions kept, CEL rules attached
with ``x-kubernetes-validations``.
"""

from __future__ import annotations

import copy
import types
import typing
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.alias_generators import to_camel

from autoglm_operator import api

_DROP = {"title", "discriminator"}


def _structural(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_structural(n, defs) for n in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = copy.deepcopy(defs[node["$ref"].rsplit("/", 1)[-1]])
        extra = {k: v for k, v in node.items() if k != "$ref"}
        target.update(extra)
        return _structural(target, defs)
    if "anyOf" in node:
        options = [o for o in node["anyOf"] if o.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"union types are not structural: {node}")
        merged = {k: v for k, v in node.items() if k != "anyOf"}
        inner = _structural(options[0], defs)
        merged = {**inner, **{k: v for k, v in merged.items() if k != "default" or v is not None}}
        if merged.get("default", 0) is None:
            merged.pop("default")
        return _structural(merged, defs)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP or key == "$defs":
            continue
        if key == "default" and value is None:
            continue
        if key == "properties":
            out[key] = {name: _structural(sub, defs) for name, sub in value.items()}
        elif key == "additionalProperties" and value is False:
            continue  # structural schemas prune unknown fields; strict validation rejects them
        else:
            out[key] = _structural(value, defs)
    if out.get("x-kubernetes-preserve-unknown-fields") and "type" not in out:
        out["type"] = "object"
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    if out.get("type") == "string" and "enum" in out and "maxLength" not in out:
        out["maxLength"] = max(len(str(v)) for v in out["enum"])  # the CEL cost estimator ignores enum
    if "const" in out:
        out.setdefault("enum", [out.pop("const")])
    return out


def _submodel(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            if (found := _submodel(arg)) is not None:
                return found
    return None


def _factory_defaults(model: type[BaseModel], node: dict[str, Any]) -> None:
    """Pydantic leaves ``default_factory`` values out of the schema; the API server needs them to
    default nested objects (kubebuilder's ``+kubebuilder:default={}``), so they are added here."""
    props = node.get("properties", {})
    for name, field in model.model_fields.items():
        prop = props.get(to_camel(name))
        if prop is None:
            continue
        if field.default_factory is not None:
            value = field.default_factory()  # type: ignore[call-arg]
            if isinstance(value, BaseModel):
                value = value.model_dump(by_alias=True, exclude_none=True, mode="json")
            prop["default"] = value
        sub = _submodel(field.annotation)
        if sub is not None:
            _factory_defaults(sub, prop)


def openapi_schema(model: type[api.ApiModel]) -> dict[str, Any]:
    """Structural OpenAPI v3 schema of one model, as the CRD carries it."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    schema = _structural(raw, defs)
    _factory_defaults(model, schema)
    return schema


def root_schema() -> dict[str, Any]:
    spec = openapi_schema(api.AutoGLMDeploymentSpec)
    status = openapi_schema(api.AutoGLMDeploymentStatus)
    return {
        "type": "object",
        "description": "AutoGLMDeployment runs a GLM-family (or any causal) language model on GPUs, quantized to "
        "fit, behind an OpenAI-compatible API.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {
                "type": "string",
                "maxLength": 253,
                "description": "APIVersion of this object: autoglm.io/v1alpha1.",
            },
            "kind": {"type": "string", "maxLength": 63, "description": "Kind: AutoGLMDeployment."},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
    }


def crd() -> dict[str, Any]:
    """The CustomResourceDefinition as a dict."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{api.PLURAL}.{api.GROUP}",
            "annotations": {"autoglm.io/generated-by": "autoglm-operator crd (from autoglm_operator.api)"},
        },
        "spec": {
            "group": api.GROUP,
            "names": {
                "kind": api.KIND,
                "listKind": f"{api.KIND}List",
                "plural": api.PLURAL,
                "singular": api.SINGULAR,
                "shortNames": api.SHORT_NAMES,
                "categories": api.CATEGORIES,
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": api.VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": root_schema()},
                    "subresources": {
                        "status": {},
                        "scale": {
                            "specReplicasPath": ".spec.replicas",
                            "statusReplicasPath": ".status.replicas",
                            "labelSelectorPath": ".status.selector",
                        },
                    },
                    "additionalPrinterColumns": [
                        {
                            "name": "Ready",
                            "type": "string",
                            "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
                            "description": "Whether the model is being served.",
                        },
                        {
                            "name": "Replicas",
                            "type": "integer",
                            "jsonPath": ".status.readyReplicas",
                            "description": "Ready replicas.",
                        },
                        {
                            "name": "Autoscaling",
                            "type": "string",
                            "jsonPath": '.status.conditions[?(@.type=="Autoscaling")].reason',
                            "description": "The autoscaler's state: ScalingActive, or why it cannot scale.",
                        },
                        {
                            "name": "Quantization",
                            "type": "string",
                            "jsonPath": ".status.quantization",
                            "description": "Quantization in use (auto resolved).",
                        },
                        {
                            "name": "GPU-Mem",
                            "type": "string",
                            "jsonPath": ".status.estimatedGpuMemory",
                            "description": "Estimated GPU memory per replica.",
                        },
                        {
                            "name": "Model",
                            "type": "string",
                            "jsonPath": ".spec.model.source",
                            "priority": 1,
                            "description": "Model source.",
                        },
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    ],
                }
            ],
        },
    }


def crd_yaml() -> str:
    header = (
        "# Generated by `make crds` from operator/src/autoglm_operator/api/ (serving settings: "
        "runtime/src/autoglm_runtime/serving_settings.py). Do not edit.\n"
    )
    return header + yaml.safe_dump(crd(), sort_keys=False, width=120)
