import copy

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rerouter.thinking import ANSWER
from rerouter.thinking import CHANGED
from rerouter.thinking import DROP
from rerouter.thinking import KEEP
from rerouter.thinking import MAX_CHOICES
from rerouter.thinking import REASONING
from rerouter.thinking import Findings
from rerouter.thinking import OllamaChunkEditor
from rerouter.thinking import OpenAIChunkEditor
from rerouter.thinking import Reasoning
from rerouter.thinking import ThinkFilter
from rerouter.thinking import answer_model
from rerouter.thinking import edit_answer
from rerouter.thinking import may_hold_reasoning
from rerouter.thinking import split_think
from rerouter.thinking import starts_inside
from rerouter.thinking import strip_think
from tests.conftest import chat_chunk

FRAGMENTS = ["<think>", "</think>", "<THINK>", "</Think>", "<thi", "</thi", "<", ">", " ", "\n", "a", "é", "x y", "think"]


def merged(pieces: list[tuple[str, str]]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for kind, text in pieces:
        assert text, "a piece is never empty"
        if out and out[-1][0] == kind:
            out[-1] = (kind, out[-1][1] + text)
        else:
            out.append((kind, text))
    return out


def feed_pieces(chunks: list[str], open_start: bool = False, limit: int | None = None, findings: Findings | None = None) -> list[tuple[str, str]]:
    """What a filter gives for text arriving in these chunks, adjacent pieces of one kind merged."""
    think = ThinkFilter(findings, open_start, **({} if limit is None else {"limit": limit}))
    pieces = []
    for chunk in chunks:
        pieces += think.feed(chunk)
    pieces += think.flush()
    assert think.idle
    return merged(pieces)


def feed_all(chunks: list[str], open_start: bool = False) -> str:
    return "".join(text for kind, text in feed_pieces(chunks, open_start) if kind == ANSWER)


def cut(text: str, data) -> list[str]:
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=len(text) + 1)))
    return [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]


