import functools
import json
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from mitmproxy import flow as mflow
from mitmproxy import http
from mitmproxy.addons.view import View
from mitmproxy.test import taddons

from dashboard import Dashboard
from dashboard import log_filters
from rerouter import requestlog
from rerouter.flows import flow_state
from rerouter.framing import LAST_EVENT_WINDOW
from rerouter.requestlog import BodySample
from rerouter.requestlog import DeliveredStream
from rerouter.requestlog import RequestLog
from rerouter.settings import Settings
from tests.helpers import chunked
from tests.helpers import dashboard_addons
from tests.helpers import json_response
from tests.helpers import reverse_flow
from tests.helpers import start
from tests.helpers import stored
from tests.helpers import wait_for_async


class Upper:
    """A stream callable that is an object, as EventStream and KeepAlive are."""

    def __call__(self, data: bytes) -> list[bytes]:
        return [data.upper()] if data else []


class TestDeliveredStream:
    def test_pass_through(self):
        sample = BodySample(cap=5)
        stream = DeliveredStream(True, sample)
        assert stream(b"hello world") == [b"hello world"]
        assert stream(b"") == []
        assert sample.size == 11 and sample.head == b"hello"

    @pytest.mark.parametrize(
        "inner",
        [lambda d: d.upper(), lambda d: [d.upper()] if d else [], functools.partial(bytes.upper), Upper(), Upper().__call__],
        ids=["bytes", "list", "partial", "object", "bound method"],
    )
    def test_sees_what_the_inner_stream_sends(self, inner):
        sample = BodySample(cap=100)
        stream = DeliveredStream(inner, sample)
        assert stream(b"abc") == [b"ABC"]
        assert sample.head == b"ABC"


class TestBodySample:
    @settings(max_examples=200, deadline=None)
    @given(st.binary(max_size=20000), st.lists(st.integers(1, 5000), min_size=1, max_size=20), st.integers(0, 12000))
    def test_keeps_the_head_and_the_end_whatever_the_chunks(self, body, sizes, cap):
        sample = BodySample(cap)
        for chunk in chunked(body, sizes):
            sample.add(chunk)
        assert sample.size == len(body)
        assert sample.head == body[:cap]
        assert sample.tail == body[-LAST_EVENT_WINDOW:]

    def test_a_stream_of_tiny_reads(self):
        body = bytes(range(256)) * 40
        sample = BodySample(cap=9000)
        for i in range(len(body)):
            sample.add(body[i : i + 1])
        assert sample.size == len(body)
        assert sample.head == body[:9000] and sample.tail == body[-LAST_EVENT_WINDOW:]


def counted(calls: list[str], name: str, method):
    """`method`, which adds its name to `calls` whenever it is called."""

    def called(*args, **fields):
        calls.append(name)
        return method(*args, **fields)

    return called


