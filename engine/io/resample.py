"""Streaming polyphase resampling that equals ``scipy.signal.resample_poly`` (what the offline
render uses, via :func:`engine.io.audio.resample`) block for block.

``resample_poly(x, up, down)`` is ``y[k] = sum_n x[n] h[(k + r) down - n up]`` for a fixed
Kaiser-windowed FIR ``h`` (zero-padded by scipy) and offset ``r``, with ``ceil(len(x) up / down)``
outputs. Output ``k`` therefore needs input up to ``floor((k + r) down / up)``; this class
emits every output whose inputs have arrived, by running ``scipy.signal.upfirdn`` over a short
buffer that starts at a multiple of ``down`` (so the buffer's output grid is the global one),
and :meth:`flush` finishes with the zeros that ``resample_poly`` assumes past the end.
(pedalboard's ``StreamResampler`` uses another filter and sample phase: about a third of a
sample away from ``resample_poly`` each way.)
"""

from __future__ import annotations

from fractions import Fraction
from math import gcd

import numpy as np
from scipy.signal import firwin, upfirdn


class StreamingResampler:
    """``(C, n)`` blocks at ``source_rate`` in, ``(C, m)`` float32 blocks at ``target_rate`` out."""

    def __init__(self, source_rate: int, target_rate: int, channels: int = 2):
        ratio = Fraction(target_rate, source_rate).limit_denominator(10000)  # as engine.io.audio.resample
        up, down = ratio.numerator, ratio.denominator
        g = gcd(up, down)
        self.up, self.down = up // g, down // g
        # scipy.signal.resample_poly's filter and offsets (window=("kaiser", 5.0), padtype="constant")
        max_rate = max(self.up, self.down)
        half_len = 10 * max_rate
        h = firwin(2 * half_len + 1, 1.0 / max_rate, window=("kaiser", 5.0)) * self.up
        n_pre_pad = self.down - half_len % self.down
        self.h = np.concatenate([np.zeros(n_pre_pad), h, np.zeros(self.down)])  # extra zeros are harmless
        self.offset = (half_len + n_pre_pad) // self.down                        # r
        self.channels = channels
        self.reset()

    def reset(self) -> None:
        self._buf = np.zeros((self.channels, 0))
        self._buf_start = 0          # absolute index of _buf[:, 0]; a multiple of down
        self._received = 0           # inputs so far
        self._emitted = 0            # outputs so far

    def _last_input_needed(self, k: int) -> int:
        return ((k + self.offset) * self.down) // self.up

    def _first_input_needed(self, k: int) -> int:
        return max(0, -(-((k + self.offset) * self.down - len(self.h) + 1) // self.up))

    def _emit(self, k_end: int) -> np.ndarray:
        """Outputs ``_emitted … k_end - 1`` from the buffer (which must hold their inputs)."""
        if k_end <= self._emitted:
            return np.zeros((self.channels, 0), np.float32)
        full = upfirdn(self.h, self._buf, self.up, self.down, axis=-1)
        m0 = self._emitted + self.offset - self._buf_start * self.up // self.down
        y = full[:, m0:m0 + (k_end - self._emitted)]
        if y.shape[1] < k_end - self._emitted:  # beyond the buffer's own output: zeros in, zeros out
            y = np.pad(y, ((0, 0), (0, k_end - self._emitted - y.shape[1])))
        self._emitted = k_end
        # drop inputs no later output needs, keeping the buffer start a multiple of down
        keep = self._first_input_needed(self._emitted) // self.down * self.down
        if keep > self._buf_start:
            self._buf = self._buf[:, keep - self._buf_start:]
            self._buf_start = keep
        return y.astype(np.float32)

    def process(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        self._buf = np.concatenate([self._buf, x], axis=1)
        self._received += x.shape[1]
        # largest k with floor((k + r) down / up) <= received - 1
        k_end = (self._received * self.up - 1) // self.down - self.offset + 1 if self._received else 0
        k_end = max(k_end, self._emitted)
        while k_end > self._emitted and self._last_input_needed(k_end - 1) > self._received - 1:
            k_end -= 1
        return self._emit(k_end)

    def flush(self) -> np.ndarray:
        """The remaining outputs, up to ``ceil(inputs · up / down)`` in all (as ``resample_poly``)."""
        total = -(-self._received * self.up // self.down)
        pad = len(self.h) // self.up + 2 * self.down
        self._buf = np.concatenate([self._buf, np.zeros((self.channels, pad))], axis=1)
        return self._emit(total)
