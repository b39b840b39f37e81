"""
The request log: one SQLite file (or a PostgreSQL database, see pglogstore), written by one background thread.

The proxy's event loop never waits on the disk: `record`, `begin`, `finish`
and `cleanup` only put an item on a bounded queue, and a writer thread drains
it in batches, one transaction each. A slow, locked or failing disk costs log
entries at worst (counted in `dropped`), never proxy latency. The reads behind
the JSON API block and are meant for a worker thread; WAL mode lets them run
while the writer writes.

Three tables. `requests` holds one small row per request; listing, counting
and the stats read only these. A request that ends soon is written once, whole
(`record`); one that runs long is inserted while it runs (`begin`: other
replicas and crash recovery read it) and updated when it ends (`finish`). The
bodies have tables of their own, each body written once, never grown, big
ones compressed: `request_bodies` (redacted headers and the request body) with
the row's insert; `response_bodies` (as delivered) when the request ends.

The read side is plain functions of a DB-API connection (`query_logs`,
`query_row`, `query_stats`) in portable SQL with `?` placeholders, which
both databases run. What differs (connecting, the schema, writing a batch,
retention, the text search in bodies) sits behind `Database`: SQLite's is
`SqliteDatabase` here, PostgreSQL's is in pglogstore.
"""

import contextlib
import errno
import json
import logging
import math
import os
import queue
import sqlite3
import stat
import threading
import time
import zlib
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

from rerouter.answers import answer_text
from rerouter.redaction import redact_headers
from rerouter.redaction import redact_path

logger = logging.getLogger(__name__)

TRUNCATED = "…[truncated"
"""The start of the marker after a cut body; the whole marker is f"\\n{TRUNCATED}: {total} bytes in total]"."""
ABORTED_ERROR = "proxy stopped before the request finished"

BATCH_SIZE = 500
"""Queue items per transaction: one commit for many rows is what lets the writer keep up."""
GATHER_SECONDS = 0.05
"""
How long the writer waits after the first item of a batch, asleep, before it takes what else is
queued: a row is written up to 50 ms later, but the writer wakes once per batch instead of once per
item, and every wake of its thread takes the GIL from the event loop; a PostgreSQL transaction also
costs a round trip.
"""
RETENTION_BATCH = 1000
"""Rows per DELETE, so that retention never holds the write lock for long."""
MAX_PAGE = 500
MAX_INFLIGHT_ELSEWHERE = 1000
"""Other replicas' requests listed at most by /api/inflight."""
BUSY_TIMEOUT = 1.0
"""Seconds to wait for a lock: a locked database fails fast and the writer's retry takes over."""
READ_TIME_LIMIT = 5.0
"""Seconds a read may take before SQLite stops it (ReadTimeout): a search over a huge log cannot run on and on."""
PROGRESS_STEPS = 1000
"""SQLite VM steps between two checks of the read's time limit."""
WAL_SIZE_LIMIT = 32 * 1024 * 1024
"""Bytes the WAL file is cut back to after a checkpoint, so a burst of big bodies leaves no big file behind."""
RETRY_FIRST_DELAY = 0.25
RETRY_MAX_DELAY = 5.0
FAILURE_WARNING_INTERVAL = 10.0
DROP_WARNING_INTERVAL = 60.0
QUEUE_MAX_BYTES = 32 * 1024 * 1024
"""Body bytes queued or being written at most: a stuck disk fills the queue up to this, then entries are dropped."""
SECONDS_PER_DAY = 86400.0
AUTO_VACUUM_INCREMENTAL = 2
PERCENTILE_WINDOW = 10000
"""Percentiles in the stats are over the newest this many finished requests: bounded work on any size of log."""
COMPRESS_FROM = 4096
"""
Bodies from this size on are stored zlib-compressed (level 1) when that makes them smaller.
Measured on the writer thread with bench.log_write's prose: a request with a 35 KB streamed
answer cost 111 µs of CPU instead of 166 and 5.7 KB of file instead of 40; compressing 2 KB
bodies too cost 17 µs more per request than it saved.
"""
PRIVATE_FILE = 0o600
PRIVATE_DIRECTORY = 0o700
SQLITE_INTEGER = 2**63
MAX_TOKEN_COUNT = 2**31

