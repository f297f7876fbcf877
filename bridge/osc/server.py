"""The OSC server: parameter sync between the engine, any number of controllers and the presets.

:class:`OscServer` receives packets through a :class:`~bridge.osc.transport.UdpTransport`,
checks them (:mod:`bridge.osc.wire`) and parses them (python-osc), finds their handlers with an
:class:`~bridge.osc.dispatcher.OscDispatcher`, applies the refmaster semantics and owns the
shared :class:`~bridge.osc.state.BridgeState` (Θ in real units + switches) that the live engine
reads at the start of every block. Subscriptions, dumps and pushes: :mod:`bridge.osc.subscriptions`.

Semantics (docs/bridge.md): changes apply in arrival order, last writer wins; a value out of
range is clamped and answered with ``/refmaster/warning``; an unknown address, a wrong type or
count of arguments, NaN/inf, a malformed or truncated packet or a bundle nested deeper than
:data:`~bridge.osc.wire.MAX_BUNDLE_DEPTH` changes nothing and is answered with
``/refmaster/error <address> <reason>``. Replies go to the sender and to every subscriber
(``oscsend``-style senders cannot receive). Every change, whoever made it (a controller, ITO, a
preset load), is pushed to every subscriber; pushes are coalesced per address (each subscriber
always ends with the latest value). A new subscriber first gets a full dump. Bundle time tags are
not honoured: bundles apply on arrival.

ITO and nudges are not done here: the server calls an injected :data:`ItoHandler` in a worker
thread with an :class:`ItoRequest` and applies the :class:`ItoResult` it returns
(``refmaster serve`` injects :func:`bridge.cli.serve.ito_handlers`). A server started without
one answers ``/refmaster/ito/run`` and ``/refmaster/nudge`` with an error saying so.
"""

from __future__ import annotations

import math
import sys
import threading
import traceback
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Protocol, Sequence, Tuple

import numpy as np
from pythonosc.osc_packet import OscPacket, ParseError

from bridge.osc import space as A
from bridge.osc.dispatcher import Handler, OscDispatcher, OscReplyError
from bridge.osc.state import BridgeState
from bridge.osc.subscriptions import Subscriber, Subscriptions
from bridge.osc.transport import Address, UdpTransport
from bridge.osc.wire import _guess_address, _osc_type_name, check_packet, encode_message, printable
from engine import params as P
from engine.errors import RefmasterError

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

#: The error for /refmaster/ito/run and /refmaster/nudge on a server started without a handler.
ITO_UNAVAILABLE = ("inference-time optimisation is not available: this server was started without an ITO "
                   "handler (no model to optimise with; `refmaster serve` provides one)")


class Transport(Protocol):
    """What the live engine offers the server for /refmaster/transport/*."""

    def play(self) -> None: ...
    def stop(self) -> None: ...
    def seek(self, seconds: float) -> float: ...
    def position(self) -> Tuple[bool, float]: ...


# ------------------------------------------------------------------------------ the server

@dataclass
class ServerStats:
    packets: int = 0
    messages: int = 0
    applied: int = 0
    errors: int = 0
    warnings: int = 0
    pushed: int = 0


class OscServer(Subscriptions):
    """The refmaster OSC endpoint. Use as a context manager or call :meth:`start` / :meth:`close`.

    ``store``: a :class:`presets.PresetStore` for /refmaster/preset/*; ``preset``: the preset
    being played (its metadata is kept when saving); ``ito_handler`` / ``nudge_handler``: see
    :data:`ItoHandler`; ``transport``: the live engine; ``dialects``: :class:`bridge.osc.dialects.Dialect`
    objects whose DAW addresses are accepted too and which subscribers may ask for as their form.
    Subscriptions, dumps and pushes: :class:`~bridge.osc.subscriptions.Subscriptions`.
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

    # -- address map (generated from engine.params via bridge.osc.space)
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
            try:
                steps = P.check_steps(args[0], "steps")
            except RefmasterError as e:
                raise OscReplyError(str(e)) from None
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
