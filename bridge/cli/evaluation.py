"""`refmaster eval FOLDER`: systems side by side on pairs of different songs (the number we live by)."""

from __future__ import annotations

import argparse
from pathlib import Path

from engine import params as P
from engine.errors import RefmasterError
from engine.io.jsonfile import dumps_strict  # --json is strict JSON: null, never NaN

COLUMNS = [("af", "AF", "{:.4f}"), ("d_drv", "ΔDRV dB", "{:.2f}"), ("d_lufs", "ΔLUFS", "{:.2f}"),
           ("bark_db", "bark dB", "{:.2f}"), ("d_width", "Δwidth", "{:.3f}"), ("seconds", "s/track", "{:.1f}")]


#: FAD_musicnn (naturalness: distance to real music, lower is more natural), shown next to AF when measured.
FAD_COLUMN = ("fad_musicnn", "FAD", "{:.2f}")


def format_table(result: dict) -> str:
    columns = COLUMNS[:1] + [FAD_COLUMN] + COLUMNS[1:] if any("fad_musicnn" in s for s in result["summary"].values()) \
        else COLUMNS
    head = f"{'system':<15}" + "".join(f"{label:>10}" for _, label, _ in columns)
    lines = [f"{result.get('source', '')}: median over {result['pairs']} pairs of different songs "
             f"({result['seconds_per_excerpt']:g} s excerpts, seed {result['seed']}); output vs reference, lower is better",
             head]
    for name, s in result["summary"].items():
        lines.append(f"{name:<15}" + "".join(f"{fmt.format(s[k]):>10}" for k, _, fmt in columns))
    lines.append(f"pairs worse than the untouched input ({result['pairs']} pairs):")
    for name, s in result["summary"].items():
        if name != "input":
            lines.append(f"{name:<15}" + "".join(f"{s['worse_than_input'][k]:>10}" for k, _, _ in COLUMNS[:-1]))
    pinned = {n: s["pinned_masters"] for n, s in result["summary"].items() if "pinned_masters" in s}
    if pinned:
        lines.append("masters with a parameter pinned at a range limit: " +
                     ", ".join(f"{n} {k} of {result['pairs']}" for n, k in pinned.items()))
    if "ito_improves_af_fraction" in result:
        lines.append(f"ITO improves AF over ours-noito on {100 * result['ito_improves_af_fraction']:.0f}% of pairs")
    if columns is not COLUMNS:
        lines.append("FAD: FAD_musicnn of all of a system's masters against the real songs of the split (or folder)")
    return "\n".join(lines)


def format_curve(result: dict) -> str:
    lines = [f"{result['source']}: white-box master after N ITO steps, {result['pairs']} pairs of different songs "
             f"({result['seconds_per_excerpt']:g} s excerpts, seed {result['seed']}); AF median over pairs (to the "
             f"reference), FAD_musicnn over all pairs (to real music); lower is better",
             f"{'ITO steps':>10}{'AF':>10}{'FAD':>10}{'best step':>11}{'s/track':>10}"]
    for c in result["curve"]:
        lines.append(f"{c['steps']:>10}{c['af']:>10.4f}{c['fad_musicnn']:>10.2f}{c['best_step']:>11.0f}{c['seconds']:>10.1f}")
    lines.append(f"the default (master, serve, eval) is {P.ITO_STEPS} steps")
    return "\n".join(lines)


def _ito_curve(args, folder, pairs: int, seconds: float) -> int:
    from engine.mastering.ito_curve import ito_curve
    from engine.model.networks import load_model

    try:
        result = ito_curve(load_model("white-box", args.weights), folder, pairs=pairs, seconds=seconds, seed=args.seed,
                           ito_lr=args.lr, drv_weight=args.drv_weight,
                           corpus=Path(args.corpus) if args.corpus else None, split=args.split)
    except FileNotFoundError as e:
        raise RefmasterError(str(e)) from None
    print(dumps_strict(result, indent=2) if args.json else format_curve(result))
    return 0


