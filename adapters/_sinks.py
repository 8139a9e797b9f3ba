"""The observers of exchanges: the consumers of the core's ``ExchangeRecord``.

One record per exchange (the core's ``RecordExchange`` command) goes to each
sink the configuration turns on: the access log, the Prometheus metrics, the
span exporter (OpenTelemetry, Langfuse). ``submit`` never blocks nor raises:
each sink queues the command (bounded, drops counted), and reads its
``record`` in its own thread: the record is built there, off the response
path, once for all the sinks. A sink's module is imported only when the
configuration uses it. Every queue's drops are also counted in the metrics,
when they are on (``sansproxy_dropped_records_total{sink}``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from core import ProxyConfig, RecordExchange

if TYPE_CHECKING:
    from ._metrics import Metrics

__all__ = ["PROCESS_SINKS", "RecordSink", "Sinks"]

logger = logging.getLogger("sansproxy")

#: What a queue calls with the number of records (or spans) it just dropped.
DropCounter = Callable[[int], None]


class RecordSink(Protocol):
    """A consumer of exchange records."""

    def submit(self, exchange: RecordExchange) -> None:
        """Take one exchange's record (``exchange.record``, to be read off the
        response path); never block, never raise (drop and count instead)."""

    def close(self) -> None:
        """Deliver what is queued (bounded in time), then stop."""


class Sinks:
    """The sinks of one process, built from the configuration."""

    def __init__(self, config: ProxyConfig) -> None:
        self.metrics: Metrics | None = None
        sinks: list[RecordSink] = []
        if config.metrics.enabled:
            from ._metrics import Metrics  # noqa: PLC0415 (only if used)

            self.metrics = Metrics(config)
            sinks.append(self.metrics)
        if config.access_log:
            from ._access_log import AccessLog  # noqa: PLC0415 (only if used)

            sinks.append(AccessLog(config, on_drop=self.on_drop("access_log")))
        if config.telemetry.enabled:
            from ._spans import SpanExporter  # noqa: PLC0415 (only if used)

            sinks.append(SpanExporter(config, on_drop=self.on_drop("spans")))
        self._sinks = tuple(sinks)

    def on_drop(self, sink: str) -> DropCounter | None:
        """What queue ``sink`` calls with its drops: the metrics' counter, if on."""
        metrics = self.metrics
        if metrics is None:
            return None

        def count(n: int) -> None:
            metrics.count_drops(sink, n)

        return count

    def submit(self, exchange: RecordExchange) -> None:
        """Hand ``exchange``'s record to every sink."""
        for sink in self._sinks:
            sink.submit(exchange)

    def close(self) -> None:
        """Close every sink (at shutdown)."""
        for sink in self._sinks:
            try:
                sink.close()
            except Exception:  # one sink's failure must not keep the others from closing
                logger.exception("closing %s failed", type(sink).__name__)


class ProcessSinks:
    """The sinks of the app this process serves, for code with no driver at hand
    (uvicorn's protocol counts connections in the metrics): set by the app.

    A module-level holder: under ``python -m adapters.asgi`` the entry module is
    ``__main__`` and uvicorn imports ``adapters.asgi`` again, so a global there
    would be two.
    """

    __slots__ = ("metrics",)

    def __init__(self) -> None:
        self.metrics: Metrics | None = None


PROCESS_SINKS = ProcessSinks()