class TestThinkFilter:
    @pytest.mark.parametrize(
        "text, expected",
        [
            ("<think>reasoning</think>Answer", "Answer"),
            ("<THINK>x</Think>Answer", "Answer"),
            ("<think>x</THINK>Answer", "Answer"),
            ("a<think>1</think>b<think>2</think>c", "abc"),
            ("<think>a<think>b</think>c</think>", "c"),
            ("Before <think>x</think>\n\n  After", "Before After"),
            ("Hello\n\n<think>x</think>", "Hello\n\n"),
            ("lone </think> goes", "lone goes"),
            ("a</think>b</THINK>\n c", "abc"),
            ("a < b and c <think >", "a < b and c <think >"),
            ('<think id="1">x</think>', '<think id="1">x'),
            ("</thinker> and <thinking> are text", "</thinker> and <thinking> are text"),
            ("  spaced   text \n", "  spaced   text \n"),
            ("<think>never closed", ""),
            ("ends with <thi", "ends with <thi"),
            ("ends with </th", "ends with </th"),
            ("ends with <", "ends with <"),
            ("", ""),
        ],
    )
    def test_one_shot(self, text, expected):
        assert strip_think(text) == expected

    @pytest.mark.parametrize(
        "text, expected",
        [
            ("reasoning</think>\n\nAnswer", [(REASONING, "reasoning"), (ANSWER, "Answer")]),
            ("</think>Answer", [(ANSWER, "Answer")]),
            ("x <think>a</think>b", [(REASONING, "x <think>a"), (ANSWER, "b")]),
            ("<think>a</think>b", [(REASONING, "a"), (ANSWER, "b")]),
            ("\n <THINK>a</think>b", [(ANSWER, "\n "), (REASONING, "a"), (ANSWER, "b")]),
            ("<think>unclosed", [(REASONING, "unclosed")]),
            ("  <thi", [(ANSWER, "  <thi")]),
            ("  <thin>x</think>y", [(REASONING, "  <thin>x"), (ANSWER, "y")]),
            ("r</think>a<think>b</think>c</think>d", [(REASONING, "r"), (ANSWER, "a"), (REASONING, "b"), (ANSWER, "cd")]),
            ("no close tag at all", [(ANSWER, "no close tag at all")]),
            ("withheld then </thi", [(ANSWER, "withheld then </thi")]),
            ("", []),
        ],
    )
    def test_open_start(self, text, expected):
        assert split_think(text, open_start=True) == expected

    def test_pieces_keep_their_order(self):
        assert split_think("a<think>b</think> c<think>d") == [(ANSWER, "a"), (REASONING, "b"), (ANSWER, "c"), (REASONING, "d")]

    def test_tags_split_one_character_per_feed(self):
        text = "Hi <think>deep</think>\n there <THINK>more</THINK>!"
        assert feed_all(list(text)) == "Hi there !"

    def test_whitespace_after_close_across_feeds(self):
        assert feed_all(["<think>x</think>", "\n\n", " ", "Hello"]) == "Hello"
        assert feed_all(["x</think>", "\n", " y"]) == "xy"

    def test_tokens_keep_their_spaces(self):
        assert feed_all(["Hello", " world", "\n", "  next"]) == "Hello world\n  next"

    def test_holds_back_only_a_possible_tag(self):
        think = ThinkFilter()
        assert think.feed("a <th") == [(ANSWER, "a ")]
        assert think.feed("e") == [(ANSWER, "<the")]
        assert think.feed("<") == []
        assert think.feed("/thin") == []
        assert think.feed("g") == [(ANSWER, "</thing")]
        assert think.feed("</") == []
        assert think.feed("think>") == []
        assert think.findings.lone_close

    def test_closing_tag_prefix_inside_block(self):
        think = ThinkFilter()
        assert think.feed("<think>a </th") == [(REASONING, "a ")]
        assert think.feed("ought") == [(REASONING, "</thought")]
        assert think.feed("</think>b") == [(ANSWER, "b")]

    def test_block_text_is_not_accumulated(self):
        think = ThinkFilter()
        think.feed("<think>")
        for _ in range(1000):
            think.feed("some reasoning ")
        assert think._held == ""

    def test_partial_tag_released_at_flush(self):
        think = ThinkFilter()
        assert think.feed("x <thi") == [(ANSWER, "x ")]
        assert think.flush() == [(ANSWER, "<thi")]

    def test_unclosed_block_ends_as_reasoning(self):
        think = ThinkFilter()
        assert think.feed("ok <think>abc </thin") == [(ANSWER, "ok "), (REASONING, "abc ")]
        assert think.flush() == [(REASONING, "</thin")]

    def test_open_start_withholds_until_the_close(self):
        think = ThinkFilter(open_start=True)
        assert think.feed("The user asks") == []
        assert think.feed(" about <b>tags</b>, </thi") == []
        assert think.feed("nk>\n\nHello") == [(REASONING, "The user asks about <b>tags</b>, "), (ANSWER, "Hello")]
        assert think.feed(" there") == [(ANSWER, " there")]

    def test_open_start_without_close_is_the_answer(self):
        think = ThinkFilter(open_start=True)
        assert think.feed("Just an answer, ") == []
        assert think.feed("no reasoning <") == []
        assert think.flush() == [(ANSWER, "Just an answer, no reasoning <")]
        assert think.findings == Findings()

    def test_open_start_limit(self):
        assert feed_pieces(["abcd", "</think>x"], open_start=True, limit=4) == [(ANSWER, "abcdx")]
        assert feed_pieces(["abc</think>x"], open_start=True, limit=4) == [(REASONING, "abc"), (ANSWER, "x")]
        assert feed_pieces(["abcdefgh", "ijk"], open_start=True, limit=4) == [(ANSWER, "abcdefghijk")]

    def test_open_start_with_the_model_s_own_open_tag_streams_live(self):
        think = ThinkFilter(open_start=True)
        assert think.feed("\n<th") == []
        assert think.feed("ink>Let me") == [(ANSWER, "\n"), (REASONING, "Let me")]
        assert think.feed(" see") == [(REASONING, " see")]

    def test_open_start_whitespace_is_bounded(self):
        assert feed_pieces([" " * 10, "x</think>y"], open_start=True, limit=4) == [(ANSWER, " " * 10 + "xy")]
        think = ThinkFilter(open_start=True, limit=100)
        for _ in range(50):
            think.feed("          ")
        assert think._withheld_chars < 100

    def test_open_start_memory_is_bounded(self):
        think = ThinkFilter(open_start=True, limit=100)
        released = []
        for _ in range(50):
            released += think.feed("0123456789")
        assert think._withheld_chars < 100
        assert "".join(text for _, text in released) == "0123456789" * 50

    def test_findings(self):
        findings = Findings()
        feed_pieces(["<think>", " ab", "c</think>  x </think>y"], findings=findings)
        assert findings == Findings(reasoning_chars=4, reasoned=True, lone_close=True, edited=True)

    def test_whitespace_only_reasoning_is_no_reasoning(self):
        findings = Findings()
        assert feed_pieces(["<think>\n\n</think>\n\nHi"], findings=findings) == [(REASONING, "\n\n"), (ANSWER, "Hi")]
        assert findings.reasoning_chars == 2
        assert not findings.reasoned
        assert findings.edited

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

    def test_open_start_is_never_idle_before_its_close(self):
        think = ThinkFilter(open_start=True)
        assert not think.idle
        think.feed("plain text without any tag")
        assert not think.idle
        think.feed("</think>a")
        assert think.idle

    def test_fast_path_returns_text_unchanged(self):
        think = ThinkFilter()
        text = "no tags at all"
        assert think.feed(text)[0][1] is text

    def test_kelvin_sign_spells_no_tag(self):
        assert strip_think("<thin\u212a>x</thin\u212a>") == "<thin\u212a>x</thin\u212a>"

    @given(st.lists(st.sampled_from(FRAGMENTS), max_size=30), st.booleans(), st.sampled_from([None, 1, 3, 9]), st.data())
    def test_chunking_never_changes_the_result(self, fragments, open_start, limit, data):
        text = "".join(fragments)
        one, streamed = Findings(), Findings()
        whole = feed_pieces([text], open_start, limit, one)
        assert feed_pieces(cut(text, data), open_start, limit, streamed) == whole
        assert streamed == one
        assert one.reasoning_chars == sum(len(piece) for kind, piece in whole if kind == REASONING)

    @given(st.lists(st.sampled_from(FRAGMENTS), max_size=20), st.booleans())
    def test_one_character_per_feed(self, fragments, open_start):
        text = "".join(fragments)
        assert feed_pieces(list(text), open_start) == split_think(text, open_start)

    @given(st.lists(st.sampled_from(FRAGMENTS), max_size=30), st.data())
    def test_only_a_possible_tag_start_is_held_back(self, fragments, data):
        think = ThinkFilter()
        for chunk in cut("".join(fragments), data):
            think.feed(chunk)
            held = think._held.lower()
            assert len(held) < len("</think>")
            assert not held or "<think>".startswith(held) or "</think>".startswith(held)

    @given(st.text(alphabet="<>/thinkTHINK \n.é", max_size=60), st.booleans())
    def test_result_has_no_tag(self, text, open_start):
        result = strip_think(text, open_start).lower()
        assert "<think>" not in result or open_start
        assert "</think>" not in result


