"""Anthropic Messages client -> OpenAI Chat Completions upstream.

The modules: core.gateway._messages_request_to_chat (the request) and
core.gateway._chat_response_to_messages (the answer, the error, the stream).

No sockets. The fixtures are the providers' documented examples: Anthropic's
Messages API reference and guides (messages, prompt caching, vision, tool use,
streaming, errors) and OpenAI's API reference (the x-oaiMeta examples of
openai/openai-openapi ``openapi.yaml``; their trailing commas removed), plus a
recorded api.openai.com tool-call stream with ``include_usage``
(simonw/llm ``tests/cassettes/test_tools/test_tool_use_basic.yaml``).
"""

from __future__ import annotations

import base64
import itertools
import json
import pathlib
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Self

import pydantic
import pytest
from anthropic.types import Message, RawMessageStreamEvent
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from core._errors import LocalProtocolError, RemoteProtocolError, anthropic_type
from core._render import anthropic_error_body
from core._sse import SSEDecoder
from core.gateway._chat_response_to_messages import (
    ChatStreamToMessages,
    chat_response_to_messages,
    openai_error_to_anthropic,
)
from core.gateway._messages_request_to_chat import messages_request_to_chat

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "messages_to_chat"
MODEL = "claude-sonnet-4-5"  # what the client asked for
UPSTREAM = "gpt-4o-mini"  # the deployment's model
MSG_ID = "msg_test"
RAW_EVENT: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(RawMessageStreamEvent)


# --- pydantic models of the OpenAI chat request (API reference) -----------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ImageURL(_Strict):
    url: str
    detail: Literal["auto", "low", "high"] | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, url: str) -> str:
        if url.startswith("data:"):
            head, _, data = url.partition(",")
            assert head.startswith("data:image/") and head.endswith(";base64"), head
            base64.b64decode(data, validate=True)
        else:
            assert url.startswith(("https://", "http://")), url
        return url


class ImagePart(_Strict):
    type: Literal["image_url"]
    image_url: ImageURL


class SystemMessage(_Strict):
    role: Literal["system"]
    content: str | Annotated[list[TextPart], Field(min_length=1)]


class UserMessage(_Strict):
    role: Literal["user"]
    content: (
        str
        | Annotated[
            list[Annotated[TextPart | ImagePart, Field(discriminator="type")]], Field(min_length=1)
        ]
    )


class FunctionCall(_Strict):
    name: str
    arguments: str

    @field_validator("arguments")
    @classmethod
    def _json_object(cls, arguments: str) -> str:
        assert isinstance(json.loads(arguments), dict)
        return arguments


class ToolCall(_Strict):
    id: str
    type: Literal["function"]
    function: FunctionCall


class AssistantMessage(_Strict):
    role: Literal["assistant"]
    content: str | list[TextPart] | None = None
    tool_calls: Annotated[list[ToolCall], Field(min_length=1)] | None = None

    @model_validator(mode="after")
    def _says_something(self) -> Self:
        assert self.content is not None or self.tool_calls, "content or tool_calls required"
        return self


class ToolMessage(_Strict):
    role: Literal["tool"]
    tool_call_id: str
    content: str | list[TextPart]


ChatMessage = Annotated[
    SystemMessage | UserMessage | AssistantMessage | ToolMessage, Field(discriminator="role")
]


