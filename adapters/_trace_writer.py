"""Writes trace records off the response path, in one background thread.

``submit()`` never blocks: a full queue drops the record and counts it. Each
record is written to a temporary name and renamed, so a reader never sees half
a file. ``close()`` writes every record still queued before returning.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
from dataclasses import dataclass

from core import WriteTrace

__all__ = ["TraceStatistics", "TraceWriter"]

logger = logging.getLogger("sansproxy.trace")


@dataclass(frozen=True, slots=True, kw_only=True)
class TraceStatistics:
    """A snapshot of the writer's counters."""

    written: int
    failed: int
    dropped: int
    queued: int


class TraceWriter:
    """A bounded queue drained by a daemon thread that writes JSON files."""

    def __init__(self, *, max_queue: int = 10_000) -> None:
        self._queue: queue.Queue[WriteTrace | None] = queue.Queue(max_queue)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._made: set[str] = set()
        self._written = 0
        self._failed = 0
        self._dropped = 0
        self._closed = False

    def submit(self, command: WriteTrace) -> None:
        """Queue a record for writing; never blocks."""
        if self._closed:
            self._dropped += 1
            logger.error("trace record %s dropped: the writer is closed", command.name)
            return
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name="sansproxy-trace", daemon=True
                    )
                    self._thread.start()
        try:
            self._queue.put_nowait(command)
        except queue.Full:
            self._dropped += 1
            logger.error("trace record %s dropped: the write queue is full", command.name)

    def _run(self) -> None:
        while True:
            command = self._queue.get()
            if command is None:
                return
            self._write(command)

    def _write(self, command: WriteTrace) -> None:
        directory = command.directory
        path = os.path.join(directory, command.name)
        tmp = f"{path}.tmp"
        try:
            if directory not in self._made:
                os.makedirs(directory, exist_ok=True)
                self._made.add(directory)
            data = json.dumps(command.record, ensure_ascii=False, default=str).encode()
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except (OSError, TypeError, ValueError) as exc:
            self._failed += 1
            detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            logger.error("could not write trace %s: %s", path, detail)
        else:
            self._written += 1

    def close(self, timeout: float = 30.0) -> None:
        """Write what is queued, then stop the thread (at most ``timeout`` seconds)."""
        self._closed = True
        thread = self._thread
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout)
            if thread.is_alive():
                logger.error("trace writer did not finish within %.0f s", timeout)

    def statistics(self) -> TraceStatistics:
        """Counters: records written, failed, dropped, and still queued."""
        return TraceStatistics(
            written=self._written,
            failed=self._failed,
            dropped=self._dropped,
            queued=self._queue.qsize(),
        )
