"""Where the live engine's blocks go: :class:`JackOutput` (two JACK ports, JACK's clock),
:class:`FileOutput` (a 24-bit wav), :class:`NullOutput` (nothing); :func:`jack_available`.

Outputs without a clock of their own are driven by :func:`bridge.live.engine.run_paced`;
:meth:`JackOutput.run` renders into the queue that JACK's process callback plays from.
"""

from __future__ import annotations

import collections
import threading
import time
from pathlib import Path
from typing import List, Optional

import numpy as np

from bridge.live.engine import LiveEngine
from engine.errors import RefmasterError
from engine.params import SAMPLE_RATE


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
        self.rate = engine.backend.sample_rate
        if self.client.samplerate != self.rate:
            self.client.close()
            raise RefmasterError(f"JACK runs at {self.client.samplerate} Hz, the engine at {self.rate} Hz "
                                 f"(start serve again: it plays at the rate JACK runs at)")
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
                    self.engine.played(arrivals, now + max(0, start - self._r) / self.rate)
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
    return jack_rate(server) is not None


def jack_rate(server: Optional[str] = None) -> Optional[int]:
    """The sample rate of the JACK server (``server`` or the default), None when none runs."""
    try:
        import jack
    except (ImportError, OSError):
        return None
    messages: List[str] = []
    jack.set_error_function(messages.append)  # "cannot connect to server" is the expected answer
    try:
        c = jack.Client("refmaster-probe", servername=server, no_start_server=True)
    except jack.JackOpenError:
        return None
    finally:
        jack.set_error_function(None)
    rate = c.samplerate
    c.close()
    return int(rate)
