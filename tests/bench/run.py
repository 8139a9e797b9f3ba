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
  ``limits.backend: memory``. The wrk phases.
- ``<adapter> policies-redis``: the same with ``limits.backend: redis``, on a
  ``redis-server`` the bench starts for the run (no persistence, a free port);
  skipped, saying why, when ``redis-server`` is not on PATH. Its CPU per
  request is reported too (the proxy's own figure leaves it out).

Two more tables put routed and translated next to the same adapter's
pass-through: the added latency and CPU per request, CPU per event and per
stream, and the time to first event translation adds (target: at most
``TTFE_TARGET_MS``). A third puts policies next to the same adapter's routed
target: what ``auth`` + ``rate_limit`` add per request, and that CPU as a
share of the pass-through's CPU per request at the high concurrency (target
for the memory backend: at most ``POLICIES_TARGET``).

    python -m tests.bench.run [--duration 5] [--adapters h11,asgi,trio] [--json PATH]
    python -m tests.bench.run --gateway-adapters h11   # routed/translated/policies: h11 only
    python -m tests.bench.run --adapters '' --target 'mine=python /tmp/proxy.py'

A benchmark, not a test: it asserts nothing about time.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

from tests.bench.loadgen import (
    BENCH_KEY,
    DEFAULT_MODEL,
    check,
    check_anthropic_upstream,
    check_policies,
    check_translated,
    check_unknown_model,
)
from tests.bench.upstream import COMPLETION_BODY

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
TTFE_EVENTS = 3  # events of the slow stream (its first goes out with the head)
TTFE_TARGET_MS = 0.2  # what translation may add to the time to first event
#: what auth + rate_limit (memory backend) may add, as a share of the pass-through's
#: CPU per request
POLICIES_TARGET = 0.10
#: per-key and per-model limits no bench run comes near
POLICY_LIMITS = {"rpm": 10**9, "tpm": 10**12}

Mode = Literal["direct", "passthrough", "routed", "policies", "policies-redis", "translated"]
#: the modes measured by wrk only (the non-streaming phases), through the gateway
WRK_ONLY: tuple[Mode, ...] = ("routed", "policies", "policies-redis")
POLICIES: tuple[Mode, ...] = ("policies", "policies-redis")

#: adapter name -> (module, extra flags)
ADAPTERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "h11": ("adapters.h11_server", ()),
    "asgi": ("adapters.asgi", ("--workers", "1")),
    "trio": ("adapters.trio_runner", ()),
}


class BenchError(Exception):
    """A target could not be started or measured."""


@dataclass(slots=True)
class Target:
    """Something to measure: ``argv`` is None for the upstream itself (direct).

    ``mode`` says how it is pointed at the upstream and which phases it runs;
    ``base`` is the target a gateway one is compared with: the pass-through for
    routed and translated, the routed one for policies.
    """

    name: str
    argv: list[str] | None
    mode: Mode = "passthrough"
    base: str | None = None


