"""`refmaster bench osc`: the OSC server under load while the live engine renders.

Two sender processes (plain UDP sockets with python-osc-built datagrams, each on its own half of
the parameters: one in real units at /refmaster/param/..., the other normalised at
/refmaster/norm/...) send ``rate`` messages per second in total for ``seconds`` seconds to a
server whose engine renders a song block by block in real time through a streaming backend,
with one subscriber receiving the feedback. The engine's clock is :func:`bridge.live.engine.run_paced`
(an emulated device playing from a 3-block queue, as the JACK output does). Reports: messages
sent / received / applied, UDP drops, blocks rendered and missed deadlines, block render time
p50/p99, latency from a message's arrival to the end of the block that first applies it and to
the moment that block starts playing (p50/p99), and whether the final state equals the last
value sent to every address.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from typing import List, Optional

import numpy as np

from bridge.live.engine import prepare_realtime
from engine import params as P
from engine.params import SAMPLE_RATE

#: A sender: takes its job as JSON in argv[1], sends, prints the last value per address as JSON.
SENDER = r"""
import json, socket, sys, time
import numpy as np
from pythonosc.osc_message_builder import OscMessageBuilder
job = json.loads(sys.argv[1])
rng = np.random.default_rng(job["seed"])
addrs = job["addresses"]          # [[address, lo, hi], ...]
n = int(job["rate"] * job["seconds"])
pick = rng.integers(0, len(addrs), n)
vals = np.array([rng.uniform(addrs[i][1], addrs[i][2]) for i in pick], dtype=np.float32)
dgrams = []
for i, v in zip(pick, vals):
    b = OscMessageBuilder(addrs[i][0]); b.add_arg(float(v), "f"); dgrams.append(b.build().dgram)
last = {}
for i, v in zip(pick, vals):
    last[addrs[i][0]] = float(v)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
to = (job["host"], job["port"])
print(json.dumps({"ready": True}), flush=True)
start = time.perf_counter() + job["start_in"]
batch = max(1, int(job["rate"] / 1000))          # one batch per millisecond
sent = 0
for k in range(0, n, batch):
    due = start + k / job["rate"]
    while True:
        now = time.perf_counter()
        if now >= due:
            break
        time.sleep(min(due - now, 0.0005))
    for d in dgrams[k:k + batch]:
        s.sendto(d, to)
        sent += 1
