"""
Starting the rerouter as a real process, in each of its run forms, on a free loopback port.

The proxy is told to listen on port 0 and the port it got is read from its
startup line, so no test ever depends on a fixed port being free.
"""

import json
import os
import re
import socket
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

from rerouter.settings import LISTEN_HOST
from rerouter.settings import LISTEN_PORT
from rerouter.settings import SETTINGS
from tests.helpers import wait_for

ROOT = Path(__file__).resolve().parent.parent
ADDON = str(ROOT / "rerouter_addon.py")
BIN = Path(sys.executable).parent
LISTENING = re.compile(r"reverse proxy to (\S+) listening at ([\d.]+):(\d+)")
WEB_LISTENING = re.compile(r"Web server listening at (http://[\d.]+:\d+/)(?:\?token=(\w+))?")
RELEVANT_ENV = tuple(setting.env for setting in (*SETTINGS, LISTEN_HOST, LISTEN_PORT))
WEB_PASSWORD = "rerouter-test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(form: str, confdir: Path, extra: list[str] = ()) -> list[str]:
    confdir_arg = ["--set", f"confdir={confdir}"]
    loopback = ["--listen-host", "127.0.0.1", "--listen-port", "0"]
    if form == "python":
        return [sys.executable, ADDON, *confdir_arg, *extra]
    if form == "mitmdump":
        return [str(BIN / "mitmdump"), "-s", ADDON, *loopback, *confdir_arg, *extra]
    if form == "mitmweb":
        web = ["--web-host", "127.0.0.1", "--web-port", str(free_port()), "--no-web-open-browser"]
        password = ["--set", f"web_password={WEB_PASSWORD}"]
        return [str(BIN / "mitmweb"), "-s", ADDON, *loopback, *web, *password, *confdir_arg, *extra]
    raise ValueError(form)


class ProxyProcess:
    """One running rerouter; its combined output is kept for assertions and failure messages."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.argv = argv
        full_env = {k: v for k, v in os.environ.items() if k not in RELEVANT_ENV}
        full_env.update({"LISTEN_HOST": "127.0.0.1", "LISTEN_PORT": "0", "PYTHONUNBUFFERED": "1"})
        full_env.update(env)
        self.lines: list[str] = []
        self.port: int | None = None
        self.web_url: str | None = None
        self._ready = threading.Event()
        self.process = subprocess.Popen(
            argv,
            env=full_env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))
            if match := WEB_LISTENING.search(line):
                self.web_url = match.group(1)
            if match := LISTENING.search(line):
                self.port = int(match.group(3))
                self._ready.set()
        self._ready.set()

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 30) -> "ProxyProcess":
        if not self._ready.wait(timeout) or self.port is None:
            self.stop()
            raise RuntimeError(f"rerouter did not start: {self.argv}\n{self.output}")
        return self

    def wait_exit(self, timeout: float = 30) -> int:
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise RuntimeError(f"rerouter did not exit: {self.argv}\n{self.output}") from None
        self._reader.join(5)
        return code

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._reader.join(5)

    def web_flows(self) -> list[dict]:
        """The flows mitmweb lists, as its web API gives them."""
        request = urllib.request.Request(f"{self.web_url}flows", headers={"Authorization": f"Bearer {WEB_PASSWORD}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)

    def wait_for_output(self, text: str, timeout: float = 10) -> None:
        wait_for(lambda: text in self.output, timeout, lambda: f"{text!r} not in the rerouter's output:\n{self.output}")
