"""The trace middleware through each adapter: one JSON line per exchange, in one
file per hour (UTC).

Records are written by a background thread, so a test either polls the files
(bounded) or stops the proxy first (records queued at shutdown must be written).
"""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e._helpers import (
    CHAT,
    chat_body,
    http_client,
    iter_events,
    stop,
    stream_chat,
)
from tests.support.mock_upstream import (
    DEFAULT_TEXT,
    SCENARIO_HEADER,
    MockUpstream,
    slow_stream_pieces,
)
from tests.support.proxy_process import StartProxy
from tests.support.traces import read_traces, trace_files, wait_for_trace, wait_for_traces

CLIENT_KEY = "sk-client-TRACE-SECRET-111"
UPSTREAM_KEY = "sk-upstream-TRACE-SECRET-222"
NAME = re.compile(r"^sansproxy-\d{8}T\d{2}\.jsonl$")  # one file per hour, UTC


def _by_id(directory: Path) -> dict[str, dict[str, Any]]:
    out = {}
    for record in read_traces(directory):
        assert record["id"] not in out, f"two records of {record['id']}"
        out[record["id"]] = record
    return out


def _check_timings(record: dict[str, Any], *, upstream: bool) -> None:
    timings = record["timings"]
    assert isinstance(timings["start"], str) and timings["start"][:2] == "20"
    assert isinstance(timings["end_ms"], (int, float)) and timings["end_ms"] >= 0
    first = timings["first_upstream_byte_ms"]
    if upstream:
        assert isinstance(first, (int, float)) and 0 <= first <= timings["end_ms"]
    else:
        assert first is None


def test_one_record_per_exchange(
    start_proxy: StartProxy, mock_upstream: MockUpstream, tmp_path: Path
) -> None:
    traces = tmp_path / "traces"
    proxy = start_proxy(
        "--base-url",
        mock_upstream.base_url,
        "--api-key",
        UPSTREAM_KEY,
        "--trace-dir",
        str(traces),
        config={"upstream": {"read_timeout": 0.5}},
    )
    auth = {"authorization": f"Bearer {CLIENT_KEY}", "x-api-key": CLIENT_KEY}
    with http_client(proxy) as client:
        plain = client.post(CHAT, json=chat_body(content="plain"), headers=auth)
        with client.stream(
            "POST", CHAT, json=chat_body(stream=True, content="streamed"), headers=auth
        ) as streamed:
            streamed.read()
        limited = client.post(
            CHAT, json=chat_body(), headers={**auth, SCENARIO_HEADER: "status-429"}
        )
        timed_out = client.post(
            CHAT, json=chat_body(), headers={**auth, SCENARIO_HEADER: "stall-head"}
        )
    responses = [plain, streamed, limited, timed_out]
    assert [r.status_code for r in responses] == [200, 200, 429, 504]
    assert len(wait_for_traces(traces, 4)) == 4
    records = _by_id(traces)
    # The record's id is the response's x-sansproxy-id.
    ids = [r.headers["x-sansproxy-id"] for r in responses]
    assert sorted(records) == sorted(ids)
    assert len(set(ids)) == 4

    record = records[plain.headers["x-sansproxy-id"]]
    assert record["id"] == plain.headers["x-sansproxy-id"]
    assert record["outcome"] == "completed"
    assert record["request"]["method"] == "POST"
    assert record["request"]["target"] == CHAT
    assert record["request"]["body"]["json"]["messages"][0]["content"] == "plain"
    assert record["upstream"] == mock_upstream.url(CHAT)
    assert record["response"]["status"] == 200
    assert record["response"]["body"]["json"]["choices"][0]["message"]["content"] == DEFAULT_TEXT
    assert ["x-sansproxy-id", plain.headers["x-sansproxy-id"]] in record["response"]["headers"]
    assert record["error"] is None
    _check_timings(record, upstream=True)

    record = records[streamed.headers["x-sansproxy-id"]]
    assert record["outcome"] == "completed"
    assert record["response"]["status"] == 200
    assert record["response"]["text"] == DEFAULT_TEXT
    events = record["response"]["events"]
    assert len(events) == 8  # role, five pieces, finish, [DONE]
    assert events[-1]["data"] == "[DONE]"
    _check_timings(record, upstream=True)

    record = records[limited.headers["x-sansproxy-id"]]
    assert record["response"]["status"] == 429
    assert record["response"]["body"]["json"]["error"]["message"] == "mock upstream error 429"

    record = records[timed_out.headers["x-sansproxy-id"]]
    assert record["outcome"] == "timeout"
    assert record["response"]["status"] == 504
    assert record["error"]["code"] == "upstream_timeout"

    # Secrets: redacted, never written.
    for record in records.values():
        headers = dict(record["request"]["headers"])
        assert headers["authorization"] == "[redacted]"
        assert headers["x-api-key"] == "[redacted]"
    # The layout: JSON lines in the hour's file, whole lines only.
    files = trace_files(traces)
    assert [f.name for f in files if not NAME.match(f.name)] == []
    for path in files:
        data = path.read_bytes()
        assert data.endswith(b"\n"), path.name
        assert CLIENT_KEY.encode() not in data, path.name
        assert UPSTREAM_KEY.encode() not in data, path.name
    assert sorted(p.name for p in traces.iterdir()) == [f.name for f in files]