@pytest.mark.parametrize(
    "raw, model",
    [
        (b'{"id":"c","object":"chat.completion","model":"llama3-70b","choices":[]}', "llama3-70b"),
        (b'{"object": "list", "data": [{"embedding": [0.1]}], "model" : "nomic-embed-text"}', "nomic-embed-text"),
        (b'{"model":"q\\u003c3","message":{"tool_calls":[{"function":{"arguments":{"model":"x"}}}]}}', "q<3"),
        (b'{"content":"say \\"model\\":\\"fake\\"","model":"real"}', "real"),
        (b'{"model":"\\ud800"}', None),
        (b'{"model":3}', None),
        (b'{"model":"' + b"x" * 2000 + b'"}', None),
        (b"not json", None),
    ],
)
def test_answer_model(raw, model):
    assert answer_model(raw) == model


def chat_answer(content: str, **message) -> dict:
    return {"id": "c", "model": "llama3-70b", "choices": [{"index": 0, "message": {"role": "assistant", "content": content, **message}}]}


class TestEditAnswer:
    def test_openai_chat(self):
        body = {
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "<think>hm</think>\n\nHi", "reasoning_content": "hm", "reasoning": "hm"}},
                {"index": 1, "message": {"role": "assistant", "content": "plain"}},
            ]
        }
        findings = Findings()
        assert edit_answer(body, Reasoning.DROP, findings=findings)
        assert body["choices"][0]["message"] == {"role": "assistant", "content": "Hi"}
        assert body["choices"][1]["message"] == {"role": "assistant", "content": "plain"}
        assert findings.reasoning_chars == 6
        assert findings.edited and findings.reasoned

    def test_openai_completion(self):
        body = {"choices": [{"index": 0, "text": "<think>x</think>Done"}]}
        assert edit_answer(body, Reasoning.DROP)
        assert body["choices"][0]["text"] == "Done"

    def test_ollama_chat(self):
        body = {"model": "m", "message": {"role": "assistant", "content": "<think>x</think> A", "thinking": "x"}, "done": True}
        assert edit_answer(body, Reasoning.DROP)
        assert body["message"] == {"role": "assistant", "content": "A"}

    def test_ollama_generate(self):
        body = {"model": "m", "response": "<think>x</think>A", "thinking": "x", "done": True}
        assert edit_answer(body, Reasoning.DROP)
        assert body == {"model": "m", "response": "A", "done": True}

    def test_unchanged(self):
        body = {"choices": [{"message": {"content": "a < b", "reasoning_content": None}}]}
        original = copy.deepcopy(body)
        assert not edit_answer(body, Reasoning.DROP)
        assert body == original

    @pytest.mark.parametrize("reasoning", [Reasoning.DROP, Reasoning.SEPARATE])
    def test_lone_close_in_a_whole_answer(self, reasoning):
        body = chat_answer("Okay, the user wants a greeting.\n</think>\n\nHello!")
        findings = Findings()
        assert edit_answer(body, reasoning, findings=findings)
        message = body["choices"][0]["message"]
        assert message["content"] == "Hello!"
        assert message.get("reasoning_content") == ("Okay, the user wants a greeting.\n" if reasoning is Reasoning.SEPARATE else None)
        assert findings.lone_close
        assert findings.reasoning_chars == len("Okay, the user wants a greeting.\n")

    def test_close_after_a_block_is_a_stray_tag(self):
        body = chat_answer("a<think>b</think>c</think>d")
        findings = Findings()
        assert edit_answer(body, Reasoning.DROP, findings=findings)
        assert body["choices"][0]["message"]["content"] == "acd"
        assert findings.lone_close

    @pytest.mark.parametrize(
        "content, expected",
        [("plan</think>Answer", "Answer"), ("plain answer", "plain answer"), ("x <think>y</think>z", "z")],
    )
    def test_open_start_models(self, content, expected):
        body = chat_answer(content)
        findings = Findings()
        edit_answer(body, Reasoning.DROP, open_start=True, findings=findings)
        assert body["choices"][0]["message"]["content"] == expected
        assert not findings.lone_close

    def test_separate_openai(self):
        body = chat_answer("<think>why</think>\n\nAnswer")
        body["choices"].append({"index": 1, "text": "<think>t</think>T"})
        assert edit_answer(body, Reasoning.SEPARATE)
        assert body["choices"][0]["message"] == {"role": "assistant", "content": "Answer", "reasoning_content": "why"}
        assert body["choices"][1] == {"index": 1, "text": "T", "reasoning_content": "t"}

    def test_separate_ollama(self):
        chat = {"model": "m", "message": {"role": "assistant", "content": "<think>why</think>A"}, "done": True}
        generate = {"model": "m", "response": "<think>why</think>A", "done": True}
        assert edit_answer(chat, Reasoning.SEPARATE) and edit_answer(generate, Reasoning.SEPARATE)
        assert chat["message"] == {"role": "assistant", "content": "A", "thinking": "why"}
        assert generate == {"model": "m", "response": "A", "done": True, "thinking": "why"}

    def test_separate_leaves_separated_reasoning_alone(self):
        body = chat_answer("Answer", reasoning_content="already apart")
        original = copy.deepcopy(body)
        findings = Findings()
        assert not edit_answer(body, Reasoning.SEPARATE, findings=findings)
        assert body == original
        assert findings.reasoned and findings.reasoning_chars == 0

    def test_separate_adds_to_separated_reasoning(self):
        body = {"model": "m", "message": {"role": "assistant", "content": "<think>b</think>A", "thinking": "a "}}
        assert edit_answer(body, Reasoning.SEPARATE)
        assert body["message"]["thinking"] == "a b"

    def test_model_noted_and_echoed(self):
        body = chat_answer("Hi")
        findings = Findings()
        assert edit_answer(body, Reasoning.DROP, echo="gpt-4", findings=findings)
        assert body["model"] == "gpt-4"
        assert findings.model == "llama3-70b"
        assert not edit_answer(body, Reasoning.KEEP, echo="gpt-4")

    def test_responses_api_model(self):
        body = {"object": "response", "model": "llama3-70b", "output": []}
        findings = Findings()
        assert edit_answer(body, Reasoning.KEEP, echo="gpt-4", findings=findings)
        assert (body["model"], findings.model) == ("gpt-4", "llama3-70b")

    def test_keep_leaves_reasoning(self):
        body = chat_answer("<think>x</think>y")
        original = copy.deepcopy(body)
        assert not edit_answer(body, Reasoning.KEEP)
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
            {"model": 3, "response": "ok"},
        ],
    )
    @pytest.mark.parametrize("reasoning", [Reasoning.DROP, Reasoning.SEPARATE])
    def test_other_shapes_left_alone(self, body, reasoning):
        original = copy.deepcopy(body)
        assert not edit_answer(body, reasoning, echo="gpt-4")
        assert body == original

    @given(st.lists(st.sampled_from(FRAGMENTS), max_size=30))
    def test_whole_answer_rule(self, fragments):
        text = "".join(fragments)
        body = {"response": text}
        edit_answer(body, Reasoning.DROP)
        assert body["response"] == strip_think(text, open_start=starts_inside(text))


