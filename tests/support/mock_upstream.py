"""A scriptable mock LLM upstream: a real HTTP/1.1 server on loopback for end-to-end tests.

`MockUpstream` listens on 127.0.0.1 (a free port) and runs its own asyncio loop in a
background thread; connections are framed with h11 (keep-alive, pipelining, any number
of concurrent connections). It speaks just enough of the OpenAI and Anthropic APIs for
the official SDKs to parse its answers, echoes every other request, and misbehaves on
demand: each request picks a *scenario* (see `parse_scenario`) by the `x-mock-scenario`
header, by a JSON body whose `model` is ``"scenario:<name>"``, or from a queue filled
with `MockUpstream.enqueue`.

Everything it sees is recorded (`requests`, `connections`) and every wait is an event,
so tests never sleep to wait for something.

Scenarios (the default is ``ok``):

- ``ok``: answer normally (stream if the body says ``"stream": true``).
- ``status-<code>``: that status with an error JSON (OpenAI shape; Anthropic shape on
  ``/messages``); 429 also carries ``Retry-After: 7``. ``status-<code>:<seconds>``: with
  ``Retry-After: <seconds>`` (any status).
- ``reset-before-head``: read the request, then close with an RST (SO_LINGER 0).
- ``reset-mid-body``: send the head and half the JSON body (a stream: 2 events), then RST.
- ``stall-head``: never answer; ends only when the peer closes.
- ``stall-mid-stream``: send the head and 2 events, then hang until the peer closes.
- ``slow-stream:<n>:<ms>``: n content deltas (``slow_stream_pieces(n)``), ms between events.
- ``sse-crlf`` / ``sse-cr``: the stream with CRLF / CR line ends.
- ``sse-split-bytes``: the stream one byte per write (and per HTTP chunk).
- ``sse-huge-event:<bytes>``: an extra content event whose ``data:`` value is that long.
- ``sse-no-final-blank-line`` / ``sse-no-final-newline``: the last event ends with one
  line end / with none, then the body ends.
- ``sse-extras``: comments, ``id:``, ``retry:`` and each JSON split over two ``data:`` lines.
- ``malformed-head``: garbage instead of an HTTP response, then close.
- ``connection-close``: answer with ``Connection: close``, then close.
- ``close-after-response``: answer normally (keep-alive), then close the connection.
- ``deep-json:<depth>``: the JSON answer with one more member, ``"x"``: ``0`` in arrays
  nested ``depth`` deep (valid JSON, deeper than a proxy should read).
- ``deep-json-event:<depth>``: the stream, its first content event with that ``"x"``.

Every stream scenario answers with SSE whatever the request asked for, in the OpenAI
chunk format, or the Anthropic event format on a path ending in ``/messages``.

Wire style. Our own code must not be the only spelling of HTTP it ever meets, so every
response head is written by the mock itself in a *wire style* (`WireStyle`), chosen per
request by the ``x-mock-wire`` header (any subset of ``key=value`` items separated by
``;``, e.g. ``x-mock-wire: casing=upper;order=reversed;framing=close;seed=3``) over the
``MockUpstream(wire=...)`` default; an unknown key or value is a 400 from the mock that
names the known ones:

- ``casing``: the header names' spelling. ``title`` (the default: ``Content-Type``,
  ``Content-Length``, ``Retry-After``, ``X-Mock-Connection-Id``, as nginx, Node and Go
  send them), ``lower`` (``content-type``: h11, the old behaviour), ``upper``
  (``CONTENT-TYPE``), ``mixed`` (each letter's case drawn from a generator seeded by
  ``seed`` and the name, e.g. ``cOnTEnt-tYpE``; never all-lower, all-upper or title).
- ``order``: the header fields' order. ``natural`` (the default: ``Content-Type``, the
  framing header, the others, ``Connection`` last), ``reversed``, or ``shuffled`` by ``seed``.
- ``framing``: how the body is delimited. ``auto`` (the default: ``Content-Length`` for
  JSON, ``Transfer-Encoding: chunked`` for SSE), ``length`` (a stream's whole body is
  computed first), ``chunked``, or ``close``: neither header, ``Connection: close``, and
  the mock closes the connection to end the body (a FIN; HTTP/1.0 style, which h11 never
  produces for an HTTP/1.1 client, so those bytes are written by hand).
- ``seed``: an integer (default 0) for ``mixed`` and ``shuffled``.

Every scenario honours the style (error statuses and their ``Retry-After``, streams, JSON,
``connection-close``, ...). The stream's writes are unchanged by it: whole events, one
byte per write for ``sse-split-bytes`` (one byte per chunk when chunked). ``reset-*``,
``stall-*`` and ``malformed-head`` keep their meaning: a ``reset-mid-body`` stream framed
by ``length`` announces the whole body's length, then resets after two events.
`answer_body(request)` gives the exact bytes of the mock's JSON answer to a recorded
request, to compare with what a client received through the proxy.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http
import itertools
import json
import random
import socket
import struct
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, get_args

import h11

__all__ = [
    "CASINGS",
    "COMPLETION_TOKENS",
    "CREATED",
    "DEFAULT_PIECES",
    "DEFAULT_TEXT",
    "EMBEDDING_SIZE",
    "FRAMINGS",
    "MODEL_PREFIX",
    "MODELS",
    "ORDERS",
    "PROMPT_TOKENS",
    "SCENARIO_HEADER",
    "WIRE_HEADER",
    "ConnectionInfo",
    "MockUpstream",
    "RecordedRequest",
    "Scenario",
    "WireStyle",
    "answer_body",
    "parse_scenario",
    "slow_stream_pieces",
]

SCENARIO_HEADER: Final = "x-mock-scenario"
WIRE_HEADER: Final = "x-mock-wire"
MODEL_PREFIX: Final = "scenario:"
DEFAULT_PIECES: Final = ("Hello", " from", " the", " mock", " upstream.")
DEFAULT_TEXT: Final = "".join(DEFAULT_PIECES)
PROMPT_TOKENS: Final = 12
COMPLETION_TOKENS: Final = len(DEFAULT_PIECES)  # one output token a piece
CREATED: Final = 1_700_000_000
EMBEDDING_SIZE: Final = 8
MODELS: Final = ("mock-gpt", "mock-claude")

# Pause between the bytes already sent and the RST of `reset-mid-body`, so the peer
# has read them before the connection dies (not a wait for the test's sake).
_RESET_GRACE: Final = 0.05
_READ_SIZE: Final = 65536

CloseReason = Literal["eof", "reset", "server"]
Casing = Literal["lower", "title", "upper", "mixed"]
Order = Literal["natural", "reversed", "shuffled"]
Framing = Literal["auto", "length", "chunked", "close"]
BodyFraming = Literal["length", "chunked", "close"]
CASINGS: Final[tuple[Casing, ...]] = get_args(Casing)
ORDERS: Final[tuple[Order, ...]] = get_args(Order)
FRAMINGS: Final[tuple[Framing, ...]] = get_args(Framing)
_WIRE_KNOWN: Final = (
    f"casing={'|'.join(CASINGS)}; order={'|'.join(ORDERS)}; "
    f"framing={'|'.join(FRAMINGS)}; seed=<int>"
)

_PLAIN_KINDS: Final = frozenset(
    {
        "ok",
        "reset-before-head",
        "reset-mid-body",
        "stall-head",
        "stall-mid-stream",
        "sse-crlf",
        "sse-cr",
        "sse-split-bytes",
        "sse-no-final-blank-line",
        "sse-no-final-newline",
        "sse-extras",
        "malformed-head",
        "connection-close",
        "close-after-response",
    }
)
# Scenarios that answer with an SSE stream whatever the request asked for.
_STREAM_KINDS: Final = frozenset(
    {
        "stall-mid-stream",
        "slow-stream",
        "sse-crlf",
        "sse-cr",
        "sse-split-bytes",
        "sse-huge-event",
        "sse-no-final-blank-line",
        "sse-no-final-newline",
        "sse-extras",
        "deep-json-event",
    }
)
_KNOWN: Final = (
    "ok, status-<code>[:<retry-after>], reset-before-head, reset-mid-body, stall-head, "
    "stall-mid-stream, slow-stream:<n>:<ms>, sse-crlf, sse-cr, sse-split-bytes, "
    "sse-huge-event:<bytes>, "
    "sse-no-final-blank-line, sse-no-final-newline, sse-extras, malformed-head, "
    "connection-close, close-after-response, deep-json:<depth>, deep-json-event:<depth>"
)
_MALFORMED_HEAD: Final = b"THIS IS NOT HTTP \x00\xff\r\ngarbage without a colon\r\n\r\n"
_ERROR_TYPES: Final = {
    400: ("invalid_request_error", "invalid_request_error"),
    401: ("invalid_request_error", "authentication_error"),
    403: ("invalid_request_error", "permission_error"),
    404: ("invalid_request_error", "not_found_error"),
    413: ("invalid_request_error", "request_too_large"),
    429: ("rate_limit_exceeded", "rate_limit_error"),
    529: ("server_error", "overloaded_error"),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Scenario:
    """One parsed scenario: `kind` plus the parameters some kinds take."""

    kind: str
    status: int = 200
    events: int = 0
    interval: float = 0.0
    size: int = 0


def parse_scenario(text: str) -> Scenario:
    """Parse a scenario name; raise ValueError naming the known ones if it is unknown."""
    name = text.strip()
    try:
        if name in _PLAIN_KINDS:
            return Scenario(kind=name)
        if name.startswith("status-"):
            code, _, retry_after = name.removeprefix("status-").partition(":")
            status = int(code)
            if 200 <= status <= 599 and not retry_after:
                return Scenario(kind="status", status=status, interval=7.0)
            if 200 <= status <= 599 and float(retry_after) >= 0:
                return Scenario(kind="status", status=status, interval=float(retry_after))
        elif name.startswith("slow-stream:"):
            count, ms = name.removeprefix("slow-stream:").split(":")
            if int(count) >= 0 and float(ms) >= 0:
                return Scenario(kind="slow-stream", events=int(count), interval=float(ms) / 1000)
        elif name.startswith("sse-huge-event:"):
            size = int(name.removeprefix("sse-huge-event:"))
            if size >= 0:
                return Scenario(kind="sse-huge-event", size=size)
        elif name.startswith(("deep-json:", "deep-json-event:")):
            kind, _, depth = name.partition(":")
            if int(depth) >= 0:
                return Scenario(kind=kind, size=int(depth))
    except ValueError:
        pass
    raise ValueError(f"unknown mock scenario {text!r}; known: {_KNOWN}")


def slow_stream_pieces(count: int) -> list[str]:
    """The content deltas of `slow-stream:<count>:<ms>`: 'tok0 ', 'tok1 ', ..."""
    return [f"tok{i} " for i in range(count)]


def _title(name: str) -> str:
    return "-".join(part[:1].upper() + part[1:].lower() for part in name.split("-"))


def _mixed(name: str, seed: int) -> str:
    rng = random.Random(f"{seed}:{name.lower()}")
    spelled = "".join(c.upper() if rng.random() < 0.5 else c.lower() for c in name)
    if spelled in (name.lower(), name.upper(), _title(name)):
        # Too few letters for chance to mix them: alternate (cOnTeNt-TyPe).
        spelled = "".join(c.upper() if i % 2 else c.lower() for i, c in enumerate(name))
    return spelled


@dataclass(frozen=True, slots=True, kw_only=True)
class WireStyle:
    """How the mock spells its responses on the wire (see the module docstring)."""

    casing: Casing = "title"
    order: Order = "natural"
    framing: Framing = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        for key, value, known in (
            ("casing", self.casing, CASINGS),
            ("order", self.order, ORDERS),
            ("framing", self.framing, FRAMINGS),
        ):
            if value not in known:
                raise ValueError(f"unknown mock wire {key} {value!r}; known: {_WIRE_KNOWN}")

    @classmethod
    def parse(cls, text: str, base: WireStyle | None = None) -> WireStyle:
        """The style `text` (``casing=title;order=reversed;...``, any subset) makes of `base`.

        Raises ValueError naming the known keys and values on anything else.
        """
        style = base or cls()
        values: dict[str, Any] = {
            "casing": style.casing,
            "order": style.order,
            "framing": style.framing,
            "seed": style.seed,
        }
        for item in text.split(";"):
            if not item.strip():
                continue
            key, equals, value = (part.strip() for part in item.partition("="))
            if not equals or key not in values:
                raise ValueError(f"unknown mock wire item {item.strip()!r}; known: {_WIRE_KNOWN}")
            if key == "seed":
                try:
                    values[key] = int(value)
                except ValueError:
                    raise ValueError(
                        f"unknown mock wire seed {value!r}; known: {_WIRE_KNOWN}"
                    ) from None
            else:
                values[key] = value
        return cls(**values)

    def __str__(self) -> str:
        """The header value that selects this style."""
        return f"casing={self.casing};order={self.order};framing={self.framing};seed={self.seed}"

    def spell(self, name: str) -> str:
        """A header name in this style's casing."""
        if self.casing == "lower":
            return name.lower()
        if self.casing == "upper":
            return name.upper()
        if self.casing == "title":
            return _title(name)
        return _mixed(name, self.seed)

    def arrange(self, headers: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
        """The header fields in this style's order and casing."""
        fields = [(self.spell(name), value) for name, value in headers]
        if self.order == "reversed":
            fields.reverse()
        elif self.order == "shuffled":
            random.Random(self.seed).shuffle(fields)
        return fields

    def body_framing(self, default: Literal["length", "chunked"]) -> BodyFraming:
        """The framing of a body whose natural framing is `default`."""
        return default if self.framing == "auto" else self.framing


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordedRequest:
    """A request as the mock received it (recorded once its body has fully arrived)."""

    index: int
    conn_id: int
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes
    scenario: str

    @property
    def path(self) -> str:
        """The target without its query string."""
        return self.target.partition("?")[0]

    @property
    def query(self) -> str:
        """The query string without '?' ('' when there is none)."""
        return self.target.partition("?")[2]

    def header(self, name: str) -> str | None:
        """The first value of a header (any case), or None."""
        values = self.header_values(name)
        return values[0] if values else None

    def header_values(self, name: str) -> list[str]:
        """Every value of a header (any case), in arrival order."""
        lowered = name.lower()
        return [value for key, value in self.headers if key == lowered]

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)


