"""The ``validate`` middleware: Chat Completions and Messages requests checked against
their API's documented shape, refused with a 400 naming the param at fault."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core import Command, Proxy, ProxyConfig, SendUpstreamRequest, ValidationError
from core._endpoints import ENDPOINTS
from core.policies._validate import ValidateMiddleware

from .playbook import WALL, Playbook, client_view
from .test_chat_to_messages import chat_requests
from .test_messages_to_chat import anthropic_requests

CHAT = b"/v1/chat/completions"
MESSAGES = b"/v1/messages"
VALIDATE = ValidateMiddleware()
_MOCK = Proxy(ProxyConfig())


def hook(path: bytes, body: bytes | dict[str, Any], method: bytes = b"POST") -> bytes:
    """Run ``on_request`` on a real exchange holding ``body``; the body it leaves."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    ex = _MOCK.exchange(exchange_id="t", now=0.0, wall_time=WALL)
    ex.request_method, ex.request_path, ex.request_body = method, path, raw
    ex.endpoint = ENDPOINTS[method, path][1] if (method, path) in ENDPOINTS else None
    assert VALIDATE.on_request(ex) is None  # type: ignore[func-returns-value]
    assert ex.request_body is raw
    return raw


def refused(path: bytes, body: bytes | dict[str, Any]) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        hook(path, body)
    error = info.value
    assert error.error_status_hint == 400 and error.error_type == "invalid_request_error"
    return error


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "gpt-4.1", "messages": [{"role": "user", "content": "Hi"}], **fields}


def messages(**fields: Any) -> dict[str, Any]:
    return {
        "model": "claude-sonnet-4-5",
        "max_tokens": 1024,
        "messages": [{"role": "user", "content": "Hi"}],
        **fields,
    }


# -- documented examples pass untouched --------------------------------------------------

WEATHER_PARAMETERS = {
    "type": "object",
    "properties": {
        "location": {"type": "string", "description": "The city and state, e.g. San Francisco, CA"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["location"],
}
IMAGE_URL = "https://upload.wikimedia.org/wikipedia/commons/thumb/d/dd/boardwalk.jpg"

CHAT_EXAMPLES: dict[str, dict[str, Any]] = {
    "default": {
        "model": "gpt-4.1",
        "messages": [
            {"role": "developer", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Hello!"},
        ],
    },
    "image input": {
        "model": "gpt-4.1",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What's in this image?"},
                    {"type": "image_url", "image_url": {"url": IMAGE_URL, "detail": "high"}},
                ],
            }
        ],
        "max_tokens": 300,
    },
    "streaming": {
        "model": "gpt-4.1",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Hello!"},
        ],
        "stream": True,
        "stream_options": {"include_usage": True},
    },
    "functions": {
        "model": "gpt-4.1",
        "messages": [{"role": "user", "content": "What's the weather like in Boston today?"}],
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "get_current_weather",
                    "description": "Get the current weather in a given location",
                    "parameters": WEATHER_PARAMETERS,
                },
            }
        ],
        "tool_choice": "auto",
    },
    "tool results": {
        "model": "gpt-4.1",
        "messages": [
            {"role": "user", "content": "What's the weather like in Boston today?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_abc123",
                        "type": "function",
                        "function": {
                            "name": "get_current_weather",
                            "arguments": '{"location": "Boston, MA"}',
                        },
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_abc123", "content": '{"temperature": 22}'},
        ],
        "tool_choice": {"type": "function", "function": {"name": "get_current_weather"}},
        "parallel_tool_calls": False,
    },
    "logprobs": {
        "model": "gpt-4.1",
        "messages": [{"role": "user", "content": "Hello!"}],
        "logprobs": True,
        "top_logprobs": 2,
    },
    "audio": {
        "model": "gpt-4o-audio-preview",
        "modalities": ["text", "audio"],
        "audio": {"voice": "alloy", "format": "wav"},
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in this recording?"},
                    {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
                ],
            },
            {"role": "assistant", "audio": {"id": "audio_abc123"}},
        ],
    },
    "file": {
        "model": "gpt-4.1",
        "messages": [
            {
                "role": "user",
                "content": [
                    {
                        "type": "file",
                        "file": {"filename": "draconomicon.pdf", "file_data": "data:;base64,JV"},
                    },
                    {"type": "text", "text": "What is the first dragon in the book?"},
                ],
            }
        ],
    },
    "structured outputs": {
        "model": "gpt-4.1",
        "messages": [
            {"role": "system", "content": [{"type": "text", "text": "You are a math tutor."}]},
            {"role": "user", "content": "how can I solve 8x + 7 = -23"},
            {"role": "assistant", "content": [{"type": "refusal", "refusal": "No."}]},
        ],
        "response_format": {
            "type": "json_schema",
            "json_schema": {
                "name": "math_reasoning",
                "schema": {"type": "object", "properties": {"steps": {"type": "array"}}},
                "strict": True,
            },
        },
        "max_completion_tokens": 2048,
        "reasoning_effort": "low",
    },
    "every sampling knob": {
        "model": "gpt-4.1",
        "messages": [{"role": "user", "content": "Hi", "name": "ann"}],
        "temperature": 2,
        "top_p": 0,
        "n": 128,
        "presence_penalty": -2,
        "frequency_penalty": 2.0,
        "logit_bias": {"50256": -100, "1": 100},
        "seed": -(2**63),
        "stop": ["\n", "END", "###", "stop"],
        "user": "user-1234",
        "metadata": {"k" * 64: "v" * 512},
        "store": False,
        "prediction": {"type": "content", "content": "predicted"},
        "service_tier": "auto",
    },
    "deprecated functions": {
        "model": "gpt-3.5-turbo",
        "messages": [
            {"role": "user", "content": "What is the weather like in Boston?"},
            {
                "role": "assistant",
                "content": None,
                "function_call": {"name": "get_current_weather", "arguments": "{}"},
            },
            {"role": "function", "name": "get_current_weather", "content": "22 degrees"},
        ],
        "functions": [{"name": "get_current_weather", "parameters": WEATHER_PARAMETERS}],
        "function_call": {"name": "get_current_weather"},
    },
    "nulls for not given": chat(
        temperature=None, max_tokens=None, stop=None, tools=None, response_format=None
    ),
}

