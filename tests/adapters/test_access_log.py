"""Structured logs: the JSON line format, and the access log (one line per exchange).

The access log is fed hand-built ``ExchangeRecord``s; the process's logging
set-up (``configure_logging``) is tested in a child process, whose stderr is
what a user's log collector would read.
"""

from __future__ import annotations

import datetime
import json
import logging
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from adapters._access_log import MAX_VALUE, AccessLog, access_fields, access_line
from adapters._log_format import TEXT_FORMAT, JsonFormatter, fields_extra, logging_config
from core import ExchangeRecord, ProxyConfig, RecordExchange
from core.gateway import Usage
from tests.support.proxy_process import REPO_ROOT

CLIENT_KEY = "sk-client-SECRET-4242"
PROVIDER_KEY = "sk-provider-SECRET-9999"
WAIT = 5.0

JSON = ProxyConfig.model_validate({"log_format": "json"})
TEXT = ProxyConfig()


def record(**changes: Any) -> ExchangeRecord:
    """A completed, streamed chat through provider ``oai``; ``changes`` on top."""
    base = ExchangeRecord(
        exchange_id="3fa2b1c4000001",
        trace_id="0af7651916cd43dd8448eb211c80319c",
        span_id="b7ad6b7169203331",
        parent_span_id=None,
        sampled=True,
        method="POST",
        path="/v1/chat/completions",
        client_api="openai",
        operation="chat",
        model="fast",
        model_configured=True,
        stream=True,
        max_tokens=64,
        temperature=None,
        top_p=None,
        user=None,
        session_id=None,
        key_name="team-a",
        provider="oai",
        provider_type="openai",
        upstream_model="gpt-upstream",
        attempts=(),
        retries=1,
        fallbacks=0,
        status=200,
        outcome="completed",
        error_type=None,
        error_code=None,
        error_message=None,
        refusal=None,
        usage=Usage(input_tokens=12, output_tokens=40),
        usage_estimated=False,
        cost_usd=0.00013,
        response_id="chatcmpl-1",
        response_model="gpt-upstream",
        finish_reasons=("stop",),
        started=1_738_332_000.0,
        duration=0.0123,
        upstream_duration=0.0101,
        time_to_first_byte=0.003,
        time_to_first_token=0.0042,
    )
    return base._replace(**changes)


