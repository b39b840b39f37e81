import logging
import re
from pathlib import Path

import pytest
from mitmproxy import exceptions
from mitmproxy.test import taddons

from rerouter import settings as settings_module
from rerouter.settings import Settings
from rerouter.settings import Upstream
from rerouter.settings import parse_bool
from rerouter.settings import parse_dashboard_token
from rerouter.settings import parse_hosts
from rerouter.settings import parse_port
from rerouter.settings import parse_positive
from rerouter.settings import parse_reasoning
from rerouter.settings import parse_seconds
from rerouter.settings import parse_switches
from rerouter.settings import parse_upstream
from rerouter.thinking import Reasoning
from tests.conftest import start


@pytest.mark.parametrize("word", ["true", "TRUE", "1", "yes", "Yes", " on "])
def test_parse_bool_true(word):
    assert parse_bool(word) is True


@pytest.mark.parametrize("word", ["false", "False", "0", "no", "NO", "off"])
def test_parse_bool_false(word):
    assert parse_bool(word) is False


@pytest.mark.parametrize("word", ["", "maybe", "2", "truee"])
def test_parse_bool_refuses_unknown_words(word):
    with pytest.raises(ValueError, match="expected true/false"):
        parse_bool(word)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("http://localhost:8000", Upstream("http", "localhost", 8000)),
        ("http://localhost:8000/", Upstream("http", "localhost", 8000)),
        ("https://api.example.com", Upstream("https", "api.example.com", 443)),
        ("http://example.com", Upstream("http", "example.com", 80)),
        ("http://[::1]:11434", Upstream("http", "::1", 11434)),
    ],
)
def test_parse_upstream(text, expected):
    assert parse_upstream(text) == expected


def test_upstream_url_round_trips():
    assert parse_upstream("http://[::1]:11434").url == "http://[::1]:11434"
    assert parse_upstream("https://api.example.com").url == "https://api.example.com:443"


@pytest.mark.parametrize(
    "text, problem",
    [
        ("localhost:8000", "expected http://host:port"),
        ("ftp://host:21", "expected http://host:port"),
        ("http://", "expected http://host:port"),
        ("http://localhost:8000/v1", "without a path"),
        ("http://localhost:99999", "invalid URL"),
    ],
)
def test_parse_upstream_refuses(text, problem):
    with pytest.raises(ValueError, match=problem):
        parse_upstream(text)


@pytest.mark.parametrize("text, expected", [("60", 60.0), ("0.5", 0.5), ("1e2", 100.0)])
def test_parse_positive(text, expected):
    assert parse_positive(text) == expected


@pytest.mark.parametrize("text", ["abc", "0", "-1", "nan", "inf", ""])
def test_parse_positive_refuses(text):
    with pytest.raises(ValueError):
        parse_positive(text)


@pytest.mark.parametrize("text", ["x", "-1", "65536", "1.5"])
def test_parse_port_refuses(text):
    with pytest.raises(ValueError):
        parse_port(text)


@pytest.mark.parametrize(
    "text, expected",
    [("true", Reasoning.DROP), ("YES", Reasoning.DROP), ("0", Reasoning.KEEP), ("off", Reasoning.KEEP), (" Separate ", Reasoning.SEPARATE)],
)
def test_parse_reasoning(text, expected):
    assert parse_reasoning(text) is expected


def test_parse_reasoning_refuses():
    with pytest.raises(ValueError, match="expected true, false or separate, got 'move'"):
        parse_reasoning("move")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("false", ()),
        ("", ()),
        ("no", ()),
        ("true", ("no_think",)),
        ("1", ("no_think",)),
        ("think_false", ("think_false",)),
        (" Enable_Thinking , reasoning_effort,think_false ", ("enable_thinking", "reasoning_effort", "think_false")),
        ("no_think,no_think", ("no_think",)),
    ],
)
def test_parse_switches(text, expected):
    assert parse_switches(text) == expected


@pytest.mark.parametrize("text", ["think_off", "no_think,", "true,think_false", "no_think;think_false"])
def test_parse_switches_refuses(text):
    with pytest.raises(ValueError, match="unknown switch .*expected false, true or a comma-separated list of no_think, think_false, enable_thinking, reasoning_effort"):
        parse_switches(text)


@pytest.mark.parametrize("text, expected", [("10", 10.0), ("0", 0.0), ("0.25", 0.25)])
def test_parse_seconds(text, expected):
    assert parse_seconds(text) == expected


@pytest.mark.parametrize("text", ["-1", "nan", "inf", "soon", ""])
def test_parse_seconds_refuses(text):
    with pytest.raises(ValueError, match="expected a number of seconds"):
        parse_seconds(text)


