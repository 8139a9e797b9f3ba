"""Hypothesis: the exchange never misbehaves, whatever the events and splits."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from core import (
    ClientGone,
    Command,
    EndResponse,
    Event,
    ExchangeTotals,
    LocalProtocolError,
    MetricsCollected,
    RecordExchange,
    RequestData,
    RequestEnded,
    RequestReceived,
    SendBody,
    SSEEvent,
    StartResponse,
    TimerFired,
    UpstreamData,
    UpstreamEnded,
    UpstreamFailed,
    UpstreamResponse,
)
from core._state import State
from tests.support.fuzz import examples

from .playbook import Playbook, config, upstream_config

SSE = [(b"content-type", b"text/event-stream")]
JSON = [(b"content-type", b"application/json")]

events = st.one_of(
    st.builds(
        RequestReceived,
        method=st.sampled_from([b"GET", b"POST"]),
        target=st.sampled_from([b"/v1/chat/completions", b"/health", b"/../x", b"/v1/models?a=b"]),
        headers=st.sampled_from([[], [(b"content-length", b"3")], [(b"content-length", b"x")]]),
    ),
    st.builds(RequestData, data=st.binary(max_size=8)),
    st.just(RequestEnded()),
    st.builds(
        UpstreamResponse,
        attempt=st.integers(1, 2),
        status=st.sampled_from([200, 404, 500]),
        headers=st.sampled_from([SSE, JSON, []]),
    ),
    st.builds(UpstreamData, attempt=st.integers(1, 2), data=st.binary(max_size=40)),
    st.builds(UpstreamEnded, attempt=st.integers(1, 2)),
    st.builds(
        UpstreamFailed,
        attempt=st.integers(1, 2),
        kind=st.sampled_from(["connect", "timeout", "reset", "protocol"]),
    ),
    st.just(TimerFired()),
    st.just(ClientGone()),
)


def check_client_sequence(commands: list[Command]) -> None:
    """The client sees: one head, then body chunks, then at most one end."""
    started = ended = False
    for cmd in commands:
        if isinstance(cmd, StartResponse):
            assert not started, "two response heads"
            started = True
        elif isinstance(cmd, SendBody):
            assert started and not ended, "body outside a response"
            assert cmd.data, "empty body chunk"
        elif isinstance(cmd, EndResponse):
            assert started and not ended, "end outside a response"
            ended = True


@settings(max_examples=examples(400))
@given(
    st.lists(events, max_size=12),
    st.sampled_from(["mock", "upstream"]),
    st.lists(st.floats(0, 100), min_size=12, max_size=12),
)
def test_every_state_and_input_either_advances_or_raises_the_local_error(
    sequence: list[Event], mode: str, times: list[float]
) -> None:
    cfg = (
        config(mock={"stream_delay": 1})
        if mode == "mock"
        else upstream_config(upstream={"read_timeout": 5}, limits={"max_sse_event_size": 64})
    )
    pb = Playbook(cfg)
    commands: list[Command] = []
    now = 0.0
    for event, dt in zip(sequence, times, strict=False):
        now += dt
        before = pb.ex.state
        try:
            commands.extend(pb.feed(event, now=now))
        except LocalProtocolError:
            assert pb.ex.state is State.ERROR
            # Once broken, always broken.
            for later in (RequestEnded(), ClientGone(), TimerFired()):
                try:
                    pb.ex.handle(later, now=now)
                except LocalProtocolError:
                    pass
                else:  # pragma: no cover - the assertion below explains
                    raise AssertionError("an exchange in ERROR accepted an event")
            break
        else:
            assert before is State.ERROR or pb.ex.state is not State.ERROR
        timer = pb.ex.get_timer()
        if pb.ex.finished:
            assert timer is None
    check_client_sequence(commands)


def _seen(commands: list[Command]) -> list[object]:
    """What a driver acts on, comparable (a record by what it says)."""
    out: list[object] = []
    for cmd in commands:
        if isinstance(cmd, RecordExchange):
            record = cmd.record
            out.append(("record", record.outcome, record.status, record.usage, record.error_code))
        else:
            out.append(cmd)
    return out


chunks = st.one_of(
    st.tuples(st.sampled_from([1, 1, 1, 2, 0]), st.binary(max_size=60)),
    st.tuples(st.just(True), st.just(b"data: x\n\n")),  # a bool is no attempt number
    st.tuples(st.just(1), st.just(bytearray(b"data: {}\n\n"))),
)


@settings(max_examples=examples(300))
@given(
    st.lists(st.one_of(chunks, events), max_size=14),
    st.sampled_from([SSE, JSON]),
    st.booleans(),
)
def test_the_upstream_data_shorthand_is_handle_with_the_event(
    steps: list[object], headers: list[tuple[bytes, bytes]], usage: bool
) -> None:
    """``handle_upstream_data(a, d)`` does what ``handle(UpstreamData(attempt=a, data=d))``
    does, in every state: the same commands, state and errors."""
    cfg = upstream_config(  # observed: the exchange ends with a record to compare
        upstream={"read_timeout": 5},
        limits={"max_sse_event_size": 64},
        metrics={"enabled": True},
    )
    body = b'{"model":"m","stream":true}' if usage else b"{}"
    plain, short = Playbook(cfg), Playbook(cfg)
    for pb in (plain, short):
        pb.request(b"POST", b"/v1/chat/completions", body)
        pb.feed(UpstreamResponse(attempt=1, status=200, headers=headers))
    now = 0.0
    for step in steps:
        now += 0.5
        outcomes: list[object] = []
        for pb in (plain, short):
            try:
                if isinstance(step, tuple):
                    attempt, data = step
                    if pb is plain:
                        event = UpstreamData(attempt=attempt, data=data)  # may refuse
                        pb.ex.handle(event, now=now)
                    else:
                        pb.ex.handle_upstream_data(attempt, data, now=now)
                else:
                    pb.ex.handle(step, now=now)  # type: ignore[arg-type]
            except (LocalProtocolError, TypeError, ValueError) as exc:
                outcomes.append((type(exc), str(exc), pb.ex.state))
            else:
                outcomes.append((_seen(pb.drain()), pb.ex.state, pb.ex.get_timer()))
        assert outcomes[0] == outcomes[1]
        if plain.ex.state is State.ERROR:
            break


sse_events = st.lists(
    st.builds(
        SSEEvent,
        data=st.text(
            st.characters(exclude_categories=["Cs"], exclude_characters="\r"), max_size=30
        ),
        event=st.none() | st.sampled_from(["message", "content_block_delta", "ping"]),
        has_data=st.just(True),
    ),
    max_size=10,
)


def relay(stream: bytes, cuts: list[int]) -> list[Command]:
    pb = Playbook(upstream_config())
    pb.request(b"POST", b"/v1/chat/completions", b"{}")
    out = pb.feed(UpstreamResponse(attempt=1, status=200, headers=SSE))
    points = sorted({c % (len(stream) + 1) for c in cuts})
    start = 0
    for point in [*points, len(stream)]:
        if point > start:
            out.extend(pb.feed(UpstreamData(attempt=1, data=stream[start:point])))
            start = point
    out.extend(pb.feed(UpstreamEnded(attempt=1)))
    return out


@settings(max_examples=examples(300))
@given(
    sse_events,
    st.lists(st.integers(0, 10_000), max_size=20),
    st.sampled_from([b"\n", b"\r\n", b"\r"]),
)
def test_upstream_splits_never_give_the_client_a_malformed_stream(
    evs: list[SSEEvent], cuts: list[int], newline: bytes
) -> None:
    stream = b"".join(e.encode() for e in evs).replace(b"\n", newline)
    whole = relay(stream, [])
    split = relay(stream, cuts)
    check_client_sequence(split)
    body = [c.data for c in split if isinstance(c, SendBody)]
    # Every chunk the client receives is whole events, and the same bytes in all.
    for chunk in body:
        assert chunk.endswith(b"\n\n")
        assert b"\r" not in chunk
    assert b"".join(body) == b"".join(c.data for c in whole if isinstance(c, SendBody))
    assert b"".join(body) == b"".join(e.encode() for e in evs)
    assert split[-1] == EndResponse(complete=True)


# -- quotas, backoffs and the client leaving: the states the policies added ---------------------

import hashlib  # noqa: E402
import json  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402

from core import (  # noqa: E402
    AcquireQuota,
    CancelUpstream,
    Proxy,
    QuotaAnswered,
    QuotaFailed,
    SendUpstreamRequest,
    SettleQuota,
)
from core._state import TRANSITIONS  # noqa: E402
from core.policies import Decision  # noqa: E402

_KEY = b"sk-sp-fuzz"
_AUTH = [(b"authorization", b"Bearer " + _KEY), (b"content-type", b"application/json")]
_CHAT = json.dumps(
    {"model": "fast", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
).encode()


def _policy_proxy(on_backend_error: str) -> Proxy:
    key = {
        "name": "fuzz",
        "key_sha256": hashlib.sha256(_KEY).hexdigest(),
        "rpm": 100,
        "tpm": 100_000,
        "budget": {"usd": 5, "period": "day"},
    }
    return Proxy(
        config(
            providers={
                "p": {"base_url": "http://p.test", "read_timeout": 5},
                "q": {"base_url": "http://q.test", "read_timeout": 5, "type": "anthropic"},
            },
            models={
                "fast": {
                    "deployments": [
                        {"provider": "p", "model": "m1"},
                        {"provider": "q", "model": "claude-x"},  # translated, held whole
                    ],
                    "limits": {"rpm": 50},
                }
            },
            middleware=[
                {"auth": {"keys": [key]}},
                "rate_limit",
                {"retry": {"attempts": 2, "backoff": 0.2, "max_backoff": 1, "timeout": 30}},
            ],
            limits={"on_backend_error": on_backend_error, "max_sse_event_size": 256},
            # Observed: every exchange ends with its record (and upstreams get traceparent).
            metrics={"enabled": True},
            telemetry={"otlp_endpoint": "http://otel.test:4318"},
        )
    )


_POLICY_PROXIES = {mode: _policy_proxy(mode) for mode in ("open", "closed")}

# What a well-behaved driver does next: ``choice`` picks one of the events that apply
# in the exchange's current state (see ``_Driver.step``); the rest are its details.
actions = st.fixed_dictionaries(
    {
        "choice": st.integers(0, 11),
        "quota": st.sampled_from(["admit", "admit", "admit", "refuse", "fail"]),
        "dt": st.floats(0, 1.5),  # time passes: a timer early, on time, or stale
        "status": st.sampled_from([200, 200, 400, 429, 500, 503]),
        "sse": st.booleans(),
        "retry_after": st.sampled_from([[], [(b"retry-after", b"0.5")], [(b"retry-after", b"99")]]),
        "data": st.sampled_from(
            [
                b'data: {"choices":[{"index":0,"delta":{"content":"x"}}]}\n\n',
                b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4}}\n\n',
                b"data: [DONE]\n\n",
                b'data: {"cho',
                b"x" * 300,
                b"{}",
                b'event: message_start\ndata: {"type":"message_start","message":{"id":"m",'
                b'"usage":{"input_tokens":2,"output_tokens":0}}}\n\n',
                b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
                b'"delta":{"type":"text_delta","text":"hi"}}\n\n',
                b'{"id":"m","type":"message","content":[{"type":"text","text":"hi"}],'
                b'"usage":{"input_tokens":2,"output_tokens":1}}',
            ]
        ),
        "fail": st.sampled_from(["connect", "timeout", "reset", "protocol"]),
    }
)


class _Driver:
    """Feeds an exchange only what a correct driver could: answers to the pending
    query, events of the running attempt, timers (early, late, stale), the client
    leaving. Keeps every command."""

    def __init__(self, proxy: Proxy, seed: float) -> None:
        self.ex = proxy.exchange(exchange_id="fz", now=0.0, wall_time=1_700_000_000.0, rand=seed)
        self.now = 0.0
        self.commands: list[Command] = []
        self.query: AcquireQuota | None = None
        self.running: int | None = None
        self.head = False
        self.attempts_sent: list[int] = []

    def feed(self, event: Event) -> None:
        self.ex.handle(event, now=self.now)
        while (cmd := self.ex.next_command()) is not None:
            self.commands.append(cmd)
            if isinstance(cmd, AcquireQuota):
                self.query = cmd
            elif isinstance(cmd, SendUpstreamRequest):
                self.attempts_sent.append(cmd.attempt)
                self.running, self.head = cmd.attempt, False
            elif isinstance(cmd, CancelUpstream):
                assert cmd.attempt == self.running, "cancelled an attempt that is not running"
                self.running = None
        if self.ex.state is not State.AWAIT_QUOTA:
            self.query = None  # no longer waited for: a correct driver drops a late answer

    def step(self, action: dict[str, Any]) -> None:
        """Do one of the things a driver could do now (``action["choice"]`` says which)."""
        if self.query is not None:
            options = ["quota", "quota", "quota", "timer"]
        elif self.running is not None and not self.head:
            options = ["head", "head", "fail", "timer"]
        elif self.running is not None:
            options = ["data", "data", "data", "end", "fail", "timer"]
        else:
            options = ["timer"]
        self.do(options[action["choice"] % len(options)], action)

    def do(self, kind: str, action: dict[str, Any]) -> None:
        query, running = self.query, self.running
        if kind == "quota":
            assert query is not None
            if action["quota"] == "fail":
                self.feed(QuotaFailed(query_id=query.query_id, message="down"))
                return
            admit = action["quota"] == "admit"
            decisions = tuple(
                Decision(
                    allowed=admit,
                    limit=c.limit.limit,
                    remaining=c.limit.limit - 1 if admit else 0,
                    reset_after=60.0,
                    retry_after=0.0 if admit else 12.5,
                )
                for c in query.charges
            )
            spent = tuple(0.0 for _ in query.budgets)
            self.feed(
                QuotaAnswered(
                    query_id=query.query_id, admitted=admit, decisions=decisions, spent=spent
                )
            )
        elif kind == "timer":  # early, on time or stale: all harmless
            self.now += action["dt"]
            self.feed(TimerFired())
        elif kind == "head":
            assert running is not None
            self.head = True
            content = SSE if action["sse"] else JSON
            headers = [*content, *action["retry_after"]]
            self.feed(UpstreamResponse(attempt=running, status=action["status"], headers=headers))
        elif kind == "data":
            assert running is not None
            self.feed(UpstreamData(attempt=running, data=action["data"]))
        elif kind == "end":
            assert running is not None
            self.running = None
            self.feed(UpstreamEnded(attempt=running))
        elif kind == "fail":
            assert running is not None
            self.running = None
            self.feed(UpstreamFailed(attempt=running, kind=action["fail"]))
        else:
            assert kind == "gone"
            self.feed(ClientGone())
            self.running = None

    def finish(self) -> None:
        """Let the exchange run to its end: answer, complete, fire timers."""
        plain = {"quota": "admit", "status": 200, "sse": False, "retry_after": []}
        for _ in range(60):
            if self.ex.finished:
                return
            if self.query is not None:
                self.do("quota", plain)
            elif self.running is not None:
                if not self.head:
                    self.do("head", plain)
                self.do("end", plain)
            else:
                timer = self.ex.get_timer()
                wait = 0.0 if timer is None else max(0.0, timer - self.now)
                self.do("timer", {"dt": wait})
        raise AssertionError(f"the exchange never finished (state {self.ex.state.name})")


@settings(max_examples=examples(250), deadline=None)
@given(
    st.lists(actions, max_size=20),
    st.one_of(st.none(), st.integers(0, 20)),
    st.sampled_from(["open", "closed"]),
    st.floats(0, 0.999),
)
def test_quota_answers_timers_failures_and_leaving_never_break_the_client_stream(
    sequence: list[dict[str, Any]], leaves_at: int | None, mode: str, seed: float
) -> None:
    driver = _Driver(_POLICY_PROXIES[mode], seed)
    driver.feed(RequestReceived(method=b"POST", target=b"/v1/chat/completions", headers=_AUTH))
    driver.feed(RequestData(data=_CHAT))
    driver.feed(RequestEnded())
    for i, action in enumerate(sequence):
        if i == leaves_at:
            driver.do("gone", action)
        driver.step(action)  # a correct driver never gets LocalProtocolError
        check_client_sequence(driver.commands)
        if driver.ex.finished:
            assert driver.ex.get_timer() is None
    driver.finish()
    ex, commands = driver.ex, driver.commands
    assert ex.state is State.DONE
    check_client_sequence(commands)
    client = [c for c in commands if isinstance(c, StartResponse | SendBody | EndResponse)]
    ends = [c for c in client if isinstance(c, EndResponse)]
    left = leaves_at is not None and leaves_at < len(sequence)
    if ex.outcome == "client_gone" or left:
        # A client gone is sent nothing more. Gone after the stream's last event
        # ([DONE]), it had its answer: "completed", though no end was sent.
        assert len(ends) <= 1
        if not ends:
            assert ex.outcome in ("client_gone", "completed")
    else:
        assert len(ends) == 1 and client[-1] is ends[0], "exactly one end, and last"
        assert isinstance(client[0], StartResponse)
    # Attempts are numbered 1, 2, ...; the quota is settled at most once.
    assert driver.attempts_sent == list(range(1, len(driver.attempts_sent) + 1))
    # One record of the exchange, after everything the client was sent, saying what it saw.
    records = [c for c in commands if isinstance(c, RecordExchange)]
    assert len(records) == 1
    record = records[0].record
    assert commands.index(client[-1]) < commands.index(records[0]) if client else True
    assert record.outcome == ex.outcome and record.status == ex.response_status
    assert [a.number for a in record.attempts] == driver.attempts_sent
    assert record.retries == max(0, len(driver.attempts_sent) - 1)
    assert record.key_name == "fuzz" or record.status in (None, 401)
    assert record.usage == ex.usage and record.cost_usd == ex.cost_usd
    assert records[0].totals == ExchangeTotals.of(record), "the metrics count what it says"
    span_ids = {record.span_id, *(a.span_id for a in record.attempts)}
    assert len(span_ids) == 1 + len(record.attempts), "every span its own id"
    assert len([c for c in commands if isinstance(c, SettleQuota)]) <= 1
    # Nothing more happens once it is over.
    before = len(commands)
    driver.now += 100
    driver.feed(TimerFired())
    driver.feed(ClientGone())
    assert len(driver.commands) == before


quota_events = st.one_of(
    events,
    st.builds(
        QuotaAnswered,
        query_id=st.integers(1, 2),
        admitted=st.booleans(),
        decisions=st.sampled_from(
            [
                (),
                (Decision(allowed=True, limit=100, remaining=99, reset_after=60, retry_after=0),)
                * 4,
            ]
        ),
        spent=st.sampled_from([(), (0.0,), (9.0,)]),
    ),
    st.builds(QuotaFailed, query_id=st.integers(1, 2), message=st.just("down")),
    st.just(RequestReceived(method=b"POST", target=b"/v1/chat/completions", headers=_AUTH)),
    st.just(RequestData(data=_CHAT)),
)


@settings(max_examples=examples(300), deadline=None)
@given(
    st.lists(quota_events, max_size=14),
    st.sampled_from(["open", "closed"]),
    st.lists(st.floats(0, 3), min_size=14, max_size=14),
)
def test_every_state_and_input_with_quotas_either_advances_or_raises_the_local_error(
    sequence: list[Event], mode: str, times: list[float]
) -> None:
    pb = Playbook(_POLICY_PROXIES[mode])
    commands: list[Command] = []
    now = 0.0
    for event, dt in zip(sequence, times, strict=False):
        now += dt
        before = pb.ex.state
        try:
            commands.extend(pb.feed(event, now=now))
        except LocalProtocolError:
            assert pb.ex.state is State.ERROR
            for later in (ClientGone(), TimerFired(), QuotaFailed(query_id=1, message="x")):
                with pytest.raises(LocalProtocolError):
                    pb.ex.handle(later, now=now)
            break
        else:
            assert before is State.ERROR or pb.ex.state is not State.ERROR
        if pb.ex.finished:
            assert pb.ex.get_timer() is None
    check_client_sequence(commands)


def _reach(state: State) -> Playbook:
    """An exchange in ``state`` (attempt 1 and query 1 where they apply)."""
    if state is State.LOCAL_STREAM:
        pb = Playbook(config(mock={"stream_delay": 1}))
        pb.request(body=_CHAT, headers=list(JSON))
        assert pb.ex.state is state
        return pb
    if state is State.AWAIT_METRICS:
        pb = Playbook(config(metrics={"enabled": True}))
        pb.request(method=b"GET", target=b"/metrics")
        assert pb.ex.state is state
        return pb
    pb = Playbook(_POLICY_PROXIES["open"])
    if state is State.RECV_HEAD:
        return pb
    pb.feed(RequestReceived(method=b"POST", target=b"/v1/chat/completions", headers=_AUTH))
    if state is State.RECV_BODY:
        return pb
    if state is State.DONE:
        pb.feed(ClientGone())
        return pb
    if state is State.ERROR:
        with pytest.raises(LocalProtocolError):
            pb.feed(UpstreamEnded(attempt=1))
        return pb
    pb.feed(RequestData(data=_CHAT), RequestEnded())
    if state is State.AWAIT_QUOTA:
        return pb
    pb.feed(QuotaFailed(query_id=1, message="down"))  # fails open: no decisions needed
    if state is State.AWAIT_UPSTREAM:
        return pb
    if state is State.BACKOFF:
        pb.feed(UpstreamFailed(attempt=1, kind="connect"))
    else:
        pb.feed(UpstreamResponse(attempt=1, status=200, headers=SSE))
    assert pb.ex.state is state
    return pb


_ONE_OF_EACH: list[Event] = [
    RequestReceived(method=b"GET", target=b"/health", headers=[]),
    RequestData(data=b"x"),
    RequestEnded(),
    UpstreamResponse(attempt=1, status=200, headers=JSON),
    UpstreamData(attempt=1, data=b"x"),
    UpstreamEnded(attempt=1),
    UpstreamFailed(attempt=1, kind="connect"),
    TimerFired(),
    ClientGone(),
    QuotaAnswered(query_id=1, admitted=True, decisions=()),
    QuotaFailed(query_id=1, message="x"),
    MetricsCollected(body=b"", content_type=b"text/plain"),
]


@pytest.mark.parametrize("state", list(State), ids=[s.name for s in State])
def test_every_pair_outside_the_table_is_the_local_error(state: State) -> None:
    assert _reach(state).ex.state is state
    allowed = TRANSITIONS[state]
    for event in _ONE_OF_EACH:
        pb = _reach(state)
        if type(event) in allowed:
            continue
        with pytest.raises(LocalProtocolError, match=f"in state {state.name}"):
            pb.ex.handle(event, now=1.0)
        assert pb.ex.state is State.ERROR
        assert pb.ex.next_command() is None
