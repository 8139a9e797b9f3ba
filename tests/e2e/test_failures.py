"""Failures through each adapter: every one answers in OpenAI's error shape, or is relayed.

Upstream refusing, stalling, resetting or talking garbage; bodies and heads over
their limits; upstream 4xx/5xx relayed unchanged; a plain body cut mid-way is a
truncated response, never a hang. Each failure is logged once, without a traceback.
"""

from __future__ import annotations

import re
import socket

import httpx
import pytest

from tests.e2e._helpers import (
    CHAT,
    RawClient,
    assert_error_shape,
    chat_body,
    closed_port,
    http_client,
    raw_request,
)
from tests.support.mock_upstream import SCENARIO_HEADER, MockUpstream
from tests.support.proxy_process import ProxyProcess, StartProxy


def _logged_once(proxy: ProxyProcess, response: httpx.Response) -> None:
    """The failure of this exchange is logged exactly once (warning or error)."""
    exchange = response.headers["x-sansproxy-id"]
    pattern = re.compile(rf"\b(WARNING|ERROR)\b.*{re.escape(exchange)}")
    proxy.wait_for_log(pattern, timeout=5)
    lines = [line for line in proxy.logs().splitlines() if pattern.search(line)]
    assert len(lines) == 1, lines
    assert "Traceback" not in proxy.logs()


def test_upstream_refuses_the_connection(start_proxy: StartProxy) -> None:
    proxy = start_proxy("--base-url", f"http://127.0.0.1:{closed_port()}")
    with http_client(proxy) as client:
        response = client.post(CHAT, json=chat_body())
        assert response.status_code == 502
        assert_error_shape(response.json(), code="upstream_connect_error")
        # And again, on the same client connection.
        assert client.get("/v1/models").status_code == 502
    _logged_once(proxy, response)


def test_upstream_stalls_before_the_head(
    start_proxy: StartProxy, mock_upstream: MockUpstream
) -> None:
    proxy = start_proxy(
        "--base-url", mock_upstream.base_url, config={"upstream": {"read_timeout": 0.5}}
    )
    with http_client(proxy) as client:
        response = client.post(CHAT, json=chat_body(), headers={SCENARIO_HEADER: "stall-head"})
    assert response.status_code == 504
    assert_error_shape(response.json(), code="upstream_timeout")
    # The abandoned upstream call is closed, not left hanging.
    assert mock_upstream.wait_for_close(mock_upstream.requests[0].conn_id, 1.0)
    _logged_once(proxy, response)


def test_upstream_stalls_on_a_stream_request_before_the_head(
    start_proxy: StartProxy, mock_upstream: MockUpstream
) -> None:
    proxy = start_proxy(
        "--base-url", mock_upstream.base_url, config={"upstream": {"read_timeout": 0.5}}
    )
    with http_client(proxy) as client:
        response = client.post(
            CHAT, json=chat_body(stream=True), headers={SCENARIO_HEADER: "stall-head"}
        )
    assert response.status_code == 504
    assert response.headers["content-type"].startswith("application/json")
    assert_error_shape(response.json(), code="upstream_timeout")


def test_connect_timeout(start_proxy: StartProxy) -> None:
    # A listener that never accepts, its backlog full: a new handshake stalls.
    with socket.socket() as listener, socket.socket() as filler:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        filler.connect(listener.getsockname())
        port = listener.getsockname()[1]
        proxy = start_proxy(
            "--base-url",
            f"http://127.0.0.1:{port}",
            config={"upstream": {"connect_timeout": 0.3, "read_timeout": 30}},
        )
        with http_client(proxy) as client:
            response = client.get("/v1/models")
    assert response.status_code == 504
    assert_error_shape(response.json(), code="upstream_timeout")


@pytest.mark.parametrize(
    ("scenario", "code"),
    [("malformed-head", "upstream_protocol_error"), ("reset-before-head", "upstream_reset")],
)
def test_upstream_breaks_before_the_head(
    scenario: str, code: str, proxy: ProxyProcess, mock_upstream: MockUpstream
) -> None:
    with http_client(proxy) as client:
        response = client.post(CHAT, json=chat_body(), headers={SCENARIO_HEADER: scenario})
        assert response.status_code == 502
        assert_error_shape(response.json(), code=code)
        # The proxy is fine afterwards, and the request was not silently retried.
        assert client.post(CHAT, json=chat_body()).status_code == 200
    assert [r.scenario for r in mock_upstream.requests] == [scenario, "ok"]
    _logged_once(proxy, response)


