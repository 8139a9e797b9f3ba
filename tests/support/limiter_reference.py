"""The rate limiter's reference model: what the product is checked against.

``core.policies._limiter`` keeps each key's log in mutable lists
(``MemoryLimiter``) and ``core.policies._limiter_redis`` transcribes it into
Lua. Here is the same algorithm as pure functions over the immutable
:class:`LimiterState` -- :func:`acquire` and :func:`adjust`, one key at a time,
each step a small helper (``_prune``, ``_verdict``, ``_record``, ``_refund``,
``_check``, ``_finish``) whose twin the Lua prelude names -- and two scripts
that run that prelude one call at a time (:data:`REDIS_ACQUIRE_SCRIPT`,
:data:`REDIS_ADJUST_SCRIPT`), with their arguments and answers. The tests hold
``MemoryLimiter`` and the product's scripts to them (tests/core/test_limiter.py,
tests/adapters/test_limiter_redis.py, tests/adapters/test_store.py).

The scripts are built on the product's :data:`LUA_PRELUDE`, not a copy of it:
what they check is the Lua the product runs. The guarantee, and why the
algorithm is what it is, are in ``core.policies._limiter``'s docstring.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from core._quota import Decision, Limit
from core._quota import finite as _finite
from core._quota import integer as _integer
from core.policies._limiter import SLOTS, LimiterState
from core.policies._limiter import decision as _decision
from core.policies._limiter_redis import LUA_PRELUDE

__all__ = [
    "REDIS_ACQUIRE_SCRIPT",
    "REDIS_ADJUST_SCRIPT",
    "acquire",
    "adjust",
    "redis_acquire_args",
    "redis_adjust_args",
    "redis_decisions",
]

_Entries = tuple[tuple[float, ...], tuple[int, ...]]

_EMPTY = LimiterState()


# --- the algorithm: each helper has its twin, line for line, in LUA_PRELUDE -------


def _prune(state: LimiterState, window: float, now: float) -> tuple[float, _Entries]:
    """The key's time (``now``, never before its newest entry) and its live entries."""
    times, amounts = state.times, state.amounts
    eff = now
    if times:
        eff = max(now, times[-1])
        first = 0
        while first < len(times) and times[first] + window <= eff:
            first += 1
        if first:
            times, amounts = times[first:], amounts[first:]
    return eff, (times, amounts)


def _verdict(entries: _Entries, used: int, limit: Limit, amount: int) -> float | None:
    """``None`` if ``amount`` fits now, else the time at which it will fit (inf: never)."""
    if amount > limit.limit:
        return math.inf
    if used + amount <= limit.limit:
        return None
    times, amounts = entries
    i = freed = 0
    while used - freed + amount > limit.limit:  # ends: amount <= limit fits in an empty window
        freed += amounts[i]
        i += 1
    return times[i - 1] + limit.window


def _record(entries: _Entries, eff: float, amount: int, window: float) -> _Entries:
    """Add ``amount`` at ``eff``: into the newest entry if it is in the same slot."""
    times, amounts = entries
    slot = window / SLOTS
    if times and math.floor(times[-1] / slot) == math.floor(eff / slot):
        return (*times[:-1], eff), (*amounts[:-1], amounts[-1] + amount)
    return (*times, eff), (*amounts, amount)


def _refund(entries: _Entries, amount: int, charged_at: float, window: float) -> _Entries:
    """Take ``amount`` from the slot of ``charged_at``, then older entries; drop empties."""
    times, amounts = entries
    slot = window / SLOTS
    cap = math.floor(charged_at / slot)
    left = list(amounts)
    for i in range(len(times) - 1, -1, -1):
        if amount == 0:
            break
        if math.floor(times[i] / slot) <= cap:
            take = min(amount, left[i])
            left[i] -= take
            amount -= take
    keep = [i for i, a in enumerate(left) if a > 0]
    return tuple(times[i] for i in keep), tuple(left[i] for i in keep)


_Check = tuple[float, _Entries, int, float | None]  # eff, live entries, used, retry_at


def _check(state: LimiterState | None, limit: Limit, now: float, amount: int) -> _Check:
    """Whether ``amount`` fits: the first half of an acquire, which changes nothing."""
    _integer("amount", amount, minimum=0)
    eff, entries = _prune(state or _EMPTY, limit.window, now)
    used = sum(entries[1])
    return eff, entries, used, _verdict(entries, used, limit, amount)


def _finish(
    checked: _Check, limit: Limit, amount: int, now: float, *, allowed: bool
) -> tuple[LimiterState, Decision]:
    """The second half: charge ``amount`` if the request is ``allowed``; the verdict."""
    eff, entries, used, retry_at = checked
    if allowed and amount:
        entries = _record(entries, eff, amount, limit.window)
        used += amount
    times, amounts = entries
    reset_at = times[-1] + limit.window if times else now
    decision = _decision(
        limit,
        now,
        allowed=allowed,
        used=used,
        reset_at=reset_at,
        retry_at=now if retry_at is None else retry_at,
    )
    return LimiterState(times=times, amounts=amounts), decision


