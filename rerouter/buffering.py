"""
Which bodies the proxy holds in memory: only those it may edit, and those only up to EDIT_LIMIT.

mitmproxy reads a whole body before the `request` and `response` hooks unless it is
streamed. The rerouter needs whole bodies only to edit JSON (the model in a request,
reasoning in an answer, aliases in a model list); an upload, an audio answer or a file
download streams through as it comes, and the log keeps its first LOG_MAX_BODY_BYTES on
the way. A JSON body bigger than EDIT_LIMIT streams too: mitmproxy's own
`stream_large_bodies`, which the rerouter sets to EDIT_LIMIT unless the user gave it,
switches to streaming from where the body got to.
"""

import gc
import logging
from collections.abc import Callable

from mitmproxy import ctx
from mitmproxy import http

from rerouter.flows import EDIT_LIMIT
from rerouter.flows import decoded
from rerouter.flows import flow_state
from rerouter.flows import is_proxied
from rerouter.flows import media_type
from rerouter.flows import note
from rerouter.redaction import redact_path

logger = logging.getLogger(__name__)

# what JSON arrives as: curl -d sends form-encoded, some clients text/plain or no type at all
JSON_TYPES = frozenset({"", "application/json", "text/json", "text/plain", "application/x-www-form-urlencoded"})
RECLAIM_BYTES = 4 * 1024 * 1024
"""Buffered body bytes of finished flows after which the next flow starts with a full garbage collection."""


def may_be_json(message: http.Message) -> bool:
    kind = media_type(message)
    return kind in JSON_TYPES or kind.endswith("+json")


class Buffering:
    def __init__(self, is_local: Callable[[http.Request], bool]) -> None:
        self.is_local = is_local  # whether the proxy answers a request itself

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if not is_proxied(flow):
            return
        request = flow.request
        if self.is_local(request):
            # a streamed body would open the upstream connection before the dashboard could answer
            if request.stream or "transfer-encoding" in request.headers:
                logger.warning(f"{request.method} {redact_path(request.path)}: refused, a local route takes no body of that size")
                flow.kill()
            return
        if not request.stream and not may_be_json(request):
            request.stream = True

    def request(self, flow: http.HTTPFlow) -> None:
        if is_proxied(flow) and may_be_json(flow.request):
            self._note_unread(flow, flow.request, "request body")

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        response = flow.response
        if response is not None and not response.stream and not flow_state(flow).local and not may_be_json(response):
            response.stream = True

    def response(self, flow: http.HTTPFlow) -> None:
        response = flow.response
        if response is not None and not flow_state(flow).local and may_be_json(response):
            self._note_unread(flow, response, "answer")

    @staticmethod
    def _note_unread(flow: http.HTTPFlow, message: http.Message, what: str) -> None:
        """A JSON body too big to read (or compressed past the limit) is passed on unedited: say so."""
        if message.stream:
            text = f"{what} over {EDIT_LIMIT >> 20} MiB: passed on as it came"
        elif message.raw_content and message.headers.get("content-encoding") and decoded(message) is None:
            text = f"{what} not decoded (corrupt, or over {EDIT_LIMIT >> 20} MiB decoded): passed on as it came"
        else:
            return
        note(flow, text)
        logger.warning(f"{flow.request.method} {redact_path(flow.request.path)}: {text}")


class Reclaim:
    """
    Frees the buffered bodies of finished flows soon after they finish.

    mitmproxy's HTTP layer keeps each flow in a reference cycle that only the garbage
    collector's full pass frees, and that pass comes rarely: bare mitmdump held 83 MB
    after 30 finished requests of 8 MiB. The objects alive at startup are frozen out of
    the collector (a full pass then takes well under a millisecond), and one runs as a
    flow starts once RECLAIM_BYTES of buffered bodies have finished since the last.
    In mitmweb the flow list keeps every flow anyway, so there is nothing to reclaim.
    """

    def __init__(self) -> None:
        self.finished_bytes = 0
        self.enabled = False

    def running(self) -> None:
        self.enabled = ctx.master.addons.get("view") is None
        if self.enabled:
            gc.freeze()

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if self.enabled and self.finished_bytes >= RECLAIM_BYTES:
            self.finished_bytes = 0
            gc.collect()

    def response(self, flow: http.HTTPFlow) -> None:
        self._finished(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._finished(flow)

    def _finished(self, flow: http.HTTPFlow) -> None:
        for message in (flow.request, flow.response):
            if message is not None and message.raw_content:
                self.finished_bytes += len(message.raw_content)
