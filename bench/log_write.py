"""
What the request log costs per request: time spent on the proxy's event loop in the log's
hooks, and how many rows per second the writer thread makes durable.

    python -m bench.log_write [--requests 20000]

The hooks run on mitmproxy's test flows through the real RequestLog addon and a real
SQLite file in a temporary directory; nothing here is a test, it only reports.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from mitmproxy import http
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import taddons
from mitmproxy.test import tflow

from rerouter.flows import flow_state
from rerouter.requestlog import RequestLog
from rerouter.settings import Settings

BODY = json.dumps({"model": "gpt-4", "messages": [{"role": "user", "content": "x" * 2000}]}).encode()
BURST = 2000  # requests between waits for the writer: its queue holds 10000 items, two per request
ANSWER = json.dumps({"choices": [{"message": {"role": "assistant", "content": "y" * 1000}}]}).encode()


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


def run(count: int, logging_on: bool) -> tuple[float, float]:
    """Seconds in the hooks for `count` requests, and seconds until the writer had them all."""
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["DB_PATH"] = str(Path(tmp) / "bench.db")
        os.environ["ENABLE_LOGGING"] = "true" if logging_on else "false"
        settings = Settings()
        log = RequestLog(settings)
        with taddons.context(settings, log) as tctx:
            for addon in (settings, log):
                addon.configure(set(tctx.options.keys()))
            batch = flows(count)
            response = http.Response.make(200, ANSWER, {"content-type": "application/json"})
            hooks = 0.0
            started = time.perf_counter()
            for first in range(0, count, BURST):
                burst_started = time.perf_counter()
                for flow in batch[first : first + BURST]:
                    log.request(flow)
                    flow.response = response
                    log.responseheaders(flow)
                    log.response(flow)
                hooks += time.perf_counter() - burst_started
                while log.store is not None and log.store.stats()["total"] < min(first + BURST, count):
                    time.sleep(0.002)
            written = time.perf_counter() - started
            log.done()
    return hooks, written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    count = parser.parse_args().requests
    rounds = parser.parse_args().rounds
    on, off, durable = [], [], []
    for _ in range(rounds):  # interleaved, median of rounds
        hooks, written = run(count, True)
        on.append(hooks / count * 1e6)
        durable.append(count / written)
        off.append(run(count, False)[0] / count * 1e6)
    print(f"requests per round: {count}, rounds: {rounds}, python {sys.version.split()[0]}")
    print(f"event-loop time in the log's hooks, logging on : {statistics.median(on):7.1f} µs per request")
    print(f"event-loop time in the log's hooks, logging off: {statistics.median(off):7.1f} µs per request")
    print(f"rows written by the writer thread, in bursts of {BURST}: {statistics.median(durable):7.0f} requests per second")


if __name__ == "__main__":
    main()
