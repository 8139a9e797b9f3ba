"""HEAD, and a client the driver drops: playbooks, no sockets.

HEAD gets what GET would get -- the same status and headers, a Content-Length
that is the GET body's -- and never a body, whoever answers: the proxy itself
(health, its own errors, the mock, a middleware's reply) or the upstream.
"""

from __future__ import annotations

from typing import Any

import pytest

from core import (
    CancelUpstream,
    ClientGone,
    Command,
    EndResponse,
    Log,
    Proxy,
    ProxyConfig,
    Reply,
    SendBody,
    SendUpstreamRequest,
    StartResponse,
    UpstreamData,
    UpstreamEnded,
    UpstreamResponse,
)

from .playbook import Playbook, client_view, config, header, upstream_config

CHAT = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'
GATEWAY: dict[str, Any] = {
    "providers": {"up": {"base_url": "http://up.test:8080"}},
    "models": {"gpt": [{"provider": "up", "model": "gpt-4o-mini"}]},
}


def _get_and_head(proxy: Proxy, target: bytes) -> tuple[list[Command], list[Command]]:
    get = Playbook(proxy).request(b"GET", target)
    head = Playbook(proxy).request(b"HEAD", target)
    return get, head


@pytest.mark.parametrize(
    ("name", "cfg", "target", "status"),
    [
        ("health", config(), b"/health", 200),
        ("mock model list", config(), b"/v1/models", 200),
        ("mock: not served", config(), b"/v1/nothing-here", 404),
        ("gateway model list", ProxyConfig.model_validate(GATEWAY), b"/v1/models", 200),
        ("gateway: no route", ProxyConfig.model_validate(GATEWAY), b"/v1/nothing-here", 404),
        ("bad target", upstream_config(), b"/../etc/passwd", 400),
    ],
)
def test_head_to_what_the_proxy_answers_is_the_get_head_without_a_body(
    name: str, cfg: ProxyConfig, target: bytes, status: int
) -> None:
    get, head = _get_and_head(Proxy(cfg), target)
    get_status, get_headers, get_body, get_complete = client_view(get)
    head_status, head_headers, head_body, head_complete = client_view(head)
    assert get_status == head_status == status
    assert head_headers == get_headers
    assert header(head_headers, b"content-length") == str(len(get_body)).encode()
    assert get_body and head_body == b""
    assert not any(isinstance(c, SendBody) for c in head)
    assert get_complete is head_complete is True


def test_head_answered_by_a_middleware_has_no_body() -> None:
    class Deny:
        def on_request(self, ex: object) -> Reply:
            return Reply(status=401, headers=[(b"content-type", b"application/json")], body=b"{}")

    pb = Playbook(Proxy(upstream_config(), middleware=[Deny()]))
    out = pb.request(b"HEAD", b"/v1/models")
    assert [type(c) for c in out if not isinstance(c, Log)] == [StartResponse, EndResponse]
    status, headers, _, complete = client_view(out)
    assert (status, header(headers, b"content-length"), complete) == (401, b"2", True)


def test_head_that_breaks_a_middleware_is_a_500_head() -> None:
    class Broken:
        def on_request(self, ex: object) -> None:
            raise ZeroDivisionError("oops")

    pb = Playbook(Proxy(upstream_config(), middleware=[Broken()]))
    out = pb.request(b"HEAD", b"/v1/models")
    status, headers, body, complete = client_view(out)
    assert (status, body, complete) == (500, b"", True)
    assert int(header(headers, b"content-length") or 0) > 0
    assert not any(isinstance(c, SendBody) for c in out)


def test_head_is_forwarded_as_head_and_the_upstream_head_relayed() -> None:
    pb = Playbook(upstream_config())
    out = pb.request(b"HEAD", b"/v1/files/abc")
    (sent,) = [c for c in out if isinstance(c, SendUpstreamRequest)]
    assert sent.method == b"HEAD" and sent.body == b""
    assert header(list(sent.headers), b"content-length") is None
    # The upstream's answer to HEAD has no body (its client knows the method).
    out = pb << UpstreamResponse(
        attempt=1,
        status=200,
        headers=[(b"content-type", b"application/json"), (b"content-length", b"123")],
    )
    out += pb << UpstreamEnded(attempt=1)
    status, headers, body, complete = client_view(out)
    assert (status, header(headers, b"content-length"), body, complete) == (200, b"123", b"", True)
    assert pb.ex.outcome == "completed"


def test_head_to_an_event_stream_sends_no_event_even_on_failure() -> None:
    pb = Playbook(upstream_config())
    pb.request(b"HEAD", b"/v1/events")
    out = pb << UpstreamResponse(
        attempt=1, status=200, headers=[(b"content-type", b"text/event-stream")]
    )
    out += pb.fire(now=10_000.0)  # the read timer: an SSE error event for a GET
    assert not any(isinstance(c, SendBody) for c in out)
    assert client_view(out)[3] is True


# -- a client the driver drops -----------------------------------------------------


def _relaying() -> Playbook:
    pb = Playbook(upstream_config())
    pb.request(b"POST", b"/v1/chat/completions", CHAT)
    pb << UpstreamResponse(attempt=1, status=200, headers=[(b"content-type", b"text/event-stream")])
    pb << UpstreamData(attempt=1, data=b"data: 1\n\n")
    return pb


def test_a_dropped_client_is_the_one_warning_and_its_upstream_is_cancelled() -> None:
    pb = _relaying()
    reason = "it stopped reading: a write waited 30 s (server.write_timeout)"
    out = pb << ClientGone(reason=reason)
    assert out == [
        CancelUpstream(attempt=1),
        Log(level="warning", message=f"dropped the client: {reason}", fields={"exchange": "ex1"}),
    ]
    assert pb.ex.outcome == "client_gone" and pb.ex.error is None


def test_a_client_that_left_is_an_info_line() -> None:
    pb = _relaying()
    out = pb << ClientGone()
    assert [c for c in out if isinstance(c, Log)] == [
        Log(level="info", message="client went away", fields={"exchange": "ex1"})
    ]
    assert pb.ex.outcome == "client_gone"
