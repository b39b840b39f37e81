"""
What the PostgreSQL log adds to the shared store tests (tests/test_logstore.py runs those on both):
replicas, retention on one of them, a server that is down or restarts, the password kept out of sight.
Everything runs against a real PostgreSQL server (tests/pgserver.py).
"""

import logging
import threading
import time

import psycopg
import pytest

import pglogstore
from logstore import ABORTED_ERROR
from logstore import LogStore
from logstore import LogUnavailable
from logstore import ReadTimeout
from pglogstore import DEAD_ERROR
from tests.helpers import SECRET
from tests.helpers import SECRET_HEADERS
from tests.helpers import SECRET_PATH
from tests.helpers import request
from tests.helpers import silence
from tests.helpers import sql
from tests.helpers import total
from tests.helpers import wait_for
from tests.pgserver import PASSWORD

OLD = 30 * 86400


def opened(url: str, instance: str, **options) -> LogStore:
    store = LogStore(url, instance=instance, **options)
    store.open()
    return store


def states(url: str) -> dict[str, tuple]:
    return {id: (state, error) for id, state, error in sql(url, "SELECT id, state, error FROM requests")}


class TestSchema:
    def test_fresh_database_gets_the_schema_and_a_heartbeat(self, pg_url):
        store = opened(pg_url, "a")
        wait_for(lambda: sql(pg_url, "SELECT to_regclass('replicas')")[0][0] is not None)
        store.close()
        assert sql(pg_url, "SELECT version FROM schema_version") == [(len(pglogstore.MIGRATIONS),)]
        assert [name for name, in sql(pg_url, "SELECT name FROM replicas")] == ["a"]

    def test_migrations_run_forward_from_the_stored_version(self, pg_url, monkeypatch):
        store = opened(pg_url, "a")
        store.begin(request("r1", started_at=time.time()))
        store.close()
        monkeypatch.setattr(
            pglogstore,
            "MIGRATIONS",
            [*pglogstore.MIGRATIONS, ("ALTER TABLE requests ADD COLUMN extra text", "UPDATE requests SET extra = 'v2'")],
        )
        store = opened(pg_url, "a")
        store.begin(request("r2", started_at=time.time()))
        store.close()
        assert sql(pg_url, "SELECT version FROM schema_version") == [(len(pglogstore.MIGRATIONS),)]
        assert sql(pg_url, "SELECT id, extra FROM requests ORDER BY id") == [("r1", "v2"), ("r2", None)]

    def test_replicas_starting_together_migrate_once(self, pg_url):
        """Their writers and their dashboards' first reads, which migrate as well, all at once."""
        stores = [LogStore(pg_url, instance=f"r{number}") for number in range(4)]
        failed = []

        def read() -> None:
            try:
                LogStore(pg_url).logs()
            except Exception as e:
                failed.append(e)

        threads = [threading.Thread(target=store.open) for store in stores]
        threads += [threading.Thread(target=read) for _ in range(4)]
        for thread in threads:
            thread.start()
        for number, store in enumerate(stores):
            store.begin(request(f"row{number}", started_at=time.time()))
        for thread in threads:
            thread.join()
        for store in stores:
            store.close()
        assert total(stores[0]) == 4
        assert sum(store.failures for store in stores) == 0
        assert failed == []

    def test_newer_schema_is_refused_without_stopping_the_proxy(self, pg_url, caplog):
        opened(pg_url, "a").close()
        sql(pg_url, "UPDATE schema_version SET version = 99")
        store = opened(pg_url, "a")
        store.begin(request("r1"))
        with caplog.at_level(logging.WARNING):
            wait_for(lambda: store.failures == 1)
        store.close(timeout=0.5)
        assert "newer than this proxy knows" in caplog.text


