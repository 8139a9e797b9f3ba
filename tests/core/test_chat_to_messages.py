"""OpenAI chat client -> Anthropic Messages upstream translation.

The modules: core.gateway._chat_request_to_messages (the request) and
core.gateway._messages_response_to_chat (the answer, the error, the stream).

No sockets. The fixtures are the providers' documented examples: OpenAI's API
reference and guides (chat completion requests, images, function calling,
structured outputs) and Anthropic's (Messages request and response, vision,
tool use, the streaming page's text and tool-use streams, errors). The
requests these modules produce are checked against strict pydantic models of
the Messages API written here; its responses and chunks against the openai
SDK's own models and stream accumulator.
"""

from __future__ import annotations

import base64
import itertools
import json
import pathlib
from typing import Annotated, Any, Literal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from pydantic import BaseModel, ConfigDict, Field, model_validator

from core._errors import RemoteProtocolError
from core._sse import SSEDecoder
from core.gateway._chat_request_to_messages import chat_request_to_messages
from core.gateway._messages_response_to_chat import (
    MessagesStreamToChat,
    anthropic_error_to_openai,
    messages_response_to_chat,
)

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "chat_to_messages"
MODEL = "claude-sonnet-4-5"
CREATED = 1700000000
CHUNK_HEAD = {
    "id": "chatcmpl-1",
    "object": "chat.completion.chunk",
    "created": CREATED,
    "model": "smart",
    "system_fingerprint": None,
}


