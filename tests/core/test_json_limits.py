"""Untrusted JSON: any depth, any size, any string -- never a 500, always a trace.

``core._json.loads`` reads every JSON document a peer sends (request bodies,
tool-call arguments, upstream answers, stream events): nesting past 200 levels
and more than ``limits.max_json_items`` values are refused before they cost
anything, and a lone surrogate escape is read as U+FFFD. The playbooks drive
whole exchanges (mock, pass-through, gateway and translation both ways, with
the trace, validate and guardrails middleware) with such documents from the
client and from the upstream.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from core import (
    Command,
    EndResponse,
    Event,
    Exchange,
    Log,
    Proxy,
    ProxyConfig,
    SendUpstreamRequest,
    UpstreamData,
    UpstreamEnded,
    UpstreamResponse,
    WriteTrace,
)
from core._json import MAX_JSON_DEPTH, JSONError, check_items, dumps, loads, redump
from tests.support.fuzz import examples

from .playbook import Playbook, client_view

# -- loads ------------------------------------------------------------------------------


def nested(depth: int, inner: bytes = b"0") -> bytes:
    return b"[" * depth + inner + b"]" * depth


def test_nesting_up_to_the_bound_is_read_and_past_it_refused() -> None:
    assert loads(nested(MAX_JSON_DEPTH)) is not None
    with pytest.raises(JSONError) as caught:
        loads(nested(MAX_JSON_DEPTH + 1))
    assert caught.value.limit == "max_json_depth"
    assert str(caught.value) == f"nested deeper than {MAX_JSON_DEPTH} levels"


@pytest.mark.parametrize(
    "data",
    [
        b"[" * 1_000_000,  # unclosed
        nested(100_000),
        b'{"a":' * 100_000,
        "[" * 100_000,
        b'"\\ud800"' + b"[" * 100_000,  # a lone surrogate first, then too deep
    ],
)
def test_any_depth_is_refused_at_once_without_recursion_error(data: bytes | str) -> None:
    with pytest.raises(JSONError) as caught:
        loads(data, max_items=10**9)
    assert caught.value.limit in ("max_json_depth", None)


def values(value: Any) -> int:
    """The values a document holds, itself included."""
    if isinstance(value, dict):
        return 1 + sum(values(v) for v in value.values())
    if isinstance(value, list):
        return 1 + sum(values(v) for v in value)
    return 1


def empties(value: Any) -> int:
    children = list(value.values()) if isinstance(value, dict) else value
    if not isinstance(value, dict | list):
        return 0
    return (not children) + sum(empties(v) for v in children)


# Strings full of what the value count must not count, and of escapes (no lone
# surrogate: those are read as U+FFFD, below).
plain_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=6)
tricky = st.text(alphabet=',[{"\\ab\n\u00e9', max_size=6) | plain_text
scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | tricky
documents = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(tricky, inner, max_size=5),
    max_leaves=40,
)


@settings(max_examples=examples(400))
@given(documents, st.sampled_from([None, 1]), st.booleans())
def test_the_value_bound_is_exact_but_for_empty_containers(
    document: Any, indent: int | None, ascii_only: bool
) -> None:
    text = json.dumps(document, indent=indent, ensure_ascii=ascii_only)
    n = values(document)
    for data in (text, text.encode()):
        assert loads(data, max_items=n + empties(document)) == document
        if n > 1:
            with pytest.raises(JSONError) as caught:
                check_items(data, max_items=n - 1)
            assert caught.value.limit == "max_json_items"
            with pytest.raises(JSONError):
                loads(data, max_items=n - 1)


def test_many_values_are_refused_before_parsing_fast() -> None:
    keys = b"{" + b",".join(b'"k%x":0' % i for i in range(700_000)) + b"}"
    lists = b"[" + b"[]," * 3_000_000 + b"[]]"
    escaped = b'["' + b'\\",' * 2_000_000 + b'"]'  # one string: commas are not values
    for data in (keys, lists):  # json.loads takes 0.5 s and 1.3 s on these
        with pytest.raises(JSONError, match="more than 100000 values"):
            loads(data)
    assert loads(escaped) == ['",' * 2_000_000]


@pytest.mark.parametrize(
    ("escaped", "text"),
    [
        (r'"\ud800"', "\ufffd"),
        (r'"\udc00"', "\ufffd"),
        (r'"\uD83D\uDE00"', "\U0001f600"),  # a pair, in either case
        (r'"\ud83d\ude00\ud83d"', "\U0001f600\ufffd"),
        (r'"\\ud800"', "\\ud800"),  # an escaped backslash, then text
        (r'"\\\ud800"', "\\\ufffd"),
        (r'"\\ud800\udc00"', "\\ud800\ufffd"),  # the low half's high half is text
        (r'"\ud800\\udc00"', "\ufffd\\udc00"),
        (r'"\ud800\u0041"', "\ufffdA"),
        (r'"\\\ud83d\ude00\ud800"', "\\\U0001f600\ufffd"),  # a pair after an escaped "\\"
        (r'["\udbff", "\udfff"]', ["\ufffd", "\ufffd"]),
    ],
)
def test_a_lone_surrogate_is_read_as_the_replacement_character(escaped: str, text: Any) -> None:
    assert loads(escaped) == text
    assert loads(escaped.encode()) == text
    json.dumps(loads(escaped), ensure_ascii=False).encode()


def test_a_bytearray_is_read_as_bytes() -> None:
    """A driver may hand the exchange a bytearray (h11 does)."""
    assert loads(bytearray(b'["\\ud800"]')) == ["\ufffd"]
    assert loads(bytearray(json.dumps([1]).encode("utf-16"))) == [1]
    with pytest.raises(JSONError, match="more than 3 values"):
        loads(bytearray(b'["a,b", 1, 2, 3]'), max_items=3)


@settings(max_examples=examples(300))
@given(st.text())
def test_any_string_is_read_and_can_be_encoded_again(text: str) -> None:
    read = loads(json.dumps(text))
    assert read == text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    read.encode()


@pytest.mark.parametrize(
    ("data", "value"),
    [
        (json.dumps({"a": "é"}).encode("utf-16"), {"a": "é"}),
        (json.dumps({"a": "é"}).encode("utf-32"), {"a": "é"}),
        (b'\xef\xbb\xbf{"a": 1}', {"a": 1}),
        (b"[NaN, Infinity, -Infinity]", [float("nan"), float("inf"), float("-inf")]),
        (b'{"a": 1, "a": 2}', {"a": 2}),
        (b" \n[1] \t", [1]),
    ],
)
def test_what_json_loads_reads_is_read(data: bytes, value: Any) -> None:
    assert json.dumps(loads(data)) == json.dumps(value)


@pytest.mark.parametrize(
    "data",
    [b"", b"{", b"[1] x", b'"\xff"', b'"\xed\xa0\x80"', b"1" * 5000, b"{'a': 1}", "\ud800"],
)
def test_what_is_not_json_is_a_json_error(data: bytes | str) -> None:
    with pytest.raises(JSONError) as caught:
        loads(data)
    assert caught.value.limit is None


# -- whole exchanges ----------------------------------------------------------------------

OAI = {"type": "openai", "base_url": "http://oai.test", "api_key": "sk-oai"}
ANT = {"type": "anthropic", "base_url": "http://ant.test", "api_key": "sk-ant"}
JSON_HEAD = [(b"content-type", b"application/json")]
SSE_HEAD = [(b"content-type", b"text/event-stream")]
MIDDLEWARE = [{"trace": {"dir": "/traces"}}, "validate", "guardrails"]

#: name -> (config, client path, model, the upstream's API or None for the mock)
SETUPS: dict[str, tuple[dict[str, Any], bytes, str, str | None]] = {
    "mock": ({"middleware": MIDDLEWARE}, b"/v1/chat/completions", "mock-gpt", None),
    "pass-through": (
        {"upstream": {"base_url": "http://up.test"}, "middleware": [{"trace": {"dir": "/t"}}]},
        b"/v1/chat/completions",
        "gpt-4o",
        "openai",
    ),
    "shorthand+policies": (
        {"upstream": {"base_url": "http://up.test"}, "middleware": MIDDLEWARE},
        b"/v1/chat/completions",
        "gpt-4o",
        "openai",
    ),
    "gateway": (
        {
            "providers": {"oai": OAI, "claude": ANT},
            "models": {
                "fast": [{"provider": "oai", "model": "gpt-4o-mini"}],
                "smart": [{"provider": "claude", "model": "claude-sonnet-4-5"}],
            },
            "middleware": MIDDLEWARE,
        },
        b"/v1/chat/completions",
        "fast",
        "openai",
    ),
}
# The same gateway: chat translated to Anthropic, Messages translated to OpenAI.
SETUPS["chat->anthropic"] = (SETUPS["gateway"][0], b"/v1/chat/completions", "smart", "anthropic")
SETUPS["messages->openai"] = (SETUPS["gateway"][0], b"/v1/messages", "fast", "openai")
PROXIES = {name: Proxy(ProxyConfig.model_validate(setup[0])) for name, setup in SETUPS.items()}


def request_body(setup: str, text: str, depth: int | None, *, ascii_only: bool = True) -> bytes:
    """A chat (or Messages) request with ``text`` as its message. With a ``depth``, as deep
    a value in the body and in a tool call's arguments (JSON in a JSON string, which
    translation to Anthropic reads)."""
    _, path, model, _ = SETUPS[setup]
    messages: list[dict[str, Any]] = [{"role": "user", "content": text}]
    body: dict[str, Any] = {"model": model, "messages": messages}
    if path == b"/v1/messages":
        body["max_tokens"] = 16
    elif depth is not None:
        arguments = '{"a":' + nested(depth).decode() + "}"
        call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": arguments}}
        messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        messages.append({"role": "tool", "tool_call_id": "c1", "content": "ok"})
    raw = json.dumps(body, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    return raw if depth is None else raw[:-1] + b',"x":' + nested(depth) + b"}"


def answer(api: str, text: str, depth: int) -> bytes:
    """A whole answer with ``text``, and as deep a value (in tool-call arguments too)."""
    if api == "anthropic":
        body: dict[str, Any] = {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": "m",
            "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn",
            "usage": {"input_tokens": 3, "output_tokens": 2},
        }
    else:
        arguments = '{"a":' + nested(depth).decode() + "}"
        call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": arguments}}
        message = {"role": "assistant", "content": text, "tool_calls": [call]}
        body = {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1,
            "model": "m",
            "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
        }
    return json.dumps(body).encode()[:-1] + b',"x":' + nested(depth) + b"}"


def events(api: str, text: str, depth: int) -> bytes:
    """A whole stream; its text delta (and usage) event carry ``text`` and as deep a value."""
    deep = b',"x":' + nested(depth) + b"}"
    delta = json.dumps(text).encode()
    if api == "anthropic":
        start = {
            "type": "message_start",
            "message": {
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "model": "m",
                "content": [],
                "usage": {"input_tokens": 3, "output_tokens": 1},
            },
        }
        return (
            b"event: message_start\ndata: " + json.dumps(start).encode() + b"\n\n"
            b"event: content_block_start\ndata: "
            b'{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}'
            b"\n\nevent: content_block_delta\ndata: "
            b'{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":'
            + delta
            + b"}"
            + deep
            + b"\n\nevent: content_block_stop\ndata: "
            b'{"type":"content_block_stop","index":0}\n\n'
            b"event: message_delta\ndata: "
            b'{"type":"message_delta","delta":{"stop_reason":"end_turn"},'
            b'"usage":{"output_tokens":2}}\n\n'
            b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
        )
    head = b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":'
    return (
        head
        + b'[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n'
        + head
        + b'[{"index":0,"delta":{"content":'
        + delta
        + b"}}]"
        + deep
        + b"\n\n"
        + head
        + b'[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
        + head
        + b'[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}'
        + deep
        + b"\n\ndata: [DONE]\n\n"
    )


Reply = tuple[list[tuple[bytes, bytes]], bytes]


def exchange(setup: str, body: bytes, reply: Reply | None = None) -> list[Command]:
    """One whole exchange; ``reply`` (a 200's headers and body) answers the upstream request."""
    _, path, _, api = SETUPS[setup]
    if reply is None and api is not None:
        reply = JSON_HEAD, answer(api, "hi", 0)
    pb = Playbook(PROXIES[setup])
    out = pb.request(b"POST", path, body)
    if reply is not None and any(isinstance(c, SendUpstreamRequest) for c in out):
        head, data = reply
        events: list[Event] = [UpstreamResponse(attempt=1, status=200, headers=head)]
        events += (
            UpstreamData(attempt=1, data=data[i : i + 700]) for i in range(0, len(data), 700)
        )
        events.append(UpstreamEnded(attempt=1))
        for event in events:
            if pb.ex.finished:  # it cancelled the upstream request: nothing more comes
                break
            out += pb.feed(event, now=0.1)
    return out


def error_of(setup: str, body: bytes) -> tuple[str, str]:
    """(code, message) of an OpenAI error; (type, message) of an Anthropic one."""
    error = json.loads(body)["error"]
    return error["type" if SETUPS[setup][1] == b"/v1/messages" else "code"], error["message"]


def assert_sane(commands: list[Command]) -> tuple[int | None, bytes]:
    """Never a 500 nor a traceback; one trace record that can be written as UTF-8 JSON."""
    status, _, body, complete = client_view(commands)
    assert status is not None and status != 500 and complete is True
    for cmd in commands:
        assert not (isinstance(cmd, Log) and "traceback" in cmd.fields), cmd
    (trace,) = [c for c in commands if isinstance(c, WriteTrace)]
    json.dumps(trace.record, ensure_ascii=False).encode()
    return status, body


texts = st.text() | st.sampled_from(["\ud800", "a\udfffb", "\ud83d\ude00", "x\\ud800"])
depths = st.integers(0, 300) | st.sampled_from([198, 199, 200, 1000, 10_000])


@settings(max_examples=examples(80), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(SETUPS)), texts, depths, st.booleans())
def test_any_request_body_gets_an_answer_and_a_trace(
    setup: str, text: str, depth: int, ascii_only: bool
) -> None:
    body = request_body(setup, text, depth, ascii_only=ascii_only)
    status, data = assert_sane(exchange(setup, body))
    not_utf8 = not ascii_only and any("\ud800" <= c <= "\udfff" for c in text)
    if depth >= MAX_JSON_DEPTH and not (not_utf8 and setup == "pass-through"):
        # "x" is one level down. (The shorthand forwards what is not JSON at all.)
        assert status == 400
        assert error_of(setup, data)[0] in ("invalid_json", "invalid_request_error")


