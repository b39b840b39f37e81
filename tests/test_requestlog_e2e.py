"""The request log, its JSON API and the in-flight list, through a real rerouter process."""

import json
import shutil
import socket
import stat
import uuid
from pathlib import Path

import pytest

from tests.helpers import get
from tests.helpers import http_request
from tests.helpers import ollama_client
from tests.helpers import open_stream
from tests.helpers import openai_client
from tests.helpers import post
from tests.helpers import row_for
from tests.helpers import wait_for
from tests.upstream import ANSWER

SECRET = "sk-very-secret-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def proxy(module_rerouter):
    proxy = module_rerouter("python")
    client = openai_client(proxy, api_key=SECRET)
    client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "plain"}])
    list(client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "streamed"}], stream=True))
    list(ollama_client(proxy).chat(model="gpt-3.5-turbo", messages=[{"role": "user", "content": "llama"}], stream=True))
    ollama_client(proxy).generate(model="other", prompt="gen", stream=False)
    wait_for(lambda: get(proxy, "/api/stats")[1]["total"] >= 4 and not get(proxy, "/api/inflight")[1]["inflight"])
    return proxy


def detail(proxy, row) -> dict:
    status, body = get(proxy, f"/api/logs/{row['id']}")
    assert status == 200
    return body


class TestRows:
    def test_fields(self, proxy, openai_upstream):
        logs = get(proxy, "/api/logs?q=streamed")[1]["logs"]
        assert len(logs) == 1
        row = logs[0]
        assert set(row) == {
            "id", "started_at", "method", "path", "service", "upstream", "stream", "requested_model",
            "routed_model", "status", "state", "duration_ms", "request_bytes", "response_bytes", "error",
            "reasoning_chars", "lone_think_close", "response_model", "reasoned_anyway", "note", "upstream_ms",
            "upstream_first_token_ms", "first_token_ms", "prompt_tokens", "completion_tokens", "tokens_per_s",
            "instance",
        }
        assert isinstance(row["reasoning_chars"], int)
        assert isinstance(row["lone_think_close"], bool) and isinstance(row["reasoned_anyway"], bool)
        # INSTANCE_NAME unset and the port chosen at random: the host name and the process id
        assert row["instance"] == f"{socket.gethostname()}:pid{proxy.process.pid}"
        assert row["started_at"].endswith(("Z", "+00:00"))
        assert (row["method"], row["path"], row["service"]) == ("POST", "/v1/chat/completions", "openai")
        assert row["upstream"] == openai_upstream.url
        assert row["stream"] is True
        assert (row["requested_model"], row["routed_model"]) == ("gpt-4", "llama3-70b")
        assert (row["status"], row["state"], row["error"]) == (200, "completed", None)
        assert row["duration_ms"] > 0 and row["request_bytes"] > 0 and row["response_bytes"] > 0

    def test_ollama_rows(self, proxy, ollama_upstream):
        logs = get(proxy, "/api/logs?service=ollama")[1]["logs"]
        assert {(r["path"], r["stream"]) for r in logs} >= {("/api/chat", True), ("/api/generate", False)}
        assert all(r["upstream"] == ollama_upstream.url for r in logs)

    def test_newest_first(self, proxy):
        logs = get(proxy, "/api/logs")[1]["logs"]
        assert [r["started_at"] for r in logs] == sorted((r["started_at"] for r in logs), reverse=True)

    @pytest.mark.parametrize(
        "query, check",
        [
            ("model=gpt-4", lambda r: "gpt-4" in (r["requested_model"], r["routed_model"])),
            ("model=llama3-70b", lambda r: r["routed_model"] == "llama3-70b"),
            ("service=openai", lambda r: r["service"] == "openai"),
            ("status=200", lambda r: r["status"] == 200),
            ("state=completed", lambda r: r["state"] == "completed"),
        ],
    )
    def test_filters(self, proxy, query, check):
        body = get(proxy, f"/api/logs?{query}")[1]
        assert body["logs"] and all(check(r) for r in body["logs"])
        assert body["total"] == len(body["logs"])

    def test_limit_and_total(self, proxy):
        body = get(proxy, "/api/logs?limit=1")[1]
        assert len(body["logs"]) == 1 and body["total"] >= 4
        assert get(proxy, "/api/logs?limit=many")[0] == 400

    def test_details_hold_what_was_sent_and_delivered(self, proxy):
        streamed = detail(proxy, get(proxy, "/api/logs?q=streamed")[1]["logs"][0])
        sent = json.loads(streamed["request_body"])
        assert sent["model"] == "llama3-70b" and sent["stream"] is True
        assert "data: [DONE]" in streamed["response_body"]
        assert "<think>" not in streamed["response_body"] and "Hello" in streamed["response_body"]
        plain = detail(proxy, get(proxy, "/api/logs?q=plain")[1]["logs"][0])
        assert json.loads(plain["response_body"])["choices"][0]["message"]["content"] == ANSWER

    def test_details_hold_the_answers_text(self, proxy):
        for query in ("q=streamed", "q=plain", "q=llama", "q=gen"):
            assert detail(proxy, get(proxy, f"/api/logs?{query}")[1]["logs"][0])["response_text"] == ANSWER, query

    def test_unknown_detail_is_404(self, proxy):
        assert get(proxy, "/api/logs/nope")[0] == 404

    def test_stats(self, proxy):
        stats = get(proxy, "/api/stats")[1]
        for key in ("total", "by_service", "by_model", "by_status", "errors", "inflight", "last_hour", "last_24h", "avg_duration_ms", "p95_duration_ms"):
            assert key in stats
        assert stats["total"] >= 4 and stats["last_hour"] >= 4
        assert stats["by_service"]["openai"] >= 2 and stats["by_service"]["ollama"] >= 2
        assert stats["by_model"]["llama3-70b"] >= 2
        assert stats["by_status"]["200"] >= 4
        assert stats["p95_duration_ms"] > 0 and stats["avg_duration_ms"] > 0
        assert stats["by_requested_model"]["gpt-4"] >= 2 and stats["by_requested_model"]["gpt-3.5-turbo"] >= 1
        assert stats["by_model_detail"]["llama3-70b"]["requests"] == stats["by_model"]["llama3-70b"]
        for key in ("first_token_p50_ms", "first_token_p95_ms", "prompt_tokens", "completion_tokens"):
            assert key in stats

    def test_dashboard_page(self, proxy):
        status, page = get(proxy, "/")
        assert status == 200 and b"/dashboard/app.js" in page

    def test_local_routes_are_not_logged_or_forwarded(self, proxy, ollama_upstream):
        before = get(proxy, "/api/stats")[1]["total"]
        get(proxy, "/api/logs")
        assert get(proxy, "/api/stats")[1]["total"] == before
        assert not [r for r in ollama_upstream.requests if r["path"].startswith(("/api/stats", "/api/logs"))]


