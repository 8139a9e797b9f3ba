"""Rate limits: the algorithm behind ``rate_limit``, and its memory backend.

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

Correction at completion (:meth:`MemoryLimiter.adjust`): a positive ``delta`` is
recorded at ``now``, like a new charge (even over the limit: the usage happened;
later requests wait). A refund is taken from the charge's own slot, then from older
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

The Redis backend runs the same algorithm as atomic Lua scripts, and decides
identically: see ``core.policies._limiter_redis``. Both are checked against the
tuple-based reference functions of ``tests/support/limiter_reference.py``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from itertools import pairwise
from math import isfinite as _isfinite
from typing import Any, cast

from .._frozen import unchecked
from .._quota import Decision, Limit, Verdict
from .._quota import finite as _finite
from .._quota import integer as _integer

__all__ = [
    "SLOTS",
    "SWEEP_EVERY",
    "Decision",
    "Limit",
    "LimiterState",
    "MemoryLimiter",
    "Verdict",
    "budget",
    "decision",
    "distinct",
    "spend_ttl",
]

#: Uses of a limiter between two sweeps, at least (:meth:`MemoryLimiter.tick`).
SWEEP_EVERY = 1024

SLOTS = 60  # entries per window at most (+1): the log's resolution is window / SLOTS

# A Decision built through its slots (quota() builds one per limit per request);
# Decision validates nothing (tests/core/test_limiter.py holds the two ways to
# the same value).
_decision = unchecked(Decision)


_verdict = partial(tuple.__new__, Verdict)

_MAX_TTL = 1e10  # seconds: a spend's time to live at most (Redis's PX must be an integer)


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


# --- a verdict, as both backends report it ------------------------------------------


def _after(now: float, at: float) -> float:
    """``at - now``, rounded up so that ``now + result >= at`` holds in floats too."""
    wait = at - now
    while now + wait < at:
        wait = math.nextafter(wait, math.inf)
    return wait


def decision(
    limit: Limit, now: float, *, allowed: bool, used: int, reset_at: float, retry_at: float
) -> Decision:
    """One limit's :class:`Decision` from the usage left and the times found."""
    return _decision(
        allowed=allowed,
        limit=limit.limit,
        remaining=max(0, limit.limit - used),
        reset_after=max(0.0, reset_at - now),
        retry_after=0.0 if allowed else _after(now, retry_at),
    )


# --- spend: a float sum per key, with an optional expiry --------------------------

_Spend = tuple[float, float]  # (USD, expires at; inf: never)
_NO_SPEND: _Spend = (0.0, math.inf)


def budget(usd: float) -> float:
    """A budget's amount: a number, ``inf`` included (it only reports the spend)."""
    if isinstance(usd, bool) or not isinstance(usd, (int, float)) or math.isnan(usd):
        raise ValueError(f"a budget's usd must be a number, not {usd!r}")
    return float(usd)


def spend_ttl(ttl: float | None) -> float | None:
    """A spend's time to live: ``None`` (none), or seconds in (0, ``_MAX_TTL``]."""
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


def distinct(charges: Iterable[tuple[str, Limit, int]]) -> list[tuple[str, Limit, int]]:
    """The charges of one request, in a list; ``ValueError`` if two share a key."""
    charges = list(charges)
    if len(charges) > 1 and len({charge[0] for charge in charges}) != len(charges):
        keys = [key for key, _, _ in charges]
        raise ValueError(f"the charges of one request need distinct keys, not {keys!r}")
    return charges


