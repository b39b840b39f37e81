"""
What mitmdump prints about each flow: no secrets at its default detail.

mitmdump prints a flow's line (method, URL, status) once it is answered or
failed, after the rerouter's own hooks. By then the request has gone upstream,
so the values of secret query parameters (`?key=...`) are masked in the flow
itself, for the printed line and for mitmweb's list. More detail (`-v`,
flow_detail 2 and up) prints headers and bodies as they are, so it gets a
warning at startup instead.
"""

import logging

from mitmproxy import ctx
from mitmproxy import http

from rerouter.redaction import redact_path

logger = logging.getLogger(__name__)

HEADERS_DETAIL = 2


class PrintedSecrets:
    def running(self) -> None:
        if "flow_detail" in ctx.options and ctx.options.flow_detail >= HEADERS_DETAIL:
            logger.warning(
                f"flow_detail {ctx.options.flow_detail} (-v) prints request headers and bodies as they are: "
                "API keys, the dashboard token and its session cookie, prompts. Use it for debugging only."
            )

    def response(self, flow: http.HTTPFlow) -> None:
        self._mask(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._mask(flow)

    @staticmethod
    def _mask(flow: http.HTTPFlow) -> None:
        if flow.request is not None and "?" in flow.request.path:
            flow.request.path = redact_path(flow.request.path)
