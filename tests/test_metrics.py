import time
import tracemalloc

import pytest
from mitmproxy import flow as mflow
from prometheus_client.parser import text_string_to_metric_families

from rerouter.flows import STATE_KEY
from rerouter.flows import FlowState
from rerouter.metrics import MAX_LABEL_VALUES
from rerouter.metrics import BoundedLabel
from rerouter.metrics import Metrics
from rerouter.requestlog import BodySample
from rerouter.requestlog import Inflight
from rerouter.requestlog import RequestLog
from rerouter.settings import Settings
from tests.helpers import json_response
from tests.helpers import reverse_flow


@pytest.fixture
def metrics(settings_env):
    log = RequestLog(Settings())
    return log, Metrics(log)


def samples(metrics: Metrics) -> dict[str, list]:
    """The exposition as a Prometheus scraper reads it: samples by metric family."""
    text = metrics.exposition().decode()
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def end(log: RequestLog, metrics: Metrics, path: str, requested: str | None, routed: str | None, **state) -> None:
    """One request the log tracks, ended by a response (`status`) or an error (no `status`)."""
    status = state.pop("status", None)
    flow = reverse_flow(path, {"model": requested})
    if status is None:
        flow.error = mflow.Error("Client disconnected.")
    else:
        flow.response = json_response({}, status=status)
    ended(log, metrics, flow, FlowState(requested_model=requested, routed_model=routed, **state))


def ended(log: RequestLog, metrics: Metrics, flow, state: FlowState) -> None:
    flow.metadata[STATE_KEY] = state
    log.inflight[flow.id] = Inflight(flow.id, "POST", flow.request.path, None, None, time.time(), time.monotonic() - 0.2, BodySample(0))
    if flow.response is None:
        metrics.error(flow)
    else:
        metrics.response(flow)
    del log.inflight[flow.id]


class TestMetrics:
    def test_a_request_in_every_metric(self, metrics):
        log, m = metrics
        end(log, m, "/v1/chat/completions", "gpt-4", "llama3-70b", status=200, first_token_ms=150.0,
            prompt_tokens=12, completion_tokens=30, reasoning_chars=77)  # fmt: skip
        end(log, m, "/api/chat", "qwen3", "qwen3", status=200, prompt_tokens=5)
        end(log, m, "/v1/chat/completions", "gpt-4", "llama3-70b", answered_status=502)
        end(log, m, "/v1/chat/completions", "gpt-4", "llama3-70b")
        end(log, m, "/v1/models", None, None, status=200)
        found = samples(m)
        requests = {(s.labels["service"], s.labels["requested_model"], s.labels["status"]): s.value for s in found["rerouter_requests"] if s.name.endswith("_total")}
        assert requests == {
            ("openai", "gpt-4", "200"): 1,
            ("ollama", "qwen3", "200"): 1,
            ("openai", "gpt-4", "502"): 1,
            ("openai", "gpt-4", "none"): 1,
            ("openai", "", "200"): 1,
        }
        durations = {s.labels["routed_model"]: s.value for s in found["rerouter_request_duration_seconds"] if s.name.endswith("_count")}
        assert durations == {"llama3-70b": 3, "qwen3": 1, "": 1}
        first = [s for s in found["rerouter_first_token_seconds"] if s.name.endswith(("_count", "_sum"))]
        assert [(s.name, s.labels, s.value) for s in first] == [
            ("rerouter_first_token_seconds_count", {"service": "openai", "routed_model": "llama3-70b"}, 1),
            ("rerouter_first_token_seconds_sum", {"service": "openai", "routed_model": "llama3-70b"}, 0.15),
        ]
        tokens = {(s.labels["routed_model"], s.labels["kind"]): s.value for s in found["rerouter_tokens"] if s.name.endswith("_total")}
        assert tokens == {("llama3-70b", "prompt"): 12, ("llama3-70b", "completion"): 30, ("qwen3", "prompt"): 5}
        assert [s.value for s in found["rerouter_reasoning_chars"] if s.name.endswith("_total")] == [77]
        assert {name: found[name][0].value for name in ("rerouter_inflight_requests", "rerouter_log_queue", "rerouter_log_failures", "rerouter_log_dropped")} == {
            "rerouter_inflight_requests": 0,
            "rerouter_log_queue": 0,
            "rerouter_log_failures": 0,
            "rerouter_log_dropped": 0,
        }

    def test_only_requests_the_log_records_count(self, metrics):
        log, m = metrics
        local = reverse_flow("/api/stats", method="GET")
        local.response = json_response({})
        m.response(local)
        assert samples(m)["rerouter_requests"] == []

    def test_label_values_are_escaped(self, metrics):
        log, m = metrics
        name = 'evil"} 1\nrerouter_fake 99 # \\'
        end(log, m, "/v1/chat/completions", name, name, status=200)
        found = samples(m)
        assert [s.labels["requested_model"] for s in found["rerouter_requests"] if s.name.endswith("_total")] == [name]
        assert "rerouter_fake" not in found

    def test_ten_thousand_model_names_stay_bounded(self, metrics):
        log, m = metrics
        flow = reverse_flow()
        flow.response = json_response({})

        def names(numbers: range) -> None:
            """A request per name; one flow serves them all, so that the flows' own memory stays out of the figures."""
            for i in numbers:
                state = FlowState(requested_model=f"model-{i}", routed_model=f"routed-{i}", first_token_ms=5.0, prompt_tokens=1)
                ended(log, m, flow, state)

        names(range(200))
        size_at_200 = len(m.exposition())
        tracemalloc.start()
        try:
            used_at_200 = tracemalloc.get_traced_memory()[0]
            names(range(200, 10_000))
            used_at_10000 = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
        assert len(m.exposition()) < size_at_200 + 1000  # only the counts' digits grow
        assert used_at_10000 - used_at_200 < 256 * 1024
        found = samples(m)
        requested = {s.labels["requested_model"]: s.value for s in found["rerouter_requests"] if s.name.endswith("_total")}
        assert len(requested) == MAX_LABEL_VALUES + 1
        assert requested["other"] == 10_000 - MAX_LABEL_VALUES
        assert sum(requested.values()) == 10_000
        routed = {s.labels["routed_model"] for s in found["rerouter_first_token_seconds"]}
        assert len(routed) == MAX_LABEL_VALUES + 1


class TestBoundedLabel:
    def test_first_values_kept_then_other(self):
        label = BoundedLabel(limit=2)
        assert [label(v) for v in ["a", "b", "c", "a", None, "b"]] == ["a", "b", "other", "a", "other", "b"]

    def test_a_very_long_name_is_other(self):
        assert BoundedLabel()("x" * 10_000) == "other"
