"""Quota stores (adapters._store): memory, and Redis against a real redis-server.

Memory and Redis answer alike on random sequences of quota commands; two Redis
stores share one limit exactly; Redis paused or stopped mid-test gives a
``QuotaFailed`` within the timeout, the breaker then fails fast, and the store
recovers by itself when Redis is back on the same port; malformed data in Redis
is a ``QuotaFailed``, never an exception; the URL's password never reaches a
log. The driver hands settles to the store only after the client's flush.

A fixture starts ``redis-server`` on a free port; without one the Redis tests
skip with the reason, and under CI (``CI`` set) they fail. Every async test runs
on asyncio and on trio. The breaker's clock is a number the tests advance.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import cast

import anyio
import anyio.abc
import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from adapters._cli import build_parser, load
from adapters._driver import ClientDisconnected, Driver
from adapters._store import (
    MemoryStore,
    QuotaStore,
    StoreStatistics,
    make_store,
    proxy_for,
)
from adapters._store_redis import RedisStore
from core import EndResponse, Exchange, Proxy, ProxyConfig, SendBody, StartResponse
from core._commands import (
    AcquireQuota,
    BudgetCheck,
    Command,
    QuotaAdjustment,
    QuotaCharge,
    SettleQuota,
    SpendRecord,
)
from core._config import LimitsConfig
from core._events import ClientGone, Event, QuotaAnswered, QuotaFailed
from core.policies._limiter import Limit, LimiterState, MemoryLimiter
from core.policies._limiter_redis import (
    REDIS_QUOTA_SCRIPT,
    REDIS_SETTLE_SCRIPT,
    redis_quota_answer,
    redis_quota_args,
    redis_settle_args,
)
from tests.core.test_limiter import LIMITS, QUOTA_STEPS, STARTS, amount, delta
from tests.support.redis_server import RedisServer as Server
from tests.support.redis_server import require_redis, self_signed

RPM = Limit(limit=5)
T0 = 1_700_000_000.0  # UNIX seconds, as the core sends them
PASSWORD = "s3cr3t-Pa55word"


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    backend: str = request.param
    return backend


class Clock:
    """The breaker's clock: a number the test advances."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- a redis-server of our own --------------------------------------------------------


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for the tests that do not stop it (they use keys of their own)."""
    require_redis()
    server = Server(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def fresh(shared_server: Server) -> Server:
    """The shared server, emptied."""
    client = shared_server.client()
    client.flushdb()
    client.close()
    return shared_server


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    """A server this test may pause, stop and start again."""
    require_redis()
    server = Server(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def store(fresh: Server, clock: Clock) -> AsyncIterator[RedisStore]:
    store = RedisStore(fresh.url(), timeout=5.0, retry_interval=1.0, clock=clock)
    try:
        yield store
    finally:
        await store.aclose()


def acquire_cmd(
    query_id: int,
    at: float,
    charges: list[tuple[str, Limit, int]],
    budgets: list[tuple[str, float]] = (),  # type: ignore[assignment]
) -> AcquireQuota:
    return AcquireQuota(
        query_id=query_id,
        at=at,
        charges=tuple(QuotaCharge(key=k, limit=limit, amount=n) for k, limit, n in charges),
        budgets=tuple(BudgetCheck(key=k, usd=usd) for k, usd in budgets),
        timeout=1.0,
    )


def settle_cmd(
    at: float,
    adjustments: list[tuple[str, Limit, int, float]],
    spends: list[tuple[str, float, float | None]],
) -> SettleQuota:
    return SettleQuota(
        at=at,
        adjustments=tuple(
            QuotaAdjustment(key=k, limit=limit, delta=d, charged_at=c)
            for k, limit, d, c in adjustments
        ),
        spends=tuple(SpendRecord(key=k, usd=usd, ttl=ttl) for k, usd, ttl in spends),
    )


async def flushed(store: QuotaStore) -> None:
    """Wait (bounded) until the store's settle thread has done what was queued."""
    assert await anyio.to_thread.run_sync(store.flush, 10.0)


def admitted(answer: QuotaAnswered | QuotaFailed) -> bool:
    assert isinstance(answer, QuotaAnswered), answer
    return answer.admitted


# --- memory ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_memory_store_answers_settles_and_counts() -> None:
    store = MemoryStore()
    tpm = Limit(limit=100)
    charges = [("rpm", RPM, 1), ("tpm", tpm, 60)]
    answer = await store.acquire(acquire_cmd(7, T0, charges, [("day", 1.0)]))
    assert isinstance(answer, QuotaAnswered)
    assert (answer.query_id, answer.admitted, answer.spent) == (7, True, (0.0,))
    assert [d.remaining for d in answer.decisions] == [4, 40]
    store.settle(settle_cmd(T0 + 1, [("tpm", tpm, -50, T0)], [("day", 1.5, 86_400.0)]))
    # What a command allows but the store refuses is logged and counted.
    store.settle(settle_cmd(T0 + 1, [], [("day", 1.0, 1e11)]))  # ttls over the store's bound
    store.settle(settle_cmd(T0 + 1, [], [("day", 2.0, 1e300)]))
    assert store.flush()
    answer = await store.acquire(acquire_cmd(8, T0 + 2, charges, [("day", 1.0)]))
    assert isinstance(answer, QuotaAnswered)
    assert (answer.admitted, answer.spent) == (False, (1.5,))  # over budget: nothing charged
    assert [d.remaining for d in answer.decisions] == [4, 90]
    with pytest.raises(ValueError, match="distinct keys"):  # a malformed command is a bug
        await store.acquire(acquire_cmd(9, T0, [("k", RPM, 1), ("k", RPM, 1)]))
    await store.aclose()
    assert store.statistics() == StoreStatistics(
        answered=2, failed=0, settled=1, settles_failed=2, settles_dropped=0, queued=0
    )


