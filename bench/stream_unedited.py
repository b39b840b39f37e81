"""
Loaded into bare mitmdump by bench/run.py's `mitmdump-buffered` target: mitmproxy holding the
bodies the rerouter holds, and nothing else of the rerouter. JSON requests and answers are read
whole (up to EDIT_LIMIT, mitmproxy's own stream_large_bodies past it), everything else streams,
with the rerouter's own rule (rerouter/buffering.py). Set against the rerouter, it shows what the
buffering costs by itself, which the rerouter cannot do without: it edits JSON bodies whole.
"""

from mitmproxy import ctx
from mitmproxy import http

from rerouter.buffering import may_be_json  # the repository is on PYTHONPATH (bench/targets.py)
from rerouter.flows import EDIT_LIMIT


class StreamUnedited:
    def configure(self, updated: set[str]) -> None:
        if ctx.options.stream_large_bodies != str(EDIT_LIMIT):
            ctx.options.update(stream_large_bodies=str(EDIT_LIMIT))

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if not may_be_json(flow.request):
            flow.request.stream = True

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None and not may_be_json(flow.response):
            flow.response.stream = True


addons = [StreamUnedited()]
