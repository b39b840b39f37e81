import gzip
import json
import logging
import re
import zlib

import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from rerouter.framing import MAX_HELD
from rerouter.framing import MAX_READ_PLAIN
from rerouter.framing import EventStream
from rerouter.framing import LineFramer
from rerouter.framing import SSEFramer
from rerouter.framing import ends_with_last_event
from rerouter.framing import supports_encoding
from rerouter.thinking import ANSWER
from rerouter.thinking import KEEP
from rerouter.thinking import REASONING
from rerouter.thinking import OllamaChunkEditor
from rerouter.thinking import OpenAIChunkEditor
from rerouter.thinking import Reasoning
from rerouter.thinking import split_think
from rerouter.thinking import strip_think
from tests.helpers import chat_chunk
from tests.helpers import chunked
from tests.helpers import data_objects
from tests.helpers import run
from tests.helpers import sse
from tests.helpers import sse_text

FRAGMENTS = ["<think>", "</think>", "<THINK>", "</Think>", "<thi", "</th", "<", ">", " ", "\n\n", "Hello", "é", "x y", "&", "😀"]


def go_json(obj: dict) -> bytes:
    """JSON as Go's encoder writes it: <, > and & escaped."""
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026").encode()


def parse_sse(output: bytes) -> list[list[bytes]]:
    """The data values of every event; fails unless each event is terminated and its data is JSON or [DONE]."""
    assert re.search(rb"\r?\n\r?\n\Z", output)
    events = []
    for event in re.split(rb"\r?\n\r?\n", output)[:-1]:
        data = [line[6:] for line in event.splitlines() if line.startswith(b"data: ")]
        for value in data:
            if value != b"[DONE]":
                json.loads(value)
        events.append(data)
    return events


def parse_ndjson(output: bytes) -> list[dict]:
    assert output.endswith(b"\n")
    return [json.loads(line) for line in output.splitlines()]


def framed(framer: SSEFramer | LineFramer, *reads: bytes) -> list[bytes]:
    """The events or lines the framer cuts from the reads, in order."""
    return [event for data in reads for event in framer.split(framer.feed(data))]


class TestSSEFramer:
    @pytest.mark.parametrize("end", [b"\n\n", b"\r\n\r\n", b"\r\n\n", b"\n\r\n"])
    def test_event_endings(self, end):
        framer = SSEFramer()
        assert framed(framer, b"data: 1" + end + b"data: 2") == [b"data: 1" + end]
        assert framer.rest() == b"data: 2"
        assert framer.rest() == b""

    def test_several_events_per_chunk(self):
        framer = SSEFramer()
        assert framed(framer, b": ping\n\ndata: a\n\nevent: x\ndata: b\n\n") == [b": ping\n\n", b"data: a\n\n", b"event: x\ndata: b\n\n"]

    def test_a_whole_read_is_the_block_itself(self):
        data = b"data: a\n\ndata: b\n\n"
        assert SSEFramer().feed(data) is data

    def test_the_block_ends_at_the_last_complete_event(self):
        framer = SSEFramer()
        assert framer.feed(b"data: a\n\ndata: b\n\ndata: c") == b"data: a\n\ndata: b\n\n"
        assert framer.feed(b"\n") == b""
        assert framer.feed(b"\ndata: d") == b"data: c\n\n"
        assert framer.held == len(b"data: d")

    @pytest.mark.parametrize("newline", [b"\n", b"\r\n"])
    def test_one_byte_chunks(self, newline):
        stream = (b"data: {}" + newline + newline) * 3 + b"id: 1" + newline + b"data: x" + newline + newline
        framer = SSEFramer()
        events = framed(framer, *(stream[i : i + 1] for i in range(len(stream))))
        assert b"".join(events) == stream
        assert len(events) == 4
        assert framer.rest() == b""

    def test_multibyte_characters_split(self):
        stream = 'data: {"content":"é😀"}\n\n'.encode()
        assert framed(SSEFramer(), stream[:18], stream[18:21], stream[21:]) == [stream]

    @given(st.lists(st.sampled_from([b"data: x", b"\n", b"\r\n", b": c", b"\r"]), max_size=30), st.lists(st.integers(1, 7), max_size=10))
    def test_chunking_never_changes_events(self, parts, sizes):
        stream = b"".join(parts)
        whole = SSEFramer()
        expected = framed(whole, stream) + [whole.rest()]
        framer = SSEFramer()
        assert framed(framer, *chunked(stream, sizes)) + [framer.rest()] == expected


