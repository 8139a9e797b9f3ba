"""How the process writes its log lines: text, or one JSON object per line.

Every entry point calls :func:`configure_logging` once its configuration is
loaded (uvicorn's workers get the same set-up through ``logging_config``, which
uvicorn applies in each process). With ``log_format: json`` every line on
stderr is one JSON object::

    {"ts":"2025-01-31T14:00:00.123456Z","level":"WARNING","logger":"sansproxy",
     "message":"client went away","exchange":"3fa2b1c4000001"}

A log call gives a line structured fields with ``extra=fields_extra(message,
fields)``: the text line keeps its own wording (the caller writes the fields
into it, as today), while a JSON line takes ``message`` bare and each field as
a top-level key. Keys the line already has (``ts``, ``level``, ``logger``,
``message``, ``exception``) are never overwritten by a field.
"""

from __future__ import annotations

import datetime
import json
import logging
import logging.config
import sys
import threading
from collections.abc import Mapping
from types import TracebackType
from typing import Any

import orjson

from core import ProxyConfig

__all__ = [
    "TEXT_FORMAT",
    "JsonFormatter",
    "configure_logging",
    "fields_extra",
    "json_line",
    "logging_config",
]

#: The text line, as it has always been.
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# The LogRecord attributes fields_extra() sets (namespaced: other libraries'
# ``extra`` keys cannot collide with them).
_FIELDS = "sansproxy_fields"
_MESSAGE = "sansproxy_message"
_EXCEPTION = "sansproxy_exception"
_UTC = datetime.UTC
_OPTIONS = orjson.OPT_UTC_Z | orjson.OPT_NON_STR_KEYS

logger = logging.getLogger("sansproxy")


def fields_extra(message: str, fields: Mapping[str, Any]) -> dict[str, Any]:
    """The ``extra=`` of a log call whose line is ``message`` with ``fields``.

    A JSON line gets ``message`` as its message and each field as a key; a
    ``traceback`` field (text) becomes its ``exception``.
    """
    trace = fields.get("traceback")
    if trace is None:
        return {_MESSAGE: message, _FIELDS: fields}
    rest = {k: v for k, v in fields.items() if k != "traceback"}
    return {_MESSAGE: message, _FIELDS: rest, _EXCEPTION: str(trace)}


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (orjson).

    Keys: ``ts`` (ISO 8601, UTC), ``level``, ``logger``, ``message``, the
    record's structured fields (see :func:`fields_extra`), and ``exception``
    (the traceback's text) and ``stack`` when the record has them. A value
    JSON cannot hold is written as its ``str()``. Never raises.
    """

    def format(self, record: logging.LogRecord) -> str:
        message = getattr(record, _MESSAGE, None)
        if not isinstance(message, str):
            message = record.getMessage()
        fields = getattr(record, _FIELDS, None)
        line = _line(
            record.created,
            record.levelname,
            record.name,
            message,
            fields if isinstance(fields, Mapping) else None,
        )
        exception = getattr(record, _EXCEPTION, None)
        if record.exc_info:
            if not record.exc_text:
                record.exc_text = self.formatException(record.exc_info)
            exception = record.exc_text
        if exception is not None:
            line["exception"] = str(exception)
        if record.stack_info:
            line.setdefault("stack", self.formatStack(record.stack_info))
        return _dumps(line)


def json_line(
    created: float, level: str, name: str, message: str, fields: Mapping[str, Any]
) -> str:
    """The JSON line ``JsonFormatter`` writes of a record made at ``created`` (UNIX
    time) with ``extra=fields_extra(message, fields)``, without building the record."""
    return _dumps(_line(created, level, name, message, fields))


def _line(
    created: float, level: str, name: str, message: str, fields: Mapping[str, Any] | None
) -> dict[str, Any]:
    line: dict[str, Any] = {
        "ts": datetime.datetime.fromtimestamp(created, _UTC),
        "level": level,
        "logger": name,
        "message": message,
    }
    if fields is not None:
        for key, value in fields.items():
            line.setdefault(str(key), value)
    return line


def _dumps(line: dict[str, Any]) -> str:
    try:
        return orjson.dumps(line, default=str, option=_OPTIONS).decode()
    except TypeError:  # orjson.JSONEncodeError: an int beyond 64 bits, a cycle, ...
        pass
    line["ts"] = line["ts"].isoformat().replace("+00:00", "Z")
    try:
        return json.dumps(line, default=str, ensure_ascii=False, separators=(",", ":"))
    except ValueError:  # a cycle: the line without its fields
        keep = ("ts", "level", "logger", "message", "exception")
        return json.dumps({k: str(line[k]) for k in keep if k in line}, ensure_ascii=False)


def logging_config(config: ProxyConfig) -> dict[str, Any]:
    """The ``logging.config.dictConfig`` of ``config``: one stderr handler on the
    root logger, in ``config.log_format``; the ``sansproxy`` loggers at
    ``config.log_level`` (the start-up line at INFO whatever the level: with
    ``--port 0`` it is the only way to learn the port); uvicorn's own access
    log silenced (``sansproxy.access`` is ours)."""
    level = config.log_level.upper()
    formatter: dict[str, Any] = (
        {"()": f"{__name__}.JsonFormatter"}
        if config.log_format == "json"
        else {"format": TEXT_FORMAT}
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"sansproxy": formatter},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "sansproxy",
            }
        },
        "root": {"level": level, "handlers": ["stderr"]},
        "loggers": {
            "sansproxy": {"level": level},
            "sansproxy.startup": {"level": "INFO"},
            "uvicorn.error": {"level": level},
            "uvicorn.access": {"level": "CRITICAL", "handlers": [], "propagate": False},
        },
    }


def configure_logging(config: ProxyConfig) -> None:
    """Set up the process's logging from ``config`` (``log_level``, ``log_format``).

    In JSON, what would otherwise reach stderr as bare text goes through the
    logger too: warnings, and uncaught exceptions (in the main thread, in other
    threads, and those Python can only ignore).
    """
    logging.config.dictConfig(logging_config(config))
    if config.log_format == "json":
        logging.captureWarnings(True)
        sys.excepthook = _uncaught
        threading.excepthook = _uncaught_in_thread
        sys.unraisablehook = _unraisable


def _uncaught(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    logger.critical("uncaught exception: %s: %s", kind.__name__, exc, exc_info=(kind, exc, tb))


def _uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    exc = args.exc_value
    logger.error(
        "uncaught exception in thread %s: %s: %s",
        name,
        args.exc_type.__name__,
        exc,
        exc_info=None if exc is None else (args.exc_type, exc, args.exc_traceback),
    )


def _unraisable(args: sys.UnraisableHookArgs) -> None:
    exc = args.exc_value
    where = args.err_msg or "Exception ignored in"
    logger.error(
        "%s: %r",
        where,
        args.object,
        exc_info=None if exc is None else (args.exc_type, exc, args.exc_traceback),
    )
