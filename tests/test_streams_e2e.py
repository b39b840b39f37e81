"""Live streams through a real rerouter process, driven with raw HTTP to see every byte."""

import gzip
import http.client
import json
import uuid

import pytest

from tests.helpers import data_objects
from tests.helpers import ndjson_text
from tests.helpers import open_stream
from tests.helpers import sse_text
from tests.upstream import ANSWER

CHAT = {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}], "stream": True}


@pytest.fixture(scope="module")
def proxy(module_rerouter):
    return module_rerouter("python")


@pytest.mark.parametrize(
    "mock",
    [
        {},
        {"write_bytes": 1},
        {"tokens": 1},
        {"crlf": True},
        {"keepalive": True},
        {"gzip": True},
        {"content_length": True},
        {"reasoning": "field"},
        {"text": "<THINK>Upper</Think>  Case ok", "tokens": 3},
    ],
    ids=["words", "one-byte-writes", "one-char-tokens", "crlf", "keepalive", "gzip", "content-length", "reasoning-field", "case"],
)
def test_openai_sse(proxy, mock):
    response = open_stream(proxy, "/v1/chat/completions", CHAT, **mock)
    raw = response.read()
    assert response.status == 200
    assert "gzip" not in response.headers.get("content-encoding", "")
    expected = "Case ok" if "text" in mock else ANSWER
    assert sse_text(raw) == expected
    objects = data_objects(raw)
    assert objects[-1] == "[DONE]"
    assert objects[0]["choices"][0]["delta"]["role"] == "assistant"
    assert not any("reasoning_content" in c.get("delta", {}) for o in objects[:-1] for c in o["choices"])


def test_upstream_writing_one_byte_at_a_time(proxy):
    mock = {"text": "<think>x</think>\n\nHi there", "tokens": 3, "write_bytes": 1, "write_pause": 0.0005}
    raw = open_stream(proxy, "/v1/chat/completions", CHAT, **mock).read()
    assert sse_text(raw) == "Hi there"


def test_keepalive_comments_pass(proxy):
    raw = open_stream(proxy, "/v1/chat/completions", CHAT, keepalive=True).read()
    assert b": keep-alive" in raw


def test_several_choices_keep_separate_state(proxy):
    raw = open_stream(proxy, "/v1/chat/completions", {**CHAT, "n": 2}, tokens=2).read()
    assert sse_text(raw, 0) == sse_text(raw, 1) == ANSWER


def test_completions_stream(proxy):
    raw = open_stream(proxy, "/v1/completions", {"model": "gpt-4", "prompt": "hi", "stream": True}, write_bytes=3).read()
    assert sse_text(raw) == ANSWER


def test_usage_event_is_kept(proxy):
    raw = open_stream(proxy, "/v1/chat/completions", {**CHAT, "stream_options": {"include_usage": True}}).read()
    assert any(o != "[DONE]" and o.get("usage") for o in data_objects(raw))


@pytest.mark.parametrize("mock", [{}, {"write_bytes": 1}, {"gzip": True}, {"reasoning": "field"}])
def test_ollama_ndjson(proxy, mock):
    raw = open_stream(proxy, "/api/chat", {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}, **mock).read()
    assert ndjson_text(raw) == ANSWER
    assert b"thinking" not in raw
    raw = open_stream(proxy, "/api/generate", {"model": "gpt-4", "prompt": "hi"}, **mock).read()
    assert ndjson_text(raw) == ANSWER


def test_partial_tag_that_never_completes_is_delivered(proxy):
    raw = open_stream(proxy, "/v1/chat/completions", CHAT, text="a < b and <thi", tokens=1).read()
    assert sse_text(raw) == "a < b and <thi"


def read_until(response: http.client.HTTPResponse, text: str) -> bytes:
    """Read the stream until its delivered answer contains `text`."""
    received = b""
    while text not in sse_text(received[: received.rfind(b"\n\n") + 2]):
        chunk = response.read1(65536)
        assert chunk, f"stream ended before {text!r} arrived"
        received += chunk
    return received


@pytest.mark.parametrize(
    "tokens, first, answer",
    [
        (["Quick", " answer", " then", " more"], "Quick", "Quick answer then more"),
        (["<think>plan</think>\n\nFirst", " then", " rest"], "First", "First then rest"),
    ],
    ids=["plain", "after-think-block"],
)
def test_first_token_arrives_before_the_upstream_finishes(proxy, openai_upstream, tokens, first, answer):
    gate = uuid.uuid4().hex
    response = open_stream(proxy, "/v1/chat/completions", CHAT, tokens=tokens, gate=gate)
    received = read_until(response, first)
    assert not openai_upstream.stream_finished(gate), "the first token waited for the whole answer"
    openai_upstream.release(gate)
    received += response.read()
    assert openai_upstream.stream_finished(gate)
    assert sse_text(received) == answer


def test_plain_json_answer_is_stripped(proxy):
    response = open_stream(proxy, "/v1/chat/completions", {**CHAT, "stream": False}, gzip=True)
    body = response.read()
    if response.headers.get("content-encoding") == "gzip":
        body = gzip.decompress(body)
    assert json.loads(body)["choices"][0]["message"]["content"] == ANSWER
