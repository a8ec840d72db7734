"""Turn a CR into the typed spec, or a :class:`SpecError` that names the field and says what to do.

Used by the reconcile handler (the message goes to the Degraded condition and an Event), by
``render`` and by the CLI. Paths use the CR's own camelCase names (``spec.autoscaling.minReplicas``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import pydantic

from autoglm_operator import api
from autoglm_operator.api import CEL_CHECKS, AutoGLMDeploymentSpec

_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


class SpecError(ValueError):
    """A CR the operator cannot act on: ``field_path`` (e.g. ``spec.autoscaling.minReplicas``) and
    what to do about it. ``problems`` lists every ``(field_path, message)`` found, first one first."""

    def __init__(self, field_path: str, message: str, problems: list[tuple[str, str]] | None = None) -> None:
        self.field_path = field_path
        self.message = message
        self.problems = problems or [(field_path, message)]
        text = f"{field_path}: {message}"
        if len(self.problems) > 1:
            text += "".join(f"\n{p}: {m}" for p, m in self.problems[1:])
        super().__init__(text)


_CEL_PREFIX = re.compile(r"^([A-Za-z][A-Za-z0-9]*(?:\.[A-Za-z][A-Za-z0-9]*)*): (.*)$", re.DOTALL)
_FRIENDLY_PATTERNS = {
    api.SOURCE_PATTERN: "must be hf://org/name, pvc://claim/path or https://mirror.host/org/name",
    api.QUANTITY_PATTERN: "must be a Kubernetes quantity such as 500m, 4, 16Gi or 40G",
    api.REVISION_PATTERN: "must be a revision: a commit hash, tag or branch name (letters, digits, '.', '_', '-', '/')",
    api.DNS_LABEL_PATTERN: "must be a lowercase name of letters, digits and '-' (a Kubernetes object name)",
}


def _loc_path(loc: tuple[int | str, ...]) -> str:
    path = "spec"
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def _problem(err: Mapping[str, Any]) -> list[tuple[str, str]]:
    path = _loc_path(tuple(err["loc"]))
    kind = err["type"]
    ctx = err.get("ctx") or {}
    if kind == "value_error":  # CEL rules: "field: message; field: message"
        text = str(err["msg"]).removeprefix("Value error, ")
        out = []
        for part in text.split("; "):
            if m := _CEL_PREFIX.match(part):
                out.append((f"{path}.{m.group(1)}", m.group(2)))
            else:
                out.append((path, part))
        return out
    if kind == "extra_forbidden":
        return [(path, "unknown field; remove it (check the spelling against `kubectl explain agd.spec`)")]
    if kind == "missing":
        return [(path, "is required")]
    if kind == "string_pattern_mismatch":
        pattern = ctx.get("pattern", "")
        return [(path, _FRIENDLY_PATTERNS.get(pattern, f"must match {pattern}"))]
    if kind == "enum":
        return [(path, f"must be one of {ctx.get('expected', '')}")]
    return [(path, f"{err['msg']} (got {err.get('input')!r})")]


def parse_spec(cr: Mapping[str, Any], *, cel: bool = True) -> AutoGLMDeploymentSpec:
    """The CR's ``spec`` as the typed model, or :class:`SpecError` naming the first bad field.

    ``cel=False`` skips the ``x-kubernetes-validations`` rules (the costly part, ~90% of a parse):
    for a generation of the CR that already passed them."""
    spec = cr.get("spec") if isinstance(cr, Mapping) else None
    if not isinstance(spec, Mapping):
        raise SpecError(
            "spec", "is missing or not an object; an AutoGLMDeployment needs at least spec.model.source"
        )
    token = CEL_CHECKS.set(cel)
    try:
        return AutoGLMDeploymentSpec.model_validate(dict(spec))
    except pydantic.ValidationError as exc:
        problems = validation_problems(exc)
        raise SpecError(*problems[0], problems=problems) from None
    finally:
        CEL_CHECKS.reset(token)


def validation_problems(exc: pydantic.ValidationError) -> list[tuple[str, str]]:
    """``(field path, message)`` for every error of a spec validation, with camelCase paths."""
    return [p for err in exc.errors() for p in _problem(err)]


def check_metadata(cr: Mapping[str, Any]) -> tuple[str, str | None]:
    kind, api_version = cr.get("kind"), cr.get("apiVersion")
    if kind is not None and kind != api.KIND:
        raise SpecError("kind", f"is {kind!r}; expected {api.KIND}")
    if api_version is not None and api_version != api.API_VERSION:
        raise SpecError("apiVersion", f"is {api_version!r}; expected {api.API_VERSION}")
    meta = cr.get("metadata") or {}
    name = meta.get("name") if isinstance(meta, Mapping) else None
    if not isinstance(name, str) or not name:
        raise SpecError("metadata.name", "is required: the child objects are named after it")
    # The Service (DNS-1035 label) and the instance label (<= 63 chars) are named after the CR.
    if len(name) > 63 or not _DNS1035.match(name):
        raise SpecError(
            "metadata.name",
            f"{name!r} must be at most 63 lowercase letters, digits or '-', starting with a letter "
            "(it names the Service)",
        )
    namespace = meta.get("namespace")
    return name, namespace if isinstance(namespace, str) and namespace else None
