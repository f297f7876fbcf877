"""The chain and audio commands: params, analyze, render, synth, fxnorm-stats."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bridge.cli.options import add_presets_option
from engine import params as P
from engine.errors import AudioError, RefmasterError
from engine.io.atomic import atomic_write_text, check_output
from engine.io.audio import MIN_SECONDS, READ_EXTENSIONS, WRITE_EXTENSIONS, load_audio, write_audio
from engine.io.jsonfile import dumps_strict  # --json is strict JSON: null, never NaN


def cmd_params(args) -> int:
    if args.json:
        print(json.dumps([s.to_dict(i + 1) for i, s in enumerate(P.PARAMS)], indent=2))
    else:
        print(P.params_table())
        print(f"\n{P.NUM_PARAMS} parameters. Hz, ms, Q and ratios map to 0…1 on a log scale.")
    return 0


def cmd_analyze(args) -> int:
    """The file is read and measured in blocks: bounded memory for any length."""
    from bridge.cli.report import analysis_table, check_plot_path, plot_analysis
    from engine.analysis.features import Analysis
    from engine.io.reader import AudioReader

    if args.plot:
        check_plot_path(args.plot, (args.file,))
    reader = AudioReader(args.file)
    analysis = Analysis()
    for block in reader.blocks():
        analysis.add(block)
    result = analysis.result()
    result["file"] = str(reader.path)
    result["source_sample_rate"] = reader.rate
    result["source_channels"] = reader.channels
    if args.json:
        print(dumps_strict(result, indent=2))
    else:
        print(f"{reader.path}  ({result['duration_s']:.1f} s; source {reader.rate} Hz, "
              f"{'mono' if reader.channels == 1 else 'stereo'})")
        print(analysis_table([result], [reader.path.name]))
    if args.plot:
        plot_analysis(args.plot, [result], [reader.path.name])
        print(f"plot: {args.plot}", file=sys.stderr)
    return 0


def chain_source(args) -> P.ChainParams:
    """Θ + switches for `render`/`export`: ``--params FILE``, ``--preset NAME`` or, for `render`,
    the parameters stored in the ``--onnx``/``--pedalboard`` file it is given."""
    params_file, preset = getattr(args, "params", None), getattr(args, "preset", None)
    if params_file and preset:
        raise RefmasterError("give --params FILE or --preset NAME, not both")
    if params_file:
        return P.ChainParams.load(params_file)
    if preset:
        from presets import PresetStore

        return PresetStore(getattr(args, "presets", None)).get(preset).chain
    if getattr(args, "onnx", None):
        from export.onnx_stream import onnx_file_params

        return onnx_file_params(args.onnx)
    if getattr(args, "pedalboard", None):
        from export.pedalboard_chain import PedalboardSettings

        return PedalboardSettings.load(args.pedalboard).params
    raise RefmasterError("give the chain parameters: --params FILE or --preset NAME")


def cmd_render(args) -> int:
    """Stream INPUT through the chain (any backend) to OUT, in bounded memory."""
    from export.factory import make_chain
    from export.render import render_file

    chain = chain_source(args)  # parameter problems first: cheaper than decoding audio
    if args.onnx and args.backend != "onnx":
        raise RefmasterError("--onnx FILE needs --backend onnx")
    if args.pedalboard and args.backend != "pedalboard":
        raise RefmasterError("--pedalboard FILE needs --backend pedalboard")
    out = Path(args.output)
    if out.suffix.lower() not in (".wav", ".flac"):
        raise AudioError(f"{out}: output must be .wav or .flac")
    check_output(out, (args.input, args.params, args.onnx, args.pedalboard))
    if args.block < 1:
        raise RefmasterError(f"--block must be at least 1, got {args.block}")
    streaming = make_chain(args.backend, chain, onnx_model=args.onnx, pedalboard_settings=args.pedalboard)
    r = render_file(args.input, out, streaming, block=args.block)
    print(f"rendered {r.input.name} -> {out}  ({r.seconds:.1f} s, {r.source_rate} Hz, 24-bit; "
          f"{r.backend} backend, {r.block}-sample blocks, {r.realtime_factor:.0f}x real time)")
    print(f"loudness {r.loudness_in:.1f} -> {r.loudness_out:.1f} LUFS, true peak {r.true_peak_db:.1f} dBTP")
    if r.clipped:
        print(f"warning: {r.clipped} samples exceeded full scale and were clipped in the file "
              f"(lower gain.gain or limiter.threshold)", file=sys.stderr)
    return 0


def cmd_synth(args) -> int:
    from engine.model.synth import synth_song_with_info

    if not MIN_SECONDS <= args.seconds <= 3600:  # also refuses nan
        raise RefmasterError(f"--seconds must be between {MIN_SECONDS:g} and 3600, got {args.seconds:g}")
    if Path(args.output).suffix.lower() not in WRITE_EXTENSIONS:
        raise AudioError(f"{args.output}: output must be .wav or .flac")
    check_output(args.output)
    audio, info = synth_song_with_info(args.seed, args.seconds)
    write_audio(args.output, audio)
    print(f"{args.output}: {info.describe()}, {args.seconds:g} s")
    return 0


def cmd_fxnorm_stats(args) -> int:
    from tqdm import tqdm

    from engine.model.fxnorm import STATS_PATH, compute_stats

    folder = Path(args.folder)
    if not folder.is_dir():
        raise RefmasterError(f"{folder}: not a folder")
    out = check_output(Path(args.output) if args.output else STATS_PATH)
    if args.corpus:
        from engine.model.corpus import split_files

        files = split_files(folder, "train")  # the statistics of what the models train on, never of test songs
    else:
        files = sorted(f for f in folder.iterdir() if f.suffix.lower() in READ_EXTENSIONS)
    if not files:
        raise RefmasterError(f"{folder}: no audio files ({', '.join(READ_EXTENSIONS)})")
    songs = ((f.name, load_audio(f).audio) for f in tqdm(files, desc="analysing", unit="song"))
    stats = compute_stats(songs)
    atomic_write_text(out, json.dumps(stats, indent=1) + "\n")
    print(f"{out}: {len(stats['songs'])} songs, target {stats['loudness_lufs']:.1f} LUFS, "
          f"side/mid {stats['side_mid_ratio']:.3f}")
    return 0


def register(sub) -> dict:
    """Add this module's subcommands to the `refmaster` parser; return name -> handler."""
    p = sub.add_parser("params", help="list the 46 chain parameters with units and ranges")
    p.add_argument("--json", action="store_true", help="machine-readable list")

    p = sub.add_parser("analyze", help="loudness, peaks, crest, width, DRV and bark balance of a file")
    p.add_argument("file")
    p.add_argument("--json", action="store_true", help="machine-readable report")
    p.add_argument("--plot", metavar="PNG", help="also save the bark balance as a plot")

    p = sub.add_parser("render", help="render a file through the chain, streaming (Torch, ONNX or pedalboard)")
    p.add_argument("input")
    p.add_argument("--params", metavar="FILE.json", help="chain parameters (see `refmaster params`)")
    p.add_argument("--preset", metavar="NAME", help="chain parameters of a saved preset")
    add_presets_option(p)
    p.add_argument("--backend", choices=("torch", "onnx", "pedalboard"), default="torch",
                   help="torch: the reference render; onnx: the exact streaming graph; pedalboard: native "
                        "plugins, calibrated (default: torch)")
    p.add_argument("--block", type=int, default=512, metavar="N", help="samples per block (default 512); the chain runs at the file's rate (22.05–192 kHz; "
                        "other rates at 44.1 kHz, resampled)")
    p.add_argument("--onnx", metavar="FILE.onnx", help="an exported ONNX chain to run (with --backend onnx)")
    p.add_argument("--pedalboard", metavar="FILE.json",
                   help="calibrated pedalboard settings from `refmaster export --pedalboard` (with --backend pedalboard)")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help=".wav or .flac (24-bit)")

    p = sub.add_parser("synth", help="write a synthesised test song")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seconds", type=float, default=20.0)

    p = sub.add_parser("fxnorm-stats", help="compute the Fx-normalisation statistics from a folder of songs")
    p.add_argument("folder", help="a folder of songs, or with --corpus a corpus folder")
    p.add_argument("--corpus", action="store_true", help="FOLDER is a corpus: use its train split only")
    p.add_argument("-o", "--output", help="where to write (default: the engine's data file)")
    return {"params": cmd_params, "analyze": cmd_analyze, "render": cmd_render, "synth": cmd_synth,
            "fxnorm-stats": cmd_fxnorm_stats}
