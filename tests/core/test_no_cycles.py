"""An exchange that ended is freed by reference counting alone: it leaves no cycle.

Garbage in a reference cycle waits for Python's collector, and a full
collection walks every live object of the process while no connection is
served: with thousands of streams open, tens of milliseconds. The servers
make full collections rare (``adapters._cli.freeze_heap``) because what an
exchange makes is freed as soon as it ends -- which these tests hold, for
every way an exchange goes: answered, streamed, translated, retried, failed,
refused, left by its client, answered by the mock, observed by exporters.
"""

from __future__ import annotations

import gc
import hashlib
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core import (
    AcquireQuota,
    ClientGone,
    Proxy,
    ProxyConfig,
    QuotaAnswered,
    RequestData,
    RequestEnded,
    RequestReceived,
    SendUpstreamRequest,
    UpstreamEnded,
    UpstreamFailed,
    UpstreamResponse,
)
from core._state import State
from core.policies import MemoryLimiter

from .test_gateway import _anthropic_stream
from .test_retry import ANTHROPIC_OK as ANTHROPIC_ANSWER
from .test_retry import OK as ANSWER

WALL = 1_700_000_000.0
RETRY = {"attempts": 2, "backoff": 0.0}
KEY = "sk-sp-cycles-0123456789"
JSON = [(b"content-type", b"application/json")]
SSE = [(b"content-type", b"text/event-stream")]
OBSERVED: dict[str, Any] = {
    "metrics": {"enabled": True},
    "telemetry": {"otlp_endpoint": "http://otel.test:4318", "capture_content": True},
}
CHUNKS = b"".join(
    b'data: {"id":"c1","object":"chat.completion.chunk","model":"m1","choices":[{"index":0,'
    b'"delta":{"content":"%s"},"finish_reason":null}]}\n\n' % text
    for text in (b"Hel", b"lo")
) + (
    b'data: {"id":"c1","object":"chat.completion.chunk","model":"m1","choices":[],'
    b'"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}\n\ndata: [DONE]\n\n'
)
ANTHROPIC_STREAM = _anthropic_stream(["Hel", "lo"])


def chat(model: str, *, stream: bool = False, body: dict[str, Any] | None = None) -> bytes:
    ask: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    if stream:
        ask["stream"] = True
        ask["stream_options"] = {"include_usage": True}
    return json.dumps({**ask, **(body or {})}).encode()


def gateway(*, retry: bool = False, **extra: Any) -> Proxy:
    """Model ``a`` on an OpenAI provider (with ``retry``: falling back to ``b``), ``b``
    on an Anthropic one; observed by every exporter."""
    a: dict[str, Any] = {"deployments": [{"provider": "p", "model": "m1"}]}
    if retry:
        a["fallbacks"] = ["b"]
        extra["middleware"] = [*extra.get("middleware", ()), {"retry": RETRY}]
    tree: dict[str, Any] = {
        "providers": {
            "p": {"base_url": "http://p.test:8080", "api_key": "kp"},
            "q": {"base_url": "http://q.test:8080", "api_key": "kq", "type": "anthropic"},
        },
        "models": {
            "a": a,
            "b": [{"provider": "q", "model": "claude-x"}],
        },
        **OBSERVED,
        **extra,
    }
    return Proxy(ProxyConfig.model_validate(tree))


