"""
The rerouter's benchmark: the same load against the mock upstream directly, through bare
mitmdump and through the rerouter (with and without its request log), in one run.

    python -m bench.run [--quick] [--reps N] [--targets a,b] [--workloads x,y] [--pin] [--json FILE]

Every target is started fresh by this script on a free loopback port, against one mock
upstream process. Repetitions are interleaved (each repetition runs every workload on every
target, the target order rotating), and the table shows the median of the repetitions, with
ratios against bare mitmdump and deltas against the direct connection. It reports; it asserts
nothing. See bench/README.md for what each workload and figure means.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import importlib.metadata
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

from bench import loadgen
from bench import targets
from bench.loadgen import Request
from tests.upstream import file_bytes
from tests.upstream import mock_headers

TARGETS = ("direct", "mitmdump", "rerouter", "rerouter-nolog", "rerouter-pg")
OPT_IN_TARGETS = ("mitmdump-buffered",)
"""Run only when --targets names them."""
ROUTER = "rerouter"  # the default configuration, which the goals are about
BASELINE = "mitmdump"
USER = [{"role": "user", "content": "Say something."}]
BIG_TOKEN = ("lorem ipsum dolor sit amet " * 80)[:2000]  # no "<": the stripper's fast path
BIG_EVENT_BYTES = 2200  # one SSE event carrying BIG_TOKEN, framing and chunk JSON included
FLAT_MB = 10.0  # "flat": RSS grows less than this from 10 % to 90 % of the 50 MB transfer
BINARY_BYTES = 50_000_000  # big50-binary: a file download and a file upload of this size
BINARY_GROWTH_MB = 16.0  # their goal: peak RSS at most this above the RSS at the workload's start
CHECK_BYTES = 1_000_000  # the warm-up's byte-exact check of a download and an upload


# ---------------------------------------------------------------------------------------------
# Workloads


@dataclass(frozen=True)
class Workload:
    """One kind of load; `tokens` is what the upstream streams per request (for tokens/s)."""

    name: str
    what: str
    path: str
    kind: str  # "json", "binary", "sse" or "ndjson"
    body: dict[str, Any] | bytes | None  # JSON, a binary upload, or none (GET)
    mock: dict[str, Any]  # tests/upstream.py MockOptions fields, sent as x-mock-* headers
    count: int
    concurrency: int
    tokens: int = 0
    track_memory: bool = False  # keep the transfer's progress, to read RSS at 10/50/90 %
    vs_direct: str = "ttft_p50_ms"  # the figure compared with the direct connection

    def request(self, host: str) -> Request:
        headers = mock_headers(**self.mock)
        if self.body is None:
            return Request.get(host, self.path, headers, self.kind)
        if isinstance(self.body, bytes):
            return Request.upload(host, self.path, self.body, headers)
        return Request.post(host, self.path, self.body, headers, self.kind)


def words(prefix: str, count: int) -> list[str]:
    """`count` stream tokens the way the mock splits words: each with its leading space."""
    return [f" {prefix}{i}" for i in range(count)]


def think_tokens() -> list[str]:
    """A reasoning model's stream: a think block with both tags split across events, then the answer."""
    return ["<th", "ink>", "Let", *words("step", 39), "</thi", "nk>", "\n\n", "Answer", *words("tok", 159)]


def chat(stream: bool) -> dict[str, Any]:
    return {"model": "gpt-4", "messages": USER, "stream": stream}


