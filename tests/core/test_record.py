"""The record of an exchange (what logs, metrics and spans see), the W3C trace
context, and ``GET /metrics``: no sockets, the exact commands."""

from __future__ import annotations

import gc
import hashlib
import json
import types
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core import (
    CollectMetrics,
    EndResponse,
    ExchangeRecord,
    ExchangeTotals,
    MetricsCollected,
    RecordExchange,
    SendBody,
    SendUpstreamRequest,
    StartResponse,
    UpstreamData,
    UpstreamEnded,
    UpstreamFailed,
    UpstreamResponse,
)
from core._config import ConfigProblem
from core._record import RequestParams, trace_ids
from core._state import State

from .playbook import WALL, Playbook, config, header, upstream_config

JSON = [(b"content-type", b"application/json")]
SSE = [(b"content-type", b"text/event-stream")]
PARENT = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
OBSERVED: dict[str, Any] = {
    "metrics": {"enabled": True},
    "telemetry": {"otlp_endpoint": "http://otel.test:4318"},
}


def chat(**fields: Any) -> bytes:
    return json.dumps(
        {"model": "smart", "messages": [{"role": "user", "content": "hi"}], **fields}
    ).encode()


def record_of(commands: list[Any]) -> ExchangeRecord:
    recorded = [c for c in commands if isinstance(c, RecordExchange)]
    assert len(recorded) == 1, commands
    assert commands[-1] is not None and isinstance(commands[-1], RecordExchange), "it comes last"
    (command,) = recorded
    # What the metrics count, made without the record, is what the record says.
    assert command.totals == ExchangeTotals.of(command.record)
    return command.record


def answered(pb: Playbook, answer: bytes) -> ExchangeRecord:
    """The record of ``pb``'s request once the upstream answered ``answer`` (JSON, 200)."""
    pb.feed(UpstreamResponse(attempt=1, status=200, headers=JSON))
    pb.feed(UpstreamData(attempt=1, data=answer))
    return record_of(pb.feed(UpstreamEnded(attempt=1)))


def gateway(**extra: Any) -> Any:
    return config(
        providers={
            "p": {"base_url": "http://p.test:8080"},
            "q": {"base_url": "https://q.test", "type": "anthropic"},
        },
        models={
            "smart": {
                "deployments": [{"provider": "p", "model": "gpt-x"}],
                "fallbacks": ["backup"],
            },
            "backup": {"deployments": [{"provider": "q", "model": "claude-x"}]},
        },
        middleware=[{"retry": {"attempts": 1, "backoff": 0.1}}],
        **OBSERVED,
        **extra,
    )


def test_a_streamed_call_is_recorded_with_its_timings_usage_and_response() -> None:
    pb = Playbook(gateway())
    sent = pb.request(body=chat(stream=True, temperature=0.2, max_tokens=50, user="u1"))
    (request,) = [c for c in sent if isinstance(c, SendUpstreamRequest)]
    pb.feed(UpstreamResponse(attempt=1, status=200, headers=SSE), now=0.25)
    pb.feed(
        UpstreamData(
            attempt=1,
            data=b'data: {"id":"c9","model":"gpt-x-1","choices":[{"delta":{"content":"Hi"}}]}\n\n',
        ),
        now=0.5,
    )
    pb.feed(
        UpstreamData(
            attempt=1,
            data=b'data: {"id":"c9","choices":[{"delta":{},"finish_reason":"stop"}]}\n\n'
            b'data: {"id":"c9","model":"gpt-x-1","choices":[],'
            b'"usage":{"prompt_tokens":7,"completion_tokens":3}}\n\ndata: [DONE]\n\n',
        ),
        now=0.75,
    )
    record = record_of(pb.feed(UpstreamEnded(attempt=1), now=1.0))
    assert (record.model, record.model_configured, record.provider) == ("smart", True, "p")
    assert (record.provider_type, record.upstream_model, record.operation) == (
        "openai",
        "gpt-x",
        "chat",
    )
    assert (record.stream, record.max_tokens, record.temperature, record.user) == (
        True,
        50,
        0.2,
        "u1",
    )
    assert (record.status, record.outcome, record.client_api) == (200, "completed", "openai")
    assert record.usage is not None and record.usage.input_tokens == 7
    assert record.usage.output_tokens == 3 and not record.usage_estimated
    assert (record.response_id, record.response_model, record.finish_reasons) == (
        "c9",
        "gpt-x-1",
        ("stop",),
    )
    assert record.started == WALL and record.duration == 1.0
    assert record.time_to_first_byte == 0.25 and record.time_to_first_token == 0.5
    (attempt,) = record.attempts
    assert (attempt.server_address, attempt.server_port, attempt.outcome) == (
        "p.test",
        8080,
        "ok",
    )
    assert record.upstream_duration == attempt.duration == 1.0
    # The upstream is the attempt span's child.
    trace = f"00-{record.trace_id}-{attempt.span_id}-01".encode()
    assert header(list(request.headers), b"traceparent") == trace
    assert record.input_messages is None and record.output_messages is None


