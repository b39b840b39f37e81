"""
What the test modules share; fixtures are in conftest.py, the mock upstream in upstream.py,
rerouter processes in proxy.py.

- waiting for an outcome: `wait_for`, `wait_for_async`;
- flows as mitmproxy's hooks see them, for unit tests: `reverse_flow`, `json_response`, `chat_chunk`,
  `start`, `logged_addons`, `dashboard_addons`, and the log's row for a flow: `stored`;
- a running rerouter (or the mock itself) driven as clients drive it: `post`, `get`, `open_stream`,
  `http_request`, `openai_client`, `ollama_client`, and its log read through the JSON API:
  `row_for`, `rows_with`;
- streams as a server sends them, for unit tests: `sse`, `chunked`, `run`, `streamed`, `openai_events`,
  `usage_event`, `ollama_line`;
- the request log's rows, for store tests: `request`, `total`, `SECRET`, `SECRET_HEADERS`, `SECRET_PATH`,
  and the PostgreSQL log past the store: `sql`, `silence`;
- an upstream for what no real server sends: `ScriptedUpstream`, `sse_response`, `chunk_event`;
  the proxy's peak memory: `rss_peak_mb`;
- what a streamed answer said: `data_objects`, `sse_text`, `ndjson_text`, `openai_stream`, `ollama_stream`.
"""

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable
from collections.abc import Iterator
from datetime import datetime
from datetime import timezone
from http.client import HTTPConnection
from http.client import HTTPResponse
from pathlib import Path
from typing import Any
from typing import TypeVar

import ollama
import openai
import psycopg
from mitmproxy import http
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import taddons
from mitmproxy.test import tflow
from mitmproxy.test import tutils

from dashboard import Dashboard
from logstore import LogStore
from rerouter.framing import EventStream
from rerouter.metrics import Metrics
from rerouter.requestlog import RequestLog
from rerouter.rules import Rules
from rerouter.settings import Settings
from tests.upstream import mock_headers

T = TypeVar("T")
POLL_SECONDS = 0.02
UPSTREAM = "http://127.0.0.1:8000"
"""Where unit-test flows are headed, as reverse mode aims them."""


# ---- waiting for an outcome ---------------------------------------------------------------------


def wait_for(check: Callable[[], T], timeout: float = 10.0, message: str | Callable[[], str] = "condition not met in time") -> T:
    """
    Calls `check` until it returns something true and returns that; fails after `timeout`
    seconds with `message` (or what a `message` function says then).
    """
    deadline = time.monotonic() + timeout
    while not (result := check()):
        if time.monotonic() > deadline:
            raise AssertionError(message() if callable(message) else message)
        time.sleep(POLL_SECONDS)
    return result


async def wait_for_async(check: Callable[[], T], timeout: float = 10.0) -> T:
    """`wait_for` in a test running on the event loop, which goes on while it waits."""
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(POLL_SECONDS)
    return result


# ---- unit tests: flows as the hooks see them ----------------------------------------------------


def reverse_flow(
    path: str = "/v1/chat/completions",
    body: object = None,
    method: str = "POST",
    content: bytes | None = None,
) -> http.HTTPFlow:
    """A live flow as it reaches the hooks in reverse mode: aimed at UPSTREAM, Host rewritten."""
    flow = tflow.tflow()
    flow.client_conn.proxy_mode = ProxyMode.parse(f"reverse:{UPSTREAM}")
    if content is None:
        content = b"" if body is None else json.dumps(body).encode()
    flow.request = tutils.treq(
        method=method.encode(),
        host="127.0.0.1",
        port=8000,
        path=path.encode(),
        headers=http.Headers(host="127.0.0.1:8000", content_type="application/json"),
        content=content,
    )
    return flow


def chat_chunk(content=None, index=0, finish_reason=None, **delta) -> dict:
    """An OpenAI `chat.completion.chunk` as a streaming server sends it."""
    if content is not None:
        delta["content"] = content
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "qwen3",
        "choices": [{"index": index, "delta": delta, "finish_reason": finish_reason}],
    }


def json_response(body: object, status: int = 200, content_type: str = "application/json") -> http.Response:
    return http.Response.make(status, json.dumps(body), {"content-type": content_type})


