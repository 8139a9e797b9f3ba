"""A small asyncio load client for streamed responses (wrk does the rest).

Raw sockets, keep-alive, one request at a time per connection, a minimal
HTTP/1.1 response parser (Content-Length, chunked, or read-until-close) that
notes the moment the first ``data:`` line of the body arrives and counts the
SSE events of each response.

Subcommands (each prints one JSON object on stdout):

- ``streams``: N concurrent connections stream E-event responses for D seconds;
  streams/s and events/s.
- ``ttfe``: at concurrency 1, R requests for a slow stream (events spaced
  ``--delay-ms`` apart, the first sent with the head); time from sending the
  request to receiving the first ``data:`` event.
- ``check``: one plain and one streamed request; says whether both look right.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import re
import statistics
import sys
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, cast

from tests.bench.upstream import COMPLETION_BODY

__all__ = [
    "Response",
    "check",
    "main",
    "percentile",
    "run_streams",
    "run_ttfe",
]

PATH = "/v1/chat/completions"
MAX_RESPONSE = 64 * 1024 * 1024
REQUEST_TIMEOUT = 30.0
_DONE = re.compile(rb"(?m)^data: ?\[DONE\]")


def build_request(host: str, port: int, target: str, *, stream: bool) -> bytes:
    """A keep-alive POST with a small OpenAI-style chat body."""
    body = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello."}]' + (
        b',"stream":true}' if stream else b"}"
    )
    return (
        f"POST {target} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        "Content-Type: application/json\r\nAuthorization: Bearer sk-bench-not-a-secret\r\n"
        f"Accept: {'text/event-stream' if stream else 'application/json'}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


@dataclass(slots=True)
class Response:
    """One response as the load client saw it."""

    status: int = 0
    headers: dict[bytes, bytes] = field(default_factory=dict)
    parts: list[bytes] = field(default_factory=list)
    t_sent: float = 0.0
    t_first_event: float | None = None
    t_done: float = 0.0
    keep_alive: bool = True

    @property
    def body(self) -> bytes:
        return b"".join(self.parts)

    def events(self) -> int:
        """The number of ``data:`` lines, not counting ``data: [DONE]`` (LF or CRLF lines)."""
        body = self.body
        data = body.count(b"\ndata:") + body.startswith(b"data:")
        return data - body.count(b"data: [DONE]") - body.count(b"data:[DONE]")


class ProtocolError(Exception):
    """The server sent something this client cannot parse."""


_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_CRLF, _TRAILER, _UNTIL_CLOSE, _DONE_STATE = range(
    8
)


class _Parser:
    """Incremental HTTP/1.1 response parser; ``feed`` returns True when complete."""

    __slots__ = ("_buf", "_remaining", "_size", "_state", "_tail", "response")

    def __init__(self, response: Response) -> None:
        self.response = response
        self._buf = b""
        self._state = _HEAD
        self._remaining = 0
        self._size = 0
        self._tail = b""

    def _body(self, piece: bytes) -> None:
        if not piece:
            return
        r = self.response
        r.parts.append(piece)
        self._size += len(piece)
        if self._size > MAX_RESPONSE:
            raise ProtocolError("response too large")
        if r.t_first_event is None:
            seen = self._tail + piece
            if b"data:" in seen:
                r.t_first_event = time.perf_counter()
            else:
                self._tail = seen[-4:]

    def feed_eof(self) -> bool:
        if self._state == _UNTIL_CLOSE:
            self._state = _DONE_STATE
            return True
        return False

    def feed(self, data: bytes) -> bool:
        buf = self._buf + data if self._buf else data
        pos = 0
        state = self._state
        r = self.response
        try:
            while pos < len(buf) or state == _DONE_STATE:
                if state == _HEAD:
                    end = buf.find(b"\r\n\r\n", pos)
                    if end < 0:
                        if len(buf) - pos > 65536:
                            raise ProtocolError("response head too large")
                        break
                    lines = buf[pos:end].split(b"\r\n")
                    pos = end + 4
                    parts = lines[0].split(b" ", 2)
                    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
                        raise ProtocolError(f"bad status line {lines[0]!r}")
                    status = int(parts[1])
                    if 100 <= status < 200:
                        continue
                    r.status = status
                    headers = r.headers
                    for line in lines[1:]:
                        name, _, value = line.partition(b":")
                        headers[name.strip().lower()] = value.strip()
                    conn = headers.get(b"connection", b"").lower()
                    r.keep_alive = parts[0] == b"HTTP/1.1" and b"close" not in conn
                    if status in (204, 304):
                        state = _DONE_STATE
                    elif b"chunked" in headers.get(b"transfer-encoding", b"").lower():
                        state = _CHUNK_SIZE
                    elif b"content-length" in headers:
                        self._remaining = int(headers[b"content-length"])
                        state = _LENGTH if self._remaining else _DONE_STATE
                    else:
                        r.keep_alive = False
                        state = _UNTIL_CLOSE
                elif state == _LENGTH:
                    take = min(self._remaining, len(buf) - pos)
                    self._body(buf[pos : pos + take])
                    pos += take
                    self._remaining -= take
                    if not self._remaining:
                        state = _DONE_STATE
                elif state == _CHUNK_SIZE:
                    end = buf.find(b"\r\n", pos)
                    if end < 0:
                        break
                    self._remaining = int(buf[pos:end].split(b";", 1)[0], 16)
                    pos = end + 2
                    state = _CHUNK_DATA if self._remaining else _TRAILER
                elif state == _CHUNK_DATA:
                    take = min(self._remaining, len(buf) - pos)
                    self._body(buf[pos : pos + take])
                    pos += take
                    self._remaining -= take
                    if not self._remaining:
                        state = _CHUNK_CRLF
                elif state == _CHUNK_CRLF:
                    if len(buf) - pos < 2:
                        break
                    if buf[pos : pos + 2] != b"\r\n":
                        raise ProtocolError("bad chunk end")
                    pos += 2
                    state = _CHUNK_SIZE
                elif state == _TRAILER:
                    end = buf.find(b"\r\n", pos)
                    if end < 0:
                        break
                    if end == pos:
                        state = _DONE_STATE
                    pos = end + 2
                elif state == _UNTIL_CLOSE:
                    self._body(buf[pos:])
                    pos = len(buf)
                else:  # _DONE_STATE
                    if pos < len(buf):
                        raise ProtocolError("data after the response")
                    self._state = state
                    self._buf = b""
                    return True
        except ValueError as exc:
            raise ProtocolError(str(exc)) from exc
        self._state = state
        self._buf = buf[pos:] if pos < len(buf) else b""
        return False


class _Connection(asyncio.Protocol):
    """One keep-alive client connection, one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._parser: _Parser | None = None
        self._waiter: asyncio.Future[Response] | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        if parser is None:
            self._fail(ProtocolError("unsolicited data"))
            return
        try:
            complete = parser.feed(data)
        except ProtocolError as exc:
            self._fail(exc)
            return
        if complete:
            self._finish(parser.response)

    def eof_received(self) -> bool | None:
        parser = self._parser
        if parser is not None and parser.feed_eof():
            self._finish(parser.response)
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(ConnectionError(f"connection lost: {exc or 'closed by peer'}"))

    def _finish(self, response: Response) -> None:
        response.t_done = time.perf_counter()
        self._parser = None
        if self._timer is not None:
            self._timer.cancel()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(response)
        if not response.keep_alive:
            self.close()

    def _fail(self, exc: Exception) -> None:
        self._parser = None
        if self._timer is not None:
            self._timer.cancel()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)
        self.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    async def request(self, raw: bytes, timeout: float = REQUEST_TIMEOUT) -> Response:
        if self.closed or self.transport is None:
            raise ConnectionError("connection closed")
        loop = asyncio.get_running_loop()
        response = Response()
        self._parser = _Parser(response)
        waiter: asyncio.Future[Response] = loop.create_future()
        self._waiter = waiter
        self._timer = loop.call_later(timeout, self._fail, TimeoutError("request timed out"))
        response.t_sent = time.perf_counter()
        self.transport.write(raw)
        return await waiter


