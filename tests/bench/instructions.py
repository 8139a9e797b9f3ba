"""Instructions per request through an adapter, counted by cachegrind: a figure
that does not move between runs.

CPU per request on this shared 2-core machine moves by tens of µs from one
second to the next (``nox -s bench`` shows the noise floor: a routed server
against another), more than the exporters' targets. Valgrind's cachegrind
counts the instructions a process executes, the same to 0.1 % from run to
run. For each configuration (the pass-through shorthand, the bench's routed
config, plus the metrics, plus spans to an OTLP receiver, plus the access
log, plus ``auth`` + ``rate_limit`` on the memory limiter), the server runs under
``valgrind --tool=cachegrind`` twice, answering ``--warm`` and then ``--warm``
+ ``--requests`` sequential keep-alive requests from one client (the bench's
upstream behind it, run normally), and is stopped with SIGINT (its sinks
flush: their work is counted); the difference over ``--requests`` is the
instructions of one request, start-up and shutdown cancelled out; an
exporter's (or the policies') share is what it adds to the routed request over
the pass-through request's instructions (the bench's targets are shares of a
pass-through request). Every
thread of the server is counted; the kernel's work (system calls) is not.

The ``floor`` mode counts ``tests.bench.floor`` instead of the proxy: a minimal
asyncio + httptools pass-through, what any Python proxy on this stack costs.
The ``stream`` mode counts a pass-through stream's relayed event instead: 10
streams of 10 events, then 10 of 110, 4 ms apart (each event in a read of its
own), the difference over the 1,000 events.

Under valgrind a request takes ~50x longer, so the span exporter keeps the
SDK's 5-second batch delay (a batch of hundreds of spans, as at full speed).

    python -m tests.bench.instructions [--requests 1000] [--modes routed,metrics,tracing]
        [--adapter httptools]

The server is ``--adapter``'s (httptools by default; h11, asgi or trio).

Needs ``valgrind`` (``apt-get install valgrind``; ``nox -s bench -- --instructions``
installs it as root).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.bench.loadgen import BENCH_KEY
from tests.bench.run import (
    ADAPTERS,
    HOST,
    PATH,
    REPO_ROOT,
    ROUTED_MODEL,
    BenchError,
    _connectable,
    _free_port,
    gateway_config,
    start_receiver,
    start_server,
)

__all__ = ["MODES", "count", "measure", "main"]

#: the configurations measured, and the bench mode each is
MODES = {
    "passthrough": "passthrough",
    "routed": "routed",
    "metrics": "metrics",
    "tracing": "tracing",
    "access-log": "access-log",
    "policies": "policies",  # auth + rate_limit on the memory limiter, the bench's key
    "stream": "passthrough",  # per relayed stream event, one event per read
    "floor": "floor",  # tests.bench.floor: a minimal pass-through, for comparison
}
#: the stream mode: requests of STREAM_EVENTS[0], then of STREAM_EVENTS[1] events,
#: STREAM_DELAY_MS apart (each in a read of its own, even under valgrind)
STREAM_REQUESTS = 10
STREAM_EVENTS = (10, 110)
STREAM_DELAY_MS = 4
#: how long a server under valgrind may take to listen, and to stop
START_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 300.0
_REFS = re.compile(r"I\s+refs:\s+([\d,]+)")


@contextlib.contextmanager
def _upstream() -> Iterator[str]:
    server = start_server(
        "upstream", [sys.executable, "-m", "tests.bench.upstream", "--port", "0"], port=None
    )
    try:
        yield f"http://{HOST}:{server.port}"
    finally:
        server.stop()


def count(
    mode: str,
    requests: int,
    base_url: str,
    workdir: Path,
    otlp_url: str | None,
    *,
    events: int = 0,
    adapter: str = "httptools",
) -> int:
    """The instructions of ``adapter``'s server in ``mode``'s config (all its threads,
    start-up to exit) answering ``requests`` sequential requests (streams of ``events``
    events, one per read, with ``events``)."""
    port = _free_port()
    level = "info" if mode == "access-log" else "warning"
    module, extra = ADAPTERS[adapter]
    server = [module, *extra, "--log-level", level]
    if mode == "floor":
        server = ["tests.bench.floor"]
        how = ["--upstream", base_url]
    elif MODES[mode] == "passthrough":  # the one-provider shorthand
        how = ["--base-url", base_url, "--type", "openai"]
    else:
        opts = argparse.Namespace(per_read_events=1, per_read_delay_ms=0.0)
        config = gateway_config(MODES[mode], base_url, opts, otlp_url=otlp_url)  # type: ignore[arg-type]
        path = workdir / f"{mode}.json"
        path.write_text(json.dumps(config))
        how = ["--config", str(path)]
    valgrind = [
        "valgrind",
        "--tool=cachegrind",
        "--cache-sim=no",
        "--cachegrind-out-file=/dev/null",
    ]
    argv = [
        *valgrind,
        sys.executable,
        "-m",
        *server,
        "--host",
        HOST,
        "--port",
        str(port),
        *how,
    ]
    report = workdir / f"{mode}-{requests}.valgrind"
    env = {**os.environ, "OTEL_BSP_SCHEDULE_DELAY": "5000"}
    with report.open("w") as err:
        proc = subprocess.Popen(
            argv, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=err, stderr=err
        )
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while not _connectable(port):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise BenchError(f"{mode} under valgrind did not listen: see {report}")
                time.sleep(0.2)  # polling a process under valgrind: nothing to wait on
            ask: dict[str, Any] = {
                "model": ROUTED_MODEL,
                "messages": [{"role": "user", "content": "Say hello."}],
            }
            target = PATH
            if events:
                ask["stream"] = True
                target = f"{PATH}?events={events}&delay_ms={STREAM_DELAY_MS}"
            body = json.dumps(ask).encode()
            headers = {"content-type": "application/json"}
            if mode == "policies":
                headers["authorization"] = f"Bearer {BENCH_KEY}"
            client = http.client.HTTPConnection(HOST, port, timeout=120)
            for _ in range(requests):
                client.request("POST", target, body=body, headers=headers)
                answer = client.getresponse()
                got = answer.read()
                if answer.status != 200:
                    raise BenchError(f"{mode}: status {answer.status} under valgrind")
                if events and got.count(b"\ndata: ") + got.startswith(b"data: ") != events + 1:
                    raise BenchError(f"{mode}: not {events} events and [DONE] under valgrind")
            client.close()
            proc.send_signal(signal.SIGINT)  # the sinks flush what they hold
            proc.wait(STOP_TIMEOUT_S)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    found = _REFS.findall(report.read_text())
    if not found:
        raise BenchError(f"{mode}: no instruction count in {report}")
    return int(found[-1].replace(",", ""))


def measure(
    modes: list[str], requests: int = 1000, warm: int = 100, adapter: str = "httptools"
) -> dict[str, Any]:
    """Per mode, through ``adapter``'s server: instructions per request (``per_request``);
    for an exporter's mode (or the policies'), what it adds to ``routed`` (``added``)
    as a share of the pass-through request's (``share``; of the routed request's when
    ``passthrough`` is not measured)."""
    if shutil.which("valgrind") is None:
        raise BenchError("valgrind not found: apt-get install valgrind")
    out: dict[str, Any] = {"requests": requests, "warm": warm, "adapter": adapter}
    receiver = start_receiver() if "tracing" in modes else None
    otlp_url = None if receiver is None else receiver.base_url
    with _upstream() as base_url, tempfile.TemporaryDirectory(prefix="sansproxy-vg-") as tmp:
        for mode in modes:
            if mode == "stream":
                few, many = (
                    count(
                        mode,
                        STREAM_REQUESTS,
                        base_url,
                        Path(tmp),
                        otlp_url,
                        events=events,
                        adapter=adapter,
                    )
                    for events in STREAM_EVENTS
                )
                per_event = (many - few) / (STREAM_REQUESTS * (STREAM_EVENTS[1] - STREAM_EVENTS[0]))
                out[mode] = {"per_event": per_event}
                print(f"  stream: {per_event:,.0f} instructions/relayed event", file=sys.stderr)
                continue
            low = count(mode, warm, base_url, Path(tmp), otlp_url, adapter=adapter)
            high = count(mode, warm + requests, base_url, Path(tmp), otlp_url, adapter=adapter)
            out[mode] = {"per_request": (high - low) / requests}
            print(
                f"  {mode}: {out[mode]['per_request']:,.0f} instructions/request", file=sys.stderr
            )
    routed = out.get("routed", {}).get("per_request")
    base = out.get("passthrough", {}).get("per_request") or routed
    for mode in modes:
        if mode not in ("routed", "passthrough", "stream", "floor") and routed and base:
            added = out[mode]["per_request"] - routed
            out[mode].update(added=added, share=added / base)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.instructions", description=__doc__)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--warm", type=int, default=100)
    parser.add_argument("--modes", default="floor,passthrough,routed,metrics,tracing,stream")
    parser.add_argument("--adapter", choices=sorted(ADAPTERS), default="httptools")
    opts = parser.parse_args(argv)
    modes = [m for m in opts.modes.split(",") if m]
    unknown = set(modes) - set(MODES)
    if unknown:
        parser.error(f"unknown modes: {', '.join(sorted(unknown))}")
    try:
        result = measure(modes, opts.requests, opts.warm, opts.adapter)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for mode in modes:
        figures = result[mode]
        if mode == "stream":
            print(f"stream: {figures['per_event']:,.0f} instructions/relayed event (one per read)")
            continue
        added = (
            f", {figures['added']:+,.0f} ({figures['share']:.1%} of a pass-through request)"
            if "added" in figures
            else ""
        )
        print(f"{mode}: {figures['per_request']:,.0f} instructions/request{added}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
