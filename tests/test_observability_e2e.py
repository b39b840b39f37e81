"""Time to first token, token counts and GET /metrics, through a real rerouter process and the official clients."""

import http.client
import uuid

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import get
from tests.helpers import ollama_client
from tests.helpers import openai_client
from tests.helpers import wait_for
from tests.upstream import DEFAULT_TEXT

USER = [{"role": "user", "content": "hi"}]
PLAIN_TEXT = "Hello there, a plain answer."
ROW_FIGURES = ("upstream_ms", "upstream_first_token_ms", "first_token_ms", "prompt_tokens", "completion_tokens", "tokens_per_s")


def scrape(proxy, headers: dict | None = None) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    conn.request("GET", "/metrics", headers=headers or {})
    response = conn.getresponse()
    return response.status, response.read().decode()


def metrics(proxy) -> dict[str, list]:
    """The samples of every metric family, once no request is in flight."""
    wait_for(lambda: not get(proxy, "/api/inflight")[1]["inflight"])
    status, text = scrape(proxy)
    assert status == 200
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def values(samples: list, suffix: str, *labels: str) -> dict:
    return {tuple(s.labels[label] for label in labels): s.value for s in samples if s.name.endswith(suffix)}


def sent_upstream(upstream, model: str) -> dict:
    return next(r["json"] for r in reversed(upstream.requests) if isinstance(r["json"], dict) and r["json"].get("model") == model)


@pytest.fixture(scope="module")
def proxy(module_rerouter):
    return module_rerouter("python")


class TestRequestUsage:
    def test_a_client_that_did_not_ask_gets_the_stream_it_asked_for(self, proxy, openai_upstream):
        model = f"unasked-{uuid.uuid4().hex[:8]}"
        chunks = list(openai_client(proxy, text=PLAIN_TEXT).chat.completions.create(model=model, messages=USER, stream=True))
        assert sent_upstream(openai_upstream, model)["stream_options"] == {"include_usage": True}
        assert all(chunk.choices and chunk.usage is None for chunk in chunks)
        assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks) == PLAIN_TEXT
        direct = openai_client(openai_upstream, text=PLAIN_TEXT)
        assert len(chunks) == len(list(direct.chat.completions.create(model=model, messages=USER, stream=True)))

    def test_a_client_that_asked_gets_the_usage(self, proxy, openai_upstream):
        model = f"asked-{uuid.uuid4().hex[:8]}"
        stream = openai_client(proxy).chat.completions.create(model=model, messages=USER, stream=True, stream_options={"include_usage": True})
        chunks = list(stream)
        assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
        assert sent_upstream(openai_upstream, model)["stream_options"] == {"include_usage": True}

    def test_completions_ask_too(self, proxy, openai_upstream):
        model = f"completion-{uuid.uuid4().hex[:8]}"
        chunks = list(openai_client(proxy, text=PLAIN_TEXT).completions.create(model=model, prompt="hi", stream=True))
        assert all(chunk.choices for chunk in chunks)
        assert "".join(chunk.choices[0].text for chunk in chunks) == PLAIN_TEXT
        assert sent_upstream(openai_upstream, model)["stream_options"] == {"include_usage": True}

    def test_off(self, rerouter, openai_upstream):
        proxy = rerouter("python", {"REQUEST_USAGE": "false"})
        model = f"off-{uuid.uuid4().hex[:8]}"
        list(openai_client(proxy).chat.completions.create(model=model, messages=USER, stream=True))
        assert "stream_options" not in sent_upstream(openai_upstream, model)


def test_metrics_after_openai_and_ollama_traffic(rerouter, openai_upstream, ollama_upstream):
    proxy = rerouter("python")
    plain = openai_client(proxy).chat.completions.create(model="plain-openai", messages=USER)
    list(openai_client(proxy, delay=0.01).chat.completions.create(model="stream-openai", messages=USER, stream=True))
    list(ollama_client(proxy, delay=0.01).chat(model="stream-ollama", messages=USER, stream=True))
    generated = ollama_client(proxy).generate(model="plain-ollama", prompt="hi")
    found = metrics(proxy)

    requests = values(found["rerouter_requests"], "_total", "service", "requested_model", "routed_model", "status")
    assert requests == {
        ("openai", "plain-openai", "plain-openai", "200"): 1,
        ("openai", "stream-openai", "stream-openai", "200"): 1,
        ("ollama", "stream-ollama", "stream-ollama", "200"): 1,
        ("ollama", "plain-ollama", "plain-ollama", "200"): 1,
    }
    durations = values(found["rerouter_request_duration_seconds"], "_count", "service", "routed_model")
    assert set(durations) == {(service, model) for service, model, _, _ in requests} and set(durations.values()) == {1}
    first_tokens = values(found["rerouter_first_token_seconds"], "_count", "service", "routed_model")
    assert first_tokens == {("openai", "stream-openai"): 1, ("ollama", "stream-ollama"): 1}
    assert all(v > 0 for v in values(found["rerouter_first_token_seconds"], "_sum", "routed_model").values())
    tokens = values(found["rerouter_tokens"], "_total", "routed_model", "kind")
    assert (tokens[("plain-openai", "prompt")], tokens[("plain-openai", "completion")]) == (plain.usage.prompt_tokens, plain.usage.completion_tokens)
    # the streamed answer had the same prompt and text: its counts came with the usage the proxy asked for
    assert (tokens[("stream-openai", "prompt")], tokens[("stream-openai", "completion")]) == (plain.usage.prompt_tokens, plain.usage.completion_tokens)
    assert (tokens[("plain-ollama", "prompt")], tokens[("plain-ollama", "completion")]) == (generated.prompt_eval_count, generated.eval_count)
    assert tokens[("stream-ollama", "completion")] > 0
    assert "rerouter_reasoning_chars" in found
    log = {name: found[name][0].value for name in ("rerouter_inflight_requests", "rerouter_log_queue", "rerouter_log_failures", "rerouter_log_dropped")}
    assert (log["rerouter_inflight_requests"], log["rerouter_log_failures"], log["rerouter_log_dropped"]) == (0, 0, 0)
    assert log["rerouter_log_queue"] >= 0
    assert not [r for r in openai_upstream.requests + ollama_upstream.requests if r["path"] == "/metrics"]


