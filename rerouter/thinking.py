"""
Removal of `<think>...</think>` reasoning from LLM answers.

Everything here works on decoded text and JSON objects; turning network
bytes into those objects and back is framing.py's job.
"""

import enum
import re

OPEN_TAG = "<think>"
CLOSE_TAG = "</think>"

# ASCII-only case folding: no non-ASCII letter (such as the Kelvin sign) can spell a tag.
_OPEN = re.compile(re.escape(OPEN_TAG), re.IGNORECASE | re.ASCII)
_CLOSE = re.compile(re.escape(CLOSE_TAG), re.IGNORECASE | re.ASCII)
_WHITESPACE = re.compile(r"\s*")

_OPENAI_REASONING = ("reasoning_content", "reasoning")
_OLLAMA_REASONING = ("thinking",)


def _partial_tag_length(text: str, start: int, tag: str) -> int:
    """Length of the suffix of text[start:] that could still grow into tag."""
    lt = text.rfind("<", max(start, len(text) - len(tag) + 1))
    if lt < 0:
        return 0
    suffix = text[lt:]
    if suffix.isascii() and tag.startswith(suffix.lower()):
        return len(suffix)
    return 0


class ThinkFilter:
    """
    Strips think blocks from one text that arrives in pieces.

    Only a possible tag start is ever held back, so the answer keeps flowing
    at the pace it is generated.
    """

    def __init__(self) -> None:
        self.stripped = False
        self._inside = False
        self._held = ""
        self._skip_space = False

    @property
    def idle(self) -> bool:
        """True when the next text cannot be affected by what came before."""
        return not (self._inside or self._held or self._skip_space)

    def feed(self, text: str) -> str:
        if self.idle and "<" not in text:
            return text
        text = self._held + text
        self._held = ""
        released = []
        pos = 0
        while pos < len(text):
            if self._inside:
                match = _CLOSE.search(text, pos)
                if match is None:
                    # the block's text is dropped as it arrives
                    self._held = text[len(text) - _partial_tag_length(text, pos, CLOSE_TAG) :]
                    break
                self._inside = False
                self._skip_space = True
                pos = match.end()
                continue
            if self._skip_space:
                pos = _WHITESPACE.match(text, pos).end()
                if pos == len(text):
                    break
                self._skip_space = False
            match = _OPEN.search(text, pos)
            if match is None:
                end = len(text) - _partial_tag_length(text, pos, OPEN_TAG)
                released.append(text[pos:end])
                self._held = text[end:]
                break
            released.append(text[pos : match.start()])
            self._inside = True
            self.stripped = True
            pos = match.end()
        return "".join(released)

    def flush(self) -> str:
        """Ends the text: a held-back tag start was prose after all, an unclosed block is dropped."""
        pending = "" if self._inside else self._held
        self._inside = False
        self._held = ""
        self._skip_space = False
        return pending


def may_hold_reasoning(raw: bytes) -> bool:
    """A cheap look at raw JSON bytes, so that most answers and events are never parsed."""
    # What raw JSON must contain to hold a think tag or a reasoning field (a key, so quoted); Go's
    # JSON encoder (Ollama) writes `<` as \u003c. Plain substring tests, one after the other: a regex
    # alternation stops at every "r" and "t" of the text (4x slower), a generator costs a call each.
    return b"<" in raw or b"\\u003c" in raw or b"\\u003C" in raw or b'"reasoning' in raw or b'"thinking"' in raw


def strip_think(text: str) -> str:
    think = ThinkFilter()
    return think.feed(text) + think.flush()


def _pop_reasoning(holder: dict, keys: tuple[str, ...]) -> bool:
    """Removes reasoning fields. Null ones carry nothing and stay, so such an object needs no rewrite."""
    removed = False
    for key in keys:
        if holder.get(key) is not None:
            del holder[key]
            removed = True
    return removed


def _strip_field(holder: dict, key: str) -> bool:
    text = holder.get(key)
    if not isinstance(text, str):
        return False
    stripped = strip_think(text)
    if stripped == text:
        return False
    holder[key] = stripped
    return True


def strip_response(body: object) -> bool:
    """Strips a complete (non-streamed) answer in place; returns whether anything changed."""
    if not isinstance(body, dict):
        return False
    changed = False
    choices = body.get("choices")
    if isinstance(choices, list):
        for choice in choices:
            if not isinstance(choice, dict):
                continue
            message = choice.get("message")
            if isinstance(message, dict):
                changed |= _strip_field(message, "content")
                changed |= _pop_reasoning(message, _OPENAI_REASONING)
            changed |= _strip_field(choice, "text")
    message = body.get("message")
    if isinstance(message, dict):
        changed |= _strip_field(message, "content")
        changed |= _pop_reasoning(message, _OLLAMA_REASONING)
    if isinstance(body.get("response"), str):
        changed |= _strip_field(body, "response")
        changed |= _pop_reasoning(body, _OLLAMA_REASONING)
    return changed


