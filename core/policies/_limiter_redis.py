"""The rate limiter in Redis: the Lua scripts the store runs, their arguments and answers.

The scripts are a line-by-line transcription of the Python of
``core.policies._limiter`` (the algorithm, its guarantee and its budgets are
explained there), run atomically: :data:`REDIS_QUOTA_SCRIPT` does what
:meth:`MemoryLimiter.quota` does, :data:`REDIS_SETTLE_SCRIPT` what
:meth:`MemoryLimiter.settle` does, on the same data (:meth:`LimiterState.encode`).
:data:`REDIS_SETTLE_MANY_SCRIPT` applies many settles in one call (a store's
settle thread sends what has queued up as one batch: one round trip), each as
:data:`REDIS_SETTLE_SCRIPT` would, and says which failed.
Each helper of :data:`LUA_PRELUDE` names its Python twin; the tests hold the
scripts, on a real server, to the reference functions of
``tests/support/limiter_reference.py``.

Times and spend travel as ``%.17g`` text, so both sides do the same
double-precision arithmetic and decide identically. (Not INCRBYFLOAT: it adds
in long double and prints 17 fixed decimals, so its sums differ from Python's
in the last places and amounts under 1e-17 vanish.)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from math import isfinite as _isfinite
from math import isnan as _isnan

from .._quota import Decision, Limit
from .._quota import finite as _finite
from .._quota import integer as _integer
from ._limiter import SLOTS
from ._limiter import budget as _budget
from ._limiter import decision as _decision
from ._limiter import distinct as _distinct
from ._limiter import spend_ttl as _ttl

__all__ = [
    "LUA_PRELUDE",
    "REDIS_QUOTA_SCRIPT",
    "REDIS_SETTLE_MANY_SCRIPT",
    "REDIS_SETTLE_SCRIPT",
    "redis_quota_answer",
    "redis_quota_args",
    "redis_settle_args",
    "redis_settle_group",
    "redis_settle_many_answer",
    "redis_settle_many_args",
]

#: The helpers every script starts with; a script is this prelude and its main chunk.
LUA_PRELUDE = """
-- sansproxy limiter: a transcription of the Python (core/policies/_limiter.py). The
-- names below (_prune, _check ...) are those of the reference functions the tests
-- hold both to (tests/support/limiter_reference.py).
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

REDIS_QUOTA_SCRIPT = (
    LUA_PRELUDE
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
    LUA_PRELUDE
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


REDIS_SETTLE_MANY_SCRIPT = (
    LUA_PRELUDE
    + """
-- settle many: a batch of settles, each applied as the settle script applies it,
-- in order; a settle that fails (a malformed state, a key of another type) leaves
-- the others alone. KEYS: each settle's keys in turn (its n limiter keys, then its
-- m spend keys). ARGV[1] SLOTS, ARGV[2] the number of settles, then per settle:
-- now, n, m, then for adjustment i: window, delta, charged_at, then for spend j:
-- usd and ttl ('' for none). See redis_settle_many_args(). Reply: per settle, 1
-- if applied, else the error's text.
local slots = tonumber(ARGV[1])
local count = tonumber(ARGV[2])
local k, a = 0, 2
local reply = {}
for s = 1, count do
  local now, n, m = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  local ok, err = pcall(function()
    for i = 1, n do
      local b = a + 3 * i
      adjust(KEYS[k + i], tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3]),
             now, slots)
    end
    for j = 1, m do
      local b = a + 3 + 3 * n + 2 * (j - 1)
      add_spend(KEYS[k + n + j], tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2]), now)
    end
  end)
  if ok then
    reply[s] = 1
  elseif type(err) == 'table' then
    reply[s] = tostring(err.err)
  else
    reply[s] = tostring(err)
  end
  k = k + n + m
  a = a + 3 + 3 * n + 2 * m
end
return reply
"""
)


_SLOTS = str(SLOTS)


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
    if now.__class__ is not float or not _isfinite(now):
        now = _finite("now", now)
    args = [repr(now), _SLOTS, str(len(charges))]
    for _, limit, asked in charges:
        amount = asked
        if amount.__class__ is not int or amount < 0:
            amount = _integer("amount", amount, minimum=0)
        args += (str(limit.limit), repr(limit.window), str(amount))
    for key, usd in budgets:
        keys.append(key)
        args.append(repr(_budget(usd)))
    return keys, args


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
    if reply[0] not in (0, 1):
        raise ValueError(f"not a quota reply: {reply!r}")
    allowed = reply[0] == 1
    # int() and float() refuse what is not a number.
    decisions = []
    try:
        i = 1
        for _, limit, _ in charges:
            used = int(reply[i])
            reset_at = float(reply[i + 1])
            retry_at = float(reply[i + 2])
            i += 3
            if not _isfinite(reset_at) or _isnan(retry_at):
                raise ValueError
            decisions.append(
                _decision(
                    limit, now, allowed=allowed, used=used, reset_at=reset_at, retry_at=retry_at
                )
            )
        spent = [float(x) for x in reply[i:]]
        if not all(map(_isfinite, spent)):
            raise ValueError
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


def redis_settle_group(
    adjustments: Iterable[tuple[str, Limit, int, float]],
    spends: Iterable[tuple[str, float, float | None]],
    *,
    now: float,
) -> tuple[list[str], list[str]]:
    """One settle's KEYS and ARGV within :data:`REDIS_SETTLE_MANY_SCRIPT`'s, from
    :meth:`MemoryLimiter.settle`'s arguments (checked as it checks them)."""
    adjustments = list(adjustments)
    spends = list(spends)
    keys = [key for key, _, _, _ in adjustments]
    args = [repr(_finite("now", now)), str(len(adjustments)), str(len(spends))]
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


def redis_settle_many_args(
    groups: Sequence[tuple[list[str], list[str]]],
) -> tuple[list[str], list[str]]:
    """KEYS and ARGV for :data:`REDIS_SETTLE_MANY_SCRIPT`: the settles of
    :func:`redis_settle_group`, in order."""
    keys: list[str] = []
    args = [str(SLOTS), str(len(groups))]
    for group_keys, group_args in groups:
        keys += group_keys
        args += group_args
    return keys, args


def redis_settle_many_answer(reply: object, count: int) -> list[str | None]:
    """:data:`REDIS_SETTLE_MANY_SCRIPT`'s reply for ``count`` settles: per settle,
    ``None`` if it was applied, else why not; ``ValueError`` on anything else."""
    if not isinstance(reply, list) or len(reply) != count:
        raise ValueError(f"not a settle reply for {count} settles: {reply!r:.200}")
    out: list[str | None] = []
    for item in reply:
        if item == 1 and item.__class__ is int:
            out.append(None)
        elif isinstance(item, bytes | str):
            text = item.decode(errors="replace") if isinstance(item, bytes) else item
            out.append(text or "an error without a message")
        else:
            raise ValueError(f"not a settle reply: {reply!r:.200}")
    return out