def build_workloads(quick: bool) -> list[Workload]:
    """The workloads in run order; `quick` shrinks the counts, never the shape of a request."""

    def n(full: int, short: int) -> int:
        return short if quick else full

    plain = "".join(words("tok", 200)).lstrip()
    thinking = think_tokens()
    slow_tokens = n(30, 8)
    big_repeat = 50_000_000 // BIG_EVENT_BYTES
    return [
        Workload("chat-c1", "non-streamed chat, 1 client", "/v1/chat/completions", "json",
                 chat(False), {}, n(300, 60), 1, vs_direct="lat_p50_ms"),
        Workload("chat-c32", "non-streamed chat, 32 clients", "/v1/chat/completions", "json",
                 chat(False), {}, n(2000, 400), 32, vs_direct="lat_p50_ms"),
        Workload("stream200", "SSE chat, 200 tokens, 16 clients", "/v1/chat/completions", "sse",
                 chat(True), {"text": plain}, n(160, 48), 16, tokens=200),
        Workload("ttft", "SSE chat, 20 ms between tokens, 4 clients", "/v1/chat/completions", "sse",
                 chat(True), {"text": "".join(words("tok", 8)).lstrip(), "delay": 0.02}, n(48, 16), 4, tokens=8),
        Workload("think", "SSE chat opening with a split think block, 16 clients", "/v1/chat/completions", "sse",
                 chat(True), {"tokens": thinking}, n(160, 48), 16, tokens=len(thinking)),
        Workload("ollama", "Ollama NDJSON /api/chat with a think block, 16 clients", "/api/chat", "ndjson",
                 chat(True), {"tokens": thinking}, n(160, 48), 16, tokens=len(thinking)),
        Workload("slow100", f"100 live SSE streams, 1 token / 200 ms ({slow_tokens * 0.2:.0f} s)",
                 "/v1/chat/completions", "sse", chat(True),
                 {"text": "".join(words("tok", slow_tokens)).lstrip(), "delay": 0.2}, 100, 100, tokens=slow_tokens),
        Workload("big50", "one 50 MB SSE stream of 2 KB events", "/v1/chat/completions", "sse",
                 chat(True), {"text": BIG_TOKEN, "tokens": len(BIG_TOKEN), "repeat": big_repeat}, 1, 1,
                 tokens=big_repeat, track_memory=True, vs_direct="lat_p50_ms"),
        Workload("big50-binary-down", "one 50 MB application/octet-stream download", "/v1/files/file-bench/content",
                 "binary", None, {"file_size": BINARY_BYTES}, 1, 1, track_memory=True, vs_direct="lat_p50_ms"),
        Workload("big50-binary-up", "one 50 MB application/octet-stream upload", "/v1/files", "json",
                 file_bytes(BINARY_BYTES), {}, 1, 1, track_memory=True, vs_direct="lat_p50_ms"),
    ]  # fmt: skip


def select(names: str | None, known: list[str], what: str, families: bool = False) -> list[str]:
    """
    Comma-separated names; with `families`, a name that is not itself known selects its family
    (`chat`: chat-c1, chat-c32; `big50-binary`: its download and upload; `big50` is big50 alone).
    """
    if not names:
        return known
    chosen = []
    for name in names.split(","):
        matches = [k for k in known if k == name] or [k for k in known if families and k.startswith(name + "-")]
        if not matches:
            raise SystemExit(f"unknown {what} {name!r}; known: {', '.join(known)}")
        chosen += [m for m in matches if m not in chosen]
    return [k for k in known if k in chosen]


# ---------------------------------------------------------------------------------------------
# Measuring one workload on one target


def percentile(values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'s' if count != 1 else ''}"


def ms(value: float | None) -> float | None:
    return None if value is None else value * 1000


