"""Policies through each adapter: keys, rate limits, budgets, retries and fallbacks.

The official SDKs see our 401/403/429 in their own API's shape; the openai SDK's own
retry waits what our Retry-After says; retries and fallbacks run against a flaky mock
upstream (refused connections, 500s, 429 with Retry-After, stalls) and every attempt
is in the trace. The memory backend here; the Redis backend in test_policies_redis.py.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Final

import anthropic
import httpx
import openai
import pytest

from tests.e2e._helpers import (
    CHAT,
    READ_TIMEOUT,
    assert_error_shape,
    chat_body,
    closed_port,
    http_client,
)
from tests.support.mock_upstream import DEFAULT_TEXT, MockUpstream
from tests.support.proxy_process import ProxyProcess, StartProxy
from tests.support.traces import wait_for_traces

KEY_A: Final = "sk-sp-team-a-secret-0123456789"
KEY_B: Final = "sk-sp-team-b-secret-9876543210"
ADMIN: Final = "sk-sp-admin-secret-abcdef"
PROVIDER_KEY: Final = "sk-provider-MUST-NOT-LEAK"
HI: Final[Any] = [{"role": "user", "content": "Hi"}]


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def gateway(base_url: str, *middleware: Any, **models: Any) -> dict[str, Any]:
    """Providers `oai` (openai) and `claude` (anthropic) on `base_url`; models given or
    `fast` (oai) and `smart` (claude)."""
    provider = {"connect_timeout": 2.0, "read_timeout": READ_TIMEOUT, "api_key": PROVIDER_KEY}
    return {
        "providers": {
            "oai": {"type": "openai", "base_url": base_url, **provider},
            "claude": {"type": "anthropic", "base_url": base_url, **provider},
        },
        "models": models
        or {
            "fast": [{"provider": "oai", "model": "gpt-upstream"}],
            "smart": [{"provider": "claude", "model": "claude-upstream"}],
        },
        "middleware": list(middleware),
    }


def auth(*keys: dict[str, Any]) -> dict[str, Any]:
    return {"auth": {"keys": list(keys), "admin_key_sha256": sha(ADMIN)}}


def oai(proxy: ProxyProcess, key: str, *, retries: int = 0) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{proxy.base_url}/v1", api_key=key, max_retries=retries, timeout=READ_TIMEOUT
    )


def claude(proxy: ProxyProcess, key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=proxy.base_url, api_key=key, max_retries=0, timeout=READ_TIMEOUT
    )


# -- keys --------------------------------------------------------------------------------


def test_keys_in_both_api_shapes(start_proxy: StartProxy, mock_upstream: MockUpstream) -> None:
    """401 for a missing or unknown key, 403 for a model the key may not use; the
    client's key never reaches the upstream, the provider's never reaches the client."""
    config = gateway(
        mock_upstream.base_url,
        auth(
            {"name": "team-a", "key_sha256": sha(KEY_A), "models": ["fast", "smart"]},
            {"name": "team-b", "key_sha256": sha(KEY_B), "models": ["fast"]},
        ),
    )
    proxy = start_proxy(config=config)
    with oai(proxy, KEY_A) as client:
        answer = client.chat.completions.create(model="fast", messages=HI)
        assert answer.choices[0].message.content == DEFAULT_TEXT
    with oai(proxy, "sk-wrong") as client, pytest.raises(openai.AuthenticationError) as caught:
        client.chat.completions.create(model="fast", messages=HI)
    assert_error_shape(caught.value.response.json(), code="invalid_api_key")
    assert "sk-wrong" not in caught.value.response.text
    with oai(proxy, KEY_B) as client, pytest.raises(openai.PermissionDeniedError) as denied:
        client.chat.completions.create(model="smart", messages=HI)
    error = assert_error_shape(denied.value.response.json(), code="model_not_allowed")
    assert error["param"] == "model"

    # The anthropic SDK sends x-api-key; errors come back in Anthropic's shape.
    with claude(proxy, KEY_A) as client:
        message = client.messages.create(model="smart", max_tokens=64, messages=HI)
        assert message.content[0].type == "text"
    with claude(proxy, "sk-wrong") as client, pytest.raises(anthropic.AuthenticationError) as bad:
        client.messages.create(model="smart", max_tokens=64, messages=HI)
    assert bad.value.response.json()["error"]["type"] == "authentication_error"
    with claude(proxy, KEY_B) as client, pytest.raises(anthropic.PermissionDeniedError) as no:
        client.messages.create(model="smart", max_tokens=64, messages=HI)
    assert no.value.response.json()["error"]["type"] == "permission_error"
    with httpx.Client(base_url=proxy.base_url, timeout=READ_TIMEOUT) as http:
        missing = http.post(CHAT, json=chat_body("fast"))
        assert missing.status_code == 401
        assert_error_shape(missing.json(), code="invalid_api_key")

    seen = mock_upstream.requests
    assert len(seen) == 2, "only the two admitted requests went upstream"
    for request in seen:
        credentials = request.header("authorization") or request.header("x-api-key")
        assert credentials is not None and PROVIDER_KEY in credentials
        assert KEY_A not in str(request.headers)


# -- rate limits and budgets ----------------------------------------------------------


def test_rate_limit_429_and_the_sdk_honours_retry_after(
    start_proxy: StartProxy, mock_upstream: MockUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """rpm: 2 → the third request in a minute is 429 rate_limit_exceeded with
    Retry-After and x-ratelimit-* headers; the openai SDK's retry waits what it says."""
    config = gateway(
        mock_upstream.base_url,
        auth({"name": "team-a", "key_sha256": sha(KEY_A), "rpm": 2, "tpm": 100_000}),
        "rate_limit",
    )
    proxy = start_proxy(config=config)
    with oai(proxy, KEY_A) as client:
        for remaining in (1, 0):
            raw = client.chat.completions.with_raw_response.create(model="fast", messages=HI)
            assert raw.headers["x-ratelimit-limit-requests"] == "2"
            assert raw.headers["x-ratelimit-remaining-requests"] == str(remaining)
            assert int(raw.headers["x-ratelimit-remaining-tokens"]) < 100_000
        with pytest.raises(openai.RateLimitError) as caught:
            client.chat.completions.create(model="fast", messages=HI)
    response = caught.value.response
    assert_error_shape(response.json(), code="rate_limit_exceeded")
    retry_after = int(response.headers["retry-after"])
    assert 1 <= retry_after <= 60
    assert response.headers["x-ratelimit-remaining-requests"] == "0"
    assert response.headers["x-ratelimit-reset-requests"].endswith("s")

    # The SDK's own retry: it sleeps what Retry-After says (recorded, not slept).
    slept: list[float] = []
    monkeypatch.setattr("openai._base_client.time.sleep", slept.append)
    with oai(proxy, KEY_A, retries=1) as client, pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="fast", messages=HI)
    assert len(slept) == 1
    assert slept[0] == pytest.approx(retry_after, abs=1.0)
    assert len(mock_upstream.requests) == 2

    # The same key through the anthropic SDK: the refusal in Anthropic's shape.
    with claude(proxy, KEY_A) as client, pytest.raises(anthropic.RateLimitError) as limited:
        client.messages.create(model="fast", max_tokens=64, messages=HI)
    assert limited.value.response.json()["error"]["type"] == "rate_limit_error"
    assert int(limited.value.response.headers["retry-after"]) >= 1


