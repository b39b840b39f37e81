import asyncio
import json
import logging
import os
import time

import pytest
from mitmproxy import exceptions
from mitmproxy.test import taddons

from logstore import LogStore
from rerouter.flows import flow_state
from rerouter.requestlog import RequestLog
from rerouter.rewriting import ModelRewrite
from rerouter.rules import MAX_FILE_BYTES
from rerouter.rules import MAX_NAME_CHARS
from rerouter.rules import Rules
from rerouter.rules import UnmatchedNames
from rerouter.rules import WatchedFile
from rerouter.rules import parse_rules_file
from rerouter.rules import says_model_unknown
from rerouter.settings import Settings
from tests.helpers import json_response
from tests.helpers import reverse_flow
from tests.helpers import start
from tests.helpers import wait_for_async

POLL = 0.01
"""Seconds between looks at the rules file here: the watch's real pace, quickened."""
YAML_RULES = r"""
# exact names first, then patterns in the order written
gpt-4: llama3-70b
'/^claude-(\w+)/i':
  model: 'qwen3-\1'
  set:
    options: {num_ctx: 8192}
    think: false
  drop: [logprobs]
qwen3:32b:
  set: {chat_template_kwargs: {enable_thinking: false}}
"""


class TestRulesFile:
    def test_yaml(self):
        m = parse_rules_file(YAML_RULES.encode(), "rules.yaml")
        assert [rule.key for rule in m.rules] == ["gpt-4", r"/^claude-(\w+)/i", "qwen3:32b"]
        assert m.route("Claude-haiku-4") == "qwen3-haiku"
        assert m.match("claude-x").rule.set == {"options": {"num_ctx": 8192}, "think": False}
        assert m.route("qwen3:32b") == "qwen3:32b"

    def test_json(self):
        m = parse_rules_file(b'{"gpt-4": "llama3-70b", "/^c-(.*)$/": {"model": "q-\\\\1"}}', "rules.json")
        assert m.route("c-x") == "q-x"

    def test_yaml_reads_json_too(self):
        assert parse_rules_file(b'{"gpt-4": "llama3-70b"}', "rules").route("gpt-4") == "llama3-70b"

    @pytest.mark.parametrize(
        "content, name, problem",
        [
            (b'{"a": "b", "a": "c"}', "r.json", "duplicate key 'a'"),
            (b"a: b\na: c\n", "r.yaml", 'found duplicate key "a"'),
            (b"a: [b\n", "r.yaml", r"invalid YAML: expected ',' or '\]', but got '<stream end>' \(line 2, column 1\)"),
            (b'{"a": ', "r.json", "invalid JSON"),
            (b"- a\n", "r.yaml", "expected a mapping of model names to rules, got list"),
            (b"", "r.yaml", "got NoneType"),
            (b"a: {set: {until: 2026-01-01}}\n", "r.yaml", "holds a date .* quote it"),
            (b"a: '/(x/'\n'/(x/': b\n", "r.yml", "invalid regex"),
            (b"a: \xff\n", "r.yaml", "not UTF-8"),
            (b"[" * 100000, "r.json", "invalid JSON"),
            (b"[" * 600, "r.yaml", "invalid YAML: nested too deeply"),
        ],
    )
    def test_broken_files(self, content, name, problem):
        with pytest.raises(ValueError, match=problem) as raised:
            parse_rules_file(content, name)
        assert "\n" not in str(raised.value)


