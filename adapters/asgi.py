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
import resource
import shutil
import signal
import socket
import sys
import tempfile
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from multiprocessing import resource_tracker
from types import FrameType
from typing import Any, cast

import anyio
import anyio.lowlevel
import uvicorn
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.types import Message, Receive, Scope, Send
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import ServerState
from uvicorn.supervisors import Multiprocess
from uvicorn.supervisors.multiprocess import Process

from core import (
    ClientGone,
    Exchange,
    Proxy,
    ProxyConfig,
    RequestData,
    RequestEnded,
    RequestReceived,
    ValidationError,
    render_error,
)
from core._config import ServerConfig

from ._cli import (
    Loaded,
    cannot_listen,
    freeze_heap,
    log_startup,
    parse_args,
    setup_logging,
    stopped,
)
from ._corked import CorkedTransport
from ._driver import ClientDisconnected, Driver, stopped_reading
from ._log_format import logging_config
from ._sinks import PROCESS_SINKS
from ._store import proxy_for

__all__ = [
    "RAW_TARGET",
    "ProxyApp",
    "ProxyEndpoint",
    "RawTargetProtocol",
    "UvicornConfig",
    "app_factory",
    "create_app",
    "main",
    "start",
]

logger = logging.getLogger("sansproxy")
_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# After a second SIGINT: how long cancelled requests get to end before the app stops.
_FORCED_STOP = 1.0
_CONFIG_ENV = "SANSPROXY_CONFIG_JSON"
#: ASGI scope extension ``{"target": bytes}``: the request target exactly as received.
RAW_TARGET = "sansproxy.raw_target"
# Private scope extension ``{"wire": _Wire}``, from RawTargetProtocol to ProxyEndpoint.
_WIRE = "sansproxy.wire"
_REQUEST_TIMEOUT = "timed out reading the request"


