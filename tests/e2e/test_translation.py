"""OpenAI <-> Anthropic translation through each adapter, driven by the official SDKs.

- the `openai` SDK in front of an anthropic-type provider, and the `anthropic` SDK in
  front of an openai-type provider: text, streams (the SDKs' own accumulators must
  rebuild the non-streamed answer), usage, errors in the client's API's shape;
- tool calls: the translated *request* (tools, tool_choice, tool calls and results)
  as the mock upstream recorded it, and the translated *answers*, non-streamed and
  streamed. The mock upstream only ever answers with text, so tool-call answers come
  from `_CannedUpstream`, a few lines below that replays documented-format answers.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final

import anthropic
import openai
import pytest

from tests.e2e._helpers import (
    CHAT,
    MESSAGES,
    READ_TIMEOUT,
    SSE,
    assert_error_shape,
    chat_body,
    chat_content,
    http_client,
    iter_events,
    openai_client,
)
from tests.support.mock_upstream import COMPLETION_TOKENS, DEFAULT_TEXT, PROMPT_TOKENS, MockUpstream
from tests.support.proxy_process import ProxyProcess, StartProxy

DEFAULT_MAX_TOKENS: Final = 321


def _config(base_url: str) -> dict[str, Any]:
    """`claude` (anthropic) and `oai` (openai) providers on `base_url`, and their models.

    `smart` and `fast` are plain; `*-429` and `*-500` make the mock upstream answer
    with that status (its scenario is picked by the upstream model name).
    """
    timeouts = {"connect_timeout": 2.0, "read_timeout": READ_TIMEOUT}
    return {
        "providers": {
            "claude": {"type": "anthropic", "base_url": base_url, **timeouts},
            "oai": {"type": "openai", "base_url": base_url, **timeouts},
        },
        "models": {
            "smart": [{"provider": "claude", "model": "claude-upstream"}],
            "smart-429": [{"provider": "claude", "model": "scenario:status-429"}],
            "smart-500": [{"provider": "claude", "model": "scenario:status-500"}],
            "fast": [{"provider": "oai", "model": "gpt-upstream"}],
            "fast-429": [{"provider": "oai", "model": "scenario:status-429"}],
            "fast-500": [{"provider": "oai", "model": "scenario:status-500"}],
        },
        "translation": {"default_max_tokens": DEFAULT_MAX_TOKENS},
    }


def _anthropic_client(proxy: ProxyProcess) -> anthropic.Anthropic:
    """The official anthropic SDK pointed at the proxy, without retries."""
    return anthropic.Anthropic(
        base_url=proxy.base_url, api_key="sk-ant-client", max_retries=0, timeout=READ_TIMEOUT
    )


def _chat_chunks(events: Sequence[SSE]) -> list[dict[str, Any]]:
    """Check an OpenAI chat stream's shape; return its chunks (without the final [DONE])."""
    assert events, "an empty stream"
    assert events[-1].data == "[DONE]", events[-1]
    assert all(event.event is None for event in events), [e.event for e in events]
    chunks = [event.json() for event in events[:-1]]
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks), chunks
    assert len({chunk["id"] for chunk in chunks}) == 1, "one id for the whole completion"
    finishes = [c["finish_reason"] for chunk in chunks for c in chunk["choices"]]
    assert [f for f in finishes if f is not None] == [finishes[-1]], finishes
    return chunks


def _message_events(events: Sequence[SSE]) -> list[dict[str, Any]]:
    """Check Anthropic's stream grammar; return the events' data without the pings.

    message_start, then content blocks at indices 0, 1, ... each as start, deltas,
    stop (one open at a time), then message_delta and message_stop; pings anywhere
    after message_start; every event's name equals its data's "type".
    """
    datas = [event.json() for event in events]
    assert [e.event for e in events] == [d["type"] for d in datas], events
    kinds = [d for d in datas if d["type"] != "ping"]
    assert datas[0]["type"] == "message_start", datas[0]
    assert [d["type"] for d in kinds[-2:]] == ["message_delta", "message_stop"], kinds[-2:]
    open_index: int | None = None
    next_index = 0
    for data in kinds[1:-2]:
        kind = data["type"]
        if kind == "content_block_start":
            assert open_index is None and data["index"] == next_index, (open_index, data)
            open_index, next_index = next_index, next_index + 1
        elif kind in ("content_block_delta", "content_block_stop"):
            assert open_index is not None and data["index"] == open_index, (open_index, data)
            if kind == "content_block_stop":
                open_index = None
        else:
            raise AssertionError(f"unexpected event inside the message: {data}")
    assert open_index is None, "a content block was never stopped"
    return kinds