class TestWatchedFile:
    def test_unchanged_signature_is_not_read_again(self, tmp_path):
        path = tmp_path / "rules.yaml"
        path.write_text("a: b\n")
        past = time.time() - 60
        os.utime(path, (past, past))
        file = WatchedFile(str(path))
        assert file.read() == b"a: b\n"
        path.write_text("a: c\n")
        os.utime(path, (past, past))  # same inode, size and old mtime: only a read could tell
        assert file.changed() is None

    def test_edit_in_place_with_the_same_size_and_mtime(self, tmp_path):
        path = tmp_path / "rules.yaml"
        path.write_text("a: b\n")
        file = WatchedFile(str(path))
        file.read()
        stat = os.stat(path)
        path.write_text("a: c\n")
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # a coarse-mtime filesystem
        assert file.changed() == b"a: c\n"
        assert file.changed() is None

    def test_rename_replace_and_symlink_swap(self, tmp_path):
        for version in ("v1", "v2"):
            (tmp_path / version).mkdir()
            (tmp_path / version / "rules.yaml").write_text(f"a: {version}\n")
        (tmp_path / "..data").symlink_to("v1")
        path = tmp_path / "rules.yaml"
        path.symlink_to("..data/rules.yaml")  # the layout of a Kubernetes config map volume
        file = WatchedFile(str(path))
        assert file.read() == b"a: v1\n"
        (tmp_path / "..data_tmp").symlink_to("v2")
        os.replace(tmp_path / "..data_tmp", tmp_path / "..data")
        assert file.changed() == b"a: v2\n"
        (tmp_path / "new").write_text("a: v3\n")
        os.replace(tmp_path / "new", tmp_path / "v2" / "rules.yaml")
        assert file.changed() == b"a: v3\n"

    def test_deleted_file_comes_back_as_it_was(self, tmp_path):
        path = tmp_path / "rules.yaml"
        path.write_text("a: b\n")
        file = WatchedFile(str(path))
        file.read()
        path.unlink()
        with pytest.raises(FileNotFoundError):
            file.changed()
        path.write_text("a: b\n")
        assert file.changed() == b"a: b\n", "read as new, so the rules' error clears"

    def test_too_big(self, tmp_path):
        path = tmp_path / "rules.yaml"
        path.write_bytes(b"#" * (MAX_FILE_BYTES + 1))
        with pytest.raises(ValueError, match="more than"):
            WatchedFile(str(path)).read()


@pytest.mark.parametrize(
    "status, body, unknown",
    [
        (404, b'{"error":"model \\"nope\\" not found, try pulling it first"}', True),  # Ollama
        (404, b'{"object":"error","message":"The model `nope` does not exist.","code":404}', True),  # vLLM
        (404, b"", True),
        (400, b'{"error":{"message":"model \'nope\' not found","type":"invalid_request_error"}}', True),
        (400, b'{"error":{"code":"model_not_found"}}', True),
        (500, b'{"error":"Invalid model name passed in model=nope"}', True),  # LiteLLM
        (400, b'{"error":"messages: field required"}', False),
        (500, b'{"error":"CUDA out of memory"}', False),
        (200, b'{"error":"model not found"}', False),
    ],
)
def test_says_model_unknown(status, body, unknown):
    assert says_model_unknown(status, body) is unknown


class TestUnmatchedNames:
    def test_bounded_newest_kept(self):
        names = UnmatchedNames()
        for i in range(10_000):
            names.seen(f"random-{i}", float(i))
        names.seen("random-5000", 20_000.0)  # too old: evicted before, counted anew
        listed = names.as_list()
        assert len(listed) == 1000
        assert listed[0]["model"] == "random-5000" and listed[0]["count"] == 1
        assert listed[-1]["model"] == "random-9001"

    def test_counts_and_rejections(self):
        names = UnmatchedNames()
        names.seen("a", 1.0)
        names.seen("b", 2.0)
        names.seen("a", 3.0)
        names.rejected("a")
        names.rejected("never seen")
        assert names.as_list() == [
            {"model": "a", "count": 2, "last_seen": "1970-01-01T00:00:03.000Z", "rejected": 1},
            {"model": "b", "count": 1, "last_seen": "1970-01-01T00:00:02.000Z", "rejected": 0},
        ]

    def test_long_names_are_not_kept(self):
        names = UnmatchedNames()
        names.seen("x" * (MAX_NAME_CHARS + 1), 1.0)
        names.restore([("y" * (MAX_NAME_CHARS + 1), 1, 1.0, 0)])
        assert names.as_list() == []

    def test_restore_adds_to_what_this_run_saw(self):
        names = UnmatchedNames(limit=3)
        names.seen("live", 100.0)
        names.restore([("live", 5, 50.0, 2), ("old", 1, 40.0, 0), ("older", 1, 30.0, 0), ("oldest", 1, 20.0, 1)])
        assert [(e["model"], e["count"], e["rejected"]) for e in names.as_list()] == [("live", 6, 2), ("old", 1, 0), ("older", 1, 0)]


