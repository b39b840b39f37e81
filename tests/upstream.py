"""
A mock OpenAI-compatible + Ollama upstream for the rerouter's integration tests and benchmark.

It is a hand-written HTTP/1.1 server on plain asyncio streams so that it controls every byte on
the socket: chunk boundaries, write sizes, framing quirks, gzip flushes, stalls and resets.
Each request picks its behaviour through `x-mock-*` headers (see `MockOptions` and
`mock_headers`), so real `openai` / `ollama` clients can drive it through default headers.

Run as a script (`python tests/upstream.py [--port 0]`) it prints `listening on URL` and serves
until killed; subprocess users reach the recorded requests and gates under `/_mock/`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import json
import random
import re
import signal
import socket
import struct
import threading
import time
import uuid
import zlib
from collections.abc import Callable
from collections.abc import Sequence
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from typing import Any

DEFAULT_MODELS = ("llama3-70b", "qwen3:8b", "nomic-embed-text")
DEFAULT_TEXT = "<think>Let me think about this.</think>\n\nHello world, this is the answer."
GARBAGE_BODY = b"<html>mock upstream garbage: this is not JSON</html>\n"
HANG_LIMIT = 60.0  # longest a stuck stream waits for its client to go away
EMBED_DIM = 8
SSE_TYPE = "text/event-stream; charset=utf-8"
NDJSON_TYPE = "application/x-ndjson"
OPENAI_JSON_TYPE = "application/json"
OLLAMA_JSON_TYPE = "application/json; charset=utf-8"  # what Ollama's gin router sends
FILE_TYPE = "application/octet-stream"
FILE_PIECE = 1024 * 1024


# ---------------------------------------------------------------------------------------------
# Per-request knobs


def _flag(raw: str) -> bool:
    return raw.strip().lower() in ("1", "true", "yes", "on")


def _decode_text(raw: str) -> str:
    """A JSON string literal (so newlines and quotes survive a header) or else the raw value."""
    if raw.startswith('"'):
        text = json.loads(raw)
        if not isinstance(text, str):
            raise ValueError("x-mock-text must be a JSON string")
        return text
    return raw


def _decode_tokens(raw: str) -> str | int | tuple[str, ...]:
    if raw.startswith("json:"):
        tokens = json.loads(raw[5:])
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise ValueError("x-mock-tokens json: must be a list of strings")
        return tuple(tokens)
    return raw if raw == "words" else int(raw)


def _encode_plain(value: Any) -> str:
    return "1" if value is True else str(value)


def _encode_tokens(tokens: str | int | Sequence[str]) -> str:
    if isinstance(tokens, (str, int)):
        return str(tokens)
    return "json:" + json.dumps(list(tokens))


_DECODERS: dict[str, Callable[[str], Any]] = {
    "text": _decode_text,
    "tokens": _decode_tokens,
    "reasoning": str,
    "delay": float,
    "write_bytes": int,
    "write_pause": float,
    "crlf": _flag,
    "keepalive": _flag,
    "status": int,
    "hang": float,
    "hang_after": int,
    "gate": str,
    "gzip": _flag,
    "content_length": _flag,
    "garbage": _flag,
    "reset": int,
    "linger": float,
    "file_size": int,
}
_ENCODERS: dict[str, Callable[[Any], str]] = {"text": json.dumps, "tokens": _encode_tokens}


@dataclass(frozen=True)
class MockOptions:
    """
    How the mock answers one request; each field travels as header `x-mock-<field, - for _>`.

    text: the full assistant answer (header: a JSON string literal, or a bare value).
    tokens: stream split: "words" (whitespace kept leading, think tags alone), N characters per
        event, or an explicit token list (header `json:[...]`) that replaces `text`.
    reasoning: "tags" keeps <think>..</think> in the text; "field" moves its inner text to
        `reasoning_content` (OpenAI) / `thinking` (Ollama).
    delay: seconds between stream events.  write_bytes: body bytes per socket write (0 = whole),
        each drained and followed by a `write_pause` sleep (0 = just yield to the event loop; a
        reader that is slow to wake still sees coalesced bytes unless the pause outlasts it).
    crlf / keepalive: SSE framed with CRLF / `: keep-alive` comments between events.
    status: answer this HTTP status with an error body.  garbage: 200 with a non-JSON body.
    hang: seconds before the response headers.  hang_after / reset: stall / RST the connection
        after that many body events.  linger: seconds between the last event and the body's end,
        as llama.cpp ends its chunked body a moment after `data: [DONE]`.  gate: hold the stream after its first content event until
        released.  gzip: gzip the body, sync-flushed per event.  content_length: frame a stream
        with Content-Length instead of chunked.
    file_size: bytes of a file download (GET /v1/files/{id}/content), see `file_bytes`.
    A non-stream reply counts as one body event for hang_after, reset and gate.
    """

    text: str = DEFAULT_TEXT
    tokens: str | int | Sequence[str] = "words"
    reasoning: str = "tags"
    delay: float = 0.0
    write_bytes: int = 0
    write_pause: float = 0.0
    crlf: bool = False
    keepalive: bool = False
    status: int | None = None
    hang: float = 0.0
    hang_after: int | None = None
    gate: str | None = None
    gzip: bool = False
    content_length: bool = False
    garbage: bool = False
    reset: int | None = None
    linger: float = 0.0
    file_size: int = 1024

    def __post_init__(self) -> None:
        if self.reasoning not in ("tags", "field"):
            raise ValueError(f"x-mock-reasoning must be tags or field, not {self.reasoning!r}")
        if isinstance(self.tokens, str) and self.tokens != "words":
            raise ValueError(f"x-mock-tokens: unknown split {self.tokens!r}")
        if isinstance(self.tokens, int) and self.tokens < 1:
            raise ValueError("x-mock-tokens must be at least 1")
        if self.write_bytes < 0:
            raise ValueError("x-mock-write-bytes must not be negative")
        if self.file_size < 0:
            raise ValueError("x-mock-file-size must not be negative")

    @staticmethod
    def header_name(field: str) -> str:
        return "x-mock-" + field.replace("_", "-")

    @classmethod
    def from_headers(cls, headers: dict[str, str]) -> MockOptions:
        """Raises ValueError on a malformed knob, which the server answers with a 400."""
        values = {}
        for field, decode in _DECODERS.items():
            raw = headers.get(cls.header_name(field))
            if raw is not None:
                values[field] = decode(raw.strip())
        return cls(**values)

    def to_headers(self) -> dict[str, str]:
        headers = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value != field.default:
                headers[self.header_name(field.name)] = _ENCODERS.get(field.name, _encode_plain)(value)
        return headers


def mock_headers(**options: Any) -> dict[str, str]:
    """Headers selecting the given `MockOptions` fields, e.g. mock_headers(text="hi", gzip=True)."""
    return MockOptions(**options).to_headers()


# ---------------------------------------------------------------------------------------------
# The answer text, split the way a model would stream it

_THINK_TAG = re.compile(r"(</?think>)")
_WORD = re.compile(r"\s*\S+|\s+")
_THINK_BLOCK = re.compile(r"\s*<think>(.*?)</think>\s*", re.S)


def tokenize(text: str, spec: str | int | Sequence[str] = "words") -> list[str]:
    """Stream tokens; they always concatenate back to the text (or are the explicit list)."""
    if isinstance(spec, int):
        return [text[i : i + spec] for i in range(0, len(text), spec)]
    if not isinstance(spec, str):
        return list(spec)
    tokens: list[str] = []
    for part in _THINK_TAG.split(text):
        tokens.extend([part] if _THINK_TAG.fullmatch(part) else _WORD.findall(part))
    return tokens


def split_reasoning(tokens: Sequence[str]) -> list[tuple[str, str]]:
    """
    (kind, piece) pairs with a leading <think> block moved to kind "reasoning"; the tags and the
    whitespace around the block are dropped. Works on character offsets, so a tag split across
    tokens is still removed.
    """
    text = "".join(tokens)
    block = _THINK_BLOCK.match(text)
    if block is None:
        return [("content", t) for t in tokens if t]
    inner_start, inner_end = block.span(1)
    pieces: list[tuple[str, str]] = []
    start = 0
    for token in tokens:
        end = start + len(token)
        reasoning = text[max(start, inner_start) : min(end, inner_end)]
        content = text[max(start, block.end()) : end]
        pieces += [(kind, p) for kind, p in (("reasoning", reasoning), ("content", content)) if p]
        start = end
    return pieces


@dataclass(frozen=True)
class Answer:
    """What the mock model says, as the pieces its stream carries."""

    pieces: tuple[tuple[str, str], ...]

    @classmethod
    def from_options(cls, options: MockOptions) -> Answer:
        tokens = tokenize(options.text, options.tokens)
        if options.reasoning == "field":
            return cls(tuple(split_reasoning(tokens)))
        return cls(tuple(("content", t) for t in tokens if t))

    def text(self, kind: str = "content") -> str:
        return "".join(piece for k, piece in self.pieces if k == kind)


# ---------------------------------------------------------------------------------------------
# HTTP requests


class BadRequest(Exception):
    """The client sent something that is not HTTP/1.x; the connection gets a 400 and closes."""


@dataclass
class Request:
    """One parsed HTTP request; `target` keeps the query string, `path` drops it."""

    method: str
    target: str
    version: str
    headers: dict[str, str]
    body: bytes
    json: Any

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def keep_alive(self) -> bool:
        connection = self.headers.get("connection", "").lower()
        if self.version == "HTTP/1.0":
            return "keep-alive" in connection
        return "close" not in connection

    def record(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "path": self.target,
            "headers": dict(self.headers),
            "body": self.body,
            "json": self.json,
        }


def _parse_json(body: bytes) -> Any:
    try:
        return json.loads(body) if body else None
    except (ValueError, RecursionError):
        return None


async def read_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Request | None:
    """The next request on a persistent connection, or None once the client has closed it."""
    try:
        line = await reader.readline()
        while line in (b"\r\n", b"\n"):  # stray CRLF between requests is allowed (RFC 9112 2.2)
            line = await reader.readline()
        if not line:
            return None
        parts = line.decode("latin-1").split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise BadRequest(f"bad request line {line!r}")
        headers: dict[str, str] = {}
        while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
            name, sep, value = line.decode("latin-1").partition(":")
            if not sep:
                raise BadRequest(f"bad header line {line!r}")
            key, value = name.strip().lower(), value.strip()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        if headers.get("expect", "").lower() == "100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = await _read_body(reader, headers)
    except (ValueError, asyncio.IncompleteReadError) as exc:  # ValueError: over-long line
        raise BadRequest(str(exc)) from exc
    method, target, version = parts
    return Request(method, target, version, headers, body, _parse_json(body))


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        chunks = []
        while size := int((await reader.readline()).split(b";")[0].strip(), 16):
            chunks.append(await reader.readexactly(size))
            await reader.readexactly(2)
        while await reader.readline() not in (b"\r\n", b"\n", b""):  # trailers
            pass
        return b"".join(chunks)
    return await reader.readexactly(int(headers.get("content-length", "0")))


# ---------------------------------------------------------------------------------------------
# Replies and how they are serialized

_GO_ESCAPES = str.maketrans(
    {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
)


def openai_dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def go_dumps(obj: Any) -> str:
    """JSON as Go's encoding/json writes it (Ollama): HTML characters escaped as \\u003c etc."""
    return openai_dumps(obj).translate(_GO_ESCAPES)


