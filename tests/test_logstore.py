import os
import shutil
import sqlite3
import time
from datetime import datetime
from datetime import timezone
from pathlib import Path

import pytest

import logstore
from logstore import ABORTED_ERROR
from logstore import MIGRATIONS
from logstore import ROW_FIELDS
from logstore import TRUNCATED
from logstore import LogStore
from logstore import LogUnavailable

SECRET = "sk-live-S3CR3T-do-not-log"
NOW = datetime(2026, 11, 21, 11, 20, tzinfo=timezone.utc).timestamp()


def request(id: str, started_at: float = NOW, **fields) -> dict:
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


def wait_for(condition, timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


def total(store: LogStore, **filters) -> int:
    return store.logs(**filters)[1]


def raw(store: LogStore, sql: str, params=()) -> list:
    conn = sqlite3.connect(store.path)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def pragma(path: Path, name: str):
    conn = sqlite3.connect(path)
    try:
        return conn.execute(f"PRAGMA {name}").fetchone()[0]
    finally:
        conn.close()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "requests.db"


@pytest.fixture
def store(path: Path):
    store = LogStore(str(path))
    store.open()
    yield store
    store.close()


def write(store: LogStore, *rows: dict, **finish) -> None:
    """Begins (and finishes, when given fields) the rows and waits until the writer has written them."""
    for row in rows:
        store.begin(row)
        if finish:
            store.finish(row["id"], **finish)
    wait_for(lambda: store.stats()["log_queue"] == 0 and all(store.get(row["id"]) for row in rows))
    if finish:
        wait_for(lambda: all(store.get(row["id"])["state"] != "inflight" for row in rows))


class Lock:
    """Another connection holding the write lock: 'database is locked' for the writer."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None)
        self.conn.execute("BEGIN EXCLUSIVE")

    def release(self) -> None:
        self.conn.execute("ROLLBACK")
        self.conn.close()


class TestSchema:
    def test_empty_file_gets_the_current_schema(self, path):
        path.touch()
        store = LogStore(str(path))
        store.open()
        store.close()
        assert pragma(path, "user_version") == len(MIGRATIONS) == 2
        assert pragma(path, "journal_mode") == "wal"
        assert pragma(path, "auto_vacuum") == 2
        indexed = {row[0] for row in raw(store, "SELECT sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")}
        for column in ("started_at", "state", "status", "service", "requested_model", "routed_model"):
            assert f"CREATE INDEX requests_{column} ON requests ({column})" in indexed

    def test_existing_file_opens_and_keeps_its_rows(self, path):
        first = LogStore(str(path))
        first.open()
        first.begin(request("a", started_at=time.time()))
        first.close()
        second = LogStore(str(path))
        second.open()
        assert [row["id"] for row in second.logs()[0]] == ["a"]
        second.close()

    def test_migrations_run_forward_from_the_stored_version(self, path, monkeypatch):
        store = LogStore(str(path))
        store.open()
        store.begin(request("a", started_at=time.time()))
        store.close()
        monkeypatch.setattr(
            logstore,
            "MIGRATIONS",
            [*MIGRATIONS, ("ALTER TABLE requests ADD COLUMN note TEXT", "UPDATE requests SET note = 'v2'")],
        )
        store = LogStore(str(path))
        store.open()
        store.close()
        assert pragma(path, "user_version") == 3
        assert raw(store, "SELECT id, note FROM requests") == [("a", "v2")]

    def test_newer_schema_is_refused(self, path):
        conn = sqlite3.connect(path)
        conn.execute("PRAGMA user_version = 99")
        conn.close()
        with pytest.raises(sqlite3.DatabaseError, match="newer"):
            LogStore(str(path)).open()

    def test_file_that_is_no_database_is_refused(self, path):
        path.write_bytes(b"this is not a database" * 100)
        with pytest.raises(sqlite3.DatabaseError):
            LogStore(str(path)).open()

    def test_missing_directories_are_created(self, tmp_path):
        path = tmp_path / "a" / "b" / "requests.db"
        store = LogStore(str(path))
        store.open()
        store.close()
        assert path.exists()

    @pytest.mark.parametrize(
        "settings",
        [{"max_age_days": 0}, {"max_age_days": -1}, {"queue_size": 0}, {"max_body_bytes": -1}],
    )
    def test_bad_settings_are_refused(self, path, settings):
        with pytest.raises(ValueError):
            LogStore(str(path), **settings)

    def test_close_is_safe_twice_and_without_open(self, path):
        LogStore(str(path)).close()
        store = LogStore(str(path))
        store.open()
        store.close()
        store.close()


class TestWriting:
    def test_round_trip_with_every_field(self, store):
        started = NOW + 0.123
        store.begin(request("r1", started_at=started, stream=True))
        wait_for(lambda: store.get("r1") is not None)
        inflight = store.get("r1")
        assert inflight["state"] == "inflight"
        assert inflight["status"] is None and inflight["duration_ms"] is None
        assert inflight["response_body"] == ""

        store.finish(
            "r1",
            state="error",
            status=502,
            duration_ms=1234.5,
            response_bytes=11,
            response_body=b"bad gateway",
            error="upstream failed",
            stream=False,
            routed_model="llama3",
            requested_model="gpt-4o-mini",
        )
        wait_for(lambda: store.get("r1")["state"] != "inflight")
        assert store.get("r1") == {
            "id": "r1",
            "started_at": "2026-11-21T11:20:00.123Z",
            "method": "POST",
            "path": "/v1/chat/completions",
            "service": "openai",
            "upstream": "http://127.0.0.1:8000",
            "stream": False,
            "requested_model": "gpt-4o-mini",
            "routed_model": "llama3",
            "status": 502,
            "state": "error",
            "duration_ms": 1234.5,
            "request_bytes": 19,
            "response_bytes": 11,
            "error": "upstream failed",
            "instance": None,
            "request_headers": [["Content-Type", "application/json"]],
            "request_body": '{"model": "gpt-4o"}',
            "response_body": "bad gateway",
        }
        rows, count = store.logs()
        assert count == 1
        assert list(rows[0]) == list(ROW_FIELDS)

    def test_finish_keeps_what_it_is_not_given(self, store):
        write(store, request("r1", stream=True), state="completed", status=200)
        row = store.get("r1")
        assert row["stream"] is True
        assert (row["requested_model"], row["routed_model"]) == ("gpt-4o", "qwen3:8b")

    def test_begin_and_finish_in_one_batch(self, path):
        store = LogStore(str(path))
        store.begin(request("r1", started_at=time.time()))
        store.finish("r1", state="completed", status=200)
        store.open()
        store.close()
        assert store.get("r1")["state"] == "completed"

    def test_thousands_of_requests_are_all_written(self, store):
        for number in range(2000):
            store.begin(request(f"r{number}", started_at=NOW + number))
            store.finish(f"r{number}", state="completed", status=200, duration_ms=1.0, response_body=b"{}")
        store.close(timeout=10)
        assert total(store) == 2000
        assert total(store, state="completed") == 2000
        assert store.failures == store.dropped == 0

    def test_close_writes_what_is_queued(self, store):
        for number in range(1000):
            store.begin(request(f"r{number}"))
        store.close()
        assert total(store) == 1000

    def test_begin_keeps_the_row_as_it_was(self, store):
        row = request("r1")
        store.begin(row)
        row["path"] = "/changed"
        store.close()
        assert store.get("r1")["path"] == "/v1/chat/completions"

    def test_malformed_entries_are_skipped_and_counted(self, store):
        store.begin({"started_at": NOW})
        store.begin(request("bad-time", started_at="yesterday"))
        store.begin(request("r1"))
        store.finish("r1", state="completed", colour="blue")
        store.begin(request("r2"))
        store.close()
        assert store.failures == 3
        assert {row["id"]: row["state"] for row in store.logs()[0]} == {"r1": "inflight", "r2": "inflight"}


class TestBodies:
    def test_large_request_body_is_stored_up_to_the_cap(self, path):
        store = LogStore(str(path), max_body_bytes=1000)
        store.open()
        body = b"a" * (10 * 1024 * 1024)
        store.begin(request("r1", request_body=body, request_bytes=len(body)))
        store.close()
        marker = f"\n{TRUNCATED}: 10485760 bytes in total]"
        assert raw(store, "SELECT length(request_body) FROM requests") == [(1000 + len(marker.encode()),)]
        row = store.get("r1")
        assert row["request_body"] == "a" * 1000 + marker
        assert row["request_bytes"] == 10485760

    @pytest.mark.parametrize(
        "body, response_bytes, expected",
        [
            (b"x" * 100, 100, "x" * 100),
            (b"x" * 100, None, "x" * 100),
            (b"x" * 250, 250, "x" * 100 + f"\n{TRUNCATED}: 250 bytes in total]"),
            (b"x" * 50, 8000, "x" * 50 + f"\n{TRUNCATED}: 8000 bytes in total]"),
            (b"", 30, f"\n{TRUNCATED}: 30 bytes in total]"),
            (bytearray(b"x" * 150), None, "x" * 100 + f"\n{TRUNCATED}: 150 bytes in total]"),
        ],
    )
    def test_response_body_cap_and_marker(self, path, body, response_bytes, expected):
        store = LogStore(str(path), max_body_bytes=100)
        store.open()
        store.begin(request("r1"))
        store.finish("r1", state="completed", response_body=body, response_bytes=response_bytes)
        store.close()
        assert store.get("r1")["response_body"] == expected

    def test_body_cut_inside_a_character_still_decodes(self, path):
        store = LogStore(str(path), max_body_bytes=3)
        store.open()
        store.begin(request("r1", request_body="aé€".encode(), request_bytes=6))
        store.close()
        assert store.get("r1")["request_body"] == f"aé\n{TRUNCATED}: 6 bytes in total]"


class TestRedaction:
    HEADERS = [
        ("Authorization", f"Bearer {SECRET}"),
        ("proxy-authorization", f"Basic {SECRET}"),
        ("Cookie", f"session={SECRET}"),
        ("Set-Cookie", f"session={SECRET}"),
        ("X-API-Key", SECRET),
        ("api-key", SECRET),
        ("Content-Type", "application/json"),
    ]

    def files(self, path: Path) -> list[Path]:
        return [file for file in path.parent.iterdir() if file.name.startswith(path.name)]

    def test_secrets_never_reach_the_files(self, store, path):
        write(store, request("r1", request_headers=self.HEADERS), state="completed")
        written = self.files(path)
        assert {file.name for file in written} >= {"requests.db", "requests.db-wal", "requests.db-shm"}
        store.close()
        for file in written + self.files(path):
            if file.exists():
                assert SECRET.encode() not in file.read_bytes(), file.name

        headers = store.get("r1")["request_headers"]
        assert headers == [[name, "[redacted]"] for name, _ in self.HEADERS[:-1]] + [
            ["Content-Type", "application/json"]
        ]


class TestQueries:
    @pytest.fixture
    def filled(self, store):
        rows = [
            request("a", NOW - 50, path="/v1/chat/completions", request_body=b'{"prompt": "Hello World"}'),
            request("b", NOW - 40, service="ollama", path="/api/chat", requested_model="llama3", routed_model=None),
            request("c", NOW - 30, requested_model="qwen3:8b", routed_model="qwen3:14b"),
            request("d", NOW - 20, path="/v1/models", requested_model=None, routed_model=None),
            request("e", NOW - 10, path="/v1/embeddings", request_body="Ärger 100%_done".encode()),
        ]
        for row in rows:
            store.begin(row)
        store.finish("a", state="completed", status=200, response_body=b"the ANSWER is 42")
        store.finish("b", state="error", status=502, error="upstream failed")
        store.finish("c", state="completed", status=200)
        store.finish("d", state="aborted")
        store.close()
        return store

    def ids(self, store, **filters) -> list[str]:
        return [row["id"] for row in store.logs(**filters)[0]]

    @pytest.mark.parametrize(
        "filters, expected",
        [
            ({}, ["e", "d", "c", "b", "a"]),
            ({"model": "qwen3:8b"}, ["e", "c", "a"]),
            ({"model": "qwen3:14b"}, ["c"]),
            ({"model": "gpt-4o"}, ["e", "a"]),
            ({"model": "llama3"}, ["b"]),
            ({"service": "ollama"}, ["b"]),
            ({"status": 200}, ["c", "a"]),
            ({"status": 404}, []),
            ({"state": "inflight"}, ["e"]),
            ({"state": "aborted"}, ["d"]),
            ({"q": "/API/"}, ["b"]),
            ({"q": "hello world"}, ["a"]),
            ({"q": "answer"}, ["a"]),
            ({"q": "ärger"}, ["e"]),
            ({"q": "ÄRGER"}, ["e"]),
            ({"q": "100%_"}, ["e"]),
            ({"q": "0%d"}, []),
            ({"q": "_"}, ["e"]),
            ({"q": "completions"}, ["c", "a"]),
            ({"model": "gpt-4o", "service": "openai", "state": "completed"}, ["a"]),
            ({"model": "qwen3:8b", "q": "embeddings"}, ["e"]),
        ],
    )
    def test_filters(self, filled, filters, expected):
        assert self.ids(filled, **filters) == expected
        assert total(filled, **filters) == len(expected)

    def test_total_counts_beyond_the_page(self, filled):
        rows, count = filled.logs(limit=2, offset=1, model="qwen3:8b")
        assert [row["id"] for row in rows] == ["c", "a"]
        assert count == 3
        assert filled.logs(limit=2, offset=10)[0] == []
        assert self.ids(filled, limit=0) == ["e"]
        assert self.ids(filled, limit=2, offset=-5) == ["e", "d"]

    def test_limit_is_clamped_to_a_page(self, store):
        for number in range(600):
            store.begin(request(f"r{number}"))
        store.close()
        rows, count = store.logs(limit=10000)
        assert (len(rows), count) == (500, 600)

    def test_newest_first_then_last_inserted_first(self, store):
        for id, started_at in [("a", NOW), ("b", NOW + 5), ("c", NOW), ("d", NOW - 5)]:
            store.begin(request(id, started_at))
        store.close()
        assert self.ids(store) == ["b", "c", "a", "d"]

    def test_search_covers_only_the_stored_part_of_a_body(self, path):
        store = LogStore(str(path), max_body_bytes=10)
        store.open()
        store.begin(request("r1", request_body=b"0123456789needle"))
        store.close()
        assert total(store, q="needle") == 0
        assert total(store, q="truncated") == 1

    def test_unknown_id(self, store):
        assert store.get("nope") is None


class TestStats:
    def test_empty(self, store):
        assert store.stats() == {
            "total": 0,
            "by_service": {},
            "by_model": {},
            "by_status": {},
            "errors": 0,
            "inflight": 0,
            "last_hour": 0,
            "last_24h": 0,
            "avg_duration_ms": None,
            "p95_duration_ms": None,
            "log_failures": 0,
            "log_dropped": 0,
            "log_queue": 0,
        }

    def test_numbers(self, store):
        for number in range(1, 101):
            store.begin(request(f"r{number}", NOW - 7200))
            store.finish(f"r{number}", state="completed", status=200, duration_ms=float(number))
        store.begin(request("fresh", NOW - 600, service="ollama", routed_model=None, requested_model="llama3"))
        store.begin(request("old", NOW - 3 * 86400, routed_model=None, requested_model=None))
        store.finish("old", state="error", error="refused", duration_ms=None)
        store.begin(request("missing", NOW - 120))
        store.finish("missing", state="completed", status=404, duration_ms=1000.0, routed_model="other")
        store.close()
        stats = store.stats(now=NOW)
        assert stats["total"] == 103
        assert stats["by_service"] == {"openai": 102, "ollama": 1}
        assert stats["by_model"] == {"qwen3:8b": 100, "llama3": 1, "other": 1}
        assert stats["by_status"] == {"200": 100, "404": 1}
        assert stats["errors"] == 2
        assert (stats["last_hour"], stats["last_24h"]) == (2, 102)
        assert stats["avg_duration_ms"] == pytest.approx((5050 + 1000) / 101)
        assert stats["p95_duration_ms"] == 96.0
        assert (stats["log_failures"], stats["log_dropped"], stats["log_queue"]) == (0, 0, 0)

    def test_p95_is_the_nearest_rank(self, store):
        for number in range(1, 101):
            store.begin(request(f"r{number}"))
            store.finish(f"r{number}", state="completed", duration_ms=float(101 - number))
        store.begin(request("running"))
        store.close()
        stats = store.stats(now=NOW)
        assert stats["p95_duration_ms"] == 95.0
        assert stats["avg_duration_ms"] == 50.5


class TestRetention:
    def fill(self, path: Path, now: float) -> None:
        store = LogStore(str(path), max_age_days=365)
        store.open()
        for number in range(300):
            store.begin(request(f"old{number}", now - 8 * 86400, request_body=os.urandom(20000)))
        store.begin(request("recent", now - 3600))
        store.close()

    def test_open_deletes_old_rows_and_compacts(self, path):
        self.fill(path, time.time())
        before = path.stat().st_size
        store = LogStore(str(path), max_age_days=7)
        store.open()
        store.close()
        assert [row["id"] for row in store.logs()[0]] == ["recent"]
        assert pragma(path, "freelist_count") == 0
        assert path.stat().st_size < before / 10

    def test_cleanup_deletes_old_rows_while_running(self, path):
        store = LogStore(str(path), max_age_days=1)
        store.open()
        now = time.time()
        for number in range(2500):
            store.begin(request(f"old{number}", now - 2 * 86400))
        store.begin(request("recent", now - 3600))
        store.cleanup()
        store.close()
        assert [row["id"] for row in store.logs()[0]] == ["recent"]
        assert pragma(path, "freelist_count") == 0

    def test_file_without_auto_vacuum_is_converted_when_compacted(self, path):
        conn = sqlite3.connect(path)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("CREATE TABLE unrelated (x)")
        conn.close()
        self.fill(path, time.time())
        assert pragma(path, "auto_vacuum") == 0
        store = LogStore(str(path))
        store.open()
        store.close()
        assert pragma(path, "auto_vacuum") == 2
        assert pragma(path, "freelist_count") == 0
        assert total(store) == 1


class TestCrashRecovery:
    def test_rows_left_inflight_are_aborted(self, path):
        crashed = LogStore(str(path))
        crashed.open()
        now = time.time()
        crashed.begin(request("running", now))
        crashed.begin(request("done", now))
        crashed.finish("done", state="completed", status=200, duration_ms=5.0)
        crashed.close()

        store = LogStore(str(path))
        store.open()
        store.close()
        running = store.get("running")
        assert (running["state"], running["error"]) == ("aborted", ABORTED_ERROR)
        done = store.get("done")
        assert (done["state"], done["status"], done["error"]) == ("completed", 200, None)


read_only_files = pytest.mark.skipif(
    os.geteuid() == 0, reason="root writes to read-only files; the lock tests cover the retries"
)


class TestFaults:
    def test_locked_database_is_retried_without_losing_rows(self, store, path):
        lock = Lock(path)
        try:
            for number in range(20):
                store.begin(request(f"r{number}"))
            wait_for(lambda: store.failures > 0)
            started = time.monotonic()
            assert total(store) == 0
            assert time.monotonic() - started < 0.5, "reads must not wait for the write lock"
            store.finish("r0", state="completed")
        finally:
            lock.release()
        wait_for(lambda: total(store) == 20 and store.get("r0")["state"] == "completed")
        assert store.dropped == 0
        assert store.stats()["log_failures"] == store.failures

    def test_full_queue_drops_and_counts_without_blocking(self, path):
        store = LogStore(str(path), queue_size=5)
        store.open()
        lock = Lock(path)
        try:
            store.begin(request("first"))
            wait_for(lambda: store.failures > 0)
            started = time.monotonic()
            for number in range(50):
                store.begin(request(f"r{number}"))
            assert time.monotonic() - started < 0.5
            assert store.dropped == 45
            assert store.stats()["log_dropped"] == 45
            assert store.stats()["log_queue"] == 5
        finally:
            lock.release()
        store.close()
        assert total(store) == 6

    @read_only_files
    def test_read_only_file_is_retried_until_writable(self, path):
        store = LogStore(str(path))
        store.open()
        path.chmod(0o444)
        try:
            store.begin(request("r1"))
            wait_for(lambda: store.failures > 0)
        finally:
            path.chmod(0o644)
        wait_for(lambda: store.get("r1") is not None)
        store.close()

    @read_only_files
    def test_read_only_file_fails_open(self, path):
        LogStore(str(path)).open()
        path.chmod(0o444)
        with pytest.raises(PermissionError, match="read-only"):
            LogStore(str(path)).open()

    def test_vanished_directory_is_recreated(self, tmp_path):
        directory = tmp_path / "logs"
        store = LogStore(str(directory / "requests.db"))
        store.open()
        write(store, request("before"))
        shutil.rmtree(directory)

        def written() -> bool:
            try:
                return store.get("after") is not None
            except LogUnavailable:
                return False

        store.begin(request("after"))
        wait_for(written)
        store.close()
        assert [row["id"] for row in store.logs()[0]] == ["after"]
        assert store.failures == 0

    def test_close_gives_up_on_a_lasting_fault(self, path):
        store = LogStore(str(path))
        store.open()
        lock = Lock(path)
        try:
            store.begin(request("r1"))
            wait_for(lambda: store.failures > 0)
            started = time.monotonic()
            store.close(timeout=0.3)
            assert time.monotonic() - started < 1.0
        finally:
            lock.release()