# -- the openai SDK in front of an Anthropic provider ---------------------------------


def test_openai_sdk_to_anthropic_provider(
    start_proxy: StartProxy, mock_upstream: MockUpstream
) -> None:
    proxy = start_proxy(config=_config(mock_upstream.base_url))
    messages: Any = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
    ]
    with openai_client(proxy) as client:
        completion = client.chat.completions.create(model="smart", messages=messages)
        with client.chat.completions.stream(
            model="smart", messages=messages, stream_options={"include_usage": True}
        ) as stream:
            for _ in stream:
                pass
            streamed = stream.get_final_completion()

    assert completion.model == "smart"
    assert completion.choices[0].message.content == DEFAULT_TEXT
    assert completion.choices[0].finish_reason == "stop"
    assert streamed.choices[0].message.content == completion.choices[0].message.content
    assert streamed.choices[0].finish_reason == "stop"
    for usage in (completion.usage, streamed.usage):
        assert usage is not None
        assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (
            PROMPT_TOKENS,
            COMPLETION_TOKENS,
            PROMPT_TOKENS + COMPLETION_TOKENS,
        )

    plain, streaming = mock_upstream.wait_for_requests(2)
    for seen in (plain, streaming):
        assert (seen.method, seen.path) == ("POST", MESSAGES)
        assert seen.header("anthropic-version") == "2023-06-01"
        body = seen.json()
        assert body["model"] == "claude-upstream"
        assert body["max_tokens"] == DEFAULT_MAX_TOKENS
        assert body["system"] == "Be brief."
        assert body["messages"] == [{"role": "user", "content": "Hi"}]
    assert "stream" not in plain.json() or plain.json()["stream"] is False
    assert streaming.json()["stream"] is True


def test_openai_stream_from_anthropic_on_the_wire(
    start_proxy: StartProxy, mock_upstream: MockUpstream
) -> None:
    """Chunks as OpenAI sends them, ending in [DONE]; the usage chunk only when asked for."""
    proxy = start_proxy(config=_config(mock_upstream.base_url))
    with http_client(proxy) as client:
        results: dict[bool, list[SSE]] = {}
        for include_usage in (False, True):
            extra: dict[str, Any] = (
                {"stream_options": {"include_usage": True}} if include_usage else {}
            )
            with client.stream("POST", CHAT, json=chat_body("smart", stream=True, **extra)) as r:
                assert r.status_code == 200
                assert r.headers["content-type"].startswith("text/event-stream")
                results[include_usage] = list(iter_events(r))

    for include_usage, events in results.items():
        chunks = _chat_chunks(events)
        assert chat_content(events) == DEFAULT_TEXT
        assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
        assert all(chunk["model"] == "smart" for chunk in chunks)
        usage_chunks = [chunk for chunk in chunks if chunk.get("usage")]
        if include_usage:
            assert usage_chunks == [chunks[-1]], "one usage chunk, the last"
            assert chunks[-1]["choices"] == []
            usage = chunks[-1]["usage"]
            assert (usage["prompt_tokens"], usage["completion_tokens"]) == (
                PROMPT_TOKENS,
                COMPLETION_TOKENS,
            )
        else:
            assert usage_chunks == [], "usage the client did not ask for"
            assert all(chunk["choices"] for chunk in chunks)


