"""
The rules in force: MODEL_MAP, or MODEL_MAP_FILE re-read while the proxy runs, with what they hit and miss.

The file is polled (inode, size, mtime of the path, following symlinks) rather
than watched with inotify: a poll sees an edit in place, a replace by rename
and a swapped symlink (Kubernetes config maps) alike, and works on every
filesystem a container mounts. Reads happen in a worker thread and are capped
in size, so a slow or huge file never holds up the event loop.
"""

import asyncio
import json
import logging
import os
import time
from collections import Counter
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from mitmproxy import http
from ruamel.yaml import YAML
from ruamel.yaml import YAMLError

from logstore import iso_utc
from rerouter.flows import flow_state
from rerouter.modelmap import ModelMap
from rerouter.modelmap import RuleMatch
from rerouter.requestlog import RequestLog
from rerouter.settings import Settings

logger = logging.getLogger(__name__)

ROUTES = ("/api/rules", "/api/explain", "/api/unmatched")
POLL_SECONDS = 0.5
MAX_FILE_BYTES = 256 * 1024  # hundreds of rules fit in a few KB; YAML in pure Python reads ~200 KB/s
RECENT_SECONDS = 2.0  # a file changed this recently is compared by content: mtime can be coarse
MAX_UNMATCHED = 1000
MAX_NAME_CHARS = 256  # longer "names" are not model names: they are not kept in the inbox
ERROR_BODY_BYTES = 4096
NOT_FOUND_WORDS = ("not found", "not_found", "does not exist", "unknown model", "invalid model", "no such model")


def parse_rules_file(content: bytes, path: str) -> ModelMap:
    """A rules file's map: JSON for `*.json`, YAML (which also reads JSON) for any other name."""
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"not UTF-8 text: {e}") from None
    if path.lower().endswith(".json"):
        try:
            mapping = json.loads(text, object_pairs_hook=unique_keys)
        except (json.JSONDecodeError, RecursionError) as e:
            raise ValueError(f"invalid JSON: {e}") from None
    else:
        try:
            mapping = YAML(typ="safe", pure=True).load(text)
        except YAMLError as e:
            raise ValueError(f"invalid YAML: {yaml_problem(e)}") from None
        except RecursionError:
            raise ValueError("invalid YAML: nested too deeply") from None
    if not isinstance(mapping, dict):
        raise ValueError(f"expected a mapping of model names to rules, got {type(mapping).__name__}")
    return ModelMap.from_dict(mapping)


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """In a file a repeated key is a mistake, not a way to override: YAML refuses it, so JSON does too."""
    mapping: dict[str, Any] = {}
    for key, value in pairs:
        if key in mapping:
            raise ValueError(f"invalid JSON: duplicate key {key!r}")
        mapping[key] = value
    return mapping


def yaml_problem(error: YAMLError) -> str:
    """ruamel's message spans lines with a snippet; the log gets one line."""
    problem, mark = getattr(error, "problem", None), getattr(error, "problem_mark", None)
    if problem and mark is not None:
        return f"{problem} (line {mark.line + 1}, column {mark.column + 1})"
    return " ".join(str(error).split())


class WatchedFile:
    """A file's content, handed out again only when it changed."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.signature: tuple[int, int, int, int] | None = None
        self.content: bytes | None = None

    def read(self) -> bytes:
        """Blocking. The current content; OSError when it cannot be read, ValueError when it is too big."""
        try:
            stat = os.stat(self.path)
            if stat.st_size > MAX_FILE_BYTES:
                raise ValueError(f"the file is {stat.st_size} bytes, more than the {MAX_FILE_BYTES} a rules file may have")
            with open(self.path, "rb") as file:
                content = file.read(MAX_FILE_BYTES + 1)
            if len(content) > MAX_FILE_BYTES:
                raise ValueError(f"the file is more than the {MAX_FILE_BYTES} bytes a rules file may have")
        except (OSError, ValueError):
            self.forget()
            raise
        self.signature = signature(stat)
        self.content = content
        return content

    def changed(self) -> bytes | None:
        """Blocking. The content if it differs from the last read, else None."""
        previous = self.content
        try:
            stat = os.stat(self.path)
        except OSError:
            self.forget()
            raise
        if signature(stat) == self.signature and time.time() - stat.st_mtime > RECENT_SECONDS:
            return None
        content = self.read()
        return None if content == previous else content

    def forget(self) -> None:
        """After a failed read the file may come back as it was: it is then read as new."""
        self.signature = self.content = None


def signature(stat: os.stat_result) -> tuple[int, int, int, int]:
    return stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns


def changed_rules(file: WatchedFile) -> ModelMap | None:
    """Blocking: the file's rules if its content changed, else None; parsing big YAML takes a while."""
    content = file.changed()
    return None if content is None else parse_rules_file(content, file.path)


