"""The producer's main job as one function: f_norm, Φ, Ψ, ITO, nudges, render.

``master(model, x, reference)`` takes whole tracks (``(2, T)`` float32, 44.1 kHz) and returns the
master plus everything a report or a preset needs. The steps:

1. ``x_norm = f_norm(x)`` (the input is normalised, as in training);
2. ``z_ref = Φ(reference)`` over the whole reference;
3. Ψ reads three representative excerpts of ``x_norm`` (about 7.5 s; :func:`engine.mastering.ito.choose_excerpts`)
   and predicts one global Θ. Θ is global, and these excerpts are what fast ITO optimises on,
   so the prediction with and without ITO is the same function;
4. ITO (default on) refines z_ref against the ITO objective — the Audio Feature loss to the ITO
   reference (the style reference unless another is given: merging styles) plus a dynamics term
   (DRV, :data:`engine.mastering.ito.DRV_WEIGHT`) — or, as the paper's baseline, optimises Θ directly
   (``ito_target="params"``);
5. loudness and dynamics match (white-box, default on): the limiter threshold is chosen for the
   reference's DRV (:func:`match_dynamics`), and the make-up gain of Θ is corrected so the whole
   master's integrated loudness equals the reference's (a few renders; the limiter makes
   loudness non-linear in gain, so we iterate). The Audio Feature loss measures level through
   linear RMS (weight 0.1) and the bark spectrum, so ITO alone leaves masters about 2 LU off the
   reference (measured on real pairs); a producer expects the loudness to match, as matchering's
   does, and pushing the gain into the limiter to get there must not flatten the peaks more than
   the reference's are;
6. nudges ("brighter, wider") run the same ITO towards changed features of the current output;
7. the whole track is rendered with the final Θ (white-box) or the final z (black-box).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import numpy as np
import torch

from engine import params as P
from engine.dsp.chain import SAMPLE_RATE, render_chain
from engine.model.fxnorm import fx_normalize, load_stats
from engine.mastering.ito import (DRV_WEIGHT, FrozenWhiteBox, ITOResult, af_objective, choose_excerpts, excerpt_batch, join_excerpts,
                  optimize_embedding, optimize_params)
from engine.analysis.features import audio_features
from engine.model.networks import MasteringModel
from engine.mastering.nudge import nudge_objective, parse_nudges


@dataclass
class MasterSettings:
    ito: bool = True
    ito_steps: int = 100
    lr: float = 0.1                    # measured best of 1e-2 / 3e-2 / 1e-1 on real pairs (README)
    patience: int = 5
    ito_target: str = "embedding"      # or "params" (the paper's baseline)
    theta_steps: int = 2000
    theta_lr: float = 2e-2
    excerpt_seconds: float = 2.5
    excerpts: int = 3
    match_loudness: bool = True
    match_dynamics: bool = True        # limiter threshold for the reference's DRV (needs match_loudness)
    drv_weight: float = DRV_WEIGHT      # dynamics term of the ITO objective (0: plain AF, as in the paper)
    nudge: Optional[str] = None
    nudge_steps: int = 50

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items()}


@dataclass
class MasterResult:
    output: np.ndarray                    # (2, T) the master
    x_norm: np.ndarray                    # (2, T) f_norm(input)
    chain: Optional[P.ChainParams]        # final Θ + switches (white-box)
    chain_before_ito: Optional[P.ChainParams]
    z_ref: np.ndarray                     # final embedding (E,)
    ito: Optional[ITOResult] = None
    nudge: Optional[ITOResult] = None
    nudge_words: List[str] = field(default_factory=list)
    seconds: Dict[str, float] = field(default_factory=dict)
    loudness: Optional[Dict[str, float]] = None  # target / before / after LUFS, gain change dB
    dynamics: Optional[Dict[str, float]] = None  # target / before / after DRV, threshold change dB


#: Where the loudness match stops: close enough (LU), and at most this many corrections.
LOUDNESS_TOLERANCE_LU = 0.1
LOUDNESS_MAX_CORRECTIONS = 5
#: A dynamics-match trial counts only if its loudness match got this close (LU).
LOUDNESS_REACHED_LU = 0.5
_GAIN = P.PARAM_KEYS.index("gain.gain")


def match_loudness(audio: torch.Tensor, theta: torch.Tensor, target_lufs: float,
                   render: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
                   max_corrections: int = LOUDNESS_MAX_CORRECTIONS):
    """Correct the make-up gain of ``theta`` (46,) so ``render_chain(audio, θ)`` has ``target_lufs``.

    ``audio``: (1, 2, T) the normalised input. Returns ``(θ, rendered (1, 2, T), info)``; the gain
    stays inside its range (``info["at_limit"]`` says when that stopped the match).
    ``render(θ) -> (1, 2, T)`` replaces the full chain of ``audio`` (:func:`match_dynamics` passes a
    cheaper one; ``audio`` may then be None).
    """
    from engine.analysis.features import integrated_loudness

    spec = P.spec("gain.gain")
    theta = theta.detach().clone()
    if render is None:
        render = lambda th: render_chain(audio, th, check_params=False)  # noqa: E731
    with torch.no_grad():
        y = render(theta)
    before = now = integrated_loudness(y[0].numpy())
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
        with torch.no_grad():
            y = render(theta)
        new = integrated_loudness(y[0].numpy())
        slope = min(max((new - now) / (g - g_old), 0.05), 1.5)
        last_miss, now = abs(miss), new
        info["renders"] += 1
        if abs(target_lufs - now) < best[0]:
            best = (abs(target_lufs - now), theta.clone(), y, now)
    _, theta, y, now = best
    info.update(after_lufs=now, gain_change_db=float(theta[_GAIN]) - gain0)
    return theta, y, info


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


def _dynamics_material(audio: torch.Tensor) -> torch.Tensor:
    """What the dynamics match renders: ``(1, 2, T)`` -> the track itself, or (K, 2, n) segments."""
    total = int(DYNAMICS_SECONDS * SAMPLE_RATE)
    T = audio.shape[-1]
    if T <= total:
        return audio
    n = total // DYNAMICS_SEGMENTS
    starts = np.linspace(0, T - n, DYNAMICS_SEGMENTS).round().astype(int)
    return torch.cat([audio[..., s : s + n] for s in starts])


def match_dynamics(audio: torch.Tensor, theta: torch.Tensor, target_lufs: float, target_drv: float,
                   ref_features: Optional[Dict[str, torch.Tensor]] = None, drv_weight: float = DRV_WEIGHT):
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
    """
    from engine.analysis.features import AudioFeatureLoss, integrated_loudness, segments_drv

    theta = theta.detach().clone()
    info = {"target_drv_db": target_drv, "before_drv_db": math.nan, "after_drv_db": math.nan,
            "threshold_change_db": 0.0, "trials": []}
    if not (math.isfinite(target_drv) and math.isfinite(target_lufs)):
        return theta, info
    segments = _dynamics_material(audio)
    offset = 0.0
    if segments.shape[-1] < audio.shape[-1]:
        offset = integrated_loudness(join_excerpts(segments)[0].numpy()) - integrated_loudness(audio[0].numpy())
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
        pre = render_chain(segments, theta, ~pre_off, check_params=False)
    render_rest = lambda th: join_excerpts(render_chain(pre, th, pre_off, check_params=False))  # noqa: E731
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


