"""Streaming chains: the one surface every backend offers, for `render` and for the live engine.

::

    from export.factory import make_chain
    chain = make_chain("onnx", params)     # engine.params.ChainParams; or "pedalboard", "torch"
    out = chain.process(block)             # (2, N) float32 in -> (2, N) float32 out, any N >= 0
    chain.set_params(new_params)           # takes effect at the next process() call
    tail = chain.flush()                   # (2, chain.latency): the output still inside the chain
    chain.reset()                          # silence and fresh state, same parameters
    chain.latency                          # samples: out[n] belongs to in[n - latency]
    chain.set_sample_rate(48000)           # the stream's rate (22.05–192 kHz); starts a fresh stream
    if chain.can_snapshot:                 # ONNX only: snapshot and restore the whole state
        s = chain.get_state(); chain.set_state(s)

This module holds only the interface (:class:`StreamingChain`) and the backend names; each
backend lives in its own module and :func:`export.factory.make_chain` picks one:

* :class:`export.onnx_stream.OnnxStreamingChain`: the exported ONNX graph (:mod:`export.onnx_chain`)
  run by onnxruntime, exact: its output is :func:`engine.dsp.chain.render_chain` delayed by
  :data:`engine.dsp.chain.CHAIN_LATENCY` (128) samples, for any block sizes.
* :class:`export.pedalboard_chain.PedalboardStreamingChain`: pedalboard's native plugins,
  calibrated to the Torch render (close, not exact; latency 64: its dynamics look one control
  frame ahead).
* :class:`export.torch_stream.TorchSegmentChain`: the Torch render itself, run on long
  overlapping segments so that it streams in bounded memory (for `render --backend torch`; its
  latency is a whole segment).

Every backend checks its input (a NaN sample is an :class:`engine.errors.AudioError`) and its
output (a non-finite sample is a :class:`engine.errors.ChainError` naming the module).
"""

from __future__ import annotations

import abc
from typing import Optional

import numpy as np

from engine import params as P
from engine.errors import AudioError, ChainError
from engine.params import SAMPLE_RATE
from engine.rates import check_rate

BACKENDS = ("torch", "onnx", "pedalboard")


class StreamingChain(abc.ABC):
    """What every streaming backend offers (see the module docstring)."""

    sample_rate: int = SAMPLE_RATE
    #: Samples between an input sample and its output sample.
    latency: int = 0
    #: Short name ("onnx", "pedalboard", "torch").
    backend: str = ""
    #: True when :meth:`get_state` / :meth:`set_state` work (the whole stream state is data).
    can_snapshot: bool = False

    def __init__(self, params: Optional[P.ChainParams] = None, sample_rate: int = SAMPLE_RATE):
        self.params = params or P.ChainParams.default()
        self.sample_rate = check_rate(sample_rate)

    def set_sample_rate(self, sample_rate: int) -> None:
        """Run at ``sample_rate`` (any in :data:`engine.params.CHAIN_RATES`: filters and time
        constants for it) from a fresh stream on (the state of one rate means nothing at another)."""
        self.sample_rate = check_rate(sample_rate)
        self._rate_changed()
        self.reset()

    def _rate_changed(self) -> None:
        """Backends whose settings depend on the rate recompute them here (before the reset)."""

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

    def get_state(self):
        """A snapshot of the whole stream state (only when :attr:`can_snapshot`)."""
        raise NotImplementedError(f"the {self.backend} chain cannot snapshot its state")

    def set_state(self, state) -> None:
        """Continue from a snapshot taken by :meth:`get_state` (only when :attr:`can_snapshot`)."""
        raise NotImplementedError(f"the {self.backend} chain cannot snapshot its state")

    @abc.abstractmethod
    def _process(self, x: np.ndarray) -> np.ndarray:
        ...

    def _failed_module(self, x: np.ndarray) -> str:
        """Name of the module that produced a non-finite sample (backends refine this)."""
        return self.backend
