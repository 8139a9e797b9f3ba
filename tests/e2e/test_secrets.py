"""Secrets never reach a log, a trace or an error, whatever a client sends."""

from __future__ import annotations

from pathlib import Path
from typing import Final

from tests.e2e._helpers import RawClient
from tests.support.mock_upstream import MockUpstream
from tests.support.proxy_process import StartProxy
from tests.support.traces import trace_files, wait_for_traces

KEY: Final = "sk-proj-SECRET-read-from-a-crlf-file-42"


def test_a_refused_header_line_is_not_echoed_nor_logged(start_proxy: StartProxy) -> None:
    # A key pasted from a file with CRLF line ends: "Bearer sk-...\r" in the value.
    proxy = start_proxy()
    with RawClient(proxy) as client:
        client.send(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n"
            + f"Authorization: Bearer {KEY}\r\r\n\r\n{{}}".encode()
        )
        data = client.read_until_closed()
    assert data.startswith(b"HTTP/1.1 400"), data
    assert KEY.encode() not in data
    proxy.terminate()
    proxy.wait(15)
    assert KEY not in proxy.logs()


def test_keys_in_the_query_are_redacted_in_traces(
    start_proxy: StartProxy, mock_upstream: MockUpstream, tmp_path: Path
) -> None:
    proxy = start_proxy(
        "--base-url", mock_upstream.base_url, "--type", "openai", "--trace-dir", str(tmp_path)
    )
    with RawClient(proxy) as client:
        response = client.request("GET", f"/v1/models?key={KEY}&api_key={KEY}&limit=2")
    assert response.status == 200
    assert mock_upstream.requests[0].query == f"key={KEY}&api_key={KEY}&limit=2"
    (record,) = wait_for_traces(tmp_path, 1)
    assert all(KEY not in path.read_text("utf-8") for path in trace_files(tmp_path))
    assert record["request"]["target"] == "/v1/models?key=[redacted]&api_key=[redacted]&limit=2"
