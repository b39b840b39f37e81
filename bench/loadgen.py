"""
The benchmark's load generator: asyncio and raw HTTP/1.1 over persistent connections.

Real clients (openai, httpx) spend more CPU per request than the proxy under test, so they would
measure themselves. This one writes pre-built request bytes, reads the response with the fewest
awaits it can, and parses a stream only until it has seen the first token of the answer; after
that it just de-chunks to the end. It is the same code for every target, so ratios are fair.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field
from typing import Any

READ_SIZE = 65536
Progress = list[tuple[float, int]]  # (perf_counter, body bytes so far), for memory-over-transfer plots


@dataclass(frozen=True)
class Request:
    """A request as it goes on the wire, and how to read its answer ("json", "binary", "sse" or "ndjson")."""

    wire: bytes
    kind: str

    @classmethod
    def post(cls, host: str, path: str, body: dict[str, Any], headers: dict[str, str], kind: str) -> Request:
        return cls.make("POST", host, path, headers, kind, json.dumps(body).encode(), "application/json")

    @classmethod
    def upload(cls, host: str, path: str, content: bytes, headers: dict[str, str]) -> Request:
        """A binary body, as a file upload sends it; the answer is JSON."""
        return cls.make("POST", host, path, headers, "json", content, "application/octet-stream")

    @classmethod
    def get(cls, host: str, path: str, headers: dict[str, str], kind: str) -> Request:
        return cls.make("GET", host, path, headers, kind)

    @classmethod
    def make(
        cls, method: str, host: str, path: str, headers: dict[str, str], kind: str, payload: bytes = b"", content_type: str = ""
    ) -> Request:
        lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
        lines += [f"Content-Type: {content_type}"] if content_type else []
        lines += [f"{name}: {value}" for name, value in headers.items()]
        lines.append(f"Content-Length: {len(payload)}")
        return cls(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload, kind)

    @classmethod
    def delete(cls, host: str, path: str) -> Request:
        return cls.make("DELETE", host, path, {}, "json")


@dataclass
class Outcome:
    """One request: seconds from sending to the last body byte, and to the first answer token."""

    ok: bool
    latency: float
    ttft: float | None = None
    body_bytes: int = 0
    error: str | None = None


def answer_started(text: str) -> bool:
    """
    Whether `text` (the content so far) holds a character of the answer proper.

    A leading <think> block is not the answer: through a proxy that does not strip it, the
    first answer token is the first non-blank one after </think>. A bare prefix of "<think>"
    is not known yet either way.
    """
    s = text.lstrip()
    if s.startswith("<think>"):
        end = s.find("</think>")
        return end >= 0 and bool(s[end + len("</think>") :].strip())
    return bool(s) and not "<think>".startswith(s)


def _event_text(obj: Any) -> str:
    """The answer text an OpenAI chunk or an Ollama line carries (reasoning fields ignored)."""
    if not isinstance(obj, dict):
        return ""
    text = ""
    for choice in obj.get("choices") or ():
        delta = choice.get("delta") or {}
        text += delta.get("content") or choice.get("text") or ""
    message = obj.get("message")
    if isinstance(message, dict):
        text += message.get("content") or ""
    return text + (obj.get("response") or "")


class AnswerWatcher:
    """Parses SSE `data:` lines or NDJSON lines until the answer's first token has arrived."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.found = kind not in ("sse", "ndjson")  # a plain answer has no first token to wait for
        self._buffer = b""
        self._text = ""

    def feed(self, data: bytes) -> bool:
        """True exactly once: when `data` completes the first answer token."""
        if self.found:
            return False
        *lines, self._buffer = (self._buffer + data).split(b"\n")
        for line in lines:
            if self.kind == "sse":
                if not line.startswith(b"data:"):
                    continue
                line = line[5:].strip()
                if line == b"[DONE]":
                    continue
            if line.strip():
                self._text += _event_text(json.loads(line))
                if answer_started(self._text):
                    self.found = True
                    return True
        return False


class ConnectionClosed(Exception):
    """The server closed the connection: reconnect before the next request."""


