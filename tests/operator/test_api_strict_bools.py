"""Booleans in the CR are JSON booleans only, as the CRD's ``type: boolean`` says: the operator must not
turn ``"yes"``/``"true"``/``1`` into ``true`` where the API server would refuse the object."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from autoglm_operator.spec_errors import SpecError, parse_spec

BASE: dict[str, Any] = {
    "apiVersion": "autoglm.io/v1alpha1",
    "kind": "AutoGLMDeployment",
    "metadata": {"name": "m", "namespace": "ns"},
    "spec": {"model": {"source": "hf://THUDM/glm-4-9b-chat"}},
}

BOOL_FIELDS = [
    ("memory", "skipFitCheck"),
    ("model", "trustRemoteCode"),
    ("autoscaling", "enabled"),
    ("podDisruptionBudget", "enabled"),
    ("monitoring", "serviceMonitor"),
]


def with_value(block: str, field: str, value: Any) -> dict[str, Any]:
    cr = copy.deepcopy(BASE)
    cr["spec"].setdefault(block, {})[field] = value
    return cr


@pytest.mark.parametrize(("block", "field"), BOOL_FIELDS)
@pytest.mark.parametrize("value", ["yes", "true", "1", 1, 0, "off"])
def test_non_boolean_values_are_rejected_with_the_field_path(block: str, field: str, value: Any) -> None:
    with pytest.raises(SpecError) as err:
        parse_spec(with_value(block, field, value))
    assert err.value.field_path == f"spec.{block}.{field}"
    assert "boolean" in err.value.message


@pytest.mark.parametrize(("block", "field"), BOOL_FIELDS)
@pytest.mark.parametrize("value", [True, False])
def test_json_booleans_are_accepted(block: str, field: str, value: bool) -> None:
    spec = parse_spec(with_value(block, field, value))
    dumped = spec.model_dump(by_alias=True)
    assert dumped[block][field] is value
