"""The streaming ONNX chain: its contract, and that it equals the Torch render sample for sample."""

import json

import numpy as np
import onnx
import pytest
import torch
from conftest import REAL_SONGS, needs_real_music

from engine import params as P
from engine.dsp.chain import CHAIN_LATENCY, render_chain
from engine.dsp.dynamics import time_coef
from engine.errors import AudioError, ChainError
from export import checks
from export.onnx_builder import GraphBuilder
from export.onnx_chain import FORMAT_TAG, OPSET, STATE_SIZE, build_model, state_layout
from export.onnx_coefficients import _SECTION_KINDS, _design_sections
from export.onnx_stream import OnnxStreamingChain, session_options

TOL = 1e-4  # the limit; measured differences are around 1e-6 (docs/export.md)


@pytest.fixture(scope="module")
def model():
    return build_model()


@pytest.fixture(scope="module")
def chain():
    return OnnxStreamingChain()


def torch_render(x, theta: P.ChainParams):
    p, s = theta.to_tensors()
    with torch.no_grad():
        return render_chain(torch.from_numpy(x).unsqueeze(0), p, s)[0].numpy()


def test_graph_contract(model):
    assert model.opset_import[0].domain == "" and model.opset_import[0].version == OPSET >= 17
    assert all(n.domain in ("", "ai.onnx") for n in model.graph.node)
    ins = {i.name: i for i in model.graph.input}
    outs = [o.name for o in model.graph.output]
    assert list(ins) == ["audio", "params", "switches", "sample_rate", "state"] and outs == ["out", "next_state"]
    dims = lambda v: [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim]
    assert dims(ins["audio"]) == [2, "N"] and dims(ins["params"]) == [46] and dims(ins["state"]) == [STATE_SIZE]
    assert ins["switches"].type.tensor_type.elem_type == onnx.TensorProto.BOOL
    assert ins["sample_rate"].type.tensor_type.elem_type == onnx.TensorProto.DOUBLE and dims(ins["sample_rate"]) == [1]
    assert {i.name for i in model.graph.initializer} >= {"params", "switches", "sample_rate"}  # defaults, overridable
    ops = {n.op_type for n in model.graph.node}
    assert "RNN" in ops and "Loop" not in ops and "Scan" not in ops


def test_metadata_schema_is_read_from_engine_params():
    theta = P.ChainParams.default().with_values(**{"gain.gain": 3.5, "eq.band1_freq": 4500.0})
    meta = {m.key: m.value for m in build_model(theta).metadata_props}
    assert meta["refmaster.format"] == FORMAT_TAG
    schema = json.loads(meta["refmaster.schema"])
    assert [(s["key"], s["unit"], s["min"], s["max"], s["scale"]) for s in schema] == \
        [(s.key, s.unit, s.min, s.max, s.scale) for s in P.PARAMS]
    assert P.ChainParams.from_json(meta["refmaster.params"]).values["gain.gain"] == pytest.approx(3.5)
    assert int(meta["refmaster.latency"]) == CHAIN_LATENCY and int(meta["refmaster.state_size"]) == STATE_SIZE
    layout = json.loads(meta["refmaster.state_layout"])
    assert layout == state_layout() and layout[-1]["offset"] + int(np.prod(layout[-1]["shape"])) == STATE_SIZE


