"""
The dashboard in a real headless browser (Playwright driving Debian's chromium) against a real rerouter.

Every test opens its own page and waits for what a person would wait for (a given row, a given
text), never for a row count that the page's previous state could satisfy as well. Playwright's
`expect` polls from its own isolated world; the page's CSP forbids the eval behind wait_for_function.
"""

import json
import os
import re
import shutil
import urllib.request
import uuid

import openai
import pytest
from playwright import sync_api
from playwright.sync_api import expect

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
XSS_PROMPT = '<script>window.__xss = 1</script><img src=x onerror="window.__xss = 2">'
XSS_MODEL = "<img src=x onerror=window.__xss=3>"
ROWS = "#log-table tbody tr[data-id]"

if not os.path.exists(CHROMIUM):
    if os.environ.get("REQUIRE_BROWSER"):
        raise RuntimeError(f"REQUIRE_BROWSER is set but there is no chromium at {CHROMIUM}")
    pytest.skip("Debian's chromium is not installed (apt-get install chromium)", allow_module_level=True)


def chat(proxy, content: str, model: str = "gpt-4") -> None:
    client = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="sk-browser-test", max_retries=0)
    client.chat.completions.create(model=model, messages=[{"role": "user", "content": content}])


@pytest.fixture(scope="module")
def proxy(module_rerouter):
    proxy = module_rerouter("python")
    chat(proxy, "first question")
    chat(proxy, XSS_PROMPT, model=XSS_MODEL)
    chat(proxy, "for the other model", model="gpt-3.5-turbo")
    return proxy


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"],
        )
        yield browser
        browser.close()


def open_page(browser, url: str):
    """A page that records script errors, CSP violations and alert() calls in `page.problems`."""
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.problems = []
    page.on("pageerror", lambda error: page.problems.append(str(error)))
    page.on("console", lambda m: m.type == "error" and "Failed to load resource" not in m.text and page.problems.append(m.text))
    page.on("dialog", lambda dialog: (page.problems.append(f"dialog: {dialog.message}"), dialog.dismiss()))
    page.goto(url)
    return page


@pytest.fixture
def page(browser, proxy):
    page = open_page(browser, proxy.url + "/")
    yield page
    assert not page.problems
    page.close()


def row(page, text: str):
    return page.locator(ROWS, has_text=text)


def test_rows_render(page):
    expect(row(page, "gpt-3.5-turbo → qwen3:8b")).to_have_count(1)
    expect(row(page, "gpt-4 → llama3-70b")).to_have_count(1)
    expect(page.locator("#stats-total")).to_have_text("3")
    expect(page.locator("#by-model")).to_contain_text("llama3-70b")


def test_filter_narrows_the_table(page):
    expect(row(page, "llama3-70b").first).to_be_visible()
    page.fill("#filter-model", "qwen3:8b")
    expect(page.locator(ROWS)).to_have_count(1)
    expect(page.locator(ROWS)).to_contain_text("qwen3:8b")
    expect(page.locator("#page-info")).to_have_text(re.compile(r"^1–1 of 1$"))
    assert "model=qwen3%3A8b" in page.url
    page.click("#filter-clear")
    expect(row(page, "llama3-70b").first).to_be_visible()
    assert "model=" not in page.url


def test_filters_are_read_from_the_address(browser, proxy):
    page = open_page(browser, proxy.url + "/?service=openai&model=gpt-3.5-turbo")
    expect(page.locator(ROWS)).to_have_count(1)
    expect(page.locator(ROWS)).to_contain_text("qwen3:8b")
    expect(page.locator("#filter-model")).to_have_value("gpt-3.5-turbo")
    expect(page.locator("#filter-service")).to_have_value("openai")
    page.close()


def test_new_request_appears_without_reload(page, proxy):
    expect(row(page, "llama3-70b").first).to_be_visible()
    model = f"claude-{uuid.uuid4().hex[:8]}"
    chat(proxy, "live", model=model)
    expect(row(page, model)).to_have_count(1)
    expect(row(page, model)).to_contain_text(f"llama3-{model.removeprefix('claude-')}")


def test_markup_is_shown_as_text_and_runs_nothing(browser, proxy):
    page = open_page(browser, proxy.url + "/?q=window.__xss")
    expect(row(page, XSS_MODEL)).to_have_count(1)
    row(page, XSS_MODEL).locator("a").click()
    expect(page.locator("#detail-request-body")).to_contain_text("__xss")
    assert XSS_PROMPT.replace('"', '\\"') in page.text_content("#detail-request-body")
    expect(page.locator("#detail-fields")).to_contain_text(XSS_MODEL)
    assert page.evaluate("window.__xss") is None
    assert page.evaluate("document.querySelectorAll('img[src=x], #detail script, #log-table script').length") == 0
    page.click("#detail-close")
    expect(page.locator("#detail")).to_be_hidden()
    assert not page.problems
    page.close()


