"""The loudness and dynamics matches that end a white-box master (engine.mastering.job, step 5).

The Audio Feature loss measures level through linear RMS (weight 0.1) and the bark spectrum, so
ITO alone leaves masters about 2 LU off the reference (measured on real pairs); a producer expects
the loudness to match, as matchering's does, and pushing the gain into the limiter to get there
must not flatten the peaks more than the reference's are. So: :func:`match_dynamics` chooses the
limiter threshold for the reference's DRV, and :func:`match_loudness` corrects the make-up gain
so the whole master's integrated loudness equals the reference's (a few renders: the limiter
makes loudness non-linear in gain).
"""

from __future__ import annotations

import math
from typing import Callable, Dict, Optional, Tuple

import numpy as np
import torch

from engine import params as P
from engine.analysis.features import AudioFeatureLoss, integrated_loudness, segments_drv
from engine.dsp.chain import CHAIN_LATENCY, render_chain, render_items
from engine.mastering.ito import DRV_WEIGHT, join_excerpts
from engine.params import SAMPLE_RATE

#: Where the loudness match stops: close enough (LU), and at most this many corrections.
LOUDNESS_TOLERANCE_LU = 0.1
LOUDNESS_MAX_CORRECTIONS = 5
#: A dynamics-match trial counts only if its loudness match got this close (LU).
LOUDNESS_REACHED_LU = 0.5
_GAIN = P.PARAM_KEYS.index("gain.gain")


def match_loudness(audio: Optional[torch.Tensor], theta: torch.Tensor, target_lufs: float,
                   render: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
                   max_corrections: int = LOUDNESS_MAX_CORRECTIONS,
                   loudness: Optional[Callable[[torch.Tensor], float]] = None):
    """Correct the make-up gain of ``theta`` (46,) so ``render_chain(audio, θ)`` has ``target_lufs``.

    ``audio``: (1, 2, T) the normalised input. Returns ``(θ, rendered (1, 2, T), info)``; the gain
    stays inside its range (``info["at_limit"]`` says when that stopped the match).
    ``render(θ) -> (1, 2, T)`` replaces the full chain of ``audio`` (:func:`match_dynamics` passes a
    cheaper one; ``audio`` may then be None). ``loudness(θ) -> LUFS`` measures a candidate instead
    of rendering it here (a track rendered in segments and metered on the way, never held whole:
    :class:`engine.mastering.track.TrackRender`); the rendered result is then None.
    """
    spec = P.spec("gain.gain")
    theta = theta.detach().clone()
    if loudness is None:
        if render is None:
            render = split_render(audio, theta)

        def measure(th):
            with torch.no_grad():
                y = render(th)
            return integrated_loudness(y[0].numpy()), y
    else:
        measure = lambda th: (loudness(th), None)  # noqa: E731
    before, y = measure(theta)
    now = before
    gain0 = float(theta[_GAIN])
    info = {"target_lufs": target_lufs, "before_lufs": before, "after_lufs": before, "gain_change_db": 0.0,
            "renders": 1, "at_limit": False}
    if not (math.isfinite(target_lufs) and math.isfinite(before)):
        return theta, y, info
    # Secant steps on the gain (loudness is monotone in it; its slope is 1 LU/dB below the
    # limiter and flattens as the limiter works harder), kept inside the bracket of gains already
    # seen too quiet / too loud: once both sides are known, a step that leaves the bracket or
    # a step that did not halve the miss is replaced by bisection, so a saturated limiter
    # (slope near 0, then steep again) cannot throw the search out or stall it.
    slope = 1.0
    low = high = None  # (gain, loudness) seen below / above the target
    best = (abs(target_lufs - now), theta.clone(), y, now)
    last_miss = math.inf
    for _ in range(max_corrections):
        miss = target_lufs - now
        if abs(miss) < LOUDNESS_TOLERANCE_LU:
            break
        g_old = float(theta[_GAIN])
        if miss > 0:
            low = (g_old, now)
        else:
            high = (g_old, now)
        g = g_old + miss / slope
        if low is not None and high is not None and (not (low[0] < g < high[0]) or abs(miss) > 0.5 * last_miss):
            # left the bracket, or the last step did not halve the miss: bisect
            g = 0.5 * (low[0] + high[0])
        g = min(max(g, spec.min), spec.max)
        if g == g_old:
            info["at_limit"] = True
            break
        theta[_GAIN] = g
        new, y = measure(theta)
        slope = min(max((new - now) / (g - g_old), 0.05), 1.5)
        last_miss, now = abs(miss), new
        info["renders"] += 1
        if abs(target_lufs - now) < best[0]:
            best = (abs(target_lufs - now), theta.clone(), y, now)
    _, theta, y, now = best
    info.update(after_lufs=now, gain_change_db=float(theta[_GAIN]) - gain0)
    return theta, y, info


