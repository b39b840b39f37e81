"""
Secrets in request paths: the query parameters whose values are masked wherever the proxy shows a path.

Pure functions, so the log store, the in-flight list and the printed flow lines
mask the same names the same way.
"""

from urllib.parse import unquote_plus

SECRET_QUERY_PARAMS = frozenset({"key", "api_key", "api-key", "access_token", "token"})
"""Compared without regard to letter case, after percent-decoding the name."""
REDACTED = "[redacted]"


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
