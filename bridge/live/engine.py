"""The live engine behind `refmaster serve`: audio through the streaming chain, block by block.

* :class:`ChainProcessor` reads the shared :class:`bridge.osc.state.BridgeState` at the start of
  every block, so an OSC change is heard from the next block on, and applies the live controls
  (amount and the loudness-matched bypass: :mod:`bridge.live.monitor`). It is what the JACK insert
  (:mod:`bridge.live.insert`, `serve --insert`) runs the DAW's audio through;
  :class:`LiveEngine` adds a song, looped, and the transport (play, stop, seek) for the OSC server.
* **Smoothing.** A block in which anything changed is rendered twice from the same chain state,
  with the old and with the new parameters, and the two outputs are crossfaded linearly across
  the block (from the end of the backend's latency, 128 samples for ONNX, whose first output
  samples were computed before the change, to the block's last sample); the stream then
  continues from the new parameters' state. For a gain-like parameter
  (make-up gain, wet mixes, width, thresholds) this is exactly a gain ramp across the block; for
  filters and switches it is a click-free crossfade. It needs a backend whose state can be saved
  and restored (``can_snapshot``: the ONNX chain); with one that cannot (pedalboard), the changed
  block is played in :data:`SUBSTEPS` parts whose parameters move in equal steps (switches flip
  at once).
* **Clocks and sinks** (:mod:`bridge.live.outputs`). With a JACK server, :class:`JackOutput`
  registers two output ports, and JACK's process callback takes the audio from a queue of 3
  blocks that a render thread keeps filled (an empty queue when the callback runs is a missed
  deadline). Without JACK, :func:`run_paced` emulates the same device clock and queue in real
  time (a block not ready when its turn to play comes is a missed deadline) and hands the blocks
  to a :class:`FileOutput` (24-bit wav) or :class:`NullOutput`.
* **Figures.** :class:`EngineStats` keeps the time each block took, the missed deadlines, and for
  every applied message the time from its arrival at the socket to the end of rendering of the
  block that first applies it (``latency_ms``) and to the moment that block starts playing
  (``play_latency_ms``, which adds the output queue).

The chain is a :class:`export.streaming.StreamingChain` from :func:`export.factory.make_chain`
(:func:`open_backend`); the engine uses nothing but that interface.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Deque, List, Optional, Tuple

import numpy as np

from bridge.live.monitor import Monitor, control_value, scaled_chain
from engine import params as P
from engine.errors import RefmasterError
from export.factory import make_chain
from export.streaming import StreamingChain

DEFAULT_BLOCK = 512
#: Python's GIL switch interval while a live engine runs (default 5 ms): a render thread that
#: waits for the GIL held by the OSC thread gets it back within this time.
REALTIME_SWITCH_INTERVAL_S = 0.0005
#: Without state snapshots, a changed block is played in this many parts with interpolated parameters.
SUBSTEPS = 8


def prepare_realtime():
    """Tune the interpreter for a render thread that must not stall; returns a function undoing it.

    * the GIL switch interval drops from 5 ms to :data:`REALTIME_SWITCH_INTERVAL_S`, so the render
      thread gets the GIL back quickly from the OSC thread;
    * every object alive now (torch, onnx and the other modules: hundreds of thousands) is moved
      out of the garbage collector's sight (``gc.freeze``). Without it, full collections that the
      OSC traffic triggers every few seconds scanned them all and held the GIL for 20–190 ms
      (measured during `refmaster bench osc`), long enough to miss a block's deadline.
    """
    import gc

    previous = sys.getswitchinterval()
    sys.setswitchinterval(REALTIME_SWITCH_INTERVAL_S)
    gc.collect()
    gc.freeze()

    def undo() -> None:
        gc.unfreeze()
        sys.setswitchinterval(previous)

    return undo


class BackendUnavailable(RefmasterError):
    """The requested streaming backend cannot be used (not built, not installed, ...)."""


# ------------------------------------------------------------------------------ backends

def open_backend(kind: str, chain: P.ChainParams, onnx_model=None, pedalboard_settings=None) -> StreamingChain:
    """The streaming chain ``kind`` ("onnx" or "pedalboard") from :func:`export.factory.make_chain`, set to ``chain``.

    ``onnx_model``: an exported `.onnx` file (default: the graph built from the schema);
    ``pedalboard_settings``: a calibrated settings file from `refmaster export --pedalboard`.
    A backend whose runtime (onnxruntime, pedalboard) is not installed is :class:`BackendUnavailable`.
    """
    if kind not in ("onnx", "pedalboard"):
        raise BackendUnavailable(f"unknown backend {kind!r} (onnx or pedalboard)")
    try:
        return make_chain(kind, chain, onnx_model=onnx_model, pedalboard_settings=pedalboard_settings, threads=1)
    except ImportError as e:
        raise BackendUnavailable(f"the {kind} streaming backend is not available: a package it needs is not "
                                 f"installed ({e})") from None


# ------------------------------------------------------------------------------ stats

#: Timings kept for the percentiles (the latest of each kind): a session runs for hours, at hundreds
#: of blocks and up to thousands of messages a second, and must not grow without bound.
TIMINGS_KEPT = 1 << 18


def _timings() -> Deque[float]:
    return deque(maxlen=TIMINGS_KEPT)


@dataclass
class EngineStats:
    blocks: int = 0
    changed_blocks: int = 0
    missed_deadlines: int = 0
    block_ms: Deque[float] = field(default_factory=_timings)
    latency_ms: Deque[float] = field(default_factory=_timings)
    play_latency_ms: Deque[float] = field(default_factory=_timings)
    missed_at_block: List[int] = field(default_factory=list)
    applied_messages: int = 0

    def summary(self) -> dict:
        def pct(v, q):
            return float(np.percentile(v, q)) if v else float("nan")

        return {
            "blocks": self.blocks, "changed_blocks": self.changed_blocks,
            "missed_deadlines": self.missed_deadlines,
            "block_ms_p50": pct(self.block_ms, 50), "block_ms_p99": pct(self.block_ms, 99),
            "block_ms_max": max(self.block_ms) if self.block_ms else float("nan"),
            "applied_messages": self.applied_messages,
            "latency_ms_p50": pct(self.latency_ms, 50), "latency_ms_p99": pct(self.latency_ms, 99),
            "latency_ms_max": max(self.latency_ms) if self.latency_ms else float("nan"),
            "play_latency_ms_p50": pct(self.play_latency_ms, 50), "play_latency_ms_p99": pct(self.play_latency_ms, 99),
        }


# ------------------------------------------------------------------------------ the engine

class ChainProcessor:
    """Block by block through ``backend``, reading ``state`` at every block: what `serve` plays a
    song through and what the JACK insert runs the DAW's audio through.

    A block in which Θ, a switch or the amount changed is crossfaded (see the module docstring);
    the bypass and the amount are applied as :mod:`bridge.live.monitor` describes.
    """

    def __init__(self, backend: StreamingChain, state, block: int = DEFAULT_BLOCK):
        if block < 16 or block > 16384:
            raise RefmasterError(f"block size {block} is outside 16…16384 samples")
        self.backend = backend
        self.state = state
        self.block = int(block)
        self.stats = EngineStats()
        self.last_arrivals: List[float] = []
        # Crossfade ramp for a changed block: 0 until the backend's latency (the first ``latency``
        # output samples left the chain before the change; at most those differ), then linear to 1
        # at the block's last sample. Blocks shorter than twice the latency ramp over their second half.
        lat = int(backend.latency)
        start = lat if self.block >= 2 * lat else self.block // 2
        n = np.arange(self.block, dtype=np.float32)
        self.ramp = np.clip((n - start + 1) / (self.block - start), 0.0, 1.0)[None, :].astype(np.float32)
        chain, _ = state.take_for_block()
        self.source = chain if chain is not None else state.snapshot()   # Θ as the state holds it
        self.controls = state.controls()
        self.params = scaled_chain(self.source, control_value(self.controls, "amount"))   # what the chain runs
        self.monitor = Monitor(backend.sample_rate, lat, self.block)
        backend.set_params(self.params)
        # warm up (the first calls of a runtime allocate and plan), then start a fresh stream
        for _ in range(3):
            backend.process(np.zeros((2, self.block), np.float32))
        backend.reset()

    def _take(self):
        """(the parameters to run if anything changed else None, arrival times applied)."""
        new, arrivals = self.state.take_for_block()
        if new is None:
            return None, arrivals
        self.source, self.controls = new, self.state.controls()
        return scaled_chain(new, control_value(self.controls, "amount")), arrivals

    def apply_pending(self) -> None:
        """Take the changes made since the last block without rendering (playback stopped)."""
        new, arrivals = self._take()
        if new is not None:
            self.params = new
            self.backend.set_params(new)
            self._latencies(arrivals, time.perf_counter())

    def process(self, x: np.ndarray) -> np.ndarray:
        """The output block (2, n) for the input block ``x`` (2, n)."""
        t_start = time.perf_counter()
        new, arrivals = self._take()
        if new is None or new == self.params:
            if new is not None:
                self.params = new
            y = self.backend.process(x)
        elif self.backend.can_snapshot:
            s0 = self.backend.get_state()
            y_old = self.backend.process(x)
            self.backend.set_state(s0)
            self.backend.set_params(new)
            y_new = self.backend.process(x)
            ramp = self.ramp if x.shape[1] == self.block else np.linspace(0, 1, x.shape[1], dtype=np.float32)[None]
            y = y_old * (1.0 - ramp) + y_new * ramp
            self.params = new
            self.stats.changed_blocks += 1
        else:
            y = self._stepped(x, self.params, new)
            self.params = new
            self.stats.changed_blocks += 1
        y = self.monitor.mix(x, np.asarray(y, dtype=np.float32), control_value(self.controls, "bypass"))
        done = time.perf_counter()
        self._latencies(arrivals, done)
        self.stats.blocks += 1
        self.stats.block_ms.append((done - t_start) * 1000.0)
        return y

    def _stepped(self, x: np.ndarray, old: P.ChainParams, new: P.ChainParams) -> np.ndarray:
        """For a backend without state snapshots: the block in :data:`SUBSTEPS` parts, the
        parameters moving from ``old`` to ``new`` in equal steps of their normalised form."""
        a = np.array([old.values[k] for k in P.PARAM_KEYS])
        b = np.array([new.values[k] for k in P.PARAM_KEYS])
        na = np.array([s.to_normalized(v) for s, v in zip(P.PARAMS, a)])
        nb = np.array([s.to_normalized(v) for s, v in zip(P.PARAMS, b)])
        parts = np.array_split(np.arange(x.shape[1]), min(SUBSTEPS, x.shape[1]))
        out = []
        for j, idx in enumerate(parts):
            f = (j + 1) / len(parts)
            n = na + f * (nb - na)
            vals = {s.key: (b[i] if f == 1.0 else s.clamp(s.from_normalized(n[i]))) for i, s in enumerate(P.PARAMS)}
            self.backend.set_params(P.ChainParams(vals, dict(new.switches)))
            out.append(self.backend.process(x[:, idx[0]: idx[-1] + 1]))
        return np.concatenate(out, axis=1)

    def _latencies(self, arrivals: List[float], done: float) -> None:
        self.stats.applied_messages += len(arrivals)
        self.stats.latency_ms.extend((done - a) * 1000.0 for a in arrivals)
        self.last_arrivals = self.last_arrivals + arrivals

    def take_arrivals(self) -> List[float]:
        """Arrival times of the messages applied in the blocks rendered since the last call."""
        a, self.last_arrivals = self.last_arrivals, []
        return a

    def played(self, arrivals: List[float], when: float) -> None:
        """The block holding ``arrivals`` started playing at ``when`` (perf_counter)."""
        self.stats.play_latency_ms.extend((when - a) * 1000.0 for a in arrivals)


class LiveEngine(ChainProcessor):
    """Plays ``song`` (2, T) float32 through ``backend``, reading ``state`` at every block."""

    def __init__(self, song: np.ndarray, backend: StreamingChain, state, block: int = DEFAULT_BLOCK,
                 loop: bool = True, playing: bool = True):
        super().__init__(backend, state, block)
        self.song = np.ascontiguousarray(song, dtype=np.float32)
        self.rate = backend.sample_rate
        self.loop = loop
        self._lock = threading.Lock()
        self._pos = 0
        self._playing = playing
        self._seek_from: Optional[int] = None
        self.finished = threading.Event()
        n = np.arange(self.block, dtype=np.float32)
        self.seek_ramp = ((n + 1) / self.block)[None, :].astype(np.float32)

    # -- transport (called from the OSC thread)
    def play(self) -> None:
        with self._lock:
            self._playing = True

    def stop(self) -> None:
        with self._lock:
            self._playing = False

    def seek(self, seconds: float) -> float:
        n = int(round(seconds * self.rate))
        T = self.song.shape[1]
        if n >= T:
            raise RefmasterError(f"position {seconds:g} s is past the end of the song ({T / self.rate:.1f} s)")
        with self._lock:
            self._seek_from = self._pos
            self._pos = n
        return n / self.rate

    def position(self) -> Tuple[bool, float]:
        with self._lock:
            return self._playing, self._pos / self.rate

    # -- audio
    def _read(self, start: int, n: int) -> Tuple[np.ndarray, int]:
        """``n`` samples from ``start`` (looping); returns them and the position after."""
        T = self.song.shape[1]
        out = np.zeros((2, n), np.float32)
        filled, pos = 0, start
        while filled < n:
            if pos >= T:
                if not self.loop:
                    break
                pos = 0
            take = min(n - filled, T - pos)
            out[:, filled:filled + take] = self.song[:, pos:pos + take]
            filled += take
            pos += take
        return out, pos

    def _next_input(self) -> Optional[np.ndarray]:
        with self._lock:
            if not self._playing:
                return None
            if not self.loop and self._pos >= self.song.shape[1]:
                self.finished.set()
                return None
            x, self._pos = self._read(self._pos, self.block)
            seek_from, self._seek_from = self._seek_from, None
        if seek_from is not None:  # crossfade from where we were to where we jumped
            old, _ = self._read(seek_from, self.block)
            x = old * (1.0 - self.seek_ramp) + x * self.seek_ramp
        return x

    def render_block(self) -> np.ndarray:
        """The next output block (2, block): silence while stopped."""
        x = self._next_input()
        if x is None:
            self.apply_pending()
            return np.zeros((2, self.block), np.float32)
        return self.process(x)


# ------------------------------------------------------------------------------ the render loop

def run_paced(engine: LiveEngine, output, stop: threading.Event, max_blocks: Optional[int] = None,
              queue_blocks: int = 3) -> None:
    """Render in real time for an output without a clock of its own (a file, nothing).

    Emulates an audio device that starts playing block n at ``T0 + n·d`` (d = block duration) from
    a queue of at most ``queue_blocks`` blocks, like :class:`bridge.live.outputs.JackOutput`:
    block n may be rendered from ``T0 + (n − queue_blocks + 1)·d`` and must be ready by
    ``T0 + n·d``. A block that is late is a missed deadline (the device would have played
    silence); the clock then carries on from the late block, as a device does after an underrun.
    """
    if queue_blocks < 2:
        raise RefmasterError("the output queue needs at least 2 blocks (one playing, one being rendered)")
    d = engine.block / engine.backend.sample_rate
    T0 = time.perf_counter() + (queue_blocks - 1) * d
    n = 0
    while not stop.is_set() and (max_blocks is None or n < max_blocks):
        start = T0 + (n - queue_blocks + 1) * d
        now = time.perf_counter()
        if now < start:
            time.sleep(start - now)
        y = engine.render_block()
        output.write(y)
        done = time.perf_counter()
        due = T0 + n * d
        if done > due:
            engine.stats.missed_deadlines += 1
            engine.stats.missed_at_block.append(n)
            T0 = done - n * d
            due = done
        engine.played(engine.take_arrivals(), due)
        n += 1
        if engine.finished.is_set():
            break
