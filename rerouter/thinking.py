"""
Reasoning in LLM answers: `<think>...</think>` blocks in the text, and the
fields in which servers send reasoning apart from it.

The rule for one text arriving in pieces (ThinkFilter), the same for any cut:
- text between `<think>` and the next `</think>` is reasoning (tags in any letter
  case, no nesting: the first `</think>` closes); whitespace right after
  `</think>` belongs to neither;
- a `</think>` outside a block is a lone close: it goes, with the whitespace after it;
- an answer whose chat template opened the block (`open_start`) begins inside it,
  and that text is withheld rather than dropped: if no `</think>` starts within its
  first OPEN_START_LIMIT characters, it was the answer after all; a `<think>` before
  anything but whitespace is the model opening an ordinary block itself;
- only a possible tag start is ever held back, and it is text if the tag never completes.

Everything here works on decoded text and JSON objects; turning network
bytes into those objects and back is framing.py's job.
"""

import enum
import json
import re
from dataclasses import dataclass

OPEN_TAG = "<think>"
CLOSE_TAG = "</think>"
OPEN_START_LIMIT = 1 << 20
"""Characters of a template-opened answer withheld at most while waiting for its `</think>`."""
MAX_CHOICES = 128
"""Choice indexes a stream editor keeps state for (OpenAI's limit for n); others pass unedited."""

# ASCII-only case folding: no non-ASCII letter (such as the Kelvin sign) can spell a tag.
_TAG = re.compile(r"<(/?)think>", re.IGNORECASE | re.ASCII)
_CLOSE = re.compile(re.escape(CLOSE_TAG), re.IGNORECASE | re.ASCII)
_WHITESPACE = re.compile(r"\s*")

# A `model` member with its JSON string value; inside a string the quotes would be escaped.
_MODEL_FIELD = re.compile(rb'"model"\s*:\s*("(?:[^"\\]|\\.){0,1024}")')

_OPENAI_REASONING = ("reasoning_content", "reasoning")
_OLLAMA_REASONING = ("thinking",)

ANSWER = "answer"
REASONING = "reasoning"
Piece = tuple[str, str]
"""(ANSWER or REASONING, text): a stretch of one kind, in the order the text had it."""


class Reasoning(enum.Enum):
    """What STRIP_THINKING does with reasoning; false only for KEEP."""

    KEEP = "false"
    """Answers pass untouched."""
    DROP = "true"
    """Reasoning is removed."""
    SEPARATE = "separate"
    """Reasoning is moved into the field clients know for separated reasoning."""

    def __bool__(self) -> bool:
        return self is not Reasoning.KEEP


@dataclass
class Findings:
    """What the editing of one answer found, for the flow's row."""

    reasoning_chars: int = 0
    """Characters of reasoning removed or moved (the text, not its tags)."""
    reasoned: bool = False
    """Reasoning with more than whitespace was seen, whatever happened to it."""
    lone_close: bool = False
    """A `</think>` came with no block open: the model starts inside a think block."""
    edited: bool = False
    """Reasoning was removed or moved, tags included."""
    model: str | None = None
    """The model the upstream's answer named (a stream: its first event naming one)."""

    def add_reasoning(self, text: str) -> None:
        self.reasoning_chars += len(text)
        self.reasoned = self.reasoned or not text.isspace()


def _partial_tag_length(text: str, start: int, tags: tuple[str, ...]) -> int:
    """Length of the suffix of text[start:] that could still grow into one of tags."""
    lt = text.rfind("<", max(start, len(text) - len(CLOSE_TAG) + 1))
    if lt < 0:
        return 0
    suffix = text[lt:]
    if suffix.isascii() and any(tag.startswith(suffix.lower()) for tag in tags):
        return len(suffix)
    return 0


def _add(pieces: list[Piece], kind: str, text: str) -> None:
    if not text:
        return
    if pieces and pieces[-1][0] == kind:
        pieces[-1] = (kind, pieces[-1][1] + text)
    else:
        pieces.append((kind, text))


def _joined(pieces: list[Piece], kind: str) -> str:
    return "".join(text for piece_kind, text in pieces if piece_kind == kind)


