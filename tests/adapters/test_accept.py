"""The accept loop takes every connection queued on the listening socket at one
wake-up (a loop busy with thousands of streams wakes it seldom: one connection
a wake-up let the listen queue overflow on trio)."""

from __future__ import annotations

import socket

import anyio
import pytest

from adapters._streams import _AcceptBackoff, accept_queued, listen

CLIENTS = 20


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.mark.anyio
async def test_the_connections_queued_are_taken_at_one_wake_up() -> None:
    with listen("127.0.0.1", 0) as listening:
        port = listening.getsockname()[1]
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(CLIENTS)]
        try:
            with anyio.fail_after(5):
                queued = await accept_queued(listening, _AcceptBackoff())
            assert len(queued) == CLIENTS  # connected (handshake done): all queued
            for n, client in enumerate(clients):
                client.sendall(b"%d" % n)
            got = set()
            for sock in queued:
                with sock:
                    sock.setblocking(True)
                    got.add(sock.recv(8))
            assert got == {b"%d" % n for n in range(CLIENTS)}
            # None queued: it waits for the next one.
            late = socket.create_connection(("127.0.0.1", port))
            with late, anyio.fail_after(5):
                (accepted,) = await accept_queued(listening, _AcceptBackoff())
                accepted.close()
        finally:
            for client in clients:
                client.close()


@pytest.mark.anyio
async def test_with_nothing_queued_it_waits() -> None:
    with listen("127.0.0.1", 0) as listening:
        with anyio.move_on_after(0.05) as scope:
            await accept_queued(listening, _AcceptBackoff())
        assert scope.cancelled_caught
