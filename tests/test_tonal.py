"""The tonal-balance match: the EQ (and width) fitted to a reference's long-term balance."""

import numpy as np
import pytest
import torch

from engine import params as P
from engine.analysis.features import integrated_loudness, mid_side, stereo_width
from engine.dsp.chain import render_chain
from engine.mastering.evaluation import bark_distance_db
from engine.mastering.tonal import BALANCE_KEYS, balance_distance_db, balance_of, match_tonal_balance
from engine.model.synth import synth_song

#: The known difference between input and reference: a low-shelf boost, a presence dip and a
#: high-shelf cut, well inside the EQ's ranges.
KNOWN_EQ = {"eq.low_shelf_gain": 6.0, "eq.low_shelf_freq": 150.0, "eq.band1_gain": -5.0, "eq.band1_freq": 3000.0,
            "eq.band1_q": 1.0, "eq.high_shelf_gain": -6.0, "eq.high_shelf_freq": 8000.0}


@pytest.fixture(scope="module")
def song():
    return torch.from_numpy(synth_song(11, 8.0)).unsqueeze(0).double()


def _theta(**values) -> torch.Tensor:
    return P.ChainParams(dict(P.defaults(), **values), {m: True for m in P.MODULES}).to_tensors(dtype=torch.float64)[0]


def _render(x):
    return lambda th: render_chain(x, th, check_params=False)


def test_the_fit_undoes_a_known_eq_difference(song):
    reference = render_chain(song, _theta(**KNOWN_EQ), check_params=False)
    neutral = _theta()
    ref_balance = balance_of(reference)
    theta, info = match_tonal_balance(neutral, _render(song), ref_balance)
    y = render_chain(song, theta, check_params=False)
    before = float(balance_distance_db(balance_of(render_chain(song, neutral, check_params=False)).bands_db, ref_balance.bands_db))
    after = float(balance_distance_db(balance_of(y).bands_db, ref_balance.bands_db))
    assert before > 2.5                       # the difference is audible to begin with
    assert after < 0.35 * before              # and mostly gone
    assert info["after_db"] < 0.35 * info["before_db"]
    # the evaluation's bark distance (absolute levels) falls too, once loudness is matched
    y_np, ref_np = y[0].numpy(), reference[0].numpy()
    y_np = y_np * 10 ** ((integrated_loudness(ref_np) - integrated_loudness(y_np)) / 20)
    assert bark_distance_db(y_np, ref_np) < 0.5 * bark_distance_db(song[0].numpy(), ref_np)
    # the low shelf boosts and the high shelf cuts, as the known curve does
    values = P.ChainParams.from_tensors(theta).values
    assert values["eq.low_shelf_gain"] > 2.0 and values["eq.high_shelf_gain"] < -2.0


def test_the_fit_keeps_the_loudness_it_was_given(song):
    reference = render_chain(song, _theta(**KNOWN_EQ), check_params=False)
    neutral = _theta()
    theta, _ = match_tonal_balance(neutral, _render(song), balance_of(reference))
    lufs_before = integrated_loudness(render_chain(song, neutral, check_params=False)[0].numpy())
    lufs_after = integrated_loudness(render_chain(song, theta, check_params=False)[0].numpy())
    assert abs(lufs_after - lufs_before) < 0.3
    assert float(theta[P.PARAM_INDEX["gain.gain"]]) != 0.0  # the EQ changed the loudness; the gain put it back


def test_the_imager_restores_a_known_width_difference(song):
    reference = render_chain(song, _theta(**{"imager.width": 0.7}), check_params=False)
    theta, _ = match_tonal_balance(_theta(), _render(song), balance_of(reference))
    width = lambda a: float(stereo_width(a))  # noqa: E731
    y = render_chain(song, theta, check_params=False)
    assert abs(width(song) - width(reference)) > 0.3 * width(reference)
    assert abs(width(y) - width(reference)) < 0.1 * width(reference)
    assert float(theta[P.PARAM_INDEX["imager.width"]]) > 0.6


def test_the_width_holds_when_the_reference_side_is_brighter_than_its_mid(song):
    """The EQ moves mid and side alike: matching a side brighter than the mid spectrum by spectrum
    alone would widen the master well past the reference; the width term keeps it there."""
    m, s = mid_side(song)
    bright = _theta(**{"eq.high_shelf_gain": 12.0, "eq.high_shelf_freq": 4000.0})
    s = render_chain(torch.stack([s, s], 1), bright, torch.tensor([True] + [False] * 5), check_params=False)[:, 0]
    reference = torch.stack([m + s, m - s], 1) * 2 ** -0.5
    theta, _ = match_tonal_balance(_theta(), _render(song), balance_of(reference))
    width = lambda a: float(stereo_width(a))  # noqa: E731
    y = render_chain(song, theta, check_params=False)
    assert abs(width(y) - width(reference)) < 0.03 * width(reference)


def test_only_eq_width_and_gain_move_and_all_stay_in_range(song):
    reference = render_chain(song, _theta(**KNOWN_EQ, **{"imager.width": 0.65}), check_params=False)
    start = _theta(**{"distortion.drive": 2.0, "limiter.threshold": -3.0})
    theta, _ = match_tonal_balance(start, _render(song), balance_of(reference))
    moved = {k for k in P.PARAM_KEYS if abs(float(theta[P.PARAM_INDEX[k]]) - float(start[P.PARAM_INDEX[k]])) > 1e-9}
    assert moved <= set(BALANCE_KEYS) | {"gain.gain"}
    assert moved & {"eq.low_shelf_gain", "eq.high_shelf_gain"}
    P.validate(P.ChainParams.from_tensors(theta).values)  # every value inside its range


def test_a_reference_with_the_same_balance_changes_next_to_nothing(song):
    neutral = _theta()
    theta, info = match_tonal_balance(neutral, _render(song), balance_of(render_chain(song, neutral, check_params=False)))
    assert info["before_db"] < 0.05
    assert info["after_db"] <= info["before_db"]
    gains = [P.PARAM_INDEX[f"eq.{b}_gain"] for b, _ in P.EQ_BANDS]
    assert float((theta[gains] - neutral[gains]).abs().max()) < 0.5


def test_master_fits_the_balance_by_default():
    from engine.mastering.job import MasterSettings, master
    from engine.model.networks import load_model
    from engine.model.synth import demo_pair

    x, _, reference, _ = demo_pair(6.0, 3)
    # the reference differs from the input by a known EQ too, so there is a balance to match
    reference = render_chain(torch.from_numpy(reference).unsqueeze(0), _theta(**KNOWN_EQ), check_params=False)[0].numpy()
    model = load_model("white-box")
    off = master(model, x, reference, MasterSettings(ito=False, match_tonal=False))
    on = master(model, x, reference, MasterSettings(ito=False))
    assert on.tonal is not None and off.tonal is None
    assert bark_distance_db(on.output, reference) < bark_distance_db(off.output, reference) - 1.0
    assert abs(integrated_loudness(on.output) - integrated_loudness(reference)) < 0.2
    assert np.isfinite(on.output).all()


def test_the_fit_works_under_no_grad(song):
    # the evaluations call master() inside torch.no_grad(); the fit needs its own gradient there
    reference = render_chain(song, _theta(**KNOWN_EQ), check_params=False)
    with torch.no_grad():
        theta, info = match_tonal_balance(_theta(), _render(song), balance_of(reference), rounds=1)
    assert info["after_db"] < 0.5 * info["before_db"]