class TestLineFramer:
    def test_lines(self):
        framer = LineFramer()
        assert framed(framer, b'{"a":1}\n{"b"') == [b'{"a":1}\n']
        assert framed(framer, b":2}\r\n\n{") == [b'{"b":2}\r\n', b"\n"]
        assert framer.rest() == b"{"
        assert framer.rest() == b""

    def test_one_byte_chunks(self):
        stream = '{"x":"é"}\n{"y":2}\r\n'.encode()
        assert framed(LineFramer(), *(stream[i : i + 1] for i in range(len(stream)))) == ['{"x":"é"}\n'.encode(), b'{"y":2}\r\n']

    def test_an_unterminated_end_is_a_line(self):
        assert LineFramer.split(b'{"a":1}\n{"b":2}') == [b'{"a":1}\n', b'{"b":2}']


def test_supports_encoding():
    for encoding in (None, "", "identity", "gzip", "GZIP", "x-gzip", "deflate", " deflate "):
        assert supports_encoding(encoding)
    for encoding in ("br", "zstd", "gzip, br", "compress"):
        assert not supports_encoding(encoding)


class TestSSEStream:
    def test_plain_stream_is_byte_identical(self):
        stream = b": keep-alive\n\n" + sse(chat_chunk("", role="assistant")) + sse(chat_chunk("Hi"))
        stream += b"event: ping\n\nretry: 100\n\n" + sse("[DONE]")
        assert b"".join(run(EventStream.sse(OpenAIChunkEditor()), chunked(stream, [5]))) == stream

    def test_strips_and_drops(self):
        stream = sse(chat_chunk("<think>")) + sse(chat_chunk("hmm")) + sse(chat_chunk("</think>\n\nHi")) + sse("[DONE]")
        output = run(EventStream.sse(OpenAIChunkEditor()), [stream])
        compact = json.dumps(chat_chunk("Hi"), separators=(",", ":")).encode()
        assert b"".join(output) == b"data: " + compact + b"\n\n" + b"data: [DONE]\n\n"

    def test_event_and_id_lines_preserved(self):
        data = json.dumps(chat_chunk("<think>x</think>A")).encode()
        event = b"event: delta\r\nid: 7\r\n: note\r\ndata: " + data + b"\r\nretry: 5\r\n\r\n"
        [output] = run(EventStream.sse(OpenAIChunkEditor()), [event])
        lines = output.split(b"\r\n")
        assert lines[:3] == [b"event: delta", b"id: 7", b": note"]
        assert json.loads(lines[3][6:])["choices"][0]["delta"]["content"] == "A"
        assert lines[4:] == [b"retry: 5", b"", b""]

    def test_multiline_data(self):
        event = b'data: {"choices":[{"index":0,\ndata:"delta":{"content":"<think>x</think>A"}}]}\n\n'
        assert run(EventStream.sse(OpenAIChunkEditor()), [event]) == [b'data: {"choices":[{"index":0,"delta":{"content":"A"}}]}\n\n']

    @pytest.mark.parametrize(
        "event", [b"data: <not json>\n\n", b"data: [1, 2]\n\n", b'data: "<think>"\n\n', b"data: \xff<\n\n", b"data:<\n\n"]
    )
    def test_non_json_data_passes(self, event):
        assert run(EventStream.sse(OpenAIChunkEditor()), [event]) == [event]

    def test_done_sends_pending_text_first(self):
        stream = sse(chat_chunk("a <th")) + sse("[DONE]")
        output = run(EventStream.sse(OpenAIChunkEditor()), chunked(stream, [1]))
        events = parse_sse(b"".join(output))
        assert [json.loads(data[0])["choices"][0]["delta"]["content"] for data in events[:2]] == ["a ", "<th"]
        assert events[2] == [b"[DONE]"]

    def test_unterminated_last_event(self):
        tail = b"data: " + json.dumps(chat_chunk("<think>x</think>B")).encode()
        output = run(EventStream.sse(OpenAIChunkEditor()), [sse(chat_chunk("A")), tail])
        assert output[-1].startswith(b"data: {") and not output[-1].endswith(b"\n")
        assert json.loads(output[-1][6:])["choices"][0]["delta"]["content"] == "B"

    def test_unterminated_last_event_before_pending_text(self):
        tail = b"data: " + json.dumps(chat_chunk("B <")).encode() + b"\n"
        output = b"".join(run(EventStream.sse(OpenAIChunkEditor()), [tail]))
        events = parse_sse(output)
        assert [json.loads(data[0])["choices"][0]["delta"]["content"] for data in events] == ["B ", "<"]

    def test_never_returns_empty_bytes(self):
        stream = EventStream.sse(OpenAIChunkEditor())
        assert stream(b"da") == []
        assert stream(b"ta: ") == []
        assert stream(b"") == [b"data: "]
        assert EventStream.sse(OpenAIChunkEditor())(b"") == []

    @pytest.mark.parametrize("encoding", ["gzip", "x-gzip", "deflate", "raw-deflate"])
    def test_compressed(self, encoding):
        stream = sse(chat_chunk("<think>x</think>A")) + sse(chat_chunk(" b")) + sse("[DONE]")
        if encoding == "raw-deflate":
            compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
            body = compressor.compress(stream) + compressor.flush()
            encoding = "deflate"
        elif encoding == "deflate":
            body = zlib.compress(stream)
        else:
            body = gzip.compress(stream)
        output = b"".join(run(EventStream.sse(OpenAIChunkEditor(), encoding), chunked(body, [1, 3])))
        assert [json.loads(data[0])["choices"][0]["delta"]["content"] for data in parse_sse(output)[:2]] == ["A", " b"]

    def test_corrupt_compression_passes_through(self, caplog):
        body = gzip.compress(sse(chat_chunk("A")))
        corrupt = body[:10] + b"\x00garbage" + body[10:]
        with caplog.at_level(logging.ERROR):
            output = run(EventStream.sse(OpenAIChunkEditor(), "gzip"), [corrupt, b"more"])
        assert b"".join(output) == corrupt + b"more"
        assert len(caplog.records) == 1

    def test_go_escaped_tags(self):
        stream = b"data: " + go_json(chat_chunk("<think>x</think>Hi")) + b"\n\n"
        assert b"\\u003cthink" in stream
        [output] = run(EventStream.sse(OpenAIChunkEditor()), [stream])
        assert json.loads(output[6:])["choices"][0]["delta"]["content"] == "Hi"

    def test_editor_failure_passes_rest_through(self, caplog):
        class Failing(OpenAIChunkEditor):
            calls = 0

            def edit(self, event):
                self.calls += 1
                if self.calls == 2:
                    raise RuntimeError("boom")
                return super().edit(event)

        stream = sse(chat_chunk("<think>a</think>A")) + sse(chat_chunk("<b>")) + sse(chat_chunk("<think>c")) + b"data: x"
        with caplog.at_level(logging.ERROR):
            output = b"".join(run(EventStream.sse(Failing()), chunked(stream, [7])))
        first = sse(chat_chunk("<think>a</think>A"))
        assert output.endswith(stream[len(first) :])
        assert json.loads(output[6 : output.index(b"\n")])["choices"][0]["delta"]["content"] == "A"
        assert len(caplog.records) == 1

    def test_one_element_per_read(self):
        """mitmproxy writes each returned element as a chunk of its own: one per read keeps that cost flat."""
        body = b"".join(sse(chat_chunk(f"t{i} ")) for i in range(20)) + sse(chat_chunk("<think>x</think>end")) + sse("[DONE]")
        stream = EventStream.sse(OpenAIChunkEditor())
        assert len(stream(body)) == 1
        assert stream(b"") == []

    def test_stripped(self):
        stream = EventStream.sse(OpenAIChunkEditor())
        run(stream, [sse(chat_chunk("Hi"))])
        assert not stream.stripped
        stream = EventStream.sse(OpenAIChunkEditor())
        run(stream, [sse(chat_chunk("<think></think>Hi"))])
        assert stream.stripped