def start(tctx, *addons) -> None:
    """What mitmproxy does once a script is loaded: configure with every option."""
    for addon in addons:
        addon.configure(set(tctx.options.keys()))


@contextlib.contextmanager
def logged_addons(settings_env, tmp_path, **env) -> Iterator[tuple[taddons.context, Settings, RequestLog, Dashboard]]:
    """(tctx, settings, request log, Dashboard) as the script wires them, on a log in tmp_path, with `env` set."""
    settings_env.setenv("DB_PATH", str(tmp_path / "log.db"))
    for name, value in env.items():
        settings_env.setenv(name, value)
    s = Settings()
    log = RequestLog(s)
    dash = Dashboard(s, log, Rules(s, log), Metrics(log))
    with taddons.context(s, dash, log) as tctx:
        start(tctx, s, log)
        yield tctx, s, log, dash
        dash.done()
        log.done()


@contextlib.contextmanager
def dashboard_addons(settings_env, tmp_path, **env) -> Iterator[Dashboard]:
    """The Dashboard of `logged_addons`."""
    with logged_addons(settings_env, tmp_path, **env) as (_, _, _, dash):
        yield dash


def stored(log: RequestLog, flow_id: str, state: str = "completed") -> dict:
    """The request log's row for a flow, once it is in the database with `state`."""

    def check():
        row = log.store.get(flow_id)
        return row if row is not None and row["state"] == state else None

    return wait_for(check)


# ---- streams as a server sends them, for unit tests ------------------------------------------------

USAGE = {"prompt_tokens": 12, "completion_tokens": 30, "total_tokens": 42}


def sse(obj: dict | str, newline: str = "\n") -> bytes:
    """One SSE event carrying `obj` as JSON (a string as it is, e.g. "[DONE]")."""
    data = obj if isinstance(obj, str) else json.dumps(obj)
    return f"data: {data}{newline}{newline}".encode()


def chunked(data: bytes, sizes: list[int]) -> list[bytes]:
    """data cut into pieces of the given sizes, cycling through them."""
    pieces = []
    pos = 0
    i = 0
    while pos < len(data):
        size = sizes[i % len(sizes)] if sizes else len(data)
        pieces.append(data[pos : pos + size])
        pos += size
        i += 1
    return pieces


def run(stream: EventStream, pieces: list[bytes]) -> list[bytes]:
    """Feeds pieces and the final b"", checking mitmproxy's contract on every call."""
    output = []
    for piece in [*pieces, b""]:
        result = stream(piece)
        assert isinstance(result, list)
        assert all(isinstance(element, bytes) and element for element in result)
        output += result
    return output


def streamed(flow: http.HTTPFlow, body: bytes, chunk: int = 7) -> bytes:
    """Feed `body` through the flow's stream callable the way mitmproxy does: reads, then b""."""
    out = []
    for i in range(0, len(body), chunk):
        out += flow.response.stream(body[i : i + chunk])
    out += flow.response.stream(b"")
    assert all(out), "an empty element would end the client's chunked response"
    return b"".join(out)


def usage_event(**usage) -> dict:
    """The usage-only chunk that ends an OpenAI stream that asked for usage."""
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "qwen3", "choices": [], "usage": usage or USAGE}


def openai_events(*contents: str, usage: bool = True) -> list[bytes]:
    """An OpenAI stream as a server sends it when asked for usage: `usage: null` on every chunk, then the usage event."""
    chunks = [chat_chunk(role="assistant", content=""), *(chat_chunk(text) for text in contents), chat_chunk(finish_reason="stop")]
    if usage:
        chunks = [{**chunk, "usage": None} for chunk in chunks] + [usage_event()]
    return [sse(chunk) for chunk in chunks] + [sse("[DONE]")]


def ollama_line(content: str = "", thinking: str = "", done: bool = False, **counts) -> bytes:
    """One NDJSON line of an Ollama chat stream."""
    message = {"role": "assistant", "content": content, **({"thinking": thinking} if thinking else {})}
    return json.dumps({"model": "qwen3", "message": message, "done": done, **counts}).encode() + b"\n"


# ---- the request log's rows, for store tests ---------------------------------------------------------

