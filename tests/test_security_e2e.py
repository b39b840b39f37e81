"""
Hostile requests and exposure, through real rerouter processes: local routes fail closed and answer
only to safe Host names, the dashboard's credentials and secret query values stay home, dashboard
searches never stall proxied traffic, `mitmdump -s` is never an open proxy, token guessing is slowed.
"""

import concurrent.futures
import http.client
import json
import re
import socket
import threading
import time
import uuid

import openai
import pytest
from mitmproxy import version

from logstore import LogStore
from tests.proxy import free_port
from tests.test_requestlog_e2e import wait_for
from tests.upstream import mock_headers

TOKEN = "e2e-token-" + uuid.uuid4().hex
BEARER = {"Authorization": f"Bearer {TOKEN}"}
CHAT = {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}
REGULAR_LISTENING = re.compile(r"HTTP\(S\) proxy listening at [\d.]+:(\d+)")
MITMPROXY_11 = version.VERSION.startswith("11.")


class Answer:
    def __init__(self, response: http.client.HTTPResponse) -> None:
        self.status = response.status
        self.headers = response.headers
        self.body = response.read()

    def json(self):
        return json.loads(self.body)


def call(proxy, method: str, path: str, body: bytes | None = None, host: str | None = None, timeout: float = 30, **headers) -> Answer:
    """One request with exactly the Host given (the proxy's own address by default)."""
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=timeout)
    conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
    conn.putheader("Host", host or f"127.0.0.1:{proxy.port}")
    for name, value in headers.items():
        conn.putheader(name.replace("_", "-"), value)
    if body is not None:
        conn.putheader("Content-Length", str(len(body)))
    conn.endheaders(body)
    try:
        return Answer(conn.getresponse())
    finally:
        conn.close()


