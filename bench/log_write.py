"""
What the request log costs per request: time spent on the proxy's event loop in the log's
hooks, how many rows per second the writer thread makes durable, and the CPU of all threads
per streamed request with answers of 2 KB and 35 KB (a 200-token stream), split into the
hooks (on the event loop) and the writer thread, with the writer's context switches (each a
hand-over of the GIL that the event loop waits for).

    python -m bench.log_write [--requests 20000] [--streams 2000]

The hooks run on mitmproxy's test flows through the real RequestLog addon and a real
SQLite file in a temporary directory; nothing here is a test, it only reports. Prompts and
answers are English prose (standard library docstrings), which compresses like real text.
"""

import argparse
import contextlib
import itertools
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from collections.abc import Sequence
from pathlib import Path

from mitmproxy import http
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import taddons
from mitmproxy.test import tflow

from rerouter.flows import flow_state
from rerouter.requestlog import RequestLog
from rerouter.settings import Settings

PROSE = " ".join(module.__doc__ for module in (argparse, statistics, json, tempfile, contextlib))
BODY = json.dumps({"model": "gpt-4", "messages": [{"role": "user", "content": PROSE[:2000]}]}).encode()
BURST = 2000  # requests between waits for the writer: its queue holds 10000 items, one per short request
ANSWER = json.dumps({"choices": [{"message": {"role": "assistant", "content": PROSE[-1000:]}}]}).encode()
CLIENTS = 16
"""Streamed requests per burst, as from the 16 clients of bench/run.py's stream workloads."""
STREAM_SIZES_KB = (2, 35)


def sse_answer(size_kb: int) -> list[bytes]:
    """An OpenAI chat stream of about `size_kb` KB, one event per word, as the mock upstream sends it."""
    words = itertools.cycle(PROSE.split())
    events: list[bytes] = []
    size = 0
    while size < size_kb * 1024:
        chunk = {
            "id": "chatcmpl-8f2c4e1d9a7b",
            "object": "chat.completion.chunk",
            "created": 1764000000,
            "model": "llama3-70b",
            "system_fingerprint": "fp_mock",
            "choices": [{"index": 0, "delta": {"content": f" {next(words)}"}, "logprobs": None, "finish_reason": None}],
        }
        events.append(f"data: {json.dumps(chunk)}\n\n".encode())
        size += len(events[-1])
    return events + [b"data: [DONE]\n\n"]


def flows(count: int) -> list[http.HTTPFlow]:
    made = []
    for _ in range(count):
        flow = tflow.tflow()
        flow.client_conn.proxy_mode = ProxyMode.parse("reverse:http://127.0.0.1:8000")
        flow.request.content = BODY
        flow.request.timestamp_start = time.time()
        flow.request.headers["authorization"] = "Bearer sk-secret"
        flow_state(flow).requested_model, flow_state(flow).routed_model = "gpt-4", "llama3-70b"
        made.append(flow)
    return made


@contextlib.contextmanager
def request_log(logging_on: bool) -> Iterator[RequestLog]:
    """The real addon, configured as the proxy configures it, on a database in a temporary directory."""
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["DB_PATH"] = str(Path(tmp) / "bench.db")
        os.environ["ENABLE_LOGGING"] = "true" if logging_on else "false"
        settings = Settings()
        log = RequestLog(settings)
        with taddons.context(settings, log) as tctx:
            for addon in (settings, log):
                addon.configure(set(tctx.options.keys()))
            yield log


def one_request(log: RequestLog, flow: http.HTTPFlow, response: http.Response, events: Sequence[bytes] = ()) -> None:
    """One request through the log's hooks; its answer streamed as `events` when there are any."""
    log.request(flow)
    flow.response = response
    response.stream = bool(events)
    log.responseheaders(flow)
    for event in events:
        flow.response.stream(event)
    if events:
        flow.response.stream(b"")
    log.response(flow)


