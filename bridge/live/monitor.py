"""A/B on the master bus: the amount of processing and a loudness-matched bypass, for the live engine.

* **Amount** (``/refmaster/amount 0…1``): every parameter moves ``amount`` of the way from its
  neutral value (the schema's default) to the preset's, in the normalised form the models and the
  faders use (so a frequency moves in equal ratios, a gain in equal dB): 1 is the preset, 0 the
  neutral chain, whatever the preset (:func:`scaled_chain`). The switches stay as they are.
* **Bypass** (``/refmaster/bypass 0|1``): the input, delayed by the chain's latency so that A and
  B line up sample for sample, gained to the processed signal's short-term loudness (BS.1770
  K-weighting over the last 3 s, :class:`LoudnessMatch`), so a producer compares tone and dynamics,
  not level. The chain keeps running while bypassed: switching back is instant and the loudness
  figures stay current.

Both are smoothed by the engine (:mod:`bridge.live.engine`): an amount change is a parameter
change (crossfaded across a block), the bypass a linear crossfade across a block, and the
bypass gain ramps from block to block.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Optional

import numpy as np

from engine import params as P

#: BS.1770 short-term loudness window (s).
SHORT_TERM_S = 3.0
#: Below this short-term loudness (LUFS) a signal counts as silent (BS.1770's absolute gate): the
#: bypass gain then holds its last value.
SILENCE_LUFS = -70.0
#: The most the bypassed signal is gained up or down (dB).
MAX_MATCH_DB = 24.0

_DEFAULTS = np.array([s.to_normalized(s.default) for s in P.PARAMS])


def scaled_chain(chain: P.ChainParams, amount: float) -> P.ChainParams:
    """``chain`` with every parameter ``amount`` of the way from neutral (see the module docstring)."""
    if amount >= 1.0:
        return chain
    a = max(0.0, float(amount))
    values = {}
    for s, d in zip(P.PARAMS, _DEFAULTS):
        v = chain.values[s.key]
        if a == 0.0 or v == s.default:   # exactly neutral (the round trip through 0…1 is not)
            values[s.key] = s.default
            continue
        values[s.key] = s.clamp(s.from_normalized(d + a * (s.to_normalized(v) - d)))
    return P.ChainParams(values, dict(chain.switches))


class DelayLine:
    """Delays a ``(2, n)`` stream by ``delay`` samples (blocks of any size)."""

    def __init__(self, delay: int):
        self.delay = int(delay)
        self._buf = np.zeros((2, self.delay), np.float32)

    def process(self, x: np.ndarray) -> np.ndarray:
        if not self.delay:
            return x
        cat = np.concatenate([self._buf, x], axis=1)
        self._buf = cat[:, x.shape[1]:]
        return cat[:, :x.shape[1]]


class LoudnessMatch:
    """Short-term loudness of a dry and a wet stream (K-weighted, over :data:`SHORT_TERM_S`), fed
    block by block, and the gain that brings the dry one to the wet one's loudness."""

    def __init__(self, sample_rate: int):
        import pyloudnorm

        meter = pyloudnorm.Meter(sample_rate)
        self._sos = np.array([np.concatenate([f.b, f.a]) / f.a[0] for f in meter._filters.values()])
        self._zi = [np.zeros((len(self._sos), 2, 2)) for _ in range(2)]
        self._window = int(SHORT_TERM_S * sample_rate)
        self._blocks = deque()          # (dry energy, wet energy, samples) per block
        self._sums = np.zeros(2)
        self._n = 0
        self.gain_db = 0.0              # the last gain found (held through silence)

    def add(self, dry: np.ndarray, wet: np.ndarray) -> float:
        """Feed one block of each; returns the current matching gain (dB)."""
        from scipy.signal import sosfilt

        energies = []
        for i, x in enumerate((dry, wet)):
            y, self._zi[i] = sosfilt(self._sos, np.asarray(x, dtype=np.float64), axis=-1, zi=self._zi[i])
            energies.append(float(np.square(y).sum()))       # summed over both channels (G = 1 each)
        n = dry.shape[1]
        self._blocks.append((energies[0], energies[1], n))
        self._sums += energies
        self._n += n
        while self._n - self._blocks[0][2] >= self._window:
            e0, e1, k = self._blocks.popleft()
            self._sums -= (e0, e1)
            self._n -= k
        loud = [loudness_lufs(e, self._n) for e in self._sums]
        if all(v > SILENCE_LUFS for v in loud):
            self.gain_db = float(np.clip(loud[1] - loud[0], -MAX_MATCH_DB, MAX_MATCH_DB))
        return self.gain_db


def loudness_lufs(energy: float, samples: int) -> float:
    """BS.1770 loudness of a K-weighted energy summed over channels and ``samples`` frames."""
    if samples <= 0 or energy <= 0.0:
        return -math.inf
    return -0.691 + 10.0 * math.log10(energy / samples)


class Monitor:
    """Bypass and amount for one engine: the delayed dry path, the loudness match and the current
    bypass weight and gain (both ramped across the block in which they change)."""

    def __init__(self, sample_rate: int, latency: int, block: int):
        self.dry = DelayLine(latency)
        self.match = LoudnessMatch(sample_rate)
        self.weight = 0.0             # 0: processed, 1: bypassed
        self.gain = 1.0               # linear gain on the bypassed signal
        self._ramp = ((np.arange(block, dtype=np.float32) + 1) / block)[None, :]

    def reset(self) -> None:
        self.dry = DelayLine(self.dry.delay)

    def mix(self, x: np.ndarray, y: np.ndarray, bypass: float) -> np.ndarray:
        """The output for input block ``x`` and processed block ``y``, ``bypass`` the target (0 or 1)."""
        dry = self.dry.process(x)
        gain = 10.0 ** (self.match.add(dry, y) / 20.0)
        w0, w1, g0 = self.weight, float(bypass), self.gain
        self.weight, self.gain = w1, gain
        if w0 == w1 == 0.0:
            return y
        ramp = self._ramp if self._ramp.shape[1] == y.shape[1] else \
            ((np.arange(y.shape[1], dtype=np.float32) + 1) / y.shape[1])[None, :]
        w = w0 + (w1 - w0) * ramp
        g = g0 + (gain - g0) * ramp
        return ((1.0 - w) * y + w * g * dry).astype(np.float32)


def control_value(controls: Optional[dict], name: str) -> float:
    """A live control's value from a state's controls (its default where absent)."""
    from bridge.osc.state import CONTROLS

    return float((controls or {}).get(name, CONTROLS[name][2]))
