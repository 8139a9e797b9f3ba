"""Both official SDKs against a proxy started with no upstream: the built-in mock answers.

Over real loopback sockets, under each adapter: the anthropic SDK's ``messages.create``,
``messages.stream`` and tool use, ``count_tokens``, and the openai SDK against the same
proxy. The proxy writes traces (``--trace-dir``, nothing else): the usage a trace
records is the usage the SDK read.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import pytest

from tests.support.proxy_process import (
    ADAPTER_MODULES,
    START_TIMEOUT,
    ProxyProcess,
    proxy_argv,
    proxy_env,
)
from tests.support.traces import wait_for_trace

from ._helpers import openai_client

MOCK = "This is the sansproxy mock. You said: "
MODEL = "claude-sonnet-4-5"
HELLO: list[Any] = [{"role": "user", "content": "Hello there"}]
WEATHER: Any = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city", "days"],
    },
}


class MockProxy:
    """A proxy with no upstream, and the directory its traces go to."""

    def __init__(self, process: ProxyProcess, traces: Path) -> None:
        self.process = process
        self.traces = traces

    def client(self) -> anthropic.Anthropic:
        """The official SDK pointed at the proxy, without retries (they would hide failures)."""
        return anthropic.Anthropic(
            base_url=self.process.base_url, api_key="sk-ant-test", max_retries=0, timeout=10.0
        )

    def traced_usage(self, exchange_id: str | None) -> dict[str, Any]:
        assert exchange_id
        record = wait_for_trace(self.traces, exchange_id)
        assert record["outcome"] == "completed" and record["upstream"] is None
        usage: dict[str, Any] = record["usage"]
        return usage


@pytest.fixture(scope="module", params=list(ADAPTER_MODULES))
def mock_proxy(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MockProxy]:
    """One proxy per adapter for the whole module: no configuration but a trace dir."""
    traces = tmp_path_factory.mktemp(f"traces-{request.param}")
    argv = proxy_argv(request.param, ["--trace-dir", str(traces)], pick_port=True)
    process = ProxyProcess(argv, env=proxy_env())
    try:
        process.wait_ready(START_TIMEOUT)
        yield MockProxy(process, traces)
    finally:
        process.close()
    assert "Traceback" not in process.logs()


def usage_of(message: anthropic.types.Message) -> dict[str, Any]:
    return {
        "input_tokens": message.usage.input_tokens,
        "output_tokens": message.usage.output_tokens,
    }


def test_messages_create(mock_proxy: MockProxy) -> None:
    with mock_proxy.client() as client:
        raw = client.messages.with_raw_response.create(
            model=MODEL, max_tokens=256, system="Be brief.", messages=HELLO
        )
    message = raw.parse()
    exchange = raw.headers.get("x-sansproxy-id")
    assert message.id == f"msg_{exchange}"
    assert message.type == "message" and message.role == "assistant"
    assert message.model == MODEL
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == MOCK + "Hello there"  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    assert message.usage.input_tokens > 0 and message.usage.output_tokens == 9
    traced = mock_proxy.traced_usage(exchange)
    assert {k: traced[k] for k in ("input_tokens", "output_tokens")} == usage_of(message)
    assert traced["estimated"] is False


def test_messages_stream(mock_proxy: MockProxy) -> None:
    with (
        mock_proxy.client() as client,
        client.messages.stream(model=MODEL, max_tokens=256, messages=HELLO) as stream,
    ):
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
        exchange = stream.response.headers.get("x-sansproxy-id")
    assert text == MOCK + "Hello there"
    assert final.content[0].text == text  # type: ignore[union-attr]
    assert final.stop_reason == "end_turn"
    assert final.usage.input_tokens > 0 and final.usage.output_tokens == 9
    traced = mock_proxy.traced_usage(exchange)
    assert {k: traced[k] for k in ("input_tokens", "output_tokens")} == usage_of(final)


def test_tool_use_json_stream_and_the_turn_after(mock_proxy: MockProxy) -> None:
    with mock_proxy.client() as client:
        message = client.messages.create(
            model=MODEL, max_tokens=256, messages=HELLO, tools=[WEATHER]
        )
        assert message.stop_reason == "tool_use"
        (call,) = message.content
        assert call.type == "tool_use"
        assert call.name == "get_weather" and call.input == {"city": "mock", "days": 0}

        with client.messages.stream(
            model=MODEL, max_tokens=256, messages=HELLO, tools=[WEATHER]
        ) as stream:
            streamed = stream.get_final_message()
        assert streamed.stop_reason == "tool_use"
        (streamed_call,) = streamed.content
        assert streamed_call.type == "tool_use" and streamed_call.input == call.input
        assert streamed.usage.output_tokens == message.usage.output_tokens

        # The tool's result comes back: the mock answers text, and the agent loop ends.
        result = {"type": "tool_result", "tool_use_id": call.id, "content": "sunny"}
        turns: list[Any] = [
            *HELLO,
            {"role": "assistant", "content": message.content},
            {"role": "user", "content": [result]},
        ]
        after = client.messages.create(model=MODEL, max_tokens=256, tools=[WEATHER], messages=turns)
    assert after.stop_reason == "end_turn"
    assert after.content[0].text == MOCK + "sunny"  # type: ignore[union-attr]


def test_count_tokens_and_errors_in_anthropics_shape(mock_proxy: MockProxy) -> None:
    with mock_proxy.client() as client:
        counted = client.messages.count_tokens(model=MODEL, messages=HELLO)
        message = client.messages.create(model=MODEL, max_tokens=256, messages=HELLO)
        assert counted.input_tokens == message.usage.input_tokens
        with pytest.raises(anthropic.BadRequestError) as caught:
            client.messages.create(model=MODEL, max_tokens=256, messages=[])
    assert caught.value.status_code == 400
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["type"] == "error"
    assert caught.value.body["error"]["type"] == "invalid_request_error"
    assert "'messages'" in caught.value.body["error"]["message"]


def test_the_openai_sdk_still_works_against_the_same_proxy(mock_proxy: MockProxy) -> None:
    with openai_client(mock_proxy.process) as client:
        completion = client.chat.completions.create(
            model="mock-gpt", messages=[{"role": "user", "content": "Hello there"}]
        )
        assert completion.choices[0].message.content == MOCK + "Hello there"
        assert completion.usage is not None
        text = ""
        for chunk in client.chat.completions.create(
            model="mock-gpt",
            messages=[{"role": "user", "content": "Hello there"}],
            stream=True,
            stream_options={"include_usage": True},
        ):
            for choice in chunk.choices:
                text += choice.delta.content or ""
        assert text == MOCK + "Hello there"
        tool: Any = {
            "type": "function",
            "function": {"name": "get_weather", "parameters": WEATHER["input_schema"]},
        }
        called = client.chat.completions.create(
            model="mock-gpt", messages=[{"role": "user", "content": "Hi"}], tools=[tool]
        )
        assert called.choices[0].finish_reason == "tool_calls"
        (call,) = called.choices[0].message.tool_calls or []
        assert call.function.name == "get_weather"  # type: ignore[union-attr]
        assert call.function.arguments == '{"city":"mock","days":0}'  # type: ignore[union-attr]
        assert [m.id for m in client.models.list()] == ["mock-gpt", "mock-embedding"]
