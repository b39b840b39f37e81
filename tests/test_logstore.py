"""
The request log's store. The tests on the `store` and `location` fixtures run against both
databases, an SQLite file and a real PostgreSQL server (tests/pgserver.py), and expect the same
answers from both; the rest are about what only SQLite has (the file, its pragmas, locks).
"""

import json
import logging
import os
import shutil
import sqlite3
import stat
import time
from pathlib import Path

import psycopg
import pytest

import logstore
from logstore import ABORTED_ERROR
from logstore import COMPRESS_FROM
from logstore import MIGRATIONS
from logstore import ROW_FIELDS
from logstore import TRUNCATED
from logstore import LogStore
from logstore import LogUnavailable
from logstore import SqliteDatabase
from pglogstore import placeholders
from tests.helpers import NOW
from tests.helpers import SECRET
from tests.helpers import SECRET_HEADERS
from tests.helpers import SECRET_PATH
from tests.helpers import request
from tests.helpers import total
from tests.helpers import wait_for

V1_DATABASE = Path(__file__).parent / "data" / "requests-v1.db"
"""Written by the previous release's logstore.py (commit 4d93719): schema version 1, bodies in the rows."""
ROUND_2 = {
    "reasoning_chars": 120,
    "lone_think_close": True,
    "response_model": "llama3:70b-instruct",
    "reasoned_anyway": True,
    "note": "stream passed on unedited past 1 MiB",
    "upstream_ms": 12.5,
    "upstream_first_token_ms": 40.25,
    "first_token_ms": 95.0,
    "prompt_tokens": 17,
    "completion_tokens": 230,
    "tokens_per_s": 41.5,
}
"""The round-2 fields as finish() gets them from the FlowState, every one set."""


def raw(store: LogStore, sql: str, params=()) -> list:
    """A query straight to the store's database, past the store."""
    if isinstance(store.database, SqliteDatabase):
        conn = sqlite3.connect(store.path)
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()
    with psycopg.connect(store.database.url) as conn:
        return [tuple(row) for row in conn.execute(placeholders(sql), params).fetchall()]


def pragma(path: Path, name: str):
    conn = sqlite3.connect(path)
    try:
        return conn.execute(f"PRAGMA {name}").fetchone()[0]
    finally:
        conn.close()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "requests.db"


@pytest.fixture(params=["sqlite", "postgres"])
def location(request, path: Path) -> str:
    """Where a store keeps its log: an SQLite file, or a fresh database on the tests' PostgreSQL server."""
    return str(path) if request.param == "sqlite" else request.getfixturevalue("pg_url")


def opened(location: str, **options) -> LogStore:
    store = LogStore(location, **options)
    store.open()
    return store


@pytest.fixture
def store(location: str):
    store = opened(location)
    yield store
    store.close()


@pytest.fixture
def sqlite_store(path: Path):
    store = opened(str(path))
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
        columns = {row[1] for row in raw(store, "PRAGMA table_info(requests)")}
        assert columns == {"seq", *ROW_FIELDS}, "no bodies in the rows the list reads"
        assert {row[1] for row in raw(store, "PRAGMA table_info(request_bodies)")} == {"seq", "headers", "body", "zlib"}
        assert {row[1] for row in raw(store, "PRAGMA table_info(response_bodies)")} == {"seq", "body", "zlib"}

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
            [*MIGRATIONS, ("ALTER TABLE requests ADD COLUMN extra TEXT", "UPDATE requests SET extra = 'v3'")],
        )
        store = LogStore(str(path))
        store.open()
        store.close()
        assert pragma(path, "user_version") == 3
        assert raw(store, "SELECT id, extra FROM requests") == [("a", "v3")]

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


