"""Upstream timeouts are decided by the exchange alone; the driver only keeps its timer.

The real driver and the real core, over loopback sockets to an upstream written
in the test (an anyio listener in the test's own event loop). On trio the clock
is a ``MockClock`` that jumps when every task waits: the upstream's pauses take
no real time and end exactly where the test puts them (just inside the read
timeout, or far past it). On asyncio the timeouts are real and short.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import pytest
import trio
import trio.testing

import adapters
from adapters._driver import Driver
from core import Exchange, Proxy, ProxyConfig, RequestData, RequestEnded, RequestReceived
from tests.adapters.test_upstream import Handler, Peer, serve

#: The provider's read timeout: virtual seconds on trio, real ones on asyncio.
READ_TIMEOUT = {"trio": 10.0, "asyncio": 0.3}
#: How long the paced upstream waits between events, as a share of the read
#: timeout: just inside it on trio's exact clock, with a margin on a real one.
PACE = {"trio": 0.99, "asyncio": 0.5}
WRITE_TIMEOUT = 5.0  # trio: the driver bounds a write to the client by it


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    if request.param == "trio":
        return ("trio", {"clock": trio.testing.MockClock(autojump_threshold=0)})
    return "asyncio"


@pytest.fixture
def backend(anyio_backend: Any) -> str:
    name: str = anyio_backend[0] if isinstance(anyio_backend, tuple) else anyio_backend
    return name


def sse(text: str) -> bytes:
    """One OpenAI chat chunk as an SSE event."""
    chunk = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}],
    }
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
)
DONE = chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"


def stall(closed: anyio.Event, *, events: int) -> Handler:
    """Read the request, send ``events`` events (none: not even the head), then hang
    until the proxy closes the connection."""

    async def handler(peer: Peer) -> None:
        assert await peer.read_request()
        if events:
            await peer.send(SSE_HEAD + b"".join(chunk(sse(f"tok{i} ")) for i in range(events)))
        await peer.wait_closed()
        closed.set()

    return handler


def paced(events: int, pause: float) -> Handler:
    """A stream of ``events`` events, each ``pause`` seconds after the one before."""

    async def handler(peer: Peer) -> None:
        assert await peer.read_request()
        await peer.send(SSE_HEAD)
        for i in range(events):
            await anyio.sleep(pause)
            await peer.send(chunk(sse(f"tok{i} ")))
        await peer.send(DONE)
        await peer.wait_closed()

    return handler


class Sink:
    """A ``ClientSink`` that keeps what the client would get.

    ``slow_write``: the first write of a body chunk ends just as the driver's
    bound on it (``server.write_timeout``) runs out, as a ``send`` that
    completes at that moment does on trio.
    """

    def __init__(self, *, slow_write: bool = False) -> None:
        self.status: int | None = None
        self.body = bytearray()
        self.complete: bool | None = None
        self.slow_write = slow_write

    def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.status = status

    def send(self, data: bytes) -> None:
        self.body += data

    def end(self, complete: bool) -> None:
        self.complete = complete

    async def flush(self) -> None:
        if self.slow_write and self.body:
            self.slow_write = False
            clock = trio.lowlevel.current_clock()
            assert isinstance(clock, trio.testing.MockClock)
            clock.jump(WRITE_TIMEOUT)
            await trio.lowlevel.cancel_shielded_checkpoint()

    def events(self) -> list[str]:
        """The SSE events' data, in order."""
        text = self.body.decode()
        return [block.partition("data: ")[2] for block in text.split("\n\n") if block]

    def content(self) -> str:
        return "".join(
            json.loads(data)["choices"][0]["delta"].get("content") or ""
            for data in self.events()
            if data.startswith("{") and "choices" in data
        )


async def run_exchange(
    origin_port: int, backend: str, sink: Sink, *, stream: bool = True
) -> Exchange:
    """One chat completion through a fresh driver to the upstream on ``origin_port``."""
    config = ProxyConfig.model_validate(
        {
            "upstream": {
                "base_url": f"http://127.0.0.1:{origin_port}",
                "read_timeout": READ_TIMEOUT[backend],
            },
            "server": {"write_timeout": WRITE_TIMEOUT},
        }
    )
    driver = Driver(Proxy(config))
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": stream}
    raw = json.dumps(body).encode()
    ex = driver.new_exchange()
    now = driver.now()
    head = [
        (b"host", b"proxy.test"),
        (b"content-type", b"application/json"),
        (b"content-length", b"%d" % len(raw)),
    ]
    ex.handle(
        RequestReceived(method=b"POST", target=b"/v1/chat/completions", headers=head), now=now
    )
    ex.handle(RequestData(data=raw), now=now)
    ex.handle(RequestEnded(), now=now)
    await driver.run(ex, sink)
    await driver.aclose()
    return ex


