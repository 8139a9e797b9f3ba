"""The config model's validation, the mock provider's answers, odd corners of the core."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from core import (
    LocalProtocolError,
    Origin,
    ProtocolError,
    Proxy,
    ProxyConfig,
    RemoteProtocolError,
    SendUpstreamRequest,
)
from core._config import UpstreamConfig
from core.policies import TraceMiddleware

from .playbook import Playbook, client_view, config


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://x", "must start with http:// or https://"),
        ("http://", "must name a host"),
        ("http://h/?q=1", "must not have a query or fragment"),
        ("http://h:99999", "invalid port"),
        ("http://user:pw@h", "must not carry credentials"),
    ],
)
def test_bad_base_urls_are_refused_with_a_reason(url: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        UpstreamConfig(base_url=url)


def test_middleware_entries_are_normalised_and_checked() -> None:
    cfg = ProxyConfig.model_validate({"middleware": ["trace", {"x:Y": None}]})
    assert cfg.middleware == ({"trace": {}}, {"x:Y": {}})
    with pytest.raises(ValidationError, match="entry 0 must be a name or a mapping"):
        ProxyConfig.model_validate({"middleware": [{"a": {}, "b": {}}]})
    with pytest.raises(ValidationError, match="valid dictionary"):
        ProxyConfig.model_validate({"middleware": [{"trace": 3}]})
    with pytest.raises(ValidationError):
        ProxyConfig.model_validate({"middleware": "trace"})
    with pytest.raises(ValidationError, match="Extra inputs"):
        ProxyConfig.model_validate({"limits": {"max_bodysize": 1}})


def test_trace_needs_a_directory() -> None:
    with pytest.raises(ValueError, match="'dir' must name a directory"):
        TraceMiddleware(dir="")


def test_protocol_error_is_abstract() -> None:
    with pytest.raises(TypeError):
        ProtocolError("x")
    assert LocalProtocolError("x").error_status_hint == 400
    assert RemoteProtocolError("x", error_status_hint=502).error_status_hint == 502


def test_ipv6_and_idn_upstream_hosts() -> None:
    proxy = Proxy(ProxyConfig(upstream=UpstreamConfig(base_url="http://[::1]:8080")))
    pb = Playbook(proxy)
    (cmd,) = pb.request(b"GET", b"/v1/models")
    assert isinstance(cmd, SendUpstreamRequest)
    assert cmd.origin == Origin(scheme="http", host="::1", port=8080)
    assert (b"host", b"[::1]:8080") in cmd.headers
    proxy = Proxy(ProxyConfig(upstream=UpstreamConfig(base_url="https://bücher.example")))
    (cmd,) = Playbook(proxy).request(b"GET", b"/v1/models")
    assert isinstance(cmd, SendUpstreamRequest)
    assert cmd.origin.host == "xn--bcher-kva.example"


def chat(body: dict[str, Any], delay: float = 0.0) -> tuple[int | None, bytes]:
    pb = Playbook(config(mock={"stream_delay": delay}))
    status, _, data, complete = client_view(
        pb.request(b"POST", b"/v1/chat/completions", json.dumps(body).encode())
    )
    assert complete
    return status, data


def test_mock_stream_without_delay_is_sent_at_once() -> None:
    status, data = chat(
        {"model": "m", "stream": True, "messages": [{"role": "user", "content": "x"}]}
    )
    assert status == 200 and data.endswith(b"data: [DONE]\n\n")
    assert b'"usage"' not in data  # not asked for


def test_mock_honours_max_tokens_and_content_parts() -> None:
    status, data = chat(
        {
            "model": "m",
            "max_tokens": 3,
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "hello"}, "junk"]},
            ],
        }
    )
    answer = json.loads(data)
    assert answer["choices"][0]["message"]["content"] == "This is the"
    assert answer["choices"][0]["finish_reason"] == "length"
    assert answer["usage"]["completion_tokens"] == 3


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "m"}, "messages"),
        ({"model": "m", "messages": []}, "messages"),
        ({"messages": [{"role": "user", "content": "x"}]}, "model"),
        ({"model": "m", "messages": ["hi"]}, "messages"),
    ],
)
def test_mock_refuses_bad_chat_requests_naming_the_param(body: dict[str, Any], param: str) -> None:
    status, data = chat(body)
    assert status == 400 and json.loads(data)["error"]["param"] == param


def test_mock_refuses_a_body_that_is_not_an_object() -> None:
    pb = Playbook(config())
    status, _, data, _ = client_view(pb.request(b"POST", b"/v1/chat/completions", b"[1]"))
    assert status == 400 and "JSON object" in json.loads(data)["error"]["message"]


def test_mock_embeddings_are_deterministic() -> None:
    def embed(inp: Any) -> tuple[int | None, Any]:
        pb = Playbook(config())
        body = json.dumps({"model": "mock-embedding", "input": inp}).encode()
        status, _, data, _ = client_view(pb.request(b"POST", b"/v1/embeddings", body))
        return status, json.loads(data)

    status, a = embed("hello")
    _, b = embed(["hello", "world"])
    assert status == 200 and a["object"] == "list"
    assert a["data"][0]["embedding"] == b["data"][0]["embedding"]
    assert a["data"][0]["embedding"] != b["data"][1]["embedding"]
    assert len(a["data"][0]["embedding"]) == 16
    assert all(-1.0 <= v <= 1.0 for v in a["data"][0]["embedding"])
    assert embed([])[0] == 400
    pb = Playbook(config())
    body = json.dumps({"input": "x"}).encode()
    status, _, data, _ = client_view(pb.request(b"POST", b"/v1/embeddings", body))
    assert status == 400 and json.loads(data)["error"]["param"] == "model"


def test_mock_lists_its_models() -> None:
    pb = Playbook(config())
    status, _, data, _ = client_view(pb.request(b"GET", b"/v1/models"))
    assert status == 200
    assert [m["id"] for m in json.loads(data)["data"]] == ["mock-gpt", "mock-embedding"]
