import copy

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rerouter.thinking import CHANGED
from rerouter.thinking import DROP
from rerouter.thinking import KEEP
from rerouter.thinking import OllamaChunkEditor
from rerouter.thinking import OpenAIChunkEditor
from rerouter.thinking import ThinkFilter
from rerouter.thinking import may_hold_reasoning
from rerouter.thinking import strip_response
from rerouter.thinking import strip_think
from tests.conftest import chat_chunk

FRAGMENTS = ["<think>", "</think>", "<THINK>", "</Think>", "<thi", "</thi", "<", ">", " ", "\n", "a", "é", "x y", "think"]


def feed_all(pieces: list[str]) -> str:
    think = ThinkFilter()
    return "".join(think.feed(piece) for piece in pieces) + think.flush()


class TestThinkFilter:
    @pytest.mark.parametrize(
        "text, expected",
        [
            ("<think>reasoning</think>Answer", "Answer"),
            ("<THINK>x</Think>Answer", "Answer"),
            ("<think>x</THINK>Answer", "Answer"),
            ("a<think>1</think>b<think>2</think>c", "abc"),
            ("<think>a<think>b</think>c</think>", "c</think>"),
            ("Before <think>x</think>\n\n  After", "Before After"),
            ("Hello\n\n<think>x</think>", "Hello\n\n"),
            ("lone </think> stays", "lone </think> stays"),
            ("a < b and c <think >", "a < b and c <think >"),
            ('<think id="1">x</think>', '<think id="1">x</think>'),
            ("  spaced   text \n", "  spaced   text \n"),
            ("<think>never closed", ""),
            ("ends with <thi", "ends with <thi"),
            ("ends with <", "ends with <"),
            ("", ""),
        ],
    )
    def test_one_shot(self, text, expected):
        assert strip_think(text) == expected

    def test_tags_split_one_character_per_feed(self):
        text = "Hi <think>deep</think>\n there <THINK>more</THINK>!"
        assert feed_all(list(text)) == "Hi there !"

    def test_whitespace_after_close_across_feeds(self):
        assert feed_all(["<think>x</think>", "\n\n", " ", "Hello"]) == "Hello"

    def test_tokens_keep_their_spaces(self):
        assert feed_all(["Hello", " world", "\n", "  next"]) == "Hello world\n  next"

    def test_holds_back_only_a_possible_tag(self):
        think = ThinkFilter()
        assert think.feed("a <th") == "a "
        assert think.feed("e") == "<the"
        assert think.feed("<") == ""
        assert think.feed("/think>") == "</think>"

    def test_closing_tag_prefix_inside_block(self):
        think = ThinkFilter()
        assert think.feed("<think>a </th") == ""
        assert think.feed("ought") == ""
        assert think.feed("</think>b") == "b"

    def test_block_text_is_not_accumulated(self):
        think = ThinkFilter()
        think.feed("<think>")
        for _ in range(1000):
            think.feed("some reasoning ")
        assert think._held == ""

    def test_partial_tag_released_at_flush(self):
        think = ThinkFilter()
        assert think.feed("x <thi") == "x "
        assert think.flush() == "<thi"

    def test_unclosed_block_dropped_at_flush(self):
        think = ThinkFilter()
        assert think.feed("ok <think>abc </thin") == "ok "
        assert think.flush() == ""

    def test_stripped(self):
        think = ThinkFilter()
        think.feed("a < b")
        assert not think.stripped
        think.feed("<think></think>")
        assert think.stripped

    def test_idle(self):
        think = ThinkFilter()
        assert think.idle
        think.feed("<think>")
        assert not think.idle
        think.feed("</think>")
        assert not think.idle  # still skipping whitespace
        think.feed("\n")
        assert not think.idle
        think.feed("x")
        assert think.idle
        think.feed("<")
        assert not think.idle
        think.feed(" ")
        assert think.idle

    def test_fast_path_returns_text_unchanged(self):
        think = ThinkFilter()
        text = "no tags at all"
        assert think.feed(text) is text

    def test_kelvin_sign_spells_no_tag(self):
        assert strip_think("<thin\u212a>x</thin\u212a>") == "<thin\u212a>x</thin\u212a>"

    @given(st.lists(st.sampled_from(FRAGMENTS), max_size=30), st.data())
    def test_chunking_never_changes_the_result(self, fragments, data):
        text = "".join(fragments)
        cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=len(text) + 1)))
        pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
        assert feed_all(pieces) == strip_think(text)

    @given(st.lists(st.sampled_from(FRAGMENTS), max_size=20))
    def test_one_character_per_feed(self, fragments):
        text = "".join(fragments)
        assert feed_all(list(text)) == strip_think(text)

    @given(st.text(alphabet="<>/thinkTHINK \n.é", max_size=60))
    def test_result_has_no_complete_block(self, text):
        result = strip_think(text).lower()
        assert "<think>" not in result


