"""Who may talk to the OSC server and how much it answers: the allow list (numeric networks, no name
resolution), the reply budget (a sender never gets more reply bytes than 1.5 × the bytes it sent),
token buckets, the shared secret, and the scrubbing of file paths out of replies.

UDP source addresses can be forged, so everything the server sends in answer to a packet is
either bounded by that packet's size (replies) or goes only to hosts the operator allowed
(``serve --allow``) at a bounded rate (dumps, pushes, copies of replies to subscribers).
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import re
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from bridge.osc.dispatcher import OscReplyError
from bridge.osc.transport import Address
from bridge.osc.wire import encode_message
from engine.errors import RefmasterError

#: Hosts that may talk to the server when ``--allow`` is not given: this machine only.
DEFAULT_ALLOW = ("127.0.0.0/8", "::1/128")
#: Reply bytes a sender may get per byte it sent (the anti-amplification limit).
REPLY_RATIO = 1.5
#: Unused reply credit a sender may bank (so a burst of errors after quiet traffic is bounded too).
CREDIT_CAP_BYTES = 64 * 1024
#: Senders whose credit is remembered (least recently heard forgotten first: they restart at 0).
MAX_TRACKED_SENDERS = 4096
#: Fewest characters a shortened reason keeps (fewer: the reason is left out).
MIN_REASON_CHARS = 12
#: Shortest shared secret accepted.
MIN_SECRET_LENGTH = 12
#: Environment variable holding the shared secret for ``refmaster serve``.
SECRET_ENV = "REFMASTER_OSC_SECRET"


class AllowList:
    """Numeric networks (``127.0.0.0/8``, ``192.168.1.0/24``, ``10.0.0.7``); never resolves a name."""

    def __init__(self, networks: Iterable[str]):
        self.networks = []
        for text in networks:
            try:
                self.networks.append(ipaddress.ip_network(str(text).strip(), strict=False))
            except ValueError:
                raise RefmasterError(f"--allow {text}: not a numeric address or network "
                                     f"(e.g. 192.168.1.0/24 or 10.0.0.7; names are not resolved)") from None
        if not self.networks:
            raise RefmasterError("--allow needs at least one network")
        self._seen: Dict[str, bool] = {}

    def __str__(self) -> str:
        return " ".join(str(n) for n in self.networks)

    def allows(self, host: str) -> bool:
        hit = self._seen.get(host)
        if hit is None:
            try:
                ip = ipaddress.ip_address(host)
            except ValueError:
                return False
            hit = any(ip.version == n.version and ip in n for n in self.networks)
            if len(self._seen) >= MAX_TRACKED_SENDERS:
                self._seen.clear()
            self._seen[host] = hit
        return hit


def numeric_host(text: str, what: str) -> str:
    """``text`` as an IPv4 address string, else OscReplyError: names are never looked up."""
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        raise OscReplyError(f"{what}: host must be a numeric IPv4 address such as 127.0.0.1 "
                            f"(names are not resolved)") from None
    if ip.version != 4:
        raise OscReplyError(f"{what}: this server speaks IPv4; give an IPv4 address")
    return str(ip)


class TokenBucket:
    """``rate`` events per second with bursts of up to ``burst``."""

    def __init__(self, rate: float, burst: float):
        self.rate, self.burst = float(rate), float(burst)
        self._tokens = float(burst)
        self._t = time.monotonic()

    def take(self, n: float = 1.0) -> bool:
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._t) * self.rate)
        self._t = now
        if self._tokens < n:
            return False
        self._tokens -= n
        return True


def _shortened(text: str, address: str, head: List[str], limit: int) -> Optional[bytes]:
    """The reply with its last argument ``text`` cut (with "…") so that it fits ``limit`` bytes."""
    lo, hi, best = MIN_REASON_CHARS, len(text) - 1, None
    while lo <= hi:
        mid = (lo + hi) // 2
        data = encode_message(address, head + [text[:mid] + "…"])
        if len(data) <= limit:
            best, lo = data, mid + 1
        else:
            hi = mid - 1
    return best


class ReplyBudget:
    """Per-sender reply credit: every packet earns :data:`REPLY_RATIO` × its size (banked up to
    :data:`CREDIT_CAP_BYTES`); every reply spends its size. A reply larger than the credit is
    shortened — its reason cut, then left out, then the echoed address too — and not sent at all
    if not even the bare reply address fits. So over any span of time a sender (or a host whose
    address a forger uses) gets at most 1.5 × the bytes it sent, plus at most the banked credit."""

    def __init__(self, ratio: float = REPLY_RATIO, cap: int = CREDIT_CAP_BYTES,
                 max_senders: int = MAX_TRACKED_SENDERS):
        self.ratio, self.cap, self.max_senders = ratio, cap, max_senders
        self._credit: "OrderedDict[Address, float]" = OrderedDict()
        self._lock = threading.Lock()
        self.shortened = 0
        self.dropped = 0

    def earn(self, sender: Address, nbytes: int) -> None:
        with self._lock:
            c = self._credit.pop(sender, 0.0)
            self._credit[sender] = min(self.cap, c + self.ratio * nbytes)
            while len(self._credit) > self.max_senders:
                self._credit.popitem(last=False)

    def credit(self, sender: Address) -> float:
        with self._lock:
            return self._credit.get(sender, 0.0)

    def spend(self, sender: Address, address: str, args: Sequence[str]) -> Optional[bytes]:
        """The datagram to send ``sender`` (the reply, shortened to fit its credit), or None."""
        args = list(args)
        with self._lock:
            limit = int(self._credit.get(sender, 0.0))
            data = encode_message(address, args)
            if len(data) > limit:
                data = _shortened(args[-1], address, args[:-1], limit) if args else None
                k = len(args) - 1
                while data is None and k >= 0:
                    candidate = encode_message(address, args[:k])
                    data = candidate if len(candidate) <= limit else None
                    k -= 1
                if data is None:
                    self.dropped += 1
                    return None
                self.shortened += 1
            if sender in self._credit:
                self._credit[sender] -= len(data)
            return data


class SharedSecret:
    """The optional shared secret: ``/refmaster/auth <secret>`` authorises the rest of its packet
    and, for ``ttl`` seconds renewed by every authorised message, its sender's address:port."""

    def __init__(self, secret: str, ttl: float, max_logins: int = 256):
        if len(secret) < MIN_SECRET_LENGTH:
            raise RefmasterError(f"the OSC secret must have at least {MIN_SECRET_LENGTH} characters")
        self._secret = secret.encode("utf-8")
        self.ttl = ttl
        self.max_logins = max_logins
        self._logins: "OrderedDict[Address, float]" = OrderedDict()
        self._lock = threading.Lock()

    def matches(self, offered: str) -> bool:
        return hmac.compare_digest(offered.encode("utf-8"), self._secret)

    def login(self, sender: Address) -> None:
        with self._lock:
            self._logins.pop(sender, None)
            self._logins[sender] = time.monotonic() + self.ttl
            while len(self._logins) > self.max_logins:
                self._logins.popitem(last=False)

    def logged_in(self, sender: Address) -> bool:
        """Whether ``sender`` holds a login (renewing it if so)."""
        now = time.monotonic()
        with self._lock:
            until = self._logins.get(sender)
            if until is None:
                return False
            if until <= now:
                del self._logins[sender]
                return False
            self._logins.move_to_end(sender)
            self._logins[sender] = now + self.ttl
            return True


