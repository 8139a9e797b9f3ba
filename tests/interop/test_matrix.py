"""The proxy between parts the project did not write: upstream x client x adapter.

Upstreams: nginx (+ njs), Node's ``http`` and aiohttp (tests/interop/servers/), each
serving the providers' documented payloads (tests/interop/payloads/). Clients: the
official openai and anthropic Python SDKs (their stream helpers too), the openai Node
SDK and curl (tests/interop/clients.py). Adapters: the h11 server, ASGI and trio.

One proxy per (adapter, upstream), started once, routes a public model per variant
of that upstream -- ``oai-{framing}-{casing}-{delivery}`` to it as an OpenAI provider,
``ant-...`` as an Anthropic one -- and writes a trace of every exchange. What a user
must see, whatever served the answer and however it was framed or spelled: the exact
text, the finish reason, the usage (in the client and in the trace, priced), whole
SSE events, and errors in the client API's shape.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.otlp_receiver import OtlpReceiver
from tests.support.proxy_process import ADAPTER_MODULES, ProxyProcess, proxy_argv, proxy_env
from tests.support.traces import wait_for_trace

from .clients import CLIENTS, STREAM_ONLY, ClientResult, api_of, run_client
from .payloads import COMPLETION_TOKENS, PROMPT_TOKENS, TEXT
from .servers import Upstream

ADAPTERS = list(ADAPTER_MODULES)
UPSTREAMS = ["nginx", "node", "aiohttp"]
PRICE = {"input": 2.0, "output": 8.0}  # USD per million tokens
COST = (PROMPT_TOKENS * PRICE["input"] + COMPLETION_TOKENS * PRICE["output"]) / 1e6
UPSTREAM_KEY = "sk-upstream-secret-4242"
FINISH = {"openai": "stop", "anthropic": "end_turn"}
SPECIAL = ("status-429", "status-409", "reset-mid-stream", "hold-after-last")


@dataclass
class Gateway:
    """A proxy in front of one third-party upstream, with every variant routed."""

    process: ProxyProcess
    traces: Path
    upstream: Upstream
    spans: OtlpReceiver

    @property
    def base_url(self) -> str:
        return self.process.base_url

    def model(self, api: str, framing: str, casing: str, delivery: str) -> str:
        return f"{'ant' if api == 'anthropic' else 'oai'}-{framing}-{casing}-{delivery}"

    def default_model(self, api: str) -> str:
        casing = "upper" if "upper" in self.upstream.casings else "title"
        return self.model(api, "chunked", casing, "event")

    def trace(self, result: ClientResult, *, timeout: float = 10.0) -> dict[str, Any]:
        """The trace of the exchange that gave `result` (it is written off the response path)."""
        exchange_id = result.headers.get("x-sansproxy-id")
        assert exchange_id, f"no x-sansproxy-id in {result.headers}"
        return wait_for_trace(self.traces, exchange_id, timeout=timeout)

    def attempt_span(self, result: ClientResult) -> dict[str, Any]:
        """The attributes of the CLIENT span of the exchange that gave `result`."""
        exchange_id = result.headers.get("x-sansproxy-id")
        (server,) = self.spans.wait_for_spans(
            1, where=lambda s: s.attributes.get("sansproxy.exchange_id") == exchange_id
        )
        (attempt,) = self.spans.wait_for_spans(
            1, where=lambda s: s.kind == "CLIENT" and s.parent_span_id == server.span_id
        )
        return attempt.attributes


def gateway_config(upstream: Upstream, traces: Path, otlp: str) -> dict[str, Any]:
    providers: dict[str, Any] = {}
    models: dict[str, Any] = {}
    for framing, casing, delivery in upstream.variants():
        base_url = upstream.base_url(framing, casing, delivery)
        for api, prefix, model in (
            ("openai", "oai", "gpt-4o-mini"),
            ("anthropic", "ant", "claude-3-5-sonnet"),
        ):
            name = f"{prefix}_{framing}_{casing}_{delivery}"
            providers[name] = {"type": api, "base_url": base_url, "api_key": UPSTREAM_KEY}
            models[f"{prefix}-{framing}-{casing}-{delivery}"] = [
                {"provider": name, "model": model, "price": PRICE}
            ]
            if (framing, casing, delivery) == ("chunked", "title", "event"):
                for special in SPECIAL:
                    models[f"{prefix}-{special}"] = [
                        {"provider": name, "model": special, "price": PRICE}
                    ]
    return {
        "providers": providers,
        "models": models,
        "middleware": [
            {"trace": {"dir": str(traces)}},
            {"retry": {"attempts": 2, "backoff": 0.01, "on_status": [409, 429, 500]}},
        ],
        # Observed: every upstream the project did not write gets a traceparent.
        "metrics": {"enabled": True},
        "telemetry": {"otlp_endpoint": otlp},
    }


class Gateways:
    """The proxies of the session, one per (upstream, adapter), started when first asked."""

    def __init__(self, request: pytest.FixtureRequest, root: Path, spans: OtlpReceiver) -> None:
        self._request = request
        self._root = root
        self._spans = spans
        self._running: dict[tuple[str, str], Gateway] = {}

    def get(self, upstream_name: str, adapter: str) -> Gateway:
        running = self._running.get((upstream_name, adapter))
        if running is None:
            upstream: Upstream = self._request.getfixturevalue(f"{upstream_name}_upstream")
            directory = self._root / f"{upstream_name}-{adapter}"
            directory.mkdir()
            traces = directory / "traces"
            config = directory / "gateway.yaml"
            config.write_text(
                yaml.safe_dump(gateway_config(upstream, traces, self._spans.base_url)),
                encoding="utf-8",
            )
            process = ProxyProcess(
                proxy_argv(adapter, ["--config", str(config)], pick_port=True),
                env=proxy_env({"OTEL_BSP_SCHEDULE_DELAY": "100"}),
            )
            running = Gateway(process, traces, upstream, self._spans)
            self._running[(upstream_name, adapter)] = running
            process.wait_ready(30)
        return running

    def close(self) -> None:
        for running in self._running.values():
            running.process.close()
        for running in self._running.values():
            logs = running.process.logs()
            assert UPSTREAM_KEY not in logs, "the upstream's key reached a log"
            assert "Traceback" not in logs, logs


@pytest.fixture(scope="session")
def gateways(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateways]:
    with OtlpReceiver() as spans:
        running = Gateways(request, tmp_path_factory.mktemp("gateways"), spans)
        try:
            yield running
        finally:
            running.close()


@pytest.fixture(params=UPSTREAMS)
def upstream_name(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture(params=ADAPTERS)
def adapter(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def gateway(gateways: Gateways, upstream_name: str, adapter: str) -> Gateway:
    """The proxy under `adapter` in front of the `upstream_name` server."""
    return gateways.get(upstream_name, adapter)


def assert_answered(result: ClientResult, api: str, *, stream: bool) -> None:
    assert result.error is None, result
    assert result.status == 200
    assert result.text == TEXT
    assert result.finish_reason == FINISH[api]
    if stream:
        assert result.events > 0


def assert_traced(record: dict[str, Any], *, stream: bool) -> None:
    assert record["outcome"] == "completed", record
    assert record["usage"] == {
        "input_tokens": PROMPT_TOKENS,
        "output_tokens": COMPLETION_TOKENS,
        "cached_input_tokens": 0,
        "cache_creation_tokens": 0,
        "estimated": False,
    }
    assert record["cost_usd"] == pytest.approx(COST)
    if stream:
        assert record["response"]["text"] == TEXT
    assert UPSTREAM_KEY not in json.dumps(record)


# -- every client, through every adapter, to every upstream ---------------------------

RUNS = [
    (client, stream)
    for client in CLIENTS
    for stream in (False, True)
    if stream or client not in STREAM_ONLY
]


@pytest.mark.parametrize(
    ("client", "stream"), RUNS, ids=[f"{c}-{'sse' if s else 'json'}" for c, s in RUNS]
)
def test_each_client_gets_the_answer_and_the_trace_its_usage(
    gateway: Gateway, client: str, stream: bool
) -> None:
    api = api_of(client)
    result = run_client(
        client,
        base_url=gateway.base_url,
        model=gateway.default_model(api),
        stream=stream,
        include_usage=True,
    )
    assert_answered(result, api, stream=stream)
    # What the client itself saw of the usage is exact too.
    assert result.usage == {"input_tokens": PROMPT_TOKENS, "output_tokens": COMPLETION_TOKENS}
    assert_traced(gateway.trace(result), stream=stream)
    # So is its span's, though the upstream had a traceparent header more to read.
    span = gateway.attempt_span(result)
    assert span["gen_ai.usage.input_tokens"] == PROMPT_TOKENS
    assert span["gen_ai.usage.output_tokens"] == COMPLETION_TOKENS
    assert span["gen_ai.provider.name"] == api


# -- the other API: translation both ways ------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("client", ["openai-python", "anthropic-python", "curl"])
def test_a_client_of_one_api_is_served_by_an_upstream_of_the_other(
    gateway: Gateway, client: str, stream: bool
) -> None:
    api = api_of(client)
    other = "anthropic" if api == "openai" else "openai"
    result = run_client(
        client,
        base_url=gateway.base_url,
        model=gateway.default_model(other),
        stream=stream,
        include_usage=True,
    )
    assert_answered(result, api, stream=stream)
    assert_traced(gateway.trace(result), stream=stream)


# -- every framing, casing and delivery the upstream produces ---------------------


@st.composite
def variants(draw: st.DrawFn, upstream: Upstream) -> tuple[str, str, str, str, bool, bool]:
    framing, casing, delivery = draw(st.sampled_from(upstream.variants()))
    api = draw(st.sampled_from(["openai", "anthropic"]))
    client = draw(
        st.sampled_from(
            ["openai-python", "curl"] if api == "openai" else ["anthropic-python", "curl-anthropic"]
        )
    )
    return framing, casing, delivery, client, draw(st.booleans()), draw(st.booleans())


@settings(
    max_examples=24,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_no_framing_casing_or_delivery_changes_what_the_client_gets(
    gateway: Gateway, data: st.DataObject
) -> None:
    framing, casing, delivery, client, stream, include_usage = data.draw(variants(gateway.upstream))
    api = api_of(client)
    result = run_client(
        client,
        base_url=gateway.base_url,
        model=gateway.model(api, framing, casing, delivery),
        stream=stream,
        include_usage=include_usage,
    )
    assert_answered(result, api, stream=stream)
    assert result.headers.get("content-type", "").startswith(
        "text/event-stream" if stream else "application/json"
    )
    # The upstream's framing and compression are its own business, never the client's.
    assert "content-encoding" not in result.headers
    assert_traced(gateway.trace(result), stream=stream)


# -- what real servers did to us: the regressions ---------------------------------


@pytest.mark.parametrize("client", ["openai-python", "anthropic-python", "openai-node"])
def test_a_429_with_a_capitalised_retry_after_is_retried_then_relayed(
    gateway: Gateway, client: str
) -> None:
    api = api_of(client)
    prefix = "ant" if api == "anthropic" else "oai"
    result = run_client(
        client, base_url=gateway.base_url, model=f"{prefix}-status-429", stream=False
    )
    assert result.status == 429
    assert result.error is not None
    assert result.headers.get("retry-after") == "0"
    record = gateway.trace(result)
    assert [a["status"] for a in record["attempts"]] == [429, 429]


def test_a_status_the_retry_policy_lists_is_retried_even_a_409(gateway: Gateway) -> None:
    result = run_client(
        "openai-python", base_url=gateway.base_url, model="oai-status-409", stream=False
    )
    assert result.status == 409
    record = gateway.trace(result)
    assert [a["status"] for a in record["attempts"]] == [409, 409]


@pytest.mark.parametrize("upstream_name", ["node", "aiohttp"])  # nginx cannot reset
@pytest.mark.parametrize("client", ["openai-python", "anthropic-python", "openai-node", "curl"])
def test_an_upstream_reset_mid_stream_is_an_error_event_and_a_clean_end(
    gateway: Gateway, client: str
) -> None:
    assert gateway.upstream.can_reset
    api = api_of(client)
    prefix = "ant" if api == "anthropic" else "oai"
    result = run_client(
        client, base_url=gateway.base_url, model=f"{prefix}-reset-mid-stream", stream=True
    )
    # The client parsed an error event in its API's shape, not a broken connection.
    assert result.error is not None
    assert not str(result.error.get("type", "")).startswith("client."), result.error
    assert TEXT.startswith(result.text)
    record = gateway.trace(result)
    assert record["outcome"] == "upstream_error"
    assert record["usage"]["estimated"] is True
    assert record["cost_usd"] > 0


@pytest.mark.parametrize("upstream_name", ["node"])  # holds its end of body on request
@pytest.mark.parametrize("client", ["openai-python", "openai-python-helper"])
def test_a_client_that_hangs_up_at_done_before_the_upstream_ends_is_complete(
    gateway: Gateway, client: str
) -> None:
    result = run_client(client, base_url=gateway.base_url, model="oai-hold-after-last", stream=True)
    assert_answered(result, "openai", stream=True)
    assert_traced(gateway.trace(result), stream=True)