class TestNDJSONStream:
    def test_plain_stream_is_byte_identical(self):
        stream = go_json({"message": {"role": "assistant", "content": "a > b & c"}, "done": False}) + b"\n\n" + b'{"done":true}\r\n'
        assert b"".join(run(EventStream.ndjson(OllamaChunkEditor()), chunked(stream, [3]))) == stream

    def test_go_escaped_chat(self):
        lines = [
            go_json({"message": {"role": "assistant", "content": text}, "done": False}) + b"\n"
            for text in ("<think>", "x", "</think>\n", "Hi")
        ]
        output = run(EventStream.ndjson(OllamaChunkEditor()), chunked(b"".join(lines), [1]))
        assert output == ['{"message":{"role":"assistant","content":"Hi"},"done":false}\n'.encode()]

    def test_thinking_field_removed(self):
        line = go_json({"message": {"role": "assistant", "content": "", "thinking": "hm"}, "done": False}) + b"\n"
        done = b'{"message":{"role":"assistant","content":""},"done":true}\n'
        assert run(EventStream.ndjson(OllamaChunkEditor()), [line + done]) == [done]

    def test_generate_done_flushes(self):
        lines = b'{"response":"a <th","done":false}\r\n{"response":"","done":true}\r\n'
        output = run(EventStream.ndjson(OllamaChunkEditor()), [lines])
        assert b"".join(output) == b'{"response":"a ","done":false}\r\n{"response":"<th","done":true}\r\n'

    def test_pending_text_sent_at_end_without_done(self):
        output = run(EventStream.ndjson(OllamaChunkEditor(), None), [b'{"model":"m","response":"a <"}'])
        assert b"".join(output) == b'{"model":"m","response":"a "}\n{"model":"m","response":"<","done":false}\n'

    def test_non_json_lines_pass(self):
        stream = b"not json <\n[1]\n\n"
        assert b"".join(run(EventStream.ndjson(OllamaChunkEditor()), [stream])) == stream

    def test_gzip(self):
        body = gzip.compress(b'{"response":"<think>x</think>A","done":true}\n')
        assert run(EventStream.ndjson(OllamaChunkEditor(), "gzip"), chunked(body, [2])) == [b'{"response":"A","done":true}\n']


