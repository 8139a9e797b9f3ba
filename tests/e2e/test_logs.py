"""Structured logs on every adapter: ``--log-format json``, the access log, exchange ids.

What a user's log collector relies on: every line on stderr is one JSON object;
each exchange gives exactly one ``sansproxy.access`` line with its route, status,
timings, tokens and cost; every line about an exchange carries its id (the
``x-sansproxy-id`` the client saw), as a key; and no key, client's or provider's,
is ever written.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Final

import pytest

from tests.e2e._helpers import CHAT, READ_TIMEOUT, chat_body, http_client, iter_events, stop
from tests.support.mock_upstream import SCENARIO_HEADER, MockUpstream
from tests.support.proxy_process import ProxyProcess, StartProxy

CLIENT_KEY: Final = "sk-client-SECRET-logs-31337"
PROVIDER_KEY: Final = "sk-provider-SECRET-logs-27182"
EVERY_ADAPTER: Final = ["h11", "asgi", "trio", "httptools"]
ACCESS: Final = '"logger":"sansproxy.access"'


def _config(base_url: str) -> dict[str, Any]:
    """Model ``fast`` on provider ``oai`` (openai, with PROVIDER_KEY, priced); the
    client's key is CLIENT_KEY, named ``team-a``."""
    return {
        "providers": {
            "oai": {
                "type": "openai",
                "base_url": base_url,
                "api_key": PROVIDER_KEY,
                "connect_timeout": 2.0,
                "read_timeout": READ_TIMEOUT,
            }
        },
        "models": {
            "fast": [
                {
                    "provider": "oai",
                    "model": "gpt-upstream",
                    "price": {"input": 1.0, "output": 2.0},
                }
            ]
        },
        "middleware": [
            {
                "auth": {
                    "keys": [
                        {
                            "name": "team-a",
                            "key_sha256": hashlib.sha256(CLIENT_KEY.encode()).hexdigest(),
                        }
                    ]
                }
            }
        ],
    }


def _start(start_proxy: StartProxy, mock: MockUpstream, *args: str) -> ProxyProcess:
    return start_proxy(*args, config=_config(mock.base_url))


def _auth() -> dict[str, str]:
    return {"authorization": f"Bearer {CLIENT_KEY}"}


def _json_lines(proxy: ProxyProcess) -> list[dict[str, Any]]:
    """Every stderr line, each parsed: fails on a line that is not one JSON object."""
    lines = []
    for text in proxy.logs("stderr").splitlines():
        try:
            line = json.loads(text)
        except ValueError:
            pytest.fail(f"not a JSON line: {text!r}\n--- stderr ---\n{proxy.logs('stderr')}")
        assert isinstance(line, dict), text
        assert {"ts", "level", "logger", "message"} <= line.keys(), text
        lines.append(line)
    return lines


def _wait_access(proxy: ProxyProcess, exchange: str) -> None:
    proxy.wait_for_log(f'{ACCESS}.*"exchange":"{exchange}"', timeout=READ_TIMEOUT)


@pytest.mark.parametrize("adapter", EVERY_ADAPTER)
def test_json_lines_one_access_line_per_exchange_and_no_secret(
    start_proxy: StartProxy, mock_upstream: MockUpstream
) -> None:
    proxy = _start(start_proxy, mock_upstream, "--log-format", "json", "--access-log")
    with http_client(proxy) as client:
        plain = client.post(CHAT, json=chat_body("fast"), headers=_auth())
        assert plain.status_code == 200, plain.text
        with client.stream(
            "POST", CHAT, json=chat_body("fast", stream=True), headers=_auth()
        ) as streamed:
            assert streamed.status_code == 200
            assert [e.data for e in iter_events(streamed)][-1] == "[DONE]"
        refused = client.post(CHAT, json=chat_body("fast"), headers={"authorization": "Bearer no"})
        assert refused.status_code == 401
    ids = [r.headers["x-sansproxy-id"] for r in (plain, streamed, refused)]
    assert len(set(ids)) == 3
    for exchange in ids:
        _wait_access(proxy, exchange)
    assert stop(proxy) == 0

    lines = _json_lines(proxy)
    access = [line for line in lines if line["logger"] == "sansproxy.access"]
    assert sorted(line["exchange"] for line in access) == sorted(ids)  # one each
    by_id = {line["exchange"]: line for line in access}
    usage = plain.json()["usage"]
    first = by_id[ids[0]]
    assert first["level"] == "INFO"
    assert first["message"].startswith("POST /v1/chat/completions 200 completed ")
    assert {k: first[k] for k in ("method", "path", "status", "outcome", "model")} == {
        "method": "POST",
        "path": "/v1/chat/completions",
        "status": 200,
        "outcome": "completed",
        "model": "fast",
    }
    assert (first["provider"], first["key_name"], first["retries"], first["error"]) == (
        "oai",
        "team-a",
        0,
        None,
    )
    assert (first["tokens_in"], first["tokens_out"]) == (
        usage["prompt_tokens"],
        usage["completion_tokens"],
    )
    expected_cost = (usage["prompt_tokens"] * 1.0 + usage["completion_tokens"] * 2.0) / 1e6
    assert first["cost_usd"] == pytest.approx(expected_cost)
    assert 0 < first["upstream_ms"] <= first["duration_ms"]
    stream = by_id[ids[1]]
    assert (stream["status"], stream["outcome"], stream["provider"]) == (200, "completed", "oai")
    assert 0 < stream["ttft_ms"] <= stream["duration_ms"]
    assert stream["tokens_out"] > 0
    denied = by_id[ids[2]]
    assert (denied["status"], denied["outcome"], denied["provider"], denied["key_name"]) == (
        401,
        "rejected",
        None,
        None,
    )
    output = proxy.logs()
    assert CLIENT_KEY not in output and PROVIDER_KEY not in output
    # Nothing about keys, either: no hash, no header.
    assert hashlib.sha256(CLIENT_KEY.encode()).hexdigest() not in output
    assert "authorization" not in output.lower()