@pytest.mark.parametrize(
    "variable, value, problem",
    [
        ("THINK_OPEN_MODELS", "/qwq(/", "THINK_OPEN_MODELS (option think_open_models): invalid regex"),
        ("DISABLE_THINKING", "think", "DISABLE_THINKING (option disable_thinking): unknown switch 'think'"),
        ("STRIP_THINKING", "moved", "STRIP_THINKING (option strip_thinking): expected true, false or separate"),
        ("THINK_KEEPALIVE_SECONDS", "-5", "THINK_KEEPALIVE_SECONDS (option think_keepalive_seconds): expected a number of seconds"),
        ("ECHO_REQUESTED_MODEL", "perhaps", "ECHO_REQUESTED_MODEL (option echo_requested_model): expected true/false"),
    ],
)
def test_reasoning_settings_errors_name_the_variable(variable, value, problem):
    setting = getattr(settings_module, variable)
    with pytest.raises(ValueError) as raised:
        setting.read(value)
    assert str(raised.value).startswith(problem)
    assert "\n" not in str(raised.value)


def test_setting_errors_name_the_variable():
    with pytest.raises(ValueError, match=r"^MODEL_MAP \(option model_map\): invalid JSON"):
        settings_module.MODEL_MAP.read("{nope")


class TestSettings:
    def test_environment_is_the_default(self, settings_env):
        settings_env.setenv("MODEL_MAP", '{"gpt-4": "llama3"}')
        settings_env.setenv("STRIP_THINKING", "no")
        settings_env.setenv("REQUEST_TIMEOUT", "2.5")
        settings_env.setenv("LISTEN_PORT", "4321")
        s = Settings()
        with taddons.context(s) as tctx:
            start(tctx, s)
            assert tctx.options.model_map == '{"gpt-4": "llama3"}'
            assert s.model_map.route("gpt-4") == "llama3"
            assert s.strip_thinking is Reasoning.KEEP
            assert s.request_timeout == 2.5
            assert s.listen_port == 4321

    def test_defaults(self, settings_env):
        s = Settings()
        with taddons.context(s):
            assert s.upstream_url == Upstream("http", "localhost", 8000)
            assert s.ollama_upstream_url == Upstream("http", "localhost", 11434)
            assert s.strip_thinking is Reasoning.DROP
            assert s.disable_thinking == ()
            assert not s.think_open_models
            assert s.think_keepalive_seconds == 10.0
            assert s.echo_requested_model is False
            assert s.request_timeout == 60.0
            assert not s.model_map
            assert (s.listen_host, s.listen_port) == ("127.0.0.1", 1234)

    def test_set_overrides_environment(self, settings_env):
        settings_env.setenv("UPSTREAM_URL", "http://fromenv:1")
        s = Settings()
        with taddons.context(s) as tctx:
            tctx.configure(s, upstream_url="http://fromset:2")
            assert s.upstream_url == Upstream("http", "fromset", 2)

    def test_bad_value_at_startup_is_one_logged_line(self, settings_env, caplog):
        settings_env.setenv("MODEL_MAP", "{not json")
        s = Settings()
        with caplog.at_level(logging.ERROR):
            with taddons.context(s) as tctx:
                start(tctx, s)
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1
        assert errors[0].startswith("MODEL_MAP (option model_map): invalid JSON")
        assert "\n" not in errors[0]

    def test_bad_value_at_runtime_is_refused(self, settings_env):
        s = Settings()
        with taddons.context(s) as tctx:
            s.running()
            tctx.configure(s, strip_thinking="false")
            assert s.strip_thinking is Reasoning.KEEP
            with pytest.raises(exceptions.OptionsError, match="STRIP_THINKING"):
                tctx.configure(s, strip_thinking="perhaps")
            assert tctx.options.strip_thinking == "false"
            assert s.strip_thinking is Reasoning.KEEP


class TestDashboardToken:
    @pytest.mark.parametrize("token", ["", "x" * 16, "0123456789abcdef0123456789abcdef"])
    def test_accepted(self, token):
        assert parse_dashboard_token(token) == token

    @pytest.mark.parametrize("token, problem", [("s3cret", "at least 16 characters, got 6"), ("change-me", "an example"), ("CHANGE-ME", "an example")])
    def test_refused_without_repeating_it(self, token, problem):
        with pytest.raises(ValueError, match=problem) as refused:
            parse_dashboard_token(token)
        assert token.lower() not in str(refused.value).lower()

    def test_no_example_in_the_docs_would_start(self):
        """Every literal token README.md and compose.yaml show must be one the proxy refuses."""
        root = Path(__file__).resolve().parent.parent
        text = (root / "README.md").read_text() + (root / "compose.yaml").read_text()
        literals = [value for value in re.findall(r"DASHBOARD_TOKEN[=:] *['\"]?([^\s'\"`]+)", text) if not value.startswith("$")]
        for value in literals:
            with pytest.raises(ValueError):
                parse_dashboard_token(value)


@pytest.mark.parametrize(
    "text, hosts",
    [("", frozenset()), ("proxy.lan, 192.168.1.5", {"proxy.lan", "192.168.1.5"}), ("Proxy.LAN.", {"proxy.lan"}), ("[::1],*", {"::1", "*"})],
)
def test_parse_hosts(text, hosts):
    assert parse_hosts(text) == hosts


@pytest.mark.parametrize("text", ["proxy.lan:1234", "http://proxy.lan", "a b"])
def test_parse_hosts_refuses_ports_and_urls(text):
    with pytest.raises(ValueError, match="without ports"):
        parse_hosts(text)
