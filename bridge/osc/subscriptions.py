"""Subscriptions and feedback of the OSC server: /refmaster/subscribe, /refmaster/unsubscribe,
/refmaster/dump, and the push thread that sends every change to every subscriber, coalesced per
address. A mixin of :class:`bridge.osc.server.OscServer`, which creates the attributes it uses.

Limits (docs/bridge.md): a subscription or dump target is a numeric IPv4 address in the server's
allow list; a subscription expires :data:`SUBSCRIPTION_TTL_S` after it was last renewed (by
subscribing again, or by any message the subscriber sends from its own address); only the
subscriber itself or the address that subscribed it may unsubscribe it; at most
:data:`MAX_SUBSCRIBERS` in all, of which at most :data:`MAX_UNPROVEN` for addresses that never
sent the server anything (a flood of subscriptions for made-up ports fills only those, and never
evicts anyone), and at most :data:`MAX_PER_REQUESTER` made by one address; dumps to one target at
most one per :data:`DUMP_INTERVAL_S`, :data:`DUMPS_PER_S` in all.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional

from bridge.osc import space as A
from bridge.osc.access import TokenBucket, numeric_host
from bridge.osc.dispatcher import OscReplyError
from bridge.osc.state import CONTROLS
from bridge.osc.transport import Address
from bridge.osc.wire import encode_message
from engine import params as P

MAX_SUBSCRIBERS = 32
#: Subscriptions for addresses that have not (yet) sent the server a message themselves.
MAX_UNPROVEN = 16
#: Subscriptions one address may have made (for itself or for others) and that still hold.
MAX_PER_REQUESTER = 4
#: Seconds a subscription lasts after its last renewal.
SUBSCRIPTION_TTL_S = 600.0
#: Pushes to subscribers are coalesced over at most this long.
PUSH_INTERVAL_S = 0.02
#: A target gets at most one dump per this many seconds (more requests wait and merge).
DUMP_INTERVAL_S = 1.0
#: Dumps per second, all targets together (about 4.5 kB each).
DUMPS_PER_S = 10.0
#: Dump requests waiting (more are refused).
MAX_PENDING_DUMPS = 64
#: Copies of other senders' replies a subscriber gets: per second, and in a burst.
COPIES_PER_S, COPY_BURST = 100.0, 400.0


@dataclass
class Subscriber:
    address: Address
    form: str  # "both", "param", "norm" or a dialect name
    requester: Optional[Address] = None   # who subscribed it
    expires: float = float("inf")         # time.monotonic() after which it is gone
    proven: bool = False                  # the address itself has sent the server a message
    copies: TokenBucket = field(default_factory=lambda: TokenBucket(COPIES_PER_S, COPY_BURST))


class Subscriptions:
    """Subscriber list, dumps and pushes; mixed into :class:`~bridge.osc.server.OscServer`.

    Uses the server's ``state``, ``preset``, ``transport``, ``dialects``, ``udp``, ``stats``,
    ``allow``, ``subscription_ttl`` and its ``_subscribers``/``_sub_lock``,
    ``_dirty``/``_dump_pending``/``_last_dump``/``_dump_bucket``/``_push_lock``, ``_push_wake``
    and ``_closing``.
    """

    def _host_port(self, args: list, what: str, allowed: bool = True) -> Address:
        if len(args) < 2 or not isinstance(args[0], str) or isinstance(args[1], bool) \
                or not isinstance(args[1], (int, float)) or not float(args[1]).is_integer():
            raise OscReplyError(f"{what}: expected host (string) and port (integer)")
        port = int(args[1])
        if not 1 <= port <= 65535:
            raise OscReplyError(f"{what}: port {port} is outside 1…65535")
        host = numeric_host(args[0], what)
        if allowed and not self.allow.allows(host):
            raise OscReplyError(f"{what}: {host} is not in this server's allow list (serve --allow); "
                                f"nothing is sent there")
        return host, port

    def _check_form(self, form: str) -> str:
        if form in ("both", "param", "norm") or form in self.dialects:
            return form
        raise OscReplyError(f"unknown form {form!r} (both, param, norm" +
                            "".join(f", {d}" for d in self.dialects) + ")")

    def _queue_dump(self, to: Address, form: str, bounded: bool = True) -> None:
        with self._push_lock:
            if to not in self._dump_pending and bounded and len(self._dump_pending) >= MAX_PENDING_DUMPS:
                raise OscReplyError(f"{MAX_PENDING_DUMPS} dumps are waiting already; ask again in a second")
            self._dump_pending[to] = form
        self._push_wake.set()

    def _on_dump(self, address, args, sender, arrival):
        to, form = sender, "both"
        if args:
            to = self._host_port(args, "dump")
            if len(args) > 3:
                raise OscReplyError("expected [host, port, [form]]")
            if len(args) == 3:
                if not isinstance(args[2], str):
                    raise OscReplyError("form must be a string")
                form = self._check_form(args[2])
        self._queue_dump(to, form)

    def _on_subscribe(self, address, args, sender, arrival):
        if len(args) not in (2, 3):
            raise OscReplyError("expected host (string), port (integer) and optionally a form")
        to = self._host_port(args, "subscribe")
        form = "both"
        if len(args) == 3:
            if not isinstance(args[2], str):
                raise OscReplyError("form must be a string")
            form = self._check_form(args[2])
        now = time.monotonic()
        with self._sub_lock:
            self._expire(now)
            sub = self._subscribers.get(to)
            if sub is None:
                proven = to == sender
                subs = self._subscribers.values()
                if len(self._subscribers) >= MAX_SUBSCRIBERS:
                    raise OscReplyError(f"too many subscribers (at most {MAX_SUBSCRIBERS}); "
                                        f"subscriptions expire {self.subscription_ttl:g} s after their last renewal")
                if not proven and sum(not s.proven for s in subs) >= MAX_UNPROVEN:
                    raise OscReplyError(f"too many subscriptions for addresses that never sent this server a "
                                        f"message (at most {MAX_UNPROVEN}); subscribe from the address itself")
                if sum(s.requester == sender for s in subs) >= MAX_PER_REQUESTER:
                    raise OscReplyError(f"one address may hold at most {MAX_PER_REQUESTER} subscriptions")
                sub = self._subscribers[to] = Subscriber(to, form, requester=sender, proven=proven)
            sub.form = form
            sub.expires = now + self.subscription_ttl
            sub.proven = sub.proven or to == sender
        self._queue_dump(to, form, bounded=False)

    def _on_unsubscribe(self, address, args, sender, arrival):
        to = self._host_port(args, "unsubscribe", allowed=False)
        with self._sub_lock:
            self._expire(time.monotonic())
            sub = self._subscribers.get(to)
            if sub is None:
                raise OscReplyError(f"{to[0]}:{to[1]} is not subscribed")
            if sender != to and sender != sub.requester:
                raise OscReplyError(f"only {to[0]}:{to[1]} itself or the address that subscribed it may "
                                    f"unsubscribe it (it expires {self.subscription_ttl:g} s after its last renewal)")
            del self._subscribers[to]
        return A.OK, f"unsubscribed {to[0]}:{to[1]}"

    def renew(self, sender: Address) -> None:
        """A message from ``sender``: if it is a subscriber, it is alive (renewed and proven)."""
        if sender in self._subscribers:
            with self._sub_lock:
                sub = self._subscribers.get(sender)
                if sub is not None:
                    sub.expires = time.monotonic() + self.subscription_ttl
                    sub.proven = True

    def _expire(self, now: float) -> None:
        # called with _sub_lock held
        for a in [a for a, s in self._subscribers.items() if s.expires <= now]:
            del self._subscribers[a]

    def subscribers(self) -> List[Subscriber]:
        with self._sub_lock:
            self._expire(time.monotonic())
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
            elif k.startswith("control."):
                c = k[8:]
                v = self.state.controls()[c]
                if dialect is not None:
                    out.extend(encode_message(a, [x]) for a, x in dialect.outgoing_control(c, v))
                else:
                    out.append(encode_message(A.control_address(c), [int(v) if c == "bypass" else float(v)]))
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
        keys = list(P.PARAM_KEYS) + [f"switch.{m}" for m in P.MODULES] + [f"control.{c}" for c in CONTROLS] + \
            [A.PRESET_CURRENT]
        if self.transport is not None:
            keys.append(A.TRANSPORT_STATE)
        return keys

    def _due_dumps(self) -> List[tuple]:
        """The waiting dumps that may go now (per target and overall rate); the rest keep waiting."""
        now = time.monotonic()
        out = []
        with self._push_lock:
            for to, form in list(self._dump_pending.items()):
                if now - self._last_dump.get(to, -DUMP_INTERVAL_S) < DUMP_INTERVAL_S:
                    continue
                if not self._dump_bucket.take():
                    break
                del self._dump_pending[to]
                self._last_dump[to] = now
                out.append((to, form))
            if len(self._last_dump) > 4 * MAX_PENDING_DUMPS:
                self._last_dump = {a: t for a, t in self._last_dump.items() if now - t < DUMP_INTERVAL_S}
        return out

    def _push_loop(self) -> None:
        while True:
            self._push_wake.wait(timeout=0.05 if self._dump_pending else 0.5)
            if self._closing:
                return
            if not self._push_wake.is_set() and not self._dump_pending:
                continue
            time.sleep(PUSH_INTERVAL_S)  # coalesce a burst of changes
            self._push_wake.clear()
            with self._push_lock:
                keys, self._dirty = list(self._dirty), {}
            dumps = self._due_dumps()
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
