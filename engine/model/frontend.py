"""The spectral front end shared by the reference encoder Φ and the white-box converter Ψ.

ITO-Master's encoder and converter read raw waveforms with strided convolutions; on a CPU that
costs more than the whole chain. We read a compact log-spectrogram instead, computed once per
signal: per frame (2048-point STFT, hop 1024, 23 ms) the energy of mid and side in 64
log-spaced triangular bands from 20 Hz to 20 kHz, plus the frame's RMS and peak level of mid
and side, all in dB and scaled by 1/20 (about unit range). Nothing is normalised away: absolute
level, spectral balance, side/mid balance and peak-to-RMS (crest) are exactly what a mastering
style is made of, so they must reach the networks intact.

Shapes: ``(B, 2, T)`` audio -> ``(B, FEATURES, frames)``, ``FEATURES = 2 * 64 + 4``.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

from engine.params import SAMPLE_RATE

N_FFT = 2048
HOP = 1024
BANDS = 64
FMIN, FMAX = 20.0, 20000.0
FEATURES = 2 * BANDS + 4
_FLOOR_DB = -100.0


@lru_cache(maxsize=4)
def _filterbank(dtype: torch.dtype, device: str) -> torch.Tensor:
    """(bins, BANDS) triangular filters, log-spaced centres, each normalised to unit sum."""
    freqs = np.arange(N_FFT // 2 + 1) * SAMPLE_RATE / N_FFT
    pts = np.geomspace(FMIN, FMAX, BANDS + 2)
    fb = np.zeros((len(freqs), BANDS))
    for b in range(BANDS):
        lo, c, hi = pts[b], pts[b + 1], pts[b + 2]
        up = (freqs - lo) / (c - lo)
        down = (hi - freqs) / (hi - c)
        fb[:, b] = np.clip(np.minimum(up, down), 0, None)
        if fb[:, b].sum() == 0:  # narrower than a bin at the bottom: nearest bin
            fb[np.argmin(np.abs(freqs - c)), b] = 1.0
        fb[:, b] /= fb[:, b].sum()
    return torch.tensor(fb, dtype=dtype, device=device)


def _db(power: torch.Tensor) -> torch.Tensor:
    return 10.0 * torch.log10(power + 10 ** (_FLOOR_DB / 10))


def spectral_features(audio: torch.Tensor) -> torch.Tensor:
    """``(B, 2, T)`` -> ``(B, FEATURES, frames)``; differentiable, any length ≥ 1 sample."""
    B, _, T = audio.shape
    s = 1.0 / math.sqrt(2.0)
    ms = torch.stack([(audio[:, 0] + audio[:, 1]) * s, (audio[:, 0] - audio[:, 1]) * s], 1)  # (B, 2, T)
    if T < N_FFT:
        ms = torch.nn.functional.pad(ms, (0, N_FFT - T))
    flat = ms.reshape(B * 2, -1)
    window = torch.hann_window(N_FFT, dtype=audio.dtype, device=audio.device)
    X = torch.stft(flat, N_FFT, HOP, window=window, center=True, pad_mode="constant", return_complex=True)
    power = (X.real.square() + X.imag.square()) / window.square().sum()  # (B*2, bins, frames)
    bands = torch.einsum("nkf,kb->nbf", power, _filterbank(audio.dtype, str(audio.device)))
    F = bands.shape[-1]
    # frame RMS and peak, aligned with the STFT frames (centre=True: frame f covers f*HOP ± N_FFT/2)
    pad = torch.nn.functional.pad(flat, (N_FFT // 2, N_FFT // 2))
    frames = pad.unfold(-1, N_FFT, HOP)[:, :F]  # (B*2, F, N_FFT)
    rms = _db(frames.square().mean(-1))
    peak = _db(frames.abs().amax(-1).square())
    feats = torch.cat([_db(bands).reshape(B, 2 * BANDS, F), rms.reshape(B, 2, F), peak.reshape(B, 2, F)], dim=1)
    return feats / 20.0
