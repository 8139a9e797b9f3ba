"""Playbook tests of the gateway: routing, model renaming, usage and cost, translation."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from core import (
    Command,
    Proxy,
    ProxyConfig,
    SendBody,
    SendUpstreamRequest,
    UpstreamData,
    UpstreamEnded,
    UpstreamFailed,
    UpstreamResponse,
    WriteTrace,
)
from core.gateway import Router

from .playbook import WALL, Playbook, client_view, header

OAI = {"type": "openai", "base_url": "http://oai.test", "api_key": "sk-oai"}
ANT = {"type": "anthropic", "base_url": "http://ant.test", "api_key": "sk-ant"}
JSON = [(b"content-type", b"application/json")]
SSE = [(b"content-type", b"text/event-stream")]


def gateway(**extra: Any) -> Proxy:
    tree: dict[str, Any] = {
        "providers": {"oai": OAI, "claude": ANT},
        "models": {
            "fast": [{"provider": "oai", "model": "gpt-4o-mini"}],
            "smart": [{"provider": "claude", "model": "claude-sonnet-4-5"}],
            "mixed": [
                {"provider": "oai", "model": "gpt-4o", "weight": 3},
                {"provider": "claude", "model": "claude-sonnet-4-5", "weight": 1},
            ],
            "priced": [
                {"provider": "oai", "model": "my-ft", "price": {"input": 1.0, "output": 2.0}}
            ],
        },
    }
    tree.update(extra)
    return Proxy(ProxyConfig.model_validate(tree))


def chat(model: str, **extra: Any) -> bytes:
    body = {"model": model, "messages": [{"role": "user", "content": "Hi"}], **extra}
    return json.dumps(body).encode()


def sent(commands: list[Command]) -> SendUpstreamRequest:
    (cmd,) = [c for c in commands if isinstance(c, SendUpstreamRequest)]
    return cmd


def run(
    pb: Playbook, status: int, headers: list[tuple[bytes, bytes]], *chunks: bytes
) -> list[Command]:
    out = pb.feed(UpstreamResponse(attempt=1, status=status, headers=headers), now=0.1)
    for chunk in chunks:
        out += pb.feed(UpstreamData(attempt=1, data=chunk), now=0.2)
    out += pb.feed(UpstreamEnded(attempt=1), now=0.3)
    return out


def exchange(proxy: Proxy, rand: float = 0.0) -> Playbook:
    pb = Playbook(proxy)
    pb.ex = proxy.exchange(exchange_id="ex1", now=0.0, wall_time=WALL, rand=rand)
    return pb


# -- routing ------------------------------------------------------------------------


def test_a_public_model_goes_to_its_deployment_under_its_upstream_name() -> None:
    pb = exchange(gateway())
    cmd = sent(pb.request(b"POST", b"/v1/chat/completions", chat("fast")))
    assert cmd.origin.host == "oai.test"
    assert json.loads(cmd.body)["model"] == "gpt-4o-mini"
    assert header(list(cmd.headers), b"authorization") == b"Bearer sk-oai"
    assert pb.ex.model == "fast"


@pytest.mark.parametrize(
    ("rand", "host"),
    [(0.0, "oai.test"), (0.74, "oai.test"), (0.75, "ant.test"), (0.999, "ant.test")],
)
def test_weighted_deployments_are_chosen_by_the_drivers_draw(rand: float, host: str) -> None:
    pb = exchange(gateway(), rand=rand)
    assert sent(pb.request(b"POST", b"/v1/chat/completions", chat("mixed"))).origin.host == host


def test_provider_slash_model_addressing() -> None:
    pb = exchange(gateway())
    cmd = sent(pb.request(b"POST", b"/v1/chat/completions", chat("oai/gpt-4.1")))
    assert cmd.origin.host == "oai.test" and json.loads(cmd.body)["model"] == "gpt-4.1"


@pytest.mark.parametrize("model", ["nope", "nobody/gpt-4o", "oai/"])
def test_unknown_model_is_404_model_not_found(model: str) -> None:
    pb = exchange(gateway())
    status, _, body, _ = client_view(pb.request(b"POST", b"/v1/chat/completions", chat(model)))
    error = json.loads(body)["error"]
    assert status == 404 and error["code"] == "model_not_found" and error["param"] == "model"


def test_errors_for_anthropic_clients_are_in_anthropic_shape() -> None:
    pb = exchange(gateway())
    body = json.dumps({"model": "nope", "max_tokens": 5, "messages": []}).encode()
    status, _, data, _ = client_view(pb.request(b"POST", b"/v1/messages", body))
    answer = json.loads(data)
    assert status == 404 and answer["type"] == "error"
    assert answer["error"]["type"] == "not_found_error"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{bad", "not valid JSON"),
        (b"[]", "JSON object"),
        (b'{"messages":[]}', "'model' is required"),
    ],
)
def test_unreadable_routed_requests_are_400(body: bytes, message: str) -> None:
    pb = exchange(gateway())
    status, _, data, _ = client_view(pb.request(b"POST", b"/v1/chat/completions", body))
    assert status == 400 and message in json.loads(data)["error"]["message"]


def test_models_lists_the_public_models() -> None:
    pb = exchange(gateway())
    status, _, data, _ = client_view(pb.request(b"GET", b"/v1/models"))
    listing = json.loads(data)
    assert status == 200 and listing["object"] == "list"
    assert [m["id"] for m in listing["data"]] == ["fast", "smart", "mixed", "priced"]
    assert listing["data"][1]["owned_by"] == "claude"


def test_other_paths_have_no_route_in_gateway_mode() -> None:
    pb = exchange(gateway())
    status, _, data, _ = client_view(pb.request(b"GET", b"/v1/files"))
    assert status == 404 and json.loads(data)["error"]["code"] == "unknown_url"


def test_in_shorthand_mode_models_and_other_paths_are_forwarded() -> None:
    proxy = Proxy(ProxyConfig.model_validate({"upstream": {"base_url": "http://up.test"}}))
    for target in (b"/v1/models", b"/v1/files?x=1"):
        cmd = sent(exchange(proxy).request(b"GET", target))
        assert cmd.target == target


def test_in_shorthand_mode_unreadable_same_api_bodies_pass_untouched() -> None:
    proxy = Proxy(ProxyConfig.model_validate({"upstream": {"base_url": "http://up.test"}}))
    cmd = sent(exchange(proxy).request(b"POST", b"/v1/embeddings", b"not json"))
    assert cmd.body == b"not json"


def test_an_endpoint_anthropic_cannot_serve_is_400() -> None:
    pb = exchange(gateway())
    body = json.dumps({"model": "smart", "input": "x"}).encode()
    status, _, data, _ = client_view(pb.request(b"POST", b"/v1/embeddings", body))
    error = json.loads(data)["error"]
    assert status == 400 and error["code"] == "unsupported_endpoint"


# -- native pass-through: renaming and usage ------------------------------------------


def test_body_is_passed_untouched_when_nothing_needs_changing() -> None:
    proxy = Proxy(ProxyConfig.model_validate({"upstream": {"base_url": "http://up.test"}}))
    raw = chat("gpt-4o", temperature=0.5)
    cmd = sent(exchange(proxy).request(b"POST", b"/v1/chat/completions", raw))
    assert cmd.body is raw


def test_usage_is_read_from_a_plain_answer_and_priced() -> None:
    pb = exchange(gateway())
    pb.request(b"POST", b"/v1/chat/completions", chat("fast"))
    answer = json.dumps(
        {
            "choices": [],
            "usage": {
                "prompt_tokens": 1000,
                "completion_tokens": 500,
                "prompt_tokens_details": {"cached_tokens": 200},
            },
        }
    ).encode()
    out = run(pb, 200, JSON, answer[:10], answer[10:])
    assert client_view(out)[2] == answer  # relayed as it came
    usage = pb.ex.usage
    assert usage is not None
    assert (usage.input_tokens, usage.cached_input_tokens, usage.output_tokens) == (800, 200, 500)
    # gpt-4o-mini: 0.15 in, 0.075 cached, 0.60 out per million
    assert pb.ex.cost_usd == pytest.approx((800 * 0.15 + 200 * 0.075 + 500 * 0.6) / 1e6)


def test_price_override_and_unknown_price() -> None:
    pb = exchange(gateway())
    pb.request(b"POST", b"/v1/chat/completions", chat("priced"))
    run(pb, 200, JSON, b'{"usage":{"prompt_tokens":10,"completion_tokens":10}}')
    assert pb.ex.cost_usd == pytest.approx((10 * 1.0 + 10 * 2.0) / 1e6)
    pb = exchange(gateway())
    pb.request(b"POST", b"/v1/chat/completions", chat("oai/some-unknown-model"))
    run(pb, 200, JSON, b'{"usage":{"prompt_tokens":10,"completion_tokens":10}}')
    assert pb.ex.usage is not None and pb.ex.cost_usd is None


def test_error_answers_carry_no_usage() -> None:
    pb = exchange(gateway())
    pb.request(b"POST", b"/v1/chat/completions", chat("fast"))
    run(pb, 500, JSON, b'{"error":{}}')
    assert pb.ex.usage is None and pb.ex.cost_usd is None


CHUNK = b'data: {"choices":[{"index":0,"delta":{"content":"Hi"}}]}\n\n'
USAGE = b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1}}\n\n'
DONE = b"data: [DONE]\n\n"


def test_usage_is_asked_for_and_the_usage_chunk_removed_when_the_client_did_not() -> None:
    pb = exchange(gateway())
    cmd = sent(pb.request(b"POST", b"/v1/chat/completions", chat("fast", stream=True)))
    assert json.loads(cmd.body)["stream_options"] == {"include_usage": True}
    out = run(pb, 200, SSE, CHUNK + USAGE + DONE)
    assert client_view(out)[2] == CHUNK + DONE
    assert pb.ex.usage is not None and pb.ex.usage.output_tokens == 1


def test_the_usage_chunk_stays_when_the_client_asked_for_it() -> None:
    pb = exchange(gateway())
    raw = chat("fast", stream=True, stream_options={"include_usage": True})
    cmd = sent(pb.request(b"POST", b"/v1/chat/completions", raw))
    assert json.loads(cmd.body)["model"] == "gpt-4o-mini"
    out = run(pb, 200, SSE, CHUNK + USAGE + DONE)
    assert client_view(out)[2] == CHUNK + USAGE + DONE


def test_other_stream_options_are_kept_when_usage_is_added() -> None:
    pb = exchange(gateway())
    raw = chat("fast", stream=True, stream_options={"include_obfuscation": False})
    cmd = sent(pb.request(b"POST", b"/v1/chat/completions", raw))
    assert json.loads(cmd.body)["stream_options"] == {
        "include_obfuscation": False,
        "include_usage": True,
    }


# -- translation ------------------------------------------------------------------------


def test_chat_to_an_anthropic_provider_is_translated_both_ways() -> None:
    pb = exchange(gateway())
    cmd = sent(pb.request(b"POST", b"/v1/chat/completions", chat("smart", max_tokens=50)))
    assert cmd.target == b"/v1/messages"
    headers = list(cmd.headers)
    assert header(headers, b"x-api-key") == b"sk-ant"
    assert header(headers, b"anthropic-version") == b"2023-06-01"
    assert header(headers, b"authorization") is None
    sent_body = json.loads(cmd.body)
    assert sent_body["model"] == "claude-sonnet-4-5" and sent_body["max_tokens"] == 50
    message = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5",
        "content": [{"type": "text", "text": "Hello!"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 12, "output_tokens": 3},
    }
    out = run(pb, 200, JSON, json.dumps(message).encode())
    status, headers, data, complete = client_view(out)
    answer = json.loads(data)
    assert status == 200 and complete
    assert header(headers, b"content-length") == str(len(data)).encode()
    assert answer["object"] == "chat.completion" and answer["model"] == "smart"
    assert answer["choices"][0]["message"]["content"] == "Hello!"
    assert answer["choices"][0]["finish_reason"] == "stop"
    assert answer["usage"]["prompt_tokens"] == 12
    assert pb.ex.cost_usd == pytest.approx((12 * 3 + 3 * 15) / 1e6)


def test_anthropic_errors_reach_an_openai_client_in_its_shape() -> None:
    pb = exchange(gateway())
    pb.request(b"POST", b"/v1/chat/completions", chat("smart"))
    error = b'{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}'
    upstream_headers = [
        *JSON,
        (b"retry-after", b"7"),
        (b"request-id", b"req_1"),
        (b"x-other", b"1"),
    ]
    status, headers, data, _ = client_view(run(pb, 429, upstream_headers, error))
    assert status == 429
    assert header(headers, b"retry-after") == b"7" and header(headers, b"request-id") == b"req_1"
    assert header(headers, b"x-other") is None
    assert json.loads(data)["error"]["message"] == "slow down"


def _anthropic_stream(texts: list[str]) -> bytes:
    events: list[tuple[str, dict[str, Any]]] = [
        (
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": "msg_1",
                    "type": "message",
                    "role": "assistant",
                    "model": "m",
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {"input_tokens": 5, "output_tokens": 1},
                },
            },
        ),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
    ]
    events += [
        (
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": t}},
        )
        for t in texts
    ]
    events += [
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": len(texts)},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    return b"".join(
        f"event: {name}\r\ndata: {json.dumps(data)}\r\n\r\n".encode() for name, data in events
    )


def test_an_anthropic_stream_becomes_chat_chunks() -> None:
    pb = exchange(gateway())
    pb.request(b"POST", b"/v1/chat/completions", chat("smart", stream=True))
    stream = _anthropic_stream(["Hel", "lo"])
    out = run(pb, 200, SSE, stream[:100], stream[100:])
    status, headers, data, complete = client_view(out)
    assert status == 200 and complete and header(headers, b"content-type") == b"text/event-stream"
    blocks = [b for b in data.split(b"\n\n") if b]
    assert blocks[-1] == b"data: [DONE]"
    chunks = [json.loads(b[len(b"data: ") :]) for b in blocks[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "Hello"
    assert all(c["model"] == "smart" for c in chunks)
    assert not any(c["choices"] == [] for c in chunks)  # no usage chunk: not asked for
    assert pb.ex.usage is not None and pb.ex.usage.output_tokens == 2


def test_anthropic_client_to_an_openai_provider_is_translated_both_ways() -> None:
    pb = exchange(gateway())
    body = {
        "model": "fast",
        "max_tokens": 20,
        "system": "Be brief.",
        "messages": [{"role": "user", "content": "Hi"}],
    }
    cmd = sent(pb.request(b"POST", b"/v1/messages", json.dumps(body).encode()))
    assert cmd.target == b"/v1/chat/completions"
    sent_body = json.loads(cmd.body)
    assert sent_body["model"] == "gpt-4o-mini"
    assert sent_body["messages"][0] == {"role": "system", "content": "Be brief."}
    completion = {
        "id": "c1",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o-mini",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "Yo"}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10},
    }
    status, _, data, _ = client_view(run(pb, 200, JSON, json.dumps(completion).encode()))
    message = json.loads(data)
    assert status == 200 and message["type"] == "message" and message["model"] == "fast"
    assert message["content"] == [{"type": "text", "text": "Yo"}]
    assert message["stop_reason"] == "end_turn"
    assert message["usage"]["input_tokens"] == 9 and message["usage"]["output_tokens"] == 1


def test_max_tokens_param_follows_the_provider() -> None:
    body = json.dumps(
        {"model": "fast", "max_tokens": 7, "messages": [{"role": "user", "content": "Hi"}]}
    ).encode()
    for param in ("max_tokens", "max_completion_tokens"):
        proxy = gateway(providers={"oai": {**OAI, "max_tokens_param": param}, "claude": ANT})
        cmd = sent(exchange(proxy).request(b"POST", b"/v1/messages", body))
        assert json.loads(cmd.body)[param] == 7


def test_a_parameter_that_cannot_be_carried_over_is_400_and_nothing_is_sent() -> None:
    pb = exchange(gateway())
    out = pb.request(b"POST", b"/v1/chat/completions", chat("smart", n=2))
    assert not any(isinstance(c, SendUpstreamRequest) for c in out)
    status, _, data, _ = client_view(out)
    assert status == 400 and json.loads(data)["error"]["param"] == "n"


def test_a_translated_answer_that_is_not_json_is_502() -> None:
    pb = exchange(gateway())
    pb.request(b"POST", b"/v1/chat/completions", chat("smart"))
    status, _, data, _ = client_view(run(pb, 200, JSON, b"<html>"))
    assert status == 502 and json.loads(data)["error"]["code"] == "upstream_protocol_error"


def test_a_translated_answer_over_the_limit_is_502() -> None:
    pb = exchange(gateway(limits={"max_body_size": 200}))
    pb.request(b"POST", b"/v1/chat/completions", chat("smart"))
    pb.feed(UpstreamResponse(attempt=1, status=200, headers=JSON))
    assert pb.feed(UpstreamData(attempt=1, data=b"x" * 150)) == []
    out = pb.feed(UpstreamData(attempt=1, data=b"x" * 51))
    status, _, data, _ = client_view(out)
    assert status == 502 and json.loads(data)["error"]["code"] == "upstream_response_too_large"


def test_a_failure_mid_stream_for_an_anthropic_client_is_an_anthropic_error_event() -> None:
    pb = exchange(gateway())
    body = {
        "model": "fast",
        "max_tokens": 5,
        "stream": True,
        "messages": [{"role": "user", "content": "Hi"}],
    }
    pb.request(b"POST", b"/v1/messages", json.dumps(body).encode())
    pb.feed(UpstreamResponse(attempt=1, status=200, headers=SSE))
    out = pb.feed(UpstreamFailed(attempt=1, kind="reset"))
    data = client_view(out)[2]
    assert data.startswith(b"event: error\ndata: ")
    assert json.loads(data.split(b"data: ", 1)[1])["type"] == "error"


def test_trace_records_model_usage_and_cost() -> None:
    proxy = gateway(middleware=[{"trace": {"dir": "/t"}}])
    pb = exchange(proxy)
    pb.request(b"POST", b"/v1/chat/completions", chat("fast"))
    out = run(pb, 200, JSON, b'{"usage":{"prompt_tokens":10,"completion_tokens":5}}')
    (trace,) = [c for c in out if isinstance(c, WriteTrace)]
    assert trace.record["model"] == "fast"
    assert trace.record["usage"]["output_tokens"] == 5
    assert trace.record["cost_usd"] == pytest.approx((10 * 0.15 + 5 * 0.6) / 1e6)


# -- configuration --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tree", "message"),
    [
        (
            {"upstream": {"base_url": "http://u"}, "providers": {"p": OAI}},
            re.escape("upstream: set together with providers or models (upstream, or --base-url"),
        ),
        (
            {"models": {"m": [{"provider": "p", "model": "x"}]}},
            re.escape("models: set without providers (each deployment names one of providers)"),
        ),
        (
            {"providers": {"p": OAI}, "models": {"m": []}},
            re.escape(
                "models.m.deployments: lists no deployment (at least one: {provider, model})"
            ),
        ),
        (
            {"providers": {"p": OAI}, "models": {"m": [{"provider": "q", "model": "x"}]}},
            re.escape("models.m.deployments[0].provider: unknown provider 'q' (providers: p)"),
        ),
        (
            {
                "providers": {"p": OAI},
                "models": {"m": [{"provider": "p", "model": "x", "weight": 0}]},
            },
            "greater than 0",
        ),
    ],
)
def test_routing_configuration_errors_name_the_field(tree: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ProxyConfig.model_validate(tree)


def test_provider_extra_headers_replace_the_clients() -> None:
    proxy = gateway(
        providers={"oai": {**OAI, "headers": {"OpenAI-Organization": "org-9"}}, "claude": ANT}
    )
    pb = exchange(proxy)
    raw = chat("fast")
    cmd = sent(
        pb.request(b"POST", b"/v1/chat/completions", raw, [(b"openai-organization", b"org-1")])
    )
    assert [v for n, v in cmd.headers if n == b"openai-organization"] == [b"org-9"]


@settings(max_examples=100)
@given(
    st.lists(st.text(max_size=12), min_size=1, max_size=8),
    st.lists(st.integers(0, 5000), max_size=12),
)
def test_a_translated_stream_is_the_same_however_the_upstream_splits_it(
    texts: list[str], cuts: list[int]
) -> None:
    stream = _anthropic_stream(texts)

    def relay(points: list[int]) -> bytes:
        pb = exchange(gateway())
        pb.request(b"POST", b"/v1/chat/completions", chat("smart", stream=True))
        out = pb.feed(UpstreamResponse(attempt=1, status=200, headers=SSE))
        start = 0
        for point in [*sorted({c % (len(stream) + 1) for c in points}), len(stream)]:
            if point > start:
                out += pb.feed(UpstreamData(attempt=1, data=stream[start:point]))
                start = point
        out += pb.feed(UpstreamEnded(attempt=1))
        for cmd in out:
            if isinstance(cmd, SendBody):
                assert cmd.data.endswith(b"\n\n")  # whole events only
        return client_view(out)[2]

    whole = relay([])
    assert relay(cuts) == whole
    chunks = [json.loads(b[6:]) for b in whole.split(b"\n\n") if b and b != b"data: [DONE]"]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == "".join(texts)


def test_without_a_configured_key_the_clients_credential_is_carried_in_the_other_apis_header() -> (
    None
):
    keyless = {
        "providers": {
            "oai": {"type": "openai", "base_url": "http://oai.test"},
            "claude": {"type": "anthropic", "base_url": "http://ant.test"},
        },
        "models": {
            "fast": [{"provider": "oai", "model": "gpt-4o-mini"}],
            "smart": [{"provider": "claude", "model": "claude-sonnet-4-5"}],
        },
    }
    proxy = Proxy(ProxyConfig.model_validate(keyless))
    cmd = sent(
        exchange(proxy).request(
            b"POST", b"/v1/chat/completions", chat("smart"), [(b"authorization", b"Bearer sk-c")]
        )
    )
    assert header(list(cmd.headers), b"x-api-key") == b"sk-c"
    assert header(list(cmd.headers), b"authorization") is None
    body = json.dumps(
        {"model": "fast", "max_tokens": 5, "messages": [{"role": "user", "content": "Hi"}]}
    ).encode()
    cmd = sent(exchange(proxy).request(b"POST", b"/v1/messages", body, [(b"x-api-key", b"sk-a")]))
    assert header(list(cmd.headers), b"authorization") == b"Bearer sk-a"
    assert header(list(cmd.headers), b"x-api-key") is None
    # No credential at all: none is invented.
    cmd = sent(exchange(proxy).request(b"POST", b"/v1/chat/completions", chat("smart")))
    assert header(list(cmd.headers), b"x-api-key") is None


def test_models_asked_by_name_resolve_alike_and_the_router_keeps_a_bounded_few() -> None:
    router = Router(
        ProxyConfig.model_validate({"upstream": {"base_url": "http://up.test:1", "type": "openai"}})
    )
    first = [router.resolve(f"model-{i}", 0.5) for i in range(3000)]
    again = [router.resolve(f"model-{i}", 0.5) for i in range(3000)]
    assert first == again  # the same deployment, kept or made anew
    assert all(d is not None and d.model == f"model-{i}" for i, d in enumerate(again))
    assert len(router._seen) == 1024  # clients choose the names: memory stays flat