class TestUpgradeFromVersion1:
    """A database the previous release wrote (tests/data/requests-v1.db) opens, upgraded in place."""

    SECRETS = (b"v1-query-secret", b"v1-goog-header-secret")

    @pytest.fixture
    def upgraded(self, path):
        shutil.copyfile(V1_DATABASE, path)
        assert pragma(path, "user_version") == 1
        contents = path.read_bytes()
        assert all(secret in contents for secret in self.SECRETS), "the old release stored them"
        store = LogStore(str(path), max_age_days=36500)
        store.open()
        yield store
        store.close()

    def test_rows_are_kept_and_listed(self, upgraded, path):
        assert pragma(path, "user_version") == len(MIGRATIONS)
        rows, count = upgraded.logs()
        assert count == 4
        assert [(row["id"], row["state"], row["status"]) for row in rows] == [
            ("v1-inflight", "aborted", None),
            ("v1-error", "error", 502),
            ("v1-ollama", "completed", 200),
            ("v1-stream", "completed", 200),
        ]
        streamed = rows[-1]
        assert streamed["started_at"] == "2025-11-21T04:40:00.000Z"
        assert (streamed["requested_model"], streamed["routed_model"], streamed["stream"]) == ("gpt-4", "llama3-70b", True)
        assert (streamed["duration_ms"], streamed["request_bytes"]) == (812.5, 88)

    def test_new_fields_are_empty(self, upgraded):
        for row in upgraded.logs()[0]:
            assert {name: row[name] for name in ROUND_2} == {
                **dict.fromkeys(ROUND_2), "reasoning_chars": 0, "lone_think_close": False, "reasoned_anyway": False
            }
            assert row["instance"] is None

    def test_bodies_are_kept(self, upgraded):
        streamed = upgraded.get("v1-stream")
        assert json.loads(streamed["request_body"])["messages"] == [{"role": "user", "content": "Hi"}]
        assert streamed["response_body"].endswith("data: [DONE]\n\n")
        assert streamed["response_text"] == "Hello from version one."
        assert upgraded.get("v1-ollama")["response_text"] == "Hello from Ollama."
        assert [row["id"] for row in upgraded.logs(q="VERSION")[0]] == ["v1-stream"]

    def test_secrets_the_old_release_kept_are_masked_and_gone_from_the_file(self, upgraded, path):
        assert upgraded.get("v1-error")["path"] == "/v1/models?key=[redacted]&limit=5"
        assert dict(upgraded.get("v1-stream")["request_headers"]) == {
            "Content-Type": "application/json",
            "Authorization": "[redacted]",
            "x-goog-api-key": "[redacted]",
        }
        for file in path.parent.iterdir():
            contents = file.read_bytes()
            assert not [secret for secret in self.SECRETS if secret in contents], file.name

    def test_new_rows_are_written_beside_the_old(self, upgraded):
        write(upgraded, request("new", started_at=time.time()), state="completed", **ROUND_2)
        assert upgraded.get("new")["completion_tokens"] == 230
        assert upgraded.logs()[1] == 5