class FunctionDefinition(_Strict):
    name: Annotated[str, Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ChatTool(_Strict):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(_Strict):
    name: str


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: NamedFunction


class StreamOptions(_Strict):
    include_usage: bool


class ChatCompletionRequest(_Strict):
    model: str
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    stop: str | Annotated[list[str], Field(min_length=1, max_length=4)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    user: str | None = None
    tools: Annotated[list[ChatTool], Field(min_length=1)] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        assert self.stream_options is None or self.stream, "stream_options needs stream"
        if self.tool_choice is not None or self.parallel_tool_calls is not None:
            assert self.tools, "tool_choice and parallel_tool_calls need tools"
        if isinstance(self.tool_choice, NamedToolChoice):
            assert self.tools is not None
            assert self.tool_choice.function.name in {t.function.name for t in self.tools}
        # Every assistant tool call is answered by the tool messages right after it,
        # and a tool message answers a call of the assistant message before it.
        expected: set[str] = set()
        for message in self.messages:
            if isinstance(message, ToolMessage):
                assert message.tool_call_id in expected, message.tool_call_id
                expected.discard(message.tool_call_id)
                continue
            assert not expected, f"tool calls left unanswered: {expected}"
            if isinstance(message, AssistantMessage) and message.tool_calls:
                expected = {call.id for call in message.tool_calls}
                assert len(expected) == len(message.tool_calls), "duplicate tool call ids"
        return self


# --- helpers -------------------------------------------------------------------


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted(cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def run_stream(data: bytes, cuts: list[int] | None = None) -> list[bytes]:
    """Upstream bytes, split at ``cuts``, through SSEDecoder and the translator."""
    decoder = SSEDecoder()
    translator = ChatStreamToMessages(model=MODEL, message_id=MSG_ID)
    out: list[bytes] = []
    for piece in split_at(data, cuts or []):
        for block in decoder.feed(piece):
            out += translator.feed(block)
    for block in decoder.close():
        out += translator.feed(block)
    out += translator.close()
    return out


def parse_events(blocks: list[bytes]) -> list[dict[str, Any]]:
    """Check each block's form (event line, compact JSON with the same type) and parse it."""
    events: list[dict[str, Any]] = []
    for block in blocks:
        assert block.endswith(b"\n\n") and block.count(b"\n") == 3, block
        head, data, _, _ = block.split(b"\n")
        assert head.startswith(b"event: ") and data.startswith(b"data: "), block
        payload = json.loads(data[6:])
        assert payload["type"] == head[7:].decode()
        # The core's JSON: compact, non-ASCII kept as UTF-8 (core._json.dumps).
        assert data[6:] == json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
        if payload["type"] == "error":
            assert set(payload) == {"type", "error"}
            assert set(payload["error"]) == {"type", "message"}
        elif payload["type"] != "ping":
            RAW_EVENT.validate_python(payload)
        events.append(payload)
    return events


def check_well_formed(events: list[dict[str, Any]]) -> None:
    """message_start first; blocks opened and closed in order; message_stop or error last."""
    assert events and events[0]["type"] in ("message_start", "error")
    types = [e["type"] for e in events]
    assert types.count("message_start") <= 1 and types.count("error") <= 1
    if "error" in types:
        assert types[-1] == "error"
        assert "message_stop" not in types and "message_delta" not in types
    else:
        assert types[0] == "message_start" and types[1] == "ping"
        assert types[-2:] == ["message_delta", "message_stop"]
        assert types.count("message_delta") == 1 and types.count("message_stop") == 1
    open_block: dict[str, Any] | None = None
    next_index = 0
    for event in events[1:]:
        kind = event["type"]
        if kind == "content_block_start":
            assert open_block is None, "a block started while another is open"
            assert event["index"] == next_index
            open_block = event
            next_index += 1
        elif kind == "content_block_delta":
            assert open_block is not None and event["index"] == open_block["index"]
            wanted = {"text": "text_delta", "tool_use": "input_json_delta"}
            assert event["delta"]["type"] == wanted[open_block["content_block"]["type"]]
        elif kind == "content_block_stop":
            assert open_block is not None and event["index"] == open_block["index"]
            open_block = None
        elif kind == "message_delta":
            assert open_block is None
        else:
            assert kind in ("ping", "message_stop", "error"), kind


def accumulate(events: list[dict[str, Any]]) -> dict[str, Any]:
    """The message a client accumulates from the events (as the SDKs do)."""
    message: dict[str, Any] = json.loads(json.dumps(events[0]["message"]))
    content: list[dict[str, Any]] = message["content"]
    partial: dict[int, str] = {}
    for event in events[1:]:
        kind = event["type"]
        if kind == "content_block_start":
            content.append(dict(event["content_block"]))
        elif kind == "content_block_delta":
            delta = event["delta"]
            if delta["type"] == "text_delta":
                content[event["index"]]["text"] += delta["text"]
            else:
                partial[event["index"]] = partial.get(event["index"], "") + delta["partial_json"]
        elif kind == "content_block_stop" and partial.get(event["index"]):
            content[event["index"]]["input"] = json.loads(partial[event["index"]])
        elif kind == "message_delta":
            message.update(event["delta"])
            message["usage"].update(event["usage"])
    return message


def translate(body: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    chat = messages_request_to_chat(body, model=UPSTREAM, **kwargs)
    ChatCompletionRequest.model_validate(chat)
    return chat


def refused(body: dict[str, Any]) -> RemoteProtocolError:
    with pytest.raises(RemoteProtocolError) as info:
        messages_request_to_chat(body, model=UPSTREAM)
    exc = info.value
    assert exc.error_status_hint == 400 and exc.error_type == "invalid_request_error"
    return exc


def sse(*chunks: dict[str, Any] | str) -> bytes:
    return b"".join(
        b"data: " + (c if isinstance(c, str) else json.dumps(c)).encode() + b"\n\n" for c in chunks
    )


def chunk(delta: dict[str, Any], finish: Any = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": UPSTREAM,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }


def usage_chunk(prompt: int, completion: int, cached: int | None = None) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if cached is not None:
        usage["prompt_tokens_details"] = {"cached_tokens": cached}
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": [], "usage": usage}


# --- requests: documented examples ----------------------------------------------

# The get_weather tool of Anthropic's tool-use guide.
GET_WEATHER = {
    "name": "get_weather",
    "description": "Get the current weather in a given location",
    "input_schema": {
        "type": "object",
        "properties": {
            "location": {
                "type": "string",
                "description": "The city and state, e.g. San Francisco, CA",
            },
            "unit": {
                "type": "string",
                "enum": ["celsius", "fahrenheit"],
                "description": "The unit of temperature, either 'celsius' or 'fahrenheit'",
            },
        },
        "required": ["location"],
    },
}
TOOL_USE_ID = "toolu_01A09q90qw90lq917835lq9"


def test_basic_request() -> None:
    body = {
        "model": "claude-opus-4-6",
        "max_tokens": 1024,
        "messages": [{"role": "user", "content": "Hello, world"}],
    }
    assert translate(body) == {
        "model": UPSTREAM,
        "messages": [{"role": "user", "content": "Hello, world"}],
        "max_tokens": 1024,
    }


def test_multi_turn_with_system_string() -> None:
    body = {
        "model": "claude-opus-4-6",
        "max_tokens": 1024,
        "system": "You are a helpful assistant.",
        "messages": [
            {"role": "user", "content": "Hello there."},
            {"role": "assistant", "content": "Hi, I'm Claude. How can I help you?"},
            {"role": "user", "content": "Can you explain LLMs in plain English?"},
        ],
    }
    assert translate(body)["messages"] == [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Hello there."},
        {"role": "assistant", "content": "Hi, I'm Claude. How can I help you?"},
        {"role": "user", "content": "Can you explain LLMs in plain English?"},
    ]


def test_system_blocks_with_cache_control() -> None:
    # Prompt caching guide: system text blocks, the last one cached; and the
    # top-level cache_control of automatic caching. The hints are accepted and
    # not sent (OpenAI caches prefixes by itself); the text is all carried.
    body = {
        "model": "claude-opus-4-6",
        "max_tokens": 1024,
        "cache_control": {"type": "ephemeral"},
        "system": [
            {
                "type": "text",
                "text": "You are an AI assistant tasked with analyzing literary works. Your goal"
                " is to provide insightful commentary on themes, characters, and writing"
                " style.\n",
            },
            {
                "type": "text",
                "text": "<the entire contents of 'Pride and Prejudice'>",
                "cache_control": {"type": "ephemeral", "ttl": "1h"},
            },
        ],
        "messages": [
            {"role": "user", "content": "Analyze the major themes in 'Pride and Prejudice'."}
        ],
    }
    chat = translate(body)
    assert chat["messages"][0] == {
        "role": "system",
        "content": [
            {"type": "text", "text": body["system"][0]["text"]},  # type: ignore[index]
            {"type": "text", "text": "<the entire contents of 'Pride and Prejudice'>"},
        ],
    }
    assert "cache_control" not in json.dumps(chat)


def test_images_base64_and_url() -> None:
    # Vision guide: a base64 image and a URL image with a question.
    data = base64.b64encode(b"\xff\xd8\xff\xe0 a jpeg").decode()
    body = {
        "model": "claude-opus-4-6",
        "max_tokens": 1024,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Image 1:"},
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/jpeg", "data": data},
                    },
                    {"type": "text", "text": "Image 2:"},
                    {
                        "type": "image",
                        "source": {
                            "type": "url",
                            "url": "https://upload.wikimedia.org/wikipedia/commons/a/a7/"
                            "Camponotus_flavomarginatus_ant.jpg",
                        },
                    },
                    {"type": "text", "text": "How are these images different?"},
                ],
            }
        ],
    }
    assert translate(body)["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Image 1:"},
                {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{data}"}},
                {"type": "text", "text": "Image 2:"},
                {
                    "type": "image_url",
                    "image_url": {
                        "url": "https://upload.wikimedia.org/wikipedia/commons/a/a7/"
                        "Camponotus_flavomarginatus_ant.jpg"
                    },
                },
                {"type": "text", "text": "How are these images different?"},
            ],
        }
    ]


def test_tools_tool_choice_and_tool_result_round_trip() -> None:
    # Tool-use guide: the tool, Claude's tool_use turn, and the tool_result.
    body = {
        "model": "claude-opus-4-6",
        "max_tokens": 1024,
        "tools": [GET_WEATHER],
        "tool_choice": {"type": "tool", "name": "get_weather"},
        "messages": [
            {"role": "user", "content": "What's the weather like in San Francisco?"},
            {
                "role": "assistant",
                "content": [
                    {
                        "type": "text",
                        "text": "<thinking>I need to use get_weather, and the user wants SF,"
                        " which is likely San Francisco, CA.</thinking>",
                    },
                    {
                        "type": "tool_use",
                        "id": TOOL_USE_ID,
                        "name": "get_weather",
                        "input": {"location": "San Francisco, CA", "unit": "celsius"},
                    },
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": TOOL_USE_ID, "content": "15 degrees"}
                ],
            },
        ],
    }
    assert translate(body) == {
        "model": UPSTREAM,
        "messages": [
            {"role": "user", "content": "What's the weather like in San Francisco?"},
            {
                "role": "assistant",
                "content": "<thinking>I need to use get_weather, and the user wants SF,"
                " which is likely San Francisco, CA.</thinking>",
                "tool_calls": [
                    {
                        "id": TOOL_USE_ID,
                        "type": "function",
                        "function": {
                            "name": "get_weather",
                            "arguments": '{"location":"San Francisco, CA","unit":"celsius"}',
                        },
                    }
                ],
            },
            {"role": "tool", "tool_call_id": TOOL_USE_ID, "content": "15 degrees"},
        ],
        "max_tokens": 1024,
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "description": "Get the current weather in a given location",
                    "parameters": GET_WEATHER["input_schema"],
                },
            }
        ],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
    }


