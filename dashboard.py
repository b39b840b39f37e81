"""
The dashboard (`GET /`) and its JSON API, answered by the proxy itself and never forwarded.

Only exact paths are local; everything else goes upstream. SQLite reads run in
a worker thread so a slow query never holds up the proxy's event loop.
"""

import asyncio
import json
import logging
import sqlite3
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from mitmproxy import ctx
from mitmproxy import http

from requestlog import RequestLog
from routing import is_proxied

logger = logging.getLogger(__name__)

PAGES = Path(__file__).resolve().parent / "dashboard"
STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/dashboard/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/dashboard/style.css": ("style.css", "text/css; charset=utf-8"),
}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
LOG_FILTERS = {"model": str, "service": str, "state": str, "q": str, "status": int, "limit": int, "offset": int}


def json_answer(body: Any, status: int = 200) -> http.Response:
    return http.Response.make(status, json.dumps(body), {"Content-Type": "application/json", **SECURITY_HEADERS})


def log_filters(query: str) -> dict[str, Any]:
    """Query parameters of /api/logs as LogStore.logs keywords; ValueError names the bad one."""
    filters: dict[str, Any] = {}
    for name, values in parse_qs(query).items():
        kind = LOG_FILTERS.get(name)
        if kind is None or not values[-1]:
            continue
        try:
            filters[name] = kind(values[-1])
        except ValueError:
            raise ValueError(f"{name} must be a whole number, got {values[-1]!r}") from None
    return filters


class Dashboard:
    def __init__(self, log: RequestLog) -> None:
        self.log = log
        self.pages: dict[str, bytes] = {}

    async def request(self, flow: http.HTTPFlow) -> None:
        if self.log.store is None or flow.request.method != "GET" or not is_proxied(flow):
            return
        path, _, query = flow.request.path.partition("?")
        try:
            response = await self._answer(path, query)
        except sqlite3.Error as e:
            logger.warning(f"request log unreadable: {e}")
            response = json_answer({"error": f"the request log cannot be read: {e}"}, 503)
        if response is not None:
            flow.metadata["rerouter_local"] = True
            flow.response = response

    async def _answer(self, path: str, query: str) -> http.Response | None:
        store = self.log.store
        assert store is not None
        if path in STATIC:
            return self._page(path)
        if path == "/api/logs":
            try:
                filters = log_filters(query)
            except ValueError as e:
                return json_answer({"error": str(e)}, 400)
            rows, total = await asyncio.to_thread(store.logs, **filters)
            return json_answer({"logs": rows, "total": total})
        if path.startswith("/api/logs/") and path.count("/") == 3:
            row = await asyncio.to_thread(store.get, path.rsplit("/", 1)[1])
            return json_answer(row) if row else json_answer({"error": "no such request"}, 404)
        if path == "/api/stats":
            stats = await asyncio.to_thread(store.stats)
            return json_answer({**stats, "inflight": len(self.log.inflight)})
        if path == "/api/inflight":
            return json_answer({"inflight": self.log.inflight_rows()})
        return None

    def _page(self, path: str) -> http.Response:
        name, content_type = STATIC[path]
        if name not in self.pages:
            self.pages[name] = (PAGES / name).read_bytes()
        return http.Response.make(200, self.pages[name], {"Content-Type": content_type, **SECURITY_HEADERS})

    def response(self, flow: http.HTTPFlow) -> None:
        """mitmweb keeps every flow: the dashboard's own polling would fill its list and memory."""
        view = ctx.master.addons.get("view")
        if view is not None and flow.metadata.get("rerouter_local"):
            asyncio.get_running_loop().call_soon(forget, view, flow)


def forget(view, flow: http.HTTPFlow) -> None:
    if flow.live:
        asyncio.get_running_loop().call_later(0.5, forget, view, flow)
    else:
        view.remove([flow])
