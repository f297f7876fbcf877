import numpy as np
import pytest
import torch
from conftest import REAL_SONGS, needs_real_music

from engine import params as P
from engine.analysis.features import integrated_loudness
from engine.model.fxnorm import fx_normalize, load_stats, side_mid_ratio
from engine.model.manipulation import MANIPULATION_RANGES, PROBABILITIES, manipulate, random_manipulation
from engine.model.synth import synth_song, synth_song_with_info


def test_manipulation_is_reproducible_by_seed(song_t):
    a, sa = random_manipulation(torch.Generator().manual_seed(42), 4)
    b, sb = random_manipulation(torch.Generator().manual_seed(42), 4)
    c, _ = random_manipulation(torch.Generator().manual_seed(43), 4)
    assert torch.equal(a, b) and torch.equal(sa, sb) and not torch.equal(a, c)
    y1, _, _ = manipulate(song_t, torch.Generator().manual_seed(7))
    y2, _, _ = manipulate(song_t, torch.Generator().manual_seed(7))
    assert torch.equal(y1, y2)


def test_manipulation_ranges_and_probabilities():
    values, switches = random_manipulation(torch.Generator().manual_seed(0), 4000, torch.float64)
    for i, key in enumerate(P.PARAM_KEYS):
        lo, hi = MANIPULATION_RANGES[key]
        spec = P.PARAMS[i]
        assert spec.min <= lo <= hi <= spec.max, key  # the converter can reproduce every draw
        assert float(values[:, i].min()) >= lo - 1e-9 and float(values[:, i].max()) <= hi + 1e-9
    for j, m in enumerate(P.MODULES):
        assert float(switches[:, j].double().mean()) == pytest.approx(PROBABILITIES[m], abs=0.03)
    P.check_tensor(values)
    spec_ranges = {"distortion.drive": (0, 4), "multiband.mid_attack": (1, 20), "multiband.low_release": (20, 500),
                   "limiter.attack": (0.1, 5), "limiter.release": (20, 1000), "gain.gain": (0, 6),
                   "eq.band1_gain": (-10, 10), "eq.band1_q": (0.5, 5), "multiband.high_comp_ratio": (1.5, 6),
                   "multiband.low_comp_threshold": (-30, -5), "limiter.threshold": (-20, 0)}
    for k, r in spec_ranges.items():
        assert MANIPULATION_RANGES[k] == pytest.approx(r), k


def test_fxnorm_reaches_target_loudness_and_moves_width(songs):
    stats = load_stats()
    for s in songs:
        y = fx_normalize(s * 0.3, stats)
        assert integrated_loudness(y) == pytest.approx(stats["loudness_lufs"], abs=1.0)
        before = abs(np.log(side_mid_ratio(s) / stats["side_mid_ratio"]))
        after = abs(np.log(side_mid_ratio(y) / stats["side_mid_ratio"]))
        # within the side-gain limits the width lands on the corpus ratio; these songs are inside them
        assert before > 0.2 and after < 1e-3


def test_fxnorm_removes_an_eq_difference(songs):
    """f_norm's EQ step: a song and the same song through a strong tilt normalise to nearly the
    same spectral shape (the tilt is what f_norm exists to take away)."""
    import torch

    from engine import params as P
    from engine.dsp.chain import render_chain
    from engine.model.fxnorm import band_shape_db, third_octave_centres

    stats = load_stats()
    tilt = P.ChainParams.default().with_values(**{"eq.high_shelf_gain": 8.0, "eq.high_shelf_freq": 4000.0,
                                                   "eq.low_shelf_gain": -6.0, "eq.low_shelf_freq": 200.0}).to_tensors()[0]
    c = third_octave_centres()
    band = (c > 40) & (c < 12000)
    for s in songs[:3]:
        with torch.no_grad():
            t = render_chain(torch.from_numpy(s).unsqueeze(0), tilt)[0].numpy()
        before = np.sqrt(np.mean((band_shape_db(s) - band_shape_db(t))[band] ** 2))
        after = np.sqrt(np.mean((band_shape_db(fx_normalize(s, stats)) - band_shape_db(fx_normalize(t, stats)))[band] ** 2))
        assert before > 4.0 and after < 0.4 * before, (before, after)


def test_fxnorm_keeps_silence_and_shape(song):
    z = np.zeros((2, 44100), np.float32)
    assert np.array_equal(fx_normalize(z), z)
    assert fx_normalize(song).shape == song.shape


@needs_real_music
def test_fxnorm_on_real_music_within_1_lu():
    from engine.io.audio import load_audio

    stats = load_stats()
    for f in REAL_SONGS:
        y = fx_normalize(load_audio(f).audio, stats)
        assert integrated_loudness(y) == pytest.approx(stats["loudness_lufs"], abs=1.0), f.name


@needs_real_music
def test_default_chain_keeps_loudness_on_real_music():
    from conftest import loudness

    from engine.dsp.chain import render_chain
    from engine.io.audio import load_audio

    for f in REAL_SONGS[:6]:
        x = torch.from_numpy(load_audio(f).audio[:, : 44100 * 15]).unsqueeze(0)
        y = render_chain(x, P.default_tensor())
        assert abs(loudness(y) - loudness(x)) < 0.5, f.name


def test_synth_is_deterministic_and_varied():
    a, ia = synth_song_with_info(5, 4.0)
    b, _ = synth_song_with_info(5, 4.0)
    c, ic = synth_song_with_info(6, 4.0)
    assert np.array_equal(a, b) and not np.array_equal(a[:, :1000], c[:, :1000])
    assert a.shape == (2, 4 * 44100) and a.dtype == np.float32
    assert 10 ** (-7 / 20) < np.abs(a).max() < 10 ** (-2.9 / 20)  # mixed, with headroom
    assert side_mid_ratio(a) > 0.003  # stereo placement
    assert ia.describe() != ic.describe()


def test_synth_has_drums_bass_and_highs():
    x = synth_song(9, 6.0)
    f = np.fft.rfftfreq(x.shape[1], 1 / 44100)
    p = np.abs(np.fft.rfft(x.mean(0))) ** 2
    low = p[(f > 30) & (f < 150)].sum()
    high = p[(f > 6000) & (f < 16000)].sum()
    assert low > 0 and high / p.sum() > 1e-4
