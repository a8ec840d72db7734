"""Filled templates: the parse cache returns what a fresh parse returns, and fresh objects."""

from __future__ import annotations

import pytest
import yaml

from autoglm_operator import manifests
from autoglm_operator.manifests import _ParsedYaml
from autoglm_operator.render import render
from tests.conftest import REPO
from tests.operator.render_helpers import OPERATOR_VERSION

TEXT = "kind: Service\nmetadata:\n  name: a\n  labels: {x: \"1\"}\nspec:\n  ports: [{port: 8000}]\n"


def test_a_cached_parse_equals_a_fresh_one_and_is_a_new_object() -> None:
    parsed = _ParsedYaml(8)
    first = parsed.load(TEXT)
    second = parsed.load(TEXT)  # from the cache
    assert first == second == yaml.safe_load(TEXT)
    second["metadata"]["labels"]["x"] = "changed"  # callers add hashes and owners
    assert parsed.load(TEXT)["metadata"]["labels"]["x"] == "1"


def test_what_json_cannot_carry_is_parsed_every_time() -> None:
    parsed = _ParsedYaml(8)
    for text in ("ports:\n  80: http\n", "day: 2026-12-08\n"):  # a number as a key, a YAML date
        assert parsed.load(text) == yaml.safe_load(text)
        assert parsed.load(text) == yaml.safe_load(text)
        assert parsed.load(text) is not parsed.load(text)


def test_the_cache_is_bounded_and_keeps_the_recent() -> None:
    parsed = _ParsedYaml(2)
    for i in range(5):
        parsed.load(f"a: {i}\n")
    assert len(parsed._entries) == 2  # noqa: SLF001
    parsed.load("a: 3\n")  # a hit moves it to the end: "a: 4" is the oldest now
    parsed.load("a: 9\n")
    assert list(parsed._entries.values()) == ['{"a":3}', '{"a":9}']  # noqa: SLF001


def test_rendering_twice_gives_equal_objects(monkeypatch: pytest.MonkeyPatch) -> None:
    cr = yaml.safe_load((REPO / "examples" / "glm-4-9b-int8-l4.yaml").read_text())
    cr["metadata"]["uid"] = "00000000-0000-0000-0000-000000000001"
    cr["spec"].setdefault("memory", {})["skipFitCheck"] = True
    monkeypatch.setattr(manifests, "_parsed", _ParsedYaml(manifests.PARSED_CACHE))  # start cold
    cold = render(cr, operator_version=OPERATOR_VERSION).objects
    warm = render(cr, operator_version=OPERATOR_VERSION).objects
    assert cold == warm
    assert all(a is not b for a, b in zip(cold, warm, strict=True))
