"""The Redis quota store (imported by ``make_store`` only when the backend is redis).

The core decides; a store only keeps the books. ``acquire`` answers an
``AcquireQuota`` with ``QuotaAnswered`` or, when the backend cannot answer,
``QuotaFailed`` (the core then applies ``on_backend_error``): it never raises
for backend trouble. ``acquire_nowait`` answers at once when the store can
(memory: always, no await), else returns None (Redis: await ``acquire``).
``settle`` records a ``SettleQuota`` without blocking and without raising; its
failures are logged and counted. Both backends run ``core``'s limiter:
``MemoryLimiter`` here, its Lua transcription in Redis, so they answer alike.

Redis: one round trip per acquire, the quota script (EVALSHA) that checks and
charges. A lean client: one connection, calls pipelined on it, ``hiredis``
parsing the replies (redis-py's asyncio client costs ~10x the CPU per call),
on asyncio (below) and on trio (``adapters._redis_trio``); for TLS,
redis-py's sync client (hiredis too) in a worker thread. Every call is
bounded by ``timeout``. A call that
gets no reply (refused, reset, timed out) opens a circuit breaker: for
``retry_interval`` seconds calls fail at once, then one call tries Redis again
and, if it answers, the store is back. A reply that says no (a malformed key,
a script error) fails that call only. Settles are bounded (``max_queue`` not
yet done) and go in batches, as calls of the settle-many script, which applies
each settle and reports each failure (one round trip for many settles). With
a lean client they go out on the event loop, on a second lean connection, no
thread: on asyncio the settles of one loop iteration in one call (at most
``_SETTLE_BATCH``), on trio one task sends what has queued up, a call at a
time. With TLS one daemon thread drains a queue with the sync client: what
has queued up goes as one call. An acquire that checks
a budget this process has just spent on waits (at most ``timeout``) for that
settle, so a client's next request sees its own spend. Logs name Redis by host
and port, never by its URL (which may hold a password).

"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, cast
from urllib.parse import parse_qs, unquote, urlsplit

import anyio
import anyio.to_thread
import hiredis
import redis
import redis.retry
import trio
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from core import AcquireQuota, QuotaAnswered, QuotaFailed, SettleQuota
from core.policies import (
    Limit,
    redis_quota_answer,
    redis_quota_args,
)
from core.policies._limiter_redis import (
    REDIS_QUOTA_SCRIPT,
    REDIS_SETTLE_MANY_SCRIPT,
    redis_settle_group,
    redis_settle_many_answer,
    redis_settle_many_args,
)

from ._logs import LogCollapser
from ._redis_trio import TrioLeanClient
from ._redis_wire import LeanScript, closed
from ._store import (
    StoreStatistics,
    _adjustments,
    _answer,
    _budgets,
    _charges,
    _spends,
)
from ._streams import using_asyncio

__all__ = ["RedisStore"]

logger = logging.getLogger("sansproxy.store")
_SPEND_KEYS = 1024  # spend keys remembered before forgetting settled ones
_LOG_EVERY = 10.0  # seconds between two log lines about the same kind of trouble
_SETTLE_BATCH = 128  # settles in one call of the settle-many script, at most


def _notifier() -> Callable[[Callable[[], None]], object]:
    """How another thread gets a callback run in this event loop."""
    if using_asyncio():
        return asyncio.get_running_loop().call_soon_threadsafe
    return trio.lowlevel.current_trio_token().run_sync_soon


def _where_and_secrets(url: str, options: dict[str, Any]) -> tuple[str, tuple[str, ...]]:
    """Redis's host:port (or socket path) for logs, and what must never be logged."""
    parts = urlsplit(url)
    secrets = {options.get("password"), parts.password}
    if parts.password:
        secrets.add(unquote(parts.password))
    secrets.update(parse_qs(parts.query).get("password", ()))
    if "path" in options:
        where = str(options["path"])
    else:
        where = f"{options.get('host', 'localhost')}:{options.get('port', 6379)}"
    return where, tuple(s for s in secrets if isinstance(s, str) and s)


