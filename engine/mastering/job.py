"""The producer's main job, as explicit steps: normalise, embed, predict, ITO, match, nudge, render.

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
5. tonal-balance, dynamics and loudness match (white-box, default on; :mod:`engine.mastering.matches`,
   :mod:`engine.mastering.tonal`): the 18 EQ parameters and the width are fitted to the
   reference's long-term mid/side bark balance, the limiter threshold is chosen for its DRV and
   the make-up gain for its loudness;
6. nudges ("brighter, wider") run the same ITO towards changed features of the current output;
7. the whole track is rendered with the final Θ (white-box) or the final z (black-box).

What ITO optimises is one strategy (:data:`ITO_TARGETS`): z_ref through the frozen Ψ, or Θ
directly; ITO and nudges both go through it. Each step is timed into ``MasterResult.seconds``.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional

import numpy as np
import torch

from engine import params as P
from engine.analysis.features import audio_features, drv_db, integrated_loudness
from engine.dsp.chain import render_chain, render_items
from engine.dsp.metering import gain_reduction
from engine.errors import ChainError, UsageError
from engine.mastering.ito import (DRV_WEIGHT, FrozenWhiteBox, ITOResult, Objective, af_objective, join_excerpts,
                                  optimize_embedding, optimize_params, release_memory)
from engine.mastering.matches import match_dynamics, match_loudness
from engine.mastering.nudge import nudge_objective, parse_nudges
from engine.mastering.tonal import balance_of, match_tonal_balance
from engine.io.stream import array_reader
from engine.mastering.track import KEEP_SECONDS, Track, TrackRender
from engine.model.fxnorm import load_stats
from engine.model.networks import MasteringModel


@dataclass
class MasterSettings:
    ito: bool = True
    ito_steps: int = P.ITO_STEPS
    lr: float = 0.1                    # measured best of 1e-2 / 3e-2 / 1e-1 on real pairs (README)
    patience: int = 5
    ito_target: str = "embedding"      # or "params" (the paper's baseline)
    theta_steps: int = P.THETA_STEPS
    theta_lr: float = 2e-2
    excerpt_seconds: float = 2.5
    excerpts: int = 3
    match_loudness: bool = True
    match_dynamics: bool = True        # limiter threshold for the reference's DRV (needs match_loudness)
    match_tonal: bool = True           # EQ fitted to the reference's bark balance (needs match_loudness)
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
    tonal: Optional[Dict[str, float]] = None     # balance distance (dB) before / after the EQ fit
    gain_reduction: Optional[Dict[str, float]] = None  # dB, p95 over time, per compressor band and limiter
    blocks: Optional[Callable[[], Iterator[np.ndarray]]] = None  # the master segment by segment (white-box);
    # an input too long to keep (engine.mastering.track.KEEP_SECONDS) has output and x_norm None and only this


class EmbeddingTarget:
    """ITO on z_ref with Ψ frozen (the default; SPEC.md "Inference-time optimisation")."""

    name = "embedding"

    def optimise(self, job: "_Job", objective: Objective, phase: str) -> ITOResult:
        s = job.settings
        if phase == "ito":
            steps, patience, offset = s.ito_steps, s.patience, None
        else:
            # the matches' corrections (gain, limiter threshold) stay on top of what the nudge moves
            steps, patience = s.nudge_steps, max(s.patience, 10)
            offset = None if job.theta is job.theta_ito else (job.theta - job.theta_ito).detach().float()
        r = optimize_embedding(job.model, job.excerpts, job.z, objective, steps=steps, lr=s.lr, patience=patience,
                               on_step=job.callback(phase), theta_offset=offset)
        job.z, job.theta = r.z, r.theta
        return r


class ParamsTarget:
    """The paper's baseline: ITO directly on Θ (white-box only)."""

    name = "params"

    def optimise(self, job: "_Job", objective: Objective, phase: str) -> ITOResult:
        s = job.settings
        if not job.white:
            raise UsageError("ITO on Θ needs the white-box model")
        steps, patience = (s.theta_steps, max(s.patience, 50)) if phase == "ito" else \
            (s.nudge_steps * 4, max(s.patience, 20))
        r = optimize_params(job.excerpts, job.theta, objective, steps=steps, lr=s.theta_lr, patience=patience,
                            on_step=job.callback(phase))
        job.theta = r.theta
        return r


