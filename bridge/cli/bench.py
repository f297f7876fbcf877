"""`refmaster bench WHAT`: each benchmark module of bridge/bench/ registers its own targets."""

from __future__ import annotations

import importlib

#: Modules that contribute `bench` targets, in the order `refmaster bench --help` lists them.
BENCH_MODULES = ["bridge.bench.chain", "bridge.bench.osc", "bridge.bench.render", "bridge.bench.model",
                 "bridge.bench.master", "bridge.bench.insert"]


def register(sub) -> dict:
    p = sub.add_parser("bench", help="benchmarks (each prints its figures; see README, Measured)")
    bsub = p.add_subparsers(dest="what", metavar="WHAT")
    bsub.required = True
    targets = {}
    for name in BENCH_MODULES:
        targets.update(importlib.import_module(name).register(bsub))
    return {"bench": lambda args: targets[args.what](args)}
