"""
How tests/data/requests-v1.db was made: rows written by the previous release's logstore.py
(schema version 1), with the secrets that release did not mask yet.

    git show 4d93719:logstore.py > /tmp/logstore_v1.py
    python tests/data/make_requests_v1.py /tmp/logstore_v1.py tests/data/requests-v1.db
"""

import importlib.util
import json
import sys

T0 = 1763700000.0  # 2025-11-21T04:40:00Z


def main(module_path: str, db_path: str) -> None:
    spec = importlib.util.spec_from_file_location("logstore_v1", module_path)
    logstore_v1 = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(logstore_v1)
    store = logstore_v1.LogStore(db_path, max_body_bytes=4096, max_age_days=36500)
    store.open()
    events = [
        {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "llama3-70b",
         "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}]}
        for word in ["Hello", " from", " version", " one."]
    ]
    sse = "".join(f"data: {json.dumps(event)}\n\n" for event in events) + "data: [DONE]\n\n"
    common = {"method": "POST", "service": "openai", "upstream": "http://127.0.0.1:8000", "stream": False}
    rows = [
        {**common, "id": "v1-stream", "started_at": T0, "path": "/v1/chat/completions",
         "requested_model": "gpt-4", "routed_model": "llama3-70b",
         "request_headers": [("Content-Type", "application/json"), ("Authorization", "Bearer sk-v1-authorization-secret"),
                             ("x-goog-api-key", "v1-goog-header-secret")],
         "request_body": json.dumps({"model": "llama3-70b", "stream": True, "messages": [{"role": "user", "content": "Hi"}]}).encode()},
        {**common, "id": "v1-ollama", "started_at": T0 + 1, "path": "/api/chat", "service": "ollama",
         "upstream": "http://127.0.0.1:11434", "requested_model": "qwen3", "routed_model": "qwen3:8b",
         "request_headers": [("Content-Type", "application/json")],
         "request_body": b'{"model": "qwen3:8b", "messages": [{"role": "user", "content": "Hi"}], "stream": false}'},
        {**common, "id": "v1-error", "started_at": T0 + 2, "method": "GET", "path": "/v1/models?key=v1-query-secret&limit=5",
         "requested_model": None, "routed_model": None, "request_headers": [], "request_body": b""},
        {**common, "id": "v1-inflight", "started_at": T0 + 3, "path": "/v1/completions",
         "requested_model": "gpt-3.5-turbo-instruct", "routed_model": "qwen3:8b",
         "request_headers": [("Content-Type", "application/json")], "request_body": b'{"model": "qwen3:8b", "prompt": "Once"}'},
    ]
    for row in rows:
        store.begin({**row, "request_bytes": len(row["request_body"])})
    ollama = json.dumps({"model": "qwen3:8b", "message": {"role": "assistant", "content": "Hello from Ollama."}, "done": True})
    store.finish("v1-stream", state="completed", status=200, duration_ms=812.5, stream=True,
                 response_bytes=len(sse), response_body=sse.encode())
    store.finish("v1-ollama", state="completed", status=200, duration_ms=95.0,
                 response_bytes=len(ollama), response_body=ollama.encode())
    store.finish("v1-error", state="error", status=502, duration_ms=3.0, response_bytes=0, response_body=b"",
                 error="[Errno 111] Connect call failed")
    store.close()


if __name__ == "__main__":
    main(*sys.argv[1:])
