"""
The request log: one SQLite file (or a PostgreSQL database, see pglogstore), written by one background thread.

The proxy's event loop never waits on the disk: `begin`, `finish` and
`cleanup` only put an item on a bounded queue, and a writer thread drains it
in batches, one transaction each. A slow, locked or failing disk costs log
entries at worst (counted in `dropped`), never proxy latency. The reads behind
the JSON API block and are meant for a worker thread; WAL mode lets them run
while the writer writes.

What differs between the two databases (connecting, schema, writing a batch,
retention, text search) sits behind `Database`; the queue, the writer thread
and the queries are shared, so both stores answer every query the same.
"""

import contextlib
import errno
import json
import logging
import math
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field
from datetime import datetime
from datetime import timezone
from pathlib import Path
from typing import Any
from typing import Protocol

logger = logging.getLogger(__name__)

REDACTED_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key", "api-key"})
REDACTED = "[redacted]"
TRUNCATED = "…[truncated"
"""The start of the marker after a cut body; the whole marker is f"\\n{TRUNCATED}: {total} bytes in total]"."""
ABORTED_ERROR = "proxy stopped before the request finished"

BATCH_SIZE = 500
"""Queue items per transaction: one commit for many rows is what lets the writer keep up."""
RETENTION_BATCH = 1000
"""Rows per DELETE, so that retention never holds the write lock for long."""
MAX_PAGE = 500
MAX_INFLIGHT_ELSEWHERE = 1000
"""Other replicas' requests listed at most by /api/inflight."""
BUSY_TIMEOUT = 1.0
"""Seconds to wait for a lock: a locked database fails fast and the writer's retry takes over."""
WAL_SIZE_LIMIT = 32 * 1024 * 1024
"""Bytes the WAL file is cut back to after a checkpoint, so a burst of big bodies leaves no big file behind."""
RETRY_FIRST_DELAY = 0.25
RETRY_MAX_DELAY = 5.0
FAILURE_WARNING_INTERVAL = 10.0
DROP_WARNING_INTERVAL = 60.0
SECONDS_PER_DAY = 86400.0
AUTO_VACUUM_INCREMENTAL = 2

ROW_FIELDS = (
    "id",
    "started_at",
    "method",
    "path",
    "service",
    "upstream",
    "stream",
    "requested_model",
    "routed_model",
    "status",
    "state",
    "duration_ms",
    "request_bytes",
    "response_bytes",
    "error",
    "instance",
)
FINISH_FIELDS = frozenset(
    {
        "state",
        "status",
        "duration_ms",
        "response_bytes",
        "response_body",
        "error",
        "stream",
        "routed_model",
        "requested_model",
    }
)

MIGRATIONS: list[tuple[str, ...]] = [
    # 1: the initial schema. `seq` is the insertion order that breaks ties between equal
    # start times; as an INTEGER PRIMARY KEY it is the rowid, which VACUUM cannot renumber.
    # The bodies come last so that listing rows never reads their overflow pages.
    (
        """
        CREATE TABLE requests (
            seq INTEGER PRIMARY KEY,
            id TEXT NOT NULL UNIQUE,
            started_at REAL NOT NULL,
            method TEXT,
            path TEXT,
            service TEXT,
            upstream TEXT,
            stream INTEGER NOT NULL DEFAULT 0,
            requested_model TEXT,
            routed_model TEXT,
            status INTEGER,
            state TEXT NOT NULL DEFAULT 'inflight',
            duration_ms REAL,
            request_bytes INTEGER,
            response_bytes INTEGER,
            error TEXT,
            request_headers TEXT NOT NULL DEFAULT '[]',
            request_body BLOB,
            response_body BLOB
        )
        """,
        "CREATE INDEX requests_started_at ON requests (started_at)",
        "CREATE INDEX requests_state ON requests (state)",
        "CREATE INDEX requests_status ON requests (status)",
        "CREATE INDEX requests_service ON requests (service)",
        "CREATE INDEX requests_requested_model ON requests (requested_model)",
        "CREATE INDEX requests_routed_model ON requests (routed_model)",
    ),
    # 2: the replica (INSTANCE_NAME) that served the request
    ("ALTER TABLE requests ADD COLUMN instance TEXT",),
]