def interleave(data, token_lists: list[list[str]]) -> list[tuple[int, str]]:
    """The tokens of every choice in one random order that keeps each choice's own order."""
    queues = [list(tokens) for tokens in token_lists]
    order = data.draw(st.permutations([index for index, tokens in enumerate(queues) for _ in tokens]))
    return [(index, queues[index].pop(0)) for index in order]


def tokens_of(data, text: str) -> list[str]:
    cuts = sorted(set(data.draw(st.lists(st.integers(1, max(len(text) - 1, 1)), max_size=len(text)))))
    return [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)]) if a < b]


answers = st.lists(st.sampled_from(FRAGMENTS), max_size=25).map("".join)
byte_chunks = st.lists(st.integers(1, 50), min_size=1, max_size=12) | st.just([1])


class TestWholeStreams:
    @settings(max_examples=150, deadline=None)
    @given(
        st.lists(answers, min_size=1, max_size=2),
        byte_chunks,
        st.booleans(),
        st.sampled_from(["\n", "\r\n"]),
        st.sampled_from([Reasoning.DROP, Reasoning.SEPARATE]),
        st.booleans(),
        st.data(),
    )
    def test_openai(self, texts, sizes, with_usage, newline, reasoning, open_start, data):
        tokens = interleave(data, [tokens_of(data, text) for text in texts])
        choices = range(len(texts))
        body = b"".join(sse(chat_chunk("", index=index, role="assistant"), newline) for index in choices)
        body += b"".join(sse(chat_chunk(token, index=index), newline) for index, token in tokens)
        body += b"".join(sse(chat_chunk(index=index, finish_reason="stop"), newline) for index in choices)
        if with_usage:
            body += sse({"id": "chatcmpl-1", "choices": [], "usage": {"total_tokens": 5}}, newline)
        body += sse("[DONE]", newline)

        output = run(EventStream.sse(OpenAIChunkEditor(reasoning, open_start)), chunked(body, sizes))

        events = parse_sse(b"".join(output))
        assert events[-1] == [b"[DONE]"]
        chunks = [json.loads(data[0]) for data in events[:-1]]
        for index in choices:
            mine = [chunk["choices"][0] for chunk in chunks if chunk["choices"] and chunk["choices"][0]["index"] == index]
            assert delivered(choice["delta"] for choice in mine) == one_shot(texts[index], reasoning, open_start)
            assert mine[0]["delta"].get("role") == "assistant"
            assert [choice["delta"].get("role") for choice in mine].count("assistant") == 1
            assert [choice["finish_reason"] for choice in mine].count("stop") == 1
        assert sum("usage" in chunk for chunk in chunks) == with_usage

    @settings(max_examples=150, deadline=None)
    @given(answers, byte_chunks, st.sampled_from(["chat", "generate"]), st.sampled_from([Reasoning.DROP, Reasoning.SEPARATE]), st.booleans(), st.data())
    def test_ollama(self, text, sizes, api, reasoning, open_start, data):
        def line(token: str, done: bool) -> bytes:
            if api == "chat":
                obj = {"model": "qwen3", "message": {"role": "assistant", "content": token}, "done": done}
            else:
                obj = {"model": "qwen3", "response": token, "done": done}
            return go_json(obj) + b"\n"

        body = b"".join(line(token, False) for token in tokens_of(data, text)) + line("", True)

        output = run(EventStream.ndjson(OllamaChunkEditor(reasoning, open_start)), chunked(body, sizes))

        objects = parse_ndjson(b"".join(output))
        holders = [obj["message"] for obj in objects] if api == "chat" else objects
        assert delivered(holders, "response" if api == "generate" else "content", "thinking") == one_shot(text, reasoning, open_start)
        assert [obj["done"] for obj in objects].count(True) == 1
        assert objects[-1]["done"]

    @settings(max_examples=50, deadline=None)
    @given(answers, byte_chunks, st.data())
    def test_echo(self, text, sizes, data):
        body = sse(chat_chunk("", role="assistant")) + b"".join(sse(chat_chunk(token)) for token in tokens_of(data, text)) + sse("[DONE]")
        editor = OpenAIChunkEditor(echo="gpt-4")
        objects = parse_sse(b"".join(run(EventStream.sse(editor), chunked(body, sizes))))
        assert all(json.loads(event[0])["model"] == "gpt-4" for event in objects[:-1])
        assert editor.findings.model == "qwen3"