def says_model_unknown(status: int, body: bytes) -> bool:
    """An upstream's answer that the model does not exist: a 404, or an error whose text says so."""
    if status == 404:
        return True
    if status < 400:
        return False
    text = body[:ERROR_BODY_BYTES].decode("utf-8", "replace").lower()
    return "model" in text and any(words in text for words in NOT_FOUND_WORDS)


@dataclass
class Unmatched:
    count: int = 0
    last_seen: float = 0.0
    rejected: int = 0


class UnmatchedNames:
    """Model names no rule matched; only the most recently seen are kept, so random names cannot grow memory."""

    def __init__(self, limit: int = MAX_UNMATCHED) -> None:
        self.limit = limit
        self.names: OrderedDict[str, Unmatched] = OrderedDict()  # oldest first

    def seen(self, name: str, when: float) -> None:
        if len(name) > MAX_NAME_CHARS:
            return
        entry = self.names.pop(name, None) or Unmatched()
        entry.count += 1
        entry.last_seen = when
        self.names[name] = entry
        if len(self.names) > self.limit:
            self.names.popitem(last=False)

    def rejected(self, name: str) -> None:
        entry = self.names.get(name)
        if entry is not None:
            entry.rejected += 1

    def restore(self, rows: list[tuple[str, int, float, int]]) -> None:
        """Add what an earlier run saw (name, count, last seen, rejected) to what this one has."""
        for name, count, last_seen, rejected in rows:
            if len(name) > MAX_NAME_CHARS:
                continue
            entry = self.names.setdefault(name, Unmatched())
            entry.count += count
            entry.rejected += rejected
            entry.last_seen = max(entry.last_seen, last_seen)
        newest = sorted(self.names.items(), key=lambda item: item[1].last_seen)[-self.limit :]
        self.names = OrderedDict(newest)

    def keep_unmatched(self, model_map: ModelMap) -> None:
        """Names the rules now match leave the inbox."""
        for name in [name for name in self.names if model_map.match(name) is not None]:
            del self.names[name]

    def as_list(self) -> list[dict[str, Any]]:
        return [
            {"model": name, "count": entry.count, "last_seen": iso_utc(entry.last_seen), "rejected": entry.rejected}
            for name, entry in reversed(self.names.items())
        ]


