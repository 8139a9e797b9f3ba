"""The trace writer: JSON lines in one file per period, whole lines, batched appends;
never blocks, never loses a queued record, counts and summarises drops; retention."""

from __future__ import annotations

import calendar
import logging
import pathlib
import threading
import time
from typing import Any

import pytest

from adapters import _trace_writer
from adapters._trace_writer import TraceWriter
from core import WriteTrace
from tests.support.traces import read_traces, trace_files

# 2025-01-31 14:30 UTC
NOW = float(calendar.timegm((2025, 1, 31, 14, 30, 0, 0, 0, 0)))
HOUR = 3600.0
DAY = 86400.0


class Clock:
    """A clock that moves only when told (both the monotonic and the wall one)."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def record(directory: pathlib.Path | str, n: int, **options: Any) -> WriteTrace:
    return WriteTrace(directory=str(directory), record={"n": n, "s": "é\n"}, **options)


class Blocker:
    """A record value whose serialisation waits until released: it holds the writer's
    thread in the middle of a batch, so a test knows what is queued."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def __str__(self) -> str:
        self.entered.set()
        assert self.release.wait(10)
        return "blocker"


def blocking(directory: pathlib.Path, n: int) -> tuple[WriteTrace, Blocker]:
    blocker = Blocker()
    return WriteTrace(directory=str(directory), record={"n": n, "b": blocker}), blocker


