"""A client going away cancels the upstream call at once, on every adapter.

"At once" is what a user pays for: no tokens generated for nobody. The mock
upstream records when each of its connections closes; the proxy must close its
upstream connection within one second of the client leaving.
"""

from __future__ import annotations

import json

import pytest

from tests.e2e._helpers import (
    CHAT,
    RawClient,
    chat_body,
    http_client,
    raw_request,
    stream_chat,
)
from tests.support.mock_upstream import SCENARIO_HEADER, MockUpstream
from tests.support.proxy_process import ProxyProcess

CANCEL_WITHIN = 1.0


def _chat_request(scenario: str, *, stream: bool = False) -> bytes:
    return raw_request(
        "POST",
        CHAT,
        headers=[("content-type", "application/json"), (SCENARIO_HEADER, scenario)],
        body=json.dumps(chat_body(stream=stream)).encode(),
    )


def test_client_leaves_while_waiting_for_the_head(
    proxy: ProxyProcess, mock_upstream: MockUpstream
) -> None:
    raw = RawClient(proxy)
    raw.send(_chat_request("stall-head"))
    conn_id = mock_upstream.wait_for_request().conn_id
    raw.close()
    assert mock_upstream.wait_for_close(conn_id, CANCEL_WITHIN)
    assert mock_upstream.connection(conn_id).close_reason in ("eof", "reset")


def test_client_leaves_mid_stream_raw_socket(
    proxy: ProxyProcess, mock_upstream: MockUpstream
) -> None:
    raw = RawClient(proxy)
    raw.send(_chat_request("stall-mid-stream", stream=True))
    received = b""
    while b"Hello" not in received:  # the head and two events
        data = raw.sock.recv(65536)
        assert data, "the proxy closed the connection"
        received += data
    conn_id = mock_upstream.wait_for_request().conn_id
    raw.close()
    assert mock_upstream.wait_for_close(conn_id, CANCEL_WITHIN)


def test_client_leaves_a_slow_stream(proxy: ProxyProcess, mock_upstream: MockUpstream) -> None:
    with stream_chat(proxy, "slow-stream:100:50") as (response, events):
        next(events)
        assert next(events).json()["choices"][0]["delta"]["content"] == "tok0 "
        conn_id = mock_upstream.wait_for_request().conn_id
    # Leaving the `with` closed the client connection, 99 tokens early.
    assert mock_upstream.wait_for_close(conn_id, CANCEL_WITHIN)


# uvicorn stops reading a connection while a pipelined request waits, so it
# cannot see that client leave (README: "Known limits"); the h11 server can.
@pytest.mark.parametrize("adapter", ["h11", "trio"])
def test_client_leaves_with_a_pipelined_request_queued(
    proxy: ProxyProcess, mock_upstream: MockUpstream
) -> None:
    # A second request queued behind the stalled one must not keep anything alive.
    raw = RawClient(proxy)
    raw.send(_chat_request("stall-head") + raw_request("GET", "/v1/models"))
    conn_id = mock_upstream.wait_for_request().conn_id
    raw.close()
    assert mock_upstream.wait_for_close(conn_id, CANCEL_WITHIN)


def test_client_leaves_mid_request_body(proxy: ProxyProcess, mock_upstream: MockUpstream) -> None:
    raw = RawClient(proxy)
    raw.send(b"POST /v1/chat/completions HTTP/1.1\r\nhost: p\r\ncontent-length: 1000\r\n\r\n{")
    raw.close()
    # Nothing half-received is forwarded, and the proxy keeps serving.
    with http_client(proxy) as client:
        assert client.get("/v1/models").status_code == 200
    assert [r.target for r in mock_upstream.requests] == ["/v1/models"]


def test_proxy_serves_after_many_clients_left(
    proxy: ProxyProcess, mock_upstream: MockUpstream
) -> None:
    for i in range(5):
        raw = RawClient(proxy)
        raw.send(_chat_request("stall-head"))
        conn_id = mock_upstream.wait_for_requests(i + 1)[i].conn_id
        raw.close()
        assert mock_upstream.wait_for_close(conn_id, CANCEL_WITHIN)
    with http_client(proxy) as client:
        assert client.post(CHAT, json=chat_body()).status_code == 200
