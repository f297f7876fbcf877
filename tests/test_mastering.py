"""Parts of the mastering job that need no trained model: the loudness and dynamics matches."""

import math

import torch

from engine import params as P
from engine.analysis.features import drv_db, integrated_loudness
from engine.mastering.matches import LOUDNESS_TOLERANCE_LU, match_dynamics, match_loudness
from engine.model.fxnorm import fx_normalize
from engine.model.synth import synth_song


def _limited_theta(threshold=-1.0):
    return P.ChainParams.default().with_values(**{"limiter.threshold": threshold, "gain.gain": 2.0}).to_tensors()[0]


def test_loudness_match_reaches_the_target_through_the_limiter():
    x = torch.from_numpy(fx_normalize(synth_song(5, 6.0))).unsqueeze(0)
    theta = _limited_theta()
    start = integrated_loudness(synth_song(5, 6.0))
    for target in (-20.0, -11.0):
        th, y, info = match_loudness(x, theta, target)
        assert abs(integrated_loudness(y[0].numpy()) - target) < LOUDNESS_TOLERANCE_LU, (target, info)
        assert abs(info["after_lufs"] - target) < LOUDNESS_TOLERANCE_LU and not info["at_limit"]
        # only the make-up gain moved
        moved = (th - theta).abs() > 0
        assert moved.nonzero().flatten().tolist() == [P.PARAM_KEYS.index("gain.gain")]
        assert math.isclose(float(th[P.PARAM_KEYS.index("gain.gain")]) - 2.0, info["gain_change_db"], abs_tol=1e-5)
    assert math.isfinite(start)


def test_loudness_match_gets_as_close_as_the_limiter_allows():
    # a −3 dB limiter ceiling cannot reach −6 LUFS: the match gets closer and says where it ended
    x = torch.from_numpy(fx_normalize(synth_song(5, 6.0))).unsqueeze(0)
    th, y, info = match_loudness(x, _limited_theta(-3.0), -6.0)
    assert info["before_lufs"] < info["after_lufs"] < -6.0
    assert abs(integrated_loudness(y[0].numpy()) - info["after_lufs"]) < 1e-6


def test_loudness_match_stops_at_the_gain_range_and_skips_silence():
    x = torch.from_numpy(fx_normalize(synth_song(6, 4.0))).unsqueeze(0)
    th, y, info = match_loudness(x, _limited_theta(), -80.0)
    assert info["at_limit"] and float(th[P.PARAM_KEYS.index("gain.gain")]) == P.spec("gain.gain").min
    th, y, info = match_loudness(torch.zeros(1, 2, 44100), _limited_theta(), -14.0)
    assert info["renders"] == 1 and info["gain_change_db"] == 0.0


def test_dynamics_match_moves_drv_towards_the_reference_at_its_loudness():
    song = synth_song(8, 10.0)
    x = torch.from_numpy(fx_normalize(song)).unsqueeze(0)
    gentle, hard = _limited_theta(-1.0), _limited_theta(-14.0)
    target_lufs = -12.0
    # two references from the same song, at the same loudness: lightly and heavily limited
    refs = {name: match_loudness(x, th, target_lufs)[1][0].numpy() for name, th in (("gentle", gentle), ("hard", hard))}
    drv = {k: drv_db(v) for k, v in refs.items()}
    assert drv["gentle"] > drv["hard"] + 0.3, drv
    for start, target in ((hard, "gentle"), (gentle, "hard")):
        before = drv_db(match_loudness(x, start, target_lufs)[1][0].numpy())
        th, info = match_dynamics(x, start, target_lufs, drv[target])
        th, y, _ = match_loudness(x, th, target_lufs)
        after = drv_db(y[0].numpy())
        assert abs(after - drv[target]) < 0.5 * abs(before - drv[target]), (target, before, after, info)
        assert abs(integrated_loudness(y[0].numpy()) - target_lufs) < LOUDNESS_TOLERANCE_LU
        moved = set((th - start).abs().gt(0).nonzero().flatten().tolist())
        assert moved <= {P.PARAM_KEYS.index("gain.gain"), P.PARAM_KEYS.index("limiter.threshold")}
    # nothing to aim at: unchanged
    th, info = match_dynamics(x, gentle, target_lufs, float("nan"))
    assert torch.equal(th, gentle) and info["trials"] == []
