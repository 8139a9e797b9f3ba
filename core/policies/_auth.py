"""Virtual keys: the ``auth`` built-in, and ``GET /admin/keys``.

Keys are declared in YAML by the SHA-256 of their secret (``python -m
adapters.keys new NAME`` makes one); the proxy never holds a key in clear. A
client sends its key as ``Authorization: Bearer <key>`` or ``x-api-key:
<key>``. The presented key is hashed and looked up by its digest, then
confirmed with ``hmac.compare_digest``: a lookup's timing can only tell a
caller about the digest of what it sent itself, never about a stored key.

Once accepted, the credential headers are removed from the request
(``exchange.request_headers``): the client's key never reaches an upstream,
which gets its own provider key. ``exchange.key`` names the :class:`ClientKey`
for the middleware after ``auth`` (``rate_limit``) and for the trace.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic import ValidationError as PydanticError

from .._commands import AcquireQuota, BudgetCheck, QuotaCharge
from .._errors import AuthenticationError, PermissionDeniedError, ServiceUnavailableError
from .._events import QuotaAnswered, QuotaFailed
from .._headers import Headers
from .._http import param_path
from .._json import dumps
from .._middleware import Context, Reply
from .._quota import Decision, Limit

__all__ = [
    "ADMIN_PATH",
    "AuthMiddleware",
    "Budget",
    "ClientKey",
    "budget_key",
    "key_limits",
    "period_of",
    "presented_key",
]

ADMIN_PATH = b"/admin/keys"
Period = Literal["day", "month", "total"]
_CREDENTIAL_HEADERS = frozenset({b"authorization", b"x-api-key"})
_JSON = ((b"content-type", b"application/json"), (b"cache-control", b"no-store"))


class _BudgetConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    usd: float = Field(gt=0)
    period: Period = "month"


class _KeyConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9._:@-]+$")
    key_sha256: str
    models: tuple[str, ...] | None = None
    rpm: int | None = Field(default=None, ge=1)
    tpm: int | None = Field(default=None, ge=1)
    budget: _BudgetConfig | None = None

    @field_validator("key_sha256")
    @classmethod
    def _hex(cls, value: str) -> str:
        value = value.strip().lower()
        if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
            raise ValueError("must be 64 hex digits (python -m adapters.keys new NAME)")
        return value


class _AuthConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    keys: tuple[_KeyConfig, ...] = ()
    admin_key_sha256: str | None = None

    @field_validator("admin_key_sha256")
    @classmethod
    def _hex(cls, value: str | None) -> str | None:
        return None if value is None else _KeyConfig._hex(value)


@dataclass(frozen=True, slots=True, kw_only=True)
class Budget:
    """USD a key may spend per ``period`` (``day`` and ``month`` in UTC, or ``total``)."""

    usd: float
    period: Period


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientKey:
    """A virtual key: its name (never the secret), what it may use, its limits."""

    name: str
    models: frozenset[str] | None
    rpm: int | None
    tpm: int | None
    budget: Budget | None


# --- names in the store, shared by auth (admin view) and rate_limit -----------


@functools.cache
def key_limits(key: ClientKey) -> tuple[tuple[str, str, Limit], ...]:
    """The key's limits: (kind, store key, limit); kind is ``requests`` or ``tokens``.

    Built once per key (keys live as long as the configuration).
    """
    out = []
    if key.rpm is not None:
        out.append(("requests", f"sansproxy:rl:key:{key.name}:rpm", Limit(limit=key.rpm)))
    if key.tpm is not None:
        out.append(("tokens", f"sansproxy:rl:key:{key.name}:tpm", Limit(limit=key.tpm)))
    return tuple(out)


def period_of(period: Period, wall_time: float) -> tuple[str, float | None, float | None]:
    """The period containing ``wall_time``: its id, when it ends (UNIX), a TTL for its spend."""
    if period == "total":
        return "total", None, None
    days = math.floor(wall_time / 86400)
    if period == "day":
        year, month, day = _civil(days)
        end = (days + 1) * 86400.0
        return f"{year:04d}-{month:02d}-{day:02d}", end, end - wall_time + 86400
    year, month, _ = _civil(days)
    next_year, next_month = (year + 1, 1) if month == 12 else (year, month + 1)
    end = _days_from_civil(next_year, next_month, 1) * 86400.0
    return f"{year:04d}-{month:02d}", end, end - wall_time + 86400


def budget_key(key: ClientKey, wall_time: float) -> tuple[str, float | None, float | None]:
    """Where the key's spend for the period of ``wall_time`` is kept; the period's end; a TTL."""
    assert key.budget is not None
    period, end, ttl = period_of(key.budget.period, wall_time)
    return f"sansproxy:spend:{key.name}:{period}", end, ttl


def _civil(days: int) -> tuple[int, int, int]:
    """(year, month, day) of a count of days since 1970-01-01 (H. Hinnant's algorithm)."""
    z = days + 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    y = yoe + era * 400
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + 3 if mp < 10 else mp - 9
    return (y + 1 if m <= 2 else y), m, d


def _days_from_civil(y: int, m: int, d: int) -> int:
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def presented_key(headers: Headers) -> bytes | None:
    """The key a client sent: ``Authorization: Bearer <key>`` or ``x-api-key``."""
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.strip().partition(b" ")
            if scheme.lower() == b"bearer" and token.strip():
                return token.strip()
        elif name == b"x-api-key" and value.strip():
            return value.strip()
    return None


def _error_path(exc: PydanticError) -> str:
    first = exc.errors()[0]
    where = param_path(first["loc"])
    return f"auth.{where}: {first['msg']}" if where else f"auth: {first['msg']}"


class AuthMiddleware:
    """The ``auth`` built-in. Options: ``keys`` (list of key entries), ``admin_key_sha256``.

    A key entry: ``{name, key_sha256, models: [...] (default: all), rpm, tpm,
    budget: {usd, period: day|month|total}}``. Missing or unknown key: 401
    ``invalid_api_key``; a model the key may not use: 403 ``model_not_allowed``.
    ``GET /admin/keys`` with the admin key lists every key's spend, remaining
    budget and rate-limit standing (from the store the ``rate_limit`` middleware
    writes); any other key gets 403 there.
    """

    name = "auth"

    def __init__(
        self,
        *,
        keys: Sequence[Mapping[str, Any]] = (),
        admin_key_sha256: str | None = None,
        store_timeout: float = 0.25,
    ) -> None:
        try:
            config = _AuthConfig(keys=tuple(keys), admin_key_sha256=admin_key_sha256)  # type: ignore[arg-type]
        except PydanticError as exc:
            raise ValueError(_error_path(exc)) from None
        self.keys: tuple[ClientKey, ...] = tuple(
            ClientKey(
                name=k.name,
                models=None if k.models is None else frozenset(k.models),
                rpm=k.rpm,
                tpm=k.tpm,
                budget=None
                if k.budget is None
                else Budget(usd=k.budget.usd, period=k.budget.period),
            )
            for k in config.keys
        )
        names = [k.name for k in self.keys]
        if len(set(names)) != len(names):
            raise ValueError("auth.keys: two keys have the same name")
        self._by_digest: dict[bytes, tuple[bytes, ClientKey]] = {}
        for entry, key in zip(config.keys, self.keys, strict=True):
            digest = bytes.fromhex(entry.key_sha256)
            if digest in self._by_digest:
                raise ValueError(f"auth.keys: {key.name!r} has the same key as another")
            self._by_digest[digest] = (digest, key)
        self._admin = (
            None if config.admin_key_sha256 is None else bytes.fromhex(config.admin_key_sha256)
        )
        self._timeout = store_timeout

    def _lookup(self, presented: bytes) -> ClientKey | None:
        digest = hashlib.sha256(presented).digest()
        found = self._by_digest.get(digest)
        if found is None:
            return None
        stored, key = found
        return key if hmac.compare_digest(stored, digest) else None

    def admin_key_in(self, headers: Headers) -> bool:
        """Whether ``headers`` present the admin key (``GET /metrics`` behind it, say)."""
        presented = presented_key(headers)
        return presented is not None and self._is_admin(presented)

    @property
    def has_admin_key(self) -> bool:
        """Whether an admin key is configured."""
        return self._admin is not None

    def _is_admin(self, presented: bytes) -> bool:
        if self._admin is None:
            return False
        return hmac.compare_digest(hashlib.sha256(presented).digest(), self._admin)

    def on_request(self, exchange: Context) -> Reply | AcquireQuota | None:
        presented = presented_key(exchange.request_headers)
        if presented is None:
            raise AuthenticationError(
                "missing API key: send it as 'Authorization: Bearer <key>' or 'x-api-key: <key>'"
            )
        exchange.request_headers = [
            (n, v) for n, v in exchange.request_headers if n not in _CREDENTIAL_HEADERS
        ]
        if exchange.request_path == ADMIN_PATH:
            return self._admin_request(exchange, presented)
        key = self._lookup(presented)
        if key is None:
            raise AuthenticationError("invalid API key")
        exchange.key = key
        if key.models is not None and exchange.request_method != b"GET":
            body = exchange.request_json()
            model = body.get("model") if body is not None else None
            if not isinstance(model, str):
                # Not JSON, or no model (a multipart upload, say): the proxy cannot
                # tell which model it is for, so a key limited to models may not send it.
                raise PermissionDeniedError(
                    f"the key '{key.name}' may only use the models "
                    f"{', '.join(sorted(key.models))}, and this request names none in a JSON "
                    "body",
                    param="model",
                )
            if model not in key.models:
                raise PermissionDeniedError(
                    f"the key '{key.name}' may not use the model '{model}'", param="model"
                )
        return None

    # -- GET /admin/keys ---------------------------------------------------------

    def _admin_request(self, exchange: Context, presented: bytes) -> AcquireQuota:
        if not self._is_admin(presented):
            if self._lookup(presented) is not None:
                raise PermissionDeniedError(
                    "only the admin key may read /admin/keys", code="admin_only"
                )
            raise AuthenticationError("invalid API key")
        if exchange.request_method != b"GET":
            raise PermissionDeniedError("/admin/keys only answers GET", code="method_not_allowed")
        at = exchange.wall_now
        charges = [
            QuotaCharge(key=store_key, limit=limit, amount=0)
            for key in self.keys
            for _, store_key, limit in key_limits(key)
        ]
        budgets = [
            BudgetCheck(key=budget_key(key, at)[0], usd=math.inf)
            for key in self.keys
            if key.budget is not None
        ]
        exchange.scratch[self] = at
        return AcquireQuota(
            query_id=exchange.new_query_id(),
            at=at,
            charges=tuple(charges),
            budgets=tuple(budgets),
            timeout=self._timeout,
        )

    def on_answer(self, exchange: Context, answer: QuotaAnswered | QuotaFailed) -> Reply:
        if isinstance(answer, QuotaFailed):
            raise ServiceUnavailableError(f"the quota store is unavailable: {answer.message}")
        at: float = exchange.scratch[self]
        decisions = iter(answer.decisions)
        spent = iter(answer.spent)
        data = []
        for key in self.keys:
            limits: dict[str, Any] = {}
            for kind, _, _ in key_limits(key):
                limits[kind] = _standing(next(decisions))
            entry: dict[str, Any] = {
                "name": key.name,
                "models": None if key.models is None else sorted(key.models),
                "rate_limits": limits,
                "budget": None,
            }
            if key.budget is not None:
                used = next(spent)
                period, end, _ = period_of(key.budget.period, at)
                entry["budget"] = {
                    "usd": key.budget.usd,
                    "period": key.budget.period,
                    "period_id": period,
                    "spent_usd": round(used, 10),
                    "remaining_usd": round(max(0.0, key.budget.usd - used), 10),
                    "resets_at": end,
                }
            data.append(entry)
        body = dumps({"object": "list", "data": data})
        return Reply(status=200, headers=_JSON, body=body)


def _standing(decision: Decision) -> dict[str, Any]:
    return {
        "limit": decision.limit,
        "remaining": decision.remaining,
        "reset_after_s": round(decision.reset_after, 3),
    }
