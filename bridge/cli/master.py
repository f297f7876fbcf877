"""`refmaster master INPUT --ref REF -o OUT`: the producer's main job.

Loads both tracks, masters the input towards the reference (Φ, Ψ, ITO, optional nudges: see
``engine.mastering.job``), writes a 24-bit master at the input's sample rate and length, prints Θ in
real units with what ITO moved, and saves a preset for the reference in the preset store
(updating the one that already exists for that reference). The output file is written atomically
at the very end, so Ctrl-C during ITO leaves no half-written file.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np

from bridge.cli.options import add_presets_option, add_threads_option
from engine import params as P
from engine import runtime
from engine.errors import AudioError, RefmasterError
from engine.runtime import check_threads, use_threads
from engine.io.audio import SAMPLE_RATE, load_audio, resample, write_audio
from engine.io.jsonfile import dumps_strict  # --json is strict JSON: null, never NaN

#: The shortest input/reference `master` accepts (ITO needs a little material).
MIN_MASTER_SECONDS = 1.0


def nudge_words(args):
    """--nudge and --prompt together: one list of words for the nudge phase (None when neither is given)."""
    return ", ".join(w for w in (args.nudge, args.prompt) if w) or None


def _fit_length(y: np.ndarray, n: int) -> np.ndarray:
    return np.pad(y, ((0, 0), (0, max(0, n - y.shape[1]))))[:, :n]


def _at_model_rate(native):
    """The input as the models read it: at SAMPLE_RATE (resampled if the file is at another rate)."""
    from engine.io.audio import LoadedAudio

    if native.rate == SAMPLE_RATE:
        return native
    return LoadedAudio(resample(native.audio, native.rate, SAMPLE_RATE), native.path, native.source_rate,
                       native.source_channels, native.source_frames)


def _master_at_file_rate(native, result):
    """The master at the input file's own rate, when the chain runs at it (white-box; 22.05–192 kHz):
    f_norm and the chain with the final Θ applied to the decoded input itself, not to a 44.1 kHz
    copy, so the audio path is never resampled (Φ, Ψ, ITO and the matches read the 44.1 kHz copy;
    Θ is in real units, so it means the same at every rate). None where that does not apply: the
    44.1 kHz render is the master, resampled back if the file is at another rate (black-box, whose
    network runs at 44.1 kHz only, and rates outside the chain's)."""
    from engine.rates import chain_rate

    if result.chain is None or native.rate == SAMPLE_RATE or chain_rate(native.rate) != native.rate:
        return None
    from engine.dsp.chain import render_offline
    from engine.model.fxnorm import fx_normalize, load_stats

    return render_offline(fx_normalize(native.audio, load_stats(), native.rate), result.chain, native.rate)


def _settings(args):
    from engine.mastering.job import MasterSettings

    steps = P.check_steps(args.ito_steps if args.ito_steps is not None else
                          (P.THETA_STEPS if args.ito_target == "params" else P.ITO_STEPS), "--ito-steps", allow_zero=True)
    if args.lr is not None and not (0 < args.lr <= 1):
        raise RefmasterError("--lr must be in (0, 1]")
    if args.drv_weight is not None and not (0 <= args.drv_weight <= 10):
        raise RefmasterError("--drv-weight must be between 0 and 10")
    d = MasterSettings()
    lr = args.lr if args.lr is not None and args.ito_target == "embedding" else d.lr
    theta_lr = args.lr if args.lr is not None and args.ito_target == "params" else d.theta_lr
    return MasterSettings(ito=not args.no_ito and steps > 0, ito_steps=steps, lr=lr,
                          theta_lr=theta_lr, patience=args.patience, ito_target=args.ito_target,
                          match_loudness=not args.no_loudness_match, match_dynamics=not args.no_dynamics_match,
                          drv_weight=d.drv_weight if args.drv_weight is None else args.drv_weight,
                          theta_steps=steps if args.ito_target == "params" else P.THETA_STEPS,
                          nudge=nudge_words(args))


def _inputs(args):
    """Everything checked and loaded before the heavy work: output path, settings, the three
    tracks, the preset store and an existing preset for this reference."""
    from bridge.cli.report import check_plot_path
    from engine.io.atomic import check_output
    from engine.mastering.nudge import parse_nudges
    from presets import PresetStore, fingerprint

    out = Path(args.output)
    if out.suffix.lower() not in (".wav", ".flac"):
        raise AudioError(f"{out}: output must be .wav or .flac")
    inputs = (args.input, args.ref, args.ito_ref, args.weights)
    check_output(out, inputs)  # before ~20 s of work: never over an input, never unwritable
    if args.plot:
        check_plot_path(args.plot, inputs + (out,))
    if nudge_words(args):
        parse_nudges(nudge_words(args))  # fail before the heavy work
    settings = _settings(args)
    if args.ito_target == "params" and args.model != "white-box":
        raise RefmasterError("--ito-target params needs --model white-box (the black-box model has no parameters)")
    store = PresetStore(args.presets)
    if args.model == "white-box":
        store.check_writable()  # the preset is saved after the work: a folder that refuses it says so now
    if _is_long(args.input):   # decoded to disk, mastered in segments (bounded memory)
        for option, given in (("--plot", args.plot), ("--model black-box", args.model == "black-box")):
            if given:
                raise RefmasterError(f"{args.input}: {option} needs the whole track in memory (inputs up to "
                                     f"{_keep_minutes()} minutes)")
        native, x = None, _decode_long(args.input)
    else:
        native = load_audio(args.input, min_seconds=MIN_MASTER_SECONDS, rate=None)   # the file's own rate
        x = _at_model_rate(native)
    ref = load_audio(args.ref, min_seconds=MIN_MASTER_SECONDS)
    ito_ref = load_audio(args.ito_ref, min_seconds=MIN_MASTER_SECONDS) if args.ito_ref else None
    fp = fingerprint(ref.audio)
    existing = store.find_by_fingerprint(fp)
    z_start = None
    if existing is not None:
        if args.from_preset:
            if existing.z_ref is None:
                raise RefmasterError(f"preset '{existing.name}' has no reference embedding to start from")
            z_start = np.asarray(existing.z_ref, dtype=np.float32)
            print(f"starting from preset '{existing.name}'", file=sys.stderr)
        else:
            print(f"note: preset '{existing.name}' exists for this reference (modified {existing.modified}); "
                  f"--from-preset starts from it, otherwise it is updated with this result", file=sys.stderr)
    return out, settings, native, x, ref, ito_ref, store, fp, existing, z_start


def _run(args, model, settings, x, ref, ito_ref, z_start):
    """The mastering job with a progress bar per phase."""
    from tqdm import tqdm

    from engine.mastering.job import master

    bars = {}

    def on_step(phase, step, loss):
        if phase not in bars:
            total = settings.ito_steps if phase == "ito" and settings.ito_target == "embedding" else \
                (settings.theta_steps if phase == "ito" else settings.nudge_steps)
            bars[phase] = tqdm(total=total, desc="ITO" if phase == "ito" else "nudge", unit="step",
                               disable=args.quiet, dynamic_ncols=True)
        b = bars[phase]
        if step > 0:
            b.update(1)
        b.set_postfix(loss=f"{loss:.4f}")

    try:
        result = master(model, getattr(x, "audio", x), ref.audio, settings,   # a long input: its DecodedTrack
                        ito_reference=ito_ref.audio if ito_ref else None,
                        z_start=z_start, on_step=on_step)
    finally:
        for b in bars.values():
            b.close()
    return result


def _save_preset(args, model, settings, result, store, fp, existing):
    """The result as the preset of this reference (white-box); its path, or None."""
    from presets import Preset

    ito_info = {"settings": {k: v for k, v in settings.as_dict().items() if v is not None and not isinstance(v, (list, dict))},
                "loss_history": (result.ito.losses if result.ito else []) + (result.nudge.losses if result.nudge else [])}
    preset_path = None
    if result.chain is not None:
        name = args.preset_name or (existing.name if existing is not None else Path(args.ref).stem)
        version = f"{model.kind}/{model.meta.get('steps', 'unknown')}-steps"
        if existing is not None and existing.name == name and not existing.factory:
            preset = existing.updated(chain=result.chain, z_ref=result.z_ref.tolist(), ito=ito_info, model_version=version)
        else:
            preset = Preset.new(name, result.chain, fingerprint=fp, reference=Path(args.ref).name,
                                z_ref=result.z_ref.tolist(), ito=ito_info, model_version=version,
                                notes=f"mastered {Path(args.input).name} towards {Path(args.ref).name}")
        preset_path = store.save(preset)
    return preset_path


def cmd_master(args) -> int:
    t0 = time.monotonic()  # stage times for the report (`refmaster bench master` reads them)
    threads = check_threads(args.threads)
    from bridge.cli.report import params_change_table, plot_master
    from engine.model.networks import load_model

    t_import = time.monotonic()
    out, settings, native, x, ref, ito_ref, store, fp, existing, z_start = _inputs(args)
    t_decode = time.monotonic()
    choice = use_threads(threads)  # after decoding: a window long enough to judge the other processes' load
    model = load_model(args.model, args.weights)
    t_model = time.monotonic()
    if z_start is not None and z_start.shape[0] != model.cfg.embed_dim:
        raise RefmasterError(f"preset '{existing.name}' was made with another model (embedding size {z_start.shape[0]})")
    result = _run(args, model, settings, x, ref, ito_ref, z_start)
    t_master = time.monotonic()
    if result.output is None:   # a long input: the master streamed to the file, analysed on the way
        from engine.analysis.features import Analysis
        from engine.io.stream import write_blocks

        a_out = Analysis(x.source_rate, spectrum=False)
        clipped = write_blocks(out, _long_output(result, x, a_out.add), x.source_rate)
    else:
        y = _master_at_file_rate(native, result)
        del native
        if y is None:
            y = result.output if x.source_rate == SAMPLE_RATE else resample(result.output, SAMPLE_RATE, x.source_rate)
        y = _fit_length(y, x.source_frames)
        clipped = write_audio(out, y, x.source_rate)
    t_write = time.monotonic()
    preset_path = _save_preset(args, model, settings, result, store, fp, existing)
    t_preset = time.monotonic()
    if result.output is None:
        a_in, a_out, a_ref = x.analysis.result(), a_out.result(), _analyses([(ref.audio, SAMPLE_RATE)], False, 1)[0]
        x.close()
    else:
        a_in, a_out, a_ref = _analyses([(x.audio, SAMPLE_RATE), (y, x.source_rate), (ref.audio, SAMPLE_RATE)],
                                       spectrum=bool(args.plot), threads=choice.threads)
    result.seconds.update(startup=t0 - runtime.START.wall, imports=t_import - t0, decode=t_decode - t_import,
                          model_load=t_model - t_decode, write=t_write - t_master, preset_save=t_preset - t_write,
                          analysis=time.monotonic() - t_preset)
    if args.plot:
        plot_master(args.plot, x.audio, result.output, ref.audio, [a_in, a_out, a_ref])
    report = {
        "input": str(x.path), "reference": str(ref.path), "output": str(out), "model": model.kind,
        "ito": None if result.ito is None else {"target": settings.ito_target, "steps_run": result.ito.steps_run,
                                                  "best_step": result.ito.best_step, "losses": result.ito.losses,
                                                  "moved": result.ito.moved()},
        "nudge": None if result.nudge is None else {"words": result.nudge_words, "losses": result.nudge.losses,
                                                      "moved": result.nudge.moved()},
        "loudness_match": result.loudness,
        "dynamics_match": result.dynamics,
        "tonal_match": result.tonal,
        "gain_reduction_db_p95": result.gain_reduction,
        "pinned": P.pinned(result.chain.values) if result.chain else None,
        "params": result.chain.to_dict() if result.chain else None,
        "analysis": {"input": _brief(a_in), "output": _brief(a_out), "reference": _brief(a_ref)},
        "seconds": result.seconds, "preset": str(preset_path) if preset_path else None, "clipped_samples": clipped,
        "threads": choice.as_dict(),
    }
    if args.json:
        print(dumps_strict(report, indent=2))
        return 0
    if result.chain is not None:
        print(params_change_table(result.chain_before_ito, result.chain, result.gain_reduction))
    if result.ito is not None:
        print(f"\nITO ({settings.ito_target}): loss {result.ito.losses[0]:.4f} -> {min(result.ito.losses):.4f}, "
              f"best of {result.ito.steps_run} steps at step {result.ito.best_step}")
        for key, a, b in result.ito.moved():
            print(f"  moved most: {key:<32} {a:9.3g} -> {b:9.3g} {P.spec(key).unit}")
    if result.loudness is not None:
        m = result.loudness
        print(f"loudness match: {m['before_lufs']:.1f} -> {m['after_lufs']:.1f} LUFS (reference {m['target_lufs']:.1f}), "
              f"make-up gain {m['gain_change_db']:+.1f} dB" + (" (gain at its limit)" if m["at_limit"] else ""))
    if result.dynamics is not None and math.isfinite(result.dynamics["before_drv_db"]):
        m = result.dynamics
        print(f"dynamics match: DRV {m['before_drv_db']:.2f} -> {m['after_drv_db']:.2f} dB (reference "
              f"{m['target_drv_db']:.2f}), limiter threshold {m['threshold_change_db']:+.1f} dB")
    if result.tonal is not None:
        print(f"tonal-balance match: mid/side bark balance and width {result.tonal['before_db']:.2f} -> "
              f"{result.tonal['after_db']:.2f} dB from the reference's (EQ and width fitted)")
    if result.nudge is not None:
        print(f"nudge ({', '.join(result.nudge_words)}): loss {result.nudge.losses[0]:.4f} -> {min(result.nudge.losses):.4f}")
        for key, a, b in result.nudge.moved():
            print(f"  moved most: {key:<32} {a:9.3g} -> {b:9.3g} {P.spec(key).unit}")
    print(f"\n{'':14}{'input':>12}{'master':>12}{'reference':>12}")
    for key, label, fmt in (("loudness_lufs", "LUFS", "{:.1f}"), ("true_peak_dbtp", "true peak", "{:.1f}"),
                            ("crest_db", "crest dB", "{:.1f}"), ("width", "width", "{:.3f}"), ("drv_db", "DRV dB", "{:.2f}")):
        print(f"{label:14}" + "".join(f"{fmt.format(a[key]):>12}" for a in (a_in, a_out, a_ref)))
    print(f"\nwrote {out} ({x.seconds:.1f} s, {x.source_rate} Hz, 24-bit) in {result.seconds['total']:.1f} s")
    if preset_path:
        print(f"preset: {preset_path}")
    if args.plot:
        print(f"plot: {args.plot}")
    if clipped:
        print(f"warning: {clipped} samples exceeded full scale and were clipped", file=sys.stderr)
    return 0


def _keep_minutes() -> int:
    from engine.mastering.track import KEEP_SECONDS

    return KEEP_SECONDS // 60


def _is_long(path) -> bool:
    """Whether an input is too long to hold (its header says; one that declares no length is held)."""
    from engine.io.stream import track_seconds
    from engine.mastering.track import KEEP_SECONDS

    seconds = track_seconds(path)
    return seconds is not None and seconds > KEEP_SECONDS


def _decode_long(path):
    """A long input decoded once to disk (engine.io.stream.DecodedTrack), analysed on the way."""
    from engine.analysis.features import Analysis
    from engine.io.stream import DecodedTrack

    analysis = Analysis(spectrum=False)
    x = DecodedTrack(path, min_seconds=MIN_MASTER_SECONDS, on_block=analysis.add)
    x.analysis = analysis
    return x


def _long_output(result, x, on_block):
    """The master of a long input block by block, at the file's rate and length (engine.io.resample)."""
    from engine.io.resample import StreamingResampler

    resampler = StreamingResampler(SAMPLE_RATE, x.source_rate) if x.source_rate != SAMPLE_RATE else None
    left = x.source_frames

    def emit(y):
        nonlocal left
        y = y[:, :left]
        left -= y.shape[1]
        on_block(y)
        return y

    for y in result.blocks():
        y = resampler.process(y) if resampler is not None else y
        if y.shape[1] and left:
            yield emit(y)
    if resampler is not None and left:
        yield emit(resampler.flush())
    if left > 0:
        yield emit(np.zeros((2, left), np.float32))


def _analyses(signals, spectrum: bool, threads: int) -> list:
    """:func:`engine.analysis.features.analyze` of each ``(audio, rate)``, side by side on the threads
    the job had (their filters, resampling and FFTs run outside the GIL); the bark balance only for a plot."""
    from concurrent.futures import ThreadPoolExecutor

    from engine.analysis.features import analyze

    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(signals)))) as pool:
        return list(pool.map(lambda s: analyze(s[0], s[1], spectrum=spectrum), signals))


