"""The mastering chain as one streaming ONNX graph that reproduces the Torch render exactly.

Contract of the graph (opset 18, onnxruntime's CPU provider, standard operators only)
-----------------------------------------------------------------------------------
Inputs:

* ``audio``    float32 ``(2, N)``, any ``N`` (0 included): the next block of the stream, 44.1 kHz;
* ``params``   float32 ``(46,)``: Θ in real units, schema order (:mod:`engine.params`); clamped to
  the schema's ranges inside the graph; defaults to the exported parameters;
* ``switches`` bool ``(6,)``: module on/off in :data:`engine.params.MODULES` order; defaults to the
  exported switches;
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
* Everything that depends only on the parameters (:data:`COEF_ITEMS`, about 200 nodes to
  compute) is cached in the state with the parameters it belongs to; an ``If`` recomputes it
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
from engine.dsp.chain import CHAIN_LATENCY, EQ_BANDS, MB_BANDS, SAMPLE_RATE
from engine.dsp.dynamics import CONTROL_HOP, EXP_RATIO_FLOOR, PEAK_FLOOR, POWER_FLOOR, rms_coef
from engine.dsp.filters import BUTTERWORTH_Q

from export.onnx_builder import GraphBuilder, Value

OPSET = 18
HOP = CONTROL_HOP
#: Each dynamics module delays by one frame inside the graph; the output FIFO holds the rest.
PIPELINE_DELAY = 2 * HOP
FIFO_LEN = CHAIN_LATENCY - PIPELINE_DELAY
# The FIFO must cover the up to HOP - 1 samples that wait in an incomplete frame.
assert FIFO_LEN >= HOP - 1, (CHAIN_LATENCY, HOP)

#: torchcomp's ``ms2coef(ms, sr) = 1 - exp(-TORCHCOMP_MS_SCALE / ms / sr)`` (a 10-90 % rise
#: time in ms); tests check the graph's coefficients against :func:`engine.dsp.dynamics.time_coef`.
TORCHCOMP_MS_SCALE = 2200.0
#: Gate that turns the relus of the ballistics RNN off on the second step of each frame.
_GATE_OFF = -1e30
#: Orders of the state-space systems: EQ (6 biquads), crossovers (2 x 2 biquads).
EQ_ORDER = 2 * len(EQ_BANDS)
XO_ORDER = 2 * 2 * 2  # low-pass and high-pass, each two biquads of order 2
N_BANDS = len(MB_BANDS)

F32, F64 = np.float32, np.float64
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


# ------------------------------------------------------------------------------ constants

def _rbj_term_matrix(kind: str) -> np.ndarray:
    """``(11, 6)``: RBJ coefficients ``[b0, b1, b2, a0, a1, a2]`` as linear combinations of the
    terms ``[1, A, A², c, A c, A² c, α, α√A, α√A A, α A, α/A]`` (c = cos w0), as in
    :func:`dasp_pytorch.signal.biquad` with its products multiplied out."""
    t = {name: i for i, name in enumerate(["1", "A", "A2", "c", "Ac", "A2c", "al", "alsA", "alsAA", "alA", "al_A"])}
    rows = {
        "high_shelf": [{"A": 1, "A2": 1, "A2c": 1, "Ac": -1, "alsAA": 2}, {"A2": -2, "A": 2, "A2c": -2, "Ac": -2},
                       {"A": 1, "A2": 1, "A2c": 1, "Ac": -1, "alsAA": -2}, {"A": 1, "1": 1, "Ac": -1, "c": 1, "alsA": 2},
                       {"A": 2, "1": -2, "Ac": -2, "c": -2}, {"A": 1, "1": 1, "Ac": -1, "c": 1, "alsA": -2}],
        "low_shelf": [{"A2": 1, "A": 1, "A2c": -1, "Ac": 1, "alsAA": 2}, {"A2": 2, "A": -2, "A2c": -2, "Ac": -2},
                      {"A2": 1, "A": 1, "A2c": -1, "Ac": 1, "alsAA": -2}, {"A": 1, "1": 1, "Ac": 1, "c": -1, "alsA": 2},
                      {"A": -2, "1": 2, "Ac": -2, "c": -2}, {"A": 1, "1": 1, "Ac": 1, "c": -1, "alsA": -2}],
        "peaking": [{"1": 1, "alA": 1}, {"c": -2}, {"1": 1, "alA": -1}, {"1": 1, "al_A": 1}, {"c": -2},
                    {"1": 1, "al_A": -1}],
        "low_pass": [{"1": 0.5, "c": -0.5}, {"1": 1, "c": -1}, {"1": 0.5, "c": -0.5}, {"1": 1, "al": 1}, {"c": -2},
                     {"1": 1, "al": -1}],
        "high_pass": [{"1": 0.5, "c": 0.5}, {"1": -1, "c": -1}, {"1": 0.5, "c": 0.5}, {"1": 1, "al": 1}, {"c": -2},
                      {"1": 1, "al": -1}],
    }[kind]
    k = np.zeros((len(t), 6))
    for col, combo in enumerate(rows):
        for name, w in combo.items():
            k[t[name], col] = w
    return k


#: The 8 distinct biquads designed per call: the six EQ sections, then the crossovers'
#: Butterworth low-pass and high-pass (each used twice: LR4 = Butterworth squared).
_SECTION_KINDS = [kind for _, kind in EQ_BANDS] + ["low_pass", "high_pass"]


def _section_param_index() -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices into ``params ++ [0 dB, Butterworth Q]`` of each section's gain, frequency and Q."""
    zero_db, bw_q = P.NUM_PARAMS, P.NUM_PARAMS + 1
    gain = [P.PARAM_INDEX[f"eq.{b}_gain"] for b, _ in EQ_BANDS] + [zero_db, zero_db]
    freq = [P.PARAM_INDEX[f"eq.{b}_freq"] for b, _ in EQ_BANDS] + [P.PARAM_INDEX["multiband.low_crossover"],
                                                                    P.PARAM_INDEX["multiband.high_crossover"]]
    q = [P.PARAM_INDEX[f"eq.{b}_q"] for b, _ in EQ_BANDS] + [bw_q, bw_q]
    return tuple(np.array(v, dtype=np.int64).reshape(-1, 1) for v in (gain, freq, q))


