"""The lean upstream client against small scripted servers on loopback sockets.

Every test runs on asyncio and on trio. The servers are anyio listeners whose
per-connection handler is written in the test; they parse requests with a
few lines of code (no h11) so that they can also answer with garbage.
"""

from __future__ import annotations

import dataclasses
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import anyio
import pytest
import trustme
from anyio.abc import ByteStream, SocketAttribute
from anyio.streams.tls import TLSListener

from adapters._upstream import (
    Origin,
    PoolStatistics,
    UpstreamError,
    UpstreamPool,
    UpstreamResponse,
)
from core import LocalProtocolError
from core._headers import content_length

# A body larger than one receive, to see it arrive in pieces.
BIG = bytes(range(256)) * 1024
CLOSE_DELIMITED = b"HTTP/1.1 200 OK\r\n\r\nuntil the end"


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    backend: str = request.param
    return backend


@dataclasses.dataclass
class Received:
    """A request as the server saw it."""

    method: bytes
    target: bytes
    head: bytes
    headers: dict[bytes, bytes]
    body: bytes


class Peer:
    """The server's side of one connection."""

    def __init__(self, stream: ByteStream, index: int) -> None:
        self.stream = stream
        self.index = index
        self._buffer = b""

    async def _fill(self) -> bool:
        try:
            data = await self.stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            return False
        self._buffer += data
        return True

    async def read_request(self) -> Received | None:
        """The next request, or None if the client closed the connection."""
        while b"\r\n\r\n" not in self._buffer:
            if not await self._fill():
                assert self._buffer == b"", "the client closed mid-request"
                return None
        head, _, rest = self._buffer.partition(b"\r\n\r\n")
        request_line, *lines = head.split(b"\r\n")
        method, target, _ = request_line.split(b" ")
        headers: dict[bytes, bytes] = {}
        for line in lines:
            name, _, value = line.partition(b":")
            assert name.lower() not in headers, f"duplicate header {name!r}"
            headers[name.lower()] = value.strip()
        length = int(headers.get(b"content-length", b"0"))
        self._buffer = rest
        while len(self._buffer) < length:
            assert await self._fill(), "the client closed mid-body"
        body, self._buffer = self._buffer[:length], self._buffer[length:]
        return Received(method, target, head, headers, body)

    async def send(self, data: bytes) -> None:
        await self.stream.send(data)

    async def wait_closed(self) -> None:
        """Wait until the client closes the connection (bytes it sends are dropped)."""
        while await self._fill():
            pass

    def reset(self) -> None:
        """Abort the connection with a TCP RST."""
        raw = self.stream.extra(SocketAttribute.raw_socket)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


Handler = Callable[[Peer], Awaitable[None]]


@dataclasses.dataclass
class Server:
    origin: Origin
    connections: int = 0


@asynccontextmanager
async def serve(
    handler: Handler, *, ssl_context: ssl.SSLContext | None = None, host: str = "127.0.0.1"
) -> AsyncIterator[Server]:
    """Run ``handler`` for each connection accepted on a loopback port."""
    tcp = await anyio.create_tcp_listener(local_host=host)
    port = tcp.extra(SocketAttribute.local_port)
    listener = tcp if ssl_context is None else TLSListener(tcp, ssl_context, False)
    server = Server(Origin(scheme="http" if ssl_context is None else "https", host=host, port=port))

    async def accepted(stream: ByteStream) -> None:
        server.connections += 1
        async with stream:
            await handler(Peer(stream, server.connections))

    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, accepted)
        yield server
        tg.cancel_scope.cancel()


