"""`refmaster demo`: the built-in default job, runnable on a fresh machine with no audio of your own.

Synthesises a mixed song, masters it through the chain with a built-in setting (a warm, louder,
slightly wider master), and writes the input, the master, the parameters and a plot to a
folder, printing the before/after analysis.
"""

from __future__ import annotations

from pathlib import Path

from engine import params as P
from engine.audio_io import write_audio
from engine.features import analyze
from engine.synth import synth_song_with_info

from .commands import render_offline
from .report import analysis_table, plot_analysis

DEMO_MASTER = P.ChainParams.default().with_values(**{
    "eq.low_shelf_gain": 2.5, "eq.low_shelf_freq": 90.0, "eq.band0_gain": -2.0, "eq.band0_freq": 350.0,
    "eq.band0_q": 1.2, "eq.high_shelf_gain": 3.0, "eq.high_shelf_freq": 9000.0,
    "distortion.drive": 3.0, "distortion.mix": 0.3,
    "multiband.mix": 0.6, "multiband.low_comp_threshold": -24.0, "multiband.low_comp_ratio": 3.0,
    "multiband.mid_comp_threshold": -26.0, "multiband.mid_comp_ratio": 2.5,
    "multiband.high_comp_threshold": -30.0, "multiband.high_comp_ratio": 2.0,
    "multiband.low_attack": 20.0, "multiband.low_release": 150.0,
    "gain.gain": 9.0, "imager.width": 0.58,
    "limiter.threshold": -1.0, "limiter.attack": 0.5, "limiter.release": 80.0,
})


def run_demo(out_dir: Path, seconds: float = 20.0, seed: int = 7) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    song, info = synth_song_with_info(seed, seconds)
    master = render_offline(song, DEMO_MASTER)
    write_audio(out_dir / "input.wav", song)
    clipped = write_audio(out_dir / "master.wav", master)
    (out_dir / "params.json").write_text(DEMO_MASTER.to_json() + "\n")
    a, b = analyze(song), analyze(master)
    plot_analysis(out_dir / "analysis.png", [a, b], ["input", "master"], title=info.describe())
    print(f"synthesised {info.describe()}, {seconds:g} s")
    print(analysis_table([a, b], ["input", "master"]))
    if clipped:
        print(f"note: {clipped} samples clipped at full scale in master.wav")
    print(f"\nwrote {out_dir}/: input.wav, master.wav, params.json, analysis.png")
    return out_dir


def register(sub) -> dict:
    p = sub.add_parser("demo", help="synthesise a song and master it with a built-in setting")
    p.add_argument("-o", "--output", default="refmaster-demo", help="output folder")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--seed", type=int, default=7)
    return {"demo": cmd_demo}


def cmd_demo(args) -> int:
    run_demo(Path(args.output), args.seconds, args.seed)
    return 0