class TestWriting:
    def test_round_trip_with_every_field(self, store):
        started = NOW + 0.123
        store.begin(request("r1", started_at=started, stream=True, instance="replica-2:1234"))
        wait_for(lambda: store.get("r1") is not None)
        inflight = store.get("r1")
        assert inflight["state"] == "inflight"
        assert inflight["status"] is None and inflight["duration_ms"] is None
        assert (inflight["request_body"], inflight["response_body"]) == ('{"model": "gpt-4o"}', "")
        assert inflight["response_text"] is None

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
            **ROUND_2,
        )
        wait_for(lambda: store.get("r1")["state"] != "inflight")
        expected = {
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
            **ROUND_2,
            "instance": "replica-2:1234",
        }
        assert store.get("r1") == {
            **expected,
            "request_headers": [["Content-Type", "application/json"]],
            "request_body": '{"model": "gpt-4o"}',
            "response_body": "bad gateway",
            "response_text": None,
        }
        rows, count = store.logs()
        assert count == 1
        assert rows == [expected]
        assert list(rows[0]) == list(ROW_FIELDS)

    def test_a_row_written_whole_is_the_row_begun_and_finished(self, store):
        started = {"path": SECRET_PATH, "request_headers": SECRET_HEADERS, "stream": True, "routed_model": "qwen3:8b"}
        answer = b"data: the answer\n\n" * 1000
        ended = {
            "state": "error",
            "status": 502,
            "duration_ms": 1234.5,
            "response_bytes": len(answer) + 1,
            "response_body": answer,
            "error": "upstream failed",
            "stream": False,
            "routed_model": None,
            **ROUND_2,
        }
        store.begin(request("begun", **started))
        store.finish("begun", **ended)
        store.record(request("whole", **started), **ended)
        wait_for(lambda: all((store.get(id) or {}).get("state") == "error" for id in ("begun", "whole")))
        whole = store.get("whole")
        assert {**whole, "id": "begun"} == store.get("begun")
        assert (whole["stream"], whole["routed_model"], whole["completion_tokens"]) == (False, "qwen3:8b", 230)
        assert SECRET not in json.dumps(whole) and TRUNCATED in whole["response_body"]
        assert store.failures == 0

    def test_whole_rows_without_a_state_are_skipped_and_flags_not_given_are_false(self, store):
        store.record(request("no-state"), status=200)
        store.record(request("r1"), state="completed", reasoning_chars=None, lone_think_close=None, reasoned_anyway=None)
        store.close()
        assert store.failures == 1
        row = store.get("r1")
        assert (row["state"], row["reasoning_chars"], row["lone_think_close"], row["reasoned_anyway"]) == ("completed", 0, False, False)
        assert store.get("no-state") is None

    def test_round_2_fields_not_given_are_empty(self, store):
        write(store, request("r1"), state="completed", status=200)
        row = store.get("r1")
        assert {name: row[name] for name in ROUND_2} == {
            **dict.fromkeys(ROUND_2), "reasoning_chars": 0, "lone_think_close": False, "reasoned_anyway": False
        }

    @pytest.mark.parametrize(
        "fields, stored",
        [
            ({"tokens_per_s": float("nan"), "upstream_ms": float("inf"), "first_token_ms": float("-inf")}, {}),
            ({"prompt_tokens": 2**70, "completion_tokens": -5, "reasoning_chars": 2**64}, {}),
            ({"prompt_tokens": 2**31, "completion_tokens": 2**31 - 1}, {"completion_tokens": 2**31 - 1}),
            ({"status": float("nan"), "response_bytes": 2**63}, {}),
        ],
    )
    def test_numbers_sqlite_or_json_cannot_hold_are_not_stored(self, store, fields, stored):
        write(store, request("r1"), state="completed", **fields)
        row = store.get("r1")
        assert row["state"] == "completed"
        assert {name: row[name] for name in fields} == {
            **{name: 0 if name == "reasoning_chars" else None for name in fields}, **stored
        }
        assert store.failures == 0

    def test_lone_surrogates_are_kept_as_escapes(self, store):
        write(store, {**request("r1"), "requested_model": "gpt-\ud800", "path": "/v1/\udcff"}, state="completed", response_model="m\udfff")
        row = store.get("r1")
        assert (row["requested_model"], row["path"], row["response_model"]) == ("gpt-\\ud800", "/v1/\\udcff", "m\\udfff")
        assert store.failures == 0

    def test_finish_keeps_what_it_is_not_given(self, store):
        write(store, request("r1", stream=True), state="completed", status=200)
        row = store.get("r1")
        assert row["stream"] is True
        assert (row["requested_model"], row["routed_model"]) == ("gpt-4o", "qwen3:8b")

    def test_begin_and_finish_in_one_batch(self, location):
        store = LogStore(location)
        store.begin(request("r1", started_at=time.time()))
        store.finish("r1", state="completed", status=200)
        store.open()
        store.close()
        assert store.get("r1")["state"] == "completed"
        assert store.get("r1")["request_body"] == '{"model": "gpt-4o"}'

    def test_each_body_is_written_once(self, store):
        store.begin(request("r1"))
        wait_for(lambda: store.get("r1") is not None)
        assert raw(store, "SELECT (SELECT count(*) FROM request_bodies), (SELECT count(*) FROM response_bodies)") == [(1, 0)]
        store.finish("r1", state="completed", response_body=b"answer")
        store.finish("r1", state="completed", response_body=b"again")
        store.finish("never-begun", state="completed", response_body=b"orphan")
        store.close()
        assert raw(store, "SELECT count(*) FROM response_bodies") == [(1,)]
        assert store.get("r1")["response_body"] == "answer"

    def test_thousands_of_requests_are_all_written(self, store):
        for number in range(2000):
            store.begin(request(f"r{number}", started_at=NOW + number))
            store.finish(f"r{number}", state="completed", status=200, duration_ms=1.0, response_body=b"{}")
        store.close(timeout=10)
        assert total(store) == 2000
        assert total(store, state="completed") == 2000
        assert raw(store, "SELECT count(*) FROM response_bodies") == [(2000,)]
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
        store.begin(request("colour", colour="blue"))
        store.begin(request("r1"))
        store.finish("r1", state="completed", colour="blue")
        store.finish("r1", state="completed", request_body=b"late")
        store.begin(request("r2"))
        store.close()
        assert store.failures == 5
        assert {row["id"]: row["state"] for row in store.logs()[0]} == {"r1": "inflight", "r2": "inflight"}