def test_metrics_need_the_dashboard_token(rerouter, openai_upstream):
    token = "obs-" + uuid.uuid4().hex
    proxy = rerouter("python", {"DASHBOARD_TOKEN": token})
    assert scrape(proxy)[0] == 401
    assert scrape(proxy, {"Authorization": "Bearer wrong-" + token})[0] == 401
    status, text = scrape(proxy, {"Authorization": f"Bearer {token}"})
    assert status == 200 and "rerouter_requests_total" in text
    assert not [r for r in openai_upstream.requests if r["path"] == "/metrics"]


def test_without_the_log_nothing_changes(rerouter, openai_upstream):
    proxy = rerouter("python", {"ENABLE_LOGGING": "false"})
    model = f"nolog-{uuid.uuid4().hex[:8]}"
    list(openai_client(proxy).chat.completions.create(model=model, messages=USER, stream=True))
    assert "stream_options" not in sent_upstream(openai_upstream, model)
    assert scrape(proxy)[0] == 404  # forwarded: the mock upstream has no /metrics
    assert [r for r in openai_upstream.requests if r["path"] == "/metrics"]


def test_streams_left_unedited_are_measured(rerouter):
    proxy = rerouter("python", {"STRIP_THINKING": "false"})
    chunks = list(openai_client(proxy).chat.completions.create(model="unstripped", messages=USER, stream=True))
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks) == DEFAULT_TEXT
    assert all(chunk.choices for chunk in chunks)
    found = metrics(proxy)
    assert values(found["rerouter_first_token_seconds"], "_count", "routed_model") == {("unstripped",): 1}
    assert values(found["rerouter_tokens"], "_total", "routed_model", "kind")[("unstripped", "completion")] > 0


def row(proxy, model: str) -> dict:
    """The finished row of the request for `model`, with its details."""
    rows = wait_for(lambda: [r for r in get(proxy, f"/api/logs?model={model}")[1]["logs"] if r["state"] != "inflight"])
    return get(proxy, f"/api/logs/{rows[0]['id']}")[1]


def test_rows_carry_the_figures(proxy):
    tag = uuid.uuid4().hex[:8]
    plain = openai_client(proxy).chat.completions.create(model=f"plain-{tag}", messages=USER)
    list(openai_client(proxy, delay=0.02).chat.completions.create(model=f"stream-{tag}", messages=USER, stream=True))
    list(ollama_client(proxy, delay=0.02).chat(model=f"ollama-{tag}", messages=USER, stream=True))
    generated = ollama_client(proxy).generate(model=f"generate-{tag}", prompt="hi")

    figures = {kind: {name: row(proxy, f"{kind}-{tag}")[name] for name in ROW_FIGURES} for kind in ("plain", "stream", "ollama", "generate")}
    for kind, counts in (("plain", plain.usage), ("stream", plain.usage)):
        assert (figures[kind]["prompt_tokens"], figures[kind]["completion_tokens"]) == (counts.prompt_tokens, counts.completion_tokens)
    assert (figures["generate"]["prompt_tokens"], figures["generate"]["completion_tokens"]) == (generated.prompt_eval_count, generated.eval_count)
    for kind in ("stream", "ollama"):
        streamed = figures[kind]
        assert 0 < streamed["upstream_ms"] < streamed["upstream_first_token_ms"]
        # the think block was withheld: the client's first token came after the upstream's
        assert streamed["upstream_first_token_ms"] < streamed["first_token_ms"]
        assert streamed["completion_tokens"] > 0 and streamed["tokens_per_s"] > 0
    for kind in ("plain", "generate"):
        assert figures[kind]["upstream_ms"] > 0
        assert (figures[kind]["upstream_first_token_ms"], figures[kind]["first_token_ms"], figures[kind]["tokens_per_s"]) == (None, None, None)