@pytest.fixture
def rules_env(settings_env, tmp_path):
    settings_env.setenv("DB_PATH", str(tmp_path / "log.db"))
    path = tmp_path / "rules.yaml"
    path.write_text(YAML_RULES)
    return settings_env, path


def addons():
    s = Settings()
    log = RequestLog(s)
    rules = Rules(s, log)
    return s, log, rules, ModelRewrite(s, rules)


def startup_errors(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


class TestRulesAddon:
    def test_env_rules(self, rules_env):
        env, _ = rules_env
        env.setenv("MODEL_MAP", '{"gpt-4": "llama3-70b"}')
        s, log, rules, rewrite = addons()
        with taddons.context(s, rules, rewrite) as tctx:
            start(tctx, s, rules)
            described = rules.describe()
            assert described["source"] == "env" and described["path"] is None and described["error"] is None
            assert described["rules"] == [{"key": "gpt-4", "kind": "exact", "target": "llama3-70b", "set": {}, "drop": [], "hits": 0}]

    def test_file_rules_edit_the_request_and_say_so(self, rules_env):
        env, path = rules_env
        env.setenv("MODEL_MAP_FILE", str(path))
        env.setenv("DISABLE_THINKING", "true")
        s, log, rules, rewrite = addons()
        with taddons.context(s, rules, rewrite) as tctx:
            start(tctx, s, rules)
            flow = reverse_flow(body={"model": "claude-haiku", "prompt": "hi", "logprobs": 3, "options": {"seed": 1}})
            rewrite.request(flow)
            assert json.loads(flow.request.content) == {
                "model": "qwen3-haiku",
                "prompt": "hi /no_think",
                "options": {"seed": 1, "num_ctx": 8192},
                "think": False,
            }
            assert flow.comment == "model: claude-haiku -> qwen3-haiku; set options.num_ctx=8192, think=false; dropped logprobs; thinking off: no_think"
            assert flow_state(flow).rule == r"/^claude-(\w+)/i"
            assert rules.describe()["source"] == "file" and rules.describe()["path"] == str(path)
            assert [rule["hits"] for rule in rules.describe()["rules"]] == [0, 1, 0]

    def test_both_set_stops_startup(self, rules_env, caplog):
        env, path = rules_env
        env.setenv("MODEL_MAP", '{"gpt-4": "x"}')
        env.setenv("MODEL_MAP_FILE", str(path))
        s, log, rules, _ = addons()
        with caplog.at_level(logging.ERROR), taddons.context(s, rules) as tctx:
            start(tctx, s, rules)
        assert startup_errors(caplog) == ["MODEL_MAP and MODEL_MAP_FILE are both set: keep the rules in one of them"]

    @pytest.mark.parametrize("name, content, problem", [("missing.yaml", None, "no such file"), ("bad.yaml", "a: [", "invalid YAML")])
    def test_unusable_file_stops_startup(self, rules_env, caplog, tmp_path, name, content, problem):
        env, _ = rules_env
        path = tmp_path / name
        if content is not None:
            path.write_text(content)
        env.setenv("MODEL_MAP_FILE", str(path))
        s, log, rules, _ = addons()
        with caplog.at_level(logging.ERROR), taddons.context(s, rules) as tctx:
            start(tctx, s, rules)
        [error] = startup_errors(caplog)
        assert error.startswith(f"MODEL_MAP_FILE (option model_map_file): {path}: {problem}")

    def test_runtime_switch_to_a_bad_file_is_refused(self, rules_env, tmp_path):
        env, path = rules_env
        env.setenv("MODEL_MAP_FILE", str(path))
        s, log, rules, _ = addons()
        with taddons.context(s, rules) as tctx:
            start(tctx, s, rules)
            s.running()
            with pytest.raises(exceptions.OptionsError, match="no such file"):
                tctx.configure(s, model_map_file=str(tmp_path / "nope.yaml"))
            assert rules.model_map.route("gpt-4") == "llama3-70b"

    async def test_reload_broken_deleted_restored(self, rules_env, caplog):
        env, path = rules_env
        env.setenv("MODEL_MAP_FILE", str(path))
        env.setattr("rerouter.rules.POLL_SECONDS", POLL)
        s, log, rules, _ = addons()
        with taddons.context(s, rules) as tctx:
            start(tctx, s, rules)
            rules.running()
            rules.match("gpt-4")
            path.write_text("gpt-4: qwen3:8b\n'/x/': y\n")
            await wait_for_async(lambda: rules.model_map.route("gpt-4") == "qwen3:8b")
            assert [rule["hits"] for rule in rules.describe()["rules"]] == [1, 0], "hits of a rule that stays are kept"

            with caplog.at_level(logging.WARNING):
                path.write_text("gpt-4: [oops\n")
                await wait_for_async(lambda: rules.describe()["error"])
                await asyncio.sleep(10 * POLL)  # more polls see the same problem
                path.unlink()
                await wait_for_async(lambda: "no such file" in rules.describe()["error"])
                await asyncio.sleep(10 * POLL)
            warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
            assert len(warnings) == 2, "one line per problem, not per poll"
            assert warnings[0].startswith(f"MODEL_MAP_FILE {path}: invalid YAML: ") and "stay" in warnings[0]
            assert warnings[1].startswith(f"MODEL_MAP_FILE {path}: no such file; the rules loaded at ")
            assert rules.describe()["error"] == warnings[1]
            assert rules.model_map.route("gpt-4") == "qwen3:8b"

            path.write_text("gpt-4: qwen3:8b\n'/x/': y\n")
            await wait_for_async(lambda: rules.describe()["error"] is None)
            rules.done()

    def test_unmatched_names_and_rejections(self, rules_env):
        env, path = rules_env
        env.setenv("MODEL_MAP_FILE", str(path))
        s, log, rules, rewrite = addons()
        with taddons.context(s, rules, rewrite) as tctx:
            start(tctx, s, rules)
            for model, status in [("gpt-4", 404), ("mystery", 404), ("mystery", 200), ("other", 400)]:
                flow = reverse_flow(body={"model": model})
                rewrite.request(flow)
                flow.response = json_response({"error": "bad request"}, status)
                rules.response(flow)
            assert [(e["model"], e["count"], e["rejected"]) for e in rules.answer("/api/unmatched", "")[1]["unmatched"]] == [
                ("other", 1, 0),
                ("mystery", 2, 1),
            ]
            path.write_text("mystery: qwen3:8b\n")
            rules.configure({"model_map_file"})
            assert [e["model"] for e in rules.unmatched.as_list()] == ["other"], "a name the rules now catch leaves the inbox"

    def test_answers(self, rules_env):
        env, path = rules_env
        env.setenv("MODEL_MAP_FILE", str(path))
        s, log, rules, _ = addons()
        with taddons.context(s, rules) as tctx:
            start(tctx, s, rules)
            status, verdict = rules.answer("/api/explain", "model=claude-opus")
            assert status == 200 and verdict["routed"] == "qwen3-opus" and verdict["groups"] == ["opus"]
            assert rules.answer("/api/explain", "model=")[1]["rule"] is None
            assert rules.answer("/api/explain", "x=1")[0] == 400
            assert rules.hits == {}, "explaining is not a hit"


def test_unmatched_models_from_the_log(tmp_path):
    store = LogStore(str(tmp_path / "log.db"))
    store.open()
    rows = [
        ("1", 100.0, "mystery", "mystery", 404),
        ("2", 200.0, "mystery", "mystery", 200),
        ("3", 150.0, "gpt-4", "llama3-70b", 200),
        ("4", 300.0, "unrouted", None, None),
        ("5", 900.0, "later", "later", 200),
    ]
    for id, started, requested, routed, status in rows:
        store.begin({"id": id, "started_at": started, "requested_model": requested, "routed_model": routed})
        store.finish(id, state="completed", status=status)
    store.close()
    assert store.unmatched_models(before=500.0, limit=10) == [("unrouted", 1, 300.0, 0), ("mystery", 2, 200.0, 1)]
    assert store.unmatched_models(before=500.0, limit=1) == [("unrouted", 1, 300.0, 0)]
