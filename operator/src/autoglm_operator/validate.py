"""Offline validation of AutoGLMDeployment objects, as strict as ``kubectl apply`` against the CRD.

Three layers, in the order the API server and the operator apply them:

1. the CRD's OpenAPI schema (types, enums, bounds, patterns) with unknown fields rejected, like
   kubectl's strict field validation;
2. the CRD's ``x-kubernetes-validations`` CEL rules, evaluated after schema defaulting;
3. the pydantic model the operator parses the spec with.

Every problem is reported as ``<field path>: <message>``.
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import jsonschema

from autoglm_operator import api
from autoglm_operator.cel import evaluate_rules
from autoglm_operator.crd import root_schema
from autoglm_operator.spec_errors import SpecError, check_metadata, parse_spec


@dataclass(frozen=True)
class Problem:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


def _strict(node: Any) -> Any:
    """Copy of the schema where objects reject unknown fields (unless they preserve them)."""
    if isinstance(node, list):
        return [_strict(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _strict(v) for k, v in node.items()}
    if "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


@lru_cache(maxsize=1)
def _schemas() -> tuple[dict[str, Any], jsonschema.protocols.Validator]:
    schema = root_schema()
    strict = _strict(schema)
    strict["properties"]["metadata"] = {"type": "object"}
    strict["properties"].pop(
        "status", None
    )  # status is the operator's; users' files may carry anything there
    return schema, jsonschema.Draft202012Validator(strict)


def _path(parts: Iterable[Any]) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _schema_problems(obj: dict[str, Any]) -> list[Problem]:
    _, validator = _schemas()
    problems = []
    for err in sorted(validator.iter_errors(obj), key=lambda e: (list(map(str, e.absolute_path)), e.message)):
        path = _path(err.absolute_path)
        if err.validator == "additionalProperties":
            allowed = list(err.schema.get("properties", {}))
            for name in sorted(set(err.instance) - set(allowed)):
                hint = difflib.get_close_matches(name, allowed, n=1)
                suggestion = f" (did you mean {hint[0]!r}?)" if hint else f" (allowed: {', '.join(allowed)})"
                problems.append(Problem(_path([*err.absolute_path, name]), f"unknown field{suggestion}"))
            continue
        if err.validator == "pattern" and path == "spec.model.source":
            message = (
                f"must be hf://org/name, pvc://claim/path or an https:// mirror URL (got {err.instance!r})"
            )
        elif err.validator == "required":
            message = err.message.replace("is a required property", "is required")
        elif err.validator == "enum":
            message = f"must be one of {', '.join(map(str, err.validator_value))} (got {err.instance!r})"
        else:
            message = err.message
        problems.append(Problem(path, message))
    return problems


def apply_defaults(schema: dict[str, Any], obj: Any) -> Any:
    """Structural defaulting as the API server does it: defaults fill absent fields of present objects."""
    if isinstance(obj, dict) and "properties" in schema:
        for name, sub in schema["properties"].items():
            if name not in obj and "default" in sub:
                obj[name] = copy.deepcopy(sub["default"])
            if name in obj:
                obj[name] = apply_defaults(sub, obj[name])
    elif isinstance(obj, list) and "items" in schema:
        return [apply_defaults(schema["items"], item) for item in obj]
    return obj


def _cel_problems(schema: dict[str, Any], obj: Any, path: list[Any]) -> list[Problem]:
    problems: list[Problem] = []
    rules = schema.get("x-kubernetes-validations")
    if rules and obj is not None:
        for field_path, message in evaluate_rules(rules, obj):
            problems.append(Problem(_path([*path, *[p for p in field_path.split(".") if p]]), message))
    if isinstance(obj, dict):
        for name, sub in schema.get("properties", {}).items():
            if name in obj:
                problems += _cel_problems(sub, obj[name], [*path, name])
    elif isinstance(obj, list) and "items" in schema:
        for i, item in enumerate(obj):
            problems += _cel_problems(schema["items"], item, [*path, i])
    return problems


def _metadata_problems(obj: dict[str, Any]) -> list[Problem]:
    try:
        check_metadata({"metadata": obj.get("metadata")})
    except SpecError as exc:
        return [Problem(exc.field_path, exc.message)]
    return []


def validate_object(obj: Any) -> list[Problem]:
    """All problems of one AutoGLMDeployment object (empty list = valid)."""
    if not isinstance(obj, dict):
        return [Problem("", f"expected a mapping (an AutoGLMDeployment object), got {type(obj).__name__}")]
    problems = _metadata_problems(obj)
    if obj.get("apiVersion") != api.API_VERSION or obj.get("kind") != api.KIND:
        problems.append(
            Problem(
                "",
                f"apiVersion/kind must be {api.API_VERSION}/{api.KIND} (got {obj.get('apiVersion')}/{obj.get('kind')})",
            )
        )
        return problems
    schema_problems = _schema_problems(obj)
    if schema_problems:
        return problems + schema_problems
    schema, _ = _schemas()
    defaulted = apply_defaults(schema, copy.deepcopy(obj))
    cel = _cel_problems(schema["properties"]["spec"], defaulted.get("spec"), ["spec"])
    if cel:
        return problems + cel
    try:
        parse_spec(obj)
    except SpecError as exc:
        problems += [Problem(path, message) for path, message in exc.problems]
    return problems
