"""Big JSON bodies against small requests: does one client stall the others?

Starts the fast local upstream (``tests.bench.upstream``) and, for each mode
and body, a fresh proxy (``adapters.h11_server``, one process) in front of it.
Then ``--in-flight`` clients (default 8) each post the big body ``--rounds``
times, one after another on their own connections, while a prober posts a
small chat request, back to back, on one keep-alive connection. Reported:

- the prober's latency alone first (``idle``), then while the big bodies are
  in flight: p50, p99 and max. Its max is the longest the proxy's event loop
  left a small request waiting: the stall one big body causes;
- how the big requests were answered (status x count) and their median time;
- the proxy's RSS at start and at its peak (``VmHWM``) with the bodies in flight.

Modes: ``passthrough`` (the shorthand, ``--base-url``, no middleware) and
``validate+guardrails`` (the same with the ``validate`` and ``guardrails``
middleware). Bodies, about 6.9 MB each: ``keys``, a chat request with 700,000
extra keys (``"k<hex>": 0``), and ``text``, a chat request whose one message is
6.9 MB of prose (commas and an e-mail address in it, so that guardrails reads
it). ``--repo PATH`` runs the proxy from another checkout (``git archive HEAD |
tar -x -C PATH``: the code before a change), with this one's upstream and client.

    python -m tests.bench.big_body [--in-flight 8] [--rounds 2] [--repo PATH]

A benchmark, not a test: it asserts nothing about time.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from tests.bench.loadgen import percentile
from tests.bench.run import HOST, REPO_ROOT, Server, start_server

__all__ = ["BODIES", "MODES", "main"]

MODEL = "gpt-4o-mini"
KEYS = 700_000
#: mode -> the middleware of its --config (the shorthand upstream is added)
MODES: dict[str, list[str]] = {"passthrough": [], "validate+guardrails": ["validate", "guardrails"]}
_MESSAGES = b'"messages":[{"role":"user","content":'


def _keys_body() -> bytes:
    keys = b",".join(b'"k%x":0' % i for i in range(KEYS))
    return b'{"model":"%s",%s"Say hello."}],%s}' % (MODEL.encode(), _MESSAGES, keys)


def _text_body() -> bytes:
    sentence = "The quick brown fox, tired of jumping, writes to fox@example.com. "
    text = sentence * (6_900_000 // len(sentence))
    return b'{"model":"%s",%s%s}]}' % (MODEL.encode(), _MESSAGES, json.dumps(text).encode())


BODIES = {"keys": _keys_body, "text": _text_body}
SMALL = b'{"model":"%s",%s"Say hello."}]}' % (MODEL.encode(), _MESSAGES)


def _request(port: int, body: bytes) -> bytes:
    return (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: bytes
) -> tuple[int, bool]:
    """Send one request, read its answer: (status, whether the connection stays open)."""
    writer.write(raw)
    await writer.drain()
    status = int((await reader.readline()).split()[1])
    length, keep = 0, True
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
        elif name.strip().lower() == "connection" and "close" in value.lower():
            keep = False
    await reader.readexactly(length)
    return status, keep


async def _big(port: int, raw: bytes, rounds: int, out: list[tuple[int, float]]) -> None:
    for _ in range(rounds):
        reader, writer = await asyncio.open_connection(HOST, port)
        started = time.perf_counter()
        try:
            status, _ = await _exchange(reader, writer, raw)
        except (ConnectionError, asyncio.IncompleteReadError):
            status = 0  # the proxy hung up
        out.append((status, time.perf_counter() - started))
        writer.close()


async def _probe(port: int, until: asyncio.Event | int) -> list[float]:
    """Small requests back to back until ``until`` is set (or that many); their latencies."""
    raw = _request(port, SMALL)
    latencies: list[float] = []
    reader, writer = await asyncio.open_connection(HOST, port)
    while not (until.is_set() if isinstance(until, asyncio.Event) else len(latencies) >= until):
        started = time.perf_counter()
        status, keep = await _exchange(reader, writer, raw)
        latencies.append(time.perf_counter() - started)
        if status != 200:
            raise RuntimeError(f"a small request got {status}")
        if not keep:
            writer.close()
            reader, writer = await asyncio.open_connection(HOST, port)
    writer.close()
    return latencies


def _memory_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of one process, in MB."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


async def _measure(port: int, pid: int, body: bytes, opts: argparse.Namespace) -> dict[str, object]:
    await _probe(port, 50)  # warm up
    idle = await _probe(port, 300)
    rss_start, _ = _memory_mb(pid)
    raw = _request(port, body)
    big: list[tuple[int, float]] = []
    done = asyncio.Event()
    prober = asyncio.create_task(_probe(port, done))
    await asyncio.gather(*(_big(port, raw, opts.rounds, big) for _ in range(opts.in_flight)))
    done.set()
    loaded = await prober
    _, rss_peak = _memory_mb(pid)
    statuses = collections.Counter(status for status, _ in big)
    return {
        "idle_p50_ms": statistics.median(idle) * 1e3,
        "idle_max_ms": max(idle) * 1e3,
        "p50_ms": statistics.median(loaded) * 1e3,
        "p99_ms": percentile(loaded, 99) * 1e3,
        "max_ms": max(loaded) * 1e3,
        "probes": len(loaded),
        "big": " ".join(f"{status}x{n}" for status, n in sorted(statuses.items())),
        "big_p50_s": statistics.median(t for _, t in big),
        "rss_start_mb": rss_start,
        "rss_peak_mb": rss_peak,
    }


def _proxy(mode: str, upstream: int, workdir: Path, repo: Path) -> Server:
    config = workdir / f"{mode}.yaml"
    settings = {"upstream": {"base_url": f"http://{HOST}:{upstream}"}, "middleware": MODES[mode]}
    config.write_text(json.dumps(settings))
    argv = [sys.executable, "-m", "adapters.h11_server", "--host", HOST, "--port", "0"]
    argv += ["--log-level", "error", "--config", str(config)]
    return start_server(f"proxy {mode}", argv, port=None, cwd=repo)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--in-flight", type=int, default=8, help="big bodies at once (8)")
    parser.add_argument("--rounds", type=int, default=2, help="big bodies per client (2)")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated")
    parser.add_argument("--bodies", default=",".join(BODIES), help="comma-separated")
    parser.add_argument("--repo", type=Path, default=REPO_ROOT, help="run the proxy from here")
    opts = parser.parse_args(argv)
    upstream = start_server(
        "upstream", [sys.executable, "-m", "tests.bench.upstream", "--port", "0"], port=None
    )
    header = (
        f"{'mode':20} {'body':5} {'big requests':>13} {'big p50 s':>9} | small request ms: "
        f"{'idle p50':>8} {'p50':>7} {'p99':>7} {'max':>7} | RSS MB {'start':>6} {'peak':>6}"
    )
    print(f"proxy from {opts.repo}; {opts.in_flight} in flight x {opts.rounds} rounds")
    print(header)
    try:
        with tempfile.TemporaryDirectory() as workdir:
            for mode in opts.modes.split(","):
                for name in opts.bodies.split(","):
                    body = BODIES[name]()
                    proxy = _proxy(mode, upstream.port, Path(workdir), opts.repo)
                    try:
                        row = asyncio.run(_measure(proxy.port, proxy.proc.pid, body, opts))
                    finally:
                        proxy.stop()
                    print(
                        f"{mode:20} {name:5} {row['big']:>13} {row['big_p50_s']:9.2f} | "
                        f"{'':17} {row['idle_p50_ms']:8.2f} {row['p50_ms']:7.1f} "
                        f"{row['p99_ms']:7.1f} {row['max_ms']:7.1f} |        "
                        f"{row['rss_start_mb']:6.0f} {row['rss_peak_mb']:6.0f}",
                        flush=True,
                    )
    finally:
        upstream.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
