"""Fx-normalisation f_norm: EQ, stereo image and loudness brought to corpus mean statistics.

SPEC.md: f_norm maps any song to fixed mean statistics precomputed on the training corpus;
compression and distortion are not normalised. Three steps, in order:

1. **EQ**: the song's average spectrum (Welch, 8192-point, both channels) in 1/3-octave bands
   from 20 Hz to 20 kHz, as dB relative to its total power, is pulled to the corpus mean
   shape. The per-band correction is limited to ±12 dB (a band the song barely has, like the
   air band of a low-passed mp3, is not boosted into noise), smoothed over neighbouring bands,
   interpolated on a log-frequency axis and applied as a zero-phase gain in the frequency
   domain.
2. **Stereo image**: the side gain that brings side/mid energy to the corpus's geometric-mean
   ratio, limited to ×0.25…×4 (a mono song is not turned into noise-wide).
3. **Loudness**: a gain to the corpus's mean integrated loudness (BS.1770, pyloudnorm).

The statistics come from ``refmaster fxnorm-stats FOLDER`` and live in
``engine/data/fxnorm_stats.json`` (a few hundred bytes).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional, Union

import numpy as np
from scipy.fft import irfft, next_fast_len, rfft
from scipy.signal import welch

from engine.analysis.features import integrated_loudness
from engine.errors import RefmasterError
from engine.params import SAMPLE_RATE

STATS_PATH = Path(__file__).resolve().parents[1] / "data" / "fxnorm_stats.json"  # engine/data
MAX_EQ_DB = 12.0
SIDE_GAIN_LIMITS = (0.25, 4.0)
_EPS = 1e-12


def third_octave_centres() -> np.ndarray:
    """31 ISO-style 1/3-octave centres from 20 Hz to 20 kHz (base-2)."""
    return 1000.0 * 2.0 ** (np.arange(-17, 14) / 3.0)


def band_shape_db(audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Average spectrum of ``(2, T)`` audio in 1/3-octave bands, dB relative to total power."""
    x = np.asarray(audio, dtype=np.float64)
    nper = min(8192, x.shape[-1])
    f, psd = welch(x, fs=sample_rate, nperseg=nper, noverlap=nper // 2, axis=-1)
    return _shape_from_psd(f, psd.mean(0))


def side_mid_ratio(audio: np.ndarray) -> float:
    x = np.asarray(audio, dtype=np.float64)
    m, s = x[0] + x[1], x[0] - x[1]
    return float(np.sum(s * s) / (np.sum(m * m) + _EPS))


def compute_stats(songs, sample_rate: int = SAMPLE_RATE) -> dict:
    """Mean statistics over ``{name: (2, T) audio}`` (or an iterable of ``(name, audio)`` pairs,
    read once, so a large corpus need not be in memory at once): the content of the stats file."""
    names, shapes, ratios, louds = [], [], [], []
    for name, a in (songs.items() if isinstance(songs, dict) else songs):
        names.append(name)
        shapes.append(band_shape_db(a, sample_rate))
        ratios.append(max(side_mid_ratio(a), 1e-6))
        louds.append(integrated_loudness(a, sample_rate))
    if not names:
        raise RefmasterError("fxnorm-stats: no songs to compute statistics from")
    shapes, ratios, louds = np.stack(shapes), np.array(ratios), np.array(louds)
    return {
        "version": 1,
        "songs": sorted(names),
        "band_centres_hz": [round(float(c), 3) for c in third_octave_centres()],
        "spectrum_shape_db": [round(float(v), 3) for v in shapes.mean(0)],
        "side_mid_ratio": round(float(np.exp(np.log(ratios).mean())), 6),
        "loudness_lufs": round(float(louds.mean()), 3),
    }


def load_stats(path: Optional[Union[str, Path]] = None) -> dict:
    p = Path(path) if path else STATS_PATH
    try:
        stats = json.loads(p.read_text())
        for k in ("spectrum_shape_db", "side_mid_ratio", "loudness_lufs"):
            stats[k]
    except (OSError, ValueError, KeyError) as e:
        raise RefmasterError(f"{p}: cannot read Fx-normalisation statistics ({e}); "
                             "recompute them with `refmaster fxnorm-stats FOLDER`") from None
    return stats


#: Silence on each side of what the EQ filters (samples): its zero-phase response has died out there.
EQ_PAD = 1 << 15


def _eq_correction(shape_db: np.ndarray, target_db: np.ndarray) -> np.ndarray:
    """Per 1/3-octave band: the EQ correction (dB), limited and smoothed over neighbours."""
    corr = np.clip(target_db - shape_db, -MAX_EQ_DB, MAX_EQ_DB)
    return np.convolve(np.pad(corr, 1, mode="edge"), np.ones(3) / 3, mode="valid")


def _eq_gain(corr: np.ndarray, n: int, sample_rate: int) -> np.ndarray:
    """The correction as a linear zero-phase gain on the rfft grid of ``n`` points."""
    freqs = np.arange(n // 2 + 1) * sample_rate / n
    logf = np.log(np.maximum(freqs, 1.0))
    return 10 ** (np.interp(logf, np.log(third_octave_centres()), corr) / 20)


def _apply_eq(x: np.ndarray, corr: np.ndarray, sample_rate: int) -> np.ndarray:
    """``x`` (2, T) through the correction, with :data:`EQ_PAD` samples of silence on each side."""
    T = x.shape[-1]
    n = next_fast_len(T + 2 * EQ_PAD)
    X = rfft(np.pad(x, ((0, 0), (EQ_PAD, n - T - EQ_PAD))), axis=-1)
    return irfft(X * _eq_gain(corr, n, sample_rate), n, axis=-1)[:, EQ_PAD : EQ_PAD + T]


def _eq_to_shape(x: np.ndarray, target_db: np.ndarray, sample_rate: int) -> np.ndarray:
    return _apply_eq(x, _eq_correction(band_shape_db(x, sample_rate), target_db), sample_rate)


def fx_normalize(audio: np.ndarray, stats: Optional[dict] = None, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """f_norm of ``(2, T)`` audio (float32 out). Silent input comes back unchanged."""
    stats = stats or load_stats()
    x = np.asarray(audio, dtype=np.float64)
    if not np.any(np.abs(x) > 1e-7):
        return x.astype(np.float32)
    x = _eq_to_shape(x, np.asarray(stats["spectrum_shape_db"]), sample_rate)
    r = side_mid_ratio(x)
    g = math.sqrt(stats["side_mid_ratio"] / max(r, 1e-12))
    g = min(max(g, SIDE_GAIN_LIMITS[0]), SIDE_GAIN_LIMITS[1])
    m, s = 0.5 * (x[0] + x[1]), 0.5 * (x[0] - x[1]) * g
    x = np.stack([m + s, m - s])
    lufs = integrated_loudness(x, sample_rate)
    if math.isfinite(lufs):
        x = x * 10 ** ((stats["loudness_lufs"] - lufs) / 20)
    return x.astype(np.float32)


class StreamedFxNorm:
    """f_norm of a track that is not held whole (a long input): the same three steps, each
    measured in a pass over the track in blocks, then applied to any window of it.

    ``read(start, n)`` returns the input's samples ``[start, start + n)`` as ``(2, n)`` (zeros
    outside the track; a cached decode). Pass 1 takes the Welch spectrum (:func:`band_shape_db`'s
    segments, summed); pass 2 filters the track through the EQ window by window and takes the
    mid and side energies and their K-weighted energies per 100 ms (the loudness after any side
    gain follows from those exactly: :meth:`engine.analysis.meters.LoudnessMeter.integrated`).
    :meth:`window` then gives f_norm's output for any samples: the EQ filters the window with
    :data:`EQ_PAD` samples of the track's own context on each side instead of silence, so it
    equals :func:`fx_normalize` of the whole track but for the EQ response beyond the pad
    (measured: tests/test_master_segments.py).
    """

    BLOCK = 1 << 20

    def __init__(self, read, total: int, stats: Optional[dict] = None, sample_rate: int = SAMPLE_RATE):
        from scipy.signal import get_window

        from engine.analysis.meters import LoudnessMeter

        stats = stats or load_stats()
        self.read, self.total, self.rate = read, total, sample_rate
        nper = min(8192, total)
        step = nper - nper // 2
        window = get_window("hann", nper)
        power, count = np.zeros(nper // 2 + 1), 0
        starts = np.arange(0, total - nper + 1, step)              # pass 1: welch's segments, in groups
        for group in range(0, len(starts), self.BLOCK // step):
            seg = starts[group : group + self.BLOCK // step]
            chunk = np.asarray(read(int(seg[0]), int(seg[-1] - seg[0]) + nper), dtype=np.float64)
            frames = np.lib.stride_tricks.sliding_window_view(chunk, nper, axis=-1)[:, seg - seg[0]]
            frames = frames - frames.mean(axis=-1, keepdims=True)  # welch's detrend="constant"
            power += np.square(np.abs(np.fft.rfft(frames * window, axis=-1))).sum(axis=(0, 1))
            count += frames.shape[1]
        f = np.fft.rfftfreq(nper, 1.0 / sample_rate)
        psd = power / max(count, 1) / 2      # the channels' mean; welch's constant scale cancels in the shape
        psd[1:-1 if nper % 2 == 0 else None] *= 2
        self.silent = count == 0 or not np.any(power > 0)
        self.corr = _eq_correction(_shape_from_psd(f, psd), np.asarray(stats["spectrum_shape_db"]))
        self.side_gain, self.gain = 1.0, 1.0
        if self.silent:
            return
        energy, meter = np.zeros(2), LoudnessMeter(sample_rate)     # pass 2: after the EQ
        for start in range(0, total, self.BLOCK):
            x = self._eq_window(start, min(self.BLOCK, total - start))
            m, s = 0.5 * (x[0] + x[1]), 0.5 * (x[0] - x[1])
            energy += [np.sum(np.square(m)), np.sum(np.square(s))]
            meter.add(np.stack([m, s]))
        r = float(4 * energy[1] / (4 * energy[0] + _EPS))   # side_mid_ratio of the EQ'd track
        g = math.sqrt(stats["side_mid_ratio"] / max(r, 1e-12))
        self.side_gain = min(max(g, SIDE_GAIN_LIMITS[0]), SIDE_GAIN_LIMITS[1])
        lufs = meter.integrated(weights=(2.0, 2.0 * self.side_gain ** 2))
        if math.isfinite(lufs):
            self.gain = 10 ** ((stats["loudness_lufs"] - lufs) / 20)

    def _eq_window(self, start: int, n: int) -> np.ndarray:
        x = np.asarray(self.read(start - EQ_PAD, n + 2 * EQ_PAD), dtype=np.float64)
        N = next_fast_len(x.shape[-1])
        return irfft(rfft(x, N, axis=-1) * _eq_gain(self.corr, N, self.rate), N, axis=-1)[:, EQ_PAD : EQ_PAD + n]

    def window(self, start: int, n: int) -> np.ndarray:
        """f_norm(track)[:, start : start + n] as (2, n) float32."""
        if self.silent:
            return np.asarray(self.read(start, n), dtype=np.float32)
        x = self._eq_window(start, n)
        m, s = 0.5 * (x[0] + x[1]), 0.5 * (x[0] - x[1]) * self.side_gain
        return (np.stack([m + s, m - s]) * self.gain).astype(np.float32)

    def blocks(self, size: int = BLOCK):
        """The whole f_norm(track) as consecutive (2, ≤ size) blocks."""
        for start in range(0, self.total, size):
            yield self.window(start, min(size, self.total - start))


def _shape_from_psd(f: np.ndarray, psd: np.ndarray) -> np.ndarray:
    """:func:`band_shape_db`'s 1/3-octave shape from a power spectral density on the grid ``f``."""
    centres = third_octave_centres()
    lo, hi = centres * 2 ** (-1 / 6), centres * 2 ** (1 / 6)
    bands = np.array([psd[(f >= a) & (f < b)].sum() if np.any((f >= a) & (f < b)) else
                      psd[np.argmin(np.abs(f - c))] for a, b, c in zip(lo, hi, centres)])
    return 10 * np.log10(bands + _EPS) - 10 * np.log10(bands.sum() + _EPS)
