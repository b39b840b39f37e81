import json

import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from rerouter.framing import EventStream
from rerouter.meter import OLLAMA_COUNTS
from rerouter.meter import OPENAI_COUNTS
from rerouter.meter import RECENT_READS
from rerouter.meter import StreamMeter
from rerouter.meter import ask_for_usage
from rerouter.meter import read_usage
from rerouter.thinking import OllamaChunkEditor
from rerouter.thinking import OpenAIChunkEditor
from tests.helpers import USAGE
from tests.helpers import chat_chunk
from tests.helpers import chunked
from tests.helpers import ollama_line
from tests.helpers import openai_events
from tests.helpers import run
from tests.helpers import sse
from tests.helpers import usage_event

STARTED = 1000.0


class Clock:
    """time.time() as the meter sees it, moved by the test."""

    def __init__(self, now: float = STARTED) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    clock = Clock()
    monkeypatch.setattr("rerouter.meter.time.time", clock)
    return clock


class TestReadUsage:
    @pytest.mark.parametrize(
        "body, counts",
        [
            ({"choices": [], "usage": USAGE}, (12, 30)),
            ({"usage": {**USAGE, "prompt_tokens_details": {"cached_tokens": 3}, "completion_tokens_details": {"reasoning_tokens": 9}}}, (12, 30)),
            ({"done": True, "prompt_eval_count": 7, "eval_count": 21, "eval_duration": 5}, (7, 21)),
            ({"object": "response", "usage": {"input_tokens": 4, "output_tokens": 5, "total_tokens": 9}}, (4, 5)),
            ({"object": "list", "data": [], "usage": {"prompt_tokens": 3, "total_tokens": 3}}, (3, None)),
            ({"choices": [{"message": {"content": "no counts"}}]}, (None, None)),
            ({"choices": [], "usage": None}, (None, None)),
        ],
    )
    def test_counts(self, body, counts):
        assert read_usage(json.dumps(body).encode()) == counts

    def test_text_that_looks_like_counts_is_text(self):
        body = {"choices": [{"message": {"content": '"completion_tokens": 99, "eval_count": 98'}}]}
        assert read_usage(json.dumps(body).encode()) == (None, None)

    def test_no_number_is_a_count(self):
        assert read_usage(b'{"usage": {"prompt_tokens": 1e3, "completion_tokens": 12345678901234567890}}') == (None, None)
        assert read_usage(b'{"usage": {"prompt_tokens": -1, "completion_tokens": "5"}}') == (None, None)


class TestAskForUsage:
    @pytest.mark.parametrize(
        "options, expected",
        [
            (None, {"include_usage": True}),
            ({"include_usage": False}, {"include_usage": True}),
            ({"continuous_usage_stats": False}, {"continuous_usage_stats": False, "include_usage": True}),
        ],
    )
    def test_asks(self, options, expected):
        body = {"model": "m", "stream": True, **({} if options is None else {"stream_options": options})}
        assert ask_for_usage(body)
        assert body["stream_options"] == expected

    @pytest.mark.parametrize(
        "body",
        [
            {"stream": True, "stream_options": {"include_usage": True}},
            {"stream": False},
            {},
            {"stream": "yes"},
            {"stream": True, "stream_options": "usage please"},
        ],
    )
    def test_leaves_alone(self, body):
        before = json.dumps(body)
        assert not ask_for_usage(body)
        assert json.dumps(body) == before


def metered(kind: str, editor, drop_usage: bool = False) -> tuple[EventStream, StreamMeter]:
    """A meter as Figures sets it up: looking for the stream's own count keys."""
    meter = StreamMeter(STARTED, drop_usage, OPENAI_COUNTS if kind == "sse" else OLLAMA_COUNTS)
    stream = EventStream.sse(editor, meter=meter) if kind == "sse" else EventStream.ndjson(editor, meter=meter)
    return stream, meter