SECRET = "sk-live-S3CR3T-do-not-log"
"""A key that store tests send in every place secrets travel, and then look for where nothing may keep it."""
NOW = datetime(2026, 11, 21, 11, 20, tzinfo=timezone.utc).timestamp()
SECRET_HEADERS = [
    ("Authorization", f"Bearer {SECRET}"),
    ("proxy-authorization", f"Basic {SECRET}"),
    ("Cookie", f"session={SECRET}"),
    ("Set-Cookie", f"session={SECRET}"),
    ("X-API-Key", SECRET),
    ("api-key", SECRET),
    ("x-goog-api-key", SECRET),
    ("Ocp-Apim-Subscription-Key", SECRET),
    ("X-Auth-Token", SECRET),
    ("Content-Type", "application/json"),
]
SECRET_PATH = f"/v1beta/models/gemini:generateContent?key={SECRET}&alt=sse&api_key={SECRET}&Access_Token={SECRET}"


def request(id: str, started_at: float = NOW, **fields) -> dict:
    """A request's row as the request log hands it to LogStore.begin, with `fields` changed."""
    row = {
        "id": id,
        "started_at": started_at,
        "method": "POST",
        "path": "/v1/chat/completions",
        "service": "openai",
        "upstream": "http://127.0.0.1:8000",
        "stream": False,
        "requested_model": "gpt-4o",
        "routed_model": "qwen3:8b",
        "request_headers": [("Content-Type", "application/json")],
        "request_body": b'{"model": "gpt-4o"}',
        "request_bytes": 19,
    }
    row.update(fields)
    return row


def total(store: LogStore, **filters) -> int:
    """How many rows match the filters."""
    return store.logs(**filters)[1]


def sql(url: str, statement: str, params=()) -> list[tuple]:
    """A statement run straight on a PostgreSQL database, past the store; its rows."""
    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(statement, params)
        return cursor.fetchall() if cursor.description else []


def silence(url: str, instance: str, seconds: float) -> None:
    """As if `instance` had sent no heartbeat for `seconds`: waiting 30 s for real would only slow the tests."""
    sql(url, "UPDATE replicas SET heartbeat_at = now() - make_interval(secs => %s) WHERE name = %s", (seconds, instance))


# ---- end to end: a running rerouter, or the mock itself (anything with a `port`) --------------------


def http_request(path: str, body: bytes | dict, **mock) -> bytes:
    """A POST of `body` (JSON unless bytes) with the mock's knobs, as bytes, for a test that holds the socket."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Host": "x", "Content-Type": "application/json", **mock_headers(**mock), "Content-Length": str(len(raw))}
    head = f"POST {path} HTTP/1.1\r\n" + "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    return (head + "\r\n").encode() + raw


def open_stream(server, path: str, body: bytes | dict, timeout: float = 30, **mock) -> HTTPResponse:
    """POST `body` (JSON unless bytes) with the mock's knobs; the response comes unread, to read as it streams."""
    conn = HTTPConnection("127.0.0.1", server.port, timeout=timeout)
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    conn.request("POST", path, raw, {"content-type": "application/json", **mock_headers(**mock)})
    return conn.getresponse()


def post(server, path: str, body: bytes | dict, timeout: float = 30, **mock) -> tuple[int, bytes]:
    """The status and the whole body of the answer to `open_stream`'s request."""
    response = open_stream(server, path, body, timeout, **mock)
    return response.status, response.read()