def test_body_over_the_limit(start_proxy: StartProxy, mock_upstream: MockUpstream) -> None:
    proxy = start_proxy(
        "--base-url", mock_upstream.base_url, config={"limits": {"max_body_size": 1024}}
    )
    with http_client(proxy) as client:
        assert client.post("/v1/at-limit", content=b"a" * 1024).status_code == 200
        response = client.post("/v1/over", content=b"a" * 1025)
        assert response.status_code == 413
        assert_error_shape(response.json(), code="request_too_large")
    with http_client(proxy) as client:
        # Without a Content-Length (chunked), the limit still holds.
        chunked = client.post("/v1/over-chunked", content=iter([b"b" * 600, b"b" * 600]))
        assert chunked.status_code == 413
        assert_error_shape(chunked.json(), code="request_too_large")
    assert [r.path for r in mock_upstream.requests] == ["/v1/at-limit"]


def test_connection_usable_after_a_413(
    start_proxy: StartProxy, mock_upstream: MockUpstream
) -> None:
    # An early 413 (the body not read): the proxy must either say `Connection: close`
    # or keep the connection usable. Closing it silently fails the client's next
    # request on that connection (httpx: "Connection reset by peer").
    proxy = start_proxy(
        "--base-url", mock_upstream.base_url, config={"limits": {"max_body_size": 1024}}
    )
    with RawClient(proxy) as raw:
        raw.send(raw_request("POST", "/v1/over", body=b"a" * 50_000))
        response = raw.read_response("POST")
        assert response.status == 413
        assert_error_shape(response.json(), code="request_too_large")
        if response.header("connection") != "close":
            assert raw.request("GET", "/v1/models").status == 200


def test_large_body_announced_is_refused_before_it_is_sent(
    start_proxy: StartProxy, mock_upstream: MockUpstream
) -> None:
    proxy = start_proxy(
        "--base-url", mock_upstream.base_url, config={"limits": {"max_body_size": 1024}}
    )
    with RawClient(proxy) as raw:
        # Only the head: the proxy must answer without waiting for 10 MB.
        raw.send(
            b"POST /v1/x HTTP/1.1\r\nhost: p\r\ncontent-type: application/json\r\n"
            b"content-length: 10000000\r\n\r\n"
        )
        response = raw.read_response("POST")
    assert response.status == 413
    assert_error_shape(response.json(), code="request_too_large")
    assert mock_upstream.requests == []


def test_head_over_the_limit(start_proxy: StartProxy, mock_upstream: MockUpstream) -> None:
    proxy = start_proxy(
        "--base-url", mock_upstream.base_url, config={"limits": {"max_header_size": 2048}}
    )
    with http_client(proxy) as client:
        assert client.get("/v1/models", headers={"x-fill": "a" * 1000}).status_code == 200
    with RawClient(proxy) as raw:
        response = raw.request("GET", "/v1/models", headers=[("x-fill", "a" * 4000)])
    assert response.status == 431
    assert_error_shape(response.json(), code="request_header_fields_too_large")
    assert len(mock_upstream.requests) == 1


def test_upstream_errors_relayed_unchanged(
    proxy: ProxyProcess, mock_upstream: MockUpstream
) -> None:
    with http_client(proxy) as client:
        for status in (400, 401, 403, 404, 413, 429, 500, 503, 529):
            response = client.post(
                CHAT, json=chat_body(), headers={SCENARIO_HEADER: f"status-{status}"}
            )
            assert response.status_code == status
            body = response.json()
            assert body["error"]["message"] == f"mock upstream error {status}"
            assert body["error"]["code"] == str(status)
            assert response.headers.get("retry-after") == ("7" if status == 429 else None)
            assert response.headers["x-mock-request-index"] == str(len(mock_upstream.requests) - 1)


def test_anthropic_upstream_errors_relayed_unchanged(
    start_proxy: StartProxy, mock_upstream: MockUpstream
) -> None:
    proxy = start_proxy("--base-url", mock_upstream.base_url, "--type", "anthropic")
    with http_client(proxy) as client:
        response = client.post(
            "/v1/messages",
            json={
                "model": "scenario:status-529",
                "max_tokens": 1,
                "messages": [{"role": "user", "content": "hi"}],
            },
        )
    assert response.status_code == 529
    assert response.json() == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "mock upstream error 529"},
    }


def test_plain_body_cut_mid_way_is_a_truncated_response(
    proxy: ProxyProcess, mock_upstream: MockUpstream
) -> None:
    with http_client(proxy) as client:
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            client.post(CHAT, json=chat_body(), headers={SCENARIO_HEADER: "reset-mid-body"})
        # The next request (on a new connection) is served.
        assert client.post(CHAT, json=chat_body()).status_code == 200
    assert "Traceback" not in proxy.logs()


def test_upstream_closing_after_a_response_is_harmless(
    proxy: ProxyProcess, mock_upstream: MockUpstream
) -> None:
    # The pooled connection dies after each answer: the next request must not fail.
    with http_client(proxy) as client:
        for _ in range(4):
            response = client.post(
                CHAT, json=chat_body(), headers={SCENARIO_HEADER: "close-after-response"}
            )
            assert response.status_code == 200
    assert len(mock_upstream.requests) == 4
