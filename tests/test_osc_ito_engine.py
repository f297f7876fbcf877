"""The OSC ITO and nudge path with the real engine (no stand-in hook).

The server is built the way `refmaster serve` builds it — a preset, its BridgeState, the song,
the reference and :func:`bridge.cli.serve.ito_handlers` — on loopback; a python-osc client
sends ``/refmaster/ito/run`` and ``/refmaster/nudge`` and a python-osc server subscribed to the
bridge collects what it pushes. The handlers are wrapped only to keep what they returned (and,
for the nudge, whose OSC message carries no step count, to ask for a few steps instead of 50).
"""

from __future__ import annotations

import dataclasses
import socket
import threading
import time

import numpy as np
import pytest
import torch
from pythonosc.dispatcher import Dispatcher
from pythonosc.osc_server import ThreadingOSCUDPServer
from pythonosc.udp_client import SimpleUDPClient

from bridge.osc import space as A
from bridge.osc.server import OscServer
from bridge.osc.state import BridgeState
from engine import params as P
from engine.model.networks import default_weights
from engine.model.synth import synth_song

pytestmark = pytest.mark.skipif(not default_weights("white-box").exists(),
                                reason="shipped white-box weights missing (train with `refmaster train`)")
HOST = "127.0.0.1"
ITO_STEPS = 3
NUDGE_STEPS = 4
#: bounded waits (s): a few ITO steps take seconds; this is only there so a hang fails
WAIT = 150.0


class Collector:
    """A python-osc server that records every message it receives."""

    def __init__(self):
        self.messages = []
        self._cond = threading.Condition()
        d = Dispatcher()
        d.set_default_handler(self._on)
        self.server = ThreadingOSCUDPServer((HOST, 0), d)
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def _on(self, address, *args):
        with self._cond:
            self.messages.append((address, list(args)))
            self._cond.notify_all()

    def wait_for(self, pred, timeout):
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                hit = pred(self.messages)
                if hit:
                    return hit
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out after {timeout} s; last messages: {self.messages[-5:]}")
                self._cond.wait(left)

    def since(self, n):
        with self._cond:
            return list(self.messages[n:])

    def __len__(self):
        with self._cond:
            return len(self.messages)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def _reply_to(address):
    """A predicate: the /refmaster/ok or /refmaster/error answering ``address``, or None."""
    def pred(msgs):
        for a, args in msgs:
            if a in (A.OK, A.ERROR) and args and args[0] == address:
                return a, args
        return None
    return pred


def _render_norm(song, chain):
    from engine.dsp.chain import render_chain
    from engine.model.fxnorm import fx_normalize

    p, s = chain.to_tensors()
    with torch.no_grad():
        return render_chain(torch.from_numpy(fx_normalize(song)).unsqueeze(0), p, s, check_params=False)


def _pushed_values(msgs):
    """The last value pushed for each parameter key (real-unit form)."""
    out = {}
    for a, args in msgs:
        spec = A.PARAM_ADDRESSES.get(a)
        if spec is not None:
            out[spec.key] = float(args[0])
    return out


