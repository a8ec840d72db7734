"""The render memo (memo.py): a reconcile of an unchanged CR gets the same desired objects without
rendering, each input of the render changes the key, the memo is bounded, and a change of the spec
still reaches the cluster."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from autoglm_operator import reconcile as reconcile_mod
from autoglm_operator import render as render_mod
from autoglm_operator.cache import Cache
from autoglm_operator.memo import RenderMemo, render_key
from autoglm_operator.memory.types import GpuInfo
from autoglm_operator.reconcile import Options, _desired, reconcile
from tests.operator.test_reconcile import CR, LOG, FakeKube, _with_status


def _spec(cr: dict[str, Any]) -> Any:
    return render_mod.parse_spec(cr, cel=False)


@pytest.fixture
def renders(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the CRs rendered."""
    seen: list[str] = []
    real = render_mod.render

    def counting(cr: Any, **kwargs: Any) -> Any:
        seen.append(cr["metadata"]["name"])
        return real(cr, **kwargs)

    monkeypatch.setattr(render_mod, "render", counting)
    return seen


def test_a_hit_equals_a_fresh_render_and_gives_new_objects(renders: list[str]) -> None:
    memo, options = RenderMemo(), Options()
    fresh_rendered, fresh = _desired(CR, _spec(CR), None, options, None)
    _desired(CR, _spec(CR), None, options, memo)
    rendered, wanted = _desired(CR, _spec(CR), None, options, memo)
    assert renders == ["chat", "chat"], "the third call came from the memo"
    assert wanted == fresh
    assert rendered.objects == wanted
    assert (rendered.plan, rendered.settings_checksum) == (
        fresh_rendered.plan,
        fresh_rendered.settings_checksum,
    )
    wanted[0]["metadata"]["name"] = "changed"  # callers may change what they get
    assert _desired(CR, _spec(CR), None, options, memo)[1] == fresh


@pytest.mark.parametrize("change", ["spec", "name", "uid", "apiVersion", "gpu", "prometheus"])
def test_each_input_of_the_render_changes_the_key(change: str) -> None:
    cr, gpu, prometheus = copy.deepcopy(CR), None, "http://prometheus:9090"
    before = render_key(cr, gpu, prometheus)
    if change == "spec":
        cr["spec"]["quantization"] = "nf4"
    elif change in ("name", "uid"):
        cr["metadata"][change] = "other"
    elif change == "apiVersion":
        cr["apiVersion"] = "autoglm.io/v1"
    elif change == "gpu":
        gpu = GpuInfo(name="NVIDIA-L4", memory_bytes=24 * 2**30)
    else:
        prometheus = "http://elsewhere:9090"
    assert render_key(cr, gpu, prometheus) != before
    status_only = _with_status(CR, {"observedGeneration": 1})
    assert render_key(status_only, None, "http://prometheus:9090") == render_key(
        CR, None, "http://prometheus:9090"
    )


def test_the_memo_is_bounded_and_forgets_deleted_crs() -> None:
    memo = RenderMemo(size=2)
    for i in range(4):
        cr = copy.deepcopy(CR)
        cr["metadata"]["uid"] = f"u{i}"
        _desired(cr, _spec(cr), None, Options(), memo)
    assert len(memo) == 2
    memo.forget("u3")
    assert len(memo) == 1


def test_network_plans_are_never_remembered(monkeypatch: pytest.MonkeyPatch) -> None:
    """With --allow-network the plan reads the hub, which can change under the same spec."""
    monkeypatch.setattr(reconcile_mod, "_plan", lambda spec, gpu: render_mod._plan(spec, gpu))  # noqa: SLF001
    memo = RenderMemo()
    _desired(CR, _spec(CR), None, Options(allow_network=True), memo)
    assert len(memo) == 0


def test_reconciles_of_an_unchanged_cr_render_once_and_a_spec_change_still_applies(
    renders: list[str],
) -> None:
    kube, cache, memo = FakeKube(), Cache(), RenderMemo()
    first = reconcile(CR, kube, LOG, cache=cache, memo=memo)  # type: ignore[arg-type]
    for _ in range(3):  # a child's status changes, a resync
        again = reconcile(_with_status(CR, first.status), kube, LOG, cache=cache, memo=memo)  # type: ignore[arg-type]
        assert again.result == "unchanged"
    assert renders == ["chat"]
    kube.writes.clear()
    changed = copy.deepcopy(_with_status(CR, first.status))
    changed["metadata"]["generation"] = 2
    changed["spec"]["quantization"] = "nf4"
    outcome = reconcile(changed, kube, LOG, cache=cache, memo=memo)  # type: ignore[arg-type]
    assert outcome.result == "applied"
    assert renders == ["chat", "chat"]
    assert ("apply", "ConfigMap") in kube.writes  # the runtime's quantization setting