def test_a_fallback_is_a_second_attempt_with_its_own_span() -> None:
    pb = Playbook(gateway())
    first = pb.request(body=chat(), headers=[(b"traceparent", PARENT)])
    pb.feed(UpstreamFailed(attempt=1, kind="connect"), now=0.1)
    second = pb.fire(0.3)
    pb.feed(UpstreamResponse(attempt=2, status=200, headers=JSON), now=0.4)
    pb.feed(
        UpstreamData(
            attempt=2,
            data=b'{"id":"msg_1","model":"claude-x","content":[{"type":"text","text":"ok"}],'
            b'"stop_reason":"end_turn","usage":{"input_tokens":4,"output_tokens":1}}',
        ),
        now=0.5,
    )
    record = record_of(pb.feed(UpstreamEnded(attempt=2), now=0.5))
    assert [(a.number, a.model, a.provider, a.outcome) for a in record.attempts] == [
        (1, "smart", "p", "connect"),
        (2, "backup", "q", "ok"),
    ]
    assert (record.retries, record.fallbacks) == (1, 1)
    totals = ExchangeTotals.of(record)
    assert (totals.model, totals.served_model, totals.provider) == ("smart", "backup", "q")
    assert totals.failures == (("p", "connect"),)
    assert totals.upstream_duration == pytest.approx(sum(a.duration for a in record.attempts))
    assert (record.provider, record.provider_type, record.response_id) == (
        "q",
        "anthropic",
        "msg_1",
    )
    assert record.finish_reasons == ("end_turn",)
    # The client's trace continues; each attempt's traceparent names its own span.
    assert record.trace_id == "0af7651916cd43dd8448eb211c80319c"
    assert record.parent_span_id == "b7ad6b7169203331" and record.sampled
    sent = [c for c in first + second if isinstance(c, SendUpstreamRequest)]
    assert [header(list(c.headers), b"traceparent") for c in sent] == [
        f"00-{record.trace_id}-{a.span_id}-01".encode() for a in record.attempts
    ]
    assert len({record.span_id, *(a.span_id for a in record.attempts)}) == 3


def test_the_proxys_own_refusal_is_recorded_as_one() -> None:
    key = {"name": "team-a", "key_sha256": hashlib.sha256(b"k").hexdigest(), "rpm": 1}
    proxy = config(
        upstream={"base_url": "http://up.test"},
        middleware=[{"auth": {"keys": [key]}}, "rate_limit"],
        **OBSERVED,
    )
    pb = Playbook(proxy)
    out = pb.request(body=chat(), headers=[(b"authorization", b"Bearer k")])
    from core import AcquireQuota, QuotaAnswered
    from core.policies import Decision

    (query,) = [c for c in out if isinstance(c, AcquireQuota)]
    refused = Decision(allowed=False, limit=1, remaining=0, reset_after=30, retry_after=30)
    record = record_of(
        pb.feed(
            QuotaAnswered(
                query_id=query.query_id,
                admitted=False,
                decisions=(refused,) * len(query.charges),
            )
        )
    )
    assert (record.status, record.refusal, record.key_name) == (429, "rate_limit", "team-a")
    assert record.attempts == () and record.upstream_duration is None
    assert "k" not in {record.error_message, record.key_name}


