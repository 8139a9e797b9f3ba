"""The driver: feeds an exchange its events and carries out its commands.

Shared by every adapter. It owns the process's upstream connection pool, the
trace writer and the quota store (memory or Redis). An adapter hands it an
exchange whose request has been fed, and a ``ClientSink`` that writes to the
client; the driver does the rest.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import random
import secrets
import time
from collections.abc import Callable
from typing import Protocol

import anyio

from core import (
    AcquireQuota,
    CancelUpstream,
    ClientGone,
    CollectMetrics,
    EndResponse,
    Exchange,
    Log,
    MetricsCollected,
    Proxy,
    RecordExchange,
    SendBody,
    SendUpstreamRequest,
    SettleQuota,
    StartResponse,
    UpstreamEnded,
    UpstreamFailed,
    UpstreamResponse,
    WriteTrace,
)
from core._errors import detached

from ._log_format import fields_extra
from ._logs import LogCollapser
from ._sinks import Sinks
from ._store import QuotaStore, make_store
from ._streams import Clock, using_asyncio
from ._streams import clock as loop_clock
from ._trace_writer import TraceWriter
from ._upstream import UpstreamError, UpstreamPool
from ._upstream import UpstreamResponse as PoolResponse

__all__ = ["BATCH_BYTES", "ClientDisconnected", "ClientSink", "Driver", "WatchClose"]

logger = logging.getLogger("sansproxy")
# Seconds: a timer due this much after the sink's write_timeout cannot cut a write off.
_WRITE_MARGIN = 1.0
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}
#: Bytes an upstream read's commands may leave unwritten until its end; past
#: them they are written at once (a slow client then holds the rest of the read).
BATCH_BYTES = 64 * 1024


class ClientDisconnected(Exception):
    """Raised by a ``ClientSink`` when the client is gone.

    ``reason`` is empty when the client left, and says why when the adapter
    dropped it (it stopped reading, say); the exchange logs it.
    """

    def __init__(self, reason: str = "") -> None:
        super().__init__(reason)
        self.reason = reason


def stopped_reading(write_timeout: float) -> ClientDisconnected:
    """What a sink raises when a write waited ``write_timeout`` seconds for the client."""
    return ClientDisconnected(
        f"it stopped reading: a write waited {write_timeout:g} s (server.write_timeout)"
    )


#: Told a function to call when the client goes away, and ``None`` to stop watching.
WatchClose = Callable[[Callable[[], object] | None], None]


class ClientSink(Protocol):
    """How the driver writes to the client. ``start``/``send``/``end`` only buffer."""

    def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        """Buffer the response head."""

    def send(self, data: bytes) -> None:
        """Buffer a body chunk."""

    def end(self, complete: bool) -> None:
        """Buffer the end of the response; ``complete=False``: cut the connection."""

    async def flush(self) -> None:
        """Write what is buffered; raise ``ClientDisconnected`` if the client is gone.

        On asyncio a sink bounds a write that waits for the client to read by
        ``server.write_timeout`` itself (``stopped_reading``); elsewhere the
        driver does, unless the sink says it does too (a true ``bounds_writes``
        attribute: the h11 server's, on trio's lean streams).
        """


class Driver:
    """Runs exchanges for one process: one upstream pool, one trace writer, one store."""

    def __init__(
        self, proxy: Proxy, *, pool: UpstreamPool | None = None, store: QuotaStore | None = None
    ) -> None:
        self.proxy = proxy
        self.pool = pool if pool is not None else UpstreamPool()
        #: The observers of each exchange's record (access log, metrics, spans).
        self.sinks = Sinks(proxy.config)
        self.traces = TraceWriter(on_drop=self.sinks.on_drop("trace"))
        self.store = store if store is not None else make_store(proxy.config.limits, proxy.limiter)
        self._prefix = secrets.token_hex(4)
        # Weighted routing draws here; the core stays deterministic.
        self._random = random.Random().random
        self._counter = itertools.count(1)
        self._clock: Clock | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # on asyncio (_bind_clock)
        self._guard_flush = False
        self._write_timeout = proxy.config.server.write_timeout
        # Repeats of one failure (every request refused while Redis is down):
        # the first line, then a count.
        self.logs = LogCollapser(logger)

    def _bind_clock(self) -> Clock:
        # One driver serves one event loop: look its clock up once. While the
        # driver writes to the client, the exchange's timer waits: a client
        # slow to read is not the upstream's fault (see _step). The write is
        # bounded by server.write_timeout: on asyncio by the sinks themselves,
        # and only when a write must wait (the transport knows; a deadline per
        # write would cost ~4 µs), elsewhere by the timer (`_guard_flush`) unless
        # the sink's stream does it (trio's lean streams: `bounds_writes`).
        self._guard_flush = not using_asyncio()
        self._loop = asyncio.get_running_loop() if not self._guard_flush else None
        self._clock = loop_clock()
        return self._clock

    def now(self) -> float:
        """The event loop's time, the ``now`` every event is fed with."""
        return (self._clock or self._bind_clock())()

    def new_exchange(self, now: float | None = None) -> Exchange:
        """A fresh exchange with a process-unique id, started at ``now`` (the loop's
        time if not given)."""
        return self.proxy.exchange(
            exchange_id=f"{self._prefix}{next(self._counter):06x}",
            now=self.now() if now is None else now,
            wall_time=time.time(),
            rand=self._random(),
        )

    async def aclose(self) -> None:
        """Close idle upstream connections, write every queued trace, close the store."""
        await self.pool.aclose()
        await self.store.aclose()
        await anyio.to_thread.run_sync(self.traces.close)
        await anyio.to_thread.run_sync(self.sinks.close)
        self.logs.flush()
        stats = self.traces.statistics()
        if stats.written or stats.failed or stats.dropped:
            level = logging.WARNING if stats.failed or stats.dropped else logging.INFO
            logger.log(
                level,
                "traces: %d written, %d failed, %d dropped",
                stats.written,
                stats.failed,
                stats.dropped,
            )

    async def _send_upstream(
        self,
        ex: Exchange,
        cmd: SendUpstreamRequest,
        state: _Upstream,
        timer: _Timer,
        now: Clock,
    ) -> None:
        """Send the request upstream, bounded by the exchange's timer; failures feed it."""
        state.attempt = cmd.attempt
        deadline = ex.get_timer()
        timer.deadline = math.inf if deadline is None else deadline
        try:
            state.response = await self.pool.request(
                cmd.origin,
                cmd.method,
                cmd.target,
                cmd.headers,
                cmd.body,
                connect_timeout=cmd.connect_timeout,
            )
        except UpstreamError as exc:
            state.resumed = now()
            ex.handle(
                UpstreamFailed(attempt=cmd.attempt, kind=exc.kind, message=str(exc)),
                now=state.resumed,
            )
        else:
            state.resumed = now()
            state.head_pending = True

    def collect_metrics(self) -> MetricsCollected:
        """The answer to ``CollectMetrics``: every worker's metrics, rendered."""
        metrics = self.sinks.metrics
        if metrics is None:  # an embedder's core with metrics its driver was not built for
            return MetricsCollected(body=b"", content_type=b"text/plain; version=0.0.4")
        body, content_type = metrics.render()
        return MetricsCollected(body=body, content_type=content_type)

    def _log(self, cmd: Log) -> None:
        fields = cmd.fields
        trace = fields.get("traceback")
        text = " ".join(f"{k}={v}" for k, v in fields.items() if k != "traceback")
        level = _LEVELS.get(cmd.level, logging.ERROR)
        # Its kind: the line without the exchange's id (nor the traceback).
        same = " ".join(f"{k}={v}" for k, v in fields.items() if k not in ("traceback", "exchange"))
        kind = f"{cmd.message} [{same}]"
        # A JSON line takes the message bare and each field as a key.
        extra = fields_extra(cmd.message, fields)
        if trace:
            self.logs.log(
                level, "%s [%s]\n%s", cmd.message, text, trace, key=kind, text=kind, extra=extra
            )
        else:
            self.logs.log(level, "%s [%s]", cmd.message, text, key=kind, text=kind, extra=extra)

    async def run(self, ex: Exchange, client: ClientSink, watch: WatchClose | None = None) -> None:
        """Carry the exchange to its end. Its request must have been fed already.

        Cancelling this (the client went away) cancels the upstream at once and
        still records the exchange. ``watch``, if given, is told a function to
        call when the client goes away (the same, without a cancel scope of the
        adapter's own around this), and ``None`` at the end.
        """
        now = self._clock or self._bind_clock()
        state = _Upstream()
        state.resumed = now()
        state.guard = self._guard_flush and not getattr(client, "bounds_writes", False)
        if watch is not None:
            watch(state.client_left)
        try:
            while True:
                # One cancel scope per exchange (a fresh one each time the timer
                # is due): its deadline follows the exchange's timer; the client
                # leaving cancels it too.
                if state.left:
                    raise ClientDisconnected
                with anyio.CancelScope() as scope:
                    state.scope = scope
                    loop = self._loop
                    timer = _Timer(scope) if loop is None else _LoopTimer(scope, loop)
                    try:
                        if await self._step(ex, client, state, timer, now):
                            return
                    except anyio.get_cancelled_exc_class() as cancelled:
                        # anyio's trio streams raise it from a frame that holds it:
                        # a reference cycle (with all the exchange's objects), unless
                        # its frames go. The scope knows it by itself.
                        detached(cancelled)
                        raise
                    finally:
                        timer.close()
                if state.left:
                    raise ClientDisconnected
                if state.flushing:  # the timer bounded a write (see _step)
                    raise stopped_reading(self._write_timeout)
                # The timer is due: the exchange alone decides what that means (a
                # timeout, a retry, the next mock event), and says it in commands.
                # If it still waits on the upstream, the driver carries on: the
                # response is intact, since a read is only ever cut off by a
                # deadline the exchange has reached (see _step).
                state.resumed = now()
                if not ex.finished:
                    ex.handle_timer(now=state.resumed)
        except ClientDisconnected as exc:
            self._client_gone(ex, state, exc.reason)
        except BaseException:
            # Cancelled (the adapter saw the client leave) or a bug: no await here.
            self._client_gone(ex, state)
            raise
        finally:
            state.scope = None
            if watch is not None:
                watch(None)
            if state.streaming and self.sinks.metrics is not None:
                self.sinks.metrics.stream_ended()

    async def _step(
        self,
        ex: Exchange,
        client: ClientSink,
        state: _Upstream,
        timer: _Timer,
        now: Clock,
    ) -> bool:
        """Carry out commands and feed upstream events: True once the exchange ends,
        False when its timer is due (``run`` hands it to the exchange).

        While the driver waits for the upstream or the store, the timer's
        deadline is the exchange's own: when it cuts a wait off, the exchange,
        handed the timer, times the wait out (a read cut off closes its
        connection, see ``UpstreamResponse``; the exchange cancels the attempt
        anyway). On trio it also bounds a write to the client. A deadline that
        passes just as an await completes leaves the scope cancelled, which
        must not cut off what comes next (another read, a write): after each
        await the driver looks (``cancel_called``) and returns to hand the
        timer over first; the exchange ignores it if it is early.
        """
        settles = state.settles
        while True:
            # No await in this loop but the upstream send and the quota query.
            while (cmd := ex.next_command()) is not None:
                match cmd:
                    case SendBody():
                        client.send(cmd.data)
                        state.unflushed += len(cmd.data)
                    case StartResponse():
                        client.start(cmd.status, list(cmd.headers))
                        if self.sinks.metrics is not None and ex.is_stream:
                            state.streaming = True
                            self.sinks.metrics.stream_started()
                    case EndResponse():
                        client.end(cmd.complete)
                    case SendUpstreamRequest():
                        await self._send_upstream(ex, cmd, state, timer, now)
                        if timer.cancel_called:
                            return False
                    case AcquireQuota():
                        # The memory store answers at once: no await, no timer.
                        ready = self.store.acquire_nowait(cmd)
                        if ready is not None:
                            ex.handle(ready, now=now())
                            continue
                        deadline = ex.get_timer()
                        timer.deadline = math.inf if deadline is None else deadline
                        answer = await self.store.acquire(cmd)
                        state.resumed = now()
                        ex.handle(answer, now=state.resumed)
                        if timer.cancel_called:
                            return False
                    case SettleQuota():
                        settles.append(cmd)  # once the client has its response
                    case RecordExchange():
                        self.sinks.submit(cmd)
                    case WriteTrace():
                        self.traces.submit(cmd)
                    case Log():
                        self._log(cmd)
                    case CollectMetrics():
                        ex.handle(self.collect_metrics(), now=now())
                    case CancelUpstream():
                        if state.response is not None:
                            state.response.abort()
                            state.response = None
                    case _:
                        raise RuntimeError(f"unexpected command {cmd!r}")
            response = state.response
            if (
                response is None
                or not response.buffered
                or state.unflushed >= BATCH_BYTES
                or ex.finished
                or settles
            ):
                # While writing, the exchange's timer waits; unless the sink bounds
                # its writes, the timer bounds the write.
                state.unflushed = 0
                state.flushing = True
                if state.guard:
                    timer.deadline = now() + self._write_timeout
                elif timer.deadline - now() < self._write_timeout + _WRITE_MARGIN:
                    # The sink gives up a write at write_timeout: a timer due later
                    # cannot cut it off, and is left as it is (setting a deadline
                    # costs more than looking).
                    timer.deadline = math.inf
                try:
                    await client.flush()
                finally:
                    if settles:
                        self._settle(settles)
                state.flushing = False
                if ex.finished:
                    return True
            # Else what the same upstream read brought is handled first, and written
            # with this in one write (a stream's first event alone, at once), unless
            # BATCH_BYTES wait: a client that stops reading then holds the rest.
            # The exchange's timer measures waiting, not the proxy's own work:
            # the time since the driver stopped waiting (handling what came,
            # writing to a client slow to read) is added to its deadline. The
            # exchange ignores a timer before its time; a late one only gives
            # the upstream back the time the proxy took: no false 504.
            deadline = ex.get_timer()
            waiting = now()
            if deadline != state.deadline:  # set anew by what was fed at `resumed`
                state.deadline = deadline
                state.stalled = waiting - state.resumed
            else:
                state.stalled += waiting - state.resumed
            timer.deadline = math.inf if deadline is None else deadline + state.stalled
            if timer.cancel_called:  # due already, or the write's bound passed as it ended
                return False
            response = state.response
            if response is None:
                if deadline is None:
                    raise RuntimeError(f"exchange {ex.exchange_id} is stuck in {ex.state}")
                await anyio.sleep_forever()  # until the timer fires
                continue  # pragma: no cover - sleep_forever only ends by cancellation
            attempt = state.attempt
            event: UpstreamResponse | UpstreamEnded | UpstreamFailed | None = None
            try:
                if state.head_pending:
                    status, headers = await response.receive_head()
                    state.head_pending = False
                    event = UpstreamResponse(attempt=attempt, status=status, headers=headers)
                else:
                    data = await response.receive_data()
                    if not data:
                        event = UpstreamEnded(attempt=attempt)
                        state.response = None
            except UpstreamError as exc:
                state.response = None
                event = UpstreamFailed(attempt=attempt, kind=exc.kind, message=str(exc))
            state.resumed = now()
            if event is None:  # a piece of the body: no event built
                ex.handle_upstream_data(attempt, data, now=state.resumed)
            else:
                ex.handle(event, now=state.resumed)
            if timer.cancel_called:  # the deadline passed as the read completed
                return False

    def _settle(self, settles: list[SettleQuota]) -> None:
        """Hand the exchange's settles to the store (it never blocks nor raises)."""
        for cmd in settles:
            self.store.settle(cmd)
        settles.clear()

    def _client_gone(self, ex: Exchange, state: _Upstream, reason: str = "") -> None:
        if state.response is not None:
            state.response.abort()
        if not ex.finished:
            ex.handle(ClientGone(reason=reason), now=self.now())
        settles = state.settles
        while (cmd := ex.next_command()) is not None:
            match cmd:
                case RecordExchange():
                    self.sinks.submit(cmd)
                case WriteTrace():
                    self.traces.submit(cmd)
                case Log():
                    self._log(cmd)
                case SettleQuota():
                    settles.append(cmd)
                case CancelUpstream() | StartResponse() | SendBody() | EndResponse():
                    pass  # the upstream is closed above; the client is gone
                case _:
                    raise RuntimeError(f"unexpected command {cmd!r}")
        self._settle(settles)


