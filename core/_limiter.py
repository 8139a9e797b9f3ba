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

The Redis scripts below are a line-by-line transcription of the Python, run
atomically; times travel as ``%.17g`` text, so both sides do the same
double-precision arithmetic and decide identically.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import pairwise

__all__ = [
    "REDIS_ACQUIRE_SCRIPT",
    "REDIS_ADJUST_SCRIPT",
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
]

SLOTS = 60  # entries per window at most (+1): the log's resolution is window / SLOTS

_Entries = tuple[tuple[float, ...], tuple[int, ...]]


def _finite(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, not {value!r}")
    return float(value)


def _integer(name: str, value: int, *, minimum: int | None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, not {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, not {value!r}")
    return value


@dataclass(frozen=True, slots=True, kw_only=True)
class Limit:
    """At most ``limit`` (requests or tokens) in any ``window`` seconds. Don't subclass."""

    limit: int
    window: float = 60.0

    def __post_init__(self) -> None:
        _integer("Limit.limit", self.limit, minimum=1)
        window = _finite("Limit.window", self.window)
        if window <= 0:
            raise ValueError(f"Limit.window must be > 0, not {self.window!r}")
        object.__setattr__(self, "window", window)


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    """One limit's verdict, in seconds: what ``x-ratelimit-*`` and ``Retry-After`` need.

    ``allowed``: the request was admitted and charged (with ``acquire_all``: by
    every limit, so all its decisions agree). ``remaining``: what is
    left in the window after it, in [0, limit]. ``reset_after``: until all usage
    has left the window. ``retry_after``: 0 when allowed; else the wait after
    which the same request is admitted if nothing else arrives -- ``math.inf``
    when its amount exceeds ``limit`` itself (it never fits), and 0 for a limit
    that had room when another limit of the same request refused it.
    """

    allowed: bool
    limit: int
    remaining: int
    reset_after: float
    retry_after: float


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


class MemoryLimiter:
    """Limiter states in a dict keyed by string: the ``memory`` backend, one per process.

    Pure data manipulation, no locks: the driver calls it from one event loop.
    """

    __slots__ = ("_states",)

    def __init__(self) -> None:
        self._states: dict[str, tuple[LimiterState, float]] = {}  # key -> (state, expires at)

    def _store(self, key: str, state: LimiterState, window: float) -> None:
        if state.times:
            self._states[key] = (state, state.times[-1] + window)
        else:
            self._states.pop(key, None)

    def get(self, key: str) -> LimiterState | None:
        """The key's state as stored (not pruned), ``None`` if it has none."""
        entry = self._states.get(key)
        return None if entry is None else entry[0]

    def acquire(self, key: str, limit: Limit, *, now: float, amount: int = 1) -> Decision:
        """:func:`acquire` on the key's state, kept."""
        now = _finite("now", now)
        checked = _check(self.get(key), limit, now, amount)
        allowed = checked[3] is None
        state, decision = _finish(checked, limit, amount, now, allowed=allowed)
        if allowed and amount:
            self._store(key, state, limit.window)
        return decision

    def acquire_all(
        self, requests: Iterable[tuple[str, Limit, int]], *, now: float
    ) -> list[Decision]:
        """Several limits for one request (rpm and tpm, per key and per model), all or
        nothing: each is charged only if all have room. Keys must be distinct."""
        requests = list(requests)
        keys = [key for key, _, _ in requests]
        if len(set(keys)) != len(keys):
            raise ValueError(f"acquire_all needs distinct keys, not {keys!r}")
        now = _finite("now", now)
        checks = [_check(self.get(key), limit, now, amount) for key, limit, amount in requests]
        allowed = all(checked[3] is None for checked in checks)
        decisions = []
        for (key, limit, amount), checked in zip(requests, checks, strict=True):
            state, decision = _finish(checked, limit, amount, now, allowed=allowed)
            if allowed and amount:
                self._store(key, state, limit.window)
            decisions.append(decision)
        return decisions

    def adjust(self, key: str, limit: Limit, *, now: float, delta: int, charged_at: float) -> None:
        """:func:`adjust` on the key's state, kept."""
        state = adjust(self.get(key), limit, now=now, delta=delta, charged_at=charged_at)
        self._store(key, state, limit.window)

    def snapshot(self, key: str, limit: Limit, *, now: float) -> Decision:
        """The key's current standing (a zero-amount look), for the admin view."""
        return acquire(self.get(key), limit, now=now, amount=0)[1]

    def sweep(self, *, now: float) -> int:
        """Forget keys whose usage has all left its window (Redis's PEXPIRE); how many."""
        gone = [key for key, (_, expires) in self._states.items() if expires <= now]
        for key in gone:
            del self._states[key]
        return len(gone)


# --- Redis: the same algorithm as atomic Lua scripts --------------------------------

_LUA_COMMON = """
-- sansproxy limiter (core/_limiter.py): a transcription of its Python helpers.
-- A key holds LimiterState.encode(): "t0 a0 t1 a1 ..." (%.17g times, whole amounts).
local function load(key)
  local ts, as = {}, {}
  local raw = redis.call('GET', key)
  if raw then
    local t = nil
    for word in string.gmatch(raw, '%S+') do
      if t == nil then
        t = tonumber(word)
      else
        ts[#ts + 1] = t
        as[#as + 1] = tonumber(word)
        t = nil
      end
    end
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
for i = 1, #KEYS do  -- _check, each key
  local c = {limit = tonumber(ARGV[3 * i]), window = tonumber(ARGV[3 * i + 1]),
             amount = tonumber(ARGV[3 * i + 2])}
  local ts, as = load(KEYS[i])
  c.eff, c.ts, c.as = prune(ts, as, c.window, now)
  c.used = 0
  for j = 1, #c.as do c.used = c.used + c.as[j] end
  -- _verdict: retry_at nil when the amount fits now
  if c.amount > c.limit then
    c.retry_at = 1 / 0
  elseif c.used + c.amount > c.limit then
    local j, freed = 0, 0
    while c.used - freed + c.amount > c.limit do
      j = j + 1
      freed = freed + c.as[j]
    end
    c.retry_at = c.ts[j] + c.window
  end
  if c.retry_at ~= nil then allowed = false end
  checked[i] = c
end
local reply = {allowed and 1 or 0}
for i = 1, #KEYS do  -- _finish, each key (the Decision is made in Python: redis_decisions)
  local c = checked[i]
  if allowed and c.amount > 0 then
    record(c.ts, c.as, c.eff, c.amount, c.window, slots)
    c.used = c.used + c.amount
    store(KEYS[i], c.ts, c.as, c.window)
  end
  local reset_at = now
  if #c.ts > 0 then reset_at = c.ts[#c.ts] + c.window end
  reply[#reply + 1] = c.used
  reply[#reply + 1] = num(reset_at)
  reply[#reply + 1] = num(c.retry_at or now)
end
return reply
"""
)

REDIS_ADJUST_SCRIPT = (
    _LUA_COMMON
    + """
-- adjust one key. KEYS[1]: the state. ARGV: now, SLOTS, window, delta, charged_at
-- (see redis_adjust_args()). Reply: the usage left in the window (integer).
local now = tonumber(ARGV[1])
local slots = tonumber(ARGV[2])
local window = tonumber(ARGV[3])
local delta = tonumber(ARGV[4])
local charged_at = tonumber(ARGV[5])
local ts0, as0 = load(KEYS[1])
local eff, ts, as = prune(ts0, as0, window, now)
if delta > 0 then
  record(ts, as, eff, delta, window, slots)
elseif delta < 0 then
  -- _refund: from the charge's slot, then older entries; drop empties
  local slot = window / slots
  local cap = math.floor(charged_at / slot)
  local amount = -delta
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
  ts, as = kt, ka
end
store(KEYS[1], ts, as, window)
local used = 0
for i = 1, #as do used = used + as[i] end
return used
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
