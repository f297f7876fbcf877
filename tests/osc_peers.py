"""Independent OSC peers for tests: liblo's `oscsend` and `oscdump` (Debian liblo-tools)."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import threading
import time
from typing import Callable, List, Optional, Tuple

import pytest

HAVE_LIBLO = shutil.which("oscsend") is not None and shutil.which("oscdump") is not None
needs_liblo = pytest.mark.skipif(not HAVE_LIBLO, reason="oscsend/oscdump not installed (apt-get install liblo-tools)")


def free_udp_port() -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def oscsend(host: str, port: int, address: str, types: str = "", *values) -> None:
    cmd = ["oscsend", host, str(port), address] + ([types] if types else []) + [str(v) for v in values]
    subprocess.run(cmd, check=True, timeout=10, capture_output=True)


_TOKEN = re.compile(r'"((?:[^"\\]|\\.)*)"|(\S+)')


def parse_dump_line(line: str) -> Optional[Tuple[str, list]]:
    """``<timetag> <address> <types> <args...>`` -> (address, [typed args])."""
    parts = line.split(" ", 3)
    if len(parts) < 2 or not parts[1].startswith("/"):
        return None
    address = parts[1]
    types = parts[2] if len(parts) > 2 else ""
    rest = parts[3] if len(parts) > 3 else ""
    raw = [m.group(1) if m.group(1) is not None else m.group(2) for m in _TOKEN.finditer(rest)]
    args: list = []
    for t, v in zip(types, raw):
        if t in "fd":
            args.append(float(v))
        elif t in "ih":
            args.append(int(v))
        else:
            args.append(v)
    return address, args


class OscDump:
    """An `oscdump` process on a free port, with its messages collected as they arrive."""

    def __init__(self):
        for _ in range(5):
            self.port = free_udp_port()
            self.proc = subprocess.Popen(["oscdump", "-L", str(self.port)], stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, text=True, bufsize=1)
            time.sleep(0.15)
            if self.proc.poll() is None:
                break
        else:
            raise RuntimeError("oscdump could not start")
        self.messages: List[Tuple[str, list]] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            msg = parse_dump_line(line.rstrip("\n"))
            if msg is not None:
                with self._cond:
                    self.messages.append(msg)
                    self._cond.notify_all()

    def wait_for(self, pred: Callable[[List[Tuple[str, list]]], bool], timeout: float = 5.0) -> List[Tuple[str, list]]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not pred(self.messages):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out; oscdump got {len(self.messages)} messages, last: {self.messages[-5:]}")
                self._cond.wait(left)
            return list(self.messages)

    def wait_address(self, address: str, count: int = 1, timeout: float = 5.0) -> List[list]:
        self.wait_for(lambda ms: sum(a == address for a, _ in ms) >= count, timeout)
        return self.args(address)

    def args(self, address: str) -> List[list]:
        with self._cond:
            return [args for a, args in self.messages if a == address]

    def last(self, address: str) -> Optional[list]:
        got = self.args(address)
        return got[-1] if got else None

    def clear(self) -> None:
        with self._cond:
            self.messages.clear()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()
        self.proc.stderr.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
