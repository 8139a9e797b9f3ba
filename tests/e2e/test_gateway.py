"""The gateway through each adapter: routing by model, weights, credentials, usage, cost.

Providers and models come from YAML; every provider points at the one mock upstream,
told apart by the path it is sent (anthropic: /v1/messages) or by an extra header
configured per provider. The translation itself is tested in test_translation.py.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Final

import anthropic
import openai
import pytest

from tests.e2e._helpers import (
    CHAT,
    MESSAGES,
    READ_TIMEOUT,
    SSE,
    assert_error_shape,
    chat_body,
    chat_content,
    http_client,
    iter_events,
    openai_client,
)
from tests.support.mock_upstream import (
    COMPLETION_TOKENS,
    DEFAULT_TEXT,
    MODELS,
    PROMPT_TOKENS,
    MockUpstream,
)
from tests.support.proxy_process import ProxyProcess, StartProxy
from tests.support.traces import wait_for_traces

PROVIDER_HEADER: Final = "x-test-provider"
CLIENT_KEY: Final = "sk-client-MUST-NOT-LEAK"


def _provider(kind: str, base_url: str, **extra: Any) -> dict[str, Any]:
    """A provider of `kind` on `base_url`, with short timeouts and a header naming it."""
    return {
        "type": kind,
        "base_url": base_url,
        "connect_timeout": 2.0,
        "read_timeout": READ_TIMEOUT,
        **extra,
    }


def _config(base_url: str, **providers: dict[str, Any]) -> dict[str, Any]:
    """`oai` (openai) and `claude` (anthropic), each sending PROVIDER_HEADER: its name;
    models `fast` (oai: gpt-upstream) and `smart` (claude: claude-upstream)."""
    return {
        "providers": {
            "oai": _provider("openai", base_url, headers={PROVIDER_HEADER: "oai"}),
            "claude": _provider("anthropic", base_url, headers={PROVIDER_HEADER: "claude"}),
            **providers,
        },
        "models": {
            "fast": [{"provider": "oai", "model": "gpt-upstream"}],
            "smart": [{"provider": "claude", "model": "claude-upstream"}],
        },
    }


def _anthropic_client(proxy: ProxyProcess) -> anthropic.Anthropic:
    """The official anthropic SDK pointed at the proxy, without retries."""
    return anthropic.Anthropic(
        base_url=proxy.base_url, api_key="sk-ant-client", max_retries=0, timeout=READ_TIMEOUT
    )


def _chunks(events: list[SSE]) -> list[dict[str, Any]]:
    assert events and events[-1].data == "[DONE]", events[-1:]
    return [event.json() for event in events[:-1]]


# -- usage on OpenAI pass-through streams ---------------------------------------------


def test_passthrough_stream_usage(start_proxy: StartProxy, mock_upstream: MockUpstream) -> None:
    """The proxy always asks for usage; the client sees the usage chunk only if it asked."""
    proxy = start_proxy(config=_config(mock_upstream.base_url))
    asks: list[dict[str, Any]] = [
        {},
        {"stream_options": {"include_usage": False}},
        {"stream_options": {"include_usage": True}},
    ]
    seen: list[list[SSE]] = []
    with http_client(proxy) as client:
        for extra in asks:
            with client.stream("POST", CHAT, json=chat_body("fast", stream=True, **extra)) as r:
                assert r.status_code == 200
                seen.append(list(iter_events(r)))

    upstream = mock_upstream.wait_for_requests(len(asks))
    for request in upstream:
        body = request.json()
        assert body["model"] == "gpt-upstream"
        assert body["stream_options"]["include_usage"] is True, body
    for extra, events in zip(asks, seen, strict=True):
        chunks = _chunks(events)
        assert chat_content(events) == DEFAULT_TEXT
        usage_only = [c for c in chunks if c["choices"] == []]
        if extra.get("stream_options", {}).get("include_usage"):
            assert usage_only == [chunks[-1]], chunks[-1]
            usage = chunks[-1]["usage"]
            assert (usage["prompt_tokens"], usage["completion_tokens"]) == (
                PROMPT_TOKENS,
                COMPLETION_TOKENS,
            )
        else:
            assert usage_only == [], "the usage chunk the client did not ask for"
            assert not any(chunk.get("usage") for chunk in chunks)


# -- routing ---------------------------------------------------------------------------


def test_model_routing(start_proxy: StartProxy, mock_upstream: MockUpstream) -> None:
    """/v1/models, unknown models, renaming, and provider/model addressing."""
    proxy = start_proxy(config=_config(mock_upstream.base_url))
    hi: Any = [{"role": "user", "content": "Hi"}]
    with openai_client(proxy) as client:
        listed = client.models.list()
        assert sorted(model.id for model in listed) == ["fast", "smart"]
        assert all(model.object == "model" for model in listed)
        with http_client(proxy) as http:
            assert http.get("/v1/models").json()["object"] == "list"
        for unknown in ("no-such-model", "nobody/gpt-upstream", "oai/"):
            with pytest.raises(openai.NotFoundError) as caught:
                client.chat.completions.create(model=unknown, messages=hi)
            error = assert_error_shape(caught.value.response.json(), code="model_not_found")
            assert error["param"] == "model"
        assert mock_upstream.requests == [], "nothing may reach the upstream for those"

        answers = [
            client.chat.completions.create(model="fast", messages=hi),
            client.chat.completions.create(model="oai/gpt-4.1-custom", messages=hi),
            client.chat.completions.create(model="claude/claude-custom", messages=hi),
        ]
        client.embeddings.create(model="oai/embed-custom", input="Hi")
    with _anthropic_client(proxy) as claude:
        native = claude.messages.create(model="smart", max_tokens=8, messages=hi)

    assert [a.choices[0].message.content for a in answers] == [DEFAULT_TEXT] * 3
    assert answers[2].model == "claude/claude-custom"  # translated: the name asked for
    assert native.content[0].type == "text" and native.content[0].text == DEFAULT_TEXT
    routed = [
        (r.path, r.json()["model"], r.header(PROVIDER_HEADER))
        for r in mock_upstream.wait_for_requests(5)
    ]
    assert routed == [
        (CHAT, "gpt-upstream", "oai"),
        (CHAT, "gpt-4.1-custom", "oai"),
        (MESSAGES, "claude-custom", "claude"),
        ("/v1/embeddings", "embed-custom", "oai"),
        (MESSAGES, "claude-upstream", "claude"),
    ]


def test_models_forwarded_in_shorthand_mode(
    start_proxy: StartProxy, mock_upstream: MockUpstream
) -> None:
    proxy = start_proxy("--base-url", mock_upstream.base_url, "--type", "openai")
    with openai_client(proxy) as client:
        assert [model.id for model in client.models.list()] == list(MODELS)
        # Every model goes to the one provider, under the name the client gave.
        client.chat.completions.create(
            model="anything", messages=[{"role": "user", "content": "x"}]
        )
    listing, chat = mock_upstream.wait_for_requests(2)
    assert (listing.method, listing.path) == ("GET", "/v1/models")
    assert (chat.path, chat.json()["model"]) == (CHAT, "anything")


def _binomial_bounds(n: int, p: float, alpha: float) -> tuple[int, int]:
    """[lo, hi] such that a Binomial(n, p) count falls below lo, or above hi, each with
    probability under alpha / 2: a correct router fails the test with probability < alpha."""
    pmf = [math.comb(n, k) * p**k * (1 - p) ** (n - k) for k in range(n + 1)]
    lo, tail = 0, 0.0
    while tail + pmf[lo] < alpha / 2:
        tail += pmf[lo]
        lo += 1
    hi, tail = n, 0.0
    while tail + pmf[hi] < alpha / 2:
        tail += pmf[hi]
        hi -= 1
    return lo, hi


def test_weights_honoured(start_proxy: StartProxy, mock_upstream: MockUpstream) -> None:
    """Weights 3:1 over 400 requests: the heavy deployment's share stays near 3/4."""
    n, heavy_share = 400, 0.75
    lo, hi = _binomial_bounds(n, heavy_share, 1e-6)
    # The bound is generous, yet excludes an even split and the weights swapped.
    assert n / 2 < lo < n * heavy_share < hi < n, (lo, hi)
    base = mock_upstream.base_url
    proxy = start_proxy(
        config={
            "providers": {
                "a": _provider("openai", base, headers={PROVIDER_HEADER: "a"}),
                "b": _provider("openai", base, headers={PROVIDER_HEADER: "b"}),
            },
            "models": {
                "mixed": [
                    {"provider": "a", "model": "model-a", "weight": 3},
                    {"provider": "b", "model": "model-b", "weight": 1},
                ]
            },
        }
    )
    with http_client(proxy) as client:
        for _ in range(n):
            assert client.post(CHAT, json=chat_body("mixed")).status_code == 200
    routed = [(r.header(PROVIDER_HEADER), r.json()["model"]) for r in mock_upstream.requests]
    assert len(routed) == n
    assert set(routed) <= {("a", "model-a"), ("b", "model-b")}, set(routed)
    heavy = routed.count(("a", "model-a"))
    assert lo <= heavy <= hi, f"{heavy}/{n} went to the weight-3 deployment ({lo}..{hi} allowed)"


