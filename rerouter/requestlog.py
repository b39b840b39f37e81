"""
The request log: every proxied request as a row in SQLite, and the live list of requests in flight.

Hooks only copy what they need from the flow and hand it to LogStore's queue;
the disk is touched by LogStore's writer thread, never by the event loop. A
request is queued once, whole, when it ends; only one that runs past
INFLIGHT_ROW_AFTER has its row written while it runs as well.
"""

import asyncio
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Callable
from collections.abc import Iterable
from dataclasses import dataclass

from mitmproxy import http

from logstore import LogStore
from logstore import iso_utc
from rerouter.decoding import sample
from rerouter.flows import body_sample
from rerouter.flows import is_proxied
from rerouter.flows import flow_state
from rerouter.flows import quick_call
from rerouter.framing import LAST_EVENT_WINDOW
from rerouter.framing import ends_with_last_event
from rerouter.redaction import redact_path
from rerouter.routing import is_ollama_path
from rerouter.routing import listen_port
from rerouter.settings import DATABASE_URL
from rerouter.settings import DB_PATH
from rerouter.settings import Settings
from rerouter.upstream_failures import CLIENT_GONE

logger = logging.getLogger(__name__)

CLEANUP_INTERVAL = 3600.0
INFLIGHT_ROW_AFTER = 1.0
"""
Seconds a request runs before its in-flight row is written. Most requests end sooner and are
written once, whole, at their end: one queue item and no UPDATE, instead of a row written at the
start and updated at the end, which is CPU the event loop shares with the writer thread. A request
that runs longer (a long stream) is in the database while it runs: other replicas list it, and a
crash leaves it there to be marked aborted.
"""
INFLIGHT_CHECK_INTERVAL = 0.25
"""How often requests are looked at for INFLIGHT_ROW_AFTER: a long one's row is written this much later at most."""
STORE_OPTIONS = {"enable_logging", "db_path", "max_log_age_days", "log_max_body_bytes", "database_url", "instance_name"}
HEAD_CHUNKS = 1024
"""Chunks a BodySample keeps of its head before it joins them: bounds the references a stream of tiny reads holds."""


class BodySample:
    """A streamed body as it passes: its size, its first `cap` bytes for the log, and its last bytes."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.size = 0
        # The chunks as they came, kept, not copied: most of a stream's reads are under the cap, and a
        # copy each was most of the sample's cost. Many small chunks are joined now and then.
        self._head: list[bytes] = []
        # past the cap: the last chunks, no more of them than LAST_EVENT_WINDOW needs
        self._end: deque[bytes] = deque()
        self._end_size = 0

    def add(self, chunk: bytes) -> None:
        before = self.size
        self.size = before + len(chunk)
        if self.size <= self.cap:
            head = self._head
            head.append(chunk)
            if len(head) >= HEAD_CHUNKS:
                self._head = [b"".join(head)]
            return
        if before < self.cap:
            self._head.append(chunk[: self.cap - before])
            chunk = chunk[self.cap - before :]
        if len(chunk) > LAST_EVENT_WINDOW:
            chunk = chunk[-LAST_EVENT_WINDOW:]
        end = self._end
        end.append(chunk)
        self._end_size += len(chunk)
        while self._end_size - len(end[0]) >= LAST_EVENT_WINDOW:
            self._end_size -= len(end.popleft())

    @property
    def head(self) -> bytes:
        """The body's first `cap` bytes."""
        return b"".join(self._head)

    @property
    def tail(self) -> bytes:
        """The body's last LAST_EVENT_WINDOW bytes: did the receiver get the last event?"""
        return (self.head[-LAST_EVENT_WINDOW:] + b"".join(self._end))[-LAST_EVENT_WINDOW:]


@dataclass
class Inflight:
    """What the dashboard shows of a request while it runs."""

    id: str
    method: str
    path: str
    requested_model: str | None
    routed_model: str | None
    started_at: float
    started: float  # time.monotonic(), for durations
    delivered: BodySample  # the streamed answer as the client gets it
    unwritten_row: dict | None = None
    """The row as the request started, until it is written: with the end, or past INFLIGHT_ROW_AFTER."""

    def as_dict(self, now: float) -> dict:
        return {
            "id": self.id,
            "method": self.method,
            "path": self.path,
            "requested_model": self.requested_model,
            "routed_model": self.routed_model,
            "started_at": iso_utc(self.started_at),
            "elapsed_ms": round((now - self.started) * 1000, 1),
            "response_bytes": self.delivered.size,
        }


