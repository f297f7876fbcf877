"""Streaming chains: one small surface for every backend, for `render` and for a live engine.

::

    from export.streaming import make_chain
    chain = make_chain("onnx", params)     # engine.params.ChainParams; or "pedalboard", "torch"
    out = chain.process(block)             # (2, N) float32 in -> (2, N) float32 out, any N >= 0
    chain.set_params(new_params)           # takes effect at the next process() call
    tail = chain.flush()                   # (2, chain.latency): the output still inside the chain
    chain.reset()                          # silence and fresh state, same parameters
    chain.latency                          # samples: out[n] belongs to in[n - latency]
    s = chain.get_state(); chain.set_state(s)   # ONNX only: snapshot and restore the whole state

Backends:

* :class:`OnnxStreamingChain`: the exported ONNX graph (:mod:`export.onnx_chain`) run by
  onnxruntime, exact: its output is :func:`engine.dsp.chain.render_chain` delayed by
  :data:`engine.dsp.chain.CHAIN_LATENCY` (128) samples, for any block sizes.
* :class:`export.pedalboard_chain.PedalboardStreamingChain`: pedalboard's native plugins,
  calibrated to the Torch render (close, not exact; latency 64: its dynamics look one control
  frame ahead).
* :class:`TorchSegmentChain`: the Torch render itself, run on long overlapping segments so that
  it streams in bounded memory (for `render --backend torch`; its latency is a whole segment).

Every backend checks its input (a NaN sample is an :class:`engine.errors.AudioError`) and its
output (a non-finite sample is a :class:`engine.errors.ChainError` naming the module).
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Optional

import numpy as np

from engine import params as P
from engine.dsp.chain import CHAIN_LATENCY, SAMPLE_RATE
from engine.errors import AudioError, ChainError, RefmasterError

BACKENDS = ("torch", "onnx", "pedalboard")


class StreamingChain(abc.ABC):
    """What every streaming backend offers (see the module docstring)."""

    sample_rate: int = SAMPLE_RATE
    #: Samples between an input sample and its output sample.
    latency: int = 0
    #: Short name ("onnx", "pedalboard", "torch").
    backend: str = ""

    def __init__(self, params: Optional[P.ChainParams] = None):
        self.params = params or P.ChainParams.default()

    def set_params(self, params: P.ChainParams) -> None:
        """Use ``params`` (already validated by :class:`engine.params.ChainParams`) from the next block on."""
        if not isinstance(params, P.ChainParams):
            raise TypeError(f"expected ChainParams, got {type(params).__name__}")
        self.params = params

    def process(self, block: np.ndarray) -> np.ndarray:
        """Process the next ``(2, N)`` block; returns ``(2, N)`` float32 (delayed by :attr:`latency`)."""
        x = np.asarray(block)
        if x.ndim != 2 or x.shape[0] != 2:
            raise AudioError(f"{self.backend} chain: expected a (2, N) block, got shape {x.shape}")
        x = np.ascontiguousarray(x, dtype=np.float32)
        if not np.isfinite(x).all():
            raise AudioError(f"{self.backend} chain: input block contains NaN or infinite samples")
        y = self._process(x)
        if not np.isfinite(y).all():
            raise ChainError(self._failed_module(x), f"produced NaN or infinite samples ({self.backend} backend)")
        return y

    def flush(self) -> np.ndarray:
        """Feed :attr:`latency` samples of silence and return their output: the end of the stream."""
        return self.process(np.zeros((2, self.latency), np.float32))

    @abc.abstractmethod
    def reset(self) -> None:
        """Forget all audio: the next block starts a fresh stream."""

    @abc.abstractmethod
    def _process(self, x: np.ndarray) -> np.ndarray:
        ...

    def _failed_module(self, x: np.ndarray) -> str:
        """Name of the module that produced a non-finite sample (backends refine this)."""
        return self.backend


# ------------------------------------------------------------------------------ ONNX

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
    """

    backend = "onnx"
    latency = CHAIN_LATENCY

    def __init__(self, params: Optional[P.ChainParams] = None, model=None, threads: int = 1):
        import onnxruntime as ort

        from export.onnx_chain import initial_state

        super().__init__(params)
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
        self.reset()
        self.set_params(self.params)

    def set_params(self, params: P.ChainParams) -> None:
        super().set_params(params)
        p, s = params.to_tensors()
        self._feed_params = p.numpy().astype(np.float32)
        self._feed_switches = s.numpy().astype(np.bool_)

    def reset(self) -> None:
        self._state = self._initial()

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
                                                    "switches": self._feed_switches, "state": self._state})
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
                                                   "switches": self._feed_switches, "state": state})))
        except RefmasterError:
            return "onnx chain"
        for m in P.MODULES:
            if not np.isfinite(outs[f"module.{m}"]).all():
                return m
        return "onnx chain"


# ------------------------------------------------------------------------------ Torch, in segments