class UvicornConfig(uvicorn.Config):
    """uvicorn's config, carrying the proxy's ``server`` section to ``RawTargetProtocol``."""

    def __init__(self, app: Any, *, server: ServerConfig, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.proxy_server = server


class _Gone:
    """One connection's watch for its client leaving: ``Driver.run``'s watch of the
    request running on it (a connection runs one at a time), called by the
    protocol when the connection is lost. What a task waiting for
    ``http.disconnect`` would tell, without a task per request."""

    __slots__ = ("callback",)

    def __init__(self) -> None:
        self.callback: Callable[[], object] | None = None

    def __call__(self, callback: Callable[[], object] | None) -> None:
        self.callback = callback


class _Wire:
    """What the protocol tells the app about one request: its uvicorn cycle (how
    much of the body is in, the transport and its write flow control; ``None``
    until the app may run), the deadline of the whole request, and the
    connection's watch for the client leaving."""

    __slots__ = ("cycle", "deadline", "gone")

    def __init__(self, deadline: float, gone: _Gone) -> None:
        self.cycle: RequestResponseCycle | None = None
        self.deadline = deadline
        self.gone = gone


class RawTargetProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, also handing the app the raw request target,
    and bounding what uvicorn leaves unbounded.

    uvicorn reduces an absolute-form target (``http://host/path``) to its path
    and drops an empty ``?``; the core must see the target as sent to judge it.
    uvicorn has no deadline for a request: a head that takes longer than
    ``server.header_timeout`` (from its first byte) is answered 408 and the
    connection closed; the app is told the deadline of the whole request
    (``server.request_timeout``) and what it needs to bound its writes.
    """

    def __init__(
        self,
        config: uvicorn.Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        server = config.proxy_server if isinstance(config, UvicornConfig) else _DEFAULT_SERVER
        self._head_timeout = min(server.header_timeout, server.request_timeout)
        self._request_timeout = server.request_timeout
        self._begun = 0.0
        self._in_head = False
        self._head_timer: asyncio.TimerHandle | None = None
        self._gone = _Gone()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(cast(asyncio.Transport, CorkedTransport(transport)))
        sock = transport.get_extra_info("socket")
        if sock is not None:
            _DESCRIPTORS.accepted(sock.fileno())
        metrics = PROCESS_SINKS.metrics
        if metrics is not None:
            metrics.connection_opened()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)
        left = self._gone.callback
        if left is not None:  # a request's driver still runs (it unsets this at its end)
            self._gone.callback = None
            left()
        metrics = PROCESS_SINKS.metrics
        if metrics is not None:
            metrics.connection_closed()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # Only a head split across reads needs a timer (most arrive whole).
        if self._in_head and self._head_timer is None and not self.transport.is_closing():
            self._head_timer = self.loop.call_at(
                self._begun + self._head_timeout, self._head_timed_out
            )

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._begun = self.loop.time()
        self._in_head = True

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._cancel_head_timer()
        wire = _Wire(self._begun + self._request_timeout, self._gone)
        extensions = self.scope.get("extensions") or {}
        self.scope["extensions"] = {
            **extensions,
            RAW_TARGET: {"target": bytes(self.url)},
            _WIRE: {"wire": wire},
        }
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle.scope is self.scope:
            wire.cycle = cycle

    def _cancel_head_timer(self) -> None:
        timer = self._head_timer
        if timer is not None:
            self._head_timer = None
            timer.cancel()

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.keep_alive = False  # a response is under way: close once it is sent
            return
        body = render_error(ValidationError(_REQUEST_TIMEOUT, status=408, code="request_timeout"))
        self.transport.write(
            b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body)
        )
        self.transport.close()


_DEFAULT_SERVER = ServerConfig()


class _Descriptors:
    """One warning when the process runs out of file descriptors.

    uvloop (libuv) does not report it, nor die of it: it keeps one descriptor
    in reserve and, at the limit, accepts and closes (resets) the connections
    it cannot serve. The sign is a connection given the last descriptor the
    limit allows (the kernel hands out the lowest free one): one warning then,
    one line when a connection gets a descriptor well below it again.
    """

    __slots__ = ("exhausted",)

    def __init__(self) -> None:
        self.exhausted = False

    def accepted(self, fd: int) -> None:
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if limit == resource.RLIM_INFINITY:
            return
        if fd >= limit - 1:
            if not self.exhausted:
                self.exhausted = True
                logger.warning(
                    "out of file descriptors (limit %d): new connections are reset until "
                    "some close; still serving the open ones",
                    limit,
                )
        elif self.exhausted and fd < limit * 0.9:
            self.exhausted = False
            logger.info("file descriptors available again (limit %d)", limit)


_DESCRIPTORS = _Descriptors()


class _EarlySignals:
    """SIGINT/SIGTERM while uvicorn does not handle them: remembered, never a
    ``KeyboardInterrupt`` (a traceback).

    Installed before the start-up line, so a Ctrl-C as soon as it shows (while
    uvicorn still imports its event loop) stops the server like any other; uvicorn
    is handed what arrived in the meantime, and gives the handler back when it
    stops, so a Ctrl-C after that is quiet too.
    """

    __slots__ = ("pending",)

    def __init__(self) -> None:
        self.pending: list[int] = []

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for sig in _SIGNALS:
                signal.signal(sig, self._received)

    def _received(self, signum: int, frame: FrameType | None) -> None:
        self.pending.append(signum)

    def take(self) -> list[int]:
        taken, self.pending = self.pending, []
        return taken


class _Server(uvicorn.Server):
    """uvicorn's server, exiting 0 after a graceful stop on SIGINT/SIGTERM.

    (uvicorn re-raises the signal once it has stopped, so the process would die
    of it; an orderly stop is a success.) A second SIGINT stops at once, as in
    uvicorn, but the app's shutdown still runs once the requests are cancelled:
    the queued traces are written, as on the other adapters.
    """

    def __init__(self, config: uvicorn.Config, early: _EarlySignals | None = None) -> None:
        super().__init__(config)
        self._early = early

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {sig: signal.signal(sig, self.handle_exit) for sig in _SIGNALS}
        for sig in self._early.take() if self._early is not None else ():
            self.handle_exit(sig, None)
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # uvicorn cancels the requests still running after the grace period (and,
        # after a second SIGINT, leaves them to the end of the event loop): a request
        # cancelled so is no "Exception in ASGI application" with its traceback.
        logging.getLogger("uvicorn.error").addFilter(_not_cancelled)
        await super().shutdown(sockets)
        if self.force_exit:  # uvicorn skips the app's shutdown then
            tasks = [task for task in self.server_state.tasks if not task.done()]
            if tasks:
                logger.warning("second signal: cancelling %d requests in flight", len(tasks))
                for task in tasks:
                    task.cancel()
                await asyncio.wait(tasks, timeout=_FORCED_STOP)
            await self.lifespan.shutdown()


def _not_cancelled(record: logging.LogRecord) -> bool:
    return record.exc_info is None or not isinstance(record.exc_info[1], asyncio.CancelledError)


class _Worker(Process):
    """One of ``_Supervisor``'s worker processes, running ``_Server`` (not uvicorn's)."""

    @property
    def server(self) -> uvicorn.Server:
        if self._server is None:
            self._server = _Server(self.config)
        return self._server


class _Supervisor(Multiprocess):
    """uvicorn's worker supervisor, starting its workers with SIGINT ignored and held.

    A Ctrl-C reaches every process of the terminal's group: a worker still
    importing would die of it with a ``KeyboardInterrupt`` traceback. Started so
    (both are inherited), a worker gets it once uvicorn handles it (``app_factory``
    unblocks it); the supervisor holds a SIGINT sent meanwhile, and gets it after.
    """

    def __init__(
        self,
        config: uvicorn.Config,
        sockets: list[socket.socket],
        early: _EarlySignals,
        *,
        metrics: bool = False,
    ) -> None:
        super().__init__(config, sockets)  # installs its own handlers
        self.signal_queue.extend(early.take())
        self._metrics = metrics

    # A worker that exits (dies and is replaced, or is retired by SIGHUP or
    # SIGTTOU) leaves the sums of the live gauges: open connections, streams.
    def keep_subprocess_alive(self) -> None:
        with self._reaping():
            super().keep_subprocess_alive()

    def handle_signals(self) -> None:
        with self._reaping():
            super().handle_signals()

    @contextlib.contextmanager
    def _reaping(self) -> Iterator[None]:
        before = {process.pid for process in self.processes}
        yield
        if self._metrics:
            from prometheus_client.multiprocess import mark_process_dead  # noqa: PLC0415

            for pid in before - {process.pid for process in self.processes}:
                mark_process_dead(pid)  # type: ignore[no-untyped-call]

    def init_processes(self) -> None:
        # Started by the first spawn, the resource tracker would unblock SIGINT.
        resource_tracker.ensure_running()
        held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        handler = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            for _ in range(self.processes_num):
                process = _Worker(self.config, self.sockets)
                process.start()
                self.processes.append(process)
        finally:
            signal.signal(signal.SIGINT, handler)
            signal.pthread_sigmask(signal.SIG_SETMASK, held)


class _ASGISink:
    """Buffers ASGI messages and sends them on flush: the body sent since the last
    flush as one message (with the end, if it came), one write on the wire.

    A send that leaves uvicorn's transport paused (the client is not reading)
    is followed by a wait for it to drain, bounded by ``write_timeout``; under
    another ASGI server (no ``cycle``), each flush is bounded as a whole.
    """

    __slots__ = (
        "_body",
        "_flow",
        "_out",
        "_send",
        "_transport",
        "_write_timeout",
        "cut",
        "started",
    )

    def __init__(
        self, send: Send, cycle: RequestResponseCycle | None, write_timeout: float
    ) -> None:
        self._send = send
        self._flow: FlowControl | None = None
        self._transport: asyncio.Transport | None = None
        if cycle is not None:
            self._flow = cycle.flow
            self._transport = cycle.transport
        self._write_timeout = write_timeout
        self._out: list[Message] = []
        self._body: list[bytes] = []  # sent since the last message
        self.started = False
        self.cut = False

    def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.started = True
        self._out.append({"type": "http.response.start", "status": status, "headers": headers})

    def send(self, data: bytes) -> None:
        self._body.append(data)

    def end(self, complete: bool) -> None:
        if complete:
            self._out.append(self._body_message(more=False))
        else:
            self.cut = True

    def _body_message(self, *, more: bool) -> Message:
        body = self._body
        data = body[0] if len(body) == 1 else b"".join(body)
        body.clear()
        return {"type": "http.response.body", "body": data, "more_body": more}

    async def flush(self) -> None:
        if self._body:
            self._out.append(self._body_message(more=True))
        out = self._out
        if not out:
            return
        self._out = []
        if self._flow is not None:
            await self._send_all(out)
            return
        with anyio.move_on_after(self._write_timeout) as scope:
            await self._send_all(out)
        if scope.cancelled_caught:
            raise stopped_reading(self._write_timeout)

    async def _send_all(self, out: list[Message]) -> None:
        flow = self._flow
        corked = self._transport
        try:
            if len(out) > 1 and isinstance(corked, CorkedTransport):
                # One write for them all: the transport is not paused (the last
                # flush waited for it to drain) and held writes cannot pause it.
                corked.hold()
                try:
                    for message in out:
                        await self._send(message)
                except BaseException:
                    corked.drop()
                    raise
                corked.release()
                if flow is not None and flow.write_paused:
                    await self._drain(flow)
                return
            for message in out:
                await self._send(message)
                if flow is not None and flow.write_paused:
                    await self._drain(flow)
        except OSError as exc:  # uvicorn raises ClientDisconnect (an OSError) on a gone client
            raise ClientDisconnected from exc

    async def _drain(self, flow: FlowControl) -> None:
        """The client does not read: wait for the transport to drain, at most
        ``write_timeout``, else abort the connection."""
        with anyio.move_on_after(self._write_timeout):
            await flow.drain()
            return
        assert self._transport is not None
        self._transport.abort()  # a close would wait for the client to read
        raise stopped_reading(self._write_timeout)


class ProxyEndpoint:
    """The raw ASGI endpoint every request goes to."""

    def __init__(self, driver: Driver) -> None:
        self.driver = driver
        self.server = driver.proxy.config.server

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # pragma: no cover - Starlette routes only http here
            return
        driver = self.driver
        ex = driver.new_exchange()
        extensions = scope.get("extensions")
        raw = extensions.get(RAW_TARGET) if extensions else None
        held = extensions.get(_WIRE) if extensions else None
        wire: _Wire | None = held["wire"] if held else None
        cycle = None
        if wire is not None:
            # Taken: the wire (in the cycle's scope) lets go of the cycle, else the
            # two would be a reference cycle that only the garbage collector frees.
            cycle, wire.cycle = wire.cycle, None
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
        sink = _ASGISink(send, cycle, self.server.write_timeout)
        if cycle is not None and not cycle.more_body:
            await self._read_body(ex, receive)  # all in already: nothing to wait for
        elif not ex.finished:
            deadline = wire.deadline if wire is not None else driver.now()
            if wire is None:  # another ASGI server: from now on
                deadline += self.server.request_timeout
            with anyio.CancelScope(deadline=deadline) as reading:
                await self._read_body(ex, receive)
            if reading.cancelled_caught:
                # Too slow to send its request: the client is dropped, with a 408.
                ex.handle(ClientGone(reason=self._too_slow()), now=driver.now())
                await driver.run(ex, sink)
                await _send_408(send)
                return
        # A cut response (complete=False) simply never ends: the server then
        # closes the connection, so the client sees the body is short.
        await self._run(ex, receive, sink, wire)

    async def _read_body(self, ex: Exchange, receive: Receive) -> None:
        now = self.driver.now
        while not ex.finished:
            message = await receive()
            if message["type"] == "http.request":
                body = message.get("body", b"")
                if body:
                    ex.handle(RequestData(data=body), now=now())
                if not message.get("more_body", False):
                    ex.handle(RequestEnded(), now=now())
                    return
            else:  # http.disconnect
                ex.handle(ClientGone(), now=now())

    def _too_slow(self) -> str:
        return (
            f"it sent its request too slowly: over {self.server.request_timeout:g} s "
            "(server.request_timeout)"
        )

    async def _run(
        self, ex: Exchange, receive: Receive, sink: _ASGISink, wire: _Wire | None
    ) -> None:
        if ex.finished:
            await self.driver.run(ex, sink)
            return
        if wire is not None:  # our protocol tells when the connection is lost
            await self.driver.run(ex, sink, wire.gone)
            return
        # Another ASGI server: watch for http.disconnect while the exchange runs, a
        # bare asyncio task (a fraction of an anyio task group's cost).
        watcher = asyncio.get_running_loop().create_task(_wait_disconnect(receive))
        try:
            await self.driver.run(ex, sink, _Disconnect(watcher))
        finally:
            watcher.cancel()


async def _send_408(send: Send) -> None:
    body = render_error(ValidationError(_REQUEST_TIMEOUT, status=408, code="request_timeout"))
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": 408, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class _Disconnect:
    """``Driver.run``'s watch of a request: the task waiting for ``http.disconnect``."""

    __slots__ = ("_done", "_task")

    def __init__(self, task: asyncio.Task[None]) -> None:
        self._task = task
        self._done: Callable[[asyncio.Task[None]], object] | None = None

    def __call__(self, callback: Callable[[], object] | None) -> None:
        if self._done is not None:
            self._task.remove_done_callback(self._done)
            self._done = None
        if callback is None:
            return

        def done(task: asyncio.Task[None]) -> None:
            if not task.cancelled() and task.exception() is None:
                callback()

        self._done = done
        self._task.add_done_callback(done)


async def _wait_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class ProxyApp(Starlette):
    """The Starlette application of ``create_app``: no routes, every request goes to
    the proxy (the router's default, ``ProxyEndpoint``).

    While nothing was added to it (no middleware, route or exception handler), an
    HTTP request goes to the endpoint directly: Starlette's error and exception
    middleware and its router, which then only pass the request on, cost 5 % of a
    request's instructions (``python -m tests.bench.instructions --adapter asgi``).
    The endpoint answers every error itself, in the client's API's shape, and an
    exception that still escaped it would get uvicorn's plain 500, as Starlette's
    gives. Anything added to the app runs as Starlette runs it.
    """

    def __init__(self, endpoint: ProxyEndpoint, **options: Any) -> None:
        super().__init__(**options)
        self.router.default = self._endpoint = endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and not self.user_middleware
            and not self.router.routes
            and not self.exception_handlers
        ):
            scope["app"] = self
            await self._endpoint(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)


