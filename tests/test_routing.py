import pytest
from mitmproxy import http
from mitmproxy.proxy import server_hooks
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.test import taddons
from mitmproxy.test import tflow

from rerouter.routing import ReverseProxy
from rerouter.flows import flow_state
from rerouter.flows import is_proxied
from rerouter.settings import Settings
from tests.conftest import reverse_flow
from tests.conftest import start


def started_router(**given):
    """Settings and the ReverseProxy loaded the way `mitmdump -s` loads them: after the user's own options."""
    s = Settings()
    r = ReverseProxy(s)
    tctx = taddons.context(s, Proxyserver())
    tctx.options.update(**given)
    tctx.master.addons.add(r)
    start(tctx, s)
    r.configure({"upstream_url"})
    return tctx, s, r


@pytest.fixture
def routing_env(settings_env):
    settings_env.setenv("UPSTREAM_URL", "http://127.0.0.1:8000")
    settings_env.setenv("OLLAMA_UPSTREAM_URL", "http://ollama.internal:11434")
    return settings_env


@pytest.fixture
def router(routing_env):
    tctx, s, r = started_router()
    with tctx:
        yield tctx, s, r


class TestRunning:
    def test_plain_mitmdump_becomes_the_reverse_proxy(self, router):
        tctx, s, r = router
        r.running()
        assert tctx.options.mode == ["reverse:http://127.0.0.1:8000"]
        assert tctx.options.connection_strategy == "lazy"
        assert (tctx.options.listen_host, tctx.options.listen_port) == ("127.0.0.1", 1234)

    def test_listen_address_from_environment(self, settings_env):
        settings_env.setenv("LISTEN_HOST", "0.0.0.0")
        settings_env.setenv("LISTEN_PORT", "9999")
        tctx, s, r = started_router()
        with tctx:
            r.running()
            assert (tctx.options.listen_host, tctx.options.listen_port) == ("0.0.0.0", 9999)

    def test_the_switch_comes_before_the_proxy_runs(self, router):
        tctx, s, r = router
        assert tctx.options.mode == ["reverse:http://127.0.0.1:8000"], "mitmproxy 11 starts its listeners after this"
        assert (tctx.options.listen_host, tctx.options.listen_port) == ("127.0.0.1", 1234)

    def test_explicit_user_choices_win(self, routing_env):
        tctx, s, r = started_router(mode=["reverse:http://elsewhere:9"], listen_host="::1", listen_port=7777)
        with tctx:
            r.running()
            assert tctx.options.mode == ["reverse:http://elsewhere:9"]
            assert (tctx.options.listen_host, tctx.options.listen_port) == ("::1", 7777)
            assert not r.owns_mode

    def test_explicit_mode_still_listens_where_configured(self, routing_env):
        tctx, s, r = started_router(mode=["reverse:http://elsewhere:9"])
        with tctx:
            r.running()
            assert tctx.options.mode == ["reverse:http://elsewhere:9"]
            assert tctx.options.listen_port == 1234

    def test_upstream_change_at_runtime_moves_the_reverse_target(self, router):
        tctx, s, r = router
        r.running()
        s.running()
        tctx.configure(s, upstream_url="http://127.0.0.1:9001")
        r.configure({"upstream_url"})
        assert tctx.options.mode == ["reverse:http://127.0.0.1:9001"]


class TestRequest:
    def test_ollama_native_paths_go_to_ollama(self, router):
        tctx, s, r = router
        f = reverse_flow("/api/chat", {"model": "m"})
        r.request(f)
        assert (f.request.scheme, f.request.host, f.request.port) == ("http", "ollama.internal", 11434)
        assert f.request.headers["host"] == "ollama.internal:11434"
        assert f.request.path == "/api/chat"

    @pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/models", "/api", "/apix/chat", "/"])
    def test_everything_else_stays_with_the_openai_upstream(self, router, path):
        tctx, s, r = router
        f = reverse_flow(path, {"model": "m"})
        r.request(f)
        assert (f.request.host, f.request.port) == ("127.0.0.1", 8000)

    def test_only_reverse_mode_flows_are_rerouted(self, router):
        tctx, s, r = router
        f = reverse_flow("/api/chat")
        f.client_conn.proxy_mode = ProxyMode.parse("regular")
        assert not is_proxied(f)
        r.request(f)
        assert f.request.host == "127.0.0.1"

    def test_answered_flows_are_left_alone(self, router):
        tctx, s, r = router
        f = reverse_flow("/api/tags", method="GET")
        f.response = http.Response.make(200)
        r.request(f)
        assert f.request.host == "127.0.0.1"


def regular_flow() -> http.HTTPFlow:
    f = tflow.tflow()
    f.client_conn.proxy_mode = ProxyMode.parse("regular")
    return f


class TestOutsideReverseMode:
    """mitmdump -s starts a regular proxy before the switch: nothing that reaches it may go anywhere."""

    def test_connections_and_requests_are_refused(self, router):
        tctx, s, r = router
        f = regular_flow()
        r.client_connected(f.client_conn)
        assert f.client_conn.error
        r.requestheaders(f)
        assert f.error and f.error.msg == "Connection killed."
        connect = regular_flow()
        r.http_connect(connect)
        assert connect.error
        data = server_hooks.ServerConnectionHookData(server=f.server_conn, client=f.client_conn)
        r.server_connect(data)
        assert data.server.error

    def test_reverse_mode_is_untouched(self, router):
        tctx, s, r = router
        f = reverse_flow()
        r.client_connected(f.client_conn)
        r.requestheaders(f)
        assert f.client_conn.error is None and f.error is None

    def test_a_mode_the_user_chose_is_untouched(self, routing_env):
        tctx, s, r = started_router(mode=["regular@8081"])
        with tctx:
            f = regular_flow()
            r.client_connected(f.client_conn)
            r.requestheaders(f)
            assert f.client_conn.error is None and f.error is None


class TestClientHost:
    """mitmproxy replaces the client's Host before any hook; the rerouter keeps it and replaces it itself."""

    @pytest.mark.parametrize("given, upstream_gets", [({}, "127.0.0.1:8000"), ({"keep_host_header": True}, "myproxy.example:1234")])
    def test_kept_for_the_dashboard(self, routing_env, given, upstream_gets):
        tctx, s, r = started_router(**given)
        with tctx:
            assert tctx.options.keep_host_header
            f = reverse_flow()
            f.request.host_header = "myproxy.example:1234"
            r.requestheaders(f)
            assert flow_state(f).client_host == "myproxy.example:1234"
            assert f.request.host_header == upstream_gets, "the user's own keep_host_header is honoured"

    def test_tls_upstreams_keep_their_name_as_sni(self, router):
        tctx, s, r = router
        f = reverse_flow()
        f.client_conn.proxy_mode = ProxyMode.parse("reverse:https://api.example:443")
        f.client_conn.sni = "localhost"
        f.server_conn.address = ("api.example", 443)
        f.server_conn.sni = "localhost"
        r.server_connect(server_hooks.ServerConnectionHookData(server=f.server_conn, client=f.client_conn))
        assert f.server_conn.sni == "api.example"