@dataclass(eq=False, slots=True, kw_only=True)
class ConnectionInfo:
    """One accepted connection. `closed` is set once the mock sees it end."""

    id: int
    peer: tuple[str, int]
    closed: threading.Event = field(default_factory=threading.Event)
    close_reason: CloseReason | None = None
    request_count: int = 0


class _PeerGone(Exception):
    """The peer closed or reset the connection; stop serving it."""


class _Done(Exception):
    """This connection must not serve another request."""


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        return {}
    return value if isinstance(value, dict) else {}


def _error_body(status: int, anthropic: bool) -> bytes:
    openai_type, anthropic_type = _ERROR_TYPES.get(
        status, ("server_error" if status >= 500 else "invalid_request_error", "api_error")
    )
    message = f"mock upstream error {status}"
    if anthropic:
        return _dumps({"type": "error", "error": {"type": anthropic_type, "message": message}})
    return _dumps(
        {"error": {"message": message, "type": openai_type, "param": None, "code": str(status)}}
    )


def _embedding(index: int, size: int) -> list[float]:
    # Multiples of 1/8 are exact in float32, so base64 and float forms agree exactly.
    return [(index + 1) * (i + 1) / 8 for i in range(size)]


def _chat_chunk(cid: str, model: str, delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
    return {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": model,
        "system_fingerprint": None,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }


def _padded(make: Callable[[str], dict[str, Any]], size: int) -> str:
    """The JSON of make(text), with text padded so the JSON is exactly `size` bytes if it can be."""
    bare = len(_dumps(make("")))
    return _dumps(make("x" * max(0, size - bare))).decode()


def _openai_events(
    *, cid: str, model: str, pieces: Sequence[str], usage: bool, huge: int | None
) -> list[tuple[str | None, str]]:
    chunks: list[dict[str, Any]] = [
        _chat_chunk(cid, model, {"role": "assistant", "content": ""}, None)
    ]
    chunks += [_chat_chunk(cid, model, {"content": piece}, None) for piece in pieces]
    chunks.append(_chat_chunk(cid, model, {}, "stop"))
    count = len(pieces)
    if usage:
        for chunk in chunks:
            chunk["usage"] = None
        chunks.append(
            {
                **_chat_chunk(cid, model, {}, None),
                "choices": [],
                "usage": {
                    "prompt_tokens": PROMPT_TOKENS,
                    "completion_tokens": count,
                    "total_tokens": PROMPT_TOKENS + count,
                },
            }
        )
    events: list[tuple[str | None, str]] = [(None, _dumps(chunk).decode()) for chunk in chunks]
    if huge is not None:
        events.insert(
            1, (None, _padded(lambda t: _chat_chunk(cid, model, {"content": t}, None), huge))
        )
    events.append((None, "[DONE]"))
    return events


def _text_delta(text: str) -> dict[str, Any]:
    return {
        "type": "content_block_delta",
        "index": 0,
        "delta": {"type": "text_delta", "text": text},
    }


def _anthropic_events(
    *, mid: str, model: str, pieces: Sequence[str], huge: int | None
) -> list[tuple[str | None, str]]:
    message: dict[str, Any] = {
        "id": mid,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": PROMPT_TOKENS, "output_tokens": 1},
    }
    deltas = [_dumps(_text_delta(piece)).decode() for piece in pieces]
    if huge is not None:
        deltas.insert(0, _padded(_text_delta, huge))
    return [
        ("message_start", _dumps({"type": "message_start", "message": message}).decode()),
        (
            "content_block_start",
            _dumps(
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "text", "text": ""},
                }
            ).decode(),
        ),
        ("ping", '{"type":"ping"}'),
        *[("content_block_delta", delta) for delta in deltas],
        ("content_block_stop", '{"type":"content_block_stop","index":0}'),
        (
            "message_delta",
            _dumps(
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                    "usage": {"output_tokens": len(pieces)},
                }
            ).decode(),
        ),
        ("message_stop", '{"type":"message_stop"}'),
    ]


