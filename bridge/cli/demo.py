"""`refmaster demo`: the built-in default job, runnable on a fresh machine with no audio of your own.

Synthesises a mixed song and a *different* song mastered in a distinct style (a fixed, seeded
draw of the training manipulation f: louder, brighter or darker, wider or narrower, compressed
and limited), masters the first towards the second with the shipped white-box model and ITO, and
writes input, reference, master, parameters, preset and plot to a folder, printing where.
"""

from __future__ import annotations

from pathlib import Path


def run_demo(out_dir: Path, seconds: float = 20.0, seed: int = 7, ito_steps: int = 100) -> Path:
    from bridge.cli.report import params_change_table, plot_master
    from engine.analysis.features import analyze
    from engine.io.audio import write_audio
    from engine.mastering.job import MasterSettings, master
    from engine.model.networks import load_model
    from engine.model.synth import demo_pair
    from presets import Preset, PresetStore, fingerprint

    out_dir.mkdir(parents=True, exist_ok=True)
    song, info, reference, ref_info = demo_pair(seconds, seed)
    print(f"input:     {info.describe()}")
    print(f"reference: {ref_info.describe()}, mastered loud, bright and wide")
    model = load_model("white-box")
    from tqdm import tqdm

    bar = tqdm(total=ito_steps, desc="ITO", unit="step", dynamic_ncols=True)

    def on_step(phase, step, loss):
        if step > 0:
            bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}")

    try:
        result = master(model, song, reference, MasterSettings(ito_steps=ito_steps), on_step=on_step)
    finally:
        bar.close()
    write_audio(out_dir / "input.wav", song)
    write_audio(out_dir / "reference.wav", reference)
    clipped = write_audio(out_dir / "master.wav", result.output)
    (out_dir / "params.json").write_text(result.chain.to_json())
    store = PresetStore(out_dir / "presets")
    preset = Preset.new("demo reference", result.chain, fingerprint=fingerprint(reference), reference="reference.wav",
                        z_ref=result.z_ref.tolist(), model_version=f"white-box/{model.meta.get('steps', 'unknown')}-steps",
                        ito={"settings": {"steps": ito_steps}, "loss_history": result.ito.losses},
                        notes="made by refmaster demo")
    preset_path = store.save(preset)
    analyses = [analyze(song), analyze(result.output), analyze(reference)]
    plot_master(out_dir / "master.png", song, result.output, reference, analyses)
    print(params_change_table(result.chain_before_ito, result.chain, result.gain_reduction))
    print(f"\nITO: loss {result.ito.losses[0]:.4f} -> {min(result.ito.losses):.4f} in {result.ito.steps_run} steps")
    print(f"\n{'':12}{'input':>10}{'master':>10}{'reference':>11}")
    for key, label in (("loudness_lufs", "LUFS"), ("crest_db", "crest dB"), ("width", "width")):
        print(f"{label:12}" + "".join(f"{a[key]:>10.2f}" for a in analyses))
    if clipped:
        print(f"note: {clipped} samples clipped at full scale in master.wav")
    print(f"\nwrote {out_dir}/: input.wav, reference.wav, master.wav, params.json, master.png, {preset_path.relative_to(out_dir)}")
    print(f"done in {result.seconds['total']:.1f} s of mastering")
    return out_dir


def register(sub) -> dict:
    p = sub.add_parser("demo", help="synthesise a song and a reference, master one towards the other (main job)")
    p.add_argument("-o", "--output", default="refmaster-demo", help="output folder")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--ito-steps", type=int, default=100)
    return {"demo": cmd_demo}


def cmd_demo(args) -> int:
    run_demo(Path(args.output), args.seconds, args.seed, args.ito_steps)
    return 0