def test_tool_results_come_first_and_errors_are_stated() -> None:
    body = {
        "max_tokens": 100,
        "tools": [GET_WEATHER, {**GET_WEATHER, "name": "get_time", "strict": True}],
        "messages": [
            {"role": "user", "content": "Weather and time in Paris?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}},
                    {"type": "tool_use", "id": "toolu_2", "name": "get_time", "input": {"tz": "é"}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Here you are."},
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_1",
                        "content": "ConnectionError: the weather service API is not available"
                        " (HTTP 500)",
                        "is_error": True,
                    },
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_2",
                        "content": [
                            {"type": "text", "text": "12:00"},
                            {"type": "text", "text": "CET"},
                        ],
                        "is_error": False,
                    },
                ],
            },
        ],
    }
    chat = translate(body)
    assert chat["messages"][1] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "toolu_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": "{}"},
            },
            {
                "id": "toolu_2",
                "type": "function",
                "function": {"name": "get_time", "arguments": '{"tz":"é"}'},
            },
        ],
    }
    assert chat["messages"][2:] == [
        {
            "role": "tool",
            "tool_call_id": "toolu_1",
            "content": "Error: ConnectionError: the weather service API is not available"
            " (HTTP 500)",
        },
        {"role": "tool", "tool_call_id": "toolu_2", "content": "12:00\nCET"},
        {"role": "user", "content": "Here you are."},
    ]
    assert chat["tools"][1]["function"]["strict"] is True


def test_empty_and_error_tool_results() -> None:
    body = {
        "max_tokens": 5,
        "messages": [
            {"role": "user", "content": "go"},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "a", "name": "f", "input": {}}],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "a", "is_error": True}],
            },
        ],
    }
    assert translate(body)["messages"][2:] == [
        {"role": "tool", "tool_call_id": "a", "content": "Error"}
    ]
    body["messages"][2]["content"][0]["content"] = []  # type: ignore[index]
    body["messages"][2]["content"][0]["is_error"] = None  # type: ignore[index]
    assert translate(body)["messages"][2]["content"] == ""


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ({"type": "auto"}, {"tool_choice": "auto"}),
        ({"type": "any"}, {"tool_choice": "required"}),
        ({"type": "none"}, {"tool_choice": "none"}),
        (
            {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
            {
                "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
                "parallel_tool_calls": False,
            },
        ),
        (
            {"type": "auto", "disable_parallel_tool_use": True},
            {"tool_choice": "auto", "parallel_tool_calls": False},
        ),
        ({"type": "any", "disable_parallel_tool_use": False}, {"tool_choice": "required"}),
    ],
)
def test_tool_choice(choice: dict[str, Any], expected: dict[str, Any]) -> None:
    body = {
        "max_tokens": 10,
        "tools": [GET_WEATHER],
        "tool_choice": choice,
        "messages": [{"role": "user", "content": "hi"}],
    }
    chat = translate(body)
    assert {k: chat[k] for k in ("tool_choice", "parallel_tool_calls") if k in chat} == expected


def test_sampling_stop_user_and_stream() -> None:
    body = {
        "model": "claude-opus-4-6",
        "max_tokens": 1024,
        "stop_sequences": ["\n\nHuman:", "END"],
        "temperature": 0.7,
        "top_p": 1,
        "metadata": {"user_id": "13803d75-b4b5-4c3e-b2a2-6f21399b021b"},
        "stream": True,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hello"}]}],
    }
    assert translate(body) == {
        "model": UPSTREAM,
        "messages": [{"role": "user", "content": "Hello"}],
        "max_tokens": 1024,
        "stop": ["\n\nHuman:", "END"],
        "temperature": 0.7,
        "top_p": 1,
        "user": "13803d75-b4b5-4c3e-b2a2-6f21399b021b",
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def test_defaults_and_nulls_are_absent() -> None:
    body = {
        "max_tokens": 7,
        "messages": [{"role": "user", "content": "x"}],
        "stream": False,
        "stop_sequences": [],
        "tools": [],
        "system": "",
        "metadata": {"user_id": None},
        "thinking": {"type": "disabled"},
        "top_k": None,
        "temperature": None,
        "cache_control": None,
    }
    assert translate(body) == {
        "model": UPSTREAM,
        "messages": [{"role": "user", "content": "x"}],
        "max_tokens": 7,
    }
    body["system"] = []
    assert translate(body)["messages"] == [{"role": "user", "content": "x"}]


def test_max_completion_tokens_option() -> None:
    body = {"max_tokens": 64, "messages": [{"role": "user", "content": "x"}]}
    chat = translate(body, max_tokens_param="max_completion_tokens")
    assert chat["max_completion_tokens"] == 64 and "max_tokens" not in chat


def test_empty_final_assistant_message_is_skipped() -> None:
    body = {
        "max_tokens": 7,
        "messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": []}],
    }
    assert translate(body)["messages"] == [{"role": "user", "content": "x"}]


def test_assistant_with_several_text_blocks() -> None:
    body = {
        "max_tokens": 7,
        "messages": [
            {"role": "user", "content": "x"},
            {
                "role": "assistant",
                "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
            },
            {"role": "user", "content": "y"},
        ],
    }
    assert translate(body)["messages"][1] == {
        "role": "assistant",
        "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
    }


# --- requests: what cannot be carried over --------------------------------------

USER = [{"role": "user", "content": "hi"}]

UNSUPPORTED: list[tuple[dict[str, Any], str]] = [
    ({"top_k": 5}, "top_k"),
    ({"thinking": {"type": "enabled", "budget_tokens": 2048}}, "thinking"),
    ({"thinking": {"type": "adaptive"}}, "thinking"),
    ({"service_tier": "auto"}, "service_tier"),
    ({"container": "container_011"}, "container"),
    ({"mcp_servers": [{"type": "url", "url": "https://x", "name": "x"}]}, "mcp_servers"),
    ({"context_management": {"edits": []}}, "context_management"),
    ({"output_config": {"effort": "low"}}, "output_config"),
    ({"inference_geo": "us"}, "inference_geo"),
    ({"speed": "fast"}, "speed"),
    ({"something_new": 1}, "something_new"),
    ({"cache_control": {"type": "persistent"}}, "cache_control"),
    ({"cache_control": {"type": "ephemeral", "scope": "org"}}, "cache_control"),
    ({"metadata": {"user_id": "u", "tier": "gold"}}, "metadata"),
    ({"tool_choice": {"type": "auto", "extra": 1}}, "tool_choice"),
    ({"tool_choice": {"type": "none", "disable_parallel_tool_use": True}}, "tool_choice"),
    ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools"),
    ({"tools": [{**GET_WEATHER, "input_examples": [{}]}]}, "tools"),
    ({"tools": [{**GET_WEATHER, "cache_control": {"type": "other"}}]}, "tools"),
    ({"system": [{"type": "image", "source": {}}]}, "system"),
    ({"system": [{"type": "text", "text": "s", "citations": [{"x": 1}]}]}, "system"),
]


def _with_block(block: dict[str, Any], role: str = "user") -> dict[str, Any]:
    if role == "user":
        return {"messages": [{"role": "user", "content": [block]}]}
    return {
        "messages": [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": [block]},
            {"role": "user", "content": "q"},
        ]
    }


