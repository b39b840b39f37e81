"""
Where requests go: reverse mode on LISTEN_HOST:LISTEN_PORT, Ollama-native paths to OLLAMA_UPSTREAM_URL.
"""

import ipaddress
import logging
from collections.abc import Callable
from typing import Any

from mitmproxy import connection
from mitmproxy import ctx
from mitmproxy import http
from mitmproxy.net.http import url
from mitmproxy.proxy import mode_specs
from mitmproxy.proxy import server_hooks
from mitmproxy.utils import human

from rerouter.flows import EDIT_LIMIT
from rerouter.flows import flow_state
from rerouter.flows import is_proxied
from rerouter.settings import Settings

logger = logging.getLogger(__name__)

OLLAMA_PREFIX = "/api/"
OUTSIDE_REVERSE_MODE = "it came to mitmproxy's regular proxy listener, before the switch to reverse mode"
TLS_SCHEMES = ("https", "tls", "http3", "quic", "dtls")


def is_ollama_path(path: str) -> bool:
    return path.startswith(OLLAMA_PREFIX)


def listen_host(settings: Settings) -> str:
    """Where the proxy listens: the user's --listen-host if given, else LISTEN_HOST."""
    return ctx.options.listen_host if ctx.options.has_changed("listen_host") else settings.listen_host


def listen_port(settings: Settings) -> int:
    """The port the proxy listens on: the user's --listen-port if given, else LISTEN_PORT."""
    return ctx.options.listen_port if ctx.options.has_changed("listen_port") else settings.listen_port


def reverse_mode(settings: Settings) -> str:
    return f"reverse:{settings.upstream_url.url}"


def reverse_defaults(settings: Settings, given: Callable[[str], bool]) -> dict[str, Any]:
    """
    The mitmproxy options the rerouter fills in unless the user gave them.

    One rule for both ways in: the launcher turns it into mitmdump arguments
    (`given` scans the user's argv), `ReverseProxy.running()` into an options
    update (`given` is mitmproxy's `has_changed`).
    """
    ours = {
        "mode": [reverse_mode(settings)],
        "listen_host": settings.listen_host,
        "listen_port": settings.listen_port,
        "connection_strategy": "lazy",
        "stream_large_bodies": str(EDIT_LIMIT),  # a JSON body past it streams on unedited: buffering.py
    }
    return {option: value for option, value in ours.items() if not given(option)}


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class ReverseProxy:
    """
    Turns a plain `mitmdump -s rerouter_addon.py` into the rerouter's reverse proxy.

    What the user did not give explicitly (`--mode`, `--listen-host`, `-p`,
    `connection_strategy`) is the rerouter's to fill in. It does so as soon as
    the script is configured, which on mitmproxy 11 is before any listener
    starts; mitmproxy 12 has already started its regular listener (`*:8080`)
    by then and moves listeners only when `mode` changes once it runs, so the
    switch is repeated in `running`. While the rerouter owns the mode, anything
    that arrives outside reverse mode is refused: connections are closed and
    requests killed before an upstream connection is made.

    The Host the client sent is kept for the dashboard's Host rule: mitmproxy
    would replace it with the upstream's before any hook sees it, so the
    rerouter sets `keep_host_header` (unless the user did) and replaces it itself.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.owned: set[str] = set()
        self.rewrites_host = False

    @property
    def owns_mode(self) -> bool:
        return "mode" in self.owned

    def load(self, loader) -> None:
        """Decided once, before the rerouter changes anything: afterwards mitmproxy counts its values as given too."""

        def given(option: str) -> bool:
            return option not in ctx.options or ctx.options.has_changed(option)

        self.owned = set(reverse_defaults(self.settings, given))
        self.rewrites_host = not given("keep_host_header")

    def configure(self, updated: set[str]) -> None:
        if "upstream_url" in updated:
            self._fill_in()

    def running(self) -> None:
        self._fill_in()
        if self.owns_mode:
            # the listeners move only on a change of `mode`, and only now that the proxy runs
            ctx.options.update(mode=list(ctx.options.mode))

    def _fill_in(self) -> None:
        options = ctx.options
        ours = reverse_defaults(self.settings, lambda option: option not in self.owned)
        if self.rewrites_host:
            ours["keep_host_header"] = True
        updates = {option: value for option, value in ours.items() if getattr(options, option) != value}
        if updates:
            options.update(**updates)

    def outside_reverse_mode(self, client: connection.Client) -> bool:
        return self.owns_mode and not isinstance(client.proxy_mode, mode_specs.ReverseMode)

    def client_connected(self, client: connection.Client) -> None:
        if self.outside_reverse_mode(client):
            client.error = OUTSIDE_REVERSE_MODE

    def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        if self.outside_reverse_mode(data.client):
            data.server.error = OUTSIDE_REVERSE_MODE
            return
        mode = data.client.proxy_mode
        if (
            self.rewrites_host
            and isinstance(mode, mode_specs.ReverseMode)
            and mode.scheme in TLS_SCHEMES
            and data.server.address == mode.address
        ):
            # what mitmproxy's reverse mode does without keep_host_header: the upstream's name as TLS SNI
            data.server.sni = mode.address[0]

    def http_connect(self, flow: http.HTTPFlow) -> None:
        if self.outside_reverse_mode(flow.client_conn):
            flow.kill()

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if self.outside_reverse_mode(flow.client_conn):
            logger.warning(f"refused a request from {human.format_address(flow.client_conn.peername)}: {OUTSIDE_REVERSE_MODE}")
            flow.kill()
            return
        if not is_proxied(flow) or not ctx.options.keep_host_header:
            return
        request = flow.request
        flow_state(flow).client_host = request.host_header or ""
        if self.rewrites_host:
            # what mitmproxy's reverse mode does without keep_host_header
            request.host_header = url.hostport(request.scheme, request.host, request.port)

    def request(self, flow: http.HTTPFlow) -> None:
        if is_proxied(flow) and is_ollama_path(flow.request.path):
            upstream = self.settings.ollama_upstream_url
            flow.request.scheme = upstream.scheme
            flow.request.host = upstream.host
            flow.request.port = upstream.port
