"""The JACK insert in a process of its own (what `serve --insert` and `refmaster bench insert` run).

Why a process: JACK calls the insert's callback from a real-time thread, and in Python that
callback needs the interpreter lock. In one process with the OSC server, a flood of OSC messages
(10,000 a second: every one parsed, checked and applied under the lock) makes the callback wait
for the lock, and on a busy machine the OSC thread is preempted while it holds it: the callback
misses its period, an xrun. So the audio side (:class:`bridge.live.insert.JackInsert` with its
render thread and :class:`bridge.live.engine.ChainProcessor`) runs in a child process whose only
other Python threads receive the engine's parameters (at most once a :data:`FORWARD_INTERVAL_S`,
whatever the message rate) and wait for the end, all of them real-time where the system allows
(:func:`bridge.live.insert.render_thread_realtime`: none can be preempted holding the lock by
ordinary work); the OSC server, the shared state, the change record and the saving
stay in the parent, unchanged.

* Parent → child: ``("state", values, switches, controls, arrivals)`` whenever the state changed
  (coalesced: the latest Θ and live controls, and the arrival times of the messages folded in, for
  the message → audible latency; ``time.perf_counter`` is the system's monotonic clock, the same in
  both processes), ``("stop",)``.
* Child → parent: ``("ready", info)`` or ``("error", one line)`` once set up; ``("done", result)``
  at the end (figures, stats, the failure that stopped it if any).
* The child ignores SIGINT and SIGTERM (the parent decides when to stop and saves the preset) and
  stops by itself when the parent goes away.
"""

from __future__ import annotations

import multiprocessing
import signal
import threading
import time
from typing import List, Optional, Sequence

import numpy as np

from engine import params as P
from engine.errors import RefmasterError

#: How often the parent forwards the state to the child (s): under a flood, the child sees at most
#: this many updates a second, a few per block.
FORWARD_INTERVAL_S = 0.001
#: How long the parent waits for the child to set up (s): JACK, the backend, the block measurement.
START_TIMEOUT_S = 120.0


class StateFeed:
    """What :class:`ChainProcessor` reads in the child, fed from the parent's state."""

    def __init__(self, chain: P.ChainParams, controls: dict):
        self._lock = threading.Lock()
        self._chain, self._controls = chain, dict(controls)
        self._pending: Optional[P.ChainParams] = chain
        self._arrivals: List[float] = []

    def put(self, values: dict, switches: dict, controls: dict, arrivals: List[float]) -> None:
        chain = P.ChainParams(dict(values), dict(switches))
        with self._lock:
            self._chain = self._pending = chain
            self._controls = dict(controls)
            self._arrivals.extend(arrivals)

    def take_for_block(self):
        with self._lock:
            new, arrivals = self._pending, self._arrivals
            self._pending, self._arrivals = None, []
        return new, arrivals

    def snapshot(self) -> P.ChainParams:
        with self._lock:
            return self._chain

    def controls(self) -> dict:
        with self._lock:
            return dict(self._controls)


def _setup(opts: dict, feed: StateFeed):
    """The child's insert, as `serve --insert` asks for it; RefmasterError for one clear line."""
    from bridge.live.engine import ChainProcessor, open_backend
    from bridge.live.insert import BLOCK_BUDGET, JackInsert, choose_block, open_client
    from engine.rates import check_rate

    client = open_client(opts["server"], opts["name"])
    try:
        rate, period = client.samplerate, client.blocksize
        try:
            check_rate(rate)
        except RefmasterError as e:
            raise RefmasterError(f"the JACK server runs at {rate} Hz: {e}") from None
        chain = feed.snapshot()
        backend = open_backend(opts["backend"], chain, onnx_model=opts["onnx_model"],
                               pedalboard_settings=opts["pedalboard_settings"])
        backend.set_sample_rate(rate)
        block = opts["block"]
        if block:
            if block % period or not period <= block <= 16384:
                raise RefmasterError(f"--insert-block {block}: must be a multiple of JACK's period ({period}) "
                                     f"up to 16384")
            why = "as asked (--insert-block)"
        else:
            block, p99 = choose_block(backend, chain, period, rate)
            why = (f"the chain renders a changed block of {block} frames in {1000 * p99:.2f} ms (p99), within "
                   f"{BLOCK_BUDGET:.0%} of its {1000 * block / rate:.1f} ms"
                   + ("" if block == period else f"; {period} frames took longer"))
        return JackInsert(client, ChainProcessor(backend, feed, block)), why
    except BaseException:
        client.close()
        raise


def _time_collections() -> List[float]:
    """The duration (ms) of every garbage collection from now on (a collection holds the lock)."""
    import gc

    out: List[float] = []
    began = [0.0]

    def timer(phase: str, info: dict) -> None:
        if phase == "start":
            began[0] = time.perf_counter()
        else:
            out.append(1000.0 * (time.perf_counter() - began[0]))

    gc.callbacks.append(timer)
    return out