DOCUMENT = {
    "type": "document",
    "source": {"type": "text", "media_type": "text/plain", "data": "The grass is green."},
    "citations": {"enabled": True},
}
UNSUPPORTED_BLOCKS: list[dict[str, Any]] = [
    _with_block(DOCUMENT),
    _with_block({"type": "search_result", "source": "s", "title": "t", "content": []}),
    _with_block({"type": "image", "source": {"type": "file", "file_id": "file_1"}}),
    _with_block(
        {
            "type": "image",
            "source": {"type": "base64", "data": "", "media_type": "image/png", "x": 1},
        }
    ),
    _with_block({"type": "image", "source": {"type": "url", "url": "https://x", "x": 1}}),
    _with_block({"type": "image", "source": {"type": "url", "url": "https://x"}}, role="assistant"),
    _with_block({"type": "text", "text": "t", "cache_control": {"type": "never"}}),
    _with_block({"type": "text", "text": "t", "citations": [{"type": "char_location"}]}),
    _with_block({"type": "text", "text": "t", "bogus": 1}),
    _with_block({"type": "thinking", "thinking": "hmm", "signature": "sig"}, role="assistant"),
    _with_block({"type": "redacted_thinking", "data": "xyz"}, role="assistant"),
    _with_block(
        {"type": "server_tool_use", "id": "srv", "name": "web_search", "input": {}}, "assistant"
    ),
    _with_block(
        {"type": "tool_use", "id": "i", "name": "n", "input": {}, "caller": {}}, "assistant"
    ),
    _with_block({"type": "tool_result", "tool_use_id": "i", "content": [DOCUMENT]}),
    _with_block(
        {
            "type": "tool_result",
            "tool_use_id": "i",
            "content": [{"type": "image", "source": {"type": "url", "url": "https://x"}}],
        }
    ),
    _with_block({"type": "tool_result", "tool_use_id": "i", "content": "", "extra": True}),
    _with_block({"type": "mystery"}),
    {"messages": [{"role": "user", "content": "x", "name": "bob"}]},
    {
        "messages": [
            {"role": "user", "content": "x"},
            {"role": "assistant", "content": "The answer is ("},
        ]
    },
    {
        "messages": [
            {"role": "user", "content": "x"},
            {"role": "assistant", "content": [{"type": "text", "text": "{"}]},
        ]
    },
]


@pytest.mark.parametrize(("extra", "param"), UNSUPPORTED)
def test_unsupported_parameters_are_refused(extra: dict[str, Any], param: str) -> None:
    exc = refused({"max_tokens": 10, "messages": USER, **extra})
    assert exc.param == param and exc.code == "unsupported_parameter"
    assert str(exc).startswith(f"{param}: ")


@pytest.mark.parametrize("extra", UNSUPPORTED_BLOCKS)
def test_unsupported_content_is_refused(extra: dict[str, Any]) -> None:
    exc = refused({"max_tokens": 10, **extra})
    assert exc.param == "messages" and exc.code == "unsupported_parameter"


MALFORMED: list[tuple[dict[str, Any], str]] = [
    ({"max_tokens": None}, "max_tokens"),
    ({"max_tokens": True}, "max_tokens"),
    ({"max_tokens": "5"}, "max_tokens"),
    ({"messages": None}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": ["hi"]}, "messages"),
    ({"messages": [{"role": "system", "content": "x"}]}, "messages"),
    ({"messages": [{"role": "user", "content": []}]}, "messages"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}, "messages"),
    ({"messages": [{"role": "user", "content": [{"type": "image", "source": "x"}]}]}, "messages"),
    (
        {
            "messages": [
                {"role": "user", "content": "a"},
                {"role": "assistant", "content": ""},
                {"role": "user", "content": "b"},
            ]
        },
        "messages",
    ),
    (
        {
            "messages": [
                {"role": "user", "content": "a"},
                {
                    "role": "assistant",
                    "content": [{"type": "tool_use", "id": "i", "name": "n", "input": []}],
                },
                {"role": "user", "content": "b"},
            ]
        },
        "messages",
    ),
    (
        {
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "tool_result", "tool_use_id": "i", "is_error": "yes"}],
                }
            ]
        },
        "messages",
    ),
    (
        {
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "tool_result", "tool_use_id": "i", "content": 3}],
                }
            ]
        },
        "messages",
    ),
    ({"system": 5}, "system"),
    ({"system": ["x"]}, "system"),
    ({"temperature": "hot"}, "temperature"),
    ({"top_p": False}, "top_p"),
    ({"stop_sequences": "END"}, "stop_sequences"),
    ({"stop_sequences": [1]}, "stop_sequences"),
    ({"metadata": "u"}, "metadata"),
    ({"metadata": {"user_id": 5}}, "metadata"),
    ({"stream": "yes"}, "stream"),
    ({"tools": {}}, "tools"),
    ({"tools": [{"name": "f"}]}, "tools"),
    ({"tools": [{"name": "f", "input_schema": {}, "description": 1}]}, "tools"),
    ({"tools": [{"name": "f", "input_schema": {}, "strict": "yes"}]}, "tools"),
    ({"tool_choice": "auto"}, "tool_choice"),
    ({"tool_choice": {"type": "sometimes"}}, "tool_choice"),
    ({"tool_choice": {"type": "tool"}}, "tool_choice"),
    ({"tool_choice": {"type": "any", "disable_parallel_tool_use": 1}}, "tool_choice"),
]


@pytest.mark.parametrize(("change", "param"), MALFORMED)
def test_malformed_requests_are_refused(change: dict[str, Any], param: str) -> None:
    exc = refused({"max_tokens": 10, "messages": USER, **change})
    assert exc.param == param and exc.code == "invalid_request"


# --- responses --------------------------------------------------------------------

# OpenAI API reference, "Create chat completion" > Default, response.
DOC_RESPONSE = {
    "id": "chatcmpl-123",
    "object": "chat.completion",
    "created": 1677652288,
    "model": "gpt-4o-mini",
    "system_fingerprint": "fp_44709d6fcb",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "\n\nHello there, how may I assist you today?",
            },
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {
        "prompt_tokens": 9,
        "completion_tokens": 12,
        "total_tokens": 21,
        "completion_tokens_details": {"reasoning_tokens": 0},
    },
}
# OpenAI API reference, "Create chat completion" > Functions, response.
DOC_TOOL_RESPONSE = {
    "id": "chatcmpl-abc123",
    "object": "chat.completion",
    "created": 1699896916,
    "model": "gpt-4o-mini",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_abc123",
                        "type": "function",
                        "function": {
                            "name": "get_current_weather",
                            "arguments": '{\n"location": "Boston, MA"\n}',
                        },
                    }
                ],
            },
            "logprobs": None,
            "finish_reason": "tool_calls",
        }
    ],
    "usage": {
        "prompt_tokens": 82,
        "completion_tokens": 17,
        "total_tokens": 99,
        "completion_tokens_details": {"reasoning_tokens": 0},
    },
}


