"""What the chain's dynamics do to a track: the gain reduction of each compressor band and of the limiter.

A threshold alone does not say how hard a compressor works: that depends on the track. The Θ
table shows these figures next to the parameters so a producer can judge a master's settings
(a limiter taking 8 dB off most of the time is a different master from one catching peaks).
Each figure is the 95th percentile over time of the reduction in dB (positive = quieter), the
way a gain-reduction meter's needle reads most of the time; for the parallel multiband stage it
is the reduction of that band in the mixed output, ``(1 − mix) + mix · g``.
"""

from __future__ import annotations

from typing import Dict, Optional

import numpy as np
import torch

from engine import params as P
from engine.dsp.chain import RENDER_ITEMS, render_chain
from engine.dsp.dynamics import compressor_expander_gain, limiter_gain
from engine.dsp.filters import three_band_split
from engine.params import MB_BANDS, SAMPLE_RATE

#: The percentile of the reduction over time that is reported.
PERCENTILE = 95.0
#: Every this many samples is read (the gains change at control rate, far slower).
_STRIDE = 16


def _p95_db(gain: torch.Tensor) -> float:
    g = gain.reshape(-1)[::_STRIDE].double().clamp_min(1e-12)
    return float(np.percentile((-20.0 * torch.log10(g)).numpy(), PERCENTILE))


def gain_reduction(audio: torch.Tensor, params: torch.Tensor, switches: Optional[torch.Tensor] = None,
                   sample_rate: float = SAMPLE_RATE) -> Dict[str, float]:
    """Gain reduction (dB, p95 over time) of the chain on ``audio`` ``(1, 2, T)`` (or a batch of
    segments ``(K, 2, T)``, measured together) with Θ ``params`` (46,).

    Returns ``{"multiband.low": …, "multiband.mid": …, "multiband.high": …, "limiter": …}``; a
    module switched off has no entry. A batch is rendered :data:`engine.dsp.chain.RENDER_ITEMS`
    items at a time (the gains are collected whole, so the figures do not depend on it)."""
    params = params.detach().reshape(1, -1).to(audio.dtype)
    on = torch.ones(len(P.MODULES), dtype=torch.bool) if switches is None else switches.reshape(-1).bool()
    parts = [_gains(audio[i : i + RENDER_ITEMS], params, on, sample_rate) for i in range(0, audio.shape[0], RENDER_ITEMS)]
    return {k: _p95_db(torch.cat([p[k] for p in parts])) for k in parts[0]}


def _gains(audio: torch.Tensor, params: torch.Tensor, on: torch.Tensor, sample_rate: float) -> Dict[str, torch.Tensor]:
    # one Θ for every item, as the chain's multiband expands it: the dynamics take per-item parameters
    # (with one value for several items numba's loop read past its end: NaN or noise for batches)
    params = params.expand(audio.shape[0], -1)
    col = lambda key: params[:, P.PARAM_INDEX[key]]  # noqa: E731
    out: Dict[str, torch.Tensor] = {}
    with torch.no_grad():
        if on[P.MODULES.index("multiband")]:
            before = on & (torch.arange(len(P.MODULES)) < P.MODULES.index("multiband"))
            x = render_chain(audio, params, before, sample_rate, check_params=False)
            bands = three_band_split(x, col("multiband.low_crossover"), col("multiband.high_crossover"), sample_rate)
            mix = float(params[0, P.PARAM_INDEX["multiband.mix"]])
            for name, band in zip(MB_BANDS, bands):
                g = compressor_expander_gain(band, *(col(f"multiband.{name}_{k}") for k in
                                                     ("comp_threshold", "comp_ratio", "exp_threshold", "exp_ratio",
                                                      "attack", "release")), sample_rate)
                out[f"multiband.{name}"] = (1.0 - mix) + mix * g
        if on[P.MODULES.index("limiter")]:
            before = on & (torch.arange(len(P.MODULES)) < P.MODULES.index("limiter"))
            x = render_chain(audio, params, before, sample_rate, check_params=False)
            out["limiter"] = limiter_gain(x, col("limiter.threshold"), col("limiter.attack"), col("limiter.release"),
                                          sample_rate)
    return out