def test_filter_design_in_graph_equals_engine(chain):
    """The graph's float64 RBJ coefficients equal engine.dsp.filters.design_biquad (dasp) to 1e-12."""
    import onnxruntime as ort

    g = GraphBuilder("design")
    p = g.input("params", np.float32, [P.NUM_PARAMS])
    with g.scope("d"):
        g.output(_design_sections(g, g.cast(p, np.float64), g.const(np.array([44100.0]))), "sos", np.float64,
                 [len(_SECTION_KINDS), 6])
    sess = ort.InferenceSession(g.model(OPSET).SerializeToString(), session_options(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for _ in range(5):
        theta = np.array([s.from_normalized(u) for s, u in zip(P.PARAMS, rng.random(P.NUM_PARAMS))], np.float32)
        got = sess.run(None, {"params": theta})[0]
        t = torch.from_numpy(theta).unsqueeze(0)
        from engine.dsp.chain import eq_sections
        from engine.dsp.filters import crossover_sections

        want = [eq_sections(t)[0].numpy()]
        lp, hp = crossover_sections(t[:, P.PARAM_INDEX["multiband.low_crossover"]],
                                    t[:, P.PARAM_INDEX["multiband.high_crossover"]], 44100)
        want.append(np.stack([lp[0, 0].numpy(), hp[0, 0].numpy()]))
        np.testing.assert_allclose(got, np.concatenate(want), rtol=1e-12, atol=1e-12)


def test_time_coefficients_match_torchcomp():
    """The graph computes torchcomp's ms2coef in float32 with the same operations (its exp may
    differ from torch's by one unit in the last place)."""
    import onnxruntime as ort

    from export.onnx_coefficients import _time_coef

    g = GraphBuilder("tc")
    ms = g.input("ms", np.float32, ["K"])
    g.output(_time_coef(g, ms, g.const(np.float32(44100 / 32))), "coef", np.float32, ["K"])
    sess = ort.InferenceSession(g.model(OPSET).SerializeToString(), session_options(), providers=["CPUExecutionProvider"])
    values = np.geomspace(0.1, 1000.0, 97).astype(np.float32)
    np.testing.assert_allclose(sess.run(None, {"ms": values})[0], time_coef(torch.from_numpy(values), 44100).numpy(),
                               rtol=0, atol=2.0 ** -23)


@pytest.mark.parametrize("theta_index", range(3))
def test_stream_equals_torch_render_synth(chain, song, theta_index):
    """Quick exactness on synthesised music: every block configuration, one Θ per case."""
    theta = checks.random_thetas(3, seed=11)[theta_index]
    x = song[:, :3 * 44100]
    ref = torch_render(x, theta)
    chain.set_params(theta)
    for config in ("7", "32", "333", "4096", "random"):
        y = checks.stream(chain, x, config, seed=theta_index)
        assert y.shape == ref.shape
        assert np.abs(y - ref).max() <= TOL, (theta_index, config, float(np.abs(y - ref).max()))


def test_tiny_and_empty_blocks(chain, song):
    """Blocks of 1 sample and of 0 samples: no frame completes, the state carries everything."""
    x = song[:, :6000]
    theta = checks.random_thetas(1, seed=5)[0]
    chain.set_params(theta)
    chain.reset()
    outs = []
    xx = np.concatenate([x, np.zeros((2, CHAIN_LATENCY), np.float32)], axis=1)
    for i in range(xx.shape[1]):
        outs.append(chain.process(xx[:, i:i + 1]))
        if i % 1000 == 0:
            assert chain.process(np.zeros((2, 0), np.float32)).shape == (2, 0)
    y = np.concatenate(outs, axis=1)
    assert np.all(y[:, :CHAIN_LATENCY] == 0.0)  # the first 128 samples of a stream are silence
    ref = torch_render(x, theta)
    assert np.abs(y[:, CHAIN_LATENCY:] - ref).max() <= TOL


def test_switches_and_full_ranges(chain, song):
    """Θ drawn over the schema's full ranges, random switches (including all off: the input)."""
    rng = np.random.default_rng(4)
    x = song[:, :4 * 44100]
    for k in range(4):
        values = {s.key: s.from_normalized(u) for s, u in zip(P.PARAMS, rng.random(P.NUM_PARAMS))}
        switches = {m: bool(rng.random() < 0.6) for m in P.MODULES} if k else {m: False for m in P.MODULES}
        theta = P.ChainParams(values, switches)
        chain.set_params(theta)
        y = checks.stream(chain, x, "1000")
        assert np.abs(y - torch_render(x, theta)).max() <= TOL
        if k == 0:
            np.testing.assert_array_equal(y, x)


def test_extreme_filters_in_one_call(chain, song):
    """20 Hz shelf at Q 0.1 and +20 dB, narrow boosts, lowest crossovers: the slowest poles the
    ranges allow, as one 4 s block and in 64-sample blocks."""
    x = song[:, :4 * 44100]
    theta = P.ChainParams.default().with_values(**{
        "eq.low_shelf_gain": 20.0, "eq.low_shelf_freq": 20.0, "eq.low_shelf_q": 0.1, "eq.band0_gain": 20.0,
        "eq.band0_freq": 80.0, "eq.band0_q": 5.0, "eq.band3_gain": 20.0, "eq.band3_q": 0.1,
        "eq.high_shelf_gain": -20.0, "eq.high_shelf_q": 0.1, "multiband.low_crossover": 20.0,
        "multiband.high_crossover": 2000.0, "multiband.low_comp_ratio": 4.0, "multiband.low_comp_threshold": -30.0,
        "limiter.threshold": -6.0})
    chain.set_params(theta)
    ref = torch_render(x, theta)
    for config in (str(x.shape[1] + CHAIN_LATENCY), "64"):
        assert np.abs(checks.stream(chain, x, config) - ref).max() <= TOL


def test_cached_coefficients_equal_fresh_design(chain, song):
    """The graph redesigns its filters only when the parameters change; reusing the cache must
    give exactly what a fresh design gives."""
    from export.onnx_chain import STATE_F64

    x = song[:, :44100]
    chain.set_params(checks.random_thetas(1, seed=9)[0])
    cached = checks.stream(chain, x, "512")
    chain.reset()
    outs = []
    for i in range(0, x.shape[1], 512):
        chain._state[:STATE_F64[0].size] = 0.0  # forget the cache key: redesign on every call
        outs.append(chain.process(x[:, i:i + 512]))
    np.testing.assert_array_equal(np.concatenate(outs, 1)[:, CHAIN_LATENCY:], cached[:, :x.shape[1] - CHAIN_LATENCY])


def test_params_take_effect_at_the_next_block(chain, song):
    """A change applies to every frame a module processes from the next call on. With only the
    make-up gain on, the second block's output is the input delayed by 128 samples; its first
    96 samples had passed the gain stage during the first call (the output FIFO's 64 and the
    limiter's one-frame delay), the rest get the new gain."""
    x = song[:, :8192]
    only_gain = {m: m == "gain" for m in P.MODULES}
    chain.set_params(P.ChainParams(P.defaults(), only_gain))
    chain.reset()
    a = chain.process(x[:, :4096])
    chain.set_params(P.ChainParams(P.defaults(), only_gain).with_values(**{"gain.gain": 12.0}))
    b = chain.process(x[:, 4096:])
    np.testing.assert_array_equal(a[:, CHAIN_LATENCY:], x[:, :4096 - CHAIN_LATENCY])
    delayed = x[:, 4096 - CHAIN_LATENCY: 8192 - CHAIN_LATENCY]
    np.testing.assert_array_equal(b[:, :96], delayed[:, :96])
    np.testing.assert_allclose(b[:, 96:], delayed[:, 96:] * 10 ** (12.0 / 20), rtol=1e-6, atol=1e-7)


def test_bad_input_and_numerical_failure_are_named(chain, song):
    with pytest.raises(AudioError, match="NaN"):
        x = song[:, :1000].copy()
        x[0, 10] = np.nan
        chain.process(x)
    with pytest.raises(AudioError, match="shape"):
        chain.process(song[0, :100])
    with pytest.raises(ValueError):
        chain.set_state(np.zeros(3))
    broken = OnnxStreamingChain()
    broken._feed_params[P.PARAM_INDEX["gain.gain"]] = np.nan  # bypasses ChainParams validation on purpose
    with pytest.raises(ChainError, match="'gain'"):
        broken.process(song[:, :2048])


def test_state_snapshot_round_trip(chain, song):
    chain.set_params(checks.random_thetas(1, seed=2)[0])
    chain.reset()
    chain.process(song[:, :3000])
    s = chain.get_state()
    a = chain.process(song[:, 3000:5000])
    chain.set_state(s)
    np.testing.assert_array_equal(chain.process(song[:, 3000:5000]), a)


@needs_real_music
@pytest.mark.real_music
@pytest.mark.slow
def test_exactness_on_real_music():
    """The issue's check: 30 s of real music, 20 random Θ, max |diff| <= 1e-4. Each Θ runs one
    block configuration (rotating through 32…4096 and random sizes); `refmaster export-check
    exactness` runs every configuration for every Θ."""
    files = checks.long_enough(REAL_SONGS, 30.0)
    songs = {f.name: checks.load_excerpt(f, 30.0) for f in files}
    rows = checks.exactness(songs, checks.random_thetas(20, seed=0), rotate=True)
    assert len(rows) == 20 and {r["blocks"] for r in rows} == set(checks.BLOCK_CONFIGS)
    worst = max(rows, key=lambda r: r["max_abs_diff"])
    assert worst["max_abs_diff"] <= TOL, worst