class Rules:
    """
    Holds the model map in force, from MODEL_MAP or MODEL_MAP_FILE, and swaps in a changed file's rules.

    A request in flight keeps what it was routed with; the next one uses the new
    rules. A file that breaks or disappears leaves the last good rules in force.
    """

    def __init__(self, settings: Settings, log: RequestLog) -> None:
        self.settings = settings
        self.log = log
        self.model_map = settings.model_map
        self.file: WatchedFile | None = None
        self.loaded_at = time.time()
        self.error: str | None = None
        self.hits: Counter[str] = Counter()
        self.unmatched = UnmatchedNames()
        self.tasks: set[asyncio.Task] = set()

    def configure(self, updated: set[str]) -> None:
        if not updated & {"model_map", "model_map_file"}:
            return
        path = self.settings.model_map_file
        if not path:
            self.file = None
            self._use(self.settings.model_map)
            return
        if self.settings.model_map:
            self.settings.refuse("MODEL_MAP and MODEL_MAP_FILE are both set: keep the rules in one of them")
            return
        file = WatchedFile(path)
        try:
            model_map = parse_rules_file(file.read(), path)
        except (OSError, ValueError) as e:
            self.settings.refuse(f"MODEL_MAP_FILE (option model_map_file): {path}: {problem(e)}")
            return
        self.file = file
        self._use(model_map)
        logger.info(f"MODEL_MAP_FILE {path}: {count_rules(model_map)} in force")

    def running(self) -> None:
        loop = asyncio.get_running_loop()
        for job in (self._watch(), self._restore_unmatched(time.time())):
            task = loop.create_task(job)
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    def done(self) -> None:
        for task in list(self.tasks):
            task.cancel()

    def match(self, model: str) -> RuleMatch | None:
        """The rule for a requested model, counted: hits per rule, and names no rule matched."""
        found = self.model_map.match(model)
        if found is None:
            self.unmatched.seen(model, time.time())
        else:
            self.hits[found.rule.key] += 1
        return found

    def response(self, flow: http.HTTPFlow) -> None:
        record = flow_state(flow)
        if record.requested_model is None or record.rule is not None or flow.response is None:
            return
        response = flow.response
        plain = response.raw_content is not None and response.headers.get("content-encoding", "identity") == "identity"
        if says_model_unknown(response.status_code, response.raw_content if plain else b""):
            self.unmatched.rejected(record.requested_model)

    def answer(self, path: str, query: str) -> tuple[int, dict[str, Any]]:
        """The JSON routes: /api/rules, /api/explain?model=NAME, /api/unmatched."""
        if path == "/api/rules":
            return 200, self.describe()
        if path == "/api/explain":
            model = parse_qs(query, keep_blank_values=True).get("model")
            if not model:
                return 400, {"error": "model is required, e.g. /api/explain?model=gpt-4"}
            return 200, self.model_map.explain(model[-1])
        return 200, {"unmatched": self.unmatched.as_list()}

    def describe(self) -> dict[str, Any]:
        return {
            "source": "env" if self.file is None else "file",
            "path": None if self.file is None else self.file.path,
            "loaded_at": iso_utc(self.loaded_at),
            "error": self.error,
            "rules": [{**rule.as_dict(), "hits": self.hits[rule.key]} for rule in self.model_map.rules],
        }

    def _use(self, model_map: ModelMap) -> None:
        self.model_map = model_map
        self.loaded_at = time.time()
        self.error = None
        keys = {rule.key for rule in model_map.rules}
        self.hits = Counter({key: hits for key, hits in self.hits.items() if key in keys})
        self.unmatched.keep_unmatched(model_map)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(POLL_SECONDS)
            file = self.file
            if file is not None:
                await self._reload(file)

    async def _reload(self, file: WatchedFile) -> None:
        try:
            model_map = await asyncio.to_thread(changed_rules, file)
        except Exception as e:  # whatever goes wrong, the rules in force stay and the watch goes on
            if file is self.file:
                self._refuse(file.path, e)
            return
        if model_map is not None and file is self.file:
            self._use(model_map)
            logger.info(f"MODEL_MAP_FILE {file.path}: changed, {count_rules(model_map)} in force now")

    def _refuse(self, path: str, error: Exception) -> None:
        """One log line per problem, however many polls see it."""
        message = f"MODEL_MAP_FILE {path}: {problem(error)}; the rules loaded at {iso_utc(self.loaded_at)} stay"
        if message != self.error:
            logger.warning(message)
            self.error = message

    async def _restore_unmatched(self, started: float) -> None:
        """Names missed before this start, from the log: the inbox survives a restart."""
        store = self.log.store
        if store is None:
            return
        try:
            rows = await asyncio.to_thread(store.unmatched_models, started, MAX_UNMATCHED)
        except Exception as e:  # best effort: an unreadable log leaves the inbox to this run
            logger.warning(f"the unmatched model names of earlier runs cannot be read from the log: {e}")
            return
        self.unmatched.restore([row for row in rows if self.model_map.match(row[0]) is None])


def count_rules(model_map: ModelMap) -> str:
    count = len(model_map.rules)
    return f"{count} rule" if count == 1 else f"{count} rules"


def problem(error: Exception) -> str:
    if isinstance(error, FileNotFoundError):
        return "no such file"
    if isinstance(error, OSError):
        return f"cannot read it: {error.strerror or error}"
    return str(error)