def _as_chain(theta: Optional[torch.Tensor]) -> Optional[P.ChainParams]:
    return None if theta is None else P.ChainParams.from_tensors(theta.detach())


def master(model: MasteringModel, x: np.ndarray, reference: Optional[np.ndarray], settings: Optional[MasterSettings] = None,
           ito_reference: Optional[np.ndarray] = None, z_start: Optional[np.ndarray] = None,
           on_step: Optional[Callable[[str, int, float], None]] = None) -> MasterResult:
    """Master ``x`` towards ``reference``; see the module docstring. ``on_step(phase, step, loss)``.

    ``reference`` may be None when ``z_start`` is given and ITO has nothing to aim at otherwise
    (a nudge of a stored preset)."""
    s = settings or MasterSettings()
    if z_start is None and reference is None:
        raise ValueError("master needs a reference or a starting embedding")
    if s.ito and reference is None and ito_reference is None:
        raise ValueError("ITO needs a reference to optimise towards")
    t = {}
    t0 = time.time()
    model.eval()
    x_norm = fx_normalize(x, load_stats())
    t["fx_norm"] = time.time() - t0
    t1 = time.time()
    with torch.no_grad():
        z0 = torch.from_numpy(z_start).float().unsqueeze(0) if z_start is not None else \
            model.embed(torch.from_numpy(reference).unsqueeze(0))
    t["embed"] = time.time() - t1
    windows = choose_excerpts(x_norm, s.excerpt_seconds, s.excerpts)
    xb = excerpt_batch(x_norm, windows)
    white = model.kind == "white-box"
    frozen = FrozenWhiteBox(model, xb) if white else None
    with torch.no_grad():
        theta0 = frozen.theta(z0) if white else None
    z, theta = z0, theta0
    ito_res = nudge_res = None
    callback = (lambda phase: (lambda step, loss: on_step(phase, step, loss))) if on_step else (lambda phase: None)
    level_ref = ito_reference if ito_reference is not None else reference
    ref_stats: Dict[str, object] = {}

    def target_stats():
        """The features and DRV of the reference ITO and the matches aim at, computed once."""
        if not ref_stats:
            from engine.analysis.features import drv_db

            with torch.no_grad():
                ref_stats["features"] = audio_features(torch.from_numpy(level_ref).unsqueeze(0))
            ref_stats["drv"] = drv_db(level_ref)
        return ref_stats["features"], ref_stats["drv"]

    if s.ito:
        t2 = time.time()
        ref_feats, ref_drv = target_stats()
        objective = af_objective(None, drv_weight=s.drv_weight, ref_features=ref_feats, ref_drv=ref_drv)
        if s.ito_target == "params":
            if not white:
                raise ValueError("ITO on Θ needs the white-box model")
            ito_res = optimize_params(xb, theta0, objective, steps=s.theta_steps, lr=s.theta_lr,
                                      patience=max(s.patience, 50), on_step=callback("ito"))
            theta = ito_res.theta
        else:
            ito_res = optimize_embedding(model, xb, z0, objective, steps=s.ito_steps, lr=s.lr, patience=s.patience,
                                         on_step=callback("ito"))
            z, theta = ito_res.z, ito_res.theta
        t["ito"] = time.time() - t2
    loudness = None
    full = torch.from_numpy(x_norm).unsqueeze(0)
    y = None
    dynamics = None
    theta_ito = theta
    if white and s.match_loudness and level_ref is not None:
        from engine.analysis.features import integrated_loudness

        t5 = time.time()
        target_lufs = integrated_loudness(level_ref)
        if s.match_dynamics:
            ref_feats, ref_drv = target_stats()
            theta, dynamics = match_dynamics(full, theta, target_lufs, ref_drv,
                                             {k: v.double() for k, v in ref_feats.items()}, s.drv_weight)
        theta, y, loudness = match_loudness(full, theta, target_lufs)
        t["loudness"] = time.time() - t5
    words: List[str] = []
    if s.nudge:
        y = None
        words = parse_nudges(s.nudge)
        t3 = time.time()
        with torch.no_grad():
            current = render_chain(xb, theta, check_params=False) if white else model.converter(xb, z.expand(xb.shape[0], -1))[0]
        objective = nudge_objective(join_excerpts(current), words)
        if s.ito_target == "params" and white:
            nudge_res = optimize_params(xb, theta, objective, steps=s.nudge_steps * 4, lr=s.theta_lr,
                                        patience=max(s.patience, 20), on_step=callback("nudge"))
            theta = nudge_res.theta
        else:
            # the matches' corrections (gain, limiter threshold) stay on top of what the nudge moves
            offset = None if theta is theta_ito else (theta - theta_ito).detach().float()
            nudge_res = optimize_embedding(model, xb, z, objective, steps=s.nudge_steps, lr=s.lr,
                                           patience=max(s.patience, 10), on_step=callback("nudge"),
                                           theta_offset=offset)
            z, theta = nudge_res.z, nudge_res.theta
        t["nudge"] = time.time() - t3
    t4 = time.time()
    if y is None:
        with torch.no_grad():
            y = render_chain(full, theta.detach(), check_params=False) if white else model.converter(full, z)[0]
    t["render"] = time.time() - t4
    t["total"] = time.time() - t0
    out = y[0].numpy()
    if not np.isfinite(out).all():
        from engine.errors import ChainError

        raise ChainError("render", "the master contains NaN or infinite samples")
    return MasterResult(out, x_norm, _as_chain(theta), _as_chain(theta0), z[0].detach().numpy().copy(),
                        ito_res, nudge_res, words, t, loudness, dynamics)
