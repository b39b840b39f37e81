"""
Think stripping on responses: plain JSON answers in `response`, live streams in `responseheaders`.
"""

from mitmproxy import http

from rerouter.flows import annotate
from rerouter.flows import flow_state
from rerouter.flows import json_object
from rerouter.flows import media_type
from rerouter.flows import set_json
from rerouter.framing import EventStream
from rerouter.framing import supports_encoding
from rerouter.settings import Settings
from rerouter.thinking import OllamaChunkEditor
from rerouter.thinking import OpenAIChunkEditor
from rerouter.thinking import may_hold_reasoning
from rerouter.thinking import strip_response

SSE = "text/event-stream"
NDJSON = "application/x-ndjson"


class ThinkStrip:
    """
    Event streams are always streamed, never buffered (mitmproxy would hold an
    SSE answer until it ends); with STRIP_THINKING on, each event is edited on
    the way through, and a stream that has a meter (see Figures) is framed for it.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.streams: dict[str, EventStream] = {}  # by flow id: other addons may wrap response.stream

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        response = flow.response
        if response is None:
            return
        kind = media_type(response)
        if kind not in (SSE, NDJSON):
            return
        encoding = response.headers.get("content-encoding")
        strip, meter = self.settings.strip_thinking, flow_state(flow).meter
        if not (strip or meter) or not supports_encoding(encoding):
            response.stream = True
            return
        if kind == SSE:
            stream = EventStream.sse(OpenAIChunkEditor() if strip else None, encoding, meter)
        else:
            stream = EventStream.ndjson(OllamaChunkEditor() if strip else None, encoding, meter)
        response.stream = self.streams[flow.id] = stream
        # the body's length changes and it leaves decoded
        response.headers.pop("content-length", None)
        response.headers.pop("content-encoding", None)
        if response.http_version == "HTTP/1.1":
            response.headers["transfer-encoding"] = "chunked"

    def response(self, flow: http.HTTPFlow) -> None:
        response = flow.response
        stream = self.streams.pop(flow.id, None)
        if stream is not None:
            if stream.stripped:
                annotate(flow, "thinking stripped")
            return
        if response is None or response.stream or not self.settings.strip_thinking:
            return
        if (
            flow.request.method != "POST"
            or not 200 <= response.status_code < 300
            or media_type(response) != "application/json"
            or not may_hold_reasoning(response.get_content(strict=False) or b"")
        ):
            return
        body = json_object(response)
        if body is not None and strip_response(body):
            set_json(response, body)
            annotate(flow, "thinking stripped")

    def error(self, flow: http.HTTPFlow) -> None:
        self.streams.pop(flow.id, None)