def measure(target: targets.Target, workload: Workload) -> dict[str, Any]:
    """Runs the workload once; figures for the table, CPU and RSS of the proxy process if any."""
    process = target.process
    progress: loadgen.Progress | None = [] if workload.track_memory else None
    request = workload.request(f"{target.host}:{target.port}")
    sampler = targets.RssSampler(process.pid, 0.02 if workload.track_memory else 0.05) if process else None
    cpu_before = targets.cpu_seconds(process.pid) if process else 0.0

    async def load() -> loadgen.LoadResult:
        return await loadgen.run_load(
            target.host, target.port, request, workload.count, workload.concurrency, progress
        )

    with sampler or contextlib.nullcontext():
        try:
            result = loadgen.run_in_loop(load)
        except (TimeoutError, OSError) as exc:  # timed out, or the proxy no longer accepts connections
            result = loadgen.LoadResult([loadgen.Outcome(False, 0.0, error=repr(exc))])
        if process:
            targets.wait_idle(process.pid)
    ok = result.succeeded
    figures: dict[str, Any] = {
        "workload": workload.name,
        "target": target.name,
        "requests": len(result.outcomes),
        "ok": len(ok),
        "errors": sorted(set(result.errors))[:3],
        "wall_s": result.wall,
        "req_s": len(ok) / result.wall if result.wall else None,
        "tok_s": len(ok) * workload.tokens / result.wall if workload.tokens and result.wall else None,
        "lat_p50_ms": ms(percentile([o.latency for o in ok], 50)),
        "lat_p99_ms": ms(percentile([o.latency for o in ok], 99)),
        "ttft_p50_ms": ms(percentile([o.ttft for o in ok if o.ttft is not None], 50)),
        "ttft_p99_ms": ms(percentile([o.ttft for o in ok if o.ttft is not None], 99)),
        "body_mb": sum(o.body_bytes for o in ok) / 1e6,
    }
    if process and sampler:
        cpu = targets.cpu_seconds(process.pid) - cpu_before
        figures.update(
            cpu_s=cpu,
            cpu_per_1k=cpu / len(ok) * 1000 if ok else None,
            rss_start_mb=sampler.samples[0][1],
            rss_peak_mb=sampler.peak,
        )
        if progress and len(progress) > 1:  # the answer is the transfer (not an upload's short reply)
            figures["rss_at"] = memory_over_transfer(progress, sampler)
    return figures


def memory_over_transfer(progress: loadgen.Progress, sampler: targets.RssSampler) -> dict[str, float]:
    """The proxy's RSS when 10 %, 50 % and 90 % of the body had reached the client."""
    total = progress[-1][1]
    marks: dict[str, float] = {}
    for share in (10, 50, 90):
        when = next(t for t, size in progress if size >= total * share / 100)
        marks[str(share)] = sampler.at(when)
    marks["growth"] = marks["90"] - marks["10"]
    return marks


# ---------------------------------------------------------------------------------------------
# The run: processes, warm-up, interleaved repetitions


@dataclass(frozen=True)
class CpuLayout:
    """
    Which CPUs the load side (this process and the mock) and the proxies run on; None: anywhere.

    With --pin the proxy under test has a core to itself and the load generator and the mock
    share the other, so the figures do not depend on how the scheduler paired three busy
    processes on 2 cores. On the machine measured it changed neither the ratios nor the spread
    between repetitions noticeably (and it slows `direct`, whose two processes then share one
    core), so it is off by default.
    """

    load: set[int] | None = None
    proxy: set[int] | None = None

    @classmethod
    def choose(cls, pin: bool) -> CpuLayout:
        cpus = sorted(os.sched_getaffinity(0))
        if not pin or len(cpus) < 2:
            return cls()
        return cls(load=set(cpus[:-1]), proxy={cpus[-1]})

    def describe(self) -> str:
        if self.proxy is None:
            return "not pinned"
        return f"proxy on CPU {_cpu_list(self.proxy)}, load generator and mock on CPU {_cpu_list(self.load)}"


def _cpu_list(cpus: set[int] | None) -> str:
    return ",".join(map(str, sorted(cpus or ())))


@dataclass
class Bench:
    """Everything one run starts, so that all of it is stopped however the run ends."""

    names: list[str]
    workdir: Path
    cpus: CpuLayout
    mock: targets.Process | None = None
    database: targets.PgServer | None = None
    started: dict[str, targets.Target] = field(default_factory=dict)

    def start(self) -> None:
        self.mock = targets.start_mock(self.cpus.load)
        host, port = self.mock.address or ("", 0)
        upstream = f"http://{host}:{port}"
        if "rerouter-pg" in self.names:
            self.database = targets.start_postgres()
        for name in self.names:
            if name == "direct":
                self.started[name] = targets.Target(name, host, port)
            else:
                database_url = self.database.create_database() if name == "rerouter-pg" and self.database else ""
                self.started[name] = targets.start_target(name, upstream, self.workdir, self.cpus.proxy, database_url)

    def stop(self) -> None:
        for target in self.started.values():
            if target.process:
                target.process.stop()
        if self.mock:
            self.mock.stop()
        if self.database:
            self.database.cleanup()

    def processes(self) -> list[targets.Process]:
        return [p for p in [self.mock, *(t.process for t in self.started.values())] if p]