@settings(max_examples=examples(80), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(s for s in SETUPS if SETUPS[s][3])), texts, depths, st.booleans())
def test_any_upstream_answer_or_stream_reaches_the_client_sanely(
    setup: str, text: str, depth: int, stream: bool
) -> None:
    api = SETUPS[setup][3]
    assert api is not None
    reply = (
        (SSE_HEAD, events(api, text, depth)) if stream else (JSON_HEAD, answer(api, text, depth))
    )
    status, _ = assert_sane(exchange(setup, request_body(setup, "hello", None), reply))
    assert status == 200 or (status == 502 and not stream)


@pytest.mark.parametrize("setup", sorted(SETUPS))
def test_a_deep_request_is_400_invalid_json(setup: str) -> None:
    """In the shorthand too, where a body the proxy cannot read is forwarded untouched:
    one over the limits would go unmetered, and past guardrails."""
    status, body = assert_sane(exchange(setup, request_body(setup, "hi", 10_000)))
    code, message = error_of(setup, body)
    assert status == 400 and code in ("invalid_json", "invalid_request_error")
    assert message == f"the request body is nested deeper than {MAX_JSON_DEPTH} levels"


def test_a_body_that_is_not_json_is_still_forwarded_in_the_shorthand() -> None:
    out = exchange("pass-through", b"{not json")
    assert [c.body for c in out if isinstance(c, SendUpstreamRequest)] == [b"{not json"]


