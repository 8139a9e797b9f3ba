"""A soak: a mix of good and hostile traffic, then the proxy's RSS and descriptors.

Starts the fast local upstream (``tests.bench.upstream``) and one proxy
(``--adapter``, default h11, with the trace middleware into a temporary
directory) in front of it, and sends ``--requests`` requests (default 20,000)
from ``--clients`` concurrent clients, each request drawn in turn from a mix:
plain chat requests, streams read to the end, streams abandoned after the head,
HEAD requests, deeply nested JSON, a lone surrogate, malformed HTTP, and a
client that resets its connection mid-request. Reported: RSS and open file
descriptors of the proxy after a warm-up and after the soak, the answers by
status, and how many trace records were written.

    python -m tests.bench.soak [--adapter h11] [--requests 20000] [--clients 32]

A benchmark, not a test: it asserts nothing; it stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from tests.bench.run import HOST, start_server

__all__ = ["MIX", "main"]

_CHAT = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello."}]}'
_STREAM = b'{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"Hi"}]}'
_DEEP = b'{"model":"m","messages":' + b"[" * 5000 + b"]" * 5000 + b"}"
_SURROGATE = b'{"model":"m","messages":[{"role":"user","content":"\\ud800"}]}'


def _post(body: bytes, *, method: str = "POST") -> bytes:
    return (
        f"{method} /v1/chat/completions HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


#: name -> (request bytes, how the client behaves: "read", "head-only", "reset")
MIX: dict[str, tuple[bytes, str]] = {
    "chat": (_post(_CHAT), "read"),
    "stream": (_post(_STREAM), "read"),
    "stream-abandoned": (_post(_STREAM), "head-only"),
    "head": (_post(b"", method="HEAD"), "read"),
    "deep-json": (_post(_DEEP), "read"),
    "lone-surrogate": (_post(_SURROGATE), "read"),
    "malformed": (b"POST /v1/chat/completions HTTP/1.1\r\nbad header line\r\n\r\n", "read"),
    "reset-mid-request": (_post(_CHAT)[:40], "reset"),
}


async def _one(port: int, raw: bytes, how: str) -> str:
    """One request on its own connection; the status line's code, or what happened."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), 10)
    except (OSError, TimeoutError):
        return "connect-failed"
    try:
        writer.write(raw)
        await writer.drain()
        if how == "reset":
            writer.transport.abort()
            return "reset"
        line = await asyncio.wait_for(reader.readline(), 10)
        status = line.split()[1].decode() if line.startswith(b"HTTP/") else "no-answer"
        if how == "read":
            await asyncio.wait_for(reader.read(), 10)  # the proxy closes or we time out
        return status
    except (OSError, TimeoutError, asyncio.IncompleteReadError):
        return "failed"
    finally:
        writer.transport.abort()


async def _soak(port: int, requests: int, clients: int) -> collections.Counter[str]:
    kinds = list(MIX.items())
    counter: collections.Counter[str] = collections.Counter()
    sent = iter(range(requests))

    async def client() -> None:
        for i in sent:
            name, (raw, how) = kinds[i % len(kinds)]
            counter[f"{name} {await _one(port, raw, how)}"] += 1

    await asyncio.gather(*(client() for _ in range(clients)))
    return counter


def _resources(pid: int) -> tuple[float, int]:
    """(VmRSS in MB, open file descriptors) of one process."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return int(fields["VmRSS"].split()[0]) / 1024, len(os.listdir(f"/proc/{pid}/fd"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--adapter", default="h11", choices=["h11", "asgi", "trio"])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--clients", type=int, default=32)
    opts = parser.parse_args(argv)
    module = {"h11": "h11_server", "asgi": "asgi", "trio": "trio_runner"}[opts.adapter]
    upstream = start_server(
        "upstream", [sys.executable, "-m", "tests.bench.upstream", "--port", "0"], port=None
    )
    try:
        with tempfile.TemporaryDirectory() as workdir:
            traces = Path(workdir) / "traces"
            config = Path(workdir) / "soak.yaml"
            config.write_text(
                json.dumps(
                    {
                        "upstream": {"base_url": f"http://{HOST}:{upstream.port}"},
                        "middleware": [{"trace": {"dir": str(traces)}}],
                    }
                )
            )
            argv_ = [sys.executable, "-m", f"adapters.{module}", "--host", HOST, "--port", "0"]
            proxy = start_server(
                f"proxy {opts.adapter}",
                [*argv_, "--log-level", "error", "--config", str(config)],
                port=None,
            )
            try:
                asyncio.run(_soak(proxy.port, 500, opts.clients))  # warm-up
                rss0, fds0 = _resources(proxy.proc.pid)
                started = time.perf_counter()
                counter = asyncio.run(_soak(proxy.port, opts.requests, opts.clients))
                elapsed = time.perf_counter() - started
                rss1, fds1 = _resources(proxy.proc.pid)
                alive = proxy.proc.poll() is None
            finally:
                proxy.stop()
            records = sum(path.read_bytes().count(b"\n") for path in traces.glob("*.jsonl"))
    finally:
        upstream.stop()
    print(f"{opts.adapter}: {opts.requests} requests in {elapsed:.1f} s, proxy alive: {alive}")
    print(f"RSS {rss0:.1f} -> {rss1:.1f} MB, open fds {fds0} -> {fds1}")
    print(f"trace records written: {records} (warm-up included)")
    for key, n in sorted(counter.items()):
        print(f"  {key:32} {n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
