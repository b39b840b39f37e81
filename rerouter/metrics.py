"""
Prometheus metrics of the proxied requests, served by the dashboard at `GET /metrics`.

Model names come from clients: each model label keeps its first 100 distinct values and counts
every later one as `other`, so random names cannot grow the proxy's memory or the exposition.
"""

import time
from collections.abc import Iterator
from typing import Any

from mitmproxy import http
from prometheus_client import CollectorRegistry
from prometheus_client import Counter
from prometheus_client import Histogram
from prometheus_client import generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from rerouter.flows import flow_state
from rerouter.requestlog import RequestLog
from rerouter.routing import is_ollama_path

MAX_LABEL_VALUES = 100
MAX_LABEL_LENGTH = 200
OTHER = "other"
NO_STATUS = "none"
# LLM requests take from milliseconds (an embedding) to minutes (a long answer); each bucket is a
# line per label set in every scrape, so there are few
SECONDS_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class BoundedLabel:
    """Label values from clients: the first `limit` distinct ones are kept, any later one is `other`."""

    def __init__(self, limit: int = MAX_LABEL_VALUES) -> None:
        self.limit = limit
        self.seen: set[str] = set()

    def __call__(self, value: str | None) -> str:
        value = value or ""
        if value in self.seen:
            return value
        if len(self.seen) >= self.limit or len(value) > MAX_LABEL_LENGTH:
            return OTHER
        self.seen.add(value)
        return value


class Children:
    """A metric's series by label values, each looked up once: `labels()` costs microseconds on every call."""

    def __init__(self, metric: Counter | Histogram) -> None:
        self.metric = metric
        self.known: dict[tuple[str, ...], Any] = {}

    def __call__(self, *values: str) -> Any:
        child = self.known.get(values)
        if child is None:
            child = self.known[values] = self.metric.labels(*values)
        return child


class LogCollector(Collector):
    """What the request log knows at scrape time: requests in flight, and its writer's queue, failures and drops."""

    def __init__(self, log: RequestLog) -> None:
        self.log = log

    def describe(self) -> list[Metric]:
        return list(self._families(0, 0, 0, 0))

    def collect(self) -> Iterator[Metric]:
        store = self.log.store
        if store is None:
            return self._families(len(self.log.inflight), 0, 0, 0)
        return self._families(len(self.log.inflight), store.queued, store.failures, store.dropped)

    @staticmethod
    def _families(inflight: int, queued: int, failures: int, dropped: int) -> Iterator[Metric]:
        yield GaugeMetricFamily("rerouter_inflight_requests", "Proxied requests in flight.", value=inflight)
        yield GaugeMetricFamily("rerouter_log_queue", "Request log entries waiting to be written.", value=queued)
        yield CounterMetricFamily("rerouter_log_failures", "Request log entries whose write failed.", value=failures)
        yield CounterMetricFamily("rerouter_log_dropped", "Request log entries dropped because the queue was full.", value=dropped)


class Metrics:
    """
    Counts each request the log records when it ends (`response` or `error`), from
    the flow and its FlowState; runs before RequestLog, which forgets the request.
    """

    def __init__(self, log: RequestLog) -> None:
        self.log = log
        self.requested_model = BoundedLabel()
        self.routed_model = BoundedLabel()
        self.registry = CollectorRegistry()
        self.requests = Children(
            Counter(
                "rerouter_requests",
                "Proxied requests by service, requested and routed model, and HTTP status (`none`: no answer).",
                ["service", "requested_model", "routed_model", "status"],
                registry=self.registry,
            )
        )
        self.duration = self._seconds("rerouter_request_duration_seconds", "Time from the request's start to the end of its answer.")
        self.first_token = self._seconds(
            "rerouter_first_token_seconds",
            "Time from the request's start to the first answer text delivered to the client (streamed answers).",
        )
        self.tokens = Children(
            Counter(
                "rerouter_tokens",
                "Tokens the upstreams reported, by kind (prompt, completion).",
                ["routed_model", "kind"],
                registry=self.registry,
            )
        )
        self.reasoning_chars = Children(
            Counter(
                "rerouter_reasoning_chars",
                "Characters of reasoning removed from or moved within answers.",
                ["routed_model"],
                registry=self.registry,
            )
        )
        self.registry.register(LogCollector(log))

    def _seconds(self, name: str, documentation: str) -> Children:
        return Children(Histogram(name, documentation, ["service", "routed_model"], buckets=SECONDS_BUCKETS, registry=self.registry))

    def exposition(self) -> bytes:
        """Blocking: with every model label in use it takes a tenth of a second, so it belongs in a worker thread."""
        return generate_latest(self.registry)

    def response(self, flow: http.HTTPFlow) -> None:
        self._count(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._count(flow)

    def _count(self, flow: http.HTTPFlow) -> None:
        record = self.log.inflight.get(flow.id)
        if record is None:
            return
        state = flow_state(flow)
        service = "ollama" if is_ollama_path(record.path) else "openai"
        routed = self.routed_model(state.routed_model)
        status = flow.response.status_code if flow.response is not None else state.answered_status
        self.requests(service, self.requested_model(state.requested_model), routed, str(status or NO_STATUS)).inc()
        self.duration(service, routed).observe(time.monotonic() - record.started)
        if state.first_token_ms is not None:
            self.first_token(service, routed).observe(state.first_token_ms / 1000)
        if state.prompt_tokens:
            self.tokens(routed, "prompt").inc(state.prompt_tokens)
        if state.completion_tokens:
            self.tokens(routed, "completion").inc(state.completion_tokens)
        if state.reasoning_chars:
            self.reasoning_chars(routed).inc(state.reasoning_chars)
