"""
The request log in PostgreSQL (DATABASE_URL), shared by several replicas of the proxy.

A `Database` for logstore's writer thread and queries. What a shared log adds:
- every row carries the `instance` (INSTANCE_NAME) that served it;
- each replica beats a heartbeat into `replicas` every few seconds, with the bytes
  answered so far of its requests in flight, and marks `aborted` the rows left in
  flight by replicas whose heartbeat stopped DEAD_AFTER (30 s) ago; its own rows
  left in flight by an earlier run under the same name it marks at once;
- retention runs on one replica at a time (an advisory lock) and once per
  RETENTION_EVERY across them (its last run is in `maintenance`).

The database may be down at startup or go away at any time: nothing here runs on
the proxy's event loop, the writer retries, and reads fail fast (LogUnavailable).
Bodies are stored as text (decoded as SQLite's reads decode them), because text is
what the search looks in; PostgreSQL text cannot hold NUL, which becomes U+FFFD.
"""

import contextlib
import json
import logging
import queue
import time
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Iterator
from functools import lru_cache
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from logstore import ABORTED_ERROR
from logstore import GATHER_SECONDS
from logstore import RETENTION_BATCH
from logstore import UPDATE
from logstore import Batch
from logstore import ReadTimeout
from logstore import iso_utc
from logstore import migrations_due
from logstore import multi_row
from rerouter.dburl import mask_in
from rerouter.dburl import masked

logger = logging.getLogger(__name__)

HEARTBEAT_INTERVAL = 5.0
DEAD_AFTER = 30.0
"""Seconds without a heartbeat after which a replica's requests in flight are marked aborted."""
DEAD_ERROR = "the replica serving it stopped before the request finished"
RETENTION_EVERY = 3000.0
"""Seconds after a retention run during which the other replicas' hourly runs are skipped."""
LOCK_SPACE = 0x72657274  # "rert": the first key of the advisory locks, so they do not collide with an app's
MIGRATION_LOCK = (LOCK_SPACE, 1)
RETENTION_LOCK = (LOCK_SPACE, 2)
IDLE_READERS = 4
"""Read connections kept open: a new session costs some 10 ms of password hashing."""
MAX_VALUES = 65535
"""The most values PostgreSQL binds to one statement: a batch's rows go in statements this big at most."""
CONNECTION_DEFAULTS = {
    "connect_timeout": "5",
    "application_name": "openai-model-rerouter",
    # a server that vanishes without closing the connection is noticed within seconds, not hours
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
    "tcp_user_timeout": "20000",
}
"""Used where the URL says nothing else."""
READ_TIMEOUT_MS = 10000
WRITE_TIMEOUT_MS = 60000

MIGRATIONS: list[tuple[str, ...]] = [
    # 1: the request log as SQLite's schema version 2 has it, plus what the replicas share.
    # Integers that are summed are `integer` (their sum is a bigint, not a numeric).
    (
        """
        CREATE TABLE requests (
            seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            id text NOT NULL UNIQUE,
            started_at double precision NOT NULL,
            method text,
            path text,
            service text,
            upstream text,
            stream integer NOT NULL DEFAULT 0,
            requested_model text,
            routed_model text,
            status bigint,
            state text NOT NULL DEFAULT 'inflight',
            duration_ms double precision,
            request_bytes bigint,
            response_bytes bigint,
            error text,
            reasoning_chars bigint NOT NULL DEFAULT 0,
            lone_think_close integer NOT NULL DEFAULT 0,
            response_model text,
            reasoned_anyway integer NOT NULL DEFAULT 0,
            note text,
            upstream_ms double precision,
            upstream_first_token_ms double precision,
            first_token_ms double precision,
            prompt_tokens integer,
            completion_tokens integer,
            tokens_per_s double precision,
            instance text
        )
        """,
        *(
            f"CREATE INDEX requests_{column} ON requests ({column})"
            for column in ("started_at", "state", "status", "service", "requested_model", "routed_model")
        ),
        "CREATE INDEX requests_inflight ON requests (instance) WHERE state = 'inflight'",
        # text, not SQLite's zlib: PostgreSQL compresses big values itself, and the search reads them
        """
        CREATE TABLE request_bodies (
            seq bigint PRIMARY KEY,
            headers text NOT NULL DEFAULT '[]',
            body text,
            zlib integer NOT NULL DEFAULT 0
        )
        """,
        "CREATE TABLE response_bodies (seq bigint PRIMARY KEY, body text, zlib integer NOT NULL DEFAULT 0)",
        """
        CREATE TABLE replicas (
            name text PRIMARY KEY,
            heartbeat_at timestamptz NOT NULL,
            progress jsonb NOT NULL DEFAULT '{}'
        )
        """,
        "CREATE TABLE maintenance (task text PRIMARY KEY, ran_at timestamptz NOT NULL)",
    ),
]

