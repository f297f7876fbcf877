"""`refmaster train` and `refmaster eval-synthetic`: the model commands."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from bridge.cli.options import DEFAULT_MUSIC as DEFAULT_DATA
from engine.errors import RefmasterError
from engine.io.jsonfile import dumps_strict  # --json is strict JSON: null, never NaN


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RefmasterError("--device cuda: no CUDA device is available here")
    return name


def cmd_train(args) -> int:
    import torch

    from engine.model.training import config_for, train

    device = _device(args.device)
    config = args.config or ("cuda" if device.startswith("cuda") else "cpu")
    cfg = replace(config_for(config, args.model), seed=args.seed)
    for field in ("steps", "batch", "lr"):
        if getattr(args, field) is not None:
            cfg = replace(cfg, **{field: getattr(args, field)})
    data = None if args.no_data else Path(args.data) if args.data else (DEFAULT_DATA if DEFAULT_DATA.is_dir() else None)
    if data is not None and not data.is_dir():
        raise RefmasterError(f"{data}: no such folder of training songs")
    if data is None and not args.corpus:
        print("note: no real music found; training on synthesised songs only")
    torch.set_num_threads(args.threads or torch.get_num_threads())
    out = Path(args.out or f"runs/{args.model}")
    corpus = Path(args.corpus) if args.corpus else None
    summary = train(cfg, out, data, device=device, resume=not args.fresh, minutes=args.minutes, corpus=corpus,
                    stats_path=Path(args.fxnorm_stats) if args.fxnorm_stats else None)
    print(dumps_strict({k: summary[k] for k in ("kind", "steps", "wall_time_s", "val_loss", "val_unprocessed_loss",
                                              "val_ratio_median")}, indent=2))
    print(f"weights: {out / (args.model + '.safetensors')}; curves: {out / 'loss.png'}, {out / 'train.csv'}")
    return 0


def cmd_ship(args) -> int:
    """Copy a trained run's weights into the package (float16), where `master` and `demo` find them."""
    import torch

    from engine.model.networks import MasteringModel, default_weights

    src = Path(args.weights)
    model = MasteringModel.load(src)
    dst = default_weights(model.kind)
    dst.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(model.meta, shipped_from=src.name, shipped_dtype="float16")
    model.save(dst, meta=meta, dtype=torch.float16)
    back = MasteringModel.load(dst)
    worst = max(float((a - b).abs().max()) for a, b in zip(model.state_dict().values(), back.state_dict().values()))
    print(f"{model.kind}: {src} -> {dst} ({dst.stat().st_size / 1e6:.1f} MB, float16; "
          f"largest weight rounding {worst:.2e})")
    return 0


def cmd_eval_synthetic(args) -> int:
    from engine.mastering.evaluation import eval_real_pairs, eval_synthetic
    from engine.model.networks import load_model

    data = Path(args.data) if args.data else DEFAULT_DATA
    if not data.is_dir():
        raise RefmasterError(f"{data}: no such folder (eval-synthetic needs the held-out real songs)")
    kinds = ["white-box", "black-box"] if args.model == "both" else [args.model]
    report = {}
    for kind in kinds:
        model = load_model(kind, args.weights if len(kinds) == 1 else None)
        try:
            syn = eval_synthetic(model, data, examples=args.examples, seed=args.seed)
        except FileNotFoundError as e:
            raise RefmasterError(str(e)) from None
        report[kind] = {"synthetic": {k: v for k, v in syn.items() if k != "rows"}}
        if args.pairs:
            pairs = eval_real_pairs(model, data, count=args.pairs, seed=args.seed)
            report[kind]["real_pairs"] = {k: v for k, v in pairs.items() if k != "rows"}
            report[kind]["real_pairs_rows"] = pairs["rows"]
        if args.rows:
            report[kind]["synthetic_rows"] = syn["rows"]
    if args.json:
        print(dumps_strict(report, indent=2))
        return 0
    for kind, r in report.items():
        s = r["synthetic"]
        print(f"{kind}: {s['examples']} examples from held-out {', '.join(s['held_out'])}")
        print(f"  multi-scale spectral loss, median: model {s['median_loss']:.4f} vs unprocessed "
              f"{s['median_unprocessed']:.4f}  (ratio of medians {s['ratio_of_medians']:.3f}, "
              f"median of ratios {s['median_ratio']:.3f}, improved on {100 * s['improved_fraction']:.0f}%)")
        for m, e in (s.get("param_error_by_module") or {}).items():
            if e["mean_abs_error_normalized"] is not None:
                print(f"  parameter error, {m:<10} {e['mean_abs_error_normalized']:.3f} (normalised, {e['examples']} examples)")
        if "real_pairs" in r:
            p = r["real_pairs"]
            print(f"  real pairs ({p['pairs']} x {p['seconds']:g} s, different songs, no ITO): AF distance reduced on "
                  f"{100 * p['improved_fraction']:.0f}% of pairs, median reduction {100 * p['median_reduction']:.0f}%")
    return 0


def register(sub) -> dict:
    p = sub.add_parser("train", help="train the reference encoder and a converter (resumable)")
    p.add_argument("--model", choices=["white-box", "black-box"], default="white-box")
    p.add_argument("--config", choices=["cpu", "cpu-corpus", "cuda"], help="named size (default: by device)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--data", help=f"folder of real songs (default: {DEFAULT_DATA} if present)")
    p.add_argument("--corpus", help="a corpus folder (`refmaster corpus build`): train on its train split, validate on its validation split")
    p.add_argument("--no-data", action="store_true", help="no folder of real songs besides --corpus")
    p.add_argument("--fxnorm-stats", help="f_norm statistics to train with (default: the shipped ones)")
    p.add_argument("--out", help="run folder (default: runs/MODEL)")
    p.add_argument("--steps", type=int)
    p.add_argument("--batch", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--minutes", type=float, help="stop after this much wall time (checkpointed)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int)
    p.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint in --out")
    p = sub.add_parser("ship", help="copy a trained run's weights into the package as the shipped model (float16)")
    p.add_argument("weights", help="RUN/white-box.safetensors or RUN/black-box.safetensors")
    p = sub.add_parser("eval-synthetic", help="held-out validation: spectral loss vs unprocessed, parameter error")
    p.add_argument("--model", choices=["white-box", "black-box", "both"], default="both")
    p.add_argument("--weights", help="a .safetensors file instead of the shipped weights")
    p.add_argument("--data", help=f"folder with the held-out songs (default: {DEFAULT_DATA})")
    p.add_argument("--examples", type=int, default=50)
    p.add_argument("--pairs", type=int, default=12, help="also run N real style-transfer pairs (0: skip)")
    p.add_argument("--seed", type=int, default=2024)
    p.add_argument("--rows", action="store_true", help="include per-example rows in --json")
    p.add_argument("--json", action="store_true")
    return {"train": cmd_train, "ship": cmd_ship, "eval-synthetic": cmd_eval_synthetic}
