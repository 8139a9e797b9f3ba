"""The core's errors: two families, as in h11, and the taxonomy every answer comes from.

``LocalProtocolError`` means the driver misused the core (an event in a state
that does not accept it). ``RemoteProtocolError`` means a peer -- the client or
the upstream -- sent data the core cannot accept, or a policy refused it.

Every error response the proxy itself makes comes from one class of the
taxonomy below (all ``RemoteProtocolError``). A class fixes the HTTP status,
the OpenAI error ``type``, a default ``code``, the ``type`` an Anthropic client
sees, and whether a client may retry the same request. The exchange renders it
in the client's API's shape, with the error's ``headers`` (``Retry-After``,
``x-ratelimit-*``) added.

===========================  ======  =====================  ========================  =========
class                        status  OpenAI type            default code              retryable
===========================  ======  =====================  ========================  =========
``ValidationError``          400 *   invalid_request_error  invalid_request           no
``AuthenticationError``      401     invalid_request_error  invalid_api_key           no
``PermissionDeniedError``    403     permission_error       model_not_allowed         no
``ModelNotFoundError``       404 *   invalid_request_error  model_not_found           no
``ContentPolicyError``       400     invalid_request_error  content_policy_violation  no
``ClientRateLimitError``     429     rate_limit_error       rate_limit_exceeded       yes
``BudgetExceededError``      429     insufficient_quota     insufficient_quota        no
``ProviderRateLimitError``   429     rate_limit_error       upstream_rate_limited     yes
``NetworkError``             502     upstream_error         upstream_connect_error    yes
``UpstreamTimeoutError``     504     upstream_error         upstream_timeout          yes
``ServiceUnavailableError``  503     service_unavailable    service_unavailable       yes
``InternalError``            500     server_error           internal_error            yes
===========================  ======  =====================  ========================  =========

\\* ``ValidationError`` also answers 413 (body too large, or JSON of too many
values), 431 (head too large) and 501 (a transfer coding not implemented);
``ModelNotFoundError`` also answers 404 for an unknown URL. A status given to
the constructor must stay in the class's family (4xx / 5xx), or be one of its
``other_statuses``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar, TypeVar

from ._headers import Headers

__all__ = [
    "FAILURES",
    "TAXONOMY",
    "AuthenticationError",
    "BudgetExceededError",
    "ClientRateLimitError",
    "ContentPolicyError",
    "InternalError",
    "LocalProtocolError",
    "ModelNotFoundError",
    "NetworkError",
    "PermissionDeniedError",
    "ProtocolError",
    "ProviderRateLimitError",
    "ProxyError",
    "RemoteProtocolError",
    "ServiceUnavailableError",
    "UpstreamTimeoutError",
    "ValidationError",
    "anthropic_type",
    "detached",
]

_E = TypeVar("_E", bound=BaseException)


def detached(error: _E) -> _E:
    """``error``, kept for later (an exchange's error, a body's parse error), without the
    frames it and its causes were raised through: they hold the locals of every
    call on the way -- the exchange among them -- in a reference cycle that only the
    garbage collector would free. Its message, status and causes stay."""
    todo: list[BaseException] = [error]
    seen: set[int] = set()
    while todo:
        exc = todo.pop()
        if id(exc) in seen:
            continue
        seen.add(id(exc))
        exc.__traceback__ = None
        for linked in (exc.__cause__, exc.__context__):
            if linked is not None:
                todo.append(linked)
    return error


class ProtocolError(Exception):
    """Base class of the core's errors. Do not raise it directly."""

    error_status_hint: int
    error_type: str
    code: str | None
    param: str | None
    #: Extra response headers (``Retry-After``, ``x-ratelimit-*``): lower-case names.
    headers: Headers
    #: The ``error.type`` an Anthropic client sees.
    anthropic_type: str
    #: Whether the same request may succeed if the client tries it again later.
    retryable: bool

    def __init__(
        self,
        msg: str,
        *,
        error_status_hint: int = 400,
        error_type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: Headers = (),
    ) -> None:
        if type(self) is ProtocolError:
            raise TypeError("tried to directly instantiate ProtocolError")
        super().__init__(msg)
        self.error_status_hint = error_status_hint
        self.error_type = error_type
        self.code = code
        self.param = param
        self.headers = headers
        self.anthropic_type = anthropic_type(error_status_hint)
        self.retryable = error_status_hint in (408, 429) or error_status_hint >= 500


class LocalProtocolError(ProtocolError):
    """The driver fed the core something it may not feed in this state."""


class RemoteProtocolError(ProtocolError):
    """A peer (client or upstream) sent data the core cannot accept."""


def anthropic_type(status: int) -> str:
    """The Anthropic ``error.type`` for an HTTP status."""
    known = _ANTHROPIC_TYPES.get(status)
    if known is not None:
        return known
    return "invalid_request_error" if 400 <= status < 500 else "api_error"


_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


