"""
Faults, load and hostile input through a real rerouter process: it keeps answering, loses no row,
and its memory stays bounded. Every loop here is bounded in count and time.
"""

import concurrent.futures
import http.client
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import threading
import time
import uuid

import pytest

from tests.helpers import ScriptedUpstream
from tests.helpers import chunk_event
from tests.helpers import get
from tests.helpers import http_request
from tests.helpers import open_stream
from tests.helpers import post
from tests.helpers import row_for
from tests.helpers import rows_with
from tests.helpers import rss_peak_mb
from tests.helpers import sse_response
from tests.helpers import sse_text
from tests.helpers import wait_for
from tests.upstream import ANSWER

CHAT = {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}], "stream": True}


def completed(proxy, marker: str) -> int:
    """Completed rows whose text holds `marker`; 0 while the log cannot be read (it answers 503 then)."""
    return get(proxy, f"/api/logs?q={marker}&state=completed&limit=1")[1].get("total", 0)


def still_serving(proxy) -> None:
    status, raw = post(proxy, "/v1/chat/completions", CHAT)
    assert status == 200 and sse_text(raw) == ANSWER


@pytest.fixture
def scripted(rerouter):
    """scripted(script) -> a rerouter whose OpenAI upstream plays `script`."""
    upstreams = []

    def start(script):
        upstreams.append(ScriptedUpstream(script))
        return rerouter("python", {"UPSTREAM_URL": upstreams[-1].url})

    yield start
    for upstream in upstreams:
        upstream.close()


@pytest.fixture(scope="module")
def proxy(module_rerouter):
    return module_rerouter("python")


class TestUpstreamFaults:
    def test_reset_mid_stream_ends_the_stream_and_is_an_error_row(self, proxy):
        response = open_stream(proxy, "/v1/chat/completions", {**CHAT, "messages": [{"role": "user", "content": "reset"}]}, reset=3)
        assert response.status == 200
        with pytest.raises(http.client.IncompleteRead):
            response.read()
        row = rows_with(proxy, "reset")[0]
        assert row["state"] == "error" and row["status"] == 200
        still_serving(proxy)

    def test_hang_mid_stream_then_client_gives_up(self, proxy):
        response = open_stream(proxy, "/v1/chat/completions", {**CHAT, "messages": [{"role": "user", "content": "stuck"}]}, timeout=1.5, hang_after=2)
        with pytest.raises(TimeoutError):
            response.read()
        response.close()
        row = rows_with(proxy, "stuck")[0]
        assert row["state"] == "aborted"
        still_serving(proxy)

    def test_client_leaves_inside_a_think_block(self, proxy, openai_upstream):
        gate = uuid.uuid4().hex
        body = {**CHAT, "messages": [{"role": "user", "content": "leaves-thinking"}]}
        tokens = ["<think>", "still reasoning", " and more", "</think>", "answer"]
        lines_before = len(proxy.lines)
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
            sock.sendall(http_request("/v1/chat/completions", body, gate=gate, tokens=tokens))
            wait_for(lambda: openai_upstream.gate_waiting(gate))
            sock.recv(65536)
        row = rows_with(proxy, "leaves-thinking")[0]
        assert row["state"] == "aborted"
        assert not get(proxy, "/api/inflight")[1]["inflight"]
        openai_upstream.release(gate)
        new_output = "\n".join(proxy.lines[lines_before:])
        assert "Traceback" not in new_output and "crashed" not in new_output

    def test_gzip_and_garbage_and_errors(self, proxy):
        assert sse_text(post(proxy, "/v1/chat/completions", CHAT, gzip=True)[1]) == ANSWER
        assert post(proxy, "/v1/chat/completions", CHAT, garbage=True)[1].startswith(b"<html>mock upstream garbage")
        status, raw = post(proxy, "/v1/chat/completions", CHAT, status=500)
        assert status == 500 and json.loads(raw)["error"]
        still_serving(proxy)