class TestRequestLog:
    def test_completed_request(self, logged):
        tctx, s, log, dash = logged
        f = reverse_flow(body={"model": "llama3-70b"})
        flow_state(f).requested_model, flow_state(f).routed_model = "gpt-4", "llama3-70b"
        f.request.headers["authorization"] = "Bearer sk-secret"
        log.request(f)
        assert [r["path"] for r in log.inflight_rows()] == ["/v1/chat/completions"]
        f.response = json_response({"choices": []})
        log.responseheaders(f)
        log.response(f)
        assert not log.inflight
        row = stored(log, f.id)
        assert (row["requested_model"], row["routed_model"], row["status"], row["stream"]) == ("gpt-4", "llama3-70b", 200, False)
        assert dict(row["request_headers"])["authorization"] == "[redacted]"
        assert json.loads(row["response_body"]) == {"choices": []}

    def test_row_gets_the_figures_other_addons_found_and_a_masked_path(self, logged):
        tctx, s, log, dash = logged
        f = reverse_flow("/v1/chat/completions?key=sk-in-the-query&alt=sse", body={"model": "m"})
        log.request(f)
        assert [r["path"] for r in log.inflight_rows()] == ["/v1/chat/completions?key=[redacted]&alt=sse"]
        figures = {
            "reasoning_chars": 12,
            "lone_think_close": True,
            "response_model": "m-2025",
            "reasoned_anyway": True,
            "note": "passed on unedited",
            "upstream_ms": 3.5,
            "upstream_first_token_ms": 20.0,
            "first_token_ms": 80.5,
            "prompt_tokens": 9,
            "completion_tokens": 42,
            "tokens_per_s": 33.25,
        }
        for name, value in figures.items():
            setattr(flow_state(f), name, value)
        f.response = json_response({"choices": [{"message": {"content": "Hi!"}}]})
        log.responseheaders(f)
        log.response(f)
        row = stored(log, f.id)
        assert {name: row[name] for name in figures} == figures
        assert row["path"] == "/v1/chat/completions?key=[redacted]&alt=sse"
        assert json.loads(row["request_body"]) == {"model": "m"} and row["response_text"] == "Hi!"

    def test_failed_row_gets_the_figures_too(self, logged):
        tctx, s, log, dash = logged
        f = reverse_flow(body={"model": "m"})
        log.request(f)
        flow_state(f).upstream_ms, flow_state(f).reasoning_chars = 7.5, 3
        f.error = mflow.Error("Client disconnected.")
        log.error(f)
        row = stored(log, f.id, "aborted")
        assert (row["upstream_ms"], row["reasoning_chars"], row["first_token_ms"]) == (7.5, 3, None)
        assert json.loads(row["request_body"]) == {"model": "m"}

    def test_streamed_body_is_what_the_client_got(self, logged):
        tctx, s, log, dash = logged
        f = reverse_flow()
        log.request(f)
        f.response = http.Response.make(200, b"", {"content-type": "text/event-stream"})
        f.response.stream = lambda data: [data.replace(b"<think>x</think>", b"")] if data else []
        log.responseheaders(f)
        f.response.stream(b"data: <think>x</think>hi\n\n")
        f.response.stream(b"")
        log.response(f)
        row = stored(log, f.id)
        assert row["response_body"] == "data: hi\n\n" and row["stream"] is True

    @pytest.mark.parametrize(
        "message, answered, state, status",
        [("Client disconnected.", None, "aborted", None), ("[Errno 111] refused", 502, "error", 502)],
    )
    def test_failures(self, logged, message, answered, state, status):
        tctx, s, log, dash = logged
        f = reverse_flow()
        log.request(f)
        f.error = mflow.Error(message)
        if answered:
            flow_state(f).answered_status = answered
        log.error(f)
        row = stored(log, f.id, state)
        assert (row["status"], row["error"]) == (status, message)

    def test_a_short_request_is_written_once_whole(self, logged, monkeypatch):
        tctx, s, log, dash = logged
        queued = []
        for name in ("record", "begin", "finish"):
            monkeypatch.setattr(log.store, name, counted(queued, name, getattr(log.store, name)))
        f = reverse_flow(body={"model": "m"})
        log.request(f)
        log.write_inflight_rows(time.monotonic() - requestlog.INFLIGHT_ROW_AFTER)
        f.response = json_response({"choices": []})
        log.responseheaders(f)
        log.response(f)
        assert queued == ["record"]
        row = stored(log, f.id)
        assert json.loads(row["request_body"]) == {"model": "m"} and json.loads(row["response_body"]) == {"choices": []}

    @pytest.mark.parametrize("end", ["response", "error"])
    def test_a_long_request_is_in_the_database_while_it_runs(self, logged, end):
        tctx, s, log, dash = logged
        f = reverse_flow(body={"model": "m"})
        f.request.headers["authorization"] = "Bearer sk-secret"
        log.request(f)
        log.write_inflight_rows(time.monotonic())
        running = stored(log, f.id, "inflight")
        assert dict(running["request_headers"])["authorization"] == "[redacted]"
        assert json.loads(running["request_body"]) == {"model": "m"}
        log.write_inflight_rows(time.monotonic())  # written once
        if end == "response":
            f.response = json_response({"choices": []})
            log.responseheaders(f)
            log.response(f)
        else:
            f.error = mflow.Error("Client disconnected.")
            log.error(f)
        row = stored(log, f.id, "completed" if end == "response" else "aborted")
        assert json.loads(row["request_body"]) == {"model": "m"}
        assert log.store.logs()[1] == 1 and log.store.failures == 0

    async def test_requests_running_past_inflight_row_after_are_written_while_they_run(self, logged, monkeypatch):
        tctx, s, log, dash = logged
        monkeypatch.setattr(requestlog, "INFLIGHT_ROW_AFTER", 0.05)
        monkeypatch.setattr(requestlog, "INFLIGHT_CHECK_INTERVAL", 0.01)
        log.running()
        long, short = reverse_flow(), reverse_flow()
        log.request(long)
        await wait_for_async(lambda: log.store.get(long.id))
        log.request(short)
        short.response = json_response({"choices": []})
        log.response(short)
        await wait_for_async(lambda: log.store.logs(state="completed")[1] == 1)
        assert log.store.logs(state="inflight")[0][0]["id"] == long.id

    def test_logging_off_creates_no_database(self, settings_env, tmp_path):
        settings_env.setenv("DB_PATH", str(tmp_path / "never.db"))
        settings_env.setenv("ENABLE_LOGGING", "false")
        s = Settings()
        log = RequestLog(s)
        with taddons.context(s, log) as tctx:
            start(tctx, s, log)
            log.request(reverse_flow())
            assert log.store is None and not log.inflight
        assert not (tmp_path / "never.db").exists()


