"""
The rerouter's own CPU per request, without sockets: every addon of rerouter_addon.py, in its
order, called with mitmproxy's test flows for one of bench/run.py's stream workloads, the answer
being the events the mock upstream sends for that request, handed to the stream one per read.
Measured with the request log on and off, each in a fresh process, alternating. Only the event
loop's thread is counted, where the addons run; the log writer's thread runs beside it, as in the
proxy. mitmproxy's own work per read is not in it: that is what bench/run.py compares.

On a shared 2-core machine bench/run.py's ratios move by 10-50 % between runs; these figures move
by a few percent, which is what a change to the work done per read needs.

    python -m bench.flow_cost [--workload stream200] [--flows 1000] [--rounds 5] [--profile]
"""

import argparse
import asyncio
import cProfile
import inspect
import json
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.run import Workload
from bench.run import build_workloads
from bench.run import plural
from bench.targets import rerouter_env
from tests.upstream import Call
from tests.upstream import MockOptions
from tests.upstream import Request
from tests.upstream import route

UPSTREAM = "http://127.0.0.1:8000"
STREAMED = ("stream200", "think", "ttft", "ollama")
HOOKS_BEFORE_UPSTREAM = ("requestheaders", "request")
WARM_UP = 100


def answer(workload: Workload, body: bytes) -> tuple[str, list[bytes]]:
    """The content type and events the mock upstream sends for this (rewritten) request body."""
    request = Request("POST", workload.path, "HTTP/1.1", {}, body, json.loads(body))
    reply = route("POST", workload.path)(Call(request, MockOptions(**workload.mock)))
    return reply.content_type, reply.events


class Harness:
    """The script's addons on test flows, hook by hook, as mitmproxy would call them for one request."""

    def __init__(self, addons: list[Any], workload: Workload) -> None:
        self.addons = addons
        self.workload = workload
        self.answers: dict[bytes, tuple[str, list[bytes]]] = {}  # by the request body sent upstream

    def flows(self, count: int) -> list[Any]:
        from mitmproxy import http
        from mitmproxy.proxy.mode_specs import ProxyMode
        from mitmproxy.test import tflow
        from mitmproxy.test import tutils

        made = []
        for _ in range(count):
            flow = tflow.tflow()
            flow.client_conn.proxy_mode = ProxyMode.parse(f"reverse:{UPSTREAM}")
            flow.request = tutils.treq(
                method=b"POST",
                host="127.0.0.1",
                port=8000,
                path=self.workload.path.encode(),
                headers=http.Headers(host="127.0.0.1:8000", content_type="application/json"),
                content=json.dumps(self.workload.body).encode(),
            )
            flow.request.timestamp_start = flow.request.timestamp_end = time.time()
            made.append(flow)
        return made

    async def hook(self, name: str, flow: Any) -> None:
        for addon in self.addons:
            method = getattr(addon, name, None)
            if method is not None:
                result = method(flow)
                if inspect.isawaitable(result):
                    await result

    async def one(self, flow: Any) -> None:
        from mitmproxy import http

        for name in HOOKS_BEFORE_UPSTREAM:
            await self.hook(name, flow)
        body = flow.request.content
        if body not in self.answers:
            self.answers[body] = answer(self.workload, body)
        content_type, events = self.answers[body]
        flow.response = http.Response.make(200, b"", {"content-type": content_type, "transfer-encoding": "chunked"})
        flow.response.timestamp_start = time.time()
        await self.hook("responseheaders", flow)
        stream = flow.response.stream
        for event in events:
            stream(event)
        stream(b"")
        await self.hook("response", flow)


async def measure(workload: Workload, flows: int, profile: bool) -> dict[str, Any]:
    """In a process of its own: the script imported with the environment set for one mode."""
    from mitmproxy.addons.proxyserver import Proxyserver
    from mitmproxy.test import taddons

    import rerouter_addon

    harness = Harness(rerouter_addon.addons, workload)
    with taddons.context(Proxyserver(), *rerouter_addon.addons) as tctx:
        for addon in rerouter_addon.addons:
            if hasattr(addon, "configure"):
                addon.configure(set(tctx.options.keys()))
        for addon in rerouter_addon.addons:
            if hasattr(addon, "running"):
                addon.running()
        for flow in harness.flows(WARM_UP):
            await harness.one(flow)
        batch = harness.flows(flows)
        profiler = cProfile.Profile() if profile else None
        started = time.thread_time()
        if profiler:
            profiler.enable()
        for flow in batch:
            await harness.one(flow)
        if profiler:
            profiler.disable()
        spent = time.thread_time() - started
        reads = len(harness.answers[batch[-1].request.content][1]) + 1
        for addon in rerouter_addon.addons:
            if hasattr(addon, "done"):
                addon.done()
    if profiler:
        stats = pstats.Stats(profiler, stream=sys.stderr)
        stats.sort_stats("tottime").print_stats(25)
    return {"us_per_flow": spent / flows * 1e6, "reads": reads}


def child(args: argparse.Namespace) -> None:
    workload = {w.name: w for w in build_workloads(False)}[args.workload]
    with tempfile.TemporaryDirectory(prefix="rerouter-flow-cost-") as tmp:
        os.environ.update(rerouter_env(UPSTREAM, Path(tmp) / "log.db", args.child == "on"))
        result = asyncio.run(measure(workload, args.flows, args.profile))
    print(json.dumps(result))


def run_child(args: argparse.Namespace, mode: str, profile: bool = False) -> dict[str, Any]:
    argv = [sys.executable, "-m", "bench.flow_cost", "--child", mode, "--workload", args.workload]
    argv += ["--flows", str(args.flows)] + (["--profile"] if profile else [])
    done = subprocess.run(argv, cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"bench.flow_cost ({mode}) failed:\n{done.stderr[-3000:]}")
    if profile:
        print(done.stderr)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", choices=STREAMED, default="stream200")
    parser.add_argument("--flows", type=int, default=1000, help="flows measured per process (default 1000)")
    parser.add_argument("--rounds", type=int, default=5, help="processes per mode, alternating (default 5)")
    parser.add_argument("--profile", action="store_true", help="also print cProfile's top functions, log on")
    parser.add_argument("--child", choices=("on", "off"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args)
        return
    results: dict[str, list[float]] = {"off": [], "on": []}
    reads = 0
    for _ in range(args.rounds):
        for mode in results:
            result = run_child(args, mode)
            results[mode].append(result["us_per_flow"])
            reads = result["reads"]
    print(
        f"{args.workload}: {plural(reads, 'read')} per flow (log on), {plural(args.flows, 'flow')} per process, "
        f"{plural(args.rounds, 'round')} per mode, a process each, alternating"
    )
    medians = {mode: statistics.median(values) for mode, values in results.items()}
    for mode, values in results.items():
        print(f"  event-loop CPU per flow, log {mode:<3}: median {medians[mode]:7.1f} us, min {min(values):7.1f} us")
    extra = medians["on"] - medians["off"]
    print(f"  the log's part: {extra:+.1f} us per flow, {extra / reads:+.2f} us per read")
    if args.profile:
        run_child(args, "on", profile=True)


if __name__ == "__main__":
    main()
