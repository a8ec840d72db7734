"""Schema fuzzing of the runtime's HTTP API from its own OpenAPI document (schemathesis), positive
and negative cases: no 5xx except the designed 503s, every 4xx in the OpenAI error shape."""

from __future__ import annotations

import collections
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable

from . import summary
from .runtime_app import make_app

schemathesis = pytest.importorskip("schemathesis")

pytestmark = pytest.mark.slow


def _check_response(response: Any, stats: collections.Counter[str]) -> None:
    status = response.status_code
    stats[f"{status // 100}xx"] += 1
    assert status < 500 or status == 503, f"{status}: {response.text[:300]}"
    if status >= 400:
        body = response.json()
        assert set(body) == {"error"}, body
        assert set(body["error"]) == {"message", "type", "param", "code"}, body
        assert body["error"]["message"]


def test_openapi_schema_fuzz() -> None:
    from schemathesis import GenerationMode

    app, engine = make_app(max_new_tokens=8, max_input_tokens=256)
    try:
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
        per_op = summary.scale(15, 200)
        stats: collections.Counter[str] = collections.Counter()
        operations = [r.ok() for r in schema.get_all_operations()]
        for op in operations:
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

                @settings(
                    max_examples=per_op, deadline=None, database=None, suppress_health_check=list(HealthCheck)
                )
                @given(case=op.as_strategy(generation_mode=mode))
                def check(case: Any) -> None:
                    stats["cases"] += 1
                    _check_response(case.call(), stats)

                try:
                    check()
                except Unsatisfiable:  # nothing to make invalid (e.g. GET /healthz has no input)
                    stats["operations without negative cases"] += 1
                except Exception:
                    stats["failures"] += 1
                    raise
    finally:
        engine.stop()
        summary.record(
            "runtime fuzz",
            "OpenAPI schema fuzz (schemathesis, +/- cases)",
            cases=stats["cases"],
            failures=stats["failures"],
            operations=len(operations),
            no_negative=stats["operations without negative cases"],
            **{k: v for k, v in stats.items() if k.endswith("xx")},
        )