def test_budget_exceeded_is_insufficient_quota(
    start_proxy: StartProxy, mock_upstream: MockUpstream
) -> None:
    """A key's budget: the request that crosses it is served, then 429 insufficient_quota
    (which the openai SDK does not retry: x-should-retry: false)."""
    price = {"input": 1_000_000.0, "output": 1_000_000.0}  # $1 a token: the mock's 17 → $17
    config = gateway(
        mock_upstream.base_url,
        auth({"name": "team-a", "key_sha256": sha(KEY_A), "budget": {"usd": 10, "period": "day"}}),
        "rate_limit",
        fast=[{"provider": "oai", "model": "gpt-upstream", "price": price}],
    )
    proxy = start_proxy(config=config)
    with oai(proxy, KEY_A, retries=2) as client:
        client.chat.completions.create(model="fast", messages=HI)
        with pytest.raises(openai.RateLimitError) as caught:
            client.chat.completions.create(model="fast", messages=HI)
    error = assert_error_shape(caught.value.response.json(), code="insufficient_quota")
    assert error["type"] == "insufficient_quota"
    assert len(mock_upstream.requests) == 1, "no retry of an exhausted budget"

    with httpx.Client(base_url=proxy.base_url, timeout=READ_TIMEOUT) as http:
        view = http.get("/admin/keys", headers={"authorization": f"Bearer {ADMIN}"})
        assert view.status_code == 200, view.text
        (entry,) = view.json()["data"]
        assert entry["name"] == "team-a"
        assert entry["budget"]["spent_usd"] == pytest.approx(17.0)
        assert entry["budget"]["remaining_usd"] == 0
        assert KEY_A not in view.text and sha(KEY_A) not in view.text
        forbidden = http.get("/admin/keys", headers={"authorization": f"Bearer {KEY_A}"})
        assert forbidden.status_code == 403
        assert http.get("/admin/keys").status_code == 401


