"""Playbook tests: feed the exchange events, assert the exact commands."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pytest

from core import (
    CancelUpstream,
    ClientGone,
    EndResponse,
    LocalProtocolError,
    Log,
    Origin,
    Proxy,
    Reply,
    RequestData,
    RequestEnded,
    RequestReceived,
    SendBody,
    SendUpstreamRequest,
    StartResponse,
    TimerFired,
    UpstreamData,
    UpstreamEnded,
    UpstreamFailed,
    UpstreamResponse,
)
from core._state import State
from core.policies import RetryMiddleware

from .playbook import Playbook, client_view, config, header, upstream_config, without_logs

CHAT = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'


def sent_upstream(commands: Sequence[object]) -> SendUpstreamRequest:
    (cmd,) = [c for c in commands if isinstance(c, SendUpstreamRequest)]
    return cmd


# -- 8. health ---------------------------------------------------------------


def test_health_is_answered_by_the_proxy_never_forwarded() -> None:
    pb = Playbook(upstream_config())
    out = pb.request(b"GET", b"/health")
    assert not any(isinstance(c, SendUpstreamRequest) for c in out)
    status, headers, body, complete = client_view(out)
    assert (status, json.loads(body), complete) == (200, {"status": "ok"}, True)
    assert pb.ex.finished and pb.ex.outcome == "completed"


# -- 4. transparent proxying -------------------------------------------------


def test_request_is_forwarded_with_method_path_query_and_identical_body() -> None:
    pb = Playbook(upstream_config())
    body = CHAT
    out = pb.request(b"POST", b"/v1/chat/completions?x=1&y=%2F", body)
    assert out == [
        SendUpstreamRequest(
            attempt=1,
            origin=Origin(scheme="http", host="up.test", port=8080),
            method=b"POST",
            target=b"/v1/chat/completions?x=1&y=%2F",
            headers=[
                (b"host", b"up.test:8080"),
                (b"accept-encoding", b"identity"),
                (b"content-length", str(len(body)).encode()),
            ],
            body=body,
            connect_timeout=10.0,
        )
    ]
    assert sent_upstream(out).body is body  # passed through, not copied
    assert pb.ex.state is State.AWAIT_UPSTREAM


@pytest.mark.parametrize("method", [b"GET", b"DELETE", b"PUT", b"PATCH", b"OPTIONS"])
def test_any_method_and_path_is_forwarded(method: bytes) -> None:
    pb = Playbook(upstream_config())
    cmd = sent_upstream(pb.request(method, b"/anything/else?q"))
    assert (cmd.method, cmd.target) == (method, b"/anything/else?q")
    has_length = header(list(cmd.headers), b"content-length") is not None
    assert has_length == (method in (b"PUT", b"PATCH"))


def test_hop_by_hop_headers_are_dropped_and_host_is_the_upstreams() -> None:
    pb = Playbook(upstream_config())
    headers = [
        (b"host", b"proxy.local"),
        (b"connection", b"keep-alive, x-private"),
        (b"keep-alive", b"timeout=5"),
        (b"transfer-encoding", b"chunked"),
        (b"te", b"trailers"),
        (b"trailer", b"x"),
        (b"upgrade", b"h2c"),
        (b"proxy-authorization", b"Basic abc"),
        (b"proxy-connection", b"keep-alive"),
        (b"x-private", b"named by Connection"),
        (b"content-type", b"application/json"),
        (b"openai-organization", b"org-1"),
    ]
    cmd = sent_upstream(pb.request(b"POST", b"/v1/embeddings", b"{}", headers))
    names = [n for n, _ in cmd.headers]
    assert names == [
        b"host",
        b"content-type",
        b"openai-organization",
        b"accept-encoding",
        b"content-length",
    ]
    assert header(list(cmd.headers), b"host") == b"up.test:8080"


def test_base_path_is_prefixed_and_v1_not_doubled() -> None:
    pb = Playbook(upstream_config(upstream={"base_url": "https://api.example.com/v1"}))
    cmd = sent_upstream(pb.request(b"POST", b"/v1/chat/completions", CHAT))
    assert cmd.target == b"/v1/chat/completions"
    assert cmd.origin == Origin(scheme="https", host="api.example.com", port=443)
    assert header(list(cmd.headers), b"host") == b"api.example.com"
    pb = Playbook(upstream_config(upstream={"base_url": "http://h/prefix/"}))
    assert sent_upstream(pb.request(b"GET", b"/v1/models")).target == b"/prefix/v1/models"


def test_configured_openai_key_replaces_client_credentials() -> None:
    pb = Playbook(upstream_config(upstream={"api_key": "sk-upstream"}))
    headers = [(b"authorization", b"Bearer client-key"), (b"x-api-key", b"client-key")]
    cmd = sent_upstream(pb.request(b"POST", b"/v1/chat/completions", CHAT, headers))
    assert header(list(cmd.headers), b"authorization") == b"Bearer sk-upstream"
    assert header(list(cmd.headers), b"x-api-key") is None
    assert b"client-key" not in repr(cmd.headers).encode()


def test_configured_anthropic_key_replaces_x_api_key() -> None:
    pb = Playbook(upstream_config(upstream={"type": "anthropic", "api_key": "sk-ant"}))
    headers = [(b"x-api-key", b"client-key"), (b"anthropic-version", b"2023-06-01")]
    cmd = sent_upstream(pb.request(b"POST", b"/v1/messages", b"{}", headers))
    assert header(list(cmd.headers), b"x-api-key") == b"sk-ant"
    assert header(list(cmd.headers), b"authorization") is None
    assert header(list(cmd.headers), b"anthropic-version") == b"2023-06-01"


def test_without_a_configured_key_client_credentials_pass_through() -> None:
    pb = Playbook(upstream_config())
    headers = [(b"authorization", b"Bearer client-key")]
    cmd = sent_upstream(pb.request(b"POST", b"/v1/chat/completions", CHAT, headers))
    assert header(list(cmd.headers), b"authorization") == b"Bearer client-key"


@pytest.mark.parametrize(
    "target",
    [
        b"/v1/../admin",
        b"/v1/./x",
        b"/..",
        b"/v1/%2e%2e/admin",
        b"/v1/%2E%2E/admin",
        b"/v1%2fadmin",
        b"/v1%5cadmin",
        b"/v1\\..\\admin",
        b"http://evil.test/v1/models",
        b"//evil.test/v1/models",
        b"evil.test:443",
        b"*",
        b"/v1/models#frag",
        b"/a%00b",
    ],
)
def test_targets_leaving_the_base_path_are_refused_with_400(target: bytes) -> None:
    pb = Playbook(upstream_config())
    out = pb.request(b"GET", target)
    assert not any(isinstance(c, SendUpstreamRequest) for c in out)
    status, _, body, complete = client_view(out)
    assert status == 400 and complete is True
    assert json.loads(body)["error"]["code"] == "invalid_request_target"
    assert pb.ex.outcome == "rejected"


def test_upstream_status_headers_and_body_are_relayed() -> None:
    pb = Playbook(upstream_config())
    pb.request(b"POST", b"/v1/chat/completions", CHAT)
    out = pb.feed(
        UpstreamResponse(
            attempt=1,
            status=429,
            headers=[
                (b"content-type", b"application/json"),
                (b"content-length", b"11"),
                (b"retry-after", b"7"),
                (b"connection", b"keep-alive"),
                (b"x-request-id", b"req-1"),
            ],
        ),
        UpstreamData(attempt=1, data=b'{"error":'),
        UpstreamData(attempt=1, data=b"1}"),
        UpstreamEnded(attempt=1),
        now=0.5,
    )
    assert without_logs(out) == [
        StartResponse(
            status=429,
            headers=[
                (b"content-type", b"application/json"),
                (b"content-length", b"11"),
                (b"retry-after", b"7"),
                (b"x-request-id", b"req-1"),
                (b"x-sansproxy-id", b"ex1"),
            ],
        ),
        SendBody(data=b'{"error":'),
        SendBody(data=b"1}"),
        EndResponse(complete=True),
    ]
    assert pb.ex.outcome == "completed"
    assert pb.ex.first_upstream_byte_at == 0.5


# -- 5. streaming -------------------------------------------------------------

SSE_HEAD = UpstreamResponse(
    attempt=1,
    status=200,
    headers=[
        (b"content-type", b"text/event-stream; charset=utf-8"),
        (b"transfer-encoding", b"chunked"),
    ],
)


def test_stream_events_are_relayed_whole_as_they_complete() -> None:
    pb = Playbook(upstream_config())
    pb.request(b"POST", b"/v1/chat/completions", CHAT)
    out = pb << SSE_HEAD
    assert out == [
        StartResponse(
            status=200,
            headers=[
                (b"content-type", b"text/event-stream; charset=utf-8"),
                (b"x-sansproxy-id", b"ex1"),
            ],
        )
    ]
    assert pb << UpstreamData(attempt=1, data=b"data: a\n") == []
    assert pb << UpstreamData(attempt=1, data=b"\ndata: b") == [SendBody(data=b"data: a\n\n")]
    assert pb << UpstreamData(attempt=1, data=b"\r\n\r\n: ping\n\n") == [
        SendBody(data=b"data: b\n\n: ping\n\n")
    ]
    assert pb << UpstreamData(attempt=1, data=b"data: [DONE]") == []
    assert pb << UpstreamEnded(attempt=1) == [
        SendBody(data=b"data: [DONE]\n\n"),
        EndResponse(complete=True),
    ]


def test_stream_content_length_is_dropped_since_reframing_may_change_it() -> None:
    pb = Playbook(upstream_config())
    pb.request(b"POST", b"/v1/chat/completions", CHAT)
    out = pb << UpstreamResponse(
        attempt=1,
        status=200,
        headers=[(b"content-type", b"text/event-stream"), (b"content-length", b"9")],
    )
    status, headers, _, _ = client_view(out)
    assert header(headers, b"content-length") is None


def test_encoded_event_stream_is_passed_through_untouched() -> None:
    pb = Playbook(upstream_config())
    pb.request(b"POST", b"/v1/chat/completions", CHAT)
    pb << UpstreamResponse(
        attempt=1,
        status=200,
        # gzip and deflate are decoded (tests/core/test_real_world.py); brotli is not.
        headers=[(b"content-type", b"text/event-stream"), (b"content-encoding", b"br")],
    )
    assert pb << UpstreamData(attempt=1, data=b"\x1f\x8b") == [SendBody(data=b"\x1f\x8b")]
    assert not pb.ex.is_stream


def test_oversized_event_becomes_an_sse_error_event_and_a_clean_end() -> None:
    pb = Playbook(upstream_config(limits={"max_sse_event_size": 64}))
    pb.request(b"POST", b"/v1/chat/completions", CHAT)
    pb << SSE_HEAD
    out = pb << UpstreamData(attempt=1, data=b"data: " + b"x" * 100)
    assert isinstance(out[0], CancelUpstream)
    status, _, body, complete = client_view(out)
    assert complete is True
    assert body.startswith(b"event: error\ndata: ") and body.endswith(b"\n\n")
    assert json.loads(body.split(b"data: ", 1)[1])["error"]["code"] == "sse_event_too_large"
    assert pb.ex.finished


# -- 6. failures --------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "status", "code"),
    [
        ("connect", 502, "upstream_connect_error"),
        ("timeout", 504, "upstream_timeout"),
        ("reset", 502, "upstream_reset"),
        ("protocol", 502, "upstream_protocol_error"),
    ],
)
def test_upstream_failure_before_head_is_an_openai_error(kind: str, status: int, code: str) -> None:
    pb = Playbook(upstream_config())
    pb.request(b"POST", b"/v1/chat/completions", CHAT)
    out = pb << UpstreamFailed(attempt=1, kind=kind, message="Connection refused")  # type: ignore[arg-type]
    logs = [c for c in out if isinstance(c, Log)]
    assert len(logs) == 1 and logs[0].level == "error"
    got_status, headers, body, complete = client_view(out)
    assert got_status == status and complete is True
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code and error["type"] == "upstream_error"
    assert header(headers, b"content-type") == b"application/json"


def test_read_timeout_fires_from_the_timer_and_cancels_the_upstream() -> None:
    pb = Playbook(upstream_config(upstream={"read_timeout": 30}))
    pb.request(b"POST", b"/v1/chat/completions", CHAT)
    assert pb.ex.get_timer() == 30.0
    assert pb.fire(29.0) == []  # early: nothing happens
    out = pb.fire(30.0)
    assert out[0] == CancelUpstream(attempt=1)
    status, _, body, _ = client_view(out)
    assert status == 504 and json.loads(body)["error"]["code"] == "upstream_timeout"
    assert pb.ex.outcome == "timeout" and pb.ex.get_timer() is None


def test_each_chunk_pushes_the_read_deadline_back() -> None:
    pb = Playbook(upstream_config(upstream={"read_timeout": 10}))
    pb.request(b"POST", b"/v1/chat/completions", CHAT)
    pb.feed(SSE_HEAD, now=5.0)
    assert pb.ex.get_timer() == 15.0
    pb.feed(UpstreamData(attempt=1, data=b"data: 1\n\n"), now=12.0)
    assert pb.ex.get_timer() == 22.0
    out = pb.fire(22.0)
    _, _, body, complete = client_view(out)
    assert b"event: error" in body and complete is True
    assert CancelUpstream(attempt=1) in out


def test_failure_after_headers_on_a_stream_is_an_error_event_and_clean_end() -> None:
    pb = Playbook(upstream_config())
    pb.request(b"POST", b"/v1/chat/completions", CHAT)
    pb << SSE_HEAD
    pb << UpstreamData(attempt=1, data=b"data: 1\n\n")
    out = pb << UpstreamFailed(attempt=1, kind="reset", message="peer reset")
    assert not any(isinstance(c, StartResponse) for c in out)
    _, _, body, complete = client_view(out)
    assert body.startswith(b"event: error\n") and complete is True
    assert pb.ex.outcome == "upstream_error"


def test_failure_after_headers_on_a_plain_body_cuts_the_connection() -> None:
    pb = Playbook(upstream_config())
    pb.request(b"POST", b"/v1/chat/completions", CHAT)
    pb << UpstreamResponse(attempt=1, status=200, headers=[(b"content-length", b"100")])
    out = pb << UpstreamFailed(attempt=1, kind="reset")
    assert without_logs(out) == [EndResponse(complete=False)]


def test_body_over_the_limit_by_content_length_is_413_before_reading_it() -> None:
    pb = Playbook(upstream_config(limits={"max_body_size": 10}))
    out = pb << RequestReceived(
        method=b"POST", target=b"/v1/x", headers=[(b"content-length", b"11")]
    )
    status, _, body, _ = client_view(out)
    assert status == 413 and json.loads(body)["error"]["code"] == "request_too_large"
    assert pb.ex.finished
    # The rest of the body may still arrive; it is ignored.
    assert pb << RequestData(data=b"x" * 11) == []
    assert pb << RequestEnded() == []


def test_body_over_the_limit_while_streaming_in_is_413() -> None:
    pb = Playbook(upstream_config(limits={"max_body_size": 10}))
    pb << RequestReceived(method=b"POST", target=b"/v1/x", headers=[])
    assert pb << RequestData(data=b"x" * 10) == []
    status, _, _, _ = client_view(pb << RequestData(data=b"y"))
    assert status == 413


def test_invalid_content_length_is_400() -> None:
    pb = Playbook(upstream_config())
    out = pb << RequestReceived(
        method=b"POST", target=b"/v1/x", headers=[(b"content-length", b"abc")]
    )
    assert client_view(out)[0] == 400


def test_header_block_over_the_limit_is_431() -> None:
    pb = Playbook(upstream_config(limits={"max_header_size": 100}))
    out = pb << RequestReceived(
        method=b"GET", target=b"/v1/models", headers=[(b"x-big", b"v" * 100)]
    )
    status, _, body, _ = client_view(out)
    assert status == 431 and json.loads(body)["error"]["code"] == "request_header_fields_too_large"


# -- 7. the client going away --------------------------------------------------


@pytest.mark.parametrize("phase", ["awaiting head", "relaying"])
def test_client_gone_cancels_the_upstream_at_once(phase: str) -> None:
    pb = Playbook(upstream_config())
    pb.request(b"POST", b"/v1/chat/completions", CHAT)
    if phase == "relaying":
        pb << SSE_HEAD
    out = pb << ClientGone()
    assert out[0] == CancelUpstream(attempt=1)
    assert not any(isinstance(c, (StartResponse, SendBody, EndResponse)) for c in out)
    assert pb.ex.outcome == "client_gone" and pb.ex.finished
    assert pb << ClientGone() == []  # idempotent once done


def test_client_gone_before_the_request_is_complete() -> None:
    pb = Playbook(upstream_config())
    pb << RequestReceived(method=b"POST", target=b"/v1/x", headers=[])
    out = pb << ClientGone()
    assert not any(isinstance(c, CancelUpstream) for c in out)
    assert pb.ex.outcome == "client_gone"


# -- the state table -------------------------------------------------------------


def test_an_event_the_state_does_not_accept_is_a_local_error_and_sticks() -> None:
    pb = Playbook(upstream_config())
    with pytest.raises(LocalProtocolError) as info:
        pb << UpstreamEnded(attempt=1)
    assert info.value.error_status_hint == 500
    assert pb.ex.state is State.ERROR
    with pytest.raises(LocalProtocolError):
        pb << RequestReceived(method=b"GET", target=b"/", headers=[])


def test_an_event_for_another_attempt_is_a_local_error() -> None:
    pb = Playbook(upstream_config())
    pb.request(b"POST", b"/v1/chat/completions", CHAT)
    with pytest.raises(LocalProtocolError, match="attempt 2"):
        pb << UpstreamResponse(attempt=2, status=200, headers=[])
    assert pb.ex.state is State.ERROR


def test_stale_timer_after_done_is_ignored() -> None:
    pb = Playbook(config())
    pb.request(b"GET", b"/health")
    assert pb << TimerFired() == []


# -- 1. the mock provider ------------------------------------------------------------


def test_mock_answers_chat_completions_without_upstream() -> None:
    pb = Playbook(config())
    out = pb.request(b"POST", b"/v1/chat/completions", CHAT)
    status, headers, body, complete = client_view(out)
    assert status == 200 and complete
    answer = json.loads(body)
    assert answer["object"] == "chat.completion"
    assert answer["model"] == "gpt-4o-mini"
    assert answer["choices"][0]["message"]["content"] == "This is the sansproxy mock. You said: hi"
    assert answer["usage"]["completion_tokens"] == 8
    assert header(headers, b"content-length") == str(len(body)).encode()


def test_mock_stream_is_paced_by_the_timer() -> None:
    pb = Playbook(config(mock={"stream_delay": 0.5}))
    body = json.dumps(
        {
            "model": "m",
            "stream": True,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": "a b"}],
        }
    ).encode()
    out = pb.request(b"POST", b"/v1/chat/completions", body)
    assert [type(c) for c in out] == [StartResponse, SendBody]
    assert pb.ex.get_timer() == 0.5
    assert pb.fire(0.4) == []
    sent = [out[1]]
    t = 0.5
    while not pb.ex.finished:
        step = pb.fire(t)
        sent.extend(step)
        t += 0.5
    chunks = b"".join(c.data for c in sent if isinstance(c, SendBody)).split(b"\n\n")
    assert chunks[-2] == b"data: [DONE]"
    usage = json.loads(chunks[-3][len(b"data: ") :])
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 9
    text = "".join(
        json.loads(c[len(b"data: ") :])["choices"][0]["delta"].get("content", "")
        for c in chunks[:-3]
        if c
    )
    assert text == "This is the sansproxy mock. You said: a b"
    assert sent[-1] == EndResponse(complete=True)


def test_mock_refuses_what_it_does_not_serve_in_openai_shape() -> None:
    pb = Playbook(config())
    status, _, body, _ = client_view(pb.request(b"POST", b"/v1/unknown", b"{}"))
    assert status == 404 and json.loads(body)["error"]["code"] == "unknown_url"
    pb = Playbook(config())
    status, _, body, _ = client_view(pb.request(b"POST", b"/v1/chat/completions", b"{not json"))
    assert status == 400 and "not valid JSON" in json.loads(body)["error"]["message"]


# -- middleware protocol ---------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def on_request(self, ex: object) -> Reply | None:
        self.calls.append("request")
        return None

    def on_upstream_request(self, ex: object, request: SendUpstreamRequest) -> SendUpstreamRequest:
        self.calls.append("upstream_request")
        return request

    def on_response_head(self, ex: object) -> None:
        self.calls.append("head")

    def on_response_data(self, ex: object, data: bytes) -> bytes:
        self.calls.append("data")
        return data.upper()

    def on_stream_event(self, ex: object, block: bytes) -> bytes | None:
        self.calls.append("event")
        return None if b"drop" in block else block

    def on_error(self, ex: object, error: Exception) -> None:
        self.calls.append("error")

    def on_complete(self, ex: object) -> None:
        self.calls.append("complete")


def test_hooks_run_in_phase_order_and_can_transform_and_drop() -> None:
    rec = Recorder()
    pb = Playbook(Proxy(upstream_config(), middleware=[rec]))
    pb.request(b"POST", b"/v1/chat/completions", CHAT)
    pb << SSE_HEAD
    out = pb << UpstreamData(attempt=1, data=b"data: keep\n\ndata: drop\n\n")
    assert out == [SendBody(data=b"data: keep\n\n")]
    pb << UpstreamEnded(attempt=1)
    assert rec.calls == ["request", "upstream_request", "head", "event", "event", "complete"]

    rec = Recorder()
    pb = Playbook(Proxy(upstream_config(), middleware=[rec]))
    pb.request(b"POST", b"/v1/chat/completions", CHAT)
    pb << UpstreamResponse(attempt=1, status=200, headers=[])
    assert pb << UpstreamData(attempt=1, data=b"abc") == [SendBody(data=b"ABC")]
    pb << UpstreamFailed(attempt=1, kind="reset")
    assert rec.calls[-2:] == ["error", "complete"]


def test_a_hook_may_answer_directly() -> None:
    class Deny:
        def on_request(self, ex: object) -> Reply:
            return Reply(status=401, headers=[(b"content-type", b"application/json")], body=b"{}")

    pb = Playbook(Proxy(upstream_config(), middleware=[Deny()]))
    out = pb.request(b"POST", b"/v1/chat/completions", CHAT)
    assert not any(isinstance(c, SendUpstreamRequest) for c in out)
    status, headers, body, _ = client_view(out)
    assert (status, body, header(headers, b"content-length")) == (401, b"{}", b"2")


def test_what_a_hook_builds_is_checked_as_the_commands_are() -> None:
    """The core builds its own commands without checking them twice; a hook's reply,
    or request headers a hook changed, are still checked: never sent, an error logged."""

    class BadReply:
        def on_request(self, ex: object) -> Reply:
            return Reply(status=200, headers=[(b"x-bad", "not bytes")], body=b"{}")  # type: ignore[list-item]

    class BadHeaders:
        def on_request(self, ex: Any) -> None:
            ex.request_headers = [(b"x-bad", "not bytes")]

    # Beside built-ins (whose hooks leave well-formed headers, not checked again).
    for middleware in ([BadReply()], [BadHeaders()], [RetryMiddleware(), BadHeaders()]):
        pb = Playbook(Proxy(upstream_config(), middleware=middleware))
        out = pb.request(b"POST", b"/v1/chat/completions", CHAT)
        assert not any(isinstance(c, SendUpstreamRequest) for c in out)
        heads = [c for c in out if isinstance(c, StartResponse)]
        assert all(b"x-bad" not in dict(c.headers) for c in heads)
        assert any(isinstance(c, Log) and c.level == "error" for c in out)
        assert pb.ex.finished and pb.ex.outcome == "error"


def test_a_hook_that_raises_gives_a_500_and_a_log_never_a_crash() -> None:
    class Broken:
        def on_request(self, ex: object) -> None:
            raise ZeroDivisionError("oops")

    pb = Playbook(Proxy(upstream_config(), middleware=[Broken()]))
    out = pb.request(b"POST", b"/v1/chat/completions", CHAT)
    logs = [c for c in out if isinstance(c, Log)]
    assert logs and "ZeroDivisionError" in logs[0].fields["traceback"]
    status, _, body, _ = client_view(out)
    assert status == 500 and json.loads(body)["error"]["type"] == "server_error"
    assert pb.ex.finished and pb.ex.outcome == "error"


def test_a_hook_that_raises_mid_stream_cuts_the_response() -> None:
    class Broken:
        def on_stream_event(self, ex: object, block: bytes) -> bytes:
            raise ValueError("bad")

    pb = Playbook(Proxy(upstream_config(), middleware=[Broken()]))
    pb.request(b"POST", b"/v1/chat/completions", CHAT)
    pb << SSE_HEAD
    out = pb << UpstreamData(attempt=1, data=b"data: 1\n\n")
    assert CancelUpstream(attempt=1) in out
    assert out[-1] == EndResponse(complete=False)


def test_a_raising_complete_hook_does_not_break_a_finished_exchange() -> None:
    class Broken:
        def on_complete(self, ex: object) -> None:
            raise RuntimeError("late")

    pb = Playbook(Proxy(upstream_config(), middleware=[Broken()]))
    out = pb.request(b"GET", b"/v1/models")
    out = pb << UpstreamResponse(attempt=1, status=200, headers=[])
    out = pb << UpstreamEnded(attempt=1)
    assert EndResponse(complete=True) in out
    assert any(isinstance(c, Log) and c.level == "error" for c in out)
    assert pb.ex.finished


def test_unknown_middleware_name_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"^middleware\[0\]: unknown middleware 'nope' "):
        Proxy(config(middleware=["nope"]))
    with pytest.raises(
        ValueError, match=r"^middleware\[0\]\.no_such_module_x:Thing: cannot import"
    ):
        Proxy(config(middleware=["no_such_module_x:Thing"]))
    with pytest.raises(
        ValueError, match=r"^middleware\[0\]\.json:NoSuchThing: json has no callable"
    ):
        Proxy(config(middleware=["json:NoSuchThing"]))
    with pytest.raises(ValueError) as caught:
        Proxy(config(middleware=[{"trace": {"dir": "/tmp", "colour": "red"}}]))
    assert str(caught.value) == (
        "middleware[0].trace: unknown option 'colour' "
        "(options: dir, max_body, max_events, rotate, max_age, max_bytes)"
    )


def test_custom_middleware_by_import_path() -> None:
    proxy = Proxy(config(middleware=[{"tests.core.test_exchange:Recorder": {}}]))
    assert type(proxy.pipeline.middleware[0]).__name__ == "Recorder"


def test_non_callable_hook_is_refused() -> None:
    class Odd:
        on_request = 3

    with pytest.raises(TypeError, match="not callable"):
        Proxy(config(), middleware=[Odd()])
