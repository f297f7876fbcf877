"""Control-rate dynamics: the envelope definition shared by the Torch chain and the ONNX export.

Decision (recorded here because everything downstream is trained on it)
-------------------------------------------------------------------------
torchcomp runs its attack/release recursion once per audio sample. A per-sample recursion in
ONNX costs microseconds per step, which caps a streaming export near 8x real time. So the
compressor/expander and the limiter compute their envelopes at a *control rate*: one step per
frame of ``CONTROL_HOP`` = 32 samples (1378 Hz at 44.1 kHz, 0.73 ms). Per frame:

* detector: compressor bands use an RMS detector: the mean power over the frame and both
  channels (stereo linked, so the image does not wander), averaged by torchcomp's one-pole
  ``avg`` with a 10 ms rise time (without it a 32-sample window follows the waveform of a bass
  note and the gain ripples at twice its frequency); the limiter uses the frame's peak;
* static curve and ballistics: torchcomp's compressor/expander curve and its attack/release
  one-pole recursion (``torchcomp.core.compressor_core``, numba hot loop with a hand-written
  backward), with time constants converted for the frame rate by ``torchcomp.ms2coef``;
* per-sample gain: linear interpolation between frame gains, with a lookahead of two frames:
  frame ``m`` plays under a ramp from ``min(g[m-1], g[m])`` to ``min(g[m], g[m+1])``, so the
  gain during frame ``m`` never exceeds the gain its own peak asked for (the limiter catches
  the transient that triggered it) and never steps (no zipper noise).

The offline render is latency-compensated (output aligned with input). A streaming
implementation needs ``2 * CONTROL_HOP`` samples of lookahead per dynamics module, so the
streamed chain has a constant latency of :data:`engine.dsp.chain.CHAIN_LATENCY` samples; its output
equals the offline render delayed by that amount. Both evaluate the same frames at the same
absolute positions (multiples of ``CONTROL_HOP`` from the start of the stream), so block sizes
do not matter.

Effect on training: attack times below one frame (0.73 ms) act as "instant" at this rate;
SPEC's limiter attacks of 0.1–5 ms therefore span instant to 5 ms, which is what a mastering
limiter with lookahead does anyway. Everything above is differentiable in every parameter.

Shapes: frame tensors are ``(B, F)``; per-item parameters are ``(B,)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchcomp import avg, ms2coef
from torchcomp.core import compressor_core, compressor_kernel


def _cache_compiled_recursion() -> bool:
    """Keep numba's compiled torchcomp recursion on disk (in torchcomp's __pycache__, or the
    user's cache folder where that is read-only). torchcomp does not ask for it, so every process
    compiled the parallel loop again on its first render, per dtype: 2.4 s of each `master`
    (measured; 0.6–0.9 s to load it from the cache). Returns whether caching is on."""
    try:
        compressor_kernel.enable_caching()
    except RuntimeError:  # numba found no writable cache folder: it compiles, as before
        return False
    return True


NUMBA_CACHE = _cache_compiled_recursion()

#: Samples per control frame.
CONTROL_HOP = 32
#: Samples of lookahead (and so of streaming latency) per dynamics module.
DYNAMICS_LATENCY = 2 * CONTROL_HOP
#: Rise time of the compressor's RMS detector (torchcomp ``avg``), ms.
RMS_WINDOW_MS = 10.0
#: Power floor for level detection: -100 dB, so digital silence has a finite level.
POWER_FLOOR = 1e-10
#: Peak floor of the limiter's envelope (keeps threshold/peak finite on silence).
PEAK_FLOOR = 1e-10
#: An expander ratio of 0 is a gate; its slope is capped at 1 - 1/0.01 = -99 dB per dB.
EXP_RATIO_FLOOR = 0.01
#: The constant inside torchcomp's ``ms2coef(ms, sr) = 1 - exp(-TORCHCOMP_MS_SCALE / ms / sr)``
#: (a 10-90 % rise time in ms), named for the code that reproduces :func:`time_coef` outside
#: Torch (export/: the ONNX graph, the pedalboard chain's JUCE time constants).
TORCHCOMP_MS_SCALE = 2200.0


def num_frames(num_samples: int) -> int:
    """Frames evaluated for a signal of ``num_samples``: every frame it touches plus one more
    (the lookahead needs the gain of the frame after the last)."""
    return -(-num_samples // CONTROL_HOP) + 1


def _framed(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, T)`` -> ``(B, C, F, HOP)`` zero-padded to :func:`num_frames` frames."""
    T = x.shape[-1]
    n = num_frames(T) * CONTROL_HOP
    return F.pad(x, (0, n - T)).unflatten(-1, (-1, CONTROL_HOP))


def frame_power(x: torch.Tensor) -> torch.Tensor:
    """Mean power per frame over all channels: ``(B, C, T)`` -> ``(B, F)``."""
    return _framed(x).square().mean(dim=(1, 3))


def frame_peak(x: torch.Tensor) -> torch.Tensor:
    """Absolute peak per frame over all channels: ``(B, C, T)`` -> ``(B, F)``."""
    return _framed(x).abs().amax(dim=(1, 3))


def rms_coef(sample_rate: float) -> float:
    """torchcomp ``avg`` coefficient of the RMS detector (:data:`RMS_WINDOW_MS` at the control rate)."""
    return ms2coef(torch.tensor(RMS_WINDOW_MS, dtype=torch.float64), sample_rate / CONTROL_HOP).item()