def test_openai_sdk_errors_from_anthropic_provider(
    start_proxy: StartProxy, mock_upstream: MockUpstream
) -> None:
    proxy = start_proxy(config=_config(mock_upstream.base_url))
    hi: Any = [{"role": "user", "content": "x"}]
    with openai_client(proxy) as client:
        with pytest.raises(openai.RateLimitError) as limited:
            client.chat.completions.create(model="smart-429", messages=hi)
        with pytest.raises(openai.RateLimitError) as limited_stream:
            client.chat.completions.create(model="smart-429", messages=hi, stream=True)
        with pytest.raises(openai.InternalServerError) as broken:
            client.chat.completions.create(model="smart-500", messages=hi)

    for caught in (limited, limited_stream):
        assert caught.value.status_code == 429
        error = assert_error_shape(caught.value.response.json(), code="rate_limit_exceeded")
        assert error["message"] == "mock upstream error 429"
    assert broken.value.status_code == 500
    error = assert_error_shape(broken.value.response.json(), code=None)
    assert error["message"] == "mock upstream error 500"
    assert error["type"] == "server_error"
    assert [r.path for r in mock_upstream.requests] == [MESSAGES] * 3
    # The upstream's Retry-After tells the SDK when to retry: it must survive translation.
    for caught in (limited, limited_stream):
        assert caught.value.response.headers.get("retry-after") == "7"


# -- the anthropic SDK in front of an OpenAI provider ---------------------------------


def test_anthropic_sdk_to_openai_provider(
    start_proxy: StartProxy, mock_upstream: MockUpstream
) -> None:
    proxy = start_proxy(config=_config(mock_upstream.base_url))
    hi: Any = [{"role": "user", "content": "Hi"}]
    with _anthropic_client(proxy) as client:
        message = client.messages.create(
            model="fast", max_tokens=64, system="Be brief.", messages=hi
        )
        with client.messages.stream(
            model="fast", max_tokens=64, system="Be brief.", messages=hi
        ) as stream:
            sdk_events = [event.type for event in stream]
            final = stream.get_final_message()
    with (
        http_client(proxy) as http,
        http.stream(
            "POST",
            MESSAGES,
            json={"model": "fast", "max_tokens": 64, "stream": True, "messages": hi},
            headers={"anthropic-version": "2023-06-01"},
        ) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        wire = _message_events(list(iter_events(response)))

    assert message.model == "fast"
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].type == "text" and message.content[0].text == DEFAULT_TEXT
    assert message.stop_reason == "end_turn"
    assert final.model == "fast"
    assert [(b.type, getattr(b, "text", None)) for b in final.content] == [("text", DEFAULT_TEXT)]
    assert final.stop_reason == "end_turn"
    for usage in (message.usage, final.usage):
        assert (usage.input_tokens, usage.output_tokens) == (PROMPT_TOKENS, COMPLETION_TOKENS)
    assert sdk_events[0] == "message_start" and sdk_events[-1] == "message_stop"
    assert sdk_events.count("text") == COMPLETION_TOKENS
    text = "".join(d["delta"]["text"] for d in wire if d["type"] == "content_block_delta")
    assert text == DEFAULT_TEXT
    assert wire[-2]["delta"]["stop_reason"] == "end_turn"
    assert wire[-2]["usage"]["output_tokens"] == COMPLETION_TOKENS

    plain, streaming, raw = mock_upstream.wait_for_requests(3)
    for seen in (plain, streaming, raw):
        assert (seen.method, seen.path) == ("POST", CHAT)
        body = seen.json()
        assert body["model"] == "gpt-upstream"
        assert body["max_tokens"] == 64
    assert plain.json()["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
    ]
    assert plain.json().get("stream") in (None, False)
    for seen in (streaming, raw):
        assert seen.json()["stream"] is True
        assert seen.json()["stream_options"] == {"include_usage": True}