def test_a_client_leaving_mid_stream_is_charged_what_it_consumed(
    start_proxy: StartProxy, mock_upstream: MockUpstream, tmp_path: Path
) -> None:
    """Leaving mid-stream is no way around a budget: the key pays an estimate of what was
    consumed (the prompt's bytes / 4, a token a short delta relayed), said so in the trace."""
    trace_dir = tmp_path / "traces"
    price = {"input": 1_000_000.0, "output": 1_000_000.0}  # $1 a token
    key = {"name": "team-a", "key_sha256": sha(KEY_A), "budget": {"usd": 10**6, "period": "day"}}
    config = gateway(
        mock_upstream.base_url,
        {"trace": {"dir": str(trace_dir)}},
        auth(key),
        "rate_limit",
        fast=[{"provider": "oai", "model": "scenario:slow-stream:40:50", "price": price}],
    )
    proxy = start_proxy(config=config)
    with oai(proxy, KEY_A) as client:
        stream = client.chat.completions.create(model="fast", messages=HI, stream=True)
        pieces = []
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
            if len(pieces) == 3:
                break
        stream.close()  # gone, 37 deltas before the end
    (record,) = wait_for_traces(trace_dir, 1)
    assert record["outcome"] == "client_gone"
    usage = record["usage"]
    assert usage["estimated"] is True
    assert usage["input_tokens"] > 0
    assert 3 <= usage["output_tokens"] < 40
    assert record["cost_usd"] == pytest.approx(usage["input_tokens"] + usage["output_tokens"])
    with httpx.Client(base_url=proxy.base_url, timeout=READ_TIMEOUT) as http:
        view = http.get("/admin/keys", headers={"authorization": f"Bearer {ADMIN}"})
    (entry,) = view.json()["data"]
    assert entry["budget"]["spent_usd"] == pytest.approx(record["cost_usd"])


# -- retries and fallbacks ------------------------------------------------------------


def attempts_in_trace(trace_dir: Path) -> list[dict[str, Any]]:
    (record,) = wait_for_traces(trace_dir, 1)
    attempts: list[dict[str, Any]] = record["attempts"]
    return attempts


def test_retries_against_a_flaky_upstream(
    start_proxy: StartProxy, mock_upstream: MockUpstream, tmp_path: Path
) -> None:
    """500, 429 with Retry-After, a stall and a reset are retried; every attempt is
    in the trace with its outcome and the wait before it."""
    trace_dir = tmp_path / "traces"
    models = {
        "fast": [
            {"provider": "oai", "model": "gpt-upstream"},
        ]
    }
    config = gateway(
        mock_upstream.base_url,
        {"trace": {"dir": str(trace_dir)}},
        {"retry": {"attempts": 5, "backoff": 0.01, "max_backoff": 1.0, "timeout": 20}},
        **models,
    )
    config["providers"]["oai"]["read_timeout"] = 0.5
    proxy = start_proxy(config=config)
    mock_upstream.enqueue("status-500", "status-429:0.3", "stall-head", "reset-before-head", "ok")
    with oai(proxy, "sk-any") as client:
        answer = client.chat.completions.create(model="fast", messages=HI)
    assert answer.choices[0].message.content == DEFAULT_TEXT
    assert len(mock_upstream.requests) == 5
    attempts = attempts_in_trace(trace_dir)
    assert [(a["outcome"], a["status"]) for a in attempts] == [
        ("status", 500),
        ("status", 429),
        ("timeout", None),
        ("reset", None),
        ("ok", 200),
    ]
    assert attempts[1]["retry_after"] == pytest.approx(0.3)
    assert attempts[2]["delay_ms"] >= 300, "the wait honours the upstream's Retry-After"
    assert all(a["delay_ms"] > 0 for a in attempts[1:])


