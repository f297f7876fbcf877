"""`refmaster export` (ONNX graph, calibrated pedalboard chain) and `refmaster export-check`
(the measurements behind docs/export.md: exactness, pedalboard fidelity, render memory)."""

from __future__ import annotations

import sys
from pathlib import Path

from bridge.cli.options import DEFAULT_MUSIC, add_presets_option
from engine import params as P
from engine.errors import RefmasterError
from engine.io.atomic import atomic_write_bytes, check_output
from engine.io.jsonfile import JsonError, read_json
from engine.params import SAMPLE_RATE
from engine.rates import check_rate


def resolve_chain(source: str, presets_dir=None) -> P.ChainParams:
    """PRESET_OR_JSON: a parameter file, a preset file, or the name of a saved preset."""
    path = Path(source)
    if path.suffix.lower() == ".json" or path.exists():
        if not path.exists():
            raise RefmasterError(f"{path}: no such parameter or preset file")
        try:
            data = read_json(path)
        except JsonError:
            data = None  # ChainParams.load below says what is wrong with it
        if isinstance(data, dict) and str(data.get("schema", "")).startswith("refmaster.preset"):
            from presets import Preset

            return Preset.from_file(path).chain
        return P.ChainParams.load(path)
    from presets import PresetStore

    return PresetStore(presets_dir).get(source).chain


def _check_out(path, ext: str, inputs) -> Path:
    p = Path(path)
    if p.suffix.lower() != ext:
        raise RefmasterError(f"{p}: expected a {ext} file name")
    return check_output(p, inputs)


def cmd_export(args) -> int:
    if not args.onnx and not args.pedalboard:
        raise RefmasterError("nothing to export: give --onnx FILE.onnx and/or --pedalboard FILE.json")
    chain = resolve_chain(args.source, args.presets)
    rate = check_rate(args.rate)
    inputs = (args.source, args.calibrate_on)
    onnx_out = _check_out(args.onnx, ".onnx", inputs) if args.onnx else None
    pb_out = _check_out(args.pedalboard, ".json", inputs) if args.pedalboard else None
    if onnx_out:
        from export.onnx_chain import CHAIN_LATENCY, OPSET, STATE_SIZE, build_model
        from export.onnx_stream import OnnxStreamingChain

        model = build_model(chain, sample_rate=rate)
        data = model.SerializeToString()
        OnnxStreamingChain(chain, model=data)  # onnxruntime must load what we write
        atomic_write_bytes(onnx_out, data)
        print(f"{onnx_out}: ONNX opset {OPSET}, {len(model.graph.node)} nodes, {len(data) / 1024:.0f} KiB; inputs "
              f"audio (2, N) float32, params (46,), switches (6,), state ({STATE_SIZE},) float64; "
              f"latency {CHAIN_LATENCY} samples; parameter defaults from {args.source}; sample_rate (1,) float64, "
              f"default {rate} Hz (any of {P.CHAIN_RATES[0]}…{P.CHAIN_RATES[1]})")
    if pb_out:
        import numpy as np

        from engine.io.audio import load_audio, resample
        from engine.model.synth import synth_song
        from export.calibrate import calibrate

        if args.calibrate_on:
            audio, source = load_audio(args.calibrate_on, rate=rate).audio, Path(args.calibrate_on).name
        else:
            audio, source = resample(synth_song(0, args.calibration_seconds), SAMPLE_RATE, rate), "synthesised song (seed 0)"
        print(f"calibrating the pedalboard chain at {rate} Hz on {source} "
              f"({min(audio.shape[1] / rate, args.calibration_seconds):.0f} s, up to {args.evaluations} renders)...",
              file=sys.stderr)
        r = calibrate(chain, np.asarray(audio), seconds=args.calibration_seconds, max_evaluations=args.evaluations,
                      source=source, sample_rate=rate)
        r.settings.save(pb_out)
        print(f"{pb_out}: pedalboard chain calibrated on {source}: AF distance to the Torch render "
              f"{r.af_before:.5f} -> {r.af_after:.5f} ({r.evaluations} renders, {r.seconds:.0f} s)")
    return 0


