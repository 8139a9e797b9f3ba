"""The span exporter: exchange records in, OpenTelemetry GenAI spans out over real
OTLP/HTTP to a real receiver (and to Langfuse's endpoint, with its headers and
attributes); a receiver that is slow or down costs ``submit`` nothing but counted drops.
"""

from __future__ import annotations

import base64
import json
import logging
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import trustme

from adapters import _spans
from adapters._spans import SpanExporter, traces_url
from core import ProxyConfig, RecordExchange
from core._record import AttemptRecord, ExchangeRecord, trace_ids
from core.gateway import Usage
from tests.e2e._helpers import closed_port
from tests.interop.servers import INSTALL, nginx_binary
from tests.support.needs import require
from tests.support.otlp_receiver import LANGFUSE_PATH, OTLP_PATH, OtlpReceiver, ReceivedSpan

STARTED = 1_750_000_000.25
LANGFUSE_SECRET = "sk-lf-very-secret-0123"
HEADER_SECRET = "otlp-token-very-secret-4567"
CLIENT_PARENT = "b7ad6b7169203331"
CLIENT_TRACE = "0af7651916cd43dd8448eb211c80319c"


@pytest.fixture(autouse=True)
def _fast_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches every 50 ms (the standard variable), not every 5 s."""
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as server:
        yield server
    assert not server.errors


def config(
    *, otlp: str | None = None, langfuse: str | None = None, **telemetry: Any
) -> ProxyConfig:
    options: dict[str, Any] = dict(telemetry)
    if otlp is not None:
        options["otlp_endpoint"] = otlp
    if langfuse is not None:
        options["langfuse"] = {
            "host": langfuse,
            "public_key": "pk-lf-public",
            "secret_key": LANGFUSE_SECRET,
        }
    return ProxyConfig.model_validate({"telemetry": options})


@pytest.fixture
def exporters() -> Iterator[list[SpanExporter]]:
    """Exporters the test made, closed after it (close() is bounded)."""
    made: list[SpanExporter] = []
    yield made
    for exporter in made:
        exporter.close()


def attempt(number: int, *, seed_ids: Any, **fields: Any) -> AttemptRecord:
    values: dict[str, Any] = {
        "number": number,
        "span_id": seed_ids.attempt_span_id(number),
        "model": "smart",
        "provider": "claude",
        "provider_type": "anthropic",
        "upstream_model": "claude-upstream",
        "server_address": "api.example.test",
        "server_port": 8443,
        "started": STARTED + 0.001 + 0.1 * number,
        "duration": 0.05,
        "delay": 0.0,
        "status": 200,
        "outcome": "ok",
    }
    values.update(fields)
    return AttemptRecord(**values)


def exchange(*, traceparent: bytes | None = None, tries: int = 1, **fields: Any) -> ExchangeRecord:
    """A translated chat exchange (an OpenAI client, an Anthropic provider) that streamed;
    ``tries`` attempts, the last one answered."""
    ids = trace_ids(traceparent, exchange_id="ex-1", rand=0.5, sample_ratio=1.0)
    attempts = [attempt(n, seed_ids=ids, status=503, outcome="status") for n in range(1, tries)] + [
        attempt(tries, seed_ids=ids)
    ]
    values: dict[str, Any] = {
        "exchange_id": "ex-1",
        "trace_id": ids.trace_id,
        "span_id": ids.span_id,
        "parent_span_id": ids.parent_span_id,
        "sampled": ids.sampled,
        "method": "POST",
        "path": "/v1/chat/completions",
        "client_api": "openai",
        "operation": "chat",
        "model": "smart",
        "model_configured": True,
        "stream": True,
        "max_tokens": 64,
        "temperature": 0.5,
        "top_p": 0.9,
        "user": "end-user-7",
        "session_id": "session-42",
        "key_name": "team-a",
        "provider": "claude",
        "provider_type": "anthropic",
        "upstream_model": "claude-upstream",
        "attempts": tuple(attempts),
        "retries": tries - 1,
        "fallbacks": 0,
        "status": 200,
        "outcome": "completed",
        "error_type": None,
        "error_code": None,
        "error_message": None,
        "refusal": None,
        "usage": Usage(
            input_tokens=10, output_tokens=5, cached_input_tokens=30, cache_creation_tokens=2
        ),
        "usage_estimated": False,
        "cost_usd": 0.00125,
        "response_id": "msg_0123",
        "response_model": "claude-upstream-2025",
        "finish_reasons": ("stop",),
        "started": STARTED,
        "duration": 0.5,
        "upstream_duration": 0.05 * tries,
        "time_to_first_byte": 0.02,
        "time_to_first_token": 0.125,
    }
    values.update(fields)
    return ExchangeRecord(**values)


def by_kind(spans: list[ReceivedSpan], kind: str) -> list[ReceivedSpan]:
    return sorted((s for s in spans if s.kind == kind), key=lambda s: s.start_ns)


def all_text(spans: list[ReceivedSpan]) -> str:
    """Everything a span backend would store of these spans, as text."""
    return json.dumps(
        [[s.name, s.attributes, s.resource, s.status_message, s.scope] for s in spans],
        default=str,
    )


# -- OTLP ------------------------------------------------------------------------------


def test_traces_url_appends_the_signal_path_once() -> None:
    assert traces_url("http://collector:4318") == "http://collector:4318/v1/traces"
    assert traces_url("http://collector:4318/") == "http://collector:4318/v1/traces"
    assert traces_url("http://c:4318/v1/traces") == "http://c:4318/v1/traces"
    assert traces_url("http://c/otel/") == "http://c/otel/v1/traces"


def test_a_streamed_translated_call_is_a_server_span_and_a_client_span_per_conventions(
    receiver: OtlpReceiver, exporters: list[SpanExporter]
) -> None:
    exporter = SpanExporter(config(otlp=receiver.base_url, service_name="gw-test"))
    exporters.append(exporter)
    record = exchange()
    exporter.submit(RecordExchange(record))
    spans = receiver.wait_for_spans(2)
    (server,) = by_kind(spans, "SERVER")
    (client,) = by_kind(spans, "CLIENT")

    assert {s.path for s in spans} == {OTLP_PATH}
    assert server.trace_id == client.trace_id == record.trace_id
    assert server.span_id == record.span_id and server.parent_span_id is None
    assert client.span_id == record.attempts[0].span_id
    assert client.parent_span_id == server.span_id
    assert server.resource["service.name"] == "gw-test"
    assert server.scope == "sansproxy"
    # Times are the record's, to the microsecond.
    assert server.start_ns / 1e9 == pytest.approx(STARTED, abs=1e-6)
    assert server.duration == pytest.approx(0.5, abs=1e-6)
    assert client.start_ns / 1e9 == pytest.approx(record.attempts[0].started, abs=1e-6)
    assert client.duration == pytest.approx(0.05, abs=1e-6)

    assert server.name == "POST /v1/chat/completions"
    assert server.status == "UNSET"
    assert server.attributes["http.request.method"] == "POST"
    assert server.attributes["http.route"] == "/v1/chat/completions"
    assert server.attributes["http.response.status_code"] == 200
    assert server.attributes["sansproxy.exchange_id"] == "ex-1"
    assert server.attributes["user.id"] == "team-a", "the key's name, before the request's user"
    assert server.attributes["session.id"] == "session-42"
    assert not any(key.startswith("gen_ai.") for key in server.attributes)

    assert client.name == "chat claude-upstream"
    assert client.status == "UNSET"
    assert client.attributes == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "anthropic",
        "gen_ai.request.model": "claude-upstream",
        "gen_ai.request.max_tokens": 64,
        "gen_ai.request.temperature": 0.5,
        "gen_ai.request.top_p": 0.9,
        "gen_ai.request.stream": True,
        "gen_ai.response.id": "msg_0123",
        "gen_ai.response.model": "claude-upstream-2025",
        "gen_ai.response.finish_reasons": ("stop",),
        "gen_ai.response.time_to_first_chunk": pytest.approx(0.125 - 0.101, abs=1e-6),
        # The convention counts cache reads and writes among the input tokens.
        "gen_ai.usage.input_tokens": 42,
        "gen_ai.usage.output_tokens": 5,
        "gen_ai.usage.cache_read.input_tokens": 30,
        "gen_ai.usage.cache_creation.input_tokens": 2,
        "server.address": "api.example.test",
        "server.port": 8443,
        "http.response.status_code": 200,
        "sansproxy.attempt": 1,
        "sansproxy.provider": "claude",
        "user.id": "team-a",
        "session.id": "session-42",
    }
    assert not any(key.startswith("langfuse.") for s in spans for key in s.attributes)


def test_a_non_streamed_openai_call_has_no_stream_attribute_and_the_request_user(
    receiver: OtlpReceiver, exporters: list[SpanExporter]
) -> None:
    exporter = SpanExporter(config(otlp=receiver.base_url))
    exporters.append(exporter)
    ids = trace_ids(None, exchange_id="ex-2", rand=0.25, sample_ratio=1.0)
    record = exchange(
        exchange_id="ex-2",
        trace_id=ids.trace_id,
        span_id=ids.span_id,
        stream=False,
        key_name=None,
        session_id=None,
        temperature=None,
        time_to_first_token=None,
        provider_type="openai",
        attempts=(
            attempt(
                1,
                seed_ids=ids,
                provider="oai",
                provider_type="openai",
                upstream_model="gpt-upstream",
            ),
        ),
    )
    exporter.submit(RecordExchange(record))
    (client,) = receiver.wait_for_spans(where=lambda s: s.kind == "CLIENT")
    assert client.name == "chat gpt-upstream"
    assert client.attributes["gen_ai.provider.name"] == "openai"
    assert client.attributes["user.id"] == "end-user-7"
    for absent in (
        "gen_ai.request.stream",
        "gen_ai.request.temperature",
        "gen_ai.response.time_to_first_chunk",
        "session.id",
    ):
        assert absent not in client.attributes


def test_retries_are_attempt_spans_and_failures_are_errors(
    receiver: OtlpReceiver, exporters: list[SpanExporter]
) -> None:
    exporter = SpanExporter(config(otlp=receiver.base_url))
    exporters.append(exporter)
    record = exchange(tries=3)
    exporter.submit(RecordExchange(record))
    spans = receiver.wait_for_spans(4)
    (server,) = by_kind(spans, "SERVER")
    clients = by_kind(spans, "CLIENT")
    assert [c.span_id for c in clients] == [a.span_id for a in record.attempts]
    assert len({c.span_id for c in clients}) == 3
    assert all(c.parent_span_id == server.span_id for c in clients)
    assert [c.attributes["sansproxy.attempt"] for c in clients] == [1, 2, 3]
    assert [c.status for c in clients] == ["ERROR", "ERROR", "UNSET"]
    assert [c.attributes.get("error.type") for c in clients] == ["503", "503", None]
    assert [c.attributes["http.response.status_code"] for c in clients] == [503, 503, 200]
    # Only the attempt that answered carries the answer and its usage.
    assert ["gen_ai.usage.output_tokens" in c.attributes for c in clients] == [
        False,
        False,
        True,
    ]
    assert server.attributes["sansproxy.retries"] == 2


def test_a_failed_exchange_is_an_error_on_both_spans(
    receiver: OtlpReceiver, exporters: list[SpanExporter]
) -> None:
    exporter = SpanExporter(config(otlp=receiver.base_url))
    exporters.append(exporter)
    record = exchange()
    failed = record._replace(
        status=504,
        outcome="timeout",
        error_type="upstream_timeout",
        error_message="the upstream did not answer in time",
        usage=None,
        response_id=None,
        response_model=None,
        finish_reasons=(),
        attempts=(record.attempts[0]._replace(status=None, outcome="timeout"),),
    )
    exporter.submit(RecordExchange(failed))
    spans = receiver.wait_for_spans(2)
    (server,) = by_kind(spans, "SERVER")
    (client,) = by_kind(spans, "CLIENT")
    assert server.status == "ERROR"
    assert server.status_message == "the upstream did not answer in time"
    assert server.attributes["error.type"] == "upstream_timeout"
    assert server.attributes["http.response.status_code"] == 504
    assert client.status == "ERROR"
    assert client.attributes["error.type"] == "timeout"
    assert "http.response.status_code" not in client.attributes


def test_a_client_traceparent_is_continued(
    receiver: OtlpReceiver, exporters: list[SpanExporter]
) -> None:
    exporter = SpanExporter(config(otlp=receiver.base_url))
    exporters.append(exporter)
    record = exchange(traceparent=f"00-{CLIENT_TRACE}-{CLIENT_PARENT}-01".encode())
    exporter.submit(RecordExchange(record))
    spans = receiver.wait_for_spans(2)
    (server,) = by_kind(spans, "SERVER")
    (client,) = by_kind(spans, "CLIENT")
    assert server.trace_id == client.trace_id == CLIENT_TRACE
    assert server.parent_span_id == CLIENT_PARENT
    assert server.flags & 0x300 == 0x300, "the parent is marked remote"
    assert client.parent_span_id == server.span_id


def test_unsampled_records_send_nothing(
    receiver: OtlpReceiver, exporters: list[SpanExporter]
) -> None:
    exporter = SpanExporter(config(otlp=receiver.base_url))
    exporters.append(exporter)
    exporter.submit(
        RecordExchange(exchange(traceparent=f"00-{CLIENT_TRACE}-{CLIENT_PARENT}-00".encode()))
    )
    exporter.submit(RecordExchange(exchange()._replace(trace_id=None, span_id=None)))
    marker = exchange(exchange_id="marker")
    exporter.submit(RecordExchange(marker))
    spans = receiver.wait_for_spans(2)
    assert {s.trace_id for s in spans} == {marker.trace_id}
    exporter.close()
    assert len(receiver.spans) == 2 and exporter.dropped == 0


def test_captured_messages_are_json_on_the_attempt_span(
    receiver: OtlpReceiver, exporters: list[SpanExporter]
) -> None:
    exporter = SpanExporter(config(otlp=receiver.base_url))
    exporters.append(exporter)
    messages_in = [{"role": "user", "parts": [{"type": "text", "content": "Salut"}]}]
    messages_out = [
        {
            "role": "assistant",
            "parts": [{"type": "text", "content": "Bonjour"}],
            "finish_reason": "stop",
        }
    ]
    exporter.submit(
        RecordExchange(exchange(input_messages=messages_in, output_messages=messages_out))
    )
    (client,) = receiver.wait_for_spans(where=lambda s: s.kind == "CLIENT")
    assert json.loads(client.attributes["gen_ai.input.messages"]) == messages_in
    assert json.loads(client.attributes["gen_ai.output.messages"]) == messages_out


def test_otlp_headers_are_sent_and_no_secret_is_in_a_span(
    receiver: OtlpReceiver, exporters: list[SpanExporter]
) -> None:
    exporter = SpanExporter(
        config(otlp=receiver.base_url, headers={"authorization": f"Bearer {HEADER_SECRET}"})
    )
    exporters.append(exporter)
    exporter.submit(RecordExchange(exchange()))
    spans = receiver.wait_for_spans(2)
    assert receiver.exports[0].headers["authorization"] == f"Bearer {HEADER_SECRET}"
    assert HEADER_SECRET not in all_text(spans)


def test_the_standard_environment_variables_name_the_endpoint(
    receiver: OtlpReceiver, exporters: list[SpanExporter], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.base_url)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=acme")
    # No endpoint in the configuration: the destination comes from the environment.
    exporter = SpanExporter(config())
    exporters.append(exporter)
    exporter.submit(RecordExchange(exchange()))
    spans = receiver.wait_for_spans(2)
    assert {s.path for s in spans} == {OTLP_PATH}
    assert receiver.exports[0].headers["x-tenant"] == "acme"


@pytest.mark.parametrize("bypassed", [False, True], ids=["through-the-proxy", "no-proxy"])
def test_the_proxy_variables_are_honoured(
    receiver: OtlpReceiver,
    exporters: list[SpanExporter],
    monkeypatch: pytest.MonkeyPatch,
    bypassed: bool,
) -> None:
    # The exporter reads HTTP_PROXY and NO_PROXY once, at start-up, not at every
    # export: what it reads must still be what requests would have read.
    with OtlpReceiver() as collector:
        monkeypatch.setenv("HTTP_PROXY", receiver.base_url)
        monkeypatch.setenv("NO_PROXY", "127.0.0.1" if bypassed else "")
        exporter = SpanExporter(config(otlp=collector.base_url))
        exporters.append(exporter)
        exporter.submit(RecordExchange(exchange()))
        via, other = (collector, receiver) if bypassed else (receiver, collector)
        assert len(via.wait_for_spans(2)) == 2
        (export,) = via.exports
        expected = OTLP_PATH if bypassed else collector.base_url + OTLP_PATH
        assert export.target == expected
        assert other.exports == []
        assert not collector.errors


@pytest.mark.parametrize("trusted", [True, False], ids=["ca-given", "ca-unknown"])
def test_an_https_collector_is_trusted_through_the_certificate_given(
    exporters: list[SpanExporter],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    trusted: bool,
) -> None:
    ca = trustme.CA()
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(tls)
    with OtlpReceiver(tls=tls) as collector:
        if trusted:  # the SDK's own variable for the collector's CA
            ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
            monkeypatch.setenv("OTEL_EXPORTER_OTLP_CERTIFICATE", str(tmp_path / "ca.pem"))
        exporter = SpanExporter(config(otlp=collector.base_url))
        exporter.submit(RecordExchange(exchange()))
        exporter.close()  # delivers what is queued (bounded)
        assert collector.base_url.startswith("https://")
        if trusted:
            assert len(collector.spans) == 2 and exporter.dropped == 0
        else:  # a certificate it cannot verify: nothing sent, the spans counted
            assert collector.exports == [] and exporter.dropped == 2


def test_a_collector_asking_to_retry_after_the_deadline_is_not_asked_again(
    receiver: OtlpReceiver, exporters: list[SpanExporter]
) -> None:
    # 503 with Retry-After: 120 s, past the export's 5 s: the exporter gives up at
    # once (it would retry within seconds if it did not read the header).
    receiver.status = 503
    receiver.retry_after = "120"
    exporter = SpanExporter(config(otlp=receiver.base_url))
    exporter.submit(RecordExchange(exchange()))
    receiver.wait_for_arrivals(1)
    exporter.close()
    assert len(receiver.exports) == 1 and exporter.dropped == 2


NGINX_CONF = """
daemon off;
master_process off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log stderr notice;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    client_max_body_size 16m;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://127.0.0.1:{collector};
            proxy_http_version 1.1;
            proxy_set_header X-Through nginx;
        }}
    }}
}}
"""


def test_spans_reach_a_collector_behind_nginx(
    receiver: OtlpReceiver, exporters: list[SpanExporter], tmp_path: Path
) -> None:
    # A collector or Langfuse is often behind a reverse proxy: nginx takes the
    # exports as libcurl sends them (batches of many records: nginx keeps a body
    # over 16 KB in a file first).
    nginx = nginx_binary()
    require("nginx", None if nginx else f"nginx is not installed ({INSTALL['nginx']})")
    assert nginx is not None
    port = closed_port()
    conf = tmp_path / "nginx.conf"
    conf.write_text(NGINX_CONF.format(prefix=tmp_path, port=port, collector=receiver.port))
    log = (tmp_path / "nginx.log").open("w")
    process = subprocess.Popen([nginx, "-p", str(tmp_path), "-c", str(conf)], stderr=log)
    try:
        deadline = time.monotonic() + 10
        while not _listening(port):
            assert process.poll() is None, (tmp_path / "nginx.log").read_text()
            assert time.monotonic() < deadline, "nginx did not listen"
            time.sleep(0.02)  # polling a condition, with a deadline
        exporter = SpanExporter(config(otlp=f"http://127.0.0.1:{port}", max_queue=1000))
        exporters.append(exporter)
        for n in range(300):
            exporter.submit(RecordExchange(exchange(exchange_id=f"behind-{n}")))
        exporter.close()
        assert exporter.dropped == 0
        assert len(receiver.spans) == 600
        assert {e.headers["x-through"] for e in receiver.exports} == {"nginx"}
        servers = [s for s in receiver.spans if s.kind == "SERVER"]
        assert {s.attributes["sansproxy.exchange_id"] for s in servers} == {
            f"behind-{n}" for n in range(300)
        }
    finally:
        process.terminate()
        process.wait(10)
        log.close()


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


# -- Langfuse --------------------------------------------------------------------------


def test_langfuse_gets_basic_auth_the_ingestion_version_and_a_generation(
    receiver: OtlpReceiver, exporters: list[SpanExporter]
) -> None:
    exporter = SpanExporter(config(langfuse=receiver.base_url + "/"))
    exporters.append(exporter)
    record = exchange()
    exporter.submit(RecordExchange(record))
    spans = receiver.wait_for_spans(2)
    assert {s.path for s in spans} == {LANGFUSE_PATH}
    headers = receiver.exports[0].headers
    expected = base64.b64encode(f"pk-lf-public:{LANGFUSE_SECRET}".encode()).decode()
    assert headers["authorization"] == f"Basic {expected}"
    assert headers["x-langfuse-ingestion-version"] == "4"

    (server,) = by_kind(spans, "SERVER")
    (generation,) = by_kind(spans, "CLIENT")
    assert server.attributes["langfuse.observation.type"] == "span", (
        "else Langfuse would count the exchange as a second generation"
    )
    assert server.attributes["langfuse.trace.name"] == "chat smart"
    assert server.attributes["user.id"] == "team-a"
    assert server.attributes["session.id"] == "session-42"

    attrs = generation.attributes
    assert attrs["langfuse.observation.type"] == "generation"
    assert attrs["langfuse.observation.model.name"] == "claude-upstream-2025"
    assert json.loads(attrs["langfuse.observation.usage_details"]) == {
        "input": 10,
        "output": 5,
        "input_cache_read": 30,
        "input_cache_creation": 2,
        "total": 47,
    }
    assert json.loads(attrs["langfuse.observation.cost_details"]) == {"total": 0.00125}
    first_token = attrs["langfuse.observation.completion_start_time"]
    assert first_token == "2025-06-15T15:06:40.375Z"
    assert datetime.fromisoformat(first_token).timestamp() == pytest.approx(STARTED + 0.125)
    assert attrs["user.id"] == "team-a" and attrs["session.id"] == "session-42"

    text = all_text(spans)
    assert LANGFUSE_SECRET not in text and expected not in text


def test_a_failed_attempt_is_a_generation_without_usage_or_cost(
    receiver: OtlpReceiver, exporters: list[SpanExporter]
) -> None:
    exporter = SpanExporter(config(langfuse=receiver.base_url))
    exporters.append(exporter)
    exporter.submit(RecordExchange(exchange(tries=2)))
    spans = receiver.wait_for_spans(3)
    failed, served = by_kind(spans, "CLIENT")
    assert failed.attributes["langfuse.observation.type"] == "generation"
    assert failed.attributes["langfuse.observation.model.name"] == "claude-upstream"
    for key in ("usage_details", "cost_details", "completion_start_time"):
        assert f"langfuse.observation.{key}" not in failed.attributes
        assert f"langfuse.observation.{key}" in served.attributes


def test_both_destinations_get_the_same_spans(
    receiver: OtlpReceiver, exporters: list[SpanExporter]
) -> None:
    exporter = SpanExporter(config(otlp=receiver.base_url, langfuse=receiver.base_url))
    exporters.append(exporter)
    exporter.submit(RecordExchange(exchange()))
    spans = receiver.wait_for_spans(4)
    otlp = sorted((s.span_id, s.attributes.items()) for s in spans if s.path == OTLP_PATH)
    langfuse = sorted((s.span_id, s.attributes.items()) for s in spans if s.path == LANGFUSE_PATH)
    assert otlp == langfuse and len(otlp) == 2
    otlp_headers = next(e.headers for e in receiver.exports if e.path == OTLP_PATH)
    assert "authorization" not in otlp_headers, "Langfuse's credentials go to Langfuse only"


# -- a slow or absent receiver -----------------------------------------------------------


def _submit_in_thread(exporter: SpanExporter, records: list[ExchangeRecord]) -> None:
    """Submit from another thread; fail if it has not returned well within a deadline."""

    def submit_all() -> None:
        for record in records:
            exporter.submit(RecordExchange(record))

    done = threading.Thread(target=submit_all)
    done.start()
    done.join(10)
    assert not done.is_alive(), "submit blocked"


def test_a_slow_receiver_costs_submit_nothing_but_counted_drops(
    receiver: OtlpReceiver, exporters: list[SpanExporter]
) -> None:
    told: list[int] = []
    exporter = SpanExporter(config(otlp=receiver.base_url, max_queue=4), on_drop=told.append)
    exporters.append(exporter)
    receiver.hold()
    exporter.submit(RecordExchange(exchange(exchange_id="first")))
    receiver.wait_for_arrivals(1)  # the exporter's thread now waits for an answer
    # The queue holds 4 records (of 2 spans): of 5 more, the last one's spans are dropped.
    _submit_in_thread(exporter, [exchange(exchange_id=f"r{n}") for n in range(5)])
    assert exporter.dropped == sum(told) == 2
    receiver.release()
    spans = receiver.wait_for_spans(2 + 4 * 2)
    assert {s.attributes["sansproxy.exchange_id"] for s in by_kind(spans, "SERVER")} == {
        "first",
        *(f"r{n}" for n in range(4)),
    }
    exporter.close()
    assert len(receiver.spans) == 10, "what was dropped stays dropped"


def test_a_full_batch_goes_at_once_and_close_delivers_the_rest(
    receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "600000")  # ten minutes
    exporter = SpanExporter(config(otlp=receiver.base_url))
    try:
        records = [exchange(exchange_id=f"r{n}") for n in range(_spans.BATCH + 3)]
        for record in records[: _spans.BATCH]:
            exporter.submit(RecordExchange(record))
        receiver.wait_for_spans(2 * _spans.BATCH)  # a batch is ready: sent at once
        for record in records[_spans.BATCH :]:
            exporter.submit(RecordExchange(record))
    finally:
        exporter.close()
    assert len(receiver.spans) == 2 * len(records), "close() delivered the queued records"
    assert exporter.dropped == 0


def test_an_sdk_without_the_exporters_http_client_gets_the_reference_spans(
    receiver: OtlpReceiver, exporters: list[SpanExporter]
) -> None:
    exporter = SpanExporter(config(otlp=receiver.base_url))
    exporters.append(exporter)
    (destination,) = exporter._destinations
    destination.client = None  # as an SDK version without OTLPSpanExporter._client
    record = exchange(tries=2)
    exporter.submit(RecordExchange(record))
    spans = receiver.wait_for_spans(3)
    assert {s.span_id for s in spans} == {record.span_id, *(a.span_id for a in record.attempts)}
    (server,) = by_kind(spans, "SERVER")
    assert server.attributes["sansproxy.exchange_id"] == "ex-1"


def test_a_receiver_that_is_down_costs_nothing_and_close_is_bounded(
    exporters: list[SpanExporter], caplog: pytest.LogCaptureFixture
) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    exporter = SpanExporter(config(otlp=url, langfuse=url, max_queue=4))
    exporters.append(exporter)
    _submit_in_thread(exporter, [exchange(exchange_id=f"r{n}") for n in range(10)])
    # The queue holds 4 records; the thread takes at most 4 (a batch is ready) and then
    # waits on its first destination's retries: at least 2 of the 10 records are
    # dropped at once, 2 spans for each destination; what the thread fails to deliver
    # is counted too (later), each span once at most.
    assert 2 * 2 * 2 <= exporter.dropped <= 10 * 2 * 2
    closing = threading.Thread(target=exporter.close)
    closing.start()
    closing.join(_spans.CLOSE_TIMEOUT + 5)
    assert not closing.is_alive(), "close() waited for a receiver that is down"
    assert LANGFUSE_SECRET not in caplog.text


def test_a_record_it_cannot_read_is_dropped_and_counted(
    receiver: OtlpReceiver, exporters: list[SpanExporter]
) -> None:
    exporter = SpanExporter(config(otlp=receiver.base_url))
    exporters.append(exporter)
    exporter.submit(RecordExchange(exchange(exchange_id="unreadable", span_id="not-hex")))
    exporter.submit(RecordExchange(exchange()))
    spans = receiver.wait_for_spans(2)  # the same batch: the readable record's spans
    assert [s.attributes["sansproxy.exchange_id"] for s in by_kind(spans, "SERVER")] == ["ex-1"]
    assert exporter.dropped == 1


def test_spans_a_collector_refuses_are_counted_and_said_without_its_url(
    receiver: OtlpReceiver, exporters: list[SpanExporter], caplog: pytest.LogCaptureFixture
) -> None:
    told: list[int] = []
    exporter = SpanExporter(
        config(otlp=receiver.base_url, headers={"authorization": "Bearer otlp-SECRET"}),
        on_drop=told.append,
    )
    exporters.append(exporter)
    receiver.status = 400  # refused: not retried
    with caplog.at_level(logging.WARNING):
        exporter.submit(RecordExchange(exchange(exchange_id="refused")))
        receiver.wait_for_arrivals(1)
        deadline = time.monotonic() + 10
        while exporter.dropped < 2:  # the export thread counts the refused batch
            assert time.monotonic() < deadline, "the refused spans were not counted"
            time.sleep(0.01)  # polling a condition, with a deadline
    assert exporter.dropped == sum(told) == 2  # the receiver refused them all
    said = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("the otlp span exporter could not deliver 2 spans") for m in said)
    assert receiver.base_url not in caplog.text and "otlp-SECRET" not in caplog.text