@dataclass
class Reply:
    """A response before framing: its body as events (a plain body is a single event)."""

    status: int
    content_type: str
    events: list[bytes]
    stream: bool = False
    gate_after: int = 0  # events sent before a gated reply waits
    filler: bytes = b""  # sent between events (SSE keep-alive comments)


def json_reply(obj: Any, status: int = 200, go: bool = False) -> Reply:
    if go:
        return Reply(status, OLLAMA_JSON_TYPE, [go_dumps(obj).encode()])
    return Reply(status, OPENAI_JSON_TYPE, [openai_dumps(obj).encode()])


def sse_reply(events: Sequence[tuple[str | None, str]], options: MockOptions, gate_after: int) -> Reply:
    """`events` are (event name or None, data) pairs."""
    nl = "\r\n" if options.crlf else "\n"
    frames = [
        (f"event: {name}{nl}" if name else "").encode() + f"data: {data}{nl}{nl}".encode()
        for name, data in events
    ]
    filler = f": keep-alive{nl}{nl}".encode() if options.keepalive else b""
    return Reply(200, SSE_TYPE, frames, stream=True, gate_after=gate_after, filler=filler)


def ndjson_reply(lines: Sequence[Any]) -> Reply:
    events = [(go_dumps(line) + "\n").encode() for line in lines]
    return Reply(200, NDJSON_TYPE, events, stream=True, gate_after=1)


