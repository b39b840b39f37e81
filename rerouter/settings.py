"""
The rerouter's settings: one mitmproxy option per environment variable.

Every variable of the contract is an option named after the lower-cased
variable (`--set model_map=...`); the environment variable is the option's
default. Options are declared as strings and parsed here, because mitmproxy
silently unloads an addon when a typed option gets a malformed `--set` value.
"""

import dataclasses
import ipaddress
import json
import logging
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from typing import NamedTuple
from urllib.parse import urlsplit

from mitmproxy import ctx
from mitmproxy import exceptions

from rerouter.dburl import parse_database_url
from rerouter.modelmap import THINKING_SWITCHES
from rerouter.modelmap import ModelMap
from rerouter.modelmap import ModelSelector
from rerouter.thinking import Reasoning

logger = logging.getLogger(__name__)

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}
HOST_NAME = re.compile(r"[a-z0-9_]([a-z0-9_.-]*[a-z0-9_])?")
MAX_INSTANCE_NAME = 200


class Upstream(NamedTuple):
    """An upstream server: scheme, host and port, never a path."""

    scheme: str
    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def parse_bool(text: str) -> bool:
    word = text.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError(f"expected true/false/1/0/yes/no, got {text!r}")


def parse_upstream(text: str) -> Upstream:
    """mitmproxy's reverse mode takes no path, so a base URL with one is refused, not cut."""
    try:
        parts = urlsplit(text.strip())
        port = parts.port
    except ValueError as e:
        raise ValueError(f"invalid URL {text!r}: {e}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected http://host:port or https://host:port, got {text!r}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(
            f"must be a server address without a path, got {text!r} "
            f"(use {parts.scheme}://{parts.netloc}; clients send the full path such as /v1/...)"
        )
    default_port = 443 if parts.scheme == "https" else 80
    return Upstream(parts.scheme, parts.hostname, port or default_port)


def parse_number(text: str, convert: Callable[[str], float], valid: Callable[[float], bool], expected: str) -> Any:
    try:
        number = convert(text)
    except ValueError:
        number = None
    if number is None or not valid(number):
        raise ValueError(f"expected {expected}, got {text!r}")
    return number


def parse_port(text: str) -> int:
    return parse_number(text, int, lambda port: 0 <= port <= 65535, "a port number from 0 to 65535")


def parse_positive(text: str) -> float:
    return parse_number(text, float, lambda number: math.isfinite(number) and number > 0, "a positive number")


def parse_seconds(text: str) -> float:
    return parse_number(text, float, lambda number: math.isfinite(number) and number >= 0, "a number of seconds (0 = off)")


def parse_size(text: str) -> int:
    return parse_number(text, int, lambda size: size >= 0, "a number of bytes")


def parse_path(text: str) -> str:
    if not text.strip():
        raise ValueError("expected a file path")
    return text


def parse_reasoning(text: str) -> Reasoning:
    if text.strip().lower() == Reasoning.SEPARATE.value:
        return Reasoning.SEPARATE
    try:
        return Reasoning.DROP if parse_bool(text) else Reasoning.KEEP
    except ValueError:
        raise ValueError(f"expected true, false or separate, got {text!r}") from None


def parse_switches(text: str) -> tuple[str, ...]:
    """false, true (the seed's ` /no_think`), or a comma-separated list of switch names."""
    word = text.strip().lower()
    if word in _TRUE:
        return ("no_think",)
    if word in _FALSE or not word:
        return ()
    names = [name.strip() for name in word.split(",")]
    unknown = [name for name in names if name not in THINKING_SWITCHES]
    if unknown:
        raise ValueError(f"unknown switch {unknown[0]!r}: expected false, true or a comma-separated list of {', '.join(THINKING_SWITCHES)}")
    return tuple(dict.fromkeys(names))


MIN_TOKEN_LENGTH = 16
EXAMPLE_TOKENS = frozenset({"change-me"})
"""Tokens README.md or compose.yaml showed as examples, now or in an earlier release: anyone could have read them."""