class ThinkFilter:
    """
    Splits one text that arrives in pieces into answer and reasoning, by the module's rule.

    Outside a template-opened block only a possible tag start is ever held back,
    so the answer keeps flowing at the pace it is generated.
    """

    def __init__(self, findings: Findings | None = None, open_start: bool = False, limit: int = OPEN_START_LIMIT) -> None:
        self.findings = findings if findings is not None else Findings()
        self._inside = open_start
        self._withholding = open_start
        self._leading = open_start  # nothing but whitespace withheld yet
        self._withheld: list[str] = []
        self._withheld_chars = 0
        self._limit = limit
        self._held = ""
        self._skip_space = False

    @property
    def idle(self) -> bool:
        """True when the next text cannot be affected by what came before."""
        return not (self._inside or self._held or self._skip_space)

    @property
    def in_block(self) -> bool:
        """True inside a block with nothing held or withheld: then a text without `<` is all reasoning."""
        return self._inside and not (self._withholding or self._held)

    def feed(self, text: str) -> list[Piece]:
        if self.idle and "<" not in text:
            return [(ANSWER, text)] if text else []
        text = self._held + text
        self._held = ""
        pieces: list[Piece] = []
        pos = 0
        while pos < len(text):
            if self._withholding:
                pos = self._withhold(text, pos, pieces)
            elif self._inside:
                pos = self._block(text, pos, pieces)
            elif self._skip_space:
                pos = _WHITESPACE.match(text, pos).end()
                self._skip_space = pos == len(text)
            else:
                pos = self._answer(text, pos, pieces)
        return pieces

    def flush(self) -> list[Piece]:
        """
        Ends the text: a held-back tag start was text after all, an unclosed block's
        end is reasoning, and what a template-opened answer withheld was the answer.
        """
        pieces: list[Piece] = []
        if self._withholding:
            _add(pieces, ANSWER, "".join(self._withheld) + self._held)
        elif self._inside:
            self._reason(pieces, self._held)
        else:
            _add(pieces, ANSWER, self._held)
        self._inside = self._withholding = self._leading = self._skip_space = False
        self._withheld, self._withheld_chars, self._held = [], 0, ""
        return pieces

    def _answer(self, text: str, pos: int, pieces: list[Piece]) -> int:
        match = _TAG.search(text, pos)
        if match is None:
            end = len(text) - _partial_tag_length(text, pos, (OPEN_TAG, CLOSE_TAG))
            _add(pieces, ANSWER, text[pos:end])
            self._held = text[end:]
            return len(text)
        _add(pieces, ANSWER, text[pos : match.start()])
        self.findings.edited = True
        if match.group(1):
            self.findings.lone_close = True
            self._skip_space = True
        else:
            self._inside = True
        return match.end()

    def _block(self, text: str, pos: int, pieces: list[Piece]) -> int:
        match = _CLOSE.search(text, pos)
        if match is None:
            end = len(text) - _partial_tag_length(text, pos, (CLOSE_TAG,))
            self._reason(pieces, text[pos:end])
            self._held = text[end:]
            return len(text)
        self._reason(pieces, text[pos : match.start()])
        self._inside = False
        self._skip_space = True
        return match.end()

    def _withhold(self, text: str, pos: int, pieces: list[Piece]) -> int:
        if self._leading:
            return self._opening(text, pos, pieces)
        match = _CLOSE.search(text, pos)
        stop = pos + self._limit - self._withheld_chars  # a `</think>` must start before this
        if match is not None and match.start() < stop:
            self._withheld.append(text[pos : match.start()])
            self._reason(pieces, "".join(self._withheld))
            self._withheld, self._withheld_chars = [], 0
            self._inside = self._withholding = False
            self._skip_space = self.findings.edited = True
            return match.end()
        if match is None:
            end = len(text) - _partial_tag_length(text, pos, (CLOSE_TAG,))
            if end < stop:
                self._withheld.append(text[pos:end])
                self._withheld_chars += end - pos
                self._held = text[end:]
                return len(text)
        # no `</think>` starts within the limit: the text was the answer
        _add(pieces, ANSWER, "".join(self._withheld) + text[pos:stop])
        self._withheld, self._withheld_chars = [], 0
        self._inside = self._withholding = False
        return stop

    def _opening(self, text: str, pos: int, pieces: list[Piece]) -> int:
        """
        The start of a template-opened answer: whitespace, then perhaps a `<think>` of the
        model's own, which makes it an ordinary block, its text no longer withheld.
        """
        start = min(_WHITESPACE.match(text, pos).end(), pos + self._limit - self._withheld_chars)
        self._withheld.append(text[pos:start])
        self._withheld_chars += start - pos
        rest = text[start : start + len(OPEN_TAG)]
        if rest.isascii() and rest.lower() == OPEN_TAG:
            _add(pieces, ANSWER, "".join(self._withheld))
            self._withheld, self._withheld_chars = [], 0
            self._leading = self._withholding = False
            self.findings.edited = True
            return start + len(OPEN_TAG)
        if start + len(rest) == len(text) and rest.isascii() and OPEN_TAG.startswith(rest.lower()):
            self._held = rest  # "" at the end of the text, or a tag that may still complete
            return len(text)
        self._leading = False
        return start

    def _reason(self, pieces: list[Piece], text: str) -> None:
        if text:
            self.findings.add_reasoning(text)
            _add(pieces, REASONING, text)


