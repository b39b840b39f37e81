"""
Bounded memory through a real rerouter process: compressed bodies, huge bodies, streams without
frame ends and a log that cannot write. Each test reads the proxy's peak RSS (VmHWM) after a
warm-up request and again after the load, and prints both, so a run shows the figures.
"""

import base64
import gzip
import hashlib
import http.client
import json
import random
import socket
import sqlite3
import time
import uuid
import zlib
from collections.abc import Iterator

import openai
import pytest

from tests.test_faults_e2e import ScriptedUpstream
from tests.test_faults_e2e import chunk_event
from tests.test_faults_e2e import post
from tests.test_faults_e2e import rss_peak_mb
from tests.test_faults_e2e import sse_response
from tests.test_requestlog_e2e import get
from tests.test_requestlog_e2e import wait_for
from tests.test_streams_e2e import sse_text
from tests.upstream import file_bytes
from tests.upstream import mock_headers

MIB = 1024 * 1024
CHAT = {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}
ANSWER = "Hello world, this is the answer."
BIG_FILE = 50_000_000
SMALL_FILE = 100_000


def gzip_bomb(prefix: bytes, size: int, suffix: bytes) -> bytes:
    """`prefix`, `size` bytes of "a" and `suffix`, gzip-compressed about 1000:1 without ever being held whole."""
    compressor = zlib.compressobj(9, wbits=31)
    parts = [compressor.compress(prefix)]
    piece = b"a" * MIB
    for _ in range(size // MIB):
        parts.append(compressor.compress(piece))
    parts.append(compressor.compress(suffix) + compressor.flush())
    return b"".join(parts)


def exchange(proxy, method: str, path: str, body: bytes = b"", headers: dict | None = None, timeout: float = 60):
    """(status, headers, sha256 of the body as it came, its length): bodies of any size, read 1 MiB at a time."""
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=timeout)
    conn.request(method, path, body, headers or {})
    response = conn.getresponse()
    digest, size = hashlib.sha256(), 0
    while chunk := response.read(MIB):
        digest.update(chunk)
        size += len(chunk)
    conn.close()
    return response.status, response.headers, digest.hexdigest(), size


class Peak:
    """The proxy's peak RSS before and after what the `with` block does."""

    def __init__(self, proxy, what: str) -> None:
        self.proxy, self.what = proxy, what

    def __enter__(self) -> "Peak":
        self.before = rss_peak_mb(self.proxy)
        return self

    def __exit__(self, *exc_info) -> None:
        self.after = rss_peak_mb(self.proxy)
        print(f"{self.what}: peak RSS {self.before:.0f} MB before, {self.after:.0f} MB after (+{self.growth:.0f} MB)")

    @property
    def growth(self) -> float:
        return self.after - self.before


def finished_row(proxy, path: str, count: int) -> dict:
    """The newest row for `path` once `count` rows for it have finished (the warm-up's included)."""

    def check():
        rows = [row for row in get(proxy, "/api/logs?limit=50")[1]["logs"] if row["path"] == path]
        return len(rows) == count and all(row["state"] != "inflight" for row in rows) and rows[0]

    return wait_for(check, 20)


@pytest.fixture(scope="module")
def proxy(module_rerouter):
    return module_rerouter("python")


@pytest.fixture
def fresh(rerouter):
    """A rerouter of its own, warmed up, for a test whose peak RSS must not include what others did."""
    proxy = rerouter("python")
    status, raw = post(proxy, "/v1/chat/completions", CHAT)
    assert status == 200
    return proxy


class ScriptedProxy:
    """A rerouter whose OpenAI upstream answers the first request normally and every later one with `script`."""

    def __init__(self, rerouter, script) -> None:
        self.calls = 0
        self.script = script
        self.upstream = ScriptedUpstream(self._answer)
        self.proxy = rerouter("python", {"UPSTREAM_URL": self.upstream.url})
        status, raw = post(self.proxy, "/v1/chat/completions", {**CHAT, "stream": True})
        assert status == 200 and sse_text(raw) == "warm", raw[:200]

    def _answer(self) -> Iterator[bytes]:
        self.calls += 1
        if self.calls == 1:
            return sse_response(iter([chunk_event("warm"), b"data: [DONE]\n\n"]))
        return self.script()

    def close(self) -> None:
        self.upstream.close()