def load(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def stream_bytes(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def translator(*, include_usage: bool = False) -> MessagesStreamToChat:
    return MessagesStreamToChat(
        model="smart", created=CREATED, completion_id="chatcmpl-1", include_usage=include_usage
    )


def translate(chunks: list[bytes], *, include_usage: bool = False) -> list[bytes]:
    """Decode the upstream bytes, split as given, and translate every block; then close."""
    decoder = SSEDecoder()
    stream = translator(include_usage=include_usage)
    out: list[bytes] = []
    for chunk in chunks:
        for block in decoder.feed(chunk):
            out += stream.feed(block)
    for block in decoder.close():
        out += stream.feed(block)
    out += stream.close()
    return out


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted(cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def payloads(blocks: list[bytes]) -> list[Any]:
    """The JSON of each ``data: ...`` block; the string "[DONE]" for the last one."""
    out: list[Any] = []
    for block in blocks:
        assert block.startswith(b"data: ")
        assert block.endswith(b"\n\n")
        assert block.count(b"\n") == 2
        data = block[6:-2]
        out.append("[DONE]" if data == b"[DONE]" else json.loads(data))
    return out


def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    return {
        **CHUNK_HEAD,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }


def accumulate(chunks: list[Any]) -> dict[str, Any]:
    """Reassemble a chat completion from its chunks, as a client does."""
    content: list[str] = []
    calls: dict[int, dict[str, Any]] = {}
    finish: list[str] = []
    usage = None
    for item in chunks:
        if item == "[DONE]":
            continue
        if not item["choices"]:
            usage = item["usage"]
            continue
        (choice,) = item["choices"]
        delta = choice["delta"]
        if delta.get("content"):
            content.append(delta["content"])
        for call in delta.get("tool_calls", ()):
            entry = calls.setdefault(call["index"], {"arguments": ""})
            for key in ("id", "type"):
                if key in call:
                    assert key not in entry
                    entry[key] = call[key]
            function = call["function"]
            if "name" in function:
                entry["name"] = function["name"]
            entry["arguments"] += function["arguments"]
        if choice["finish_reason"] is not None:
            finish.append(choice["finish_reason"])
    assert list(calls) == list(range(len(calls)))
    return {"content": "".join(content), "tool_calls": calls, "finish": finish, "usage": usage}


# --- a strict model of the Anthropic Messages API request ---------------------


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


NonEmpty = Annotated[str, Field(min_length=1)]
ToolName = Annotated[str, Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]


class TextBlock(Strict):
    type: Literal["text"]
    text: NonEmpty


class Base64Source(Strict):
    type: Literal["base64"]
    media_type: Literal["image/jpeg", "image/png", "image/gif", "image/webp"]
    data: NonEmpty


class URLSource(Strict):
    type: Literal["url"]
    url: Annotated[str, Field(pattern=r"^https?://")]


class ImageBlock(Strict):
    type: Literal["image"]
    source: Annotated[Base64Source | URLSource, Field(discriminator="type")]


class ToolUseBlock(Strict):
    type: Literal["tool_use"]
    id: NonEmpty
    name: ToolName
    input: dict[str, Any]


class ToolResultBlock(Strict):
    type: Literal["tool_result"]
    tool_use_id: NonEmpty
    content: NonEmpty | Annotated[list[TextBlock], Field(min_length=1)] | None = None


UserBlock = Annotated[TextBlock | ImageBlock | ToolResultBlock, Field(discriminator="type")]
AssistantBlock = Annotated[TextBlock | ToolUseBlock, Field(discriminator="type")]


class UserMessage(Strict):
    role: Literal["user"]
    content: NonEmpty | Annotated[list[UserBlock], Field(min_length=1)]


class AssistantMessage(Strict):
    role: Literal["assistant"]
    content: NonEmpty | Annotated[list[AssistantBlock], Field(min_length=1)]


class InputSchema(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    type: Literal["object"]


class Tool(Strict):
    name: ToolName
    description: str | None = None
    input_schema: InputSchema
    strict: bool | None = None


class ToolChoiceAuto(Strict):
    type: Literal["auto"]
    disable_parallel_tool_use: bool | None = None


class ToolChoiceAny(Strict):
    type: Literal["any"]
    disable_parallel_tool_use: bool | None = None


class ToolChoiceTool(Strict):
    type: Literal["tool"]
    name: ToolName
    disable_parallel_tool_use: bool | None = None


class ToolChoiceNone(Strict):
    type: Literal["none"]


ToolChoice = Annotated[
    ToolChoiceAuto | ToolChoiceAny | ToolChoiceTool | ToolChoiceNone, Field(discriminator="type")
]


class Metadata(Strict):
    user_id: str | None = None


class JSONOutputFormat(Strict):
    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")


class OutputConfig(Strict):
    format: JSONOutputFormat


class MessagesRequest(Strict):
    model: NonEmpty
    max_tokens: Annotated[int, Field(ge=1)]
    messages: Annotated[list[UserMessage | AssistantMessage], Field(min_length=1)]
    system: NonEmpty | Annotated[list[TextBlock], Field(min_length=1)] | None = None
    stop_sequences: list[str] | None = None
    temperature: Annotated[float, Field(ge=0, le=1)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    metadata: Metadata | None = None
    tools: Annotated[list[Tool], Field(min_length=1)] | None = None
    tool_choice: ToolChoice | None = None
    stream: bool | None = None
    output_config: OutputConfig | None = None

    @model_validator(mode="after")
    def conversation_rules(self) -> MessagesRequest:
        roles = [m.role for m in self.messages]
        assert roles[0] == "user", "the first message must be a user message"
        assert all(a != b for a, b in itertools.pairwise(roles)), "roles must alternate"
        previous_tool_uses: set[str] = set()
        for message in self.messages:
            blocks = message.content if isinstance(message.content, list) else []
            if isinstance(message, UserMessage):
                kinds = [b.type for b in blocks]
                results = kinds.count("tool_result")
                assert kinds[:results] == ["tool_result"] * results, "tool results come first"
                for block in blocks:
                    if isinstance(block, ToolResultBlock):
                        assert block.tool_use_id in previous_tool_uses, "unanswerable tool_result"
                previous_tool_uses = set()
            else:
                previous_tool_uses = {b.id for b in blocks if isinstance(b, ToolUseBlock)}
        names = [t.name for t in self.tools or ()]
        assert len(names) == len(set(names)), "tool names must be unique"
        if self.tool_choice is not None:
            assert names, "tool_choice needs tools"
            if isinstance(self.tool_choice, ToolChoiceTool):
                assert self.tool_choice.name in names
        return self


# --- documented requests and responses ----------------------------------------


@pytest.mark.parametrize("case", load("requests.json"), ids=lambda case: case["name"])
def test_documented_requests(case: dict[str, Any]) -> None:
    translated = chat_request_to_messages(case["openai"], model=MODEL)
    assert translated == case["anthropic"]
    MessagesRequest.model_validate(translated)


def test_request_is_not_modified_and_model_is_the_deployments() -> None:
    body = load("requests.json")[6]["openai"]
    before = json.dumps(body, sort_keys=True)
    translated = chat_request_to_messages(body, model="claude-opus-4-6", default_max_tokens=77)
    assert json.dumps(body, sort_keys=True) == before
    assert translated["model"] == "claude-opus-4-6"
    assert translated["max_tokens"] == 77


@pytest.mark.parametrize("case", load("responses.json"), ids=lambda case: case["name"])
def test_documented_responses(case: dict[str, Any]) -> None:
    translated = messages_response_to_chat(case["anthropic"], model="smart", created=CREATED)
    assert translated == case["openai"]
    ChatCompletion.model_validate(translated)


def test_response_completion_id_and_tool_calls_only() -> None:
    body = load("responses.json")[1]["anthropic"]
    body = {**body, "content": body["content"][1:]}
    translated = messages_response_to_chat(
        body, model="smart", created=CREATED, completion_id="chatcmpl-7"
    )
    assert translated["id"] == "chatcmpl-7"
    message = translated["choices"][0]["message"]
    assert message["content"] is None  # only tool calls: null, as OpenAI sends it
    assert json.loads(message["tool_calls"][0]["function"]["arguments"]) == {
        "location": "San Francisco, CA",
        "unit": "celsius",
    }


@pytest.mark.parametrize(
    ("stop_reason", "finish_reason"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("model_context_window_exceeded", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("pause_turn", "stop"),
        ("a_future_reason", "stop"),
        (None, "stop"),
    ],
)
def test_finish_reasons(stop_reason: str | None, finish_reason: str) -> None:
    body: dict[str, Any] = {"id": "msg_1", "content": [], "stop_reason": stop_reason, "usage": {}}
    translated = messages_response_to_chat(body, model="smart", created=CREATED)
    assert translated["choices"][0]["finish_reason"] == finish_reason
    assert translated["choices"][0]["message"]["content"] == ""
    assert translated["usage"]["total_tokens"] == 0


@pytest.mark.parametrize(
    "body",
    [
        {"id": "msg_1", "content": "text", "usage": {}},
        {"id": "msg_1", "content": [], "usage": None},
        {"id": 7, "content": [], "usage": {}},
        {"id": "msg_1", "content": ["text"], "usage": {}},
        {"id": "msg_1", "content": [{"type": "text", "text": 7}], "usage": {}},
        {"id": "msg_1", "content": [{"type": "tool_use", "id": "t", "name": "f"}], "usage": {}},
        {"id": "msg_1", "content": [], "usage": {"input_tokens": -1}},
        {"id": "msg_1", "content": [], "usage": {"output_tokens": "3"}},
        {"id": "msg_1", "content": [], "usage": {"output_tokens": True}},
    ],
)
def test_malformed_responses(body: dict[str, Any]) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        messages_response_to_chat(body, model="smart", created=CREATED)
    error = info.value
    assert (error.error_status_hint, error.error_type, error.code) == (
        502,
        "upstream_error",
        "upstream_protocol_error",
    )


# --- documented streams -------------------------------------------------------


def test_documented_text_stream() -> None:
    out = translate([stream_bytes("anthropic_text_stream.sse")])
    assert payloads(out) == [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Hello"}),
        chunk({"content": "!"}),
        chunk({}, "stop"),
        "[DONE]",
    ]
    assert out[1] == (
        b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1700000000,'
        b'"model":"smart","system_fingerprint":null,"choices":[{"index":0,'
        b'"delta":{"content":"Hello"},"logprobs":null,"finish_reason":null}]}\n\n'
    )


def test_documented_text_stream_with_usage() -> None:
    stream = translator(include_usage=True)
    decoder = SSEDecoder()
    out: list[bytes] = []
    for block in decoder.feed(stream_bytes("anthropic_text_stream.sse")):
        out += stream.feed(block)
    assert stream.close() == []
    usage_null = {"usage": None}
    assert payloads(out) == [
        {**chunk({"role": "assistant", "content": ""}), **usage_null},
        {**chunk({"content": "Hello"}), **usage_null},
        {**chunk({"content": "!"}), **usage_null},
        {**chunk({}, "stop"), **usage_null},
        {
            **CHUNK_HEAD,
            "choices": [],
            "usage": {
                "prompt_tokens": 25,
                "completion_tokens": 15,
                "total_tokens": 40,
                "prompt_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            },
        },
        "[DONE]",
    ]
    assert stream.usage == {
        "input_tokens": 25,
        "output_tokens": 15,
        "cache_read_input_tokens": 0,
        "cache_creation_input_tokens": 0,
    }
    for item in payloads(out)[:-1]:
        ChatCompletionChunk.model_validate(item)


def test_documented_tool_use_stream() -> None:
    out = payloads(translate([stream_bytes("anthropic_tool_stream.sse")]))
    words = ["Okay", ",", " let", "'s", " check", " the", " weather", " for", " San"]
    words += [" Francisco", ",", " CA", ":"]
    arguments = ['{"location":', ' "San', " Francisc", "o,", ' CA"', ",", ' "unit": "fah']
    arguments += ['renheit"}']
    assert out == [
        chunk({"role": "assistant", "content": ""}),
        *(chunk({"content": word}) for word in words),
        chunk(
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": ""},
                    }
                ]
            }
        ),
        *(
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": part}}]})
            for part in arguments  # the empty first partial_json is not sent
        ),
        chunk({}, "tool_calls"),
        "[DONE]",
    ]


def test_documented_tool_use_stream_through_the_openai_sdk_accumulator() -> None:
    state: ChatCompletionStreamState[None] = ChatCompletionStreamState()
    for item in payloads(translate([stream_bytes("anthropic_tool_stream.sse")]))[:-1]:
        state.handle_chunk(ChatCompletionChunk.model_validate(item))
    completion = state.get_final_completion()
    (choice,) = completion.choices
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Okay, let's check the weather for San Francisco, CA:"
    (call,) = choice.message.tool_calls or []
    assert call.id == "toolu_01T1x1fJ34qAmk2tNTrN7Up6"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {
        "location": "San Francisco, CA",
        "unit": "fahrenheit",
    }


def test_documented_error_event() -> None:
    """The streaming page's example: an overloaded_error in the middle of a stream."""
    stream = translator()
    decoder = SSEDecoder()
    text = stream_bytes("anthropic_text_stream.sse")
    head = text[: text.index(b"event: content_block_stop")]
    out: list[bytes] = []
    for block in decoder.feed(head):
        out += stream.feed(block)
    error = (
        b"event: error\n"
        b'data: {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}'
        b"\n\n"
    )
    assert stream.feed(error) == [
        b'event: error\ndata: {"error":{"message":"Overloaded","type":"server_error",'
        b'"param":null,"code":"overloaded"}}\n\n'
    ]
    # Nothing more: not the rest of the stream, not an error from close().
    assert stream.feed(b'data: {"type": "message_stop"}\n\n') == []
    assert stream.close() == []
    assert len(out) == 3


def test_stream_that_stops_short_ends_with_an_error_event() -> None:
    text = stream_bytes("anthropic_text_stream.sse")
    out = translate([text[: text.index(b"event: message_stop")]])
    assert out[-1] == (
        b'event: error\ndata: {"error":{"message":"the upstream stream ended before '
        b'message_stop","type":"upstream_error","param":null,"code":"upstream_protocol_error"}}'
        b"\n\n"
    )
    assert payloads(out[:-1])[-1] == chunk({}, "stop")


def test_stream_without_message_delta_still_finishes() -> None:
    blocks = [
        b'data: {"type":"message_start","message":{"usage":{"input_tokens":3}}}\n\n',
        b'data: {"type":"message_delta","delta":{"stop_reason":null}}\n\n',
        b'data: {"type":"message_stop"}\n\n',
    ]
    stream = translator(include_usage=True)
    out = [b for block in blocks for b in stream.feed(block)]
    assert payloads(out)[1:3] == [
        {**chunk({}, "stop"), "usage": None},
        {
            **CHUNK_HEAD,
            "choices": [],
            "usage": {
                "prompt_tokens": 3,
                "completion_tokens": 0,
                "total_tokens": 3,
                "prompt_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            },
        },
    ]


def test_several_message_deltas_one_finish_chunk_latest_usage() -> None:
    blocks = [
        b'event: message_start\ndata: {"type":"message_start","message":{"usage":'
        b'{"input_tokens":10,"cache_read_input_tokens":90,"output_tokens":1}}}\n\n',
        b'data: {"type":"message_delta","delta":{"stop_reason":"max_tokens"},'
        b'"usage":{"output_tokens":5}}\n\n',
        b'data: {"type":"message_delta","delta":{"stop_reason":"end_turn"},'
        b'"usage":{"output_tokens":7,"input_tokens":null,"cache_creation_input_tokens":4,'
        b'"output_tokens_details":{"thinking_tokens":2}}}\n\n',
        b'data: {"type":"message_stop"}\n\n',
    ]
    stream = translator(include_usage=True)
    out = payloads([b for block in blocks for b in stream.feed(block)])
    assert [c["choices"][0]["finish_reason"] for c in out[1:2]] == ["length"]
    assert out[2]["usage"] == {
        "prompt_tokens": 104,
        "completion_tokens": 7,
        "total_tokens": 111,
        "prompt_tokens_details": {"cached_tokens": 90, "cache_write_tokens": 4},
        "completion_tokens_details": {"reasoning_tokens": 2},
    }
    assert out[3] == "[DONE]"
    assert stream.usage == {
        "input_tokens": 10,
        "output_tokens": 7,
        "cache_read_input_tokens": 90,
        "cache_creation_input_tokens": 4,
    }


def test_ignored_events_and_blocks() -> None:
    """Pings, comments, thinking, unknown event, block and delta types give nothing."""
    stream = translator()
    ignored = [
        b": a comment\n\n",
        b'data: {"type":"ping"}\n\n',
        b'data: {"type":"a_future_event","x":1}\n\n',
        b'data: {"type":"content_block_start","index":0,"content_block":{"type":"thinking",'
        b'"thinking":""}}\n\n',
        b'data: {"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta",'
        b'"thinking":"Let me think"}}\n\n',
        b'data: {"type":"content_block_delta","index":0,"delta":{"type":"signature_delta",'
        b'"signature":"EqQB"}}\n\n',
        b'data: {"type":"content_block_stop","index":0}\n\n',
        b'data: {"type":"content_block_start","index":1,"content_block":{"type":"text",'
        b'"text":""}}\n\n',
        b'data: {"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":""}}'
        b"\n\n",
        b'data: {"type":"content_block_delta","index":1,"delta":{"type":"citations_delta",'
        b'"citation":{}}}\n\n',
        b'data: {"type":"content_block_start","index":2,"content_block":{"type":"a_future_block"}}'
        b"\n\n",
    ]
    assert stream.feed(b'data: {"type":"message_start","message":{}}\n\n') != []
    for block in ignored:
        assert stream.feed(block) == [], block


def test_text_in_content_block_start_is_sent() -> None:
    stream = translator()
    stream.feed(b'data: {"type":"message_start","message":{}}\n\n')
    out = stream.feed(
        b'data: {"type":"content_block_start","index":0,"content_block":'
        b'{"type":"text","text":"Hi"}}\n\n'
    )
    assert payloads(out) == [chunk({"content": "Hi"})]


def test_blocks_in_other_sse_forms() -> None:
    """Multi-line data, CR line ends in a hand-made block, fields in another order."""
    stream = translator()
    assert payloads(stream.feed(b'data: {"type":"message_start",\ndata: "message":{}}\n\n')) == [
        chunk({"role": "assistant", "content": ""})
    ]
    out = stream.feed(
        b'id: 1\r\nevent: content_block_delta\r\ndata: {"type":"content_block_delta","index":0,'
        b'"delta":{"type":"text_delta","text":"\\u00e9t\\u00e9"}}\r\n\r\n'
    )
    assert payloads(out) == [chunk({"content": "été"})]
    assert stream.feed(b"event: ping\n\n") == []
    # JSON with whitespace around it is still JSON.
    assert stream.feed(b'data:  {"type":"ping"}\n\n') == []
    assert stream.feed(b'data: {"type":"ping"} \n\n') == []


@pytest.mark.parametrize(
    "blocks",
    [
        [b"data: not json\n\n"],
        [b'data: {"type":"ping"} x\n\n'],
        [b"event: x\ndata: \xff\n\n"],
        [b'data: ["type"]\n\n'],
        [b'data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta"}}\n\n'],
        [b'data: {"type":"content_block_start","index":0,"content_block":{"type":"text"}}\n\n'],
        [b'data: {"type":"content_block_stop","index":0}\n\n'],
        [b'data: {"type":"message_delta","delta":{}}\n\n'],
        [b'data: {"type":"message_stop"}\n\n'],
        [b'data: {"type":"message_start"}\n\n'],
        [b'data: {"type":"message_start","message":{"usage":[1,2]}}\n\n'],
        [b'data: {"type":"error","error":{"type":"api_error"}}\n\n'],
        [b'data: {"type":"error"}\n\n'],
        [b"event: ping\ndata: {}\n\n"],
        ["start", b'data: {"type":"message_start","message":{}}\n\n'],
        ["start", b'data: {"type":"content_block_delta","index":0,"delta":{}}\n\n'],
        [
            "start",
            b'data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta",'
            b'"text":1}}\n\n',
        ],
        [
            "start",
            b'data: {"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta",'
            b'"partial_json":"{"}}\n\n',
        ],
        ["start", "tool", b'data: {"type":"content_block_delta","index":0,"delta":'],
        [
            "start",
            "tool",
            b'data: {"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta",'
            b'"partial_json":{}}}\n\n',
        ],
        ["start", "tool", "tool"],
        [
            "start",
            b'data: {"type":"content_block_start","index":0,"content_block":{"type":"tool_use",'
            b'"id":1,"name":"f"}}\n\n',
        ],
        [
            "start",
            b'data: {"type":"content_block_start","index":"0","content_block":{"type":"tool_use",'
            b'"id":"t","name":"f"}}\n\n',
        ],
        ["start", b'data: {"type":"message_delta","delta":{},"usage":7}\n\n'],
        [
            "start",
            b'data: {"type":"message_delta","delta":{},"usage":{"output_tokens":-1}}\n\n',
        ],
    ],
)
def test_stream_protocol_errors(blocks: list[bytes | str]) -> None:
    named = {
        "start": b'data: {"type":"message_start","message":{}}\n\n',
        "tool": b'data: {"type":"content_block_start","index":0,"content_block":'
        b'{"type":"tool_use","id":"toolu_1","name":"f","input":{}}}\n\n',
    }
    stream = translator()
    *head, last = [named[b] if isinstance(b, str) else b for b in blocks]
    for block in head:
        stream.feed(block)
    if not last.endswith(b"\n\n"):
        last += b"\n\n"
    with pytest.raises(RemoteProtocolError) as info:
        stream.feed(last)
    assert (info.value.error_status_hint, info.value.code) == (502, "upstream_protocol_error")
    # The stream is over: the driver sends its own error event.
    assert stream.feed(named["start"]) == []
    assert stream.close() == []


# --- errors -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "anthropic_type", "openai_type", "code"),
    [
        (400, "invalid_request_error", "invalid_request_error", None),
        (401, "authentication_error", "invalid_request_error", "invalid_api_key"),
        (402, "billing_error", "insufficient_quota", "insufficient_quota"),
        (403, "permission_error", "invalid_request_error", "permission_denied"),
        (404, "not_found_error", "invalid_request_error", "not_found"),
        (409, "conflict_error", "invalid_request_error", "conflict"),
        (413, "request_too_large", "invalid_request_error", "request_too_large"),
        (429, "rate_limit_error", "rate_limit_error", "rate_limit_exceeded"),
        (500, "api_error", "server_error", None),
        (504, "timeout_error", "server_error", "timeout"),
        (529, "overloaded_error", "server_error", "overloaded"),
        (418, "teapot_error", "invalid_request_error", "teapot_error"),
        (599, "new_error", "server_error", "new_error"),
    ],
)
def test_errors(status: int, anthropic_type: str, openai_type: str, code: str | None) -> None:
    """The errors page: {"type": "error", "error": {"type", "message"}, "request_id"}."""
    body = {
        "type": "error",
        "error": {"type": anthropic_type, "message": "The requested resource could not be found."},
        "request_id": "req_011CSHoEeqs5C35K2UUqR7Fy",
    }
    translated = json.loads(anthropic_error_to_openai(status, json.dumps(body).encode()))
    assert translated == {
        "error": {
            "message": "The requested resource could not be found.",
            "type": openai_type,
            "param": None,
            "code": code,
        }
    }


@pytest.mark.parametrize(
    ("status", "body", "error_type"),
    [
        (502, b"<html>Bad Gateway</html>", "server_error"),
        (400, b"", "invalid_request_error"),
        (400, b'{"error": "no"}', "invalid_request_error"),
        (500, b'{"error": {"type": "api_error"}}', "server_error"),
        (500, b"[]", "server_error"),
    ],
)
def test_errors_without_an_anthropic_body(status: int, body: bytes, error_type: str) -> None:
    translated = json.loads(anthropic_error_to_openai(status, body))
    assert translated == {
        "error": {
            "message": f"the upstream answered HTTP {status} without an Anthropic error body",
            "type": error_type,
            "param": None,
            "code": "upstream_error",
        }
    }


def test_error_without_a_type() -> None:
    body = b'{"error": {"message": "Overloaded"}}'
    assert json.loads(anthropic_error_to_openai(529, body))["error"]["code"] == ""


# --- requests that cannot be carried, or are wrong -----------------------------

HELLO = [{"role": "user", "content": "Hello!"}]
TOOL = {"type": "function", "function": {"name": "f"}}


def refused(body: dict[str, Any]) -> RemoteProtocolError:
    with pytest.raises(RemoteProtocolError) as info:
        chat_request_to_messages(body, model=MODEL)
    assert info.value.error_status_hint == 400
    assert info.value.error_type == "invalid_request_error"
    return info.value


@pytest.mark.parametrize(
    ("extra", "param", "code"),
    [
        ({"n": 2}, "n", "unsupported_parameter"),
        ({"n": True}, "n", "unsupported_parameter"),
        ({"logprobs": True}, "logprobs", "unsupported_parameter"),
        ({"top_logprobs": 3}, "top_logprobs", "unsupported_parameter"),
        ({"logit_bias": {"50256": -100}}, "logit_bias", "unsupported_parameter"),
        ({"frequency_penalty": 0.5}, "frequency_penalty", "unsupported_parameter"),
        ({"presence_penalty": -1}, "presence_penalty", "unsupported_parameter"),
        ({"seed": 42}, "seed", "unsupported_parameter"),
        ({"service_tier": "auto"}, "service_tier", "unsupported_parameter"),
        ({"functions": [{"name": "f"}]}, "functions", "unsupported_parameter"),
        ({"function_call": "auto"}, "function_call", "unsupported_parameter"),
        ({"audio": {"voice": "alloy", "format": "wav"}}, "audio", "unsupported_parameter"),
        ({"modalities": ["text", "audio"]}, "modalities", "unsupported_parameter"),
        (
            {"prediction": {"type": "content", "content": "x"}},
            "prediction",
            "unsupported_parameter",
        ),
        ({"store": True}, "store", "unsupported_parameter"),
        ({"metadata": {"k": "v"}}, "metadata", "unsupported_parameter"),
        ({"reasoning_effort": "low"}, "reasoning_effort", "unsupported_parameter"),
        ({"verbosity": "low"}, "verbosity", "unsupported_parameter"),
        ({"web_search_options": {}}, "web_search_options", "unsupported_parameter"),
        ({"prompt_cache_key": "k"}, "prompt_cache_key", "unsupported_parameter"),
        ({"prompt_cache_retention": "24h"}, "prompt_cache_retention", "unsupported_parameter"),
        (
            {"prompt_cache_options": {"mode": "explicit"}},
            "prompt_cache_options",
            "unsupported_parameter",
        ),
        (
            {"moderation": {"model": "omni-moderation-latest"}},
            "moderation",
            "unsupported_parameter",
        ),
        ({"thinking": {"type": "enabled"}}, "thinking", "unknown_parameter"),
        ({"temperature": 1.5}, "temperature", "unsupported_value"),
        ({"temperature": 2.5}, "temperature", "invalid_value"),
        ({"temperature": "hot"}, "temperature", "invalid_value"),
        ({"temperature": float("nan")}, "temperature", "invalid_value"),
        ({"temperature": True}, "temperature", "invalid_value"),
        ({"top_p": 1.5}, "top_p", "invalid_value"),
        ({"max_tokens": 0}, "max_tokens", "invalid_value"),
        ({"max_tokens": 10.0}, "max_tokens", "invalid_value"),
        ({"max_completion_tokens": 10, "max_tokens": 20}, "max_tokens", "invalid_value"),
        ({"stop": 1}, "stop", "invalid_value"),
        ({"stop": ["a", 1]}, "stop", "invalid_value"),
        ({"user": 1}, "user", "invalid_value"),
        ({"user": "a", "safety_identifier": "b"}, "safety_identifier", "invalid_value"),
        ({"stream": "yes"}, "stream", "invalid_value"),
        ({"stream_options": []}, "stream_options", "invalid_value"),
        ({"stream_options": {"include_usage": 1}}, "stream_options", "invalid_value"),
        ({"stream_options": {"chunk_size": 1}}, "stream_options", "unsupported_parameter"),
        ({"response_format": {"type": "json_object"}}, "response_format", "unsupported_parameter"),
        ({"response_format": "json"}, "response_format", "invalid_value"),
        ({"response_format": {"type": "xml"}}, "response_format", "invalid_value"),
        ({"response_format": {"type": "json_schema"}}, "response_format", "invalid_value"),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {}, "description": "An x"},
                }
            },
            "response_format",
            "unsupported_parameter",
        ),
        ({"tools": {}}, "tools", "invalid_value"),
        ({"tools": ["f"]}, "tools", "invalid_value"),
        (
            {"tools": [{"type": "custom", "custom": {"name": "f"}}]},
            "tools",
            "unsupported_parameter",
        ),
        ({"tools": [{"type": "function", "function": {}}]}, "tools", "invalid_value"),
        ({"tools": [{**TOOL, "cache_control": {}}]}, "tools", "unsupported_parameter"),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "description": 1}}]},
            "tools",
            "invalid_value",
        ),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": []}}]},
            "tools",
            "invalid_value",
        ),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "strict": "yes"}}]},
            "tools",
            "invalid_value",
        ),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "examples": []}}]},
            "tools",
            "unsupported_parameter",
        ),
        ({"tools": [TOOL], "tool_choice": "sometimes"}, "tool_choice", "invalid_value"),
        ({"tools": [TOOL], "tool_choice": {"type": "function"}}, "tool_choice", "invalid_value"),
        ({"tools": [TOOL], "tool_choice": {"type": "any"}}, "tool_choice", "invalid_value"),
        (
            {"tools": [TOOL], "tool_choice": {"type": "allowed_tools", "allowed_tools": {}}},
            "tool_choice",
            "unsupported_parameter",
        ),
        ({"tool_choice": "required"}, "tool_choice", "invalid_value"),
        ({"tools": [TOOL], "parallel_tool_calls": "no"}, "parallel_tool_calls", "invalid_value"),
    ],
)
def test_parameters_that_cannot_be_carried(extra: dict[str, Any], param: str, code: str) -> None:
    error = refused({"model": "gpt-4.1", "messages": HELLO, **extra})
    assert (error.param, error.code) == (param, code)


