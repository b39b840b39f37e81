import contextlib
import json
import os

import pytest
from mitmproxy import http
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import taddons
from mitmproxy.test import tflow
from mitmproxy.test import tutils

UPSTREAM = "http://127.0.0.1:8000"


def reverse_flow(
    path: str = "/v1/chat/completions",
    body: object = None,
    method: str = "POST",
    content: bytes | None = None,
) -> http.HTTPFlow:
    """A live flow as it reaches the hooks in reverse mode: aimed at UPSTREAM, Host rewritten."""
    flow = tflow.tflow()
    flow.client_conn.proxy_mode = ProxyMode.parse(f"reverse:{UPSTREAM}")
    if content is None:
        content = b"" if body is None else json.dumps(body).encode()
    flow.request = tutils.treq(
        method=method.encode(),
        host="127.0.0.1",
        port=8000,
        path=path.encode(),
        headers=http.Headers(host="127.0.0.1:8000", content_type="application/json"),
        content=content,
    )
    return flow


def chat_chunk(content=None, index=0, finish_reason=None, **delta) -> dict:
    """An OpenAI `chat.completion.chunk` as a streaming server sends it."""
    if content is not None:
        delta["content"] = content
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "qwen3",
        "choices": [{"index": index, "delta": delta, "finish_reason": finish_reason}],
    }


def json_response(body: object, status: int = 200, content_type: str = "application/json") -> http.Response:
    return http.Response.make(status, json.dumps(body), {"content-type": content_type})


def start(tctx, *addons) -> None:
    """What mitmproxy does once a script is loaded: configure with every option."""
    for addon in addons:
        addon.configure(set(tctx.options.keys()))


@pytest.fixture
def settings_env(monkeypatch):
    """A clean environment for the rerouter's variables."""
    from tests.proxy import RELEVANT_ENV

    for name in RELEVANT_ENV:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@contextlib.contextmanager
def dashboard_addons(settings_env, tmp_path, **env):
    """The Dashboard with its settings and request log as the script wires them, on a log in tmp_path."""
    from dashboard import Dashboard
    from rerouter.metrics import Metrics
    from rerouter.requestlog import RequestLog
    from rerouter.rules import Rules
    from rerouter.settings import Settings

    settings_env.setenv("DB_PATH", str(tmp_path / "log.db"))
    for name, value in env.items():
        settings_env.setenv(name, value)
    s = Settings()
    log = RequestLog(s)
    dash = Dashboard(s, log, Rules(s, log), Metrics(log))
    with taddons.context(s, dash, log) as tctx:
        start(tctx, s, log)
        yield dash
        dash.done()
        log.done()


MODEL_MAP = {
    "gpt-4": "llama3-70b",
    "gpt-3.5-turbo": "qwen3:8b",
    "/^claude-(.*)$/": r"llama3-\1",
}


@pytest.fixture(scope="session")
def openai_upstream():
    from tests.upstream import MockUpstream

    with MockUpstream() as upstream:
        yield upstream


@pytest.fixture(scope="session")
def ollama_upstream():
    from tests.upstream import MockUpstream

    with MockUpstream() as upstream:
        yield upstream


class Rerouters:
    """Starts rerouter processes against the two mock upstreams and stops them all at the end."""

    def __init__(self, confdir, openai_upstream, ollama_upstream) -> None:
        self.confdir = confdir
        self.env = {
            "UPSTREAM_URL": openai_upstream.url,
            "OLLAMA_UPSTREAM_URL": ollama_upstream.url,
            "MODEL_MAP": json.dumps(MODEL_MAP),
        }
        self.started = []

    def __call__(self, form: str = "python", env: dict | None = None, args=(), ready: bool = True):
        from tests.proxy import ProxyProcess
        from tests.proxy import command

        workdir = self.confdir / f"rerouter{len(self.started)}"
        workdir.mkdir()
        argv = command(form, workdir, list(args))
        process = ProxyProcess(argv, {**self.env, "DB_PATH": str(workdir / "requests.db"), **(env or {})})
        self.started.append(process)
        return process.wait_ready() if ready else process

    def stop(self) -> None:
        for process in self.started:
            process.stop()


@pytest.fixture
def rerouter(tmp_path, openai_upstream, ollama_upstream):
    """Start a rerouter process: rerouter(form="python", env={...}, args=[...], ready=True)."""
    rerouters = Rerouters(tmp_path, openai_upstream, ollama_upstream)
    yield rerouters
    rerouters.stop()


@pytest.fixture(scope="module")
def module_rerouter(tmp_path_factory, openai_upstream, ollama_upstream):
    """Like `rerouter`, for processes shared by a module's tests."""
    rerouters = Rerouters(tmp_path_factory.mktemp("rerouter"), openai_upstream, ollama_upstream)
    yield rerouters
    rerouters.stop()


@pytest.fixture(scope="session")
def pg_server():
    """A real PostgreSQL server (tests/pgserver.py) for the whole session; skipped where none is installed."""
    from tests.pgserver import PgServer
    from tests.pgserver import find_bindir

    bindir = find_bindir()
    if bindir is None:
        if os.environ.get("REQUIRE_POSTGRES"):
            raise RuntimeError("REQUIRE_POSTGRES is set but PostgreSQL is not installed (apt-get install postgresql)")
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    server = PgServer(bindir)
    try:
        yield server.start()
    finally:
        server.cleanup()


@pytest.fixture
def pg_url(pg_server) -> str:
    """The URL of a new empty database on the session's PostgreSQL server, for this test alone."""
    return pg_server.create_database()
