"""The differentiable mastering chain: ``render_chain(audio, params, switches)``.

Fixed order (SPEC.md): EQ -> parallel saturation -> 3-band compressor/expander -> make-up gain
-> stereo imager -> limiter. Each module is a pure, batched function of the signal and its
own real-unit parameters (dasp-pytorch style); :func:`render_chain` strings them together,
applies the module switches and checks every module's output, so a numerical failure is
reported with the module's name instead of propagating silently.

Signals are ``(B, 2, T)`` float32 or float64 on any device; parameters ``(B, 46)`` (or
``(46,)``, broadcast) in real units, schema order (:mod:`engine.params`); switches ``(B, 6)``
or ``(6,)`` booleans (``None``: all on). The render is latency-compensated: output sample
``n`` belongs to input sample ``n``. A streaming implementation has a constant latency of
:data:`CHAIN_LATENCY` samples (see :mod:`engine.dsp.dynamics`).

Any rate in :data:`engine.params.CHAIN_RATES` (22.05–192 kHz): Θ is in real units, so the biquads
are designed for the rate and every time constant (attack, release, the RMS window) is converted
at it; the control frame stays :data:`engine.dsp.dynamics.CONTROL_HOP` samples (finer in time at
higher rates, so the latency, 128 samples, is 2.9 ms at 44.1 kHz and 1.3 ms at 96 kHz).
"""

from __future__ import annotations

from typing import Callable, Iterator, Optional

import numpy as np
import torch

from engine import params as P
from engine.dsp.dynamics import CONTROL_HOP, DYNAMICS_LATENCY, compressor_expander_gain, limiter_gain
from engine.dsp.filters import design_biquad, iir_tail, sosfilt, three_band_split
from engine.errors import ChainError
from engine.params import EQ_BANDS, MB_BANDS, SAMPLE_RATE
from engine.rates import check_rate

#: Streaming latency of the whole chain: the lookahead of the compressor and of the limiter.
CHAIN_LATENCY = 2 * DYNAMICS_LATENCY


def _col(params: torch.Tensor, key: str) -> torch.Tensor:
    return params[:, P.PARAM_INDEX[key]]


# ------------------------------------------------------------------------------ modules

def eq_sections(params: torch.Tensor, sample_rate: float = SAMPLE_RATE) -> torch.Tensor:
    """The six EQ biquads for ``params`` ``(B, 46)`` -> ``(B, 6, 6)`` sections."""
    secs = [design_biquad(_col(params, f"eq.{b}_gain"), _col(params, f"eq.{b}_freq"),
                          _col(params, f"eq.{b}_q"), kind, sample_rate) for b, kind in EQ_BANDS]
    return torch.stack(secs, dim=1)


def parametric_eq(x: torch.Tensor, params: torch.Tensor, sample_rate: float = SAMPLE_RATE) -> torch.Tensor:
    """Low shelf, four peaking bands, high shelf in series (RBJ biquads, exact IIR)."""
    return sosfilt(x, eq_sections(params, sample_rate), iir_tail(sample_rate))


def saturation(x: torch.Tensor, drive_db: torch.Tensor, mix: torch.Tensor) -> torch.Tensor:
    """Parallel tanh soft clipping: ``(1 - mix) x + mix tanh(drive x)``; ``(B,)`` params."""
    drive = torch.pow(10.0, drive_db / 20.0).view(-1, 1, 1)
    mix = mix.view(-1, 1, 1)
    return (1.0 - mix) * x + mix * torch.tanh(drive * x)


def multiband_dynamics(x: torch.Tensor, params: torch.Tensor, sample_rate: float = SAMPLE_RATE) -> torch.Tensor:
    """3-band compressor/expander in parallel with the dry signal.

    LR4 split (mid = x − low − high), one torchcomp compressor/expander gain per band
    (stereo-linked, control rate), wet = sum of the processed bands,
    out = (1 − mix) x + mix wet.
    """
    B, C, T = x.shape
    low, mid, high = three_band_split(x, _col(params, "multiband.low_crossover"),
                                      _col(params, "multiband.high_crossover"), sample_rate)
    bands = torch.stack([low, mid, high], dim=1)  # (B, 3, C, T)
    params = params.expand(B, -1)  # shared Θ (1, 46): the dynamics run per item

    def per_band(name: str) -> torch.Tensor:  # (B*3,) in band order
        return torch.stack([_col(params, f"multiband.{b}_{name}") for b in MB_BANDS], 1).reshape(-1)

    gain = compressor_expander_gain(
        bands.reshape(B * 3, C, T), per_band("comp_threshold"), per_band("comp_ratio"),
        per_band("exp_threshold"), per_band("exp_ratio"), per_band("attack"), per_band("release"),
        sample_rate,
    ).view(B, 3, 1, T)
    wet = (bands * gain).sum(dim=1)
    mix = _col(params, "multiband.mix").view(-1, 1, 1)
    return (1.0 - mix) * x + mix * wet


