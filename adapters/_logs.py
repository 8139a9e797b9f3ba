"""Repeated log lines collapsed into the first one and a count.

Under load one failure repeats for every request (Redis down and
``on_backend_error: closed``: one ERROR per refused request). A
``LogCollapser`` logs the first line of a kind, counts the repeats of the same
kind (level and key: the message without what varies per exchange) for
``interval`` seconds, then logs one summary: ``<text> (repeated N times in
S s)``. A summary is logged when the same kind recurs after the interval,
when any line goes through the collapser after it, and at ``flush()`` (at
shutdown at the latest). The clock is injected, so tests advance their own.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Hashable, Mapping

__all__ = ["LogCollapser"]

_Kind = tuple[int, Hashable]


class _Window:
    __slots__ = ("count", "start", "text")

    def __init__(self, start: float, text: str) -> None:
        self.start = start
        self.count = 0
        self.text = text


class LogCollapser:
    """One line per kind per ``interval`` seconds into ``logger``; repeats counted.

    Thread-safe. At most ``max_kinds`` kinds are tracked at once: beyond that
    the pending summaries are logged and tracking starts afresh.
    """

    def __init__(
        self,
        logger: logging.Logger,
        *,
        interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        max_kinds: int = 1024,
    ) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        self.logger = logger
        self.interval = interval
        self._clock = clock
        self._max_kinds = max_kinds
        self._windows: dict[_Kind, _Window] = {}
        self._next_sweep = math.inf
        self._lock = threading.Lock()

    def log(
        self,
        level: int,
        msg: str,
        *args: object,
        key: Hashable = None,
        text: str | None = None,
        extra: Mapping[str, object] | None = None,
    ) -> None:
        """Log ``msg % args``, unless a line of the same kind went out less than
        ``interval`` seconds ago: then count it.

        The kind is ``level`` and ``key`` (by default the formatted line); the
        summary names it by ``text`` (by default the formatted line).
        """
        if not self.logger.isEnabledFor(level):
            return
        now = self._clock()
        if key is None or text is None:
            line = msg % args if args else msg
            key = line if key is None else key
            text = line if text is None else text
        kind = (level, key)
        summaries: list[tuple[int, str, int, float]] = []
        with self._lock:
            window = self._windows.get(kind)
            if window is not None and now < window.start + self.interval:
                window.count += 1
                return
            if now >= self._next_sweep or len(self._windows) >= self._max_kinds:
                self._sweep(now, summaries, everything=len(self._windows) >= self._max_kinds)
            elif window is not None:  # this kind's window is over
                del self._windows[kind]
                if window.count:
                    summaries.append((level, window.text, window.count, now - window.start))
            self._windows[kind] = _Window(now, text)
            self._next_sweep = min(self._next_sweep, now + self.interval)
        self._emit(summaries)
        self.logger.log(level, msg, *args, stacklevel=2, extra=extra)  # where the caller logs

    def flush(self) -> None:
        """Log the summary of every kind repeated since its first line."""
        summaries: list[tuple[int, str, int, float]] = []
        with self._lock:
            self._sweep(self._clock(), summaries, everything=True)
        self._emit(summaries)

    def _sweep(
        self, now: float, summaries: list[tuple[int, str, int, float]], *, everything: bool
    ) -> None:
        """Close the windows that are over (all of them: ``everything``). Holds the lock."""
        keep: dict[_Kind, _Window] = {}
        for kind, window in self._windows.items():
            if everything or now >= window.start + self.interval:
                if window.count:
                    summaries.append((kind[0], window.text, window.count, now - window.start))
            else:
                keep[kind] = window
        self._windows = keep
        self._next_sweep = min((w.start for w in keep.values()), default=math.inf) + self.interval

    def _emit(self, summaries: list[tuple[int, str, int, float]]) -> None:
        for level, text, count, elapsed in summaries:
            seconds = min(self.interval, max(1.0, math.ceil(elapsed)))
            self.logger.log(
                level,
                "%s (repeated %d times in %g s)",
                text,
                count,
                seconds,
                stacklevel=3,
            )


class Drops:
    """What a bounded queue dropped: counted by any thread, reported by one.

    ``add(n)`` counts (and tells ``on_drop``, the metrics' counter, say);
    ``report(now)`` logs ``"<n> <what> dropped in the last <s> s (queue full)"``
    as one WARNING at most every ``every`` seconds (``final``: now, whatever is
    left). ``total`` is every drop so far.
    """

    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        *,
        every: float,
        clock: Callable[[], float],
        on_drop: Callable[[int], object] | None = None,
    ) -> None:
        self.total = 0
        self._logger = logger
        self._what = what
        self._every = every
        self._clock = clock
        self._on_drop = on_drop
        self._lock = threading.Lock()
        self._unreported = 0
        self._since = 0.0
        self._next_report = -math.inf

    def add(self, n: int = 1, *, reported: bool = True) -> None:
        """Count ``n`` drops (``reported=False``: counted, said elsewhere)."""
        if self._on_drop is not None:
            self._on_drop(n)
        with self._lock:
            self.total += n
            if reported:
                if not self._unreported:
                    self._since = self._clock()
                self._unreported += n

    def report(self, now: float, *, final: bool = False) -> None:
        """Log the drops not yet reported, if ``every`` seconds passed (or ``final``)."""
        if now < self._next_report and not final:
            return
        with self._lock:
            count, since = self._unreported, self._since
            self._unreported = 0
        if count:
            seconds = max(1, math.ceil(now - since))
            if not final:
                seconds = min(seconds, math.ceil(self._every))
            self._logger.warning(
                "%d %s dropped in the last %d s (queue full)", count, self._what, seconds
            )
            self._next_report = now + self._every
