"""
Tests of the mock upstream itself, through raw sockets, http.client and the real openai and
ollama clients pointed straight at it: the integration tests trust what it sends.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import select
import socket
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from typing import Any

import ollama
import openai
import pytest
from hypothesis import assume
from hypothesis import given
from hypothesis import strategies as st

from tests.helpers import data_objects
from tests.helpers import http_request
from tests.helpers import ndjson_objects
from tests.helpers import ollama_client
from tests.helpers import openai_client
from tests.helpers import wait_for
from tests.upstream import ANSWER
from tests.upstream import DEFAULT_TEXT
from tests.upstream import GARBAGE_BODY
from tests.upstream import MODELS
from tests.upstream import REASONING
from tests.upstream import MockOptions
from tests.upstream import MockUpstream
from tests.upstream import go_time
from tests.upstream import mock_headers
from tests.upstream import split_reasoning
from tests.upstream import tokenize

CHAT = {"model": "llama3-70b", "messages": [{"role": "user", "content": "Say hello"}]}
OLLAMA_CHAT = {"model": "qwen3:8b", "messages": [{"role": "user", "content": "Say hello"}]}


class Harness:
    """The mock server plus connections and clients to it, all closed at teardown."""

    def __init__(self, server: MockUpstream) -> None:
        self.server = server
        self._stack = contextlib.ExitStack()

    def connect(self, timeout: float = 5) -> http.client.HTTPConnection:
        assert self.server.port is not None
        conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=timeout)
        return self._stack.enter_context(contextlib.closing(conn))

    def fetch(self, path: str, body: Any = None, **options: Any) -> tuple[http.client.HTTPResponse, bytes]:
        response = send(self.connect(), path, body, mock_headers(**options))
        return response, response.read()

    def openai(self, **options: Any) -> openai.OpenAI:
        return self._stack.enter_context(openai_client(self.server, **options))

    def ollama(self, **options: Any) -> ollama.Client:
        return self._stack.enter_context(ollama_client(self.server, **options))

    def close(self) -> None:
        self._stack.close()


@pytest.fixture
def mock() -> Iterator[Harness]:
    with MockUpstream() as server, contextlib.closing(Harness(server)) as harness:
        yield harness


def send(
    conn: http.client.HTTPConnection, path: str, body: Any = None, headers: dict[str, str] | None = None
) -> http.client.HTTPResponse:
    """POST `body` as JSON (GET without one); the response is returned unread."""
    method = "GET" if body is None else "POST"
    conn.request(method, path, None if body is None else json.dumps(body), headers or {})
    return conn.getresponse()


def sse_json(raw: bytes) -> list[dict[str, Any]]:
    """The JSON events of an SSE body, without its end marker."""
    return [o for o in data_objects(raw) if o != "[DONE]"]


# lifecycle and HTTP plumbing


def test_start_binds_an_ephemeral_port_and_stop_frees_it() -> None:
    server = MockUpstream()
    port = server.start()
    assert port > 0 and server.url == f"http://127.0.0.1:{port}"
    with MockUpstream() as other:
        assert other.port != port
    server.stop()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_persistent_connection_serves_several_requests(mock: Harness) -> None:
    conn = mock.connect()
    assert send(conn, "/v1/models").read()
    sock = conn.sock
    assert data_objects(send(conn, "/v1/chat/completions", {**CHAT, "stream": True}).read())[-1] == "[DONE]"
    assert ndjson_objects(send(conn, "/api/chat", OLLAMA_CHAT).read())[-1]["done"] is True
    assert conn.sock is sock
    assert len(mock.server.requests) == 3


def test_connection_close_is_honoured(mock: Harness) -> None:
    response = send(mock.connect(), "/v1/models", None, {"Connection": "close"})
    assert response.getheader("connection") == "close"
    response.read()
    assert response.will_close


def test_chunked_request_body_is_read(mock: Harness) -> None:
    conn = mock.connect()
    parts = [b'{"model": "qwen', b'3:8b", "stream": false, "prompt": "hi"}']
    conn.request("POST", "/api/generate", iter(parts), {"Transfer-Encoding": "chunked"}, encode_chunked=True)
    assert json.loads(conn.getresponse().read())["model"] == "qwen3:8b"
    assert mock.server.requests[0]["json"] == {"model": "qwen3:8b", "stream": False, "prompt": "hi"}


def test_requests_are_recorded(mock: Harness) -> None:
    mock.fetch("/v1/chat/completions", CHAT, text="hi")
    [record] = mock.server.requests
    assert record["method"] == "POST" and record["path"] == "/v1/chat/completions"
    assert record["headers"]["x-mock-text"] == '"hi"' and record["json"] == CHAT
    assert json.loads(record["body"]) == CHAT
    mock.server.clear()
    assert mock.server.requests == []


def test_unknown_path_is_a_json_404_in_its_family_shape(mock: Harness) -> None:
    response, body = mock.fetch("/v1/nope", {})
    assert response.status == 404 and json.loads(body)["error"]["type"] == "invalid_request_error"
    response, body = mock.fetch("/api/nope", {})
    assert response.status == 404 and "/api/nope" in json.loads(body)["error"]


def test_malformed_request_is_a_400_and_closes(mock: Harness) -> None:
    with socket.create_connection(("127.0.0.1", mock.server.port), timeout=5) as sock:
        sock.sendall(b"NONSENSE\r\n\r\n")
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 400 ") and b"Connection: close" in reply


def test_bad_mock_header_is_a_400(mock: Harness) -> None:
    response = send(mock.connect(), "/v1/chat/completions", CHAT, {"x-mock-tokens": "sentences"})
    assert response.status == 400 and "x-mock" in json.loads(response.read())["error"]["message"]


def test_run_on_its_own_it_prints_its_port() -> None:
    process = subprocess.Popen([sys.executable, "-m", "tests.upstream", "--port", "0"], stdout=subprocess.PIPE, text=True)
    try:
        assert select.select([process.stdout], [], [], 10)[0], "no output from the mock"
        line = process.stdout.readline()
        match = re.fullmatch(r"listening on (http://127\.0\.0\.1:(\d+))\n", line)
        assert match, line
        with contextlib.closing(http.client.HTTPConnection("127.0.0.1", int(match[2]), timeout=5)) as conn:
            assert json.loads(send(conn, "/api/tags").read())["models"][0]["name"] == "llama3-70b"
            assert json.loads(send(conn, "/v1/chat/completions", CHAT).read())["choices"][0]["message"]["content"] == DEFAULT_TEXT
    finally:
        process.terminate()
        assert process.wait(5) == 0
        process.stdout.close()


# OpenAI shapes


def test_openai_models(mock: Harness) -> None:
    body = json.loads(mock.fetch("/v1/models")[1])
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ["llama3-70b", "qwen3:8b", "nomic-embed-text"]
    assert set(body["data"][0]) == {"id", "object", "created", "owned_by"} and body["data"][0]["object"] == "model"
    assert [m.id for m in mock.openai().models.list()] == list(MODELS)


def test_openai_chat_with_client(mock: Harness) -> None:
    completion = mock.openai().chat.completions.create(model="gpt-4o", messages=CHAT["messages"])
    assert completion.object == "chat.completion" and completion.id.startswith("chatcmpl-")
    assert completion.model == "gpt-4o"
    assert completion.choices[0].message.content == DEFAULT_TEXT
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens


def test_openai_chat_stream_event_order(mock: Harness) -> None:
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    response, raw = mock.fetch("/v1/chat/completions", body)
    assert response.getheader("content-type").startswith("text/event-stream")
    assert response.getheader("transfer-encoding") == "chunked" and raw.endswith(b"data: [DONE]\n\n")
    chunks = sse_json(raw)
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"} and len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    content = [c["choices"][0]["delta"]["content"] for c in chunks[1:-2]]
    assert content[:3] == ["<think>", "Let", " me"] and "".join(content) == DEFAULT_TEXT
    assert chunks[-2]["choices"][0]["delta"] == {} and chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == len(content)


def test_openai_chat_stream_with_client(mock: Harness) -> None:
    stream = mock.openai().chat.completions.create(
        model="alias", messages=CHAT["messages"], stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert {c.model for c in chunks} == {"alias"}
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == DEFAULT_TEXT
    assert chunks[-1].usage is not None


def test_openai_chat_n_choices_interleave(mock: Harness) -> None:
    raw = mock.fetch("/v1/chat/completions", {**CHAT, "stream": True, "n": 2}, text="a b")[1]
    choices = [c["choices"][0] for c in sse_json(raw)]
    deltas = [(c["index"], c["delta"], c["finish_reason"]) for c in choices]
    assert deltas == [
        (0, {"role": "assistant", "content": ""}, None),
        (1, {"role": "assistant", "content": ""}, None),
        (0, {"content": "a"}, None),
        (1, {"content": "a"}, None),
        (0, {"content": " b"}, None),
        (1, {"content": " b"}, None),
        (0, {}, "stop"),
        (1, {}, "stop"),
    ]
    body = json.loads(mock.fetch("/v1/chat/completions", {**CHAT, "n": 2}, text="a b")[1])
    assert [c["message"]["content"] for c in body["choices"]] == ["a b", "a b"]


def test_openai_reasoning_field(mock: Harness) -> None:
    raw = mock.fetch("/v1/chat/completions", {**CHAT, "stream": True}, reasoning="field")[1]
    deltas = [c["choices"][0]["delta"] for c in sse_json(raw)]
    assert "".join(d.get("reasoning_content", "") for d in deltas) == REASONING
    assert "".join(d.get("content", "") for d in deltas) == ANSWER
    message = json.loads(mock.fetch("/v1/chat/completions", CHAT, reasoning="field")[1])["choices"][0]["message"]
    assert message == {"role": "assistant", "content": ANSWER, "reasoning_content": REASONING}


def test_openai_completions(mock: Harness) -> None:
    completion = mock.openai().completions.create(model="m1", prompt="Say hello")
    assert completion.object == "text_completion" and completion.model == "m1"
    assert completion.choices[0].text == DEFAULT_TEXT
    chunks = sse_json(mock.fetch("/v1/completions", {"model": "m1", "prompt": "x", "stream": True})[1])
    assert "".join(c["choices"][0]["text"] for c in chunks) == DEFAULT_TEXT
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_openai_embeddings(mock: Harness) -> None:
    result = mock.openai().embeddings.create(model="nomic-embed-text", input=["a", "b"])
    assert result.model == "nomic-embed-text" and [d.index for d in result.data] == [0, 1]
    floats = json.loads(mock.fetch("/v1/embeddings", {"model": "e", "input": ["a", "b"]})[1])
    assert floats["object"] == "list" and floats["data"][0]["object"] == "embedding"
    for decoded, plain in zip(result.data, floats["data"]):
        assert decoded.embedding == pytest.approx(plain["embedding"], abs=1e-6)


def test_openai_responses(mock: Harness) -> None:
    client = mock.openai()
    response = client.responses.create(model="m2", input="Say hello")
    assert response.object == "response" and response.model == "m2" and response.output_text == DEFAULT_TEXT
    events = list(client.responses.create(model="m2", input="Say hello", stream=True))
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert "".join(deltas) == DEFAULT_TEXT and events[-1].response.output_text == DEFAULT_TEXT
    assert [e.sequence_number for e in events] == list(range(len(events)))


# Ollama shapes


def test_ollama_tags(mock: Harness) -> None:
    assert [m.model for m in mock.ollama().list().models] == list(MODELS)
    raw = json.loads(mock.fetch("/api/tags")[1])["models"][1]
    assert raw["name"] == raw["model"] == "qwen3:8b" and len(raw["digest"]) == 64
    assert raw["details"]["parameter_size"] == "8B" and raw["modified_at"].endswith("Z")


def test_ollama_chat_streams_by_default(mock: Harness) -> None:
    response, raw = mock.fetch("/api/chat", OLLAMA_CHAT)  # no "stream" field: Ollama streams
    assert response.getheader("content-type") == "application/x-ndjson"
    assert response.getheader("transfer-encoding") == "chunked"
    lines = ndjson_objects(raw)
    assert all(line["model"] == "qwen3:8b" and line["created_at"].endswith("Z") for line in lines)
    assert all(line["message"]["role"] == "assistant" and line["done"] is False for line in lines[:-1])
    assert "".join(line["message"]["content"] for line in lines) == DEFAULT_TEXT
    final = lines[-1]
    assert final["done"] is True and final["done_reason"] == "stop" and final["message"]["content"] == ""
    assert final["eval_count"] == len(lines) - 1 and final["prompt_eval_count"] > 0


def test_ollama_json_escapes_like_go(mock: Harness) -> None:
    text = "<think>a & b</think>ok"
    raw = mock.fetch("/api/chat", OLLAMA_CHAT, text=text)[1]
    assert b'"content":"\\u003cthink\\u003e"' in raw
    assert not re.search(rb"[<>&]", raw)
    body = mock.fetch("/api/generate", {"model": "qwen3:8b", "prompt": "x", "stream": False}, text=text)[1]
    assert b'"response":"\\u003cthink\\u003ea \\u0026 b\\u003c/think\\u003eok"' in body
    assert json.loads(body)["response"] == text
    openai_raw = mock.fetch("/v1/chat/completions", CHAT, text=text)[1]
    assert b'"content":"<think>a & b</think>ok"' in openai_raw


def test_ollama_chat_with_client(mock: Harness) -> None:
    client = mock.ollama()
    parts = list(client.chat(model="qwen3:8b", messages=OLLAMA_CHAT["messages"], stream=True))
    assert "".join(p.message.content for p in parts) == DEFAULT_TEXT and parts[-1].done
    whole = client.chat(model="alias", messages=OLLAMA_CHAT["messages"], stream=False)
    assert whole.model == "alias" and whole.message.content == DEFAULT_TEXT and whole.done_reason == "stop"
    assert mock.server.requests[1]["json"]["stream"] is False


def test_ollama_generate_and_thinking(mock: Harness) -> None:
    client = mock.ollama(reasoning="field")
    parts = list(client.generate(model="qwen3:8b", prompt="Say hello", stream=True))
    assert "".join(p.thinking or "" for p in parts) == REASONING
    assert "".join(p.response for p in parts) == ANSWER and parts[-1].context
    chat = client.chat(model="qwen3:8b", messages=OLLAMA_CHAT["messages"], stream=False)
    assert (chat.message.thinking, chat.message.content) == (REASONING, ANSWER)
    final = ndjson_objects(mock.fetch("/api/chat", OLLAMA_CHAT, reasoning="field")[1])[-1]
    assert "thinking" not in final["message"]  # Go's omitempty


# Per-request knobs


def test_token_splits(mock: Harness) -> None:
    raw = mock.fetch("/api/chat", OLLAMA_CHAT, text="abcdefg", tokens=3)[1]
    assert [line["message"]["content"] for line in ndjson_objects(raw)] == ["abc", "def", "g", ""]
    raw = mock.fetch("/v1/chat/completions", {**CHAT, "stream": True}, tokens=["<thi", "nk>x</think>y"])[1]
    assert [c["choices"][0]["delta"].get("content") for c in sse_json(raw)[1:-1]] == ["<thi", "nk>x</think>y"]


def test_repeat_sends_the_answer_over_and_over(mock: Harness) -> None:
    raw = mock.fetch("/v1/chat/completions", {**CHAT, "stream": True}, text="ab", tokens=1, repeat=3)[1]
    assert [c["choices"][0]["delta"].get("content") for c in sse_json(raw)[1:-1]] == ["a", "b"] * 3
    whole = mock.ollama(text="ab", repeat=3).chat(model="m", messages=OLLAMA_CHAT["messages"], stream=False)
    assert whole.message.content == "ababab"
    assert send(mock.connect(), "/v1/chat/completions", CHAT, {"x-mock-repeat": "0"}).status == 400


def test_crlf_and_keepalive_framing(mock: Harness) -> None:
    raw = mock.fetch("/v1/chat/completions", {**CHAT, "stream": True}, crlf=True, keepalive=True, text="a b")[1]
    assert b"\n" not in raw.replace(b"\r\n", b"")
    assert raw.count(b": keep-alive\r\n\r\n") == raw.count(b"data: ") - 1
    assert raw.startswith(b"data: {") and raw.endswith(b"data: [DONE]\r\n\r\n")


def test_status_errors_use_each_family_shape(mock: Harness) -> None:
    response, body = mock.fetch("/v1/chat/completions", {**CHAT, "stream": True}, status=429)
    error = json.loads(body)["error"]
    assert response.status == 429 and response.getheader("content-type") == "application/json"
    assert set(error) >= {"message", "type", "code"} and error["code"] == "rate_limit_exceeded"
    response, body = mock.fetch("/api/chat", OLLAMA_CHAT, status=500)
    assert response.status == 500 and isinstance(json.loads(body)["error"], str)
    with pytest.raises(openai.RateLimitError):
        mock.openai(status=429).chat.completions.create(model="m", messages=CHAT["messages"])
    with pytest.raises(ollama.ResponseError) as raised:
        mock.ollama(status=404).chat(model="m", messages=OLLAMA_CHAT["messages"])
    assert raised.value.status_code == 404


def test_garbage_body(mock: Harness) -> None:
    response, body = mock.fetch("/v1/chat/completions", {**CHAT, "stream": True}, garbage=True)
    assert response.status == 200 and body == GARBAGE_BODY


def test_gate_holds_the_stream_after_the_first_token(mock: Harness) -> None:
    response = send(mock.connect(), "/v1/chat/completions", {**CHAT, "stream": True}, mock_headers(gate="g1"))
    events = []
    while len(events) < 2:
        line = response.readline()
        if line.startswith(b"data: "):
            events.append(json.loads(line[6:]))
    assert events[1]["choices"][0]["delta"]["content"] == "<think>"
    wait_for(lambda: mock.server.gate_waiting("g1"))
    assert not mock.server.stream_finished("g1")
    mock.server.release("g1")
    rest = response.read()
    assert rest.endswith(b"data: [DONE]\n\n") and mock.server.stream_finished("g1")


def test_gate_with_real_clients(mock: Harness) -> None:
    stream = iter(mock.openai(gate="g2").chat.completions.create(model="m", messages=CHAT["messages"], stream=True))
    assert next(stream).choices[0].delta.role == "assistant"
    assert next(stream).choices[0].delta.content == "<think>"
    assert not mock.server.stream_finished("g2")
    mock.server.release("g2")
    assert "".join(c.choices[0].delta.content or "" for c in stream) == DEFAULT_TEXT[len("<think>") :]
    assert mock.server.stream_finished("g2")

    parts = iter(mock.ollama(gate="g3").chat(model="m", messages=OLLAMA_CHAT["messages"], stream=True))
    assert next(parts).message.content == "<think>"
    assert not mock.server.stream_finished("g3")
    mock.server.release("g3")
    assert list(parts)[-1].done


def test_write_bytes_one_sends_tiny_segments(mock: Harness) -> None:
    request = http_request("/api/chat", {**OLLAMA_CHAT, "stream": True}, write_bytes=1, write_pause=0.001, text="Hi")  # the pause outlasts our wake-up
    with socket.create_connection(("127.0.0.1", mock.server.port), timeout=5) as sock:
        sock.sendall(request)
        reads = [sock.recv(65536)]
        while not b"".join(reads).endswith(b"\r\n0\r\n\r\n"):
            reads.append(sock.recv(65536))
            assert reads[-1], "connection closed early"
    body = b"".join(reads).split(b"\r\n\r\n", 1)[1]
    assert len(reads) > len(body) / 2, f"{len(reads)} reads for {len(body)} body bytes"


def test_gzip_stream_is_flushed_per_event(mock: Harness) -> None:
    headers = mock_headers(gzip=True, gate="gz")
    response = send(mock.connect(), "/v1/chat/completions", {**CHAT, "stream": True}, headers)
    assert response.getheader("content-encoding") == "gzip"
    decoder = zlib.decompressobj(wbits=31)
    text = b""
    while text.count(b"data: ") < 2:  # both events decode while the stream is still held
        text += decoder.decompress(response.read1(65536))
    mock.server.release("gz")
    text += decoder.decompress(response.read()) + decoder.flush()
    assert decoder.eof
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in sse_json(text)) == DEFAULT_TEXT
    whole = mock.fetch("/api/tags", None, gzip=True)[1]
    assert json.loads(zlib.decompress(whole, wbits=31))["models"]


def test_content_length_stream(mock: Harness) -> None:
    response, raw = mock.fetch("/api/generate", {"model": "m", "prompt": "x"}, content_length=True, gzip=True)
    assert response.getheader("transfer-encoding") is None
    assert int(response.getheader("content-length")) == len(raw)
    assert ndjson_objects(zlib.decompress(raw, wbits=31))[-1]["done"] is True


def test_delay_between_events(mock: Harness) -> None:
    started = time.monotonic()
    lines = ndjson_objects(mock.fetch("/api/chat", OLLAMA_CHAT, text="a b c", delay=0.05)[1])
    assert len(lines) == 4 and time.monotonic() - started >= 3 * 0.05


def test_hang_before_headers(mock: Harness) -> None:
    conn = mock.connect(timeout=0.2)
    with pytest.raises(TimeoutError):
        send(conn, "/v1/models", None, mock_headers(hang=0.5))
    started = time.monotonic()
    assert mock.fetch("/v1/models", None, hang=0.2)[0].status == 200
    assert time.monotonic() - started >= 0.2


def test_hang_after_stalls_mid_stream(mock: Harness) -> None:
    response = send(mock.connect(timeout=0.3), "/api/chat", OLLAMA_CHAT, mock_headers(hang_after=2))
    assert [json.loads(response.readline())["message"]["content"] for _ in range(2)] == ["<think>", "Let"]
    with pytest.raises(TimeoutError):
        response.readline()


def test_reset_mid_stream(mock: Harness) -> None:
    response = send(mock.connect(), "/v1/chat/completions", {**CHAT, "stream": True}, mock_headers(reset=3))
    with pytest.raises((http.client.IncompleteRead, ConnectionResetError)):
        response.read()
    assert mock.fetch("/v1/models")[0].status == 200  # the server carries on


# Pure helpers


@given(st.text(), st.one_of(st.just("words"), st.integers(1, 5)))
def test_tokens_concatenate_to_the_text(text: str, spec: str | int) -> None:
    tokens = tokenize(text, spec)
    assert "".join(tokens) == text and all(tokens)


def test_words_keep_whitespace_leading_and_tags_alone() -> None:
    assert tokenize(DEFAULT_TEXT) == [
        "<think>", "Let", " me", " think", " about", " this.", "</think>",
        "\n\nHello", " world,", " this", " is", " the", " answer.",
    ]  # fmt: skip


@given(st.text("<think/>a \n", max_size=30), st.text("<think/>a \n", max_size=30), st.integers(1, 9))
def test_split_reasoning_moves_the_think_block(thought: str, answer: str, size: int) -> None:
    assume("</think>" not in thought)
    pieces = split_reasoning(tokenize(f"<think>{thought}</think>{answer}", size))
    assert "".join(p for kind, p in pieces if kind == "reasoning") == thought
    assert "".join(p for kind, p in pieces if kind == "content") == answer.lstrip()


@given(
    st.text(),
    st.one_of(st.just("words"), st.integers(1, 9), st.lists(st.text(), max_size=4).map(tuple)),
    st.sampled_from(["tags", "field"]),
    st.booleans(),
    st.none() | st.integers(0, 9),
)
def test_mock_headers_round_trip(text: str, tokens: Any, reasoning: str, gzip: bool, reset: int | None) -> None:
    options = MockOptions(text=text, tokens=tokens, reasoning=reasoning, gzip=gzip, reset=reset, gate="g")
    headers = options.to_headers()
    assert all(v.isascii() and "\n" not in v and "\r" not in v for v in headers.values())
    assert MockOptions.from_headers(headers) == options
    assert mock_headers(text=text, gate="g", gzip=gzip) == MockOptions(text=text, gate="g", gzip=gzip).to_headers()


def test_go_time_looks_like_rfc3339nano() -> None:
    assert go_time(1_700_000_000_123_456_789) == "2023-11-14T22:13:20.123456789Z"
    assert go_time(1_700_000_000_120_000_000) == "2023-11-14T22:13:20.12Z"
    assert go_time(1_700_000_000_000_000_000) == "2023-11-14T22:13:20Z"
