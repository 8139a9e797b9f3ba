"""OpenTelemetry GenAI spans and Langfuse through each adapter, to a real OTLP receiver.

The official SDKs call the proxy; the mock upstream plays an OpenAI and an Anthropic
provider; `OtlpReceiver` decodes what the proxy exports. Per the GenAI conventions: an
OpenAI call, an Anthropic call, a translated call (OpenAI client, Anthropic provider)
and a stream each give a SERVER span and one CLIENT span per attempt (retries are
attempts); a client's ``traceparent`` is continued, and the upstream gets the
attempt's span as its parent. A Langfuse-configured proxy sends Basic auth, the
ingestion version, and one generation per call with usage and cost. No secret in a span.
"""

from __future__ import annotations

import base64
import hashlib
import json
import signal
from collections.abc import Iterator
from typing import Any, Final

import anthropic
import openai
import pytest

from tests.e2e._helpers import READ_TIMEOUT, closed_port, stop
from tests.support.mock_upstream import COMPLETION_TOKENS, PROMPT_TOKENS, MockUpstream
from tests.support.otlp_receiver import LANGFUSE_PATH, OtlpReceiver, ReceivedSpan
from tests.support.proxy_process import ProxyProcess, StartProxy

PROVIDER_KEY: Final = "sk-provider-MUST-NOT-LEAK-1234"
CLIENT_KEY: Final = "sk-sp-team-a-MUST-NOT-LEAK-5678"
LANGFUSE_SECRET: Final = "sk-lf-MUST-NOT-LEAK-9012"
OTLP_TOKEN: Final = "otlp-token-MUST-NOT-LEAK-3456"
SECRETS: Final = (PROVIDER_KEY, CLIENT_KEY, LANGFUSE_SECRET, OTLP_TOKEN)
CLIENT_TRACE: Final = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN: Final = "00f067aa0ba902b7"
HI: Final[Any] = [{"role": "user", "content": "Hi"}]
# USD per million tokens: the mock's answer costs 12 * 1 + 5 * 2 = 22 millionths.
PRICE: Final = {"input": 1.0, "output": 2.0}
COST: Final = (PROMPT_TOKENS * 1.0 + COMPLETION_TOKENS * 2.0) / 1e6
ENV: Final = {"OTEL_BSP_SCHEDULE_DELAY": "50"}  # batches every 50 ms, not every 5 s


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as server:
        yield server
    assert not server.errors


def gateway(mock: MockUpstream, telemetry: dict[str, Any], *middleware: Any) -> dict[str, Any]:
    """Providers `oai` (openai) and `claude` (anthropic) on the mock; models `fast`
    (oai) and `smart` (claude), priced; the key `team-a`; ``telemetry``."""
    provider = {"connect_timeout": 2.0, "read_timeout": READ_TIMEOUT, "api_key": PROVIDER_KEY}
    key = {"name": "team-a", "key_sha256": hashlib.sha256(CLIENT_KEY.encode()).hexdigest()}
    return {
        "providers": {
            "oai": {"type": "openai", "base_url": mock.base_url, **provider},
            "claude": {"type": "anthropic", "base_url": mock.base_url, **provider},
        },
        "models": {
            "fast": [{"provider": "oai", "model": "gpt-upstream", "price": PRICE}],
            "smart": [{"provider": "claude", "model": "claude-upstream", "price": PRICE}],
        },
        "middleware": [{"auth": {"keys": [key]}}, *middleware],
        "telemetry": telemetry,
    }


def start(
    start_proxy: StartProxy,
    mock: MockUpstream,
    receiver: OtlpReceiver,
    *middleware: Any,
    langfuse: bool = False,
) -> ProxyProcess:
    telemetry: dict[str, Any] = (
        {
            "langfuse": {
                "host": receiver.base_url,
                "public_key": "pk-lf-public",
                "secret_key": LANGFUSE_SECRET,
            }
        }
        if langfuse
        else {
            "otlp_endpoint": receiver.base_url,
            "headers": {"authorization": f"Bearer {OTLP_TOKEN}"},
        }
    )
    return start_proxy(config=gateway(mock, telemetry, *middleware), env=ENV)


def oai(proxy: ProxyProcess, **headers: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=proxy.url("/v1"),
        api_key=CLIENT_KEY,
        max_retries=0,
        timeout=READ_TIMEOUT,
        default_headers=headers,
    )


