"""``adapters.asgi.create_app`` embedded in a user's own uvicorn server: the proxy
answers every target, and what the user adds to the app (middleware, routes,
exception handlers) runs as Starlette runs it.

Served by a real uvicorn on loopback, asked by a real httpx client. The app's
lifespan is left off: it freezes the garbage collector's heap, which a server
process wants and a test worker does not.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from adapters.asgi import ProxyApp, create_app
from core import ProxyConfig

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}
MOCK = "This is the sansproxy mock. You said: "


@pytest.fixture
def anyio_backend() -> Any:
    return "asyncio"


@contextlib.asynccontextmanager
async def serving(app: ProxyApp) -> AsyncIterator[httpx.AsyncClient]:
    """``app`` under uvicorn on a loopback socket listening before the server starts
    (a client's connection waits in its backlog: nothing to poll), and a client."""
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, lifespan="off", log_level="warning", http="httptools")
    )
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            yield client
    finally:
        server.should_exit = True
        await task
        sock.close()


class Stamp:
    """A user's pure ASGI middleware: marks every response it sees."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def stamped(message: Any) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message["headers"], (b"x-stamp", b"1")]}
            await send(message)

        await self.app(scope, receive, stamped)


def answered_by_the_mock(response: httpx.Response) -> bool:
    return response.status_code == 200 and response.json()["choices"][0]["message"][
        "content"
    ].startswith(MOCK)


@pytest.mark.anyio
async def test_the_app_as_created_proxies_every_request() -> None:
    app = create_app(ProxyConfig())
    async with serving(app) as client:
        chat = await client.post("/v1/chat/completions", json=CHAT)
        unknown = await client.get("/nowhere")
    assert answered_by_the_mock(chat)
    assert "x-stamp" not in chat.headers
    # The proxy's own 404, in the client API's shape.
    assert unknown.status_code == 404
    assert unknown.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.anyio
async def test_middleware_a_user_adds_wraps_the_proxy() -> None:
    app = create_app(ProxyConfig())
    app.add_middleware(Stamp)
    async with serving(app) as client:
        chat = await client.post("/v1/chat/completions", json=CHAT)
        unknown = await client.get("/nowhere")
    assert answered_by_the_mock(chat)
    assert chat.headers["x-stamp"] == "1"
    assert unknown.status_code == 404
    assert unknown.headers["x-stamp"] == "1"


@pytest.mark.anyio
async def test_a_route_a_user_adds_answers_its_path_and_the_proxy_the_others() -> None:
    app = create_app(ProxyConfig())

    async def healthz(request: Request) -> PlainTextResponse:
        return PlainTextResponse("fine")

    app.add_route("/healthz", healthz)
    async with serving(app) as client:
        health = await client.get("/healthz")
        chat = await client.post("/v1/chat/completions", json=CHAT)
    assert (health.status_code, health.text) == (200, "fine")
    assert answered_by_the_mock(chat)


@pytest.mark.anyio
async def test_an_exception_handler_a_user_adds_is_starlettes_to_run() -> None:
    app = create_app(ProxyConfig())

    async def teapot(request: Request, exc: Exception) -> PlainTextResponse:
        return PlainTextResponse("handled", status_code=418)

    async def broken(request: Request) -> PlainTextResponse:
        raise LookupError("a user's route failed")

    app.add_exception_handler(LookupError, teapot)
    app.add_route("/broken", broken)
    async with serving(app) as client:
        failed = await client.get("/broken")
        chat = await client.post("/v1/chat/completions", json=CHAT)
    assert (failed.status_code, failed.text) == (418, "handled")
    assert answered_by_the_mock(chat)
