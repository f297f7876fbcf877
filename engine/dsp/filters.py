"""Biquad filters for the chain: RBJ designs (dasp-pytorch) applied as exact causal IIR filters.

The coefficients come from :func:`dasp_pytorch.signal.biquad` (Audio EQ Cookbook designs).
Filtering follows dasp's frequency-sampling method (sample the IIR frequency response on an
FFT grid), arranged so that the result equals the causal IIR filter (zero initial state) to
float precision for any signal length: the cascade's response is sampled on a grid of
``2 * IIR_TAIL`` points and turned into its first ``IIR_TAIL`` impulse-response samples, which
are then convolved with the signal by FFT (linear, not circular: the FFT holds signal plus
tail). What this drops lies beyond ``IIR_TAIL`` samples of the impulse response, where the
slowest filter we allow (a 20 Hz, Q 0.1, +20 dB shelf, whose slow pole has a time constant
near 140 ms) has decayed below 1e-9. Sampling the response on a short grid also keeps the
complex arithmetic (and its backward pass) independent of the signal length.

That equality is what lets the streaming ONNX export (a state-space recursion) reproduce
this render sample for sample.

Shapes: ``x`` is ``(B, C, T)``; coefficient tensors are per batch item ``(B, ...)``.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Tuple

import torch
from dasp_pytorch.signal import biquad as dasp_biquad

from engine.params import SAMPLE_RATE
from engine.rates import design_freq_limit

#: Samples of impulse-response tail kept un-aliased by the FFT filtering at SAMPLE_RATE (about 3 s);
#: at another rate the same time, :func:`iir_tail`.
IIR_TAIL = 1 << 17


def iir_tail(sample_rate: float = SAMPLE_RATE) -> int:
    """Samples of tail for ``sample_rate``: :data:`IIR_TAIL`'s 2.97 s, rounded up to an FFT-friendly
    size (a 20 Hz pole decays over the same time at every rate; at 96 kHz 2^17 samples would keep
    only 1.4 s of it)."""
    if sample_rate == SAMPLE_RATE:
        return IIR_TAIL
    return _smooth_size(-(-IIR_TAIL * int(sample_rate) // SAMPLE_RATE))

#: Butterworth Q; two cascaded Butterworth sections make one 4th-order Linkwitz-Riley filter.
BUTTERWORTH_Q = 1.0 / math.sqrt(2.0)

FILTER_KINDS = ("low_shelf", "peaking", "high_shelf", "low_pass", "high_pass")


def design_biquad(gain_db: torch.Tensor, freq_hz: torch.Tensor, q: torch.Tensor, kind: str,
                  sample_rate: float) -> torch.Tensor:
    """RBJ biquad coefficients, normalised so a0 = 1.

    Args:
        gain_db, freq_hz, q: ``(B,)`` tensors.
        kind: one of :data:`FILTER_KINDS`.
    Returns:
        ``(B, 6)`` float64 second-order section ``[b0, b1, b2, 1, a1, a2]``.

    Always designed in float64: rounding the coefficients of a 20 Hz shelf to float32 moves
    its poles enough to change the output by 1e-3, far more than any arithmetic error.
    Frequencies above :func:`engine.rates.design_freq_limit` (only below 44.1 kHz) are designed at it.
    """
    if kind not in FILTER_KINDS:
        raise ValueError(f"unknown filter kind {kind!r}")
    d = torch.float64
    freq = freq_hz.to(d).clamp(max=design_freq_limit(sample_rate))
    b, a = dasp_biquad(gain_db.to(d), freq, q.to(d), sample_rate, kind)
    return torch.cat([b, a], dim=-1)


def _smooth_size(n: int) -> int:
    """Smallest 2^a 3^b 5^c >= n (FFT sizes that pocketfft/MKL handle at full speed)."""
    best = 1 << math.ceil(math.log2(n))
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            m = p35
            while m < n:
                m *= 2
            best = min(best, m)
            p35 *= 3
        p5 *= 5
    return best


def fft_length(num_samples: int, tail: int = IIR_TAIL) -> int:
    """FFT size for filtering ``num_samples``: room for the signal and the response tail."""
    return _smooth_size(num_samples + tail)


@lru_cache(maxsize=8)
def _unit_circle(n_fft: int, dtype: torch.dtype, device_str: str):
    k = torch.arange(n_fft // 2 + 1, dtype=torch.float64, device=device_str)
    w = 2 * math.pi * k / n_fft
    return tuple(t.to(dtype) for t in (torch.cos(w), torch.sin(w), torch.cos(2 * w), torch.sin(2 * w)))


def _section_responses(sos: torch.Tensor, n_fft: int):
    """Per section numerator and denominator on the rfft grid and the cascade's product:
    ``(nums (B, S, F), dens (B, S, F), h (B, F))`` complex, F = ``n_fft // 2 + 1``."""
    c1, s1, c2, s2 = _unit_circle(n_fft, sos.dtype, str(sos.device))
    h, nums, dens = None, [], []
    for i in range(sos.shape[1]):
        b0, b1, b2, a0, a1, a2 = (sos[:, i, j : j + 1] for j in range(6))
        num = torch.complex(b0 + b1 * c1 + b2 * c2, -(b1 * s1 + b2 * s2))
        den = torch.complex(a0 + a1 * c1 + a2 * c2, -(a1 * s1 + a2 * s2))
        sec = num / den
        h = sec if h is None else h * sec
        nums.append(num)
        dens.append(den)
    return torch.stack(nums, 1), torch.stack(dens, 1), h


