"""The mastering chain as one streaming ONNX graph that reproduces the Torch render exactly.

Contract of the graph (opset 18, onnxruntime's CPU provider, standard operators only)
-----------------------------------------------------------------------------------
Inputs:

* ``audio``    float32 ``(2, N)``, any ``N`` (0 included): the next block of the stream;
* ``params``   float32 ``(46,)``: Θ in real units, schema order (:mod:`engine.params`); clamped to
  the schema's ranges inside the graph; defaults to the exported parameters;
* ``switches`` bool ``(6,)``: module on/off in :data:`engine.params.MODULES` order; defaults to the
  exported switches;
* ``sample_rate`` float64 ``(1,)``: the stream's rate in Hz, any in :data:`engine.params.CHAIN_RATES`
  (filters designed and time constants converted for it, inside the graph); defaults to the rate
  given at export (44.1 kHz unless said otherwise);
* ``state``    float64 ``(STATE_SIZE,)``: the state returned by the previous call; all zeros starts
  a fresh stream.

Outputs: ``out`` float32 ``(2, N)`` and ``next_state`` float64 ``(STATE_SIZE,)``.

``out`` is the offline render :func:`engine.dsp.chain.render_chain` delayed by
:data:`engine.dsp.chain.CHAIN_LATENCY` (128) samples: the first 128 samples of a stream are silence,
and feeding 128 zeros after the last block returns the render's last 128 samples. Parameters
and switches are read on every call, and the filter coefficients are designed inside the graph
from them (a hand edit needs no re-export). The model's metadata holds the schema (names, units,
ranges), the exported parameters, the state size and layout and the latency.

How it works (docs/export.md has the full story)
-------------------------------------------------
The graph runs frame-synchronously: it keeps the incomplete frame's samples (fewer than
``CONTROL_HOP`` = 32) in the state and processes every frame the block completes, then emits
``N`` samples from an output FIFO. Each dynamics module delays by one frame (it needs the next
frame's gain for its lookahead ramp); the FIFO holds the remaining ``CHAIN_LATENCY − 2·32``
samples, which is what lets any block size, even 1 sample, come out on time.

* Biquad cascades (EQ: 6 sections; crossovers: two Linkwitz-Riley pairs) are one state-space
  system each, designed in float64 from the parameters (RBJ formulas, as dasp-pytorch), filtered
  in 32-sample chunks: a Toeplitz product inside the chunk plus the carried state. The state
  recursion between chunks runs as an ONNX ``RNN`` (Affine activation), which only exists in
  float32; one step of iterative refinement in float64 (the residual of the float32 run, fed
  through a second ``RNN``) makes it exact to float64 rounding even for 20 Hz poles.
* The RMS averager is an Affine ``RNN`` at the frame rate, and torchcomp's attack/release
  recursion ``g' = g + rt·relu(f − g) − at·relu(g − f)`` is a Relu ``RNN`` taking two steps per
  frame (the second input row carries a large negative gate that zeroes the relus).
* Everything else (curves, tanh, mixes, gain, mid/side, lookahead ramps) is elementwise.
* Everything that depends only on the parameters (:data:`export.onnx_coefficients.COEF_ITEMS`,
  about 200 nodes to compute, designed in :mod:`export.onnx_coefficients`) is cached in the state with the parameters it belongs to; an ``If`` recomputes it
  only when the parameters change.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np
import onnx

from engine import params as P
from engine.dsp.chain import CHAIN_LATENCY
from engine.dsp.dynamics import PEAK_FLOOR, POWER_FLOOR
from engine.params import CHAIN_RATES, SAMPLE_RATE
from engine.rates import check_rate
from export.onnx_builder import GraphBuilder, Value
from export.onnx_coefficients import (COEF_SIZE, EQ_ORDER, F32, F64, HOP, N_BANDS, XO_ORDER, _coefficients,
                                      _pack_coefficients, _unpack_coefficients)

OPSET = 18
#: Each dynamics module delays by one frame inside the graph; the output FIFO holds the rest.
PIPELINE_DELAY = 2 * HOP
FIFO_LEN = CHAIN_LATENCY - PIPELINE_DELAY
# The FIFO must cover the up to HOP - 1 samples that wait in an incomplete frame.
assert FIFO_LEN >= HOP - 1, (CHAIN_LATENCY, HOP)

#: Steps of iterative refinement of the filters' float32 state recursion (see :func:`_filter`).
REFINEMENTS = 2

#: Gate that turns the relus of the ballistics RNN off on the second step of each frame.
_GATE_OFF = -1e30
INT_MAX = np.iinfo(np.int64).max


# ------------------------------------------------------------------------------ state layout

@dataclass(frozen=True)
class StateField:
    name: str
    shape: Tuple[int, ...]
    doc: str

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))


STATE_F32: Tuple[StateField, ...] = (
    StateField("pending_count", (1,), "samples waiting in the incomplete frame"),
    StateField("pending", (2, HOP), "the incomplete frame's samples, left-aligned"),
    StateField("fifo", (2, FIFO_LEN), f"processed samples not yet emitted ({FIFO_LEN} - pending_count), left-aligned"),
    StateField("mb_rms", (N_BANDS,), "RMS averager per band"),
    StateField("mb_gain_drop", (N_BANDS,), "1 - smoothed gain per band"),
    StateField("mb_ramp_drop", (N_BANDS,), "1 - ramp start of the delayed frame per band"),
    StateField("mb_frame", (1, 3, 2, HOP), "last frame of the dry input, low band, high band"),
    StateField("lim_env", (1,), "limiter peak envelope"),
    StateField("lim_gain_drop", (1,), "1 - limiter smoothed gain"),
    StateField("lim_ramp_drop", (1,), "1 - limiter ramp start of the delayed frame"),
    StateField("lim_frame", (1, 2, HOP), "last frame of the limiter input"),
)

#: Float64 part (coefficient cache, filter states), then values that are float32 by nature.
STATE_F64: Tuple[StateField, ...] = (
    StateField("coef_params", (P.NUM_PARAMS + 1,), "the (clamped) parameters and the sample rate the cached "
                                                   "coefficients belong to"),
    StateField("coef_cache", (COEF_SIZE,), "parameter-derived coefficients (see COEF_ITEMS)"),
    StateField("eq", (1, 2, EQ_ORDER), "EQ state-space state per channel"),
    StateField("xo", (1, 2, XO_ORDER), "crossover state-space state per channel"),
)
STATE_SIZE = sum(f.size for f in STATE_F64 + STATE_F32)


def state_layout() -> List[dict]:
    """The state vector's fields in order, with offsets (also stored in the model metadata)."""
    out, off = [], 0
    for f in STATE_F64 + STATE_F32:
        out.append({"name": f.name, "offset": off, "shape": list(f.shape), "doc": f.doc})
        off += f.size
    return out