PDF_URL = "https://assets.anthropic.com/m/1cd9d098ac3e6467/original/Claude-3-Model-Card.pdf"
MESSAGES_EXAMPLES: dict[str, dict[str, Any]] = {
    "basic": messages(),
    "multiple turns": messages(
        messages=[
            {"role": "user", "content": "Hello there."},
            {"role": "assistant", "content": "Hi, I'm Claude. How can I help you?"},
            {"role": "user", "content": "Can you explain LLMs in plain English?"},
        ]
    ),
    "prefill": messages(
        messages=[
            {"role": "user", "content": "What's the Greek name for Sun? (A) Sol (B) Helios"},
            {"role": "assistant", "content": "The best answer is ("},
        ],
        max_tokens=1,
    ),
    "vision": messages(
        messages=[
            {
                "role": "user",
                "content": [
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/4A"},
                    },
                    {"type": "image", "source": {"type": "url", "url": IMAGE_URL}},
                    {"type": "image", "source": {"type": "file", "file_id": "file_011"}},
                    {"type": "text", "text": "Compare these images."},
                ],
            }
        ]
    ),
    "documents and citations": messages(
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "document", "source": {"type": "url", "url": PDF_URL}},
                    {
                        "type": "document",
                        "source": {"type": "base64", "media_type": "application/pdf", "data": "JV"},
                        "cache_control": {"type": "ephemeral"},
                    },
                    {
                        "type": "document",
                        "source": {
                            "type": "text",
                            "media_type": "text/plain",
                            "data": "The grass is green. The sky is blue.",
                        },
                        "title": "My Document",
                        "context": "This is a trustworthy document.",
                        "citations": {"enabled": True},
                    },
                    {
                        "type": "document",
                        "source": {
                            "type": "content",
                            "content": [{"type": "text", "text": "The grass is green."}],
                        },
                    },
                    {"type": "text", "text": "What color is the grass and sky?"},
                ],
            }
        ]
    ),
    "tool use": messages(
        tools=[
            {
                "name": "get_weather",
                "description": "Get the current weather in a given location",
                "input_schema": WEATHER_PARAMETERS,
            },
            {"type": "web_search_20250305", "name": "web_search", "max_uses": 5},
        ],
        tool_choice={"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
        messages=[
            {"role": "user", "content": "What's the weather like in San Francisco?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "I'll check the weather."},
                    {
                        "type": "tool_use",
                        "id": "toolu_01A09q90qw90lq917835lq9",
                        "name": "get_weather",
                        "input": {"location": "San Francisco, CA"},
                    },
                    {
                        "type": "server_tool_use",
                        "id": "srvtoolu_01",
                        "name": "web_search",
                        "input": {"query": "weather San Francisco"},
                    },
                    {
                        "type": "web_search_tool_result",
                        "tool_use_id": "srvtoolu_01",
                        "content": [
                            {"type": "web_search_result", "url": "https://x", "title": "t"}
                        ],
                    },
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_01A09q90qw90lq917835lq9",
                        "content": [
                            {"type": "text", "text": "15 degrees"},
                            {"type": "image", "source": {"type": "url", "url": IMAGE_URL}},
                        ],
                        "is_error": False,
                    },
                    {"type": "tool_result", "tool_use_id": "toolu_02", "content": "timeout"},
                ],
            },
        ],
    ),
    "extended thinking": messages(
        max_tokens=16000,
        thinking={"type": "enabled", "budget_tokens": 10000},
        messages=[
            {
                "role": "user",
                "content": "Are there an infinite number of primes n with n mod 4 = 3?",
            },
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "Let me think...", "signature": "EqQB"},
                    {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va"},
                    {"type": "text", "text": "Yes."},
                ],
            },
            {"role": "user", "content": "Why?"},
        ],
    ),
    "prompt caching and system blocks": messages(
        system=[
            {"type": "text", "text": "You are an AI assistant analyzing literary works."},
            {"type": "text", "text": "<the whole book>", "cache_control": {"type": "ephemeral"}},
        ],
        cache_control={"type": "ephemeral"},
    ),
    "search results": messages(
        messages=[
            {
                "role": "user",
                "content": [
                    {
                        "type": "search_result",
                        "source": "https://docs.company.com/api-reference",
                        "title": "API Reference - Authentication",
                        "content": [{"type": "text", "text": "All API requests need a key."}],
                        "citations": {"enabled": True},
                    },
                    {"type": "text", "text": "How do I authenticate?"},
                ],
            }
        ]
    ),
    "every sampling knob": messages(
        system="Be brief.",
        temperature=1,
        top_p=0.0,
        top_k=0,
        stop_sequences=["\n\nHuman:"],
        stream=True,
        metadata={"user_id": "13803d75-b4b5-4c3e-b2a2-6f21399b021b"},
        service_tier="standard_only",
        max_tokens=0,
        thinking={"type": "disabled"},
        tool_choice={"type": "none"},
    ),
    "blocks known by their type only": messages(
        messages=[
            {"role": "user", "content": [{"type": "container_upload", "file_id": "file_1"}]},
            {"role": "assistant", "content": [{"type": "mcp_tool_use", "id": "m", "name": "n"}]},
        ],
        tools=[{"type": "mcp_toolset", "mcp_server_name": "docs"}],
    ),
}