@pytest.mark.parametrize(
    ("messages", "code"),
    [
        ("Hello!", "invalid_value"),
        ([], "invalid_value"),
        (["Hello!"], "invalid_value"),
        ([{"role": "system", "content": "Be brief."}], "invalid_value"),
        ([{"role": "user", "content": ""}], "invalid_value"),
        ([{"role": "assistant", "content": "Hi"}, *HELLO], "invalid_value"),
        ([{"role": "robot", "content": "Hi"}], "invalid_value"),
        ([{"role": "function", "name": "f", "content": "1"}], "unsupported_value"),
        ([{"role": "user", "content": "Hi", "name": "alice"}], "unsupported_value"),
        ([{"role": "user", "content": "Hi", "cache_control": {}}], "unsupported_value"),
        ([{"role": "system", "content": 7}, *HELLO], "invalid_value"),
        ([{"role": "user", "content": 7}], "invalid_value"),
        ([{"role": "user", "content": ["Hi"]}], "invalid_value"),
        ([{"role": "user", "content": [{"type": "text"}]}], "invalid_value"),
        (
            [{"role": "user", "content": [{"type": "text", "text": "a", "x": 1}]}],
            "unsupported_value",
        ),
        (
            [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}],
            "unsupported_value",
        ),
        ([{"role": "user", "content": [{"type": "file", "file": {}}]}], "unsupported_value"),
        ([{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}], "invalid_value"),
        (
            [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
            "invalid_value",
        ),
        (
            [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x"}}]}],
            "invalid_value",
        ),
        (
            [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,x"}}]}],
            "invalid_value",
        ),
        (
            [
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": "data:image/png,abc"}}],
                }
            ],
            "invalid_value",
        ),
        (
            [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": "data:image/bmp;base64,Qk0="}}
                    ],
                }
            ],
            "unsupported_value",
        ),
        (
            [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "image_url",
                            "image_url": {"url": "https://x/y.png", "detail": "low"},
                        }
                    ],
                }
            ],
            "unsupported_value",
        ),
        (
            [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": "https://x/y.png", "z": 1}}
                    ],
                }
            ],
            "unsupported_value",
        ),
        (
            [
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": "https://x"}, "z": 1}],
                }
            ],
            "unsupported_value",
        ),
        ([*HELLO, {"role": "assistant", "refusal": "I can't."}], "unsupported_value"),
        ([*HELLO, {"role": "assistant", "content": [{"type": "refusal"}]}], "unsupported_value"),
        ([*HELLO, {"role": "assistant", "tool_calls": {}}], "invalid_value"),
        ([*HELLO, {"role": "assistant", "tool_calls": ["f"]}], "invalid_value"),
        (
            [*HELLO, {"role": "assistant", "tool_calls": [{"type": "custom", "id": "c"}]}],
            "unsupported_value",
        ),
        (
            [*HELLO, {"role": "assistant", "tool_calls": [{"type": "function", "id": "c"}]}],
            "invalid_value",
        ),
        (
            [
                *HELLO,
                {
                    "role": "assistant",
                    "tool_calls": [
                        {"type": "function", "id": "c", "function": {"name": "f"}, "index": 0}
                    ],
                },
            ],
            "unsupported_value",
        ),
        (
            [
                *HELLO,
                {
                    "role": "assistant",
                    "tool_calls": [{"type": "function", "id": "c", "function": {"name": "f"}}],
                },
            ],
            "invalid_value",
        ),
        (
            [
                *HELLO,
                {
                    "role": "assistant",
                    "tool_calls": [
                        {"type": "function", "id": "c", "function": {"name": "f", "arguments": "{"}}
                    ],
                },
            ],
            "invalid_value",
        ),
        (
            [
                *HELLO,
                {
                    "role": "assistant",
                    "tool_calls": [
                        {
                            "type": "function",
                            "id": "c",
                            "function": {"name": "f", "arguments": "[]"},
                        }
                    ],
                },
            ],
            "invalid_value",
        ),
        ([*HELLO, {"role": "tool", "content": "1"}], "invalid_value"),
        ([*HELLO, {"role": "tool", "tool_call_id": "c", "content": 1}], "invalid_value"),
    ],
)
def test_messages_that_cannot_be_carried(messages: Any, code: str) -> None:
    error = refused({"model": "gpt-4.1", "messages": messages})
    assert (error.param, error.code) == ("messages", code)


