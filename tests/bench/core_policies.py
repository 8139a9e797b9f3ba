"""The core's own cost of ``auth`` + ``rate_limit`` (memory limiter), without sockets.

    python -m tests.bench.core_policies [--n 20000]

Runs routed exchanges through ``core`` alone (a canned upstream answer) with and
without the two middleware, and prints µs of CPU (``time.process_time``) per
exchange, best of 3: the limits checked by a ``MemoryLimiter`` in the proxy
(``Proxy(limiter=)``, what the servers run with ``limits.backend: memory``), and
by a store outside the core (its quota queries answered at once by a
``MemoryLimiter``: the shape of the Redis store's round trip, without Redis).
A benchmark, not a test: it asserts nothing about time.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time

from core import (
    AcquireQuota,
    Proxy,
    ProxyConfig,
    QuotaAnswered,
    RequestData,
    RequestEnded,
    RequestReceived,
    SettleQuota,
    UpstreamData,
    UpstreamEnded,
    UpstreamResponse,
)
from core.policies import MemoryLimiter

KEY = b"sk-bench-core"
BODY = json.dumps({"model": "fast", "messages": [{"role": "user", "content": "hello"}]}).encode()
ANSWER = json.dumps(
    {
        "id": "x",
        "object": "chat.completion",
        "model": "gpt-4o-mini",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12},
    }
).encode()
HEADERS = [
    (b"host", b"x"),
    (b"authorization", b"Bearer " + KEY),
    (b"content-type", b"application/json"),
    (b"content-length", str(len(BODY)).encode()),
]
ANSWER_HEADERS = [
    (b"content-type", b"application/json"),
    (b"content-length", str(len(ANSWER)).encode()),
]
BIG = {"rpm": 10**9, "tpm": 10**12}


def config(policies: bool) -> ProxyConfig:
    deployments = [{"provider": "up", "model": "gpt-4o-mini"}]
    tree: dict[str, object] = {"providers": {"up": {"base_url": "http://up.test:1"}}}
    if not policies:
        tree["models"] = {"fast": deployments}
        return ProxyConfig.model_validate(tree)
    key = {"name": "bench", "key_sha256": hashlib.sha256(KEY).hexdigest(), **BIG}
    tree["models"] = {"fast": {"deployments": deployments, "limits": BIG}}
    tree["middleware"] = [{"auth": {"keys": [key]}}, "rate_limit"]
    return ProxyConfig.model_validate(tree)


def run(proxy: Proxy, store: MemoryLimiter, n: int) -> float:
    """µs of CPU per exchange over ``n`` exchanges."""
    start = time.process_time()
    for i in range(n):
        ex = proxy.exchange(exchange_id="e", now=float(i), wall_time=1.7e9 + i * 0.001)
        ex.handle(
            RequestReceived(method=b"POST", target=b"/v1/chat/completions", headers=HEADERS),
            now=0.0,
        )
        ex.handle(RequestData(data=BODY), now=0.0)
        ex.handle(RequestEnded(), now=0.0)
        while (cmd := ex.next_command()) is not None:
            if isinstance(cmd, AcquireQuota):
                admitted, decisions, spent = store.quota(
                    [(c.key, c.limit, c.amount) for c in cmd.charges],
                    [(b.key, b.usd) for b in cmd.budgets],
                    now=cmd.at,
                )
                answer = QuotaAnswered(
                    query_id=cmd.query_id,
                    admitted=admitted,
                    decisions=tuple(decisions),
                    spent=tuple(spent),
                )
                ex.handle(answer, now=0.0)
        ex.handle(UpstreamResponse(attempt=1, status=200, headers=ANSWER_HEADERS), now=0.0)
        ex.handle(UpstreamData(attempt=1, data=ANSWER), now=0.0)
        ex.handle(UpstreamEnded(attempt=1), now=0.0)
        while (cmd := ex.next_command()) is not None:
            if isinstance(cmd, SettleQuota):
                store.settle(
                    [(a.key, a.limit, a.delta, a.charged_at) for a in cmd.adjustments],
                    [(s.key, s.usd, s.ttl) for s in cmd.spends],
                    now=cmd.at,
                )
    return (time.process_time() - start) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20_000, help="exchanges per measurement")
    opts = parser.parse_args()
    store = MemoryLimiter()
    routed = Proxy(config(False))
    inline = Proxy(config(True), limiter=MemoryLimiter())
    queries = Proxy(config(True))
    plain = min(run(routed, store, opts.n) for _ in range(3))
    checked = min(run(inline, store, opts.n) for _ in range(3))
    answered = min(run(queries, store, opts.n) for _ in range(3))
    print(f"core, routed exchange:                        {plain:6.1f} µs CPU")
    print(f"added by auth + rate_limit, limiter in proxy: {checked - plain:6.1f} µs CPU")
    print(f"added by auth + rate_limit, quota queries:    {answered - plain:6.1f} µs CPU")


if __name__ == "__main__":
    main()