def initial_state() -> np.ndarray:
    """A fresh stream's state: all zeros (gains are stored as 1 - g)."""
    return np.zeros(STATE_SIZE, dtype=np.float64)


# ------------------------------------------------------------------------------ filtering

def _affine_rnn(g: GraphBuilder, x: Value, w: Value, r: Value, h0: Optional[Value], hidden: int) -> Value:
    """ONNX ``RNN`` with identity activation: ``h_t = W x_t + R h_(t-1)``; returns ``(T, batch, hidden)``.

    onnxruntime's defaults for Affine's alpha and beta are not 1 and 0, so they are set here.
    """
    y = g.op("RNN", x, w, r, None, None, h0, hidden_size=hidden, activations=["Affine"],
             activation_alpha=[1.0], activation_beta=[0.0], hint="rnn_affine")
    return g.op("Squeeze", y, g.i64(1))


def _filter(g: GraphBuilder, x: Value, x64: Value, s0: Value, mats: Dict[str, Value]) -> Tuple[Value, Value]:
    """Filter frames ``x`` ``(F, 2, HOP)`` (float32, and its float64 cast ``x64``) from state ``s0``
    ``(1, 2, n)`` float64. Returns ``(y (F, 2, p*HOP) float64, next state (1, 2, n) float64)``.

    The chunk-rate recursion ``s_k = M s_(k-1) + U_k`` runs in a float32 RNN; its residual in
    float64, ``r_k = s_k - M s_(k-1) - U_k``, drives a second RNN that yields the float32 run's
    error, which is subtracted (iterative refinement, :data:`REFINEMENTS` steps: each leaves the
    float32 error times the recursion's condition, which grows with poles near the unit circle —
    a resonant 20 Hz shelf at 192 kHz needed the second step to stay below 1e-5).
    """
    n = mats["n"]
    u = g.op("MatMul", x64, mats["ctrl64"], hint="u")                            # (F, 2, n)
    s = g.cast(_affine_rnn(g, x, mats["w32"], mats["m32"], g.cast(s0, F32), n), F64)
    eye = g.const(np.eye(n, dtype=F32).reshape(1, n, n))
    for _ in range(REFINEMENTS):
        prev = g.slice(g.concat([s0, s], axis=0), 0, -1, axis=0)
        resid = g.op("Sub", s, g.op("Add", g.op("MatMul", prev, mats["mt64"]), u), hint="residual")
        err = _affine_rnn(g, g.cast(resid, F32), eye, mats["m32"], None, n)
        s = g.op("Sub", s, g.cast(err, F64), hint="states")
    seq = g.concat([s0, s], axis=0)
    prev = g.slice(seq, 0, -1, axis=0)
    s_next = g.slice(seq, -1, INT_MAX, axis=0)
    y = g.op("Add", g.op("MatMul", prev, mats["o64"]), g.op("MatMul", x64, mats["t64"]), hint="y")
    return y, s_next


