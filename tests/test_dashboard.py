"""The dashboard's local routes fail closed, and the dashboard's credentials never go upstream."""

import asyncio
import threading
import time

import pytest
from mitmproxy import http

from dashboard import Dashboard
from dashboard.access import FREE_FAILURES
from dashboard.access import SESSION_MAX_AGE
from dashboard.queries import Busy
from dashboard.queries import QueryPool
from logstore import LogStore
from logstore import ReadTimeout
from rerouter.flows import flow_state
from tests.conftest import dashboard_addons
from tests.conftest import reverse_flow

TOKEN = "dashboard-token-for-unit-tests"


@pytest.fixture
def dash(settings_env, tmp_path):
    with dashboard_addons(settings_env, tmp_path, DASHBOARD_TOKEN=TOKEN, DASHBOARD_HOSTS="proxy.lan") as d:
        yield d


async def ask(dash: Dashboard, path: str, method: str = "GET", host: str = "127.0.0.1:1234", **headers) -> http.HTTPFlow:
    f = reverse_flow(path, method=method)
    flow_state(f).client_host = host
    f.request.headers.update(headers)
    dash.requestheaders(f)
    await dash.request(f)
    return f


def status(f: http.HTTPFlow) -> int | None:
    return f.response.status_code if f.response else None


class TestFailClosed:
    @pytest.mark.parametrize(
        "query",
        ["offset=99999999999999999999", "offset=9223372036854776000", "limit=-1", "status=2e2", "offset=%FF", "q=" + "x" * 1001],
    )
    async def test_bad_parameters_are_400(self, dash, query):
        f = await ask(dash, f"/api/logs?{query}", authorization=f"Bearer {TOKEN}")
        assert status(f) == 400 and "error" in f.response.json()

    async def test_undecodable_bearer_is_401(self, dash):
        f = reverse_flow("/api/stats", method="GET")
        f.request.headers.fields += ((b"authorization", b"Bearer \xff\xfe"),)
        await dash.request(f)
        assert status(f) == 401

    async def test_undecodable_login_token_is_401(self, dash):
        f = reverse_flow("/login", content=b"token=%FF%FE")
        f.request.headers["content-type"] = "application/x-www-form-urlencoded"
        await dash.request(f)
        assert status(f) == 401

    async def test_a_compressed_login_form_is_refused(self, dash):
        f = reverse_flow("/login", content=b"\x1f\x8b")
        f.request.headers["content-type"] = "application/x-www-form-urlencoded"
        f.request.headers["content-encoding"] = "gzip"
        await dash.request(f)
        assert status(f) == 400

    async def test_any_failure_in_a_route_is_a_local_500(self, dash):
        async def broken(flow):
            raise OverflowError("Python int too large to convert to SQLite INTEGER")

        dash.routes["/api/broken"] = broken
        f = await ask(dash, "/api/broken", authorization=f"Bearer {TOKEN}")
        assert status(f) == 500 and flow_state(f).local

    async def test_a_slow_read_is_stopped(self, dash):
        store = dash.log.store
        add_rows(store, 1000)
        deadline = time.monotonic() + 10
        while store.logs()[1] < 1000:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        store.read_time_limit = 0.0
        f = await ask(dash, "/api/logs?q=%C3%BC", authorization=f"Bearer {TOKEN}")
        assert status(f) == 503 and "narrow the filters" in f.response.json()["error"]


class TestCredentialsStayHome:
    async def test_token_and_cookie_are_removed(self, dash):
        f = await ask(
            dash, "/v1/chat/completions", "POST", authorization=f"Bearer {TOKEN}", cookie="a=1; rerouter_session=x.y; b=2"
        )
        assert f.response is None
        assert "authorization" not in f.request.headers
        assert f.request.headers["cookie"] == "a=1; b=2"

    async def test_a_lone_session_cookie_leaves_no_header(self, dash):
        f = await ask(dash, "/v1/models", cookie="rerouter_session=x.y")
        assert "cookie" not in f.request.headers

    async def test_the_clients_own_key_is_kept(self, dash):
        f = await ask(dash, "/v1/models", authorization="Bearer sk-upstream", cookie="a=1")
        assert f.request.headers["authorization"] == "Bearer sk-upstream"
        assert f.request.headers["cookie"] == "a=1"


