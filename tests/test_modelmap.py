import pytest

from rerouter.modelmap import ModelMap
from rerouter.modelmap import add_aliases
from rerouter.modelmap import append_no_think


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
            ({"a": 1}, "must be a string"),
            ({"/(/": "x"}, "invalid regex"),
            ({"/(a)/": r"\2"}, "bad replacement"),
            ({"/(a)/": r"\g<nope>"}, "bad replacement"),
        ],
    )
    def test_bad_maps(self, mapping, problem):
        with pytest.raises(ValueError, match=problem):
            mm(mapping)


class TestNoThink:
    def test_last_user_message_string(self):
        body = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]}
        assert append_no_think(body)
        assert body["messages"][0]["content"] == "a"
        assert body["messages"][2]["content"] == "c /no_think"

    def test_user_message_before_trailing_assistant(self):
        body = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "prefill"}]}
        assert append_no_think(body)
        assert body["messages"][0]["content"] == "q /no_think"

    def test_content_parts_last_text_part(self):
        parts = [{"type": "text", "text": "one"}, {"type": "image_url", "image_url": {"url": "x"}}, {"type": "text", "text": "two"}, {"type": "image_url"}]
        body = {"messages": [{"role": "user", "content": parts}]}
        assert append_no_think(body)
        assert [p.get("text") for p in parts] == ["one", None, "two /no_think", None]

    def test_once_only(self):
        body = {"messages": [{"role": "user", "content": "hi /no_think"}]}
        assert not append_no_think(body)
        assert body["messages"][0]["content"] == "hi /no_think"
        body = {"prompt": "x"}
        assert append_no_think(body) and not append_no_think(body)
        assert body["prompt"] == "x /no_think"

    @pytest.mark.parametrize(
        "body",
        [{}, {"messages": []}, {"messages": [{"role": "system", "content": "s"}]}, {"prompt": ["list"]}, {"messages": [{"role": "user", "content": None}]}, {"input": "responses api"}],
    )
    def test_nothing_to_append_to(self, body):
        assert not append_no_think(body)


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
