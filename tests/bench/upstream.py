"""A fast local OpenAI- and Anthropic-style upstream for the benchmark.

It must never be the bottleneck, so it does as little as it can: an asyncio
``Protocol`` (on uvloop when installed), a request head found with one
``find(b"\\r\\n\\r\\n")``, only ``Content-Length`` / chunked framing and
``Connection: close`` looked at, and every response it can pre-encode
pre-encoded at start-up. Keep-alive, and pipelined requests are answered in
order.

Routes:

- ``POST /v1/chat/completions`` (any other POST path too): a fixed
  ``chat.completion`` JSON of about 300 bytes.
- The same with ``"stream": true`` in the body, or ``POST /stream``: a chunked
  ``text/event-stream`` of N ``chat.completion.chunk`` events and
  ``data: [DONE]``. Query string (or ``x-bench-*`` headers, which is how a
  proxy that drops the query -- a translated request -- is told):
  ``events=N`` (default 50), ``delay_ms=D`` between events (default 0),
  ``first_ms=F`` before the first event (default 0; the head and the first
  event go out at once, so a time-to-first-event measurement holds no timer).
- ``POST /v1/messages`` (Anthropic Messages API): a fixed ``message`` JSON of
  about 300 bytes with usage; with ``"stream": true``, Anthropic's documented
  event sequence: ``message_start``, ``content_block_start``, ``ping``, N
  ``content_block_delta`` (``text_delta``, the same texts as the OpenAI
  stream's deltas), ``content_block_stop``, ``message_delta`` (``end_turn``,
  usage) and ``message_stop``, one SSE event per chunk. N, the delay and the
  first delay as above; they space the text deltas: the three events before
  the first delta go out with the head, the three after the last with it.
- ``GET /health``: ``{"status": "ok"}``. Anything else: 404.

Run: ``python -m tests.bench.upstream --port 0``; prints
``listening on http://HOST:PORT`` to stdout once it accepts connections.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import signal
import socket
import sys
from collections.abc import Callable
from typing import NamedTuple, cast
from urllib.parse import parse_qs

__all__ = [
    "COMPLETION_BODY",
    "MESSAGE_BODY",
    "UpstreamProtocol",
    "anthropic_stream_body",
    "delta_text",
    "main",
    "serve",
    "stream_body",
]

MAX_HEAD = 64 * 1024
MAX_BODY = 16 * 1024 * 1024
MAX_EVENTS = 100_000
DEFAULT_EVENTS = 50

COMPLETION_BODY = (
    b'{"id":"chatcmpl-bench0001","object":"chat.completion",'
    b'"created":1700000000,"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,'
    b'"message":{"role":"assistant","content":"Hello! How can I help you today?",'
    b'"refusal":null},"logprobs":null,"finish_reason":"stop"}],"usage":'
    b'{"prompt_tokens":9,"completion_tokens":9,"total_tokens":18},'
    b'"system_fingerprint":"fp_bench"}'
)

#: Anthropic's non-streaming answer (the Messages API's documented shape).
MESSAGE_BODY = (
    b'{"id":"msg_01BenchXq4r8Gd2vKp7sYt3Z","type":"message","role":"assistant",'
    b'"model":"claude-sonnet-4-5-20250929","content":[{"type":"text",'
    b'"text":"Hello! How can I help you today?"}],"stop_reason":"end_turn",'
    b'"stop_sequence":null,"usage":{"input_tokens":12,"cache_creation_input_tokens":0,'
    b'"cache_read_input_tokens":0,"output_tokens":12}}'
)


def delta_text(i: int) -> str:
    """The text of a stream's ``i``-th delta (OpenAI and Anthropic streams alike)."""
    return f" tok{i}"


def _response(status: bytes, content_type: bytes, body: bytes, *, close: bool) -> bytes:
    head = (
        b"HTTP/1.1 "
        + status
        + b"\r\ncontent-type: "
        + content_type
        + b"\r\ncontent-length: "
        + str(len(body)).encode()
    )
    if close:
        head += b"\r\nconnection: close"
    return head + b"\r\n\r\n" + body