def parse_dashboard_token(text: str) -> str:
    """Empty means no token; the message never repeats the token, which may be close to the real one."""
    if text.strip().lower() in EXAMPLE_TOKENS:
        raise ValueError("is an example from the documentation; choose your own (e.g. openssl rand -hex 24)")
    if text and len(text) < MIN_TOKEN_LENGTH:
        raise ValueError(
            f"must be at least {MIN_TOKEN_LENGTH} characters, got {len(text)} (e.g. openssl rand -hex 24)"
        )
    return text


def parse_hosts(text: str) -> frozenset[str]:
    """Host names or addresses as `host_name` gives them; `*` stands for any."""
    hosts = frozenset(host_name(name) for name in text.split(",") if name.strip())
    for name in hosts:
        if name != "*" and not HOST_NAME.fullmatch(name) and not is_ip_address(name):
            raise ValueError(f"expected comma-separated host names or addresses without ports, or *, got {name!r}")
    return hosts


def host_name(text: str) -> str:
    """A host name as compared: lower case, no trailing dot, an IPv6 address without brackets."""
    return text.strip().lower().rstrip(".").removeprefix("[").removesuffix("]")


def is_ip_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def parse_instance_name(text: str) -> str:
    name = text.strip()
    if len(name) > MAX_INSTANCE_NAME or not name.isprintable():
        raise ValueError(f"expected a printable name of at most {MAX_INSTANCE_NAME} characters, got {text!r}")
    return name


def parse_model_map(text: str) -> ModelMap:
    try:
        mapping = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"invalid JSON: {e}") from None
    return ModelMap.from_dict(mapping)


class Setting(NamedTuple):
    env: str
    default: str
    parse: Callable[[str], Any]
    help: str

    @property
    def option(self) -> str:
        return self.env.lower()

    def environ(self) -> str:
        return os.environ.get(self.env, self.default)

    def read(self, text: str) -> Any:
        """Parse `text`; a bad value is a ValueError whose message names the variable."""
        try:
            return self.parse(text)
        except ValueError as e:
            raise ValueError(f"{self.env} (option {self.option}): {e}") from None

    def field(self) -> Any:
        """A typed attribute of Settings holding this setting's parsed value, the default's until configured."""
        return dataclasses.field(default_factory=lambda: self.parse(self.default), metadata={"setting": self})


