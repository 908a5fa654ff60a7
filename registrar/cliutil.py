"""Small :mod:`argparse` helpers shared by the modules that add ``registrar`` commands."""

from __future__ import annotations

import argparse
import functools
import sys

__all__ = ["add_group"]


def _usage(parser: argparse.ArgumentParser, _args: argparse.Namespace) -> int:
    parser.print_help(sys.stderr)
    return 2


def add_group(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    *,
    help: str,
    description: str | None = None,
    metavar: str = "COMMAND",
) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    """Add the command group ``name`` (``registrar NAME COMMAND ...``) to ``subparsers``.

    Run without a subcommand, the group prints its help on stderr and returns 2 (its
    ``args.func``). The chosen subcommand's name is stored as ``args.<name>_command``.

    Args:
        subparsers: the result of ``ArgumentParser.add_subparsers()`` of the main CLI.
        name: the group's command name, e.g. ``"users"``.
        help: the one-line help shown in the main command's list.
        description: the text of ``registrar NAME --help`` (``None``: none).
        metavar: how the subcommand is shown in the group's usage line.

    Returns:
        The group's own subparsers object, to add the subcommands to.
    """
    group = subparsers.add_parser(name, help=help, description=description)
    group.set_defaults(func=functools.partial(_usage, group))
    return group.add_subparsers(dest=f"{name}_command", metavar=metavar)
