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
  request to receiving the first ``data:`` event. ``--pair PORT:MODEL:EVENTS``
  measures a second server in the same rounds, alternating, and reports the
  median of the per-round differences.
- ``slow-streams``: N connections, opened evenly over ``--ramp-s``, each
  streaming responses of E events spaced ``--delay-ms`` apart (the upstream
  writes each event on its own, so each arrives in its own read) until
  ``--duration`` s have passed (at least one each); time to first event
  p50/p99 of every stream, the streams in flight at the peak, errors, and this
  client's own CPU use (so a reader can tell it was not the bottleneck).
- ``idle``: N keep-alive connections, each sending one request and keeping
  the connection open once answered; after ``--hold-s`` s, how many are still
  open and whether a new request on ``--probes`` of them is answered. Prints
  ``MARK holding`` on stderr when all are open and the hold starts.
- ``check``: one plain and one streamed request; says whether both look right.

The many-connection commands raise this process's ``RLIMIT_NOFILE`` soft limit
to its hard limit.

Every request carries ``BENCH_KEY`` (``Authorization: Bearer``, or ``x-api-key``
on ``/v1/messages``), as ``post.lua`` does for wrk: a gateway with the ``auth``
middleware knows it as a virtual key. :func:`check_policies` checks such a
gateway admits it (and says so in ``x-ratelimit-*`` headers) and refuses a
request without it.

