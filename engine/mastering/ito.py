"""Inference-time optimisation (ITO): refine the reference embedding z_ref with Ψ frozen.

SPEC.md: ``z ← z − η ∇ L_aux(Ψ(x_in, z), x_ref)`` with RAdam, up to 100 steps, stopping when the
loss rises (with a configurable patience) and keeping the best step. The objective is any
differentiable function of the output audio; the default is the Audio Feature loss against the
ITO reference (which may be a different song from the style reference: merging styles).

Fast ITO: Θ is global, so instead of the whole track we optimise on a few representative
excerpts (:func:`choose_excerpts`: the loudest, the quietest-but-musical and the spectrally most
typical windows) and render the full track once at the end with the best Θ. The excerpts are
processed as one batch; Ψ's prediction on them is pooled over all their frames, so it is one Θ.

The baseline of the paper, ITO directly on Θ (:func:`optimize_params`), optimises the 46
normalised parameters (through a logit, so they stay in range) with the same objective.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from engine import params as P
from engine.analysis.features import AudioFeatureLoss, audio_features, drv_db, drv_torch, onset_table
from engine.dsp.chain import SAMPLE_RATE, render_chain
from engine.errors import OptimisationError
from engine.model.frontend import spectral_features
from engine.model.networks import MasteringModel

Objective = Callable[[torch.Tensor], torch.Tensor]  # (B, 2, T) audio -> scalar loss

ITO_STEPS, THETA_STEPS = P.ITO_STEPS, P.THETA_STEPS


def _glibc_malloc_trim():
    import ctypes
    import ctypes.util
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return lambda: None
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    return lambda: libc.malloc_trim(0)


#: Hand freed heap memory back to the OS. Each ITO step frees tens of MB of FFT buffers; glibc
#: keeps them in its arenas and, with the sizes varying between renders, the process grew by
#: ~8 MB per step (measured: 24 GB and an OOM kill after 12 pairs of `refmaster eval`). Trimming
#: every few steps keeps it flat (+0.5 MB/step) at no measurable cost; a lower mmap threshold
#: did the same but ran ITO 3x slower. A no-op off glibc.
release_memory = _glibc_malloc_trim()
TRIM_EVERY = 10


@dataclass
class ITOResult:
    """What ITO found: the best embedding (or Θ), its parameters and the loss per step."""

    z: Optional[torch.Tensor]          # (1, E) best embedding (None for ITO on Θ)
    theta: Optional[torch.Tensor]      # (46,) real-unit parameters at the best step (white-box)
    losses: List[float]                # objective per step (step 0 = before any update)
    best_step: int
    steps_run: int
    seconds: float
    theta_start: Optional[torch.Tensor] = None

    def moved(self, top: int = 5) -> List[Tuple[str, float, float]]:
        """The ``top`` parameters that moved most (in normalised units): (key, from, to) in real units."""
        if self.theta is None or self.theta_start is None:
            return []
        d = (P.normalize_tensor(self.theta.double()) - P.normalize_tensor(self.theta_start.double())).abs()
        idx = torch.argsort(d, descending=True)[:top]
        return [(P.PARAM_KEYS[i], float(self.theta_start[i]), float(self.theta[i])) for i in idx.tolist()]


def choose_excerpts(audio: np.ndarray, seconds: float = 2.5, count: int = 3) -> List[Tuple[int, int]]:
    """Representative windows of a track for fast ITO: ``[(start, length), ...]`` in samples.

    Candidates are hop-spaced windows; we take the loudest, the one closest to the track's
    median loudness, and the one whose spectral centroid is closest to the track's median,
    avoiding overlaps. A track shorter than ``count * seconds`` is used whole.
    """
    from engine.io.stream import array_reader

    return choose_windows(array_reader(audio), audio.shape[1], seconds, count)


def choose_windows(read: Callable[[int, int], np.ndarray], T: int, seconds: float = 2.5,
                   count: int = 3) -> List[Tuple[int, int]]:
    """:func:`choose_excerpts` of a track of ``T`` samples read window by window (``read(start, n)``,
    a track that is not held whole)."""
    n = int(seconds * SAMPLE_RATE)
    if T <= n * count:
        return [(0, T)]
    hop = n // 2
    starts = np.arange(0, T - n + 1, hop)
    rms, cent = [], []
    freqs = np.fft.rfftfreq(4096, 1 / SAMPLE_RATE)
    for s in starts:
        w = read(int(s), n).mean(0).astype(np.float64)
        rms.append(10 * np.log10(np.mean(w ** 2) + 1e-12))
        spec = np.abs(np.fft.rfft(w[: 4096 * (len(w) // 4096)].reshape(-1, 4096) * np.hanning(4096), axis=1)).mean(0)
        cent.append(float((spec * freqs).sum() / (spec.sum() + 1e-12)))
    rms, cent = np.array(rms), np.array(cent)
    order = [int(np.argmax(rms)), int(np.argmin(np.abs(rms - np.median(rms)))),
             int(np.argmin(np.abs(cent - np.median(cent)) + 1e3 * (rms < np.median(rms) - 20)))]
    chosen: List[int] = []
    for i in order + list(np.argsort(-rms)):
        if all(abs(int(starts[i]) - int(starts[j])) >= n for j in chosen):
            chosen.append(int(i))
        if len(chosen) == count:
            break
    return sorted((int(starts[i]), n) for i in chosen)


def excerpt_batch(audio: np.ndarray, windows: Sequence[Tuple[int, int]]) -> torch.Tensor:
    """Stack equal-length windows as a batch ``(K, 2, n)`` (a single whole-track window as (1, 2, T))."""
    return torch.from_numpy(np.stack([audio[:, s : s + n] for s, n in windows]))


#: Weight of the dynamics term of the default objective: (DRV(output) − DRV(reference))², in dB².
#: The AF loss sees dynamics only through the crest factor (weight 0.001), so ITO matched the
#: spectrum and level and left the peaks' variability wherever Ψ put it: ΔDRV 0.71 dB against
#: matchering's 0.48 on 12 real pairs. 0 gives the paper's plain AF objective.
DRV_WEIGHT = 0.03


def join_excerpts(y: torch.Tensor) -> torch.Tensor:
    """``(K, 2, n)`` -> ``(1, 2, K·n)``: excerpts end to end, so features describe them all at once."""
    return y.permute(1, 0, 2).reshape(1, 2, -1)


def af_objective(reference: Optional[torch.Tensor], weights: Optional[Dict[str, float]] = None,
                 drv_weight: float = DRV_WEIGHT, ref_features: Optional[Dict[str, torch.Tensor]] = None,
                 ref_drv: Optional[float] = None) -> Objective:
    """The default L_aux: Audio Feature loss of the output against a reference ``(1, 2, T)``,
    plus ``drv_weight`` × the squared DRV difference (dB) when both have enough onsets.
    ``ref_features`` / ``ref_drv``: the reference's, when the caller has them already.

    The output excerpts (K, 2, n) are joined end to end before features are taken, so the
    loss compares one set of features (of the whole optimised material) with the reference's.
    The DRV term follows the onsets found in the first output it is given (the start of the
    optimisation), so one objective serves one optimisation.
    """
    loss = AudioFeatureLoss(weights)
    if ref_features is None:
        with torch.no_grad():
            ref_features = audio_features(reference)
    if drv_weight <= 0:
        drv_ref = math.nan
    else:
        drv_ref = drv_db(reference[0].numpy()) if ref_drv is None else ref_drv
    onsets: List[list] = []

    def objective(y: torch.Tensor) -> torch.Tensor:
        total = loss(join_excerpts(y), ref_features=ref_features)[0]
        if math.isfinite(drv_ref):
            if not onsets:
                onsets.append(onset_table(y.detach().numpy()))
            drv = drv_torch(y, onsets[0])
            if drv is not None:
                total = total + drv_weight * (drv - drv_ref).square()
        return total

    return objective


class FrozenWhiteBox:
    """Ψ with its input fixed: precomputes x_in's features once, maps z -> (Θ, rendered excerpts).

    ``offset`` (46,) in real units is added to Ψ's Θ (then clamped to range): a correction made
    after ITO (the loudness match's gain) that later optimisation of z keeps.
    """

    def __init__(self, model: MasteringModel, x: torch.Tensor, offset: Optional[torch.Tensor] = None):
        self.model, self.x, self.offset = model, x, offset
        with torch.no_grad():
            f = spectral_features(x)  # (K, F, frames): pool all excerpts' frames into one Θ
        self.feats = f.permute(1, 0, 2).reshape(1, f.shape[1], -1)

    def theta(self, z: torch.Tensor) -> torch.Tensor:
        n = self.model.converter.predict_from_features(self.feats, z)
        th = P.denormalize_tensor(n)[0]
        return th if self.offset is None else P.clamp_tensor(th + self.offset.to(th.dtype))

    def render(self, z: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        th = self.theta(z)
        return render_chain(self.x, th, check_params=False), th


def _descend(variable: torch.Tensor, evaluate: Callable[[torch.Tensor], Tuple[torch.Tensor, Optional[torch.Tensor]]],
             steps: int, lr: float, patience: int, on_step, what: str):
    """RAdam on ``variable``; ``evaluate(v) -> (loss, θ or None)``. Keeps the best step; stops after
    ``steps`` updates or ``patience`` evaluations without improvement.

    Returns ``(losses, best variable, best θ, first θ, best step, steps run)``.
    """
    opt = torch.optim.RAdam([variable], lr=lr)
    losses: List[float] = []
    best, best_v, best_theta, first_theta, best_step, since_best, step = math.inf, None, None, None, 0, 0, 0
    for step in range(steps + 1):
        loss, theta = evaluate(variable)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise OptimisationError(f"{what}: the objective became {value} at step {step}; "
                                    "the input or reference cannot be optimised towards (silent or extreme?)")
        losses.append(value)
        if step == 0 and theta is not None:
            first_theta = theta.detach().clone()
        if on_step:
            on_step(step, value)
        if value < best:
            best, best_v, best_step, since_best = value, variable.detach().clone(), step, 0
            best_theta = theta.detach().clone() if theta is not None else None
        else:
            since_best += 1
            if since_best >= patience:
                break
        if step == steps:
            break
        if step % TRIM_EVERY == TRIM_EVERY - 1:
            release_memory()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return losses, best_v, best_theta, first_theta, best_step, step


def optimize_embedding(model: MasteringModel, x: torch.Tensor, z0: torch.Tensor, objective: Objective,
                       steps: int = ITO_STEPS, lr: float = 1e-2, patience: int = 5,
                       on_step: Optional[Callable[[int, float], None]] = None,
                       theta_offset: Optional[torch.Tensor] = None) -> ITOResult:
    """ITO on z_ref with Ψ frozen. ``x``: (K, 2, n) excerpts (or the whole track as K = 1).

    Stops after ``steps`` updates or when the loss has not improved for ``patience`` steps;
    returns the best step's embedding and Θ. ``on_step(step, loss)`` is called after each
    evaluation (progress bars, OSC feedback).
    """
    t0 = time.time()
    frozen = FrozenWhiteBox(model, x, theta_offset) if model.kind == "white-box" else None

    def evaluate(z):
        if frozen is not None:
            y, th = frozen.render(z)
        else:
            y, th = model.converter(x, z.expand(x.shape[0], -1))[0], None
        return objective(y), th

    requires = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        z = z0.detach().clone().requires_grad_(True)
        losses, best_z, best_theta, first_theta, best_step, step = _descend(z, evaluate, steps, lr, patience, on_step, "ITO")
    finally:
        for p, r in zip(model.parameters(), requires):
            p.requires_grad_(r)
    return ITOResult(best_z, best_theta, losses, best_step, step, time.time() - t0, first_theta)


def optimize_params(x: torch.Tensor, theta0: torch.Tensor, objective: Objective, steps: int = THETA_STEPS,
                    lr: float = 2e-2, patience: int = 50,
                    on_step: Optional[Callable[[int, float], None]] = None) -> ITOResult:
    """The paper's baseline: ITO directly on Θ (46 normalised parameters through a logit)."""
    t0 = time.time()
    n0 = P.normalize_tensor(theta0.double()).clamp(1e-3, 1 - 1e-3)
    logit = torch.log(n0 / (1 - n0)).float().requires_grad_(True)

    def evaluate(v):
        th = P.denormalize_tensor(torch.sigmoid(v))
        return objective(render_chain(x, th, check_params=False)), th

    losses, _, best_theta, _, best_step, step = _descend(logit, evaluate, steps, lr, patience, on_step, "ITO on Θ")
    return ITOResult(None, best_theta, losses, best_step, step, time.time() - t0, theta0.detach().clone())
