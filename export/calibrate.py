"""Calibrate the pedalboard chain to the Torch render with CMA-ES (the ST-ITO approach).

pedalboard's compressors are not torchcomp's (see :mod:`export.pedalboard_chain`), so for a
given Θ and track we search the calibration offsets (thresholds, ratios, times, output trim)
that minimise the Audio Feature distance (:mod:`engine.analysis.features`, SPEC's AF loss) between the
pedalboard render and the Torch render. The search is gradient-free (pedalboard is not
differentiable): CMA-ES from the ``cma`` package, in a box normalised to −1…1 per offset,
starting from the plain mapping (all offsets zero). Only the offsets of modules that are on
are searched. The part of the pedalboard chain the offsets cannot change (EQ, saturation,
crossovers) is rendered once. Last, the output trim is set so that integrated loudness equals
the Torch render's (AF's RMS term weighs overall level lightly; a gain after everything
changes neither spectral balance nor crest factor).

:func:`fidelity` gives the figures the issue checks: loudness (LU), bark-band balance (dB RMS)
and crest factor (dB) differences from the Torch render.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Dict, Optional

import numpy as np
import torch

from engine import params as P
from engine.analysis.features import (AF_WEIGHTS, af_distance, analyze, audio_features, feature_distance,
                                      integrated_loudness)
from engine.dsp.chain import render_chain
from engine.params import SAMPLE_RATE
from export.pedalboard_chain import CALIBRATION, PedalboardSettings, PedalboardStreamingChain, calibration_keys

#: Default length of audio the calibration renders per evaluation (the middle of the track).
CALIBRATION_SECONDS = 20.0


def torch_render(audio: np.ndarray, params: P.ChainParams, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    p, s = params.to_tensors()
    with torch.no_grad():
        return render_chain(torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)).unsqueeze(0), p, s,
                            sample_rate)[0].numpy()


def excerpt(audio: np.ndarray, seconds: float, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The middle ``seconds`` of ``(2, T)`` audio at ``sample_rate`` (all of it if shorter)."""
    n = int(seconds * sample_rate)
    if audio.shape[1] <= n:
        return audio
    start = (audio.shape[1] - n) // 2
    return audio[:, start:start + n]


def features_of(y: np.ndarray, sample_rate: int = SAMPLE_RATE) -> Dict[str, torch.Tensor]:
    """AF features of ``(2, T)`` audio, in float32 (the search only ranks candidates; 3x faster)."""
    with torch.no_grad():
        return audio_features(torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32)).unsqueeze(0), sample_rate)


def af_distance_to(features_ref: Dict[str, torch.Tensor], y: np.ndarray, sample_rate: int = SAMPLE_RATE) -> float:
    """SPEC's AF loss between ``y`` and reference features from :func:`features_of`."""
    with torch.no_grad():
        return float(sum(v[0] for v in feature_distance(features_of(y, sample_rate), features_ref,
                                                       AF_WEIGHTS).values()))


def fidelity(y: np.ndarray, ref: np.ndarray, sample_rate: int = SAMPLE_RATE) -> Dict[str, float]:
    """How far ``y`` is from ``ref``: loudness (LU), bark balance of mid and side (dB RMS over
    the 24 bands, level removed as in `refmaster analyze`), crest factor (dB), AF distance."""
    a, b = analyze(ref, sample_rate), analyze(y, sample_rate)
    mid = np.array(b["bark_mid_db"]) - np.array(a["bark_mid_db"])
    side = np.array(b["bark_side_db"]) - np.array(a["bark_side_db"])
    return {
        "loudness_lu": b["loudness_lufs"] - a["loudness_lufs"],
        "bark_mid_db_rms": float(np.sqrt(np.mean(mid ** 2))),
        "bark_side_db_rms": float(np.sqrt(np.mean(side ** 2))),
        "crest_db": b["crest_db"] - a["crest_db"],
        "af": af_distance(y, ref, sample_rate),
    }


@dataclass
class CalibrationResult:
    settings: PedalboardSettings
    af_before: float
    af_after: float
    evaluations: int
    seconds: float


