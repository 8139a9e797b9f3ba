"""``nox -s bench``: the proxy, direct vs through each adapter, in one run.

Starts the fast local upstream (``tests.bench.upstream``), then for each target
-- ``direct`` (the upstream alone) and each adapter, one worker, pointed at the
upstream -- measures with ``wrk`` (non-streaming, concurrency 1 and 64, after a
warm-up) and ``tests.bench.loadgen`` (a 50-event stream at concurrency 16; time
to first event of a slow stream at concurrency 1): requests/s, p50/p99 latency
and what the proxy adds to direct, CPU per request and per stream event of the
server process (from ``/proc/<pid>/stat``), and its RSS. Prints one table.

Each adapter is also measured as a gateway (``--config``), against the same
upstream in the same run, next to its plain pass-through:

- ``<adapter> routed``: providers ``{up: {type: openai}}``, models ``{fast:
  [{provider: up, model: gpt-4o-mini}]}``; wrk asks for model ``fast`` (the
  proxy routes it and rewrites the model): the non-streaming phases.
- ``<adapter> translated``: an Anthropic provider; the OpenAI client's stream
  for model ``smart`` is answered by the upstream's Anthropic stream (the same
  number of text deltas) and translated to ``chat.completion.chunk`` events:
  the stream phase and the slow stream's time to first event. A translated
  request loses the query string, so the provider's extra ``x-bench-*``
  headers tell the upstream the stream's shape (``smart-slow``: the slow one).

- ``<adapter> policies``: the routed config plus the ``auth`` and ``rate_limit``
  middleware: one virtual key (``BENCH_KEY``, which wrk and the load client
  send) with ``rpm``/``tpm`` limits, and the same limits on model ``fast`` (so
  a request checks and charges both), all far above what the bench can reach;
  ``limits.backend: memory``. The wrk phases (c1: the added p50), then paired
  rounds with the routed server, as the exporters are (below): the row's
  +CPU per request is their median, with their spread.
- ``<adapter> policies-redis``: the same with ``limits.backend: redis``, on a
  ``redis-server`` the bench starts for the run (no persistence, a free port);
  skipped, saying why, when ``redis-server`` is not on PATH. Its CPU per
  request is reported too (the proxy's own figure leaves it out).

- the exporters (``--exporters``, on by default), each the routed config plus
  one of them, measured paired with the routed target (target: at most
  ``EXPORTER_TARGETS`` of a pass-through request's CPU). The routed server stays
  up (idle) until its exporters are done; each exporter's server and it get a
  wrk warm-up each, then ``--exporter-rounds`` rounds of wrk at ``--connections``
  for ``--exporter-slice-s`` on one and then the other (alternating which goes
  first, like the translated ``+ttfe``), each server's CPU read over its own
  slice and on until it is idle again (a batch of spans, queued access lines
  after the last answer are the exporter's); the row is the median over the
  rounds of (exporter - routed) CPU per request, with the smallest and largest
  difference (the noise): machine noise that drifts over seconds mostly cancels
  out of it, where two phases minutes apart differed by more than the targets.
  ``<adapter> none`` is a second routed server measured the same way: the
  noise floor of the run (what the difference of two equal servers came to),
  in process too (nothing observing against nothing).
  Then the same exporters ``in process`` (``tests.bench.exporters``): the core
  and the driver's sinks without sockets, exporter and none in alternating
  rounds, the process's CPU per exchange (the sinks' threads included): a few
  µs of noise where the wrk rounds have tens; the share is of each column's
  pass-through CPU/request.
  With ``--instructions``, ``tests.bench.instructions`` counts the instructions
  of a pass-through, a routed, a metrics and a tracing request through
  httptools under cachegrind (the same to 0.1 % from run to run, the kernel's
  work left out); what each exporter adds to routed, as a share of the
  pass-through request's; and of a pass-through stream, the instructions per
  relayed event when each event arrives in a read of its own; and, beside
  them, a minimal asyncio + httptools pass-through (``tests.bench.floor``).
  ``<adapter> access-log``: ``access_log: true`` at ``--log-level info`` (one
  line per exchange on the proxy's stderr, which the bench drains; checked:
  the lines written); ``<adapter> metrics``: ``metrics: {enabled: true}``
  (checked: ``GET /metrics`` at the end answers 200 and counts at least the
  requests wrk had answered); ``<adapter> tracing``: ``telemetry:
  {otlp_endpoint}`` pointed at an OTLP/HTTP receiver (``tests.support.
  otlp_receiver``) the bench starts for the target, ``OTEL_BSP_SCHEDULE_DELAY``
  at ``BSP_SCHEDULE_DELAY_MS`` so that the spans flow during the slices
  (checked: the receiver got a SERVER span per request; spans the proxy
  dropped are reported). The receiver decodes in the bench's process: its CPU
  is not the proxy's. The checks count the requests of the exporter's slices
  (the sanity checks and warm-up come on top).

Streams are measured two ways: the 50 events of a stream in one write (so
many arrive in one read: ``streams``), and ``per read``: ``--per-read-streams``
concurrent streams of ``--per-read-events`` events ``--per-read-delay-ms``
apart, the upstream writing each event on its own, so each arrives in its own
read (the translated target too, through a third provider), for the phase's
duration; CPU per relayed event is the server's CPU over the phase / the
events relayed.

Many clients (``--many-clients``, on by default; a fresh server per adapter,
``<adapter> many``, its keep-alive timeout raised to ``MANY_KEEPALIVE_S``, and
direct): ``--many-streams`` slow streams (``--many-events`` events,
``--many-delay-ms`` apart), opened evenly over ``--many-ramp-s``, one
connection each: errors, time to first event p50/p99 against direct's, the
server's peak RSS and CPU per event; then ``--idle-connections`` keep-alive
connections, each answered once and then left idle for ``--idle-hold-s``:
how many were held, whether a new request on a sample of them is answered,
and the RSS while they are held. The bench raises ``RLIMIT_NOFILE`` to the
hard limit for itself and everything it starts.

The floor (``--floor``, on by default): ``tests.bench.floor``, a minimal
asyncio + httptools pass-through (no routing, no limits, no usage, no errors
handled: what any Python proxy on this stack must do and nothing more),
measured as an adapter in every phase but the idle connections (it opens an
upstream connection for each client connection, and 10,000 of them take it
half a minute), in the column after direct: what is left to the proxy's own
code is the difference. nginx (``--nginx``, on by default:
``tests.bench.nginx_proxy``, one worker, nothing buffered), in the same phases,
in the column after the floor: what a hop through a proxy written in C costs
on this machine (wake-ups, system calls, the loopback), which no proxy avoids.

It prints ONE table, a figure per line and a column per adapter (direct
first): each figure with its ratio or difference to direct in the same run,
and the gateway's costs against the same adapter's pass-through (routed,
translated) or routed target (policies: what ``auth`` + ``rate_limit`` add
per request, memory and Redis; target for the memory backend: at most
``POLICIES_TARGET`` of a pass-through request; exporters: what each adds per
request). ``--json`` keeps every figure.

    python -m tests.bench.run [--duration 5] [--adapters h11,asgi,trio,httptools] [--json PATH]
    python -m tests.bench.run --gateway-adapters h11   # routed/translated/policies: h11 only
    python -m tests.bench.run --adapters '' --target 'mine=python /tmp/proxy.py'
    python -m tests.bench.run --duration 3 --no-many-clients   # the quick phases only
    python -m tests.bench.run --no-exporters   # without the access-log, metrics, tracing rows
    python -m tests.bench.run --exporter-rounds 10 --exporter-slice-s 2   # more rounds
    python -m tests.bench.run --instructions   # + instructions per request (cachegrind)

A benchmark, not a test: it asserts nothing about time.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import hashlib
import http.client
import importlib.util
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal

from tests.bench.exporters import measure as measure_exporters
from tests.bench.loadgen import (
    BENCH_KEY,
    DEFAULT_MODEL,
    check,
    check_anthropic_upstream,
    check_policies,
    check_translated,
    check_unknown_model,
    first_answer,
    raise_nofile,
)
from tests.bench.upstream import COMPLETION_BODY
from tests.interop.servers import nginx_binary

if TYPE_CHECKING:
    from tests.support.otlp_receiver import OtlpReceiver

__all__ = ["ADAPTERS", "Target", "main"]

HOST = "127.0.0.1"
PATH = "/v1/chat/completions"
LUA_SCRIPT = Path(__file__).with_name("post.lua")
REPO_ROOT = Path(__file__).resolve().parents[2]
LISTENING = re.compile(r"listening on http://(?P<host>[0-9.]+):(?P<port>\d+)")
START_TIMEOUT = 30.0
STOP_TIMEOUT = 5.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
ROUTED_MODEL = "fast"
TRANSLATED_MODEL = "smart"
SLOW_TRANSLATED_MODEL = "smart-slow"
PER_READ_TRANSLATED_MODEL = "smart-per-read"
#: what the access log's line of each bench request contains (text format)
ACCESS_LINE = f"POST {PATH} "
#: the keep-alive timeout (server.keepalive_timeout) of the many-clients servers
MANY_KEEPALIVE_S = 600
#: descriptors a process needs beside its connections
FD_SLACK = 200
TTFE_EVENTS = 3  # events of the slow stream (its first goes out with the head)
TTFE_TARGET_MS = 0.2  # what translation may add to the time to first event
#: what auth + rate_limit (memory backend) may add, as a share of the pass-through's
#: CPU per request
POLICIES_TARGET = 0.10
#: per-key and per-model limits no bench run comes near
POLICY_LIMITS = {"rpm": 10**9, "tpm": 10**12}

Mode = Literal[
    "direct",
    "passthrough",
    "routed",
    "policies",
    "policies-redis",
    "none",
    "access-log",
    "metrics",
    "tracing",
    "translated",
    "many",
    "idle",
]
POLICIES: tuple[Mode, ...] = ("policies", "policies-redis")
#: the routed config plus one exporter each; ``none``: a second routed server, no
#: exporter (the noise floor: what a difference of two equal servers is in this run)
EXPORTERS: tuple[Mode, ...] = ("none", "access-log", "metrics", "tracing")
#: what each exporter may add, as a share of the pass-through's CPU per request (None:
#: no target, the figure only)
EXPORTER_TARGETS: dict[Mode, float | None] = {
    "none": None,
    "access-log": None,
    "metrics": 0.05,
    "tracing": 0.15,
}
#: the span exporter's batch delay in the tracing targets (the SDK's default is 5 s)
BSP_SCHEDULE_DELAY_MS = 200
#: how long the tracing check waits for the last spans after the phases
SPANS_WAIT_S = 10.0
#: rounds of the exporter vs routed comparison, and the seconds of wrk per server a
#: round (wrk takes whole seconds)
EXPORTER_ROUNDS = 6
EXPORTER_SLICE_S = 2
#: after a slice, a server's CPU is read on until it uses at most a clock tick in a
#: window this long (longer than the span batch delay), within SETTLE_TIMEOUT_S: what
#: an exporter does after the last answer (a batch of spans, queued lines) is its own
SETTLE_WINDOW_S = 0.3
SETTLE_TIMEOUT_S = 3.0
#: the modes measured by wrk only (the non-streaming phases), through the gateway
WRK_ONLY: tuple[Mode, ...] = ("routed", *POLICIES, *EXPORTERS)
# Measured against their base server kept up (paired rounds, or alternating ttfe).
_PAIRED: tuple[Mode, ...] = ("translated", *POLICIES, *EXPORTERS)

#: adapter name -> (module, extra flags)
ADAPTERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "h11": ("adapters.h11_server", ()),
    "asgi": ("adapters.asgi", ("--workers", "1")),
    "trio": ("adapters.trio_runner", ()),
    "httptools": ("adapters.httptools_server", ()),
}


def adapter_missing(name: str) -> str | None:
    """Why adapter ``name`` cannot be measured (its module is not there), or None."""
    module = ADAPTERS[name][0]
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    return None if found else f"not available: module {module} not found"


class BenchError(Exception):
    """A target could not be started or measured."""


@dataclass(slots=True)
class Target:
    """Something to measure: ``argv`` is None for the upstream itself (direct).

    ``mode`` says how it is pointed at the upstream and which phases it runs;
    ``base`` is the target a gateway one is compared with: the pass-through for
    routed and translated, the routed one for policies; ``column`` the summary
    table's column it reports in (its adapter's); ``missing`` why it cannot run.
    """

    name: str
    argv: list[str] | None
    mode: Mode = "passthrough"
    base: str | None = None
    column: str = ""
    missing: str | None = None


@dataclass(slots=True)
class Server:
    """A server subprocess with its stderr drained into a bounded tail; ``counted``: the
    lines that contained ``count`` (if given)."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int = 0
    tail: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=40))
    announced: threading.Event = field(default_factory=threading.Event)
    count: str | None = None
    counted: int = 0

    def drain(self, stream: IO[bytes]) -> None:
        for raw in stream:
            line = raw.decode("utf-8", "replace").rstrip()
            self.tail.append(line)
            if self.count is not None and self.count in line:
                self.counted += 1
            match = LISTENING.search(line)
            if match and not self.announced.is_set():
                self.port = int(match["port"])
                self.announced.set()

    def describe_exit(self) -> str:
        lines = [line for line in self.tail if line.strip()][-6:]
        return f"{self.name} exited with status {self.proc.returncode}: " + " | ".join(lines)

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _connectable(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


def start_server(
    name: str,
    argv: list[str],
    *,
    port: int | None,
    cwd: Path = REPO_ROOT,
    env: dict[str, str] | None = None,
    count: str | None = None,
) -> Server:
    """Start ``argv`` in ``cwd`` (with ``env`` added to the environment); wait for its
    ``listening on`` line (or, with ``port``, for the port). ``count``: see `Server`."""
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        env=None if env is None else {**os.environ, **env},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: stop() signals workers too
    )
    server = Server(name=name, proc=proc, count=count)
    assert proc.stdout is not None
    threading.Thread(target=server.drain, args=(proc.stdout,), daemon=True).start()
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if server.announced.wait(0.05):
            return server
        if proc.poll() is not None:
            time.sleep(0.1)  # let the drain thread read the last lines
            raise BenchError(server.describe_exit())
        if port is not None and _connectable(port):
            server.port = port
            return server
    server.stop()
    raise BenchError(f"{name} did not start listening within {START_TIMEOUT:.0f} s")


