import json

import pytest
from mitmproxy.test import taddons

from rerouter.flows import flow_state
from rerouter.requestlog import RequestLog
from rerouter.rewriting import ModelRewrite
from rerouter.rules import Rules
from rerouter.settings import Settings
from tests.conftest import json_response
from tests.conftest import reverse_flow
from tests.conftest import start


@pytest.fixture
def rewrite(settings_env):
    settings_env.setenv("MODEL_MAP", json.dumps({"gpt-4": "llama3-70b", "gpt-3.5-turbo": "qwen3:8b", "/^claude-(.*)$/": r"qwen3-\1"}))
    s = Settings()
    r = Rules(s, RequestLog(s))
    m = ModelRewrite(s, r)
    with taddons.context(s, r, m) as tctx:
        start(tctx, s, r)
        yield tctx, s, m


def sent(flow) -> dict:
    return json.loads(flow.request.content)


class TestModelRewrite:
    @pytest.mark.parametrize(
        "path",
        ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses", "/v1/messages", "/api/chat", "/api/generate", "/api/embed", "/api/show", "/anything/else"],
    )
    def test_model_rewritten_on_every_path(self, rewrite, path):
        tctx, s, m = rewrite
        f = reverse_flow(path, {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]})
        m.request(f)
        assert sent(f)["model"] == "llama3-70b"
        assert sent(f)["messages"] == [{"role": "user", "content": "hi"}]
        assert f.comment == "model: gpt-4 -> llama3-70b"
        assert f.marked

    def test_pattern_with_group(self, rewrite):
        tctx, s, m = rewrite
        f = reverse_flow(body={"model": "claude-haiku-4-5"})
        m.request(f)
        assert sent(f)["model"] == "qwen3-haiku-4-5"

    def test_unchanged_body_is_not_reserialised(self, rewrite):
        tctx, s, m = rewrite
        raw = b'{ "model" : "unmapped",   "x": 1 }'
        f = reverse_flow(content=raw)
        m.request(f)
        assert f.request.content == raw
        assert not f.comment

    @pytest.mark.parametrize(
        "raw",
        [b"not json", b"\x00\x01\xff\xfe binary", b'["model", "gpt-4"]', b'{"model": 4}', b'{"model": null}', b'{"model": "gpt-4"', b"", b"[" * 100000],
    )
    def test_other_bodies_pass_byte_for_byte(self, rewrite, raw):
        tctx, s, m = rewrite
        f = reverse_flow(content=raw)
        m.request(f)
        assert f.request.content == raw

    def test_deeply_nested_json_does_not_crash(self, rewrite):
        tctx, s, m = rewrite
        raw = b'{"model": "gpt-4", "x": ' + b"[" * 100000 + b"]" * 100000 + b"}"
        f = reverse_flow(content=raw)
        m.request(f)
        assert f.request.content == raw

    def test_content_length_follows_the_new_body(self, rewrite):
        tctx, s, m = rewrite
        f = reverse_flow(body={"model": "gpt-3.5-turbo"})
        f.request.headers["content-length"] = str(len(f.request.content))
        m.request(f)
        assert int(f.request.headers["content-length"]) == len(f.request.content)
        assert sent(f)["model"] == "qwen3:8b"

    def test_get_requests_are_not_parsed(self, rewrite):
        tctx, s, m = rewrite
        f = reverse_flow("/api/tags", {"model": "gpt-4"}, method="GET")
        m.request(f)
        assert sent(f)["model"] == "gpt-4"

    def test_no_think(self, rewrite):
        tctx, s, m = rewrite
        tctx.configure(s, disable_thinking="yes")
        f = reverse_flow(body={"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]})
        m.request(f)
        assert sent(f)["messages"][0]["content"] == "hi /no_think"
        assert f.comment == "model: gpt-4 -> llama3-70b; thinking off: no_think"
        assert flow_state(f).thinking_switches == ("no_think",)
        g = reverse_flow("/api/generate", {"model": "x", "prompt": "why"})
        m.request(g)
        assert sent(g)["prompt"] == "why /no_think"

    @pytest.mark.parametrize(
        "path, body, applied",
        [
            ("/api/chat", {"model": "x", "messages": [{"role": "user", "content": "hi"}], "think": True}, ("think_false",)),
            ("/api/generate", {"model": "x", "prompt": "hi"}, ("think_false",)),
            ("/v1/chat/completions", {"model": "x", "messages": [{"role": "user", "content": "hi"}]}, ("enable_thinking", "reasoning_effort")),
            ("/v1/completions", {"model": "x", "prompt": "hi"}, ("enable_thinking",)),
        ],
    )
    def test_switches_applied_where_they_fit(self, rewrite, path, body, applied):
        tctx, s, m = rewrite
        tctx.configure(s, disable_thinking="think_false,enable_thinking,reasoning_effort")
        f = reverse_flow(path, body)
        m.request(f)
        assert flow_state(f).thinking_switches == applied
        assert f.comment == f"thinking off: {', '.join(applied)}"
        upstream = sent(f)
        assert upstream.get("think", False) is False
        if "enable_thinking" in applied:
            assert upstream["chat_template_kwargs"] == {"enable_thinking": False}
        assert upstream.get("reasoning_effort") == ("none" if "reasoning_effort" in applied else None)

    def test_switch_that_fits_nothing(self, rewrite):
        tctx, s, m = rewrite
        tctx.configure(s, disable_thinking="think_false")
        raw = b'{"model": "unmapped", "input": "x"}'
        f = reverse_flow("/v1/embeddings", content=raw)
        m.request(f)
        assert f.request.content == raw
        assert flow_state(f).thinking_switches == ()
        assert not f.comment

    def test_routed_model_recorded_for_think_open_models(self, settings_env):
        settings_env.setenv("ENABLE_LOGGING", "false")
        settings_env.setenv("THINK_OPEN_MODELS", "/qwq/")
        s = Settings()
        r = Rules(s, RequestLog(s))
        m = ModelRewrite(s, r)
        with taddons.context(s, r, m) as tctx:
            start(tctx, s, r)
            f = reverse_flow(body={"model": "qwq-32b"})
            m.request(f)
            assert flow_state(f).routed_model == "qwq-32b"

    def test_no_think_off_by_default(self, rewrite):
        tctx, s, m = rewrite
        f = reverse_flow(body={"model": "x", "messages": [{"role": "user", "content": "hi"}]})
        m.request(f)
        assert sent(f)["messages"][0]["content"] == "hi"


class TestModelLists:
    def test_openai_models_gain_aliases(self, rewrite):
        tctx, s, m = rewrite
        f = reverse_flow("/v1/models", method="GET")
        f.response = json_response({"object": "list", "data": [{"id": "llama3-70b", "object": "model", "created": 1, "owned_by": "vllm"}]})
        m.response(f)
        ids = [e["id"] for e in f.response.json()["data"]]
        assert ids == ["llama3-70b", "gpt-4"]
        assert f.response.json()["data"][1]["owned_by"] == "vllm"

    def test_ollama_tags_gain_aliases(self, rewrite):
        tctx, s, m = rewrite
        f = reverse_flow("/api/tags", method="GET")
        f.response = json_response({"models": [{"name": "qwen3:8b", "model": "qwen3:8b", "size": 1}]})
        m.response(f)
        assert [e["name"] for e in f.response.json()["models"]] == ["qwen3:8b", "gpt-3.5-turbo"]

    def test_upstream_errors_and_other_paths_untouched(self, rewrite):
        tctx, s, m = rewrite
        body = {"data": [{"id": "llama3-70b"}]}
        f = reverse_flow("/v1/models", method="GET")
        f.response = json_response(body, status=500)
        m.response(f)
        assert f.response.json() == body
        g = reverse_flow("/v1/other", method="GET")
        g.response = json_response(body)
        m.response(g)
        assert g.response.json() == body

    def test_gzip_listing(self, rewrite):
        tctx, s, m = rewrite
        f = reverse_flow("/v1/models", method="GET")
        f.response = json_response({"data": [{"id": "llama3-70b"}]})
        f.response.encode("gzip")
        m.response(f)
        assert f.response.headers["content-encoding"] == "gzip"
        assert [e["id"] for e in f.response.json()["data"]] == ["llama3-70b", "gpt-4"]


@pytest.mark.parametrize("model", ["gpt-4", "unmapped"])
def test_a_lone_surrogate_never_stops_the_rewrite(rewrite, model):
    """Valid JSON that is no valid UTF-8 once decoded: it stays escaped, and the hooks after this one still run."""
    tctx, s, m = rewrite
    tctx.configure(s, disable_thinking="true")
    f = reverse_flow(content=b'{"model": "%s", "messages": [{"role": "user", "content": "\\ud800 \xc3\xbc"}]}' % model.encode())
    m.request(f)
    assert b"\\ud800" in f.request.content
    assert sent(f)["messages"][0]["content"] == "\ud800 \u00fc /no_think"
    assert sent(f)["model"] == ("llama3-70b" if model == "gpt-4" else model)
