"""refmaster in the DAW (issue 11, parts 2 and 3): `serve --insert` as a JACK insert at the server's
rate and period, with its latency reported to JACK; bypass (loudness-matched) and amount, live.

The JACK tests start their own server (`jackd -S -d dummy`, a unique name) and two clients of their
own in this process: a player that plays into the insert's inputs and a recorder on its outputs
(two clients, not one: a client feeding and reading the insert would make a loop, which JACK runs
over two cycles), both hung on the dummy driver's ports so that JACK computes latencies for them.
The comparisons with the offline render run the graph freewheeling (as a DAW's export does: no
clock, each cycle waits for every client), so they check what the insert computes and reports
whatever else the shared test machine is doing; `refmaster bench insert` measures the real-time
behaviour on JACK's clock.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import REAL_SONGS, needs_real_music
from osc_peers import needs_liblo, oscsend

from bridge.bench.insert import stop_jackd
from engine import params as P
from engine.analysis.features import integrated_loudness
from engine.dsp.chain import render_offline
from presets import Preset, PresetStore

HOST = "127.0.0.1"
needs_jackd = pytest.mark.skipif(shutil.which("jackd") is None, reason="jackd not installed (apt-get install jackd2)")


def active_chain() -> P.ChainParams:
    """Every module doing something, expander neutral: silence leaves the chain in its fresh state,
    so the insert's output after the silence before the song equals the offline render of the song."""
    return P.ChainParams.default().with_values(**{
        "eq.band1_gain": 4.0, "eq.low_shelf_gain": -2.0, "distortion.drive": 3.0, "distortion.mix": 0.4,
        "multiband.mix": 0.5, "multiband.mid_comp_threshold": -30.0, "multiband.mid_comp_ratio": 3.0,
        "gain.gain": 4.0, "imager.width": 0.6, "limiter.threshold": -4.0, "limiter.attack": 2.0})


# ------------------------------------------------------------------------------ bypass and amount

def _processor(chain, rate=48000, block=256, **controls):
    from bridge.live.engine import ChainProcessor, open_backend
    from bridge.osc.state import BridgeState

    backend = open_backend("onnx", chain)
    backend.set_sample_rate(rate)
    state = BridgeState(chain)
    for name, value in controls.items():
        state.set_control(name, value)
    return ChainProcessor(backend, state, block), state


def _run(proc, x, block):
    out = [proc.process(x[:, i:i + block]) for i in range(0, x.shape[1] - block + 1, block)]
    return np.concatenate(out, axis=1)


def test_amount_scales_every_move_from_neutral(song):
    """amount 1 is the preset, 0 the neutral chain, 0.5 every parameter half way (normalised)."""
    from bridge.live.monitor import scaled_chain

    chain, rate, block = active_chain(), 44100, 256
    x = np.ascontiguousarray(song[:, :block * 100])
    half = scaled_chain(chain, 0.5)
    for s in P.PARAMS:
        want = s.from_normalized((s.to_normalized(s.default) + s.to_normalized(chain.values[s.key])) / 2)
        assert half.values[s.key] == pytest.approx(want, rel=1e-9, abs=1e-9), s.key
    assert scaled_chain(chain, 0.0).values == P.ChainParams.default().values
    lat = 128
    for amount, want_chain in ((1.0, chain), (0.0, P.ChainParams(P.defaults(), chain.switches)), (0.5, half)):
        proc, state = _processor(chain, rate, block, amount=amount)
        y = _run(proc, x, block)
        want = render_offline(x, want_chain, rate)
        assert np.abs(y[:, lat:] - want[:, :y.shape[1] - lat]).max() < 1e-4, amount


