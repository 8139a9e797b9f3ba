"""The ``rate_limit`` built-in: requests and tokens per minute, and budgets.

Per key (the ``rpm``, ``tpm`` and ``budget`` of the key's ``auth`` entry) and
per public model (``models: {name: {deployments: [...], limits: {rpm, tpm}}}``),
all checked and charged at once, all or nothing, by the driver's store (one
process in memory, or Redis shared by every worker and instance). The
algorithm and its guarantee (never more than the limit in any window) are in
``core.policies._limiter``.

Tokens are charged up front from an estimate -- the request's size in bytes
over four, plus the output it asks for at most (``max_tokens``,
``max_completion_tokens``, ``max_output_tokens``) -- and corrected once, when
the exchange is over, with the usage the upstream reported (refunded in full
if no upstream answered; kept as estimated if the usage is unknown).
Spend (the gateway's ``cost_usd``) is added to the key's budget for the
period the request started in. A budget is checked before the request: the
request that crosses it is served, the next ones get 429 ``insufficient_quota``.

Refusals are 429 ``rate_limit_exceeded`` with ``Retry-After`` (whole seconds,
rounded up) and ``x-ratelimit-*`` headers; admitted responses carry the
``x-ratelimit-*`` headers too, for the most constrained limit of each kind.
A store that cannot answer: ``on_backend_error: open`` admits the request
(logged as a warning), ``closed`` answers 503.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from math import isfinite
from typing import Literal

from .._commands import (
    AcquireQuota,
    BudgetCheck,
    Log,
    QuotaAdjustment,
    QuotaCharge,
    SettleQuota,
    SpendRecord,
)
from .._config import ProxyConfig
from .._errors import BudgetExceededError, ClientRateLimitError, ServiceUnavailableError
from .._events import QuotaAnswered, QuotaFailed
from .._frozen import unchecked
from .._middleware import Context
from .._quota import Decision, Limit, finite
from ._auth import ClientKey, budget_key, key_limits
from ._limiter import MemoryLimiter, Verdict

__all__ = ["RateLimitMiddleware", "estimate_tokens", "ratelimit_headers"]

_PENDING = "rate_limit:pending"
#: A request's limits: (kind, store key, limit), kind ``requests`` or ``tokens``.
_Limits = tuple[tuple[str, str, Limit], ...]
#: Its token limits: (store key, limit).
_TokenLimits = tuple[tuple[str, Limit], ...]
#: Its plan: its limits, its token limits, and the charge of each requests limit
#: (the same for every request; ``None`` for a tokens limit).
_Plan = tuple[_Limits, _TokenLimits, tuple[QuotaCharge | None, ...]]
# The commands' builders without their checks: built here from checked parts.
_charge = unchecked(QuotaCharge)
_acquire = unchecked(AcquireQuota)
_adjustment = unchecked(QuotaAdjustment)
_settle = unchecked(SettleQuota)
_PLANS_MAX = 4096
_OUTPUT_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens")


def estimate_tokens(body_size: int, body: dict[str, object] | None) -> int:
    """Tokens charged up front: ~4 bytes a token of request, plus the output asked for."""
    estimate = -(-body_size // 4)
    if body is not None:
        for field in _OUTPUT_FIELDS:
            value = body.get(field)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                estimate += value
                break
    return max(1, estimate)


def _duration(seconds: float) -> bytes:
    """OpenAI's reset format: ``20ms``, ``1s``, ``6m0s``."""
    if seconds < 1:
        return b"%dms" % math.ceil(seconds * 1000)
    whole = math.ceil(seconds)
    return _WHOLE_SECONDS.get(whole) or _whole_seconds(whole)


def _whole_seconds(whole: int) -> bytes:
    minutes, secs = divmod(whole, 60)
    return b"%dm%ds" % (minutes, secs) if minutes else b"%ds" % secs


#: The reset of each whole number of seconds up to two minutes (a window is a minute).
_WHOLE_SECONDS: dict[int, bytes] = {n: _whole_seconds(n) for n in range(1, 121)}


_WHAT = (b"limit", b"remaining", b"reset")


def ratelimit_headers(
    standing: dict[str, Decision | Verdict],
) -> list[tuple[bytes, bytes]]:
    """``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` for each kind known."""
    out = []
    for kind, (limit, remaining, reset) in _HEADER_NAMES:
        decision = standing.get(kind)
        if decision is None:
            continue
        out.append((limit, b"%d" % decision.limit))
        out.append((remaining, b"%d" % decision.remaining))
        out.append((reset, _duration(decision.reset_after)))
    return out


#: Each kind's header names, encoded once.
_HEADER_NAMES = tuple(
    (kind, tuple(b"x-ratelimit-%s-%s" % (what, kind.encode()) for what in _WHAT))
    for kind in ("requests", "tokens")
)


