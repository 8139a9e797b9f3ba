"""The ``rate_limit`` built-in, driven against a real ``MemoryLimiter``: requests and
tokens per minute per key and per model, budgets, the store failing, and the
token correction made exactly once per exchange."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core import (
    AcquireQuota,
    ClientGone,
    Command,
    EndResponse,
    LocalProtocolError,
    Log,
    Proxy,
    ProxyConfig,
    QuotaAnswered,
    QuotaFailed,
    SendBody,
    SendUpstreamRequest,
    SettleQuota,
    StartResponse,
    UpstreamData,
    UpstreamEnded,
    UpstreamFailed,
    UpstreamResponse,
)
from core._commands import SpendRecord
from core._state import State
from core.policies import MemoryLimiter
from core.policies._auth import period_of
from core.policies._limiter import SWEEP_EVERY

from .playbook import WALL, Playbook, client_view, config, header

KEY_A = "sk-sp-alpha-0123456789"
KEY_B = "sk-sp-bravo-0123456789"
JSON = [(b"content-type", b"application/json")]
SSE = [(b"content-type", b"text/event-stream")]
PRICE = {"input": 1000.0, "output": 2000.0}  # USD per million: 10 in + 5 out = $0.02
KEY_TPM = "sansproxy:rl:key:a:tpm"
KEY_RPM = "sansproxy:rl:key:a:rpm"
MODEL_TPM = "sansproxy:rl:model:fast:tpm"


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def chat(model: str = "fast", **extra: Any) -> bytes:
    return json.dumps(
        {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}
    ).encode()


def estimate(body: bytes, max_tokens: int = 0) -> int:
    """What the proxy promises to charge up front: bytes / 4, rounded up, plus the output."""
    return max(1, math.ceil(len(body) / 4) + max_tokens)


def limits_config(
    *,
    a: dict[str, Any] | None = None,
    b: dict[str, Any] | None = None,
    model_limits: dict[str, int] | None = None,
    price: dict[str, float] | None = None,
    on_backend_error: str = "open",
    auth: bool = True,
) -> ProxyConfig:
    deployment: dict[str, Any] = {"provider": "p", "model": "m1"}
    if price is not None:
        deployment["price"] = price
    fast: dict[str, Any] = {"deployments": [deployment]}
    if model_limits is not None:
        fast["limits"] = model_limits
    middleware: list[Any] = []
    if auth:
        keys = [
            {"name": "a", "key_sha256": sha(KEY_A), **(a or {})},
            {"name": "b", "key_sha256": sha(KEY_B), **(b or {})},
        ]
        middleware.append({"auth": {"keys": keys}})
    middleware.append("rate_limit")
    return config(
        providers={"p": {"base_url": "http://up.test:8080", "api_key": "prov"}},
        models={"fast": fast, "big": [{"provider": "p", "model": "m2"}]},
        middleware=middleware,
        limits={"on_backend_error": on_backend_error},
    )


def answer(store: MemoryLimiter, query: AcquireQuota) -> QuotaAnswered:
    admitted, decisions, spent = store.quota(
        [(c.key, c.limit, c.amount) for c in query.charges],
        [(b.key, b.usd) for b in query.budgets],
        now=query.at,
    )
    return QuotaAnswered(
        query_id=query.query_id, admitted=admitted, decisions=tuple(decisions), spent=tuple(spent)
    )


def queries(commands: Sequence[Command]) -> list[AcquireQuota]:
    return [c for c in commands if isinstance(c, AcquireQuota)]


def settlements(commands: Sequence[Command]) -> list[SettleQuota]:
    return [c for c in commands if isinstance(c, SettleQuota)]


def upstream_sent(commands: Sequence[Command]) -> bool:
    return any(isinstance(c, SendUpstreamRequest) for c in commands)


def completion(prompt: int | None, output: int | None) -> bytes:
    answer: dict[str, Any] = {"id": "c", "object": "chat.completion", "model": "m1", "choices": []}
    if prompt is not None:
        answer["usage"] = {"prompt_tokens": prompt, "completion_tokens": output}
    return json.dumps(answer).encode()


class World:
    """A proxy, its store, and a driver that carries out quota commands at once; with
    ``sync``, the proxy checks the limits in the store itself (``Proxy(limiter=)``)."""

    def __init__(self, cfg: ProxyConfig, *, sync: bool = False) -> None:
        self.store = MemoryLimiter()
        self.proxy = Proxy(cfg, limiter=self.store if sync else None)
        self.sync = sync
        self.count = 0

    def playbook(self, at: float) -> Playbook:
        self.count += 1
        pb = Playbook(self.proxy, exchange_id=f"ex{self.count}")
        pb.ex = self.proxy.exchange(exchange_id=f"ex{self.count}", now=0.0, wall_time=WALL + at)
        return pb

    def settle(self, commands: Sequence[Command]) -> None:
        if self.sync:
            assert not settlements(commands), "a proxy with a limiter settles itself"
        for cmd in settlements(commands):
            self.store.settle(
                [(a.key, a.limit, a.delta, a.charged_at) for a in cmd.adjustments],
                [(s.key, s.usd, s.ttl) for s in cmd.spends],
                now=cmd.at,
            )

    def ask(
        self, *, key: str | None = KEY_A, body: bytes | None = None, at: float = 0.0
    ) -> tuple[Playbook, list[Command]]:
        """Send a request at ``WALL + at``; answer its quota query from the store."""
        pb = self.playbook(at)
        headers = list(JSON)
        if key is not None:
            headers.append((b"authorization", b"Bearer " + key.encode()))
        out = pb.request(body=chat() if body is None else body, headers=headers)
        pending = queries(out)
        if self.sync:
            assert not pending, "a proxy with a limiter asks no query"
        elif pending:
            assert pb.ex.state is State.AWAIT_QUOTA
            out += pb.feed(answer(self.store, pending[0]))
        self.settle(out)
        return pb, out

    def finish(
        self, pb: Playbook, prompt: int | None = 10, output: int | None = 5
    ) -> list[Command]:
        """The upstream answers 200 (with this usage, or none); settle what it says."""
        out = pb.feed(
            UpstreamResponse(attempt=1, status=200, headers=JSON),
            UpstreamData(attempt=1, data=completion(prompt, output)),
            UpstreamEnded(attempt=1),
            now=1.0,
        )
        self.settle(out)
        return out

    def on_books(self, key: str) -> int:
        state = self.store.get(key)
        return 0 if state is None else sum(state.amounts)


def state_of(pb: Playbook) -> State:
    return pb.ex.state


def refusal(commands: Sequence[Command]) -> tuple[int | None, list[tuple[bytes, bytes]], Any]:
    status, headers, body, complete = client_view(list(commands))
    assert complete is True
    assert not upstream_sent(commands)
    return status, headers, json.loads(body)


# -- requests per minute --------------------------------------------------------------


def test_rpm_refuses_the_request_over_the_limit_with_retry_after_and_headers() -> None:
    world = World(limits_config(a={"rpm": 3}))
    for at in (0.0, 1.0, 2.0):
        _, out = world.ask(at=at)
        assert upstream_sent(out)
    _, out = world.ask(at=10.0)
    status, headers, body = refusal(out)
    assert status == 429
    assert body["error"]["type"] == "rate_limit_error"
    assert body["error"]["code"] == "rate_limit_exceeded"
    assert "key requests per minute (3)" in body["error"]["message"]
    retry_after = header(headers, b"retry-after")
    assert retry_after is not None and retry_after.isdigit()
    wait = int(retry_after)
    assert 50 <= wait <= 51  # the first request leaves the window at 60
    assert header(headers, b"x-ratelimit-limit-requests") == b"3"
    assert header(headers, b"x-ratelimit-remaining-requests") == b"0"
    assert header(headers, b"x-ratelimit-reset-requests") is not None
    # A refusal charges nothing: still refused just before the promised time ...
    _, out = world.ask(at=10.0 + wait - 2)
    assert refusal(out)[0] == 429
    # ... and admitted once Retry-After has passed.
    _, out = world.ask(at=10.0 + wait)
    assert upstream_sent(out)


def test_rpm_admits_again_once_the_window_has_passed() -> None:
    world = World(limits_config(a={"rpm": 2}))
    world.ask(at=0.0)
    world.ask(at=0.0)
    assert refusal(world.ask(at=30.0)[1])[0] == 429
    pb, out = world.ask(at=61.0)
    assert upstream_sent(out)
    head = world.finish(pb)[0]
    assert isinstance(head, StartResponse)
    assert header(list(head.headers), b"x-ratelimit-remaining-requests") == b"1"


def test_rpm_is_per_key() -> None:
    world = World(limits_config(a={"rpm": 1}, b={"rpm": 1}))
    assert upstream_sent(world.ask(key=KEY_A)[1])
    assert refusal(world.ask(key=KEY_A)[1])[0] == 429
    assert upstream_sent(world.ask(key=KEY_B)[1])


def test_retry_after_is_at_least_one_second() -> None:
    world = World(limits_config(a={"rpm": 1}))
    world.ask(at=0.0)
    _, headers, _ = refusal(world.ask(at=59.9)[1])
    assert header(headers, b"retry-after") == b"1"


def test_model_limits_are_shared_by_every_key() -> None:
    world = World(limits_config(model_limits={"rpm": 2}))
    assert upstream_sent(world.ask(key=KEY_A)[1])
    assert upstream_sent(world.ask(key=KEY_B)[1])
    status, headers, body = refusal(world.ask(key=KEY_A)[1])
    assert status == 429
    assert "model requests per minute (2)" in body["error"]["message"]
    assert header(headers, b"x-ratelimit-limit-requests") == b"2"
    # Another model is not limited by this one's limits.
    assert upstream_sent(world.ask(key=KEY_A, body=chat("big"))[1])


def test_model_limits_apply_without_auth() -> None:
    world = World(limits_config(model_limits={"rpm": 1}, auth=False))
    assert upstream_sent(world.ask(key=None)[1])
    assert refusal(world.ask(key=None)[1])[0] == 429


def test_a_request_bigger_than_the_token_limit_is_refused_for_good() -> None:
    world = World(limits_config(a={"tpm": 10}))
    status, headers, body = refusal(world.ask()[1])
    assert status == 429
    assert body["error"]["code"] == "request_too_large_for_limit"
    assert header(headers, b"x-should-retry") == b"false"
    assert header(headers, b"retry-after") is None


def test_no_limits_no_query() -> None:
    world = World(limits_config())
    _, out = world.ask()
    assert not queries(out) and upstream_sent(out)


def test_rate_limit_takes_no_options() -> None:
    cfg = config(mock={}, middleware=[{"rate_limit": {"rpm": 3}}])
    with pytest.raises(ValueError) as caught:
        Proxy(cfg)
    assert str(caught.value) == (
        "middleware[0].rate_limit: unknown option 'rpm' (rate_limit takes none: limits are set "
        "on auth keys (rpm, tpm, budget) and on models (limits: {rpm, tpm}))"
    )


# -- x-ratelimit headers on admitted responses ----------------------------------------------


def test_admitted_responses_carry_the_most_constrained_limit_of_each_kind() -> None:
    world = World(limits_config(a={"rpm": 5, "tpm": 1000}, model_limits={"rpm": 2}))
    pb, out = world.ask()
    (query,) = queries(out)
    tokens = next(c.amount for c in query.charges if c.key == KEY_TPM)
    head = world.finish(pb)[0]
    assert isinstance(head, StartResponse) and head.status == 200
    headers = list(head.headers)
    assert header(headers, b"x-ratelimit-limit-requests") == b"2"  # the model's, not the key's
    assert header(headers, b"x-ratelimit-remaining-requests") == b"1"
    assert header(headers, b"x-ratelimit-reset-requests") == b"1m0s"
    assert header(headers, b"x-ratelimit-limit-tokens") == b"1000"
    assert header(headers, b"x-ratelimit-remaining-tokens") == str(1000 - tokens).encode()
    assert header(headers, b"x-ratelimit-reset-tokens") == b"1m0s"
    names = [n for n, _ in headers]
    assert len(names) == len(set(names))


# -- tokens: estimate up front, corrected once ------------------------------------------------


def test_tokens_are_charged_from_the_estimate_and_corrected_once_with_real_usage() -> None:
    world = World(limits_config(a={"tpm": 10_000}, model_limits={"tpm": 10_000}))
    body = chat(max_tokens=100)
    pb, out = world.ask(body=body)
    (query,) = queries(out)
    charged = {c.key: c.amount for c in query.charges}
    assert charged == {KEY_TPM: estimate(body, 100), MODEL_TPM: estimate(body, 100)}
    assert world.on_books(KEY_TPM) == estimate(body, 100)
    out = world.finish(pb, prompt=30, output=20)
    (settled,) = settlements(out)
    assert settled.at == WALL + 1.0
    assert {a.key: a.delta for a in settled.adjustments} == {
        KEY_TPM: 50 - estimate(body, 100),
        MODEL_TPM: 50 - estimate(body, 100),
    }
    assert all(a.charged_at == WALL for a in settled.adjustments)
    assert world.on_books(KEY_TPM) == 50 and world.on_books(MODEL_TPM) == 50
    # Late events on a finished exchange settle nothing more.
    assert pb.feed(ClientGone()) == []
    assert pb.fire(10.0) == []


def test_usage_above_the_estimate_is_charged_on_top() -> None:
    world = World(limits_config(a={"tpm": 100_000}))
    pb, _ = world.ask()
    (settled,) = settlements(world.finish(pb, prompt=500, output=700))
    (adjustment,) = settled.adjustments
    assert adjustment.delta == 1200 - estimate(chat())
    assert world.on_books(KEY_TPM) == 1200


def test_streamed_usage_corrects_the_charge() -> None:
    world = World(limits_config(a={"tpm": 10_000}))
    body = chat(stream=True)
    pb, out = world.ask(body=body)
    (sent,) = [c for c in out if isinstance(c, SendUpstreamRequest)]
    assert json.loads(sent.body)["stream_options"] == {"include_usage": True}
    chunk = {"id": "c", "object": "chat.completion.chunk", "model": "m1"}
    stream = (
        b"data: "
        + json.dumps({**chunk, "choices": [{"index": 0, "delta": {"content": "x"}}]}).encode()
        + b"\n\ndata: "
        + json.dumps(
            {**chunk, "choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3}}
        ).encode()
        + b"\n\ndata: [DONE]\n\n"
    )
    out = pb.feed(
        UpstreamResponse(attempt=1, status=200, headers=SSE),
        UpstreamData(attempt=1, data=stream),
        UpstreamEnded(attempt=1),
        now=1.0,
    )
    world.settle(out)
    (settled,) = settlements(out)
    assert settled.adjustments[0].delta == 10 - estimate(body)
    assert world.on_books(KEY_TPM) == 10
    assert b'"usage"' not in client_view(out)[2]  # the client did not ask for it


def test_no_upstream_answer_refunds_the_whole_estimate() -> None:
    world = World(limits_config(a={"tpm": 10_000}))
    pb, _ = world.ask()
    out = pb.feed(UpstreamFailed(attempt=1, kind="connect"), now=0.5)
    assert client_view(out)[0] == 502
    world.settle(out)
    (settled,) = settlements(out)
    assert [a.delta for a in settled.adjustments] == [-estimate(chat())]
    assert world.on_books(KEY_TPM) == 0


def test_a_client_leaving_before_the_upstream_answers_refunds_the_estimate() -> None:
    world = World(limits_config(a={"tpm": 10_000}))
    pb, _ = world.ask()
    out = pb.feed(ClientGone(), now=0.5)
    world.settle(out)
    assert [a.delta for a in settlements(out)[0].adjustments] == [-estimate(chat())]
    assert world.on_books(KEY_TPM) == 0


def test_unknown_usage_keeps_the_estimate() -> None:
    world = World(limits_config(a={"tpm": 10_000}))
    pb, _ = world.ask()
    out = world.finish(pb, prompt=None)
    assert client_view(out)[0] == 200
    assert settlements(out) == []
    assert world.on_books(KEY_TPM) == estimate(chat())


def test_requests_are_not_refunded() -> None:
    world = World(limits_config(a={"rpm": 10, "tpm": 10_000}))
    pb, _ = world.ask()
    out = pb.feed(UpstreamFailed(attempt=1, kind="connect"), now=0.5)
    world.settle(out)
    assert [a.key for a in settlements(out)[0].adjustments] == [KEY_TPM]
    assert world.on_books(KEY_RPM) == 1


Outcome = tuple[str, int, int]

outcomes: st.SearchStrategy[Outcome] = st.tuples(
    st.sampled_from(
        [
            "usage",  # a JSON answer with usage
            "stream_usage",  # a stream whose last chunk carries usage
            "no_usage",  # a JSON answer without usage
            "error_status",  # the upstream answers 400 (usage unknown)
            "cut_stream",  # the stream breaks mid-way (usage estimated)
            "gone_relaying",  # the client leaves mid-answer (usage estimated)
            "connect",  # the upstream is never reached
            "gone_waiting",  # the client leaves before the upstream answers
            "refused",  # over the limit: charged nothing
        ]
    ),
    st.integers(0, 3000),
    st.integers(0, 3000),
)


def run_outcome(
    world: World, at: float, outcome: Outcome, body: bytes, max_tokens: int
) -> tuple[int, list[Command]]:
    """One exchange; what it really used as the books should show it."""
    kind, prompt, output = outcome
    limit_key = KEY_B if kind == "refused" else KEY_A
    pb, out = world.ask(key=limit_key, body=body, at=at)
    if kind == "refused":
        assert refusal(out)[0] == 429
        return 0, out
    used = prompt + output
    guess = estimate(body, max_tokens)
    if kind == "usage":
        out += pb.feed(
            UpstreamResponse(attempt=1, status=200, headers=JSON),
            UpstreamData(attempt=1, data=completion(prompt, output)),
            UpstreamEnded(attempt=1),
            now=0.1,
        )
    elif kind == "stream_usage":
        usage = {"prompt_tokens": prompt, "completion_tokens": output}
        data = json.dumps({"object": "chat.completion.chunk", "choices": [], "usage": usage})
        out += pb.feed(
            UpstreamResponse(attempt=1, status=200, headers=SSE),
            UpstreamData(attempt=1, data=b"data: " + data.encode() + b"\n\n"),
            UpstreamEnded(attempt=1),
            now=0.1,
        )
    elif kind == "no_usage":
        out += pb.feed(
            UpstreamResponse(attempt=1, status=200, headers=JSON),
            UpstreamData(attempt=1, data=completion(None, None)),
            UpstreamEnded(attempt=1),
            now=0.1,
        )
        used = guess
    elif kind == "error_status":
        out += pb.feed(
            UpstreamResponse(attempt=1, status=400, headers=JSON),
            UpstreamData(attempt=1, data=b'{"error":{"message":"no"}}'),
            UpstreamEnded(attempt=1),
            now=0.1,
        )
        used = guess
    elif kind == "cut_stream":
        out += pb.feed(
            UpstreamResponse(attempt=1, status=200, headers=SSE),
            UpstreamData(
                attempt=1, data=b'data: {"choices":[{"delta":{"content":"Hello world"}}]}\n\n'
            ),
            UpstreamFailed(attempt=1, kind="reset"),
            now=0.1,
        )
        # What was consumed, estimated: the prompt's bytes / 4, and the 11
        # characters relayed at about four a token (3).
        used = math.ceil(len(body) / 4) + 3
    elif kind == "gone_relaying":
        out += pb.feed(UpstreamResponse(attempt=1, status=200, headers=SSE), ClientGone(), now=0.1)
        used = math.ceil(len(body) / 4)  # the prompt was read; nothing was generated yet
    elif kind == "connect":
        out += pb.feed(UpstreamFailed(attempt=1, kind="connect"), now=0.1)
        used = 0
    else:
        assert kind == "gone_waiting"
        out += pb.feed(ClientGone(), now=0.1)
        used = 0
    assert pb.ex.finished
    world.settle(out)
    return used, out


@pytest.mark.parametrize("sync", [False, True], ids=["store", "limiter in the proxy"])
@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(outcomes, st.integers(0, 400), st.integers(0, 2000)), min_size=1, max_size=25
    )
)
def test_every_exchange_is_charged_or_refunded_exactly_once(
    sync: bool, sequence: list[tuple[Outcome, int, int]]
) -> None:
    # Key b's token limit refuses any request; key a's never does. All within one window.
    world = World(
        limits_config(a={"tpm": 10**9}, b={"tpm": 1}, model_limits={"tpm": 10**9, "rpm": 10**6}),
        sync=sync,
    )
    expected = 0
    admitted = 0
    for i, (outcome, padding, max_tokens) in enumerate(sequence):
        body = (
            chat(max_tokens=max_tokens, user="x" * padding)
            if max_tokens
            else chat(user="x" * padding)
        )
        used, out = run_outcome(world, i * 1.0, outcome, body, max_tokens)
        expected += used
        admitted += outcome[0] != "refused"
        settled = settlements(out)
        assert len(settled) <= 1, "settled twice"
        if used != (0 if outcome[0] == "refused" else estimate(body, max_tokens)) and not sync:
            assert len(settled) == 1, "a correction was due"
        client = [c for c in out if isinstance(c, StartResponse | SendBody | EndResponse)]
        ends = [c for c in client if isinstance(c, EndResponse)]
        assert len(ends) <= 1
    assert world.on_books(KEY_TPM) == expected
    assert world.on_books(MODEL_TPM) == expected
    assert world.on_books("sansproxy:rl:model:fast:rpm") == admitted


Step = tuple[str, str, int, int, int, float]

steps: st.SearchStrategy[Step] = st.tuples(
    st.sampled_from([KEY_A, KEY_B]),
    st.sampled_from(["usage", "no_usage", "connect", "gone_waiting"]),
    st.integers(0, 3000),  # prompt tokens the upstream reports
    st.integers(0, 3000),  # output tokens
    st.integers(0, 300),  # max_tokens asked (0: none)
    st.floats(0, 40),  # seconds since the previous request
)


def exchange_in(world: World, step: Step, at: float) -> tuple[Any, ...]:
    """One request of ``step`` at ``WALL + at``: what the client got."""
    key, kind, prompt, output, max_tokens, _ = step
    body = chat(max_tokens=max_tokens) if max_tokens else chat()
    pb, out = world.ask(key=key, body=body, at=at)
    if not pb.ex.finished:  # admitted
        if kind == "usage":
            out += world.finish(pb, prompt, output)
        elif kind == "no_usage":
            out += world.finish(pb, None, None)
        else:
            event = UpstreamFailed(attempt=1, kind="connect") if kind == "connect" else ClientGone()
            more = pb.feed(event, now=0.1)
            world.settle(more)
            out += more
    assert pb.ex.finished
    return client_view(out)


@settings(max_examples=80, deadline=None)
@given(st.lists(steps, min_size=1, max_size=30))
def test_a_limiter_in_the_proxy_decides_and_books_as_the_store_does(
    sequence: list[Step],
) -> None:
    # Limits small enough to refuse often: requests and tokens per key and per
    # model, key a's budget, windows sliding as time goes on.
    cfg = limits_config(
        a={"rpm": 5, "tpm": 9000, "budget": {"usd": 0.2, "period": "day"}},
        b={"rpm": 3},
        model_limits={"rpm": 7, "tpm": 12000},
        price=PRICE,
    )
    store, in_proxy = World(cfg), World(cfg, sync=True)
    at = 0.0
    for step in sequence:
        at += step[-1]
        assert exchange_in(in_proxy, step, at) == exchange_in(store, step, at)
    for key in (
        KEY_RPM,
        KEY_TPM,
        MODEL_TPM,
        "sansproxy:rl:key:b:rpm",
        "sansproxy:rl:model:fast:rpm",
    ):
        assert in_proxy.store.get(key) == store.store.get(key)
    spend = f"sansproxy:spend:a:{period_of('day', WALL + at)[0]}"
    assert in_proxy.store.spent(spend, now=WALL + at) == store.store.spent(spend, now=WALL + at)


def test_a_proxy_with_a_limiter_sweeps_keys_whose_usage_left_the_window() -> None:
    world = World(limits_config(a={"rpm": 10**6}, b={"rpm": 10**6}), sync=True)
    world.finish(world.ask(key=KEY_B, at=0.0)[0])
    assert world.store.get("sansproxy:rl:key:b:rpm") is not None
    # Each check ticks the limiter: a sweep within SWEEP_EVERY of them, here two
    # minutes later (key b's one entry has left its window).
    for i in range(SWEEP_EVERY):
        world.finish(world.ask(key=KEY_A, at=120.0 + i * 1e-3)[0])
    assert world.store.get("sansproxy:rl:key:b:rpm") is None
    assert world.store.get(KEY_RPM) is not None


def test_a_limiter_is_only_for_the_memory_backend() -> None:
    cfg = config(limits={"backend": "redis", "redis_url": "redis://127.0.0.1:1"})
    with pytest.raises(ValueError, match="memory"):
        Proxy(cfg, limiter=MemoryLimiter())


# -- budgets ---------------------------------------------------------------------------------


def test_spend_is_recorded_and_the_request_after_the_budget_is_refused() -> None:
    world = World(limits_config(a={"budget": {"usd": 0.05, "period": "day"}}, price=PRICE))
    spends: list[SpendRecord] = []
    for i in range(3):  # $0.02 each: the third crosses $0.05 and is still served
        pb, out = world.ask(at=i * 10.0)
        (query,) = queries(out)
        assert query.charges == ()
        assert [b.usd for b in query.budgets] == [0.05]
        assert upstream_sent(out)
        (settled,) = settlements(world.finish(pb))
        spends.extend(settled.spends)
    assert [s.key for s in spends] == ["sansproxy:spend:a:2023-11-14"] * 3
    assert [s.usd for s in spends] == [pytest.approx(0.02)] * 3
    day_end = 1_700_006_400.0  # 2023-11-15T00:00:00Z
    assert spends[0].ttl == pytest.approx(day_end - WALL + 86400)
    assert world.store.spent("sansproxy:spend:a:2023-11-14", now=WALL + 40) == pytest.approx(0.06)
    status, headers, body = refusal(world.ask(at=40.0)[1])
    assert status == 429
    assert body["error"]["type"] == "insufficient_quota"
    assert body["error"]["code"] == "insufficient_quota"
    assert "$0.05" in body["error"]["message"] and "day" in body["error"]["message"]
    assert header(headers, b"x-should-retry") == b"false"
    assert header(headers, b"retry-after") is None
    # Another key is not affected; the next day starts from nothing.
    assert upstream_sent(world.ask(key=KEY_B, at=40.0)[1])
    assert upstream_sent(world.ask(at=day_end - WALL + 1)[1])


def test_a_total_budget_never_resets() -> None:
    world = World(limits_config(a={"budget": {"usd": 0.01, "period": "total"}}, price=PRICE))
    pb, _ = world.ask()
    (settled,) = settlements(world.finish(pb))
    assert [(s.key, s.ttl) for s in settled.spends] == [("sansproxy:spend:a:total", None)]
    assert refusal(world.ask(at=400 * 86400.0)[1])[0] == 429


def test_a_budget_refusal_wins_over_a_rate_limit_refusal() -> None:
    world = World(limits_config(a={"rpm": 1, "budget": {"usd": 0.01}}, price=PRICE))
    world.finish(world.ask()[0])
    _, _, body = refusal(world.ask()[1])
    assert body["error"]["code"] == "insufficient_quota"


def test_no_price_no_spend() -> None:
    world = World(limits_config(a={"tpm": 10_000, "budget": {"usd": 1}}))
    pb, _ = world.ask()
    (settled,) = settlements(world.finish(pb))
    assert settled.spends == ()


def ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("when", "period", "expected_id", "ends"),
    [
        ("2023-12-31T23:59:59.999", "day", "2023-12-31", "2024-01-01T00:00:00"),
        ("2024-01-01T00:00:00", "day", "2024-01-01", "2024-01-02T00:00:00"),
        ("2023-12-31T23:59:59", "month", "2023-12", "2024-01-01T00:00:00"),
        ("2024-01-01T00:00:00", "month", "2024-01", "2024-02-01T00:00:00"),
        ("2024-02-29T12:00:00", "day", "2024-02-29", "2024-03-01T00:00:00"),
        ("2024-02-29T23:59:59", "month", "2024-02", "2024-03-01T00:00:00"),
        ("2023-02-28T23:59:59", "month", "2023-02", "2023-03-01T00:00:00"),
        ("2100-02-28T10:00:00", "day", "2100-02-28", "2100-03-01T00:00:00"),
        ("2000-02-29T10:00:00", "month", "2000-02", "2000-03-01T00:00:00"),
        ("1970-01-01T00:00:00", "month", "1970-01", "1970-02-01T00:00:00"),
    ],
)
def test_period_of_days_and_months_in_utc(
    when: str, period: Any, expected_id: str, ends: str
) -> None:
    wall = ts(when)
    pid, end, ttl = period_of(period, wall)
    assert pid == expected_id
    assert end == ts(ends)
    assert ttl == pytest.approx(ts(ends) - wall + 86400)


def test_a_total_period_has_no_end() -> None:
    assert period_of("total", WALL) == ("total", None, None)


@settings(max_examples=200)
@given(st.integers(0, 4_102_444_800 * 10).map(lambda n: n / 10), st.sampled_from(["day", "month"]))
def test_period_of_agrees_with_datetime(wall: float, period: Any) -> None:
    moment = datetime.fromtimestamp(wall, tz=UTC)
    pid, end, _ = period_of(period, wall)
    if period == "day":
        assert pid == moment.strftime("%Y-%m-%d")
    else:
        assert pid == moment.strftime("%Y-%m")
    assert end is not None and wall < end
    after = datetime.fromtimestamp(end, tz=UTC)
    assert (after.hour, after.minute, after.second) == (0, 0, 0)
    assert period_of(period, end - 0.5)[0] == pid
    assert period_of(period, end)[0] != pid
    if period == "month":
        assert after.day == 1


# -- the store failing --------------------------------------------------------------------


def test_fail_open_admits_unmetered_with_a_warning_and_no_headers() -> None:
    world = World(limits_config(a={"rpm": 1, "tpm": 1000}, on_backend_error="open"))
    pb = world.playbook(0.0)
    out = pb.request(body=chat(), headers=[(b"authorization", b"Bearer " + KEY_A.encode())])
    (query,) = queries(out)
    out = pb.feed(QuotaFailed(query_id=query.query_id, message="connection refused"))
    (warning,) = [c for c in out if isinstance(c, Log)]
    assert warning.level == "warning"
    assert "fail open" in warning.message
    assert warning.fields["error"] == "connection refused"
    assert upstream_sent(out)
    out = world.finish(pb)
    head = out[0]
    assert isinstance(head, StartResponse) and head.status == 200
    assert not any(n.startswith(b"x-ratelimit") for n, _ in head.headers)
    assert settlements(out) == []  # nothing was charged: nothing to correct


def test_fail_closed_answers_503() -> None:
    world = World(limits_config(a={"rpm": 1}, on_backend_error="closed"))
    pb = world.playbook(0.0)
    out = pb.request(body=chat(), headers=[(b"authorization", b"Bearer " + KEY_A.encode())])
    (query,) = queries(out)
    out = pb.feed(QuotaFailed(query_id=query.query_id, message="down"))
    status, headers, body = refusal(out)
    assert status == 503
    assert body["error"]["type"] == "service_unavailable"
    assert body["error"]["code"] == "service_unavailable"
    assert header(headers, b"retry-after") == b"1"
    assert settlements(out) == []


@pytest.mark.parametrize("mode", ["open", "closed"])
def test_a_store_that_does_not_answer_in_time_counts_as_failed(mode: str) -> None:
    world = World(limits_config(a={"rpm": 1}, on_backend_error=mode))
    pb = world.playbook(0.0)
    pb.now = 3.0
    out = pb.request(body=chat(), headers=[(b"authorization", b"Bearer " + KEY_A.encode())])
    (query,) = queries(out)
    deadline = pb.ex.get_timer()
    assert deadline == 3.0 + query.timeout
    assert pb.fire(3.0 + query.timeout / 2) == []  # early: still waiting
    assert pb.ex.state is State.AWAIT_QUOTA
    out = pb.fire(deadline)
    if mode == "open":
        assert upstream_sent(out)
        assert any(isinstance(c, Log) and "fail open" in c.message for c in out)
    else:
        assert refusal(out)[0] == 503


def test_a_client_leaving_while_the_store_decides_ends_the_exchange_quietly() -> None:
    world = World(limits_config(a={"rpm": 1}))
    pb = world.playbook(0.0)
    pb.request(body=chat(), headers=[(b"authorization", b"Bearer " + KEY_A.encode())])
    assert state_of(pb) is State.AWAIT_QUOTA
    out = pb.feed(ClientGone())
    assert not any(isinstance(c, StartResponse | SendBody | EndResponse) for c in out)
    assert not upstream_sent(out)
    assert state_of(pb) is State.DONE and pb.ex.outcome == "client_gone"
    assert pb.ex.get_timer() is None


def test_an_answer_to_another_query_is_a_driver_error() -> None:
    world = World(limits_config(a={"rpm": 1}))
    pb = world.playbook(0.0)
    out = pb.request(body=chat(), headers=[(b"authorization", b"Bearer " + KEY_A.encode())])
    (query,) = queries(out)
    with pytest.raises(LocalProtocolError, match="pending"):
        pb.feed(QuotaFailed(query_id=query.query_id + 1, message="?"))
    assert pb.ex.state is State.ERROR


@pytest.mark.parametrize("gave_up", ["client_gone", "timeout"])
def test_a_late_quota_answer_is_tolerated(gave_up: str) -> None:
    world = World(limits_config(a={"rpm": 1}))
    pb = world.playbook(0.0)
    out = pb.request(body=chat(), headers=[(b"authorization", b"Bearer " + KEY_A.encode())])
    (query,) = queries(out)
    late = answer(world.store, query)  # the store did its work; the reply is in flight
    if gave_up == "client_gone":
        pb.feed(ClientGone())
    else:
        deadline = pb.ex.get_timer()
        assert deadline is not None
        pb.fire(deadline)
    state = pb.ex.state
    out = pb.feed(late, now=pb.now + 0.1)
    assert pb.ex.state is state
    # The charge the late answer made is given back: the key's one request is free again.
    world.settle(out)
    assert len(settlements(out)) == 1
    _, again = world.ask(at=1.0)
    assert upstream_sent(again)
