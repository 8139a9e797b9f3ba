"""The lean OTLP encoders write the very message the SDK's encoder makes: of spans, and
of exchange records (the message the SDK makes of their reference spans)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as sdk_encode
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from adapters._otlp import RecordEncoder, encode_records, encode_spans
from adapters._spans import SpanExporter, _iso
from core import ProxyConfig
from core._record import AttemptRecord, ExchangeRecord
from core.gateway import Usage
from tests.e2e._helpers import closed_port
from tests.support.fuzz import examples

RESOURCE = Resource.create({"service.name": "sansproxy", "deployment.environment": "test"})
SCOPE = InstrumentationScope("sansproxy", "1.0")

texts = st.text(max_size=40)
scalars = st.one_of(
    texts,
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False),
)
values = st.one_of(
    scalars,
    st.lists(texts, max_size=3).map(tuple),
    st.lists(st.integers(0, 10**6), max_size=3).map(tuple),
    st.lists(st.floats(allow_nan=False), max_size=3).map(tuple),
)
ids = st.integers(1, 2**64 - 1)


@st.composite
def spans(draw: Any) -> ReadableSpan:
    trace_id = draw(st.integers(1, 2**128 - 1))
    parent = draw(
        st.one_of(
            st.none(),
            st.builds(
                lambda span_id, remote: SpanContext(
                    trace_id, span_id, remote, TraceFlags(TraceFlags.SAMPLED)
                ),
                ids,
                st.booleans(),
            ),
        )
    )
    start = draw(st.integers(0, 2**63))
    return ReadableSpan(
        name=draw(texts),
        context=SpanContext(trace_id, draw(ids), False, TraceFlags(TraceFlags.SAMPLED)),
        parent=parent,
        resource=RESOURCE,
        attributes=draw(st.dictionaries(texts, values, max_size=8)),
        kind=draw(st.sampled_from(list(SpanKind))),
        status=Status(
            draw(st.sampled_from(list(StatusCode))),
            draw(st.one_of(st.none(), texts)),
        )
        if draw(st.booleans())
        else Status(StatusCode.UNSET),
        start_time=start,
        end_time=start + draw(st.integers(0, 10**12)),
        instrumentation_scope=SCOPE,
    )


@given(st.lists(spans(), min_size=1, max_size=5))
def test_the_lean_encoder_writes_what_the_sdk_writes(batch: list[ReadableSpan]) -> None:
    ours = ExportTraceServiceRequest.FromString(encode_spans(batch))
    assert ours == sdk_encode(batch)


def test_spans_it_does_not_write_leanly_go_through_the_sdks_encoder() -> None:
    context = SpanContext(1, 2, False, TraceFlags(TraceFlags.SAMPLED))
    span = ReadableSpan(
        name="with an event",
        context=context,
        resource=RESOURCE,
        events=[Event("e", {"k": 1}, timestamp=5)],
        instrumentation_scope=SCOPE,
        start_time=1,
        end_time=2,
    )
    assert ExportTraceServiceRequest.FromString(encode_spans([span])) == sdk_encode([span])


def test_a_double_keeps_every_bit() -> None:
    context = SpanContext(1, 2, False, TraceFlags(TraceFlags.SAMPLED))
    span = ReadableSpan(
        name="n",
        context=context,
        resource=RESOURCE,
        attributes={"x": math.pi, "inf": math.inf, "neg": -0.0, "big": 2**63 - 1, "neg_int": -5},
        instrumentation_scope=SCOPE,
    )
    decoded = ExportTraceServiceRequest.FromString(encode_spans([span]))
    attributes = decoded.resource_spans[0].scope_spans[0].spans[0].attributes
    got = {kv.key: kv.value for kv in attributes}
    assert got["x"].double_value == math.pi and got["inf"].double_value == math.inf
    assert got["big"].int_value == 2**63 - 1 and got["neg_int"].int_value == -5


# -- exchange records, written straight to bytes ------------------------------------------

hex_ids = st.binary(min_size=8, max_size=8).map(bytes.hex)
trace_hex_ids = st.binary(min_size=16, max_size=16).map(bytes.hex)
words = st.one_of(st.sampled_from(["smart", "gpt-upstream", "claude", "oai", "/v1/x"]), texts)
maybe_words = st.none() | words
starts = st.floats(1e9, 4e9)  # UNIX seconds, years 2001 to 2096
seconds = st.floats(0, 100)
messages = st.none() | st.lists(
    st.fixed_dictionaries(
        {
            "role": st.sampled_from(["user", "system", "assistant"]),
            "parts": st.lists(st.fixed_dictionaries({"type": st.just("text"), "content": texts})),
        }
    ),
    max_size=3,
)


@st.composite
def exchange_records(draw: Any) -> ExchangeRecord:
    """Any record the core could make, sampled or not, of up to 3 attempts."""
    started = draw(starts)
    attempts = tuple(
        AttemptRecord(
            number=number,
            span_id=draw(hex_ids),
            model=draw(maybe_words),
            provider=draw(words),
            provider_type=draw(st.sampled_from(["openai", "anthropic"])),
            upstream_model=draw(maybe_words),
            server_address=draw(words),
            server_port=draw(st.sampled_from([443, 8443]) | st.integers(1, 65535)),
            # Before the exchange's start too: its span is kept within the exchange's.
            started=started + draw(st.floats(-1, 50)),
            duration=draw(seconds),
            delay=0.0,
            status=draw(st.none() | st.sampled_from([200, 400, 429, 503]) | st.integers(100, 599)),
            outcome=draw(st.sampled_from([None, "ok", "status", "timeout", "connect", "reset"])),
        )
        for number in range(1, draw(st.integers(0, 3)) + 1)
    )
    unit_floats = st.none() | st.floats(allow_nan=False)  # -0.0 and infinities too
    return ExchangeRecord(
        exchange_id=draw(texts),
        trace_id=draw(st.none() | trace_hex_ids),
        span_id=draw(st.none() | hex_ids),
        parent_span_id=draw(st.none() | hex_ids),
        sampled=draw(st.booleans()),
        method=draw(st.sampled_from(["POST", "GET"]) | texts),
        path=draw(st.sampled_from(["/v1/chat/completions", "/v1/messages"]) | texts),
        client_api=draw(st.sampled_from(["openai", "anthropic"])),
        operation=draw(st.sampled_from([None, "chat", "text_completion", "embeddings"])),
        model=draw(maybe_words),
        model_configured=draw(st.booleans()),
        stream=draw(st.booleans()),
        max_tokens=draw(st.none() | st.integers(0, 2**40)),
        temperature=draw(unit_floats),
        top_p=draw(unit_floats),
        user=draw(maybe_words),
        session_id=draw(maybe_words),
        key_name=draw(maybe_words),
        provider=attempts[-1].provider if attempts else None,
        provider_type=attempts[-1].provider_type if attempts else None,
        upstream_model=attempts[-1].upstream_model if attempts else None,
        attempts=attempts,
        retries=draw(st.integers(0, 3)),
        fallbacks=draw(st.integers(0, 3)),
        status=draw(st.none() | st.sampled_from([200, 400, 429, 500, 504]) | st.integers(100, 599)),
        outcome=draw(
            st.sampled_from(
                ["completed", "client_gone", "timeout", "upstream_error", "rejected", "error"]
            )
        ),
        error_type=draw(st.none() | st.sampled_from(["upstream_timeout", ""]) | texts),
        error_code=None,
        error_message=draw(st.none() | texts),
        refusal=draw(st.sampled_from([None, "rate_limit", "budget"])),
        usage=draw(
            st.none()
            | st.builds(
                Usage,
                input_tokens=st.integers(0, 10**6),
                output_tokens=st.integers(0, 10**6),
                cached_input_tokens=st.integers(0, 10**6),
                cache_creation_tokens=st.integers(0, 10**6),
            )
        ),
        usage_estimated=draw(st.booleans()),
        cost_usd=draw(st.none() | st.floats(min_value=0, allow_nan=False)),
        response_id=draw(maybe_words),
        response_model=draw(maybe_words),
        finish_reasons=tuple(draw(st.lists(st.sampled_from(["stop", "length"]), max_size=2))),
        started=started,
        duration=draw(seconds),
        upstream_duration=None,
        time_to_first_byte=None,
        time_to_first_token=draw(st.none() | seconds),
        input_messages=draw(messages),
        output_messages=draw(messages),
    )


@pytest.fixture(scope="module")
def references() -> Iterator[dict[bool, SpanExporter]]:
    """Span exporters whose ``spans()`` is the reference: without Langfuse, and with it
    (at a closed port: nothing is submitted to them)."""
    plain = SpanExporter(ProxyConfig.model_validate({}))
    url = f"http://127.0.0.1:{closed_port()}"
    langfuse = {"host": url, "public_key": "pk", "secret_key": "sk"}
    with_langfuse = SpanExporter(ProxyConfig.model_validate({"telemetry": {"langfuse": langfuse}}))
    yield {False: plain, True: with_langfuse}
    plain.close()
    with_langfuse.close()


@settings(max_examples=examples(100), suppress_health_check=[HealthCheck.too_slow])
@given(records=st.lists(exchange_records(), max_size=4), langfuse=st.booleans())
def test_records_are_written_as_the_sdk_writes_their_reference_spans(
    references: dict[bool, SpanExporter], records: list[ExchangeRecord], langfuse: bool
) -> None:
    exporter = references[langfuse]
    resource = exporter._resource
    sampled = [r for r in records if r.sampled and r.trace_id and r.span_id]
    expected = sdk_encode([span for record in sampled for span in exporter.spans(record)])
    encoder = RecordEncoder(resource, langfuse=langfuse)
    # Twice: the second time from the kept fields.
    for _ in range(2):
        data = encoder.encode(records)
        decoded = ExportTraceServiceRequest.FromString(data)
        assert decoded == expected
        # Bit for bit too (== holds -0.0 and 0.0 equal): written again in field order.
        assert decoded.SerializeToString(deterministic=True) == expected.SerializeToString(
            deterministic=True
        )
    assert encode_records(records, resource, langfuse=langfuse) == data


@given(st.floats(0, 4e9))
def test_the_langfuse_time_is_datetimes(seconds: float) -> None:
    encoder = RecordEncoder(RESOURCE, langfuse=True)
    assert encoder.iso(seconds) == _iso(seconds)
    assert encoder.iso(seconds + 0.5) == _iso(seconds + 0.5), "the second kept, or not"


@given(exchange_records())
def test_a_record_it_cannot_write_is_left_out_and_told(record: ExchangeRecord) -> None:
    good = record._replace(sampled=True, trace_id="ab" * 16, span_id="cd" * 8)
    bad = good._replace(span_id="not-hex")
    told: list[ExchangeRecord] = []
    data = encode_records([bad, good], RESOURCE, on_error=lambda r, exc: told.append(r))
    assert told == [bad]
    assert data == encode_records([good], RESOURCE)
    with pytest.raises(ValueError):
        encode_records([bad], RESOURCE)


@given(exchange_records().filter(lambda r: r.attempts))
def test_a_zero_keeps_its_sign(record: ExchangeRecord) -> None:
    """The kept fields are found by value, and -0.0 == 0.0: a zero is written each time."""
    base = record._replace(sampled=True, trace_id="ab" * 16, span_id="cd" * 8, operation="chat")
    records = [
        base._replace(temperature=0.0, top_p=0.0),
        base._replace(temperature=-0.0, top_p=0.0),
        base._replace(temperature=0.0, top_p=-0.0),
    ]
    attributes = [
        {
            kv.key: kv.value.double_value
            for kv in span.attributes
            if kv.key in ("gen_ai.request.temperature", "gen_ai.request.top_p")
        }
        for span in ExportTraceServiceRequest.FromString(encode_records(records, RESOURCE))
        .resource_spans[0]
        .scope_spans[0]
        .spans
        if span.kind == span.SPAN_KIND_CLIENT
    ]
    signs = {
        (
            math.copysign(1, a["gen_ai.request.temperature"]),
            math.copysign(1, a["gen_ai.request.top_p"]),
        )
        for a in attributes
    }
    assert signs == {(1, 1), (-1, 1), (1, -1)}
