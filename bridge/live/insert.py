"""refmaster as an insert on a JACK graph (`refmaster serve --insert`): the DAW's master bus into
two input ports, the chain, two output ports, at the JACK server's rate and period.

* **Clock and blocks.** JACK calls :meth:`JackInsert._process` once per period of ``P`` frames (64–
  2048). The callback only copies: the period's input into an input ring, and ``P`` frames of
  output from an output ring. A render thread runs the chain (:class:`bridge.live.engine.ChainProcessor`:
  OSC changes crossfaded, bypass and amount) on internal blocks of ``B`` frames (``B`` a multiple
  of ``P``; :func:`choose_block` picks the smallest in which the chain renders a changed block
  (rendered twice and crossfaded) in at most :data:`BLOCK_BUDGET` of its duration at the 99th
  percentile, measured at start). The output ring starts
  ``D = 2B − P`` frames ahead, which gives the render thread one whole block of time per block.
* **Latency.** Output frame ``n + L`` belongs to input frame ``n``, ``L = D + chain latency``
  (1024 frames at B = 512, P = 128 with the ONNX chain), reported to JACK on the ports
  (:class:`bridge.live.jack_latency.LatencyReporter`: capture latency of the outputs = that of the
  inputs + L, playback latency of the inputs = that of the outputs + L), so a DAW compensates it.
* **Freewheeling** (a DAW's export or bounce: JACK runs the graph as fast as it can, no clock):
  the callback waits for the render thread's block instead of playing silence, so an export
  through the insert is the chain's output, sample for sample, with the same latency.
* **When things go wrong.** A block not ready in time (the machine too busy) is played as silence
  and counted (``late``); the alignment, and so the reported latency, never changes (a render thread
  that fell a whole block behind skips input blocks to catch up). JACK's xruns are counted. A
  server that shuts down, or a period change, stops the insert with the reason (`serve` then saves
  the preset and says so in one line).
"""

from __future__ import annotations

import threading
import time
from typing import List, Optional, Sequence, Tuple

import numpy as np

from engine import params as P
from engine.errors import RefmasterError

#: Largest internal block :func:`choose_block` tries (frames).
MAX_BLOCK = 8192
#: A changed block (rendered with the old and the new parameters, crossfaded) may take at most this
#: share of its duration at the 99th percentile, measured at start without OSC traffic: under
#: 10,000 messages a second the render takes about twice as long (`refmaster bench insert`).
BLOCK_BUDGET = 0.35
#: Callback durations kept for the figures (a ring of the latest).
TIMES_KEPT = 1 << 20


def open_client(server: Optional[str], name: str):
    """A JACK client on ``server`` (None: the default), or one clear error."""
    try:
        import jack
    except (ImportError, OSError) as e:
        raise RefmasterError(f"JACK is not available: {e} (install jackd2 and the JACK-Client package)") from None
    messages: List[str] = []
    jack.set_error_function(messages.append)   # libjack's own lines would repeat what we say
    try:
        return jack.Client(name, servername=server, no_start_server=True)
    except jack.JackOpenError:
        raise RefmasterError(f"no JACK server{f' {server!r}' if server else ''} is running: start one (jackd, "
                             f"qjackctl, or a PipeWire session through pw-jack) and try again") from None
    finally:
        jack.set_error_function(None)


