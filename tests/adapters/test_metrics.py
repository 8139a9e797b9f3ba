"""The Prometheus metrics sink: what one scrape shows after hand-built exchange records.

Every assertion reads ``Metrics.render()`` back through prometheus-client's own
parser, as Prometheus would read it. The multiprocess tests run real processes
sharing one ``PROMETHEUS_MULTIPROC_DIR``, as ``--workers N`` does.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from adapters import _metrics as metrics_module
from adapters._metrics import EXCHANGE_BUCKETS, SHORTHAND_MODELS, Metrics
from core import AttemptRecord, ExchangeRecord, ProxyConfig, RecordExchange
from core.gateway import Usage
from tests.support.proxy_process import REPO_ROOT

PROVIDER_SECRET = "sk-provider-SECRET-0123456789"
CONFIG = ProxyConfig.model_validate(
    {
        "providers": {
            "oai": {"base_url": "https://api.openai.com", "api_key": PROVIDER_SECRET},
            "ant": {"base_url": "https://api.anthropic.com", "type": "anthropic"},
        },
        "models": {
            "fast": [{"provider": "oai", "model": "gpt-4o-mini"}],
            "smart": {
                "deployments": [{"provider": "ant", "model": "claude-sonnet"}],
                "fallbacks": ["fast"],
            },
        },
        "metrics": {"enabled": True},
    }
)
SHORTHAND = ProxyConfig.model_validate(
    {"upstream": {"base_url": "https://api.openai.com"}, "metrics": {"enabled": True}}
)

Labels = Mapping[str, str]


def attempt(**fields: Any) -> AttemptRecord:
    """An upstream attempt that succeeded, unless told."""
    values: dict[str, Any] = {
        "number": 1,
        "span_id": "a1a1a1a1a1a1a1a1",
        "model": "fast",
        "provider": "oai",
        "provider_type": "openai",
        "upstream_model": "gpt-4o-mini",
        "server_address": "api.openai.com",
        "server_port": 443,
        "started": 1_700_000_000.0,
        "duration": 0.5,
        "delay": 0.0,
        "status": 200,
        "outcome": "ok",
    }
    values.update(fields)
    return AttemptRecord(**values)


def record(**fields: Any) -> ExchangeRecord:
    """A completed, non-streamed chat call to ``fast`` by key ``team-a``, unless told."""
    values: dict[str, Any] = {
        "exchange_id": "ex-42",
        "trace_id": "0af7651916cd43dd8448eb211c80319c",
        "span_id": "b7ad6b7169203331",
        "parent_span_id": None,
        "sampled": True,
        "method": "POST",
        "path": "/v1/chat/completions",
        "client_api": "openai",
        "operation": "chat",
        "model": "fast",
        "model_configured": True,
        "stream": False,
        "max_tokens": None,
        "temperature": None,
        "top_p": None,
        "user": None,
        "session_id": None,
        "key_name": "team-a",
        "provider": "oai",
        "provider_type": "openai",
        "upstream_model": "gpt-4o-mini",
        "attempts": (attempt(),),
        "retries": 0,
        "fallbacks": 0,
        "status": 200,
        "outcome": "completed",
        "error_type": None,
        "error_code": None,
        "error_message": None,
        "refusal": None,
        "usage": Usage(input_tokens=10, output_tokens=5),
        "usage_estimated": False,
        "cost_usd": 0.0001,
        "response_id": "chatcmpl-1",
        "response_model": "gpt-4o-mini",
        "finish_reasons": ("stop",),
        "started": 1_700_000_000.0,
        "duration": 0.6,
        "upstream_duration": 0.5,
        "time_to_first_byte": 0.1,
        "time_to_first_token": None,
    }
    values.update(fields)
    return ExchangeRecord(**values)


class Scrape:
    """One parsed scrape: samples by name and labels."""

    def __init__(self, body: bytes) -> None:
        self.text = body.decode("utf-8")
        self.types: dict[str, str] = {}
        self.samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for family in text_string_to_metric_families(self.text):
            self.types[family.name] = family.type
            for sample in family.samples:
                self.samples[sample.name, frozenset(sample.labels.items())] = sample.value

    def value(self, name: str, **labels: str) -> float | None:
        """The sample's value, or None if the scrape has no such series."""
        return self.samples.get((name, frozenset(labels.items())))

    def label_values(self, name: str, label: str) -> set[str]:
        return {dict(labels)[label] for n, labels in self.samples if n == name}

    def total(self, name: str, **labels: str) -> float:
        """The sum over the series of ``name`` whose labels include ``labels``."""
        want = set(labels.items())
        return sum(v for (n, ls), v in self.samples.items() if n == name and want <= ls)


