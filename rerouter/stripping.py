"""
Reasoning on responses: plain JSON answers in `response`, live streams in `responseheaders`.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field

from mitmproxy import http

from rerouter.flows import annotate
from rerouter.flows import decoded
from rerouter.flows import flow_state
from rerouter.flows import json_object
from rerouter.flows import media_type
from rerouter.flows import note
from rerouter.flows import quick_call
from rerouter.flows import set_json
from rerouter.framing import EventStream
from rerouter.framing import supports_encoding
from rerouter.settings import Settings
from rerouter.thinking import ChunkEditor
from rerouter.thinking import Findings
from rerouter.thinking import OllamaChunkEditor
from rerouter.thinking import OpenAIChunkEditor
from rerouter.thinking import Reasoning
from rerouter.thinking import answer_model
from rerouter.thinking import edit_answer
from rerouter.thinking import may_hold_reasoning

SSE = "text/event-stream"
NDJSON = "application/x-ndjson"
KEEPALIVE_COMMENT = b": keep-alive\n\n"
EDITED = {Reasoning.DROP: "thinking stripped", Reasoning.SEPARATE: "thinking separated"}


class KeepAlive:
    """
    An SSE stream's callable that sends a comment when reads keep arriving but
    nothing has gone to the client for `seconds`, as while reasoning is withheld,
    so that idle timeouts of proxies and clients do not cut the stream.

    mitmproxy calls it only when upstream data arrives, and a reasoning model's
    tokens keep arriving, so no timer of its own is needed. The quiet is timed
    from the first read that sent nothing, so a read that sends something costs
    no clock reading.
    """

    def __init__(self, stream: EventStream, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream
        self._pass_on = quick_call(stream)
        self.seconds = seconds
        self._clock = clock
        self._quiet_since: float | None = None

    def __call__(self, data: bytes) -> list[bytes]:
        output = self._pass_on(data)
        if output or not data or not self.stream.editing:
            self._quiet_since = None
            return output
        now = self._clock()
        if self._quiet_since is None:
            self._quiet_since = now
        elif now - self._quiet_since >= self.seconds:
            # an edited stream's output ends at an event boundary, where a comment may go
            self._quiet_since = now
            return [KEEPALIVE_COMMENT]
        return output


@dataclass
class Answer:
    """How a non-streamed answer was edited, the way a stream's editor tells it."""

    reasoning: Reasoning
    echo: str | None
    findings: Findings = field(default_factory=Findings)


class ThinkStrip:
    """
    Event streams are always streamed, never buffered (mitmproxy would hold an
    SSE answer until it ends); with STRIP_THINKING or ECHO_REQUESTED_MODEL on,
    each event is edited on the way through, and a stream that has a meter (see
    Figures) is framed for it.
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
        reasoning, open_start, echo = self._treatment(flow)
        edits, meter = bool(reasoning or echo), flow_state(flow).meter
        if not (edits or meter) or not supports_encoding(encoding):
            response.stream = True
            return
        if kind == SSE:
            stream = EventStream.sse(OpenAIChunkEditor(reasoning, open_start, echo) if edits else None, encoding, meter)
        else:
            stream = EventStream.ndjson(OllamaChunkEditor(reasoning, open_start, echo) if edits else None, encoding, meter)
        self.streams[flow.id] = stream
        seconds = self.settings.think_keepalive_seconds
        response.stream = KeepAlive(stream, seconds) if kind == SSE and seconds and edits else stream
        # the body's length changes and it leaves decoded
        response.headers.pop("content-length", None)
        response.headers.pop("content-encoding", None)
        if response.http_version == "HTTP/1.1":
            response.headers["transfer-encoding"] = "chunked"

    def response(self, flow: http.HTTPFlow) -> None:
        response = flow.response
        stream = self.streams.pop(flow.id, None)
        if stream is not None:
            self._report_stream(flow, stream)
            return
        if (
            response is None
            or response.stream
            or flow.request.method != "POST"
            or not 200 <= response.status_code < 300
            or media_type(response) != "application/json"
        ):
            return
        reasoning, open_start, echo = self._treatment(flow)
        if not (reasoning or echo):
            return  # the proxy leaves answers alone
        answer = Answer(reasoning, echo)
        content = decoded(response) or b""
        answer.findings.model = answer_model(content)
        if echo or (reasoning and may_hold_reasoning(content)):
            body = json_object(response)
            if body is not None and edit_answer(body, reasoning, open_start, echo, answer.findings):
                set_json(response, body)
        self._report(flow, answer)

    def error(self, flow: http.HTTPFlow) -> None:
        stream = self.streams.pop(flow.id, None)
        if stream is not None:
            self._report_stream(flow, stream)

    def _report_stream(self, flow: http.HTTPFlow, stream: EventStream) -> None:
        if stream.editor is not None:
            self._report(flow, stream.editor)
        if stream.note:
            note(flow, stream.note)

    def _treatment(self, flow: http.HTTPFlow) -> tuple[Reasoning, bool, str | None]:
        """What this flow's answer gets: the reasoning mode, whether it starts inside a think block, the name to echo."""
        record = flow_state(flow)
        open_start = self.settings.think_open_models.matches(record.routed_model)
        rewritten = record.requested_model is not None and record.requested_model != record.routed_model
        echo = record.requested_model if self.settings.echo_requested_model and rewritten else None
        return self.settings.strip_thinking, open_start, echo

    @staticmethod
    def _report(flow: http.HTTPFlow, answer: Answer | ChunkEditor) -> None:
        """What editing the answer found, into the flow's record (for its row) and its comment (for mitmweb)."""
        findings = answer.findings
        record = flow_state(flow)
        record.reasoning_chars = findings.reasoning_chars
        record.lone_think_close = findings.lone_close
        record.response_model = findings.model
        record.reasoned_anyway = bool(record.thinking_switches) and findings.reasoned
        if findings.edited:
            annotate(flow, EDITED[answer.reasoning])
        if findings.lone_close:
            annotate(flow, "lone </think>: the model starts inside a think block")
        if record.reasoned_anyway:
            annotate(flow, "reasoned although thinking was off")
        if answer.echo is not None and findings.model not in (None, answer.echo):
            annotate(flow, f"answer's model: {findings.model} -> {answer.echo}")