class Run:
    """One exchange driven to its end; its commands drained and dropped as they come."""

    def __init__(self, proxy: Proxy, splits: list[int]) -> None:
        self.ex = proxy.exchange(exchange_id="ex1", now=0.0, wall_time=WALL, rand=0.5)
        self.splits = splits
        self.now = 0.0
        self.limiter: MemoryLimiter | None = None
        self.attempt = 0  # the last one the exchange asked for

    def wait(self) -> None:
        """Let the exchange's timer fire (a backoff) until it asks for an attempt."""
        while self.ex.state is State.BACKOFF and (deadline := self.ex.get_timer()) is not None:
            self.now = deadline
            self.ex.handle_timer(now=deadline)
            self.drain()

    def feed(self, *events: Any) -> None:
        for event in events:
            self.now += 0.01
            self.ex.handle(event, now=self.now)
            self.drain()

    def drain(self) -> None:
        while (cmd := self.ex.next_command()) is not None:
            if isinstance(cmd, SendUpstreamRequest):
                self.attempt = cmd.attempt
            elif isinstance(cmd, AcquireQuota):
                assert self.limiter is not None
                admitted, decisions, spent = self.limiter.quota(
                    [(c.key, c.limit, c.amount) for c in cmd.charges],
                    [(b.key, b.usd) for b in cmd.budgets],
                    now=cmd.at,
                )
                self.ex.handle(
                    QuotaAnswered(
                        query_id=cmd.query_id,
                        admitted=admitted,
                        decisions=tuple(decisions),
                        spent=tuple(spent),
                    ),
                    now=self.now,
                )

    def request(self, body: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        path = b"/v1/chat/completions"
        self.feed(
            RequestReceived(method=b"POST", target=path, headers=[*JSON, *(headers or [])]),
            RequestData(data=body),
            RequestEnded(),
        )

    def pieces(self, data: bytes) -> Iterator[bytes]:
        start = 0
        for cut in sorted({min(max(0, s), len(data)) for s in self.splits}):
            if cut > start:
                yield data[start:cut]
                start = cut
        if start < len(data):
            yield data[start:]

    def answer(self, attempt: int, status: int, headers: Any, body: bytes) -> None:
        self.feed(UpstreamResponse(attempt=attempt, status=status, headers=headers))
        for piece in self.pieces(body):
            self.ex.handle_upstream_data(attempt, piece, now=self.now)
            self.drain()
        self.feed(UpstreamEnded(attempt=attempt))


def answered(run: Run) -> None:
    run.request(chat("a"))
    run.answer(1, 200, JSON, ANSWER)


def streamed(run: Run) -> None:
    run.request(chat("a", stream=True))
    run.answer(1, 200, SSE, CHUNKS)


def left_mid_stream(run: Run) -> None:
    run.request(chat("a", stream=True))
    run.feed(UpstreamResponse(attempt=1, status=200, headers=SSE))
    run.ex.handle_upstream_data(1, CHUNKS[:100], now=run.now)
    run.feed(ClientGone())


def translated(run: Run) -> None:
    run.request(chat("b", stream=True))
    run.answer(1, 200, SSE, ANTHROPIC_STREAM)


def fell_back(run: Run) -> None:
    run.request(chat("a"))
    run.feed(UpstreamResponse(attempt=run.attempt, status=503, headers=JSON))
    run.wait()
    run.feed(UpstreamFailed(attempt=run.attempt, kind="connect", message="refused"))
    run.wait()
    run.answer(run.attempt, 200, JSON, ANTHROPIC_ANSWER)  # b, translated


def failed(run: Run) -> None:
    run.request(chat("a"))
    run.feed(UpstreamResponse(attempt=1, status=200, headers=SSE))
    run.feed(UpstreamFailed(attempt=1, kind="reset", message="reset by peer"))


def refused(run: Run) -> None:
    run.request(b'{"model": "a", "messages": [')


def unknown_model(run: Run) -> None:
    run.request(chat("nope"))


def limited(run: Run) -> None:
    run.limiter = MemoryLimiter()
    run.request(chat("a"), [(b"authorization", b"Bearer " + KEY.encode())])
    run.answer(1, 200, JSON, ANSWER)


def mocked(run: Run) -> None:
    run.request(chat("mock-gpt", stream=True))
    while (deadline := run.ex.get_timer()) is not None and not run.ex.finished:
        run.now = deadline
        run.ex.handle_timer(now=deadline)
        run.drain()


KEYED = {
    "middleware": [
        {
            "auth": {
                "keys": [
                    {
                        "name": "team",
                        "key_sha256": hashlib.sha256(KEY.encode()).hexdigest(),
                        "rpm": 100,
                        "tpm": 100_000,
                        "budget": {"usd": 10.0, "period": "day"},
                    }
                ]
            }
        },
        "rate_limit",
    ]
}
SCENARIOS: dict[str, tuple[Callable[[], Proxy], Callable[[Run], None]]] = {
    "answered": (gateway, answered),
    "streamed": (gateway, streamed),
    "left mid-stream": (gateway, left_mid_stream),
    "translated": (gateway, translated),
    "retried, then fell back": (lambda: gateway(retry=True), fell_back),
    "failed mid-stream": (gateway, failed),
    "refused: malformed JSON": (gateway, refused),
    "refused: unknown model": (gateway, unknown_model),
    "keyed, limited, retried": (lambda: gateway(retry=True, **KEYED), limited),
    "answered by the mock": (lambda: Proxy(ProxyConfig.model_validate(OBSERVED)), mocked),
}


def unreachable_after(proxy: Proxy, scenario: Callable[[Run], None], splits: list[int]) -> int:
    """The objects the garbage collector finds unreachable once ``scenario`` ran and
    everything it made was dropped (the collector off meanwhile)."""
    gc.collect()
    gc.disable()
    try:
        run = Run(proxy, splits)
        scenario(run)
        assert run.ex.finished
        del run
        return gc.collect()
    finally:
        gc.enable()


@pytest.mark.parametrize("name", sorted(SCENARIOS))
@settings(max_examples=10, deadline=None)
@given(splits=st.lists(st.integers(min_value=0, max_value=800), max_size=6))
def test_an_exchange_that_ended_leaves_no_reference_cycle(name: str, splits: list[int]) -> None:
    make, scenario = SCENARIOS[name]
    proxy = make()
    unreachable_after(proxy, scenario, splits)  # what a first exchange loads once
    assert unreachable_after(proxy, scenario, splits) == 0
