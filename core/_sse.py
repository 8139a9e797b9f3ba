"""Server-Sent Events: an incremental decoder, a block parser and an encoder.

The decoder only *frames*: it cuts the byte stream into blocks (the lines of one
event, up to a blank line) and hands each back as canonical bytes -- LF line ends,
ending with exactly ``b"\\n\\n"``. A stream with LF line ends is passed through
untouched: each block is a slice of the bytes fed, never re-encoded. Fields are
only parsed on demand, by :func:`parse_block`, following the WHATWG HTML
"event stream interpretation" rules.
"""

from __future__ import annotations

from contextlib import suppress
from dataclasses import dataclass

from ._errors import LocalProtocolError, NetworkError, RemoteProtocolError

__all__ = ["SSEDecoder", "SSEEvent", "is_final_event", "parse_block"]

_BOM = b"\xef\xbb\xbf"
_LF = 10  # ord("\n")

# Decoder states.
_OPEN = 0
_CLOSED = 1
_BROKEN = 2


def _local_error(msg: str) -> LocalProtocolError:
    return LocalProtocolError(msg, error_status_hint=500, error_type="server_error")


@dataclass(frozen=True, slots=True, kw_only=True)
class SSEEvent:
    """One parsed event block.

    ``data`` is the event's data lines joined with ``"\\n"``; ``has_data`` tells
    ``data=""`` from a block without any ``data`` field (a non-empty ``data``
    sets it). ``comments`` holds the text of comment lines, one leading space
    removed. Fields that cannot be sent on the wire raise ``LocalProtocolError``.
    """

    data: str = ""
    event: str | None = None
    id: str | None = None
    retry: int | None = None
    comments: tuple[str, ...] = ()
    has_data: bool = False

    def __post_init__(self) -> None:
        data, event, id_ = self.data, self.event, self.id
        if data:
            if "\r" in data:
                raise _local_error("SSE data must not contain CR")
            if not self.has_data:
                object.__setattr__(self, "has_data", True)
        if event is not None and ("\n" in event or "\r" in event):
            raise _local_error("SSE event must not contain CR or LF")
        if id_ is not None and ("\n" in id_ or "\r" in id_ or "\0" in id_):
            raise _local_error("SSE id must not contain CR, LF or NUL")
        if self.retry is not None and self.retry < 0:
            raise _local_error("SSE retry must not be negative")
        for comment in self.comments:
            if "\n" in comment or "\r" in comment:
                raise _local_error("SSE comments must not contain CR or LF")

    def encode(self) -> bytes:
        """The canonical block: comments, event, id, retry, data lines, blank line.

        An event with no comment and no field encodes to ``b""``.
        """
        lines = [": " + c if c else ":" for c in self.comments]
        if self.event is not None:
            lines.append("event: " + self.event if self.event else "event:")
        if self.id is not None:
            lines.append("id: " + self.id if self.id else "id:")
        if self.retry is not None:
            lines.append(f"retry: {self.retry}")
        if self.has_data:
            lines.extend("data: " + d if d else "data:" for d in self.data.split("\n"))
        if not lines:
            return b""
        lines.append("\n")
        return "\n".join(lines).encode()


def parse_block(block: bytes) -> SSEEvent:
    """Parse one block, as returned by :meth:`SSEDecoder.feed`; never raises.

    Bytes are decoded as UTF-8 with replacement; CR and CRLF also end lines;
    blank lines are skipped and unknown fields ignored.
    """
    if (  # the usual block, one "data: ..." line: skip the line loop
        block[:6] == b"data: "
        and block.find(b"\n") == len(block) - 2
        and block[-1] == _LF
        and b"\r" not in block
    ):
        return SSEEvent(data=block[6:-2].decode("utf-8", "replace"), has_data=True)
    text = block.decode("utf-8", "replace")
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    data: list[str] = []
    comments: list[str] = []
    event: str | None = None
    id_: str | None = None
    retry: int | None = None
    for line in text.split("\n"):
        colon = line.find(":")
        if colon == 0:
            comments.append(line[2:] if line[1:2] == " " else line[1:])
            continue
        if colon < 0:
            if not line:
                continue
            name, value = line, ""
        else:
            name = line[:colon]
            value = line[colon + 2 :] if line[colon + 1 : colon + 2] == " " else line[colon + 1 :]
        if name == "data":
            data.append(value)
        elif name == "event":
            event = value
        elif name == "id":
            if "\0" not in value:
                id_ = value
        elif name == "retry" and value.isascii() and value.isdigit():
            with suppress(ValueError):  # more digits than int() accepts: ignored
                retry = int(value)
    return SSEEvent(
        data="\n".join(data),
        event=event,
        id=id_,
        retry=retry,
        comments=tuple(comments),
        has_data=bool(data),
    )