def test_anthropic_sdk_errors_from_openai_provider(
    start_proxy: StartProxy, mock_upstream: MockUpstream
) -> None:
    """Upstream errors and the proxy's own, all in Anthropic's shape."""
    proxy = start_proxy(config=_config(mock_upstream.base_url))
    hi: Any = [{"role": "user", "content": "x"}]
    with _anthropic_client(proxy) as client:
        with pytest.raises(anthropic.RateLimitError) as limited:
            client.messages.create(model="fast-429", max_tokens=8, messages=hi)
        with pytest.raises(anthropic.InternalServerError) as broken:
            client.messages.create(model="fast-500", max_tokens=8, messages=hi)
        with pytest.raises(anthropic.NotFoundError) as unknown:
            client.messages.create(model="no-such-model", max_tokens=8, messages=hi)

    expected = [
        (limited.value, 429, "rate_limit_error", "mock upstream error 429"),
        (broken.value, 500, "api_error", "mock upstream error 500"),
        (unknown.value, 404, "not_found_error", None),
    ]
    for error, status, kind, message in expected:
        assert error.status_code == status
        body = error.response.json()
        assert set(body) == {"type", "error"} and body["type"] == "error", body
        assert body["error"]["type"] == kind, body
        assert message is None or body["error"]["message"] == message, body
    assert "no-such-model" in unknown.value.response.json()["error"]["message"]
    assert [r.path for r in mock_upstream.requests] == [CHAT] * 2
    # The upstream's Retry-After tells the SDK when to retry: it must survive translation.
    assert limited.value.response.headers.get("retry-after") == "7"


# -- tool calls: the translated requests ----------------------------------------------

WEATHER_SCHEMA: Final = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
}
CHAT_TOOL: Final[Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather",
        "parameters": WEATHER_SCHEMA,
    },
}
ANTHROPIC_TOOL: Final[Any] = {
    "name": "get_weather",
    "description": "Current weather",
    "input_schema": WEATHER_SCHEMA,
}