# ------------------------------------------------------------------------------ dynamics

def _ballistics(g: GraphBuilder, target: Value, g0: Value, r: Value, k: int) -> Value:
    """torchcomp's attack/release recursion for ``k`` independent tracks: ``target`` ``(F, k)``
    from the carried value ``g0`` ``(k,)``, recurrence matrix ``r`` from
    :func:`export.onnx_coefficients._ballistics_r`.

    ``g' = g + rising·relu(f − g) − falling·relu(g − f)`` (exactly torchcomp's
    ``g' = (1 − c) g + c f`` with ``c`` chosen by the sign of ``f − g``) as a Relu RNN with hidden
    ``[g (k), p (k), q (k)]`` and two steps per frame: step one computes ``p = relu(f − g)``,
    ``q = relu(g − f)`` and keeps g (p and q are zero then); step two updates g while a large
    negative gate input zeroes p and q. Returns ``(F, k)``.
    """
    eye = np.eye(k, dtype=F32)
    # Input per step: [f (k), gate]; step one [f, 0], step two [0, GATE_OFF].
    w = np.zeros((3 * k, k + 1), F32)
    w[k:2 * k, :k], w[k:2 * k, k] = eye, 1.0
    w[2 * k:, :k], w[2 * k:, k] = -eye, 1.0
    steps = g.op("Add", g.op("Pad", target, g.i64(0, 0, 0, k + 2)),
                 g.const(np.array([0.0] * (2 * k + 1) + [_GATE_OFF], F32)))         # (F, 2k+2): [f,0 | 0,gate]
    steps = g.reshape(steps, [-1, 1, k + 1])                                         # (2F, 1, k+1)
    h0 = g.reshape(g.op("Pad", g0, g.i64(0, 2 * k)), [1, 1, 3 * k])
    y = g.op("RNN", steps, g.const(w.reshape(1, 3 * k, k + 1)), r, None, None, h0, hidden_size=3 * k,
             activations=["Relu"], hint="rnn_ballistics")                           # (2F, 1, 1, 3k)
    y = g.reshape(y, [-1, 2 * 3 * k])                                                # (F, 6k): step one | step two
    return g.slice(y, 3 * k, 4 * k, axis=1)


def _last_or(g: GraphBuilder, first: Value, seq: Value) -> Tuple[Value, Value]:
    """``cat = [first; seq]`` along axis 0 -> ``(cat[:-1], cat[-1:])``: the sequence delayed by one
    step and the new carry (``first`` again when ``seq`` is empty)."""
    cat = g.concat([first, seq], axis=0)
    return g.slice(cat, 0, -1, axis=0), g.slice(cat, -1, INT_MAX, axis=0)