def delivered(holders, text_key: str = "content", reasoning_key: str = "reasoning_content") -> list[tuple[str, str]]:
    """The answer's pieces in the order the client received them, adjacent pieces of one kind merged."""
    pieces: list[tuple[str, str]] = []
    for holder in holders:
        for kind, key in ((REASONING, reasoning_key), (ANSWER, text_key)):
            text = holder.get(key) or ""
            if text and pieces and pieces[-1][0] == kind:
                pieces[-1] = (kind, pieces[-1][1] + text)
            elif text:
                pieces.append((kind, text))
    return pieces


def one_shot(text: str, reasoning: Reasoning, open_start: bool) -> list[tuple[str, str]]:
    """What the whole text gives in one go, as the client gets it."""
    if reasoning is Reasoning.SEPARATE:
        return split_think(text, open_start)
    answer = strip_think(text, open_start)
    return [(ANSWER, answer)] if answer else []


def test_fast_path_skips_parsing():
    editor = counting(OpenAIChunkEditor)()
    stream = sse(chat_chunk("plain")) + sse(chat_chunk("more")) + sse(chat_chunk("a < b")) + b"data: " + go_json(chat_chunk("a > b")) + b"\n\n"
    run(EventStream.sse(editor), [stream])
    assert editor.edits == 2  # the first, which names the model, and the one that may hold a tag
    assert editor.edit(chat_chunk("x")) is KEEP