def _cascade_sum_matrix(S: int) -> Tuple[np.ndarray, np.ndarray]:
    """Sums of log b0 that give the products of a series cascade (see :func:`_df2t_cascade`).

    Columns: ``S*S`` off-diagonal products ``prod_{j<k<i} b0_k`` (index ``i*S + j``, valid for
    ``i > j``), ``S`` input scales ``prod_{k<i} b0_k``, ``S`` output scales ``prod_{k>j} b0_k``,
    one feed-through ``prod_k b0_k``. Returns ``(matrix (S, K), validity mask (K,))``.
    """
    cols, mask = [], []
    for i in range(S):
        for j in range(S):
            cols.append([1.0 if j < k < i else 0.0 for k in range(S)])
            mask.append(1.0 if i > j else 0.0)
    for i in range(S):
        cols.append([1.0 if k < i else 0.0 for k in range(S)]); mask.append(1.0)
    for j in range(S):
        cols.append([1.0 if k > j else 0.0 for k in range(S)]); mask.append(1.0)
    cols.append([1.0] * S); mask.append(1.0)
    return np.array(cols, dtype=F64).T, np.array(mask, dtype=F64)


# ------------------------------------------------------------------------------ filter design (float64)

def _design_sections(g: GraphBuilder, p64: Value) -> Value:
    """``(8, 6)`` float64 normalised sections ``[b0, b1, b2, 1, a1, a2]`` from the parameters."""
    ext = g.concat([p64, g.const(np.array([0.0, float(np.float32(BUTTERWORTH_Q))], dtype=F64))], axis=0)
    gi, fi, qi = _section_param_index()
    gain = g.op("Gather", ext, g.const(gi), axis=0, hint="gain_db")   # (8, 1)
    freq = g.op("Gather", ext, g.const(fi), axis=0, hint="freq_hz")
    q = g.op("Gather", ext, g.const(qi), axis=0, hint="q")
    A = g.op("Pow", g.const(F64(10.0)), g.op("Div", gain, g.const(F64(40.0))), hint="A")
    w0 = g.op("Mul", g.const(F64(2 * math.pi)), g.op("Div", freq, g.const(F64(SAMPLE_RATE))), hint="w0")
    c = g.op("Cos", w0, hint="cos_w0")
    alpha = g.op("Div", g.op("Sin", w0), g.op("Mul", g.const(F64(2.0)), q), hint="alpha")
    sqrt_a = g.op("Sqrt", A)
    A2 = g.op("Mul", A, A)
    al_sa = g.op("Mul", alpha, sqrt_a)
    terms = [g.op("Div", A, A), A, A2, c, g.op("Mul", A, c), g.op("Mul", A2, c), alpha, al_sa,
             g.op("Mul", al_sa, A), g.op("Mul", alpha, A), g.op("Div", alpha, A)]
    t = g.reshape(g.concat(terms, axis=1), [len(_SECTION_KINDS), 1, 11])            # (8, 1, 11)
    kmat = np.stack([_rbj_term_matrix(k) for k in _SECTION_KINDS])               # (8, 11, 6)
    coefs = g.reshape(g.op("MatMul", t, g.const(kmat)), [len(_SECTION_KINDS), 6])  # (8, 6)
    a0 = g.slice(coefs, 3, 4, axis=1)
    return g.op("Div", coefs, a0, hint="sos")