def scrape(metrics: Metrics) -> Scrape:
    body, content_type = metrics.render()
    assert content_type == b"text/plain; version=0.0.4; charset=utf-8"
    return Scrape(body)


def fresh(config: ProxyConfig = CONFIG) -> Metrics:
    return Metrics(config)


REQUEST = {"model": "fast", "provider": "oai", "client_api": "openai"}


def test_requests_are_counted_by_model_provider_api_status_class_and_outcome() -> None:
    metrics = fresh()
    for _ in range(3):
        metrics.submit(RecordExchange(record()))
    metrics.submit(RecordExchange(record(status=429, outcome="upstream_error")))
    metrics.submit(
        RecordExchange(record(client_api="anthropic", status=502, outcome="upstream_error"))
    )
    metrics.submit(
        RecordExchange(record(status=None, outcome="client_gone", usage=None, cost_usd=None))
    )
    metrics.submit(
        RecordExchange(
            record(model=None, model_configured=False, provider=None, status=404, attempts=())
        )
    )
    s = scrape(metrics)
    assert s.types["sansproxy_requests"] == "counter"
    requests = "sansproxy_requests_total"
    assert s.value(requests, **REQUEST, status_class="2xx", outcome="completed") == 3
    assert s.value(requests, **REQUEST, status_class="4xx", outcome="upstream_error") == 1
    assert (
        s.value(
            requests,
            **{**REQUEST, "client_api": "anthropic"},
            status_class="5xx",
            outcome="upstream_error",
        )
        == 1
    )
    assert s.value(requests, **REQUEST, status_class="none", outcome="client_gone") == 1
    none = {"model": "none", "provider": "none", "client_api": "openai"}
    assert s.value(requests, **none, status_class="4xx", outcome="completed") == 1
    assert s.total(requests) == 7


def test_histograms_time_the_exchange_the_upstream_the_proxy_and_the_first_token() -> None:
    metrics = fresh()
    metrics.submit(RecordExchange(record(duration=0.6, upstream_duration=0.5)))
    metrics.submit(
        RecordExchange(
            record(duration=2.003, upstream_duration=2.0, stream=True, time_to_first_token=0.3)
        )
    )
    # No upstream (a refusal): no upstream time, nor a proxy overhead against it.
    metrics.submit(
        RecordExchange(record(duration=0.0004, upstream_duration=None, attempts=(), status=401))
    )
    # A time to first token is a stream's only.
    metrics.submit(
        RecordExchange(record(duration=1.0, upstream_duration=0.9, time_to_first_token=0.2))
    )
    s = scrape(metrics)
    labels = {"model": "fast", "provider": "oai"}
    for name in ("request_duration", "upstream_duration", "overhead", "time_to_first_token"):
        assert s.types[f"sansproxy_{name}_seconds"] == "histogram"

    duration = "sansproxy_request_duration_seconds"
    assert s.value(f"{duration}_count", **labels) == 4
    assert s.value(f"{duration}_sum", **labels) == pytest.approx(0.6 + 2.003 + 0.0004 + 1.0)
    assert s.value(f"{duration}_bucket", **labels, le="0.05") == 1
    assert s.value(f"{duration}_bucket", **labels, le="1.0") == 3
    assert s.value(f"{duration}_bucket", **labels, le="+Inf") == 4

    upstream = "sansproxy_upstream_duration_seconds"
    assert s.value(f"{upstream}_count", **labels) == 3
    assert s.value(f"{upstream}_sum", **labels) == pytest.approx(3.4)

    overhead = "sansproxy_overhead_seconds"
    assert s.value(f"{overhead}_count", **labels) == 3
    assert s.value(f"{overhead}_sum", **labels) == pytest.approx(0.1 + 0.003 + 0.1)
    assert s.value(f"{overhead}_bucket", **labels, le="0.005") == 1  # buckets in ms

    first = "sansproxy_time_to_first_token_seconds"
    assert s.value(f"{first}_count", **labels) == 1
    assert s.value(f"{first}_sum", **labels) == pytest.approx(0.3)