class TestBodies:
    def test_large_request_body_is_stored_up_to_the_cap(self, path):
        store = LogStore(str(path), max_body_bytes=1000)
        store.open()
        body = b"a" * (10 * 1024 * 1024)
        store.begin(request("r1", request_body=body, request_bytes=len(body)))
        store.close()
        marker = f"\n{TRUNCATED}: 10485760 bytes in total]"
        assert raw(store, "SELECT length(body), zlib FROM request_bodies") == [(1000 + len(marker.encode()), 0)]
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
            (bytearray(b"x" * 80), None, "x" * 80),
        ],
    )
    def test_response_body_cap_and_marker(self, location, body, response_bytes, expected):
        store = opened(location, max_body_bytes=100)
        store.begin(request("r1"))
        store.finish("r1", state="completed", response_body=body, response_bytes=response_bytes)
        store.close()
        assert store.get("r1")["response_body"] == expected

    def test_body_cut_inside_a_character_still_decodes(self, location):
        store = opened(location, max_body_bytes=3)
        store.begin(request("r1", request_body="aé€".encode(), request_bytes=6))
        store.close()
        assert store.get("r1")["request_body"] == f"aé\n{TRUNCATED}: 6 bytes in total]"

    def test_big_bodies_are_stored_compressed_and_read_back_whole(self, sqlite_store):
        store = sqlite_store
        answer = b"".join(
            b'data: {"choices": [{"index": 0, "delta": {"content": " word%d"}}]}\n\n' % number for number in range(400)
        )
        prompt = json.dumps({"messages": [{"role": "user", "content": "tell me " * 1000}]}).encode()
        binary = os.urandom(COMPRESS_FROM * 2)
        small = b"s" * (COMPRESS_FROM - 1)
        store.begin(request("text", request_body=prompt, request_bytes=len(prompt)))
        store.finish("text", state="completed", response_body=answer)
        store.begin(request("binary", request_body=binary, request_bytes=len(binary)))
        store.finish("binary", state="completed", response_body=small)
        store.close()
        stored = {
            id: values
            for id, *values in raw(
                store,
                "SELECT id, length(sent.body), sent.zlib, length(delivered.body), delivered.zlib FROM requests"
                " JOIN request_bodies AS sent USING (seq) JOIN response_bodies AS delivered USING (seq)",
            )
        }
        assert stored["text"][1] == 1 and stored["text"][0] < len(prompt) / 10
        assert stored["text"][3] == 1 and stored["text"][2] < len(answer) / 5
        assert stored["binary"] == [len(binary), 0, len(small), 0], "kept as they are: no gain, or too small"
        text = store.get("text")
        assert (text["request_body"], text["response_body"]) == (prompt.decode(), answer.decode())
        assert text["response_text"] == "".join(f" word{number}" for number in range(400))
        assert store.get("binary")["response_body"] == small.decode()
        assert [row["id"] for row in store.logs(q="WORD399")[0]] == ["text"]
        assert [row["id"] for row in store.logs(q="TELL ME")[0]] == ["text"]


