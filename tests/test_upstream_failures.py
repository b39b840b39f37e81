import json

import pytest
from mitmproxy import flow as mflow
from mitmproxy import http
from mitmproxy.proxy.layers.http import _http1
from mitmproxy.test import taddons

from rerouter.flows import flow_state
from rerouter.settings import Settings
from rerouter.upstream_failures import CLIENT_GONE
from rerouter.upstream_failures import UpstreamFailures
from rerouter.upstream_failures import install_error_answers
from tests.helpers import reverse_flow
from tests.helpers import start
from tests.helpers import wait_for_async


@pytest.fixture
def failures(settings_env):
    settings_env.setenv("REQUEST_TIMEOUT", "30")
    s = Settings()
    u = UpstreamFailures(s)
    with taddons.context(s, u) as tctx:
        start(tctx, s)
        yield tctx, s, u


def failed(path: str, message: str) -> http.HTTPFlow:
    f = reverse_flow(path)
    f.error = mflow.Error(message)
    return f


def page(status: int, message: str) -> tuple[int, dict, bytes]:
    """What mitmproxy's HTTP/1 layer would send the client for this failure."""
    head, _, body = _http1.make_error_response(status, message).partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


def test_installs_on_this_mitmproxy():
    assert install_error_answers()
    assert install_error_answers(), "installing twice is harmless"


def test_openai_failure_becomes_json(failures):
    tctx, s, u = failures
    f = failed("/v1/chat/completions", "[Errno 111] Connect call failed ('127.0.0.1', 9)")
    u.error(f)
    status, headers, body = page(502, f.error.msg)
    assert status == 502
    assert headers["content-type"] == "application/json"
    error = json.loads(body)["error"]
    assert error["code"] == "upstream_unavailable"
    assert "Connect call failed" in error["message"]


def test_ollama_failure_has_ollamas_shape(failures):
    tctx, s, u = failures
    f = failed("/api/chat", "peer closed connection")
    u.error(f)
    assert json.loads(page(502, f.error.msg)[2]) == {"error": "upstream 127.0.0.1:8000 failed: peer closed connection"}


def test_timeout_is_504(failures):
    tctx, s, u = failures
    f = failed("/v1/completions", "Server disconnected.")
    flow_state(f).timed_out = True
    u.error(f)
    status, _, body = page(502, f.error.msg)
    assert status == 504
    assert json.loads(body)["error"]["code"] == "upstream_timeout"


def test_answer_belongs_to_its_own_failure_only(failures):
    tctx, s, u = failures
    f = failed("/v1/chat/completions", "connection refused")
    u.error(f)
    same_text = "".join(["connection ", "refused"])
    assert page(502, same_text)[1]["content-type"] == "text/html", "another flow's equal message keeps the HTML page"
    assert page(502, f.error.msg)[0] == 502
    assert page(502, f.error.msg)[1]["content-type"] == "text/html", "an answer is sent once"


@pytest.mark.parametrize("message", [CLIENT_GONE])
def test_client_gone_needs_no_answer(failures, message):
    tctx, s, u = failures
    f = failed("/v1/chat/completions", message)
    u.error(f)
    assert page(502, f.error.msg)[1]["content-type"] == "text/html"


def test_failure_after_response_started_is_left_alone(failures):
    tctx, s, u = failures
    f = failed("/v1/chat/completions", "peer closed connection mid-stream")
    f.response = http.Response.make(200)
    u.error(f)
    assert page(502, f.error.msg)[1]["content-type"] == "text/html"


async def test_timer_runs_until_response_headers(failures):
    tctx, s, u = failures
    f = reverse_flow()
    u.request(f)
    assert f.id in u.timers
    u.responseheaders(f)
    assert f.id not in u.timers


async def test_expiry_marks_the_flow(failures, caplog):
    tctx, s, u = failures
    tctx.configure(s, request_timeout="0.05")
    f = reverse_flow()
    u.request(f)
    assert await wait_for_async(lambda: flow_state(f).timed_out) is True
    assert "cannot close the upstream connection" in caplog.text, "no live connection in a unit test"


async def test_locally_answered_flows_get_no_timer(failures):
    tctx, s, u = failures
    f = reverse_flow()
    f.response = http.Response.make(200)
    u.request(f)
    assert not u.timers
