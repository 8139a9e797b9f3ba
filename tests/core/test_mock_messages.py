"""The built-in mock answers Anthropic's Messages API too: playbooks, no sockets.

Its answers have the shapes of Anthropic's documented examples (the interop payloads),
its errors Anthropic's shape, and its usage is what the exchange (and so a trace) records.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from core import SSEDecoder, parse_block
from core.gateway import usage_from_anthropic
from core.gateway._usage import StreamUsage
from tests.interop.payloads import read_payload

from .playbook import Playbook, client_view, config, header

MESSAGES = b"/v1/messages"
HELLO = [{"role": "user", "content": "Hello there"}]
WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "unit": {"type": ["string", "null"], "enum": ["celsius", "fahrenheit"]},
            "days": {"type": "integer"},
            "where": {
                "type": "object",
                "properties": {"lat": {"type": "number"}, "exact": {"type": "boolean"}},
                "required": ["lat", "exact"],
            },
            "optional": {"type": "string"},
        },
        "required": ["city", "unit", "days", "where"],
    },
}
WEATHER_INPUT = {"city": "mock", "unit": "celsius", "days": 0, "where": {"lat": 0, "exact": False}}
CLOCK = {"name": "get_time", "input_schema": {"type": "object", "properties": {}}}


def body(**fields: Any) -> dict[str, Any]:
    return {"model": "claude-sonnet-4-5", "max_tokens": 1024, "messages": HELLO, **fields}


def ask(
    request: dict[str, Any] | bytes, target: bytes = MESSAGES, *, method: bytes = b"POST"
) -> tuple[Playbook, int | None, list[tuple[bytes, bytes]], bytes]:
    pb = Playbook(config(mock={"stream_delay": 0}))
    raw = request if isinstance(request, bytes) else json.dumps(request).encode()
    status, headers, data, complete = client_view(pb.request(method, target, raw))
    assert complete
    return pb, status, headers, data


def answer(**fields: Any) -> tuple[Playbook, dict[str, Any]]:
    pb, status, headers, data = ask(body(**fields))
    assert status == 200 and header(headers, b"content-type") == b"application/json"
    assert header(headers, b"content-length") == str(len(data)).encode()
    message: dict[str, Any] = json.loads(data)
    return pb, message


def events(**fields: Any) -> tuple[Playbook, list[tuple[str | None, dict[str, Any]]], list[bytes]]:
    """A streamed answer, cut by SSEDecoder: (event name, data) each, and the blocks."""
    pb, status, headers, data = ask(body(stream=True, **fields))
    assert status == 200 and header(headers, b"content-type") == b"text/event-stream"
    blocks = SSEDecoder().feed(data)
    assert b"".join(blocks) == data  # canonical: each event whole, LF line ends
    parsed = [parse_block(block) for block in blocks]
    return pb, [(p.event, json.loads(p.data)) for p in parsed], blocks


def shape(event: str | None, data: dict[str, Any]) -> tuple[Any, ...]:
    """What a stream event is, its text left out."""
    assert event == data["type"]  # every event named as its data's type
    if event == "content_block_delta":
        return event, data["index"], data["delta"]["type"]
    if event == "content_block_start":
        return event, data["index"], data["content_block"]["type"]
    return (event,)


def stream_usage(blocks: list[bytes]) -> Any:
    reader = StreamUsage("anthropic")
    for block in blocks:
        reader.feed(block)
    return reader.settle(0)


# -- JSON ------------------------------------------------------------------------------------


def test_a_message_answer_has_the_documented_shape_and_its_usage_is_the_exchanges() -> None:
    pb, message = answer()
    documented = json.loads(read_payload("anthropic_messages.json"))
    assert list(message) == list(documented)  # the same fields, in the same order
    assert message == {
        "id": "msg_ex1",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5",
        "content": [{"type": "text", "text": "This is the sansproxy mock. You said: Hello there"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 6, "output_tokens": 9},
    }
    assert pb.ex.client_api == "anthropic" and pb.ex.endpoint == "messages"
    assert pb.ex.usage == usage_from_anthropic(message) and not pb.ex.usage_estimated
    assert pb.ex.outcome == "completed"


def test_the_answer_is_deterministic_and_counts_system_and_content_blocks() -> None:
    conversation = [
        {"role": "user", "content": [{"type": "text", "text": "first"}]},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": [{"type": "text", "text": "second"}, {"type": "image"}]},
    ]
    _, plain = answer(messages=conversation)
    _, again = answer(messages=conversation)
    _, with_system = answer(messages=conversation, system=[{"type": "text", "text": "x" * 40}])
    assert plain == again
    assert plain["content"][0]["text"].endswith("You said: second")
    assert with_system["usage"]["input_tokens"] == plain["usage"]["input_tokens"] + 10


def test_max_tokens_cuts_the_answer() -> None:
    _, message = answer(max_tokens=3)
    assert message["content"] == [{"type": "text", "text": "This is the"}]
    assert message["stop_reason"] == "max_tokens"
    assert message["usage"]["output_tokens"] == 3


# -- streams ---------------------------------------------------------------------------------


def test_a_stream_is_the_documented_event_sequence() -> None:
    pb, streamed, blocks = events()
    documented = [
        parse_block(b) for b in SSEDecoder().feed(read_payload("anthropic_messages_stream.sse"))
    ]
    expected = [shape(p.event, json.loads(p.data)) for p in documented]
    got = [shape(event, data) for event, data in streamed]
    deltas = len([s for s in got if s[0] == "content_block_delta"])
    assert deltas == 9  # one a word
    # The documented example's sequence, with as many deltas as the mock's words.
    assert got == expected[:3] + expected[3:4] * deltas + expected[-3:]
    start = streamed[0][1]["message"]
    assert list(start) == list(json.loads(documented[0].data)["message"])
    assert start["id"] == "msg_ex1" and start["model"] == "claude-sonnet-4-5"
    assert start["usage"] == {"input_tokens": 6, "output_tokens": 1}
    text = "".join(d["delta"]["text"] for e, d in streamed if e == "content_block_delta")
    assert text == "This is the sansproxy mock. You said: Hello there"
    assert streamed[-2][1] == {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"output_tokens": 9},
    }
    # The usage reader sees in the stream what the exchange recorded.
    usage, estimated = stream_usage(blocks)
    assert pb.ex.usage == usage and not estimated
    assert (usage.input_tokens, usage.output_tokens) == (6, 9)
    # Compact JSON, as the API sends it.
    assert all(b", " not in block and b'": ' not in block for block in blocks)


def test_a_stream_is_paced_by_stream_delay() -> None:
    pb = Playbook(config(mock={"stream_delay": 0.5}))
    first = client_view(pb.request(b"POST", MESSAGES, json.dumps(body(stream=True)).encode()))
    assert first[0] == 200 and first[3] is None  # started, not ended
    assert first[2].startswith(b"event: message_start\n")
    assert pb.ex.get_timer() == 0.5
    data, fired = first[2], 0
    while not pb.ex.finished:
        fired += 1
        _, _, more, complete = client_view(pb.fire(0.5 * (fired + 1)))
        data += more
    assert complete and data.endswith(b'event: message_stop\ndata: {"type":"message_stop"}\n\n')
    assert fired == len(SSEDecoder().feed(data)) - 1  # one event a tick
    assert pb.ex.usage is not None and pb.ex.usage.output_tokens == 9


# -- tool use --------------------------------------------------------------------------------


def test_tools_are_called_with_input_built_from_the_schema() -> None:
    pb, message = answer(tools=[WEATHER, CLOCK])
    assert message["content"] == [
        {"type": "tool_use", "id": "toolu_ex1", "name": "get_weather", "input": WEATHER_INPUT}
    ]
    assert message["stop_reason"] == "tool_use"
    assert pb.ex.usage == usage_from_anthropic(message)
    assert message["usage"]["output_tokens"] > 0


def test_a_tool_use_stream_sends_its_input_as_json_deltas() -> None:
    pb, streamed, blocks = events(tools=[WEATHER])
    got = [shape(event, data) for event, data in streamed]
    assert got[:3] == [("message_start",), ("content_block_start", 0, "tool_use"), ("ping",)]
    assert got[-3:] == [("content_block_stop",), ("message_delta",), ("message_stop",)]
    assert set(got[3:-3]) == {("content_block_delta", 0, "input_json_delta")}
    assert len(got[3:-3]) > 1  # in pieces, as the API streams a tool's input
    assert streamed[1][1]["content_block"] == {
        "type": "tool_use",
        "id": "toolu_ex1",
        "name": "get_weather",
        "input": {},
    }
    partial = "".join(d["delta"]["partial_json"] for e, d in streamed[3:-3])
    assert json.loads(partial) == WEATHER_INPUT
    assert streamed[-2][1]["delta"]["stop_reason"] == "tool_use"
    assert pb.ex.usage == stream_usage(blocks)[0]


@pytest.mark.parametrize(
    ("fields", "called"),
    [
        ({"tool_choice": {"type": "none"}}, None),
        ({"tool_choice": {"type": "auto"}}, "get_weather"),
        ({"tool_choice": {"type": "any"}}, "get_weather"),
        ({"tool_choice": {"type": "tool", "name": "get_time"}}, "get_time"),
        # Only custom tools are called: the mock runs no server tool.
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, None),
        ({"tools": []}, None),
    ],
)
def test_tool_choice_decides_which_tool_if_any(fields: dict[str, Any], called: str | None) -> None:
    _, message = answer(**{"tools": [WEATHER, CLOCK], **fields})
    (block,) = message["content"]
    assert block.get("name") == called
    assert message["stop_reason"] == ("end_turn" if called is None else "tool_use")


def test_after_a_tool_result_auto_answers_text_so_an_agent_loop_ends() -> None:
    result = {"type": "tool_result", "tool_use_id": "toolu_ex1", "content": "sunny"}
    turns = [
        *HELLO,
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_ex1", "name": "x"}]},
        {"role": "user", "content": [result]},
    ]
    _, message = answer(tools=[WEATHER], messages=turns)
    assert message["content"] == [
        {"type": "text", "text": "This is the sansproxy mock. You said: sunny"}
    ]
    _, forced = answer(tools=[WEATHER], messages=turns, tool_choice={"type": "any"})
    assert forced["stop_reason"] == "tool_use"


def test_the_openai_mock_calls_tools_the_same_way() -> None:
    tool = {
        "type": "function",
        "function": {"name": "get_weather", "parameters": WEATHER["input_schema"]},
    }
    chat = {"model": "gpt-4o-mini", "messages": HELLO, "tools": [tool]}
    pb, status, _, data = ask(chat, b"/v1/chat/completions")
    choice = json.loads(data)["choices"][0]
    assert status == 200 and choice["finish_reason"] == "tool_calls"
    (call,) = choice["message"]["tool_calls"]
    assert call["id"] == "call_mock_ex1" and call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == WEATHER_INPUT
    assert choice["message"]["content"] is None

    stream = {**chat, "stream": True, "stream_options": {"include_usage": True}}
    pb, status, _, data = ask(stream, b"/v1/chat/completions")
    chunks = [json.loads(parse_block(b).data) for b in SSEDecoder().feed(data)[:-1]]
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert deltas[0]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": ""}
    arguments = "".join(d["tool_calls"][0]["function"]["arguments"] for d in deltas[1:-1])
    assert json.loads(arguments) == WEATHER_INPUT
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert pb.ex.usage is not None
    assert pb.ex.usage.output_tokens == chunks[-1]["usage"]["completion_tokens"]

    after = [*HELLO, {"role": "tool", "tool_call_id": "call_mock_ex1", "content": "sunny"}]
    _, _, _, data = ask({**chat, "messages": after}, b"/v1/chat/completions")
    assert json.loads(data)["choices"][0]["finish_reason"] == "stop"
    _, _, _, data = ask({**chat, "tool_choice": "none"}, b"/v1/chat/completions")
    assert json.loads(data)["choices"][0]["finish_reason"] == "stop"


# -- errors, and what else the mock serves ---------------------------------------------------


@pytest.mark.parametrize(
    ("request_body", "words"),
    [
        ({"max_tokens": 10, "messages": HELLO}, "'model'"),
        ({"model": "m", "messages": HELLO}, "'max_tokens'"),
        ({"model": "m", "max_tokens": 0, "messages": HELLO}, "'max_tokens'"),
        ({"model": "m", "max_tokens": True, "messages": HELLO}, "'max_tokens'"),
        ({"model": "m", "max_tokens": "9", "messages": HELLO}, "'max_tokens'"),
        ({"model": "m", "max_tokens": 10}, "'messages'"),
        ({"model": "m", "max_tokens": 10, "messages": []}, "'messages'"),
        ({"model": "m", "max_tokens": 10, "messages": ["hi"]}, "each message"),
        (b"[1]", "JSON object"),
        (b"{oops", "JSON"),
    ],
)
def test_bad_requests_are_refused_in_anthropics_shape(
    request_body: dict[str, Any] | bytes, words: str
) -> None:
    pb, status, headers, data = ask(request_body)
    error = json.loads(data)
    assert status == 400 and header(headers, b"content-type") == b"application/json"
    assert set(error) == {"type", "error"} and error["type"] == "error"
    assert set(error["error"]) == {"type", "message"}
    assert error["error"]["type"] == "invalid_request_error"
    assert words in error["error"]["message"]
    assert pb.ex.usage is None


def test_count_tokens_counts_what_a_message_would_use() -> None:
    _, message = answer(system="be brief")
    pb, status, _, data = ask(body(system="be brief"), MESSAGES + b"/count_tokens")
    assert status == 200
    assert json.loads(data) == {"input_tokens": message["usage"]["input_tokens"]}
    assert pb.ex.client_api == "anthropic"
    _, status, _, data = ask({"model": "m"}, MESSAGES + b"/count_tokens")
    assert status == 400 and json.loads(data)["type"] == "error"


@pytest.mark.parametrize("method", [b"GET", b"HEAD", b"PUT", b"DELETE"])
def test_other_methods_on_messages_are_not_served_and_say_what_is(method: bytes) -> None:
    pb, status, _, data = ask(b"", method=method)
    assert status == 404 and pb.ex.usage is None
    if method == b"HEAD":
        assert data == b""
        return
    message = json.loads(data)["error"]["message"]
    for served in (
        "GET /v1/models",
        "POST /v1/chat/completions",
        "POST /v1/embeddings",
        "POST /v1/messages",
        "POST /v1/messages/count_tokens",
    ):
        assert served in message


def test_the_model_list_is_unchanged() -> None:
    _, status, _, data = ask(b"", b"/v1/models", method=b"GET")
    assert status == 200
    assert [m["id"] for m in json.loads(data)["data"]] == ["mock-gpt", "mock-embedding"]