def test_a_row_links_to_its_detail_with_requested_and_routed_model(page, proxy):
    link = row(page, "gpt-3.5-turbo").locator("a")
    href = link.get_attribute("href")
    assert href.startswith("#log=")
    link.click()
    expect(page.locator("#detail")).to_be_visible()
    fields = page.locator("#detail-fields")
    expect(fields).to_contain_text("Requested modelgpt-3.5-turbo")
    expect(fields).to_contain_text("Routed modelqwen3:8b")
    expect(page.locator("#detail-response-body")).to_contain_text("chat.completion")
    expect(page.locator("#detail-headers")).to_contain_text("[redacted]")
    assert page.url.endswith(href)
    page.keyboard.press("Escape")
    expect(page.locator("#detail")).to_be_hidden()
    expect(page).to_have_url(proxy.url + "/")
    page.goto(proxy.url + "/" + href)
    expect(page.locator("#detail-fields")).to_contain_text("Routed modelqwen3:8b")


def test_ttft_and_tokens_per_second_columns(page):
    expect(page.locator("#log-table thead")).to_contain_text("TTFT")
    expect(page.locator("#log-table thead")).to_contain_text("Tokens/s")
    first = row(page, "gpt-3.5-turbo")
    expect(first.locator("td")).to_have_count(page.locator("#log-table thead th").count())


def test_chart_draws_a_point_per_request(page):
    expect(page.locator("#chart svg circle").first).to_be_visible()
    expect(page.locator("#chart-legend")).to_contain_text("qwen3:8b")
    assert page.locator("#chart svg circle").count() >= 3


# The backend does not send these fields yet: a row that has them all is added to the real answers.
NOW = "2030-01-01T12:00:00.000Z"
NEW_ROW = {
    "id": "new-fields-1", "started_at": NOW, "method": "POST", "path": "/v1/chat/completions",
    "service": "openai", "upstream": "http://127.0.0.1:9", "stream": True, "requested_model": "gpt-4o",
    "routed_model": "qwq:32b", "status": 200, "state": "completed", "duration_ms": 812.5,
    "request_bytes": 120, "response_bytes": 2048, "error": None, "first_token_ms": 123.4,
    "tokens_per_s": 42.5, "reasoning_chars": 1234, "reasoned_anyway": True, "lone_think_close": True,
}
NEW_DETAIL = {
    **NEW_ROW, "request_headers": [["content-type", "application/json"]], "request_body": '{"model": "gpt-4o"}',
    "response_body": 'data: {"choices": []}\n\ndata: [DONE]\n\n', "response_text": "The <b>assembled</b> answer",
    "upstream_ms": 800.1, "upstream_first_token_ms": 110.2, "prompt_tokens": 12, "completion_tokens": 34,
    "response_model": "qwq:32b-q4", "instance": "gpu-1", "note": "retried once",
}


def add_new_fields(page) -> None:
    def logs(route):
        response = route.fetch()
        body = response.json()
        body["logs"].insert(0, NEW_ROW)
        route.fulfill(response=response, json=body)

    def stats(route):
        response = route.fetch()
        route.fulfill(response=response, json={**response.json(), "by_requested_model": {"gpt-4o": 1, "gpt-4": 2}})

    page.route(re.compile(r"/api/logs\?"), logs)
    page.route(re.compile(r"/api/logs/new-fields-1$"), lambda route: route.fulfill(json=NEW_DETAIL))
    page.route(re.compile(r"/api/stats$"), stats)


def test_what_the_proxy_did_is_shown(page):
    add_new_fields(page)
    new = row(page, "qwq:32b")
    expect(new).to_contain_text("reasoning: 1,234 chars")
    expect(new).to_contain_text("reasoned although thinking was off")
    expect(new).to_contain_text("model qwq:32b starts inside a think block: add it to THINK_OPEN_MODELS")
    expect(new).to_contain_text("123 ms")
    expect(new).to_contain_text("42.5")
    new.locator("a").click()
    expect(page.locator("#detail-answer")).to_have_text("The <b>assembled</b> answer")
    expect(page.locator("#detail-response-body")).to_contain_text("data: [DONE]")
    fields = page.locator("#detail-fields")
    for text in ("Requested modelgpt-4o", "Routed modelqwq:32b", "Response modelqwq:32b-q4", "Instancegpu-1",
                 "Noteretried once", "Upstream time800 ms", "Time to first token123 ms", "Completion tokens34"):
        expect(fields).to_contain_text(text)
    page.keyboard.press("Escape")
    page.select_option("#model-names", "by_requested_model")
    expect(page.locator("#by-model")).to_contain_text("gpt-4o")


