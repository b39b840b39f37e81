#!/usr/bin/env python3
"""
Coverage-guided fuzzing of the stream editing code (framing.py, thinking.py) with atheris.

    python -m fuzz.fuzz_streams [CORPUS_DIR ...] [-max_total_time=60] [libFuzzer flags]

Extra flags, taken out before libFuzzer sees the rest:
    -target=all|streams|think   which target(s) the input bytes drive (default: all)

Environment:
    FUZZ_KNOWN=name,...   stop producing (or checking) a known finding so that the run can look
                          for others; the names are in KNOWN below and in fuzz/README.md.

Each input is decoded with atheris.FuzzedDataProvider into one test case; every violated
invariant raises Finding, which libFuzzer reports as a crash and saves as crash-<sha1>.
Give libFuzzer -artifact_prefix=/tmp/somewhere/ so that these files do not land in the work tree.
"""

import gzip
import json
import logging
import os
import re
import sys
import zlib

import atheris

with atheris.instrument_imports():
    from rerouter import framing
    from rerouter.framing import EventStream
    from rerouter.framing import LineFramer
    from rerouter.framing import SSEFramer
    from rerouter.thinking import OllamaChunkEditor
    from rerouter.thinking import OpenAIChunkEditor
    from rerouter.thinking import ANSWER
    from rerouter.thinking import Reasoning
    from rerouter.thinking import ThinkFilter
    from rerouter.thinking import edit_answer
    from rerouter.thinking import split_think
    from rerouter.thinking import starts_inside
    from rerouter.thinking import strip_think

KNOWN = {
    # generation switches: the harness stops producing inputs of this shape
    "deep-nesting",  # JSON nested deeper than the json module's recursion limit
    "nonfinite",  # number literals such as 1e400, which Python reads as inf
    "gzip-members",  # gzip bodies made of several members (RFC 1952 allows it)
    "escaped-keys",  # object keys written with \\u escapes ("r\\u0065asoning_content")
    "raw-separators",  # U+2028, U+2029, U+0085 in answer text
    # check switches: the harness still produces the input but skips this check
    "zlib-order",  # order of the output when a compressed body turns out to be corrupt
    "extra-blank",  # an empty SSE event / NDJSON line sent before the carriers at the end
}
IGNORED = {name for name in os.environ.get("FUZZ_KNOWN", "").split(",") if name}
unknown = IGNORED - KNOWN
if unknown:
    sys.exit(f"FUZZ_KNOWN: unknown names {sorted(unknown)}; known: {sorted(KNOWN)}")


class Finding(AssertionError):
    pass


class Case:
    """What one input decoded to, printed with every finding."""

    def __init__(self) -> None:
        self.fields: dict = {}

    def __setitem__(self, key, value) -> None:
        self.fields[key] = value

    def __str__(self) -> str:
        lines = []
        for key, value in self.fields.items():
            text = repr(value)
            lines.append(f"  {key} = {text if len(text) <= 1500 else text[:1500] + '...'}")
        return "\n".join(lines)


CASE = Case()


def short(data) -> str:
    text = repr(data)
    return text if len(text) <= 1500 else text[:1500] + "..."


def check(condition: bool, tag: str, message: str) -> None:
    if condition or tag in IGNORED:
        return
    raise Finding(f"[{tag}] {message}\n{CASE}")


