"""The response of one upstream attempt, relayed to the client.

A :class:`Relay` is made when an attempt's response head is accepted and
dropped with the attempt (a retry starts afresh). Between the upstream's bytes
and the exchange's ``send_body`` / ``send_blocks`` it:

1. decodes a gzip or deflate body the upstream sent although the proxy asked
   for identity, in bounded pieces (a bomb ends in the SSE size error);
2. cuts an event stream into whole SSE blocks, or holds a JSON body aside:
   a copy (up to 1 MiB) to read its usage, or all of it to translate it whole;
3. reads the usage (from the stream's events, or the JSON answer at its end);
4. translates the stream to the client's API, or strips the usage-only chunk
   the proxy asked for and the client did not.

Every failure is a ``RemoteProtocolError`` raised to the exchange, which
cancels the attempt and answers (an SSE error event once a stream is flowing).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from typing import Any

from ._config import LimitsConfig
from ._errors import NetworkError, RemoteProtocolError, detached
from ._headers import HOP_BY_HOP, Headers, connection_tokens
from ._json import JSONError, dumps, loads
from ._sse import SSEDecoder
from .gateway import Usage
from .gateway._plan import Plan, StreamTranslator
from .gateway._usage import StreamUsage, usage_from_anthropic, usage_from_openai

__all__ = ["Relay"]

_SSE_HEADERS = ((b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"))
# What still means something to a client whose answer is translated whole.
_KEPT_ON_TRANSLATION = frozenset({b"retry-after", b"request-id", b"x-request-id"})
# Content codings decoded here (the proxy asks for identity; some send these anyway).
_INFLATABLE = frozenset({b"gzip", b"x-gzip", b"deflate"})
_GZIP_OR_ZLIB = 32 + 15  # zlib's wbits: detect a gzip or zlib header
_ENCODING_HEADERS = frozenset({b"content-encoding", b"content-length"})
_INFLATE_PIECE = 1 << 16
# How a JSON body is held: not at all, a copy to read its usage, or whole to translate.
_PASS = 0
_COPY = 1
_HOLD = 2
_USAGE_COPY_LIMIT = 1 << 20


class Relay:
    """One attempt's response on its way to the client. Don't subclass."""

    __slots__ = (
        "_answer",
        "_buffer",
        "_buffer_size",
        "_buffering",
        "_decoder",
        "_inflater",
        "_length",
        "_limits",
        "_plan",
        "_send_blocks",
        "_send_body",
        "_settled",
        "_strip",
        "_translator",
        "_usage",
        "head",
        "kept",
        "status",
        "stream",
    )

    def __init__(
        self,
        plan: Plan,
        status: int,
        headers: Headers,
        *,
        limits: LimitsConfig,
        send_body: Callable[[bytes], None],
        send_blocks: Callable[[Sequence[bytes]], None],
        capture: bool = False,
        observed: bool = False,
    ) -> None:
        self._plan = plan
        self._limits = limits
        self._send_body = send_body
        self._send_blocks = send_blocks
        self._buffer: list[bytes] = []
        self._buffer_size = 0
        self._buffering = _PASS
        self._decoder: SSEDecoder | None = None
        self._inflater: Any = None  # a zlib decompressobj while a body is decoded
        self._translator: StreamTranslator | None = None
        self._usage: StreamUsage | None = None
        self._answer: Any = None  # the JSON answer, parsed at the end (or why not)
        self._settled = plan.usage_api is None
        self._strip = plan.strip_usage
        self.status = status
        #: Whether the answer is an event stream.
        self.stream = False
        #: The headers to start the client's response with, or None: held to the end.
        self.head: list[tuple[bytes, bytes]] | None = None
        #: The upstream headers kept for an answer translated whole.
        self.kept: list[tuple[bytes, bytes]] = []
        sse = False
        encoded = False
        dropped = HOP_BY_HOP
        self._length = -1  # the body's Content-Length, if it says one
        for name, value in headers:
            if name == b"connection":
                dropped = dropped | connection_tokens(value)
            elif name == b"content-length" and value.isdigit():
                self._length = int(value)
            elif name == b"content-type":
                sse = value[:17].lower() == b"text/event-stream"
            elif name == b"content-encoding":
                coding = value.strip().lower()
                if coding in _INFLATABLE:
                    self._inflater = zlib.decompressobj(_GZIP_OR_ZLIB)
                    dropped = dropped | _ENCODING_HEADERS
                else:
                    encoded = coding != b"identity"
        if sse and not encoded:
            self.stream = True
            self._decoder = SSEDecoder(max_event_size=limits.max_sse_event_size)
            if plan.usage_api is not None:
                self._usage = StreamUsage(plan.usage_api, max_json_items=limits.max_json_items)
                self._usage.observed = observed
                if capture:
                    self._usage.texts = []
            if plan.stream_translator is not None:
                self._translator = plan.stream_translator()
                self.head = list(_SSE_HEADERS)
                return
            dropped = dropped | {b"content-length"}
        elif plan.body_translator is not None:
            self._buffering = _HOLD
            self.kept = [(name, value) for name, value in headers if name in _KEPT_ON_TRANSLATION]
            return
        elif plan.usage_api is not None and status < 400:
            self._buffering = _COPY
        self.head = [(name, value) for name, value in headers if name not in dropped]

    def detach(self) -> None:
        """The exchange is over: let go of its callbacks. They refer back to it, so
        without this the two would be a cycle that only the garbage collector frees."""
        self._send_body = self._send_blocks = _nowhere

    def feed(self, data: bytes) -> None:
        """A chunk of the upstream body, as it arrived."""
        if self._inflater is None:
            self._take(data)
        else:
            self._inflate(data)

    def flush(self) -> None:
        """The upstream body ended: decode what the inflater still holds."""
        inflater = self._inflater
        if inflater is not None:
            self._inflater = None
            tail = inflater.flush()
            if tail:
                self._take(tail)

    def close(self) -> bytes | None:
        """After :meth:`flush`: relay what is left; the translated answer when held whole."""
        decoder = self._decoder
        if decoder is not None:
            # close() cannot fail on size: feed() already bounded the last block.
            blocks = decoder.close()
            if blocks:
                self._relay(blocks)
            if self._translator is not None:
                tail = self._translator.close()
                if tail:
                    self._send_blocks(tail)
            return None
        if not self._buffering:
            return None
        body = b"".join(self._buffer)
        self._buffer = []
        answer: Any = None
        if self.status < 400:
            try:
                answer = loads(body, max_items=self._limits.max_json_items)
            except JSONError as exc:
                answer = detached(exc)
        self._answer = answer
        if self._buffering == _COPY:
            return None
        plan = self._plan
        assert plan.body_translator is not None and plan.error_translator is not None
        if self.status >= 400:
            return plan.error_translator(self.status, body)
        if not isinstance(answer, dict):
            why = (
                f"not valid JSON ({answer})"
                if isinstance(answer, JSONError)
                else "not a JSON object"
            )
            raise NetworkError(f"the upstream's answer is {why}", code="upstream_protocol_error")
        return dumps(plan.body_translator(answer))

    def whole(self) -> bool:
        """Whether all of a JSON answer read for its usage was relayed, as long as its
        Content-Length says, its end not handled yet: then it is read, as at its end."""
        if (
            self._buffering == _COPY
            and self._inflater is None
            and self._buffer_size == self._length
        ):
            self.close()
            self._buffering = _PASS  # read: nothing more to close
            return True
        return False

    def settle(self, input_estimate: int) -> tuple[Usage | None, bool] | None:
        """The usage read (and whether it is an estimate), once; None if there is none.

        A stream cut short is estimated (``input_estimate`` tokens of input if
        it reported none); a JSON answer counts only once read whole.
        """
        if self._settled:
            return None
        stream = self._usage
        if stream is not None:
            self._settled = True
            return stream.settle(input_estimate)
        answer = self._answer
        if not isinstance(answer, dict):
            return None
        self._settled = True
        if self._plan.usage_api == "openai":
            return usage_from_openai(answer), False
        return usage_from_anthropic(answer), False

    def response_info(self) -> tuple[str | None, str | None, tuple[str, ...]]:
        """The upstream response's id, model and finish reasons, as far as they were read
        (from the JSON answer, or the stream events parsed for their usage)."""
        stream = self._usage
        if stream is not None:
            return stream.response_id, stream.response_model, tuple(stream.finish_reasons)
        answer = self._answer
        if type(answer) is not dict:
            return None, None, ()
        get = answer.get
        identity, model = get("id"), get("model")
        reasons: tuple[str, ...] = ()
        choices = get("choices")
        if type(choices) is list:
            for choice in choices:
                reason = choice.get("finish_reason") if type(choice) is dict else None
                if type(reason) is str:
                    reasons += (reason,)
        else:
            reason = get("stop_reason")
            if type(reason) is str:
                reasons = (reason,)
        return (
            identity if type(identity) is str else None,
            model if type(model) is str else None,
            reasons,
        )

    def output_text(self) -> str | None:
        """The generated text, as far as it was read (for ``capture_content``)."""
        stream = self._usage
        if stream is not None:
            if stream.texts is None:
                return None
            return "".join(_unescape(piece) for piece in stream.texts)
        answer = self._answer
        if not isinstance(answer, dict):
            return None
        choices = answer.get("choices")
        if isinstance(choices, list) and choices and isinstance(choices[0], dict):
            message = choices[0].get("message")
            if isinstance(message, dict) and isinstance(message.get("content"), str):
                return str(message["content"])
            text = choices[0].get("text")
            return text if isinstance(text, str) else None
        content = answer.get("content")
        if isinstance(content, list):
            return "".join(
                block["text"]
                for block in content
                if isinstance(block, dict) and isinstance(block.get("text"), str)
            )
        return None

    def _inflate(self, data: bytes) -> None:
        """Decode a gzip or deflate body in bounded pieces (no bomb fills memory)."""
        inflater = self._inflater
        while data:
            try:
                piece = inflater.decompress(data, _INFLATE_PIECE)
            except zlib.error:
                raise NetworkError(
                    "the upstream's compressed body is corrupt", code="upstream_protocol_error"
                ) from None
            data = inflater.unconsumed_tail
            if piece:
                self._take(piece)

    def _take(self, data: bytes) -> None:
        """A piece of the (decoded) body: relay, reframe or hold it."""
        decoder = self._decoder
        if decoder is not None:
            blocks = decoder.feed(data)
            if blocks:
                self._relay(blocks)
            return
        buffering = self._buffering
        if buffering:
            size = self._buffer_size + len(data)
            if buffering == _HOLD:
                if size > self._limits.max_body_size:
                    raise NetworkError(
                        "the upstream's answer is too large to translate",
                        code="upstream_response_too_large",
                    )
                self._buffer.append(data)
                self._buffer_size = size
                return
            if size <= _USAGE_COPY_LIMIT:
                self._buffer.append(data)
                self._buffer_size = size
        self._send_body(data)

    def _relay(self, blocks: list[bytes]) -> None:
        """Whole upstream SSE blocks: read usage, translate or strip, send."""
        usage = self._usage
        if usage is not None:
            if self._strip:  # the usage-only chunk the client did not ask for
                blocks = [block for block in blocks if not usage.feed(block)]
            else:
                for block in blocks:
                    usage.feed(block)
        translator = self._translator
        if translator is not None:
            out: list[bytes] = []
            try:
                for block in blocks:
                    out.extend(translator.feed(block))
            except RemoteProtocolError:
                if out:  # what was translated before the fault reaches the client
                    self._send_blocks(out)
                raise
            blocks = out
        if blocks:
            self._send_blocks(blocks)


def _nowhere(_: object) -> None:
    """A detached relay's callbacks: it is never fed again."""


def _unescape(piece: bytes) -> str:
    """A JSON string's body as text (an invalid one as it came)."""
    try:
        value = loads(b'"' + piece + b'"')
    except JSONError:
        return piece.decode("utf-8", "replace")
    return value if isinstance(value, str) else ""
