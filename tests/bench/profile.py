"""Where a request's CPU goes: py-spy's samples of one server under wrk, in µs per request.

    python -m tests.bench.profile [--adapter httptools] [--mode passthrough]
        [--duration 10] [--connections 64] [--rate 250] [--top 30]

Starts the bench's upstream and one server (``--mode``: the pass-through, or a
gateway configuration of the bench: routed, policies, metrics, tracing,
access-log), loads it with wrk for ``--duration`` seconds while py-spy samples
it, and measures the server's CPU over the same seconds. Each sample is counted
where it was taken (its innermost Python frame): by layer, by file and by
function, each as a share of the samples and as µs of CPU per request (the
share times the CPU per request measured in the run).

What a frame's line does in C is counted in that frame: the event loop's own
work (uvloop: epoll, reads, the callbacks' dispatch) in ``asyncio.Runner.run``,
a ``transport.write``'s system call in the line that calls it. Samples py-spy
takes while the process waits in the kernel are left out (``--idle`` keeps
them). Before the samples, a table by thread: each thread's CPU per request
(from ``/proc``, not sampled) and its context switches per request. A sink's
thread (metrics, spans, the access log) that switches often is one waiting
for the GIL, which the event loop holds: each hand-off costs both threads.
A benchmark, not a test: it asserts nothing about time.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from tests.bench.loadgen import DEFAULT_MODEL
from tests.bench.run import (
    ADAPTERS,
    EXPORTERS,
    POLICIES,
    ROUTED_MODEL,
    BenchError,
    CpuMeter,
    Mode,
    Server,
    Target,
    _free_port,
    server_argv,
    start_receiver,
    start_redis,
    start_server,
    wrk,
)

__all__ = ["Profile", "layer", "main", "profile", "read_samples"]

MODES: tuple[str, ...] = ("passthrough", "routed", *POLICIES, *EXPORTERS[1:])
#: seconds of load before sampling (connections open, caches warm)
WARM_S = 1
_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>.*):(?P<line>\d+)\)$")
#: the layers a frame's file is counted in, first match wins
_LAYERS: tuple[tuple[str, str], ...] = (
    ("core/policies/", "core: policies"),
    ("core/gateway/", "core: gateway"),
    ("core/", "core"),
    ("adapters/", "adapters"),
    ("asyncio/runners.py", "event loop (C: epoll, reads, dispatch)"),
)


@dataclass(slots=True)
class Profile:
    """One run: requests served, the server's CPU seconds, and the samples (a stack,
    outermost frame first, and how many samples it had)."""

    requests: int
    seconds: float
    cpu: float
    samples: list[tuple[tuple[str, ...], int]]
    #: per thread: its label, µs of CPU, voluntary and involuntary context switches,
    #: each per request
    threads: list[tuple[str, float, float, float]] = field(default_factory=list)

    @property
    def per_request_us(self) -> float:
        return self.cpu / self.requests * 1e6 if self.requests else 0.0

    @property
    def total(self) -> int:
        return sum(n for _, n in self.samples)

    def self_time(self, key: Any) -> list[tuple[str, int]]:
        """Samples by ``key(innermost frame)``, the most first."""
        counts: collections.Counter[str] = collections.Counter()
        for stack, n in self.samples:
            counts[key(stack[-1] if stack else "")] += n
        return counts.most_common()


def thread_counters(pid: int) -> dict[int, tuple[float, int, int]]:
    """Each thread of ``pid``: CPU seconds (user + system), and its voluntary and
    involuntary context switches (a thread that waits for the GIL, or a lock,
    switches voluntarily; one the kernel preempts, involuntarily)."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
            status = (task / "status").read_text()
        except OSError:  # the thread has ended
            continue
        fields = stat.rsplit(")", 1)[1].split()  # from field 3 (the state) on
        switches = dict(
            line.split(":", 1) for line in status.splitlines() if "ctxt_switches" in line
        )
        out[int(task.name)] = (
            (int(fields[11]) + int(fields[12])) / tick,  # utime, stime (fields 14, 15)
            int(switches.get("voluntary_ctxt_switches", 0)),
            int(switches.get("nonvoluntary_ctxt_switches", 0)),
        )
    return out


def per_thread(
    pid: int,
    before: dict[int, tuple[float, int, int]],
    after: dict[int, tuple[float, int, int]],
    requests: int,
) -> list[tuple[str, float, float, float]]:
    """What each thread did between two ``thread_counters``, per request (the busiest
    first; the event loop's thread is the process's own)."""
    rows = []
    for tid, (cpu, vol, invol) in after.items():
        was = before.get(tid, (0.0, 0, 0))
        used = cpu - was[0]
        if used <= 0 or not requests:
            continue
        label = "the event loop's thread" if tid == pid else f"thread {tid}"
        n = requests
        rows.append((label, used / n * 1e6, (vol - was[1]) / n, (invol - was[2]) / n))
    return sorted(rows, key=lambda row: -row[1])


def read_samples(lines: Iterable[str]) -> list[tuple[tuple[str, ...], int]]:
    """py-spy's raw (collapsed) output: ``frame;frame;... count`` per line."""
    out = []
    for line in lines:
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if stack and count.isdigit():
            out.append((tuple(stack.split(";")), int(count)))
    return out


def _file(frame: str) -> str:
    match = _FRAME.match(frame)
    if match is None:
        return "(no Python frame: native code, the collector)"
    path = match["file"]
    for marker in ("site-packages/", "/lib/python3."):
        if marker in path:
            path = path.split(marker, 1)[1]
            if marker.startswith("/lib"):
                path = path.split("/", 1)[-1]
            return path
    with contextlib.suppress(ValueError):
        return str(Path(path).resolve().relative_to(Path.cwd()))
    return path