def make_up_gain(x: torch.Tensor, gain_db: torch.Tensor) -> torch.Tensor:
    return x * torch.pow(10.0, gain_db / 20.0).view(-1, 1, 1)


def stereo_imager(x: torch.Tensor, width: torch.Tensor) -> torch.Tensor:
    """Mid/side width as in dasp's ``stereo_widener``: mid x 2(1 − w), side x 2w (0.5 = unchanged)."""
    w = width.view(-1, 1)
    s = x[:, 0] + x[:, 1]
    d = x[:, 0] - x[:, 1]
    return torch.stack([(1.0 - w) * s + w * d, (1.0 - w) * s - w * d], dim=1)


def limiter(x: torch.Tensor, threshold_db: torch.Tensor, attack_ms: torch.Tensor, release_ms: torch.Tensor,
            sample_rate: float = SAMPLE_RATE) -> torch.Tensor:
    """torchcomp limiter (peak follower + gain ballistics) at control rate with lookahead."""
    B = x.shape[0]
    threshold_db, attack_ms, release_ms = (v.expand(B) for v in (threshold_db, attack_ms, release_ms))
    return x * limiter_gain(x, threshold_db, attack_ms, release_ms, sample_rate).unsqueeze(1)


def _run_module(name: str, x: torch.Tensor, sample_rate: float, params: torch.Tensor) -> torch.Tensor:
    if name == "eq":
        return parametric_eq(x, params, sample_rate)
    if name == "distortion":
        return saturation(x, _col(params, "distortion.drive"), _col(params, "distortion.mix"))
    if name == "multiband":
        return multiband_dynamics(x, params, sample_rate)
    if name == "gain":
        return make_up_gain(x, _col(params, "gain.gain"))
    if name == "imager":
        return stereo_imager(x, _col(params, "imager.width"))
    if name == "limiter":
        return limiter(x, _col(params, "limiter.threshold"), _col(params, "limiter.attack"),
                       _col(params, "limiter.release"), sample_rate)
    raise ValueError(name)


# ------------------------------------------------------------------------------ the chain

def render_offline(audio, chain: "P.ChainParams", sample_rate: float = SAMPLE_RATE):
    """Render ``(2, T)`` float32 numpy audio at ``sample_rate`` through the chain with ``chain``'s Θ
    and switches (no gradients); the reference the streaming backends are measured against."""
    params, switches = chain.to_tensors()
    with torch.no_grad():
        y = render_chain(torch.from_numpy(audio).unsqueeze(0), params, switches, sample_rate)
    return y[0].numpy()


