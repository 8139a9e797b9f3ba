"""Each exporter's CPU per exchange, in one process, without sockets.

Over loopback on two shared cores a wrk phase's CPU per request moves by tens
of µs from one second to the next: more than a 5 % target. The exporters'
cost does not depend on the adapter (the drivers hand each record to the
sinks), so it is also measured here, where the noise is a few µs: the core
carries routed exchanges (a chat completion and its answer, the upstream's
bytes fed as events) and the driver's sinks take each record, with each
exporter and with none, in alternating rounds; the process's CPU (every
thread: the sinks' threads included) over the exchanges of a round. A
tracing round sends its spans to an OTLP receiver in another process (its
decoding is not counted), and waits for them to be sent before its clock
stops; an access log round writes its lines to /dev/null, and waits for them.

    python -m tests.bench.exporters [--rounds 7] [--exchanges 3000]
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from adapters._sinks import Sinks
from core import (
    Proxy,
    ProxyConfig,
    RecordExchange,
    RequestData,
    RequestEnded,
    RequestReceived,
    UpstreamData,
    UpstreamEnded,
    UpstreamResponse,
)

__all__ = ["measure", "main"]

BODY = json.dumps({"model": "fast", "messages": [{"role": "user", "content": "Say hello."}]})
ANSWER = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "model": "gpt-4o-mini",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello!"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11},
    }
).encode()
_HEAD = [
    (b"host", b"proxy"),
    (b"content-type", b"application/json"),
    (b"content-length", str(len(BODY)).encode()),
]
_ANSWER_HEAD = [
    (b"content-type", b"application/json"),
    (b"content-length", str(len(ANSWER)).encode()),
]
#: What each exporter adds to the routed configuration.
EXPORTERS: dict[str, dict[str, Any]] = {
    "none": {},  # the noise floor: nothing observes (base against base)
    "access-log": {"access_log": True},
    "metrics": {"metrics": {"enabled": True}},
    "tracing": {"telemetry": {"otlp_endpoint": "OTLP"}},
}
_RECEIVER = """
import sys, time
from tests.support.otlp_receiver import OtlpReceiver
receiver = OtlpReceiver()
print(receiver.base_url, flush=True)
sys.stdin.read()
"""


def _config(extra: dict[str, Any]) -> ProxyConfig:
    return ProxyConfig.model_validate(
        {
            "providers": {"up": {"base_url": "http://127.0.0.1:9"}},
            "models": {"fast": [{"provider": "up", "model": "gpt-4o-mini"}]},
            **extra,
        }
    )


def _exchanges(proxy: Proxy, sinks: Sinks | None, n: int, offset: int) -> None:
    body = BODY.encode()
    for i in range(offset, offset + n):
        ex = proxy.exchange(exchange_id=f"bench{i:08x}", now=0.0, wall_time=1.7e9, rand=0.5)
        ex.handle(
            RequestReceived(method=b"POST", target=b"/v1/chat/completions", headers=_HEAD), now=0.0
        )
        ex.handle(RequestData(data=body), now=0.0)
        ex.handle(RequestEnded(), now=0.0)
        while ex.next_command() is not None:
            pass
        ex.handle(UpstreamResponse(attempt=1, status=200, headers=_ANSWER_HEAD), now=0.001)
        ex.handle(UpstreamData(attempt=1, data=ANSWER), now=0.001)
        ex.handle(UpstreamEnded(attempt=1), now=0.002)
        while (cmd := ex.next_command()) is not None:
            if sinks is not None and type(cmd) is RecordExchange:
                sinks.submit(cmd)


def _round(proxy: Proxy, make_sinks: Callable[[], Sinks] | None, n: int, offset: int) -> float:
    """CPU µs per exchange of ``n`` exchanges, the sinks' work (closed: done) included."""
    sinks = None if make_sinks is None else make_sinks()
    start = time.process_time()
    _exchanges(proxy, sinks, n, offset)
    if sinks is not None:
        sinks.close()  # every line written, every span sent: their CPU is the round's
    return (time.process_time() - start) / n * 1e6


def measure(rounds: int = 7, exchanges: int = 3000) -> dict[str, dict[str, float]]:
    """Per exporter: the median (and min, max) of the per-round added CPU µs per exchange."""
    access = logging.getLogger("sansproxy.access")
    null = open(os.devnull, "w")  # noqa: SIM115 (closed below)
    handler = logging.StreamHandler(null)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    access.addHandler(handler)
    access.setLevel(logging.INFO)
    access.propagate = False
    receiver = subprocess.Popen(
        [sys.executable, "-c", _RECEIVER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert receiver.stdout is not None
        url = receiver.stdout.readline().strip()
        os.environ.setdefault("OTEL_BSP_SCHEDULE_DELAY", "200")
        base = Proxy(_config({}))
        targets: dict[str, tuple[Proxy, Callable[[], Sinks]]] = {}
        for name, extra in EXPORTERS.items():
            text = json.dumps(extra).replace('"OTLP"', json.dumps(url))
            config = _config(json.loads(text))
            targets[name] = (Proxy(config), functools.partial(Sinks, config))
        _round(base, None, exchanges, 0)  # warm-up
        added: dict[str, list[float]] = {name: [] for name in targets}
        offset = exchanges
        for i in range(rounds):
            for name, (proxy, make) in targets.items():
                pair = [(base, None), (proxy, make)]
                if i % 2:
                    pair.reverse()
                costs = {}
                for target, sinks in pair:
                    costs[sinks is None] = _round(target, sinks, exchanges, offset)
                    offset += exchanges
                added[name].append(costs[False] - costs[True])
        return {
            name: {
                "added_cpu_us": statistics.median(values),
                "min": min(values),
                "max": max(values),
            }
            for name, values in added.items()
        }
    finally:
        access.removeHandler(handler)
        null.close()
        receiver.kill()
        receiver.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.exporters", description=__doc__)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--exchanges", type=int, default=3000)
    args = parser.parse_args(argv)
    for name, figures in measure(args.rounds, args.exchanges).items():
        print(
            f"{name}: +{figures['added_cpu_us']:.1f} µs CPU per exchange "
            f"[{figures['min']:+.1f}..{figures['max']:+.1f}]"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
