import numpy as np
import pytest
import torch
from conftest import active_params, loudness

from engine import params as P
from engine.analysis.features import bark_band_centres, bark_spectrum, crest_factor_db, stereo_width
from engine.dsp.chain import CHAIN_LATENCY, render_chain
from engine.errors import ChainError, ParamError


def only(module: str) -> torch.Tensor:
    return torch.tensor([m == module for m in P.MODULES])


def test_gradients_reach_all_46_parameters(song_t):
    p = active_params().unsqueeze(0).requires_grad_(True)
    y = render_chain(song_t, p)
    (y.square().mean() + y[:, 0].mean() + (y[:, 0] - y[:, 1]).square().mean()).backward()
    zero = [P.PARAM_KEYS[i] for i in range(46) if not (torch.isfinite(p.grad[0, i]) and p.grad[0, i] != 0)]
    assert zero == []


def test_everything_off_is_exact_identity(song_t):
    y = render_chain(song_t, active_params(), torch.zeros(6, dtype=torch.bool))
    assert torch.equal(y, song_t)


def test_default_chain_keeps_loudness(song_t):
    y = render_chain(song_t, P.default_tensor())
    assert abs(loudness(y) - loudness(song_t)) < 0.5


def test_output_shape_dtype_and_alignment(song_t):
    for dtype in (torch.float32, torch.float64):
        y = render_chain(song_t.to(dtype), active_params())
        assert y.shape == song_t.shape and y.dtype == dtype
    y = render_chain(song_t, P.default_tensor(), only("eq"))  # flat EQ: aligned, no latency
    assert torch.allclose(y, song_t, atol=1e-5)
    assert CHAIN_LATENCY == 128


def test_float32_matches_float64(song_t):
    p = active_params()
    a = render_chain(song_t, p)
    b = render_chain(song_t.double(), p.double())
    assert float((a.double() - b).abs().max()) < 1e-4


def test_batch_items_have_their_own_parameters(song_t):
    p1 = active_params()
    p2 = active_params(gain__gain=-3.0, imager__width=0.3, eq__band1_gain=-6.0)
    sw = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 0, 1, 1, 0, 1]], dtype=torch.bool)
    batch = render_chain(song_t.repeat(2, 1, 1), torch.stack([p1, p2]), sw)
    one = render_chain(song_t, p1, sw[0])
    two = render_chain(song_t, p2, sw[1])
    assert torch.allclose(batch[0], one[0], atol=1e-6) and torch.allclose(batch[1], two[0], atol=1e-6)


def test_one_theta_for_a_batch_equals_it_repeated(song_t):
    """ITO renders its excerpts with one shared Θ (filters designed once): same audio, same gradient."""
    x = torch.cat([song_t[..., :30000], song_t[..., 30000:60000], song_t[..., 60000:90000]])
    a = active_params(multiband__mix=0.7, limiter__threshold=-9.0).requires_grad_(True)
    b = a.detach().clone().requires_grad_(True)
    ya = render_chain(x, a)
    yb = render_chain(x, b.unsqueeze(0).expand(3, -1))
    assert float((ya - yb).detach().abs().max()) < 1e-6
    (ga,), (gb,) = torch.autograd.grad(ya.square().sum(), a), torch.autograd.grad(yb.square().sum(), b)
    assert torch.allclose(ga, gb, rtol=1e-3, atol=1e-6)
    with pytest.raises(ChainError):
        render_chain(x, a.detach().unsqueeze(0).expand(2, -1))


def test_eq_moves_its_bark_band(song_t):
    centres = bark_band_centres()
    band = int(np.argmin(np.abs(centres - 3000)))
    p = P.default_tensor()
    p[P.PARAM_INDEX["eq.band1_gain"]] = 9.0
    p[P.PARAM_INDEX["eq.band1_freq"]] = 3000.0
    y = render_chain(song_t, p, only("eq"))
    diff_db = 20 / np.log(10) * (bark_spectrum(y) - bark_spectrum(song_t))[0, 0]
    assert diff_db[band] > 4.0
    assert abs(float(diff_db[0])) < 0.5  # low end untouched


def test_drive_lowers_crest_factor(song_t):
    p = P.default_tensor()
    p[P.PARAM_INDEX["distortion.drive"]] = 8.0
    p[P.PARAM_INDEX["distortion.mix"]] = 0.7
    loud = song_t * 3.0
    y = render_chain(loud, p, only("distortion"))
    assert float(crest_factor_db(y).mean()) < float(crest_factor_db(loud).mean()) - 1.0


def test_compressor_lowers_crest_factor(song_t):
    p = active_params(multiband__mix=0.7)
    for b in ("low", "mid", "high"):
        p[P.PARAM_INDEX[f"multiband.{b}_exp_ratio"]] = 1.0
        p[P.PARAM_INDEX[f"multiband.{b}_attack"]] = 1.0
        p[P.PARAM_INDEX[f"multiband.{b}_comp_ratio"]] = 8.0
    y = render_chain(song_t, p, only("multiband"))
    assert float(crest_factor_db(y).mean()) < float(crest_factor_db(song_t).mean()) - 0.5


def test_gain_moves_loudness(song_t):
    p = P.default_tensor()
    p[P.PARAM_INDEX["gain.gain"]] = 6.0
    y = render_chain(song_t, p, only("gain"))
    assert loudness(y) - loudness(song_t) == pytest.approx(6.0, abs=0.05)


def test_width_moves_side_mid_ratio(song_t):
    p = P.default_tensor()
    p[P.PARAM_INDEX["imager.width"]] = 0.75
    y = render_chain(song_t, p, only("imager"))
    assert float(stereo_width(y) / stereo_width(song_t)) == pytest.approx(9.0, rel=1e-3)  # (0.75/0.25)^2
    p[P.PARAM_INDEX["imager.width"]] = 0.0
    assert float(stereo_width(render_chain(song_t, p, only("imager")))) < 1e-9


def test_limiter_lowers_peak(song_t):
    p = P.default_tensor()
    p[P.PARAM_INDEX["limiter.threshold"]] = -12.0
    p[P.PARAM_INDEX["limiter.attack"]] = 0.1
    y = render_chain(song_t, p, only("limiter"))
    assert float(y.abs().max()) < float(song_t.abs().max()) * 10 ** (-3 / 20)


def test_nan_input_is_reported(song_t):
    x = song_t.clone()
    x[0, 1, 100] = float("nan")
    with pytest.raises(ChainError, match="input"):
        render_chain(x, P.default_tensor())


def test_out_of_range_parameter_is_named(song_t):
    p = P.default_tensor()
    p[P.PARAM_INDEX["imager.width"]] = 1.5
    with pytest.raises(ParamError, match="imager.width"):
        render_chain(song_t, p)


def test_numerical_failure_names_the_module(song_t, monkeypatch):
    import engine.dsp.chain as chain

    monkeypatch.setattr(chain, "stereo_imager", lambda x, w: x * float("inf"))
    with pytest.raises(ChainError, match="imager"):
        render_chain(song_t, P.default_tensor())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
def test_cuda_matches_cpu(song_t):
    p = active_params()
    a = render_chain(song_t, p)
    b = render_chain(song_t.cuda(), p.cuda()).cpu()
    assert float((a - b).abs().max()) < 1e-4
