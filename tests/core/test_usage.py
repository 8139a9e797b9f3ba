"""Usage extraction, the price table and cost (core.gateway). No sockets.

The response and stream fixtures are the providers' documented examples: the
OpenAI API reference (chat completion, Responses API, embeddings, the
``stream_options.include_usage`` chunk), OpenAI's prompt caching guide, and
Anthropic's Messages, streaming and prompt caching pages.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from collections.abc import Mapping
from datetime import date
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import core._json
import core.gateway._usage
from core._sse import SSEDecoder
from core.gateway._prices import AS_OF, PRICES, SOURCE, Price, price_for
from core.gateway._usage import (
    StreamUsage,
    Usage,
    cost_usd,
    merge_usage,
    usage_from_anthropic,
    usage_from_openai,
)

# --- documented examples -------------------------------------------------------

OPENAI_CHAT_COMPLETION: dict[str, Any] = {
    "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
    "object": "chat.completion",
    "created": 1741569952,
    "model": "gpt-4.1-2025-04-14",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello! How can I assist you today?"},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {
        "prompt_tokens": 19,
        "completion_tokens": 10,
        "total_tokens": 29,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    },
    "service_tier": "default",
}
OPENAI_CACHED_USAGE: dict[str, Any] = {  # the prompt caching guide
    "prompt_tokens": 2006,
    "completion_tokens": 300,
    "total_tokens": 2306,
    "prompt_tokens_details": {"cached_tokens": 1920},
    "completion_tokens_details": {"reasoning_tokens": 0},
}
OPENAI_RESPONSE: dict[str, Any] = {
    "id": "resp_67ccd2bed1ec8190b14f964abc0542670bb6a6b452d3795b",
    "object": "response",
    "created_at": 1741476542,
    "status": "completed",
    "model": "gpt-4.1-2025-04-14",
    "output": [],
    "usage": {
        "input_tokens": 36,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 87,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 123,
    },
}
OPENAI_EMBEDDINGS: dict[str, Any] = {
    "object": "list",
    "data": [{"object": "embedding", "embedding": [0.0023064255, -0.009327292], "index": 0}],
    "model": "text-embedding-3-small",
    "usage": {"prompt_tokens": 8, "total_tokens": 8},
}


def openai_chunk(content: str | None, *, usage: dict[str, Any] | None = None) -> bytes:
    """A chat.completion.chunk block as streamed with ``include_usage``."""
    choices = [] if content is None else [{"index": 0, "delta": {"content": content}}]
    chunk = {
        "id": "chatcmpl-123",
        "object": "chat.completion.chunk",
        "created": 1694268190,
        "model": "gpt-4o-mini",
        "system_fingerprint": "fp_44709d6fcb",
        "choices": choices,
        "usage": usage,
    }
    return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"


OPENAI_STREAM = [
    openai_chunk(""),
    openai_chunk("Hello"),
    openai_chunk("!"),
    openai_chunk(None, usage={"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21}),
    b"data: [DONE]\n\n",
]

ANTHROPIC_MESSAGE: dict[str, Any] = {
    "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-5-20250929",
    "content": [{"type": "text", "text": "Hi! My name is Claude."}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {"input_tokens": 2095, "output_tokens": 503},
}
ANTHROPIC_CACHED_USAGE: dict[str, Any] = {  # the prompt caching page, first call
    "cache_creation_input_tokens": 188086,
    "cache_read_input_tokens": 0,
    "input_tokens": 21,
    "output_tokens": 393,
}
ANTHROPIC_STREAM = b"""\
event: message_start
data: {"type": "message_start", "message": {"id": "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY", \
"type": "message", "role": "assistant", "content": [], "model": "claude-opus-4-6", \
"stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 25, "output_tokens": 1}}}

event: content_block_start
data: {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}

event: ping
data: {"type": "ping"}

event: content_block_delta
data: {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}}

event: content_block_delta
data: {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "!"}}

event: content_block_stop
data: {"type": "content_block_stop", "index": 0}

