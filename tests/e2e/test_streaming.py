"""Streaming through each adapter: SSE reframing, incremental relay, failures mid-stream.

Whatever the upstream's byte splits and line ends, the client must receive whole,
LF-framed events with the same content as a plain stream; the first event must reach
the client while the upstream is still streaming; a failure after the head is sent
becomes an SSE error event and a clean end.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from tests.e2e._helpers import (
    CHAT,
    SSE,
    assert_error_shape,
    chat_body,
    chat_content,
    http_client,
    iter_events,
    openai_client,
    parse_sse_stream,
    stream_chat,
)
from tests.support.mock_upstream import (
    DEFAULT_TEXT,
    SCENARIO_HEADER,
    MockUpstream,
    slow_stream_pieces,
)
from tests.support.proxy_process import ProxyProcess, StartProxy

SSE_SCENARIOS = [
    "sse-crlf",
    "sse-cr",
    "sse-split-bytes",
    "sse-extras",
    "sse-no-final-blank-line",
    "sse-no-final-newline",
]


def _comparable(events: list[SSE]) -> list[Any]:
    """Each event's data, JSON decoded where it is JSON, without the per-request id."""
    out: list[Any] = []
    for event in events:
        if event.data == "[DONE]":
            out.append(event.data)
            continue
        value = event.json()
        value.pop("id", None)
        out.append((event.event, value))
    return out


def _stream(
    client: httpx.Client, scenario: str | None = None, **extra: Any
) -> tuple[httpx.Response, bytes]:
    headers = {SCENARIO_HEADER: scenario} if scenario else {}
    body = chat_body(stream=True, **extra)
    with client.stream("POST", CHAT, json=body, headers=headers) as response:
        return response, response.read()


@pytest.mark.parametrize("scenario", SSE_SCENARIOS)
def test_sse_reframed_into_whole_events(
    scenario: str, proxy: ProxyProcess, mock_upstream: MockUpstream
) -> None:
    with http_client(proxy) as client:
        plain_response, plain = _stream(client)
        response, body = _stream(client, scenario)
    assert plain_response.status_code == response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert "content-length" not in response.headers
    reference = parse_sse_stream(plain)
    events = parse_sse_stream(body)  # strict: LF only, every event whole
    assert _comparable(events) == _comparable(reference)
    assert chat_content(events) == DEFAULT_TEXT
    assert events[-1].data == "[DONE]"
    assert [r.scenario for r in mock_upstream.requests] == ["ok", scenario]


def test_sse_extras_keep_their_fields(proxy: ProxyProcess) -> None:
    # Asking for usage ourselves: the proxy then strips nothing, every id arrives.
    with http_client(proxy) as client:
        _, body = _stream(client, "sse-extras", stream_options={"include_usage": True})
    events = parse_sse_stream(body)
    assert [dict(e.fields).get("id") for e in events] == [str(i) for i in range(len(events))]
    assert dict(events[0].fields).get("retry") == "3000"


@pytest.mark.parametrize("scenario", SSE_SCENARIOS)
def test_sdk_reads_every_sse_variant(scenario: str, proxy: ProxyProcess) -> None:
    with openai_client(proxy) as client:
        stream = client.chat.completions.create(
            model=f"scenario:{scenario}",
            messages=[{"role": "user", "content": "x"}],
            stream=True,
        )
        text = "".join(choice.delta.content or "" for c in stream for choice in c.choices)
    assert text == DEFAULT_TEXT


def test_events_relayed_while_the_upstream_is_still_streaming(
    proxy: ProxyProcess, mock_upstream: MockUpstream
) -> None:
    # stall-mid-stream sends the head and two events, then waits for the peer to
    # close: seeing both events proves nothing holds the stream back.
    with (
        http_client(proxy) as client,
        client.stream(
            "POST", CHAT, json=chat_body(stream=True, model="scenario:stall-mid-stream")
        ) as response,
    ):
        assert response.status_code == 200
        events = iter_events(response)
        first, second = next(events), next(events)
        assert first.json()["choices"][0]["delta"]["role"] == "assistant"
        assert second.json()["choices"][0]["delta"]["content"] == "Hello"
        conn_id = mock_upstream.wait_for_request().conn_id
        assert not mock_upstream.connection_closed(conn_id).is_set()
    # Leaving cancels the stalled upstream call.
    assert mock_upstream.wait_for_close(conn_id, 1.0)