def _df2t_cascade(g: GraphBuilder, sos: Value, batch: int, S: int):
    """State-space form of ``batch`` series cascades of ``S`` biquads (transposed direct form II).

    Section i: ``A_i = [[-a1, 1], [-a2, 0]]``, ``B_i = [b1 - a1 b0, b2 - a2 b0]``, ``C_i = [1, 0]``,
    ``D_i = b0``. In series the input of section i is ``C_{i-1} s_{i-1} + b0_{i-1} x_{i-1}``, so
    the cascade's matrices hold products of b0 over ranges of sections; b0 > 0 for every RBJ
    design we use, so those products are sums of log b0 (one matrix product).

    Args: ``sos`` ``(batch, S, 6)`` float64. Returns ``A (batch, 2S, 2S)``, ``B (batch, 2S, 1)``,
    ``C (batch, 1, 2S)``, ``D (batch, 1, 1)``.
    """
    b0, b1, b2, _, a1, a2 = g.op("Split", sos, axis=2, num_outputs=6, n_out=6, hint="coef")  # (batch, S, 1)
    ones = g.const(np.ones((batch, S, 1), F64))
    zeros = g.const(np.zeros((batch, S, 1), F64))
    a_blk = g.reshape(g.concat([g.op("Neg", a1), ones, g.op("Neg", a2), zeros], axis=2), [batch, S, 2, 1, 2])
    b_blk = g.concat([g.op("Sub", b1, g.op("Mul", a1, b0)), g.op("Sub", b2, g.op("Mul", a2, b0))], axis=2)  # (batch,S,2)
    msum, mask = _cascade_sum_matrix(S)
    prods = g.op("Mul", g.op("Exp", g.op("MatMul", g.reshape(g.op("Log", b0), [batch, S]), g.const(msum))),
                 g.const(mask))                                                     # (batch, K)
    off, bsc, csc, dff = g.op("Split", prods, g.i64(S * S, S, S, 1), axis=1, n_out=4)
    e0 = g.const(np.array([1.0, 0.0], F64))
    a_diag = g.op("Mul", a_blk, g.const(np.eye(S).reshape(S, 1, S, 1)))          # (batch, S, 2, S, 2)
    a_off = g.op("Mul", g.op("Mul", g.reshape(b_blk, [batch, S, 2, 1, 1]), g.reshape(off, [batch, S, 1, S, 1])), e0)
    A = g.reshape(g.op("Add", a_diag, a_off), [batch, 2 * S, 2 * S])
    B = g.reshape(g.op("Mul", b_blk, g.reshape(bsc, [batch, S, 1])), [batch, 2 * S, 1])
    C = g.reshape(g.op("Mul", g.reshape(csc, [batch, S, 1]), e0), [batch, 1, 2 * S])
    D = g.reshape(dff, [batch, 1, 1])
    return A, B, C, D


