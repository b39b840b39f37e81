import json

import pytest

from rerouter.answers import answer_text
from tests.conftest import chat_chunk


def sse(*events: object, end: bytes = b"data: [DONE]\n\n") -> bytes:
    return b"".join(f"data: {json.dumps(event)}\n\n".encode() for event in events) + end


def ndjson(*lines: object) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


@pytest.mark.parametrize(
    "body, text",
    [
        # OpenAI chat, streamed: role-only first event, content, finish, usage-only event
        (
            sse(
                chat_chunk(role="assistant", content=""),
                chat_chunk("Hel"),
                chat_chunk("lo"),
                chat_chunk(finish_reason="stop"),
                {"id": "x", "choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2}},
            ),
            "Hello",
        ),
        # OpenAI completions, streamed
        (sse({"choices": [{"index": 0, "text": "Once"}]}, {"choices": [{"index": 0, "text": " upon"}]}), "Once upon"),
        # several choices, interleaved: each its own text, in index order
        (sse(chat_chunk("a", index=1), chat_chunk("b", index=0), chat_chunk("c", index=1)), "b\n\nac"),
        # CRLF line ends, no space after the colon, keep-alive comments, a named event
        (b': keep-alive\r\n\r\nevent: message\r\ndata:{"choices": [{"delta": {"content": "x"}}]}\r\n\r\n', "x"),
        # U+2028 inside a JSON string is text, not a line end
        (sse(chat_chunk("a\u2028b")), "a\u2028b"),
        # the cut end of a long body, with the log's marker
        (sse(chat_chunk("kept"), end=b'data: {"choices": [{"delta": {"cont\n\xe2\x80\xa6[truncated: 99999 bytes in total]'), "kept"),
        # a stream with only reasoning left out of the content: an answer whose text is empty
        (sse(chat_chunk(role="assistant", content=""), chat_chunk(finish_reason="stop")), ""),
        # OpenAI chat and completions, plain JSON
        (json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": "Plain."}}]}).encode(), "Plain."),
        (json.dumps({"choices": [{"index": 0, "text": "Done."}]}).encode() + b"\n", "Done."),
        # Ollama chat and generate, streamed and not
        (ndjson({"message": {"role": "assistant", "content": "Ol"}, "done": False}, {"message": {"content": "lama"}, "done": True}), "Ollama"),
        (ndjson({"response": "gen", "done": False}, {"response": "erate", "done": True, "eval_count": 2}), "generate"),
        (json.dumps({"model": "qwen3", "message": {"role": "assistant", "content": "Hi."}, "done": True}).encode(), "Hi."),
        (json.dumps({"model": "qwen3", "response": "Hi.", "done": True}).encode(), "Hi."),
        # OpenAI Responses, streamed and not
        (
            b'event: response.output_text.delta\ndata: {"type": "response.output_text.delta", "delta": "Re"}\n\n'
            b'event: response.output_text.delta\ndata: {"type": "response.output_text.delta", "delta": "sp"}\n\n'
            b'event: response.output_text.done\ndata: {"type": "response.output_text.done", "text": "Resp"}\n\n',
            "Resp",
        ),
        (
            json.dumps(
                {"output": [{"type": "message", "content": [{"type": "output_text", "text": "Out"}, {"type": "refusal"}]}]}
            ).encode(),
            "Out",
        ),
    ],
)
def test_answers(body, text):
    assert answer_text(body) == text


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"data: [DONE]\n\n",
        json.dumps({"object": "list", "data": [{"object": "embedding", "embedding": [0.1, 0.2]}]}).encode(),
        json.dumps({"object": "list", "data": [{"id": "llama3"}]}).encode(),
        json.dumps({"error": {"message": "model not found", "type": "invalid_request_error"}}).encode(),
        json.dumps({"error": "model 'x' not found"}).encode(),
        b"<html>Bad Gateway</html>",
        b"\x1f\x8b\x08\x00binary gzip",
        b"[1, 2, 3]",
        b"{" * 100000 + b"}" * 100000,
        json.dumps({"choices": "nope", "message": ["x"], "response": 5, "output": [1, {"content": "x"}]}).encode(),
        json.dumps({"choices": [None, {"index": "0", "delta": {"content": 7}, "text": None}]}).encode(),
    ],
)
def test_not_answers(body):
    assert answer_text(body) is None
