"""
Model-name rewriting and the request-side edits that go with it.

Pure logic with no mitmproxy import: `ModelMap` decides what a requested model
is routed to, `switch_thinking_off` asks a model not to think in the ways its
server honours, `add_aliases` makes aliases visible in the upstream's model lists.
"""

import copy
import re
from collections.abc import Callable
from collections.abc import Iterable
from typing import Any

NO_THINK = "/no_think"


class ModelMap:
    """
    Exact names first, then `/regex/` (or `/regex/i`) patterns in the order written.

    The first pattern whose `re.search` matches wins, and its value is expanded
    with the match's groups (`\\1`, `\\g<name>`); a name that matches nothing is
    left as it is.
    """

    def __init__(
        self,
        exact: dict[str, str] | None = None,
        patterns: list[tuple[re.Pattern[str], str]] | None = None,
    ) -> None:
        self.exact = exact or {}
        self.patterns = patterns or []

    @classmethod
    def from_dict(cls, mapping: Any) -> "ModelMap":
        if not isinstance(mapping, dict):
            raise ValueError(f"expected a JSON object, got {type(mapping).__name__}")
        exact: dict[str, str] = {}
        patterns: list[tuple[re.Pattern[str], str]] = []
        for key, target in mapping.items():
            if not isinstance(target, str):
                raise ValueError(f"the value for {key!r} must be a string")
            pattern = parse_pattern(key)
            if pattern is None:
                exact[key] = target
                continue
            try:
                pattern.sub(target, "")  # compiles the template: catches bad group references now
            except (re.error, IndexError) as e:  # Python 3.11 raises IndexError for unknown group names
                raise ValueError(f"bad replacement {target!r} for {key!r}: {e}") from None
            patterns.append((pattern, target))
        return cls(exact, patterns)

    def __bool__(self) -> bool:
        return bool(self.exact or self.patterns)

    def route(self, model: str) -> str:
        if model in self.exact:
            return self.exact[model]
        for pattern, target in self.patterns:
            match = pattern.search(model)
            if match:
                return match.expand(target)
        return model


def parse_pattern(key: str) -> re.Pattern[str] | None:
    """A key written `/regex/` or `/regex/i` is a pattern; any other key is an exact name."""
    if len(key) >= 2 and key.startswith("/"):
        flags = 0
        if key.endswith("/"):
            body = key[1:-1]
        elif key.endswith("/i") and len(key) >= 3:
            body, flags = key[1:-2], re.IGNORECASE
        else:
            return None
        try:
            return re.compile(body, flags)
        except re.error as e:
            raise ValueError(f"invalid regex {key!r}: {e}") from None
    return None


class ModelSelector:
    """One exact model name, or a `/regex/` (`/regex/i`) matched with `re.search`; empty selects no model."""

    def __init__(self, text: str = "") -> None:
        self.text = text.strip()
        self._pattern = parse_pattern(self.text)

    def __bool__(self) -> bool:
        return bool(self.text)

    def matches(self, model: str | None) -> bool:
        if not self.text or model is None:
            return False
        if self._pattern is None:
            return model == self.text
        return self._pattern.search(model) is not None


def _no_think_target(body: dict[str, Any]) -> tuple[dict[str, Any], str] | None:
    """Where ` /no_think` goes: the last user message's text, or the prompt."""
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in reversed(messages):
            if isinstance(message, dict) and message.get("role") == "user":
                return _content_target(message)
        return None
    if isinstance(body.get("prompt"), str):
        return body, "prompt"
    return None


def _content_target(message: dict[str, Any]) -> tuple[dict[str, Any], str] | None:
    content = message.get("content")
    if isinstance(content, str):
        return message, "content"
    if isinstance(content, list):
        for part in reversed(content):
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                return part, "text"
    return None


def _append_to_field(holder: dict[str, Any], field: str) -> bool:
    text = holder[field]
    if text.rstrip().endswith(NO_THINK):
        return False
    holder[field] = f"{text} {NO_THINK}"
    return True


