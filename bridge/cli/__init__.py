"""The `refmaster` command line.

Each module in :data:`COMMAND_MODULES` adds its own subcommands through ``register(sub)``,
which returns ``{command name: handler(args) -> exit status}``; this file only builds the
parser and applies the error policy. Every problem a user can cause or fix (a bad file, a bad
parameter, a numerical failure in a named module) is printed as one line,
``refmaster: error: ...``, with exit status 2. Ctrl-C exits with 130 and no traceback.
Anything else is a bug and keeps its traceback.

Command modules (those with ``register``) never import one another: what two commands share lives
in :mod:`bridge.cli.options` (argument declarations), :mod:`bridge.cli.report` (tables, plots) or
in the engine. They may import everything below bridge/cli.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Callable, Dict, List, Optional, Tuple

# First, before anything heavy: starts the window over which engine.runtime judges how busy the
# other processes keep the CPUs (the thread choice of `master`). Standard library only.
from engine import runtime  # noqa: F401

#: Modules that contribute subcommands, in the order `refmaster --help` lists them.
COMMAND_MODULES = [
    "bridge.cli.chain",
    "bridge.cli.bench",
    "bridge.cli.demo",
    "bridge.cli.training",
    "bridge.cli.corpus",
    "bridge.cli.master",
    "bridge.cli.evaluation",
    "bridge.cli.prompts",
    "bridge.cli.preset",
    "bridge.cli.osc",
    "bridge.cli.serve",
    "bridge.cli.export",
]


def build_parser() -> Tuple[argparse.ArgumentParser, Dict[str, Callable]]:
    ap = argparse.ArgumentParser(
        prog="refmaster",
        description="Reference-based mastering with a white-box chain you can read and tweak.",
    )
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    handlers: Dict[str, Callable] = {}
    for name in COMMAND_MODULES:
        handlers.update(importlib.import_module(name).register(sub))
    return ap, handlers


def main(argv: Optional[List[str]] = None) -> int:
    parser, handlers = build_parser()
    args = parser.parse_args(argv)
    from engine.errors import RefmasterError

    try:
        return int(handlers[args.command](args) or 0)
    except RefmasterError as e:
        print(f"refmaster: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("refmaster: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


def entry_point() -> None:
    sys.exit(main())