def start_redis(workdir: Path) -> Server:
    """A throw-away ``redis-server`` for the policies-redis targets: a free port on
    ``HOST``, no persistence (``workdir`` only in case it writes anyway)."""
    port = _free_port()
    argv = [
        "redis-server",
        "--port",
        str(port),
        "--bind",
        HOST,
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(workdir),
    ]
    return start_server("redis-server", argv, port=port)


# -- /proc accounting -------------------------------------------------------------


def _stat_fields(pid: int) -> list[str]:
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()  # fields from 3 (state) on


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                ppid = int(_stat_fields(int(entry.name))[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found = [pid]
    for p in found:
        found.extend(children.get(p, []))
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` and its descendants, in seconds."""
    ticks = 0
    for p in tree(pid):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = _stat_fields(p)
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / CLK_TCK


def memory_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of ``pid`` and its descendants, summed, in MB."""
    rss = hwm = 0
    for p in tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss += int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    hwm += int(line.split()[1])
    return rss / 1024, hwm / 1024


def listen_overflows() -> int:
    """The kernel's count of connections dropped because a listener's accept queue was
    full (``TcpExt ListenOverflows``, every socket of the machine); -1 if unknown."""
    try:
        lines = Path("/proc/net/netstat").read_text().splitlines()
    except OSError:
        return -1
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:], strict=False))
            return int(table.get("ListenOverflows", -1))
    return -1


class CpuMeter:
    """CPU seconds used by a process tree between ``__enter__`` and ``__exit__``."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.seconds = 0.0
        self.wall = 0.0
        self._cpu = 0.0
        self._t = 0.0

    def __enter__(self) -> CpuMeter:
        self._cpu = cpu_seconds(self.pid)
        self._t = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = cpu_seconds(self.pid) - self._cpu
        self.wall = time.perf_counter() - self._t


class RssSampler:
    """The largest VmRSS of a process tree between ``__enter__`` and ``__exit__``, polled
    every ``interval`` s (VmHWM would also count what came before)."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.pid = pid
        self.interval = interval
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while True:
            self.peak_mb = max(self.peak_mb, memory_mb(self.pid)[0])
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, memory_mb(self.pid)[0])


# -- load -------------------------------------------------------------------------


def wrk(
    port: int,
    *,
    connections: int,
    threads: int,
    duration: int,
    model: str = DEFAULT_MODEL,
    headers: Sequence[str] = (),
) -> dict[str, Any]:
    """One wrk run (asking for ``model``, with extra ``headers``); the summary its Lua
    ``done()`` prints."""
    argv = [
        "wrk",
        f"-t{min(threads, connections)}",
        f"-c{connections}",
        f"-d{duration}s",
        "--timeout",
        "10s",
        "--latency",
        *(arg for header in headers for arg in ("-H", header)),
        "-s",
        str(LUA_SCRIPT),
        f"http://{HOST}:{port}{PATH}",
    ]
    done = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=duration + 60,
        check=False,
        env={**os.environ, "BENCH_MODEL": model},
    )
    for line in done.stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            result: dict[str, Any] = json.loads(line.removeprefix("BENCH_JSON "))
            result["errors"] = sum(
                result[k]
                for k in (
                    "connect_errors",
                    "read_errors",
                    "write_errors",
                    "status_errors",
                    "timeouts",
                )
            )
            result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
            return result
    raise BenchError(f"wrk failed ({done.returncode}): {done.stderr.strip() or done.stdout[-300:]}")


def loadgen(
    port: int,
    command: str,
    *args: str,
    model: str = DEFAULT_MODEL,
    timeout: float,
    on_mark: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run ``tests.bench.loadgen COMMAND`` in its own process; its JSON result.

    ``on_mark`` is called with NAME for each ``MARK NAME`` line it writes on stderr,
    when it writes it."""
    argv = [
        sys.executable,
        "-m",
        "tests.bench.loadgen",
        "--port",
        str(port),
        "--model",
        model,
        command,
        *args,
    ]
    proc = subprocess.Popen(
        argv, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    tail: collections.deque[str] = collections.deque(maxlen=20)

    def drain(stream: IO[str]) -> None:
        for line in stream:
            if line.startswith("MARK ") and on_mark is not None:
                on_mark(line.removeprefix("MARK ").strip())
            else:
                tail.append(line)

    assert proc.stdout is not None and proc.stderr is not None
    reader = threading.Thread(target=drain, args=(proc.stderr,), daemon=True)
    reader.start()
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    try:
        out = proc.stdout.read()
        proc.wait()
    finally:
        timer.cancel()
    reader.join(5)
    if proc.returncode != 0:
        raise BenchError(f"loadgen {command} failed ({proc.returncode}): {''.join(tail)[-500:]}")
    result: dict[str, Any] = json.loads(out)
    return result


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def sanity(target: Target, port: int, opts: argparse.Namespace) -> dict[str, int]:
    """Check ``target`` answers as it should; the ``data:`` events its streams must bring."""
    problems: list[str | None] = []
    expect: dict[str, int] = {}
    if target.mode == "translated":
        for key, model, events in (
            ("streams", TRANSLATED_MODEL, opts.stream_events),
            ("ttfe", SLOW_TRANSLATED_MODEL, TTFE_EVENTS),
            ("per_read", PER_READ_TRANSLATED_MODEL, opts.per_read_events),
        ):
            problem, count = asyncio.run(check_translated(HOST, port, model=model, events=events))
            problems.append(problem)
            expect[key] = count
    elif target.mode in WRK_ONLY:
        problems.append(asyncio.run(check(HOST, port, model=ROUTED_MODEL)))
        problems.append(asyncio.run(check_unknown_model(HOST, port)))
        if target.mode in POLICIES:
            problems.append(asyncio.run(check_policies(HOST, port, model=ROUTED_MODEL)))
    else:  # direct, passthrough, many
        problems.append(asyncio.run(check(HOST, port)))
        if target.mode == "direct":
            problems.append(asyncio.run(check_anthropic_upstream(HOST, port)))
    for problem in problems:
        if problem is not None:
            raise BenchError(f"sanity check failed: {problem}")
    return expect


def _refused(target: Target, run: dict[str, Any]) -> None:
    """A policies target that refused wrk's requests (401, 429) measured refusals: fail."""
    if target.mode in POLICIES and run["status_errors"]:
        raise BenchError(
            f"{run['status_errors']} of {run['requests']} wrk requests were not 2xx "
            "(refused by auth or rate_limit? post.lua must send the bench key)"
        )


def start_receiver() -> OtlpReceiver:
    """An OTLP/HTTP receiver for a tracing target (BenchError if it cannot be had)."""
    try:
        from tests.support.otlp_receiver import OtlpReceiver  # only if used
    except ImportError as exc:  # opentelemetry-proto: pip install -e '.[test]'
        raise BenchError(f"no OTLP receiver: {exc}") from exc
    return OtlpReceiver()


def _wait_until(ready: Callable[[], bool], timeout: float) -> bool:
    """Poll ``ready`` until it holds (True) or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def scrape_metrics(port: int, path: str = "/metrics") -> tuple[int, float]:
    """``GET path``: its status and the sum of its ``sansproxy_requests_total`` samples."""
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read().decode("utf-8", "replace")
    finally:
        conn.close()
    total = 0.0
    for line in body.splitlines():
        name, _, rest = line.partition("{")
        if name == "sansproxy_requests_total" and rest:
            total += float(rest.rpartition("} ")[2].split()[0])
    return response.status, total


def exporter_check(
    target: Target,
    port: int,
    requests: int,
    *,
    server: Server | None,
    receiver: OtlpReceiver | None,
) -> dict[str, Any]:
    """That the exporter of an exporter target ran during its phases, in which wrk had
    ``requests`` answered (the sanity checks and the warm-up came on top): BenchError if
    not. ``missing``: requests it has no trace of (dropped, most likely)."""
    out: dict[str, Any] = {"requests": requests}
    if target.mode == "none":  # nothing to export: the noise floor
        out["missing"] = 0
        return out
    if target.mode == "access-log":
        if server is None:
            raise BenchError("access-log: no server output to count")
        _wait_until(lambda: server.counted >= requests, 5.0)  # the queue's last lines
        out["lines"] = seen = server.counted
        what = f"{seen:,} access lines"
    elif target.mode == "metrics":
        status, counted = scrape_metrics(port)
        if status != 200:
            raise BenchError(f"metrics: GET /metrics answered {status}")
        out["status"] = status
        out["requests_total"] = counted
        seen = int(counted)
        what = f"GET /metrics {status}, sansproxy_requests_total {counted:,.0f}"
    elif target.mode == "tracing":
        if receiver is None:
            raise BenchError("tracing: no OTLP receiver")

        def server_spans() -> int:
            return sum(1 for span in receiver.spans if span.kind == "SERVER")

        _wait_until(lambda: server_spans() >= requests, SPANS_WAIT_S)
        spans = receiver.spans
        out["spans"] = len(spans)
        out["server_spans"] = seen = server_spans()
        out["exports"] = len(receiver.exports)
        if receiver.errors:
            raise BenchError(f"tracing: the receiver could not decode: {receiver.errors[0]}")
        what = f"{len(spans):,} spans ({seen:,} SERVER) in {out['exports']:,} exports"
    else:
        raise BenchError(f"{target.mode} is not an exporter target")
    if seen == 0:
        raise BenchError(f"{target.mode}: nothing exported ({what}) for {requests:,} requests")
    out["missing"] = max(requests - seen, 0)
    missing = f", {out['missing']:,} MISSING (dropped?)" if out["missing"] else ""
    _log(f"  {target.name} check: {what} for {requests:,} wrk requests{missing}")
    return out


def measure(
    target: Target,
    port: int,
    pid: int,
    upstream_pid: int,
    opts: argparse.Namespace,
    *,
    base_port: int | None = None,
    base_pid: int | None = None,
    redis_pid: int | None = None,
) -> dict[str, Any]:
    """The target's phases; ``pid`` is the process to account.

    direct and pass-through: all; routed and policies: the wrk phases (policies:
    sending the bench key, and accounting ``redis_pid`` too, if given);
    translated: the streams, and the time to first event in rounds alternating
    with the pass-through server still listening on ``base_port``, if given;
    exporters: `paired_rounds` with the routed server on ``base_port`` (process
    ``base_pid``), which must be given.
    """
    name = target.name
    expect = sanity(target, port, opts)
    out: dict[str, Any] = {
        "target": name,
        "mode": target.mode,
        "base": target.base,
        "column": target.column,
    }
    c = f"c{opts.connections}"
    phases: list[str] = []
    if target.mode in EXPORTERS:
        if base_port is None or base_pid is None:
            raise BenchError(f"no {target.base} server to measure {target.mode} against")
        out["model"] = ROUTED_MODEL
        out["paired"] = paired_rounds(name, port, pid, opts, base_port=base_port, base_pid=base_pid)
        phases.append("paired")
    elif target.mode != "translated":
        model = ROUTED_MODEL if target.mode in WRK_ONLY else DEFAULT_MODEL
        out["model"] = model
        # post.lua sends the same key; -H says so here, for the targets that need it
        headers = [f"Authorization: Bearer {BENCH_KEY}"] if target.mode in POLICIES else []
        if opts.warmup > 0:
            warm = wrk(
                port,
                connections=opts.connections,
                threads=opts.wrk_threads,
                duration=opts.warmup,
                model=model,
                headers=headers,
            )
            _refused(target, warm)
        for label, conns, threads in (("c1", 1, 1), (c, opts.connections, opts.wrk_threads)):
            runs = []
            for _ in range(opts.repeat):
                with (
                    CpuMeter(pid) as cpu,
                    CpuMeter(upstream_pid) as up_cpu,
                    CpuMeter(redis_pid or pid) as redis_cpu,  # read if redis_pid only
                ):
                    run = wrk(
                        port,
                        connections=conns,
                        threads=threads,
                        duration=opts.duration,
                        model=model,
                        headers=headers,
                    )
                _refused(target, run)
                run["cpu_us_per_req"] = cpu.seconds / max(run["requests"], 1) * 1e6
                run["cpu_util"] = cpu.seconds / cpu.wall
                run["upstream_cpu_util"] = up_cpu.seconds / up_cpu.wall
                if redis_pid is not None:
                    run["redis_cpu_us_per_req"] = redis_cpu.seconds / max(run["requests"], 1) * 1e6
                    run["redis_cpu_util"] = redis_cpu.seconds / redis_cpu.wall
                runs.append(run)
            result = max(runs, key=lambda r: float(r["rps"]))  # best of --repeat: least disturbed
            if len(runs) > 1:
                result["all_rps"] = [r["rps"] for r in runs]
            out[label] = result
            phases.append(label)
            redis = (
                f", redis {result['redis_cpu_us_per_req']:.1f} µs CPU/req"
                if "redis_cpu_us_per_req" in result
                else ""
            )
            _log(
                f"  {name} {label}: {result['rps']:,.0f} req/s, "
                f"p50 {result['p50_us'] / 1000:.3f} ms, p99 {result['p99_us'] / 1000:.3f} ms, "
                f"{result['cpu_us_per_req']:.1f} µs CPU/req{redis}, {result['errors']} errors"
            )
    if target.mode in POLICIES and base_port is not None and base_pid is not None:
        # The row's figure: paired with the routed server, as the exporters are (two
        # phases minutes apart differ by tens of µs on this machine).
        out["paired"] = paired_rounds(name, port, pid, opts, base_port=base_port, base_pid=base_pid)
        phases.append("paired")
    if target.mode not in WRK_ONLY:
        translated = target.mode == "translated"
        stream_model = TRANSLATED_MODEL if translated else DEFAULT_MODEL
        stream_expect = expect.get("streams", opts.stream_events)
        stream_runs = []
        for _ in range(opts.repeat):
            with CpuMeter(pid) as cpu:
                run = loadgen(
                    port,
                    "streams",
                    "--concurrency",
                    str(opts.stream_concurrency),
                    "--events",
                    str(opts.stream_events),
                    "--expect-events",
                    str(stream_expect),
                    "--duration",
                    str(opts.duration),
                    model=stream_model,
                    timeout=opts.duration + 120,
                )
            run["cpu_us_per_event"] = cpu.seconds / max(run["events"], 1) * 1e6
            run["cpu_us_per_stream"] = cpu.seconds / max(run["streams"], 1) * 1e6
            stream_runs.append(run)
        streams = max(stream_runs, key=lambda r: float(r["events_per_s"]))
        out["streams"] = streams
        phases.append("streams")
        _log(
            f"  {name} streams c{opts.stream_concurrency}: "
            f"{streams['streams_per_s']:,.0f} streams/s, {streams['events_per_s']:,.0f} events/s "
            f"({stream_expect}/stream), {streams['cpu_us_per_event']:.1f} µs CPU/event, "
            f"{streams['cpu_us_per_stream']:.0f} µs CPU/stream, {streams['errors']} errors"
        )
        if opts.per_read_streams > 0:
            per_read = slow_streams(
                port,
                pid,
                concurrency=opts.per_read_streams,
                events=opts.per_read_events,
                delay_ms=opts.per_read_delay_ms,
                ramp_s=opts.per_read_ramp_s,
                duration=opts.duration,
                model=PER_READ_TRANSLATED_MODEL if translated else DEFAULT_MODEL,
                expect=expect.get("per_read", opts.per_read_events),
            )
            out["per_read"] = per_read
            phases.append("per_read")
            _log(f"  {name} per read: {_slow_summary(per_read)}")
        paired = translated and base_port is not None
        pair = ["--pair", f"{base_port}:{DEFAULT_MODEL}:{TTFE_EVENTS}"] if paired else []
        requests = opts.ttfe_pairs if paired else opts.ttfe_requests
        ttfe = loadgen(
            port,
            "ttfe",
            "--requests",
            str(requests),
            "--events",
            str(TTFE_EVENTS),
            "--expect-events",
            str(expect.get("ttfe", TTFE_EVENTS)),
            "--delay-ms",
            str(opts.ttfe_delay_ms),
            *pair,
            model=SLOW_TRANSLATED_MODEL if translated else DEFAULT_MODEL,
            timeout=(2 if paired else 1) * requests * (opts.ttfe_delay_ms * 3 / 1000 + 10) + 60,
        )
        out["ttfe"] = ttfe
        phases.append("ttfe")
        median = ttfe["median_ms"]
        _log(
            f"  {name} time to first event: median "
            f"{'-' if median is None else f'{median:.3f}'} ms, {ttfe['errors']} errors"
        )
        if "pair" in ttfe:
            pair_median = ttfe["pair"]["median_ms"]
            added = ttfe["paired_added_median_ms"]
            _log(
                f"  {name} vs {target.base} (alternating): pass-through median "
                f"{'-' if pair_median is None else f'{pair_median:.3f}'} ms, added "
                f"{'-' if added is None else f'{added:+.3f}'} ms (median of "
                f"{ttfe['pairs']} paired differences), {ttfe['pair']['errors']} errors"
            )
    if target.mode == "direct" and opts.many_clients:
        out["many"] = many_clients(name, port, pid, opts)
        phases.extend(f"many.{k}" for k in out["many"])
    out["rss_mb"], out["peak_rss_mb"] = memory_mb(pid)
    out["errors"] = sum(int(_get(out, *phase.split("."), "errors")) for phase in phases) + int(
        _get(out, "ttfe", "pair", "errors") or 0
    )
    return out


def settle(pid: int) -> float:
    """The CPU seconds ``pid``'s tree goes on using from now until it is idle (at most
    a clock tick in ``SETTLE_WINDOW_S``), or ``SETTLE_TIMEOUT_S`` passes."""
    start = last = cpu_seconds(pid)
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while time.monotonic() < deadline:
        time.sleep(SETTLE_WINDOW_S)  # the window itself: nothing to poll for
        now = cpu_seconds(pid)
        if now - last <= 1.5 / CLK_TCK:
            return now - start
        last = now
    return last - start


def paired_rounds(
    name: str, port: int, pid: int, opts: argparse.Namespace, *, base_port: int, base_pid: int
) -> dict[str, Any]:
    """An exporter target (``port``, process ``pid``) against its routed target
    (``base_port``, ``base_pid``), both listening: a wrk warm-up on each, then
    ``--exporter-rounds`` rounds of wrk at ``--connections`` for ``--exporter-slice-s``
    on each, alternating which goes first, each server's CPU read over its own slice
    and until it is idle again (`settle`: ``tail_cpu_s``), before the other's starts.

    ``added_cpu_us_per_req`` is the median over the rounds of (exporter - routed) CPU
    per request, which machine noise that drifts over seconds mostly cancels out of;
    ``..._min``/``..._max`` the spread of those differences. ``requests``: what the
    exporter's slices had answered (for its check)."""
    conns = opts.connections
    threads = opts.wrk_threads

    def load(side_port: int, seconds: int) -> dict[str, Any]:
        return wrk(
            side_port,
            connections=conns,
            threads=threads,
            duration=seconds,
            model=ROUTED_MODEL,
        )

    if opts.warmup > 0:
        load(base_port, opts.warmup)
        load(port, opts.warmup)
    sides = {"routed": (base_port, base_pid), "exporter": (port, pid)}
    rounds: list[dict[str, Any]] = []
    for i in range(opts.exporter_rounds):
        order = ("routed", "exporter") if i % 2 == 0 else ("exporter", "routed")
        got: dict[str, Any] = {"first": order[0]}
        for side in order:
            side_port, side_pid = sides[side]
            with CpuMeter(side_pid) as cpu:
                run = load(side_port, opts.exporter_slice_s)
            tail = settle(side_pid)
            got[side] = {
                "requests": run["requests"],
                "rps": run["rps"],
                "p50_us": run["p50_us"],
                "p99_us": run["p99_us"],
                "errors": run["errors"],
                "cpu_s": cpu.seconds,
                "tail_cpu_s": tail,
                "cpu_util": cpu.seconds / max(cpu.wall, 1e-9),
                "cpu_us_per_req": (cpu.seconds + tail) / max(run["requests"], 1) * 1e6,
            }
        added = got["exporter"]["cpu_us_per_req"] - got["routed"]["cpu_us_per_req"]
        got["added_cpu_us_per_req"] = added
        rounds.append(got)
        _log(
            f"  {name} round {i + 1}/{opts.exporter_rounds} ({order[0]} first): "
            f"routed {got['routed']['cpu_us_per_req']:.1f} µs CPU/req "
            f"({got['routed']['rps']:,.0f} req/s), "
            f"{name.rsplit(' ', 1)[-1]} {got['exporter']['cpu_us_per_req']:.1f} "
            f"({got['exporter']['rps']:,.0f} req/s): {added:+.1f} µs"
        )

    def median(side: str, key: str) -> float:
        return statistics.median(float(r[side][key]) for r in rounds)

    diffs = [float(r["added_cpu_us_per_req"]) for r in rounds]
    p50_diffs = [float(r["exporter"]["p50_us"] - r["routed"]["p50_us"]) for r in rounds]
    out: dict[str, Any] = {
        "rounds": rounds,
        "slice_s": opts.exporter_slice_s,
        "connections": conns,
        "requests": sum(int(r["exporter"]["requests"]) for r in rounds),
        "routed_requests": sum(int(r["routed"]["requests"]) for r in rounds),
        "errors": sum(int(r[side]["errors"]) for r in rounds for side in sides),
        "rps": median("exporter", "rps"),
        "routed_rps": median("routed", "rps"),
        "cpu_us_per_req": median("exporter", "cpu_us_per_req"),
        "routed_cpu_us_per_req": median("routed", "cpu_us_per_req"),
        "added_cpu_us_per_req": statistics.median(diffs),
        "added_cpu_us_per_req_min": min(diffs),
        "added_cpu_us_per_req_max": max(diffs),
        "added_p50_ms": statistics.median(p50_diffs) / 1000,
    }
    _log(
        f"  {name} vs routed, c{conns}, {len(rounds)} rounds of {opts.exporter_slice_s} s "
        f"alternating: {out['added_cpu_us_per_req']:+.1f} µs CPU/req (median of the "
        f"differences; {min(diffs):+.1f} to {max(diffs):+.1f}), routed "
        f"{out['routed_cpu_us_per_req']:.1f}, {out['errors']} errors"
    )
    return out


def slow_streams(
    port: int,
    pid: int,
    *,
    concurrency: int,
    events: int,
    delay_ms: float,
    ramp_s: float,
    duration: float,
    model: str = DEFAULT_MODEL,
    expect: int | None = None,
) -> dict[str, Any]:
    """``loadgen slow-streams`` (each event in its own upstream write) with the server's
    CPU per relayed event and its peak RSS over the phase."""
    rss_before = memory_mb(pid)[0]
    overflows = listen_overflows()
    with CpuMeter(pid) as cpu, RssSampler(pid) as rss:
        run = loadgen(
            port,
            "slow-streams",
            "--concurrency",
            str(concurrency),
            "--events",
            str(events),
            "--delay-ms",
            f"{delay_ms:g}",
            "--ramp-s",
            f"{ramp_s:g}",
            "--duration",
            f"{duration:g}",
            "--expect-events",
            str(events if expect is None else expect),
            model=model,
            timeout=duration + ramp_s + events * delay_ms / 1000 * 2 + 120,
        )
    run["cpu_s"] = cpu.seconds
    run["cpu_util"] = cpu.seconds / max(cpu.wall, 1e-9)
    run["cpu_us_per_event"] = cpu.seconds / max(run["events"], 1) * 1e6
    run["cpu_us_per_stream"] = cpu.seconds / max(run["streams"], 1) * 1e6
    # per event of the upstream's (a translated stream brings a role and a finish chunk more)
    run["cpu_us_per_upstream_event"] = run["cpu_us_per_stream"] / max(events, 1)
    run["listen_overflows"] = listen_overflows() - overflows if overflows >= 0 else None
    run["rss_before_mb"] = rss_before
    run["peak_rss_mb"] = rss.peak_mb
    run["kb_per_stream"] = (rss.peak_mb - rss_before) * 1024 / max(run["peak_in_flight"], 1)
    return run


def _slow_summary(run: dict[str, Any]) -> str:
    return (
        f"{run['streams']:,} streams of {run['events_per_stream']} events "
        f"{run['delay_ms']:g} ms apart, {run['peak_in_flight']:,} at once: "
        f"{run['events_per_s']:,.0f} events/s, {run['cpu_us_per_event']:.1f} µs CPU/event "
        f"(server {run['cpu_util']:.0%} of a core, load client {run['client_cpu_util']:.0%}), "
        f"ttfe p50 {_num(run['ttfe_p50_ms'], '.2f')} p99 {_num(run['ttfe_p99_ms'], '.2f')} ms, "
        f"peak RSS {run['peak_rss_mb']:.0f} MB, {run['errors']} errors, "
        f"{_num(run['listen_overflows'], 'd')} accept-queue overflows"
        + (f" {run['error_kinds']}" if run["errors"] else "")
    )


def many_clients(
    name: str,
    port: int,
    pid: int,
    opts: argparse.Namespace,
    phases: tuple[str, ...] = ("slow", "idle"),
) -> dict[str, Any]:
    """The many-clients ``phases`` on ``port``: ``slow``, ``--many-streams`` slow streams;
    ``idle``, ``--idle-connections`` idle keep-alive connections held."""
    out: dict[str, Any] = {}
    if opts.many_streams > 0 and "slow" in phases:
        slow = slow_streams(
            port,
            pid,
            concurrency=opts.many_streams,
            events=opts.many_events,
            delay_ms=opts.many_delay_ms,
            ramp_s=opts.many_ramp_s,
            duration=0,
        )
        out["slow"] = slow
        _log(f"  {name} slow streams: {_slow_summary(slow)}")
        time.sleep(0.5)  # the closes
    if opts.idle_connections > 0 and "idle" in phases:
        held_mb: list[float] = []
        rss_before = memory_mb(pid)[0]
        overflows = listen_overflows()
        with RssSampler(pid) as rss:
            idle = loadgen(
                port,
                "idle",
                "--connections",
                str(opts.idle_connections),
                "--hold-s",
                f"{opts.idle_hold_s:g}",
                timeout=opts.idle_hold_s + opts.idle_connections / 100 + 120,
                on_mark=lambda mark: held_mb.append(memory_mb(pid)[0]),
            )
        idle["listen_overflows"] = listen_overflows() - overflows if overflows >= 0 else None
        idle["rss_before_mb"] = rss_before
        idle["rss_held_mb"] = held_mb[0] if held_mb else None
        idle["peak_rss_mb"] = rss.peak_mb
        idle["kb_per_connection"] = (
            None
            if not held_mb or not idle["held"]
            else (held_mb[0] - rss_before) * 1024 / idle["held"]
        )
        out["idle"] = idle
        _log(
            f"  {name} idle: {idle['held']:,} of {idle['connections']:,} connections held "
            f"{idle['hold_s']:g} s (opened in {idle['open_s']:.1f} s), "
            f"{idle['probes_answered']}/{idle['probes']} probes answered, RSS held "
            f"{_num(idle['rss_held_mb'], '.0f')} MB, {idle['errors']} errors, "
            f"{_num(idle['listen_overflows'], 'd')} accept-queue overflows"
            + (f" {idle['error_kinds']}" if idle["errors"] else "")
        )
    return out


def measure_many(target: Target, port: int, pid: int, opts: argparse.Namespace) -> dict[str, Any]:
    """A fresh server for one many-clients phase: ``many``, the slow streams; ``idle``,
    the idle connections (apart, so that neither's memory counts in the other's)."""
    sanity(target, port, opts)
    out: dict[str, Any] = {
        "target": target.name,
        "mode": target.mode,
        "base": target.base,
        "column": target.column,
    }
    phase = "idle" if target.mode == "idle" else "slow"
    out["many"] = many_clients(target.column, port, pid, opts, (phase,))
    out["rss_mb"], out["peak_rss_mb"] = memory_mb(pid)
    out["errors"] = sum(int(phase["errors"]) for phase in out["many"].values())
    return out


# -- table ------------------------------------------------------------------------


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _get(row: dict[str, Any], *keys: str) -> Any:
    value: Any = row
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def _render(header: list[str], body: list[list[str]]) -> str:
    """Aligned columns: the first left-aligned, the others right-aligned; a line whose
    other cells are all empty is a section title, printed alone (and not measured)."""

    def section(line: list[str]) -> bool:
        return not any(line[1:])

    measured = [header, *(line for line in body if not section(line))]
    widths = [max(len(line[i]) for line in measured) for i in range(len(header))]

    def fmt(line: list[str]) -> str:
        if section(line):
            return line[0]
        cells = [line[0].ljust(widths[0])]
        cells += [cell.rjust(width) for cell, width in zip(line[1:], widths[1:], strict=True)]
        return "  ".join(cells).rstrip()

    rule = "-" * len(fmt(header))
    return "\n".join([fmt(header), rule, *(fmt(line) for line in body)])


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _vs_routed(
    row: dict[str, Any], routed: dict[str, Any], passthrough: dict[str, Any] | None, phase: str
) -> dict[str, Any]:
    """A wrk phase of a row against its adapter's routed row: what it adds per request,
    and that as a share of the pass-through's CPU per request."""
    rps = _float(_get(row, phase, "rps"))
    routed_rps = _float(_get(routed, phase, "rps"))
    added_cpu = _diff(
        _float(_get(row, phase, "cpu_us_per_req")),
        _float(_get(routed, phase, "cpu_us_per_req")),
    )
    pass_cpu = _float(_get(passthrough or {}, phase, "cpu_us_per_req"))
    added_p50 = _diff(_float(_get(row, phase, "p50_us")), _float(_get(routed, phase, "p50_us")))
    return {
        "rps": rps,
        "routed_rps": routed_rps,
        "rps_ratio": _ratio(rps, routed_rps),
        "cpu_us_per_req": _float(_get(row, phase, "cpu_us_per_req")),
        "routed_cpu_us_per_req": _float(_get(routed, phase, "cpu_us_per_req")),
        "added_cpu_us_per_req": added_cpu,
        "redis_cpu_us_per_req": _float(_get(row, phase, "redis_cpu_us_per_req")),
        "passthrough_cpu_us_per_req": pass_cpu,
        "added_cpu_share_of_passthrough": _ratio(added_cpu, pass_cpu),
        "added_p50_ms": None if added_p50 is None else added_p50 / 1000,
    }


def _policies_entry(
    row: dict[str, Any], routed: dict[str, Any], passthrough: dict[str, Any] | None, c: str
) -> dict[str, Any]:
    """A policies row against its adapter's routed row (and pass-through, for the share)."""
    entry: dict[str, Any] = {
        "target": row["target"],
        "base": routed["target"],
        "passthrough": None if passthrough is None else passthrough["target"],
        "backend": "redis" if row.get("mode") == "policies-redis" else "memory",
    }
    for phase in ("c1", c):
        entry[phase] = _vs_routed(row, routed, passthrough, phase)
    paired: dict[str, Any] | None = row.get("paired")
    if paired is not None:  # the median of paired rounds, not two phases' difference
        measured = entry[c]
        added = _float(paired.get("added_cpu_us_per_req"))
        measured["paired"] = True
        measured["phases_added_cpu_us_per_req"] = measured["added_cpu_us_per_req"]
        measured["added_cpu_us_per_req"] = added
        measured["added_cpu_us_per_req_min"] = _float(paired.get("added_cpu_us_per_req_min"))
        measured["added_cpu_us_per_req_max"] = _float(paired.get("added_cpu_us_per_req_max"))
        measured["added_cpu_share_of_passthrough"] = _ratio(
            added, measured["passthrough_cpu_us_per_req"]
        )
    share = entry[c]["added_cpu_share_of_passthrough"]
    entry["target_share"] = POLICIES_TARGET
    entry["within_target"] = (
        None if share is None or entry["backend"] != "memory" else share <= POLICIES_TARGET
    )
    return entry


def _exporter_entry(
    row: dict[str, Any], routed: dict[str, Any], passthrough: dict[str, Any] | None, c: str
) -> dict[str, Any]:
    """An exporter row's paired rounds against its adapter's routed server (the share:
    of the pass-through row's CPU per request at ``c``), with its check (what the
    exporter was seen to export)."""
    mode = row["mode"]
    paired: dict[str, Any] = row.get("paired") or {}
    entry: dict[str, Any] = {
        "target": row["target"],
        "base": routed["target"],
        "passthrough": None if passthrough is None else passthrough["target"],
        "exporter": mode,
        "check": row.get("exporter"),
    }
    added = _float(paired.get("added_cpu_us_per_req"))
    pass_cpu = _float(_get(passthrough or {}, c, "cpu_us_per_req"))
    rps = _float(paired.get("rps"))
    routed_rps = _float(paired.get("routed_rps"))
    entry[c] = {
        "paired": True,
        "rounds": len(paired.get("rounds") or ()),
        "slice_s": paired.get("slice_s"),
        "rps": rps,
        "routed_rps": routed_rps,
        "rps_ratio": _ratio(rps, routed_rps),
        "cpu_us_per_req": _float(paired.get("cpu_us_per_req")),
        "routed_cpu_us_per_req": _float(paired.get("routed_cpu_us_per_req")),
        "added_cpu_us_per_req": added,
        "added_cpu_us_per_req_min": _float(paired.get("added_cpu_us_per_req_min")),
        "added_cpu_us_per_req_max": _float(paired.get("added_cpu_us_per_req_max")),
        "passthrough_cpu_us_per_req": pass_cpu,
        "added_cpu_share_of_passthrough": _ratio(added, pass_cpu),
        "added_p50_ms": _float(paired.get("added_p50_ms")),
    }
    share = entry[c]["added_cpu_share_of_passthrough"]
    target = EXPORTER_TARGETS.get(mode)
    entry["target_share"] = target
    entry["within_target"] = None if share is None or target is None else share <= target
    return entry


def gateway_comparison(rows: list[dict[str, Any]], connections: int) -> dict[str, Any]:
    """Routed and translated rows against their adapter's pass-through row, policies and
    exporter rows against their adapter's routed row, same run.

    Costs are the differences: ``+`` means the gateway path costs that much more.
    """
    by_name = {r["target"]: r for r in rows if "error" not in r and "skipped" not in r}
    c = f"c{connections}"
    routed: list[dict[str, Any]] = []
    translated: list[dict[str, Any]] = []
    policies: list[dict[str, Any]] = []
    exporters: list[dict[str, Any]] = []
    for row in rows:
        base = by_name.get(row.get("base") or "")
        if "error" in row or "skipped" in row or base is None:
            continue
        if row.get("mode") in POLICIES:
            passthrough = by_name.get(base.get("base") or "")
            policies.append(_policies_entry(row, base, passthrough, c))
        elif row.get("mode") in EXPORTERS:
            passthrough = by_name.get(base.get("base") or "")
            exporters.append(_exporter_entry(row, base, passthrough, c))
        elif row.get("mode") == "routed":
            entry: dict[str, Any] = {"target": row["target"], "base": base["target"]}
            for phase in ("c1", c):
                rps = _float(_get(row, phase, "rps"))
                base_rps = _float(_get(base, phase, "rps"))
                cpu = _float(_get(row, phase, "cpu_us_per_req"))
                base_cpu = _float(_get(base, phase, "cpu_us_per_req"))
                added_p50 = _diff(
                    _float(_get(row, phase, "p50_us")), _float(_get(base, phase, "p50_us"))
                )
                entry[phase] = {
                    "rps": rps,
                    "passthrough_rps": base_rps,
                    "rps_ratio": _ratio(rps, base_rps),
                    "cpu_us_per_req": cpu,
                    "passthrough_cpu_us_per_req": base_cpu,
                    "added_cpu_us_per_req": _diff(cpu, base_cpu),
                    "added_p50_ms": None if added_p50 is None else added_p50 / 1000,
                }
            routed.append(entry)
        elif row.get("mode") == "translated":
            eps = _float(_get(row, "streams", "events_per_s"))
            base_eps = _float(_get(base, "streams", "events_per_s"))
            cpu_ev = _float(_get(row, "streams", "cpu_us_per_event"))
            base_cpu_ev = _float(_get(base, "streams", "cpu_us_per_event"))
            cpu_st = _float(_get(row, "streams", "cpu_us_per_stream"))
            base_cpu_st = _float(_get(base, "streams", "cpu_us_per_stream"))
            deltas = _get(row, "streams", "upstream_events_per_stream")
            added_st = _diff(cpu_st, base_cpu_st)
            ttfe = _float(_get(row, "ttfe", "median_ms"))
            paired = _get(row, "ttfe", "pair") is not None
            if paired:  # the same rounds, alternating: the better comparison
                base_ttfe = _float(_get(row, "ttfe", "pair", "median_ms"))
                added_ttfe = _float(_get(row, "ttfe", "paired_added_median_ms"))
            else:
                base_ttfe = _float(_get(base, "ttfe", "median_ms"))
                added_ttfe = _diff(ttfe, base_ttfe)
            translated.append(
                {
                    "target": row["target"],
                    "base": base["target"],
                    "events_per_s": eps,
                    "passthrough_events_per_s": base_eps,
                    "events_per_s_ratio": _ratio(eps, base_eps),
                    "events_per_stream": _get(row, "streams", "events_per_stream"),
                    "passthrough_events_per_stream": _get(base, "streams", "events_per_stream"),
                    "cpu_us_per_event": cpu_ev,
                    "passthrough_cpu_us_per_event": base_cpu_ev,
                    "added_cpu_us_per_event": _diff(cpu_ev, base_cpu_ev),
                    "cpu_us_per_stream": cpu_st,
                    "passthrough_cpu_us_per_stream": base_cpu_st,
                    "added_cpu_us_per_stream": added_st,
                    "added_cpu_us_per_upstream_event": (
                        None if added_st is None or not deltas else added_st / deltas
                    ),
                    "ttfe_median_ms": ttfe,
                    "passthrough_ttfe_median_ms": base_ttfe,
                    "added_ttfe_ms": added_ttfe,
                    "ttfe_paired": paired,
                    "added_ttfe_min_ms": _diff(
                        _float(_get(row, "ttfe", "min_ms")),
                        _float(_get(row, "ttfe", "pair", "min_ms"))
                        if paired
                        else _float(_get(base, "ttfe", "min_ms")),
                    ),
                    "per_read_cpu_us_per_upstream_event": _float(
                        _get(row, "per_read", "cpu_us_per_upstream_event")
                    ),
                    "passthrough_per_read_cpu_us_per_upstream_event": _float(
                        _get(base, "per_read", "cpu_us_per_upstream_event")
                    ),
                    "added_per_read_cpu_us_per_upstream_event": _diff(
                        _float(_get(row, "per_read", "cpu_us_per_upstream_event")),
                        _float(_get(base, "per_read", "cpu_us_per_upstream_event")),
                    ),
                    "ttfe_target_ms": TTFE_TARGET_MS,
                    "ttfe_within_target": None
                    if added_ttfe is None
                    else added_ttfe <= TTFE_TARGET_MS,
                }
            )
    return {
        "routed": routed,
        "translated": translated,
        "policies": policies,
        "exporters": exporters,
    }


def _bound(mode: Mode) -> str:
    """`` <= N %``: an exporter's target, if it has one."""
    target = EXPORTER_TARGETS[mode]
    return "" if target is None else f" <= {target * 100:.0f} %"


def summary(
    rows: list[dict[str, Any]], comparison: dict[str, Any], opts: argparse.Namespace
) -> str:
    """THE table: a line per figure (in sections), a column per adapter, direct first.

    A cell is the figure, with its ratio (``x``) or difference (``+``) to direct in the
    same run; the gateway's lines are against the same adapter's pass-through or
    routed target. ``-``: not measured; ``n/a``, ``skipped``, ``FAILED``: the target's.
    """
    c = f"c{opts.connections}"
    columns: list[str] = []
    by: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows:
        col = row.get("column") or row["target"]
        if col not in columns:
            columns.append(col)
        by[col, row.get("mode") or "passthrough"] = row
    entries = {
        e["target"]: e
        for kind in ("routed", "translated", "policies", "exporters")
        for e in comparison[kind]
    }
    direct = by.get(("direct", "direct"))

    def status(row: dict[str, Any] | None) -> str | None:
        if row is None:
            return "-"
        if "error" in row:
            return "FAILED"
        if "skipped" in row:
            return "n/a" if str(row["skipped"]).startswith("not available") else "skipped"
        return None

    def main(col: str) -> dict[str, Any] | None:
        return by.get((col, "direct")) or by.get((col, "passthrough"))

    def many(col: str) -> dict[str, Any] | None:
        return direct if col == "direct" else by.get((col, "many")) or unusable(col)

    def idle(col: str) -> dict[str, Any] | None:
        return direct if col == "direct" else by.get((col, "idle")) or unusable(col)

    def unusable(col: str) -> dict[str, Any] | None:
        """The column's main row if it failed or was skipped (then so is all the rest)."""
        row = main(col)
        return row if row is not None and status(row) is not None else None

    Cell = Callable[[str], str]

    def figure(
        pick: Callable[[str], dict[str, Any] | None],
        keys: tuple[str, ...],
        fmt: str,
        *,
        scale: float = 1.0,
        vs: Literal["ratio", "added", None] = None,
        vs_fmt: str = "",
        base: Callable[[str], dict[str, Any] | None] | None = None,
    ) -> Cell:
        """A figure at ``keys`` of the row ``pick`` finds, and vs direct's (or ``base``'s)."""

        def cell(col: str) -> str:
            row = pick(col)
            bad = status(row)
            if bad is not None or row is None:
                return bad or "-"
            value = _float(_get(row, *keys))
            if value is None:
                return "-"
            text = format(value * scale, fmt)
            other_row = (base or pick)("direct") if col != "direct" else None
            other = None if other_row is None else _float(_get(other_row, *keys))
            if vs == "ratio" and other:
                text += f" ({value / other:{vs_fmt or '.3f'}}x)"
            elif vs == "added" and other is not None:
                text += f" ({(value - other) * scale:{vs_fmt or '+.3f'}})"
            return text

        return cell

    def gateway(
        mode: Mode,
        value: Callable[[dict[str, Any]], str],
    ) -> Cell:
        """A gateway figure of the column's ``mode`` target, from its comparison entry."""

        def cell(col: str) -> str:
            if col == "direct":
                return "—"
            row = by.get((col, mode)) or unusable(col)
            bad = status(row)
            if bad is not None or row is None:
                return bad or "-"
            entry = entries.get(row["target"])
            return "-" if entry is None else value(entry)

        return cell

    def process(col: str) -> str:
        row = main(col)
        bad = status(row)
        if bad is not None or row is None:
            return bad or "-"
        return (
            f"{_num(row.get('rss_idle_mb'), '.0f')} / {_num(row.get('rss_mb'), '.0f')} / "
            f"{_num(row.get('peak_rss_mb'), '.0f')}"
        )

    def errors(col: str) -> str:
        mine = [r for r in rows if (r.get("column") or r["target"]) == col]
        failed = sum("error" in r for r in mine)
        total = sum(int(r.get("errors", 0)) for r in mine)
        return str(total) + (f" ({failed} FAILED)" if failed else "")

    def cpu_use(col: str) -> str:
        row = main(col)
        bad = status(row)
        if bad is not None or row is None:
            return bad or "-"
        server = _float(_get(row, c, "cpu_util"))
        upstream = _float(_get(row, c, "upstream_cpu_util"))
        if col == "direct":
            return _num(None if server is None else server * 100, ".0f") + " %"
        return (
            f"{_num(None if server is None else server * 100, '.0f')} / "
            f"{_num(None if upstream is None else upstream * 100, '.0f')} %"
        )

    def slow_count(col: str) -> str:
        row = many(col)
        bad = status(row)
        if bad is not None or row is None:
            return bad or "-"
        slow = _get(row, "many", "slow")
        if slow is None:
            return "-"
        return f"{slow['errors']} / {slow['streams']:,} ({slow['peak_in_flight']:,})"

    def idle_count(col: str) -> str:
        row = idle(col)
        bad = status(row)
        if bad is not None or row is None:
            return bad or "-"
        run = _get(row, "many", "idle")
        if run is None:
            return "-"
        return f"{run['held']:,} / {run['probes_answered']} of {run['probes']}"

    def rss_and_per(phase: str, key: str, per: str) -> Cell:
        def cell(col: str) -> str:
            row = (idle if phase == "idle" else many)(col)
            bad = status(row)
            if bad is not None or row is None:
                return bad or "-"
            run = _get(row, "many", phase)
            if run is None:
                return "-"
            return f"{_num(run[key], '.0f')} ({_num(run[per], '.1f')})"

        return cell

    def translated_ttfe(e: dict[str, Any]) -> str:
        ok = {True: "yes", False: "NO", None: "-"}[e["ttfe_within_target"]]
        return f"{_num(e['added_ttfe_ms'], '+.3f')} ({ok})"

    def policies(backend: str, value: Callable[[dict[str, Any]], str]) -> Callable[..., str]:
        def pick(e: dict[str, Any]) -> str:
            return value(e) if e["backend"] == backend else "-"

        return pick

    def spread(e: dict[str, Any]) -> str:
        """`` [low..high]``: a paired row's smallest and largest difference."""
        if not e[c].get("paired"):
            return ""
        low, high = e[c]["added_cpu_us_per_req_min"], e[c]["added_cpu_us_per_req_max"]
        return f" [{_num(low, '+.0f')}..{_num(high, '+.0f')}]"

    def share(e: dict[str, Any]) -> str:
        fraction = e[c]["added_cpu_share_of_passthrough"]
        return (
            f"{_num(e[c]['added_cpu_us_per_req'], '+.1f')} "
            f"({_num(None if fraction is None else fraction * 100, '.0f')} %){spread(e)}"
        )

    def exporter(e: dict[str, Any]) -> str:
        missing = int(_get(e, "check", "missing") or 0)
        requests = int(_get(e, "check", "requests") or 0)
        fraction = e[c]["added_cpu_share_of_passthrough"]
        ok = {True: ", yes", False: ", NO", None: ""}[e["within_target"]]
        low, high = e[c]["added_cpu_us_per_req_min"], e[c]["added_cpu_us_per_req_max"]
        return (
            f"{_num(e[c]['added_cpu_us_per_req'], '+.1f')} "
            f"({_num(None if fraction is None else fraction * 100, '.1f')} %{ok}) "
            f"[{_num(low, '+.0f')}..{_num(high, '+.0f')}]"
            + (f", {missing / requests:.0%} missing" if missing and requests else "")
        )

    def exporter_label(mode: Mode, what: str) -> str:
        return f"{what}: +CPU/request {c} µs (% pass{_bound(mode)}) [spread]"

    pr = (
        f"{opts.per_read_streams:,} streams of {opts.per_read_events} events "
        f"{opts.per_read_delay_ms:g} ms apart"
    )
    lines: list[tuple[str, Cell | None]] = [
        (f"requests: wrk, POST {PATH}", None),
        ("req/s c1", figure(main, ("c1", "rps"), ",.0f", vs="ratio")),
        ("p50 c1 ms (+ vs direct)", figure(main, ("c1", "p50_us"), ".3f", scale=1e-3, vs="added")),
        (f"req/s {c} (x direct)", figure(main, (c, "rps"), ",.0f", vs="ratio")),
        (f"p50 {c} ms (+)", figure(main, (c, "p50_us"), ".3f", scale=1e-3, vs="added")),
        (
            f"p99 {c} ms (+)",
            figure(main, (c, "p99_us"), ".2f", scale=1e-3, vs="added", vs_fmt="+.2f"),
        ),
        ("CPU/request c1 µs", figure(main, ("c1", "cpu_us_per_req"), ".1f")),
        (f"CPU/request {c} µs", figure(main, (c, "cpu_us_per_req"), ".1f")),
        (f"CPU use {c}: server / upstream", cpu_use),
        ("streams", None),
        (
            f"events/s, {opts.stream_events} per write, c{opts.stream_concurrency} (x)",
            figure(main, ("streams", "events_per_s"), ",.0f", vs="ratio"),
        ),
        ("CPU/event µs, many per read", figure(main, ("streams", "cpu_us_per_event"), ".2f")),
        (
            f"events/s, one per read: {pr} (x)",
            figure(main, ("per_read", "events_per_s"), ",.0f", vs="ratio"),
        ),
        ("CPU/event µs, one per read", figure(main, ("per_read", "cpu_us_per_event"), ".2f")),
        (
            "  its ttfe p99 ms (+)",
            figure(main, ("per_read", "ttfe_p99_ms"), ".2f", vs="added", vs_fmt="+.2f"),
        ),
        (
            f"time to first event c1 ms (+), {opts.ttfe_delay_ms:g} ms/event",
            figure(main, ("ttfe", "median_ms"), ".3f", vs="added"),
        ),
    ]
    if opts.many_clients:
        lines += [
            (
                f"many clients: {opts.many_streams:,} streams of {opts.many_events} events "
                f"{opts.many_delay_ms:g} ms apart, opened over {opts.many_ramp_s:g} s",
                None,
            ),
            ("errors / streams done (at once)", slow_count),
            (
                "ttfe p50 ms (+)",
                figure(many, ("many", "slow", "ttfe_p50_ms"), ".2f", vs="added", vs_fmt="+.2f"),
            ),
            (
                "ttfe p99 ms (+)",
                figure(many, ("many", "slow", "ttfe_p99_ms"), ".2f", vs="added", vs_fmt="+.2f"),
            ),
            ("CPU/event µs", figure(many, ("many", "slow", "cpu_us_per_event"), ".1f")),
            ("peak RSS MB (KB/stream)", rss_and_per("slow", "peak_rss_mb", "kb_per_stream")),
            (
                "accept-queue overflows (machine-wide)",
                figure(many, ("many", "slow", "listen_overflows"), ",.0f"),
            ),
            (
                f"{opts.idle_connections:,} idle keep-alive connections, held "
                f"{opts.idle_hold_s:g} s",
                None,
            ),
            ("held / probes answered", idle_count),
            (
                "RSS held MB (KB/connection)",
                rss_and_per("idle", "rss_held_mb", "kb_per_connection"),
            ),
            (
                "accept-queue overflows (machine-wide)",
                figure(idle, ("many", "idle", "listen_overflows"), ",.0f"),
            ),
        ]
    gateway_lines: list[tuple[str, Cell | None]] = [
        ("gateway: + vs the adapter's pass-through (policies, exporters: its routed)", None),
        (
            f"routed: +CPU/request {c} µs (x req/s)",
            gateway(
                "routed",
                lambda e: (
                    f"{_num(e[c]['added_cpu_us_per_req'], '+.1f')} "
                    f"({_num(e[c]['rps_ratio'], '.2f')}x)"
                ),
            ),
        ),
        (
            "translated: +CPU/upstream event µs, many per read",
            gateway("translated", lambda e: _num(e["added_cpu_us_per_upstream_event"], "+.2f")),
        ),
        (
            "translated: +CPU/upstream event µs, one per read",
            gateway(
                "translated",
                lambda e: _num(e["added_per_read_cpu_us_per_upstream_event"], "+.2f"),
            ),
        ),
        (
            f"translated: +ttfe c1 ms (<= +{TTFE_TARGET_MS:g})",
            gateway("translated", translated_ttfe),
        ),
        (
            f"policies, memory: +CPU/request {c} µs (% pass) [spread]",
            gateway("policies", policies("memory", share)),
        ),
        (
            "policies, memory: +p50 c1 ms",
            gateway(
                "policies",
                policies("memory", lambda e: _num(e["c1"]["added_p50_ms"], "+.3f")),
            ),
        ),
        (
            f"policies, redis: +CPU/request {c} µs (redis's) [spread]",
            gateway(
                "policies-redis",
                policies(
                    "redis",
                    lambda e: (
                        f"{_num(e[c]['added_cpu_us_per_req'], '+.1f')} "
                        f"({_num(e[c]['redis_cpu_us_per_req'], '.1f')}){spread(e)}"
                    ),
                ),
            ),
        ),
        (
            "policies, redis: +p50 c1 ms",
            gateway(
                "policies-redis",
                policies("redis", lambda e: _num(e["c1"]["added_p50_ms"], "+.3f")),
            ),
        ),
    ]
    named: tuple[tuple[Mode, str], ...] = (
        ("none", "none (routed vs routed: the noise)"),
        ("access-log", "access log"),
        ("metrics", "metrics"),
        ("tracing", "tracing"),
    )
    gateway_lines += [
        (exporter_label(mode, what), gateway(mode, exporter))
        for mode, what in named
        if any(r.get("mode") == mode for r in rows)
    ]
    in_process: dict[str, dict[str, float]] = comparison.get("exporters_in_process", {})

    def in_process_cell(mode: Mode) -> Cell:
        """The in-process figure, as a share of the column's pass-through CPU/request."""

        def cell(col: str) -> str:
            figures = in_process.get(mode)
            row = by.get((col, "routed"))
            base = main(col)
            if col == "direct" or figures is None or row is None or base is None:
                return "—" if col == "direct" else "-"
            passthrough = _float(_get(base, c, "cpu_us_per_req"))
            added = figures["added_cpu_us"]
            target = EXPORTER_TARGETS[mode]
            share = None if not passthrough else added / passthrough
            ok = "" if target is None or share is None else (", yes" if share <= target else ", NO")
            return (
                f"{added:+.1f} ({_num(None if share is None else share * 100, '.1f')} %{ok}) "
                f"[{figures['min']:+.0f}..{figures['max']:+.0f}]"
            )

        return cell

    gateway_lines += [
        (
            f"{what}, in process: +CPU/exchange µs (% pass{_bound(mode)}) [spread]",
            in_process_cell(mode),
        )
        for mode, what in named
        if mode in in_process
    ]
    instructions: dict[str, Any] = comparison.get("instructions", {})

    def instructions_cell(mode: str) -> Cell:
        """Instructions per request of the httptools server (cachegrind): a figure for
        the httptools column only."""

        def cell(col: str) -> str:
            if col != "httptools":
                return "—" if col == "direct" else "-"
            if "error" in instructions:
                return "FAILED"
            figures = instructions.get(mode)
            if figures is None:
                return "-"
            if "per_event" in figures:
                return f"{figures['per_event']:,.0f}"
            if "added" not in figures:
                return f"{figures['per_request']:,.0f}"
            target = EXPORTER_TARGETS.get(mode)  # type: ignore[call-overload]
            ok = "" if target is None else (", yes" if figures["share"] <= target else ", NO")
            return f"{figures['added']:+,.0f} ({figures['share'] * 100:.1f} %{ok})"

        return cell

    if instructions:
        gateway_lines += [
            ("floor (tests.bench.floor): instructions/request", instructions_cell("floor")),
            ("pass-through: instructions/request (cachegrind)", instructions_cell("passthrough")),
            ("routed: instructions/request (cachegrind)", instructions_cell("routed")),
            (
                "pass-through stream: instructions/event, one per read (cachegrind)",
                instructions_cell("stream"),
            ),
            *(
                (
                    f"{mode}: +instructions/request (% pass{_bound(mode)})",
                    instructions_cell(mode),
                )
                for mode in ("metrics", "tracing")
            ),
        ]
    if any(r.get("mode") in (*WRK_ONLY, "translated") for r in rows):
        lines += gateway_lines
    lines += [
        ("process", None),
        ("start-up to first answer s", figure(main, ("startup_s",), ".2f")),
        ("RSS idle / after / peak MB", process),
        ("errors (all its targets)", errors),
    ]
    header = ["figure", *columns]
    body = [
        [label, *([""] * len(columns) if cell is None else (cell(col) for col in columns))]
        for label, cell in lines
    ]
    return _render(header, body)


# -- main -------------------------------------------------------------------------


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench.run",
        description="Benchmark sansproxy's adapters against a fast local upstream (direct).",
    )
    parser.add_argument(
        "--duration", type=int, default=5, help="seconds per measured phase (default 5)"
    )
    parser.add_argument(
        "--warmup", type=int, default=1, help="seconds of wrk warm-up per target (0: none)"
    )
    parser.add_argument(
        "--adapters",
        default=",".join(ADAPTERS),
        help=f"comma-separated, from {','.join(ADAPTERS)}; '' for direct only",
    )
    parser.add_argument(
        "--gateway-adapters",
        metavar="ADAPTERS",
        help="adapters also measured routed, translated, with policies and with each "
        "exporter (--config), next to their pass-through; default: all of --adapters; '' "
        "for none",
    )
    parser.add_argument(
        "--target",
        action="append",
        default=[],
        metavar="NAME=COMMAND",
        help="also measure COMMAND (given --host --port --base-url --type --log-level); repeatable",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run each throughput phase N times and keep the best (a noisy machine)",
    )
    parser.add_argument("--connections", type=int, default=64, help="the high concurrency")
    parser.add_argument("--wrk-threads", type=int, default=1, help="wrk threads at high conc.")
    parser.add_argument("--stream-concurrency", type=int, default=16)
    parser.add_argument("--stream-events", type=int, default=50)
    parser.add_argument("--ttfe-requests", type=int, default=50)
    parser.add_argument(
        "--ttfe-pairs",
        type=int,
        default=100,
        help="rounds of the translated vs pass-through time to first event (one request "
        "to each per round, alternating)",
    )
    parser.add_argument(
        "--ttfe-delay-ms", type=float, default=50.0, help="spacing of the slow stream's events"
    )
    parser.add_argument(
        "--per-read-streams",
        type=int,
        default=200,
        help="concurrent streams of the one-event-per-read phase (0: none)",
    )
    parser.add_argument("--per-read-events", type=int, default=20)
    parser.add_argument("--per-read-delay-ms", type=float, default=50.0)
    parser.add_argument(
        "--per-read-ramp-s", type=float, default=0.5, help="open its connections over"
    )
    parser.add_argument(
        "--floor",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure tests.bench.floor, a minimal pass-through (default: on)",
    )
    parser.add_argument(
        "--nginx",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure nginx as the proxy (tests.bench.nginx_proxy): what a hop through "
        "a proxy written in C costs here (default: on)",
    )
    parser.add_argument(
        "--many-clients",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the many-clients phases: slow streams and idle connections (default: on)",
    )
    parser.add_argument(
        "--exporters",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the gateway adapters also with the access log, the metrics and the tracing, "
        "each alone (default: on)",
    )
    parser.add_argument(
        "--exporter-rounds",
        type=int,
        default=EXPORTER_ROUNDS,
        help="rounds of each exporter and policies target vs its routed target, alternating "
        "(default "
        f"{EXPORTER_ROUNDS})",
    )
    parser.add_argument(
        "--exporter-slice-s",
        type=int,
        default=EXPORTER_SLICE_S,
        help=f"whole seconds of wrk per server per round (default {EXPORTER_SLICE_S})",
    )
    parser.add_argument("--many-streams", type=int, default=5000, help="concurrent slow streams")
    parser.add_argument("--many-events", type=int, default=20, help="events per slow stream")
    parser.add_argument("--many-delay-ms", type=float, default=500.0)
    parser.add_argument(
        "--many-ramp-s",
        type=float,
        default=5.0,
        help="open the slow streams evenly over (less than a stream lasts: all at once)",
    )
    parser.add_argument("--idle-connections", type=int, default=10_000)
    parser.add_argument("--idle-hold-s", type=float, default=2.0)
    parser.add_argument(
        "--instructions",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="also count the instructions of a pass-through, routed, metrics and tracing "
        "request through "
        "httptools under cachegrind (tests.bench.instructions: deterministic, ~5 min; needs "
        "valgrind)",
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also save the results here")
    opts = parser.parse_args(argv)
    if opts.duration < 1 or opts.warmup < 0 or opts.connections < 1 or opts.repeat < 1:
        parser.error("--duration must be >= 1 s, --warmup >= 0, --connections, --repeat >= 1")
    if opts.exporter_rounds < 1 or opts.exporter_slice_s < 1:
        parser.error("--exporter-rounds and --exporter-slice-s must be >= 1")
    unknown = [a for a in opts.adapters.split(",") if a and a not in ADAPTERS]
    if unknown:
        parser.error(f"unknown adapter(s) {', '.join(unknown)}; choose from {', '.join(ADAPTERS)}")
    adapters = [a for a in opts.adapters.split(",") if a]
    if opts.gateway_adapters is None:
        opts.gateway_adapters = ",".join(adapters)
    stray = [a for a in opts.gateway_adapters.split(",") if a and a not in adapters]
    if stray:
        parser.error(f"--gateway-adapters {', '.join(stray)}: not in --adapters")
    return opts


def targets(opts: argparse.Namespace) -> list[Target]:
    """direct, the floor, the chosen adapters (each followed by its routed, policies,
    exporters, translated and many-clients runs), then any ``--target``; an adapter whose
    module is not there is one target saying so."""
    found = [Target("direct", None, "direct", column="direct")]
    if opts.floor:
        argv = [sys.executable, "-m", "tests.bench.floor"]
        found.append(Target("floor", argv, column="floor"))
        if opts.many_clients:  # not the idle connections: each holds an upstream one there
            found.append(Target("floor many", argv, "many", "floor", "floor"))
    if opts.nginx:
        argv = [sys.executable, "-m", "tests.bench.nginx_proxy"]
        missing = None if nginx_binary() else "nginx is not installed (apt-get install nginx-light)"
        found.append(Target("nginx", argv, column="nginx", missing=missing))
        if opts.many_clients and missing is None:
            found.append(Target("nginx many", argv, "many", "nginx", "nginx"))
    gateway = {a for a in opts.gateway_adapters.split(",") if a}
    for name in (a for a in opts.adapters.split(",") if a):
        module, extra = ADAPTERS[name]
        argv = [sys.executable, "-m", module, *extra]
        missing = adapter_missing(name)
        found.append(Target(name, argv, column=name, missing=missing))
        if missing is not None:
            continue
        if name in gateway:
            found.append(Target(f"{name} routed", argv, "routed", name, name))
            exporters = EXPORTERS if opts.exporters else ()
            for mode in (*POLICIES, *exporters):  # right after routed, their base
                found.append(Target(f"{name} {mode}", argv, mode, f"{name} routed", name))
            found.append(Target(f"{name} translated", argv, "translated", name, name))
        if opts.many_clients:  # each on a fresh server
            found.append(Target(f"{name} many", argv, "many", name, name))
            found.append(Target(f"{name} idle", argv, "idle", name, name))
    for spec in opts.target:
        name, sep, command = spec.partition("=")
        if not sep or not name or not command:
            raise SystemExit(f"--target wants NAME=COMMAND, got {spec!r}")
        found.append(Target(name, shlex.split(command), column=name))
    return found


def gateway_config(
    mode: Mode,
    base_url: str,
    opts: argparse.Namespace,
    *,
    redis_url: str | None = None,
    otlp_url: str | None = None,
) -> dict[str, Any]:
    """The ``--config`` of a routed, policies, exporter or translated target (JSON is
    YAML); ``otlp_url``: where a tracing target sends its spans."""
    deployments = [{"provider": "up", "model": "gpt-4o-mini"}]
    providers = {"up": {"type": "openai", "base_url": base_url}}
    routed = {"providers": providers, "models": {ROUTED_MODEL: deployments}}
    if mode in ("routed", "none"):
        return routed
    if mode == "access-log":
        return {**routed, "access_log": True}
    if mode == "metrics":
        return {**routed, "metrics": {"enabled": True}}
    if mode == "tracing":
        if otlp_url is None:
            raise BenchError("tracing needs an otlp_url")
        return {**routed, "telemetry": {"otlp_endpoint": otlp_url}}
    if mode in POLICIES:
        key = {
            "name": "bench",
            "key_sha256": hashlib.sha256(BENCH_KEY.encode()).hexdigest(),
            **POLICY_LIMITS,
        }
        limits: dict[str, Any] = {"backend": "memory"}
        if mode == "policies-redis":
            if redis_url is None:
                raise BenchError("policies-redis needs a redis_url")
            limits = {"backend": "redis", "redis_url": redis_url}
        return {
            "providers": providers,
            "models": {ROUTED_MODEL: {"deployments": deployments, "limits": POLICY_LIMITS}},
            "middleware": [{"auth": {"keys": [key]}}, "rate_limit"],
            "limits": limits,
        }
    # The translated request loses the query string: the stream's shape goes in headers.
    fast = {"x-bench-events": str(opts.stream_events), "x-bench-delay-ms": "0"}
    slow = {
        "x-bench-events": str(TTFE_EVENTS),
        "x-bench-delay-ms": f"{opts.ttfe_delay_ms:g}",
        "x-bench-first-ms": "0",
    }
    per_read = {
        "x-bench-events": str(opts.per_read_events),
        "x-bench-delay-ms": f"{opts.per_read_delay_ms:g}",
        "x-bench-first-ms": "0",
    }
    claude = "claude-sonnet-4-5"
    return {
        "providers": {
            "claude": {"type": "anthropic", "base_url": base_url, "headers": fast},
            "claude-slow": {"type": "anthropic", "base_url": base_url, "headers": slow},
            "claude-per-read": {"type": "anthropic", "base_url": base_url, "headers": per_read},
        },
        "models": {
            TRANSLATED_MODEL: [{"provider": "claude", "model": claude}],
            SLOW_TRANSLATED_MODEL: [{"provider": "claude-slow", "model": claude}],
            PER_READ_TRANSLATED_MODEL: [{"provider": "claude-per-read", "model": claude}],
        },
    }


def server_argv(
    target: Target,
    port: int,
    base_url: str,
    config_dir: Path,
    opts: argparse.Namespace,
    *,
    redis_url: str | None = None,
    otlp_url: str | None = None,
) -> list[str]:
    """How to start ``target``: the pass-through shorthand, or a gateway ``--config``
    (the access log's lines are INFO ones)."""
    assert target.argv is not None
    level = "info" if target.mode == "access-log" else "warning"
    argv = [*target.argv, "--host", HOST, "--port", str(port), "--log-level", level]
    if target.mode in (*WRK_ONLY, "translated"):  # many: the pass-through's
        config = config_dir / f"{target.name.replace(' ', '-')}.yaml"
        settings = gateway_config(
            target.mode, base_url, opts, redis_url=redis_url, otlp_url=otlp_url
        )
        config.write_text(json.dumps(settings, indent=2))
        return [*argv, "--config", str(config)]
    return [*argv, "--base-url", base_url, "--type", "openai"]


def _fit_descriptors(opts: argparse.Namespace) -> None:
    """Raise ``RLIMIT_NOFILE`` to the hard limit (the servers and load clients the bench
    starts inherit it); shrink the many-clients phases to what it allows, saying so."""
    limit = raise_nofile()
    # a proxy holds two descriptors per stream (client and upstream); the load client one
    streams = max(0, (limit - FD_SLACK) // 2)
    idle = max(0, limit - FD_SLACK)
    _log(f"RLIMIT_NOFILE: {limit}")
    if opts.many_streams > streams:
        _log(f"  only {streams} slow streams fit under it (asked for {opts.many_streams})")
        opts.many_streams = streams
    if opts.idle_connections > idle:
        _log(f"  only {idle} idle connections fit under it (asked for {opts.idle_connections})")
        opts.idle_connections = idle


def _startup(target: Target, port: int, pid: int, spawned: float) -> dict[str, float]:
    """Start-up to first answer (from ``spawned``) and the RSS right after it."""
    model = {"translated": TRANSLATED_MODEL, **dict.fromkeys(WRK_ONLY, ROUTED_MODEL)}.get(
        target.mode, DEFAULT_MODEL
    )
    status = asyncio.run(first_answer(HOST, port, model=model))
    took = time.perf_counter() - spawned
    if status != 200:
        raise BenchError(f"first request: status {status}")
    rss_idle = memory_mb(pid)[0]
    _log(f"  {target.name}: first answer {took:.2f} s after start, RSS {rss_idle:.0f} MB")
    return {"startup_s": took, "rss_idle_mb": rss_idle}


def main(argv: list[str] | None = None) -> int:
    opts = _parse_args(argv)
    if shutil.which("wrk") is None:
        print(
            "wrk not found: install it (apt-get install wrk); `nox -s bench` does so as root",
            file=sys.stderr,
        )
        return 2
    started = time.monotonic()
    rows: list[dict[str, Any]] = []
    if opts.many_clients:
        _fit_descriptors(opts)
    upstream = start_server(
        "upstream", [sys.executable, "-m", "tests.bench.upstream", "--port", "0"], port=None
    )
    config_dir = tempfile.TemporaryDirectory(prefix="sansproxy-bench-")
    kept: dict[str, Server] = {}
    redis: Server | None = None
    try:
        base_url = f"http://{HOST}:{upstream.port}"
        _log(f"upstream at {base_url} (pid {upstream.proc.pid})")
        all_targets = targets(opts)
        # The policies-redis targets share one redis-server, started for this run.
        redis_url: str | None = None
        no_redis: dict[str, str] = {}  # "skipped" or "error" -> why
        if any(t.mode == "policies-redis" for t in all_targets):
            if shutil.which("redis-server") is None:
                no_redis["skipped"] = "redis-server is not on PATH (apt-get install redis-server)"
            else:
                try:
                    redis = start_redis(Path(config_dir.name))
                except BenchError as exc:
                    no_redis["error"] = f"redis-server did not start: {exc}"
                else:
                    redis_url = f"redis://{HOST}:{redis.port}/0"
                    _log(f"redis-server at {HOST}:{redis.port} (pid {redis.proc.pid})")
        # A pass-through server stays up (idle) until its translated target is done, a
        # routed one until its last exporter target is: the time to first event and the
        # exporters' CPU are measured on both, alternating. base -> its last such target
        last_pairing = {
            t.base: t.name for t in all_targets if t.base is not None and t.mode in _PAIRED
        }
        for target in all_targets:
            _log(f"{target.name}:")
            if target.missing is not None:
                _log(f"  {target.name} SKIPPED: {target.missing}")
                rows.append(
                    {
                        "target": target.name,
                        "mode": target.mode,
                        "column": target.column,
                        "skipped": target.missing,
                    }
                )
                continue
            if target.mode == "policies-redis" and no_redis:
                (kind, why), *_ = no_redis.items()
                _log(f"  {target.name} {kind.upper()}: {why}")
                rows.append(
                    {"target": target.name, "mode": target.mode, "column": target.column, kind: why}
                )
                continue
            server: Server | None = None
            receiver: OtlpReceiver | None = None
            try:
                startup: dict[str, float] = {}
                if target.argv is None:
                    port, pid = upstream.port, upstream.proc.pid
                else:
                    port = _free_port()
                    env: dict[str, str] | None = None
                    if target.mode in ("many", "idle"):
                        env = {"SANSPROXY_SERVER__KEEPALIVE_TIMEOUT": str(MANY_KEEPALIVE_S)}
                    elif target.mode == "tracing":  # a receiver of its own, for its spans only
                        receiver = start_receiver()
                        env = {"OTEL_BSP_SCHEDULE_DELAY": str(BSP_SCHEDULE_DELAY_MS)}
                    argv = server_argv(
                        target,
                        port,
                        base_url,
                        Path(config_dir.name),
                        opts,
                        redis_url=redis_url,
                        otlp_url=None if receiver is None else receiver.base_url,
                    )
                    spawned = time.perf_counter()
                    server = start_server(
                        target.name,
                        argv,
                        port=port,
                        env=env,
                        count=ACCESS_LINE if target.mode == "access-log" else None,
                    )
                    port, pid = server.port, server.proc.pid
                    startup = _startup(target, port, pid, spawned)
                if target.mode in ("many", "idle"):
                    rows.append({**measure_many(target, port, pid, opts), **startup})
                    continue
                base = kept.get(target.base or "") if target.mode in _PAIRED else None
                alive = base is not None and base.proc.poll() is None
                base_port = base.port if base is not None and alive else None
                base_pid = base.proc.pid if base is not None and alive else None
                redis_pid = (
                    redis.proc.pid
                    if redis is not None and target.mode == "policies-redis"
                    else None
                )
                measured = measure(
                    target,
                    port,
                    pid,
                    upstream.proc.pid,
                    opts,
                    base_port=base_port,
                    base_pid=base_pid,
                    redis_pid=redis_pid,
                )
                if target.mode in EXPORTERS:
                    answered = int(measured["paired"]["requests"])
                    measured["exporter"] = exporter_check(
                        target, port, answered, server=server, receiver=receiver
                    )
                rows.append({**measured, **startup})
            except (BenchError, subprocess.TimeoutExpired, OSError) as exc:
                _log(f"  {target.name} FAILED: {exc}")
                rows.append(
                    {
                        "target": target.name,
                        "mode": target.mode,
                        "column": target.column,
                        "error": str(exc),
                    }
                )
            finally:
                if server is not None:
                    if target.name in last_pairing:
                        kept[target.name] = server
                    else:
                        server.stop()
                if receiver is not None:
                    receiver.close()
                if target.base in kept and last_pairing.get(target.base) == target.name:
                    kept.pop(target.base).stop()
            if upstream.proc.poll() is not None:
                raise BenchError(upstream.describe_exit())
    finally:
        for server in kept.values():
            server.stop()
        if redis is not None:
            redis.stop()
        upstream.stop()
        config_dir.cleanup()
    if opts.exporters and any(r.get("mode") in EXPORTERS for r in rows):
        _log("exporters in process (tests.bench.exporters): alternating rounds")
        in_process = measure_exporters()
    else:
        in_process = {}
    instructions: dict[str, Any] = {}
    if opts.instructions:
        _log("instructions per request, httptools under cachegrind (tests.bench.instructions)")
        from tests.bench.instructions import measure as count_instructions

        try:
            instructions = count_instructions(
                ["floor", "passthrough", "routed", "metrics", "tracing", "stream"]
            )
        except BenchError as exc:
            _log(f"  instructions FAILED: {exc}")
            instructions = {"error": str(exc)}
    elapsed = time.monotonic() - started
    comparison = gateway_comparison(rows, opts.connections)
    comparison["exporters_in_process"] = in_process
    comparison["instructions"] = instructions

    print()
    print(
        f"sansproxy bench: {opts.duration} s per phase, one worker per adapter, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}; took {elapsed:.0f} s"
    )
    print()
    print(summary(rows, comparison, opts))
    print()
    print(
        f"req/s: wrk, POST {PATH} ({len(COMPLETION_BODY)}-byte reply), -c1 and "
        f"-c{opts.connections}; (x): ratio to direct, (+x): added to direct, same run; ms.\n"
        "CPU: µs of the server process's CPU (user+sys, with children; direct: the "
        "upstream's own) over a phase / its requests or the events it relayed.\n"
        f"many per read: {opts.stream_events}-event streams written at once; one per read: each "
        "event in its own upstream write (ttfe: request sent -> first `data:`).\n"
        "many clients: a fresh server per phase, keep-alive timeout "
        f"{MANY_KEEPALIVE_S} s; errors / streams done (the most in flight at once); "
        "RSS: the peak while streaming or while the connections are held, KB per stream or "
        "connection above the RSS before; probes: new requests on held connections;\n"
        "accept-queue overflows: connections the kernel dropped at a full listen queue during "
        "the phase, any socket (the client sees them as late answers).\n"
        "translated: an Anthropic upstream stream translated to chat.completion.chunk, "
        "+CPU per upstream event vs pass-through; +ttfe: the slow stream on both servers "
        "in alternating rounds (median of the differences).\n"
        "policies: routed + [auth, rate_limit], one key (rpm/tpm) and limits on the model; "
        "+CPU vs the routed server, paired as the exporters are (below), [spread] likewise; "
        f"(% pass): of the pass-through's CPU/request "
        f"(memory target <= {POLICIES_TARGET:.0%}); (redis's): redis-server's CPU/request, "
        "not in the proxy's.\n"
        "exporters: routed + nothing (none: the noise floor, two equal servers) or one "
        "of access_log (at --log-level info, the bench reading the "
        "lines), metrics, telemetry (OTLP/HTTP to a receiver in the bench's process, "
        f"OTEL_BSP_SCHEDULE_DELAY={BSP_SCHEDULE_DELAY_MS} ms); +CPU vs the routed server, "
        f"both up: {opts.exporter_rounds} rounds of wrk -c{opts.connections} "
        f"{opts.exporter_slice_s} s on each, alternating which goes first, each server's "
        "CPU over its slice and until it is idle again; the median of the per-round "
        "differences of CPU/request; % of the pass-through's CPU/request "
        "(its own phase); [spread]: the smallest..largest per-round difference (the "
        "noise); missing: requests the exporter showed no trace of (dropped).\n"
        "RSS idle: after the first answer; after: at the end; peak: VmHWM of the server "
        "process (MB)."
    )
    for row in rows:
        if "error" in row:
            print(f"{row['target']}: FAILED: {row['error']}")
        elif "skipped" in row:
            print(f"{row['target']}: skipped: {row['skipped']}")
    if opts.json is not None:
        opts.json.write_text(
            json.dumps(
                {
                    "options": {
                        k: str(v) if isinstance(v, Path) else v for k, v in vars(opts).items()
                    },
                    "cpus": os.cpu_count(),
                    "python": platform.python_version(),
                    "results": rows,
                    "gateway": comparison,
                },
                indent=2,
            )
            + "\n"
        )
        print(f"results saved to {opts.json}")
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