@pytest.mark.anyio
async def test_memory_store_forgets_expired_keys_at_a_bounded_cost() -> None:
    store = MemoryStore()
    one = Limit(limit=1, window=1.0)
    for i in range(3000):  # each key used once, gone one second later
        assert admitted(await store.acquire(acquire_cmd(i + 1, T0 + i, [(f"k{i}", one, 1)])))
    assert len(store.limiter) <= 1024 + 1
    store.settle(settle_cmd(T0, [], [("day", 1.0, 1.0)]))
    assert len(store.limiter) <= 1024 + 2


def test_the_memory_store_answers_at_once() -> None:
    # No event loop here: acquire_nowait is a plain call, and it is acquire's answer.
    store = MemoryStore()
    first = store.acquire_nowait(acquire_cmd(1, T0, [("now", RPM, 1)], [("now:day", 1.0)]))
    assert first == QuotaAnswered(
        query_id=1, admitted=True, decisions=first.decisions, spent=(0.0,)
    )
    assert [d.remaining for d in first.decisions] == [4]
    for i in range(4):
        assert admitted(store.acquire_nowait(acquire_cmd(2 + i, T0, [("now", RPM, 1)])))
    refused = store.acquire_nowait(acquire_cmd(6, T0, [("now", RPM, 1)]))
    assert (refused.admitted, refused.decisions[0].retry_after) == (False, 60.0)
    assert store.statistics().answered == 6


def test_make_store_follows_the_config() -> None:
    assert isinstance(make_store(LimitsConfig()), MemoryStore)
    url = SecretStr(f"redis://:{PASSWORD}@127.0.0.1:1/0")
    store = make_store(LimitsConfig(backend="redis", redis_url=url))
    assert isinstance(store, RedisStore)
    assert store.where == "127.0.0.1:1"
    unix = RedisStore(f"unix://:{PASSWORD}@/run/redis.sock", timeout=1.0, retry_interval=1.0)
    assert unix.where == "/run/redis.sock"
    with pytest.raises(ValueError, match="redis_url"):
        make_store(LimitsConfig.model_construct(backend="redis", redis_url=None))
    with pytest.raises(ValueError):
        RedisStore("http://nowhere", timeout=1.0, retry_interval=1.0)


def test_a_memory_backed_proxy_checks_its_limits_in_the_store_the_driver_keeps() -> None:
    # The servers build their proxy with proxy_for: with the memory backend the
    # limits are checked in the exchange's own step, in the driver's store's limiter
    # (its sweeps and statistics see the same keys); with Redis, through commands.
    memory = ProxyConfig.model_validate({"upstream": {"base_url": "http://up.test"}})
    proxy = proxy_for(memory)
    store = Driver(proxy).store
    assert isinstance(store, MemoryStore) and proxy.limiter is store.limiter
    url = SecretStr(f"redis://:{PASSWORD}@127.0.0.1:1/0")
    shared = memory.model_copy(update={"limits": LimitsConfig(backend="redis", redis_url=url)})
    assert proxy_for(shared).limiter is None
    # What the servers' command lines load.
    loaded = load(build_parser("t", "t").parse_args(["--base-url", "http://up.test"]), {})
    assert loaded.proxy.limiter is not None


# --- the scripts themselves against the limiter they transcribe -----------------------


@settings(max_examples=60, deadline=None)
@given(
    rpm=st.integers(1, 5).map(lambda n: Limit(limit=n)),
    tpm=LIMITS,
    budget=st.sampled_from([0.0, 0.5, 1.0, 2.5, math.inf]),
    now=STARTS,
    steps=QUOTA_STEPS,
)
def test_quota_and_settle_scripts_decide_and_store_as_the_python(
    shared_server: Server,
    *,
    rpm: Limit,
    tpm: Limit,
    budget: float,
    now: float,
    steps: list[tuple[float, int, int, float, float | None, int, int]],
) -> None:
    client = shared_server.client()
    client.flushdb()
    quota = client.register_script(REDIS_QUOTA_SCRIPT)
    settle = client.register_script(REDIS_SETTLE_SCRIPT)
    m = MemoryLimiter()
    pending: list[tuple[float, int]] = []
    for fraction, kind, raw, usd, ttl, pick, delta_raw in steps:
        now += fraction * tpm.window
        if kind == 0:
            tokens = amount(tpm, raw)
            charges = [("{k}:rpm", rpm, 1), ("{k}:tpm", tpm, tokens)]
            budgets = [("{k}:day", budget), ("{k}:month", budget * 2)]
            keys, args = redis_quota_args(charges, budgets, now=now)
            reply = quota(keys=keys, args=args)
            expected = m.quota(charges, budgets, now=now)
            assert redis_quota_answer(reply, charges, budgets, now=now) == expected
            if expected[0]:
                pending.append((now, tokens))
        else:
            adjustments: list[tuple[str, Limit, int, float]] = []
            if kind == 1 and pending:
                at, charged = pending.pop(pick % len(pending))
                adjustments.append(("{k}:tpm", tpm, delta(tpm, charged, delta_raw), at))
            spends = [("{k}:day", usd, ttl), ("{k}:month", usd, None)]
            keys, args = redis_settle_args(adjustments, spends, now=now)
            assert settle(keys=keys, args=args) is None
            m.settle(adjustments, spends, now=now)
        for key in ("{k}:rpm", "{k}:tpm"):
            state, stored = m.get(key), client.get(key)
            assert stored == (None if state is None else state.encode().encode())
        for key in ("{k}:day", "{k}:month"):
            stored = client.get(key)
            words = [float(w) for w in stored.split()] if stored else [0.0, float("inf")]
            live = len(words) == 1 or words[1] > now
            assert (words[0] if live else 0.0) == m.spent(key, now=now)
    client.close()


