import copy

import pytest

from rerouter.modelmap import THINKING_SWITCHES
from rerouter.modelmap import ModelMap
from rerouter.modelmap import ModelSelector
from rerouter.modelmap import add_aliases
from rerouter.modelmap import switch_thinking_off


def mm(mapping: dict) -> ModelMap:
    return ModelMap.from_dict(mapping)


class TestModelMap:
    def test_exact(self):
        m = mm({"gpt-4": "llama3-70b"})
        assert m.route("gpt-4") == "llama3-70b"
        assert m.route("gpt-4o") == "gpt-4o"

    def test_exact_wins_over_pattern_written_first(self):
        m = mm({"/^gpt-/": "pattern", "gpt-4": "exact"})
        assert m.route("gpt-4") == "exact"
        assert m.route("gpt-5") == "pattern"

    def test_patterns_in_written_order_first_search_wins(self):
        m = mm({"/turbo/": "first", "/^gpt-3/": "second"})
        assert m.route("gpt-3.5-turbo") == "first"
        assert m.route("gpt-3") == "second"

    def test_search_not_fullmatch(self):
        assert mm({"/haiku/": "small"}).route("claude-haiku-4-5-20251001") == "small"

    def test_groups_expand(self):
        m = mm({r"/^claude-(\w+)-(?P<ver>[\d-]+)$/": r"qwen3-\1:\g<ver>"})
        assert m.route("claude-haiku-4-5") == "qwen3-haiku:4-5"

    def test_case_insensitive_flag(self):
        m = mm({"/^GPT/i": "local", "/^Claude/": "cased"})
        assert m.route("gpt-4") == "local"
        assert m.route("claude-3") == "claude-3"

    def test_slash_names_that_are_not_patterns_are_exact(self):
        m = mm({"/models/x": "y"})
        assert m.route("/models/x") == "y"

    def test_empty_is_falsy(self):
        assert not mm({})
        assert mm({"a": "b"})

    @pytest.mark.parametrize(
        "mapping, problem",
        [
            ([], "expected a JSON object"),
            ({"a": 1}, "must be a string or an object"),
            ({"a": {"model": 1}}, "model of the rule for 'a' must be a string"),
            ({"a": {"model": "b", "sett": {}}}, r"unknown fields \['sett'\]"),
            ({"a": {"set": []}}, "set of the rule for 'a' must be an object"),
            ({"a": {"drop": "x"}}, "must be a list of field names"),
            ({"a": {"drop": [1]}}, "must be a list of field names"),
            ({"a": {"set": {"model": "x"}}}, "cannot set or drop model"),
            ({"a": {"drop": ["model"]}}, "cannot set or drop model"),
            ({"a": {"set": {"x": float("nan")}}}, "JSON cannot carry"),
            ({"a": {"set": {"x": {1, 2}}}}, "set .* which JSON cannot carry"),
            ({"a": {"set": {"x": {1: 2}}}}, "key that is not a string"),
            ({"/(a)/": {"model": r"\2"}}, "bad replacement"),
            ({"/(/": "x"}, "invalid regex"),
            ({"/(a)/": r"\2"}, "bad replacement"),
            ({"/(a)/": r"\g<nope>"}, "bad replacement"),
        ],
    )
    def test_bad_maps(self, mapping, problem):
        with pytest.raises(ValueError, match=problem):
            mm(mapping)