_OPENAI_ERROR_CODES = {401: "invalid_api_key", 404: "not_found", 429: "rate_limit_exceeded"}


def error_reply(path: str, status: int, message: str) -> Reply:
    """An error in the shape of the API family that `path` belongs to."""
    if path.startswith("/api/"):
        return json_reply({"error": message}, status, go=True)
    kind = "requests" if status == 429 else "server_error" if status >= 500 else "invalid_request_error"
    error = {"message": message, "type": kind, "param": None, "code": _OPENAI_ERROR_CODES.get(status)}
    return json_reply({"error": error}, status)


class BodyEncoder:
    """Wire bytes for body pieces: gzip sync-flushed per piece, then chunked framing."""

    def __init__(self, gzip: bool, chunked: bool) -> None:
        self._compressor = zlib.compressobj(wbits=31) if gzip else None
        self._chunked = chunked

    def encode(self, piece: bytes) -> bytes:
        if piece and self._compressor:
            piece = self._compressor.compress(piece) + self._compressor.flush(zlib.Z_SYNC_FLUSH)
        return self._frame(piece)

    def finish(self) -> bytes:
        tail = self._frame(self._compressor.flush()) if self._compressor else b""
        return tail + (b"0\r\n\r\n" if self._chunked else b"")

    def _frame(self, data: bytes) -> bytes:
        if not data or not self._chunked:
            return data
        return b"%x\r\n%s\r\n" % (len(data), data)


# ---------------------------------------------------------------------------------------------
# Answer builders, one per endpoint


