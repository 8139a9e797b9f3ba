"""The limiter's Redis scripts against a real redis-server: the same decisions as Python.

A fixture starts ``redis-server`` (Debian's package, on PATH) on a free port.
Without one these tests skip with the reason; under CI (``CI`` set) a missing
server is a failure.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.policies._limiter import Limit, LimiterState, MemoryLimiter
from tests.core.test_limiter import (
    AMOUNTS,
    DELTAS,
    FRACTIONS,
    LIMITS,
    PICKS,
    STARTS,
    WINDOWS,
    amount,
    delta,
)
from tests.support.limiter_reference import (
    REDIS_ACQUIRE_SCRIPT,
    REDIS_ADJUST_SCRIPT,
    redis_acquire_args,
    redis_adjust_args,
    redis_decisions,
)
from tests.support.redis_server import RedisServer, require_redis

RPM = Limit(limit=60)
INF = math.inf


# --- the Redis scripts against a real redis-server ----------------------------------


@pytest.fixture(scope="module")
def redis_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A redis-server of our own on a free port, and a client of it."""
    require_redis()
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        client = server.client()
        try:
            yield client
        finally:
            client.close()


REDIS_STEPS = st.lists(
    st.tuples(
        st.one_of(FRACTIONS, st.floats(-0.1, 0.0)),  # clocks of several processes: skew
        st.booleans(),  # correct a pending charge, or acquire
        AMOUNTS,
        PICKS,
        DELTAS,
        st.integers(0, 2),  # which limits the request takes: both, tpm, rpm alone
        st.integers(0, 6),  # the amount when rpm is alone
    ),
    min_size=1,
    max_size=30,
)


@settings(max_examples=60, deadline=None)
@given(
    rpm=st.builds(Limit, limit=st.integers(1, 5), window=st.sampled_from(WINDOWS)),
    tpm=LIMITS,
    now=STARTS,
    steps=REDIS_STEPS,
)
def test_redis_scripts_decide_exactly_as_the_python(
    redis_client: Any,
    rpm: Limit,
    tpm: Limit,
    now: float,
    steps: list[tuple[float, bool, int, int, int, int, int]],
) -> None:
    redis_client.flushdb()
    acquire_script = redis_client.register_script(REDIS_ACQUIRE_SCRIPT)
    adjust_script = redis_client.register_script(REDIS_ADJUST_SCRIPT)
    limits = {"{k}:rpm": rpm, "{k}:tpm": tpm}
    m = MemoryLimiter()
    charges: list[tuple[float, int]] = []
    for fraction, correcting, raw, pick, delta_raw, shape, alone in steps:
        now += fraction * tpm.window
        if correcting and charges:
            at, charged = charges.pop(pick % len(charges))
            d = delta(tpm, charged, delta_raw)
            args = redis_adjust_args(tpm, now=now, delta=d, charged_at=at)
            used = adjust_script(keys=["{k}:tpm"], args=args)
            m.adjust("{k}:tpm", tpm, now=now, delta=d, charged_at=at)
            assert used == sum((m.get("{k}:tpm") or LimiterState()).amounts)
        else:
            tokens = amount(tpm, raw)
            requests = [
                [("{k}:rpm", rpm, 1), ("{k}:tpm", tpm, tokens)],
                [("{k}:tpm", tpm, tokens)],
                [("{k}:rpm", rpm, alone)],
            ][shape]
            pairs = [(limit, n) for _, limit, n in requests]
            keys = [key for key, _, _ in requests]
            reply = acquire_script(keys=keys, args=redis_acquire_args(pairs, now=now))
            decisions = m.acquire_all(requests, now=now)
            assert redis_decisions(reply, pairs, now=now) == decisions
            if decisions[0].allowed and shape < 2:
                charges.append((now, tokens))
        for key, limit in limits.items():
            stored, state = redis_client.get(key), m.get(key)
            if state is None:
                assert stored is None
                continue
            assert stored == state.encode().encode()
            assert LimiterState.decode(stored) == state
            assert limit.window * 1000 < redis_client.pttl(key) <= (limit.window + 1) * 1000