class TestStripResponse:
    def test_openai_chat(self):
        body = {
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "<think>hm</think>\n\nHi", "reasoning_content": "hm", "reasoning": "hm"}},
                {"index": 1, "message": {"role": "assistant", "content": "plain"}},
            ]
        }
        assert strip_response(body)
        assert body["choices"][0]["message"] == {"role": "assistant", "content": "Hi"}
        assert body["choices"][1]["message"] == {"role": "assistant", "content": "plain"}

    def test_openai_completion(self):
        body = {"choices": [{"index": 0, "text": "<think>x</think>Done"}]}
        assert strip_response(body)
        assert body["choices"][0]["text"] == "Done"

    def test_ollama_chat(self):
        body = {"model": "m", "message": {"role": "assistant", "content": "<think>x</think> A", "thinking": "x"}, "done": True}
        assert strip_response(body)
        assert body["message"] == {"role": "assistant", "content": "A"}

    def test_ollama_generate(self):
        body = {"model": "m", "response": "<think>x</think>A", "thinking": "x", "done": True}
        assert strip_response(body)
        assert body == {"model": "m", "response": "A", "done": True}

    def test_unchanged(self):
        body = {"choices": [{"message": {"content": "a < b", "reasoning_content": None}}]}
        original = copy.deepcopy(body)
        assert not strip_response(body)
        assert body == original

    @pytest.mark.parametrize(
        "body",
        [
            None,
            [],
            "text",
            {},
            {"choices": None},
            {"choices": "x"},
            {"choices": [None, 1, "x", {"message": None}, {"message": {"content": ["<think>"]}}]},
            {"message": "x"},
            {"message": {"content": 3}},
            {"response": None, "thinking": "kept: not a generate answer"},
        ],
    )
    def test_other_shapes_left_alone(self, body):
        original = copy.deepcopy(body)
        assert not strip_response(body)
        assert body == original


def content_of(event: dict, index: int = 0) -> str | None:
    for choice in event["choices"]:
        if choice["index"] == index:
            return choice["delta"].get("content")
    return None