def may_hold_reasoning(raw: bytes) -> bool:
    """A cheap look at raw JSON bytes, so that most answers and events are never parsed."""
    # What raw JSON must contain to hold a think tag or a reasoning field (a key, so quoted); Go's
    # JSON encoder (Ollama) writes `<` as \u003c. Plain searches, one after the other: a regex
    # alternation stops at every "r" and "t" of the text (4x slower), a generator costs a call each,
    # and bytes' `in` first tries the needle as an int (3x slower than find()). A one-byte search
    # (memchr) is 15x faster than a word's, so \u003c is looked for only where a backslash is.
    return (
        raw.find(b"<") >= 0
        or (raw.find(b"\\") >= 0 and (raw.find(b"\\u003c") >= 0 or raw.find(b"\\u003C") >= 0))
        or raw.find(b'"reasoning') >= 0
        or raw.find(b'"thinking"') >= 0
    )


def answer_model(raw: bytes) -> str | None:
    """
    The model a whole JSON answer names, without parsing it: the first `model` member,
    which every API writes at the top level before any nested object that could hold one.
    """
    match = _MODEL_FIELD.search(raw)
    if match is None:
        return None
    try:
        return _loggable(json.loads(match.group(1)))
    except ValueError:  # invalid UTF-8
        return None


def _loggable(name: str) -> str | None:
    """The name, unless it holds a lone surrogate (`\\ud800`): UTF-8, and so the log, cannot store that."""
    try:
        name.encode()
    except UnicodeEncodeError:
        return None
    return name


def split_think(text: str, open_start: bool = False, findings: Findings | None = None) -> list[Piece]:
    """The pieces of a whole text, as a stream carrying it in any cut would give them."""
    think = ThinkFilter(findings, open_start)
    pieces = think.feed(text)
    for kind, piece in think.flush():
        _add(pieces, kind, piece)
    return pieces


def strip_think(text: str, open_start: bool = False) -> str:
    """The answer of a whole text, reasoning dropped."""
    return _joined(split_think(text, open_start), ANSWER)


def starts_inside(text: str) -> bool:
    """Whether the first think tag of a whole answer is a `</think>`: the reasoning before it had no `<think>`."""
    match = _TAG.search(text)
    return match is not None and bool(match.group(1))


def _model_holder(event: dict) -> dict | None:
    """The object whose `model` names the answer's model: the event, or a Responses API event's `response`."""
    if isinstance(event.get("model"), str):
        return event
    response = event.get("response")
    if isinstance(response, dict) and isinstance(response.get("model"), str):
        return response
    return None


def note_model(event: dict, findings: Findings, echo: str | None) -> bool:
    """Notes the model the answer names and, when echoing, puts the requested name there; returns whether it changed."""
    holder = _model_holder(event)
    if holder is None:
        return False
    if findings.model is None:
        findings.model = _loggable(holder["model"])
    if echo is None or holder["model"] == echo:
        return False
    holder["model"] = echo
    return True


@dataclass(frozen=True)
class Slot:
    """Where one API puts an answer's text and its separated reasoning."""

    text: str
    reasoning: str
    separated: tuple[str, ...]
    """Fields in which the upstream itself may have separated reasoning."""
    keeps_text: bool
    """Whether an object carrying only reasoning still carries the text field (emptied)."""