@pytest.mark.parametrize("body", CHAT_EXAMPLES.values(), ids=CHAT_EXAMPLES.keys())
def test_documented_chat_requests_pass_untouched(body: dict[str, Any]) -> None:
    hook(CHAT, body)


@pytest.mark.parametrize("body", MESSAGES_EXAMPLES.values(), ids=MESSAGES_EXAMPLES.keys())
def test_documented_messages_requests_pass_untouched(body: dict[str, Any]) -> None:
    hook(MESSAGES, body)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        (b"GET", CHAT),
        (b"POST", b"/v1/embeddings"),
        (b"POST", b"/v1/messages/count_tokens"),
        (b"POST", b"/v1/responses"),
        (b"POST", b"/health"),
    ],
)
def test_other_methods_and_paths_pass_untouched(method: bytes, path: bytes) -> None:
    hook(path, b"not even JSON", method=method)


def test_the_middleware_is_named_validate_and_holds_nothing() -> None:
    assert VALIDATE.name == "validate"
    assert not hasattr(VALIDATE, "__dict__")


# -- what is refused, and how it is named -------------------------------------------------

USER = {"role": "user", "content": "Hi"}
MISSING, TYPE, VALUE = "missing_required_parameter", "invalid_type", "invalid_value"


def said(*messages: Any, **fields: Any) -> dict[str, Any]:
    """A chat request whose messages are ``messages``."""
    return chat(messages=list(messages), **fields)


def parts(*content: Any) -> dict[str, Any]:
    """A chat request with one user message of ``content`` parts."""
    return said({"role": "user", "content": list(content)})


def calls(*tool_calls: Any) -> dict[str, Any]:
    return said(USER, {"role": "assistant", "tool_calls": list(tool_calls)})


def told(*messages_: Any, **fields: Any) -> dict[str, Any]:
    """A Messages request whose messages are ``messages_``."""
    return messages(messages=list(messages_), **fields)


def blocks(*content: Any, role: str = "user") -> dict[str, Any]:
    """A Messages request with one message of ``content`` blocks."""
    return told({"role": role, "content": list(content)})


def image(source: Any) -> dict[str, Any]:
    return {"type": "image", "source": source}


def function(**fields: Any) -> dict[str, Any]:
    return {"type": "function", "function": fields}


