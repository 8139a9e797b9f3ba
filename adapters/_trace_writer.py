"""Writes trace records off the response path, in one background thread.

Layout: JSON lines, one record a line, appended to one file per rotation
period (UTC) in the record's directory::

    <dir>/sansproxy-20250131T14.jsonl      rotate: hour (the default)
    <dir>/sansproxy-20250131.jsonl         rotate: day
    <dir>/sansproxy-20250131T14.1.jsonl    the same hour, once the file before it
                                           reached a tenth of max_bytes

``submit()`` never blocks: beyond ``max_queue`` records waiting, a record is
dropped and counted, and the drops are logged as one WARNING line at most
every ``report_every`` seconds. The thread takes what is queued in batches and
appends each batch with one ``write`` of whole lines: a reader sees whole
lines, but for the last one while it is being written (a reader skips a last
line without its newline). Retention: whole files are deleted, oldest first,
once their period ended more than ``max_age`` seconds ago, or while the
directory's trace files hold more than ``max_bytes`` in all (never the file
being written). ``close()`` writes every record still queued before returning.
"""

from __future__ import annotations

import calendar
import collections
import json
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from core import WriteTrace

from ._logs import Drops, LogCollapser

__all__ = ["TraceStatistics", "TraceWriter", "trace_file_key"]

logger = logging.getLogger("sansproxy.trace")

_PERIODS = {"hour": 3600, "day": 86400}
_STAMPS = {"hour": "%Y%m%dT%H", "day": "%Y%m%d"}
_NAME = re.compile(r"^sansproxy-(\d{8})(?:T(\d{2}))?(?:\.(\d+))?\.jsonl$")
_PARTS = 10  # a file continues in a new part once it holds max_bytes / _PARTS
_CHUNK = 4 << 20  # bytes of lines per write, at most (but one line may be longer)
_MAINTAIN_EVERY = 60.0  # seconds between two retention passes, besides one per new file
# One encoder for every record (json.dumps would build one per call). A cycle in a
# record (none is built so) is a RecursionError here, counted as a failed record.
_encode = json.JSONEncoder(
    ensure_ascii=False, default=str, separators=(",", ":"), check_circular=False
).encode


def trace_file_key(name: str) -> tuple[str, int, int] | None:
    """How trace file ``name`` sorts (oldest first): its period and part; None if it
    is not a trace file."""
    match = _NAME.match(name)
    if match is None:
        return None
    day, hour, part = match.groups()
    return day, -1 if hour is None else int(hour), int(part or 0)


def _period_end(name: str) -> float | None:
    """When the UTC period a trace file's name covers ended (seconds since the epoch)."""
    match = _NAME.match(name)
    if match is None:
        return None
    day, hour, _ = match.groups()
    start = calendar.timegm((int(day[:4]), int(day[4:6]), int(day[6:]), int(hour or 0), 0, 0))
    return float(start + (86400 if hour is None else 3600))


@dataclass(frozen=True, slots=True, kw_only=True)
class TraceStatistics:
    """A snapshot of the writer's counters."""

    written: int
    failed: int
    dropped: int
    queued: int
    deleted: int = 0  # files removed by retention


