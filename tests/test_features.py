import math

import numpy as np
import pytest
import torch

from engine.analysis import features as F
from engine.analysis.losses import MultiScaleSpectralLoss


def tone(freq=1000.0, amp=0.1, seconds=2.0, stereo=(1.0, 1.0)):
    t = np.arange(int(seconds * 44100)) / 44100
    s = amp * np.sin(2 * np.pi * freq * t)
    return np.stack([stereo[0] * s, stereo[1] * s])


def test_basic_features_of_known_signals():
    x = torch.from_numpy(tone()).unsqueeze(0)
    assert float(F.crest_factor_db(x)[0, 0]) == pytest.approx(20 * math.log10(math.sqrt(2)), abs=0.01)
    assert float(F.rms(x)[0, 0]) == pytest.approx(0.1 / math.sqrt(2), rel=1e-4)
    assert float(F.stereo_width(x)) < 1e-12  # mono
    left_only = torch.from_numpy(tone(stereo=(1.0, 0.0))).unsqueeze(0)
    assert float(F.stereo_imbalance(left_only)) == pytest.approx(-1.0, abs=1e-6)
    assert float(F.stereo_width(left_only)) == pytest.approx(1.0, rel=1e-6)


def test_bark_spectrum_peaks_at_the_tone():
    for f in (100.0, 1000.0, 8000.0):
        b = F.bark_spectrum(torch.from_numpy(tone(f)).unsqueeze(0))[0, 0]
        centres = F.bark_band_centres()
        edges = F.bark_band_edges()
        band = int(np.searchsorted(edges, f) - 1)
        assert int(b.argmax()) == band, (f, centres[int(b.argmax())])


def test_af_loss_zero_for_identical_and_differentiable(song):
    x = torch.from_numpy(song).unsqueeze(0).double()
    loss = F.AudioFeatureLoss()
    assert float(loss(x, x)) == pytest.approx(0.0, abs=1e-12)
    y = (x * 0.5).requires_grad_(True)
    total = loss(y, x)
    total.backward()
    assert float(total.detach()) > 0 and torch.isfinite(y.grad).all() and float(y.grad.abs().sum()) > 0
    terms = loss.terms(y, x)
    assert set(terms) == {"rms", "crest", "width", "imbalance", "bark"}


def test_af_distance_grows_with_difference(song):
    a = F.af_distance(song * 0.9, song)
    b = F.af_distance(song * 0.5, song)
    assert 0 < a < b


def test_loudness_and_true_peak():
    x = tone(997.0, amp=10 ** (-20 / 20), seconds=3.0)
    assert F.integrated_loudness(x) == pytest.approx(-20.0 + 0.0, abs=0.3)  # both channels, BS.1770
    # a quarter-sample-rate sine sampled at its zero crossings +-45 deg: inter-sample peak above sample peak
    n = np.arange(44100)
    s = 0.9 * np.sin(2 * np.pi * 11025 * n / 44100 + np.pi / 4)
    xs = np.stack([s, s])
    assert F.true_peak_db(xs) > F.sample_peak_db(xs) + 2.0


def test_drv_measures_level_variation():
    rng = np.random.default_rng(0)
    sr = 44100
    x = np.zeros(sr * 8)
    for i, start in enumerate(range(0, len(x) - 4000, sr // 4)):
        hit = rng.standard_normal(3000) * np.exp(-np.arange(3000) / 400)
        x[start : start + 3000] += hit * 0.8 * 10 ** (-rng.uniform(0, 20) / 20)  # hits spread over 20 dB
    steady = np.zeros_like(x)
    for start in range(0, len(x) - 4000, sr // 4):
        steady[start : start + 3000] += rng.standard_normal(3000) * np.exp(-np.arange(3000) / 400) * 0.5
    varied_drv = F.drv_db(np.stack([x, x]))
    steady_drv = F.drv_db(np.stack([steady, steady]))
    assert np.isfinite(varied_drv) and np.isfinite(steady_drv)
    assert varied_drv > steady_drv + 0.3
    assert math.isnan(F.drv_db(tone()))  # a steady tone has no onsets


def test_multiscale_spectral_loss(song):
    loss = MultiScaleSpectralLoss()
    x = torch.from_numpy(song[:, :44100]).unsqueeze(0)
    assert float(loss(x, x)[0]) == pytest.approx(0.0, abs=1e-6)
    near = float(loss(x * 0.9, x)[0])
    far = float(loss(x * 0.3, x)[0])
    assert 0 < near < far
    swapped = x.flip(1)  # L<->R: mid unchanged, side flips sign: magnitudes of L and R differ
    assert float(loss(swapped, x)[0]) > 0
    y = (x * 0.5).requires_grad_(True)
    loss(y, x).sum().backward()
    assert torch.isfinite(y.grad).all()


def test_analyze_report_keys(song):
    r = F.analyze(song)
    for k in ("loudness_lufs", "true_peak_dbtp", "crest_db", "width", "drv_db", "bark_mid_db"):
        assert k in r
    assert len(r["bark_mid_db"]) == 24 and np.isfinite(r["loudness_lufs"])


def test_differentiable_drv_equals_the_measure_and_has_a_gradient():
    rng = np.random.default_rng(1)
    sr = 44100
    x = np.zeros((2, sr * 6))
    for start in range(0, x.shape[1] - 4000, sr // 5):
        hit = rng.standard_normal(3000) * np.exp(-np.arange(3000) / 400)
        x[:, start : start + 3000] += hit * 0.8 * 10 ** (-rng.uniform(0, 15) / 20)
    onsets = F.onset_table(x[None])
    y = torch.from_numpy(x).unsqueeze(0).requires_grad_(True)
    d = F.drv_torch(y, onsets)
    assert float(d.detach()) == pytest.approx(F.drv_db(x), abs=1e-9)
    d.backward()
    assert torch.isfinite(y.grad).all() and float(y.grad.abs().sum()) > 0
    # excerpts: the onsets of each batch item stay with it
    two = np.stack([x[:, : sr * 3], x[:, sr * 3 :]])
    d2 = F.drv_torch(torch.from_numpy(two), F.onset_table(two))
    assert np.isfinite(float(d2))
    assert F.drv_torch(torch.from_numpy(tone()).unsqueeze(0), F.onset_table(tone()[None])) is None
