"""Evaluate the CRD's ``x-kubernetes-validations`` CEL rules offline (cel-python).

The API server runs these rules when a CR is written; the operator and ``autoglm-operator
validate`` run the very same expressions so that a CR rejected by one is rejected by the other.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import celpy


@lru_cache(maxsize=256)
def _program(rule: str) -> Any:
    env = celpy.Environment()
    return env.program(env.compile(rule))


def evaluate_rules(rules: list[dict[str, Any]], obj: dict[str, Any]) -> list[tuple[str, str]]:
    """Return ``(fieldPath, message)`` for every rule that does not hold on ``obj``.

    A rule whose evaluation errors (e.g. a field missing that the rule assumes) counts as failed,
    as it does in the API server.
    """
    failures: list[tuple[str, str]] = []
    activation = {"self": celpy.json_to_cel(obj)}
    for r in rules:
        try:
            ok = bool(_program(r["rule"]).evaluate(activation))
        except Exception as exc:  # celpy raises its own error types for missing keys etc.
            ok = False
            msg = f"{r['message']} (rule could not be evaluated: {exc})"
        else:
            msg = r["message"]
            if not ok and r.get("messageExpression"):
                try:
                    msg = str(_program(r["messageExpression"]).evaluate(activation))
                except Exception:  # the API server also falls back to `message`
                    msg = r["message"]
        if not ok:
            failures.append((r.get("fieldPath", "").lstrip("."), msg))
    return failures