async def _connect(host: str, port: int) -> _Connection:
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(_Connection, host, port)
    return conn


class _Session:
    """A connection that reconnects when the server closed it."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.conn: _Connection | None = None

    async def request(self, raw: bytes) -> Response:
        if self.conn is None or self.conn.closed:
            self.conn = await _connect(self.host, self.port)
        return await self.conn.request(raw)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile (``pct`` in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(pct / 100 * len(ordered))))
    return ordered[rank - 1]


async def run_streams(
    host: str, port: int, *, concurrency: int, duration: float, events: int
) -> dict[str, Any]:
    """Stream ``events``-event responses on ``concurrency`` connections for ``duration`` s."""
    raw = build_request(host, port, f"{PATH}?events={events}&delay_ms=0", stream=True)
    completed = 0
    total_events = 0
    errors: dict[str, int] = {}
    durations: list[float] = []

    def error(kind: str) -> None:
        errors[kind] = errors.get(kind, 0) + 1

    async def worker(deadline: float) -> None:
        nonlocal completed, total_events
        session = _Session(host, port)
        try:
            while time.perf_counter() < deadline:
                try:
                    response = await session.request(raw)
                except (OSError, ProtocolError) as exc:
                    error(type(exc).__name__)
                    await asyncio.sleep(0.01)  # back off: the server may be gone
                    continue
                if response.status != 200:
                    error(f"status {response.status}")
                    continue
                got = response.events()
                if got != events:
                    error("wrong event count")
                completed += 1
                total_events += got
                durations.append(response.t_done - response.t_sent)
        finally:
            session.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker(start + duration) for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    return {
        "concurrency": concurrency,
        "events_per_stream": events,
        "streams": completed,
        "events": total_events,
        "elapsed_s": elapsed,
        "streams_per_s": completed / elapsed,
        "events_per_s": total_events / elapsed,
        "stream_p50_ms": percentile(durations, 50) * 1000 if durations else None,
        "stream_p99_ms": percentile(durations, 99) * 1000 if durations else None,
        "errors": sum(errors.values()),
        "error_kinds": errors,
    }


async def run_ttfe(
    host: str, port: int, *, requests: int, events: int, delay_ms: float
) -> dict[str, Any]:
    """Time to first event of a slow stream, at concurrency 1 on one keep-alive connection."""
    raw = build_request(
        host, port, f"{PATH}?events={events}&delay_ms={delay_ms:g}&first_ms=0", stream=True
    )
    session = _Session(host, port)
    samples: list[float] = []
    errors: dict[str, int] = {}
    try:
        for _ in range(requests):
            try:
                response = await session.request(raw)
            except (OSError, ProtocolError) as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                await asyncio.sleep(0.01)
                continue
            if response.status != 200 or response.t_first_event is None:
                errors[f"status {response.status}"] = errors.get(f"status {response.status}", 0) + 1
                continue
            if response.events() != events:
                errors["wrong event count"] = errors.get("wrong event count", 0) + 1
            samples.append(response.t_first_event - response.t_sent)
    finally:
        session.close()
    ms = [s * 1000 for s in samples]
    return {
        "requests": requests,
        "events": events,
        "delay_ms": delay_ms,
        "samples": len(ms),
        "median_ms": statistics.median(ms) if ms else None,
        "p90_ms": percentile(ms, 90) if ms else None,
        "min_ms": min(ms) if ms else None,
        "max_ms": max(ms) if ms else None,
        "errors": sum(errors.values()),
        "error_kinds": errors,
    }


async def check(host: str, port: int, timeout: float = 10.0) -> str | None:
    """One plain and one streamed request; None if both are right, else what is wrong."""
    conn: _Connection | None = None
    try:
        conn = await _connect(host, port)
        plain = await conn.request(build_request(host, port, PATH, stream=False), timeout)
        if plain.status != 200:
            return f"plain request: status {plain.status}: {plain.body[:200]!r}"
        if plain.body != COMPLETION_BODY:
            return f"plain request: body differs from the upstream's: {plain.body[:200]!r}"
        if conn.closed:
            conn = await _connect(host, port)
        streamed = await conn.request(
            build_request(host, port, f"{PATH}?events=5&delay_ms=0", stream=True), timeout
        )
        if streamed.status != 200:
            return f"streamed request: status {streamed.status}: {streamed.body[:200]!r}"
        if streamed.events() != 5 or not _DONE.search(streamed.body):
            return f"streamed request: expected 5 events and [DONE], got {streamed.body[:300]!r}"
    except (OSError, ProtocolError) as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        if conn is not None:
            conn.close()
    return None


def _run(coro: Coroutine[Any, Any, Any], *, use_uvloop: bool) -> Any:
    if use_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.run(coro)
    return asyncio.run(coro)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench.loadgen", description="Load client for streamed responses."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--no-uvloop", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    p_streams = sub.add_parser("streams", help="stream throughput")
    p_streams.add_argument("--concurrency", type=int, default=16)
    p_streams.add_argument("--duration", type=float, default=5.0)
    p_streams.add_argument("--events", type=int, default=50)
    p_ttfe = sub.add_parser("ttfe", help="time to first event on a slow stream")
    p_ttfe.add_argument("--requests", type=int, default=50)
    p_ttfe.add_argument("--events", type=int, default=3)
    p_ttfe.add_argument("--delay-ms", type=float, default=50.0)
    sub.add_parser("check", help="one plain and one streamed request")
    args = parser.parse_args(argv)
    use_uvloop = not args.no_uvloop
    result: dict[str, Any]
    if args.command == "streams":
        result = _run(
            run_streams(
                args.host,
                args.port,
                concurrency=args.concurrency,
                duration=args.duration,
                events=args.events,
            ),
            use_uvloop=use_uvloop,
        )
    elif args.command == "ttfe":
        result = _run(
            run_ttfe(
                args.host,
                args.port,
                requests=args.requests,
                events=args.events,
                delay_ms=args.delay_ms,
            ),
            use_uvloop=use_uvloop,
        )
    else:
        problem = _run(check(args.host, args.port), use_uvloop=use_uvloop)
        result = {"ok": problem is None, "problem": problem}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