class _Timer:
    """The exchange's timer: the deadline of the cancel scope a step of
    ``Driver.run`` runs in. The scope is cancelled once the deadline passes,
    never before (a read it cuts off closes its connection)."""

    __slots__ = ("scope",)

    def __init__(self, scope: anyio.CancelScope) -> None:
        self.scope = scope

    @property
    def deadline(self) -> float:
        return self.scope.deadline

    @deadline.setter
    def deadline(self, when: float) -> None:
        self.scope.deadline = when

    @property
    def cancel_called(self) -> bool:
        return self.scope.cancel_called

    def close(self) -> None:
        """The step is over."""


class _LoopTimer(_Timer):
    """The timer on asyncio: one loop timer cancels the scope, and a later deadline
    is only noted (the timer, due first, sees it and is set again). The exchange's
    deadline moves later at each upstream read; anyio then read the clock twice
    and replaced a timer (2.1 % of an asgi request's instructions)."""

    __slots__ = ("_handle", "_loop", "_when")

    def __init__(self, scope: anyio.CancelScope, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(scope)
        self._loop = loop
        self._when = math.inf
        self._handle: asyncio.TimerHandle | None = None

    @property
    def deadline(self) -> float:
        return self._when

    @deadline.setter
    def deadline(self, when: float) -> None:
        self._when = when
        handle = self._handle
        if handle is not None:
            if handle.when() <= when:
                return  # due first: it sets itself again for the later deadline
            handle.cancel()
            self._handle = None
        if when != math.inf:
            self._arm(when)

    def _arm(self, when: float) -> None:
        if when <= self._loop.time():
            self.scope.cancel()
        else:
            self._handle = self._loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self._handle = None
        if self._when != math.inf:
            self._arm(self._when)

    def close(self) -> None:
        handle = self._handle
        if handle is not None:
            self._handle = None
            handle.cancel()


class _Upstream:
    """The upstream side of one running exchange (the driver itself is shared), the
    settles it has yet to hand to the store, whether a write to the client is under
    way, and the timer's account: when the driver last stopped waiting
    (``resumed``), and the time it has not waited since the exchange set its
    current ``deadline`` (``stalled``)."""

    __slots__ = (
        "attempt",
        "deadline",
        "flushing",
        "guard",
        "head_pending",
        "left",
        "response",
        "resumed",
        "scope",
        "settles",
        "stalled",
        "streaming",
        "unflushed",
    )

    def __init__(self) -> None:
        self.response: PoolResponse | None = None
        self.attempt = 0
        self.streaming = False  # counted in the streams-in-flight gauge
        self.head_pending = False
        self.unflushed = 0  # bytes handed to the client since its last flush
        self.left = False  # the client went away (``client_left``)
        self.scope: anyio.CancelScope | None = None  # the running timer's
        self.settles: list[SettleQuota] = []
        self.flushing = False
        self.guard = False  # the timer bounds each write to the client (Driver._bind_clock)
        self.deadline: float | None = None
        self.resumed = 0.0
        self.stalled = 0.0

    def client_left(self) -> None:
        """The client went away: the running step is cancelled (``Driver.run``)."""
        self.left = True
        if self.scope is not None:
            self.scope.cancel()
