"""
Several replicas, one log: real rerouter processes sharing a real PostgreSQL server (tests/pgserver.py).

Each replica's API shows every replica's rows and requests in flight; kill -9 of one
loses nothing the other answered, and its requests in flight end `aborted`; retention
runs once; the database down or restarting never stops the proxying.
"""

import http.client
import json
import os
import signal
import threading
import time
import uuid

from prometheus_client.parser import text_string_to_metric_families

from logstore import LogStore
from pglogstore import DEAD_ERROR
from tests.helpers import get
from tests.helpers import openai_client
from tests.helpers import post
from tests.helpers import silence
from tests.helpers import sql
from tests.helpers import wait_for
from tests.pgserver import PASSWORD
from tests.upstream import mock_headers

CHAT = {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}


def replica(rerouter, url: str, name: str, ready: bool = True):
    return rerouter(env={"DATABASE_URL": url, "INSTANCE_NAME": name}, ready=ready)


def logs(proxy, query: str = "") -> dict:
    status, body = get(proxy, f"/api/logs?limit=500&{query}")
    assert status == 200, body
    return body


def log_failures(proxy) -> float:
    """The proxy's count of log entries whose write failed, from /metrics, which needs no database."""
    status, text = get(proxy, "/metrics")
    assert status == 200
    (family,) = [f for f in text_string_to_metric_families(text.decode()) if f.name == "rerouter_log_failures"]
    return family.samples[0].value


def chat(proxy, content: str, stream: bool = False) -> None:
    answer = openai_client(proxy).chat.completions.create(**CHAT | {"messages": [{"role": "user", "content": content}]}, stream=stream)
    if stream:
        list(answer)


class HeldStream:
    """A streamed request that the mock upstream holds after its first event until released."""

    def __init__(self, proxy, upstream) -> None:
        self.gate = uuid.uuid4().hex
        self.upstream = upstream
        self.conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=30)
        body = json.dumps({**CHAT, "stream": True}).encode()
        self.conn.request("POST", "/v1/chat/completions", body, {"content-type": "application/json", **mock_headers(gate=self.gate)})
        self.response = self.conn.getresponse()
        self.response.read1(1)

    def finish(self) -> None:
        self.upstream.release(self.gate)
        self.response.read()

    def drop(self) -> None:
        self.upstream.release(self.gate)
        self.conn.close()


def inflight(proxy) -> list[dict]:
    status, body = get(proxy, "/api/inflight")
    assert status == 200, body
    return body["inflight"]


def test_two_replicas_share_one_log(rerouter, pg_url, openai_upstream):
    a, b = replica(rerouter, pg_url, "a", ready=False), replica(rerouter, pg_url, "b", ready=False)
    a.wait_ready(), b.wait_ready()
    marker = uuid.uuid4().hex
    for proxy in (a, b):
        chat(proxy, f"{marker} plain")
        chat(proxy, f"{marker} streamed", stream=True)

    for proxy in (a, b):
        rows = wait_for(lambda: (body := logs(proxy, f"q={marker}&state=completed"))["total"] == 4 and body["logs"])
        assert sorted(row["instance"] for row in rows) == ["a", "a", "b", "b"]
        assert {row["routed_model"] for row in rows} == {"llama3-70b"}

    held_a, held_b = HeldStream(a, openai_upstream), HeldStream(b, openai_upstream)
    for proxy in (a, b):
        rows = wait_for(lambda: len(found := inflight(proxy)) == 2 and found)
        assert sorted(row["instance"] for row in rows) == ["a", "b"]
        assert all(row["path"] == "/v1/chat/completions" and row["elapsed_ms"] >= 0 for row in rows)
        assert get(proxy, "/api/stats")[1]["inflight"] == 2
    # the other replica's bytes answered so far come with its next heartbeat
    wait_for(lambda: all(row["response_bytes"] > 0 for row in inflight(a)), 10)
    held_a.finish()
    wait_for(lambda: [row["instance"] for row in inflight(a)] == ["b"])
    held_b.finish()
    for proxy in (a, b):
        assert PASSWORD not in proxy.output
        for path in ("/api/logs", "/api/stats", "/api/inflight", "/"):
            assert PASSWORD not in json.dumps(get(proxy, path)[1], default=str)