def test_request_edge_cases() -> None:
    def translated(**extra: Any) -> dict[str, Any]:
        return chat_request_to_messages({"messages": HELLO, **extra}, model=MODEL)

    # Defaults and nulls carry nothing.
    assert translated(
        n=None, seed=None, logprobs=False, top_logprobs=0, logit_bias={}, store=False,
        metadata={}, functions=[], function_call="none", modalities=["text"],
        stop=[], tools=[], response_format={"type": "text"}, stream_options=None,
    ) == {"model": MODEL, "max_tokens": 4096, "messages": HELLO}  # fmt: skip
    # Without tools, tool_choice auto/none and parallel_tool_calls mean nothing.
    assert "tool_choice" not in translated(tool_choice="none", parallel_tool_calls=False)
    # With tools: none stays none; parallel_tool_calls false makes an auto choice.
    tools = [TOOL]
    assert translated(tools=tools, tool_choice="none", parallel_tool_calls=False)[
        "tool_choice"
    ] == {"type": "none"}
    assert translated(tools=tools, parallel_tool_calls=False)["tool_choice"] == {
        "type": "auto",
        "disable_parallel_tool_use": True,
    }
    assert "tool_choice" not in translated(tools=tools, parallel_tool_calls=True)
    empty_schema = {"name": "f", "input_schema": {"type": "object", "properties": {}}}
    assert translated(tools=tools)["tools"] == [empty_schema]
    no_parameters = {"type": "function", "function": {"name": "f", "parameters": {}}}
    assert translated(tools=[no_parameters])["tools"] == [empty_schema]
    # Equal max_tokens and max_completion_tokens, user and safety_identifier agree.
    assert translated(max_tokens=5, max_completion_tokens=5, user="u", safety_identifier="u")[
        "metadata"
    ] == {"user_id": "u"}
    assert translated(temperature=1, top_p=0)["temperature"] == 1
    # Empty parts and messages vanish; an empty tool result has no content; an
    # assistant message of empty arguments (a streamed call without parameters).
    body = translated(
        messages=[
            {"role": "system", "content": ""},
            {
                "role": "user",
                "content": [{"type": "text", "text": ""}, {"type": "text", "text": "Hi"}],
            },
            {"role": "assistant", "content": "", "annotations": [{"type": "url_citation"}]},
            {"role": "user", "content": []},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "c", "type": "function", "function": {"name": "f", "arguments": ""}}
                ],
            },
            {"role": "tool", "tool_call_id": "c", "content": ""},
            {"role": "tool", "tool_call_id": "c", "content": [{"type": "text", "text": ""}]},
        ]
    )
    assert "system" not in body
    assert body["messages"] == [
        {"role": "user", "content": "Hi"},
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "c", "name": "f", "input": {}}],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "c"},
                {"type": "tool_result", "tool_use_id": "c"},
            ],
        },
    ]


