"""The OSC server: parameter sync between the engine, any number of controllers and the presets.

Three parts, python-osc style:

* :class:`UdpTransport` receives datagrams on a UDP port and sends replies from it; it knows
  nothing of addresses or handlers (it hands each datagram, its sender and its arrival time to
  one callback).
* :class:`OscDispatcher` maps addresses to handlers (exact addresses, and OSC address patterns
  such as ``/refmaster/param/eq/*_gain`` matched against them).
* :class:`OscServer` parses packets (python-osc), applies the refmaster semantics and owns the
  shared :class:`BridgeState` (Θ in real units + switches) that the live engine reads at the
  start of every block.

Semantics (docs/bridge.md): changes apply in arrival order, last writer wins; a value out of
range is clamped and answered with ``/refmaster/warning``; an unknown address, a wrong type or
count of arguments, NaN/inf, a malformed or truncated packet or a bundle nested deeper than
:data:`MAX_BUNDLE_DEPTH` changes nothing and is answered with ``/refmaster/error <address>
<reason>``. Replies go to the sender and to every subscriber (``oscsend``-style senders cannot
receive). Every change, whoever made it (a controller, ITO, a preset load), is pushed to every
subscriber; pushes are coalesced per address (each subscriber always ends with the latest value).
A new subscriber first gets a full dump. Bundle time tags are not honoured: bundles apply on
arrival.

ITO and nudges are not done here: the server calls an injected :data:`ItoHandler` in a worker
thread with an :class:`ItoRequest` and applies the :class:`ItoResult` it returns. Without one,
``/refmaster/ito/run`` and ``/refmaster/nudge`` answer with an error saying so.
"""

from __future__ import annotations

import math
import re
import socket
import struct
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, NamedTuple, Optional, Protocol, Sequence, Tuple

import numpy as np
from pythonosc.osc_message_builder import OscMessageBuilder
from pythonosc.osc_packet import OscPacket, ParseError

from engine import params as P
from engine.errors import ParamError, RefmasterError

from bridge.osc import space as A

MAX_BUNDLE_DEPTH = 8
MAX_SUBSCRIBERS = 32
#: Pushes to subscribers are coalesced over at most this long.
PUSH_INTERVAL_S = 0.02

Address = Tuple[str, int]