def render_chain(audio: torch.Tensor, params: torch.Tensor, switches: Optional[torch.Tensor] = None,
                 sample_rate: float = SAMPLE_RATE, check_params: bool = True) -> torch.Tensor:
    """Render the mastering chain.

    Args:
        audio: ``(B, 2, T)`` stereo signal (float32 or float64).
        params: ``(B, 46)`` or ``(46,)`` real-unit parameters in schema order.
        switches: ``(B, 6)`` or ``(6,)`` module on/off (bool or 0/1), ``None`` for all on.
        sample_rate: the audio's rate, any in :data:`engine.params.CHAIN_RATES`: the filters are
            designed and the time constants (ms) converted for it.
        check_params: validate ranges first (one host sync; training may skip it).
    Returns:
        ``(B, 2, T)``, aligned with the input. With every switch off it is the input, exactly.
    Raises:
        ChainError: non-finite input, or a module produced NaN/inf (named).
        ParamError: a parameter out of range or not finite (named).
    """
    if audio.dim() != 3 or audio.shape[1] != 2:
        raise ChainError("input", f"expected audio of shape (B, 2, T), got {tuple(audio.shape)}")
    if sample_rate != SAMPLE_RATE:
        sample_rate = check_rate(sample_rate)
    B, _, T = audio.shape
    if params.dim() == 1:
        # One Θ for the whole batch (ITO's excerpts): kept as (1, 46) so the filters are
        # designed once and broadcast; only the dynamics run per item.
        params = params.unsqueeze(0)
    if params.dim() != 2 or params.shape[0] not in (1, B) or params.shape[1] != P.NUM_PARAMS:
        raise ChainError("input", f"expected params of shape ({B}, {P.NUM_PARAMS}) or ({P.NUM_PARAMS},), "
                                  f"got {tuple(params.shape)}")
    params = params.to(audio.dtype)
    if switches is None:
        switches = torch.ones(B, len(P.MODULES), dtype=torch.bool, device=audio.device)
    else:
        switches = switches.to(audio.device)
        if switches.dim() == 1:
            switches = switches.unsqueeze(0).expand(B, -1)
        switches = switches > 0.5 if switches.is_floating_point() else switches.bool()
    if check_params:
        P.check_tensor(params)
    if not torch.isfinite(audio).all():
        raise ChainError("input", "audio contains NaN or infinite samples")
    if T == 0:
        return audio.clone()

    # Zero tail: the dynamics look ahead, and the tail lets the last input samples see the
    # same future (silence) that a stream sees when it is flushed.
    x = torch.nn.functional.pad(audio, (0, CHAIN_LATENCY))
    for i, name in enumerate(P.MODULES):
        on = switches[:, i]
        if not bool(on.any()):
            continue
        y = _run_module(name, x, sample_rate, params)
        if not torch.isfinite(y).all():
            raise ChainError(name, "produced NaN or infinite samples")
        x = y if bool(on.all()) else torch.where(on.view(-1, 1, 1), y, x)
    return x[..., :T]


#: Batch items :func:`render_items` renders at a time: the dynamics material (8 segments, 60 s) in
#: one render held about 600 MB of FFTs and bands at once; two at a time, a quarter of that.
RENDER_ITEMS = 2


def render_items(audio: torch.Tensor, params: torch.Tensor, switches: Optional[torch.Tensor] = None,
                 items: int = RENDER_ITEMS, **kwargs) -> torch.Tensor:
    """:func:`render_chain` of a batch ``(K, 2, T)`` with one Θ, ``items`` batch items at a time (the
    items are independent, so it is the same render in a fraction of the memory)."""
    if audio.shape[0] <= items:
        return render_chain(audio, params, switches, **kwargs)
    return torch.cat([render_chain(audio[i : i + items], params, switches, **kwargs)
                      for i in range(0, audio.shape[0], items)])


#: Segments of a long render (samples, 23.8 s) and the pre-roll each is rendered after (5.9 s):
#: longer than the filters' response (engine.dsp.filters.IIR_TAIL) and than any release time,
#: so what a fresh state changes has died out before the segment starts.
SEGMENT, PREROLL = 1 << 20, 1 << 18


def render_segments(read: Callable[[int, int], np.ndarray], total: int, params: torch.Tensor,
                    switches: Optional[torch.Tensor] = None, segment: int = SEGMENT,
                    preroll: int = PREROLL) -> Iterator[np.ndarray]:
    """The offline render of a signal too long to hold, as consecutive ``(2, ≤ segment)`` blocks.

    ``read(start, n)`` gives samples ``[start, start + n)`` of the input (zeros past its end).
    Each segment is rendered from silence after ``preroll`` samples of the input before it and
    with the :data:`CHAIN_LATENCY` samples after it that the lookahead reads, so the first
    segment is :func:`render_chain` of the whole input exactly and the others differ from it by
    what remains of a fresh state after the pre-roll (export/torch_stream.py does the same for a
    stream; docs/export.md measures it).
    """
    if segment % CONTROL_HOP or preroll % CONTROL_HOP or segment <= 0:
        raise ValueError(f"segment and preroll must be positive multiples of {CONTROL_HOP}")
    for start in range(0, total, segment):
        n = min(segment, total - start)
        a = max(0, start - preroll)
        x = np.ascontiguousarray(read(a, start + n + CHAIN_LATENCY - a), dtype=np.float32)
        with torch.no_grad():
            y = render_chain(torch.from_numpy(x).unsqueeze(0), params, switches, check_params=False)[0]
        yield y[:, start - a : start - a + n].numpy()