class TestRedaction:
    def files(self, path: Path) -> list[Path]:
        return [file for file in path.parent.iterdir() if file.name.startswith(path.name)]

    def test_secrets_never_reach_the_files(self, sqlite_store, path):
        store = sqlite_store
        write(store, request("r1", path=SECRET_PATH, request_headers=SECRET_HEADERS), state="completed")
        written = self.files(path)
        assert {file.name for file in written} >= {"requests.db", "requests.db-wal", "requests.db-shm"}
        store.close()
        for file in written + self.files(path):
            if file.exists():
                assert SECRET.encode() not in file.read_bytes(), file.name

        row = store.get("r1")
        assert row["request_headers"] == [[name, "[redacted]"] for name, _ in SECRET_HEADERS[:-1]] + [
            ["Content-Type", "application/json"]
        ]
        masked = "/v1beta/models/gemini:generateContent?key=[redacted]&alt=sse&api_key=[redacted]&Access_Token=[redacted]"
        assert row["path"] == masked
        assert store.logs()[0][0]["path"] == masked

    def test_files_are_private(self, tmp_path):
        directory = tmp_path / "new" / "logs"
        path = directory / "requests.db"
        store = LogStore(str(path))
        store.open()
        write(store, request("r1"), state="completed")
        modes = {file.name: stat.S_IMODE(file.stat().st_mode) for file in directory.iterdir()}
        store.close()
        assert modes == {"requests.db": 0o600, "requests.db-wal": 0o600, "requests.db-shm": 0o600}
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
        assert stat.S_IMODE(directory.parent.stat().st_mode) == 0o700

    def test_an_existing_directory_keeps_its_mode(self, tmp_path):
        tmp_path.chmod(0o755)
        store = LogStore(str(tmp_path / "requests.db"))
        store.open()
        store.close()
        assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o755
        assert stat.S_IMODE((tmp_path / "requests.db").stat().st_mode) == 0o600

    def test_an_existing_readable_file_is_reported(self, path, caplog):
        path.touch(mode=0o644)
        path.chmod(0o644)
        with caplog.at_level(logging.WARNING, logger="logstore"):
            store = LogStore(str(path))
            store.open()
            store.close()
        assert "has mode 644" in caplog.text
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, "the user's choice is left alone"


class TestQueries:
    @pytest.fixture
    def filled(self, store):
        rows = [
            request("a", NOW - 50, path="/v1/chat/completions", request_body=b'{"prompt": "Hello World"}'),
            request("b", NOW - 40, service="ollama", path="/api/chat", requested_model="llama3", routed_model=None),
            request("c", NOW - 30, requested_model="qwen3:8b", routed_model="qwen3:14b"),
            request("d", NOW - 20, path="/v1/models", requested_model=None, routed_model=None),
            request("e", NOW - 10, path="/v1/embeddings", request_body="Ärger 100%_done".encode()),
            request("f", NOW - 5, path="/v1/completions?token=Ärger"),
        ]
        for row in rows:
            store.begin(row)
        store.finish("a", state="completed", status=200, response_body=b"the ANSWER is 42")
        store.finish("b", state="error", status=502, error="upstream failed")
        store.finish("c", state="completed", status=200)
        store.finish("d", state="aborted")
        store.finish("e", state="completed")
        store.close()
        return store

    def ids(self, store, **filters) -> list[str]:
        return [row["id"] for row in store.logs(**filters)[0]]

    @pytest.mark.parametrize(
        "filters, expected",
        [
            ({}, ["f", "e", "d", "c", "b", "a"]),
            ({"model": "qwen3:8b"}, ["f", "e", "c", "a"]),
            ({"model": "qwen3:14b"}, ["c"]),
            ({"model": "gpt-4o"}, ["f", "e", "a"]),
            ({"model": "llama3"}, ["b"]),
            ({"service": "ollama"}, ["b"]),
            ({"status": 200}, ["c", "a"]),
            ({"status": 404}, []),
            ({"state": "inflight"}, ["f"]),
            ({"state": "aborted"}, ["d"]),
            ({"q": "/API/"}, ["b"]),
            ({"q": "hello world"}, ["a"]),
            ({"q": "answer"}, ["a"]),
            ({"q": "ärger"}, ["e"]),
            ({"q": "ÄRGER"}, ["e"]),
            ({"q": "100%_"}, ["e"]),
            ({"q": "0%d"}, []),
            ({"q": "_"}, ["e"]),
            ({"q": "completions"}, ["f", "c", "a"]),
            ({"q": "redacted"}, ["f"]),
            ({"model": "gpt-4o", "service": "openai", "state": "completed"}, ["e", "a"]),
            ({"model": "qwen3:8b", "q": "embeddings"}, ["e"]),
        ],
    )
    def test_filters(self, filled, filters, expected):
        assert self.ids(filled, **filters) == expected
        assert total(filled, **filters) == len(expected)

    def test_total_counts_beyond_the_page(self, filled):
        rows, count = filled.logs(limit=2, offset=1, model="qwen3:8b")
        assert [row["id"] for row in rows] == ["e", "c"]
        assert count == 4
        assert filled.logs(limit=2, offset=10)[0] == []
        assert self.ids(filled, limit=0) == ["f"]
        assert self.ids(filled, limit=2, offset=-5) == ["f", "e"]

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

    def test_search_covers_only_the_stored_part_of_a_body(self, location):
        store = opened(location, max_body_bytes=10)
        store.begin(request("r1", request_body=b"0123456789needle"))
        store.close()
        assert total(store, q="needle") == 0
        assert total(store, q="truncated") == 1

    def test_unknown_id(self, store):
        assert store.get("nope") is None

    def test_unmatched_models(self, store):
        for id, started, requested, routed, status in [
            ("1", 100.0, "mystery", "mystery", 404),
            ("2", 200.0, "mystery", "mystery", 200),
            ("3", 150.0, "gpt-4", "llama3-70b", 200),
            ("4", 300.0, "unrouted", None, None),
            ("5", 900.0, "later", "later", 200),
        ]:
            store.begin(request(id, started, requested_model=requested, routed_model=routed))
            store.finish(id, state="completed", status=status)
        store.close()
        assert store.unmatched_models(before=500.0, limit=10) == [("unrouted", 1, 300.0, 0), ("mystery", 2, 200.0, 1)]

    @pytest.mark.parametrize(
        "body, text",
        [
            (b'data: {"choices": [{"index": 0, "delta": {"content": "Hi"}}]}\n\ndata: {"choices": [{"index": 0, "delta": {"content": " there"}}]}\n\ndata: [DONE]\n\n', "Hi there"),
            (b'{"choices": [{"index": 0, "message": {"role": "assistant", "content": "Plain."}}]}', "Plain."),
            (b'{"message": {"content": "Ol"}, "done": false}\n{"message": {"content": "lama"}, "done": true}\n', "Ollama"),
            (b'{"object": "list", "data": [{"embedding": [0.1]}]}', None),
            (b"", None),
        ],
    )
    def test_detail_assembles_the_answer_text(self, store, body, text):
        write(store, request("r1"), state="completed", response_body=body)
        assert store.get("r1")["response_text"] == text


