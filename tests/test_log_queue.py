"""The request log's queue is bounded by the bytes of the bodies it holds, not only by its number of entries."""

import time

from logstore import QUEUE_MAX_BYTES
from logstore import SqliteDatabase
from logstore import Writer
from logstore import body_bytes
from tests.helpers import wait_for


def test_body_bytes_of_queue_items():
    assert body_bytes(("begin", {"id": "a", "request_body": b"x" * 10, "request_headers": [("a", "b")]})) == 10
    assert body_bytes(("record", {"id": "a", "request_body": b"x" * 10}, {"response_body": b"y" * 7})) == 17
    assert body_bytes(("finish", "a", {"state": "completed", "response_body": bytearray(5)})) == 5
    assert body_bytes(("cleanup",)) == 0


def begin(writer: Writer, id: str, body: bytes) -> None:
    writer.put(("begin", {"id": id, "started_at": time.time(), "request_body": body}))


def test_a_stuck_writer_holds_at_most_queue_max_bytes_of_bodies(tmp_path):
    writer = Writer(SqliteDatabase(str(tmp_path / "log.db")), QUEUE_MAX_BYTES, 3600.0, 100)
    body = b"x" * (QUEUE_MAX_BYTES // 4)
    for i in range(6):  # the writer has not started: everything stays queued
        begin(writer, f"r{i}", body)
    assert (writer.dropped, writer.held_bytes) == (2, QUEUE_MAX_BYTES), "the fifth body would pass the bound"
    writer.put(("finish", "r0", {"state": "completed", "response_body": b""}))
    assert writer.dropped == 2, "entries without bodies still fit"
    writer.start()
    try:
        wait_for(lambda: not writer.held_bytes)  # released once written, not when taken off the queue
        for i in range(6, 10):
            begin(writer, f"r{i}", body)
        assert writer.dropped == 2
    finally:
        writer.stop(10)
    assert writer.held_bytes == 0


def test_the_writer_takes_what_is_queued_while_it_sleeps_and_close_wakes_it(tmp_path):
    database = SqliteDatabase(str(tmp_path / "log.db"))
    database.gather_seconds = 60.0
    batches = []
    write = database.write
    database.write = lambda batch: batches.append(batch.size) or write(batch)
    writer = Writer(database, 1000, 3600.0, 100)
    writer.start()
    writer.put(("record", {"id": "r0", "started_at": time.time()}, {"state": "completed"}))
    wait_for(writer.queue.empty)  # taken: the writer sleeps its gathering time
    for i in range(1, 10):
        writer.put(("record", {"id": f"r{i}", "started_at": time.time()}, {"state": "completed"}))
    started = time.monotonic()
    writer.stop(10)
    assert time.monotonic() - started < 5, "close() must not wait out the gathering time"
    assert batches == [10]
