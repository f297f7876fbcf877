"""The input of a master as the job reads it: f_norm(input) in windows, and the chain on it in segments.

Why (issue 14): a master needs the whole normalised track in three places — the excerpts ITO
optimises on, the material the tonal and dynamics matches render, and the full-track loudness
match and render — but none of them needs it all at once, and holding it whole cost a 4-minute
input 1.5 GB and a 60-minute one far more than the machine had (the f_norm EQ as one float64 FFT,
the chain's multiband bands and gains at full length).

:class:`Track` measures f_norm in passes over the input
(:class:`engine.model.fxnorm.StreamedFxNorm`) and then reads any window of f_norm(input): from
the array it keeps (an input of ordinary length, up to :data:`KEEP_SECONDS`: also
``MasterResult.x_norm``) or computed again from the input for each window (a long input read
from disk: :class:`engine.io.stream.DecodedTrack`). :class:`TrackRender` renders the chain on it
in segments (:func:`engine.dsp.chain.render_segments`): the modules before the make-up gain once
(kept in memory, or on disk for a long input), the gain, imager and limiter per loudness
correction, metered on the way.
"""

from __future__ import annotations

from typing import Callable, Iterator, List, Optional, Tuple

import numpy as np
import torch

from engine import params as P
from engine.analysis.meters import LoudnessMeter
from engine.dsp.chain import CHAIN_LATENCY, SEGMENT, render_segments
from engine.io.stream import Scratch, array_reader
from engine.mastering.ito import choose_windows
from engine.mastering.matches import dynamics_windows, join_excerpts
from engine.model.fxnorm import StreamedFxNorm
from engine.params import SAMPLE_RATE

#: Inputs up to this long keep f_norm(input) and the chain's first modules in memory (float32:
#: 212 MB each for 20 minutes); longer ones recompute f_norm per window and keep the rest on disk.
KEEP_SECONDS = 20 * 60

_AFTER_GAIN = torch.arange(len(P.MODULES)) >= P.MODULES.index("gain")


class Track:
    """f_norm(input) for any window; ``read(start, n)`` of the input gives zeros outside it."""

    def __init__(self, read: Callable[[int, int], np.ndarray], total: int, stats: Optional[dict] = None,
                 keep: Optional[bool] = None):
        self.total = total
        self.fx = StreamedFxNorm(read, total, stats)
        self.keep = total <= KEEP_SECONDS * SAMPLE_RATE if keep is None else keep
        self.x_norm: Optional[np.ndarray] = None
        if self.keep:
            self.x_norm = np.empty((2, total), np.float32)
            for start in range(0, total, SEGMENT):
                n = min(SEGMENT, total - start)
                self.x_norm[:, start : start + n] = self.fx.window(start, n)
            self._read = array_reader(self.x_norm)
        self._loudness: Optional[float] = None

    def read(self, start: int, n: int) -> np.ndarray:
        """f_norm(input)[:, start : start + n] as (2, n) float32, zeros outside the track."""
        if self.keep:
            return self._read(start, n)
        out = np.zeros((2, n), np.float32)
        a, b = max(start, 0), min(start + n, self.total)
        if b > a:
            out[:, a - start : b - start] = self.fx.window(a, b - a)
        return out

    def windows(self, windows: List[Tuple[int, int]]) -> torch.Tensor:
        """Equal-length windows stacked as a batch (K, 2, n) (a single window as (1, 2, n))."""
        return torch.from_numpy(np.stack([self.read(s, n) for s, n in windows]))

    def excerpts(self, seconds: float, count: int) -> torch.Tensor:
        """The excerpts Ψ and ITO read (:func:`engine.mastering.ito.choose_excerpts`)."""
        return self.windows(choose_windows(self.read, self.total, seconds, count))

    def loudness(self) -> float:
        """Integrated loudness of f_norm(input) (metered block by block, once)."""
        if self._loudness is None:
            meter = LoudnessMeter()
            for start in range(0, self.total, SEGMENT):
                meter.add(self.read(start, min(SEGMENT, self.total - start)))
            self._loudness = meter.integrated()
        return self._loudness

    def material(self) -> Tuple[torch.Tensor, float]:
        """The dynamics material (:func:`engine.mastering.matches.dynamics_material`) and how much
        louder it is than the whole track (LU)."""
        from engine.analysis.features import integrated_loudness

        windows = dynamics_windows(self.total)
        segments = self.windows(windows)
        if len(windows) == 1:
            return segments, 0.0
        return segments, integrated_loudness(join_excerpts(segments)[0].numpy()) - self.loudness()


class TrackRender:
    """``render_chain(f_norm(input), θ)`` in segments, for every θ that differs from ``theta`` only
    from the make-up gain on: EQ, saturation and multiband are rendered once (with the chain's
    zero tail, so the limiter's look-ahead at the end reads what it reads in a whole render)."""

    def __init__(self, track: Track, theta: torch.Tensor):
        self.total = track.total
        theta = theta.detach()
        blocks = render_segments(track.read, track.total + CHAIN_LATENCY, theta, ~_AFTER_GAIN)
        if track.keep:
            pre, pos = np.empty((2, track.total + CHAIN_LATENCY), np.float32), 0
            for y in blocks:
                pre[:, pos : pos + y.shape[1]] = y
                pos += y.shape[1]
            self._read, self._scratch = array_reader(pre), None
        else:
            self._scratch = Scratch()
            for y in blocks:
                self._scratch.append(y)
            self._read = self._scratch.read

    def blocks(self, theta: torch.Tensor) -> Iterator[np.ndarray]:
        """The master with ``theta`` as consecutive (2, ≤ SEGMENT) blocks."""
        return render_segments(self._read, self.total, theta.detach(), _AFTER_GAIN)

    def loudness(self, theta: torch.Tensor) -> float:
        """Integrated loudness of the master with ``theta``, metered on the way (nothing kept)."""
        meter = LoudnessMeter()
        for y in self.blocks(theta):
            meter.add(y)
        return meter.integrated()

    def render(self, theta: torch.Tensor) -> np.ndarray:
        """The master with ``theta`` as one (2, T) float32 array."""
        out = np.empty((2, self.total), np.float32)
        pos = 0
        for y in self.blocks(theta):
            out[:, pos : pos + y.shape[1]] = y
            pos += y.shape[1]
        return out

    def close(self) -> None:
        if self._scratch is not None:
            self._scratch.close()