INSERT = """
    INSERT INTO requests (
        id, started_at, method, path, service, upstream, stream, requested_model, routed_model,
        request_headers, request_body, request_bytes, instance
    ) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (id) DO NOTHING
"""
# A field finish() was not given is passed as NULL and keeps what begin() wrote.
UPDATE = """
    UPDATE requests SET
        state = coalesce(?, state),
        status = coalesce(?, status),
        duration_ms = coalesce(?, duration_ms),
        response_bytes = coalesce(?, response_bytes),
        response_body = coalesce(?, response_body),
        error = coalesce(?, error),
        stream = coalesce(?, stream),
        routed_model = coalesce(?, routed_model),
        requested_model = coalesce(?, requested_model)
    WHERE id = ?
"""

_BEGIN = "begin"
_FINISH = "finish"
_CLEANUP = "cleanup"
_WAKE = ("wake",)
"""Put by close() so that a writer blocked on an empty queue notices it should stop."""


def schema_version(conn: sqlite3.Connection) -> int:
    return conn.execute("PRAGMA user_version").fetchone()[0]


def migrate(conn: sqlite3.Connection) -> None:
    """Applies the migrations the file lacks, all in one transaction so a failure leaves the old version intact."""
    version = schema_version(conn)
    if version > len(MIGRATIONS):
        raise sqlite3.DatabaseError(
            f"request log schema version {version} is newer than this proxy knows ({len(MIGRATIONS)})"
        )
    if version == len(MIGRATIONS):
        return
    conn.execute("BEGIN IMMEDIATE")
    with conn:
        # Read again under the write lock: another process may have migrated the file meanwhile.
        for statements in MIGRATIONS[schema_version(conn) :]:
            for statement in statements:
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {len(MIGRATIONS)}")


def check_writable(path: str) -> None:
    """
    Fails before SQLite opens a write-protected file read-only: it would create the -wal
    and -shm files write-protected as well, and writes would still fail once the
    database file's permissions are fixed.
    """
    for name in (path, f"{path}-wal", f"{path}-shm"):
        if os.path.exists(name) and not os.access(name, os.W_OK):
            raise PermissionError(errno.EACCES, "request log file is read-only", name)


def open_for_writing(path: str) -> sqlite3.Connection:
    """A write connection to a database with the current schema, created (directory included) if missing."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    check_writable(path)
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT, isolation_level=None)
    try:
        # Only takes effect before WAL mode writes the first page of a new file; on an older
        # file it is what the VACUUM in `compact` converts the file to.
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        if conn.execute("PRAGMA journal_mode = WAL").fetchone()[0] != "wal":
            logger.warning("request log %s cannot use WAL mode; reads will wait for writes", path)
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
        migrate(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def delete_older_than(conn: sqlite3.Connection, cutoff: float) -> None:
    deleted = 0
    while True:
        count = conn.execute(
            "DELETE FROM requests WHERE seq IN (SELECT seq FROM requests WHERE started_at < ? LIMIT ?)",
            (cutoff, RETENTION_BATCH),
        ).rowcount
        deleted += count
        if count < RETENTION_BATCH:
            break
    if deleted:
        compact(conn)
    conn.execute("PRAGMA optimize")


def compact(conn: sqlite3.Connection) -> None:
    """Gives the pages of deleted rows back to the file system instead of keeping them for reuse."""
    if conn.execute("PRAGMA auto_vacuum").fetchone()[0] == AUTO_VACUUM_INCREMENTAL:
        # executescript steps the pragma to the end; on Python 3.11 execute() frees a single page.
        conn.executescript("PRAGMA incremental_vacuum")
    else:
        conn.execute("VACUUM")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def file_identity(path: str) -> tuple[int, int] | None:
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return None
    return stat.st_dev, stat.st_ino


def cap_body(body: bytes | None, total: int | None, limit: int) -> bytes | None:
    """The first `limit` bytes, with a marker saying how big the body was whenever that is not all of it."""
    if body is None:
        return None
    view = memoryview(body)
    kept = bytes(view[:limit])
    whole = max(view.nbytes, total or 0)
    if whole > len(kept):
        kept += f"\n{TRUNCATED}: {whole} bytes in total]".encode()
    return kept


def redact_headers(headers: Iterable[tuple[str, str]]) -> list[list[str]]:
    """Secrets are replaced before anything is written: log files get copied around."""
    return [[name, REDACTED if name.lower() in REDACTED_HEADERS else value] for name, value in headers]


def iso_utc(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _flag(value: Any) -> int:
    return int(bool(value))


def _optional(convert: Any, value: Any) -> Any:
    return None if value is None else convert(value)


def _contains_folded(haystack: str | bytes | None, needle: str) -> bool:
    if haystack is None:
        return False
    if isinstance(haystack, bytes):
        haystack = haystack.decode("utf-8", "replace")
    return needle in haystack.casefold()


def _body_text(body: str | bytes | None) -> str:
    """A stored body as text: SQLite keeps the bytes, PostgreSQL text decoded the same way on writing."""
    if isinstance(body, str):
        return body
    return (body or b"").decode("utf-8", "replace")


def escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _row(values: Iterable[Any]) -> dict:
    row = dict(zip(ROW_FIELDS, values))
    row["started_at"] = iso_utc(row["started_at"])
    row["stream"] = bool(row["stream"])
    return row


class RateLimit:
    """Lets a repeating warning through once per interval: a dead disk must not flood the proxy's log."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._last = -math.inf

    def ready(self) -> bool:
        now = time.monotonic()
        if now - self._last < self.interval:
            return False
        self._last = now
        return True


