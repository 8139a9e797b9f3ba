"""Rate limits: the pure algorithm behind ``rate_limit`` and its memory and Redis backends.

The guarantee: a :class:`Limit` of ``limit`` per ``window`` never admits more than
``limit`` (requests, or tokens) in ANY interval ``[t, t + window)``, not just in
aligned minutes. ``rpm: 60`` means at most 60 requests in every 60 seconds.

The algorithm is a sliding window log: each key keeps the (time, amount) of what
it admitted during the last ``window``; a request is admitted when what is still
in the window plus its own amount fits in ``limit``. Usage leaves the books
exactly ``window`` after it was recorded. The alternatives fail the guarantee:

- GCRA / token bucket: with room for a burst of B it admits B at once and then
  refills at ``limit / window``, so up to B + limit in one window (about twice the
  limit with B = limit). Holding the guarantee would need B ~ 0: no bursts, and a
  token limit could not admit one large request.
- Sliding window *counter* (two fixed windows, weighted): assumes the previous
  window's traffic was spread evenly; bunched at its end, it over-admits.

Bursts: the whole ``limit`` may be taken at one instant; then nothing more until
that usage is ``window`` old. There is no refill rate: with ``rpm: 60``, 60
requests at t=0 are admitted, the 61st waits until t=60 (``retry_after=60``).

Bounded state: the window is cut into ``SLOTS`` slots on a fixed grid
(``floor(t / (window / SLOTS))``); what is admitted within one slot joins the
slot's entry, stamped with the latest time. That only ever keeps usage on the
books longer (never shorter), so the guarantee is exact, and a state holds at
most ``SLOTS + 1`` entries. The price: usage may stay up to one slot
(``window / 60``: 1 s for a minute) longer than an exact log would keep it.
Requests at least a slot apart are judged exactly; after ``window`` seconds
of idleness the full ``limit`` is available again.

Time: ``now`` is seconds on any clock shared by every user of a key. A key's
time never goes backwards: a ``now`` older than the newest entry (another
process's clock running ahead) is taken as that entry's time.

Correction at completion (:func:`adjust`): a positive ``delta`` is recorded at
``now``, like a new charge (even over the limit: the usage happened; later
requests wait). A refund is taken from the charge's own slot, then from older
entries -- never from newer ones, which would let usage leave the books early --
and never below zero. Once those entries have left the window there is nothing
left to refund, and the refund does nothing.

Budgets (:meth:`MemoryLimiter.quota`): a key also may hold money spent, in USD,
a float sum. A request is admitted when every budget's spend is still below
its amount AND every charge fits; a refusal, for either reason, charges
nothing. Spend is added once the cost is known (:meth:`MemoryLimiter.settle`).
A spend may carry a time to live: each addition with a ``ttl`` sets the key's
expiry to ``now + ttl``, one without keeps it; once ``now`` reaches it, the
spend counts as 0 (and the next addition starts from 0). The expiry is judged
with the callers' ``now``, like the limiter's windows, not with Redis's clock.

The Redis scripts below are a line-by-line transcription of the Python, run
atomically; times and spend travel as ``%.17g`` text, so both sides do the same
double-precision arithmetic and decide identically. (Not INCRBYFLOAT: it adds
in long double and prints 17 fixed decimals, so its sums differ from Python's
in the last places and amounts under 1e-17 vanish.)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import pairwise

from .._quota import Decision, Limit
from .._quota import finite as _finite
from .._quota import integer as _integer

__all__ = [
    "REDIS_ACQUIRE_SCRIPT",
    "REDIS_ADJUST_SCRIPT",
    "REDIS_QUOTA_SCRIPT",
    "REDIS_SETTLE_SCRIPT",
    "SLOTS",
    "Decision",
    "Limit",
    "LimiterState",
    "MemoryLimiter",
    "acquire",
    "adjust",
    "redis_acquire_args",
    "redis_adjust_args",
    "redis_decisions",
    "redis_quota_answer",
    "redis_quota_args",
    "redis_settle_args",
]

SLOTS = 60  # entries per window at most (+1): the log's resolution is window / SLOTS
_MAX_TTL = 1e10  # seconds: a spend's time to live at most (Redis's PX must be an integer)

_Entries = tuple[tuple[float, ...], tuple[int, ...]]


@dataclass(frozen=True, slots=True, kw_only=True)
class LimiterState:
    """One key's log: entry i is ``amounts[i] > 0`` recorded at ``times[i]`` (ascending).

    Plain numbers, so the Redis script keeps the same data (:meth:`encode`).
    Build it from outside data with :meth:`from_list` or :meth:`decode`, which
    validate. Don't subclass.
    """

    times: tuple[float, ...] = ()
    amounts: tuple[int, ...] = ()

    def to_list(self) -> list[float]:
        """``[t0, a0, t1, a1, ...]``."""
        out: list[float] = []
        for t, a in zip(self.times, self.amounts, strict=True):
            out += (t, a)
        return out

    @classmethod
    def from_list(cls, values: Sequence[float]) -> LimiterState:
        """The inverse of :meth:`to_list`; ``ValueError`` on anything it would not produce."""
        if len(values) % 2:
            raise ValueError("a limiter state is pairs of (time, amount)")
        times = tuple(_finite("a limiter state's time", t) for t in values[::2])
        amounts: list[int] = []
        for value in values[1::2]:
            a = _finite("a limiter state's amount", value)
            if a != int(a) or not 1 <= a < 2**53:
                raise ValueError(f"a limiter state's amount must be a whole number >= 1, not {a!r}")
            amounts.append(int(a))
        if any(a > b for a, b in pairwise(times)):
            raise ValueError("a limiter state's times must be ascending")
        return cls(times=times, amounts=tuple(amounts))

    def encode(self) -> str:
        """The text the Redis scripts keep under a key: ``"t0 a0 t1 a1 ..."`` (``%.17g``)."""
        return " ".join(f"{t:.17g} {a}" for t, a in zip(self.times, self.amounts, strict=True))

    @classmethod
    def decode(cls, text: str | bytes) -> LimiterState:
        """The inverse of :meth:`encode` (bytes as Redis returns them)."""
        try:
            values = [float(word) for word in text.split()]
        except ValueError:
            raise ValueError(f"not a limiter state: {text!r}") from None
        return cls.from_list(values)


_EMPTY = LimiterState()


# --- the algorithm: each helper has its twin, line for line, in the Lua below -------


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


def _after(now: float, at: float) -> float:
    """``at - now``, rounded up so that ``now + result >= at`` holds in floats too."""
    wait = at - now
    while now + wait < at:
        wait = math.nextafter(wait, math.inf)
    return wait


def _decision(
    limit: Limit, now: float, *, allowed: bool, used: int, reset_at: float, retry_at: float
) -> Decision:
    return Decision(
        allowed=allowed,
        limit=limit.limit,
        remaining=max(0, limit.limit - used),
        reset_after=max(0.0, reset_at - now),
        retry_after=0.0 if allowed else _after(now, retry_at),
    )


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
    """Admit and charge ``amount`` if it fits in the window, else refuse and charge nothing.

    ``state`` is ``None`` for a key never seen. ``amount=0`` only looks: it is
    allowed unless usage is over the limit (after a positive :func:`adjust`).
    """
    now = _finite("now", now)
    checked = _check(state, limit, now, amount)
    return _finish(checked, limit, amount, now, allowed=checked[3] is None)


def adjust(
    state: LimiterState | None, limit: Limit, *, now: float, delta: int, charged_at: float
) -> LimiterState:
    """Correct a charge made up front with what was really used: ``delta`` > 0 charges more,
    < 0 refunds (never below zero usage). ``charged_at`` is the ``now`` the charge was
    acquired with: the refund comes from its slot's entry, then older ones (never newer).

    Call it once per charge: every call applies.
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