def _encode_event(name: str | None, data: str, *, eol: str, extras: bool, seq: int) -> bytes:
    lines: list[str] = []
    if extras:
        lines += [": mock comment", f"id: {seq}"]
        if seq == 0:
            lines.append("retry: 3000")
    if name is not None:
        lines.append(f"event: {name}")
    if extras and data.startswith("{") and "," in data:
        # Two data lines; the client joins them with "\n", which is still the same JSON.
        head, _, tail = data.partition(",")
        lines += [f"data: {head},", f"data: {tail}"]
    else:
        lines.append(f"data: {data}")
    return (eol.join(lines) + eol + eol).encode()


class _Connection:
    """Serves one accepted connection inside the mock's event loop."""

    def __init__(
        self,
        mock: MockUpstream,
        info: ConnectionInfo,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self._mock = mock
        self._info = info
        self._reader = reader
        self._writer = writer
        self._h11 = h11.Connection(h11.SERVER)
        self._data_ready = asyncio.Event()
        self._peer_gone = asyncio.Event()
        self._server_closing = False
        self._style = mock.wire
        self._framing: BodyFraming = "length"

    async def run(self) -> None:
        read_task = asyncio.create_task(self._read_loop())
        try:
            await self._serve()
        except (_PeerGone, _Done, ConnectionError, h11.RemoteProtocolError):
            pass
        except asyncio.CancelledError:
            self._close(abort=True)
            read_task.cancel()
            raise
        except Exception as exc:  # a bug in the mock: report it to the test
            self._mock._report_error(exc)
        self._close(abort=False)
        await read_task

    async def _read_loop(self) -> None:
        reason: CloseReason = "eof"
        try:
            while data := await self._reader.read(_READ_SIZE):
                self._h11.receive_data(data)
                self._data_ready.set()
        except ConnectionResetError:
            reason = "reset"
        except OSError:
            pass
        finally:
            self._h11.receive_data(b"")
            self._peer_gone.set()
            self._data_ready.set()
            self._info.close_reason = "server" if self._server_closing else reason
            self._info.closed.set()

    def shutdown(self) -> None:
        """Abort the connection because the mock is stopping."""
        self._close(abort=True)

    def _close(self, *, abort: bool) -> None:
        if not self._peer_gone.is_set():
            self._server_closing = True
        if abort:
            self._writer.transport.abort()
        else:
            self._writer.close()

    def _reset(self) -> None:
        """Close the socket with an RST (SO_LINGER 0) instead of a FIN."""
        self._server_closing = not self._peer_gone.is_set()
        sock = self._writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self._writer.transport.abort()

    async def _pause(self, seconds: float) -> None:
        """Wait `seconds`, ending early with _PeerGone if the peer goes away."""
        if seconds > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._peer_gone.wait(), seconds)
        if self._peer_gone.is_set():
            raise _PeerGone

    async def _stall(self) -> None:
        await self._peer_gone.wait()
        raise _PeerGone

    async def _next_event(self) -> h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]:
        while True:
            event = self._h11.next_event()
            if event is h11.NEED_DATA:
                if self._peer_gone.is_set():
                    raise _PeerGone
                self._data_ready.clear()
                await self._data_ready.wait()
            else:
                return event

    async def _write(self, data: bytes) -> None:
        if self._peer_gone.is_set():
            raise _PeerGone
        if data:
            self._writer.write(data)
            await self._writer.drain()

    async def _send(self, event: h11.Event) -> None:
        data = self._h11.send(event)
        if data is not None:
            await self._write(data)

    async def _serve(self) -> None:
        while True:
            request = await self._receive_request()
            await self._respond(request)
            if self._h11.our_state is not h11.DONE or self._h11.their_state is not h11.DONE:
                raise _Done
            self._h11.start_next_cycle()

    async def _receive_request(self) -> RecordedRequest:
        event = await self._next_event()
        if isinstance(event, h11.ConnectionClosed):
            raise _PeerGone
        if not isinstance(event, h11.Request):  # pragma: no cover - h11 guarantees it
            raise _Done
        body = bytearray()
        while not isinstance(part := await self._next_event(), h11.EndOfMessage):
            if isinstance(part, h11.Data):
                body += part.data
            elif isinstance(part, h11.ConnectionClosed):
                raise _PeerGone
        headers = [
            (name.decode("latin-1"), value.decode("latin-1")) for name, value in event.headers
        ]
        return self._mock._record(
            conn=self._info,
            method=event.method.decode("ascii"),
            target=event.target.decode("latin-1"),
            headers=headers,
            body=bytes(body),
        )

    async def _respond(self, request: RecordedRequest) -> None:
        self._style = self._mock.wire
        try:
            self._style = WireStyle.parse(
                ";".join(request.header_values(WIRE_HEADER)), self._mock.wire
            )
            scenario = parse_scenario(request.scenario)
        except ValueError as exc:
            await self._send_json(request, 400, _dumps({"error": {"message": str(exc)}}))
            return
        kind = scenario.kind
        body = _json_object(request.body)
        anthropic = request.path.endswith("/messages")
        if kind == "malformed-head":
            self._server_closing = True
            await self._write(_MALFORMED_HEAD)
            raise _Done
        if kind == "reset-before-head":
            self._reset()
            raise _Done
        if kind == "stall-head":
            await self._stall()
        if kind == "status":
            extra = (
                [("retry-after", f"{scenario.interval:g}")]
                if scenario.status == 429 or ":" in request.scenario
                else []
            )
            await self._send_json(
                request, scenario.status, _error_body(scenario.status, anthropic), extra
            )
            return
        streamable = request.method == "POST" and (
            anthropic or request.path.endswith("/chat/completions")
        )
        if kind in _STREAM_KINDS or (streamable and body.get("stream") is True):
            await self._stream(request, scenario, body, anthropic)
        else:
            await self._answer(request, scenario, body)
        if kind == "close-after-response":
            raise _Done

    # -- responses, spelled in self._style ------------------------------------------

    async def _send_head(
        self,
        status: int,
        headers: Sequence[tuple[str, str]],
        *,
        framing: BodyFraming,
        length: int = 0,
        close: bool = False,
    ) -> None:
        """Write a response head in the request's wire style; the body is framed by `framing`.

        `headers` have lower-case names and no framing or Connection field: those are
        added here (the framing header second, after Content-Type; Connection last).
        h11 would re-spell and move Transfer-Encoding and Connection, and never frames
        by close for an HTTP/1.1 client, so the head is rendered here; h11 is still told
        of the response (and its bytes discarded) so that it frames the body and keeps
        the connection's state.
        """
        version = self._h11.their_http_version
        if framing == "chunked" and (version is None or version < b"1.1"):
            framing = "close"  # an HTTP/1.0 client knows no chunked encoding
        fields = list(headers)
        if framing == "length":
            fields.insert(1, ("content-length", str(length)))
        elif framing == "chunked":
            fields.insert(1, ("transfer-encoding", "chunked"))
        if close or framing == "close":
            fields.append(("connection", "close"))
        wire = self._style.arrange(fields)
        reason = _reason(status)
        if framing != "close":
            self._h11.send(h11.Response(status_code=status, headers=wire, reason=reason))
        self._framing = framing
        lines = [b"HTTP/1.1 %d %s" % (status, reason)]
        lines += [f"{name}: {value}".encode("latin-1") for name, value in wire]
        await self._write(b"\r\n".join(lines) + b"\r\n\r\n")

    async def _send_body(self, data: bytes) -> None:
        """Part of the body, framed as the head said."""
        if self._framing == "close":
            await self._write(data)
        else:
            await self._send(h11.Data(data=data))

    async def _end_body(self) -> None:
        """End the body: h11's end of message, or, framed by close, closing the connection."""
        if self._framing == "close":
            self._server_closing = True
            raise _Done
        await self._send(h11.EndOfMessage())

    async def _send_json(
        self,
        request: RecordedRequest,
        status: int,
        payload: bytes,
        extra: Sequence[tuple[str, str]] = (),
        *,
        connection_close: bool = False,
    ) -> None:
        headers = [("content-type", "application/json"), *self._mock_headers(request), *extra]
        await self._send_head(
            status,
            headers,
            framing=self._style.body_framing("length"),
            length=len(payload),
            close=connection_close,
        )
        if request.method != "HEAD" and status not in (204, 304):
            await self._send_body(payload)
        await self._end_body()

    def _mock_headers(self, request: RecordedRequest) -> list[tuple[str, str]]:
        return [
            ("x-mock-connection-id", str(request.conn_id)),
            ("x-mock-request-index", str(request.index)),
        ]

    async def _answer(
        self, request: RecordedRequest, scenario: Scenario, body: dict[str, Any]
    ) -> None:
        payload = _answer_payload(request, body)
        if scenario.kind == "deep-json":
            payload = _deepened(payload, scenario.size)
        if scenario.kind == "reset-mid-body":
            await self._send_head(
                200,
                [("content-type", "application/json"), *self._mock_headers(request)],
                framing=self._style.body_framing("length"),
                length=len(payload),
            )
            await self._send_body(payload[: len(payload) // 2])
            await self._pause(_RESET_GRACE)
            self._reset()
            raise _Done
        await self._send_json(
            request, 200, payload, connection_close=scenario.kind == "connection-close"
        )

    async def _stream(
        self, request: RecordedRequest, scenario: Scenario, body: dict[str, Any], anthropic: bool
    ) -> None:
        kind = scenario.kind
        model = str(body.get("model", "mock-gpt"))
        pieces: Sequence[str] = (
            slow_stream_pieces(scenario.events) if kind == "slow-stream" else DEFAULT_PIECES
        )
        huge = scenario.size if kind == "sse-huge-event" else None
        if anthropic:
            events = _anthropic_events(
                mid=f"msg_mock_{request.index}", model=model, pieces=pieces, huge=huge
            )
        else:
            options = body.get("stream_options")
            usage = isinstance(options, dict) and options.get("include_usage") is True
            events = _openai_events(
                cid=f"chatcmpl-mock-{request.index}",
                model=model,
                pieces=pieces,
                usage=usage,
                huge=huge,
            )
        if kind == "deep-json-event":
            first = 3 if anthropic else 1  # after message_start, content_block_start, ping
            name, data = events[first]
            events[first] = (name, _deepened(data.encode(), scenario.size).decode())
        eol = {"sse-crlf": "\r\n", "sse-cr": "\r"}.get(kind, "\n")
        encoded = [
            _encode_event(name, data, eol=eol, extras=kind == "sse-extras", seq=seq)
            for seq, (name, data) in enumerate(events)
        ]
        if kind == "sse-no-final-blank-line":
            encoded[-1] = encoded[-1][: -len(eol)]
        elif kind == "sse-no-final-newline":
            encoded[-1] = encoded[-1][: -2 * len(eol)]
        await self._send_head(
            200,
            [
                ("content-type", "text/event-stream; charset=utf-8"),
                ("cache-control", "no-cache"),
                *self._mock_headers(request),
            ],
            framing=self._style.body_framing("chunked"),
            length=sum(map(len, encoded)),
        )
        for seq, event_bytes in enumerate(encoded):
            if seq == 2 and kind == "stall-mid-stream":
                await self._stall()
            if seq == 2 and kind == "reset-mid-body":
                await self._pause(_RESET_GRACE)
                self._reset()
                raise _Done
            if seq:
                await self._pause(scenario.interval)
            if kind == "sse-split-bytes":
                for byte in event_bytes:
                    await self._send_body(bytes((byte,)))
                    await asyncio.sleep(0)
            else:
                await self._send_body(event_bytes)
        await self._end_body()


def _reason(status: int) -> bytes:
    try:
        return http.HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        return b""


def answer_body(request: RecordedRequest) -> bytes:
    """The body of the mock's JSON answer to `request`, as it went on the wire.

    The error JSON for ``status-<code>``, else the endpoint's answer or the echo.
    (Meaningless for scenarios that stream, reset or never answer.)
    """
    scenario = parse_scenario(request.scenario)
    if scenario.kind == "status":
        return _error_body(scenario.status, request.path.endswith("/messages"))
    payload = _answer_payload(request, _json_object(request.body))
    return _deepened(payload, scenario.size) if scenario.kind == "deep-json" else payload


def _deepened(data: bytes, depth: int) -> bytes:
    """A JSON object with one more member: ``"x"``, ``0`` in arrays nested ``depth`` deep."""
    return data[:-1] + b',"x":' + b"[" * depth + b"0" + b"]" * depth + b"}"


def _answer_payload(request: RecordedRequest, body: dict[str, Any]) -> bytes:
    """The successful, non-streaming answer for an endpoint (or the echo of the request)."""
    path = request.path
    model = str(body.get("model", "mock-gpt"))
    completion_tokens = len(DEFAULT_PIECES)
    if request.method == "POST" and path.endswith("/chat/completions"):
        return _dumps(
            {
                "id": f"chatcmpl-mock-{request.index}",
                "object": "chat.completion",
                "created": CREATED,
                "model": model,
                "system_fingerprint": None,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": DEFAULT_TEXT, "refusal": None},
                        "logprobs": None,
                        "finish_reason": "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": PROMPT_TOKENS,
                    "completion_tokens": completion_tokens,
                    "total_tokens": PROMPT_TOKENS + completion_tokens,
                },
            }
        )
    if request.method == "POST" and path.endswith("/messages"):
        return _dumps(
            {
                "id": f"msg_mock_{request.index}",
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [{"type": "text", "text": DEFAULT_TEXT}],
                "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": {"input_tokens": PROMPT_TOKENS, "output_tokens": completion_tokens},
            }
        )
    if request.method == "POST" and path.endswith("/embeddings"):
        return _embeddings_payload(body, model)
    if request.method == "GET" and path.endswith("/models"):
        return _dumps(
            {
                "object": "list",
                "data": [
                    {"id": name, "object": "model", "created": CREATED, "owned_by": "mock"}
                    for name in MODELS
                ],
            }
        )
    return _dumps(
        {
            "method": request.method,
            "target": request.target,
            "path": request.path,
            "query": request.query,
            "headers": [list(pair) for pair in request.headers],
            "body": request.body.decode("utf-8", "replace"),
            "body_base64": base64.b64encode(request.body).decode("ascii"),
            "connection_id": request.conn_id,
            "request_index": request.index,
        }
    )


def _embeddings_payload(body: dict[str, Any], model: str) -> bytes:
    raw = body.get("input", "")
    inputs = len(raw) if isinstance(raw, list) and raw and not isinstance(raw[0], int) else 1
    dimensions = body.get("dimensions")
    size = dimensions if isinstance(dimensions, int) and dimensions > 0 else EMBEDDING_SIZE
    as_base64 = body.get("encoding_format") == "base64"
    data = []
    for index in range(inputs):
        vector = _embedding(index, size)
        encoded: Any = (
            base64.b64encode(struct.pack(f"<{size}f", *vector)).decode("ascii")
            if as_base64
            else vector
        )
        data.append({"object": "embedding", "index": index, "embedding": encoded})
    return _dumps(
        {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": PROMPT_TOKENS, "total_tokens": PROMPT_TOKENS},
        }
    )


class MockUpstream:
    """The mock upstream server. Use as a context manager, or `start()` / `stop()`."""

    def __init__(self, host: str = "127.0.0.1", *, wire: WireStyle | str | None = None) -> None:
        self.host = host
        #: The default wire style; a request's ``x-mock-wire`` header overrides parts of it.
        self.wire: WireStyle = (
            WireStyle.parse(wire) if isinstance(wire, str) else wire or WireStyle()
        )
        self._port = 0
        self._cond = threading.Condition()
        self._requests: list[RecordedRequest] = []
        self._connections: dict[int, ConnectionInfo] = {}
        self._queue: deque[str] = deque()
        self._errors: list[BaseException] = []
        self._conn_ids = itertools.count(1)
        self._request_ids = itertools.count(0)
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._live: set[_Connection] = set()

    # -- life cycle ----------------------------------------------------------------

    def start(self) -> MockUpstream:
        """Start listening; returns once the port is bound."""
        if self._thread is not None:
            raise RuntimeError("the mock upstream is already started")
        self._thread = threading.Thread(target=self._run, name="mock-upstream", daemon=True)
        self._thread.start()
        self._started.wait()
        if self._errors:
            raise RuntimeError("the mock upstream failed to start") from self._errors[0]
        return self

    def stop(self) -> None:
        """Close every connection and the listener, and join the thread."""
        thread, loop, stopping = self._thread, self._loop, self._stopping
        if thread is None or loop is None or stopping is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop already ended
            loop.call_soon_threadsafe(stopping.set)
        thread.join(10)
        if thread.is_alive():  # pragma: no cover - a bug in the mock
            raise RuntimeError("the mock upstream thread did not stop")

    def __enter__(self) -> MockUpstream:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The bound port."""
        return self._port

    @property
    def base_url(self) -> str:
        """'http://127.0.0.1:<port>' (no trailing slash, no /v1)."""
        return f"http://{self.host}:{self._port}"

    def url(self, path: str) -> str:
        """base_url + path."""
        return self.base_url + path

    # -- scripting -----------------------------------------------------------------

    def enqueue(self, *scenarios: str) -> None:
        """Scenarios for the next requests that pick none by header or model, in order."""
        for name in scenarios:
            parse_scenario(name)
        with self._cond:
            self._queue.extend(scenarios)

    def reset(self) -> None:
        """Forget recorded requests, connections, queued scenarios and errors."""
        with self._cond:
            self._requests.clear()
            self._connections.clear()
            self._queue.clear()
            self._errors.clear()

    # -- inspection ----------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of the requests received so far, in arrival order."""
        with self._cond:
            return list(self._requests)

    @property
    def connections(self) -> list[ConnectionInfo]:
        """A snapshot of the connections accepted so far, in order."""
        with self._cond:
            return list(self._connections.values())

    @property
    def errors(self) -> list[BaseException]:
        """Unexpected exceptions inside the mock (bugs); the fixture fails the test on any."""
        with self._cond:
            return list(self._errors)

    def connection(self, conn_id: int) -> ConnectionInfo:
        """The connection with this id."""
        with self._cond:
            return self._connections[conn_id]

    def connection_closed(self, conn_id: int) -> threading.Event:
        """The event set when connection `conn_id` ends (peer EOF or reset, or the mock)."""
        return self.connection(conn_id).closed

    def wait_for_close(self, conn_id: int, timeout: float = 5.0) -> bool:
        """Wait until connection `conn_id` has ended; False on timeout."""
        return self.connection_closed(conn_id).wait(timeout)

    def wait_for_requests(self, count: int = 1, *, timeout: float = 5.0) -> list[RecordedRequest]:
        """Wait until at least `count` requests have arrived; return all of them."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._requests) >= count, timeout):
                raise TimeoutError(
                    f"mock upstream: {len(self._requests)} request(s) arrived within "
                    f"{timeout} s, wanted {count}: {self._describe()}"
                )
            return list(self._requests)

    def wait_for_request(
        self, predicate: Callable[[RecordedRequest], bool] | None = None, *, timeout: float = 5.0
    ) -> RecordedRequest:
        """Wait for the first request (ever recorded) that matches `predicate` and return it."""

        def match() -> RecordedRequest | None:
            return next((r for r in self._requests if predicate is None or predicate(r)), None)

        with self._cond:
            found = self._cond.wait_for(match, timeout)
            if found is None:
                raise TimeoutError(
                    f"mock upstream: no matching request within {timeout} s: {self._describe()}"
                )
            return found

    def wait_for_connections(self, count: int = 1, *, timeout: float = 5.0) -> list[ConnectionInfo]:
        """Wait until at least `count` connections have been accepted; return all of them."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._connections) >= count, timeout):
                raise TimeoutError(
                    f"mock upstream: {len(self._connections)} connection(s) within {timeout} s, "
                    f"wanted {count}"
                )
            return list(self._connections.values())

    def _describe(self) -> str:
        return repr([f"{r.method} {r.target} (conn {r.conn_id})" for r in self._requests])

    # -- inside the loop thread ----------------------------------------------------

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # pragma: no cover - reported by start()
            self._report_error(exc)
        finally:
            self._started.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        server = await asyncio.start_server(self._accept, self.host, 0, backlog=1024)
        self._port = server.sockets[0].getsockname()[1]
        self._started.set()
        async with server:
            await self._stopping.wait()
        for conn in list(self._live):
            conn.shutdown()
        if self._tasks:
            _, pending = await asyncio.wait(list(self._tasks), timeout=5)
            for task in pending:  # pragma: no cover - a bug in the mock
                self._report_error(RuntimeError(f"connection task did not stop: {task!r}"))
                task.cancel()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        peer = writer.get_extra_info("peername")
        with self._cond:
            info = ConnectionInfo(id=next(self._conn_ids), peer=(str(peer[0]), int(peer[1])))
            self._connections[info.id] = info
            self._cond.notify_all()
        conn = _Connection(self, info, reader, writer)
        self._live.add(conn)
        try:
            await conn.run()
        finally:
            self._live.discard(conn)
            self._tasks.discard(task)

    def _record(
        self,
        *,
        conn: ConnectionInfo,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        body: bytes,
    ) -> RecordedRequest:
        with self._cond:
            scenario = _header_scenario(headers) or _model_scenario(body)
            if scenario is None:
                scenario = self._queue.popleft() if self._queue else "ok"
            request = RecordedRequest(
                index=next(self._request_ids),
                conn_id=conn.id,
                method=method,
                target=target,
                headers=headers,
                body=body,
                scenario=scenario,
            )
            conn.request_count += 1
            self._requests.append(request)
            self._cond.notify_all()
            return request

    def _report_error(self, exc: BaseException) -> None:
        with self._cond:
            self._errors.append(exc)


def _header_scenario(headers: list[tuple[str, str]]) -> str | None:
    return next((value for name, value in headers if name == SCENARIO_HEADER), None)


def _model_scenario(body: bytes) -> str | None:
    model = _json_object(body).get("model")
    if isinstance(model, str) and model.startswith(MODEL_PREFIX):
        return model.removeprefix(MODEL_PREFIX)
    return None
