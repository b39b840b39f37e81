"""The dashboard in a real headless browser (Playwright driving Debian's chromium) against a real rerouter."""

import os
import shutil
import time
import uuid

import openai
import pytest
from playwright import sync_api

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
XSS_PROMPT = '<script>window.__xss = 1</script><img src=x onerror="window.__xss = 2">'
XSS_MODEL = "<img src=x onerror=window.__xss=3>"

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
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.problems = []
    page.on("pageerror", lambda error: page.problems.append(str(error)))
    page.on("dialog", lambda dialog: (page.problems.append(f"dialog: {dialog.message}"), dialog.dismiss()))
    page.goto(url)
    return page


@pytest.fixture(scope="module")
def page(browser, proxy):
    page = open_page(browser, proxy.url + "/")
    yield page
    page.close()


ROWS = "#log-table tbody tr[data-id]"


def wait_rows(page, check, timeout: float = 10.0) -> int:
    """Poll the table's row count (the page's CSP forbids the eval behind wait_for_function)."""
    deadline = time.monotonic() + timeout
    while not check(count := page.locator(ROWS).count()):
        assert time.monotonic() < deadline, f"the table still has {count} rows"
        page.wait_for_timeout(100)
    return count


def test_rows_render(page):
    wait_rows(page, lambda n: n >= 3)
    assert "llama3-70b" in page.inner_text("#log-table")
    assert page.inner_text("#stats-total").strip() == "3"


def test_filter_narrows_the_table(page):
    page.fill("#filter-model", "qwen3:8b")
    wait_rows(page, lambda n: n == 1)
    assert "qwen3:8b" in page.inner_text(ROWS)
    assert "1" in page.inner_text("#page-info")
    page.click("#filter-clear")
    wait_rows(page, lambda n: n >= 3)


def test_new_request_appears_without_reload(page, proxy):
    marker = uuid.uuid4().hex
    before = wait_rows(page, lambda n: n >= 3)
    chat(proxy, f"live {marker}")
    wait_rows(page, lambda n: n == before + 1)
    page.fill("#filter-q", marker)
    wait_rows(page, lambda n: n == 1)
    page.click("#filter-clear")


def test_markup_is_shown_as_text_and_runs_nothing(page):
    page.fill("#filter-q", "window.__xss")
    wait_rows(page, lambda n: n == 1)
    assert XSS_MODEL in page.inner_text(ROWS)
    page.click(ROWS)
    sync_api.expect(page.locator("#detail-request-body")).to_contain_text("__xss")
    assert XSS_PROMPT.replace('"', '\\"') in page.text_content("#detail-request-body")
    assert page.evaluate("window.__xss") is None
    assert page.evaluate("document.querySelectorAll('img[src=x], #detail script, #log-table script').length") == 0
    assert not page.problems
    page.click("#detail-close")


def test_login_with_the_dashboard_token(browser, rerouter):
    token = "tok-" + uuid.uuid4().hex
    proxy = rerouter("python", {"DASHBOARD_TOKEN": token})
    chat(proxy, "behind a token")
    page = open_page(browser, proxy.url + "/")
    sync_api.expect(page.locator("#auth")).to_be_visible()
    assert page.locator(ROWS).count() == 0
    page.fill("#auth-token", "wrong")
    page.press("#auth-token", "Enter")
    sync_api.expect(page.locator("body")).to_contain_text("Wrong token")
    page.goto(proxy.url + "/")
    page.fill("#auth-token", token)
    page.press("#auth-token", "Enter")
    wait_rows(page, lambda n: n == 1)
    assert "behind a token" not in page.inner_text(ROWS) and "llama3-70b" in page.inner_text(ROWS)
    assert not page.problems
    page.close()
