"""The live engine behind `refmaster serve`: a song through the streaming chain, block by block.

* :class:`LiveEngine` reads the shared :class:`bridge.osc.server.BridgeState` at the start of every
  block, so an OSC change is heard from the next block on; it loops the song and offers the
  transport (play, stop, seek) to the OSC server.
* **Smoothing.** A block in which anything changed is rendered twice from the same chain state,
  with the old and with the new parameters, and the two outputs are crossfaded linearly across
  the block (from the end of the backend's latency, 128 samples for ONNX, whose first output
  samples were computed before the change, to the block's last sample); the stream then
  continues from the new parameters' state. For a gain-like parameter
  (make-up gain, wet mixes, width, thresholds) this is exactly a gain ramp across the block; for
  filters and switches it is a click-free crossfade. It needs a backend whose state can be saved
  and restored (the ONNX chain); with one that cannot (pedalboard), the changed block is played
  in :data:`SUBSTEPS` parts whose parameters move in equal steps (switches flip at once).
* **Clocks and sinks.** With a JACK server, :class:`JackOutput` registers two output ports, and
  JACK's process callback takes the audio from a queue of 3 blocks that a render thread keeps
  filled (an empty queue when the callback runs is a missed deadline). Without JACK,
  :func:`run_paced` emulates the same device clock and queue in real time (a block not ready
  when its turn to play comes is a missed deadline) and hands the blocks to a
  :class:`FileOutput` (24-bit wav) or :class:`NullOutput`.
* **Figures.** :class:`EngineStats` keeps the time each block took, the missed deadlines, and for
  every applied message the time from its arrival at the socket to the end of rendering of the
  block that first applies it (``latency_ms``) and to the moment that block starts playing
  (``play_latency_ms``, which adds the output queue).

The streaming backends come from :mod:`export` (issue 5); :func:`open_backend` adapts them.
"""

from __future__ import annotations

import collections
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

from engine import params as P
from engine.io.audio import SAMPLE_RATE
from engine.errors import RefmasterError

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

