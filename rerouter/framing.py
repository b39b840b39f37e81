"""
Editing of streamed answers as they pass through: bytes arrive in arbitrary
network reads, are decompressed, cut into SSE events or NDJSON lines, handed
to a chunk editor as JSON objects, and sent on as soon as they are complete.
"""

import json
import logging
import math
import re
import zlib
from typing import Protocol

from rerouter.decoding import ZLIB
from rerouter.decoding import Decompressor
from rerouter.meter import StreamMeter
from rerouter.thinking import DROP
from rerouter.thinking import KEEP
from rerouter.thinking import Result
from rerouter.thinking import may_hold_reasoning

logger = logging.getLogger(__name__)

# A blank line: \n\n, \r\n\r\n, \r\n\n or \n\r\n. A leading \r is part of the event either way,
# and leaving it out of the pattern lets the regex engine jump from \n to \n.
_EVENT_END = re.compile(rb"\n\r?\n")
_LINE = re.compile(rb"[^\n]*\n|[^\n]+\Z")
_LINE_BREAKS = str.maketrans({"\u0085": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})
_IDENTITY = "identity"
_PLAIN_STRING = re.compile(rb'"[^"\\\x00-\x1f]*"')
"""A JSON string literal without escapes, which JSON parses to its bytes decoded."""
MAX_HELD = 1024 * 1024
"""Bytes a framer holds of one unfinished event or line; past it the stream passes on unedited."""
MAX_READ_PLAIN = 8 * 1024 * 1024
"""Bytes one network read may decompress to (a 64 KiB read at 128:1); more is a compression bomb and ends the stream."""


class ChunkEditor(Protocol):
    @property
    def idle(self) -> bool: ...

    @property
    def stripped(self) -> bool: ...

    def edit(self, event: dict) -> Result: ...

    def finish(self) -> list[dict]: ...