HEARTBEAT = """
    INSERT INTO replicas (name, heartbeat_at, progress) VALUES (%s, now(), %s)
    ON CONFLICT (name) DO UPDATE SET heartbeat_at = excluded.heartbeat_at, progress = excluded.progress
"""
ABORT_OF_AN_EARLIER_RUN = """
    UPDATE requests SET state = 'aborted', error = %s WHERE state = 'inflight' AND coalesce(instance, '') = %s
"""
ABORT_OF_THE_DEAD = """
    UPDATE requests SET state = 'aborted', error = %s
    WHERE state = 'inflight'
      AND instance IN (SELECT name FROM replicas WHERE heartbeat_at < now() - make_interval(secs => %s))
"""
DELETE_EXPIRED = """
    WITH expired AS (
        DELETE FROM requests WHERE seq IN (SELECT seq FROM requests WHERE started_at < %s LIMIT %s) RETURNING seq
    ), sent AS (
        DELETE FROM request_bodies WHERE seq IN (SELECT seq FROM expired)
    ), delivered AS (
        DELETE FROM response_bodies WHERE seq IN (SELECT seq FROM expired)
    )
    SELECT count(*) FROM expired
"""
INFLIGHT_ELSEWHERE = """
    SELECT r.id, r.method, r.path, r.requested_model, r.routed_model, r.started_at, r.instance,
           (p.progress ->> r.id)::bigint
    FROM requests r LEFT JOIN replicas p ON p.name = r.instance
    WHERE r.state = 'inflight' AND r.instance <> %s
    ORDER BY r.started_at
    LIMIT %s
"""


@lru_cache(maxsize=256)
def placeholders(sql: str) -> str:
    """The shared queries' `?` placeholders as psycopg's `%s` (and a literal `%` doubled)."""
    return sql.replace("%", "%%").replace("?", "%s")


def storable(value: Any) -> Any:
    """
    A value as PostgreSQL takes it: bodies decoded as the reads decode them, no NUL in
    text, flags as the integers SQLite makes of them.
    """
    if isinstance(value, (bytes, bytearray, memoryview)):
        value = bytes(value).decode("utf-8", "replace")
    if isinstance(value, str) and "\x00" in value:
        return value.replace("\x00", "\ufffd")
    if isinstance(value, bool):
        return int(value)
    return value


def escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def storable_rows(rows: Iterable[tuple]) -> list[tuple]:
    return [tuple(storable(value) for value in row) for row in rows]