def cmd_export_check(args) -> int:
    from export import checks

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    if args.what == "memory":
        r = checks.render_memory(args.minutes, args.backend, args.block)
        print(f"render of {r['minutes']:.1f} min synthesised ({r['input_mb']:.0f} MB wav), {r['backend']} backend, "
              f"{r['block']}-sample blocks: peak memory {r['peak_rss_mb']:.0f} MB, {r['render_wall_s']:.0f} s "
              f"({r['minutes'] * 60 / r['render_wall_s']:.0f}x real time); output {r['output_frames']} frames "
              f"(input {r['input_frames']})")
        return 0
    songs_dir = Path(args.songs)
    from engine.io.audio import READ_EXTENSIONS

    files = sorted(f for f in songs_dir.glob("*") if f.suffix.lower() in READ_EXTENSIONS) if songs_dir.is_dir() else []
    if not files:
        raise RefmasterError(f"{songs_dir}: no songs found (give a folder of music with --songs)")
    if args.what != "segments":
        files = checks.long_enough(files, args.seconds)
    rate = check_rate(args.rate)
    if args.what == "exactness":
        songs = {f.name: checks.load_excerpt(f, args.seconds, sample_rate=rate) for f in files}
        thetas = checks.random_thetas(args.thetas, args.seed)
        rows = checks.exactness(songs, thetas, progress=say, sample_rate=rate)
        print(f"ONNX stream vs Torch render at {rate} Hz: {len(thetas)} random Θ (every module on) on {len(songs)} "
              f"songs, {args.seconds:g} s each, max |difference| per block configuration (limit 1e-4):")
        for config in checks.BLOCK_CONFIGS:
            d = [r["max_abs_diff"] for r in rows if r["blocks"] == config]
            print(f"  blocks {config:>6s}: max {max(d):.2e}   median {sorted(d)[len(d) // 2]:.2e}   "
                  f"{'ok' if max(d) <= 1e-4 else 'FAIL'}")
        worst = max(rows, key=lambda r: r["max_abs_diff"])
        print(f"  overall max {worst['max_abs_diff']:.2e} (Θ {worst['theta']}, {worst['song']}, blocks {worst['blocks']}); "
              f"render peaks {min(r['peak'] for r in rows):.2f}…{max(r['peak'] for r in rows):.2f}")
        return 0 if worst["max_abs_diff"] <= 1e-4 else 1
    if args.what == "segments":
        import soundfile as sf

        from engine.io.audio import load_audio

        long_songs = sorted(files, key=lambda f: -sf.info(str(f)).duration)[:args.n_songs]
        songs = {f.name: load_audio(f).audio for f in long_songs}
        rows = checks.torch_segments(songs, checks.random_thetas(args.thetas, args.seed), progress=say)
        worst = max(rows, key=lambda r: r["max_abs_diff"])
        print(f"Torch backend in segments (2^20 samples, 2^18 pre-roll) vs the whole-file render: "
              f"{len(songs)} songs ({', '.join(f'{r:.0f} s' for r in sorted({x['seconds'] for x in rows}))}), "
              f"{args.thetas} random Θ: max |difference| {worst['max_abs_diff']:.2e} ({worst['song']}, Θ {worst['theta']})")
        return 0
    if args.what == "pedalboard":
        chosen = files[:args.n_songs]
        songs = {f.name: checks.load_excerpt(f, args.seconds, sample_rate=rate) for f in chosen}
        thetas = checks.random_thetas(args.thetas, args.seed)
        rows = checks.pedalboard_fidelity(songs, thetas, evaluations=args.evaluations,
                                          calibration_seconds=args.seconds, progress=say, sample_rate=rate)
        limits = {"loudness_lu": 0.5, "bark_mid_db_rms": 1.0, "crest_db": 1.0}
        print(f"pedalboard chain vs Torch render at {rate} Hz: {len(songs)} songs x {len(thetas)} random Θ "
              f"(every module on), {args.seconds:g} s excerpts, CMA-ES with {args.evaluations} renders per case")
        print(f"  {'':24s} {'uncalibrated':>26s}   {'calibrated':>26s}")
        print(f"  {'':24s} {'max |.|':>12s} {'median |.|':>12s}   {'max |.|':>12s} {'median |.|':>12s}  limit  passed")
        ok = True
        for key, what in (("loudness_lu", "loudness (LU)"), ("bark_mid_db_rms", "bark balance (dB RMS)"),
                          ("crest_db", "crest factor (dB)"), ("bark_side_db_rms", "bark side (dB RMS)"), ("af", "AF distance")):
            b = sorted(abs(r["before"][key]) for r in rows)
            a = sorted(abs(r["after"][key]) for r in rows)
            lim = limits.get(key)
            passed = sum(v <= lim for v in a) if lim else None
            ok &= passed == len(a) if lim else True
            print(f"  {what:24s} {b[-1]:12.3f} {b[len(b) // 2]:12.3f}   {a[-1]:12.3f} {a[len(a) // 2]:12.3f}  "
                  f"{'' if lim is None else f'{lim:5.1f}'}  {'' if lim is None else f'{passed}/{len(a)}'}")
        gaps = sorted(abs(r["search_loudness_gap_lu"]) for r in rows)
        print(f"  loudness after the CMA-ES search alone (what the final trim step removed): max {gaps[-1]:.2f} LU, "
              f"median {gaps[len(gaps) // 2]:.2f} LU; calibration {min(r['calibration_s'] for r in rows):.0f}–"
              f"{max(r['calibration_s'] for r in rows):.0f} s per case")
        return 0 if ok else 1
    raise RefmasterError(f"unknown check {args.what!r}")


