"""Training loss: multi-scale spectral loss on left, right, mid and side (SPEC.md, "Models").

For each FFT size in (4096, 2048, 1024, 512) (Hann window, hop = size / 2) and each of the
four signals L, R, M = (L+R)/√2, S = (L−R)/√2:

    (1 − α) · mean |  |Y| − |Ŷ|  |  +  α · mean ( log|Y| − log|Ŷ| )²,   α = 0.1

averaged over the four signals and summed over the sizes; one value per batch item.

Cost matters: this loss runs on every training step. Only L and R are transformed (the STFT is
linear, so the spectra of M and S are sums and differences of theirs), the hop is half the FFT
size (Hann at 50 % overlap still sums to a constant), and the log magnitude comes straight from
the power. Together that is about three times faster than four STFTs at 75 % overlap.
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


def _lrms_power(x: torch.Tensor, n_fft: int) -> torch.Tensor:
    """Power spectrograms of L, R, M, S: ``(B, 2, T)`` -> ``(B, 4, bins, frames)``."""
    B, C, T = x.shape
    window = torch.hann_window(n_fft, dtype=x.dtype, device=x.device)
    X = torch.stft(x.reshape(B * C, T), n_fft, n_fft // 2, window=window, center=True, pad_mode="constant",
                   return_complex=True)
    X = X.reshape(B, C, *X.shape[1:])
    s = 1.0 / math.sqrt(2.0)
    Z = torch.stack([X[:, 0], X[:, 1], (X[:, 0] + X[:, 1]) * s, (X[:, 0] - X[:, 1]) * s], dim=1)
    return Z.real.square() + Z.imag.square() + _EPS


class MultiScaleSpectralLoss(torch.nn.Module):
    """``loss(y_hat, y)`` -> ``(B,)``; both ``(B, 2, T)``."""

    def __init__(self, fft_sizes: Sequence[int] = FFT_SIZES, alpha: float = ALPHA):
        super().__init__()
        self.fft_sizes = tuple(fft_sizes)
        self.alpha = alpha

    def forward(self, y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        total = y_hat.new_zeros(y_hat.shape[0])
        for n in self.fft_sizes:
            pa, pb = _lrms_power(y_hat, n), _lrms_power(y, n)
            lin = (pa.sqrt() - pb.sqrt()).abs().mean(dim=(1, 2, 3))
            log = (0.5 * (pa.log() - pb.log())).square().mean(dim=(1, 2, 3))
            total = total + (1.0 - self.alpha) * lin + self.alpha * log
        return total
