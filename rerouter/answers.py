"""
The text of an answer, assembled from a response body as the client received it.

Pure, for the log's read side: the writer stores the body as delivered and pays
nothing for this; whoever shows a row asks for its text.
"""

import json
import re
from collections.abc import Iterable
from collections.abc import Iterator
from typing import Any

LINE_BREAK = re.compile(r"\r\n|\r|\n")
"""SSE's line ends; str.splitlines() would also split at U+2028 inside a JSON string."""
CHOICES_SEPARATOR = "\n\n"


def answer_text(body: bytes) -> str | None:
    """
    The answer's text: the content of an OpenAI chat or completion (one JSON answer or SSE
    `data:` events), of an Ollama chat or generate answer (JSON or NDJSON), or of an OpenAI
    Responses answer. Several choices are joined in index order with a blank line between
    them. None when the body holds no answer (embeddings, model lists, errors, binary data).
    Events that do not parse (the cut end of a long body, `[DONE]`) are skipped.
    """
    text = body.decode("utf-8", "replace")
    whole = _parse(text)
    if whole is not None:
        documents: Iterable[Any] = [whole]
    elif any(line.startswith("data:") for line in LINE_BREAK.split(text)):
        documents = map(_parse, _sse_data(text))
    else:
        documents = map(_parse, text.split("\n"))
    return _assemble(documents)


def _parse(text: str) -> Any:
    if not text.lstrip().startswith("{"):
        return None
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def _sse_data(text: str) -> Iterator[str]:
    """The data of each event: its `data:` lines, joined with line breaks."""
    data: list[str] = []
    for line in LINE_BREAK.split(text):
        if not line:
            if data:
                yield "\n".join(data)
            data = []
        elif line.startswith("data:"):
            value = line[5:]
            data.append(value[1:] if value.startswith(" ") else value)
    if data:
        yield "\n".join(data)


def _assemble(documents: Iterable[Any]) -> str | None:
    texts: dict[int, list[str]] = {}
    for document in documents:
        if isinstance(document, dict):
            for index, piece in _pieces(document):
                texts.setdefault(index, []).append(piece)
    if not texts:
        return None
    return CHOICES_SEPARATOR.join("".join(texts[index]) for index in sorted(texts))


def _pieces(document: dict) -> Iterator[tuple[int, str]]:
    """(choice index, text) for each piece of answer text in one JSON answer, event or line."""
    choices = document.get("choices")
    if isinstance(choices, list):
        for choice in choices:
            if isinstance(choice, dict):
                index = choice.get("index")
                index = index if isinstance(index, int) else 0
                for holder in (choice.get("message"), choice.get("delta")):
                    if isinstance(holder, dict) and isinstance(holder.get("content"), str):
                        yield index, holder["content"]
                if isinstance(choice.get("text"), str):
                    yield index, choice["text"]
    message = document.get("message")
    if isinstance(message, dict) and isinstance(message.get("content"), str):
        yield 0, message["content"]
    if isinstance(document.get("response"), str):
        yield 0, document["response"]
    if document.get("type") == "response.output_text.delta" and isinstance(document.get("delta"), str):
        yield 0, document["delta"]
    output = document.get("output")
    for item in output if isinstance(output, list) else ():
        content = item.get("content") if isinstance(item, dict) else None
        for part in content if isinstance(content, list) else ():
            if isinstance(part, dict) and part.get("type") == "output_text" and isinstance(part.get("text"), str):
                yield 0, part["text"]