@pytest.fixture
def scripted(rerouter):
    """scripted(script) -> a warmed-up rerouter whose upstream then plays `script` (a function returning bytes pieces)."""
    started = []

    def start(script):
        started.append(ScriptedProxy(rerouter, script))
        return started[-1].proxy

    yield start
    for scripted_proxy in started:
        scripted_proxy.close()


class TestCompressedBodies:
    def test_gzip_bomb_request_is_forwarded_untouched_without_inflating_it(self, fresh, openai_upstream):
        marker = uuid.uuid4().hex
        prefix = json.dumps({**CHAT, "messages": [{"role": "user", "content": marker}]})[:-1].encode() + b', "pad": "'
        bomb = gzip_bomb(prefix, 400 * MIB, b'"}')
        with Peak(fresh, f"{len(bomb) // 1024} KiB gzip request of 400 MiB") as peak:
            status, _, _, _ = exchange(
                fresh, "POST", "/v1/chat/completions", bomb, {"content-type": "application/json", "content-encoding": "gzip"}
            )
        assert status == 200
        assert peak.growth < 64
        sent = openai_upstream.requests[-1]
        assert sent["body"] == bomb, "the body too big to decode goes upstream as it came"
        assert sent["headers"]["content-encoding"] == "gzip"
        row = finished_row(fresh, "/v1/chat/completions", 2)
        detail = get(fresh, f"/api/logs/{row['id']}")[1]
        assert detail["request_body"].startswith(prefix.decode()) and "truncated" in detail["request_body"]
        assert len(detail["request_body"]) < 300_000

    def test_gzip_json_request_is_still_rewritten(self, proxy, openai_upstream):
        body = gzip.compress(json.dumps(CHAT).encode())
        status, _, _, _ = exchange(
            proxy, "POST", "/v1/chat/completions", body, {"content-type": "application/json", "content-encoding": "gzip"}
        )
        assert status == 200
        sent = openai_upstream.requests[-1]
        assert json.loads(gzip.decompress(sent["body"]))["model"] == "llama3-70b"

    def test_gzip_bomb_answer_passes_unchanged_without_inflating_it(self, scripted):
        bomb = gzip_bomb(b'{"choices": [{"index": 0, "message": {"role": "assistant", "content": "<think>', 400 * MIB, b'</think>ok"}}]}')

        def answer():
            yield (
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n"
                + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(bomb)
            )
            yield bomb

        proxy = scripted(answer)
        with Peak(proxy, f"{len(bomb) // 1024} KiB gzip answer of 400 MiB") as peak:
            status, headers, digest, size = exchange(proxy, "POST", "/v1/chat/completions", json.dumps(CHAT).encode())
        assert status == 200 and headers["content-encoding"] == "gzip"
        assert (digest, size) == (hashlib.sha256(bomb).hexdigest(), len(bomb)), "passed on as it came"
        assert peak.growth < 64
        assert finished_row(proxy, "/v1/chat/completions", 2)["state"] == "completed"

    def test_gzip_json_answer_is_still_stripped(self, proxy):
        client = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="sk-test", max_retries=0, default_headers=mock_headers(gzip=True))
        answer = client.chat.completions.create(**CHAT)
        assert answer.choices[0].message.content == ANSWER
        assert answer.model == "llama3-70b"


def no_frame_stream(size: int, compress: bool = False) -> Iterator[bytes]:
    """An SSE answer of `size` bytes that never ends an event: one endless `data:` line of base64 text."""
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n"
    yield head + (b"Content-Encoding: gzip\r\n\r\n" if compress else b"\r\n")
    compressor = zlib.compressobj(1, wbits=31) if compress else None
    for piece in no_frame_pieces(size):
        if compressor:
            piece = compressor.compress(piece) + compressor.flush(zlib.Z_SYNC_FLUSH)
        yield b"%x\r\n%s\r\n" % (len(piece), piece)
    if compressor:
        tail = compressor.flush()
        yield b"%x\r\n%s\r\n" % (len(tail), tail)
    yield b"0\r\n\r\n"