def acquire(
    state: LimiterState | None, limit: Limit, *, now: float, amount: int = 1
) -> tuple[LimiterState, Decision]:
    """What ``MemoryLimiter.acquire`` decides, on a state passed in and returned.

    ``state`` is ``None`` for a key never seen. ``amount=0`` only looks: it is
    allowed unless usage is over the limit (after a positive :func:`adjust`).
    """
    now = _finite("now", now)
    checked = _check(state, limit, now, amount)
    return _finish(checked, limit, amount, now, allowed=checked[3] is None)


def adjust(
    state: LimiterState | None, limit: Limit, *, now: float, delta: int, charged_at: float
) -> LimiterState:
    """What ``MemoryLimiter.adjust`` does, on a state passed in and returned: ``delta``
    > 0 charges more, < 0 refunds from the slot of ``charged_at``, then from older
    entries (never newer ones, never below zero usage).
    """
    now = _finite("now", now)
    charged_at = _finite("charged_at", charged_at)
    _integer("delta", delta, minimum=None)
    eff, entries = _prune(state or _EMPTY, limit.window, now)
    if delta > 0:
        entries = _record(entries, eff, delta, limit.window)
    elif delta < 0:
        entries = _refund(entries, -delta, charged_at, limit.window)
    times, amounts = entries
    return LimiterState(times=times, amounts=amounts)


# --- the same in Redis, one call at a time: the product's prelude, other main chunks


REDIS_ACQUIRE_SCRIPT = (
    LUA_PRELUDE
    + """
-- acquire, all or nothing over every key (rpm and tpm of one request, say).
-- KEYS[i]: one limiter state each, distinct (Redis Cluster: one {hash tag}).
-- ARGV[1] now (seconds), ARGV[2] SLOTS; then for key i, ARGV[3i], ARGV[3i+1],
-- ARGV[3i+2]: limit, window, amount. See redis_acquire_args().
-- Reply: {admitted 1|0, then per key: used (integer), reset_at, retry_at (%.17g)}.
-- Writes each charged key (SET ... PX); a refusal writes nothing.
local now = tonumber(ARGV[1])
local slots = tonumber(ARGV[2])
local checked = {}
local allowed = true
for i = 1, #KEYS do
  checked[i] = check(KEYS[i], tonumber(ARGV[3 * i]), tonumber(ARGV[3 * i + 1]),
                     tonumber(ARGV[3 * i + 2]), now)
  if checked[i].retry_at ~= nil then allowed = false end
end
local reply = {allowed and 1 or 0}
for i = 1, #KEYS do finish(KEYS[i], checked[i], allowed, now, slots, reply) end
return reply
"""
)

REDIS_ADJUST_SCRIPT = (
    LUA_PRELUDE
    + """
-- adjust one key. KEYS[1]: the state. ARGV: now, SLOTS, window, delta, charged_at
-- (see redis_adjust_args()). Reply: the usage left in the window (integer).
return adjust(KEYS[1], tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]),
              tonumber(ARGV[1]), tonumber(ARGV[2]))
"""
)


def redis_acquire_args(requests: Sequence[tuple[Limit, int]], *, now: float) -> list[str]:
    """ARGV for :data:`REDIS_ACQUIRE_SCRIPT`; KEYS are the states' keys, in the same order."""
    args = [repr(_finite("now", now)), str(SLOTS)]
    for limit, amount in requests:
        args += (str(limit.limit), repr(limit.window), str(_integer("amount", amount, minimum=0)))
    return args


def redis_adjust_args(limit: Limit, *, now: float, delta: int, charged_at: float) -> list[str]:
    """ARGV for :data:`REDIS_ADJUST_SCRIPT`; KEYS is the state's key."""
    return [
        repr(_finite("now", now)),
        str(SLOTS),
        repr(limit.window),
        str(_integer("delta", delta, minimum=None)),
        repr(_finite("charged_at", charged_at)),
    ]


def redis_decisions(
    reply: Sequence[int | bytes | str], requests: Sequence[tuple[Limit, int]], *, now: float
) -> list[Decision]:
    """The :class:`Decision` of each limit from :data:`REDIS_ACQUIRE_SCRIPT`'s reply."""
    if len(reply) != 1 + 3 * len(requests):
        raise ValueError(f"not a limiter reply for {len(requests)} keys: {reply!r}")
    allowed = int(reply[0]) == 1
    return [
        _decision(
            limit,
            now,
            allowed=allowed,
            used=int(reply[1 + 3 * i]),
            reset_at=float(reply[2 + 3 * i]),
            retry_at=float(reply[3 + 3 * i]),
        )
        for i, (limit, _) in enumerate(requests)
    ]
