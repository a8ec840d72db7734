"""The API's shared parts: group/version/kind, the patterns and bounds fields reuse, CEL rules and
:class:`ApiModel`, the base of every model of the CR."""

from __future__ import annotations

from contextvars import ContextVar
from typing import Annotated, Any

from pydantic import AliasGenerator, BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

GROUP = "autoglm.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "AutoGLMDeployment"
PLURAL = "autoglmdeployments"
SINGULAR = "autoglmdeployment"
SHORT_NAMES = ["agd"]
CATEGORIES = ["autoglm"]

REVISION_PATTERN = r"^[A-Za-z0-9._][A-Za-z0-9._/-]*$"
QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti|P|Pi|E|Ei)?$"
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"

# Bounds the API server's CEL cost estimator needs (every string, list and map has one; a test checks).
QUANTITY_MAX = 64  # resource.Quantity strings: "40Gi", "1500m"
NAME_MAX = 253  # DNS subdomain names (objects, PriorityClass, RuntimeClass, StorageClass)
QUALIFIED_NAME_MAX = 317  # prefix (253) + "/" + name (63): label keys, taint keys, extended resources
LABEL_VALUE_MAX = 63
LabelValue = Annotated[str, Field(max_length=LABEL_VALUE_MAX)]
ObjectName = Annotated[str, Field(max_length=NAME_MAX, pattern=DNS_LABEL_PATTERN)]
SOURCE_PATTERN = (
    r"^(hf://[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*"
    r"|pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(/[^\s]*)?"
    r"|https://[^\s/]+(/[^\s]*)?)$"
)


class CelRule(BaseModel):
    """One ``x-kubernetes-validations`` entry."""

    rule: str
    message: str
    message_expression: str | None = None  # CEL string expression; wins over message when it evaluates
    field_path: str | None = None


def cel_rules(*rules: CelRule) -> dict[str, Any]:
    """Model config extra that attaches CEL rules to a model's schema (read by crd.py and _check_cel)."""
    return {
        "x-kubernetes-validations": [
            {
                "rule": r.rule,
                "message": r.message,
                **({"messageExpression": r.message_expression} if r.message_expression else {}),
                **({"fieldPath": r.field_path} if r.field_path else {}),
            }
            for r in rules
        ]
    }


# Whether model validation runs the CEL rules (``spec_errors.parse_spec(cel=False)`` turns them off;
# a context variable, so that nested models built from defaults follow it too).
CEL_CHECKS: ContextVar[bool] = ContextVar("CEL_CHECKS", default=True)


class ApiModel(BaseModel):
    """Base of every API model: camelCase on the wire, unknown fields rejected, CEL rules enforced."""

    model_config = ConfigDict(
        alias_generator=AliasGenerator(validation_alias=to_camel, serialization_alias=to_camel),
        populate_by_name=True,
        extra="forbid",
        use_enum_values=False,
    )

    @model_validator(mode="after")
    def _check_cel(self) -> ApiModel:
        if not CEL_CHECKS.get():
            return self  # this generation passed them already (the API server checks them too)
        extra = self.model_config.get("json_schema_extra")
        rules = extra.get("x-kubernetes-validations") if isinstance(extra, dict) else None
        if isinstance(rules, list):
            from autoglm_operator.cel import evaluate_rules

            obj = self.model_dump(by_alias=True, exclude_none=True, mode="json")
            failures = evaluate_rules(rules, obj)  # type: ignore[arg-type]
            if failures:
                raise ValueError("; ".join(f"{path}: {msg}" if path else msg for path, msg in failures))
        return self