class _CascadeResponse(torch.autograd.Function):
    """:func:`sos_response` with a hand-written backward.

    Autograd through the per-bin complex arithmetic recorded ~20 operations per section on
    131,073 bins and reduced each coefficient's gradient separately: 45 % of an ITO step
    (profiled). The response is a product of rational functions of the six coefficients, so
    the gradient is closed-form: with ``N_i``, ``D_i`` section i's numerator and denominator,
    ``H`` the product and ``G`` the incoming gradient (PyTorch's convention for complex
    tensors), ``dL/db_ik = Re Σ_w conj(G) (H / N_i) e^{-jkw}`` and
    ``dL/da_ik = -Re Σ_w conj(G) (H / D_i) e^{-jkw}``; ``H / N_i`` is taken as the product of
    the other sections over ``D_i`` (a low-pass zero sits exactly on Nyquist, where ``N_i = 0``).
    """

    @staticmethod
    def forward(ctx, sos: torch.Tensor, n_fft: int) -> torch.Tensor:
        ctx.n_fft = n_fft
        ctx.save_for_backward(sos)   # the per-bin responses are computed again in backward: 46 MB less
        return _section_responses(sos, n_fft)[2]   # held through an ITO step, for a few ms

    @staticmethod
    def backward(ctx, grad_h: torch.Tensor):
        (sos,) = ctx.saved_tensors
        nums, dens, h = _section_responses(sos, ctx.n_fft)
        c1, s1, c2, s2 = _unit_circle(ctx.n_fft, nums.real.dtype, str(nums.device))
        secs = nums / dens
        ones = torch.ones_like(secs[:, :1])
        before = torch.cumprod(torch.cat([ones, secs[:, :-1]], 1), 1)              # Π_{j<i}
        after = torch.cumprod(torch.cat([ones, secs.flip(1)[:, :-1]], 1), 1).flip(1)  # Π_{j>i}
        q = grad_h.conj().unsqueeze(1)
        wrt_b = q * (before * after) / dens          # (B, S, F): conj(G) · ∂H/∂N_i
        wrt_a = -q * h.unsqueeze(1) / dens           # conj(G) · ∂H/∂D_i
        cos = torch.stack([torch.ones_like(c1), c1, c2])   # (3, F): Re and Im of e^{-jkw} are cos kw, -sin kw
        sin = torch.stack([torch.zeros_like(s1), s1, s2])
        grad = [w.real @ cos.T + w.imag @ sin.T for w in (wrt_b, wrt_a)]  # Re(w e^{-jkw}) summed over w
        return torch.cat(grad, -1), None


