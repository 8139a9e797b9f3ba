"""The asyncio driver on callbacks: no task, no await per request.

``Driver`` (``adapters._driver``) runs an exchange as a coroutine over anyio
streams; this one runs it from ``asyncio.Protocol`` callbacks: an upstream
event, a timer or the client's transport calls in, the exchange is fed, its
commands are carried out, the client's bytes go out in one
``transport.write`` (what one upstream read brings, once at its end; a
stream's first event at once, with its head), and the exchange's deadline is
left with the timers. The process's trace writer, store and log collapser are
the ``Driver``'s (one ``Driver`` per process, its clock bound at start-up); the
upstream pool is ``adapters._loop_upstream.LoopPool``.

Timers: a loop timer costs ~3 µs to arm and cancel, and most exchanges end
long before their deadline. So a deadline more than a second away goes into
the driver's slot for its whole second (one loop timer per slot, shared by
every run due in it, a set add and discard per run); when the slot is due,
each run still waiting gets a loop timer of its own at its exact deadline.
A deadline within the current second gets its own timer at once.

The semantics are ``Driver._step``'s: the exchange's timer measures waiting,
not the proxy's own work (the time between an event and the end of its
flush, a blocked write to the client included, is added to the deadline);
while a write to the client waits, the exchange's timer waits and the
upstream is not read, and the write is bounded by ``server.write_timeout``;
the client going away cancels the upstream at once and still feeds
``ClientGone``, so that the trace is written and the usage settled.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from core import (
    AcquireQuota,
    CancelUpstream,
    ClientGone,
    CollectMetrics,
    EndResponse,
    Exchange,
    Log,
    QuotaAnswered,
    QuotaFailed,
    RecordExchange,
    SendBody,
    SendUpstreamRequest,
    SettleQuota,
    StartResponse,
    UpstreamData,
    UpstreamEnded,
    UpstreamFailed,
    UpstreamResponse,
    WriteTrace,
)
from core._events import FailureKind

from ._driver import BATCH_BYTES, Driver, stopped_reading
from ._loop_upstream import LoopPool, UpstreamCall, UpstreamError

__all__ = ["LoopDriver", "LoopSink", "Run"]

logger = logging.getLogger("sansproxy")

_Upstream = UpstreamResponse | UpstreamData | UpstreamEnded | UpstreamFailed
_Fed = _Upstream | QuotaAnswered | QuotaFailed
_Acquire = Callable[[AcquireQuota], QuotaAnswered | QuotaFailed | None]


class _Sent:
    """A quota query the store answers by calling back (``acquire_soon``): the run
    forgets it when it ends, and an answer that comes after is dropped."""

    __slots__ = ()

    def cancel(self) -> None:
        pass


class LoopSink(Protocol):
    """How a run writes to its client. ``start``/``send``/``end`` only buffer."""

    def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        """Buffer the response head."""

    def send(self, data: bytes) -> None:
        """Buffer a body chunk."""

    def end(self, complete: bool) -> None:
        """Buffer the end of the response; ``complete=False``: the connection is cut."""

    def flush(self) -> bool:
        """Write what is buffered in one ``transport.write``.

        False if the client's transport has paused writing: the run waits for
        ``Run.writable()`` (or drops the client after ``server.write_timeout``).
        """

    def abort(self) -> None:
        """Close the client connection at once (the client is dropped)."""


class LoopDriver:
    """Runs exchanges on asyncio callbacks for one process (reusing a ``Driver``'s
    trace writer, store and logs)."""

    def __init__(self, driver: Driver, *, pool: LoopPool | None = None) -> None:
        self.driver = driver
        self.pool = pool if pool is not None else LoopPool()
        self.loop = asyncio.get_running_loop()
        driver.now()  # binds the driver's clock, here where a task runs
        self.store = driver.store
        self.traces = driver.traces
        self.sinks = driver.sinks
        self.metrics = driver.sinks.metrics
        self.write_timeout = driver.proxy.config.server.write_timeout
        # The memory store answers at once; Redis (None) in a task.
        self.acquire_nowait: _Acquire = driver.store.acquire_nowait
        self.runs = 0
        # Driver.new_exchange: its ids and randomness, on this loop's clock.
        self._new_exchange = driver.new_exchange
        # Runs whose deadline falls in a second to come, by that second.
        self._slots: dict[int, set[Run]] = {}

    def new_exchange(self, now: float | None = None) -> Exchange:
        """A fresh exchange (the ``Driver``'s ids and randomness), started at ``now``
        (the loop's time if not given)."""
        return self._new_exchange(self.loop.time() if now is None else now)

    def start(self, ex: Exchange, sink: LoopSink, done: Callable[[], object]) -> Run:
        """Carry ``ex`` (its request fed) to its end; ``done()`` once it has ended and
        its last byte is written (never after ``Run.client_gone``)."""
        run = Run(self, ex, sink, done)
        run.resumed = self.loop.time()
        run.step()
        return run

    async def aclose(self) -> None:
        """Close idle upstream connections, then the ``Driver`` (traces, store)."""
        self.pool.close()
        await self.driver.aclose()

    # -- deadlines --

    def _arm(self, run: Run, target: float, slot: int, now: float) -> None:
        """Time ``run`` out at ``target`` (``slot``: its second); it has no loop timer."""
        old = run.slot
        if old >= 0:
            if old <= slot:
                return  # due early: the run is placed again then
            runs = self._slots.get(old)
            if runs is not None:
                runs.discard(run)
            run.slot = -1
        if slot <= now:  # within this second: a timer of its own
            run.timer = self.loop.call_at(target, run._on_timer)
            run.timer_at = target
            return
        runs = self._slots.get(slot)
        if runs is None:
            runs = self._slots[slot] = set()
            self.loop.call_at(slot, self._slot_due, slot)
        runs.add(run)
        run.slot = slot

    def _slot_due(self, slot: int) -> None:
        """A second with deadlines in it has come: each run still waiting gets its timer
        (or a later slot, if its deadline moved)."""
        runs = self._slots.pop(slot, None)
        if not runs:
            return
        now = self.loop.time()
        for run in runs:
            run.slot = -1
            target = run.target
            if run.over or run.flushing or target is None:
                continue  # placed again when its write ends, or never
            try:
                due = int(target)
            except (OverflowError, ValueError):  # its deadline went to infinity
                continue
            self._arm(run, target, due, max(now, slot))


class Run:
    """One exchange being carried out: its upstream call, its timer, its settles."""

    __slots__ = (
        "attempt",
        "batched",
        "call",
        "deadline",
        "done",
        "ex",
        "first_token_sent",
        "flushing",
        "held",
        "over",
        "owner",
        "quota",
        "resumed",
        "settles",
        "sink",
        "slot",
        "stalled",
        "streaming",
        "target",
        "timer",
        "timer_at",
        "unflushed",
        "write_timer",
    )

    def __init__(
        self, owner: LoopDriver, ex: Exchange, sink: LoopSink, done: Callable[[], object]
    ) -> None:
        self.owner = owner
        self.ex = ex
        self.sink = sink
        self.done = done
        self.call: UpstreamCall | None = None
        self.attempt = 0
        self.quota: asyncio.Task[Any] | _Sent | None = None
        self.settles: list[SettleQuota] = []
        self.flushing = False  # a write waits for the client to read
        self.batched = False  # an upstream read is being told: flush once, at its end
        self.first_token_sent = False  # a stream's first event is written at once
        self.unflushed = 0  # bytes its commands sent that wait (+1 a step)
        self.held: deque[_Fed] | None = None  # events that came while it waited
        self.over = False
        self.streaming = False  # counted in the streams-in-flight gauge
        # The timer's account (see Driver._step): when the run last stopped
        # waiting, the exchange's deadline, the time not spent waiting since.
        self.resumed = 0.0
        self.deadline: float | None = None
        self.stalled = 0.0
        self.target: float | None = None  # deadline + stalled: when the timer is due
        self.timer: asyncio.TimerHandle | None = None  # a loop timer of its own
        self.timer_at = 0.0
        self.slot = -1  # or the second of the driver's slot it waits in
        self.write_timer: asyncio.TimerHandle | None = None

    # -- events in --------------------------------------------------------------------

    def feed(self, event: _Fed) -> None:
        """Feed an upstream event or a store's answer, then carry out what follows."""
        if self.over:
            return
        if self.flushing:
            self._hold(event)
            return
        try:
            self._handle(event)
        except Exception:
            self._bug()

    def _handle(self, event: _Fed) -> None:
        if type(event) is UpstreamEnded:
            # Only now is its connection pooled again: until the exchange has
            # taken the end (a write to the client may hold it), an abort closes it.
            call = self.call
            if call is not None:
                self.call = None
                call.release()
        self.resumed = now = self.owner.loop.time()
        self.ex.handle(event, now=now)
        self.step()

    def _hold(self, event: _Fed) -> None:
        """Keep an event that came while a write waits (made on the first one)."""
        held = self.held
        if held is None:
            held = self.held = deque()
        held.append(event)

    def upstream_head(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        """The upstream's response head (a ``LoopPool`` listener callback)."""
        if self.over:
            return
        event = UpstreamResponse(attempt=self.attempt, status=status, headers=headers)
        if self.flushing:
            self._hold(event)
            return
        try:  # feed() and _handle(), inline: once per response
            self.resumed = now = self.owner.loop.time()
            self.ex.handle(event, now=now)
            self.step()
        except Exception:
            self._bug()

    def upstream_data(self, data: bytes) -> None:
        """A chunk of the upstream's body."""
        if self.over:
            return
        if self.flushing:
            self._hold(UpstreamData(attempt=self.attempt, data=data))
            return
        try:  # feed() and _handle(), inline: once per stream event
            self.resumed = now = self.owner.loop.time()
            self.ex.handle_upstream_data(self.attempt, data, now=now)
            self.step()
        except Exception:
            self._bug()

    def reading(self) -> None:
        """An upstream read is about to be told: its commands' writes wait for its end."""
        self.batched = True

    def read_done(self) -> None:
        """The read is told: one write of what its commands sent, then the timer."""
        self.batched = False
        if self.unflushed and not self.over:
            try:
                self._flush()
            except Exception:
                self._bug()

    def upstream_end(self) -> None:
        """The upstream's body ended (its connection is released when this is fed)."""
        self.feed(UpstreamEnded(attempt=self.attempt))

    def upstream_failed(self, kind: FailureKind, message: str) -> None:
        """The upstream call failed (its connection is closed)."""
        self.call = None
        self.feed(UpstreamFailed(attempt=self.attempt, kind=kind, message=message))

    def writable(self) -> None:
        """The client's transport resumed writing: the waiting write is done."""
        if self.over:
            return
        call = self.call
        if call is not None:
            call.resume_reading()
        if not self.flushing:
            return
        self.flushing = False
        write_timer = self.write_timer
        if write_timer is not None:
            write_timer.cancel()
            self.write_timer = None
        try:
            self._flushed()
            held = self.held
            while held and not self.flushing and not self.over:
                self._handle(held.popleft())
        except Exception:
            self._bug()

    def blocked(self) -> None:
        """The client's transport paused writing: stop reading the upstream."""
        call = self.call
        if call is not None:
            call.pause_reading()

    def client_gone(self, reason: str = "") -> None:
        """The client left (or is dropped, ``reason`` says why): cancel the upstream at
        once, feed ``ClientGone`` so that the trace is written and usage settled."""
        if self.over:
            return
        self._end()
        owner = self.owner
        ex = self.ex
        if not ex.finished:
            ex.handle(ClientGone(reason=reason), now=owner.loop.time())
        settles = self.settles
        while (cmd := ex.next_command()) is not None:
            match cmd:
                case RecordExchange():
                    owner.sinks.submit(cmd)
                case WriteTrace():
                    owner.traces.submit(cmd)
                case Log():
                    owner.driver._log(cmd)
                case SettleQuota():
                    settles.append(cmd)
                case CancelUpstream() | StartResponse() | SendBody() | EndResponse():
                    pass  # the upstream is closed above; the client is gone
                case _:
                    raise RuntimeError(f"unexpected command {cmd!r}")
        self._settle()

    # -- commands out -----------------------------------------------------------------

    def step(self) -> None:
        """Carry out the exchange's commands, flush once, re-arm the timer."""
        owner = self.owner
        ex = self.ex
        sink = self.sink
        # No await here, nor anything that calls back into this run.
        while (cmd := ex.next_command()) is not None:
            match cmd:
                case SendBody():
                    sink.send(cmd.data)
                    self.unflushed += len(cmd.data)
                case StartResponse():
                    sink.start(cmd.status, list(cmd.headers))
                    if owner.metrics is not None and ex.is_stream:
                        self.streaming = True
                        owner.metrics.stream_started()
                case EndResponse():
                    sink.end(cmd.complete)
                case SendUpstreamRequest():
                    self._send_upstream(cmd)
                case AcquireQuota():
                    self._acquire(cmd)
                case SettleQuota():
                    self.settles.append(cmd)  # once the client has its response
                case RecordExchange():
                    owner.sinks.submit(cmd)
                case WriteTrace():
                    owner.traces.submit(cmd)
                case Log():
                    owner.driver._log(cmd)
                case CollectMetrics():
                    ex.handle(owner.driver.collect_metrics(), now=owner.loop.time())
                case CancelUpstream():
                    call = self.call
                    if call is not None:
                        self.call = None
                        call.abort()
                case _:
                    raise RuntimeError(f"unexpected command {cmd!r}")
        if self.batched and self.unflushed < BATCH_BYTES:
            if ex.first_token_at is None or self.first_token_sent:
                self.unflushed += 1  # read_done() flushes, once (if only a head or an end)
                return
            self.first_token_sent = True  # a stream's first event: out at once, with its head
        self._flush()

    def _flush(self) -> None:
        self.unflushed = 0
        owner = self.owner
        if not self.sink.flush():
            # The client reads slowly: the exchange's timer waits (see
            # Driver._step), the upstream is not read, the write is bounded.
            self.flushing = True
            self.write_timer = owner.loop.call_later(owner.write_timeout, self._write_expired)
            self.blocked()
            return
        self._flushed()

    def _flushed(self) -> None:
        if self.settles:
            self._settle()
        ex = self.ex
        if ex.finished:
            self._end()
            self.done()
            return
        # The exchange's timer measures waiting, not the proxy's own work: the
        # time since the run stopped waiting is added to its deadline.
        deadline = ex.get_timer()
        loop = self.owner.loop
        waiting = loop.time()
        if deadline != self.deadline:
            self.deadline = deadline
            self.stalled = waiting - self.resumed
        else:
            self.stalled += waiting - self.resumed
        if deadline is None:
            self.target = None
            if self.call is None and self.quota is None:
                raise RuntimeError(f"exchange {ex.exchange_id} is stuck in {ex.state}")
            return
        target = self.target = deadline + self.stalled
        timer = self.timer
        # One timer (or slot), re-armed only when it would fire too late; early,
        # it re-arms.
        if timer is None:
            try:
                slot = int(target)
            except (OverflowError, ValueError):  # an infinite deadline: never due
                return
            if slot != self.slot:
                self.owner._arm(self, target, slot, waiting)
        elif self.timer_at > target:
            timer.cancel()
            self.timer = loop.call_at(target, self._on_timer)
            self.timer_at = target

    def _on_timer(self) -> None:
        self.timer = None
        target = self.target
        if self.over or self.flushing or target is None:
            return  # re-armed when the write ends
        loop = self.owner.loop
        now = loop.time()
        if now < target:
            self.timer = loop.call_at(target, self._on_timer)
            self.timer_at = target
            return
        # Due: the exchange alone decides what that means, in commands.
        try:
            self.resumed = now
            self.target = None
            self.ex.handle_timer(now=now)
            self.step()
        except Exception:
            self._bug()

    def _write_expired(self) -> None:
        self.write_timer = None
        if self.over or not self.flushing:
            return
        self.client_gone(stopped_reading(self.owner.write_timeout).reason)
        self.sink.abort()

    def _send_upstream(self, cmd: SendUpstreamRequest) -> None:
        self.attempt = cmd.attempt
        try:
            self.call = self.owner.pool.request(
                cmd.origin,
                cmd.method,
                cmd.target,
                cmd.headers,
                cmd.body,
                connect_timeout=cmd.connect_timeout,
                listener=self,
            )
        except UpstreamError as exc:  # refused before anything was sent
            self.call = None
            self.resumed = now = self.owner.loop.time()
            self.ex.handle(
                UpstreamFailed(attempt=cmd.attempt, kind=exc.kind, message=str(exc)), now=now
            )

    def _acquire(self, cmd: AcquireQuota) -> None:
        owner = self.owner
        answer = owner.acquire_nowait(cmd)
        if answer is not None:
            self.resumed = now = owner.loop.time()
            self.ex.handle(answer, now=now)
            return
        sent = _Sent()
        if owner.store.acquire_soon(cmd, functools.partial(self._answered_soon, sent)):
            self.quota = sent  # no task: the store calls back
            return
        task = owner.loop.create_task(owner.store.acquire(cmd))
        self.quota = task
        task.add_done_callback(self._answered)

    def _answered_soon(self, sent: _Sent, answer: QuotaAnswered | QuotaFailed) -> None:
        if self.quota is not sent:
            return  # the run ended
        self.quota = None
        self.feed(answer)

    def _answered(self, task: asyncio.Task[QuotaAnswered | QuotaFailed]) -> None:
        if self.quota is not task:
            return  # cancelled: the run ended
        self.quota = None
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self._bug(exc)
            return
        self.feed(task.result())

    # -- the end ----------------------------------------------------------------------

    def _settle(self) -> None:
        """Hand the exchange's settles to the store (it never blocks nor raises)."""
        store = self.owner.store
        for cmd in self.settles:
            store.settle(cmd)
        self.settles.clear()

    def _end(self) -> None:
        """No more events: the upstream call, timers and the store query are dropped."""
        self.over = True
        if self.streaming:
            self.streaming = False
            metrics = self.owner.metrics
            if metrics is not None:
                metrics.stream_ended()
        call = self.call
        if call is not None:
            self.call = None
            call.abort()
        timer = self.timer
        if timer is not None:
            self.timer = None
            timer.cancel()
        slot = self.slot
        if slot >= 0:
            self.slot = -1
            runs = self.owner._slots.get(slot)
            if runs is not None:
                runs.discard(self)
        timer = self.write_timer
        if timer is not None:
            self.write_timer = None
            timer.cancel()
        quota = self.quota
        if quota is not None:
            self.quota = None
            quota.cancel()
        self.held = None

    def _bug(self, exc: BaseException | None = None) -> None:
        """A bug (here, or a store's): the exchange is recorded, the client connection closed."""
        logger.error("internal error on a client connection; closing it", exc_info=exc or True)
        if not self.over:
            try:
                self.client_gone()
            except Exception:
                logger.exception("internal error recording an exchange")
        self.sink.abort()
