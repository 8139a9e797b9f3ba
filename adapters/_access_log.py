"""The access log: one INFO line per exchange on the ``sansproxy.access`` logger.

Text (``log_format: text``), the head then ``key=value`` fields, a field with
no value left out::

    POST /v1/chat/completions 200 completed 12.3ms exchange=3fa2b1c4000001
    model=fast provider=oai upstream_ms=10.1 ttft_ms=4.2 tokens_in=12
    tokens_out=40 cost_usd=0.00013 key_name=team-a retries=0

JSON (``log_format: json``): the head as ``message`` and every field as a key
(``null`` when it has no value). Never a key, a header or a body: the record
holds none. A path, or a model name the client sent (not a configured one),
is cut to ``MAX_VALUE`` characters; a value with spaces, quotes or control
characters is quoted as a JSON string, so one exchange is always one line.
The lines follow ``log_level``: at ``warning`` there are none.

Off the response path: ``submit()`` appends to a bounded queue that one daemon
thread drains: a line after a quiet spell at once, then, while lines keep
coming, those of each ``gather`` seconds (0.1) together (or of each ``batch``
records), in one write when logging is as ``configure_logging`` set it up.
Beyond ``max_queue`` records waiting a record is dropped and counted
(``dropped``); the drops are logged as one WARNING line at most every
``report_every`` seconds. A blocked stderr (a full pipe, a stalled terminal)
then costs dropped lines, never a stalled event loop. ``close()`` logs what
is queued (for at most ``close_timeout`` seconds) and reports the drops.
"""

from __future__ import annotations

import collections
import json
import logging
import re
import threading
import time
from collections.abc import Callable
from typing import Any

from core import ExchangeRecord, ProxyConfig, RecordExchange

from ._log_format import TEXT_FORMAT, JsonFormatter, fields_extra, json_line
from ._logs import Drops, LogCollapser

__all__ = ["MAX_VALUE", "AccessLog", "access_fields", "access_line"]

logger = logging.getLogger("sansproxy.access")
# Drops and failures are about the access log, not access lines: a reader that
# keeps the ``sansproxy.access`` lines gets exchanges only.
_status_logger = logging.getLogger("sansproxy")

#: The longest value (a client's model name, a path) written as is, in characters.
MAX_VALUE = 256
_INFO = logging.INFO


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 3)


def _cut(value: str | None) -> str | None:
    if value is None or len(value) <= MAX_VALUE:
        return value
    return value[: MAX_VALUE - 1] + "…"


def access_fields(record: ExchangeRecord) -> dict[str, Any]:
    """The access line's fields of ``record``, in order (None: no value)."""
    usage = record.usage
    return {
        "exchange": record.exchange_id,
        "method": _cut(record.method),
        "path": _cut(record.path),
        "status": record.status,
        "outcome": record.outcome,
        "duration_ms": _ms(record.duration),
        "model": record.model if record.model_configured else _cut(record.model),
        "provider": record.provider,
        "upstream_ms": _ms(record.upstream_duration),
        "ttft_ms": _ms(record.time_to_first_token),
        "tokens_in": None if usage is None else usage.input_tokens,
        "tokens_out": None if usage is None else usage.output_tokens,
        "cost_usd": record.cost_usd,
        "key_name": record.key_name,
        "retries": record.retries,
        "error": record.error_code,
    }


# The fields the text line's head holds already.
_HEAD = frozenset({"method", "path", "status", "outcome", "duration_ms"})


# A value written bare: printable ASCII but for spaces, quotes, "=" and "\\".
_BARE = re.compile(r"[!#-&(-<>-\[\]-~]+")


def _text(value: object) -> str:
    if type(value) is str:
        text = value
    elif type(value) is int:
        return str(value)
    elif type(value) is float:
        return f"{value:.6g}" if abs(value) < 1e-3 and value else repr(value)
    else:
        text = str(value)
    if _BARE.fullmatch(text):
        return text
    return json.dumps(text, ensure_ascii=False)


def _recurring(value: object) -> str:
    """``_text`` of a value that recurs (a method, path, model, outcome): kept."""
    known = _TEXTS.get(value) if type(value) is str else None
    if known is None:
        known = _text(value)
        if type(value) is str:
            if len(_TEXTS) >= _TEXTS_MAX:
                _TEXTS.clear()
            _TEXTS[value] = known
    return known


