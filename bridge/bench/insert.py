"""`refmaster bench insert`: the JACK insert of `serve --insert` on a JACK server's clock while OSC
messages pour in.

A JACK server of its own (``jackd -d dummy -r RATE -p PERIOD``, real-time scheduling where the
system allows it; or ``--jack-server NAME``, one already running), a player in a process of its own
(standing in for the DAW: a synthesised song, looped, into the insert's inputs), the insert exactly
as `serve --insert` runs it (:class:`bridge.live.insert_process.InsertProcess`: the audio in a
process of its own, an :class:`bridge.osc.server.OscServer` in this one; outputs to the server's
playback ports) and two sender processes (`refmaster bench osc`'s) sending ``rate``
messages per second between them, for ``seconds`` of audio. Reports: xruns counted by JACK, periods
the insert played late (silence) and blocks it skipped, the callback's time as a fraction of the
period (p50/p99/max), the render thread's block time as a fraction of the block, and the latency from
a message's arrival to the block that applies it being rendered and to that block starting to play
at the insert's outputs (audible, less the sound card's own latency downstream), p50/p99.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Optional


from engine import params as P
from engine.errors import RefmasterError

#: The DAW stand-in: plays a float wav (argv[1]) looped into the ports named in argv[3:] on the
#: JACK server argv[2], says {"ready": true}, and runs until its stdin closes.
PLAYER = r"""
import json, sys
import jack, numpy as np, soundfile as sf
audio = np.ascontiguousarray(sf.read(sys.argv[1], dtype="float32", always_2d=True)[0].T)
c = jack.Client("refmaster-bench-player", servername=sys.argv[2] or None, no_start_server=True)
outs = [c.outports.register(f"out_{i}") for i in (1, 2)]
pos = [0]
def process(frames):
    i = pos[0] % audio.shape[1]
    idx = (np.arange(frames) + i) % audio.shape[1]
    for ch, o in enumerate(outs):
        o.get_array()[:] = audio[ch, idx]
    pos[0] += frames
c.set_process_callback(process)
c.activate()
for o, dst in zip(outs, sys.argv[3:]):
    c.connect(o, dst)
