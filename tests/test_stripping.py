import gzip
import json

import pytest
from mitmproxy import http
from mitmproxy.test import taddons

from rerouter.framing import EventStream
from rerouter.settings import Settings
from rerouter.stripping import ThinkStrip
from tests.conftest import json_response
from tests.conftest import reverse_flow
from tests.conftest import start


@pytest.fixture
def strip(settings_env):
    s = Settings()
    t = ThinkStrip(s)
    with taddons.context(s, t) as tctx:
        start(tctx, s)
        yield tctx, s, t


def sse(*deltas: str) -> bytes:
    events = [
        {"id": "c1", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": d}, "finish_reason": None}]}
        for d in deltas
    ]
    return b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"


def streamed(flow: http.HTTPFlow, body: bytes, chunk: int = 7) -> bytes:
    """Feed `body` through the flow's stream callable the way mitmproxy does: reads, then b""."""
    out = []
    for i in range(0, len(body), chunk):
        out += flow.response.stream(body[i : i + chunk])
    out += flow.response.stream(b"")
    assert all(out), "an empty element would end the client's chunked response"
    return b"".join(out)


def deltas(body: bytes) -> str:
    text = ""
    for event in body.split(b"\n\n"):
        if event.startswith(b"data: {"):
            for choice in json.loads(event[6:])["choices"]:
                text += choice["delta"].get("content") or ""
    return text


def stream_flow(content_type: str, headers: dict | None = None) -> http.HTTPFlow:
    f = reverse_flow()
    f.response = http.Response.make(200, b"", {"content-type": content_type})
    f.response.headers.update(headers or {})
    return f


class TestStreams:
    def test_sse_is_streamed_and_stripped(self, strip):
        tctx, s, t = strip
        f = stream_flow("text/event-stream; charset=utf-8", {"content-length": "999"})
        t.responseheaders(f)
        assert isinstance(f.response.stream, EventStream)
        assert "content-length" not in f.response.headers
        assert f.response.headers["transfer-encoding"] == "chunked"
        out = streamed(f, sse("<thi", "nk>secret</th", "ink>\n\n", "Hello", " world"))
        assert deltas(out) == "Hello world"
        assert out.endswith(b"data: [DONE]\n\n")
        t.response(f)
        assert f.comment == "thinking stripped"

    def test_ollama_ndjson(self, strip):
        tctx, s, t = strip
        f = stream_flow("application/x-ndjson")
        t.responseheaders(f)
        lines = [
            {"model": "m", "message": {"role": "assistant", "content": c}, "done": False}
            for c in ["\\u003cthink\\u003e", "hmm", "\\u003c/think\\u003e", "Hi"]
        ] + [{"model": "m", "message": {"role": "assistant", "content": ""}, "done": True}]
        body = "".join(json.dumps(line).replace("\\\\u003c", "\\u003c").replace("\\\\u003e", "\\u003e") + "\n" for line in lines)
        out = streamed(f, body.encode(), chunk=3)
        contents = [json.loads(line)["message"]["content"] for line in out.splitlines()]
        assert "".join(contents) == "Hi"
        assert json.loads(out.splitlines()[-1])["done"] is True

    def test_gzip_stream_leaves_decoded(self, strip):
        tctx, s, t = strip
        f = stream_flow("text/event-stream", {"content-encoding": "gzip"})
        t.responseheaders(f)
        assert "content-encoding" not in f.response.headers
        assert deltas(streamed(f, gzip.compress(sse("<think>x</think>", "ok")))) == "ok"

    def test_unknown_encoding_passes_through(self, strip):
        tctx, s, t = strip
        f = stream_flow("text/event-stream", {"content-encoding": "br"})
        t.responseheaders(f)
        assert f.response.stream is True
        assert f.response.headers["content-encoding"] == "br"

    def test_streams_are_streamed_even_when_stripping_is_off(self, strip):
        tctx, s, t = strip
        tctx.configure(s, strip_thinking="false")
        f = stream_flow("text/event-stream", {"content-length": "10"})
        t.responseheaders(f)
        assert f.response.stream is True
        assert f.response.headers["content-length"] == "10"

    def test_json_answers_are_not_streamed(self, strip):
        tctx, s, t = strip
        f = stream_flow("application/json")
        t.responseheaders(f)
        assert not f.response.stream

    def test_each_stream_has_its_own_state(self, strip):
        tctx, s, t = strip
        a, b = stream_flow("text/event-stream"), stream_flow("text/event-stream")
        t.responseheaders(a)
        t.responseheaders(b)
        out_a = a.response.stream(sse("<think>a")[:-14])
        out_b = b.response.stream(sse("visible"))
        assert deltas(b"".join(out_b)) == "visible"
        assert deltas(b"".join(out_a)) == ""


class TestJSON:
    def test_chat_completion(self, strip):
        tctx, s, t = strip
        f = reverse_flow()
        f.response = json_response(
            {"choices": [{"index": 0, "message": {"role": "assistant", "content": "<think>why</think>\n\nAnswer", "reasoning_content": "why"}}]}
        )
        t.response(f)
        message = f.response.json()["choices"][0]["message"]
        assert message == {"role": "assistant", "content": "Answer"}
        assert f.comment == "thinking stripped"

    def test_ollama_generate(self, strip):
        tctx, s, t = strip
        f = reverse_flow("/api/generate")
        f.response = json_response({"model": "m", "response": "<THINK>x</THINK> yes", "thinking": "x", "done": True})
        t.response(f)
        assert f.response.json() == {"model": "m", "response": "yes", "done": True}

    def test_untouched_answer_keeps_its_bytes(self, strip):
        tctx, s, t = strip
        f = reverse_flow()
        raw = b'{"choices": [{"message": {"content": "plain"}}],   "x": 1}'
        f.response = http.Response.make(200, raw, {"content-type": "application/json"})
        t.response(f)
        assert f.response.content == raw
        assert not f.comment

    def test_off(self, strip):
        tctx, s, t = strip
        tctx.configure(s, strip_thinking="0")
        f = reverse_flow()
        f.response = json_response({"choices": [{"message": {"content": "<think>x</think>y"}}]})
        t.response(f)
        assert f.response.json()["choices"][0]["message"]["content"] == "<think>x</think>y"

    def test_upstream_error_answer_passes_unchanged(self, strip):
        tctx, s, t = strip
        f = reverse_flow()
        raw = b'{"error": {"message": "<think> in an error", "type": "server_error"}}'
        f.response = http.Response.make(500, raw, {"content-type": "application/json"})
        t.response(f)
        assert f.response.content == raw


def test_failed_streams_are_forgotten(strip):
    tctx, s, t = strip
    f = stream_flow("text/event-stream")
    t.responseheaders(f)
    assert f.id in t.streams
    t.error(f)
    assert not t.streams