# --- property: valid requests translate to valid Messages requests ------------

TEXT = st.text(min_size=1, max_size=12).filter(str.strip)
NAMES = st.from_regex(r"[a-zA-Z0-9_-]{1,64}", fullmatch=True)
MEDIA = st.sampled_from(["image/jpeg", "image/png", "image/gif", "image/webp"])


def text_parts(min_size: int = 1) -> st.SearchStrategy[list[dict[str, Any]]]:
    return st.lists(
        st.builds(lambda t: {"type": "text", "text": t}, TEXT), min_size=min_size, max_size=2
    )


image_parts = st.one_of(
    st.builds(
        lambda media, data, detail: {
            "type": "image_url",
            "image_url": {
                "url": f"data:{media};base64,{base64.b64encode(data).decode()}",
                **detail,
            },
        },
        MEDIA,
        st.binary(min_size=1, max_size=12),
        st.sampled_from([{}, {"detail": "auto"}, {"detail": None}]),
    ),
    st.builds(
        lambda scheme, path: {
            "type": "image_url",
            "image_url": {"url": f"{scheme}://example.com/{path}.png"},
        },
        st.sampled_from(["http", "https"]),
        st.from_regex(r"[a-z0-9]{1,8}", fullmatch=True),
    ),
)
user_content = st.one_of(
    TEXT,
    st.lists(st.one_of(text_parts().map(lambda p: p[0]), image_parts), min_size=1, max_size=3),
)
system_messages = st.builds(
    lambda role, content: {"role": role, "content": content},
    st.sampled_from(["system", "developer"]),
    st.one_of(TEXT, text_parts()),
)
user_messages = st.builds(lambda content: {"role": "user", "content": content}, user_content)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=2) | st.dictionaries(st.text(max_size=4), inner, max_size=2)
    ),
    max_leaves=4,
)