def _ramp_gain(g: GraphBuilder, gains: Value, g_prev: Value, a_prev: Value, k: int):
    """Lookahead ramp (:func:`engine.dsp.dynamics.lookahead_gain`) for the frames delayed by one.

    ``gains`` ``(F, k)`` are the frame gains of this call, ``g_prev``/``a_prev`` ``(1, k)`` the
    last gain and the last ramp end of the previous call. Returns the per-sample gain of the
    delayed frames ``(F, k, HOP)`` and the new ``(g_prev, a_prev)``.
    """
    g_seq_prev, g_next = _last_or(g, g_prev, gains)                 # g[m-1], g[m]
    a = g.op("Min", g_seq_prev, gains)                               # a[m-1] = min(g[m-1], g[m])
    start, a_next = _last_or(g, a_prev, a)                           # a[m-2], a[m-1]
    ramp = g.const((np.arange(1, HOP + 1, dtype=F32) / F32(HOP)).astype(F32))
    start3 = g.op("Unsqueeze", start, g.i64(2))
    step = g.op("Unsqueeze", g.op("Sub", a, start), g.i64(2))
    return g.op("Add", start3, g.op("Mul", step, ramp), hint="ramp_gain"), g_next, a_next


# ------------------------------------------------------------------------------ the graph