OLLAMA = "ollama"
CHAT = "chat"
COMPLETIONS = "completions"
_OLLAMA_THINKING_PATHS = ("/api/chat", "/api/generate")


def request_api(path: str) -> str | None:
    """Which API a request path speaks, as far as the thinking switches care: OLLAMA, CHAT, COMPLETIONS or None."""
    path = path.split("?", 1)[0].rstrip("/")
    if path.startswith("/api/"):
        return OLLAMA if path in _OLLAMA_THINKING_PATHS else None
    if path.endswith("/chat/completions"):
        return CHAT
    if path.endswith("/completions"):
        return COMPLETIONS
    return None


def _no_think(body: dict[str, Any], api: str | None) -> bool | None:
    """` /no_think` after the last user message (chat) or the prompt (completions), once."""
    target = _no_think_target(body)
    return None if target is None else _append_to_field(*target)


def _think_false(body: dict[str, Any], api: str | None) -> bool | None:
    if api != OLLAMA:
        return None
    changed = body.get("think") is not False
    body["think"] = False
    return changed


def _enable_thinking(body: dict[str, Any], api: str | None) -> bool | None:
    if api not in (CHAT, COMPLETIONS):
        return None
    kwargs = body.get("chat_template_kwargs")
    if isinstance(kwargs, dict) and kwargs.get("enable_thinking") is False:
        return False
    body["chat_template_kwargs"] = {**kwargs, "enable_thinking": False} if isinstance(kwargs, dict) else {"enable_thinking": False}
    return True


def _reasoning_effort(body: dict[str, Any], api: str | None) -> bool | None:
    """`reasoning_effort`, and the effort of a `reasoning` object the client sent: the same setting, spelt twice."""
    if api != CHAT:
        return None
    changed = body.get("reasoning_effort") != "none"
    body["reasoning_effort"] = "none"
    reasoning = body.get("reasoning")
    if isinstance(reasoning, dict) and "effort" in reasoning and reasoning["effort"] != "none":
        reasoning["effort"] = "none"
        changed = True
    return changed


# name -> switch: None when it does not fit the request, else whether it changed the body
_SWITCHES: dict[str, Callable[[dict[str, Any], str | None], bool | None]] = {
    "no_think": _no_think,
    "think_false": _think_false,
    "enable_thinking": _enable_thinking,
    "reasoning_effort": _reasoning_effort,
}
THINKING_SWITCHES = tuple(_SWITCHES)


def switch_thinking_off(body: dict[str, Any], switches: Iterable[str], path: str) -> tuple[list[str], bool]:
    """
    Applies each of the named switches that fits the request at `path`; the proxy's value
    wins over the client's. Returns the names applied and whether the body changed.
    """
    api = request_api(path)
    applied = []
    changed = False
    for name in switches:
        result = _SWITCHES[name](body, api)
        if result is not None:
            applied.append(name)
            changed |= result
    return applied, changed


def add_aliases(listing: Any, aliases: dict[str, str]) -> bool:
    """
    Add an entry for each alias whose target the upstream lists, in the upstream's own shape.

    Handles OpenAI's `{"data": [{"id": ...}]}` and Ollama's `{"models": [{"name", "model"}]}`;
    returns whether anything was added.
    """
    if not isinstance(listing, dict):
        return False
    if isinstance(listing.get("data"), list):
        entries, keys = listing["data"], ("id",)
    elif isinstance(listing.get("models"), list):
        entries, keys = listing["models"], ("name", "model")
    else:
        return False
    by_name = {e.get(keys[0]): e for e in entries if isinstance(e, dict)}
    added = False
    for alias, target in aliases.items():
        if alias in by_name or target not in by_name:
            continue
        entry = copy.deepcopy(by_name[target])
        for key in keys:
            if key in entry or key == keys[0]:
                entry[key] = alias
        entries.append(entry)
        by_name[alias] = entry
        added = True
    return added
