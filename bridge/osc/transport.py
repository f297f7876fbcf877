"""The UDP transport: a socket and a receive thread that hands each datagram, its sender and its
arrival time to one callback. It knows nothing of OSC addresses or handlers."""

from __future__ import annotations

import socket
import sys
import threading
import time
from typing import Callable, Tuple

from engine.errors import RefmasterError

Address = Tuple[str, int]


class UdpTransport:
    """A UDP socket with a receive thread. ``on_packet(data, sender, arrival_perf_counter)``."""

    def __init__(self, on_packet: Callable[[bytes, Address, float], None], host: str = "127.0.0.1",
                 port: int = 0, receive_buffer: int = 8 << 20):
        self._on_packet = on_packet
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        except OSError as e:  # a limit of the OS: keep its default, say so
            print(f"warning: could not enlarge the UDP receive buffer ({e})", file=sys.stderr)
        try:
            self.sock.bind((host, port))
        except OSError as e:
            self.sock.close()
            raise RefmasterError(f"cannot listen for OSC on {host}:{port} ({e.strerror or e})") from None
        self.sock.settimeout(0.1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="osc-receive", daemon=True)
        self.packets = 0
        self.send_failures = 0

    @property
    def address(self) -> Address:
        return self.sock.getsockname()

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, sender = self.sock.recvfrom(65536)
            except socket.timeout:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                raise
            self.packets += 1
            self._on_packet(data, sender, time.perf_counter())

    def send(self, data: bytes, to: Address) -> None:
        try:
            self.sock.sendto(data, to)
        except OSError:
            # a subscriber that went away (ICMP port unreachable) or a full send buffer: UDP
            # delivery is best effort; the state itself is unaffected.
            self.send_failures += 1

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2.0)
        self.sock.close()
