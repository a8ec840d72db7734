"""The pydantic API models: wire names, defaults, and the same CEL rules the API server runs."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from autoglm_operator.api import AutoGLMDeploymentSpec, QuantizationMode


def spec(**kw):
    return AutoGLMDeploymentSpec.model_validate({"model": {"source": "hf://THUDM/glm-4-9b-chat"}, **kw})


def test_defaults():
    s = spec()
    assert s.quantization is QuantizationMode.AUTO
    assert s.memory.gpu_memory_percent == 90
    assert s.memory.host_memory_percent == 75
    assert s.resources.gpu.count == 1
    assert s.resources.gpu.resource_name == "nvidia.com/gpu"
    assert s.serving.port == 8000
    assert s.replicas is None
    assert not s.autoscaling_enabled


def test_camel_case_wire_names_round_trip():
    s = spec(memory={"gpuMemoryPercent": 80}, autoscaling={"minReplicas": 2, "maxReplicas": 3})
    dumped = s.model_dump(by_alias=True, exclude_none=True, mode="json")
    assert dumped["memory"]["gpuMemoryPercent"] == 80
    assert dumped["autoscaling"]["minReplicas"] == 2
    assert s.autoscaling_enabled
    assert AutoGLMDeploymentSpec.model_validate(dumped) == s


@pytest.mark.parametrize(
    ("source", "ok"),
    [
        ("hf://THUDM/glm-4-9b-chat", True),
        ("hf://zai-org/AutoGLM-Phone-9B", True),
        ("pvc://models/glm-4-9b", True),
        ("pvc://models", True),
        ("https://mirror.example.com/THUDM/glm-4-9b-chat", True),
        ("http://mirror.example.com/THUDM/glm", False),
        ("s3://bucket/model", False),
        ("hf://only-org", False),
        ("", False),
    ],
)
def test_source_schemes(source, ok):
    if ok:
        spec(model={"source": source})
    else:
        with pytest.raises(ValidationError, match="source"):
            spec(model={"source": source})


def test_unknown_fields_are_rejected():
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        spec(serving={"maxBatch": 4})


def test_cel_rules_run_in_pydantic_too():
    with pytest.raises(ValidationError, match=r"minReplicas: must be <= maxReplicas"):
        spec(autoscaling={"minReplicas": 3, "maxReplicas": 2})
    with pytest.raises(ValidationError, match="4-bit options"):
        spec(quantization="int8", quantizationOptions={"doubleQuant": True})
    spec(quantization="nf4", quantizationOptions={"doubleQuant": True})
    # replicas outside the bounds are fine when autoscaling is switched off
    spec(replicas=9, autoscaling={"enabled": False, "minReplicas": 1, "maxReplicas": 2})


def test_the_crs_quantization_modes_are_the_runtimes_plus_auto() -> None:
    """The CR's modes reach the runtime's AUTOGLM_QUANTIZATION as strings: a mode the runtime does
    not know would crash-loop its pods, one the CR lacks could never be asked for."""
    from autoglm_runtime.serving_settings import Quantization

    assert {m.value for m in QuantizationMode} == {m.value for m in Quantization} | {"auto"}
