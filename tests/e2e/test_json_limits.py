"""Untrusted JSON over real sockets: deep, huge or lone-surrogate JSON, from the client and
from the upstream, is answered in the error taxonomy (or relayed untouched), never with a
500 or a traceback, and every exchange leaves its trace record.

The mock upstream's ``deep-json:<depth>`` answers JSON with a member nested that deep,
``deep-json-event:<depth>`` streams such an event.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from tests.e2e._helpers import CHAT, assert_error_shape, http_client, parse_sse_stream
from tests.support.mock_upstream import MockUpstream
from tests.support.proxy_process import ProxyProcess, StartProxy
from tests.support.traces import wait_for_trace

DEPTH = 5000
JSON_TYPE = {"content-type": "application/json"}


def _post(proxy: ProxyProcess, body: bytes) -> httpx.Response:
    with http_client(proxy) as client:
        return client.post(CHAT, content=body, headers=JSON_TYPE)


def _traced(proxy: ProxyProcess, traces: Path, response: httpx.Response) -> dict[str, Any]:
    record = wait_for_trace(traces, response.headers["x-sansproxy-id"])
    assert "Traceback" not in proxy.logs()
    return record


def test_deep_huge_and_lone_surrogate_requests(
    start_proxy: StartProxy, mock_upstream: MockUpstream, tmp_path: Path
) -> None:
    traces = tmp_path / "traces"
    proxy = start_proxy("--base-url", mock_upstream.base_url, "--trace-dir", str(traces))
    chat = b'{"model":"mock-gpt","messages":[{"role":"user","content":"a \\ud800 b"}]'

    response = _post(proxy, chat + b',"x":' + b"[" * DEPTH + b"0" + b"]" * DEPTH + b"}")
    error = assert_error_shape(response.json(), code="invalid_json")
    assert response.status_code == 400 and "nested deeper than 200 levels" in error["message"]
    assert _traced(proxy, traces, response)["response"]["status"] == 400

    keys = b",".join(b'"k%x":0' % i for i in range(150_000))
    response = _post(proxy, chat + b"," + keys + b"}")
    assert response.status_code == 413
    assert_error_shape(response.json(), code="request_too_large")
    _traced(proxy, traces, response)

    # Forwarded as it came; its trace record is written (U+FFFD in it).
    response = _post(proxy, chat + b"}")
    assert response.status_code == 200
    assert mock_upstream.requests[-1].body == chat + b"}"
    record = _traced(proxy, traces, response)
    assert record["request"]["body"]["json"]["messages"][0]["content"] == "a \ufffd b"
    assert len(mock_upstream.requests) == 1  # the refused ones never left


def _gateway(start_proxy: StartProxy, mock: MockUpstream, traces: Path) -> ProxyProcess:
    deep, event = f"scenario:deep-json:{DEPTH}", f"scenario:deep-json-event:{DEPTH}"
    return start_proxy(
        config={
            "providers": {
                "oai": {"type": "openai", "base_url": mock.base_url},
                "claude": {"type": "anthropic", "base_url": mock.base_url},
            },
            "models": {
                "fast": [{"provider": "oai", "model": "mock-gpt"}],
                "relayed-answer": [{"provider": "oai", "model": deep}],
                "relayed-event": [{"provider": "oai", "model": event}],
                "translated-answer": [{"provider": "claude", "model": deep}],
                "translated-event": [{"provider": "claude", "model": event}],
            },
            "middleware": [{"trace": {"dir": str(traces)}}, "validate", "guardrails"],
        }
    )


def _chat(model: str, *, stream: bool = False, content: str = "Hi") -> bytes:
    body = {"model": model, "messages": [{"role": "user", "content": content}], "stream": stream}
    return json.dumps(body).encode()


def test_deep_answers_and_events_from_the_upstream(
    start_proxy: StartProxy, mock_upstream: MockUpstream, tmp_path: Path
) -> None:
    traces = tmp_path / "traces"
    proxy = _gateway(start_proxy, mock_upstream, traces)

    # A lone surrogate in a request the gateway re-serialises (the model is renamed).
    response = _post(proxy, _chat("fast", content="\ud800"))
    assert response.status_code == 200
    assert json.loads(mock_upstream.requests[-1].body)["messages"][0]["content"] == "\ufffd"
    _traced(proxy, traces, response)

    # An answer to translate: 502. One relayed: untouched.
    response = _post(proxy, _chat("translated-answer"))
    error = assert_error_shape(response.json(), code="upstream_protocol_error")
    assert response.status_code == 502
    assert error["message"] == (
        "the upstream's answer is not valid JSON (nested deeper than 200 levels)"
    )
    _traced(proxy, traces, response)
    response = _post(proxy, _chat("relayed-answer"))
    assert response.status_code == 200 and b"[" * DEPTH in response.content
    _traced(proxy, traces, response)

    # A stream to translate: an error event, then a clean end. One relayed: untouched.
    response = _post(proxy, _chat("translated-event", stream=True))
    events = parse_sse_stream(response.content)
    assert response.status_code == 200 and events[-1].event == "error"
    error = json.loads(events[-1].data)["error"]
    assert error["code"] == "upstream_protocol_error"
    assert "nested deeper than 200 levels" in error["message"]
    assert _traced(proxy, traces, response)["outcome"] == "upstream_error"
    response = _post(proxy, _chat("relayed-event", stream=True))
    events = parse_sse_stream(response.content)
    assert response.status_code == 200 and events[-1].data == "[DONE]"
    assert any("[" * DEPTH in event.data for event in events)
    assert _traced(proxy, traces, response)["outcome"] == "completed"
