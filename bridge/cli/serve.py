"""`refmaster serve`: play a song through a preset's chain live, in sync with OSC controllers; or,
with ``--insert``, run the DAW's audio through it as a JACK insert (docs/daw.md).

    refmaster serve --input SONG --preset NAME [--backend onnx|pedalboard] [--osc-port P]
                    [--osc-host H --allow CIDR...] [--secret-file FILE] [--record-max-mb MB]
    refmaster serve --insert --preset NAME [--connect-from PORT [PORT]] [--connect-to PORT [PORT]]
                    [--insert-block N] [--jack-server NAME] [--jack-name NAME] [OSC options as above]

The insert (:mod:`bridge.live.insert`) has two input and two output ports at the JACK server's rate
and period, reports its latency to JACK (and prints it), and takes the same OSC control, feedback,
smoothing, bypass, amount and saving as the song player. No JACK server, a server that goes
away, a port that does not exist: one line, and the preset is saved if the session changed it.

Plays to JACK when a JACK server runs (``--jack auto``, the default), else to a wav file
(``--output``, default ``<song>.live.wav``). Every applied parameter change is recorded with its
time and source (``--record``, JSON lines, rotated at ``--record-max-mb``). Only hosts in
``--allow`` (default loopback) may talk to the OSC server; listening beyond loopback needs it; a
shared secret (``--secret-file`` or ``$REFMASTER_OSC_SECRET``) makes every message need
``/refmaster/auth`` (docs/bridge.md, "Limits"). The preset is saved on ``/refmaster/preset/save``
and, if the engine's state differs from it, on exit (Ctrl-C or SIGTERM), atomically.

ITO hook: :func:`ito_handlers` returns the two handlers the OSC server calls for
``/refmaster/ito/run`` and ``/refmaster/nudge`` (see :class:`bridge.osc.server.ItoRequest` /
:class:`~bridge.osc.server.ItoResult`): the ITO of `refmaster master`, run with the shipped
white-box model (loaded on first use). A server started without them answers those addresses
with an error saying so.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np

from bridge.cli.options import add_presets_option
from bridge.osc.state import Change
from engine import params as P
from engine.errors import RefmasterError
from engine.params import SAMPLE_RATE


def ito_handlers(preset, song, reference):
    """(ito_handler, nudge_handler) for the OSC server: ITO and nudges through ``engine.mastering.job``.

    ``/refmaster/ito/run [steps]`` optimises z_ref (from the preset, or Φ of ``serve --ref``)
    towards the reference given with ``serve --ref``; ``/refmaster/nudge <words>`` runs the nudge
    ITO from the preset's z_ref (or Φ of the reference). Both work on the song being played and
    return the new Θ, z_ref and loss history. The shipped white-box model is loaded on first use.
    """
    from bridge.osc.server import ItoResult
    from engine.errors import RefmasterError
    from engine.mastering.job import MasterSettings, master
    from engine.mastering.nudge import parse_nudges
    from engine.model.networks import load_model

    cache = {}

    def model():
        if "m" not in cache:
            cache["m"] = load_model("white-box")
        return cache["m"]

    def start(request):
        z = None
        if request.preset is not None and getattr(request.preset, "z_ref", None):
            z = np.asarray(request.preset.z_ref, dtype=np.float32)
            if z.shape[0] != model().cfg.embed_dim:
                raise RefmasterError("the preset's z_ref was made with another model; give --ref to re-embed")
        if z is None and request.reference is None:
            raise RefmasterError("no reference embedding: the preset has no z_ref and serve was started without --ref")
        if request.song is None:
            raise RefmasterError("no song is loaded to optimise on")
        return z

    def result(res, settings):
        return ItoResult(chain=res.chain, z_ref=res.z_ref.tolist(),
                         loss_history=(res.ito.losses if res.ito else []) + (res.nudge.losses if res.nudge else []),
                         settings=settings)

    def run(request):
        z = start(request)
        if request.reference is None:
            raise RefmasterError("ITO needs a reference to optimise towards: start serve with --ref REFERENCE")
        steps = P.check_steps(request.steps if request.steps is not None else P.ITO_STEPS, "steps")
        res = master(model(), request.song, request.reference, MasterSettings(ito_steps=steps), z_start=z,
                     on_step=lambda phase, step, loss: request.progress(step, loss))
        return result(res, {"steps": steps})

    def nudge(request):
        words = ", ".join(parse_nudges(request.words or ""))
        z = start(request)
        steps = request.steps if request.steps is not None else 50
        res = master(model(), request.song, request.reference, MasterSettings(ito=False, nudge=words, nudge_steps=steps),
                     z_start=z, on_step=lambda phase, step, loss: request.progress(step, loss))
        return result(res, {"nudge": words, "steps": steps})

    return run, nudge


#: Size at which the change record is rotated (``--record-max-mb``): the file becomes ``<name>.1``
#: (replacing an older one) and a new file starts, so the record takes at most twice this on disk.
RECORD_MAX_BYTES = 16 << 20


class ChangeRecorder:
    """Appends the state's change log to a JSON-lines file once a second and at the end.

    Bounded: the file is rotated at ``max_bytes`` (one previous file kept, ``<name>.1``), and the
    state keeps only its latest changes in memory (:data:`bridge.osc.state.MAX_CHANGES_IN_MEMORY`);
    if more arrive between two flushes, a ``{"lost": n}`` line says how many were not recorded.
    """

    def __init__(self, state, path: Path, max_bytes: int = RECORD_MAX_BYTES):
        self.state = state
        self.path = path
        self.max_bytes = max_bytes
        self._done = 0
        self.lost = 0
        self._stop = threading.Event()
        self._f = open(path, "a", encoding="utf-8")
        self._size = self._f.tell()
        self._thread = threading.Thread(target=self._run, name="change-recorder", daemon=True)
        self._thread.start()

    def _write(self, line: str) -> None:
        n = len(line.encode("utf-8"))
        if self._size and self._size + n > self.max_bytes:
            self._f.close()
            os.replace(self.path, self.path.with_name(self.path.name + ".1"))
            self._f = open(self.path, "a", encoding="utf-8")
            self._size = 0
        self._f.write(line)
        self._size += n

    def _flush(self) -> None:
        changes, self._done, lost = self.state.changes_since(self._done)
        if lost:
            self.lost += lost
            self._write(json.dumps({"time": round(time.time(), 6), "lost": lost}) + "\n")
        for c in map(Change._make, changes):
            self._write(json.dumps({"t": round(c.t, 6), "time": round(c.wall, 6), "key": c.key,
                                    "value": c.value, "source": c.source}) + "\n")
        self._f.flush()

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            self._flush()

    def close(self) -> int:
        self._stop.set()
        self._thread.join(timeout=5)
        self._flush()
        self._f.close()
        return self._done - self.lost


def _save_on_exit(args, server, state):
    """Save the preset if the session changed it (unless --no-save): (what to say, exit status)."""
    if args.no_save or state.snapshot() == server.preset.chain:
        return "", 0
    try:
        path = server.save_preset()
    except RefmasterError as e:
        print(f"refmaster: error: the preset was not saved: {e}", file=sys.stderr)
        return "", 2
    return f"; saved preset '{server.preset.name}' to {path}", 0


def _latency_lines(st: dict) -> str:
    return (f"message -> block rendered: p50 {st['latency_ms_p50']:.2f} ms, p99 {st['latency_ms_p99']:.2f} ms; "
            f"-> block playing: p50 {st['play_latency_ms_p50']:.2f} ms, p99 {st['play_latency_ms_p99']:.2f} ms")


def cmd_insert(args) -> int:
    """`serve --insert`: the preset's chain as a JACK insert (its audio in a process of its own:
    :mod:`bridge.live.insert_process`), under OSC control."""
    from bridge.live.insert_process import InsertProcess
    from bridge.osc.access import AllowList, read_secret
    from bridge.osc.dialects import Dialect, parse_vars
    from bridge.osc.server import OscServer
    from bridge.osc.state import BridgeState
    from engine.io.atomic import check_output
    from engine.io.audio import load_audio
    from presets import Preset, PresetStore

    if args.input:
        raise RefmasterError("--insert processes what JACK sends it: give no --input")
    if not args.record_max_mb > 0:
        raise RefmasterError(f"--record-max-mb {args.record_max_mb:g}: must be more than 0")
    if args.allow:
        AllowList(args.allow)
    secret = read_secret(args.secret_file)
    inputs = (args.ref, args.preset, args.onnx_model, args.pedalboard_settings)
    record = check_output(args.record or "insert.changes.jsonl", inputs, "change record")
    store = PresetStore(args.presets)
    pf = Path(args.preset)
    preset = Preset.from_file(pf) if pf.suffix == ".json" and pf.is_file() else store.get(args.preset)
    dialects = [Dialect.load(d, parse_vars(args.var)) for d in (args.dialect or [])]
    reference = load_audio(args.ref).audio if args.ref else None
    state = BridgeState(preset.chain)
    ito, nudge = ito_handlers(preset, None, reference)
    server = OscServer(state, args.osc_host, args.osc_port, store=store, preset=preset, ito_handler=ito,
                       nudge_handler=nudge, dialects=dialects, reference=reference, allow=args.allow, secret=secret)
    try:
        insert = InsertProcess(state, args.jack_server, args.jack_name, args.backend, args.insert_block,
                               args.connect_from or (), args.connect_to or (), args.seconds,
                               onnx_model=args.onnx_model, pedalboard_settings=args.pedalboard_settings)
    except BaseException:
        server.close()
        raise
    info = insert.info
    recorder = ChangeRecorder(state, record, int(args.record_max_mb * (1 << 20)))
    stop = threading.Event()
    status = 0
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.start()
        host, port = server.address
        ms = 1000.0 * info["latency"] / info["rate"]
        print(f"refmaster serve --insert: '{preset.name}', {args.backend} backend; {info['description']}", flush=True)
        print(f"latency: {info['latency']} frames ({ms:.1f} ms), reported to JACK on the ports: internal block "
              f"{info['block']} frames ({info['why']}), {info['ahead']} frames ahead + the chain's "
              f"{info['chain_latency']}", flush=True)
        print(f"listening: osc.udp://{host}:{port}/  (refmaster osc addresses); hosts allowed: {server.allow}"
              f"{'; shared secret required (/refmaster/auth)' if secret else ''}", flush=True)
        while not stop.wait(0.1) and not insert.finished():
            pass
    except RefmasterError as e:
        print(f"refmaster: error: {e}", file=sys.stderr, flush=True)
        status = 2
    finally:
        stop.set()
        result = insert.stop()
        server.close()
        saved, save_status = _save_on_exit(args, server, state)
        n = recorder.close()
        if result["failure"]:
            print(f"refmaster: error: {result['failure']}" + (saved or "; the preset is unchanged"), file=sys.stderr,
                  flush=True)
            status = 2
        f, st = result["figures"], result["stats"]
        if f is not None:
            print(f"stopped: {st['blocks']} blocks of {info['block']} frames, {f['xruns']} xruns, {f['late_periods']} "
                  f"late periods ({f['late_freewheeling']} freewheeling), callback p50 {f['callback_p50']:.3f} / p99 {f['callback_p99']:.3f} / max "
                  f"{f['callback_max']:.3f} of a period; {n} parameter changes recorded in {record}{saved}", flush=True)
            if st["applied_messages"]:
                print(_latency_lines(st), flush=True)
        for s, h in previous.items():
            signal.signal(s, h)
    return status or save_status


def cmd_serve(args) -> int:
    if args.insert:
        return cmd_insert(args)
    if not args.input:
        raise RefmasterError("give --input SONG to play, or --insert to process what a JACK client (a DAW) sends")
    from bridge.live.engine import LiveEngine, open_backend, prepare_realtime, run_paced
    from bridge.live.outputs import FileOutput, JackOutput, jack_rate
    from engine.rates import chain_rate
    from bridge.osc.access import AllowList, read_secret
    from bridge.osc.dialects import Dialect, parse_vars
    from bridge.osc.server import OscServer
    from bridge.osc.state import BridgeState
    from engine.io.atomic import check_output
    from engine.io.audio import load_audio, resample
    from presets import Preset, PresetStore

    if args.block < 16 or args.block > 16384:
        raise RefmasterError(f"--block {args.block}: must be 16…16384 samples")
    if not args.record_max_mb > 0:
        raise RefmasterError(f"--record-max-mb {args.record_max_mb:g}: must be more than 0")
    if args.allow:
        AllowList(args.allow)           # a bad network is one line, before any work
    secret = read_secret(args.secret_file)
    inputs = (args.input, args.ref, args.preset, args.onnx_model, args.pedalboard_settings)
    record = check_output(args.record or f"{Path(args.input).stem}.changes.jsonl", inputs, "change record")
    if args.output:
        check_output(args.output, inputs + (record,))
    store = PresetStore(args.presets)
    pf = Path(args.preset)
    preset = Preset.from_file(pf) if pf.suffix == ".json" and pf.is_file() else store.get(args.preset)
    dialects = [Dialect.load(d, parse_vars(args.var)) for d in (args.dialect or [])]
    # the chain runs at JACK's rate (the song is brought to it), or at the song's own rate for a file
    server_rate = jack_rate(args.jack_server) if args.jack != "off" else None
    use_jack = args.jack == "on" or (args.jack == "auto" and server_rate is not None)
    song = load_audio(args.input, rate=None)
    rate = server_rate if use_jack and server_rate else chain_rate(song.rate)
    if use_jack and server_rate:
        from engine.rates import check_rate

        check_rate(server_rate)
    song_audio = resample(song.audio, song.rate, rate)               # the song is the source, not the chain
    for_models = resample(song.audio, song.rate, SAMPLE_RATE)        # what ITO and nudges read
    reference = load_audio(args.ref).audio if args.ref else None
    state = BridgeState(preset.chain)
    backend = open_backend(args.backend, preset.chain, onnx_model=args.onnx_model,
                           pedalboard_settings=args.pedalboard_settings)
    backend.set_sample_rate(rate)
    engine = LiveEngine(song_audio, backend, state, args.block, loop=not args.no_loop, playing=not args.paused)
    ito, nudge = ito_handlers(preset, for_models, reference)
    server = OscServer(state, args.osc_host, args.osc_port, store=store, preset=preset, ito_handler=ito,
                       nudge_handler=nudge, transport=engine, dialects=dialects, song=for_models,
                       reference=reference, allow=args.allow, secret=secret)
    try:
        if use_jack:
            output = JackOutput(engine, args.jack_server, args.jack_name,
                                None if args.jack_connect == "none" else args.jack_connect)
        else:
            output = FileOutput(Path(args.output) if args.output else Path(f"{song.path.stem}.live.wav"), rate)
    except BaseException:
        server.close()
        raise
    recorder = ChangeRecorder(state, record, int(args.record_max_mb * (1 << 20)))
    stop = threading.Event()
    max_blocks = None if args.seconds is None else max(1, int(round(args.seconds * rate / args.block)))

    def render():
        try:
            if use_jack:
                output.run(stop, max_blocks)
            else:
                run_paced(engine, output, stop, max_blocks)
        finally:
            stop.set()

    status = 0
    prepare_realtime()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGTERM, signal.SIGINT)}
    server.start()
    if use_jack:
        output.start()
    host, port = server.address
    print(f"refmaster serve: '{preset.name}' on {song.path.name} ({song.seconds:.1f} s at {rate} Hz"
          f"{', looping' if not args.no_loop else ''}), {args.backend} backend, {args.block}-sample blocks, "
          f"parameter changes {'crossfaded across a block' if backend.can_snapshot else 'stepped in 8 parts of a block'}",
          flush=True)
    print(f"output: {output.description}", flush=True)
    print(f"listening: osc.udp://{host}:{port}/  (refmaster osc addresses); hosts allowed: {server.allow}"
          f"{'; shared secret required (/refmaster/auth)' if secret else ''}", flush=True)
    thread = threading.Thread(target=render, name="render", daemon=True)
    thread.start()
    try:
        while not stop.wait(0.1):
            pass
    finally:
        stop.set()
        thread.join(timeout=10)
        server.close()
        output.close()
        saved, status = _save_on_exit(args, server, state)
        n = recorder.close()
        st = engine.stats.summary()
        print(f"stopped: {st['blocks']} blocks, {st['missed_deadlines']} missed deadlines, "
              f"{n} parameter changes recorded in {record}{saved}", flush=True)
        if st["applied_messages"]:
            print(_latency_lines(st), flush=True)
        # a second Ctrl-C or SIGTERM during the clean-up above only sets `stop` again
        for s, h in previous.items():
            signal.signal(s, h)
    return status


def register(sub) -> dict:
    p = sub.add_parser("serve", help="play a song through a preset live, or (--insert) process a DAW's audio "
                                     "through it as a JACK insert, in sync with OSC controllers")
    p.add_argument("--input", metavar="SONG", help="the song to play (looped); not with --insert")
    p.add_argument("--insert", action="store_true",
                   help="be a JACK insert: ports in_1, in_2 -> the chain -> out_1, out_2 at the server's rate and "
                        "period, latency reported to JACK (docs/daw.md)")
    p.add_argument("--connect-from", nargs="+", metavar="PORT",
                   help="--insert: connect these JACK output ports (left, right; one feeds both) to in_1, in_2")
    p.add_argument("--connect-to", nargs="+", metavar="PORT",
                   help="--insert: connect out_1, out_2 to these JACK input ports (e.g. system:playback_1 "
                        "system:playback_2)")
    p.add_argument("--insert-block", type=int, metavar="N",
                   help="--insert: frames the chain processes at once, a multiple of the period (default: the "
                        "smallest that keeps up, measured at start)")
    p.add_argument("--preset", required=True, metavar="NAME", help="preset name (or a preset .json file)")
    p.add_argument("--backend", choices=("onnx", "pedalboard"), default="onnx")
    p.add_argument("--onnx-model", metavar="CHAIN.onnx", help="an exported chain (default: build it from the schema)")
    p.add_argument("--pedalboard-settings", metavar="FILE.json",
                   help="calibrated pedalboard settings from `refmaster export --pedalboard`")
    p.add_argument("--osc-port", type=int, default=9000, help="UDP port to listen on (default 9000; 0: any free)")
    p.add_argument("--osc-host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; beyond loopback, e.g. 0.0.0.0, only with --allow)")
    p.add_argument("--allow", nargs="+", metavar="CIDR",
                   help="the hosts that may talk to the server and be sent to (dump, subscribe), as numeric "
                        "networks, e.g. 192.168.1.0/24 127.0.0.1 (default: loopback, 127.0.0.0/8)")
    p.add_argument("--secret-file", metavar="FILE",
                   help="a shared secret (first line; default: $REFMASTER_OSC_SECRET): every message then needs "
                        "a /refmaster/auth <secret> before it, in its bundle or from its address")
    p.add_argument("--block", type=int, default=512, help="samples per block (default 512)")
    p.add_argument("--jack", choices=("auto", "on", "off"), default="auto",
                   help="play to JACK (auto: when a JACK server runs; else to --output)")
    p.add_argument("--jack-server", help="JACK server name (default: $JACK_DEFAULT_SERVER or 'default')")
    p.add_argument("--jack-name", default="refmaster", help="JACK client name")
    p.add_argument("--jack-connect", default="system:playback",
                   help="connect the outputs to these ports (a regex; 'none' to leave them)")
    p.add_argument("-o", "--output", metavar="OUT.wav", help="without JACK: write the stream here")
    p.add_argument("--no-loop", action="store_true", help="stop at the end of the song")
    p.add_argument("--seconds", type=float, help="stop after this many seconds of audio")
    p.add_argument("--paused", action="store_true", help="start stopped (send /refmaster/transport/play)")
    p.add_argument("--ref", metavar="REF", help="the reference track (for ITO and nudges)")
    p.add_argument("--dialect", action="append", metavar="NAME_OR_FILE",
                   help="also accept (and offer subscribers) a DAW dialect, e.g. reaper")
    p.add_argument("--var", action="append", metavar="NAME=VALUE", help="dialect variable (e.g. track=2)")
    p.add_argument("--record", metavar="FILE", help="where to append parameter changes (default <song>.changes.jsonl; "
                                                     "with --insert, insert.changes.jsonl)")
    p.add_argument("--record-max-mb", type=float, default=RECORD_MAX_BYTES / (1 << 20), metavar="MB",
                   help="rotate the change record at this size, keeping one previous file FILE.1 (default 16)")
    p.add_argument("--no-save", action="store_true", help="do not save the preset on exit")
    add_presets_option(p)
    return {"serve": cmd_serve}
