"""The proxy against every spelling of HTTP the mock upstream can produce.

Real upstreams (nginx, Node, Go) send ``Content-Type``, not ``content-type``; they
order their fields as they like and frame a body by length, by chunks or by closing
the connection. Whatever the spelling (`WireStyle`, chosen per request by the
``x-mock-wire`` header, which the proxy forwards like any other), the client must see
the same thing: a stream as whole, LF-framed SSE events with the mock's text and a
final ``[DONE]``, under ``Content-Type: text/event-stream``; a JSON answer byte for
byte; a 429 with its ``Retry-After``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.e2e._helpers import (
    CHAT,
    chat_body,
    chat_content,
    http_client,
    parse_sse_stream,
)
from tests.support.mock_upstream import (
    CASINGS,
    COMPLETION_TOKENS,
    DEFAULT_TEXT,
    FRAMINGS,
    ORDERS,
    PROMPT_TOKENS,
    SCENARIO_HEADER,
    WIRE_HEADER,
    MockUpstream,
    WireStyle,
    answer_body,
)
from tests.support.proxy_process import ProxyProcess, StartProxy
from tests.support.traces import wait_for_traces

Kind = Literal["stream", "json", "429"]
STREAM_SCENARIOS: Final = ("ok", "sse-crlf", "sse-split-bytes")  # LF, CRLF, one byte a write


@dataclass(frozen=True, slots=True, kw_only=True)
class Case:
    """One request: how the mock spells its answer, and which answer."""

    wire: WireStyle
    kind: Kind
    scenario: str  # for a stream: the line ends / byte splits; for a 429: its Retry-After


@st.composite
def cases(draw: st.DrawFn) -> Case:
    wire = WireStyle(
        casing=draw(st.sampled_from(CASINGS)),
        order=draw(st.sampled_from(ORDERS)),
        framing=draw(st.sampled_from(FRAMINGS)),
        seed=draw(st.integers(0, 1000)),
    )
    kind: Kind = draw(st.sampled_from(("stream", "json", "429")))
    if kind == "stream":
        scenario = draw(st.sampled_from(STREAM_SCENARIOS))
    elif kind == "429":
        scenario = f"status-429:{draw(st.integers(0, 120))}"
    else:
        scenario = "ok"
    return Case(wire=wire, kind=kind, scenario=scenario)


def _case(wire: str, kind: Kind, scenario: str = "ok") -> Case:
    return Case(wire=WireStyle.parse(wire), kind=kind, scenario=scenario)


@pytest.fixture
def wire_proxy(start_proxy: StartProxy, mock_upstream: MockUpstream) -> ProxyProcess:
    """One pass-through proxy per adapter and test function; hypothesis examples share it."""
    return start_proxy("--base-url", mock_upstream.base_url, "--type", "openai")


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(case=cases())
# What nginx / Node / Go send: the case that hid the proxy's case-sensitive lookup.
@example(case=_case("casing=title;framing=chunked", "stream"))
@example(case=_case("casing=upper;order=reversed;framing=close", "stream", "sse-crlf"))
@example(case=_case("casing=mixed;order=shuffled;framing=length", "stream", "sse-split-bytes"))
@example(case=_case("casing=mixed;framing=close", "json"))
@example(case=_case("casing=title", "429", "status-429:7"))
def test_the_client_sees_the_same_whatever_the_wire(
    wire_proxy: ProxyProcess, mock_upstream: MockUpstream, case: Case
) -> None:
    headers = {WIRE_HEADER: str(case.wire), SCENARIO_HEADER: case.scenario}
    body = chat_body(stream=case.kind == "stream")
    with (
        http_client(wire_proxy) as client,
        client.stream("POST", CHAT, json=body, headers=headers) as response,
    ):
        raw = response.read()
    request = mock_upstream.requests[-1]
    # The proxy forwards the header that picked the style (else this tests nothing).
    assert request.header(WIRE_HEADER) == str(case.wire)
    assert request.scenario == case.scenario
    if case.kind == "stream":
        assert response.status_code == 200, raw
        assert response.headers["content-type"].startswith("text/event-stream"), response.headers
        events = parse_sse_stream(raw)  # LF only, every event whole, the last one ended
        assert chat_content(events) == DEFAULT_TEXT
        assert events[-1].data == "[DONE]"
    elif case.kind == "json":
        assert response.status_code == 200, raw
        assert response.headers["content-type"] == "application/json"
        assert raw == answer_body(request)
    else:
        assert response.status_code == 429, raw
        assert response.headers["retry-after"] == case.scenario.partition(":")[2]
        assert raw == answer_body(request)


def test_title_case_stream_is_traced_with_usage_and_text(
    start_proxy: StartProxy, mock_upstream: MockUpstream, tmp_path: Path
) -> None:
    traces = tmp_path / "traces"
    proxy = start_proxy(
        "--base-url", mock_upstream.base_url, "--type", "openai", "--trace-dir", str(traces)
    )
    body = chat_body(stream=True, stream_options={"include_usage": True})
    with (
        http_client(proxy) as client,
        client.stream("POST", CHAT, json=body, headers={WIRE_HEADER: "casing=title"}) as response,
    ):
        raw = response.read()
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = parse_sse_stream(raw)
    assert chat_content(events) == DEFAULT_TEXT
    assert events[-1].data == "[DONE]"
    assert events[-2].json()["usage"]["completion_tokens"] == COMPLETION_TOKENS
    (request,) = mock_upstream.requests
    assert request.header(WIRE_HEADER) == "casing=title"
    (record,) = wait_for_traces(traces, 1)
    assert record["id"] == response.headers["x-sansproxy-id"]
    assert record["outcome"] == "completed", record
    assert record["response"]["text"] == DEFAULT_TEXT, record["response"]
    usage = record["usage"]
    assert usage is not None, record
    assert (usage["input_tokens"], usage["output_tokens"]) == (PROMPT_TOKENS, COMPLETION_TOKENS)
