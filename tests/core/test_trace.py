"""The trace middleware: one record per exchange, secrets redacted, timings kept."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core import (
    ClientGone,
    Command,
    UpstreamData,
    UpstreamEnded,
    UpstreamFailed,
    UpstreamResponse,
    WriteTrace,
)
from core.policies._trace import REDACTED, redact_headers, redact_target

from .playbook import Playbook, config, upstream_config

TRACE = [{"trace": {"dir": "/traces"}}]


def traces(commands: list[Command]) -> list[WriteTrace]:
    return [c for c in commands if isinstance(c, WriteTrace)]


def test_a_streamed_exchange_is_one_record_with_events_text_and_timings() -> None:
    pb = Playbook(upstream_config(upstream={"api_key": "sk-upstream-secret"}, middleware=TRACE))
    body = b'{"model":"m","stream":true,"messages":[]}'
    out = pb.request(
        b"POST",
        b"/v1/chat/completions",
        body,
        [(b"authorization", b"Bearer sk-client-secret"), (b"content-type", b"application/json")],
    )
    pb.feed(
        UpstreamResponse(attempt=1, status=200, headers=[(b"content-type", b"text/event-stream")]),
        now=0.25,
    )
    pb.feed(
        UpstreamData(
            attempt=1,
            data=b'data: {"choices":[{"delta":{"content":"Hel"}}]}\n\n'
            b'data: {"choices":[{"delta":{"content":"lo"}}]}\n\n',
        ),
        now=0.5,
    )
    out = pb.feed(
        UpstreamData(attempt=1, data=b"data: [DONE]\n\n"), UpstreamEnded(attempt=1), now=1.0
    )
    (cmd,) = traces(out)
    assert cmd.directory == "/traces"
    # The file it goes to is the writer's: the command says where and how long to keep it.
    assert (cmd.rotate, cmd.max_age, cmd.max_bytes) == ("hour", 7 * 86400, 1 << 30)
    record = json.loads(json.dumps(cmd.record))  # it must be JSON-serialisable
    assert record["id"] == "ex1" and record["outcome"] == "completed"
    assert record["request"]["method"] == "POST"
    assert record["request"]["target"] == "/v1/chat/completions"
    assert ["authorization", REDACTED] in record["request"]["headers"]
    assert record["request"]["body"] == {"json": json.loads(body)}
    assert record["upstream"] == "http://up.test:8080/v1/chat/completions"
    assert record["response"]["status"] == 200
    assert [e["data"] for e in record["response"]["events"]][-1] == "[DONE]"
    assert record["response"]["text"] == "Hello"
    assert record["timings"]["first_upstream_byte_ms"] == 250.0
    assert record["timings"]["end_ms"] == 1000.0
    assert record["timings"]["start"] == "2023-11-14T22:13:20.000000+00:00"
    dumped = json.dumps(record)
    assert "sk-client-secret" not in dumped and "sk-upstream-secret" not in dumped


def test_anthropic_text_deltas_are_reassembled() -> None:
    pb = Playbook(upstream_config(upstream={"type": "anthropic"}, middleware=TRACE))
    pb.request(b"POST", b"/v1/messages", b"{}")
    pb << UpstreamResponse(attempt=1, status=200, headers=[(b"content-type", b"text/event-stream")])
    pb << UpstreamData(
        attempt=1,
        data=b"event: content_block_delta\n"
        b'data: {"type":"content_block_delta","index":0,'
        b'"delta":{"type":"text_delta","text":"Hi"}}\n\n'
        b'event: ping\ndata: {"type":"ping"}\n\n'
        b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
        b"data: not json\n\n"
        b"data: {broken\n\n"
        b'data: {"choices":[{"delta":{"content":null,"tool_calls":[]}}]}\n\n'
        b'data: {"choices":[{"delta":{"content":"!"}}]}\n\n'
        b'data: {"type":"content_block_delta","delta":{"type":"input_json_delta"}}\n\n',
    )
    (cmd,) = traces(pb << UpstreamEnded(attempt=1))
    assert cmd.record["response"]["text"] == "Hi!"
    assert cmd.record["response"]["events"][0]["event"] == "content_block_delta"


def test_plain_bodies_are_recorded_as_json_text_or_base64() -> None:
    for content_type, data, expected in [
        (b"application/json", b'{"a":1}', {"json": {"a": 1}}),
        (b"application/json", b"{broken", {"text": "{broken"}),
        (b"text/plain", b"hello", {"text": "hello"}),
        (b"application/octet-stream", b"\xff\x00", {"base64": "/wA="}),
    ]:
        pb = Playbook(upstream_config(middleware=TRACE))
        pb.request(b"GET", b"/v1/models")
        pb << UpstreamResponse(attempt=1, status=200, headers=[(b"content-type", content_type)])
        pb << UpstreamData(attempt=1, data=data)
        (cmd,) = traces(pb << UpstreamEnded(attempt=1))
        assert cmd.record["response"]["body"] == expected


def test_bodies_over_the_trace_limit_are_cut_and_marked() -> None:
    pb = Playbook(upstream_config(middleware=[{"trace": {"dir": "/t", "max_body": 4}}]))
    pb.request(b"POST", b"/v1/x", b"0123456789")
    pb << UpstreamResponse(attempt=1, status=200, headers=[])
    pb << UpstreamData(attempt=1, data=b"abc")
    pb << UpstreamData(attempt=1, data=b"defg")
    pb << UpstreamData(attempt=1, data=b"hij")
    (cmd,) = traces(pb << UpstreamEnded(attempt=1))
    assert cmd.record["request"]["body"] == {"text": "0123", "truncated": True}
    assert cmd.record["response"]["body"] == {"text": "abcd", "truncated": True}


def test_stream_events_over_the_trace_limit_are_counted() -> None:
    pb = Playbook(upstream_config(middleware=[{"trace": {"dir": "/t", "max_events": 1}}]))
    pb.request(b"POST", b"/v1/x", b"{}")
    pb << UpstreamResponse(attempt=1, status=200, headers=[(b"content-type", b"text/event-stream")])
    pb << UpstreamData(attempt=1, data=b"data: 1\n\ndata: 2\n\ndata: 3\n\n")
    (cmd,) = traces(pb << UpstreamEnded(attempt=1))
    assert len(cmd.record["response"]["events"]) == 1
    assert cmd.record["response"]["events_dropped"] == 2


def test_failures_and_client_gone_are_recorded_too() -> None:
    pb = Playbook(upstream_config(middleware=TRACE))
    pb.request(b"POST", b"/v1/x", b"{}")
    (cmd,) = traces(pb << UpstreamFailed(attempt=1, kind="connect", message="refused"))
    assert cmd.record["outcome"] == "upstream_error"
    assert cmd.record["error"]["status"] == 502
    assert cmd.record["response"]["status"] == 502
    assert cmd.record["timings"]["first_upstream_byte_ms"] is None

    pb = Playbook(upstream_config(middleware=TRACE))
    pb.request(b"POST", b"/v1/x", b"{}")
    (cmd,) = traces(pb << ClientGone())
    assert cmd.record["outcome"] == "client_gone" and cmd.record["response"] is None


def test_mock_exchanges_and_rejections_are_recorded() -> None:
    pb = Playbook(config(middleware=TRACE))
    out = pb.request(
        b"POST",
        b"/v1/chat/completions",
        b'{"model":"m","messages":[{"role":"user","content":"x"}]}',
    )
    (cmd,) = traces(out)
    assert cmd.record["upstream"] is None
    assert cmd.record["response"]["body"]["json"]["object"] == "chat.completion"
    pb = Playbook(config(middleware=TRACE))
    (cmd,) = traces(pb.request(b"GET", b"/a/../b"))
    assert cmd.record["outcome"] == "rejected"


def test_rotation_and_retention_options_reach_the_writer_checked() -> None:
    options = {"dir": "/t", "rotate": "day", "max_age": 3600, "max_bytes": None}
    pb = Playbook(config(middleware=[{"trace": options}]))
    (cmd,) = traces(pb.request(b"GET", b"/v1/models"))
    assert (cmd.directory, cmd.rotate, cmd.max_age, cmd.max_bytes) == ("/t", "day", 3600, None)
    cases: list[tuple[dict[str, object], str]] = [
        ({"rotate": "week"}, "'rotate' must be 'hour' or 'day'"),
        ({"max_age": 0}, "'max_age' must be a positive number or null"),
        ({"max_bytes": -1}, "'max_bytes' must be a positive number or null"),
        ({"max_bytes": "1G"}, "'max_bytes' must be a positive number or null"),
    ]
    for bad, message in cases:
        with pytest.raises(ValueError, match=message):
            Playbook(config(middleware=[{"trace": {"dir": "/t", **bad}}]))


def test_health_checks_are_not_traced() -> None:
    pb = Playbook(config(middleware=TRACE))
    assert traces(pb.request(b"GET", b"/health")) == []


@given(
    st.lists(
        st.tuples(
            st.sampled_from(
                [
                    b"authorization",
                    b"x-api-key",
                    b"api-key",
                    b"cookie",
                    b"x-goog-api-key",
                    b"openai-session-token",
                    b"x-auth-token",
                    b"content-type",
                    b"x-custom",
                ]
            ),
            st.binary(min_size=1, max_size=20),
        ),
        max_size=8,
    )
)
def test_credential_headers_never_survive_redaction(headers: list[tuple[bytes, bytes]]) -> None:
    redacted = redact_headers(headers)
    for (name, value), (_, shown) in zip(headers, redacted, strict=True):
        if name not in (b"content-type", b"x-custom"):
            assert shown == REDACTED
        else:
            assert shown == value.decode("latin-1")


SECRET_NAMES = [
    b"Authorization",
    b"Proxy-Authorization",
    b"X-Api-Key",
    b"Api-Key",
    b"X-Goog-Api-Key",
    b"Cookie",
    b"Set-Cookie",
    b"X-Session-Token",
]


@given(
    name=st.sampled_from(SECRET_NAMES),
    flips=st.lists(st.booleans(), min_size=24, max_size=24),
)
def test_credential_headers_are_redacted_in_any_casing(name: bytes, flips: list[bool]) -> None:
    spelled = bytes(
        c ^ 0x20 if f and chr(c).isalpha() else c for c, f in zip(name, flips, strict=False)
    )
    assert redact_headers([(spelled, b"sk-secret")]) == [[spelled.decode(), REDACTED]]


def test_an_upstreams_capitalised_set_cookie_never_reaches_the_trace() -> None:
    pb = Playbook(upstream_config(middleware=[{"trace": {"dir": "t"}}]))
    pb.request(b"GET", b"/v1/models")
    out = pb.feed(
        UpstreamResponse(
            attempt=1,
            status=200,
            headers=[(b"Content-Type", b"application/json"), (b"Set-Cookie", b"sid=secret")],
        ),
        UpstreamData(attempt=1, data=b"{}"),
        UpstreamEnded(attempt=1),
    )
    (record,) = [c.record for c in traces(out)]
    assert "secret" not in json.dumps(record)


@pytest.mark.parametrize(
    ("target", "shown"),
    [
        ("/v1/models?key=AIzaSecret", "/v1/models?key=[redacted]"),
        ("/v1/x?api_key=sk-1&limit=5", "/v1/x?api_key=[redacted]&limit=5"),
        (
            "/v1/x?access_token=t&x=1&Signature=s",
            "/v1/x?access_token=[redacted]&x=1&Signature=[redacted]",
        ),
        ("/v1/x?limit=5&order=desc", "/v1/x?limit=5&order=desc"),
        ("/v1/x", "/v1/x"),
        ("/v1/x?flag&key", "/v1/x?flag&key"),
    ],
)
def test_credential_query_parameters_are_redacted(target: str, shown: str) -> None:
    assert redact_target(target) == shown


def test_a_key_in_the_query_reaches_neither_the_trace_target_nor_the_upstream_url() -> None:
    pb = Playbook(upstream_config(middleware=[{"trace": {"dir": "t"}}]))
    pb.request(b"GET", b"/v1beta/models?key=AIzaSecret123")
    out = pb.feed(
        UpstreamResponse(attempt=1, status=200, headers=[(b"content-type", b"text/plain")]),
        UpstreamEnded(attempt=1),
    )
    (record,) = [c.record for c in traces(out)]
    assert "AIzaSecret123" not in json.dumps(record)
    assert record["request"]["target"] == "/v1beta/models?key=[redacted]"
    assert record["upstream"].endswith("/v1beta/models?key=[redacted]")
