"""Who may use the dashboard: the Host rule, the session cookie, the brake on token guessing."""

import pytest

from dashboard.access import FREE_FAILURES
from dashboard.access import MAX_TRACKED
from dashboard.access import MAX_WAIT
from dashboard.access import SESSION_MAX_AGE
from dashboard.access import LoginThrottle
from dashboard.access import host_allowed
from dashboard.access import same_secret
from dashboard.access import session_cookie
from dashboard.access import valid_session

TOKEN = "a-long-enough-token-for-tests"


class TestHostRule:
    @pytest.mark.parametrize(
        "host",
        ["localhost", "localhost:1234", "LOCALHOST.", "127.0.0.1:1234", "127.8.9.1", "[::1]:1234", "[::1]", "", "proxy.lan:1234", "10.0.0.5"],
    )
    def test_allowed(self, host):
        assert host_allowed(host, "10.0.0.5", frozenset({"proxy.lan"}))

    @pytest.mark.parametrize(
        "host", ["rebind.attacker.example", "rebind.attacker.example:1234", "localhost.attacker.example", "127.0.0.1.nip.io", "[::2]:80", "10.0.0.6"]
    )
    def test_refused(self, host):
        assert not host_allowed(host, "10.0.0.5", frozenset({"proxy.lan"}))

    def test_star_allows_any(self):
        assert host_allowed("rebind.attacker.example", "127.0.0.1", frozenset({"*"}))


class TestSession:
    def test_valid_until_it_expires(self):
        cookie = session_cookie(TOKEN, 1000.0)
        assert TOKEN not in cookie
        assert valid_session(TOKEN, cookie, 1000.0 + SESSION_MAX_AGE - 1)
        assert not valid_session(TOKEN, cookie, 1000.0 + SESSION_MAX_AGE)

    @pytest.mark.parametrize("forged", ["", "x", "99999999999.abc", "-1.abc", "1e9.abc", "\udcff.\udcfe"])
    def test_forged_cookies(self, forged):
        assert not valid_session(TOKEN, forged, 1000.0)

    def test_an_extended_expiry_breaks_the_mac(self):
        expires, mac = session_cookie(TOKEN, 1000.0).split(".")
        assert not valid_session(TOKEN, f"{int(expires) + 3600}.{mac}", 1000.0)

    def test_another_token_breaks_it(self):
        assert not valid_session(TOKEN + "x", session_cookie(TOKEN, 1000.0), 1000.0)


def test_undecodable_header_bytes_compare_without_raising():
    assert not same_secret("\udcff\udcfe", TOKEN)
    assert same_secret("t\udcffx", "t\udcffx")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class TestLoginThrottle:
    def test_free_failures_then_a_doubling_wait(self):
        clock = Clock()
        throttle = LoginThrottle(clock)
        for _ in range(FREE_FAILURES - 1):
            throttle.failed("192.0.2.1")
            assert throttle.wait("192.0.2.1") == 0
        waits = []
        for _ in range(4):
            throttle.failed("192.0.2.1")
            waits.append(throttle.wait("192.0.2.1"))
            clock.now += waits[-1]
        assert waits == [1.0, 2.0, 4.0, 8.0]
        assert throttle.wait("192.0.2.2") == 0, "other addresses are not affected"

    def test_the_wait_has_a_ceiling(self):
        clock = Clock()
        throttle = LoginThrottle(clock)
        for _ in range(2000):
            throttle.failed("192.0.2.1")
            clock.now += 1
        assert throttle.wait("192.0.2.1") <= MAX_WAIT

    def test_success_forgets(self):
        throttle = LoginThrottle(Clock())
        for _ in range(FREE_FAILURES):
            throttle.failed("192.0.2.1")
        throttle.succeeded("192.0.2.1")
        assert throttle.wait("192.0.2.1") == 0

    def test_an_ipv6_network_counts_as_one_client(self):
        throttle = LoginThrottle(Clock())
        for i in range(FREE_FAILURES):
            throttle.failed(f"2001:db8::{i + 1}")
        assert throttle.wait("2001:db8::ffff") > 0
        assert throttle.wait("2001:db8:0:1::1") == 0

    def test_memory_is_bounded(self):
        throttle = LoginThrottle(Clock())
        for i in range(MAX_TRACKED + 100):
            throttle.failed(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}")
        assert len(throttle.failures) == MAX_TRACKED