def test_content_is_captured_only_when_asked() -> None:
    pb = Playbook(
        upstream_config(telemetry={"otlp_endpoint": "http://o.test", "capture_content": True})
    )
    pb.request(body=chat(system="be brief"), headers=list(JSON))
    record = answered(
        pb,
        b'{"id":"x","choices":[{"message":{"content":"hello"},"finish_reason":"stop"}],'
        b'"usage":{"prompt_tokens":1,"completion_tokens":1}}',
    )
    assert record.model == "smart" and not record.model_configured
    assert record.input_messages == [
        {"role": "system", "parts": [{"type": "text", "content": "be brief"}]},
        {"role": "user", "parts": [{"type": "text", "content": "hi"}]},
    ]
    assert record.output_messages == [
        {
            "role": "assistant",
            "parts": [{"type": "text", "content": "hello"}],
            "finish_reason": "stop",
        }
    ]


@pytest.mark.parametrize("observer", [{"metrics": {"enabled": True}}, {"access_log": True}])
def test_without_spans_the_record_reads_only_what_logs_and_metrics_show(
    observer: dict[str, Any],
) -> None:
    pb = Playbook(upstream_config(**observer))  # not routed: the model is the one asked
    pb.request(body=chat(temperature=0.5, max_tokens=7, user="u2"), headers=list(JSON))
    record = answered(
        pb,
        b'{"id":"r1","model":"m","choices":[{"message":{"content":"x"},'
        b'"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1}}',
    )
    assert (record.model, record.status, record.outcome) == ("smart", 200, "completed")
    assert record.usage is not None and record.usage.output_tokens == 1
    assert (record.trace_id, record.sampled) == (None, False)
    assert (record.max_tokens, record.temperature, record.user) == (None, None, None)
    assert (record.response_id, record.finish_reasons) == (None, ())


def test_an_unsampled_trace_costs_its_ids_and_what_logs_and_metrics_show() -> None:
    # Spans go out for sampled traces only: of an unsampled one the core reads its ids
    # (sent upstream, not sampled) and what logs and metrics show, nothing more.
    telemetry = {"otlp_endpoint": "http://o.test", "sample_ratio": 0.0, "capture_content": True}
    pb = Playbook(upstream_config(telemetry=telemetry, access_log=True))
    sent = pb.request(body=chat(temperature=0.5, max_tokens=7, user="u2"), headers=list(JSON))
    (request,) = [c for c in sent if isinstance(c, SendUpstreamRequest)]
    traceparent = header(list(request.headers), b"traceparent")
    assert traceparent is not None and traceparent.endswith(b"-00")
    record = answered(
        pb,
        b'{"id":"r1","model":"m","choices":[{"message":{"content":"x"},'
        b'"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1}}',
    )
    assert (record.trace_id, record.sampled) == (traceparent.split(b"-")[1].decode(), False)
    assert record.usage is not None and record.usage.output_tokens == 1
    assert (record.max_tokens, record.temperature, record.user) == (None, None, None)
    assert (record.response_id, record.finish_reasons) == (None, ())
    assert (record.input_messages, record.output_messages) == (None, None)


def test_nothing_is_recorded_when_nothing_observes() -> None:
    pb = Playbook(upstream_config())
    sent = pb.request(body=chat(), headers=list(JSON))
    (request,) = [c for c in sent if isinstance(c, SendUpstreamRequest)]
    assert header(list(request.headers), b"traceparent") is None
    pb.feed(UpstreamResponse(attempt=1, status=200, headers=JSON))
    out = pb.feed(UpstreamEnded(attempt=1))
    assert not any(isinstance(c, RecordExchange) for c in out)


# --- the W3C trace context ----------------------------------------------------------


@given(st.binary(max_size=80))
def test_any_traceparent_is_continued_if_valid_or_a_new_trace_starts(value: bytes) -> None:
    ids = trace_ids(value, exchange_id="e", rand=0.5, sample_ratio=1.0)
    assert len(ids.trace_id) == 32 and len(ids.span_id) == 16
    assert int(ids.trace_id, 16) and int(ids.span_id, 16)
    if ids.parent_span_id is not None:
        assert value.decode().lower().split("-")[1:3] == [ids.trace_id, ids.parent_span_id]


@given(st.text("0123456789abcdef", min_size=32, max_size=32), st.booleans())
def test_a_valid_traceparent_keeps_its_trace_and_sampling(trace: str, sampled: bool) -> None:
    value = f"00-{trace}-00f067aa0ba902b7-{'01' if sampled else '00'}".encode()
    ids = trace_ids(value, exchange_id="e", rand=0.1, sample_ratio=0.0)
    if trace == "0" * 32:
        assert ids.parent_span_id is None
    else:
        assert (ids.trace_id, ids.parent_span_id, ids.sampled) == (
            trace,
            "00f067aa0ba902b7",
            sampled,
        )
        assert ids.traceparent(2).decode().endswith("-01" if sampled else "-00")