def split_render(audio: torch.Tensor, theta: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """``render(θ)`` = ``render_chain(audio, θ)`` for every θ that differs from ``theta`` only in
    the modules from the make-up gain on (gain, imager, limiter), at a fraction of the cost.

    The modules before the gain (EQ, saturation, multiband: nearly all of a render's time) are
    rendered once, with the chain's zero tail of :data:`engine.dsp.chain.CHAIN_LATENCY` samples
    kept, so the limiter's look-ahead reads what it reads in the whole chain; ``render`` runs the
    rest on that. Measured: equal to the whole render to float rounding (tests/test_mastering.py);
    the full-track loudness match had rendered the whole chain once per correction.
    """
    T = audio.shape[-1]
    after = torch.arange(len(P.MODULES)) >= P.MODULES.index("gain")
    with torch.no_grad():
        pre = render_chain(torch.nn.functional.pad(audio, (0, CHAIN_LATENCY)), theta.detach(), ~after, check_params=False)
    return lambda th: render_chain(pre, th, after, check_params=False)[..., :T]


#: Where the dynamics match stops: close enough (dB of DRV), and at most this many thresholds tried.
DRV_TOLERANCE_DB = 0.1
DRV_MAX_TRIALS = 6
#: How far below the predicted limiter threshold the search may go (dB).
DRV_SEARCH_DB = 24.0
#: Tracks longer than this are matched for dynamics on :data:`DYNAMICS_SEGMENTS` segments
#: spread evenly over them, this long in all (DRV is a statistic of the whole track's loudest
#: onsets; one contiguous window of a 61 s song measured 1.64 dB where the whole had 2.17).
DYNAMICS_SECONDS = 60.0
DYNAMICS_SEGMENTS = 8
_THRESHOLD = P.PARAM_KEYS.index("limiter.threshold")


def dynamics_windows(T: int) -> "list[tuple[int, int]]":
    """``[(start, length), ...]`` of the :func:`dynamics_material` of a track of ``T`` samples."""
    total = int(DYNAMICS_SECONDS * SAMPLE_RATE)
    if T <= total:
        return [(0, T)]
    n = total // DYNAMICS_SEGMENTS
    return [(int(s), n) for s in np.linspace(0, T - n, DYNAMICS_SEGMENTS).round().astype(int)]


def dynamics_material(audio: torch.Tensor) -> torch.Tensor:
    """What the dynamics match renders: ``(1, 2, T)`` -> the track itself, or (K, 2, n) segments."""
    windows = dynamics_windows(audio.shape[-1])
    if len(windows) == 1:
        return audio
    return torch.cat([audio[..., s : s + n] for s, n in windows])


def dynamics_offset(audio: torch.Tensor, segments: torch.Tensor) -> float:
    """How much louder (LU) the :func:`dynamics_material` ``segments`` of ``audio`` are than the whole
    (0 when they are the whole): a match on the segments aims at the target plus this."""
    if segments.shape[-1] >= audio.shape[-1]:
        return 0.0
    return integrated_loudness(join_excerpts(segments)[0].numpy()) - integrated_loudness(audio[0].numpy())


def match_dynamics(audio: Optional[torch.Tensor], theta: torch.Tensor, target_lufs: float, target_drv: float,
                   ref_features: Optional[Dict[str, torch.Tensor]] = None, drv_weight: float = DRV_WEIGHT,
                   material: Optional[Tuple[torch.Tensor, float]] = None):
    """Set the limiter threshold of ``theta`` for the reference's dynamics at its loudness;
    returns ``(θ, info)``.

    At a fixed loudness the limiter's threshold decides how hard the peaks are held down, which
    is what DRV (the spread of the loudest onsets' peaks) measures: a lower threshold with more
    make-up gain squashes them, a higher one lets them through. Each trial threshold gets its
    gain re-matched for loudness (:func:`match_loudness`); thresholds are bisected towards
    ``target_drv``, and of the thresholds tried we keep the one with the lowest ITO objective,
    Audio Feature loss (against ``ref_features``) + ``drv_weight`` × ΔDRV², so the dynamics are
    not bought with the spectrum and level ITO matched (without ``ref_features``: lowest ΔDRV).

    Why here and not only in ITO: ITO's DRV term sees three 2.5 s excerpts, and the loudness
    match after ITO can move the gain by several dB into the limiter (measured: up to +9.5 dB on
    real pairs), which sets the dynamics more than anything ITO did. This runs on the whole track
    (or, past :data:`DYNAMICS_SECONDS`, on segments spread over it, at the loudness they should have).
    ``material``: those segments and their :func:`dynamics_offset` when the caller has them (then
    ``audio`` may be None: a long input that is not held whole).
    """
    theta = theta.detach().clone()
    info = {"target_drv_db": target_drv, "before_drv_db": math.nan, "after_drv_db": math.nan,
            "threshold_change_db": 0.0, "trials": []}
    if not (math.isfinite(target_drv) and math.isfinite(target_lufs)):
        return theta, info
    if material is None:
        segments = dynamics_material(audio)
        material = (segments, dynamics_offset(audio, segments))
    segments, offset = material
    if not math.isfinite(offset):
        return theta, info
    af = AudioFeatureLoss() if ref_features is not None else None
    spec = P.spec("limiter.threshold")
    t0 = float(theta[_THRESHOLD])
    tried = []  # {"score", "theta", "drv", "threshold", "loud_ok"}
    # Gain, imager and limiter come last and only they change here: render the modules before
    # them once (the limiter's look-ahead into the zero tail differs in the last 128 samples).
    pre_off = torch.arange(len(P.MODULES)) >= P.MODULES.index("gain")
    with torch.no_grad():
        pre = render_items(segments, theta, ~pre_off, check_params=False)
    render_rest = lambda th: join_excerpts(render_items(pre, th, pre_off, check_params=False))  # noqa: E731
    K = segments.shape[0]

    def trial(t: float) -> dict:
        # start from the gain matched at the nearest threshold tried (the loudness is close there)
        ok = [r for r in tried if r["loud_ok"]]
        th = (min(ok, key=lambda r: abs(r["threshold"] - t))["theta"] if ok else theta).clone()
        th[_THRESHOLD] = t
        th, y, li = match_loudness(None, th, target_lufs + offset, render_rest, LOUDNESS_MAX_CORRECTIONS + 3)
        d = segments_drv(y[0].numpy().reshape(2, K, -1).transpose(1, 0, 2))
        miss = abs(d - target_drv) if math.isfinite(d) else math.inf
        if af is not None:
            with torch.no_grad():
                a = float(af(y.double(), ref_features=ref_features)[0])
            score = a + drv_weight * miss ** 2
        else:
            a, score = math.nan, miss
        r = {"score": score, "theta": th, "drv": d, "threshold": t,
             "loud_ok": abs(li["after_lufs"] - li["target_lufs"]) < LOUDNESS_REACHED_LU,
             "too_quiet": li["after_lufs"] < li["target_lufs"]}
        tried.append(r)
        info["trials"].append({"threshold_db": t, "drv_db": d, "af": a, "lufs_miss": li["after_lufs"] - li["target_lufs"]})
        return r

    r = trial(t0)
    if not math.isfinite(r["drv"]):  # too few onsets in the master to say
        return theta, info
    info["before_drv_db"] = r["drv"]
    d = r["drv"]
    up = d < target_drv if r["loud_ok"] else r["too_quiet"]
    lo, hi = (t0, spec.max) if up else (max(spec.min, t0 - DRV_SEARCH_DB), t0)
    for _ in range(DRV_MAX_TRIALS - 1):
        if (r["loud_ok"] and abs(d - target_drv) < DRV_TOLERANCE_DB) or hi - lo < 0.05:
            break
        t = 0.5 * (lo + hi)
        r = trial(t)
        d = r["drv"]
        if not math.isfinite(d):
            break
        # a threshold at which the loudness cannot be reached holds the peaks down too far
        if (d < target_drv) if r["loud_ok"] else r["too_quiet"]:
            lo = t
        else:
            hi = t
    ok = [r for r in tried if r["loud_ok"] and math.isfinite(r["drv"])] or tried[:1]
    best = min(ok, key=lambda r: r["score"])
    th, d = best["theta"], best["drv"]
    info.update(after_drv_db=d, threshold_change_db=float(th[_THRESHOLD]) - t0)
    return th, info
