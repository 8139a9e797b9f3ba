"""HTTP/1.1 framing for upstream calls, without I/O: requests out, responses in.

:func:`encode` turns a request into the one buffer to send (head and body),
refusing what h11 refused, byte for byte what h11 wrote.
:class:`ResponseFramer` parses responses with ``httptools`` (llhttp): bytes
in, ``on_head`` / ``on_data`` / ``on_end`` calls out on a listener. Both are
shared by every upstream client (anyio streams or asyncio protocols).

Every failure is an :class:`UpstreamError` whose message never quotes a
request header value.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import httptools

from core._events import FailureKind

__all__ = [
    "ResponseFramer",
    "ResponseListener",
    "UpstreamError",
    "encode",
]


class UpstreamError(Exception):
    """The upstream call failed; ``kind`` says how.

    ``connect``: refused, DNS or TLS failure; ``timeout``: connecting took
    longer than ``connect_timeout``; ``reset``: the connection broke or ended
    mid-message; ``protocol``: the response (or the request) is not valid
    HTTP/1.1. The message never contains request headers.
    """

    kind: FailureKind

    def __init__(self, kind: FailureKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind


# --- requests --------------------------------------------------------------------------

# h11's grammar (RFC 9110 5.1, 5.5; h11._abnf), so that what it refused is refused.
_TOKEN_BYTES = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
# Lower-cases a header name (or method) and turns every byte a token may not hold
# into NUL: one pass both normalises and validates.
_NAME_TABLE = bytes(
    (c | 0x20 if 65 <= c <= 90 else c) if c in _TOKEN_BYTES else 0 for c in range(256)
)
# A target is visible ASCII (\x21-\x7e) only: what is left once these are deleted.
_VISIBLE = bytes(range(0x21, 0x7F))
# What may not be in a head but the CR LF this module writes between its lines.
_CONTROL = b"\0\r\n\v\f"
_SPACE_OR_TAB = (32, 9)
# Names whose header changes how the request is framed or sent.
_FRAMING = frozenset({b"host", b"content-length", b"transfer-encoding", b"connection"})
_SEPARATOR = b": "
_CRLF = b"\r\n"


def _invalid() -> UpstreamError:
    return UpstreamError(
        "protocol", "invalid request: bad method, target or header (values not shown)"
    )


def _unframed() -> UpstreamError:
    return UpstreamError("protocol", "invalid request: the body does not match its framing headers")


def encode(
    method: bytes,
    target: bytes,
    headers: Sequence[tuple[bytes, bytes]],
    body: bytes,
) -> tuple[bytes, bool]:
    """The request as one buffer, and whether it asks the server to close after it.

    ``headers`` are sent as given (names keep their case; h11 wrote the same
    bytes): they must carry exactly one Host (the core's always do) and frame
    ``body`` (Content-Length, or ``Transfer-Encoding: chunked`` whose body is
    then chunk-encoded here; no framing header means no body). Raises ``UpstreamError("protocol")``
    otherwise, or for a name, value, method or target that is not valid
    HTTP/1.1 (header injection), without quoting any of them.
    """
    table = _NAME_TABLE
    token = method.translate(table)
    if not token or 0 in token or not target or target.translate(None, _VISIBLE):
        raise _invalid()
    parts = [method, b" ", target, b" HTTP/1.1\r\n", b""]  # [4]: the Host line
    append = parts.append
    lines = 2  # the lines the head must have: request line, headers, the empty line
    host_line: bytes | None = None
    length: bytes | None = None
    chunked = False
    closing = False
    for name, value in headers:
        lower = name.translate(table)
        # Names: tokens. Values: no space or tab around them; no NUL, CR, LF, VT
        # or FF inside, which the scans of the whole head below refuse.
        if (
            not lower
            or 0 in lower
            or (value and (value[0] in _SPACE_OR_TAB or value[-1] in _SPACE_OR_TAB))
        ):
            raise _invalid()
        lines += 1
        if lower in _FRAMING:
            if lower == b"host":
                if host_line is not None:
                    raise _invalid()  # more than one Host
                host_line = name + _SEPARATOR + value + _CRLF
                continue
            sent = value
            if lower == b"content-length":
                if b"," in value:  # "3, 3": one length, repeated
                    values = {item.strip() for item in value.split(b",")}
                    if len(values) != 1:
                        raise _invalid()
                    (sent,) = values
                if (
                    not sent.isdigit()  # ASCII digits, one at least
                    or len(sent) > 20
                    or (length is not None and length != sent)
                ):
                    raise _invalid()
                if length is not None:
                    lines -= 1
                    continue  # a repeated, equal Content-Length is sent once
                length = sent
            elif lower == b"transfer-encoding":
                sent = value.lower()
                if chunked or sent != b"chunked":
                    raise _invalid()
                chunked = True
            elif b"close" in value.lower():
                closing = b"close" in [token.strip() for token in value.lower().split(b",")]
            append(name)
            append(_SEPARATOR)
            append(sent)
            append(_CRLF)
            continue
        append(name)
        append(_SEPARATOR)
        append(value)
        append(_CRLF)
    if host_line is None:
        raise _invalid()
    parts[4] = host_line
    append(_CRLF)
    if not chunked and len(body) != (0 if length is None else int(length)):
        raise _unframed()
    head = b"".join(parts)
    # Every CR and LF of the head is one this function wrote (no injection), and
    # no NUL, VT or FF: all but those 2 * lines bytes are left by one deletion.
    if len(head.translate(None, _CONTROL)) != len(head) - 2 * lines:
        raise _invalid()
    if chunked:
        if body:
            return b"%b%x\r\n%b\r\n0\r\n\r\n" % (head, len(body), body), closing
        return head + b"0\r\n\r\n", closing
    if body:
        return head + body, closing
    return head, closing


# --- responses -------------------------------------------------------------------------


class ResponseListener(Protocol):
    """What a :class:`ResponseFramer` tells, in this order, once per response."""

    def on_head(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        """The final head (1xx are swallowed); header names lower-cased."""

    def on_data(self, data: bytes) -> None:
        """A piece of the body, as it arrived (never empty)."""

    def on_end(self, keep_alive: bool) -> None:
        """The response is complete; ``keep_alive``: the connection may carry another."""


# Framer states.
_IDLE = 0  # no response expected: expect() was not called, or the last one ended
_HEAD = 1  # waiting for (the rest of) the final head
_BODY = 2  # the head was told, the body runs
_DONE = 3  # the response ended in this feed; on_end is told when the feed returns
_BROKEN = 4  # a failure was raised: nothing more is parsed

_NO_BODY = (204, 304)


class _Stop(Exception):
    """Raised inside a parser callback to stop parsing (see ResponseFramer._stop)."""


class ResponseFramer:
    """Frames HTTP/1.1 responses on one connection with llhttp (``httptools``).

    Call :meth:`expect` before each response, then :meth:`feed` what arrives
    and :meth:`feed_eof` when the peer closes. The listener hears of the
    final head, each body piece and the end (``on_end`` once the feed that
    completes the response has been parsed to its last byte: bytes after the
    response mean the connection is not reused). Interim (1xx) responses are
    swallowed; a 101 is refused: switching protocols is not supported.
    Keep-alive follows h11: HTTP/1.1, no ``Connection: close`` either way,
    a body framed by length or chunks, nothing after it.

    Failures raise :class:`UpstreamError` (``protocol`` for malformed bytes
    or a head over ``max_head_size`` bytes, ``reset`` for an end of stream
    mid-response) and leave the framer broken: close the connection.
    """

    __slots__ = (
        "_closing",
        "_head_bytes",
        "_headers",
        "_is_head",
        "_junk",
        "_keep_alive",
        "_listener",
        "_max_head_size",
        "_on_data",
        "_parser",
        "_renew",
        "_state",
        "_until_eof",
    )

    def __init__(self, listener: ResponseListener, max_head_size: int) -> None:
        self._listener = listener
        self._on_data = listener.on_data
        self._max_head_size = max_head_size
        self._parser = _parser(self)
        self._state = _IDLE
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0
        self._is_head = False
        self._closing = False
        self._keep_alive = False
        self._until_eof = False
        self._junk = False
        self._renew = False

    def expect(self, method: bytes, closing: bool = False) -> None:
        """Get ready for the response to a ``method`` request (a HEAD's has no body).

        ``closing``: the request asked the server to close (see :func:`encode`).
        """
        if self._state is not _IDLE:
            raise RuntimeError("expect() while a response is being framed")
        if self._renew:  # after a HEAD, llhttp still waits for the body it announced
            self._parser = _parser(self)
            self._renew = False
        self._is_head = method == b"HEAD"
        self._closing = closing
        if self._headers:  # trailers of the last response landed there
            self._headers = []
        self._head_bytes = 0
        self._junk = False
        self._until_eof = False
        self._state = _HEAD

    def close(self) -> None:
        """The connection is gone: let go of the parser and the listener. Both refer
        back to the framer, so without this they would be cycles that only the
        garbage collector frees. Anything fed after this raises ``protocol``."""
        self._state = _BROKEN
        self._parser = _CLOSED
        self._listener = _CLOSED
        self._on_data = _CLOSED.on_data

    def feed(self, data: bytes) -> None:
        """Parse the bytes that arrived; the listener is called as they make sense."""
        state = self._state
        if state == _HEAD:
            self._head_bytes += len(data)
        elif state != _BODY:
            self._fail_idle(state)
        try:
            self._parser.feed_data(data)
        except _PARSER_ERRORS as exc:
            self._failed(exc)
        state = self._state
        if state == _DONE:
            self._state = _IDLE
            self._listener.on_end(self._keep_alive and not self._junk)
        elif state == _HEAD and self._head_bytes > self._max_head_size:
            self._state = _BROKEN
            raise UpstreamError(
                "protocol", f"response head larger than {self._max_head_size} bytes"
            )

    def feed_eof(self) -> None:
        """The peer closed: end a body delimited by the close, or raise ``reset``."""
        state = self._state
        if state == _BODY and self._until_eof:
            self._state = _IDLE
            self._listener.on_end(False)
            return
        if state == _IDLE:
            return
        self._state = _BROKEN
        if state == _BROKEN:
            raise UpstreamError("reset", "the connection is broken")
        raise UpstreamError("reset", "the connection closed mid-response")

    # -- llhttp's callbacks (called by httptools during feed_data) --

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        parser = self._parser
        status = parser.get_status_code()
        if status < 200:
            if status == 101:
                raise UpstreamError("protocol", "the upstream switched protocols: not supported")
            self._headers.clear()  # an interim response: swallowed
            return
        headers = self._headers
        keep_alive = parser.should_keep_alive() and not self._closing
        if parser.get_http_version() < "1.1":
            keep_alive = False
        if self._is_head:
            # llhttp cannot be told that a HEAD response has no body: the head
            # ends the response; what llhttp makes of any byte after it is junk.
            self._renew = True
            keep_alive = _keeps_alive(headers) and not self._closing
            self._keep_alive = keep_alive
            self._state = _DONE
            self._headers = []
            self._listener.on_head(status, headers)
            return
        if not keep_alive and status not in _NO_BODY:
            self._until_eof = _until_eof(headers)
        self._keep_alive = keep_alive
        self._state = _BODY
        self._headers = []  # trailers, if any, land here: not told
        self._listener.on_head(status, headers)

    def on_body(self, body: bytes) -> None:
        if self._state == _BODY:
            self._on_data(body)
        else:
            self._stop()  # after a HEAD response

    def on_message_complete(self) -> None:
        state = self._state
        if state == _BODY:
            self._state = _DONE
        elif state == _HEAD:
            self._head_bytes = 0  # an interim response ended: the next head starts

    def on_message_begin(self) -> None:
        if self._state == _DONE:
            self._stop()

    def _stop(self) -> None:
        """Bytes after the end of the response: stop parsing, do not reuse the connection."""
        self._junk = True
        raise _Stop

    def _failed(self, exc: Exception) -> None:
        cause = exc.__context__  # what a callback raised (httptools chains it)
        if type(cause) is _Stop or (cause is None and self._state == _DONE):
            self._junk = True  # bytes after a complete response
            return
        self._state = _BROKEN
        if cause is not None:  # an UpstreamError of ours, or the listener's own failure
            raise cause from None
        raise UpstreamError("protocol", f"malformed response: {exc}") from None

    def _fail_idle(self, state: int) -> None:
        self._state = _BROKEN
        if state == _BROKEN:
            raise UpstreamError("protocol", "the connection is broken")
        raise UpstreamError("protocol", "bytes arrived with no response expected")


_PARSER_ERRORS = (httptools.HttpParserError, httptools.HttpParserUpgrade)


class _Closed:
    """A closed framer's parser and listener: nothing reaches them (its state is broken)."""

    def feed_data(self, data: bytes) -> None:
        raise UpstreamError("protocol", "the connection is closed")

    def on_head(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        pass

    def on_data(self, data: bytes) -> None:
        pass

    def on_end(self, keep_alive: bool) -> None:
        pass


_CLOSED: Any = _Closed()


def _parser(framer: ResponseFramer) -> httptools.HttpResponseParser:
    parser = httptools.HttpResponseParser(framer)
    # As h11: with both Transfer-Encoding and Content-Length, the chunks frame
    # the body (RFC 9112 6.3 allows either that or an error).
    parser.set_dangerous_leniencies(lenient_chunked_length=True)
    return parser


def _keeps_alive(headers: list[tuple[bytes, bytes]]) -> bool:
    """No ``Connection: close`` among (lower-cased) headers."""
    for name, value in headers:
        if name == b"connection" and b"close" in [t.strip() for t in value.lower().split(b",")]:
            return False
    return True


def _until_eof(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether a response body is delimited by the connection's end (no length, no chunks)."""
    return all(name not in (b"content-length", b"transfer-encoding") for name, _ in headers)