def test_amount_follows_osc_mid_stream(song):
    """An amount sent while the audio runs moves the chain to the scaled parameters from the next
    block (crossfaded there), and the stream then settles on the neutral chain's output."""
    chain, rate, block = active_chain(), 44100, 256
    x = np.ascontiguousarray(song[:, :block * 100])
    proc, state = _processor(chain, rate, block)
    outs = []
    for k in range(100):
        if k == 20:
            state.set_control("amount", 0.0, source="osc:test")
        outs.append(proc.process(x[:, k * block:(k + 1) * block]))
    y = np.concatenate(outs, axis=1)
    neutral = np.concatenate([np.zeros((2, 128), np.float32), render_offline(x, P.ChainParams(P.defaults(),
                                                                                              chain.switches), rate)], 1)
    assert proc.stats.changed_blocks == 1 and proc.stats.applied_messages == 1
    assert np.abs(y[:, 80 * block:] - neutral[:, 80 * block:y.shape[1]]).max() < 1e-3
    assert np.abs(y[:, 10 * block:20 * block] - neutral[:, 10 * block:20 * block]).max() > 1e-2


def test_bypass_and_amount_in_the_address_space(tmp_path):
    """/refmaster/bypass and /refmaster/amount: set, clamped with a warning, refused with an error,
    reached through a dialect (REAPER's parameters 53 and 54), dumped and pushed like parameters."""
    import socket

    from pythonosc.osc_message import OscMessage

    from bridge.osc.dialects import Dialect
    from bridge.osc.server import OscServer
    from bridge.osc.state import Change

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((HOST, 0))
    sock.settimeout(3.0)

    def send(address, *values):
        from pythonosc.osc_message_builder import OscMessageBuilder

        b = OscMessageBuilder(address)
        for v in values:
            b.add_arg(v)
        sock.sendto(b.build().dgram, server.address)

    unread = []   # replies and feedback not asked for yet: a dump sends bypass before amount

    def receive(address):
        for i, (a, params) in enumerate(unread):
            if a == address:
                del unread[i]
                return params
        while True:
            m = OscMessage(sock.recv(65536))
            if m.address == address:
                return list(m.params)
            unread.append((m.address, list(m.params)))

    with OscServer(host=HOST, port=0, dialects=[Dialect.load("reaper")]) as server:
        st = server.state
        send("/refmaster/amount", 0.5)
        send("/refmaster/bypass", 1)
        time.sleep(0.3)
        assert st.controls() == {"bypass": 1.0, "amount": 0.5}
        send("/refmaster/amount", 1.5)
        assert receive("/refmaster/warning")[0] == "/refmaster/amount" and st.controls()["amount"] == 1.0
        send("/refmaster/bypass", 2)
        err = receive("/refmaster/error")
        assert err[0] == "/refmaster/bypass" and "expected 1 (bypassed) or 0" in err[1] and st.controls()["bypass"] == 1.0
        send("/track/1/fx/1/fxparam/53/value", 0.0)     # REAPER: the bypass toggle
        send("/track/1/fx/1/fxparam/54/value", 0.25)    # and the amount
        time.sleep(0.3)
        assert st.controls() == {"bypass": 0.0, "amount": 0.25}
        send("/refmaster/subscribe", HOST, sock.getsockname()[1])
        assert receive("/refmaster/amount") == [0.25] and receive("/refmaster/bypass") == [0]   # in the dump
        send("/refmaster/amount", 0.75)
        assert receive("/refmaster/amount") == [0.75]                                        # and pushed
        sock.close()
        assert [Change(*c).key for c in st.changes if Change(*c).key.startswith("control.")][-1] == \
            "control.amount"   # recorded like any change


