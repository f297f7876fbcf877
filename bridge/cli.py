"""The `refmaster` command line.

Every problem a user can cause or fix (a bad file, a bad parameter, a numerical failure in a
named module) is printed as one line, ``refmaster: error: ...``, with exit status 2. Ctrl-C
exits with 130 and no traceback. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="refmaster",
        description="Reference-based mastering with a white-box chain you can read and tweak.",
    )
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("params", help="list the 46 chain parameters with units and ranges")
    p.add_argument("--json", action="store_true", help="machine-readable list")

    p = sub.add_parser("analyze", help="loudness, peaks, crest, width, DRV and bark balance of a file")
    p.add_argument("file")
    p.add_argument("--json", action="store_true", help="machine-readable report")
    p.add_argument("--plot", metavar="PNG", help="also save the bark balance as a plot")

    p = sub.add_parser("render", help="render a file through the chain with given parameters (offline, Torch)")
    p.add_argument("input")
    p.add_argument("--params", required=True, metavar="FILE.json", help="chain parameters (see `refmaster params`)")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help=".wav or .flac (24-bit)")

    p = sub.add_parser("bench", help="benchmarks")
    bsub = p.add_subparsers(dest="what", metavar="WHAT")
    bsub.required = True
    b = bsub.add_parser("chain", help="forward and forward+backward time of the chain")
    b.add_argument("--seconds", type=float, default=30.0)
    b.add_argument("--repeat", type=int, default=3)
    b.add_argument("--batch", type=int, default=1)
    b.add_argument("--json", action="store_true")

    p = sub.add_parser("synth", help="write a synthesised test song")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seconds", type=float, default=20.0)

    p = sub.add_parser("fxnorm-stats", help="compute the Fx-normalisation statistics from a folder of songs")
    p.add_argument("folder")
    p.add_argument("-o", "--output", help="where to write (default: the engine's data file)")

    p = sub.add_parser("demo", help="synthesise a song and master it with a built-in setting")
    p.add_argument("-o", "--output", default="refmaster-demo", help="output folder")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--seed", type=int, default=7)
    return ap


def _dispatch(args) -> int:
    from . import commands

    if args.command == "params":
        return commands.cmd_params(args)
    if args.command == "analyze":
        return commands.cmd_analyze(args)
    if args.command == "render":
        return commands.cmd_render(args)
    if args.command == "synth":
        return commands.cmd_synth(args)
    if args.command == "fxnorm-stats":
        return commands.cmd_fxnorm_stats(args)
    if args.command == "bench":
        import json

        from .bench import bench_chain, format_chain_bench

        r = bench_chain(args.seconds, args.repeat, args.batch)
        print(json.dumps(r, indent=2) if args.json else format_chain_bench(r))
        return 0
    if args.command == "demo":
        from .demo import run_demo

        run_demo(Path(args.output), args.seconds, args.seed)
        return 0
    raise AssertionError(args.command)


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from engine.errors import RefmasterError

    try:
        return _dispatch(args)
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


if __name__ == "__main__":
    entry_point()