class TestReplicas:
    def test_rows_carry_their_instance_and_every_replica_reads_them_all(self, pg_url):
        a, b = opened(pg_url, "a"), opened(pg_url, "b")
        a.begin(request("from-a", started_at=time.time()))
        b.begin(request("from-b", started_at=time.time()))
        a.close()
        b.close()
        for store in (a, b):
            assert {row["id"]: row["instance"] for row in store.logs()[0]} == {"from-a": "a", "from-b": "b"}

    def test_inflight_elsewhere_lists_the_other_replicas_requests_with_their_progress(self, pg_url):
        progress = {"b1": 0}
        a = opened(pg_url, "a")
        b = opened(pg_url, "b", progress=lambda: dict(progress))
        try:
            now = time.time()
            a.begin(request("a1", started_at=now))
            b.begin(request("b1", started_at=now - 2, path="/api/chat", requested_model="llama3", routed_model=None))
            b.begin(request("b2", started_at=now))
            b.finish("b2", state="completed", status=200)
            wait_for(lambda: total(a) == 3 and total(a, state="completed") == 1)
            progress["b1"] = 1234
            wait_for(lambda: a.inflight_elsewhere() and a.inflight_elsewhere()[0]["response_bytes"] == 1234, timeout=10)
            (row,) = a.inflight_elsewhere(now=now)
            assert row == {
                "id": "b1",
                "method": "POST",
                "path": "/api/chat",
                "requested_model": "llama3",
                "routed_model": None,
                "started_at": row["started_at"],
                "elapsed_ms": 2000.0,
                "response_bytes": 1234,
                "instance": "b",
            }
            assert [row["id"] for row in b.inflight_elsewhere()] == ["a1"]
            assert (a.stats()["inflight"], b.stats()["inflight"]) == (1, 1), "each counts the others' requests"
        finally:
            a.close()
            b.close()

    def test_a_silent_replicas_requests_are_aborted_after_30_s(self, pg_url):
        a, b = opened(pg_url, "a"), opened(pg_url, "b")
        try:
            b.begin(request("b1", started_at=time.time()))
            a.begin(request("a1", started_at=time.time()))
            wait_for(lambda: total(a) == 2)
            b.close()  # b dies: its heartbeat stops
            silence(pg_url, "b", 20)
            time.sleep(pglogstore.HEARTBEAT_INTERVAL + 0.5)  # a's tick ran and found b silent for 25 s at most
            assert states(pg_url)["b1"] == ("inflight", None)
            silence(pg_url, "b", 31)
            wait_for(lambda: states(pg_url)["b1"] == ("aborted", DEAD_ERROR), timeout=pglogstore.HEARTBEAT_INTERVAL + 2)
            assert states(pg_url)["a1"] == ("inflight", None)
        finally:
            a.close()

    def test_a_replica_that_comes_back_marks_its_own_requests_at_once(self, pg_url):
        crashed = opened(pg_url, "b")
        crashed.begin(request("b1", started_at=time.time()))
        crashed.close()
        other = opened(pg_url, "a")
        other.begin(request("a1", started_at=time.time()))
        other.close()
        restarted = opened(pg_url, "b")
        try:
            wait_for(lambda: states(pg_url)["b1"][0] == "aborted", timeout=2)
            assert states(pg_url) == {"b1": ("aborted", ABORTED_ERROR), "a1": ("inflight", None)}
        finally:
            restarted.close()

    def test_two_replicas_under_one_name_are_warned_about(self, pg_url, caplog):
        first = opened(pg_url, "same")
        wait_for(lambda: sql(pg_url, "SELECT to_regclass('replicas')")[0][0] and sql(pg_url, "SELECT name FROM replicas"))
        with caplog.at_level(logging.WARNING, logger="pglogstore"):
            second = opened(pg_url, "same")
            wait_for(lambda: "give every replica its own INSTANCE_NAME" in caplog.text)
        first.close()
        second.close()

    def test_a_late_finish_still_completes_an_aborted_row(self, pg_url):
        """A replica cut off from the database for over 30 s writes its queued answers when it returns."""
        a = opened(pg_url, "a")
        a.begin(request("a1", started_at=time.time()))
        wait_for(lambda: total(a) == 1)
        sql(pg_url, "UPDATE requests SET state = 'aborted', error = %s", (DEAD_ERROR,))
        a.finish("a1", state="completed", status=200, duration_ms=31000.0)
        a.close()
        assert states(pg_url)["a1"][0] == "completed"


