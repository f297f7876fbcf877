"""The tonal-balance match (engine.mastering.job, after the loudness and dynamics matches).

Φ/Ψ and ITO set the EQ through a 128-dimensional embedding and an objective in which the bark
spectrum is one term of five, so on songs outside the training data the master's long-term
spectral balance stays several dB from the reference's (measured on the corpus test split: a
median bark distance of 5.7 dB against matchering's 3.9 dB). A producer hears that first. The
EQ can do better on its own: this stage fits the 18 EQ parameters (the same six RBJ sections,
within the schema's ranges) so the master's mid and side bark spectra, loudness-normalised,
come as close as possible to the reference's.

How: the chain's EQ comes first, so for a small change of the EQ the master's per-bin power is
the current render's multiplied by ``|H_new|² / |H_old|²`` (exact for the linear part; the
compressors and the limiter react to the new balance, which the next round measures). Each round
renders the current Θ, fits the EQ to that model by gradient descent (Adam on the parameters in
their normalised 0…1 form, through a sigmoid so they stay in range, with a small pull towards the
EQ ITO chose so nothing moves without a reason), corrects the make-up gain for the loudness the
EQ added or removed, and renders again; the best round by the measured distance is kept, and the
untouched Θ when no round improved it. The loudness match then runs once more on the whole track.

Every value is still an EQ parameter: the producer sees and edits the result in the preset.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Dict, Optional

import numpy as np
import torch

from engine import params as P
from engine.analysis.features import (BARK_BANDS, BARK_FFT, BARK_FMAX, BARK_FMIN, bark_to_hz, hz_to_bark,
                                      integrated_loudness, mid_side, spectrum_power)
from engine.dsp.chain import eq_sections
from engine.params import SAMPLE_RATE

#: The Θ entries this stage may move: the 18 EQ parameters in schema order, then the imager's width
#: (an EQ shared by both channels changes mid and side alike, so a mix whose side is brighter than
#: its mid changes width with it; the imager puts the side level back where the reference has it).
BALANCE_KEYS = tuple(k for k in P.PARAM_KEYS if k.startswith("eq.")) + ("imager.width",)
_INDEX = torch.tensor([P.PARAM_INDEX[k] for k in BALANCE_KEYS])
_GAIN = P.PARAM_INDEX["gain.gain"]
_WIDTH = P.PARAM_INDEX["imager.width"]
#: Rounds of render → fit → render, and Adam steps per fit (measured on the corpus validation
#: split, see docs/chain.md "Tonal balance").
TONAL_ROUNDS = 2
FIT_STEPS = 200
FIT_LR = 0.05
#: Weight of the side spectrum next to the mid's in the balance distance.
SIDE_WEIGHT = 1.0
#: Weight of the stereo width (side/mid energy, dB²) next to the balance distance (dB²).
WIDTH_WEIGHT = 10.0
#: Pull towards the Θ ITO chose, in normalised units squared (per dB² of fit error), so that a
#: parameter the spectra say nothing about stays where it was.
PRIOR_WEIGHT = 2.0
#: Bands this far below the loudest band are ignored (silence says nothing of balance).
_FLOOR_DB = -90.0
#: Each bark band is cut into this many sub-bands (equal widths in bark) whose power is summed
#: once per render; the fit evaluates the EQ at their centres, not at 16,385 FFT bins. The EQ's
#: response is smooth at that scale (a sub-band is 1/8 of a bark band; the narrowest peak, Q 5,
#: spans a fifth of its centre frequency), so the fit is a few milliseconds a step.
SUBBANDS = 8
_DB = 10.0 / math.log(10.0)


@dataclass
class Balance:
    """A track's long-term balance: ``bands_db`` (2, 24) mid and side bark spectra in dB, and
    ``width_db`` its stereo width (side over mid energy, 20 Hz–20 kHz) in dB."""

    bands_db: torch.Tensor
    width_db: float


@lru_cache(maxsize=4)
def _layout(n_fft: int = BARK_FFT, sample_rate: float = SAMPLE_RATE):
    """Sub-band of each rfft bin (−1 outside 20 Hz–20 kHz), bins per bark band, sub-band centres (rad/sample)."""
    edges = bark_to_hz(np.linspace(hz_to_bark(BARK_FMIN), hz_to_bark(BARK_FMAX), BARK_BANDS * SUBBANDS + 1))
    freqs = np.arange(n_fft // 2 + 1) * sample_rate / n_fft
    sub = np.searchsorted(edges, freqs, side="right") - 1
    sub[(freqs < edges[0]) | (freqs >= edges[-1])] = -1
    counts = np.bincount(sub[sub >= 0] // SUBBANDS, minlength=BARK_BANDS)
    if (counts == 0).any():
        raise ValueError(f"FFT of {n_fft} is too short for {BARK_BANDS} bark bands")
    centres = 2 * math.pi * np.sqrt(edges[:-1] * edges[1:]) / sample_rate
    return torch.from_numpy(sub), torch.from_numpy(counts).double(), torch.from_numpy(centres)


def mid_side_power(audio: torch.Tensor) -> torch.Tensor:
    """``(1, 2, T)`` L/R -> ``(2, 24·SUBBANDS)``: time-averaged power of mid and side summed over
    each sub-band's FFT bins (float64)."""
    m, s = mid_side(audio.double())
    power = spectrum_power(torch.stack([m, s], 1))[0]
    sub, _, centres = _layout()
    keep = sub >= 0
    out = torch.zeros(2, len(centres), dtype=power.dtype)
    return out.index_add_(1, sub[keep], power[:, keep])


