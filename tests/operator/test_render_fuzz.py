"""Property: for every spec the API accepts, render() either returns valid Kubernetes objects or
raises SpecError naming a field — never anything else.

Specs are generated from the CRD's own OpenAPI schema (so new fields are fuzzed as soon as they
exist), then filtered through the pydantic models (which also run the CEL rules).
"""

from __future__ import annotations

import copy
import os
import re
from typing import Any

from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from autoglm_operator.api import AutoGLMDeploymentSpec
from autoglm_operator.crd import openapi_schema
from autoglm_operator.memory.catalog import catalog_names
from autoglm_operator.memory.gpus import known_gpu_names
from autoglm_operator.render import (
    SETTINGS_CHECKSUM_ANNOTATION,
    SpecError,
    parse_spec,
    render,
    settings_checksum,
)
from tests.operator.render_helpers import OPERATOR_VERSION, validate_object

_TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
_SMALL_INT = 10_000


def _regex(pattern: str) -> st.SearchStrategy[str]:
    return st.from_regex(re.compile(pattern), fullmatch=True)


def from_openapi(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """A strategy for values a structural OpenAPI schema admits (CEL rules are left to pydantic)."""
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kind = schema.get("type")
    if kind == "object" and "properties" in schema:
        required = set(schema.get("required", []))
        fields = {name: from_openapi(sub) for name, sub in schema["properties"].items()}
        return st.fixed_dictionaries(
            {k: v for k, v in fields.items() if k in required},
            optional={k: v for k, v in fields.items() if k not in required},
        )
    if kind == "object":
        if schema.get("x-kubernetes-preserve-unknown-fields"):
            return st.just({})
        values = from_openapi(schema.get("additionalProperties") or {"type": "string"})
        return st.dictionaries(_regex(r"[a-z][a-z0-9.-/]{0,20}[a-z0-9]"), values, max_size=3)
    if kind == "array":
        return st.lists(from_openapi(schema.get("items", {"type": "string"})), max_size=3)
    if kind == "integer":
        lo = schema.get("minimum", -_SMALL_INT)
        hi = schema.get("maximum", max(lo, 0) + _SMALL_INT)
        # favour both the bounds and ordinary values
        return st.one_of(st.sampled_from([lo, hi]), st.integers(lo, min(hi, lo + 300)), st.integers(lo, hi))
    if kind == "number":
        lo = schema.get("minimum", 0)
        hi = schema.get("maximum", 1e6)
        return st.one_of(st.just(lo), st.floats(lo, hi, allow_nan=False, allow_infinity=False))
    if kind == "boolean":
        return st.booleans()
    if kind == "string":
        if "pattern" in schema:
            strat = _regex(schema["pattern"])
            if "maxLength" in schema:
                strat = strat.filter(lambda s, n=schema["maxLength"]: len(s) <= n)
            return strat
        return _TEXT
    return st.none()


_SPEC = openapi_schema(AutoGLMDeploymentSpec)
# Mostly models the planner knows (others need spec.model.shape and are a SpecError without it).
_MOSTLY = st.sampled_from([True] * 9 + [False])  # uniform when generating, unlike integers()
_PRODUCTS = st.sampled_from([*known_gpu_names(), "NVIDIA-L4", "Tesla-T4", "H100"])
_SOURCES = st.one_of(
    st.sampled_from([f"hf://{n}" for n in catalog_names()]),
    st.sampled_from([f"https://mirror.example/hub/{n}" for n in catalog_names()]),
    st.sampled_from([f"pvc://weights/{n}" for n in catalog_names()]),
    _regex(_SPEC["properties"]["model"]["properties"]["source"]["pattern"]),
)


@st.composite
def crs(draw: st.DrawFn) -> dict[str, Any]:
    spec = draw(from_openapi(_SPEC))
    if draw(_MOSTLY):
        spec["model"]["source"] = draw(_SOURCES)
    gpu = spec.setdefault("resources", {}).setdefault("gpu", {})
    if draw(_MOSTLY) and "memory" not in gpu and "resourceName" not in gpu:
        gpu["product"] = draw(_PRODUCTS)
    if draw(st.booleans()):  # half the time, pods whether they fit or not: covers the Deployment path
        spec.setdefault("memory", {})["skipFitCheck"] = True
    spec.get("scheduling", {}).pop("affinity", None)  # free-form pass-through; not render's to check
    name = draw(_regex(r"[a-z]([-a-z0-9]{0,20}[a-z0-9])?"))
    obj = {
        "apiVersion": "autoglm.io/v1alpha1",
        "kind": "AutoGLMDeployment",
        "metadata": {"name": name, "namespace": "ns", "uid": "00000000-0000-0000-0000-000000000001"},
        "spec": spec,
    }
    try:
        parse_spec(obj)
    except SpecError:
        assume(False)  # the API server would have refused it
    return obj


@settings(
    max_examples=int(os.environ.get("RENDER_FUZZ_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(crs())
def test_render_never_crashes_and_output_is_valid(obj: dict[str, Any]) -> None:
    before = copy.deepcopy(obj)
    try:
        r = render(obj, operator_version=OPERATOR_VERSION)
    except SpecError as exc:
        error = exc
    else:
        error = None
    if error is not None:
        event(f"SpecError at {error.field_path}")
        assert error.field_path.startswith(("spec", "metadata")), error
        assert error.message
        return
    event("rendered" + (" (does not fit)" if r.deployment_skipped_reason else ""))
    assert obj == before, "render must not modify its input"
    assert render(obj, operator_version=OPERATOR_VERSION).to_yaml() == r.to_yaml()
    kinds = [o["kind"] for o in r.objects]
    assert kinds[0] == "ConfigMap"
    assert "Service" in kinds
    # The runtime's Deployment carries the CR's name (the endpoint picker's, with routing, another).
    runtime = [o for o in r.objects if o["kind"] == "Deployment" and o["metadata"]["name"] == obj["metadata"]["name"]]
    assert bool(runtime) == (r.deployment_skipped_reason is None)
    for o in r.objects:
        validate_object(o)
        assert o["metadata"]["ownerReferences"][0]["uid"] == obj["metadata"]["uid"]
    data = r.objects[0]["data"]
    assert data["AUTOGLM_QUANTIZATION"] == r.plan.quantization != "auto"
    for o in runtime:
        if o["kind"] == "Deployment":
            autoscaled = "HorizontalPodAutoscaler" in kinds or "ScaledObject" in kinds
            assert ("replicas" in o["spec"]) == (not autoscaled)
            annotations = o["spec"]["template"]["metadata"]["annotations"]
            assert annotations[SETTINGS_CHECKSUM_ANNOTATION] == settings_checksum(data)