BAD_CHAT: list[tuple[dict[str, Any], str, str]] = [
    # required fields
    ({"messages": [USER]}, "model", MISSING),
    ({"model": "m"}, "messages", MISSING),
    (chat(messages=[]), "messages", "empty_array"),
    (said({"content": "x"}), "messages[0].role", MISSING),
    (said({"role": "user"}), "messages[0].content", MISSING),
    (said({"role": "tool", "content": "x"}), "messages[0].tool_call_id", MISSING),
    (said({"role": "function", "content": "x"}), "messages[0].name", MISSING),
    (said(USER, {"role": "assistant"}), "messages[1].content", MISSING),
    (calls(), "messages[1].content", MISSING),
    (chat(tools=[function()]), "tools[0].function.name", MISSING),
    (chat(tool_choice=function()), "tool_choice.function.name", MISSING),
    # roles and part types
    (said(USER, USER, {"role": "usr", "content": "x"}), "messages[2].role", VALUE),
    (said({"role": 7, "content": "x"}), "messages[0].role", VALUE),
    (parts({"type": "text", "text": "a"}, {"type": "video"}), "messages[0].content[1].type", VALUE),
    (parts({"text": "a"}), "messages[0].content[0].type", MISSING),
    (
        said({"role": "system", "content": [{"type": "image_url", "image_url": {"url": "u"}}]}),
        "messages[0].content[0].type",
        VALUE,
    ),
    (
        said(USER, {"role": "assistant", "content": [{"type": "image_url"}]}),
        "messages[1].content[0].type",
        VALUE,
    ),
    (
        parts({"type": "image_url", "image_url": {"url": 5}}),
        "messages[0].content[0].image_url.url",
        TYPE,
    ),
    (
        parts({"type": "image_url", "image_url": {"url": "u", "detail": "max"}}),
        "messages[0].content[0].image_url.detail",
        VALUE,
    ),
    (
        parts({"type": "input_audio", "input_audio": {"data": "x", "format": "ogg"}}),
        "messages[0].content[0].input_audio.format",
        VALUE,
    ),
    (parts(), "messages[0].content", "empty_array"),
    (said({"role": "user", "content": 5}), "messages[0].content", TYPE),
    (said("Hi"), "messages[0]", TYPE),
    (
        calls({"id": "c", "type": "function", "function": {"name": "f"}}),
        "messages[1].tool_calls[0].function.arguments",
        MISSING,
    ),
    (calls({"id": "c", "type": "mcp"}), "messages[1].tool_calls[0].type", VALUE),
    # ranges and types
    (chat(max_tokens=0), "max_tokens", "integer_below_min_value"),
    (chat(max_completion_tokens=-5), "max_completion_tokens", "integer_below_min_value"),
    (chat(max_tokens="100"), "max_tokens", TYPE),
    (chat(max_tokens=100.5), "max_tokens", TYPE),
    (chat(max_tokens=True), "max_tokens", TYPE),
    (chat(temperature=2.01), "temperature", "decimal_above_max_value"),
    (chat(temperature=-1), "temperature", "decimal_below_min_value"),
    (chat(temperature="hot"), "temperature", TYPE),
    (chat(top_p=1.5), "top_p", "decimal_above_max_value"),
    (chat(n=0), "n", "integer_below_min_value"),
    (chat(n=129), "n", "integer_above_max_value"),
    (chat(presence_penalty=-2.5), "presence_penalty", "decimal_below_min_value"),
    (chat(frequency_penalty=3), "frequency_penalty", "decimal_above_max_value"),
    (chat(logprobs=True, top_logprobs=21), "top_logprobs", "integer_above_max_value"),
    (chat(logprobs="yes"), "logprobs", TYPE),
    (chat(logit_bias={"50256": 101}), "logit_bias.50256", "integer_above_max_value"),
    (chat(seed=2**63), "seed", "integer_above_max_value"),
    (chat(stop=["a", "b", "c", "d", "e"]), "stop", "array_above_max_length"),
    (chat(stop=5), "stop", TYPE),
    (chat(stop=[5]), "stop[0]", TYPE),
    (chat(stream="true"), "stream", TYPE),
    (chat(stream_options={"include_usage": 1}), "stream_options.include_usage", TYPE),
    (chat(metadata={str(i): "v" for i in range(17)}), "metadata", "object_above_max_properties"),
    (chat(metadata={"k": "v" * 513}), "metadata.k", "string_above_max_length"),
    (chat(metadata={"k" * 65: "v"}), "metadata." + "k" * 65, "string_above_max_length"),
    (chat(user=["u"]), "user", TYPE),
    (chat(tools={"type": "function"}), "tools", TYPE),
    (chat(tools=[function(name="get weather")]), "tools[0].function.name", VALUE),
    (chat(tools=[function(name="f" * 65)]), "tools[0].function.name", "string_above_max_length"),
    (chat(tools=[{"type": "retrieval"}]), "tools[0].type", VALUE),
    (chat(tool_choice="any"), "tool_choice", VALUE),
    (chat(tool_choice=1), "tool_choice", TYPE),
    (chat(function_call="sometimes"), "function_call", VALUE),
    (chat(functions=[]), "functions", "empty_array"),
    (chat(response_format={"type": "xml"}), "response_format.type", VALUE),
    (
        chat(response_format={"type": "json_schema", "json_schema": {}}),
        "response_format.json_schema.name",
        MISSING,
    ),
    (chat(prediction={"type": "content", "content": None}), "prediction.content", TYPE),
]
BAD_MESSAGES: list[tuple[dict[str, Any], str, str]] = [
    ({"model": "m", "messages": [USER]}, "max_tokens", MISSING),
    ({"max_tokens": 1, "messages": [USER]}, "model", MISSING),
    (messages(messages=[]), "messages", "empty_array"),
    (messages(max_tokens=-1), "max_tokens", "integer_below_min_value"),
    (messages(max_tokens=None), "max_tokens", TYPE),
    (told({"role": "system", "content": "Be brief."}), "messages[0].role", VALUE),
    (told(USER, {"role": "assistant"}), "messages[1].content", MISSING),
    (blocks({"type": "txt", "text": "a"}), "messages[0].content[0].type", VALUE),
    (blocks({"type": "text"}), "messages[0].content[0].text", MISSING),
    (
        blocks(image({"type": "base64", "media_type": "image/bmp", "data": "x"})),
        "messages[0].content[0].source.media_type",
        VALUE,
    ),
    (blocks(image({"type": "path"})), "messages[0].content[0].source.type", VALUE),
    (
        blocks({"type": "document", "source": {"type": "content", "content": 1}}),
        "messages[0].content[0].source.content",
        TYPE,
    ),
    (blocks({"type": "tool_result"}), "messages[0].content[0].tool_use_id", MISSING),
    (
        blocks({"type": "tool_result", "tool_use_id": "t", "content": [{"type": "audio"}]}),
        "messages[0].content[0].content[0].type",
        VALUE,
    ),
    (
        blocks({"type": "tool_use", "id": "t", "name": "f", "input": "{}"}, role="assistant"),
        "messages[0].content[0].input",
        TYPE,
    ),
    (
        blocks({"type": "thinking", "thinking": "hm"}, role="assistant"),
        "messages[0].content[0].signature",
        MISSING,
    ),
    (
        blocks({"type": "web_search_tool_result", "tool_use_id": "s", "content": "x"}),
        "messages[0].content[0].content",
        TYPE,
    ),
    (messages(temperature=1.5), "temperature", "decimal_above_max_value"),
    (messages(top_p=-0.1), "top_p", "decimal_below_min_value"),
    (messages(top_k=-1), "top_k", "integer_below_min_value"),
    (messages(top_k=1.5), "top_k", TYPE),
    (messages(stop_sequences="\n"), "stop_sequences", TYPE),
    (messages(stream=1), "stream", TYPE),
    (messages(system=[{"type": "image"}]), "system[0].type", VALUE),
    (messages(system=False), "system", TYPE),
    (messages(metadata={"user_id": 42}), "metadata.user_id", TYPE),
    (messages(tools=[{"name": "f"}]), "tools[0].input_schema", MISSING),
    (messages(tools=[{"type": "custom", "input_schema": {}}]), "tools[0].name", MISSING),
    (messages(tools=[{"type": 20250305}]), "tools[0].type", TYPE),
    (messages(tool_choice={"type": "tool"}), "tool_choice.name", MISSING),
    (messages(tool_choice={"type": "required"}), "tool_choice.type", VALUE),
    (
        messages(thinking={"type": "enabled", "budget_tokens": 1023}),
        "thinking.budget_tokens",
        "integer_below_min_value",
    ),
    (messages(thinking={"type": "enabled"}), "thinking.budget_tokens", MISSING),
]


