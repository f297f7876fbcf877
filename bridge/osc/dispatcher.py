"""The OSC dispatcher: maps addresses to handlers, exact addresses directly and OSC address patterns
(``/refmaster/param/eq/*_gain``) through :class:`OscPattern`, a matcher that takes time linear in the
pattern and the address whatever the pattern (a regular expression with many ``*`` backtracks for
minutes on one address). Patterns reach only the addresses mapped with ``pattern=True`` (settings,
not commands)."""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Tuple

from bridge.osc.transport import Address

#: Longest address pattern matched (longer: refused before any matching).
MAX_PATTERN_LENGTH = 256


class OscReplyError(Exception):
    """Raised by a handler: the message is refused and answered with ``/refmaster/error``."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


#: ``handler(address, args, sender, arrival)`` -> None, or (reply address, text) for the one reply
#: the message gets (``/refmaster/warning`` or ``/refmaster/ok``); raise OscReplyError to refuse it.
Handler = Callable[[str, list, Address, float], Optional[Tuple[str, str]]]


def _set_test(body: str) -> Callable[[str], bool]:
    neg = body.startswith("!")
    body = body[1:] if neg else body
    ranges: List[Tuple[str, str]] = []
    i = 0
    while i < len(body):
        if i + 2 < len(body) and body[i + 1] == "-":
            ranges.append((body[i], body[i + 2]))
            i += 3
        else:
            ranges.append((body[i], body[i]))
            i += 1
    return lambda c: any(lo <= c <= hi for lo, hi in ranges) != neg


def _segment_tokens(seg: str) -> list:
    """A pattern segment (no '/') as tokens: ("lit", text), ("?",), ("*",), ("set", test), ("alt", words)."""
    out: list = []
    i = 0
    while i < len(seg):
        c = seg[i]
        if c == "*":
            if not (out and out[-1][0] == "*"):
                out.append(("*",))
        elif c == "?":
            out.append(("?",))
        elif c == "[":
            j = seg.find("]", i + 1)
            if j < 0:
                raise OscReplyError("unclosed '[' in address pattern")
            out.append(("set", _set_test(seg[i + 1:j])))
            i = j
        elif c == "{":
            j = seg.find("}", i + 1)
            if j < 0:
                raise OscReplyError("unclosed '{' in address pattern")
            out.append(("alt", tuple(seg[i + 1:j].split(","))))
            i = j
        elif out and out[-1][0] == "lit":
            out[-1] = ("lit", out[-1][1] + c)
        else:
            out.append(("lit", c))
        i += 1
    return out


def _segment_matches(tokens: list, s: str) -> bool:
    """Whether ``s`` matches: the set of positions reachable after each token (no backtracking)."""
    states = {0}
    for tok in tokens:
        kind = tok[0]
        if kind == "*":
            states = set(range(min(states), len(s) + 1))
        elif kind == "lit":
            states = {p + len(tok[1]) for p in states if s.startswith(tok[1], p)}
        elif kind == "?":
            states = {p + 1 for p in states if p < len(s)}
        elif kind == "set":
            states = {p + 1 for p in states if p < len(s) and tok[1](s[p])}
        else:
            states = {p + len(a) for p in states for a in tok[1] if s.startswith(a, p)}
        if not states:
            return False
    return len(s) in states


class OscPattern:
    """An OSC 1.0 address pattern (``* ? [a-z] [!a] {foo,bar}``; ``*`` never crosses a '/')."""

    def __init__(self, pattern: str):
        if len(pattern) > MAX_PATTERN_LENGTH:
            raise OscReplyError(f"address pattern longer than {MAX_PATTERN_LENGTH} characters")
        self.segments = [_segment_tokens(seg) for seg in pattern.split("/")]

    def match_all(self, addresses: List[str]) -> List[str]:
        """The addresses that match, each distinct segment tested once per level."""
        n = len(self.segments)
        tested: List[Dict[str, bool]] = [{} for _ in range(n)]
        hits = []
        for a in addresses:
            parts = a.split("/")
            if len(parts) != n:
                continue
            for level, part in enumerate(parts):
                ok = tested[level].get(part)
                if ok is None:
                    ok = tested[level][part] = _segment_matches(self.segments[level], part)
                if not ok:
                    break
            else:
                hits.append(a)
        return hits


class OscDispatcher:
    """Address -> handler map. Exact addresses are looked up directly; an address containing
    OSC pattern characters (``*?[]{}``) is matched against the addresses mapped with ``pattern=True``."""

    PATTERN_CHARS = set("*?[]{}")

    def __init__(self):
        self._map: Dict[str, Handler] = {}
        self._matchable: List[str] = []
        self._patterns: Dict[str, List[str]] = {}

    def map(self, address: str, handler: Handler, pattern: bool = True) -> None:
        if address not in self._map and pattern:
            self._matchable.append(address)
        self._map[address] = handler
        self._patterns.clear()

    def addresses(self) -> List[str]:
        return list(self._map)

    def is_pattern(self, address: str) -> bool:
        return address not in self._map and bool(self.PATTERN_CHARS & set(address))

    def cached(self, address: str) -> bool:
        return address in self._patterns

    def handlers_for(self, address: str) -> List[Tuple[str, Handler]]:
        h = self._map.get(address)
        if h is not None:
            return [(address, h)]
        if not (self.PATTERN_CHARS & set(address)):
            return []
        hits = self._patterns.get(address)
        if hits is None:
            hits = OscPattern(address).match_all(self._matchable)
            if len(self._patterns) > 256:
                self._patterns.clear()
            self._patterns[address] = hits
        return [(a, self._map[a]) for a in hits]