def test_deep_tool_call_arguments_to_translate_are_400() -> None:
    arguments = '{"a":' + nested(MAX_JSON_DEPTH).decode() + "}"
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": arguments}}
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "ok"},
    ]
    body = json.dumps({"model": "smart", "messages": messages}).encode()
    status, data = assert_sane(exchange("chat->anthropic", body))
    error = json.loads(data)["error"]
    assert (status, error["code"], error["param"]) == (400, "invalid_value", "messages")
    assert error["message"].endswith(f"not valid JSON: nested deeper than {MAX_JSON_DEPTH} levels")


@pytest.mark.parametrize("setup", sorted(SETUPS))
def test_too_many_values_is_413_before_anything_parses_them(setup: str) -> None:
    keys = b",".join(b'"k%x":0' % i for i in range(150_000))
    body = request_body(setup, "hi", None)[:-1] + b"," + keys + b"}"
    status, data = assert_sane(exchange(setup, body))
    assert status == 413
    assert error_of(setup, data) in (
        ("request_too_large", "the request body holds more than 100000 values"),
    )


def test_the_value_bound_is_configurable() -> None:
    config = {"upstream": {"base_url": "http://up.test"}, "limits": {"max_json_items": 10}}
    proxy = Proxy(ProxyConfig.model_validate(config))
    body = json.dumps({"model": "m", "input": list(range(20))}).encode()
    status, _, _, _ = client_view(Playbook(proxy).request(b"POST", b"/v1/embeddings", body))
    assert status == 413
    body = json.dumps({"model": "m", "input": list(range(5))}).encode()
    out = Playbook(proxy).request(b"POST", b"/v1/embeddings", body)
    assert any(isinstance(c, SendUpstreamRequest) for c in out)