_JSON = b"application/json"
_COMPLETION = {c: _response(b"200 OK", _JSON, COMPLETION_BODY, close=c) for c in (False, True)}
_MESSAGE = {c: _response(b"200 OK", _JSON, MESSAGE_BODY, close=c) for c in (False, True)}
_HEALTH = {c: _response(b"200 OK", _JSON, b'{"status":"ok"}', close=c) for c in (False, True)}
_NOT_FOUND = {
    c: _response(
        b"404 Not Found",
        _JSON,
        b'{"error":{"message":"not found","type":"invalid_request_error",'
        b'"param":null,"code":null}}',
        close=c,
    )
    for c in (False, True)
}
_BAD_REQUEST = _response(b"400 Bad Request", _JSON, b'{"error":"bad request"}', close=True)
_STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
    b"transfer-encoding: chunked\r\n"
)
_STREAM_HEADS = {False: _STREAM_HEAD + b"\r\n", True: _STREAM_HEAD + b"connection: close\r\n\r\n"}
_STREAM_RE = re.compile(rb'"stream"\s*:\s*true')
_CHUNK_END = b"0\r\n\r\n"


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _event(i: int, last: bool) -> bytes:
    finish = b'"stop"' if last else b"null"
    return (
        b'data: {"id":"chatcmpl-bench0001","object":"chat.completion.chunk",'
        b'"created":1700000000,"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,'
        b'"delta":{"content":" tok%d"},"logprobs":null,"finish_reason":%s}]}\n\n' % (i, finish)
    )


_DONE_CHUNK = _chunk(b"data: [DONE]\n\n") + _CHUNK_END
_event_chunks: list[bytes] = []
_stream_cache: dict[int, bytes] = {}


def _event_chunk(i: int, n: int) -> bytes:
    if i == n - 1:
        return _chunk(_event(i, True))
    while len(_event_chunks) <= i:
        _event_chunks.append(_chunk(_event(len(_event_chunks), False)))
    return _event_chunks[i]


def stream_body(n: int) -> bytes:
    """The chunked body of an ``n``-event stream (cached per ``n``)."""
    body = _stream_cache.get(n)
    if body is None:
        body = b"".join(_event_chunk(i, n) for i in range(n)) + _DONE_CHUNK
        if len(_stream_cache) < 64:
            _stream_cache[n] = body
    return body


# -- Anthropic Messages stream -----------------------------------------------------


def _sse(kind: bytes, data: bytes) -> bytes:
    """One named SSE event, as Anthropic sends them, in its own chunk."""
    return _chunk(b"event: " + kind + b"\ndata: " + data + b"\n\n")


_A_PRELUDE = (
    _sse(
        b"message_start",
        b'{"type":"message_start","message":{"id":"msg_01BenchXq4r8Gd2vKp7sYt3Z",'
        b'"type":"message","role":"assistant","content":[],'
        b'"model":"claude-sonnet-4-5-20250929","stop_reason":null,"stop_sequence":null,'
        b'"usage":{"input_tokens":12,"cache_creation_input_tokens":0,'
        b'"cache_read_input_tokens":0,"output_tokens":1}}}',
    )
    + _sse(
        b"content_block_start",
        b'{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}',
    )
    + _sse(b"ping", b'{"type":"ping"}')
)
_a_delta_chunks: list[bytes] = []
_a_tail_cache: dict[int, bytes] = {}
_a_stream_cache: dict[int, bytes] = {}


def _a_delta_chunk(i: int, n: int) -> bytes:
    while len(_a_delta_chunks) <= i:
        text = delta_text(len(_a_delta_chunks)).encode()
        _a_delta_chunks.append(
            _sse(
                b"content_block_delta",
                b'{"type":"content_block_delta","index":0,'
                b'"delta":{"type":"text_delta","text":"%s"}}' % text,
            )
        )
    return _a_delta_chunks[i]


def _a_tail(n: int) -> bytes:
    tail = _a_tail_cache.get(n)
    if tail is None:
        tail = (
            _sse(b"content_block_stop", b'{"type":"content_block_stop","index":0}')
            + _sse(
                b"message_delta",
                b'{"type":"message_delta","delta":{"stop_reason":"end_turn",'
                b'"stop_sequence":null},"usage":{"output_tokens":%d}}' % n,
            )
            + _sse(b"message_stop", b'{"type":"message_stop"}')
            + _CHUNK_END
        )
        if len(_a_tail_cache) < 64:
            _a_tail_cache[n] = tail
    return tail