def raw_exchange(port: int, head: bytes, timeout: float = 10) -> bytes:
    """Sends raw bytes and returns all the proxy answers until it closes or goes quiet."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(head)
        chunks = []
        try:
            while chunk := s.recv(65536):
                chunks.append(chunk)
                if b"\r\n\r\n" in b"".join(chunks):
                    break
        except (TimeoutError, ConnectionError):
            pass
        return b"".join(chunks)


def login(proxy) -> str:
    answer = call(proxy, "POST", "/login", f"token={TOKEN}".encode(), content_type="application/x-www-form-urlencoded")
    assert answer.status == 303
    return answer.headers["set-cookie"].split(";", 1)[0]


def upstream_requests(*upstreams) -> list[dict]:
    return [request for upstream in upstreams for request in upstream.requests]


@pytest.fixture(scope="module")
def proxy(module_rerouter):
    # the tests of this module offer fewer than 5 wrong tokens in all, so the throttle never cuts in
    env = {"DASHBOARD_TOKEN": TOKEN, "DASHBOARD_HOSTS": "dash.example", "DISABLE_THINKING": "true"}
    return module_rerouter("python", env)


class TestFailClosed:
    """A request for a local path is answered locally whatever goes wrong, and never forwarded."""

    def test_bad_parameters_and_credentials_stay_local(self, proxy, openai_upstream, ollama_upstream):
        openai_upstream.clear()
        ollama_upstream.clear()
        cookie = login(proxy)
        assert call(proxy, "GET", "/api/logs?offset=99999999999999999999", **BEARER).status == 400
        assert call(proxy, "GET", "/api/logs?offset=9223372036854776000", cookie=cookie).status == 400
        assert call(proxy, "GET", "/api/logs?limit=abc", **BEARER).status == 400
        undecodable = raw_exchange(proxy.port, f"GET /api/stats HTTP/1.1\r\nHost: 127.0.0.1:{proxy.port}\r\n".encode() + b"Authorization: Bearer \xff\xfe\r\n\r\n")
        assert undecodable.startswith(b"HTTP/1.1 401")
        form = call(proxy, "POST", "/login", b"token=%FF", content_type="application/x-www-form-urlencoded")
        assert form.status == 401
        seen = upstream_requests(openai_upstream, ollama_upstream)
        assert [r["path"] for r in seen] == [], "a local request reached an upstream"

    def test_dashboard_credentials_never_reach_the_upstream(self, proxy, openai_upstream):
        cookie = login(proxy)
        client = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key=TOKEN, default_headers={"Cookie": f"{cookie}; theirs=1"}, max_retries=0)
        client.chat.completions.create(**CHAT)
        sent = openai_upstream.requests[-1]["headers"]
        assert "authorization" not in sent
        assert sent["cookie"] == "theirs=1"


class TestEveryRequestGetsItsRow:
    @pytest.mark.parametrize("model, routed", [("gpt-4", "llama3-70b"), ("plain-model", "plain-model")])
    def test_a_lone_surrogate(self, proxy, openai_upstream, model, routed):
        marker = uuid.uuid4().hex
        body = '{"model": "%s", "messages": [{"role": "user", "content": "%s \\ud800"}]}' % (model, marker)
        answer = call(proxy, "POST", "/v1/chat/completions", body.encode(), content_type="application/json")
        assert answer.status == 200
        sent = openai_upstream.requests[-1]["json"]
        assert sent["model"] == routed
        assert sent["messages"][0]["content"] == f"{marker} \ud800 /no_think"
        rows = wait_for(lambda: call(proxy, "GET", f"/api/logs?q={marker}", **BEARER).json()["logs"])
        assert rows[0]["routed_model"] == routed


class TestHostRule:
    def test_rebinding_names_get_403(self, proxy):
        answer = call(proxy, "GET", "/api/stats", host=f"rebind.attacker.example:{proxy.port}", **BEARER)
        assert answer.status == 403 and "DASHBOARD_HOSTS" in answer.json()["error"]
        assert call(proxy, "GET", "/", host="rebind.attacker.example").status == 403

    @pytest.mark.parametrize("host", ["localhost:{port}", "127.0.0.1:{port}", "[::1]:{port}", "dash.example:{port}", "DASH.example"])
    def test_safe_names_are_answered(self, proxy, host):
        assert call(proxy, "GET", "/api/stats", host=host.format(port=proxy.port), **BEARER).status == 200

    def test_proxied_traffic_is_unaffected_and_the_upstream_sees_its_own_name(self, proxy, openai_upstream):
        answer = call(proxy, "GET", "/v1/models", host="rebind.attacker.example")
        assert answer.status == 200
        assert openai_upstream.requests[-1]["headers"]["host"] == f"127.0.0.1:{openai_upstream.port}"


class TestSecretsStayHome:
    def test_query_secrets_are_masked_in_flow_lines_and_in_flight(self, proxy, openai_upstream):
        secret = "AIza" + uuid.uuid4().hex[:12]  # short: mitmdump cuts a flow line at 55 characters off a terminal
        path = f"/v1/models?key={secret}&api_key={secret}"
        slow = threading.Thread(target=call, args=(proxy, "GET", path), kwargs=mock_headers(hang=2))
        slow.start()
        try:
            shown = wait_for(lambda: [r["path"] for r in call(proxy, "GET", "/api/inflight", **BEARER).json()["inflight"]])
        finally:
            slow.join()
        assert shown == ["/v1/models?key=[redacted]&api_key=[redacted]"]
        assert openai_upstream.requests[-1]["path"] == path, "the upstream still gets the real key"
        proxy.wait_for_output("/v1/models?key=[redacted]")
        assert secret not in proxy.output

    def test_nothing_secret_is_printed_at_the_default_detail(self, proxy):
        secret = "sk-" + uuid.uuid4().hex
        client = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key=secret, max_retries=0)
        client.chat.completions.create(**CHAT)
        cookie = login(proxy)
        call(proxy, "GET", "/api/stats", cookie=cookie)
        proxy.wait_for_output("/api/stats")
        for value in (secret, TOKEN, cookie.split("=", 1)[1]):
            assert value not in proxy.output

    def test_more_detail_warns_that_it_prints_secrets(self, rerouter):
        proxy = rerouter("python", args=["-v"])
        proxy.wait_for_output("flow_detail 2 (-v) prints request headers and bodies as they are")


class TestTokens:
    @pytest.mark.parametrize("token", ["too-short", "change-me"])
    def test_weak_tokens_stop_startup(self, rerouter, token):
        process = rerouter("python", {"DASHBOARD_TOKEN": token}, ready=False)
        assert process.wait_exit() != 0
        named = [line for line in process.lines if "DASHBOARD_TOKEN" in line]
        assert len(named) == 1 and "DASHBOARD_TOKEN (option dashboard_token): " in named[0]
        assert token not in process.output

    def test_guessing_is_slowed_down(self, rerouter, openai_upstream):
        proxy = rerouter("python", {"DASHBOARD_TOKEN": TOKEN})
        statuses = [call(proxy, "GET", "/api/stats", Authorization=f"Bearer guess-{i}").status for i in range(5)]
        assert statuses == [401] * 5
        refused = call(proxy, "GET", "/api/stats", **BEARER)
        assert refused.status == 429 and int(refused.headers["retry-after"]) >= 1
        form = call(proxy, "POST", "/login", f"token={TOKEN}".encode(), content_type="application/x-www-form-urlencoded")
        assert form.status == 429
        time.sleep(int(refused.headers["retry-after"]))
        assert call(proxy, "GET", "/api/stats", **BEARER).status == 200
        client = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="sk-upstream", max_retries=0)
        assert client.chat.completions.create(**CHAT).choices, "proxied traffic is never throttled"


@pytest.mark.slow
def test_dashboard_searches_never_stall_proxied_requests(rerouter, tmp_path, openai_upstream):
    """
    Searches with non-ASCII text run Python over every stored body. On asyncio's default pool (which
    also resolves the upstream's host name, `localhost` here) 16 of them held proxied requests for
    seconds; on the dashboard's own pool a proxied request does not wait for them.
    """
    db = tmp_path / "big.db"
    store = LogStore(str(db))
    store.open()
    body = b"lorem ipsum dolor sit amet " * 9700  # 256 KiB, the default LOG_MAX_BODY_BYTES
    for i in range(250):
        store.begin({"id": f"big-{i}", "started_at": time.time(), "method": "POST", "path": "/v1/chat/completions", "request_body": body})
    store.close(60)
    proxy = rerouter("python", {"DB_PATH": str(db), "UPSTREAM_URL": f"http://localhost:{openai_upstream.port}"})
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        searches = [pool.submit(call, proxy, "GET", "/api/logs?q=%C3%BCmlaut", timeout=120) for _ in range(16)]
        time.sleep(0.5)
        started = time.monotonic()
        # a new connection, so the proxy looks the upstream's name up again
        proxied = call(proxy, "POST", "/v1/chat/completions", json.dumps(CHAT).encode(), content_type="application/json")
        elapsed = time.monotonic() - started
        assert proxied.status == 200
        answers = [search.result() for search in searches]
    assert elapsed < 2, f"a proxied request waited {elapsed:.1f} s behind dashboard searches"
    assert {a.status for a in answers} <= {200, 503}
    assert all(a.headers["retry-after"] for a in answers if a.status == 503)


class TestMitmdumpWindow:
    """`mitmdump -s` starts as a regular proxy until the addon switches it; nothing may pass meanwhile."""

    def test_nothing_is_forwarded_before_or_after_the_switch(self, rerouter, ollama_upstream):
        """As a regular proxy it would forward to any host: here the Ollama mock, which reverse mode never sends these to."""
        ollama_upstream.clear()
        port = free_port()
        target = f"http://127.0.0.1:{ollama_upstream.port}"
        process = rerouter("mitmdump", args=["--listen-port", str(port)], ready=False)
        kept: list[socket.socket] = []
        deadline = time.monotonic() + 30
        # race from the first moment: connect as fast as possible until the reverse proxy is up
        while process.port is None and time.monotonic() < deadline and len(kept) < 200:
            try:
                s = socket.create_connection(("127.0.0.1", port), timeout=5)
            except OSError:
                time.sleep(0.0005)
                continue
            try:
                s.sendall(f"GET {target}/window-race HTTP/1.1\r\nHost: 127.0.0.1:{ollama_upstream.port}\r\n\r\n".encode())
            except OSError:
                pass
            kept.append(s)
        process.wait_ready()
        for s in kept:  # the same connections, kept alive past the switch
            try:
                s.sendall(f"GET {target}/window-kept-alive HTTP/1.1\r\nHost: 127.0.0.1:{ollama_upstream.port}\r\n\r\n".encode())
            except OSError:
                pass
        time.sleep(1)
        for s in kept:
            s.close()
        forwarded = [r["path"] for r in ollama_upstream.requests if r["path"].startswith("/window-")]
        assert forwarded == []
        if MITMPROXY_11:
            assert not REGULAR_LISTENING.search(process.output), "mitmproxy 11 lets the addon switch before listening"