def to_message(body: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    message = chat_response_to_messages(body, model=MODEL, **kwargs)
    Message.model_validate(message)
    return message


def test_text_response() -> None:
    assert to_message(DOC_RESPONSE) == {
        "id": "msg_chatcmpl-123",
        "type": "message",
        "role": "assistant",
        "model": MODEL,
        "content": [{"type": "text", "text": "\n\nHello there, how may I assist you today?"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 9, "output_tokens": 12},
    }


def test_tool_call_response() -> None:
    assert to_message(DOC_TOOL_RESPONSE, message_id="msg_01") == {
        "id": "msg_01",
        "type": "message",
        "role": "assistant",
        "model": MODEL,
        "content": [
            {
                "type": "tool_use",
                "id": "call_abc123",
                "name": "get_current_weather",
                "input": {"location": "Boston, MA"},
            }
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {"input_tokens": 82, "output_tokens": 17},
    }


def response(message: dict[str, Any], finish: Any = "stop", **extra: Any) -> dict[str, Any]:
    return {
        "id": "c",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        **extra,
    }


@pytest.mark.parametrize(
    ("finish", "stop_reason"),
    [
        ("stop", "end_turn"),
        ("length", "max_tokens"),
        ("tool_calls", "tool_use"),
        ("function_call", "tool_use"),
        ("content_filter", "refusal"),
        (None, "end_turn"),
        ("something_else", "end_turn"),
    ],
)
def test_finish_reasons(finish: str | None, stop_reason: str) -> None:
    message = to_message(response({"role": "assistant", "content": "x"}, finish))
    assert message["stop_reason"] == stop_reason


def test_refusal_and_cached_usage() -> None:
    body = response(
        {"role": "assistant", "content": None, "refusal": "I can't help with that."},
        usage={
            "prompt_tokens": 2006,
            "completion_tokens": 300,
            "total_tokens": 2306,
            "prompt_tokens_details": {"cached_tokens": 1920},
        },
    )
    message = to_message(body)
    assert message["content"] == [{"type": "text", "text": "I can't help with that."}]
    assert message["stop_reason"] == "refusal"
    assert message["usage"] == {
        "input_tokens": 86,
        "cache_read_input_tokens": 1920,
        "output_tokens": 300,
    }
    assert to_message({"choices": [{"message": {"content": ""}}]})["content"] == []
    assert to_message({"choices": [{"message": {}}]})["id"] == "msg_unknown"


def test_empty_arguments_mean_no_input() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "now", "arguments": " "}}
    message = to_message(response({"role": "assistant", "tool_calls": [call]}, "tool_calls"))
    assert message["content"] == [{"type": "tool_use", "id": "c1", "name": "now", "input": {}}]


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"choices": []},
        {"choices": ["x"]},
        {"choices": [{"message": None}]},
        response({"content": 5}),
        response({"content": None, "refusal": 1}),
        response({"tool_calls": {}}),
        response({"tool_calls": ["x"]}),
        response({"tool_calls": [{"type": "custom", "custom": {}}]}),
        response({"tool_calls": [{"id": "c", "function": None}]}),
        response({"tool_calls": [{"id": 1, "function": {"name": "f", "arguments": "{}"}}]}),
        response({"tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{oops"}}]}),
        response({"tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "[1]"}}]}),
        response({"tool_calls": [{"id": "c", "function": {"name": "f", "arguments": {}}}]}),
        response({"content": "x"}, finish=3),
        response({"content": "x"}, usage=[]),
        response({"content": "x"}, usage={"prompt_tokens": -1}),
        response({"content": "x"}, usage={"prompt_tokens": True}),
        response({"content": "x"}, usage={"prompt_tokens_details": 3}),
    ],
)
def test_untranslatable_responses_are_502(body: dict[str, Any]) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        chat_response_to_messages(body, model=MODEL)
    assert info.value.error_status_hint == 502
    assert info.value.code == "upstream_protocol_error"


# --- errors -----------------------------------------------------------------------

STATUS_TYPES = [
    (400, "invalid_request_error"),
    (401, "authentication_error"),
    (402, "billing_error"),
    (403, "permission_error"),
    (404, "not_found_error"),
    (409, "invalid_request_error"),
    (413, "request_too_large"),
    (422, "invalid_request_error"),
    (429, "rate_limit_error"),
    (500, "api_error"),
    (502, "api_error"),
    (503, "overloaded_error"),
    (504, "timeout_error"),
    (529, "overloaded_error"),
]


@pytest.mark.parametrize(("status", "error_type"), STATUS_TYPES)
def test_anthropic_error_body(status: int, error_type: str) -> None:
    body = json.loads(
        anthropic_error_body("model 'x' not found", error_type=anthropic_type(status))
    )
    assert body == {
        "type": "error",
        "error": {"type": error_type, "message": "model 'x' not found"},
    }


def test_openai_errors_translated() -> None:
    # OpenAI's documented error body for a bad key (401), and a 429 rate limit.
    key = {
        "error": {
            "message": "Incorrect API key provided: sk-abc. You can find your API key at"
            " https://platform.openai.com/account/api-keys.",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_api_key",
        }
    }
    assert json.loads(openai_error_to_anthropic(401, json.dumps(key).encode())) == {
        "type": "error",
        "error": {"type": "authentication_error", "message": key["error"]["message"]},
    }
    limit = {
        "error": {
            "message": "Rate limit reached for gpt-4o-mini in organization org-x on requests"
            " per min (RPM): Limit 3, Used 3, Requested 1.",
            "type": "requests",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }
    translated = json.loads(openai_error_to_anthropic(429, json.dumps(limit).encode()))
    assert translated["error"] == {"type": "rate_limit_error", "message": limit["error"]["message"]}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"error": "model not loaded"}', "model not loaded"),
        (b"<html><body>502 Bad Gateway</body></html>", "upstream error (HTTP 502)"),
        (b"", "upstream error (HTTP 502)"),
        (b"\xff\xfe", "upstream error (HTTP 502)"),
        (b'{"error": {"message": ""}}', "upstream error (HTTP 502)"),
        (b'{"detail": "Not Found"}', "upstream error (HTTP 502)"),
        (b"[1, 2]", "upstream error (HTTP 502)"),
    ],
)
def test_odd_error_bodies(body: bytes, message: str) -> None:
    translated = json.loads(openai_error_to_anthropic(502, body))
    assert translated == {"type": "error", "error": {"type": "api_error", "message": message}}


# --- streams: documented examples ------------------------------------------------


def test_documented_text_stream() -> None:
    events = parse_events(run_stream((FIXTURES / "openai_text_stream.sse").read_bytes()))
    check_well_formed(events)
    assert events == [
        {
            "type": "message_start",
            "message": {
                "id": MSG_ID,
                "type": "message",
                "role": "assistant",
                "model": MODEL,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": 0, "output_tokens": 0},
            },
        },
        {"type": "ping"},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "text_delta", "text": "Hello"},
        },
        {"type": "content_block_stop", "index": 0},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": 0},
        },
        {"type": "message_stop"},
    ]