def claude(proxy: ProxyProcess) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=proxy.base_url, api_key=CLIENT_KEY, max_retries=0, timeout=READ_TIMEOUT
    )


def trace_of(receiver: OtlpReceiver, clients: int = 1) -> tuple[ReceivedSpan, list[ReceivedSpan]]:
    """Wait for one exchange's spans: its SERVER span and ``clients`` CLIENT spans
    (in the order they started)."""
    (server,) = receiver.wait_for_spans(where=lambda s: s.kind == "SERVER")
    children = receiver.wait_for_spans(
        clients, where=lambda s: s.kind == "CLIENT" and s.trace_id == server.trace_id
    )
    return server, sorted(children, key=lambda s: s.start_ns)


def assert_no_secret(receiver: OtlpReceiver) -> None:
    text = json.dumps(
        [[s.name, s.attributes, s.resource, s.status_message] for s in receiver.spans],
        default=str,
    )
    for secret in SECRETS:
        assert secret not in text


def assert_upstream_parent(mock: MockUpstream, clients: list[ReceivedSpan]) -> None:
    """Each upstream request carried its attempt span as the W3C parent."""
    sent = [request.header("traceparent") for request in mock.requests]
    assert sent == [f"00-{span.trace_id}-{span.span_id}-01" for span in clients]


# -- the conventions, per API --------------------------------------------------------------


def test_an_openai_call(
    start_proxy: StartProxy, mock_upstream: MockUpstream, receiver: OtlpReceiver
) -> None:
    proxy = start(start_proxy, mock_upstream, receiver)
    with oai(proxy) as client:
        answer = client.chat.completions.create(
            model="fast", messages=HI, max_tokens=50, temperature=0.2, top_p=0.8
        )
    server, (span,) = trace_of(receiver)
    assert server.name == "POST /v1/chat/completions"
    assert server.parent_span_id is None
    assert server.attributes["http.response.status_code"] == 200
    assert server.attributes["user.id"] == "team-a"
    assert span.parent_span_id == server.span_id
    assert span.name == "chat gpt-upstream"
    assert span.status == "UNSET"
    attrs = span.attributes
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.provider.name"] == "openai"
    assert attrs["gen_ai.request.model"] == "gpt-upstream"
    assert attrs["gen_ai.request.max_tokens"] == 50
    assert attrs["gen_ai.request.temperature"] == pytest.approx(0.2)
    assert attrs["gen_ai.request.top_p"] == pytest.approx(0.8)
    assert "gen_ai.request.stream" not in attrs
    assert attrs["gen_ai.response.id"] == answer.id
    assert attrs["gen_ai.response.model"] == answer.model
    assert attrs["gen_ai.response.finish_reasons"] == ("stop",)
    assert attrs["gen_ai.usage.input_tokens"] == PROMPT_TOKENS
    assert attrs["gen_ai.usage.output_tokens"] == COMPLETION_TOKENS
    assert attrs["server.address"] == "127.0.0.1"
    assert attrs["server.port"] == mock_upstream.port
    assert attrs["http.response.status_code"] == 200
    assert_upstream_parent(mock_upstream, [span])
    assert receiver.exports[0].headers["authorization"] == f"Bearer {OTLP_TOKEN}"
    assert_no_secret(receiver)


def test_an_anthropic_call(
    start_proxy: StartProxy, mock_upstream: MockUpstream, receiver: OtlpReceiver
) -> None:
    proxy = start(start_proxy, mock_upstream, receiver)
    with claude(proxy) as client:
        message = client.messages.create(model="smart", max_tokens=64, messages=HI)
    server, (span,) = trace_of(receiver)
    assert server.name == "POST /v1/messages"
    assert span.name == "chat claude-upstream"
    attrs = span.attributes
    assert attrs["gen_ai.provider.name"] == "anthropic"
    assert attrs["gen_ai.request.max_tokens"] == 64
    assert attrs["gen_ai.response.id"] == message.id
    assert attrs["gen_ai.response.finish_reasons"] == (message.stop_reason,)
    assert attrs["gen_ai.usage.input_tokens"] == message.usage.input_tokens
    assert attrs["gen_ai.usage.output_tokens"] == message.usage.output_tokens
    assert_upstream_parent(mock_upstream, [span])
    assert_no_secret(receiver)