print(json.dumps({"sent": sent, "last": last, "elapsed": time.perf_counter() - start}), flush=True)
"""


class _GcPauses:
    """Times every garbage collection while the benchmark runs (a collection holds the GIL, so a
    long one stalls the render thread): the answer to "was a late block the collector?"."""

    def __init__(self):
        import gc

        self.ms: List[float] = []
        self._t = 0.0
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._t = time.perf_counter()
        else:
            self.ms.append((time.perf_counter() - self._t) * 1000.0)

    def close(self) -> None:
        import gc

        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)


def _sender_jobs(host: str, port: int, rate: float, seconds: float, senders: int) -> List[dict]:
    from bridge.osc import space as A

    specs = list(P.PARAMS)
    share = np.array_split(np.arange(len(specs)), senders)
    jobs = []
    for j, idx in enumerate(share):
        if j % 2 == 0:
            addrs = [[A.param_address(specs[i]), specs[i].min, specs[i].max] for i in idx]
        else:
            addrs = [[A.norm_address(specs[i]), 0.0, 1.0] for i in idx]
        jobs.append({"host": host, "port": port, "rate": rate / senders, "seconds": seconds,
                     "seed": 1000 + j, "addresses": addrs, "start_in": 0.5})
    return jobs


def bench_osc(seconds: float = 10.0, rate: float = 10000.0, senders: int = 2, block: int = 512,
              backend: str = "onnx", song: Optional[np.ndarray] = None, subscriber: bool = True) -> dict:
    """Run the load test; returns the figures (see the module docstring)."""
    from bridge.live.engine import LiveEngine, open_backend, run_paced
    from bridge.live.outputs import NullOutput
    from bridge.osc import space as A
    from bridge.osc.server import OscServer
    from bridge.osc.state import BridgeState

    if song is None:
        from engine.model.synth import synth_song

        song = synth_song(7, 8.0)
    chain = P.ChainParams.default()
    state = BridgeState(chain, record=True)
    be = open_backend(backend, chain)
    engine = LiveEngine(song, be, state, block)
    sink_sock = None
    drainer = None
    stop = threading.Event()
    with OscServer(state, "127.0.0.1", 0) as server:
        host, port = server.address
        if subscriber:
            sink_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sink_sock.bind(("127.0.0.1", 0))
            sink_sock.settimeout(0.2)
            feedback = {"n": 0}

            def drain():
                while not stop.is_set():
                    try:
                        sink_sock.recv(65536)
                        feedback["n"] += 1
                    except socket.timeout:
                        continue

            server._on_subscribe(A.SUBSCRIBE, ["127.0.0.1", sink_sock.getsockname()[1]], ("127.0.0.1", 0), 0.0)
        render = threading.Thread(target=run_paced, args=(engine, NullOutput(), stop), name="render", daemon=True)
        jobs = _sender_jobs(host, port, rate, seconds, senders)
        procs = [subprocess.Popen([sys.executable, "-c", SENDER, json.dumps(job)], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for job in jobs]
        undo_realtime = prepare_realtime()
        gc_pauses = _GcPauses()
        try:
            for p in procs:
                line = p.stdout.readline()
                if not line.strip().startswith('{"ready"'):
                    raise RuntimeError(f"sender failed to start: {p.stderr.read()}")
            if subscriber:
                drainer = threading.Thread(target=drain, daemon=True)
                drainer.start()
            render.start()
            results = []
            for p in procs:
                out, err = p.communicate(timeout=seconds * 3 + 60)
                if p.returncode != 0:
                    raise RuntimeError(f"sender failed: {err}")
                results.append(json.loads(out.strip().splitlines()[-1]))
            # let the last datagrams be read and applied to a block
            expected_total = sum(r["sent"] for r in results)
            deadline = time.monotonic() + 5.0
            while server.stats.messages < expected_total and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(max(0.1, 4 * block / SAMPLE_RATE))
        finally:
            stop.set()
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
            render.join(timeout=5)
            gc_pauses.close()
            undo_realtime()
        final = state.snapshot()
        stats = server.stats
    if sink_sock is not None:
        if drainer is not None:
            drainer.join(timeout=2)
        sink_sock.close()
    # final state == last value sent per address (float32 on the wire; normalised ones mapped)
    mismatches = []
    for r in results:
        for addr, v in r["last"].items():
            if addr in A.PARAM_ADDRESSES:
                spec = A.PARAM_ADDRESSES[addr]
                want = spec.clamp(v)
            else:
                spec = A.NORM_ADDRESSES[addr]
                want = spec.from_normalized(min(max(v, 0.0), 1.0))
            got = final.values[spec.key]
            if abs(got - want) > 1e-9 * max(1.0, abs(want)):
                mismatches.append((addr, want, got))
    s = engine.stats.summary()
    sent = sum(r["sent"] for r in results)
    return {
        "seconds": seconds, "rate_per_s": rate, "senders": senders, "block": block, "backend": backend,
        "cpu_cores": os.cpu_count(),
        "messages_sent": sent, "messages_received": stats.messages, "udp_dropped": sent - stats.messages,
        "messages_applied": stats.applied, "error_replies": stats.errors,
        "feedback_messages_pushed": stats.pushed,
        "feedback_messages_received": feedback["n"] if subscriber else 0,
        "sender_elapsed_s": max(r["elapsed"] for r in results),
        "blocks": s["blocks"], "changed_blocks": s["changed_blocks"], "missed_deadlines": s["missed_deadlines"],
        "missed_at_block": engine.stats.missed_at_block[:20],
        "block_ms_p50": s["block_ms_p50"], "block_ms_p99": s["block_ms_p99"], "block_ms_max": s["block_ms_max"],
        "block_budget_ms": 1000.0 * block / SAMPLE_RATE,
        "latency_ms_p50": s["latency_ms_p50"], "latency_ms_p99": s["latency_ms_p99"],
        "latency_ms_max": s["latency_ms_max"], "latency_samples": len(engine.stats.latency_ms),
        "play_latency_ms_p50": s["play_latency_ms_p50"], "play_latency_ms_p99": s["play_latency_ms_p99"],
        "queue_blocks": 3,
        "gc_collections": len(gc_pauses.ms), "gc_pause_ms_max": max(gc_pauses.ms, default=0.0),
        "addresses_checked": sum(len(r["last"]) for r in results), "final_state_mismatches": len(mismatches),
        "mismatch_examples": mismatches[:5],
    }


def format_osc_bench(r: dict) -> str:
    ok = "yes" if r["final_state_mismatches"] == 0 else f"NO ({r['final_state_mismatches']} differ)"
    return "\n".join([
        f"OSC load: {r['senders']} senders, {r['rate_per_s']:.0f} messages/s for {r['seconds']:g} s, "
        f"engine rendering {r['block']}-sample blocks ({r['block_budget_ms']:.1f} ms each) with the "
        f"{r['backend']} backend, {r['cpu_cores']} CPU cores",
        f"  messages     sent {r['messages_sent']}, received {r['messages_received']} "
        f"(UDP dropped {r['udp_dropped']}), applied {r['messages_applied']}, error replies {r['error_replies']}",
        f"  blocks       {r['blocks']} rendered ({r['changed_blocks']} with changes, crossfaded), "
        f"missed deadlines {r['missed_deadlines']}"
        + (f" (at blocks {', '.join(map(str, r['missed_at_block']))})" if r["missed_at_block"] else ""),
        f"  block time   p50 {r['block_ms_p50']:.2f} ms, p99 {r['block_ms_p99']:.2f} ms, max {r['block_ms_max']:.2f} ms; "
        f"{r['gc_collections']} garbage collections, longest {r['gc_pause_ms_max']:.1f} ms",
        f"  latency      message -> end of the block that applies it: p50 {r['latency_ms_p50']:.2f} ms, "
        f"p99 {r['latency_ms_p99']:.2f} ms, max {r['latency_ms_max']:.2f} ms ({r['latency_samples']} messages)",
        f"               message -> that block starts playing (after a {r['queue_blocks']}-block output queue): "
        f"p50 {r['play_latency_ms_p50']:.2f} ms, p99 {r['play_latency_ms_p99']:.2f} ms",
        f"  final state  equals the last value sent to each of {r['addresses_checked']} addresses: {ok}",
        f"  feedback     {r['feedback_messages_pushed']} messages pushed to 1 subscriber (coalesced per address), "
        f"{r['feedback_messages_received']} received",
    ])


def cmd_bench_osc(args) -> int:
    r = bench_osc(args.seconds, args.rate, args.senders, args.block, args.backend)
    print(json.dumps(r, indent=2) if args.json else format_osc_bench(r))
    return 0 if r["final_state_mismatches"] == 0 else 1


def register(bsub) -> dict:
    b = bsub.add_parser("osc", help="OSC server under load while the live engine renders (missed deadlines, latency)")
    b.add_argument("--seconds", type=float, default=10.0)
    b.add_argument("--rate", type=float, default=10000.0, help="messages per second, all senders together")
    b.add_argument("--senders", type=int, default=2)
    b.add_argument("--block", type=int, default=512)
    b.add_argument("--backend", choices=("onnx", "pedalboard"), default="onnx")
    b.add_argument("--json", action="store_true")
    return {"osc": cmd_bench_osc}