def test_secrets_never_stored(proxy):
    rows = get(proxy, "/api/logs?limit=500")[1]["logs"]
    for row in rows:
        assert SECRET not in json.dumps(detail(proxy, row))
    headers = dict(detail(proxy, get(proxy, "/api/logs?q=plain")[1]["logs"][0])["request_headers"])
    assert headers.get("authorization", headers.get("Authorization")) == "[redacted]"
    assert SECRET not in proxy.output, "the process log"
    paths = proxy_db_files(proxy)
    assert paths, "the database files exist"
    for path in paths:
        assert SECRET.encode() not in path.read_bytes(), path


def test_secret_query_parameters_are_masked_everywhere(proxy, openai_upstream):
    gate = uuid.uuid4().hex
    body = {"model": "gpt-4", "messages": [{"role": "user", "content": "keyed"}], "stream": True}
    response = open_stream(proxy, f"/v1/chat/completions?key={SECRET}&alt=sse", body, gate=gate)
    response.read1(1)
    inflight = wait_for(lambda: get(proxy, "/api/inflight")[1]["inflight"])
    openai_upstream.release(gate)
    response.read()
    masked = "/v1/chat/completions?key=[redacted]&alt=sse"
    assert inflight[0]["path"] == masked
    row = row_for(proxy, masked)
    answers = [json.dumps(get(proxy, "/api/logs?limit=500")[1]), json.dumps(detail(proxy, row))]
    assert not [answer for answer in answers if SECRET in answer]
    assert openai_upstream.requests[-1]["path"].endswith(f"?key={SECRET}&alt=sse"), "forwarded as sent"
    for path in proxy_db_files(proxy):
        assert SECRET.encode() not in path.read_bytes(), path


def test_database_files_are_private(proxy):
    modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in proxy_db_files(proxy)}
    assert modes == {"requests.db": 0o600, "requests.db-wal": 0o600, "requests.db-shm": 0o600}


def test_database_of_the_previous_release_is_upgraded(rerouter, tmp_path):
    db = tmp_path / "old.db"
    shutil.copyfile(Path(__file__).parent / "data" / "requests-v1.db", db)
    proxy = rerouter("python", {"DB_PATH": str(db), "MAX_LOG_AGE_DAYS": "36500"})
    body = get(proxy, "/api/logs")[1]
    assert body["total"] == 4
    assert [row["id"] for row in body["logs"]] == ["v1-inflight", "v1-error", "v1-ollama", "v1-stream"]
    assert body["logs"][-1]["reasoning_chars"] == 0 and body["logs"][-1]["first_token_ms"] is None
    assert get(proxy, "/api/logs/v1-stream")[1]["response_text"] == "Hello from version one."
    openai_client(proxy).chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "after-the-upgrade"}])
    new = wait_for(lambda: get(proxy, "/api/logs?q=after-the-upgrade&state=completed")[1]["logs"])
    assert new[0]["routed_model"] == "llama3-70b"
    assert get(proxy, "/api/stats")[1]["total"] == 5