def test_errors_and_local_answers_are_traced(
    start_proxy: StartProxy, mock_upstream: MockUpstream, tmp_path: Path
) -> None:
    traces = tmp_path / "traces"
    proxy = start_proxy(
        "--base-url",
        mock_upstream.base_url,
        "--trace-dir",
        str(traces),
        config={"limits": {"max_body_size": 100}},
    )
    with http_client(proxy) as client:
        reset = client.post(CHAT, json=chat_body(), headers={SCENARIO_HEADER: "reset-before-head"})
    with http_client(proxy) as client:
        too_big = client.post("/v1/x", content=b"a" * 101)
    assert (reset.status_code, too_big.status_code) == (502, 413)
    wait_for_traces(traces, 2)
    records = _by_id(traces)
    record = records[reset.headers["x-sansproxy-id"]]
    assert record["outcome"] == "upstream_error"
    assert record["error"]["code"] == "upstream_reset"
    assert record["response"]["status"] == 502
    record = records[too_big.headers["x-sansproxy-id"]]
    assert record["outcome"] == "rejected"
    assert record["error"]["status"] == 413
    _check_timings(record, upstream=False)


def test_trace_of_a_client_that_left(
    start_proxy: StartProxy, mock_upstream: MockUpstream, tmp_path: Path
) -> None:
    traces = tmp_path / "traces"
    proxy = start_proxy("--base-url", mock_upstream.base_url, "--trace-dir", str(traces))
    with stream_chat(proxy, "slow-stream:50:50") as (response, events):
        next(events)
        next(events)
        exchange = response.headers["x-sansproxy-id"]
    (record,) = wait_for_traces(traces, 1)
    assert record["id"] == exchange
    assert record["outcome"] == "client_gone"
    assert record["response"]["text"].startswith("tok0 ")


