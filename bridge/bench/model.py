"""`refmaster bench model` and `refmaster bench ito`: what the producer waits for.

``bench model``: Φ + Ψ + render of a 30 s track without ITO (f_norm, embedding of the reference,
Θ from the converter, full-length render), the median of a few runs with the stages broken down.

``bench ito``: fast ITO (100 steps on three 2.5 s excerpts, then one full-length render) against
ITO on the whole track, both from the same start; prints the wall time of each and the final
Audio Feature distance of the full-length master to the reference for each, so the cost of the
shortcut is a number.

Material: two different songs of ``../shared/audio`` (30 s from each) when the folder is there,
otherwise two synthesised songs, the reference mastered in the demo's style.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

from engine.params import SAMPLE_RATE


def _material(seconds: float, data: Path | None):
    from engine.model.dataset import HELD_OUT

    if data is not None and data.is_dir():
        from engine.io.audio import load_audio

        names = [data / n for n in HELD_OUT if (data / n).is_file()]
        if len(names) == 2:
            n = int(seconds * SAMPLE_RATE)
            x, r = (load_audio(p).audio for p in names)
            mid = lambda a: a[:, max(0, a.shape[1] // 2 - n // 2) :][:, :n]
            return mid(x), mid(r), f"{names[0].name} (input) and {names[1].name} (reference), 30 s from the middle"
    from engine.model.synth import demo_pair as make_demo_pair

    x, _, r, _ = make_demo_pair(seconds, 7)
    return x, r, "two synthesised songs (the demo's pair)"


def bench_model(model, seconds: float = 30.0, repeat: int = 3, data: Path | None = None) -> dict:
    import torch

    from engine.mastering.job import MasterSettings, master

    x, r, what = _material(seconds, data)
    master(model, x[:, : SAMPLE_RATE * 3], r[:, : SAMPLE_RATE * 3], MasterSettings(ito=False))  # warm-up
    runs = [master(model, x, r, MasterSettings(ito=False, match_loudness=False)).seconds for _ in range(repeat)]
    med = {k: statistics.median(run[k] for run in runs) for k in runs[0]}
    matched = [master(model, x, r, MasterSettings(ito=False)).seconds for _ in range(repeat)]
    return {"material": what, "seconds_of_audio": seconds, "model": model.kind, "cpu_cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "repeat": repeat, "median_s": med,
            "with_loudness_match_s": statistics.median(m["total"] for m in matched),
            "loudness_match_s": statistics.median(m.get("loudness", 0.0) for m in matched)}


def bench_ito(model, seconds: float = 30.0, steps: int = 100, data: Path | None = None, full: bool = True) -> dict:
    import torch

    from engine.analysis.features import AudioFeatureLoss
    from engine.mastering.job import MasterSettings, master

    x, r, what = _material(seconds, data)
    af = AudioFeatureLoss()
    ref_t = torch.from_numpy(r).unsqueeze(0)

    def distance(y):
        with torch.no_grad():
            return float(af(torch.from_numpy(y).unsqueeze(0), ref_t)[0])

    out = {"material": what, "seconds_of_audio": seconds, "steps": steps, "model": model.kind,
           "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    master(model, x[:, : SAMPLE_RATE * 3], r[:, : SAMPLE_RATE * 3], MasterSettings(ito=False))  # warm-up
    noito = master(model, x, r, MasterSettings(ito=False))
    out["no_ito"] = {"af": distance(noito.output), "total_s": noito.seconds["total"]}
    # patience = steps: run every step, so both variants do the same amount of work
    t0 = time.time()
    fast = master(model, x, r, MasterSettings(ito_steps=steps, patience=steps))
    out["fast"] = {"af": distance(fast.output), "total_s": time.time() - t0, "ito_s": fast.seconds["ito"],
                   "steps_run": fast.ito.steps_run, "best_step": fast.ito.best_step}
    if full:
        t0 = time.time()
        whole = master(model, x, r, MasterSettings(ito_steps=steps, patience=steps, excerpt_seconds=seconds, excerpts=1))
        out["full"] = {"af": distance(whole.output), "total_s": time.time() - t0, "ito_s": whole.seconds["ito"],
                       "steps_run": whole.ito.steps_run, "best_step": whole.ito.best_step}
        out["fast_vs_full_af"] = out["fast"]["af"] / out["full"]["af"]
    return out


def format_model_bench(r: dict) -> str:
    m = r["median_s"]
    stages = ", ".join(f"{k} {m[k]:.2f}" for k in ("fx_norm", "embed", "render") if k in m)
    return (f"Φ + Ψ + render, {r['model']}, {r['seconds_of_audio']:g} s stereo ({r['material']}), "
            f"{r['cpu_cores']} CPU cores, median of {r['repeat']}\n"
            f"  total {m['total']:.2f} s  ({stages}; the rest is Ψ)\n"
            f"  with the dynamics and loudness match (default in `master`): {r['with_loudness_match_s']:.2f} s "
            f"(match {r['loudness_match_s']:.2f} s)")


def format_ito_bench(r: dict) -> str:
    lines = [f"ITO, {r['model']}, {r['steps']} steps, {r['seconds_of_audio']:g} s stereo ({r['material']}), "
             f"{r['cpu_cores']} CPU cores",
             f"  {'':22}{'wall s':>8}{'ITO s':>8}{'AF to reference':>17}",
             f"  {'no ITO':22}{r['no_ito']['total_s']:>8.1f}{'':>8}{r['no_ito']['af']:>17.4f}",
             f"  {'fast ITO (excerpts)':22}{r['fast']['total_s']:>8.1f}{r['fast']['ito_s']:>8.1f}{r['fast']['af']:>17.4f}"]
    if "full" in r:
        lines.append(f"  {'ITO on the whole track':22}{r['full']['total_s']:>8.1f}{r['full']['ito_s']:>8.1f}"
                     f"{r['full']['af']:>17.4f}")
        lines.append(f"  fast / whole-track AF: {r['fast_vs_full_af']:.3f}")
    return "\n".join(lines)


def _model_arguments(b) -> None:
    b.add_argument("--model", choices=("white-box", "black-box"), default="white-box")
    b.add_argument("--weights", help="a .safetensors file instead of the shipped weights")
    b.add_argument("--seconds", type=float, default=30.0)
    b.add_argument("--data", help="folder of real songs (default ../shared/audio when present)")
    b.add_argument("--json", action="store_true")


def cmd_bench_model(args) -> int:
    from bridge.cli.options import DEFAULT_MUSIC as DEFAULT_DATA
    from engine.model.networks import load_model

    model = load_model(args.model, args.weights)
    r = bench_model(model, args.seconds, args.repeat, Path(args.data) if args.data else DEFAULT_DATA)
    print(json.dumps(r, indent=2) if args.json else format_model_bench(r))
    return 0


def cmd_bench_ito(args) -> int:
    from bridge.cli.options import DEFAULT_MUSIC as DEFAULT_DATA
    from engine.model.networks import load_model

    model = load_model(args.model, args.weights)
    r = bench_ito(model, args.seconds, args.steps, Path(args.data) if args.data else DEFAULT_DATA, full=not args.fast_only)
    print(json.dumps(r, indent=2) if args.json else format_ito_bench(r))
    return 0


def register(bsub) -> dict:
    b = bsub.add_parser("model", help="Φ + Ψ + render of a 30 s track (no ITO), stages broken down")
    _model_arguments(b)
    b.add_argument("--repeat", type=int, default=3)
    b = bsub.add_parser("ito", help="fast ITO on excerpts vs ITO on the whole track: time and final AF distance")
    _model_arguments(b)
    b.add_argument("--steps", type=int, default=100)
    b.add_argument("--fast-only", action="store_true", help="skip the (slow) whole-track comparison")
    return {"model": cmd_bench_model, "ito": cmd_bench_ito}
