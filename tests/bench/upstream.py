"""A fast local OpenAI-style upstream for the benchmark.

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
  ``data: [DONE]``. Query string (or ``x-bench-*`` headers):
  ``events=N`` (default 50), ``delay_ms=D`` between events (default 0),
  ``first_ms=F`` before the first event (default 0; the head and the first
  event go out at once, so a time-to-first-event measurement holds no timer).
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
import sys
from typing import cast
from urllib.parse import parse_qs

__all__ = ["COMPLETION_BODY", "UpstreamProtocol", "main", "serve", "stream_body"]

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
                if path == b"/stream" or (b'"stream"' in body and _STREAM_RE.search(body)):
                    events, delay, first = _stream_params(target, lower)
                    if delay <= 0 and first <= 0:
                        out.append(_STREAM_HEADS[close])
                        out.append(stream_body(events))
                    else:
                        self._busy = True
                        out.append(_STREAM_HEADS[close])
                        if first <= 0 and events > 0:
                            out.append(_event_chunk(0, events))
                            start = 1
                        else:
                            start = 0
                        self._task = asyncio.get_running_loop().create_task(
                            self._slow_stream(start, events, delay, first, close)
                        )
                        break
                else:
                    out.append(_COMPLETION[close])
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
        self, start: int, events: int, delay: float, first: float, close: bool
    ) -> None:
        try:
            for i in range(start, events):
                await asyncio.sleep(first if i == 0 else delay)
                if self._transport is None:
                    return
                self._transport.write(_event_chunk(i, events))
            if self._transport is None:
                return
            self._transport.write(_DONE_CHUNK)
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
    server = await loop.create_server(UpstreamProtocol, host, port, backlog=1024)
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
