"""Streaming meters: BS.1770 integrated loudness and true peak of a signal fed in blocks.

Each equals its whole-signal definition in :mod:`engine.analysis.features`
(``integrated_loudness``, ``true_peak_db``) to float rounding, whatever the block sizes, and
keeps only small state, so a render (:mod:`export.render`) or an analysis
(:class:`engine.analysis.features.Analysis`) of any length runs in bounded memory.
"""

from __future__ import annotations

import math
from typing import List

import numpy as np
import pyloudnorm
from scipy.signal import resample_poly, sosfilt

from engine.params import SAMPLE_RATE


class LoudnessMeter:
    """BS.1770 integrated loudness of a stream, equal to pyloudnorm's ``integrated_loudness``.

    K-weighting with pyloudnorm's own filters (carried state), mean square per 100 ms step,
    400 ms gating blocks with 75 % overlap built from four steps, absolute and relative gates.
    """

    def __init__(self, sample_rate: int = SAMPLE_RATE):
        meter = pyloudnorm.Meter(sample_rate)
        # pyloudnorm's two K-weighting biquads as one cascade: one pass over the samples instead of
        # two (2.3x faster; equal to the two lfilter passes to 3e-13)
        self._sos = np.array([np.concatenate([f.b, f.a]) / f.a[0] for f in meter._filters.values()])
        self._zi = np.zeros((len(self._sos), 2, 2))
        self.rate = sample_rate
        self.step = int(round(0.1 * sample_rate))
        self._sums: List[np.ndarray] = []    # per 100 ms step: sum of squares per channel
        self._partial = np.zeros(2)
        self._partial_n = 0
        self.samples = 0

    def add(self, x: np.ndarray) -> None:
        y, self._zi = sosfilt(self._sos, np.asarray(x, dtype=np.float64), axis=-1, zi=self._zi)
        n, step = y.shape[1], self.step
        self.samples += n
        pos = 0
        if self._partial_n:                      # finish the step a previous block left open
            pos = min(step - self._partial_n, n)
            self._partial += np.square(y[:, :pos]).sum(axis=1)
            self._partial_n += pos
            if self._partial_n == step:
                self._sums.append(self._partial)
                self._partial, self._partial_n = np.zeros(2), 0
        whole = (n - pos) // step                # whole steps at once
        if whole:
            self._sums.extend(np.square(y[:, pos:pos + whole * step]).reshape(2, whole, step).sum(axis=-1).T)
            pos += whole * step
        if pos < n:
            self._partial += np.square(y[:, pos:]).sum(axis=1)
            self._partial_n += n - pos

    def integrated(self, weights=None) -> float:
        """LUFS (−inf for silence), with pyloudnorm's block layout: blocks every 100 ms.

        ``weights`` (one per channel, default 1 each) weight the channels' K-weighted energies:
        a stream of mid and side fed as two channels has the loudness of L = m + g·s, R = m − g·s
        with weights ``(2, 2 g²)`` (K-weighting is linear; the cross terms cancel), for any g.
        """
        w = np.ones(2) if weights is None else np.asarray(weights, dtype=np.float64)
        sums = self._sums + ([self._partial] if self._partial_n else [])
        block = 4 * self.step
        duration = self.samples / self.rate
        if duration < 0.4:
            return float("-inf")
        n_blocks = int(round((duration - 0.4) / (0.4 * 0.25))) + 1
        energies = []
        for j in range(n_blocks):
            start, stop = j * self.step, j * self.step + block
            stop = min(stop, self.samples)
            parts = sums[j:j + 4]
            if not parts or stop <= start:
                continue
            energies.append(np.sum(parts, axis=0) / (0.4 * self.rate))   # pyloudnorm's divisor, also for a
            # last block the signal's end cuts short
        z = np.array(energies) * w
        with np.errstate(divide="ignore"):
            loud = -0.691 + 10.0 * np.log10(z.sum(axis=1))
        z = z[loud >= -70.0]
        if len(z) == 0:
            return float("-inf")
        rel = -0.691 + 10.0 * np.log10(z.mean(axis=0).sum()) - 10.0
        with np.errstate(divide="ignore"):
            loud = -0.691 + 10.0 * np.log10(z.sum(axis=1))
        z = z[loud > rel]
        if len(z) == 0:
            return float("-inf")
        return float(-0.691 + 10.0 * np.log10(z.mean(axis=0).sum()))


class TruePeakMeter:
    """4x oversampled peak of a stream, as :func:`engine.analysis.features.true_peak_db`.

    Each block is upsampled together with ``CONTEXT`` samples on either side (the polyphase
    filter's reach), so block edges do not change the result.
    """

    CONTEXT = 64

    def __init__(self):
        self._tail = np.zeros((2, 0))
        self._pending = np.zeros((2, 0))
        self.peak = 0.0

    def _measure(self, left: np.ndarray, body: np.ndarray, right: np.ndarray) -> None:
        if body.shape[1] == 0:
            return
        seg = np.concatenate([left, body, right], axis=1)
        up = resample_poly(seg, 4, 1, axis=-1)
        a = 4 * left.shape[1]
        self.peak = max(self.peak, float(np.abs(up[:, a:a + 4 * body.shape[1]]).max()))

    def add(self, x: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.float64)
        data = np.concatenate([self._pending, x], axis=1)
        if data.shape[1] <= self.CONTEXT:
            self._pending = data
            return
        body, right = data[:, :-self.CONTEXT], data[:, -self.CONTEXT:]
        self._measure(self._tail, body, right)
        self._tail = np.concatenate([self._tail, body], axis=1)[:, -self.CONTEXT:]
        self._pending = right

    def db(self) -> float:
        self._measure(self._tail, self._pending, np.zeros((2, 0)))
        self._pending = np.zeros((2, 0))
        return 20.0 * math.log10(max(self.peak, 1e-10))
