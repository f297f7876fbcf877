"""The OSC server, driven by liblo's oscsend/oscdump (an independent OSC implementation)."""

import json
import random
import socket
import struct
import time

import numpy as np
import pytest
from osc_peers import OscDump, needs_liblo, oscsend

from bridge.osc import space as A
from bridge.osc.dialects import Dialect
from bridge.osc.server import ItoResult, OscServer
from bridge.osc.wire import check_packet, encode_message
from engine import params as P
from presets import Preset, PresetStore

pytestmark = needs_liblo
HOST = "127.0.0.1"


@pytest.fixture
def store(tmp_path):
    return PresetStore(tmp_path / "presets")


@pytest.fixture
def server(store):
    srv = OscServer(store=store, dialects=[Dialect.load("reaper")]).start()
    try:
        yield srv
    finally:
        srv.close()


@pytest.fixture
def dump():
    d = OscDump()
    try:
        yield d
    finally:
        d.close()


def subscribe(server, dump, form="both"):
    oscsend(HOST, server.address[1], A.SUBSCRIBE, "sis", HOST, dump.port, form)
    dump.wait_address(A.DUMP_DONE)
    dump.clear()


def send(server, address, types="", *values):
    oscsend(HOST, server.address[1], address, types, *values)


def test_set_real_and_norm_with_feedback(server, dump):
    subscribe(server, dump)
    send(server, "/refmaster/param/gain/gain", "f", 3.5)
    assert dump.wait_address("/refmaster/param/gain/gain")[-1] == [pytest.approx(3.5)]
    assert dump.wait_address("/refmaster/norm/gain/gain")[-1] == [pytest.approx((3.5 + 24) / 48)]
    assert server.state.value("gain.gain") == pytest.approx(3.5)
    send(server, "/refmaster/norm/eq/low_shelf_freq", "f", 0.5)   # log scale: geometric middle
    dump.wait_address("/refmaster/param/eq/low_shelf_freq")
    assert server.state.value("eq.low_shelf_freq") == pytest.approx(200.0, rel=1e-5)
    assert dump.last("/refmaster/param/eq/low_shelf_freq")[0] == pytest.approx(200.0, rel=1e-5)
    send(server, "/refmaster/on/distortion", "i", 0)
    assert dump.wait_address("/refmaster/on/distortion")[-1] == [0]
    assert server.state.switch("distortion") is False
    send(server, "/refmaster/on/distortion", "T")
    dump.wait_address("/refmaster/on/distortion", 2)
    assert server.state.switch("distortion") is True
    # an integer is a number too; an OSC address pattern sets every match
    send(server, "/refmaster/param/eq/*_gain", "i", 2)
    dump.wait_for(lambda ms: sum(a.startswith("/refmaster/param/eq/") and a.endswith("_gain") for a, _ in ms) >= 6)
    assert all(server.state.value(f"eq.{b}_gain") == 2.0 for b in ("low_shelf", "band0", "band1", "band2", "band3", "high_shelf"))


def test_clamp_warns_and_applies_the_limit(server, dump):
    subscribe(server, dump)
    send(server, "/refmaster/param/gain/gain", "f", 99)
    warn = dump.wait_address(A.WARNING)[-1]
    assert warn[0] == "/refmaster/param/gain/gain" and "clamped to 24 dB" in warn[1]
    assert dump.wait_address("/refmaster/param/gain/gain")[-1] == [pytest.approx(24.0)]
    send(server, "/refmaster/norm/limiter/attack", "f", -0.5)
    warn = dump.wait_address(A.WARNING, 2)[-1]
    assert warn[0] == "/refmaster/norm/limiter/attack" and "clamped to 0" in warn[1]
    assert server.state.value("limiter.attack") == pytest.approx(0.1)