START_FIELDS = (
    "id",
    "started_at",
    "method",
    "path",
    "service",
    "upstream",
    "stream",
    "requested_model",
    "routed_model",
)
BEGIN_COLUMNS = (*START_FIELDS, "request_bytes", "instance")
REQUEST_BODY_FIELDS = ("request_headers", "request_body")
BEGIN_FIELDS = frozenset(BEGIN_COLUMNS) | frozenset(REQUEST_BODY_FIELDS)
"""What begin() and record() take: the row as the request starts, with what the request sent."""
FLOW_FIELDS = (
    "reasoning_chars",
    "lone_think_close",
    "response_model",
    "reasoned_anyway",
    "note",
    "upstream_ms",
    "upstream_first_token_ms",
    "first_token_ms",
    "prompt_tokens",
    "completion_tokens",
    "tokens_per_s",
)
"""The fields the proxy's addons find out during a flow (FlowState.row_fields()); finish() and record() take them."""
ROW_FIELDS = (
    *START_FIELDS,
    "status",
    "state",
    "duration_ms",
    "request_bytes",
    "response_bytes",
    "error",
    *FLOW_FIELDS,
    "instance",
)
BOOLEAN_FIELDS = ("stream", "lone_think_close", "reasoned_anyway")

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
    # 2: bodies in tables of their own, each written once (`seq` is the request's); the
    # figures of round 2 and the serving instance as columns. Rows of version 1 keep their
    # bodies, with the secrets version 1 did not mask masked now (redact_path and
    # redact_headers_json are registered by open_for_writing).
    (
        """
        CREATE TABLE request_bodies (
            seq INTEGER PRIMARY KEY,
            headers TEXT NOT NULL DEFAULT '[]',
            body BLOB,
            zlib INTEGER NOT NULL DEFAULT 0
        )
        """,
        """
        CREATE TABLE response_bodies (
            seq INTEGER PRIMARY KEY,
            body BLOB,
            zlib INTEGER NOT NULL DEFAULT 0
        )
        """,
        """
        INSERT INTO request_bodies (seq, headers, body)
        SELECT seq, redact_headers_json(request_headers), request_body FROM requests
        """,
        "INSERT INTO response_bodies (seq, body) SELECT seq, response_body FROM requests WHERE response_body IS NOT NULL",
        "UPDATE requests SET path = redact_path(path) WHERE instr(path, '?') > 0",
        "ALTER TABLE requests DROP COLUMN request_headers",
        "ALTER TABLE requests DROP COLUMN request_body",
        "ALTER TABLE requests DROP COLUMN response_body",
        "ALTER TABLE requests ADD COLUMN reasoning_chars INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE requests ADD COLUMN lone_think_close INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE requests ADD COLUMN response_model TEXT",
        "ALTER TABLE requests ADD COLUMN reasoned_anyway INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE requests ADD COLUMN note TEXT",
        "ALTER TABLE requests ADD COLUMN upstream_ms REAL",
        "ALTER TABLE requests ADD COLUMN upstream_first_token_ms REAL",
        "ALTER TABLE requests ADD COLUMN first_token_ms REAL",
        "ALTER TABLE requests ADD COLUMN prompt_tokens INTEGER",
        "ALTER TABLE requests ADD COLUMN completion_tokens INTEGER",
        "ALTER TABLE requests ADD COLUMN tokens_per_s REAL",
        "ALTER TABLE requests ADD COLUMN instance TEXT",
    ),
]


def _text(value: Any) -> str:
    """SQLite stores UTF-8: a lone surrogate (JSON's `\\ud800`) is kept as its escape instead of failing the batch."""
    text = str(value)
    return text if text.isascii() else text.encode("utf-8", "backslashreplace").decode("utf-8")


def _flag(value: Any) -> int:
    return int(bool(value))


def _integer(value: Any) -> int | None:
    """None for what SQLite cannot store (NaN, infinities, more than 64 bits), rather than a failed batch."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    number = int(value)
    return number if -SQLITE_INTEGER <= number < SQLITE_INTEGER else None


def _count(value: Any) -> int | None:
    """A token count: never negative, and below MAX_TOKEN_COUNT, which keeps the stats' sums far from SQLite's limit."""
    number = _integer(value)
    return number if number is not None and 0 <= number < MAX_TOKEN_COUNT else None


def _number(value: Any) -> float | None:
    """NaN and infinities are not stored: JSON has no spelling for them."""
    number = float(value)
    return number if math.isfinite(number) else None


def _optional(convert: Any, value: Any) -> Any:
    return None if value is None else convert(value)


FINISH_COLUMNS = {
    "state": _text,
    "status": _integer,
    "duration_ms": _number,
    "response_bytes": _integer,
    "error": _text,
    "stream": _flag,
    "routed_model": _text,
    "requested_model": _text,
    "reasoning_chars": _integer,
    "lone_think_close": _flag,
    "response_model": _text,
    "reasoned_anyway": _flag,
    "note": _text,
    "upstream_ms": _number,
    "upstream_first_token_ms": _number,
    "first_token_ms": _number,
    "prompt_tokens": _count,
    "completion_tokens": _count,
    "tokens_per_s": _number,
}
"""The row's columns finish() may set, each with the conversion to a type SQLite binds."""
FINISH_CONVERSIONS = tuple(FINISH_COLUMNS.items())
FINISH_FIELDS = frozenset(FINISH_COLUMNS) | {"response_body"}
RECORD_COLUMNS = (*BEGIN_COLUMNS, *(name for name in FINISH_COLUMNS if name not in BEGIN_COLUMNS))
"""The columns of a row written whole by record()."""
RECORD_DEFAULTS = {"reasoning_chars": 0, "lone_think_close": 0, "reasoned_anyway": 0}
"""The schema's defaults of the NOT NULL columns a whole row may lack (an insert of NULL would fail)."""


def _values(count: int, width: int, numbered: bool = False) -> str:
    """The VALUES of `count` rows of `width` values, each with its number after them when `numbered`."""
    row = ", ".join("?" * width)
    if numbered:
        return ", ".join(f"({row}, {number})" for number in range(count))
    return ", ".join([f"({row})"] * count)