CHAT = Slot("content", "reasoning_content", _OPENAI_REASONING, keeps_text=False)
COMPLETION = Slot("text", "reasoning_content", (), keeps_text=True)
OLLAMA_CHAT = Slot("content", "thinking", _OLLAMA_REASONING, keeps_text=True)
OLLAMA_GENERATE = Slot("response", "thinking", _OLLAMA_REASONING, keeps_text=True)


def _handle_separated(holder: dict, slot: Slot, reasoning: Reasoning, findings: Findings) -> bool:
    """Reasoning the upstream separated: removed with DROP, left as it is otherwise; returns whether holder changed."""
    changed = False
    for key in slot.separated:
        value = holder.get(key)
        if value is None:  # carries nothing: stays, so such an object needs no rewrite
            continue
        if isinstance(value, str):
            if reasoning is Reasoning.DROP:
                findings.add_reasoning(value)
            else:
                findings.reasoned = findings.reasoned or not value.isspace()
        if reasoning is Reasoning.DROP:
            del holder[key]
            findings.edited = changed = True
    return changed


def _place(holder: dict, slot: Slot, kind: str, text: str) -> None:
    """Puts one piece into holder: the answer into the text field, reasoning into the reasoning field."""
    if kind == ANSWER:
        holder[slot.text] = text
        return
    if slot.keeps_text:
        holder[slot.text] = ""
    else:
        holder.pop(slot.text, None)
    _add_reasoning(holder, slot, text)


def _add_reasoning(holder: dict, slot: Slot, text: str) -> None:
    """Reasoning goes after what the field already holds."""
    before = holder.get(slot.reasoning)
    holder[slot.reasoning] = before + text if isinstance(before, str) else text


def _disposed(pieces: list[Piece], reasoning: Reasoning) -> list[Piece]:
    """The pieces that go to the client: with DROP only the answer, in one piece."""
    if reasoning is Reasoning.SEPARATE:
        return pieces
    answer = _joined(pieces, ANSWER)
    return [(ANSWER, answer)] if answer else []


def _unchanged(pieces: list[Piece], text: str) -> bool:
    return pieces == [(ANSWER, text)] if text else not pieces


def _edit_whole(holder: dict, slot: Slot, reasoning: Reasoning, open_start: bool, findings: Findings) -> bool:
    changed = _handle_separated(holder, slot, reasoning, findings)
    text = holder.get(slot.text)
    if not isinstance(text, str):
        return changed
    if not open_start and starts_inside(text):
        findings.lone_close = True
        open_start = True
    pieces = split_think(text, open_start, findings)
    if _unchanged(pieces, text):
        return changed
    holder[slot.text] = _joined(pieces, ANSWER)
    moved = _joined(pieces, REASONING)
    if reasoning is Reasoning.SEPARATE and moved:
        _add_reasoning(holder, slot, moved)
    return True


def edit_answer(body: object, reasoning: Reasoning, open_start: bool = False, echo: str | None = None, findings: Findings | None = None) -> bool:
    """
    Edits a complete (non-streamed) answer in place; returns whether anything changed.

    Unlike in a stream, the whole text is there: a `</think>` before any `<think>`
    shows that everything before it was reasoning, whatever the model's name.
    """
    if not isinstance(body, dict):
        return False
    findings = findings if findings is not None else Findings()
    changed = note_model(body, findings, echo)
    if not reasoning:
        return changed
    choices = body.get("choices")
    if isinstance(choices, list):
        for choice in choices:
            if not isinstance(choice, dict):
                continue
            message = choice.get("message")
            if isinstance(message, dict):
                changed |= _edit_whole(message, CHAT, reasoning, open_start, findings)
            changed |= _edit_whole(choice, COMPLETION, reasoning, open_start, findings)
    message = body.get("message")
    if isinstance(message, dict):
        changed |= _edit_whole(message, OLLAMA_CHAT, reasoning, open_start, findings)
    if isinstance(body.get("response"), str):
        changed |= _edit_whole(body, OLLAMA_GENERATE, reasoning, open_start, findings)
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
Result = Edit | list[dict]
"""An Edit, or the events to send instead of the one given: new ones first, the given one (changed) last."""