def _chunk_matrices(g: GraphBuilder, A: Value, B: Value, C: Value, D: Value, n: int, p: int) -> Dict[str, Value]:
    """Matrices that filter one ``HOP``-sample chunk of a system ``(A (n,n), B (n,1), C (p,n), D (p,1))``.

    With ``s`` the state at the chunk's start and ``x`` its samples:
    ``y[o, i] = (C A^i s)_o + sum_{j<=i} h_o[i-j] x[j]`` and ``s' = A^HOP s + sum_j A^(HOP-1-j) B x[j]``.
    Powers ``A^0 … A^(HOP-1)`` come from doubling (log2 HOP matrix products, float64).
    """
    steps = int(math.log2(HOP))
    assert 1 << steps == HOP
    powers = g.const(np.eye(n, dtype=F64).reshape(1, n, n))
    a_pow = A
    for _ in range(steps):
        powers = g.concat([powers, g.op("MatMul", powers, a_pow)], axis=0)
        a_pow = g.op("MatMul", a_pow, a_pow)
    # powers: (HOP, n, n) = A^0..A^(HOP-1); a_pow = A^HOP
    obs = g.op("MatMul", C, powers)                                              # (HOP, p, n): C A^i
    h_rest = g.reshape(g.op("MatMul", g.slice(obs, 0, HOP - 1, axis=0), B), [HOP - 1, p])  # C A^(m-1) B
    h = g.op("Transpose", g.concat([g.reshape(D, [1, p]), h_rest], axis=0), perm=[1, 0])    # (p, HOP)
    h_ext = g.concat([h, g.const(np.zeros((p, 1), F64))], axis=1)                 # (p, HOP+1)
    ii, jj = np.meshgrid(np.arange(HOP), np.arange(HOP), indexing="ij")
    toeplitz = g.op("Gather", h_ext, g.const(np.where(ii >= jj, ii - jj, HOP).astype(np.int64)), axis=1)  # (p, i, j)
    t_cat = g.reshape(g.op("Transpose", toeplitz, perm=[2, 0, 1]), [HOP, p * HOP])  # [j, o*HOP + i]
    o_cat = g.reshape(g.op("Transpose", obs, perm=[2, 1, 0]), [n, p * HOP])          # [m, o*HOP + i]
    pb = g.reshape(g.op("MatMul", powers, B), [HOP, n])                           # row i: A^i B
    ctrl = g.op("Gather", pb, g.const(np.arange(HOP - 1, -1, -1, dtype=np.int64)), axis=0)  # row j: A^(HOP-1-j) B
    return {
        "ctrl64": ctrl,                                                             # (HOP, n)
        "w32": g.cast(g.reshape(g.op("Transpose", ctrl, perm=[1, 0]), [1, n, HOP]), F32),
        "m32": g.cast(g.reshape(a_pow, [1, n, n]), F32),
        "mt64": g.op("Transpose", a_pow, perm=[1, 0]),
        "o64": o_cat, "t64": t_cat, "n": n, "p": p,
    }


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
    error, which is subtracted (one step of iterative refinement).
    """
    n = mats["n"]
    u = g.op("MatMul", x64, mats["ctrl64"], hint="u")                            # (F, 2, n)
    s1 = g.cast(_affine_rnn(g, x, mats["w32"], mats["m32"], g.cast(s0, F32), n), F64)
    prev1 = g.slice(g.concat([s0, s1], axis=0), 0, -1, axis=0)
    resid = g.op("Sub", s1, g.op("Add", g.op("MatMul", prev1, mats["mt64"]), u), hint="residual")
    err = _affine_rnn(g, g.cast(resid, F32), g.const(np.eye(n, dtype=F32).reshape(1, n, n)), mats["m32"], None, n)
    s = g.op("Sub", s1, g.cast(err, F64), hint="states")
    seq = g.concat([s0, s], axis=0)
    prev = g.slice(seq, 0, -1, axis=0)
    s_next = g.slice(seq, -1, INT_MAX, axis=0)
    y = g.op("Add", g.op("MatMul", prev, mats["o64"]), g.op("MatMul", x64, mats["t64"]), hint="y")
    return y, s_next


# ------------------------------------------------------------------------------ dynamics

def _time_coef(g: GraphBuilder, ms: Value) -> Value:
    """:func:`engine.dsp.dynamics.time_coef` in float32, same operations in the same order."""
    t = g.op("Div", g.op("Div", g.const(F32(-TORCHCOMP_MS_SCALE)), ms), g.const(F32(SAMPLE_RATE / HOP)))
    return g.op("Sub", g.const(F32(1.0)), g.op("Exp", t), hint="coef")


def _ballistics_r(g: GraphBuilder, falling: Value, rising: Value, k: int) -> Value:
    """Recurrence matrix ``(1, 3k, 3k)`` of :func:`_ballistics` for per-track coefficients ``(k,)``."""
    eye = np.eye(k, dtype=F32)
    zk = np.zeros((k, k), F32)
    r_top = g.concat([g.const(eye), g.op("Mul", g.const(eye), rising), g.op("Mul", g.const(eye), g.op("Neg", falling))],
                     axis=1)                                                         # (k, 3k)
    r_bottom = g.const(np.block([[-eye, zk, zk], [eye, zk, zk]]))
    return g.reshape(g.concat([r_top, r_bottom], axis=0), [1, 3 * k, 3 * k])


def _ballistics(g: GraphBuilder, target: Value, g0: Value, r: Value, k: int) -> Value:
    """torchcomp's attack/release recursion for ``k`` independent tracks: ``target`` ``(F, k)``
    from the carried value ``g0`` ``(k,)``, recurrence matrix ``r`` from :func:`_ballistics_r`.

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