class TestRules:
    """Values that are objects: {"model", "set", "drop"}."""

    def test_object_value_routes_like_a_string(self):
        m = mm({"/^claude-(\\w+)/": {"model": r"qwen3-\1", "set": {"temperature": 0.1}}})
        match = m.match("claude-haiku-4")
        assert match.routed == "qwen3-haiku" and match.index == 0 and match.groups == ("haiku",)
        assert match.rule.set == {"temperature": 0.1}

    def test_rule_without_model_keeps_the_name(self):
        m = mm({"qwen3:32b": {"set": {"think": False}}, "/^llama/": {"drop": ["logprobs"]}})
        assert m.route("qwen3:32b") == "qwen3:32b"
        assert m.route("llama3-70b") == "llama3-70b"
        assert m.match("llama3-70b").rule.drop == ("logprobs",)
        assert m.exact == {}, "a rule that keeps the name is no alias"

    def test_edit_deep_merges_set_and_drops_fields(self):
        rule = mm({"m": {"model": "x", "set": {"options": {"num_ctx": 8192}, "think": False, "stop": ["a"]}, "drop": ["logprobs", "absent"]}}).rules[0]
        body = {"model": "x", "options": {"temperature": 1, "num_ctx": 2048}, "stop": ["b", "c"], "logprobs": True}
        note = rule.edit(body)
        assert body == {"model": "x", "options": {"temperature": 1, "num_ctx": 8192}, "stop": ["a"], "think": False}
        assert note == "set options.num_ctx=8192, think=false, stop=[\"a\"]; dropped logprobs"

    def test_edit_drops_before_it_sets(self):
        rule = mm({"m": {"drop": ["options"], "set": {"options": {"seed": 1}}}}).rules[0]
        body = {"options": {"temperature": 1}}
        rule.edit(body)
        assert body == {"options": {"seed": 1}}

    def test_edit_reports_nothing_when_the_body_already_has_it(self):
        rule = mm({"m": {"set": {"think": False, "options": {"seed": 1}}, "drop": ["gone"]}}).rules[0]
        body = {"think": False, "options": {"seed": 1}}
        assert rule.edit(body) == ""
        assert rule.edit({"think": 0, "options": {"seed": 1}}) == "set think=false", "true/false are not 1/0 in JSON"

    def test_edit_copies_the_rules_values(self):
        rule = mm({"m": {"set": {"chat_template_kwargs": {"enable_thinking": True}}}}).rules[0]
        body: dict = {}
        rule.edit(body)
        body["chat_template_kwargs"]["enable_thinking"] = False
        assert rule.set == {"chat_template_kwargs": {"enable_thinking": True}}

    def test_long_values_are_cut_in_the_note(self):
        rule = mm({"m": {"set": {"system": "x" * 500}}}).rules[0]
        note = rule.edit({})
        assert note.startswith('set system="xxx') and note.endswith("…") and len(note) < 60

    def test_alias_bomb_is_refused(self):
        value: list = ["x"]
        for _ in range(40):
            value = [value, value]  # what YAML anchors make of a few lines: 2**40 nodes once walked
        with pytest.raises(ValueError, match="too large"):
            mm({"m": {"set": {"v": value}}})

    def test_explain(self):
        m = mm({"/^gpt-/": "pattern", "gpt-4": {"model": "exact", "set": {"a": 1}}, "/^(gpt)-(\\d)/": r"\1\2", "/^claude/": "c"})
        assert m.explain("gpt-4") == {
            "model": "gpt-4",
            "routed": "exact",
            "rule": {"key": "gpt-4", "kind": "exact", "index": 1},
            "groups": [],
            "set": {"a": 1},
            "drop": [],
            "shadowed": ["/^gpt-/", "/^(gpt)-(\\d)/"],
        }
        verdict = m.explain("gpt-5")
        assert verdict["rule"] == {"key": "/^gpt-/", "kind": "pattern", "index": 0}
        assert verdict["routed"] == "pattern" and verdict["shadowed"] == ["/^(gpt)-(\\d)/"]
        assert m.explain("gpt-5x")["groups"] == []
        assert mm({"/^(a)(b)?/": r"\1"}).explain("ax")["groups"] == ["a", None]
        assert m.explain("llama") == {"model": "llama", "routed": "llama", "rule": None, "groups": [], "set": {}, "drop": [], "shadowed": []}

    def test_as_dict(self):
        m = mm({"a": "b", "/c/i": {"model": "d", "set": {"x": 1}, "drop": ["y"]}, "e": {"set": {"z": 2}}})
        assert [rule.as_dict() for rule in m.rules] == [
            {"key": "a", "kind": "exact", "target": "b", "set": {}, "drop": []},
            {"key": "/c/i", "kind": "pattern", "target": "d", "set": {"x": 1}, "drop": ["y"]},
            {"key": "e", "kind": "exact", "target": None, "set": {"z": 2}, "drop": []},
        ]


