"""The one JSON reader (presets, parameter files, dialect maps, pedalboard settings) and strict JSON out.

Why limits: Python's ``json`` turns hostile or damaged input into exceptions that are not
``JSONDecodeError`` — ``RecursionError`` for nesting 100,000 deep, ``ValueError`` for an
integer of more than 4,300 digits, ``OverflowError`` later when a 400-digit integer becomes a
float. Every file refmaster reads holds a few levels of objects and ordinary numbers, so
anything deeper or longer is refused here, as one :class:`JsonError` line naming the file and
the line, before any other code sees it. ``NaN``, ``Infinity`` and ``1e400`` (infinite) parse
to floats on purpose: every reader's field checks refuse a non-finite number and name the field.

:func:`dumps_strict` is the other direction: what ``--json`` prints is strict JSON, with
``null`` where a measure is not a finite number (the loudness of a DC-only file, the DRV of a
file without onsets), never ``NaN`` or ``Infinity``.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Union

import numpy as np

from engine.errors import RefmasterError

PathLike = Union[str, os.PathLike]

#: Largest JSON file read (a preset with its embedding and a 2,000-step loss history is ~100 KB).
MAX_JSON_BYTES = 16 * 1024 * 1024
#: Deepest nesting of arrays and objects (presets and dialect maps use four levels).
MAX_DEPTH = 32
#: Longest integer literal (a 64-bit integer has 19 digits).
MAX_INT_DIGITS = 20

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)


class JsonError(RefmasterError):
    """A JSON file or text that cannot be used: unreadable, not JSON, or beyond the limits above."""


class _Refused(ValueError):
    """Raised from inside the parser's hooks; becomes a :class:`JsonError`."""


def _int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise _Refused(text)
    return int(text)


def _blank_strings(text: str) -> str:
    """``text`` with every string literal's content replaced by spaces (same length, so offsets hold)."""
    return _STRING.sub(lambda m: '"' + " " * (len(m.group()) - 2) + '"', text)


def _line(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def nesting_depth(text: str):
    """(deepest nesting of ``[`` and ``{`` outside strings, offset where it is first reached);
    linear time, no recursion."""
    b = np.frombuffer(_blank_strings(text).encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    step = np.isin(b, (ord("["), ord("{"))).astype(np.int64) - np.isin(b, (ord("]"), ord("}")))
    if not len(step):
        return 0, 0
    depth = np.cumsum(step)
    at = int(np.argmax(depth))
    return int(depth[at]), at


def parse_json(text: str, source: str = "JSON"):
    """``json.loads`` within the limits above; every failure is one :class:`JsonError` naming ``source``."""
    if len(text) > MAX_JSON_BYTES:
        raise JsonError(f"{source}: {len(text)} characters of JSON; at most {MAX_JSON_BYTES} are read")
    # the full scan only when there are enough brackets to nest too deep (a preset has about 15)
    depth, at = nesting_depth(text) if text.count("[") + text.count("{") > MAX_DEPTH else (0, 0)
    if depth > MAX_DEPTH:
        raise JsonError(f"{source}: not usable: JSON nested {depth} levels deep at line {_line(text, at)} "
                        f"(at most {MAX_DEPTH})")
    try:
        return json.loads(text, parse_int=_int)
    except _Refused as e:
        at = text.find(str(e))
        raise JsonError(f"{source}: not usable: an integer of {len(str(e).lstrip('-'))} digits at line "
                        f"{_line(text, max(at, 0))} (at most {MAX_INT_DIGITS})") from None
    except json.JSONDecodeError as e:
        raise JsonError(f"{source}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno}); "
                        f"the file is damaged or truncated") from None
    except (RecursionError, ValueError, OverflowError) as e:  # the checks above make these unreachable
        raise JsonError(f"{source}: not usable JSON ({type(e).__name__})") from None


def read_json(path: PathLike, what: str = "JSON file"):
    """Parse the JSON file ``path`` (see :func:`parse_json`); missing, unreadable, too big,
    empty or not UTF-8 is one :class:`JsonError` too."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if p.is_dir():
            raise JsonError(f"{p}: is a folder, not a {what}")
        if size > MAX_JSON_BYTES:
            raise JsonError(f"{p}: {size} bytes; a {what} is at most {MAX_JSON_BYTES} bytes")
        text = p.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise JsonError(f"{p}: no such {what}") from None
    except UnicodeDecodeError:
        raise JsonError(f"{p}: cannot read {what} (not UTF-8 text)") from None
    except OSError as e:
        raise JsonError(f"{p}: cannot read {what} ({e.strerror or e})") from None
    if not text.strip():
        raise JsonError(f"{p}: file is empty")
    return parse_json(text, str(p))


def _finite_or_null(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite_or_null(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_null(v) for v in obj]
    return obj


def dumps_strict(obj, **kwargs) -> str:
    """``json.dumps`` with every non-finite float written as ``null`` (strict JSON, RFC 8259)."""
    return json.dumps(_finite_or_null(obj), allow_nan=False, **kwargs)