def timeout_message(backend: str) -> str:
    return f"the upstream sent nothing for {READ_TIMEOUT[backend]:g} s"


def assert_timeout_logged(caplog: pytest.LogCaptureFixture, ex: Exchange, backend: str) -> None:
    (line,) = [r.getMessage() for r in caplog.records if ex.exchange_id in r.getMessage()]
    assert line.startswith(timeout_message(backend))
    assert "code=upstream_timeout" in line


# -- a stalled upstream: the exchange times it out -----------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("stream", [True, False])
async def test_an_upstream_silent_before_the_head_gets_a_504(
    backend: str, stream: bool, caplog: pytest.LogCaptureFixture
) -> None:
    closed = anyio.Event()
    sink = Sink()
    async with serve(stall(closed, events=0)) as server:
        ex = await run_exchange(server.origin.port, backend, sink, stream=stream)
        with anyio.fail_after(60):
            await closed.wait()  # the attempt's connection is closed, not left hanging
    assert (sink.status, sink.complete) == (504, True)
    error = json.loads(sink.body)["error"]
    assert error["code"] == "upstream_timeout"
    assert error["message"] == timeout_message(backend)
    assert str(ex.error) == timeout_message(backend)
    assert [attempt.outcome for attempt in ex.attempts] == ["timeout"]
    assert_timeout_logged(caplog, ex, backend)


@pytest.mark.anyio
async def test_an_upstream_silent_mid_stream_gets_an_error_event(
    backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    closed = anyio.Event()
    sink = Sink()
    async with serve(stall(closed, events=2)) as server:
        ex = await run_exchange(server.origin.port, backend, sink)
        with anyio.fail_after(60):
            await closed.wait()
    assert (sink.status, sink.complete) == (200, True)
    assert sink.content() == "tok0 tok1 "
    error = json.loads(sink.events()[-1])["error"]
    assert error["code"] == "upstream_timeout"
    assert error["message"] == timeout_message(backend)
    assert "event: error" in sink.body.decode()
    assert_timeout_logged(caplog, ex, backend)


def test_the_adapters_never_invent_a_timeout() -> None:
    # Only the exchange says that an upstream timed out (UpstreamTimeoutError).
    for path in Path(adapters.__file__).parent.glob("*.py"):
        assert "read timed out" not in path.read_text(encoding="utf-8"), path


# -- a slow upstream, within its timeout, is never cut ----------------------------------


@pytest.mark.anyio
async def test_events_just_inside_the_read_timeout_are_all_relayed(backend: str) -> None:
    events = 5 if backend == "trio" else 3
    sink = Sink()
    async with serve(paced(events, PACE[backend] * READ_TIMEOUT[backend])) as server:
        ex = await run_exchange(server.origin.port, backend, sink)
    assert (sink.status, sink.complete) == (200, True)
    assert sink.content() == "".join(f"tok{i} " for i in range(events))
    assert sink.events()[-1] == "[DONE]"
    assert ex.error is None
    assert ex.outcome == "completed"


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["trio"], indirect=True)
async def test_a_write_that_ends_at_its_bound_does_not_cut_the_stream(backend: str) -> None:
    # The write to the client completes just as server.write_timeout runs out:
    # the timer's scope is cancelled by then. The exchange, handed the timer,
    # ignores it (its read deadline is far), and the driver goes on reading the
    # same response: nothing is cut off, nothing lost, no failure made up.
    sink = Sink(slow_write=True)
    async with serve(paced(4, 1.0)) as server:
        ex = await run_exchange(server.origin.port, backend, sink)
    assert not sink.slow_write  # the slow write did happen
    assert (sink.status, sink.complete) == (200, True)
    assert sink.content() == "tok0 tok1 tok2 tok3 "
    assert sink.events()[-1] == "[DONE]"
    assert ex.error is None
    assert [attempt.outcome for attempt in ex.attempts] == ["ok"]
