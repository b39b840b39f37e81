"""
The figures in each request's row: how long the upstream took to answer, when the first token
came and reached the client, how many tokens were used, and how fast they were generated.
"""

from mitmproxy import http

from rerouter.flows import FlowState
from rerouter.flows import decoded
from rerouter.flows import flow_state
from rerouter.flows import media_type
from rerouter.meter import OLLAMA_COUNTS
from rerouter.meter import OPENAI_COUNTS
from rerouter.meter import StreamMeter
from rerouter.meter import read_usage
from rerouter.settings import Settings

STREAMS = {"text/event-stream": OPENAI_COUNTS, "application/x-ndjson": OLLAMA_COUNTS}
"""The streams a meter watches, with the count keys each carries: OpenAI's in SSE, Ollama's in NDJSON."""
METERED = ("upstream_first_token_ms", "first_token_ms", "prompt_tokens", "completion_tokens", "tokens_per_s")


class Figures:
    """
    Sets up a StreamMeter for each streamed answer, which ThinkStrip's EventStream
    feeds, and takes its figures when the flow ends; reads the token counts of
    plain answers. Only the log and /metrics, served with it, read the figures, so
    without the log nothing is measured.
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
        kind = media_type(response)
        if kind in STREAMS:
            state.meter = StreamMeter(request.timestamp_start, state.usage_requested, STREAMS[kind])

    def response(self, flow: http.HTTPFlow) -> None:
        response = flow.response
        state = flow_state(flow)
        if state.meter is not None:
            self._take_figures(state)
        elif (
            response is not None
            and not response.stream
            and self.settings.enable_logging
            and flow.request.method == "POST"
            and media_type(response) == "application/json"
        ):
            state.prompt_tokens, state.completion_tokens = read_usage(decoded(response) or b"")

    def error(self, flow: http.HTTPFlow) -> None:
        state = flow_state(flow)
        if state.meter is not None:
            self._take_figures(state)

    @staticmethod
    def _take_figures(state: FlowState) -> None:
        """The meter's figures into the row; the meter goes, with the recent reads it holds."""
        for name in METERED:
            setattr(state, name, getattr(state.meter, name))
        state.meter = None
