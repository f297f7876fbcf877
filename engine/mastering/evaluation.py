"""Evaluation of trained models: synthetic (held-out songs, known f2) and real pairs.

* :func:`eval_synthetic` — on the held-out songs: segments A and B of one song, a random f2
  applied to both; the model sees ``x_in = f_norm(A)`` and the reference ``f2(B)`` and should
  produce ``y = f2(A)``. Reports the multi-scale spectral loss of y′ against that of the
  unprocessed x_in (per example and as medians) and, for the white-box model, the error of the
  46 estimated parameters per module (normalised units, over examples where f2 used the module;
  only indicative: Ψ maps f_norm(A), not A, to f2(A)).
* :func:`real_pairs` / :func:`eval_real_pairs` — pairs of *different* real songs (10 s
  excerpts, seeded); style transfer is judged by the Audio Feature distance of the output to the
  reference, against that of the unprocessed input.
"""

from __future__ import annotations

import itertools
import math
import tempfile
import time as _time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import soundfile as sf
import torch
from tqdm import tqdm

from engine import params as P
from engine.analysis.features import (af_distance, audio_features, bark_spectrum, drv_db, integrated_loudness,
                                      stereo_width)
from engine.analysis.losses import MultiScaleSpectralLoss
from engine.dsp.chain import render_chain
from engine.errors import UsageError
from engine.io.audio import SAMPLE_RATE, load_audio
from engine.mastering.ito import release_memory
from engine.mastering.job import MasterSettings, master
from engine.mastering.nudge import NUDGE_CHECKS
from engine.model.dataset import HELD_OUT, MIN_SEGMENT_DBFS, list_songs, load_songs
from engine.model.fxnorm import fx_normalize, load_stats
from engine.model.manipulation import random_manipulation
from engine.model.networks import MasteringModel


def _loud_enough(x: np.ndarray) -> bool:
    return 10 * math.log10(float(np.mean(x.astype(np.float64) ** 2)) + 1e-12) > MIN_SEGMENT_DBFS


@torch.no_grad()
def eval_synthetic(model: MasteringModel, data_dir: Path, examples: int = 50, seed: int = 2024,
                   seg_seconds: float = 5.0, ref_seconds: float = 10.0, progress: bool = True) -> dict:
    stats = load_stats()
    files = list_songs(data_dir, names=HELD_OUT)
    if not files:
        raise FileNotFoundError(f"held-out songs {', '.join(HELD_OUT)} not found in {data_dir}")
    songs = load_songs(files, stats)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    loss_fn = MultiScaleSpectralLoss()
    a_len, b_len = int(seg_seconds * SAMPLE_RATE), int(ref_seconds * SAMPLE_RATE)
    short = [s.name for s in songs if s.raw.shape[1] <= max(a_len, b_len)]
    if short:
        raise UsageError(f"held-out songs shorter than the {max(seg_seconds, ref_seconds):g} s an example needs: "
                         f"{', '.join(short)}")
    rows = []
    model.eval()
    for i in tqdm(range(examples), desc=f"eval-synthetic {model.kind}", disable=not progress):
        song = songs[i % len(songs)]
        T = song.raw.shape[1]
        while True:
            a0 = int(rng.integers(0, T - a_len))
            b0 = int(rng.integers(0, T - b_len))
            if _loud_enough(song.raw[:, a0 : a0 + a_len]):
                break
        x_in = torch.from_numpy(song.norm[:, a0 : a0 + a_len]).unsqueeze(0)
        a_raw = torch.from_numpy(song.raw[:, a0 : a0 + a_len]).unsqueeze(0)
        b_raw = torch.from_numpy(song.raw[:, b0 : b0 + b_len]).unsqueeze(0)
        p2, s2 = random_manipulation(gen, 1)
        y = render_chain(a_raw, p2, s2, check_params=False)
        ref = render_chain(b_raw, p2, s2, check_params=False)
        y_hat, theta = model(x_in, ref)
        row = {"song": song.name, "loss": float(loss_fn(y_hat, y)), "unprocessed": float(loss_fn(x_in, y)),
               "switches": s2[0].tolist()}
        if theta is not None:
            err = (P.normalize_tensor(theta[0].double()) - P.normalize_tensor(p2[0].double())).abs()
            row["param_error"] = err.tolist()
        rows.append(row)
    loss = np.array([r["loss"] for r in rows])
    base = np.array([r["unprocessed"] for r in rows])
    out = {
        "model": model.kind, "examples": len(rows), "held_out": list(HELD_OUT), "seed": seed,
        "median_loss": float(np.median(loss)), "median_unprocessed": float(np.median(base)),
        "ratio_of_medians": float(np.median(loss) / np.median(base)),
        "median_ratio": float(np.median(loss / base)),
        "improved_fraction": float(np.mean(loss < base)),
    }
    if rows and "param_error" in rows[0]:
        per_module = {}
        for j, m in enumerate(P.MODULES):
            sl = P.module_slice(m)
            errs = [np.mean(r["param_error"][sl]) for r in rows if r["switches"][j]]
            per_module[m] = {"mean_abs_error_normalized": float(np.mean(errs)) if errs else None, "examples": len(errs)}
        out["param_error_by_module"] = per_module
    out["rows"] = rows
    return out