class DeliveredStream:
    """
    Wraps a streamed body to see what its receiver really gets: counted as it
    passes, and kept up to the log's cap, so the log holds the body as delivered;
    its end is kept too, to tell a client that left after the last event.
    """

    def __init__(self, inner: Callable[[bytes], bytes | Iterable[bytes]] | bool, sample: BodySample) -> None:
        self.inner = quick_call(inner) if callable(inner) else passing
        self.sample = sample
        self._add = sample.add

    def __call__(self, data: bytes) -> list[bytes]:
        chunks = self.inner(data)
        if type(chunks) is not list:
            chunks = [chunks] if isinstance(chunks, bytes) else list(chunks)
        add = self._add
        for chunk in chunks:
            add(chunk)
        return chunks


def passing(data: bytes) -> list[bytes]:
    """What `stream = True` sends: every read as it came; the empty end is not a chunk."""
    return [data] if data else []


class RequestLog:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store: LogStore | None = None
        self.inflight: dict[str, Inflight] = {}
        self.cleanup_task: asyncio.Task | None = None
        self.inflight_task: asyncio.Task | None = None

    def configure(self, updated: set[str]) -> None:
        if not updated & STORE_OPTIONS:
            return
        self._close_store()
        if not self.settings.enable_logging:
            return
        store = LogStore(
            self.settings.database_url or self.settings.db_path,
            max_body_bytes=self.settings.log_max_body_bytes,
            max_age_days=self.settings.max_log_age_days,
            instance=self.settings.instance_name or default_instance_name(listen_port(self.settings)),
            progress=self.progress,
        )
        try:
            store.open()
        except Exception as e:
            setting = DATABASE_URL if self.settings.database_url else DB_PATH
            self.settings.refuse(f"{setting.env} (option {setting.option}): cannot open the request log {store.path!r}: {e}")
            return
        self.store = store

    def running(self) -> None:
        loop = asyncio.get_running_loop()
        self.cleanup_task = loop.create_task(self._cleanup_hourly())
        self.inflight_task = loop.create_task(self._write_long_requests())

    def done(self) -> None:
        for task in (self.cleanup_task, self.inflight_task):
            if task is not None:
                task.cancel()
        self._close_store()

    async def _cleanup_hourly(self) -> None:
        while True:
            await asyncio.sleep(CLEANUP_INTERVAL)
            if self.store is not None:
                self.store.cleanup()

    async def _write_long_requests(self) -> None:
        while True:
            await asyncio.sleep(INFLIGHT_CHECK_INTERVAL)
            self.write_inflight_rows(time.monotonic() - INFLIGHT_ROW_AFTER)

    def write_inflight_rows(self, started_before: float) -> None:
        """Writes the in-flight rows of the requests started before `started_before` (monotonic) whose row is not written."""
        if self.store is None:
            return
        for record in self.inflight.values():  # in the order the requests started
            if record.started >= started_before:
                return
            if record.unwritten_row is not None:
                self.store.begin(record.unwritten_row)
                record.unwritten_row = None

    def _close_store(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        request = flow.request
        if self.store is not None and is_proxied(flow) and request.stream:
            request.stream = DeliveredStream(request.stream, BodySample(self.settings.log_max_body_bytes))

    def request(self, flow: http.HTTPFlow) -> None:
        if self.store is None or not is_proxied(flow):
            return
        request = flow.request
        shared = flow_state(flow)
        record = Inflight(
            id=flow.id,
            method=request.method,
            path=redact_path(request.path),
            requested_model=shared.requested_model,
            routed_model=shared.routed_model,
            started_at=request.timestamp_start or time.time(),
            started=time.monotonic(),
            delivered=BodySample(self.settings.log_max_body_bytes),
        )
        passed = request.stream.sample if isinstance(request.stream, DeliveredStream) else None
        request_body, request_bytes = self._logged(request, passed)
        self.inflight[flow.id] = record
        record.unwritten_row = {
            "id": record.id,
            "started_at": record.started_at,
            "method": record.method,
            "path": record.path,
            "service": "ollama" if is_ollama_path(request.path) else "openai",
            "upstream": f"{request.scheme}://{request.host}:{request.port}",
            "stream": False,
            "requested_model": record.requested_model,
            "routed_model": record.routed_model,
            "request_headers": list(request.headers.items(multi=True)),
            "request_body": request_body,
            "request_bytes": request_bytes,
        }

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        record = self.inflight.get(flow.id)
        if record is not None and flow.response is not None and flow.response.stream:
            flow.response.stream = DeliveredStream(flow.response.stream, record.delivered)

    def response(self, flow: http.HTTPFlow) -> None:
        record = self.inflight.pop(flow.id, None)
        if record is None or self.store is None:
            return
        response = flow.response
        assert response is not None
        streamed = isinstance(response.stream, DeliveredStream)
        body, size = self._logged(response, record.delivered if streamed else None)
        self._end(
            record,
            state="completed",
            status=response.status_code,
            duration_ms=self._duration(record),
            stream=streamed,
            response_bytes=size,
            response_body=body,
            **flow_state(flow).row_fields(),
        )

    def error(self, flow: http.HTTPFlow) -> None:
        record = self.inflight.pop(flow.id, None)
        if record is None or self.store is None:
            return
        message = flow.error.msg if flow.error else "unknown error"
        shared = flow_state(flow)
        if shared.timed_out:
            message = f"no response headers within {self.settings.request_timeout:g} s"
        status = flow.response.status_code if flow.response else shared.answered_status
        if message == CLIENT_GONE and ends_with_last_event(record.delivered.tail):
            # the client read the last event and hung up before the upstream ended its body
            state, message = "completed", None
        else:
            state = "aborted" if message == CLIENT_GONE else "error"
        encoding = flow.response.headers.get("content-encoding") if flow.response else None
        self._end(
            record,
            state=state,
            status=status,
            duration_ms=self._duration(record),
            stream=isinstance(flow.response.stream, DeliveredStream) if flow.response else False,
            response_bytes=record.delivered.size,
            response_body=self._decoded(record.delivered, encoding),
            error=message,
            **shared.row_fields(),
        )

    def _end(self, record: Inflight, **fields) -> None:
        """The whole row when its start is not written yet, else the end of the written one."""
        assert self.store is not None
        if record.unwritten_row is not None:
            self.store.record(record.unwritten_row, **fields)
        else:
            self.store.finish(record.id, **fields)

    def _logged(self, message: http.Message, passed: BodySample | None) -> tuple[bytes, int | None]:
        """
        A body for the log and its size on the wire: from what a stream kept on its way, or from
        the buffered body. A body mitmproxy streamed on its own (past EDIT_LIMIT) went by unseen.
        """
        if passed is not None:
            return self._decoded(passed, message.headers.get("content-encoding")), passed.size
        if message.stream:
            return b"", None
        return body_sample(message, self._queued_cap), len(message.raw_content or b"")

    def _decoded(self, passed: BodySample, encoding: str | None) -> bytes:
        return sample(passed.head, encoding, self._queued_cap)

    @property
    def _queued_cap(self) -> int:
        """Bodies are cut before they are queued, one byte past the log's cap: the store still sees (and marks) the cut."""
        return self.settings.log_max_body_bytes + 1

    @staticmethod
    def _duration(record: Inflight) -> float:
        return round((time.monotonic() - record.started) * 1000, 1)

    def inflight_rows(self) -> list[dict]:
        """This replica's requests in flight; the store knows the other replicas'."""
        now = time.monotonic()
        instance = self.store.instance if self.store is not None else None
        return [{**record.as_dict(now), "instance": instance} for record in self.inflight.values()]

    def progress(self) -> dict[str, int]:
        """Bytes answered so far per request in flight; called on the log's writer thread, hence the copy."""
        return {id: record.delivered.size for id, record in self.inflight.copy().items()}


def default_instance_name(port: int) -> str:
    """INSTANCE_NAME unless set: host name and listen port; the process id where the port is chosen at random."""
    return f"{socket.gethostname()}:{port}" if port else f"{socket.gethostname()}:pid{os.getpid()}"
