"""The error taxonomy: one table, every error a client sees comes from it, rendered in
the client's API's shape; and the rules about which built-ins need which."""

from __future__ import annotations

import ast
import json
import pathlib
import re
from typing import Any

import pytest

import core
from core import (
    AuthenticationError,
    BudgetExceededError,
    ClientRateLimitError,
    ContentPolicyError,
    InternalError,
    LocalProtocolError,
    ModelNotFoundError,
    NetworkError,
    PermissionDeniedError,
    ProviderRateLimitError,
    Proxy,
    ProxyConfig,
    RemoteProtocolError,
    ServiceUnavailableError,
    TimerFired,
    UpstreamTimeoutError,
    ValidationError,
)
from core._config import DEFAULT_ORDER
from core._errors import TAXONOMY, ProtocolError, ProxyError

from .playbook import Playbook, client_view, config, header

CORE = pathlib.Path(core.__file__).parent

#: class, status, OpenAI type, default code, Anthropic type, retryable.
Row = tuple[type[ProxyError], int, str, str, str, bool]
TABLE: list[Row] = [
    (
        ValidationError,
        400,
        "invalid_request_error",
        "invalid_request",
        "invalid_request_error",
        False,
    ),
    (
        AuthenticationError,
        401,
        "invalid_request_error",
        "invalid_api_key",
        "authentication_error",
        False,
    ),
    (
        PermissionDeniedError,
        403,
        "permission_error",
        "model_not_allowed",
        "permission_error",
        False,
    ),
    (ModelNotFoundError, 404, "invalid_request_error", "model_not_found", "not_found_error", False),
    (
        ContentPolicyError,
        400,
        "invalid_request_error",
        "content_policy_violation",
        "invalid_request_error",
        False,
    ),
    (
        ClientRateLimitError,
        429,
        "rate_limit_error",
        "rate_limit_exceeded",
        "rate_limit_error",
        True,
    ),
    (
        BudgetExceededError,
        429,
        "insufficient_quota",
        "insufficient_quota",
        "rate_limit_error",
        False,
    ),
    (
        ProviderRateLimitError,
        429,
        "rate_limit_error",
        "upstream_rate_limited",
        "rate_limit_error",
        True,
    ),
    (NetworkError, 502, "upstream_error", "upstream_connect_error", "api_error", True),
    (UpstreamTimeoutError, 504, "upstream_error", "upstream_timeout", "timeout_error", True),
    (
        ServiceUnavailableError,
        503,
        "service_unavailable",
        "service_unavailable",
        "overloaded_error",
        True,
    ),
    (InternalError, 500, "server_error", "internal_error", "api_error", True),
]


def test_taxonomy_lists_every_class_in_the_tables_order() -> None:
    assert [row[0] for row in TABLE] == list(TAXONOMY)
    assert len(set(TAXONOMY)) == len(TAXONOMY)
    for cls in TAXONOMY:
        assert issubclass(cls, ProxyError) and issubclass(cls, RemoteProtocolError)
        assert cls.__name__ in core.__all__


def docstring_table() -> dict[str, tuple[int, str, str, bool]]:
    """The table in ``core/_errors.py``'s docstring, row by row."""
    rows = {}
    doc = core._errors.__doc__
    assert doc is not None
    for line in doc.splitlines():
        match = re.fullmatch(r"``(\w+)``\s+(\d+)(?: \*)?\s+(\w+)\s+(\w+)\s+(yes|no)", line.strip())
        if match:
            name, status, openai_type, code, retryable = match.groups()
            rows[name] = (int(status), openai_type, code, retryable == "yes")
    return rows


def test_the_docstring_table_is_the_taxonomy() -> None:
    documented = docstring_table()
    assert list(documented) == [cls.__name__ for cls in TAXONOMY]
    for cls, status, openai_type, code, _, retryable in TABLE:
        assert documented[cls.__name__] == (status, openai_type, code, retryable)