@dataclass
class Batch:
    """Queue items as statement parameters: bodies cut, headers redacted, values of the types SQLite binds."""

    size: int = 0
    inserts: list[tuple] = field(default_factory=list)
    updates: list[tuple] = field(default_factory=list)
    cleanup: bool = False

    def add(self, item: tuple, max_body_bytes: int) -> None:
        kind = item[0]
        if kind == _BEGIN:
            self.inserts.append(self._insert(item[1], max_body_bytes))
        elif kind == _FINISH:
            self.updates.append(self._update(item[1], item[2], max_body_bytes))
        else:
            self.cleanup = True
        self.size += 1

    @staticmethod
    def _insert(row: dict, max_body_bytes: int) -> tuple:
        body = row.get("request_body")
        total = row.get("request_bytes")
        if total is None and body is not None:
            total = len(body)
        return (
            str(row["id"]),
            float(row["started_at"]),
            _text(row.get("method")),
            _text(row.get("path")),
            _text(row.get("service")),
            _text(row.get("upstream")),
            _flag(row.get("stream")),
            _text(row.get("requested_model")),
            _text(row.get("routed_model")),
            json.dumps(redact_headers(row.get("request_headers") or ())),
            cap_body(body, total, max_body_bytes),
            _optional(int, total),
            _text(row.get("instance")),
        )

    @staticmethod
    def _update(id: str, fields: dict, max_body_bytes: int) -> tuple:
        unknown = fields.keys() - FINISH_FIELDS
        if unknown:
            raise TypeError(f"finish() got unknown fields: {', '.join(sorted(unknown))}")
        return (
            _text(fields.get("state")),
            _optional(int, fields.get("status")),
            _optional(float, fields.get("duration_ms")),
            _optional(int, fields.get("response_bytes")),
            cap_body(fields.get("response_body"), fields.get("response_bytes"), max_body_bytes),
            _text(fields.get("error")),
            _optional(_flag, fields.get("stream")),
            _text(fields.get("routed_model")),
            _text(fields.get("requested_model")),
            str(id),
        )


class Reader(Protocol):
    """A read connection as the queries use it: `?` placeholders, rows as tuples."""

    def execute(self, sql: str, params: Iterable[Any] = ...) -> Any: ...


class Database(Protocol):
    """
    One kind of database under the log. The writer thread alone calls `write`,
    `retain`, `tick` and `disconnect`, on a write connection the database keeps;
    `reading` may be called from any thread.
    """

    where: str
    """The file or server, as messages may show it."""
    transient: tuple[type[Exception], ...]
    """Write errors that a retry of the same batch can outlive."""
    errors: tuple[type[Exception], ...]
    """Every error of the driver."""
    tick_seconds: float | None
    """How often the writer calls `tick` when nothing else is to be done; None = never."""

    def prepare(self, cutoff: float) -> None:
        """
        Blocking, before the writer starts: what must fail at startup rather than later,
        and the first retention (rows started before `cutoff`), now or as soon as it can.
        """

    def write(self, batch: "Batch") -> None: ...

    def retain(self, cutoff: float) -> None:
        """Deletes the rows started before `cutoff` and gives their space back."""

    def tick(self) -> None: ...

    def disconnect(self) -> None: ...

    def describe(self, error: Exception) -> str:
        """An error's message as it may be shown."""

    def reading(self) -> contextlib.AbstractContextManager[Reader]:
        """A read connection in one transaction, so that counts and rows agree."""

    def search(self, q: str) -> tuple[str, list[Any]]:
        """A WHERE clause (and its parameters) for rows whose path or bodies contain `q`, ignoring case."""

    def inflight_elsewhere(self, instance: str | None, limit: int) -> list[tuple]:
        """Rows other replicas are serving now: INFLIGHT_FIELDS plus the bytes answered so far."""

    def close(self) -> None:
        """Lets go of what reads keep open."""


