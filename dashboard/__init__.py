"""
The dashboard (`GET /`) and its JSON API, answered by the proxy itself and never forwarded.

A request is local only when its method and path (before `?`) are in the route
table, compared byte for byte with no normalisation, so `/v1/../api/logs`,
`//api/logs` or `/api%2Flogs` go upstream like any other path. A local request
is answered here whatever goes wrong (400 for bad parameters, 500 otherwise),
and only to a Host that cannot be a DNS-rebinding name. Reads run on the
dashboard's own small thread pool, with a time limit, so a slow search never
holds up the proxy or its upstream connections.
"""

import asyncio
import json
import logging
import math
import re
import time
from collections.abc import Awaitable
from collections.abc import Callable
from pathlib import Path
from typing import Any
from typing import NamedTuple
from urllib.parse import parse_qs

from mitmproxy import ctx
from mitmproxy import http
from prometheus_client import CONTENT_TYPE_LATEST

from dashboard.access import SESSION_MAX_AGE
from dashboard.access import LoginThrottle
from dashboard.access import host_allowed
from dashboard.access import same_secret
from dashboard.access import session_cookie
from dashboard.access import valid_session
from dashboard.queries import Busy
from dashboard.queries import QueryPool
from logstore import LogStore
from logstore import LogUnavailable
from logstore import ReadTimeout
from rerouter.flows import flow_state
from rerouter.flows import is_proxied
from rerouter.metrics import Metrics
from rerouter.redaction import redact_path
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
LOG_DETAIL = re.compile(r"/api/logs/([A-Za-z0-9-]{1,64})")
SESSION_COOKIE = "rerouter_session"
LOG_FILTERS = {"model": str, "service": str, "state": str, "q": str, "status": int, "limit": int, "offset": int}
WHOLE_NUMBER = re.compile(r"[0-9]{1,18}")
MAX_TEXT_PARAMETER = 1000
LOGIN_MAX_BYTES = 4096

Handler = Callable[..., Awaitable[http.Response]]


class BadParameter(ValueError):
    """A query parameter or form field the route cannot use: the client's mistake, answered 400."""


class Route(NamedTuple):
    handler: Handler
    args: tuple[str, ...] = ()
    public: bool = False
    """Answered without the token: the page (which holds no data) and the login form."""


def json_answer(body: Any, status: int = 200, **headers: str) -> http.Response:
    return http.Response.make(
        status, json.dumps(body), {"Content-Type": "application/json", **SECURITY_HEADERS, **headers}
    )


def html_answer(status: int, text: str, **headers: str) -> http.Response:
    page = f'<!doctype html><link rel="icon" href="data:,"><title>{text}</title><p>{text} <a href="/">Back</a></p>'
    return http.Response.make(status, page, {"Content-Type": "text/html; charset=utf-8", **SECURITY_HEADERS, **headers})


def log_filters(query: str) -> dict[str, Any]:
    """Query parameters of /api/logs as LogStore.logs keywords; BadParameter names the bad one."""
    filters: dict[str, Any] = {}
    for name, values in parse_qs(query).items():
        kind, value = LOG_FILTERS.get(name), values[-1]
        if kind is None or not value:
            continue
        if kind is int and not WHOLE_NUMBER.fullmatch(value):
            raise BadParameter(f"{name} must be a whole number below 10^18, got {value[:40]!r}")
        if len(value) > MAX_TEXT_PARAMETER:
            raise BadParameter(f"{name} is longer than {MAX_TEXT_PARAMETER} characters")
        filters[name] = kind(value)
    return filters


def bearer_token(authorization: str) -> str | None:
    scheme, _, offered = authorization.strip().partition(" ")
    return offered.strip() if scheme.lower() == "bearer" else None


def remove_credentials(request: http.Request, token: str) -> None:
    """The dashboard's cookie and token are the proxy's own: no upstream ever gets them."""
    if SESSION_COOKIE in request.headers.get("cookie", "") and SESSION_COOKIE in request.cookies:
        del request.cookies[SESSION_COOKIE]
        if not request.headers.get("cookie"):
            request.headers.pop("cookie", None)
    if token and "authorization" in request.headers:
        kept = [value for value in request.headers.get_all("authorization") if bearer_token(value) != token]
        request.headers.set_all("authorization", kept)


