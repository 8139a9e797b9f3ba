"""The asgi adapter's transport wrapper: what it holds goes out as one write, in
order, and nothing held is lost to a close or written after an abort.

Over a real asyncio transport (a loopback socket pair), read back by the peer.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from adapters._corked import CorkedTransport


@pytest.fixture
def anyio_backend() -> Any:
    return "asyncio"


class Peer(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport


async def pair() -> tuple[CorkedTransport, asyncio.Transport, socket.socket, list[bytes]]:
    """A corked transport on one end of a socket pair, the writes reaching the
    real transport (recorded), and the other end."""
    ours, theirs = socket.socketpair()
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_connection(Peer, sock=ours)
    writes: list[bytes] = []
    write = transport.write

    def recorded(data: Any) -> None:
        writes.append(bytes(data))
        write(data)

    transport.write = recorded  # type: ignore[method-assign]
    theirs.setblocking(False)
    return CorkedTransport(transport), transport, theirs, writes


async def read_until(sock: socket.socket, size: int) -> bytes:
    loop = asyncio.get_running_loop()
    got = b""
    while len(got) < size:
        chunk = await loop.sock_recv(sock, size - len(got))
        if not chunk:
            break
        got += chunk
    return got


@pytest.mark.anyio
async def test_held_writes_go_out_as_one_in_order() -> None:
    corked, transport, peer, writes = await pair()
    corked.hold()
    corked.write(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n")
    corked.write(b"")
    corked.write(b"hello")
    assert writes == []
    corked.release()
    assert writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello"]
    assert await read_until(peer, len(writes[0])) == writes[0]
    corked.write(b"more")  # not held: at once
    assert writes[1:] == [b"more"]
    corked.close()
    peer.close()


@pytest.mark.anyio
async def test_a_close_while_holding_writes_what_is_held_first() -> None:
    corked, transport, peer, writes = await pair()
    corked.hold()
    corked.write(b"head;")
    corked.write(b"body")
    corked.close()  # uvicorn closes right after the last write of a non-keep-alive response
    corked.release()  # the sink's release after its sends: nothing left
    assert writes == [b"head;body"]
    assert await read_until(peer, 100) == b"head;body"  # then EOF
    peer.close()


@pytest.mark.anyio
async def test_lines_and_an_eof_keep_their_place_after_what_is_held() -> None:
    corked, transport, peer, writes = await pair()
    corked.hold()
    corked.write(b"head;")
    corked.writelines([b"a", b"b;"])
    assert writes == []
    corked.write_eof()
    assert writes == [b"head;ab;"]
    assert await read_until(peer, 100) == b"head;ab;"  # then EOF
    corked.close()
    peer.close()


@pytest.mark.anyio
async def test_an_abort_or_a_drop_writes_nothing_held() -> None:
    corked, transport, peer, writes = await pair()
    corked.hold()
    corked.write(b"never")
    corked.drop()
    corked.release()
    corked.hold()
    corked.write(b"never either")
    corked.abort()
    corked.release()
    assert writes == []
    assert await read_until(peer, 100) == b""
    peer.close()


@pytest.mark.anyio
async def test_everything_else_is_the_transports() -> None:
    corked, transport, peer, writes = await pair()
    assert corked.get_extra_info("socket") is transport.get_extra_info("socket")
    assert corked.is_closing() is False
    corked.pause_reading()
    assert corked.is_reading() is False  # by delegation
    corked.resume_reading()
    assert corked.get_write_buffer_size() == 0
    corked.close()
    assert corked.is_closing() is True
    peer.close()
