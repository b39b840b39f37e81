"""
The dashboard (`GET /`) and its JSON API, answered by the proxy itself and never forwarded.

A request is local only when its path (before `?`) is exactly one of the
local paths, compared byte for byte with no normalisation, so `/v1/../api/logs`,
`//api/logs` or `/api%2Flogs` go upstream like any other path. Database reads run
in a worker thread so a slow query never holds up the proxy's event loop.
"""

import asyncio
import hmac
import json
import logging
import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from mitmproxy import ctx
from mitmproxy import http

from logstore import LogUnavailable
from rerouter.flows import is_proxied
from rerouter.flows import flow_state
from rerouter.requestlog import RequestLog
from rerouter.routing import is_loopback
from rerouter.routing import listen_host
from rerouter.rules import ROUTES as RULES_ROUTES
from rerouter.rules import Rules
from rerouter.settings import Settings

logger = logging.getLogger(__name__)

PAGES = Path(__file__).resolve().parent
STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/dashboard/style.css": ("style.css", "text/css; charset=utf-8"),
    **{
        f"/dashboard/{name}": (name, "text/javascript; charset=utf-8")
        for name in ("app.js", "api.js", "chart.js", "detail.js", "format.js", "rules.js", "table.js")
    },
}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
API = {"/api/logs", "/api/stats", "/api/inflight", *RULES_ROUTES}
LOG_DETAIL = re.compile(r"/api/logs/([A-Za-z0-9-]{1,64})")
SESSION_COOKIE = "rerouter_session"
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


def is_local(path: str) -> bool:
    return path in STATIC or path in API or LOG_DETAIL.fullmatch(path) is not None


def session(token: str) -> str:
    """The login cookie's value: derived from the token, so the token itself never sits in a browser."""
    return hmac.new(token.encode(), b"rerouter dashboard session", "sha256").hexdigest()


def login_answer(token: str, offered: str) -> http.Response:
    if offered and hmac.compare_digest(offered.encode(), token.encode()):
        cookie = f"{SESSION_COOKIE}={session(token)}; HttpOnly; SameSite=Strict; Path=/"
        return http.Response.make(303, b"", {"Location": "/", "Set-Cookie": cookie, **SECURITY_HEADERS})
    page = b'<!doctype html><link rel="icon" href="data:,"><title>Wrong token</title><p>Wrong token. <a href="/">Try again</a></p>'
    return http.Response.make(401, page, {"Content-Type": "text/html; charset=utf-8", **SECURITY_HEADERS})


class Dashboard:
    """
    With DASHBOARD_TOKEN set, every JSON route needs the token (Bearer header or
    the login cookie); the page itself holds no data and shows the login form.
    """

    def __init__(self, settings: Settings, log: RequestLog, rules: Rules) -> None:
        self.settings = settings
        self.log = log
        self.rules = rules
        self.pages: dict[str, bytes] = {}

    def running(self) -> None:
        host = listen_host(self.settings)
        if self.settings.enable_logging and not self.settings.dashboard_token and not is_loopback(host):
            logger.warning(
                f"the dashboard and /api/logs answer anyone who can reach {host or 'all interfaces'} "
                f"and show them every prompt and answer; set DASHBOARD_TOKEN to require a token"
            )

    def authorized(self, request: http.Request) -> bool:
        token = self.settings.dashboard_token
        if not token:
            return True
        scheme, _, offered = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(offered.encode(), token.encode()):
            return True
        cookie = request.cookies.get(SESSION_COOKIE, "")
        return hmac.compare_digest(cookie.encode(), session(token).encode())

    async def request(self, flow: http.HTTPFlow) -> None:
        if self.log.store is None or not is_proxied(flow):
            return
        method = flow.request.method
        path, _, query = flow.request.path.partition("?")
        token = self.settings.dashboard_token
        if token and method == "POST" and path == "/login":
            response = login_answer(token, flow.request.urlencoded_form.get("token", ""))
        elif method != "GET" or not is_local(path):
            return
        elif path not in STATIC and not self.authorized(flow.request):
            response = json_answer({"error": "this route needs the dashboard token (DASHBOARD_TOKEN)"}, 401)
        else:
            try:
                response = await self._answer(path, query)
            except LogUnavailable as e:
                logger.warning(f"request log unreadable: {e}")
                response = json_answer({"error": f"the request log cannot be read: {e}"}, 503)
        flow_state(flow).local = True
        show_as_local(flow)
        flow.response = response

    async def _answer(self, path: str, query: str) -> http.Response:
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
        if path == "/api/stats":
            stats = await asyncio.to_thread(store.stats)
            return json_answer({**stats, "inflight": stats["inflight"] + len(self.log.inflight)})
        if path == "/api/inflight":
            elsewhere = await asyncio.to_thread(store.inflight_elsewhere)
            return json_answer({"inflight": self.log.inflight_rows() + elsewhere})
        if path in RULES_ROUTES:
            status, body = self.rules.answer(path, query)
            return json_answer(body, status)
        row = await asyncio.to_thread(store.get, LOG_DETAIL.fullmatch(path).group(1))
        return json_answer(row) if row else json_answer({"error": "no such request"}, 404)

    def _page(self, path: str) -> http.Response:
        name, content_type = STATIC[path]
        if name not in self.pages:
            self.pages[name] = (PAGES / name).read_bytes()
        return http.Response.make(200, self.pages[name], {"Content-Type": content_type, **SECURITY_HEADERS})

    def response(self, flow: http.HTTPFlow) -> None:
        """mitmweb keeps every flow: the dashboard's own polling would fill its list and memory."""
        view = ctx.master.addons.get("view")
        if view is not None and flow_state(flow).local:
            asyncio.get_running_loop().call_soon(forget, view, flow)


def show_as_local(flow: http.HTTPFlow) -> None:
    """
    Point the flow's URL at the proxy itself: in reverse mode it names the upstream, and mitmdump's
    flow lines would make the dashboard's own polling read as requests to the upstream.
    """
    host, port = flow.client_conn.sockname[:2]
    flow.request.scheme, flow.request.host, flow.request.port = "http", host, port


def forget(view, flow: http.HTTPFlow) -> None:
    if flow.live:
        asyncio.get_running_loop().call_later(0.5, forget, view, flow)
    else:
        view.remove([flow])
