"""Subcommand dispatch shared by ``autoglm-runtime`` and ``autoglm-operator`` (torch-free).

Each subcommand is a module with ``add_arguments(parser)`` and ``run(args) -> int``. Only the
chosen subcommand's module is imported, so ``validate`` never pays for kopf, nor ``fetch`` for torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys

Commands = dict[str, tuple[str, str]]  # name -> (module, one-line help)


def build_parser(
    prog: str, description: str | None, commands: Commands, selected: str | None
) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in commands.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == selected:
            mod = importlib.import_module(module)
            mod.add_arguments(p)
            p.set_defaults(_module=mod)
    return parser


def dispatch(prog: str, description: str | None, commands: Commands, argv: list[str] | None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    selected = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(prog, description, commands, selected).parse_args(argv)
    try:
        return int(args._module.run(args) or 0)
    except BrokenPipeError:  # `... | head`
        return 0
    except KeyboardInterrupt:
        return 130