class Connection:
    """One keep-alive client connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.reusable = True

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        reader, writer = await asyncio.open_connection(host, port, limit=READ_SIZE * 4)
        return cls(reader, writer)

    def close(self) -> None:
        self.writer.close()

    async def exchange(self, request: Request, progress: Progress | None = None) -> Outcome:
        """Sends one request and reads its whole answer."""
        started = time.perf_counter()
        self.writer.write(request.wire)
        status, headers = await self.read_head()
        watcher = AnswerWatcher(request.kind)
        ttft: float | None = None
        size = 0
        async for data in self.read_body(headers):
            size += len(data)
            if watcher.feed(data):
                ttft = time.perf_counter() - started
            if progress is not None:
                progress.append((time.perf_counter(), size))
        latency = time.perf_counter() - started
        self.reusable = "close" not in headers.get("connection", "").lower()
        if status != 200:
            return Outcome(False, latency, None, size, f"HTTP {status}")
        if not watcher.found:
            return Outcome(False, latency, None, size, "no answer token in the stream")
        return Outcome(True, latency, ttft, size)

    async def read_head(self) -> tuple[int, dict[str, str]]:
        line = await self.reader.readline()
        if not line:
            raise ConnectionClosed("connection closed before the response")
        status = int(line.split()[1])
        headers: dict[str, str] = {}
        while (line := await self.reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        return status, headers

    async def read_body(self, headers: dict[str, str]):
        """The body's bytes as they arrive (de-chunked)."""
        reader = self.reader
        if "chunked" in headers.get("transfer-encoding", "").lower():
            while size := int((await reader.readline()).split(b";")[0], 16):
                yield await reader.readexactly(size)
                await reader.readexactly(2)
            while await reader.readline() not in (b"\r\n", b"\n", b""):  # trailers
                pass
        elif "content-length" in headers:
            left = int(headers["content-length"])
            while left:
                data = await reader.read(min(left, READ_SIZE))
                if not data:
                    raise ConnectionClosed("body cut short")
                left -= len(data)
                yield data
        else:
            self.reusable = False
            while data := await reader.read(READ_SIZE):
                yield data


@dataclass
class LoadResult:
    """Every request's outcome and the wall time from the first request to the last answer."""

    outcomes: list[Outcome] = field(default_factory=list)
    wall: float = 0.0

    @property
    def succeeded(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.ok]

    @property
    def errors(self) -> list[str]:
        return [o.error or "?" for o in self.outcomes if not o.ok]


async def run_load(
    host: str,
    port: int,
    request: Request,
    count: int,
    concurrency: int,
    progress: Progress | None = None,
    timeout: float = 300.0,
) -> LoadResult:
    """
    `count` requests from `concurrency` workers, one persistent connection each.

    The connections are opened before the clock starts, so the figures are about requests, not
    TCP handshakes; a connection the server closes is reopened inside the measurement.
    """
    concurrency = max(1, min(concurrency, count))
    connections = await asyncio.gather(*(Connection.open(host, port) for _ in range(concurrency)))
    result = LoadResult()
    remaining = count

    def take() -> bool:
        nonlocal remaining
        remaining -= 1
        return remaining >= 0

    async def worker(conn: Connection) -> None:
        while take():
            started = time.perf_counter()
            try:
                if not conn.reusable:
                    conn.close()
                    conn = await Connection.open(host, port)
                result.outcomes.append(await conn.exchange(request, progress))
            except (OSError, EOFError, ValueError, IndexError, ConnectionClosed, asyncio.IncompleteReadError) as exc:
                result.outcomes.append(Outcome(False, time.perf_counter() - started, error=repr(exc)))
                conn.reusable = False
        conn.close()

    started = time.perf_counter()
    try:
        await asyncio.wait_for(asyncio.gather(*(worker(c) for c in connections)), timeout)
    finally:
        result.wall = time.perf_counter() - started
        for conn in connections:
            conn.close()
    return result


def run_in_loop(factory: Callable[[], Any]) -> Any:
    """Runs one coroutine to completion in a fresh event loop (one per workload run)."""
    return asyncio.run(factory())


async def fetch(host: str, port: int, request: Request) -> tuple[int, bytes]:
    """One request on a fresh connection; the status and the whole de-chunked body (for checks)."""
    conn = await Connection.open(host, port)
    try:
        conn.writer.write(request.wire)
        status, headers = await conn.read_head()
        body = b"".join([data async for data in conn.read_body(headers)])
        return status, body
    finally:
        conn.close()