# --- spend: a float sum per key, with an optional expiry --------------------------

_Spend = tuple[float, float]  # (USD, expires at; inf: never)
_NO_SPEND: _Spend = (0.0, math.inf)


def _budget(usd: float) -> float:
    """A budget's amount: a number, ``inf`` included (it only reports the spend)."""
    if isinstance(usd, bool) or not isinstance(usd, (int, float)) or math.isnan(usd):
        raise ValueError(f"a budget's usd must be a number, not {usd!r}")
    return float(usd)


def _ttl(ttl: float | None) -> float | None:
    if ttl is None:
        return None
    ttl = _finite("ttl", ttl)
    if not 0 < ttl <= _MAX_TTL:
        raise ValueError(f"ttl must be in (0, {_MAX_TTL:g}] seconds or None, not {ttl!r}")
    return ttl


def _live_spend(entry: _Spend | None, now: float) -> _Spend:
    """The key's spend and expiry, or nothing once it has expired (Lua: load_spend)."""
    if entry is None or entry[1] <= now:
        return _NO_SPEND
    return entry


def _add_spend(entry: _Spend | None, usd: float, now: float, ttl: float | None) -> _Spend:
    """Add ``usd``; a ``ttl`` sets the expiry to ``now + ttl`` (Lua: add_spend)."""
    total, expires = _live_spend(entry, now)
    return total + usd, expires if ttl is None else now + ttl