def test_recorded_tool_call_stream() -> None:
    data = (FIXTURES / "openai_tool_stream.sse").read_bytes()
    blocks = run_stream(data)
    events = parse_events(blocks)
    check_well_formed(events)
    assert [e["type"] for e in events] == [
        "message_start",
        "ping",
        "content_block_start",
        *["content_block_delta"] * 11,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert events[2] == {
        "type": "content_block_start",
        "index": 0,
        "content_block": {
            "type": "tool_use",
            "id": "call_1EYWDzueHEp8OsB8jJSEp7WB",
            "name": "multiply",
            "input": {},
        },
    }
    assert events[3]["delta"] == {"type": "input_json_delta", "partial_json": '{"'}
    assert events[-2] == {
        "type": "message_delta",
        "delta": {"stop_reason": "tool_use", "stop_sequence": None},
        "usage": {"input_tokens": 54, "cache_read_input_tokens": 0, "output_tokens": 20},
    }
    assert accumulate(events)["content"] == [
        {
            "type": "tool_use",
            "id": "call_1EYWDzueHEp8OsB8jJSEp7WB",
            "name": "multiply",
            "input": {"a": 1231, "b": 2331},
        }
    ]
    # Byte by byte, the client sees exactly the same bytes.
    assert run_stream(data, list(range(1, len(data)))) == blocks
    Message.model_validate(accumulate(events))


# --- streams: behaviour -------------------------------------------------------------


def stream_events(data: bytes) -> list[dict[str, Any]]:
    events = parse_events(run_stream(data))
    check_well_formed(events)
    return events


def test_text_then_tools_then_text_get_increasing_indices() -> None:
    def call(index: int, **fields: Any) -> dict[str, Any]:
        return chunk({"tool_calls": [{"index": index, **fields}]})

    data = sse(
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Let me look."}),
        call(0, id="call_a", type="function", function={"name": "a", "arguments": ""}),
        call(0, function={"arguments": '{"x": 1}'}),
        call(1, id="call_b", type="function", function={"name": "b", "arguments": "{}"}),
        call(2, id=None, type=None, function={"name": "c", "arguments": None}),
        chunk({"content": "Done."}, "tool_calls"),
        usage_chunk(100, 20, cached=64),
        "[DONE]",
    )
    events = stream_events(data)
    starts = [e for e in events if e["type"] == "content_block_start"]
    assert [(e["index"], e["content_block"]["type"]) for e in starts] == [
        (0, "text"),
        (1, "tool_use"),
        (2, "tool_use"),
        (3, "tool_use"),
        (4, "text"),
    ]
    assert starts[3]["content_block"]["id"] == f"toolu_{MSG_ID}_2"  # upstream gave no id
    message = accumulate(events)
    assert [b.get("input") for b in message["content"]] == [None, {"x": 1}, {}, {}, None]
    assert message["usage"] == {
        "input_tokens": 36,
        "cache_read_input_tokens": 64,
        "output_tokens": 20,
    }


def test_usage_in_the_first_chunk_reaches_message_start() -> None:
    first = chunk({"role": "assistant", "content": "Hi"})
    first["usage"] = {"prompt_tokens": 12, "completion_tokens": 1, "total_tokens": 13}
    events = stream_events(sse(first, chunk({}, "stop"), "[DONE]"))
    assert events[0]["message"]["usage"] == {"input_tokens": 12, "output_tokens": 0}


def test_refusal_delta() -> None:
    no_delta = {"choices": [{"index": 0, "finish_reason": "stop"}]}
    data = sse(chunk({"content": "", "refusal": ""}), chunk({"refusal": "I can't."}), no_delta)
    events = stream_events(data + sse("[DONE]"))
    message = accumulate(events)
    assert message["content"] == [{"type": "text", "text": "I can't."}]
    assert message["stop_reason"] == "refusal"


def test_done_without_chunks_is_an_empty_message() -> None:
    events = stream_events(sse("[DONE]"))
    assert [e["type"] for e in events] == ["message_start", "ping", "message_delta", "message_stop"]


def test_comments_keepalives_and_other_fields_are_ignored() -> None:
    data = b": keep-alive\n\n" + b"retry: 10\n\n" + b"data: \n\n" + b"data:   \n\n"
    data += b"data:  " + json.dumps(chunk({"role": "assistant"})).encode() + b" \n\n"
    data += b"event: chunk\ndata: " + json.dumps(chunk({"content": "a"}, "stop")).encode() + b"\n\n"
    data += b"data: [DONE]\n\n" + b"data: {}\n\n"  # after [DONE]: ignored
    events = stream_events(data)
    assert accumulate(events)["content"] == [{"type": "text", "text": "a"}]


def test_finish_without_done_completes_at_close() -> None:
    events = stream_events(sse(chunk({"content": "a"}, "length")))
    assert accumulate(events)["stop_reason"] == "max_tokens"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "upstream stream ended before the message was complete"),
        (sse(chunk({"content": "a"})), "upstream stream ended before the message was complete"),
        (
            sse(chunk({"content": "a"}), {"error": {"message": "The server had an error"}}),
            "The server had an error",
        ),
        (b'event: error\ndata: {"detail": "x"}\n\n', "upstream error"),
        (b'data: {"error": "overloaded"}\n\n', "overloaded"),
        (b"data: {not json\n\n", "upstream sent a malformed chunk: "),
        (b'data: {"choices": []} []\n\n', "trailing characters"),
        (b"data: \xff\n\n", "upstream sent a malformed chunk: "),
        (sse("[1]"), "upstream sent a malformed chunk: a chunk must be a JSON object"),
        (sse({"choices": {}}), "choices must be an array"),
        (sse({"choices": ["x"]}), "choices entries must be objects"),
        (sse({"choices": [{"index": 1, "delta": {}}]}), "choices entries must be objects"),
        (sse({"choices": [{"delta": "x"}]}), "delta must be an object"),
        (sse(chunk({"content": 5})), "delta.content must be a string"),
        (sse(chunk({"refusal": 5})), "delta.refusal must be a string"),
        (sse(chunk({"tool_calls": {}})), "delta.tool_calls must be an array"),
        (sse(chunk({"tool_calls": ["x"]})), "tool_calls entries must be objects"),
        (sse(chunk({"tool_calls": [{"function": {"name": "f"}}]})), "needs an integer index"),
        (sse(chunk({"tool_calls": [{"index": 0, "function": "f"}]})), "function must be an object"),
        (sse(chunk({"tool_calls": [{"index": 0}]})), "starts without a name"),
        (
            sse(chunk({"tool_calls": [{"index": 0, "function": {"name": "f", "arguments": 1}}]})),
            "arguments must be a string",
        ),
        (
            sse(
                chunk({"tool_calls": [{"index": 0, "function": {"name": "f"}}]}),
                chunk({"tool_calls": [{"index": 1, "function": {"name": "g"}}]}),
                chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}),
            ),
            "tool call 0 continued after another block began",
        ),
        (sse(chunk({}, finish=7)), "finish_reason must be a string"),
        (sse({"choices": [], "usage": {"prompt_tokens": "9"}}), "token counts must be"),
    ],
)
def test_stream_errors(data: bytes, message: str) -> None:
    events = stream_events(data)
    assert events[-1]["type"] == "error"
    assert events[-1]["error"]["type"] == "api_error"
    assert message in events[-1]["error"]["message"]


def test_after_an_error_the_stream_is_over() -> None:
    translator = ChatStreamToMessages(model=MODEL, message_id=MSG_ID)
    out = translator.feed(b'data: {"error": {"message": "boom"}}\n\n')
    assert [e["type"] for e in parse_events(out)] == ["error"]
    assert translator.feed(sse(chunk({"content": "late"}))) == []
    assert translator.close() == []


def test_misuse_after_close() -> None:
    translator = ChatStreamToMessages(model=MODEL, message_id=MSG_ID)
    translator.close()
    with pytest.raises(LocalProtocolError):
        translator.feed(sse("[DONE]"))
    with pytest.raises(LocalProtocolError):
        translator.close()


def test_usage_attribute() -> None:
    translator = ChatStreamToMessages(model=MODEL, message_id=MSG_ID)
    assert translator.usage is None
    translator.feed(sse(usage_chunk(10, 5)))
    assert translator.usage == {"input_tokens": 10, "output_tokens": 5}


# --- hypothesis: requests -----------------------------------------------------------

text = st.text(min_size=1, max_size=12)
names = st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_-]{0,15}", fullmatch=True)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=6),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)
tool_inputs = st.dictionaries(st.text(max_size=6), json_values, max_size=3)
cache_controls = st.sampled_from([None, {"type": "ephemeral"}, {"type": "ephemeral", "ttl": "1h"}])


def with_cache(draw: st.DrawFn, block: dict[str, Any]) -> dict[str, Any]:
    cache = draw(cache_controls)
    if cache is not None:
        block["cache_control"] = cache
    return block


@st.composite
def text_blocks(draw: st.DrawFn) -> dict[str, Any]:
    return with_cache(draw, {"type": "text", "text": draw(text)})


@st.composite
def image_blocks(draw: st.DrawFn) -> dict[str, Any]:
    if draw(st.booleans()):
        source = {
            "type": "base64",
            "media_type": draw(
                st.sampled_from(["image/jpeg", "image/png", "image/gif", "image/webp"])
            ),
            "data": base64.b64encode(draw(st.binary(min_size=1, max_size=12))).decode(),
        }
    else:
        source = {
            "type": "url",
            "url": "https://example.com/" + draw(st.from_regex(r"[a-z]{1,8}\.png", fullmatch=True)),
        }
    return with_cache(draw, {"type": "image", "source": source})


@st.composite
def tool_results(draw: st.DrawFn, tool_use_id: str) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": tool_use_id}
    content = draw(st.none() | text | st.lists(text_blocks(), max_size=2))
    if content is not None:
        block["content"] = content
    is_error = draw(st.sampled_from([None, True, False]))
    if is_error is not None:
        block["is_error"] = is_error
    return with_cache(draw, block)