class SqliteDatabase:
    """The request log in one SQLite file in WAL mode, for one proxy process."""

    transient = (sqlite3.OperationalError, OSError)
    errors = (sqlite3.Error,)
    tick_seconds = None

    def __init__(self, path: str) -> None:
        self.where = self.path = str(Path(path).absolute())
        self._conn: sqlite3.Connection | None = None
        self._identity: tuple[int, int] | None = None
        self._read_uri = Path(self.path).as_uri() + "?mode=ro"

    def prepare(self, cutoff: float) -> None:
        """Opens the file now, so that a path that cannot be used stops startup; one process owns the file."""
        conn = open_for_writing(self.path)
        try:
            conn.execute("UPDATE requests SET state = 'aborted', error = ? WHERE state = 'inflight'", (ABORTED_ERROR,))
            delete_older_than(conn, cutoff)
        finally:
            conn.close()

    def write(self, batch: "Batch") -> None:
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")
        with conn:
            conn.executemany(INSERT, batch.inserts)
            conn.executemany(UPDATE, batch.updates)

    def retain(self, cutoff: float) -> None:
        delete_older_than(self._connection(), cutoff)

    def tick(self) -> None:
        pass

    def _connection(self) -> sqlite3.Connection:
        """Reopens the file when it was deleted or replaced: the old connection would write into the void."""
        # an identity of None means the file vanished while it was being opened: open it again
        if self._conn is not None and (self._identity is None or file_identity(self.path) != self._identity):
            logger.warning("request log %s was removed or replaced; opening it again", self.path)
            self.disconnect()
        if self._conn is None:
            self._conn = open_for_writing(self.path)
            self._identity = file_identity(self.path)
        return self._conn

    def disconnect(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None

    @staticmethod
    def describe(error: Exception) -> str:
        return str(error)

    @contextlib.contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self._read_uri, uri=True, timeout=BUSY_TIMEOUT, isolation_level=None)
        try:
            conn.create_function("contains_folded", 2, _contains_folded, deterministic=True)
            conn.execute("BEGIN")
            yield conn
        finally:
            conn.close()

    @staticmethod
    def search(q: str) -> tuple[str, list[Any]]:
        # LIKE ignores case for ASCII only, but runs in C without a call into Python per row.
        if q.isascii():
            searched = ("path", "CAST(request_body AS TEXT)", "CAST(response_body AS TEXT)")
            return "(" + " OR ".join(f"{column} LIKE ? ESCAPE '\\'" for column in searched) + ")", [
                f"%{escape_like(q)}%"
            ] * 3
        searched = ("path", "request_body", "response_body")
        return "(" + " OR ".join(f"contains_folded({column}, ?)" for column in searched) + ")", [q.casefold()] * 3

    @staticmethod
    def inflight_elsewhere(instance: str | None, limit: int) -> list[tuple]:
        return []

    def close(self) -> None:
        pass