@pytest.mark.parametrize("address,types,values,reason", [
    ("/refmaster/param/gain/gain", "s", ["loud"], "expected a number in dB, got string"),
    ("/refmaster/param/gain/gain", "d", ["nan"], "finite"),
    ("/refmaster/param/gain/gain", "f", ["inf"], "finite"),
    ("/refmaster/param/gain/gain", "ff", [1, 2], "expected one argument"),
    ("/refmaster/param/gain/gain", "", [], "expected one argument"),
    ("/refmaster/param/gain/gian", "f", [1], "unknown address"),
    ("/refmaster/on/eq", "f", [0.5], "expected 1 (on) or 0 (off)"),
    ("/refmaster/on/eq", "s", ["on"], "expected 1 (on) or 0 (off)"),
    ("/refmaster/preset/load", "i", [3], "string"),
    ("/refmaster/preset/load", "s", ["no such preset"], "no preset called"),
    ("/refmaster/transport/play", "", [], "no live engine"),
    ("/refmaster/subscribe", "si", ["127.0.0.1", 70000], "port"),
    ("/refmaster/param/eq/[", "f", [1], "pattern"),
])
def test_errors_change_nothing(server, dump, address, types, values, reason):
    subscribe(server, dump)
    before = server.state.snapshot()
    send(server, address, types, *values)
    err = dump.wait_address(A.ERROR)[-1]
    assert err[0] == address and reason in err[1], err
    assert server.state.snapshot() == before
    assert not [a for a, _ in dump.messages if a.startswith("/refmaster/param/")]


def test_dump_has_every_value(server, dump):
    server.state.set_value("limiter.threshold", -6.5)
    server.state.set_switch("imager", False)
    server.state.set_control("amount", 0.25)
    send(server, A.DUMP, "si", HOST, dump.port)
    done = dump.wait_address(A.DUMP_DONE)[-1]
    got = dict((a, args) for a, args in dump.messages)
    assert done == [len(dump.messages) - 1] and done[0] == 2 * P.NUM_PARAMS + len(P.MODULES) + 2 + 1
    assert got["/refmaster/bypass"] == [0] and got["/refmaster/amount"] == [0.25]   # the live controls too
    for s in P.PARAMS:
        v = server.state.value(s.key)
        assert got[A.param_address(s)][0] == pytest.approx(v, rel=1e-6, abs=1e-6)
        assert got[A.norm_address(s)][0] == pytest.approx(s.to_normalized(v), abs=1e-6)
    assert got["/refmaster/on/imager"] == [0] and got["/refmaster/on/eq"] == [1]
    assert got["/refmaster/param/limiter/threshold"] == [-6.5]


def test_subscribe_feedback_from_every_source(server, dump, store):
    # only the subscriber or the address that subscribed it may unsubscribe it (issue 10): one
    # socket subscribes `second` and later unsubscribes it (a one-shot oscsend could not)
    requester = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    requester.bind((HOST, 0))
    with OscDump() as second, requester:
        subscribe(server, dump, "param")
        requester.sendto(encode_message(A.SUBSCRIBE, [HOST, second.port]), server.address)
        second.wait_address(A.DUMP_DONE)
        second.clear()
        # a change from another controller reaches both subscribers
        send(server, "/refmaster/param/imager/width", "f", 0.8)
        assert dump.wait_address("/refmaster/param/imager/width")[-1] == [pytest.approx(0.8)]
        assert second.wait_address("/refmaster/norm/imager/width")[-1] == [pytest.approx(0.8)]
        assert not dump.args("/refmaster/norm/imager/width")        # "param" form only
        # a change from the engine side (an ITO result, a preset load) is pushed too
        server.state.load(P.ChainParams.default().with_values(**{"gain.gain": -3.0}), source="ito")
        assert dump.wait_address("/refmaster/param/gain/gain")[-1] == [-3.0]
        dump.wait_address("/refmaster/param/imager/width", 2)     # back to 0.5 (the default)
        assert dump.last("/refmaster/param/imager/width") == [0.5]
        second.wait_address("/refmaster/norm/imager/width", 2)   # the load has reached it too (not in flight)
        requester.sendto(encode_message(A.UNSUBSCRIBE, [HOST, second.port]), server.address)
        dump.wait_address(A.OK)
        n = len(second.messages)
        send(server, "/refmaster/param/gain/gain", "f", 1.0)
        dump.wait_for(lambda ms: ms[-1] == ("/refmaster/param/gain/gain", [1.0]))
        time.sleep(0.2)
        assert len(second.messages) == n


