"""MODEL_MAP_FILE, per-rule parameters and the rules' JSON routes, through real rerouter processes."""

import json
import os
import threading
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor

import ollama
import openai
import pytest

from tests.proxy import WEB_PASSWORD
from tests.upstream import mock_headers

ANSWER = "Hello world, this is the answer."


def get(proxy, path: str, headers: dict | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(proxy.url + path, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def wait_for(check, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)
    return result


def targets(proxy) -> dict[str, str | None]:
    return {rule["key"]: rule["target"] for rule in get(proxy, "/api/rules")[1]["rules"]}


def openai_client(proxy, **mock) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="sk-test", default_headers=mock_headers(**mock), max_retries=0, timeout=30)


def sent_upstream(upstream, marker: str) -> dict:
    """The body the upstream received for the request whose last message was `marker`."""
    for record in reversed(upstream.requests):
        body = record["json"] or {}
        if marker in json.dumps(body.get("messages") or body.get("prompt")):
            return body
    raise AssertionError(f"{marker} never reached the upstream")


def ask(client: openai.OpenAI, marker: str, stream: bool) -> str:
    messages = [{"role": "user", "content": marker}]
    if not stream:
        return client.chat.completions.create(model="gpt-4", messages=messages).choices[0].message.content
    chunks = client.chat.completions.create(model="gpt-4", messages=messages, stream=True)
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def file_env(path) -> dict[str, str]:
    return {"MODEL_MAP": "{}", "MODEL_MAP_FILE": str(path)}


def test_live_edit_under_load(rerouter, tmp_path, openai_upstream):
    """No request fails across the reload, and every request sent after it uses the new rules."""
    rules = tmp_path / "rules.yaml"
    rules.write_text("gpt-4: llama3-70b\n")
    proxy = rerouter("python", file_env(rules))
    plain = openai_client(proxy)
    slow = openai_client(proxy, delay=0.05)  # streams of ~0.5 s, in flight while the file changes
    reloaded = threading.Event()
    reloaded_at: list[float] = []
    sent: list[tuple[str, float]] = []

    def one(i: int) -> str:
        marker = f"load-{uuid.uuid4().hex}"
        started = time.monotonic()
        answer = ask(slow if i % 5 == 0 else plain, marker, stream=i % 2 == 0)
        sent.append((marker, started))
        return answer

    def edit() -> None:
        wait_for(lambda: len(sent) >= 40, timeout=60)
        rules.write_text("gpt-4: qwen3:8b\n")  # in place, as most editors and `echo >` do
        wait_for(lambda: targets(proxy)["gpt-4"] == "qwen3:8b", timeout=10)
        reloaded_at.append(time.monotonic())
        reloaded.set()

    for client, stream in ((plain, False), (slow, True)):  # the openai client's first call is slow: not under the clock
        ask(client, "warm-up", stream)
    editor = threading.Thread(target=edit)
    editor.start()
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(one, range(150)))
        assert reloaded.wait(15)
        answers += list(pool.map(one, range(150, 200)))
    editor.join()

    assert answers == [ANSWER] * 200, "no request failed or was cut"
    routed = {marker: (sent_upstream(openai_upstream, marker)["model"], started) for marker, started in sent}
    after = [model for model, started in routed.values() if started > reloaded_at[0]]
    before = [model for model, started in routed.values() if started <= reloaded_at[0]]
    assert len(after) >= 50 and set(after) == {"qwen3:8b"}
    assert "llama3-70b" in before and set(before) <= {"llama3-70b", "qwen3:8b"}
    assert proxy.output.count("changed, 1 rule in force now") == 1


def test_broken_edit_and_deleted_file_keep_the_rules(rerouter, tmp_path, openai_upstream):
    rules = tmp_path / "rules.yaml"
    rules.write_text("gpt-4: llama3-70b\n")
    proxy = rerouter("mitmdump", file_env(rules))
    rules.write_text("gpt-4: [qwen3:8b\n")
    error = wait_for(lambda: get(proxy, "/api/rules")[1]["error"])
    assert error.startswith(f"MODEL_MAP_FILE {rules}: invalid YAML: ") and "(line 2, column 1)" in error
    assert ask(openai_client(proxy), marker := "after-broken-edit", stream=False) == ANSWER
    assert sent_upstream(openai_upstream, marker)["model"] == "llama3-70b"
    assert sum("invalid YAML" in line for line in proxy.lines) == 1, "one log line for the broken edit"

    rules.unlink()
    wait_for(lambda: "no such file" in (get(proxy, "/api/rules")[1]["error"] or ""))
    assert ask(openai_client(proxy), marker := "after-delete", stream=True) == ANSWER
    assert sent_upstream(openai_upstream, marker)["model"] == "llama3-70b"
    assert sum("no such file" in line for line in proxy.lines) == 1

    rules.write_text('{"gpt-4": "qwen3:8b"}')  # JSON is YAML too
    wait_for(lambda: get(proxy, "/api/rules")[1]["error"] is None)
    assert targets(proxy) == {"gpt-4": "qwen3:8b"}


