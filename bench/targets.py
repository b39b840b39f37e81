"""
The processes the benchmark starts (mock upstream, bare mitmdump, the rerouter) and what it
reads about them from /proc: CPU seconds and resident memory.

Every process listens on 127.0.0.1, port 0, and the port it got is read from its startup line
(the mock) or from /proc (the proxies, which run quiet), so nothing depends on a fixed port being
free. Each one is stopped by its own pid when the run ends.
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from tests.pgserver import PgServer
from tests.pgserver import find_bindir

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
MOCK_LISTENING = re.compile(r"listening on http://([\d.]+):(\d+)")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# Every variable the rerouter reads: inherited values must not leak into the benchmark.
REROUTER_ENV = (
    "UPSTREAM_URL", "OLLAMA_UPSTREAM_URL", "MODEL_MAP", "STRIP_THINKING", "DISABLE_THINKING",
    "REQUEST_TIMEOUT", "ENABLE_LOGGING", "DB_PATH", "MAX_LOG_AGE_DAYS", "LOG_MAX_BODY_BYTES",
    "LISTEN_HOST", "LISTEN_PORT", "REQUEST_USAGE", "DATABASE_URL", "INSTANCE_NAME",
)  # fmt: skip
# Output costs the proxies CPU, and unequally: mitmdump prints a flow line per request, plus
# "Streaming request/response" info lines per streamed body (every body, with stream_large_bodies=1),
# where the rerouter prints one per streamed response. So both run without flow lines and with
# warnings and errors only; that also hides mitmproxy's "listening at" line (like -q does), so
# the port a proxy got is read from /proc instead (`listening_port`).
QUIET = ["--set", "flow_detail=0", "--set", "termlog_verbosity=warn"]


@contextlib.contextmanager
def pinned(cpus: set[int] | None) -> Iterator[None]:
    """
    Runs the block on `cpus` only; a child started in it inherits them (from the very first
    instruction, so also every thread it starts), and the calling thread gets its own set back.
    """
    if cpus is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


class Process:
    """A child process whose merged output is drained by a thread (the tail is kept for errors)."""

    def __init__(
        self, name: str, argv: list[str], env: dict[str, str] | None = None, cpus: set[int] | None = None
    ) -> None:
        self.name = name
        self.argv = argv
        self.tail: collections.deque[str] = collections.deque(maxlen=60)
        self.address: tuple[str, int] | None = None
        self._pattern: re.Pattern[str] | None = None
        self._ready = threading.Event()
        full_env = {k: v for k, v in os.environ.items() if k not in REROUTER_ENV}
        full_env.update(env or {}, PYTHONUNBUFFERED="1")
        with pinned(cpus):
            self.popen = subprocess.Popen(
                argv,
                cwd=ROOT,
                env=full_env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                errors="replace",
            )
        self._reader = threading.Thread(target=self._drain, name=f"{name}-output", daemon=True)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def wait_for_line(self, pattern: re.Pattern[str], timeout: float = 30.0) -> tuple[str, int]:
        """The (host, port) in the first output line matching `pattern`: how the mock says it listens."""
        self._pattern = pattern
        self._reader.start()
        if not self._ready.wait(timeout) or self.address is None:
            self._fail()
        assert self.address is not None
        return self.address

    def wait_for_socket(self, timeout: float = 30.0) -> tuple[str, int]:
        """The process's own TCP socket listening on 127.0.0.1, as /proc shows it: how a quiet proxy is found."""
        self._reader.start()
        deadline = time.monotonic() + timeout
        while self.popen.poll() is None and time.monotonic() < deadline:
            port = listening_port(self.pid)
            if port is not None:
                self.address = ("127.0.0.1", port)
                return self.address
            time.sleep(0.05)
        self._fail()

    def _fail(self) -> NoReturn:
        self._reader.join(0.5)  # the last words of a process that just died
        raise RuntimeError(f"{self.name} did not start: {self.argv}\n" + "\n".join(self.tail))

    def _drain(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.tail.append(line.rstrip("\n"))
            if self._pattern and self.address is None and (match := self._pattern.search(line)):
                self.address = (match.group(1), int(match.group(2)))
                self._ready.set()
        self._ready.set()  # exited: wake the waiter, which sees no address

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s; only this process, by its pid."""
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        if self._reader.is_alive():
            self._reader.join(5)


@dataclass
class Target:
    """Where the load goes; `process` is the proxy measured (None for the upstream itself)."""

    name: str
    host: str
    port: int
    process: Process | None = None


def start_mock(cpus: set[int] | None = None) -> Process:
    """The project's mock upstream (tests/upstream.py), which keeps no record when run on its own."""
    argv = [sys.executable, "-m", "tests.upstream", "--port", "0"]
    mock = Process("mock upstream", argv, cpus=cpus)
    try:
        mock.wait_for_line(MOCK_LISTENING)
    except BaseException:
        mock.stop()
        raise
    return mock


def mitmdump_argv(upstream: str, confdir: Path, buffered: bool = False) -> list[str]:
    """
    Bare mitmdump with streaming forced: the baseline a proxy that adds nothing would cost.
    `buffered`: holding the bodies the rerouter holds instead (bench/stream_unedited.py), to
    show what that buffering alone costs.
    """
    mitmdump = BIN / "mitmdump"
    if not mitmdump.exists():
        raise RuntimeError(f"mitmdump not found next to {sys.executable}")
    streaming = ["-s", str(ROOT / "bench" / "stream_unedited.py")] if buffered else ["--set", "stream_large_bodies=1"]
    return [
        str(mitmdump), "--mode", f"reverse:{upstream}", "--listen-host", "127.0.0.1", "--listen-port", "0",
        *streaming, "--set", "connection_strategy=lazy", "--set", f"confdir={confdir}",
        *QUIET,
    ]  # fmt: skip


def start_postgres() -> PgServer:
    """The rerouter-pg target's database: a real PostgreSQL on loopback, started as the tests start it."""
    bindir = find_bindir()
    if bindir is None:
        raise RuntimeError(
            "the rerouter-pg target needs PostgreSQL (apt-get install postgresql); leave it out with --targets"
        )
    return PgServer(bindir).start()


def rerouter_env(upstream: str, db_path: Path, logging_on: bool, database_url: str = "") -> dict[str, str]:
    return {
        "DATABASE_URL": database_url,
        "UPSTREAM_URL": upstream,
        "OLLAMA_UPSTREAM_URL": upstream,
        "LISTEN_HOST": "127.0.0.1",
        "LISTEN_PORT": "0",
        "DB_PATH": str(db_path),
        "MODEL_MAP": '{"gpt-4": "llama3-70b"}',
        "ENABLE_LOGGING": "true" if logging_on else "false",
        "STRIP_THINKING": "true",
    }


def start_target(
    name: str, upstream: str, workdir: Path, cpus: set[int] | None = None, database_url: str = ""
) -> Target:
    """Starts one proxy target (fresh, with its own confdir and database) and waits for its port."""
    confdir = workdir / f"{name}-confdir"
    if name in ("mitmdump", "mitmdump-buffered"):
        buffered = name == "mitmdump-buffered"
        env = {"PYTHONPATH": str(ROOT)} if buffered else None
        process = Process(name, mitmdump_argv(upstream, confdir, buffered), env, cpus)
    elif name in ("rerouter", "rerouter-nolog", "rerouter-pg"):
        env = rerouter_env(upstream, workdir / f"{name}.db", name != "rerouter-nolog", database_url)
        argv = [sys.executable, str(ROOT / "rerouter_addon.py"), "--set", f"confdir={confdir}", *QUIET]
        process = Process(name, argv, env, cpus)
    else:
        raise ValueError(f"unknown target {name!r}")
    try:
        host, port = process.wait_for_socket()
    except BaseException:
        process.stop()
        raise
    return Target(name, host, port, process)


# /proc readings ------------------------------------------------------------------------------


def listening_port(pid: int) -> int | None:
    """The port of a TCP socket of `pid` listening on 127.0.0.1, if it has one yet."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
        sockets = set()
        for fd in fds:
            with contextlib.suppress(OSError):  # closed meanwhile
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    sockets.add(link[8:-1])
        with open(f"/proc/{pid}/net/tcp") as f:
            rows = [line.split() for line in f.readlines()[1:]]
    except OSError:
        return None
    for row in rows:
        local, state, inode = row[1], row[3], row[9]
        address, port = local.split(":")
        if state == "0A" and inode in sockets and address == "0100007F":  # LISTEN on 127.0.0.1
            return int(port, 16)
    return None


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (all its threads, e.g. the SQLite writer)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # fields 14 and 15 of stat(5)


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class RssSampler:
    """
    Samples VmRSS every `interval` seconds in a thread. VmHWM would be cheaper, but it is the
    peak of the process's whole life and cannot be reset between workloads.
    """

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid = pid
        self.interval = interval
        self.samples: list[tuple[float, float]] = []  # (perf_counter, MB)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> RssSampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _sample(self) -> None:
        try:
            self.samples.append((time.perf_counter(), rss_mb(self.pid)))
        except OSError:
            pass  # the process is gone; the run reports its errors

    @property
    def peak(self) -> float:
        return max((mb for _, mb in self.samples), default=0.0)

    def at(self, when: float) -> float:
        """The sample closest in time to `when`."""
        return min(self.samples, key=lambda s: abs(s[0] - when))[1]


def wait_idle(pid: int, step: float = 0.05, limit: float = 3.0) -> None:
    """
    Waits until the process uses no CPU for `step` seconds, so work it does after the last answer
    (the log writer thread committing its rows) is counted in the workload that caused it.
    """
    deadline = time.monotonic() + limit
    before = cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(step)
        now = cpu_seconds(pid)
        if now == before:
            return
        before = now


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy since boot (all cores, /proc/stat)."""
    with open("/proc/stat") as f:
        ticks = [int(v) for v in f.readline().split()[1:]]
    idle = ticks[3] + ticks[4]  # idle + iowait
    return (sum(ticks[:8]) - idle) / CLOCK_TICKS  # guest time is already inside user