def _function(frame: str) -> str:
    match = _FRAME.match(frame)
    if match is None:
        return _file(frame)
    return f"{match['function']} ({_file(frame)}:{match['line']})"


def layer(frame: str) -> str:
    """The layer a frame belongs to: the core's parts, the adapters, the event loop,
    or the library or standard module it is in."""
    path = _file(frame)
    for prefix, name in _LAYERS:
        if path.startswith(prefix):
            return name
    return path if path.startswith("(") else f"other: {path.split('/', 1)[0]}"


@contextlib.contextmanager
def _servers(adapter: str, mode: str, workdir: Path) -> Iterator[Server]:
    """The upstream and the server (and an OTLP receiver for ``tracing``, a
    redis-server for ``policies-redis``)."""
    started: list[Server] = []
    receiver = start_receiver() if mode == "tracing" else None
    try:
        redis_url = None
        if mode == "policies-redis":
            redis = start_redis(workdir)
            started.append(redis)
            redis_url = f"redis://127.0.0.1:{redis.port}/0"
        upstream = start_server(
            "upstream", [sys.executable, "-m", "tests.bench.upstream", "--port", "0"], port=None
        )
        started.append(upstream)
        module, extra = ADAPTERS[adapter]
        target = Target(adapter, [sys.executable, "-m", module, *extra], cast(Mode, mode))
        port = _free_port()
        opts = argparse.Namespace(
            stream_events=1, ttfe_delay_ms=0.0, per_read_events=1, per_read_delay_ms=0.0
        )
        argv = server_argv(
            target,
            port,
            f"http://127.0.0.1:{upstream.port}",
            workdir,
            opts,
            redis_url=redis_url,
            otlp_url=None if receiver is None else receiver.base_url,
        )
        server = start_server(adapter, argv, port=port)
        started.append(server)
        yield server
    finally:
        for server in reversed(started):
            server.stop()
        if receiver is not None:
            receiver.close()


def profile(
    adapter: str,
    mode: str,
    *,
    duration: int = 10,
    connections: int = 64,
    rate: int = 250,
    idle: bool = False,
) -> Profile:
    """Run the server under wrk for ``duration`` s while py-spy samples it."""
    spy = shutil.which("py-spy")
    if spy is None:
        raise BenchError("py-spy is not installed: pip install py-spy (or nox -s profile)")
    if mode == "policies-redis" and shutil.which("redis-server") is None:
        raise BenchError("policies-redis needs redis-server: apt-get install redis-server")
    model = DEFAULT_MODEL if mode == "passthrough" else ROUTED_MODEL
    with tempfile.TemporaryDirectory() as tmp, _servers(adapter, mode, Path(tmp)) as server:
        wrk(server.port, connections=connections, threads=1, duration=WARM_S, model=model)
        out = Path(tmp) / "samples.txt"
        argv = [
            spy,
            "record",
            "--pid",
            str(server.proc.pid),
            "--subprocesses",
            "--rate",
            str(rate),
            "--duration",
            str(duration),
            "--format",
            "raw",
            "--output",
            str(out),
            "--nonblocking",
            *(["--idle"] if idle else []),
        ]
        sampler = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        before = thread_counters(server.proc.pid)
        with CpuMeter(server.proc.pid) as meter:
            run = wrk(
                server.port, connections=connections, threads=1, duration=duration, model=model
            )
        threads = per_thread(
            server.proc.pid, before, thread_counters(server.proc.pid), run["requests"]
        )
        _, err = sampler.communicate(timeout=duration + 60)
        if sampler.returncode != 0 or not out.exists():
            raise BenchError(f"py-spy failed ({sampler.returncode}): {err.decode()[-300:]}")
        if run["errors"]:
            raise BenchError(f"{run['errors']} errors under load: {run}")
        samples = read_samples(out.read_text().splitlines())
    return Profile(run["requests"], meter.wall, meter.seconds, samples, threads)


def report(found: Profile, title: str, top: int) -> str:
    """The profile as three tables: by layer, by file, by function (``top`` rows)."""
    total = found.total or 1
    per = found.per_request_us
    lines = [
        f"{title}: {found.requests / found.seconds:,.0f} req/s, {per:.1f} µs CPU per request,"
        f" {found.total:,} samples",
    ]
    if found.threads:
        lines.append("\nby thread:  µs/request  context switches/request (voluntary, involuntary)")
        for label, us, vol, invol in found.threads:
            lines.append(f"  {us:8.1f}  {vol:6.3f} {invol:6.3f}  {label}")
    for name, key, rows in (
        ("layer", layer, 100),
        ("file", _file, top),
        ("function (innermost frame, its line)", _function, top),
    ):
        lines.append(f"\nby {name}:  µs/request  share")
        for label, n in found.self_time(key)[:rows]:
            lines.append(f"  {per * n / total:8.1f}  {n / total:6.1%}  {label}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--adapter", default="httptools", choices=sorted(ADAPTERS))
    parser.add_argument("--mode", default="passthrough", choices=MODES)
    parser.add_argument("--duration", type=int, default=10, help="seconds sampled")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=30, help="rows by file and by function")
    parser.add_argument("--idle", action="store_true", help="keep the samples of waits")
    opts = parser.parse_args(argv)
    os.environ.setdefault("OTEL_BSP_SCHEDULE_DELAY", "200")
    try:
        found = profile(
            opts.adapter,
            opts.mode,
            duration=opts.duration,
            connections=opts.connections,
            rate=opts.rate,
            idle=opts.idle,
        )
    except BenchError as exc:
        print(f"profile: {exc}", file=sys.stderr)
        return 1
    title = f"{opts.adapter} {opts.mode}, c{opts.connections}, {opts.duration} s"
    print(report(found, title, opts.top))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
