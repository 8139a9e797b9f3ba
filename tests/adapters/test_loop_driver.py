"""Both drivers, the callback driver (``adapters._loop_driver``: the h11 and
httptools servers) and the anyio driver (``adapters._driver``: trio and asgi, on
both anyio backends), write what one upstream read brings in one write to the
client (a stream's first event at once, with the head); the anyio driver ends an
exchange whose client left when the adapter's ``watch`` says so.

The real drivers, the real core and the real upstream pool, over loopback to an
upstream written in the test; the client's side is a sink that counts the
driver's flushes that write something (each is one ``transport.write`` in the
servers, one ASGI body message under uvicorn).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import anyio
import pytest

from adapters._driver import Driver
from adapters._loop_driver import LoopDriver
from core import Exchange, Proxy, ProxyConfig, RequestData, RequestEnded, RequestReceived
from tests.adapters.test_driver_timers import DONE, SSE_HEAD, chunk, sse
from tests.adapters.test_upstream import Peer, serve

EVENTS = 20


class Writes:
    """What a client gets, and in how many writes (``write``: a flush's)."""

    def __init__(self) -> None:
        self.status: int | None = None
        self.out: list[bytes] = []
        self.writes: list[bytes] = []
        self.complete: bool | None = None

    def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.status = status
        self.out.append(b"<head>")

    def send(self, data: bytes) -> None:
        self.out.append(data)

    def end(self, complete: bool) -> None:
        self.complete = complete

    def write(self) -> None:
        if self.out:
            self.writes.append(b"".join(self.out))
            self.out.clear()


class Client(Writes):
    """A ``LoopSink`` (the callback driver's)."""

    def flush(self) -> bool:
        self.write()
        return True

    def abort(self) -> None:  # pragma: no cover - the client stays
        raise AssertionError("the client was dropped")


async def answer_in_one_write(peer: Peer) -> None:
    """Each request answered in one send: a JSON answer, or the whole event stream."""
    while request := await peer.read_request():
        if json.loads(request.body).get("stream"):
            body = b"".join(chunk(sse(f"tok{i} ")) for i in range(EVENTS))
            await peer.send(SSE_HEAD + body + DONE)
        else:
            answer = json.dumps(
                {
                    "id": "x",
                    "object": "chat.completion",
                    "choices": [{"index": 0, "message": {"content": "hi"}}],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 1},
                }
            ).encode()
            await peer.send(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\n\r\n%s" % (len(answer), answer)
            )


async def through_the_driver(port: int, *, stream: bool) -> Writes:
    config = ProxyConfig.model_validate({"upstream": {"base_url": f"http://127.0.0.1:{port}"}})
    loop_driver = LoopDriver(Driver(Proxy(config)))
    raw = json.dumps({"model": "m", "messages": [], "stream": stream}).encode()
    ex = loop_driver.new_exchange()
    head = [(b"host", b"proxy.test"), (b"content-length", b"%d" % len(raw))]
    now = loop_driver.loop.time()
    ex.handle(
        RequestReceived(method=b"POST", target=b"/v1/chat/completions", headers=head), now=now
    )
    ex.handle(RequestData(data=raw), now=now)
    ex.handle(RequestEnded(), now=now)
    client = Client()
    done = asyncio.Event()
    loop_driver.start(ex, client, done.set)
    await asyncio.wait_for(done.wait(), 10)
    await loop_driver.aclose()
    assert ex.outcome == "completed" and client.status == 200 and client.complete
    return client


@pytest.fixture
def anyio_backend() -> Any:
    return "asyncio"


#: each driver on the anyio backends it runs on
DRIVERS = pytest.mark.parametrize(
    ("through", "anyio_backend"), [("loop", "asyncio"), ("anyio", "asyncio"), ("anyio", "trio")]
)


class AsyncClient(Writes):
    """A ``ClientSink`` (the anyio driver's)."""

    async def flush(self) -> None:
        self.write()


def anyio_exchange(port: int, *, stream: bool) -> tuple[Driver, Exchange]:
    """An anyio driver to the upstream on ``port``, and an exchange its request fed."""
    config = ProxyConfig.model_validate({"upstream": {"base_url": f"http://127.0.0.1:{port}"}})
    driver = Driver(Proxy(config))
    raw = json.dumps({"model": "m", "messages": [], "stream": stream}).encode()
    ex = driver.new_exchange()
    head = [(b"host", b"proxy.test"), (b"content-length", b"%d" % len(raw))]
    ex.handle(
        RequestReceived(method=b"POST", target=b"/v1/chat/completions", headers=head),
        now=driver.now(),
    )
    ex.handle(RequestData(data=raw), now=driver.now())
    ex.handle(RequestEnded(), now=driver.now())
    return driver, ex


async def through_the_anyio_driver(port: int, *, stream: bool) -> Writes:
    driver, ex = anyio_exchange(port, stream=stream)
    client = AsyncClient()
    with anyio.fail_after(10):
        await driver.run(ex, client)
    await driver.aclose()
    assert ex.outcome == "completed" and client.status == 200 and client.complete
    return client


@pytest.mark.anyio
@DRIVERS
async def test_an_answer_read_at_once_is_written_at_once(through: str, anyio_backend: str) -> None:
    relay = through_the_driver if through == "loop" else through_the_anyio_driver
    async with serve(answer_in_one_write) as server:
        client = await relay(server.origin.port, stream=False)
    (write,) = client.writes  # head and body together
    assert write.startswith(b"<head>") and write.endswith(b"}")


@pytest.mark.anyio
@DRIVERS
async def test_stream_events_read_together_are_written_together(
    through: str, anyio_backend: str
) -> None:
    relay = through_the_driver if through == "loop" else through_the_anyio_driver
    async with serve(answer_in_one_write) as server:
        client = await relay(server.origin.port, stream=True)
    relayed = b"".join(client.writes)
    assert relayed.count(b"data: ") == EVENTS + 1  # and [DONE]
    # The first event goes out at once with the head (time to first token), the rest
    # of its read in one write: the stream came in one send, so a read or a few,
    # never a write per event.
    first = client.writes[0]
    assert first.startswith(b"<head>") and first.count(b"data: ") == 1
    assert len(client.writes) < EVENTS // 4


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_a_client_that_leaves_ends_the_exchange_through_watch(anyio_backend: str) -> None:
    asked = anyio.Event()

    async def silent(peer: Peer) -> None:  # reads the request, never answers
        assert await peer.read_request()
        asked.set()
        await peer.wait_closed()

    watched: list[object] = []

    def watch(callback: object) -> None:
        watched.append(callback)

    async with serve(silent) as server:
        driver, ex = anyio_exchange(server.origin.port, stream=True)
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(driver.run, ex, AsyncClient(), watch)
                await asked.wait()  # the driver waits on the upstream's head
                left = watched[0]
                assert callable(left)
                left()  # the client went away
        await driver.aclose()
    assert ex.outcome == "client_gone"
    assert watched[-1] is None  # stopped watching at the end
