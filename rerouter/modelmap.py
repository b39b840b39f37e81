"""
Model-name rewriting and the request-side edits that go with it.

Pure logic with no mitmproxy import: `ModelMap` decides what a requested model
is routed to and explains why, its `Rule`s also edit the request's body,
`switch_thinking_off` asks a model not to think in the ways its server honours,
`add_aliases` makes aliases visible in the upstream's model lists.
"""

import copy
import json
import math
import re
from collections.abc import Callable
from collections.abc import Iterable
from dataclasses import dataclass
from dataclasses import field
from typing import Any

NO_THINK = "/no_think"
RULE_FIELDS = {"model", "set", "drop"}
MAX_VALUE_NODES = 100_000  # values in a whole map: a YAML alias cannot make one rule's `set` explode
MAX_VALUE_DEPTH = 64
NOTE_VALUE_CHARS = 40


@dataclass(frozen=True)
class Rule:
    """
    One entry of the map: an exact name or a `/regex/`, the name it routes to, and its body edits.

    `target` None keeps the requested name (a rule that only edits the body).
    """

    key: str
    pattern: re.Pattern[str] | None
    target: str | None
    set: dict[str, Any] = field(default_factory=dict)
    drop: tuple[str, ...] = ()

    @property
    def kind(self) -> str:
        return "exact" if self.pattern is None else "pattern"

    def as_dict(self) -> dict[str, Any]:
        return {"key": self.key, "kind": self.kind, "target": self.target, "set": self.set, "drop": list(self.drop)}

    def edit(self, body: dict[str, Any]) -> str:
        """
        Drop the rule's top-level fields, then deep-merge its `set` into `body`.

        Dropping first lets a rule replace an object wholesale (drop `options`, set
        `options`). Returns what changed, for the flow's comment; "" when nothing did.
        """
        dropped = [name for name in self.drop if name in body]
        for name in dropped:
            del body[name]
        merged = merge(body, self.set)
        notes = []
        if merged:
            notes.append("set " + ", ".join(merged))
        if dropped:
            notes.append("dropped " + ", ".join(dropped))
        return "; ".join(notes)


@dataclass(frozen=True)
class RuleMatch:
    """The rule a name matched, and what the name is routed to."""

    rule: Rule
    index: int  # the rule's position in the map, as written
    routed: str
    groups: tuple[str | None, ...] = ()


class ModelMap:
    """
    Exact names first, then `/regex/` (or `/regex/i`) patterns in the order written.

    The first pattern whose `re.search` matches wins, and its value is expanded
    with the match's groups (`\\1`, `\\g<name>`); a name that matches nothing is
    left as it is. A value is the routed name or `{"model", "set", "drop"}`.
    """

    def __init__(self, rules: list[Rule] | None = None) -> None:
        self.rules = rules or []
        # the exact names that rename: the aliases added to the upstream's model lists
        self.exact = {rule.key: rule.target for rule in self.rules if rule.pattern is None and rule.target is not None}
        self._exact = {rule.key: index for index, rule in enumerate(self.rules) if rule.pattern is None}
        self._patterns = [(index, rule) for index, rule in enumerate(self.rules) if rule.pattern is not None]

    @classmethod
    def from_dict(cls, mapping: Any) -> "ModelMap":
        if not isinstance(mapping, dict):
            raise ValueError(f"expected a JSON object, got {type(mapping).__name__}")
        budget = ValueBudget()
        return cls([parse_rule(key, value, budget) for key, value in mapping.items()])

    def __bool__(self) -> bool:
        return bool(self.rules)

    def match(self, model: str) -> RuleMatch | None:
        index = self._exact.get(model)
        if index is not None:
            rule = self.rules[index]
            return RuleMatch(rule, index, model if rule.target is None else rule.target)
        for index, rule in self._patterns:
            found = rule.pattern.search(model)
            if found:
                routed = model if rule.target is None else found.expand(rule.target)
                return RuleMatch(rule, index, routed, found.groups())
        return None

    def route(self, model: str) -> str:
        match = self.match(model)
        return model if match is None else match.routed

    def explain(self, model: str) -> dict[str, Any]:
        """Why `model` goes where it goes: the winning rule, and the later ones that also match but never get it."""
        match = self.match(model)
        if match is None:
            return {"model": model, "routed": model, "rule": None, "groups": [], "set": {}, "drop": [], "shadowed": []}
        rule = match.rule
        shadowed = [other.key for index, other in self._patterns if index != match.index and other.pattern.search(model)]
        return {
            "model": model,
            "routed": match.routed,
            "rule": {"key": rule.key, "kind": rule.kind, "index": match.index},
            "groups": list(match.groups),
            "set": rule.set,
            "drop": list(rule.drop),
            "shadowed": shadowed,
        }