class TestDashboard:
    async def test_local_routes_answered(self, logged):
        tctx, s, log, dash = logged
        for path in ("/", "/dashboard/app.js", "/api/logs?limit=5", "/api/stats", "/api/inflight"):
            f = reverse_flow(path, method="GET")
            await dash.request(f)
            assert f.response is not None and f.response.status_code == 200, path
            assert flow_state(f).local
        f = reverse_flow("/api/logs/missing", method="GET")
        await dash.request(f)
        assert f.response.status_code == 404

    @pytest.mark.parametrize("path, method", [("/v1/models", "GET"), ("/api/tags", "GET"), ("/api/logs", "POST"), ("/api/logsx", "GET")])
    async def test_everything_else_goes_upstream(self, logged, path, method):
        tctx, s, log, dash = logged
        f = reverse_flow(path, method=method)
        await dash.request(f)
        assert f.response is None

    async def test_bad_filter_is_400(self, logged):
        tctx, s, log, dash = logged
        f = reverse_flow("/api/logs?status=ok", method="GET")
        await dash.request(f)
        assert f.response.status_code == 400
        assert "status must be a whole number" in f.response.json()["error"]

    async def test_unreadable_log_is_503(self, logged):
        tctx, s, log, dash = logged
        for path in Path(log.store.path).parent.glob("log.db*"):
            path.unlink()
        f = reverse_flow("/api/stats", method="GET")
        await dash.request(f)
        assert f.response.status_code == 503

    def test_log_filters(self):
        assert log_filters("model=a&status=200&limit=5&q=&other=x") == {"model": "a", "status": 200, "limit": 5}

    async def test_polling_does_not_fill_mitmweb(self, logged):
        tctx, s, log, dash = logged
        view = View()
        tctx.master.addons.add(view)
        f = reverse_flow("/api/stats", method="GET")
        await dash.request(f)
        view.add([f])
        f.live = False
        dash.response(f)
        await wait_for_async(lambda: len(view) == 0)


@pytest.fixture
def guarded(settings_env, tmp_path):
    with dashboard_addons(settings_env, tmp_path, DASHBOARD_TOKEN="s3cret-token-for-tests") as dash:
        yield dash


async def ask(dash: Dashboard, path: str, method: str = "GET", **headers) -> http.HTTPFlow:
    f = reverse_flow(path, method=method)
    f.request.headers.update(headers)
    await dash.request(f)
    return f


class TestToken:
    @pytest.mark.parametrize("path, status", [("/api/stats", 200), ("/api/logs", 200), ("/api/inflight", 200), ("/api/logs/abc", 404)])
    async def test_json_routes_need_it(self, guarded, path, status):
        assert (await ask(guarded, path)).response.status_code == 401
        assert (await ask(guarded, path, authorization="Bearer wrong")).response.status_code == 401
        assert (await ask(guarded, path, authorization="Bearer s3cret-token-for-tests")).response.status_code == status

    async def test_the_page_shows_its_login_form_without_it(self, guarded):
        assert (await ask(guarded, "/")).response.status_code == 200

    async def test_login_sets_an_httponly_cookie_that_opens_the_routes(self, guarded):
        f = reverse_flow("/login")
        f.request.urlencoded_form = [("token", "s3cret-token-for-tests")]
        await guarded.request(f)
        assert f.response.status_code == 303
        cookie = f.response.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "s3cret-token-for-tests" not in cookie
        session = cookie.split(";", 1)[0]
        assert (await ask(guarded, "/api/stats", cookie=session)).response.status_code == 200
        assert (await ask(guarded, "/api/stats", cookie="rerouter_session=forged")).response.status_code == 401

    async def test_wrong_login(self, guarded):
        f = reverse_flow("/login")
        f.request.urlencoded_form = [("token", "guess")]
        await guarded.request(f)
        assert f.response.status_code == 401 and "set-cookie" not in f.response.headers

    async def test_proxied_traffic_is_unaffected(self, guarded):
        f = await ask(guarded, "/v1/chat/completions", method="POST", authorization="Bearer sk-upstream-key")
        assert f.response is None
        assert f.request.headers["authorization"] == "Bearer sk-upstream-key"


@pytest.mark.parametrize(
    "path",
    ["/v1/../api/logs", "//api/logs", "/api%2Flogs", "/api/logs/", "/api/logs/../stats", "/API/LOGS", "/api/logs/a/b", "/api/stats/", "/./api/stats", "/dashboard/../api/stats", "/login"],
)
async def test_crafted_paths_are_not_local(logged, path):
    tctx, s, log, dash = logged
    assert (await ask(dash, path)).response is None


@pytest.mark.parametrize(
    "host, token, warned",
    [("0.0.0.0", "", True), ("192.168.1.5", "", True), ("", "", True), ("0.0.0.0", "t" * 16, False), ("127.0.0.1", "", False), ("::1", "", False), ("localhost", "", False)],
)
def test_exposure_warning(settings_env, tmp_path, caplog, host, token, warned):
    with dashboard_addons(settings_env, tmp_path, LISTEN_HOST=host, DASHBOARD_TOKEN=token) as dash:
        dash.running()
    assert ("DASHBOARD_TOKEN" in caplog.text) == warned
