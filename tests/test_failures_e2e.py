"""Upstream failures and bad settings, through real rerouter processes."""

import http.client
import json

import ollama
import openai
import pytest

from tests.helpers import ollama_client
from tests.helpers import open_stream
from tests.helpers import openai_client
from tests.helpers import post
from tests.helpers import sse_text
from tests.proxy import free_port

CHAT = {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def down_proxy(module_rerouter):
    dead = f"http://127.0.0.1:{free_port()}"
    return module_rerouter("mitmdump", {"UPSTREAM_URL": dead, "OLLAMA_UPSTREAM_URL": dead})


@pytest.fixture(scope="module")
def slow_proxy(module_rerouter):
    return module_rerouter("python", {"REQUEST_TIMEOUT": "1"})


@pytest.fixture(scope="module")
def proxy(module_rerouter):
    return module_rerouter("python")


class TestUpstreamDown:
    def test_openai_shape(self, down_proxy):
        response = open_stream(down_proxy, "/v1/chat/completions", CHAT)
        assert response.status == 502
        assert response.headers["Content-Type"] == "application/json"
        error = json.loads(response.read())["error"]
        assert error["type"] == "upstream_error" and error["code"] == "upstream_unavailable"
        assert "Connect call failed" in error["message"]

    def test_openai_client_sees_the_message(self, down_proxy):
        with pytest.raises(openai.APIStatusError) as info:
            openai_client(down_proxy).chat.completions.create(**CHAT)
        assert info.value.status_code == 502
        assert "failed" in info.value.message

    def test_ollama_shape(self, down_proxy):
        with pytest.raises(ollama.ResponseError) as info:
            ollama_client(down_proxy).chat(model="m", messages=[{"role": "user", "content": "hi"}])
        assert info.value.status_code == 502
        assert "Connect call failed" in info.value.error


class TestSlowUpstream:
    @pytest.mark.parametrize("path, body", [("/v1/chat/completions", CHAT), ("/api/chat", CHAT)])
    def test_no_headers_in_time_is_504(self, slow_proxy, path, body):
        status, raw = post(slow_proxy, path, body, hang=5)
        assert status == 504
        error = json.loads(raw)["error"]
        assert "no response headers within 1 s" in (error if isinstance(error, str) else error["message"])

    def test_a_started_stream_is_never_cut(self, slow_proxy):
        status, raw = post(slow_proxy, "/v1/chat/completions", {**CHAT, "stream": True}, delay=0.25, text="one two three four five six seven")
        assert status == 200
        assert sse_text(raw) == "one two three four five six seven"

    def test_keeps_serving_after_timeouts(self, slow_proxy):
        post(slow_proxy, "/v1/chat/completions", CHAT, hang=3)
        status, raw = post(slow_proxy, "/v1/chat/completions", CHAT)
        assert status == 200
        assert json.loads(raw)["choices"][0]["message"]["content"].startswith("Hello world")


class TestUpstreamAnswers:
    @pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/chat"])
    def test_upstream_error_passes_unchanged(self, proxy, openai_upstream, ollama_upstream, path):
        upstream = ollama_upstream if path.startswith("/api/") else openai_upstream
        direct = post(upstream, path, {**CHAT, "model": "llama3-70b"}, status=500)
        proxied = post(proxy, path, CHAT, status=500)
        assert proxied == direct
        assert proxied[0] == 500

    def test_garbage_passes_unchanged(self, proxy):
        status, raw = post(proxy, "/v1/chat/completions", CHAT, garbage=True)
        assert status == 200
        assert raw.startswith(b"<html>mock upstream garbage")

    def test_host_header_names_each_upstream(self, proxy, openai_upstream, ollama_upstream):
        post(proxy, "/v1/chat/completions", CHAT)
        assert openai_upstream.requests[-1]["headers"]["host"] == f"127.0.0.1:{openai_upstream.port}"
        post(proxy, "/api/chat", {**CHAT, "stream": False})
        assert ollama_upstream.requests[-1]["headers"]["host"] == f"127.0.0.1:{ollama_upstream.port}"
        assert ollama_upstream.requests[-1]["path"] == "/api/chat"

    def test_non_json_and_binary_bodies_pass_byte_for_byte(self, proxy, openai_upstream):
        for body in (b"\x00\xff\xfe binary \x80", b"not json {", b'{"model": 7}'):
            conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=30)
            conn.request("POST", "/v1/embeddings", body, {"content-type": "application/octet-stream"})
            conn.getresponse().read()
            assert openai_upstream.requests[-1]["body"] == body


def test_disable_thinking(rerouter, openai_upstream, ollama_upstream):
    proxy = rerouter("python", {"DISABLE_THINKING": "yes"})
    post(proxy, "/v1/chat/completions", CHAT)
    assert openai_upstream.requests[-1]["json"]["messages"][-1]["content"] == "hi /no_think"
    post(proxy, "/api/generate", {"model": "m", "prompt": "why", "stream": False})
    assert ollama_upstream.requests[-1]["json"]["prompt"] == "why /no_think"


def test_strip_thinking_off(rerouter):
    proxy = rerouter("mitmdump", args=["--set", "strip_thinking=false"])
    status, raw = post(proxy, "/v1/chat/completions", CHAT)
    assert json.loads(raw)["choices"][0]["message"]["content"].startswith("<think>")


BAD_SETTINGS = [
    ("MODEL_MAP", "{not json", "invalid JSON"),
    ("MODEL_MAP", '{"/(unclosed/": "x"}', "invalid regex"),
    ("MODEL_MAP", '{"/(a)/": "\\\\2"}', "bad replacement"),
    ("STRIP_THINKING", "maybe", "expected true, false or separate"),
    ("DISABLE_THINKING", "2", "unknown switch '2'"),
    ("THINK_OPEN_MODELS", "/qwq(/i", "invalid regex"),
    ("THINK_KEEPALIVE_SECONDS", "-1", "expected a number of seconds"),
    ("ECHO_REQUESTED_MODEL", "perhaps", "expected true/false"),
    ("REQUEST_TIMEOUT", "soon", "expected a positive number"),
    ("ENABLE_LOGGING", "sometimes", "expected true/false"),
    ("MAX_LOG_AGE_DAYS", "0", "expected a positive number"),
    ("LOG_MAX_BODY_BYTES", "lots", "expected a number of bytes"),
    ("UPSTREAM_URL", "localhost:8000", "expected http://host:port"),
    ("OLLAMA_UPSTREAM_URL", "http://127.0.0.1:11434/api", "without a path"),
    ("LISTEN_PORT", "eighty", "expected a port number"),
]


@pytest.mark.parametrize("form", ["python", "mitmdump"])
@pytest.mark.parametrize("variable, value, problem", BAD_SETTINGS, ids=[f"{v}={x}" for v, x, _ in BAD_SETTINGS])
def test_bad_setting_stops_startup_with_one_line(rerouter, form, variable, value, problem):
    process = rerouter(form, {variable: value}, ready=False)
    assert process.wait_exit() != 0
    named = [line for line in process.lines if variable in line]
    assert len(named) == 1, process.output
    assert problem in named[0]
    assert "Traceback" not in process.output
    if form == "python":
        assert process.port is None, "the launcher checks the environment before anything listens"


def test_bad_set_option_stops_startup(rerouter):
    process = rerouter("mitmdump", args=["--set", "request_timeout=-3"], ready=False)
    assert process.wait_exit() != 0
    assert "REQUEST_TIMEOUT (option request_timeout): expected a positive number" in process.output
