"""
The figures of one answer as it passes: when its first token came from the upstream, when its
first answer text reached the client, and the token counts the upstream reported.

Everything works on raw JSON bytes with a few regular expressions and byte searches, so nothing
is parsed. The patterns can only match keys: inside a JSON string every quote is escaped, so no
text a model writes can look like `"content":"`.
"""

import re
import time
from collections import deque
from typing import Any

_ANSWER_KEYS = rb"content|text|response|arguments|delta"
_REASONING_KEYS = rb"reasoning_content|reasoning|thinking"
# a key holding a non-empty string: chat/Ollama `content`, completion (and Anthropic) `text`, Ollama
# generate `response`, a tool call's `arguments`, a Responses API `delta`; the upstream's tokens
# also count its reasoning
_ANSWER_TEXT = re.compile(rb'"(?:' + _ANSWER_KEYS + rb')"\s*:\s*"[^"]')
_ANY_TEXT = re.compile(rb'"(?:' + _ANSWER_KEYS + rb"|" + _REASONING_KEYS + rb')"\s*:\s*"[^"]')
# OpenAI `usage` (chat, completions, responses) and Ollama's final counts; a longer number is no count
_PROMPT_TOKENS = re.compile(rb'"(?:prompt_tokens|input_tokens|prompt_eval_count)"\s*:\s*(\d{1,15})(?![\d.eE])')
_COMPLETION_TOKENS = re.compile(rb'"(?:completion_tokens|output_tokens|eval_count)"\s*:\s*(\d{1,15})(?![\d.eE])')
_NO_CHOICES = re.compile(rb'"choices"\s*:\s*\[\s*\]')
RECENT_READS = 8
"""Reads kept to find the upstream's last token once its counts arrive, after the finish, usage and [DONE] events."""


def _last(pattern: re.Pattern, raw: bytes) -> int | None:
    found = pattern.findall(raw)
    return int(found[-1]) if found else None


OPENAI_COUNTS = b'_tokens"'
"""What every OpenAI-style count key ends with (prompt_tokens, completion_tokens, input_tokens, output_tokens)."""
OLLAMA_COUNTS = b'eval_count"'
"""What Ollama's count keys end with (prompt_eval_count, eval_count)."""


def may_hold_counts(raw: bytes) -> bool:
    """A cheap look for token counts: most answers and events have none and are never searched."""
    # find(), not `in`: bytes' `in` first tries the needle as an int, which costs twice the search
    return raw.find(OPENAI_COUNTS) >= 0 or raw.find(OLLAMA_COUNTS) >= 0


def read_usage(raw: bytes) -> tuple[int | None, int | None]:
    """The prompt and completion token counts in a raw JSON answer or event (the last ones), None when absent."""
    if not may_hold_counts(raw):
        return None, None
    return _last(_PROMPT_TOKENS, raw), _last(_COMPLETION_TOKENS, raw)


def ask_for_usage(body: dict[str, Any]) -> bool:
    """
    Makes a streamed OpenAI chat/completions request ask for token usage
    (`stream_options.include_usage`); False when it asks already or is no stream.
    """
    if body.get("stream") is not True:
        return False
    options = body.get("stream_options")
    if options is None:
        options = {}
    elif not isinstance(options, dict) or options.get("include_usage") is True:
        return False
    body["stream_options"] = {**options, "include_usage": True}
    return True


class StreamMeter:
    """
    Watches one streamed answer inside its EventStream and keeps the row's figures of it,
    under the row's names, in ms from `started` (epoch seconds).

    Times are taken per network read: every event of one read arrived at the same moment.
    Once the first token is seen, a read costs a clock reading and a look for token counts;
    the last token is looked for among the recent reads only when the counts arrive.
    With `drop_usage` the usage-only event (`choices: []`), which the proxy asked for on the
    client's behalf, is taken out of the stream, so the client gets the stream it asked for.
    """

    def __init__(self, started: float, drop_usage: bool = False, counts_key: bytes = OPENAI_COUNTS) -> None:
        self.started = started
        self.drop_usage = drop_usage
        self.counts_key = counts_key
        """The stream's own family of count keys (OPENAI_COUNTS, OLLAMA_COUNTS): one search per read instead of two."""
        self.upstream_first_token_ms: float | None = None
        self.first_token_ms: float | None = None
        self.prompt_tokens: int | None = None
        self.completion_tokens: int | None = None
        self.tokens_per_s: float | None = None
        self.first_token: float | None = None
        self.recent: deque[tuple[float, bytes]] = deque(maxlen=RECENT_READS)

    def received(self, events: list[bytes]) -> list[bytes]:
        """Called with the complete events of each read, before they are edited; returns the events to pass on."""
        block = events[0] if len(events) == 1 else b"".join(events)
        self._arrived(block)
        if block.find(self.counts_key) >= 0:
            events = [event for event in events if not self._count(event)]
            self._rate()
        return events

    def passing(self, block: bytes) -> bool:
        """
        Notes a read's complete events as one block that passes unsplit and unedited, received and
        delivered at once, and returns True; returns False, noting nothing, when an event may have to
        be taken out: then `received` gets the events. Once both first tokens are seen, a block costs
        a clock reading and the search for counts, without a further call.
        """
        counts = block.find(self.counts_key) >= 0
        if counts and self.drop_usage:
            return False
        if self.first_token_ms is None or self.first_token is None:
            self._arrived(block)
            self.delivered(block)
        else:
            self.recent.append((time.time(), block))
        if counts:
            self._count(block)
            self._rate()
        return True

    def _arrived(self, block: bytes) -> None:
        now = time.time()
        if self.first_token is None and _ANY_TEXT.search(block) is not None:
            self.first_token = now
            self.upstream_first_token_ms = self._since_start(now)
        if self.first_token is not None:
            self.recent.append((now, block))

    def delivered(self, output: bytes) -> None:
        """Called with what each read sends to the client."""
        if self.first_token_ms is None and _ANSWER_TEXT.search(output) is not None:
            self.first_token_ms = self._since_start(time.time())

    def _count(self, event: bytes) -> bool:
        """Reads the event's token counts; True when it is the usage-only event to take out."""
        prompt, completion = read_usage(event)
        if prompt is not None:
            self.prompt_tokens = prompt
        if completion is None:
            return False
        self.completion_tokens = completion
        return self.drop_usage and _NO_CHOICES.search(event) is not None

    def _rate(self) -> None:
        """Completion tokens per second from the upstream's first token to its last one, the newest recent read that holds one."""
        last = next((moment for moment, block in reversed(self.recent) if _ANY_TEXT.search(block)), None)
        if self.completion_tokens is not None and self.first_token is not None and last is not None and last > self.first_token:
            self.tokens_per_s = round(self.completion_tokens / (last - self.first_token), 1)

    def _since_start(self, moment: float) -> float:
        return round((moment - self.started) * 1000, 1)