class TestOpenAIChunkEditor:
    def test_plain_chunks_kept(self):
        editor = OpenAIChunkEditor()
        for event in (chat_chunk("", role="assistant"), chat_chunk("Hello"), chat_chunk(" world"), chat_chunk(finish_reason="stop")):
            original = copy.deepcopy(event)
            assert editor.edit(event) is KEEP
            assert event == original
        assert editor.idle
        assert not editor.stripped
        assert editor.finish() == []

    def test_pure_think_events_dropped(self):
        editor = OpenAIChunkEditor()
        assert editor.edit(chat_chunk("<think>")) is DROP
        assert editor.edit(chat_chunk("reasoning")) is DROP
        assert not editor.idle
        assert editor.edit(chat_chunk("</think>")) is DROP
        assert editor.edit(chat_chunk("\n\n")) is DROP
        event = chat_chunk("Answer")
        assert editor.edit(event) is KEEP
        assert editor.idle
        assert editor.stripped

    def test_mixed_event_changed(self):
        editor = OpenAIChunkEditor()
        event = chat_chunk("<think>x</think>\nAnswer")
        assert editor.edit(event) is CHANGED
        assert content_of(event) == "Answer"

    def test_role_event_kept_with_emptied_content(self):
        editor = OpenAIChunkEditor()
        event = chat_chunk("<think>x", role="assistant")
        assert editor.edit(event) is CHANGED
        assert event["choices"][0]["delta"] == {"role": "assistant", "content": ""}

    def test_already_empty_event_kept(self):
        editor = OpenAIChunkEditor()
        assert editor.edit(chat_chunk("")) is KEEP
        assert editor.edit(chat_chunk()) is KEEP

    def test_held_back_tag_start_drops_event(self):
        editor = OpenAIChunkEditor()
        assert editor.edit(chat_chunk("<")) is DROP
        event = chat_chunk("b")
        assert editor.edit(event) is CHANGED
        assert content_of(event) == "<b"

    def test_reasoning_fields_removed(self):
        editor = OpenAIChunkEditor()
        event = chat_chunk(None, reasoning_content="hmm")
        assert editor.edit(event) is DROP
        event = chat_chunk("A", reasoning="hmm")
        assert editor.edit(event) is CHANGED
        assert event["choices"][0]["delta"] == {"content": "A"}
        assert editor.stripped

    def test_null_reasoning_fields_need_no_rewrite(self):
        editor = OpenAIChunkEditor()
        event = chat_chunk("A", reasoning_content=None)
        assert editor.edit(event) is KEEP
        assert not editor.stripped

    def test_deepseek_style_reasoning_chunk_dropped(self):
        editor = OpenAIChunkEditor()
        assert editor.edit(chat_chunk(None, reasoning_content="step 1")) is DROP

    @pytest.mark.parametrize(
        "event",
        [
            chat_chunk("<think>x</think>", finish_reason="stop"),
            chat_chunk("<think>x</think>", tool_calls=[{"index": 0, "id": "c", "function": {"name": "f", "arguments": ""}}]),
            chat_chunk("<think>x</think>", function_call={"name": "f"}),
            {**chat_chunk("<think>x</think>"), "usage": {"total_tokens": 3}},
        ],
    )
    def test_events_with_markers_kept(self, event):
        assert OpenAIChunkEditor().edit(event) is CHANGED
        assert content_of(event) == ""

    def test_usage_only_event_kept(self):
        editor = OpenAIChunkEditor()
        editor.edit(chat_chunk("<think>x"))
        event = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": [], "usage": {"total_tokens": 9}}
        assert editor.edit(event) is KEEP

    def test_finish_reason_flushes_pending(self):
        editor = OpenAIChunkEditor()
        assert editor.edit(chat_chunk("a <thi")) is CHANGED
        event = chat_chunk(finish_reason="stop")
        assert editor.edit(event) is CHANGED
        assert content_of(event) == "<thi"
        assert editor.idle
        assert editor.finish() == []

    def test_finish_reason_drops_unclosed_block(self):
        editor = OpenAIChunkEditor()
        editor.edit(chat_chunk("<think>x"))
        event = chat_chunk("more", finish_reason="length")
        assert editor.edit(event) is CHANGED
        assert content_of(event) == ""
        assert editor.idle

    def test_choices_keep_separate_state(self):
        editor = OpenAIChunkEditor()
        first = chat_chunk("<think>zero", index=0)
        first["choices"] += chat_chunk("one <", index=1)["choices"]
        assert editor.edit(first) is CHANGED
        assert content_of(first, 0) == ""
        assert content_of(first, 1) == "one "
        second = chat_chunk("b", index=1)
        assert editor.edit(second) is CHANGED
        assert content_of(second, 1) == "<b"
        third = chat_chunk("</think>Zero", index=0)
        assert editor.edit(third) is CHANGED
        assert content_of(third, 0) == "Zero"

    def test_finish_carries_pending_text(self):
        editor = OpenAIChunkEditor()
        editor.edit(chat_chunk("a <", index=0))
        editor.edit(chat_chunk("b <th", index=1))
        assert editor.finish() == [chat_chunk("<", index=0), chat_chunk("<th", index=1)]
        assert editor.finish() == []

    def test_completions(self):
        editor = OpenAIChunkEditor()

        def chunk(text):
            choice = {"index": 0, "text": text, "finish_reason": None}
            return {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "m", "choices": [choice]}

        assert editor.edit(chunk("<think>x")) is DROP
        event = chunk("</think> A <")
        assert editor.edit(event) is CHANGED
        assert event["choices"][0]["text"] == "A "
        assert editor.finish() == [chunk("<")]

    @pytest.mark.parametrize(
        "event", [{}, {"choices": None}, {"choices": []}, {"choices": [None]}, {"choices": [{"delta": {"content": ["<think>"]}}]}]
    )
    def test_other_shapes_kept(self, event):
        original = copy.deepcopy(event)
        assert OpenAIChunkEditor().edit(event) is KEEP
        assert event == original


