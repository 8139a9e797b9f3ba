"""The floor: a minimal pass-through on asyncio (uvloop) and httptools, for comparison.

What any Python proxy on this stack must do for a request and nothing more:
parse the client's request with llhttp, forward it on one keep-alive upstream
connection, parse the response's framing with llhttp, write it back in one
``transport.write`` -- or, for a response without a length (a stream), its
head at once and each piece of body as the upstream read brings it, chunked.
No routing, no limits, no usage, no errors handled, one upstream connection
per client connection, requests answered in order.
``tests.bench.instructions`` counts it (mode ``floor``) beside the proxy, and
``tests.bench.run`` measures it in a column of its own (it takes the flags
every target is given).

    python -m tests.bench.floor --upstream http://127.0.0.1:8000 --port 9000

Prints ``listening on http://HOST:PORT`` once it accepts connections; SIGINT
stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import Any
from urllib.parse import urlsplit

import httptools
import uvloop

__all__ = ["main"]


class _Side(asyncio.Protocol):
    """One connection of the pass-through: its transport, its parser, the body read."""

    parser: Any

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_begin(self) -> None:
        self.body = []

    def on_body(self, body: bytes) -> None:
        self.body.append(body)


class _Upstream(_Side):
    """The client's upstream connection: sends its requests, writes back the answers."""

    def __init__(self, client: _Client) -> None:
        super().__init__()
        self.client = client
        self.parser = httptools.HttpResponseParser(self)
        self.streaming = False
        self.chunked = False
        self.content_type = b""

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.streaming = self.chunked = False
        self.content_type = b""

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"content-type":
            self.content_type = value
        elif name == b"transfer-encoding":
            self.chunked = True

    def on_headers_complete(self) -> None:
        if not self.chunked:  # a length: answered at its end
            return
        self.streaming = True
        head = b"HTTP/1.1 %d OK\r\ncontent-type: %s\r\ntransfer-encoding: chunked\r\n\r\n"
        assert self.client.transport is not None
        self.client.transport.write(head % (self.parser.get_status_code(), self.content_type))

    def on_body(self, body: bytes) -> None:
        if self.streaming:
            assert self.client.transport is not None
            self.client.transport.write(b"%x\r\n%s\r\n" % (len(body), body))
        else:
            self.body.append(body)

    def on_message_complete(self) -> None:
        assert self.client.transport is not None
        if self.streaming:
            self.client.transport.write(b"0\r\n\r\n")
            return
        body = b"".join(self.body)
        status = self.parser.get_status_code()
        head = b"HTTP/1.1 %d OK\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n"
        self.client.transport.write(head % (status, self.content_type, len(body)) + body)


class _Client(_Side):
    def __init__(self, host: str, port: int) -> None:
        super().__init__()
        self.host, self.port = host, port
        self.parser = httptools.HttpRequestParser(self)
        self.upstream: _Upstream | None = None
        self.url = b""

    def on_url(self, url: bytes) -> None:
        self.url = url

    def on_message_complete(self) -> None:
        body = b"".join(self.body)
        request = b"%s %s HTTP/1.1\r\nhost: %s:%d\r\ncontent-type: application/json\r\n" % (
            self.parser.get_method(),
            self.url,
            self.host.encode(),
            self.port,
        )
        request += b"content-length: %d\r\n\r\n%s" % (len(body), body)
        upstream = self.upstream
        if upstream is not None and upstream.transport is not None:
            upstream.transport.write(request)
        else:
            asyncio.get_running_loop().create_task(self._connect(request))

    async def _connect(self, request: bytes) -> None:
        loop = asyncio.get_running_loop()
        _, self.upstream = await loop.create_connection(
            lambda: _Upstream(self), self.host, self.port
        )
        assert self.upstream.transport is not None
        self.upstream.transport.write(request)


async def _serve(upstream: str, host: str, port: int) -> None:
    parts = urlsplit(upstream)
    assert parts.hostname is not None and parts.port is not None
    up_host, up_port = parts.hostname, parts.port
    loop = asyncio.get_running_loop()
    # the proxy's listen backlog (adapters._streams.listen): bursts of connections queue
    server = await loop.create_server(lambda: _Client(up_host, up_port), host, port, backlog=2048)
    stop = loop.create_future()
    loop.add_signal_handler(signal.SIGINT, stop.set_result, None)
    bound = server.sockets[0].getsockname()
    print(f"listening on http://{bound[0]}:{bound[1]}", flush=True)
    await stop
    server.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.floor", description=__doc__)
    parser.add_argument("--upstream", "--base-url", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    # what the bench gives every target, of no use here
    parser.add_argument("--type", help=argparse.SUPPRESS)
    parser.add_argument("--log-level", help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    uvloop.run(_serve(opts.upstream, opts.host, opts.port))


if __name__ == "__main__":
    main()