@st.composite
def conversations(draw: st.DrawFn, tool_names: list[str]) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = draw(st.lists(system_messages, max_size=2))
    ids = itertools.count()
    for _ in range(draw(st.integers(1, 3))):
        messages += draw(st.lists(user_messages, min_size=1, max_size=2))
        if draw(st.booleans()):
            messages.append(draw(system_messages))
        if not draw(st.booleans()):
            continue
        calls = [
            {
                "id": f"call_{next(ids)}",
                "type": "function",
                "function": {
                    "name": draw(st.sampled_from(tool_names or ["f"])),
                    "arguments": json.dumps(
                        draw(st.dictionaries(st.text(max_size=5), json_values, max_size=3))
                    ),
                },
            }
            for _ in range(draw(st.integers(0, 2)))
        ]
        content = draw(
            st.one_of(TEXT, text_parts(), st.none()) if calls else st.one_of(TEXT, text_parts())
        )
        assistant: dict[str, Any] = {"role": "assistant", "content": content}
        if calls:
            assistant["tool_calls"] = calls
        messages.append(assistant)
        for call in draw(st.permutations(calls)):
            result = draw(st.one_of(TEXT, text_parts()))
            messages.append({"role": "tool", "tool_call_id": call["id"], "content": result})
    return messages


@st.composite
def chat_requests(draw: st.DrawFn) -> dict[str, Any]:
    tool_names = draw(st.lists(NAMES, unique=True, max_size=3))
    body: dict[str, Any] = {"model": "gpt-4.1", "messages": draw(conversations(tool_names))}
    optional: dict[str, st.SearchStrategy[Any]] = {
        "temperature": st.floats(0, 1) | st.sampled_from([0, 1]),
        "top_p": st.floats(0, 1),
        "stop": TEXT | st.lists(TEXT, max_size=4),
        "user": TEXT,
        "stream": st.booleans(),
        "stream_options": st.fixed_dictionaries({}, optional={"include_usage": st.booleans()}),
        "response_format": st.sampled_from(
            [
                {"type": "text"},
                {
                    "type": "json_schema",
                    "json_schema": {
                        "name": "answer",
                        "strict": True,
                        "schema": {"type": "object", "properties": {"a": {"type": "string"}}},
                    },
                },
            ]
        ),
        "n": st.just(1),
        "logprobs": st.just(False),
        "frequency_penalty": st.just(0),
        "presence_penalty": st.just(0.0),
        "seed": st.none(),
        "store": st.just(False),
        "metadata": st.just({}),
    }
    for name, strategy in optional.items():
        if draw(st.booleans()):
            body[name] = draw(strategy)
    tokens = draw(st.integers(1, 200_000))
    body.update(
        draw(st.sampled_from([{}, {"max_tokens": tokens}, {"max_completion_tokens": tokens}]))
    )
    if tool_names:
        body["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": name,
                    **draw(
                        st.fixed_dictionaries(
                            {},
                            optional={
                                "description": st.text(max_size=10),
                                "parameters": st.just(
                                    {"type": "object", "properties": {"x": {"type": "string"}}}
                                ),
                                "strict": st.booleans(),
                            },
                        )
                    ),
                },
            }
            for name in tool_names
        ]
        choices = ["auto", "none", "required"] + [
            {"type": "function", "function": {"name": name}} for name in tool_names
        ]
        if draw(st.booleans()):
            body["tool_choice"] = draw(st.sampled_from(choices))
        if draw(st.booleans()):
            body["parallel_tool_calls"] = draw(st.booleans())
    elif draw(st.booleans()):
        body["tool_choice"] = draw(st.sampled_from(["auto", "none"]))
    return body


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(chat_requests())
def test_valid_requests_translate_to_valid_messages_requests(body: dict[str, Any]) -> None:
    translated = chat_request_to_messages(body, model=MODEL)
    MessagesRequest.model_validate(translated)
    assert translated["max_tokens"] == body.get(
        "max_tokens", body.get("max_completion_tokens", 4096)
    )
    # Nothing said is lost: every non-empty text reaches the request.
    said = [m["content"] for m in body["messages"] if isinstance(m["content"], str)]
    dumped = json.dumps(translated)
    assert all(json.dumps(text)[1:-1] in dumped for text in said)