def ok(body: bytes = b"ok", extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n%s\r\n%s" % (len(body), extra, body)


async def keep_alive(peer: Peer) -> None:
    """Answer every request on the connection with 200 and its connection number."""
    while await peer.read_request():
        await peer.send(ok(b"%d" % peer.index))


def framed(
    method: bytes, body: bytes, headers: list[tuple[bytes, bytes]]
) -> list[tuple[bytes, bytes]]:
    """``headers`` and the Content-Length the core adds to every upstream request."""
    length = content_length(method, body)
    return headers if length is None else [*headers, (b"content-length", length)]


async def start(
    pool: UpstreamPool, origin: Origin, method: bytes = b"GET", body: bytes = b""
) -> UpstreamResponse:
    """Send a request with a minimal head, framed as the core frames it."""
    headers = framed(method, body, [(b"host", b"h")])
    return await pool.request(origin, method, b"/", headers, body, connect_timeout=5)


async def get(
    pool: UpstreamPool,
    origin: Origin,
    method: bytes = b"GET",
    headers: list[tuple[bytes, bytes]] | None = None,
    body: bytes = b"",
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """One request read to its end."""
    if headers is None:
        headers = [(b"Host", b"example.test")]
    response = await pool.request(origin, method, b"/v1/x", headers, body, connect_timeout=5)
    status, response_headers = await response.receive_head()
    content = b""
    while chunk := await response.receive_data():
        content += chunk
    return status, response_headers, content


@pytest.fixture
async def pool() -> AsyncIterator[UpstreamPool]:
    pool = UpstreamPool()
    yield pool
    assert pool.statistics().in_use == 0, "a test leaked a checked-out connection"
    await pool.aclose()


# -- keep-alive and the pool ------------------------------------------------------------


@pytest.mark.anyio
async def test_second_request_reuses_the_connection(pool: UpstreamPool) -> None:
    async with serve(keep_alive) as server:
        assert await get(pool, server.origin) == (200, [(b"content-length", b"1")], b"1")
        assert await get(pool, server.origin) == (200, [(b"content-length", b"1")], b"1")
    assert server.connections == 1
    stats = pool.statistics()
    assert (stats.opened, stats.reused, stats.in_use) == (1, 1, 0)
    assert dict(stats.idle_per_origin) == {server.origin: 1}


@pytest.mark.anyio
async def test_idle_connection_closed_by_the_server_is_discarded(pool: UpstreamPool) -> None:
    closed = anyio.Event()

    async def close_first(peer: Peer) -> None:
        if peer.index == 1:
            assert await peer.read_request()
            await peer.send(ok())
            await peer.stream.aclose()
            closed.set()
            return
        await keep_alive(peer)

    async with serve(close_first) as server:
        await get(pool, server.origin)
        await closed.wait()
        assert await get(pool, server.origin) == (200, [(b"content-length", b"1")], b"2")
    stats = pool.statistics()
    assert (stats.opened, stats.reused, stats.stale_discarded, stats.retried) == (2, 0, 1, 0)


@pytest.mark.anyio
async def test_failed_write_on_a_reused_connection_is_retried_once(pool: UpstreamPool) -> None:
    first_done = anyio.Event()

    async def handler(peer: Peer) -> None:
        if peer.index == 1:
            assert await peer.read_request()
            await peer.send(ok())
            first_done.set()
            await anyio.sleep_forever()  # keep the socket open: the client must not see it stale
        await keep_alive(peer)

    async with serve(handler) as server:
        await get(pool, server.origin)
        await first_done.wait()
        # Break the idle connection on our side only: writing to it now fails,
        # but it does not poll readable. (Reaches into the pool: no public way.)
        (idle,) = pool._idle[server.origin]
        raw = idle.stream.extra(SocketAttribute.raw_socket)
        with socket.fromfd(raw.fileno(), raw.family, socket.SOCK_STREAM) as dup:
            dup.shutdown(socket.SHUT_WR)
        assert await get(pool, server.origin) == (200, [(b"content-length", b"1")], b"2")
    stats = pool.statistics()
    assert (stats.opened, stats.reused, stats.retried) == (2, 1, 1)


@pytest.mark.anyio
async def test_reused_connection_closed_before_any_answer_is_sent_once_more(
    pool: UpstreamPool,
) -> None:
    # The keep-alive race: the server closes an idle connection just as the next
    # request goes out on it. It never answered, so the request is sent again.
    async def handler(peer: Peer) -> None:
        if peer.index == 1:
            assert await peer.read_request()
            await peer.send(ok())
            assert await peer.read_request()
            return  # closed without a byte of an answer
        await keep_alive(peer)

    async with serve(handler) as server:
        await get(pool, server.origin)
        assert await get(pool, server.origin) == (200, [(b"content-length", b"1")], b"2")
    assert server.connections == 2
    stats = pool.statistics()
    assert (stats.opened, stats.reused, stats.retried) == (2, 1, 1)


@pytest.mark.anyio
async def test_no_second_send_once_the_answer_has_begun(pool: UpstreamPool) -> None:
    async def handler(peer: Peer) -> None:
        assert await peer.read_request()
        await peer.send(ok())
        assert await peer.read_request()
        await peer.send(b"HTTP/1.1 200 OK\r\ncontent-le")  # then gone

    async with serve(handler) as server:
        await get(pool, server.origin)
        response = await start(pool, server.origin)
        with pytest.raises(UpstreamError) as caught:
            await response.receive_head()
    assert caught.value.kind == "reset"
    assert server.connections == 1
    assert pool.statistics().retried == 0


@pytest.mark.anyio
async def test_idle_connections_are_capped_per_origin() -> None:
    both_in = anyio.Event()
    arrived = 0
    closed: list[int] = []
    both_closed = anyio.Event()

    async def handler(peer: Peer) -> None:
        nonlocal arrived
        assert await peer.read_request()
        arrived += 1
        if arrived == 2:
            both_in.set()
        await both_in.wait()  # two connections: both requests are in flight together
        await peer.send(ok())
        assert await peer.read_request() is None
        closed.append(peer.index)
        if len(closed) == 2:
            both_closed.set()

    pool = UpstreamPool(max_idle_per_origin=1)
    async with serve(handler) as server:
        first = await start(pool, server.origin)
        second = await start(pool, server.origin)
        for response in (first, second):
            await response.receive_head()
            assert await response.receive_data() == b"ok"
            assert await response.receive_data() == b""
        assert dict(pool.statistics().idle_per_origin) == {server.origin: 1}
        await pool.aclose()
        assert pool.statistics().idle_per_origin == {}
        with anyio.fail_after(5):
            await both_closed.wait()


@pytest.mark.anyio
async def test_statistics_is_an_immutable_snapshot(pool: UpstreamPool) -> None:
    async with serve(keep_alive) as server:
        before = pool.statistics()
        response = await start(pool, server.origin)
        during = pool.statistics()
        await response.receive_head()
        assert await response.receive_data() == b"1"
        assert await response.receive_data() == b""
        after = pool.statistics()
    assert before == PoolStatistics(
        idle_per_origin={}, in_use=0, opened=0, reused=0, stale_discarded=0, retried=0
    )
    assert (during.in_use, during.opened, dict(during.idle_per_origin)) == (1, 1, {})
    assert (after.in_use, dict(after.idle_per_origin)) == (0, {server.origin: 1})
    with pytest.raises(dataclasses.FrozenInstanceError):
        after.in_use = 5  # type: ignore[misc]
    with pytest.raises(TypeError):
        after.idle_per_origin[server.origin] = 0  # type: ignore[index]


# -- what goes on the wire --------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("method", "headers", "body", "expected_length"),
    [
        (b"GET", [], b"", None),
        (b"POST", [], b"", b"0"),
        (b"POST", [], b'{"a": 1}', b"8"),
        (b"DELETE", [], b"abc", b"3"),
        (b"POST", [(b"Content-Length", b"3")], b"abc", b"3"),
        (b"POST", [], BIG, b"%d" % len(BIG)),
    ],
)
async def test_request_framing(
    pool: UpstreamPool,
    method: bytes,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
    expected_length: bytes | None,
) -> None:
    # The core frames every request (Content-Length by core._headers.content_length);
    # the pool sends the headers it is given, and nothing else.
    if not headers:
        headers = framed(method, body, [])
    seen: list[Received] = []

    async def handler(peer: Peer) -> None:
        request = await peer.read_request()
        assert request is not None
        seen.append(request)
        await peer.send(ok())

    async with serve(handler) as server:
        await get(pool, server.origin, method, [(b"Host", b"h"), *headers], body)
    (request,) = seen
    assert (request.method, request.target, request.body) == (method, b"/v1/x", body)
    assert request.headers.get(b"content-length") == expected_length
    assert request.headers[b"host"] == b"h"


@pytest.mark.anyio
@pytest.mark.parametrize("method", [b"POST", b"DELETE"])
async def test_a_body_its_headers_do_not_frame_is_refused(
    pool: UpstreamPool, method: bytes
) -> None:
    async with serve(keep_alive) as server:
        with pytest.raises(UpstreamError) as caught:
            await pool.request(
                server.origin, method, b"/", [(b"host", b"h")], b"abc", connect_timeout=5
            )
    assert caught.value.kind == "protocol"
    assert "framing" in str(caught.value)
    assert server.connections == 0  # refused before a byte of it was sent
    assert pool.statistics().in_use == 0


@pytest.mark.anyio
@pytest.mark.parametrize(
    "headers",
    [
        [(b"host", b"h"), (b"authorization", b"Bearer sk-secret\r\nx: y")],
        [(b"authorization", b"Bearer sk-secret")],  # no Host
        [(b"host", b"h"), (b"authorization", b"Bearer sk-secret"), (b"content-length", b"99")],
    ],
    ids=["header-injection", "no-host", "wrong-length"],
)
async def test_invalid_request_is_refused_without_showing_headers(
    pool: UpstreamPool, headers: list[tuple[bytes, bytes]]
) -> None:
    async with serve(keep_alive) as server:
        await get(pool, server.origin)
        with pytest.raises(UpstreamError) as caught:
            await pool.request(server.origin, b"POST", b"/", headers, b"body", connect_timeout=5)
        idle = dict(pool.statistics().idle_per_origin)
    assert caught.value.kind == "protocol"
    assert caught.value.__cause__ is None
    assert caught.value.__context__ is None
    assert "sk-secret" not in str(caught.value)
    # refused before a connection is taken: the idle one stays pooled
    assert idle == {server.origin: 1}


# -- response bodies --------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("response", "body", "pooled"),
    [
        (ok(b"hello"), b"hello", True),
        (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
            b"hello world",
            True,
        ),
        (CLOSE_DELIMITED, b"until the end", False),
        (ok(BIG), BIG, True),
        (ok(b"bye", b"connection: close\r\n"), b"bye", False),
        (b"HTTP/1.1 204 No Content\r\n\r\n", b"", True),
        (b"HTTP/1.1 304 Not Modified\r\ncontent-length: 10\r\n\r\n", b"", True),
        (b"HTTP/1.1 100 Continue\r\n\r\n" + ok(b"after 100"), b"after 100", True),
        (ok(b"one") + b"HTTP/1.1 200 OK\r\n", b"one", False),  # bytes after the response
    ],
    ids=[
        "content-length",
        "chunked",
        "close-delimited",
        "big",
        "connection-close",
        "204",
        "304",
        "100-continue",
        "trailing-garbage",
    ],
)
async def test_response_bodies(
    pool: UpstreamPool, response: bytes, body: bytes, pooled: bool
) -> None:
    async def close_delimited(peer: Peer) -> None:
        assert await peer.read_request()
        await peer.send(response)
        if response != CLOSE_DELIMITED:  # closing is what ends that body
            await peer.wait_closed()

    async with serve(close_delimited) as server:
        status, _, content = await get(pool, server.origin)
        assert status in (200, 204, 304)
        assert content == body
        assert dict(pool.statistics().idle_per_origin) == ({server.origin: 1} if pooled else {})
        await pool.aclose()