UPSTREAM_URL = Setting(
    "UPSTREAM_URL",
    "http://localhost:8000",
    parse_upstream,
    "OpenAI-compatible server (scheme://host:port) for every path that is not Ollama-native.",
)
OLLAMA_UPSTREAM_URL = Setting(
    "OLLAMA_UPSTREAM_URL",
    "http://localhost:11434",
    parse_upstream,
    "Ollama server (scheme://host:port) for Ollama-native paths /api/*.",
)
MODEL_MAP = Setting(
    "MODEL_MAP",
    "{}",
    parse_model_map,
    "JSON object of model rewrites; keys are exact names or /regex/ (/regex/i ignores case), "
    'values may use \\1 or \\g<name> (written \\\\1 in JSON), e.g. {"gpt-4": "llama3-70b", "/^claude-(.*)$/": "qwen3:\\\\1"}.',
)
MODEL_MAP_FILE = Setting(
    "MODEL_MAP_FILE",
    "",
    str,
    "Path of a JSON or YAML file holding the model map instead of MODEL_MAP (same keys; a value may also be "
    '{"model": ..., "set": {...}, "drop": [...]}); re-read within 2 s when it changes, without a restart.',
)
STRIP_THINKING = Setting(
    "STRIP_THINKING",
    "true",
    parse_reasoning,
    "true: remove <think>...</think> blocks and separated reasoning from answers, also in streams; "
    "separate: move them into reasoning_content (OpenAI) or thinking (Ollama); false: leave answers alone.",
)
THINK_OPEN_MODELS = Setting(
    "THINK_OPEN_MODELS",
    "",
    ModelSelector,
    "Models whose answers start inside a think block (the chat template opens it): one exact name, "
    "/regex/ or /regex/i, matched with re.search on the routed model; their text is withheld until </think>.",
)
DISABLE_THINKING = Setting(
    "DISABLE_THINKING",
    "false",
    parse_switches,
    "false, true (= no_think), or a comma-separated list of switches, each applied to the requests it fits: "
    "no_think (' /no_think' appended), think_false (Ollama /api/chat, /api/generate), "
    "enable_thinking (chat_template_kwargs, OpenAI-style chat and completions), reasoning_effort ('none', OpenAI-style chat).",
)
THINK_KEEPALIVE_SECONDS = Setting(
    "THINK_KEEPALIVE_SECONDS",
    "10",
    parse_seconds,
    "Send an SSE comment ': keep-alive' when nothing has gone to the client for this long "
    "because reasoning is withheld; 0 = off.",
)
ECHO_REQUESTED_MODEL = Setting(
    "ECHO_REQUESTED_MODEL",
    "false",
    parse_bool,
    "Answers to rewritten requests name the model the client asked for (JSON, every SSE event and NDJSON line).",
)
REQUEST_TIMEOUT = Setting(
    "REQUEST_TIMEOUT",
    "60.0",
    parse_positive,
    "Seconds to wait for the upstream's response headers before answering 504; "
    "a stream that has started is never cut.",
)
ENABLE_LOGGING = Setting(
    "ENABLE_LOGGING",
    "true",
    parse_bool,
    "Record every request in SQLite and serve the dashboard (/) and JSON API (/api/logs, /api/stats, /api/inflight).",
)
DB_PATH = Setting("DB_PATH", "requests.db", parse_path, "SQLite file of the request log.")
MAX_LOG_AGE_DAYS = Setting(
    "MAX_LOG_AGE_DAYS",
    "7",
    parse_positive,
    "Log rows older than this many days are deleted at start and hourly.",
)
LOG_MAX_BODY_BYTES = Setting(
    "LOG_MAX_BODY_BYTES",
    "262144",
    parse_size,
    "Request and response bodies stored in the log are cut at this size, with a marker.",
)
DASHBOARD_TOKEN = Setting(
    "DASHBOARD_TOKEN",
    "",
    parse_dashboard_token,
    "When set, the dashboard's data and every local JSON route require this token "
    f"(Authorization: Bearer, or the login form's cookie; at least {MIN_TOKEN_LENGTH} characters); "
    "proxied traffic is unaffected.",
)
DASHBOARD_HOSTS = Setting(
    "DASHBOARD_HOSTS",
    "",
    parse_hosts,
    "Comma-separated host names the dashboard and local JSON routes answer to, besides localhost, "
    "loopback addresses and LISTEN_HOST (* = any); other Host headers get 403, against DNS rebinding.",
)
REQUEST_USAGE = Setting(
    "REQUEST_USAGE",
    "true",
    parse_bool,
    "Ask the upstream for token usage (stream_options.include_usage) in streamed OpenAI chat and completions "
    "requests that did not ask for it, and remove the usage-only event from what the client gets.",
)
DATABASE_URL = Setting(
    "DATABASE_URL",
    "",
    parse_database_url,
    "postgresql://user:password@host:port/database: keep the request log in PostgreSQL, shared by several "
    "replicas, instead of the SQLite file at DB_PATH; empty = SQLite.",
)
INSTANCE_NAME = Setting(
    "INSTANCE_NAME",
    "",
    parse_instance_name,
    "This replica's name in the shared request log (each row's `instance`); empty = host name and listen port.",
)
# mitmproxy's own listen_host / listen_port take these as their values unless set on the command line
LISTEN_HOST = Setting("LISTEN_HOST", "127.0.0.1", str, "Address the proxy binds.")
LISTEN_PORT = Setting("LISTEN_PORT", "1234", parse_port, "Port the proxy listens on.")