def test_a_translated_call(
    start_proxy: StartProxy, mock_upstream: MockUpstream, receiver: OtlpReceiver
) -> None:
    """An OpenAI client, a model served by an Anthropic provider: the SERVER span is the
    client's route, the CLIENT span the provider's API."""
    proxy = start(start_proxy, mock_upstream, receiver)
    with oai(proxy) as client:
        answer = client.chat.completions.create(model="smart", messages=HI)
    server, (span,) = trace_of(receiver)
    assert server.name == "POST /v1/chat/completions"
    assert server.attributes["sansproxy.client_api"] == "openai"
    assert span.name == "chat claude-upstream"
    assert span.attributes["gen_ai.provider.name"] == "anthropic"
    assert mock_upstream.requests[0].path.endswith("/messages")
    assert span.attributes["gen_ai.usage.input_tokens"] == answer.usage.prompt_tokens  # type: ignore[union-attr]
    assert span.attributes["gen_ai.usage.output_tokens"] == answer.usage.completion_tokens  # type: ignore[union-attr]
    assert_upstream_parent(mock_upstream, [span])


def test_a_streamed_call(
    start_proxy: StartProxy, mock_upstream: MockUpstream, receiver: OtlpReceiver
) -> None:
    proxy = start(start_proxy, mock_upstream, receiver)
    with oai(proxy) as client:
        chunks = list(
            client.chat.completions.create(
                model="fast", messages=HI, stream=True, stream_options={"include_usage": True}
            )
        )
    server, (span,) = trace_of(receiver)
    attrs = span.attributes
    assert attrs["gen_ai.request.stream"] is True
    assert attrs["gen_ai.response.id"] == chunks[0].id
    assert attrs["gen_ai.usage.input_tokens"] == PROMPT_TOKENS
    assert attrs["gen_ai.usage.output_tokens"] == COMPLETION_TOKENS
    # (the first token may come with the last byte: equal, to rounding)
    assert 0 <= attrs["gen_ai.response.time_to_first_chunk"] <= span.duration + 1e-6
    assert server.start_ns <= span.start_ns and span.end_ns <= server.end_ns
    assert_upstream_parent(mock_upstream, [span])


def test_retries_are_separate_attempt_spans(
    start_proxy: StartProxy, mock_upstream: MockUpstream, receiver: OtlpReceiver
) -> None:
    proxy = start(start_proxy, mock_upstream, receiver, {"retry": {"attempts": 3, "backoff": 0.01}})
    mock_upstream.enqueue("status-500", "status-503", "ok")
    with oai(proxy) as client:
        client.chat.completions.create(model="fast", messages=HI)
    server, clients = trace_of(receiver, 3)
    assert len({span.span_id for span in clients}) == 3
    assert all(span.parent_span_id == server.span_id for span in clients)
    assert [span.status for span in clients] == ["ERROR", "ERROR", "UNSET"]
    assert [span.attributes.get("error.type") for span in clients] == ["500", "503", None]
    assert [span.attributes["http.response.status_code"] for span in clients] == [500, 503, 200]
    assert ["gen_ai.usage.input_tokens" in span.attributes for span in clients] == [
        False,
        False,
        True,
    ]
    assert server.status == "UNSET"
    assert server.attributes["sansproxy.retries"] == 2
    assert_upstream_parent(mock_upstream, clients)