@pytest.mark.parametrize(("body", "param", "code"), BAD_CHAT, ids=[p for _, p, _ in BAD_CHAT])
def test_bad_chat_requests_are_refused_naming_the_param(
    body: dict[str, Any], param: str, code: str
) -> None:
    error = refused(CHAT, body)
    assert (error.param, error.code) == (param, code)
    assert f"'{param}'" in str(error)


@pytest.mark.parametrize(
    ("body", "param", "code"), BAD_MESSAGES, ids=[p for _, p, _ in BAD_MESSAGES]
)
def test_bad_messages_requests_are_refused_naming_the_param(
    body: dict[str, Any], param: str, code: str
) -> None:
    error = refused(MESSAGES, body)
    assert (error.param, error.code) == (param, code)
    assert f"'{param}'" in str(error)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (chat(model=None), "Invalid type for 'model': expected a string, but got null instead."),
        (
            chat(max_tokens=[1]),
            "Invalid type for 'max_tokens': expected an integer, but got an array instead.",
        ),
        (
            chat(max_tokens={"n": 1}),
            "Invalid type for 'max_tokens': expected an integer, but got an object instead.",
        ),
        (
            chat(max_tokens=2.5),
            "Invalid type for 'max_tokens': expected an integer, but got a decimal instead.",
        ),
        (
            chat(temperature=False),
            "Invalid type for 'temperature': expected a decimal, but got a boolean instead.",
        ),
        (chat(user=7), "Invalid type for 'user': expected a string, but got an integer instead."),
        (
            chat(stream=""),
            "Invalid type for 'stream': expected a boolean, but got a string instead.",
        ),
        (
            chat(tool_choice=None, function_call=[]),
            "Invalid type for 'function_call': expected a string or an object, "
            "but got an array instead.",
        ),
        (
            chat(temperature=2.5),
            "Invalid 'temperature': decimal above maximum value. "
            "Expected a value <= 2, but got 2.5 instead.",
        ),
        (
            chat(n=0),
            "Invalid 'n': integer below minimum value. Expected a value >= 1, but got 0 instead.",
        ),
        (
            chat(messages=[]),
            "Invalid 'messages': empty array. Expected an array with minimum length 1, "
            "but got an empty array instead.",
        ),
        (
            chat(stop=list("abcde")),
            "Invalid 'stop': array too long. Expected an array with maximum length 4, "
            "but got an array with length 5 instead.",
        ),
        (
            chat(metadata=dict.fromkeys("abcdefghijklmnopq", "v")),
            "Invalid 'metadata': object too large. Expected an object with at most 16 "
            "properties, but got 17 instead.",
        ),
        (
            chat(tools=[{"type": "function", "function": {"name": "x" * 70}}]),
            "Invalid 'tools[0].function.name': string too long. Expected a string with maximum "
            "length 64, but got a string with length 70 instead.",
        ),
        (
            chat(tools=[{"type": "function", "function": {"name": "a.b"}}]),
            "Invalid 'tools[0].function.name': string does not match pattern. Expected a string "
            "that matches the pattern '^[a-zA-Z0-9_-]+$'.",
        ),
        (
            chat(messages=[{"role": "critic", "content": "x"}]),
            "Invalid value for 'messages[0].role': 'critic'. Supported values are: 'system', "
            "'developer', 'user', 'assistant', 'tool', and 'function'.",
        ),
        (
            chat(messages=[{"role": "system", "content": [{"type": "refusal"}]}]),
            "Invalid value for 'messages[0].content[0].type': 'refusal'. "
            "Supported values are: 'text'.",
        ),
        (
            chat(messages=[{"role": "user", "content": [{"type": ["text"]}]}]),
            "Invalid value for 'messages[0].content[0].type': '[\"text\"]'. "
            "Supported values are: 'text', 'image_url', 'input_audio', and 'file'.",
        ),
        (
            chat(messages=[{"role": "x" * 100, "content": "x"}]),
            "Invalid value for 'messages[0].role': '"
            + "x" * 77
            + "...'. Supported values are: 'system', "
            "'developer', 'user', 'assistant', 'tool', and 'function'.",
        ),
        (
            chat(messages=[{"role": "user", "content": [{"type": "file", "file": []}]}]),
            "Invalid type for 'messages[0].content[0].file': expected an object, "
            "but got an array instead.",
        ),
        (chat(messages=[{"role": "tool"}]), "Missing required parameter: 'messages[0].content'."),
    ],
)
def test_messages_say_what_was_expected_and_what_came(body: dict[str, Any], message: str) -> None:
    assert str(refused(CHAT, body)) == message