@dataclass(eq=False)
class Settings:
    """
    Declares and parses every rerouter option; the other addons read the parsed values here.

    A bad value at startup is logged as one line naming the variable, which makes
    mitmproxy's ErrorCheck stop startup with exit code 1 (a raised OptionsError
    would print a traceback instead). At runtime, e.g. from mitmweb's option
    editor, it is refused with an OptionsError, which rolls the change back.
    The values are plain attributes because they are read on every request.
    """

    upstream_url: Upstream = UPSTREAM_URL.field()
    ollama_upstream_url: Upstream = OLLAMA_UPSTREAM_URL.field()
    model_map: ModelMap = MODEL_MAP.field()
    model_map_file: str = MODEL_MAP_FILE.field()
    strip_thinking: Reasoning = STRIP_THINKING.field()
    think_open_models: ModelSelector = THINK_OPEN_MODELS.field()
    disable_thinking: tuple[str, ...] = DISABLE_THINKING.field()
    think_keepalive_seconds: float = THINK_KEEPALIVE_SECONDS.field()
    echo_requested_model: bool = ECHO_REQUESTED_MODEL.field()
    request_timeout: float = REQUEST_TIMEOUT.field()
    enable_logging: bool = ENABLE_LOGGING.field()
    db_path: str = DB_PATH.field()
    max_log_age_days: float = MAX_LOG_AGE_DAYS.field()
    log_max_body_bytes: int = LOG_MAX_BODY_BYTES.field()
    dashboard_token: str = DASHBOARD_TOKEN.field()
    dashboard_hosts: frozenset[str] = DASHBOARD_HOSTS.field()
    request_usage: bool = REQUEST_USAGE.field()
    database_url: str = DATABASE_URL.field()
    instance_name: str = INSTANCE_NAME.field()
    # read from the environment only: they feed mitmproxy's own listen_host / listen_port
    listen_host: str = LISTEN_HOST.field()
    listen_port: int = LISTEN_PORT.field()
    is_running: bool = False

    @classmethod
    def from_environment(cls) -> "Settings":
        """The settings as the environment gives them; ValueError names the first bad variable."""
        settings = cls()
        for setting in (*SETTINGS, LISTEN_HOST, LISTEN_PORT):
            setattr(settings, setting.option, setting.read(setting.environ()))
        return settings

    def load(self, loader) -> None:
        for setting in SETTINGS:
            loader.add_option(setting.option, str, setting.environ(), setting.help)
        self.listen_host = self._parse(LISTEN_HOST, LISTEN_HOST.environ(), self.listen_host)
        self.listen_port = self._parse(LISTEN_PORT, LISTEN_PORT.environ(), self.listen_port)

    def configure(self, updated: set[str]) -> None:
        for setting in SETTINGS:
            if setting.option in updated:
                text = getattr(ctx.options, setting.option)
                setattr(self, setting.option, self._parse(setting, text, getattr(self, setting.option)))

    def running(self) -> None:
        self.is_running = True

    def refuse(self, message: str) -> None:
        """A setting that cannot be used: one line that stops startup, or a refused change at runtime."""
        if self.is_running:
            raise exceptions.OptionsError(message)
        logger.error(message)

    def _parse(self, setting: Setting, text: str, previous: Any) -> Any:
        try:
            return setting.read(text)
        except ValueError as e:
            self.refuse(str(e))
            return previous


# the rerouter's own options, in the order of the contract; LISTEN_HOST and LISTEN_PORT are mitmproxy's
SETTINGS: tuple[Setting, ...] = tuple(
    field.metadata["setting"]
    for field in dataclasses.fields(Settings)
    if "setting" in field.metadata and field.metadata["setting"] not in (LISTEN_HOST, LISTEN_PORT)
)