def build_graph(defaults: Optional[P.ChainParams] = None, sample_rate: int = SAMPLE_RATE) -> GraphBuilder:
    """Build the streaming chain graph (see the module docstring for its inputs and outputs);
    ``sample_rate`` is the default of its ``sample_rate`` input."""
    defaults = defaults or P.ChainParams.default()
    sample_rate = check_rate(sample_rate)
    g = GraphBuilder("refmaster_chain")
    audio = g.input("audio", F32, [2, "N"])
    params_in = g.input("params", F32, [P.NUM_PARAMS])
    switches = g.input("switches", np.bool_, [len(P.MODULES)])
    rate_in = g.input("sample_rate", F64, [1])
    state = g.input("state", F64, [STATE_SIZE])
    # Inputs backed by initializers of the same name: the exported values are the defaults.
    p_def, s_def = defaults.to_tensors()
    g.initializers.append(onnx.numpy_helper.from_array(p_def.numpy().astype(F32), "params"))
    g.initializers.append(onnx.numpy_helper.from_array(s_def.numpy().astype(np.bool_), "switches"))
    g.initializers.append(onnx.numpy_helper.from_array(np.array([sample_rate], F64), "sample_rate"))

    def switch(module: str) -> Value:
        return g.op("Gather", switches, g.const(np.int64(P.MODULES.index(module))), axis=0, hint=f"on_{module}")

    lo = np.array([s.min for s in P.PARAMS], F32)
    hi = np.array([s.max for s in P.PARAMS], F32)
    prm = g.op("Min", g.op("Max", params_in, g.const(lo)), g.const(hi), hint="params_clamped")
    # the rate, clamped to CHAIN_RATES (a caller that passes another gets the nearest, never NaN)
    rate = g.op("Min", g.op("Max", rate_in, g.const(np.array([CHAIN_RATES[0]], F64))),
                g.const(np.array([CHAIN_RATES[1]], F64)), hint="sample_rate_clamped")

    # ---- state
    n64 = sum(f.size for f in STATE_F64)
    st64, st_rest = g.op("Split", state, g.i64(n64, STATE_SIZE - n64), axis=0, n_out=2)
    parts64 = g.op("Split", st64, g.i64(*[f.size for f in STATE_F64]), axis=0, n_out=len(STATE_F64))
    parts32 = g.op("Split", g.cast(st_rest, F32), g.i64(*[f.size for f in STATE_F32]), axis=0, n_out=len(STATE_F32))
    s = {f.name: (g.reshape(v, list(f.shape)) if len(f.shape) > 1 else v)
         for f, v in zip(STATE_F64 + STATE_F32, list(parts64) + list(parts32))}

    # ---- coefficients: designed (float64) when the parameters differ from the cached ones
    with g.scope("coefficients"):
        prm64 = g.cast(prm, F64)
        key = g.concat([prm64, rate], axis=0)   # what the cache belongs to
        unchanged = g.op("Equal", g.op("ReduceMax", g.op("Abs", g.op("Sub", key, s["coef_params"])), keepdims=0),
                         g.const(F64(0.0)))
        design = GraphBuilder("design")
        with design.scope("design"):
            design.output(_pack_coefficients(design, _coefficients(design, prm, rate)), "designed", F64, [COEF_SIZE])
        reuse = GraphBuilder("reuse")
        with reuse.scope("reuse"):
            reuse.output(s["coef_cache"], "reused", F64, [COEF_SIZE])
        coef_vec = g.op("If", unchanged, then_branch=reuse.subgraph(), else_branch=design.subgraph(), hint="coef")
        coef = _unpack_coefficients(g, coef_vec)
    eq_mats = {k[3:]: v for k, v in coef.items() if k.startswith("eq.")}
    eq_mats.update(n=EQ_ORDER, p=1)
    xo_mats = {k[3:]: v for k, v in coef.items() if k.startswith("xo.")}
    xo_mats.update(n=XO_ORDER, p=2)
    one = g.const(F32(1.0))

    # ---- frame the input: pending samples + block -> complete frames + new pending
    with g.scope("framing"):
        pend_n = g.cast(s["pending_count"], np.int64)                                   # (1,)
        x_all = g.concat([g.op("Slice", s["pending"], g.i64(0), pend_n, g.i64(1)), audio], axis=1)  # (2, P+N)
        total = g.op("Shape", x_all, start=1, end=2)                                  # (1,)
        n_frames = g.op("Div", total, g.i64(HOP))
        framed_len = g.op("Mul", n_frames, g.i64(HOP))
        framed = g.op("Reshape", g.op("Slice", x_all, g.i64(0), framed_len, g.i64(1)),
                      g.concat([g.i64(2), n_frames, g.i64(HOP)], axis=0))                # (2, F, HOP)
        frames = g.op("Transpose", framed, perm=[1, 0, 2])                             # (F, 2, HOP)
        # Cast before transposing: onnxruntime 1.32 crashes optimising Transpose -> Cast ->
        # MatMul when the MatMul's other input comes out of an If (NchwcTransformer).
        frames64 = g.op("Transpose", g.cast(framed, F64), perm=[1, 0, 2])
        rest = g.op("Slice", x_all, framed_len, total, g.i64(1))                        # (2, P')
        new_pending = g.slice(g.op("Pad", rest, g.i64(0, 0, 0, HOP)), 0, HOP, axis=1)
        new_count = g.cast(g.op("Sub", total, framed_len), F32)

    # ---- EQ
    with g.scope("eq"):
        y64, eq_next = _filter(g, frames, frames64, s["eq"], eq_mats)
        x_eq = g.op("Where", switch("eq"), g.cast(y64, F32), frames)
    mod_out = {"eq": x_eq}

    # ---- parallel saturation: (1 - mix) x + mix tanh(drive x)
    with g.scope("distortion"):
        mix = coef["distortion.mix"]
        sat = g.op("Add", g.op("Mul", g.op("Sub", one, mix), x_eq),
                   g.op("Mul", mix, g.op("Tanh", g.op("Mul", coef["distortion.drive"], x_eq))))
        x_dist = g.op("Where", switch("distortion"), sat, x_eq)
    mod_out["distortion"] = x_dist

    # ---- 3-band compressor/expander (LR4 split, mid = x - low - high), one frame of delay
    with g.scope("multiband"):
        xo64, xo_next = _filter(g, x_dist, g.cast(x_dist, F64), s["xo"], xo_mats)
        low, high = g.op("Split", g.reshape(g.cast(xo64, F32), [-1, 2, 2, HOP]), axis=2, num_outputs=2, n_out=2)
        low = g.op("Transpose", low, perm=[0, 2, 1, 3])                                # (F, 1, 2, HOP)
        high = g.op("Transpose", high, perm=[0, 2, 1, 3])
        dry = g.op("Unsqueeze", x_dist, g.i64(1))
        mid = g.op("Sub", g.op("Sub", dry, low), high)
        bands = g.concat([low, mid, high], axis=1)                                      # (F, 3, 2, HOP)
        # RMS detector: mean power over the frame and both channels, then torchcomp's avg
        power = g.op("ReduceMean", g.op("Mul", bands, bands), g.i64(2, 3), keepdims=0)  # (F, 3)
        # torchcomp avg: y = c x - (c - 1) y_prev (c for the rate: export/onnx_coefficients.py)
        rms_seq = _affine_rnn(g, g.op("Unsqueeze", power, g.i64(1)), coef["multiband.rms_w"], coef["multiband.rms_r"],
                              g.reshape(s["mb_rms"], [1, 1, N_BANDS]), N_BANDS)
        rms_seq = g.reshape(rms_seq, [-1, N_BANDS])                                      # (F, 3)
        _, rms_next = _last_or(g, g.reshape(s["mb_rms"], [1, N_BANDS]), rms_seq)
        # static curve (engine.dsp.dynamics.compexp_curve): min(0, CS (CT - L), ES (ET - L)) dB
        level = g.op("Mul", g.op("Log", g.op("Add", rms_seq, g.const(F32(POWER_FLOOR)))),
                     g.const(F32(10.0 / math.log(10.0))))
        gdb = g.op("Min", g.op("Mul", coef["multiband.comp_slope"], g.op("Sub", coef["multiband.comp_threshold"], level)),
                   g.op("Mul", coef["multiband.exp_slope"], g.op("Sub", coef["multiband.exp_threshold"], level)))
        target = g.op("Pow", g.const(F32(10.0)), g.op("Div", g.op("Min", gdb, g.const(F32(0.0))), g.const(F32(20.0))))
        g_prev = g.op("Sub", one, s["mb_gain_drop"])                                     # (3,)
        gains = _ballistics(g, target, g_prev, coef["multiband.ballistics"], N_BANDS)    # (F, 3)
        ramp, g_next, a_next = _ramp_gain(g, gains, g.reshape(g_prev, [1, N_BANDS]),
                                          g.reshape(g.op("Sub", one, s["mb_ramp_drop"]), [1, N_BANDS]), N_BANDS)
        # the delayed frame: dry input, low and high bands of the previous frame
        delayed, mb_frame_next = _last_or(g, s["mb_frame"], g.concat([dry, low, high], axis=1))
        dry_d, low_d, high_d = g.op("Split", delayed, axis=1, num_outputs=3, n_out=3)   # (F, 1, 2, HOP)
        mid_d = g.op("Sub", g.op("Sub", dry_d, low_d), high_d)
        wet = g.op("ReduceSum", g.op("Mul", g.concat([low_d, mid_d, high_d], axis=1), g.op("Unsqueeze", ramp, g.i64(2))),
                   g.i64(1), keepdims=0)                                                 # (F, 2, HOP)
        dry_d = g.op("Squeeze", dry_d, g.i64(1))
        mb_mix = coef["multiband.mix"]
        mb = g.op("Add", g.op("Mul", g.op("Sub", one, mb_mix), dry_d), g.op("Mul", mb_mix, wet))
        x_mb = g.op("Where", switch("multiband"), mb, dry_d)
    mod_out["multiband"] = x_mb

    # ---- make-up gain
    with g.scope("gain"):
        x_gain = g.op("Where", switch("gain"), g.op("Mul", x_mb, coef["gain.linear"]), x_mb)
    mod_out["gain"] = x_gain

    # ---- stereo imager: mid x 2(1 - w), side x 2w, as (1-w)(L+R) ± w(L-R)
    with g.scope("imager"):
        w = coef["imager.width"]
        left, right = g.op("Split", x_gain, axis=1, num_outputs=2, n_out=2)            # (F, 1, HOP)
        sw = g.op("Mul", g.op("Sub", one, w), g.op("Add", left, right))
        dw = g.op("Mul", w, g.op("Sub", left, right))
        x_img = g.op("Where", switch("imager"), g.concat([g.op("Add", sw, dw), g.op("Sub", sw, dw)], axis=1), x_gain)
    mod_out["imager"] = x_img

    # ---- limiter: frame peak -> peak follower -> min(1, threshold/env) -> ballistics, one frame of delay
    with g.scope("limiter"):
        peak = g.reshape(g.op("ReduceMax", g.op("Abs", x_img), g.i64(1, 2), keepdims=1), [-1, 1])  # (F, 1)
        env = _ballistics(g, peak, s["lim_env"], coef["limiter.envelope"], 1)
        _, env_next = _last_or(g, g.reshape(s["lim_env"], [1, 1]), env)
        target = g.op("Min", g.op("Div", coef["limiter.threshold"], g.op("Max", env, g.const(F32(PEAK_FLOOR)))), one)
        lg_prev = g.op("Sub", one, s["lim_gain_drop"])
        lgains = _ballistics(g, target, lg_prev, coef["limiter.ballistics"], 1)         # (F, 1)
        lramp, lg_next, la_next = _ramp_gain(g, lgains, g.reshape(lg_prev, [1, 1]),
                                             g.reshape(g.op("Sub", one, s["lim_ramp_drop"]), [1, 1]), 1)
        delayed, lim_frame_next = _last_or(g, s["lim_frame"], x_img)                    # (F, 2, HOP)
        x_lim = g.op("Where", switch("limiter"), g.op("Mul", delayed, lramp), delayed)
    mod_out["limiter"] = x_lim

    # ---- emit N samples: the FIFO (FIFO_LEN - pending_count valid) followed by the processed frames
    with g.scope("emit"):
        processed = g.reshape(g.op("Transpose", x_lim, perm=[1, 0, 2]), [2, -1])        # (2, F*HOP)
        fifo_n = g.op("Sub", g.i64(FIFO_LEN), pend_n)
        queue = g.concat([g.op("Slice", s["fifo"], g.i64(0), fifo_n, g.i64(1)), processed], axis=1)
        n_out = g.op("Shape", audio, start=1, end=2)
        out = g.op("Slice", queue, g.i64(0), n_out, g.i64(1))
        fifo_next = g.slice(g.op("Pad", g.op("Slice", queue, n_out, g.i64(INT_MAX), g.i64(1)), g.i64(0, 0, 0, FIFO_LEN)),
                            0, FIFO_LEN, axis=1)

    # ---- pack the next state
    with g.scope("state"):
        nxt = {"coef_params": key, "coef_cache": coef_vec, "eq": eq_next, "xo": xo_next,
               "pending_count": new_count, "pending": new_pending, "fifo": fifo_next, "mb_rms": rms_next,
               "mb_gain_drop": g.op("Sub", one, g_next), "mb_ramp_drop": g.op("Sub", one, a_next),
               "mb_frame": mb_frame_next, "lim_env": env_next, "lim_gain_drop": g.op("Sub", one, lg_next),
               "lim_ramp_drop": g.op("Sub", one, la_next), "lim_frame": lim_frame_next}
        already_flat = ("coef_params", "coef_cache", "pending_count")
        flat = lambda f: nxt[f.name] if f.name in already_flat else g.reshape(nxt[f.name], [f.size])
        next_state = g.concat([g.concat([flat(f) for f in STATE_F64], axis=0),
                               g.cast(g.concat([flat(f) for f in STATE_F32], axis=0), F64)], axis=0)

    g.output(out, "out", F32, [2, "N"])
    g.output(next_state, "next_state", F64, [STATE_SIZE])
    g.module_outputs = mod_out  # for the diagnostic model (see build_model)
    return g


