"""What real clients do at the end of a stream, through a real rerouter process."""

import http.client
import json
import uuid

import openai
import pytest

from tests.test_requestlog_e2e import row_for
from tests.upstream import mock_headers

# llama.cpp ends its chunked body a moment after `data: [DONE]`; the mock waits longer, so a
# client that hangs up at the last event always leaves before the body ends.
LINGER = 0.4


@pytest.fixture(scope="module")
def proxy(module_rerouter):
    return module_rerouter("python")


def read_then_hang_up(proxy, path: str, body: dict, until, delay: float = 0.0) -> list[bytes]:
    """Read the streamed answer line by line and close the connection as soon as `until(line)`."""
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    headers = {"Content-Type": "application/json", **mock_headers(linger=LINGER, delay=delay)}
    conn.request("POST", path, json.dumps(body), headers)
    response = conn.getresponse()
    lines = []
    while line := response.readline():
        lines.append(line)
        if until(line):
            break
    conn.sock.close()
    conn.close()
    return lines


def chat(stream_id: str) -> dict:
    return {"model": "gpt-4", "stream": True, "messages": [{"role": "user", "content": stream_id}]}


def test_sse_client_leaving_at_done_is_completed(proxy):
    path = f"/v1/chat/completions?sse-done={uuid.uuid4().hex}"
    lines = read_then_hang_up(proxy, path, chat("a"), lambda line: line.startswith(b"data: [DONE]"))
    assert lines[-1].startswith(b"data: [DONE]")
    row = row_for(proxy, path)
    assert (row["state"], row["status"], row["error"]) == ("completed", 200, None)


def test_sse_client_leaving_before_done_is_aborted(proxy):
    path = f"/v1/chat/completions?sse-early={uuid.uuid4().hex}"
    lines = read_then_hang_up(proxy, path, chat("b"), lambda line: b'"content"' in line, delay=0.2)
    assert not any(line.startswith(b"data: [DONE]") for line in lines)
    row = row_for(proxy, path)
    assert (row["state"], row["error"]) == ("aborted", "Client disconnected.")


def test_ndjson_client_leaving_at_done_is_completed(proxy):
    path = f"/api/chat?ndjson-done={uuid.uuid4().hex}"
    body = {"model": "llama3", "stream": True, "messages": [{"role": "user", "content": "c"}]}
    lines = read_then_hang_up(proxy, path, body, lambda line: json.loads(line).get("done") is True)
    assert json.loads(lines[-1])["done"] is True
    row = row_for(proxy, path)
    assert (row["state"], row["status"], row["error"]) == ("completed", 200, None)


def test_ndjson_client_leaving_before_done_is_aborted(proxy):
    path = f"/api/chat?ndjson-early={uuid.uuid4().hex}"
    body = {"model": "llama3", "stream": True, "messages": [{"role": "user", "content": "d"}]}
    read_then_hang_up(proxy, path, body, lambda line: not json.loads(line).get("done"), delay=0.2)
    row = row_for(proxy, path)
    assert (row["state"], row["error"]) == ("aborted", "Client disconnected.")


def test_openai_client_that_closes_at_done_is_completed(proxy):
    run = uuid.uuid4().hex
    client = openai.OpenAI(
        base_url=f"{proxy.url}/v1",
        api_key="sk-test",
        max_retries=0,
        default_headers=mock_headers(linger=LINGER),
        default_query={"run": run},
    )
    with client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "e"}], stream=True) as stream:
        text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text
    row = row_for(proxy, f"/v1/chat/completions?run={run}")
    assert (row["state"], row["error"]) == ("completed", None)


def test_console_shows_dashboard_requests_as_local(proxy, openai_upstream):
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    conn.request("GET", "/api/stats")
    assert conn.getresponse().status == 200
    proxy.wait_for_output(f"GET http://127.0.0.1:{proxy.port}/api/stats")
    upstream = openai_upstream.url.split("://", 1)[1]
    assert not [line for line in proxy.output.splitlines() if "/api/stats" in line and upstream in line]
