"""
The project's mock upstream (tests/upstream.py) with one extra knob the benchmark needs.

A 50 MB stream cannot be described with the mock's own knobs: the answer travels in an
`x-mock-text` header (a few KB at most), so the big response would need millions of tiny events.
Here a request body field `"mock_repeat": N` repeats the answer's token list N times, so a 2 KB
token repeated 25,000 times makes a 50 MB SSE stream of realistic 2 KB events.

It is a launcher, not a fork: the routes and everything else are tests/upstream.py's own, wrapped
when `main()` runs (never at import). Run as `python -m bench.mock_upstream --port 0`; it prints
`listening on URL` like the original. If tests/upstream.py gains an `x-mock-repeat` header knob,
this file can go.
"""

from __future__ import annotations

from collections.abc import Callable

REPEAT_FIELD = "mock_repeat"
MAX_REPEAT = 1_000_000


def with_repeat(builder: Callable, answer_type: type) -> Callable:
    """Wraps an answer builder so the body field `mock_repeat` multiplies the token list."""

    def build(call):  # call: tests.upstream.Call
        repeat = call.body.get(REPEAT_FIELD, 1)
        if not isinstance(repeat, int) or not 1 <= repeat <= MAX_REPEAT:
            raise ValueError(f"{REPEAT_FIELD} must be an integer from 1 to {MAX_REPEAT}")
        if repeat > 1:
            call.answer = answer_type(call.answer.pieces * repeat)
        return builder(call)

    return build


def main() -> None:
    from tests import upstream

    for key in (("POST", "/v1/chat/completions"), ("POST", "/api/chat")):
        upstream.ROUTES[key] = with_repeat(upstream.ROUTES[key], upstream.Answer)
    upstream.main()


if __name__ == "__main__":
    main()
