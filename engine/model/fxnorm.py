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
    psd = psd.mean(0)
    centres = third_octave_centres()
    lo, hi = centres * 2 ** (-1 / 6), centres * 2 ** (1 / 6)
    bands = np.array([psd[(f >= a) & (f < b)].sum() if np.any((f >= a) & (f < b)) else
                      psd[np.argmin(np.abs(f - c))] for a, b, c in zip(lo, hi, centres)])
    return 10 * np.log10(bands + _EPS) - 10 * np.log10(bands.sum() + _EPS)


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


def _eq_to_shape(x: np.ndarray, target_db: np.ndarray, sample_rate: int) -> np.ndarray:
    corr = np.clip(target_db - band_shape_db(x, sample_rate), -MAX_EQ_DB, MAX_EQ_DB)
    corr = np.convolve(np.pad(corr, 1, mode="edge"), np.ones(3) / 3, mode="valid")
    T = x.shape[-1]
    pad = 1 << 15
    n = next_fast_len(T + 2 * pad)
    freqs = np.arange(n // 2 + 1) * sample_rate / n
    logf = np.log(np.maximum(freqs, 1.0))
    gain_db = np.interp(logf, np.log(third_octave_centres()), corr)
    X = rfft(np.pad(x, ((0, 0), (pad, n - T - pad))), axis=-1)
    return irfft(X * 10 ** (gain_db / 20), n, axis=-1)[:, pad : pad + T]


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