def test_overhead_is_never_negative() -> None:
    metrics = fresh()
    metrics.submit(RecordExchange(record(duration=0.5, upstream_duration=0.5000001)))
    s = scrape(metrics)
    assert s.value("sansproxy_overhead_seconds_sum", model="fast", provider="oai") == 0
    assert (
        s.value("sansproxy_overhead_seconds_bucket", model="fast", provider="oai", le="0.0001") == 1
    )


def test_tokens_and_cost_by_model_and_key_name() -> None:
    metrics = fresh()
    metrics.submit(
        RecordExchange(record(usage=Usage(input_tokens=10, output_tokens=5), cost_usd=0.25))
    )
    metrics.submit(
        RecordExchange(
            record(
                usage=Usage(
                    input_tokens=7,
                    output_tokens=3,
                    cached_input_tokens=100,
                    cache_creation_tokens=20,
                ),
                cost_usd=0.5,
            )
        )
    )
    metrics.submit(
        RecordExchange(record(key_name="team-b", usage=Usage(input_tokens=1, output_tokens=2)))
    )
    metrics.submit(
        RecordExchange(
            record(key_name=None, usage=Usage(input_tokens=4, output_tokens=4), cost_usd=None)
        )
    )
    s = scrape(metrics)
    tokens = "sansproxy_tokens_total"
    a = {"model": "fast", "key_name": "team-a"}
    assert s.value(tokens, **a, type="input") == 17
    assert s.value(tokens, **a, type="output") == 8
    assert s.value(tokens, **a, type="cache_read") == 100
    assert s.value(tokens, **a, type="cache_creation") == 20
    assert s.value(tokens, model="fast", key_name="team-b", type="output") == 2
    assert s.value(tokens, model="fast", key_name="none", type="input") == 4
    assert s.value("sansproxy_cost_usd_total", **a) == pytest.approx(0.75)
    assert s.value("sansproxy_cost_usd_total", model="fast", key_name="team-b") == pytest.approx(
        0.0001
    )
    assert s.value("sansproxy_cost_usd_total", model="fast", key_name="none") == 0


def test_a_fallbacks_tokens_count_for_the_model_that_served_them() -> None:
    metrics = fresh()
    failed = attempt(model="smart", provider="ant", status=529, outcome="status")
    served = attempt(number=2, model="fast", provider="oai")
    metrics.submit(
        RecordExchange(
            record(
                model="smart",
                attempts=(failed, served),
                retries=1,
                fallbacks=1,
                usage=Usage(input_tokens=10, output_tokens=5),
                cost_usd=0.01,
            )
        )
    )
    s = scrape(metrics)
    assert s.value("sansproxy_tokens_total", model="fast", key_name="team-a", type="input") == 10
    assert s.label_values("sansproxy_tokens_total", "model") == {"fast"}
    assert s.value("sansproxy_cost_usd_total", model="fast", key_name="team-a") == 0.01
    # The request itself is the public model asked for.
    assert s.total("sansproxy_requests_total", model="smart") == 1
    assert s.value("sansproxy_retries_total", model="smart") == 1
    assert s.value("sansproxy_fallbacks_total", model="smart") == 1
    assert s.value("sansproxy_upstream_failures_total", provider="ant", kind="status") == 1


def test_refusals_retries_and_upstream_failures_by_kind() -> None:
    metrics = fresh()
    metrics.submit(
        RecordExchange(record(refusal="rate_limit", status=429, outcome="rejected", attempts=()))
    )
    metrics.submit(
        RecordExchange(record(refusal="rate_limit", status=429, outcome="rejected", attempts=()))
    )
    metrics.submit(
        RecordExchange(record(refusal="budget", key_name="team-b", status=429, attempts=()))
    )
    attempts = (
        attempt(outcome="connect", status=None),
        attempt(number=2, outcome="timeout", status=None),
        attempt(number=3, outcome="status", status=503),
        attempt(number=4),
    )
    metrics.submit(RecordExchange(record(attempts=attempts, retries=3)))
    # An attempt the client's leaving cut short (outcome None) is no upstream failure.
    metrics.submit(
        RecordExchange(
            record(attempts=(attempt(outcome=None, status=None),), outcome="client_gone")
        )
    )
    s = scrape(metrics)
    assert s.value("sansproxy_refusals_total", kind="rate_limit", key_name="team-a") == 2
    assert s.value("sansproxy_refusals_total", kind="budget", key_name="team-b") == 1
    assert s.value("sansproxy_retries_total", model="fast") == 3
    failures = "sansproxy_upstream_failures_total"
    assert {
        k: s.value(failures, provider="oai", kind=k) for k in ("connect", "timeout", "status")
    } == {
        "connect": 1,
        "timeout": 1,
        "status": 1,
    }
    assert s.label_values(failures, "kind") == {"connect", "timeout", "status"}
    assert s.total("sansproxy_fallbacks_total") == 0


