"""``python -m tests.bench.trace_writer``: what the trace writer sustains under load.

A saturated event loop holds the GIL; the writer's thread gets it back only at
the interpreter's switch interval, and every system call it makes gives it up
again. This mimics that: a burner thread spins in pure Python the whole time,
and one thread submits realistic trace records (~2.5 kB, a chat completion's)
either as fast as it can (``burst``) or at a fixed rate (``paced``, by default
the 1,600 req/s at which the old writer dropped records), busy-waiting between
records like an event loop with work to do. Then the writer is closed (which
writes what is queued) and the figures printed: records written per second from
the first submit to the last write, and records dropped.

``--baseline REV`` measures the writer of that git revision too (the old one:
one file per record, ``git show REV:adapters/_trace_writer.py``), in the same run.
Benchmarks are not tests: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from adapters._trace_writer import TraceWriter
from core import WriteTrace

REPO = Path(__file__).resolve().parents[2]


class Writer(Protocol):
    def submit(self, command: Any) -> None: ...
    def close(self, timeout: float = ...) -> None: ...
    def statistics(self) -> Any: ...


def sample_record(n: int) -> dict[str, Any]:
    """A trace record the size and shape of a short chat completion's."""
    text = "The quick brown fox jumps over the lazy dog. " * 6
    headers = [
        ["host", "127.0.0.1:8080"],
        ["user-agent", "OpenAI/Python 1.54.0"],
        ["content-type", "application/json"],
        ["authorization", "[redacted]"],
        ["x-stainless-lang", "python"],
        ["x-stainless-retry-count", "0"],
    ]
    return {
        "id": f"bench{n:08x}",
        "outcome": "completed",
        "model": "fast",
        "key": "team-a",
        "request": {
            "method": "POST",
            "target": "/v1/chat/completions",
            "headers": headers,
            "body": {
                "json": {
                    "model": "fast",
                    "messages": [
                        {"role": "system", "content": "You are terse."},
                        {"role": "user", "content": text},
                    ],
                    "max_tokens": 256,
                }
            },
        },
        "upstream": "http://127.0.0.1:9000/v1/chat/completions",
        "attempts": [
            {"number": 1, "provider": "up", "model": "fast", "outcome": "ok", "status": 200}
        ],
        "usage": {
            "input_tokens": 57,
            "output_tokens": 61,
            "cached_input_tokens": 0,
            "cache_creation_tokens": 0,
            "estimated": False,
        },
        "cost_usd": 0.0001221,
        "response": {
            "status": 200,
            "headers": [["content-type", "application/json"], ["x-sansproxy-id", "b0"]],
            "body": {
                "json": {
                    "id": "chatcmpl-123",
                    "object": "chat.completion",
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": text},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": 57, "completion_tokens": 61},
                }
            },
        },
        "error": None,
        "timings": {
            "start": "2025-01-31T14:30:00.000000+00:00",
            "first_upstream_byte_ms": 0.41,
            "end_ms": 0.63,
        },
    }


def new_writer() -> tuple[Writer, Callable[[str, int, dict[str, Any]], Any]]:
    def command(directory: str, n: int, record: dict[str, Any]) -> Any:
        return WriteTrace(directory=directory, record=record)

    return TraceWriter(), command


def old_writer(revision: str) -> tuple[Writer, Callable[[str, int, dict[str, Any]], Any]]:
    source = subprocess.run(
        ["git", "show", f"{revision}:adapters/_trace_writer.py"],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    spec = importlib.util.spec_from_loader("_old_trace_writer", loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    exec(compile(source, f"{revision}:adapters/_trace_writer.py", "exec"), module.__dict__)

    def command(directory: str, n: int, record: dict[str, Any]) -> Any:
        # The old command: a file name per record (the writer only reads these three).
        return types.SimpleNamespace(directory=directory, name=f"{n:08d}.json", record=record)

    writer: Writer = module.TraceWriter()
    return writer, command


@dataclass
class Result:
    writer: str
    phase: str
    submitted: int
    written: int
    dropped: int
    seconds: float  # first submit to the last record written (close returned)
    log_lines: int  # WARNING and ERROR lines the writer logged

    @property
    def per_second(self) -> float:
        return self.written / self.seconds if self.seconds else 0.0


def burn(stop: threading.Event) -> None:
    """Hold the GIL like an event loop at 100 % CPU."""
    while not stop.is_set():
        total = 0
        for i in range(2000):
            total += i


def run(
    name: str,
    make: Callable[[], tuple[Writer, Callable[[str, int, dict[str, Any]], Any]]],
    phase: str,
    *,
    records: int,
    rate: float,
    directory: Path,
) -> Result:
    counter = _Counter()
    trace_logger = logging.getLogger("sansproxy.trace")
    trace_logger.addHandler(counter)
    trace_logger.propagate = False
    writer, command = make()
    target = directory / f"{name}-{phase}"
    target.mkdir()
    prepared = [command(str(target), n, sample_record(n)) for n in range(records)]
    stop = threading.Event()
    burner = threading.Thread(target=burn, args=(stop,), daemon=True)
    burner.start()
    try:
        start = time.perf_counter()
        if rate <= 0:
            for item in prepared:
                writer.submit(item)
        else:
            interval = 1.0 / rate
            for n, item in enumerate(prepared):
                due = start + n * interval
                while time.perf_counter() < due:  # busy: the loop has other work
                    pass
                writer.submit(item)
        writer.close(timeout=600)
        seconds = time.perf_counter() - start
    finally:
        stop.set()
        burner.join()
        trace_logger.removeHandler(counter)
    stats = writer.statistics()
    return Result(name, phase, records, stats.written, stats.dropped, seconds, counter.count)


class _Counter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=20_000, help="records in the burst")
    parser.add_argument(
        "--rate", type=float, nargs="+", default=[1600.0], help="paced phases' rates (/s)"
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="a paced phase's length")
    parser.add_argument("--baseline", metavar="REV", help="also measure this revision's writer")
    parser.add_argument("--dir", type=Path, help="where to write (default: a temporary dir)")
    args = parser.parse_args(argv)

    writers: list[tuple[str, Callable[[], tuple[Writer, Any]]]] = []
    if args.baseline:
        revision = args.baseline
        writers.append((f"old ({revision})", lambda: old_writer(revision)))
    writers.append(("new", new_writer))
    phases = [("burst", args.records, 0.0)]
    phases += [(f"{rate:g}/s", int(rate * args.seconds), rate) for rate in args.rate]

    root = Path(tempfile.mkdtemp(prefix="sansproxy-trace-bench-", dir=args.dir))
    results = []
    try:
        for label, make in writers:
            for index, (phase, records, rate) in enumerate(phases):
                result = run(
                    label.split()[0], make, f"p{index}", records=records, rate=rate, directory=root
                )
                result.writer, result.phase = label, phase
                results.append(result)
                print(
                    f"{label:>16} {phase:>9}: {result.written:>7} written "
                    f"{result.per_second:>9,.0f}/s, {result.dropped:>6} dropped "
                    f"({result.dropped / result.submitted:.1%}), {result.log_lines:>5} log lines, "
                    f"in {result.seconds:.2f} s",
                    flush=True,
                )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(
        f"\npython {sys.version.split()[0]}, switch interval {sys.getswitchinterval() * 1e3:g} ms,"
        " one burner thread holding the GIL"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
