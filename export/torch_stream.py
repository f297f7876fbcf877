"""The Torch backend: the offline render :func:`engine.dsp.chain.render_chain`, streamed in
bounded memory (:class:`TorchSegmentChain`, for `render --backend torch`)."""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from engine import params as P
from engine.dsp.chain import CHAIN_LATENCY, render_chain
from engine.dsp.dynamics import CONTROL_HOP
from export.streaming import StreamingChain


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

    def __init__(self, params: Optional[P.ChainParams] = None, segment: int = 1 << 20, preroll: int = 1 << 18,
                 sample_rate: int = P.SAMPLE_RATE):
        super().__init__(params, sample_rate)
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
        if self._incoming:
            self._buf = np.concatenate([self._buf] + self._incoming, axis=1)
            self._incoming = []
        start = max(0, k * self.segment - self.preroll)
        stop = (k + 1) * self.segment + CHAIN_LATENCY
        x = self._buf[:, start - self._buf_start: stop - self._buf_start]
        p, s = self.params.to_tensors()
        with torch.no_grad():
            y = render_chain(torch.from_numpy(np.ascontiguousarray(x)).unsqueeze(0), p, s, self.sample_rate)[0].numpy()
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