def names(directory: pathlib.Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_records_queued_before_close_are_all_written_as_json_lines(
    tmp_path: pathlib.Path,
) -> None:
    writer = TraceWriter(wall=Clock(NOW))
    for n in range(200):
        writer.submit(record(tmp_path / "traces", n))
    writer.close()
    # One file for the hour (UTC), one record a line, in the order submitted.
    assert names(tmp_path / "traces") == ["sansproxy-20250131T14.jsonl"]
    data = (tmp_path / "traces" / "sansproxy-20250131T14.jsonl").read_bytes()
    assert data.count(b"\n") == 200 and data.endswith(b"\n")
    assert read_traces(tmp_path / "traces") == [{"n": n, "s": "é\n"} for n in range(200)]
    stats = writer.statistics()
    assert (stats.written, stats.failed, stats.dropped, stats.queued) == (200, 0, 0, 0)


def test_a_batch_is_appended_with_one_write_of_whole_lines(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes: list[bytes] = []
    write_all = TraceWriter._write_all

    def recording(directory: Any, fd: int, data: bytes) -> None:
        writes.append(data)
        write_all(directory, fd, data)

    monkeypatch.setattr(TraceWriter, "_write_all", staticmethod(recording))
    writer = TraceWriter(wall=Clock(NOW))
    first, blocker = blocking(tmp_path, 0)
    writer.submit(first)
    assert blocker.entered.wait(10)  # the thread holds the first batch
    for n in range(1, 1001):
        writer.submit(record(tmp_path, n))
    blocker.release.set()
    writer.close()
    assert len(writes) == 2  # the first record's batch, then the 1000 queued meanwhile
    assert all(data.endswith(b"\n") for data in writes)
    assert [r["n"] for r in read_traces(tmp_path)] == list(range(1001))


def test_records_go_to_the_file_of_the_period_they_are_written_in(
    tmp_path: pathlib.Path,
) -> None:
    wall = Clock(NOW)
    writer = TraceWriter(wall=wall)
    writer.submit(record(tmp_path / "h", 1))
    writer.submit(record(tmp_path / "d", 1, rotate="day"))
    assert writer.flush()
    wall.now += HOUR
    writer.submit(record(tmp_path / "h", 2))
    writer.submit(record(tmp_path / "d", 2, rotate="day"))
    assert writer.flush()
    wall.now += DAY
    writer.submit(record(tmp_path / "d", 3, rotate="day"))
    writer.close()
    assert names(tmp_path / "h") == ["sansproxy-20250131T14.jsonl", "sansproxy-20250131T15.jsonl"]
    assert names(tmp_path / "d") == ["sansproxy-20250131.jsonl", "sansproxy-20250201.jsonl"]
    assert [r["n"] for r in read_traces(tmp_path / "d")] == [1, 2, 3]


def test_a_new_writer_appends_to_the_hours_file(tmp_path: pathlib.Path) -> None:
    for n in range(3):
        writer = TraceWriter(wall=Clock(NOW))
        writer.submit(record(tmp_path, n))
        writer.close()
    assert names(tmp_path) == ["sansproxy-20250131T14.jsonl"]
    assert [r["n"] for r in read_traces(tmp_path)] == [0, 1, 2]


def test_an_unwritable_directory_is_logged_and_counted(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    writer = TraceWriter()
    with caplog.at_level(logging.ERROR, logger="sansproxy.trace"):
        writer.submit(record(blocker / "traces", 1))
        writer.submit(record(tmp_path / "ok", 2))
        writer.close()
    assert writer.statistics().failed == 1
    assert writer.statistics().written == 1
    assert "could not write trace" in caplog.text
    assert read_traces(tmp_path / "ok") == [{"n": 2, "s": "é\n"}]


def test_a_record_that_is_not_json_is_counted_and_the_others_written(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    loop: dict[str, Any] = {}
    loop["self"] = loop
    writer = TraceWriter()
    with caplog.at_level(logging.ERROR, logger="sansproxy.trace"):
        writer.submit(record(tmp_path, 1))
        writer.submit(WriteTrace(directory=str(tmp_path), record=loop))
        writer.submit(record(tmp_path, 2))
        writer.close()
    assert [r["n"] for r in read_traces(tmp_path)] == [1, 2]
    assert (writer.statistics().written, writer.statistics().failed) == (2, 1)
    assert "could not serialise a trace record" in caplog.text


def test_a_full_queue_drops_and_counts_and_says_so_once_per_interval(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock(0.0)
    writer = TraceWriter(max_queue=5, clock=clock, wall=Clock(NOW))
    with caplog.at_level(logging.WARNING, logger="sansproxy.trace"):
        first, held = blocking(tmp_path, 0)
        writer.submit(first)
        assert held.entered.wait(10)  # the thread holds the first record; the queue is empty
        second, held_again = blocking(tmp_path, 1)
        for command in [second, *(record(tmp_path, n) for n in range(2, 6))]:
            writer.submit(command)  # the queue is full
        for n in range(100):
            writer.submit(record(tmp_path, 100 + n))  # never blocks: dropped
        held.release.set()  # the thread reports the drops, then holds the second batch
        assert held_again.entered.wait(10)
        clock.now = 5.0
        for n in range(5):
            writer.submit(record(tmp_path, 200 + n))
        for n in range(50):
            writer.submit(record(tmp_path, 300 + n))  # within 10 s of the report: counted
        held_again.release.set()
        writer.close()  # the rest is reported at the latest when closing
    stats = writer.statistics()
    assert (stats.written, stats.dropped, stats.failed) == (11, 150, 0)
    assert [r.getMessage() for r in caplog.records] == [
        "100 trace records dropped in the last 1 s (queue full)",
        "50 trace records dropped in the last 1 s (queue full)",
    ]
    assert [r.levelname for r in caplog.records] == ["WARNING", "WARNING"]


def test_submit_after_close_is_counted_not_written(tmp_path: pathlib.Path) -> None:
    writer = TraceWriter()
    writer.close()
    writer.submit(record(tmp_path, 1))
    assert writer.statistics().dropped == 1
    assert list(tmp_path.iterdir()) == []


def make(directory: pathlib.Path, name: str, size: int) -> None:
    (directory / name).write_bytes(b"{}\n" * (size // 3))


def test_files_older_than_max_age_are_deleted_and_nothing_else(tmp_path: pathlib.Path) -> None:
    make(tmp_path, "sansproxy-20250130T12.1.jsonl", 30)  # ended 25.5 h ago
    make(tmp_path, "sansproxy-20250130T13.jsonl", 30)  # ended 24.5 h ago
    make(tmp_path, "sansproxy-20250130T14.jsonl", 30)  # ended 23.5 h ago: kept
    make(tmp_path, "sansproxy-20250129.jsonl", 30)  # a day file, two days old
    make(tmp_path, "20250101T000000.000000Z_abc.json", 30)  # not ours (an old layout)
    make(tmp_path, "notes.txt", 30)
    writer = TraceWriter(wall=Clock(NOW))
    writer.submit(record(tmp_path, 1, max_age=DAY))
    writer.close()
    assert names(tmp_path) == [
        "20250101T000000.000000Z_abc.json",
        "notes.txt",
        "sansproxy-20250130T14.jsonl",
        "sansproxy-20250131T14.jsonl",
    ]
    assert writer.statistics().deleted == 3


def test_retention_runs_again_as_time_passes(tmp_path: pathlib.Path) -> None:
    clock, wall = Clock(0.0), Clock(NOW)  # 14:30
    writer = TraceWriter(clock=clock, wall=wall)
    writer.submit(record(tmp_path, 1, max_age=600))
    assert writer.flush()
    wall.now += 35 * 60  # 15:05
    writer.submit(record(tmp_path, 2, max_age=600))
    assert writer.flush()
    assert len(trace_files(tmp_path)) == 2  # the 14 h file ended 5 min ago
    wall.now += 10 * 60  # 15:15
    clock.now += 60.0
    writer.submit(record(tmp_path, 3, max_age=600))  # still the 15 h file
    writer.close()
    assert names(tmp_path) == ["sansproxy-20250131T15.jsonl"]
    assert [r["n"] for r in read_traces(tmp_path)] == [2, 3]


def test_beyond_max_bytes_the_oldest_files_go_first(tmp_path: pathlib.Path) -> None:
    for hour in (10, 11, 12, 13):
        make(tmp_path, f"sansproxy-20250131T{hour}.jsonl", 3000)
    make(tmp_path, "sansproxy-20250131T12.1.jsonl", 3000)
    make(tmp_path, "other.log", 100_000)  # not counted, not touched
    writer = TraceWriter(wall=Clock(NOW))
    writer.submit(record(tmp_path, 1, max_bytes=7000))
    writer.close()
    assert names(tmp_path) == [
        "other.log",
        "sansproxy-20250131T12.1.jsonl",
        "sansproxy-20250131T13.jsonl",
        "sansproxy-20250131T14.jsonl",
    ]


def test_max_bytes_holds_within_an_hour_by_rolling_to_parts(tmp_path: pathlib.Path) -> None:
    writer = TraceWriter(wall=Clock(NOW))
    pad = "x" * 1000
    for n in range(100):
        writer.submit(
            WriteTrace(directory=str(tmp_path), record={"n": n, "pad": pad}, max_bytes=10_000)
        )
        assert writer.flush()  # one record a batch: each fills a part (max_bytes / 10)
    writer.close()
    files = trace_files(tmp_path)
    # A file continues in the next part once it holds max_bytes / 10: the hour's file,
    # then .1, .2, ...; the oldest parts deleted so that the directory keeps to max_bytes
    # (the file being written aside).
    assert files[-1].name == "sansproxy-20250131T14.99.jsonl"
    assert sum(f.stat().st_size for f in files[:-1]) <= 10_000
    records = read_traces(tmp_path)
    assert [r["n"] for r in records] == list(range(100 - len(records), 100))
    assert writer.statistics().deleted == 100 - len(files)


def test_the_layout_sorts_oldest_first() -> None:
    key = _trace_writer.trace_file_key
    ordered = [
        "sansproxy-20241231T23.jsonl",
        "sansproxy-20250131.jsonl",
        "sansproxy-20250131T00.jsonl",
        "sansproxy-20250131T00.1.jsonl",
        "sansproxy-20250131T00.10.jsonl",
        "sansproxy-20250131T01.jsonl",
    ]
    assert sorted(ordered, key=lambda name: key(name) or ("", 0, 0)) == ordered
    assert [key(n) for n in ("x.jsonl", "sansproxy-2025.jsonl", "a_b.json")] == [None] * 3
    assert time.gmtime(NOW).tm_hour == 14
