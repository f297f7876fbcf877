"""The OSC wire format: encoding messages, checking packets before they are parsed, and the text
helpers replies use. Pure functions on bytes and values; no sockets, no state."""

from __future__ import annotations

import struct
from typing import Iterator, Optional, Sequence, Tuple

import numpy as np
from pythonosc.osc_message_builder import OscMessageBuilder

MAX_BUNDLE_DEPTH = 8
#: Messages one packet may hold (more: the packet is refused before it is parsed).
MAX_MESSAGES_PER_PACKET = 256


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

    Checks that the address and type tags are NUL-terminated and padded, that the
    arguments fill the message exactly (a truncated message is refused rather than
    completed with zeros, which python-osc does for floats, to suit Reaktor), that the
    strings are UTF-8 and the arrays balanced: a message that passes parses.
    """
    end = len(data) if end is None else end
    pos = _padded_string_end(data, start, end)
    if pos is None:
        return "address is not NUL-terminated and padded (truncated?)"
    if not _utf8(data, start):
        return "the address is not UTF-8"
    if pos == end:
        return None  # no type tag string: an (old-style) message without arguments
    if data[pos:pos + 1] != b",":
        return "type tag string missing (must start with ',')"
    tags_end = _padded_string_end(data, pos, end)
    if tags_end is None:
        return "type tag string is not NUL-terminated and padded (truncated?)"
    tags = data[pos + 1:data.find(b"\x00", pos, end)].decode("ascii", "replace")
    pos = tags_end
    depth = 0
    for t in tags:
        depth += (t == "[") - (t == "]")
        if depth < 0:
            return "']' without '[' in the type tags"
        if t in _FIXED_SIZE:
            pos += _FIXED_SIZE[t]
        elif t == "s":
            nxt = _padded_string_end(data, pos, end)
            if nxt is None:
                return "a string argument is not NUL-terminated (truncated?)"
            if not _utf8(data, pos):
                return "a string argument is not UTF-8"
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
    if depth:
        return "'[' without ']' in the type tags"
    return None


def _utf8(data: bytes, pos: int) -> bool:
    try:
        data[pos:data.find(b"\x00", pos)].decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def message_spans(data: bytes) -> Iterator[Tuple[int, int]]:
    """(start, end) of every message of a packet that passed :func:`check_packet`, in order
    (bundles flattened depth first, as python-osc does), so messages can be parsed one by one."""
    if not data.startswith(_BUNDLE):
        yield 0, len(data)
        return
    stack = [(16, len(data))]            # (next element, end of its bundle)
    while stack:
        pos, end = stack.pop()
        if pos >= end:
            continue
        (size,) = struct.unpack(">i", data[pos:pos + 4])
        start = pos + 4
        stack.append((start + size, end))
        if data[start:start + 8] == _BUNDLE:
            stack.append((start + 16, start + size))
        else:
            yield start, start + size


def check_packet(data: bytes, max_depth: int = MAX_BUNDLE_DEPTH,
                 max_messages: int = MAX_MESSAGES_PER_PACKET) -> Optional[str]:
    """A reason to refuse ``data`` before parsing it, or None.

    Walks bundles iteratively (a deeply nested bundle cannot exhaust the stack), checks that
    every element is a message or a bundle, in bounds and 4-byte aligned, that every
    message's arguments fill it exactly (:func:`check_message`) and that there are at most
    ``max_messages`` messages (parsing is the costly part of a flood).
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
    messages = 0
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
                messages += 1
                if messages > max_messages:
                    return f"more than {max_messages} messages in one packet"
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