def counting(editor: type) -> type:
    """The editor class, counting the events it is given to edit, so parsed."""

    class Counting(editor):
        edits = 0

        def edit(self, event):
            self.edits += 1
            return super().edit(event)

    return Counting


def raw_sse(obj: dict) -> bytes:
    """An SSE event with its JSON as most servers write it: non-ASCII text as it is."""
    return b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n"


class TestEventsInsideABlock:
    """An event that is the one just dropped as reasoning but for its text is dropped unparsed."""

    def test_dropped_without_parsing(self):
        editor = counting(OpenAIChunkEditor)()
        thoughts = ["Let", " me", " think", " é😀", " about", " it"]
        body = b"".join(raw_sse(chat_chunk(text)) for text in ["<think>", *thoughts, "</think>", "Hi"]) + sse("[DONE]")
        output = run(EventStream.sse(editor), [body])
        assert sse_text(b"".join(output)) == "Hi"
        assert editor.findings.reasoning_chars == len("".join(thoughts))
        assert editor.edits == 4  # <think>, the first thought, </think>, Hi

    def test_another_shape_is_parsed(self):
        editor = counting(OpenAIChunkEditor)()
        events = [chat_chunk("<think>"), chat_chunk("a"), chat_chunk("b", role="assistant"), chat_chunk("c\n"), chat_chunk("d")]
        output = run(EventStream.sse(editor), [b"".join(map(raw_sse, events))])
        assert [obj["choices"][0]["delta"] for obj in data_objects(b"".join(output))] == [{"role": "assistant", "content": ""}]
        assert editor.edits == 5  # a role that must go on, an escape (\n), and what follows each
        assert editor.findings.reasoning_chars == len("abc\nd")

    @settings(max_examples=200, deadline=None)
    @given(answers, byte_chunks, st.sampled_from([Reasoning.DROP, Reasoning.SEPARATE]), st.booleans(), st.data())
    def test_openai_as_if_every_event_were_parsed(self, text, sizes, reasoning, open_start, data):
        """Events of one shape against the same events made all different (each its own id), which are all parsed."""
        tokens = tokens_of(data, text)
        events = [chat_chunk("", role="assistant"), *map(chat_chunk, tokens), chat_chunk(finish_reason="stop")]
        results = []
        for shapes in ("one", "each its own"):
            numbered = events if shapes == "one" else [{**event, "id": f"chatcmpl-{i}"} for i, event in enumerate(events)]
            editor = OpenAIChunkEditor(reasoning, open_start)
            output = run(EventStream.sse(editor), chunked(b"".join(map(raw_sse, numbered)) + sse("[DONE]"), sizes))
            results.append((delivered(o["choices"][0]["delta"] for o in data_objects(b"".join(output)) if o != "[DONE]"), editor.findings))
        assert results[0] == results[1]
        assert results[0][0] == one_shot(text, reasoning, open_start)

    @settings(max_examples=100, deadline=None)
    @given(answers, byte_chunks, st.sampled_from([Reasoning.DROP, Reasoning.SEPARATE]), st.booleans(), st.data())
    def test_ollama_as_if_every_line_were_parsed(self, text, sizes, reasoning, open_start, data):
        """
        Lines of one shape, and lines stamped each with its own time as Ollama sends them, against
        lines numbered each with its own count, which the stream stops shaping and parses.
        """
        tokens = [*tokens_of(data, text), ""]
        results = []
        for extra in ("none", "a time stamp", "a number"):
            lines = []
            for i, token in enumerate(tokens):
                line = {"model": "qwen3", "created_at": f"2026-11-30T07:00:{i:02}Z" if extra == "a time stamp" else "2026-11-30T07:00:00Z"}
                line |= {"message": {"role": "assistant", "content": token}, "done": i == len(tokens) - 1}
                lines.append(line | ({"n": i} if extra == "a number" else {}))
            editor = OllamaChunkEditor(reasoning, open_start)
            body = b"".join(json.dumps(line, ensure_ascii=False, separators=(",", ":")).encode() + b"\n" for line in lines)
            output = run(EventStream.ndjson(editor), chunked(body, sizes))
            holders = [obj["message"] for obj in parse_ndjson(b"".join(output))]
            results.append((delivered(holders, "content", "thinking"), editor.findings))
        assert results[0] == results[1] == results[2]
        assert results[0][0] == one_shot(text, reasoning, open_start)

    def test_ollama_lines_dropped_whatever_their_time(self):
        editor = counting(OllamaChunkEditor)()
        tokens = ["<think>", "Let", " me", " see", "</think>", "Hi"]
        body = b"".join(
            json.dumps({"model": "qwen3", "created_at": f"2026-11-30T07:00:0{i}.{i * 7919}Z", "message": {"role": "assistant", "content": t}, "done": False}, separators=(",", ":")).encode() + b"\n"
            for i, t in enumerate(tokens)
        )
        output = run(EventStream.ndjson(editor), [body])
        assert [obj["message"]["content"] for obj in parse_ndjson(b"".join(output))] == ["Hi"]
        assert editor.findings.reasoning_chars == len("Let me see")
        assert editor.edits == 4  # <think>, Let, </think>, Hi