@pytest.mark.parametrize("setup", sorted(SETUPS))
def test_a_lone_surrogate_in_a_request_is_read_as_u_fffd(setup: str) -> None:
    out = exchange(setup, request_body(setup, "a \ud800 b", None))
    assert_sane(out)
    for cmd in out:
        if isinstance(cmd, SendUpstreamRequest):
            cmd.body.decode()  # UTF-8, whether forwarded untouched or re-serialised


def test_a_deep_json_answer_to_translate_is_502() -> None:
    reply = JSON_HEAD, answer("anthropic", "hi", 1000)
    status, body = assert_sane(
        exchange("chat->anthropic", request_body("chat->anthropic", "hi", None), reply)
    )
    error = json.loads(body)["error"]
    assert (status, error["code"]) == (502, "upstream_protocol_error")
    assert error["message"] == (
        f"the upstream's answer is not valid JSON (nested deeper than {MAX_JSON_DEPTH} levels)"
    )


@pytest.mark.parametrize("setup", ["chat->anthropic", "messages->openai"])
def test_a_deep_event_in_a_translated_stream_is_an_error_event_and_a_clean_end(
    setup: str,
) -> None:
    api = SETUPS[setup][3]
    assert api is not None
    reply = SSE_HEAD, events(api, "hi", 1000)
    out = exchange(setup, request_body(setup, "hi", None), reply)
    status, body = assert_sane(out)  # a clean end
    last = [block for block in body.split(b"\n\n") if block][-1]
    assert status == 200 and last.startswith(b"event: error\ndata: ")
    assert f"nested deeper than {MAX_JSON_DEPTH} levels".encode() in last


