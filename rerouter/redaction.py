"""
Secrets: the headers and query parameters whose values are masked wherever the proxy shows them.

Pure functions, so the log store, the in-flight list and the printed flow lines
mask the same names the same way.
"""

from collections.abc import Iterable
from urllib.parse import unquote_plus

SECRET_QUERY_PARAMS = frozenset({"key", "api_key", "api-key", "access_token", "token"})
"""Compared without regard to letter case, after percent-decoding the name."""
REDACTED = "[redacted]"
SECRET_HEADERS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
        "x-api-key",
        "api-key",
        "x-goog-api-key",
        "ocp-apim-subscription-key",
        "x-auth-token",
    }
)
"""Headers whose values are never stored or shown (names compared in lower case)."""


def redact_headers(headers: Iterable[tuple[str, str]]) -> list[list[str]]:
    """Secrets are replaced before anything is written: log files get copied around."""
    return [[name, REDACTED if name.lower() in SECRET_HEADERS else value] for name, value in headers]


def redact_path(path: str) -> str:
    """
    The path with the value of every secret query parameter replaced by REDACTED.

    Everything else stays byte for byte as it was (order, separators, other
    values, a fragment), and masking a masked path changes nothing.
    """
    base, question, query = path.partition("?")
    if not question:
        return path
    query, hash_sign, fragment = query.partition("#")
    fields = query.split("&")
    for i, field in enumerate(fields):
        name, equals, _ = field.partition("=")
        if equals and unquote_plus(name).strip().lower() in SECRET_QUERY_PARAMS:
            fields[i] = f"{name}={REDACTED}"
    return f"{base}?{'&'.join(fields)}{hash_sign}{fragment}"
