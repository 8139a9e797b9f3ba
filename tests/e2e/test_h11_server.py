"""Our own HTTP/1.1 server (adapters.h11_server, and the same code on trio).

Malformed input, oversized heads, keep-alive, pipelining, slowloris, idle
keep-alive and graceful shutdown, over raw sockets.
"""

from __future__ import annotations

import json
import signal
import socket
import time

import pytest

from tests.e2e._helpers import (
    CHAT,
    RawClient,
    assert_error_shape,
    chat_body,
    chat_content,
    http_client,
    parse_response_bytes,
    raw_request,
    stream_chat,
)
from tests.support.mock_upstream import SCENARIO_HEADER, MockUpstream, slow_stream_pieces
from tests.support.proxy_process import ProxyProcess, StartProxy

pytestmark = pytest.mark.parametrize("adapter", ["h11", "trio", "httptools"])

MALFORMED = [
    b"GARBAGE\r\n\r\n",
    b"GET /v1/models HTTP/1.1\r\nhost: p\r\nno colon here\r\n\r\n",
    b"GET /v1/models HTTP/1.1\r\nhost: p\r\ncontent-length: abc\r\n\r\n",
    b"GET /v1/models HTTP/1.1\r\nhost: p\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
    b"GET /v1/models HTTP/1.1\r\n\r\n",  # no Host
    b"POST /v1/x HTTP/1.1\r\nhost: p\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
]


@pytest.mark.parametrize("data", MALFORMED, ids=range(len(MALFORMED)))
def test_malformed_http_gets_400_and_close(
    data: bytes, proxy: ProxyProcess, mock_upstream: MockUpstream
) -> None:
    with RawClient(proxy) as raw:
        raw.send(data)
        received = raw.read_until_closed()
    response = parse_response_bytes(received)
    assert response.status == 400
    assert response.header("connection") == "close"
    assert_error_shape(response.json(), code="invalid_request")
    assert mock_upstream.requests == []
    assert "Traceback" not in proxy.logs()


def test_head_over_the_limit_gets_431_and_close(
    start_proxy: StartProxy, mock_upstream: MockUpstream
) -> None:
    proxy = start_proxy(
        "--base-url", mock_upstream.base_url, config={"limits": {"max_header_size": 2048}}
    )
    with RawClient(proxy) as raw:
        raw.send(raw_request("GET", "/v1/models", headers=[("x-fill", "a" * 8000)]))
        received = raw.read_until_closed()
    response = parse_response_bytes(received)
    assert response.status == 431
    assert_error_shape(response.json(), code="request_header_fields_too_large")
    assert mock_upstream.requests == []


def test_keep_alive(proxy: ProxyProcess, mock_upstream: MockUpstream) -> None:
    with RawClient(proxy) as raw:
        first = raw.request("GET", "/v1/models")
        second = raw.request(
            "POST",
            CHAT,
            headers=[("content-type", "application/json")],
            body=json.dumps(chat_body()).encode(),
        )
        third = raw.request("GET", "/health")
    assert (first.status, second.status, third.status) == (200, 200, 200)
    assert first.header("connection") != "close"
    assert len(mock_upstream.requests) == 2


def test_pipelined_requests_answered_in_order(
    proxy: ProxyProcess, mock_upstream: MockUpstream
) -> None:
    slow = json.dumps(chat_body(stream=True)).encode()
    with RawClient(proxy) as raw:
        # One write: a slow stream, then two quick ones that must wait their turn.
        raw.send(
            raw_request(
                "POST",
                CHAT,
                headers=[
                    ("content-type", "application/json"),
                    (SCENARIO_HEADER, "slow-stream:3:50"),
                ],
                body=slow,
            )
            + raw_request("GET", "/v1/first?n=1")
            + raw_request("GET", "/health")
            + raw_request("GET", "/v1/second?n=2")
        )
        stream = raw.read_response("POST")
        first = raw.read_response()
        health = raw.read_response()
        second = raw.read_response()
    assert stream.status == 200
    assert "tok2" in stream.body.decode()
    assert first.json()["target"] == "/v1/first?n=1"
    assert health.json() == {"status": "ok"}
    assert second.json()["target"] == "/v1/second?n=2"


def test_slowloris_is_cut_off(start_proxy: StartProxy, mock_upstream: MockUpstream) -> None:
    proxy = start_proxy(
        "--base-url", mock_upstream.base_url, config={"server": {"header_timeout": 0.5}}
    )
    with RawClient(proxy) as slow, http_client(proxy) as other:
        slow.send(b"GET /v1/models HTTP/1.1\r\nhost: p\r\n")
        # Another client is served meanwhile.
        assert other.get("/v1/models").status_code == 200
        # Dribble one header byte whenever the server has been quiet for 0.1 s: a
        # per-read timeout would never fire; the head deadline must.
        slow.sock.settimeout(0.1)
        received = b""
        closed = False
        for _ in range(50):  # at most ~5 s
            try:
                data = slow.sock.recv(65536)
            except TimeoutError:
                try:
                    slow.sock.sendall(b"x")
                except (BrokenPipeError, ConnectionResetError):
                    closed = True
                    break
                continue
            except ConnectionResetError:
                closed = True
                break
            if not data:
                closed = True
                break
            received += data
        assert closed, "the slow client was never cut off"
        if received:
            response = parse_response_bytes(received)
            assert response.status == 408
            assert_error_shape(response.json(), code="request_timeout")
        # And the server is still fine.
        assert other.get("/health").status_code == 200
    assert [r.target for r in mock_upstream.requests] == ["/v1/models"]


def test_silent_connection_is_closed(start_proxy: StartProxy) -> None:
    proxy = start_proxy(config={"server": {"header_timeout": 0.5}})
    with RawClient(proxy) as raw:
        assert raw.read_until_closed(timeout=4.0) == b""


def test_idle_keep_alive_connection_is_closed(start_proxy: StartProxy) -> None:
    proxy = start_proxy(config={"server": {"keepalive_timeout": 0.5, "header_timeout": 30}})
    with RawClient(proxy) as raw:
        assert raw.request("GET", "/health").status == 200
        assert raw.read_until_closed(timeout=4.0) == b""


def test_sigterm_lets_an_in_flight_stream_finish(
    start_proxy: StartProxy, mock_upstream: MockUpstream
) -> None:
    proxy = start_proxy(
        "--base-url", mock_upstream.base_url, config={"server": {"shutdown_grace": 20}}
    )
    pieces = slow_stream_pieces(10)
    with stream_chat(proxy, "slow-stream:10:100") as (response, events):
        received = [next(events), next(events)]
        proxy.terminate()
        proxy.wait_for_log("SIGTERM", timeout=5)
        # New connections are refused once the listener is closed (a moment after
        # the log line; one that slips in before is not served).
        assert _wait_refused(proxy, timeout=2.0)
        received += list(events)
    assert chat_content(received) == "".join(pieces)
    assert received[-1].data == "[DONE]"
    assert proxy.wait(10) == 0
    assert "Traceback" not in proxy.logs()


def _wait_refused(proxy: ProxyProcess, *, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            sock = socket.create_connection((proxy.host, proxy.port), timeout=timeout)
        except (ConnectionRefusedError, ConnectionResetError):
            return True  # a reset: accepted by the kernel as the listener closed
        sock.close()
    return False


def test_sigint_stops_an_idle_server(proxy: ProxyProcess) -> None:
    with http_client(proxy) as client:
        assert client.get("/health").status_code == 200  # leaves an idle keep-alive connection
        proxy.send_signal(signal.SIGINT)
        assert proxy.wait(5) == 0
    assert "Traceback" not in proxy.logs()
