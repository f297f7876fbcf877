"""The ONNX streaming backend: the exported chain graph (:mod:`export.onnx_chain`) on onnxruntime.

* :class:`OnnxStreamingChain`: the exact streaming chain (a :class:`export.streaming.StreamingChain`);
  its output is :func:`engine.dsp.chain.render_chain` delayed by
  :data:`engine.dsp.chain.CHAIN_LATENCY` samples, for any block sizes, and its whole state is one
  float64 vector, so it can snapshot and restore it;
* :func:`load_onnx_chain`, :func:`onnx_file_params`: read a `.onnx` chain written by
  `refmaster export` (any other file is a one-line error);
* :func:`session_options`: the onnxruntime settings every session of the chain uses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from engine import params as P
from engine.dsp.chain import CHAIN_LATENCY
from engine.errors import RefmasterError
from export.streaming import StreamingChain

_MODEL_CACHE = {}


def default_onnx_model():
    """The chain graph with neutral defaults, built once per process (about a second)."""
    if "model" not in _MODEL_CACHE:
        from export.onnx_chain import build_model

        _MODEL_CACHE["model"] = build_model().SerializeToString()
    return _MODEL_CACHE["model"]


def load_onnx_chain(path) -> bytes:
    """Read a `.onnx` chain written by `refmaster export`; any other file is a one-line error."""
    import onnx
    from google.protobuf.message import DecodeError

    from export.onnx_chain import FORMAT_TAG, STATE_SIZE

    p = Path(path)
    if not p.exists():
        raise RefmasterError(f"{p}: no such ONNX file")
    data = p.read_bytes()
    try:
        model = onnx.load_from_string(data)
    except (DecodeError, ValueError, RuntimeError) as e:
        raise RefmasterError(f"{p}: not a readable ONNX model (truncated or corrupt: {str(e).strip() or type(e).__name__})") from None
    meta = {m.key: m.value for m in model.metadata_props}
    if meta.get("refmaster.format") != FORMAT_TAG:
        raise RefmasterError(f"{p}: not a refmaster chain (no '{FORMAT_TAG}' in its metadata; write one with `refmaster export`)")
    if meta.get("refmaster.state_size") != str(STATE_SIZE):
        raise RefmasterError(f"{p}: written by another version of refmaster (state size "
                             f"{meta.get('refmaster.state_size')}, this version uses {STATE_SIZE}); export it again")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        raise RefmasterError(f"{p}: invalid ONNX model ({str(e).splitlines()[0]})") from None
    return data


def onnx_file_params(path) -> P.ChainParams:
    """The parameters stored in an exported `.onnx` chain's metadata."""
    import onnx

    model = onnx.load_from_string(load_onnx_chain(path))
    meta = {m.key: m.value for m in model.metadata_props}
    return P.ChainParams.from_json(meta["refmaster.params"])


def session_options(threads: int = 1):
    """onnxruntime options for the chain: ``threads`` intra-op threads, sequential, quiet.

    Quiet because onnxruntime warns that the ``params``/``switches`` inputs have initializers
    (their defaults): that is the point, they are meant to be overridden.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    return opts


class OnnxStreamingChain(StreamingChain):
    """The exact streaming chain on onnxruntime's CPU provider.

    Args:
        params: Θ and switches to start with (default: neutral).
        model: path of an exported `.onnx` file, or the model's bytes; default: build it.
        threads: onnxruntime intra-op threads (1: what the benchmarks measure).
        sample_rate: the stream's rate (fed to the graph's ``sample_rate`` input with every block).
    """

    backend = "onnx"
    latency = CHAIN_LATENCY
    can_snapshot = True

    def __init__(self, params: Optional[P.ChainParams] = None, model=None, threads: int = 1,
                 sample_rate: int = P.SAMPLE_RATE):
        import onnxruntime as ort

        from export.onnx_chain import initial_state

        super().__init__(params, sample_rate)
        if model is None:
            data = default_onnx_model()
        elif isinstance(model, (bytes, bytearray)):
            data = bytes(model)
        else:
            data = load_onnx_chain(model)
        try:
            self._session = ort.InferenceSession(data, session_options(threads), providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types for bad graphs
            raise RefmasterError(f"onnxruntime cannot load the chain: {str(e).splitlines()[0]}") from None
        self._model_bytes = data
        self._initial = initial_state
        self._feed_rate = np.array([self.sample_rate], np.float64)
        self.reset()
        self.set_params(self.params)

    def set_params(self, params: P.ChainParams) -> None:
        super().set_params(params)
        p, s = params.to_tensors()
        self._feed_params = p.numpy().astype(np.float32)
        self._feed_switches = s.numpy().astype(np.bool_)

    def reset(self) -> None:
        self._state = self._initial()
        self._feed_rate = np.array([self.sample_rate], np.float64)

    def get_state(self) -> np.ndarray:
        """A snapshot of the whole stream state (one float64 vector; see export/onnx_chain.py)."""
        return self._state.copy()

    def set_state(self, state: np.ndarray) -> None:
        """Continue from a snapshot taken by :meth:`get_state`."""
        from export.onnx_chain import STATE_SIZE

        state = np.asarray(state, dtype=np.float64)
        if state.shape != (STATE_SIZE,):
            raise ValueError(f"expected a state of shape ({STATE_SIZE},), got {state.shape}")
        self._state = state.copy()

    def _process(self, x: np.ndarray) -> np.ndarray:
        self._last_input = (x, self._state)
        out, self._state = self._session.run(None, {"audio": x, "params": self._feed_params,
                                                    "switches": self._feed_switches, "sample_rate": self._feed_rate,
                                                    "state": self._state})
        return out

    def _failed_module(self, x: np.ndarray) -> str:
        """Re-run the failed block through the diagnostic graph and name the first bad module."""
        import onnxruntime as ort

        from export.onnx_chain import build_model

        try:
            params = P.ChainParams.from_json(self.params.to_json())
            diag = ort.InferenceSession(build_model(params, diagnostic=True).SerializeToString(), session_options(1),
                                        providers=["CPUExecutionProvider"])
            x, state = self._last_input
            names = [o.name for o in diag.get_outputs()]
            outs = dict(zip(names, diag.run(None, {"audio": x, "params": self._feed_params,
                                                   "switches": self._feed_switches, "sample_rate": self._feed_rate,
                                                   "state": state})))
        except RefmasterError:
            return "onnx chain"
        for m in P.MODULES:
            if not np.isfinite(outs[f"module.{m}"]).all():
                return m
        return "onnx chain"