@dataclass(slots=True)
class Server:
    """A server subprocess with its stderr drained into a bounded tail."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int = 0
    tail: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=40))
    announced: threading.Event = field(default_factory=threading.Event)

    def drain(self, stream: IO[bytes]) -> None:
        for raw in stream:
            line = raw.decode("utf-8", "replace").rstrip()
            self.tail.append(line)
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


def start_server(name: str, argv: list[str], *, port: int | None, cwd: Path = REPO_ROOT) -> Server:
    """Start ``argv`` in ``cwd``; wait for its ``listening on`` line (or, with ``port``,
    for the port)."""
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: stop() signals workers too
    )
    server = Server(name=name, proc=proc)
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
    port: int, command: str, *args: str, model: str = DEFAULT_MODEL, timeout: float
) -> dict[str, Any]:
    """Run ``tests.bench.loadgen COMMAND`` in its own process; its JSON result."""
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
    done = subprocess.run(
        argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise BenchError(f"loadgen {command} failed: {done.stderr.strip()[-500:]}")
    result: dict[str, Any] = json.loads(done.stdout)
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
        ):
            problem, count = asyncio.run(check_translated(HOST, port, model=model, events=events))
            problems.append(problem)
            expect[key] = count
    elif target.mode in WRK_ONLY:
        problems.append(asyncio.run(check(HOST, port, model=ROUTED_MODEL)))
        problems.append(asyncio.run(check_unknown_model(HOST, port)))
        if target.mode in POLICIES:
            problems.append(asyncio.run(check_policies(HOST, port, model=ROUTED_MODEL)))
    else:
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


def measure(
    target: Target,
    port: int,
    pid: int,
    upstream_pid: int,
    opts: argparse.Namespace,
    *,
    base_port: int | None = None,
    redis_pid: int | None = None,
) -> dict[str, Any]:
    """The target's phases; ``pid`` is the process to account.

    direct and pass-through: all; routed and policies: the wrk phases (policies:
    sending the bench key, and accounting ``redis_pid`` too, if given);
    translated: the streams, and the time to first event in rounds alternating
    with the pass-through server still listening on ``base_port``, if given.
    """
    name = target.name
    expect = sanity(target, port, opts)
    out: dict[str, Any] = {"target": name, "mode": target.mode, "base": target.base}
    c = f"c{opts.connections}"
    phases: list[str] = []
    if target.mode != "translated":
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
    out["rss_mb"], out["peak_rss_mb"] = memory_mb(pid)
    out["errors"] = sum(int(out[phase]["errors"]) for phase in phases) + int(
        _get(out, "ttfe", "pair", "errors") or 0
    )
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


def table(rows: list[dict[str, Any]], connections: int, stream_c: int) -> str:
    """One aligned plain-text table: a row per target, ratios and differences vs direct."""
    direct = next((r for r in rows if r["target"] == "direct" and "error" not in r), None)
    c = f"c{connections}"
    s = f"c{stream_c}"

    def ms(row: dict[str, Any] | None, phase: str, key: str) -> float | None:
        us = _get(row, phase, key) if row is not None else None
        return None if us is None else float(us) / 1000

    header = [
        "target",
        "c1 req/s",
        "c1 p50",
        "c1 p99",
        "c1 +p50",
        "c1 +p99",
        f"{c} req/s",
        "x direct",
        f"{c} p50",
        f"{c} p99",
        f"{c} +p50",
        f"{c} +p99",
        "cpu/req c1",
        f"cpu/req {c}",
        f"streams/s {s}",
        "events/s",
        "x direct",
        "cpu/event",
        "ttfe",
        "+ttfe",
        "rss MB",
        "peak MB",
        "errors",
    ]
    body: list[list[str]] = []
    for row in rows:
        if "error" in row or "skipped" in row:
            status = "FAILED" if "error" in row else "skipped"
            body.append([row["target"], status, *["-"] * (len(header) - 2)])
            continue
        is_direct = row is direct
        added = {
            (phase, key): None if is_direct else _diff(ms(row, phase, key), ms(direct, phase, key))
            for phase in ("c1", c)
            for key in ("p50_us", "p99_us")
        }
        ttfe = _get(row, "ttfe", "median_ms")
        body.append(
            [
                row["target"],
                _num(_get(row, "c1", "rps"), ",.0f"),
                _num(ms(row, "c1", "p50_us"), ".3f"),
                _num(ms(row, "c1", "p99_us"), ".3f"),
                _num(added["c1", "p50_us"], "+.3f"),
                _num(added["c1", "p99_us"], "+.3f"),
                _num(_get(row, c, "rps"), ",.0f"),
                _num(_ratio(_get(row, c, "rps"), _get(direct or {}, c, "rps")), ".2f"),
                _num(ms(row, c, "p50_us"), ".3f"),
                _num(ms(row, c, "p99_us"), ".3f"),
                _num(added[c, "p50_us"], "+.3f"),
                _num(added[c, "p99_us"], "+.3f"),
                _num(_get(row, "c1", "cpu_us_per_req"), ".1f"),
                _num(_get(row, c, "cpu_us_per_req"), ".1f"),
                _num(_get(row, "streams", "streams_per_s"), ",.0f"),
                _num(_get(row, "streams", "events_per_s"), ",.0f"),
                _num(
                    _ratio(
                        _get(row, "streams", "events_per_s"),
                        _get(direct or {}, "streams", "events_per_s"),
                    ),
                    ".2f",
                ),
                _num(_get(row, "streams", "cpu_us_per_event"), ".2f"),
                _num(ttfe, ".3f"),
                _num(
                    None if is_direct else _diff(ttfe, _get(direct or {}, "ttfe", "median_ms")),
                    "+.3f",
                ),
                _num(row.get("rss_mb"), ".1f"),
                _num(row.get("peak_rss_mb"), ".1f"),
                str(row.get("errors", "-")),
            ]
        )
    return _render(header, body)


def _render(header: list[str], body: list[list[str]]) -> str:
    """Aligned columns: the first left-aligned, the others right-aligned."""
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]

    def fmt(line: list[str]) -> str:
        cells = [line[0].ljust(widths[0])]
        cells += [cell.rjust(width) for cell, width in zip(line[1:], widths[1:], strict=True)]
        return "  ".join(cells).rstrip()

    rule = "-" * len(fmt(header))
    return "\n".join([fmt(header), rule, *(fmt(line) for line in body)])


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


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
        rps = _float(_get(row, phase, "rps"))
        routed_rps = _float(_get(routed, phase, "rps"))
        added_cpu = _diff(
            _float(_get(row, phase, "cpu_us_per_req")),
            _float(_get(routed, phase, "cpu_us_per_req")),
        )
        pass_cpu = _float(_get(passthrough or {}, phase, "cpu_us_per_req"))
        added_p50 = _diff(_float(_get(row, phase, "p50_us")), _float(_get(routed, phase, "p50_us")))
        entry[phase] = {
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
    share = entry[c]["added_cpu_share_of_passthrough"]
    entry["target_share"] = POLICIES_TARGET
    entry["within_target"] = (
        None if share is None or entry["backend"] != "memory" else share <= POLICIES_TARGET
    )
    return entry


def gateway_comparison(rows: list[dict[str, Any]], connections: int) -> dict[str, Any]:
    """Routed and translated rows against their adapter's pass-through row, policies rows
    against their adapter's routed row, same run.

    Costs are the differences: ``+`` means the gateway path costs that much more.
    """
    by_name = {r["target"]: r for r in rows if "error" not in r and "skipped" not in r}
    c = f"c{connections}"
    routed: list[dict[str, Any]] = []
    translated: list[dict[str, Any]] = []
    policies: list[dict[str, Any]] = []
    for row in rows:
        base = by_name.get(row.get("base") or "")
        if "error" in row or "skipped" in row or base is None:
            continue
        if row.get("mode") in POLICIES:
            passthrough = by_name.get(base.get("base") or "")
            policies.append(_policies_entry(row, base, passthrough, c))
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
                    "ttfe_target_ms": TTFE_TARGET_MS,
                    "ttfe_within_target": None
                    if added_ttfe is None
                    else added_ttfe <= TTFE_TARGET_MS,
                }
            )
    return {"routed": routed, "translated": translated, "policies": policies}


def gateway_tables(comparison: dict[str, Any], connections: int, stream_c: int) -> str:
    """The comparison tables (empty when nothing was routed, translated or policed)."""
    c = f"c{connections}"
    parts: list[str] = []
    if comparison["routed"]:
        header = [
            "routed vs pass-through",
            "c1 req/s",
            "x pass",
            "c1 +p50",
            "cpu/req c1",
            "+cpu/req",
            f"{c} req/s",
            "x pass",
            f"{c} +p50",
            f"cpu/req {c}",
            "+cpu/req",
        ]
        body = [
            [
                e["target"],
                _num(e["c1"]["rps"], ",.0f"),
                _num(e["c1"]["rps_ratio"], ".2f"),
                _num(e["c1"]["added_p50_ms"], "+.3f"),
                _num(e["c1"]["cpu_us_per_req"], ".1f"),
                _num(e["c1"]["added_cpu_us_per_req"], "+.1f"),
                _num(e[c]["rps"], ",.0f"),
                _num(e[c]["rps_ratio"], ".2f"),
                _num(e[c]["added_p50_ms"], "+.3f"),
                _num(e[c]["cpu_us_per_req"], ".1f"),
                _num(e[c]["added_cpu_us_per_req"], "+.1f"),
            ]
            for e in comparison["routed"]
        ]
        parts.append(_render(header, body))
    if comparison["translated"]:
        header = [
            f"translated vs pass-through (c{stream_c})",
            "events/s",
            "x pass",
            "ev/stream",
            "cpu/event",
            "+cpu/event",
            "cpu/stream",
            "+cpu/stream",
            "+cpu/delta",
            "ttfe pass",
            "ttfe transl",
            "+ttfe",
            "+ttfe min",
            f"<= +{TTFE_TARGET_MS:g}",
        ]
        body = [
            [
                e["target"],
                _num(e["events_per_s"], ",.0f"),
                _num(e["events_per_s_ratio"], ".2f"),
                f"{e['events_per_stream']}/{e['passthrough_events_per_stream']}",
                _num(e["cpu_us_per_event"], ".2f"),
                _num(e["added_cpu_us_per_event"], "+.2f"),
                _num(e["cpu_us_per_stream"], ".0f"),
                _num(e["added_cpu_us_per_stream"], "+.0f"),
                _num(e["added_cpu_us_per_upstream_event"], "+.2f"),
                _num(e["passthrough_ttfe_median_ms"], ".3f"),
                _num(e["ttfe_median_ms"], ".3f"),
                _num(e["added_ttfe_ms"], "+.3f"),
                _num(e["added_ttfe_min_ms"], "+.3f"),
                {True: "yes", False: "NO", None: "-"}[e["ttfe_within_target"]],
            ]
            for e in comparison["translated"]
        ]
        parts.append(_render(header, body))
    if comparison["policies"]:
        header = [
            "policies vs routed",
            "backend",
            "c1 +p50",
            "c1 +cpu/req",
            f"{c} req/s",
            "x routed",
            f"{c} +p50",
            f"{c} +cpu/req",
            "redis cpu/req",
            "pass cpu/req",
            "+cpu % pass",
            f"<= {POLICIES_TARGET:.0%}",
        ]
        body = [
            [
                e["target"],
                e["backend"],
                _num(e["c1"]["added_p50_ms"], "+.3f"),
                _num(e["c1"]["added_cpu_us_per_req"], "+.1f"),
                _num(e[c]["rps"], ",.0f"),
                _num(e[c]["rps_ratio"], ".2f"),
                _num(e[c]["added_p50_ms"], "+.3f"),
                _num(e[c]["added_cpu_us_per_req"], "+.1f"),
                _num(e[c]["redis_cpu_us_per_req"], ".1f"),
                _num(e[c]["passthrough_cpu_us_per_req"], ".1f"),
                _num(
                    None
                    if e[c]["added_cpu_share_of_passthrough"] is None
                    else e[c]["added_cpu_share_of_passthrough"] * 100,
                    "+.1f",
                ),
                {True: "yes", False: "NO", None: "-"}[e["within_target"]],
            ]
            for e in comparison["policies"]
        ]
        parts.append(_render(header, body))
    return "\n\n".join(parts)


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
        help="adapters also measured routed, translated and with policies (--config), next "
        "to their pass-through; default: all of --adapters; '' for none",
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
    parser.add_argument("--json", type=Path, metavar="PATH", help="also save the results here")
    opts = parser.parse_args(argv)
    if opts.duration < 1 or opts.warmup < 0 or opts.connections < 1 or opts.repeat < 1:
        parser.error("--duration must be >= 1 s, --warmup >= 0, --connections, --repeat >= 1")
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
    """direct, the chosen adapters (each followed by its routed, policies and translated
    runs), then any ``--target``."""
    found = [Target("direct", None, "direct")]
    gateway = {a for a in opts.gateway_adapters.split(",") if a}
    for name in (a for a in opts.adapters.split(",") if a):
        module, extra = ADAPTERS[name]
        argv = [sys.executable, "-m", module, *extra]
        found.append(Target(name, argv))
        if name in gateway:
            found.append(Target(f"{name} routed", argv, "routed", name))
            for mode in POLICIES:  # right after routed, their base
                found.append(Target(f"{name} {mode}", argv, mode, f"{name} routed"))
            found.append(Target(f"{name} translated", argv, "translated", name))
    for spec in opts.target:
        name, sep, command = spec.partition("=")
        if not sep or not name or not command:
            raise SystemExit(f"--target wants NAME=COMMAND, got {spec!r}")
        found.append(Target(name, shlex.split(command)))
    return found


def gateway_config(
    mode: Mode, base_url: str, opts: argparse.Namespace, *, redis_url: str | None = None
) -> dict[str, Any]:
    """The ``--config`` of a routed, policies or translated target (JSON is YAML)."""
    deployments = [{"provider": "up", "model": "gpt-4o-mini"}]
    providers = {"up": {"type": "openai", "base_url": base_url}}
    if mode == "routed":
        return {"providers": providers, "models": {ROUTED_MODEL: deployments}}
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
    return {
        "providers": {
            "claude": {"type": "anthropic", "base_url": base_url, "headers": fast},
            "claude-slow": {"type": "anthropic", "base_url": base_url, "headers": slow},
        },
        "models": {
            TRANSLATED_MODEL: [{"provider": "claude", "model": "claude-sonnet-4-5"}],
            SLOW_TRANSLATED_MODEL: [{"provider": "claude-slow", "model": "claude-sonnet-4-5"}],
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
) -> list[str]:
    """How to start ``target``: the pass-through shorthand, or a gateway ``--config``."""
    assert target.argv is not None
    argv = [*target.argv, "--host", HOST, "--port", str(port), "--log-level", "warning"]
    if target.mode in (*WRK_ONLY, "translated"):
        config = config_dir / f"{target.name.replace(' ', '-')}.yaml"
        settings = gateway_config(target.mode, base_url, opts, redis_url=redis_url)
        config.write_text(json.dumps(settings, indent=2))
        return [*argv, "--config", str(config)]
    return [*argv, "--base-url", base_url, "--type", "openai"]


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
        # A pass-through server stays up (idle) until its translated target is done:
        # the time to first event is measured on both, alternating.
        compared = {t.base for t in all_targets if t.mode == "translated"}
        for target in all_targets:
            _log(f"{target.name}:")
            if target.mode == "policies-redis" and no_redis:
                (kind, why), *_ = no_redis.items()
                _log(f"  {target.name} {kind.upper()}: {why}")
                rows.append({"target": target.name, "mode": target.mode, kind: why})
                continue
            server: Server | None = None
            try:
                if target.argv is None:
                    port, pid = upstream.port, upstream.proc.pid
                else:
                    port = _free_port()
                    argv = server_argv(
                        target, port, base_url, Path(config_dir.name), opts, redis_url=redis_url
                    )
                    server = start_server(target.name, argv, port=port)
                    port, pid = server.port, server.proc.pid
                base = kept.get(target.base or "") if target.mode == "translated" else None
                base_port = base.port if base is not None and base.proc.poll() is None else None
                redis_pid = (
                    redis.proc.pid
                    if redis is not None and target.mode == "policies-redis"
                    else None
                )
                rows.append(
                    measure(
                        target,
                        port,
                        pid,
                        upstream.proc.pid,
                        opts,
                        base_port=base_port,
                        redis_pid=redis_pid,
                    )
                )
            except (BenchError, subprocess.TimeoutExpired, OSError) as exc:
                _log(f"  {target.name} FAILED: {exc}")
                rows.append({"target": target.name, "error": str(exc)})
            finally:
                if server is not None:
                    if target.name in compared:
                        kept[target.name] = server
                    else:
                        server.stop()
                if target.mode == "translated" and target.base in kept:
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
    elapsed = time.monotonic() - started
    comparison = gateway_comparison(rows, opts.connections)

    print()
    print(
        f"sansproxy bench: {opts.duration} s per phase, wrk -c1 and -c{opts.connections}, "
        f"{opts.stream_events}-event streams at c{opts.stream_concurrency}, "
        f"slow stream {opts.ttfe_delay_ms:g} ms/event; {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}; took {elapsed:.0f} s"
    )
    print()
    print(table(rows, opts.connections, opts.stream_concurrency))
    print()
    gateway = gateway_tables(comparison, opts.connections, opts.stream_concurrency)
    if gateway:
        print(gateway)
        print()
    print(
        f"req/s: wrk, POST {PATH} ({len(COMPLETION_BODY)}-byte reply); latencies and ttfe in ms; "
        "+x = added vs direct, same run;\n"
        "cpu/req, cpu/event: µs of the server process's CPU (user+sys, with children; "
        "direct: the upstream's own);\n"
        "events/s: SSE events received, by tests.bench.loadgen; ttfe: median of request "
        "sent -> first `data:` received, slow stream;\n"
        "rss/peak MB: VmRSS after the runs and VmHWM of the server process; "
        "errors: wrk socket/non-2xx errors + loadgen errors.\n"
        f"routed: --config, model {ROUTED_MODEL!r} -> an openai provider (the wrk phases); "
        f"translated: model {TRANSLATED_MODEL!r} -> an anthropic provider,\n"
        "the upstream's Anthropic stream with as many text deltas, translated to "
        "chat.completion.chunk events (role + deltas + finish, then [DONE]);\n"
        "x pass, +x: vs the same adapter's pass-through, same run; +cpu/delta: "
        "+cpu/stream per upstream text delta;\n"
        "ttfe pass/transl, +ttfe: the slow stream on both servers in alternating rounds "
        "(medians; +ttfe: median of the per-round differences; +ttfe min: of the minima);\n"
        "a translated row's ttfe is from those rounds (where both servers idle in turn, "
        "which slows both): compare it with 'ttfe pass', not the pass-through row."
    )
    if comparison["policies"]:
        print(
            "policies: the routed config + middleware [auth, rate_limit], one key (rpm/tpm) "
            f"and limits on model {ROUTED_MODEL!r}, limits.backend memory or redis;\n"
            "+x, x routed: vs the same adapter's routed row, same run; redis cpu/req: the "
            "redis-server's CPU per request (not in the proxy's);\n"
            f"+cpu % pass: c{opts.connections} +cpu/req as a share of the same adapter's "
            f"pass-through cpu/req at c{opts.connections} "
            f"(target for memory: <= {POLICIES_TARGET:.0%})."
        )
    c = f"c{opts.connections}"
    for row in rows:
        if "error" in row:
            print(f"{row['target']}: FAILED: {row['error']}")
        elif "skipped" in row:
            print(f"{row['target']}: skipped: {row['skipped']}")
        elif row["target"] != "direct" and _get(row, c, "upstream_cpu_util") is not None:
            print(
                f"{row['target']}: upstream CPU at {c} {row[c]['upstream_cpu_util']:.0%} of one "
                f"core, proxy {row[c]['cpu_util']:.0%}"
            )
        elif row["target"] == "direct":
            print(f"direct: upstream CPU at {c} {row[c]['cpu_util']:.0%} of one core")
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