def choose_block(backend, chain, period: int, rate: int, seconds: float = 0.4) -> Tuple[int, float]:
    """The smallest internal block (``period`` × 2^k, up to :data:`MAX_BLOCK`) that ``backend``
    renders in time on the insert's real path at its most expensive: a parameter change in every
    block (so each block is rendered twice and crossfaded, as under a stream of OSC messages) and
    the bypass's loudness match, measured on noise now with a :class:`ChainProcessor` of its own
    (``chain``; nothing recorded anywhere): ``p99 ≤ BLOCK_BUDGET × block duration``. Returns
    ``(block, p99 seconds of that block)``; the largest tried if none is fast enough. The backend is
    left reset (the insert's processor sets its parameters again)."""
    from bridge.live.engine import ChainProcessor
    from bridge.osc.state import BridgeState

    rng = np.random.default_rng(0)
    sizes = [period << k for k in range(12) if (period << k) <= max(period, MAX_BLOCK)]
    p99 = float("inf")
    gain = chain.values["gain.gain"]
    other = gain - 0.01 if gain - 0.01 >= P.spec("gain.gain").min else gain + 0.01   # a change, whatever Θ
    for block in sizes:
        state = BridgeState(chain, record=False)
        proc = ChainProcessor(backend, state, block)
        x = (0.1 * rng.standard_normal((2, block))).astype(np.float32)
        n = max(8, int(seconds * rate / block))
        times = []
        for i in range(n + 3):   # the first 3 warm up
            state.set_value("gain.gain", other if i % 2 else gain)
            t0 = time.perf_counter()
            proc.process(x)
            times.append(time.perf_counter() - t0)
        p99 = float(np.percentile(times[3:], 99))
        if p99 <= BLOCK_BUDGET * block / rate:
            break
    backend.set_params(chain)
    backend.reset()
    return block, p99


class _Ring:
    """A ``(2, capacity)`` ring of frames indexed by absolute frame numbers."""

    def __init__(self, capacity: int):
        self.buf = np.zeros((2, capacity), np.float32)
        self.cap = capacity

    def write(self, start: int, x: np.ndarray) -> None:
        n = x.shape[1]
        i = start % self.cap
        k = min(n, self.cap - i)
        self.buf[:, i:i + k] = x[:, :k]
        self.buf[:, :n - k] = x[:, k:]

    def read_into(self, start: int, outs: Sequence[np.ndarray], n: int, offset: int = 0) -> None:
        i = start % self.cap
        k = min(n, self.cap - i)
        for c, o in enumerate(outs):
            o[offset:offset + k] = self.buf[c, i:i + k]
            o[offset + k:offset + n] = self.buf[c, :n - k]

    def read(self, start: int, n: int) -> np.ndarray:
        out = np.empty((2, n), np.float32)
        self.read_into(start, out, n)
        return out