def _distinct(charges: Iterable[tuple[str, Limit, int]]) -> list[tuple[str, Limit, int]]:
    charges = list(charges)
    keys = [key for key, _, _ in charges]
    if len(set(keys)) != len(keys):
        raise ValueError(f"the charges of one request need distinct keys, not {keys!r}")
    return charges


class _Log:
    """One key's log in memory: the entries of a ``LimiterState`` in lists, and their sum.

    Mutable, so that a request costs O(1) amortised instead of rebuilding tuples of
    up to ``SLOTS`` entries; the arithmetic is the pure functions', step for step
    (the tests hold ``MemoryLimiter`` to them and to the Redis scripts).
    """

    __slots__ = ("amounts", "times", "used", "window")

    def __init__(self, window: float) -> None:
        self.times: list[float] = []
        self.amounts: list[int] = []
        self.used = 0
        self.window = window

    def peek(self, window: float, now: float) -> tuple[float, int, int]:
        """Like ``_prune``, without changing anything: (the key's time, the index of
        the first live entry, the usage still in the window)."""
        times = self.times
        eff = now
        first = 0
        used = self.used
        if times:
            eff = max(eff, times[-1])
            amounts = self.amounts
            n = len(times)
            while first < n and times[first] + window <= eff:
                used -= amounts[first]
                first += 1
        return eff, first, used

    def drop(self, first: int, used: int) -> None:
        """Forget the entries before ``first`` (they left the window)."""
        if first:
            del self.times[:first]
            del self.amounts[:first]
        self.used = used

    def record(self, eff: float, amount: int, window: float) -> None:
        """``_record``: into the newest entry if it is in the same slot."""
        times = self.times
        slot = window / SLOTS
        if times and math.floor(times[-1] / slot) == math.floor(eff / slot):
            times[-1] = eff
            self.amounts[-1] += amount
        else:
            times.append(eff)
            self.amounts.append(amount)
        self.used += amount
        self.window = window

    def refund(self, amount: int, charged_at: float, window: float) -> None:
        """``_refund``: from the slot of ``charged_at``, then older entries; drop empties."""
        times, amounts = self.times, self.amounts
        slot = window / SLOTS
        cap = math.floor(charged_at / slot)
        emptied = False
        for i in range(len(times) - 1, -1, -1):
            if amount == 0:
                break
            if math.floor(times[i] / slot) <= cap:
                take = min(amount, amounts[i])
                amounts[i] -= take
                amount -= take
                self.used -= take
                emptied = emptied or amounts[i] == 0
        if emptied:
            keep = [i for i, a in enumerate(amounts) if a > 0]
            self.times = [times[i] for i in keep]
            self.amounts = [amounts[i] for i in keep]
        self.window = window

    def retry_at(self, first: int, used: int, limit: Limit, amount: int) -> float:
        """``_verdict`` for a request that does not fit now."""
        if amount > limit.limit:
            return math.inf
        i = first
        freed = 0
        amounts = self.amounts
        while used - freed + amount > limit.limit:
            freed += amounts[i]
            i += 1
        return self.times[i - 1] + limit.window


