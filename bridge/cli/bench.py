"""`refmaster bench ...`: the chain here; the other targets live beside their subjects."""

from __future__ import annotations

import os
import statistics
import time

import torch

from engine import params as P
from engine.dsp.chain import SAMPLE_RATE, render_chain
from engine.model.manipulation import random_manipulation


def bench_chain(seconds: float = 30.0, repeat: int = 3, batch: int = 1, dtype=torch.float32) -> dict:
    """Median forward and forward+backward times of the full chain (every module on)."""
    g = torch.Generator().manual_seed(1)
    T = int(seconds * SAMPLE_RATE)
    audio = 0.25 * torch.randn(batch, 2, T, generator=g, dtype=dtype)
    params, _ = random_manipulation(g, batch, dtype)
    switches = torch.ones(batch, len(P.MODULES), dtype=torch.bool)
    # warm-up: numba compiles torchcomp's recursion on first use
    p = params.clone().requires_grad_(True)
    render_chain(audio[..., : SAMPLE_RATE], p, switches).sum().backward()
    fwd, fwdbwd = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        with torch.no_grad():
            render_chain(audio, params, switches)
        fwd.append(time.perf_counter() - t0)
        p = params.clone().requires_grad_(True)
        t0 = time.perf_counter()
        y = render_chain(audio, p, switches)
        y.square().mean().backward()
        fwdbwd.append(time.perf_counter() - t0)
        assert p.grad is not None and torch.isfinite(p.grad).all()
    return {
        "seconds_of_audio": seconds, "batch": batch, "dtype": str(dtype).replace("torch.", ""),
        "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "device": "cpu", "repeat": repeat,
        "forward_s": statistics.median(fwd), "forward_backward_s": statistics.median(fwdbwd),
        "forward_min_s": min(fwd), "forward_backward_min_s": min(fwdbwd),
    }


def format_chain_bench(r: dict) -> str:
    rt = r["seconds_of_audio"] * r["batch"]
    return "\n".join([
        f"chain benchmark: {r['batch']} x {r['seconds_of_audio']:g} s stereo at 44.1 kHz, {r['dtype']}, "
        f"{r['cpu_cores']} CPU cores ({r['torch_threads']} torch threads), median of {r['repeat']}",
        f"  forward           {r['forward_s']:.3f} s   ({rt / r['forward_s']:.0f}x real time)",
        f"  forward+backward  {r['forward_backward_s']:.3f} s   ({rt / r['forward_backward_s']:.0f}x real time)",
    ])


def cmd_bench(args) -> int:
    handler = BENCH_TARGETS[args.what]
    return handler(args)


def _bench_chain_cmd(args) -> int:
    import json

    r = bench_chain(args.seconds, args.repeat, args.batch)
    print(json.dumps(r, indent=2) if args.json else format_chain_bench(r))
    return 0


def _bench_osc_cmd(args) -> int:
    from bridge.bench.osc import cmd_bench_osc

    return cmd_bench_osc(args)


def _bench_render_cmd(args) -> int:
    from bridge.bench.render import cmd_bench_render

    return cmd_bench_render(args)


def _bench_model_cmd(args) -> int:
    from bridge.bench.model import cmd_bench_model

    return cmd_bench_model(args)


def _bench_ito_cmd(args) -> int:
    from bridge.bench.model import cmd_bench_ito

    return cmd_bench_ito(args)


#: `refmaster bench WHAT` targets: name -> handler(args).
BENCH_TARGETS = {"chain": _bench_chain_cmd, "osc": _bench_osc_cmd, "render": _bench_render_cmd,
                 "model": _bench_model_cmd, "ito": _bench_ito_cmd}


def register(sub) -> dict:
    p = sub.add_parser("bench", help="benchmarks (each prints its figures; see README, Measured)")
    bsub = p.add_subparsers(dest="what", metavar="WHAT")
    bsub.required = True
    b = bsub.add_parser("chain", help="forward and forward+backward time of the Torch chain")
    b.add_argument("--seconds", type=float, default=30.0)
    b.add_argument("--repeat", type=int, default=3)
    b.add_argument("--batch", type=int, default=1)
    b.add_argument("--json", action="store_true")
    from bridge.bench.osc import add_arguments as _osc_bench_arguments

    b = bsub.add_parser("osc", help="OSC server under load while the live engine renders (missed deadlines, latency)")
    _osc_bench_arguments(b)
    from bridge.bench.render import add_arguments as _render_bench_arguments

    b = bsub.add_parser("render", help="streaming backends: real-time factor and p99 block time, one thread")
    _render_bench_arguments(b)
    from bridge.bench.model import add_model_arguments

    b = bsub.add_parser("model", help="Φ + Ψ + render of a 30 s track (no ITO), stages broken down")
    add_model_arguments(b)
    b.add_argument("--repeat", type=int, default=3)
    b = bsub.add_parser("ito", help="fast ITO on excerpts vs ITO on the whole track: time and final AF distance")
    add_model_arguments(b)
    b.add_argument("--steps", type=int, default=100)
    b.add_argument("--fast-only", action="store_true", help="skip the (slow) whole-track comparison")
    return {"bench": cmd_bench}
