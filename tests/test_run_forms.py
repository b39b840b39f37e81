"""The three ways to run the rerouter, each driven by the real openai and ollama clients."""

import pytest

from tests.helpers import ollama_client
from tests.helpers import ollama_stream
from tests.helpers import openai_client
from tests.helpers import openai_stream
from tests.helpers import wait_for
from tests.upstream import ANSWER

FORMS = ["python", "mitmdump", "mitmweb"]


@pytest.fixture(scope="module", params=FORMS)
def proxy(request, module_rerouter):
    return module_rerouter(request.param)


def last_request(upstream) -> dict:
    return upstream.requests[-1]


def test_openai_chat(proxy, openai_upstream):
    reply = openai_client(proxy).chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content == ANSWER
    assert reply.model == "llama3-70b"
    assert last_request(openai_upstream)["json"]["model"] == "llama3-70b"


def test_openai_chat_streamed(proxy, openai_upstream):
    stream = openai_client(proxy).chat.completions.create(
        model="claude-3-haiku", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    chunks = list(stream)
    assert openai_stream(chunks)[0] == ANSWER
    assert last_request(openai_upstream)["json"]["model"] == "llama3-3-haiku"
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_ollama_chat(proxy, ollama_upstream):
    reply = ollama_client(proxy).chat(model="gpt-3.5-turbo", messages=[{"role": "user", "content": "hi"}], stream=False)
    assert reply.message.content == ANSWER
    assert last_request(ollama_upstream)["json"]["model"] == "qwen3:8b"


def test_ollama_chat_streamed(proxy, ollama_upstream):
    parts = list(ollama_client(proxy).chat(model="gpt-3.5-turbo", messages=[{"role": "user", "content": "hi"}], stream=True))
    assert ollama_stream(parts)[0] == ANSWER
    assert parts[-1].done
    assert len(parts) > 3, "the answer arrives token by token"


def test_ollama_generate_streamed_with_thinking_field(proxy):
    parts = list(ollama_client(proxy, reasoning="field").generate(model="gpt-4", prompt="hi", stream=True))
    assert "".join(p.response for p in parts) == ANSWER
    assert not any(getattr(p, "thinking", None) for p in parts)


def test_model_lists_show_aliases(proxy):
    models = [m.id for m in openai_client(proxy).models.list()]
    assert "llama3-70b" in models and "gpt-4" in models and "gpt-3.5-turbo" in models
    tags = [m.model for m in ollama_client(proxy).list().models]
    assert "qwen3:8b" in tags and "gpt-3.5-turbo" in tags


def test_mitmweb_shows_what_changed(module_rerouter):
    proxy = module_rerouter("mitmweb")
    stream = openai_client(proxy).chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}], stream=True)
    assert "<think>" not in "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    # the comment is complete once the flow ends, just after the client has read the last event
    expected = "model: gpt-4 -> llama3-70b; token usage requested; thinking stripped"
    wait_for(
        lambda: expected in [f.get("comment", "") for f in proxy.web_flows()],
        message=lambda: f"no flow commented {expected!r}: {[f.get('comment') for f in proxy.web_flows()]}",
    )