def _outcome(changed: bool, carries: bool) -> Edit:
    if not changed:
        return KEEP
    return CHANGED if carries else DROP


class ChunkEditor:
    """
    Edits the events of one streamed answer as they pass: reasoning dropped or
    moved into events of its own, the model noted and, when echoing, renamed.
    """

    def __init__(self, reasoning: Reasoning = Reasoning.DROP, open_start: bool = False, echo: str | None = None) -> None:
        self.reasoning = reasoning
        self.open_start = open_start
        self.echo = echo
        self.findings = Findings()
        self.idle = False
        """True when an event whose bytes cannot hold reasoning may pass unparsed; an attribute, as it is read per network read."""
        self.dropped: tuple[ThinkFilter, str] | None = None
        """The filter and text of the event just edited, when it was dropped whole, its one text all reasoning."""
        self._texts = 0
        self._all_reasoning: tuple[ThinkFilter, str] | None = None

    @property
    def stripped(self) -> bool:
        return self.findings.edited

    def edit(self, event: dict) -> Result:
        self._texts, self._all_reasoning = 0, None
        result = self._edit(event)
        self.idle = self.echo is None and self.findings.model is not None and self._filters_idle()
        self.dropped = self._all_reasoning if result is DROP and self._texts == 1 else None
        return result

    def drop_like_last(self, text: str) -> bool:
        """
        Whether the event just dropped, with `text` for its text, is dropped too: true when the
        text is all reasoning (its filter inside a block, no `<` in it), which is then noted as
        `edit` notes it. Lets a stream drop such events without parsing them.
        """
        if self.dropped is None or not text or "<" in text or not self.dropped[0].in_block:
            return False
        self.dropped[0].feed(text)
        return True

    def _edit(self, event: dict) -> Result:
        raise NotImplementedError

    def _filters_idle(self) -> bool:
        raise NotImplementedError

    def _filter(self) -> ThinkFilter:
        return ThinkFilter(self.findings, self.open_start)

    def _edit_text(self, holder: dict, slot: Slot, think: ThinkFilter, final: bool) -> tuple[bool, bool, list[Piece]]:
        """
        Runs holder's text through think: returns whether holder changed, whether it still
        carries text, and the pieces that must go out in events before it.
        """
        self._texts += 1
        changed = _handle_separated(holder, slot, self.reasoning, self.findings)
        text = holder.get(slot.text)
        if text is None:
            text = ""
        elif not isinstance(text, str):
            return changed, True, []
        pieces = think.feed(text)
        if not changed and pieces == [(REASONING, text)]:
            self._all_reasoning = (think, text)
        if final:
            for kind, piece in think.flush():
                _add(pieces, kind, piece)
        pieces = _disposed(pieces, self.reasoning)
        if _unchanged(pieces, text):
            return changed, bool(text), []
        *earlier, (kind, last) = pieces or [(ANSWER, "")]
        _place(holder, slot, kind, last)
        return True, bool(last), earlier

    def _pending(self, think: ThinkFilter) -> list[Piece]:
        """What think still holds, as it goes to the client."""
        return _disposed(think.flush(), self.reasoning)


