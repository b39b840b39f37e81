"""
What the rerouter's addons share about one flow, and the small helpers they all use on flows.

Data walks one way: request -> rewrite -> upstream -> filter -> log. Each addon
writes its findings into the flow's `FlowState` and later addons read them there,
by attribute, never through loose metadata keys.
"""

import json
from collections.abc import Callable
from dataclasses import dataclass
from types import FunctionType
from typing import Any

from mitmproxy import http
from mitmproxy.proxy import mode_specs

from logstore import FLOW_FIELDS
from rerouter.decoding import decode_prefix
from rerouter.decoding import sample
from rerouter.meter import StreamMeter

STATE_KEY = "rerouter"
EDIT_LIMIT = 16 * 1024 * 1024
"""
The largest body, decoded, that the proxy reads to edit (a request it may rewrite, an answer it
may strip): mitmproxy buffers it, and parsing and re-serialising it costs about 3 times as much
again. A bigger body passes on as it came.
"""


@dataclass
class FlowState:
    """
    The rerouter's record of one flow, kept under `flow.metadata["rerouter"]`.

    Who sets what (in the order the addons run):
    - ReverseProxy: `client_host`, the Host the client sent (mitmproxy's reverse
      mode replaces it with the upstream's), for the dashboard's Host rule.
    - Dashboard: `local`, for requests it answers itself.
    - ModelRewrite: `requested_model`, `routed_model`, `thinking_switches` (the
      DISABLE_THINKING switches it applied), `rule` (the key of the rule that
      matched the requested model, None when none did), `usage_requested` when it
      asked the upstream for token usage the client did not ask for (REQUEST_USAGE).
    - UpstreamFailures: `timed_out` when REQUEST_TIMEOUT passed with no response
      headers, `answered_status` when it answered a failed upstream itself.
    - Buffering: `note` when a JSON body too big to edit passed on as it came.
    - ThinkStrip: `reasoning_chars`, `lone_think_close`, `response_model`,
      `reasoned_anyway` (reasoning although a switch asked for none), `note`
      (what the proxy could not do, e.g. a stream passed on unedited).
    - Figures: `upstream_ms`; `meter` while an answer streams (its EventStream
      feeds it), and at the end `upstream_first_token_ms`, `first_token_ms`,
      `prompt_tokens`, `completion_tokens` and `tokens_per_s` from the meter, or
      the token counts of a non-streamed answer.
    RequestLog reads them all to write the flow's row: the model names and
    logstore.FLOW_FIELDS (`row_fields()`) are the row's fields of the same names.
    """

    client_host: str | None = None
    local: bool = False
    requested_model: str | None = None
    routed_model: str | None = None
    rule: str | None = None
    thinking_switches: tuple[str, ...] = ()
    usage_requested: bool = False
    meter: StreamMeter | None = None
    timed_out: bool = False
    answered_status: int | None = None
    reasoning_chars: int = 0
    lone_think_close: bool = False
    response_model: str | None = None
    reasoned_anyway: bool = False
    note: str | None = None
    upstream_ms: float | None = None
    upstream_first_token_ms: float | None = None
    first_token_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    tokens_per_s: float | None = None

    def row_fields(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in FLOW_FIELDS}


def quick_call(stream: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    """
    A stream callable as it is cheapest to call once per read: an object's bound `__call__`,
    which Python calls like a plain function, where calling the object itself goes through C
    first (80 ns more a call here, per wrapper and read); anything else as it is.
    """
    return stream.__call__ if isinstance(getattr(type(stream), "__call__", None), FunctionType) else stream


def flow_state(flow: http.HTTPFlow) -> FlowState:
    """The flow's record, created on first use."""
    record = flow.metadata.get(STATE_KEY)
    if record is None:
        record = flow.metadata[STATE_KEY] = FlowState()
    return record


def is_proxied(flow: http.HTTPFlow) -> bool:
    """A live flow that goes upstream: not answered locally, not failed, in reverse mode."""
    return (
        flow.live
        and flow.response is None
        and flow.error is None
        and isinstance(flow.client_conn.proxy_mode, mode_specs.ReverseMode)
    )


def annotate(flow: http.HTTPFlow, note: str) -> None:
    """Say in the flow's comment what the proxy changed, for people reading it in mitmweb."""
    flow.comment = f"{flow.comment}; {note}" if flow.comment else note
    flow.marked = flow.marked or ":arrows_counterclockwise:"


def media_type(message: http.Message) -> str:
    return message.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def note(flow: http.HTTPFlow, text: str) -> None:
    """Add to the flow's row what the proxy could not do for it."""
    record = flow_state(flow)
    record.note = f"{record.note}; {text}" if record.note else text


def decoded(message: http.Message) -> bytes | None:
    """
    The whole body decoded, or None when there is none, it cannot be decoded, or it is longer
    than EDIT_LIMIT decoded: a compressed body is never inflated past that.
    """
    if message.raw_content is None:
        return None
    try:
        body, complete = decode_prefix(message.raw_content, message.headers.get("content-encoding"), EDIT_LIMIT)
    except ValueError:
        return None
    return body if complete else None


def body_sample(message: http.Message, limit: int) -> bytes:
    """The first `limit` bytes of the decoded body (of the raw one when it cannot be decoded), for the log."""
    return sample(message.raw_content or b"", message.headers.get("content-encoding"), limit)


def json_object(message: http.Message) -> dict[str, Any] | None:
    """The body as a JSON object, or None: other bodies are not ours to touch."""
    content = decoded(message)
    if not content or content[:64].lstrip()[:1] != b"{":
        return None
    try:
        body = json.loads(content)
    except (ValueError, RecursionError):
        return None
    return body if isinstance(body, dict) else None


def set_json(message: http.Message, body: dict[str, Any]) -> None:
    """Text stays as written, except a lone surrogate (valid JSON, no UTF-8), which stays escaped."""
    try:
        message.content = json.dumps(body, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        message.content = json.dumps(body).encode()