def _amount(value: int) -> int:
    if value.__class__ is int and value >= 0:
        return value
    return _integer("amount", value, minimum=0)


class MemoryLimiter:
    """Limiter states and spends in dicts keyed by string: the ``memory`` backend, one
    per process.

    Pure data manipulation, no locks: the driver calls it from one event loop.
    Charges are ``(key, Limit, amount)`` triples, budgets ``(key, usd)`` pairs,
    adjustments ``(key, Limit, delta, charged_at)`` and spends ``(key, usd, ttl)``:
    plain tuples, as the store unpacks ``core``'s quota commands into them.
    Limiter keys and spend keys are separate here; in Redis they share one
    namespace, so use distinct names.
    """

    __slots__ = ("_spends", "_states")

    def __init__(self) -> None:
        self._states: dict[str, _Log] = {}
        self._spends: dict[str, _Spend] = {}

    def __len__(self) -> int:
        """Keys held, limiter states and spends (expired ones until :meth:`sweep`)."""
        return len(self._states) + len(self._spends)

    def get(self, key: str) -> LimiterState | None:
        """The key's state as stored (not pruned), ``None`` if it has none."""
        log = self._states.get(key)
        if log is None:
            return None
        return LimiterState(times=tuple(log.times), amounts=tuple(log.amounts))

    def acquire(self, key: str, limit: Limit, *, now: float, amount: int = 1) -> Decision:
        """:func:`acquire` on the key's state, kept."""
        return self.quota(((key, limit, amount),), (), now=now)[1][0]

    def acquire_all(
        self, requests: Iterable[tuple[str, Limit, int]], *, now: float
    ) -> list[Decision]:
        """Several limits for one request (rpm and tpm, per key and per model), all or
        nothing: each is charged only if all have room. Keys must be distinct."""
        return self.quota(requests, (), now=now)[1]

    def quota(
        self,
        charges: Iterable[tuple[str, Limit, int]],
        budgets: Iterable[tuple[str, float]] = (),
        *,
        now: float,
    ) -> tuple[bool, list[Decision], list[float]]:
        """:meth:`acquire_all` that also refuses unless each budget's spend is below its
        ``usd``: (admitted, a decision per charge, the spend per budget). A budget of
        ``inf`` never refuses: it only reads the spend (with zero amounts, a look).

        A refusal charges nothing; a charge that had room then has ``retry_after``
        0 (budget refusals say nothing about when money comes back).
        """
        charges = _distinct(charges)
        now = _finite("now", now)
        allowed = True
        spent = []
        for key, usd in budgets:
            total = _live_spend(self._spends.get(key), now)[0]
            spent.append(total)
            if not total < _budget(usd):
                allowed = False
        states = self._states
        checks = []
        for key, limit, asked in charges:
            amount = _amount(asked)
            log = states.get(key)
            if log is None:
                log = _Log(limit.window)
                checks.append((log, now, 0, 0, amount))
                if amount > limit.limit:
                    allowed = False
                continue
            eff, first, used = log.peek(limit.window, now)
            checks.append((log, eff, first, used, amount))
            if used + amount > limit.limit:
                allowed = False
        decisions = []
        for (key, limit, _), (log, eff, first, live, amount) in zip(charges, checks, strict=True):
            window = limit.window
            used, start, retry_at = live, first, now
            if allowed and amount:
                log.drop(first, live)
                log.record(eff, amount, window)
                states[key] = log
                used, start = log.used, 0
            elif live + amount > limit.limit:
                retry_at = log.retry_at(first, live, limit, amount)
            times = log.times
            reset_at = times[-1] + window if len(times) > start else now
            decisions.append(
                _decision(
                    limit, now, allowed=allowed, used=used, reset_at=reset_at, retry_at=retry_at
                )
            )
        return allowed, decisions, spent

    def adjust(self, key: str, limit: Limit, *, now: float, delta: int, charged_at: float) -> None:
        """:func:`adjust` on the key's state, kept."""
        now = _finite("now", now)
        charged_at = _finite("charged_at", charged_at)
        _integer("delta", delta, minimum=None)
        self._adjust(key, limit, now, delta, charged_at)

    def _adjust(self, key: str, limit: Limit, now: float, delta: int, charged_at: float) -> None:
        window = limit.window
        log = self._states.get(key)
        if log is None:
            if delta <= 0:
                return
            log = _Log(window)
            self._states[key] = log
        eff, first, used = log.peek(window, now)
        log.drop(first, used)
        if delta > 0:
            log.record(eff, delta, window)
        elif delta < 0:
            log.refund(-delta, charged_at, window)
        if not log.times:
            del self._states[key]

    def spent(self, key: str, *, now: float) -> float:
        """USD spent under ``key``: 0 if none, or once its expiry has come."""
        return _live_spend(self._spends.get(key), _finite("now", now))[0]

    def add_spend(self, key: str, usd: float, *, now: float, ttl: float | None) -> float:
        """Add ``usd`` to the key's spend; with a ``ttl``, it expires at ``now + ttl``
        (else its expiry, if any, stays). The new total."""
        entry = _add_spend(
            self._spends.get(key), _finite("usd", usd), _finite("now", now), _ttl(ttl)
        )
        self._spends[key] = entry
        return entry[0]

    def settle(
        self,
        adjustments: Iterable[tuple[str, Limit, int, float]],
        spends: Iterable[tuple[str, float, float | None]],
        *,
        now: float,
    ) -> None:
        """What an exchange really used: each adjustment (:meth:`adjust`) then each spend
        (:meth:`add_spend`). Every call applies, once. All arguments are checked
        first: on ``ValueError`` nothing is applied."""
        now = _finite("now", now)
        todo = [
            (key, limit, _integer("delta", delta, minimum=None), _finite("charged_at", at))
            for key, limit, delta, at in adjustments
        ]
        money = [(key, _finite("usd", usd), _ttl(ttl)) for key, usd, ttl in spends]
        for key, limit, delta, at in todo:
            self._adjust(key, limit, now, delta, at)
        for key, usd, ttl in money:
            self._spends[key] = _add_spend(self._spends.get(key), usd, now, ttl)

    def snapshot(self, key: str, limit: Limit, *, now: float) -> Decision:
        """The key's current standing (a zero-amount look), for the admin view."""
        return acquire(self.get(key), limit, now=now, amount=0)[1]

    def sweep(self, *, now: float) -> int:
        """Forget keys whose usage has all left its window, and expired spends (Redis's
        PEXPIRE); how many."""
        gone = [key for key, log in self._states.items() if log.times[-1] + log.window <= now]
        for key in gone:
            del self._states[key]
        spent = [key for key, (_, expires) in self._spends.items() if expires <= now]
        for key in spent:
            del self._spends[key]
        return len(gone) + len(spent)


