"""Parameters a producer would believe: pinned parameters marked, the dynamics' gain reduction reported."""

import torch

from engine import params as P
from engine.dsp.metering import gain_reduction
from engine.model.synth import synth_song


def _theta(**values) -> torch.Tensor:
    return P.ChainParams(dict(P.defaults(), **values), {m: True for m in P.MODULES}).to_tensors(dtype=torch.float64)[0]


def _song(level_db: float = 0.0) -> torch.Tensor:
    x = torch.from_numpy(synth_song(5, 6.0)).unsqueeze(0).double()
    return x / x.abs().max() * 10 ** (level_db / 20)  # peak at level_db dBFS


def test_limiter_reduction_follows_its_threshold():
    x = _song(0.0)
    hard = gain_reduction(x, _theta(**{"limiter.threshold": -12.0}))["limiter"]
    none = gain_reduction(_song(-20.0), _theta(**{"limiter.threshold": 0.0}))["limiter"]
    assert hard > 3.0
    assert none < 0.05
    # what reaches the limiter, not the chain's input: 12 dB of make-up gain take a song peaking
    # at −12 dBFS (under the −6 dB threshold) to 0 dBFS, over it
    boosted = gain_reduction(_song(-12.0), _theta(**{"limiter.threshold": -6.0, "gain.gain": 12.0}))["limiter"]
    assert boosted > 2.0


def test_compressor_reduction_per_band_and_through_the_parallel_mix():
    x = _song(-3.0)
    squeeze = {"multiband.low_comp_threshold": -45.0, "multiband.low_comp_ratio": 8.0, "multiband.mix": 0.7}
    gr = gain_reduction(x, _theta(**squeeze))
    assert gr["multiband.low"] > 2.0                       # the low band works hard
    assert gr["multiband.mid"] < 0.05 and gr["multiband.high"] < 0.05   # ratio 1: untouched
    # the dry share of the parallel stage limits what the band loses: at mix 0.2 much less
    light = gain_reduction(x, _theta(**dict(squeeze, **{"multiband.mix": 0.2})))["multiband.low"]
    assert light < 0.6 * gr["multiband.low"]


def test_a_module_switched_off_reports_nothing():
    switches = torch.tensor([m != "limiter" for m in P.MODULES])
    gr = gain_reduction(_song(), _theta(), switches)
    assert "limiter" not in gr and "multiband.low" in gr


def test_pinned_marks_range_ends_that_are_not_neutral():
    assert P.pinned(P.defaults()) == {}   # a ratio of 1 or a drive of 0 is off, not pinned
    values = dict(P.defaults(), **{"gain.gain": 24.0, "eq.band0_q": 0.1, "eq.band3_freq": 21040.0,
                                   "limiter.threshold": -6.0})
    assert P.pinned(values) == {"gain.gain": "max", "eq.band0_q": "min", "eq.band3_freq": "max"}


def test_the_table_marks_pinned_parameters_and_shows_gain_reduction():
    from bridge.cli.report import params_change_table

    chain = P.ChainParams(dict(P.defaults(), **{"gain.gain": 24.0}), {m: True for m in P.MODULES})
    table = params_change_table(None, chain, {"multiband.low": 1.34, "limiter": 4.5})
    gain_line = next(line for line in table.splitlines() if line.strip().startswith("gain.gain"))
    assert gain_line.rstrip().endswith("at max")
    assert "1 parameter(s) at a range limit: gain.gain" in table
    assert "gain reduction, dB (p95 over time): low 1.3, limiter 4.5" in table
