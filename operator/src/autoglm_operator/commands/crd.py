"""``autoglm-operator crd``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from autoglm_operator.crd import crd_yaml, root_schema
from autoglm_operator.crd_bounds import unboundable_constructs, unbounded_nodes


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", type=Path, help="write to this file instead of stdout")


def run(args: argparse.Namespace) -> int:
    schema = root_schema()
    problems = unbounded_nodes(schema) + unboundable_constructs(schema)
    if problems:
        # A real API server would refuse this CRD ("estimated rule cost exceeds budget").
        print("autoglm-operator crd: the schema is not bounded for CEL cost estimation:", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    text = crd_yaml()
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)
    else:
        print(text, end="")
    return 0