class Writer:
    """The queue and the one thread that drains it into the database, which only that thread writes."""

    def __init__(self, database: Database, max_body_bytes: int, max_age_seconds: float, queue_size: int) -> None:
        self.database = database
        self.max_body_bytes = max_body_bytes
        self.max_age_seconds = max_age_seconds
        self.queue: queue.Queue[tuple] = queue.Queue(queue_size)
        self.failures = 0
        self.dropped = 0
        self._thread: threading.Thread | None = None
        self._closing = threading.Event()
        self._deadline = math.inf
        self._next_tick = 0.0
        self._abandoned = 0
        self._drop_warning = RateLimit(DROP_WARNING_INTERVAL)
        self._failure_warning = RateLimit(FAILURE_WARNING_INTERVAL)

    def put(self, item: tuple) -> None:
        try:
            self.queue.put_nowait(item)
        except queue.Full:
            self.dropped += 1
            if self._drop_warning.ready():
                logger.warning("request log queue is full; %d entries dropped so far", self.dropped)

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("the request log writer is already running")
        self._thread = threading.Thread(target=self._run, name="request-log-writer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._deadline = time.monotonic() + timeout
        self._closing.set()
        with contextlib.suppress(queue.Full):  # a full queue wakes the writer anyway
            self.queue.put_nowait(_WAKE)
        thread.join(timeout)
        if thread.is_alive():
            logger.warning("request log writer still busy after %g s; leaving it behind", timeout)

    def _run(self) -> None:
        try:
            while not self._finished():
                self._tick()
                batch = self._prepare(self._take())
                if batch.size:
                    self._write_or_skip(batch)
        finally:
            self.database.disconnect()
            self._report_unwritten()

    def _finished(self) -> bool:
        return time.monotonic() >= self._deadline or (self._closing.is_set() and self.queue.empty())

    def _take(self) -> list[tuple]:
        """
        Blocks for one item (until the next tick at most), then takes what else is
        queued already, to write it all in one transaction.
        """
        timeout = None if self.database.tick_seconds is None else max(0.0, self._next_tick - time.monotonic())
        try:
            items = [self.queue.get(timeout=timeout)]
        except queue.Empty:
            return []
        while len(items) < BATCH_SIZE:
            try:
                items.append(self.queue.get_nowait())
            except queue.Empty:
                break
        return [item for item in items if item is not _WAKE]

    def _tick(self) -> None:
        """The database's periodic work; its failures are the next tick's to retry, and cost no entries."""
        if self.database.tick_seconds is None or time.monotonic() < self._next_tick:
            return
        self._next_tick = time.monotonic() + self.database.tick_seconds
        try:
            self.database.tick()
        except Exception as e:
            self.database.disconnect()
            if self._failure_warning.ready():
                logger.warning("request log %s: %s", self.database.where, e)

    def _prepare(self, items: list[tuple]) -> Batch:
        """Done once per batch and before any retry, which also lets go of big bodies early."""
        batch = Batch()
        for item in items:
            try:
                batch.add(item, self.max_body_bytes)
            except Exception as e:
                self.failures += 1
                if self._failure_warning.ready():
                    logger.warning("skipping a malformed request log entry: %r", e)
        return batch

    def _write_or_skip(self, batch: Batch) -> None:
        """Skips a batch that fails for a reason a retry cannot fix (a corrupt file, a bug), so the writer goes on."""
        try:
            self._write_with_retry(batch)
        except Exception:
            self.database.disconnect()
            self.failures += batch.size
            if self._failure_warning.ready():
                logger.exception("cannot write %d request log entries; skipping them", batch.size)

    def _write_with_retry(self, batch: Batch) -> None:
        """Retries the same batch, so that nothing queued is lost to a fault that clears (a lock, a full disk)."""
        delay = RETRY_FIRST_DELAY
        attempts = 0
        while True:
            try:
                self._write(batch)
            except self.database.transient as e:
                self.database.disconnect()
                if attempts == 0:
                    self.failures += batch.size
                attempts += 1
                if self._failure_warning.ready():
                    logger.warning(
                        "cannot write request log %s: %s; retrying (%d entries waiting)",
                        self.database.where,
                        e,
                        batch.size + self.queue.qsize(),
                    )
                if not self._pause(delay):
                    self._abandoned += batch.size
                    return
                delay = min(delay * 2, RETRY_MAX_DELAY)
            else:
                if attempts:
                    logger.info("request log %s written again after %d failed attempts", self.database.where, attempts)
                return

    def _write(self, batch: Batch) -> None:
        self.database.write(batch)
        # When retention fails after the commit, writing the batch again is harmless:
        # known ids are not inserted twice and the updates set the same values.
        if batch.cleanup:
            self.database.retain(time.time() - self.max_age_seconds)

    def _pause(self, seconds: float) -> bool:
        """Sleeps between retries, never past close()'s deadline; False once that has passed."""
        end = time.monotonic() + seconds
        self._closing.wait(seconds)
        time.sleep(max(0.0, min(end, self._deadline) - time.monotonic()))
        return time.monotonic() < self._deadline

    def _report_unwritten(self) -> None:
        unwritten = self._abandoned
        while True:
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                break
            if item is not _WAKE:
                unwritten += 1
        if unwritten:
            logger.warning("request log: %d entries were not written before close() gave up", unwritten)


class LogUnavailable(Exception):
    """The log cannot be read right now (the file or the server); the message is safe to show."""


def open_database(location: str, instance: str | None, progress: Callable[[], dict[str, int]]) -> Database:
    """A postgresql:// URL is a shared PostgreSQL database; anything else is the path of an SQLite file."""
    if location.startswith(("postgresql://", "postgres://")):
        from pglogstore import PostgresDatabase  # the driver loads only for those who use it

        return PostgresDatabase(location, instance, progress)
    return SqliteDatabase(location)


class LogStore:
    """
    The request log as the addon sees it: writes that only enqueue, for the event loop,
    and blocking reads, for a worker thread.

    `location` is an SQLite file's path or a PostgreSQL URL; `instance` names the
    proxy process in every row it writes (INSTANCE_NAME); `progress` gives the bytes
    answered so far per request in flight, which a shared database shows the other
    replicas (it is called on the writer thread).
    """

    def __init__(
        self,
        location: str,
        max_body_bytes: int = 262144,
        max_age_days: float = 7.0,
        queue_size: int = 10000,
        instance: str | None = None,
        progress: Callable[[], dict[str, int]] = dict,
    ) -> None:
        if max_age_days <= 0:
            raise ValueError(f"max_age_days must be positive, got {max_age_days}")
        if max_body_bytes < 0:
            raise ValueError(f"max_body_bytes must not be negative, got {max_body_bytes}")
        if queue_size < 1:
            raise ValueError(f"queue_size must be at least 1, got {queue_size}")
        self.instance = instance
        self.database = open_database(location, instance, progress)
        self.max_age_seconds = max_age_days * SECONDS_PER_DAY
        self._writer = Writer(self.database, max_body_bytes, self.max_age_seconds, queue_size)

    @property
    def path(self) -> str:
        return self.database.where

    @property
    def failures(self) -> int:
        """Entries in batches whose write failed, each counted once however often it is retried."""
        return self._writer.failures

    @property
    def dropped(self) -> int:
        """Entries not queued because the queue was full."""
        return self._writer.dropped

    def open(self) -> None:
        """Blocking; entries queued before it are written once the writer runs."""
        self.database.prepare(time.time() - self.max_age_seconds)
        self._writer.start()

    def close(self, timeout: float = 5.0) -> None:
        self._writer.stop(timeout)
        self.database.close()

    def begin(self, row: dict) -> None:
        # A copy, because the writer reads the row later on its own thread.
        self._writer.put((_BEGIN, {**row, "instance": self.instance}))

    def finish(self, id: str, **fields: Any) -> None:
        self._writer.put((_FINISH, id, fields))

    def cleanup(self) -> None:
        self._writer.put((_CLEANUP,))

    def logs(
        self,
        *,
        limit: int = 50,
        offset: int = 0,
        model: str | None = None,
        service: str | None = None,
        status: int | None = None,
        state: str | None = None,
        q: str | None = None,
    ) -> tuple[list[dict], int]:
        where, params = self._filters(model, service, status, state, q)
        limit = min(max(int(limit), 1), MAX_PAGE)
        offset = max(int(offset), 0)
        with self._reading() as conn:
            total = conn.execute(f"SELECT count(*) FROM requests{where}", params).fetchone()[0]
            rows = conn.execute(
                f"SELECT {', '.join(ROW_FIELDS)} FROM requests{where} ORDER BY started_at DESC, seq DESC LIMIT ? OFFSET ?",
                [*params, limit, offset],
            ).fetchall()
        return [_row(values) for values in rows], total

    def get(self, id: str) -> dict | None:
        with self._reading() as conn:
            values = conn.execute(
                f"SELECT {', '.join(ROW_FIELDS)}, request_headers, request_body, response_body FROM requests WHERE id = ?",
                (id,),
            ).fetchone()
        if values is None:
            return None
        *fields, headers, request_body, response_body = values
        row = _row(fields)
        row["request_headers"] = json.loads(headers)
        row["request_body"] = _body_text(request_body)
        row["response_body"] = _body_text(response_body)
        return row

    def stats(self, now: float | None = None) -> dict:
        """The figures of /api/stats; `inflight` counts other replicas' requests only, the caller knows its own."""
        if now is None:
            now = time.time()
        with self._reading() as conn:
            total, errors, last_hour, last_24h, inflight_elsewhere = conn.execute(
                """
                SELECT count(*),
                       count(*) FILTER (WHERE state = 'error' OR status >= 400),
                       count(*) FILTER (WHERE started_at >= ?),
                       count(*) FILTER (WHERE started_at >= ?),
                       count(*) FILTER (WHERE state = 'inflight' AND instance <> ?)
                FROM requests
                """,
                (now - 3600, now - SECONDS_PER_DAY, self.instance or ""),
            ).fetchone()
            finished_rows = "FROM requests WHERE state != 'inflight' AND duration_ms IS NOT NULL"
            timed, avg_duration = conn.execute(f"SELECT count(*), avg(duration_ms) {finished_rows}").fetchone()
            p95_duration = None
            if timed:
                # The nearest-rank percentile: the smallest duration that at least 95% of the requests do not exceed.
                rank = math.ceil(0.95 * timed)
                p95_duration = conn.execute(
                    f"SELECT duration_ms {finished_rows} ORDER BY duration_ms LIMIT 1 OFFSET ?", (rank - 1,)
                ).fetchone()[0]
            by_service = dict(
                conn.execute("SELECT service, count(*) FROM requests WHERE service IS NOT NULL GROUP BY service")
            )
            by_model = dict(
                conn.execute(
                    """
                    SELECT coalesce(routed_model, requested_model), count(*) FROM requests
                    WHERE coalesce(routed_model, requested_model) IS NOT NULL
                    GROUP BY 1
                    """
                )
            )
            by_status = {
                str(code): count
                for code, count in conn.execute(
                    "SELECT status, count(*) FROM requests WHERE status IS NOT NULL GROUP BY status"
                )
            }
        return {
            "total": total,
            "by_service": by_service,
            "by_model": by_model,
            "by_status": by_status,
            "errors": errors,
            "inflight": inflight_elsewhere,
            "last_hour": last_hour,
            "last_24h": last_24h,
            "avg_duration_ms": avg_duration,
            "p95_duration_ms": p95_duration,
            "log_failures": self.failures,
            "log_dropped": self.dropped,
            "log_queue": self._writer.queue.qsize(),
        }

    def inflight_elsewhere(self, now: float | None = None) -> list[dict]:
        """Requests that other replicas sharing the database are serving now, as /api/inflight lists them."""
        if now is None:
            now = time.time()
        with self._translated_errors():
            rows = self.database.inflight_elsewhere(self.instance, MAX_INFLIGHT_ELSEWHERE)
        return [
            {
                "id": id,
                "method": method,
                "path": path,
                "requested_model": requested_model,
                "routed_model": routed_model,
                "started_at": iso_utc(started_at),
                "elapsed_ms": round(max(0.0, now - started_at) * 1000, 1),
                "response_bytes": response_bytes or 0,
                "instance": instance,
            }
            for id, method, path, requested_model, routed_model, started_at, instance, response_bytes in rows
        ]

    @contextlib.contextmanager
    def _translated_errors(self) -> Iterator[None]:
        try:
            yield
        except self.database.errors as e:
            raise LogUnavailable(self.database.describe(e)) from e

    @contextlib.contextmanager
    def _reading(self) -> Iterator[Reader]:
        with self._translated_errors(), self.database.reading() as conn:
            yield conn

    def _filters(
        self, model: str | None, service: str | None, status: int | None, state: str | None, q: str | None
    ) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        params: list[Any] = []
        if model is not None:
            clauses.append("(requested_model = ? OR routed_model = ?)")
            params += [model, model]
        for column, value in (("service", service), ("status", status), ("state", state)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if q:
            clause, searched = self.database.search(q)
            clauses.append(clause)
            params += searched
        return (" WHERE " + " AND ".join(clauses) if clauses else ""), params

    def unmatched_models(self, before: float, limit: int) -> list[tuple[str, int, float, int]]:
        """
        Requested names sent upstream as they were, newest first: (name, requests, last seen, 404 answers).

        Rows started at or after `before` are left out: the running proxy counted those itself.
        """
        with self._reading() as conn:
            return conn.execute(
                """
                SELECT requested_model, count(*), max(started_at), sum(CASE WHEN status = 404 THEN 1 ELSE 0 END)
                FROM requests
                WHERE requested_model IS NOT NULL AND started_at < ?
                  AND (routed_model IS NULL OR routed_model = requested_model)
                GROUP BY requested_model ORDER BY max(started_at) DESC LIMIT ?
                """,
                (before, limit),
            ).fetchall()
