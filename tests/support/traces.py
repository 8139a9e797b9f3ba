"""Reading the trace files the proxy writes: JSON lines, one file per rotation period.

Records are written by the proxy's background thread, so they appear a little
after the response: a short, bounded poll of the files is the only way to see
that. A last line without its newline is a write in progress and is skipped;
any other line must be one whole JSON object.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from adapters._trace_writer import trace_file_key

__all__ = ["read_traces", "trace_files", "wait_for_trace", "wait_for_traces"]

_POLL = 0.02


def trace_files(directory: Path) -> list[Path]:
    """The trace files in ``directory``, oldest first (none if it does not exist)."""
    if not directory.is_dir():
        return []
    keyed = [(trace_file_key(path.name), path) for path in directory.iterdir()]
    return [path for key, path in sorted((k, p) for k, p in keyed if k is not None)]


def read_traces(directory: Path) -> list[dict[str, Any]]:
    """Every whole record in ``directory``'s trace files, in the order written."""
    records = []
    for path in trace_files(directory):
        lines = path.read_bytes().split(b"\n")
        for line in lines[:-1]:  # the last piece has no newline: empty, or being written
            record = json.loads(line)
            assert isinstance(record, dict), line
            records.append(record)
    return records


def wait_for_traces(directory: Path, count: int, *, timeout: float = 5.0) -> list[dict[str, Any]]:
    """Poll (bounded) until ``directory`` holds at least ``count`` records; return them
    all (fewer if the time ran out: the caller's assertion says what was missing)."""
    deadline = time.monotonic() + timeout
    while True:
        records = read_traces(directory)
        if len(records) >= count or time.monotonic() > deadline:
            return records
        time.sleep(_POLL)


def wait_for_trace(directory: Path, exchange_id: str, *, timeout: float = 5.0) -> dict[str, Any]:
    """Poll (bounded) for the record of exchange ``exchange_id`` (the response's
    ``x-sansproxy-id``)."""
    deadline = time.monotonic() + timeout
    while True:
        for record in read_traces(directory):
            if record.get("id") == exchange_id:
                return record
        if time.monotonic() > deadline:
            raise AssertionError(f"no trace for {exchange_id} in {directory} in {timeout} s")
        time.sleep(_POLL)
