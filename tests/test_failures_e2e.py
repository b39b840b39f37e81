"""Upstream failures and bad settings, through real rerouter processes."""

import http.client
import json

import ollama
import openai
import pytest

from tests.proxy import free_port
from tests.upstream import mock_headers

CHAT = {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}


def post(port: int, path: str, body: dict, **mock) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("POST", path, json.dumps(body), {"content-type": "application/json", **mock_headers(**mock)})
    response = conn.getresponse()
    return response.status, dict(response.headers), response.read()


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
        status, headers, body = post(down_proxy.port, "/v1/chat/completions", CHAT)
        assert status == 502
        assert headers["Content-Type"] == "application/json"
        error = json.loads(body)["error"]
        assert error["type"] == "upstream_error" and error["code"] == "upstream_unavailable"
        assert "Connect call failed" in error["message"]

    def test_openai_client_sees_the_message(self, down_proxy):
        client = openai.OpenAI(base_url=f"{down_proxy.url}/v1", api_key="x", max_retries=0)
        with pytest.raises(openai.APIStatusError) as info:
            client.chat.completions.create(**CHAT)
        assert info.value.status_code == 502
        assert "failed" in info.value.message

    def test_ollama_shape(self, down_proxy):
        with pytest.raises(ollama.ResponseError) as info:
            ollama.Client(host=down_proxy.url).chat(model="m", messages=[{"role": "user", "content": "hi"}])
        assert info.value.status_code == 502
        assert "Connect call failed" in info.value.error


class TestSlowUpstream:
    @pytest.mark.parametrize("path, body", [("/v1/chat/completions", CHAT), ("/api/chat", CHAT)])
    def test_no_headers_in_time_is_504(self, slow_proxy, path, body):
        status, headers, raw = post(slow_proxy.port, path, body, hang=5)
        assert status == 504
        error = json.loads(raw)["error"]
        assert "no response headers within 1 s" in (error if isinstance(error, str) else error["message"])

    def test_a_started_stream_is_never_cut(self, slow_proxy):
        status, headers, raw = post(slow_proxy.port, "/v1/chat/completions", {**CHAT, "stream": True}, delay=0.25, text="one two three four five six seven")
        assert status == 200
        text = "".join(
            json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
            for line in raw.decode().split("\n\n")
            if line.startswith("data: {")
        )
        assert text == "one two three four five six seven"

    def test_keeps_serving_after_timeouts(self, slow_proxy):
        post(slow_proxy.port, "/v1/chat/completions", CHAT, hang=3)
        status, _, raw = post(slow_proxy.port, "/v1/chat/completions", CHAT)
        assert status == 200
        assert json.loads(raw)["choices"][0]["message"]["content"].startswith("Hello world")


class TestUpstreamAnswers:
    @pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/chat"])
    def test_upstream_error_passes_unchanged(self, proxy, openai_upstream, ollama_upstream, path):
        upstream = ollama_upstream if path.startswith("/api/") else openai_upstream
        direct = post(upstream.port, path, {**CHAT, "model": "llama3-70b"}, status=500)
        proxied = post(proxy.port, path, CHAT, status=500)
        assert proxied[0] == direct[0] == 500
        assert proxied[2] == direct[2]

    def test_garbage_passes_unchanged(self, proxy):
        status, _, raw = post(proxy.port, "/v1/chat/completions", CHAT, garbage=True)
        assert status == 200
        assert raw.startswith(b"<html>mock upstream garbage")

    def test_host_header_names_each_upstream(self, proxy, openai_upstream, ollama_upstream):
        post(proxy.port, "/v1/chat/completions", CHAT)
        assert openai_upstream.requests[-1]["headers"]["host"] == f"127.0.0.1:{openai_upstream.port}"
        post(proxy.port, "/api/chat", {**CHAT, "stream": False})
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
    post(proxy.port, "/v1/chat/completions", CHAT)
    assert openai_upstream.requests[-1]["json"]["messages"][-1]["content"] == "hi /no_think"
    post(proxy.port, "/api/generate", {"model": "m", "prompt": "why", "stream": False})
    assert ollama_upstream.requests[-1]["json"]["prompt"] == "why /no_think"


def test_strip_thinking_off(rerouter):
    proxy = rerouter("mitmdump", args=["--set", "strip_thinking=false"])
    status, _, raw = post(proxy.port, "/v1/chat/completions", CHAT)
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