class Reader:
    """A psycopg connection that takes the shared queries as they are written for SQLite."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn

    def execute(self, sql: str, params: Iterable[Any] = ()) -> psycopg.Cursor:
        return self.conn.execute(placeholders(sql), [storable(value) for value in params])


class PostgresDatabase:
    """The request log in a PostgreSQL database that several replicas share."""

    transient = (psycopg.OperationalError, psycopg.InterfaceError)
    errors = (psycopg.Error,)
    tick_seconds = HEARTBEAT_INTERVAL
    shared = True
    gather_seconds = GATHER_SECONDS

    def __init__(self, url: str, instance: str | None, progress: Callable[[], dict[str, int]]) -> None:
        self.url = url
        self.where = masked(url)
        self.instance = instance or ""
        self.progress = progress
        self._conninfo = {**CONNECTION_DEFAULTS, **conninfo_to_dict(url)}
        self._conn: psycopg.Connection | None = None
        self._restarted = False
        self._migrated = False
        self._retention_cutoff: float | None = None
        self._idle: queue.LifoQueue[psycopg.Connection] = queue.LifoQueue(IDLE_READERS)

    def describe(self, error: Exception) -> str:
        """The first line of the message (libpq's go on with hints), the password masked should it appear."""
        lines = str(error).strip().splitlines()
        return mask_in(lines[0] if lines else type(error).__name__, self.url)

    def _connect(self, timeout_ms: int) -> psycopg.Connection:
        try:
            return psycopg.connect(**self._conninfo, options=f"-c statement_timeout={timeout_ms}", autocommit=True)
        except psycopg.Error as e:
            raise type(e)(self.describe(e)) from None

    def prepare(self, cutoff: float) -> None:
        """Nothing blocks startup: the server may be down. The first tick runs the retention."""
        self._retention_cutoff = cutoff

    # The writer thread's side.

    def _connection(self) -> psycopg.Connection:
        if self._conn is not None and self._conn.closed:
            self.disconnect()
        if self._conn is None:
            conn = self._connect(WRITE_TIMEOUT_MS)
            try:
                self._start(conn)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _start(self, conn: psycopg.Connection) -> None:
        """Every connection: the current schema and a heartbeat; the first: this replica's earlier rows in flight."""
        migrate(conn)
        self._migrated = True
        if not self._restarted:
            self._warn_if_alive(conn)
        self._heartbeat(conn)
        if not self._restarted:
            aborted = conn.execute(ABORT_OF_AN_EARLIER_RUN, (ABORTED_ERROR, self.instance)).rowcount
            if aborted:
                logger.info("request log: %d requests of an earlier run of %s marked aborted", aborted, self.instance)
            self._restarted = True
        logger.info("request log: writing to %s as %s", self.where, self.instance)

    def _warn_if_alive(self, conn: psycopg.Connection) -> None:
        """Two replicas under one name would each take the other's requests for its own crashed ones."""
        silent = conn.execute(
            "SELECT extract(epoch FROM now() - heartbeat_at) FROM replicas WHERE name = %s", (self.instance,)
        ).fetchone()
        if silent and silent[0] < DEAD_AFTER:
            logger.warning(
                "request log: %s sent a heartbeat %.0f s ago; unless that was this replica before a restart, "
                "give every replica its own INSTANCE_NAME",
                self.instance,
                silent[0],
            )

    def disconnect(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
            self._conn = None

    def write(self, batch: Batch) -> None:
        conn = self._connection()
        with conn.transaction(), conn.cursor() as cursor:
            for statement, rows in batch.inserts():
                for sql, values in multi_row(statement, storable_rows(rows), MAX_VALUES):
                    cursor.execute(placeholders(sql), values)
            if batch.updates:
                cursor.executemany(placeholders(UPDATE), storable_rows(batch.updates))

    def tick(self) -> None:
        conn = self._connection()
        self._heartbeat(conn)
        dead = conn.execute(ABORT_OF_THE_DEAD, (DEAD_ERROR, DEAD_AFTER)).rowcount
        if dead:
            logger.warning("request log: %d requests of replicas silent for %g s marked aborted", dead, DEAD_AFTER)
        if self._retention_cutoff is not None:
            self.retain(self._retention_cutoff)
            self._retention_cutoff = None

    def _heartbeat(self, conn: psycopg.Connection) -> None:
        conn.execute(HEARTBEAT, (self.instance, json.dumps(self.progress())))

    def retain(self, cutoff: float) -> None:
        """On one replica at a time, and not again on another right after: the lock, then the last run's time."""
        conn = self._connection()
        if not conn.execute("SELECT pg_try_advisory_lock(%s, %s)", RETENTION_LOCK).fetchone()[0]:
            return
        try:
            recent = conn.execute(
                "SELECT 1 FROM maintenance WHERE task = 'retention' AND ran_at > now() - make_interval(secs => %s)",
                (RETENTION_EVERY,),
            ).fetchone()
            if recent:
                return
            deleted = 0
            while True:
                (count,) = conn.execute(DELETE_EXPIRED, (cutoff, RETENTION_BATCH)).fetchone()
                deleted += count
                if count < RETENTION_BATCH:
                    break
            conn.execute(
                "DELETE FROM replicas WHERE heartbeat_at < now() - make_interval(secs => %s)",
                (max(DEAD_AFTER, time.time() - cutoff),),
            )
            if deleted:
                conn.execute("VACUUM (ANALYZE) requests, request_bodies, response_bodies")
            conn.execute(
                "INSERT INTO maintenance (task, ran_at) VALUES ('retention', now())"
                " ON CONFLICT (task) DO UPDATE SET ran_at = excluded.ran_at"
            )
            if deleted:
                logger.info(
                    "request log retention on %s: %d rows started before %s deleted",
                    self.instance,
                    deleted,
                    iso_utc(cutoff),
                )
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s, %s)", RETENTION_LOCK)

    # Any thread's side.

    @contextlib.contextmanager
    def reading(self, time_limit: float) -> Iterator[Reader]:
        """A connection kept from an earlier read when there is one, in a read-only snapshot."""
        conn = self._idle_connection() or self._connect(READ_TIMEOUT_MS)
        try:
            if not self._migrated:  # a dashboard opened before the writer reached the server
                migrate(conn)
                self._migrated = True
            with conn.transaction():
                # 0 would mean no limit at all to PostgreSQL
                limit_ms = max(1, round(time_limit * 1000))
                conn.execute(
                    f"SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY; SET LOCAL statement_timeout = {limit_ms}"
                )
                yield Reader(conn)
        except psycopg.errors.QueryCanceled as e:
            conn.close()
            raise ReadTimeout(f"stopped after {time_limit:g} s") from e
        except BaseException:
            conn.close()
            raise
        try:
            self._idle.put_nowait(conn)
        except queue.Full:
            conn.close()

    def _idle_connection(self) -> psycopg.Connection | None:
        """A kept connection that still answers: the server may have restarted since."""
        while True:
            try:
                conn = self._idle.get_nowait()
            except queue.Empty:
                return None
            try:
                conn.execute("")
                return conn
            except psycopg.Error:
                conn.close()

    @staticmethod
    def search(q: str) -> tuple[str, list[Any]]:
        """ILIKE: case is ignored beyond ASCII as far as the database's collation knows its letters."""
        clause = (
            "(path ILIKE ? ESCAPE '\\'"
            " OR seq IN (SELECT seq FROM request_bodies WHERE body ILIKE ? ESCAPE '\\')"
            " OR seq IN (SELECT seq FROM response_bodies WHERE body ILIKE ? ESCAPE '\\'))"
        )
        return clause, [f"%{escape_like(q)}%"] * 3

    @staticmethod
    def store_body(body: bytes | None) -> tuple[str | None, bool]:
        return storable(body), False

    def inflight_elsewhere(self, instance: str | None, limit: int, time_limit: float) -> list[tuple]:
        with self.reading(time_limit) as reader:
            return reader.conn.execute(INFLIGHT_ELSEWHERE, (instance or "", limit)).fetchall()

    def close(self) -> None:
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return


def schema_version(conn: psycopg.Connection) -> int:
    # pg_tables, not to_regclass: a catalog lookup may not yet see a table another session just created
    if not conn.execute(
        "SELECT EXISTS (SELECT FROM pg_tables WHERE schemaname = current_schema() AND tablename = 'schema_version')"
    ).fetchone()[0]:
        return 0
    return conn.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()[0]


def migrate(conn: psycopg.Connection) -> None:
    """Applies the migrations the database lacks, in one transaction so a failure leaves the old version intact."""
    if not migrations_due(schema_version(conn), len(MIGRATIONS), psycopg.DataError):
        return
    with conn.transaction():
        # Read again under the lock: another replica may have migrated the database meanwhile.
        conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", MIGRATION_LOCK)
        for statements in MIGRATIONS[schema_version(conn) :]:
            for statement in statements:
                conn.execute(statement)
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL)")
        conn.execute("DELETE FROM schema_version")
        conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (len(MIGRATIONS),))