def test_unwritable_trace_dir_never_fails_a_request(
    start_proxy: StartProxy, mock_upstream: MockUpstream, tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    proxy = start_proxy(
        "--base-url", mock_upstream.base_url, "--trace-dir", str(blocker / "traces")
    )
    with http_client(proxy) as client:
        for _ in range(3):
            assert client.post(CHAT, json=chat_body()).status_code == 200
        with client.stream("POST", CHAT, json=chat_body(stream=True)) as streamed:
            assert streamed.status_code == 200
            assert DEFAULT_TEXT.split()[0] in streamed.read().decode()
    proxy.wait_for_log(r"(ERROR|WARNING).*trace", timeout=5)
    assert "Traceback" not in proxy.logs()


def test_trace_dir_from_yaml_middleware(
    start_proxy: StartProxy, mock_upstream: MockUpstream, tmp_path: Path
) -> None:
    traces = tmp_path / "yaml-traces"
    proxy = start_proxy(
        "--base-url",
        mock_upstream.base_url,
        config={"middleware": [{"trace": {"dir": str(traces)}}]},
    )
    with http_client(proxy) as client:
        response = client.get("/v1/models")
    (record,) = wait_for_traces(traces, 1)
    assert record["id"] == response.headers["x-sansproxy-id"]
    assert wait_for_trace(traces, response.headers["x-sansproxy-id"]) == record


@pytest.mark.parametrize("adapter", ["h11"])
def test_trace_dir_from_env(
    start_proxy: StartProxy, mock_upstream: MockUpstream, tmp_path: Path
) -> None:
    traces = tmp_path / "env-traces"
    proxy = start_proxy(
        "--base-url", mock_upstream.base_url, env={"SANSPROXY_TRACE_DIR": str(traces)}
    )
    with http_client(proxy) as client:
        client.get("/v1/models")
    assert len(wait_for_traces(traces, 1)) == 1


def test_records_in_flight_at_shutdown_are_written(
    start_proxy: StartProxy, mock_upstream: MockUpstream, tmp_path: Path
) -> None:
    traces = tmp_path / "traces"
    proxy = start_proxy(
        "--base-url",
        mock_upstream.base_url,
        "--trace-dir",
        str(traces),
        config={"server": {"shutdown_grace": 20}},
    )
    ids = []
    with http_client(proxy) as client:
        for i in range(20):
            response = client.post("/v1/echo", content=json.dumps({"n": i}).encode())
            ids.append(response.headers["x-sansproxy-id"])
    with (
        httpx.Client(base_url=proxy.base_url, trust_env=False, timeout=10) as client,
        client.stream(
            "POST",
            CHAT,
            json=chat_body(stream=True),
            headers={SCENARIO_HEADER: "slow-stream:6:100"},
        ) as response,
    ):
        events = iter_events(response)
        next(events)
        proxy.terminate()  # mid-stream: the stream finishes, then its record is written
        ids.append(response.headers["x-sansproxy-id"])
        rest = list(events)
    assert "".join(
        e.json()["choices"][0]["delta"].get("content") or "" for e in rest if e.data != "[DONE]"
    ) == "".join(slow_stream_pieces(6))
    # h11/trio exit 0 (test_h11_server); uvicorn re-raises the SIGTERM it caught.
    assert proxy.wait(20) in (0, -signal.SIGTERM)
    # No polling: the process has exited, so everything must be on disk already.
    records = _by_id(traces)
    assert sorted(records) == sorted(ids)
    last = records[ids[-1]]
    assert last["outcome"] == "completed"
    assert last["response"]["text"] == "".join(slow_stream_pieces(6))


def test_stop_right_after_requests_loses_no_record(
    start_proxy: StartProxy, mock_upstream: MockUpstream, tmp_path: Path
) -> None:
    traces = tmp_path / "traces"
    proxy = start_proxy("--base-url", mock_upstream.base_url, "--trace-dir", str(traces))
    with http_client(proxy) as client:
        ids = [
            client.post("/v1/echo", content=b"x" * 200_000).headers["x-sansproxy-id"]
            for _ in range(30)
        ]
    assert stop(proxy) in (0, -signal.SIGTERM)
    assert sorted(_by_id(traces)) == sorted(ids)


@pytest.mark.parametrize("adapter", ["h11"])
def test_retention_keeps_the_directory_within_its_limits(
    start_proxy: StartProxy, mock_upstream: MockUpstream, tmp_path: Path
) -> None:
    """An old file goes (max_age, 7 days by default); under max_bytes the hour's file
    continues in parts and the oldest go; files not named as traces stay."""
    traces = tmp_path / "traces"
    traces.mkdir()
    (traces / "sansproxy-20000101T00.jsonl").write_text('{"id":"ancient"}\n')
    (traces / "notes.txt").write_text("mine")
    proxy = start_proxy(
        "--base-url",
        mock_upstream.base_url,
        config={"middleware": [{"trace": {"dir": str(traces), "max_bytes": 20_000}}]},
    )
    with http_client(proxy) as client:
        ids = [
            client.post("/v1/echo", content=b"x" * 1000).headers["x-sansproxy-id"]
            for _ in range(60)
        ]
    assert stop(proxy) in (0, -signal.SIGTERM)
    files = trace_files(traces)
    names = sorted(p.name for p in traces.iterdir())
    assert names == sorted(["notes.txt", *(f.name for f in files)])
    assert all(re.match(r"^sansproxy-\d{8}T\d{2}(\.\d+)?\.jsonl$", f.name) for f in files)
    assert not any(f.name.startswith("sansproxy-2000") for f in files)
    assert len(files) > 2, "the hour's file continued in parts"
    assert sum(f.stat().st_size for f in files[:-1]) <= 20_000  # the file being written aside
    kept = [record["id"] for record in read_traces(traces)]
    assert 0 < len(kept) < len(ids)
    assert kept == ids[-len(kept) :], "the oldest records went first"