class Backend:
    """What the engine needs from a streaming chain (adapts :mod:`export`'s classes).

    ``process(block (2, N) float32) -> (2, N) float32``; ``set_params(ChainParams)``;
    ``latency`` (samples); ``reset()``; ``get_state()`` / ``set_state(s)`` when
    ``can_snapshot``.
    """

    name = "backend"
    can_snapshot = False
    latency = 0

    def set_params(self, chain: P.ChainParams) -> None:
        raise NotImplementedError

    def process(self, block: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def reset(self) -> None:
        raise NotImplementedError

    def get_state(self):
        raise NotImplementedError

    def set_state(self, state) -> None:
        raise NotImplementedError


class ExportBackend(Backend):
    """Adapts a :class:`export.streaming.StreamingChain` (``make_chain``) for the live engine.

    State snapshots (for crossfaded changes) use the chain's public ``get_state``/``set_state``
    when it has them. The ONNX chain carries its whole state as one array that each call
    replaces (``OnnxStreamingChain._state``, see export/streaming.py), so a snapshot of it is
    that array; other backends (pedalboard: state inside JUCE plugins) cannot snapshot.
    """

    def __init__(self, chain):
        self.chain = chain
        self.name = chain.backend
        self.latency = chain.latency
        self._public = callable(getattr(chain, "get_state", None)) and callable(getattr(chain, "set_state", None))
        self.can_snapshot = self._public or (chain.backend == "onnx" and hasattr(chain, "_state"))

    def set_params(self, chain: P.ChainParams) -> None:
        self.chain.set_params(chain)

    def process(self, block: np.ndarray) -> np.ndarray:
        return self.chain.process(block)

    def reset(self) -> None:
        self.chain.reset()

    def get_state(self):
        if self._public:
            return self.chain.get_state()
        return self.chain._state

    def set_state(self, state) -> None:
        if self._public:
            self.chain.set_state(state)
        else:
            self.chain._state = state


def open_backend(kind: str, chain: P.ChainParams, onnx_model=None, pedalboard_settings=None) -> Backend:
    """The streaming chain ``kind`` ("onnx" or "pedalboard") from :mod:`export`, set to ``chain``.

    ``onnx_model``: an exported `.onnx` file (default: the graph built from the schema);
    ``pedalboard_settings``: a calibrated settings file from `refmaster export --pedalboard`.
    """
    if kind not in ("onnx", "pedalboard"):
        raise BackendUnavailable(f"unknown backend {kind!r} (onnx or pedalboard)")
    try:
        from export.streaming import make_chain
    except ImportError as e:
        raise BackendUnavailable(f"the {kind} streaming backend is not available: export/ does not provide "
                                 f"export.streaming.make_chain ({e})") from None
    return ExportBackend(make_chain(kind, chain, onnx_model=onnx_model, pedalboard_settings=pedalboard_settings,
                                    threads=1))


# ------------------------------------------------------------------------------ stats

@dataclass
class EngineStats:
    blocks: int = 0
    changed_blocks: int = 0
    missed_deadlines: int = 0
    block_ms: List[float] = field(default_factory=list)
    latency_ms: List[float] = field(default_factory=list)
    play_latency_ms: List[float] = field(default_factory=list)
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

class LiveEngine:
    """Plays ``song`` (2, T) float32 through ``backend``, reading ``state`` at every block."""

    def __init__(self, song: np.ndarray, backend: Backend, state, block: int = DEFAULT_BLOCK,
                 loop: bool = True, playing: bool = True):
        if block < 16 or block > 16384:
            raise RefmasterError(f"block size {block} is outside 16…16384 samples")
        self.song = np.ascontiguousarray(song, dtype=np.float32)
        self.backend = backend
        self.state = state
        self.block = int(block)
        self.loop = loop
        self._lock = threading.Lock()
        self._pos = 0
        self._playing = playing
        self._seek_from: Optional[int] = None
        self.finished = threading.Event()
        self.stats = EngineStats()
        self.last_arrivals: List[float] = []
        # Crossfade ramp for a changed block: 0 until the backend's latency (the first ``latency``
        # output samples left the chain before the change; at most those differ), then linear to 1
        # at the block's last sample. Blocks shorter than twice the latency ramp over their second half.
        lat = int(getattr(backend, "latency", 0))
        start = lat if self.block >= 2 * lat else self.block // 2
        n = np.arange(self.block, dtype=np.float32)
        self.ramp = np.clip((n - start + 1) / (self.block - start), 0.0, 1.0)[None, :].astype(np.float32)
        self.seek_ramp = ((n + 1) / self.block)[None, :].astype(np.float32)
        chain, _ = state.take_for_block()
        self.params = chain if chain is not None else state.snapshot()
        backend.set_params(self.params)
        # warm up (the first calls of a runtime allocate and plan), then start a fresh stream
        for _ in range(3):
            backend.process(np.zeros((2, self.block), np.float32))
        backend.reset()

    # -- transport (called from the OSC thread)
    def play(self) -> None:
        with self._lock:
            self._playing = True

    def stop(self) -> None:
        with self._lock:
            self._playing = False

    def seek(self, seconds: float) -> float:
        n = int(round(seconds * SAMPLE_RATE))
        T = self.song.shape[1]
        if n >= T:
            raise RefmasterError(f"position {seconds:g} s is past the end of the song ({T / SAMPLE_RATE:.1f} s)")
        with self._lock:
            self._seek_from = self._pos
            self._pos = n
        return n / SAMPLE_RATE

    def position(self) -> Tuple[bool, float]:
        with self._lock:
            return self._playing, self._pos / SAMPLE_RATE

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
        t_start = time.perf_counter()
        new, arrivals = self.state.take_for_block()
        x = self._next_input()
        if x is None:
            if new is not None:
                self.params = new
                self.backend.set_params(new)
                self._latencies(arrivals, time.perf_counter())
            return np.zeros((2, self.block), np.float32)
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
            y = y_old * (1.0 - self.ramp) + y_new * self.ramp
            self.params = new
            self.stats.changed_blocks += 1
        else:
            y = self._stepped(x, self.params, new)
            self.params = new
            self.stats.changed_blocks += 1
        done = time.perf_counter()
        self._latencies(arrivals, done)
        self.stats.blocks += 1
        self.stats.block_ms.append((done - t_start) * 1000.0)
        return np.asarray(y, dtype=np.float32)

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


# ------------------------------------------------------------------------------ outputs and clocks

class NullOutput:
    """Discards the audio (benchmarks)."""

    description = "no output (discarded)"

    def write(self, block: np.ndarray) -> None:
        return None

    def close(self) -> None:
        return None


class FileOutput:
    """Writes the stream to a 24-bit wav as it is played."""

    def __init__(self, path, sample_rate: int = SAMPLE_RATE):
        import soundfile as sf

        self.path = Path(path)
        if self.path.suffix.lower() != ".wav":
            raise RefmasterError(f"{self.path}: live output must be a .wav file")
        if not self.path.parent.is_dir():
            raise RefmasterError(f"{self.path}: folder {self.path.parent} does not exist")
        self._f = sf.SoundFile(str(self.path), "w", samplerate=sample_rate, channels=2, subtype="PCM_24")
        self.description = f"file {self.path}"
        self.frames = 0

    def write(self, block: np.ndarray) -> None:
        self._f.write(np.clip(block, -1.0, 1.0).T)
        self.frames += block.shape[1]

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()


def run_paced(engine: LiveEngine, output, stop: threading.Event, max_blocks: Optional[int] = None,
              queue_blocks: int = 3) -> None:
    """Render in real time for an output without a clock of its own (a file, nothing).

    Emulates an audio device that starts playing block n at ``T0 + n·d`` (d = block duration) from
    a queue of at most ``queue_blocks`` blocks, like :class:`JackOutput`: block n may be rendered
    from ``T0 + (n − queue_blocks + 1)·d`` and must be ready by ``T0 + n·d``. A block that is
    late is a missed deadline (the device would have played silence); the clock then carries on
    from the late block, as a device does after an underrun.
    """
    if queue_blocks < 2:
        raise RefmasterError("the output queue needs at least 2 blocks (one playing, one being rendered)")
    d = engine.block / SAMPLE_RATE
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


class JackOutput:
    """Two JACK output ports fed from a queue that a render thread keeps ``queue_blocks`` deep."""

    def __init__(self, engine: LiveEngine, server: Optional[str] = None, client_name: str = "refmaster",
                 connect: Optional[str] = "system:playback", queue_blocks: int = 3):
        import jack

        messages: List[str] = []
        jack.set_error_function(messages.append)  # libjack's own lines would repeat what we say below
        try:
            self.client = jack.Client(client_name, servername=server, no_start_server=True)
        except jack.JackOpenError as e:
            raise RefmasterError(f"no JACK server{f' {server!r}' if server else ''} is running ({e})") from None
        finally:
            jack.set_error_function(None)
        if self.client.samplerate != SAMPLE_RATE:
            self.client.close()
            raise RefmasterError(f"JACK runs at {self.client.samplerate} Hz; refmaster plays at {SAMPLE_RATE} Hz "
                                 f"(start JACK at 44100 Hz, or play to a file)")
        self.engine = engine
        self.ports = [self.client.outports.register(f"out_{i}") for i in (1, 2)]
        cap = max(queue_blocks * engine.block, 2 * self.client.blocksize) + engine.block + self.client.blocksize
        self._buf = np.zeros((2, cap), np.float32)
        self._cap = cap
        self._w = 0  # samples written (total)
        self._r = 0  # samples read (total)
        self._target = max(queue_blocks * engine.block, self.client.blocksize + engine.block)
        self._cond = threading.Condition()
        self._started = False
        self._blocks = collections.deque()  # (first sample, arrivals) of rendered, not yet played blocks
        self.underruns = 0
        self.xruns = 0
        self.client.set_process_callback(self._process)
        self.client.set_xrun_callback(self._xrun)
        self._connect = connect
        self.description = f"JACK client '{self.client.name}' ({self.client.blocksize}-sample periods)"

    def _xrun(self, delay_usecs: float) -> None:
        self.xruns += 1

    def _process(self, frames: int) -> None:
        outs = [p.get_array() for p in self.ports]
        with self._cond:
            avail = self._w - self._r
            if avail >= frames:
                i = self._r % self._cap
                first = min(frames, self._cap - i)
                for c in range(2):
                    outs[c][:first] = self._buf[c, i:i + first]
                    outs[c][first:] = self._buf[c, :frames - first]
                now = time.perf_counter()
                while self._blocks and self._blocks[0][0] < self._r + frames:
                    start, arrivals = self._blocks.popleft()
                    self.engine.played(arrivals, now + max(0, start - self._r) / SAMPLE_RATE)
                self._r += frames
            else:
                for o in outs:
                    o.fill(0.0)
                if self._started:
                    self.underruns += 1
                    self.engine.stats.missed_deadlines += 1
            self._cond.notify()

    def _push(self, y: np.ndarray) -> None:
        n = y.shape[1]
        i = self._w % self._cap
        first = min(n, self._cap - i)
        self._buf[:, i:i + first] = y[:, :first]
        self._buf[:, :n - first] = y[:, first:]

    def start(self) -> None:
        """Activate the client (its ports become connectable) and connect the outputs."""
        self.client.activate()
        self._active = True
        if self._connect:
            targets = self.client.get_ports(self._connect, is_audio=True, is_input=True)
            for src, dst in zip(self.ports, targets):
                self.client.connect(src, dst)

    _active = False

    def run(self, stop: threading.Event, max_blocks: Optional[int] = None) -> None:
        """Render into the queue until ``stop`` (runs in the calling thread)."""
        if not self._active:
            self.start()
        n = 0
        while not stop.is_set() and (max_blocks is None or n < max_blocks):
            with self._cond:
                while self._w - self._r + self.engine.block > self._target and not stop.is_set():
                    self._cond.wait(timeout=0.1)
            if stop.is_set():
                break
            y = self.engine.render_block()
            arrivals = self.engine.take_arrivals()
            with self._cond:
                self._blocks.append((self._w, arrivals))
                self._push(y)
                self._w += y.shape[1]
                if self._w - self._r + self.engine.block > self._target:
                    self._started = True  # primed: from now on an empty queue is a missed deadline
            n += 1
            if self.engine.finished.is_set():
                break
        # let the queue drain before the client goes (an empty queue is now the end, not a miss)
        deadline = time.monotonic() + 1.0
        with self._cond:
            self._started = False
            while self._w > self._r and time.monotonic() < deadline:
                self._cond.wait(timeout=0.05)

    def close(self) -> None:
        if self._active:
            self.client.deactivate()
            self._active = False
        self.client.close()


def jack_available(server: Optional[str] = None) -> bool:
    """True when a JACK server (``server`` or the default) is running and JACK-Client is installed."""
    try:
        import jack
    except (ImportError, OSError):
        return False
    messages: List[str] = []
    jack.set_error_function(messages.append)  # "cannot connect to server" is the expected answer
    try:
        c = jack.Client("refmaster-probe", servername=server, no_start_server=True)
    except jack.JackOpenError:
        return False
    finally:
        jack.set_error_function(None)
    c.close()
    return True