REFUSED: dict[str, st.SearchStrategy[Any]] = {
    "n": st.integers(2, 8),
    "logprobs": st.just(True),
    "top_logprobs": st.integers(1, 20),
    "logit_bias": st.dictionaries(
        st.integers(0, 100_000).map(str), st.integers(-100, 100), min_size=1, max_size=3
    ),
    "frequency_penalty": st.floats(-2, 2).filter(bool),
    "presence_penalty": st.floats(-2, 2).filter(bool),
    "seed": st.integers(),
    "service_tier": st.sampled_from(["auto", "default", "flex", "scale", "priority"]),
    "functions": st.just([{"name": "f", "parameters": {"type": "object"}}]),
    "function_call": st.sampled_from(["auto", {"name": "f"}]),
    "audio": st.just({"voice": "alloy", "format": "wav"}),
    "modalities": st.just(["text", "audio"]),
    "prediction": st.builds(lambda t: {"type": "content", "content": t}, TEXT),
    "store": st.just(True),
    "metadata": st.dictionaries(TEXT, TEXT, min_size=1, max_size=2),
    "reasoning_effort": st.sampled_from(["none", "minimal", "low", "medium", "high"]),
    "verbosity": st.sampled_from(["low", "medium", "high"]),
    "web_search_options": st.just({"search_context_size": "low"}),
    "prompt_cache_key": TEXT,
    "prompt_cache_retention": st.sampled_from(["in_memory", "24h"]),
    "prompt_cache_options": st.just({"mode": "explicit"}),
    "moderation": st.just({"model": "omni-moderation-latest"}),
    "temperature": st.floats(1, 2, exclude_min=True),
    "response_format": st.just({"type": "json_object"}),
    "tool_choice": st.just({"type": "allowed_tools", "allowed_tools": {"mode": "auto"}}),
    "tools": st.just([{"type": "custom", "custom": {"name": "grammar"}}]),
}


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(chat_requests(), st.sampled_from(sorted(REFUSED)), st.data())
def test_parameters_that_cannot_be_carried_always_raise(
    body: dict[str, Any], param: str, data: st.DataObject
) -> None:
    body = {**body, param: data.draw(REFUSED[param])}
    error = refused(body)
    assert error.param == param
    assert error.code in ("unsupported_parameter", "unsupported_value")


# --- property: streams --------------------------------------------------------


@st.composite
def anthropic_messages(draw: st.DrawFn) -> dict[str, Any]:
    """A complete Anthropic message: text, tool_use and thinking blocks, with usage."""
    block = st.one_of(
        st.builds(lambda t: {"type": "text", "text": t}, st.text(max_size=30)),
        st.builds(
            lambda i, name, tool_input: {
                "type": "tool_use",
                "id": f"toolu_{i}",
                "name": name,
                "input": tool_input,
            },
            st.integers(0, 10**6),
            NAMES,
            st.dictionaries(st.text(max_size=5), json_values, max_size=3),
        ),
        st.builds(
            lambda t: {"type": "thinking", "thinking": t, "signature": "EqQB"}, st.text(max_size=10)
        ),
    )
    usage = {
        "input_tokens": draw(st.integers(0, 10**6)),
        "output_tokens": draw(st.integers(1, 10**5)),
    }
    for key in ("cache_read_input_tokens", "cache_creation_input_tokens"):
        if draw(st.booleans()):
            usage[key] = draw(st.integers(0, 10**6))
    return {
        "id": "msg_01",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5",
        "content": draw(st.lists(block, max_size=4)),
        "stop_reason": draw(
            st.sampled_from(["end_turn", "max_tokens", "stop_sequence", "tool_use", "refusal"])
        ),
        "stop_sequence": None,
        "usage": usage,
    }


def pieces(draw: st.DrawFn, text: str) -> list[str]:
    cuts = draw(st.lists(st.integers(0, len(text)), max_size=4))
    bounds = [0, *sorted(cuts), len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


@st.composite
def anthropic_streams(draw: st.DrawFn) -> tuple[dict[str, Any], bytes]:
    """A message, and the event stream Anthropic would send for it."""
    message = draw(anthropic_messages())
    compact = draw(st.booleans())

    def event(data: dict[str, Any]) -> bytes:
        separators = (",", ":") if compact else (", ", ": ")
        line = json.dumps(data, separators=separators, ensure_ascii=draw(st.booleans()))
        out = f"event: {data['type']}\ndata: {line}\n\n".encode()
        if draw(st.integers(0, 5)) == 0:
            out += b'event: ping\ndata: {"type": "ping"}\n\n'
        return out

    usage = message["usage"]
    start_usage = {**usage, "output_tokens": 1}
    events = [
        event(
            {
                "type": "message_start",
                "message": {**message, "content": [], "stop_reason": None, "usage": start_usage},
            }
        )
    ]
    for index, block in enumerate(message["content"]):
        if block["type"] == "text":
            events.append(
                event(
                    {
                        "type": "content_block_start",
                        "index": index,
                        "content_block": {"type": "text", "text": ""},
                    }
                )
            )
            deltas = [{"type": "text_delta", "text": t} for t in pieces(draw, block["text"])]
        elif block["type"] == "tool_use":
            start = {**block, "input": {}}
            events.append(
                event({"type": "content_block_start", "index": index, "content_block": start})
            )
            arguments = json.dumps(
                block["input"], separators=draw(st.sampled_from([(",", ":"), (", ", ": ")]))
            )
            deltas = [
                {"type": "input_json_delta", "partial_json": p}
                for p in ["", *pieces(draw, arguments)]
            ]
        else:
            start = {"type": "thinking", "thinking": ""}
            events.append(
                event({"type": "content_block_start", "index": index, "content_block": start})
            )
            deltas = [
                {"type": "thinking_delta", "thinking": t} for t in pieces(draw, block["thinking"])
            ]
            deltas.append({"type": "signature_delta", "signature": block["signature"]})
        events += [
            event({"type": "content_block_delta", "index": index, "delta": d}) for d in deltas
        ]
        events.append(event({"type": "content_block_stop", "index": index}))
    events.append(
        event(
            {
                "type": "message_delta",
                "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                "usage": {"output_tokens": usage["output_tokens"]},
            }
        )
    )
    events.append(event({"type": "message_stop"}))
    return message, b"".join(events)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(anthropic_streams(), st.data(), st.booleans())
def test_stream_output_does_not_depend_on_the_split(
    stream: tuple[dict[str, Any], bytes], data: st.DataObject, include_usage: bool
) -> None:
    _, raw = stream
    whole = translate([raw], include_usage=include_usage)
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=12))
    assert translate(split_at(raw, cuts), include_usage=include_usage) == whole


MESSAGE_START = (
    b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_1",'
    b'"type":"message","role":"assistant","content":[],"model":"claude","stop_reason":null,'
    b'"stop_sequence":null,"usage":{"input_tokens":1,"output_tokens":1}}}\n\n'
)


