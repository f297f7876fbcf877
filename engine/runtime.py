"""How many CPU threads the Torch side uses: the cores other processes leave free, or ``--threads N``.

Why not torch's default (one thread per core): its intra-op pool splits every operation over
all cores and waits for the slowest thread at the end of each. When another process keeps one
core busy — a DAW while the producer works — the thread sharing that core runs at half speed or
less and every operation waits for it (issue 14: one busy core made `master` 2.0× slower, several
competing jobs up to 25×). One thread fewer than the cores costs far less (README, "Measured").

So :func:`choose_threads` counts the cores that *other* processes kept busy over a window —
``/proc/stat``'s busy time of all CPUs minus this process's own CPU time, from :data:`START`
(when this module was first imported: the command line imports it before anything heavy) to
now — and uses the cores left, at least one. Time of niced processes does not count while we
run un-niced (the scheduler gives them way: a nice-19 job gets ~1.5 % of a core against us);
when we are niced ourselves it does. Where ``/proc/stat`` is missing (not Linux) every core counts
as free. The choice is made once, when the heavy work starts; :func:`set_threads` applies it to
torch and to numba (torchcomp's parallel loops).
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Optional

from engine.errors import UsageError

#: The shortest window worth judging the other processes' load on (s); shorter ones are extended.
MIN_WINDOW_S = 0.25
#: Cores count as taken by others from this share of a core on. A quarter is enough: every
#: operation waits for its slowest thread, so a thread that loses a quarter of its core to another
#: process slows all of them (measured: a 6 s master took 10 min with two threads beside a job
#: holding ~45 % of a core at higher priority).
BUSY_SHARE = 0.25


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class CpuSnapshot:
    """Counters at one moment: wall time, the CPUs' busy jiffies (not niced / niced), our CPU seconds."""

    wall: float
    busy: Optional[int]        # user + system + irq + softirq + steal, all CPUs (None: no /proc/stat)
    niced: Optional[int]       # time of niced processes, all CPUs
    own_cpu: float             # this process's user + system seconds, all its threads

    @classmethod
    def take(cls) -> "CpuSnapshot":
        busy = niced = None
        try:
            with open("/proc/stat") as f:
                fields = f.readline().split()
            if fields and fields[0] == "cpu":
                v = [int(x) for x in fields[1:9]] + [0] * max(0, 9 - len(fields))
                user, nice, system, _idle, _iowait, irq, softirq, steal = v[:8]
                busy, niced = user + system + irq + softirq + steal, nice
        except (OSError, ValueError):
            pass
        t = os.times()
        return cls(time.monotonic(), busy, niced, t.user + t.system)


#: When the process started its command (this module's first import).
START = CpuSnapshot.take()


def _ticks_per_second() -> float:
    try:
        return float(os.sysconf("SC_CLK_TCK"))
    except (AttributeError, ValueError, OSError):
        return 100.0


def busy_elsewhere(since: Optional[CpuSnapshot] = None, now: Optional[CpuSnapshot] = None) -> Optional[float]:
    """Cores' worth of CPU that other processes used between ``since`` (default :data:`START`) and
    ``now`` (default: now, after at least :data:`MIN_WINDOW_S`); None where it cannot be told."""
    since = since or START
    if now is None:
        wait = MIN_WINDOW_S - (time.monotonic() - since.wall)
        if wait > 0:
            time.sleep(wait)
        now = CpuSnapshot.take()
    if since.busy is None or now.busy is None or now.wall <= since.wall:
        return None
    hz = _ticks_per_second()
    busy = now.busy - since.busy
    if _niced():
        busy += now.niced - since.niced
    other = busy / hz - (now.own_cpu - since.own_cpu)
    return max(0.0, other / (now.wall - since.wall))


def _niced() -> bool:
    try:
        return os.getpriority(os.PRIO_PROCESS, 0) > 0
    except (AttributeError, OSError):
        return False


def free_threads(cores: int, busy_other: Optional[float]) -> int:
    """Threads for ``cores`` cores of which others keep ``busy_other`` cores' worth busy: at least 1."""
    if busy_other is None or not math.isfinite(busy_other):
        return cores
    taken = math.floor(busy_other + (1.0 - BUSY_SHARE))
    return max(1, min(cores, cores - taken))


@dataclass(frozen=True)
class ThreadChoice:
    threads: int
    cores: int
    busy_elsewhere: Optional[float]   # cores' worth (None: given with --threads, or not measurable)
    requested: Optional[int]

    def describe(self) -> str:
        if self.requested:
            return f"{self.threads} thread(s) (--threads)"
        load = "unknown" if self.busy_elsewhere is None else f"{self.busy_elsewhere:.1f} core(s) busy elsewhere"
        return f"{self.threads} of {self.cores} core(s) ({load})"

    def as_dict(self) -> dict:
        return {"threads": self.threads, "cores": self.cores, "busy_elsewhere": self.busy_elsewhere,
                "requested": self.requested}


#: The most threads ``--threads`` accepts (more than any CPU here has; a typo like 800 is refused).
MAX_THREADS = 256


def check_threads(requested) -> Optional[int]:
    """``requested`` as a whole number 1…:data:`MAX_THREADS` (None stays None), or one clear :class:`UsageError`."""
    if requested is None:
        return None
    if isinstance(requested, bool) or not isinstance(requested, int) or not 1 <= requested <= MAX_THREADS:
        raise UsageError(f"--threads must be a whole number 1…{MAX_THREADS}, got {requested!r}")
    return requested


def choose_threads(requested: Optional[int] = None) -> ThreadChoice:
    """``requested`` when given (1…:data:`MAX_THREADS`), else the cores other processes left free
    (see the module docstring)."""
    cores = available_cores()
    requested = check_threads(requested)
    if requested:
        return ThreadChoice(requested, cores, None, requested)
    busy = busy_elsewhere()
    return ThreadChoice(free_threads(cores, busy), cores, busy, None)


def set_threads(n: int) -> None:
    """Run torch's intra-op pool and numba's parallel loops on ``n`` threads (imports torch)."""
    import torch

    torch.set_num_threads(n)
    numba = sys.modules.get("numba")
    if numba is None:
        try:
            import numba
        except ImportError:  # torchcomp brings numba; without it there is no numba pool to size
            return
    numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))


def use_threads(requested: Optional[int] = None) -> ThreadChoice:
    """:func:`choose_threads` and :func:`set_threads` in one: what a command calls before its heavy work."""
    choice = choose_threads(requested)
    set_threads(choice.threads)
    return choice