@dataclass
class Pair:
    input_name: str
    reference_name: str
    input: np.ndarray      # (2, T) raw excerpt
    reference: np.ndarray  # (2, T) raw excerpt


class _Songs(dict):
    """``{name: (2, T) audio}`` decoded on first use, at most a few songs held at once (a corpus
    split is hours of audio); the keys are known up front, so pairing never decodes anything."""

    KEEP = 4

    def __init__(self, files: Dict[str, Path]):
        super().__init__()
        self.files = files

    def __iter__(self):
        return iter(self.files)

    def __len__(self):
        return len(self.files)

    def __getitem__(self, name: str) -> np.ndarray:
        if not dict.__contains__(self, name):
            while dict.__len__(self) >= self.KEEP:
                dict.pop(self, next(dict.__iter__(self)))
            dict.__setitem__(self, name, load_audio(self.files[name]).audio)
        return dict.__getitem__(self, name)


def real_pairs(data_dir: Optional[Path], count: int = 12, seconds: float = 10.0, seed: int = 0,
               names: Optional[Sequence[str]] = None, files: Optional[Sequence[Path]] = None,
               song_of: Optional[Dict[str, str]] = None) -> List[Pair]:
    """``count`` seeded (input, reference) excerpt pairs of different songs from a folder (or from
    ``files``, e.g. a corpus split; ``song_of`` maps a file name to its song, so a song's two
    versions never make a pair)."""
    files = list(files) if files is not None else list_songs(data_dir, names=names)
    if len(files) < 2:
        raise FileNotFoundError(f"need at least two songs in {data_dir if data_dir is not None else 'the split'}")
    rng = np.random.default_rng(seed)
    audio = _Songs({f.name: f for f in files})
    n = int(seconds * SAMPLE_RATE)
    song = song_of or {}
    combos = [(a, b) for a, b in itertools.permutations(sorted(audio), 2) if song.get(a, a) != song.get(b, b)]
    order = rng.permutation(len(combos))
    pairs = []

    def excerpt(x: np.ndarray) -> np.ndarray:
        if x.shape[1] <= n:
            return x
        for _ in range(20):
            s = int(rng.integers(0, x.shape[1] - n))
            if _loud_enough(x[:, s : s + n]):
                break
        return x[:, s : s + n]

    for k in order[:count]:
        a, b = combos[k]
        pairs.append(Pair(a, b, excerpt(audio[a]), excerpt(audio[b])))
    return pairs


@torch.no_grad()
def style_transfer(model: MasteringModel, x: np.ndarray, reference: np.ndarray, stats: Optional[dict] = None) -> np.ndarray:
    """Master ``x`` towards ``reference`` without ITO: f_norm, Φ, Ψ, render. NumPy in and out."""
    stats = stats or load_stats()
    xin = torch.from_numpy(fx_normalize(x, stats)).unsqueeze(0)
    y, _ = model(xin, torch.from_numpy(reference).unsqueeze(0))
    return y[0].numpy()


def eval_real_pairs(model: MasteringModel, data_dir: Path, count: int = 12, seconds: float = 10.0, seed: int = 0,
                    progress: bool = True) -> dict:
    stats = load_stats()
    rows = []
    for pr in tqdm(real_pairs(data_dir, count, seconds, seed), desc=f"real pairs {model.kind}", disable=not progress):
        y = style_transfer(model, pr.input, pr.reference, stats)
        before = af_distance(pr.input, pr.reference)
        after = af_distance(y, pr.reference)
        rows.append({"input": pr.input_name, "reference": pr.reference_name, "af_input": before, "af_output": after,
                     "reduction": 1.0 - after / before})
    red = np.array([r["reduction"] for r in rows])
    return {"model": model.kind, "pairs": len(rows), "seconds": seconds, "seed": seed,
            "improved_fraction": float(np.mean(red > 0)), "median_reduction": float(np.median(red)), "rows": rows}


# ------------------------------------------------------------------------------ systems side by side

SYSTEMS = ("input", "matchering", "ours-noito", "ours", "ours-blackbox", "ito-theta")