def get(server, path: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """The status and the body: parsed when it is JSON, else bytes."""
    conn = HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", path, headers=headers or {})
    response = conn.getresponse()
    body = response.read()
    return response.status, json.loads(body) if response.headers.get("content-type", "").startswith("application/json") else body


def row_for(proxy, path: str, state: str | None = None) -> dict:
    """The newest row for `path` once it has left the in-flight state (or reached `state`)."""

    def check():
        rows = get(proxy, "/api/logs?limit=500")[1]["logs"]
        for row in rows:
            if row["path"] == path and (row["state"] == state if state else row["state"] != "inflight"):
                return row
        return None

    return wait_for(check)


def rows_with(proxy, marker: str) -> list[dict]:
    """The rows whose path or bodies hold `marker`, newest first, once none of them is in flight."""

    def check():
        found = get(proxy, f"/api/logs?q={marker}")[1]["logs"]
        return found if found and all(row["state"] != "inflight" for row in found) else None

    return wait_for(check, message=f"no finished row for {marker}")


def openai_client(proxy, api_key: str = "sk-test", **mock) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{proxy.url}/v1", api_key=api_key, default_headers=mock_headers(**mock), max_retries=0, timeout=30)


def ollama_client(proxy, **mock) -> ollama.Client:
    return ollama.Client(host=proxy.url, headers=mock_headers(**mock), timeout=30)


# ---- an upstream that plays raw bytes, and the proxy's memory ------------------------------------


class ScriptedUpstream:
    """An upstream that answers every request with the bytes a test script yields: for what no real server sends."""

    def __init__(self, script: Callable[[], Iterator[bytes]]) -> None:
        self.script = script
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                head += conn.recv(65536)
            length = next((int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")), 0)
            body = head.split(b"\r\n\r\n", 1)[1]
            while len(body) < length:
                body += conn.recv(1 << 20)
            try:
                for piece in self.script():
                    conn.sendall(piece)
            except OSError:
                pass

    def close(self) -> None:
        self.server.close()


def sse_response(events: Iterator[bytes]) -> Iterator[bytes]:
    """A ScriptedUpstream script: an SSE answer, chunked, of these events."""
    yield b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    for event in events:
        yield b"%x\r\n%s\r\n" % (len(event), event)
    yield b"0\r\n\r\n"


def chunk_event(content: str) -> bytes:
    """One SSE event of a chat stream, as bytes."""
    event = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}]}
    return b"data: " + json.dumps(event).encode() + b"\n\n"


def rss_peak_mb(proxy) -> float:
    """The peak resident memory of a rerouter process so far (VmHWM)."""
    status = Path(f"/proc/{proxy.process.pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM"))) / 1024


# ---- what a streamed answer said --------------------------------------------------------------------


def sse_events(raw: bytes) -> list[bytes]:
    raw = raw.replace(b"\r\n", b"\n")
    assert not raw or raw.endswith(b"\n\n"), raw[-80:]
    return [e for e in raw.split(b"\n\n") if e]


def data_objects(raw: bytes) -> list:
    """The JSON of each SSE event's data, and "[DONE]" for the end marker."""
    objects = []
    for event in sse_events(raw):
        data = [line[5:].strip() for line in event.split(b"\n") if line.startswith(b"data:")]
        if data:
            objects.append("[DONE]" if data == [b"[DONE]"] else json.loads(b"\n".join(data)))
    return objects


def sse_text(raw: bytes, index: int = 0) -> str:
    """The text of choice `index` in an OpenAI chat or completions stream."""
    return "".join(
        c.get("delta", {}).get("content") or c.get("text") or ""
        for o in data_objects(raw)
        if o != "[DONE]"
        for c in o["choices"]
        if c["index"] == index
    )


def ndjson_objects(raw: bytes) -> list[dict]:
    return [json.loads(line) for line in raw.splitlines()]


def ndjson_text(raw: bytes) -> str:
    """The text of an Ollama chat or generate stream, which must have ended with `done`."""
    lines = ndjson_objects(raw)
    assert lines[-1]["done"] is True
    return "".join(line.get("response") or line.get("message", {}).get("content", "") for line in lines)


def openai_stream(stream) -> tuple[str, str, set[str]]:
    """Content, reasoning_content and the model names of a streamed chat answer, as the openai client parsed them."""
    content, reasoning, models = "", "", set()
    for chunk in stream:
        models.add(chunk.model)
        for choice in chunk.choices:
            content += choice.delta.content or ""
            reasoning += getattr(choice.delta, "reasoning_content", None) or ""
    return content, reasoning, models


def ollama_stream(parts) -> tuple[str, str, set[str]]:
    """Content, thinking and the model names of a streamed chat or generate answer, as the ollama client parsed them."""
    content, thinking, models = "", "", set()
    for part in parts:
        models.add(part.model)
        message = getattr(part, "message", None)
        content += (message.content if message else part.response) or ""
        thinking += (message.thinking if message else part.thinking) or ""
    return content, thinking, models