def test_rename_replace_and_config_map_swap(rerouter, tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text("gpt-4: one\n")
    proxy = rerouter("python", file_env(rules))
    replacement = tmp_path / ".rules.yaml.swp"
    replacement.write_text("gpt-4: two\n")
    os.replace(replacement, rules)  # how vim, VS Code and sed -i save
    wait_for(lambda: targets(proxy) == {"gpt-4": "two"})

    # a Kubernetes config map: rules.yaml -> ..data/rules.yaml, ..data -> ..v1, swapped to ..v2 atomically
    mount = tmp_path / "configmap"
    for version, target in (("..v1", "three"), ("..v2", "four")):
        (mount / version).mkdir(parents=True)
        (mount / version / "rules.yaml").write_text(f"gpt-4: {target}\n")
    (mount / "..data").symlink_to("..v1")
    (mount / "rules.yaml").symlink_to("..data/rules.yaml")
    proxy = rerouter("python", file_env(mount / "rules.yaml"))
    assert targets(proxy) == {"gpt-4": "three"}
    (mount / "..data_tmp").symlink_to("..v2")
    os.replace(mount / "..data_tmp", mount / "..data")
    wait_for(lambda: targets(proxy) == {"gpt-4": "four"})


PARAMS_RULES = {
    "gpt-4": {
        "model": "llama3-70b",
        "set": {"temperature": 0.2, "chat_template_kwargs": {"enable_thinking": False}},
        "drop": ["logprobs", "top_logprobs"],
    },
    "/^nothink-(.*)$/": {"model": "qwen3:\\1", "set": {"think": False, "options": {"num_ctx": 8192}}, "drop": ["keep_alive"]},
    "fixed-prompt": {"model": "llama3-70b", "set": {"prompt": "always this"}},
}


@pytest.fixture(scope="module")
def params_proxy(module_rerouter, tmp_path_factory):
    path = tmp_path_factory.mktemp("rules") / "rules.json"
    path.write_text(json.dumps(PARAMS_RULES))
    return module_rerouter("mitmweb", {**file_env(path), "DISABLE_THINKING": "true"})


@pytest.mark.parametrize("stream", [False, True])
def test_per_rule_params_openai_client(params_proxy, openai_upstream, stream):
    marker = f"params-{uuid.uuid4().hex}"
    client = openai_client(params_proxy)
    reply = client.chat.completions.create(
        model="gpt-4", messages=[{"role": "user", "content": marker}], temperature=1.5, logprobs=True, top_logprobs=2, stream=stream
    )
    text = "".join(c.choices[0].delta.content or "" for c in reply if c.choices) if stream else reply.choices[0].message.content
    assert text == ANSWER
    body = sent_upstream(openai_upstream, marker)
    assert body["model"] == "llama3-70b"
    assert body["temperature"] == 0.2
    assert body["chat_template_kwargs"] == {"enable_thinking": False}
    assert "logprobs" not in body and "top_logprobs" not in body
    assert body["messages"][-1]["content"] == f"{marker} /no_think"


def test_per_rule_params_ollama_client(params_proxy, ollama_upstream):
    client = ollama.Client(host=params_proxy.url, timeout=30)
    marker = f"params-{uuid.uuid4().hex}"
    parts = list(client.chat(model="nothink-8b", messages=[{"role": "user", "content": marker}], options={"temperature": 0.5}, keep_alive="5m", stream=True))
    assert "".join(p.message.content for p in parts) == ANSWER
    body = sent_upstream(ollama_upstream, marker)
    assert body["model"] == "qwen3:8b"
    assert body["think"] is False
    assert body["options"] == {"temperature": 0.5, "num_ctx": 8192}, "set is merged into the client's options"
    assert "keep_alive" not in body

    reply = client.generate(model="fixed-prompt", prompt="whatever the app asks", stream=False)
    assert reply.response == ANSWER
    assert ollama_upstream.requests[-1]["json"]["prompt"] == "always this /no_think", "the rule first, then DISABLE_THINKING"


def test_mitmweb_comment_says_what_was_set_and_dropped(params_proxy):
    openai_client(params_proxy).chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}], logprobs=True)
    expected = (
        "model: gpt-4 -> llama3-70b; set temperature=0.2, chat_template_kwargs={\"enable_thinking\":false}; "
        "dropped logprobs; thinking off: no_think; thinking stripped; reasoned although thinking was off"
    )

    def comments() -> list[str]:
        request = urllib.request.Request(f"{params_proxy.web_url}flows", headers={"Authorization": f"Bearer {WEB_PASSWORD}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return [flow.get("comment", "") for flow in json.load(response)]

    wait_for(lambda: expected in comments())


def test_routes_and_unmatched_names_survive_a_restart(rerouter, tmp_path):
    db = str(tmp_path / "shared.db")
    proxy = rerouter("python", {"DB_PATH": db})
    client = openai_client(proxy)
    ask(client, "matched", stream=False)
    for model in ("mystery", "mystery", "ghost"):
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.NotFoundError):
        openai_client(proxy, status=404).chat.completions.create(model="ghost", messages=[{"role": "user", "content": "hi"}])
    ollama.Client(host=proxy.url).generate(model="llama-only", prompt="hi", stream=False)

    status, described = get(proxy, "/api/rules")
    assert status == 200 and described["source"] == "env" and described["path"] is None and described["error"] is None
    assert {rule["key"]: rule["hits"] for rule in described["rules"]} == {"gpt-4": 1, "gpt-3.5-turbo": 0, "/^claude-(.*)$/": 0}
    status, verdict = get(proxy, "/api/explain?model=claude-3-haiku")
    assert status == 200 and verdict["routed"] == "llama3-3-haiku" and verdict["rule"] == {"key": "/^claude-(.*)$/", "kind": "pattern", "index": 2}
    assert get(proxy, "/api/explain")[0] == 400
    expected = [("llama-only", 1, 0), ("ghost", 2, 1), ("mystery", 2, 0)]
    unmatched = get(proxy, "/api/unmatched")[1]["unmatched"]
    assert [(e["model"], e["count"], e["rejected"]) for e in unmatched] == expected
    assert described["loaded_at"].endswith("Z") and unmatched[0]["last_seen"] >= described["loaded_at"]

    wait_for(lambda: get(proxy, "/api/stats")[1]["total"] == 6 and not get(proxy, "/api/inflight")[1]["inflight"])
    proxy.stop()
    again = rerouter("python", {"DB_PATH": db, "MODEL_MAP": json.dumps({"ghost": "llama3-70b"})})
    restored = wait_for(lambda: get(again, "/api/unmatched")[1]["unmatched"])  # read from the log after the start
    assert [(e["model"], e["count"], e["rejected"]) for e in restored] == [("llama-only", 1, 0), ("mystery", 2, 0)], "ghost has a rule now"


def test_rules_routes_need_the_token(rerouter):
    token = "a-long-enough-dashboard-token"
    proxy = rerouter("python", {"DASHBOARD_TOKEN": token})
    for path in ("/api/rules", "/api/explain?model=x", "/api/unmatched"):
        assert get(proxy, path)[0] == 401
        assert get(proxy, path, {"Authorization": f"Bearer {token}"})[0] == 200


@pytest.mark.parametrize("form", ["python", "mitmdump"])
def test_startup_errors(rerouter, tmp_path, form):
    rules = tmp_path / "rules.yaml"
    rules.write_text("gpt-4: x\n")
    both = rerouter(form, {"MODEL_MAP": '{"a": "b"}', "MODEL_MAP_FILE": str(rules)}, ready=False)
    missing = rerouter(form, file_env(tmp_path / "nope.yaml"), ready=False)
    assert both.wait_exit() != 0 and missing.wait_exit() != 0
    [line] = [line for line in both.lines if "MODEL_MAP_FILE" in line]
    assert line.endswith("MODEL_MAP and MODEL_MAP_FILE are both set: keep the rules in one of them")
    [line] = [line for line in missing.lines if "MODEL_MAP_FILE" in line]
    assert line.endswith(f"MODEL_MAP_FILE (option model_map_file): {tmp_path / 'nope.yaml'}: no such file")
    assert "Traceback" not in both.output + missing.output