class OscReplyError(Exception):
    """Raised by a handler: the message is refused and answered with ``/refmaster/error``."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


# ------------------------------------------------------------------------------ encoding

def encode_message(address: str, args: Sequence = ()) -> bytes:
    """One OSC message; Python floats go as 32-bit floats, ints as int32, str as strings."""
    b = OscMessageBuilder(address)
    for a in args:
        if isinstance(a, bool):
            b.add_arg(a)
        elif isinstance(a, (int, np.integer)):
            b.add_arg(int(a), "i")
        elif isinstance(a, (float, np.floating)):
            b.add_arg(float(a), "f")
        else:
            b.add_arg(str(a), "s")
    return b.build().dgram


_BUNDLE = b"#bundle\x00"


#: Argument sizes of the OSC types python-osc decodes (strings and blobs are handled apart).
_FIXED_SIZE = {"i": 4, "f": 4, "r": 4, "m": 4, "d": 8, "h": 8, "t": 8, "T": 0, "F": 0, "N": 0, "[": 0, "]": 0}


def _padded_string_end(data: bytes, pos: int, end: int) -> Optional[int]:
    nul = data.find(b"\x00", pos, end)
    if nul < 0:
        return None
    stop = nul + 4 - (nul % 4) if nul % 4 else nul + 4
    return stop if stop <= end else None


def check_message(data: bytes, start: int = 0, end: Optional[int] = None) -> Optional[str]:
    """A reason why the message ``data[start:end]`` is malformed, or None.

    Checks that the address and type tags are NUL-terminated and padded and that the
    arguments fill the message exactly: a truncated message is refused rather than
    completed with zeros (which python-osc does for floats, to suit Reaktor).
    """
    end = len(data) if end is None else end
    pos = _padded_string_end(data, start, end)
    if pos is None:
        return "address is not NUL-terminated and padded (truncated?)"
    if pos == end:
        return None  # no type tag string: an (old-style) message without arguments
    if data[pos:pos + 1] != b",":
        return "type tag string missing (must start with ',')"
    tags_end = _padded_string_end(data, pos, end)
    if tags_end is None:
        return "type tag string is not NUL-terminated and padded (truncated?)"
    tags = data[pos + 1:data.find(b"\x00", pos, end)].decode("ascii", "replace")
    pos = tags_end
    for t in tags:
        if t in _FIXED_SIZE:
            pos += _FIXED_SIZE[t]
        elif t == "s":
            nxt = _padded_string_end(data, pos, end)
            if nxt is None:
                return "a string argument is not NUL-terminated (truncated?)"
            pos = nxt
        elif t == "b":
            if pos + 4 > end:
                return "a blob argument is truncated"
            (n,) = struct.unpack(">i", data[pos:pos + 4])
            if n < 0:
                return "a blob argument has a negative size"
            pos += 4 + n + (-n % 4)
        else:
            return f"unsupported type tag {t!r}"
        if pos > end:
            return f"the arguments ({tags}) need more bytes than the message has (truncated?)"
    if pos != end:
        return f"{end - pos} bytes after the last argument ({tags})"
    return None


def check_packet(data: bytes, max_depth: int = MAX_BUNDLE_DEPTH) -> Optional[str]:
    """A reason to refuse ``data`` before parsing it, or None.

    Walks bundles iteratively (a deeply nested bundle cannot exhaust the stack), checks that
    every element is a message or a bundle, in bounds and 4-byte aligned, and that every
    message's arguments fill it exactly (:func:`check_message`).
    """
    if not data:
        return "empty packet"
    if len(data) % 4:
        return f"packet of {len(data)} bytes is not a multiple of 4 (truncated?)"
    if not data.startswith(_BUNDLE):
        if data[:1] != b"/":
            return "not an OSC message or bundle (must start with '/' or '#bundle')"
        return check_message(data)
    stack = [(0, len(data), 1)]
    while stack:
        start, end, depth = stack.pop()
        if depth > max_depth:
            return f"bundles nested deeper than {max_depth} levels"
        if end - start < 16:
            return "truncated bundle header"
        pos = start + 16
        while pos < end:
            if pos + 4 > end:
                return "truncated bundle element size"
            (size,) = struct.unpack(">i", data[pos:pos + 4])
            pos += 4
            if size <= 0 or size % 4 or pos + size > end:
                return f"bundle element of size {size} does not fit the packet (truncated?)"
            head = data[pos:pos + 8]
            if head == _BUNDLE:
                stack.append((pos, pos + size, depth + 1))
            elif head[:1] != b"/":
                return "bundle element is neither a message nor a bundle"
            else:
                problem = check_message(data, pos, pos + size)
                if problem:
                    return problem
            pos += size
    return None


def printable(text: str, limit: int = 200) -> str:
    """``text`` with control characters escaped and cut to ``limit`` characters (for replies)."""
    out = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text[:limit])
    return out + ("…" if len(text) > limit else "")


def _guess_address(data: bytes) -> str:
    if data[:1] == b"/":
        end = data.find(b"\x00")
        raw = data[: end if end >= 0 else 64][:128]
        return printable(raw.decode("utf-8", "replace"))
    return "?"


# ------------------------------------------------------------------------------ transport

class UdpTransport:
    """A UDP socket with a receive thread. ``on_packet(data, sender, arrival_perf_counter)``."""

    def __init__(self, on_packet: Callable[[bytes, Address, float], None], host: str = "127.0.0.1",
                 port: int = 0, receive_buffer: int = 8 << 20):
        self._on_packet = on_packet
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        except OSError as e:  # a limit of the OS: keep its default, say so
            print(f"warning: could not enlarge the UDP receive buffer ({e})", file=sys.stderr)
        try:
            self.sock.bind((host, port))
        except OSError as e:
            self.sock.close()
            raise RefmasterError(f"cannot listen for OSC on {host}:{port} ({e.strerror or e})") from None
        self.sock.settimeout(0.1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="osc-receive", daemon=True)
        self.packets = 0
        self.send_failures = 0

    @property
    def address(self) -> Address:
        return self.sock.getsockname()

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, sender = self.sock.recvfrom(65536)
            except socket.timeout:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                raise
            self.packets += 1
            self._on_packet(data, sender, time.perf_counter())

    def send(self, data: bytes, to: Address) -> None:
        try:
            self.sock.sendto(data, to)
        except OSError:
            # a subscriber that went away (ICMP port unreachable) or a full send buffer: UDP
            # delivery is best effort; the state itself is unaffected.
            self.send_failures += 1

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2.0)
        self.sock.close()


# ------------------------------------------------------------------------------ dispatcher

Handler = Callable[[str, list, Address, float], None]


def _osc_pattern_to_regex(pattern: str) -> "re.Pattern":
    out, i = ["^"], 0
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            j = pattern.find("]", i)
            if j < 0:
                raise OscReplyError("unclosed '[' in address pattern")
            body = pattern[i + 1:j]
            neg = body.startswith("!")
            body = body[1:] if neg else body
            out.append("[" + ("^" if neg else "") + re.sub(r"([\\\]\^])", r"\\\1", body) + "]")
            i = j
        elif c == "{":
            j = pattern.find("}", i)
            if j < 0:
                raise OscReplyError("unclosed '{' in address pattern")
            out.append("(?:" + "|".join(re.escape(x) for x in pattern[i + 1:j].split(",")) + ")")
            i = j
        else:
            out.append(re.escape(c))
        i += 1
    out.append("$")
    try:
        return re.compile("".join(out))
    except re.error as e:
        raise OscReplyError(f"invalid address pattern ({e})") from None


class OscDispatcher:
    """Address -> handler map. Exact addresses are looked up directly; an address containing
    OSC pattern characters (``*?[]{}``) is matched against every mapped address."""

    PATTERN_CHARS = set("*?[]{}")

    def __init__(self):
        self._map: Dict[str, Handler] = {}
        self._patterns: Dict[str, List[str]] = {}

    def map(self, address: str, handler: Handler) -> None:
        self._map[address] = handler
        self._patterns.clear()

    def addresses(self) -> List[str]:
        return list(self._map)

    def handlers_for(self, address: str) -> List[Tuple[str, Handler]]:
        h = self._map.get(address)
        if h is not None:
            return [(address, h)]
        if not (self.PATTERN_CHARS & set(address)):
            return []
        hits = self._patterns.get(address)
        if hits is None:
            rx = _osc_pattern_to_regex(address)
            hits = [a for a in self._map if rx.match(a)]
            if len(self._patterns) > 256:
                self._patterns.clear()
            self._patterns[address] = hits
        return [(a, self._map[a]) for a in hits]


# ------------------------------------------------------------------------------ state

class Change(NamedTuple):
    """One applied change, for the record: when, what, to what, from whom.

    :attr:`BridgeState.changes` stores these fields as plain tuples (``Change(*c)`` reads one):
    the garbage collector untracks a plain tuple of numbers and strings but keeps tracking
    NamedTuple instances, and full collections over the 100,000 records of the load benchmark
    took 26 ms, holding the GIL away from the render thread.
    """

    t: float          # seconds since the state was created (perf_counter based)
    wall: float       # time.time()
    key: str          # "module.name" or "switch.<module>"
    value: float
    source: str


class BridgeState:
    """Θ (real units) + switches, shared by the OSC server, the engine and ITO. Thread-safe.

    Every applied change is appended to :attr:`changes` (:class:`Change` fields) and
    reported to the listeners as a list of keys. The engine calls :meth:`take_for_block` at the
    start of every block: it gets the current parameters if anything changed, plus the arrival
    times of the messages applied since the previous block (for latency figures).
    """

    def __init__(self, chain: Optional[P.ChainParams] = None, record: bool = True):
        chain = chain or P.ChainParams.default()
        self._lock = threading.Lock()
        self._values: Dict[str, float] = dict(chain.values)
        self._switches: Dict[str, bool] = dict(chain.switches)
        self._dirty_engine = True
        self._arrivals: List[float] = []
        self._listeners: List[Callable[[List[str]], None]] = []
        self.version = 0
        self.t0 = time.perf_counter()
        self.record = record
        self.changes: List[tuple] = []  # Change fields as plain tuples (see Change)

    def add_listener(self, fn: Callable[[List[str]], None]) -> None:
        self._listeners.append(fn)

    def _notify(self, keys: List[str]) -> None:
        for fn in self._listeners:
            fn(keys)

    def _log(self, key: str, value: float, source: str, t: float) -> None:
        if self.record:
            self.changes.append((t - self.t0, time.time(), key, value, source))

    def set_value(self, key: str, value: float, source: str = "", arrival: Optional[float] = None) -> Tuple[float, bool]:
        """Set one parameter (clamped to its range). Returns (applied value, was clamped)."""
        spec = P.spec(key)
        v = float(value)
        if not math.isfinite(v):
            raise ParamError(key, f"value is {v} (must be a finite number)")
        applied = spec.clamp(v)
        t = arrival if arrival is not None else time.perf_counter()
        with self._lock:
            self._values[key] = applied
            self._dirty_engine = True
            self._arrivals.append(t)
            self.version += 1
            self._log(key, applied, source, t)
        self._notify([key])
        return applied, applied != v

    def set_switch(self, module: str, on: bool, source: str = "", arrival: Optional[float] = None) -> None:
        if module not in P.MODULES:
            raise ParamError(f"switch.{module}", f"unknown module (one of {', '.join(P.MODULES)})")
        t = arrival if arrival is not None else time.perf_counter()
        with self._lock:
            self._switches[module] = bool(on)
            self._dirty_engine = True
            self._arrivals.append(t)
            self.version += 1
            self._log(f"switch.{module}", 1.0 if on else 0.0, source, t)
        self._notify([f"switch.{module}"])

    def load(self, chain: P.ChainParams, source: str = "") -> List[str]:
        """Replace everything (a preset load, an ITO result). Returns the keys that changed."""
        t = time.perf_counter()
        changed: List[str] = []
        with self._lock:
            for k, v in chain.values.items():
                if self._values[k] != v:
                    self._values[k] = v
                    changed.append(k)
                    self._log(k, v, source, t)
            for m, on in chain.switches.items():
                if self._switches[m] != on:
                    self._switches[m] = on
                    changed.append(f"switch.{m}")
                    self._log(f"switch.{m}", 1.0 if on else 0.0, source, t)
            if changed:
                self._dirty_engine = True
                self._arrivals.append(t)
                self.version += 1
        if changed:
            self._notify(changed)
        return changed

    def settle(self, before: P.ChainParams, after: P.ChainParams, source: str = "") -> List[str]:
        """Set ``after``'s values where the state still holds ``before``'s (others changed meanwhile)."""
        t = time.perf_counter()
        changed: List[str] = []
        with self._lock:
            for k, v in after.values.items():
                if self._values[k] == before.values[k] and v != self._values[k]:
                    self._values[k] = v
                    changed.append(k)
                    self._log(k, v, source, t)
            if changed:
                self._dirty_engine = True
                self.version += 1
        if changed:
            self._notify(changed)
        return changed

    def snapshot(self) -> P.ChainParams:
        with self._lock:
            values, switches = dict(self._values), dict(self._switches)
        return P.ChainParams(values, switches)

    def value(self, key: str) -> float:
        with self._lock:
            return self._values[key]

    def switch(self, module: str) -> bool:
        with self._lock:
            return self._switches[module]

    def take_for_block(self) -> Tuple[Optional[P.ChainParams], List[float]]:
        """(parameters if anything changed since the last call else None, arrival times applied)."""
        with self._lock:
            if not self._dirty_engine:
                return None, []
            values, switches = dict(self._values), dict(self._switches)
            arrivals, self._arrivals = self._arrivals, []
            self._dirty_engine = False
        return P.ChainParams(values, switches), arrivals


# ------------------------------------------------------------------------------ hooks

@dataclass
class ItoRequest:
    """What the server hands to the ITO hook (``/refmaster/ito/run`` or ``/refmaster/nudge``)."""

    kind: str                         # "run" or "nudge"
    steps: Optional[int]              # requested steps (None: the hook's default)
    words: Optional[str]              # nudge words, e.g. "brighter, wider" (kind == "nudge")
    chain: P.ChainParams              # the engine's current Θ + switches
    preset: Optional[object]          # presets.Preset being played (z_ref, ITO settings, fingerprint) or None
    song: Optional[np.ndarray]        # (2, T) float32 44.1 kHz: the track being played, if any
    reference: Optional[np.ndarray]   # (2, T) float32 44.1 kHz: the reference (serve --ref), if given
    progress: Callable[[int, float], None]  # call progress(step, loss): pushed as /refmaster/ito/progress


@dataclass
class ItoResult:
    """What the ITO hook returns; the server applies ``chain`` and keeps the rest for the preset."""

    chain: P.ChainParams
    z_ref: Optional[List[float]] = None
    loss_history: List[float] = field(default_factory=list)
    settings: Dict[str, object] = field(default_factory=dict)


#: ``handler(request) -> ItoResult``; may take seconds (runs in a worker thread); raise
#: ``RefmasterError`` for a problem the user should see (sent as /refmaster/error).
ItoHandler = Callable[[ItoRequest], ItoResult]

ITO_UNAVAILABLE = ("inference-time optimisation is not available: no trained model and ITO are wired "
                   "into this server yet (refmaster master / issue 4)")


class Transport(Protocol):
    """What the live engine offers the server for /refmaster/transport/*."""

    def play(self) -> None: ...
    def stop(self) -> None: ...
    def seek(self, seconds: float) -> float: ...
    def position(self) -> Tuple[bool, float]: ...


# ------------------------------------------------------------------------------ the server

@dataclass
class Subscriber:
    address: Address
    form: str  # "both", "param", "norm" or a dialect name


@dataclass
class ServerStats:
    packets: int = 0
    messages: int = 0
    applied: int = 0
    errors: int = 0
    warnings: int = 0
    pushed: int = 0


class OscServer:
    """The refmaster OSC endpoint. Use as a context manager or call :meth:`start` / :meth:`close`.

    ``store``: a :class:`presets.PresetStore` for /refmaster/preset/*; ``preset``: the preset
    being played (its metadata is kept when saving); ``ito_handler`` / ``nudge_handler``: see
    :data:`ItoHandler`; ``transport``: the live engine; ``dialects``: :class:`bridge.osc.dialects.Dialect`
    objects whose DAW addresses are accepted too and which subscribers may ask for as their form.
    """

    def __init__(self, state: Optional[BridgeState] = None, host: str = "127.0.0.1", port: int = 0,
                 store=None, preset=None, ito_handler: Optional[ItoHandler] = None,
                 nudge_handler: Optional[ItoHandler] = None, transport: Optional[Transport] = None,
                 dialects: Iterable = (), song: Optional[np.ndarray] = None,
                 reference: Optional[np.ndarray] = None, log=None):
        self.state = state or BridgeState(preset.chain if preset is not None else None)
        self.store = store
        self.preset = preset
        self.ito_handler = ito_handler
        self.nudge_handler = nudge_handler
        self.transport = transport
        self.song = song
        self.reference = reference
        self.dialects = {d.name: d for d in dialects}
        self.log = log or (lambda msg: print(msg, file=sys.stderr))
        self.stats = ServerStats()
        self.dispatcher = OscDispatcher()
        self._subscribers: Dict[Address, Subscriber] = {}
        self._sub_lock = threading.Lock()
        self._push_lock = threading.Lock()
        self._push_wake = threading.Event()
        self._dirty: Dict[str, None] = {}
        self._dump_requests: List[Tuple[Address, str]] = []
        self._closing = False
        self._ito_thread: Optional[threading.Thread] = None
        self._preset_lock = threading.Lock()
        self._map_addresses()
        self.state.add_listener(self._on_state_change)
        self.udp = UdpTransport(self._on_packet, host, port)
        self._pusher = threading.Thread(target=self._push_loop, name="osc-push", daemon=True)

    # -- lifecycle
    @property
    def address(self) -> Address:
        return self.udp.address

    def start(self) -> "OscServer":
        self._pusher.start()
        self.udp.start()
        return self

    def close(self) -> None:
        self._closing = True
        self._push_wake.set()
        self.udp.close()
        if self._pusher.is_alive():
            self._pusher.join(timeout=2.0)
        if self._ito_thread is not None and self._ito_thread.is_alive():
            self._ito_thread.join(timeout=0.1)

    def __enter__(self) -> "OscServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # -- address map (generated from engine.params via osc_space)
    def _map_addresses(self) -> None:
        d = self.dispatcher
        for addr, spec in A.PARAM_ADDRESSES.items():
            d.map(addr, self._param_handler(spec, normalized=False))
        for addr, spec in A.NORM_ADDRESSES.items():
            d.map(addr, self._param_handler(spec, normalized=True))
        for addr, module in A.SWITCH_ADDRESSES.items():
            d.map(addr, self._switch_handler(module))
        d.map(A.PRESET_LOAD, self._on_preset_load)
        d.map(A.PRESET_SAVE, self._on_preset_save)
        d.map(A.ITO_RUN, self._on_ito)
        d.map(A.NUDGE, self._on_nudge)
        d.map(A.PLAY, self._on_play)
        d.map(A.STOP, self._on_stop)
        d.map(A.SEEK, self._on_seek)
        d.map(A.DUMP, self._on_dump)
        d.map(A.SUBSCRIBE, self._on_subscribe)
        d.map(A.UNSUBSCRIBE, self._on_unsubscribe)
        for dialect in self.dialects.values():
            for addr, (kind, key, scale) in dialect.incoming().items():
                if addr in A.PARAM_ADDRESSES or addr in A.SWITCH_ADDRESSES:
                    continue  # the generic dialect is the native address space
                if kind == "param":
                    d.map(addr, self._param_handler(P.spec(key), dialect_scale=(dialect, scale)))
                else:
                    d.map(addr, self._switch_handler(key))

    # -- packets
    def _on_packet(self, data: bytes, sender: Address, arrival: float) -> None:
        self.stats.packets += 1
        try:
            problem = check_packet(data)
            if problem:
                self.reply_error(sender, _guess_address(data), problem)
                return
            try:
                packet = OscPacket(data)
            except (ParseError, UnicodeDecodeError) as e:
                self.reply_error(sender, _guess_address(data), f"malformed OSC packet ({e})")
                return
            for timed in packet.messages:
                self._dispatch(timed.message.address, list(timed.message.params), sender, arrival)
        except Exception as e:  # a bug must not stop the server: report it loudly and go on
            traceback.print_exc(file=sys.stderr)
            self.reply_error(sender, _guess_address(data), f"internal error ({type(e).__name__}: {e})")

    def _dispatch(self, address: str, args: list, sender: Address, arrival: float) -> None:
        self.stats.messages += 1
        try:
            handlers = self.dispatcher.handlers_for(address)
        except OscReplyError as e:
            self.reply_error(sender, address, e.reason)
            return
        if not handlers:
            self.reply_error(sender, address, "unknown address (see `refmaster osc addresses`)")
            return
        for concrete, handler in handlers:
            try:
                handler(concrete, args, sender, arrival)
            except OscReplyError as e:
                self.reply_error(sender, concrete, e.reason)
            except RefmasterError as e:
                self.reply_error(sender, concrete, str(e))

    # -- replies
    def _reply(self, sender: Optional[Address], address: str, args: Sequence) -> None:
        data = encode_message(address, args)
        targets = {s.address for s in self.subscribers()}
        if sender is not None:
            targets.add(sender)
        for t in targets:
            self.udp.send(data, t)

    def reply_error(self, sender: Optional[Address], address: str, reason: str) -> None:
        self.stats.errors += 1
        self._reply(sender, A.ERROR, [printable(address), printable(reason, 500)])

    def reply_warning(self, sender: Optional[Address], address: str, reason: str) -> None:
        self.stats.warnings += 1
        self._reply(sender, A.WARNING, [printable(address), printable(reason, 500)])

    def reply_ok(self, sender: Optional[Address], address: str, detail: str) -> None:
        self._reply(sender, A.OK, [address, detail])

    # -- argument checks
    @staticmethod
    def _one_number(args: list, what: str = "a number") -> float:
        if len(args) != 1:
            raise OscReplyError(f"expected one argument ({what}), got {len(args)}")
        v = args[0]
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise OscReplyError(f"expected {what}, got {_osc_type_name(v)} {v!r}"[:200])
        v = float(v)
        if not math.isfinite(v):
            raise OscReplyError(f"value is {v} (must be a finite number); nothing changed")
        return v

    @staticmethod
    def _source(sender: Address) -> str:
        return f"osc:{sender[0]}:{sender[1]}"

    # -- handlers
    def _param_handler(self, spec: P.ParamSpec, normalized: bool = False, dialect_scale=None) -> Handler:
        unit = f" {spec.unit}" if spec.unit else ""

        def handler(address: str, args: list, sender: Address, arrival: float) -> None:
            if dialect_scale is not None:
                dialect, scale = dialect_scale
                raw = self._one_number(args)
                real, clamped = dialect.to_real(spec, raw, scale)
                applied = self._set(spec, real, sender, arrival)
                if clamped:
                    self.reply_warning(sender, address, f"{raw:g} is outside the {dialect.name} range for "
                                                        f"{spec.key}; clamped to {applied:g}{unit}")
                return
            if normalized:
                n = self._one_number(args, "a number 0…1")
                if n < 0.0 or n > 1.0:
                    c = min(max(n, 0.0), 1.0)
                    applied = self._set(spec, spec.from_normalized(c), sender, arrival)
                    self.reply_warning(sender, address, f"{n:g} is outside 0…1; clamped to {c:g} "
                                                        f"({applied:g}{unit})")
                    return
                self._set(spec, spec.from_normalized(n), sender, arrival)
                return
            v = self._one_number(args, f"a number in {spec.unit or 'real units'}")
            self._set_clamped(spec, v, sender, arrival, address=address)

        return handler

    def _set(self, spec: P.ParamSpec, v: float, sender: Address, arrival: float) -> float:
        applied, _ = self.state.set_value(spec.key, v, self._source(sender), arrival)
        self.stats.applied += 1
        return applied

    def _set_clamped(self, spec: P.ParamSpec, v: float, sender: Address, arrival: float,
                     address: Optional[str] = None) -> None:
        applied, clamped = self.state.set_value(spec.key, v, self._source(sender), arrival)
        self.stats.applied += 1
        if clamped and address is not None:
            unit = f" {spec.unit}" if spec.unit else ""
            self.reply_warning(sender, address, f"{v:g}{unit} is outside {spec.min:g}…{spec.max:g}{unit}; "
                                                f"clamped to {applied:g}{unit}")

    def _switch_handler(self, module: str) -> Handler:
        def handler(address: str, args: list, sender: Address, arrival: float) -> None:
            if len(args) != 1:
                raise OscReplyError(f"expected one argument (1 = on, 0 = off), got {len(args)}")
            v = args[0]
            if isinstance(v, bool):
                on = v
            elif isinstance(v, (int, float)) and float(v) in (0.0, 1.0):
                on = bool(v)
            else:
                raise OscReplyError(f"expected 1 (on) or 0 (off), got {_osc_type_name(v)} {v!r}"[:200])
            self.state.set_switch(module, on, self._source(sender), arrival)
            self.stats.applied += 1
        return handler

    def _on_preset_load(self, address, args, sender, arrival) -> None:
        if self.store is None:
            raise OscReplyError("no preset store attached to this server")
        if len(args) != 1 or not isinstance(args[0], str):
            raise OscReplyError("expected one string argument: the preset's name")
        with self._preset_lock:
            pr = self.store.get(args[0])
            self.preset = pr
            self.state.load(pr.chain, source=f"preset:{pr.name}")
        self._mark_dirty([A.PRESET_CURRENT])
        self.reply_ok(sender, address, f"loaded preset '{pr.name}'")

    def _on_preset_save(self, address, args, sender, arrival) -> None:
        if self.store is None:
            raise OscReplyError("no preset store attached to this server")
        if len(args) > 1 or (args and not isinstance(args[0], str)):
            raise OscReplyError("expected no argument or one string: the preset's name")
        name = args[0] if args else None
        path = self.save_preset(name)
        self.reply_ok(sender, address, f"saved preset '{self.preset.name}' to {path}")

    def save_preset(self, name: Optional[str] = None):
        """Save the engine's current state as a preset (the current one, or ``name``). Returns the path."""
        from presets import Preset

        with self._preset_lock:
            chain = self.state.snapshot()
            if self.preset is not None:
                pr = self.preset.updated(chain=chain)
                if name and name != self.preset.name:
                    pr = pr.updated(name=name, created=None)
            else:
                if not name:
                    raise OscReplyError("no preset is loaded: give a name to save under")
                pr = Preset.new(name, chain)
            path = self.store.save(pr)
            # The file holds values rounded to 6 decimals: let the engine hold exactly those, so the
            # preset on disk equals the engine's state (values changed meanwhile are left alone).
            on_disk = P.ChainParams.from_dict(pr.chain.to_dict())
            self.preset = pr.updated(chain=on_disk)
            self.state.settle(chain, on_disk, source=f"save:{pr.name}")
        self._mark_dirty([A.PRESET_CURRENT])
        return path

    def _start_ito(self, address: str, sender: Address, request_kind: str, handler: Optional[ItoHandler],
                   steps: Optional[int], words: Optional[str]) -> None:
        if handler is None:
            raise OscReplyError(ITO_UNAVAILABLE)
        if self._ito_thread is not None and self._ito_thread.is_alive():
            raise OscReplyError("an ITO run is already in progress")

        def progress(step: int, loss: float) -> None:
            self._reply(None, A.ITO_PROGRESS, [int(step), float(loss)])

        req = ItoRequest(request_kind, steps, words, self.state.snapshot(), self.preset, self.song,
                         self.reference, progress)

        def work() -> None:
            try:
                result = handler(req)
            except RefmasterError as e:
                self.reply_error(sender, address, str(e))
                return
            except Exception as e:  # a bug in the hook: report it, keep serving
                traceback.print_exc(file=sys.stderr)
                self.reply_error(sender, address, f"ITO failed ({type(e).__name__}: {e})")
                return
            with self._preset_lock:
                self.state.load(result.chain, source="ito" if request_kind == "run" else f"nudge:{words}")
                if self.preset is not None:
                    ito = {"settings": dict(result.settings), "loss_history": list(result.loss_history)}
                    self.preset = self.preset.updated(z_ref=result.z_ref if result.z_ref is not None
                                                      else self.preset.z_ref, ito=ito)
            final = f"; loss {result.loss_history[-1]:.4g}" if result.loss_history else ""
            self.reply_ok(sender, address, f"{request_kind} done{final}")

        self._ito_thread = threading.Thread(target=work, name="ito", daemon=True)
        self._ito_thread.start()

    def _on_ito(self, address, args, sender, arrival) -> None:
        steps = None
        if len(args) > 1:
            raise OscReplyError("expected no argument or one integer: the number of steps")
        if args:
            v = args[0]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not float(v).is_integer() or not 1 <= v <= 10000:
                raise OscReplyError(f"steps must be a whole number 1…10000, got {v!r}")
            steps = int(v)
        self._start_ito(address, sender, "run", self.ito_handler, steps, None)

    def _on_nudge(self, address, args, sender, arrival) -> None:
        if not args or not all(isinstance(a, str) for a in args):
            raise OscReplyError("expected words (strings), e.g. \"brighter, wider\"")
        self._start_ito(address, sender, "nudge", self.nudge_handler, None, " ".join(args))

    def _need_transport(self) -> Transport:
        if self.transport is None:
            raise OscReplyError("no live engine is attached to this server")
        return self.transport

    def _on_play(self, address, args, sender, arrival) -> None:
        if args:
            raise OscReplyError("expected no arguments")
        self._need_transport().play()
        self._mark_dirty([A.TRANSPORT_STATE])

    def _on_stop(self, address, args, sender, arrival) -> None:
        if args:
            raise OscReplyError("expected no arguments")
        self._need_transport().stop()
        self._mark_dirty([A.TRANSPORT_STATE])

    def _on_seek(self, address, args, sender, arrival) -> None:
        s = self._one_number(args, "a position in seconds")
        if s < 0:
            raise OscReplyError(f"position {s:g} s is negative")
        self._need_transport().seek(s)
        self._mark_dirty([A.TRANSPORT_STATE])

    @staticmethod
    def _host_port(args: list, what: str) -> Address:
        if len(args) < 2 or not isinstance(args[0], str) or isinstance(args[1], bool) \
                or not isinstance(args[1], (int, float)) or not float(args[1]).is_integer():
            raise OscReplyError(f"{what}: expected host (string) and port (integer)")
        port = int(args[1])
        if not 1 <= port <= 65535:
            raise OscReplyError(f"{what}: port {port} is outside 1…65535")
        try:
            info = socket.getaddrinfo(args[0], port, socket.AF_INET, socket.SOCK_DGRAM)
        except (socket.gaierror, UnicodeError) as e:
            raise OscReplyError(f"{what}: cannot resolve host {args[0]!r} ({e})") from None
        return info[0][4][0], port

    def _check_form(self, form: str) -> str:
        if form in ("both", "param", "norm") or form in self.dialects:
            return form
        raise OscReplyError(f"unknown form {form!r} (both, param, norm" +
                            "".join(f", {d}" for d in self.dialects) + ")")

    def _on_dump(self, address, args, sender, arrival) -> None:
        to, form = sender, "both"
        if args:
            to = self._host_port(args, "dump")
            if len(args) > 3:
                raise OscReplyError("expected [host, port, [form]]")
            if len(args) == 3:
                if not isinstance(args[2], str):
                    raise OscReplyError("form must be a string")
                form = self._check_form(args[2])
        with self._push_lock:
            self._dump_requests.append((to, form))
        self._push_wake.set()

    def _on_subscribe(self, address, args, sender, arrival) -> None:
        if len(args) not in (2, 3):
            raise OscReplyError("expected host (string), port (integer) and optionally a form")
        to = self._host_port(args, "subscribe")
        form = "both"
        if len(args) == 3:
            if not isinstance(args[2], str):
                raise OscReplyError("form must be a string")
            form = self._check_form(args[2])
        with self._sub_lock:
            if to not in self._subscribers and len(self._subscribers) >= MAX_SUBSCRIBERS:
                raise OscReplyError(f"too many subscribers (at most {MAX_SUBSCRIBERS})")
            self._subscribers[to] = Subscriber(to, form)
        with self._push_lock:
            self._dump_requests.append((to, form))
        self._push_wake.set()

    def _on_unsubscribe(self, address, args, sender, arrival) -> None:
        to = self._host_port(args, "unsubscribe")
        with self._sub_lock:
            if self._subscribers.pop(to, None) is None:
                raise OscReplyError(f"{to[0]}:{to[1]} is not subscribed")
        self.reply_ok(sender, address, f"unsubscribed {to[0]}:{to[1]}")

    def subscribers(self) -> List[Subscriber]:
        with self._sub_lock:
            return list(self._subscribers.values())

    # -- feedback
    def _on_state_change(self, keys: List[str]) -> None:
        self._mark_dirty(keys)

    def _mark_dirty(self, keys: Iterable[str]) -> None:
        with self._push_lock:
            for k in keys:
                self._dirty[k] = None
        if not self._push_wake.is_set():
            self._push_wake.set()

    def messages_for(self, keys: Iterable[str], form: str, chain: P.ChainParams) -> List[bytes]:
        """Encoded feedback messages for ``keys`` in a subscriber's ``form``."""
        out: List[bytes] = []
        dialect = self.dialects.get(form)
        for k in keys:
            if k == A.PRESET_CURRENT:
                out.append(encode_message(A.PRESET_CURRENT, [self.preset.name if self.preset else ""]))
            elif k == A.TRANSPORT_STATE:
                if self.transport is not None:
                    playing, pos = self.transport.position()
                    out.append(encode_message(A.TRANSPORT_STATE, [int(playing), float(pos)]))
            elif k.startswith("switch."):
                m = k[7:]
                on = chain.switches[m]
                if dialect is not None:
                    out.extend(encode_message(a, [v]) for a, v in dialect.outgoing_switch(m, on))
                else:
                    out.append(encode_message(A.switch_address(m), [int(on)]))
            else:
                spec = P.spec(k)
                v = chain.values[k]
                if dialect is not None:
                    out.extend(encode_message(a, [x]) for a, x in dialect.outgoing_param(spec, v))
                    continue
                if form in ("both", "param"):
                    out.append(encode_message(A.param_address(spec), [v]))
                if form in ("both", "norm"):
                    out.append(encode_message(A.norm_address(spec), [spec.to_normalized(v)]))
        return out

    def all_keys(self) -> List[str]:
        keys = list(P.PARAM_KEYS) + [f"switch.{m}" for m in P.MODULES] + [A.PRESET_CURRENT]
        if self.transport is not None:
            keys.append(A.TRANSPORT_STATE)
        return keys

    def _push_loop(self) -> None:
        while True:
            self._push_wake.wait(timeout=0.5)
            if self._closing:
                return
            if not self._push_wake.is_set():
                continue
            time.sleep(PUSH_INTERVAL_S)  # coalesce a burst of changes
            self._push_wake.clear()
            with self._push_lock:
                keys, self._dirty = list(self._dirty), {}
                dumps, self._dump_requests = self._dump_requests, []
            chain = self.state.snapshot()
            for to, form in dumps:
                msgs = self.messages_for(self.all_keys(), form, chain)
                for m in msgs:
                    self.udp.send(m, to)
                self.udp.send(encode_message(A.DUMP_DONE, [len(msgs)]), to)
                self.stats.pushed += len(msgs) + 1
            if keys:
                by_form: Dict[str, List[bytes]] = {}
                for sub in self.subscribers():
                    if sub.form not in by_form:
                        by_form[sub.form] = self.messages_for(keys, sub.form, chain)
                    for m in by_form[sub.form]:
                        self.udp.send(m, sub.address)
                    self.stats.pushed += len(by_form[sub.form])


def _osc_type_name(v) -> str:
    if isinstance(v, str):
        return "string"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (bytes, bytearray)):
        return "blob"
    if v is None:
        return "nil"
    if isinstance(v, (int, float)):
        return "number"
    return type(v).__name__
