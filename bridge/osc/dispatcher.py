"""The OSC dispatcher: maps addresses to handlers, exact addresses directly and OSC address patterns
(``/refmaster/param/eq/*_gain``) through a regular expression matched against every mapped address."""

from __future__ import annotations

import re
from typing import Callable, Dict, List, Tuple

from bridge.osc.transport import Address


class OscReplyError(Exception):
    """Raised by a handler: the message is refused and answered with ``/refmaster/error``."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


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