def test_model_card_switches_to_requested_names_where_the_proxy_counts_them(page, proxy):
    expect(page.locator("#by-model")).to_contain_text("llama3-70b")
    with urllib.request.urlopen(proxy.url + "/api/stats", timeout=10) as response:
        counted = "by_requested_model" in json.load(response)
    if not counted:
        expect(page.locator("#model-names option[value=by_requested_model]")).to_be_disabled()
        return
    page.select_option("#model-names", "by_requested_model")
    expect(page.locator("#by-model")).to_contain_text("gpt-3.5-turbo")


RULES = {
    "source": "file", "path": "/etc/rerouter/rules.json", "loaded_at": NOW, "error": None,
    "rules": [{"key": "/^gpt-4/", "kind": "pattern", "target": "llama3-70b", "set": {"temperature": 0.2},
               "drop": ["logit_bias"], "hits": 7}],
}
EXPLAINED = {"model": "gpt-4o", "routed": "llama3-70b", "rule": {"key": "/^gpt-4/", "kind": "pattern", "index": 0},
             "groups": [], "set": {"temperature": 0.2}, "drop": ["logit_bias"], "shadowed": ["/gpt/"]}
UNMATCHED = {"unmatched": [{"model": 'odd"name', "count": 3, "last_seen": NOW, "rejected": True}]}


def test_rules_panel_shows_what_the_api_answers(page):
    answers = {"/api/rules": RULES, "/api/explain": EXPLAINED, "/api/unmatched": UNMATCHED}
    page.route(re.compile(r"/api/(rules|explain|unmatched)"),
               lambda route: route.fulfill(json=answers[re.search(r"/api/\w+", route.request.url).group()]))
    page.click("#rules summary")
    expect(page.locator("#rules-table")).to_contain_text("llama3-70b")
    expect(page.locator("#rules-table")).to_contain_text('temperature=0.2')
    expect(page.locator("#rules-list")).to_contain_text("/etc/rerouter/rules.json")
    page.fill("#explain-model", "gpt-4o")
    page.click("#explain button")
    expect(page.locator("#explain-result")).to_contain_text('"gpt-4o" → "llama3-70b" by the pattern rule /^gpt-4/')
    expect(page.locator("#explain-result")).to_contain_text("/gpt/")
    expect(page.locator("#unmatched code")).to_have_text('"odd\\"name": "your-model"')
    page.click("#unmatched button")
    expect(page.locator("#unmatched button")).to_have_text(re.compile("Copied|Selected"))


def test_rules_panel_is_quiet_where_the_routes_are_missing(page):
    page.route(re.compile(r"/api/(rules|explain|unmatched)"), lambda route: route.fulfill(status=404, json={"error": "no"}))
    page.click("#rules summary")
    expect(page.locator("#rules-list")).to_have_text("Not available on this proxy.")
    expect(page.locator("#unmatched-list")).to_have_text("Not available on this proxy.")


def test_rules_panel_against_the_real_proxy(page, proxy):
    chat(proxy, "no rule for me", model="unmapped-model")
    page.click("#rules summary")
    expect(page.locator("#rules-table")).to_contain_text("llama3-70b")
    page.fill("#explain-model", "gpt-4")
    page.click("#explain button")
    expect(page.locator("#explain-result")).to_contain_text("llama3-70b")
    expect(page.locator("#unmatched")).to_contain_text('"unmapped-model": "your-model"')


def test_login_with_the_dashboard_token(browser, rerouter):
    token = "tok-" + uuid.uuid4().hex
    proxy = rerouter("python", {"DASHBOARD_TOKEN": token})
    chat(proxy, "behind a token")
    page = open_page(browser, proxy.url + "/")
    expect(page.locator("#auth")).to_be_visible()
    assert page.locator(ROWS).count() == 0
    page.fill("#auth-token", "wrong")
    page.press("#auth-token", "Enter")
    expect(page.locator("body")).to_contain_text("Wrong token")
    page.goto(proxy.url + "/")
    page.fill("#auth-token", token)
    page.press("#auth-token", "Enter")
    expect(row(page, "llama3-70b")).to_have_count(1)
    assert "behind a token" not in page.inner_text(ROWS)
    assert not page.problems
    page.close()