event: message_delta
data: {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence":null}, \
"usage": {"output_tokens": 15}}

event: message_stop
data: {"type": "message_stop"}

"""


def blocks(stream: bytes) -> list[bytes]:
    decoder = SSEDecoder()
    return decoder.feed(stream) + decoder.close()


def stream_usage(api: Any, stream: list[bytes]) -> Usage | None:
    tracker = StreamUsage(api)
    for block in stream:
        tracker.feed(block)
    return tracker.usage


# --- Usage ---------------------------------------------------------------------


def test_usage_counts_every_prompt_token_once() -> None:
    usage = Usage(
        input_tokens=21, output_tokens=393, cached_input_tokens=5, cache_creation_tokens=7
    )
    assert usage.prompt_tokens == 33
    assert Usage(input_tokens=3, output_tokens=4).prompt_tokens == 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        usage.input_tokens = 1  # type: ignore[misc]


@pytest.mark.parametrize("bad", [-1, 1.0, True, "3", None])
def test_usage_rejects_counts_that_are_not_ints_at_least_zero(bad: Any) -> None:
    with pytest.raises(ValueError, match="output_tokens"):
        Usage(input_tokens=0, output_tokens=bad)


# --- OpenAI --------------------------------------------------------------------


def test_openai_chat_completion() -> None:
    assert usage_from_openai(OPENAI_CHAT_COMPLETION) == Usage(input_tokens=19, output_tokens=10)


def test_openai_cached_tokens_are_split_out_of_the_prompt() -> None:
    usage = usage_from_openai({"usage": OPENAI_CACHED_USAGE})
    assert usage == Usage(input_tokens=86, output_tokens=300, cached_input_tokens=1920)
    assert usage is not None and usage.prompt_tokens == 2006


def test_openai_responses_api_and_its_completed_event() -> None:
    expected = Usage(input_tokens=36, output_tokens=87)
    assert usage_from_openai(OPENAI_RESPONSE) == expected
    event = {"type": "response.completed", "sequence_number": 9, "response": OPENAI_RESPONSE}
    assert usage_from_openai(event) == expected
    usage = {
        "input_tokens": 125,
        "output_tokens": 48,
        "input_tokens_details": {"cached_tokens": 98},
    }
    cached = {"usage": usage}
    assert usage_from_openai(cached) == Usage(
        input_tokens=27, output_tokens=48, cached_input_tokens=98
    )


def test_openai_embeddings_have_no_output() -> None:
    assert usage_from_openai(OPENAI_EMBEDDINGS) == Usage(input_tokens=8, output_tokens=0)


@pytest.mark.parametrize(
    "obj",
    [
        {},
        {"usage": None},  # every chunk but the last, with include_usage
        {"usage": {}},
        {"usage": {"total_tokens": 5}},
        {"usage": {"prompt_tokens": -1, "completion_tokens": "2"}},
        {"response": {"usage": None}},  # response.created
        {"response": "x"},
        {"usage": [1, 2]},
        [],
        None,
    ],
)
def test_openai_without_usable_usage_is_none(obj: Any) -> None:
    assert usage_from_openai(obj) is None


def test_openai_junk_fields_are_absent() -> None:
    usage = {"prompt_tokens": 10, "completion_tokens": True, "prompt_tokens_details": [3]}
    assert usage_from_openai({"usage": usage}) == Usage(input_tokens=10, output_tokens=0)
    usage = {"completion_tokens": 4, "prompt_tokens_details": {"cached_tokens": 3}}
    assert usage_from_openai({"usage": usage}) == Usage(input_tokens=0, output_tokens=4)
    usage = {"prompt_tokens": 2, "prompt_tokens_details": {"cached_tokens": 3}}  # more than all
    assert usage_from_openai({"usage": usage}) == Usage(
        input_tokens=0, output_tokens=0, cached_input_tokens=2
    )
    usage = {"prompt_tokens": 2, "prompt_tokens_details": {"cached_tokens": -3}}
    assert usage_from_openai({"usage": usage}) == Usage(input_tokens=2, output_tokens=0)


# --- Anthropic -----------------------------------------------------------------


def test_anthropic_message() -> None:
    assert usage_from_anthropic(ANTHROPIC_MESSAGE) == Usage(input_tokens=2095, output_tokens=503)


def test_anthropic_cache_reads_and_writes() -> None:
    assert usage_from_anthropic({"usage": ANTHROPIC_CACHED_USAGE}) == Usage(
        input_tokens=21, output_tokens=393, cache_creation_tokens=188086
    )
    second = {**ANTHROPIC_CACHED_USAGE, "cache_creation_input_tokens": 0}
    second["cache_read_input_tokens"] = 188086
    assert usage_from_anthropic({"usage": second}) == Usage(
        input_tokens=21, output_tokens=393, cached_input_tokens=188086
    )


def test_anthropic_stream_events() -> None:
    start, delta = (json.loads(b.split(b"data: ")[1]) for b in blocks(ANTHROPIC_STREAM)[::6])
    assert start["type"] == "message_start" and delta["type"] == "message_delta"
    assert usage_from_anthropic(start) == Usage(input_tokens=25, output_tokens=1)
    assert usage_from_anthropic(delta) == Usage(input_tokens=0, output_tokens=15)
    assert merge_usage(usage_from_anthropic(start), usage_from_anthropic(delta)) == Usage(
        input_tokens=25, output_tokens=15
    )


@pytest.mark.parametrize(
    "obj",
    [
        {"type": "ping"},
        {"type": "message_start", "message": {"usage": {}}},
        {"type": "message_delta", "usage": {"output_tokens": None, "input_tokens": -2}},
        {"usage": "many"},
        {"message": [1]},
        "message_start",
    ],
)
def test_anthropic_without_usable_usage_is_none(obj: Any) -> None:
    assert usage_from_anthropic(obj) is None


def test_merge_lets_later_nonzero_counts_win() -> None:
    a = Usage(input_tokens=25, output_tokens=1, cached_input_tokens=4, cache_creation_tokens=6)
    b = Usage(input_tokens=0, output_tokens=15, cache_creation_tokens=9)
    assert merge_usage(a, b) == Usage(
        input_tokens=25, output_tokens=15, cached_input_tokens=4, cache_creation_tokens=9
    )
    assert merge_usage(None, b) is b
    assert merge_usage(a, None) is a
    assert merge_usage(None, None) is None


# --- prices --------------------------------------------------------------------


def test_the_table_is_read_only_data_with_its_source_and_date() -> None:
    assert isinstance(AS_OF, date)
    assert SOURCE and all(url.startswith("https://") for url in SOURCE)
    assert {"gpt-4o", "gpt-4o-mini", "claude-sonnet-4-5", "claude-haiku-4-5"} <= set(PRICES)
    with pytest.raises(TypeError):
        PRICES["x"] = Price(input=1, output=1)  # type: ignore[index]
    for name, price in PRICES.items():
        assert price.output >= 0 and price.input > 0, name
        if price.cached_input is not None:
            assert price.cached_input <= price.input, name
        if price.cache_write is not None:  # 5m writes are 1.25x input, to the cent
            assert abs(price.cache_write - 1.25 * price.input) < 0.015, name


def test_documented_prices() -> None:
    assert PRICES["gpt-4o"] == Price(input=2.5, output=10, cached_input=1.25)
    assert PRICES["gpt-4o-mini"] == Price(input=0.15, output=0.6, cached_input=0.075)
    assert PRICES["claude-sonnet-4-5"] == Price(
        input=3, output=15, cached_input=0.3, cache_write=3.75
    )
    assert PRICES["claude-3-5-haiku"] == Price(
        input=0.8, output=4, cached_input=0.08, cache_write=1
    )


@pytest.mark.parametrize(
    ("model", "base"),
    [
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("gpt-4.1-nano-2025-04-14", "gpt-4.1-nano"),
        ("o3-mini-2025-01-31", "o3-mini"),
        ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
        ("claude-3-5-haiku-20241022", "claude-3-5-haiku"),
        ("claude-opus-4-20250514", "claude-opus-4"),
        ("claude-opus-4-1-20250805", "claude-opus-4-1"),
        ("claude-haiku-4-5@20251001", "claude-haiku-4-5"),  # Vertex AI
    ],
)
def test_a_dated_snapshot_costs_what_its_model_costs(model: str, base: str) -> None:
    assert price_for(model) is PRICES[base]


def test_an_exact_snapshot_beats_its_base_model() -> None:
    assert price_for("gpt-4o-2024-05-13") == Price(input=5, output=15)
    assert price_for("gpt-4o") is PRICES["gpt-4o"]


def test_unknown_models_have_no_price() -> None:
    for model in ("gpt-unknown", "ft:gpt-4o-mini:org::abc123", "", "claude-sonnet-4-5-x"):
        assert price_for(model) is None
    assert cost_usd(Usage(input_tokens=10, output_tokens=10), price_for("nope")) is None
    assert cost_usd(Usage(input_tokens=0, output_tokens=0), None) is None


def test_overrides_take_precedence() -> None:
    cheap = Price(input=0.01, output=0.02)
    dated = Price(input=0.03, output=0.04)
    assert price_for("gpt-4o-mini", {"gpt-4o-mini": cheap}) is cheap
    assert price_for("gpt-4o-mini-2024-07-18", {"gpt-4o-mini": cheap}) is cheap
    overrides = {"gpt-4o-mini": cheap, "gpt-4o-mini-2024-07-18": dated}
    assert price_for("gpt-4o-mini-2024-07-18", overrides) is dated
    assert price_for("gpt-4o-2024-05-13", {"gpt-4o": cheap}) is cheap  # beats the exact built-in
    assert price_for("my-local-model", {"my-local-model": cheap}) is cheap
    assert price_for("gpt-4o", {}) is PRICES["gpt-4o"]
    assert price_for("gpt-4o", {"other": cheap}) is PRICES["gpt-4o"]


@pytest.mark.parametrize("bad", [-0.1, math.inf, math.nan, True, "1"])
def test_price_rejects_rates_that_are_not_finite_numbers_at_least_zero(bad: Any) -> None:
    with pytest.raises(ValueError, match="cached_input"):
        Price(input=1, output=1, cached_input=bad)
    with pytest.raises(ValueError, match=r"Price\.input"):
        Price(input=bad, output=1)


# --- cost ----------------------------------------------------------------------


def test_cost_of_an_openai_completion() -> None:
    usage = usage_from_openai(OPENAI_CHAT_COMPLETION)
    assert usage is not None
    # gpt-4.1: 19 x $2 + 10 x $8 per million.
    assert cost_usd(usage, price_for("gpt-4.1-2025-04-14")) == 118 / 1_000_000
    # gpt-4o, 1000 in and 500 out: $0.0025 + $0.005.
    assert cost_usd(Usage(input_tokens=1000, output_tokens=500), PRICES["gpt-4o"]) == 0.0075


def test_cost_of_cached_openai_tokens() -> None:
    usage = usage_from_openai({"usage": OPENAI_CACHED_USAGE})
    assert usage is not None
    # gpt-4o: 86 x $2.50 + 1920 x $1.25 + 300 x $10 per million = $0.005615.
    assert cost_usd(usage, PRICES["gpt-4o"]) == pytest.approx(0.005615, rel=1e-12)


def test_cost_of_anthropic_cache_writes_and_reads() -> None:
    usage = usage_from_anthropic({"usage": ANTHROPIC_CACHED_USAGE})
    assert usage is not None
    # claude-sonnet-4-5: 21 x $3 + 188086 x $3.75 + 393 x $15 per million.
    assert cost_usd(usage, price_for("claude-sonnet-4-5-20250929")) == pytest.approx(
        (21 * 3 + 188086 * 3.75 + 393 * 15) / 1e6, rel=1e-12
    )
    reads = Usage(input_tokens=0, output_tokens=0, cached_input_tokens=1_000_000)
    assert cost_usd(reads, PRICES["claude-sonnet-4-5"]) == pytest.approx(0.30, rel=1e-12)


def test_unlisted_cache_rates_fall_back_to_the_input_rate() -> None:
    price = Price(input=2, output=8)
    usage = Usage(input_tokens=1, output_tokens=1, cached_input_tokens=2, cache_creation_tokens=4)
    assert cost_usd(usage, price) == (1 * 2 + 2 * 2 + 4 * 2 + 1 * 8) / 1_000_000


counts = st.integers(min_value=0, max_value=10**12)
rates = st.floats(min_value=0, max_value=1000, allow_nan=False, allow_infinity=False)
usages = st.builds(
    Usage,
    input_tokens=counts,
    output_tokens=counts,
    cached_input_tokens=counts,
    cache_creation_tokens=counts,
)
prices = st.one_of(
    st.builds(
        Price,
        input=rates,
        output=rates,
        cached_input=st.none() | rates,
        cache_write=st.none() | rates,
    ),
    st.sampled_from(sorted(PRICES.values(), key=repr)),
)
FIELDS = ("input_tokens", "output_tokens", "cached_input_tokens", "cache_creation_tokens")


@given(usages, prices, st.sampled_from(FIELDS), counts)
def test_cost_is_monotonic_in_each_count(usage: Usage, price: Price, field: str, more: int) -> None:
    more_usage = dataclasses.replace(usage, **{field: getattr(usage, field) + more})
    low, high = cost_usd(usage, price), cost_usd(more_usage, price)
    assert low is not None and high is not None
    assert 0 <= low <= high


# --- robustness ----------------------------------------------------------------

USAGE_KEYS = [
    "usage",
    "response",
    "message",
    "prompt_tokens",
    "completion_tokens",
    "prompt_tokens_details",
    "input_tokens",
    "output_tokens",
    "input_tokens_details",
    "cached_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
]
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(USAGE_KEYS) | st.text(max_size=3), inner, max_size=5)
    ),
    max_leaves=30,
)


def check_usage(usage: Usage | None) -> None:
    if usage is not None:
        for field in FIELDS:
            value = getattr(usage, field)
            assert type(value) is int and value >= 0


@given(json_values)
@example({"usage": {"prompt_tokens": 2**64, "prompt_tokens_details": {"cached_tokens": 2**65}}})
@example({"message": {"usage": {"input_tokens": 1.5, "cache_read_input_tokens": 3}}})
def test_extraction_never_raises(value: Any) -> None:
    for wrapped in (value, {"usage": value}, {"response": {"usage": value}}):
        check_usage(usage_from_openai(wrapped))
    for wrapped in (value, {"usage": value}, {"message": {"usage": value}}):
        check_usage(usage_from_anthropic(wrapped))


@given(st.sampled_from(["openai", "anthropic"]), st.lists(st.binary(max_size=60), max_size=6))
@example("openai", [b'data: {"usage": {"prompt_tokens": 1}\n\n'])  # not JSON
@example("openai", [b'data: {"usage":' + b"[" * 100_000 + b"\n\n"])  # too deep
@example("anthropic", [b'event: message_start\ndata: {"message": {"usage": 1}}\n\n'])
def test_stream_usage_never_raises(api: Any, stream: list[bytes]) -> None:
    check_usage(stream_usage(api, stream))


def test_stream_usage_needs_a_known_api() -> None:
    with pytest.raises(ValueError, match="api"):
        StreamUsage("gemini")  # type: ignore[arg-type]


# --- streams -------------------------------------------------------------------


def test_openai_stream_usage_is_the_usage_only_chunk() -> None:
    assert stream_usage("openai", OPENAI_STREAM) == Usage(input_tokens=9, output_tokens=12)
    assert stream_usage("openai", OPENAI_STREAM[:3]) is None  # interrupted before it


def test_responses_api_stream_usage() -> None:
    def event(kind: str, response: Mapping[str, Any]) -> bytes:
        data = json.dumps({"type": kind, "response": response})
        return f"event: {kind}\ndata: {data}\n\n".encode()

    created = {**OPENAI_RESPONSE, "status": "in_progress", "usage": None}
    stream = [event("response.created", created), event("response.completed", OPENAI_RESPONSE)]
    assert stream_usage("openai", stream) == Usage(input_tokens=36, output_tokens=87)


def test_anthropic_stream_usage_merges_start_and_delta() -> None:
    assert stream_usage("anthropic", blocks(ANTHROPIC_STREAM)) == Usage(
        input_tokens=25, output_tokens=15
    )
    # A stream without event lines is still read.
    bare = [b for b in blocks(ANTHROPIC_STREAM) if not b.startswith(b"event: message_")]
    bare += [b.split(b"\n", 1)[1] for b in blocks(ANTHROPIC_STREAM)[::6]]
    assert stream_usage("anthropic", bare) == Usage(input_tokens=25, output_tokens=15)


def test_only_blocks_that_can_carry_usage_are_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    parsed: list[str] = []
    real_loads = core._json.loads

    def loads(data: str, **limits: int) -> Any:
        parsed.append(data)
        return real_loads(data, **limits)

    monkeypatch.setattr(core.gateway._usage, "loads", loads)
    stream_usage("openai", OPENAI_STREAM)
    assert len(parsed) == 1 and '"usage":{' in parsed[0]
    parsed.clear()
    stream_usage("anthropic", blocks(ANTHROPIC_STREAM))
    assert [real_loads(p)["type"] for p in parsed] == ["message_start", "message_delta"]
    parsed.clear()
    # A text delta that merely says "usage" or names an event is not parsed.
    stream_usage("openai", [openai_chunk("usage"), openai_chunk('"usage": 1')])
    stream_usage("anthropic", [b'event: content_block_delta\ndata: {"text": "message_delta"}\n\n'])
    assert stream_usage("openai", [b'data: {"usage" :\t null}\n\n']) is None
    assert parsed == []
    spaced = b'data: {"usage" : {"prompt_tokens": 1}}\n\n'
    assert stream_usage("openai", [spaced]) == Usage(input_tokens=1, output_tokens=0)
    assert len(parsed) == 1


content = st.text(max_size=8)
raw_usages = st.fixed_dictionaries(
    {"prompt_tokens": counts, "completion_tokens": counts},
    optional={"prompt_tokens_details": st.fixed_dictionaries({"cached_tokens": counts})},
)


@given(st.lists(st.one_of(content, raw_usages), max_size=12))
def test_openai_stream_usage_is_the_last_usage_bearing_event(items: list[Any]) -> None:
    chunks = [
        openai_chunk(item) if isinstance(item, str) else openai_chunk(None, usage=item)
        for item in items
    ]
    bearing = [usage_from_openai({"usage": item}) for item in items if isinstance(item, dict)]
    assert stream_usage("openai", [*chunks, b"data: [DONE]\n\n"]) == (
        bearing[-1] if bearing else None
    )


anthropic_usages = st.fixed_dictionaries(
    {},
    optional={
        "input_tokens": counts,
        "output_tokens": counts,
        "cache_read_input_tokens": counts,
        "cache_creation_input_tokens": counts,
    },
)


@given(st.lists(st.one_of(content, anthropic_usages), max_size=12))
def test_anthropic_stream_usage_merges_the_usage_bearing_events(items: list[Any]) -> None:
    stream: list[bytes] = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            delta = {"type": "content_block_delta", "index": 0, "delta": {"text": item}}
            stream.append(b"event: content_block_delta\ndata: " + json.dumps(delta).encode())
        elif i == 0:
            start = {"type": "message_start", "message": {"usage": item}}
            stream.append(b"event: message_start\ndata: " + json.dumps(start).encode())
        else:
            delta = {"type": "message_delta", "delta": {}, "usage": item}
            stream.append(b"event: message_delta\ndata: " + json.dumps(delta).encode())
    bearing = [usage_from_anthropic({"usage": item}) for item in items if isinstance(item, dict)]
    expected = functools.reduce(merge_usage, bearing, None)
    assert stream_usage("anthropic", [block + b"\n\n" for block in stream]) == expected
