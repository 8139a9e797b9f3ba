"""The rate limiter (core.policies._limiter): examples with exact numbers, then hypothesis.

The properties: never more than the limit in any window [t, t + window), for
random arrival times (bursts at one instant included) and amounts; never
stricter than an exact sliding log whose entries are held one slot longer;
the full limit back after ``window`` seconds of idleness; corrections applied
exactly once and never below zero; Decision numbers that mean what they say.
Budgets and spend: a refusal (by a budget or a limit) charges nothing; spend is
a float sum that expires with its ttl; a settle applies each correction and each
spend exactly once; ``MemoryLimiter`` keeps what the pure functions compute.
The Redis scripts are checked against a real server in tests/adapters.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.policies._limiter import SLOTS, Decision, Limit, LimiterState, MemoryLimiter, _decision
from core.policies._limiter_redis import (
    redis_quota_answer,
    redis_quota_args,
    redis_settle_args,
    redis_settle_many_answer,
)
from tests.support.limiter_reference import (
    acquire,
    adjust,
    redis_acquire_args,
    redis_adjust_args,
    redis_decisions,
)

RPM = Limit(limit=60)
INF = math.inf


def allowed(limit: int, remaining: int, reset_after: float) -> Decision:
    return Decision(
        allowed=True, limit=limit, remaining=remaining, reset_after=reset_after, retry_after=0.0
    )


def denied(limit: int, remaining: int, reset_after: float, retry_after: float) -> Decision:
    return Decision(
        allowed=False,
        limit=limit,
        remaining=remaining,
        reset_after=reset_after,
        retry_after=retry_after,
    )


# --- playbook: exact numbers ------------------------------------------------------


def test_a_burst_takes_the_whole_limit_then_waits_a_full_window() -> None:
    m = MemoryLimiter()
    burst = [m.acquire("team-a", RPM, now=0.0) for _ in range(61)]
    assert burst[0] == allowed(60, 59, 60.0)
    assert burst[59] == allowed(60, 0, 60.0)
    assert burst[60] == denied(60, 0, 60.0, 60.0)
    assert m.acquire("team-a", RPM, now=59.5) == denied(60, 0, 0.5, 0.5)
    assert m.acquire("team-a", RPM, now=60.0) == allowed(60, 59, 60.0)  # all 60 left at once
    assert m.get("team-a") == LimiterState(times=(60.0,), amounts=(1,))


def test_one_request_a_second_at_60_rpm_is_never_refused() -> None:
    m = MemoryLimiter()
    decisions = [m.acquire("k", RPM, now=float(t)) for t in range(600)]
    assert all(d.allowed for d in decisions)
    assert decisions[0] == allowed(60, 59, 60.0)
    assert decisions[59] == decisions[599] == allowed(60, 0, 60.0)
    # ... and no room in between: the request of t=540 leaves at t=600.
    assert m.acquire("k", RPM, now=599.5) == denied(60, 0, 59.5, 0.5)


def test_requests_within_one_slot_share_an_entry_and_its_later_time() -> None:
    two = Limit(limit=2)  # slot: 60 / SLOTS = 1 s
    state, _ = acquire(None, two, now=0.0)
    state, _ = acquire(state, two, now=0.5)
    assert state == LimiterState(times=(0.5,), amounts=(2,))
    # An exact log would admit at 60.0 (the first request has left); we hold it 0.5 s more.
    assert acquire(state, two, now=60.0)[1] == denied(2, 0, 0.5, 0.5)
    assert acquire(state, two, now=60.5)[1] == allowed(2, 1, 60.0)
    state, _ = acquire(state, Limit(limit=5), now=1.0)  # the next slot: a new entry
    assert state == LimiterState(times=(0.5, 1.0), amounts=(2, 1))


def test_tokens_charged_up_front_and_refunded_at_completion() -> None:
    tpm = Limit(limit=100_000)
    m = MemoryLimiter()
    assert m.acquire("tpm", tpm, now=0.0, amount=4_000) == allowed(100_000, 96_000, 60.0)
    assert m.acquire("tpm", tpm, now=1.0, amount=90_000) == allowed(100_000, 6_000, 60.0)
    assert m.acquire("tpm", tpm, now=2.0, amount=9_000) == denied(100_000, 6_000, 59.0, 58.0)
    m.adjust("tpm", tpm, now=3.0, delta=-3_000, charged_at=0.0)  # used 1_000, not 4_000
    assert m.get("tpm") == LimiterState(times=(0.0, 1.0), amounts=(1_000, 90_000))
    assert m.snapshot("tpm", tpm, now=3.0) == allowed(100_000, 9_000, 58.0)
    assert m.acquire("tpm", tpm, now=3.0, amount=9_000) == allowed(100_000, 0, 60.0)


def test_usage_over_the_estimate_is_charged_even_past_the_limit() -> None:
    tpm = Limit(limit=1_000)
    m = MemoryLimiter()
    assert m.acquire("k", tpm, now=0.0, amount=900).allowed
    m.adjust("k", tpm, now=10.0, delta=600, charged_at=0.0)  # really 1_500
    assert m.get("k") == LimiterState(times=(0.0, 10.0), amounts=(900, 600))
    assert m.snapshot("k", tpm, now=11.0) == denied(1_000, 0, 59.0, 49.0)
    assert m.acquire("k", tpm, now=11.0, amount=1) == denied(1_000, 0, 59.0, 49.0)
    assert m.acquire("k", tpm, now=60.0, amount=400) == allowed(1_000, 0, 60.0)


def test_a_refund_comes_from_its_own_slot_or_older_and_never_goes_below_zero() -> None:
    tpm = Limit(limit=1_000)
    state = LimiterState(times=(0.0, 10.0), amounts=(500, 300))
    # The charge of t=0 may not be refunded from the entry of t=10 (a later request's).
    assert adjust(state, tpm, now=20.0, delta=-200, charged_at=0.0) == LimiterState(
        times=(0.0, 10.0), amounts=(300, 300)
    )
    assert adjust(state, tpm, now=20.0, delta=-1_000, charged_at=0.0) == LimiterState(
        times=(10.0,), amounts=(300,)
    )
    assert adjust(state, tpm, now=20.0, delta=-1_000, charged_at=10.0) == LimiterState()
    assert adjust(state, tpm, now=20.0, delta=0, charged_at=10.0) == state
    # Too late: the charge has left the window; the later request's usage is untouched.
    assert adjust(state, tpm, now=65.0, delta=-400, charged_at=0.0) == LimiterState(
        times=(10.0,), amounts=(300,)
    )
    # The charge of t=0 left at 60, but its slot's entry (0.9) holds it until 60.9: refundable.
    held = LimiterState(times=(0.9,), amounts=(800,))
    assert adjust(held, tpm, now=60.5, delta=-400, charged_at=0.0) == LimiterState(
        times=(0.9,), amounts=(400,)
    )
    assert adjust(held, tpm, now=60.9, delta=-400, charged_at=0.0) == LimiterState()
    assert adjust(None, tpm, now=0.0, delta=-5, charged_at=0.0) == LimiterState()
    m = MemoryLimiter()
    m.adjust("k", tpm, now=0.0, delta=-5, charged_at=0.0)
    assert m.get("k") is None


def test_an_amount_over_the_limit_never_fits() -> None:
    tpm = Limit(limit=1_000)
    state, d = acquire(None, tpm, now=5.0, amount=1_001)
    assert (state, d) == (LimiterState(), denied(1_000, 1_000, 0.0, INF))


def test_a_zero_amount_only_looks() -> None:
    state, d = acquire(None, RPM, now=0.0, amount=0)
    assert (state, d) == (LimiterState(), allowed(60, 60, 0.0))
    m = MemoryLimiter()
    assert m.acquire("k", RPM, now=0.0, amount=0) == allowed(60, 60, 0.0)
    assert m.get("k") is None


def test_a_key_time_never_goes_backwards() -> None:
    # Another process's clock ran 5 s ahead and recorded t=10; ours says 5.
    state = LimiterState(times=(10.0,), amounts=(1,))
    state, d = acquire(state, RPM, now=5.0)
    assert state == LimiterState(times=(10.0,), amounts=(2,))
    assert d == allowed(60, 58, 65.0)  # on our clock: it resets at 70
    full = LimiterState(times=(10.0,), amounts=(60,))
    assert acquire(full, RPM, now=5.0)[1] == denied(60, 0, 65.0, 65.0)
    assert acquire(full, RPM, now=70.0)[1].allowed


def test_retry_after_is_rounded_up_so_that_now_plus_it_is_late_enough() -> None:
    one = Limit(limit=1)
    state, _ = acquire(None, one, now=0.6)
    now = 0.6 + 0.56  # 1.1600000000000001: now + (60.6 - now) < 60.6 in floats
    assert now + (60.6 - now) < 60.6
    _, d = acquire(state, one, now=now)
    assert not d.allowed
    assert d.retry_after == math.nextafter(60.6 - now, INF)
    assert now + d.retry_after >= 60.6
    assert acquire(state, one, now=now + d.retry_after)[1].allowed


def test_several_limits_are_all_charged_or_none_is() -> None:
    rpm, tpm = Limit(limit=2), Limit(limit=100)
    m = MemoryLimiter()
    assert m.acquire_all([("rpm", rpm, 1), ("tpm", tpm, 60)], now=0.0) == [
        allowed(2, 1, 60.0),
        allowed(100, 40, 60.0),
    ]
    # tpm refuses, so rpm is not charged either; rpm's own wait is 0.
    assert m.acquire_all([("rpm", rpm, 1), ("tpm", tpm, 60)], now=1.0) == [
        denied(2, 1, 59.0, 0.0),
        denied(100, 40, 59.0, 59.0),
    ]
    assert m.get("rpm") == LimiterState(times=(0.0,), amounts=(1,))
    assert m.acquire_all([], now=2.0) == []
    with pytest.raises(ValueError, match="distinct keys"):
        m.acquire_all([("k", rpm, 1), ("k", tpm, 1)], now=2.0)


def test_memory_limiter_forgets_keys_whose_usage_has_left() -> None:
    m = MemoryLimiter()
    m.acquire("a", RPM, now=0.0)
    m.acquire("b", Limit(limit=5, window=10.0), now=0.0)
    assert m.sweep(now=9.5) == 0
    assert m.sweep(now=10.0) == 1
    assert m.get("b") is None
    assert m.snapshot("a", RPM, now=10.0) == allowed(60, 59, 50.0)
    assert m.snapshot("b", RPM, now=10.0) == allowed(60, 60, 0.0)
    assert m.sweep(now=60.0) == 1
    assert m.get("a") is None


def test_state_round_trips_as_numbers_and_as_redis_text() -> None:
    state = LimiterState(times=(1e-7, 0.1, 2.5), amounts=(3, 1, 2**40))
    assert state.to_list() == [1e-7, 3, 0.1, 1, 2.5, 2**40]
    assert LimiterState.from_list(state.to_list()) == state
    assert state.encode() == "9.9999999999999995e-08 3 0.10000000000000001 1 2.5 1099511627776"
    assert LimiterState.decode(state.encode()) == state
    assert LimiterState.decode(state.encode().encode()) == state
    assert LimiterState.decode(b"") == LimiterState() == LimiterState.from_list([])
    assert LimiterState().encode() == ""


@pytest.mark.parametrize(
    "values",
    [[1.0], [1.0, 0], [1.0, -1], [1.0, 1.5], [math.nan, 1], [INF, 1], [2.0, 1, 1.0, 1]],
)
def test_state_from_outside_is_checked(values: list[float]) -> None:
    with pytest.raises(ValueError, match="limiter state"):
        LimiterState.from_list(values)


def test_state_text_from_outside_is_checked() -> None:
    with pytest.raises(ValueError, match="not a limiter state"):
        LimiterState.decode("1.0 x")


def test_limit_is_checked_and_normalised() -> None:
    assert Limit(limit=3, window=1) == Limit(limit=3, window=1.0)
    assert isinstance(Limit(limit=3, window=1).window, float)
    for bad in (
        {"limit": 0},
        {"limit": True},
        {"limit": 1.5},
        {"limit": 1, "window": 0},
        {"limit": 1, "window": -1.0},
        {"limit": 1, "window": math.nan},
        {"limit": 1, "window": INF},
        {"limit": 1, "window": "60"},
    ):
        with pytest.raises(ValueError, match="Limit"):
            Limit(**bad)


def test_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="amount"):
        acquire(None, RPM, now=0.0, amount=-1)
    with pytest.raises(ValueError, match="amount"):
        acquire(None, RPM, now=0.0, amount=True)
    with pytest.raises(ValueError, match="now"):
        acquire(None, RPM, now=math.nan)
    with pytest.raises(ValueError, match="now"):
        adjust(None, RPM, now=INF, delta=1, charged_at=0.0)
    with pytest.raises(ValueError, match="charged_at"):
        adjust(None, RPM, now=0.0, delta=1, charged_at=math.nan)
    with pytest.raises(ValueError, match="delta"):
        adjust(None, RPM, now=0.0, delta=1.5, charged_at=0.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not a limiter reply"):
        redis_decisions([1, 0, b"0"], [(RPM, 1)], now=0.0)


def test_redis_arguments() -> None:
    tpm = Limit(limit=100_000, window=60)
    assert redis_acquire_args([(RPM, 1), (tpm, 4_000)], now=12.5) == [
        "12.5",
        str(SLOTS),
        "60",
        "60.0",
        "1",
        "100000",
        "60.0",
        "4000",
    ]
    assert redis_adjust_args(tpm, now=13, delta=-3_000, charged_at=12.5) == [
        "13.0",
        str(SLOTS),
        "60.0",
        "-3000",
        "12.5",
    ]
    reply: list[int | bytes | str] = [0, 60, b"72.5", b"72.5", 4000, "72.5", "inf"]
    assert redis_decisions(reply, [(RPM, 1), (tpm, 200_000)], now=12.5) == [
        denied(60, 0, 60.0, 60.0),
        denied(100_000, 96_000, 60.0, INF),
    ]


# --- hypothesis ---------------------------------------------------------------------

WINDOWS = [60.0, 1.0, 0.5, 7.3]
# Gaps between arrivals, as fractions of the window: bursts (0), slot and window
# boundaries exactly, and anything in between.
FRACTIONS = st.one_of(
    st.just(0.0),
    st.sampled_from([1 / SLOTS, 0.5 / SLOTS, 1 / 7, 0.25, 0.5, 1.0, 1.0 + 1 / SLOTS]),
    st.floats(min_value=0.0, max_value=2 / SLOTS),  # within a slot or two
    st.floats(min_value=0.0, max_value=1.5),
)
STARTS = st.one_of(st.just(0.0), st.floats(min_value=0.0, max_value=1e4, allow_nan=False))
LIMITS = st.builds(
    Limit,
    limit=st.one_of(st.integers(1, 12), st.integers(100, 5_000)),
    window=st.sampled_from(WINDOWS),
)
AMOUNTS = st.integers(0, 14)  # see amount()
PICKS = st.integers(0, 1_000)  # which pending charge to correct, modulo their number
DELTAS = st.integers(-4, 4)  # see delta()


def amount(limit: Limit, raw: int) -> int:
    """0 to the whole limit, and now and then one more than the limit (never fits)."""
    n = limit.limit
    if raw == 14:
        return n + 1
    if n <= 12:
        return raw % (n + 1)
    return raw * n // 13


def delta(limit: Limit, charged: int, raw: int) -> int:
    """A refund of up to the whole charge, or an extra charge of up to the limit."""
    return charged * raw // 4 if raw < 0 else limit.limit * raw // 4


def window_sum(events: list[tuple[float, int]], start: float, window: float) -> int:
    return sum(a for s, a in events if start <= s < start + window)


@settings(max_examples=300)
@given(limit=LIMITS, now=STARTS, steps=st.lists(st.tuples(FRACTIONS, AMOUNTS), max_size=80))
def test_never_more_than_the_limit_in_any_window(
    limit: Limit, now: float, steps: list[tuple[float, int]]
) -> None:
    state: LimiterState | None = None
    arrivals: list[float] = []
    admitted: list[tuple[float, int]] = []
    for fraction, raw in steps:
        now += fraction * limit.window
        state, d = acquire(state, limit, now=now, amount=amount(limit, raw))
        arrivals.append(now)
        if d.allowed:
            admitted.append((now, amount(limit, raw)))
        assert len(state.times) <= SLOTS + 2
    for start in arrivals:
        assert window_sum(admitted, start, limit.window) <= limit.limit


@dataclasses.dataclass
class Charge:
    at: float
    amount: int
    delta: int | None = None
    adjusted_at: float = 0.0
    refunded: bool = False  # the refund came in time and applied


def usage(charges: list[Charge], now: float, window: float, hold: float) -> int:
    """What an exact log holds at ``now`` if each entry stays ``hold`` longer."""
    total = 0
    for c in charges:
        if c.at + window + hold > now:
            total += c.amount + (c.delta if c.refunded and c.delta is not None else 0)
        if c.delta is not None and c.delta > 0 and c.adjusted_at + window + hold > now:
            total += c.delta
    return total


STEPS = st.lists(st.tuples(FRACTIONS, st.booleans(), AMOUNTS, PICKS, DELTAS), max_size=60)


@settings(max_examples=300)
@given(limit=LIMITS, now=STARTS, steps=STEPS)
def test_corrections_keep_the_limit_and_the_limiter_is_not_over_strict(
    limit: Limit, now: float, steps: list[tuple[float, bool, int, int, int]]
) -> None:
    window = limit.window
    slot = window / SLOTS * (1 + 1e-9) + 1e-9  # what coalescing may add to a hold
    state: LimiterState | None = None
    charges: list[Charge] = []
    for fraction, correcting, raw, pick, delta_raw in steps:
        now += fraction * window
        pending = [c for c in charges if c.delta is None]
        if correcting and pending:
            c = pending[pick % len(pending)]
            d = delta(limit, c.amount, delta_raw)
            before = sum(acquire(state, limit, now=now, amount=0)[0].amounts)
            state = adjust(state, limit, now=now, delta=d, charged_at=c.at)
            c.delta, c.adjusted_at = d, now
            # Applied exactly once: by exactly delta; a refund may come too late
            # (the charge's slot has left the window: nothing to refund), never partly.
            after = sum(state.amounts)
            c.refunded = d < 0 and after == before + d
            if d >= 0 or c.at + window > now:
                assert after == before + d
            else:
                assert after in (before, before + d)
            assert all(a > 0 for a in state.amounts)
            continue
        n = amount(limit, raw)
        known = usage(charges, now, window, hold=0.0)
        generous = usage(charges, now, window, hold=slot)
        state, decision = acquire(state, limit, now=now, amount=n)
        if decision.allowed:
            assert known + n <= limit.limit  # safe
            charges.append(Charge(at=now, amount=n))
        else:
            assert generous + n > limit.limit  # refused only with good reason
    # After a window of idleness, the whole limit is there again.
    _, decision = acquire(state, limit, now=now + window, amount=limit.limit)
    assert decision == allowed(limit.limit, 0, decision.reset_after)


@settings(max_examples=200)
@given(limit=LIMITS, now=STARTS, steps=st.lists(st.tuples(FRACTIONS, AMOUNTS), max_size=40))
def test_decisions_mean_what_they_say(
    limit: Limit, now: float, steps: list[tuple[float, int]]
) -> None:
    state: LimiterState | None = None
    for fraction, raw in steps:
        now += fraction * limit.window
        n = amount(limit, raw)
        before = state
        state, d = acquire(state, limit, now=now, amount=n)
        assert d.limit == limit.limit
        assert 0 <= d.remaining <= limit.limit
        assert 0.0 <= d.reset_after <= limit.window * (1 + 1e-12)
        assert (d.reset_after == 0.0) == (d.remaining == limit.limit)
        # remaining is exact: that much fits now, one more does not.
        assert acquire(state, limit, now=now, amount=d.remaining)[1].allowed
        assert not acquire(state, limit, now=now, amount=d.remaining + 1)[1].allowed
        if d.allowed:
            assert d.retry_after == 0.0
            continue
        assert d.retry_after > 0.0
        assert state == acquire(before, limit, now=now, amount=0)[0]  # nothing charged
        if n > limit.limit:
            assert d.retry_after == INF
            continue
        # The same request fits at now + retry_after, and not before (beyond float noise).
        assert acquire(state, limit, now=now + d.retry_after, amount=n)[1].allowed
        if d.retry_after > 1e-9:
            assert not acquire(state, limit, now=now + d.retry_after / 2, amount=n)[1].allowed


@settings(max_examples=150)
@given(
    rpm=st.integers(1, 5).map(lambda n: Limit(limit=n)),
    tpm=LIMITS,
    steps=st.lists(st.tuples(FRACTIONS, AMOUNTS), max_size=30),
)
def test_several_limits_decide_as_each_alone(
    rpm: Limit, tpm: Limit, steps: list[tuple[float, int]]
) -> None:
    m = MemoryLimiter()
    now = 0.0
    for fraction, raw in steps:
        now += fraction * 60.0
        tokens = amount(tpm, raw)
        alone = [
            acquire(m.get("rpm"), rpm, now=now, amount=1),
            acquire(m.get("tpm"), tpm, now=now, amount=tokens),
        ]
        ok = all(d.allowed for _, d in alone)
        previous = [m.get("rpm"), m.get("tpm")]
        both = m.acquire_all([("rpm", rpm, 1), ("tpm", tpm, tokens)], now=now)
        assert [d.allowed for d in both] == [ok, ok]
        now_held = [
            acquire(m.get("rpm"), rpm, now=now, amount=0)[0],
            acquire(m.get("tpm"), tpm, now=now, amount=0)[0],
        ]
        if ok:
            assert both == [d for _, d in alone]
            assert now_held == [s for s, _ in alone]
        else:
            assert [m.get("rpm"), m.get("tpm")] == previous
            assert [d.retry_after for d in both] == [d.retry_after for _, d in alone]


# --- budgets and spend --------------------------------------------------------------


def test_a_budget_refusal_charges_nothing() -> None:
    m = MemoryLimiter()
    rpm = Limit(limit=2)
    assert m.add_spend("usd", 0.75, now=0.0, ttl=None) == 0.75
    assert m.quota([("rpm", rpm, 1)], [("usd", 1.0)], now=1.0) == (
        True,
        [allowed(2, 1, 60.0)],
        [0.75],
    )
    m.add_spend("usd", 0.25, now=2.0, ttl=None)
    # 1.0 spent is not below 1.0: refused; rpm had room, so its own wait is 0.
    assert m.quota([("rpm", rpm, 1)], [("usd", 1.0), ("other", 5.0)], now=3.0) == (
        False,
        [denied(2, 1, 58.0, 0.0)],
        [1.0, 0.0],
    )
    assert m.get("rpm") == LimiterState(times=(1.0,), amounts=(1,))
    assert m.quota([("rpm", rpm, 1)], [("usd", 1.5)], now=3.0) == (
        True,
        [allowed(2, 0, 60.0)],
        [1.0],
    )
    # A limit refuses: nothing charged, the spend reported all the same.
    assert m.quota([("rpm", rpm, 1)], [("usd", 1.5)], now=4.0) == (
        False,
        [denied(2, 0, 59.0, 57.0)],
        [1.0],
    )
    assert m.quota([], [("usd", 1.0)], now=5.0) == (False, [], [1.0])
    assert m.quota([], [], now=5.0) == (True, [], [])
    assert m.quota([("rpm", rpm, 0)], [("usd", 0.0)], now=5.0)[0] is False  # a zero budget
    assert m.quota([("rpm", rpm, 0)], [("usd", INF)], now=5.0) == (  # a look
        True,
        [allowed(2, 0, 58.0)],
        [1.0],
    )
    with pytest.raises(ValueError, match="distinct keys"):
        m.quota([("k", rpm, 1), ("k", rpm, 1)], [], now=5.0)
    with pytest.raises(ValueError, match="budget"):
        m.quota([("rpm", rpm, 1)], [("usd", math.nan)], now=5.0)
    assert m.get("rpm") == LimiterState(times=(1.0, 3.0), amounts=(1, 1))


def test_spend_sums_and_expires_with_its_ttl() -> None:
    m = MemoryLimiter()
    assert m.spent("day", now=0.0) == 0.0
    assert m.add_spend("day", 0.1, now=0.0, ttl=10.0) == 0.1
    assert m.add_spend("day", 0.2, now=5.0, ttl=None) == 0.1 + 0.2  # keeps the expiry: 10
    assert m.spent("day", now=9.5) == 0.30000000000000004
    assert m.spent("day", now=10.0) == 0.0
    assert m.add_spend("day", 0.5, now=11.0, ttl=None) == 0.5  # starts over, never expires
    assert m.spent("day", now=1e9) == 0.5
    assert m.add_spend("day", 1.0, now=12.0, ttl=3.0) == 1.5  # a ttl sets the expiry: 15
    assert m.spent("day", now=14.5) == 1.5
    assert m.spent("day", now=15.0) == 0.0
    m.add_spend("month", 2.0, now=12.0, ttl=None)
    m.acquire("rpm", RPM, now=12.0)
    assert len(m) == 3
    assert m.sweep(now=15.0) == 1
    assert m.spent("month", now=15.0) == 2.0
    assert m.sweep(now=72.0) == 1
    assert len(m) == 1
    for bad in ({"usd": math.inf}, {"ttl": 0.0}, {"ttl": -1.0}, {"ttl": math.nan}, {"ttl": 1e11}):
        with pytest.raises(ValueError, match=r"usd|ttl"):
            m.add_spend("month", **{"usd": 1.0, "now": 0.0, "ttl": None, **bad})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="now"):
        m.spent("month", now=math.nan)


def test_settle_applies_each_correction_and_spend_once_per_call() -> None:
    m = MemoryLimiter()
    tpm = Limit(limit=100)
    m.quota([("tpm", tpm, 60)], [("usd", 1.0)], now=0.0)
    m.settle([("tpm", tpm, -40, 0.0)], [("usd", 0.02, 60.0), ("usd", 0.03, None)], now=1.0)
    assert m.get("tpm") == LimiterState(times=(0.0,), amounts=(20,))
    assert m.spent("usd", now=60.5) == 0.02 + 0.03
    assert m.spent("usd", now=61.0) == 0.0
    # Every call applies: the same settle again refunds and spends again.
    m.settle([("tpm", tpm, -40, 0.0)], [("usd", 0.02, None)], now=2.0)
    assert m.get("tpm") is None
    assert m.spent("usd", now=2.0) == 0.02 + 0.03 + 0.02
    m.settle([], [], now=3.0)
    # Arguments are all checked before anything applies.
    for adjustments, spends in [
        ([("tpm", tpm, 5, 0.0)], [("usd", 1.0, 0.0)]),
        ([("tpm", tpm, 5, 0.0), ("tpm", tpm, 1.5, 0.0)], []),
        ([("tpm", tpm, 5, math.nan)], []),
        ([], [("usd", 1.0, None), ("usd", math.nan, None)]),
    ]:
        with pytest.raises(ValueError, match=r"ttl|delta|charged_at|usd"):
            m.settle(adjustments, spends, now=4.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="now"):
        m.settle([], [], now=math.inf)
    assert m.get("tpm") is None
    assert m.spent("usd", now=4.0) == 0.02 + 0.03 + 0.02


def test_redis_quota_and_settle_arguments() -> None:
    tpm = Limit(limit=100_000, window=60)
    keys, args = redis_quota_args(
        [("{a}:rpm", RPM, 1), ("{a}:tpm", tpm, 4_000)], [("{a}:day", 2.5)], now=12.5
    )
    assert keys == ["{a}:rpm", "{a}:tpm", "{a}:day"]
    assert args == ["12.5", str(SLOTS), "2", "60", "60.0", "1", "100000", "60.0", "4000", "2.5"]
    assert redis_quota_args([], [], now=1) == ([], ["1.0", str(SLOTS), "0"])
    with pytest.raises(ValueError, match="distinct keys"):
        redis_quota_args([("k", RPM, 1), ("k", tpm, 1)], [], now=0.0)
    for amount in (-1, True, 1.0):  # as MemoryLimiter.quota refuses them
        with pytest.raises(ValueError, match="amount"):
            redis_quota_args([("k", RPM, amount)], [], now=0.0)  # type: ignore[list-item]
    assert redis_quota_args([("k", RPM, 1)], [], now=3)[1][0] == "3.0"  # an int now: a float
    with pytest.raises(ValueError, match="budget"):
        redis_quota_args([], [("k", math.nan)], now=0.0)
    with pytest.raises(ValueError, match="budget"):
        redis_quota_args([], [("k", True)], now=0.0)
    assert redis_quota_args([], [("k", INF)], now=0.0)[1][-1] == "inf"
    keys, args = redis_settle_args(
        [("{a}:tpm", tpm, -3_000, 12.5)], [("{a}:day", 0.1, 86_400), ("{a}:all", 0.1, None)], now=13
    )
    assert keys == ["{a}:tpm", "{a}:day", "{a}:all"]
    assert args == [
        "13.0", str(SLOTS), "1", "60.0", "-3000", "12.5", "0.1", "86400.0", "0.1", "",
    ]  # fmt: skip
    with pytest.raises(ValueError, match="ttl"):
        redis_settle_args([], [("k", 1.0, -1.0)], now=0.0)
    charges = [("{a}:rpm", RPM, 1), ("{a}:tpm", tpm, 200_000)]
    budgets = [("{a}:day", 2.5)]
    reply = [0, 60, b"72.5", b"72.5", 4000, b"72.5", b"inf", b"0.30000000000000004"]
    assert redis_quota_answer(reply, charges, budgets, now=12.5) == (
        False,
        [denied(60, 0, 60.0, 60.0), denied(100_000, 96_000, 60.0, INF)],
        [0.30000000000000004],
    )
    assert redis_quota_answer([1], [], [], now=0.0) == (True, [], [])


@pytest.mark.parametrize(
    "reply",
    [
        None,
        b"OK",
        [],
        [1, 0, b"1", b"1"],  # too short
        [2, 0, b"1", b"1", b"0"],
        [b"1", 0, b"1", b"1", b"0"],
        [1, b"x", b"1", b"1", b"0"],
        [1, 0, b"nan", b"1", b"0"],
        [1, 0, b"1", b"nan", b"0"],
        [1, 0, b"1", b"1", b"inf"],
        [1, 0, b"1", [b"1"], b"0"],
        [1, 0, None, b"1", b"0"],
    ],
)
def test_a_redis_quota_reply_from_outside_is_checked(reply: object) -> None:
    with pytest.raises(ValueError, match="not a quota reply"):
        redis_quota_answer(reply, [("k", RPM, 1)], [("d", 1.0)], now=0.0)


# The spend a model keeps: every addition since the key last started, its expiry.
SpendModel = dict[str, tuple[list[float], float]]


def model_spent(spends: SpendModel, key: str, now: float) -> float:
    adds, expires = spends.get(key, ([], INF))
    total = 0.0
    if expires > now:
        for usd in adds:
            total += usd
    return total


def model_add(spends: SpendModel, key: str, usd: float, now: float, ttl: float | None) -> None:
    adds, expires = spends.get(key, ([], INF))
    if expires <= now:
        adds, expires = [], INF
    spends[key] = ([*adds, usd], expires if ttl is None else now + ttl)


def expected_quota(
    states: dict[str, LimiterState | None],
    charges: list[tuple[str, Limit, int]],
    fits: bool,
    now: float,
) -> tuple[bool, list[Decision]]:
    """What quota() must answer, from the pure acquire() of each limit alone; the
    states become the charged ones when it admits."""
    alone = [acquire(states[key], limit, now=now, amount=n) for key, limit, n in charges]
    ok = fits and all(d.allowed for _, d in alone)
    if ok:
        for (key, _, _), (state, _) in zip(charges, alone, strict=True):
            states[key] = state
        return True, [d for _, d in alone]
    decisions = []
    for (key, limit, _), (_, d) in zip(charges, alone, strict=True):
        look = acquire(states[key], limit, now=now, amount=0)[1]
        refused = d if not d.allowed else look
        decisions.append(dataclasses.replace(refused, allowed=False, retry_after=d.retry_after))
    return False, decisions


USD = st.sampled_from([0.0, 0.1, 0.25, 1 / 3, 0.7, 1.0])
TTLS = st.sampled_from([None, 0.5, 30.0, 90.0])
QUOTA_STEPS = st.lists(
    st.tuples(
        FRACTIONS,
        st.integers(0, 2),  # 0: a request; 1: settle one (tokens and money); 2: money only
        AMOUNTS,
        USD,
        TTLS,
        PICKS,
        DELTAS,
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=250)
@given(
    rpm=st.integers(1, 5).map(lambda n: Limit(limit=n)),
    tpm=LIMITS,
    budget=st.sampled_from([0.0, 0.5, 1.0, 2.5, INF]),
    now=STARTS,
    steps=QUOTA_STEPS,
)
def test_memory_keeps_what_the_pure_functions_compute(
    rpm: Limit,
    tpm: Limit,
    budget: float,
    now: float,
    steps: list[tuple[float, int, int, float, float | None, int, int]],
) -> None:
    m = MemoryLimiter()
    states: dict[str, LimiterState | None] = {"rpm": None, "tpm": None}
    spends: SpendModel = {}
    pending: list[tuple[float, int]] = []
    for fraction, kind, raw, usd, ttl, pick, delta_raw in steps:
        now += fraction * tpm.window
        if kind == 0:
            tokens = amount(tpm, raw)
            charges = [("rpm", rpm, 1), ("tpm", tpm, tokens)]
            budgets = [("day", budget), ("month", budget * 2)]
            spent = [model_spent(spends, key, now) for key, _ in budgets]
            fits = all(s < b for s, (_, b) in zip(spent, budgets, strict=True))
            stored = [m.get("rpm"), m.get("tpm")]
            ok, decisions = expected_quota(states, charges, fits, now)
            assert m.quota(charges, budgets, now=now) == (ok, decisions, spent)
            if ok:
                pending.append((now, tokens))
            else:  # nothing charged
                assert [m.get("rpm"), m.get("tpm")] == stored
        else:
            adjustments: list[tuple[str, Limit, int, float]] = []
            if kind == 1 and pending:
                at, charged = pending.pop(pick % len(pending))
                d = delta(tpm, charged, delta_raw)
                adjustments.append(("tpm", tpm, d, at))
                states["tpm"] = adjust(states["tpm"], tpm, now=now, delta=d, charged_at=at)
            money = [("day", usd, ttl), ("month", usd, None)]
            for key, x, life in money:
                model_add(spends, key, x, now, life)
            m.settle(adjustments, money, now=now)
        for key, limit in (("rpm", rpm), ("tpm", tpm)):
            look = acquire(states[key], limit, now=now, amount=0)[1]
            assert m.snapshot(key, limit, now=now) == look
        for key in ("day", "month"):
            assert m.spent(key, now=now) == model_spent(spends, key, now)


@given(
    allowed=st.booleans(),
    limit=st.integers(1, 10**9),
    remaining=st.integers(0, 10**9),
    reset_after=st.floats(0, 1e6),
    retry_after=st.one_of(st.floats(0, 1e6), st.just(math.inf)),
)
def test_a_decision_built_through_its_slots_is_the_dataclass_s(
    allowed: bool, limit: int, remaining: int, reset_after: float, retry_after: float
) -> None:
    # The limiter builds its decisions field by field (it is faster): the same values,
    # the same frozen, hashable objects.
    fields = {
        "allowed": allowed,
        "limit": limit,
        "remaining": remaining,
        "reset_after": reset_after,
        "retry_after": retry_after,
    }
    made = _decision(**fields)
    expected = Decision(**fields)  # type: ignore[arg-type]
    assert (made, hash(made), repr(made)) == (expected, hash(expected), repr(expected))
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.remaining = 0  # type: ignore[misc]


def test_times_may_be_ints_and_must_be_finite() -> None:
    m = MemoryLimiter()
    limit = Limit(limit=2)
    assert m.quota([("k", limit, 1)], now=100) == m.quota([("j", limit, 1)], now=100.0)
    with pytest.raises(ValueError, match="now"):
        m.quota([("k", limit, 1)], now=math.nan)
    with pytest.raises(ValueError, match="amount"):
        m.quota([("k", limit, True)], now=100.0)
    m.settle([("k", limit, -1, 100)], [], now=101)  # ints: the same as floats
    assert m.get("k") is None
    with pytest.raises(ValueError, match="delta"):
        m.settle([("k", limit, 1.0, 100.0)], [], now=101.0)  # type: ignore[list-item]
    with pytest.raises(ValueError, match="charged_at"):
        m.settle([("k", limit, 1, math.inf)], [], now=101.0)


@pytest.mark.parametrize(
    "reply",
    [None, [1], [1, 1, 1], [1, 0], [1, [b"x"]], [1, 2.0]],
    ids=["none", "short", "long", "zero", "nested", "float"],
)
def test_a_redis_settle_reply_from_outside_is_checked(reply: object) -> None:
    with pytest.raises(ValueError, match="not a settle reply"):
        redis_settle_many_answer(reply, 2)


def test_a_redis_settle_reply_says_which_failed() -> None:
    answer = redis_settle_many_answer([1, b"user_script:1: sansproxy: not a spend", "", 1], 4)
    assert answer == [
        None,
        "user_script:1: sansproxy: not a spend",
        "an error without a message",
        None,
    ]