class ProxyError(RemoteProtocolError):
    """A class of the taxonomy: status, types, default code and retryability fixed.

    Subclasses set the class attributes; instances may name a more precise
    ``code``, the ``param`` at fault, response ``headers``, and (where the
    table allows) another status of the same family.
    """

    status: ClassVar[int]
    openai_type: ClassVar[str]
    default_code: ClassVar[str]
    is_retryable: ClassVar[bool]
    anthropic_error_type: ClassVar[str | None] = None
    #: Statuses outside the class's family it may also answer.
    other_statuses: ClassVar[frozenset[int]] = frozenset()

    def __init__(
        self,
        msg: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: Headers = (),
        status: int | None = None,
    ) -> None:
        if type(self) is ProxyError:
            raise TypeError("raise one of ProxyError's subclasses")
        if status is None:
            status = self.status
        elif status // 100 != self.status // 100 and status not in self.other_statuses:
            raise ValueError(f"{type(self).__name__} cannot answer {status}")
        super().__init__(
            msg,
            error_status_hint=status,
            error_type=self.openai_type,
            code=code or self.default_code,
            param=param,
            headers=headers,
        )
        if self.anthropic_error_type is not None:
            self.anthropic_type = self.anthropic_error_type
        self.retryable = self.is_retryable


class ValidationError(ProxyError):
    """The request is malformed or breaks the API's rules (also 413, 431)."""

    status = 400
    openai_type = "invalid_request_error"
    default_code = "invalid_request"
    is_retryable = False
    other_statuses = frozenset({501})  # a framing the proxy does not implement


class AuthenticationError(ProxyError):
    """No key, or a key the proxy does not know."""

    status = 401
    openai_type = "invalid_request_error"
    default_code = "invalid_api_key"
    is_retryable = False


class PermissionDeniedError(ProxyError):
    """The key is known but may not do this (use this model, read the admin view)."""

    status = 403
    openai_type = "permission_error"
    default_code = "model_not_allowed"
    is_retryable = False


class ModelNotFoundError(ProxyError):
    """No such model (or no such URL)."""

    status = 404
    openai_type = "invalid_request_error"
    default_code = "model_not_found"
    is_retryable = False


class ContentPolicyError(ProxyError):
    """A guardrail refused the request's content."""

    status = 400
    openai_type = "invalid_request_error"
    default_code = "content_policy_violation"
    is_retryable = False


class ClientRateLimitError(ProxyError):
    """The key or the model is over its requests or tokens per minute."""

    status = 429
    openai_type = "rate_limit_error"
    default_code = "rate_limit_exceeded"
    is_retryable = True


class BudgetExceededError(ProxyError):
    """The key has spent its budget for the period: retrying before it resets is useless."""

    status = 429
    openai_type = "insufficient_quota"
    default_code = "insufficient_quota"
    is_retryable = False


class ProviderRateLimitError(ProxyError):
    """Every deployment tried answered 429."""

    status = 429
    openai_type = "rate_limit_error"
    default_code = "upstream_rate_limited"
    is_retryable = True


class NetworkError(ProxyError):
    """The upstream could not be reached, reset the connection, or sent a malformed answer."""

    status = 502
    openai_type = "upstream_error"
    default_code = "upstream_connect_error"
    is_retryable = True
    anthropic_error_type = "api_error"


class UpstreamTimeoutError(ProxyError):
    """The upstream sent nothing for its read timeout."""

    status = 504
    openai_type = "upstream_error"
    default_code = "upstream_timeout"
    is_retryable = True


class ServiceUnavailableError(ProxyError):
    """The proxy cannot decide now (its shared store is unreachable and fails closed)."""

    status = 503
    openai_type = "service_unavailable"
    default_code = "service_unavailable"
    is_retryable = True


class InternalError(ProxyError):
    """A bug in the proxy or in a middleware: logged with its traceback, never shown."""

    status = 500
    openai_type = "server_error"
    default_code = "internal_error"
    is_retryable = True


#: Every class of the taxonomy, in the table's order.
TAXONOMY: tuple[type[ProxyError], ...] = (
    ValidationError,
    AuthenticationError,
    PermissionDeniedError,
    ModelNotFoundError,
    ContentPolicyError,
    ClientRateLimitError,
    BudgetExceededError,
    ProviderRateLimitError,
    NetworkError,
    UpstreamTimeoutError,
    ServiceUnavailableError,
    InternalError,
)


#: An upstream attempt's failure kind (``core.FailureKind``), as the error a client
#: sees: (class, code, message).
FAILURES: Mapping[str, tuple[type[NetworkError | UpstreamTimeoutError], str, str]] = {
    "connect": (NetworkError, "upstream_connect_error", "could not connect to the upstream"),
    "timeout": (UpstreamTimeoutError, "upstream_timeout", "the upstream timed out"),
    "reset": (NetworkError, "upstream_reset", "the upstream closed the connection mid-response"),
    "protocol": (NetworkError, "upstream_protocol_error", "the upstream sent a malformed response"),
}