class TestStreamMeter:
    @settings(max_examples=100, deadline=None)
    @given(st.lists(st.integers(1, 90), max_size=8), st.booleans())
    def test_the_usage_event_the_client_did_not_ask_for_is_removed(self, sizes, strip):
        events = openai_events("Hello", " world")
        stream, meter = metered("sse", OpenAIChunkEditor() if strip else None, drop_usage=True)
        output = b"".join(run(stream, chunked(b"".join(events), sizes)))
        without_usage = b"".join(event for event in events if b'"choices": []' not in event)
        assert output == without_usage
        assert (meter.prompt_tokens, meter.completion_tokens) == (12, 30)

    @settings(max_examples=50, deadline=None)
    @given(st.lists(st.integers(1, 90), max_size=8))
    def test_a_client_that_asked_for_usage_gets_it(self, sizes):
        data = b"".join(openai_events("Hello", " world"))
        stream, meter = metered("sse", None)
        assert b"".join(run(stream, chunked(data, sizes))) == data
        assert (meter.prompt_tokens, meter.completion_tokens) == (12, 30)

    def test_a_block_passes_whole_unless_an_event_must_come_out(self):
        block = b"".join(openai_events("Hello", " world"))
        dropping = StreamMeter(STARTED, drop_usage=True)
        assert not dropping.passing(block)
        assert dropping.completion_tokens is None and not dropping.recent  # nothing noted: the events come next
        keeping = StreamMeter(STARTED)
        assert keeping.passing(block)
        assert (keeping.prompt_tokens, keeping.completion_tokens) == (12, 30)

    def test_a_block_that_passes_is_delivered_at_once(self, clock):
        meter = StreamMeter(STARTED)
        clock.now = STARTED + 0.2
        assert meter.passing(sse(chat_chunk(role="assistant", content="")))
        assert (meter.upstream_first_token_ms, meter.first_token_ms) == (None, None)
        clock.now = STARTED + 0.3
        assert meter.passing(sse(chat_chunk("Hello")))
        assert (meter.upstream_first_token_ms, meter.first_token_ms) == (300.0, 300.0)
        clock.now = STARTED + 0.4
        assert meter.passing(sse(chat_chunk(" world")))
        assert (meter.upstream_first_token_ms, meter.first_token_ms) == (300.0, 300.0)
        assert [moment for moment, _ in meter.recent] == [STARTED + 0.3, STARTED + 0.4]

    def test_times_from_the_request_start(self, clock):
        stream, meter = metered("sse", OpenAIChunkEditor())
        clock.now = STARTED + 0.1
        stream(sse(chat_chunk(role="assistant", content="")))
        assert meter.upstream_first_token_ms is None
        clock.now = STARTED + 0.25
        stream(sse(chat_chunk("<think>Let me see")))
        assert meter.upstream_first_token_ms == 250.0
        assert meter.first_token_ms is None  # the reasoning was withheld
        clock.now = STARTED + 0.5
        stream(sse(chat_chunk("</think>")) + sse(chat_chunk("\n\nThe answer")))
        clock.now = STARTED + 1.25
        stream(sse(chat_chunk(" is 42.")))
        clock.now = STARTED + 1.3
        stream(sse(chat_chunk(finish_reason="stop")) + sse(usage_event()) + sse("[DONE]"))
        stream(b"")
        assert meter.upstream_first_token_ms == 250.0
        assert meter.first_token_ms == 500.0
        assert meter.tokens_per_s == 30.0  # 30 completion tokens from 0.25 s to 1.25 s

    @pytest.mark.parametrize("quiet_reads, rate", [(3, 25.0), (RECENT_READS, None)])
    def test_the_last_token_is_the_newest_read_that_holds_one(self, clock, quiet_reads, rate):
        stream, meter = metered("sse", None)
        for moment, text in ((0.2, "Hello"), (1.4, " world")):
            clock.now = STARTED + moment
            stream(sse(chat_chunk(text)))
        for i in range(quiet_reads):  # reads with no token: the finish event, comments
            clock.now += 0.5
            stream(sse(chat_chunk(finish_reason="stop")) if i == 0 else b": keep-alive\n\n")
        clock.now += 0.5
        stream(sse(usage_event()))
        stream(sse("[DONE]"))
        assert (meter.completion_tokens, meter.tokens_per_s) == (30, rate)

    def test_usage_on_every_event(self, clock):
        stream, meter = metered("sse", None)
        for i in range(1, 4):
            clock.now = STARTED + i
            stream(sse({**chat_chunk(f" {i}"), "usage": {"prompt_tokens": 5, "completion_tokens": i}}))
        assert (meter.completion_tokens, meter.tokens_per_s) == (3, 1.5)

    def test_reasoning_the_upstream_separated_is_a_token_not_an_answer(self, clock):
        stream, meter = metered("ndjson", None)
        clock.now = STARTED + 0.125
        stream(ollama_line(thinking="Hmm"))
        clock.now = STARTED + 0.5
        stream(ollama_line(content="Hi"))
        clock.now = STARTED + 0.625
        stream(ollama_line(content="!") + ollama_line(done=True, prompt_eval_count=5, eval_count=10))
        assert (meter.upstream_first_token_ms, meter.first_token_ms) == (125.0, 500.0)
        assert (meter.prompt_tokens, meter.completion_tokens, meter.tokens_per_s) == (5, 10, 20.0)

    def test_tool_call_arguments_are_answer_tokens(self, clock):
        stream, meter = metered("sse", OpenAIChunkEditor())
        clock.now = STARTED + 0.2
        call = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": ""}}
        stream(sse(chat_chunk(role="assistant", tool_calls=[call])))
        assert meter.upstream_first_token_ms is None
        clock.now = STARTED + 0.3
        stream(sse(chat_chunk(tool_calls=[{"index": 0, "function": {"arguments": '{"city": "Paris"}'}}])))
        assert (meter.upstream_first_token_ms, meter.first_token_ms) == (300.0, 300.0)

    def test_responses_api_stream(self, clock):
        stream, meter = metered("sse", None)
        clock.now = STARTED + 0.1
        stream(sse({"type": "response.created", "response": {"status": "in_progress", "text": {"format": {"type": "text"}}, "usage": None}}))
        assert meter.upstream_first_token_ms is None
        clock.now = STARTED + 0.2
        stream(sse({"type": "response.output_text.delta", "delta": "Hi"}))
        clock.now = STARTED + 0.7
        stream(sse({"type": "response.output_text.delta", "delta": " there"}))
        stream(sse({"type": "response.completed", "response": {"usage": {"input_tokens": 4, "output_tokens": 10}}}))
        assert (meter.upstream_first_token_ms, meter.first_token_ms) == (200.0, 200.0)
        assert (meter.prompt_tokens, meter.completion_tokens, meter.tokens_per_s) == (4, 10, 20.0)

    def test_unknown_figures_stay_null(self, clock):
        stream, meter = metered("sse", OpenAIChunkEditor())
        clock.now = STARTED + 0.2
        run(stream, openai_events("Hello", " world", usage=False))
        assert meter.first_token_ms == 200.0
        assert (meter.prompt_tokens, meter.completion_tokens, meter.tokens_per_s) == (None, None, None)

    def test_no_rate_from_a_single_read(self, clock):
        stream, meter = metered("ndjson", OllamaChunkEditor())
        stream(ollama_line(content="Hi") + ollama_line(done=True, prompt_eval_count=5, eval_count=10))
        assert (meter.completion_tokens, meter.tokens_per_s) == (10, None)

    def test_an_answer_with_no_text_has_no_first_token(self):
        stream, meter = metered("ndjson", OllamaChunkEditor())
        run(stream, [ollama_line(thinking="only thinking"), ollama_line(done=True, eval_count=3)])
        assert meter.upstream_first_token_ms is not None
        assert meter.first_token_ms is None
