"""Retries and fallbacks: the ``retry`` built-in and what the exchange records of attempts.

The exchange numbers upstream attempts and records each one (:class:`Attempt`).
When an attempt fails before anything reached the client -- the upstream could
not be reached, timed out, reset, lied, or answered a retryable status -- the
exchange asks its ``on_attempt_failed`` hooks what to do: a :class:`Retry`
(wait ``delay`` seconds, then send to ``deployment``), an error to answer with,
or ``None`` (no opinion: the next hook, else the failure stands). Once the
response head has been sent to the client nothing is retried: a failure then
becomes an SSE error event or a cut, as always.

:class:`RetryMiddleware` is the policy: ``attempts`` per deployment with
exponential backoff and jitter (honouring the upstream's ``Retry-After``), then
the model's other deployments in order, then its ``fallbacks`` models' deployments;
no attempt starts once ``timeout`` seconds have passed since the request
arrived, or if its wait would end after that.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from .._endpoints import TRANSLATABLE
from .._errors import ProtocolError, ProviderRateLimitError
from .._middleware import Attempt, Context, Retry
from ..gateway import Deployment

__all__ = ["RetryMiddleware"]

_KINDS = frozenset({"connect", "timeout", "reset", "protocol"})


def _jitter(seed: float, n: int) -> float:
    """A number in [0, 1) from the exchange's seed and ``n`` (splitmix64): no RNG of our own."""
    x = (int(seed * (1 << 53)) + n * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    x ^= x >> 31
    return (x >> 11) / (1 << 53)


class RetryMiddleware:
    """The ``retry`` built-in. Options (YAML):

    ``attempts`` (3): tries per deployment, the first included.
    ``backoff`` (0.5): seconds before the first retry; doubled each time (with
    "equal jitter": a wait is uniformly between half and all of it).
    ``max_backoff`` (8): cap on one wait; an upstream ``Retry-After`` longer than
    this moves on to the next deployment instead of waiting.
    ``timeout`` (60): no attempt starts later than this many seconds after the
    request arrived (each attempt is bounded by its provider's timeouts).
    ``on_status`` ([408, 429, 500, 502, 503, 504, 529]) and ``on_failure``
    ([connect, timeout, reset, protocol]): what is retried.
    """

    name = "retry"

    def __init__(
        self,
        *,
        attempts: int = 3,
        backoff: float = 0.5,
        max_backoff: float = 8.0,
        timeout: float = 60.0,
        on_status: Sequence[int] = (408, 429, 500, 502, 503, 504, 529),
        on_failure: Sequence[str] = ("connect", "timeout", "reset", "protocol"),
    ) -> None:
        if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
            raise ValueError(f"attempts must be an integer >= 1, not {attempts!r}")
        for name, value in (("backoff", backoff), ("max_backoff", max_backoff)):
            if not isinstance(value, int | float) or not 0 <= value < math.inf:
                raise ValueError(f"{name} must be a number of seconds >= 0, not {value!r}")
        if not isinstance(timeout, int | float) or not 0 < timeout < math.inf:
            raise ValueError(f"timeout must be a number of seconds > 0, not {timeout!r}")
        statuses = frozenset(on_status)
        if any(not isinstance(s, int) or not 400 <= s <= 599 for s in statuses):
            raise ValueError(f"on_status must list HTTP error statuses, not {list(on_status)!r}")
        unknown = set(on_failure) - _KINDS
        if unknown:
            raise ValueError(
                f"on_failure: unknown kinds {sorted(unknown)} (known: {sorted(_KINDS)})"
            )
        self.attempts = attempts
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.timeout = float(timeout)
        self.on_status = statuses
        self.on_failure = frozenset(on_failure)

    def retryable(self, attempt: Attempt) -> bool:
        """Whether this attempt's outcome is one to retry."""
        if attempt.outcome == "status":
            return attempt.status in self.on_status
        return attempt.outcome in self.on_failure

    def on_attempt_failed(
        self, exchange: Context, attempt: Attempt
    ) -> Retry | ProtocolError | None:
        """Same deployment after a backoff, else the next deployment, else a fallback model."""
        if not self.retryable(attempt):
            return None
        deployment = exchange.deployment
        if deployment is None:  # the shorthand's transparent pass-through
            return self._same(exchange, attempt, None)
        attempts = exchange.attempts
        on_this = 0
        for earlier in reversed(attempts):
            if (
                earlier.provider != attempt.provider
                or earlier.upstream_model != attempt.upstream_model
            ):
                break
            on_this += 1
        if on_this < self.attempts:
            retry = self._same(exchange, attempt, deployment)
            if retry is not None:
                return retry
        elapsed = attempt.ended_at - exchange.started_at if attempt.ended_at is not None else 0.0
        if elapsed < self.timeout:
            for model, candidate in self._candidates(exchange):
                if not any(
                    a.provider == candidate.provider.name and a.upstream_model == candidate.model
                    for a in attempts
                ):
                    return Retry(delay=0.0, deployment=candidate, model=model)
        if len(attempts) > 1 and all(a.status == 429 for a in attempts):
            headers: tuple[tuple[bytes, bytes], ...] = ()
            if attempt.retry_after is not None:
                headers = ((b"retry-after", str(math.ceil(attempt.retry_after)).encode()),)
            return ProviderRateLimitError(
                f"every attempt ({len(attempts)}) was rate limited by the provider",
                headers=headers,
            )
        return None

    def _same(
        self, exchange: Context, attempt: Attempt, deployment: Deployment | None
    ) -> Retry | None:
        if deployment is None and len(exchange.attempts) >= self.attempts:
            return None
        n = len(exchange.attempts)
        wait = min(self.max_backoff, self.backoff * 2 ** (n - 1))
        wait *= 0.5 + 0.5 * _jitter(exchange.seed, n)
        if attempt.retry_after is not None:
            if attempt.retry_after > self.max_backoff:
                return None
            wait = max(wait, attempt.retry_after)
        ended = attempt.ended_at if attempt.ended_at is not None else exchange.started_at
        if ended + wait - exchange.started_at > self.timeout:
            return None
        return Retry(delay=wait, deployment=deployment, model=attempt.model)

    def _candidates(self, exchange: Context) -> list[tuple[str, Deployment]]:
        """The asked model's deployments, then each fallback model's, in order."""
        router = exchange.router
        asked = exchange.model
        if asked is None or asked not in router.models:
            return []
        out = [(asked, d) for d in router.models[asked]]
        for fallback in router.fallbacks.get(asked, ()):
            out.extend((fallback, d) for d in router.models[fallback])
        if exchange.endpoint in TRANSLATABLE:
            return out
        # Elsewhere only a provider of the client's own API can serve the request.
        return [(m, d) for m, d in out if d.provider.type == exchange.client_api]