# Give-ups are logged by framing.py; count them instead of printing tracebacks.
class _GiveUps(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


GIVE_UPS = _GiveUps()
framing.logger.addHandler(GIVE_UPS)
framing.logger.propagate = False
framing.logger.setLevel(logging.DEBUG)


def _exc_name(record: logging.LogRecord) -> str:
    return record.exc_info[1].__class__.__name__ if record.exc_info and record.exc_info[1] else "?"


# ---------------------------------------------------------------------------------------------
# Fuzzed text

FRAGMENTS = [
    "<think>", "</think>", "<THINK>", "</Think>", "<ThInK>", "</THINK>", "<thi", "</th", "<", "</",
    "<t", "</thin", ">", "think", "/think>", "think>", "<<", " ", "  ", "\n", "\n\n", "\t", "\r\n",
    "\u00a0", "\u3000", "\x1c", "\x0b", "Hello", "world", "é", "😀", "日本", "&", "\\", '"', "/",
    "\x00", "\x1f", "\x7f", "\ud800", "\udfff", "\ud83d", "\ude00", "\u212a", "\u0130", "\\u003c",
    "\u2028", "\u2029", "\x85", "data: ", "[DONE]", "reasoning", "thinking",
]  # fmt: skip
SEPARATORS = ("\u2028", "\u2029", "\x85")


def one_in(fdp, n: int) -> bool:
    """True with probability 1/n; False once the input is used up (the provider then gives minimums)."""
    return fdp.ConsumeIntInRange(0, n - 1) == n - 1


def fuzz_text(fdp, max_pieces: int) -> str:
    parts = []
    for _ in range(fdp.ConsumeIntInRange(0, max_pieces)):
        k = fdp.ConsumeIntInRange(0, len(FRAGMENTS))
        if k == len(FRAGMENTS):
            parts.append(fdp.ConsumeUnicode(fdp.ConsumeIntInRange(0, 8)))
        else:
            parts.append(FRAGMENTS[k])
    text = "".join(parts)
    if "raw-separators" in IGNORED:
        for separator in SEPARATORS:
            text = text.replace(separator, " ")
    return text


# ---------------------------------------------------------------------------------------------
# A JSON writer with the variations real servers (and the JSON grammar) allow


class Raw(str):
    """JSON text written as is."""


PY, UTF8, GO, ESCAPE_ALL = range(4)


class Style:
    def __init__(self, fdp, sse: bool) -> None:
        self.mode = fdp.ConsumeIntInRange(0, 3)
        self.escape_keys = self.mode == ESCAPE_ALL and fdp.ConsumeBool() and "escaped-keys" not in IGNORED
        self.item_sep = fdp.PickValueInList([",", ", "] + ([",\n"] if sse else []))
        self.kv_sep = fdp.PickValueInList([":", ": "])
        self.upper_hex = fdp.ConsumeBool()
        self.escape_slash = fdp.ConsumeBool()

    def _u(self, code: int) -> str:
        if code > 0xFFFF:
            code -= 0x10000
            return self._u(0xD800 + (code >> 10)) + self._u(0xDC00 + (code & 0x3FF))
        return ("\\u%04X" if self.upper_hex else "\\u%04x") % code

    def quote(self, text: str, key: bool = False) -> str:
        out = ['"']
        for ch in text:
            code = ord(ch)
            if ch == '"':
                out.append('\\"')
            elif ch == "\\":
                out.append("\\\\")
            elif self.mode == ESCAPE_ALL and (not key or self.escape_keys):
                out.append(self._u(code))
            elif code < 0x20:
                out.append({"\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f"}.get(ch) or self._u(code))
            elif ch == "/" and self.escape_slash:
                out.append("\\/")
            elif 0xD800 <= code <= 0xDFFF:
                out.append(self._u(code))
            elif self.mode == GO and ch in "<>&\u2028\u2029":
                out.append(self._u(code))
            elif self.mode == PY and code > 0x7F:
                out.append(self._u(code))
            else:
                out.append(ch)
        out.append('"')
        return "".join(out)

    def dumps(self, value) -> str:
        if isinstance(value, Raw):
            return value
        if value is None:
            return "null"
        if value is True:
            return "true"
        if value is False:
            return "false"
        if isinstance(value, (int, float)):
            return json.dumps(value)
        if isinstance(value, str):
            return self.quote(value)
        if isinstance(value, list):
            return "[" + self.item_sep.join(self.dumps(item) for item in value) + "]"
        if isinstance(value, dict):
            items = (self.quote(k, key=True) + self.kv_sep + self.dumps(v) for k, v in value.items())
            return "{" + self.item_sep.join(items) + "}"
        raise TypeError(value)


NUMBERS = ["0", "-0", "3", "0.5", "-1.25e-3", "123456789012345678901234567890", "1E+2"]
NONFINITE = ["1e400", "-1e400", "1E+999", "12e999999"]


def extra_value(fdp):
    """A field of no interest to the editor, for the rest of the object to be carried through."""
    kind = fdp.ConsumeIntInRange(0, 7)
    if kind == 0:
        return Raw(fdp.PickValueInList(NUMBERS))
    if kind == 1 and "nonfinite" not in IGNORED:
        return Raw(fdp.PickValueInList(NONFINITE))
    if kind == 2:
        depth = fdp.PickValueInList([1, 5, 50, 400, 900, 990, 1200, 2500])
        if depth > 400 and "deep-nesting" in IGNORED:
            depth = 400
        if fdp.ConsumeBool():
            return Raw("[" * depth + "]" * depth)
        return Raw('{"a":' * depth + "1" + "}" * depth)
    if kind == 3:
        return {"nested": [fuzz_text(fdp, 2), None, True, {"k": fuzz_text(fdp, 2)}]}
    if kind == 4:
        return [1, 2.5, False]
    return fuzz_text(fdp, 2)


# ---------------------------------------------------------------------------------------------
# Structured streams: well-formed SSE (OpenAI) or NDJSON (Ollama) with known expectations


class Stream:
    def __init__(self) -> None:
        self.events: list[bytes] = []
        self.boom_index: int | None = None  # the event the failing editor raises on

    def body(self) -> bytes:
        return b"".join(self.events)

    def offset_of(self, index: int) -> int:
        return sum(len(event) for event in self.events[:index])


def _maybe_extras(fdp, obj: dict) -> None:
    for _ in range(3):
        if not one_in(fdp, 4):
            break
        obj[fdp.PickValueInList(["x_extra", "system_fingerprint", "service_tier", "x"])] = extra_value(fdp)


def build_openai(fdp, boom: bool) -> Stream:
    style = Style(fdp, sse=True)
    chat = not one_in(fdp, 4)
    n = fdp.ConsumeIntInRange(1, 3)
    omit_index = n == 1 and fdp.ConsumeBool()
    model = fdp.PickValueInList(["qwen3", "deepseek-r1", "", "<think>"])
    queues = [[fuzz_text(fdp, 3) for _ in range(fdp.ConsumeIntInRange(0, 6))] for _ in range(n)]
    crlf = one_in(fdp, 4)
    stream = Stream()
    objects = []  # (kind, payload or bytes)

    def chunk(choices, usage=None) -> dict:
        obj = {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": 1700000000,
            "model": model,
            "choices": choices,
        }
        if usage is not None or one_in(fdp, 8):
            obj["usage"] = usage
        _maybe_extras(fdp, obj)
        return obj

    def choice(index: int, token, role: bool, finish) -> dict:
        out: dict = {} if omit_index else {"index": index}
        if chat:
            delta: dict = {}
            if role:
                delta["role"] = "assistant"
            if token is not None:
                delta["content"] = token
            elif one_in(fdp, 8):
                delta["content"] = fdp.PickValueInList([0, [], {"text": "<think>"}])
            if one_in(fdp, 5):
                value = None if one_in(fdp, 4) else fuzz_text(fdp, 3)
                delta[fdp.PickValueInList(["reasoning_content", "reasoning"])] = value
            if one_in(fdp, 16):
                delta["tool_calls"] = [
                    {"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": fuzz_text(fdp, 3)}}
                ]
            out["delta"] = delta
        else:
            out["text"] = token if token is not None else ""
        out["logprobs"] = None
        out["finish_reason"] = finish
        return out

    started = [False] * n
    finished = [False] * n
    for _ in range(64):
        live = [i for i in range(n) if queues[i]]
        if not live:
            break
        roll = fdp.ConsumeIntInRange(0, 15)
        if roll == 0:
            objects.append(("comment", fdp.PickValueInList([b": ping", b": <think>", b"event: ping", b"retry: 100", b":"])))
            continue
        if roll == 1:
            verbatim = {"error": {"message": fuzz_text(fdp, 3)}} if fdp.ConsumeBool() else {"choices": [], "usage": None}
            objects.append(("json", verbatim))
            continue
        if roll == 2:
            opaque = fdp.PickValueInList([b"<not json>", b"[1, 2]", b'"<think>"', b"\xff<think>", b"", b'{"a": "\xc3"}', b"<"])
            objects.append(("data", opaque))
            continue
        picked = [fdp.PickValueInList(live)]
        if roll == 3 and len(live) > 1:
            picked.append(fdp.PickValueInList(live))
        choices = []
        for index in picked:
            if not queues[index]:
                continue
            token = queues[index].pop(0)
            if chat and token == "" and fdp.ConsumeBool():
                token = None
            role = chat and not started[index] and fdp.ConsumeBool()
            started[index] = True
            finish = None
            if not queues[index] and one_in(fdp, 4):
                finish = fdp.PickValueInList(["stop", "length"])
                finished[index] = True
            choices.append(choice(index, token, role, finish))
        if one_in(fdp, 16):
            choices.append(None)  # not a dict: carried through untouched
        objects.append(("json", chunk(choices)))
    for index in range(n):
        if not finished[index] and fdp.ConsumeBool():
            token = fdp.PickValueInList(["", None]) if chat else ""
            objects.append(("json", chunk([choice(index, token, False, "stop")])))
    if fdp.ConsumeBool():
        objects.append(("json", chunk([], usage={"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8})))
    if boom:
        content = [i for i, (kind, obj) in enumerate(objects) if kind == "json" and obj.get("choices")]
        if content:
            stream.boom_index = fdp.PickValueInList(content)
            objects[stream.boom_index][1]["boom"] = "<"
    if not one_in(fdp, 4):
        objects.append(("data", b"[DONE]"))

    for kind, obj in objects:
        nl = b"\r\n" if crlf else b"\n"
        end = fdp.PickValueInList([nl + nl, nl + nl, b"\r\n\n", b"\n\r\n"])
        lines = []
        if kind == "comment":
            lines.append(obj)
        else:
            if one_in(fdp, 8):
                lines.append(fdp.PickValueInList([b"event: completion", b"id: 7", b": note <think>"]))
            payload = obj if kind == "data" else style.dumps(obj).encode()
            prefix = b"data:" if one_in(fdp, 6) else b"data: "
            lines += [prefix + line for line in payload.split(b"\n")]
            if one_in(fdp, 16):
                lines.append(b"retry: 5")
        stream.events.append(nl.join(lines) + end)
    return stream


def build_ollama(fdp, boom: bool) -> Stream:
    style = Style(fdp, sse=False)
    chat = fdp.ConsumeBool()
    tokens = [fuzz_text(fdp, 3) for _ in range(fdp.ConsumeIntInRange(0, 10))]
    crlf = one_in(fdp, 4)
    stream = Stream()
    objects = []

    def line(token, done: bool) -> dict:
        obj: dict = {"model": "qwen3", "created_at": "2026-11-21T00:00:00Z"}
        thinking = None
        if one_in(fdp, 5):
            thinking = None if one_in(fdp, 4) else fuzz_text(fdp, 3)
        if chat:
            message: dict = {"role": "assistant", "content": token}
            if thinking is not None or one_in(fdp, 6):
                message["thinking"] = thinking
            if one_in(fdp, 16):
                message["tool_calls"] = [{"function": {"name": "f", "arguments": {"q": fuzz_text(fdp, 2)}}}]
            obj["message"] = message
        else:
            obj["response"] = token
            if thinking is not None:
                obj["thinking"] = thinking
        obj["done"] = done
        if done:
            obj.update({"done_reason": "stop", "total_duration": 123, "eval_count": 5})
        _maybe_extras(fdp, obj)
        return obj

    for token in tokens:
        roll = fdp.ConsumeIntInRange(0, 15)
        if roll == 0:
            objects.append(("raw", fdp.PickValueInList([b"", b"not json <", b"[1]", b"\xff<", b"{", b'"<think>"'])))
        elif roll == 1:
            objects.append(("json", {"status": fuzz_text(fdp, 2)}))
        objects.append(("json", line(token, False)))
    if not one_in(fdp, 4):
        objects.append(("json", line(fdp.PickValueInList(["", fuzz_text(fdp, 2)]), True)))
    if boom:
        content = [i for i, (kind, obj) in enumerate(objects) if kind == "json" and ("message" in obj or "response" in obj)]
        if content:
            stream.boom_index = fdp.PickValueInList(content)
            objects[stream.boom_index][1]["boom"] = "<"
    for kind, obj in objects:
        payload = obj if kind == "raw" else style.dumps(obj).encode()
        stream.events.append(payload + (b"\r\n" if crlf and not one_in(fdp, 8) else b"\n"))
    return stream


# ---------------------------------------------------------------------------------------------
# Reading streams back: the same reader is applied to the input (for the expectations) and to
# the output (for the checks)


def _strict_loads(payload: bytes):
    def reject(name):
        raise ValueError(f"{name} is not JSON")

    return json.loads(payload.decode(), parse_constant=reject)


class TooDeep(Exception):
    pass


def _parse(payload: bytes, reading=None):
    try:
        return _strict_loads(payload)
    except RecursionError:
        raise TooDeep from None
    except ValueError:
        pass
    if reading is not None:
        try:
            json.loads(payload)
            reading.not_json.append(payload)
        except (ValueError, RecursionError):
            pass
    return None


def split_events(data: bytes, sse: bool) -> tuple[list[bytes], bytes]:
    """Terminated events (or lines) and the unterminated rest."""
    pattern = re.compile(rb"\n\r?\n") if sse else re.compile(rb"\n")
    events = []
    start = 0
    for match in pattern.finditer(data):
        events.append(data[start : match.end()])
        start = match.end()
    return events, data[start:]


class Reading:
    """What a client would make of a stream."""

    def __init__(self) -> None:
        self.texts: dict[int, list[str]] = {}
        self.finishes: dict[int, int] = {}
        self.roles: dict[int, int] = {}
        self.tool_calls = 0
        self.usage = 0
        self.done = 0  # [DONE] events, or Ollama's done:true
        self.passed: list[bytes] = []  # events the editor must leave alone, stripped of their line ends
        self.reasoning: list[str] = []  # reasoning fields that are not null
        self.json_events = 0
        self.not_json: list[bytes] = []  # payloads only a lenient reader takes (NaN, Infinity)

    def text(self, index: int) -> str:
        return "".join(self.texts.get(index, []))


def _index(choice: dict) -> int:
    index = choice.get("index")
    return index if isinstance(index, int) else 0


def read_sse(data: bytes, allow_tail: bool) -> Reading:
    events, tail = split_events(data, sse=True)
    check(allow_tail or not tail, "sse-unterminated", f"output ends in an unterminated event {tail[-200:]!r}")
    if tail:
        events.append(tail)
    reading = Reading()
    for event in events:
        body = event.rstrip(b"\r\n")
        data_lines = [line for line in body.splitlines() if line.startswith(b"data:")]
        if not data_lines:
            reading.passed.append(body)
            continue
        payload = b"\n".join(line[6:] if line.startswith(b"data: ") else line[5:] for line in data_lines)
        if payload == b"[DONE]":
            reading.done += 1
            continue
        obj = _parse(payload, reading)
        if not isinstance(obj, dict) or not isinstance(obj.get("choices"), list) or not obj["choices"]:
            reading.passed.append(body)
            if isinstance(obj, dict) and obj.get("usage") is not None:
                reading.usage += 1
            continue
        reading.json_events += 1
        if obj.get("usage") is not None:
            reading.usage += 1
        for choice in obj["choices"]:
            if not isinstance(choice, dict):
                continue
            index = _index(choice)
            delta = choice.get("delta")
            if isinstance(delta, dict):
                text = delta.get("content")
                if delta.get("role"):
                    reading.roles[index] = reading.roles.get(index, 0) + 1
                if delta.get("tool_calls"):
                    reading.tool_calls += 1
                reading.reasoning += [key for key in ("reasoning_content", "reasoning") if delta.get(key) is not None]
            else:
                text = choice.get("text")
            if isinstance(text, str):
                reading.texts.setdefault(index, []).append(text)
            if choice.get("finish_reason") is not None:
                reading.finishes[index] = reading.finishes.get(index, 0) + 1
    return reading


def read_ndjson(data: bytes, allow_tail: bool) -> Reading:
    lines, tail = split_events(data, sse=False)
    check(allow_tail or not tail, "ndjson-unterminated", f"output ends in an unterminated line {tail[-200:]!r}")
    if tail:
        lines.append(tail)
    reading = Reading()
    for line in lines:
        body = line.rstrip(b"\r\n")
        obj = _parse(body, reading)
        if not isinstance(obj, dict):
            reading.passed.append(body)
            continue
        message = obj.get("message")
        if isinstance(message, dict):
            holder, key = message, "content"
            if message.get("tool_calls"):
                reading.tool_calls += 1
        elif "response" in obj:
            holder, key = obj, "response"
        else:
            reading.passed.append(body)
            continue
        reading.json_events += 1
        if holder.get("thinking") is not None:
            reading.reasoning.append("thinking")
        if isinstance(holder.get(key), str):
            reading.texts.setdefault(0, []).append(holder[key])
        if obj.get("done") is True:
            reading.done += 1
    return reading


# ---------------------------------------------------------------------------------------------
# Encodings and running the stream


ENCODINGS = ["identity", "identity", "gzip", "gzip-sync", "x-gzip", "deflate", "raw-deflate", "gzip-members"]


def encode(events: list[bytes], encoding: str) -> tuple[bytes, str]:
    """The body as sent, and the Content-Encoding header value."""
    plain = b"".join(events)
    if encoding == "identity":
        return plain, "identity"
    if encoding in ("gzip", "x-gzip"):
        return gzip.compress(plain, mtime=0), encoding
    if encoding == "gzip-sync":
        compressor = zlib.compressobj(wbits=16 + zlib.MAX_WBITS)
        body = b"".join(compressor.compress(event) + compressor.flush(zlib.Z_SYNC_FLUSH) for event in events)
        return body + compressor.flush(), "gzip"
    if encoding == "gzip-members":
        return b"".join(gzip.compress(event, mtime=0) for event in events), "gzip"
    if encoding == "deflate":
        return zlib.compress(plain), "deflate"
    if encoding == "raw-deflate":
        compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        return compressor.compress(plain) + compressor.flush(), "deflate"
    raise ValueError(encoding)


def pick_encoding(fdp) -> str:
    encoding = fdp.PickValueInList(ENCODINGS)
    if encoding == "gzip-members" and "gzip-members" in IGNORED:
        encoding = "gzip"
    return encoding


def chunk_sizes(fdp, length: int) -> list[int]:
    if one_in(fdp, 8):
        return [max(length, 1)]
    return [fdp.ConsumeIntInRange(1, fdp.PickValueInList([1, 3, 8, 64, 512])) for _ in range(fdp.ConsumeIntInRange(1, 6))]


def cut(body: bytes, sizes: list[int]) -> list[bytes]:
    pieces = []
    pos = 0
    i = 0
    while pos < len(body):
        size = sizes[i % len(sizes)]
        pieces.append(body[pos : pos + size])
        pos += size
        i += 1
    return pieces


class Run:
    def __init__(self, output: list[bytes], give_ups: list[tuple[int, str]]) -> None:
        self.output = output
        self.data = b"".join(output)
        self.give_ups = give_ups  # (call number, exception name)


def run_stream(sse: bool, editor, encoding: str, pieces: list[bytes]) -> Run:
    stream = EventStream.sse(editor, encoding) if sse else EventStream.ndjson(editor, encoding)
    output: list[bytes] = []
    give_ups = []
    for call, piece in enumerate([*pieces, b""]):
        before = len(GIVE_UPS.records)
        try:
            result = stream(piece)
        except Exception as e:
            raise Finding(f"[raises] stream({piece[:80]!r}...) raised {e!r} at call {call}\n{CASE}") from e
        check(isinstance(result, list), "not-a-list", f"call {call} returned {type(result).__name__}")
        for element in result:
            check(isinstance(element, bytes), "not-bytes", f"call {call} returned an element of type {type(element).__name__}")
            check(len(element) > 0, "empty-element", f"call {call} returned an empty bytes element (ends the response)")
        check(len(result) <= 1, "several-elements", f"call {call} returned {len(result)} elements, each a chunk on the wire")
        output += result
        give_ups += [(call, _exc_name(record)) for record in GIVE_UPS.records[before:]]
        del GIVE_UPS.records[before:]
    run = Run(output, give_ups)
    run.stripped = stream.stripped
    return run


def reference_plain(body: bytes, encoding: str) -> bytes:
    """Best-effort decoding of the whole body, read by read, keeping what came out before any error;
    only for bounding the output's size."""
    if encoding in ("identity", None):
        return body
    out = []
    rest = body
    for _ in range(64):
        wbits = 16 + zlib.MAX_WBITS if "gzip" in encoding else (zlib.MAX_WBITS | 32 if rest[:1] == b"x" else -zlib.MAX_WBITS)
        decompressor = zlib.decompressobj(wbits)
        try:
            for pos in range(0, len(rest), 16):
                out.append(decompressor.decompress(rest[pos : pos + 16]))
            out.append(decompressor.flush())
        except zlib.error:
            break
        rest = decompressor.unused_data
        if not rest:
            break
    return b"".join(out)


def check_bound(run: Run, body: bytes, plain: bytes) -> None:
    limit = 2 * (len(body) + len(plain)) + 4096
    check(len(run.data) <= limit, "unbounded", f"{len(run.data)} bytes out for {len(body)} in ({len(plain)} decoded)")


# ---------------------------------------------------------------------------------------------
# Targets


class BoomOpenAI(OpenAIChunkEditor):
    def edit(self, event):
        if "boom" in event:
            raise RuntimeError("boom")
        return super().edit(event)


class BoomOllama(OllamaChunkEditor):
    def edit(self, event):
        if "boom" in event:
            raise RuntimeError("boom")
        return super().edit(event)


def parses(event: bytes) -> bool:
    """Whether the editor gets to see this event: one nested too deep to parse passes through unedited."""
    payload = event.strip().removeprefix(b"data:").strip()
    try:
        json.loads(payload)
    except RecursionError:
        return False
    except ValueError:
        pass
    return True


def structured_target(fdp) -> None:
    sse = fdp.ConsumeBool()
    boom = one_in(fdp, 8)
    stream = build_openai(fdp, boom) if sse else build_ollama(fdp, boom)
    truncate = 0
    if stream.events and one_in(fdp, 6):
        last = stream.events[-1]
        ending = len(last) - len(last.rstrip(b"\r\n"))
        truncate = fdp.ConsumeIntInRange(1, max(ending, 1))
        stream.events[-1] = last[: len(last) - truncate]
    plain = stream.body()
    encoding = pick_encoding(fdp)
    body, header = encode(stream.events, encoding)
    sizes = chunk_sizes(fdp, len(body))
    CASE["target"] = "structured " + ("sse/OpenAIChunkEditor" if sse else "ndjson/OllamaChunkEditor")
    CASE["encoding"] = encoding
    CASE["chunk sizes (cycled)"] = sizes
    CASE["plain body"] = plain
    if stream.boom_index is not None:
        CASE["editor raises on event"] = stream.boom_index

    if stream.boom_index is not None:
        editor = BoomOpenAI() if sse else BoomOllama()
    else:
        editor = OpenAIChunkEditor() if sse else OllamaChunkEditor()
    run = run_stream(sse, editor, header, cut(body, sizes))
    check_bound(run, body, plain)

    if stream.boom_index is not None and parses(stream.events[stream.boom_index]):
        rest = plain[stream.offset_of(stream.boom_index) :]
        check(run.data.endswith(rest), "give-up-loses", f"after the editor failed the rest was not passed on as it came:\n  output = {short(run.data)}")
        return

    other = [name for _, name in run.give_ups]
    check(not other, "gives-up", f"gave up editing a well-formed stream: {other}\n  output = {short(run.data)}")

    read = read_sse if sse else read_ndjson
    try:
        expected = read(plain, allow_tail=truncate > 0)
    except TooDeep:
        return  # the checker's own json module cannot read it either
    try:
        got = read(run.data, allow_tail=truncate > 0)
    except TooDeep:
        raise Finding(f"[too-deep] output nests deeper than its input\n{CASE}") from None
    out = f"\n  output = {short(run.data)}"
    check(got.not_json == expected.not_json, "invalid-json", f"events whose data is not JSON (NaN/Infinity): {short(got.not_json)}{out}")
    indexes = set(expected.texts) | set(got.texts)
    for index in sorted(indexes):
        want = strip_think(expected.text(index))
        check(got.text(index) == want, "text", f"choice {index}: answer {got.text(index)!r}, expected strip_think(...) = {want!r}{out}")
    check(got.finishes == expected.finishes, "finish-lost", f"finish_reason events {got.finishes}, input had {expected.finishes}{out}")
    check(got.usage == expected.usage, "usage-lost", f"{got.usage} usage events, input had {expected.usage}{out}")
    check(got.done == expected.done, "done-lost", f"{got.done} [DONE]/done:true, input had {expected.done}{out}")
    check(got.roles == expected.roles, "role-lost", f"role deltas {got.roles}, input had {expected.roles}{out}")
    check(got.tool_calls == expected.tool_calls, "tool-calls-lost", f"{got.tool_calls} tool_calls, input had {expected.tool_calls}{out}")
    blanks, want_blanks = got.passed.count(b""), expected.passed.count(b"")
    check(blanks == want_blanks, "extra-blank", f"{blanks} empty events/lines, input had {want_blanks}{out}")
    check([p for p in got.passed if p] == [p for p in expected.passed if p], "passed-changed", f"events that must pass unchanged differ:\n  got {got.passed!r}\n  want {expected.passed!r}{out}")
    check(not got.reasoning, "reasoning-kept", f"reasoning fields {got.reasoning} reached the client{out}")
    want_stripped = bool(expected.reasoning) or any(
        _filter_stripped(expected.text(index)) for index in expected.texts
    )
    check(run.stripped == want_stripped, "stripped-flag", f"stream.stripped is {run.stripped}, expected {want_stripped}")
    if not sse:
        # ollama-python reads NDJSON with httpx's iter_lines, which splits like str.splitlines().
        if _splitlines_safe(plain):
            check(_splitlines_safe(run.data), "client-splits-line", f"an edited line holds a character str.splitlines() splits on{out}")


def _filter_stripped(text: str) -> bool:
    think = ThinkFilter()
    think.feed(text)
    think.flush()
    return think.findings.edited


def _splitlines_safe(data: bytes) -> bool:
    try:
        text = data.decode()
    except UnicodeDecodeError:
        return False
    return not any(ch in text for ch in "\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029") and "\r" not in text.replace("\r\n", "")


VOCABULARY = [
    b"data: ", b"data:", b"\n", b"\n\n", b"\r\n", b"\r\n\r\n", b"\r", b": ping", b"event: x", b"[DONE]",
    b'{"choices":[{"index":0,"delta":{"content":"', b'{"choices":[{"index":1,"text":"', b'"}}]}',
    b'"},"finish_reason":"stop"}]}', b'{"message":{"role":"assistant","content":"', b'{"response":"',
    b'"},"done":false}', b'","done":true}', b'"reasoning_content":"', b'"thinking":"', b"<think>", b"</think>",
    b"\\u003cthink\\u003e", b"\\u003c/think\\u003e", b"<", b"\\u003C", b"\\ud800", b"\xff", b"\xc3", b"1e400",
    b'"usage":{"total_tokens":1}', b",", b"[", b"]", b"{", b"}", b'"', b"null", b"Hi",
]  # fmt: skip
HINT = re.compile(rb"<|\\u003[cC]|reasoning|thinking")


def raw_target(fdp) -> None:
    sse = fdp.ConsumeBool()
    encoding = fdp.PickValueInList(["identity", "identity", "identity", "gzip", "gzip-sync", "deflate"])
    shape = fdp.ConsumeIntInRange(0, 2)
    if shape == 0:
        plain = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 600))
    elif shape == 1:
        pieces = []
        for _ in range(fdp.ConsumeIntInRange(0, 40)):
            k = fdp.ConsumeIntInRange(0, len(VOCABULARY))
            pieces.append(fdp.ConsumeBytes(fdp.ConsumeIntInRange(1, 6)) if k == len(VOCABULARY) else VOCABULARY[k])
        plain = b"".join(pieces)
    else:
        stream = build_openai(fdp, False) if sse else build_ollama(fdp, False)
        plain = bytearray(stream.body())
        for _ in range(fdp.ConsumeIntInRange(1, 6)):
            if not plain:
                break
            pos = fdp.ConsumeIntInRange(0, len(plain) - 1)
            op = fdp.ConsumeIntInRange(0, 2)
            if op == 0:
                del plain[pos : pos + fdp.ConsumeIntInRange(1, 8)]
            elif op == 1:
                plain[pos:pos] = fdp.ConsumeBytes(fdp.ConsumeIntInRange(1, 4))
            else:
                plain[pos] = fdp.ConsumeIntInRange(0, 255)
        plain = bytes(plain)
    events = split_events(plain, sse)[0] + [split_events(plain, sse)[1]]
    body, header = encode(events, encoding)
    corrupt = encoding != "identity" and one_in(fdp, 3) and body
    if corrupt:
        body = bytearray(body)
        pos = fdp.ConsumeIntInRange(0, len(body) - 1)
        body[pos] ^= fdp.ConsumeIntInRange(1, 255)
        body = bytes(body)
    if encoding != "identity" and one_in(fdp, 8):
        body = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 300))  # not compressed at all
    sizes = chunk_sizes(fdp, len(body))
    CASE["target"] = "raw " + ("sse/OpenAIChunkEditor" if sse else "ndjson/OllamaChunkEditor")
    CASE["encoding"] = encoding + (" (corrupted)" if corrupt else "")
    CASE["chunk sizes (cycled)"] = sizes
    CASE["body"] = body

    editor = OpenAIChunkEditor() if sse else OllamaChunkEditor()
    pieces = cut(body, sizes)
    run = run_stream(sse, editor, header, pieces)
    check_bound(run, body, reference_plain(body, header))

    if header == "identity" and not HINT.search(body):
        check(run.data == body, "pass-through", f"a stream with nothing to edit came out changed:\n  output = {short(run.data)}")

    whole = run_stream(sse, OpenAIChunkEditor() if sse else OllamaChunkEditor(), header, [body] if body else [])
    zlib_failed = any(name == "error" for _, name in run.give_ups + whole.give_ups)
    if not zlib_failed:
        check(run.data == whole.data, "chunking", f"output depends on the chunking:\n  chunked = {short(run.data)}\n  whole   = {short(whole.data)}")
    for call, name in run.give_ups:
        if name == "error":  # zlib.error: the body from the failing read on must end the output, as it came
            rest = b"".join(pieces[call:])
            check(run.data.endswith(rest), "zlib-order", f"corrupt body at read {call}: its raw bytes do not end the output:\n  output = {short(run.data)}")


