"""Training Φ jointly with a converter (`refmaster train`).

Each step draws a batch from :class:`engine.model.dataset.ExampleSource` (x_in = f1(f_norm(A)),
reference f2(B), target y = f2(A)), runs Φ on the reference and the converter on x_in, and
minimises the multi-scale spectral loss on L/R/M/S with RAdam (SPEC.md). Seeded; the loss per
step and the validation loss are written as CSV and plotted as PNG; a checkpoint (model,
optimiser, data stream position, random states) is written regularly and a run resumes from it.
Runs on the CPU with a small configuration and on CUDA with a larger one.
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import torch
from tqdm import tqdm

from engine.analysis.losses import MultiScaleSpectralLoss
from engine.errors import UsageError
from engine.io.atomic import atomic_path
from engine.model.corpus import split_files
from engine.model.dataset import CORPUS_EXCERPT_SECONDS, HELD_OUT, ExampleSource, list_songs, load_songs, synth_entry
from engine.model.fxnorm import load_stats
from engine.model.networks import MasteringModel, ModelConfig


@dataclass
class TrainConfig:
    kind: str = "white-box"
    steps: int = 2000
    batch: int = 8
    seg_seconds: float = 3.0        # A: input and target
    ref_seconds: float = 5.0        # B: reference
    lr: float = 5e-4
    lr_min: float = 2e-5
    warmup: int = 100
    seed: int = 0
    synth_pool: int = 16
    synth_seconds: float = 12.0
    synth_refresh_every: int = 4    # steps between new synthesised songs
    real_prob: float = 0.35
    val_every: int = 100
    val_examples: int = 32
    ckpt_every: int = 50
    grad_clip: float = 1.0
    max_minutes: Optional[float] = None  # wall-clock cap (checkpointed stop)


#: Named configurations: "cpu" trains here (2 cores) in under two hours (the shipped white-box:
#: 1200 steps, 50 min; see engine/weights/MODEL_CARD.md); "cuda" for a GPU.
CONFIGS: Dict[str, TrainConfig] = {
    "cpu": TrainConfig(steps=1200, max_minutes=115.0),
    # the corpus (`refmaster corpus build`): mostly real music, long enough to span work sessions
    "cpu-corpus": TrainConfig(steps=4000, real_prob=0.8),
    "cuda": TrainConfig(steps=20000, batch=32, seg_seconds=5.0, ref_seconds=10.0, synth_pool=64,
                        synth_refresh_every=1, val_every=250, val_examples=64, ckpt_every=250, lr=3e-4),
}
#: The black-box waveform TCN diverges at the white-box learning rate (measured on a fixed
#: batch: 1e-3 raises the loss for the first steps, 1e-4…3e-4 lowers it).
BLACK_BOX_LR_SCALE = 0.3


def config_for(name: str, kind: str) -> TrainConfig:
    """The named configuration for a model kind (the black-box gets its smaller learning rate)."""
    cfg = replace(CONFIGS[name], kind=kind)
    if kind == "black-box":
        cfg = replace(cfg, lr=cfg.lr * BLACK_BOX_LR_SCALE, lr_min=cfg.lr_min * BLACK_BOX_LR_SCALE)
    return cfg


def lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr_min + 0.5 * (cfg.lr - cfg.lr_min) * (1 + math.cos(math.pi * min(1.0, t)))


def validation_set(data_dir: Optional[Path], cfg: TrainConfig, stats: dict, device,
                   corpus: Optional[Path] = None) -> Dict[str, torch.Tensor]:
    """Fixed examples from the held-out songs: the corpus validation split when training on the
    corpus, else the held-out songs of ``data_dir`` (or held-out synthesised songs)."""
    rng = np.random.default_rng(12345)
    if corpus is not None:
        songs = load_songs(split_files(corpus, "validation"), stats, max_seconds=CORPUS_EXCERPT_SECONDS, seed=12345)
    elif data_dir is not None and list_songs(data_dir, names=HELD_OUT):
        songs = load_songs(list_songs(data_dir, names=HELD_OUT), stats)
    else:
        songs = [synth_entry(s, 20.0, stats) for s in (900001, 900002)]
    src = ExampleSource(songs, seed=777, synth_pool=0, real_prob=1.0, stats=stats)
    src.rng = rng
    parts = [src.batch(8, cfg.seg_seconds, cfg.ref_seconds, device) for _ in range(math.ceil(cfg.val_examples / 8))]
    return {k: torch.cat([p[k] for p in parts])[: cfg.val_examples] for k in ("x_in", "ref", "y")}


@torch.no_grad()
def evaluate_loss(model: MasteringModel, val: Dict[str, torch.Tensor], loss_fn, chunk: int = 8):
    model.eval()
    out, base = [], []
    for i in range(0, val["x_in"].shape[0], chunk):
        x, r, y = val["x_in"][i : i + chunk], val["ref"][i : i + chunk], val["y"][i : i + chunk]
        y_hat, _ = model(x, r)
        out.append(loss_fn(y_hat, y))
        base.append(loss_fn(x, y))
    model.train()
    o, b = torch.cat(out), torch.cat(base)
    return float(o.mean()), float(b.mean()), float((o / b).median())


def _plot(out_dir: Path, kind: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tr = list(csv.DictReader(open(out_dir / "train.csv")))
    va = list(csv.DictReader(open(out_dir / "val.csv"))) if (out_dir / "val.csv").exists() else []
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    steps = np.array([int(r["step"]) for r in tr])
    loss = np.array([float(r["loss"]) for r in tr])
    ratio = np.array([float(r["ratio"]) for r in tr])
    k = max(1, len(loss) // 100)
    smooth = lambda v: np.convolve(v, np.ones(k) / k, mode="valid")
    ax[0].plot(steps[k - 1 :], smooth(loss), label="train (smoothed)")
    if va:
        ax[0].plot([int(r["step"]) for r in va], [float(r["val_loss"]) for r in va], "o-", label="validation")
        ax[0].plot([int(r["step"]) for r in va], [float(r["val_baseline"]) for r in va], "--", label="validation, unprocessed")
    ax[0].set_title(f"{kind}: multi-scale spectral loss")
    ax[0].set_xlabel("step")
    ax[0].legend()
    ax[1].plot(steps[k - 1 :], smooth(ratio), label="train")
    if va:
        ax[1].plot([int(r["step"]) for r in va], [float(r["val_ratio_median"]) for r in va], "o-", label="validation (median)")
    ax[1].axhline(0.6, color="grey", ls=":", label="target 0.6")
    ax[1].set_title("loss / unprocessed loss")
    ax[1].set_xlabel("step")
    ax[1].legend()
    for a in ax:
        a.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_dir / "loss.png", dpi=100)
    plt.close(fig)


def train(cfg: TrainConfig, out_dir: Path, data_dir: Optional[Path], device: str = "cpu", resume: bool = True,
          minutes: Optional[float] = None, progress: bool = True, model_cfg: Optional[ModelConfig] = None,
          corpus: Optional[Path] = None, stats_path: Optional[Path] = None) -> dict:
    """Train; returns a summary dict (also written to ``out_dir/summary.json``).

    ``corpus``: a folder built by `refmaster corpus build`; its train split (one seeded excerpt of
    each song, :data:`engine.model.dataset.CORPUS_EXCERPT_SECONDS`) joins the songs of ``data_dir`` and
    its validation split is the validation set. ``stats_path``: f_norm statistics to train with
    (those of the corpus train split, from `refmaster fxnorm-stats --corpus`); they are copied into
    the run folder, since a model must be used with the statistics it was trained with.
    """

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    stats = load_stats(stats_path)
    (out_dir / "fxnorm_stats.json").write_text(json.dumps(stats, indent=1) + "\n")
    model = MasteringModel(model_cfg or ModelConfig(kind=cfg.kind)).to(device)
    opt = torch.optim.RAdam(model.parameters(), lr=cfg.lr)
    loss_fn = MultiScaleSpectralLoss()
    real = load_songs(list_songs(data_dir, exclude=HELD_OUT), stats) if data_dir is not None else []
    if corpus is not None:
        real += load_songs(split_files(corpus, "train"), stats, max_seconds=CORPUS_EXCERPT_SECONDS, seed=cfg.seed,
                           progress=progress)
    ckpt_path = out_dir / "checkpoint.pt"
    step, elapsed_before = 0, 0.0
    data_seed = cfg.seed
    if resume and ckpt_path.exists():
        ck = torch.load(ckpt_path, map_location=device, weights_only=False)
        if ck["train_config"] != asdict(cfg):
            changed = {k for k in asdict(cfg) if asdict(cfg)[k] != ck["train_config"].get(k)} - {"steps"}
            if changed:
                raise UsageError(f"checkpoint in {out_dir} was made with a different configuration ({', '.join(sorted(changed))}); "
                                 "use --fresh or another --out")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        step, elapsed_before = ck["step"], ck["elapsed_s"]
        data_seed = ck["data_seed"]
        torch.set_rng_state(ck["torch_rng"])
    source = ExampleSource(real, seed=data_seed, synth_pool=cfg.synth_pool, synth_seconds=cfg.synth_seconds,
                           real_prob=cfg.real_prob, stats=stats)
    val = validation_set(data_dir, cfg, stats, device, corpus)
    mode = "a" if step > 0 else "w"
    tr_f = open(out_dir / "train.csv", mode, newline="")
    va_f = open(out_dir / "val.csv", mode, newline="")
    tr_w, va_w = csv.writer(tr_f), csv.writer(va_f)
    # a header for every new (or empty: a run killed before its first flush) log, written at once
    for f, w, head in ((tr_f, tr_w, ["step", "loss", "baseline", "ratio", "lr", "elapsed_s"]),
                       (va_f, va_w, ["step", "val_loss", "val_baseline", "val_ratio_median", "elapsed_s"])):
        if f.tell() == 0:
            w.writerow(head)
            f.flush()
    t_start = time.time()
    minutes = minutes if minutes is not None else cfg.max_minutes
    deadline = t_start + 60 * (minutes - elapsed_before / 60) if minutes else None
    bar = tqdm(total=cfg.steps, initial=step, desc=f"train {cfg.kind}", unit="step", disable=not progress, dynamic_ncols=True)

    def save_checkpoint():
        with atomic_path(ckpt_path) as tmp:
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
                        "elapsed_s": elapsed_before + time.time() - t_start, "train_config": asdict(cfg),
                        "model_config": asdict(model.cfg), "data_seed": data_seed + step,
                        "torch_rng": torch.get_rng_state()}, tmp)

    model.train()
    last_val = None
    try:
        while step < cfg.steps and (deadline is None or time.time() < deadline):
            for g in opt.param_groups:
                g["lr"] = lr_at(step, cfg)
            b = source.batch(cfg.batch, cfg.seg_seconds, cfg.ref_seconds, device)
            y_hat, _ = model(b["x_in"], b["ref"])
            per_item = loss_fn(y_hat, b["y"])
            loss = per_item.mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            with torch.no_grad():
                baseline = loss_fn(b["x_in"], b["y"]).mean()
            step += 1
            loss_v, base_v = loss.item(), baseline.item()
            tr_w.writerow([step, f"{loss_v:.5f}", f"{base_v:.5f}", f"{loss_v / base_v:.4f}",
                           f"{opt.param_groups[0]['lr']:.3g}", f"{elapsed_before + time.time() - t_start:.1f}"])
            if step % cfg.synth_refresh_every == 0:
                source.add_synth_song()
            if step % cfg.val_every == 0 or step == cfg.steps:
                last_val = evaluate_loss(model, val, loss_fn)
                va_w.writerow([step, f"{last_val[0]:.5f}", f"{last_val[1]:.5f}", f"{last_val[2]:.4f}",
                               f"{elapsed_before + time.time() - t_start:.1f}"])
                va_f.flush()
            if step % cfg.ckpt_every == 0:
                tr_f.flush()
                save_checkpoint()
            bar.update(1)
            bar.set_postfix(loss=f"{loss_v:.4f}", ratio=f"{loss_v / base_v:.3f}",
                            val=f"{last_val[2]:.3f}" if last_val else "-")
    finally:
        bar.close()
        tr_f.close()
        va_f.close()
        if step > 0:
            save_checkpoint()
    if last_val is None or int(list(csv.DictReader(open(out_dir / "val.csv")))[-1]["step"]) != step:
        last_val = evaluate_loss(model, val, loss_fn)
        with open(out_dir / "val.csv", "a", newline="") as f:
            csv.writer(f).writerow([step, f"{last_val[0]:.5f}", f"{last_val[1]:.5f}", f"{last_val[2]:.4f}",
                                    f"{elapsed_before + time.time() - t_start:.1f}"])
    elapsed = elapsed_before + time.time() - t_start
    summary = {
        "kind": cfg.kind, "steps": step, "wall_time_s": round(elapsed, 1), "device": device,
        "hardware": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
                    + (f", {torch.cuda.get_device_name(0)}" if device.startswith("cuda") else ""),
        "torch": torch.__version__, "seed": cfg.seed, "train_config": asdict(cfg), "model_config": asdict(model.cfg),
        "parameters": model.num_parameters(), "held_out": list(HELD_OUT),
        "training_songs": [s.name for s in real], "corpus": str(corpus) if corpus else None,
        "fxnorm_stats": stats.get("songs_source", str(stats_path) if stats_path else "engine/data/fxnorm_stats.json"), "synth_songs_seen": source.next_seed - (1_000_000 + data_seed * 10_000) + 0,
        "val_loss": last_val[0], "val_unprocessed_loss": last_val[1], "val_ratio_median": last_val[2],
    }
    model.save(out_dir / f"{cfg.kind}.safetensors", meta=summary)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    _plot(out_dir, cfg.kind)
    return summary