class Edit(enum.Enum):
    """What a chunk editor did to a streamed event, and so what the caller sends."""

    KEEP = "keep"
    """Unchanged: send the original bytes."""
    CHANGED = "changed"
    """Mutated in place: send it re-serialised."""
    DROP = "drop"
    """Nothing left worth sending."""


KEEP = Edit.KEEP
CHANGED = Edit.CHANGED
DROP = Edit.DROP


def _filter_text(holder: dict, key: str, think: ThinkFilter, final: bool) -> tuple[bool, bool]:
    """Runs holder[key] through think; returns whether it changed and whether any text is left."""
    text = holder.get(key)
    if text is None:
        text = ""
    elif not isinstance(text, str):
        return False, True
    edited = think.feed(text)
    if final:
        edited += think.flush()
    if edited == text:
        return False, bool(edited)
    holder[key] = edited
    return True, bool(edited)


def _outcome(changed: bool, carries: bool) -> Edit:
    if not changed:
        return KEEP
    return CHANGED if carries else DROP


class OpenAIChunkEditor:
    """
    Strips thinking from an OpenAI-style stream of `chat.completion.chunk`
    or `text_completion` objects.

    With n > 1 the choices' texts interleave, so each choice index gets its own filter.
    """

    def __init__(self) -> None:
        self._filters: dict[int, ThinkFilter] = {}
        self._template: dict = {}
        self._chat = True
        self._removed_reasoning = False

    @property
    def idle(self) -> bool:
        return all(think.idle for think in self._filters.values())

    @property
    def stripped(self) -> bool:
        return self._removed_reasoning or any(think.stripped for think in self._filters.values())

    def edit(self, event: dict) -> Edit:
        choices = event.get("choices")
        if not isinstance(choices, list) or not choices:
            return KEEP
        self._template = event
        changed = False
        carries = event.get("usage") is not None
        for choice in choices:
            if isinstance(choice, dict):
                choice_changed, choice_carries = self._edit_choice(choice)
                changed |= choice_changed
                carries |= choice_carries
            else:
                carries = True
        return _outcome(changed, carries)

    def _edit_choice(self, choice: dict) -> tuple[bool, bool]:
        index = choice.get("index")
        think = self._filters.setdefault(index if isinstance(index, int) else 0, ThinkFilter())
        finished = choice.get("finish_reason") is not None
        delta = choice.get("delta")
        self._chat = isinstance(delta, dict)
        if self._chat:
            removed = _pop_reasoning(delta, _OPENAI_REASONING)
            self._removed_reasoning |= removed
            edited, has_text = _filter_text(delta, "content", think, finished)
            marked = any(delta.get(key) for key in ("role", "tool_calls", "function_call"))
            return removed or edited, has_text or marked or finished
        edited, has_text = _filter_text(choice, "text", think, finished)
        return edited, has_text or finished

    def finish(self) -> list[dict]:
        """Events carrying text still held back, for streams that end without a finish_reason."""
        events = []
        for index, think in self._filters.items():
            pending = think.flush()
            if pending:
                events.append(self._carrier(index, pending))
        return events

    def _carrier(self, index: int, text: str) -> dict:
        event = {key: self._template[key] for key in ("id", "object", "created", "model") if key in self._template}
        if self._chat:
            event["choices"] = [{"index": index, "delta": {"content": text}, "finish_reason": None}]
        else:
            event["choices"] = [{"index": index, "text": text, "finish_reason": None}]
        return event


class OllamaChunkEditor:
    """
    Strips thinking from an Ollama `/api/chat` or `/api/generate` stream.

    Ollama repeats `message.role` on every chunk, so unlike with OpenAI a role
    is no reason to keep an emptied chunk.
    """

    def __init__(self) -> None:
        self._think = ThinkFilter()
        self._template: dict = {}
        self._chat = True
        self._removed_thinking = False

    @property
    def idle(self) -> bool:
        return self._think.idle

    @property
    def stripped(self) -> bool:
        return self._removed_thinking or self._think.stripped

    def edit(self, event: dict) -> Edit:
        message = event.get("message")
        if isinstance(message, dict):
            holder, key = message, "content"
            carries = bool(message.get("tool_calls"))
        elif "response" in event:
            holder, key = event, "response"
            carries = False
        else:
            return KEEP
        self._chat = holder is message
        self._template = event
        done = event.get("done") is True
        removed = _pop_reasoning(holder, _OLLAMA_REASONING)
        self._removed_thinking |= removed
        edited, has_text = _filter_text(holder, key, self._think, done)
        return _outcome(removed or edited, carries or has_text or done)

    def finish(self) -> list[dict]:
        """An event carrying text still held back, for streams that end without `done`."""
        pending = self._think.flush()
        if not pending:
            return []
        event = {key: self._template[key] for key in ("model", "created_at") if key in self._template}
        if self._chat:
            event["message"] = {"role": "assistant", "content": pending}
        else:
            event["response"] = pending
        event["done"] = False
        return [event]
