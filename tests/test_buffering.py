import gc
import gzip
import json
import weakref
import zlib

import pytest
from mitmproxy import http
from mitmproxy.addons.view import View
from mitmproxy.test import taddons

from rerouter.buffering import RECLAIM_BYTES
from rerouter.buffering import Buffering
from rerouter.buffering import Reclaim
from rerouter.buffering import may_be_json
from rerouter.flows import EDIT_LIMIT
from rerouter.flows import flow_state
from rerouter.flows import json_object
from rerouter.requestlog import DeliveredStream
from rerouter.requestlog import RequestLog
from rerouter.routing import reverse_defaults
from rerouter.settings import Settings
from tests.conftest import dashboard_addons
from tests.conftest import json_response
from tests.conftest import reverse_flow
from tests.test_requestlog import logged  # noqa: F401 (a fixture)
from tests.test_requestlog import stored

MIB = 1024 * 1024


def gzip_bomb(prefix: bytes, size: int) -> bytes:
    compressor = zlib.compressobj(9, wbits=31)
    parts = [compressor.compress(prefix)]
    parts += [compressor.compress(b"a" * MIB) for _ in range(size // MIB)]
    return b"".join(parts) + compressor.flush()


def with_type(flow: http.HTTPFlow, content_type: str | None, message: str = "request") -> http.HTTPFlow:
    headers = getattr(flow, message).headers
    headers.pop("content-type", None)
    if content_type is not None:
        headers["content-type"] = content_type
    return flow


@pytest.mark.parametrize(
    "content_type, expected",
    [
        (None, True),
        ("application/json", True),
        ("application/json; charset=utf-8", True),
        ("application/vnd.api+json", True),
        ("application/x-www-form-urlencoded", True),  # curl -d
        ("text/plain", True),
        ("application/octet-stream", False),
        ("multipart/form-data; boundary=x", False),
        ("audio/mpeg", False),
        ("image/png", False),
        ("text/event-stream", False),
    ],
)
def test_may_be_json(content_type, expected):
    assert may_be_json(with_type(reverse_flow(), content_type).request) is expected


@pytest.fixture
def dash(settings_env, tmp_path):
    with dashboard_addons(settings_env, tmp_path, DASHBOARD_TOKEN="s3cret-token-for-tests") as dash:
        yield dash


@pytest.fixture
def buffering(dash):
    return Buffering(dash.answers)


class TestRequests:
    def test_a_body_the_proxy_never_edits_streams(self, buffering):
        flow = with_type(reverse_flow("/v1/files", content=b"\x00binary"), "application/octet-stream")
        buffering.requestheaders(flow)
        assert flow.request.stream is True

    def test_json_is_held_to_be_edited(self, buffering):
        flow = reverse_flow(body={"model": "gpt-4"})
        buffering.requestheaders(flow)
        assert not flow.request.stream

    def test_a_stream_already_chosen_is_kept(self, buffering):
        flow = reverse_flow(body={"model": "gpt-4"})
        flow.request.stream = True  # mitmproxy's stream_large_bodies: Content-Length past EDIT_LIMIT
        buffering.requestheaders(flow)
        assert flow.request.stream is True

    @pytest.mark.parametrize("path, method", [("/api/logs", "GET"), ("/login", "POST"), ("/api/logs/abc?x=1", "GET")])
    def test_a_local_route_is_never_streamed_upstream(self, buffering, path, method):
        chunked = with_type(reverse_flow(path, method=method, content=b"x"), "application/octet-stream")
        chunked.request.headers["transfer-encoding"] = "chunked"
        buffering.requestheaders(chunked)
        assert chunked.error is not None and chunked.error.msg == "Connection killed."
        huge = reverse_flow(path, method=method, content=b"x")
        huge.request.stream = True
        buffering.requestheaders(huge)
        assert huge.error is not None
        small = with_type(reverse_flow(path, method=method, content=b"x"), "application/octet-stream")
        buffering.requestheaders(small)
        assert small.error is None and not small.request.stream, "held, for the dashboard to answer"

    def test_what_the_dashboard_does_not_answer_may_stream(self, buffering):
        flow = with_type(reverse_flow("/api/logs", method="POST", content=b"x"), "application/octet-stream")
        buffering.requestheaders(flow)
        assert flow.error is None and flow.request.stream is True


@pytest.mark.parametrize(
    "env, method, path, answers",
    [
        ({}, "GET", "/api/logs?limit=1", True),
        ({}, "GET", "/", True),
        ({}, "POST", "/api/logs", False),
        ({}, "GET", "/v1/models", False),
        ({}, "POST", "/login", False),
        ({"DASHBOARD_TOKEN": "s3cret-token-for-tests"}, "POST", "/login", True),
        ({"ENABLE_LOGGING": "false"}, "GET", "/api/logs", False),
    ],
)
def test_the_dashboard_says_which_requests_it_answers(settings_env, tmp_path, env, method, path, answers):
    with dashboard_addons(settings_env, tmp_path, **env) as dash:
        assert dash.answers(reverse_flow(path, method=method).request) is answers

    def test_a_streamed_json_body_is_noted(self, buffering):
        flow = reverse_flow(body={"model": "gpt-4"})
        flow.request.stream = True
        flow.request.data.content = None
        buffering.request(flow)
        assert flow_state(flow).note == "request body over 16 MiB: passed on as it came"

    def test_a_compressed_body_past_the_limit_is_noted_and_not_decoded(self, buffering):
        flow = reverse_flow(content=gzip_bomb(b'{"model": "gpt-4", "x": "', EDIT_LIMIT + MIB))
        flow.request.headers["content-encoding"] = "gzip"
        buffering.request(flow)
        assert flow_state(flow).note == "request body not decoded (corrupt, or over 16 MiB decoded): passed on as it came"
        assert json_object(flow.request) is None

    def test_a_compressed_body_within_the_limit_is_read(self, buffering):
        flow = reverse_flow(content=gzip.compress(json.dumps({"model": "gpt-4"}).encode()))
        flow.request.headers["content-encoding"] = "gzip"
        buffering.request(flow)
        assert flow_state(flow).note is None
        assert json_object(flow.request) == {"model": "gpt-4"}


class TestResponses:
    def test_a_binary_answer_streams(self, buffering):
        flow = reverse_flow("/v1/files/f/content", method="GET")
        flow.response = http.Response.make(200, b"", {"content-type": "application/octet-stream"})
        buffering.responseheaders(flow)
        assert flow.response.stream is True

    def test_a_json_answer_is_held(self, buffering):
        flow = reverse_flow()
        flow.response = json_response({"choices": []})
        buffering.responseheaders(flow)
        assert not flow.response.stream

    def test_another_addons_stream_is_kept(self, buffering):
        flow = reverse_flow()
        flow.response = http.Response.make(200, b"", {"content-type": "text/event-stream"})
        flow.response.stream = editor = lambda data: [data]
        buffering.responseheaders(flow)
        assert flow.response.stream is editor

    def test_a_local_answer_is_left_alone(self, buffering):
        flow = reverse_flow("/", method="GET")
        flow_state(flow).local = True
        flow.response = http.Response.make(200, b"<html>", {"content-type": "text/html"})
        buffering.responseheaders(flow)
        assert not flow.response.stream

    def test_a_compressed_answer_past_the_limit_is_noted(self, buffering):
        flow = reverse_flow()
        flow.response = http.Response.make(200, b"", {"content-type": "application/json", "content-encoding": "gzip"})
        flow.response.raw_content = gzip_bomb(b'{"choices": "', EDIT_LIMIT + MIB)
        buffering.response(flow)
        assert flow_state(flow).note == "answer not decoded (corrupt, or over 16 MiB decoded): passed on as it came"


class Cycle:
    """Garbage only the collector's full pass frees, like a finished flow in mitmproxy's HTTP layer."""

    def __init__(self) -> None:
        self.me = self


def test_reclaim_frees_finished_flows_once_enough_bytes_finished():
    reclaim = Reclaim()
    with taddons.context(reclaim):
        reclaim.running()  # freezes what lives now: a full pass later skips it
        garbage = Cycle()
        alive = weakref.ref(garbage)
        del garbage
        try:
            small = reverse_flow(content=b"x" * 100)
            small.response = json_response({})
            reclaim.response(small)
            reclaim.requestheaders(reverse_flow())
            assert alive() is not None, "no pass for a few bytes"
            big = reverse_flow(content=b"x" * RECLAIM_BYTES)
            reclaim.error(big)
            reclaim.requestheaders(reverse_flow())
            assert alive() is None
            assert reclaim.finished_bytes == 0
        finally:
            gc.unfreeze()


def test_reclaim_leaves_mitmweb_alone():
    """Its flow list keeps every flow: a full pass would only scan them all."""
    reclaim = Reclaim()
    with taddons.context(reclaim, View()):
        reclaim.running()
        assert not reclaim.enabled and gc.get_freeze_count() == 0


def test_json_past_the_edit_limit_streams_by_default():
    assert reverse_defaults(Settings(), lambda option: False)["stream_large_bodies"] == str(EDIT_LIMIT)
    assert "stream_large_bodies" not in reverse_defaults(Settings(), lambda option: option == "stream_large_bodies")


@pytest.fixture
def small_cap(settings_env):
    settings_env.setenv("LOG_MAX_BODY_BYTES", "1000")


@pytest.fixture
def log(small_cap, logged) -> RequestLog:
    return logged[2]


class TestLoggedBodies:
    def test_a_gzip_bomb_is_logged_cut_without_inflating_it(self, log):
        raw = gzip_bomb(b'{"model": "gpt-4", "x": "', 64 * MIB)
        flow = reverse_flow(content=raw)
        flow.request.headers["content-encoding"] = "gzip"
        log.request(flow)
        flow.response = http.Response.make(200, b"", {"content-type": "application/json", "content-encoding": "gzip"})
        flow.response.raw_content = raw
        log.responseheaders(flow)
        log.response(flow)
        row = stored(log, flow.id)
        cut = '{"model": "gpt-4", "x": "' + "a" * 975 + f"\n…[truncated: {len(raw)} bytes in total]"
        assert row["request_body"] == row["response_body"] == cut
        assert row["request_bytes"] == row["response_bytes"] == len(raw)

    def test_a_streamed_request_is_logged_from_what_passed(self, log):
        flow = with_type(reverse_flow("/v1/files", content=None), "application/octet-stream")
        flow.request.stream = True
        log.requestheaders(flow)
        assert isinstance(flow.request.stream, DeliveredStream)
        for _ in range(3):
            assert flow.request.stream(b"\x01" * 700) == [b"\x01" * 700]
        flow.request.data.content = None
        log.request(flow)
        flow.response = json_response({"id": "file-1"})
        log.response(flow)
        row = stored(log, flow.id)
        assert row["request_bytes"] == 2100
        assert row["request_body"] == "\x01" * 1000 + "\n…[truncated: 2100 bytes in total]"

    def test_a_compressed_streamed_answer_is_logged_decoded(self, log):
        flow = reverse_flow("/v1/files/f/content", method="GET")
        log.request(flow)
        raw = gzip.compress(b"z" * 5000)
        flow.response = http.Response.make(200, b"", {"content-type": "text/csv", "content-encoding": "gzip"})
        flow.response.stream = True
        log.responseheaders(flow)
        flow.response.stream(raw)
        flow.response.data.content = None
        log.response(flow)
        row = stored(log, flow.id)
        # the total is the size on the wire, and at least the cut when that is smaller
        assert row["response_body"] == "z" * 1000 + "\n…[truncated: 1001 bytes in total]"
        assert row["response_bytes"] == len(raw)
