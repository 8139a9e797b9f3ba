"""Hypothesis: the exchange never misbehaves, whatever the events and splits."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from core import (
    ClientGone,
    Command,
    EndResponse,
    Event,
    LocalProtocolError,
    RequestData,
    RequestEnded,
    RequestReceived,
    SendBody,
    SSEEvent,
    StartResponse,
    State,
    TimerFired,
    UpstreamData,
    UpstreamEnded,
    UpstreamFailed,
    UpstreamResponse,
)

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


@settings(max_examples=400)
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


@settings(max_examples=300)
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
