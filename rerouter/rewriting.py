"""
Request rewriting: model names, ` /no_think`, and aliases in the upstream's model lists.
"""

import json
import logging
from typing import Any

from mitmproxy import http

from rerouter.modelmap import add_aliases
from rerouter.modelmap import append_no_think
from rerouter.routing import is_proxied
from rerouter.settings import Settings

logger = logging.getLogger(__name__)

MODEL_LISTS = ("/v1/models", "/api/tags")
BODY_METHODS = ("POST", "PUT", "PATCH")


def annotate(flow: http.HTTPFlow, note: str) -> None:
    """Say in the flow's comment what the proxy changed, for people reading it in mitmweb."""
    flow.comment = f"{flow.comment}; {note}" if flow.comment else note
    flow.marked = flow.marked or ":arrows_counterclockwise:"


def json_object(message: http.Message) -> dict[str, Any] | None:
    """The body as a JSON object, or None: other bodies are not ours to touch."""
    content = message.get_content(strict=False)
    if not content or content[:64].lstrip()[:1] != b"{":
        return None
    try:
        body = json.loads(content)
    except (ValueError, RecursionError):
        return None
    return body if isinstance(body, dict) else None


def set_json(message: http.Message, body: dict[str, Any]) -> None:
    message.content = json.dumps(body, ensure_ascii=False).encode()


class ModelRewrite:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def request(self, flow: http.HTTPFlow) -> None:
        if not is_proxied(flow) or flow.request.method not in BODY_METHODS:
            return
        model_map, no_think = self.settings.model_map, self.settings.disable_thinking
        if not (model_map or no_think or self.settings.enable_logging):
            return  # nothing to change, and no log that wants to know the model
        body = json_object(flow.request)
        if body is None:
            return
        changed = False
        requested = body.get("model")
        if isinstance(requested, str):
            routed = model_map.route(requested)
            flow.metadata["requested_model"] = requested
            flow.metadata["routed_model"] = routed
            if routed != requested:
                body["model"] = routed
                annotate(flow, f"model: {requested} -> {routed}")
                changed = True
        if no_think and append_no_think(body):
            annotate(flow, "/no_think appended")
            changed = True
        if changed:
            set_json(flow.request, body)

    def response(self, flow: http.HTTPFlow) -> None:
        aliases = self.settings.model_map.exact
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