def test_tool_requests_translated(start_proxy: StartProxy, mock_upstream: MockUpstream) -> None:
    """Tools, tool_choice, the assistant's tool calls and the tool results, both ways."""
    proxy = start_proxy(config=_config(mock_upstream.base_url))
    chat_messages: Any = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18C, sunny"},
    ]
    with openai_client(proxy) as client:
        client.chat.completions.create(
            model="smart",
            messages=chat_messages,
            tools=[CHAT_TOOL],
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
        )
    anthropic_messages: Any = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": [
                {
                    "type": "tool_use",
                    "id": "toolu_1",
                    "name": "get_weather",
                    "input": {"city": "Paris"},
                }
            ],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C, sunny"}],
        },
    ]
    with _anthropic_client(proxy) as anthropic_sdk:
        anthropic_sdk.messages.create(
            model="fast",
            max_tokens=64,
            messages=anthropic_messages,
            tools=[ANTHROPIC_TOOL],
            tool_choice={"type": "tool", "name": "get_weather"},
        )

    to_anthropic, to_openai = (r.json() for r in mock_upstream.wait_for_requests(2))
    assert to_anthropic["tools"] == [ANTHROPIC_TOOL]
    assert to_anthropic["tool_choice"] == {"type": "tool", "name": "get_weather"}
    assert to_anthropic["messages"] == [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": [
                {
                    "type": "tool_use",
                    "id": "call_1",
                    "name": "get_weather",
                    "input": {"city": "Paris"},
                }
            ],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "call_1", "content": "18C, sunny"}],
        },
    ]

    assert to_openai["tools"] == [CHAT_TOOL]
    assert to_openai["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    user, assistant, tool = to_openai["messages"]
    assert user == {"role": "user", "content": "Weather in Paris?"}
    assert assistant["role"] == "assistant" and not assistant.get("content")
    (call,) = assistant["tool_calls"]
    assert (call["id"], call["type"], call["function"]["name"]) == (
        "toolu_1",
        "function",
        "get_weather",
    )
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    assert tool == {"role": "tool", "tool_call_id": "toolu_1", "content": "18C, sunny"}


# -- tool calls: the translated answers -----------------------------------------------

TOOL_TEXT: Final = "Let me check the weather."
TOOL_ID: Final = "toolu_01T1x1fJ34qAmk2tNTrN7Up6"
CALL_ID: Final = "call_1EYWDzueHEp8OsB8jJSEp7WB"
TOOL_ARGS: Final = {"location": "San Francisco, CA", "unit": "fahrenheit"}
# The arguments as a provider streams them: JSON cut anywhere, here every 7 characters.
_ARGS_JSON: Final = json.dumps(TOOL_ARGS)
ARG_PIECES: Final = [_ARGS_JSON[i : i + 7] for i in range(0, len(_ARGS_JSON), 7)]
TEXT_PIECES: Final = ["Let me", " check", " the weather."]
CANNED_USAGE: Final = (472, 89)  # input, output


def _sse(events: Sequence[tuple[str | None, Any]]) -> bytes:
    out = b""
    for name, data in events:
        head = f"event: {name}\n" if name else ""
        text = data if isinstance(data, str) else json.dumps(data)
        out += f"{head}data: {text}\n\n".encode()
    return out


def _anthropic_answers(model: str) -> tuple[bytes, bytes]:
    """A text + tool_use message, whole and streamed (the Messages API's documented shapes)."""
    usage_in, usage_out = CANNED_USAGE
    whole: dict[str, Any] = {
        "id": "msg_01Aq9w938a90dw8q",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [
            {"type": "text", "text": TOOL_TEXT},
            {"type": "tool_use", "id": TOOL_ID, "name": "get_weather", "input": TOOL_ARGS},
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {"input_tokens": usage_in, "output_tokens": usage_out},
    }
    start = {
        **whole,
        "content": [],
        "stop_reason": None,
        "usage": {**whole["usage"], "output_tokens": 1},
    }

    def delta(index: int, body: dict[str, str]) -> tuple[str, Any]:
        return (
            "content_block_delta",
            {"type": "content_block_delta", "index": index, "delta": body},
        )

    tool_block = {"type": "tool_use", "id": TOOL_ID, "name": "get_weather", "input": {}}
    stream = _sse(
        [
            ("message_start", {"type": "message_start", "message": start}),
            (
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "text", "text": ""},
                },
            ),
            ("ping", {"type": "ping"}),
            *[delta(0, {"type": "text_delta", "text": piece}) for piece in TEXT_PIECES],
            ("content_block_stop", {"type": "content_block_stop", "index": 0}),
            (
                "content_block_start",
                {"type": "content_block_start", "index": 1, "content_block": tool_block},
            ),
            delta(1, {"type": "input_json_delta", "partial_json": ""}),
            *[delta(1, {"type": "input_json_delta", "partial_json": p}) for p in ARG_PIECES],
            ("content_block_stop", {"type": "content_block_stop", "index": 1}),
            (
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                    "usage": {"output_tokens": usage_out},
                },
            ),
            ("message_stop", {"type": "message_stop"}),
        ]
    )
    return json.dumps(whole).encode(), stream


def _openai_answers(model: str) -> tuple[bytes, bytes]:
    """A text + tool call chat completion, whole and streamed with include_usage."""
    usage_in, usage_out = CANNED_USAGE
    usage = {"prompt_tokens": usage_in, "completion_tokens": usage_out, "total_tokens": 561}
    call = {
        "id": CALL_ID,
        "type": "function",
        "function": {"name": "get_weather", "arguments": _ARGS_JSON},
    }
    whole = {
        "id": "chatcmpl-BWlJBDk2xe66hjff60joVYpXi1hh4",
        "object": "chat.completion",
        "created": 1747148049,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": TOOL_TEXT, "tool_calls": [call]},
                "logprobs": None,
                "finish_reason": "tool_calls",
            }
        ],
        "usage": usage,
    }

    def chunk(delta: dict[str, Any], finish: str | None = None) -> tuple[None, Any]:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return (
            None,
            {**whole, "object": "chat.completion.chunk", "choices": [choice], "usage": None},
        )

    first_call = {"index": 0, **call, "function": {"name": "get_weather", "arguments": ""}}
    stream = _sse(
        [
            chunk({"role": "assistant", "content": ""}),
            *[chunk({"content": piece}) for piece in TEXT_PIECES],
            chunk({"tool_calls": [first_call]}),
            *[
                chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
                for piece in ARG_PIECES
            ],
            chunk({}, "tool_calls"),
            (None, {**whole, "object": "chat.completion.chunk", "choices": [], "usage": usage}),
            (None, "[DONE]"),
        ]
    )
    return json.dumps(whole).encode(), stream