def proxy_db_files(proxy) -> list[Path]:
    """The database and its -wal and -shm files (the harness puts DB_PATH in the confdir)."""
    confdir = Path(next(a.split("=", 1)[1] for a in proxy.argv if a.startswith("confdir=")))
    return [p for p in confdir.glob("requests.db*") if p.is_file()]


def test_inflight_while_streaming_and_gone_after(proxy, openai_upstream):
    gate = uuid.uuid4().hex
    body = {"model": "gpt-4", "messages": [{"role": "user", "content": "slow"}], "stream": True}
    response = open_stream(proxy, "/v1/chat/completions", body, gate=gate)
    response.read1(1)
    inflight = wait_for(lambda: get(proxy, "/api/inflight")[1]["inflight"])
    assert inflight[0]["path"] == "/v1/chat/completions"
    assert (inflight[0]["requested_model"], inflight[0]["routed_model"]) == ("gpt-4", "llama3-70b")
    assert inflight[0]["elapsed_ms"] >= 0 and inflight[0]["response_bytes"] > 0
    assert get(proxy, "/api/stats")[1]["inflight"] == 1
    # its row is in the database too once it has run for INFLIGHT_ROW_AFTER
    wait_for(lambda: get(proxy, "/api/logs?state=inflight")[1]["total"] == 1)
    openai_upstream.release(gate)
    response.read()
    wait_for(lambda: not get(proxy, "/api/inflight")[1]["inflight"])


def test_client_disconnect_mid_stream_is_aborted(proxy, openai_upstream):
    gate = uuid.uuid4().hex
    body = {"model": "gpt-4", "messages": [{"role": "user", "content": "leaving"}], "stream": True}
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(http_request("/v1/chat/completions", body, gate=gate))
        assert b"200" in sock.recv(65536)
    row = row_for(proxy, "/v1/chat/completions", state="aborted")
    assert row["status"] == 200 and row["error"] == "Client disconnected."
    assert not get(proxy, "/api/inflight")[1]["inflight"]
    openai_upstream.release(gate)


def test_failed_upstream_rows(rerouter):
    dead = "http://127.0.0.1:9"
    proxy = rerouter("python", {"UPSTREAM_URL": dead, "OLLAMA_UPSTREAM_URL": dead})
    assert post(proxy, "/v1/chat/completions", {"model": "gpt-4"})[0] == 502
    row = row_for(proxy, "/v1/chat/completions")
    assert (row["state"], row["status"]) == ("error", 502)
    assert "Connect call failed" in row["error"]
    stats = get(proxy, "/api/stats")[1]
    assert stats["errors"] == 1 and stats["by_status"]["502"] == 1


def test_timeout_rows(rerouter):
    proxy = rerouter("python", {"REQUEST_TIMEOUT": "0.5"})
    assert post(proxy, "/v1/chat/completions", {"model": "gpt-4"}, hang=3)[0] == 504
    row = row_for(proxy, "/v1/chat/completions")
    assert (row["state"], row["status"], row["error"]) == ("error", 504, "no response headers within 0.5 s")


def test_logging_off(rerouter, ollama_upstream, tmp_path):
    db = tmp_path / "off.db"
    proxy = rerouter("mitmdump", {"ENABLE_LOGGING": "false", "DB_PATH": str(db)})
    ollama_upstream.clear()
    status, _ = get(proxy, "/api/stats")
    assert status == 404, "forwarded to the Ollama upstream, which has no such path"
    assert [r["path"] for r in ollama_upstream.requests] == ["/api/stats"]
    assert not db.exists()


def test_unusable_db_path_stops_startup(rerouter, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    process = rerouter("mitmdump", {"DB_PATH": str(blocker / "requests.db")}, ready=False)
    assert process.wait_exit() != 0
    assert "DB_PATH (option db_path): cannot open the request log" in process.output


@pytest.mark.parametrize("path", ["/v1/../api/logs", "//api/logs", "/api%2Flogs", "/api/logs/a/b"])
def test_crafted_paths_go_upstream(proxy, openai_upstream, ollama_upstream, path):
    assert get(proxy, path)[0] == 404, "the mock upstream's answer"
    seen = [r["path"] for r in openai_upstream.requests + ollama_upstream.requests]
    assert path in seen


def test_token_guards_the_api_not_the_traffic(rerouter, openai_upstream):
    token = "tok-" + uuid.uuid4().hex
    proxy = rerouter("python", {"DASHBOARD_TOKEN": token})
    assert get(proxy, "/api/stats")[0] == 401
    assert get(proxy, "/")[0] == 200, "the page shows its login form"
    assert get(proxy, "/api/stats", {"Authorization": f"Bearer {token}"})[0] == 200
    client = openai_client(proxy, api_key="sk-upstream")
    assert client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}]).choices
    assert openai_upstream.requests[-1]["headers"]["authorization"] == "Bearer sk-upstream"
    assert token not in proxy.output
