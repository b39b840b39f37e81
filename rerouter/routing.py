"""
Where requests go: reverse mode on LISTEN_HOST:LISTEN_PORT, Ollama-native paths to OLLAMA_UPSTREAM_URL.
"""

import ipaddress
import logging
from collections.abc import Callable
from typing import Any

from mitmproxy import ctx
from mitmproxy import http

from rerouter.flows import is_proxied
from rerouter.settings import Settings

logger = logging.getLogger(__name__)

OLLAMA_PREFIX = "/api/"


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
        ours = reverse_defaults(self.settings, options.has_changed)
        self.owns_mode = "mode" in ours
        updates = {option: value for option, value in ours.items() if getattr(options, option) != value}
        if "listen_host" in updates or "listen_port" in updates:
            # listeners restart only when `mode` is among the updated options
            updates.setdefault("mode", list(options.mode))
        if updates:
            options.update(**updates)

    def configure(self, updated: set[str]) -> None:
        if self.owns_mode and "upstream_url" in updated and self.settings.is_running:
            ctx.options.update(mode=[self._mode()])

    def _mode(self) -> str:
        return reverse_mode(self.settings)

    def request(self, flow: http.HTTPFlow) -> None:
        if is_proxied(flow) and is_ollama_path(flow.request.path):
            upstream = self.settings.ollama_upstream_url
            flow.request.scheme = upstream.scheme
            flow.request.host = upstream.host
            flow.request.port = upstream.port
