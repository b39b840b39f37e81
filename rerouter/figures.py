"""
The figures in each request's row: how long the upstream took to answer, when the first token
came and reached the client, how many tokens were used, and how fast they were generated.
"""

from mitmproxy import http

from rerouter.flows import flow_state
from rerouter.flows import media_type
from rerouter.meter import StreamMeter
from rerouter.meter import read_usage
from rerouter.settings import Settings

STREAMS = ("text/event-stream", "application/x-ndjson")


class Figures:
    """
    Sets up a StreamMeter for each streamed answer, which ThinkStrip's EventStream
    feeds, and reads the token counts of plain answers. Only the log reads the
    figures, so without it nothing is measured.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        response = flow.response
        if response is None or not self.settings.enable_logging:
            return
        request = flow.request
        state = flow_state(flow)
        if response.timestamp_start is not None and request.timestamp_end is not None:
            state.upstream_ms = round((response.timestamp_start - request.timestamp_end) * 1000, 1)
        if media_type(response) in STREAMS:
            state.meter = StreamMeter(state, request.timestamp_start, drop_usage=state.usage_requested)

    def response(self, flow: http.HTTPFlow) -> None:
        response = flow.response
        if (
            response is None
            or response.stream
            or not self.settings.enable_logging
            or flow.request.method != "POST"
            or media_type(response) != "application/json"
        ):
            return
        state = flow_state(flow)
        state.prompt_tokens, state.completion_tokens = read_usage(response.get_content(strict=False) or b"")
