"""Quota stores: where rate limits and budgets live, this process or a shared Redis.

The Redis store is :mod:`adapters._store_redis`, imported only when a
configuration names it (redis-py and trio cost ~0.3 s of start-up and
megabytes of memory a memory-backed proxy never needs).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from core import AcquireQuota, Proxy, ProxyConfig, QuotaAnswered, QuotaFailed, SettleQuota
from core._config import LimitsConfig
from core.policies import (
    Limit,
    MemoryLimiter,
)

__all__ = [
    "MemoryStore",
    "QuotaStore",
    "StoreStatistics",
    "make_store",
    "proxy_for",
]

logger = logging.getLogger("sansproxy.store")


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreStatistics:
    """A snapshot of a store's counters.

    ``answered``/``failed``: acquires answered and failed (failing fast while
    Redis is down included). ``settled``/``settles_failed``: settles recorded
    and lost to an error; ``settles_dropped``: lost to a full queue or a closed
    store. ``queued``: settles waiting.
    """

    answered: int
    failed: int
    settled: int
    settles_failed: int
    settles_dropped: int
    queued: int


class QuotaStore(Protocol):
    """What the driver needs from a store of rate limits and budgets."""

    def acquire_nowait(self, cmd: AcquireQuota) -> QuotaAnswered | QuotaFailed | None:
        """:meth:`acquire`'s answer at once, without waiting for anything; None when
        the store cannot answer without waiting (then await :meth:`acquire`)."""

    def acquire_soon(
        self, cmd: AcquireQuota, answered: Callable[[QuotaAnswered | QuotaFailed], object]
    ) -> bool:
        """:meth:`acquire` without a task (asyncio): True if the query is under way and
        ``answered`` will get its answer from the event loop, once (never before this
        returns); False when the store cannot (then await :meth:`acquire`)."""

    async def acquire(self, cmd: AcquireQuota) -> QuotaAnswered | QuotaFailed:
        """Decide and charge; ``QuotaFailed`` when the backend cannot answer."""

    def settle(self, cmd: SettleQuota) -> None:
        """Record what an exchange used; never blocks, never raises."""

    def flush(self, timeout: float = 10.0) -> bool:
        """Block until every settle submitted so far is done; False after ``timeout``."""

    async def aclose(self) -> None:
        """Finish the queued settles (bounded) and close connections."""

    def statistics(self) -> StoreStatistics:
        """The store's counters."""


def _charges(cmd: AcquireQuota) -> list[tuple[str, Limit, int]]:
    return [(c.key, c.limit, c.amount) for c in cmd.charges]


def _budgets(cmd: AcquireQuota) -> list[tuple[str, float]]:
    return [(b.key, b.usd) for b in cmd.budgets]


def _adjustments(cmd: SettleQuota) -> list[tuple[str, Limit, int, float]]:
    return [(a.key, a.limit, a.delta, a.charged_at) for a in cmd.adjustments]


def _spends(cmd: SettleQuota) -> list[tuple[str, float, float | None]]:
    return [(s.key, s.usd, s.ttl) for s in cmd.spends]


def _answer(cmd: AcquireQuota, answer: tuple[bool, list[Any], list[float]]) -> QuotaAnswered:
    admitted, decisions, spent = answer
    return QuotaAnswered(
        query_id=cmd.query_id, admitted=admitted, decisions=tuple(decisions), spent=tuple(spent)
    )


class MemoryStore:
    """Limits and budgets in this process (``limits.backend: memory``), in ``limiter``
    (a new one if not given). When the proxy checks them itself (``Proxy(limiter=)``,
    :func:`proxy_for`), it is the proxy's limiter and no command reaches the store."""

    def __init__(self, limiter: MemoryLimiter | None = None) -> None:
        self.limiter = limiter if limiter is not None else MemoryLimiter()
        self._answered = 0
        self._settled = 0
        self._settles_failed = 0

    def acquire_nowait(self, cmd: AcquireQuota) -> QuotaAnswered:
        """:meth:`core.MemoryLimiter.quota`, at once; ``ValueError`` on a malformed command."""
        now = cmd.at
        admitted, decisions, spent = self.limiter.quota(
            [(c.key, c.limit, c.amount) for c in cmd.charges],
            [(b.key, b.usd) for b in cmd.budgets] if cmd.budgets else (),
            now=now,
        )
        self._answered += 1
        self.limiter.tick(now=now)
        return QuotaAnswered(
            query_id=cmd.query_id, admitted=admitted, decisions=tuple(decisions), spent=tuple(spent)
        )

    def acquire_soon(
        self, cmd: AcquireQuota, answered: Callable[[QuotaAnswered | QuotaFailed], object]
    ) -> bool:
        """False: :meth:`acquire_nowait` always answers."""
        return False

    async def acquire(self, cmd: AcquireQuota) -> QuotaAnswered | QuotaFailed:
        """:meth:`acquire_nowait` (it never waits)."""
        return self.acquire_nowait(cmd)

    def settle(self, cmd: SettleQuota) -> None:
        """:meth:`core.MemoryLimiter.settle`, at once; a bad command is logged."""
        try:
            self.limiter.settle(_adjustments(cmd), _spends(cmd), now=cmd.at)
        except ValueError as exc:
            self._settles_failed += 1
            logger.error("quota settle failed: %s", exc)
            return
        self._settled += 1
        self.limiter.tick(now=cmd.at)

    def flush(self, timeout: float = 10.0) -> bool:
        """Nothing waits: settles are applied when submitted."""
        return True

    async def aclose(self) -> None:
        """Nothing to close."""

    def statistics(self) -> StoreStatistics:
        """The store's counters (it never fails for lack of a backend)."""
        return StoreStatistics(
            answered=self._answered,
            failed=0,
            settled=self._settled,
            settles_failed=self._settles_failed,
            settles_dropped=0,
            queued=0,
        )


def proxy_for(config: ProxyConfig) -> Proxy:
    """The proxy of ``config``; with ``limits.backend: memory``, one that checks the
    limits itself, in its own ``MemoryLimiter`` (no command round trip a request)."""
    memory = config.limits.backend == "memory"
    return Proxy(config, limiter=MemoryLimiter() if memory else None)


def make_store(limits: LimitsConfig, limiter: MemoryLimiter | None = None) -> QuotaStore:
    """The store ``limits.backend`` names (memory: around ``limiter``, if given)."""
    if limits.backend == "redis":
        if limits.redis_url is None:
            raise ValueError("backend 'redis' needs redis_url")
        from ._store_redis import RedisStore  # noqa: PLC0415 -- only when configured

        return RedisStore(
            limits.redis_url.get_secret_value(),
            timeout=limits.redis_timeout,
            retry_interval=limits.redis_retry_interval,
        )
    return MemoryStore(limiter)
