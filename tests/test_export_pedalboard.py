"""The pedalboard chain: exact where it can be, streaming with state, calibrated where it cannot."""

import json

import numpy as np
import pytest

from engine import params as P
from engine.errors import ParamError, RefmasterError
from export import checks
from export.calibrate import calibrate, fidelity, torch_render
from export.pedalboard_chain import CALIBRATION, PedalboardSettings, PedalboardStreamingChain


def test_everything_but_the_dynamics_matches_torch(song):
    """EQ (JUCE's RBJ filters), tanh saturation via Mix, LR4 crossovers, gain, width: the
    Torch render up to float32 coefficient rounding."""
    theta = checks.random_thetas(1, seed=21)[0]
    theta = P.ChainParams(theta.values, {**theta.switches, "multiband": False, "limiter": False})
    y = PedalboardStreamingChain(theta).render(song)
    assert np.abs(y - torch_render(song, theta)).max() < 1e-3


def test_split_bands_reconstruct(song):
    """Multiband with unity dynamics (ratios 1): the NumPy split sums back to its input."""
    theta = P.ChainParams(P.defaults(), {m: m == "multiband" for m in P.MODULES}).with_values(**{"multiband.mix": 0.7})
    chain = PedalboardStreamingChain(theta)
    np.testing.assert_allclose(chain.render(song), song, atol=2e-6)


def test_streaming_carries_state(song):
    theta = checks.random_thetas(1, seed=4)[0]
    whole = PedalboardStreamingChain(theta).process(song)
    chain = PedalboardStreamingChain(theta)
    sizes = [1, 63, 512, 7, 4096, 100]
    parts, pos, i = [], 0, 0
    while pos < song.shape[1]:
        n = sizes[i % len(sizes)]
        parts.append(chain.process(song[:, pos:pos + n]))
        pos, i = pos + n, i + 1
    np.testing.assert_allclose(np.concatenate(parts, axis=1), whole, atol=1e-5)


def test_linked_dynamics_keep_a_mono_image_mono(song):
    """Stereo-linked like torchcomp: a mono input stays exactly mono through every module."""
    mono = np.repeat(song[:1], 2, axis=0)
    theta = checks.random_thetas(1, seed=8)[0]
    y = PedalboardStreamingChain(theta).render(mono)
    np.testing.assert_array_equal(y[0], y[1])


@pytest.mark.slow
def test_calibration_brings_the_dynamics_closer(song, tmp_path):
    theta = checks.random_thetas(2, seed=6)[1]
    x = song[:, :5 * 44100]
    r = calibrate(theta, x, seconds=5.0, max_evaluations=60, source="synth")
    assert r.evaluations >= 50 and r.af_after < r.af_before
    ref = torch_render(x, theta)
    before = fidelity(PedalboardStreamingChain(theta).render(x), ref)
    after = fidelity(PedalboardStreamingChain(theta, settings=r.settings).render(x), ref)
    assert after["af"] < before["af"]
    f = tmp_path / "pb.json"
    r.settings.save(f)
    back = PedalboardSettings.load(f)
    assert back.calibration == r.settings.calibration
    assert back.params.values == pytest.approx(theta.values, rel=1e-6, abs=1e-6)  # JSON keeps 6 decimals
    data = json.loads(f.read_text())
    assert data["plugins"]["limiter"]["ratio"] == 1000.0 and data["info"]["calibrated_on"] == "synth"


def test_settings_file_problems_are_named(tmp_path):
    good = PedalboardSettings(P.ChainParams.default(), {"output.trim": 1.5}).to_dict()
    f = tmp_path / "s.json"
    for edit, needle in [
        (lambda d: d["calibration"].update({"output.trim": 99.0}), "calibration.output.trim"),
        (lambda d: d["calibration"].update({"nope": 1.0}), "calibration.nope"),
        (lambda d: d["calibration"].update({"limiter.threshold_offset": float("nan")}), "calibration.limiter.threshold_offset"),
        (lambda d: d["params"]["params"]["gain"].update(gain=50), "gain.gain"),
    ]:
        d = json.loads(json.dumps(good))
        edit(d)
        f.write_text(json.dumps(d))
        with pytest.raises(ParamError, match=needle.replace(".", r"\.")):
            PedalboardSettings.load(f)
    f.write_text(json.dumps({"schema": "something/else"}))
    with pytest.raises(RefmasterError, match="not a pedalboard chain file"):
        PedalboardSettings.load(f)
    assert set(CALIBRATION) >= {"output.trim", "limiter.threshold_offset"}
