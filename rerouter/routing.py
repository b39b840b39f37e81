"""
Where requests go: reverse mode on LISTEN_HOST:LISTEN_PORT, Ollama-native paths to OLLAMA_UPSTREAM_URL.
"""

import ipaddress
import logging

from mitmproxy import ctx
from mitmproxy import http
from mitmproxy.proxy import mode_specs

from rerouter.settings import Settings

logger = logging.getLogger(__name__)

OLLAMA_PREFIX = "/api/"


def is_ollama_path(path: str) -> bool:
    return path.startswith(OLLAMA_PREFIX)


def listen_host(settings: Settings) -> str:
    """Where the proxy listens: the user's --listen-host if given, else LISTEN_HOST."""
    return ctx.options.listen_host if ctx.options.has_changed("listen_host") else settings.listen_host


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def is_proxied(flow: http.HTTPFlow) -> bool:
    """A live flow that goes upstream: not answered locally, not failed, in reverse mode."""
    return (
        flow.live
        and flow.response is None
        and flow.error is None
        and isinstance(flow.client_conn.proxy_mode, mode_specs.ReverseMode)
    )


class ReverseProxy:
    """
    Turns a plain `mitmdump -s rerouter_addon.py` into the rerouter's reverse proxy.

    mitmproxy 12 ignores mode changes made before `running`, so the switch
    happens there; whatever the user gave explicitly (`--mode`, `--listen-host`,
    `-p`, `connection_strategy`) is left alone. The lazy connection strategy
    keeps local answers working while an upstream is down.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.owns_mode = False

    def running(self) -> None:
        options = ctx.options
        updates: dict[str, object] = {}
        if not options.has_changed("connection_strategy"):
            updates["connection_strategy"] = "lazy"
        if not options.has_changed("mode"):
            self.owns_mode = True
            updates["mode"] = [self._mode()]
        if options.listen_host != listen_host(self.settings):
            updates["listen_host"] = listen_host(self.settings)
        if not options.has_changed("listen_port") and options.listen_port != self.settings.listen_port:
            updates["listen_port"] = self.settings.listen_port
        if "listen_host" in updates or "listen_port" in updates:
            # listeners restart only when `mode` is among the updated options
            updates.setdefault("mode", list(options.mode))
        if updates:
            options.update(**updates)

    def configure(self, updated: set[str]) -> None:
        if self.owns_mode and "upstream_url" in updated and self.settings.is_running:
            ctx.options.update(mode=[self._mode()])

    def _mode(self) -> str:
        return f"reverse:{self.settings.upstream_url.url}"

    def request(self, flow: http.HTTPFlow) -> None:
        if is_proxied(flow) and is_ollama_path(flow.request.path):
            upstream = self.settings.ollama_upstream_url
            flow.request.scheme = upstream.scheme
            flow.request.host = upstream.host
            flow.request.port = upstream.port