class TestFuzzFindings:
    """Regressions for what fuzz/fuzz_streams.py found (see fuzz/README.md)."""

    @staticmethod
    def run(stream: EventStream, reads: list[bytes]) -> list[bytes]:
        out = []
        for read in [*reads, b""]:
            out += stream(read)
        assert all(out)
        return out

    def test_multi_member_gzip(self):
        body = gzip.compress(b'{"response":"a","done":false}\n') + gzip.compress(b'{"response":"b","done":true}\n')
        out = self.run(EventStream.ndjson(OllamaChunkEditor(), "gzip"), [body])
        assert b"".join(out) == b'{"response":"a","done":false}\n{"response":"b","done":true}\n'

    def test_corrupt_compression_keeps_byte_order(self, caplog):
        c = zlib.compressobj(wbits=31)
        good = c.compress(b'data: {"x":1}\n\ndata: partial') + c.flush(zlib.Z_SYNC_FLUSH)
        out = self.run(EventStream.sse(OpenAIChunkEditor(), "gzip"), [good, b"\xff\xff\xff\xff"])
        assert b"".join(out) == b'data: {"x":1}\n\ndata: partial\xff\xff\xff\xff'

    def test_no_blank_line_before_held_back_text(self):
        out = self.run(EventStream.ndjson(OllamaChunkEditor()), [b'{"response":"a <","done":false}\n'])
        assert b"".join(out) == b'{"response":"a ","done":false}\n{"response":"<","done":false}\n'

    def test_out_of_range_numbers_stay_json(self):
        event = b'data: {"choices":[{"index":0,"delta":{"content":"<think>x</think>Hi"}}],"x":1e400}\n\n'
        out = self.run(EventStream.sse(OpenAIChunkEditor()), [event])
        assert json.loads(out[0][6:]) == {"choices": [{"index": 0, "delta": {"content": "Hi"}}], "x": None}

    def test_deep_nesting_does_not_stop_stripping(self):
        deep = b"[" * 5000 + b"]" * 5000
        first = b'data: {"choices":[{"index":0,"delta":{"content":"A"}}],"x":' + deep + b"}\n\n"
        second = b'data: {"choices":[{"index":0,"delta":{"content":"<think>secret</think>B"}}]}\n\n'
        out = self.run(EventStream.sse(OpenAIChunkEditor()), [first, second])
        assert b"".join(out).startswith(first) and b"secret" not in b"".join(out)

    def test_line_separators_stay_escaped(self):
        line = b'{"model":"m","response":"<think>x</think>a\\u2028b\\u2029c\\u0085d","done":true}\n'
        out = self.run(EventStream.ndjson(OllamaChunkEditor()), [line])
        assert out == [b'{"model":"m","response":"a\\u2028b\\u2029c\\u0085d","done":true}\n']
        assert json.loads(out[0])["response"] == "a\u2028b\u2029c\x85d"
        assert len(out[0].decode().splitlines()) == 1