def no_think(body: dict, path: str = "/v1/chat/completions") -> bool:
    applied, changed = switch_thinking_off(body, ["no_think"], path)
    assert changed <= bool(applied)
    return changed


class TestNoThink:
    def test_last_user_message_string(self):
        body = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]}
        assert no_think(body)
        assert body["messages"][0]["content"] == "a"
        assert body["messages"][2]["content"] == "c /no_think"

    def test_user_message_before_trailing_assistant(self):
        body = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "prefill"}]}
        assert no_think(body)
        assert body["messages"][0]["content"] == "q /no_think"

    def test_content_parts_last_text_part(self):
        parts = [{"type": "text", "text": "one"}, {"type": "image_url", "image_url": {"url": "x"}}, {"type": "text", "text": "two"}, {"type": "image_url"}]
        body = {"messages": [{"role": "user", "content": parts}]}
        assert no_think(body)
        assert [p.get("text") for p in parts] == ["one", None, "two /no_think", None]

    def test_once_only(self):
        body = {"messages": [{"role": "user", "content": "hi /no_think"}]}
        assert switch_thinking_off(body, ["no_think"], "/v1/chat/completions") == (["no_think"], False)
        assert body["messages"][0]["content"] == "hi /no_think"
        body = {"prompt": "x"}
        assert no_think(body, "/api/generate") and not no_think(body, "/api/generate")
        assert body["prompt"] == "x /no_think"

    @pytest.mark.parametrize(
        "body",
        [{}, {"messages": []}, {"messages": [{"role": "system", "content": "s"}]}, {"prompt": ["list"]}, {"messages": [{"role": "user", "content": None}]}, {"input": "responses api"}],
    )
    def test_nothing_to_append_to(self, body):
        assert switch_thinking_off(body, ["no_think"], "/v1/chat/completions") == ([], False)


CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
PROMPT = {"model": "m", "prompt": "hi"}


class TestSwitches:
    @pytest.mark.parametrize(
        "path, body, applied",
        [
            ("/api/chat", CHAT, ["no_think", "think_false"]),
            ("/api/generate", PROMPT, ["no_think", "think_false"]),
            ("/v1/chat/completions", CHAT, ["no_think", "enable_thinking", "reasoning_effort"]),
            ("/v1/completions", PROMPT, ["no_think", "enable_thinking"]),
            ("/openai/v1/chat/completions/?x=1", CHAT, ["no_think", "enable_thinking", "reasoning_effort"]),
            ("/v1/embeddings", {"model": "m", "input": "hi"}, []),
            ("/api/embed", {"model": "m", "input": "hi"}, []),
            ("/api/show", {"model": "m"}, []),
            ("/v1/responses", {"model": "m", "input": "hi"}, []),
        ],
    )
    def test_each_applied_where_it_fits(self, path, body, applied):
        body = copy.deepcopy(body)
        assert switch_thinking_off(body, THINKING_SWITCHES, path) == (applied, bool(applied))
        assert ("think" in body) == ("think_false" in applied)
        assert ("chat_template_kwargs" in body) == ("enable_thinking" in applied)
        assert ("reasoning_effort" in body) == ("reasoning_effort" in applied)

    def test_values(self):
        chat = copy.deepcopy(CHAT)
        switch_thinking_off(chat, THINKING_SWITCHES, "/v1/chat/completions")
        assert chat["chat_template_kwargs"] == {"enable_thinking": False}
        assert chat["reasoning_effort"] == "none"
        assert chat["messages"][0]["content"] == "hi /no_think"
        ollama = copy.deepcopy(CHAT)
        switch_thinking_off(ollama, ["think_false"], "/api/chat")
        assert ollama == {**CHAT, "think": False}

    def test_the_proxy_wins(self):
        body = {
            **CHAT,
            "think": True,
            "chat_template_kwargs": {"enable_thinking": True, "other": 1},
            "reasoning_effort": "high",
            "reasoning": {"effort": "high", "summary": "auto"},
        }
        assert switch_thinking_off(body, ["enable_thinking", "reasoning_effort"], "/v1/chat/completions") == (["enable_thinking", "reasoning_effort"], True)
        assert body["chat_template_kwargs"] == {"enable_thinking": False, "other": 1}
        assert body["reasoning_effort"] == "none"
        assert body["reasoning"] == {"effort": "none", "summary": "auto"}
        assert switch_thinking_off(body, ["think_false"], "/api/chat") == (["think_false"], True)
        assert body["think"] is False

    @pytest.mark.parametrize("kwargs", [None, "x", ["enable_thinking"], 3])
    def test_odd_template_kwargs_replaced(self, kwargs):
        body = {**PROMPT, "chat_template_kwargs": kwargs}
        assert switch_thinking_off(body, ["enable_thinking"], "/v1/completions") == (["enable_thinking"], True)
        assert body["chat_template_kwargs"] == {"enable_thinking": False}

    def test_already_off_is_applied_without_change(self):
        body = {**CHAT, "think": False, "chat_template_kwargs": {"enable_thinking": False}, "reasoning_effort": "none"}
        original = copy.deepcopy(body)
        assert switch_thinking_off(body, ["think_false"], "/api/chat") == (["think_false"], False)
        assert switch_thinking_off(body, ["enable_thinking", "reasoning_effort"], "/v1/chat/completions") == (["enable_thinking", "reasoning_effort"], False)
        assert body == original


