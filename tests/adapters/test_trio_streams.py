"""``TrioStream``: the lean TCP stream of the trio runner, over real loopback sockets.

What the servers and the upstream client rely on: every byte in order
whatever the reads bring, the end of the stream, a reset told as anyio's
``BrokenResourceError`` (its cause kept: the upstream client names it), a
blocked write bounded by ``write_timeout``, a close that wakes a waiting
reader, and a writer that never blocks still letting the other tasks run.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from contextlib import contextmanager

import anyio
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters._streams import PumpedStream, bound_writes, connect_tcp
from adapters._trio_streams import TrioStream


@contextmanager
def _pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A connected pair of TCP sockets on loopback: (ours, the peer's)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        ours = socket.create_connection(listener.getsockname())
        peer, _ = listener.accept()
    with ours, peer:
        yield ours, peer


@settings(max_examples=25, deadline=None)
@given(
    chunks=st.lists(st.binary(min_size=1, max_size=3000), min_size=1, max_size=12),
    max_bytes=st.sampled_from([1, 7, 512, 4096, 65536]),
)
def test_every_byte_arrives_in_order_whatever_the_reads_bring(
    chunks: list[bytes], max_bytes: int
) -> None:
    # The peer writes in its own pieces, a checkpoint apart (each may arrive in a
    # read of its own, or several in one); the stream reads at most max_bytes.
    async def main() -> bytes:
        with _pair() as (ours, peer):
            peer.setblocking(False)
            stream = TrioStream(ours)
            received = bytearray()

            async def write() -> None:
                for chunk in chunks:
                    await trio.lowlevel.wait_writable(peer)
                    peer.sendall(chunk)
                    await trio.sleep(0)
                peer.shutdown(socket.SHUT_WR)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(write)
                while True:
                    try:
                        data = await stream.receive(max_bytes)
                    except anyio.EndOfStream:
                        break
                    assert 0 < len(data) <= max_bytes
                    received += data
            await stream.aclose()
            return bytes(received)

    assert trio.run(main) == b"".join(chunks)


def test_a_reset_is_a_broken_resource_with_its_cause() -> None:
    async def main() -> None:
        with _pair() as (ours, peer):
            stream = TrioStream(ours)
            # SO_LINGER 0: the peer's close resets the connection.
            peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            peer.close()
            with pytest.raises(anyio.BrokenResourceError) as caught:
                await stream.receive()
            assert isinstance(caught.value.__cause__, ConnectionResetError)
            await stream.aclose()
            with pytest.raises(anyio.ClosedResourceError):
                await stream.receive()
            with pytest.raises(anyio.ClosedResourceError):
                await stream.send(b"late")

    trio.run(main)


def test_a_write_the_peer_never_reads_times_out_and_closes() -> None:
    async def main() -> None:
        with _pair() as (ours, peer):
            peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            stream = TrioStream(ours)
            stream.write_timeout = 5.0
            start = trio.current_time()
            with pytest.raises(TimeoutError):
                await stream.send(b"x" * (32 << 20))  # more than the kernel buffers
            assert trio.current_time() - start == pytest.approx(5.0)
            # Aborted: closed at once, without waiting for the peer to read.
            assert ours.fileno() == -1
            with pytest.raises(anyio.ClosedResourceError):
                await stream.send(b"more")

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_slow_reader_gets_the_whole_write_within_the_bound() -> None:
    payload = bytes(range(256)) * 20_000  # 5 MB: the write must wait for the reader

    async def main() -> bytes:
        with _pair() as (ours, peer):
            peer.setblocking(False)
            stream = TrioStream(ours)
            stream.write_timeout = 30.0
            received = bytearray()

            async def read() -> None:
                while len(received) < len(payload):
                    await trio.sleep(0.01)  # a slow client
                    await trio.lowlevel.wait_readable(peer)
                    received.extend(peer.recv(1 << 16))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(read)
                await stream.send(payload)
            await stream.aclose()
            return bytes(received)

    assert trio.run(main) == payload


def test_closing_wakes_a_task_waiting_to_read() -> None:
    async def main() -> None:
        with _pair() as (ours, _peer):
            stream = TrioStream(ours)
            failed: list[BaseException] = []

            async def reader(task_status: trio.TaskStatus[None]) -> None:
                task_status.started()
                try:
                    await stream.receive()
                except anyio.ClosedResourceError as exc:
                    failed.append(exc)

            async with trio.open_nursery() as nursery:
                await nursery.start(reader)
                await trio.testing.wait_all_tasks_blocked()
                await stream.aclose()
            assert len(failed) == 1

    trio.run(main)


def test_a_cancelled_wait_loses_nothing() -> None:
    async def main() -> None:
        with _pair() as (ours, peer):
            stream = TrioStream(ours)
            with trio.move_on_after(0.05):
                await stream.receive()
            peer.sendall(b"after")
            assert await stream.receive() == b"after"
            await stream.aclose()

    trio.run(main)


def test_a_writer_that_never_blocks_lets_the_others_run() -> None:
    # Answers to requests pipelined in one read are written without waiting:
    # the writing task still yields, so other connections are served meanwhile.
    async def main() -> int:
        with _pair() as (ours, peer):
            peer.setblocking(False)
            stream = TrioStream(ours)
            ticks = 0
            done = False

            async def other() -> None:
                nonlocal ticks
                while not done:
                    ticks += 1
                    await trio.sleep(0)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(other)
                await trio.sleep(0)
                start = ticks
                for _ in range(100):
                    await stream.send(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                ran = ticks - start
                done = True
            await stream.aclose()
            return ran

    assert trio.run(main) >= 5


def test_the_trio_runner_streams_are_lean_and_bound_their_writes() -> None:
    # On trio, an upstream connection and an accepted one (what serve_tcp hands the
    # server) are TrioStreams; a PumpedStream over one bounds its writes.
    async def main() -> None:
        with socket.create_server(("127.0.0.1", 0)) as listener:
            listener.setblocking(False)
            upstream = await connect_tcp("127.0.0.1", listener.getsockname()[1])
            await trio.lowlevel.wait_readable(listener)
            accepted, _ = listener.accept()
            assert isinstance(upstream, TrioStream)
            pumped = PumpedStream(TrioStream(accepted))
            assert bound_writes(pumped, 7.0)
            assert pumped._stream.write_timeout == 7.0  # type: ignore[attr-defined]
            await upstream.send(b"ping")
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pumped.pump)
                assert await pumped.receive() == b"ping"
                await upstream.aclose()
                with pytest.raises(anyio.EndOfStream):
                    await pumped.receive()
            await pumped.aclose()

    trio.run(main)