class _Log:
    """One key's log in memory: the entries of a ``LimiterState`` in lists, and their sum.

    Mutable, so that a request costs O(1) amortised instead of rebuilding tuples of
    up to ``SLOTS`` entries; the arithmetic is that of the tuple-based reference
    functions (``_prune``, ``_record``, ``_refund``, ``_verdict`` in
    ``tests/support/limiter_reference.py``), step for step (the tests hold
    ``MemoryLimiter`` to them and to the Redis scripts).
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

    __slots__ = ("_spends", "_states", "_until_sweep")

    def __init__(self) -> None:
        self._states: dict[str, _Log] = {}
        self._spends: dict[str, _Spend] = {}
        self._until_sweep = SWEEP_EVERY

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
        """Admit and charge ``amount`` if it fits in the key's window, else refuse and
        charge nothing. ``amount=0`` only looks: it is allowed unless usage is over
        the limit (after a positive :meth:`adjust`)."""
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
        charges = distinct(charges)
        if now.__class__ is not float or not _isfinite(now):
            now = _finite("now", now)
        for _, _, amount in charges:
            if amount.__class__ is not int or amount < 0:
                _integer("amount", amount, minimum=0)
        budgets = [(key, budget(usd)) for key, usd in budgets]
        allowed, decisions, spent = self._quota(charges, budgets, now, decide=True)
        return allowed, cast("list[Decision]", decisions), spent

    def _quota(
        self,
        charges: Sequence[tuple[str, Limit, int]],
        budgets: Sequence[tuple[str, float]],
        now: float,
        *,
        decide: bool = False,
    ) -> tuple[bool, list[Verdict] | list[Decision], list[float]]:
        """:meth:`quota` without its checks: for callers whose charges and budgets are
        made of checked parts (the ``rate_limit`` middleware's, from the config):
        distinct keys, whole amounts >= 0, budgets that are numbers, a finite ``now``.
        Each limit's verdict is a :class:`Verdict` (its decision but ``allowed``), or
        with ``decide`` its :class:`Decision`."""
        # Every limited request's hot path: look, then charge if all fit (records inlined).
        allowed = True
        spent = []
        if budgets:
            spends = self._spends
            for key, usd in budgets:
                entry = spends.get(key)
                total = 0.0 if entry is None or entry[1] <= now else entry[0]
                spent.append(total)
                if not total < usd:
                    allowed = False
        states = self._states
        found: list[tuple[_Log | None, float, int, int]] = []
        for key, limit, amount in charges:
            log = states.get(key)
            if log is None:
                found.append((None, now, 0, 0))
                if amount > limit.limit:
                    allowed = False
                continue
            # log.peek, inlined (a log kept in _states is never empty)
            times = log.times
            eff = times[-1] if times[-1] > now else now
            used = log.used
            first = 0
            window = limit.window
            if times[0] + window <= eff:  # entries have left the window
                n = len(times)
                amounts = log.amounts
                while first < n and times[first] + window <= eff:
                    used -= amounts[first]
                    first += 1
            found.append((log, eff, first, used))
            if used + amount > limit.limit:
                allowed = False
        decisions: list[Any] = []
        for (key, limit, amount), (found_log, eff, first, live) in zip(charges, found, strict=True):
            window = limit.window
            most = limit.limit
            log = found_log
            used = live
            retry_after = 0.0
            if allowed and amount:
                if log is None:
                    log = states[key] = _Log(window)
                    times, amounts = log.times, log.amounts
                    times.append(eff)
                    amounts.append(amount)
                else:
                    times, amounts = log.times, log.amounts
                    if first:  # log.drop, inlined
                        del times[:first]
                        del amounts[:first]
                    # log.record, inlined: into the newest entry if it is in eff's slot
                    slot = window / SLOTS
                    if times and math.floor(times[-1] / slot) == math.floor(eff / slot):
                        times[-1] = eff
                        amounts[-1] += amount
                    else:
                        times.append(eff)
                        amounts.append(amount)
                    log.window = window
                used += amount
                log.used = used
                # > 0: a live entry is still in the window at the key's time, >= now
                reset_after = times[-1] + window - now
            else:
                if log is not None and len(log.times) > first:
                    reset_after = log.times[-1] + window - now
                else:
                    reset_after = 0.0
                if not allowed:
                    retry_at = now
                    if used + amount > most:
                        retry_at = (
                            math.inf if log is None else log.retry_at(first, used, limit, amount)
                        )
                    retry_after = _after(now, retry_at)
            left = most - used if used < most else 0
            decisions.append(
                _decision(
                    allowed=allowed,
                    limit=most,
                    remaining=left,
                    reset_after=reset_after,
                    retry_after=retry_after,
                )
                if decide
                else _verdict((most, left, reset_after, retry_after))
            )
        return allowed, decisions, spent

    def adjust(self, key: str, limit: Limit, *, now: float, delta: int, charged_at: float) -> None:
        """Correct a charge made up front with what was really used: ``delta`` > 0 charges
        more, < 0 refunds (never below zero usage). ``charged_at`` is the ``now`` the
        charge was acquired with: the refund comes from its slot's entry, then older
        ones (never newer).

        Call it once per charge: every call applies.
        """
        now = _finite("now", now)
        charged_at = _finite("charged_at", charged_at)
        _integer("delta", delta, minimum=None)
        self._adjust(key, limit, now, delta, charged_at)

    def _adjust(self, key: str, limit: Limit, now: float, delta: int, charged_at: float) -> None:
        window = limit.window
        log = self._states.get(key)
        if log is not None and delta < 0:
            # Most refunds: nothing has left the window, and the newest entry is in
            # the charge's slot (or older) and holds more than the refund.
            times, amounts = log.times, log.amounts
            last = times[-1]
            slot = window / SLOTS
            if (
                times[0] + window > (last if last > now else now)
                and amounts[-1] > -delta
                and math.floor(last / slot) <= math.floor(charged_at / slot)
            ):
                amounts[-1] += delta
                log.used += delta
                log.window = window
                return
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
            self._spends.get(key), _finite("usd", usd), _finite("now", now), spend_ttl(ttl)
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
        if now.__class__ is not float or not _isfinite(now):
            now = _finite("now", now)
        todo = []
        for key, limit, delta, charged_at in adjustments:
            if delta.__class__ is not int:
                _integer("delta", delta, minimum=None)
            at = charged_at
            if at.__class__ is not float or not _isfinite(at):
                at = _finite("charged_at", at)
            todo.append((key, limit, delta, at))
        money = [(key, _finite("usd", usd), spend_ttl(ttl)) for key, usd, ttl in spends]
        self._settle(todo, money, now)

    def _settle(
        self,
        adjustments: Sequence[tuple[str, Limit, int, float]],
        spends: Sequence[tuple[str, float, float | None]],
        now: float,
    ) -> None:
        """:meth:`settle` without its checks (whole deltas, finite times and amounts)."""
        for key, limit, delta, at in adjustments:
            self._adjust(key, limit, now, delta, at)
        for key, usd, ttl in spends:
            self._spends[key] = _add_spend(self._spends.get(key), usd, now, ttl)

    def snapshot(self, key: str, limit: Limit, *, now: float) -> Decision:
        """The key's current standing (a zero-amount look), for the admin view."""
        return self.acquire(key, limit, now=now, amount=0)

    def tick(self, *, now: float) -> None:
        """Count one use (an acquire or a settle): every ``SWEEP_EVERY`` uses, or as
        many as keys held if more, :meth:`sweep`. One look at every key per as many
        uses as keys: O(1) a use, and keys whose usage has left its window never
        pile up."""
        self._until_sweep -= 1
        if self._until_sweep <= 0:
            self.sweep(now=now)
            self._until_sweep = max(SWEEP_EVERY, len(self))

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