class Call:
    """One API request as the answer builders see it."""

    def __init__(self, request: Request, options: MockOptions, models: Sequence[str]) -> None:
        self.options = options
        self.models = list(models)
        self.body: dict[str, Any] = request.json if isinstance(request.json, dict) else {}
        self.raw_body = request.body
        self.model = str(self.body.get("model") or self.body.get("name") or "")
        self.answer = Answer.from_options(options)

    def stream(self, default: bool) -> bool:
        return bool(self.body.get("stream", default))

    def prompt_tokens(self, *keys: str) -> int:
        """A rough count: words in every string under the given request keys."""
        return sum(len(re.findall(r"\w+", s)) for key in keys for s in _strings(self.body.get(key)))


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    return [s for item in value for s in _strings(item)] if isinstance(value, list) else []


def _embedding(text: str) -> list[float]:
    return [round((b - 128) / 128, 6) for b in hashlib.sha256(text.encode()).digest()[:EMBED_DIM]]


def _embed_inputs(value: Any) -> list[str]:
    """OpenAI / Ollama `input`: a string, a list of strings, or token-id lists."""
    if isinstance(value, str) or (isinstance(value, list) and value and isinstance(value[0], int)):
        value = [value]
    if not isinstance(value, list):
        raise ValueError("input must be a string or a list")
    return [item if isinstance(item, str) else json.dumps(item) for item in value]


def _new_id(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:24]


# OpenAI ---------------------------------------------------------------------------------------

_OPENAI_FIELDS = {"content": "content", "reasoning": "reasoning_content"}


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _choice_count(call: Call) -> int:
    n = int(call.body.get("n") or 1)
    if not 1 <= n <= 16:
        raise ValueError("n must be between 1 and 16")
    return n


def _openai_sse(
    call: Call, head: dict[str, Any], choices: list[dict[str, Any]], usage: dict[str, int], gate_after: int
) -> Reply:
    """One chunk per choice delta, then OpenAI's tail: a usage chunk if asked for, and [DONE]."""
    stream_options = call.body.get("stream_options")
    include_usage = isinstance(stream_options, dict) and bool(stream_options.get("include_usage"))
    extra = {"usage": None} if include_usage else {}  # OpenAI then puts usage: null on every chunk
    events = [openai_dumps({**head, "choices": [choice], **extra}) for choice in choices]
    if include_usage:
        events.append(openai_dumps({**head, "choices": [], "usage": usage}))
    events.append("[DONE]")
    return sse_reply([(None, e) for e in events], call.options, gate_after)


def openai_models(call: Call) -> Reply:
    models = [{"id": m, "object": "model", "created": 1700000000, "owned_by": "mock"} for m in call.models]
    return json_reply({"object": "list", "data": models})


def openai_chat(call: Call) -> Reply:
    n, answer = _choice_count(call), call.answer
    usage = _usage(call.prompt_tokens("messages"), len(answer.pieces) * n)
    head = {
        "id": _new_id("chatcmpl-"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": call.model,
        "system_fingerprint": "fp_mock",
    }
    if not call.stream(False):
        message = {"role": "assistant", "content": answer.text()}
        if answer.text("reasoning"):
            message["reasoning_content"] = answer.text("reasoning")
        choice = {"message": message, "logprobs": None, "finish_reason": "stop"}
        return json_reply({**head, "choices": [{"index": i, **choice} for i in range(n)], "usage": usage})

    def choice(index: int, delta: dict[str, str], finish: str | None = None) -> dict[str, Any]:
        return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}

    choices = [choice(i, {"role": "assistant", "content": ""}) for i in range(n)]
    choices += [choice(i, {_OPENAI_FIELDS[kind]: piece}) for kind, piece in answer.pieces for i in range(n)]
    choices += [choice(i, {}, "stop") for i in range(n)]
    return _openai_sse(call, {**head, "object": "chat.completion.chunk"}, choices, usage, gate_after=n + 1)


def openai_completions(call: Call) -> Reply:
    n = _choice_count(call)
    answer = Answer.from_options(dataclasses.replace(call.options, reasoning="tags"))  # no field here
    usage = _usage(call.prompt_tokens("prompt"), len(answer.pieces) * n)
    head = {
        "id": _new_id("cmpl-"),
        "object": "text_completion",
        "created": int(time.time()),
        "model": call.model,
        "system_fingerprint": "fp_mock",
    }

    def choice(index: int, text: str, finish: str | None) -> dict[str, Any]:
        return {"text": text, "index": index, "logprobs": None, "finish_reason": finish}

    if not call.stream(False):
        choices = [choice(i, answer.text(), "stop") for i in range(n)]
        return json_reply({**head, "choices": choices, "usage": usage})
    choices = [choice(i, piece, None) for _, piece in answer.pieces for i in range(n)]
    choices += [choice(i, "", "stop") for i in range(n)]
    return _openai_sse(call, head, choices, usage, gate_after=1)


def openai_embeddings(call: Call) -> Reply:
    inputs = _embed_inputs(call.body.get("input"))
    as_base64 = call.body.get("encoding_format") == "base64"
    data = []
    for index, text in enumerate(inputs):
        vector: Any = _embedding(text)
        if as_base64:
            vector = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": vector})
    tokens = sum(len(re.findall(r"\w+", t)) for t in inputs)
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return json_reply({"object": "list", "data": data, "model": call.model, "usage": usage})