@given(st.floats(0, 0.999), st.text(max_size=8))
def test_new_traces_are_sampled_by_ratio_and_the_same_inputs_give_the_same_ids(
    rand: float, exchange: str
) -> None:
    assert trace_ids(None, exchange_id=exchange, rand=rand, sample_ratio=1.0).sampled
    assert not trace_ids(None, exchange_id=exchange, rand=rand, sample_ratio=0.0).sampled
    a = trace_ids(None, exchange_id=exchange, rand=rand, sample_ratio=0.5)
    assert a == trace_ids(None, exchange_id=exchange, rand=rand, sample_ratio=0.5)
    assert a.attempt_span_id(1) != a.attempt_span_id(2)


def test_sampling_keeps_about_the_ratio_asked() -> None:
    kept = sum(
        trace_ids(None, exchange_id=str(i), rand=0.0, sample_ratio=0.25).sampled
        for i in range(4000)
    )
    assert 800 < kept < 1200


# --- GET /metrics ------------------------------------------------------------------


def test_metrics_are_collected_by_the_driver_and_answered_by_the_core() -> None:
    pb = Playbook(config(metrics={"enabled": True, "path": "/prom"}))
    assert pb.request(method=b"GET", target=b"/prom") == [CollectMetrics()]
    assert pb.ex.state is State.AWAIT_METRICS
    out = pb.feed(MetricsCollected(body=b"up 1\n", content_type=b"text/plain; version=0.0.4"))
    start, body, end = out
    assert isinstance(start, StartResponse) and start.status == 200
    assert header(list(start.headers), b"content-type") == b"text/plain; version=0.0.4"
    assert body == SendBody(data=b"up 1\n") and end == EndResponse()
    assert pb.ex.finished


def test_metrics_not_collected_in_time_are_a_503() -> None:
    pb = Playbook(config(metrics={"enabled": True}))
    pb.request(method=b"GET", target=b"/metrics")
    out = pb.fire(10.0)
    assert isinstance(out[1], StartResponse) and out[1].status == 503
    assert pb.feed(MetricsCollected(body=b"late", content_type=b"text/plain")) == []


def test_metrics_behind_the_admin_key() -> None:
    admin = hashlib.sha256(b"adm").hexdigest()
    proxy = config(
        metrics={"enabled": True, "admin_only": True},
        middleware=[{"auth": {"keys": [], "admin_key_sha256": admin}}],
    )
    refused = Playbook(proxy).request(method=b"GET", target=b"/metrics")
    assert any(isinstance(c, StartResponse) and c.status == 401 for c in refused)
    allowed = Playbook(proxy).request(
        method=b"GET", target=b"/metrics", headers=[(b"authorization", b"Bearer adm")]
    )
    assert allowed == [CollectMetrics()]
    posted = Playbook(proxy).request(method=b"POST", target=b"/metrics")
    assert any(isinstance(c, StartResponse) and c.status == 405 for c in posted)


def test_metrics_behind_an_admin_key_that_does_not_exist_is_a_config_error() -> None:
    from core import Proxy

    with pytest.raises(ConfigProblem, match=r"metrics\.admin_only.*admin key"):
        Proxy(config(metrics={"enabled": True, "admin_only": True}))


def test_metrics_off_leave_the_path_to_the_gateway() -> None:
    out = Playbook(upstream_config()).request(method=b"GET", target=b"/metrics")
    assert [type(c) for c in out] == [SendUpstreamRequest]


def test_captured_messages_are_the_ones_guardrails_redacted() -> None:
    pb = Playbook(
        upstream_config(
            middleware=[{"guardrails": {"redact_emails": True}}],
            telemetry={"otlp_endpoint": "http://o.test", "capture_content": True},
        )
    )
    sent = pb.request(
        body=json.dumps(
            {"model": "m", "messages": [{"role": "user", "content": "mail ann@example.com"}]}
        ).encode(),
        headers=list(JSON),
    )
    (request,) = [c for c in sent if isinstance(c, SendUpstreamRequest)]
    assert b"ann@example.com" not in request.body
    pb.feed(UpstreamResponse(attempt=1, status=200, headers=JSON))
    record = record_of(pb.feed(UpstreamEnded(attempt=1)))
    assert record.input_messages is not None
    assert "ann@example.com" not in json.dumps(record.input_messages)
    assert "[REDACTED]" in json.dumps(record.input_messages)


