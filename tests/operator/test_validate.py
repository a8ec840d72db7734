"""`autoglm-operator validate`: every example is valid, every bad CR in the table is rejected by field."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import yaml

from autoglm_operator.validate import validate_object
from tests.conftest import EXAMPLES

BASE = {
    "apiVersion": "autoglm.io/v1alpha1",
    "kind": "AutoGLMDeployment",
    "metadata": {"name": "glm", "namespace": "ml"},
    "spec": {"model": {"source": "hf://THUDM/glm-4-9b-chat"}},
}


def cr(**spec):
    obj = copy.deepcopy(BASE)
    obj["spec"].update(spec)
    return obj


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_are_valid(path):
    for doc in yaml.safe_load_all(path.read_text()):
        assert validate_object(doc) == []


def test_minimal_cr_is_valid():
    assert validate_object(cr()) == []


BAD = [
    (cr(model={"source": "s3://bucket/glm"}), "spec.model.source", "hf://"),
    (cr(model={"source": "THUDM/glm-4-9b-chat"}), "spec.model.source", "hf://"),
    (cr(model={}), "spec.model", "'source' is required"),
    (cr(quantization="int4"), "spec.quantization", "must be one of"),
    (
        cr(autoscaling={"minReplicas": 5, "maxReplicas": 4}),
        "spec.autoscaling.minReplicas",
        "must be <= maxReplicas",
    ),
    (cr(replicas=9, autoscaling={"minReplicas": 1, "maxReplicas": 4}), "spec.replicas", "within autoscaling"),
    (
        cr(quantization="int8", quantizationOptions={"doubleQuant": False}),
        "spec.quantizationOptions",
        "4-bit",
    ),
    (cr(memory={"gpuMemoryPercent": 120}), "spec.memory.gpuMemoryPercent", "maximum"),
    (cr(memory={"gpuMemoryPercent": 20, "headroomPercent": 30}), "spec.memory.headroomPercent", "less than"),
    (cr(autoscaling={"metric": "cpu", "target": 400}), "spec.autoscaling.target", "percentage"),
    (
        cr(serving={"maxBatchSize": 32, "maxConcurrentRequests": 8}),
        "spec.serving.maxBatchSize",
        "<= maxConcurrent",
    ),
    (cr(serving={"port": 80}), "spec.serving.port", "minimum"),
    (cr(serving={"maxBatchSize": 16, "maxBatchTokens": 8}), "spec.serving.maxBatchTokens", ">= maxBatchSize"),
    (
        cr(serving={"maxInputTokens": 4096, "maxNewTokens": 512, "kvCacheTokens": 4000}),
        "spec.serving.kvCacheTokens",
        ">= maxInputTokens + maxNewTokens",
    ),
    (
        cr(autoscaling={"minReplicas": 1, "maxReplica": 4}),
        "spec.autoscaling.maxReplica",
        "did you mean 'maxReplicas'",
    ),
    (cr(quantisation="nf4"), "spec.quantisation", "did you mean 'quantization'"),
    (cr(resources={"gpu": {"count": 1, "memory": "lots"}}), "spec.resources.gpu.memory", "match"),
    (cr(resources={"gpu": {"count": -1}}), "spec.resources.gpu.count", "minimum"),
    (
        cr(model={"source": "hf://a/b", "cache": {"claimName": "c", "size": "10Gi"}}),
        "spec.model.cache",
        "exactly one",
    ),
    (
        cr(podDisruptionBudget={"minAvailable": 1, "maxUnavailable": 1}),
        "spec.podDisruptionBudget",
        "at most one",
    ),
    ({**cr(), "metadata": {"name": "Bad_Name"}}, "metadata.name", "starting with a letter"),
    ({**cr(), "apiVersion": "autoglm.io/v1"}, "", "apiVersion/kind"),
    ({k: v for k, v in cr().items() if k != "spec"}, "", "'spec' is required"),
]


@pytest.mark.parametrize(
    ("obj", "path", "text"), BAD, ids=[f"{i}-{b[1] or 'root'}" for i, b in enumerate(BAD)]
)
def test_bad_crs_are_rejected_with_field_path(obj, path, text):
    problems = validate_object(obj)
    assert problems, "accepted an invalid CR"
    assert any(p.path == path and text in p.message for p in problems), [str(p) for p in problems]


def _cli(*args, stdin=None):
    return subprocess.run(
        [sys.executable, "-m", "autoglm_operator.cli", "validate", *args],
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
    )


def test_cli_accepts_all_examples():
    args = [a for p in EXAMPLES for a in ("-f", str(p))]
    out = _cli(*args)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count(": valid") == len(EXAMPLES)


def test_cli_multi_document_stdin_reports_each_problem():
    docs = yaml.safe_dump_all([cr(), cr(autoscaling={"minReplicas": 5, "maxReplicas": 4})])
    out = _cli("-f", "-", stdin=docs)
    assert out.returncode == 1
    assert "[0] ml/glm: valid" in out.stdout
    assert "spec.autoscaling.minReplicas: must be <= maxReplicas" in out.stderr
    assert "Traceback" not in out.stderr


def test_cli_bad_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("spec: [unclosed")
    out = _cli("-f", str(bad), "-f", str(tmp_path / "missing.yaml"))
    assert out.returncode == 1
    assert "not valid YAML" in out.stderr
    assert "cannot read" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_apply_on_an_empty_cluster(path):
    """Cluster-scoped objects an example names (PriorityClass, RuntimeClass) ship in the same file:
    a PriorityClass no cluster has makes every pod fail with FailedCreate."""
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    shipped = {(d["kind"], d["metadata"]["name"]) for d in docs}
    for doc in docs:
        if doc["kind"] != "AutoGLMDeployment":
            continue
        scheduling = doc["spec"].get("scheduling") or {}
        for field, kind in (("priorityClassName", "PriorityClass"), ("runtimeClassName", "RuntimeClass")):
            if field in scheduling:
                assert (kind, scheduling[field]) in shipped, f"{path.name} names {kind} {scheduling[field]}"
