"""``autoglm-operator``: run the operator, or use its pieces offline (crd, validate, estimate, render)."""

from __future__ import annotations

import sys

from autoglm_runtime.subcommands import dispatch

COMMANDS: dict[str, tuple[str, str]] = {
    "crd": ("autoglm_operator.commands.crd", "print (or write) the generated CustomResourceDefinition"),
    "validate": (
        "autoglm_operator.commands.validate",
        "check AutoGLMDeployment YAML offline (schema, CEL, model)",
    ),
    "estimate": (
        "autoglm_operator.commands.estimate",
        "estimate GPU memory per quantization and the auto choice",
    ),
    "render": ("autoglm_operator.commands.render", "print the Kubernetes objects a CR becomes (offline)"),
    "run": ("autoglm_operator.commands.run", "run the operator (kopf) against the cluster"),
}


def main(argv: list[str] | None = None) -> int:
    return dispatch("autoglm-operator", __doc__, COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
