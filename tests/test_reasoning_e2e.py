"""
Reasoning as real servers send it (issue 12), through real rerouter processes, with the
official openai and ollama clients, streamed and not, and raw HTTP where bytes matter.

MODEL_MAP routes gpt-4 -> llama3-70b and gpt-3.5-turbo -> qwen3:8b; THINK_OPEN_MODELS names
the qwen3 models, so gpt-3.5-turbo answers start inside a think block and gpt-4's do not.
"""

import http.client
import json
import time
import uuid

import ollama
import openai
import pytest

from tests.test_streams_e2e import data_objects
from tests.test_streams_e2e import open_stream
from tests.test_streams_e2e import sse_text
from tests.upstream import mock_headers

REASONING = "Let me think about this."
ANSWER = "Hello world, this is the answer."
TEMPLATE_OPENED = f"{REASONING}</think>\n\n{ANSWER}"  # the template wrote <think> into the prompt
OPEN = "gpt-3.5-turbo"  # routed to qwen3:8b, a THINK_OPEN_MODELS model
OTHER = "gpt-4"  # routed to llama3-70b
SWITCHES = "no_think,think_false,enable_thinking,reasoning_effort"
COMMON = {"THINK_OPEN_MODELS": "/^qwen3/i", "DISABLE_THINKING": SWITCHES}


@pytest.fixture(scope="module")
def dropping(module_rerouter):
    env = {**COMMON, "STRIP_THINKING": "true", "ECHO_REQUESTED_MODEL": "true", "THINK_KEEPALIVE_SECONDS": "0.2"}
    return module_rerouter("python", env)


@pytest.fixture(scope="module")
def separating(module_rerouter):
    return module_rerouter("python", {**COMMON, "STRIP_THINKING": "separate"})


def openai_client(proxy, **mock) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="sk-test", max_retries=0, default_headers=mock_headers(**mock))


def ollama_client(proxy, **mock) -> ollama.Client:
    return ollama.Client(host=proxy.url, headers=mock_headers(**mock))


def ask(client: openai.OpenAI, model: str, stream: bool, prompt: str = "hi", **extra):
    messages = [{"role": "user", "content": prompt}]
    return client.chat.completions.create(model=model, messages=messages, stream=stream, **extra)


def openai_stream(stream) -> tuple[str, str, set[str]]:
    """Content, reasoning_content and the model names of a streamed chat answer, as the client parsed them."""
    content, reasoning, models = "", "", set()
    for chunk in stream:
        models.add(chunk.model)
        for choice in chunk.choices:
            content += choice.delta.content or ""
            reasoning += getattr(choice.delta, "reasoning_content", None) or ""
    return content, reasoning, models


def ollama_stream(parts) -> tuple[str, str, set[str]]:
    content, thinking, models = "", "", set()
    for part in parts:
        models.add(part.model)
        message = getattr(part, "message", None)
        content += (message.content if message else part.response) or ""
        thinking += (message.thinking if message else part.thinking) or ""
    return content, thinking, models