class TestRetention:
    def fill_old(self, url: str, count: int) -> None:
        opened(url, "setup").close()
        sql(
            url,
            "INSERT INTO requests (id, started_at, instance) SELECT 'old' || n, %s, 'setup' FROM generate_series(1, %s) n",
            (time.time() - OLD, count),
        )
        sql(url, "DELETE FROM maintenance")

    def test_runs_on_one_replica_only(self, pg_url, caplog):
        self.fill_old(pg_url, 2500)
        stores = [LogStore(pg_url, instance=f"r{number}") for number in range(3)]
        with caplog.at_level(logging.INFO, logger="pglogstore"):
            for store in stores:
                store.open()
                store.begin(request(f"new-{store.instance}", started_at=time.time()))
            for store in stores:
                store.close()
        assert total(stores[0]) == 3
        runs = [record.getMessage() for record in caplog.records if "retention" in record.getMessage()]
        assert len(runs) == 1 and "2500 rows started before" in runs[0], runs
        (ran_at,) = sql(pg_url, "SELECT ran_at FROM maintenance WHERE task = 'retention'")
        assert ran_at is not None

    def test_waits_for_the_replica_that_holds_the_lock(self, pg_url):
        self.fill_old(pg_url, 10)
        with psycopg.connect(pg_url, autocommit=True) as holder:
            holder.execute("SELECT pg_advisory_lock(%s, %s)", pglogstore.RETENTION_LOCK)
            store = opened(pg_url, "a")
            store.cleanup()
            store.close()
            assert total(store) == 10, "another replica holds the lock: nothing is deleted twice"
        store = opened(pg_url, "a")
        store.close()
        assert total(store) == 0

    def test_hourly_run_skipped_right_after_another_replicas(self, pg_url):
        self.fill_old(pg_url, 10)
        opened(pg_url, "a").close()
        sql(
            pg_url,
            "INSERT INTO requests (id, started_at) SELECT 'late' || n, %s FROM generate_series(1, 5) n",
            (time.time() - OLD,),
        )
        store = opened(pg_url, "b")
        store.cleanup()
        store.close()
        assert total(store) == 5