@st.composite
def user_messages(draw: st.DrawFn, pending: list[str]) -> dict[str, Any]:
    results = [draw(tool_results(tool_use_id)) for tool_use_id in pending]
    others = draw(
        st.lists(text_blocks() | image_blocks(), min_size=0 if results else 1, max_size=3)
    )
    if not results and len(others) == 1 and others[0]["type"] == "text" and draw(st.booleans()):
        return {"role": "user", "content": others[0]["text"]}
    return {"role": "user", "content": results + others}


@st.composite
def tool_definitions(draw: st.DrawFn) -> dict[str, Any]:
    tool: dict[str, Any] = {
        "name": draw(names),
        "input_schema": {
            "type": "object",
            "properties": draw(st.dictionaries(names, st.just({"type": "string"}), max_size=2)),
        },
    }
    if draw(st.booleans()):
        tool["description"] = draw(text)
    if draw(st.booleans()):
        tool["type"] = "custom"
    if draw(st.booleans()):
        tool["strict"] = draw(st.booleans())
    return with_cache(draw, tool)


@st.composite
def anthropic_requests(draw: st.DrawFn) -> dict[str, Any]:
    tools = draw(st.lists(tool_definitions(), max_size=3, unique_by=lambda t: t["name"]))
    tool_names = [t["name"] for t in tools]
    messages: list[dict[str, Any]] = []
    pending: list[str] = []
    serial = itertools.count()
    for _ in range(draw(st.integers(0, 3))):
        messages.append(draw(user_messages(pending)))
        if draw(st.booleans()):
            messages.append({"role": "assistant", "content": draw(text)})
            pending = []
            continue
        calls = [
            with_cache(
                draw,
                {
                    "type": "tool_use",
                    "id": f"toolu_{next(serial)}",
                    "name": draw(st.sampled_from(tool_names)),
                    "input": draw(tool_inputs),
                },
            )
            for _ in range(draw(st.integers(0, 2) if tool_names else st.just(0)))
        ]
        said = draw(st.lists(text_blocks(), min_size=0 if calls else 1, max_size=2))
        messages.append({"role": "assistant", "content": said + calls})
        pending = [call["id"] for call in calls]
    messages.append(draw(user_messages(pending)))
    body: dict[str, Any] = {
        "model": "claude-sonnet-4-5",
        "max_tokens": draw(st.integers(1, 64_000)),
        "messages": messages,
    }
    optional = {
        "system": text | st.lists(text_blocks(), min_size=1, max_size=3),
        "stop_sequences": st.lists(text, max_size=4),
        "temperature": st.floats(0, 1),
        "top_p": st.floats(0, 1),
        "metadata": st.fixed_dictionaries({"user_id": st.none() | text}),
        "stream": st.booleans(),
        "cache_control": st.just({"type": "ephemeral"}),
        "thinking": st.just({"type": "disabled"}),
        "top_k": st.none(),
    }
    for key, strategy in optional.items():
        if draw(st.booleans()):
            body[key] = draw(strategy)
    empty_tools = draw(st.booleans())
    if tools or empty_tools:
        body["tools"] = tools
    with_choice = draw(st.booleans())
    if tools and with_choice:
        choice: dict[str, Any] = draw(
            st.sampled_from([{"type": "auto"}, {"type": "any"}, {"type": "none"}])
            | st.builds(lambda n: {"type": "tool", "name": n}, st.sampled_from(tool_names))
        )
        if choice["type"] != "none" and draw(st.booleans()):
            choice["disable_parallel_tool_use"] = draw(st.booleans())
        body["tool_choice"] = choice
    return body


@given(anthropic_requests())
@settings(max_examples=300)
def test_valid_requests_translate_to_valid_chat_requests(body: dict[str, Any]) -> None:
    chat = translate(body)
    assert chat["model"] == UPSTREAM and chat["max_tokens"] == body["max_tokens"]
    roles = [m["role"] for m in chat["messages"]]
    assert ("system" in roles) == (roles[:1] == ["system"])
    results = [
        block
        for message in body["messages"]
        if isinstance(message["content"], list)
        for block in message["content"]
        if block["type"] == "tool_result"
    ]
    assert roles.count("tool") == len(results)
    calls = sum(len(m.get("tool_calls") or []) for m in chat["messages"])
    assert calls == len(results)
    assert chat.get("stream", False) == body.get("stream", False)
    assert ("stream_options" in chat) == chat.get("stream", False)
    assert "cache_control" not in json.dumps(chat)
    json.dumps(chat)  # plain JSON


UNSUPPORTED_KEYS = st.sampled_from(
    [
        ("top_k", 40),
        ("thinking", {"type": "enabled", "budget_tokens": 1024}),
        ("service_tier", "standard_only"),
        ("container", "c"),
        ("mcp_servers", []),
        ("context_management", {}),
        ("output_config", {}),
        ("inference_geo", "eu"),
        ("speed", "standard"),
        ("cache_control", {"type": "ephemeral", "ttl": "5m", "x": 1}),
    ]
) | st.tuples(
    st.text(min_size=1, max_size=10).filter(
        lambda k: (
            k
            not in {"model", "messages", "max_tokens", "system", "stop_sequences", "stream"}
            | {
                "temperature",
                "top_p",
                "metadata",
                "tools",
                "tool_choice",
                "cache_control",
                "thinking",
            }
        )
    ),
    json_values.filter(lambda v: v is not None),
)


@given(anthropic_requests(), UNSUPPORTED_KEYS)
def test_unsupported_parameters_always_raise_with_their_name(
    body: dict[str, Any], extra: tuple[str, Any]
) -> None:
    key, value = extra
    body[key] = value
    exc = refused(body)
    assert exc.param == key and exc.code == "unsupported_parameter"


@given(anthropic_requests(), st.data())
def test_unsupported_blocks_always_raise_naming_messages(
    body: dict[str, Any], data: st.DataObject
) -> None:
    users = [m for m in body["messages"] if m["role"] == "user"]
    message = data.draw(st.sampled_from(users))
    if isinstance(message["content"], str):
        message["content"] = [{"type": "text", "text": message["content"]}]
    position = data.draw(st.integers(0, len(message["content"])))
    message["content"].insert(position, DOCUMENT)
    exc = refused(body)
    assert exc.param == "messages" and exc.code == "unsupported_parameter"


# --- hypothesis: streams -------------------------------------------------------------


@dataclass
class Plan:
    """One upstream answer: text, tool calls, finish reason, usage."""

    segments: list[tuple[str, Any]]  # ("text", str) or ("tool", (id, name, input))
    finish: str
    usage: dict[str, Any] | None


def pieces(draw: st.DrawFn, s: str, *, allow_empty: bool) -> list[str]:
    cuts = draw(st.lists(st.integers(0, len(s)), max_size=4))
    bounds = [0, *sorted(cuts), len(s)]
    parts = [s[a:b] for a, b in itertools.pairwise(bounds)]
    return parts if allow_empty else [p for p in parts if p] or [s]


