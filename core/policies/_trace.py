"""The ``trace`` middleware: one JSON record per exchange, written by the driver.

It only builds the record; the driver carries out the ``WriteTrace`` command
off the response path. Secrets in headers are redacted before the record
exists, so they can never reach the disk.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any, Literal

from .._commands import WriteTrace
from .._headers import Headers, header
from .._json import JSONError, loads
from .._middleware import Context
from .._sse import parse_block

__all__ = ["REDACTED", "TraceMiddleware", "redact_headers", "redact_target"]

REDACTED = "[redacted]"
_SECRET_HEADERS = frozenset(
    {b"authorization", b"proxy-authorization", b"x-api-key", b"api-key", b"cookie", b"set-cookie"}
)
_SECRET_WORDS = (b"key", b"token", b"secret", b"auth", b"cookie", b"password", b"session")


def redact_headers(headers: Headers) -> list[list[str]]:
    """Headers as ``[name, value]`` pairs, with every credential-like value replaced."""
    out = []
    for name, value in headers:
        lowered = name.lower()  # the events lower-case names; a hook's may not be
        secret = lowered in _SECRET_HEADERS or any(word in lowered for word in _SECRET_WORDS)
        out.append([name.decode("latin-1"), REDACTED if secret else value.decode("latin-1")])
    return out


_SECRET_PARAMS = (
    "key",
    "token",
    "secret",
    "auth",
    "password",
    "session",
    "signature",
    "sig",
    "credential",
)


def redact_target(target: str) -> str:
    """A request target with every credential-like query parameter's value replaced.

    ``?key=…``, ``?api_key=…``, ``?access_token=…``: some APIs take keys in the
    URL, and a trace must not keep them.
    """
    path, mark, query = target.partition("?")
    if not mark:
        return target
    params = []
    for param in query.split("&"):
        name, equals, _ = param.partition("=")
        lowered = name.lower()
        secret = equals and any(word in lowered for word in _SECRET_PARAMS)
        params.append(f"{name}={REDACTED}" if secret else param)
    return f"{path}?{'&'.join(params)}"


def _body(data: bytes, headers: Headers, limit: int, truncated: bool) -> dict[str, Any]:
    if truncated:
        return {"text": data[:limit].decode("utf-8", "replace"), "truncated": True}
    if not data:
        return {}
    if b"json" in (header(headers, b"content-type") or b""):
        try:
            return {"json": loads(data)}
        except JSONError:  # bad JSON, or too deep or large: kept as it came
            pass
    try:
        return {"text": data.decode("utf-8")}
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(data).decode("ascii")}


def _iso(wall: float) -> str:
    return datetime.fromtimestamp(wall, tz=UTC).isoformat(timespec="microseconds")


def _delta_text(data: str) -> str:
    """The assistant text carried by one OpenAI or Anthropic stream event, if any."""
    if not data or data[0] != "{":
        return ""
    try:
        value = loads(data)  # starts with "{": an object, or invalid
    except JSONError:
        return ""
    choices = value.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        delta = choices[0].get("delta")
        if isinstance(delta, dict) and isinstance(delta.get("content"), str):
            return str(delta["content"])
        return ""
    delta = value.get("delta")
    if value.get("type") == "content_block_delta" and isinstance(delta, dict):
        text = delta.get("text")
        return text if isinstance(text, str) else ""
    return ""


class _TraceState:
    __slots__ = ("body", "body_truncated", "dropped_events", "events", "size", "text")

    def __init__(self) -> None:
        self.body: list[bytes] = []
        self.size = 0
        self.body_truncated = False
        self.events: list[dict[str, Any]] = []
        self.dropped_events = 0
        self.text: list[str] = []


class TraceMiddleware:
    """Record each exchange as one JSON line in ``<dir>/sansproxy-<UTC period>.jsonl``.

    ``rotate`` (``hour`` or ``day``), ``max_age`` (seconds) and ``max_bytes``
    (None: no limit) say how the writer rotates and deletes the files.
    """

    name = "trace"

    def __init__(
        self,
        *,
        dir: str,
        max_body: int = 1 << 20,
        max_events: int = 10_000,
        rotate: str = "hour",
        max_age: float | None = 7 * 86400.0,
        max_bytes: int | None = 1 << 30,
    ) -> None:
        if not dir:
            raise ValueError("trace: 'dir' must name a directory")
        if rotate not in ("hour", "day"):
            raise ValueError(f"trace: 'rotate' must be 'hour' or 'day', not {rotate!r}")
        for option, value in (("max_age", max_age), ("max_bytes", max_bytes)):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float) or not value > 0
            ):
                raise ValueError(f"trace: {option!r} must be a positive number or null")
        self.dir = dir
        self.max_body = max_body
        self.max_events = max_events
        self.rotate: Literal["hour", "day"] = "day" if rotate == "day" else "hour"
        self.max_age = None if max_age is None else float(max_age)
        self.max_bytes = None if max_bytes is None else int(max_bytes)

    def _state(self, exchange: Context) -> _TraceState:
        state: _TraceState | None = exchange.scratch.get(self)
        if state is None:
            state = exchange.scratch[self] = _TraceState()
        return state

    def on_response_data(self, exchange: Context, data: bytes) -> bytes:
        state = self._state(exchange)
        if state.size < self.max_body:
            state.body.append(data)
        else:
            state.body_truncated = True
        state.size += len(data)
        if state.size > self.max_body:
            state.body_truncated = True
        return data

    def on_stream_event(self, exchange: Context, block: bytes) -> bytes:
        state = self._state(exchange)
        event = parse_block(block)
        if len(state.events) < self.max_events:
            entry: dict[str, Any] = {"data": event.data}
            if event.event is not None:
                entry["event"] = event.event
            state.events.append(entry)
        else:
            state.dropped_events += 1
        if event.event not in ("error", "ping"):
            text = _delta_text(event.data)
            if text:
                state.text.append(text)
        return block

    def on_complete(self, exchange: Context) -> None:
        state = self._state(exchange)
        started = exchange.started_at
        request_body = exchange.request_body
        request = {
            "method": exchange.request_method.decode("latin-1"),
            "target": redact_target(exchange.request_target.decode("latin-1")),
            "headers": redact_headers(exchange.request_headers),
            "body": _body(
                request_body[: self.max_body],
                exchange.request_headers,
                self.max_body,
                len(request_body) > self.max_body,
            ),
        }
        response: dict[str, Any] | None = None
        if exchange.response_status is not None:
            response = {
                "status": exchange.response_status,
                "headers": redact_headers(exchange.response_headers),
            }
            if exchange.is_stream:
                response["events"] = state.events
                if state.dropped_events:
                    response["events_dropped"] = state.dropped_events
                response["text"] = "".join(state.text)
            else:
                response["body"] = _body(
                    b"".join(state.body),
                    exchange.response_headers,
                    self.max_body,
                    state.body_truncated,
                )
        first = exchange.first_upstream_byte_at
        ended = exchange.ended_at
        error = exchange.error
        usage = exchange.usage
        upstream = exchange.upstream_url
        record = {
            "id": exchange.exchange_id,
            "outcome": exchange.outcome,
            "model": exchange.model,
            "key": getattr(exchange.key, "name", None),
            "request": request,
            "upstream": None if upstream is None else redact_target(upstream),
            "attempts": [attempt.record() for attempt in exchange.attempts],
            "usage": None
            if usage is None
            else {
                "input_tokens": usage.input_tokens,
                "output_tokens": usage.output_tokens,
                "cached_input_tokens": usage.cached_input_tokens,
                "cache_creation_tokens": usage.cache_creation_tokens,
                "estimated": exchange.usage_estimated,
            },
            "cost_usd": exchange.cost_usd,
            "response": response,
            "error": None
            if error is None
            else {
                "message": str(error),
                "type": error.error_type,
                "code": error.code,
                "status": error.error_status_hint,
            },
            "timings": {
                "start": _iso(exchange.wall_time),
                "first_upstream_byte_ms": None if first is None else (first - started) * 1e3,
                "end_ms": None if ended is None else (ended - started) * 1e3,
            },
        }
        exchange.emit(
            WriteTrace(
                directory=self.dir,
                record=record,
                rotate=self.rotate,
                max_age=self.max_age,
                max_bytes=self.max_bytes,
            )
        )