# --- Redis: the same algorithm as atomic Lua scripts --------------------------------

_LUA_COMMON = """
-- sansproxy limiter (core/_limiter.py): a transcription of its Python helpers.
-- A limiter key holds LimiterState.encode(): "t0 a0 t1 a1 ..." (%.17g times, whole
-- amounts); a spend key "usd" or "usd expires_at" (%.17g). Anything else there
-- is an error (the caller sees a failed call), never silently read.
local function finite(x) return x ~= nil and x == x and x ~= 1 / 0 and x ~= -1 / 0 end

local function load(key)
  local ts, as = {}, {}
  local raw = redis.call('GET', key)
  if raw then
    local t = nil
    for word in string.gmatch(raw, '%S+') do
      local x = tonumber(word)
      if not finite(x) then error('sansproxy: not a limiter state under ' .. key) end
      if t == nil then
        if #ts > 0 and x < ts[#ts] then error('sansproxy: not a limiter state under ' .. key) end
        t = x
      else
        if x < 1 or x ~= math.floor(x) then
          error('sansproxy: not a limiter state under ' .. key)
        end
        ts[#ts + 1] = t
        as[#as + 1] = x
        t = nil
      end
    end
    if t ~= nil then error('sansproxy: not a limiter state under ' .. key) end
  end
  return ts, as
end

-- _prune: the key's time and its live entries (copied)
local function prune(ts, as, window, now)
  local eff = now
  local m = #ts
  if m > 0 and ts[m] > eff then eff = ts[m] end
  local first = 1
  while first <= m and ts[first] + window <= eff do first = first + 1 end
  local lt, la = {}, {}
  for j = first, m do
    lt[#lt + 1] = ts[j]
    la[#la + 1] = as[j]
  end
  return eff, lt, la
end

-- _record: into the newest entry if it is in the same slot
local function record(ts, as, eff, amount, window, slots)
  local slot = window / slots
  local m = #ts
  if m > 0 and math.floor(ts[m] / slot) == math.floor(eff / slot) then
    ts[m] = eff
    as[m] = as[m] + amount
  else
    ts[m + 1] = eff
    as[m + 1] = amount
  end
end

-- _refund: from the charge's slot, then older entries; drop empties
local function refund(ts, as, amount, charged_at, window, slots)
  local slot = window / slots
  local cap = math.floor(charged_at / slot)
  for i = #ts, 1, -1 do
    if amount == 0 then break end
    if math.floor(ts[i] / slot) <= cap then
      local take = math.min(amount, as[i])
      as[i] = as[i] - take
      amount = amount - take
    end
  end
  local kt, ka = {}, {}
  for i = 1, #ts do
    if as[i] > 0 then
      kt[#kt + 1] = ts[i]
      ka[#ka + 1] = as[i]
    end
  end
  return kt, ka
end

-- SET ... PX (= PEXPIRE) window + 1 s from each write: garbage collection only,
-- as the scripts prune by time themselves; the extra second absorbs clock skew.
local function store(key, ts, as, window)
  local m = #ts
  if m == 0 then
    redis.call('DEL', key)
    return
  end
  local parts = {}
  for j = 1, m do parts[j] = string.format('%.17g %d', ts[j], as[j]) end
  local ttl = math.ceil((window + 1) * 1000)
  redis.call('SET', key, table.concat(parts, ' '), 'PX', string.format('%d', ttl))
end

local function num(x) return string.format('%.17g', x) end

-- _check: whether amount fits; retry_at nil when it does (_verdict). Writes nothing.
local function check(key, limit, window, amount, now)
  local c = {limit = limit, window = window, amount = amount}
  local ts, as = load(key)
  c.eff, c.ts, c.as = prune(ts, as, window, now)
  c.used = 0
  for j = 1, #c.as do c.used = c.used + c.as[j] end
  if amount > limit then
    c.retry_at = 1 / 0
  elseif c.used + amount > limit then
    local j, freed = 0, 0
    while c.used - freed + amount > limit do
      j = j + 1
      freed = freed + c.as[j]
    end
    c.retry_at = c.ts[j] + window
  end
  return c
end

-- _finish: charge if the request is allowed; append used, reset_at, retry_at to
-- the reply (the Decision is made in Python).
local function finish(key, c, allowed, now, slots, reply)
  if allowed and c.amount > 0 then
    record(c.ts, c.as, c.eff, c.amount, c.window, slots)
    c.used = c.used + c.amount
    store(key, c.ts, c.as, c.window)
  end
  local reset_at = now
  if #c.ts > 0 then reset_at = c.ts[#c.ts] + c.window end
  reply[#reply + 1] = c.used
  reply[#reply + 1] = num(reset_at)
  reply[#reply + 1] = num(c.retry_at or now)
end

-- adjust: correct one key's charge; the usage left in its window
local function adjust(key, window, delta, charged_at, now, slots)
  local ts0, as0 = load(key)
  local eff, ts, as = prune(ts0, as0, window, now)
  if delta > 0 then
    record(ts, as, eff, delta, window, slots)
  elseif delta < 0 then
    ts, as = refund(ts, as, -delta, charged_at, window, slots)
  end
  store(key, ts, as, window)
  local used = 0
  for i = 1, #as do used = used + as[i] end
  return used
end

-- _live_spend: the key's spend and expiry (nil: never), nothing once expired
local function load_spend(key, now)
  local raw = redis.call('GET', key)
  if not raw then return 0, nil end
  local words = {}
  for word in string.gmatch(raw, '%S+') do
    local x = tonumber(word)
    if not finite(x) then error('sansproxy: not a spend under ' .. key) end
    words[#words + 1] = x
  end
  if #words < 1 or #words > 2 then error('sansproxy: not a spend under ' .. key) end
  local expires = words[2]
  if expires ~= nil and expires <= now then return 0, nil end
  return words[1], expires
end

-- _add_spend: a ttl sets the expiry to now + ttl; PX a second later (GC only)
local function add_spend(key, usd, ttl, now)
  local total, expires = load_spend(key, now)
  total = total + usd
  if ttl ~= nil then expires = now + ttl end
  if expires ~= nil then
    local px = math.ceil((expires - now + 1) * 1000)
    redis.call('SET', key, num(total) .. ' ' .. num(expires), 'PX', string.format('%d', px))
  else
    redis.call('SET', key, num(total))
  end
end
"""