# ------------------------------------------------------------------------------ coefficients

def _pidx(*keys: str) -> np.ndarray:
    return np.array([P.PARAM_INDEX[k] for k in keys], dtype=np.int64)


def _per_band(name: str) -> Tuple[str, ...]:
    return tuple(f"multiband.{b}_{name}" for b in MB_BANDS)


@dataclass(frozen=True)
class CoefItem:
    name: str
    dtype: type
    shape: Tuple[int, ...]

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))


def _filter_items(prefix: str, n: int, p: int) -> List[CoefItem]:
    return [CoefItem(f"{prefix}.ctrl64", F64, (HOP, n)), CoefItem(f"{prefix}.mt64", F64, (n, n)),
            CoefItem(f"{prefix}.o64", F64, (n, p * HOP)), CoefItem(f"{prefix}.t64", F64, (HOP, p * HOP)),
            CoefItem(f"{prefix}.w32", F32, (1, n, HOP)), CoefItem(f"{prefix}.m32", F32, (1, n, n))]


#: Everything the audio path needs that depends only on the parameters: computed when the
#: parameters change and otherwise read back from the state (float64 items first).
COEF_ITEMS: Tuple[CoefItem, ...] = tuple(sorted(
    _filter_items("eq", EQ_ORDER, 1) + _filter_items("xo", XO_ORDER, 2) + [
        CoefItem("distortion.drive", F32, (1,)), CoefItem("distortion.mix", F32, (1,)),
        CoefItem("multiband.comp_slope", F32, (N_BANDS,)), CoefItem("multiband.exp_slope", F32, (N_BANDS,)),
        CoefItem("multiband.comp_threshold", F32, (N_BANDS,)), CoefItem("multiband.exp_threshold", F32, (N_BANDS,)),
        CoefItem("multiband.ballistics", F32, (1, 3 * N_BANDS, 3 * N_BANDS)), CoefItem("multiband.mix", F32, (1,)),
        CoefItem("gain.linear", F32, (1,)), CoefItem("imager.width", F32, (1,)),
        CoefItem("limiter.threshold", F32, (1,)), CoefItem("limiter.envelope", F32, (1, 3, 3)),
        CoefItem("limiter.ballistics", F32, (1, 3, 3)),
    ], key=lambda c: c.dtype is F32))
COEF_SIZE = sum(c.size for c in COEF_ITEMS)


