"""
openai-model-rerouter: a mitmproxy addon in front of OpenAI-compatible and Ollama servers.

It rewrites `model` names, can ask models not to think, strips
`<think>...</think>` reasoning from answers (also from live streams), and
records every request in SQLite, shown on a dashboard at `/`.

Usage (configured by environment variables, each also a `--set` option):
    python rerouter_addon.py [extra mitmdump args]
    mitmdump -s rerouter_addon.py
    mitmweb -s rerouter_addon.py

    UPSTREAM_URL=http://localhost:8000 MODEL_MAP='{"gpt-3.5-turbo": "qwen3:8b"}' \\
        python rerouter_addon.py
"""

import os
import sys

from dashboard import Dashboard
from rerouter.buffering import Buffering
from rerouter.buffering import Reclaim
from rerouter.figures import Figures
from rerouter.metrics import Metrics
from rerouter.printing import PrintedSecrets
from rerouter.requestlog import RequestLog
from rerouter.rewriting import ModelRewrite
from rerouter.routing import ReverseProxy
from rerouter.routing import reverse_defaults
from rerouter.rules import Rules
from rerouter.settings import Settings
from rerouter.stripping import ThinkStrip
from rerouter.upstream_failures import UpstreamFailures

settings = Settings()
request_log = RequestLog(settings)
rules = Rules(settings, request_log)
metrics = Metrics(request_log)
dashboard = Dashboard(settings, request_log, rules, metrics)

# The order is the way data walks, and it matters: the dashboard answers its local routes before
# anything could send them upstream; routing picks the upstream before the timeout starts; buffering
# decides which bodies stream (the dashboard's answers never do); the rules (MODEL_MAP or its file)
# are in force before the rewrite asks them and records the model names; the figures' meter is set
# up before the think filter wraps the answer's stream with it; the metrics count a request before
# the log, which forgets it, comes last so it sees the rewritten request and the stream exactly as
# the client gets it; then secrets in the path are masked for what mitmdump prints once each flow ends.
addons = [
    settings,
    dashboard,
    ReverseProxy(settings),
    UpstreamFailures(settings),
    Buffering(dashboard.answers),
    Reclaim(),
    rules,
    ModelRewrite(settings, rules),
    Figures(settings),
    ThinkStrip(settings),
    metrics,
    request_log,
    PrintedSecrets(),
]

USER_FLAGS = {
    "mode": ("--mode", "-m"),
    "listen_host": ("--listen-host",),
    "listen_port": ("--listen-port", "-p"),
    "connection_strategy": (),
    "stream_large_bodies": (),
}


def gives(args: list[str], option: str) -> bool:
    """Whether the user's own arguments set `option`, by its flag or by `--set option=...`."""
    flags = USER_FLAGS[option]
    return any(
        arg in flags
        or arg.startswith(tuple(f"{f}=" for f in flags if f.startswith("--")))
        or (prev == "--set" and arg.startswith(f"{option}="))
        for prev, arg in zip([""] + args, args)
    )


def launch_args(args: list[str]) -> list[str]:
    """
    mitmdump arguments that start the reverse proxy directly, without mitmproxy's 8080 detour.

    The environment is checked first, so a bad setting stops here, before anything listens.
    """
    ours = reverse_defaults(Settings.from_environment(), lambda option: gives(args, option))
    values = [(option, value) for option, given in ours.items() for value in (given if isinstance(given, list) else [given])]
    return [*(arg for option, value in values for arg in ("--set", f"{option}={value}")), "-s", os.path.abspath(__file__), *args]


def main() -> int:
    try:
        args = launch_args(sys.argv[1:])
    except ValueError as e:
        print(e, file=sys.stderr)
        return 1
    from mitmproxy.tools.main import mitmdump

    return mitmdump(args) or 0


if __name__ == "__main__":
    sys.exit(main())