def test_malformed_states_are_script_errors(fresh: Server) -> None:
    client = fresh.client()
    quota = client.register_script(REDIS_QUOTA_SCRIPT)
    keys, args = redis_quota_args([("{m}:rpm", RPM, 1)], [("{m}:day", 1.0)], now=T0)
    for key, value in [
        ("{m}:rpm", "1.0"),
        ("{m}:rpm", "1.0 x"),
        ("{m}:rpm", "2.0 1 1.0 1"),
        ("{m}:rpm", "1.0 0"),
        ("{m}:rpm", "1.0 1.5"),
        ("{m}:rpm", "nan 1"),
        ("{m}:day", "x"),
        ("{m}:day", "1 2 3"),
        ("{m}:day", "inf"),
    ]:
        client.flushdb()
        client.set(key, value)
        with pytest.raises(redis.ResponseError, match="sansproxy: not a"):
            quota(keys=keys, args=args)
    client.flushdb()
    assert quota(keys=keys, args=args)[0] == 1
    client.close()


# --- the Redis store ------------------------------------------------------------------


def random_commands(
    seed: int,
) -> Iterator[tuple[AcquireQuota | SettleQuota, list[tuple[float, int]]]]:
    """Quota commands of one key at random; each with the list of charges still to
    correct (the test appends the admitted ones)."""
    rng = random.Random(seed)
    rpm = Limit(limit=rng.randint(1, 5))
    tpm = Limit(limit=rng.choice([10, 1000]), window=rng.choice([60.0, 1.0, 7.3]))
    budget = rng.choice([0.5, 1.0, 3.0])
    at = T0 + rng.random()
    pending: list[tuple[float, int]] = []
    for i in range(120):
        at += tpm.window * rng.choice([0.0, 0.0, 1 / 120, 0.01, 0.1, 0.5, 1.0, 1.5])
        if rng.random() < 0.6:
            tokens = rng.randint(0, tpm.limit + 1)
            charges = [(f"{{s{seed}}}:rpm", rpm, 1), (f"{{s{seed}}}:tpm", tpm, tokens)]
            budgets = [(f"{{s{seed}}}:day", budget)]
            yield acquire_cmd(i + 1, at, charges, budgets), pending
        else:
            adjustments = []
            if pending and rng.random() < 0.7:
                charged_at, charged = pending.pop(rng.randrange(len(pending)))
                adjustments.append(
                    (f"{{s{seed}}}:tpm", tpm, rng.randint(-charged, tpm.limit // 4), charged_at)
                )
            usd = rng.choice([0.0, 0.01, 0.1, 1 / 3, 0.7])
            ttl = rng.choice([None, tpm.window, 10 * tpm.window])
            yield settle_cmd(at, adjustments, [(f"{{s{seed}}}:day", usd, ttl)]), pending


@pytest.mark.anyio
@pytest.mark.parametrize("seed", range(4))
async def test_memory_and_redis_answer_alike(store: RedisStore, seed: int) -> None:
    memory = MemoryStore()
    answers = 0
    for cmd, pending in random_commands(seed):
        if isinstance(cmd, SettleQuota):
            memory.settle(cmd)
            store.settle(cmd)
            await flushed(store)
            continue
        expected = await memory.acquire(cmd)
        assert await store.acquire(cmd) == expected
        answers += 1
        if admitted(expected):
            pending.append((cmd.at, cmd.charges[1].amount))
    stats = store.statistics()
    assert (stats.answered, stats.failed, stats.settles_failed) == (answers, 0, 0)
    assert stats.settled == memory.statistics().settled


@pytest.mark.anyio
async def test_two_stores_share_one_limit_exactly(fresh: Server) -> None:
    stores = [RedisStore(fresh.url(), timeout=5.0, retry_interval=1.0) for _ in range(2)]
    limit = Limit(limit=10)
    answers: list[QuotaAnswered | QuotaFailed] = []

    async def ask(store: RedisStore, i: int) -> None:
        answers.append(await store.acquire(acquire_cmd(i + 1, T0, [("{two}:rpm", limit, 1)])))

    async with anyio.create_task_group() as tg:
        for i in range(30):
            tg.start_soon(ask, stores[i % 2], i)
    assert sum(admitted(a) for a in answers) == 10
    for store in stores:
        await store.aclose()
        assert store.statistics().answered == 15


@pytest.mark.anyio
async def test_settles_apply_once_and_are_flushed_on_close(
    fresh: Server, store: RedisStore
) -> None:
    tpm = Limit(limit=100)
    charges = [("{set}:tpm", tpm, 80)]
    assert admitted(await store.acquire(acquire_cmd(1, T0, charges, [("{set}:day", 1.0)])))
    store.settle(settle_cmd(T0 + 1, [("{set}:tpm", tpm, -70, T0)], [("{set}:day", 0.25, None)]))
    store.settle(settle_cmd(T0 + 1, [], []))  # nothing to do: not even queued
    await flushed(store)
    answer = await store.acquire(acquire_cmd(2, T0 + 2, charges, [("{set}:day", 1.0)]))
    assert isinstance(answer, QuotaAnswered)
    assert (answer.admitted, answer.decisions[0].remaining, answer.spent) == (True, 10, (0.25,))
    for _ in range(100):
        store.settle(settle_cmd(T0 + 3, [], [("{set}:day", 0.01, None)]))
    await store.aclose()  # writes what is queued
    store.settle(settle_cmd(T0 + 3, [], [("{set}:day", 0.01, None)]))  # closed: dropped
    stats = store.statistics()
    assert (stats.settled, stats.settles_failed, stats.settles_dropped) == (101, 0, 1)
    expected = 0.25
    for _ in range(100):
        expected += 0.01  # in this order: float sums depend on it
    client = fresh.client()
    assert float(client.get("{set}:day") or b"") == expected
    client.close()


@pytest.mark.anyio
async def test_an_acquire_sees_what_this_process_spent(store: RedisStore) -> None:
    # The spend is settled in another thread: the next acquire on that budget waits
    # for it, however fast it comes.
    answers: list[QuotaAnswered | QuotaFailed] = []

    async def ask(key: str, i: int) -> None:
        answers.append(await store.acquire(acquire_cmd(i + 1, T0, [], [(key, 1.0)])))

    for i in range(10):
        key = f"{{own}}:day{i}"
        store.settle(settle_cmd(T0, [], [(key, 2.0, None)]))
        answers.clear()
        async with anyio.create_task_group() as tg:
            tg.start_soon(ask, key, i)
            tg.start_soon(ask, key, i)
        refused = QuotaAnswered(query_id=i + 1, admitted=False, decisions=(), spent=(2.0,))
        assert answers == [refused, refused]
    for i in range(2000):  # many keys: those settled are forgotten as it goes
        store.settle(settle_cmd(T0, [], [(f"{{own}}:many{i}", 0.5, None)]))
    answer = await store.acquire(acquire_cmd(99, T0, [], [("{own}:many1999", 1.0)]))
    assert answer == QuotaAnswered(query_id=99, admitted=True, decisions=(), spent=(0.5,))


@pytest.mark.anyio
async def test_a_full_settle_queue_drops_and_a_stuck_close_gives_up(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    store = RedisStore(server.url(), timeout=5.0, retry_interval=1.0, max_queue=2, close_timeout=0)
    assert store.flush(0.0)  # nothing to wait for
    server.pause()  # the settle thread hangs on the first; the queue fills up
    try:
        for _ in range(10):
            store.settle(settle_cmd(T0, [], [("{q}:day", 1.0, None)]))
        assert store.statistics().settles_dropped >= 7
        assert not store.flush(0.0)
        await store.aclose()  # gives up at once: what is still queued is dropped
    finally:
        server.resume()
    await flushed(store)  # the thread ends
    stats = store.statistics()
    assert stats.settled + stats.settles_failed + stats.settles_dropped == 10
    assert stats.settles_dropped >= 8
    assert "still queued after 0 s are dropped" in caplog.text


@pytest.mark.anyio
async def test_after_an_acquire_settles_go_out_on_the_loop_and_a_stuck_close_gives_up(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    # The first acquire binds the lean client (asyncio's, or trio's): settles then go
    # out on the event loop, no thread; the same bound, the same accounting at a stuck
    # close.
    store = RedisStore(server.url(), timeout=5.0, retry_interval=1.0, max_queue=2, close_timeout=0)
    assert admitted(await store.acquire(acquire_cmd(1, T0, [("{l}:rpm", RPM, 1)])))
    server.pause()
    try:
        for _ in range(10):
            store.settle(settle_cmd(T0, [], [("{l}:day", 1.0, None)]))
        assert store.statistics().settles_dropped == 8
        await anyio.sleep(0)  # the loop's next iteration sends them
        assert not await anyio.to_thread.run_sync(store.flush, 0.0)
        await store.aclose()  # gives up at once: what is still under way is dropped
    finally:
        server.resume()
    await flushed(store)
    stats = store.statistics()
    assert stats.settled + stats.settles_failed + stats.settles_dropped == 10
    assert stats.settles_dropped >= 8
    assert store._thread is None, "settles go out on the event loop, no thread"
    assert "still under way after 0 s" in caplog.text


@pytest.fixture(scope="module")
def tls_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redis-server that speaks TLS (a certificate for 127.0.0.1 from a CA of the
    test's): a ``rediss://`` URL that trusts that CA, as a managed Redis is reached."""
    require_redis()
    directory = tmp_path_factory.mktemp("redis-tls")
    ca, cert, key = self_signed(directory)
    port = Server(directory).port  # a free port, for TLS
    tls = ["--tls-port", str(port), "--tls-cert-file", str(cert), "--tls-key-file", str(key)]
    tls += ["--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no"]
    server = Server(directory, *tls)
    server.start()
    try:
        yield f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={ca}"
    finally:
        server.stop()


@pytest.mark.anyio
async def test_over_tls_limits_are_checked_and_spends_settled(
    tls_url: str, anyio_backend: str
) -> None:
    # TLS (redis-py's client in a worker thread, on either event loop): the same books.
    store = RedisStore(tls_url, timeout=5.0, retry_interval=1.0)
    rpm, day = f"{{tls-{anyio_backend}}}:rpm", f"{{tls-{anyio_backend}}}:day"
    try:
        two = Limit(limit=2)
        for n in range(3):
            answer = await store.acquire(acquire_cmd(n + 1, T0, [(rpm, two, 1)]))
            assert admitted(answer) == (n < 2)
        store.settle(settle_cmd(T0, [], [(day, 1.5, None)]))
        await flushed(store)
        answer = await store.acquire(acquire_cmd(4, T0, [], [(day, 1.0)]))
        assert isinstance(answer, QuotaAnswered)
        assert (answer.admitted, answer.spent) == (False, (1.5,))
    finally:
        await store.aclose()
    stats = store.statistics()
    assert (stats.answered, stats.failed, stats.settled) == (4, 0, 1)


@pytest.mark.anyio
async def test_redis_paused_or_stopped_fails_in_time_and_recovers(
    server: Server, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    timeout = 0.2
    store = RedisStore(server.url(), timeout=timeout, retry_interval=1.0, clock=clock)
    big = Limit(limit=1000)

    async def ask(i: int) -> QuotaAnswered | QuotaFailed:
        with anyio.fail_after(timeout + 5):  # generous: this only catches a hang
            return await store.acquire(acquire_cmd(i, T0, [("{out}:rpm", big, 1)]))

    assert admitted(await ask(1))

    # Paused: connected, but no reply. The call fails after the timeout.
    server.pause()
    try:
        first = await ask(2)
        assert isinstance(first, QuotaFailed)
        assert first.query_id == 2
        assert f"redis unavailable (127.0.0.1:{server.port})" in first.message
        assert "no reply within" in first.message or "Timeout" in first.message
        # The breaker is open: calls fail at once, without trying Redis.
        for i in range(3):
            fast = await ask(3 + i)
            assert isinstance(fast, QuotaFailed)
            assert fast.message == first.message
        clock.now += 1.0  # the retry interval is over: the next call tries again
        assert isinstance(await ask(6), QuotaFailed)
    finally:
        server.resume()
    assert isinstance(await ask(7), QuotaFailed)  # still within the new interval
    clock.now += 1.0
    assert admitted(await ask(8))  # back by itself

    # Stopped: refused at once; started again on the same port: back by itself.
    server.stop()
    failed = await ask(9)
    assert isinstance(failed, QuotaFailed)
    assert "ConnectionError" in failed.message
    store.settle(settle_cmd(T0, [], [("{out}:day", 1.0, None)]))  # lost, and counted
    store.settle(settle_cmd(T0, [], [("{out}:day", 1.0, None)]))  # lost at once
    await flushed(store)
    clock.now += 10.0  # past the retry interval, and past the log's quiet time
    assert isinstance(await ask(10), QuotaFailed)  # the probe finds it still down
    # The same failure again within 10 s was counted, and said once they were over.
    assert "after each failure (repeated 1 times in 10 s)" in caplog.text
    server.start()
    assert isinstance(await ask(11), QuotaFailed)  # the breaker has not let a call through
    clock.now += 1.0
    answer = await ask(12)
    assert isinstance(answer, QuotaAnswered)
    assert answer.decisions[0].remaining == big.limit - 1  # a new, empty Redis
    store.settle(settle_cmd(T0, [], [("{out}:day", 1.0, None)]))
    await flushed(store)
    await store.aclose()
    stats = store.statistics()
    assert (stats.answered, stats.failed) == (3, 9)
    assert (stats.settled, stats.settles_failed) == (1, 2)
    assert "answers again" in caplog.text


@pytest.mark.anyio
async def test_malformed_data_in_redis_fails_the_call_only(
    fresh: Server, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = fresh.client()
    client.set("{bad}:rpm", "not a state")
    client.rpush("{bad}:list", "x")
    store = RedisStore(fresh.url(), timeout=5.0, retry_interval=1.0, clock=clock)
    for i, key in enumerate(["{bad}:rpm", "{bad}:list"]):
        answer = await store.acquire(acquire_cmd(i + 1, T0, [(key, RPM, 1)]))
        assert isinstance(answer, QuotaFailed)
        assert "ResponseError" in answer.message
    # Redis answered: the breaker stays closed.
    assert admitted(await store.acquire(acquire_cmd(3, T0, [("{bad}:ok", RPM, 1)])))
    store.settle(settle_cmd(T0, [("{bad}:rpm", RPM, 1, T0)], []))
    await flushed(store)
    assert store.statistics().settles_failed == 1
    await store.aclose()

    # A reply the parser does not recognise is a failure too.
    monkeypatch.setattr("adapters._store_redis.REDIS_QUOTA_SCRIPT", "return {1, 'x'}")
    odd = RedisStore(fresh.url(), timeout=5.0, retry_interval=1.0, clock=clock)
    answer = await odd.acquire(acquire_cmd(4, T0, [("{bad}:ok", RPM, 1)]))
    assert isinstance(answer, QuotaFailed)
    assert "not a quota reply" in answer.message
    await odd.aclose()
    assert odd.statistics().failed == 1
    client.close()


@pytest.mark.anyio
async def test_the_password_never_reaches_a_log(
    tmp_path: Path, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    require_redis()
    caplog.set_level(logging.DEBUG)
    server = Server(tmp_path, "--requirepass", PASSWORD)
    server.start()
    good = RedisStore(server.url(PASSWORD), timeout=0.5, retry_interval=1.0, clock=clock)
    wrong = RedisStore(server.url(PASSWORD[::-1]), timeout=0.5, retry_interval=1.0, clock=clock)
    try:
        messages = []
        assert admitted(await good.acquire(acquire_cmd(1, T0, [("{pw}:rpm", RPM, 1)])))
        answer = await wrong.acquire(acquire_cmd(2, T0, [("{pw}:rpm", RPM, 1)]))
        assert isinstance(answer, QuotaFailed)
        messages.append(answer.message)
        wrong.settle(settle_cmd(T0, [], [("{pw}:day", 1.0, None)]))
        await flushed(wrong)
        server.stop()
        answer = await good.acquire(acquire_cmd(3, T0, [("{pw}:rpm", RPM, 1)]))
        assert isinstance(answer, QuotaFailed)
        messages.append(answer.message)
        good.settle(settle_cmd(T0, [], [("{pw}:day", 1.0, None)]))
        await flushed(good)
    finally:
        server.stop()
        await good.aclose()
        await wrong.aclose()
    text = caplog.text + "\n".join(messages)
    assert f"127.0.0.1:{server.port}" in text
    assert "quota settle" in text
    assert "unavailable" in text
    for secret in (PASSWORD, PASSWORD[::-1]):
        assert secret not in text
    assert good.statistics().settles_failed == wrong.statistics().settles_failed == 1


def commandstats(client: redis.Redis) -> dict[str, int]:
    """Redis's own count of the calls clients made, by command, since CONFIG RESETSTAT
    (less INFO itself and what the scripts call: GET, SET, DEL)."""
    stats = cast(dict[str, dict[str, int]], client.info("commandstats"))
    skip = {"info", "config|resetstat", "get", "set", "del"}
    return {
        name.removeprefix("cmdstat_"): calls["calls"]
        for name, calls in stats.items()
        if name.removeprefix("cmdstat_") not in skip
    }


@pytest.mark.anyio
@pytest.mark.parametrize(
    "anyio_backend",
    ["asyncio", pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"), "trio"],
)
async def test_an_admitted_request_costs_one_round_trip(fresh: Server) -> None:
    store = RedisStore(fresh.url(), timeout=5.0, retry_interval=1.0)
    assert store.acquire_nowait(acquire_cmd(1, T0, [("{rt}:rpm", RPM, 1)])) is None
    client = fresh.client()
    limit = Limit(limit=100)
    charges = [("{rt}:rpm", limit, 1), ("{rt}:tpm", limit, 2)]
    assert admitted(await store.acquire(acquire_cmd(1, T0, charges, [("{rt}:day", 1.0)])))
    client.config_resetstat()
    for i in range(20):
        answer = await store.acquire(acquire_cmd(i + 2, T0, charges, [("{rt}:day", 1.0)]))
        assert admitted(answer)
    assert commandstats(client) == {"evalsha": 20}  # the script: it checks and charges
    # Scripts flushed (Redis restarted, say): the script is sent again, and answers.
    client.script_flush()
    answer = await store.acquire(acquire_cmd(30, T0, charges, [("{rt}:day", 1.0)]))
    assert isinstance(answer, QuotaAnswered)
    assert answer.decisions[1].remaining == 100 - 2 * 22
    await store.aclose()
    assert store.statistics().answered == 22
    client.close()


class Answers:
    """What a store calls back with (``acquire_soon``): the answers, in order, and a wait
    for the ``n``-th."""

    def __init__(self) -> None:
        self.got: list[QuotaAnswered | QuotaFailed] = []
        self._arrived = anyio.Event()

    def __call__(self, answer: QuotaAnswered | QuotaFailed) -> None:
        self.got.append(answer)
        self._arrived.set()

    async def wait(self, n: int) -> list[QuotaAnswered | QuotaFailed]:
        with anyio.fail_after(10):  # generous: this only catches a hang
            while len(self.got) < n:
                await self._arrived.wait()
                self._arrived = anyio.Event()
        return self.got


@pytest.mark.anyio
@pytest.mark.parametrize(
    "anyio_backend",
    ["asyncio", pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"), "trio"],
)
async def test_a_connected_store_calls_back_in_order_with_no_task(
    fresh: Server, anyio_backend: object
) -> None:
    store = RedisStore(fresh.url(), timeout=5.0, retry_interval=1.0)
    answers = Answers()
    limit = Limit(limit=100)
    charges = [("{cb}:rpm", limit, 1), ("{cb}:tpm", limit, 2)]
    # Not connected yet: the driver awaits acquire (which connects).
    assert not store.acquire_soon(acquire_cmd(1, T0, charges), answers)
    assert admitted(await store.acquire(acquire_cmd(1, T0, charges)))
    if anyio_backend == "trio":  # trio's client has no callbacks: acquire, always
        assert not store.acquire_soon(acquire_cmd(2, T0, charges), answers)
        await store.aclose()
        return
    client = fresh.client()
    client.config_resetstat()
    tasks = len(asyncio.all_tasks())
    for i in range(2, 22):
        assert store.acquire_soon(acquire_cmd(i, T0, charges), answers)
    assert answers.got == []  # never before acquire_soon returns
    assert len(asyncio.all_tasks()) == tasks  # and no task for it
    got = await answers.wait(20)
    assert [answer.query_id for answer in got] == list(range(2, 22))
    assert [cast(QuotaAnswered, a).decisions[1].remaining for a in got] == [
        100 - 2 * (i + 1) for i in range(1, 21)
    ]
    assert commandstats(client) == {"evalsha": 20}  # one round trip each
    # Scripts flushed (Redis restarted, say): the script is sent again, and answers.
    client.script_flush()
    assert store.acquire_soon(acquire_cmd(30, T0, charges), answers)
    answer = (await answers.wait(21))[-1]
    assert admitted(answer)
    assert cast(QuotaAnswered, answer).decisions[1].remaining == 100 - 2 * 22
    # An error reply (data the script cannot read) fails that call only.
    client.set("{cb}:bad", "not a state")
    assert store.acquire_soon(acquire_cmd(31, T0, [("{cb}:bad", limit, 1)]), answers)
    failed = (await answers.wait(22))[-1]
    assert isinstance(failed, QuotaFailed)
    assert failed.query_id == 31
    assert "ResponseError" in failed.message
    assert store.acquire_soon(acquire_cmd(32, T0, charges), answers)  # the breaker is closed
    assert admitted((await answers.wait(23))[-1])
    await store.aclose()
    assert (store.statistics().answered, store.statistics().failed) == (23, 1)
    client.close()


@pytest.mark.anyio
@pytest.mark.parametrize(
    "anyio_backend",
    ["asyncio", pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop")],
)
async def test_callbacks_fail_in_time_when_redis_stalls_or_goes(
    server: Server, clock: Clock
) -> None:
    timeout = 0.2
    store = RedisStore(server.url(), timeout=timeout, retry_interval=1.0, clock=clock)
    answers = Answers()
    big = Limit(limit=1000)

    def cmd(i: int) -> AcquireQuota:
        return acquire_cmd(i, T0, [("{stall}:rpm", big, 1)])

    assert admitted(await store.acquire(cmd(1)))
    # Paused: connected, but no reply. Every call waiting fails once the oldest's
    # time is up, and the breaker opens.
    server.pause()
    try:
        assert store.acquire_soon(cmd(2), answers)
        assert store.acquire_soon(cmd(3), answers)
        got = await answers.wait(2)
        assert [answer.query_id for answer in got] == [2, 3]
        for answer in got:
            assert isinstance(answer, QuotaFailed)
            assert f"no reply within {timeout:g} s" in answer.message
        assert not store.acquire_soon(cmd(4), answers)  # open: acquire fails at once
        assert isinstance(await store.acquire(cmd(4)), QuotaFailed)
    finally:
        server.resume()
    clock.now += 1.0
    assert admitted(await store.acquire(cmd(5)))  # the probe: back, on a new connection
    # Gone while calls wait: they fail at once, with the connection's error.
    assert store.acquire_soon(cmd(6), answers)
    server.stop()
    lost = (await answers.wait(3))[-1]
    assert isinstance(lost, QuotaFailed)
    assert "ConnectionError" in lost.message
    await store.aclose()
    assert (store.statistics().answered, store.statistics().failed) == (2, 4)


@pytest.mark.anyio
async def test_a_client_gone_mid_acquire_leaves_the_others_alone(
    server: Server, clock: Clock
) -> None:
    # Its call cancelled, the store carries on: no failure, no open breaker.
    store = RedisStore(server.url(), timeout=5.0, retry_interval=1.0, clock=clock)
    limit = Limit(limit=10)
    assert admitted(await store.acquire(acquire_cmd(1, T0, [("{gone}:rpm", limit, 1)])))
    answers: list[QuotaAnswered | QuotaFailed] = []
    scopes: dict[int, anyio.CancelScope] = {}

    async def ask(i: int) -> None:
        with anyio.CancelScope() as scopes[i]:
            answers.append(await store.acquire(acquire_cmd(i, T0, [("{gone}:rpm", limit, 1)])))

    server.pause()  # both calls wait for their replies
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(ask, 2)
            tg.start_soon(ask, 3)
            await anyio.wait_all_tasks_blocked()
            scopes[2].cancel()  # its client went away
            server.resume()
    finally:
        server.resume()
    assert len(answers) == 1
    assert admitted(answers[0])
    answer = await store.acquire(acquire_cmd(4, T0, [("{gone}:rpm", limit, 1)]))
    assert isinstance(answer, QuotaAnswered)
    # One connection, replies in order (asyncio's lean client and trio's): it was charged.
    assert answer.decisions[0].remaining == 10 - 4
    await store.aclose()
    assert (store.statistics().answered, store.statistics().failed) == (3, 0)


@pytest.mark.anyio
async def test_a_burst_of_settles_is_batched_and_exact(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    n = 300
    client = server.client()
    client.set("{b}:broken", "not a state")
    client.rpush("{b}:list", "x")
    store = RedisStore(server.url(), timeout=5.0, retry_interval=1.0)
    tpm = Limit(limit=10**6)
    assert admitted(await store.acquire(acquire_cmd(1, T0, [("{b}:tpm", tpm, 10 * n)])))
    client.config_resetstat()
    expected = 0.0
    server.pause()  # the settle thread blocks on its first call; the rest queue up
    try:
        for i in range(n):
            if i == 100:
                store.settle(settle_cmd(T0, [("{b}:broken", tpm, -1, T0)], []))
            if i == 200:
                store.settle(settle_cmd(T0, [], [("{b}:list", 1.0, None)]))
            store.settle(settle_cmd(T0 + 1, [("{b}:tpm", tpm, -3, T0)], [("{b}:day", 0.01, None)]))
            expected += 0.01
    finally:
        server.resume()
    await flushed(store)
    stats = store.statistics()
    assert (stats.settled, stats.settles_failed, stats.settles_dropped) == (n, 2, 0)
    calls = commandstats(client)
    assert calls.get("evalsha", 0) + calls.get("eval", 0) < n / 10  # round trips: a few
    assert float(client.get("{b}:day") or b"") == expected  # each settle, once, in order
    state = LimiterState.decode(client.get("{b}:tpm") or b"")
    assert sum(state.amounts) == 10 * n - 3 * n
    assert "WRONGTYPE" in caplog.text
    assert "not a limiter state" in caplog.text
    await store.aclose()
    client.close()


@pytest.mark.anyio
async def test_a_unix_socket_and_a_database_number(tmp_path: Path) -> None:
    require_redis()
    path = tmp_path / "redis.sock"
    with Server(tmp_path, "--unixsocket", str(path)) as server:
        store = RedisStore(f"unix://{path}?db=3", timeout=5.0, retry_interval=1.0)
        assert admitted(await store.acquire(acquire_cmd(1, T0, [("{u}:rpm", RPM, 1)])))
        store.settle(settle_cmd(T0, [], [("{u}:day", 1.5, None)]))
        await flushed(store)
        await store.aclose()
        client = redis.Redis(unix_socket_path=str(path), db=3)
        assert (client.exists("{u}:rpm"), client.get("{u}:day")) == (1, b"1.5")
        client.close()
        assert server.client().dbsize() == 0  # database 0 untouched


@pytest.mark.anyio
async def test_a_server_that_does_not_speak_redis_fails_the_call(clock: Clock) -> None:
    async def nonsense(stream: anyio.abc.ByteStream) -> None:
        async with stream:
            await stream.receive()
            await stream.send(b"?what\r\n")

    async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listener:
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        async with anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, nonsense)
            store = RedisStore(
                f"redis://127.0.0.1:{port}", timeout=5.0, retry_interval=1.0, clock=clock
            )
            answer = await store.acquire(acquire_cmd(1, T0, [("{n}:rpm", RPM, 1)]))
            assert isinstance(answer, QuotaFailed)
            assert f"redis unavailable (127.0.0.1:{port})" in answer.message
            await store.aclose()
            tg.cancel_scope.cancel()


# --- the driver -----------------------------------------------------------------------


class Recorder:
    """A store that writes down what happens to it, in a log it shares with a client."""

    def __init__(self, log: list[str], *, hang: bool = False, ready: bool = False) -> None:
        self.log = log
        self.hang = hang
        self.ready = ready

    def acquire_nowait(self, cmd: AcquireQuota) -> QuotaAnswered | None:
        if not self.ready:
            return None  # as Redis: the driver awaits acquire
        self.log.append("acquire_nowait")
        return QuotaAnswered(query_id=cmd.query_id, admitted=True, decisions=())

    def acquire_soon(
        self, cmd: AcquireQuota, answered: Callable[[QuotaAnswered | QuotaFailed], object]
    ) -> bool:
        return False  # as Redis before it is connected: the driver awaits acquire

    async def acquire(self, cmd: AcquireQuota) -> QuotaAnswered | QuotaFailed:
        self.log.append("acquire")
        if self.hang:
            await anyio.sleep_forever()
        return QuotaAnswered(query_id=cmd.query_id, admitted=True, decisions=())

    def settle(self, cmd: SettleQuota) -> None:
        self.log.append(f"settle {cmd.at:g}")

    def flush(self, timeout: float = 10.0) -> bool:
        return True

    async def aclose(self) -> None:
        self.log.append("store closed")

    def statistics(self) -> StoreStatistics:
        return MemoryStore().statistics()


class Client:
    """A ``ClientSink`` that writes down its flushes; it may be gone at the first."""

    def __init__(self, log: list[str], *, gone: bool = False) -> None:
        self.log = log
        self.gone = gone

    def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.log.append(f"start {status}")

    def send(self, data: bytes) -> None:
        pass

    def end(self, complete: bool) -> None:
        pass

    async def flush(self) -> None:
        self.log.append("flush")
        if self.gone:
            raise ClientDisconnected


class ScriptedExchange:
    """Just what the driver uses of an exchange: it asks for a quota, answers (and
    is over, unless ``lingers``), and settles; the client gone, it settles again."""

    def __init__(self, *, timer: float | None = None, lingers: bool = False) -> None:
        self.commands: deque[Command] = deque([acquire_cmd(1, T0, [("k", RPM, 1)])])
        self.events: list[Event] = []
        self.finished = False
        self.timer = timer
        self.lingers = lingers

    def next_command(self) -> Command | None:
        return self.commands.popleft() if self.commands else None

    def get_timer(self) -> float | None:
        return self.timer

    def _respond(self, status: int) -> None:
        self.timer = None
        self.commands += [StartResponse(status=status, headers=()), SendBody(data=b"x")]
        self.commands += [EndResponse(), settle_cmd(1.0, [], [("d", 1.0, None)])]
        self.finished = not self.lingers

    def handle(self, event: Event, *, now: float) -> None:
        self.events.append(event)
        if isinstance(event, QuotaAnswered):
            self._respond(200)
        elif isinstance(event, ClientGone):
            self.commands.append(settle_cmd(2.0, [], [("d", 1.0, None)]))
            self.finished = True

    def handle_timer(self, *, now: float) -> None:
        self._respond(503)


async def drive(
    ex: ScriptedExchange, *, gone: bool = False, hang: bool = False, ready: bool = False
) -> list[str]:
    log: list[str] = []
    driver = Driver(Proxy(ProxyConfig()), store=Recorder(log, hang=hang, ready=ready))
    await driver.run(cast(Exchange, ex), Client(log, gone=gone))
    await driver.aclose()
    return log


@pytest.mark.anyio
async def test_the_driver_settles_after_the_client_flush() -> None:
    ex = ScriptedExchange()
    assert await drive(ex) == ["acquire", "start 200", "flush", "settle 1", "store closed"]
    assert [type(e) for e in ex.events] == [QuotaAnswered]


@pytest.mark.anyio
async def test_the_driver_takes_an_answer_given_at_once() -> None:
    ex = ScriptedExchange(timer=0.0)  # a timer already due: nothing waits, nothing times out
    log = await drive(ex, ready=True)
    assert log == ["acquire_nowait", "start 200", "flush", "settle 1", "store closed"]
    assert [type(e) for e in ex.events] == [QuotaAnswered]


@pytest.mark.anyio
async def test_the_driver_settles_when_the_client_is_gone() -> None:
    log = await drive(ScriptedExchange(), gone=True)
    assert log == ["acquire", "start 200", "flush", "settle 1", "store closed"]
    ex = ScriptedExchange(lingers=True)
    log = await drive(ex, gone=True)
    assert log == ["acquire", "start 200", "flush", "settle 1", "settle 2", "store closed"]
    assert [type(e) for e in ex.events] == [QuotaAnswered, ClientGone]


@pytest.mark.anyio
async def test_the_exchange_timer_bounds_the_quota_query() -> None:
    ex = ScriptedExchange(timer=0.0)  # already past: the query is cut off at once
    log = await drive(ex, hang=True)
    assert log == ["acquire", "start 503", "flush", "settle 1", "store closed"]
    assert ex.events == []


def test_the_memory_store_is_the_default() -> None:
    driver = Driver(Proxy(ProxyConfig()))
    assert isinstance(driver.store, MemoryStore)


def test_limiter_states_stay_readable(fresh: Server) -> None:
    # What the store writes is what core.LimiterState reads (admin views, tools).
    client = fresh.client()
    m = MemoryLimiter()
    m.acquire("x", RPM, now=T0)
    keys, args = redis_quota_args([("{r}:x", RPM, 1)], [], now=T0)
    client.register_script(REDIS_QUOTA_SCRIPT)(keys=keys, args=args)
    assert LimiterState.decode(client.get("{r}:x") or b"") == m.get("x")
    client.close()