def test_anthropic_value_lists_read_naturally() -> None:
    error = refused(MESSAGES, messages(messages=[{"role": "system", "content": "x"}]))
    assert str(error) == (
        "Invalid value for 'messages[0].role': 'system'. "
        "Supported values are: 'user' and 'assistant'."
    )


@pytest.mark.parametrize("path", [CHAT, MESSAGES])
@pytest.mark.parametrize("body", [b"", b"{", b"nope", b'{"model": "m",}', b"\xff\xfe{"])
def test_a_body_that_is_not_json_is_invalid_json(path: bytes, body: bytes) -> None:
    error = refused(path, body)
    assert (error.code, error.param) == ("invalid_json", None)
    assert str(error) == "the request body is not valid JSON"


@pytest.mark.parametrize("path", [CHAT, MESSAGES])
@pytest.mark.parametrize("body", [b"[]", b'"chat"', b"42", b"null", b'[{"model": "m"}]'])
def test_json_that_is_not_an_object_is_invalid_json(path: bytes, body: bytes) -> None:
    error = refused(path, body)
    assert (error.code, error.param) == ("invalid_json", None)
    assert str(error) == "the request body must be a JSON object"


def test_non_finite_numbers_are_refused() -> None:
    for token in (b"NaN", b"Infinity", b"-Infinity", b"1e400"):
        body = b'{"model":"m","messages":[{"role":"user","content":"Hi"}],"top_p":' + token + b"}"
        error = refused(CHAT, body)
        assert (error.param, error.code) == ("top_p", "invalid_value")
        assert str(error) == "Invalid 'top_p': input should be a finite number."


def test_json_only_pythons_parser_reads_is_checked_the_same_way() -> None:
    """UTF-16 and lone surrogates: json.loads reads them, pydantic's parser does not."""
    good = json.dumps(chat()).encode("utf-16")
    hook(CHAT, good)
    hook(CHAT, b'{"model":"m","messages":[{"role":"user","content":"\\ud800"}]}')
    error = refused(CHAT, json.dumps(chat(temperature=9)).encode("utf-16"))
    assert (error.param, error.code) == ("temperature", "decimal_above_max_value")
    error = refused(MESSAGES, b'{"model":"\\udfff","messages":[{"role":"user","content":"Hi"}]}')
    assert (error.param, error.code) == ("max_tokens", "missing_required_parameter")


def test_the_first_error_is_the_one_reported() -> None:
    error = refused(CHAT, {"messages": [{"role": "usr"}], "temperature": 5})
    assert error.param == "model"


# -- hypothesis: valid requests pass, one bad field is named ---------------------------------


@settings(max_examples=150, deadline=None)
@given(chat_requests())
def test_random_valid_chat_requests_pass(body: dict[str, Any]) -> None:
    hook(CHAT, body)


@settings(max_examples=150, deadline=None)
@given(anthropic_requests())
def test_random_valid_messages_requests_pass(body: dict[str, Any]) -> None:
    hook(MESSAGES, body)


def outside(low: float, high: float) -> st.SearchStrategy[float]:
    return st.floats(max_value=low, exclude_max=True) | st.floats(min_value=high, exclude_min=True)


def integers_outside(low: int | None, high: int | None) -> st.SearchStrategy[int]:
    below = st.nothing() if low is None else st.integers(max_value=low - 1)
    above = st.nothing() if high is None else st.integers(min_value=high + 1)
    return below | above