def head(event: dict) -> dict:
    return {key: event[key] for key in ("id", "object", "created", "model")}


def reasoning_choice(text: str, index: int = 0) -> dict:
    return {"index": index, "delta": {"reasoning_content": text}, "finish_reason": None}


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

    def test_model_noted_once_and_then_idle(self):
        editor = OpenAIChunkEditor()
        assert not editor.idle
        assert editor.edit({"choices": []}) is KEEP
        assert not editor.idle
        assert editor.edit(chat_chunk("Hi")) is KEEP
        assert editor.findings.model == "qwen3"
        assert editor.idle
        editor.edit({**chat_chunk("x"), "model": "other"})
        assert editor.findings.model == "qwen3"

    def test_echo_renames_every_event(self):
        editor = OpenAIChunkEditor(echo="gpt-4")
        for event in (chat_chunk("", role="assistant"), chat_chunk("Hi"), chat_chunk(finish_reason="stop"), {"choices": [], "model": "qwen3", "usage": {}}):
            assert editor.edit(event) is CHANGED
            assert event["model"] == "gpt-4"
            assert not editor.idle
        assert editor.findings.model == "qwen3"
        assert editor.edit({"choices": [], "model": "gpt-4"}) is KEEP

    def test_echo_with_stripping_off(self):
        editor = OpenAIChunkEditor(Reasoning.KEEP, echo="gpt-4")
        event = chat_chunk("<think>kept</think>")
        assert editor.edit(event) is CHANGED
        assert event == {**chat_chunk("<think>kept</think>"), "model": "gpt-4"}
        assert not editor.stripped

    def test_lone_close_in_a_stream(self):
        editor = OpenAIChunkEditor()
        events = [chat_chunk(text) for text in ("Okay, the user", " wants hi.</think>\n\n", "\n", "Hello")]
        results = [editor.edit(event) for event in events]
        assert results == [KEEP, CHANGED, DROP, KEEP]
        assert "".join(content_of(event) for event in events[:2] + events[3:]) == "Okay, the user wants hi.Hello"
        assert editor.findings.lone_close
        assert editor.findings.reasoning_chars == 0

    def test_open_start_withholds_then_drops(self):
        editor = OpenAIChunkEditor(open_start=True)
        assert editor.edit(chat_chunk("", role="assistant")) is KEEP
        assert editor.edit(chat_chunk("The user")) is DROP
        assert not editor.idle
        assert editor.edit(chat_chunk(" asks.</think>")) is DROP
        event = chat_chunk("\n\nHello")
        assert editor.edit(event) is CHANGED
        assert content_of(event) == "Hello"
        assert editor.findings.reasoning_chars == len("The user asks.")
        assert not editor.findings.lone_close

    def test_open_start_without_close_delivers_the_answer_at_the_end(self):
        editor = OpenAIChunkEditor(open_start=True)
        assert editor.edit(chat_chunk("Just")) is DROP
        assert editor.edit(chat_chunk(" the answer")) is DROP
        event = chat_chunk(finish_reason="stop")
        assert editor.edit(event) is CHANGED
        assert content_of(event) == "Just the answer"
        assert editor.findings == Findings(model="qwen3")

    def test_open_start_without_close_or_finish_reason(self):
        editor = OpenAIChunkEditor(open_start=True)
        editor.edit(chat_chunk("Just the answer"))
        assert editor.finish() == [chat_chunk("Just the answer")]

    def test_separate_moves_reasoning_into_events_of_its_own(self):
        editor = OpenAIChunkEditor(Reasoning.SEPARATE)
        assert editor.edit(chat_chunk("<think>")) is DROP
        event = chat_chunk("Let me")
        assert editor.edit(event) is CHANGED
        assert event["choices"][0]["delta"] == {"reasoning_content": "Let me"}
        event = chat_chunk(" see</think>\n\nHi")
        result = editor.edit(event)
        assert result == [{**head(event), "choices": [reasoning_choice(" see")]}, event]
        assert content_of(event) == "Hi"
        assert editor.findings.reasoning_chars == len("Let me see")

    def test_separate_keeps_the_order_within_an_event(self):
        editor = OpenAIChunkEditor(Reasoning.SEPARATE)
        event = chat_chunk("a<think>b</think>c", role="assistant")
        result = editor.edit(event)
        assert [choice["delta"] for e in result for choice in e["choices"]] == [
            {"role": "assistant", "content": "a"},
            {"reasoning_content": "b"},
            {"content": "c"},
        ]
        assert result[-1] is event

    def test_separate_splits_each_choice_in_its_order(self):
        editor = OpenAIChunkEditor(Reasoning.SEPARATE)
        event = chat_chunk("x<think>y", index=0)
        event["choices"] += chat_chunk("plain", index=1)["choices"]
        result = editor.edit(event)
        assert len(result) == 2
        assert result[0]["choices"] == [{"index": 0, "delta": {"content": "x"}, "finish_reason": None}]
        assert [(c["index"], c["delta"]) for c in result[1]["choices"]] == [(0, {"reasoning_content": "y"}), (1, {"content": "plain"})]

    def test_separate_open_start(self):
        editor = OpenAIChunkEditor(Reasoning.SEPARATE, open_start=True)
        assert editor.edit(chat_chunk("plan")) is DROP
        event = chat_chunk("</think>Hi")
        assert editor.edit(event) == [{**head(event), "choices": [reasoning_choice("plan")]}, event]
        assert content_of(event) == "Hi"

    def test_separate_leaves_separated_reasoning(self):
        editor = OpenAIChunkEditor(Reasoning.SEPARATE)
        event = chat_chunk(None, reasoning_content="step 1")
        assert editor.edit(event) is KEEP
        assert editor.findings.reasoned and not editor.stripped

    def test_separate_completions(self):
        editor = OpenAIChunkEditor(Reasoning.SEPARATE)
        event = {"id": "cmpl-1", "object": "text_completion", "model": "m", "choices": [{"index": 0, "text": "<think>r</think>A", "finish_reason": None}]}
        result = editor.edit(event)
        assert result[0]["choices"] == [{"index": 0, "text": "", "finish_reason": None, "reasoning_content": "r"}]
        assert result[1]["choices"][0]["text"] == "A"

    def test_choices_past_the_limit_pass_unedited(self):
        editor = OpenAIChunkEditor()
        event = chat_chunk("<think>x</think>", index=MAX_CHOICES)
        assert editor.edit(event) is KEEP
        assert content_of(event, MAX_CHOICES) == "<think>x</think>"

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

    def test_separate_chat(self):
        editor = OllamaChunkEditor(Reasoning.SEPARATE)
        assert editor.edit(ollama_chat("<think>")) is DROP
        event = ollama_chat("hmm")
        assert editor.edit(event) is CHANGED
        assert event["message"] == {"role": "assistant", "content": "", "thinking": "hmm"}
        event = ollama_chat("a</think>\n\nHi")
        result = editor.edit(event)
        assert result == [{"model": "qwen3", "created_at": "2025-01-01T00:00:00Z", "message": {"role": "assistant", "content": "", "thinking": "a"}, "done": False}, event]
        assert event["message"] == {"role": "assistant", "content": "Hi"}

    def test_separate_generate(self):
        editor = OllamaChunkEditor(Reasoning.SEPARATE)
        event = ollama_generate("<think>r</think>A")
        result = editor.edit(event)
        assert result[0] == {"model": "qwen3", "created_at": "2025-01-01T00:00:00Z", "response": "", "thinking": "r", "done": False}
        assert result[1]["response"] == "A"

    def test_separate_leaves_thinking(self):
        editor = OllamaChunkEditor(Reasoning.SEPARATE)
        event = ollama_chat("", thinking="hmm")
        assert editor.edit(event) is KEEP
        assert editor.findings.reasoned

    def test_open_start(self):
        editor = OllamaChunkEditor(open_start=True)
        assert editor.edit(ollama_chat("plan")) is DROP
        event = ollama_chat("</think>Hi")
        assert editor.edit(event) is CHANGED
        assert event["message"]["content"] == "Hi"
        other = OllamaChunkEditor(open_start=True)
        other.edit(ollama_generate("no tags"))
        done = ollama_generate("", done=True)
        assert other.edit(done) is CHANGED
        assert done["response"] == "no tags"

    def test_echo(self):
        editor = OllamaChunkEditor(echo="gpt-4")
        event = ollama_chat("Hi")
        assert editor.edit(event) is CHANGED
        assert event["model"] == "gpt-4"
        assert editor.findings.model == "qwen3"
        assert not editor.idle

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