def no_frame_pieces(size: int) -> Iterator[bytes]:
    yield b'data: {"choices": [{"index": 0, "delta": {"content": "'
    text = base64.b64encode(random.Random(1).randbytes(48 * 1024))  # 64 KiB; gzip makes it about 3/4 of that
    for _ in range(size // len(text)):
        yield text


def no_frame_digest(size: int) -> tuple[str, int]:
    digest, length = hashlib.sha256(), 0
    for piece in no_frame_pieces(size):
        digest.update(piece)
        length += len(piece)
    return digest.hexdigest(), length


@pytest.mark.slow
class TestStreamsWithoutFrames:
    """The framer and the decompressor hold at most a bounded amount; past it the stream passes on unedited."""

    @pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
    def test_64_mib_without_a_blank_line_passes_through(self, scripted, compress):
        size = 64 * MIB
        proxy = scripted(lambda: no_frame_stream(size, compress))
        with Peak(proxy, f"64 MiB SSE without frame end ({'gzip' if compress else 'plain'})") as peak:
            status, headers, digest, length = exchange(proxy, "POST", "/v1/chat/completions", json.dumps(CHAT).encode())
        assert status == 200
        assert "content-encoding" not in headers, "decoded on the way, as every edited stream"
        assert (digest, length) == no_frame_digest(size), "every byte arrives, in order"
        assert peak.growth < 64
        proxy.wait_for_output("stream passed on unedited")

    def test_gzip_bomb_stream_is_cut(self, scripted):
        bomb = gzip_bomb(b"data: ", 300 * MIB, b"\n\n")

        def answer():
            yield (
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Encoding: gzip\r\n"
                + b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            )
            for offset in range(0, len(bomb), 65536):
                piece = bomb[offset : offset + 65536]
                yield b"%x\r\n%s\r\n" % (len(piece), piece)
            yield b"0\r\n\r\n"

        proxy = scripted(answer)
        with Peak(proxy, f"{len(bomb) // 1024} KiB gzip SSE of 300 MiB") as peak:
            try:
                exchange(proxy, "POST", "/v1/chat/completions", json.dumps(CHAT).encode())
            except http.client.IncompleteRead:
                pass  # a cut stream may end without its last chunk
        assert peak.growth < 64
        proxy.wait_for_output("stream cut")
        assert finished_row(proxy, "/v1/chat/completions", 2)["state"] in ("completed", "error")


@pytest.mark.slow
def test_locked_log_with_a_burst_of_big_requests(rerouter, tmp_path):
    db = tmp_path / "locked.db"
    proxy = rerouter("python", {"DB_PATH": str(db)})
    assert post(proxy, "/v1/chat/completions", CHAT)[0] == 200
    marker = uuid.uuid4().hex
    body = {"model": "gpt-4", "input": marker + " " + "x" * (8 * MIB)}
    lock = sqlite3.connect(db, timeout=5)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        with Peak(proxy, "30 requests of 8 MiB with the log locked") as peak:
            for _ in range(30):
                assert post(proxy, "/v1/embeddings", body)[0] == 200
    finally:
        lock.rollback()
        lock.close()
    assert peak.growth < 64
    rows = wait_for(lambda: (logs := get(proxy, f"/api/logs?q={marker}&state=completed&limit=100")[1])["total"] == 30 and logs, 60)
    detail = get(proxy, f"/api/logs/{rows['logs'][0]['id']}")[1]
    assert len(detail["request_body"]) < 300_000 and "truncated" in detail["request_body"]


class TestBinaryBodies:
    """Bodies the proxy never edits are streamed: flat memory, every byte as it was."""

    @pytest.mark.slow
    def test_50_mb_download(self, fresh):
        path = "/v1/files/file-abc/content"
        assert exchange(fresh, "GET", path, headers=mock_headers(file_size=SMALL_FILE))[0] == 200
        with Peak(fresh, "50 MB binary download") as peak:
            status, headers, digest, size = exchange(fresh, "GET", path, headers=mock_headers(file_size=BIG_FILE))
        assert status == 200 and headers["content-type"] == "application/octet-stream"
        assert (digest, size) == (hashlib.sha256(file_bytes(BIG_FILE)).hexdigest(), BIG_FILE)
        assert peak.growth < 16
        row = finished_row(fresh, path, 2)
        assert row["response_bytes"] == BIG_FILE and row["state"] == "completed"
        detail = get(fresh, f"/api/logs/{row['id']}")[1]
        assert "truncated: 50000000 bytes in total" in detail["response_body"]

    @pytest.mark.slow
    def test_50_mb_upload(self, fresh):
        headers = {"content-type": "application/octet-stream"}
        assert exchange(fresh, "POST", "/v1/files", file_bytes(SMALL_FILE), headers)[0] == 200
        content = file_bytes(BIG_FILE)
        with Peak(fresh, "50 MB binary upload") as peak:
            conn = http.client.HTTPConnection("127.0.0.1", fresh.port, timeout=60)
            conn.request("POST", "/v1/files", content, headers)
            response = conn.getresponse()
            answer = json.loads(response.read())
        assert response.status == 200
        assert answer["bytes"] == BIG_FILE and answer["sha256"] == hashlib.sha256(content).hexdigest()
        assert peak.growth < 16
        row = wait_for(lambda: next((r for r in get(fresh, "/api/logs?limit=5")[1]["logs"] if r["request_bytes"] == BIG_FILE and r["state"] == "completed"), None))
        detail = get(fresh, f"/api/logs/{row['id']}")[1]
        assert "truncated: 50000000 bytes in total" in detail["request_body"]

    def test_json_model_lists_still_get_aliases(self, proxy):
        client = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="sk-test", max_retries=0)
        assert {"gpt-4", "gpt-3.5-turbo", "llama3-70b"} <= {model.id for model in client.models.list()}


