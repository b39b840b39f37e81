"""
DATABASE_URL, the PostgreSQL server of a shared request log: checked at startup, shown only masked.

The URL carries the database password, and it ends up in messages (a bad
setting, a failed connection); everything that prints it goes through `masked`
or `mask_in` first, so the password never reaches the process output, the
log, or an answer of the API.
"""

import re
from urllib.parse import unquote

MASK = "***"
SCHEMES = ("postgresql", "postgres")
EXAMPLE = "postgresql://user:password@host:port/database"
# greedy up to the last "@" before the path, so an unescaped "@" in a password is masked too
USERINFO_PASSWORD = re.compile(r"^([a-z]+://[^/?#@:]*:)([^/?#]*)@", re.IGNORECASE)
PASSWORD_PARAMETER = re.compile(r"([?&]password=)([^&#]*)", re.IGNORECASE)


def masked(url: str) -> str:
    """The URL as it may be shown: the password, in the user part or as a parameter, replaced by ***."""
    return PASSWORD_PARAMETER.sub(rf"\g<1>{MASK}", USERINFO_PASSWORD.sub(rf"\g<1>{MASK}@", url))


def passwords(url: str) -> set[str]:
    """Every spelling of the URL's password(s) that a message could repeat."""
    found = [match.group(2) for pattern in (USERINFO_PASSWORD, PASSWORD_PARAMETER) for match in pattern.finditer(url)]
    return {spelling for secret in found if secret for spelling in (secret, unquote(secret))}


def mask_in(text: str, url: str) -> str:
    """`text`, e.g. a driver's error message, with the URL and its password masked wherever they appear."""
    text = text.replace(url, masked(url))
    for secret in sorted(passwords(url), key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


def parse_database_url(text: str) -> str:
    """The URL as given, or "" (the SQLite file at DB_PATH); a ValueError's message never holds the password."""
    url = text.strip()
    if not url:
        return ""
    scheme, separator, _ = url.partition("://")
    if not separator or scheme.lower() not in SCHEMES:
        # only the scheme is repeated: where the password is in something that is no URL cannot be known
        got = f"a {scheme}:// URL" if separator and scheme.isalnum() else "no URL"
        raise ValueError(f"expected {EXAMPLE}, got {got}")
    # imported here, so that users of the SQLite log never pay for loading the driver
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict

    try:
        parameters = conninfo_to_dict(url)
    except ProgrammingError as e:
        problem = str(e).strip().splitlines()[0] if str(e).strip() else "cannot be parsed"
        raise ValueError(mask_in(f"invalid URL {url!r}: {problem}", url)) from None
    for port in str(parameters.get("port", "")).split(","):
        if port and not (port.isdigit() and 0 < int(port) <= 65535):
            raise ValueError(mask_in(f"invalid port {port!r} in {url!r}", url))
    return url