def _balance_of_power(power: torch.Tensor) -> "tuple[torch.Tensor, torch.Tensor]":
    """Sub-band power (2, J) -> bark spectra (2, 24) in dB (the mean power of each band's bins,
    as :func:`engine.analysis.features.bark_spectrum`) and width in dB."""
    _, counts, _ = _layout()
    bands = power.reshape(2, BARK_BANDS, SUBBANDS).sum(-1) / counts
    width = power[1].sum() / (power[0].sum() + 1e-30)
    return _DB * torch.log(bands + 1e-30), _DB * torch.log(width + 1e-30)


def balance_of(audio: torch.Tensor) -> Balance:
    """The :class:`Balance` of ``(1, 2, T)`` audio."""
    with torch.no_grad():
        bands_db, width_db = _balance_of_power(mid_side_power(audio))
    return Balance(bands_db, float(width_db))


def balance_distance_db(bands_db: torch.Tensor, ref_db: torch.Tensor, side_weight: float = SIDE_WEIGHT) -> torch.Tensor:
    """RMS difference (dB) of two ``(2, 24)`` mid/side bark spectra after removing the best
    common level offset (loudness is the loudness match's job), side weighted by ``side_weight``."""
    w = torch.tensor([1.0, side_weight], dtype=bands_db.dtype).unsqueeze(1).expand_as(bands_db)
    d = bands_db - ref_db
    d = d - (w * d).sum() / w.sum()
    return ((w * d.square()).sum() / w.sum()).sqrt()


def _objective(bands_db, width_db, ref: Balance, keep, side_weight, width_weight):
    """Squared balance distance plus the weighted squared width difference (dB²)."""
    ref_db = ref.bands_db.to(bands_db.dtype)
    fit = balance_distance_db(torch.where(keep, bands_db, ref_db), ref_db, side_weight).square()
    return fit + width_weight * (width_db - ref.width_db).square()


def _eq_power(theta: torch.Tensor) -> torch.Tensor:
    """|H|² of the EQ of ``theta`` (46,) at the sub-band centres: ``(J,)``."""
    _, _, w = _layout()
    c1, s1, c2, s2 = torch.cos(w), torch.sin(w), torch.cos(2 * w), torch.sin(2 * w)
    sos = eq_sections(theta.unsqueeze(0))[0]
    gain = torch.ones_like(w)
    for b0, b1, b2, a0, a1, a2 in sos:
        num = (b0 + b1 * c1 + b2 * c2).square() + (b1 * s1 + b2 * s2).square()
        den = (a0 + a1 * c1 + a2 * c2).square() + (a1 * s1 + a2 * s2).square()
        gain = gain * num / den
    return gain


def _imager_power(theta: torch.Tensor) -> torch.Tensor:
    """Power gains of the imager on mid and side, ``(2, 1)``: (2(1 − w))², (2w)²."""
    w = theta[_WIDTH]
    return torch.stack([(2 * (1 - w)) ** 2, (2 * w) ** 2]).unsqueeze(1)


