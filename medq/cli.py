"""The one subcommand dispatcher of every stage (``python -m train data``, ``python -m bench eval``,
``python -m bench perf ssim``). The only argparse in ``medq/``: the stages' own options stay in
their modules.

A subcommand is a module with ``add_arguments(parser)`` and ``main(args) -> int``, imported only
when chosen (``bench score`` must not pay for, or break on, the imports of ``bench eval``); its
docstring is its ``--help`` text. A module with a ``SUBCOMMANDS`` table instead is a group
(``bench perf``), dispatched the same way one level down.

    SUBCOMMANDS = {"eval": ("bench.eval", "score every run and the baselines")}
    sys.exit(run_subcommand("python -m bench", __doc__, SUBCOMMANDS, sys.argv[1:]))
"""

from __future__ import annotations

import argparse
import importlib
import shlex
from collections.abc import Callable, Sequence


def _parser(prog: str, description: str | None, **kwargs) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=prog, description=description,
                                   formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)


def resolve(prog: str, subcommands: dict[str, tuple[str, str]], argv: Sequence[str]
            ) -> tuple[object, argparse.ArgumentParser, list[str]] | None:
    """The module of the subcommand ``argv`` names (following groups down), its parser and the
    rest of ``argv``; None when ``argv[0]`` names no subcommand. Parses nothing, runs nothing
    (the README test parses every documented command with it)."""
    argv = list(argv)
    if not argv or argv[0] not in subcommands:
        return None
    name, rest = argv[0], argv[1:]
    module = importlib.import_module(subcommands[name][0])
    if hasattr(module, "SUBCOMMANDS"):
        return resolve(f"{prog} {name}", module.SUBCOMMANDS, rest) or (module, _listing(
            f"{prog} {name}", module.__doc__, module.SUBCOMMANDS), rest)
    parser = _parser(f"{prog} {name}", module.__doc__)
    module.add_arguments(parser)
    return module, parser, rest


def _listing(prog: str, description: str | None, subcommands: dict[str, tuple[str, str]]
             ) -> argparse.ArgumentParser:
    listing = "\n".join(f"  {name:12s} {help_text}" for name, (_, help_text) in subcommands.items())
    parser = _parser(prog, description, epilog=f"subcommands (`{prog} NAME --help`):\n{listing}")
    parser.add_argument("command", choices=list(subcommands), metavar="NAME",
                        help=f"one of: {', '.join(subcommands)}")
    return parser


def run_subcommand(prog: str, description: str | None, subcommands: dict[str, tuple[str, str]],
                   argv: Sequence[str], default: Callable[[list[str]], int] | None = None) -> int:
    """Run the subcommand ``argv[0]`` names (``subcommands``: name -> (module, one-line help))
    with the rest of ``argv``. Any other first word: ``default(argv)`` when given (``python -m
    train --preset ...``), else the usage listing every subcommand (exit 0 for ``--help``, 2
    otherwise, through argparse)."""
    argv = list(argv)
    found = resolve(prog, subcommands, argv)
    if found is not None:
        module, parser, rest = found
        if not hasattr(module, "SUBCOMMANDS"):
            args = parser.parse_args(rest)
            # The command as typed, for the reports that must say what produced them.
            args.command_line = f"{parser.prog} {shlex.join(rest)}".strip()
            return module.main(args) or 0
        parser.parse_args(rest[:1])  # a group without (or with an unknown) subcommand
        parser.error(f"{rest[0]!r}: expected one of {', '.join(module.SUBCOMMANDS)}")
    if default is not None:
        return default(argv)
    parser = _listing(prog, description, subcommands)
    parser.parse_args(argv[:1])
    parser.error(f"{argv[0]!r}: expected one of {', '.join(subcommands)}")
    return 2


def data_overrides(overrides: Sequence[str], *, source: str | None = None,
                   root: str | None = None, labels: str | None = None) -> list[str]:
    """``--set`` overrides, then the data flags of the stages that read images (``--data``,
    ``--root``, ``--labels``) as ``data.*`` overrides: a flag given wins over a ``--set`` of the
    same key. Values are JSON-quoted, so any path is a valid TOML string."""
    import json

    out = list(overrides)
    for key, value in (("source", source), ("root", root), ("labels", labels)):
        if value is not None:
            out.append(f"data.{key}={json.dumps(value)}")
    return out