class OpenAIChunkEditor(ChunkEditor):
    """
    Edits an OpenAI-style stream of `chat.completion.chunk` or `text_completion` objects.

    With n > 1 the choices' texts interleave, so each choice index gets its own filter.
    """

    def __init__(self, reasoning: Reasoning = Reasoning.DROP, open_start: bool = False, echo: str | None = None) -> None:
        super().__init__(reasoning, open_start, echo)
        self._filters: dict[int, ThinkFilter] = {}
        self._template: dict = {}
        self._chat = True

    def _filters_idle(self) -> bool:
        return all(think.idle for think in self._filters.values())

    def _edit(self, event: dict) -> Result:
        changed = note_model(event, self.findings, self.echo)
        choices = event.get("choices")
        if not self.reasoning or not isinstance(choices, list) or not choices:
            return CHANGED if changed else KEEP
        self._template = event
        carries = event.get("usage") is not None
        earlier: list[list[dict]] = []
        for choice in choices:
            if isinstance(choice, dict):
                choice_changed, choice_carries, before = self._edit_choice(choice)
                changed |= choice_changed
                carries |= choice_carries
                if before:
                    earlier.append(before)
            else:
                carries = True
        if earlier:
            return self._split(event, earlier)
        return _outcome(changed, carries)

    def _edit_choice(self, choice: dict) -> tuple[bool, bool, list[dict]]:
        index = choice.get("index")
        index = index if isinstance(index, int) else 0
        if not 0 <= index < MAX_CHOICES:
            return False, True, []
        think = self._filters.get(index)
        if think is None:
            think = self._filters[index] = self._filter()
        finished = choice.get("finish_reason") is not None
        delta = choice.get("delta")
        self._chat = isinstance(delta, dict)
        if self._chat:
            changed, has_text, earlier = self._edit_text(delta, CHAT, think, finished)
            marked = any(delta.get(key) for key in ("role", "tool_calls", "function_call"))
            before = [self._choice(index, kind, text) for kind, text in earlier]
            if before and "role" in delta:  # the role opens the message
                before[0]["delta"] = {"role": delta.pop("role"), **before[0]["delta"]}
            return changed, has_text or marked or finished, before
        changed, has_text, earlier = self._edit_text(choice, COMPLETION, think, finished)
        return changed, has_text or finished, [self._choice(index, kind, text) for kind, text in earlier]

    def _split(self, event: dict, earlier: list[list[dict]]) -> list[dict]:
        """Events for the pieces that come before this event's own, each choice's in its order."""
        depth = max(len(before) for before in earlier)
        events = []
        for level in range(depth):
            choices = [before[level - depth + len(before)] for before in earlier if level >= depth - len(before)]
            events.append({**self._head(), "choices": choices})
        return [*events, event]

    def finish(self) -> list[dict]:
        """Events carrying text still held back, for streams that end without a finish_reason."""
        return [
            {**self._head(), "choices": [self._choice(index, kind, text)]}
            for index, think in self._filters.items()
            for kind, text in self._pending(think)
        ]

    def _head(self) -> dict:
        return {key: self._template[key] for key in ("id", "object", "created", "model") if key in self._template}

    def _choice(self, index: int, kind: str, text: str) -> dict:
        if self._chat:
            choice = {"index": index, "delta": {}, "finish_reason": None}
            _place(choice["delta"], CHAT, kind, text)
        else:
            choice = {"index": index, "text": text, "finish_reason": None}
            _place(choice, COMPLETION, kind, text)
        return choice


class OllamaChunkEditor(ChunkEditor):
    """
    Edits an Ollama `/api/chat` or `/api/generate` stream.

    Ollama repeats `message.role` on every chunk, so unlike with OpenAI a role
    is no reason to keep an emptied chunk.
    """

    def __init__(self, reasoning: Reasoning = Reasoning.DROP, open_start: bool = False, echo: str | None = None) -> None:
        super().__init__(reasoning, open_start, echo)
        self._think = self._filter()
        self._template: dict = {}
        self._chat = True

    def _filters_idle(self) -> bool:
        return self._think.idle

    def _edit(self, event: dict) -> Result:
        changed = note_model(event, self.findings, self.echo)
        message = event.get("message")
        if not self.reasoning:
            return CHANGED if changed else KEEP
        if isinstance(message, dict):
            holder, slot = message, OLLAMA_CHAT
            carries = bool(message.get("tool_calls"))
        elif "response" in event:
            holder, slot = event, OLLAMA_GENERATE
            carries = False
        else:
            return CHANGED if changed else KEEP
        self._chat = holder is message
        self._template = event
        done = event.get("done") is True
        edited, has_text, earlier = self._edit_text(holder, slot, self._think, done)
        if earlier:
            return [*(self._line(kind, text) for kind, text in earlier), event]
        return _outcome(changed or edited, carries or has_text or done)

    def finish(self) -> list[dict]:
        """Lines carrying text still held back, for streams that end without `done`."""
        return [self._line(kind, text) for kind, text in self._pending(self._think)]

    def _line(self, kind: str, text: str) -> dict:
        event = {key: self._template[key] for key in ("model", "created_at") if key in self._template}
        if self._chat:
            event["message"] = {"role": "assistant", "content": ""}
            _place(event["message"], OLLAMA_CHAT, kind, text)
        else:
            event["response"] = ""
            _place(event, OLLAMA_GENERATE, kind, text)
        event["done"] = False
        return event