@pytest.mark.parametrize("adapter", EVERY_ADAPTER)
def test_every_line_of_an_exchange_carries_its_id(
    start_proxy: StartProxy, mock_upstream: MockUpstream
) -> None:
    proxy = _start(start_proxy, mock_upstream, "--log-format", "json", "--access-log")
    with http_client(proxy) as client:
        failed = client.post(
            CHAT,
            json=chat_body("fast"),
            headers={**_auth(), SCENARIO_HEADER: "reset-before-head"},
        )
        assert failed.status_code == 502
        with client.stream(
            "POST",
            CHAT,
            json=chat_body("fast", stream=True),
            headers={**_auth(), SCENARIO_HEADER: "stall-mid-stream"},
        ) as gone:
            events = iter_events(gone)
            next(events)
            next(events)
        # Leaving the `with` closed the connection mid-stream.
    failed_id, gone_id = failed.headers["x-sansproxy-id"], gone.headers["x-sansproxy-id"]
    _wait_access(proxy, failed_id)
    _wait_access(proxy, gone_id)
    assert stop(proxy) == 0

    lines = _json_lines(proxy)
    about = {
        exchange: [line for line in lines if line.get("exchange") == exchange]
        for exchange in (failed_id, gone_id)
    }
    # The upstream's failure: the line saying so, and the access line, both by id.
    upstream = [line for line in about[failed_id] if line["logger"] != "sansproxy.access"]
    assert [line["level"] for line in upstream] == ["ERROR"], upstream
    assert upstream[0]["status"] == 502 and upstream[0]["code"]
    (access,) = [line for line in about[failed_id] if line["logger"] == "sansproxy.access"]
    assert (access["status"], access["outcome"]) == (502, "upstream_error")
    # The client that left mid-stream: said once, by id, and its access line.
    left = [line["message"] for line in about[gone_id] if line["logger"] != "sansproxy.access"]
    assert left == ["client went away"]
    (access,) = [line for line in about[gone_id] if line["logger"] == "sansproxy.access"]
    assert (access["status"], access["outcome"]) == (200, "client_gone")
    # No line mentions an exchange in its text but not as a key.
    for line in lines:
        for exchange in (failed_id, gone_id):
            if exchange in line["message"]:
                assert line.get("exchange") == exchange, line


@pytest.mark.parametrize("adapter", EVERY_ADAPTER)
@pytest.mark.parametrize("flag", ["--no-access-log", None])
def test_no_access_log_gives_no_access_lines(
    start_proxy: StartProxy, mock_upstream: MockUpstream, flag: str | None
) -> None:
    # Off by --no-access-log, and by default.
    args = ["--log-format", "json", *([flag] if flag else [])]
    proxy = _start(start_proxy, mock_upstream, *args)
    with http_client(proxy) as client:
        for _ in range(3):
            response = client.post(CHAT, json=chat_body("fast"), headers=_auth())
            assert response.status_code == 200
    assert stop(proxy) == 0
    lines = _json_lines(proxy)
    assert lines, "the proxy said nothing at all"
    assert [line for line in lines if line["logger"] == "sansproxy.access"] == []


@pytest.mark.parametrize("adapter", ["h11", "asgi"])
def test_the_text_access_line(start_proxy: StartProxy, mock_upstream: MockUpstream) -> None:
    proxy = _start(start_proxy, mock_upstream, "--access-log")
    with http_client(proxy) as client:
        response = client.post(CHAT, json=chat_body("fast"), headers=_auth())
    assert response.status_code == 200
    exchange = response.headers["x-sansproxy-id"]
    match = proxy.wait_for_log(
        r" INFO sansproxy\.access: POST /v1/chat/completions 200 completed [0-9.]+ms "
        rf"exchange={exchange} model=fast provider=oai .*key_name=team-a retries=0$",
        timeout=READ_TIMEOUT,
    )
    assert CLIENT_KEY not in match.string and PROVIDER_KEY not in match.string