def insert_requests(columns: tuple[str, ...]) -> Callable[[int], str]:
    """An insert of `count` requests rows with these columns; a known id is left as it is (a retried batch)."""
    names = ", ".join(columns)
    return lambda count: f"INSERT INTO requests ({names}) VALUES {_values(count, len(columns))} ON CONFLICT (id) DO NOTHING"


def insert_bodies(table: str, columns: tuple[str, ...]) -> Callable[[int], str]:
    """
    An insert of `count` bodies, each given with its request's id last: a body takes the seq of
    the request's row, and is not written without one. They go in in the order given (a join may
    reorder them), so of two bodies for one request the first stays.
    """
    width = len(columns) + 1
    given = ", ".join(f"given.column{i}" for i in range(1, width))
    return lambda count: (
        f"INSERT INTO {table} (seq, {', '.join(columns)}) SELECT requests.seq, {given} "
        f"FROM (VALUES {_values(count, width, numbered=True)}) AS given JOIN requests ON requests.id = given.column{width} "
        # the WHERE keeps SQLite from reading ON CONFLICT as the join's ON
        f"WHERE true ORDER BY given.column{width + 1} ON CONFLICT (seq) DO NOTHING"
    )


INSERT_BEGUN = insert_requests(BEGIN_COLUMNS)
INSERT_WHOLE = insert_requests(RECORD_COLUMNS)
INSERT_REQUEST_BODIES = insert_bodies("request_bodies", ("headers", "body", "zlib"))
INSERT_RESPONSE_BODIES = insert_bodies("response_bodies", ("body", "zlib"))
# A field finish() was not given is passed as NULL and keeps what begin() wrote.
UPDATE = f"""
    UPDATE requests SET {", ".join(f"{name} = coalesce(?, {name})" for name in FINISH_COLUMNS)}
    WHERE id = ?
"""


def multi_row(statement: Callable[[int], str], rows: list[tuple], max_values: int) -> Iterator[tuple[str, list]]:
    """
    The rows as few statements, with their values, as a limit on bound values allows. A driver's
    executemany() runs the statement once per row, and the sqlite3 module lets go of the GIL for
    every run: each row handed the GIL to the event loop and waited to get it back.
    """
    if not rows:
        return
    per = max(1, max_values // len(rows[0]))
    for start in range(0, len(rows), per):
        part = rows[start : start + per]
        yield statement(len(part)), [value for row in part for value in row]


_RECORD = "record"
_BEGIN = "begin"
_FINISH = "finish"
_CLEANUP = "cleanup"
_WAKE = ("wake",)
"""Put by close() so that a writer blocked on an empty queue notices it should stop."""


class LogUnavailable(Exception):
    """The log cannot be read now (the file, the server); the message is safe to show."""


class ReadTimeout(LogUnavailable):
    """A read ran past its time limit and was stopped."""


def schema_version(conn: sqlite3.Connection) -> int:
    return conn.execute("PRAGMA user_version").fetchone()[0]


def migrations_due(version: int, known: int, refusal: type[Exception]) -> bool:
    """Whether a database at schema `version` lacks some of the `known` migrations; a newer one is refused."""
    if version > known:
        raise refusal(f"request log schema version {version} is newer than this proxy knows ({known})")
    return version < known


def migrate(conn: sqlite3.Connection) -> None:
    """
    Applies the migrations the file lacks, all in one transaction so a failure leaves the
    old version intact. An upgraded file is rebuilt afterwards: the upgrade moves every body
    and masks what the old version stored, and the old bytes must not linger in free pages.
    """
    version = schema_version(conn)
    if not migrations_due(version, len(MIGRATIONS), sqlite3.DatabaseError):
        return
    if version:
        logger.info("upgrading the request log from schema version %d to %d", version, len(MIGRATIONS))
    conn.execute("BEGIN IMMEDIATE")
    with conn:
        # Read again under the write lock: another process may have migrated the file meanwhile.
        for statements in MIGRATIONS[schema_version(conn) :]:
            for statement in statements:
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {len(MIGRATIONS)}")
    if version:
        conn.execute("VACUUM")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def check_writable(path: str) -> None:
    """
    Fails before SQLite opens a write-protected file read-only: it would create the -wal
    and -shm files write-protected as well, and writes would still fail once the
    database file's permissions are fixed.
    """
    for name in (path, f"{path}-wal", f"{path}-shm"):
        if os.path.exists(name) and not os.access(name, os.W_OK):
            raise PermissionError(errno.EACCES, "request log file is read-only", name)


def create_private(path: str) -> None:
    """
    Creates the missing directories (0700) and the database file (0600): the log holds
    prompts and answers. SQLite creates the -wal and -shm files with the database file's mode.
    """
    directory = Path(path).parent
    missing = []
    while not directory.exists():
        missing.append(directory)
        directory = directory.parent
    for directory in reversed(missing):
        directory.mkdir(mode=PRIVATE_DIRECTORY, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE))


