"""`refmaster bench chain`: forward and forward+backward time of the Torch chain."""

from __future__ import annotations

import json
import os
import statistics
import time

from engine import params as P
from engine.params import SAMPLE_RATE


def bench_chain(seconds: float = 30.0, repeat: int = 3, batch: int = 1, dtype=None) -> dict:
    """Median forward and forward+backward times of the full chain (every module on; float32 by default)."""
    import torch  # here, not at the top: `refmaster --help` imports every bench module

    from engine.dsp.chain import render_chain
    from engine.model.manipulation import random_manipulation

    dtype = dtype or torch.float32
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


def cmd_bench_chain(args) -> int:
    r = bench_chain(args.seconds, args.repeat, args.batch)
    print(json.dumps(r, indent=2) if args.json else format_chain_bench(r))
    return 0


def register(bsub) -> dict:
    b = bsub.add_parser("chain", help="forward and forward+backward time of the Torch chain")
    b.add_argument("--seconds", type=float, default=30.0)
    b.add_argument("--repeat", type=int, default=3)
    b.add_argument("--batch", type=int, default=1)
    b.add_argument("--json", action="store_true")
    return {"chain": cmd_bench_chain}
