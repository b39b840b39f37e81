import contextlib
import json

import pytest
from mitmproxy import flow as mflow
from mitmproxy import http
from mitmproxy.test import taddons

from rerouter.figures import Figures
from rerouter.flows import flow_state
from rerouter.requestlog import RequestLog
from rerouter.rewriting import ModelRewrite
from rerouter.rules import Rules
from rerouter.settings import Settings
from rerouter.stripping import ThinkStrip
from tests.helpers import USAGE
from tests.helpers import json_response
from tests.helpers import ollama_line
from tests.helpers import openai_events
from tests.helpers import reverse_flow
from tests.helpers import start
from tests.helpers import streamed

CHAT = {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}], "stream": True}


@pytest.fixture
def proxy(settings_env):
    """The addons that meter a stream, in the order rerouter_addon.py runs them."""

    with contextlib.ExitStack() as stack:

        def make(**env: str):
            for name, value in env.items():
                settings_env.setenv(name, value)
            s = Settings()
            rules = Rules(s, RequestLog(s))
            addons = [ModelRewrite(s, rules), Figures(s), ThinkStrip(s)]
            start(stack.enter_context(taddons.context(s, rules, *addons)), s, rules)
            return addons

        yield make


def answered(addons, flow: http.HTTPFlow, response: http.Response) -> None:
    """The hooks from the request to the response's headers, as mitmproxy calls them."""
    for addon in addons:
        if hasattr(addon, "request"):
            addon.request(flow)
    flow.request.timestamp_end = flow.request.timestamp_start + 0.002
    response.timestamp_start = flow.request.timestamp_end + 0.0305
    flow.response = response
    for addon in addons:
        if hasattr(addon, "responseheaders"):
            addon.responseheaders(flow)


def finished(addons, flow: http.HTTPFlow) -> None:
    for addon in addons:
        addon.response(flow)


def sse_response() -> http.Response:
    return http.Response.make(200, b"", {"content-type": "text/event-stream"})


class TestRequestUsage:
    @pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions", "/openai/v1/chat/completions/"])
    def test_streamed_requests_ask_for_usage(self, proxy, path):
        rewrite, _, _ = proxy()
        f = reverse_flow(path, {**CHAT, "stream_options": {"include_obfuscation": False}})
        rewrite.request(f)
        assert json.loads(f.request.content)["stream_options"] == {"include_obfuscation": False, "include_usage": True}
        assert flow_state(f).usage_requested
        assert "token usage requested" in f.comment

    @pytest.mark.parametrize(
        "env, path, body",
        [
            ({}, "/v1/chat/completions", {**CHAT, "stream_options": {"include_usage": True}}),
            ({}, "/v1/chat/completions", {**CHAT, "stream": False}),
            ({}, "/api/chat", CHAT),
            ({}, "/v1/embeddings", {"model": "e", "input": "x", "stream": True}),
            ({"REQUEST_USAGE": "false"}, "/v1/chat/completions", CHAT),
            ({"ENABLE_LOGGING": "false"}, "/v1/chat/completions", CHAT),
        ],
    )
    def test_other_requests_are_left_alone(self, proxy, env, path, body):
        rewrite, _, _ = proxy(**env)
        f = reverse_flow(path, body)
        rewrite.request(f)
        sent = json.loads(f.request.content)
        assert sent.get("stream_options") == body.get("stream_options")
        assert not flow_state(f).usage_requested


class TestStreams:
    def test_the_client_gets_the_stream_it_asked_for_and_the_row_its_figures(self, proxy):
        addons = proxy()
        f = reverse_flow("/v1/chat/completions", CHAT)
        answered(addons, f, sse_response())
        assert callable(f.response.stream)
        delivered = streamed(f, b"".join(openai_events("Hello", " world")))
        finished(addons, f)
        assert b'"choices": []' not in delivered
        assert delivered.endswith(b"data: [DONE]\n\n")
        state = flow_state(f)
        assert (state.prompt_tokens, state.completion_tokens) == (12, 30)
        assert state.upstream_ms == 30.5
        assert state.upstream_first_token_ms is not None and state.first_token_ms is not None
        assert state.meter is None  # nor the reads it kept

    def test_a_stream_left_unedited_is_still_metered(self, proxy):
        addons = proxy(STRIP_THINKING="false")
        f = reverse_flow("/api/chat", {**CHAT, "model": "qwen3"})
        answered(addons, f, http.Response.make(200, b"", {"content-type": "application/x-ndjson"}))
        body = ollama_line(content="<think>kept</think>Hi") + ollama_line(done=True, prompt_eval_count=5, eval_count=10)
        assert streamed(f, body) == body
        finished(addons, f)
        state = flow_state(f)
        assert (state.prompt_tokens, state.completion_tokens) == (5, 10)
        assert state.first_token_ms is not None

    def test_a_stream_the_client_left_keeps_what_was_measured(self, proxy):
        addons = proxy()
        f = reverse_flow("/v1/chat/completions", CHAT)
        answered(addons, f, sse_response())
        f.response.stream(b"".join(openai_events("Hello", usage=False)[:2]))
        f.error = mflow.Error("Client disconnected.")
        for addon in addons:
            if hasattr(addon, "error"):
                addon.error(f)
        state = flow_state(f)
        assert state.first_token_ms is not None and state.completion_tokens is None
        assert state.meter is None

    def test_without_the_log_nothing_is_measured(self, proxy):
        addons = proxy(STRIP_THINKING="false", ENABLE_LOGGING="false")
        f = reverse_flow("/v1/chat/completions", CHAT)
        answered(addons, f, sse_response())
        assert f.response.stream is True
        assert flow_state(f).meter is None
        assert flow_state(f).upstream_ms is None


class TestPlainAnswers:
    @pytest.mark.parametrize(
        "path, body, counts",
        [
            ("/v1/chat/completions", {"choices": [{"message": {"content": "hi"}}], "usage": USAGE}, (12, 30)),
            ("/api/generate", {"response": "hi", "done": True, "prompt_eval_count": 3, "eval_count": 4}, (3, 4)),
            ("/v1/chat/completions", {"choices": [{"message": {"content": "hi"}}]}, (None, None)),
        ],
    )
    def test_token_counts(self, proxy, path, body, counts):
        addons = proxy()
        f = reverse_flow(path, {**CHAT, "stream": False})
        answered(addons, f, json_response(body))
        f.response.content = json.dumps(body).encode()
        finished(addons, f)
        state = flow_state(f)
        assert (state.prompt_tokens, state.completion_tokens) == counts
        assert state.upstream_ms == 30.5
        assert (state.upstream_first_token_ms, state.first_token_ms, state.tokens_per_s) == (None, None, None)

    def test_the_first_token_figures_are_for_streams_only(self, proxy):
        addons = proxy()
        f = reverse_flow("/v1/chat/completions", {**CHAT, "stream": False})
        answered(addons, f, json_response({"choices": [{"message": {"content": "hi"}}], "usage": USAGE}))
        finished(addons, f)
        assert flow_state(f).meter is None