def _coefficients(g: GraphBuilder, prm: Value) -> Dict[str, Value]:
    """All parameter-derived tensors of :data:`COEF_ITEMS` from the clamped parameters ``prm``."""
    def param(*keys: str) -> Value:
        return g.op("Gather", prm, g.const(_pidx(*keys)), axis=0, hint=keys[0].replace(".", "_"))

    def db_to_gain(db: Value) -> Value:  # torch.pow(10.0, db / 20.0)
        return g.op("Pow", g.const(F32(10.0)), g.op("Div", db, g.const(F32(20.0))))

    c: Dict[str, Value] = {}
    sos = _design_sections(g, g.cast(prm, F64))
    eq_sos = g.reshape(g.slice(sos, 0, len(EQ_BANDS), axis=0), [1, len(EQ_BANDS), 6])
    A, B, C, D = _df2t_cascade(g, eq_sos, 1, len(EQ_BANDS))
    mats = _chunk_matrices(g, g.reshape(A, [EQ_ORDER, EQ_ORDER]), g.reshape(B, [EQ_ORDER, 1]),
                           g.reshape(C, [1, EQ_ORDER]), g.reshape(D, [1, 1]), EQ_ORDER, 1)
    c.update({f"eq.{k}": v for k, v in mats.items() if isinstance(v, str)})
    # crossovers: Butterworth low-pass and high-pass, each twice (LR4), as one 2-output system
    xo_sos = g.reshape(g.op("Gather", sos, g.const(np.array([6, 6, 7, 7], np.int64)), axis=0), [2, 2, 6])
    A, B, C, D = _df2t_cascade(g, xo_sos, 2, 2)
    eye2 = g.const(np.eye(2, dtype=F64))
    xo_a = g.reshape(g.op("Mul", g.reshape(A, [2, 4, 1, 4]), g.reshape(eye2, [2, 1, 2, 1])), [8, 8])
    xo_c = g.reshape(g.op("Mul", C, g.reshape(eye2, [2, 2, 1])), [2, 8])               # block rows
    mats = _chunk_matrices(g, xo_a, g.reshape(B, [8, 1]), xo_c, g.reshape(D, [2, 1]), XO_ORDER, 2)
    c.update({f"xo.{k}": v for k, v in mats.items() if isinstance(v, str)})

    one = g.const(F32(1.0))
    c["distortion.drive"] = db_to_gain(param("distortion.drive"))
    c["distortion.mix"] = param("distortion.mix")
    # engine.dsp.dynamics.compexp_curve's slopes; time_coef's one-pole coefficients
    c["multiband.comp_slope"] = g.op("Sub", one, g.op("Div", one, param(*_per_band("comp_ratio"))))
    c["multiband.exp_slope"] = g.op("Sub", one, g.op("Div", one, g.op("Max", param(*_per_band("exp_ratio")),
                                                                       g.const(F32(EXP_RATIO_FLOOR)))))
    c["multiband.comp_threshold"] = param(*_per_band("comp_threshold"))
    c["multiband.exp_threshold"] = param(*_per_band("exp_threshold"))
    c["multiband.ballistics"] = _ballistics_r(g, _time_coef(g, param(*_per_band("attack"))),
                                              _time_coef(g, param(*_per_band("release"))), N_BANDS)
    c["multiband.mix"] = param("multiband.mix")
    c["gain.linear"] = db_to_gain(param("gain.gain"))
    c["imager.width"] = param("imager.width")
    c["limiter.threshold"] = db_to_gain(param("limiter.threshold"))
    attack, release = _time_coef(g, param("limiter.attack")), _time_coef(g, param("limiter.release"))
    c["limiter.envelope"] = _ballistics_r(g, release, attack, 1)    # peak follower: rises with the attack
    c["limiter.ballistics"] = _ballistics_r(g, attack, release, 1)  # gain: falls with the attack
    return c


def _pack_coefficients(g: GraphBuilder, c: Dict[str, Value]) -> Value:
    return g.concat([g.cast(g.reshape(c[i.name], [i.size]), F64) if i.dtype is F32 else g.reshape(c[i.name], [i.size])
                     for i in COEF_ITEMS], axis=0)


def _unpack_coefficients(g: GraphBuilder, vec: Value) -> Dict[str, Value]:
    items64 = [i for i in COEF_ITEMS if i.dtype is F64]
    items32 = [i for i in COEF_ITEMS if i.dtype is F32]
    n64 = sum(i.size for i in items64)
    part64, part32 = g.op("Split", vec, g.i64(n64, COEF_SIZE - n64), axis=0, n_out=2)
    out: Dict[str, Value] = {}
    for items, part in ((items64, part64), (items32, g.cast(part32, F32))):
        pieces = g.op("Split", part, g.i64(*[i.size for i in items]), axis=0, n_out=len(items))
        for i, v in zip(items, pieces):
            out[i.name] = g.reshape(v, list(i.shape)) if len(i.shape) > 1 else v
    return out


# ------------------------------------------------------------------------------ state layout

#: Float64 part (coefficient cache, filter states), then values that are float32 by nature.
STATE_F64: Tuple[StateField, ...] = (
    StateField("coef_params", (P.NUM_PARAMS,), "the (clamped) parameters the cached coefficients belong to"),
    StateField("coef_cache", (COEF_SIZE,), "parameter-derived coefficients (see COEF_ITEMS)"),
    StateField("eq", (1, 2, EQ_ORDER), "EQ state-space state per channel"),
    StateField("xo", (1, 2, XO_ORDER), "crossover state-space state per channel"),
)
STATE_SIZE = sum(f.size for f in STATE_F64 + STATE_F32)