class _CannedUpstream(ThreadingHTTPServer):
    """Answers /v1/messages and /v1/chat/completions with a tool call; records requests."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _CannedHandler)
        self.seen: list[tuple[str, dict[str, Any]]] = []
        self.lock = threading.Lock()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _CannedHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        server = self.server
        assert isinstance(server, _CannedUpstream)
        request = json.loads(self.rfile.read(int(self.headers["content-length"])))
        with server.lock:
            server.seen.append((self.path, request))
        answers = _anthropic_answers if self.path == MESSAGES else _openai_answers
        whole, stream = answers(request["model"])
        streaming = request.get("stream") is True
        payload = stream if streaming else whole
        self.send_response(200)
        self.send_header("content-type", "text/event-stream" if streaming else "application/json")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def canned_upstream() -> Iterator[_CannedUpstream]:
    server = _CannedUpstream()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(READ_TIMEOUT)


def test_openai_sdk_tool_calls_from_anthropic(
    start_proxy: StartProxy, canned_upstream: _CannedUpstream
) -> None:
    """The SDK's stream accumulator rebuilds the same tool call as the whole answer."""
    proxy = start_proxy(config=_config(canned_upstream.base_url))
    hi: Any = [{"role": "user", "content": "Weather in SF?"}]
    tools: Any = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    with openai_client(proxy) as client:
        whole = client.chat.completions.create(model="smart", messages=hi, tools=tools)
        with client.chat.completions.stream(
            model="smart", messages=hi, tools=tools, stream_options={"include_usage": True}
        ) as stream:
            for _ in stream:
                pass
            streamed = stream.get_final_completion()

    for completion in (whole, streamed):
        choice = completion.choices[0]
        assert choice.finish_reason == "tool_calls"
        assert choice.message.content == TOOL_TEXT
        assert choice.message.tool_calls is not None
        (call,) = choice.message.tool_calls
        assert call.type == "function" and call.id == TOOL_ID
        assert call.function.name == "get_weather"
        assert json.loads(call.function.arguments) == TOOL_ARGS
        assert completion.usage is not None
        assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == CANNED_USAGE
    assert [(path, body.get("stream")) for path, body in canned_upstream.seen] == [
        (MESSAGES, None),
        (MESSAGES, True),
    ]


def test_anthropic_sdk_tool_use_from_openai(
    start_proxy: StartProxy, canned_upstream: _CannedUpstream
) -> None:
    """The SDK's MessageStream rebuilds the same tool_use block as the whole answer."""
    proxy = start_proxy(config=_config(canned_upstream.base_url))
    hi: Any = [{"role": "user", "content": "Weather in SF?"}]
    tools: Any = [{"name": "get_weather", "input_schema": {"type": "object"}}]
    with _anthropic_client(proxy) as client:
        whole = client.messages.create(model="fast", max_tokens=64, messages=hi, tools=tools)
        with client.messages.stream(
            model="fast", max_tokens=64, messages=hi, tools=tools
        ) as stream:
            for _ in stream:
                pass
            streamed = stream.get_final_message()

    for message in (whole, streamed):
        assert message.stop_reason == "tool_use"
        text, tool = message.content
        assert text.type == "text" and text.text == TOOL_TEXT
        assert tool.type == "tool_use"
        assert (tool.id, tool.name, tool.input) == (CALL_ID, "get_weather", TOOL_ARGS)
        assert (message.usage.input_tokens, message.usage.output_tokens) == CANNED_USAGE
    paths = [(path, body.get("stream")) for path, body in canned_upstream.seen]
    assert paths == [(CHAT, None), (CHAT, True)]