def test_preset_save_load_round_trip_through_osc(server, dump, store):
    subscribe(server, dump)
    send(server, A.PRESET_SAVE, "")
    assert "no preset is loaded" in dump.wait_address(A.ERROR)[-1][1]
    send(server, "/refmaster/param/eq/band1_freq", "f", 4567.891)
    send(server, "/refmaster/param/multiband/low_comp_ratio", "f", 3.3)
    send(server, "/refmaster/on/multiband", "i", 0)
    dump.wait_address("/refmaster/on/multiband")
    send(server, A.PRESET_SAVE, "s", "osc take")
    ok = dump.wait_address(A.OK)[-1]
    assert ok[0] == A.PRESET_SAVE and "osc take" in ok[1]
    assert dump.wait_address(A.PRESET_CURRENT)[-1] == ["osc take"]
    on_disk = store.get("osc take")
    assert on_disk.chain == server.state.snapshot()                    # disk == engine, exactly
    assert on_disk.chain.values["eq.band1_freq"] == pytest.approx(4567.891, rel=1e-6)
    assert on_disk.chain.switches["multiband"] is False
    # change things, then load it back: the engine and every subscriber return to the saved state
    send(server, "/refmaster/param/eq/band1_freq", "f", 2500.0)
    send(server, "/refmaster/on/multiband", "i", 1)
    dump.wait_address("/refmaster/on/multiband", 2)
    dump.clear()
    send(server, A.PRESET_LOAD, "s", "osc take")
    assert dump.wait_address(A.OK)[-1][0] == A.PRESET_LOAD
    dump.wait_address("/refmaster/on/multiband")
    dump.wait_address("/refmaster/param/eq/band1_freq")
    assert dump.last("/refmaster/on/multiband") == [0]
    assert dump.last("/refmaster/param/eq/band1_freq")[0] == pytest.approx(4567.891, rel=1e-6)
    assert server.state.snapshot() == store.get("osc take").chain
    # saving again (no name) writes the same preset; disk still equals the engine
    send(server, "/refmaster/param/gain/gain", "f", 1.25)
    send(server, A.PRESET_SAVE, "")
    dump.wait_address(A.OK, 2)
    assert store.get("osc take").chain == server.state.snapshot()
    assert store.get("osc take").chain.values["gain.gain"] == 1.25


def test_reaper_dialect_in_and_out(server, dump):
    subscribe(server, dump, "reaper")
    send(server, "/track/1/fx/1/fxparam/42/value", "f", 0.75)    # gain.gain is parameter 42
    assert dump.wait_address("/track/1/fx/1/fxparam/42/value")[-1] == [pytest.approx(0.75)]
    assert server.state.value("gain.gain") == pytest.approx(12.0)
    send(server, "/refmaster/param/eq/low_shelf_freq", "f", 200.0)  # log-normalised: 0.5
    assert dump.wait_address("/track/1/fx/1/fxparam/2/value")[-1] == [pytest.approx(0.5, abs=1e-6)]
    send(server, "/track/1/fx/1/fxparam/49/value", "f", 0.0)      # switch 3: multiband
    assert dump.wait_address("/track/1/fx/1/fxparam/49/value")[-1] == [0.0]
    assert server.state.switch("multiband") is False
    send(server, "/track/1/fx/1/fxparam/42/value", "f", 1.5)
    assert "clamped" in dump.wait_address(A.WARNING)[-1][1]
    assert server.state.value("gain.gain") == pytest.approx(24.0)


def test_ito_and_nudge_without_a_model_say_so(server, dump):
    subscribe(server, dump)
    before = server.state.snapshot()
    send(server, A.ITO_RUN, "i", 20)
    send(server, A.NUDGE, "s", "brighter, wider")
    errs = dump.wait_address(A.ERROR, 2)
    assert [e[0] for e in errs] == [A.ITO_RUN, A.NUDGE]
    assert all("not available" in e[1] for e in errs)
    assert server.state.snapshot() == before