def create_app(config: ProxyConfig, proxy: Proxy | None = None) -> ProxyApp:
    """The Starlette application serving ``config``."""
    driver = Driver(proxy if proxy is not None else proxy_for(config))
    PROCESS_SINKS.metrics = driver.sinks.metrics

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # anyio loads its event loop backend on first use, and loading opens
        # files: done now, not by a first request that finds the process out
        # of descriptors.
        await anyio.lowlevel.checkpoint()
        freeze_heap()  # each worker's start-up is over
        yield
        await driver.aclose()

    app = ProxyApp(ProxyEndpoint(driver), lifespan=lifespan)
    app.state.driver = driver
    return app


def app_factory() -> ProxyApp:
    """For ``uvicorn --factory``: reads the config the parent process serialised."""
    # A worker starts with SIGINT held (see _Supervisor); uvicorn handles it by now.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    raw = os.environ.get(_CONFIG_ENV)
    config = ProxyConfig() if raw is None else ProxyConfig.model_validate(json.loads(raw))
    setup_logging(config)
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
    start(loaded)


def start(loaded: Loaded) -> None:
    """Serve a loaded configuration under uvicorn until SIGINT/SIGTERM."""
    config = loaded.config
    setup_logging(config)
    early = _EarlySignals()
    early.install()
    server = config.server
    # Bound here, not by uvicorn: a port in use is one line and status 2, as on the
    # other adapters (uvicorn logs its own words and exits 1), and every worker
    # shares this socket.
    family = socket.AF_INET6 if ":" in server.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((server.host, server.port))
    except OSError as exc:
        sock.close()
        cannot_listen(server.host, server.port, exc)
    sock.listen(2048)
    sock.set_inheritable(True)
    port = sock.getsockname()[1]
    os.environ[_CONFIG_ENV] = _config_json(config)
    uv_config = UvicornConfig(
        "adapters.asgi:app_factory",
        server=server,
        factory=True,
        workers=server.workers,
        log_level=config.log_level,
        access_log=False,
        timeout_keep_alive=int(server.keepalive_timeout) or 1,
        timeout_graceful_shutdown=int(server.shutdown_grace),
        http=RawTargetProtocol,
        # The proxy reads neither the client's address nor the scheme, which
        # uvicorn's proxy-headers middleware rewrites (1.4 % of a request's
        # instructions).
        proxy_headers=False,
        server_header=False,
        date_header=False,
        # Applied by uvicorn in every process (each worker, from its first line).
        log_config=logging_config(config),
    )
    remove_metrics_dir = _metrics_dir(config)
    log_startup(config, adapter="asgi", port=port)
    try:
        if server.workers > 1:
            _Supervisor(uv_config, [sock], early, metrics=config.metrics.enabled).run()
        else:
            _Server(uv_config, early).run(sockets=[sock])
    finally:
        remove_metrics_dir()
    stopped()


def _metrics_dir(config: ProxyConfig) -> Callable[[], None]:
    """With metrics and workers, prometheus-client's multiprocess mode: each worker
    writes its values to files in ``PROMETHEUS_MULTIPROC_DIR`` and a scrape of any
    worker sums them. Set before the workers start; a fresh directory, removed at
    exit, unless the variable is set already (then the directory is the user's).
    Returns what removes it."""
    if not config.metrics.enabled or config.server.workers < 2:
        return lambda: None
    from ._metrics import MULTIPROC_DIR_ENV  # noqa: PLC0415 (only with metrics)

    if os.environ.get(MULTIPROC_DIR_ENV):
        return lambda: None
    directory = tempfile.mkdtemp(prefix="sansproxy-metrics-")
    os.environ[MULTIPROC_DIR_ENV] = directory

    def remove() -> None:
        os.environ.pop(MULTIPROC_DIR_ENV, None)
        shutil.rmtree(directory, ignore_errors=True)

    return remove


if __name__ == "__main__":
    main(sys.argv[1:])