def warm_up_and_check(target: targets.Target, quick: bool) -> None:
    """
    A check that the target is set up as meant (the rerouter rewrites the model and strips
    thinking, the others pass the answer through unchanged), then a few hundred requests of each
    kind: first-use imports, the heap, the database file; without them the first repetition
    of the first workloads is the slowest by up to a third.
    """
    host = f"{target.host}:{target.port}"
    plain = Request.post(host, "/v1/chat/completions", chat(False), {}, "json")
    stream = Request.post(host, "/v1/chat/completions", chat(True), mock_headers(tokens=think_tokens()), "sse")
    ndjson = Request.post(host, "/api/chat", chat(True), mock_headers(tokens=think_tokens()), "ndjson")
    content = file_bytes(CHECK_BYTES)
    download = Request.get(host, "/v1/files/file-check/content", mock_headers(file_size=CHECK_BYTES), "binary")
    upload = Request.upload(host, "/v1/files", content, {})

    async def check() -> None:
        status, body = await loadgen.fetch(target.host, target.port, plain)
        routed = target.name.startswith("rerouter")
        want_model = b'"llama3-70b"' if routed else b'"gpt-4"'
        if status != 200 or (want_model not in body) or ((b"<think>" in body) == routed):
            raise RuntimeError(f"{target.name} is not set up as expected: HTTP {status} {body[:300]!r}")
        status, body = await loadgen.fetch(target.host, target.port, stream)
        if status != 200 or (b"ink>" in body) == routed:
            raise RuntimeError(f"{target.name}: unexpected think stream: HTTP {status} {body[:300]!r}")
        status, body = await loadgen.fetch(target.host, target.port, download)
        if status != 200 or body != content:
            raise RuntimeError(f"{target.name} changes a binary download: HTTP {status}, {len(body)} bytes")
        status, body = await loadgen.fetch(target.host, target.port, upload)
        if status != 200 or json.loads(body)["sha256"] != hashlib.sha256(content).hexdigest():
            raise RuntimeError(f"{target.name} changes a binary upload: HTTP {status} {body[:300]!r}")
        for request, count in ((plain, 400), (stream, 48), (ndjson, 32)):
            count = count // 2 if quick else count
            result = await loadgen.run_load(target.host, target.port, request, count, 16)
            if result.errors:
                raise RuntimeError(f"{target.name} fails during warm-up: {result.errors[:3]}")

    loadgen.run_in_loop(check)


