"""Rate limits and budgets shared through a real Redis (the fixture starts its own).

Two proxy processes enforce one combined limit exactly; Redis stopped mid-test gives
the configured fail mode within its timeout and the proxy recovers by itself when
Redis returns; spend survives a proxy restart. Without redis-server these tests skip
with the reason locally, and fail under CI.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import httpx
import pytest

from tests.e2e._helpers import CHAT, READ_TIMEOUT, assert_error_shape, chat_body, stop
from tests.e2e.test_policies import KEY_A, auth, gateway, sha
from tests.support.mock_upstream import MockUpstream
from tests.support.proxy_process import ProxyProcess, StartProxy
from tests.support.redis_server import RedisServer, require_redis

RPM: Final = 5
BEARER: Final = {"authorization": f"Bearer {KEY_A}"}


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    require_redis()
    directory = tmp_path / "redis"
    directory.mkdir()
    with RedisServer(directory, persist=True) as server:
        yield server


def redis_config(
    base_url: str, redis: RedisServer, *, key: dict[str, Any], **limits: Any
) -> dict[str, Any]:
    price = {"input": 1_000_000.0, "output": 1_000_000.0}  # $1 a token: the mock's 17 → $17
    config = gateway(
        base_url,
        auth({"name": "team-a", "key_sha256": sha(KEY_A), **key}),
        "rate_limit",
        fast=[{"provider": "oai", "model": "gpt-upstream", "price": price}],
    )
    config["limits"] = {"backend": "redis", "redis_url": redis.url(), **limits}
    return config


def post(proxy: ProxyProcess) -> httpx.Response:
    with httpx.Client(base_url=proxy.base_url, timeout=READ_TIMEOUT) as http:
        return http.post(CHAT, json=chat_body("fast"), headers=BEARER)


@pytest.mark.parametrize("adapter", ["trio"])  # with the h11 and ASGI ones it starts itself
def test_two_proxies_share_one_limit_exactly(
    start_proxy: StartProxy, mock_upstream: MockUpstream, redis_server: RedisServer
) -> None:
    """An h11 proxy, an ASGI proxy with two workers and a trio proxy, one Redis: rpm 5
    in total."""
    config = redis_config(mock_upstream.base_url, redis_server, key={"rpm": RPM})
    first = start_proxy(config=config, adapter="h11")
    second = start_proxy("--workers", "2", config=config, adapter="asgi")
    third = start_proxy(config=config)
    statuses = [post(proxy).status_code for proxy in [first, second, third] * (RPM + 2)]
    assert statuses.count(200) == RPM, statuses
    assert statuses.count(429) == len(statuses) - RPM
    assert statuses[:RPM] == [200] * RPM
    assert len(mock_upstream.requests) == RPM


@pytest.mark.parametrize("mode", ["closed", "open"])
def test_redis_down_then_back(
    start_proxy: StartProxy,
    mock_upstream: MockUpstream,
    redis_server: RedisServer,
    mode: str,
) -> None:
    """Redis stopped: 503 (closed) or admitted unmetered (open) within the timeout,
    never a hang; Redis started again: limits are enforced again, by themselves."""
    config = redis_config(
        mock_upstream.base_url,
        redis_server,
        key={"rpm": RPM},
        redis_timeout=0.2,
        redis_retry_interval=0.1,
        on_backend_error=mode,
    )
    proxy = start_proxy(config=config)
    assert post(proxy).status_code == 200

    redis_server.stop()
    for _ in range(3):  # the first call finds Redis gone, the next ones fail at once
        response = post(proxy)  # bounded by READ_TIMEOUT: a hang fails here
        if mode == "closed":
            assert response.status_code == 503, response.text
            assert_error_shape(response.json(), code="service_unavailable")
            assert response.headers["retry-after"] == "1"
        else:
            assert response.status_code == 200, response.text
            assert "x-ratelimit-remaining-requests" not in response.headers
    assert "quota store" in proxy.logs() or "redis" in proxy.logs().lower()

    redis_server.start()  # same port, and the one request counted before is still there
    statuses = []
    for _ in range(50):  # the breaker lets a call through after 0.1 s: bounded retries
        response = post(proxy)
        statuses.append(response.status_code)
        if "x-ratelimit-remaining-requests" in response.headers:
            break
    else:
        pytest.fail(f"the proxy did not recover after Redis returned: {statuses}")
    while response.status_code == 200:
        response = post(proxy)
    assert response.status_code == 429
    assert_error_shape(response.json(), code="rate_limit_exceeded")


def test_redis_down_floods_no_log(
    start_proxy: StartProxy, mock_upstream: MockUpstream, redis_server: RedisServer
) -> None:
    """Redis stopped and on_backend_error: closed: 200 refused requests are a handful
    of ERROR lines, the first of each kind and a count of its repeats (at shutdown at
    the latest), not one line each."""
    config = redis_config(
        mock_upstream.base_url,
        redis_server,
        key={"rpm": 100_000},
        redis_timeout=0.2,
        redis_retry_interval=0.1,
        on_backend_error="closed",
    )
    proxy = start_proxy(config=config)
    assert post(proxy).status_code == 200
    redis_server.stop()
    with httpx.Client(base_url=proxy.base_url, timeout=READ_TIMEOUT) as http:
        statuses = [
            http.post(CHAT, json=chat_body("fast"), headers=BEARER).status_code for _ in range(200)
        ]
    assert statuses == [503] * 200
    assert stop(proxy) in (0, -signal.SIGTERM)
    logs = proxy.logs()
    errors = [line for line in logs.splitlines() if " ERROR " in line]
    assert 1 <= len(errors) <= 8, "\n".join(errors)
    # Every refusal is accounted for: logged once, or counted in a summary.
    refused = [line for line in errors if "cannot be checked now" in line]
    assert "exchange=" in refused[0] and "status=503" in refused[0]
    counts = [int(n) for n in re.findall(r"\(repeated (\d+) times in \d+ s\)", "\n".join(refused))]
    assert counts, refused
    assert len(refused) - len(counts) + sum(counts) == 200, refused


def test_spend_survives_a_proxy_restart(
    start_proxy: StartProxy, mock_upstream: MockUpstream, redis_server: RedisServer
) -> None:
    """The budget's spend lives in Redis: a restarted proxy still refuses the key."""
    config = redis_config(
        mock_upstream.base_url, redis_server, key={"budget": {"usd": 10, "period": "month"}}
    )
    proxy = start_proxy(config=config)
    assert post(proxy).status_code == 200
    refused = post(proxy)
    assert refused.status_code == 429
    assert_error_shape(refused.json(), code="insufficient_quota")
    proxy.close()

    again = start_proxy(config=config)
    refused = post(again)
    assert refused.status_code == 429, "the spend was forgotten"
    assert_error_shape(refused.json(), code="insufficient_quota")
    assert len(mock_upstream.requests) == 1