@pytest.mark.parametrize("row", TABLE, ids=[row[0].__name__ for row in TABLE])
def test_each_class_fixes_status_types_code_and_retryability(row: Row) -> None:
    cls, status, openai_type, code, anthropic_type, retryable = row
    error = cls("something happened")
    assert str(error) == "something happened"
    assert (cls.status, cls.openai_type, cls.default_code, cls.is_retryable) == (
        status,
        openai_type,
        code,
        retryable,
    )
    assert error.error_status_hint == status
    assert error.error_type == openai_type
    assert error.code == code
    assert error.param is None
    assert tuple(error.headers) == ()
    assert error.anthropic_type == anthropic_type
    assert error.retryable is retryable
    precise = cls("x", code="more_precise", param="model", headers=((b"retry-after", b"3"),))
    assert (precise.code, precise.param) == ("more_precise", "model")
    assert tuple(precise.headers) == ((b"retry-after", b"3"),)


@pytest.mark.parametrize("cls", TAXONOMY, ids=[c.__name__ for c in TAXONOMY])
def test_a_status_must_stay_in_the_family(cls: type[ProxyError]) -> None:
    same = cls.status // 100 * 100 + 99
    assert cls("x", status=same).error_status_hint == same
    other = 500 if cls.status < 500 else 400
    with pytest.raises(ValueError, match=f"{cls.__name__} cannot answer {other}"):
        cls("x", status=other)


def test_validation_error_also_answers_413_and_431_with_anthropic_types() -> None:
    assert ValidationError("x", status=413).anthropic_type == "request_too_large"
    assert ValidationError("x", status=431).anthropic_type == "invalid_request_error"
    assert ValidationError("x", status=413).retryable is False


def test_the_bases_cannot_be_raised_directly() -> None:
    with pytest.raises(TypeError):
        ProxyError("x")
    with pytest.raises(TypeError):
        ProtocolError("x")


# -- rendered through the exchange, in the client's API's shape ------------------------------


class Raise:
    """A middleware that refuses every request with one error of the taxonomy."""

    def __init__(self, error: ProxyError) -> None:
        self.error = error

    def on_request(self, exchange: Any) -> None:
        raise self.error


def rendered(error: ProxyError, target: bytes) -> tuple[int | None, list[Any], Any]:
    pb = Playbook(Proxy(ProxyConfig(), middleware=[Raise(error)]))
    out = pb.request(b"POST", target, b'{"model":"m","messages":[]}', [])
    status, headers, body, complete = client_view(out)
    assert complete is True
    assert header(headers, b"content-length") == str(len(body)).encode()
    assert pb.ex.error is error
    return status, headers, json.loads(body)


@pytest.mark.parametrize("row", TABLE, ids=[row[0].__name__ for row in TABLE])
def test_every_class_renders_in_openai_shape(row: Row) -> None:
    cls, status, openai_type, code, anthropic_type, retryable = row
    error = cls("it went wrong", param="messages", headers=((b"retry-after", b"7"),))
    got_status, headers, body = rendered(error, b"/v1/chat/completions")
    assert got_status == status
    assert body == {
        "error": {
            "message": "it went wrong",
            "type": openai_type,
            "param": "messages",
            "code": code,
        }
    }
    assert header(headers, b"retry-after") == b"7"
    assert header(headers, b"content-type") == b"application/json"


@pytest.mark.parametrize("row", TABLE, ids=[row[0].__name__ for row in TABLE])
def test_every_class_renders_in_anthropic_shape(row: Row) -> None:
    cls, status, openai_type, code, anthropic_type, retryable = row
    got_status, headers, body = rendered(
        cls("it went wrong", headers=((b"x-should-retry", b"false"),)), b"/v1/messages"
    )
    assert got_status == status
    assert body == {"type": "error", "error": {"type": anthropic_type, "message": "it went wrong"}}
    assert header(headers, b"x-should-retry") == b"false"


