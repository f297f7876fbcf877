"""Subscriptions and feedback of the OSC server: /refmaster/subscribe, /refmaster/unsubscribe,
/refmaster/dump, and the push thread that sends every change to every subscriber, coalesced per
address. A mixin of :class:`bridge.osc.server.OscServer`, which creates the attributes it uses."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from typing import Dict, Iterable, List

from bridge.osc import space as A
from bridge.osc.dispatcher import OscReplyError
from bridge.osc.transport import Address
from bridge.osc.wire import encode_message
from engine import params as P

MAX_SUBSCRIBERS = 32
#: Pushes to subscribers are coalesced over at most this long.
PUSH_INTERVAL_S = 0.02


@dataclass
class Subscriber:
    address: Address
    form: str  # "both", "param", "norm" or a dialect name


class Subscriptions:
    """Subscriber list, dumps and pushes; mixed into :class:`~bridge.osc.server.OscServer`.

    Uses the server's ``state``, ``preset``, ``transport``, ``dialects``, ``udp``, ``stats`` and its
    ``_subscribers``/``_sub_lock``, ``_dirty``/``_dump_requests``/``_push_lock``, ``_push_wake``
    and ``_closing``.
    """

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