def delta_blocks(text: bytes, index: int = 0) -> tuple[bytes, bytes]:
    """A text delta as Anthropic writes it (compact: copied), and the same with spaces
    (parsed); ``text`` is the JSON string's body, as it is in the block."""
    head = b"event: content_block_delta\ndata: "
    compact = b'{"type":"content_block_delta","index":%d,"delta":{"type":"text_delta","text":"'
    spaced = b'{"type": "content_block_delta", "index": %d, "delta": {"type": "text_delta", '
    spaced += b'"text": "'
    return (
        head + compact % index + text + b'"}}\n\n',
        head + spaced % index + text + b'"}}\n\n',
    )


def fed(block: bytes) -> list[bytes] | str:
    stream = translator()
    stream.feed(MESSAGE_START)
    try:
        return stream.feed(block)
    except RemoteProtocolError as error:  # its message says where, which differs
        return f"refused: {error.code}"


@given(st.text(), st.integers(0, 200), st.booleans())
def test_a_text_delta_copied_is_the_text_delta_parsed(
    text: str, index: int, ensure_ascii: bool
) -> None:
    # The usual text delta's JSON string is copied, not parsed and written again:
    # the client gets the same bytes either way.
    body = json.dumps(text, ensure_ascii=ensure_ascii)[1:-1].encode()
    copied, parsed = delta_blocks(body, index)
    out = fed(copied)
    assert out == fed(parsed)
    assert isinstance(out, list)
    assert [c["choices"][0]["delta"]["content"] for c in payloads(out)] == ([text] if text else [])


@pytest.mark.parametrize(
    "body",
    [b"caf\xc3\xa9", b"\xff", b"\xed\xa0\x80", b"a\x01b", b'a"b', b"tab\\tand\\u00e9", b""],
    ids=["utf-8", "not-utf-8", "surrogate", "control", "quote", "escapes", "empty"],
)
def test_a_text_delta_that_cannot_be_copied_is_parsed(body: bytes) -> None:
    copied, parsed = delta_blocks(body)
    assert fed(copied) == fed(parsed)


def test_stream_output_does_not_depend_on_the_split_bytewise() -> None:
    for name in ("anthropic_text_stream.sse", "anthropic_tool_stream.sse"):
        raw = stream_bytes(name)
        assert translate([raw[i : i + 1] for i in range(len(raw))]) == translate([raw])


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(anthropic_streams())
def test_accumulated_stream_equals_the_translated_response(
    stream: tuple[dict[str, Any], bytes],
) -> None:
    message, raw = stream
    chunks = payloads(translate([raw], include_usage=True))
    assert chunks[-1] == "[DONE]"
    got = accumulate(chunks)
    expected = messages_response_to_chat(
        message, model="smart", created=CREATED, completion_id="chatcmpl-1"
    )
    (choice,) = expected["choices"]
    assert got["content"] == (choice["message"]["content"] or "")
    calls = choice["message"].get("tool_calls", [])
    assert [
        (c["id"], c["type"], c["name"], json.loads(c["arguments"]))
        for c in got["tool_calls"].values()
    ] == [
        (c["id"], c["type"], c["function"]["name"], json.loads(c["function"]["arguments"]))
        for c in calls
    ]
    assert got["finish"] == [choice["finish_reason"]]
    assert got["usage"] == expected["usage"]
    for item in chunks[:-1]:
        ChatCompletionChunk.model_validate(item)
    ChatCompletion.model_validate(expected)


# --- fuzz: any input translates or raises RemoteProtocolError, nothing else ----

any_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=12,
)
KEYS = ["type", "role", "content", "text", "index", "delta", "message", "usage", "tool_calls"]
KEYS += ["image_url", "url", "function", "arguments", "tool_call_id", "input", "content_block"]
KEYS += ["stop_reason", "error", "partial_json", "id", "name", "tools", "tool_choice"]
VALUES = ["user", "assistant", "tool", "system", "text", "image_url", "function", "tool_use"]
VALUES += ["message_start", "content_block_start", "content_block_delta", "message_delta"]
VALUES += ["message_stop", "text_delta", "input_json_delta", "error", "end_turn", "{}"]
shaped_json = st.recursive(
    st.none() | st.integers(-1, 3) | st.sampled_from(VALUES) | st.text(max_size=3),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(KEYS), inner, max_size=5)
    ),
    max_leaves=25,
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(any_json, shaped_json, chat_requests()), shaped_json)
def test_any_request_translates_or_raises(body: Any, messages: Any) -> None:
    for candidate in (body, {"messages": messages}):
        try:
            translated = chat_request_to_messages(candidate, model=MODEL)
        except RemoteProtocolError as error:
            assert error.error_status_hint == 400
        else:
            json.dumps(translated)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(any_json, shaped_json, anthropic_messages()))
def test_any_response_translates_or_raises(body: Any) -> None:
    try:
        translated = messages_response_to_chat(body, model="smart", created=CREATED)
    except RemoteProtocolError as error:
        assert error.error_status_hint == 502
    else:
        json.dumps(translated)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(any_json, shaped_json), max_size=8), st.booleans())
def test_any_event_sequence_translates_or_raises(events: list[Any], include_usage: bool) -> None:
    stream = translator(include_usage=include_usage)
    stream.feed(b'data: {"type":"message_start","message":{}}\n\n')
    for data in events:
        try:
            out = stream.feed(b"data: " + json.dumps(data).encode() + b"\n\n")
        except RemoteProtocolError as error:
            assert error.error_status_hint == 502
            break
        for block in out:
            assert block.endswith(b"\n\n")
    stream.close()


@given(
    st.integers(400, 599), st.binary(max_size=40) | any_json.map(lambda v: json.dumps(v).encode())
)
def test_any_error_body_gives_an_openai_error(status: int, body: bytes) -> None:
    error = json.loads(anthropic_error_to_openai(status, body))["error"]
    assert set(error) == {"message", "type", "param", "code"}


def test_deeply_nested_json_is_refused_not_crashed() -> None:
    deep = "[" * 100_000
    with pytest.raises(RemoteProtocolError):
        translator().feed(b"data: " + deep.encode() + b"\n\n")
    assert b"without an Anthropic error body" in anthropic_error_to_openai(500, deep.encode())
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": deep}}
    error = refused({"messages": [*HELLO, {"role": "assistant", "tool_calls": [call]}]})
    assert error.param == "messages"


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(anthropic_messages())
def test_a_translated_response_replays_as_history(message: dict[str, Any]) -> None:
    """The round trip: a translated answer, sent back as history, is the answer again."""
    reply = messages_response_to_chat(message, model="smart", created=CREATED)["choices"][0][
        "message"
    ]
    results = [
        {"role": "tool", "tool_call_id": call["id"], "content": "ok"}
        for call in reply.get("tool_calls", ())
    ]
    body = {"model": "smart", "messages": [*HELLO, reply, *results]}
    request = chat_request_to_messages(json.loads(json.dumps(body)), model=MODEL)
    MessagesRequest.model_validate(request)
    text = "".join(b["text"] for b in message["content"] if b["type"] == "text")
    expected = [{"type": "text", "text": text}] if text else []
    expected += [
        {"type": "tool_use", "id": b["id"], "name": b["name"], "input": b["input"]}
        for b in message["content"]
        if b["type"] == "tool_use"
    ]
    if not expected:  # nothing but thinking, or empty text: nothing to replay
        assert request["messages"] == HELLO
        return
    assistant = request["messages"][1]
    assert assistant["role"] == "assistant"
    content = assistant["content"]
    assert (content if isinstance(content, list) else [{"type": "text", "text": content}]) == (
        expected
    )