CHAT_RANGES: dict[str, st.SearchStrategy[Any]] = {
    "temperature": outside(0, 2),
    "top_p": outside(0, 1),
    "presence_penalty": outside(-2, 2),
    "frequency_penalty": outside(-2, 2),
    "max_tokens": integers_outside(1, None),
    "max_completion_tokens": integers_outside(1, None),
    "n": integers_outside(1, 128),
    "top_logprobs": integers_outside(0, 20),
    "seed": integers_outside(-(2**63), 2**63 - 1),
    "stop": st.lists(st.text(), min_size=5, max_size=8),
    "stream": st.sampled_from([0, 1, "true", [], {}]),
}
MESSAGES_RANGES: dict[str, st.SearchStrategy[Any]] = {
    "temperature": outside(0, 1),
    "top_p": outside(0, 1),
    "top_k": integers_outside(0, None),
    "max_tokens": integers_outside(0, None),
    "stream": st.sampled_from([0, 1, "true", [], {}]),
    "stop_sequences": st.text(),
}


@settings(max_examples=150, deadline=None)
@given(chat_requests(), st.data())
def test_one_chat_field_out_of_range_is_named(body: dict[str, Any], data: st.DataObject) -> None:
    param = data.draw(st.sampled_from(sorted(CHAT_RANGES)))
    body[param] = data.draw(CHAT_RANGES[param])
    error = refused(CHAT, body)
    assert error.param == param


@settings(max_examples=150, deadline=None)
@given(anthropic_requests(), st.data())
def test_one_messages_field_out_of_range_is_named(
    body: dict[str, Any], data: st.DataObject
) -> None:
    param = data.draw(st.sampled_from(sorted(MESSAGES_RANGES)))
    body[param] = data.draw(MESSAGES_RANGES[param])
    error = refused(MESSAGES, body)
    assert error.param == param


CHAT_ROLES = {"system", "developer", "user", "assistant", "tool", "function"}
CHAT_PART_TYPES = {"text", "image_url", "input_audio", "file", "refusal"}
MESSAGES_PART_TYPES = {
    "text",
    "image",
    "document",
    "search_result",
    "thinking",
    "redacted_thinking",
    "tool_use",
    "tool_result",
    "server_tool_use",
    "web_search_tool_result",
    "web_fetch_tool_result",
    "code_execution_tool_result",
    "bash_code_execution_tool_result",
    "text_editor_code_execution_tool_result",
    "tool_search_tool_result",
    "container_upload",
    "mcp_tool_use",
    "mcp_tool_result",
    "mcp_tool_listing",
    "advisor_tool_result",
    "compaction",
    "tool_addition",
    "tool_removal",
    "fallback",
}


def mutate_role_or_part(
    body: dict[str, Any], data: st.DataObject, roles: set[str], types: set[str]
) -> str:
    """Give one message an unknown role, or one of its parts an unknown type; the param."""
    index = data.draw(st.integers(0, len(body["messages"]) - 1))
    message = body["messages"][index]
    parts = message.get("content")
    if isinstance(parts, list) and parts and data.draw(st.booleans()):
        number = data.draw(st.integers(0, len(parts) - 1))
        parts[number]["type"] = data.draw(st.text().filter(lambda t: t not in types))
        return f"messages[{index}].content[{number}].type"
    message["role"] = data.draw(st.text().filter(lambda t: t not in roles))
    return f"messages[{index}].role"


@settings(max_examples=150, deadline=None)
@given(chat_requests(), st.data())
def test_an_unknown_chat_role_or_part_type_is_named(
    body: dict[str, Any], data: st.DataObject
) -> None:
    body = copy.deepcopy(body)
    param = mutate_role_or_part(body, data, CHAT_ROLES, CHAT_PART_TYPES)
    error = refused(CHAT, body)
    assert (error.param, error.code) == (param, "invalid_value")


@settings(max_examples=150, deadline=None)
@given(anthropic_requests(), st.data())
def test_an_unknown_messages_role_or_block_type_is_named(
    body: dict[str, Any], data: st.DataObject
) -> None:
    body = copy.deepcopy(body)
    param = mutate_role_or_part(body, data, {"user", "assistant"}, MESSAGES_PART_TYPES)
    error = refused(MESSAGES, body)
    assert (error.param, error.code) == (param, "invalid_value")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)
unknown_fields = st.dictionaries(
    st.text(max_size=8).map(lambda k: "x-" + k), json_values, min_size=1, max_size=3
)


def sprinkle(value: Any, extra: dict[str, Any]) -> None:
    """Add ``extra`` fields to every object of a request (not to maps: ``metadata``)."""
    if isinstance(value, dict):
        for key, item in list(value.items()):
            if key != "metadata":
                sprinkle(item, extra)
        value.update(copy.deepcopy(extra))
    elif isinstance(value, list):
        for item in value:
            sprinkle(item, extra)


@settings(max_examples=150, deadline=None)
@given(chat_requests() | anthropic_requests(), unknown_fields)
def test_unknown_fields_anywhere_pass_untouched(
    body: dict[str, Any], extra: dict[str, Any]
) -> None:
    path = MESSAGES if body["model"].startswith("claude") else CHAT
    body = copy.deepcopy(body)  # the strategies share some objects between examples
    sprinkle(body, extra)
    hook(path, body)


