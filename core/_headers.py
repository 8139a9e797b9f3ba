"""Header vocabulary, defined once: the pair type, lookups, hop-by-hop and framing rules."""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = [
    "BODY_METHODS",
    "HOP_BY_HOP",
    "Headers",
    "connection_tokens",
    "content_length",
    "header",
    "lower_names",
    "parse_retry_after",
]

#: Header pairs: names lower-cased (by the events that carry them), raw values.
Headers = Sequence[tuple[bytes, bytes]]

#: Headers that describe one connection, never forwarded (RFC 9110 7.6.1).
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"transfer-encoding",
        b"te",
        b"trailer",
        b"upgrade",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
    }
)

#: Methods whose request always carries a ``Content-Length`` (0 for no body).
BODY_METHODS = frozenset({b"POST", b"PUT", b"PATCH"})


def content_length(method: bytes, body: bytes) -> bytes | None:
    """The ``Content-Length`` value a request to an upstream carries, or None for none."""
    if body or method in BODY_METHODS:
        return b"%d" % len(body)
    return None


def lower_names(headers: Headers) -> list[tuple[bytes, bytes]]:
    """Header pairs with their names lower-cased, as h11's events keep them.

    HTTP header names are case-insensitive (RFC 9110 5.1): nginx, Node and Go
    send ``Content-Type``. Normalised once, here, so that every decision the
    core makes from a header holds whatever the peer's spelling.
    """
    return [(name.lower(), value) for name, value in headers]


def header(headers: Headers, wanted: bytes) -> bytes | None:
    """The value of the first header named ``wanted`` (lower-case), or None."""
    for name, value in headers:
        if name == wanted:
            return value
    return None


def connection_tokens(value: bytes) -> set[bytes]:
    """The header names a ``Connection`` header lists (they are hop-by-hop too)."""
    return {token.strip().lower() for token in value.split(b",")}


def parse_retry_after(headers: Headers, *, wall_now: float) -> float | None:
    """Seconds the upstream asks to wait: ``retry-after-ms``, ``retry-after`` (seconds or
    an HTTP date); ``None`` if it says nothing usable."""
    for name, value in headers:
        if name == b"retry-after-ms":
            try:
                ms = float(value)
            except ValueError:
                continue
            if math.isfinite(ms) and ms >= 0:
                return ms / 1000
    for name, value in headers:
        if name != b"retry-after":
            continue
        text = value.decode("latin-1").strip()
        try:
            seconds = float(text)
        except ValueError:
            # An HTTP date: rare, so its parser (and its imports) is loaded then.
            from email.utils import parsedate_to_datetime  # noqa: PLC0415

            try:
                when = parsedate_to_datetime(text)
            except (TypeError, ValueError, IndexError):
                return None
            if when.tzinfo is None:
                return None
            return max(0.0, when.timestamp() - wall_now)
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    return None