def register(sub) -> dict:
    p = sub.add_parser("export", help="export the chain: an ONNX streaming graph and/or a calibrated pedalboard chain")
    p.add_argument("source", metavar="PRESET_OR_JSON", help="a parameter file, a preset file or a preset name")
    add_presets_option(p)
    p.add_argument("--onnx", metavar="FILE.onnx", help="write the exact streaming ONNX graph")
    p.add_argument("--pedalboard", metavar="FILE.json", help="write the calibrated pedalboard chain settings")
    p.add_argument("--calibrate-on", metavar="AUDIO",
                   help="track to calibrate the pedalboard chain on (default: a synthesised song)")
    p.add_argument("--calibration-seconds", type=float, default=20.0, help="excerpt length (default 20)")
    p.add_argument("--evaluations", type=int, default=200, help="CMA-ES budget in renders (default 200)")
    p.add_argument("--rate", type=int, default=SAMPLE_RATE,
                   help=f"the session's sample rate: the ONNX graph's default rate and the rate the pedalboard "
                        f"chain is calibrated at (default {SAMPLE_RATE})")

    p = sub.add_parser("export-check", help="measure the exports: exactness, pedalboard fidelity, render memory, "
                                            "Torch segments")
    p.add_argument("what", choices=("exactness", "pedalboard", "memory", "segments"))
    p.add_argument("--songs", default=str(DEFAULT_MUSIC),
                   help="folder of music (default ../shared/audio)")
    p.add_argument("--seconds", type=float, default=None, help="excerpt length (exactness 30, pedalboard 20)")
    p.add_argument("--thetas", type=int, default=None, help="random Θ (exactness 20, pedalboard 5)")
    p.add_argument("--n-songs", type=int, default=5, help="songs for the pedalboard and segments checks (default 5; segments: the longest)")
    p.add_argument("--evaluations", type=int, default=200, help="CMA-ES budget per case (default 200)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rate", type=int, default=SAMPLE_RATE,
                   help=f"exactness and pedalboard: the sample rate to check at (default {SAMPLE_RATE}; the "
                        f"songs are resampled to it; any of {P.CHAIN_RATES[0]}…{P.CHAIN_RATES[1]})")
    p.add_argument("--minutes", type=float, default=60.0, help="memory check: length of the synthesised file")
    p.add_argument("--backend", default="onnx", choices=("torch", "onnx", "pedalboard"), help="memory check backend")
    p.add_argument("--block", type=int, default=512, help="memory check block size")

    def check(args):
        if args.seconds is None:
            args.seconds = 30.0 if args.what == "exactness" else 20.0
        if args.thetas is None:
            args.thetas = {"exactness": 20, "segments": 3}.get(args.what, 5)
        return cmd_export_check(args)

    return {"export": cmd_export, "export-check": check}
