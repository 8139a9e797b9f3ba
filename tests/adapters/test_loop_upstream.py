"""The callback upstream client (adapters._loop_upstream) against scripted servers.

The servers are asyncio stream servers on loopback whose per-connection handler
is written in each test; they read requests with a few lines of code so that
they can also answer with garbage, close early, or never answer.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
import trustme

from adapters._loop_upstream import LoopPool, UpstreamCall, UpstreamError
from core import Origin

pytestmark = pytest.mark.anyio

OK = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello"
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the callback client is asyncio's only


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


class Listener:
    """Collects what one call tells; ``wait()`` until it ends or fails."""

    def __init__(self) -> None:
        self.head: tuple[int, list[tuple[bytes, bytes]]] | None = None
        self.body = b""
        self.pieces = 0
        self.reads = 0
        self.failure: tuple[str, str] | None = None
        self.upstream: UpstreamCall | None = None  # set once request() returns
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def reading(self) -> None:
        self.reads += 1

    def read_done(self) -> None:
        pass

    def upstream_head(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        assert self.head is None
        self.head = (status, headers)

    def upstream_data(self, data: bytes) -> None:
        self.body += data
        self.pieces += 1

    def upstream_end(self) -> None:
        assert not self.done.done()
        assert self.upstream is not None
        self.upstream.release()  # as the driver does once the exchange took the end
        self.done.set_result(None)

    def upstream_failed(self, kind: str, message: str) -> None:
        assert not self.done.done()
        self.failure = (kind, message)
        self.done.set_result(None)

    async def wait(self) -> Listener:
        await asyncio.wait_for(self.done, 10)
        return self


async def read_request(reader: asyncio.StreamReader) -> bytes | None:
    """The next request's head and body (Content-Length only), or None at EOF."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return head + await reader.readexactly(length)