def open_for_writing(path: str) -> sqlite3.Connection:
    """A write connection to a database with the current schema, created (directory included) if missing."""
    create_private(path)
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
        conn.create_function("redact_path", 1, redact_path, deterministic=True)
        conn.create_function("redact_headers_json", 1, redact_headers_json, deterministic=True)
        migrate(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def delete_older_than(conn: sqlite3.Connection, cutoff: float) -> None:
    """Deletes old requests with their bodies, in short transactions so that retention never holds the lock long."""
    deleted = 0
    while True:
        conn.execute("BEGIN IMMEDIATE")
        with conn:
            expired = conn.execute(
                "SELECT seq FROM requests WHERE started_at < ? LIMIT ?", (cutoff, RETENTION_BATCH)
            ).fetchall()
            conn.executemany("DELETE FROM request_bodies WHERE seq = ?", expired)
            conn.executemany("DELETE FROM response_bodies WHERE seq = ?", expired)
            conn.executemany("DELETE FROM requests WHERE seq = ?", expired)
        deleted += len(expired)
        if len(expired) < RETENTION_BATCH:
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
    whole = max(view.nbytes, total or 0)
    if whole == view.nbytes <= limit:
        return body
    return bytes(view[:limit]) + f"\n{TRUNCATED}: {whole} bytes in total]".encode()


BODY_FIELDS = ("request_body", "response_body")


def body_bytes(item: tuple) -> int:
    """The bytes of the bodies a queue item holds: what a stuck writer keeps in memory."""
    # the two bodies by name: looking at every value of the row cost 4 us a request, this 0.8
    return sum(len(part.get(name) or b"") for part in item if type(part) is dict for name in BODY_FIELDS)


def pack(body: bytes | None) -> tuple[bytes | None, bool]:
    """The body as stored, and whether that is zlib-compressed (see COMPRESS_FROM)."""
    if body is None or len(body) < COMPRESS_FROM:
        return body, False
    packed = zlib.compress(body, 1)
    return (packed, True) if len(packed) < len(body) else (body, False)


def unpack(stored: str | bytes | None, compressed: int) -> bytes:
    if stored is None:
        return b""
    if isinstance(stored, str):  # PostgreSQL keeps bodies as text, and compresses them itself
        return stored.encode()
    return zlib.decompress(stored) if compressed else bytes(stored)


def redact_headers_json(headers: str) -> str:
    return json.dumps(redact_headers(json.loads(headers)))


def iso_utc(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _row(values: Iterable[Any]) -> dict:
    row = dict(zip(ROW_FIELDS, values))
    row["started_at"] = iso_utc(row["started_at"])
    for name in BOOLEAN_FIELDS:
        row[name] = bool(row[name])
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
    """Queue items as statement parameters: bodies cut, secrets masked, values of the types SQLite binds."""

    store_body: Callable[[bytes | None], tuple[Any, bool]] = pack
    """A cut body as the database stores it, and whether that is zlib-compressed."""
    size: int = 0
    begun: list[tuple] = field(default_factory=list)
    records: list[tuple] = field(default_factory=list)
    request_bodies: list[tuple] = field(default_factory=list)
    updates: list[tuple] = field(default_factory=list)
    response_bodies: list[tuple] = field(default_factory=list)
    cleanup: bool = False

    def inserts(self) -> list[tuple[Callable[[int], str], list[tuple]]]:
        """The batch's inserts with their statements, the rows before the bodies that take their seq."""
        return [
            (INSERT_BEGUN, self.begun),
            (INSERT_WHOLE, self.records),
            (INSERT_REQUEST_BODIES, self.request_bodies),
            (INSERT_RESPONSE_BODIES, self.response_bodies),
        ]

    def add(self, item: tuple, max_body_bytes: int) -> None:
        kind = item[0]
        if kind == _RECORD:
            self._record(item[1], item[2], max_body_bytes)
        elif kind == _BEGIN:
            self._begin(item[1], max_body_bytes)
        elif kind == _FINISH:
            self._finish(item[1], item[2], max_body_bytes)
        else:
            self.cleanup = True
        self.size += 1

    def _record(self, row: dict, fields: dict, max_body_bytes: int) -> None:
        _check_fields("record", row, BEGIN_FIELDS)
        _check_fields("record", fields, FINISH_FIELDS)
        if fields.get("state") is None:
            raise TypeError("record() needs the request's state")
        ended = (item for item in zip(FINISH_COLUMNS, self._ending(fields)) if item[1] is not None)
        # as finish() after begin(): what the end was not given keeps what the start had
        whole = RECORD_DEFAULTS | dict(zip(BEGIN_COLUMNS, self._insert(row))) | dict(ended)
        self.records.append(tuple(whole.get(name) for name in RECORD_COLUMNS))
        self._request_body(row, max_body_bytes)
        self._response_body(row["id"], fields, max_body_bytes)

    def _begin(self, row: dict, max_body_bytes: int) -> None:
        _check_fields("begin", row, BEGIN_FIELDS)
        self.begun.append(self._insert(row))
        self._request_body(row, max_body_bytes)

    def _request_body(self, row: dict, max_body_bytes: int) -> None:
        if any(name in row for name in REQUEST_BODY_FIELDS):
            self.request_bodies.append(
                (
                    json.dumps(redact_headers(row.get("request_headers") or ())),
                    *self.store_body(cap_body(row.get("request_body"), row.get("request_bytes"), max_body_bytes)),
                    str(row["id"]),
                )
            )

    @staticmethod
    def _insert(row: dict) -> tuple:
        return (
            str(row["id"]),
            float(row["started_at"]),
            _optional(_text, row.get("method")),
            _optional(redact_path, _optional(_text, row.get("path"))),
            _optional(_text, row.get("service")),
            _optional(_text, row.get("upstream")),
            _flag(row.get("stream")),
            _optional(_text, row.get("requested_model")),
            _optional(_text, row.get("routed_model")),
            _optional(_integer, row.get("request_bytes")),
            _optional(_text, row.get("instance")),
        )

    def _finish(self, id: str, fields: dict, max_body_bytes: int) -> None:
        _check_fields("finish", fields, FINISH_FIELDS)
        self.updates.append((*self._ending(fields), str(id)))
        self._response_body(id, fields, max_body_bytes)

    @staticmethod
    def _ending(fields: dict) -> tuple:
        """FINISH_COLUMNS' values, converted; None where a field is not given."""
        return tuple(
            None if (value := fields.get(name)) is None else convert(value) for name, convert in FINISH_CONVERSIONS
        )

    def _response_body(self, id: str, fields: dict, max_body_bytes: int) -> None:
        if fields.get("response_body") is not None:
            body = cap_body(fields["response_body"], fields.get("response_bytes"), max_body_bytes)
            self.response_bodies.append((*self.store_body(body), str(id)))


def _check_fields(call: str, fields: dict, known: frozenset[str]) -> None:
    unknown = fields.keys() - known
    if unknown:
        raise TypeError(f"{call}() got unknown fields: {', '.join(sorted(unknown))}")


class Reader(Protocol):
    """A read connection as the queries use it: `?` placeholders, rows as tuples."""

    def execute(self, sql: str, params: Iterable[Any] = ..., /) -> Any: ...


class Database(Protocol):
    """
    One kind of database under the log. The writer thread alone calls `write`,
    `retain`, `tick` and `disconnect`, on a write connection the database keeps;
    the reads may come from any thread.
    """

    where: str
    """The file or server, as messages may show it."""
    transient: tuple[type[Exception], ...]
    """Write errors that a retry of the same batch can outlive."""
    errors: tuple[type[Exception], ...]
    """Every error of the driver."""
    tick_seconds: float | None
    """How often the writer calls `tick` whatever else it does; None = never."""
    shared: bool
    """Whether other proxy processes (replicas) write to it too."""
    gather_seconds: float
    """How long the writer waits for more entries before it writes: each transaction costs a round trip."""

    def prepare(self, cutoff: float) -> None:
        """
        Blocking, before the writer starts: what must fail at startup rather than later,
        and the first retention (rows started before `cutoff`), now or as soon as it can.
        """

    def store_body(self, body: bytes | None) -> tuple[Any, bool]:
        """A cut body as this database stores it, and whether that is zlib-compressed."""

    def write(self, batch: Batch) -> None: ...

    def retain(self, cutoff: float) -> None:
        """Deletes the requests started before `cutoff` and gives their space back."""

    def tick(self) -> None: ...

    def disconnect(self) -> None: ...

    def describe(self, error: Exception) -> str:
        """An error's message as it may be shown."""

    def reading(self, time_limit: float) -> contextlib.AbstractContextManager[Reader]:
        """A read connection in one transaction, so that counts and rows agree; ReadTimeout past the time limit."""

    def search(self, q: str) -> tuple[str, list[Any]]:
        """A WHERE clause and its parameters for the rows whose path or bodies hold `q`, in any letter case."""

    def inflight_elsewhere(self, instance: str | None, limit: int, time_limit: float) -> list[tuple]:
        """Requests other replicas serve now: id, method, path, models, started_at, instance, bytes so far."""

    def close(self) -> None:
        """Lets go of what the reads keep open."""


class SqliteDatabase:
    """The request log in one SQLite file in WAL mode, which one proxy process owns."""

    transient = (sqlite3.OperationalError, OSError)
    errors = (sqlite3.Error,)
    tick_seconds = None
    shared = False
    gather_seconds = GATHER_SECONDS
    store_body = staticmethod(pack)

    def __init__(self, path: str) -> None:
        self.where = self.path = str(Path(path).absolute())
        self._conn: sqlite3.Connection | None = None
        self._identity: tuple[int, int] | None = None
        self._read_uri = Path(self.path).as_uri() + "?mode=ro"

    def prepare(self, cutoff: float) -> None:
        """Opens the file now, so that a path that cannot be used stops startup."""
        conn = open_for_writing(self.path)
        try:
            self._warn_if_shared()
            conn.execute("UPDATE requests SET state = 'aborted', error = ? WHERE state = 'inflight'", (ABORTED_ERROR,))
            delete_older_than(conn, cutoff)
        finally:
            conn.close()

    def _warn_if_shared(self) -> None:
        """A file made before the log was created private (or made so by its user) is left as it is, but said."""
        mode = stat.S_IMODE(os.stat(self.path).st_mode)
        if mode & ~PRIVATE_FILE:
            logger.warning(
                "request log %s has mode %o: other users may read the prompts and answers in it (chmod 600 stops that)",
                self.path,
                mode,
            )

    def write(self, batch: Batch) -> None:
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")
        max_values = conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
        with conn:
            for statement, rows in batch.inserts():
                for sql, values in multi_row(statement, rows, max_values):
                    conn.execute(sql, values)
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
    def reading(self, time_limit: float) -> Iterator[sqlite3.Connection]:
        """A read-only connection of the call's own."""
        conn = sqlite3.connect(self._read_uri, uri=True, timeout=BUSY_TIMEOUT, isolation_level=None)
        deadline = time.monotonic() + time_limit
        conn.set_progress_handler(lambda: time.monotonic() > deadline, PROGRESS_STEPS)
        try:
            conn.create_function("contains_text", 3, contains_text, deterministic=True)
            conn.execute("BEGIN")
            yield conn
        except sqlite3.OperationalError as e:
            if time.monotonic() > deadline:
                raise ReadTimeout(f"stopped after {time_limit:g} s") from e
            raise
        finally:
            conn.close()

    @staticmethod
    def search(q: str) -> tuple[str, list[Any]]:
        return text_search(q)

    @staticmethod
    def inflight_elsewhere(instance: str | None, limit: int, time_limit: float) -> list[tuple]:
        """None: the file has no other replicas."""
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
        self.held_bytes = 0  # body_bytes of the items queued or being written
        self._held_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closing = threading.Event()
        self._deadline = math.inf
        self._next_tick = 0.0
        self._abandoned = 0
        self._drop_warning = RateLimit(DROP_WARNING_INTERVAL)
        self._failure_warning = RateLimit(FAILURE_WARNING_INTERVAL)

    def put(self, item: tuple) -> None:
        size = body_bytes(item)
        with self._held_lock:
            fits = self.held_bytes + size <= QUEUE_MAX_BYTES
            if fits:
                self.held_bytes += size
        if fits:
            try:
                self.queue.put_nowait(item)
                return
            except queue.Full:
                self._release([item])
        self.dropped += 1
        if self._drop_warning.ready():
            logger.warning("request log queue is full; %d entries dropped so far", self.dropped)

    def _release(self, items: list[tuple]) -> None:
        size = sum(map(body_bytes, items))
        with self._held_lock:
            self.held_bytes -= size

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
                items = self._take()
                batch = self._prepare(items)
                if batch.size:
                    self._write_or_skip(batch)
                self._release(items)
        finally:
            self.database.disconnect()
            self._report_unwritten()

    def _finished(self) -> bool:
        return time.monotonic() >= self._deadline or (self._closing.is_set() and self.queue.empty())

    def _take(self) -> list[tuple]:
        """
        Blocks for one item (until the next tick at most), sleeps the database's gathering
        time (cut short by close(), skipped when a full batch is queued already), then takes
        what is queued by then, to write it all in one transaction: a put while the writer
        sleeps wakes no one.
        """
        timeout = None if self.database.tick_seconds is None else max(0.0, self._next_tick - time.monotonic())
        try:
            items = [self.queue.get(timeout=timeout)]
        except queue.Empty:
            return []
        if self.queue.qsize() < BATCH_SIZE:
            self._closing.wait(self.database.gather_seconds)
        while len(items) < BATCH_SIZE:
            try:
                items.append(self.queue.get_nowait())
            except queue.Empty:
                break
        return [item for item in items if item is not _WAKE]

    def _tick(self) -> None:
        """The database's periodic work; a failed tick costs no entries, and the next one tries again."""
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
        batch = Batch(self.database.store_body)
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
        # known ids and bodies are not inserted twice and the updates set the same values.
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


def open_database(location: str, instance: str | None, progress: Callable[[], dict[str, int]]) -> Database:
    """A postgresql:// URL is a PostgreSQL database that replicas share; anything else is an SQLite file's path."""
    if location.startswith(("postgresql://", "postgres://")):
        from pglogstore import PostgresDatabase  # the driver loads only for those who use it

        return PostgresDatabase(location, instance, progress)
    return SqliteDatabase(location)


class LogStore:
    """
    The request log as the addon sees it: writes that only enqueue, for the event loop,
    and blocking reads, for a worker thread.

    `location` is an SQLite file's path or a PostgreSQL URL; `instance` names the proxy
    process in every row it writes (INSTANCE_NAME); `progress` gives the bytes answered
    so far per request in flight, which a shared database shows the other replicas (it
    is called on the writer thread).
    """

    def __init__(
        self,
        location: str,
        max_body_bytes: int = 262144,
        max_age_days: float = 7.0,
        queue_size: int = 10000,
        instance: str | None = None,
        progress: Callable[[], dict[str, int]] = dict,
        read_time_limit: float = READ_TIME_LIMIT,
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
        self.read_time_limit = read_time_limit

    @property
    def path(self) -> str:
        """Where the log is, as messages may show it: the file, or the URL with its password masked."""
        return self.database.where

    @property
    def shared(self) -> bool:
        """Whether replicas share the log: then some of its requests in flight are theirs."""
        return self.database.shared

    @property
    def failures(self) -> int:
        """Entries in batches whose write failed, each counted once however often it is retried."""
        return self._writer.failures

    @property
    def dropped(self) -> int:
        """Entries not queued because the queue was full."""
        return self._writer.dropped

    @property
    def queued(self) -> int:
        """Entries waiting for the writer."""
        return self._writer.queue.qsize()

    def open(self) -> None:
        """Blocking; entries queued before it are written once the writer runs."""
        self.database.prepare(time.time() - self.max_age_seconds)
        self._writer.start()

    def close(self, timeout: float = 5.0) -> None:
        self._writer.stop(timeout)
        self.database.close()

    def record(self, row: dict, **fields: Any) -> None:
        """A request that has ended, written whole at once: what begin() takes in `row`, what finish() takes in `fields`."""
        self._writer.put((_RECORD, self._owned(row), fields))

    def begin(self, row: dict) -> None:
        """A request still running: its row in flight, for crash recovery and the other replicas."""
        self._writer.put((_BEGIN, self._owned(row)))

    def _owned(self, row: dict) -> dict:
        # A copy, because the writer reads the row later on its own thread.
        return {"instance": self.instance, **row}

    def finish(self, id: str, **fields: Any) -> None:
        self._writer.put((_FINISH, id, fields))

    def cleanup(self) -> None:
        self._writer.put((_CLEANUP,))

    def logs(self, **filters: Any) -> tuple[list[dict], int]:
        """See query_logs."""
        with self._reading() as conn:
            return query_logs(conn, search=self.database.search, **filters)

    def get(self, id: str) -> dict | None:
        """See query_row."""
        with self._reading() as conn:
            return query_row(conn, id)

    def stats(self, now: float | None = None) -> dict:
        """
        See query_stats; plus the writer's own counters, and in `inflight` the requests
        that other replicas serve now (the caller knows its own).
        """
        with self._reading() as conn:
            stats = query_stats(conn, time.time() if now is None else now)
            (inflight_elsewhere,) = conn.execute(
                "SELECT count(*) FROM requests WHERE state = 'inflight' AND instance <> ?", (self.instance or "",)
            ).fetchone()
        return {
            **stats,
            "inflight": inflight_elsewhere,
            "log_failures": self.failures,
            "log_dropped": self.dropped,
            "log_queue": self.queued,
        }

    def inflight_elsewhere(self, now: float | None = None) -> list[dict]:
        """The requests that other replicas sharing the database serve now, as /api/inflight lists them."""
        if now is None:
            now = time.time()
        with self._translated_errors():
            rows = self.database.inflight_elsewhere(self.instance, MAX_INFLIGHT_ELSEWHERE, self.read_time_limit)
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

    @contextlib.contextmanager
    def _translated_errors(self) -> Iterator[None]:
        try:
            yield
        except self.database.errors as e:
            raise LogUnavailable(self.database.describe(e)) from e

    @contextlib.contextmanager
    def _reading(self) -> Iterator[Reader]:
        with self._translated_errors(), self.database.reading(self.read_time_limit) as conn:
            yield conn


def query_logs(
    conn: Any,
    *,
    search: Callable[[str], tuple[str, list[Any]]],
    limit: int = 50,
    offset: int = 0,
    model: str | None = None,
    service: str | None = None,
    status: int | None = None,
    state: str | None = None,
    q: str | None = None,
) -> tuple[list[dict], int]:
    """
    A page of rows matching the filters, newest first, and how many rows match in all;
    `search` makes the clause for `q` (the database's own).
    """
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
        clause, searched = search(q)
        clauses.append(clause)
        params += searched
    where = " WHERE " + " AND ".join(clauses) if clauses else ""
    limit = min(max(int(limit), 1), MAX_PAGE)
    offset = max(int(offset), 0)
    total = conn.execute(f"SELECT count(*) FROM requests{where}", params).fetchone()[0]
    rows = conn.execute(
        f"SELECT {', '.join(ROW_FIELDS)} FROM requests{where} ORDER BY started_at DESC, seq DESC LIMIT ? OFFSET ?",
        [*params, limit, offset],
    ).fetchall()
    return [_row(values) for values in rows], total


def text_search(q: str) -> tuple[str, list[str]]:
    """
    SQLite's own: a clause for the rows whose path or stored bodies hold `q`, in any letter
    case, through contains_text, registered on every read connection (it unpacks compressed
    bodies; measured, it is as fast as LIKE on uncompressed ones).
    """
    clause = (
        "(contains_text(path, 0, ?)"
        " OR seq IN (SELECT seq FROM request_bodies WHERE contains_text(body, zlib, ?))"
        " OR seq IN (SELECT seq FROM response_bodies WHERE contains_text(body, zlib, ?)))"
    )
    return clause, [q.casefold()] * 3


def contains_text(haystack: str | bytes | None, compressed: int, needle: str) -> bool:
    """
    Whether the text holds `needle` (already case-folded); bytes are taken as UTF-8, and for
    an ASCII needle compared as bytes in ASCII lower case, which saves decoding them.
    """
    if haystack is None:
        return False
    if isinstance(haystack, bytes):
        haystack = unpack(haystack, compressed)
        if needle.isascii():
            return needle.encode() in haystack.lower()
        haystack = haystack.decode("utf-8", "replace")
    return needle in haystack.casefold()


def query_row(conn: Any, id: str) -> dict | None:
    """
    One row with its redacted request headers, its bodies (cut at the log's limit, as text)
    and `response_text`, the answer's text assembled from the stored response body now, so
    that the write path pays nothing for it (null when the body holds no answer).
    """
    values = conn.execute(
        f"SELECT {', '.join(ROW_FIELDS)}, sent.headers, sent.body, sent.zlib, delivered.body, delivered.zlib"
        " FROM requests LEFT JOIN request_bodies AS sent USING (seq) LEFT JOIN response_bodies AS delivered USING (seq)"
        " WHERE id = ?",
        (id,),
    ).fetchone()
    if values is None:
        return None
    *fields, headers, request_body, request_zlib, response_body, response_zlib = values
    row = _row(fields)
    response_body = unpack(response_body, response_zlib)
    row["request_headers"] = json.loads(headers or "[]")
    row["request_body"] = unpack(request_body, request_zlib).decode("utf-8", "replace")
    row["response_body"] = response_body.decode("utf-8", "replace")
    row["response_text"] = answer_text(response_body)
    return row


def query_stats(conn: Any, now: float) -> dict:
    """
    Counts and sums over the whole log; percentiles (nearest rank) over the newest
    PERCENTILE_WINDOW finished requests, read in start order from the started_at index, so
    that their cost does not grow with the log. `first_token_*` is over the streamed answers
    among them; a model's `first_token_p50_ms` and `tokens_per_s_p50` are null when none of
    its requests is in the window.
    """
    total, errors, last_hour, last_24h, avg_duration, prompt_tokens, completion_tokens = conn.execute(
        """
        SELECT count(*),
               coalesce(sum(CASE WHEN state = 'error' OR status >= 400 THEN 1 ELSE 0 END), 0),
               coalesce(sum(CASE WHEN started_at >= ? THEN 1 ELSE 0 END), 0),
               coalesce(sum(CASE WHEN started_at >= ? THEN 1 ELSE 0 END), 0),
               avg(CASE WHEN state != 'inflight' THEN duration_ms END),
               coalesce(sum(prompt_tokens), 0),
               coalesce(sum(completion_tokens), 0)
        FROM requests
        """,
        (now - 3600, now - SECONDS_PER_DAY),
    ).fetchone()
    by_service = dict(conn.execute("SELECT service, count(*) FROM requests WHERE service IS NOT NULL GROUP BY service"))
    by_status = {
        str(code): count
        for code, count in conn.execute(
            "SELECT status, count(*) FROM requests WHERE status IS NOT NULL GROUP BY status"
        )
    }
    by_requested_model = dict(
        conn.execute(
            "SELECT requested_model, count(*) FROM requests WHERE requested_model IS NOT NULL GROUP BY requested_model"
        )
    )
    models = conn.execute(
        """
        SELECT coalesce(routed_model, requested_model), count(*), coalesce(sum(completion_tokens), 0) FROM requests
        WHERE coalesce(routed_model, requested_model) IS NOT NULL
        GROUP BY 1
        """
    ).fetchall()
    window = conn.execute(
        """
        SELECT coalesce(routed_model, requested_model), duration_ms, first_token_ms, tokens_per_s FROM requests
        WHERE state != 'inflight' ORDER BY started_at DESC LIMIT ?
        """,
        (PERCENTILE_WINDOW,),
    ).fetchall()
    first_tokens: dict[str | None, list[float]] = {}
    rates: dict[str | None, list[float]] = {}
    for model, _, first_token_ms, tokens_per_s in window:
        if first_token_ms is not None:
            first_tokens.setdefault(model, []).append(first_token_ms)
        if tokens_per_s is not None:
            rates.setdefault(model, []).append(tokens_per_s)
    every_first_token = [value for values in first_tokens.values() for value in values]
    return {
        "total": total,
        "by_service": by_service,
        "by_model": {model: requests for model, requests, _ in models},
        "by_requested_model": by_requested_model,
        "by_model_detail": {
            model: {
                "requests": requests,
                "first_token_p50_ms": percentile(first_tokens.get(model, ()), 0.50),
                "tokens_per_s_p50": percentile(rates.get(model, ()), 0.50),
                "completion_tokens": completion,
            }
            for model, requests, completion in models
        },
        "by_status": by_status,
        "errors": errors,
        "last_hour": last_hour,
        "last_24h": last_24h,
        "avg_duration_ms": avg_duration,
        "p95_duration_ms": percentile([duration for _, duration, _, _ in window if duration is not None], 0.95),
        "first_token_p50_ms": percentile(every_first_token, 0.50),
        "first_token_p95_ms": percentile(every_first_token, 0.95),
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
    }


def percentile(values: Iterable[float], fraction: float) -> float | None:
    """The nearest-rank percentile: the smallest value that at least `fraction` of the values do not exceed."""
    ordered = sorted(values)
    if not ordered:
        return None
    return ordered[math.ceil(fraction * len(ordered)) - 1]