def test_a_deep_event_in_a_relayed_stream_is_relayed_untouched() -> None:
    data = events("openai", "hi", 1000)
    status, body = assert_sane(
        exchange("gateway", request_body("gateway", "hi", None), (SSE_HEAD, data))
    )
    assert status == 200 and b'"x":' + nested(1000) in body
    assert body.endswith(b"data: [DONE]\n\n")


def test_an_empty_body_is_invalid_json_or_forwarded_in_the_shorthand() -> None:
    status, body = assert_sane(exchange("gateway", b""))
    assert (status, error_of("gateway", body)[0]) == (400, "invalid_json")
    out = exchange("pass-through", b"")
    assert [c.body for c in out if isinstance(c, SendUpstreamRequest)] == [b""]


def test_an_answer_to_translate_that_is_not_an_object_is_502() -> None:
    request = request_body("chat->anthropic", "hi", None)
    status, body = assert_sane(exchange("chat->anthropic", request, (JSON_HEAD, b"[1]")))
    assert status == 502
    assert error_of("chat->anthropic", body) == (
        "upstream_protocol_error",
        "the upstream's answer is not a JSON object",
    )


def test_the_events_before_a_deep_one_are_sent_first() -> None:
    """One read of the upstream: the events translated before the deep one, then the error."""
    pb = Playbook(PROXIES["chat->anthropic"])
    pb.request(b"POST", b"/v1/chat/completions", request_body("chat->anthropic", "hi", None))
    pb.feed(UpstreamResponse(attempt=1, status=200, headers=SSE_HEAD))
    out = pb.feed(UpstreamData(attempt=1, data=events("anthropic", "hi", 1000)))
    blocks = [block for block in client_view(out)[2].split(b"\n\n") if block]
    assert b'"role":"assistant"' in blocks[0] and blocks[-1].startswith(b"event: error")
    assert pb.ex.finished and isinstance(out[-2], EndResponse) and out[-2].complete