class TestStats:
    def test_empty(self, store):
        assert store.stats() == {
            "total": 0,
            "by_service": {},
            "by_model": {},
            "by_requested_model": {},
            "by_model_detail": {},
            "by_status": {},
            "errors": 0,
            "inflight": 0,
            "last_hour": 0,
            "last_24h": 0,
            "avg_duration_ms": None,
            "p95_duration_ms": None,
            "first_token_p50_ms": None,
            "first_token_p95_ms": None,
            "prompt_tokens": 0,
            "completion_tokens": 0,
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
        assert stats["by_requested_model"] == {"gpt-4o": 101, "llama3": 1}
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

    def test_first_token_and_tokens(self, store):
        for number in range(1, 21):
            model = "llama3-70b" if number <= 10 else "qwen3:8b"
            store.begin(request(f"s{number}", NOW - 100 + number, stream=True, routed_model=model))
            store.finish(
                f"s{number}",
                state="completed",
                status=200,
                duration_ms=500.0,
                first_token_ms=float(number * 10),
                prompt_tokens=5,
                completion_tokens=number,
                tokens_per_s=float(number),
            )
        store.begin(request("plain", NOW - 10, routed_model="llama3-70b"))
        store.finish("plain", state="completed", status=200, duration_ms=20.0, prompt_tokens=7, completion_tokens=3)
        store.begin(request("running", NOW - 1, requested_model="mistral", routed_model="mistral"))
        store.close()
        stats = store.stats(now=NOW)
        assert (stats["first_token_p50_ms"], stats["first_token_p95_ms"]) == (100.0, 190.0)
        assert (stats["prompt_tokens"], stats["completion_tokens"]) == (5 * 20 + 7, 210 + 3)
        assert stats["by_model_detail"] == {
            "llama3-70b": {"requests": 11, "first_token_p50_ms": 50.0, "tokens_per_s_p50": 5.0, "completion_tokens": 58},
            "qwen3:8b": {"requests": 10, "first_token_p50_ms": 150.0, "tokens_per_s_p50": 15.0, "completion_tokens": 155},
            "mistral": {"requests": 1, "first_token_p50_ms": None, "tokens_per_s_p50": None, "completion_tokens": 0},
        }
        assert stats["by_model"] == {"llama3-70b": 11, "qwen3:8b": 10, "mistral": 1}
        assert stats["by_requested_model"] == {"gpt-4o": 21, "mistral": 1}

    def test_percentiles_are_over_the_newest_requests(self, store, monkeypatch):
        monkeypatch.setattr(logstore, "PERCENTILE_WINDOW", 10)
        for number in range(1, 31):
            store.begin(request(f"r{number}", NOW - 100 + number))
            store.finish(f"r{number}", state="completed", duration_ms=float(number), first_token_ms=float(number))
        store.close()
        stats = store.stats(now=NOW)
        assert (stats["p95_duration_ms"], stats["first_token_p50_ms"]) == (30.0, 25.0)
        assert stats["avg_duration_ms"] == 15.5 and stats["total"] == 30, "counts and sums are over every row"


class TestRetention:
    def fill(self, path: Path, now: float) -> None:
        store = LogStore(str(path), max_age_days=365)
        store.open()
        for number in range(300):
            store.begin(request(f"old{number}", now - 8 * 86400, request_body=os.urandom(20000)))
            store.finish(f"old{number}", state="completed", response_body=os.urandom(20000))
        store.begin(request("recent", now - 3600))
        store.finish("recent", state="completed", response_body=b"kept")
        store.close()

    def test_open_deletes_old_rows_with_their_bodies_and_compacts(self, path):
        self.fill(path, time.time())
        before = path.stat().st_size
        store = LogStore(str(path), max_age_days=7)
        store.open()
        store.close()
        assert [row["id"] for row in store.logs()[0]] == ["recent"]
        assert store.get("recent")["response_body"] == "kept"
        assert raw(store, "SELECT (SELECT count(*) FROM request_bodies), (SELECT count(*) FROM response_bodies)") == [(1, 1)]
        assert pragma(path, "freelist_count") == 0
        assert path.stat().st_size < before / 10

    def test_cleanup_deletes_old_rows_while_running(self, path):
        store = LogStore(str(path), max_age_days=1)
        store.open()
        now = time.time()
        for number in range(2500):
            store.begin(request(f"old{number}", now - 2 * 86400))
            store.finish(f"old{number}", state="completed", response_body=b"{}")
        store.begin(request("recent", now - 3600))
        store.cleanup()
        store.close()
        assert [row["id"] for row in store.logs()[0]] == ["recent"]
        assert raw(store, "SELECT (SELECT count(*) FROM request_bodies), (SELECT count(*) FROM response_bodies)") == [(1, 0)]
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
    def test_rows_left_inflight_are_aborted(self, location):
        crashed = opened(location)
        now = time.time()
        crashed.begin(request("running", now))
        crashed.begin(request("done", now))
        crashed.finish("done", state="completed", status=200, duration_ms=5.0)
        crashed.record(request("short", now), state="completed", status=200, duration_ms=5.0)
        crashed.close()

        store = opened(location)
        store.close()
        running = store.get("running")
        assert (running["state"], running["error"]) == ("aborted", ABORTED_ERROR)
        for id in ("done", "short"):
            done = store.get(id)
            assert (done["state"], done["status"], done["error"]) == ("completed", 200, None)


read_only_files = pytest.mark.skipif(
    os.geteuid() == 0, reason="root writes to read-only files; the lock tests cover the retries"
)


class TestFaults:
    def test_a_batch_past_sqlites_limit_on_values_is_written_whole(self, path):
        """The writer puts many rows in one statement; SQLite's limit on bound values splits them."""
        database = SqliteDatabase(str(path))
        database.prepare(0)
        database._connection().setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 40)  # fewer values than one row has
        batch = logstore.Batch()
        for number in range(25):
            batch.add(("record", request(f"r{number}", started_at=time.time()), {"state": "completed", "response_body": f"answer {number}".encode()}), 1000)
        database.write(batch)
        database.write(batch)  # a batch retried after a failed commit adds nothing
        database.disconnect()
        store = opened(str(path))
        try:
            assert total(store) == 25
            assert store.get("r24")["response_body"] == "answer 24"
            assert raw(store, "SELECT (SELECT count(*) FROM request_bodies), (SELECT count(*) FROM response_bodies)") == [(25, 25)]
        finally:
            store.close()

    def test_locked_database_is_retried_without_losing_rows(self, sqlite_store, path):
        store = sqlite_store
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
