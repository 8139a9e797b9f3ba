"""The trace writer: never blocks, never loses a queued record, counts failures."""

from __future__ import annotations

import json
import logging
import pathlib

import pytest

from adapters._trace_writer import TraceWriter
from core import WriteTrace


def record(directory: pathlib.Path | str, n: int) -> WriteTrace:
    return WriteTrace(directory=str(directory), name=f"r{n}.json", record={"n": n, "s": "é"})


def test_records_queued_before_close_are_all_written(tmp_path: pathlib.Path) -> None:
    writer = TraceWriter()
    for n in range(200):
        writer.submit(record(tmp_path / "traces", n))
    writer.close()
    files = sorted((tmp_path / "traces").iterdir())
    assert len(files) == 200
    assert not [f for f in files if f.suffix == ".tmp"]
    assert json.loads((tmp_path / "traces" / "r7.json").read_text()) == {"n": 7, "s": "é"}
    stats = writer.statistics()
    assert (stats.written, stats.failed, stats.dropped, stats.queued) == (200, 0, 0, 0)


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


def test_a_full_queue_drops_and_counts_instead_of_blocking(tmp_path: pathlib.Path) -> None:
    writer = TraceWriter(max_queue=1)
    # The thread may take one record off the queue at once; beyond that the
    # queue holds one, so of many submitted in a burst some must be dropped.
    for n in range(50):
        writer.submit(record(tmp_path, n))
    writer.close()
    stats = writer.statistics()
    assert stats.dropped > 0
    assert stats.written + stats.dropped == 50


def test_submit_after_close_is_counted_not_written(tmp_path: pathlib.Path) -> None:
    writer = TraceWriter()
    writer.close()
    writer.submit(record(tmp_path, 1))
    assert writer.statistics().dropped == 1
    assert list(tmp_path.iterdir()) == []
