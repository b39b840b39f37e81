import pytest
from mitmproxy import http
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.test import taddons

from rerouter.routing import ReverseProxy
from rerouter.flows import is_proxied
from rerouter.settings import Settings
from tests.conftest import reverse_flow
from tests.conftest import start


@pytest.fixture
def router(settings_env):
    settings_env.setenv("UPSTREAM_URL", "http://127.0.0.1:8000")
    settings_env.setenv("OLLAMA_UPSTREAM_URL", "http://ollama.internal:11434")
    s = Settings()
    r = ReverseProxy(s)
    with taddons.context(s, r, Proxyserver()) as tctx:
        start(tctx, s)
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
        s = Settings()
        r = ReverseProxy(s)
        with taddons.context(s, r, Proxyserver()) as tctx:
            start(tctx, s)
            r.running()
            assert (tctx.options.listen_host, tctx.options.listen_port) == ("0.0.0.0", 9999)

    def test_explicit_user_choices_win(self, router):
        tctx, s, r = router
        tctx.options.update(
            mode=["reverse:http://elsewhere:9"],
            listen_host="::1",
            listen_port=7777,
        )
        r.running()
        assert tctx.options.mode == ["reverse:http://elsewhere:9"]
        assert (tctx.options.listen_host, tctx.options.listen_port) == ("::1", 7777)

    def test_explicit_mode_still_listens_where_configured(self, router):
        tctx, s, r = router
        tctx.options.update(mode=["reverse:http://elsewhere:9"])
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