def run_child(conn, opts: dict) -> None:
    """The child process: set up, say ready, run until told to stop (or the limit, or a failure)."""
    from bridge.live.engine import prepare_realtime
    from bridge.live.insert import render_thread_realtime

    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, signal.SIG_IGN)
    feed = StateFeed(P.ChainParams(opts["values"], opts["switches"]), opts["controls"])
    try:
        insert, why = _setup(opts, feed)
    except RefmasterError as e:
        conn.send(("error", str(e)))
        return
    stop = threading.Event()
    prepare_realtime()
    gc_ms = _time_collections()
    render = threading.Thread(target=insert.run, args=(stop,), name="render", daemon=True)
    render.start()   # waiting for input before JACK's first callback: the first block is not late
    try:
        insert.start(opts["connect_from"], opts["connect_to"])
    except RefmasterError as e:
        stop.set()
        render.join(timeout=5)
        insert.close()
        conn.send(("error", str(e)))
        return
    proc = insert.processor
    try:
        conn.send(("ready", {"latency": insert.latency, "ahead": insert.ahead, "block": insert.block, "why": why,
                             "description": insert.description, "chain_latency": int(proc.backend.latency),
                             "rate": insert.rate, "period": insert.period}))
    except (BrokenPipeError, OSError):   # the parent went away while this one set up
        stop.set()
        render.join(timeout=5)
        insert.close()
        return

    def receive():
        # real-time too: a thread the scheduler preempts while it holds the interpreter lock would
        # stall JACK's callback (this one runs at most once a FORWARD_INTERVAL_S, briefly)
        render_thread_realtime()
        try:
            while not stop.is_set():
                msg = conn.recv()
                if msg[0] == "state":
                    feed.put(*msg[1:])
                elif msg[0] == "stop":
                    break
        except (EOFError, OSError):
            pass   # the parent is gone
        stop.set()

    threading.Thread(target=receive, name="state", daemon=True).start()
    render_thread_realtime()   # and this one, which only looks every 50 ms
    limit = None if opts["seconds"] is None else opts["seconds"] * insert.rate / insert.block
    while not stop.wait(0.05) and not insert.stopped.is_set():
        if limit is not None and proc.stats.blocks >= limit:
            break
    stop.set()
    render.join(timeout=10)
    insert.close()
    block_share = np.asarray(proc.stats.block_ms, dtype=np.float64) / (1000.0 * insert.block / insert.rate)
    pct = (lambda q: float(np.percentile(block_share, q))) if block_share.size else (lambda q: float("nan"))
    result = {"failure": insert.failure, "figures": insert.figures(), "stats": proc.stats.summary(),
              "render_realtime": insert.render_realtime, "block_p50": pct(50), "block_p99": pct(99),
              "block_max": pct(100), "gc_collections": len(gc_ms), "gc_pause_ms_max": max(gc_ms, default=0.0)}
    try:
        conn.send(("done", result))
    except (BrokenPipeError, OSError):
        pass


class InsertProcess:
    """The parent's handle on the child: start it (raises the child's one line if it cannot set up),
    forward ``state`` to it, learn when it stopped by itself, stop it and collect its figures."""

    def __init__(self, state, server: Optional[str], name: str, backend: str = "onnx", block: Optional[int] = None,
                 connect_from: Sequence[str] = (), connect_to: Sequence[str] = (), seconds: Optional[float] = None,
                 onnx_model: Optional[str] = None, pedalboard_settings: Optional[str] = None):
        self.state = state
        chain = state.snapshot()
        opts = {"server": server, "name": name, "backend": backend, "block": block, "connect_from": list(connect_from),
                "connect_to": list(connect_to), "seconds": seconds, "onnx_model": onnx_model,
                "pedalboard_settings": pedalboard_settings, "values": dict(chain.values),
                "switches": dict(chain.switches), "controls": state.controls()}
        ctx = multiprocessing.get_context("spawn")   # no fork of a process with threads and libraries
        self.conn, child_conn = ctx.Pipe()
        self.proc = ctx.Process(target=run_child, args=(child_conn, opts), name="refmaster-insert", daemon=True)
        self.proc.start()
        child_conn.close()
        self.result: Optional[dict] = None
        self._stop = threading.Event()
        kind, info = self._receive(START_TIMEOUT_S, "start")
        if kind == "error":
            self.proc.join(timeout=10)
            raise RefmasterError(info)
        self.info = info
        state.take_for_block()   # the child starts from this state; forward what changes from now on
        self._forwarder = threading.Thread(target=self._forward, name="insert-feed", daemon=True)
        self._forwarder.start()

    def _receive(self, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while not self.conn.poll(0.05):
            if not self.proc.is_alive() and not self.conn.poll(0):
                raise RefmasterError(f"the insert's audio process ended during {what} (exit status {self.proc.exitcode})")
            if time.monotonic() > deadline:
                raise RefmasterError(f"the insert's audio process did not {what} within {timeout:g} s")
        return self.conn.recv()

    def _forward(self) -> None:
        while not self._stop.wait(FORWARD_INTERVAL_S):
            new, arrivals = self.state.take_for_block()
            if new is None:
                continue
            try:
                self.conn.send(("state", dict(new.values), dict(new.switches), self.state.controls(), arrivals))
            except (BrokenPipeError, OSError):
                return

    def finished(self) -> bool:
        """True once the child stopped by itself (the --seconds limit, or a failure); then :attr:`result`."""
        if self.result is None and self.conn.poll(0):
            kind, r = self.conn.recv()
            if kind == "done":
                self.result = r
        if self.result is None and not self.proc.is_alive() and not self.conn.poll(0):
            self.result = {"failure": f"the insert's audio process ended unexpectedly (exit status "
                                      f"{self.proc.exitcode})", "figures": None, "stats": None}
        return self.result is not None

    def stop(self) -> dict:
        """Stop the child (if it still runs) and return its result."""
        self._stop.set()
        if not self.finished():
            try:
                self.conn.send(("stop",))
            except (BrokenPipeError, OSError):
                pass
            try:
                kind, r = self._receive(30.0, "stop")
                self.result = r if kind == "done" else {"failure": str(r), "figures": None, "stats": None}
            except (RefmasterError, EOFError) as e:
                self.result = {"failure": str(e), "figures": None, "stats": None}
        self.proc.join(timeout=10)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        self.conn.close()
        return self.result
