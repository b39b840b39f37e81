"""
Request rewriting: model names, thinking switched off, a request for token usage, and aliases in the upstream's model lists.
"""

import logging

from mitmproxy import http

from rerouter.flows import annotate
from rerouter.flows import is_proxied
from rerouter.flows import json_object
from rerouter.flows import set_json
from rerouter.flows import flow_state
from rerouter.meter import ask_for_usage
from rerouter.modelmap import add_aliases
from rerouter.modelmap import switch_thinking_off
from rerouter.routing import is_ollama_path
from rerouter.rules import Rules
from rerouter.settings import Settings

logger = logging.getLogger(__name__)

MODEL_LISTS = ("/v1/models", "/api/tags")
BODY_METHODS = ("POST", "PUT", "PATCH")
USAGE_PATHS = ("/chat/completions", "/completions")


def wants_usage(path: str) -> bool:
    """An OpenAI-style chat or completions path, where `stream_options.include_usage` asks for token counts."""
    path = path.split("?", 1)[0].rstrip("/")
    return path.endswith(USAGE_PATHS) and not is_ollama_path(path)


class ModelRewrite:
    def __init__(self, settings: Settings, rules: Rules) -> None:
        self.settings = settings
        self.rules = rules

    def request(self, flow: http.HTTPFlow) -> None:
        if not is_proxied(flow) or flow.request.method not in BODY_METHODS:
            return
        model_map, switches = self.rules.model_map, self.settings.disable_thinking
        if not (model_map or switches or self.settings.enable_logging or self.settings.think_open_models):
            return  # nothing to change, and nobody who wants to know the model
        body = json_object(flow.request)
        if body is None:
            return
        changed = False
        requested = body.get("model")
        if isinstance(requested, str):
            match = self.rules.match(requested)
            routed = requested if match is None else match.routed
            record = flow_state(flow)
            record.requested_model, record.routed_model = requested, routed
            if routed != requested:
                body["model"] = routed
                annotate(flow, f"model: {requested} -> {routed}")
                changed = True
            if match is not None:
                record.rule = match.rule.key
                edits = match.rule.edit(body)  # before the thinking switches: the proxy's own values win
                if edits:
                    annotate(flow, edits)
                    changed = True
        if switches:
            applied, switched = switch_thinking_off(body, switches, flow.request.path)
            if applied:
                flow_state(flow).thinking_switches = tuple(applied)
                annotate(flow, f"thinking off: {', '.join(applied)}")
                changed |= switched
        # the token counts are for the log: without it nothing would read them
        count_tokens = self.settings.request_usage and self.settings.enable_logging
        if count_tokens and wants_usage(flow.request.path) and ask_for_usage(body):
            flow_state(flow).usage_requested = True
            annotate(flow, "token usage requested")
            changed = True
        if changed:
            set_json(flow.request, body)

    def response(self, flow: http.HTTPFlow) -> None:
        aliases = self.rules.model_map.exact
        if (
            not aliases
            or flow.request.method != "GET"
            or flow.request.path.split("?", 1)[0].rstrip("/") not in MODEL_LISTS
            or flow.response is None
            or flow.response.status_code != 200
            or flow.response.raw_content is None
        ):
            return
        listing = json_object(flow.response)
        if listing is not None and add_aliases(listing, aliases):
            set_json(flow.response, listing)
            annotate(flow, "aliases added to the model list")
