"""
Model-name rewriting and the request-side edits that go with it.

Pure logic with no mitmproxy import: `ModelMap` decides what a requested model
is routed to, `append_no_think` asks a model not to think, `add_aliases` makes
aliases visible in the upstream's model lists.
"""

import copy
import re
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


def append_no_think(body: dict[str, Any]) -> bool:
    """
    Append ` /no_think` to the last user message (chat) or to `prompt` (completions).

    Returns whether the body changed; text that already ends with it is left alone.
    """
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in reversed(messages):
            if isinstance(message, dict) and message.get("role") == "user":
                return _append_to_content(message)
        return False
    if isinstance(body.get("prompt"), str):
        return _append_to_field(body, "prompt")
    return False


def _append_to_content(message: dict[str, Any]) -> bool:
    content = message.get("content")
    if isinstance(content, str):
        return _append_to_field(message, "content")
    if isinstance(content, list):
        for part in reversed(content):
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                return _append_to_field(part, "text")
    return False


def _append_to_field(holder: dict[str, Any], field: str) -> bool:
    text = holder[field]
    if text.rstrip().endswith(NO_THINK):
        return False
    holder[field] = f"{text} {NO_THINK}"
    return True


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