def cmd_eval(args) -> int:
    from engine.mastering.evaluation import SYSTEMS, compare_systems
    from engine.model.networks import load_model

    if (args.folder is None) == (args.corpus is None):
        raise RefmasterError("give a FOLDER of songs or --corpus DIR (its test split), not both")
    folder = Path(args.folder) if args.folder else None
    if folder is not None and not folder.is_dir():
        raise RefmasterError(f"{folder}: not a folder")
    pairs = args.pairs if args.pairs is not None else (24 if args.corpus else 12)
    seconds = args.seconds if args.seconds is not None else (30.0 if args.corpus else 10.0)
    fad = args.fad if args.fad is not None else args.corpus is not None
    if fad or args.ito_curve:
        from engine.mastering.naturalness import check_enough_patches

        check_enough_patches(pairs, seconds)
    if args.ito_curve:
        return _ito_curve(args, folder, pairs, seconds)
    systems = [s.strip() for s in args.systems.split(",")] if args.systems else list(SYSTEMS)
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown:
        raise RefmasterError(f"unknown system(s) {', '.join(unknown)}; choose from {', '.join(SYSTEMS)}")
    if "matchering" in systems:
        try:
            import matchering  # noqa: F401
        except ImportError:
            if args.systems:
                raise RefmasterError("matchering is not installed: pip install 'refmaster[eval]'") from None
            systems.remove("matchering")
            print("note: matchering is not installed (pip install 'refmaster[eval]'); skipping it")
    models = {}
    if any(s in systems for s in ("ours", "ours-noito", "ito-theta")):
        models["white-box"] = load_model("white-box", args.weights)
    if "ours-blackbox" in systems:
        models["black-box"] = load_model("black-box", args.blackbox_weights)
    try:
        result = compare_systems(folder, systems, models, pairs=pairs, seconds=seconds, seed=args.seed,
                                 ito_steps=args.ito_steps, theta_steps=args.theta_steps, ito_lr=args.lr,
                                 drv_weight=args.drv_weight, corpus=Path(args.corpus) if args.corpus else None,
                                 split=args.split, fad=fad)
    except FileNotFoundError as e:
        raise RefmasterError(str(e)) from None
    if args.json:
        print(dumps_strict(result, indent=2))
    else:
        print(format_table(result))
    return 0


def cmd_eval_nudges(args) -> int:
    from engine.mastering.evaluation import evaluate_nudges
    from engine.model.networks import load_model

    folder = Path(args.folder)
    if not folder.is_dir():
        raise RefmasterError(f"{folder}: not a folder")
    try:
        r = evaluate_nudges(load_model("white-box", args.weights), folder, args.songs, args.seconds, args.steps)
    except FileNotFoundError as e:
        raise RefmasterError(str(e)) from None
    if args.json:
        print(dumps_strict(r, indent=2))
        return 0
    print(f"nudges on {len(r['songs'])} songs ({r['seconds']:g} s from the middle, each mastered towards the next "
          f"without ITO, {r['steps']} nudge steps); how far each moved its feature the right way "
          f"(bands in dB, width ratio, RMS, crest dB):")
    print(f"{'word':<12}" + "".join(f"{s[:12]:>13}" for s in r["songs"]) + "   right way")
    for w, m in r["moves"].items():
        print(f"{w:<12}" + "".join(f"{m[s]:>+13.3f}" for s in r["songs"]) + f"   {r['right_way'][w]}/{len(r['songs'])}")
    return 0


def register(sub) -> dict:
    p = sub.add_parser("eval", help="compare input, matchering and our systems on pairs of different songs")
    p.add_argument("folder", nargs="?", help="folder of songs (at least two)")
    p.add_argument("--corpus", metavar="DIR", help="pairs from the test split of a corpus (`refmaster corpus build`): "
                   "songs nobody trained on")
    p.add_argument("--split", choices=("test", "validation"), default="test",
                   help="with --corpus: the split the pairs come from (tune on validation, report on test)")
    p.add_argument("--pairs", type=int, help="pairs of different songs (default 12; 24 with --corpus)")
    p.add_argument("--seconds", type=float, help="excerpt length (default 10 s; 30 s with --corpus)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--systems", help="comma-separated subset of: input, matchering, ours-noito, ours, ours-blackbox, ito-theta")
    p.add_argument("--ito-steps", type=int, default=P.ITO_STEPS)
    p.add_argument("--lr", type=float, help="ITO learning rate on z_ref (default: the master command's)")
    p.add_argument("--drv-weight", type=float, help="weight of the dynamics term (default: the master command's)")
    p.add_argument("--theta-steps", type=int, default=P.THETA_STEPS, help="steps of the ITO-on-Θ baseline")
    p.add_argument("--weights", help="white-box weights instead of the shipped ones")
    p.add_argument("--blackbox-weights", help="black-box weights instead of the shipped ones")
    p.add_argument("--fad", action=argparse.BooleanOptionalAction, default=None,
                   help="FAD_musicnn per system, next to AF (default: on with --corpus, off with a FOLDER)")
    p.add_argument("--ito-curve", action="store_true",
                   help="instead of the systems: AF and FAD_musicnn of the white-box master after 0, 10, 25, 50, 100 ITO steps")
    p.add_argument("--json", action="store_true")
    n = sub.add_parser("eval-nudges", help="does each nudge word move its feature the right way on real songs?")
    n.add_argument("folder", help="folder of songs (at least two)")
    n.add_argument("--songs", type=int, default=5)
    n.add_argument("--seconds", type=float, default=10.0)
    n.add_argument("--steps", type=int, default=25, help="nudge ITO steps")
    n.add_argument("--weights", help="white-box weights instead of the shipped ones")
    n.add_argument("--json", action="store_true")
    return {"eval": cmd_eval, "eval-nudges": cmd_eval_nudges}