class Framer:
    """
    Holds the start of an event or line that is not complete yet. `feed` gives what is complete
    as one block, unsplit, which is all a read needs when nothing in it is edited; `split` cuts a
    block into its events or lines only for the reads that are.
    """

    ENDINGS: tuple[bytes, ...] = ()
    """What a block that surely ends with a complete event or line ends with..."""
    NOT_ENDINGS: tuple[bytes, ...] = ()
    """...unless it ends with one of these: data, not a method, so the quick look costs no call."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    @property
    def held(self) -> int:
        return len(self._buffer)

    def whole(self, data: bytes) -> bool:
        """A quick look: true only when nothing is held and `data` surely ends with a complete event or line."""
        return not self._buffer and data.endswith(self.ENDINGS) and not data.endswith(self.NOT_ENDINGS)

    def feed(self, data: bytes) -> bytes:
        """The complete events or lines so far, as one block (`data` itself when it is just that); the rest is held."""
        if self.whole(data):
            return data
        held = self._buffer
        text = bytes(held) + data if held else data
        end = self._complete(text, max(len(held) - 2, 0))
        if not end:
            held += data
            return b""
        self._buffer = bytearray(text[end:])
        return text if end == len(text) else text[:end]

    def _complete(self, text: bytes, start: int) -> int:
        """Where the last complete event or line in `text` ends (0 for none); none ends before `start`."""
        raise NotImplementedError

    @staticmethod
    def split(block: bytes) -> list[bytes]:
        """The events or lines of a block, in order; an unterminated end (the stream's last bytes) is one too."""
        raise NotImplementedError

    def rest(self) -> bytes:
        rest = bytes(self._buffer)
        self._buffer.clear()
        return rest


class SSEFramer(Framer):
    """Cuts a byte stream into server-sent events, each with its terminating blank line."""

    # Blank lines are found from the left: only a run of exactly one blank line surely ends at the end.
    ENDINGS = (b"\n\n", b"\r\n\r\n")
    NOT_ENDINGS = (b"\n\n\n", b"\r\n\n", b"\n\r\n\r\n", b"\r\r\n\r\n")

    def _complete(self, text: bytes, start: int) -> int:
        # Only new bytes can complete a blank line, together with at most 2 bytes before them;
        # blank lines are found from the left, as `split` finds them.
        end = 0
        while match := _EVENT_END.search(text, start):
            end = start = match.end()
        return end

    @staticmethod
    def split(block: bytes) -> list[bytes]:
        events = []
        start = 0
        for match in _EVENT_END.finditer(block):
            events.append(block[start : match.end()])
            start = match.end()
        if start < len(block):
            events.append(block[start:])
        return events


class LineFramer(Framer):
    """Cuts a byte stream into lines, each with its line ending."""

    ENDINGS = (b"\n",)

    def _complete(self, text: bytes, start: int) -> int:
        return text.rfind(b"\n", start) + 1

    @staticmethod
    def split(block: bytes) -> list[bytes]:
        return _LINE.findall(block)


def _normalise(encoding: str | None) -> str:
    return (encoding or _IDENTITY).strip().lower()


def supports_encoding(encoding: str | None) -> bool:
    """Whether EventStream can decode a body with this Content-Encoding."""
    return _normalise(encoding) in (_IDENTITY, *ZLIB)


def _parse(payload: bytes) -> dict | None:
    """The event's JSON object, or None for anything else: such events pass through as they came."""
    try:
        obj = json.loads(payload.decode())
    except (ValueError, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None


def _finite(value: object) -> object:
    """JSON has no Infinity: a number too large for a float (1e400) is written as null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value


def _dumps(obj: dict) -> bytes:
    try:
        text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except ValueError:
        text = json.dumps(_finite(obj), ensure_ascii=False, separators=(",", ":"))
    # line breaks to readers that split like str.splitlines() (httpx's iter_lines, so the ollama client)
    text = text.translate(_LINE_BREAKS)
    try:
        return text.encode()
    except UnicodeEncodeError:
        # lone surrogates, decoded from \ud800-style escapes, have no UTF-8 form
        return json.dumps(json.loads(text), separators=(",", ":")).encode()


class DroppedShape:
    """
    An event the editor dropped whole as reasoning, as the bytes around its one text, and around
    its time stamp where it has one (Ollama stamps every line). Inside a think block the next
    events mostly differ from it in those alone, and are dropped too without being parsed
    (ChunkEditor.drop_like_last).
    """

    def __init__(self, parts: list[bytes]) -> None:
        self.parts = parts
        """The bytes between the holes, each hole a JSON string without escapes; the last hole is the text."""
        self._least = sum(map(len, parts)) + 2 * (len(parts) - 1)

    @classmethod
    def of(cls, event: bytes, text: str, stamp: bytes | None = None) -> "DroppedShape | None":
        """None when an escape could hide the text, or it occurs twice: its place must be certain."""
        if event.find(b"\\") >= 0:
            return None
        literal = b'"' + text.encode() + b'"'
        at = event.find(literal)
        if at < 0 or event.find(literal, at + 1) >= 0:
            return None
        before = event[:at]
        parts = [before, event[at + len(literal) :]]
        key = -1 if stamp is None else before.find(stamp)
        if key >= 0 and before.find(stamp, key + 1) < 0 and (value := _PLAIN_STRING.match(before, key + len(stamp))):
            parts[:1] = [before[: value.start()], before[value.end() :]]
        return cls(parts)

    def frames(self, event: bytes) -> bool:
        """Whether the event starts and ends as the dropped one did."""
        return len(event) >= self._least and event.startswith(self.parts[0]) and event.endswith(self.parts[-1])

    def text(self, event: bytes) -> str | None:
        """The text of an event that `frames` fits, when it is the dropped one's but for its holes; else None."""
        at = len(self.parts[0])
        for part in self.parts[1:-1]:
            hole = _PLAIN_STRING.match(event, at)
            if hole is None or not event.startswith(part, hole.end()):
                return None
            at = hole.end() + len(part)
        end = len(event) - len(self.parts[-1])
        if _PLAIN_STRING.fullmatch(event, at, end) is None:
            return None
        try:
            return event[at + 1 : end - 1].decode()
        except UnicodeDecodeError:
            return None


class EventStream:
    """
    The callable for `flow.response.stream`, called once per network read and
    once more with b"" at the end.

    An empty bytes element makes mitmproxy end the client's chunked response,
    so the result is always a list, and never holds one. Without an editor the
    events pass unedited and only the meter looks at them.
    """

    _STAMP: bytes | None = None
    """The key of a time stamp each event carries, which a DroppedShape lets vary."""

    def __init__(
        self,
        framer: Framer,
        editor: ChunkEditor | None,
        encoding: str | None = None,
        meter: StreamMeter | None = None,
    ) -> None:
        encoding = _normalise(encoding)
        self.editor = editor
        self.meter = meter
        self._framer = framer
        self._decompressor = None if encoding == _IDENTITY else Decompressor(encoding)
        self._editing = True
        self._cut = False
        self._dropped: DroppedShape | None = None
        self._shaping = True  # false once events are seen to differ in more than their text
        self.note: str | None = None  # what could not be done, for the flow's row

    @staticmethod
    def sse(editor: ChunkEditor | None, encoding: str | None = None, meter: StreamMeter | None = None) -> "EventStream":
        return SSEStream(editor, encoding, meter)

    @staticmethod
    def ndjson(editor: ChunkEditor | None, encoding: str | None = None, meter: StreamMeter | None = None) -> "EventStream":
        return NDJSONStream(editor, encoding, meter)

    @property
    def stripped(self) -> bool:
        return self.editor is not None and self.editor.stripped

    @property
    def editing(self) -> bool:
        """False once the stream passes through unedited: then its output no longer ends at event boundaries."""
        return self._editing

    def __call__(self, data: bytes) -> list[bytes]:
        """What is ready goes out as one element: mitmproxy writes each element as a chunk of its own."""
        if self._passes_whole(data):
            return [data]  # the meter, if any, noted it received and delivered
        output = b"".join(self._process(data))
        if not output:
            return []
        if self.meter is not None:
            self.meter.delivered(output)
        return [output]

    def _passes_whole(self, data: bytes) -> bool:
        """Most reads are whole events, plain and passing: these skip the rest of the way."""
        return self._decompressor is None and self._editing and self._framer.whole(data) and self._let_pass(data)

    def _let_pass(self, block: bytes) -> bool:
        """
        Lets a block of events pass as it came, neither split nor copied, when nothing in it would
        change, and the meter notes it. False for a block that may hold a think tag or reasoning
        while an editor is at work, or anything while the editor is not idle, or token counts the
        meter takes out: that block is split and edited.
        """
        if self.editor is not None and not (self.editor.idle and not may_hold_reasoning(block)):
            return False
        return self.meter is None or self.meter.passing(block)

    def _process(self, data: bytes) -> list[bytes]:
        if self._cut:
            return []
        try:
            plain = self._decompress(data)
        except zlib.error:
            self._decompressor = None
            return self._give_up([]) + [data]  # what the framer holds came before this read
        if len(plain) > MAX_READ_PLAIN:
            return self._cut_off()
        if not self._editing:
            return [plain]
        block = self._framer.feed(plain)
        if not data:
            block += self._framer.rest()
        output: list[bytes] = []
        events = []
        if block and self._let_pass(block):
            output = [block]
        elif block:
            events = self._framer.split(block)
            if self.meter is not None:
                events = self.meter.received(events)
        for i, event in enumerate(events):
            try:
                output += self._edit(event)
            except Exception:
                return output + self._give_up(events[i:])
        if self._framer.held > MAX_HELD:
            return output + self._give_up([], f"stream passed on unedited: an event exceeded {MAX_HELD >> 20} MiB")
        if not data:
            try:
                carriers = self._carriers()
            except Exception:
                return output + self._give_up([])
            if carriers and output:
                output.append(self._terminator(output[-1]))
            output += carriers
        return output

    def _decompress(self, data: bytes) -> bytes:
        if self._decompressor is None:
            return data
        if data:
            return self._decompressor.decompress(data, MAX_READ_PLAIN + 1)
        return self._decompressor.flush()

    def _cut_off(self) -> list[bytes]:
        """Nothing more of this stream is decoded or sent: the client gets what it had."""
        self._cut = True
        self._editing = False
        self.note = f"stream cut: a network read decompressed to more than {MAX_READ_PLAIN >> 20} MiB"
        logger.warning(self.note)
        return []

    def _give_up(self, unedited: list[bytes], reason: str | None = None) -> list[bytes]:
        """Sends the rest of the stream as it comes: an unedited answer beats a lost one."""
        if not self._editing:
            return unedited
        if reason is None:
            logger.exception("Cannot edit streamed response, passing the rest through unmodified.")
            reason = "stream passed on unedited: it could not be edited"
        else:
            logger.warning(reason)
        self.note = reason
        self._editing = False
        try:
            pending = self._carriers()
        except Exception:
            pending = []
        return pending + unedited + [self._framer.rest()]

    def _before(self, result: Result) -> list[bytes]:
        """The events an editor cut from the one it was given, serialised; they go out before it."""
        return [self._serialise(obj) for obj in result[:-1]] if isinstance(result, list) else []

    def _carriers(self) -> list[bytes]:
        """The editor's held-back text, serialised."""
        if self.editor is None:
            return []
        return [self._serialise(event) for event in self.editor.finish()]

    def _edit(self, event: bytes) -> list[bytes]:
        """One complete event through the editor: unchanged bytes unless the editor changed its object."""
        if self.editor.idle and not may_hold_reasoning(event):
            return [event]
        unframed = False
        if self._dropped is not None:
            if self._dropped.frames(event):
                text = self._dropped.text(event)
                if text is not None and self.editor.drop_like_last(text):
                    return []
            else:
                unframed = True
        payload = self._payload(event)
        if payload is None:
            return [event]
        if payload == b"[DONE]":
            return self._carriers() + [event]
        obj = _parse(payload)
        if obj is None:
            return [event]
        result = self.editor.edit(obj)
        # dropped, yet not framed by the shape: the events differ in more than their text, so this
        # stream makes no more shapes
        self._shaping = self._shaping and not (unframed and result is DROP)
        dropped = self.editor.dropped
        self._dropped = DroppedShape.of(event, dropped[1], self._STAMP) if dropped is not None and self._shaping else None
        if result is KEEP:
            return [event]
        if result is DROP:
            return []
        return [*self._before(result), self._rebuild(event, obj)]

    def _payload(self, event: bytes) -> bytes | None:
        """The event's JSON text, or None when it carries none."""
        raise NotImplementedError

    def _rebuild(self, event: bytes, obj: dict) -> bytes:
        """The event again with its edited object, framed as it came."""
        raise NotImplementedError

    def _serialise(self, obj: dict) -> bytes:
        raise NotImplementedError

    def _terminator(self, last: bytes) -> bytes:
        """What completes an unterminated last event, so that carriers can follow it."""
        raise NotImplementedError


class SSEStream(EventStream):
    """Server-sent events with JSON data, as OpenAI-compatible servers stream them."""

    def __init__(self, editor: ChunkEditor | None, encoding: str | None = None, meter: StreamMeter | None = None) -> None:
        super().__init__(SSEFramer(), editor, encoding, meter)
        self._newline = b"\n"

    def _payload(self, event: bytes) -> bytes | None:
        data = [_data_value(line) for line in event.rstrip(b"\r\n").splitlines() if line.startswith(b"data:")]
        if not data:
            return None
        self._newline = b"\r\n" if b"\r\n" in event else b"\n"
        return b"\n".join(data)

    def _rebuild(self, event: bytes, obj: dict) -> bytes:
        body = event.rstrip(b"\r\n")
        data_line = b"data: " + _dumps(obj)
        rebuilt = []
        for line in body.splitlines():
            if not line.startswith(b"data:"):
                rebuilt.append(line)
            elif data_line:
                rebuilt.append(data_line)
                data_line = b""
        return self._newline.join(rebuilt) + event[len(body) :]

    def _serialise(self, obj: dict) -> bytes:
        return b"data: " + _dumps(obj) + self._newline * 2

    def _terminator(self, last: bytes) -> bytes:
        if last.endswith((b"\n\n", b"\n\r\n")):
            return b""
        return self._newline if last.endswith(b"\n") else self._newline * 2


def _data_value(line: bytes) -> bytes:
    value = line[5:]
    return value[1:] if value.startswith(b" ") else value


class NDJSONStream(EventStream):
    """One JSON object per line, as Ollama streams them."""

    _STAMP = b'"created_at":'

    def __init__(self, editor: ChunkEditor | None, encoding: str | None = None, meter: StreamMeter | None = None) -> None:
        super().__init__(LineFramer(), editor, encoding, meter)

    def _payload(self, line: bytes) -> bytes | None:
        return line.rstrip(b"\r\n")

    def _rebuild(self, line: bytes, obj: dict) -> bytes:
        return _dumps(obj) + line[len(line.rstrip(b"\r\n")) :]

    def _serialise(self, obj: dict) -> bytes:
        return _dumps(obj) + b"\n"

    def _terminator(self, last: bytes) -> bytes:
        return b"" if last.endswith(b"\n") else b"\n"


_DONE_EVENT = re.compile(rb"(?:^|\n)data: ?\[DONE\]$")
_DONE_LINE = re.compile(rb'"done"\s*:\s*true')
LAST_EVENT_WINDOW = 4096
"""How much of a stream's end `ends_with_last_event` needs: Ollama's last line carries its statistics."""


def ends_with_last_event(tail: bytes) -> bool:
    """
    Whether a stream's delivered bytes end with its last event: SSE's `data: [DONE]`, or the
    NDJSON line with `"done": true`. Text inside events is JSON-escaped, so it cannot fake either.
    """
    end = tail.rstrip()
    return _DONE_EVENT.search(end) is not None or _DONE_LINE.search(end.rpartition(b"\n")[2]) is not None
