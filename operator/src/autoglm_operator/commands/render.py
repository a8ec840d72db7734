"""``autoglm-operator render -f CR.yaml [-o yaml|json]``: the objects a CR becomes, offline.

Output is deterministic (GitOps users render in CI and diff). The memory decision of each CR goes
to stderr, so stdout stays something ``kubectl apply -f -`` takes. Documents of other kinds in the
input are skipped (a file may hold the CR's Secrets too). Offline renders carry no owner references
(the CR has no uid yet); the operator adds them in the cluster.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import yaml

from autoglm_operator import api
from autoglm_operator.autoscaling import DEFAULT_PROMETHEUS_ADDRESS
from autoglm_operator.memory.types import GIB
from autoglm_operator.render import OPERATOR_VERSION, Rendered, SpecError, dump_json, dump_yaml, render


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-f",
        "--filename",
        action="append",
        help="YAML file with one or more CRs ('-' = stdin, the default); repeatable",
    )
    p.add_argument(
        "-o",
        "--output",
        choices=["yaml", "json"],
        default="yaml",
        help="yaml (multi-document) or json (a List)",
    )
    p.add_argument(
        "--operator-version",
        default=OPERATOR_VERSION,
        help=f"version whose runtime image tag is used when spec.image sets none (default {OPERATOR_VERSION})",
    )
    p.add_argument(
        "--prometheus-address",
        default=DEFAULT_PROMETHEUS_ADDRESS,
        help="Prometheus server of KEDA ScaledObjects whose CR names none, as the operator's flag "
        "(default %(default)s)",
    )


def _read(name: str) -> list[Any]:
    text = sys.stdin.read() if name == "-" else open(name, encoding="utf-8").read()  # noqa: SIM115
    return [d for d in yaml.safe_load_all(text) if d is not None]


def decision(label: str, r: Rendered) -> str:
    """One line on the memory plan: what runs and whether it fits."""
    c = r.plan.chosen
    where = f"{r.plan.gpu_count} x {r.plan.gpu.name}" if r.plan.gpu is not None else "CPU"
    if not r.plan.gpu_known:
        return (
            f"{label}: quantization {c.quantization} (requested {r.plan.requested}) on {where}: "
            f"{c.total_bytes / GIB:.1f} GiB per replica, fit NOT checked ({r.plan.reason})"
        )
    line = (
        f"{label}: quantization {c.quantization} (requested {r.plan.requested}) on {where}: "
        f"{c.total_bytes / GIB:.1f} GiB of {c.usable_bytes / GIB:.1f} GiB usable, "
        f"{'fits' if c.fits else 'does NOT fit'}"
    )
    if r.plan.reason:
        line += f" ({r.plan.reason})"
    if r.deployment_skipped_reason:
        line += (
            f"\n{label}: warning: no Deployment rendered (no HPA or PDB either): pods would run out of GPU "
            "memory; change the spec, or set spec.memory.skipFitCheck: true"
        )
    return line


def run(args: argparse.Namespace) -> int:
    objects: list[dict[str, Any]] = []
    failed = False
    for name in args.filename or ["-"]:
        try:
            docs = _read(name)
        except OSError as exc:
            print(f"{name}: cannot read: {exc.strerror}", file=sys.stderr)
            return 1
        except yaml.YAMLError as exc:
            print(f"{name}: not valid YAML: {exc}", file=sys.stderr)
            return 1
        for i, doc in enumerate(docs):
            if not isinstance(doc, dict) or doc.get("kind") != api.KIND:
                kind = doc.get("kind", "?") if isinstance(doc, dict) else type(doc).__name__
                print(f"{name}[{i}]: skipping a {kind}: not an {api.KIND}", file=sys.stderr)
                continue
            cr_name = (doc.get("metadata") or {}).get("name", "?")
            label = f"{name}[{i}] {cr_name}"
            try:
                rendered = render(
                    doc, operator_version=args.operator_version, prometheus_address=args.prometheus_address
                )
            except SpecError as exc:
                failed = True
                for path, message in exc.problems:
                    print(f"{label}: invalid: {path}: {message}", file=sys.stderr)
                continue
            print(decision(label, rendered), file=sys.stderr)
            objects.extend(rendered.objects)
    if failed:
        return 1
    sys.stdout.write(dump_json(objects) if args.output == "json" else dump_yaml(objects))
    return 0
