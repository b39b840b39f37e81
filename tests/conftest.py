import json
import os

import pytest

from tests.helpers import logged_addons
from tests.proxy import RELEVANT_ENV
from tests.proxy import ProxyProcess
from tests.proxy import command
from tests.upstream import MockUpstream

MODEL_MAP = {
    "gpt-4": "llama3-70b",
    "gpt-3.5-turbo": "qwen3:8b",
    "/^claude-(.*)$/": r"llama3-\1",
}


@pytest.fixture
def settings_env(monkeypatch):
    """A clean environment for the rerouter's variables."""
    for name in RELEVANT_ENV:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture
def logged(settings_env, tmp_path):
    """(tctx, settings, request log, Dashboard) as the script wires them, on a log in tmp_path."""
    with logged_addons(settings_env, tmp_path) as addons:
        yield addons


@pytest.fixture(scope="session")
def openai_upstream():
    with MockUpstream() as upstream:
        yield upstream


@pytest.fixture(scope="session")
def ollama_upstream():
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