class SSEDecoder:
    """Cut an SSE byte stream, split anyhow, into canonical blocks.

    ``feed`` returns the blocks completed so far; ``close`` (at EOF) returns the
    last one if it lacked its blank line. A block larger than ``max_event_size``
    bytes (its lines with their line ends, the final blank line not counted)
    raises ``RemoteProtocolError`` (502, ``sse_event_too_large``); after that,
    every call raises again.
    """

    __slots__ = ("_after_cr", "_at_start", "_buf", "_error", "_max", "_state")

    def __init__(self, *, max_event_size: int = 1 << 20) -> None:
        if max_event_size < 1:
            raise ValueError("max_event_size must be at least 1")
        self._max = max_event_size
        # The pending incomplete block: LF line ends only, never starts with LF,
        # never contains b"\n\n". At the start of the stream, a partial BOM.
        self._buf = bytearray()
        self._at_start = True
        self._after_cr = False  # the last chunk ended with CR: skip a leading LF
        self._state = _OPEN
        self._error: RemoteProtocolError | None = None

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """Take the next bytes of the stream; return the blocks now complete."""
        if self._state != _OPEN:
            raise self._unusable("feed")
        if type(data) is not bytes:
            data = bytes(data)
        if not data:
            return []
        buf = self._buf
        # The usual chunk: one whole block, nothing pending (an event per read).
        n = len(data)
        if (
            not (buf or self._at_start or self._after_cr)
            and n > 2
            and data.find(b"\n\n") == n - 2
            and data[0] != _LF
            and n <= self._max + 1
            and b"\r" not in data
        ):
            return [data]
        if self._at_start:
            if buf:
                data = bytes(buf) + data
                buf.clear()
            if len(data) < 3 and _BOM.startswith(data):
                buf += data
                return []
            self._at_start = False
            if data.startswith(_BOM):
                data = data[3:]
                if not data:
                    return []
        if self._after_cr:
            self._after_cr = False
            if data[0] == _LF:
                data = data[1:]
                if not data:
                    return []
        if b"\r" in data:
            self._after_cr = data[-1] == 13
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")

        limit = self._max + 1  # on len(block), which counts the final blank line
        blocks: list[bytes] = []
        pos = 0
        if buf:
            # The pending block may end right at the boundary ("...\n" + "\n...").
            if buf[-1] == _LF and data[0] == _LF:
                pos = 1
                first = bytes(buf) + b"\n"
            else:
                end = data.find(b"\n\n")
                if end < 0:
                    if len(buf) + len(data) > self._max:
                        raise self._too_large()
                    buf += data
                    return []
                pos = end + 2
                first = b"".join((buf, memoryview(data)[:pos]))
            if len(first) > limit:
                raise self._too_large()
            blocks.append(first)
            buf.clear()

        # Most blocks are one line: find its LF (memchr, several times faster
        # than searching for b"\n\n") and look at the byte after it. Only a
        # block of several lines needs the slower search for b"\n\n".
        n = len(data)
        find = data.find
        while pos < n and data[pos] == _LF:  # blank lines before a block
            pos += 1
        i = find(b"\n", pos)
        while i >= 0:
            end = i + 1
            if end < n and data[end] == _LF:
                end += 1
            else:
                end = find(b"\n\n", end) + 2
                if end < 2:
                    break
            if end - pos > limit:
                raise self._too_large()
            blocks.append(data[pos:end])
            while end < n and data[end] == _LF:  # blank lines between blocks
                end += 1
            pos = end
            i = find(b"\n", end)
        if n - pos > self._max:
            raise self._too_large()
        if pos < n:
            buf += memoryview(data)[pos:]
        return blocks

    def close(self) -> list[bytes]:
        """Signal EOF; return the last block if it lacked its blank line."""
        if self._state != _OPEN:
            raise self._unusable("close")
        self._state = _CLOSED
        buf = self._buf
        if not buf:
            return []
        block = bytes(buf) + (b"\n" if buf[-1] == _LF else b"\n\n")
        buf.clear()
        if len(block) > self._max + 1:
            raise self._too_large()
        return [block]

    def _too_large(self) -> RemoteProtocolError:
        self._state = _BROKEN
        self._buf = bytearray()
        self._error = NetworkError(
            f"upstream SSE event larger than {self._max} bytes", code="sse_event_too_large"
        )
        return self._error

    def _unusable(self, method: str) -> LocalProtocolError | RemoteProtocolError:
        error = self._error
        if error is None:
            return _local_error(f"SSEDecoder.{method}() called after close()")
        return NetworkError(
            f"SSEDecoder.{method}() called after an error: {error}", code=error.code
        )


_FINAL_EVENTS = frozenset({"message_stop", "response.completed"})


def is_final_event(block: bytes) -> bool:
    """Whether a block is the last event of a successful LLM stream.

    OpenAI's ``data: [DONE]``, Anthropic's ``message_stop``, the Responses
    API's ``response.completed``. Cheap on every other block: it parses only a
    block that names one of them.
    """
    if b"[DONE]" in block:
        return parse_block(block).data.strip() == "[DONE]"
    if b"message_stop" in block or b"response.completed" in block:
        return parse_block(block).event in _FINAL_EVENTS
    return False