def test_a_hook_that_crashes_is_an_internal_error_never_shown() -> None:
    class Crash:
        def on_request(self, exchange: Any) -> None:
            raise KeyError("secret detail")

    for target, shape in ((b"/v1/chat/completions", "openai"), (b"/v1/messages", "anthropic")):
        pb = Playbook(Proxy(ProxyConfig(), middleware=[Crash()]))
        out = pb.request(b"POST", target, b"{}", [])
        status, _, body, _ = client_view(out)
        assert status == 500
        assert b"secret detail" not in body
        parsed = json.loads(body)
        if shape == "openai":
            assert (parsed["error"]["type"], parsed["error"]["code"]) == (
                "server_error",
                "internal_error",
            )
        else:
            assert parsed["error"]["type"] == "api_error"


# -- every error a client can see comes from the taxonomy ----------------------------------------

_BASES = {"ProtocolError", "RemoteProtocolError", "LocalProtocolError"}


def constructions(path: pathlib.Path) -> list[tuple[str, int, ast.Call]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
            if name in _BASES:
                found.append((name, node.lineno, node))
    return found


def subclasses_of_bases(path: pathlib.Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    return [
        f"{node.name} ({path.name}:{node.lineno})"
        for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef)
        and any(
            (base.id if isinstance(base, ast.Name) else getattr(base, "attr", None))
            in _BASES | {"ProxyError"}
            for base in node.bases
        )
    ]


def test_no_error_is_made_outside_the_taxonomy() -> None:
    """Outside ``_errors.py`` the core builds only taxonomy classes, and
    ``LocalProtocolError`` only for driver misuse (a 500 ``server_error``)."""
    sources = sorted(p for p in CORE.glob("*.py") if p.name != "_errors.py")
    assert len(sources) > 10
    offences = []
    misuse = 0
    for path in sources:
        for name, line, call in constructions(path):
            where = f"{path.name}:{line}"
            if name != "LocalProtocolError":
                offences.append(f"{where}: {name}(...)")
                continue
            keywords = {
                k.arg: k.value.value for k in call.keywords if isinstance(k.value, ast.Constant)
            }
            if keywords != {"error_status_hint": 500, "error_type": "server_error"}:
                offences.append(f"{where}: LocalProtocolError without status 500 server_error")
            misuse += 1
        offences.extend(f"{c}: a new error class" for c in subclasses_of_bases(path))
    assert offences == []
    assert misuse >= 3  # the exchange's and the decoders' driver errors are found


def test_the_driver_misuse_error_is_local_and_500() -> None:
    pb = Playbook(ProxyConfig())
    with pytest.raises(LocalProtocolError) as caught:
        pb.feed(TimerFired())
    assert caught.value.error_status_hint == 500
    assert caught.value.error_type == "server_error"
    assert not isinstance(caught.value, RemoteProtocolError)


# -- which built-ins need which (Proxy's order rules) --------------------------------------------

SHA = "ab" * 32
PROVIDERS = {"p": {"base_url": "http://p.test"}}


def keys(**extra: Any) -> dict[str, Any]:
    return {"keys": [{"name": "a", "key_sha256": SHA, **extra}]}


@pytest.mark.parametrize(
    ("tree", "message"),
    [
        (
            {"middleware": ["rate_limit", {"auth": keys()}]},
            "middleware[1]: auth is listed after rate_limit (middleware[0]), which reads the "
            "key auth finds (list auth before rate_limit)",
        ),
        (
            {"middleware": [{"auth": keys(rpm=5, budget={"usd": 1})}]},
            "middleware[0].auth.keys[0]: sets rpm, budget without the rate_limit middleware "
            "(add rate_limit after auth to enforce it)",
        ),
        (
            {"middleware": [{"auth": keys(tpm=5)}]},
            "middleware[0].auth.keys[0]: sets tpm without the rate_limit middleware "
            "(add rate_limit after auth to enforce it)",
        ),
        (
            {
                "providers": PROVIDERS,
                "models": {
                    "fast": {"deployments": [{"provider": "p", "model": "m"}], "limits": {"rpm": 1}}
                },
            },
            "models.fast.limits: set without the rate_limit middleware "
            "(add rate_limit to enforce them)",
        ),
        (
            {
                "providers": PROVIDERS,
                "models": {
                    "a": {"deployments": [{"provider": "p", "model": "m"}], "fallbacks": ["b"]},
                    "b": [{"provider": "p", "model": "n"}],
                },
            },
            "models.a.fallbacks: set without the retry middleware (add retry to use them)",
        ),
        (
            {"middleware": ["retry", {"retry": {"attempts": 2}}]},
            "middleware[1]: 'retry' is listed twice, first at middleware[0] "
            "(each built-in runs once)",
        ),
        (
            {"middleware": ["nope"]},
            "middleware[0]: unknown middleware 'nope' (built-ins: trace, auth, validate, "
            "guardrails, rate_limit, retry; custom ones: 'package.module:attr')",
        ),
    ],
    ids=[
        "rate-limit-before-auth",
        "key-limits-without-rate-limit",
        "key-tpm-without-rate-limit",
        "model-limits-without-rate-limit",
        "fallbacks-without-retry",
        "twice",
        "unknown",
    ],
)
def test_order_rules_are_readable_errors(tree: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        Proxy(config(**tree))


def test_satisfied_order_rules_build() -> None:
    Proxy(
        config(
            providers=PROVIDERS,
            models={
                "a": {
                    "deployments": [{"provider": "p", "model": "m"}],
                    "fallbacks": ["b"],
                    "limits": {"tpm": 9},
                },
                "b": [{"provider": "p", "model": "n"}],
            },
            middleware=[{"auth": keys(rpm=5)}, "rate_limit", "retry"],
        )
    )
    # A key without limits needs no rate_limit; custom middleware may repeat.
    Proxy(
        config(
            middleware=[
                {"auth": keys()},
                {"tests.core.test_taxonomy:Nothing": {}},
                {"tests.core.test_taxonomy:Nothing": {}},
            ]
        )
    )


class Nothing:
    """A custom middleware with no hooks."""


def names(cfg: ProxyConfig) -> list[str]:
    return [name for item in cfg.middleware for name in item]


def test_the_mapping_form_runs_built_ins_in_the_default_order_then_custom_ones() -> None:
    cfg = config(
        middleware={
            "tests.core.test_taxonomy:Nothing": {},
            "retry": {"attempts": 2},
            "rate_limit": None,
            "trace": {"dir": "/t"},
            "auth": keys(rpm=5),
            "guardrails": {},
        }
    )
    assert names(cfg) == [
        "trace",
        "auth",
        "guardrails",
        "rate_limit",
        "retry",
        "tests.core.test_taxonomy:Nothing",
    ]
    assert cfg.middleware[names(cfg).index("rate_limit")] == {"rate_limit": {}}
    proxy = Proxy(cfg)  # rate_limit after auth: the rules hold
    kinds = [type(m).__name__ for m in proxy.pipeline.middleware]
    assert kinds == [
        "TraceMiddleware",
        "AuthMiddleware",
        "GuardrailsMiddleware",
        "RateLimitMiddleware",
        "RetryMiddleware",
        "Nothing",
    ]
    assert [n for n in names(cfg) if n in DEFAULT_ORDER] == [
        n for n in DEFAULT_ORDER if n in names(cfg)
    ]


def test_the_list_form_keeps_the_order_given() -> None:
    cfg = config(middleware=["retry", {"trace": {"dir": "/t"}}])
    assert names(cfg) == ["retry", "trace"]
    with pytest.raises(ValueError, match=re.escape("(list auth before rate_limit)")):
        Proxy(config(middleware=["rate_limit", {"auth": keys()}]))