``--model`` names the model the requests ask for (a gateway's public model);
``--expect-events`` the ``data:`` events a stream must bring (not counting
``data: [DONE]``) when it is not ``--events`` -- a stream translated from
Anthropic's brings a role chunk and a finish chunk around its text deltas.
:func:`check_translated` parses such a stream event by event.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import re
import resource
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from tests.bench.upstream import COMPLETION_BODY, MESSAGE_BODY, delta_text

__all__ = [
    "BENCH_KEY",
    "DEFAULT_MODEL",
    "Response",
    "check",
    "check_anthropic_upstream",
    "check_policies",
    "check_translated",
    "check_unknown_model",
    "main",
    "first_answer",
    "percentile",
    "raise_nofile",
    "run_idle",
    "run_slow_streams",
    "run_streams",
    "run_ttfe",
]

PATH = "/v1/chat/completions"
MESSAGES_PATH = "/v1/messages"
DEFAULT_MODEL = "gpt-4o-mini"
#: the client's credential in every request (post.lua sends the same to wrk)
BENCH_KEY = "sk-bench-not-a-secret"
MAX_RESPONSE = 64 * 1024 * 1024
REQUEST_TIMEOUT = 30.0
_DONE = re.compile(rb"(?m)^data: ?\[DONE\]")


def build_request(
    host: str,
    port: int,
    target: str,
    *,
    stream: bool,
    model: str = DEFAULT_MODEL,
    key: str | None = BENCH_KEY,
) -> bytes:
    """A keep-alive POST with a small OpenAI-style chat body (or Anthropic's, to /v1/messages),
    sending ``key`` (None: no credential)."""
    if target.partition("?")[0] == MESSAGES_PATH:
        extra = b',"max_tokens":64'
        auth = "anthropic-version: 2023-06-01\r\n" + (
            "" if key is None else f"x-api-key: {key}\r\n"
        )
    else:
        extra = b""
        auth = "" if key is None else f"Authorization: Bearer {key}\r\n"
    body = (
        b'{"model":'
        + json.dumps(model).encode()
        + b',"messages":[{"role":"user","content":"Say hello."}]'
        + extra
        + (b',"stream":true}' if stream else b"}")
    )
    return (
        f"POST {target} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: application/json\r\n{auth}"
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

    def __init__(self, host: str, port: int, timeout: float = REQUEST_TIMEOUT) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self.conn: _Connection | None = None

    async def request(self, raw: bytes) -> Response:
        if self.conn is None or self.conn.closed:
            self.conn = await _connect(self.host, self.port)
        return await self.conn.request(raw, self.timeout)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile (``pct`` in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(pct / 100 * len(ordered))))
    return ordered[rank - 1]


async def run_streams(
    host: str,
    port: int,
    *,
    concurrency: int,
    duration: float,
    events: int,
    model: str = DEFAULT_MODEL,
    expect: int | None = None,
) -> dict[str, Any]:
    """Stream ``events``-event responses on ``concurrency`` connections for ``duration`` s.

    Each must bring ``expect`` ``data:`` events (default ``events``).
    """
    expected = events if expect is None else expect
    raw = build_request(host, port, f"{PATH}?events={events}&delay_ms=0", stream=True, model=model)
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
                if got != expected:
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
        "model": model,
        "events_per_stream": expected,
        "upstream_events_per_stream": events,
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


@dataclass(slots=True)
class _TtfeSide:
    """One server of a time-to-first-event run: its request, connection and samples."""

    raw: bytes
    expected: int
    session: _Session
    samples: list[float | None] = field(default_factory=list)  # per round; None: failed
    errors: dict[str, int] = field(default_factory=dict)

    async def once(self) -> None:
        def error(kind: str) -> None:
            self.errors[kind] = self.errors.get(kind, 0) + 1
            self.samples.append(None)

        try:
            response = await self.session.request(self.raw)
        except (OSError, ProtocolError) as exc:
            error(type(exc).__name__)
            await asyncio.sleep(0.01)
            return
        if response.status != 200 or response.t_first_event is None:
            error(f"status {response.status}")
            return
        if response.events() != self.expected:
            self.errors["wrong event count"] = self.errors.get("wrong event count", 0) + 1
        self.samples.append((response.t_first_event - response.t_sent) * 1000)

    def stats(self) -> dict[str, Any]:
        ms = [s for s in self.samples if s is not None]
        return {
            "samples": len(ms),
            "median_ms": statistics.median(ms) if ms else None,
            "p90_ms": percentile(ms, 90) if ms else None,
            "min_ms": min(ms) if ms else None,
            "max_ms": max(ms) if ms else None,
            "errors": sum(self.errors.values()),
            "error_kinds": self.errors,
        }


async def run_ttfe(
    host: str,
    port: int,
    *,
    requests: int,
    events: int,
    delay_ms: float,
    model: str = DEFAULT_MODEL,
    expect: int | None = None,
    pair: tuple[int, str, int] | None = None,
) -> dict[str, Any]:
    """Time to first event of a slow stream, at concurrency 1 on one keep-alive connection.

    With ``pair`` = (port, model, expected events), another server is measured in
    the same rounds, alternating which goes first, one request at a time: its
    figures go under ``"pair"`` and ``paired_added_median_ms`` is the median over
    the rounds of (this server's time - the pair's), which machine noise that
    drifts over seconds mostly cancels out of.
    """

    def side(side_port: int, side_model: str, expected: int) -> _TtfeSide:
        target = f"{PATH}?events={events}&delay_ms={delay_ms:g}&first_ms=0"
        raw = build_request(host, side_port, target, stream=True, model=side_model)
        return _TtfeSide(raw, expected, _Session(host, side_port))

    main = side(port, model, events if expect is None else expect)
    other = None if pair is None else side(*pair)
    try:
        for i in range(requests):
            if other is None:
                await main.once()
            elif i % 2 == 0:
                await main.once()
                await other.once()
            else:
                await other.once()
                await main.once()
    finally:
        main.session.close()
        if other is not None:
            other.session.close()
    result: dict[str, Any] = {
        "requests": requests,
        "model": model,
        "events": main.expected,
        "upstream_events": events,
        "delay_ms": delay_ms,
        **main.stats(),
    }
    if other is not None and pair is not None:
        diffs = [
            a - b
            for a, b in zip(main.samples, other.samples, strict=True)
            if a is not None and b is not None
        ]
        result["pair"] = {"port": pair[0], "model": pair[1], "events": pair[2], **other.stats()}
        result["pairs"] = len(diffs)
        result["paired_added_median_ms"] = statistics.median(diffs) if diffs else None
        result["paired_added_mean_ms"] = statistics.fmean(diffs) if diffs else None
    return result


def raise_nofile() -> int:
    """Raise this process's ``RLIMIT_NOFILE`` soft limit to the hard one; the new soft
    limit (its children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (OSError, ValueError):
            return soft
        soft = hard
    return soft if soft != resource.RLIM_INFINITY else 2**31 - 1


def _percentiles(samples: list[float], prefix: str) -> dict[str, float | None]:
    return {
        f"{prefix}p50_ms": percentile(samples, 50) if samples else None,
        f"{prefix}p99_ms": percentile(samples, 99) if samples else None,
        f"{prefix}max_ms": max(samples) if samples else None,
    }


async def run_slow_streams(
    host: str,
    port: int,
    *,
    concurrency: int,
    events: int,
    delay_ms: float,
    ramp_s: float = 0.0,
    duration: float = 0.0,
    model: str = DEFAULT_MODEL,
    expect: int | None = None,
) -> dict[str, Any]:
    """``concurrency`` connections, the i-th opened ``i * ramp_s / concurrency`` s after
    the start, each streaming ``events``-event responses (events ``delay_ms`` apart, the
    first with the head) one after the other until ``duration`` s have passed since the
    start -- at least one each (``duration`` 0: exactly one).

    Each stream must bring ``expect`` ``data:`` events (default ``events``). Reports
    the time from sending each request to its first ``data:`` event (p50/p99), the
    streams in flight at the peak, and this process's CPU use over the run.
    """
    expected = events if expect is None else expect
    target = f"{PATH}?events={events}&delay_ms={delay_ms:g}&first_ms=0"
    raw = build_request(host, port, target, stream=True, model=model)
    timeout = events * delay_ms / 1000 + REQUEST_TIMEOUT
    ttfe: list[float] = []
    errors: dict[str, int] = {}
    state = {"streams": 0, "events": 0, "in_flight": 0, "peak_in_flight": 0}

    def error(kind: str) -> None:
        errors[kind] = errors.get(kind, 0) + 1

    async def worker(start_at: float, deadline: float) -> None:
        delay = start_at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        session = _Session(host, port, timeout)
        try:
            while True:
                state["in_flight"] += 1
                state["peak_in_flight"] = max(state["peak_in_flight"], state["in_flight"])
                try:
                    response = await session.request(raw)
                except (OSError, ProtocolError) as exc:
                    error(type(exc).__name__)
                    return
                finally:
                    state["in_flight"] -= 1
                if response.status != 200 or response.t_first_event is None:
                    error(f"status {response.status}")
                    return
                got = response.events()
                if got != expected:
                    error("wrong event count")
                state["streams"] += 1
                state["events"] += got
                ttfe.append((response.t_first_event - response.t_sent) * 1000)
                if time.perf_counter() >= deadline:
                    return
        finally:
            session.close()

    cpu = time.process_time()
    start = time.perf_counter()
    step = ramp_s / concurrency if concurrency else 0.0
    await asyncio.gather(*(worker(start + i * step, start + duration) for i in range(concurrency)))
    elapsed = time.perf_counter() - start
    client_cpu = time.process_time() - cpu
    return {
        "concurrency": concurrency,
        "model": model,
        "upstream_events_per_stream": events,
        "events_per_stream": expected,
        "delay_ms": delay_ms,
        "ramp_s": ramp_s,
        "streams": state["streams"],
        "events": state["events"],
        "peak_in_flight": state["peak_in_flight"],
        "elapsed_s": elapsed,
        "events_per_s": state["events"] / elapsed,
        **_percentiles(ttfe, "ttfe_"),
        "client_cpu_util": client_cpu / elapsed,
        "errors": sum(errors.values()),
        "error_kinds": errors,
    }


async def run_idle(
    host: str,
    port: int,
    *,
    connections: int,
    hold_s: float,
    probes: int,
    parallel: int = 256,
    model: str = DEFAULT_MODEL,
) -> dict[str, Any]:
    """Open ``connections`` keep-alive connections (``parallel`` being opened at a time),
    each sending one plain request and kept open once answered; hold them ``hold_s`` s
    (``MARK holding`` on stderr when the hold starts); then count those still open and
    send a new request on ``probes`` of them, spread over the lot."""
    raw = build_request(host, port, PATH, stream=False, model=model)
    conns: list[_Connection] = []
    latencies: list[float] = []
    errors: dict[str, int] = {}
    gate = asyncio.Semaphore(parallel)

    def error(kind: str) -> None:
        errors[kind] = errors.get(kind, 0) + 1

    async def open_one() -> None:
        async with gate:
            try:
                conn = await _connect(host, port)
            except OSError as exc:
                error(f"connect {type(exc).__name__}")
                return
            try:
                response = await conn.request(raw)
            except (OSError, ProtocolError) as exc:
                error(type(exc).__name__)
                conn.close()
                return
            if response.status != 200 or response.body != COMPLETION_BODY:
                error(f"status {response.status}")
                conn.close()
                return
            latencies.append((response.t_done - response.t_sent) * 1000)
            conns.append(conn)

    cpu = time.process_time()
    start = time.perf_counter()
    await asyncio.gather(*(open_one() for _ in range(connections)))
    open_s = time.perf_counter() - start
    opened = len(conns)
    print("MARK holding", file=sys.stderr, flush=True)
    await asyncio.sleep(hold_s)
    open_after_hold = [c for c in conns if not c.closed]
    sample = open_after_hold[:: max(1, len(open_after_hold) // max(probes, 1))][:probes]
    answered = 0
    for conn in sample:
        try:
            response = await conn.request(raw, 10.0)
        except (OSError, ProtocolError) as exc:
            error(f"probe {type(exc).__name__}")
            continue
        if response.status == 200 and response.body == COMPLETION_BODY:
            answered += 1
        else:
            error(f"probe status {response.status}")
    for conn in conns:
        conn.close()
    elapsed = time.perf_counter() - start
    return {
        "connections": connections,
        "opened": opened,
        "open_s": open_s,
        "hold_s": hold_s,
        "held": len(open_after_hold),
        "probes": len(sample),
        "probes_answered": answered,
        **_percentiles(latencies, "first_request_"),
        "client_cpu_util": (time.process_time() - cpu) / elapsed,
        "errors": sum(errors.values()),
        "error_kinds": errors,
    }


async def first_answer(
    host: str, port: int, *, model: str = DEFAULT_MODEL, timeout: float = 30.0
) -> int:
    """Send one plain request, retrying the connection until ``timeout``; its status."""
    deadline = time.perf_counter() + timeout
    raw = build_request(host, port, PATH, stream=False, model=model)
    while True:
        session = _Session(host, port, timeout)
        try:
            return (await session.request(raw)).status
        except (OSError, ProtocolError):
            if time.perf_counter() > deadline:
                raise
            await asyncio.sleep(0.005)
        finally:
            session.close()


_R = TypeVar("_R")


async def _check(
    host: str,
    port: int,
    timeout: float,
    steps: Callable[[_Session], Awaitable[_R]],
    broken: Callable[[str], _R],
) -> _R:
    """Run a sanity check's ``steps`` on one reconnecting session; a socket or
    protocol error becomes ``broken(what happened)``."""
    session = _Session(host, port, timeout)
    try:
        return await steps(session)
    except (OSError, ProtocolError) as exc:
        return broken(f"{type(exc).__name__}: {exc}")
    finally:
        session.close()


def _same(problem: str) -> str:
    return problem


async def check(
    host: str, port: int, timeout: float = 10.0, *, model: str = DEFAULT_MODEL
) -> str | None:
    """One plain and one streamed request; None if both are right, else what is wrong."""

    async def steps(session: _Session) -> str | None:
        plain = await session.request(build_request(host, port, PATH, stream=False, model=model))
        if plain.status != 200:
            return f"plain request: status {plain.status}: {plain.body[:200]!r}"
        if plain.body != COMPLETION_BODY:
            return f"plain request: body differs from the upstream's: {plain.body[:200]!r}"
        streamed = await session.request(
            build_request(host, port, f"{PATH}?events=5&delay_ms=0", stream=True, model=model)
        )
        if streamed.status != 200:
            return f"streamed request: status {streamed.status}: {streamed.body[:200]!r}"
        if streamed.events() != 5 or not _DONE.search(streamed.body):
            return f"streamed request: expected 5 events and [DONE], got {streamed.body[:300]!r}"
        return None

    return await _check(host, port, timeout, steps, _same)


async def check_unknown_model(host: str, port: int, timeout: float = 10.0) -> str | None:
    """A gateway routes by model: an unknown one is a 404 ``model_not_found``."""

    async def steps(session: _Session) -> str | None:
        raw = build_request(host, port, PATH, stream=False, model="bench-no-such-model")
        answer = await session.request(raw)
        if answer.status != 404 or b"model_not_found" not in answer.body:
            return (
                "an unknown model should be a 404 model_not_found (is the proxy routing?), "
                f"got {answer.status}: {answer.body[:200]!r}"
            )
        return None

    return await _check(host, port, timeout, steps, _same)


async def check_policies(
    host: str, port: int, timeout: float = 10.0, *, model: str = DEFAULT_MODEL
) -> str | None:
    """A gateway with ``auth`` and ``rate_limit``: with ``BENCH_KEY``, a 200 carrying
    ``x-ratelimit-remaining-requests`` (so the rate limiter ran); without a key, a 401."""

    async def steps(session: _Session) -> str | None:
        admitted = await session.request(build_request(host, port, PATH, stream=False, model=model))
        if admitted.status != 200:
            return (
                f"with the bench key: status {admitted.status} (is it a configured key?): "
                f"{admitted.body[:200]!r}"
            )
        if b"x-ratelimit-remaining-requests" not in admitted.headers:
            return (
                "with the bench key: no x-ratelimit-remaining-requests header (did rate_limit "
                f"run?); headers {sorted(h.decode() for h in admitted.headers)}"
            )
        refused = await session.request(
            build_request(host, port, PATH, stream=False, model=model, key=None)
        )
        if refused.status != 401:
            return (
                f"without a key: expected 401 (did auth run?), got {refused.status}: "
                f"{refused.body[:200]!r}"
            )
        return None

    return await _check(host, port, timeout, steps, _same)


async def check_anthropic_upstream(host: str, port: int, timeout: float = 10.0) -> str | None:
    """The upstream's ``/v1/messages``: its fixed message, and a 5-delta stream."""

    async def steps(session: _Session) -> str | None:
        plain = await session.request(
            build_request(host, port, MESSAGES_PATH, stream=False, model="claude-sonnet-4-5")
        )
        if plain.status != 200 or plain.body != MESSAGE_BODY:
            return f"POST {MESSAGES_PATH}: status {plain.status}: {plain.body[:200]!r}"
        streamed = await session.request(
            build_request(
                host, port, f"{MESSAGES_PATH}?events=5", stream=True, model="claude-sonnet-4-5"
            )
        )
        kinds = re.findall(rb"(?m)^event: (\w+)$", streamed.body)
        expected = [
            b"message_start",
            b"content_block_start",
            b"ping",
            *[b"content_block_delta"] * 5,
            b"content_block_stop",
            b"message_delta",
            b"message_stop",
        ]
        if streamed.status != 200 or kinds != expected or streamed.events() != len(expected):
            return f"{MESSAGES_PATH} stream: got {streamed.status}: {streamed.body[:300]!r}"
        return None

    return await _check(host, port, timeout, steps, _same)


def _translated_stream_problem(body: bytes, events: int) -> tuple[str | None, int]:
    """What is wrong with a chat stream translated from ``events`` text deltas; its events."""
    blocks = [b for b in body.replace(b"\r\n", b"\n").split(b"\n\n") if b.strip()]
    if not blocks or blocks[-1] != b"data: [DONE]":
        return f"does not end with data: [DONE]: {body[-200:]!r}", 0
    chunks: list[dict[str, Any]] = []
    for block in blocks[:-1]:
        if not block.startswith(b"data: ") or b"\n" in block:
            return f"not one data: line per event: {block[:200]!r}", 0
        try:
            chunk = json.loads(block[6:])
        except ValueError:
            return f"an event's data is not JSON: {block[:200]!r}", 0
        if not isinstance(chunk, dict) or chunk.get("object") != "chat.completion.chunk":
            return f"not a chat.completion.chunk: {block[:200]!r}", 0
        chunks.append(chunk)
    choices = [c["choices"][0] for c in chunks if c.get("choices")]
    if len(choices) != len(chunks):
        return "a chunk without choices (a usage chunk nobody asked for?)", 0
    if choices[0].get("delta", {}).get("role") != "assistant":
        return f"the first chunk has no assistant role: {chunks[0]}", 0
    text = "".join(c.get("delta", {}).get("content") or "" for c in choices)
    want = "".join(delta_text(i) for i in range(events))
    if text != want:
        return f"text {text[:80]!r}... differs from the upstream's {want[:80]!r}...", 0
    reasons = [c.get("finish_reason") for c in choices]
    if reasons[-1] != "stop" or any(r is not None for r in reasons[:-1]):
        return f"finish_reason should be 'stop' on the last chunk only: {reasons}", 0
    counted = Response(parts=[body]).events()
    if counted != len(chunks):
        return f"the load client counts {counted} events, the parse {len(chunks)}", 0
    return None, len(chunks)


async def check_translated(
    host: str, port: int, *, model: str, events: int, timeout: float = 10.0
) -> tuple[str | None, int]:
    """A chat request and stream for ``model``, served by an Anthropic upstream with
    ``events`` text deltas through the proxy's translation: (problem or None, the
    number of ``data:`` events the stream brought, ``[DONE]`` not counted)."""

    async def steps(session: _Session) -> tuple[str | None, int]:
        plain = await session.request(build_request(host, port, PATH, stream=False, model=model))
        try:
            answer = json.loads(plain.body)
            message = answer["choices"][0]["message"]
            ok = (
                answer["object"] == "chat.completion"
                and message["content"] == "Hello! How can I help you today?"
                and answer["choices"][0]["finish_reason"] == "stop"
                and answer["usage"]["prompt_tokens"] == 12
                and answer["usage"]["completion_tokens"] == 12
            )
        except (ValueError, KeyError, IndexError, TypeError):
            ok = False
        if plain.status != 200 or not ok:
            return f"translated request: {plain.status}: {plain.body[:300]!r}", 0
        streamed = await session.request(build_request(host, port, PATH, stream=True, model=model))
        if streamed.status != 200:
            return f"translated stream: status {streamed.status}: {streamed.body[:200]!r}", 0
        problem, count = _translated_stream_problem(streamed.body, events)
        if problem is not None:
            return f"translated stream: {problem}", 0
        return None, count

    return await _check(host, port, timeout, steps, lambda problem: (problem, 0))


def _run(coro: Coroutine[Any, Any, Any], *, use_uvloop: bool) -> Any:
    if use_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.run(coro)
    return asyncio.run(coro)


def _pair(spec: str | None, parser: argparse.ArgumentParser) -> tuple[int, str, int] | None:
    if spec is None:
        return None
    port, _, rest = spec.partition(":")
    model, _, events = rest.rpartition(":")
    try:
        return int(port), model, int(events)
    except ValueError:
        parser.error(f"--pair wants PORT:MODEL:EVENTS, got {spec!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench.loadgen", description="Load client for streamed responses."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--no-uvloop", action="store_true")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="the model requests name")
    sub = parser.add_subparsers(dest="command", required=True)
    p_streams = sub.add_parser("streams", help="stream throughput")
    p_streams.add_argument("--concurrency", type=int, default=16)
    p_streams.add_argument("--duration", type=float, default=5.0)
    p_streams.add_argument("--events", type=int, default=50)
    p_streams.add_argument(
        "--expect-events", type=int, help="data: events per stream (default --events)"
    )
    p_ttfe = sub.add_parser("ttfe", help="time to first event on a slow stream")
    p_ttfe.add_argument("--requests", type=int, default=50)
    p_ttfe.add_argument("--events", type=int, default=3)
    p_ttfe.add_argument("--delay-ms", type=float, default=50.0)
    p_ttfe.add_argument(
        "--expect-events", type=int, help="data: events per stream (default --events)"
    )
    p_ttfe.add_argument(
        "--pair",
        metavar="PORT:MODEL:EVENTS",
        help="also measure this server, alternating with --port; EVENTS: its data: events",
    )
    p_slow = sub.add_parser("slow-streams", help="many streams, an event per read")
    p_slow.add_argument("--concurrency", type=int, default=1000)
    p_slow.add_argument("--events", type=int, default=20)
    p_slow.add_argument("--delay-ms", type=float, default=500.0)
    p_slow.add_argument("--ramp-s", type=float, default=0.0, help="open the connections over")
    p_slow.add_argument(
        "--duration", type=float, default=0.0, help="keep streaming until (0: one stream each)"
    )
    p_slow.add_argument(
        "--expect-events", type=int, help="data: events per stream (default --events)"
    )
    p_idle = sub.add_parser("idle", help="hold many idle keep-alive connections")
    p_idle.add_argument("--connections", type=int, default=10_000)
    p_idle.add_argument("--hold-s", type=float, default=2.0)
    p_idle.add_argument("--probes", type=int, default=100)
    p_idle.add_argument("--parallel", type=int, default=256, help="connections opened at a time")
    sub.add_parser("check", help="one plain and one streamed request")
    args = parser.parse_args(argv)
    use_uvloop = not args.no_uvloop
    result: dict[str, Any]
    if args.command in ("slow-streams", "idle"):
        raise_nofile()
    if args.command == "slow-streams":
        result = _run(
            run_slow_streams(
                args.host,
                args.port,
                concurrency=args.concurrency,
                events=args.events,
                delay_ms=args.delay_ms,
                ramp_s=args.ramp_s,
                duration=args.duration,
                model=args.model,
                expect=args.expect_events,
            ),
            use_uvloop=use_uvloop,
        )
    elif args.command == "idle":
        result = _run(
            run_idle(
                args.host,
                args.port,
                connections=args.connections,
                hold_s=args.hold_s,
                probes=args.probes,
                parallel=args.parallel,
                model=args.model,
            ),
            use_uvloop=use_uvloop,
        )
    elif args.command == "streams":
        result = _run(
            run_streams(
                args.host,
                args.port,
                concurrency=args.concurrency,
                duration=args.duration,
                events=args.events,
                model=args.model,
                expect=args.expect_events,
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
                model=args.model,
                expect=args.expect_events,
                pair=_pair(args.pair, parser),
            ),
            use_uvloop=use_uvloop,
        )
    else:
        problem = _run(check(args.host, args.port, model=args.model), use_uvloop=use_uvloop)
        result = {"ok": problem is None, "problem": problem}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