def parse_rule(key: Any, value: Any, budget: "ValueBudget") -> Rule:
    """A map entry: `"name": "target"` or `"name": {"model": "target", "set": {...}, "drop": [...]}`."""
    if not isinstance(key, str):
        raise ValueError(f"keys must be model names or /regex/, got {key!r}")
    if isinstance(value, str):
        target, changes, drop = value, {}, ()
    elif isinstance(value, dict):
        unknown = set(map(str, value)) - RULE_FIELDS
        if unknown:
            raise ValueError(f"the rule for {key!r} has unknown fields {sorted(unknown)}; a rule has model, set, drop")
        target, changes, drop = value.get("model"), value.get("set", {}), value.get("drop", [])
        if target is not None and not isinstance(target, str):
            raise ValueError(f"the model of the rule for {key!r} must be a string")
        if not isinstance(changes, dict):
            raise ValueError(f"the set of the rule for {key!r} must be an object")
        if not isinstance(drop, list) or not all(isinstance(name, str) for name in drop):
            raise ValueError(f"the drop of the rule for {key!r} must be a list of field names")
        if "model" in changes or "model" in drop:
            raise ValueError(f"the rule for {key!r} cannot set or drop model: its model field names the routed model")
        budget.check(changes, f"the set of the rule for {key!r}")
        drop = tuple(drop)
    else:
        raise ValueError(f"the value for {key!r} must be a string or an object with model, set, drop")
    pattern = parse_pattern(key)
    if pattern is not None and target is not None:
        try:
            pattern.sub(target, "")  # compiles the template: catches bad group references now
        except (re.error, IndexError) as e:  # Python 3.11 raises IndexError for unknown group names
            raise ValueError(f"bad replacement {target!r} for {key!r}: {e}") from None
    return Rule(key, pattern, target, changes, drop)


class ValueBudget:
    """
    Checks that `set` values are plain JSON a request body can carry, within one bound for the whole map.

    YAML brings dates, sets and aliases: an alias repeated in a chain of lists is
    a few bytes of file and billions of nodes once walked.
    """

    def __init__(self, nodes: int = MAX_VALUE_NODES) -> None:
        self.nodes = nodes

    def check(self, value: Any, where: str, depth: int = 0) -> None:
        self.nodes -= 1
        if self.nodes < 0 or depth > MAX_VALUE_DEPTH:
            raise ValueError(f"{where} is too large or too deeply nested")
        if isinstance(value, dict):
            for name, item in value.items():
                if not isinstance(name, str):
                    raise ValueError(f"{where} has a key that is not a string: {name!r}")
                self.check(item, where, depth + 1)
        elif isinstance(value, list):
            for item in value:
                self.check(item, where, depth + 1)
        elif isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{where} holds {value}, which JSON cannot carry")
        elif not (value is None or isinstance(value, (str, int, float))):
            raise ValueError(f"{where} holds a {type(value).__name__} ({value!r}), which JSON cannot carry; quote it")


def merge(body: dict[str, Any], changes: dict[str, Any], prefix: str = "") -> list[str]:
    """Deep-merge `changes` into `body`: objects key by key, anything else replaced. Returns what changed."""
    changed = []
    for name, value in changes.items():
        current = body.get(name)
        if isinstance(value, dict) and isinstance(current, dict):
            changed += merge(current, value, f"{prefix}{name}.")
        elif name not in body or current != value or type(current) is not type(value):  # true is not 1
            body[name] = copy.deepcopy(value)
            changed.append(f"{prefix}{name}={short_json(value)}")
    return changed


def short_json(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return text if len(text) <= NOTE_VALUE_CHARS else text[: NOTE_VALUE_CHARS - 1] + "…"


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