class TestTemplateOpened:
    """Item 1: a lone `</think>`, and THINK_OPEN_MODELS."""

    @pytest.mark.parametrize("model", [OPEN, OTHER])
    def test_whole_answer(self, dropping, model):
        message = ask(openai_client(dropping, text=TEMPLATE_OPENED), model, False).choices[0].message
        assert message.content == ANSWER

    def test_stream_of_an_open_model(self, dropping):
        content, _, _ = openai_stream(ask(openai_client(dropping, text=TEMPLATE_OPENED), OPEN, True))
        assert content == ANSWER

    def test_stream_of_another_model_loses_only_the_tag(self, dropping):
        content, _, _ = openai_stream(ask(openai_client(dropping, text=TEMPLATE_OPENED), OTHER, True))
        assert content == REASONING + ANSWER

    @pytest.mark.parametrize("stream", [True, False])
    def test_open_model_answer_without_reasoning_is_delivered(self, dropping, stream):
        client = openai_client(dropping, text=ANSWER)
        if stream:
            content = openai_stream(ask(client, OPEN, True))[0]
        else:
            content = ask(client, OPEN, False).choices[0].message.content
        assert content == ANSWER

    @pytest.mark.parametrize("stream", [True, False])
    def test_ollama(self, dropping, stream):
        client = ollama_client(dropping, text=TEMPLATE_OPENED, tokens=3)
        chat = client.chat(model=OPEN, messages=[{"role": "user", "content": "hi"}], stream=stream)
        generate = client.generate(model=OPEN, prompt="hi", stream=stream)
        if stream:
            assert ollama_stream(chat)[0] == ollama_stream(generate)[0] == ANSWER
        else:
            assert chat.message.content == generate.response == ANSWER

    def test_withheld_text_of_a_stream_split_anywhere(self, dropping):
        raw = open_stream(dropping, "/v1/chat/completions", {"model": OPEN, "messages": [], "stream": True}, text=TEMPLATE_OPENED, tokens=1, write_bytes=7).read()
        assert sse_text(raw) == ANSWER


class TestSwitches:
    """Item 2: the switch each server honours, applied where it fits; the proxy's value wins."""

    def test_openai_chat(self, dropping, openai_upstream):
        extra = {"reasoning_effort": "high", "extra_body": {"chat_template_kwargs": {"enable_thinking": True, "keep": 1}}}
        ask(openai_client(dropping), OTHER, False, **extra)
        sent = openai_upstream.requests[-1]["json"]
        assert sent["chat_template_kwargs"] == {"enable_thinking": False, "keep": 1}
        assert sent["reasoning_effort"] == "none"
        assert sent["messages"][-1]["content"] == "hi /no_think"
        assert "think" not in sent

    def test_openai_completions(self, dropping, openai_upstream):
        openai_client(dropping).completions.create(model=OTHER, prompt="why")
        sent = openai_upstream.requests[-1]["json"]
        assert sent["chat_template_kwargs"] == {"enable_thinking": False}
        assert sent["prompt"] == "why /no_think"
        assert "reasoning_effort" not in sent and "think" not in sent

    @pytest.mark.parametrize("stream", [True, False])
    def test_ollama(self, dropping, ollama_upstream, stream):
        client = ollama_client(dropping)
        result = client.chat(model=OTHER, messages=[{"role": "user", "content": "hi"}], think=True, stream=stream)
        if stream:
            list(result)
        sent = ollama_upstream.requests[-1]["json"]
        assert sent["think"] is False
        assert sent["messages"][-1]["content"] == "hi /no_think"
        assert "chat_template_kwargs" not in sent and "reasoning_effort" not in sent
        client.generate(model=OTHER, prompt="why", think=True, stream=False)
        assert ollama_upstream.requests[-1]["json"]["think"] is False

    def test_embeddings_untouched(self, dropping, openai_upstream):
        openai_client(dropping).embeddings.create(model="text-embedding-3-small", input="hi")
        sent = openai_upstream.requests[-1]["json"]
        assert set(sent) == {"model", "input", "encoding_format"}