def metadata(defaults: P.ChainParams, sample_rate: int = SAMPLE_RATE) -> Dict[str, str]:
    """Model metadata: the schema (read from :mod:`engine.params`), the exported Θ and rate, the state."""
    schema = [s.to_dict(i) for i, s in enumerate(P.PARAMS)]
    return {
        "refmaster.format": FORMAT_TAG,
        "refmaster.schema": json.dumps(schema),
        "refmaster.modules": json.dumps(list(P.MODULES)),
        "refmaster.params": defaults.to_json(indent=None),
        "refmaster.sample_rate": str(sample_rate),
        "refmaster.sample_rates": f"{CHAIN_RATES[0]}-{CHAIN_RATES[1]}",
        "refmaster.latency": str(CHAIN_LATENCY),
        "refmaster.state_size": str(STATE_SIZE),
        "refmaster.state_layout": json.dumps(state_layout()),
    }


#: Written to the model metadata; a model without it is not ours.
FORMAT_TAG = "refmaster.onnx_chain/1"


def build_model(defaults: Optional[P.ChainParams] = None, diagnostic: bool = False,
                sample_rate: int = SAMPLE_RATE) -> onnx.ModelProto:
    """The streaming chain as an ONNX model, with ``defaults`` as the parameter inputs' defaults
    and ``sample_rate`` as the rate input's.

    ``diagnostic=True`` adds one output per module (``module.<name>``: its output frames) so a
    numerical failure can be traced to the module that caused it.
    """
    defaults = defaults or P.ChainParams.default()
    g = build_graph(defaults, sample_rate)
    if diagnostic:
        for name, value in g.module_outputs.items():
            g.output(value, f"module.{name}", F32, ["F", 2, HOP])
    model = g.model(OPSET, doc=__doc__.split("\n\n")[0], metadata=metadata(defaults, sample_rate))
    onnx.checker.check_model(model, full_check=True)
    return model