def anthropic_stream_body(n: int) -> bytes:
    """The chunked body of an Anthropic stream with ``n`` text deltas (cached per ``n``)."""
    body = _a_stream_cache.get(n)
    if body is None:
        body = _A_PRELUDE + b"".join(_a_delta_chunk(i, n) for i in range(n)) + _a_tail(n)
        if len(_a_stream_cache) < 64:
            _a_stream_cache[n] = body
    return body


class _StreamKind(NamedTuple):
    """One API's stream: what goes before the deltas, each delta, what ends it, all of it."""

    prelude: bytes
    delta: Callable[[int, int], bytes]
    tail: Callable[[int], bytes]
    body: Callable[[int], bytes]


_OPENAI_STREAM = _StreamKind(b"", _event_chunk, lambda n: _DONE_CHUNK, stream_body)
_ANTHROPIC_STREAM = _StreamKind(_A_PRELUDE, _a_delta_chunk, _a_tail, anthropic_stream_body)


def _header(lower_head: bytes, name: bytes) -> bytes | None:
    """The value of header ``name`` (lower case, with the colon) in a lowered head."""
    start = lower_head.find(b"\r\n" + name)
    if start < 0:
        return None
    start += 2 + len(name)
    end = lower_head.find(b"\r\n", start)
    return lower_head[start : end if end >= 0 else len(lower_head)].strip()


def _stream_params(target: bytes, lower_head: bytes) -> tuple[int, float, float]:
    _, _, query = target.partition(b"?")
    params = parse_qs(query.decode("latin-1")) if query else {}

    def get(key: str, header: bytes, default: float) -> float:
        raw: str | bytes | None = params[key][0] if key in params else None
        if raw is None:
            raw = _header(lower_head, header)
        if raw is None:
            return default
        try:
            return max(0.0, float(raw))
        except ValueError:
            return default

    events = min(MAX_EVENTS, int(get("events", b"x-bench-events:", DEFAULT_EVENTS)))
    delay = get("delay_ms", b"x-bench-delay-ms:", 0.0) / 1000
    first = get("first_ms", b"x-bench-first-ms:", 0.0) / 1000
    return max(events, 0), delay, first