REDIS_ACQUIRE_SCRIPT = (
    _LUA_COMMON
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
    _LUA_COMMON
    + """
-- adjust one key. KEYS[1]: the state. ARGV: now, SLOTS, window, delta, charged_at
-- (see redis_adjust_args()). Reply: the usage left in the window (integer).
return adjust(KEYS[1], tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]),
              tonumber(ARGV[1]), tonumber(ARGV[2]))
"""
)

REDIS_QUOTA_SCRIPT = (
    _LUA_COMMON
    + """
-- quota: acquire over the limiter keys, all or nothing, and only if every budget
-- has money left (MemoryLimiter.quota). KEYS: n limiter keys (distinct), then one
-- spend key per budget (Redis Cluster: all under one {hash tag}).
-- ARGV[1] now, ARGV[2] SLOTS, ARGV[3] n; for charge i, ARGV[3i+1], ARGV[3i+2],
-- ARGV[3i+3]: limit, window, amount; then for budget j, ARGV[3n+3+j]: its usd.
-- See redis_quota_args(). Reply: {admitted 1|0, per charge: used, reset_at,
-- retry_at, then per budget: its spend (%.17g)}. A refusal writes nothing.
local now = tonumber(ARGV[1])
local slots = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local checked = {}
local allowed = true
local spent = {}
for j = 1, #KEYS - n do
  spent[j] = load_spend(KEYS[n + j], now)
  if not (spent[j] < tonumber(ARGV[3 * n + 3 + j])) then allowed = false end
end
for i = 1, n do
  checked[i] = check(KEYS[i], tonumber(ARGV[3 * i + 1]), tonumber(ARGV[3 * i + 2]),
                     tonumber(ARGV[3 * i + 3]), now)
  if checked[i].retry_at ~= nil then allowed = false end
end
local reply = {allowed and 1 or 0}
for i = 1, n do finish(KEYS[i], checked[i], allowed, now, slots, reply) end
for j = 1, #KEYS - n do reply[#reply + 1] = num(spent[j]) end
return reply
"""
)