class TestHostRule:
    @pytest.mark.parametrize("path", ["/", "/api/stats", "/api/logs/abc"])
    async def test_rebinding_names_are_refused(self, dash, path):
        f = await ask(dash, path, host="rebind.attacker.example:1234", authorization=f"Bearer {TOKEN}")
        assert status(f) == 403 and flow_state(f).local

    async def test_allowed_names(self, dash):
        for host in ("localhost:1234", "[::1]:1234", "proxy.lan:1234"):
            assert status(await ask(dash, "/api/stats", host=host, authorization=f"Bearer {TOKEN}")) == 200, host

    async def test_proxied_traffic_is_unaffected(self, dash):
        f = await ask(dash, "/v1/models", host="rebind.attacker.example")
        assert f.response is None


class TestGuessing:
    async def test_wrong_tokens_are_slowed_down(self, dash):
        for _ in range(FREE_FAILURES - 1):
            assert status(await ask(dash, "/api/stats", authorization="Bearer wrong-guess")) == 401
        assert status(await ask(dash, "/api/stats", authorization="Bearer wrong-guess")) == 401
        refused = await ask(dash, "/api/stats", authorization=f"Bearer {TOKEN}")
        assert status(refused) == 429 and int(refused.response.headers["retry-after"]) >= 1
        login = reverse_flow("/login")
        login.request.urlencoded_form = [("token", TOKEN)]
        await dash.request(login)
        assert status(login) == 429

    async def test_login_cookie_has_a_max_age(self, dash):
        f = reverse_flow("/login")
        f.request.urlencoded_form = [("token", TOKEN)]
        await dash.request(f)
        cookie = f.response.headers["set-cookie"]
        assert f"Max-Age={SESSION_MAX_AGE}" in cookie and TOKEN not in cookie
        assert status(await ask(dash, "/api/stats", cookie=cookie.split(";", 1)[0])) == 200


class TestQueryPool:
    async def test_full_pool_refuses_at_once(self):
        pool = QueryPool(workers=1, waiting=1)
        gate = threading.Event()
        first = asyncio.ensure_future(pool.run(gate.wait, 5))
        second = asyncio.ensure_future(pool.run(gate.wait, 5))
        await asyncio.sleep(0.05)
        with pytest.raises(Busy):
            await pool.run(time.sleep, 0)
        gate.set()
        assert await first and await second
        assert await pool.run(sum, [1, 2]) == 3
        pool.close()

    async def test_a_gone_client_keeps_its_slot_until_the_thread_is_done(self):
        pool = QueryPool(workers=1, waiting=0)
        gate = threading.Event()
        waiting = asyncio.ensure_future(pool.run(gate.wait, 5))
        await asyncio.sleep(0.05)
        waiting.cancel()
        with pytest.raises(Busy):
            await pool.run(time.sleep, 0)
        gate.set()
        await asyncio.sleep(0.05)
        assert await pool.run(sum, [1]) == 1
        pool.close()


def add_rows(store: LogStore, count: int) -> None:
    for i in range(count):
        store.begin({"id": f"r{i}", "started_at": time.time(), "method": "POST", "path": "/v1/x", "request_body": b"x" * 1000})


def test_store_reads_have_a_time_limit(tmp_path):
    store = LogStore(str(tmp_path / "log.db"), read_time_limit=0.0)
    store.open()
    add_rows(store, 1000)
    store.close()
    with pytest.raises(ReadTimeout):
        store.logs(q="ü")


def test_any_host_without_a_token_warns(settings_env, tmp_path, caplog):
    with dashboard_addons(settings_env, tmp_path, DASHBOARD_HOSTS="*") as dash:
        dash.running()
    assert "DASHBOARD_HOSTS=* lets any web page you visit read the request log" in caplog.text
