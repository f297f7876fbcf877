"""`refmaster eval-prompts FOLDER`: do the genre prompts move real masters as the ITO-Master paper reports?

See :mod:`engine.mastering.prompt_eval`: each song is mastered towards the next without ITO, then
with each prompt ("classical", "metal", "hip-hop" by default); the table gives the tagger's
probability of the prompted tag before and after, spectral centroid, crest factor and RMS before
and after, and per song which of the paper's claims hold. ``--plot`` draws the first song's
features; ``--json`` is machine-readable.
"""

from __future__ import annotations

import json
from pathlib import Path

from engine.errors import RefmasterError

FEATURES = (("centroid_hz", "centroid Hz", "{:.0f}"), ("crest_db", "crest dB", "{:.2f}"), ("rms_db", "RMS dBFS", "{:.2f}"))


def format_report(r: dict) -> str:
    lines = [f"prompts on {len(r['songs'])} songs ({r['seconds']:g} s from the middle, each mastered towards the "
             f"next without ITO, {r['steps']} prompt steps)",
             f"{'song':<26}{'prompt':<11}{'p before':>10}{'p after':>10}"
             + "".join(f"{label + ' before -> after':>30}" for _, label, _ in FEATURES)]
    for s in r["songs"]:
        for p in r["prompts"]:
            cells = "".join(f"{(fmt.format(s['before'][k]) + ' -> ' + fmt.format(s['after'][p][k])):>30}"
                            for k, _, fmt in FEATURES)
            lines.append(f"{s['song'][:25]:<26}{p:<11}{s['p_before'][p]:>10.4f}{s['p_after'][p]:>10.4f}{cells}")
    n = len(r["songs"])
    lines.append("tag probability up: " + ", ".join(f"{p} {k}/{n}" for p, k in r["probability_up"].items()))
    if "claims" in r:
        lines.append("the paper's claims (per song, among the three prompted masters): "
                     + "; ".join(f"{c} {k}/{n}" for c, k in r["claims"].items()))
    return "\n".join(lines)


def plot_first_song(path: str, r: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from engine.io.atomic import atomic_path

    s = r["songs"][0]
    names = ["before"] + list(r["prompts"])
    fig, axes = plt.subplots(1, len(FEATURES), figsize=(4 * len(FEATURES), 3.4))
    for ax, (key, label, _) in zip(axes, FEATURES):
        values = [s["before"][key]] + [s["after"][p][key] for p in r["prompts"]]
        ax.bar(names, values, color=["0.6"] + [f"C{i}" for i in range(len(r["prompts"]))])
        low, high = min(values), max(values)
        pad = 0.15 * (high - low or 1.0)
        ax.set_ylim(low - pad, high + pad)
        ax.set_title(label)
        ax.tick_params(axis="x", rotation=20)
    fig.suptitle(f"{s['song']} mastered towards {s['reference']}: before and after each prompt")
    fig.tight_layout()
    with atomic_path(Path(path), suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def cmd_eval_prompts(args) -> int:
    from engine.mastering.nudge import parse_nudges
    from engine.mastering.prompt_eval import evaluate_prompts
    from engine.model.dataset import list_songs
    from engine.model.networks import load_model

    folder = Path(args.folder)
    if not folder.is_dir():
        raise RefmasterError(f"{folder}: not a folder")
    prompts = parse_nudges(args.prompts)
    files = list_songs(folder)[: args.songs]
    try:
        r = evaluate_prompts(load_model("white-box", args.weights), files, prompts, args.seconds, args.steps)
    except FileNotFoundError as e:
        raise RefmasterError(f"{folder}: {e}") from None
    if args.plot:
        plot_first_song(args.plot, r)
    print(json.dumps(r, indent=2) if args.json else format_report(r))
    return 0


def register(sub) -> dict:
    p = sub.add_parser("eval-prompts", help="do genre prompts move real masters the way the ITO-Master paper reports?")
    p.add_argument("folder", help="folder of songs (at least two)")
    p.add_argument("--songs", type=int, default=5)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--steps", type=int, default=50, help="prompt (nudge) ITO steps")
    p.add_argument("--prompts", default="classical, metal, hip-hop", help="comma-separated prompts")
    p.add_argument("--weights", help="white-box weights instead of the shipped ones")
    p.add_argument("--plot", metavar="PNG", help="the first song's features before and after each prompt")
    p.add_argument("--json", action="store_true")
    return {"eval-prompts": cmd_eval_prompts}