def framer_target(fdp) -> None:
    """The framers alone: lossless, and independent of the chunking."""
    sse = fdp.ConsumeBool()
    data = b"".join(fdp.PickValueInList([b"\n", b"\r", b"\r\n", b"x", b"data: a", b":"]) for _ in range(fdp.ConsumeIntInRange(0, 40)))
    sizes = chunk_sizes(fdp, len(data))
    CASE["target"] = "framer " + ("SSEFramer" if sse else "LineFramer")
    CASE["data"] = data
    CASE["chunk sizes (cycled)"] = sizes
    framer = SSEFramer() if sse else LineFramer()
    events = []
    for piece in cut(data, sizes):
        events += framer.split(framer.feed(piece))
    rest = framer.rest()
    check(b"".join(events) + rest == data, "framer-loses", f"framer output {events!r} + {rest!r}")
    want, want_rest = split_events(data, sse)
    check(events == want and rest == want_rest, "framer-cuts", f"framer cut {events!r} + {rest!r}, expected {want!r} + {want_rest!r}")


def _reference_strip(text: str) -> str:
    """strip_think written differently: whole-text regex search."""
    tag = re.compile("<(/?)think>", re.IGNORECASE | re.ASCII)
    close_tag = re.compile("</think>", re.IGNORECASE | re.ASCII)
    out = []
    pos = 0
    while True:
        start = tag.search(text, pos)
        if start is None:
            out.append(text[pos:])
            return "".join(out)
        out.append(text[pos : start.start()])
        pos = start.end()
        if not start.group(1):  # a block, else a lone </think>
            end = close_tag.search(text, pos)
            if end is None:
                return "".join(out)
            pos = end.end()
        pos = re.compile(r"\s*").match(text, pos).end()


