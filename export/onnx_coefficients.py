"""The parameter-derived part of the ONNX chain graph: filter design and coefficients.

Everything here depends only on Θ (never on the audio): :func:`_coefficients` builds, inside the
graph, every tensor of :data:`COEF_ITEMS` from the clamped parameters, and :mod:`export.onnx_chain`
caches them in the stream state, recomputing them only when the parameters change.

* Biquads: the RBJ designs of :func:`dasp_pytorch.signal.biquad` as one matrix product of
  their terms (:func:`_design_sections`, float64), a series cascade in state-space form
  (:func:`_df2t_cascade`) and the matrices that filter one ``HOP``-sample chunk
  (:func:`_chunk_matrices`);
* dynamics: torchcomp's one-pole coefficients (:func:`_time_coef`, the time-constant scale read
  from :data:`engine.dsp.dynamics.TORCHCOMP_MS_SCALE`) and the ballistics RNN's recurrence
  matrices (:func:`_ballistics_r`), the compressor/expander slopes, gains and mixes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Tuple

import numpy as np

from engine import params as P
from engine.dsp.chain import EQ_BANDS, MB_BANDS
from engine.dsp.dynamics import CONTROL_HOP, EXP_RATIO_FLOOR, RMS_WINDOW_MS, TORCHCOMP_MS_SCALE
from engine.dsp.filters import BUTTERWORTH_Q
from engine.params import SAMPLE_RATE
from engine.rates import design_freq_limit
from export.onnx_builder import GraphBuilder, Value

HOP = CONTROL_HOP
#: Orders of the state-space systems: EQ (6 biquads), crossovers (2 x 2 biquads).
EQ_ORDER = 2 * len(EQ_BANDS)
XO_ORDER = 2 * 2 * 2  # low-pass and high-pass, each two biquads of order 2
N_BANDS = len(MB_BANDS)

F32, F64 = np.float32, np.float64


# ------------------------------------------------------------------------------ biquad constants

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

def _design_sections(g: GraphBuilder, p64: Value, rate64: Value) -> Value:
    """``(8, 6)`` float64 normalised sections ``[b0, b1, b2, 1, a1, a2]`` from the parameters at
    the rate ``rate64`` ``(1,)`` (frequencies above :func:`engine.rates.design_freq_limit` at it)."""
    ext = g.concat([p64, g.const(np.array([0.0, float(np.float32(BUTTERWORTH_Q))], dtype=F64))], axis=0)
    gi, fi, qi = _section_param_index()
    gain = g.op("Gather", ext, g.const(gi), axis=0, hint="gain_db")   # (8, 1)
    limit = g.op("Div", g.op("Mul", g.const(F64(design_freq_limit(SAMPLE_RATE))), rate64), g.const(F64(SAMPLE_RATE)),
                 hint="freq_limit")                                  # as engine.params.design_freq_limit
    freq = g.op("Min", g.op("Gather", ext, g.const(fi), axis=0), limit, hint="freq_hz")
    q = g.op("Gather", ext, g.const(qi), axis=0, hint="q")
    A = g.op("Pow", g.const(F64(10.0)), g.op("Div", gain, g.const(F64(40.0))), hint="A")
    w0 = g.op("Mul", g.const(F64(2 * math.pi)), g.op("Div", freq, rate64), hint="w0")
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


# ------------------------------------------------------------------------------ dynamics

def _time_coef(g: GraphBuilder, ms: Value, frame_rate32: Value) -> Value:
    """:func:`engine.dsp.dynamics.time_coef` in float32, same operations in the same order
    (``frame_rate32``: the control rate, rate / HOP, rounded to float32 as torch rounds it)."""
    t = g.op("Div", g.op("Div", g.const(F32(-TORCHCOMP_MS_SCALE)), ms), frame_rate32)
    return g.op("Sub", g.const(F32(1.0)), g.op("Exp", t), hint="coef")


def _ballistics_r(g: GraphBuilder, falling: Value, rising: Value, k: int) -> Value:
    """Recurrence matrix ``(1, 3k, 3k)`` of :func:`export.onnx_chain._ballistics` for per-track coefficients ``(k,)``."""
    eye = np.eye(k, dtype=F32)
    zk = np.zeros((k, k), F32)
    r_top = g.concat([g.const(eye), g.op("Mul", g.const(eye), rising), g.op("Mul", g.const(eye), g.op("Neg", falling))],
                     axis=1)                                                         # (k, 3k)
    r_bottom = g.const(np.block([[-eye, zk, zk], [eye, zk, zk]]))
    return g.reshape(g.concat([r_top, r_bottom], axis=0), [1, 3 * k, 3 * k])


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
        CoefItem("multiband.rms_w", F32, (1, N_BANDS, N_BANDS)), CoefItem("multiband.rms_r", F32, (1, N_BANDS, N_BANDS)),
        CoefItem("gain.linear", F32, (1,)), CoefItem("imager.width", F32, (1,)),
        CoefItem("limiter.threshold", F32, (1,)), CoefItem("limiter.envelope", F32, (1, 3, 3)),
        CoefItem("limiter.ballistics", F32, (1, 3, 3)),
    ], key=lambda c: c.dtype is F32))
COEF_SIZE = sum(c.size for c in COEF_ITEMS)


def _coefficients(g: GraphBuilder, prm: Value, rate64: Value) -> Dict[str, Value]:
    """All parameter-derived tensors of :data:`COEF_ITEMS` from the clamped parameters ``prm`` at
    the sample rate ``rate64`` (float64 ``(1,)``)."""
    def param(*keys: str) -> Value:
        return g.op("Gather", prm, g.const(_pidx(*keys)), axis=0, hint=keys[0].replace(".", "_"))

    def db_to_gain(db: Value) -> Value:  # torch.pow(10.0, db / 20.0)
        return g.op("Pow", g.const(F32(10.0)), g.op("Div", db, g.const(F32(20.0))))

    c: Dict[str, Value] = {}
    sos = _design_sections(g, g.cast(prm, F64), rate64)
    frame_rate64 = g.op("Div", rate64, g.const(F64(HOP)), hint="frame_rate")
    frame_rate32 = g.cast(frame_rate64, F32)
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
    c["multiband.ballistics"] = _ballistics_r(g, _time_coef(g, param(*_per_band("attack")), frame_rate32),
                                              _time_coef(g, param(*_per_band("release")), frame_rate32), N_BANDS)
    c["multiband.mix"] = param("multiband.mix")
    # the RMS averager (torchcomp avg: y = c x - (c - 1) y_prev), c = engine.dsp.dynamics.rms_coef in
    # float64 (ms2coef of RMS_WINDOW_MS at the control rate), then rounded to float32
    rms = g.cast(g.op("Sub", g.const(F64(1.0)), g.op("Exp", g.op("Div", g.op(
        "Div", g.const(F64(-TORCHCOMP_MS_SCALE)), g.const(F64(RMS_WINDOW_MS))), frame_rate64))), F32)
    eye = g.const(np.eye(N_BANDS, dtype=F32).reshape(1, N_BANDS, N_BANDS))
    c["multiband.rms_w"] = g.op("Mul", eye, rms)
    c["multiband.rms_r"] = g.op("Mul", eye, g.op("Neg", g.op("Sub", rms, one)))
    c["gain.linear"] = db_to_gain(param("gain.gain"))
    c["imager.width"] = param("imager.width")
    c["limiter.threshold"] = db_to_gain(param("limiter.threshold"))
    attack, release = _time_coef(g, param("limiter.attack"), frame_rate32), _time_coef(g, param("limiter.release"), frame_rate32)
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
