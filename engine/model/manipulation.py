"""The random mastering manipulation f used to make training targets (SPEC.md, "Random manipulation").

Each module is switched on with SPEC's probability (EQ 0.9, distortion 0.3, multiband 0.8,
gain 0.85, imager 0.6, limiter 1.0) and its parameters are drawn from SPEC's manipulation
ranges. SPEC gives no manipulation range for some parameters; for those we draw from the
converter's own range except where the full range is not a plausible mastering move:

* EQ frequencies, crossovers, both parallel mixes: the converter range (log-uniform for Hz);
* expander threshold −60…−30 dB and ratio 0.5…1 (a full-range gate would erase the music);
* stereo width 0.2…0.8 (side/mid energy scaled between 1/16 and 16 times).

Log-scaled parameters (Hz, ms, Q, ratio) are drawn log-uniformly. Everything is drawn from
a ``torch.Generator``, so a seed reproduces a manipulation exactly. Modules that are off
still get values (they are ignored by the chain) so Θ always has all 46 entries.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch

from engine import params as P
from engine.dsp.chain import SAMPLE_RATE, render_chain

PROBABILITIES: Dict[str, float] = {"eq": 0.9, "distortion": 0.3, "multiband": 0.8, "gain": 0.85,
                                   "imager": 0.6, "limiter": 1.0}


def _ranges() -> Dict[str, Tuple[float, float]]:
    r: Dict[str, Tuple[float, float]] = {}
    for b, _ in P.EQ_BANDS:
        r[f"eq.{b}_gain"] = (-10.0, 10.0)
        r[f"eq.{b}_q"] = (0.5, 5.0)
    r["distortion.drive"] = (0.0, 4.0)
    for b in P.MB_BANDS:
        r[f"multiband.{b}_comp_threshold"] = (-30.0, -5.0)
        r[f"multiband.{b}_comp_ratio"] = (1.5, 6.0)
        r[f"multiband.{b}_exp_threshold"] = (-60.0, -30.0)
        r[f"multiband.{b}_exp_ratio"] = (0.5, 1.0)
        r[f"multiband.{b}_attack"] = (1.0, 20.0)
        r[f"multiband.{b}_release"] = (20.0, 500.0)
    r["gain.gain"] = (0.0, 6.0)
    r["imager.width"] = (0.2, 0.8)
    r["limiter.threshold"] = (-20.0, 0.0)
    r["limiter.attack"] = (0.1, 5.0)
    r["limiter.release"] = (20.0, 1000.0)
    for p in P.PARAMS:  # the rest: the converter's range
        r.setdefault(p.key, (p.min, p.max))
    return r


#: ``module.name -> (low, high)`` range f draws from (inside the converter's range).
MANIPULATION_RANGES: Dict[str, Tuple[float, float]] = _ranges()


def random_manipulation(generator: torch.Generator, batch: int = 1, dtype=torch.float32) -> Tuple[torch.Tensor, torch.Tensor]:
    """Draw ``batch`` manipulations: ``(params (B, 46), switches (B, 6) bool)``."""
    lo = torch.tensor([MANIPULATION_RANGES[k][0] for k in P.PARAM_KEYS], dtype=torch.float64)
    hi = torch.tensor([MANIPULATION_RANGES[k][1] for k in P.PARAM_KEYS], dtype=torch.float64)
    is_log = torch.tensor([p.scale == "log" and p.min > 0 for p in P.PARAMS])
    u = torch.rand(batch, P.NUM_PARAMS, generator=generator, dtype=torch.float64)
    lin = lo + u * (hi - lo)
    log = torch.exp(lo.clamp_min(1e-12).log() + u * (hi.clamp_min(1e-12).log() - lo.clamp_min(1e-12).log()))
    values = torch.where(is_log, log, lin)
    probs = torch.tensor([PROBABILITIES[m] for m in P.MODULES], dtype=torch.float64)
    switches = torch.rand(batch, len(P.MODULES), generator=generator, dtype=torch.float64) < probs
    return values.to(dtype), switches


def manipulate(audio: torch.Tensor, generator: torch.Generator, sample_rate: float = SAMPLE_RATE,
               params: Optional[torch.Tensor] = None, switches: Optional[torch.Tensor] = None):
    """Apply f to ``(B, 2, T)`` audio: returns ``(y, params, switches)``.

    Pass ``params``/``switches`` to apply a given manipulation (SPEC's f2 applied to two
    segments of one song must be the same draw).
    """
    if params is None:
        params, switches = random_manipulation(generator, audio.shape[0], audio.dtype)
    y = render_chain(audio, params.to(audio.device), switches.to(audio.device), sample_rate, check_params=False)
    return y, params, switches