class JackInsert:
    """Two JACK inputs → ``processor`` → two JACK outputs (see the module docstring).

    ``client``: an open JACK client (:func:`open_client`); ``processor``: a
    :class:`bridge.live.engine.ChainProcessor` whose backend runs at the client's rate and whose
    block is the internal block (a multiple of the client's period).
    """

    def __init__(self, client, processor):
        from bridge.live.jack_latency import LatencyReporter

        self.client, self.processor = client, processor
        self.rate, self.period, self.block = client.samplerate, client.blocksize, processor.block
        if self.block % self.period:
            raise RefmasterError(f"internal block {self.block} is not a multiple of JACK's period {self.period}")
        self.ahead = 2 * self.block - self.period                 # D: output frames primed ahead
        self.latency = self.ahead + int(processor.backend.latency)
        self.inputs = [client.inports.register(f"in_{i}") for i in (1, 2)]
        self.outputs = [client.outports.register(f"out_{i}") for i in (1, 2)]
        self._in = _Ring(16 * self.block + 4 * self.period)
        self._out = _Ring(self.ahead + 16 * self.block)
        self._in_w = self._in_r = 0          # input frames written by the callback / taken by the renderer
        self._out_w, self._out_r = self.ahead, 0
        self._lock = threading.Condition()   # the counters; notified when output is written
        self._wake = threading.Event()
        self.freewheeling = False
        self._blocks: List[Tuple[int, List[float]]] = []   # (first output frame, arrivals) not yet played
        self.xruns = self.late = self.late_freewheeling = self.skipped = self.callbacks = 0
        self.callback_s = np.zeros(TIMES_KEPT, np.float64)
        self.stopped = threading.Event()
        self.render_realtime = False
        self._realtime_threads: set = set()
        self.failure: Optional[str] = None
        self.server_gone = False
        self._active = False
        self._reporter = LatencyReporter(client, self.inputs, self.outputs, lambda: self.latency)
        client.set_process_callback(self._process)
        client.set_xrun_callback(self._xrun)
        client.set_shutdown_callback(self._shutdown)
        client.set_blocksize_callback(self._blocksize)
        client.set_freewheel_callback(self._freewheel)
        self.description = (f"JACK client '{client.name}' at {self.rate} Hz, {self.period}-frame periods: "
                            f"{self.inputs[0].name}, {self.inputs[1].name} -> {self.outputs[0].name}, "
                            f"{self.outputs[1].name}")

    # -- JACK's threads
    def _process(self, frames: int) -> None:
        t0 = time.perf_counter()
        ins = [p.get_array() for p in self.inputs]
        outs = [p.get_array() for p in self.outputs]
        with self._lock:
            w, r, ow = self._in_w, self._out_r, self._out_w
        i = w % self._in.cap
        k = min(frames, self._in.cap - i)
        for c in range(2):
            self._in.buf[c, i:i + k] = ins[c][:k]
            self._in.buf[c, :frames - k] = ins[c][k:]
        ready = min(frames, max(0, ow - r))
        if ready < frames and self.freewheeling:
            ready = self._wait_for_output(r, frames, w + frames)
        if ready:
            self._out.read_into(r, outs, ready)
        if ready < frames:
            for o in outs:
                o[ready:] = 0.0
            self.late += 1
            self.late_freewheeling += self.freewheeling   # an export that would have a gap in it
        with self._lock:
            self._in_w = w + frames
            self._out_r = r + frames
            played = [b for b in self._blocks if b[0] < r + frames]
            if played:
                self._blocks = [b for b in self._blocks if b[0] >= r + frames]
        self._wake.set()
        for start, arrivals in played:
            self.processor.played(arrivals, t0 + max(0, start - r) / self.rate)
        self.callback_s[self.callbacks % TIMES_KEPT] = time.perf_counter() - t0
        self.callbacks += 1

    def _wait_for_output(self, r: int, frames: int, written: int) -> int:
        """Freewheeling: hand the render thread this period's input and wait for the output the
        period plays (its input is complete: D >= B), a few seconds at most."""
        with self._lock:
            self._in_w = written
            self._wake.set()
            deadline = time.monotonic() + 5.0
            while self._out_w - r < frames and not self.stopped.is_set() and time.monotonic() < deadline:
                self._lock.wait(0.05)
            return min(frames, max(0, self._out_w - r))

    def _notification_thread(self) -> None:
        """libjack calls the callbacks below on a thread of its own, an ordinary one: made real-time
        the first time (:func:`render_thread_realtime`), since it runs Python and so takes the lock
        JACK's callback needs. Preempted holding it, it stalled the callback for up to 25 periods
        on a busy machine, and each xrun's own callback then made the next one likelier."""
        if threading.get_ident() not in self._realtime_threads:
            self._realtime_threads.add(threading.get_ident())
            render_thread_realtime()

    def _freewheel(self, starting: bool) -> None:
        self._notification_thread()
        self.freewheeling = bool(starting)

    def _xrun(self, delay_usecs: float) -> None:
        self._notification_thread()
        self.xruns += 1

    def _shutdown(self, status, reason: str) -> None:
        self.server_gone = True
        self.failure = f"the JACK server shut down ({reason.strip() or 'no reason given'})"
        self.stopped.set()
        self._wake.set()

    def _blocksize(self, frames: int) -> None:
        self._notification_thread()   # JACK calls this one at activation: the thread is real-time from then on
        if frames != self.period:
            self.failure = (f"JACK changed its period from {self.period} to {frames} frames: start "
                            f"`refmaster serve --insert` again for the new period")
            self.stopped.set()
            self._wake.set()

    # -- the render thread
    def run(self, stop: threading.Event) -> None:
        """Render blocks as the callback delivers input, until ``stop`` or a failure (in a thread of
        its own, made real-time where the system allows: :func:`render_thread_realtime`)."""
        self.render_realtime = render_thread_realtime()
        B = self.block
        while not stop.is_set() and not self.stopped.is_set():
            with self._lock:
                have = self._in_w - self._in_r
            if have < B:
                self._wake.wait(timeout=0.2)
                self._wake.clear()
                continue
            with self._lock:
                start, out_at, played_to = self._in_r, self._out_w, self._out_r
            if out_at + B <= played_to:     # a whole block late: skip it, the alignment stays
                with self._lock:
                    self._in_r, self._out_w = start + B, out_at + B
                self.skipped += 1
                continue
            y = self.processor.process(self._in.read(start, B))
            arrivals = self.processor.take_arrivals()
            self._out.write(out_at, y)
            with self._lock:
                self._in_r, self._out_w = start + B, out_at + B
                if arrivals:
                    self._blocks.append((out_at, arrivals))
                self._lock.notify_all()

    # -- lifecycle
    def start(self, connect_from: Sequence[str] = (), connect_to: Sequence[str] = ()) -> None:
        """Activate the client and make the connections (a missing port is one clear error)."""
        import jack

        sources = self._ports(connect_from, is_output=True, what="--connect-from")
        targets = self._ports(connect_to, is_output=False, what="--connect-to")
        self.client.activate()
        self._active = True
        try:
            for src, dst in zip(_two(sources), self.inputs):
                self.client.connect(src, dst)
            for src, dst in zip(self.outputs, _two(targets)):
                self.client.connect(src, dst)
        except jack.JackError as e:
            raise RefmasterError(f"JACK refused a connection: {e}") from None
        self._reporter.changed()

    def _ports(self, names: Sequence[str], is_output: bool, what: str):
        import jack

        if not names:
            return []
        if len(names) > 2:
            raise RefmasterError(f"{what}: give one port (to both channels) or two (left, right), not {len(names)}")
        found = []
        for n in names:
            try:
                port = self.client.get_port_by_name(n)
            except jack.JackError:
                port = None
            if port is None or not port.is_audio or port.is_output != is_output:
                have = [p.name for p in self.client.get_ports(is_audio=True, is_output=is_output)
                        if not p.name.startswith(self.client.name + ":")]
                kind = "audio output" if is_output else "audio input"
                listing = ", ".join(have[:8]) + (" …" if len(have) > 8 else "") if have else "none"
                raise RefmasterError(f"{what}: JACK has no {kind} port '{n}' ({kind} ports now: {listing})")
            found.append(port)
        return found

    def close(self) -> None:
        """Deactivate and close (skipped where the server is gone: the client is then invalid)."""
        if self.server_gone:
            return
        if self._active:
            self.client.deactivate()
            self._active = False
        self.client.close()

    def figures(self) -> dict:
        """xruns, late and skipped blocks, callback time as a fraction of the period (p50/p99/max)."""
        n = min(self.callbacks, TIMES_KEPT)
        t = self.callback_s[:n] / (self.period / self.rate) if n else np.array([np.nan])
        return {"xruns": self.xruns, "late_periods": self.late, "late_freewheeling": self.late_freewheeling,
                "skipped_blocks": self.skipped,
                "callbacks": self.callbacks, "callback_p50": float(np.percentile(t, 50)),
                "callback_p99": float(np.percentile(t, 99)), "callback_max": float(np.max(t)),
                "latency_frames": self.latency, "block": self.block, "period": self.period, "rate": self.rate}


#: SCHED_FIFO priority of the render thread: the lowest real-time one, under JACK's own threads
#: (which libjack runs at the server's priority, 10 by default) and above every ordinary process.
RENDER_PRIORITY = 1


def render_thread_realtime() -> bool:
    """Make the calling thread SCHED_FIFO at :data:`RENDER_PRIORITY` if the system allows (Linux,
    root or an rtprio limit: what JACK's own real-time mode needs too); False where it does not.

    Why: the render thread holds the interpreter lock while it works, and JACK's callback needs
    that lock. An ordinary thread that the scheduler preempts while holding it (a busy machine)
    stalls the callback for as long as it waits for a core (measured: up to 20 blocks late at
    period 128, 48 kHz, on 2 busy cores); a real-time one is not preempted by ordinary work. It
    waits for input between blocks, so it never holds a core for more than a block's render."""
    import os

    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(RENDER_PRIORITY))
        return True
    except (AttributeError, OSError):
        return False


def _two(ports):
    """One port feeds (or is fed by) both channels; two are left and right."""
    return [ports[0], ports[0]] if len(ports) == 1 else list(ports)
