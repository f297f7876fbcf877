import numpy as np
import pytest
import scipy.signal as ss
import torch

from engine.dsp import dynamics as D
from engine.dsp.filters import IIR_TAIL, design_biquad, sosfilt, three_band_split


@pytest.mark.parametrize("kind,gain,freq,q", [
    ("low_shelf", 20.0, 20.0, 0.1), ("low_shelf", -12.0, 300.0, 0.7), ("peaking", 20.0, 80.0, 5.0),
    ("peaking", -9.0, 9000.0, 2.0), ("high_shelf", 15.0, 21050.0, 0.1), ("low_pass", 0.0, 150.0, 0.7071),
])
@pytest.mark.parametrize("length", [700, 44100 * 3])
def test_fft_filtering_equals_causal_iir(kind, gain, freq, q, length):
    rng = np.random.default_rng(0)
    x = torch.from_numpy(0.3 * rng.standard_normal((1, 2, length)))
    sos = design_biquad(torch.tensor([gain]), torch.tensor([freq]), torch.tensor([q]), kind, 44100).unsqueeze(1)
    ref = ss.sosfilt(sos[0].numpy(), x[0].numpy())
    assert np.abs(sosfilt(x, sos)[0].numpy() - ref).max() < 1e-9
    assert np.abs(sosfilt(x.float(), sos)[0].numpy() - ref).max() < 5e-6


def test_three_band_split_reconstructs_and_separates():
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.standard_normal((1, 2, 44100)).astype(np.float32))
    low, mid, high = three_band_split(x, torch.tensor([200.0]), torch.tensor([4000.0]), 44100)
    assert torch.allclose(low + mid + high, x, atol=1e-6)
    spec = lambda s: np.abs(np.fft.rfft(s[0, 0].numpy()))
    f = np.fft.rfftfreq(44100, 1 / 44100)
    for band, keep in ((low, f < 100), (high, f > 8000), (mid, (f > 800) & (f < 2000))):
        share = (spec(band)[keep] ** 2).sum() / (spec(x)[keep] ** 2).sum()
        assert share > 0.8


def test_tail_margin_is_long_enough_for_slowest_filter():
    sos = design_biquad(torch.tensor([20.0]), torch.tensor([20.0]), torch.tensor([0.1]), "low_shelf", 44100)
    imp = np.zeros(2 * IIR_TAIL)
    imp[0] = 1.0
    h = ss.sosfilt(sos.numpy(), imp)
    assert np.abs(h[IIR_TAIL:]).max() < 1e-8


def test_unity_compressor_is_exactly_unity():
    x = torch.randn(2, 2, 5000)
    one, zero = torch.ones(2), torch.zeros(2)
    g = D.compressor_expander_gain(x, zero, one, zero - 60, one, one * 10, one * 100, 44100)
    assert g.shape == (2, 5000) and torch.equal(g, torch.ones_like(g))


def test_compressor_reduces_loud_frames_by_the_ratio():
    t = torch.arange(44100 * 2) / 44100
    tone = torch.sin(2 * torch.pi * 440 * t)
    x = torch.stack([tone, tone]).unsqueeze(0) * 0.5  # about -9 dB RMS
    g = D.compressor_expander_gain(x, torch.tensor([-21.0]), torch.tensor([4.0]), torch.tensor([-60.0]),
                                   torch.tensor([1.0]), torch.tensor([5.0]), torch.tensor([50.0]), 44100)
    level = 10 * np.log10(0.125)
    expected_db = (1 - 1 / 4) * (-21.0 - level)
    assert 20 * np.log10(float(g[0, -1000])) == pytest.approx(expected_db, abs=0.15)  # RMS ripple


def test_limiter_lookahead_catches_a_transient():
    x = torch.zeros(1, 2, 20000)
    x[..., 10000:10200] = torch.linspace(1.0, 0.2, 200)  # a click at full scale
    g = D.limiter_gain(x, torch.tensor([-12.0]), torch.tensor([0.1]), torch.tensor([100.0]), 44100)
    y = x * g.unsqueeze(1)
    assert float(y.abs().max()) <= 10 ** (-12 / 20) * 1.001
    assert float(g[0, :9000].min()) == 1.0  # untouched well before the lookahead window


def test_attack_and_release_directions():
    f = torch.cat([torch.ones(1, 50), torch.full((1, 50), 0.1), torch.ones(1, 200)], dim=1)
    fast, slow = torch.tensor([0.9]), torch.tensor([0.05])
    g = D.smooth_gain(f, fast, slow)
    assert float(g[0, 52]) < 0.2          # falls fast (attack)
    assert 0.2 < float(g[0, 110]) < 0.9   # climbs back slowly (release)


def test_frames_are_defined_at_absolute_positions():
    x = torch.randn(1, 2, 1000)
    p1 = D.frame_power(x)
    p2 = D.frame_power(torch.cat([x, torch.zeros(1, 2, 500)], -1))
    n = (1000 // D.CONTROL_HOP)
    assert torch.allclose(p1[:, :n], p2[:, :n])
