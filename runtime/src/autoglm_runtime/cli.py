"""``autoglm-runtime``: serve one model (``serve``) or fetch its weights (``fetch``, the init container)."""

from __future__ import annotations

import sys

from autoglm_runtime.subcommands import dispatch

COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("autoglm_runtime.serve", "load the model and serve the OpenAI-compatible API"),
    "fetch": ("autoglm_runtime.fetch", "download a model revision into the cache (resumable, verified)"),
}


def main(argv: list[str] | None = None) -> int:
    return dispatch("autoglm-runtime", __doc__, COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