def test_gauges_follow_connections_and_streams() -> None:
    metrics = fresh()
    for _ in range(3):
        metrics.connection_opened()
    metrics.connection_closed()
    metrics.stream_started()
    metrics.stream_started()
    metrics.stream_ended()
    s = scrape(metrics)
    assert s.types["sansproxy_client_connections"] == "gauge"
    assert s.value("sansproxy_client_connections") == 2
    assert s.value("sansproxy_streams_in_flight") == 1


def test_other_sinks_drops_are_counted() -> None:
    metrics = fresh()
    metrics.count_drops("trace", 3)
    metrics.count_drops("trace", 2)
    metrics.count_drops("spans", 1)
    s = scrape(metrics)
    assert s.value("sansproxy_dropped_records_total", sink="trace") == 5
    assert s.value("sansproxy_dropped_records_total", sink="spans") == 1


def test_a_model_the_config_does_not_name_is_other() -> None:
    metrics = fresh()
    for i in range(50):
        metrics.submit(
            RecordExchange(record(model=f"client-made-{i}", model_configured=False, status=404))
        )
    metrics.submit(RecordExchange(record(model="smart")))
    s = scrape(metrics)
    assert s.label_values("sansproxy_requests_total", "model") == {"other", "smart"}
    assert s.total("sansproxy_requests_total", model="other") == 50


def test_the_shorthand_keeps_the_first_hundred_model_names() -> None:
    metrics = fresh(SHORTHAND)
    names = [f"model-{i}" for i in range(SHORTHAND_MODELS + 20)]
    for name in names + names:  # twice: a name seen keeps its label
        metrics.submit(
            RecordExchange(record(model=name, model_configured=False, provider="upstream"))
        )
    metrics.submit(
        RecordExchange(record(model="x" * 129, model_configured=False, provider="upstream"))
    )
    s = scrape(metrics)
    models = s.label_values("sansproxy_requests_total", "model")
    assert models == {*names[:SHORTHAND_MODELS], "other"}
    assert s.total("sansproxy_requests_total", model="model-0") == 2
    assert s.total("sansproxy_requests_total", model="other") == 2 * 20 + 1
    assert s.label_values("sansproxy_tokens_total", "model") == models


def test_no_secret_nor_id_in_a_scrape() -> None:
    metrics = fresh()
    secrets = {
        "exchange id": "ex-SECRET-id",
        "trace id": "0af7651916cd43dd8448eb211c80319d",
        "span id": "b7ad6b7169203332",
        "response id": "chatcmpl-SECRET",
        "user": "alice@example.com",
        "session": "session-SECRET",
        "error": "upstream said: bad key sk-leaked-SECRET",
        "client's model": "sk-client-key-as-model-SECRET",
    }
    metrics.submit(
        RecordExchange(
            record(
                exchange_id=secrets["exchange id"],
                trace_id=secrets["trace id"],
                span_id=secrets["span id"],
                response_id=secrets["response id"],
                user=secrets["user"],
                session_id=secrets["session"],
                error_message=secrets["error"],
                model=secrets["client's model"],
                model_configured=False,
                attempts=(attempt(span_id="c3c3c3c3c3c3c3c3"),),
            )
        )
    )
    text = scrape(metrics).text
    for what, value in {
        **secrets,
        "provider key": PROVIDER_SECRET,
        "attempt span": "c3c3c3c3",
    }.items():
        assert value not in text, what


def test_submit_never_raises_a_failure_is_a_counted_drop(caplog: pytest.LogCaptureFixture) -> None:
    metrics = fresh()
    broken = record(duration="not a number")
    with caplog.at_level(logging.ERROR, logger="sansproxy"):
        metrics.submit(RecordExchange(broken))
        metrics.submit(RecordExchange(broken))
    metrics.submit(RecordExchange(record()))
    s = scrape(metrics)
    assert s.value("sansproxy_dropped_records_total", sink="metrics") == 2
    assert s.total("sansproxy_requests_total", status_class="2xx") >= 1
    assert [r.message for r in caplog.records].count(
        "metrics: counting an exchange failed (dropped, counted)"
    ) == 1