def test_a_usage_chunk_too_deep_to_read_is_relayed_not_stripped() -> None:
    """The proxy asked for usage: it strips the usage-only chunk it can read, no other."""
    request = json.dumps({"model": "fast", "messages": [{"role": "user", "content": "hi"}]})
    request = request[:-1] + ', "stream": true}'
    data = events("openai", "hi", 1000)
    status, body = assert_sane(exchange("gateway", request.encode(), (SSE_HEAD, data)))
    assert status == 200 and body.count(b'"usage":{"prompt_tokens":3') == 1
    shallow = events("openai", "hi", 0)
    status, body = assert_sane(exchange("gateway", request.encode(), (SSE_HEAD, shallow)))
    assert status == 200 and b'"usage"' not in body


def test_hooks_after_routing_still_read_the_body() -> None:
    """The parse is dropped once the request is sent (a stream holds it no more), and
    parsed again for whoever asks later."""
    seen: list[Any] = []

    class Reader:
        def on_request(self, exchange: Exchange) -> None:
            seen.append(exchange.request_json())

        def on_complete(self, exchange: Exchange) -> None:
            seen.append(exchange.request_json())

    proxy = Proxy(ProxyConfig.model_validate(SETUPS["gateway"][0]), middleware=[Reader()])
    pb = Playbook(proxy)
    pb.request(b"POST", b"/v1/chat/completions", request_body("gateway", "hi", None))
    pb.feed(UpstreamResponse(attempt=1, status=200, headers=JSON_HEAD))
    pb.feed(UpstreamData(attempt=1, data=answer("openai", "hi", 0)), UpstreamEnded(attempt=1))
    assert seen[0] == seen[1] == json.loads(request_body("gateway", "hi", None))


@pytest.mark.parametrize(
    ("source", "value", "written"),
    [
        # orjson's writer: the common case
        (b'{"model":"a","n":1}', {"model": "b", "n": 1}, b'{"model":"b","n":1}'),
        # NaN and Infinity are written back as read (orjson would write null)
        (b'{"model":"a","t":NaN}', {"model": "b", "t": float("nan")}, b'{"model":"b","t":NaN}'),
        (b'{"t":-Infinity}', {"t": float("-inf")}, b'{"t":-Infinity}'),
        # an int beyond 64 bits, which orjson refuses
        (b'{"n":1180591620717411303424}', {"n": 2**70}, b'{"n":1180591620717411303424}'),
    ],
)
def test_a_body_written_again_keeps_its_values(source: bytes, value: Any, written: bytes) -> None:
    assert redump(value, source) == written


@given(st.text(st.characters(exclude_categories=())))
@example("a\ud800b")  # a lone surrogate
def test_dumps_writes_any_text_as_json_does(text: str) -> None:
    try:
        expected = json.dumps(text, ensure_ascii=False, separators=(",", ":")).encode()
    except UnicodeEncodeError:  # a lone surrogate: no UTF-8 for it, either way
        with pytest.raises(UnicodeEncodeError):
            dumps(text)
        return
    assert dumps(text) == expected