print(json.dumps({"ready": True}), flush=True)
sys.stdin.read()
c.deactivate(); c.close()
"""


def _start_jackd(name: str, rate: int, period: int, realtime: bool) -> subprocess.Popen:
    import shutil

    if shutil.which("jackd") is None:
        raise RefmasterError("jackd is not installed (apt-get install jackd2), or give --jack-server NAME")
    cmd = ["jackd"] + ([] if realtime else ["--no-realtime"]) + ["-n", name, "-d", "dummy", "-r", str(rate),
                                                                  "-p", str(period)]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def stop_jackd(proc: subprocess.Popen, name: str) -> None:
    """Stop a jackd we started (SIGTERM; SIGKILL after 5 s) and leave JACK's server registry clean.

    A server that dies without unregistering (SIGKILL, a crash) keeps its slot in the registry of
    every server on the machine (/dev/shm/jack-shm-registry, 8 slots), and JACK reclaims a slot only
    for a new server of the same name; after 8 such deaths no JACK server starts at all ("too many
    servers already active"). So a killed server's name is started once more, briefly, and stopped
    cleanly: JACK's own reclaim."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.returncode not in (-9, 137):
        return
    again = subprocess.Popen(["jackd", "--no-realtime", "-n", name, "-d", "dummy"], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        _open_insert_client(name, again, "refmaster-reclaim").close()
    except RefmasterError:
        pass   # it could not start: nothing was registered under the name either
    finally:
        again.terminate()
        try:
            again.wait(timeout=5)
        except subprocess.TimeoutExpired:
            again.kill()
            again.wait()


def _open_insert_client(server: str, jackd: Optional[subprocess.Popen], client_name: str = "refmaster"):
    from bridge.live.insert import open_client

    deadline = time.monotonic() + 10.0
    while True:
        try:
            return open_client(server, client_name)
        except RefmasterError:
            if jackd is None or jackd.poll() is not None or time.monotonic() > deadline:
                why = jackd.stderr.read().strip().splitlines()[-1:] if jackd is not None and jackd.poll() else []
                raise RefmasterError(f"the JACK server {server!r} did not start{': ' + why[0] if why else ''}") from None
            time.sleep(0.1)


def bench_insert(seconds: float = 600.0, rate: int = 48000, period: int = 128, msg_rate: float = 10000.0,
                 senders: int = 2, backend: str = "onnx", block: Optional[int] = None,
                 server: Optional[str] = None, realtime: bool = True) -> dict:
    """Run the benchmark; returns the figures (see the module docstring)."""
    import soundfile as sf

    from bridge.bench.osc import SENDER, _sender_jobs
    from bridge.live.engine import prepare_realtime
    from bridge.live.insert_process import InsertProcess
    from bridge.osc.server import OscServer
    from bridge.osc.state import BridgeState
    from engine.io.audio import resample
    from engine.model.synth import synth_song
    from engine.rates import check_rate

    if not seconds > 0 or not msg_rate > 0 or senders < 1:
        raise RefmasterError("--seconds and --rate must be more than 0, --senders at least 1")
    jackd = None
    name = server
    if server is None:
        name = f"refmaster-bench-{os.getpid()}"
        jackd = _start_jackd(name, rate, period, realtime)
    procs: List[subprocess.Popen] = []
    player = None
    insert = None
    tmp = tempfile.TemporaryDirectory(prefix="refmaster-bench-insert-")
    try:
        probe = _open_insert_client(name, jackd, "refmaster-bench-probe")   # the server is up: its rate, ports
        rate, period = probe.samplerate, probe.blocksize
        playback = [p.name for p in probe.get_ports(is_audio=True, is_input=True, is_physical=True)][:2]
        probe.close()
        check_rate(rate)
        state = BridgeState(P.ChainParams.default())
        song = Path(tmp.name) / "song.wav"
        sf.write(song, resample(synth_song(7, 8.0), 44100, rate).T, rate, subtype="FLOAT")
        with OscServer(state, "127.0.0.1", 0) as osc:
            insert = InsertProcess(state, name, "refmaster", backend, block, (), playback)   # as serve --insert runs it
            block, why = insert.info["block"], "as asked" if block else "measured at start"
            undo_realtime = prepare_realtime()
            player = subprocess.Popen([sys.executable, "-c", PLAYER, str(song), name or "", "refmaster:in_1",
                                       "refmaster:in_2"],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            host, port = osc.address
            jobs = _sender_jobs(host, port, msg_rate, seconds, senders)
            procs = [subprocess.Popen([sys.executable, "-c", SENDER, json.dumps(job)], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True) for job in jobs]
            try:
                for p in [player, *procs]:
                    if not p.stdout.readline().strip().startswith('{"ready"'):
                        raise RefmasterError(f"a helper process failed to start: {p.stderr.read().strip()[-300:]}")
                results = []
                for p in procs:
                    out, err = p.communicate(timeout=seconds * 3 + 60)
                    if p.returncode != 0:
                        raise RefmasterError(f"an OSC sender failed: {err.strip()[-300:]}")
                    results.append(json.loads(out.strip().splitlines()[-1]))
                time.sleep(max(0.2, 4 * insert.info["latency"] / rate))   # the last messages heard
            finally:
                result = insert.stop()
                undo_realtime()
            if result["figures"] is None:
                raise RefmasterError(f"the insert failed: {result['failure']}")
            f, s = result["figures"], result["stats"]
            st = osc.stats
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        if player is not None and player.poll() is None:
            try:
                player.communicate(input="", timeout=5)
            except subprocess.TimeoutExpired:
                player.kill()
                player.wait()
        if insert is not None and insert.result is None:
            insert.stop()
        if jackd is not None:
            stop_jackd(jackd, name)
        tmp.cleanup()
    sent = sum(r["sent"] for r in results)
    latency = insert.info["latency"]
    return {
        "seconds": seconds, "audio_seconds": f["callbacks"] * period / rate, "rate": rate, "period": period,
        "block": block, "block_chosen": why, "latency_frames": latency, "latency_ms": 1000.0 * latency / rate,
        "backend": backend, "jack_server": "own dummy server" + (" (real-time)" if realtime else "")
        if jackd is not None else name, "render_thread_realtime": result["render_realtime"],
        "cpu_cores": os.cpu_count(), "osc_rate_per_s": msg_rate, "senders": senders, "messages_sent": sent,
        "messages_received": st.messages, "messages_applied": st.applied,
        "xruns": f["xruns"], "late_periods": f["late_periods"], "skipped_blocks": f["skipped_blocks"],
        "callbacks": f["callbacks"], "callback_p50": f["callback_p50"], "callback_p99": f["callback_p99"],
        "callback_max": f["callback_max"], "blocks": s["blocks"], "changed_blocks": s["changed_blocks"],
        "block_p50": result["block_p50"], "block_p99": result["block_p99"], "block_max": result["block_max"],
        "gc_collections": result["gc_collections"], "gc_pause_ms_max": result["gc_pause_ms_max"],
        "message_to_rendered_ms_p50": s["latency_ms_p50"], "message_to_rendered_ms_p99": s["latency_ms_p99"],
        "message_to_audible_ms_p50": s["play_latency_ms_p50"], "message_to_audible_ms_p99": s["play_latency_ms_p99"],
    }


def format_insert_bench(r: dict) -> str:
    return "\n".join([
        f"JACK insert: {r['audio_seconds']:.0f} s of audio at {r['rate']} Hz, period {r['period']} "
        f"({1000 * r['period'] / r['rate']:.2f} ms), internal block {r['block']} ({r['block_chosen']}), latency "
        f"{r['latency_frames']} frames ({r['latency_ms']:.1f} ms), {r['backend']} backend, {r['jack_server']}, "
        f"render thread {'real-time' if r['render_thread_realtime'] else 'not real-time'}, {r['cpu_cores']} CPU cores",
        f"  OSC          {r['senders']} senders, {r['osc_rate_per_s']:.0f} messages/s: sent {r['messages_sent']}, "
        f"received {r['messages_received']}, applied {r['messages_applied']}",
        f"  xruns        {r['xruns']} counted by JACK; {r['late_periods']} periods played late (silence), "
        f"{r['skipped_blocks']} blocks skipped",
        f"  callback     p50 {r['callback_p50']:.3f}, p99 {r['callback_p99']:.3f}, max {r['callback_max']:.3f} of a "
        f"period ({r['callbacks']} callbacks)",
        f"  render       p50 {r['block_p50']:.3f}, p99 {r['block_p99']:.3f}, max {r['block_max']:.3f} of a block "
        f"({r['blocks']} blocks, {r['changed_blocks']} with changes, crossfaded); {r['gc_collections']} garbage "
        f"collections in the audio process, the longest {r['gc_pause_ms_max']:.1f} ms",
        f"  latency      message -> block rendered: p50 {r['message_to_rendered_ms_p50']:.2f} ms, p99 "
        f"{r['message_to_rendered_ms_p99']:.2f} ms; -> audible at the outputs: p50 "
        f"{r['message_to_audible_ms_p50']:.2f} ms, p99 {r['message_to_audible_ms_p99']:.2f} ms",
    ])


def cmd_bench_insert(args) -> int:
    r = bench_insert(args.seconds, args.sample_rate, args.period, args.rate, args.senders, args.backend,
                     args.insert_block, args.jack_server, not args.no_realtime)
    print(json.dumps(r, indent=2) if args.json else format_insert_bench(r))
    return 0 if r["xruns"] == 0 and r["late_periods"] == 0 else 1


def register(bsub) -> dict:
    b = bsub.add_parser("insert", help="serve --insert on a JACK clock under OSC load: xruns, callback time, "
                                       "message -> audible latency")
    b.add_argument("--seconds", type=float, default=600.0, help="seconds of audio (default 600: ten minutes)")
    b.add_argument("--sample-rate", type=int, default=48000, help="of the JACK server it starts (default 48000)")
    b.add_argument("--period", type=int, default=128, help="frames per JACK period (default 128)")
    b.add_argument("--rate", type=float, default=10000.0, help="OSC messages per second, all senders together")
    b.add_argument("--senders", type=int, default=2)
    b.add_argument("--backend", choices=("onnx", "pedalboard"), default="onnx")
    b.add_argument("--insert-block", type=int, metavar="N", help="the internal block (default: measured at start)")
    b.add_argument("--jack-server", metavar="NAME", help="use this running JACK server instead of starting one")
    b.add_argument("--no-realtime", action="store_true", help="start jackd without real-time scheduling")
    b.add_argument("--json", action="store_true")
    return {"insert": cmd_bench_insert}