class TorchSegmentChain(StreamingChain):
    """The offline Torch render, streamed in bounded memory.

    The input is cut into segments of ``segment`` samples; each is rendered by
    :func:`engine.dsp.chain.render_chain` together with the ``preroll`` samples before it (from
    silence: the filters and envelopes settle during the pre-roll) and the
    :data:`engine.dsp.chain.CHAIN_LATENCY` samples after it (the lookahead), and only the segment's
    own output is kept. The first segment has nothing before it, so it is the offline render
    exactly; later ones differ from a whole-file render only by what is left, after the
    pre-roll, of the difference between a fresh state and the true one (measured in
    docs/export.md). Latency: ``segment + CHAIN_LATENCY``.
    """

    backend = "torch"

    def __init__(self, params: Optional[P.ChainParams] = None, segment: int = 1 << 20, preroll: int = 1 << 18):
        from engine.dsp.dynamics import CONTROL_HOP

        super().__init__(params)
        if segment % CONTROL_HOP or preroll % CONTROL_HOP or segment <= 0:
            raise ValueError(f"segment and preroll must be positive multiples of {CONTROL_HOP}")
        self.segment, self.preroll = segment, preroll
        self.latency = segment + CHAIN_LATENCY
        self.reset()

    def reset(self) -> None:
        self._buf = np.zeros((2, 0), np.float32)   # input from sample self._buf_start on ...
        self._buf_start = 0
        self._incoming = []                        # ... followed by these blocks (joined when needed)
        self._received = 0
        self._next_segment = 0                     # index of the next segment to render
        self._out = _SampleQueue()
        self._out.put(np.zeros((2, self.latency), np.float32))

    def _render(self, k: int) -> np.ndarray:
        import torch

        from engine.dsp.chain import render_chain

        if self._incoming:
            self._buf = np.concatenate([self._buf] + self._incoming, axis=1)
            self._incoming = []
        start = max(0, k * self.segment - self.preroll)
        stop = (k + 1) * self.segment + CHAIN_LATENCY
        x = self._buf[:, start - self._buf_start: stop - self._buf_start]
        p, s = self.params.to_tensors()
        with torch.no_grad():
            y = render_chain(torch.from_numpy(np.ascontiguousarray(x)).unsqueeze(0), p, s)[0].numpy()
        keep = k * self.segment - start
        return y[:, keep: keep + self.segment]

    def _process(self, x: np.ndarray) -> np.ndarray:
        self._incoming.append(x)
        self._received += x.shape[1]
        while self._received >= (self._next_segment + 1) * self.segment + CHAIN_LATENCY:
            self._out.put(self._render(self._next_segment))
            self._next_segment += 1
            # drop input no later segment needs
            keep_from = max(0, self._next_segment * self.segment - self.preroll)
            if keep_from > self._buf_start:
                self._buf = self._buf[:, keep_from - self._buf_start:].copy()
                self._buf_start = keep_from
        return self._out.take(x.shape[1])


class _SampleQueue:
    """A FIFO of ``(2, n)`` arrays from which any number of samples can be taken."""

    def __init__(self):
        self._chunks = []
        self._offset = 0   # samples already taken from self._chunks[0]

    def put(self, x: np.ndarray) -> None:
        if x.shape[1]:
            self._chunks.append(x)

    def take(self, n: int) -> np.ndarray:
        parts = []
        while n > 0:
            head = self._chunks[0]
            k = min(n, head.shape[1] - self._offset)
            parts.append(head[:, self._offset:self._offset + k])
            self._offset += k
            n -= k
            if self._offset == head.shape[1]:
                self._chunks.pop(0)
                self._offset = 0
        return np.ascontiguousarray(np.concatenate(parts, axis=1) if len(parts) != 1 else parts[0]) if parts \
            else np.zeros((2, 0), np.float32)


# ------------------------------------------------------------------------------ factory

def make_chain(backend: str, params: Optional[P.ChainParams] = None, *, onnx_model=None,
               pedalboard_settings=None, threads: int = 1) -> StreamingChain:
    """A streaming chain for ``backend`` ("torch", "onnx" or "pedalboard").

    ``onnx_model``: an exported `.onnx` file (or its bytes) for the ONNX backend.
    ``pedalboard_settings``: calibrated settings (:class:`export.pedalboard_chain.PedalboardSettings`
    or the path of a `--pedalboard` JSON file) for the pedalboard backend; without them the
    uncalibrated mapping of Θ is used.
    """
    if backend == "onnx":
        return OnnxStreamingChain(params, model=onnx_model, threads=threads)
    if backend == "torch":
        import torch

        torch.set_num_threads(max(1, threads))
        return TorchSegmentChain(params)
    if backend == "pedalboard":
        from export.pedalboard_chain import PedalboardSettings, PedalboardStreamingChain

        settings = pedalboard_settings
        if settings is not None and not isinstance(settings, PedalboardSettings):
            settings = PedalboardSettings.load(settings)
        return PedalboardStreamingChain(params, settings=settings)
    raise RefmasterError(f"unknown backend {backend!r} (one of {', '.join(BACKENDS)})")