# The fields whose values recur, and their text (one thread writes lines).
_RECURRING = frozenset({"method", "path", "outcome", "model", "provider", "key_name", "error"})
_TEXTS: dict[str, str] = {}
_TEXTS_MAX = 4096


def access_line(fields: dict[str, Any], *, whole: bool = True) -> tuple[str, str]:
    """``(head, line)``: ``"<method> <path> <status> <outcome> <ms>ms"`` and the
    text line (the head, then ``key=value`` for each other field with a value);
    the line is the head alone unless ``whole`` (a JSON line has the fields as keys)."""
    status = fields["status"]
    head = (
        f"{_recurring(fields['method'])} {_recurring(fields['path'])} "
        f"{'-' if status is None else status} {_recurring(fields['outcome'])} "
        f"{fields['duration_ms']:g}ms"
    )
    if not whole:
        return head, head
    parts = [head]
    for key, value in fields.items():
        if value is None or key in _HEAD:
            continue
        if type(value) is int:
            parts.append(f"{key}={value}")
        elif key in _RECURRING:
            parts.append(f"{key}={_recurring(value)}")
        else:
            parts.append(f"{key}={_text(value)}")
    return head, " ".join(parts)  # never bare: the exchange's id is always there


class AccessLog:
    """A ``RecordSink``: one access line per exchange record, written by a thread.

    ``dropped`` counts the records the full queue (or a closed log) turned
    away; ``written`` the lines handed to the logger; ``failed`` the records
    that could not be turned into a line (a bug: logged, the thread carries on).
    """

    def __init__(
        self,
        config: ProxyConfig,
        *,
        max_queue: int = 10_000,
        batch: int = 512,
        report_every: float = 10.0,
        gather: float = 0.1,
        close_timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        on_drop: Callable[[int], object] | None = None,
    ) -> None:
        self.written = 0
        self._text = config.log_format == "text"
        self.failed = 0
        self._max_queue = max_queue
        self._batch = batch
        self._report_every = report_every
        self._gather = gather
        self._close_timeout = close_timeout
        self._clock = clock
        self._pending: collections.deque[RecordExchange] = collections.deque()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._wake = threading.Event()
        self._sleeping = False
        self._closing = False
        self._closed = False
        self._logs = LogCollapser(_status_logger, interval=report_every, clock=clock)
        self._second = -1  # the whole second whose local time is _second_text
        self._second_text = ""
        # Drops: counted by submit(), reported by the thread (or close()).
        self._drops = Drops(
            _status_logger, "access log lines", every=report_every, clock=clock, on_drop=on_drop
        )

    # --- the event loop's side ----------------------------------------------------------

    def submit(self, exchange: RecordExchange) -> None:
        """Queue the line of ``exchange``'s record; never blocks, never raises."""
        if not logger.isEnabledFor(_INFO):  # --log-level warning: no access lines
            return
        if self._closed or len(self._pending) >= self._max_queue:
            self._drop()
            return
        self._pending.append(exchange)
        if self._sleeping:
            self._sleeping = False
            self._wake.set()
        elif self._thread is None:
            self._start()
        elif len(self._pending) == self._batch:
            self._wake.set()

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is not None:
                return
            thread = threading.Thread(target=self._run, name="sansproxy-access-log", daemon=True)
            try:
                thread.start()
            except RuntimeError:  # no thread to be had: drop what waits, try again later
                count = len(self._pending)
                self._pending.clear()
                for _ in range(count):
                    self._drop()
                return
            self._thread = thread

    @property
    def dropped(self) -> int:
        """Records dropped so far."""
        return self._drops.total

    def _drop(self) -> None:
        self._drops.add()

    def close(self) -> None:
        """Log every queued line (for at most ``close_timeout`` seconds), report the
        drops, and turn later records away (counted as drops)."""
        if self._closed:
            return
        self._closed = True
        self._closing = True
        self._wake.set()
        thread = self._thread
        if thread is not None:
            thread.join(self._close_timeout)
        self._drops.report(self._clock(), final=True)
        self._logs.flush()

    # --- the thread ------------------------------------------------------------------------

    def _run(self) -> None:
        pending = self._pending
        while True:
            if not pending and not self._closing:
                self._wake.clear()
                self._sleeping = True
                if not pending and not self._closing:
                    self._wake.wait(self._report_every)
                self._sleeping = False
            batch = [pending.popleft() for _ in range(min(len(pending), self._batch))]
            if batch:
                handler = _stderr_handler(self._text)
                if handler is None:
                    for exchange in batch:
                        self._write(exchange)
                else:
                    self._write_to(handler, batch)
            self._drops.report(self._clock())
            if self._closing and not pending:
                return
            if batch and len(pending) < self._batch and not self._closing:
                # Lines came: more are likely, gathered a while (not woken for each).
                self._wake.clear()
                if len(pending) < self._batch and not self._closing:
                    self._wake.wait(self._gather)

    def _line(self, exchange: RecordExchange) -> tuple[str, str, dict[str, Any]] | None:
        """The head, line and fields of ``exchange`` (None: none could be made, said)."""
        record: ExchangeRecord | None = None
        try:
            record = exchange.record
            fields = access_fields(record)
            head, line = access_line(fields, whole=self._text)
        except Exception as exc:  # a record no line can be made of: a bug, said once
            self.failed += 1
            self._logs.log(
                logging.ERROR,
                "access log: could not write the line of exchange %s: %s: %s",
                getattr(record, "exchange_id", "?"),
                type(exc).__name__,
                exc,
                key=type(exc).__name__,
                text=f"access log: could not write a line: {type(exc).__name__}",
            )
            return None
        return head, line, fields

    def _write_to(self, handler: logging.StreamHandler[Any], batch: list[RecordExchange]) -> None:
        """Write ``batch``'s lines to ``handler``'s stream at once, as it would write
        them one by one (see ``_stderr_handler``)."""
        lines = []
        end = handler.terminator
        for exchange in batch:
            made = self._line(exchange)
            if made is None:
                continue
            head, line, fields = made
            created = time.time()
            if self._text:
                lines.append(f"{self._asctime(created)} INFO {logger.name}: {line}{end}")
            else:
                lines.append(json_line(created, "INFO", logger.name, head, fields) + end)
        if not lines:
            return
        handler.acquire()
        try:
            handler.stream.write("".join(lines))
            handler.flush()
        except Exception:  # a closed or broken stderr: the lines are lost, counted
            self._drops.add(len(lines))
            return
        finally:
            handler.release()
        self.written += len(lines)

    def _asctime(self, created: float) -> str:
        """``%(asctime)s`` of a record made at ``created`` (``logging.Formatter``'s
        default: local time, milliseconds), its date and time made once a second."""
        second = int(created)
        if second != self._second:
            self._second_text = time.strftime(_TIME_FORMAT, time.localtime(second))
            self._second = second
        return f"{self._second_text},{int((created - second) * 1000):03d}"

    def _write(self, exchange: RecordExchange) -> None:
        made = self._line(exchange)
        if made is None:
            return
        head, line, fields = made
        # As logger.info() would, less its search for the caller (a few µs).
        logger.handle(
            logger.makeRecord(
                logger.name,
                _INFO,
                __file__,
                0,
                "%s",
                (line,),
                None,
                extra=fields_extra(head, fields),
            )
        )
        self.written += 1