def test_osc_ito_run_and_nudge_with_the_real_engine(tmp_path):
    from bridge.cli.serve import ito_handlers
    from engine.analysis.features import audio_features, integrated_loudness
    from engine.mastering.nudge import NUDGE_CHECKS
    from presets import Preset, PresetStore

    song = synth_song(21, 2.0)
    reference = (synth_song(22, 2.0) * 1.5).astype(np.float32)
    store = PresetStore(tmp_path / "presets")
    preset = Preset.new("live", P.ChainParams.default())  # no z_ref: ITO starts from Φ(--ref)
    store.save(preset)
    state = BridgeState(preset.chain)
    run_ito, run_nudge = ito_handlers(preset, song, reference)
    got = {}

    def ito_spy(req):
        got["ito_request"] = req
        got["ito"] = run_ito(req)
        return got["ito"]

    def nudge_spy(req):
        got["nudge_request"] = req
        got["nudge"] = run_nudge(dataclasses.replace(req, steps=NUDGE_STEPS))
        return got["nudge"]

    sub = Collector()
    server = OscServer(state, HOST, 0, store=store, preset=preset, ito_handler=ito_spy, nudge_handler=nudge_spy,
                       song=song, reference=reference, log=lambda m: None).start()
    client = SimpleUDPClient(HOST, server.address[1])
    try:
        client.send_message(A.SUBSCRIBE, [HOST, sub.port])
        sub.wait_for(lambda ms: any(a == A.DUMP_DONE for a, _ in ms), 10)
        before = state.snapshot()

        # ---- /refmaster/ito/run <steps>
        n0 = len(sub)
        client.send_message(A.ITO_RUN, [ITO_STEPS])
        kind, args = sub.wait_for(_reply_to(A.ITO_RUN), WAIT)
        assert kind == A.OK, args
        res = got["ito"]
        assert got["ito_request"].steps == ITO_STEPS and got["ito_request"].song is song
        after_ito = state.snapshot()
        # the engine holds exactly what ITO returned ...
        assert after_ito.switches == res.chain.switches
        for k in P.PARAM_KEYS:
            assert after_ito.values[k] == pytest.approx(res.chain.values[k], abs=1e-9), k
        # ... which is a mastering result: Θ moved, and (loudness match) the master is at the reference's loudness
        moved = [k for k in P.PARAM_KEYS if abs(after_ito.values[k] - before.values[k]) > 1e-6]
        assert len(moved) >= 5
        assert integrated_loudness(_render_norm(song, after_ito)[0].numpy()) == \
            pytest.approx(integrated_loudness(reference), abs=0.5)
        # ITO ran (step 0 + at most ITO_STEPS updates) and every step's loss was pushed as progress
        assert 2 <= len(res.loss_history) <= ITO_STEPS + 1
        msgs = sub.wait_for(lambda ms: ms[n0:] if set(moved) <= set(_pushed_values(ms[n0:])) else None, 10)
        progress = [args for a, args in msgs if a == A.ITO_PROGRESS]
        assert [p[0] for p in progress] == list(range(len(res.loss_history)))
        assert [p[1] for p in progress] == pytest.approx(res.loss_history, rel=1e-6)
        # ... and the change was pushed to the subscriber
        pushed = _pushed_values(msgs)
        for k in moved:
            assert pushed[k] == pytest.approx(after_ito.values[k], rel=1e-6, abs=1e-6), k
        # the preset now carries ITO's embedding and loss history (saved on /refmaster/preset/save)
        assert server.preset.z_ref == res.z_ref and len(res.z_ref) == 2048

        # ---- /refmaster/nudge <words>
        n1 = len(sub)
        client.send_message(A.NUDGE, ["brighter"])
        kind, args = sub.wait_for(_reply_to(A.NUDGE), WAIT)
        assert kind == A.OK, args
        nres = got["nudge"]
        # it started from ITO's result (the preset's new z_ref), not from Φ(reference) again
        assert got["nudge_request"].words == "brighter"
        assert got["nudge_request"].preset.z_ref == res.z_ref
        after_nudge = state.snapshot()
        for k in P.PARAM_KEYS:
            assert after_nudge.values[k] == pytest.approx(nres.chain.values[k], abs=1e-9), k
        nudged = [k for k in P.PARAM_KEYS if abs(after_nudge.values[k] - after_ito.values[k]) > 1e-6]
        assert nudged, "the nudge changed nothing"
        msgs = sub.wait_for(lambda ms: ms[n1:] if set(nudged) <= set(_pushed_values(ms[n1:])) else None, 10)
        pushed = _pushed_values(msgs)
        for k in nudged:
            assert pushed[k] == pytest.approx(after_nudge.values[k], rel=1e-6, abs=1e-6), k
        # and it did what the word says: more energy above 4 kHz than the ITO master
        with torch.no_grad():
            fa = audio_features(_render_norm(song, after_ito).double())
            fb = audio_features(_render_norm(song, after_nudge).double())
        assert NUDGE_CHECKS["brighter"](fa, fb) > 0.005  # dB; 4 RAdam steps move it ~0.017 dB here

        path = server.save_preset()
        saved = PresetStore(tmp_path / "presets").get("live")
        assert saved.z_ref == pytest.approx(nres.z_ref, abs=1e-6) and path.exists()
        assert saved.ito["loss_history"] == pytest.approx(nres.loss_history)
        assert saved.chain.values["eq.high_shelf_gain"] == pytest.approx(after_nudge.values["eq.high_shelf_gain"],
                                                                        abs=1e-5)
    finally:
        server.close()
        sub.close()