def _brief(a: dict) -> dict:
    return {k: a[k] for k in ("loudness_lufs", "true_peak_dbtp", "crest_db", "width", "imbalance", "drv_db")}


def register(sub) -> dict:
    p = sub.add_parser("master", help="master a track towards a reference (style transfer + ITO)")
    p.add_argument("input")
    p.add_argument("--ref", required=True, help="the reference track whose master you like")
    p.add_argument("-o", "--output", required=True, help=".wav or .flac (24-bit, input's rate and length)")
    p.add_argument("--model", choices=["white-box", "black-box"], default="white-box")
    p.add_argument("--weights", help="a .safetensors file instead of the shipped weights")
    p.add_argument("--no-ito", action="store_true", help="style transfer only")
    p.add_argument("--ito-steps", type=int, help="ITO steps (default: 100 on z_ref, 2000 on Θ; 0: no ITO)")
    p.add_argument("--lr", type=float, help="ITO learning rate (RAdam; default: engine.mastering.job.MasterSettings)")
    p.add_argument("--patience", type=int, default=5, help="stop after this many steps without improvement")
    p.add_argument("--no-loudness-match", action="store_true",
                   help="leave the make-up gain where Ψ/ITO put it (default: match the reference's loudness)")
    p.add_argument("--no-dynamics-match", action="store_true",
                   help="leave the limiter threshold where Ψ/ITO put it (default: match the reference's DRV)")
    p.add_argument("--drv-weight", type=float,
                   help="weight of the dynamics (DRV) term in the ITO objective; 0 = the paper's plain AF loss")
    p.add_argument("--ito-ref", help="optimise towards this track instead (merging styles)")
    p.add_argument("--ito-target", choices=["embedding", "params"], default="embedding",
                   help="what ITO optimises: z_ref (default) or Θ directly (the paper's baseline, 2000 steps by default)")
    p.add_argument("--nudge", help='e.g. "brighter, wider" or "metal, brighter": nudge words and prompt tags (docs/prompts.md)')
    p.add_argument("--prompt", help='a genre or mood, e.g. "hip-hop": any tag of musicnn\'s two vocabularies (docs/prompts.md); '
                   "combines with --nudge")
    p.add_argument("--plot", metavar="PNG", help="input / master / reference at a glance")
    p.add_argument("--json", action="store_true", help="machine-readable report")
    add_presets_option(p)
    add_threads_option(p)
    p.add_argument("--preset-name", help="name of the preset to save (default: the reference's file name)")
    p.add_argument("--from-preset", action="store_true", help="start from the stored preset of this reference")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return {"master": cmd_master}