def test_200_concurrent_streams_with_think_blocks(proxy):
    marker = uuid.uuid4().hex

    def one(i: int) -> str:
        body = {**CHAT, "messages": [{"role": "user", "content": f"{marker} {i}"}]}
        status, raw = post(proxy, "/v1/chat/completions", body, timeout=60, text=f"<think>reason {i}</think>\n\nanswer {i} done", tokens=4)
        assert status == 200
        return sse_text(raw)

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(200) as pool:
        answers = list(pool.map(one, range(200)))
    assert answers == [f"answer {i} done" for i in range(200)]
    assert time.monotonic() - started < 60
    wait_for(lambda: get(proxy, f"/api/logs?q={marker}")[1]["total"] == 200 and not get(proxy, "/api/inflight")[1]["inflight"], 20)
    assert get(proxy, f"/api/logs?q={marker}&state=completed")[1]["total"] == 200


class TestBodies:
    def test_10_mb_request_is_forwarded_and_capped_in_the_log(self, proxy, openai_upstream):
        text = "x" * (10 * 1024 * 1024)
        status, _ = post(proxy, "/v1/embeddings", {"model": "gpt-4", "input": text})
        assert status == 200
        assert len(openai_upstream.requests[-1]["body"]) > 10 * 1024 * 1024
        row = row_for(proxy, "/v1/embeddings", state="completed")
        detail = get(proxy, f"/api/logs/{row['id']}")[1]
        assert len(detail["request_body"]) < 300_000 and "truncated" in detail["request_body"]
        assert row["request_bytes"] > 10 * 1024 * 1024

    @pytest.mark.parametrize(
        "body",
        [
            b'{"model": "gpt-4", "x": ' + b"[" * 10000 + b"]" * 10000 + b"}",
            b'{"model": 42, "messages": []}',
            b'{"model": null}',
            b"\xff\xfe\x00 binary",
        ],
        ids=["10000-deep", "model-number", "model-null", "binary"],
    )
    def test_odd_bodies_pass_untouched(self, proxy, openai_upstream, body):
        post(proxy, "/v1/completions", body)
        assert openai_upstream.requests[-1]["body"] == body
        still_serving(proxy)

    def test_invalid_utf8_and_a_1_mb_event(self, scripted):
        big = "y" * (1024 * 1024)
        events = [chunk_event("<think>x</think>ok "), b"data: {\"choices\": [{\"index\": 0, \"delta\": {\"content\": \"\xff\xfe\"}}]}\n\n", chunk_event(big), b"data: [DONE]\n\n"]
        proxy = scripted(lambda: sse_response(iter(events)))
        status, raw = post(proxy, "/v1/chat/completions", CHAT)
        assert status == 200
        assert raw.startswith(b"data: ") and b"\xff\xfe" in raw, "undecodable events pass through as they are"
        assert raw.count(big.encode()) == 1 and raw.endswith(b"data: [DONE]\n\n")
        assert b"<think>" not in raw

    def test_50_mb_stream_keeps_memory_flat(self, scripted):
        token = chunk_event("z" * 4000)
        count = 50 * 1024 * 1024 // len(token) + 1
        proxy = scripted(lambda: sse_response(token for _ in range(count)))
        before = rss_peak_mb(proxy)
        response = open_stream(proxy, "/v1/chat/completions", CHAT, timeout=60)
        received = 0
        while chunk := response.read(1 << 20):
            received += len(chunk)
        assert received == count * len(token) >= 50 * 1024 * 1024, "every byte arrives"
        peak = rss_peak_mb(proxy)
        print(f"peak RSS {before:.0f} MB before, {peak:.0f} MB after a 50 MB stream")
        assert peak - before < 40, "the stream must not be buffered"


