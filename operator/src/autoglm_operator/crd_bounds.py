"""What the API server's CEL cost estimator needs from the CRD schema, checked offline.

A real API server estimates, when the CRD is written, the worst-case cost of every
``x-kubernetes-validations`` rule and ``messageExpression``, from the sizes the schema allows. A
string without ``maxLength``, a list without ``maxItems`` or a map without ``maxProperties`` is
assumed to be as large as a whole request (~3 MiB), and a rule over it (or over anything nested in
it, as cost multiplies with every unbounded list above) can exceed the per-rule or per-CRD budget:
the CRD is then refused with "estimated rule cost exceeds budget". The emulator the tests run
against has no estimator, so this module states the rules as checks:

- :func:`unbounded_nodes`: every string, list and map in the schema has a bound;
- :func:`unboundable_constructs`: every rule and messageExpression uses only constructs whose result
  size the estimator can bound from the schema (see ``docs/operator.md``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from celpy.celparser import CELParser
from lark import Token, Tree

# Opaque by design: `x-kubernetes-preserve-unknown-fields` nodes hold what another API defines
# (core/v1 Affinity), and `metadata` is validated by the API server itself. No rule may look into them.
OPAQUE = ("x-kubernetes-preserve-unknown-fields",)

# Conversions and formatting whose result size the estimator cannot derive from the input: the
# estimate is the largest possible string, and concatenating it (e.g. in a messageExpression
# `'... (' + string(self.max) + ')'`) is what got the CRD refused by a v1.36 API server.
UNBOUNDED_FUNCTIONS = {"string", "bytes", "format", "join", "replace", "split", "base64.encode", "quantity"}
MACROS = {"all", "exists", "exists_one", "map", "filter"}
NUMERIC_FUNCTIONS = {"size", "int", "uint", "double"}
STRING_FUNCTIONS = {
    "matches",
    "startsWith",
    "endsWith",
    "contains",
    "find",
    "findAll",
    "lowerAscii",
    "upperAscii",
}


def walk(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node with its path (``.a.b``, ``[]`` for items, ``{}`` for map values)."""
    yield path, node
    for name, sub in node.get("properties", {}).items():
        yield from walk(sub, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}{{}}")


def _opaque(node: dict[str, Any]) -> bool:
    return any(node.get(flag) for flag in OPAQUE)


def unbounded_nodes(schema: dict[str, Any], exempt: tuple[str, ...] = (".metadata",)) -> list[str]:
    """Paths of strings without maxLength, lists without maxItems and maps without maxProperties."""
    problems = []
    for path, node in walk(schema):
        if path in exempt or _opaque(node):
            continue
        kind = node.get("type")
        if kind == "string" and "maxLength" not in node and "enum" not in node:
            problems.append(f"{path or '<root>'}: string without maxLength")
        elif kind == "array" and "maxItems" not in node:
            problems.append(f"{path or '<root>'}: list without maxItems")
        elif kind == "object" and "additionalProperties" in node and "maxProperties" not in node:
            problems.append(f"{path or '<root>'}: map without maxProperties")
    return problems


def _child(node: dict[str, Any] | None, name: str) -> dict[str, Any] | None:
    if node is None:
        return None
    if name in node.get("properties", {}):
        return node["properties"][name]
    if isinstance(node.get("additionalProperties"), dict):
        return node["additionalProperties"]
    return None


def _innermost(tree: Any, kind: str) -> Any:
    """Descend the parser's single-child wrappers (expr → … → primary) down to a ``kind`` node."""
    while isinstance(tree, Tree) and len(tree.children) == 1 and tree.data != kind:
        tree = tree.children[0]
    return tree


def _is(tree: Any, kind: str) -> bool:
    return isinstance(tree, Tree) and tree.data == kind


def _args(tree: Tree, index: int) -> list[Any]:
    """The argument expressions of a call node (its ``exprlist`` child at ``index``, if any)."""
    return (
        tree.children[index].children
        if len(tree.children) > index and tree.children[index] is not None
        else []
    )