#: What ITO can optimise, by ``MasterSettings.ito_target``.
ITO_TARGETS = {t.name: t for t in (EmbeddingTarget(), ParamsTarget())}


class _Job:
    """The state one :func:`master` call carries from step to step."""

    def __init__(self, model: MasteringModel, x: np.ndarray, reference: Optional[np.ndarray],
                 ito_reference: Optional[np.ndarray], settings: MasterSettings,
                 on_step: Optional[Callable[[str, int, float], None]]):
        self.model, self.x, self.reference, self.settings, self.on_step = model, x, reference, settings, on_step
        self.level_ref = ito_reference if ito_reference is not None else reference
        self.white = model.kind == "white-box"
        self.target = ITO_TARGETS[settings.ito_target]
        self.seconds: Dict[str, float] = {}
        self.z = self.theta = self.theta0 = self.theta_ito = self.y = None
        self.ito_result = self.nudge_result = None
        self.loudness = self.dynamics = self.tonal = self.gain_reduction = None
        self.words: List[str] = []
        self._ref_stats: Dict[str, object] = {}
        self._material: Optional[tuple] = None
        self._render: Optional[TrackRender] = None   # the loudness match's renderer, while Θ's first modules hold

    @contextlib.contextmanager
    def timed(self, step: str):
        t0 = time.time()
        yield
        release_memory()   # what the step freed goes back to the system (glibc keeps it otherwise: +400 MB)
        self.seconds[step] = time.time() - t0

    def callback(self, phase: str):
        return (lambda step, loss: self.on_step(phase, step, loss)) if self.on_step else None

    def target_stats(self):
        """The features and DRV of the reference ITO and the matches aim at, computed once."""
        if not self._ref_stats:
            with torch.no_grad():
                self._ref_stats["features"] = audio_features(torch.from_numpy(self.level_ref).unsqueeze(0))
            self._ref_stats["drv"] = drv_db(self.level_ref)
        return self._ref_stats["features"], self._ref_stats["drv"]

    def material(self):
        """What the tonal and dynamics matches and the metering render: the track or segments of it
        (:func:`engine.mastering.matches.dynamics_material`) and how much louder those are than the
        whole (LU), found once (each was measured two or three times over)."""
        if self._material is None:
            self._material = self.track.material()
        return self._material

    # -- the steps, in order
    def normalise(self) -> None:
        """f_norm of the input, as in training, and the excerpts Ψ and ITO read."""
        with self.timed("fx_norm"):
            if isinstance(self.x, np.ndarray):
                self.track = Track(array_reader(self.x), self.x.shape[1], load_stats())
            else:   # a long input decoded to disk (engine.io.stream.DecodedTrack)
                self.track = Track(self.x.read, self.x.frames, load_stats())
            self.x_norm = self.track.x_norm   # None for a track too long to keep
        s = self.settings
        self.excerpts = self.track.excerpts(s.excerpt_seconds, s.excerpts)

    def embed(self, z_start: Optional[np.ndarray]) -> None:
        """z_ref = Φ(reference), or the embedding given (a stored preset's)."""
        with self.timed("embed"), torch.no_grad():
            self.z = torch.from_numpy(z_start).float().unsqueeze(0) if z_start is not None else \
                self.model.embed(torch.from_numpy(self.reference).unsqueeze(0))

    def predict(self) -> None:
        """Ψ's one global Θ for the excerpts (white-box)."""
        if self.white:
            with self.timed("predict"), torch.no_grad():
                self.theta = FrozenWhiteBox(self.model, self.excerpts).theta(self.z)
        self.theta0 = self.theta_ito = self.theta

    def ito(self) -> None:
        """Refine z_ref (or Θ) towards the ITO reference's features and dynamics."""
        if not self.settings.ito:
            return
        with self.timed("ito"):
            ref_feats, ref_drv = self.target_stats()
            objective = af_objective(None, drv_weight=self.settings.drv_weight, ref_features=ref_feats, ref_drv=ref_drv)
            self.ito_result = self.target.optimise(self, objective, "ito")
        self.theta_ito = self.theta

    def match(self) -> None:
        """The limiter threshold for the reference's DRV, the EQ for its tonal balance, then the
        make-up gain for its loudness."""
        s = self.settings
        if not (self.white and s.match_loudness and self.level_ref is not None):
            return
        target_lufs = integrated_loudness(self.level_ref)
        if s.match_tonal:
            with self.timed("tonal"):
                self.theta, self.tonal = self._match_tonal(target_lufs)
        if s.match_dynamics:
            with self.timed("dynamics"):
                ref_feats, ref_drv = self.target_stats()
                self.theta, self.dynamics = match_dynamics(None, self.theta, target_lufs, ref_drv,
                                                           {k: v.double() for k, v in ref_feats.items()}, s.drv_weight,
                                                           material=self.material())
        with self.timed("loudness"):
            # the whole track in segments: the modules before the gain once, gain to limiter per correction
            self._render = TrackRender(self.track, self.theta)
            self.theta, _, self.loudness = match_loudness(None, self.theta, target_lufs, loudness=self._render.loudness)

    def _match_tonal(self, target_lufs: float):
        """The EQ and width fitted to the reference's balance, on the material the dynamics match
        renders, at the loudness the master will have (so the limiter works as it will); the
        dynamics match after it then has the last word on the peaks."""
        segments, offset = self.material()
        render = lambda th: join_excerpts(render_items(segments, th, check_params=False))  # noqa: E731
        level = target_lufs + offset
        if not math.isfinite(level):
            return self.theta, None
        theta, _, _ = match_loudness(None, self.theta, level, render)
        return match_tonal_balance(theta, render, balance_of(torch.from_numpy(self.level_ref).unsqueeze(0)), level)

    def nudge(self) -> None:
        """The same ITO towards changed features of the current output ("brighter, wider")."""
        if not self.settings.nudge:
            return
        self._drop_render()  # the nudge changes all of Θ: the match's first modules no longer hold
        self.words = parse_nudges(self.settings.nudge)
        with self.timed("nudge"):
            with torch.no_grad():
                current = render_chain(self.excerpts, self.theta, check_params=False) if self.white else \
                    self.model.converter(self.excerpts, self.z.expand(self.excerpts.shape[0], -1))[0]
            self.nudge_result = self.target.optimise(self, nudge_objective(join_excerpts(current), self.words), "nudge")

    def _drop_render(self) -> None:
        if self._render is not None:
            self._render.close()
            self._render = None

    def blocks(self) -> Iterator[np.ndarray]:
        """The whole master, segment by segment (white-box)."""
        if self._render is not None:
            return self._render.blocks(self.theta)
        from engine.dsp.chain import render_segments

        return render_segments(self.track.read, self.track.total, self.theta.detach())

    def render(self) -> Optional[np.ndarray]:
        """The whole track with the final Θ (white-box) or the final z (black-box); None for a track
        too long to keep, whose master :meth:`blocks` gives segment by segment."""
        out = None
        with self.timed("render"):
            if not self.white:
                if self.x_norm is None:
                    raise UsageError(f"--model black-box masters inputs up to {KEEP_SECONDS // 60} minutes "
                                     "(its network renders the whole track at once)")
                with torch.no_grad():
                    out = self.model.converter(torch.from_numpy(self.x_norm).unsqueeze(0), self.z)[0][0].numpy()
            elif self.x_norm is not None:
                out = self._render.render(self.theta) if self._render is not None else \
                    np.concatenate(list(self.blocks()), axis=1)
                self._drop_render()
        if out is not None and not np.isfinite(out).all():
            raise ChainError("render", "the master contains NaN or infinite samples")
        if self.white:
            with self.timed("metering"):
                self.gain_reduction = gain_reduction(self.material()[0], self.theta)
        return out


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
        raise UsageError("master needs a reference or a starting embedding")
    if s.ito and reference is None and ito_reference is None:
        raise UsageError("ITO needs a reference to optimise towards")
    if s.ito_target not in ITO_TARGETS:
        raise UsageError(f"ito_target must be one of {', '.join(ITO_TARGETS)}, not {s.ito_target!r}")
    model.eval()
    job = _Job(model, x, reference, ito_reference, s, on_step)
    t0 = time.time()
    job.normalise()
    job.embed(z_start)
    job.predict()
    job.ito()
    job.match()
    job.nudge()
    out = job.render()
    job.seconds["total"] = time.time() - t0
    return MasterResult(out, job.x_norm, _as_chain(job.theta), _as_chain(job.theta0), job.z[0].detach().numpy().copy(),
                        job.ito_result, job.nudge_result, job.words, job.seconds, job.loudness, job.dynamics,
                        job.tonal, job.gain_reduction, job.blocks if job.white else None)