def bark_distance_db(y: np.ndarray, ref: np.ndarray) -> float:
    """RMS difference (dB) of the 24-band bark spectra of mid and side, absolute levels."""

    with torch.no_grad():
        a = bark_spectrum(torch.from_numpy(np.asarray(y, np.float64)).unsqueeze(0))[0]
        b = bark_spectrum(torch.from_numpy(np.asarray(ref, np.float64)).unsqueeze(0))[0]
    return float(((a - b) * (20 / math.log(10))).square().mean().sqrt())


def score(y: np.ndarray, ref: np.ndarray) -> Dict[str, float]:
    """The evaluation measures of an output against its reference (lower is better)."""

    width = lambda s: float(stereo_width(torch.from_numpy(np.asarray(s, np.float64)).unsqueeze(0)))
    return {
        "af": af_distance(y, ref),
        "d_drv": abs(drv_db(y) - drv_db(ref)),
        "d_lufs": abs(integrated_loudness(y) - integrated_loudness(ref)),
        "bark_db": bark_distance_db(y, ref),
        "d_width": abs(width(y) - width(ref)),
    }


def matchering_master(x: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Master with matchering (optional dependency), through temporary files."""


    try:
        import matchering as mg
    except ImportError as e:
        raise ImportError("matchering is not installed (pip install 'refmaster[eval]')") from e
    mg.log(default_handler=lambda *a, **k: None)  # keep its chatter off our output
    with tempfile.TemporaryDirectory() as d:
        sf.write(f"{d}/target.wav", x.T, SAMPLE_RATE, subtype="FLOAT")
        sf.write(f"{d}/reference.wav", ref.T, SAMPLE_RATE, subtype="FLOAT")
        mg.process(target=f"{d}/target.wav", reference=f"{d}/reference.wav", results=[mg.pcm24(f"{d}/out.wav")])
        y, _ = sf.read(f"{d}/out.wav", dtype="float32", always_2d=True)
    y = y.T
    return np.pad(y, ((0, 0), (0, max(0, x.shape[1] - y.shape[1]))))[:, : x.shape[1]]


def run_system(name: str, x: np.ndarray, ref: np.ndarray, models: Dict[str, MasteringModel],
               ito_steps: int = P.ITO_STEPS, theta_steps: int = P.THETA_STEPS, ito_lr: Optional[float] = None,
               drv_weight: Optional[float] = None, info: Optional[dict] = None) -> np.ndarray:
    """One system's master of ``x`` towards ``ref``; ``ito_lr`` / ``drv_weight`` override the
    master command's defaults (the learning rate only for ITO on z_ref). ``info``, when given,
    receives ``pinned`` (the parameters at a range limit) for the white-box systems."""

    common = {} if drv_weight is None else {"drv_weight": drv_weight}
    on_z = dict(common, **({} if ito_lr is None else {"lr": ito_lr}))
    if name == "input":
        return x
    if name == "matchering":
        return matchering_master(x, ref)
    settings = {"ours-noito": ("white-box", MasterSettings(ito=False, **common)),
                "ours": ("white-box", MasterSettings(ito_steps=ito_steps, **on_z)),
                "ours-blackbox": ("black-box", MasterSettings(ito_steps=ito_steps, **on_z)),
                "ito-theta": ("white-box", MasterSettings(ito_target="params", theta_steps=theta_steps, **common))}
    if name not in settings:
        raise UsageError(f"unknown system {name!r} (one of {', '.join(SYSTEMS)})")
    kind, s = settings[name]
    result = master(models[kind], x, ref, s)
    if info is not None and result.chain is not None:
        info["pinned"] = sorted(P.pinned(result.chain.values))
    return result.output


#: The metrics of :func:`score`, all "output vs reference, lower is better".
METRICS = ("af", "d_drv", "d_lufs", "bark_db", "d_width")


def compare_systems(data_dir: Optional[Path], systems: Sequence[str], models: Dict[str, MasteringModel], pairs: int = 12,
                    seconds: float = 10.0, seed: int = 0, ito_steps: int = P.ITO_STEPS, theta_steps: int = P.THETA_STEPS,
                    ito_lr: Optional[float] = None, drv_weight: Optional[float] = None, progress: bool = True,
                    corpus: Optional[Path] = None, split: str = "test", fad: bool = False) -> dict:
    """Run ``systems`` on seeded pairs of different songs; per-pair scores, per-system medians and,
    per metric, on how many pairs a system ended further from the reference than the untouched input.

    ``corpus``: pairs from one split of a built corpus (the test split: songs nobody trained on)
    instead of the folder ``data_dir``. ``fad``: also each system's FAD_musicnn
    (:mod:`engine.mastering.naturalness`) against the real songs of that split (or folder)."""
    from engine.mastering.naturalness import FadCollector

    collector = FadCollector() if fad else None
    rows = []
    if corpus is not None:
        from engine.model.corpus import load_manifest, split_files

        song_of = {Path(f["file"]).name: f["song"] for f in load_manifest(corpus)["files"]}
        todo = real_pairs(None, pairs, seconds, seed, files=split_files(corpus, split), song_of=song_of)
    else:
        todo = real_pairs(data_dir, pairs, seconds, seed)
    untouched = {(pr.input_name, pr.reference_name): score(pr.input, pr.reference) for pr in todo}
    bar = tqdm(total=len(todo) * len(systems), desc="eval", unit="run", disable=not progress)
    for pr in todo:
        for sysname in systems:
            t0 = _time.time()
            info: dict = {}
            y = run_system(sysname, pr.input, pr.reference, models, ito_steps, theta_steps, ito_lr, drv_weight, info)
            took = _time.time() - t0
            release_memory()
            if collector is not None:
                collector.add(sysname, y)
            rows.append({"system": sysname, "input": pr.input_name, "reference": pr.reference_name,
                         "seconds": took, **score(y, pr.reference), **info})
            bar.update(1)
    bar.close()
    summary = {}
    for sysname in systems:
        r = [row for row in rows if row["system"] == sysname]
        summary[sysname] = {k: float(np.nanmedian([row[k] for row in r])) for k in ("af", "d_drv", "d_lufs", "bark_db", "d_width", "seconds")}
        summary[sysname]["drv_pairs"] = int(np.sum(np.isfinite([row["d_drv"] for row in r])))
        summary[sysname]["worse_than_input"] = {
            k: int(sum(row[k] > untouched[(row["input"], row["reference"])][k] for row in r
                       if np.isfinite(row[k]) and np.isfinite(untouched[(row["input"], row["reference"])][k])))
            for k in METRICS}
        if any("pinned" in row for row in r):
            summary[sysname]["pinned_masters"] = int(sum(bool(row.get("pinned")) for row in r))
    if collector is not None:
        if corpus is not None:
            from engine.model.corpus import split_files

            real_files = split_files(corpus, split)
        else:
            real_files = list_songs(data_dir)
        for sysname, distance in collector.distances(real_files).items():
            summary[sysname]["fad_musicnn"] = distance
    out = {"pairs": len(todo), "seconds_per_excerpt": seconds, "seed": seed, "summary": summary, "rows": rows,
           "source": f"corpus {corpus} ({split} split)" if corpus is not None else str(data_dir)}
    if "ours" in systems and "ours-noito" in systems:
        by = lambda s: {(row["input"], row["reference"]): row["af"] for row in rows if row["system"] == s}
        a, b = by("ours"), by("ours-noito")
        out["ito_improves_af_fraction"] = float(np.mean([a[k] < b[k] for k in a]))
    return out


# ------------------------------------------------------------------------------ nudges on real music

def evaluate_nudges(model: MasteringModel, data_dir: Path, songs: int = 5, seconds: float = 10.0,
                    steps: int = 25, words: Optional[Sequence[str]] = None, progress: bool = True) -> dict:
    """Does each nudge word move its feature the right way on real music?

    Each of ``songs`` songs (a ``seconds`` excerpt from the middle) is mastered towards the next
    song without ITO, then once more with each nudge word; :data:`engine.mastering.nudge.NUDGE_CHECKS`
    says how far the master moved the way the word asks (> 0: the right way).
    """


    words = list(words or NUDGE_CHECKS)
    files = list_songs(data_dir)[:songs]
    if len(files) < 2:
        raise FileNotFoundError(f"need at least two songs in {data_dir}")
    n = int(seconds * SAMPLE_RATE)
    audio = []
    for f in files:
        a = load_audio(f).audio
        s = max(0, a.shape[1] // 2 - n // 2)
        audio.append((f.name, a[:, s : s + n]))
    feats = lambda y: audio_features(torch.from_numpy(np.asarray(y, np.float64)).unsqueeze(0))  # noqa: E731
    moves: Dict[str, Dict[str, float]] = {w: {} for w in words}
    bar = tqdm(total=len(audio) * len(words), desc="nudges", unit="run", disable=not progress)
    for i, (name, x) in enumerate(audio):
        ref = audio[(i + 1) % len(audio)][1]
        with torch.no_grad():
            before = feats(master(model, x, ref, MasterSettings(ito=False)).output)
        for w in words:
            out = master(model, x, ref, MasterSettings(ito=False, nudge=w, nudge_steps=steps)).output
            with torch.no_grad():
                moves[w][name] = NUDGE_CHECKS[w](before, feats(out))
            release_memory()
            bar.update(1)
    bar.close()
    right = {w: int(sum(v > 0 for v in m.values())) for w, m in moves.items()}
    return {"songs": [a[0] for a in audio], "seconds": seconds, "steps": steps, "moves": moves,
            "right_way": right, "all_words_on_most_songs": all(r * 5 >= 4 * len(audio) for r in right.values())}