class TestModelSelector:
    @pytest.mark.parametrize(
        "text, model, selected",
        [
            ("qwq-32b", "qwq-32b", True),
            ("qwq-32b", "qwq-32b-q4", False),
            ("  qwq-32b ", "qwq-32b", True),
            ("/qwq/", "hf/qwq-32b", True),
            ("/^qwq/", "hf/qwq-32b", False),
            ("/QwQ/", "qwq", False),
            ("/QwQ/i", "qwq", True),
            ("/deepseek-r1|qwen3.*thinking/i", "Qwen3-30B-A3B-Thinking-2507", True),
            ("", "anything", False),
            ("/x/", None, False),
        ],
    )
    def test_matches(self, text, model, selected):
        assert ModelSelector(text).matches(model) is selected

    def test_bad_regex(self):
        with pytest.raises(ValueError, match="invalid regex"):
            ModelSelector("/(/")

    def test_empty_is_false(self):
        assert not ModelSelector("")
        assert ModelSelector("m")


class TestAliases:
    def test_openai_list(self):
        listing = {"object": "list", "data": [{"id": "llama3-70b", "object": "model", "owned_by": "me"}]}
        assert add_aliases(listing, {"gpt-4": "llama3-70b", "gpt-3.5-turbo": "missing"})
        assert listing["data"][1] == {"id": "gpt-4", "object": "model", "owned_by": "me"}
        assert len(listing["data"]) == 2

    def test_ollama_tags(self):
        listing = {"models": [{"name": "qwen3:8b", "model": "qwen3:8b", "size": 5, "details": {"family": "qwen3"}}]}
        assert add_aliases(listing, {"gpt-3.5-turbo": "qwen3:8b"})
        alias = listing["models"][1]
        assert alias["name"] == alias["model"] == "gpt-3.5-turbo"
        assert alias["details"] == {"family": "qwen3"}
        assert listing["models"][0]["name"] == "qwen3:8b"

    def test_alias_already_listed_is_not_duplicated(self):
        listing = {"data": [{"id": "a"}, {"id": "b"}]}
        assert not add_aliases(listing, {"a": "b"})
        assert len(listing["data"]) == 2

    @pytest.mark.parametrize("listing", [None, [], {"data": "x"}, {"other": []}])
    def test_other_shapes_untouched(self, listing):
        assert not add_aliases(listing, {"a": "b"})