# -- credentials -----------------------------------------------------------------------


def test_provider_key_replaces_client_credentials(
    start_proxy: StartProxy, mock_upstream: MockUpstream
) -> None:
    """Native and translated, both provider types: only the provider's key goes upstream."""
    base = mock_upstream.base_url
    proxy = start_proxy(
        config=_config(
            base,
            oai=_provider("openai", base, api_key="sk-oai-PROVIDER"),
            claude=_provider("anthropic", base, api_key="sk-ant-PROVIDER"),
        )
    )
    credentials = {"authorization": f"Bearer {CLIENT_KEY}", "x-api-key": CLIENT_KEY}
    anthropic_body = {"max_tokens": 8, "messages": [{"role": "user", "content": "Hi"}]}
    sent = [
        (CHAT, chat_body("fast")),  # native openai
        (CHAT, chat_body("smart")),  # translated to anthropic
        (MESSAGES, {"model": "smart", **anthropic_body}),  # native anthropic
        (MESSAGES, {"model": "fast", **anthropic_body}),  # translated to openai
    ]
    with http_client(proxy) as client:
        for path, body in sent:
            response = client.post(path, json=body, headers=credentials)
            assert response.status_code == 200, response.text

    received = mock_upstream.wait_for_requests(len(sent))
    for request in received:
        assert not any(CLIENT_KEY in value for _, value in request.headers), request.headers
        assert CLIENT_KEY.encode() not in request.body
    credentials_seen = [
        (r.path, r.header_values("authorization"), r.header_values("x-api-key")) for r in received
    ]
    openai_key: tuple[str, list[str], list[str]] = (CHAT, ["Bearer sk-oai-PROVIDER"], [])
    anthropic_key: tuple[str, list[str], list[str]] = (MESSAGES, [], ["sk-ant-PROVIDER"])
    assert credentials_seen == [openai_key, anthropic_key, anthropic_key, openai_key]
    assert [r.header("anthropic-version") for r in received if r.path == MESSAGES] == [
        "2023-06-01"
    ] * 2


