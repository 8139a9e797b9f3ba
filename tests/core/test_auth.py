"""The ``auth`` built-in: virtual keys, 401/403 in the client's API's shape, no key
ever forwarded or logged, and ``GET /admin/keys`` answered from the quota store."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import pytest

from core import (
    AcquireQuota,
    Command,
    Proxy,
    ProxyConfig,
    QuotaAnswered,
    QuotaFailed,
    SendUpstreamRequest,
    SettleQuota,
    UpstreamData,
    UpstreamEnded,
    UpstreamResponse,
)
from core._state import State
from core.policies import AuthMiddleware, MemoryLimiter
from core.policies._auth import presented_key

from .playbook import WALL, Playbook, client_view, config, header, upstream_config

KEY_A = "sk-sp-alpha-0123456789"
KEY_B = "sk-sp-bravo-0123456789"
ADMIN = "sk-sp-admin-0123456789"
WRONG = "sk-sp-wrong-9876543210"
PROVIDER_SECRET = "prov-secret-xyz"
JSON = [(b"content-type", b"application/json")]


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def chat(model: str = "fast", **extra: Any) -> bytes:
    return json.dumps(
        {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}
    ).encode()


def message(model: str = "fast") -> bytes:
    return json.dumps(
        {"model": model, "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
    ).encode()


def keys(**overrides: dict[str, Any]) -> list[dict[str, Any]]:
    entries: dict[str, dict[str, Any]] = {
        "a": {"name": "a", "key_sha256": sha(KEY_A)},
        "b": {"name": "b", "key_sha256": sha(KEY_B), "models": ["fast"]},
    }
    for name, extra in overrides.items():
        entries[name] = {**entries[name], **extra}
    return list(entries.values())


def routed(
    *, auth: dict[str, Any] | None = None, extra: Sequence[Any] = (), api_key: bool = True
) -> ProxyConfig:
    provider: dict[str, Any] = {"base_url": "http://up.test:8080"}
    if api_key:
        provider["api_key"] = PROVIDER_SECRET
    return config(
        providers={
            "p": provider,
            "anth": {"base_url": "http://anth.test:8080", "type": "anthropic"},
        },
        models={
            "fast": [{"provider": "p", "model": "m1"}],
            "big": [{"provider": "p", "model": "m2"}],
            "claude": [{"provider": "anth", "model": "claude-x"}],
        },
        middleware=[{"auth": auth if auth is not None else {"keys": keys()}}, *extra],
    )


def bearer(key: str) -> list[tuple[bytes, bytes]]:
    return [(b"authorization", b"Bearer " + key.encode()), *JSON]


def everything(commands: Sequence[Command]) -> str:
    """Every command in full, as a driver could log or write it."""
    return "\n".join(repr(c) for c in commands)


def sent_upstream(commands: Sequence[Command]) -> SendUpstreamRequest:
    (cmd,) = [c for c in commands if isinstance(c, SendUpstreamRequest)]
    return cmd


def error_of(commands: Sequence[Command]) -> tuple[int | None, Any]:
    status, _, body, complete = client_view(list(commands))
    assert complete is True
    return status, json.loads(body)


# -- accepting a key -------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        [(b"authorization", b"Bearer " + KEY_A.encode())],
        [(b"authorization", b"bearer  " + KEY_A.encode() + b" ")],
        [(b"x-api-key", KEY_A.encode())],
        [(b"authorization", b"Basic dXNlcjpwYXNz"), (b"x-api-key", KEY_A.encode())],
    ],
    ids=["bearer", "bearer-lowercase-spaces", "x-api-key", "basic-then-x-api-key"],
)
def test_a_known_key_is_accepted_as_bearer_or_x_api_key(
    headers: list[tuple[bytes, bytes]],
) -> None:
    pb = Playbook(routed())
    out = pb.request(body=chat(), headers=[*headers, *JSON])
    cmd = sent_upstream(out)
    assert pb.ex.state is State.AWAIT_UPSTREAM
    assert pb.ex.key.name == "a"
    assert KEY_A not in everything(out)
    assert header(list(cmd.headers), b"authorization") == b"Bearer " + PROVIDER_SECRET.encode()


def test_presented_key_reads_bearer_first_then_x_api_key() -> None:
    assert presented_key([(b"authorization", b"Bearer k1"), (b"x-api-key", b"k2")]) == b"k1"
    assert presented_key([(b"x-api-key", b"k2"), (b"authorization", b"Bearer k1")]) == b"k2"
    assert presented_key([(b"authorization", b"Bearer   ")]) is None
    assert presented_key([(b"authorization", b"Token k1"), (b"x-api-key", b" ")]) is None
    assert presented_key([]) is None


# -- refusing a request ----------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [JSON, [(b"authorization", b"Basic dXNlcjpwYXNz"), *JSON], [(b"x-api-key", b""), *JSON]],
    ids=["none", "basic", "empty-x-api-key"],
)
def test_missing_key_is_401_invalid_api_key_in_openai_shape(
    headers: list[tuple[bytes, bytes]],
) -> None:
    pb = Playbook(routed())
    out = pb.request(body=chat(), headers=headers)
    status, body = error_of(out)
    assert status == 401
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["code"] == "invalid_api_key"
    assert body["error"]["param"] is None
    assert "missing API key" in body["error"]["message"]
    assert not any(isinstance(c, SendUpstreamRequest) for c in out)
    assert pb.ex.finished and pb.ex.outcome == "rejected"


def test_missing_key_is_401_authentication_error_in_anthropic_shape() -> None:
    pb = Playbook(routed())
    out = pb.request(b"POST", b"/v1/messages", message("claude"), JSON)
    status, body = error_of(out)
    assert status == 401
    assert body["type"] == "error"
    assert body["error"]["type"] == "authentication_error"
    assert "missing API key" in body["error"]["message"]
    assert set(body) == {"type", "error"}


@pytest.mark.parametrize("api", ["openai", "anthropic"])
def test_wrong_key_is_401_and_never_appears_in_any_command(api: str) -> None:
    cfg = routed(extra=[{"trace": {"dir": "/traces"}}])
    pb = Playbook(cfg)
    if api == "openai":
        out = pb.request(body=chat(), headers=bearer(WRONG))
    else:
        out = pb.request(
            b"POST", b"/v1/messages", message("claude"), [(b"x-api-key", WRONG.encode()), *JSON]
        )
    status, body = error_of(out)
    assert status == 401
    if api == "openai":
        assert (body["error"]["code"], body["error"]["message"]) == (
            "invalid_api_key",
            "invalid API key",
        )
    else:
        assert body["error"]["type"] == "authentication_error"
    dump = everything(out)
    assert WRONG not in dump
    assert sha(WRONG) not in dump
    assert "trace" in dump.lower()  # the trace record was written, without the key
    assert all(WRONG.encode() not in v for _, v in pb.ex.request_headers)


def test_the_admin_key_is_not_a_client_key() -> None:
    pb = Playbook(routed(auth={"keys": keys(), "admin_key_sha256": sha(ADMIN)}))
    status, body = error_of(pb.request(body=chat(), headers=bearer(ADMIN)))
    assert (status, body["error"]["code"]) == (401, "invalid_api_key")


def test_a_model_outside_the_keys_models_is_403_param_model() -> None:
    pb = Playbook(routed())
    out = pb.request(body=chat("big"), headers=bearer(KEY_B))
    status, body = error_of(out)
    assert status == 403
    assert body["error"] == {
        "message": "the key 'b' may not use the model 'big'",
        "type": "permission_error",
        "param": "model",
        "code": "model_not_allowed",
    }
    assert not any(isinstance(c, SendUpstreamRequest) for c in out)


def test_a_model_inside_the_keys_models_goes_through() -> None:
    pb = Playbook(routed())
    cmd = sent_upstream(pb.request(body=chat("fast"), headers=bearer(KEY_B)))
    assert json.loads(cmd.body)["model"] == "m1"


@pytest.mark.parametrize(
    ("target", "body"),
    [
        (b"/v1/audio/transcriptions", b"--b\r\nContent-Disposition: form-data; name=model\r\n"),
        (b"/v1/chat/completions", b'{"messages": []}'),
    ],
    ids=["multipart-upload", "json-without-model"],
)
def test_a_key_limited_to_models_may_not_send_a_request_naming_none(
    target: bytes, body: bytes
) -> None:
    """In the one-provider shorthand an unreadable body is forwarded as it is: for a key
    limited to models, that would be a way around its list, so it is refused."""
    cfg = upstream_config(middleware=[{"auth": {"keys": keys()}}])
    out = Playbook(cfg).request(b"POST", target, body, bearer(KEY_B))
    status, error = error_of(out)
    assert (status, error["error"]["code"], error["error"]["param"]) == (
        403,
        "model_not_allowed",
        "model",
    )
    assert not any(isinstance(c, SendUpstreamRequest) for c in out)
    # A key without a list is not concerned, and a GET names no model.
    assert any(
        isinstance(c, SendUpstreamRequest)
        for c in Playbook(cfg).request(b"POST", target, body, bearer(KEY_A))
    )
    assert any(
        isinstance(c, SendUpstreamRequest)
        for c in Playbook(cfg).request(b"GET", b"/v1/models", b"", bearer(KEY_B))
    )


def test_a_model_refusal_is_in_anthropic_shape_for_anthropic_clients() -> None:
    pb = Playbook(routed())
    out = pb.request(b"POST", b"/v1/messages", message("claude"), bearer(KEY_B))
    status, body = error_of(out)
    assert status == 403
    assert body["error"]["type"] == "permission_error"


# -- the client's key never reaches an upstream ------------------------------------------


@pytest.mark.parametrize("api_key", [True, False], ids=["provider-key", "no-provider-key"])
@pytest.mark.parametrize("how", ["bearer", "x-api-key"])
def test_the_clients_key_is_never_sent_upstream(api_key: bool, how: str) -> None:
    pb = Playbook(routed(api_key=api_key))
    headers = bearer(KEY_A) if how == "bearer" else [(b"x-api-key", KEY_A.encode()), *JSON]
    cmd = sent_upstream(pb.request(body=chat(), headers=headers))
    assert KEY_A not in repr(cmd)
    names = [n for n, _ in cmd.headers]
    assert b"x-api-key" not in names
    if api_key:
        assert header(list(cmd.headers), b"authorization") == b"Bearer " + PROVIDER_SECRET.encode()
    else:
        assert b"authorization" not in names


def test_the_clients_key_is_not_carried_over_when_translating() -> None:
    # Without a provider key, a translated request carries the client's credential
    # in the other API's header: a virtual key must not be that credential.
    pb = Playbook(routed())
    cmd = sent_upstream(pb.request(body=chat("claude"), headers=bearer(KEY_A)))
    assert cmd.target == b"/v1/messages"
    assert KEY_A not in repr(cmd)
    assert header(list(cmd.headers), b"x-api-key") is None
    assert header(list(cmd.headers), b"authorization") is None


@pytest.mark.parametrize(
    ("target", "body"),
    [
        (b"/v1/chat/completions", chat("gpt-4o-mini")),
        (b"/v1/audio/speech", b'{"input":"hi"}'),
        (b"/v1/chat/completions", b"not json"),
    ],
    ids=["routed", "passthrough", "unreadable"],
)
@pytest.mark.parametrize("api_key", [True, False], ids=["provider-key", "no-provider-key"])
def test_the_shorthand_never_forwards_the_virtual_key(
    target: bytes, body: bytes, api_key: bool
) -> None:
    upstream: dict[str, Any] = {"api_key": PROVIDER_SECRET} if api_key else {}
    cfg = upstream_config(upstream=upstream, middleware=[{"auth": {"keys": keys()}}])
    pb = Playbook(cfg)
    out = pb.request(b"POST", target, body, [(b"x-api-key", KEY_A.encode()), *bearer(KEY_A)])
    cmd = sent_upstream(out)
    assert KEY_A not in everything(out)
    assert cmd.target == target
    expected = b"Bearer " + PROVIDER_SECRET.encode() if api_key else None
    assert header(list(cmd.headers), b"authorization") == expected
    assert header(list(cmd.headers), b"x-api-key") is None


# -- GET /admin/keys ---------------------------------------------------------------------

PRICED = {"input": 1000.0, "output": 2000.0}  # USD per million: 10 in + 5 out = $0.02


def admin_config() -> ProxyConfig:
    key_a = {"rpm": 5, "tpm": 1000, "budget": {"usd": 1, "period": "day"}}
    return config(
        providers={"p": {"base_url": "http://up.test:8080", "api_key": PROVIDER_SECRET}},
        models={"fast": [{"provider": "p", "model": "m1", "price": PRICED}]},
        middleware=[
            {"auth": {"keys": keys(a=key_a), "admin_key_sha256": sha(ADMIN)}},
            "rate_limit",
        ],
    )


def answer(store: MemoryLimiter, query: AcquireQuota) -> QuotaAnswered:
    admitted, decisions, spent = store.quota(
        [(c.key, c.limit, c.amount) for c in query.charges],
        [(b.key, b.usd) for b in query.budgets],
        now=query.at,
    )
    return QuotaAnswered(
        query_id=query.query_id, admitted=admitted, decisions=tuple(decisions), spent=tuple(spent)
    )


def settle(store: MemoryLimiter, commands: Sequence[Command]) -> None:
    for cmd in commands:
        if isinstance(cmd, SettleQuota):
            store.settle(
                [(a.key, a.limit, a.delta, a.charged_at) for a in cmd.adjustments],
                [(s.key, s.usd, s.ttl) for s in cmd.spends],
                now=cmd.at,
            )


def the_query(commands: Sequence[Command]) -> AcquireQuota:
    (query,) = [c for c in commands if isinstance(c, AcquireQuota)]
    return query


def served(proxy: Proxy, store: MemoryLimiter, exchange_id: str) -> None:
    """One chat request with key a, answered with 10 + 5 tokens."""
    pb = Playbook(proxy, exchange_id=exchange_id)
    out = pb.request(body=chat(), headers=bearer(KEY_A))
    out = pb.feed(answer(store, the_query(out)))
    sent_upstream(out)
    completion = {
        "id": "c",
        "object": "chat.completion",
        "model": "m1",
        "choices": [],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    }
    out = pb.feed(
        UpstreamResponse(attempt=1, status=200, headers=JSON),
        UpstreamData(attempt=1, data=json.dumps(completion).encode()),
        UpstreamEnded(attempt=1),
        now=1.0,
    )
    settle(store, out)
    assert pb.ex.outcome == "completed"


def admin(proxy: Proxy, key: str | None, method: bytes = b"GET") -> tuple[Playbook, list[Command]]:
    pb = Playbook(proxy, exchange_id="admin")
    pb.ex = proxy.exchange(exchange_id="admin", now=0.0, wall_time=WALL + 2)
    headers = bearer(key) if key is not None else []
    return pb, pb.request(method, b"/admin/keys", b"", headers)


def test_admin_keys_lists_spend_remaining_and_rate_limit_standing() -> None:
    proxy = Proxy(admin_config())
    store = MemoryLimiter()
    served(proxy, store, "r1")
    served(proxy, store, "r2")
    pb, out0 = admin(proxy, ADMIN)
    query = the_query(out0)
    assert pb.ex.state is State.AWAIT_QUOTA
    assert all(c.amount == 0 for c in query.charges)  # a look, not a charge
    assert all(b.usd == float("inf") for b in query.budgets)
    out = pb.feed(answer(store, query))
    status, headers, body, complete = client_view(out)
    assert (status, complete) == (200, True)
    assert header(headers, b"content-type") == b"application/json"
    assert header(headers, b"cache-control") == b"no-store"
    listing = json.loads(body)
    assert listing["object"] == "list"
    a, b = listing["data"]
    assert a["name"] == "a" and a["models"] is None
    assert a["rate_limits"]["requests"]["limit"] == 5
    assert a["rate_limits"]["requests"]["remaining"] == 3
    assert a["rate_limits"]["tokens"] == {
        "limit": 1000,
        "remaining": 1000 - 2 * 15,
        "reset_after_s": pytest.approx(58, abs=1),  # charged at WALL, read at WALL + 2
    }
    budget = a["budget"]
    assert budget["usd"] == 1 and budget["period"] == "day"
    assert budget["period_id"] == "2023-11-14"
    assert budget["spent_usd"] == pytest.approx(0.04)
    assert budget["remaining_usd"] == pytest.approx(0.96)
    assert budget["resets_at"] == 1_700_006_400.0  # 2023-11-15T00:00:00Z
    assert b == {"name": "b", "models": ["fast"], "rate_limits": {}, "budget": None}
    # Looking charged nothing.
    again, again_out = admin(proxy, ADMIN)
    out = again.feed(answer(store, the_query(again_out)))
    assert json.loads(client_view(out)[2]) == listing


def test_admin_keys_with_a_client_key_is_403() -> None:
    pb, out0 = admin(Proxy(admin_config()), KEY_A)
    status, body = error_of(out0)
    assert status == 403
    assert (body["error"]["type"], body["error"]["code"]) == ("permission_error", "admin_only")
    assert not any(isinstance(c, AcquireQuota) for c in out0)


@pytest.mark.parametrize("key", [None, WRONG], ids=["no-key", "wrong-key"])
def test_admin_keys_without_a_valid_key_is_401(key: str | None) -> None:
    pb, out0 = admin(Proxy(admin_config()), key)
    status, body = error_of(out0)
    assert (status, body["error"]["code"]) == (401, "invalid_api_key")


def test_admin_keys_without_an_admin_key_configured_admits_no_one() -> None:
    proxy = Proxy(routed())
    for key in (ADMIN, KEY_A):
        pb, out0 = admin(proxy, key)
        status, _ = error_of(out0)
        assert status == (401 if key == ADMIN else 403)


def test_admin_keys_only_answers_get() -> None:
    pb, out0 = admin(Proxy(admin_config()), ADMIN, method=b"POST")
    status, body = error_of(out0)
    assert (status, body["error"]["code"]) == (403, "method_not_allowed")


def test_admin_keys_when_the_store_fails_is_503() -> None:
    pb, out0 = admin(Proxy(admin_config()), ADMIN)
    query = the_query(out0)
    out = pb.feed(QuotaFailed(query_id=query.query_id, message="redis down"))
    status, body = error_of(out)
    assert status == 503
    assert body["error"]["type"] == "service_unavailable"
    assert "the quota store is unavailable: redis down" in body["error"]["message"]


def test_admin_keys_when_the_store_does_not_answer_in_time_is_503() -> None:
    pb, out0 = admin(Proxy(admin_config()), ADMIN)
    query = the_query(out0)
    deadline = pb.ex.get_timer()
    assert deadline == query.timeout
    assert pb.fire(deadline / 2) == []  # early: nothing
    status, body = error_of(pb.fire(deadline))
    assert status == 503
    assert "did not answer in time" in body["error"]["message"]


# -- configuration -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entries", "admin_hash", "message"),
    [
        (
            [{"name": "a", "key_sha256": "zz" * 32}],
            None,
            "auth.keys[0].key_sha256: Value error, must be 64 hex digits",
        ),
        (
            [{"name": "a", "key_sha256": "ab" * 31}],
            None,
            "auth.keys[0].key_sha256: Value error, must be 64 hex digits",
        ),
        ([], "xyz", "auth.admin_key_sha256: Value error, must be 64 hex digits"),
        (
            [{"name": "a", "key_sha256": sha(KEY_A)}, {"name": "a", "key_sha256": sha(KEY_B)}],
            None,
            "auth.keys: two keys have the same name",
        ),
        (
            [{"name": "a", "key_sha256": sha(KEY_A)}, {"name": "b", "key_sha256": sha(KEY_A)}],
            None,
            "auth.keys: 'b' has the same key as another",
        ),
        ([{"name": "a b", "key_sha256": sha(KEY_A)}], None, "auth.keys[0].name:"),
        ([{"name": "a", "key_sha256": sha(KEY_A), "rpn": 3}], None, "auth.keys[0].rpn:"),
        (
            [{"name": "a", "key_sha256": sha(KEY_A), "budget": {"usd": 0}}],
            None,
            "auth.keys[0].budget.usd:",
        ),
    ],
    ids=[
        "bad-hex",
        "short-hex",
        "bad-admin",
        "duplicate-name",
        "duplicate-key",
        "bad-name",
        "typo",
        "zero-budget",
    ],
)
def test_a_bad_key_config_is_one_readable_value_error(
    entries: list[dict[str, Any]], admin_hash: str | None, message: str
) -> None:
    with pytest.raises(ValueError, match=r"^auth") as caught:
        AuthMiddleware(keys=entries, admin_key_sha256=admin_hash)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)
    cfg = config(middleware=[{"auth": {"keys": entries, "admin_key_sha256": admin_hash}}])
    with pytest.raises(ValueError, match=r"^middleware\[0\]\.auth"):
        Proxy(cfg)


def test_key_hashes_are_read_case_and_space_insensitively() -> None:
    entry = {"name": "a", "key_sha256": f"  {sha(KEY_A).upper()} "}
    cfg = upstream_config(middleware=[{"auth": {"keys": [entry]}}])
    pb = Playbook(cfg)
    sent_upstream(pb.request(body=chat(), headers=bearer(KEY_A)))