def test_exchanges_waiting_beyond_the_bound_are_counted_drops(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(metrics_module, "MAX_PENDING", 3)
    metrics = fresh()
    with caplog.at_level(logging.ERROR, logger="sansproxy"), metrics._lock:
        # The thread that counts them is held: they wait, three of them.
        for _ in range(5):
            metrics.submit(RecordExchange(record()))
    s = scrape(metrics)
    assert s.total("sansproxy_requests_total") == 3
    assert s.value("sansproxy_dropped_records_total", sink="metrics") == 2
    assert [r.message for r in caplog.records] == [
        "metrics: 3 exchanges wait to be counted; dropping"
    ]


def test_each_instance_keeps_its_own_values() -> None:
    one, two = fresh(), fresh()
    one.submit(RecordExchange(record()))
    assert scrape(two).total("sansproxy_requests_total") == 0
    assert scrape(one).total("sansproxy_requests_total") == 1
    one.close()  # nothing queued: close returns at once, values stay readable
    assert scrape(one).total("sansproxy_requests_total") == 1


# -- multiprocess mode (--workers N) ---------------------------------------------------

_WORKER = """
import json, sys
from adapters._metrics import Metrics
from core import ProxyConfig, RecordExchange
from core.gateway import Usage
from tests.adapters.test_metrics import record

config = ProxyConfig.model_validate(json.loads(sys.argv[1]))
metrics = Metrics(config)
for step in json.loads(sys.argv[2]):
    kind, arg = step
    if kind == "submit":
        metrics.submit(RecordExchange(record(usage=Usage(input_tokens=arg, output_tokens=1))))
    elif kind == "connection":
        metrics.connection_opened()
    elif kind == "stream":
        metrics.stream_started()
    elif kind == "close":
        metrics.close()
    elif kind == "render":
        sys.stdout.write(metrics.render()[0].decode())
"""


def run_process(directory: Path, *steps: tuple[str, int]) -> str:
    """Run a process of its own, with ``steps``, in multiprocess mode; its output."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    config = CONFIG.model_dump(mode="json")
    config["providers"]["oai"]["api_key"] = PROVIDER_SECRET
    done = subprocess.run(
        [sys.executable, "-c", _WORKER, json.dumps(config), json.dumps(steps)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_multiprocess_a_scrape_sums_every_process(tmp_path: Path) -> None:
    run_process(tmp_path, ("submit", 10), ("submit", 20), ("connection", 0), ("stream", 0))
    run_process(tmp_path, ("submit", 5), ("connection", 0), ("connection", 0))
    s = Scrape(run_process(tmp_path, ("submit", 1), ("render", 0)).encode())
    assert (
        s.value("sansproxy_requests_total", **REQUEST, status_class="2xx", outcome="completed") == 4
    )
    assert s.value("sansproxy_tokens_total", model="fast", key_name="team-a", type="input") == 36
    assert s.value("sansproxy_request_duration_seconds_count", model="fast", provider="oai") == 4
    # Live gauges: a process that exited without closing still counts until the
    # supervisor marks it dead (adapters.asgi does, for each worker that exits).
    assert s.value("sansproxy_client_connections") == 3
    assert s.value("sansproxy_streams_in_flight") == 1
    assert PROVIDER_SECRET not in s.text


def test_multiprocess_a_closed_process_leaves_the_gauges_but_not_the_counters(
    tmp_path: Path,
) -> None:
    run_process(tmp_path, ("submit", 10), ("connection", 0), ("stream", 0), ("close", 0))
    run_process(tmp_path, ("connection", 0))
    s = Scrape(run_process(tmp_path, ("render", 0)).encode())
    assert s.value("sansproxy_client_connections") == 1
    assert s.value("sansproxy_streams_in_flight") == 0
    assert s.value("sansproxy_tokens_total", model="fast", key_name="team-a", type="input") == 10


@given(
    st.lists(
        st.tuples(
            st.floats(0, 700, allow_nan=False),  # whole exchange (s)
            st.one_of(st.none(), st.floats(0, 700, allow_nan=False)),  # upstream
        ),
        min_size=1,
        max_size=30,
    ),
    st.integers(0, 29),
)
def test_tallied_histograms_scrape_as_observe_would_count_them(
    timings: list[tuple[float, float | None]], moved_after: int
) -> None:
    # The tallies move into prometheus-client's values now and then (and at a
    # scrape): the scrape shows what observe() on each record would have counted.
    metrics = fresh()
    reference = CollectorRegistry()
    exchange = Histogram(
        "sansproxy_request_duration_seconds",
        "",
        ("model", "provider"),
        registry=reference,
        buckets=EXCHANGE_BUCKETS,
    ).labels("fast", "oai")
    upstream = Histogram(
        "sansproxy_upstream_duration_seconds",
        "",
        ("model", "provider"),
        registry=reference,
        buckets=EXCHANGE_BUCKETS,
    ).labels("fast", "oai")
    for i, (duration, spent) in enumerate(timings):
        metrics.submit(RecordExchange(record(duration=duration, upstream_duration=spent)))
        exchange.observe(duration)
        if spent is not None:
            upstream.observe(spent)
        if i == moved_after:
            metrics.flush()
    ours = scrape(metrics).samples
    metrics.close()
    theirs = Scrape(generate_latest(reference)).samples
    for (name, labels), value in theirs.items():
        if name.endswith(("_bucket", "_count", "_sum")) and ("model", "fast") in labels:
            assert ours[(name, labels)] == pytest.approx(value), name


EXCHANGES = st.builds(
    lambda model, key, status, usage, failed, refused: record(
        model=model,
        model_configured=model in ("fast", "smart"),
        key_name=key,
        status=status,
        outcome="completed" if status == 200 else "upstream_error",
        usage=usage,
        cost_usd=None if usage is None else usage.output_tokens / 1000,
        refusal=refused,
        attempts=(
            *(
                attempt(number=n + 1, provider="ant", model="smart", outcome="timeout")
                for n in range(failed)
            ),
            attempt(number=1 + failed, model="fast"),
        ),
        retries=failed,
        fallbacks=min(failed, 1) if model == "smart" else 0,
    ),
    st.sampled_from(["fast", "smart", "mystery", None]),
    st.sampled_from(["team-a", "team-b", None]),
    st.sampled_from([200, 429, 502, None]),
    st.one_of(
        st.none(),
        st.builds(Usage, input_tokens=st.integers(0, 99), output_tokens=st.integers(0, 99)),
    ),
    st.integers(0, 2),
    st.sampled_from([None, None, "rate_limit"]),
)


@given(st.lists(EXCHANGES, max_size=40))
def test_a_batch_counts_what_each_record_says(records: list[ExchangeRecord]) -> None:
    # Counted together (grouped by series, in C loops): the same sums as record by record.
    metrics = fresh()
    for r in records:
        metrics.submit(RecordExchange(r))
    s = scrape(metrics)
    metrics.close()
    requests: dict[tuple[str, ...], int] = {}
    tokens: dict[tuple[str, str], int] = {}
    failures = retries = 0
    for r in records:
        model = "none" if r.model is None else r.model if r.model_configured else "other"
        status = "none" if r.status is None else f"{r.status // 100}xx"
        key = (model, r.provider or "none", status, r.outcome)
        requests[key] = requests.get(key, 0) + 1
        if r.usage is not None:
            served = r.attempts[-1].model if r.fallbacks else model
            spent = (str(served), r.key_name or "none")
            tokens[spent] = tokens.get(spent, 0) + r.usage.output_tokens
        failures += sum(a.outcome == "timeout" for a in r.attempts)
        retries += r.retries
    for (model, provider, status, outcome), n in requests.items():
        labels = {"model": model, "provider": provider, "status_class": status}
        assert (
            s.value("sansproxy_requests_total", **labels, client_api="openai", outcome=outcome) == n
        )
        assert s.total("sansproxy_request_duration_seconds_count", model=model) >= n
    for (model, key_name), n in tokens.items():
        got = s.value("sansproxy_tokens_total", model=model, key_name=key_name, type="output")
        assert got == n
        cost = s.value("sansproxy_cost_usd_total", model=model, key_name=key_name) or 0.0
        assert cost == pytest.approx(n / 1000)
    assert s.total("sansproxy_tokens_total", type="output") == sum(tokens.values())
    assert s.total("sansproxy_upstream_failures_total", kind="timeout") == failures
    assert s.total("sansproxy_retries_total") == retries
    assert s.total("sansproxy_refusals_total") == sum(r.refusal is not None for r in records)