# -- parameters that cannot be carried over --------------------------------------------


def test_parameter_that_cannot_be_carried_is_refused(
    start_proxy: StartProxy, mock_upstream: MockUpstream
) -> None:
    """400 naming the parameter, nothing sent upstream; the default value is harmless."""
    proxy = start_proxy(config=_config(mock_upstream.base_url))
    hi: Any = [{"role": "user", "content": "Hi"}]
    with openai_client(proxy) as client:
        with pytest.raises(openai.BadRequestError) as several:
            client.chat.completions.create(model="smart", messages=hi, n=2)
        with pytest.raises(openai.BadRequestError) as logprobs:
            client.chat.completions.create(model="smart", messages=hi, logprobs=True)
        for caught, param in ((several, "n"), (logprobs, "logprobs")):
            error = assert_error_shape(caught.value.response.json(), code="unsupported_parameter")
            assert error["param"] == param
            assert error["type"] == "invalid_request_error"
    with _anthropic_client(proxy) as claude:
        with pytest.raises(anthropic.BadRequestError) as top_k:
            claude.messages.create(model="fast", max_tokens=8, messages=hi, extra_body={"top_k": 5})
        body = top_k.value.response.json()
        assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
        assert "top_k" in body["error"]["message"]
    assert mock_upstream.requests == []

    with openai_client(proxy) as client:
        client.chat.completions.create(model="smart", messages=hi, n=1, logprobs=False)
    (carried,) = mock_upstream.wait_for_requests(1)
    assert carried.path == MESSAGES
    assert not {"n", "logprobs"} & set(carried.json())