class TestSQLiteFaults:
    def test_locked_database(self, rerouter, tmp_path):
        db = tmp_path / "locked.db"
        proxy = rerouter("python", {"DB_PATH": str(db)})
        still_serving(proxy)
        lock = sqlite3.connect(db, timeout=5)
        lock.execute("BEGIN EXCLUSIVE")
        marker = uuid.uuid4().hex
        started = time.monotonic()
        for i in range(20):
            status, raw = post(proxy, "/v1/chat/completions", {**CHAT, "messages": [{"role": "user", "content": f"{marker} {i}"}]})
            assert status == 200 and sse_text(raw) == ANSWER
        assert time.monotonic() - started < 5, "requests do not wait for the log"
        time.sleep(max(0, 10 - (time.monotonic() - started)))
        lock.rollback()
        lock.close()
        stats = wait_for(lambda: (s := get(proxy, "/api/stats")[1])["log_failures"] > 0 and s)
        assert stats["log_dropped"] == 0
        wait_for(lambda: completed(proxy, marker) == 20, 20)

    def test_vanished_directory(self, rerouter, tmp_path):
        folder = tmp_path / "logs"
        proxy = rerouter("python", {"DB_PATH": str(folder / "requests.db")})
        still_serving(proxy)
        shutil.rmtree(folder)
        marker = uuid.uuid4().hex
        post(proxy, "/v1/chat/completions", {**CHAT, "messages": [{"role": "user", "content": marker}]})
        wait_for(lambda: completed(proxy, marker) == 1, 20)
        assert (folder / "requests.db").exists()

    @pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("mount"), reason="a real full disk needs root to mount a small tmpfs")
    def test_full_disk(self, rerouter, tmp_path):
        folder = tmp_path / "small"
        folder.mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(folder)], capture_output=True).returncode:
            pytest.skip("cannot mount a tmpfs here")
        try:
            proxy = rerouter("python", {"DB_PATH": str(folder / "requests.db"), "LOG_MAX_BODY_BYTES": "65536"})
            filler = folder / "filler"
            fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
            try:
                while os.write(fd, b"\0" * 4096):
                    pass
            except OSError:
                pass
            finally:
                os.close(fd)
            for i in range(10):
                still_serving(proxy)
            time.sleep(1)
            filler.unlink()
            wait_for(lambda: get(proxy, "/api/stats")[1].get("log_failures", 0) > 0, 15)
            marker = uuid.uuid4().hex
            post(proxy, "/v1/chat/completions", {**CHAT, "messages": [{"role": "user", "content": marker}]})
            wait_for(lambda: completed(proxy, marker) == 1, 20)
            proxy.stop()
        finally:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def test_kill_9_under_load_loses_no_finished_row(rerouter, tmp_path, openai_upstream):
    db = tmp_path / "killed.db"
    env = {"DB_PATH": str(db)}
    proxy = rerouter("python", env)
    marker = uuid.uuid4().hex
    finished: list[float] = []
    stop = threading.Event()

    def client(n: int) -> None:
        for i in range(1000):
            if stop.is_set():
                return
            try:
                status, raw = post(proxy, "/v1/chat/completions", {**CHAT, "messages": [{"role": "user", "content": f"{marker} {n} {i}"}]}, timeout=5)
                if status == 200:
                    finished.append(time.monotonic())
            except (OSError, ValueError, http.client.HTTPException):
                return

    def hang() -> None:
        try:
            post(proxy, "/v1/chat/completions", {**CHAT, "messages": [{"role": "user", "content": f"{marker}-hanging"}]}, timeout=10, gate=gate)
        except (OSError, ValueError, http.client.HTTPException):
            pass  # the proxy is killed under it

    gate = uuid.uuid4().hex
    hanging = threading.Thread(target=hang)
    hanging.start()
    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    wait_for(lambda: len(finished) >= 100, 30)
    time.sleep(1)
    killed_at = time.monotonic()
    os.kill(proxy.process.pid, signal.SIGKILL)
    stop.set()
    for thread in threads:
        thread.join(10)
    openai_upstream.release(gate)
    hanging.join(10)
    settled = sum(1 for t in finished if t < killed_at - 0.5)

    restarted = rerouter("python", env)
    logs = get(restarted, f"/api/logs?q={marker}&state=completed&limit=1")[1]
    print(f"{len(finished)} answered before kill -9, {settled} of them 0.5 s before it; {logs['total']} completed rows")
    assert logs["total"] >= settled
    assert get(restarted, f"/api/logs?q={marker}&state=inflight")[1]["total"] == 0
    aborted = get(restarted, f"/api/logs?q={marker}-hanging&state=aborted")[1]["logs"]
    assert len(aborted) == 1 and aborted[0]["error"] == "proxy stopped before the request finished"
