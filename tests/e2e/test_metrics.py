"""Prometheus metrics end to end: a real Prometheus scrapes the proxy under each
adapter (and ``asgi --workers 2``), and PromQL through its HTTP API returns exactly
the traffic the test sent; ``GET /metrics`` behind the admin key; no secret in a scrape.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e._helpers import CHAT, READ_TIMEOUT, chat_body, http_client, iter_events, stop
from tests.support.mock_upstream import SCENARIO_HEADER, MockUpstream
from tests.support.prometheus_server import PrometheusServer, require_prometheus
from tests.support.proxy_process import ProxyProcess, StartProxy

ADAPTERS = ["h11", "httptools", "asgi", "trio"]
MODEL = "gpt-metrics"
METRICS = {"metrics": {"enabled": True}}
PROVIDER_KEY = "sk-provider-METRICS-SECRET-0123456789"
CLIENT_KEY = "sk-sp-client-METRICS-SECRET-abcdef"
ADMIN_KEY = "sk-sp-admin-METRICS-SECRET-fedcba"


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def shorthand(mock: MockUpstream, **extra: Any) -> dict[str, Any]:
    """The one-provider shorthand to the mock upstream, with metrics on."""
    upstream = {"base_url": mock.base_url, "type": "openai", "api_key": PROVIDER_KEY}
    return {"upstream": upstream, **METRICS, **extra}


def chat(proxy: ProxyProcess, *, stream: bool = False, scenario: str | None = None) -> int:
    """One chat completion on a connection of its own; the tokens its usage reports."""
    headers = {"connection": "close"}
    if scenario is not None:
        headers[SCENARIO_HEADER] = scenario
    body = chat_body(MODEL, stream=stream)
    if stream:
        body["stream_options"] = {"include_usage": True}
    with http_client(proxy) as client:
        if not stream:
            response = client.post(CHAT, json=body, headers=headers)
            if scenario is not None:
                assert response.status_code >= 500, response.text
                return 0
            assert response.status_code == 200, response.text
            usage = response.json()["usage"]
            return int(usage["prompt_tokens"]) + int(usage["completion_tokens"])
        with client.stream("POST", CHAT, json=body, headers=headers) as response:
            assert response.status_code == 200
            usages = [
                json.loads(event.data)["usage"]
                for event in iter_events(response)
                if event.data != "[DONE]" and json.loads(event.data).get("usage")
            ]
    assert len(usages) == 1, usages
    return int(usages[0]["prompt_tokens"]) + int(usages[0]["completion_tokens"])


def send(proxy: ProxyProcess, n: int, *, stream: bool = False) -> int:
    """``n`` chat completions, four at a time; the tokens they reported in all."""
    with ThreadPoolExecutor(4) as pool:
        return sum(pool.map(lambda _: chat(proxy, stream=stream), range(n)))


def target(proxy: ProxyProcess) -> str:
    return f"{proxy.host}:{proxy.port}"


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_prometheus_sees_exactly_the_traffic_sent(
    start_proxy: StartProxy, mock_upstream: MockUpstream, tmp_path: Path
) -> None:
    require_prometheus()
    proxy = start_proxy(config=shorthand(mock_upstream))
    with PrometheusServer(tmp_path, target(proxy)) as prometheus:
        tokens = send(proxy, 5) + send(proxy, 2, stream=True)
        chat(proxy, scenario="status-503")
        assert tokens > 0
        ok = f'model="{MODEL}", status_class="2xx", outcome="completed"'
        prometheus.wait_for_value(f"sum(sansproxy_requests_total{{{ok}}})", 7)
        prometheus.wait_for_value(f'sum(sansproxy_tokens_total{{model="{MODEL}"}})', tokens)
        # The upstream's 503, relayed: a 5xx the upstream answered.
        failed = f'model="{MODEL}", status_class="5xx"'
        prometheus.wait_for_value(f"sum(sansproxy_requests_total{{{failed}}})", 1)
        prometheus.wait_for_value('sum(sansproxy_upstream_failures_total{kind="status"})', 1)
        prometheus.wait_for_value(
            f'sum(sansproxy_request_duration_seconds_count{{model="{MODEL}"}})', 8
        )
        prometheus.wait_for_value(
            f'sum(sansproxy_time_to_first_token_seconds_count{{model="{MODEL}"}})', 2
        )
        # Every series of the proxy's, and not one label value holds a secret or an id.
        series = prometheus.query('{__name__=~"sansproxy_.+"}')
    labels = json.dumps([s["metric"] for s in series])
    assert MODEL in labels
    for secret in (PROVIDER_KEY, sha(PROVIDER_KEY), "chatcmpl"):
        assert secret not in labels


def worker_tokens(directory: Path, scratch: Path) -> dict[str, float]:
    """Tokens counted by each worker, from its own file in PROMETHEUS_MULTIPROC_DIR."""
    found: dict[str, float] = {}
    for path in directory.glob("counter_*.db"):
        alone = scratch / path.stem
        alone.mkdir(exist_ok=True)
        shutil.copy(path, alone / path.name)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(alone))  # type: ignore[no-untyped-call]
        found[path.stem] = sum(
            sample.value
            for family in registry.collect()
            for sample in family.samples
            if sample.name == "sansproxy_tokens_total"
        )
    return found


def until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"waited {timeout} s for {what}"
        time.sleep(0.05)  # polling a condition, with a deadline


@pytest.mark.parametrize("adapter", ["asgi"])
def test_one_scrape_sums_every_worker(
    start_proxy: StartProxy, mock_upstream: MockUpstream, tmp_path: Path
) -> None:
    require_prometheus()
    temp = tmp_path / "tmp"  # where the proxy makes its PROMETHEUS_MULTIPROC_DIR
    temp.mkdir()
    proxy = start_proxy(
        "--workers", "2", config=shorthand(mock_upstream), env={"TMPDIR": str(temp)}
    )
    (directory,) = temp.glob("sansproxy-metrics-*")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    # Each request on a connection of its own: the kernel hands them to either
    # worker; go on until both have counted some (each writes its own file).
    sent = {"requests": 0, "tokens": 0}

    def both_counted() -> bool:
        sent["tokens"] += send(proxy, 4)
        sent["requests"] += 4
        counted = worker_tokens(directory, scratch)
        return len(counted) == 2 and all(counted.values())

    until(both_counted, 60, "both workers to serve a request")
    with PrometheusServer(tmp_path / "prometheus", target(proxy)) as prometheus:
        ok = f'model="{MODEL}", status_class="2xx", outcome="completed"'
        prometheus.wait_for_value(f"sum(sansproxy_requests_total{{{ok}}})", sent["requests"])
        prometheus.wait_for_value(f'sum(sansproxy_tokens_total{{model="{MODEL}"}})', sent["tokens"])
        counted = worker_tokens(directory, scratch)
        assert sum(counted.values()) == sent["tokens"]
    # A worker killed: the supervisor starts another, the dead one's counts stay in
    # the sums, and its live gauges (connections, streams) leave them.
    dead = int(next(iter(counted)).removeprefix("counter_"))
    assert (directory / f"gauge_livesum_{dead}.db").exists()
    os.kill(dead, signal.SIGKILL)
    until(
        lambda: not (directory / f"gauge_livesum_{dead}.db").exists(),
        30,
        "the supervisor to mark the dead worker's gauges dead",
    )
    with http_client(proxy) as client:
        after = samples(client.get("/metrics", headers={"connection": "close"}).text)
    assert (
        sum(v for (name, _), v in after.items() if name == "sansproxy_tokens_total")
        == (sent["tokens"])
    )
    # A clean stop removes the directory the proxy made.
    assert stop(proxy) == 0
    assert not directory.exists()


def admin_config(mock: MockUpstream) -> dict[str, Any]:
    keys = [{"name": "team-a", "key_sha256": sha(CLIENT_KEY)}]
    return {
        "providers": {"oai": {"base_url": mock.base_url, "api_key": PROVIDER_KEY}},
        "models": {"fast": [{"provider": "oai", "model": "gpt-upstream"}]},
        "middleware": [{"auth": {"keys": keys, "admin_key_sha256": sha(ADMIN_KEY)}}],
        "metrics": {"enabled": True, "admin_only": True},
    }


def scrape(client: httpx.Client, key: str | None) -> httpx.Response:
    headers = {} if key is None else {"authorization": f"Bearer {key}"}
    return client.get("/metrics", headers=headers)


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_admin_only_metrics_need_the_admin_key(
    start_proxy: StartProxy, mock_upstream: MockUpstream
) -> None:
    proxy = start_proxy(config=admin_config(mock_upstream))
    with http_client(proxy) as client:
        answer = client.post(
            CHAT,
            json=chat_body("fast"),
            headers={"authorization": f"Bearer {CLIENT_KEY}"},
        )
        assert answer.status_code == 200, answer.text
        prompt_tokens: int = answer.json()["usage"]["prompt_tokens"]
        assert scrape(client, None).status_code == 401
        assert scrape(client, CLIENT_KEY).status_code == 401
        assert scrape(client, "sk-sp-wrong").status_code == 401
        input_tokens = (
            "sansproxy_tokens_total",
            frozenset({"model": "fast", "key_name": "team-a", "type": "input"}.items()),
        )
        seen: list[httpx.Response] = []

        def counted() -> bool:
            seen.append(scrape(client, ADMIN_KEY))
            assert seen[-1].status_code == 200, seen[-1].text
            return samples(seen[-1].text).get(input_tokens) == prompt_tokens

        until(counted, READ_TIMEOUT, "the request to be counted")
    response = seen[-1]
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    for secret in (CLIENT_KEY, ADMIN_KEY, PROVIDER_KEY, sha(CLIENT_KEY), sha(ADMIN_KEY)):
        assert secret not in response.text


def test_without_prometheus_ci_fails_where_a_laptop_skips(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no prometheus there
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI needs a real Prometheus"):
        require_prometheus()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="apt-get install prometheus"):
        require_prometheus()


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_open_connections_and_streams_in_flight_are_gauged(start_proxy: StartProxy) -> None:
    # The built-in mock provider streams an event every 0.2 s: long enough to look.
    proxy = start_proxy(config={**METRICS, "mock": {"stream_delay": 0.2}})
    no_labels: frozenset[tuple[str, str]] = frozenset()
    streams = ("sansproxy_streams_in_flight", no_labels)
    connections = ("sansproxy_client_connections", no_labels)
    with http_client(proxy) as scraper, http_client(proxy) as streamer:
        body = chat_body("mock-gpt", stream=True)
        with streamer.stream("POST", CHAT, json=body) as response:
            assert response.status_code == 200
            events = iter_events(response)
            next(events)  # the stream is under way
            during = samples(scrape(scraper, None).text)
            assert during[streams] == 1
            assert during[connections] == 2  # the streamer's and the scraper's
            assert [event.data for event in events][-1] == "[DONE]"
        until(
            lambda: samples(scrape(scraper, None).text)[streams] == 0,
            READ_TIMEOUT,
            "the stream to leave the gauge",
        )
    with http_client(proxy) as client:
        after = samples(scrape(client, None).text)
    assert after[streams] == 0 and after[connections] == 1  # the two are closed
