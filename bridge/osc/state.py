"""The bridge state: Θ in real units + switches, shared by the OSC server, the live engine and ITO,
with the record of every applied change (:class:`Change`), bounded in memory (a ring of the latest
:data:`MAX_CHANGES_IN_MEMORY`; a reader that falls further behind is told how many it lost)."""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections import deque
from typing import Callable, Deque, Dict, List, NamedTuple, Optional, Tuple

from engine import params as P
from engine.errors import ParamError

#: Changes kept in memory for the record's reader (``serve``'s recorder drains them once a second);
#: about 150 bytes each.
MAX_CHANGES_IN_MEMORY = 50_000

#: The live controls beside Θ (not part of a preset): name -> (min, max, default, meaning).
#: ``/refmaster/<name>``; the engine applies them (bridge/live/monitor.py); recorded as ``control.<name>``.
CONTROLS: Dict[str, Tuple[float, float, float, str]] = {
    "bypass": (0.0, 1.0, 0.0, "1: the input, loudness-matched to the processed signal (A/B); 0: processed"),
    "amount": (0.0, 1.0, 1.0, "how far every parameter moves from neutral: 1 the preset, 0 the neutral chain"),
}


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

    Every applied change is appended to :attr:`changes` (:class:`Change` fields; a ring of the
    latest :data:`MAX_CHANGES_IN_MEMORY`, read with :meth:`changes_since`) and reported to the
    listeners as a list of keys. A write that leaves a value as it was is no change: it is not
    recorded and the engine does not re-render, but the listeners still hear of it (so a
    controller that sent an out-of-range value learns the clamped one). The engine calls :meth:`take_for_block` at the
    start of every block: it gets the current parameters if anything changed, plus the arrival
    times of the messages applied since the previous block (for latency figures).
    """

    def __init__(self, chain: Optional[P.ChainParams] = None, record: bool = True,
                 max_changes: int = MAX_CHANGES_IN_MEMORY):
        chain = chain or P.ChainParams.default()
        self._lock = threading.Lock()
        self._values: Dict[str, float] = dict(chain.values)
        self._switches: Dict[str, bool] = dict(chain.switches)
        self._controls: Dict[str, float] = {k: v[2] for k, v in CONTROLS.items()}
        self._dirty_engine = True
        self._arrivals: List[float] = []
        self._listeners: List[Callable[[List[str]], None]] = []
        self.version = 0
        self.t0 = time.perf_counter()
        self.record = record
        self.changes: Deque[tuple] = deque(maxlen=max_changes)  # Change fields as plain tuples (see Change)
        self.changes_total = 0  # changes ever recorded (the ring holds the latest of them)

    def add_listener(self, fn: Callable[[List[str]], None]) -> None:
        self._listeners.append(fn)

    def _notify(self, keys: List[str]) -> None:
        for fn in self._listeners:
            fn(keys)

    def _log(self, key: str, value: float, source: str, t: float) -> None:
        if self.record:
            self.changes.append((t - self.t0, time.time(), key, value, source))
            self.changes_total += 1

    def changes_since(self, seen: int) -> Tuple[List[tuple], int, int]:
        """(the changes recorded after the first ``seen``, the new total, how many of them the
        ring no longer holds)."""
        with self._lock:
            total, held = self.changes_total, len(self.changes)
            first = total - held
            lost = max(0, first - seen)
            start = max(seen, first) - first
            return list(itertools.islice(self.changes, start, None)), total, lost

    def set_value(self, key: str, value: float, source: str = "", arrival: Optional[float] = None) -> Tuple[float, bool]:
        """Set one parameter (clamped to its range). Returns (applied value, was clamped)."""
        spec = P.spec(key)
        v = float(value)
        if not math.isfinite(v):
            raise ParamError(key, f"value is {v} (must be a finite number)")
        applied = spec.clamp(v)
        t = arrival if arrival is not None else time.perf_counter()
        with self._lock:
            if self._values[key] != applied:
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
            if self._switches[module] != bool(on):
                self._switches[module] = bool(on)
                self._dirty_engine = True
                self._arrivals.append(t)
                self.version += 1
                self._log(f"switch.{module}", 1.0 if on else 0.0, source, t)
        self._notify([f"switch.{module}"])

    def set_control(self, name: str, value: float, source: str = "", arrival: Optional[float] = None) -> Tuple[float, bool]:
        """Set a live control (:data:`CONTROLS`, clamped to its range). Returns (applied, was clamped)."""
        if name not in CONTROLS:
            raise ParamError(f"control.{name}", f"unknown control (one of {', '.join(CONTROLS)})")
        v = float(value)
        if not math.isfinite(v):
            raise ParamError(f"control.{name}", f"value is {v} (must be a finite number)")
        lo, hi = CONTROLS[name][:2]
        applied = min(max(v, lo), hi)
        t = arrival if arrival is not None else time.perf_counter()
        with self._lock:
            if self._controls[name] != applied:
                self._controls[name] = applied
                self._dirty_engine = True
                self._arrivals.append(t)
                self.version += 1
                self._log(f"control.{name}", applied, source, t)
        self._notify([f"control.{name}"])
        return applied, applied != v

    def controls(self) -> Dict[str, float]:
        """The live controls' current values (:data:`CONTROLS`)."""
        with self._lock:
            return dict(self._controls)

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