def fit_balance(theta: torch.Tensor, y_power: torch.Tensor, ref: Balance, steps: int = FIT_STEPS,
                side_weight: float = SIDE_WEIGHT, width_weight: float = WIDTH_WEIGHT,
                prior_weight: float = PRIOR_WEIGHT) -> torch.Tensor:
    """Θ with its EQ and width fitted so that ``y_power`` (2, J) — the mid/side sub-band power of
    the render of ``theta`` (:func:`mid_side_power`) — reshaped by the change of EQ and imager matches ``ref``."""
    # Callers may hold torch.no_grad() (the evaluations do); this fit needs its own gradient.
    with torch.enable_grad():
        return _fit_balance(theta, y_power, ref, steps, side_weight, width_weight, prior_weight)


def _fit_balance(theta, y_power, ref, steps, side_weight, width_weight, prior_weight):
    theta = theta.detach().double()
    old = _eq_power(theta) * _imager_power(theta)
    u0 = P.normalize_tensor(theta)[_INDEX].clamp(1e-4, 1 - 1e-4)
    v = torch.logit(u0).clone().requires_grad_(True)
    opt = torch.optim.Adam([v], lr=FIT_LR)
    with torch.no_grad():
        bands0, _ = _balance_of_power(y_power)
        keep = bands0 > bands0.max() + _FLOOR_DB

    def candidate(v: torch.Tensor) -> torch.Tensor:
        unit = P.normalize_tensor(theta).index_put((_INDEX,), torch.sigmoid(v))
        return P.denormalize_tensor(unit)

    best = (math.inf, theta)
    for _ in range(steps):
        th = candidate(v)
        bands_db, width_db = _balance_of_power(y_power * (_eq_power(th) * _imager_power(th) / old))
        loss = _objective(bands_db, width_db, ref, keep, side_weight, width_weight) \
            + prior_weight * (torch.sigmoid(v) - u0).square().mean()
        if loss.item() < best[0]:
            best = (loss.item(), th.detach())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return best[1]


def match_tonal_balance(theta: torch.Tensor, render: Callable[[torch.Tensor], torch.Tensor], ref: Balance,
                        target_lufs: Optional[float] = None, rounds: int = TONAL_ROUNDS,
                        side_weight: float = SIDE_WEIGHT, width_weight: float = WIDTH_WEIGHT,
                        prior_weight: float = PRIOR_WEIGHT) -> "tuple[torch.Tensor, Dict[str, float]]":
    """Fit the EQ and width of ``theta`` (46,) so ``render(θ)`` (1, 2, T) has the balance ``ref``.

    Returns ``(θ, info)``: ``info`` has the objective (√ of balance² + width², dB) before and
    after, and the rounds run. After each fit the make-up gain is corrected so the render keeps
    its loudness (``target_lufs`` when given), so the limiter works as hard as it will in the
    master and the next match starts close."""
    theta = theta.detach().clone()
    args = (side_weight, width_weight)

    def measure(y: torch.Tensor) -> "tuple[torch.Tensor, float]":
        power = mid_side_power(y)
        bands_db, width_db = _balance_of_power(power)
        keep = torch.ones_like(bands_db, dtype=torch.bool)
        return power, float(_objective(bands_db, width_db, ref, keep, *args).sqrt())

    with torch.no_grad():
        y = render(theta)
    power, before = measure(y)
    info = {"before_db": before, "after_db": before, "rounds": 0}
    if not math.isfinite(before):
        return theta, info
    level = integrated_loudness(y[0].numpy()) if target_lufs is None else target_lufs
    best = (before, theta)
    current = theta
    spec = P.spec("gain.gain")
    for _ in range(rounds):
        th = fit_balance(current, power, ref, side_weight=side_weight, width_weight=width_weight,
                         prior_weight=prior_weight).to(theta.dtype)
        with torch.no_grad():
            lufs = integrated_loudness(render(th)[0].numpy())
            if math.isfinite(lufs) and math.isfinite(level):
                th[_GAIN] = spec.clamp(float(th[_GAIN]) + level - lufs)
            y = render(th)
        power, d = measure(y)
        info["rounds"] += 1
        if not math.isfinite(d):
            break
        if d < best[0]:
            best = (d, th)
        current = th
    info["after_db"] = best[0]
    return best[1], info
