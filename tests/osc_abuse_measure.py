"""Measure what a hostile OSC sender gets out of `refmaster serve` (issue 10's figures), by hand.

    .venv/bin/python tests/osc_abuse_measure.py [--repo DIR] [--flood-mb 60] [--no-flood]
        [--messages-per-packet 2030] [--victim-host 127.0.0.1] [--serve-arg=--allow=127.0.0.1/32 ...]

Starts ``python -m bridge.cli serve`` from ``--repo`` (default: this checkout; point it at an
export of an older commit to get the "before" figures) on loopback with a synthesised song, a
preset and a change record in a temporary folder, then, each from a fresh UDP socket that
counts what comes back:

1. one 20-byte ``/*/*/*/* 1e9``;
2. a 55,720-byte bundle of 2,321 of them;
3. ``/refmaster/dump "<victim host>" <port>`` (36 bytes) to a socket that never asked;
4. ``--flood-mb`` of bundles of ``--messages-per-packet`` ``/refmaster/*/*/* ±1e9`` messages
   (2,030: the issue's 64,976-byte packets; values alternate, so every write is a change),
   then the change record's size on disk, serve's resident memory before / after / peak, and
   how long until it answers a probe.

A subscriber (a socket that subscribed itself) counts what it receives during 1 and 2. Prints
one JSON object. Only loopback; every loop is bounded.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"


def osc_string(s: str) -> bytes:
    b = s.encode() + b"\x00"
    return b + b"\x00" * (-len(b) % 4)


def message(address: str, *args) -> bytes:
    tags, data = ",", b""
    for a in args:
        if isinstance(a, str):
            tags, data = tags + "s", data + osc_string(a)
        elif isinstance(a, int):
            tags, data = tags + "i", data + struct.pack(">i", a)
        else:
            tags, data = tags + "f", data + struct.pack(">f", a)
    return osc_string(address) + osc_string(tags) + data


def bundle(messages) -> bytes:
    return b"#bundle\x00" + bytes(8) + b"".join(struct.pack(">i", len(m)) + m for m in messages)


def drain(sock: socket.socket, quiet: float = 0.5, limit: float = 60.0):
    """(datagrams, bytes, {address: count}) received until ``quiet`` s pass without one."""
    n = total = 0
    by_address = {}
    end = time.monotonic() + limit
    while time.monotonic() < end:
        ready, _, _ = select.select([sock], [], [], quiet)
        if not ready:
            break
        data = sock.recv(65536)
        n += 1
        total += len(data)
        a = data[:data.find(b"\x00")].decode("latin-1") if b"\x00" in data else "?"
        by_address[a] = by_address.get(a, 0) + 1
    return n, total, by_address


def fresh_socket() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.bind((HOST, 0))
    return s


def rss_kib(pid: int):
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM"):
            fields[k] = int(v.split()[0])
    return fields


def start_serve(repo: Path, tmp: Path, extra=()):
    code = ("import sys, numpy as np, soundfile as sf\n"
            "from engine.model.synth import synth_song\n"
            "from engine import params as P\n"
            "from presets import Preset, PresetStore\n"
            "sf.write(sys.argv[1], synth_song(3, 4.0).T, 44100, subtype='FLOAT')\n"
            "PresetStore(sys.argv[2]).save(Preset.new('measure', P.ChainParams.default()))\n")
    env = dict(os.environ, PYTHONPATH=str(repo))
    subprocess.run([sys.executable, "-c", code, str(tmp / "song.wav"), str(tmp / "presets")], cwd=repo,
                   env=env, check=True, timeout=300)
    proc = subprocess.Popen([sys.executable, "-m", "bridge.cli", "serve", "--input", str(tmp / "song.wav"),
                             "--preset", "measure", "--presets", str(tmp / "presets"), "--jack", "off",
                             "-o", str(tmp / "live.wav"), "--record", str(tmp / "rec.jsonl"),
                             "--osc-port", "0", "--no-save", *extra],
                            cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"serve exited: {proc.stderr.read()}")
        if line.startswith("listening: osc.udp://"):
            return proc, int(line.split("osc.udp://")[1].split("/")[0].rsplit(":", 1)[1])
    raise RuntimeError("serve did not start")


def probe(port: int, limit: float = 300.0) -> float:
    """Seconds until serve answers an unknown address (it answers every one with an error)."""
    s = fresh_socket()
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < limit:
            s.sendto(message("/refmaster/probe/no/such/address", 1.0), (HOST, port))
            ready, _, _ = select.select([s], [], [], 0.5)
            if ready:
                return time.monotonic() - t0
        return float("inf")
    finally:
        s.close()


def measure(repo: Path, flood_mb: float, per_packet: int = 2030, victim_host: str = HOST, extra=()) -> dict:
    out = {"repo": str(repo), "serve_args": list(extra)}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        proc, port = start_serve(repo, tmp, extra)
        to = (HOST, port)
        try:
            sub = fresh_socket()
            sub.sendto(message("/refmaster/subscribe", HOST, sub.getsockname()[1]), to)
            drain(sub)

            def kind(name, packet):
                s = fresh_socket()
                t0 = time.monotonic()
                s.sendto(packet, to)
                n, b, _ = drain(s)
                sn, sb, by = drain(sub, quiet=0.3)
                replies = sum(c for a, c in by.items() if a in ("/refmaster/error", "/refmaster/warning", "/refmaster/ok"))
                busy = probe(port)
                out[name] = {"request_bytes": len(packet), "replies_to_sender": n, "reply_bytes_to_sender": b,
                             "ratio_sender": round(b / len(packet), 3), "subscriber_datagrams": sn,
                             "subscriber_bytes": sb, "subscriber_replies": replies,
                             "subscriber_pushes": sn - replies,
                             "seconds_until_it_answers_again": round(time.monotonic() - t0 - 0.5 + busy, 2)}
                s.close()

            kind("pattern", message("/*/*/*/*", 1e9))
            kind("pattern_bundle", bundle([message("/*/*/*/*", 1e9)] * 2321))
            victim = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            victim.bind((victim_host, 0))
            req = message("/refmaster/dump", victim_host, victim.getsockname()[1])
            s = fresh_socket()
            s.sendto(req, to)
            n, b, _ = drain(victim)
            out["dump_to_third_port"] = {"victim": victim_host, "request_bytes": len(req), "datagrams_to_third_port": n,
                                         "bytes_to_third_port": b, "ratio": round(b / len(req), 2)}
            s.close()
            victim.close()
            drain(sub, quiet=0.3)
            if flood_mb > 0:
                before = rss_kib(proc.pid)
                msgs = [message("/refmaster/*/*/*", 1e9 if i % 2 else -1e9) for i in range(per_packet)]
                packet = bundle(msgs)
                n_packets = int(flood_mb * 1e6 // len(packet))
                s = fresh_socket()
                t0 = time.monotonic()
                sent = 0
                for i in range(n_packets):
                    try:
                        s.sendto(packet, to)
                        sent += len(packet)
                    except OSError:
                        pass
                    if i % 8 == 7:
                        time.sleep(0.001)
                        while select.select([s], [], [], 0)[0]:
                            s.recv(65536)
                send_s = time.monotonic() - t0
                busy = probe(port)
                drain(sub, quiet=0.3, limit=5)
                time.sleep(1.5)  # the recorder flushes once a second
                after = rss_kib(proc.pid)
                rec = sorted(tmp.glob("rec.jsonl*"))
                out["flood"] = {"packet_bytes": len(packet), "packets": n_packets, "bytes_sent": sent,
                                "send_seconds": round(send_s, 2),
                                "seconds_until_it_answers_after_the_last_packet": round(busy, 2),
                                "rss_mib_before": round(before["VmRSS"] / 1024, 1),
                                "rss_mib_after": round(after["VmRSS"] / 1024, 1),
                                "rss_mib_peak": round(after["VmHWM"] / 1024, 1),
                                "record_files": {p.name: p.stat().st_size for p in rec},
                                "record_lines": sum(1 for p in rec for _ in p.open("rb"))}
                s.close()
            sub.close()
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repo", type=Path, default=REPO, help="the checkout to run serve from")
    ap.add_argument("--flood-mb", type=float, default=60.0)
    ap.add_argument("--no-flood", action="store_true")
    ap.add_argument("--messages-per-packet", type=int, default=2030)
    ap.add_argument("--victim-host", default=HOST, help="where the dump of (3) is sent (e.g. 127.0.0.2)")
    ap.add_argument("--serve-arg", action="append", default=[], help="an extra argument for serve (repeatable)")
    args = ap.parse_args()
    print(json.dumps(measure(args.repo.resolve(), 0 if args.no_flood else args.flood_mb, args.messages_per_packet,
                             args.victim_host, args.serve_arg), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