def calibrate(params: P.ChainParams, audio: np.ndarray, *, seconds: float = CALIBRATION_SECONDS,
              max_evaluations: int = 300, popsize: Optional[int] = None, seed: int = 1,
              source: str = "", progress: Optional[Callable[[int, float], None]] = None,
              sample_rate: int = SAMPLE_RATE) -> CalibrationResult:
    """Find calibration offsets for ``params`` on ``audio`` ``(2, T)`` at ``sample_rate`` (JUCE's
    compressors run per sample and ours per control frame, so the offsets belong to the rate: the
    settings' info records it).

    Args:
        seconds: length of the excerpt (middle of the track) rendered per evaluation.
        max_evaluations: CMA-ES budget (pedalboard renders).
        source: what the audio is (stored in the settings' info).
        progress: called as ``progress(evaluations, best_af)`` after each generation.
    """
    import cma

    t0 = time.perf_counter()
    x = excerpt(np.asarray(audio, dtype=np.float32), seconds, sample_rate)
    target = torch_render(x, params, sample_rate)
    ref_features = features_of(target, sample_rate)
    chain = PedalboardStreamingChain(params, sample_rate=sample_rate)
    lat = chain.latency
    dry, low, high = chain.front(np.concatenate([x, np.zeros((2, lat), np.float32)], axis=1))  # offsets never change it

    keys = calibration_keys(params.switches)
    lo = np.array([CALIBRATION[k][0] for k in keys])
    hi = np.array([CALIBRATION[k][1] for k in keys])
    centre, half = (hi + lo) / 2, (hi - lo) / 2
    # zero offset (the plain mapping) in normalised coordinates
    x0 = (0.0 - centre) / half

    def render(u: np.ndarray) -> np.ndarray:
        chain.set_calibration({k: float(v) for k, v in zip(keys, centre + half * np.clip(u, -1, 1))})
        chain.reset()
        return chain.back(dry, low, high)[:, lat:]

    def objective(u: np.ndarray) -> float:
        return af_distance_to(ref_features, render(u), sample_rate)

    af_before = objective(x0)
    best_u, best_f, evals = x0.copy(), af_before, 1
    if keys and max_evaluations > 1:
        opts = {"bounds": [-1.0, 1.0], "seed": seed, "verbose": -9, "maxfevals": max_evaluations - 1,
                "tolfun": 1e-7, "tolx": 1e-4}
        if popsize:
            opts["popsize"] = popsize
        es = cma.CMAEvolutionStrategy(x0, 0.25, opts)
        while not es.stop():
            cand = es.ask()
            vals = [objective(np.asarray(c)) for c in cand]
            es.tell(cand, vals)
            evals += len(cand)
            i = int(np.argmin(vals))
            if vals[i] < best_f:
                best_f, best_u = vals[i], np.asarray(cand[i]).copy()
            if progress:
                progress(evals, best_f)
    offsets = {k: float(v) for k, v in zip(keys, centre + half * np.clip(best_u, -1, 1))}
    # Last, the output trim (a pure gain after everything) matches integrated loudness: AF
    # weighs overall level lightly (its RMS term), and a gain leaves balance and crest alone.
    chain.set_calibration(offsets)
    chain.reset()
    loudness_gap = integrated_loudness(target, sample_rate) - integrated_loudness(chain.back(dry, low, high)[:, lat:],
                                                                                  sample_rate)
    lo_trim, hi_trim, _ = CALIBRATION["output.trim"]
    if np.isfinite(loudness_gap):
        offsets["output.trim"] = float(np.clip(offsets.get("output.trim", 0.0) + loudness_gap, lo_trim, hi_trim))
    offsets = {k: round(v, 6) for k, v in offsets.items()}
    af_final = objective((np.array([offsets[k] for k in keys]) - centre) / half)
    settings = PedalboardSettings(params, offsets, {
        "calibrated_on": source, "sample_rate": sample_rate, "seconds": round(x.shape[1] / sample_rate, 3),
        "evaluations": evals,
        "af_before": af_before, "af_search": best_f, "af_after": af_final, "loudness_gap_lu": float(loudness_gap),
        "method": "CMA-ES (cma package) on the AF distance to the Torch render, then output trim to equal loudness",
    })
    return CalibrationResult(settings, af_before, af_final, evals + 2, time.perf_counter() - t0)