def read_secret(secret_file: Optional[str]) -> Optional[str]:
    """The secret from ``--secret-file`` (first line), else ``$REFMASTER_OSC_SECRET``, else None."""
    if secret_file:
        try:
            text = Path(secret_file).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise RefmasterError(f"--secret-file {secret_file}: cannot read it ({getattr(e, 'strerror', None) or e})") \
                from None
        secret = text[0].strip() if text else ""
        if not secret:
            raise RefmasterError(f"--secret-file {secret_file}: the file is empty")
        return secret
    return os.environ.get(SECRET_ENV) or None


#: An absolute POSIX path: a '/' not preceded by a word character, then at least two segments.
_ABSOLUTE_PATH = re.compile(r"(?<![\w.~<>*?\]}])/(?:[^\s/'\"`]+/)+[^\s/'\"`]*")


class PathScrubber:
    """Replaces the folders a reply could name (``roots``: (folder, placeholder)) and any other
    absolute path (by its last component) in reply text; OSC addresses (``/refmaster/...`` and
    every mapped one) are left alone."""

    def __init__(self, roots: Iterable[Tuple[Optional[Path], str]], keep: Iterable[str] = ()):
        pairs = []
        for folder, placeholder in roots:
            if folder is None:
                continue
            for form in {str(folder), str(Path(folder).expanduser().resolve())}:
                if len(form) > 1:
                    pairs.append((form, placeholder))
        self._roots = sorted(pairs, key=lambda p: -len(p[0]))   # the most specific first
        self._keep = set(keep)

    def _path(self, m: "re.Match") -> str:
        text = m.group(0)
        if text.startswith("/refmaster/") or text.rstrip(".,;:)") in self._keep:
            return text
        return Path(text.rstrip(".,;:)")).name + text[len(text.rstrip(".,;:)")):]

    def __call__(self, text: str) -> str:
        for folder, placeholder in self._roots:
            text = text.replace(folder, placeholder)
        return _ABSOLUTE_PATH.sub(self._path, text)