_TIME_FORMAT = logging.Formatter.default_time_format


def _stderr_handler(text: bool) -> logging.StreamHandler[Any] | None:
    """The handler ``configure_logging`` set up, if the access lines reach it alone
    and it writes them as it was set up to (``TEXT_FORMAT`` if ``text``, else
    ``JsonFormatter``; no filter anywhere): then the thread writes a batch's lines
    to its stream in one write, formatted as it would, without a ``LogRecord``
    each (most of a line's cost). Else (a handler or filter added, another
    formatter, ``logging.disable``): through ``logger.handle``, one by one."""
    if not logger.isEnabledFor(_INFO):
        return None
    node: logging.Logger | None = logger
    while node is not None:
        if node.filters or node.disabled:
            return None
        if node.parent is None:
            break
        if node.handlers or not node.propagate:
            return None
        node = node.parent
    if node is None or len(node.handlers) != 1:
        return None
    handler = node.handlers[0]
    if type(handler) is not logging.StreamHandler or handler.filters or handler.level > _INFO:
        return None
    formatter = handler.formatter
    if text:
        usual = (
            type(formatter) is logging.Formatter
            and formatter._fmt == TEXT_FORMAT
            and formatter.datefmt is None
            and formatter.converter is time.localtime
            and formatter.default_time_format == _TIME_FORMAT
            and formatter.default_msec_format == "%s,%03d"
        )
    else:
        usual = type(formatter) is JsonFormatter
    return handler if usual else None
