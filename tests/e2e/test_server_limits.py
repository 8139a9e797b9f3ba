"""Process- and connection-level limits, on every adapter, over real sockets.

Running out of file descriptors, HEAD from a client we did not write (curl), a
client that stops reading, a request trickled in, and a client that resets a
``Connection: close`` stream: the server lives on, answers what it should, and
logs the cause once, never a traceback.
"""

from __future__ import annotations

import json
import os
import re
import resource
import socket
import struct
import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e._helpers import (
    CHAT,
    READ_TIMEOUT,
    RawClient,
    assert_error_shape,
    chat_body,
    http_client,
    parse_response_bytes,
    raw_request,
)
from tests.support.mock_upstream import SCENARIO_HEADER, MockUpstream
from tests.support.proxy_process import ProxyProcess, StartProxy
from tests.support.traces import wait_for_traces

CANCEL_WITHIN = 2.0
# How often a trickling client sends a byte: whenever the proxy was quiet this long.
TRICKLE = 0.2


def _warnings(proxy: ProxyProcess) -> list[str]:
    return [line for line in proxy.logs().splitlines() if re.search(r"\bWARNING\b", line)]


# -- 1. out of file descriptors --------------------------------------------------------


def test_running_out_of_file_descriptors_is_survived(start_proxy: StartProxy) -> None:
    proxy = start_proxy()
    # Leave the proxy a few descriptors, then open many more connections than that.
    limit = len(os.listdir(f"/proc/{proxy.pid}/fd")) + 16
    _, hard = resource.prlimit(proxy.pid, resource.RLIMIT_NOFILE)
    resource.prlimit(proxy.pid, resource.RLIMIT_NOFILE, (limit, hard))
    clients = [RawClient(proxy) for _ in range(limit + 48)]
    try:
        proxy.wait_for_log(r"WARNING.*(cannot accept new connections|out of file descriptors)")
        # The connections it has are still served meanwhile.
        assert clients[0].request("GET", "/health").status == 200
    finally:
        for client in clients:
            client.close()
    # Once they are closed, new ones are served again (the h11 server retries
    # within a second; the backlog it kept is drained first). uvloop, under the
    # ASGI adapter, resets what it cannot serve until it has read those closes:
    # a reset connection is tried afresh, a bounded number of times.
    for attempt in range(100):
        try:
            with RawClient(proxy, timeout=10.0) as raw:
                assert raw.request("GET", "/health").status == 200
            break
        except (AssertionError, OSError):
            if attempt == 99:
                raise
    assert proxy.returncode is None
    assert "Traceback" not in proxy.logs()
    assert len(_warnings(proxy)) == 1, _warnings(proxy)


# -- 2. HEAD -----------------------------------------------------------------------------