def test_slow_stream_events_arrive_one_by_one(
    proxy: ProxyProcess, mock_upstream: MockUpstream
) -> None:
    pieces = slow_stream_pieces(30)
    with stream_chat(proxy, "slow-stream:30:100") as (response, events):
        next(events)  # the role chunk
        assert next(events).json()["choices"][0]["delta"]["content"] == pieces[0]
        # The first token is here while 29 more are still to come (about 3 s):
        # the upstream connection is open and mid-response.
        conn_id = mock_upstream.wait_for_request().conn_id
        assert not mock_upstream.connection_closed(conn_id).is_set()
        received = [next(events).json()["choices"][0]["delta"].get("content") for _ in range(3)]
        assert received == pieces[1:4]
    assert mock_upstream.wait_for_close(conn_id, 1.0)


def test_slow_stream_complete(proxy: ProxyProcess) -> None:
    with http_client(proxy) as client:
        _, body = _stream(client, "slow-stream:8:20")
    assert chat_content(parse_sse_stream(body)) == "".join(slow_stream_pieces(8))


def test_event_over_the_size_limit(start_proxy: StartProxy, mock_upstream: MockUpstream) -> None:
    proxy = start_proxy(
        "--base-url", mock_upstream.base_url, config={"limits": {"max_sse_event_size": 4096}}
    )
    with http_client(proxy) as client:
        # Just under the limit passes whole.
        response, body = _stream(client, "sse-huge-event:4000")
        events = parse_sse_stream(body)
        assert chat_content(events) == "x" * (4000 - _bare_chunk_size()) + DEFAULT_TEXT
        # Over it: the events before it, then an error event, then a clean end.
        response, body = _stream(client, "sse-huge-event:20000")
    assert response.status_code == 200
    events = parse_sse_stream(body)
    assert events[0].json()["choices"][0]["delta"]["role"] == "assistant"
    assert events[-1].event == "error"
    assert_error_shape(events[-1].json(), code="sse_event_too_large")
    assert all(len(e.data) < 4096 for e in events)
    assert "x" * 100 not in body.decode()
    assert "Traceback" not in proxy.logs()


def _bare_chunk_size() -> int:
    """The JSON size of the mock's huge-event chunk with empty content (model mock-gpt)."""
    chunk = {
        "id": "chatcmpl-mock-0",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": "mock-gpt",
        "system_fingerprint": None,
        "choices": [
            {"index": 0, "delta": {"content": ""}, "logprobs": None, "finish_reason": None}
        ],
    }
    return len(json.dumps(chunk, separators=(",", ":")))


def test_reset_mid_stream_becomes_an_error_event(
    proxy: ProxyProcess, mock_upstream: MockUpstream
) -> None:
    with http_client(proxy) as client:
        response, body = _stream(client, "reset-mid-body")
    assert response.status_code == 200
    events = parse_sse_stream(body)  # a clean end: the whole body parsed
    assert chat_content(events) == "Hello"
    assert events[-1].event == "error"
    assert_error_shape(events[-1].json(), code="upstream_reset")


def test_stall_mid_stream_times_out_into_an_error_event(
    start_proxy: StartProxy, mock_upstream: MockUpstream
) -> None:
    proxy = start_proxy(
        "--base-url", mock_upstream.base_url, config={"upstream": {"read_timeout": 0.5}}
    )
    with http_client(proxy) as client:
        response, body = _stream(client, "stall-mid-stream")
        # The connection still works afterwards.
        assert client.get("/health").status_code == 200
    assert response.status_code == 200
    events = parse_sse_stream(body)
    assert chat_content(events) == "Hello"
    assert events[-1].event == "error"
    assert_error_shape(events[-1].json(), code="upstream_timeout")
    # The stalled upstream call was abandoned, its connection closed.
    assert mock_upstream.wait_for_close(mock_upstream.requests[0].conn_id, 1.0)


def test_sdk_raises_on_a_mid_stream_error(proxy: ProxyProcess) -> None:
    with openai_client(proxy) as client:
        stream = client.chat.completions.create(
            model="scenario:reset-mid-body",
            messages=[{"role": "user", "content": "x"}],
            stream=True,
        )
        text = ""
        with pytest.raises(openai.APIError) as caught:
            for chunk in stream:
                text += "".join(choice.delta.content or "" for choice in chunk.choices)
    assert text == "Hello"
    assert caught.value.code == "upstream_reset"


def test_builtin_mock_stream(start_proxy: StartProxy) -> None:
    proxy = start_proxy(config={"mock": {"stream_delay": 0.01}})
    with (
        http_client(proxy) as client,
        client.stream("POST", CHAT, json=chat_body(stream=True, content="one two three")) as r,
    ):
        assert r.status_code == 200
        events = list(iter_events(r))
    assert chat_content(events) == "This is the sansproxy mock. You said: one two three"
    assert events[-1].data == "[DONE]"
