"""The lean OTLP encoder writes the very message the SDK's encoder makes."""

from __future__ import annotations

import math
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as sdk_encode
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from adapters._otlp import encode_spans

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