def _merged(pieces: list) -> list:
    out = []
    for kind, piece in pieces:
        if out and out[-1][0] == kind:
            out[-1] = (kind, out[-1][1] + piece)
        else:
            out.append((kind, piece))
    return out


def think_target(fdp) -> None:
    text = fuzz_text(fdp, 16)
    open_start = fdp.ConsumeBool()
    cuts = sorted({fdp.ConsumeIntInRange(0, len(text)) for _ in range(fdp.ConsumeIntInRange(0, 10))})
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
    CASE["target"] = "ThinkFilter"
    CASE["open_start"] = open_start
    CASE["pieces"] = pieces
    streamed = ThinkFilter(open_start=open_start)
    out = _merged([piece for chunk in pieces for piece in streamed.feed(chunk)] + streamed.flush())
    check(all(piece for _, piece in out), "think-empty-piece", f"an empty piece in {out!r}")
    one = ThinkFilter(open_start=open_start)
    whole = _merged(one.feed(text) + one.flush())
    check(out == whole, "think-streamed", f"streamed {out!r} != one-shot {whole!r}")
    check(whole == split_think(text, open_start), "think-split", f"split_think differs from one feed: {whole!r}")
    if not open_start:
        reference = _reference_strip(text)
        answer = "".join(piece for kind, piece in whole if kind == ANSWER)
        check(answer == reference, "think-reference", f"strip_think {answer!r} != reference {reference!r}")
    check(streamed.idle, "think-idle", "filter not idle after flush")
    check(streamed.findings == one.findings, "think-findings", f"findings {streamed.findings} != one-shot {one.findings}")

    # edit_answer on a complete answer holding the same text
    answer = strip_think(text, open_start or starts_inside(text))
    reasoning = fdp.ConsumeBool()
    body = {
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "text": text}, None, "x"],
        "message": {"content": text},
        "response": text,
    }
    if reasoning:
        body["choices"][0]["message"]["reasoning_content"] = "r"
        body["message"]["thinking"] = "t"
    check(edit_answer(fdp.PickValueInList([None, [], "<think>x</think>", 3]), Reasoning.DROP) is False, "edit-answer", "non-dict body")
    odd = {"choices": [{"message": {"content": 5}, "text": None}], "message": {"content": ["<think>"]}, "response": None}
    check(edit_answer(odd, Reasoning.DROP) is False, "edit-answer", "non-string fields changed")
    changed = edit_answer(body, Reasoning.DROP, open_start)
    check(body["choices"][0]["message"]["content"] == answer, "edit-answer", "choices[0].message.content")
    check(body["choices"][0]["text"] == answer and body["message"]["content"] == answer and body["response"] == answer, "edit-answer", "text fields")
    check(changed == (answer != text or reasoning), "edit-answer", f"returned {changed}")
    check("reasoning_content" not in body["choices"][0]["message"] and "thinking" not in body["message"], "edit-answer", "reasoning kept")


TARGETS = {
    "streams": [(structured_target, 6), (raw_target, 3), (framer_target, 1)],
    "think": [(think_target, 1)],
}
TARGETS["all"] = TARGETS["streams"] + [(think_target, 2)]


def main() -> None:
    target = "all"
    argv = []
    for arg in sys.argv:
        if arg.startswith("-target="):
            target = arg.split("=", 1)[1]
        else:
            argv.append(arg)
    if target not in TARGETS:
        sys.exit(f"-target= takes one of {sorted(TARGETS)}")
    table = [function for function, weight in TARGETS[target] for _ in range(weight)]

    def test_one_input(data: bytes) -> None:
        fdp = atheris.FuzzedDataProvider(data)
        CASE.fields.clear()
        table[fdp.ConsumeIntInRange(0, len(table) - 1)](fdp)

    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
