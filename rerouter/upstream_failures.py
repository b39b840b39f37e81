"""
Upstream failures as JSON answers: 502 when the upstream fails, 504 when it is too slow.

mitmproxy has no timeout for an upstream's response headers, and it answers a
failed upstream exchange with its own HTML page, written after the `error`
hook with no public way to replace it. The two small functions at the end of
this module are the only places where the rerouter touches mitmproxy
internals; both are checked on mitmproxy 11 and 12 by the tests, and both fall
back cleanly: without them the client gets mitmproxy's HTML 502 and waits for
a slow upstream as long as mitmproxy does.
"""

import asyncio
import json
import logging
from collections import OrderedDict

from mitmproxy import ctx
from mitmproxy import http
from mitmproxy.net.http import http1

from rerouter.flows import is_proxied
from rerouter.flows import flow_state
from rerouter.routing import is_ollama_path
from rerouter.settings import Settings

logger = logging.getLogger(__name__)

CLIENT_GONE = "Client disconnected."


def error_body(path: str, status: int, message: str) -> bytes:
    """The API family's own error shape, so clients show the message instead of a parse error."""
    if is_ollama_path(path):
        return json.dumps({"error": message}).encode()
    code = "upstream_timeout" if status == 504 else "upstream_unavailable"
    return json.dumps({"error": {"message": message, "type": "upstream_error", "code": code}}).encode()


class UpstreamFailures:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.timers: dict[str, asyncio.TimerHandle] = {}
        self.answers_json = install_error_answers()
        if not self.answers_json:
            logger.warning("this mitmproxy has no hook point for JSON error answers; failed upstreams get HTML")

    def request(self, flow: http.HTTPFlow) -> None:
        if is_proxied(flow):
            loop = asyncio.get_running_loop()
            self.timers[flow.id] = loop.call_later(self.settings.request_timeout, self._expire, flow)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        self._cancel(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._cancel(flow)
        if flow.response is not None or flow.error is None or flow.error.msg == CLIENT_GONE:
            return
        if flow_state(flow).timed_out:
            status = 504
            message = f"upstream {flow.request.host}:{flow.request.port} sent no response headers within {self.settings.request_timeout:g} s"
        else:
            status = 502
            message = f"upstream {flow.request.host}:{flow.request.port} failed: {flow.error.msg}"
        flow_state(flow).answered_status = status
        answer = http.Response.make(
            status,
            error_body(flow.request.path, status, message),
            {"Content-Type": "application/json", "Connection": "close"},
        )
        answer_error_with(flow, answer)

    def done(self) -> None:
        for timer in self.timers.values():
            timer.cancel()
        self.timers.clear()

    def _cancel(self, flow: http.HTTPFlow) -> None:
        timer = self.timers.pop(flow.id, None)
        if timer is not None:
            timer.cancel()

    def _expire(self, flow: http.HTTPFlow) -> None:
        self.timers.pop(flow.id, None)
        if flow.live and flow.response is None and flow.error is None:
            flow_state(flow).timed_out = True
            if not close_upstream(flow):
                logger.warning("cannot close the upstream connection of a timed-out request on this mitmproxy")


# ---- mitmproxy internals, isolated -------------------------------------------------------------

_pending: OrderedDict[int, tuple[str, bytes]] = OrderedDict()
_PENDING_LIMIT = 1024


def install_error_answers() -> bool:
    """
    Let `answer_error_with` replace mitmproxy's HTML error page for HTTP/1 clients.

    mitmproxy writes the page with `_http1.make_error_response(code, message)`,
    where `message` is the very string object it also put in `flow.error.msg`;
    an answer registered under that object's identity is sent instead. HTTP/2
    clients keep mitmproxy's page.
    """
    try:
        from mitmproxy.proxy.layers.http import _http1
    except ImportError:
        return False
    original = getattr(_http1, "make_error_response", None)
    if original is None:
        return False
    if getattr(original, "rerouter_original", None) is not None:
        return True

    def make_error_response(status_code: int, message: str = "") -> bytes:
        entry = _pending.pop(id(message), None)
        if entry is not None and entry[0] is message:
            return entry[1]
        return original(status_code, message)

    make_error_response.rerouter_original = original  # type: ignore[attr-defined]
    _http1.make_error_response = make_error_response
    return True


def answer_error_with(flow: http.HTTPFlow, response: http.Response) -> None:
    assert flow.error is not None
    _pending[id(flow.error.msg)] = (flow.error.msg, http1.assemble_response(response))
    while len(_pending) > _PENDING_LIMIT:  # answers never sent (the client left first) must not pile up
        _pending.popitem(last=False)


def close_upstream(flow: http.HTTPFlow) -> bool:
    """
    Close the flow's upstream connection, as if the upstream had hung up.

    mitmproxy then runs its usual failure path (`error` hook, error answer to the
    client), which is how a request past REQUEST_TIMEOUT gets its 504.
    """
    try:
        handler = ctx.master.addons.get("proxyserver").connections[flow.client_conn.id]
        writer = handler.transports[flow.server_conn].writer
    except (AttributeError, KeyError):
        return False
    if writer is None:
        return False
    writer.close()
    return True
