"""One home for credentials: which URL parts are secret, how to remove them from URLs, messages and
JSON values, and how to turn an exception into one safe line.

Every layer uses this module (connectors for their URLs and error messages, the sync engine for
ledger keys and reports, Airflow for XComs and task logs), so there is one list of secret parameter
names and one way to redact them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

__all__ = [
    "SECRET_KEYS",
    "is_secret_key",
    "one_line",
    "redact_text",
    "redact_url",
    "scrub",
    "scrub_value",
    "short_error",
    "url_secrets",
]

#: Query parameters (and mapping keys) whose values are credentials.
SECRET_KEYS = frozenset(
    {"api_key", "apikey", "api-key", "password", "passwd", "token", "access_token", "secret", "client_secret", "auth", "key"}
)
#: A literal secret shorter than this is not replaced in text (it would mangle ordinary words).
MIN_SECRET_LEN = 3

_KEYS_RE = "|".join(sorted((re.escape(k) for k in SECRET_KEYS), key=len, reverse=True))
_USERINFO_RE = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]*@")
_SECRET_QS_RE = re.compile(rf"(?i)([?&](?:{_KEYS_RE})=)[^&\s#'\"]*")
_AUTH_HDR_RE = re.compile(r"(?i)((?:authorization|api[-_]?key)['\"]?\s*[:=]\s*['\"]?)(?:ApiKey |Basic |Bearer )?[^'\",\s}]+")


def is_secret_key(name: str) -> bool:
    return name.lower() in SECRET_KEYS


def redact_url(url: str) -> str:
    """``url`` without ``user:password@`` and without secret query parameters (order kept).

    Anything that does not parse as a URL is returned with :func:`redact_text` applied.
    """
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return redact_text(url)
    if not parts.scheme:
        return redact_text(url)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if not is_secret_key(k)])
    out = f"{parts.scheme}://{netloc}{parts.path}"
    return out + (f"?{query}" if query else "")


def url_secrets(url: str) -> list[str]:
    """The literal secrets a URL carries (password, raw and unquoted; secret query values)."""
    try:
        u = urlsplit(url)
        password = u.password
    except ValueError:
        return []
    out: list[str] = []
    if password:
        out += [password, unquote(password)]
    out += [v for k, v in parse_qsl(u.query) if is_secret_key(k) and v]
    return list(dict.fromkeys(out))


def redact_text(text: str) -> str:
    """Remove credentials that have a recognisable shape from free text: URL user info, secret query
    parameters and ``Authorization: ...`` / ``api_key=...`` values."""
    s = _USERINFO_RE.sub(r"\g<scheme>", text)
    s = _SECRET_QS_RE.sub(r"\1***", s)
    return _AUTH_HDR_RE.sub(r"\1***", s)


def scrub(text: str, *secrets: str | None) -> str:
    """:func:`redact_text`, and every given literal secret replaced by ``***``."""
    out = redact_text(str(text))
    for s in _usable(secrets):
        out = out.replace(s, "***")
        quoted = quote(s, safe="")
        if quoted != s:
            out = out.replace(quoted, "***")
    return out


def scrub_value(value: Any, secrets: Iterable[str | None]) -> Any:
    """A JSON-able value with every literal secret removed from its strings (keys included): defence in
    depth for what leaves a process (Airflow XComs, reports)."""
    found = _usable(secrets)
    if not found:
        return value
    if isinstance(value, str):
        for s in found:
            value = value.replace(s, "***")
        return value
    if isinstance(value, Mapping):
        return {scrub_value(k, found): scrub_value(v, found) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub_value(v, found) for v in value]
    return value


def short_error(exc: BaseException, *secrets: str | None, limit: int = 300) -> str:
    """``Type: message`` cut at ``limit`` characters, scrubbed of credentials."""
    s = f"{type(exc).__name__}: {exc}"
    if len(s) > limit:
        s = s[:limit] + "..."
    return scrub(s, *secrets)


def one_line(exc: BaseException) -> str:
    """The first line of an error, for reports and logs. Our own errors already say what to do, so
    they are shown without their class name; others as ``Type: message``."""
    from embedrail.errors import EmbedrailError

    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else ""
    if isinstance(exc, EmbedrailError):
        return redact_text(text or type(exc).__name__)
    return redact_text(f"{type(exc).__name__}: {text}")


def _usable(secrets: Iterable[str | None]) -> list[str]:
    # longest first, so a secret that contains another one is replaced whole
    return sorted({s for s in secrets if s and len(s) >= MIN_SECRET_LEN}, key=len, reverse=True)