@pytest.mark.parametrize("framing", ["chunked", "content-length"])
def test_a_local_route_with_a_big_body_never_reaches_the_upstream(proxy, openai_upstream, framing):
    """Streaming a body opens the upstream connection: a local route's big body is refused before that."""
    size = 17 * MIB  # past EDIT_LIMIT, where mitmproxy would start streaming it
    head = b"GET /api/logs HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/octet-stream\r\n"
    head += b"Transfer-Encoding: chunked\r\n\r\n" if framing == "chunked" else b"Content-Length: %d\r\n\r\n" % size
    piece = b"x" * MIB
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=1) as sock:
        sock.sendall(head)
        try:
            closed = sock.recv(65536) == b""
        except TimeoutError:
            closed = False  # still reading: send the body, as a proxy that forwards it would take it
        if not closed:
            for _ in range(size // MIB):
                sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece) if framing == "chunked" else piece)
            sock.sendall(b"0\r\n\r\n" if framing == "chunked" else b"")
            time.sleep(0.5)
    assert closed, "refused at once"
    assert not [r for r in openai_upstream.requests if r["path"].startswith("/api/logs")]
    assert post(proxy, "/v1/chat/completions", CHAT)[0] == 200


def test_a_streamed_upload_carries_no_dashboard_credentials(rerouter, openai_upstream):
    """A streamed body goes upstream right after its headers: the dashboard's cookie and token must be gone by then."""
    token = "s3cret-token-for-tests-" + uuid.uuid4().hex
    proxy = rerouter("python", {"DASHBOARD_TOKEN": token})
    headers = {
        "content-type": "application/octet-stream",
        "authorization": f"Bearer {token}",
        "cookie": "theme=dark; rerouter_session=anything",
    }
    status, _, _, _ = exchange(proxy, "POST", "/v1/files", file_bytes(SMALL_FILE), headers)
    assert status == 200
    sent = openai_upstream.requests[-1]["headers"]
    assert "authorization" not in sent and sent["cookie"] == "theme=dark"
