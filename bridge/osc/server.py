"""The OSC server: parameter sync between the engine, any number of controllers and the presets.

:class:`OscServer` receives packets through a :class:`~bridge.osc.transport.UdpTransport`,
checks them (:mod:`bridge.osc.wire`) and parses them (python-osc), finds their handlers with an
:class:`~bridge.osc.dispatcher.OscDispatcher`, applies the refmaster semantics and owns the
shared :class:`~bridge.osc.state.BridgeState` (Θ in real units + switches) that the live engine
reads at the start of every block. Subscriptions, dumps and pushes: :mod:`bridge.osc.subscriptions`;
preset, ITO and transport commands: :mod:`bridge.osc.commands`; who may talk and how much is
answered: :mod:`bridge.osc.access`.

Semantics (docs/bridge.md): changes apply in arrival order, last writer wins; a value out of
range is clamped and answered with ``/refmaster/warning``; an unknown address, a wrong type or
count of arguments, NaN/inf, a malformed or truncated packet or a bundle nested deeper than
:data:`~bridge.osc.wire.MAX_BUNDLE_DEPTH` changes nothing and is answered with
``/refmaster/error <address> <reason>``. Every change, whoever made it (a controller, ITO, a
preset load), is pushed to every subscriber; pushes are coalesced per address (each subscriber
always ends with the latest value). A new subscriber first gets a full dump. Bundle time tags are
not honoured: bundles apply on arrival.

Abuse limits: packets from hosts outside the allow list (default: loopback) are dropped unanswered;
every message gets at most one reply (a pattern matching many addresses: one summary), sent to the
sender within its reply budget (:class:`~bridge.osc.access.ReplyBudget`: reply bytes ≤ 1.5 × the
bytes it sent) and copied, at a bounded rate, to the subscribers on the sender's host (so
``oscsend``'s errors reach the ``oscdump`` beside it); one packet makes at most
:data:`MAX_CALLS_PER_PACKET` handler calls; with a shared secret every message but
``/refmaster/auth`` needs a login; replies name no file paths.

ITO and nudges are not done here: the server calls an injected :data:`ItoHandler` in a worker
thread with an :class:`ItoRequest` and applies the :class:`ItoResult` it returns
(``refmaster serve`` injects :func:`bridge.cli.serve.ito_handlers`). A server started without
one answers ``/refmaster/ito/run`` and ``/refmaster/nudge`` with an error saying so.
"""

from __future__ import annotations

import ipaddress
import math
import sys
import threading
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
from pythonosc.osc_message import OscMessage, ParseError

from bridge.osc import space as A
from bridge.osc.access import DEFAULT_ALLOW, AllowList, PathScrubber, ReplyBudget, SharedSecret, TokenBucket
from bridge.osc.commands import ITO_UNAVAILABLE, Commands, ItoHandler, ItoRequest, ItoResult, Transport  # noqa: F401
from bridge.osc.dispatcher import Handler, OscDispatcher, OscReplyError
from bridge.osc.state import BridgeState
from bridge.osc.subscriptions import DUMPS_PER_S, SUBSCRIPTION_TTL_S, Subscriber, Subscriptions
from bridge.osc.transport import Address, UdpTransport
from bridge.osc.wire import _guess_address, _osc_type_name, check_packet, encode_message, message_spans, printable
from engine import params as P
from engine.errors import RefmasterError

#: Handler calls one packet may cause (a bundle setting everything in both forms is 104).
MAX_CALLS_PER_PACKET = 256
#: What matching a pattern not seen recently costs out of that budget.
PATTERN_COST = 16
NOT_AUTHORISED = (f"not authorised: this server has a shared secret; send {A.AUTH} <secret> first "
                  f"(in the same bundle, or from this address)")


@dataclass
class ServerStats:
    packets: int = 0
    messages: int = 0
    applied: int = 0
    errors: int = 0
    warnings: int = 0
    pushed: int = 0
    refused: int = 0         # packets from hosts outside the allow list (dropped, unanswered)
    unauthorised: int = 0    # messages refused for want of the shared secret
    over_budget: int = 0     # messages not applied: their packet had used up its handler calls
    copies: int = 0          # copies of replies sent to the subscribers on the sender's host
    copies_dropped: int = 0  # copies of replies not sent to a subscriber (over its rate)