class TestFaults:
    def test_server_down_at_startup_then_back(self, pg_server, pg_url, caplog):
        with pg_server.stopped():
            store = LogStore(pg_url, instance="a")
            started = time.monotonic()
            store.open()
            for number in range(20):
                store.begin(request(f"r{number}", started_at=time.time()))
            assert time.monotonic() - started < 0.5, "nothing waits for the database"
            wait_for(lambda: store.failures > 0, timeout=10)
            with pytest.raises(LogUnavailable) as unreadable:
                store.logs()
            assert PASSWORD not in str(unreadable.value)
        wait_for(lambda: total(store) == 20, timeout=15)
        store.close()
        assert store.dropped == 0
        assert PASSWORD not in caplog.text

    def test_server_restarted_under_load_loses_nothing(self, pg_server, pg_url):
        store = opened(pg_url, "a")
        stop = threading.Event()
        sent = []

        def load() -> None:
            while not stop.is_set():
                id = f"r{len(sent)}"
                store.begin(request(id, started_at=time.time()))
                store.finish(id, state="completed", status=200, duration_ms=1.0, response_body=b"{}")
                sent.append(id)
                time.sleep(0.002)

        writer = threading.Thread(target=load)
        writer.start()
        try:
            wait_for(lambda: len(sent) > 100)
            pg_server.restart(down_for=1.0)
            wait_for(lambda: len(sent) > 1000, timeout=20)
        finally:
            stop.set()
            writer.join()
        wait_for(lambda: total(store, state="completed") == len(sent), timeout=15)
        store.close()
        assert store.failures > 0 and store.dropped == 0

    def test_reads_have_a_time_limit(self, pg_url):
        store = opened(pg_url, "a")
        store.close()
        sql(pg_url, "INSERT INTO requests (id, started_at, path) SELECT 'r' || n, n, '/v1/x' FROM generate_series(1, 200000) n")
        store.read_time_limit = 0.001
        with pytest.raises(ReadTimeout):
            store.logs(q="ü")
        store.read_time_limit = 10.0
        assert total(store, q="/V1/") == 200000, "the connection is usable again"

    def test_idle_read_connections_outlive_a_restart(self, pg_server, pg_url):
        store = opened(pg_url, "a")
        try:
            store.begin(request("r1"))
            wait_for(lambda: total(store) == 1)
            pg_server.restart()
            assert total(store) == 1
        finally:
            store.close()

    def test_wrong_password_is_never_shown(self, pg_server, caplog):
        url = pg_server.url(password="Wr0ng-pa55word")
        store = LogStore(url, instance="a")
        with caplog.at_level(logging.INFO):
            store.open()
            store.begin(request("r1"))
            wait_for(lambda: store.failures > 0, timeout=10)
            with pytest.raises(LogUnavailable) as refused:
                store.logs()
            store.close(timeout=0.5)
        assert "password authentication failed" in str(refused.value)
        for text in (caplog.text, str(refused.value), store.path):
            assert "Wr0ng-pa55word" not in text
        assert store.path.endswith(f"rerouter:***@127.0.0.1:{pg_server.port}/postgres")


class TestHostileValues:
    def test_nul_and_broken_utf8_are_stored(self, pg_url):
        store = opened(pg_url, "a")
        body = b"before\x00after \xff\xfe"
        store.begin(request("r1", request_body=body, request_bytes=len(body), requested_model="a\x00b", path="/v1/\x00"))
        store.finish("r1", state="completed", response_body=bytearray(b"\x00"))
        store.close()
        row = store.get("r1")
        assert (row["request_body"], row["response_body"]) == ("before\ufffdafter \ufffd\ufffd", "\ufffd")
        assert (row["requested_model"], row["path"]) == ("a\ufffdb", "/v1/\ufffd")
        assert store.failures == 0
        assert total(store, q="\x00") == 1, "a NUL searched for is the same U+FFFD"
        assert total(store, model="a\x00b") == 1

    def test_secrets_never_reach_the_database(self, pg_url):
        store = opened(pg_url, "a")
        store.begin(request("r1", path=SECRET_PATH, request_headers=SECRET_HEADERS, request_body=b"{}"))
        store.finish("r1", state="completed", response_body=b"{}")
        store.close()
        dumped = sql(
            pg_url,
            "SELECT r::text FROM requests r UNION ALL SELECT b::text FROM request_bodies b"
            " UNION ALL SELECT b::text FROM response_bodies b",
        )
        assert len(dumped) == 3
        assert SECRET not in repr(dumped)

    def test_big_bodies_are_read_back_whole_and_searched(self, pg_url):
        answer = b"".join(b'data: {"choices": [{"delta": {"content": " word%d"}}]}\n\n' % number for number in range(4000))
        store = opened(pg_url, "a", max_body_bytes=len(answer))
        store.begin(request("r1"))
        store.finish("r1", state="completed", response_body=answer)
        store.close()
        assert store.get("r1")["response_body"] == answer.decode()
        assert [row["id"] for row in store.logs(q="WORD3999")[0]] == ["r1"]
        (stored,) = sql(pg_url, "SELECT pg_column_size(body) FROM response_bodies")
        assert stored[0] < len(answer) / 3, "PostgreSQL compresses it itself"