class UpstreamProtocol(asyncio.Protocol):
    """One client connection: parse requests, answer them in order."""

    __slots__ = ("_buf", "_busy", "_closing", "_paused", "_task", "_transport")

    def __init__(self) -> None:
        self._buf = b""
        self._busy = False  # a timed stream is being written; later requests wait
        self._closing = False
        self._paused = False
        self._task: asyncio.Task[None] | None = None
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses: cast, don't check.
        self._transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        if self._task is not None:
            self._task.cancel()
        self._transport = None

    def pause_writing(self) -> None:
        if self._transport is not None and not self._paused:
            self._paused = True
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        if self._transport is not None and self._paused:
            self._paused = False
            self._transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        self._buf = self._buf + data if self._buf else data
        if not self._busy:
            self._process()

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def _process(self) -> None:
        buf = self._buf
        pos = 0
        out: list[bytes] = []
        transport = self._transport
        while not self._closing:
            end = buf.find(b"\r\n\r\n", pos)
            if end < 0:
                if len(buf) - pos > MAX_HEAD:
                    out.append(_BAD_REQUEST)
                    self._closing = True
                break
            head = buf[pos:end]
            body_start = end + 4
            line_end = head.find(b"\r\n")
            request_line = head if line_end < 0 else head[:line_end]
            parts = request_line.split(b" ")
            if len(parts) != 3:
                out.append(_BAD_REQUEST)
                self._closing = True
                break
            method, target, version = parts
            lower = head.lower()
            close = b"\r\nconnection: close" in lower or (
                version == b"HTTP/1.0" and b"\r\nconnection: keep-alive" not in lower
            )
            if b"\r\ntransfer-encoding:" in lower:
                try:
                    decoded = _dechunk(buf, body_start)
                except ValueError:
                    out.append(_BAD_REQUEST)
                    self._closing = True
                    break
                if decoded is None:
                    break
                body, next_pos = decoded
            else:
                raw_length = _header(lower, b"content-length:")
                try:
                    length = int(raw_length) if raw_length is not None else 0
                except ValueError:
                    length = -1
                if not 0 <= length <= MAX_BODY:
                    out.append(_BAD_REQUEST)
                    self._closing = True
                    break
                next_pos = body_start + length
                if len(buf) < next_pos:
                    break
                body = buf[body_start:next_pos]
            pos = next_pos
            path = target.partition(b"?")[0]
            if method == b"POST":
                anthropic = path == b"/v1/messages"
                if path == b"/stream" or (b'"stream"' in body and _STREAM_RE.search(body)):
                    kind = _ANTHROPIC_STREAM if anthropic else _OPENAI_STREAM
                    events, delay, first = _stream_params(target, lower)
                    out.append(_STREAM_HEADS[close])
                    if delay <= 0 and first <= 0:
                        out.append(kind.body(events))
                    else:
                        self._busy = True
                        if kind.prelude:
                            out.append(kind.prelude)
                        if first <= 0 and events > 0:
                            out.append(kind.delta(0, events))
                            start = 1
                        else:
                            start = 0
                        self._task = asyncio.get_running_loop().create_task(
                            self._slow_stream(kind, start, events, delay, first, close=close)
                        )
                        break
                else:
                    out.append(_MESSAGE[close] if anthropic else _COMPLETION[close])
            elif method == b"GET" and path == b"/health":
                out.append(_HEALTH[close])
            else:
                out.append(_NOT_FOUND[close])
            if close:
                self._closing = True
        self._buf = buf[pos:] if pos else buf
        if transport is None:
            return
        if out:
            transport.write(out[0] if len(out) == 1 else b"".join(out))
        if self._closing:
            self._buf = b""
            transport.close()

    async def _slow_stream(
        self, kind: _StreamKind, start: int, events: int, delay: float, first: float, *, close: bool
    ) -> None:
        try:
            for i in range(start, events):
                await asyncio.sleep(first if i == 0 else delay)
                if self._transport is None:
                    return
                self._transport.write(kind.delta(i, events))
            if self._transport is None:
                return
            self._transport.write(kind.tail(events))
        except asyncio.CancelledError:
            return
        self._task = None
        self._busy = False
        if close:
            self._closing = True
            self._transport.close()
            return
        if self._buf:
            self._process()


def _dechunk(buf: bytes, pos: int) -> tuple[bytes, int] | None:
    """Decode a chunked body at ``pos``: (body, end), or None if incomplete.

    Raises ValueError on a malformed or oversized body.
    """
    parts: list[bytes] = []
    size_total = 0
    while True:
        line_end = buf.find(b"\r\n", pos)
        if line_end < 0:
            return None
        size = int(buf[pos:line_end].split(b";", 1)[0], 16)
        size_total += size
        if size < 0 or size_total > MAX_BODY:
            raise ValueError("bad chunk size")
        pos = line_end + 2
        if size == 0:
            # trailers: skip header lines up to the blank line
            while True:
                line_end = buf.find(b"\r\n", pos)
                if line_end < 0:
                    return None
                if line_end == pos:
                    return b"".join(parts), pos + 2
                pos = line_end + 2
        if len(buf) < pos + size + 2:
            return None
        parts.append(buf[pos : pos + size])
        pos += size + 2


async def serve(host: str, port: int, *, ready: asyncio.Future[int] | None = None) -> None:
    """Serve until cancelled; ``ready`` gets the bound port."""
    loop = asyncio.get_running_loop()
    # a deep accept queue: the many-clients phases open thousands of connections a second
    server = await loop.create_server(UpstreamProtocol, host, port, backlog=socket.SOMAXCONN)
    bound = server.sockets[0].getsockname()[1]
    if ready is not None:
        ready.set_result(int(bound))
    else:
        print(f"listening on http://{host}:{bound}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench.upstream", description="Fast local benchmark upstream."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--no-uvloop", action="store_true", help="use the default asyncio loop")
    args = parser.parse_args(argv)
    coro = serve(args.host, args.port)
    if not args.no_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            uvloop.run(coro)
            return 0
    asyncio.run(coro)
    return 0


if __name__ == "__main__":
    sys.exit(main())