class TestSeparate:
    """Item 3: STRIP_THINKING=separate moves reasoning into the field clients know."""

    def test_openai_whole_answer(self, separating):
        message = ask(openai_client(separating), OTHER, False).choices[0].message
        assert (message.content, message.reasoning_content) == (ANSWER, REASONING)

    def test_openai_stream(self, separating):
        content, reasoning, _ = openai_stream(ask(openai_client(separating, tokens=2), OTHER, True))
        assert (content, reasoning) == (ANSWER, REASONING)

    def test_openai_stream_of_an_open_model(self, separating):
        content, reasoning, _ = openai_stream(ask(openai_client(separating, text=TEMPLATE_OPENED), OPEN, True))
        assert (content, reasoning) == (ANSWER, REASONING)

    def test_completions(self, separating):
        choice = openai_client(separating).completions.create(model=OTHER, prompt="hi").choices[0]
        assert (choice.text, choice.reasoning_content) == (ANSWER, REASONING)

    def test_reasoning_is_delivered_live(self, separating, openai_upstream):
        gate = uuid.uuid4().hex
        tokens = ["<think>Step one", " step two", "</think>\n\nDone"]
        stream = ask(openai_client(separating, tokens=tokens, gate=gate), OTHER, True)
        reasoning = ""
        for chunk in stream:
            reasoning += getattr(chunk.choices[0].delta, "reasoning_content", None) or ""
            if reasoning:
                break
        assert reasoning == "Step one"
        assert not openai_upstream.stream_finished(gate), "the reasoning waited for the upstream to finish"
        openai_upstream.release(gate)
        content, rest, _ = openai_stream(stream)
        assert (content, reasoning + rest) == ("Done", "Step one step two")

    @pytest.mark.parametrize("stream", [True, False])
    def test_ollama(self, separating, stream):
        client = ollama_client(separating, tokens=4)
        chat = client.chat(model=OTHER, messages=[{"role": "user", "content": "hi"}], stream=stream)
        generate = client.generate(model=OTHER, prompt="hi", stream=stream)
        if stream:
            assert ollama_stream(chat)[:2] == ollama_stream(generate)[:2] == (ANSWER, REASONING)
        else:
            assert (chat.message.content, chat.message.thinking) == (ANSWER, REASONING)
            assert (generate.response, generate.thinking) == (ANSWER, REASONING)

    def test_reasoning_the_upstream_separated_is_left_as_it_is(self, separating):
        client = openai_client(separating, reasoning="field")
        content, reasoning, _ = openai_stream(ask(client, OTHER, True))
        assert (content, reasoning) == (ANSWER, REASONING)
        message = ask(client, OTHER, False).choices[0].message
        assert (message.content, message.reasoning_content) == (ANSWER, REASONING)
        chat = ollama_client(separating, reasoning="field").chat(model=OTHER, messages=[{"role": "user", "content": "hi"}], stream=False)
        assert (chat.message.content, chat.message.thinking) == (ANSWER, REASONING)


LONG_THOUGHT = "<think>" + " ".join(["step"] * 24) + "</think>\n\n" + ANSWER


class TestKeepAlive:
    """Item 4: SSE comments while reasoning is withheld; the openai client does not notice them."""

    @pytest.mark.parametrize("model, text", [(OTHER, LONG_THOUGHT), (OPEN, LONG_THOUGHT.removeprefix("<think>"))], ids=["think-block", "template-opened"])
    def test_comments_while_withholding(self, dropping, model, text):
        raw = open_stream(dropping, "/v1/chat/completions", {"model": model, "messages": [], "stream": True}, text=text, delay=0.05).read()
        comments = [event for event in raw.split(b"\n\n") if event == b": keep-alive"]
        assert len(comments) >= 2, raw
        assert sse_text(raw) == ANSWER
        assert data_objects(raw)[-1] == "[DONE]"

    def test_openai_client_is_unaffected(self, dropping):
        content, _, _ = openai_stream(ask(openai_client(dropping, text=LONG_THOUGHT, delay=0.05), OTHER, True))
        assert content == ANSWER

    def test_none_while_the_answer_flows(self, dropping):
        raw = open_stream(dropping, "/v1/chat/completions", {"model": OTHER, "messages": [], "stream": True}, text=ANSWER * 4, delay=0.05).read()
        assert b": keep-alive" not in raw

    def test_ndjson_gets_none(self, dropping):
        body = {"model": OTHER, "messages": [{"role": "user", "content": "hi"}]}
        raw = open_stream(dropping, "/api/chat", body, text=LONG_THOUGHT, delay=0.05).read()
        assert b"keep-alive" not in raw
        assert "".join(json.loads(line)["message"]["content"] for line in raw.splitlines()) == ANSWER