def ollama_chat(content, done=False, **message) -> dict:
    message = {"role": "assistant", "content": content, **message}
    return {"model": "qwen3", "created_at": "2025-01-01T00:00:00Z", "message": message, "done": done}


def ollama_generate(response, done=False, **extra) -> dict:
    return {"model": "qwen3", "created_at": "2025-01-01T00:00:00Z", "response": response, "done": done, **extra}


class TestOllamaChunkEditor:
    def test_chat(self):
        editor = OllamaChunkEditor()
        assert editor.edit(ollama_chat("<think>")) is DROP
        assert editor.edit(ollama_chat("hmm")) is DROP
        event = ollama_chat("</think>\n\nHi")
        assert editor.edit(event) is CHANGED
        assert event["message"] == {"role": "assistant", "content": "Hi"}
        assert editor.edit(ollama_chat(" there")) is KEEP
        assert editor.stripped

    def test_role_is_no_keep_marker(self):
        editor = OllamaChunkEditor()
        assert editor.edit(ollama_chat("<think>x")) is DROP

    def test_tool_calls_keep_event(self):
        editor = OllamaChunkEditor()
        event = ollama_chat("<think>x</think>", tool_calls=[{"function": {"name": "f", "arguments": {}}}])
        assert editor.edit(event) is CHANGED
        assert event["message"]["content"] == ""

    def test_thinking_removed(self):
        editor = OllamaChunkEditor()
        assert editor.edit(ollama_chat("", thinking="hmm")) is DROP
        event = ollama_chat("A", thinking="hmm")
        assert editor.edit(event) is CHANGED
        assert event["message"] == {"role": "assistant", "content": "A"}
        assert editor.stripped

    def test_done_flushes_pending(self):
        editor = OllamaChunkEditor()
        assert editor.edit(ollama_chat("x <th")) is CHANGED
        event = ollama_chat("", done=True, done_reason="stop")
        assert editor.edit(event) is CHANGED
        assert event["message"]["content"] == "<th"
        assert editor.idle

    def test_done_kept_when_emptied(self):
        editor = OllamaChunkEditor()
        editor.edit(ollama_chat("<think>x"))
        event = ollama_chat("y", done=True)
        assert editor.edit(event) is CHANGED
        assert event["message"]["content"] == ""

    def test_generate(self):
        editor = OllamaChunkEditor()
        assert editor.edit(ollama_generate("<think>x")) is DROP
        assert editor.edit(ollama_generate("", thinking="more")) is DROP
        event = ollama_generate("</think>A <")
        assert editor.edit(event) is CHANGED
        assert event["response"] == "A "
        assert editor.finish() == [ollama_generate("<")]
        assert editor.finish() == []

    def test_chat_finish(self):
        editor = OllamaChunkEditor()
        editor.edit(ollama_chat("a <"))
        assert editor.finish() == [ollama_chat("<")]

    def test_plain_stream_untouched(self):
        editor = OllamaChunkEditor()
        assert editor.edit(ollama_chat("Hello")) is KEEP
        assert editor.edit(ollama_chat("", done=True)) is KEEP
        assert not editor.stripped
        assert editor.finish() == []

    @pytest.mark.parametrize("event", [{}, {"message": None}, {"message": {"content": 1}}, {"error": "boom"}])
    def test_other_shapes_kept(self, event):
        original = copy.deepcopy(event)
        assert OllamaChunkEditor().edit(event) is KEEP
        assert event == original


@pytest.mark.parametrize(
    "raw, hint",
    [
        (b'{"content": "<think>"}', True),
        (b'{"content": "\\u003cthink\\u003e"}', True),
        (b'{"content": "\\u003Cthink"}', True),
        (b'{"delta": {"reasoning_content": "x"}}', True),
        (b'{"delta": {"reasoning": "x"}}', True),
        (b'{"message": {"thinking": "x"}}', True),
        (b'{"content": "plain words about reasoning and thinking"}', False),
        (b'{"content": "a \\u003e b"}', False),
    ],
)
def test_may_hold_reasoning(raw, hint):
    assert may_hold_reasoning(raw) is hint