def _output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "annotations": [], "logprobs": [], "text": text}


def _response_message(item_id: str, content: list[dict[str, Any]], status: str = "completed") -> dict[str, Any]:
    return {"id": item_id, "type": "message", "status": status, "role": "assistant", "content": content}


def openai_responses(call: Call) -> Reply:
    answer = call.answer
    reasoning, text = answer.text("reasoning"), answer.text()
    message_id = _new_id("msg_")
    output: list[dict[str, Any]] = []
    if reasoning:
        summary = [{"type": "summary_text", "text": reasoning}]
        output.append({"id": _new_id("rs_"), "type": "reasoning", "summary": summary})
    output.append(_response_message(message_id, [_output_text(text)]))
    prompt, completion = call.prompt_tokens("input", "instructions"), len(answer.pieces)
    response = {
        "id": _new_id("resp_"),
        "object": "response",
        "created_at": int(time.time()),
        "status": "completed",
        "error": None,
        "incomplete_details": None,
        "instructions": call.body.get("instructions"),
        "model": call.model,
        "output": output,
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": {
            "input_tokens": prompt,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": completion,
            "output_tokens_details": {"reasoning_tokens": sum(k == "reasoning" for k, _ in answer.pieces)},
            "total_tokens": prompt + completion,
        },
    }
    if not call.stream(False):
        return json_reply(response)
    return _responses_stream(call, response, message_id)


def _responses_stream(call: Call, response: dict[str, Any], message_id: str) -> Reply:
    """The Responses API's typed SSE events; only the message text is streamed as deltas."""
    index = len(response["output"]) - 1
    where = {"item_id": message_id, "output_index": index, "content_index": 0}
    pending = {**response, "status": "in_progress", "output": [], "usage": None}
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": pending},
        {"type": "response.in_progress", "response": pending},
    ]
    for output_index, item in enumerate(response["output"][:-1]):
        events.append({"type": "response.output_item.added", "output_index": output_index, "item": item})
        events.append({"type": "response.output_item.done", "output_index": output_index, "item": item})
    started = _response_message(message_id, [], "in_progress")
    events.append({"type": "response.output_item.added", "output_index": index, "item": started})
    events.append({"type": "response.content_part.added", **where, "part": _output_text("")})
    gate_after = len(events) + 1
    events += [
        {"type": "response.output_text.delta", **where, "delta": piece, "logprobs": []}
        for kind, piece in call.answer.pieces
        if kind == "content"
    ]
    message = response["output"][-1]
    events += [
        {"type": "response.output_text.done", **where, "text": call.answer.text(), "logprobs": []},
        {"type": "response.content_part.done", **where, "part": message["content"][0]},
        {"type": "response.output_item.done", "output_index": index, "item": message},
        {"type": "response.completed", "response": response},
    ]
    framed = [(e["type"], openai_dumps({**e, "sequence_number": seq})) for seq, e in enumerate(events)]
    return sse_reply(framed, call.options, gate_after=gate_after)


def file_bytes(size: int) -> bytes:
    """The content of every mock file of `size` bytes: deterministic, and as incompressible as real binaries."""
    return random.Random(size).randbytes(size)


def openai_file_upload(call: Call) -> Reply:
    """POST /v1/files with any body: the file object's `id` and `sha256` let a client check the bytes that arrived."""
    digest = hashlib.sha256(call.raw_body).hexdigest()
    body = {"id": f"file-{digest[:24]}", "object": "file", "bytes": len(call.raw_body), "sha256": digest}
    return json_reply(body)


def openai_file_content(call: Call) -> Reply:
    """GET /v1/files/{id}/content: `file_size` bytes of `file_bytes`, sent in 1 MiB writes."""
    content = file_bytes(call.options.file_size)
    pieces = [content[i : i + FILE_PIECE] for i in range(0, len(content), FILE_PIECE)]
    return Reply(200, FILE_TYPE, pieces or [b""])


# Ollama ---------------------------------------------------------------------------------------

Payload = Callable[[str, str], dict[str, Any]]


def go_time(ns: int | None = None) -> str:
    """A UTC timestamp as Go's RFC3339Nano formats it (trailing zeros of the fraction dropped)."""
    seconds, fraction = divmod(time.time_ns() if ns is None else ns, 1_000_000_000)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    digits = f"{fraction:09d}".rstrip("0")
    return f"{stamp}.{digits}Z" if digits else f"{stamp}Z"


def _ollama_details(model: str) -> dict[str, Any]:
    family = re.match(r"[a-z]*", model.lower()).group() or "llama"
    size = re.search(r"(\d+(?:\.\d+)?)b\b", model.lower())
    return {
        "parent_model": "",
        "format": "gguf",
        "family": family,
        "families": [family],
        "parameter_size": f"{size.group(1)}B" if size else "137M",
        "quantization_level": "Q4_K_M",
    }