@pytest.mark.parametrize(
    "tail, last",
    [
        (b'data: {"choices":[]}\n\ndata: [DONE]\n\n', True),
        (b"data: [DONE]\r\n\r\n", True),
        (b"data:[DONE]", True),
        (b'{"message":{"content":""},"done":true,"eval_count":3}\n', True),
        (b'{"message":{"content":"x"},"done": true}', True),
        (b'data: {"choices":[{"delta":{"content":"data: [DONE]"}}]}\n\n', False),
        (b'{"message":{"content":"\\"done\\":true"},"done":false}\n', False),
        (b'{"done":true}\n{"message":{"content":"more"},"done":false}\n', False),
        (b"", False),
    ],
)
def test_ends_with_last_event(tail, last):
    assert ends_with_last_event(tail) is last


class TestBounds:
    """A stream never makes the proxy hold more than MAX_HELD of one event, nor inflate one read past MAX_READ_PLAIN."""

    @pytest.mark.parametrize("kind", ["sse", "ndjson"])
    def test_an_endless_event_passes_on_unedited(self, kind, caplog):
        make, first = (EventStream.sse, sse(chat_chunk("<think>x</think>ok"))) if kind == "sse" else (
            EventStream.ndjson, go_json({"message": {"content": "<think>x</think>ok"}, "done": False}) + b"\n"
        )
        stream = make(OpenAIChunkEditor() if kind == "sse" else OllamaChunkEditor())
        endless = [b'data: {"x": "' if kind == "sse" else b'{"x": "'] + [b"<think>" + b"y" * 65536] * 20
        output = b"".join(run(stream, [first, *endless]))
        assert b"<think>x" not in output[:200], "events before the endless one are still edited"
        assert output.endswith(b"".join(endless)), "the endless event arrives as it came, from its start"
        assert stream.note == "stream passed on unedited: an event exceeded 1 MiB"
        assert "stream passed on unedited" in caplog.text

    def test_held_text_is_sent_before_the_unedited_rest(self):
        stream = EventStream.sse(OpenAIChunkEditor())
        endless = b'data: {"x": "' + b"y" * (MAX_HELD + 1)
        output = b"".join(run(stream, [sse(chat_chunk("answer <thi")), endless]))
        assert output.endswith(endless)
        assert sse_text_of(output[: -len(endless)]) == "answer <thi"

    def test_a_read_that_inflates_past_the_bound_ends_the_stream(self, caplog):
        stream = EventStream.sse(OpenAIChunkEditor(), "gzip")
        compressor = zlib.compressobj(9, wbits=31)
        first = compressor.compress(sse(chat_chunk("hello"))) + compressor.flush(zlib.Z_SYNC_FLUSH)
        bomb = compressor.compress(b"data: " + b"a" * (MAX_READ_PLAIN + 1)) + compressor.flush()
        output = run(stream, [first, bomb, b"more"])
        assert sse_text_of(b"".join(output)) == "hello"
        assert stream.note == "stream cut: a network read decompressed to more than 8 MiB"
        assert "stream cut" in caplog.text

    def test_a_compressible_stream_within_the_bound_is_edited(self):
        event = sse(chat_chunk("a" * 4000))
        data = gzip.compress(sse(chat_chunk("<think>x</think>")) + event * 1000)
        stream = EventStream.sse(OpenAIChunkEditor(), "gzip")
        output = b"".join(run(stream, [data]))
        assert sse_text_of(output) == "a" * 4000 * 1000 and stream.note is None


def sse_text_of(raw: bytes) -> str:
    events = [json.loads(line[6:]) for line in raw.split(b"\n") if line.startswith(b"data: {")]
    return "".join(c["delta"].get("content") or "" for e in events for c in e["choices"])
