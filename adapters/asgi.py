"""The ASGI adapter: a Starlette app, served by uvicorn.

    python -m adapters.asgi --port 3000 [--workers N]

Embed it in another ASGI server with ``create_app(config)``. The app turns
ASGI messages into core events; the shared driver does everything else.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import AsyncIterator, Iterator, Sequence

import anyio
import uvicorn
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.types import Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.supervisors import Multiprocess

from core import (
    ClientGone,
    Exchange,
    Proxy,
    ProxyConfig,
    RequestData,
    RequestEnded,
    RequestReceived,
)

from ._cli import ConfigError, describe_upstream, fail, parse_args, setup_logging
from ._driver import ClientDisconnected, Driver

__all__ = ["RAW_TARGET", "ProxyEndpoint", "RawTargetProtocol", "app_factory", "create_app", "main"]

logger = logging.getLogger("sansproxy")
startup_logger = logging.getLogger("sansproxy.startup")
_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_CONFIG_ENV = "SANSPROXY_CONFIG_JSON"
#: ASGI scope extension ``{"target": bytes}``: the request target exactly as received.
RAW_TARGET = "sansproxy.raw_target"


class RawTargetProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, also handing the app the raw request target.

    uvicorn reduces an absolute-form target (``http://host/path``) to its path
    and drops an empty ``?``; the core must see the target as sent to judge it.
    """

    def on_headers_complete(self) -> None:
        extensions = self.scope.get("extensions") or {}
        self.scope["extensions"] = {**extensions, RAW_TARGET: {"target": bytes(self.url)}}
        super().on_headers_complete()


class _Server(uvicorn.Server):
    """uvicorn's server, exiting 0 after a graceful stop on SIGINT/SIGTERM.

    (uvicorn re-raises the signal once it has stopped, so the process would die
    of it; an orderly stop is a success.)
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {sig: signal.signal(sig, self.handle_exit) for sig in _SIGNALS}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


class _ASGISink:
    """Buffers ASGI messages and sends them on flush."""

    __slots__ = ("_out", "_send", "cut", "started")

    def __init__(self, send: Send) -> None:
        self._send = send
        self._out: list[Message] = []
        self.started = False
        self.cut = False

    def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.started = True
        self._out.append({"type": "http.response.start", "status": status, "headers": headers})

    def send(self, data: bytes) -> None:
        self._out.append({"type": "http.response.body", "body": data, "more_body": True})

    def end(self, complete: bool) -> None:
        if complete:
            self._out.append({"type": "http.response.body", "body": b"", "more_body": False})
        else:
            self.cut = True

    async def flush(self) -> None:
        out = self._out
        if not out:
            return
        self._out = []
        try:
            for message in out:
                await self._send(message)
        except OSError as exc:  # uvicorn raises ClientDisconnect (an OSError) on a gone client
            raise ClientDisconnected from exc


class ProxyEndpoint:
    """The raw ASGI endpoint every request goes to."""

    def __init__(self, driver: Driver) -> None:
        self.driver = driver

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # pragma: no cover - Starlette routes only http here
            return
        driver = self.driver
        ex = driver.new_exchange()
        extensions = scope.get("extensions")
        raw = extensions.get(RAW_TARGET) if extensions else None
        target: bytes | None = raw["target"] if raw else None
        if target is None:  # another ASGI server: rebuild what we can
            target = scope.get("raw_path") or scope["path"].encode()
            query: bytes = scope.get("query_string", b"")
            if query:
                target = target + b"?" + query
        ex.handle(
            RequestReceived(
                method=scope["method"].encode("ascii"), target=target, headers=scope["headers"]
            ),
            now=self.driver.now(),
        )
        sink = _ASGISink(send)
        while not ex.finished:
            message = await receive()
            if message["type"] == "http.request":
                body = message.get("body", b"")
                if body:
                    ex.handle(RequestData(data=body), now=self.driver.now())
                if not message.get("more_body", False):
                    ex.handle(RequestEnded(), now=self.driver.now())
                    break
            else:  # http.disconnect
                ex.handle(ClientGone(), now=self.driver.now())
        # A cut response (complete=False) simply never ends: the server then
        # closes the connection, so the client sees the body is short.
        await self._run(ex, receive, sink)

    async def _run(self, ex: Exchange, receive: Receive, sink: _ASGISink) -> None:
        if ex.finished:
            await self.driver.run(ex, sink)
            return
        # Watch for http.disconnect while the exchange runs: a bare asyncio task
        # (ASGI servers here run asyncio) costs a fraction of an anyio task group.
        with anyio.CancelScope() as scope:
            watcher = asyncio.get_running_loop().create_task(_wait_disconnect(receive))

            def gone(task: asyncio.Task[None]) -> None:
                if not task.cancelled() and task.exception() is None:
                    scope.cancel()

            watcher.add_done_callback(gone)
            try:
                await self.driver.run(ex, sink)
            finally:
                watcher.remove_done_callback(gone)
                watcher.cancel()


async def _wait_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def create_app(config: ProxyConfig, proxy: Proxy | None = None) -> Starlette:
    """The Starlette application serving ``config``."""
    driver = Driver(proxy if proxy is not None else Proxy(config))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await driver.aclose()

    app = Starlette(lifespan=lifespan)
    # No routes: every request, whatever its target, goes to the proxy.
    app.router.default = ProxyEndpoint(driver)
    app.state.driver = driver
    return app


def app_factory() -> Starlette:
    """For ``uvicorn --factory``: reads the config the parent process serialised."""
    raw = os.environ.get(_CONFIG_ENV)
    config = ProxyConfig() if raw is None else ProxyConfig.model_validate(json.loads(raw))
    setup_logging(config.log_level)
    return create_app(config)


def _config_json(config: ProxyConfig) -> str:
    """The config for the worker processes, secrets included (they are the parent's own)."""

    def reveal(value: object) -> object:
        if isinstance(value, SecretStr):
            return value.get_secret_value()
        raise TypeError(f"cannot serialise {type(value).__name__}")

    return json.dumps(config.model_dump(mode="python"), default=reveal)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``python -m adapters.asgi``."""
    prog = "python -m adapters.asgi"
    loaded = parse_args(
        prog, "sansproxy: an LLM API proxy (Starlette app under uvicorn).", argv, workers=True
    )
    config = loaded.config
    setup_logging(config.log_level)
    server = config.server
    family = socket.AF_INET6 if ":" in server.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((server.host, server.port))
    except OSError as exc:
        fail(prog, f"cannot listen on {server.host}:{server.port}: {exc.strerror}")
    sock.listen(2048)
    sock.set_inheritable(True)
    port = sock.getsockname()[1]
    os.environ[_CONFIG_ENV] = _config_json(config)
    uv_config = uvicorn.Config(
        "adapters.asgi:app_factory",
        factory=True,
        workers=server.workers,
        log_level=config.log_level,
        access_log=False,
        timeout_keep_alive=int(server.keepalive_timeout) or 1,
        timeout_graceful_shutdown=int(server.shutdown_grace),
        http=RawTargetProtocol,
        server_header=False,
        date_header=False,
        log_config=None,
    )
    startup_logger.info(
        "sansproxy listening on http://%s:%d (adapter=asgi, workers=%d, %s)",
        server.host,
        port,
        server.workers,
        describe_upstream(config),
    )
    if server.workers > 1:
        Multiprocess(uv_config, sockets=[sock]).run()
    else:
        _Server(uv_config).run(sockets=[sock])
    logger.info("stopped")


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except ConfigError as exc:  # pragma: no cover - parse_args already exits
        fail("python -m adapters.asgi", str(exc))
