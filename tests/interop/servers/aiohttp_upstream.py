"""A third-party upstream for the interop tests, on aiohttp.web.

    python -m tests.interop.servers.aiohttp_upstream [--port 0] [--host 127.0.0.1]

prints ``listening on http://HOST:PORT`` on stdout once it accepts connections. It serves
the contract in tests/interop/servers/__init__.py with aiohttp's own framing: a body of
known length gets the ``Content-Length`` this module writes, any other body aiohttp's
chunked encoding. What aiohttp cannot do, and this server therefore does not offer:

- the ``close`` framing: on HTTP/1.1 aiohttp chunks every body of unknown length, and has
  no public way to frame one by closing the connection (404 for that path);
- header-name casing of ``Transfer-Encoding``: aiohttp writes that header itself, always
  spelled so, whatever the casing asked for (every other name, ``Date`` and ``Server``
  included, is written by this module in the chosen casing; with ``title`` aiohttp adds
  its own ``Date`` and ``Server``).

``gzip`` is compressed here (zlib, flushed after each SSE event), not by aiohttp's
``enable_compression``, which would hold every event back until the end of the body.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import struct
import zlib
from collections.abc import Sequence
from email.utils import formatdate
from pathlib import Path
from typing import Any, Final

from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE
from multidict import CIMultiDict

__all__ = ["FRAMINGS", "CASINGS", "DELIVERIES", "FIXED_NAMES", "make_app", "main"]

FRAMINGS: Final = ("length", "chunked", "gzip")
CASINGS: Final = ("lower", "title", "upper")
DELIVERIES: Final = ("whole", "event", "byte")
#: Header names aiohttp writes itself, in this spelling, whatever the casing.
FIXED_NAMES: Final = ("Transfer-Encoding",)

_EVENT_GAP: Final = 0.002
_ROUTES: Final = {"/v1/chat/completions": "openai", "/v1/messages": "anthropic"}
_RECORDED_MODELS: Final = {
    "openai": b'"gpt-4o-mini"',
    "anthropic": b'"claude-3-5-sonnet-20241022"',
}
_DEFAULT_PAYLOADS: Final = Path(__file__).resolve().parents[1] / "payloads"
_LINGER_RST: Final = struct.pack("ii", 1, 0)


def _spell(name: str, casing: str) -> str:
    if casing == "lower":
        return name.lower()
    if casing == "upper":
        return name.upper()
    return name


def _sse_events(text: bytes) -> list[bytes]:
    events = [event + b"\n\n" for event in text.split(b"\n\n")]
    events[-1] = events[-1][:-2]
    return [event for event in events if event]


def _halves(text: bytes) -> list[bytes]:
    half = len(text) // 2
    return [text[:half], text[half:]]


def _gzip(pieces: Sequence[bytes]) -> list[bytes]:
    """One gzip stream, sync-flushed after each piece: the compressed pieces, each
    decodable once the ones before it have arrived (the trailer goes with the last)."""
    compressor = zlib.compressobj(wbits=31)
    out = [compressor.compress(piece) + compressor.flush(zlib.Z_SYNC_FLUSH) for piece in pieces]
    out[-1] += compressor.flush()
    return out


class _Upstream:
    """The handlers and their shared state (the counts `/_stats` reports)."""

    def __init__(self, payloads: Path) -> None:
        def read(name: str) -> bytes:
            return (payloads / name).read_bytes()

        self.json = {
            "openai": read("openai_chat.json"),
            "anthropic": read("anthropic_messages.json"),
        }
        self.stream = {
            "openai": read("openai_chat_stream.sse"),
            "anthropic": read("anthropic_messages_stream.sse"),
        }
        self.stream_usage = read("openai_chat_stream_usage.sse")
        self.errors: dict[str, dict[str, Any]] = json.loads(read("errors.json"))
        self.stats: dict[str, Any] = {
            "requests": 0,
            "paths": {},
            "last_path": None,
            "last_headers": {},
            "last_body": None,
        }

    async def health(self, request: web.Request) -> web.StreamResponse:
        return web.Response(text="ok\n")

    async def get_stats(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self.stats)

    async def api(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        parts = path.split("/", 4)  # "", framing, casing, delivery, rest
        route = "/" + parts[4] if len(parts) == 5 else ""
        api = _ROUTES.get(route, "openai")
        if (
            route not in _ROUTES
            or parts[1] not in FRAMINGS
            or parts[2] not in CASINGS
            or parts[3] not in DELIVERIES
        ):
            return await self._error(request, ("length", "title", "whole"), api, 404)
        variant = (parts[1], parts[2], parts[3])
        if request.method != "POST":
            return await self._error(request, variant, api, 404)

        raw = await request.read()
        self.stats["requests"] += 1
        self.stats["paths"][path] = self.stats["paths"].get(path, 0) + 1
        self.stats["last_path"] = path
        headers: dict[str, str] = {}
        for name_bytes, value_bytes in request.raw_headers:
            name = name_bytes.decode("latin-1").lower()
            value = value_bytes.decode("latin-1")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        self.stats["last_headers"] = headers
        self.stats["last_body"] = raw.decode("utf-8", "replace")

        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return await self._error(request, variant, api, 400)
        model = body.get("model")
        model = model if isinstance(model, str) else None
        if model in ("status-429", "status-409"):
            return await self._error(request, variant, api, int(model[-3:]), retry_after=True)
        reset = model == "reset-mid-stream"
        stream = body.get("stream") is True or reset
        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True

        if not stream:
            text = self.json[api]
        elif api == "openai" and include_usage:
            text = self.stream_usage
        else:
            text = self.stream[api]
        if model is not None:
            text = text.replace(_RECORDED_MODELS[api], json.dumps(model).encode())
        if not stream:
            return await self._send(
                request, variant, 200, [("Content-Type", "application/json")], _halves(text)
            )
        events = _sse_events(text)
        sse_headers = [
            ("Content-Type", "text/event-stream; charset=utf-8"),
            ("Cache-Control", "no-cache"),
        ]
        return await self._send(request, variant, 200, sse_headers, events, reset=reset)

    async def _error(
        self,
        request: web.Request,
        variant: tuple[str, str, str],
        api: str,
        status: int,
        *,
        retry_after: bool = False,
    ) -> web.StreamResponse:
        headers = [("Content-Type", "application/json")]
        if retry_after:
            headers.append(("Retry-After", "0"))
        text = json.dumps(self.errors[api][str(status)], separators=(",", ":")).encode()
        return await self._send(request, variant, status, headers, _halves(text))

    async def _send(
        self,
        request: web.Request,
        variant: tuple[str, str, str],
        status: int,
        headers: list[tuple[str, str]],
        pieces: list[bytes],
        *,
        reset: bool = False,
    ) -> web.StreamResponse:
        """Send one answer: ``pieces`` are its natural units (SSE events, JSON halves);
        ``reset``: the head, then the first two pieces, then an RST."""
        framing, casing, delivery = variant
        if framing == "gzip":
            units = _gzip([b"".join(pieces)] if delivery == "whole" and not reset else pieces)
            headers = [*headers, ("Content-Encoding", "gzip")]
        else:
            units = pieces
        if framing == "length":
            headers = [*headers, ("Content-Length", str(sum(map(len, units))))]
        # A reset sends the first two units of a body its head says is whole.
        sent = units[:2] if reset else units
        body = sent if delivery == "event" else [b"".join(sent)]
        if delivery == "byte":
            body = [body[0][i : i + 1] for i in range(len(body[0]))]
        if casing != "title":
            headers += [("Date", formatdate(usegmt=True)), ("Server", SERVER_SOFTWARE)]
        closing = not request.keep_alive
        if closing:
            headers.append(("Connection", "close"))
        spelled = CIMultiDict((_spell(name, casing), value) for name, value in headers)

        if delivery == "whole" and not reset:
            # One write: aiohttp sends a Response's head together with its body.
            whole = web.Response(status=status, body=body[0], headers=spelled)
            if framing != "length":
                whole.enable_chunked_encoding()
            if closing:
                whole.force_close()
            return whole

        response = web.StreamResponse(status=status, headers=spelled)
        if framing != "length":
            response.enable_chunked_encoding()
        if closing:
            response.force_close()
        await response.prepare(request)  # sends the head
        gap = _EVENT_GAP if delivery == "event" else 0.0
        try:
            for index, piece in enumerate(body):
                if index:
                    await asyncio.sleep(gap)
                await response.write(piece)
            if not reset:
                await response.write_eof()
        except ConnectionError:
            # The client went away: end quietly, as aiohttp does when it cancels a handler.
            raise asyncio.CancelledError from None
        if reset:
            transport = request.transport
            assert transport is not None
            sock: socket.socket = transport.get_extra_info("socket")
            # An RST, not a FIN: abruptly, as a crashed upstream would.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
            transport.abort()
            raise asyncio.CancelledError  # aiohttp drops the request without writing more
        return response


def make_app(payloads: Path = _DEFAULT_PAYLOADS) -> web.Application:
    """The upstream as an aiohttp application (the payload files read once, here)."""
    upstream = _Upstream(payloads)
    app = web.Application()
    app.router.add_get("/health", upstream.health)
    app.router.add_get("/_stats", upstream.get_stats)
    app.router.add_route("*", "/{tail:.*}", upstream.api)
    return app


async def _serve(host: str, port: int, payloads: Path) -> None:
    runner = web.AppRunner(make_app(payloads), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound_host, bound_port = runner.addresses[0][:2]
    print(f"listening on http://{bound_host}:{bound_port}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--payloads", type=Path, default=_DEFAULT_PAYLOADS)
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args.host, args.port, args.payloads))


if __name__ == "__main__":
    main()