def wait_until(condition: Callable[[], bool], timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the condition did not hold in time"
        time.sleep(0.001)


@pytest.fixture
def captured(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    with caplog.at_level(logging.INFO, logger="sansproxy"):
        yield caplog


def access_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "sansproxy.access"]


def make_record(
    message: str = "hello %s",
    args: tuple[object, ...] = ("world",),
    *,
    level: int = logging.WARNING,
    extra: dict[str, Any] | None = None,
    exc_info: Any = None,
) -> logging.LogRecord:
    logger = logging.getLogger("sansproxy")
    return logger.makeRecord("sansproxy", level, __file__, 1, message, args, exc_info, extra=extra)


# --- the JSON line --------------------------------------------------------------------------


def test_a_json_line_has_time_level_logger_and_message() -> None:
    rec = make_record()
    rec.created = 1_738_332_000.25
    line = JsonFormatter().format(rec)
    assert "\n" not in line
    assert json.loads(line) == {
        "ts": "2025-01-31T14:00:00.250000Z",
        "level": "WARNING",
        "logger": "sansproxy",
        "message": "hello world",
    }
    parsed = datetime.datetime.fromisoformat(json.loads(line)["ts"])
    assert parsed.utcoffset() == datetime.timedelta(0)


def test_fields_become_keys_and_the_text_line_stays_as_it_was() -> None:
    fields = {"exchange": "3fa2b1c4000001", "status": 502, "code": "upstream_connect"}
    extra = fields_extra("upstream refused", fields)
    rec = make_record("%s [%s]", ("upstream refused", "exchange=3fa2b1c4000001"), extra=extra)
    assert json.loads(JsonFormatter().format(rec)) == {
        "ts": json.loads(JsonFormatter().format(rec))["ts"],
        "level": "WARNING",
        "logger": "sansproxy",
        "message": "upstream refused",
        "exchange": "3fa2b1c4000001",
        "status": 502,
        "code": "upstream_connect",
    }
    plain = make_record("%s [%s]", ("upstream refused", "exchange=3fa2b1c4000001"))
    text = logging.Formatter("%(levelname)s %(name)s: %(message)s")
    assert (
        text.format(rec)
        == text.format(plain)
        == ("WARNING sansproxy: upstream refused [exchange=3fa2b1c4000001]")
    )


def test_a_field_never_overwrites_the_line_s_own_keys() -> None:
    extra = fields_extra("m", {"level": "x", "message": "forged", "ts": 0, "logger": "y", "n": 1})
    line = json.loads(JsonFormatter().format(make_record(extra=extra)))
    assert (line["level"], line["message"], line["logger"], line["n"]) == (
        "WARNING",
        "m",
        "sansproxy",
        1,
    )
    assert line["ts"] != 0


def test_a_traceback_field_and_exc_info_become_exception() -> None:
    extra = fields_extra(
        "internal error", {"exchange": "e1", "traceback": "Traceback ...\nKeyError: 'x'\n"}
    )
    line = json.loads(JsonFormatter().format(make_record(extra=extra)))
    assert line["exception"] == "Traceback ...\nKeyError: 'x'\n"
    assert "traceback" not in line and line["exchange"] == "e1"
    try:
        raise ValueError("boom")
    except ValueError:
        rec = make_record("failed", (), exc_info=sys.exc_info())
    text = JsonFormatter().format(rec)
    assert "\n" not in text
    exception = json.loads(text)["exception"]
    assert exception.startswith("Traceback") and exception.endswith("ValueError: boom")


def test_what_json_cannot_hold_is_written_as_text() -> None:
    odd = {"big": 1 << 70, "set": {1}, "obj": object(), "newline": "a\nb", "bytes": b"x"}
    line = json.loads(JsonFormatter().format(make_record(extra=fields_extra("m", odd))))
    assert line["big"] == 1 << 70 and line["newline"] == "a\nb"
    assert line["set"] == "{1}" and line["obj"].startswith("<object") and line["bytes"] == "b'x'"
    assert line["ts"].endswith("Z")


def test_a_stack_and_a_cycle_stay_on_one_line() -> None:
    rec = logging.getLogger("sansproxy").makeRecord(
        "sansproxy", logging.INFO, __file__, 1, "where", (), None, sinfo="Stack (most recent)..."
    )
    assert json.loads(JsonFormatter().format(rec))["stack"] == "Stack (most recent)..."
    loop: list[Any] = []
    loop.append(loop)
    extra = fields_extra("cyclic", {"exchange": "e1", "loop": loop})
    text = JsonFormatter().format(make_record(extra=extra))
    line = json.loads(text)
    assert "\n" not in text and line["message"] == "cyclic" and line["ts"].endswith("Z")


# --- the access line ------------------------------------------------------------------------


def test_the_text_access_line() -> None:
    head, line = access_line(access_fields(record()))
    assert head == "POST /v1/chat/completions 200 completed 12.3ms"
    assert line == (
        "POST /v1/chat/completions 200 completed 12.3ms exchange=3fa2b1c4000001 model=fast "
        "provider=oai upstream_ms=10.1 ttft_ms=4.2 tokens_in=12 tokens_out=40 "
        "cost_usd=0.00013 key_name=team-a retries=1"
    )


def unanswered(**changes: Any) -> ExchangeRecord:
    """A record of a client gone before any answer (no usage, cost, key, upstream)."""
    return record(
        status=None,
        outcome="client_gone",
        provider=None,
        usage=None,
        cost_usd=None,
        key_name=None,
        upstream_duration=None,
        time_to_first_token=None,
        error_code="client_gone",
        **changes,
    )


def test_an_access_line_without_an_answer_leaves_out_what_it_lacks() -> None:
    rec = unanswered(retries=0)
    head, line = access_line(access_fields(rec))
    assert line == (
        "POST /v1/chat/completions - client_gone 12.3ms exchange=3fa2b1c4000001 model=fast "
        "retries=0 error=client_gone"
    )


def test_a_client_s_model_name_cannot_break_the_line() -> None:
    forged = "x\n2025-01-01 INFO sansproxy.access: GET / 200 completed key=admin " + "y" * 1000
    _, line = access_line(access_fields(record(model=forged, model_configured=False)))
    assert "\n" not in line
    model = line.split(" model=", 1)[1]  # a JSON string, then the next field
    value = json.loads(model[: model.index('" ') + 1])
    assert len(value) == MAX_VALUE and value.endswith("…") and value.startswith("x\n2025")


# --- the sink -------------------------------------------------------------------------------


def test_one_info_line_per_record_off_the_caller_s_thread(
    captured: pytest.LogCaptureFixture,
) -> None:
    log = AccessLog(TEXT)
    log.submit(RecordExchange(record()))
    log.submit(RecordExchange(record(exchange_id="3fa2b1c4000002", status=429, outcome="rejected")))
    log.close()
    lines = access_records(captured)
    assert [r.levelname for r in lines] == ["INFO", "INFO"]
    assert lines[0].getMessage() == access_line(access_fields(record()))[1]
    assert lines[1].getMessage().startswith("POST /v1/chat/completions 429 rejected 12.3ms ")
    assert {r.threadName for r in lines} == {"sansproxy-access-log"}
    assert (log.written, log.dropped, log.failed) == (2, 0, 0)


def test_a_line_after_a_quiet_spell_at_once_then_a_batch_or_a_while_s_together(
    captured: pytest.LogCaptureFixture,
) -> None:
    log = AccessLog(TEXT, batch=3, gather=60.0)
    log.submit(RecordExchange(record()))
    wait_until(lambda: len(access_records(captured)) == 1)  # not after `gather`
    for n in range(2, 5):  # gathered: written when the batch is full, not in a minute
        log.submit(RecordExchange(record(exchange_id=f"e{n}")))
    wait_until(lambda: len(access_records(captured)) == 4)
    log.submit(RecordExchange(record(exchange_id="e5")))
    log.close()  # what gathers is written at close
    ids = [r.getMessage().split("exchange=")[1].split()[0] for r in access_records(captured)]
    assert ids == ["3fa2b1c4000001", "e2", "e3", "e4", "e5"]
    assert (log.written, log.dropped) == (5, 0)


def test_in_json_the_fields_are_keys(captured: pytest.LogCaptureFixture) -> None:
    log = AccessLog(JSON)
    log.submit(RecordExchange(record()))
    log.close()
    (rec,) = access_records(captured)
    assert rec.getMessage() == "POST /v1/chat/completions 200 completed 12.3ms"
    line = json.loads(JsonFormatter().format(rec))
    del line["ts"]
    assert line == {
        "level": "INFO",
        "logger": "sansproxy.access",
        "message": "POST /v1/chat/completions 200 completed 12.3ms",
        "exchange": "3fa2b1c4000001",
        "method": "POST",
        "path": "/v1/chat/completions",
        "status": 200,
        "outcome": "completed",
        "duration_ms": 12.3,
        "model": "fast",
        "provider": "oai",
        "upstream_ms": 10.1,
        "ttft_ms": 4.2,
        "tokens_in": 12,
        "tokens_out": 40,
        "cost_usd": 0.00013,
        "key_name": "team-a",
        "retries": 1,
        "error": None,
    }


def test_no_secret_reaches_an_access_line(captured: pytest.LogCaptureFixture) -> None:
    # Whatever a record's free text holds, the access line carries none of it.
    log = AccessLog(JSON)
    log.submit(
        RecordExchange(
            record(
                error_message=f"upstream said: bad key {PROVIDER_KEY}",
                user=CLIENT_KEY,
                session_id=CLIENT_KEY,
                input_messages=[{"role": "user", "content": CLIENT_KEY}],
                output_messages=[{"role": "assistant", "content": PROVIDER_KEY}],
            )
        )
    )
    log.close()
    (rec,) = access_records(captured)
    for text in (rec.getMessage(), JsonFormatter().format(rec)):
        assert CLIENT_KEY not in text and PROVIDER_KEY not in text


class _Gate(logging.Handler):
    """Holds each access line until let through: a stderr nobody reads."""

    def __init__(self) -> None:
        super().__init__()
        self.permits = threading.Semaphore(0)
        self.entered = 0
        self.cond = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == "sansproxy.access":
            with self.cond:
                self.entered += 1
                self.cond.notify_all()
            self.permits.acquire(timeout=WAIT)

    def wait_entered(self, n: int) -> None:
        """Wait until the writer is stuck on its ``n``-th line."""
        with self.cond:
            assert self.cond.wait_for(lambda: self.entered >= n, WAIT)


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def gate() -> Iterator[_Gate]:
    gate = _Gate()
    access = logging.getLogger("sansproxy.access")
    access.addHandler(gate)
    yield gate
    access.removeHandler(gate)
    for _ in range(100):
        gate.permits.release()


def test_a_stalled_stderr_costs_counted_drops_never_a_blocked_caller(
    captured: pytest.LogCaptureFixture, gate: _Gate
) -> None:
    clock = _Clock()
    log = AccessLog(TEXT, max_queue=3, report_every=5.0, clock=clock)
    log.submit(RecordExchange(record(exchange_id="first")))
    gate.wait_entered(1)  # the thread is stuck writing "first"
    for n in range(50):
        log.submit(RecordExchange(record(exchange_id=f"e{n}")))
    # Every submit returned while the writer was still stuck on its first line.
    assert (log.written, log.dropped) == (0, 47)
    clock.now = 103.0
    for _ in range(4):
        gate.permits.release()
    log.close()
    ids = [r.getMessage().split("exchange=")[1].split()[0] for r in access_records(captured)]
    assert ids == ["first", "e0", "e1", "e2"]
    warnings = [r.getMessage() for r in captured.records if r.levelno == logging.WARNING]
    assert warnings == ["47 access log lines dropped in the last 3 s (queue full)"]
    assert {r.name for r in captured.records if r.levelno == logging.WARNING} == {"sansproxy"}


def test_drops_are_reported_at_most_once_per_interval(
    captured: pytest.LogCaptureFixture, gate: _Gate
) -> None:
    clock = _Clock()
    log = AccessLog(TEXT, max_queue=1, report_every=5.0, clock=clock)
    log.submit(RecordExchange(record(exchange_id="a")))
    gate.wait_entered(1)
    log.submit(RecordExchange(record(exchange_id="b")))  # queued
    for _ in range(3):
        log.submit(RecordExchange(record()))  # dropped
    gate.permits.release()  # "a" written; the 3 drops reported; stuck on "b"
    gate.wait_entered(2)
    log.submit(RecordExchange(record(exchange_id="c")))  # queued
    for _ in range(2):
        log.submit(RecordExchange(record()))  # dropped, less than 5 s after the report
    gate.permits.release()  # "b" written; too soon to report; stuck on "c"
    gate.wait_entered(3)
    clock.now = 106.0
    gate.permits.release()  # "c" written; 6 s since: the 2 drops reported
    log.close()
    warnings = [r.getMessage() for r in captured.records if r.levelno == logging.WARNING]
    assert warnings == [
        "3 access log lines dropped in the last 1 s (queue full)",
        "2 access log lines dropped in the last 5 s (queue full)",
    ]
    assert (log.written, log.dropped) == (3, 5)


def test_no_thread_to_be_had_is_a_counted_drop_not_an_error(
    captured: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    log = AccessLog(TEXT)
    with monkeypatch.context() as patched:
        patched.setattr(threading.Thread, "start", refuse)
        log.submit(RecordExchange(record()))
    assert log.dropped == 1 and not log._pending
    log.submit(
        RecordExchange(record(exchange_id="later"))
    )  # threads are back: the next one starts it
    log.close()
    (line,) = access_records(captured)
    assert "exchange=later" in line.getMessage() and log.dropped == 1


def test_after_close_a_record_is_a_counted_drop(captured: pytest.LogCaptureFixture) -> None:
    log = AccessLog(TEXT)
    log.close()
    log.submit(RecordExchange(record()))
    log.close()  # twice is fine
    assert access_records(captured) == [] and log.dropped == 1


def test_below_info_there_are_no_access_lines(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="sansproxy"):
        log = AccessLog(TEXT)
        log.submit(RecordExchange(record()))
        log.close()
    assert access_records(caplog) == [] and (log.written, log.dropped) == (0, 0)


def test_a_record_no_line_can_be_made_of_is_logged_and_skipped(
    captured: pytest.LogCaptureFixture,
) -> None:
    log = AccessLog(TEXT)
    log.submit(RecordExchange(record(exchange_id="bad", duration=None)))
    log.submit(RecordExchange(record(exchange_id="good")))
    log.close()
    (line,) = access_records(captured)
    assert "exchange=good" in line.getMessage()
    errors = [r.getMessage() for r in captured.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and errors[0].startswith(
        "access log: could not write the line of exchange bad: TypeError"
    )
    assert (log.written, log.failed) == (1, 1)


# --- the process's set-up -------------------------------------------------------------------

_CHILD = """
import logging, sys, threading, warnings
from adapters._access_log import AccessLog
from adapters._cli import load, build_parser
from core import RecordExchange
from tests.adapters.test_access_log import record
loaded = load(build_parser("t", "t").parse_args(sys.argv[1:]), {})
from adapters._cli import setup_logging
setup_logging(loaded.config)
logging.getLogger("sansproxy.startup").info("listening")
logging.getLogger("sansproxy").debug("hidden at info")
logging.getLogger("uvicorn.error").info("Started server process [1]")
logging.getLogger("uvicorn.access").info('127.0.0.1 - "GET / HTTP/1.1" 200')
logging.getLogger("some.library").warning("multi\\nline")
access = AccessLog(loaded.config)
access.submit(RecordExchange(record()))
access.close()
warnings.warn("deprecated thing")
class Bad:
    def __del__(self):
        raise ValueError("in __del__")
Bad()
thread = threading.Thread(target=lambda: 1 / 0, name="worker")
thread.start()
thread.join()
raise RuntimeError("the end")
"""


def run_child(*argv: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, *argv],
        check=False,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stderr
    assert done.stdout == ""
    return done.stderr.splitlines()


def test_with_log_format_json_every_line_the_process_writes_is_json() -> None:
    lines = [json.loads(line) for line in run_child("--log-format", "json")]
    assert all(isinstance(line, dict) for line in lines)
    said = [(line["logger"], line["level"], line["message"]) for line in lines]
    assert said[:4] == [
        ("sansproxy.startup", "INFO", "listening"),
        ("uvicorn.error", "INFO", "Started server process [1]"),
        ("some.library", "WARNING", "multi\nline"),
        ("sansproxy.access", "INFO", "POST /v1/chat/completions 200 completed 12.3ms"),
    ]
    assert lines[3]["exchange"] == "3fa2b1c4000001" and lines[3]["tokens_out"] == 40
    assert said[4][:2] == ("py.warnings", "WARNING") and "deprecated thing" in said[4][2]
    assert said[5][:2] == ("sansproxy", "ERROR") and said[5][2].startswith(
        "Exception ignored in: <function Bad.__del__"
    )
    assert lines[5]["exception"].endswith("ValueError: in __del__")
    assert said[6][:2] == ("sansproxy", "ERROR") and "thread worker" in said[6][2]
    assert lines[6]["exception"].endswith("ZeroDivisionError: division by zero")
    assert said[7] == ("sansproxy", "CRITICAL", "uncaught exception: RuntimeError: the end")
    assert lines[7]["exception"].endswith("RuntimeError: the end")
    assert len(lines) == 8  # uvicorn's own access line is silenced


def test_text_lines_are_as_they_were() -> None:
    lines = run_child("--log-level", "debug")
    stamp = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")
    assert TEXT_FORMAT == "%(asctime)s %(levelname)s %(name)s: %(message)s"
    said = [stamp.sub("", line, count=1) for line in lines]
    assert said[:6] == [
        "INFO sansproxy.startup: listening",
        "DEBUG sansproxy: hidden at info",
        "INFO uvicorn.error: Started server process [1]",
        "WARNING some.library: multi",
        "line",
        "INFO sansproxy.access: " + access_line(access_fields(record()))[1],
    ]
    assert all(stamp.match(line) for i, line in enumerate(lines[:6]) if i != 4)
    assert lines[-1] == "RuntimeError: the end"  # Python's own hook, unchanged in text


def varied() -> list[ExchangeRecord]:
    """Records whose lines differ in every way a line can."""
    forged = 'm\u00e9 "q"\n' + "y" * 300
    return [
        record(),
        record(exchange_id="e2", stream=False, time_to_first_token=None, cost_usd=1.5),
        record(exchange_id="e3", model=forged, model_configured=False, key_name="a b"),
        unanswered(exchange_id="e4"),
        record(exchange_id="e5", path="/v1/x y", method="GET", duration=61.0, cost_usd=2e-9),
    ]


_BOTH_WAYS = """
import io, json, logging, sys
from adapters._access_log import AccessLog
from adapters._cli import load, build_parser, setup_logging
from core import RecordExchange
from tests.adapters.test_access_log import varied
out = sys.stderr = io.StringIO()
loaded = load(build_parser("t", "t").parse_args(sys.argv[1:]), {})
setup_logging(loaded.config)
handled = []
handle = logging.Logger.handle
def counted(self, record):
    handled.append(record.name)
    handle(self, record)
logging.Logger.handle = counted
def lines():
    access = AccessLog(loaded.config)
    for record in varied():
        access.submit(RecordExchange(record))
    access.close()
    text = out.getvalue()
    out.seek(0)
    out.truncate()
    return [text, handled.count("sansproxy.access")]
straight = lines()
logging.getLogger().handlers[0].addFilter(lambda record: True)  # no longer as set up
print(json.dumps([straight, lines()]))
"""


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_the_lines_written_straight_are_the_lines_logging_writes(log_format: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _BOTH_WAYS, "--log-format", log_format],
        check=True,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    (straight, records), (through, handled) = json.loads(done.stdout)
    # As set up, no LogRecord was made; with a filter added, one a line.
    assert (records, handled) == (0, 5)
    if log_format == "json":
        ours = [json.loads(line) for line in straight.splitlines()]
        theirs = [json.loads(line) for line in through.splitlines()]
        stamps = [line.pop("ts") for line in ours + theirs]
        assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", t) for t in stamps)
    else:
        stamp = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")
        assert all(stamp.match(line) for line in (straight + through).splitlines())
        ours = [stamp.sub("", line, count=1) for line in straight.splitlines()]
        theirs = [stamp.sub("", line, count=1) for line in through.splitlines()]
    assert len(ours) == 5 and ours == theirs


def test_the_uvicorn_logging_config_is_the_same_set_up() -> None:
    config = logging_config(
        ProxyConfig.model_validate({"log_format": "json", "log_level": "warning"})
    )
    assert config["disable_existing_loggers"] is False
    assert config["formatters"]["sansproxy"] == {"()": "adapters._log_format.JsonFormatter"}
    assert config["root"] == {"level": "WARNING", "handlers": ["stderr"]}
    assert config["loggers"]["sansproxy.startup"] == {"level": "INFO"}
    assert config["loggers"]["uvicorn.access"]["propagate"] is False
