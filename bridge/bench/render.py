"""`refmaster bench render`: real-time factor and p99 time per block of each streaming backend.

On one thread, at blocks of 64, 512 and 4096 samples, on 30 s of music (the first real song in
``../shared/audio`` that is long enough, from 30 s in or as far as it fits, or a synthesised song where that folder is absent), with a
random Θ that switches every module on. The table also gives the p99 block time as a share of
the block's duration (the issue's target: below 0.1).
"""

from __future__ import annotations

import json
from pathlib import Path

from bridge.cli.options import DEFAULT_MUSIC as REAL_MUSIC
from engine.params import SAMPLE_RATE


def register(bsub) -> dict:
    b = bsub.add_parser("render", help="streaming backends: real-time factor and p99 block time, one thread")
    b.add_argument("--input", metavar="AUDIO", help="music to stream (default: a song from ../shared/audio)")
    b.add_argument("--seconds", type=float, default=30.0)
    b.add_argument("--backends", default="onnx,pedalboard,torch", help="comma-separated (default: all three)")
    b.add_argument("--blocks", default="64,512,4096", help="comma-separated block sizes")
    b.add_argument("--seed", type=int, default=3, help="seed of the random Θ")
    b.add_argument("--json", action="store_true")
    return {"render": cmd_bench_render}


def cmd_bench_render(args) -> int:
    from engine.io.audio import READ_EXTENSIONS
    from engine.model.synth import synth_song
    from export.checks import bench_render, format_bench, load_excerpt, long_enough, random_thetas

    if args.input:
        audio, source = load_excerpt(args.input, args.seconds), Path(args.input).name
    else:
        songs = sorted(f for f in REAL_MUSIC.glob("*") if f.suffix.lower() in READ_EXTENSIONS) if REAL_MUSIC.is_dir() else []
        songs = long_enough(songs, args.seconds)
        if songs:
            audio, source = load_excerpt(songs[0], args.seconds), songs[0].name
        else:
            audio, source = synth_song(0, args.seconds), "synthesised song"
    source = f"{audio.shape[1] / SAMPLE_RATE:.0f} s of {source}"
    theta = random_thetas(1, args.seed)[0]
    rows = bench_render(audio, theta, [b for b in args.backends.split(",") if b],
                        [int(b) for b in args.blocks.split(",") if b])
    print(json.dumps({"source": source, "rows": rows}, indent=2) if args.json else format_bench(rows, source))
    return 0