def sos_response(sos: torch.Tensor, n_fft: int) -> torch.Tensor:
    """Complex frequency response of a cascade of biquads on the rfft grid.

    Args:
        sos: ``(B, S, 6)`` sections ``[b0, b1, b2, a0, a1, a2]``.
    Returns:
        ``(B, n_fft // 2 + 1)`` complex response (product over sections).

    The polynomials are evaluated directly on the unit circle (cheaper than dasp's
    zero-padded FFT of each 3-tap polynomial, same values); the gradient is closed-form
    (:class:`_CascadeResponse`).
    """
    if sos.requires_grad and torch.is_grad_enabled():
        return _CascadeResponse.apply(sos, n_fft)
    return _section_responses(sos, n_fft)[2]


def impulse_response(sos: torch.Tensor, tail: int = IIR_TAIL) -> torch.Tensor:
    """First ``tail`` samples of the cascade's impulse response: ``(B, S, 6)`` -> ``(B, tail)``.

    Sampled on a ``2 * tail`` grid, so aliasing and truncation both only touch the part
    of the response that has already decayed (see the module docstring).
    """
    n = 2 * tail
    return torch.fft.irfft(sos_response(sos.to(torch.float64), n), n)[:, :tail]


def fft_convolve(x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Causal linear convolution of ``x`` ``(B, C, T)`` with per-item responses ``h`` ``(B, K)``,
    cropped to ``T`` samples."""
    T = x.shape[-1]
    n = fft_length(max(T, h.shape[-1]), h.shape[-1])
    Y = torch.fft.rfft(x, n) * torch.fft.rfft(h.to(x.dtype), n).unsqueeze(1)
    return torch.fft.irfft(Y, n)[..., :T]


def sosfilt(x: torch.Tensor, sos: torch.Tensor, tail: int = IIR_TAIL) -> torch.Tensor:
    """Filter ``x`` ``(B, C, T)`` with the cascade ``sos`` ``(B, S, 6)`` (causal, zero state);
    ``tail``: :func:`iir_tail` of the signal's rate."""
    return fft_convolve(x, impulse_response(sos, tail))


def crossover_sections(low_hz: torch.Tensor, high_hz: torch.Tensor, sample_rate: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Sections of the two 4th-order Linkwitz-Riley filters of the 3-band split.

    Returns ``(lowpass (B, 2, 6), highpass (B, 2, 6))``: each is a Butterworth biquad applied
    twice (LR4 = Butterworth squared).
    """
    ones = torch.zeros_like(low_hz)
    q = torch.full_like(low_hz, BUTTERWORTH_Q)
    lp = design_biquad(ones, low_hz, q, "low_pass", sample_rate)
    hp = design_biquad(ones, high_hz, q, "high_pass", sample_rate)
    return torch.stack([lp, lp], 1), torch.stack([hp, hp], 1)


def three_band_split(x: torch.Tensor, low_hz: torch.Tensor, high_hz: torch.Tensor,
                     sample_rate: float) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split ``x`` ``(B, C, T)`` into low, mid, high bands with ``low + mid + high == x``.

    low = LR4 low-pass at ``low_hz``; high = LR4 high-pass at ``high_hz``; mid = x − low − high
    (SPEC.md), which makes the split perfectly reconstructing by construction.
    """
    T = x.shape[-1]
    lp, hp = crossover_sections(low_hz, high_hz, sample_rate)
    tail = iir_tail(sample_rate)
    n = fft_length(T, tail)
    X = torch.fft.rfft(x, n)
    low = torch.fft.irfft(X * torch.fft.rfft(impulse_response(lp, tail).to(x.dtype), n).unsqueeze(1), n)[..., :T]
    high = torch.fft.irfft(X * torch.fft.rfft(impulse_response(hp, tail).to(x.dtype), n).unsqueeze(1), n)[..., :T]
    return low, x - low - high, high