def test_kill_9_of_one_replica(rerouter, pg_url, openai_upstream):
    a, b = replica(rerouter, pg_url, "a", ready=False), replica(rerouter, pg_url, "b", ready=False)
    a.wait_ready(), b.wait_ready()
    marker = uuid.uuid4().hex
    held_b = HeldStream(b, openai_upstream)
    # its row is in the database once it has run for INFLIGHT_ROW_AFTER
    wait_for(lambda: [row["instance"] for row in inflight(a)] == ["b"])
    answered_by_a: list[int] = []
    stop = threading.Event()

    def load(client: int) -> None:
        for number in range(1000):
            if stop.is_set():
                return
            status, _ = post(a, "/v1/chat/completions", {**CHAT, "messages": [{"role": "user", "content": f"{marker} {client} {number}"}]})
            assert status == 200
            answered_by_a.append(number)

    clients = [threading.Thread(target=load, args=(client,)) for client in range(3)]
    for client in clients:
        client.start()
    wait_for(lambda: len(answered_by_a) >= 30, 30)
    os.kill(b.process.pid, signal.SIGKILL)
    wait_for(lambda: len(answered_by_a) >= 60, 30)
    stop.set()
    for client in clients:
        client.join(30)
    held_b.drop()

    # every request the surviving replica answered has its row
    wait_for(lambda: logs(a, f"q={marker}&state=completed&limit=1")["total"] == len(answered_by_a), 15)
    (killed,) = [row for row in logs(a, "state=inflight")["logs"] if row["instance"] == "b"]
    assert [row["id"] for row in inflight(a)] == [killed["id"]], "listed while b's heartbeat is younger than 30 s"

    silence(pg_url, "b", 31)  # as if 31 s had passed since b's last heartbeat
    wait_for(lambda: get(a, f"/api/logs/{killed['id']}")[1]["state"] == "aborted", 10)
    assert get(a, f"/api/logs/{killed['id']}")[1]["error"] == DEAD_ERROR
    assert inflight(a) == []


def test_a_restarted_replica_marks_its_own_requests_at_once(rerouter, pg_url, openai_upstream):
    b = replica(rerouter, pg_url, "b")
    held = HeldStream(b, openai_upstream)
    (row,) = wait_for(lambda: logs(b, "state=inflight")["logs"])
    os.kill(b.process.pid, signal.SIGKILL)
    held.drop()
    restarted = replica(rerouter, pg_url, "b")
    wait_for(lambda: get(restarted, f"/api/logs/{row['id']}")[1]["state"] == "aborted", 5)
    assert get(restarted, f"/api/logs/{row['id']}")[1]["error"] == "proxy stopped before the request finished"


def test_retention_runs_on_one_replica(rerouter, pg_url):
    store = LogStore(pg_url, instance="setup")
    store.open()
    store.close()
    old = time.time() - 30 * 86400
    sql(pg_url, "INSERT INTO requests (id, started_at) SELECT 'old' || n, %s FROM generate_series(1, 300) n", (old,))
    sql(pg_url, "DELETE FROM maintenance")
    replicas = [replica(rerouter, pg_url, name, ready=False) for name in ("a", "b")]
    for proxy in replicas:
        proxy.wait_ready()
    wait_for(lambda: logs(replicas[0])["total"] == 0, 15)
    time.sleep(1)  # both have reached the database by now (the first replica's retention did)
    lines = [line for proxy in replicas for line in proxy.lines if "request log retention" in line]
    assert len(lines) == 1 and "300 rows started before" in lines[0], lines


def test_database_down_at_startup_and_restarted_under_load(rerouter, pg_server, pg_url):
    marker = uuid.uuid4().hex
    with pg_server.stopped():
        proxy = replica(rerouter, pg_url, "a")
        for number in range(5):
            status, _ = post(proxy, "/v1/chat/completions", {**CHAT, "messages": [{"role": "user", "content": f"{marker} down {number}"}]})
            assert status == 200
        status, body = get(proxy, "/api/stats")
        assert status == 503 and "cannot be read" in body["error"]
        # the writer has tried, and failed, before the server comes back
        wait_for(lambda: log_failures(proxy) > 0, 10)

    wait_for(lambda: get(proxy, "/api/stats")[0] == 200, 15)
    wait_for(lambda: logs(proxy, f"q={marker}&limit=1")["total"] == 5, 15)
    assert get(proxy, "/api/stats")[1]["log_failures"] > 0

    answered: list[int] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            status, _ = post(proxy, "/v1/chat/completions", {**CHAT, "messages": [{"role": "user", "content": f"{marker} load"}]}, timeout=5)
            assert status == 200
            answered.append(status)

    client = threading.Thread(target=load)
    client.start()
    try:
        wait_for(lambda: len(answered) >= 20, 20)
        pg_server.restart(down_for=1.0)
        count = len(answered)
        wait_for(lambda: len(answered) >= count + 20, 20)
    finally:
        stop.set()
        client.join(10)
    wait_for(lambda: logs(proxy, f"q={marker}&state=completed&limit=1")["total"] == 5 + len(answered), 20)
    assert get(proxy, "/api/stats")[1]["log_dropped"] == 0
    assert PASSWORD not in proxy.output


def test_unreachable_database_never_holds_up_a_request(rerouter):
    proxy = replica(rerouter, f"postgresql://rerouter:{PASSWORD}@127.0.0.1:1/nowhere", "a")
    started = time.monotonic()
    for number in range(10):
        status, _ = post(proxy, "/v1/chat/completions", CHAT)
        assert status == 200
    assert time.monotonic() - started < 10
    assert get(proxy, "/api/logs")[0] == 503
    proxy.wait_for_output("request log postgresql://rerouter:***@127.0.0.1:1/nowhere: connection failed")
    os.kill(proxy.process.pid, signal.SIGKILL)  # a clean stop would spend its 5 s trying to write the queue
    assert PASSWORD not in proxy.output