REDIS_SETTLE_SCRIPT = (
    _LUA_COMMON
    + """
-- settle: what an exchange really used (MemoryLimiter.settle). KEYS: n limiter
-- keys to adjust, then one spend key per spend. ARGV[1] now, ARGV[2] SLOTS,
-- ARGV[3] n; for adjustment i, ARGV[3i+1], ARGV[3i+2], ARGV[3i+3]: window,
-- delta, charged_at; for spend j, ARGV[3n+2+2j], ARGV[3n+3+2j]: usd and ttl
-- ('' for none). See redis_settle_args(). Reply: nil.
local now = tonumber(ARGV[1])
local slots = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
for i = 1, n do
  adjust(KEYS[i], tonumber(ARGV[3 * i + 1]), tonumber(ARGV[3 * i + 2]),
         tonumber(ARGV[3 * i + 3]), now, slots)
end
for j = 1, #KEYS - n do
  add_spend(KEYS[n + j], tonumber(ARGV[3 * n + 2 + 2 * j]), tonumber(ARGV[3 * n + 3 + 2 * j]), now)
end
return nil
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


def redis_quota_args(
    charges: Iterable[tuple[str, Limit, int]],
    budgets: Iterable[tuple[str, float]],
    *,
    now: float,
) -> tuple[list[str], list[str]]:
    """KEYS and ARGV for :data:`REDIS_QUOTA_SCRIPT`, from :meth:`MemoryLimiter.quota`'s
    arguments (checked as it checks them)."""
    charges = _distinct(charges)
    keys = [key for key, _, _ in charges]
    args = [repr(_finite("now", now)), str(SLOTS), str(len(charges))]
    for _, limit, amount in charges:
        args += (str(limit.limit), repr(limit.window), str(_integer("amount", amount, minimum=0)))
    for key, usd in budgets:
        keys.append(key)
        args.append(repr(_budget(usd)))
    return keys, args


def _not_nan(x: float) -> float:
    if math.isnan(x):
        raise ValueError("nan")
    return x


def redis_quota_answer(
    reply: object,
    charges: Sequence[tuple[str, Limit, int]],
    budgets: Sequence[tuple[str, float]],
    *,
    now: float,
) -> tuple[bool, list[Decision], list[float]]:
    """:data:`REDIS_QUOTA_SCRIPT`'s reply as :meth:`MemoryLimiter.quota` answers;
    ``ValueError`` on anything the script would not return."""
    size = 1 + 3 * len(charges) + len(budgets)
    if not isinstance(reply, list) or len(reply) != size:
        raise ValueError(f"not a quota reply for {len(charges)} charges: {reply!r}")
    if any(isinstance(x, list) for x in reply) or reply[0] not in (0, 1):
        raise ValueError(f"not a quota reply: {reply!r}")
    allowed = reply[0] == 1
    try:
        decisions = [
            _decision(
                limit,
                now,
                allowed=allowed,
                used=int(reply[1 + 3 * i]),
                reset_at=_finite("reset_at", float(reply[2 + 3 * i])),
                retry_at=_not_nan(float(reply[3 + 3 * i])),
            )
            for i, (_, limit, _) in enumerate(charges)
        ]
        spent = [_finite("spend", float(x)) for x in reply[1 + 3 * len(charges) :]]
    except (TypeError, ValueError):
        raise ValueError(f"not a quota reply: {reply!r}") from None
    return allowed, decisions, spent


def redis_settle_args(
    adjustments: Iterable[tuple[str, Limit, int, float]],
    spends: Iterable[tuple[str, float, float | None]],
    *,
    now: float,
) -> tuple[list[str], list[str]]:
    """KEYS and ARGV for :data:`REDIS_SETTLE_SCRIPT`, from :meth:`MemoryLimiter.settle`'s
    arguments (checked as it checks them)."""
    adjustments = list(adjustments)
    keys = [key for key, _, _, _ in adjustments]
    args = [repr(_finite("now", now)), str(SLOTS), str(len(adjustments))]
    for _, limit, delta, charged_at in adjustments:
        args += (
            repr(limit.window),
            str(_integer("delta", delta, minimum=None)),
            repr(_finite("charged_at", charged_at)),
        )
    for key, usd, ttl in spends:
        keys.append(key)
        life = _ttl(ttl)
        args += (repr(_finite("usd", usd)), "" if life is None else repr(life))
    return keys, args