def test_head_gets_the_get_head_without_a_body_curl(start_proxy: StartProxy) -> None:
    proxy = start_proxy()  # the built-in mock answers: health, its model list, its 404
    targets = ["/health", "/v1/models", "/v1/nothing-here"]
    with http_client(proxy) as client:
        gets = [client.get(target) for target in targets]
    # One curl, one connection: a body after a head would break the next answer.
    result = subprocess.run(
        ["curl", "-sS", "-v", "-I", "--max-time", "5", *(proxy.url(t) for t in targets)],
        capture_output=True,
        timeout=20,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
    assert re.search(rb"Re-?using existing connection", result.stderr), result.stderr.decode()
    heads = result.stdout.decode("latin-1").strip().split("\r\n\r\n")
    assert len(heads) == len(targets), heads
    for get, head in zip(gets, heads, strict=True):
        lines = head.split("\r\n")
        assert lines[0].split()[1] == str(get.status_code), head
        fields = {k.lower(): v for k, _, v in (line.partition(": ") for line in lines[1:])}
        assert fields["content-length"] == str(len(get.content)), head
        assert fields["content-type"] == get.headers["content-type"], head
    assert get.status_code == 404
    assert "Traceback" not in proxy.logs()


# -- 3. write and request deadlines ----------------------------------------------------


def _huge_event_asked(proxy: ProxyProcess, size: int, *headers: tuple[str, str]) -> socket.socket:
    """A client socket with a small receive buffer that asked ``proxy`` for a stream
    with an event of ``size`` bytes (its request sent; nothing read yet)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(READ_TIMEOUT)
    sock.connect((proxy.host, proxy.port))
    _ask_stream(sock, f"sse-huge-event:{size}", *headers)
    return sock


def _ask_stream(sock: socket.socket, scenario: str, *headers: tuple[str, str]) -> None:
    """Send a streamed chat request for the mock's ``scenario`` on ``sock``."""
    sock.sendall(
        raw_request(
            "POST",
            CHAT,
            headers=[
                ("content-type", "application/json"),
                *headers,
                (SCENARIO_HEADER, scenario),
            ],
            body=json.dumps(chat_body(stream=True)).encode(),
        )
    )


@pytest.mark.parametrize("read_timeout", [1.0, 10.0])
def test_a_client_that_stops_reading_is_dropped_after_write_timeout(
    start_proxy: StartProxy, mock_upstream: MockUpstream, tmp_path: Path, read_timeout: float
) -> None:
    traces = tmp_path / "traces"
    proxy = start_proxy(
        "--base-url",
        mock_upstream.base_url,
        "--trace-dir",
        str(traces),
        config={
            "server": {"write_timeout": 2.0},
            # Shorter than the write timeout: a timer that ran while the proxy
            # was blocked writing would blame the upstream (a 504). Longer: the
            # write's own bound must drop the client, not the upstream's timer.
            "upstream": {"read_timeout": read_timeout},
            "limits": {"max_sse_event_size": 16 << 20},
        },
    )
    # A small receive buffer, never read: an 8 MiB event cannot all be written.
    with _huge_event_asked(proxy, 8 << 20):
        conn_id = mock_upstream.wait_for_request().conn_id
        proxy.wait_for_log(r"WARNING.*dropped the client: it stopped reading", timeout=15)
        # Its upstream call is cancelled, and the trace blames the client.
        assert mock_upstream.wait_for_close(conn_id, CANCEL_WITHIN)
        (trace,) = wait_for_traces(traces, 1)
        assert trace["outcome"] == "client_gone"
    logs = proxy.logs()
    assert "upstream_timeout" not in logs
    assert "Traceback" not in logs
    assert len(_warnings(proxy)) == 1, _warnings(proxy)


def test_a_client_slow_to_read_within_write_timeout_gets_the_whole_stream(
    start_proxy: StartProxy, mock_upstream: MockUpstream
) -> None:
    proxy = start_proxy(
        "--base-url",
        mock_upstream.base_url,
        config={
            "server": {"write_timeout": 10.0},
            # Shorter than the client's pause: while the proxy waits for the client
            # to read, the upstream's timer waits too (no 504, nor a client dropped).
            "upstream": {"read_timeout": 0.5},
            "limits": {"max_sse_event_size": 16 << 20},
        },
    )
    with _huge_event_asked(proxy, 4 << 20, ("connection", "close")) as sock:
        time.sleep(1.5)  # the slow client itself: it reads nothing for a while
        received = bytearray()
        while chunk := sock.recv(1 << 20):
            received += chunk
    assert received.startswith(b"HTTP/1.1 200") and b"data: [DONE]" in received
    logs = proxy.logs()
    assert "upstream_timeout" not in logs and "dropped the client" not in logs


def _trickle(raw: RawClient) -> tuple[bytes, bool]:
    """Send one byte whenever the proxy has been quiet for TRICKLE seconds; return
    what it sent and whether it closed the connection (within ~10 s)."""
    raw.sock.settimeout(TRICKLE)
    received = b""
    for _ in range(50):
        try:
            data = raw.sock.recv(65536)
        except TimeoutError:
            try:
                raw.sock.sendall(b"x")
            except (BrokenPipeError, ConnectionResetError):
                return received, True
            continue
        except ConnectionResetError:
            return received, True
        if not data:
            return received, True
        received += data
    return received, False


def _assert_408_or_nothing(received: bytes) -> None:
    if received:
        response = parse_response_bytes(received)
        assert response.status == 408
        assert_error_shape(response.json(), code="request_timeout")


def test_a_trickled_request_body_is_cut_by_request_timeout(
    start_proxy: StartProxy, mock_upstream: MockUpstream
) -> None:
    proxy = start_proxy(
        "--base-url",
        mock_upstream.base_url,
        config={"server": {"request_timeout": 1.0, "header_timeout": 5.0}},
    )
    with RawClient(proxy) as slow:
        slow.send(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: p\r\n"
            b"content-type: application/json\r\ncontent-length: 1000\r\n\r\n{"
        )
        received, closed = _trickle(slow)  # each byte well within header_timeout
    assert closed, "the trickling client was never cut off"
    _assert_408_or_nothing(received)
    proxy.wait_for_log(r"WARNING.*dropped the client: it sent its request too slowly")
    assert mock_upstream.requests == []
    with http_client(proxy) as client:
        assert client.get("/health").status_code == 200
    assert "Traceback" not in proxy.logs()
    assert len(_warnings(proxy)) == 1, _warnings(proxy)


def test_a_trickled_request_head_is_cut(
    start_proxy: StartProxy, mock_upstream: MockUpstream
) -> None:
    proxy = start_proxy(
        "--base-url",
        mock_upstream.base_url,
        config={"server": {"header_timeout": 0.5, "request_timeout": 60}},
    )
    with RawClient(proxy) as slow:
        slow.send(b"GET /v1/models HTTP/1.1\r\nhost: p\r\nx-slow: ")
        received, closed = _trickle(slow)
    assert closed, "the trickling client was never cut off"
    _assert_408_or_nothing(received)
    assert mock_upstream.requests == []
    with http_client(proxy) as client:
        assert client.get("/health").status_code == 200
    assert "Traceback" not in proxy.logs()


# -- 4. a reset after Connection: close ----------------------------------------------


def test_a_connection_close_client_resetting_mid_stream_logs_no_traceback(
    proxy: ProxyProcess, mock_upstream: MockUpstream
) -> None:
    with socket.create_connection((proxy.host, proxy.port), timeout=READ_TIMEOUT) as sock:
        _ask_stream(sock, "slow-stream:50:20", ("connection", "close"))
        received = b""
        while b"tok1" not in received:  # part of the stream
            data = sock.recv(65536)
            assert data, "the proxy closed the connection"
            received += data
        conn_id = mock_upstream.wait_for_request().conn_id
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    # Closed with SO_LINGER 0: a reset. The upstream is cancelled...
    assert mock_upstream.wait_for_close(conn_id, CANCEL_WITHIN)
    # ... and the server, which has finished with that connection by now, is fine.
    with http_client(proxy) as client:
        assert client.get("/health").status_code == 200
    assert "Traceback" not in proxy.logs()
