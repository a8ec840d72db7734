"""``autoglm-operator validate -f FILE``: exit 0 when every AutoGLMDeployment in FILE is valid."""

from __future__ import annotations

import argparse
import sys

import yaml

from autoglm_operator.validate import validate_object


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-f", "--filename", action="append", required=True, help="YAML file ('-' = stdin); repeatable"
    )
    p.add_argument("-q", "--quiet", action="store_true", help="print problems only")


def _documents(name: str) -> list[object]:
    text = sys.stdin.read() if name == "-" else open(name, encoding="utf-8").read()  # noqa: SIM115
    return [d for d in yaml.safe_load_all(text) if d is not None]


def run(args: argparse.Namespace) -> int:
    bad = 0
    for name in args.filename:
        try:
            docs = _documents(name)
        except OSError as exc:
            print(f"{name}: cannot read: {exc.strerror}", file=sys.stderr)
            bad += 1
            continue
        except yaml.YAMLError as exc:
            print(f"{name}: not valid YAML: {exc}", file=sys.stderr)
            bad += 1
            continue
        for i, doc in enumerate(docs):
            meta = doc.get("metadata", {}) if isinstance(doc, dict) else {}
            label = f"{name}[{i}] {(meta or {}).get('namespace', 'default')}/{(meta or {}).get('name', '?')}"
            problems = validate_object(doc)
            if problems:
                bad += 1
                print(f"{label}: invalid", file=sys.stderr)
                for p in problems:
                    print(f"  {p}", file=sys.stderr)
            elif not args.quiet:
                print(f"{label}: valid")
    return 1 if bad else 0