def _ollama_metrics(prompt: int, completion: int) -> dict[str, int]:
    return {
        "total_duration": 5_000_000 + 20_000_000 * completion,
        "load_duration": 1_000_000,
        "prompt_eval_count": prompt,
        "prompt_eval_duration": 2_000_000,
        "eval_count": completion,
        "eval_duration": 20_000_000 * completion,
    }


def ollama_tags(call: Call) -> Reply:
    models = []
    for name in call.models:
        digest = hashlib.sha256(name.encode()).hexdigest()
        size = 100_000_000 + int(digest[:8], 16) * 2
        models.append(
            {
                "name": name,
                "model": name,
                "modified_at": "2025-05-01T12:00:00.000000000Z",
                "size": size,
                "digest": digest,
                "details": _ollama_details(name),
            }
        )
    return json_reply({"models": models}, go=True)


def _ollama_answer(call: Call, payload: Payload, prompt_key: str, **final: Any) -> Reply:
    """Chat and generate differ only in `payload(content, thinking)`, the per-event body."""
    answer = call.answer
    metrics = _ollama_metrics(call.prompt_tokens(prompt_key), len(answer.pieces))
    done = {"done": True, "done_reason": "stop", **final, **metrics}

    def line(content: str, thinking: str, **rest: Any) -> dict[str, Any]:
        return {"model": call.model, "created_at": go_time(), **payload(content, thinking), **rest}

    if not call.stream(True):
        return json_reply(line(answer.text(), answer.text("reasoning"), **done), go=True)
    lines = [line(*(("", p) if kind == "reasoning" else (p, "")), done=False) for kind, p in answer.pieces]
    return ndjson_reply([*lines, line("", "", **done)])


def _thinking(thinking: str) -> dict[str, str]:
    return {"thinking": thinking} if thinking else {}  # Go's omitempty


def ollama_chat(call: Call) -> Reply:
    def payload(content: str, thinking: str) -> dict[str, Any]:
        return {"message": {"role": "assistant", "content": content, **_thinking(thinking)}}

    return _ollama_answer(call, payload, "messages")


def ollama_generate(call: Call) -> Reply:
    def payload(content: str, thinking: str) -> dict[str, Any]:
        return {"response": content, **_thinking(thinking)}

    return _ollama_answer(call, payload, "prompt", context=list(range(1, len(call.answer.pieces) + 1)))


def ollama_embed(call: Call) -> Reply:
    inputs = _embed_inputs(call.body.get("input"))
    tokens = sum(len(re.findall(r"\w+", t)) for t in inputs)
    body = {
        "model": call.model,
        "embeddings": [_embedding(text) for text in inputs],
        "total_duration": 3_000_000,
        "load_duration": 1_000_000,
        "prompt_eval_count": tokens,
    }
    return json_reply(body, go=True)


def ollama_show(call: Call) -> Reply:
    details = _ollama_details(call.model)
    body = {
        "license": "",
        "modelfile": f"# Modelfile generated by the mock upstream\nFROM {call.model}\n",
        "parameters": "temperature 0.6",
        "template": "{{ .Prompt }}",
        "details": details,
        "model_info": {"general.architecture": details["family"], "general.basename": call.model},
        "capabilities": ["completion", "thinking"],
        "modified_at": "2025-05-01T12:00:00.000000000Z",
    }
    return json_reply(body, go=True)


ROUTES: dict[tuple[str, str], Callable[[Call], Reply]] = {
    ("GET", "/v1/models"): openai_models,
    ("POST", "/v1/chat/completions"): openai_chat,
    ("POST", "/v1/completions"): openai_completions,
    ("POST", "/v1/embeddings"): openai_embeddings,
    ("POST", "/v1/responses"): openai_responses,
    ("GET", "/api/tags"): ollama_tags,
    ("POST", "/api/chat"): ollama_chat,
    ("POST", "/api/generate"): ollama_generate,
    ("POST", "/api/embed"): ollama_embed,
    ("POST", "/api/show"): ollama_show,
    ("POST", "/v1/files"): openai_file_upload,
}
# routes whose path carries a parameter
PATTERN_ROUTES: list[tuple[str, re.Pattern[str], Callable[[Call], Reply]]] = [
    ("GET", re.compile(r"/v1/files/[^/]+/content"), openai_file_content),
]


def route(method: str, path: str) -> Callable[[Call], Reply] | None:
    exact = ROUTES.get((method, path))
    if exact is not None:
        return exact
    return next((builder for m, pattern, builder in PATTERN_ROUTES if m == method and pattern.fullmatch(path)), None)


# ---------------------------------------------------------------------------------------------
# Server state shared with the test thread