@asynccontextmanager
async def server(
    handler: Handler, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[tuple[Origin, list[int]]]:
    """A server on 127.0.0.1; yields its origin and the connections it accepted."""
    accepted: list[int] = []

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(len(accepted))
        try:
            await handler(reader, writer, len(accepted) - 1)
        finally:
            writer.close()

    srv = await asyncio.start_server(on_connection, "127.0.0.1", 0, ssl=ssl_context)
    port = srv.sockets[0].getsockname()[1]
    origin = Origin(scheme="https" if ssl_context else "http", host="127.0.0.1", port=port)
    try:
        yield origin, accepted
    finally:
        srv.close()


def call(pool: LoopPool, origin: Origin, *, method: bytes = b"GET", body: bytes = b"") -> Listener:
    listener = Listener()
    headers = [(b"host", b"upstream")]
    if body:
        headers.append((b"content-length", str(len(body)).encode()))
    listener.upstream = pool.request(
        origin, method, b"/x", headers, body, connect_timeout=5.0, listener=listener
    )
    return listener


async def answer_each(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
    while await read_request(reader) is not None:
        writer.write(OK)


async def test_keep_alive_reuses_the_connection() -> None:
    pool = LoopPool()
    async with server(answer_each) as (origin, accepted):
        for _ in range(3):
            got = await call(pool, origin, method=b"POST", body=b"{}").wait()
            assert got.head is not None and got.head[0] == 200
            assert got.body == b"hello"
        assert len(accepted) == 1
        assert pool.statistics()["reused"] == 2
    pool.close()


async def test_an_idle_connection_the_server_closed_is_not_used() -> None:
    async def once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await read_request(reader)
        writer.write(OK)
        await writer.drain()
        writer.close()  # after one answer, despite keep-alive

    pool = LoopPool()
    async with server(once) as (origin, accepted):
        assert (await call(pool, origin).wait()).body == b"hello"
        # Wait until the pool has seen the close (or would see it when polled).
        for _ in range(100):
            if len(accepted) == 1 and pool.statistics()["idle"] in (0, 1):
                break
            await asyncio.sleep(0)
        second = await call(pool, origin).wait()
        assert second.failure is None
        assert second.body == b"hello"
        assert len(accepted) == 2
    pool.close()


async def test_a_reused_connection_closed_before_any_answer_is_sent_once_more() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(OK)
        await writer.drain()
        if n == 0:
            await read_request(reader)  # the second request: read, never answered
            return
        await answer_each(reader, writer, n)

    pool = LoopPool()
    async with server(handler) as (origin, accepted):
        assert (await call(pool, origin).wait()).body == b"hello"
        second = await call(pool, origin).wait()
        assert second.failure is None
        assert second.body == b"hello"
        assert len(accepted) == 2
        assert pool.statistics()["retried"] == 1
    pool.close()


async def test_no_second_send_once_the_answer_has_begun() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(OK)
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 50\r\n\r\nhal")
        await writer.drain()

    pool = LoopPool()
    async with server(handler) as (origin, accepted):
        await call(pool, origin).wait()
        second = await call(pool, origin).wait()
        assert second.failure is not None
        assert second.failure[0] == "reset"
        assert len(accepted) == 1
    pool.close()


@pytest.mark.parametrize(
    ("answer", "kind"),
    [
        (b"NOT HTTP AT ALL\r\n\r\n", "protocol"),
        (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n", "protocol"),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhal", "reset"),
    ],
)
async def test_a_bad_answer_fails_with_its_kind(answer: bytes, kind: str) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await read_request(reader)
        writer.write(answer)
        await writer.drain()

    pool = LoopPool()
    async with server(handler) as (origin, _):
        got = await call(pool, origin).wait()
        assert got.failure is not None
        assert got.failure[0] == kind
        assert str(origin) in got.failure[1]
    assert pool.statistics()["in_use"] == 0
    pool.close()


async def test_connection_refused_is_connect() -> None:
    async with server(answer_each) as (origin, _):
        pass  # closed: nothing listens on that port any more
    got = await call(LoopPool(), origin).wait()
    assert got.failure is not None
    assert got.failure[0] == "connect"
    assert got.failure[1].startswith(f"cannot connect to {origin}")


async def test_connect_timeout_covers_the_tls_handshake() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await reader.read()  # never answers the TLS hello

    async with server(silent) as (origin, _):
        tls = Origin(scheme="https", host=origin.host, port=origin.port)
        listener = Listener()
        LoopPool().request(
            tls, b"GET", b"/", [(b"host", b"h")], b"", connect_timeout=0.2, listener=listener
        )
        got = await listener.wait()
    assert got.failure is not None
    assert got.failure[0] == "timeout"


async def test_tls(ca: trustme.CA) -> None:
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    pool = LoopPool(ssl_context=client_context)
    async with server(answer_each, server_context) as (origin, accepted):
        for _ in range(2):
            got = await call(pool, origin).wait()
            assert got.body == b"hello"
        assert len(accepted) == 1
    pool.close()


async def test_abort_closes_the_connection_and_tells_nothing() -> None:
    closed = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhal")
        await writer.drain()
        assert await reader.read() == b""  # the client closed
        closed.set()

    pool = LoopPool()
    async with server(handler) as (origin, _):
        listener = Listener()
        upstream = pool.request(
            origin, b"GET", b"/", [(b"host", b"h")], b"", connect_timeout=5, listener=listener
        )
        while not listener.body:
            await asyncio.sleep(0.01)
        upstream.abort()
        await asyncio.wait_for(closed.wait(), 10)
        assert not listener.done.done()
    assert pool.statistics()["in_use"] == 0


async def test_an_invalid_request_is_refused_before_sending() -> None:
    with pytest.raises(UpstreamError) as info:
        LoopPool().request(
            Origin(scheme="http", host="127.0.0.1", port=9),
            b"GET",
            b"/",
            [(b"host", b"h"), (b"x-key", b"secret\r\nx-injected: 1")],
            b"",
            connect_timeout=1,
            listener=Listener(),
        )
    assert info.value.kind == "protocol"
    assert "secret" not in str(info.value)