# ------------------------------------------------------------------------------ the graph

def build_graph(defaults: Optional[P.ChainParams] = None) -> GraphBuilder:
    """Build the streaming chain graph (see the module docstring for its inputs and outputs)."""
    defaults = defaults or P.ChainParams.default()
    g = GraphBuilder("refmaster_chain")
    audio = g.input("audio", F32, [2, "N"])
    params_in = g.input("params", F32, [P.NUM_PARAMS])
    switches = g.input("switches", np.bool_, [len(P.MODULES)])
    state = g.input("state", F64, [STATE_SIZE])
    # Inputs backed by initializers of the same name: the exported values are the defaults.
    p_def, s_def = defaults.to_tensors()
    g.initializers.append(onnx.numpy_helper.from_array(p_def.numpy().astype(F32), "params"))
    g.initializers.append(onnx.numpy_helper.from_array(s_def.numpy().astype(np.bool_), "switches"))

    def switch(module: str) -> Value:
        return g.op("Gather", switches, g.const(np.int64(P.MODULES.index(module))), axis=0, hint=f"on_{module}")

    lo = np.array([s.min for s in P.PARAMS], F32)
    hi = np.array([s.max for s in P.PARAMS], F32)
    prm = g.op("Min", g.op("Max", params_in, g.const(lo)), g.const(hi), hint="params_clamped")

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
        unchanged = g.op("Equal", g.op("ReduceMax", g.op("Abs", g.op("Sub", prm64, s["coef_params"])), keepdims=0),
                         g.const(F64(0.0)))
        design = GraphBuilder("design")
        with design.scope("design"):
            design.output(_pack_coefficients(design, _coefficients(design, prm)), "designed", F64, [COEF_SIZE])
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
        coef32 = np.float32(rms_coef(SAMPLE_RATE))
        keep = -(coef32 - np.float32(1.0))  # torchcomp avg: y = c x - (c - 1) y_prev
        rms_seq = _affine_rnn(g, g.op("Unsqueeze", power, g.i64(1)),
                              g.const((np.eye(N_BANDS, dtype=F32) * coef32).reshape(1, N_BANDS, N_BANDS)),
                              g.const((np.eye(N_BANDS, dtype=F32) * keep).reshape(1, N_BANDS, N_BANDS)),
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
        nxt = {"coef_params": prm64, "coef_cache": coef_vec, "eq": eq_next, "xo": xo_next,
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


def metadata(defaults: P.ChainParams) -> Dict[str, str]:
    """Model metadata: the schema (read from :mod:`engine.params`), the exported Θ, the state."""
    schema = [{"index": i, "key": s.key, "module": s.module, "name": s.name, "unit": s.unit, "min": s.min,
               "max": s.max, "default": s.default, "scale": s.scale, "description": s.description}
              for i, s in enumerate(P.PARAMS)]
    return {
        "refmaster.format": FORMAT_TAG,
        "refmaster.schema": json.dumps(schema),
        "refmaster.modules": json.dumps(list(P.MODULES)),
        "refmaster.params": defaults.to_json(indent=None),
        "refmaster.sample_rate": str(SAMPLE_RATE),
        "refmaster.latency": str(CHAIN_LATENCY),
        "refmaster.state_size": str(STATE_SIZE),
        "refmaster.state_layout": json.dumps(state_layout()),
    }


#: Written to the model metadata; a model without it is not ours.
FORMAT_TAG = "refmaster.onnx_chain/1"


def build_model(defaults: Optional[P.ChainParams] = None, diagnostic: bool = False) -> onnx.ModelProto:
    """The streaming chain as an ONNX model, with ``defaults`` as the parameter inputs' defaults.

    ``diagnostic=True`` adds one output per module (``module.<name>``: its output frames) so a
    numerical failure can be traced to the module that caused it.
    """
    defaults = defaults or P.ChainParams.default()
    g = build_graph(defaults)
    if diagnostic:
        for name, value in g.module_outputs.items():
            g.output(value, f"module.{name}", F32, ["F", 2, HOP])
    model = g.model(OPSET, doc=__doc__.split("\n\n")[0], metadata=metadata(defaults))
    onnx.checker.check_model(model, full_check=True)
    return model
