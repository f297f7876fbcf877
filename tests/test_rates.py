"""The chain at the session's sample rate (issue 11, part 1): 22.05–192 kHz natively in the Torch
render, the ONNX graph and the pedalboard chain; `render` and `master` process a 48 kHz file at
48 kHz, with no resampler on the audio path."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import active_params

from bridge.cli import main
from engine import params as P
from engine.analysis.features import analyze
from engine.dsp.chain import render_offline
from engine.errors import RefmasterError
from engine.io.audio import resample
from export import checks
from export.calibrate import torch_render

TOL = 1e-4


@pytest.fixture(scope="module")
def theta():
    return P.ChainParams.from_tensors(active_params())


@pytest.fixture(scope="module")
def x44(song):
    return np.ascontiguousarray(song[:, :4 * 44100])


def test_the_chain_sounds_the_same_at_48k_because_it_is_designed_for_the_rate(x44, theta):
    """The same music at 44.1 and at 48 kHz through the same Θ: the same loudness, balance, crest
    and dynamics (Θ is in Hz and ms). Designed for 44.1 kHz instead, the 48 kHz render moves every
    band 8.8 % up and every time constant 8.8 % shorter: the balance is off by dB."""
    x48 = resample(x44, 44100, 48000)
    a44, a48 = analyze(render_offline(x44, theta)), analyze(render_offline(x48, theta, 48000), 48000)
    assert abs(a48["loudness_lufs"] - a44["loudness_lufs"]) < 0.05
    assert abs(a48["crest_db"] - a44["crest_db"]) < 0.2
    assert abs(a48["drv_db"] - a44["drv_db"]) < 0.1

    def tilt(out, inp):   # what the chain did to the balance, band by band (the analysis's own grid cancels)
        return np.array(out["bark_mid_db"]) - np.array(inp["bark_mid_db"])

    i44, i48 = analyze(x44), analyze(x48, 48000)
    assert np.abs(tilt(a48, i48) - tilt(a44, i44)).max() < 0.3
    wrong = analyze(render_offline(x48, theta, 44100), 48000)   # the 44.1 kHz design on 48 kHz audio
    assert np.abs(tilt(wrong, i48) - tilt(a44, i44)).max() > 1.0


def test_a_peaking_band_and_an_attack_time_mean_the_same_at_96k():
    """Hz and ms at 96 kHz: a +12 dB band at 1 kHz lifts a 1 kHz tone by 12 dB, and a compressor's
    10 ms attack takes 10 ms to pull a tone burst down (to within one control frame)."""
    from engine.dsp.dynamics import CONTROL_HOP, compressor_expander_gain

    for sr in (44100, 96000):
        t = np.arange(sr) / sr
        tone = np.stack([0.1 * np.sin(2 * np.pi * 1000 * t)] * 2).astype(np.float32)
        eq = P.ChainParams(P.defaults(), {m: m == "eq" for m in P.MODULES}).with_values(
            **{"eq.band0_gain": 12.0, "eq.band0_freq": 1000.0, "eq.band0_q": 2.0})
        y = render_offline(tone, eq, sr)
        gain_db = 20 * np.log10(np.abs(y[0, sr // 2:]).max() / 0.1)
        assert gain_db == pytest.approx(12.0, abs=0.05), sr
        burst = torch.from_numpy(np.concatenate([np.zeros((2, sr // 10)), 10 * tone[:, :sr // 2]], 1)).unsqueeze(0)
        g = compressor_expander_gain(burst.float(), torch.tensor([-30.0]), torch.tensor([20.0]), torch.tensor([-60.0]),
                                     torch.tensor([1.0]), torch.tensor([10.0]), torch.tensor([100.0]), sr)[0].numpy()
        settled = g[sr // 10 + sr // 5]
        onset = sr // 10
        reach = int(np.argmax(g[onset:] <= 1 - 0.9 * (1 - settled)))   # 90 % of the gain reduction
        ms = 1000.0 * reach / sr
        assert 10.0 - 1000.0 * 2 * CONTROL_HOP / sr < ms < 10.0 + 12.0, (sr, ms)   # the RMS window (10 ms) adds to it


def test_the_filter_tail_covers_the_slowest_filter_at_every_rate():
    """The FFT filtering keeps :func:`iir_tail` samples of response: the same 2.97 s at every rate,
    past which the slowest filter we allow (20 Hz, Q 0.1, +20 dB shelf) has died out."""
    import scipy.signal as ss

    from engine.dsp.filters import design_biquad, iir_tail

    for sr in (22050, 48000, 96000, 192000):
        tail = iir_tail(sr)
        assert tail >= 2.97 * sr
        sos = design_biquad(torch.tensor([20.0]), torch.tensor([20.0]), torch.tensor([0.1]), "low_shelf", sr)
        imp = np.zeros(tail + sr // 10)
        imp[0] = 1.0
        assert np.abs(ss.sosfilt(sos.numpy(), imp)[tail:]).max() < 1e-8, sr


def test_bands_above_nyquist_are_designed_at_the_limit(x44):
    """At 22.05 kHz, Nyquist (11 kHz) lies inside the top EQ bands' ranges: a band set above
    :func:`engine.rates.design_freq_limit` is designed at it (Torch and ONNX alike), not turned
    into an unstable filter."""
    from export.onnx_stream import OnnxStreamingChain

    sr = 22050
    x = resample(x44[:, :44100], 44100, sr)
    eq = P.ChainParams(P.defaults(), {m: m == "eq" for m in P.MODULES})
    high = eq.with_values(**{"eq.band3_freq": 18000.0, "eq.band3_gain": 9.0, "eq.high_shelf_freq": 21000.0,
                             "eq.high_shelf_gain": -6.0})
    from engine.rates import design_freq_limit

    assert design_freq_limit(sr) < 12000.0   # below both ranges' lowest values
    also_above = eq.with_values(**{"eq.band3_freq": 12000.0, "eq.band3_gain": 9.0, "eq.high_shelf_freq": 11000.0,
                                   "eq.high_shelf_gain": -6.0})
    y = render_offline(x, high, sr)
    assert np.isfinite(y).all() and np.abs(y - x).max() > 1e-3
    np.testing.assert_array_equal(y, render_offline(x, also_above, sr))   # both designed at the limit
    chain = OnnxStreamingChain(high, sample_rate=sr)
    assert np.abs(checks.stream(chain, x, "256") - y).max() <= TOL


def test_rates_outside_the_chains_are_one_clear_error(x44, theta):
    p, s = theta.to_tensors()
    for bad in (8000, 16000.5, 384000, True):
        with pytest.raises(RefmasterError, match="22050…192000 Hz"):
            from engine.dsp.chain import render_chain

            render_chain(torch.from_numpy(x44[:, :1000]).unsqueeze(0), p, s, bad)
    from engine.rates import chain_rate

    assert chain_rate(16000) == P.SAMPLE_RATE and chain_rate(96000) == 96000


@pytest.mark.parametrize("rate", [48000, 96000])
def test_onnx_equals_torch_at_the_rate(x44, rate):
    """The exactness check at 48 and 96 kHz on synthesised music: every block configuration the
    live insert meets (a JACK period, odd sizes, random sizes)."""
    from export.onnx_stream import OnnxStreamingChain

    from engine.dsp.chain import CHAIN_LATENCY

    x = resample(x44[:, :int(1.5 * 44100)], 44100, rate)
    chain = OnnxStreamingChain(sample_rate=rate)
    for i, theta in enumerate(checks.random_thetas(2, seed=31)):
        chain.set_params(theta)
        ref = torch_render(x, theta, rate)
        for config in ("128", "random"):
            d = float(np.abs(checks.stream(chain, x, config, seed=i) - ref).max())
            assert d <= TOL, (rate, i, config, d)
        n = int(0.1 * rate)   # 7-sample blocks on a piece: its last samples saw silence after it, the render music
        d = float(np.abs(checks.stream(chain, x[:, :n], "7")[:, :n - CHAIN_LATENCY] - ref[:, :n - CHAIN_LATENCY]).max())
        assert d <= TOL, (rate, i, "7", d)


def test_onnx_rate_is_an_input_with_the_exported_default(x44, tmp_path, capsys):
    """`export --rate 48000`: the graph's sample_rate input defaults to 48000 (a host that feeds
    nothing gets the 48 kHz chain), and the rate can be changed per stream without re-export."""
    import onnx
    import onnxruntime as ort

    from export.onnx_chain import initial_state
    from export.onnx_stream import OnnxStreamingChain, session_options

    pf = tmp_path / "theta.json"
    theta = checks.random_thetas(1, seed=5)[0]
    pf.write_text(theta.to_json())
    out = tmp_path / "c48.onnx"
    assert main(["export", str(pf), "--onnx", str(out), "--rate", "48000"]) == 0
    assert "default 48000 Hz" in capsys.readouterr().out
    meta = {m.key: m.value for m in onnx.load(str(out)).metadata_props}
    assert meta["refmaster.sample_rate"] == "48000" and meta["refmaster.sample_rates"] == "22050-192000"
    x = resample(x44[:, :2 * 44100], 44100, 48000)
    sess = ort.InferenceSession(str(out), session_options(), providers=["CPUExecutionProvider"])
    y, _ = sess.run(None, {"audio": np.concatenate([x, np.zeros((2, 128), np.float32)], 1), "state": initial_state()})
    assert np.abs(y[:, 128:] - torch_render(x, theta, 48000)).max() <= TOL
    chain = OnnxStreamingChain(theta, model=out, sample_rate=48000)
    chain.set_sample_rate(96000)
    x96 = resample(x[:, :44100], 48000, 96000)
    assert np.abs(checks.stream(chain, x96, "512") - torch_render(x96, theta, 96000)).max() <= TOL
    # a host that changes the rate input mid-stream gets filters designed for the new rate at once
    # (the cached coefficients belong to parameters and rate): as from a cleared cache
    feed = {"params": theta.to_tensors()[0].numpy(), "switches": theta.to_tensors()[1].numpy()}
    _, st = sess.run(None, {"audio": x[:, :4096], "sample_rate": np.array([48000.0]), "state": initial_state(), **feed})
    cleared = st.copy()
    cleared[:P.NUM_PARAMS + 1] = 0.0
    nxt = {"audio": x[:, 4096:8192], "sample_rate": np.array([96000.0]), **feed}
    np.testing.assert_array_equal(sess.run(None, {**nxt, "state": st})[0], sess.run(None, {**nxt, "state": cleared})[0])


def test_pedalboard_runs_at_the_rate(x44):
    """EQ, saturation, crossovers, gain and width of the pedalboard chain at 48 kHz equal the Torch
    render at 48 kHz (JUCE designs its filters at the rate it is given; so do our crossovers), up
    to JUCE's float32 coefficients, whose rounding weighs more as poles near the unit circle
    (measured 2.3e-4 at 44.1 kHz, 1.6e-3 at 48 kHz; the 44.1 kHz design would be 0.16 off)."""
    from export.pedalboard_chain import PedalboardStreamingChain

    theta = checks.random_thetas(1, seed=21)[0]
    theta = P.ChainParams(theta.values, {**theta.switches, "multiband": False, "limiter": False})
    x = resample(x44[:, :2 * 44100], 44100, 48000)
    y = PedalboardStreamingChain(theta, sample_rate=48000).render(x)
    assert np.abs(y - torch_render(x, theta, 48000)).max() < 3e-3
    assert np.abs(y - torch_render(x, theta, 44100)).max() > 1e-2   # the rate matters
    from engine.dsp.filters import three_band_split

    split = PedalboardStreamingChain(P.ChainParams(theta.values, {m: False for m in P.MODULES}), sample_rate=48000)
    _, low, high = split.front(x)   # the multiband's crossovers (scipy, state carried) at 48 kHz
    hz = [torch.tensor([theta.values[f"multiband.{k}_crossover"]], dtype=torch.float64) for k in ("low", "high")]
    want_low, _, want_high = three_band_split(torch.from_numpy(x).double().unsqueeze(0), *hz, 48000)
    assert np.abs(low - want_low[0].numpy()).max() < 1e-5 and np.abs(high - want_high[0].numpy()).max() < 1e-5


def _spy_resamplers(monkeypatch):
    """Record every resampling that happens (source rate, target rate), wherever it is asked for."""
    import engine.io.audio as audio
    import engine.io.resample as streaming

    calls = []
    plain = audio.resample

    def spy(a, source, target=P.SAMPLE_RATE):
        if source != target:
            calls.append((source, target))
        return plain(a, source, target)

    class SpyStreaming(streaming.StreamingResampler):
        def __init__(self, source, target):
            calls.append((source, target))
            super().__init__(source, target)

    monkeypatch.setattr(audio, "resample", spy)
    monkeypatch.setattr(streaming, "StreamingResampler", SpyStreaming)
    for mod in ("bridge.cli.master", "export.render", "engine.io.reader"):
        m = __import__(mod, fromlist=["x"])
        if hasattr(m, "resample"):
            monkeypatch.setattr(m, "resample", spy)
        if hasattr(m, "StreamingResampler"):
            monkeypatch.setattr(m, "StreamingResampler", SpyStreaming)
    return calls


def _with_air(x48: np.ndarray) -> np.ndarray:
    """A 48 kHz signal with a quiet 23 kHz tone: above 44.1 kHz's Nyquist, so it survives only
    where the audio path is never resampled to 44.1 kHz."""
    t = np.arange(x48.shape[1]) / 48000
    return (x48 + 0.01 * np.sin(2 * np.pi * 23000 * t)).astype(np.float32)


def _air(y: np.ndarray) -> float:
    spec = np.abs(np.fft.rfft(y[0].astype(np.float64)))
    f = np.fft.rfftfreq(y.shape[1], 1 / 48000)
    return float(spec[(f > 22900) & (f < 23100)].max() / np.sqrt(y.shape[1]))


def test_render_processes_a_48k_file_at_48k(x44, tmp_path, capsys, monkeypatch):
    calls = _spy_resamplers(monkeypatch)
    x48 = _with_air(resample(x44[:, :3 * 44100], 44100, 48000))
    x48 = x48[:, :x48.shape[1] - 77]   # a length that is no multiple of anything
    src, out, pf = tmp_path / "in48.wav", tmp_path / "out48.wav", tmp_path / "theta.json"
    sf.write(src, x48.T, 48000, subtype="FLOAT")
    theta = checks.random_thetas(1, seed=3)[0]
    pf.write_text(theta.to_json())
    for backend in ("onnx", "torch"):
        assert main(["render", str(src), "--params", str(pf), "--backend", backend, "-o", str(out)]) == 0
        y, rate = sf.read(out, dtype="float32", always_2d=True)
        assert rate == 48000 and y.shape[0] == x48.shape[1]
        assert calls == [], calls   # no resampler anywhere on the way
        want = np.clip(torch_render(x48, theta, 48000), -1, 1)
        assert np.abs(y.T - want).max() < 2e-5, backend   # 24-bit rounding
        assert _air(y.T) > 0.2 * _air(x48)
    capsys.readouterr()


@pytest.mark.slow
def test_master_writes_a_48k_master_at_48k(x44, tmp_path, capsys, monkeypatch, songs):
    """`master` on a 48 kHz file: Φ, Ψ and the matches read a 44.1 kHz copy (48 → 44.1 kHz is the
    only resampling), the master itself is f_norm and the chain at 48 kHz of the file as decoded:
    its length is the input's, it is the preset's chain rendered at 48 kHz, and its 23 kHz content
    (which a 48 → 44.1 → 48 kHz path removes) is there."""
    from engine.model.fxnorm import fx_normalize, load_stats
    from presets import PresetStore

    calls = _spy_resamplers(monkeypatch)
    x48 = _with_air(resample(x44, 44100, 48000))[:, :-5]
    src, ref, out = tmp_path / "in48.wav", tmp_path / "ref.wav", tmp_path / "master48.wav"
    sf.write(src, x48.T, 48000, subtype="FLOAT")
    sf.write(ref, songs[0].T, 44100, subtype="FLOAT")
    store = tmp_path / "presets"
    assert main(["master", str(src), "--ref", str(ref), "-o", str(out), "--no-ito", "--presets", str(store),
                 "--quiet", "--threads", "1"]) == 0
    capsys.readouterr()
    assert set(calls) == {(48000, 44100)}, calls   # only what the models read
    y, rate = sf.read(out, dtype="float32", always_2d=True)
    assert rate == 48000 and y.shape[0] == x48.shape[1]
    chain = PresetStore(store).get("ref").chain
    want = np.clip(render_offline(fx_normalize(x48, load_stats(), 48000), chain, 48000), -1, 1)
    assert np.abs(y.T - want).max() < 1e-3   # the preset holds Θ to 6 decimals
    assert _air(y.T) > 0.05 * _air(x48)