def run(count: int, logging_on: bool) -> tuple[float, float]:
    """Seconds in the hooks for `count` requests, and seconds until the writer had them all."""
    with request_log(logging_on) as log:
        batch = flows(count)
        response = http.Response.make(200, ANSWER, {"content-type": "application/json"})
        hooks = 0.0
        started = time.perf_counter()
        for first in range(0, count, BURST):
            burst_started = time.perf_counter()
            for flow in batch[first : first + BURST]:
                one_request(log, flow, response)
            hooks += time.perf_counter() - burst_started
            while log.store is not None and log.store.stats()["total"] < min(first + BURST, count):
                time.sleep(0.002)
        written = time.perf_counter() - started
        log.done()
    return hooks, written


def writer_thread() -> threading.Thread:
    (thread,) = [thread for thread in threading.enumerate() if thread.name == "request-log-writer"]
    return thread


def thread_usage(thread: threading.Thread) -> tuple[float, int]:
    """A thread's CPU seconds so far, and its context switches (voluntary and not) as Linux counts them."""
    cpu = time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
    status = Path(f"/proc/self/task/{thread.native_id}/status").read_text()
    switches = sum(int(line.split()[1]) for line in status.splitlines() if "ctxt_switches:" in line)
    return cpu, switches


def streamed_cpu(count: int, events: list[bytes]) -> tuple[float, float, float]:
    """
    Per streamed request: CPU seconds in the hooks, CPU seconds of the writer thread and its
    context switches, in bursts of CLIENTS requests, each burst once the writer has taken the
    previous one, until the writer has written them all.
    """
    with request_log(True) as log:
        batch = flows(count)
        responses = [http.Response.make(200, b"", {"content-type": "text/event-stream"}) for _ in batch]
        writer = writer_thread()
        writer_cpu, writer_switches = thread_usage(writer)
        hooks = 0.0
        for first in range(0, count, CLIENTS):
            burst_started = time.thread_time()
            for flow, response in zip(batch[first : first + CLIENTS], responses[first : first + CLIENTS]):
                one_request(log, flow, response, events)
            hooks += time.thread_time() - burst_started
            while log.store.queued:
                time.sleep(0.005)
        while log.store.logs(state="completed", limit=1)[1] < count:
            time.sleep(0.005)
        cpu, switches = thread_usage(writer)
        log.done()
        return hooks / count, (cpu - writer_cpu) / count, (switches - writer_switches) / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--streams", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    count, rounds = args.requests, args.rounds
    answers = {size: sse_answer(size) for size in STREAM_SIZES_KB}
    on, off, durable = [], [], []
    streamed: dict[int, list[tuple[float, float]]] = {size: [] for size in STREAM_SIZES_KB}
    for _ in range(rounds):  # interleaved, median of rounds
        hooks, written = run(count, True)
        on.append(hooks / count * 1e6)
        durable.append(count / written)
        off.append(run(count, False)[0] / count * 1e6)
        for size, events in answers.items():
            streamed[size].append(streamed_cpu(args.streams, events))
    print(f"requests per round: {count}, rounds: {rounds}, python {sys.version.split()[0]}")
    print(f"event-loop time in the log's hooks, logging on : {statistics.median(on):7.1f} µs per request")
    print(f"event-loop time in the log's hooks, logging off: {statistics.median(off):7.1f} µs per request")
    print(f"rows written by the writer thread, in bursts of {BURST}: {statistics.median(durable):7.0f} requests per second")
    for size, figures in streamed.items():
        hooks, writer, switches = (statistics.median(column) for column in zip(*figures))
        print(
            f"CPU per streamed request, {size:2d} KB answer ({len(answers[size]):3d} events), {args.streams} in bursts "
            f"of {CLIENTS}: {hooks * 1e6:6.1f} µs in the hooks + {writer * 1e6:6.1f} µs in the writer thread "
            f"= {(hooks + writer) * 1e6:6.1f} µs; {switches:4.1f} context switches of the writer thread"
        )


if __name__ == "__main__":
    main()