def retry_after(seconds: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


def client_address(flow: http.HTTPFlow) -> str:
    return str((flow.client_conn.peername or ("",))[0])


class Dashboard:
    """
    With DASHBOARD_TOKEN set, every JSON route needs the token (Bearer header or
    the login cookie); the page itself holds no data and shows the login form.
    Other routes join the table in `__init__` (exact paths) or `patterns`.
    """

    def __init__(self, settings: Settings, log: RequestLog, rules: Rules, metrics: Metrics) -> None:
        self.settings = settings
        self.log = log
        self.rules = rules
        self.metrics = metrics
        self.pages: dict[str, bytes] = {}
        self.queries = QueryPool()
        self.throttle = LoginThrottle()
        self.routes: dict[str, Handler] = {
            "/api/logs": self.logs,
            "/api/stats": self.stats,
            "/api/inflight": self.inflight,
            **{path: self.rules_route for path in RULES_ROUTES},
            "/metrics": self.metrics_route,
        }
        self.patterns: list[tuple[re.Pattern, Handler]] = [(LOG_DETAIL, self.log_detail)]

    def running(self) -> None:
        host = listen_host(self.settings)
        if not self.settings.enable_logging or self.settings.dashboard_token:
            return
        if not is_loopback(host):
            logger.warning(
                f"the dashboard and /api/logs answer anyone who can reach {host or 'all interfaces'} "
                f"and show them every prompt and answer; set DASHBOARD_TOKEN to require a token"
            )
        elif "*" in self.settings.dashboard_hosts:
            logger.warning(
                "DASHBOARD_HOSTS=* lets any web page you visit read the request log (DNS rebinding); "
                "set DASHBOARD_TOKEN to require a token"
            )

    def done(self) -> None:
        self.queries.close()

    def route(self, method: str, path: str) -> Route | None:
        """The local route for this request, or None when it goes upstream."""
        if method == "POST" and path == "/login" and self.settings.dashboard_token:
            return Route(self.login, public=True)
        if method != "GET":
            return None
        if path in STATIC:
            return Route(self.page, (path,), public=True)
        if path in self.routes:
            return Route(self.routes[path])
        for pattern, handler in self.patterns:
            if match := pattern.fullmatch(path):
                return Route(handler, match.groups())
        return None

    def answers(self, request: http.Request) -> bool:
        """Whether the proxy answers this request itself: then it must never be streamed upstream."""
        return self.log.store is not None and self.route(request.method, request.path.partition("?")[0]) is not None

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        # here, not in `request`: a body that streams goes upstream right after its headers
        if is_proxied(flow) and not self.answers(flow.request):
            remove_credentials(flow.request, self.settings.dashboard_token)

    async def request(self, flow: http.HTTPFlow) -> None:
        if not is_proxied(flow):
            return
        request = flow.request
        route = self.route(request.method, request.path.partition("?")[0]) if self.log.store is not None else None
        if route is None:
            return
        flow_state(flow).local = True
        flow.response = await self.answer(flow, route)
        show_as_local(flow)

    async def answer(self, flow: http.HTTPFlow, route: Route) -> http.Response:
        """The local answer, whatever goes wrong on the way: a local request never goes upstream."""
        try:
            refusal = self.refusal(flow, route)
            return refusal or await route.handler(flow, *route.args)
        except BadParameter as e:
            return json_answer({"error": str(e)}, 400)
        except Busy:
            return json_answer({"error": "the dashboard is busy with other queries; try again"}, 503, **retry_after(1))
        except ReadTimeout as e:
            return json_answer({"error": f"the query was {e}; narrow the filters"}, 503)
        except LogUnavailable as e:
            logger.warning(f"request log unreadable: {e}")
            return json_answer({"error": f"the request log cannot be read: {e}"}, 503)
        except Exception:
            logger.exception(f"dashboard error answering {redact_path(flow.request.path)}")
            return json_answer({"error": "internal error in the proxy's dashboard; see the proxy's log"}, 500)

    def refusal(self, flow: http.HTTPFlow, route: Route) -> http.Response | None:
        """Why this request may not use the route, as the answer to send; None when it may."""
        state = flow_state(flow)
        host = state.client_host if state.client_host is not None else flow.request.host_header or ""
        if not host_allowed(host, listen_host(self.settings), self.settings.dashboard_hosts):
            return json_answer(
                {"error": "the dashboard answers only to localhost, loopback addresses, LISTEN_HOST "
                 "and the names in DASHBOARD_HOSTS"},
                403,
            )
        token = self.settings.dashboard_token
        if route.public or not token:
            return None
        if valid_session(token, flow.request.cookies.get(SESSION_COOKIE, ""), time.time()):
            return None
        offered = bearer_token(flow.request.headers.get("authorization", ""))
        if offered is not None:
            if wait := self.throttle.wait(client_address(flow)):
                return json_answer({"error": "too many wrong tokens; wait"}, 429, **retry_after(wait))
            if same_secret(offered, token):
                self.throttle.succeeded(client_address(flow))
                return None
            self.throttle.failed(client_address(flow))
        return json_answer({"error": "this route needs the dashboard token (DASHBOARD_TOKEN)"}, 401)

    async def login(self, flow: http.HTTPFlow) -> http.Response:
        request, address = flow.request, client_address(flow)
        if request.headers.get("content-encoding") or len(request.raw_content or b"") > LOGIN_MAX_BYTES:
            raise BadParameter(f"the login form must be plain and under {LOGIN_MAX_BYTES} bytes")
        if wait := self.throttle.wait(address):
            return html_answer(429, "Too many wrong tokens. Wait a moment.", **retry_after(wait))
        token = self.settings.dashboard_token
        if same_secret(request.urlencoded_form.get("token", ""), token):
            self.throttle.succeeded(address)
            cookie = f"{SESSION_COOKIE}={session_cookie(token, time.time())}; Max-Age={SESSION_MAX_AGE}; HttpOnly; SameSite=Strict; Path=/"
            return http.Response.make(303, b"", {"Location": "/", "Set-Cookie": cookie, **SECURITY_HEADERS})
        self.throttle.failed(address)
        return html_answer(401, "Wrong token.")

    async def page(self, flow: http.HTTPFlow, path: str) -> http.Response:
        name, content_type = STATIC[path]
        if name not in self.pages:
            self.pages[name] = (PAGES / name).read_bytes()
        return http.Response.make(200, self.pages[name], {"Content-Type": content_type, **SECURITY_HEADERS})

    async def logs(self, flow: http.HTTPFlow) -> http.Response:
        filters = log_filters(flow.request.path.partition("?")[2])
        rows, total = await self.queries.run(self.store().logs, **filters)
        return json_answer({"logs": rows, "total": total})

    async def stats(self, flow: http.HTTPFlow) -> http.Response:
        stats = await self.queries.run(self.store().stats)
        return json_answer({**stats, "inflight": stats["inflight"] + len(self.log.inflight)})

    async def inflight(self, flow: http.HTTPFlow) -> http.Response:
        """This replica's requests in flight, then those of the replicas sharing its database."""
        store = self.store()
        elsewhere = await self.queries.run(store.inflight_elsewhere) if store.shared else []
        return json_answer({"inflight": self.log.inflight_rows() + elsewhere})

    async def rules_route(self, flow: http.HTTPFlow) -> http.Response:
        path, _, query = flow.request.path.partition("?")
        status, body = self.rules.answer(path, query)
        return json_answer(body, status)

    async def metrics_route(self, flow: http.HTTPFlow) -> http.Response:
        exposition = await self.queries.run(self.metrics.exposition)
        return http.Response.make(200, exposition, {"Content-Type": CONTENT_TYPE_LATEST, **SECURITY_HEADERS})

    async def log_detail(self, flow: http.HTTPFlow, id: str) -> http.Response:
        row = await self.queries.run(self.store().get, id)
        return json_answer(row) if row else json_answer({"error": "no such request"}, 404)

    def store(self) -> LogStore:
        """The open store; mitmproxy looks at every attribute of an addon, so this is not a property."""
        store = self.log.store
        if store is None:
            raise LogUnavailable("the request log is closed")
        return store

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
