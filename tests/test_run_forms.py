"""The three ways to run the rerouter, each driven by the real openai and ollama clients."""

import json
import urllib.request

import ollama
import openai
import pytest

from tests.proxy import WEB_PASSWORD
from tests.upstream import mock_headers

ANSWER = "Hello world, this is the answer."
FORMS = ["python", "mitmdump", "mitmweb"]


@pytest.fixture(scope="module", params=FORMS)
def proxy(request, module_rerouter):
    return module_rerouter(request.param)


def openai_client(proxy, **mock) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{proxy.url}/v1",
        api_key="sk-test",
        default_headers=mock_headers(**mock),
        max_retries=0,
        timeout=30,
    )


def ollama_client(proxy, **mock) -> ollama.Client:
    return ollama.Client(host=proxy.url, headers=mock_headers(**mock), timeout=30)


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
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == ANSWER
    assert last_request(openai_upstream)["json"]["model"] == "llama3-3-haiku"
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_ollama_chat(proxy, ollama_upstream):
    reply = ollama_client(proxy).chat(model="gpt-3.5-turbo", messages=[{"role": "user", "content": "hi"}], stream=False)
    assert reply.message.content == ANSWER
    assert last_request(ollama_upstream)["json"]["model"] == "qwen3:8b"


def test_ollama_chat_streamed(proxy, ollama_upstream):
    parts = list(ollama_client(proxy).chat(model="gpt-3.5-turbo", messages=[{"role": "user", "content": "hi"}], stream=True))
    assert "".join(p.message.content for p in parts) == ANSWER
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
    openai_client(proxy).chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}], stream=True)
    request = urllib.request.Request(f"{proxy.web_url}flows", headers={"Authorization": f"Bearer {WEB_PASSWORD}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        flows = json.load(response)
    comments = [f.get("comment", "") for f in flows]
    assert "model: gpt-4 -> llama3-70b; token usage requested; thinking stripped" in comments
