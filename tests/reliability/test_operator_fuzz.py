"""Property-based CRs — schema-valid ones from the CRD schema (the render fuzz's own strategy) and
schema-invalid mutations of them — through ``validate_object``, ``render`` and the running operator.

Properties: nothing crashes; every invalid CR is rejected with a field path; every valid CR renders
to objects Kubernetes 1.33 accepts (strict: no unknown field) whose pods run restricted; the operator
ends every CR either with exactly the rendered children or Degraded naming the field.
"""

from __future__ import annotations

import collections
import random
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autoglm_operator.memory.errors import MemoryFitError
from autoglm_operator.render import SpecError, render
from autoglm_operator.validate import validate_object
from tests.operator.e2e.harness import Harness
from tests.operator.render_helpers import OPERATOR_VERSION
from tests.operator.render_helpers import validate_object as validate_k8s
from tests.operator.test_render_fuzz import crs

from . import summary
from .chaos import desired_of, wait_converged
from .mutations import KINDS, Mutation, mutated
from .podsecurity import restricted_problems
from .sampling import sample


def fuzz(n: int) -> settings:
    return settings(max_examples=n, deadline=None, database=None, suppress_health_check=list(HealthCheck))


def _render_checked(obj: dict[str, Any], stats: collections.Counter[str]) -> None:
    """render() gives valid, restricted manifests or a SpecError/MemoryFitError naming a field."""
    try:
        rendered = render(obj, operator_version=OPERATOR_VERSION)
    except (SpecError, MemoryFitError) as e:
        error: Exception | None = e
    else:
        error = None
    if error is not None:
        path = getattr(error, "field_path", "") or ""
        assert path.startswith(("spec", "metadata")), f"render error without a field path: {error!r}"
        stats["render: SpecError with path"] += 1
        return
    for o in rendered.objects:
        validate_k8s(o)
        stats["objects validated (k8s 1.33 strict)"] += 1
        if o["kind"] == "Deployment":
            assert restricted_problems(o) == [], restricted_problems(o)
            stats["deployments restricted"] += 1
    stats["render: ok"] += 1


def _run(check: Any, stats: collections.Counter[str]) -> int:
    try:
        check()
    except Exception:
        stats["failures"] += 1
        raise
    return stats["failures"]


def test_valid_crs_validate_and_render() -> None:
    n = summary.scale(25, 1000)
    stats: collections.Counter[str] = collections.Counter()

    @fuzz(n)
    @given(crs())
    def check(obj: dict[str, Any]) -> None:
        stats["cases"] += 1
        problems = validate_object(obj)
        assert problems == [], f"the operator's parser accepts what validate rejects: {problems}"
        _render_checked(obj, stats)

    try:
        _run(check, stats)
    finally:
        summary.record(
            "operator fuzz",
            "schema-valid CRs: validate + render + k8s schema",
            cases=stats["cases"],
            failures=stats["failures"],
            **{
                k.split(":")[-1].strip().replace(" ", "_"): v
                for k, v in stats.items()
                if k not in ("cases", "failures")
            },
        )


@pytest.mark.parametrize("kind", KINDS)
def test_invalid_crs_are_rejected_with_a_field_path(kind: str) -> None:
    n = summary.scale(8, 300)
    stats: collections.Counter[str] = collections.Counter()

    @fuzz(n)
    @given(mutated(crs(), kind))
    def check(case: tuple[dict[str, Any], Mutation]) -> None:
        obj, mutation = case
        stats["cases"] += 1
        stats[f"kind {mutation.kind}"] += 1
        problems = validate_object(obj)
        for p in problems:
            assert p.path.startswith(("spec", "metadata")), f"a problem without a field path: {p}"
            assert p.message
        if mutation.must_fail:
            assert problems, f"{mutation} was accepted"
            assert any(
                p.path.startswith(mutation.path) or mutation.path.startswith(p.path) for p in problems
            ), f"{mutation}: no problem names the field: {[str(p) for p in problems]}"
        stats["rejected" if problems else "borderline accepted"] += 1
        # What the operator does with it (the emulator, unlike an API server, lets such CRs through).
        _render_checked(obj, stats)

    try:
        _run(check, stats)
    finally:
        summary.record(
            "operator fuzz",
            f"mutation {kind}: rejected with a field path",
            cases=stats["cases"],
            failures=stats["failures"],
            rejected=stats["rejected"],
            accepted_legal=stats["borderline accepted"],
            rendered=stats["render: ok"],
            render_errors=stats["render: SpecError with path"],
        )


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)


def test_garbage_never_crashes() -> None:
    """Any JSON as the object, or as its spec: problems or SpecError, never an exception."""
    n = summary.scale(40, 2000)
    stats: collections.Counter[str] = collections.Counter()

    @fuzz(n)
    @given(_JSON, st.booleans())
    def check(junk: Any, as_spec: bool) -> None:
        stats["cases"] += 1
        obj = (
            {
                "apiVersion": "autoglm.io/v1alpha1",
                "kind": "AutoGLMDeployment",
                "metadata": {"name": "junk", "namespace": "ns", "uid": "u"},
                "spec": junk,
            }
            if as_spec
            else junk
        )
        assert validate_object(obj), "garbage was accepted"
        if isinstance(obj, dict):
            try:
                render(obj, operator_version=OPERATOR_VERSION)
            except (SpecError, MemoryFitError):
                stats["render rejected"] += 1

    try:
        _run(check, stats)
    finally:
        summary.record(
            "operator fuzz",
            "arbitrary JSON as CR / spec",
            cases=stats["cases"],
            failures=stats["failures"],
            render_rejected=stats["render rejected"],
        )


async def test_fuzzed_crs_through_the_running_operator(chaos: Harness) -> None:
    """Valid and mutated CRs in one operator run: each ends with exactly render()'s children, or
    Degraded naming the field; the operator thread never dies."""
    n = summary.scale(12, 60)
    valid = sample(crs(), n // 2, rng_seed=7)
    invalid = [obj for obj, _ in sample(mutated(crs()), n - len(valid), rng_seed=8)]
    rng = random.Random(9)
    bodies = valid + invalid
    rng.shuffle(bodies)
    await chaos.start_operator(resync_seconds=30)
    outcomes: collections.Counter[str] = collections.Counter()
    for i, obj in enumerate(bodies):
        await chaos.create_cr(f"fz-{i}", obj["spec"])
    diff = await wait_converged(chaos, timeout=summary.scale(60, 180))
    alive = chaos._thread is not None and chaos._thread.is_alive()
    for cr in chaos.emulator.objects_of("autoglmdeployments", chaos.namespace):
        _, error = desired_of(cr)
        outcomes["degraded with path" if error else "rendered"] += 1
    summary.record(
        "operator fuzz",
        "fuzzed CRs through the running operator (e2e)",
        cases=len(bodies),
        failures=len(diff) + (not alive),
        **outcomes,
    )
    assert alive, "the operator thread died"
    assert diff == [], diff