@settings(max_examples=500, deadline=None)
@given(st.sampled_from([CHAT, MESSAGES]), st.binary() | json_values.map(json.dumps).map(str.encode))
def test_any_body_either_passes_or_is_a_validation_error(path: bytes, body: bytes) -> None:
    """As h11's fuzz invariant: nothing but the local error escapes, whatever comes in."""
    try:
        hook(path, body)
    except ValidationError as error:
        assert error.error_status_hint == 400
        assert error.param is None or error.param


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from([(CHAT, chat_requests()), (MESSAGES, anthropic_requests())]).flatmap(
        lambda pair: st.tuples(st.just(pair[0]), pair[1])
    ),
    st.data(),
)
def test_any_single_field_replaced_either_passes_or_is_named(
    case: tuple[bytes, dict[str, Any]], data: st.DataObject
) -> None:
    """Replace any value anywhere in a valid request: it passes, or the param is there."""
    path, body = case[0], copy.deepcopy(case[1])
    where: list[int | str] = []
    value: Any = body
    while isinstance(value, dict | list) and value and data.draw(st.booleans()):
        key: int | str = (
            data.draw(st.sampled_from(sorted(value)))
            if isinstance(value, dict)
            else data.draw(st.integers(0, len(value) - 1))
        )
        where.append(key)
        value = value[key]  # type: ignore[index]
    if not where:
        return
    container: Any = body
    for key in where[:-1]:
        container = container[key]
    container[where[-1]] = data.draw(json_values)
    try:
        hook(path, body)
    except ValidationError as error:
        # Named there, or next to it: a new role or type changes what its siblings need.
        assert error.param is not None
        parent = "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in where[:-1])[1:]
        assert (
            not parent
            or error.param == parent
            or error.param.startswith((f"{parent}.", f"{parent}["))
        )


# -- inside a real exchange -------------------------------------------------------------------

PROVIDERS = {
    "oai": {"type": "openai", "base_url": "http://oai.test", "api_key": "sk-oai"},
    "claude": {"type": "anthropic", "base_url": "http://ant.test", "api_key": "sk-ant"},
}
MODELS = {
    "fast": [{"provider": "oai", "model": "gpt-4o-mini"}],
    "smart": [{"provider": "claude", "model": "claude-sonnet-4-5"}],
}


def gateway() -> Playbook:
    config = ProxyConfig.model_validate({"providers": PROVIDERS, "models": MODELS})
    return Playbook(Proxy(config, middleware=[ValidateMiddleware()]))


def shorthand() -> Playbook:
    config = ProxyConfig.model_validate({"upstream": {"base_url": "http://up.test"}})
    return Playbook(Proxy(config, middleware=[ValidateMiddleware()]))


def sent(commands: list[Command]) -> SendUpstreamRequest:
    (cmd,) = [c for c in commands if isinstance(c, SendUpstreamRequest)]
    return cmd


def test_a_valid_request_goes_upstream_as_the_very_bytes_the_client_sent() -> None:
    raw = json.dumps(CHAT_EXAMPLES["functions"]).encode()
    assert sent(shorthand().request(body=raw)).body is raw


@pytest.mark.parametrize(
    ("model", "target"), [("smart", MESSAGES), ("fast", CHAT)], ids=["anthropic", "openai"]
)
def test_a_valid_messages_request_is_routed_and_translated_as_usual(
    model: str, target: bytes
) -> None:
    body = json.dumps(MESSAGES_EXAMPLES["multiple turns"] | {"model": model}).encode()
    cmd = sent(gateway().request(target=MESSAGES, body=body))
    assert cmd.target == target


def test_an_invalid_chat_request_is_a_400_naming_the_param_and_never_leaves() -> None:
    pb = gateway()
    body = json.dumps(chat(model="fast", temperature=3)).encode()
    out = pb.request(body=body)
    assert not any(isinstance(c, SendUpstreamRequest) for c in out)
    status, _, data, complete = client_view(out)
    assert (status, complete) == (400, True)
    assert json.loads(data) == {
        "error": {
            "message": "Invalid 'temperature': decimal above maximum value. "
            "Expected a value <= 2, but got 3 instead.",
            "type": "invalid_request_error",
            "param": "temperature",
            "code": "decimal_above_max_value",
        }
    }
    assert pb.ex.outcome == "rejected"


def test_an_anthropic_client_is_refused_in_anthropics_shape() -> None:
    pb = gateway()
    body = json.dumps(messages(model="smart", messages=[{"role": "system", "content": "x"}]))
    out = pb.request(target=MESSAGES, body=body.encode())
    assert not any(isinstance(c, SendUpstreamRequest) for c in out)
    status, _, data, _ = client_view(out)
    assert status == 400
    assert json.loads(data) == {
        "type": "error",
        "error": {
            "type": "invalid_request_error",
            "message": "Invalid value for 'messages[0].role': 'system'. "
            "Supported values are: 'user' and 'assistant'.",
        },
    }


def test_a_body_that_is_not_json_is_refused_before_routing() -> None:
    status, _, data, _ = client_view(shorthand().request(body=b"{oops"))
    assert status == 400 and json.loads(data)["error"]["code"] == "invalid_json"
