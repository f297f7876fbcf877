"""Training loss: multi-scale spectral loss on left, right, mid and side (SPEC.md, "Models").

For each FFT size in (4096, 2048, 1024, 512) (Hann window, hop = size / 4) and each of the
four signals L, R, M = (L+R)/√2, S = (L−R)/√2:

    (1 − α) · mean |  |Y| − |Ŷ|  |  +  α · mean ( log|Y| − log|Ŷ| )²,   α = 0.1

averaged over the four signals and summed over the sizes; one value per batch item.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

FFT_SIZES = (4096, 2048, 1024, 512)
ALPHA = 0.1
_EPS = 1e-7


def lrms(x: torch.Tensor) -> torch.Tensor:
    """``(B, 2, T)`` -> ``(B, 4, T)``: left, right, mid, side."""
    s = 1.0 / math.sqrt(2.0)
    return torch.stack([x[:, 0], x[:, 1], (x[:, 0] + x[:, 1]) * s, (x[:, 0] - x[:, 1]) * s], dim=1)


def _magnitude(x: torch.Tensor, n_fft: int) -> torch.Tensor:
    B, C, T = x.shape
    window = torch.hann_window(n_fft, dtype=x.dtype, device=x.device)
    X = torch.stft(x.reshape(B * C, T), n_fft, n_fft // 4, window=window, center=True, pad_mode="constant",
                   return_complex=True)
    return (X.real.square() + X.imag.square() + _EPS).sqrt().reshape(B, C, *X.shape[1:])


class MultiScaleSpectralLoss(torch.nn.Module):
    """``loss(y_hat, y)`` -> ``(B,)``; both ``(B, 2, T)``."""

    def __init__(self, fft_sizes: Sequence[int] = FFT_SIZES, alpha: float = ALPHA):
        super().__init__()
        self.fft_sizes = tuple(fft_sizes)
        self.alpha = alpha

    def forward(self, y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        a, b = lrms(y_hat), lrms(y)
        total = y_hat.new_zeros(y_hat.shape[0])
        for n in self.fft_sizes:
            ma, mb = _magnitude(a, n), _magnitude(b, n)
            lin = (ma - mb).abs().mean(dim=(1, 2, 3))
            log = (ma.log() - mb.log()).square().mean(dim=(1, 2, 3))
            total = total + (1.0 - self.alpha) * lin + self.alpha * log
        return total