@st.composite
def plans(draw: st.DrawFn, *, text_first: bool) -> Plan:
    tools = draw(
        st.lists(st.tuples(st.just(""), names, tool_inputs), max_size=3).map(
            lambda calls: [("tool", (f"call_{i}", n, a)) for i, (_, n, a) in enumerate(calls)]
        )
    )
    if text_first:
        body = draw(st.text(max_size=30))
        segments: list[tuple[str, Any]] = ([("text", body)] if body else []) + tools
    else:
        texts = draw(st.lists(st.text(min_size=1, max_size=10), max_size=3))
        segments = [("text", t) for t in texts] + tools
        segments = draw(st.permutations(segments))
    usage = draw(
        st.none()
        | st.builds(
            lambda p, c, k: {
                "prompt_tokens": p,
                "completion_tokens": c,
                "total_tokens": p + c,
                **(
                    {"prompt_tokens_details": {"cached_tokens": min(k, p)}} if k is not None else {}
                ),
            },
            st.integers(0, 10**6),
            st.integers(0, 10**5),
            st.none() | st.integers(0, 10**6),
        )
    )
    finish = draw(st.sampled_from(["stop", "length", "tool_calls", "content_filter"]))
    return Plan(segments, finish, usage)


@st.composite
def upstream_streams(draw: st.DrawFn, plan: Plan) -> bytes:
    """The plan as an OpenAI stream: role chunk, deltas, finish chunk, usage chunk, [DONE]."""
    first: dict[str, Any] = draw(
        st.sampled_from(
            [{"role": "assistant", "content": ""}, {"role": "assistant", "content": None}]
        )
    )
    chunks = [chunk(first)]
    tool_index = 0
    for kind, value in plan.segments:
        if kind == "text":
            for part in pieces(draw, value, allow_empty=False):
                chunks.append(chunk({"content": part}))
                if draw(st.integers(0, 5)) == 0:
                    chunks.append(chunk({"content": ""}))
        else:
            call_id, name, tool_input = value
            arguments = json.dumps(tool_input) if tool_input or draw(st.booleans()) else ""
            parts = pieces(draw, arguments, allow_empty=True)
            chunks.append(
                chunk(
                    {
                        "tool_calls": [
                            {
                                "index": tool_index,
                                "id": call_id,
                                "type": "function",
                                "function": {"name": name, "arguments": parts[0]},
                            }
                        ]
                    }
                )
            )
            for part in parts[1:]:
                chunks.append(
                    chunk({"tool_calls": [{"index": tool_index, "function": {"arguments": part}}]})
                )
            tool_index += 1
    chunks.append(chunk({}, plan.finish))
    if plan.usage is not None:
        chunks.append(
            {
                "id": "chatcmpl-1",
                "object": "chat.completion.chunk",
                "choices": [],
                "usage": plan.usage,
            }
        )
    compact = draw(st.booleans())
    out = b"".join(
        b"data: " + json.dumps(c, separators=(",", ":") if compact else None).encode() + b"\n\n"
        for c in chunks
    )
    return out + b"data: [DONE]\n\n"


def equivalent_response(plan: Plan) -> dict[str, Any]:
    texts = [value for kind, value in plan.segments if kind == "text"]
    calls = [
        {"id": i, "type": "function", "function": {"name": n, "arguments": json.dumps(a)}}
        for kind, (i, n, a) in ((k, v) for k, v in plan.segments if k == "tool")
    ]
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None}
    if calls:
        message["tool_calls"] = calls
    body: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": message, "finish_reason": plan.finish}],
    }
    if plan.usage is not None:
        body["usage"] = plan.usage
    return body


@given(st.data())
@settings(max_examples=200)
def test_stream_output_does_not_depend_on_the_split(data: st.DataObject) -> None:
    plan = data.draw(plans(text_first=False))
    stream = data.draw(upstream_streams(plan))
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=25))
    whole = run_stream(stream)
    assert run_stream(stream, cuts) == whole
    check_well_formed(parse_events(whole))


@given(st.data())
@settings(max_examples=200)
def test_accumulated_stream_equals_the_non_stream_translation(data: st.DataObject) -> None:
    plan = data.draw(plans(text_first=True))
    stream = data.draw(upstream_streams(plan))
    events = parse_events(run_stream(stream))
    check_well_formed(events)
    streamed = accumulate(events)
    whole = chat_response_to_messages(equivalent_response(plan), model=MODEL, message_id=MSG_ID)
    assert streamed == whole
    Message.model_validate(streamed)


chunk_keys = st.sampled_from(
    [
        "choices",
        "delta",
        "content",
        "refusal",
        "tool_calls",
        "index",
        "id",
        "function",
        "name",
        "arguments",
        "finish_reason",
        "usage",
        "prompt_tokens",
        "error",
        "message",
        "type",
    ]
)
chunkish = st.recursive(
    st.none() | st.booleans() | st.integers(-1, 3) | st.sampled_from(["", "x", "stop", "{", "}"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(chunk_keys, inner, max_size=4),
    max_leaves=12,
)
blocks = st.one_of(
    chunkish.map(lambda v: b"data: " + json.dumps(v).encode() + b"\n\n"),
    st.builds(chunk, st.dictionaries(chunk_keys, chunkish, max_size=3)).map(
        lambda c: b"data: " + json.dumps(c).encode() + b"\n\n"
    ),
    st.sampled_from([b"data: [DONE]\n\n", b": ping\n\n", b"event: error\ndata: {}\n\n"]),
    st.binary(max_size=20).map(lambda b: b"data: " + b.replace(b"\n", b"") + b"\n\n"),
)


@given(st.lists(blocks, max_size=12))
@example([b"data: [DONE]\n\n"])
def test_any_upstream_blocks_give_a_well_formed_stream(upstream: list[bytes]) -> None:
    translator = ChatStreamToMessages(model=MODEL, message_id=MSG_ID)
    out: list[bytes] = []
    for block in upstream:
        out += translator.feed(block)
    out += translator.close()
    events = parse_events(out)
    check_well_formed(events)
    assert events[-1]["type"] in ("message_stop", "error")


# --- hypothesis: anything in, translation or the peer error out --------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-1, 3)
    | st.floats(allow_nan=False)
    | st.sampled_from(["", '{"a": 1}', "[]"])
    | st.sampled_from(
        [
            "x",
            "user",
            "assistant",
            "text",
            "image",
            "tool_use",
            "tool_result",
            "base64",
            "url",
            "ephemeral",
            "auto",
            "any",
            "tool",
            "none",
            "disabled",
            "custom",
            "stop",
        ]
    )
)
request_keys = st.sampled_from(
    [
        "model",
        "messages",
        "max_tokens",
        "system",
        "stop_sequences",
        "stream",
        "temperature",
        "top_p",
        "metadata",
        "tools",
        "tool_choice",
        "cache_control",
        "thinking",
        "role",
        "content",
        "type",
        "text",
        "source",
        "tool_use_id",
        "input",
        "id",
        "name",
        "is_error",
        "input_schema",
        "user_id",
        "disable_parallel_tool_use",
        "media_type",
        "data",
        "url",
        "citations",
        "ttl",
        "description",
        "strict",
    ]
)
response_keys = st.sampled_from(
    [
        "id",
        "choices",
        "message",
        "content",
        "refusal",
        "tool_calls",
        "type",
        "function",
        "name",
        "arguments",
        "finish_reason",
        "usage",
        "prompt_tokens",
        "completion_tokens",
        "prompt_tokens_details",
        "cached_tokens",
        "index",
    ]
)


def anything(keys: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=5),
        max_leaves=25,
    )


@given(anything(request_keys) | anthropic_requests())
@example([])
def test_any_request_translates_or_is_refused(body: Any) -> None:
    try:
        chat = messages_request_to_chat(body, model=UPSTREAM)
    except RemoteProtocolError as exc:
        assert exc.error_status_hint == 400 and exc.param
        assert exc.code in ("unsupported_parameter", "invalid_request")
    else:
        json.dumps(chat)


@given(anything(response_keys))
@example("x")
def test_any_response_translates_or_is_a_502(body: Any) -> None:
    try:
        message = chat_response_to_messages(body, model=MODEL)
    except RemoteProtocolError as exc:
        assert exc.error_status_hint == 502 and exc.code == "upstream_protocol_error"
    else:
        Message.model_validate(message)