class _Charged:
    """What one exchange was charged: for the correction at its end (once)."""

    __slots__ = ("at", "headers", "settled", "spend_key", "token_limits", "tokens")

    def __init__(
        self,
        headers: list[tuple[bytes, bytes]],
        at: float,
        tokens: int,
        token_limits: tuple[tuple[str, Limit], ...],
        spend_key: tuple[str, float | None] | None,
    ) -> None:
        self.headers = headers
        self.at = at
        self.tokens = tokens
        self.token_limits = token_limits
        self.spend_key = spend_key
        self.settled = False


class RateLimitMiddleware:
    """The ``rate_limit`` built-in (no options of its own: limits live on keys and models)."""

    name = "rate_limit"

    def __init__(
        self,
        *,
        model_limits: dict[str, tuple[int | None, int | None]] | None = None,
        timeout: float = 0.25,
        on_backend_error: Literal["open", "closed"] = "open",
        limiter: MemoryLimiter | None = None,
    ) -> None:
        self._limiter = limiter
        # The limits of each (key, configured model or None), made once.
        self._plans: dict[tuple[ClientKey | None, str | None], _Plan] = {}
        self._models: dict[str, list[tuple[str, str, Limit]]] = {}
        for model, (rpm, tpm) in (model_limits or {}).items():
            limits = []
            if rpm is not None:
                limits.append(("requests", f"sansproxy:rl:model:{model}:rpm", Limit(limit=rpm)))
            if tpm is not None:
                limits.append(("tokens", f"sansproxy:rl:model:{model}:tpm", Limit(limit=tpm)))
            if limits:
                self._models[model] = limits
        self._timeout = timeout
        self._fail_open = on_backend_error == "open"

    @classmethod
    def from_config(
        cls, config: ProxyConfig, *, limiter: MemoryLimiter | None = None
    ) -> RateLimitMiddleware:
        """Per-model limits from ``models``; the store's timeout and fail mode from
        ``limits``; ``limiter``: see the class."""
        return cls(
            limiter=limiter,
            model_limits={
                name: (model.limits.rpm, model.limits.tpm)
                for name, model in config.models.items()
                if model.limits is not None
            },
            timeout=config.limits.store_timeout,
            on_backend_error=config.limits.on_backend_error,
        )

    def _limits_of(self, key: ClientKey | None, model: object) -> _Plan:
        """The limits of a request by ``key`` for ``model``: the key's, then the model's."""
        named = model if isinstance(model, str) and model in self._models else None
        plans = self._plans
        found = plans.get((key, named))
        if found is None:
            limits = (*(key_limits(key) if key else ()), *(self._models[named] if named else ()))
            tokens = tuple((where, limit) for kind, where, limit in limits if kind == "tokens")
            # A request's charge of each requests limit is always the same: made once.
            fixed = tuple(
                QuotaCharge(key=where, limit=limit, amount=1) if kind == "requests" else None
                for kind, where, limit in limits
            )
            found = (limits, tokens, fixed)
            if len(plans) >= _PLANS_MAX:  # keys a custom auth made per request, say
                plans.clear()
            plans[key, named] = found
        return found

    def on_request(self, exchange: Context) -> AcquireQuota | None:
        key: ClientKey | None = exchange.key if isinstance(exchange.key, ClientKey) else None
        body = exchange.request_json()
        limits, token_limits, fixed = self._limits_of(
            key, None if body is None else body.get("model")
        )
        at = exchange.wall_now
        spend: tuple[str, float | None] | None = None
        budgets: tuple[BudgetCheck, ...] = ()
        if key is not None and key.budget is not None:
            store_key, _, ttl = budget_key(key, at)
            spend = (store_key, ttl)
            budgets = (BudgetCheck(key=store_key, usd=key.budget.usd),)
        if not limits and not budgets:
            return None
        tokens = estimate_tokens(len(exchange.request_body), body) if token_limits else 0
        limiter = self._limiter
        if limiter is not None:  # answered here: no query, no round trip through the driver
            if at.__class__ is not float or not isfinite(at):
                at = finite("now", at)
            # Checked parts (the config's limits and budgets, a count, a finite time):
            # the limiter's unchecked entry.
            admitted, decisions, spent = limiter._quota(
                [
                    (where, limit, 1 if kind == "requests" else tokens)
                    for kind, where, limit in limits
                ],
                [(check.key, check.usd) for check in budgets] if budgets else (),
                at,
            )
            limiter.tick(now=at)
            self._admit(
                exchange, limits, token_limits, spend, tokens, at, admitted, decisions, spent
            )
            return None
        # Built from checked parts: the config's limits, a count, the exchange's clock.
        charges = tuple(
            _charge(key=where, limit=limit, amount=tokens) if charge is None else charge
            for (_, where, limit), charge in zip(limits, fixed, strict=True)
        )
        exchange.scratch[_PENDING, self] = (limits, token_limits, spend, tokens, at)
        return _acquire(
            query_id=exchange.new_query_id(),
            at=at,
            charges=charges,
            budgets=budgets,
            timeout=self._timeout,
        )

    def on_answer(self, exchange: Context, answer: QuotaAnswered | QuotaFailed) -> None:
        limits, token_limits, spend, tokens, at = exchange.scratch.pop((_PENDING, self))
        if isinstance(answer, QuotaFailed):
            if not self._fail_open:
                raise ServiceUnavailableError(
                    "rate limits cannot be checked now (the quota store is unavailable)",
                    headers=((b"retry-after", b"1"),),
                )
            exchange.emit(
                Log(
                    level="warning",
                    message="quota store unavailable: request admitted unmetered (fail open)",
                    fields={"exchange": exchange.exchange_id, "error": answer.message},
                )
            )
            return
        self._admit(
            exchange,
            limits,
            token_limits,
            spend,
            tokens,
            at,
            answer.admitted,
            answer.decisions,
            answer.spent,
        )

    def _admit(  # noqa: PLR0917 -- private: the answer's parts, from either path
        self,
        exchange: Context,
        limits: _Limits,
        token_limits: _TokenLimits,
        spend: tuple[str, float | None] | None,
        tokens: int,
        at: float,
        admitted: bool,
        decisions: Sequence[Decision | Verdict],
        spent: Sequence[float],
    ) -> None:
        """The limits' answer: refuse (raise), or keep what was charged for ``on_complete``."""
        standing: dict[str, Decision | Verdict] = {}
        for (kind, _, _), decision in zip(limits, decisions, strict=True):
            held = standing.get(kind)
            if held is None or decision.remaining < held.remaining:
                standing[kind] = decision
        headers = ratelimit_headers(standing)
        if not admitted:
            key = exchange.key
            if spend is not None and spent and spent[0] >= key.budget.usd:
                raise BudgetExceededError(
                    f"the key '{key.name}' has spent its budget of ${key.budget.usd:g} "
                    f"for this {key.budget.period}",
                    headers=((b"x-should-retry", b"false"),),
                )
            self._refuse(limits, decisions, headers)
        exchange.scratch[self] = _Charged(headers, at, tokens, token_limits, spend)

    def _refuse(
        self,
        limits: _Limits,
        decisions: Sequence[Decision | Verdict],
        headers: list[tuple[bytes, bytes]],
    ) -> None:
        wait = 0.0
        which = []
        for (kind, store_key, _), decision in zip(limits, decisions, strict=True):
            if decision.retry_after > 0:
                wait = max(wait, decision.retry_after)
                owner = "key" if ":key:" in store_key else "model"
                which.append(f"{owner} {kind} per minute ({decision.limit})")
        described = ", ".join(which) or "a limit"
        if math.isinf(wait):
            raise ClientRateLimitError(
                f"the request is larger than the limit itself: {described}",
                code="request_too_large_for_limit",
                headers=(*headers, (b"x-should-retry", b"false")),
            )
        retry_after = str(max(1, math.ceil(wait))).encode()
        raise ClientRateLimitError(
            f"rate limit reached: {described}; retry after {retry_after.decode()} s",
            headers=((b"retry-after", retry_after), *headers),
        )

    def on_response_head(self, exchange: Context) -> None:
        charged = exchange.scratch.get(self)
        if charged is not None:
            exchange.response_headers.extend(charged.headers)

    def on_complete(self, exchange: Context) -> None:
        charged: _Charged | None = exchange.scratch.get(self)
        if charged is None or charged.settled:
            return
        charged.settled = True
        adjustments: list[tuple[str, Limit, int, float]] = []
        if charged.token_limits:
            usage = exchange.usage
            if usage is not None:
                used = (
                    usage.input_tokens
                    + usage.cached_input_tokens
                    + usage.cache_creation_tokens
                    + usage.output_tokens
                )
            elif exchange.first_upstream_byte_at is None:
                used = 0  # no upstream answered: nothing was used
            else:
                used = charged.tokens
            delta = used - charged.tokens
            if delta:
                adjustments = [
                    (store_key, limit, delta, charged.at)
                    for store_key, limit in charged.token_limits
                ]
        spends: list[tuple[str, float, float | None]] = []
        cost = exchange.cost_usd
        if charged.spend_key is not None and cost:
            store_key, ttl = charged.spend_key
            spends.append((store_key, cost, ttl))
        if not adjustments and not spends:
            return
        limiter = self._limiter
        if limiter is not None:  # applied here, at once
            now = exchange.wall_now
            if spends or now.__class__ is not float or not isfinite(now):
                limiter.settle(adjustments, spends, now=now)  # checked: a cost, a time
            else:  # whole deltas of a time already checked: the unchecked entry
                limiter._settle(adjustments, (), now)
            limiter.tick(now=now)
            return
        exchange.emit(
            _settle(
                at=exchange.wall_now,
                adjustments=tuple(
                    _adjustment(key=key, limit=limit, delta=delta, charged_at=at)
                    for key, limit, delta, at in adjustments
                ),
                spends=tuple(SpendRecord(key=key, usd=usd, ttl=ttl) for key, usd, ttl in spends),
            )
        )
