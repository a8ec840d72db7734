"""The generated CRD: structural, described, in sync with the committed file, with compiling CEL rules."""

from __future__ import annotations

from typing import Any

import celpy
import kubernetes_validate
import pytest
import yaml

from autoglm_operator import api
from autoglm_operator.crd import crd, crd_yaml
from autoglm_operator.crd_bounds import unboundable_constructs, unbounded_nodes, walk
from tests.conftest import REPO

CRD_FILE = REPO / "crds" / "autoglm.io_autoglmdeployments.yaml"


def schema() -> dict[str, Any]:
    return crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def test_committed_crd_matches_models():
    assert CRD_FILE.read_text() == crd_yaml(), "crds/ is stale: run `make crds` and commit the result"


def test_crd_is_a_valid_kubernetes_object():
    kubernetes_validate.validate(crd(), "1.33.0", strict=True)


def test_schema_is_structural():
    for path, node in walk(schema()):
        assert "type" in node, f"{path} has no type"
        for forbidden in ("anyOf", "oneOf", "allOf", "$ref", "$defs", "title", "nullable"):
            assert forbidden not in node, f"{path} uses {forbidden}"
        if node.get("default", 0) is None:
            pytest.fail(f"{path} has a null default")


def test_every_spec_and_status_property_is_described():
    for root in ("spec", "status"):
        for path, node in walk(schema()["properties"][root], root):
            if path.endswith(("[]", "{}")):
                continue  # list items and map values are described by their field
            assert node.get("description"), f"{path} has no description (kubectl explain shows nothing)"


def test_names_subresources_and_columns():
    spec = crd()["spec"]
    assert spec["group"] == "autoglm.io"
    assert spec["names"]["kind"] == "AutoGLMDeployment"
    assert spec["names"]["plural"] == "autoglmdeployments"
    assert spec["names"]["shortNames"] == ["agd"]
    assert spec["names"]["categories"] == ["autoglm"]
    version = spec["versions"][0]
    assert version["name"] == "v1alpha1"
    assert version["subresources"]["status"] == {}
    assert version["subresources"]["scale"] == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns["Ready"] == '.status.conditions[?(@.type=="Ready")].status'
    assert columns["Quantization"] == ".status.quantization"
    assert columns["GPU-Mem"] == ".status.estimatedGpuMemory"
    assert columns["Replicas"] == ".status.readyReplicas"
    assert "Age" in columns


def test_enums_bounds_and_defaults_are_in_the_schema():
    props = schema()["properties"]["spec"]["properties"]
    assert props["quantization"]["enum"] == ["none", "fp16", "bf16", "int8", "nf4", "fp4", "auto"]
    assert props["quantization"]["default"] == "auto"
    mem = props["memory"]["properties"]["gpuMemoryPercent"]
    assert (mem["minimum"], mem["maximum"], mem["default"]) == (10, 100, 90)
    assert props["resources"]["default"]["gpu"] == {"count": 1, "resourceName": "nvidia.com/gpu"}
    assert "hf://" in props["model"]["properties"]["source"]["pattern"]


def test_cel_rules_compile_and_cover_the_required_constraints():
    rules = [r for _, node in walk(schema()) for r in node.get("x-kubernetes-validations", [])]
    env = celpy.Environment()
    for r in rules:
        env.compile(r["rule"])
        if "messageExpression" in r:
            env.compile(r["messageExpression"])
    text = " ".join(r["rule"] for r in rules)
    assert "self.minReplicas <= self.maxReplicas" in text
    assert "self.replicas >= self.autoscaling.minReplicas" in text
    assert "quantizationOptions" in text
    assert "self.headroomPercent < self.gpuMemoryPercent" in text


def test_every_string_list_and_map_is_bounded():
    """A real API server estimates CEL cost from these bounds; without them it refuses the CRD."""
    assert unbounded_nodes(schema()) == []
    opaque = [p for p, n in walk(schema()) if n.get("x-kubernetes-preserve-unknown-fields")]
    assert opaque == [".spec.scheduling.affinity"], "a new opaque node needs a reason in docs/operator.md"


def test_every_crd_the_chart_installs_is_bounded():
    """The chart's copies, kopf's peering CRDs included (their status is opaque and has no rules)."""
    docs = [
        doc
        for path in sorted((REPO / "charts" / "autoglm-operator" / "crds").glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc and doc.get("kind") == "CustomResourceDefinition"
    ]
    assert {d["metadata"]["name"] for d in docs} >= {
        "autoglmdeployments.autoglm.io",
        "clusterkopfpeerings.kopf.dev",
        "kopfpeerings.kopf.dev",
    }
    for doc in docs:
        for version in doc["spec"]["versions"]:
            root = version["schema"]["openAPIV3Schema"]
            assert unbounded_nodes(root) == [], doc["metadata"]["name"]
            assert unboundable_constructs(root) == [], doc["metadata"]["name"]


def test_the_bounds_check_finds_what_is_missing():
    bad = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "tags": {"type": "array", "maxItems": 4, "items": {"type": "string"}},
            "labels": {"type": "object", "additionalProperties": {"type": "string", "maxLength": 63}},
            "mode": {"type": "string", "enum": ["a", "b"]},
            "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
        },
    }
    assert unbounded_nodes(bad) == [
        ".name: string without maxLength",
        ".tags[]: string without maxLength",
        ".labels: map without maxProperties",
    ]


def test_rules_use_only_constructs_the_api_server_can_bound():
    assert unboundable_constructs(schema()) == []


@pytest.mark.parametrize(
    ("rule", "message_expression", "expected"),
    [
        # The three rules a v1.36 API server refused ("messageExpression cost exceeds budget").
        ("self.a <= self.b", "'must be <= b (' + string(self.b) + ')'", "string() has no size bound"),
        (
            "self.a <= self.b",
            "'at most ' + self.free",
            "string concatenation with an operand of unknown size",
        ),
        ("self.items.all(i, i.matches('^x'))", None, ".all() on self.items, which has no"),
        ("self.name.matches('^a')", None, ".matches() on self.name, which has no"),
        ("size(self.name) < 10", None, "size() on self.name, which has no"),
        ("has(self.aff.x)", None, "reads into a preserve-unknown-fields node"),
        ("self.missing == 1", None, None),  # unknown fields are the API server's own error, not cost
        ("self.bounded.startsWith('a') && self.a + 1 > size(self.bounded)", "'bad: ' + self.bounded", None),
    ],
)
def test_the_construct_check_refuses_unboundable_rules(rule, message_expression, expected):
    node = {
        "type": "object",
        "properties": {
            "a": {"type": "integer"},
            "b": {"type": "integer"},
            "name": {"type": "string"},
            "free": {"type": "string"},
            "bounded": {"type": "string", "maxLength": 8},
            "items": {"type": "array", "items": {"type": "string"}},
            "aff": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
        },
        "x-kubernetes-validations": [
            {
                "rule": rule,
                "message": "m",
                **({"messageExpression": message_expression} if message_expression else {}),
            }
        ],
    }
    problems = unboundable_constructs(node)
    if expected is None:
        assert problems == []
    else:
        assert any(expected in p for p in problems), problems


def test_crd_yaml_round_trips():
    assert yaml.safe_load(crd_yaml()) == crd()


def test_operator_api_imports_without_torch():
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import autoglm_operator.api, autoglm_operator.crd, autoglm_operator.validate\n"
        "import autoglm_runtime.settings\n"
        "print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert api.KIND == "AutoGLMDeployment"
