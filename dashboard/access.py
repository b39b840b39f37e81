"""
Who may use the dashboard: the Host rule, the token and its session cookie, and the brake on guessing.

Pure logic with no mitmproxy in it; the Dashboard addon applies it to requests.
"""

import hmac
import ipaddress
import time
from collections import OrderedDict

from rerouter.routing import is_loopback
from rerouter.settings import host_name

SESSION_MAX_AGE = 12 * 3600
"""Seconds a login lasts: the cookie's Max-Age, and the expiry signed into its value."""
FREE_FAILURES = 5
"""Failed token attempts from one address before it has to wait."""
FIRST_WAIT = 1.0
MAX_WAIT = 15 * 60.0
FORGET_AFTER = 3600.0
MAX_TRACKED = 4096
"""Addresses the throttle remembers; when full it forgets the one that failed longest ago."""


def as_bytes(text: str) -> bytes:
    """Any str, also one holding lone surrogates from undecodable header bytes, as bytes to compare."""
    return text.encode("utf-8", "surrogatepass")


def same_secret(offered: str, secret: str) -> bool:
    return hmac.compare_digest(as_bytes(offered), as_bytes(secret))


def host_allowed(host_header: str, listen_host: str, allowed: frozenset[str]) -> bool:
    """
    Whether a request that named this Host may see the dashboard.

    A page served from an attacker's name that resolves to this machine (DNS
    rebinding) sends that name; the browser itself only sends `localhost`, an
    address, or a name the user chose to reach the proxy by. A request with
    no Host at all does not come from a browser and is let through.
    """
    if not host_header or "*" in allowed:
        return True
    host = host_header.strip()
    if not host.startswith("[") and host.count(":") == 1:
        host = host.rsplit(":", 1)[0]
    elif host.startswith("[") and "]" in host:
        host = host[: host.index("]") + 1]
    host = host_name(host)
    return is_loopback(host) or host == host_name(listen_host) or host in allowed


def session_cookie(token: str, now: float) -> str:
    """The login cookie's value: an expiry and a MAC over it keyed by the token, never the token itself."""
    expires = int(now) + SESSION_MAX_AGE
    return f"{expires}.{_mac(token, expires)}"


def valid_session(token: str, cookie: str, now: float) -> bool:
    expires, _, mac = cookie.partition(".")
    if not expires.isdigit() or len(expires) > 12 or int(expires) <= now:
        return False
    return same_secret(mac, _mac(token, int(expires)))


def _mac(token: str, expires: int) -> str:
    return hmac.new(as_bytes(token), f"rerouter dashboard session until {expires}".encode(), "sha256").hexdigest()


def client_key(address: str) -> str:
    """IPv6 clients are counted by /64 network: one host usually holds all of it."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class LoginThrottle:
    """
    Failed token attempts per client address, with a wait that doubles after each failure past the free ones.

    An address that has not failed for FORGET_AFTER starts afresh, a success
    forgets it at once, and at most MAX_TRACKED addresses are remembered.
    """

    def __init__(self, clock=time.monotonic) -> None:
        self.clock = clock
        self.failures: OrderedDict[str, tuple[int, float]] = OrderedDict()  # key -> (count, time of the last)

    def wait(self, address: str) -> float:
        """Seconds this address must wait before its next attempt is looked at; 0 when it may try now."""
        count, last = self.failures.get(client_key(address), (0, 0.0))
        if count < FREE_FAILURES:
            return 0.0
        delay = min(FIRST_WAIT * 2 ** min(count - FREE_FAILURES, 30), MAX_WAIT)
        return max(0.0, last + delay - self.clock())

    def failed(self, address: str) -> None:
        key, now = client_key(address), self.clock()
        count, last = self.failures.pop(key, (0, now))
        self.failures[key] = (1 if now - last > FORGET_AFTER else count + 1, now)
        while len(self.failures) > MAX_TRACKED:
            self.failures.popitem(last=False)

    def succeeded(self, address: str) -> None:
        self.failures.pop(client_key(address), None)