def test_ito_hook_result_is_applied_and_pushed(store, dump):
    seen = []

    def hook(req):  # stands in for the engine's ITO: checks what the server hands over
        seen.append(req)
        for i in range(3):
            req.progress(i, 1.0 / (i + 1))
        return ItoResult(req.chain.with_values(**{"eq.high_shelf_gain": 4.0}), z_ref=[0.1, 0.2],
                         loss_history=[1.0, 0.5, 0.33], settings={"steps": req.steps})

    pr = Preset.new("ref", P.ChainParams.default(), z_ref=[0.0, 0.0])
    store.save(pr)
    with OscServer(store=store, preset=pr, ito_handler=hook, song=np.zeros((2, 10), np.float32)) as srv:
        subscribe(srv, dump)
        oscsend(HOST, srv.address[1], A.ITO_RUN, "i", 7)
        assert dump.wait_address(A.OK)[-1][0] == A.ITO_RUN
        assert dump.args(A.ITO_PROGRESS) == [[0, 1.0], [1, 0.5], [2, pytest.approx(1 / 3)]]
        assert dump.wait_address("/refmaster/param/eq/high_shelf_gain")[-1] == [4.0]
        assert seen[0].steps == 7 and seen[0].kind == "run" and seen[0].song.shape == (2, 10)
        srv.save_preset()
    saved = store.get("ref")
    assert saved.z_ref == [0.1, 0.2] and saved.ito["loss_history"] == [1.0, 0.5, 0.33]
    assert saved.chain.values["eq.high_shelf_gain"] == 4.0


def test_garbage_gets_errors_and_changes_nothing(server, dump):
    subscribe(server, dump)
    server.state.set_value("gain.gain", 2.0)
    time.sleep(0.05)
    dump.clear()
    before = server.state.snapshot()
    rng = random.Random(1)
    good = encode_message("/refmaster/param/gain/gain", [5.0])
    packets = []
    packets += [bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 200))) for _ in range(300)]
    packets += [good[:n] for n in range(1, len(good))]                            # truncated
    nested = good
    for _ in range(2000):                                                         # nested bundles
        nested = b"#bundle\x00" + bytes(8) + struct.pack(">i", len(nested)) + nested
    packets.append(nested)
    packets.append(b"#bundle\x00" + bytes(8) + struct.pack(">i", 400) + good)     # lying element size
    packets.append(b"#bundle\x00" + bytes(8) + struct.pack(">i", 8) + b"garbage!")
    packets.append(encode_message("/refmaster/param/gain/gain", ["5.0"]))          # string for a float
    packets.append(encode_message("/refmaster/param/gain/gain", [b"\x00\x01"]))
    packets.append(encode_message("/refmaster/on/eq", ["yes"]))
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for p in packets:
            sock.sendto(p, server.address)
            time.sleep(0.0005)
    finally:
        sock.close()
    dump.wait_address(A.ERROR, len(packets), timeout=15)
    assert server.state.snapshot() == before
    assert server.udp._thread.is_alive()
    reasons = " | ".join(e[1] for e in dump.args(A.ERROR))
    assert "nested deeper" in reasons and "does not fit" in reasons and "expected a number" in reasons
    # and it still works
    send(server, "/refmaster/param/gain/gain", "f", 5.0)
    dump.wait_for(lambda ms: ms[-1] == ("/refmaster/norm/gain/gain", [pytest.approx(29 / 48)]))
    assert server.state.value("gain.gain") == 5.0


def test_check_packet_walks_bundles_without_recursion():
    msg = encode_message("/a", [1.0])
    b = msg
    for _ in range(5):
        b = b"#bundle\x00" + bytes(8) + struct.pack(">i", len(b)) + b
    assert check_packet(b) is None
    for _ in range(5):
        b = b"#bundle\x00" + bytes(8) + struct.pack(">i", len(b)) + b
    assert "nested deeper" in check_packet(b)
    assert "multiple of 4" in check_packet(msg[:-1])