class _Checker:
    """Walks one parsed expression; ``self`` is the schema node the rule is attached to."""

    def __init__(self, self_schema: dict[str, Any], where: str) -> None:
        self.self_schema = self_schema
        self.where = where
        self.problems: list[str] = []
        self.bound_vars: dict[str, dict[str, Any] | None] = {}

    def fail(self, text: str) -> None:
        self.problems.append(f"{self.where}: {text}")

    # -- resolving `self.a.b` to a schema node --------------------------------------------------

    def schema_of(self, tree: Any) -> tuple[str, dict[str, Any] | None] | None:
        """(dotted path, schema node) when ``tree`` is a field reference; None otherwise."""
        if not isinstance(tree, Tree):
            return None
        if (
            tree.data
            in (
                "member",
                "primary",
                "unary",
                "multiplication",
                "addition",
                "relation",
                "conditionaland",
                "conditionalor",
                "expr",
            )
            and len(tree.children) == 1
        ):
            return self.schema_of(tree.children[0])
        if tree.data == "ident":
            name = str(tree.children[0])
            if name in ("self", "oldSelf"):
                return name, self.self_schema
            if name in self.bound_vars:
                return name, self.bound_vars[name]
            return None
        if tree.data == "member_dot":
            base = self.schema_of(tree.children[0])
            if base is None:
                return None
            path, node = base
            name = str(tree.children[1])
            if node is not None and _opaque(node):
                self.fail(f"{path}.{name} reads into a preserve-unknown-fields node (no size known)")
                return f"{path}.{name}", None
            return f"{path}.{name}", _child(node, name)
        return None

    # -- the walk -------------------------------------------------------------------------------

    def check(self, tree: Any) -> None:
        if isinstance(tree, Token):
            return
        if tree.data == "member_dot":
            self.schema_of(tree)  # reports reads into opaque nodes
        if tree.data == "ident_arg":  # f(args)
            name = str(tree.children[0])
            args = _args(tree, 1)
            if name in UNBOUNDED_FUNCTIONS:
                self.fail(f"{name}() has no size bound the API server can estimate; use a static message")
            if name == "size" and args:
                self._needs_bound(args[0], "size()")
            for arg in args:
                self.check(arg)
            return
        if tree.data == "member_dot_arg":  # target.f(args)
            target, name = tree.children[0], str(tree.children[1])
            args = _args(tree, 2)
            if name in UNBOUNDED_FUNCTIONS:
                self.fail(f".{name}() has no size bound the API server can estimate; use a static message")
            self.check(target)
            if name in MACROS and args:
                found = self._needs_bound(target, f".{name}()") or {}
                ident = _innermost(args[0], "ident")
                var = str(ident.children[0]) if _is(ident, "ident") else ""
                self.bound_vars[var] = found.get("items") if isinstance(found.get("items"), dict) else None
                for arg in args[1:]:
                    self.check(arg)
                self.bound_vars.pop(var, None)
                return
            if name in STRING_FUNCTIONS:
                self._needs_bound(target, f".{name}()")
            for arg in args:
                self.check(arg)
            return
        if (
            tree.data == "addition"
            and len(tree.children) == 2
            and getattr(tree.children[0], "data", "") == "addition_add"
        ):
            # lark's shape of `left + right`: addition(addition_add(left), right)
            for operand in (tree.children[0].children[0], tree.children[1]):
                if self._is_string_operand(operand):
                    resolved = self.schema_of(operand)
                    unsized = resolved is None or resolved[1] is None or "maxLength" not in resolved[1]
                    if unsized and not _is(_innermost(operand, "literal"), "literal"):
                        self.fail("string concatenation with an operand of unknown size")
        for child in tree.children:
            self.check(child)

    def _needs_bound(self, target: Any, what: str) -> dict[str, Any] | None:
        resolved = self.schema_of(target)
        if resolved is None:
            return None
        path, node = resolved
        if node is None:
            self.fail(f"{what} on {path}, which the schema does not define")
            return None
        kind = node.get("type")
        bounded = (
            (kind == "string" and ("maxLength" in node or "enum" in node))
            or (kind == "array" and "maxItems" in node)
            or (kind == "object" and "additionalProperties" not in node)
            or (kind == "object" and "maxProperties" in node)
            or kind in ("integer", "number", "boolean")
        )
        if not bounded:
            self.fail(f"{what} on {path}, which has no maxLength/maxItems/maxProperties")
        return node

    def _is_string_operand(self, tree: Any) -> bool:
        """Literal strings, string fields and function results (which may be strings) count."""
        node = _innermost(tree, "literal")
        if _is(node, "literal"):
            return str(node.children[0]).lstrip("rRbB")[:1] in ("'", '"')
        if _is(node, "ident_arg") and str(node.children[0]) in NUMERIC_FUNCTIONS:
            return False
        resolved = self.schema_of(tree)
        if resolved is not None and resolved[1] is not None:
            return resolved[1].get("type") == "string"
        return True  # unknown: treat as a possible string


def unboundable_constructs(schema: dict[str, Any]) -> list[str]:
    """Rules and messageExpressions using constructs whose cost the API server cannot bound."""
    parser = CELParser()
    problems: list[str] = []
    for path, node in walk(schema):
        for i, rule in enumerate(node.get("x-kubernetes-validations", [])):
            for key in ("rule", "messageExpression"):
                if key not in rule:
                    continue
                checker = _Checker(node, f"{path or '<root>'} rule {i} {key} {rule[key]!r}")
                checker.check(parser.parse(rule[key]))
                problems.extend(p for p in checker.problems if p not in problems)
    return problems
