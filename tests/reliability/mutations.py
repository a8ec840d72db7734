"""Schema-invalid (and borderline) CRs: a valid CR with one mutation, chosen from the CRD schema.

Each mutation says whether the result MUST be rejected (``must_fail``): wrong types, out-of-range
numbers, unknown fields, bad enum values, broken CEL rules and missing required fields always are;
huge and unicode strings may be legal where the schema sets no pattern or length (then they must
render to valid manifests instead).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

from autoglm_operator.api import AutoGLMDeploymentSpec
from autoglm_operator.crd import openapi_schema

SPEC_SCHEMA = openapi_schema(AutoGLMDeploymentSpec)

# CEL rules of the CRD, each as a spec patch that breaks it (paths the message must name).
CEL_BREAKS: tuple[tuple[dict[str, Any], str], ...] = (
    ({"autoscaling": {"minReplicas": 5, "maxReplicas": 2}}, "spec.autoscaling"),
    ({"serving": {"maxBatchSize": 64, "maxConcurrentRequests": 8}}, "spec.serving"),
    (
        {"model": {"source": "hf://THUDM/glm-4-9b-chat", "cache": {"claimName": "c", "size": "1Gi"}}},
        "spec.model.cache",
    ),
    ({"model": {"source": "hf://THUDM/glm-4-9b-chat", "cache": {}}}, "spec.model.cache"),
    ({"quantization": "int8", "quantizationOptions": {"doubleQuant": True}}, "spec.quantizationOptions"),
    ({"replicas": 9, "autoscaling": {"minReplicas": 1, "maxReplicas": 2}}, "spec.replicas"),
    ({"memory": {"gpuMemoryPercent": 50, "headroomPercent": 60}}, "spec.memory"),
    ({"podDisruptionBudget": {"minAvailable": 1, "maxUnavailable": 1}}, "spec.podDisruptionBudget"),
    ({"autoscaling": {"metric": "cpu", "target": 150}}, "spec.autoscaling"),
)


KINDS = (
    "wrong-type",
    "out-of-range",
    "unknown-field",
    "bad-enum",
    "cel",
    "missing-required",
    "huge-string",
    "unicode",
)


@dataclass(frozen=True)
class Mutation:
    kind: str
    path: str  # dotted path of the field mutated ("spec.x.y")
    must_fail: bool


def _leaves(
    schema: dict[str, Any], value: Any, path: tuple[str, ...]
) -> list[tuple[tuple[str, ...], dict[str, Any]]]:
    """(path, schema) of every present field of ``value`` (objects included)."""
    out = [(path, schema)]
    if isinstance(value, dict) and "properties" in schema:
        for key, sub in schema["properties"].items():
            if key in value:
                out += _leaves(sub, value[key], (*path, key))
    return out


def _set(obj: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = obj
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value


def _wrong_type(schema: dict[str, Any]) -> Any:
    return {
        "string": 12345,
        "integer": "twelve",
        "number": "1.5x",
        "boolean": "yes",
        "array": "not-a-list",
        "object": ["not", "an", "object"],
    }.get(schema.get("type", "object"), 12345)


@st.composite
def mutated(
    draw: st.DrawFn, valid: st.SearchStrategy[dict[str, Any]], kind: str | None = None
) -> tuple[dict[str, Any], Mutation]:
    obj = copy.deepcopy(draw(valid))
    # Choices through a drawn Random: uniform (sampled_from favours its first items), still
    # reproducible from hypothesis' seed.
    rnd = draw(st.randoms(use_true_random=True))
    spec = obj["spec"]
    fields = [(p, s) for p, s in _leaves(SPEC_SCHEMA, spec, ()) if p]
    kind = kind or rnd.choice(KINDS)
    if kind == "cel":
        patch, where = rnd.choice(CEL_BREAKS)
        for key, value in patch.items():
            spec[key] = copy.deepcopy(value)
        return obj, Mutation(kind, where, True)
    if kind == "missing-required":
        if rnd.random() < 0.5:
            del spec["model"]
            return obj, Mutation(kind, "spec.model", True)
        del spec["model"]["source"]
        return obj, Mutation(kind, "spec.model.source", True)
    if kind == "unknown-field":
        objects = [
            (p, s)
            for p, s in [((), SPEC_SCHEMA), *fields]
            if "properties" in s and not s.get("x-kubernetes-preserve-unknown-fields")
        ]
        path, _ = rnd.choice(objects)
        node = spec
        for key in path:
            node = node[key]
        node[rnd.choice(["replicaCount", "gpus", "quantisation", "x", "Model"])] = 1
        return obj, Mutation(kind, ".".join(("spec", *path)), True)
    if kind == "out-of-range":
        bounded = [
            (p, s)
            for p, s in fields
            if s.get("type") in ("integer", "number") and ("minimum" in s or "maximum" in s)
        ]
        if bounded:
            path, schema = rnd.choice(bounded)
            above = "maximum" in schema and ("minimum" not in schema or rnd.random() < 0.5)
            value = schema["maximum"] + 1 if above else schema["minimum"] - 1
            _set(spec, path, value)
            return obj, Mutation(kind, ".".join(("spec", *path)), True)
        kind = "wrong-type"
    if kind == "bad-enum":
        enums = [(p, s) for p, s in fields if "enum" in s]
        if enums:
            path, _ = rnd.choice(enums)
            _set(spec, path, rnd.choice(["INT8", "gpu", "", "none "]))
            return obj, Mutation(kind, ".".join(("spec", *path)), True)
        kind = "wrong-type"
    if kind == "wrong-type":
        path, schema = rnd.choice(fields)
        _set(spec, path, _wrong_type(schema))
        return obj, Mutation(kind, ".".join(("spec", *path)), True)
    strings = [(p, s) for p, s in fields if s.get("type") == "string" and "enum" not in s]
    if not strings:
        strings = [(("model", "source"), SPEC_SCHEMA["properties"]["model"]["properties"]["source"])]
    path, schema = rnd.choice(strings)
    if kind == "huge-string":
        value = rnd.choice(["a", "9", "-", "模"]) * rnd.choice([300, 5_000, 100_000])
    else:
        value = rnd.choice(["模型/glm", "zai-org/🚀", "ü", "\u202eevil", "a\x00b", "é" * 70])
    _set(spec, path, value)
    return obj, Mutation(kind, ".".join(("spec", *path)), False)