def test_address_space_is_generated_from_the_schema(capsys):
    from bridge.cli import main

    assert set(s.key for s in A.PARAM_ADDRESSES.values()) == set(P.PARAM_KEYS)
    assert main(["osc", "addresses", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 2 * P.NUM_PARAMS + len(P.MODULES) + len(A.CONTROL_ADDRESSES) + len(A.COMMANDS)
    assert {"address": "/refmaster/param/limiter/release", "args": "f",
            "meaning": "Limiter release (widened from 100 ms: f draws 20–1000 ms): 5…1000 ms (log)"} in rows


def test_dialect_files_validate(tmp_path, capsys):
    from bridge.cli import main
    from bridge.osc.dialects import DialectError

    reaper = Dialect.load("reaper", {"track": 3, "fx": 2})
    assert reaper.params["gain.gain"].address == "/track/3/fx/2/fxparam/42/value"
    assert reaper.switches["limiter"].address == "/track/3/fx/2/fxparam/52/value"
    generic = Dialect.load("generic")
    assert all(e.address == A.param_address(P.spec(k)) for k, e in generic.params.items())
    bad = tmp_path / "bad.json"
    for data, msg in [
        ({"schema": "refmaster.dialect/1", "name": "x", "params": {"eq.nope": {"address": "/a"}}}, "not a refmaster parameter"),
        ({"schema": "refmaster.dialect/1", "name": "x", "params": {"*": {"address": "/a/{foo}"}}}, "unknown template field"),
        ({"schema": "refmaster.dialect/1", "name": "x", "params": {"*": {"address": "/same"}}}, "used for both"),
        ({"schema": "refmaster.dialect/1", "name": "x", "params": {"*": {"address": "/p/{index}", "scale": "db"}}}, "scale"),
    ]:
        bad.write_text(json.dumps(data))
        with pytest.raises(DialectError, match=msg):
            Dialect.load(bad)
    custom = tmp_path / "mine.json"
    custom.write_text(json.dumps({"schema": "refmaster.dialect/1", "name": "mine",
                                  "params": {"*": {"address": "/fx/{module}/{name}", "scale": "linear"},
                                             "imager.width": None}}))
    d = Dialect.load(custom)
    assert "imager.width" not in d.params and len(d.params) == P.NUM_PARAMS - 1
    assert d.outgoing_param(P.spec("eq.low_shelf_freq"), 1010.0) == [("/fx/eq/low_shelf_freq", pytest.approx(0.5))]
    assert main(["osc", "dialect", str(bad)]) == 2


def test_open_stage_control_layout(tmp_path, capsys):
    from bridge.cli import main

    out = tmp_path / "layout.json"
    assert main(["osc", "layout", "--open-stage-control", str(out), "--port", "9123"]) == 0
    session = json.loads(out.read_text())
    assert session["type"] == "session"
    tabs = session["content"]["tabs"]
    assert [t["label"] for t in tabs] == ["A/B"] + [P.MODULE_TITLES[m] for m in P.MODULES]
    ab, tabs = tabs[0], tabs[1:]   # the live controls first: bypass toggle, amount fader
    assert ab["widgets"][0]["address"] == "/refmaster/bypass" and ab["widgets"][0]["mode"] == "toggle"
    assert ab["widgets"][1]["widgets"][0]["address"] == "/refmaster/amount"
    faders = {w["address"]: w for t in tabs for w in t["widgets"][1]["widgets"]}
    assert len(faders) == P.NUM_PARAMS
    f = faders["/refmaster/param/multiband/low_release"]
    s = P.spec("multiband.low_release")
    assert f["range"] == {"min": s.min, "max": s.max} and f["logScale"] is True and f["unit"] == "ms"
    assert f["target"] == "127.0.0.1:9123"
    toggles = [t["widgets"][0] for t in tabs]
    assert [w["address"] for w in toggles] == [A.switch_address(m) for m in P.MODULES]
