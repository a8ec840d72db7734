"""Templates in, YAML out: the jinja2 templates under ``templates/`` filled with JSON-escaped values,
and the deterministic YAML/JSON the objects are printed as."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from functools import cache
from typing import Any

import jinja2
import yaml

# A character outside the BMP comes out of json.dumps as a UTF-16 surrogate pair, which YAML does not
# accept; YAML's own escape for it is \UXXXXXXXX. (Only at an even run of backslashes: an escape.)
_SURROGATE_PAIR = re.compile(r"(?<!\\)((?:\\\\)*)\\u(d[89ab][0-9a-f]{2})\\u(d[c-f][0-9a-f]{2})")


def _yaml_escape_pair(m: re.Match[str]) -> str:
    high, low = int(m.group(2), 16), int(m.group(3), 16)
    return f"{m.group(1)}\\U{0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00):08x}"


def _to_json(value: Any) -> str:
    # JSON is YAML flow syntax: user strings can never break the document structure. ASCII only,
    # so no character YAML forbids (C1 controls, BOM) can slip in raw.
    text = json.dumps(value, sort_keys=True, ensure_ascii=True)
    return _SURROGATE_PAIR.sub(_yaml_escape_pair, text) if "\\ud" in text else text


@cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("autoglm_operator", "templates"),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # YAML, not HTML; values go through the json filter
        keep_trailing_newline=True,
    )
    env.filters["j"] = _to_json
    return env


@cache
def _template(name: str) -> jinja2.Template:
    return _environment().get_template(name)


_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_Dumper: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def fill(name: str, context: Mapping[str, Any]) -> dict[str, Any]:
    obj = yaml.load(_template(name).render(context), Loader=_Loader)  # noqa: S506 - safe loader
    if not isinstance(obj, dict):
        raise TypeError(f"template {name} did not produce an object")
    return obj


def dump_yaml(objects: list[dict[str, Any]]) -> str:
    """Multi-document YAML, keys sorted: the same objects always give the same bytes."""
    return "".join(
        "---\n" + yaml.dump(o, Dumper=_Dumper, sort_keys=True, default_flow_style=False, width=120)
        for o in objects
    )


def dump_json(objects: list[dict[str, Any]]) -> str:
    """A ``v1/List`` of the objects, keys sorted."""
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}, sort_keys=True, indent=2) + "\n"
