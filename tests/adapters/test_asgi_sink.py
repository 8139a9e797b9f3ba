"""The ASGI adapter's client sink sends what the driver wrote between two flushes as
one body message (one write under uvicorn), with the end when it came."""

from __future__ import annotations

from typing import Any

import pytest

from adapters.asgi import _ASGISink

SSE = [(b"content-type", b"text/event-stream")]


@pytest.fixture
def anyio_backend() -> Any:
    return "asyncio"


def recording() -> tuple[list[dict[str, Any]], Any]:
    sent: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        sent.append(message)

    return sent, send


def started() -> tuple[list[dict[str, Any]], _ASGISink]:
    """What an ``_ASGISink`` sends, and the sink, its response started (an event stream)."""
    sent, send = recording()
    sink = _ASGISink(send, None, write_timeout=5.0)
    sink.start(200, list(SSE))
    return sent, sink


def body(data: bytes, more: bool) -> dict[str, Any]:
    return {"type": "http.response.body", "body": data, "more_body": more}


@pytest.mark.anyio
async def test_the_body_written_between_flushes_is_one_message() -> None:
    sent, sink = started()
    sink.send(b"data: 1\n\n")
    await sink.flush()
    for n in range(2, 6):
        sink.send(b"data: %d\n\n" % n)
    await sink.flush()
    await sink.flush()  # nothing new: nothing sent
    sink.send(b"data: [DONE]\n\n")
    sink.end(True)
    await sink.flush()
    assert sent == [
        {"type": "http.response.start", "status": 200, "headers": SSE},
        body(b"data: 1\n\n", True),
        body(b"data: 2\n\ndata: 3\n\ndata: 4\n\ndata: 5\n\n", True),
        body(b"data: [DONE]\n\n", False),  # the end with the last of the body
    ]
    assert not sink.cut


@pytest.mark.anyio
async def test_a_cut_response_still_gets_what_was_written_but_no_end() -> None:
    sent, sink = started()
    sink.send(b"data: 1\n\n")
    sink.send(b"data: 2\n\n")
    sink.end(False)
    await sink.flush()
    assert sent[1:] == [body(b"data: 1\n\ndata: 2\n\n", True)]
    assert sink.cut
