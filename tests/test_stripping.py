import gzip
import json
import zlib

import pytest
from mitmproxy import http
from mitmproxy.test import taddons

from rerouter.flows import flow_state
from rerouter.framing import EventStream
from rerouter.settings import Settings
from rerouter.stripping import KEEPALIVE_COMMENT
from rerouter.stripping import KeepAlive
from rerouter.stripping import ThinkStrip
from rerouter.thinking import OpenAIChunkEditor
from tests.helpers import json_response
from tests.helpers import reverse_flow
from tests.helpers import start
from tests.helpers import streamed


@pytest.fixture
def strip(settings_env):
    s = Settings()
    t = ThinkStrip(s)
    with taddons.context(s, t) as tctx:
        start(tctx, s)
        yield tctx, s, t


def sse(*deltas: str) -> bytes:
    events = [
        {"id": "c1", "object": "chat.completion.chunk", "model": "qwen3", "choices": [{"index": 0, "delta": {"content": d}, "finish_reason": None}]}
        for d in deltas
    ]
    return b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"


def deltas(body: bytes) -> str:
    text = ""
    for event in body.split(b"\n\n"):
        if event.startswith(b"data: {"):
            for choice in json.loads(event[6:])["choices"]:
                text += choice["delta"].get("content") or ""
    return text


def stream_flow(content_type: str, headers: dict | None = None, requested: str = "qwen3", routed: str = "qwen3") -> http.HTTPFlow:
    f = reverse_flow()
    record = flow_state(f)
    record.requested_model, record.routed_model = requested, routed
    f.response = http.Response.make(200, b"", {"content-type": content_type})
    f.response.headers.update(headers or {})
    return f


class TestStreams:
    def test_sse_is_streamed_and_stripped(self, strip):
        tctx, s, t = strip
        f = stream_flow("text/event-stream; charset=utf-8", {"content-length": "999"})
        t.responseheaders(f)
        assert isinstance(f.response.stream, KeepAlive)
        assert isinstance(t.streams[f.id], EventStream)
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
        raw = b'{"model": "llama3-70b", "choices": [{"message": {"content": "plain"}}],   "x": 1}'
        f.response = http.Response.make(200, raw, {"content-type": "application/json"})
        t.response(f)
        assert f.response.content == raw
        assert not f.comment
        assert flow_state(f).response_model == "llama3-70b"

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


def events_of(body: bytes) -> list[dict]:
    return [json.loads(event[6:]) for event in body.split(b"\n\n") if event.startswith(b"data: {")]


def reasoning_of(body: bytes) -> str:
    return "".join(choice["delta"].get("reasoning_content") or "" for event in events_of(body) for choice in event["choices"])


class TestReasoningRound2:
    def test_open_start_model_stream(self, strip):
        tctx, s, t = strip
        tctx.configure(s, think_open_models="/^qwq/i")
        f = stream_flow("text/event-stream", routed="QwQ-32B")
        t.responseheaders(f)
        out = streamed(f, sse("The user", " asks.</th", "ink>\n\n", "Hello", " there"), chunk=5)
        assert deltas(out) == "Hello there"
        t.response(f)
        record = flow_state(f)
        assert (record.reasoning_chars, record.lone_think_close, record.response_model) == (len("The user asks."), False, "qwen3")
        assert f.comment == "thinking stripped"

    def test_lone_close_in_a_stream_of_another_model(self, strip):
        tctx, s, t = strip
        tctx.configure(s, think_open_models="/^qwq/")
        f = stream_flow("text/event-stream", routed="qwen3")
        t.responseheaders(f)
        out = streamed(f, sse("The user", " asks.</think>\n\n", "Hello"))
        assert deltas(out) == "The user asks.Hello"
        t.response(f)
        assert flow_state(f).lone_think_close
        assert "lone </think>" in f.comment

    def test_separate_stream(self, strip):
        tctx, s, t = strip
        tctx.configure(s, strip_thinking="separate")
        f = stream_flow("text/event-stream")
        t.responseheaders(f)
        out = streamed(f, sse("<think>Let me", " see</think>\n\nHi"), chunk=3)
        assert reasoning_of(out) == "Let me see"
        assert deltas(out) == "Hi"
        t.response(f)
        assert flow_state(f).reasoning_chars == len("Let me see")
        assert f.comment == "thinking separated"

    def test_reasoned_anyway(self, strip):
        tctx, s, t = strip
        f = stream_flow("text/event-stream")
        flow_state(f).thinking_switches = ("enable_thinking",)
        t.responseheaders(f)
        streamed(f, sse("<think>hmm</think>", "Hi"))
        t.response(f)
        assert flow_state(f).reasoned_anyway
        g = stream_flow("text/event-stream")
        flow_state(g).thinking_switches = ("enable_thinking",)
        t.responseheaders(g)
        streamed(g, sse("<think>\n\n</think>\n\n", "Hi"))  # an empty block: the switch worked
        t.response(g)
        assert not flow_state(g).reasoned_anyway
        assert flow_state(g).reasoning_chars == 2

    def test_echo_stream(self, strip):
        tctx, s, t = strip
        tctx.configure(s, echo_requested_model="true")
        f = stream_flow("text/event-stream", requested="gpt-4", routed="qwen3")
        t.responseheaders(f)
        out = streamed(f, sse("Hello", " world"))
        assert {event["model"] for event in events_of(out)} == {"gpt-4"}
        t.response(f)
        assert flow_state(f).response_model == "qwen3"
        assert "answer's model: qwen3 -> gpt-4" in f.comment

    def test_echo_with_stripping_off(self, strip):
        tctx, s, t = strip
        tctx.configure(s, echo_requested_model="true", strip_thinking="false")
        f = stream_flow("application/x-ndjson", requested="gpt-4", routed="qwen3")
        t.responseheaders(f)
        line = b'{"model":"qwen3","message":{"role":"assistant","content":"<think>x</think>y"},"done":true}\n'
        assert json.loads(streamed(f, line)) == {"model": "gpt-4", "message": {"role": "assistant", "content": "<think>x</think>y"}, "done": True}

    def test_no_echo_when_not_rewritten(self, strip):
        tctx, s, t = strip
        tctx.configure(s, echo_requested_model="true", strip_thinking="false")
        f = stream_flow("text/event-stream", requested="qwen3", routed="qwen3")
        t.responseheaders(f)
        assert f.response.stream is True

    def test_keepalive_off(self, strip):
        tctx, s, t = strip
        tctx.configure(s, think_keepalive_seconds="0")
        f = stream_flow("text/event-stream")
        t.responseheaders(f)
        assert isinstance(f.response.stream, EventStream)

    def test_ndjson_gets_no_keepalive(self, strip):
        tctx, s, t = strip
        f = stream_flow("application/x-ndjson")
        t.responseheaders(f)
        assert isinstance(f.response.stream, EventStream)

    def test_error_keeps_what_was_found(self, strip):
        tctx, s, t = strip
        f = stream_flow("text/event-stream")
        t.responseheaders(f)
        f.response.stream(sse("<think>abc</think>x")[:-14])
        t.error(f)
        assert flow_state(f).reasoning_chars == 3