# -- tracing ---------------------------------------------------------------------------


def test_trace_records_usage_and_cost(
    start_proxy: StartProxy, mock_upstream: MockUpstream, tmp_path: Path
) -> None:
    """Routed exchanges, translated or not, streamed or not: model, usage and cost traced."""
    traces = tmp_path / "traces"
    config = _config(mock_upstream.base_url)
    config["models"] = {
        "fast": [
            {"provider": "oai", "model": "gpt-upstream", "price": {"input": 1.0, "output": 2.0}}
        ],
        "smart": [
            {
                "provider": "claude",
                "model": "claude-upstream",
                "price": {"input": 3.0, "output": 15.0},
            }
        ],
        "unpriced": [{"provider": "oai", "model": "no-such-price"}],
    }
    proxy = start_proxy("--trace-dir", str(traces), config=config)
    anthropic_body = {"max_tokens": 8, "messages": [{"role": "user", "content": "Hi"}]}
    exchanges = [
        ("fast", CHAT, chat_body("fast")),
        ("fast", CHAT, chat_body("fast", stream=True)),  # usage asked for by the proxy
        ("smart", CHAT, chat_body("smart")),  # translated
        ("smart", CHAT, chat_body("smart", stream=True)),  # translated stream
        ("fast", MESSAGES, {"model": "fast", "stream": True, **anthropic_body}),
        ("unpriced", CHAT, chat_body("unpriced")),
    ]
    ids: dict[str, str] = {}
    with http_client(proxy) as client:
        for model, path, body in exchanges:
            with client.stream("POST", path, json=body) as response:
                assert response.status_code == 200
                response.read()
                ids[response.headers["x-sansproxy-id"]] = model
    records = wait_for_traces(traces, len(exchanges))
    assert len(records) == len(exchanges), records

    cost_per_token = {"fast": (1.0, 2.0), "smart": (3.0, 15.0)}
    assert sorted(record["id"] for record in records) == sorted(ids)
    for record in records:
        model = ids[record["id"]]
        assert record["outcome"] == "completed", record
        assert record["model"] == model, record
        assert record["usage"] == {
            "input_tokens": PROMPT_TOKENS,
            "output_tokens": COMPLETION_TOKENS,
            "cached_input_tokens": 0,
            "cache_creation_tokens": 0,
            "estimated": False,
        }, record
        if model == "unpriced":
            assert record["cost_usd"] is None, "an unknown price is no cost, not zero"
        else:
            rate_in, rate_out = cost_per_token[model]
            expected = (PROMPT_TOKENS * rate_in + COMPLETION_TOKENS * rate_out) / 1e6
            assert record["cost_usd"] == pytest.approx(expected, rel=1e-9), record
