"""The ``retry`` built-in through the exchange: backoff with jitter, Retry-After,
the next deployment, fallback models, the total timeout, and what is never retried."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pytest

from core import (
    AcquireQuota,
    CancelUpstream,
    ClientGone,
    Command,
    EndResponse,
    Log,
    Proxy,
    ProxyConfig,
    QuotaAnswered,
    SendBody,
    SendUpstreamRequest,
    StartResponse,
    UpstreamData,
    UpstreamEnded,
    UpstreamFailed,
    UpstreamResponse,
    WriteTrace,
    parse_block,
)
from core._headers import parse_retry_after
from core._state import State
from core.policies import Decision
from core.policies._retry import RetryMiddleware

from .playbook import WALL, Playbook, client_view, config, header, upstream_config

JSON = [(b"content-type", b"application/json")]
SSE = [(b"content-type", b"text/event-stream")]
CHAT = b'{"model":"a","messages":[{"role":"user","content":"hi"}]}'
OK = json.dumps(
    {
        "id": "c",
        "object": "chat.completion",
        "model": "m1",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }
).encode()
ANTHROPIC_OK = json.dumps(
    {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-x",
        "content": [{"type": "text", "text": "hello"}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 3, "output_tokens": 2},
    }
).encode()


def retry_config(**retry: Any) -> ProxyConfig:
    """Model ``a`` on p/m1 then p/m2, falling back to ``b`` (an Anthropic provider)."""
    options = {"attempts": 2, "backoff": 0.2, "max_backoff": 1.0, "timeout": 30.0, **retry}
    trace = options.pop("trace", None)
    middleware: list[Any] = [{"trace": {"dir": trace}}] if trace else []
    middleware.append({"retry": options})
    return config(
        providers={
            "p": {"base_url": "http://p.test:8080", "api_key": "kp"},
            "q": {"base_url": "http://q.test:8080", "api_key": "kq", "type": "anthropic"},
        },
        models={
            "a": {
                "deployments": [{"provider": "p", "model": "m1"}, {"provider": "p", "model": "m2"}],
                "fallbacks": ["b"],
            },
            "b": [{"provider": "q", "model": "claude-x"}],
            "solo": [{"provider": "p", "model": "s1"}],
        },
        middleware=middleware,
    )


def start(cfg: ProxyConfig | Proxy, body: bytes = CHAT, *, seed: float = 0.0) -> Playbook:
    proxy = cfg if isinstance(cfg, Proxy) else Proxy(cfg)
    pb = Playbook(proxy)
    pb.ex = proxy.exchange(exchange_id="ex1", now=0.0, wall_time=WALL, rand=seed)
    out = pb.request(body=body, headers=list(JSON))
    assert [c.attempt for c in out if isinstance(c, SendUpstreamRequest)] == [1]
    return pb


def sends(commands: Sequence[Command]) -> list[SendUpstreamRequest]:
    return [c for c in commands if isinstance(c, SendUpstreamRequest)]


def where(cmd: SendUpstreamRequest) -> tuple[str, str]:
    """(host, upstream model) of an upstream request."""
    return cmd.origin.host, json.loads(cmd.body)["model"]


def to_client(commands: Sequence[Command]) -> list[Command]:
    return [c for c in commands if isinstance(c, StartResponse | SendBody | EndResponse)]


def backoff_of(pb: Playbook) -> float:
    timer = pb.ex.get_timer()
    assert pb.ex.state is State.BACKOFF and timer is not None
    return timer - pb.now


def ok(pb: Playbook, attempt: int, body: bytes = OK) -> list[Command]:
    return pb.feed(
        UpstreamResponse(attempt=attempt, status=200, headers=JSON),
        UpstreamData(attempt=attempt, data=body),
        UpstreamEnded(attempt=attempt),
    )


# -- one retry ------------------------------------------------------------------------------


def test_a_503_is_retried_once_after_a_backoff_and_the_client_sees_only_the_200() -> None:
    pb = start(retry_config())
    out = pb.feed(UpstreamResponse(attempt=1, status=503, headers=JSON), now=0.5)
    assert out[0] == CancelUpstream(attempt=1)
    assert to_client(out) == []
    (log,) = [c for c in out if isinstance(c, Log)]
    assert log.message == "retrying upstream request"
    assert (log.fields["attempt"], log.fields["status"]) == (1, 503)
    delay = backoff_of(pb)
    assert 0.1 <= delay <= 0.2
    assert pb.fire(0.5 + delay / 2) == []  # early: nothing
    (again,) = sends(pb.fire(0.5 + delay))
    assert again.attempt == 2
    assert where(again) == ("p.test", "m1")  # the same deployment first
    assert pb.ex.state is State.AWAIT_UPSTREAM
    status, _, body, complete = client_view(ok(pb, 2))
    assert (status, body, complete) == (200, OK, True)
    assert [a.outcome for a in pb.ex.attempts] == ["status", "ok"]
    assert pb.ex.attempts[1].delay == pytest.approx(delay)


def test_the_backoff_doubles() -> None:
    pb = start(retry_config(attempts=3, backoff=0.2, max_backoff=10))
    pb.feed(UpstreamFailed(attempt=1, kind="connect"))
    first = backoff_of(pb)
    sends(pb.fire(first))
    pb.feed(UpstreamFailed(attempt=2, kind="connect"))
    second = backoff_of(pb)
    assert 0.1 <= first <= 0.2
    assert 0.2 <= second <= 0.4


@pytest.mark.parametrize(
    ("headers", "wait"),
    [
        ([(b"retry-after", b"0.7")], 0.7),
        ([(b"retry-after-ms", b"650")], 0.65),
        ([(b"retry-after", b"Tue, 14 Nov 2023 22:13:21 GMT")], 1.0),  # WALL + 1 s
    ],
    ids=["seconds", "ms", "http-date"],
)
def test_retry_after_is_honoured(headers: list[tuple[bytes, bytes]], wait: float) -> None:
    pb = start(retry_config(max_backoff=5))
    pb.feed(UpstreamResponse(attempt=1, status=429, headers=headers))
    delay = backoff_of(pb)
    assert delay >= wait - 1e-9
    assert delay <= max(wait, 0.2) + 1e-9
    assert pb.ex.attempts[0].retry_after == pytest.approx(wait)
    (again,) = sends(pb.fire(delay))
    assert where(again) == ("p.test", "m1")


def test_a_retry_after_longer_than_max_backoff_moves_on_at_once() -> None:
    pb = start(retry_config(max_backoff=1))
    pb.feed(UpstreamResponse(attempt=1, status=503, headers=[(b"retry-after", b"30")]))
    assert backoff_of(pb) == 0.0
    (again,) = sends(pb.fire(0.0))
    assert where(again) == ("p.test", "m2")


@pytest.mark.parametrize("kind", ["connect", "timeout", "reset", "protocol"])
def test_failures_before_any_answer_are_retried(kind: str) -> None:
    pb = start(retry_config())
    out = pb.feed(UpstreamFailed(attempt=1, kind=kind, message="boom"))  # type: ignore[arg-type]
    assert to_client(out) == []
    assert not any(isinstance(c, CancelUpstream) for c in out)  # it is already over
    (again,) = sends(pb.fire(backoff_of(pb)))
    assert again.attempt == 2
    assert pb.ex.attempts[0].outcome == kind


def test_the_read_timeout_is_retried() -> None:
    pb = start(retry_config(timeout=1000))
    deadline = pb.ex.get_timer()
    assert deadline == 600.0  # the provider's read timeout
    out = pb.fire(deadline)
    assert out[0] == CancelUpstream(attempt=1)
    assert pb.ex.attempts[0].outcome == "timeout"
    assert pb.ex.state is State.BACKOFF
    (again,) = sends(pb.fire(deadline + backoff_of(pb)))
    assert again.attempt == 2


def test_a_read_timeout_past_the_total_timeout_is_not_retried() -> None:
    pb = start(retry_config(timeout=30))
    out = pb.fire(600.0)
    assert not sends(out)
    assert client_view(out)[0] == 504


def test_a_status_not_to_retry_is_relayed_untouched() -> None:
    pb = start(retry_config())
    error = b'{"error":{"message":"bad","type":"invalid_request_error"}}'
    headers = [(b"content-type", b"application/json"), (b"x-request-id", b"r1")]
    out = pb.feed(
        UpstreamResponse(attempt=1, status=400, headers=headers),
        UpstreamData(attempt=1, data=error),
        UpstreamEnded(attempt=1),
    )
    assert not sends(out)
    status, got, body, complete = client_view(out)
    assert (status, body, complete) == (400, error, True)
    assert header(got, b"x-request-id") == b"r1"
    assert len(pb.ex.attempts) == 1


def test_on_status_and_on_failure_choose_what_is_retried() -> None:
    pb = start(retry_config(on_status=[502], on_failure=["connect"]))
    out = pb.feed(UpstreamResponse(attempt=1, status=503, headers=JSON))
    assert client_view(out)[0] == 503
    pb = start(retry_config(on_status=[502], on_failure=["connect"]))
    out = pb.feed(UpstreamFailed(attempt=1, kind="timeout"))
    assert client_view(out)[0] == 504


# -- deployments and fallbacks ------------------------------------------------------------------


def test_attempts_per_deployment_then_the_next_deployment_then_the_fallback_model() -> None:
    pb = start(retry_config())
    tried = [("p.test", "m1")]
    for attempt in range(1, 6):
        pb.feed(UpstreamFailed(attempt=attempt, kind="connect"), now=pb.now + 0.01)
        (again,) = sends(pb.fire(pb.now + backoff_of(pb)))
        tried.append(where(again) if again.origin.host == "p.test" else ("q.test", "?"))
        last = again
    assert tried == [
        ("p.test", "m1"),
        ("p.test", "m1"),
        ("p.test", "m2"),
        ("p.test", "m2"),
        ("q.test", "?"),
        ("q.test", "?"),
    ]
    # The fallback is an Anthropic provider: the request is translated for it.
    assert last.target == b"/v1/messages"
    assert json.loads(last.body)["model"] == "claude-x"
    assert header(list(last.headers), b"x-api-key") == b"kq"
    assert [a.model for a in pb.ex.attempts] == ["a", "a", "a", "a", "b", "b"]
    # The fallback answers: the client gets it in its own API, under the fallback's name.
    status, _, body, _ = client_view(ok(pb, 6, ANTHROPIC_OK))
    answer = json.loads(body)
    assert status == 200
    assert answer["object"] == "chat.completion"
    assert answer["model"] == "b"
    assert answer["choices"][0]["message"]["content"] == "hello"


def test_exhausted_connect_failures_say_how_many_attempts_were_made() -> None:
    pb = start(retry_config())
    out: list[Command] = []
    for attempt in range(1, 7):
        out = pb.feed(UpstreamFailed(attempt=attempt, kind="connect"), now=pb.now + 0.01)
        if attempt < 6:
            sends(pb.fire(pb.now + backoff_of(pb)))
    status, _, body, complete = client_view(out)
    error = json.loads(body)["error"]
    assert (status, complete) == (502, True)
    assert error["code"] == "upstream_connect_error"
    assert error["type"] == "upstream_error"
    assert "after 6 attempts" in error["message"]
    assert pb.ex.finished and len(pb.ex.attempts) == 6


def test_exhausted_timeouts_are_504_after_n_attempts() -> None:
    pb = start(retry_config(attempts=2), body=CHAT.replace(b'"a"', b'"solo"'))
    pb.feed(UpstreamFailed(attempt=1, kind="timeout"))
    sends(pb.fire(backoff_of(pb)))
    out = pb.feed(UpstreamFailed(attempt=2, kind="timeout"))
    status, _, body, _ = client_view(out)
    assert status == 504
    assert "after 2 attempts" in json.loads(body)["error"]["message"]


def test_every_attempt_rate_limited_is_a_provider_rate_limit_error() -> None:
    pb = start(retry_config(attempts=2), body=CHAT.replace(b'"a"', b'"solo"'))
    limited = [(b"retry-after", b"0.3"), *JSON]
    pb.feed(UpstreamResponse(attempt=1, status=429, headers=limited))
    sends(pb.fire(backoff_of(pb)))
    out = pb.feed(UpstreamResponse(attempt=2, status=429, headers=limited), now=pb.now + 0.01)
    status, headers, body, complete = client_view(out)
    error = json.loads(body)["error"]
    assert (status, complete) == (429, True)
    assert (error["type"], error["code"]) == ("rate_limit_error", "upstream_rate_limited")
    assert "every attempt (2)" in error["message"]
    assert header(headers, b"retry-after") == b"1"
    assert out[0] == CancelUpstream(attempt=2)


def test_a_rate_limit_after_other_failures_is_not_called_every_attempt() -> None:
    pb = start(retry_config(attempts=2), body=CHAT.replace(b'"a"', b'"solo"'))
    pb.feed(UpstreamFailed(attempt=1, kind="connect"))
    sends(pb.fire(backoff_of(pb)))
    out = pb.feed(UpstreamResponse(attempt=2, status=429, headers=JSON))
    if not pb.ex.finished:  # relayed: the body follows
        out += pb.feed(
            UpstreamData(attempt=2, data=b'{"error":{"message":"slow down"}}'),
            UpstreamEnded(attempt=2),
        )
    status, _, body, _ = client_view(out)
    assert status == 429
    assert b"every attempt" not in body


def test_a_single_rate_limited_attempt_without_retries_left_is_relayed() -> None:
    pb = start(retry_config(attempts=1), body=CHAT.replace(b'"a"', b'"solo"'))
    out = pb.feed(
        UpstreamResponse(attempt=1, status=429, headers=JSON),
        UpstreamData(attempt=1, data=b'{"error":{"message":"slow down"}}'),
        UpstreamEnded(attempt=1),
    )
    assert client_view(out)[:3:2] == (429, b'{"error":{"message":"slow down"}}')


def test_a_fallback_that_cannot_serve_the_endpoint_is_skipped() -> None:
    pb = Playbook(retry_config(attempts=1))
    pb.request(b"POST", b"/v1/embeddings", b'{"model":"a","input":"x"}', list(JSON))
    pb.feed(UpstreamFailed(attempt=1, kind="connect"))
    sends(pb.fire(pb.now + backoff_of(pb)))  # a's second deployment
    out = pb.feed(UpstreamFailed(attempt=2, kind="connect"))
    timer = pb.ex.get_timer()
    if timer is not None:  # a retry was planned: carry it out
        out += pb.fire(timer)
    status, _, body, _ = client_view(out)
    assert status == 502, body
    assert "after 2 attempts" in json.loads(body)["error"]["message"]


# -- the total timeout ---------------------------------------------------------------------------


def test_no_attempt_starts_after_the_total_timeout() -> None:
    pb = start(retry_config(timeout=1.0), body=CHAT.replace(b'"a"', b'"solo"'))
    out = pb.feed(UpstreamFailed(attempt=1, kind="connect"), now=2.0)
    assert not sends(out)
    assert client_view(out)[0] == 502
    assert len(pb.ex.attempts) == 1


def test_a_backoff_that_would_end_after_the_timeout_moves_to_the_next_deployment() -> None:
    pb = start(retry_config(timeout=1.0, backoff=0.5, max_backoff=0.5))
    pb.feed(UpstreamFailed(attempt=1, kind="connect"), now=0.9)
    assert backoff_of(pb) == 0.0  # no time to wait: the next deployment, at once
    (again,) = sends(pb.fire(0.9))
    assert where(again) == ("p.test", "m2")
    out = pb.feed(UpstreamFailed(attempt=2, kind="connect"), now=1.2)
    assert not sends(out) and client_view(out)[0] == 502


def test_a_retry_after_beyond_the_timeout_is_not_waited_for() -> None:
    pb = start(retry_config(timeout=2.0, max_backoff=5), body=CHAT.replace(b'"a"', b'"solo"'))
    out = pb.feed(UpstreamResponse(attempt=1, status=503, headers=[(b"retry-after", b"3")]))
    assert not sends(out) and client_view(out)[0] == 503


# -- never after the head was sent ---------------------------------------------------------------


def test_a_stream_that_fails_after_its_head_is_never_retried() -> None:
    pb = start(retry_config(), body=CHAT.replace(b'"hi"}]', b'"hi"}],"stream":true'))
    first = b'data: {"choices":[{"index":0,"delta":{"content":"he"}}]}\n\n'
    out = pb.feed(
        UpstreamResponse(attempt=1, status=200, headers=SSE),
        UpstreamData(attempt=1, data=first),
        UpstreamFailed(attempt=1, kind="reset"),
    )
    assert not sends(out)
    status, _, body, complete = client_view(out)
    assert (status, complete) == (200, True)
    assert body.startswith(first)
    event = parse_block(body[len(first) :])
    assert event.event == "error"
    error = json.loads(event.data)["error"]
    assert error["code"] == "upstream_reset"
    assert len(pb.ex.attempts) == 1
    assert pb.ex.finished


def test_a_relayed_body_that_fails_mid_way_is_cut_not_retried() -> None:
    pb = start(retry_config())
    out = pb.feed(
        UpstreamResponse(attempt=1, status=200, headers=JSON),
        UpstreamData(attempt=1, data=OK[:10]),
        UpstreamFailed(attempt=1, kind="reset"),
    )
    assert not sends(out)
    assert out[-1] == EndResponse(complete=False)


# -- jitter --------------------------------------------------------------------------------------


def first_backoff(proxy: Proxy, seed: float) -> float:
    pb = start(proxy, seed=seed)
    pb.feed(UpstreamFailed(attempt=1, kind="connect"))
    return backoff_of(pb)


def test_jitter_is_deterministic_for_a_seed_and_differs_across_seeds() -> None:
    proxy = Proxy(retry_config(backoff=1.0, max_backoff=10))
    seeds = [0.0, 0.1, 0.25, 0.5, 0.75, 0.999]
    delays = [first_backoff(proxy, seed) for seed in seeds]
    assert delays == [first_backoff(proxy, seed) for seed in seeds]
    assert len(set(delays)) == len(seeds)
    assert all(0.5 <= d <= 1.0 for d in delays)


# -- the trace records every attempt ---------------------------------------------------------------


def test_every_attempt_is_in_the_trace_record() -> None:
    pb = start(retry_config(trace="/traces"))
    pb.feed(UpstreamResponse(attempt=1, status=503, headers=JSON), now=0.01)
    delay = backoff_of(pb)
    pb.fire(pb.now + delay)
    pb.feed(UpstreamFailed(attempt=2, kind="connect"), now=pb.now + 0.02)
    pb.fire(pb.now + backoff_of(pb))
    out = ok(pb, 3)
    (trace,) = [c for c in out if isinstance(c, WriteTrace)]
    attempts = trace.record["attempts"]
    assert [(a["attempt"], a["outcome"], a["status"]) for a in attempts] == [
        (1, "status", 503),
        (2, "connect", None),
        (3, "ok", 200),
    ]
    assert [a["upstream_model"] for a in attempts] == ["m1", "m1", "m2"]
    assert attempts[0]["delay_ms"] == 0
    assert attempts[1]["delay_ms"] == pytest.approx(delay * 1000, abs=0.001)
    assert attempts[2]["delay_ms"] == 0
    assert attempts[1]["duration_ms"] == pytest.approx(20, abs=0.001)
    assert trace.record["outcome"] == "completed"


# -- the one-provider shorthand --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "body"),
    [(b"/v1/chat/completions", b'{"model":"m","messages":[]}'), (b"/v1/models", b"")],
    ids=["routed", "passthrough-get"],
)
def test_the_shorthand_retries_the_same_request(target: bytes, body: bytes) -> None:
    cfg = upstream_config(middleware=[{"retry": {"attempts": 3, "backoff": 0.1}}])
    pb = Playbook(cfg)
    method = b"POST" if body else b"GET"
    (first,) = sends(pb.request(method, target, body, list(JSON)))
    pb.feed(UpstreamResponse(attempt=1, status=503, headers=[]))
    (second,) = sends(pb.fire(backoff_of(pb)))
    assert second == SendUpstreamRequest(
        attempt=2,
        origin=first.origin,
        method=first.method,
        target=first.target,
        headers=first.headers,
        body=first.body,
        connect_timeout=first.connect_timeout,
    )


def test_the_shorthand_retries_a_passthrough_post_with_one_content_length() -> None:
    cfg = upstream_config(middleware=[{"retry": {"attempts": 3, "backoff": 0.1}}])
    pb = Playbook(cfg)
    (first,) = sends(pb.request(b"POST", b"/v1/audio/speech", b'{"input":"hi"}', list(JSON)))
    pb.feed(UpstreamResponse(attempt=1, status=503, headers=[]))
    (second,) = sends(pb.fire(backoff_of(pb)))
    assert [n for n, _ in second.headers].count(b"content-length") == 1
    assert second.headers == first.headers


def test_the_shorthand_stops_after_its_attempts() -> None:
    cfg = upstream_config(middleware=[{"retry": {"attempts": 2, "backoff": 0.1}}])
    pb = Playbook(cfg)
    pb.request(b"GET", b"/v1/models")
    pb.feed(UpstreamFailed(attempt=1, kind="connect"))
    sends(pb.fire(backoff_of(pb)))
    out = pb.feed(UpstreamFailed(attempt=2, kind="connect"))
    status, _, body, _ = client_view(out)
    assert status == 502 and "after 2 attempts" in json.loads(body)["error"]["message"]


# -- with the other built-ins -------------------------------------------------------------------


def test_a_client_leaving_during_the_backoff_ends_the_exchange() -> None:
    pb = start(retry_config())
    pb.feed(UpstreamFailed(attempt=1, kind="connect"))
    deadline = pb.ex.get_timer()
    assert deadline is not None
    out = pb.feed(ClientGone())
    assert to_client(out) == [] and not sends(out)
    assert pb.ex.state is State.DONE and pb.ex.get_timer() is None
    assert pb.fire(deadline) == []  # the stale timer starts nothing


def test_the_quota_is_asked_once_per_exchange_not_per_attempt() -> None:
    cfg = config(
        providers={"p": {"base_url": "http://p.test:8080"}},
        models={"a": {"deployments": [{"provider": "p", "model": "m1"}], "limits": {"rpm": 9}}},
        middleware=["rate_limit", {"retry": {"attempts": 3, "backoff": 0.1}}],
    )
    pb = Playbook(cfg)
    out = pb.request(body=CHAT, headers=list(JSON))
    (query,) = [c for c in out if isinstance(c, AcquireQuota)]
    decision = Decision(allowed=True, limit=9, remaining=8, reset_after=60.0, retry_after=0.0)
    out = pb.feed(QuotaAnswered(query_id=query.query_id, admitted=True, decisions=(decision,)))
    assert len(sends(out)) == 1
    pb.feed(UpstreamFailed(attempt=1, kind="connect"))
    out = pb.fire(backoff_of(pb))
    assert len(sends(out)) == 1
    assert not any(isinstance(c, AcquireQuota) for c in out)


# -- the policy's own rules ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"attempts": 0}, "attempts must be an integer >= 1"),
        ({"attempts": True}, "attempts must be an integer >= 1"),
        ({"backoff": -1}, "backoff must be a number of seconds >= 0"),
        ({"max_backoff": float("inf")}, "max_backoff must be a number"),
        ({"timeout": 0}, "timeout must be a number of seconds > 0"),
        ({"on_status": [200]}, "on_status must list HTTP error statuses"),
        ({"on_failure": ["dns"]}, "on_failure: unknown kinds ['dns']"),
    ],
)
def test_bad_retry_options_are_readable_errors(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match="^" + message.replace("[", r"\[").replace("]", r"\]")):
        RetryMiddleware(**options)
    with pytest.raises(ValueError, match=r"\bmust\b|unknown kinds"):
        Proxy(upstream_config(middleware=[{"retry": options}]))


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([(b"retry-after", b"2")], 2.0),
        ([(b"retry-after", b"1.5")], 1.5),
        ([(b"retry-after-ms", b"250"), (b"retry-after", b"9")], 0.25),
        ([(b"retry-after-ms", b"x"), (b"retry-after", b"9")], 9.0),
        ([(b"retry-after", b"-1")], None),
        ([(b"retry-after", b"nan")], None),
        ([(b"retry-after", b"soon")], None),
        ([(b"retry-after", b"Tue, 14 Nov 2023 22:13:30 GMT")], 10.0),
        ([(b"retry-after", b"Tue, 14 Nov 2023 22:13:00 GMT")], 0.0),
        ([], None),
    ],
)
def test_parse_retry_after(headers: list[tuple[bytes, bytes]], expected: float | None) -> None:
    assert parse_retry_after(headers, wall_now=WALL) == expected