class _Directory:
    """One trace directory: its settings (from the last record for it) and open file."""

    __slots__ = (
        "fd",
        "made",
        "max_age",
        "max_bytes",
        "name",
        "next_maintenance",
        "path",
        "period_end",
        "rotate",
        "size",
        "torn",
    )

    def __init__(self, path: str) -> None:
        self.path = path
        self.rotate = "hour"
        self.max_age: float | None = None
        self.max_bytes: int | None = None
        self.made = False
        self.fd: int | None = None
        self.name = ""
        self.size = 0
        self.period_end = -math.inf
        self.next_maintenance = -math.inf
        self.torn = False  # a write failed part-way: the next one starts a new line

    def part_limit(self) -> float:
        return math.inf if self.max_bytes is None else max(1, self.max_bytes // _PARTS)


class TraceWriter:
    """A bounded queue drained in batches by a daemon thread that appends JSON lines.

    ``clock`` (monotonic) paces the drop reports and retention passes; ``wall``
    (seconds since the epoch) names the files and dates them.
    """

    def __init__(
        self,
        *,
        max_queue: int = 10_000,
        batch: int = 4096,
        report_every: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        on_drop: Callable[[int], object] | None = None,
    ) -> None:
        # Records, and the markers flush() waits on.
        self._pending: collections.deque[WriteTrace | threading.Event] = collections.deque()
        self._max_queue = max_queue
        self._batch = batch
        self._report_every = report_every
        self._clock = clock
        self._wall = wall
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._wake = threading.Event()
        self._sleeping = False
        self._closing = False
        self._closed = False
        self._directories: dict[str, _Directory] = {}
        self._logs = LogCollapser(logger, interval=report_every, clock=clock)
        self._written = 0
        self._failed = 0
        self._deleted = 0
        # Drops: counted by submit(), reported by the thread (or close()).
        self._drops = Drops(
            logger, "trace records", every=report_every, clock=clock, on_drop=on_drop
        )

    # --- the event loop's side ----------------------------------------------------------

    def submit(self, command: WriteTrace) -> None:
        """Queue a record for writing; never blocks."""
        if self._closed:
            self._drop(closed=True)
            return
        pending = self._pending
        if len(pending) >= self._max_queue:
            self._drop(closed=False)
            return
        pending.append(command)
        if self._sleeping:
            self._sleeping = False
            self._wake.set()
        elif self._thread is None:
            self._start()

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="sansproxy-trace", daemon=True
                )
                self._thread.start()

    def _drop(self, *, closed: bool) -> None:
        self._drops.add(reported=not closed)
        if closed:
            self._logs.log(logging.WARNING, "trace record dropped: the writer is closed")

    # --- the thread ------------------------------------------------------------------------

    def _run(self) -> None:
        pending = self._pending
        try:
            while True:
                if not pending and not self._closing:
                    self._wake.clear()
                    self._sleeping = True
                    if not pending and not self._closing:
                        self._wake.wait(1.0)
                    self._sleeping = False
                if pending:
                    batch: list[WriteTrace] = []
                    marker = None
                    for _ in range(min(len(pending), self._batch)):
                        item = pending.popleft()
                        if isinstance(item, WriteTrace):
                            batch.append(item)
                        else:
                            marker = item  # what was submitted before it is in this batch
                            break
                    if batch:
                        self._write_batch(batch)
                    if marker is not None:
                        marker.set()
                now = self._clock()
                self._drops.report(now)
                for directory in self._directories.values():
                    if now >= directory.next_maintenance and directory.made:
                        self._maintain(directory, now)
                if self._closing and not pending:
                    return
        finally:
            for directory in self._directories.values():
                self._close_file(directory)

    def _write_batch(self, batch: list[WriteTrace]) -> None:
        encode = _encode
        groups: dict[str, tuple[WriteTrace, list[str]]] = {}
        for command in batch:
            try:
                line = encode(command.record)
            except (TypeError, ValueError, RecursionError) as exc:
                self._failed += 1
                self._logs.log(logging.ERROR, "could not serialise a trace record: %s", exc)
                continue
            group = groups.get(command.directory)
            if group is None:
                groups[command.directory] = (command, [line])
            else:  # the last record for a directory sets its options
                groups[command.directory] = (command, group[1])
                group[1].append(line)
        wall = self._wall()
        for path, (last, lines) in groups.items():
            directory = self._directories.get(path)
            if directory is None:
                directory = self._directories[path] = _Directory(path)
            directory.rotate = last.rotate if last.rotate in _PERIODS else "hour"
            directory.max_age = last.max_age
            directory.max_bytes = last.max_bytes
            self._append(directory, lines, wall)

    def _append(self, directory: _Directory, lines: list[str], wall: float) -> None:
        start = 0
        while start < len(lines):
            # Whole lines, about _CHUNK bytes (characters) of them, in one write.
            end, size = start, 0
            while end < len(lines) and (size < _CHUNK or end == start):
                size += len(lines[end]) + 1
                end += 1
            data = ("\n".join(lines[start:end]) + "\n").encode()
            count = end - start
            start = end
            try:
                fd = self._file_for(directory, wall)
                self._write_all(directory, fd, b"\n" + data if directory.torn else data)
            except OSError as exc:
                self._failed += count
                detail = exc.strerror or str(exc)
                where = os.path.join(directory.path, directory.name or "")
                self._logs.log(
                    logging.ERROR,
                    "could not write trace records to %s: %s",
                    where,
                    detail,
                    key=(directory.path, detail),
                )
                self._close_file(directory)
                directory.made = False  # removed, say: made again on the next try
            else:
                self._written += count

    @staticmethod
    def _write_all(directory: _Directory, fd: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                n = os.write(fd, view)
            except OSError:
                if len(view) < len(data):
                    directory.torn = True
                raise
            view = view[n:]
            directory.size += n
        directory.torn = False

    def _file_for(self, directory: _Directory, wall: float) -> int:
        """The descriptor to append to: a new file when the period or part is over."""
        fd = directory.fd
        limit = directory.part_limit()
        if fd is not None and wall < directory.period_end and directory.size < limit:
            return fd
        self._close_file(directory)
        if not directory.made:
            os.makedirs(directory.path, exist_ok=True)
            directory.made = True
        seconds = _PERIODS[directory.rotate]
        period_start = wall // seconds * seconds
        stamp = time.strftime(_STAMPS[directory.rotate], time.gmtime(period_start))
        # Continue the period's last part (another process may have started it),
        # or start the next one once it is full.
        part, size = self._last_part(directory.path, stamp)
        if size >= directory.part_limit():
            part, size = part + 1, 0
        name = f"sansproxy-{stamp}.jsonl" if part == 0 else f"sansproxy-{stamp}.{part}.jsonl"
        fd = os.open(
            os.path.join(directory.path, name),
            os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0),
            0o644,
        )
        directory.fd = fd
        directory.name = name
        directory.size = os.fstat(fd).st_size
        directory.period_end = period_start + seconds
        self._maintain(directory, self._clock())
        return fd

    @staticmethod
    def _last_part(path: str, stamp: str) -> tuple[int, int]:
        """The highest part of period ``stamp`` in ``path`` and its size; (0, 0): none."""
        best, size = 0, 0
        prefix = f"sansproxy-{stamp}."
        with os.scandir(path) as entries:
            for entry in entries:
                if not entry.name.startswith(prefix):
                    continue
                key = trace_file_key(entry.name)
                if key is None:
                    continue
                if key[2] >= best:
                    try:
                        best, size = key[2], entry.stat().st_size
                    except OSError:
                        continue
        return best, size

    def _close_file(self, directory: _Directory) -> None:
        fd, directory.fd = directory.fd, None
        directory.period_end = -math.inf
        if fd is not None:
            try:
                os.close(fd)
            except OSError as exc:
                self._logs.log(logging.ERROR, "could not close trace file: %s", exc)

    def _maintain(self, directory: _Directory, now: float) -> None:
        """Retention: delete whole files, oldest first, that are too old or too many."""
        directory.next_maintenance = now + _MAINTAIN_EVERY
        max_age, max_bytes = directory.max_age, directory.max_bytes
        files: list[tuple[tuple[str, int, int], str, int, float]] = []
        try:
            with os.scandir(directory.path) as entries:
                for entry in entries:
                    key = trace_file_key(entry.name)
                    end = _period_end(entry.name)
                    if key is None or end is None:
                        continue
                    try:
                        files.append((key, entry.name, entry.stat().st_size, end))
                    except OSError:
                        continue  # deleted meanwhile
        except OSError as exc:
            detail = exc.strerror or str(exc)
            self._logs.log(
                logging.ERROR, "could not look over trace directory %s: %s", directory.path, detail
            )
            return
        files.sort()
        if directory.fd is not None and not any(f[1] == directory.name for f in files):
            # Deleted under us (by hand, or another process's retention): start anew.
            self._close_file(directory)
        total = sum(f[2] for f in files)
        oldest = None if max_age is None else self._wall() - max_age
        for _, name, size, end in files:
            too_old = oldest is not None and end <= oldest
            too_big = max_bytes is not None and total > max_bytes
            if not (too_old or too_big):
                break
            if name == directory.name and directory.fd is not None:
                continue  # never the file being written
            try:
                os.remove(os.path.join(directory.path, name))
            except FileNotFoundError:
                pass
            except OSError as exc:
                self._logs.log(
                    logging.ERROR, "could not delete trace file %s: %s", name, exc.strerror or exc
                )
                continue
            else:
                self._deleted += 1
            total -= size

    # --- closing ------------------------------------------------------------------------

    def flush(self, timeout: float = 10.0) -> bool:
        """Block until every record submitted so far is written (or has failed);
        False if that takes more than ``timeout`` seconds."""
        thread = self._thread
        if thread is None:
            return True
        if self._closed:
            thread.join(timeout)
            return not thread.is_alive()
        marker = threading.Event()
        self._pending.append(marker)
        if self._sleeping:
            self._sleeping = False
            self._wake.set()
        return marker.wait(timeout)

    def close(self, timeout: float = 30.0) -> None:
        """Write what is queued, then stop the thread (at most ``timeout`` seconds)."""
        self._closed = True
        self._closing = True
        thread = self._thread
        if thread is not None:
            self._wake.set()
            thread.join(timeout)
            if thread.is_alive():
                logger.error("trace writer did not finish within %.0f s", timeout)
            else:
                # Submitted while closing: too late.
                left = sum(isinstance(item, WriteTrace) for item in self._pending)
                self._pending.clear()
                if left:
                    self._drops.add(left, reported=False)
        self._drops.report(self._clock(), final=True)
        self._logs.flush()

    def statistics(self) -> TraceStatistics:
        """Counters: records written, failed, dropped, still queued; files deleted."""
        return TraceStatistics(
            written=self._written,
            failed=self._failed,
            dropped=self._drops.total,
            queued=sum(isinstance(item, WriteTrace) for item in self._pending),
            deleted=self._deleted,
        )