class TestReasoningJSON:
    def test_separate(self, strip):
        tctx, s, t = strip
        tctx.configure(s, strip_thinking="separate")
        f = reverse_flow()
        f.response = json_response({"model": "m", "choices": [{"index": 0, "message": {"role": "assistant", "content": "<think>why</think>\n\nAnswer"}}]})
        t.response(f)
        assert f.response.json()["choices"][0]["message"] == {"role": "assistant", "content": "Answer", "reasoning_content": "why"}
        assert flow_state(f).reasoning_chars == 3
        assert flow_state(f).response_model == "m"

    def test_open_start_model(self, strip):
        tctx, s, t = strip
        tctx.configure(s, think_open_models="qwq")
        f = reverse_flow("/api/generate")
        flow_state(f).routed_model = "qwq"
        f.response = json_response({"model": "qwq", "response": "x <think>plan</think>Answer", "done": True})
        t.response(f)
        assert f.response.json()["response"] == "Answer"
        assert not flow_state(f).lone_think_close

    def test_lone_close(self, strip):
        tctx, s, t = strip
        f = reverse_flow("/api/chat")
        f.response = json_response({"model": "r1", "message": {"role": "assistant", "content": "plan</think>\n\nAnswer"}, "done": True})
        t.response(f)
        assert f.response.json()["message"]["content"] == "Answer"
        assert flow_state(f).lone_think_close
        assert flow_state(f).reasoning_chars == 4

    def test_echo_and_response_model(self, strip):
        tctx, s, t = strip
        tctx.configure(s, echo_requested_model="true")
        f = reverse_flow("/v1/embeddings")
        record = flow_state(f)
        record.requested_model, record.routed_model = "text-embedding-3-small", "nomic-embed-text"
        f.response = json_response({"object": "list", "data": [], "model": "nomic-embed-text:latest"})
        t.response(f)
        assert f.response.json()["model"] == "text-embedding-3-small"
        assert record.response_model == "nomic-embed-text:latest"


class TestKeepAlive:
    class Clock:
        def __init__(self) -> None:
            self.now = 100.0

        def __call__(self) -> float:
            return self.now

    def make(self, seconds: float = 10) -> tuple[KeepAlive, "TestKeepAlive.Clock"]:
        clock = self.Clock()
        return KeepAlive(EventStream.sse(OpenAIChunkEditor()), seconds, clock), clock

    def test_comment_after_quiet_reasoning(self):
        keepalive, clock = self.make()
        assert keepalive(sse("<think>start")[:-14]) == []
        clock.now += 9.9
        assert keepalive(sse("more")[:-14]) == []
        clock.now += 0.1
        assert keepalive(sse("still thinking")[:-14]) == [KEEPALIVE_COMMENT]
        clock.now += 5
        assert keepalive(sse("and more")[:-14]) == []
        clock.now += 5
        assert keepalive(sse("and more")[:-14]) == [KEEPALIVE_COMMENT]
        assert deltas(b"".join(keepalive(sse("</think>Hi")) + keepalive(b""))) == "Hi"

    def test_nothing_while_answer_flows(self):
        keepalive, clock = self.make()
        for _ in range(5):
            clock.now += 20
            out = keepalive(sse("text")[:-14])
            assert out and KEEPALIVE_COMMENT not in out

    def test_not_at_the_end(self):
        keepalive, clock = self.make()
        keepalive(sse("<think>x")[:-14])
        clock.now += 60
        assert keepalive(b"") == []

    def test_not_once_the_stream_passes_through_unedited(self, caplog):
        class Failing(OpenAIChunkEditor):
            def edit(self, event):
                raise RuntimeError("boom")

        clock = self.Clock()
        stream = EventStream.sse(Failing(), "gzip")
        keepalive = KeepAlive(stream, 10, clock)
        compressor = zlib.compressobj(wbits=31)
        assert keepalive(compressor.compress(sse("x")) + compressor.flush(zlib.Z_SYNC_FLUSH))
        assert not stream.editing
        clock.now += 60
        assert keepalive(compressor.flush(zlib.Z_SYNC_FLUSH)) == []  # decodes to nothing: may be mid-event