def test_fallbacks_after_the_deployments(
    start_proxy: StartProxy, mock_upstream: MockUpstream, tmp_path: Path
) -> None:
    """A deployment that refuses connections, then the next deployment (500), then the
    fallback model answers; the client never sees the failures."""
    trace_dir = tmp_path / "traces"
    dead = f"http://127.0.0.1:{closed_port()}"
    config = gateway(
        mock_upstream.base_url,
        {"trace": {"dir": str(trace_dir)}},
        {"retry": {"attempts": 1, "timeout": 20}},
        smart={
            "deployments": [
                # Picked first (but for one time in a billion): the retry goes in order.
                {"provider": "dead", "model": "claude-dead", "weight": 1e9},
                {"provider": "claude", "model": "claude-upstream", "weight": 1},
            ],
            "fallbacks": ["fast"],
        },
        fast=[{"provider": "oai", "model": "gpt-upstream"}],
    )
    config["providers"]["dead"] = {"type": "anthropic", "base_url": dead, "connect_timeout": 2.0}
    proxy = start_proxy(config=config)
    mock_upstream.enqueue("status-503", "ok")
    with claude(proxy, "sk-any") as client:
        message = client.messages.create(model="smart", max_tokens=64, messages=HI)
    assert message.content[0].type == "text"
    attempts = attempts_in_trace(trace_dir)
    assert [(a["provider"], a["model"], a["outcome"]) for a in attempts] == [
        ("dead", "smart", "connect"),
        ("claude", "smart", "status"),
        ("oai", "fast", "ok"),
    ]


def test_no_retry_once_the_stream_started(
    start_proxy: StartProxy, mock_upstream: MockUpstream
) -> None:
    """A stream that breaks after its head is never retried: an SSE error, a clean end."""
    config = gateway(mock_upstream.base_url, {"retry": {"attempts": 3, "backoff": 0.01}})
    config["providers"]["oai"]["read_timeout"] = 0.5
    proxy = start_proxy(config=config)
    mock_upstream.enqueue("stall-mid-stream")
    with http_client(proxy) as http:
        response = http.post(CHAT, json=chat_body("fast", stream=True))
    assert response.status_code == 200
    assert "upstream_timeout" in response.text
    assert len(mock_upstream.requests) == 1


def test_retries_exhausted_answer_in_the_taxonomy(
    start_proxy: StartProxy, mock_upstream: MockUpstream
) -> None:
    """Connect failures on every attempt → 502 naming the attempts; 429 on every attempt →
    429 upstream_rate_limited with the upstream's Retry-After."""
    dead = f"http://127.0.0.1:{closed_port()}"
    config = gateway(
        mock_upstream.base_url,
        {"retry": {"attempts": 2, "backoff": 0.01, "max_backoff": 0.5}},
        down=[{"provider": "dead", "model": "x"}],
        fast=[{"provider": "oai", "model": "gpt-upstream"}],
    )
    config["providers"]["dead"] = {"type": "openai", "base_url": dead, "connect_timeout": 2.0}
    proxy = start_proxy(config=config)
    with http_client(proxy) as http:
        down = http.post(CHAT, json=chat_body("down"))
        assert down.status_code == 502
        error = assert_error_shape(down.json(), code="upstream_connect_error")
        assert "after 2 attempts" in error["message"]
        mock_upstream.enqueue("status-429:0.05", "status-429:0.05")
        limited = http.post(CHAT, json=chat_body("fast"))
    assert limited.status_code == 429
    assert_error_shape(limited.json(), code="upstream_rate_limited")
    assert limited.headers["retry-after"] == "1"
    assert len(mock_upstream.requests) == 2


def test_a_driver_error_closes_one_connection_not_the_server(
    start_proxy: StartProxy, mock_upstream: MockUpstream
) -> None:
    """A custom middleware's bug that the driver trips on (a command it cannot carry
    out): that request fails, logged with its traceback; the server serves the next."""
    config = gateway(mock_upstream.base_url, "tests.support.faulty_middleware:Faulty")
    proxy = start_proxy(config=config)
    with httpx.Client(base_url=proxy.base_url, timeout=READ_TIMEOUT) as http:
        try:
            broken = http.post(CHAT, json=chat_body("fast"), headers={"x-fault": "command"})
        except httpx.TransportError:
            pass  # the raw servers close that connection
        else:
            assert broken.status_code == 500
            assert "Traceback" not in broken.text
    proxy.wait_for_log("unexpected command")
    with httpx.Client(base_url=proxy.base_url, timeout=READ_TIMEOUT) as http:
        assert http.post(CHAT, json=chat_body("fast")).status_code == 200