def run_all(bench: Bench, workloads: list[Workload], reps: int, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Interleaved: every repetition runs each workload on every target, the order rotating."""
    runs = []
    names = list(bench.started)
    for rep in range(reps):
        order = names[rep % len(names) :] + names[: rep % len(names)]
        for workload in workloads:
            for name in order:
                figures = measure(bench.started[name], workload)
                figures["rep"] = rep
                runs.append(figures)
                log(progress_line(rep, figures))
    return runs


def progress_line(rep: int, f: dict[str, Any]) -> str:
    errors = f" ERRORS {f['requests'] - f['ok']}: {f['errors']}" if f["ok"] < f["requests"] else ""
    return f"  rep {rep + 1} {f['workload']:<17} {f['target']:<17} {f['wall_s']:6.2f} s{errors}"


# ---------------------------------------------------------------------------------------------
# Medians, ratios, the table and the goals


NUMERIC = ("req_s", "tok_s", "lat_p50_ms", "lat_p99_ms", "ttft_p50_ms", "ttft_p99_ms", "cpu_per_1k",
           "rss_start_mb", "rss_peak_mb", "wall_s", "body_mb")  # fmt: skip


def median_of(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def medians(runs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """Per (workload, target): the median of each figure over the repetitions, errors summed."""
    grouped: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for run in runs:
        grouped.setdefault((run["workload"], run["target"]), []).append(run)
    result = {}
    for key, group in grouped.items():
        summary: dict[str, Any] = {k: median_of([r.get(k) for r in group]) for k in NUMERIC}
        summary["failed"] = sum(r["requests"] - r["ok"] for r in group)
        summary["spread"] = spread([r.get("tok_s") or r.get("req_s") for r in group])
        if any("rss_at" in r for r in group):
            marks = [r["rss_at"] for r in group if "rss_at" in r]
            summary["rss_at"] = {k: statistics.median(m[k] for m in marks) for k in marks[0]}
        result[key] = summary
    return result


def spread(values: list[float | None]) -> float | None:
    """(max - min) / median over the repetitions: how far to trust a difference in the table."""
    present = [v for v in values if v is not None]
    if len(present) < 2 or not statistics.median(present):
        return None
    return (max(present) - min(present)) / statistics.median(present)


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def fmt(value: float | None, spec: str = ".1f", suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def delta_ms(value: float | None, base: float | None) -> str:
    return "-" if value is None or base is None else f"{value - base:+.1f} ms"


COLUMNS = [
    ("workload", 17, "<"), ("target", 17, "<"), ("req/s", 8, ">"), ("tok/s", 8, ">"),
    ("lat p50", 8, ">"), ("lat p99", 8, ">"), ("TTFT p50", 8, ">"), ("TTFT p99", 8, ">"),
    ("CPU s/1k", 8, ">"), ("RSS MB", 7, ">"), ("spread", 6, ">"),
    ("CPU/req", 8, ">"), ("thruput", 8, ">"), ("vs direct", 11, ">"),
]  # fmt: skip


def table(workloads: list[Workload], names: list[str], summary: dict) -> list[str]:
    """The main table: medians, then ratios to mitmdump (CPU per request, throughput) and the
    delta to direct (TTFT p50 for streams, latency p50 otherwise)."""
    head = "  ".join(f"{title:{align}{width}}" for title, width, align in COLUMNS)
    lines = [head, "-" * len(head)]
    for workload in workloads:
        base = summary.get((workload.name, BASELINE), {})
        direct = summary.get((workload.name, "direct"), {})
        for name in names:
            s = summary.get((workload.name, name))
            if s is None:
                continue
            throughput = "tok_s" if workload.tokens else "req_s"
            if name in (BASELINE, "direct"):
                cpu_ratio = thruput_ratio = "-"
            else:
                cpu_ratio = fmt(ratio(s["cpu_per_1k"], base.get("cpu_per_1k")), ".2f", "x")
                thruput_ratio = fmt(ratio(s[throughput], base.get(throughput)), ".2f", "x")
            key = workload.vs_direct
            vs_direct = "-" if name == "direct" else delta_ms(s[key], direct.get(key))
            cells = [
                workload.name, name, fmt(s["req_s"]), fmt(s["tok_s"], ".0f"),
                fmt(s["lat_p50_ms"], ".1f"), fmt(s["lat_p99_ms"], ".1f"),
                fmt(s["ttft_p50_ms"], ".1f"), fmt(s["ttft_p99_ms"], ".1f"),
                fmt(s.get("cpu_per_1k"), ".2f"), fmt(s.get("rss_peak_mb"), ".0f"),
                fmt(s["spread"] and s["spread"] * 100, ".0f", "%"), cpu_ratio, thruput_ratio, vs_direct,
            ]  # fmt: skip
            if s["failed"]:
                cells[-1] += f"  ({s['failed']} failed)"
            lines.append("  ".join(f"{c:{align}{width}}" for c, (_, width, align) in zip(cells, COLUMNS)))
        lines.append("")
    return lines


def memory_table(workloads: list[Workload], names: list[str], summary: dict) -> list[str]:
    """RSS of each proxy while one 50 MB body passes: flat means not buffered."""
    lines = ["proxy RSS in MB while one 50 MB body passes (10/50/90 %: when that share of the answer had arrived):"]
    for workload in (w for w in workloads if w.track_memory):
        for name in names:
            s = summary.get((workload.name, name))
            if not s or s.get("rss_peak_mb") is None:
                continue
            at = s.get("rss_at")
            during = f"  10% {at['10']:5.0f}  50% {at['50']:5.0f}  90% {at['90']:5.0f}" if at else " " * 33
            flat = f"  growth 10->90% {at['growth']:+5.1f}  {'flat' if at['growth'] <= FLAT_MB else 'GROWS'}" if at else ""
            lines.append(
                f"  {workload.name:<18} {name:<17} start {s['rss_start_mb']:5.0f}{during}  peak {s['rss_peak_mb']:5.0f}"
                f"  peak-start {s['rss_peak_mb'] - s['rss_start_mb']:+5.1f}{flat}  ({s['wall_s']:.1f} s)"
            )
    return lines


@dataclass
class Goal:
    """One of the issue's goals, judged on the rerouter's medians (rerouter-nolog shown too)."""

    text: str
    measure: Callable[[dict, str], tuple[float, str] | None]  # (value, shown) or None
    met: Callable[[float], bool]


def _pg_cpu_vs_sqlite(summary: dict, name: str) -> tuple[float, str] | None:
    """Judged once, on the rerouter's line: rerouter-pg against rerouter."""
    if name != ROUTER:
        return None
    pg, sqlite = (summary.get(("chat-c32", target), {}).get("cpu_per_1k") for target in ("rerouter-pg", ROUTER))
    value = ratio(pg, sqlite)
    return None if value is None else (value, f"{value:.2f}x")


def _ratio_to_mitmdump(workload: str, key: str) -> Callable[[dict, str], tuple[float, str] | None]:
    def measure(summary: dict, name: str) -> tuple[float, str] | None:
        value = ratio(summary.get((workload, name), {}).get(key), summary.get((workload, BASELINE), {}).get(key))
        return None if value is None else (value, f"{value:.2f}x")

    return measure


def _ttft_vs_direct(summary: dict, name: str) -> tuple[float, str] | None:
    mine = summary.get(("ttft", name), {}).get("ttft_p50_ms")
    direct = summary.get(("ttft", "direct"), {}).get("ttft_p50_ms")
    if mine is None or direct is None:
        return None
    return mine - direct, f"{mine:.1f} ms (direct {direct:.1f} {mine - direct:+.1f})"


def _slow_rss(summary: dict, name: str) -> tuple[float, str] | None:
    peak = summary.get(("slow100", name), {}).get("rss_peak_mb")
    return None if peak is None else (peak, f"{peak:.0f} MB")


def _binary_growth(summary: dict, name: str) -> tuple[float, str] | None:
    growth = {}
    for workload in ("big50-binary-down", "big50-binary-up"):
        s = summary.get((workload, name), {})
        if s.get("rss_peak_mb") is not None:
            growth[workload.rsplit("-", 1)[1]] = s["rss_peak_mb"] - s["rss_start_mb"]
    if not growth:
        return None
    return max(growth.values()), ", ".join(f"{kind} {value:+.1f} MB" for kind, value in growth.items())


def _big_growth(summary: dict, name: str) -> tuple[float, str] | None:
    at = summary.get(("big50", name), {}).get("rss_at")
    if not at:
        return None
    return at["growth"], f"{at['10']:.0f}/{at['50']:.0f}/{at['90']:.0f} MB ({at['growth']:+.1f})"


GOALS = [
    Goal("CPU per non-streamed request (chat-c32) vs mitmdump <= 1.10x",
         _ratio_to_mitmdump("chat-c32", "cpu_per_1k"), lambda v: v <= 1.10),
    Goal("streamed tokens/s (stream200) vs mitmdump >= 0.90x", _ratio_to_mitmdump("stream200", "tok_s"),
         lambda v: v >= 0.90),
    Goal("streamed tokens/s (think) vs mitmdump >= 0.90x", _ratio_to_mitmdump("think", "tok_s"), lambda v: v >= 0.90),
    Goal("streamed tokens/s (ollama) vs mitmdump >= 0.90x", _ratio_to_mitmdump("ollama", "tok_s"), lambda v: v >= 0.90),
    Goal("TTFT p50 (ttft) <= direct + 5 ms", _ttft_vs_direct, lambda v: v <= 5.0),
    Goal("peak RSS with 100 live streams (slow100) <= 120 MB", _slow_rss, lambda v: v <= 120),
    Goal(f"RSS flat during the 50 MB stream (big50: 10/50/90 %, growth <= {FLAT_MB:.0f} MB)", _big_growth,
         lambda v: v <= FLAT_MB),
    Goal("streamed tokens/s (big50) vs mitmdump >= 0.85x", _ratio_to_mitmdump("big50", "tok_s"), lambda v: v >= 0.85),
    Goal(f"50 MB binary download/upload (big50-binary): peak RSS growth <= {BINARY_GROWTH_MB:.0f} MB",
         _binary_growth, lambda v: v <= BINARY_GROWTH_MB),
    Goal("CPU per request (chat-c32), log in PostgreSQL (rerouter-pg) vs SQLite <= 1.10x", _pg_cpu_vs_sqlite,
         lambda v: v <= 1.10),
]  # fmt: skip


def goals_report(summary: dict) -> tuple[list[str], list[dict[str, Any]]]:
    lines = [f"{'goal':<72}  {'rerouter':<30}  {'':<12}  rerouter-nolog (info)"]
    records = []
    for goal in GOALS:
        mine, nolog = goal.measure(summary, ROUTER), goal.measure(summary, "rerouter-nolog")
        verdict = "not measured" if mine is None else "met" if goal.met(mine[0]) else "not met"
        shown, shown_nolog = mine[1] if mine else "-", nolog[1] if nolog else "-"
        lines.append(f"{goal.text:<72}  {shown:<30}  {verdict:<12}  {shown_nolog}")
        records.append(
            {"goal": goal.text, "rerouter": mine and mine[0], "nolog": nolog and nolog[0], "verdict": verdict}
        )
    return lines, records


# ---------------------------------------------------------------------------------------------
# Entry point


def code_version() -> str:
    """
    Which code was measured: the commit, the files changed since, and a digest of the proxy's
    modules as read now (they are what the proxies import a moment later).
    """
    root = targets.ROOT
    digest = hashlib.sha256()
    for path in sorted(root.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    try:
        git = ["git", "-C", str(root)]
        head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10)
        status = subprocess.run([*git, "status", "--porcelain", "--", "*.py"], capture_output=True, text=True)
    except (OSError, subprocess.SubprocessError):
        return f"sources {digest.hexdigest()[:12]}"
    changed = [line[3:] for line in status.stdout.splitlines() if "/" not in line[3:]]  # the proxy's own modules
    dirty = f" + uncommitted changes to {', '.join(changed)}" if changed else ""
    return f"commit {head.stdout.strip() or '?'}{dirty}, sources {digest.hexdigest()[:12]}"


def machine() -> dict[str, Any]:
    """What the figures were measured on (mitmproxy: the one installed next to this Python)."""
    try:
        mitmproxy = importlib.metadata.version("mitmproxy")
    except importlib.metadata.PackageNotFoundError:
        mitmproxy = "not installed"
    return {
        "date": datetime.date.today().isoformat(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "mitmproxy": mitmproxy,
        "platform": platform.platform(),
        "code": code_version(),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="about a minute: smaller counts, 2 repetitions")
    parser.add_argument("--reps", type=int, help="repetitions (default 4, 2 with --quick)")
    parser.add_argument(
        "--targets", help=f"comma-separated subset of {','.join(TARGETS)}, or also {','.join(OPT_IN_TARGETS)}"
    )
    parser.add_argument("--workloads", help="comma-separated subset (chat selects chat-c1 and chat-c32)")
    parser.add_argument(
        "--pin",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="run the proxies on the last CPU, the load generator and the mock on the others",
    )
    parser.add_argument("--json", type=Path, help="also write every run's raw figures and the medians here")
    return parser.parse_args(argv)


@dataclass
class OtherLoad:
    """
    CPU the rest of the machine used during the run: busy time from /proc/stat minus this process
    and its children. On 2 cores anything else running (tests, a build) shows up in the figures.
    """

    busy: float = field(default_factory=targets.machine_busy_seconds)
    own: float = field(default_factory=lambda: sum(os.times()[:2]))
    started: float = field(default_factory=time.monotonic)

    def seconds(self, children: list[targets.Process]) -> float:
        """Call before the children stop: their CPU is read from /proc."""
        ours = sum(os.times()[:2]) - self.own + sum(targets.cpu_seconds(p.pid) for p in children)
        return max(0.0, targets.machine_busy_seconds() - self.busy - ours)  # ticks: can dip below 0

    def share(self, seconds: float) -> float:
        """As a fraction of the machine's capacity over the run."""
        return seconds / ((time.monotonic() - self.started) * (os.cpu_count() or 1))


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so every child process is still stopped."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def print_report(workloads: list[Workload], names: list[str], reps: int, summary: dict, goals: list[str]) -> None:
    """The tables and the goals, after the run: nothing printed meanwhile competes with the load."""
    print()
    print(f"medians of {plural(reps, 'repetition')}; ratios vs {BASELINE}: CPU per request, and tokens/s "
          f"(streams) or requests/s (chat); vs direct: latency p50 for chat and big50, TTFT p50 otherwise; "
          f"times in ms")  # fmt: skip
    print("\n".join(table(workloads, names, summary)))
    if any(w.track_memory for w in workloads):
        print("\n".join(memory_table(workloads, names, summary)))
    print()
    print("\n".join(goals))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    reps = args.reps or (2 if args.quick else 4)
    if reps < 1:
        raise SystemExit("--reps must be at least 1")
    all_workloads = build_workloads(args.quick)
    chosen = select(args.workloads, [w.name for w in all_workloads], "workload", families=True)
    workloads = [w for w in all_workloads if w.name in chosen]
    names = select(args.targets, [*TARGETS, *OPT_IN_TARGETS], "target") if args.targets else list(TARGETS)
    info = machine()
    mode = "quick" if args.quick else "full"
    print(f"{info['date']}  {info['cpus']} CPUs  Python {info['python']}  mitmproxy {info['mitmproxy']}  "
          f"{mode} mode, {plural(reps, 'repetition')}, interleaved\ncode: {info['code']}", flush=True)  # fmt: skip
    for w in workloads:
        print(f"  {w.name:<17} {w.what}: {plural(w.count, 'request')}")
    started = time.monotonic()
    other_load = OtherLoad()
    cpus = CpuLayout.choose(args.pin)
    print(f"CPUs: {cpus.describe()}")
    with (
        terminate_as_interrupt(),
        targets.pinned(cpus.load),
        tempfile.TemporaryDirectory(prefix="rerouter-bench-") as tmp,
    ):
        bench = Bench(names, Path(tmp), cpus)
        try:
            bench.start()
            for target in bench.started.values():
                warm_up_and_check(target, args.quick)
            print(f"started and warmed up: {', '.join(f'{t.name} :{t.port}' for t in bench.started.values())}")
            runs = run_all(bench, workloads, reps, lambda line: print(line, flush=True))
            others = other_load.seconds(bench.processes())
        except KeyboardInterrupt:
            print("interrupted: stopping every process started", file=sys.stderr)
            return 130
        finally:
            bench.stop()
    wall = time.monotonic() - started
    summary = medians(runs)
    goal_lines, goal_records = goals_report(summary)
    print_report(workloads, names, reps, summary, goal_lines)
    print(f"\nwall time {wall:.0f} s; other processes on the machine used {others:.0f} CPU-s meanwhile "
          f"({other_load.share(others):.0%} of its {os.cpu_count()} CPUs)")  # fmt: skip
    if args.json:
        payload = {
            "machine": info,
            "mode": mode,
            "reps": reps,
            "cpus": cpus.describe(),
            "wall_s": wall,
            "other_cpu_s": others,
            "runs": runs,
            "medians": [{"workload": w, "target": t, **s} for (w, t), s in summary.items()],
            "goals": goal_records,
        }
        args.json.write_text(json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