class RequestLog:
    """Every API request received, in order; read from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: list[dict[str, Any]] = []

    def add(self, record: dict[str, Any]) -> None:
        with self._lock:
            self._records.append(record)

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(r, headers=dict(r["headers"])) for r in self._records]

    def clear(self) -> None:
        with self._lock:
            self._records.clear()


class Gates:
    """
    Named one-shot barriers that gated streams wait on. Release may come from any thread and
    may precede the wait; use a fresh name per request.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: dict[str, asyncio.Event] = {}
        self._waiting: dict[str, int] = {}
        self._released: set[str] = set()
        self._finished: set[str] = set()

    async def wait(self, name: str) -> None:
        with self._lock:
            if name in self._released:
                return
            event = self._events.setdefault(name, asyncio.Event())
            self._waiting[name] = self._waiting.get(name, 0) + 1
        try:
            await event.wait()
        finally:
            with self._lock:
                self._waiting[name] -= 1

    def release(self, name: str, loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            self._released.add(name)
            event = self._events.get(name)
        if event is not None:
            loop.call_soon_threadsafe(event.set)

    def finish(self, name: str) -> None:
        with self._lock:
            self._finished.add(name)

    def state(self, name: str) -> dict[str, Any]:
        with self._lock:
            return {
                "name": name,
                "waiting": self._waiting.get(name, 0) > 0,
                "released": name in self._released,
                "finished": name in self._finished,
            }


# ---------------------------------------------------------------------------------------------
# Putting replies on the wire


class ReplySender:
    """Writes one reply: encoding knobs (gzip, framing, write size) always, pacing knobs if paced."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, gates: Gates) -> None:
        self._reader = reader
        self._writer = writer
        self._gates = gates

    async def send(self, reply: Reply, options: MockOptions, paced: bool, close: bool) -> bool:
        """False when the connection must not be reused."""
        chunked = reply.stream and not options.content_length
        encoder = BodyEncoder(options.gzip, chunked)
        segments = [
            (encoder.encode(reply.filler) if i else b"") + encoder.encode(event)
            for i, event in enumerate(reply.events)
        ]
        tail = encoder.finish()
        self._writer.write(self._head(reply, options, chunked, sum(map(len, segments)) + len(tail), close))
        await self._writer.drain()
        # Position len(segments) is "before the tail", so a stall/reset can also cut the terminator.
        for sent in range(len(segments) + 1):
            if paced and not await self._pace(sent, reply, options):
                return False
            if sent < len(segments):
                await self._write(segments[sent], options)
        if paced and options.gate:
            self._gates.finish(options.gate)  # before the tail: a client that saw the end sees this
        if paced and options.linger:
            await asyncio.sleep(options.linger)
        await self._write(tail, options)
        return not close

    @staticmethod
    def _head(reply: Reply, options: MockOptions, chunked: bool, length: int, close: bool) -> bytes:
        try:
            phrase = HTTPStatus(reply.status).phrase
        except ValueError:
            phrase = "Unknown"
        headers = [("Content-Type", reply.content_type), ("Date", formatdate(usegmt=True))]
        headers.append(("Transfer-Encoding", "chunked") if chunked else ("Content-Length", str(length)))
        if options.gzip:
            headers.append(("Content-Encoding", "gzip"))
        if reply.stream:
            headers.append(("Cache-Control", "no-cache"))
        if close:
            headers.append(("Connection", "close"))
        lines = [f"HTTP/1.1 {reply.status} {phrase}"] + [f"{k}: {v}" for k, v in headers]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def _pace(self, sent: int, reply: Reply, options: MockOptions) -> bool:
        """Per-event knobs, applied before event number `sent`; False ends the connection."""
        if options.delay and 0 < sent < len(reply.events):
            await asyncio.sleep(options.delay)
        if sent == options.reset:
            self._reset()
            return False
        if sent == options.hang_after:
            await self._stall()
            return False
        if options.gate and sent == reply.gate_after:
            await self._gates.wait(options.gate)
        return True

    async def _write(self, data: bytes, options: MockOptions) -> None:
        size = options.write_bytes or max(len(data), 1)
        for offset in range(0, len(data), size):
            self._writer.write(data[offset : offset + size])  # asyncio send()s at once, TCP_NODELAY on
            await self._writer.drain()
            if options.write_bytes:
                await asyncio.sleep(options.write_pause)

    async def _stall(self) -> None:
        """Sends nothing more until the client hangs up (or HANG_LIMIT passes)."""
        with contextlib.suppress(TimeoutError, ConnectionError):
            await asyncio.wait_for(self._until_eof(), HANG_LIMIT)

    async def _until_eof(self) -> None:
        while await self._reader.read(65536):
            pass

    def _reset(self) -> None:
        """Abort with a TCP RST rather than a clean FIN, like a crashed upstream."""
        sock = self._writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self._writer.transport.abort()


# ---------------------------------------------------------------------------------------------
# The server


class MockUpstream:
    """
    The mock server on 127.0.0.1, running in a background thread with its own event loop so
    synchronous tests (and other processes) can talk to it. `models` may be edited while running.
    """

    def __init__(self, models: Sequence[str] = DEFAULT_MODELS, port: int = 0) -> None:
        self.models = list(models)
        self.port: int | None = None
        self._requested_port = port
        self._log = RequestLog()
        self._gates = Gates()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._startup_error: OSError | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._connections: set[asyncio.Task[None]] = set()

    # lifecycle

    def start(self) -> int:
        if self._thread is not None:
            raise RuntimeError("already started")
        self._ready.clear()
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), name="mock-upstream")
        self._thread.daemon = True
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("mock upstream did not start")
        if self._startup_error is not None:
            self._thread = None
            raise self._startup_error
        assert self.port is not None
        return self.port

    def stop(self) -> None:
        if self._thread is None:
            return
        assert self._loop is not None and self._stopping is not None
        self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(10)
        self._thread = None

    def __enter__(self) -> MockUpstream:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("not started")
        return f"http://127.0.0.1:{self.port}"

    # what tests look at

    @property
    def requests(self) -> list[dict[str, Any]]:
        """Copies of the API requests received so far (not the /_mock/ control calls)."""
        return self._log.snapshot()

    def clear(self) -> None:
        self._log.clear()

    def release(self, name: str) -> None:
        """Lets the stream(s) gated on `name` continue; may be called before they arrive."""
        if self._loop is None:
            raise RuntimeError("not started")
        self._gates.release(name, self._loop)

    def stream_finished(self, name: str) -> bool:
        """True once a stream gated on `name` has written all its events."""
        return self._gates.state(name)["finished"]

    def gate_waiting(self, name: str) -> bool:
        """True while a stream is held at gate `name`."""
        return self._gates.state(name)["waiting"]

    # serving

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        try:
            server = await asyncio.start_server(self._serve_connection, "127.0.0.1", self._requested_port)
        except OSError as exc:
            self._startup_error = exc
            self._ready.set()
            return
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        await self._stopping.wait()
        server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        await server.wait_closed()

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        sender = ReplySender(reader, writer, self._gates)
        try:
            while True:
                try:
                    request = await read_request(reader, writer)
                except BadRequest as exc:
                    await sender.send(error_reply("/", 400, f"bad request: {exc}"), MockOptions(), False, True)
                    break
                if request is None or not await self._answer(request, sender):
                    break
        except ConnectionError:
            pass
        except asyncio.CancelledError:
            pass  # stop(): end normally, as 3.11's stream callback logs cancelled handler tasks
        finally:
            self._connections.discard(task)
            writer.close()

    async def _answer(self, request: Request, sender: ReplySender) -> bool:
        """Answers one request; False when the connection must close."""
        close = not request.keep_alive
        if request.path.startswith("/_mock/"):
            return await sender.send(self._control(request), MockOptions(), False, close)
        self._log.add(request.record())
        try:
            options = MockOptions.from_headers(request.headers)
        except (ValueError, TypeError) as exc:
            error = error_reply(request.path, 400, f"bad x-mock header: {exc}")
            return await sender.send(error, MockOptions(), False, close)
        if options.hang:
            await asyncio.sleep(options.hang)
        reply, paced = self._reply(request, options)
        return await sender.send(reply, options, paced, close)

    def _reply(self, request: Request, options: MockOptions) -> tuple[Reply, bool]:
        """The reply and whether the pacing knobs apply to it (only to real API answers)."""
        path = request.path
        if options.status is not None:
            return error_reply(path, options.status, f"mock upstream error {options.status}"), False
        if options.garbage:
            return Reply(200, OPENAI_JSON_TYPE, [GARBAGE_BODY]), False
        builder = route(request.method, path)
        if builder is None:
            return error_reply(path, 404, f"unknown endpoint {request.method} {path}"), False
        try:
            return builder(Call(request, options, self.models)), True
        except (ValueError, TypeError) as exc:
            return error_reply(path, 400, str(exc)), False

    def _control(self, request: Request) -> Reply:
        """/_mock/ endpoints, for users in other processes."""
        assert self._loop is not None
        method, path = request.method, request.path
        if path == "/_mock/requests" and method == "GET":
            records = [dict(r, body=r["body"].decode("utf-8", "replace")) for r in self._log.snapshot()]
            return json_reply(records)
        if path == "/_mock/requests" and method == "DELETE":
            self._log.clear()
            return json_reply({"cleared": True})
        name = path.rsplit("/", 1)[1]
        if path.startswith("/_mock/release/") and method == "POST":
            self._gates.release(name, self._loop)
            return json_reply(self._gates.state(name))
        if path.startswith("/_mock/state/") and method == "GET":
            return json_reply(self._gates.state(name))
        return error_reply(path, 404, f"unknown control endpoint {method} {path}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Mock OpenAI/Ollama upstream on 127.0.0.1.")
    parser.add_argument("--port", type=int, default=0, help="0 (default) picks a free port")
    parser.add_argument("--model", action="append", dest="models", help="a model to list (repeatable)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_signal)
    with MockUpstream(args.models or DEFAULT_MODELS, port=args.port) as upstream:
        print(f"listening on {upstream.url}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(0)


if __name__ == "__main__":
    main()