class TestEcho:
    """Item 5: with ECHO_REQUESTED_MODEL on, answers name the model the client asked for."""

    def test_openai(self, dropping):
        client = openai_client(dropping)
        assert ask(client, OTHER, False).model == OTHER
        assert openai_stream(ask(client, OTHER, True))[2] == {OTHER}
        assert openai_stream(ask(openai_client(dropping, text=TEMPLATE_OPENED), OPEN, True))[2] == {OPEN}
        assert client.completions.create(model=OTHER, prompt="hi").model == OTHER
        assert client.embeddings.create(model="claude-x", input="hi").model == "claude-x"

    def test_ollama(self, dropping):
        client = ollama_client(dropping)
        assert ollama_stream(client.chat(model=OTHER, messages=[{"role": "user", "content": "hi"}], stream=True))[2] == {OTHER}
        assert client.generate(model=OTHER, prompt="hi", stream=False).model == OTHER

    def test_responses_api(self, dropping):
        client = openai_client(dropping)
        assert client.responses.create(model=OTHER, input="hi").model == OTHER
        events = list(client.responses.create(model=OTHER, input="hi", stream=True))
        named = [event.response.model for event in events if hasattr(event, "response")]
        assert named and set(named) == {OTHER}

    def test_unmapped_and_off(self, dropping, separating):
        assert ask(openai_client(dropping), "unmapped-model", False).model == "unmapped-model"
        assert ask(openai_client(separating), OTHER, False).model == "llama3-70b"
        assert openai_stream(ask(openai_client(separating), OTHER, True))[2] == {"llama3-70b"}


def rows(proxy, marker: str) -> list[dict]:
    """The finished rows of the requests whose body holds marker."""
    deadline = time.monotonic() + 10
    while True:
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
        conn.request("GET", f"/api/logs?q={marker}")
        found = json.loads(conn.getresponse().read())["logs"]
        if found and all(row["state"] != "inflight" for row in found):
            return found
        assert time.monotonic() < deadline, f"no finished row for {marker}"
        time.sleep(0.05)


def row(proxy, marker: str) -> dict:
    found = rows(proxy, marker)
    assert len(found) == 1
    return found[0]


class TestRows:
    """What the log records: reasoning_chars, lone_think_close, response_model, reasoned anyway."""

    @pytest.mark.parametrize("stream", [True, False])
    def test_lone_close_and_response_model(self, dropping, stream):
        marker = uuid.uuid4().hex
        result = ask(openai_client(dropping, text=TEMPLATE_OPENED), OTHER, stream, prompt=marker)
        if stream:
            openai_stream(result)
        found = row(dropping, marker)
        assert found["lone_think_close"] is True
        assert (found["requested_model"], found["routed_model"], found["response_model"]) == (OTHER, "llama3-70b", "llama3-70b")
        assert found["reasoning_chars"] == (0 if stream else len(REASONING))

    @pytest.mark.parametrize("stream", [True, False])
    def test_reasoned_anyway(self, dropping, stream):
        marker = uuid.uuid4().hex
        parts = ollama_client(dropping, tokens=5).chat(model=OPEN, messages=[{"role": "user", "content": marker}], stream=stream)
        if stream:
            list(parts)
        found = row(dropping, marker)
        assert found["reasoned_anyway"] is True
        assert found["reasoning_chars"] == len(REASONING)
        assert found["lone_think_close"] is False

    def test_thinking_that_stayed_off(self, dropping):
        marker = uuid.uuid4().hex
        ask(openai_client(dropping, text="<think>\n\n</think>\n\n" + ANSWER), OTHER, False, prompt=marker)
        found = row(dropping, marker)
        assert found["reasoned_anyway"] is False


def test_settings_given_with_set(rerouter, ollama_upstream):
    args = ["--set", "strip_thinking=separate", "--set", "echo_requested_model=true", "--set", "disable_thinking=think_false"]
    proxy = rerouter("mitmdump", args=args)
    chat = ollama_client(proxy).chat(model=OTHER, messages=[{"role": "user", "content": "hi"}], stream=False)
    assert (chat.message.content, chat.message.thinking, chat.model) == (ANSWER, REASONING, OTHER)
    assert ollama_upstream.requests[-1]["json"]["think"] is False