def rms_power(x: torch.Tensor, sample_rate: float) -> torch.Tensor:
    """RMS detector: frame power averaged over :data:`RMS_WINDOW_MS`: ``(B, C, T)`` -> ``(B, F)``."""
    return avg(frame_power(x), rms_coef(sample_rate))


def time_coef(ms: torch.Tensor, sample_rate: float) -> torch.Tensor:
    """torchcomp's one-pole coefficient for a time constant in ms, at the control rate."""
    return ms2coef(ms, sample_rate / CONTROL_HOP)


def compexp_curve(power: torch.Tensor, comp_threshold: torch.Tensor, comp_ratio: torch.Tensor,
                  exp_threshold: torch.Tensor, exp_ratio: torch.Tensor) -> torch.Tensor:
    """torchcomp's compressor/expander static curve, on frame power, as a linear gain.

    gain_dB = min(0, (1 - 1/CR) (CT - L), (1 - 1/ER) (ET - L)), L = 10 log10(power).
    Unlike ``torchcomp.compexp_gain`` this accepts the neutral ends of our ranges (CR = 1,
    ER = 1: unity gain) and ER = 0 (a gate, slope capped by :data:`EXP_RATIO_FLOOR`).

    Args:
        power: ``(B, F)``; thresholds in dB and ratios: ``(B,)``.
    Returns:
        ``(B, F)`` linear gain in (0, 1].
    """
    level = 10.0 * torch.log10(power + POWER_FLOOR)
    comp_slope = (1.0 - 1.0 / comp_ratio).unsqueeze(-1)
    exp_slope = (1.0 - 1.0 / exp_ratio.clamp_min(EXP_RATIO_FLOOR)).unsqueeze(-1)
    g = torch.minimum(comp_slope * (comp_threshold.unsqueeze(-1) - level),
                      exp_slope * (exp_threshold.unsqueeze(-1) - level))
    return torch.pow(10.0, g.clamp(max=0.0) / 20.0)


def smooth_gain(gain: torch.Tensor, attack: torch.Tensor, release: torch.Tensor) -> torch.Tensor:
    """Attack/release ballistics on a gain track, starting from unity.

    ``g[m] = g[m-1] + c (f[m] - g[m-1])`` with ``c = attack`` when the gain falls, else
    ``release`` (torchcomp's recursion). ``(B, F)`` gain, ``(B,)`` coefficients -> ``(B, F)``.
    """
    return compressor_core(gain.contiguous(), gain.new_ones(gain.shape[0]), attack, release)


def peak_envelope(peak: torch.Tensor, attack: torch.Tensor, release: torch.Tensor) -> torch.Tensor:
    """Peak follower from zero: rises with ``attack``, falls with ``release`` (torchcomp's
    limiter detector). ``(B, F)`` -> ``(B, F)``."""
    return compressor_core(peak.contiguous(), peak.new_zeros(peak.shape[0]), release, attack)


def limiter_curve(envelope: torch.Tensor, threshold_db: torch.Tensor) -> torch.Tensor:
    """torchcomp's limiter gain ``min(1, threshold / envelope)``: ``(B, F)`` -> ``(B, F)``."""
    lt = torch.pow(10.0, threshold_db / 20.0).unsqueeze(-1)
    return (lt / envelope.clamp_min(PEAK_FLOOR)).clamp(max=1.0)


def lookahead_gain(frame_gain: torch.Tensor, num_samples: int) -> torch.Tensor:
    """Per-sample gain from frame gains with the two-frame lookahead ramp.

    Args:
        frame_gain: ``(B, F)`` with ``F == num_frames(num_samples)``.
    Returns:
        ``(B, num_samples)``: in frame ``m``, a ramp from ``a[m-1]`` to ``a[m]`` reaching
        ``a[m]`` on the frame's last sample, where ``a[m] = min(g[m], g[m+1])`` and
        ``g[-1] = 1``.
    """
    g = torch.cat([frame_gain.new_ones(frame_gain.shape[0], 1), frame_gain], dim=1)
    a = torch.minimum(g[:, :-1], g[:, 1:])  # a[-1 .. F-2]
    prev, cur = a[:, :-1], a[:, 1:]
    ramp = torch.arange(1, CONTROL_HOP + 1, dtype=frame_gain.dtype, device=frame_gain.device) / CONTROL_HOP
    gain = prev.unsqueeze(-1) + (cur - prev).unsqueeze(-1) * ramp
    return gain.flatten(1)[:, :num_samples]


def compressor_expander_gain(x: torch.Tensor, comp_threshold, comp_ratio, exp_threshold, exp_ratio,
                             attack_ms, release_ms, sample_rate: float) -> torch.Tensor:
    """Per-sample gain of one compressor/expander: ``(B, C, T)`` -> ``(B, T)``."""
    f = compexp_curve(rms_power(x, sample_rate), comp_threshold, comp_ratio, exp_threshold, exp_ratio)
    g = smooth_gain(f, time_coef(attack_ms, sample_rate), time_coef(release_ms, sample_rate))
    return lookahead_gain(g, x.shape[-1])


def limiter_gain(x: torch.Tensor, threshold_db, attack_ms, release_ms, sample_rate: float) -> torch.Tensor:
    """Per-sample gain of the limiter: ``(B, C, T)`` -> ``(B, T)``."""
    at = time_coef(attack_ms, sample_rate)
    rt = time_coef(release_ms, sample_rate)
    env = peak_envelope(frame_peak(x), at, rt)
    g = smooth_gain(limiter_curve(env, threshold_db), at, rt)
    return lookahead_gain(g, x.shape[-1])


def control_rate(sample_rate: float) -> float:
    return sample_rate / CONTROL_HOP