@pytest.mark.anyio
async def test_head_response_has_no_body(pool: UpstreamPool) -> None:
    async def handler(peer: Peer) -> None:
        while request := await peer.read_request():
            assert request.method == b"HEAD"
            await peer.send(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n")

    async with serve(handler) as server:
        assert await get(pool, server.origin, b"HEAD") == (200, [(b"content-length", b"1000")], b"")
        assert await get(pool, server.origin, b"HEAD") == (200, [(b"content-length", b"1000")], b"")
    assert (server.connections, pool.statistics().reused) == (1, 1)


@pytest.mark.anyio
async def test_header_names_are_lower_cased(pool: UpstreamPool) -> None:
    async def handler(peer: Peer) -> None:
        assert await peer.read_request()
        await peer.send(
            b"HTTP/1.1 201 Created\r\nContent-Type: text/plain\r\nX-A: 1\r\nX-A: 2\r\n"
            b"Content-Length: 0\r\n\r\n"
        )

    async with serve(handler) as server:
        status, headers, _ = await get(pool, server.origin)
    assert status == 201
    assert headers == [
        (b"content-type", b"text/plain"),
        (b"x-a", b"1"),
        (b"x-a", b"2"),
        (b"content-length", b"0"),
    ]


@pytest.mark.anyio
async def test_chunks_are_delivered_as_they_arrive(pool: UpstreamPool) -> None:
    first_seen = anyio.Event()

    async def handler(peer: Peer) -> None:
        assert await peer.read_request()
        await peer.send(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n6\r\nfirst!\r\n")
        await first_seen.wait()  # nothing more until the client has the first chunk
        await peer.send(b"6\r\nsecond\r\n0\r\n\r\n")
        await peer.wait_closed()

    async with serve(handler) as server:
        response = await start(pool, server.origin, b"POST", b"{}")
        with anyio.fail_after(5):
            assert (await response.receive_head())[0] == 200
            assert await response.receive_data() == b"first!"
            first_seen.set()
            assert await response.receive_data() == b"second"
            assert await response.receive_data() == b""
            assert await response.receive_data() == b""  # the end stays the end
        await response.aclose()  # no effect: the connection is pooled
        assert dict(pool.statistics().idle_per_origin) == {server.origin: 1}
        await pool.aclose()


@pytest.mark.anyio
async def test_what_one_read_brings_comes_in_one_piece_but_the_bodys_first(
    pool: UpstreamPool,
) -> None:
    events = [b"data: %d\n\n" % n for n in range(10)]
    more = anyio.Event()

    async def handler(peer: Peer) -> None:
        assert await peer.read_request()
        head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
        await peer.send(head + b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in events))
        await more.wait()
        await peer.send(b"%x\r\n%s\r\n0\r\n\r\n" % (len(events[0]), events[0]))
        await peer.wait_closed()

    async with serve(handler) as server:
        response = await start(pool, server.origin, b"POST", b"{}")
        with anyio.fail_after(5):
            assert (await response.receive_head())[0] == 200
            assert response.buffered  # the events came with the head
            assert await response.receive_data() == events[0]  # at once, alone
            assert await response.receive_data() == b"".join(events[1:])
            assert not response.buffered
            more.set()
            assert await response.receive_data() == events[0]
            assert response.buffered  # the end came with it
            assert await response.receive_data() == b""
            assert not response.buffered
        await pool.aclose()


# -- closing early and cancelling -------------------------------------------------------


def head_then_wait(closed: anyio.Event) -> Handler:
    """A handler that sends the head and part of the body, then waits for the client to close."""

    async def handler(peer: Peer) -> None:
        while await peer.read_request():
            if peer.index == 1:
                await peer.send(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial")
                await peer.wait_closed()
                closed.set()
                return
            await peer.send(ok())

    return handler


@pytest.mark.anyio
@pytest.mark.parametrize("how", ["aclose", "abort"])
async def test_closing_before_the_end_closes_the_upstream_socket(
    pool: UpstreamPool, how: str
) -> None:
    closed = anyio.Event()
    async with serve(head_then_wait(closed)) as server:
        response = await start(pool, server.origin)
        await response.receive_head()
        if how == "aclose":
            await response.aclose()
            await response.aclose()
        else:
            response.abort()
            response.abort()
            await response.aclose()
        with anyio.fail_after(5):
            await closed.wait()
        assert pool.statistics().in_use == 0
        with pytest.raises(UpstreamError) as caught:
            await response.receive_data()
        assert caught.value.kind == "reset"
        assert await get(pool, server.origin) == (200, [(b"content-length", b"2")], b"ok")
    stats = pool.statistics()
    assert (stats.opened, stats.reused) == (2, 0)


@pytest.mark.anyio
async def test_abort_while_another_task_reads(pool: UpstreamPool) -> None:
    closed = anyio.Event()
    async with serve(head_then_wait(closed)) as server:
        response = await start(pool, server.origin)
        await response.receive_head()
        assert await response.receive_data() == b"partial"
        failures: list[UpstreamError] = []

        async def reader() -> None:
            with pytest.raises(UpstreamError) as caught:
                await response.receive_data()
            failures.append(caught.value)

        async with anyio.create_task_group() as tg:
            tg.start_soon(reader)
            await anyio.wait_all_tasks_blocked()
            response.abort()
        with anyio.fail_after(5):
            await closed.wait()
    assert [failure.kind for failure in failures] == ["reset"]


@pytest.mark.anyio
async def test_cancelled_read_closes_the_connection(pool: UpstreamPool) -> None:
    closed = anyio.Event()
    async with serve(head_then_wait(closed)) as server:
        response = await start(pool, server.origin)
        await response.receive_head()
        assert await response.receive_data() == b"partial"
        with pytest.raises(TimeoutError), anyio.fail_after(0.05):
            await response.receive_data()  # the rest never comes
        with anyio.fail_after(5):
            await closed.wait()
        await response.aclose()
        assert await get(pool, server.origin) == (200, [(b"content-length", b"2")], b"ok")
    stats = pool.statistics()
    assert (stats.opened, stats.reused, stats.in_use) == (2, 0, 0)


@pytest.mark.anyio
async def test_aclose_keeps_a_connection_whose_response_already_ended(pool: UpstreamPool) -> None:
    async def handler(peer: Peer) -> None:
        while await peer.read_request():
            await peer.send(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")

    async with serve(handler) as server:
        response = await start(pool, server.origin)
        await response.receive_head()  # the body arrived with the head
        await response.aclose()
        assert await get(pool, server.origin) == (200, [(b"content-length", b"2")], b"ok")
    assert (server.connections, pool.statistics().reused) == (1, 1)


@pytest.mark.anyio
async def test_aclose_with_a_malformed_buffered_body_closes(pool: UpstreamPool) -> None:
    closed = anyio.Event()

    async def handler(peer: Peer) -> None:
        assert await peer.read_request()
        await peer.send(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n")
        await peer.wait_closed()
        closed.set()

    async with serve(handler) as server:
        response = await start(pool, server.origin)
        await response.receive_head()
        await response.aclose()
        with anyio.fail_after(5):
            await closed.wait()
    assert pool.statistics().idle_per_origin == {}


@pytest.mark.anyio
async def test_pool_aclose_closes_idle_connections(pool: UpstreamPool) -> None:
    closed = anyio.Event()

    async def handler(peer: Peer) -> None:
        await keep_alive(peer)
        closed.set()

    async with serve(handler) as server:
        await get(pool, server.origin)
        await pool.aclose()
        with anyio.fail_after(5):
            await closed.wait()
    assert pool.statistics().idle_per_origin == {}


@pytest.mark.anyio
async def test_misuse_raises_runtime_error(pool: UpstreamPool) -> None:
    async with serve(keep_alive) as server:
        response = await start(pool, server.origin)
        with pytest.raises(RuntimeError):
            await response.receive_data()
        await response.receive_head()
        with pytest.raises(RuntimeError):
            await response.receive_head()
        await response.aclose()


def test_origin_rejects_other_schemes() -> None:
    with pytest.raises(LocalProtocolError, match="ftp"):
        Origin(scheme="ftp", host="h", port=21)  # type: ignore[arg-type]
    assert str(Origin(scheme="https", host="api.test", port=443)) == "https://api.test:443"


# -- failures ---------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_connection_refused(pool: UpstreamPool, host: str) -> None:
    with socket.socket() as bound:  # bound, not listening: connecting is refused
        bound.bind(("127.0.0.1", 0))
        origin = Origin(scheme="http", host=host, port=bound.getsockname()[1])
        with pytest.raises(UpstreamError) as caught:
            await pool.request(origin, b"GET", b"/", [(b"host", b"h")], b"", connect_timeout=5)
    assert caught.value.kind == "connect"
    assert str(origin) in str(caught.value)
    assert pool.statistics().opened == 0


@pytest.mark.anyio
async def test_connect_timeout_covers_the_tls_handshake(pool: UpstreamPool) -> None:
    async def silent(peer: Peer) -> None:
        await peer.wait_closed()

    async with serve(silent) as server:
        origin = dataclasses.replace(server.origin, scheme="https")
        with pytest.raises(UpstreamError) as caught:
            await pool.request(origin, b"GET", b"/", [(b"host", b"h")], b"", connect_timeout=0.1)
    assert caught.value.kind == "timeout"


@pytest.mark.anyio
@pytest.mark.parametrize("how", ["eof", "rst"])
async def test_reset_mid_body(pool: UpstreamPool, how: str) -> None:
    got_first = anyio.Event()

    async def handler(peer: Peer) -> None:
        assert await peer.read_request()
        await peer.send(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789")
        await got_first.wait()
        if how == "rst":
            peer.reset()
        await peer.stream.aclose()

    async with serve(handler) as server:
        response = await start(pool, server.origin)
        await response.receive_head()
        assert await response.receive_data() == b"0123456789"
        got_first.set()
        with pytest.raises(UpstreamError) as caught:
            await response.receive_data()
    assert caught.value.kind == "reset"
    assert pool.statistics().idle_per_origin == {}


@pytest.mark.anyio
async def test_closed_before_the_response(pool: UpstreamPool) -> None:
    async def handler(peer: Peer) -> None:
        assert await peer.read_request()

    async with serve(handler) as server:
        response = await start(pool, server.origin)
        with pytest.raises(UpstreamError) as caught:
            await response.receive_head()
    assert caught.value.kind == "reset"
    assert server.connections == 1, "a new connection's request is never sent twice"


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("response", "request_headers"),
    [
        (b"SSH-2.0-OpenSSH_9.6\r\n\r\n", []),
        (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", []),
        (b"HTTP/1.1 200 OK\r\nx-big: " + b"a" * 2000, []),  # no end in sight
        (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nnot hex\r\n", []),
        (
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: foo\r\nconnection: upgrade\r\n\r\n",
            [(b"connection", b"upgrade"), (b"upgrade", b"foo")],
        ),
    ],
    ids=["not-http", "bad-header", "head-too-big", "bad-chunk", "switched-protocols"],
)
async def test_malformed_response(
    response: bytes, request_headers: list[tuple[bytes, bytes]]
) -> None:
    closed = anyio.Event()

    async def handler(peer: Peer) -> None:
        assert await peer.read_request()
        await peer.send(response)
        await peer.wait_closed()
        closed.set()

    pool = UpstreamPool(max_head_size=1024)
    async with serve(handler) as server:
        upstream = await pool.request(
            server.origin, b"GET", b"/", [(b"host", b"h"), *request_headers], b"", connect_timeout=5
        )
        with anyio.fail_after(5):
            with pytest.raises(UpstreamError) as caught:
                await upstream.receive_head()
                while await upstream.receive_data():
                    pass
            await closed.wait()
    assert caught.value.kind == "protocol"
    assert str(server.origin) in str(caught.value)
    assert pool.statistics().in_use == 0


# -- TLS --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.mark.anyio
async def test_tls(ca: trustme.CA) -> None:
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_context)
    names: list[str | None] = []
    server_context.sni_callback = lambda _sock, name, _context: names.append(name)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)

    pool = UpstreamPool(ssl_context=client_context)
    async with serve(keep_alive, ssl_context=server_context, host="localhost") as server:
        assert server.origin.scheme == "https"
        assert await get(pool, server.origin) == (200, [(b"content-length", b"1")], b"1")
        assert await get(pool, server.origin) == (200, [(b"content-length", b"1")], b"1")
        await pool.aclose()
    assert names == ["localhost"]
    assert (pool.statistics().opened, pool.statistics().reused) == (1, 1)


@pytest.mark.anyio
async def test_tls_with_an_untrusted_certificate_fails_to_connect(ca: trustme.CA) -> None:
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_context)
    pool = UpstreamPool()  # the default context does not trust the test CA
    async with serve(keep_alive, ssl_context=server_context, host="localhost") as server:
        with pytest.raises(UpstreamError) as caught:
            await start(pool, server.origin)
    assert caught.value.kind == "connect"
    assert "certificate" in str(caught.value).lower()
