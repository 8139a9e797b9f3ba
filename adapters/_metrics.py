"""Prometheus metrics: a consumer of the core's ``ExchangeRecord``.

``Metrics`` counts each record into ``prometheus-client`` metrics (prefix
``sansproxy_``, seconds, ``_total`` counters) and renders them for the core's
``GET metrics.path``. Under ``--workers N`` each worker writes its own values to
``PROMETHEUS_MULTIPROC_DIR`` (``python -m adapters.asgi`` makes one) and a
scrape of any worker sums them all (``prometheus-client``'s multiprocess mode).

``submit`` only appends the core's ``RecordExchange`` to a list. A thread,
woken when ``COUNT_EVERY`` wait (and a scrape or ``close()`` first), reads
each one's ``totals`` (the 18 values of its record a counter needs, which the
core makes then, off the response path, without building the whole record:
a third of the work) and adds them to plain tallies (counts, sums, histogram
buckets found by ``bisect``); every second it moves the tallies into the
``prometheus-client`` metrics. Updating the metrics inline cost ~10 µs of CPU
a record on the response path (each update takes a lock; a histogram walks
its buckets), ~30 µs in multiprocess mode (``mmap`` writes). A scrape sees
what the process counted up to then; another worker's last second may not be
in it yet (and a worker killed outright loses its last second). It never
blocks (no I/O) and never raises into the response path: a
record that cannot be counted is logged once and counted as a drop
(``sink="metrics"``). Up to ``COUNT_EVERY`` records wait (a second's when
traffic is slow; ``MAX_PENDING`` at most): a few hundred bytes each, nothing
large (the core keeps no body in them).

Label values are bounded: no ids, no keys (key *names* only, from the config),
and a model is its public name only if the config names it, else ``other``.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from bisect import bisect_left
from collections import deque
from typing import Any, Final

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.process_collector import ProcessCollector

from core import ExchangeTotals, ProxyConfig, RecordExchange

__all__ = [
    "COUNT_EVERY",
    "EXCHANGE_BUCKETS",
    "MAX_PENDING",
    "MOVE_EVERY",
    "MULTIPROC_DIR_ENV",
    "SHORTHAND_MODELS",
    "Metrics",
]

logger = logging.getLogger("sansproxy")

#: Where multiprocess mode keeps each process's values (prometheus-client's variable).
MULTIPROC_DIR_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"
#: Seconds between two moves of the tallies into the metrics.
MOVE_EVERY: Final = 1.0
#: Exchanges waiting when the thread is woken to count them.
COUNT_EVERY: Final = 256
#: Exchanges waiting to be counted, at most (beyond: dropped, counted).
MAX_PENDING: Final = 200_000
#: In the one-provider shorthand: how many distinct model names get their own label.
SHORTHAND_MODELS: Final = 100
# A model name longer than this is "other", even in the shorthand.
_MODEL_NAME_MAX: Final = 128
_NONE: Final = "none"
_OTHER: Final = "other"

# LLM calls take from a fraction of a second to minutes (long generations,
# reasoning models); a time to first token, tens of ms to tens of seconds; the
# proxy's own time, tens of microseconds to a few milliseconds.
EXCHANGE_BUCKETS: Final = (
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0
)  # fmt: skip
_FIRST_TOKEN_BUCKETS: Final = (
    0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0
)  # fmt: skip
_OVERHEAD_BUCKETS: Final = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0
)  # fmt: skip


class _ModelLabel:
    """The ``model`` label of a record's model: bounded.

    With providers and models configured, a model the config names is its own
    label and anything else a client sends is ``other``: the config bounds the
    series. The one-provider shorthand (``upstream``, ``--base-url``) names no
    model: every name the client sends goes to the one upstream, which alone
    knows which exist. Labelling all of them ``other`` would leave the
    shorthand's users (most of them) without any split by model, so the first
    ``SHORTHAND_MODELS`` distinct names (of at most 128 characters) keep their
    own label and later ones are ``other``: a client sending random names adds
    at most that many series (per worker, each keeping its own first ones).
    """

    __slots__ = ("_lock", "_seen", "_shorthand")

    def __init__(self, shorthand: bool) -> None:
        self._shorthand = shorthand
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, model: str | None, configured: bool) -> str:
        if model is None:
            return _NONE
        if configured:
            return model
        if not self._shorthand:
            return _OTHER
        if model in self._seen:
            return model
        with self._lock:
            if len(self._seen) < SHORTHAND_MODELS and len(model) <= _MODEL_NAME_MAX:
                self._seen.add(model)
                return model
        return _OTHER


class Metrics:
    """The Prometheus metrics of one process: a ``RecordSink``, and the gauges
    the servers move. ``render()`` is the body of ``GET metrics.path``."""

    def __init__(self, config: ProxyConfig) -> None:
        self._model_label = _ModelLabel(shorthand=config.upstream is not None)
        # No ``*_created`` series: twice the series for a timestamp Prometheus's
        # text format does not use (and multiprocess mode never has).
        disable_created_metrics()  # type: ignore[no-untyped-call]
        directory = os.environ.get(MULTIPROC_DIR_ENV)
        self._multiprocess = bool(directory)
        self._scrape = CollectorRegistry(auto_describe=False)
        if directory:
            # Each process writes its own files; a scrape reads them all. The
            # metrics themselves are registered nowhere (their values are files).
            MultiProcessCollector(self._scrape, path=directory)  # type: ignore[no-untyped-call]
            registry: CollectorRegistry | None = None
        else:
            ProcessCollector(registry=self._scrape)
            registry = self._scrape
        self._failed = False
        # Label lookups cost more than updates: the children are kept, and the
        # updates of each exchange's series are found with one lookup.
        self._children: dict[tuple[Any, ...], Any] = {}
        self._exchanges: dict[tuple[str, str, str, str, str], _ExchangeTally] = {}
        self._usages: dict[tuple[str, str], _UsageTally] = {}
        # The series of the first six values of an exchange's totals (``_series``).
        self._by_raw: dict[tuple[Any, ...], _ExchangeTally] = {}
        # The exchanges ended since the last flush, not yet counted.
        self._pending: deque[RecordExchange] = deque()
        # The tallies since the last move into the metrics (see ``flush``).
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._start_lock = threading.Lock()
        self._mover: threading.Thread | None = None

        def counter(name: str, doc: str, labels: tuple[str, ...]) -> Counter:
            return Counter(f"sansproxy_{name}", doc, labels, registry=registry)

        def histogram(
            name: str, doc: str, labels: tuple[str, ...], buckets: tuple[float, ...]
        ) -> Histogram:
            return Histogram(f"sansproxy_{name}", doc, labels, registry=registry, buckets=buckets)

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(f"sansproxy_{name}", doc, registry=registry, multiprocess_mode="livesum")

        self._requests = counter(
            "requests",
            "Exchanges ended, by public model, provider, client API, status class and outcome.",
            ("model", "provider", "client_api", "status_class", "outcome"),
        )
        self._duration = histogram(
            "request_duration_seconds",
            "Whole exchanges, from the request's first byte to the response's last.",
            ("model", "provider"),
            EXCHANGE_BUCKETS,
        )
        self._upstream_duration = histogram(
            "upstream_duration_seconds",
            "Time spent in upstream attempts (their sum), for exchanges that made one.",
            ("model", "provider"),
            EXCHANGE_BUCKETS,
        )
        self._overhead = histogram(
            "overhead_seconds",
            "The proxy's own time: an exchange's duration less its upstream duration.",
            ("model", "provider"),
            _OVERHEAD_BUCKETS,
        )
        self._first_token = histogram(
            "time_to_first_token_seconds",
            "Streams: from the request to the first event sent to the client.",
            ("model", "provider"),
            _FIRST_TOKEN_BUCKETS,
        )
        self._tokens = counter(
            "tokens",
            "Tokens by type (input, output, cache_read, cache_creation; input excludes "
            "cached), by the public model that served them and the key's name.",
            ("model", "key_name", "type"),
        )
        self._cost = counter(
            "cost_usd",
            "Cost in US dollars, by the public model that served it and the key's name.",
            ("model", "key_name"),
        )
        self._refusals = counter(
            "refusals",
            "Requests the proxy's own limits refused, by kind (rate_limit, budget) and key name.",
            ("kind", "key_name"),
        )
        self._retries = counter(
            "retries", "Upstream attempts after the first, by public model.", ("model",)
        )
        self._fallbacks = counter(
            "fallbacks", "Upstream attempts that served a fallback model.", ("model",)
        )
        self._upstream_failures = counter(
            "upstream_failures",
            "Failed upstream attempts, by provider and kind (status: an error status; "
            "connect, timeout, reset, protocol).",
            ("provider", "kind"),
        )
        self._drops = counter(
            "dropped_records",
            "Exchange records a sink dropped (its queue full, or failing).",
            ("sink",),
        )
        self._connections = gauge("client_connections", "Open client connections.")
        self._streams = gauge("streams_in_flight", "Streamed responses under way.")

    # -- RecordSink --------------------------------------------------------------------

    def submit(self, exchange: RecordExchange) -> None:
        """Count ``exchange``'s record (at the next flush); never blocks nor raises."""
        pending = self._pending
        waiting = len(pending)
        if waiting < MAX_PENDING:
            pending.append(exchange)
            if waiting == COUNT_EVERY:
                self._wake.set()
        else:  # the mover is stuck or gone (a bug): drop, count, and say so once
            self._child(self._drops, "metrics").inc()
            if not self._failed:
                self._failed = True
                logger.error("metrics: %d exchanges wait to be counted; dropping", MAX_PENDING)
        if self._mover is None:
            self._start()

    def _start(self) -> None:
        try:
            with self._start_lock:
                if self._mover is None:
                    self._start_mover()
        except RuntimeError:  # no thread to be had: the records wait for a scrape
            logger.exception(
                "metrics: could not start the thread that counts exchanges (each scrape will)"
            )

    def _start_mover(self) -> None:
        mover = threading.Thread(target=self._move_every_second, name="sansproxy-metrics")
        mover.daemon = True
        self._mover = mover
        mover.start()
        # A process that exits without close() keeps what it counted (one killed
        # outright loses its last second).
        atexit.register(self.flush)

    def _move_every_second(self) -> None:
        """Count the records when ``COUNT_EVERY`` wait (they are not kept long: a
        record kept a second outlives the garbage collector's young generations,
        and a full collection then walks them all), and move the tallies every
        ``MOVE_EVERY`` seconds."""
        wake, stop = self._wake, self._stop
        move_at = time.monotonic() + MOVE_EVERY
        while not stop.is_set():
            wake.wait(max(0.0, move_at - time.monotonic()))
            wake.clear()
            if stop.is_set():
                return
            if time.monotonic() < move_at:
                self._count_pending()
            else:
                self.flush()
                move_at = time.monotonic() + MOVE_EVERY

    def _count_pending(self) -> None:
        """Add the records waiting to the tallies."""
        with self._lock:
            pending = self._pending
            # What comes in meanwhile waits for the next flush.
            for _ in range(len(pending)):
                exchange = pending.popleft()
                try:
                    self._count(exchange.totals)
                except Exception:  # a bug: said once, counted, the others go on
                    self._child(self._drops, "metrics").inc()
                    if not self._failed:
                        self._failed = True
                        logger.exception("metrics: counting an exchange failed (dropped, counted)")

    def flush(self) -> None:
        """Count the records waiting, and move the tallies into the metrics (what a
        scrape reads)."""
        self._count_pending()
        try:
            with self._lock:
                for tally in self._exchanges.values():
                    if tally.requests:
                        tally.move()
                for usage in self._usages.values():
                    if not usage.moved:
                        usage.move()
        except Exception:
            self._drops.labels("metrics").inc()
            logger.exception("metrics: moving the tallies failed")

    def close(self) -> None:
        """Move what is tallied. In multiprocess mode, this process's open
        connections and streams leave the sums (its counters stay)."""
        self._stop.set()
        self._wake.set()
        self.flush()
        if self._multiprocess:
            mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]

    # -- the servers' gauges -----------------------------------------------------------

    def connection_opened(self) -> None:
        self._connections.inc()

    def connection_closed(self) -> None:
        self._connections.dec()

    def stream_started(self) -> None:
        self._streams.inc()

    def stream_ended(self) -> None:
        self._streams.dec()

    def count_drops(self, sink: str, n: int = 1) -> None:
        """Count ``n`` records another sink dropped (``sink``: its name, a constant)."""
        self._child(self._drops, sink).inc(n)

    # -- scrape ------------------------------------------------------------------------

    def render(self) -> tuple[bytes, bytes]:
        """The body of a scrape and its content type (Prometheus text format 0.0.4)."""
        self.flush()
        return generate_latest(self._scrape), _CONTENT_TYPE

    # -- counting ----------------------------------------------------------------------

    def _child(self, metric: Any, *values: str) -> Any:
        """``metric.labels(*values)``, cached: the label lookup costs more than the update."""
        key = (metric, *values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    def _exchange_series(self, key: tuple[str, str, str, str, str]) -> _ExchangeTally:
        model, provider = key[0], key[1]
        series = self._exchanges[key] = _ExchangeTally(
            model,
            self._child(self._requests, *key),
            duration=_Tally(self._child(self._duration, model, provider), EXCHANGE_BUCKETS),
            upstream=_Tally(
                self._child(self._upstream_duration, model, provider), EXCHANGE_BUCKETS
            ),
            overhead=_Tally(self._child(self._overhead, model, provider), _OVERHEAD_BUCKETS),
            first=_Tally(self._child(self._first_token, model, provider), _FIRST_TOKEN_BUCKETS),
        )
        return series

    def _usage_series(self, key: tuple[str, str]) -> _UsageTally:
        tokens = self._tokens
        series = self._usages[key] = _UsageTally(
            (
                self._child(tokens, *key, "input"),
                self._child(tokens, *key, "output"),
                self._child(tokens, *key, "cache_read"),
                self._child(tokens, *key, "cache_creation"),
                self._child(self._cost, *key),
            )
        )
        return series

    def _series(self, raw: tuple[Any, ...]) -> _ExchangeTally:
        """The series of the exchanges whose totals begin with ``raw`` (model,
        configured, provider, client API, status, outcome): its labels bounded (a
        model the config does not name is ``other``), found once per ``raw``."""
        model, configured, provider, client_api, status, outcome = raw
        if model is None:
            model = _NONE
        elif not configured:
            model = self._model_label(model, False)
        key = (model, provider or _NONE, client_api, _STATUS_CLASSES.get(status, _NONE), outcome)
        series = self._exchanges.get(key) or self._exchange_series(key)
        if len(self._by_raw) < _RAW_SERIES_MAX:  # clients' model names are unbounded
            self._by_raw[raw] = series
        return series

    def _count(self, r: ExchangeTotals) -> None:
        raw = r[:6]
        series = self._by_raw.get(raw) or self._series(raw)
        model = series.model
        series.requests += 1
        # Each histogram's tally, inline (as _Tally.observe: a call each costs more).
        duration = r.duration
        tally = series.duration
        tally.counts[bisect_left(tally.bounds, duration)] += 1
        tally.sum += duration
        upstream = r.upstream_duration
        if upstream is not None:
            tally = series.upstream
            tally.counts[bisect_left(tally.bounds, upstream)] += 1
            tally.sum += upstream
            overhead = duration - upstream if duration > upstream else 0.0
            tally = series.overhead
            tally.counts[bisect_left(tally.bounds, overhead)] += 1
            tally.sum += overhead
        first = r.time_to_first_token
        if first is not None and r.stream:
            tally = series.first_token
            tally.counts[bisect_left(tally.bounds, first)] += 1
            tally.sum += first
        usage = r.usage
        cost = r.cost_usd
        if usage is not None or cost:
            # a fallback is a public model the config names
            served = r.served_model if r.fallbacks else model
            ukey = (served or model, r.key_name or _NONE)
            spent = self._usages.get(ukey) or self._usage_series(ukey)
            pending = spent.pending
            if usage is not None:
                pending[0] += usage.input_tokens
                pending[1] += usage.output_tokens
                pending[2] += usage.cached_input_tokens
                pending[3] += usage.cache_creation_tokens
            if cost:
                pending[4] += cost
            spent.moved = False
        # Rarer: a refusal, a retry, a failed attempt.
        if r.refusal is not None:
            self._child(self._refusals, r.refusal, r.key_name or _NONE).inc()
        if r.retries:
            self._child(self._retries, model).inc(r.retries)
        if r.fallbacks:
            self._child(self._fallbacks, model).inc(r.fallbacks)
        for provider, kind in r.failures:
            self._child(self._upstream_failures, provider, kind).inc()


class _Tally:
    """A histogram's observations since the last move: their sum, and a count per
    bucket (prometheus-client's own, non-cumulative, ``le`` order)."""

    __slots__ = ("bounds", "counts", "histogram", "sum")

    def __init__(self, histogram: Any, buckets: tuple[float, ...]) -> None:
        self.histogram = histogram
        self.bounds = (*buckets, float("inf"))
        self.counts = [0] * len(self.bounds)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # The first bound >= value: the bucket Histogram.observe would count it in.
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def move(self) -> None:
        counts = self.counts
        if not any(counts):
            return
        # A histogram child's values (prometheus-client's own attributes, stable
        # since its first releases; tests compare a scrape with observe()'s).
        buckets = self.histogram._buckets
        for i, count in enumerate(counts):
            if count:
                buckets[i].inc(count)
        self.histogram._sum.inc(self.sum)
        self.counts = [0] * len(counts)
        self.sum = 0.0


class _ExchangeTally:
    """One (model, provider, client_api, status_class, outcome): exchanges ended
    since the last move, and their timings."""

    __slots__ = ("duration", "first_token", "model", "overhead", "requests", "total", "upstream")

    def __init__(
        self,
        model: str,
        total: Any,
        *,
        duration: _Tally,
        upstream: _Tally,
        overhead: _Tally,
        first: _Tally,
    ) -> None:
        self.model = model  # the model label
        self.total = total  # the requests counter's child
        self.requests = 0
        self.duration = duration
        self.upstream = upstream
        self.overhead = overhead
        self.first_token = first

    def move(self) -> None:
        self.total.inc(self.requests)
        self.requests = 0
        self.duration.move()
        self.upstream.move()
        self.overhead.move()
        self.first_token.move()


class _UsageTally:
    """One (model, key_name): tokens input, output, cache_read, cache_creation, and
    cost since the last move."""

    __slots__ = ("children", "moved", "pending")

    def __init__(self, children: tuple[Any, ...]) -> None:
        self.children = children
        self.pending: list[float] = [0, 0, 0, 0, 0.0]
        self.moved = True

    def move(self) -> None:
        for child, amount in zip(self.children, self.pending, strict=True):
            if amount:
                child.inc(amount)
        self.pending = [0, 0, 0, 0, 0.0]
        self.moved = True


#: Distinct first values of totals (``Metrics._series``) whose series are kept.
_RAW_SERIES_MAX: Final = 4096
# A status's class label: one lookup (a status is an int in 100..599, else None).
_STATUS_CLASSES: Final[dict[int | None, str]] = {n: f"{n // 100}xx" for n in range(100, 600)}
_CONTENT_TYPE: Final = CONTENT_TYPE_PLAIN_0_0_4.encode("ascii")