def test_a_client_traceparent_is_continued(
    start_proxy: StartProxy, mock_upstream: MockUpstream, receiver: OtlpReceiver
) -> None:
    proxy = start(start_proxy, mock_upstream, receiver)
    with oai(proxy, traceparent=f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01") as client:
        client.chat.completions.create(model="fast", messages=HI)
    server, (span,) = trace_of(receiver)
    assert server.trace_id == span.trace_id == CLIENT_TRACE
    assert server.parent_span_id == CLIENT_SPAN
    assert span.parent_span_id == server.span_id
    assert_upstream_parent(mock_upstream, [span])


# -- Langfuse --------------------------------------------------------------------------


def test_langfuse_gets_one_generation_per_call_with_usage_and_cost(
    start_proxy: StartProxy, mock_upstream: MockUpstream, receiver: OtlpReceiver
) -> None:
    """A pass-through call (OpenAI to OpenAI), a translated call and a stream: each
    is one trace holding one generation, with usage and the gateway's cost."""
    proxy = start(start_proxy, mock_upstream, receiver, langfuse=True)
    with oai(proxy, **{"x-session-id": "chat-7"}) as client:
        client.chat.completions.create(model="fast", messages=HI)
        client.chat.completions.create(model="smart", messages=HI)
        list(
            client.chat.completions.create(
                model="fast", messages=HI, stream=True, stream_options={"include_usage": True}
            )
        )
    spans = receiver.wait_for_spans(6)
    assert {span.path for span in spans} == {LANGFUSE_PATH}
    headers = receiver.exports[0].headers
    token = base64.b64encode(f"pk-lf-public:{LANGFUSE_SECRET}".encode()).decode()
    assert headers["authorization"] == f"Basic {token}"
    assert headers["x-langfuse-ingestion-version"] == "4"

    traces: dict[str, list[ReceivedSpan]] = {}
    for span in spans:
        traces.setdefault(span.trace_id, []).append(span)
    assert len(traces) == 3
    for trace in traces.values():
        types = sorted(span.attributes["langfuse.observation.type"] for span in trace)
        assert types == ["generation", "span"]
        (root,) = (s for s in trace if s.kind == "SERVER")
        (generation,) = (s for s in trace if s.kind == "CLIENT")
        assert root.attributes["langfuse.trace.name"] in ("chat fast", "chat smart")
        for span in trace:
            assert span.attributes["user.id"] == "team-a"
            assert span.attributes["session.id"] == "chat-7"
        attrs = generation.attributes
        assert attrs["langfuse.observation.model.name"]
        assert json.loads(attrs["langfuse.observation.usage_details"]) == {
            "input": PROMPT_TOKENS,
            "output": COMPLETION_TOKENS,
            "total": PROMPT_TOKENS + COMPLETION_TOKENS,
        }
        assert json.loads(attrs["langfuse.observation.cost_details"]) == {
            "total": pytest.approx(COST)
        }
    streamed = [
        s for s in spans if s.kind == "CLIENT" and s.attributes.get("gen_ai.request.stream")
    ]
    (stream,) = streamed
    first_token = stream.attributes["langfuse.observation.completion_start_time"]
    assert first_token.endswith("Z") and "T" in first_token
    assert_no_secret(receiver)
    assert token not in json.dumps([s.attributes for s in spans])


# -- a receiver that is slow or down -------------------------------------------------------


def test_a_slow_receiver_does_not_slow_the_proxy(
    start_proxy: StartProxy, mock_upstream: MockUpstream, receiver: OtlpReceiver
) -> None:
    """While the receiver keeps an export unanswered, calls go on; the spans arrive
    once it answers."""
    proxy = start(start_proxy, mock_upstream, receiver)
    receiver.hold()
    with oai(proxy) as client:
        client.chat.completions.create(model="fast", messages=HI)
        receiver.wait_for_arrivals(1)  # the proxy's exporter waits for an answer now
        for _ in range(3):
            answer = client.chat.completions.create(model="fast", messages=HI)
            assert answer.choices[0].message.content
    receiver.release()
    spans = receiver.wait_for_spans(8)
    assert len({span.trace_id for span in spans}) == 4


# Every driver closes its sinks in Driver.aclose: one adapter per driver (the
# Protocol one, the anyio one) is enough for a test that waits out a close.
@pytest.mark.parametrize("adapter", ["h11", "asgi"])
def test_a_receiver_that_is_down_costs_nothing_and_shutdown_is_prompt(
    start_proxy: StartProxy, mock_upstream: MockUpstream
) -> None:
    telemetry = {"otlp_endpoint": f"http://127.0.0.1:{closed_port()}"}
    proxy = start_proxy(config=gateway(mock_upstream, telemetry), env=ENV)
    with oai(proxy) as client:
        for _ in range(3):
            answer = client.chat.completions.create(model="fast", messages=HI)
            assert answer.choices[0].message.content
    # Shutdown waits for the exporter a bounded time (a few seconds), not the SDK's 30 s.
    assert stop(proxy) in (0, -signal.SIGTERM)
    assert PROVIDER_KEY not in proxy.logs() and CLIENT_KEY not in proxy.logs()