def test_bypass_is_the_input_at_the_processed_loudness_and_is_crossfaded(song):
    """Bypassed, the output is the input (delayed by the chain's latency, so A and B line up) times
    one gain that brings it to the processed signal's short-term loudness; the switch is a linear
    crossfade across one block, both ways; switching back is the processed signal again at once."""
    chain = active_chain().with_values(**{"gain.gain": -6.0})   # several dB quieter than its input
    rate, block, lat = 44100, 512, 128
    x = np.ascontiguousarray(np.concatenate([song, song], axis=1)[:, :block * 1200])
    proc, state = _processor(chain, rate, block)
    n_on, n_off = 500, 900
    outs = []
    for k in range(x.shape[1] // block):
        if k == n_on:
            state.set_control("bypass", 1)
        if k == n_off:
            state.set_control("bypass", 0)
        outs.append(proc.process(x[:, k * block:(k + 1) * block]))
    y = np.concatenate(outs, axis=1)
    wet = render_offline(x, chain, rate)
    dry = np.concatenate([np.zeros((2, lat), np.float32), x], axis=1)[:, :y.shape[1]]
    a, b = (n_on + 1) * block, n_off * block          # fully bypassed
    g = (y[:, a:b] / np.where(np.abs(dry[:, a:b]) > 1e-3, dry[:, a:b], np.nan))[0]
    gains = g[np.isfinite(g)]
    # the input's own shape, gained: one gain per moment, drifting slowly with the two short-term
    # loudnesses (ramped from block to block, never a step)
    assert np.abs(np.diff(gains)).max() < 2e-3 and 0.1 < gains.min() <= gains.max() < 10.0
    np.testing.assert_allclose(y[1, a:b], dry[1, a:b] * np.interp(np.arange(a, b), np.arange(a, b)[np.isfinite(g)],
                                                                  gains), atol=2e-3)
    proc_lufs = integrated_loudness(wet[:, a - lat:b - lat], rate)
    assert integrated_loudness(y[:, a:b], rate) == pytest.approx(proc_lufs, abs=0.5)
    assert abs(integrated_loudness(dry[:, a:b], rate) - proc_lufs) > 2.0   # a plain bypass would be off
    wet_d = np.concatenate([np.zeros((2, lat), np.float32), wet], 1)   # the stream: the render, delayed
    np.testing.assert_allclose(y[:, :n_on * block], wet_d[:, :n_on * block], atol=1e-4)
    # the crossfade block: y = (1 - w) wet + w g dry with w rising linearly over the block
    s = n_on * block
    w = (np.arange(block) + 1) / block
    mixed = (1 - w) * wet_d[:, s:s + block] + w * gains.mean() * dry[:, s:s + block]
    assert np.abs(y[:, s:s + block] - mixed).max() < 0.02
    back = (n_off + 1) * block
    np.testing.assert_allclose(y[:, back:back + 10 * block], wet_d[:, back:back + 10 * block], atol=1e-4)


def test_bypass_gain_is_the_last_3_s_loudness_and_ramps_within_each_block():
    """The bypass gain follows the short-term loudness (the last 3 s, not everything so far): a wet
    signal 12 dB under the dry one for the last 4 s gives -12 dB, however loud it was before; and
    while it moves, it moves linearly across each block (no step at a block boundary)."""
    from bridge.live.monitor import Monitor

    rate, block = 44100, 512
    rng = np.random.default_rng(5)
    n = (15 * rate) // block * block
    x = (0.1 * rng.standard_normal((2, n))).astype(np.float32)
    a = np.where(np.arange(n) < 10 * rate, 1.0, 10 ** (-12 / 20)).astype(np.float32)
    mon = Monitor(rate, 0, block)
    y = np.concatenate([mon.mix(x[:, i:i + block], x[:, i:i + block] * a[i:i + block], 1.0)
                        for i in range(0, n, block)], axis=1)
    valid = np.abs(x[0]) > 0.05
    g = np.where(valid, y[0] / np.where(valid, x[0], 1.0), np.nan)
    late = g[14 * rate:][np.isfinite(g[14 * rate:])]
    assert 20 * np.log10(np.median(late)) == pytest.approx(-12.0, abs=0.05)
    # while it moves (10-13 s): per-sample steps of a linear ramp, never a block's whole change at once
    seg = slice(10 * rate // block * block, 13 * rate // block * block)
    gs, ok = g[seg], valid[seg]
    steps = np.abs(np.diff(gs))[ok[1:] & ok[:-1]]
    ends = np.array([np.nanmedian(gs[k:k + block][-64:]) for k in range(0, gs.shape[0], block)])
    per_block = np.abs(np.diff(ends)).max()
    assert per_block > 1e-3                                   # it does move, block by block
    assert steps.max() < 2 * per_block / block + 1e-5


def test_a_long_session_keeps_bounded_timings():
    """Hours of blocks and messages: the engine keeps the latest timings for its percentiles, not all."""
    from bridge.live.engine import TIMINGS_KEPT, EngineStats

    st = EngineStats()
    st.block_ms.extend(np.full(TIMINGS_KEPT + 1000, 9.0))
    st.block_ms.extend(np.full(1000, 1.0))
    st.latency_ms.extend(np.zeros(TIMINGS_KEPT + 5))
    assert len(st.block_ms) == len(st.latency_ms) == TIMINGS_KEPT and st.block_ms[-1] == 1.0
    assert st.summary()["block_ms_p50"] == 9.0 and st.summary()["block_ms_max"] == 9.0


# ------------------------------------------------------------------------------ JACK

class Jackd:
    """A JACK server of its own (dummy driver, unique name), with a player and a recorder client.

    Synchronous (``-S``: each cycle waits for every client, so a test client that the busy machine
    holds up delays the cycle instead of breaking it; measured load average 15 on 2 cores here).
    """

    def __init__(self, rate: int, period: int):
        import jack

        self.name = f"refmaster-test-{os.getpid()}-{rate}-{time.monotonic_ns() % 10**6}"
        self.rate, self.period = rate, period
        self.proc = subprocess.Popen(["jackd", "--no-realtime", "-S", "-n", self.name, "-d", "dummy", "-r", str(rate),
                                      "-p", str(period)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        jack.set_error_function(lambda m: None)
        try:
            for _ in range(100):
                try:
                    self.player = jack.Client("player", servername=self.name, no_start_server=True)
                    break
                except jack.JackOpenError:
                    time.sleep(0.1)
            else:
                raise AssertionError(f"jackd did not start: {self.proc.stderr.read() if self.proc.poll() else ''}")
            self.recorder = jack.Client("recorder", servername=self.name, no_start_server=True)
        finally:
            jack.set_error_function(None)
        self.outs = [self.player.outports.register(f"out_{i}") for i in (1, 2)]
        self.ins = [self.recorder.inports.register(f"in_{i}") for i in (1, 2)]
        tie_in, tie_out = self.player.inports.register("tie"), self.recorder.outports.register("tie")
        self.audio = np.zeros((2, 0), np.float32)
        self.go = threading.Event()
        self.started_at = None          # JACK frame time of the audio's first sample
        self._pos = 0
        self.chunks, self._lock = [], threading.Lock()
        self.player.set_process_callback(self._play)
        self.recorder.set_process_callback(self._record)
        self.player.activate()
        self.recorder.activate()
        self.player.connect("system:capture_1", tie_in)       # hang both on the driver (latency passes)
        self.recorder.connect(tie_out, "system:playback_1")

    def _play(self, frames):
        outs = [p.get_array() for p in self.outs]
        if not self.go.is_set():
            for o in outs:
                o.fill(0.0)
            return
        if self.started_at is None:
            self.started_at = self.player.last_frame_time
        chunk = self.audio[:, self._pos:self._pos + frames]
        for c in range(2):
            outs[c][:chunk.shape[1]] = chunk[c]
            outs[c][chunk.shape[1]:] = 0.0
        self._pos += frames

    def _record(self, frames):
        block = np.stack([p.get_array().copy() for p in self.ins])
        with self._lock:
            self.chunks.append((self.recorder.last_frame_time, block))

    def play_through(self, frames_after: int, timeout: float = 120.0) -> None:
        """Play the whole audio and ``frames_after`` more, freewheeling (as fast as the graph runs)."""
        self.player.set_freewheel(True)
        try:
            self.go.set()
            deadline = time.monotonic() + timeout
            while self._pos < self.audio.shape[1] + frames_after:
                assert time.monotonic() < deadline, "the graph stopped running"
                time.sleep(0.05)
        finally:
            self.player.set_freewheel(False)

    def recording(self):
        """(JACK frame time of the first recorded frame, (2, n) recording)."""
        with self._lock:
            chunks = list(self.chunks)
        return chunks[0][0], np.concatenate([c for _, c in chunks], axis=1)

    def close(self):
        """The server first (SIGTERM, SIGKILL after 5 s), then our clients dropped without calling
        into libjack: closing a client while the server holds its cycle up (a synchronous server
        waiting for a client that died) makes libjack cancel the client's callback thread, and one
        cancelled inside Python's lock leaves this process hung for good (seen in a mutation run)."""
        import jack

        jack.set_error_function(lambda m: None)   # "cannot read socket": the server we stop
        stop_jackd(self.proc, self.name)   # a killed server's registry slot is reclaimed too
        for c in (self.player, self.recorder):
            c._ptr = jack._ffi.NULL
        for leftover in Path("/dev/shm").glob(f"jack*{self.name}*"):   # what a killed server leaves
            leftover.unlink(missing_ok=True)


def _default_sigint() -> None:
    """SIGINT as a terminal delivers it: a shell's background job (a CI step, `cmd &`) starts with it
    ignored, and every process started from there would inherit that."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _cwd(store) -> Path:
    """An empty folder beside the test's presets for a `refmaster` subprocess to run in: whatever it
    writes by default stays under tmp_path (and no folder there, such as presets/, shadows a package)."""
    d = Path(store.directory).parent / "cwd"
    d.mkdir(exist_ok=True)
    return d


class Insert:
    """`refmaster serve --insert` in a subprocess, killed whatever happens."""

    def __init__(self, jackd: Jackd, store, *args):
        # the change record beside the test's presets (its default, insert.changes.jsonl, is in the cwd)
        record = [] if "--record" in args else ["--record", Path(store.directory).parent / "insert.changes.jsonl"]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bridge.cli", "serve", "--insert", "--osc-port", "0", "--jack-server", jackd.name,
             "--presets", str(store.directory), *map(str, [*args, *record])],
            cwd=_cwd(store), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True,   # a process group of its own, as in a terminal (Ctrl-C reaches all of it)
            preexec_fn=_default_sigint)
        self.lines, self.port, self.latency = [], None, None
        deadline = time.monotonic() + 90
        while self.port is None:
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError(f"serve --insert exited: {self.proc.stderr.read()}")
            self.lines.append(line)
            if line.startswith("latency: "):
                self.latency = int(line.split()[1])
            if line.startswith("listening: osc.udp://"):
                self.port = int(line.split("osc.udp://")[1].split("/")[0].rsplit(":", 1)[1])
            assert time.monotonic() < deadline, "serve --insert did not start"

    def stop(self, sig=signal.SIGTERM, timeout=30, group=False):
        """``sig`` to serve (``group``: to its whole process group, as Ctrl-C in a terminal does)."""
        if self.proc.poll() is None:
            if group:
                os.killpg(self.proc.pid, sig)
            else:
                self.proc.send_signal(sig)
        out, err = self.proc.communicate(timeout=timeout)
        self.lines.append(out)
        return self.proc.returncode, "".join(self.lines), err

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


@pytest.fixture
def jack_session():
    started = []

    def start(rate: int, period: int):
        j = Jackd(rate, period)
        started.append(j)
        return j

    yield start
    for j in started:
        j.close()


@pytest.fixture
def inserts():
    started = []

    def make(*args, **kw):
        s = Insert(*args, **kw)
        started.append(s)
        return s

    yield make
    for s in started:
        s.kill()


@pytest.fixture
def store(tmp_path):
    st = PresetStore(tmp_path / "presets")
    st.save(Preset.new("active", active_chain()))
    st.save(Preset.new("gain only", P.ChainParams(P.defaults(), {m: m == "gain" for m in P.MODULES})
                       .with_values(**{"gain.gain": 6.0})))
    return st


def _real_excerpt(rate: int, seconds: float) -> np.ndarray:
    from export.checks import load_excerpt

    song = next((f for f in REAL_SONGS if f.name == "vibe_ace.ogg"), REAL_SONGS[0])
    return load_excerpt(song, seconds, offset_s=20.0, sample_rate=rate)


def _reported(jackd: Jackd, client: str = "refmaster") -> int:
    """The insert's latency as JACK reports it: its outputs' capture latency less its inputs'."""
    from bridge.live.jack_latency import CAPTURE, PLAYBACK, latency_range

    get = jackd.recorder.get_port_by_name
    cap_in, cap_out = latency_range(get(f"{client}:in_1"), CAPTURE), latency_range(get(f"{client}:out_1"), CAPTURE)
    pb_in, pb_out = latency_range(get(f"{client}:in_1"), PLAYBACK), latency_range(get(f"{client}:out_1"), PLAYBACK)
    assert cap_out[0] - cap_in[0] == cap_out[1] - cap_in[1] == pb_in[0] - pb_out[0] == pb_in[1] - pb_out[1]
    return cap_out[0] - cap_in[0]


def _measured_lag(rec: np.ndarray, ref: np.ndarray, offset: int, max_lag: int = 1 << 15) -> int:
    """The lag at which the recording (from ``offset``) lines up with the offline render."""
    n = min(ref.shape[1], 1 << 16)
    seg = rec[0, offset:offset + n + max_lag].astype(np.float64)
    r = ref[0, :n].astype(np.float64)
    size = 1 << int(np.ceil(np.log2(seg.shape[0] + n)))
    xc = np.fft.irfft(np.fft.rfft(seg, size) * np.conj(np.fft.rfft(r, size)), size)[:max_lag]
    return int(np.argmax(xc))


@needs_jackd
@needs_real_music
@pytest.mark.parametrize("rate", [44100, 48000, 96000])
def test_insert_plays_the_offline_render_after_the_latency_it_reports(rate, jack_session, inserts, store):
    """A real song into the insert at the server's rate (period 128): the recording is the offline
    render of the preset at that rate, after exactly the latency the insert reports to JACK."""
    jackd = jack_session(rate, 128)
    audio = _real_excerpt(rate, 2.0)
    jackd.audio = audio
    block = [] if rate == 48000 else ["--insert-block", "256"]   # 48 kHz: the block it measures for itself
    ins = inserts(jackd, store, "--preset", "active", "--connect-from", "player:out_1", "player:out_2",
                  "--connect-to", "recorder:in_1", "recorder:in_2", "--record", Path(store.directory) / "r.jsonl", *block)
    reported = _reported(jackd)
    assert ins.latency == reported and reported > 0
    jackd.play_through(reported + 4 * jackd.period)
    code, out, err = ins.stop()
    assert code == 0, err
    first, rec = jackd.recording()
    offset = jackd.started_at - first
    ref = render_offline(audio, active_chain(), rate)
    lag = _measured_lag(rec, ref, offset)
    got = rec[:, offset + lag: offset + lag + ref.shape[1]]
    assert got.shape == ref.shape
    diff = float(np.abs(got - ref).max())
    print(f"{rate} Hz: reported {reported}, measured {lag} frames; max |difference| {diff:.2e}; {out.splitlines()[-1]}")
    assert lag == reported
    assert diff <= 1e-4
    assert np.abs(rec[:, offset:offset + lag]).max() == 0.0      # nothing of the song before its latency
    block = (reported + jackd.period - 128) // 2        # L = 2B - P + the ONNX chain's 128 frames
    assert f"blocks of {block} frames" in out and block % jackd.period == 0
    assert block == 256 or rate == 48000                 # as asked; at 48 kHz as measured at start


def tone_chain(gain_db: float = -3.0) -> P.ChainParams:
    """EQ and gain only (linear, no dynamics): a change of gain is exact from the block it lands in."""
    return P.ChainParams(P.defaults(), {m: m in ("eq", "gain") for m in P.MODULES}).with_values(
        **{"eq.band1_gain": 9.0, "eq.band1_freq": 3000.0, "gain.gain": gain_db})


@needs_jackd
def test_insert_takes_osc_bypass_and_saves_the_preset(jack_session, inserts, store, song):
    """OSC as `serve` has it, on the insert: a gain change is heard from the block after it, the
    bypass gives the input itself (no EQ) at the processed signal's short-term loudness, and
    SIGTERM saves the changed gain (never the bypass) in the preset."""
    from engine.io.audio import resample

    store.save(Preset.new("tone", tone_chain()))
    jackd = jack_session(48000, 64)
    rate = 48000
    x = np.tile(resample(song, 44100, rate), (1, 2))[:, :int(9.5 * rate)]
    jackd.audio = x
    ins = inserts(jackd, store, "--preset", "tone", "--connect-from", "player:out_1", "player:out_2",
                  "--connect-to", "recorder:in_1", "recorder:in_2", "--insert-block", "64")
    lat = ins.latency
    assert _reported(jackd) == lat > 0          # what it printed is what JACK tells the DAW
    # the audio in a process of its own (beside multiprocessing's resource tracker), away from the OSC traffic
    audio = [c for c in _children(ins.proc.pid) if "spawn_main" in Path(f"/proc/{c}/cmdline").read_text()]
    assert len(audio) == 1
    sent = {}

    def at(seconds, address, value):   # send when the player reaches `seconds` of the song
        while jackd._pos < seconds * rate:
            time.sleep(0.001)
        sent[address] = jackd._pos
        _udp_send(ins.port, address, value)

    jackd.player.set_freewheel(True)
    try:
        jackd.go.set()
        at(1.0, "/refmaster/param/gain/gain", 3.0)
        at(3.0, "/refmaster/bypass", 1)
        while jackd._pos < x.shape[1] + lat + 1024:
            time.sleep(0.01)
    finally:
        jackd.player.set_freewheel(False)
    code, out, err = ins.stop(signal.SIGINT, group=True)   # Ctrl-C: the audio process waits to be told
    assert code == 0 and "Traceback" not in err, err
    assert "(0 freewheeling)" in out          # like a DAW's export: every block waited for, never a gap
    first, rec = jackd.recording()
    y = rec[:, jackd.started_at - first + lat:][:, :x.shape[1]]
    before, after = render_offline(x, tone_chain(-3.0), rate), render_offline(x, tone_chain(3.0), rate)
    a, b = slice(int(0.2 * rate), int(0.9 * rate)), slice(int(2.0 * rate), int(2.9 * rate))
    assert np.abs(y[:, a] - before[:, a]).max() < 1e-4
    assert np.abs(y[:, b] - after[:, b]).max() < 1e-4                 # the change, from the next block on
    assert sent["/refmaster/param/gain/gain"] < 1.1 * rate
    c = slice(int(7.0 * rate), x.shape[1])                            # bypassed, after the 3 s loudness window
    g = y[0, c] / np.where(np.abs(x[0, c]) > 1e-3, x[0, c], np.nan)
    g = g[np.isfinite(g)]
    # the input itself (no EQ) under one gain that follows the two short-term loudnesses slowly
    assert np.abs(np.diff(g)).max() < 1e-3 and np.abs(g - np.median(g)).max() < 0.05 * np.median(g)
    matched = 20 * np.log10(np.median(g))
    want = integrated_loudness(after[:, c], rate) - integrated_loudness(x[:, c], rate)
    assert matched == pytest.approx(want, abs=0.5)                     # at the processed loudness
    assert np.abs(y[:, c] - after[:, c]).max() > 0.05                 # and not the processed signal
    pr = store.get("tone")
    assert pr.chain.values["gain.gain"] == 3.0 and "saved preset 'tone'" in out
    assert "bypass" not in pr.to_json() and "amount" not in pr.to_json()   # live controls are no preset


@needs_jackd
def test_insert_problems_are_one_line_and_the_preset_is_saved(jack_session, inserts, store, tmp_path):
    """No server, a port that does not exist, and a server that disappears mid-session: one line
    each on stderr, exit 2, and the session's change saved in the preset."""
    base = [sys.executable, "-m", "bridge.cli", "serve", "--insert", "--preset", "active", "--osc-port", "0",
            "--presets", str(store.directory), "--record", str(tmp_path / "r.jsonl")]
    p = subprocess.run(base + ["--jack-server", f"nobody-{os.getpid()}"], cwd=_cwd(store), capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "no JACK server 'nobody-" in p.stderr, p.stderr
    jackd = jack_session(48000, 128)
    p = subprocess.run(base + ["--jack-server", jackd.name, "--connect-from", "ardour:Master/audio_out 1"],
                       cwd=_cwd(store), capture_output=True, text=True, timeout=90)
    assert p.returncode == 2, p.stderr
    line = [l for l in p.stderr.splitlines() if l.strip()]
    assert len(line) == 1 and "no audio output port 'ardour:Master/audio_out 1'" in line[0] and "player:out_1" in line[0]
    ins = inserts(jackd, store, "--preset", "active")
    _udp_send(ins.port, "/refmaster/param/imager/width", 0.25)
    time.sleep(0.5)
    jackd.proc.kill()                     # the server vanishes
    jackd.proc.wait()
    out, err = ins.proc.communicate(timeout=30)   # and the insert stops by itself
    code = ins.proc.returncode
    errors = [l for l in err.splitlines() if l.startswith("refmaster:")]
    assert code == 2 and len(errors) == 1 and "JACK server shut down" in errors[0] and "saved preset 'active'" in errors[0], err
    assert store.get("active").chain.values["imager.width"] == 0.25


def _children(pid: int):
    """The processes whose parent is ``pid`` (from /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _udp_send(port: int, address: str, value: float) -> None:
    import socket

    from pythonosc.osc_message_builder import OscMessageBuilder

    b = OscMessageBuilder(address)
    b.add_arg(float(value), "f")
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.sendto(b.build().dgram, (HOST, port))
    s.close()


@needs_jackd
def test_serve_plays_a_song_at_the_jack_servers_rate(jack_session, store, tmp_path, song):
    """`serve --input` (the song player) on a 48 kHz JACK server: it plays at 48 kHz (it used to
    refuse any rate but 44.1 kHz); the song file is the source and is brought to the server's rate."""
    import soundfile as sf

    jackd = jack_session(48000, 256)
    wav = tmp_path / "song.wav"
    sf.write(wav, song[:, :2 * 44100].T, 44100, subtype="FLOAT")
    p = subprocess.run([sys.executable, "-m", "bridge.cli", "serve", "--input", str(wav), "--preset", "active",
                        "--presets", str(store.directory), "--osc-port", "0", "--jack", "on", "--jack-server", jackd.name,
                        "--jack-connect", "none", "--seconds", "1", "--record", str(tmp_path / "r.jsonl")],
                       cwd=_cwd(store), capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "at 48000 Hz" in p.stdout and "JACK client 'refmaster'" in p.stdout


@needs_jackd
def test_bench_insert_reports_jack_figures_under_osc_load(tmp_path):
    """`refmaster bench insert`, a few seconds of it: its own JACK server at 48 kHz, period 128, a
    player process, two OSC senders; the figures it reports are JACK's and the insert's own."""
    import json

    p = subprocess.run([sys.executable, "-m", "bridge.cli", "bench", "insert", "--seconds", "3", "--rate", "2000",
                        "--insert-block", "512", "--no-realtime", "--json"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert p.returncode in (0, 1), p.stderr            # 1: xruns or late periods on a busy machine
    r = json.loads(p.stdout)
    assert (r["rate"], r["period"], r["block"], r["latency_frames"]) == (48000, 128, 512, 2 * 512 - 128 + 128)
    assert r["messages_sent"] == 6000 and r["messages_applied"] == r["messages_received"] > 0.9 * 6000
    assert r["audio_seconds"] >= 3.0 and r["callbacks"] >= 3.0 * 48000 / 128
    assert 0 < r["callback_p50"] <= r["callback_p99"] <= r["callback_max"] and r["changed_blocks"] > 0
    assert 0 < r["message_to_rendered_ms_p50"] < r["message_to_audible_ms_p50"]   # rendered before it plays
    assert p.returncode == (0 if r["xruns"] == 0 and r["late_periods"] == 0 else 1)