# -- the record is built when first read, from what the exchange left ------------------


def _reachable(root: object, depth: int = 6) -> list[object]:
    """Every object ``root`` holds, ``depth`` references deep (not through classes,
    modules or functions: what a record's source keeps alive)."""
    seen: dict[int, object] = {}
    layer = [root]
    for _ in range(depth):
        following = []
        for obj in layer:
            for ref in gc.get_referents(obj):
                if id(ref) in seen or isinstance(ref, type | types.ModuleType | types.FunctionType):
                    continue
                seen[id(ref)] = ref
                following.append(ref)
        layer = following
    return list(seen.values())


def test_the_record_is_built_once_when_first_read_and_keeps_no_body() -> None:
    pb = Playbook(gateway())
    prompt = "a long prompt " * 5000
    body = chat(
        temperature=0.5,
        max_tokens=7,
        user="u2",
        top_p=["not a number " * 500],
        messages=[{"role": "user", "content": prompt}],
    )
    pb.request(body=body)
    pb.feed(UpstreamResponse(attempt=1, status=200, headers=JSON), now=0.25)
    answer = json.dumps(
        {
            "id": "r1",
            "model": "gpt-x-1",
            "choices": [{"message": {"content": "Hello " * 2000}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 9, "completion_tokens": 2},
        }
    ).encode()
    pb.feed(UpstreamData(attempt=1, data=answer), now=0.5)
    out = pb.feed(UpstreamEnded(attempt=1), now=0.75)
    (command,) = [c for c in out if isinstance(c, RecordExchange)]
    assert command.sampled and command.attempt_count == 1  # known before it is built
    # What it waits in the sinks' queues with: nothing of the bodies (nor the exchange).
    held = _reachable(command)
    assert not any(obj is pb.ex for obj in held)
    big = [obj for obj in held if isinstance(obj, bytes | str) and len(obj) > 2000]
    assert big == []
    record = command.record
    assert command.record is record, "built once"
    assert (record.max_tokens, record.temperature, record.user) == (7, 0.5, "u2")
    assert record.top_p is None
    assert (record.response_id, record.finish_reasons) == ("r1", ("stop",))
    assert record.sampled == command.sampled and len(record.attempts) == command.attempt_count
    assert command == RecordExchange(record) and repr(command) == repr(RecordExchange(record))


PARAM_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False),
    st.text(max_size=300),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2),
)


@given(
    st.dictionaries(
        st.sampled_from(
            [
                "model",
                "stream",
                "max_tokens",
                "max_completion_tokens",
                "max_output_tokens",
                "temperature",
                "top_p",
                "user",
                "metadata",
            ]
        ),
        PARAM_VALUES,
    ),
    st.one_of(st.none(), st.text(max_size=300)),
)
def test_request_parameters_keep_only_values_of_their_type(
    body: dict[str, Any], user_id: str | None
) -> None:
    if user_id is not None:
        body["metadata"] = {"user_id": user_id}
    model, stream, max_tokens, temperature, top_p, user = RequestParams(
        body, capture=False
    ).values()

    def of(value: object, kinds: tuple[type, ...]) -> bool:
        return type(value) in kinds

    expected_tokens = next(
        (
            body[name]
            for name in ("max_tokens", "max_completion_tokens", "max_output_tokens")
            if of(body.get(name), (int,))
        ),
        None,
    )
    asked_user = body.get("user") if of(body.get("user"), (str,)) else user_id
    assert model == (body["model"] if of(body.get("model"), (str,)) and body["model"] else None)
    assert stream is (body.get("stream") is True)
    assert max_tokens == expected_tokens
    for value, name in ((temperature, "temperature"), (top_p, "top_p")):
        raw = body.get(name)
        assert value == (
            float(raw) if isinstance(raw, int | float) and type(raw) is not bool else None
        )
        assert value is None or type(value) is float
    assert user == (asked_user[:256] if isinstance(asked_user, str) and asked_user else None)