class OscServer(Subscriptions, Commands):
    """The refmaster OSC endpoint. Use as a context manager or call :meth:`start` / :meth:`close`.

    ``store``: a :class:`presets.PresetStore` for /refmaster/preset/*; ``preset``: the preset
    being played (its metadata is kept when saving); ``ito_handler`` / ``nudge_handler``: see
    :data:`ItoHandler`; ``transport``: the live engine; ``dialects``: :class:`bridge.osc.dialects.Dialect`
    objects whose DAW addresses are accepted too and which subscribers may ask for as their form.
    ``allow``: networks (CIDR strings) that may talk to the server and receive from it (default
    :data:`~bridge.osc.access.DEFAULT_ALLOW`; required when ``host`` is not a loopback address);
    ``secret``: the shared secret (None: none); ``subscription_ttl``: seconds a subscription or a
    login lasts after its last renewal.
    """

    def __init__(self, state: Optional[BridgeState] = None, host: str = "127.0.0.1", port: int = 0,
                 store=None, preset=None, ito_handler: Optional[ItoHandler] = None,
                 nudge_handler: Optional[ItoHandler] = None, transport: Optional[Transport] = None,
                 dialects: Iterable = (), song: Optional[np.ndarray] = None,
                 reference: Optional[np.ndarray] = None, log=None, allow: Optional[Iterable[str]] = None,
                 secret: Optional[str] = None, subscription_ttl: float = SUBSCRIPTION_TTL_S):
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
        self.allow = AllowList(DEFAULT_ALLOW if allow is None else allow)
        self.subscription_ttl = float(subscription_ttl)
        self.secret = SharedSecret(secret, self.subscription_ttl) if secret else None
        self.budget = ReplyBudget()
        self.dispatcher = OscDispatcher()
        self._subscribers: Dict[Address, Subscriber] = {}
        self._sub_lock = threading.Lock()
        self._push_lock = threading.Lock()
        self._push_wake = threading.Event()
        self._dirty: Dict[str, None] = {}
        self._dump_pending: Dict[Address, str] = {}
        self._last_dump: Dict[Address, float] = {}
        self._dump_bucket = TokenBucket(DUMPS_PER_S, DUMPS_PER_S)
        self._sources: Dict[Address, str] = {}
        self._closing = False
        self._ito_thread: Optional[threading.Thread] = None
        self._preset_lock = threading.Lock()
        self._map_addresses()
        self._scrub = PathScrubber([(getattr(store, "directory", None), "<presets folder>"),
                                    (getattr(store, "factory_dir", None), "<factory presets>"),
                                    (Path.cwd(), "."), (Path.home(), "~")], keep=self.dispatcher.addresses())
        self.state.add_listener(self._on_state_change)
        self.udp = UdpTransport(self._on_packet, host, port)
        bound = ipaddress.ip_address(self.udp.address[0])
        if allow is None and not bound.is_loopback:
            self.udp.close()
            raise RefmasterError(f"listening on {host} reaches beyond this machine: say which hosts may talk to "
                                 f"the server with --allow CIDR… (e.g. --allow 192.168.1.0/24)")
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
        for addr, name in A.CONTROL_ADDRESSES.items():
            d.map(addr, self._control_handler(name))
        # commands are reached by their exact address only: no pattern saves a preset or starts ITO
        for addr, handler in ((A.PRESET_LOAD, self._on_preset_load), (A.PRESET_SAVE, self._on_preset_save),
                              (A.ITO_RUN, self._on_ito), (A.NUDGE, self._on_nudge), (A.PLAY, self._on_play),
                              (A.STOP, self._on_stop), (A.SEEK, self._on_seek), (A.DUMP, self._on_dump),
                              (A.SUBSCRIBE, self._on_subscribe), (A.UNSUBSCRIBE, self._on_unsubscribe)):
            d.map(addr, handler, pattern=False)
        for dialect in self.dialects.values():
            for addr, (kind, key, scale) in dialect.incoming().items():
                if addr in A.PARAM_ADDRESSES or addr in A.SWITCH_ADDRESSES or addr in A.CONTROL_ADDRESSES:
                    continue  # the generic dialect is the native address space
                if kind == "param":
                    d.map(addr, self._param_handler(P.spec(key), dialect_scale=(dialect, scale)))
                elif kind == "control":
                    d.map(addr, self._control_handler(key))
                else:
                    d.map(addr, self._switch_handler(key))

    # -- packets
    def _on_packet(self, data: bytes, sender: Address, arrival: float) -> None:
        self.stats.packets += 1
        if not self.allow.allows(sender[0]):
            self.stats.refused += 1   # unanswered: an answer to a host that may not talk to us is a reflection
            return
        self.budget.earn(sender, len(data))
        self.renew(sender)
        try:
            problem = check_packet(data)
            if problem:
                self.reply_error(sender, _guess_address(data), problem)
                return
            self._dispatch_packet(data, sender, arrival)
        except Exception as e:  # a bug must not stop the server: report it loudly and go on
            traceback.print_exc(file=sys.stderr)
            self.reply_error(sender, _guess_address(data), f"internal error ({type(e).__name__}: {e})")

    def _dispatch_packet(self, data: bytes, sender: Address, arrival: float) -> None:
        """Apply a checked packet's messages in order, each parsed only when its turn comes (the
        ones past the packet's budget are counted, never parsed: parsing is most of a flood's cost)."""
        budget = MAX_CALLS_PER_PACKET
        authorised = self.secret is None or self.secret.logged_in(sender)
        skipped, first_skipped = 0, ""
        for start, end in message_spans(data):
            if budget <= 0:
                skipped += 1
                first_skipped = first_skipped or _guess_address(data[start:end])
                continue
            try:
                m = OscMessage(data[start:end])
            except (ParseError, UnicodeDecodeError) as e:   # check_packet should have refused it
                self.reply_error(sender, _guess_address(data[start:end]), f"malformed OSC message ({e})")
                continue
            address, args = m.address, list(m.params)
            if address == A.AUTH:
                authorised = self._on_auth(args, sender) or authorised
                continue
            if not authorised:
                self.stats.unauthorised += 1
                self.reply_error(sender, address, NOT_AUTHORISED)
                continue
            budget -= self._dispatch(address, args, sender, arrival, budget)
        if skipped:
            self.stats.over_budget += skipped
            self.reply_error(sender, first_skipped, f"{skipped} messages of this packet were not applied: one "
                                                    f"packet may make at most {MAX_CALLS_PER_PACKET} changes")

    def _on_auth(self, args: list, sender: Address) -> bool:
        if self.secret is None:
            self.reply_error(sender, A.AUTH, "this server has no shared secret: nothing to authorise")
            return False
        if len(args) != 1 or not isinstance(args[0], str):
            self.reply_error(sender, A.AUTH, "expected one string argument: the secret")
            return False
        if not self.secret.matches(args[0]):
            self.stats.unauthorised += 1
            self.reply_error(sender, A.AUTH, "wrong secret")
            return False
        self.secret.login(sender)
        self.reply_ok(sender, A.AUTH, f"authorised for {self.subscription_ttl:g} s after your last message")
        return True

    def _dispatch(self, address: str, args: list, sender: Address, arrival: float, budget: int) -> int:
        """Apply one message; answer it with at most one reply. Returns what it cost of the budget."""
        self.stats.messages += 1
        cost = PATTERN_COST if self.dispatcher.is_pattern(address) and not self.dispatcher.cached(address) else 0
        try:
            handlers = self.dispatcher.handlers_for(address)
        except OscReplyError as e:
            self.reply_error(sender, address, e.reason)
            return max(1, cost)
        if not handlers:
            self.reply_error(sender, address, "unknown address (see `refmaster osc addresses`)")
            return max(1, cost)
        if len(handlers) + cost > budget:
            self.stats.over_budget += 1
            self.reply_error(sender, address, f"matches {len(handlers)} addresses, more than this packet may still "
                                              f"change (at most {MAX_CALLS_PER_PACKET} changes per packet)")
            return budget
        errors: List[Tuple[str, str]] = []
        answers: Dict[str, List[Tuple[str, str]]] = {A.WARNING: [], A.OK: []}
        for concrete, handler in handlers:
            try:
                answer = handler(concrete, args, sender, arrival)
            except (OscReplyError, RefmasterError) as e:
                errors.append((concrete, e.reason if isinstance(e, OscReplyError) else str(e)))
                continue
            if answer is not None:
                answers[answer[0]].append((concrete, answer[1]))
        n = len(handlers)
        if n == 1:
            for kind, items in ((A.ERROR, errors), (A.WARNING, answers[A.WARNING]), (A.OK, answers[A.OK])):
                if items:
                    self._answer(sender, kind, items[0][0], items[0][1])
                    break
        elif errors:
            more = f"; {len(answers[A.WARNING])} clamped" if answers[A.WARNING] else ""
            self._answer(sender, A.ERROR, address, f"{len(errors)} of {n} matching addresses refused{more}; "
                                                   f"first {errors[0][0]}: {errors[0][1]}")
        elif answers[A.WARNING]:
            w = answers[A.WARNING]
            self._answer(sender, A.WARNING, address, f"{len(w)} of {n} matching addresses clamped; "
                                                     f"first {w[0][0]}: {w[0][1]}")
        return len(handlers) + cost

    def _answer(self, sender: Address, kind: str, address: str, text: str) -> None:
        {A.ERROR: self.reply_error, A.WARNING: self.reply_warning, A.OK: self.reply_ok}[kind](sender, address, text)

    # -- replies
    def _reply(self, sender: Optional[Address], address: str, args: Sequence) -> None:
        """To ``sender`` within its reply budget, copied (at a bounded rate) to the listening-only
        subscribers on its host (an oscdump beside a one-shot oscsend: subscribers that never sent
        anything themselves); with no sender (ITO progress), to every subscriber."""
        args = [args[0]] + [self._scrub(a) if isinstance(a, str) else a for a in args[1:]] if args else []
        data = encode_message(address, args)
        for sub in self.subscribers():
            if sender is None or (sub.address[0] == sender[0] and not sub.proven and sub.address != sender):
                if sender is None or sub.copies.take():
                    self.udp.send(data, sub.address)
                    self.stats.copies += sender is not None
                else:
                    self.stats.copies_dropped += 1
        if sender is not None:
            fitted = self.budget.spend(sender, address, args)
            if fitted is not None:
                self.udp.send(fitted, sender)

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

    def _source(self, sender: Address) -> str:
        s = self._sources.get(sender)
        if s is None:
            if len(self._sources) >= 4096:
                self._sources.clear()
            s = self._sources[sender] = f"osc:{sender[0]}:{sender[1]}"
        return s

    # -- handlers
    def _param_handler(self, spec: P.ParamSpec, normalized: bool = False, dialect_scale=None) -> Handler:
        unit = f" {spec.unit}" if spec.unit else ""

        def handler(address: str, args: list, sender: Address, arrival: float):
            if dialect_scale is not None:
                dialect, scale = dialect_scale
                raw = self._one_number(args)
                real, clamped = dialect.to_real(spec, raw, scale)
                applied = self._set(spec, real, sender, arrival)
                if clamped:
                    return A.WARNING, (f"{raw:g} is outside the {dialect.name} range for {spec.key}; "
                                       f"clamped to {applied:g}{unit}")
                return None
            if normalized:
                n = self._one_number(args, "a number 0…1")
                if n < 0.0 or n > 1.0:
                    c = min(max(n, 0.0), 1.0)
                    applied = self._set(spec, spec.from_normalized(c), sender, arrival)
                    return A.WARNING, f"{n:g} is outside 0…1; clamped to {c:g} ({applied:g}{unit})"
                self._set(spec, spec.from_normalized(n), sender, arrival)
                return None
            v = self._one_number(args, f"a number in {spec.unit or 'real units'}")
            applied, clamped = self.state.set_value(spec.key, v, self._source(sender), arrival)
            self.stats.applied += 1
            if clamped:
                return A.WARNING, (f"{v:g}{unit} is outside {spec.min:g}…{spec.max:g}{unit}; "
                                   f"clamped to {applied:g}{unit}")
            return None

        return handler

    def _set(self, spec: P.ParamSpec, v: float, sender: Address, arrival: float) -> float:
        applied, _ = self.state.set_value(spec.key, v, self._source(sender), arrival)
        self.stats.applied += 1
        return applied

    def _switch_handler(self, module: str) -> Handler:
        def handler(address: str, args: list, sender: Address, arrival: float):
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

    def _control_handler(self, name: str) -> Handler:
        """/refmaster/bypass (0|1 or T/F, as a switch) and /refmaster/amount (0…1, clamped with a warning)."""
        def handler(address: str, args: list, sender: Address, arrival: float):
            if name == "bypass":
                if len(args) != 1 or not (isinstance(args[0], bool) or
                                          (isinstance(args[0], (int, float)) and float(args[0]) in (0.0, 1.0))):
                    got = f"{_osc_type_name(args[0])} {args[0]!r}" if len(args) == 1 else f"{len(args)} arguments"
                    raise OscReplyError(f"expected 1 (bypassed) or 0 (processed), got {got}"[:200])
                self.state.set_control(name, float(bool(args[0])), self._source(sender), arrival)
                self.stats.applied += 1
                return None
            v = self._one_number(args, "a number 0…1")
            applied, clamped = self.state.set_control(name, v, self._source(sender), arrival)
            self.stats.applied += 1
            return (A.WARNING, f"{v:g} is outside 0…1; clamped to {applied:g}") if clamped else None
        return handler

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