class _Replies(asyncio.Protocol):
    """One connection to Redis: the commands of one event loop iteration written
    together (pipelined, one write), replies parsed by hiredis and handed in order
    to what waits for each: a future (:meth:`call`) or a callback
    (:meth:`call_back`, no task and no future: the driver's hot path)."""

    def __init__(self) -> None:
        self._reader = hiredis.Reader(replyError=ResponseError)
        # What waits for each reply, in order: a future, or a callback given the
        # reply (or, if none comes, the error); and the callbacks' deadlines.
        self._waiting: collections.deque[Any] = collections.deque()
        self._deadlines: collections.deque[float] = collections.deque()
        self._transport: asyncio.Transport | None = None
        self._unsent: list[bytes] = []
        self._timer: asyncio.TimerHandle | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    @property
    def ready(self) -> bool:
        """Connected, and not closed: a call goes out at this iteration's end."""
        return not self.closed and self._transport is not None

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        waiting, deadlines = self._waiting, self._deadlines
        try:
            while (reply := reader.gets()) is not False:
                deadlines.popleft()
                waiter = waiting.popleft()
                if callable(waiter):
                    waiter(reply)
                elif not waiter.done():  # else its caller gave up: the reply is skipped
                    waiter.set_result(reply)
        except (hiredis.ProtocolError, IndexError):  # garbage, or a reply nobody asked for
            self.close(functools.partial(RedisConnectionError, "Protocol error: not a reply"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.close(functools.partial(RedisConnectionError, "Connection closed by server."))

    def call(self, packed: bytes) -> asyncio.Future[Any]:
        """Write a packed command; its reply (a ``ResponseError`` for an error reply)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if not self.ready:
            future.set_exception(closed())
            return future
        self._send(loop, packed, future, math.inf)
        return future

    def call_back(self, packed: bytes, deliver: Callable[[Any], object], timeout: float) -> None:
        """Write a packed command (the connection :attr:`ready`); ``deliver`` gets its
        reply (a ``ResponseError`` for an error reply) or, if none comes within
        ``timeout`` or the connection is lost, the error (the connection is dropped)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        self._send(loop, packed, deliver, deadline)
        if self._timer is None:
            self._timer = loop.call_at(deadline, self._expire_callbacks)

    def _send(self, loop: asyncio.AbstractEventLoop, packed: bytes, waiter: Any, at: float) -> None:
        if not self._unsent:
            loop.call_soon(self._write)
        self._unsent.append(packed)
        self._waiting.append(waiter)
        self._deadlines.append(at)

    def _write(self) -> None:
        unsent, self._unsent = self._unsent, []
        if not self.closed and self._transport is not None:
            self._transport.write(b"".join(unsent))

    def _expire_callbacks(self) -> None:
        """The oldest callback's time may be up (one timer for them all: they wait in
        order, each for as long): drop the connection, or wait for the next one."""
        self._timer = None
        for deadline in self._deadlines:  # the oldest callback's (futures wait forever)
            if deadline != math.inf:
                loop = asyncio.get_running_loop()
                if deadline <= loop.time():
                    self.close(TimeoutError)
                else:
                    self._timer = loop.call_at(deadline, self._expire_callbacks)
                return

    def expire(self, future: asyncio.Future[Any]) -> None:
        """The call's time is up: if it still waits, drop the connection (the calls
        behind it wait for the same replies) and fail them all."""
        if not future.done():
            self.close(TimeoutError)

    def close(self, error: Callable[[], Exception] = closed) -> None:
        """Drop the connection; every call still waiting fails with ``error()``."""
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._transport is not None:
            self._transport.abort()
        self._deadlines.clear()
        while self._waiting:
            waiter = self._waiting.popleft()
            if callable(waiter):
                waiter(error())
            elif not waiter.done():
                waiter.set_exception(error())


class _LeanClient(LeanScript):
    """The quota script on asyncio, on one pipelined connection (made at the first
    call, and again after a failure): AUTH, SELECT and SCRIPT LOAD once per
    connection, then one EVALSHA per call. Each call (and the connection) is
    bounded by ``timeout``; a call that times out drops the connection, while a
    call cancelled from outside (its client gone) leaves it to the others: its
    reply, when it comes, is skipped."""

    def __init__(self, options: dict[str, Any], where: str, script: str, timeout: float) -> None:
        super().__init__(options, where, script, timeout)
        self._conn: _Replies | None = None
        self._connecting: asyncio.Future[_Replies] | None = None

    async def _connect(self) -> _Replies:
        async with asyncio.timeout(self._timeout):
            return await self._handshake()

    async def _handshake(self) -> _Replies:
        loop = asyncio.get_running_loop()
        options = self._options
        try:
            if "path" in options:
                _, conn = await loop.create_unix_connection(_Replies, options["path"])
            else:
                _, conn = await loop.create_connection(
                    _Replies, options.get("host", "localhost"), options.get("port", 6379)
                )
        except OSError as exc:
            raise self._unreachable(exc) from None
        try:
            for future in [conn.call(packed) for packed in self._greeting()]:
                self._greeted(await future)
        except BaseException:
            conn.close()
            raise
        return conn

    async def _ask(self, conn: _Replies, packed: bytes) -> Any:
        future = conn.call(packed)
        timer = asyncio.get_running_loop().call_later(self._timeout, conn.expire, future)
        try:
            return await future
        finally:
            timer.cancel()

    def call_soon(self, keys: list[str], args: list[str], deliver: Callable[[Any], object]) -> bool:
        """:meth:`call` without a task: False if the connection is not up (then await
        ``call``), else ``deliver`` gets the reply (``NOSCRIPT`` followed by EVAL) or
        the error (a ``ResponseError`` for an error reply; one that closed the
        connection, or ``TimeoutError``, for none)."""
        conn = self._conn
        if conn is None or not conn.ready:
            return False
        conn.call_back(
            self._packed(keys, args),
            functools.partial(self._replied, conn, keys, args, deliver),
            self._timeout,
        )
        return True

    def _replied(
        self,
        conn: _Replies,
        keys: list[str] | None,
        args: list[str],
        deliver: Callable[[Any], object],
        reply: Any,
    ) -> None:
        if keys is not None and self.unknown_script(reply) and conn.ready:  # sent again, once
            conn.call_back(
                self._packed(keys, args, again=True),
                functools.partial(self._replied, conn, None, args, deliver),
                self._timeout,
            )
            return
        deliver(reply)

    async def _connection(self) -> _Replies:
        # Concurrent first calls share one connection attempt.
        pending = self._connecting
        if pending is None:
            pending = self._connecting = asyncio.ensure_future(self._connect())
            pending.add_done_callback(self._connected)
        return await asyncio.shield(pending)

    def _connected(self, attempt: asyncio.Future[_Replies]) -> None:
        self._connecting = None
        if not attempt.cancelled() and attempt.exception() is None:
            self._conn = attempt.result()

    def close(self) -> None:
        """Drop the connection (a call still waiting fails)."""
        if self._conn is not None:
            self._conn.close()
        if self._connecting is not None:
            self._connecting.cancel()


# A settle (with its number), a flush marker, the end.
_Item = tuple[int, SettleQuota] | threading.Event | None


class RedisStore:
    """Limits and budgets in a Redis shared by every worker (``limits.backend: redis``).

    One store per event loop (the asyncio client binds to it). ``clock`` times
    the circuit breaker (tests advance their own).
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float,
        retry_interval: float,
        max_queue: int = 10_000,
        close_timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._url = url
        self._timeout = timeout
        # For the settle thread, and for acquire off asyncio (thread-safe); a URL
        # redis-py refuses is a ValueError here.
        self._sync_client = self._new_sync_client()
        options = self._sync_client.connection_pool.connection_kwargs
        self.where, self._secrets = _where_and_secrets(url, options)
        self._retry_interval = retry_interval
        self._close_timeout = close_timeout
        self._clock = clock
        self._options = options
        self._call: Callable[[list[str], list[str]], Any] | None = None
        self._lean: _LeanClient | TrioLeanClient | None = None
        # The breaker: while _clock() < _down_until, calls fail at once; after
        # it, one call (_probing) tries Redis.
        self._down_until: float | None = None
        self._probing = False
        self._down_reason = ""
        self._answered = 0
        self._failed = 0
        # Repeated failures (each call while Redis is down): one line and a count.
        self._logs = LogCollapser(logger, interval=_LOG_EVERY, clock=clock)
        # Settles: a queue and one thread, started at the first. Only settle()
        # (the loop's thread) adds settles, so it alone keeps the bound: at most
        # max_queue settles not yet done, queued or in the batch being sent;
        # flush markers and the final None never wait for room.
        self._queue: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        self._max_queue = max_queue
        self._thread: threading.Thread | None = None
        self._closed = False
        self._abandoned = False  # closing gave up waiting: the thread drops the rest
        self._settled = 0
        self._settles_failed = 0
        self._settles_dropped = 0  # by settle()
        self._settles_abandoned = 0  # by the thread
        self._settle_down_until: float | None = None
        # Read your own spends: an acquire whose budget this process has spent
        # on waits (at most ``timeout``) until that settle is done. Settles are
        # numbered; _last_spend[key] is the last one adding to key; the thread
        # sets _done and wakes the waiters through the event loop (_notify).
        self._submitted = 0
        self._done = 0
        self._last_spend: dict[str, int] = {}
        self._tidy_at = _SPEND_KEYS
        self._wake_event: anyio.Event | None = None
        self._notify: Callable[[Callable[[], None]], object] | None = None
        # On asyncio (the lean client), settles go out on the event loop instead,
        # on a connection of their own: those of one loop iteration in one call,
        # in order (``_sending``: the calls under way, oldest first, with the
        # number of each one's last settle). ``_progress`` tells flush() of each.
        self._lean_settle: _LeanClient | TrioLeanClient | None = None
        # On trio, one system task sends them (``_settle_on_trio``), parked on
        # ``_settles_ready`` while there is none; ``_settler`` cancels it, and
        # ``_settler_done`` says it has ended.
        self._settles_ready: trio.lowlevel.ParkingLot | None = None
        self._settler = trio.CancelScope()
        self._settler_done: trio.Event | None = None
        self._unsent: list[tuple[int, SettleQuota]] = []
        self._sending: collections.deque[tuple[int, int, asyncio.Task[None]]] = collections.deque()
        self._progress = threading.Condition()

    # --- clients ------------------------------------------------------------------

    def _client_options(self) -> dict[str, Any]:
        return {
            "socket_timeout": self._timeout,
            "socket_connect_timeout": self._timeout,
            "health_check_interval": 0,
        }

    def _new_sync_client(self) -> redis.Redis:
        # No retries: a retried script could charge twice; the breaker retries later.
        return redis.Redis.from_url(
            self._url, retry=redis.retry.Retry(NoBackoff(), 0), **self._client_options()
        )

    def _bind(self) -> Callable[[list[str], list[str]], Any]:
        """Choose the client for the running event loop, once."""
        plain = self._sync_client.connection_pool.connection_class in (
            redis.Connection,
            redis.UnixDomainSocketConnection,
        )
        if using_asyncio() and plain:
            lean = self._lean = _LeanClient(
                self._options, self.where, REDIS_QUOTA_SCRIPT, self._timeout
            )
            self._lean_settle = _LeanClient(
                self._options, self.where, REDIS_SETTLE_MANY_SCRIPT, self._timeout
            )
            call = lean.call
        elif plain:  # trio: the same, on trio, settles sent by a task of their own
            trio_lean = self._lean = TrioLeanClient(
                self._options, self.where, REDIS_QUOTA_SCRIPT, self._timeout
            )
            self._lean_settle = TrioLeanClient(
                self._options, self.where, REDIS_SETTLE_MANY_SCRIPT, self._timeout
            )
            self._settles_ready = trio.lowlevel.ParkingLot()
            self._settler_done = trio.Event()
            trio.lowlevel.spawn_system_task(self._settle_on_trio, name="sansproxy-redis-settles")
            call = trio_lean.call
        else:
            sync_script = self._sync_client.register_script(REDIS_QUOTA_SCRIPT)

            async def call(keys: list[str], args: list[str]) -> Any:
                # The worker thread is abandoned at the deadline; its socket
                # timeout (the same) ends it soon after.
                with anyio.fail_after(self._timeout):
                    return await anyio.to_thread.run_sync(
                        functools.partial(sync_script, keys=keys, args=args),
                        abandon_on_cancel=True,
                    )

        self._notify = _notifier()
        self._call = call
        return call

    def _describe(self, exc: BaseException) -> str:
        if isinstance(exc, TimeoutError) and not str(exc):
            text = f"no reply within {self._timeout:g} s"
        else:
            text = f"{type(exc).__name__}: {exc}"
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    # --- acquire --------------------------------------------------------------------

    def acquire_nowait(self, cmd: AcquireQuota) -> QuotaAnswered | QuotaFailed | None:
        """None: Redis's answer is always awaited (:meth:`acquire_soon`, :meth:`acquire`)."""
        return None

    def acquire_soon(
        self, cmd: AcquireQuota, answered: Callable[[QuotaAnswered | QuotaFailed], object]
    ) -> bool:
        """:meth:`acquire` without a task, on asyncio's lean client once connected:
        the script is sent and ``answered`` gets its answer from the event loop, once
        (never before this returns). False when that cannot be (not connected yet,
        the breaker open, a spend to wait for, trio, TLS): then await :meth:`acquire`.
        ``ValueError`` on a malformed command."""
        lean = self._lean
        if self._down_until is not None or not isinstance(lean, _LeanClient):
            return False
        budgets = _budgets(cmd)
        last = self._last_spend
        if last and budgets and max(last.get(key, 0) for key, _ in budgets) > self._done:
            return False
        charges = _charges(cmd)
        keys, args = redis_quota_args(charges, budgets, now=cmd.at)
        reply = functools.partial(self._replied, cmd, charges, budgets, answered)
        return lean.call_soon(keys, args, reply)

    def _replied(
        self,
        cmd: AcquireQuota,
        charges: list[tuple[str, Limit, int]],
        budgets: list[tuple[str, float]],
        answered: Callable[[QuotaAnswered | QuotaFailed], object],
        reply: Any,
    ) -> None:
        try:
            answered(self._judge(cmd, charges, budgets, reply))
        except Exception:  # a bug: the connection's other callers are still answered
            logger.exception("internal error handing a quota answer over")

    async def acquire(self, cmd: AcquireQuota) -> QuotaAnswered | QuotaFailed:
        """The quota script, bounded by ``timeout``. ``ValueError`` on a malformed
        command; every trouble with Redis or its reply is a ``QuotaFailed``."""
        charges, budgets = _charges(cmd), _budgets(cmd)
        keys, args = redis_quota_args(charges, budgets, now=cmd.at)
        probe = False
        if self._down_until is not None:
            if self._probing or self._clock() < self._down_until:
                self._failed += 1
                return QuotaFailed(query_id=cmd.query_id, message=self._down_reason)
            self._probing = probe = True
        call = self._call or self._bind()
        if self._last_spend and budgets:
            target = max(self._last_spend.get(key, 0) for key, _ in budgets)
            if target > self._done:
                await self._wait_settled(target)
        try:
            reply = await call(keys, args)
        except Exception as exc:  # ResponseError (an error reply) included
            reply = exc
        finally:
            if probe:
                self._probing = False
        return self._judge(cmd, charges, budgets, reply)

    def _judge(
        self,
        cmd: AcquireQuota,
        charges: list[tuple[str, Limit, int]],
        budgets: list[tuple[str, float]],
        reply: Any,
    ) -> QuotaAnswered | QuotaFailed:
        """The answer to ``cmd`` from the script's ``reply``, or from the error that
        came instead (a ``ResponseError``: Redis answered no; a ``ValueError``: it
        answered nonsense; else: no answer)."""
        if isinstance(reply, Exception) and not isinstance(reply, ResponseError | ValueError):
            return self._trip(cmd, reply)
        try:
            if isinstance(reply, Exception):
                raise reply
            answer = redis_quota_answer(reply, charges, budgets, now=cmd.at)
        except (ResponseError, ValueError) as exc:
            # Redis answered, with an error or nonsense: this call fails, Redis is up.
            self._failed += 1
            detail = self._describe(exc)
            self._logs.log(logging.ERROR, "redis %s: bad quota reply: %s", self.where, detail)
            self._recovered()
            return QuotaFailed(query_id=cmd.query_id, message=f"redis {self.where}: {detail}")
        self._recovered()
        self._answered += 1
        return _answer(cmd, answer)

    async def _wait_settled(self, target: int) -> None:
        """Until settle number ``target`` is done, or ``timeout`` has passed."""
        with anyio.move_on_after(self._timeout):
            while True:
                event = self._wake_event
                if event is None:
                    event = self._wake_event = anyio.Event()
                if self._done >= target:  # looked at once the event is there: no wake-up lost
                    return
                await event.wait()

    def _wake(self) -> None:
        # In the event loop, at the settle thread's request.
        event, self._wake_event = self._wake_event, None
        if event is not None:
            event.set()

    def _trip(self, cmd: AcquireQuota, exc: Exception) -> QuotaFailed:
        self._failed += 1
        detail = self._describe(exc)
        self._down_until = self._clock() + self._retry_interval
        self._down_reason = (
            f"redis unavailable ({self.where}): {detail}; calls fail at once for "
            f"{self._retry_interval:g} s after each failure"
        )
        self._logs.log(logging.ERROR, "%s", self._down_reason)
        return QuotaFailed(query_id=cmd.query_id, message=self._down_reason)

    def _recovered(self) -> None:
        if self._down_until is not None:
            self._down_until = None
            logger.warning("redis %s answers again", self.where)

    # --- settle ---------------------------------------------------------------------

    def settle(self, cmd: SettleQuota) -> None:
        """Queue the settle for the settle thread; never blocks. Call it from the
        event loop's thread."""
        if not (cmd.adjustments or cmd.spends):
            return
        if self._closed:
            self._drop("the store is closed")
            return
        if self._submitted - self._done >= self._max_queue:  # waiting, or being sent
            self._drop("the queue is full")
            return
        self._submitted += 1
        number = self._submitted
        last = self._last_spend
        for spend in cmd.spends:
            last[spend.key] = number
        if len(last) >= self._tidy_at:  # forget the keys whose spends are all done
            done = self._done
            self._last_spend = {key: n for key, n in last.items() if n > done}
            self._tidy_at = max(_SPEND_KEYS, 2 * len(self._last_spend))
        if self._settles_ready is not None:  # trio: to the settles' task
            if not self._unsent:
                self._settles_ready.unpark()
            self._unsent.append((number, cmd))
            return
        if self._lean_settle is not None:  # asyncio: on the loop, this iteration's together
            if not self._unsent:
                asyncio.get_running_loop().call_soon(self._send_unsent)
            self._unsent.append((number, cmd))
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="sansproxy-quota", daemon=True)
            self._thread.start()
        self._queue.put((number, cmd))

    def _send_unsent(self) -> None:
        """Send the settles of this loop iteration: one call per ``_SETTLE_BATCH``."""
        unsent, self._unsent = self._unsent, []
        for start in range(0, len(unsent), _SETTLE_BATCH):
            batch = unsent[start : start + _SETTLE_BATCH]
            cmds = [cmd for _, cmd in batch]
            task = asyncio.ensure_future(self._settle_on_loop(cmds))
            self._sending.append((batch[-1][0], len(batch), task))
            task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task[None]) -> None:
        """A settle call ended (applied, failed, or given up at close): the settles
        up to the first call still under way are done."""
        sending = self._sending
        while sending and sending[0][2].done():
            last, count, done = sending.popleft()
            if done.cancelled():  # close gave up on it
                self._settles_abandoned += count
            elif done.exception() is not None:  # a bug: _settle_on_loop catches the rest
                self._settles_failed += count
                logger.error("quota settles failed: %r", done.exception())
            self._set_done(last)
        self._wake()

    async def _settle_on_trio(self) -> None:
        """trio: send what has queued up (``_SETTLE_BATCH`` at most a call), one call
        at a time, until the store is closed and nothing is left."""
        ready, done = self._settles_ready, self._settler_done
        assert ready is not None and done is not None
        unsent: list[tuple[int, SettleQuota]] = []
        try:
            with self._settler:
                while True:
                    if not self._unsent:
                        if self._closed:
                            return
                        await ready.park()
                        continue
                    unsent = self._unsent[:_SETTLE_BATCH]
                    del self._unsent[:_SETTLE_BATCH]
                    await self._settle_on_loop([cmd for _, cmd in unsent])
                    self._set_done(unsent[-1][0])
                    unsent = []
                    self._wake()
        finally:
            # Given up at close (or the run ended): the rest is dropped, counted.
            left = len(unsent) + len(self._unsent)
            if left:
                self._settles_abandoned += left
                self._set_done(self._submitted)
                self._unsent = []
            done.set()

    def _set_done(self, number: int) -> None:
        with self._progress:
            self._done = max(self._done, number)
            self._progress.notify_all()

    def _drop(self, why: str) -> None:
        self._settles_dropped += 1
        self._logs.log(logging.ERROR, "quota settle dropped: %s", why)

    def _run(self) -> None:
        script = self._sync_client.register_script(REDIS_SETTLE_MANY_SCRIPT)
        get, get_nowait = self._queue.get, self._queue.get_nowait
        while True:
            # A batch: what has queued up, up to a flush marker or the end.
            batch: list[tuple[int, SettleQuota]] = []
            item = get()
            while item is not None and not isinstance(item, threading.Event):
                batch.append(item)
                if len(batch) >= _SETTLE_BATCH:
                    break
                try:
                    item = get_nowait()
                except queue.Empty:
                    break
            if batch:
                if self._abandoned:
                    self._settles_abandoned += len(batch)
                else:
                    self._settle_batch(script, [cmd for _, cmd in batch])
                self._set_done(batch[-1][0])  # before looking for waiters: none is missed
                if self._wake_event is not None and self._notify is not None:
                    with contextlib.suppress(RuntimeError):  # the event loop is gone
                        self._notify(self._wake)
            if isinstance(item, threading.Event):
                item.set()
            elif item is None:
                return

    def _settle_batch(self, script: Callable[..., Any], cmds: Sequence[SettleQuota]) -> None:
        """One call of the settle-many script for ``cmds`` (the settle thread)."""
        prepared = self._settle_args(cmds)
        if prepared is None:
            return
        keys, args, count = prepared
        try:
            reply = script(keys=keys, args=args)
        except Exception as exc:
            self._settle_refused(exc, count)
            return
        self._settle_answered(reply, count)

    async def _settle_on_loop(self, cmds: Sequence[SettleQuota]) -> None:
        """:meth:`_settle_batch` on the event loop's own connection (asyncio, trio)."""
        assert self._lean_settle is not None
        prepared = self._settle_args(cmds)
        if prepared is None:
            return
        keys, args, count = prepared
        try:
            reply = await self._lean_settle.call(keys, args)
        except Exception as exc:
            self._settle_refused(exc, count)
            return
        self._settle_answered(reply, count)

    def _settle_args(self, cmds: Sequence[SettleQuota]) -> tuple[list[str], list[str], int] | None:
        """The settle-many script's keys and args for ``cmds``, and how many settles they
        hold (a malformed one is counted as failed); None while the breaker is open, or
        if none is left."""
        # The same breaker as acquire's, for settles: while Redis is down, settles
        # fail at once instead of each waiting for the timeout.
        down = self._settle_down_until
        if down is not None and self._clock() < down:
            self._settles_failed += len(cmds)
            return None
        groups = []
        for cmd in cmds:
            try:
                groups.append(redis_settle_group(_adjustments(cmd), _spends(cmd), now=cmd.at))
            except ValueError as exc:
                self._settle_failed(str(exc))
        if not groups:
            return None
        try:
            keys, args = redis_settle_many_args(groups)
        except ValueError as exc:
            self._settles_failed += len(groups) - 1
            self._settle_failed(self._describe(exc))
            return None
        return keys, args, len(groups)

    def _settle_refused(self, exc: Exception, count: int) -> None:
        """The settle-many call of ``count`` settles failed."""
        if isinstance(exc, ResponseError):  # Redis answered: it is up
            self._settles_failed += count - 1
            self._settle_failed(self._describe(exc))
            return
        self._settles_failed += count
        self._settle_down_until = self._clock() + self._retry_interval
        self._logs.log(
            logging.ERROR,
            "redis unavailable (%s): quota settles fail for %g s: %s",
            self.where,
            self._retry_interval,
            self._describe(exc),
        )

    def _settle_answered(self, reply: Any, count: int) -> None:
        """The settle-many script's reply for ``count`` settles: each applied or failed."""
        try:
            errors = redis_settle_many_answer(reply, count)
        except ValueError as exc:
            self._settles_failed += count - 1
            self._settle_failed(self._describe(exc))
            return
        self._settle_down_until = None
        for error in errors:
            if error is None:
                self._settled += 1
            else:
                self._settle_failed(error)

    def _settle_failed(self, why: str) -> None:
        self._settles_failed += 1
        for secret in self._secrets:
            why = why.replace(secret, "***")
        self._logs.log(logging.ERROR, "redis %s: quota settle failed: %s", self.where, why)

    def flush(self, timeout: float = 10.0) -> bool:
        """Block until the settles submitted so far are done (applied or failed); False
        if that takes more than ``timeout`` seconds. Not from the event loop's thread
        while settles go out on that loop (it would wait for itself)."""
        until = time.monotonic() + timeout
        target = self._submitted
        thread = self._thread
        if thread is not None:
            if self._closed:  # the thread ends after the last settle
                thread.join(timeout)
                if thread.is_alive():
                    return False
            else:
                marker = threading.Event()
                self._queue.put(marker)
                if not marker.wait(timeout):
                    return False
        with self._progress:
            left = max(0.0, until - time.monotonic())
            return self._progress.wait_for(lambda: self._done >= target, left)

    # --- closing --------------------------------------------------------------------

    def _stop_thread(self) -> None:
        thread = self._thread
        if thread is None:
            return
        self._queue.put(None)
        thread.join(self._close_timeout)
        if thread.is_alive():
            self._abandoned = True
            logger.error(
                "redis %s: quota settles still queued after %g s are dropped",
                self.where,
                self._close_timeout,
            )

    async def aclose(self) -> None:
        """Finish the queued settles (at most ``close_timeout`` s), close the clients."""
        self._closed = True
        if self._settler_done is not None:  # trio: the settles' task ends once done
            assert self._settles_ready is not None
            self._settles_ready.unpark_all()
            with trio.move_on_after(self._close_timeout):
                await self._settler_done.wait()
            if not self._settler_done.is_set():
                self._settler.cancel()
                await self._settler_done.wait()
                logger.error(
                    "redis %s: quota settles still under way after %g s are dropped",
                    self.where,
                    self._close_timeout,
                )
        if self._unsent:
            self._send_unsent()
        if self._sending:  # asyncio: the calls under way, at most close_timeout
            tasks = [task for _, _, task in self._sending]
            _, late = await asyncio.wait(tasks, timeout=self._close_timeout)
            if late:
                for task in late:
                    task.cancel()
                await asyncio.wait(late)
                logger.error(
                    "redis %s: quota settles still under way after %g s are dropped",
                    self.where,
                    self._close_timeout,
                )
        await anyio.to_thread.run_sync(self._stop_thread)
        if self._lean is not None:
            self._lean.close()
        if self._lean_settle is not None:
            self._lean_settle.close()
        self._sync_client.close()
        self._logs.flush()
        stats = self.statistics()
        if stats.failed or stats.settles_failed or stats.settles_dropped:
            logger.warning(
                "redis %s: %d quota calls failed; settles: %d done, %d failed, %d dropped",
                self.where,
                stats.failed,
                stats.settled,
                stats.settles_failed,
                stats.settles_dropped,
            )

    def statistics(self) -> StoreStatistics:
        """The store's counters."""
        return StoreStatistics(
            answered=self._answered,
            failed=self._failed,
            settled=self._settled,
            settles_failed=self._settles_failed,
            settles_dropped=self._settles_dropped + self._settles_abandoned,
            queued=self._queue.qsize() + len(self._unsent),
        )
