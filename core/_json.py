"""JSON: reading what a peer sent (``loads``, with bounds) and writing it (``dumps``).

Every JSON document the core reads from a client or an upstream -- a request
body, tool-call arguments, an upstream's answer or error body, each stream
event -- goes through :func:`loads`. It reads what ``json.loads`` reads
(``NaN`` and ``Infinity`` included, the last of duplicate keys), with three
rules more:

* **nesting** deeper than ``MAX_JSON_DEPTH`` (200) levels is refused. The
  parser, pydantic-core's (jiter, in Rust), stops there by itself: no
  ``RecursionError`` (``json`` recurses once a level, and ten thousand ``[``
  make it raise one after a slow walk down the C stack), and a document
  within the bound can be walked and re-serialised by Python code safely;
* a document holding more than ``max_items`` values (``limits.max_json_items``)
  is refused before it is parsed. Parsing costs about half a microsecond a
  value, so ten megabytes of tiny values would stall the event loop for most
  of a second and take hundreds of megabytes as Python objects;
* a **lone surrogate** escape (``"\\ud800"``: valid JSON syntax that no UTF-8
  text can hold) is read as U+FFFD, so that every string the core holds can be
  encoded again -- in a re-serialised body, a log line, a trace record.

Bytes are decoded strictly (UTF-8, or UTF-16/32 as ``json`` detects them).
Every failure is a :class:`JSONError` (a ``ValueError``) whose ``limit`` says
which bound, if any, was crossed; the caller maps it to its own error (400
``invalid_json`` or 413 for a client, 502 ``upstream_protocol_error`` for an
upstream).

The bounds cost nothing on the usual document: one of fewer than
``2 * max_items`` characters cannot hold more than ``max_items`` values. A
longer one has its commas and opening brackets counted; only when those are
too many (commas in its text, or too many values) are they counted again
outside its strings. Both are ``bytes`` methods, C speed: a refusal of ten
megabytes takes tens of milliseconds, where parsing them took up to a second.
pydantic-core's parser is also faster than ``json.loads``: five times on a
small request, twice on a stream event, one and a half to three times on a
big body.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

import orjson
from pydantic_core import from_json

__all__ = [
    "MAX_JSON_DEPTH",
    "MAX_JSON_ITEMS",
    "JSONError",
    "check_items",
    "dumps",
    "loads",
    "redump",
]

#: The deepest nesting read (pydantic-core's parser's own bound).
MAX_JSON_DEPTH = 200
#: The default ``limits.max_json_items``.
MAX_JSON_ITEMS = 100_000


class JSONError(ValueError):
    """Not JSON the core reads. ``limit`` names the bound it is over, None for bad JSON."""

    def __init__(
        self, message: str, *, limit: Literal["max_json_depth", "max_json_items"] | None = None
    ) -> None:
        super().__init__(message)
        self.limit = limit


def loads(data: bytes | bytearray | str, *, max_items: int = MAX_JSON_ITEMS) -> Any:
    """Parse one JSON document of at most ``max_items`` values; raises :class:`JSONError`."""
    if len(data) >= 2 * max_items:  # see check_items
        _check_items(data, max_items)
    try:
        return from_json(data)
    except ValueError as exc:
        return _retry(data, exc)
    except TypeError:  # a str holding a surrogate itself (not escaped): not text
        raise JSONError("not text: a lone surrogate") from None


def check_items(data: bytes | bytearray | str, *, max_items: int = MAX_JSON_ITEMS) -> None:
    """Raise :class:`JSONError` if ``data`` holds more than ``max_items`` values.

    Without parsing it: for a parser of one's own (pydantic's ``validate_json``).
    """
    # Each value takes two characters at least ("0," or "[]"): a short text is within.
    if len(data) >= 2 * max_items:
        _check_items(data, max_items)


def _retry(data: bytes | bytearray | str, exc: ValueError) -> Any:
    """What pydantic-core refused: too deep, or what ``json`` reads and it does not
    (UTF-16/32 or a BOM, a lone surrogate), or bad JSON."""
    error = _error(exc)
    if error.limit is not None:
        raise error from None
    if isinstance(data, str):
        text, parsed_as_is = data, True
    else:  # bytes, or a bytearray a driver handed over
        text, parsed_as_is = _decode(data), _encoding(data) == "utf-8"
    fixed = _replace_lone_surrogates(text) if "\\u" in text else text
    if fixed is text and parsed_as_is:
        raise error from None  # the same text again would fail the same way
    try:
        return from_json(fixed)
    except ValueError as again:
        raise _error(again) from None


def _error(exc: ValueError) -> JSONError:
    message = str(exc)
    if message.startswith("recursion limit exceeded"):
        return JSONError(f"nested deeper than {MAX_JSON_DEPTH} levels", limit="max_json_depth")
    return JSONError(message)


def _encoding(data: bytes | bytearray) -> str:
    """UTF-8, unless a BOM or NUL bytes say otherwise (as ``json.loads`` detects)."""
    if data[:1] in (b"\xef", b"\xfe", b"\xff") or b"\x00" in data[:4]:
        return json.detect_encoding(data)
    return "utf-8"


def _decode(data: bytes | bytearray) -> str:
    try:
        return data.decode(_encoding(data))
    except UnicodeDecodeError as exc:
        raise JSONError(f"invalid {exc.encoding} at byte {exc.start}") from None


# -- the number of values ---------------------------------------------------------------


def _check_items(data: bytes | bytearray | str, max_items: int) -> None:
    """Raise if ``data`` holds more than ``max_items`` values.

    A document holds at most one value more than its commas and opening
    brackets outside strings (an empty array or object counts twice), and at
    least half as many values as strings. They are counted in the whole text
    first (inside strings too: at least as many). When that is too many, the
    escaped backslashes and quotes are dropped, so that every quote left
    delimits a string, and what is between the strings is counted. Each step
    is a ``bytes`` method (C speed; none of these characters is part of
    another in UTF-8): a few nanoseconds a byte.
    """
    raw: bytes | bytearray
    if isinstance(data, str):
        if data.count(",") + data.count("[") + data.count("{") < max_items:
            return
        raw = data.encode("utf-8", "surrogatepass")
    else:  # in UTF-16/32 too, each of these bytes is at most one of the characters
        if data.count(b",") + data.count(b"[") + data.count(b"{") < max_items:
            return
        raw = data if _encoding(data) == "utf-8" else _decode(data).encode()
    # Outside strings a backslash is bad JSON, which the parser refuses where it is.
    if b"\\" in raw:
        raw = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    quotes = raw.count(b'"')
    if quotes > 4 * max_items:  # more than 2 * max_items strings
        raise _too_many(max_items)
    if quotes:
        between = b"".join(raw.split(b'"')[::2])
        if between.count(b",") + between.count(b"[") + between.count(b"{") < max_items:
            return
    raise _too_many(max_items)


def _too_many(max_items: int) -> JSONError:
    return JSONError(f"more than {max_items} values", limit="max_json_items")


# -- lone surrogates --------------------------------------------------------------------

# An escaped high surrogate not followed by an escaped low one, or an escaped low
# surrogate not preceded by a high one escaped by a single backslash: a superset
# of the lone ones (a backslash may itself be escaped), each then checked exactly.
_CANDIDATE = re.compile(
    r"\\u[dD](?:[89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F])"
    r"|[c-fC-F](?<![^\\]\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F])[0-9a-fA-F]{2})"
)
_HIGH = re.compile(r"\\u[dD][89abAB][0-9a-fA-F]{2}")


def _is_escape(text: str, i: int) -> bool:
    """Whether the backslash at ``i`` starts an escape (an odd run of backslashes ends there)."""
    j = i
    while j and text[j - 1] == "\\":
        j -= 1
    return (i - j) % 2 == 0


def _replace_lone_surrogates(text: str) -> str:
    """``text`` with each lone surrogate escape replaced by ``\\ufffd`` (``text`` if none)."""
    pieces: list[str] = []
    kept = 0
    for match in _CANDIDATE.finditer(text):
        i = match.start()
        if not _is_escape(text, i):
            continue
        if (
            text[i + 3] in "cdefCDEF"
            and i >= 6
            and _HIGH.fullmatch(text, i - 6, i) is not None
            and _is_escape(text, i - 6)
        ):
            continue  # the low half of a pair whose high half is escaped by 3, 5 ... backslashes
        pieces += (text[kept:i], "\\ufffd")
        kept = i + 6
    if not pieces:
        return text
    pieces.append(text[kept:])
    return "".join(pieces)


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON (no spaces, non-ASCII kept): every JSON the core writes."""
    if type(value) is str:  # a stream's text delta: orjson writes the same bytes, faster
        try:
            return orjson.dumps(value)
        except TypeError:  # a lone surrogate: json's writer escapes it
            pass
    return _encode(value).encode()


_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def redump(value: Any, source: bytes) -> bytes:
    """``dumps(value)`` for ``value`` read from ``source`` and edited a little (a
    request whose model is renamed): orjson's writer, five times faster, when
    ``source`` holds no ``NaN`` or ``Infinity`` (orjson would write ``null`` where
    ``dumps`` writes them back); the one writer otherwise, or if orjson refuses
    (an int beyond 64 bits)."""
    if b"NaN" not in source and b"Infinity" not in source:
        try:
            return orjson.dumps(value)
        except TypeError:  # orjson.JSONEncodeError: an int over 64 bits, say
            pass
    return dumps(value)
