"""Events and commands check their fields when they are built, like h11's events.

A misbuilt one raises ``LocalProtocolError`` (status hint 500) at construction:
never a ``KeyError``/``TypeError`` deep inside the exchange, never a command a
driver cannot carry out. One table below says, for every field of every event and
command, what it accepts (and how it is kept) and what it refuses.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from typing import Any, get_args

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import core._commands
import core._events
from core import (
    AcquireQuota,
    CancelUpstream,
    ClientGone,
    CollectMetrics,
    EndResponse,
    LocalProtocolError,
    Log,
    MetricsCollected,
    Origin,
    Proxy,
    QuotaAnswered,
    QuotaFailed,
    RequestData,
    RequestEnded,
    RequestReceived,
    SendBody,
    SendUpstreamRequest,
    SettleQuota,
    StartResponse,
    TimerFired,
    UpstreamData,
    UpstreamEnded,
    UpstreamFailed,
    UpstreamResponse,
    WriteTrace,
)
from core._commands import BudgetCheck, LogLevel, QuotaAdjustment, QuotaCharge, SpendRecord
from core._events import FAILURE_KINDS, FailureKind
from core._state import State
from core.policies import Decision, Limit
from tests.support.fuzz import examples

from .playbook import Playbook, client_view, upstream_config

Strategy = st.SearchStrategy[Any]


def _same(given: Any, kept: Any) -> bool:
    """Kept as given: the very object, not a copy."""
    return kept is given


@dataclasses.dataclass(frozen=True)
class Spec:
    """One field: values it accepts, values it refuses, and how an accepted one is kept."""

    good: Strategy
    bad: Strategy
    kept: Callable[[Any, Any], bool] = _same


def junk(*more: Strategy, none: bool = True) -> Strategy:
    """Values no field accepts (``None`` too unless the field is optional), and ``more``."""
    common: list[Strategy] = [
        st.just(object()),
        st.lists(st.just(object()), min_size=1, max_size=2),
    ]
    if none:
        common.append(st.none())
    return st.one_of(*common, *more)


NAN, INF = math.nan, math.inf
NON_FINITE = st.sampled_from([NAN, INF, -INF])

ATTEMPT = Spec(  # also query ids
    st.integers(1, 2**40),
    junk(st.integers(max_value=0), st.booleans(), st.floats(), st.text(), st.binary()),
)
STATUS = Spec(
    st.integers(100, 599),
    junk(st.integers(max_value=99), st.integers(min_value=600), st.booleans(), st.floats()),
)
PORT = Spec(
    st.integers(1, 65535),
    junk(st.integers(max_value=0), st.integers(min_value=65536), st.booleans(), st.text()),
)
AMOUNT = Spec(st.integers(0, 10**9), junk(st.integers(max_value=-1), st.booleans(), st.floats()))
DELTA = Spec(st.integers(), junk(st.booleans(), st.floats(), st.text()))
BOOL = Spec(st.booleans(), junk(st.integers(0, 1), st.text(), st.floats()))
TEXT = Spec(st.text(max_size=10), junk(st.binary(), st.integers(), st.booleans()))
NAME = Spec(st.text(min_size=1, max_size=10), junk(st.just(""), st.binary(min_size=1)))
BYTES = Spec(  # what the exchange sends: bytes only
    st.binary(max_size=20),
    junk(
        st.text(),
        st.binary().map(bytearray),
        st.binary().map(memoryview),
        st.lists(st.integers(0, 255), min_size=1),
        st.integers(),
    ),
)
TOKEN = Spec(  # a method or a target
    st.binary(min_size=1, max_size=20),
    junk(st.just(b""), st.text(min_size=1), st.binary(min_size=1).map(bytearray)),
)
PEER_BYTES = Spec(  # what a driver read: a bytearray (h11's) is copied to bytes
    st.one_of(st.binary(max_size=20), st.binary(max_size=20).map(bytearray)),
    junk(st.text(), st.binary().map(memoryview), st.lists(st.integers(0, 255)), st.integers()),
    kept=lambda given, kept: type(kept) is bytes and kept == given,
)
FINITE = Spec(
    st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers()),
    junk(NON_FINITE, st.booleans(), st.text(), st.binary()),
)
_POSITIVE_GOOD = st.one_of(
    st.floats(min_value=0, exclude_min=True, allow_infinity=False), st.integers(min_value=1)
)
_POSITIVE_BAD = (NON_FINITE, st.sampled_from([0, 0.0, -0.0]), st.integers(max_value=0))
POSITIVE = Spec(_POSITIVE_GOOD, junk(*_POSITIVE_BAD, st.floats(max_value=0), st.booleans()))
POSITIVE_OR_NONE = Spec(
    st.one_of(st.none(), _POSITIVE_GOOD),
    junk(*_POSITIVE_BAD, st.booleans(), st.text(), none=False),
)
MAX_AGE = Spec(  # > 0, inf allowed, or None
    st.one_of(st.none(), st.floats(min_value=0, exclude_min=True), st.integers(min_value=1)),
    junk(st.sampled_from([NAN, -INF, 0, 0.0]), st.integers(max_value=0), st.booleans(), none=False),
)
MAX_BYTES = Spec(
    st.one_of(st.none(), st.integers(min_value=1)),
    junk(st.integers(max_value=0), st.floats(), st.booleans(), st.text(), none=False),
)
BUDGET_USD = Spec(  # inf allowed: the check then only reports the spend
    st.one_of(st.floats(allow_nan=False), st.integers()),
    junk(st.just(NAN), st.booleans(), st.text()),
)


def choice(values: frozenset[str] | tuple[str, ...]) -> Spec:
    allowed = sorted(values)
    return Spec(
        st.sampled_from(allowed),
        junk(
            st.text().filter(lambda text: text not in allowed),
            st.sampled_from(allowed).map(str.upper),
            st.sampled_from(allowed).map(str.encode),
            st.integers(),
        ),
    )


def instance(good: Strategy, *bad: Strategy) -> Spec:
    return Spec(good, junk(st.text(), st.integers(), *bad))


_PAIR = st.tuples(st.binary(max_size=8), st.binary(max_size=8))
_PAIRS = st.lists(_PAIR, max_size=4)
_BAD_HEADERS = (
    st.text(),
    st.binary(min_size=1),
    st.dictionaries(st.binary(), st.binary(), min_size=1),
    st.lists(st.tuples(st.text(), st.binary()), min_size=1),
    st.lists(st.tuples(st.binary(), st.text()), min_size=1),
    st.lists(st.tuples(st.binary().map(bytearray), st.binary()), min_size=1),
    st.lists(st.tuples(st.binary(), st.binary(), st.binary()), min_size=1),
    st.lists(st.binary(), min_size=1),
)
EVENT_HEADERS = Spec(  # lower-cased into a new list; two-item lists are pairs too (ASGI)
    st.one_of(_PAIRS, _PAIRS.map(tuple), st.lists(_PAIR.map(list), max_size=4)),
    junk(*_BAD_HEADERS),
    kept=lambda given, kept: type(kept) is list and kept == [(n.lower(), v) for n, v in given],
)
COMMAND_HEADERS = Spec(  # checked, never copied
    st.one_of(_PAIRS, _PAIRS.map(tuple), st.lists(_PAIR.map(list), max_size=4)),
    junk(*_BAD_HEADERS),
)
RECORD = instance(
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
    st.lists(st.tuples(st.text(), st.integers()), min_size=1),
)
LIMIT = instance(
    st.builds(Limit, limit=st.integers(1, 1000), window=st.floats(0.001, 1e6)),
    st.integers(1, 9),
    st.fixed_dictionaries({"limit": st.just(1)}),
)
ORIGIN = instance(
    st.builds(
        Origin,
        scheme=st.sampled_from(["http", "https"]),
        host=st.text(min_size=1, max_size=10),
        port=st.integers(1, 65535),
    ),
    st.tuples(st.just("http"), st.just("h"), st.just(80)),
    st.fixed_dictionaries({"scheme": st.just("http"), "host": st.just("h"), "port": st.just(80)}),
)
DECISIONS = st.builds(
    Decision,
    allowed=st.booleans(),
    limit=st.integers(1, 100),
    remaining=st.integers(0, 100),
    reset_after=st.floats(0, 60),
    retry_after=st.floats(0, 60),
)


def tuple_of(item: Strategy) -> Spec:
    """A tuple of ``item``; a list is made a tuple."""
    items = st.lists(item, max_size=3)
    return Spec(
        st.one_of(items, items.map(tuple)),
        junk(item, st.lists(st.text(), min_size=1), st.text(min_size=1)),
        kept=lambda given, kept: type(kept) is tuple and kept == tuple(given),
    )


_NUMBERS = st.lists(st.one_of(st.floats(allow_nan=False), st.integers(-(10**9), 10**9)))
SPENT = Spec(  # numbers, made a tuple of floats
    st.one_of(_NUMBERS, _NUMBERS.map(tuple)),
    junk(
        st.lists(st.just(NAN), min_size=1),
        st.lists(st.booleans(), min_size=1),
        st.lists(st.text(), min_size=1),
        st.floats(),
        st.text(min_size=1),
    ),
    kept=lambda given, kept: (
        type(kept) is tuple
        and all(type(x) is float for x in kept)
        and kept == tuple(float(x) for x in given)
    ),
)

# Every field of every event and command. Quota parts first: others are built of them.
SPECS: dict[type[Any], dict[str, Spec]] = {
    QuotaCharge: {"key": TEXT, "limit": LIMIT, "amount": AMOUNT},
    BudgetCheck: {"key": TEXT, "usd": BUDGET_USD},
    QuotaAdjustment: {"key": TEXT, "limit": LIMIT, "delta": DELTA, "charged_at": FINITE},
    SpendRecord: {"key": TEXT, "usd": FINITE, "ttl": POSITIVE_OR_NONE},
    # events
    RequestReceived: {"method": TOKEN, "target": TOKEN, "headers": EVENT_HEADERS},
    RequestData: {"data": PEER_BYTES},
    RequestEnded: {},
    UpstreamResponse: {"attempt": ATTEMPT, "status": STATUS, "headers": EVENT_HEADERS},
    UpstreamData: {"attempt": ATTEMPT, "data": PEER_BYTES},
    UpstreamEnded: {"attempt": ATTEMPT},
    UpstreamFailed: {"attempt": ATTEMPT, "kind": choice(FAILURE_KINDS), "message": TEXT},
    TimerFired: {},
    ClientGone: {"reason": TEXT},
    QuotaAnswered: {
        "query_id": ATTEMPT,
        "admitted": BOOL,
        "decisions": tuple_of(DECISIONS),
        "spent": SPENT,
    },
    QuotaFailed: {"query_id": ATTEMPT, "message": TEXT},
    MetricsCollected: {"body": BYTES, "content_type": BYTES},
    # commands
    Origin: {"scheme": choice(("http", "https")), "host": NAME, "port": PORT},
    SendUpstreamRequest: {
        "attempt": ATTEMPT,
        "origin": ORIGIN,
        "method": TOKEN,
        "target": TOKEN,
        "headers": COMMAND_HEADERS,
        "body": BYTES,
        "connect_timeout": POSITIVE,
    },
    CancelUpstream: {"attempt": ATTEMPT},
    StartResponse: {"status": STATUS, "headers": COMMAND_HEADERS},
    SendBody: {"data": BYTES},
    EndResponse: {"complete": BOOL},
    WriteTrace: {
        "directory": NAME,
        "record": RECORD,
        "rotate": choice(("hour", "day")),
        "max_age": MAX_AGE,
        "max_bytes": MAX_BYTES,
    },
    Log: {"level": choice(get_args(LogLevel)), "message": TEXT, "fields": RECORD},
    CollectMetrics: {},
}


def valid(cls: type[Any]) -> Strategy:
    """Well-formed ``cls`` instances."""
    return st.fixed_dictionaries({f: spec.good for f, spec in SPECS[cls].items()}).map(
        lambda fields: cls(**fields)
    )


SPECS[AcquireQuota] = {
    "query_id": ATTEMPT,
    "at": FINITE,
    "charges": tuple_of(valid(QuotaCharge)),
    "budgets": tuple_of(valid(BudgetCheck)),
    "timeout": POSITIVE,
}
SPECS[SettleQuota] = {
    "at": FINITE,
    "adjustments": tuple_of(valid(QuotaAdjustment)),
    "spends": tuple_of(valid(SpendRecord)),
}

CLASSES = sorted(SPECS, key=lambda cls: cls.__name__)
FIELDS = [(cls, field) for cls in CLASSES for field in SPECS[cls]]


def _dataclasses_of(module: Any) -> set[type[Any]]:
    names = (getattr(module, name) for name in module.__all__)
    return {obj for obj in names if isinstance(obj, type) and dataclasses.is_dataclass(obj)}


def test_the_table_covers_every_field_of_every_event_and_command() -> None:
    assert set(SPECS) == _dataclasses_of(core._events) | _dataclasses_of(core._commands)
    for cls, specs in SPECS.items():
        assert [f.name for f in dataclasses.fields(cls)] == list(specs), cls.__name__
        assert cls.__dataclass_params__.frozen and "__slots__" in cls.__dict__, cls.__name__
        assert all(f.kw_only for f in dataclasses.fields(cls)), cls.__name__
        assert "subclass" in (cls.__doc__ or ""), cls.__name__


def test_failure_kinds_are_the_literals_values() -> None:
    assert frozenset(get_args(FailureKind)) == FAILURE_KINDS
    assert {"connect", "timeout", "reset", "protocol"} == FAILURE_KINDS


# -- (1) well-formed fields are accepted, and normalised where documented --------------


@pytest.mark.parametrize("cls", CLASSES, ids=lambda cls: cls.__name__)
@settings(max_examples=examples(30), deadline=None)
@given(data=st.data())
def test_well_formed_fields_are_accepted_and_kept_as_documented(
    cls: type[Any], data: st.DataObject
) -> None:
    given_fields = data.draw(st.fixed_dictionaries({f: s.good for f, s in SPECS[cls].items()}))
    built = cls(**given_fields)
    for field, value in given_fields.items():
        spec = SPECS[cls][field]
        assert spec.kept(value, getattr(built, field)), (field, value, getattr(built, field))
    assert built == cls(**given_fields)  # construction is deterministic
    for field in given_fields:
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(built, field, None)


def test_header_names_are_lower_cased_and_values_kept() -> None:
    given = [[b"Content-Type", b"Application/JSON"], (b"X-A", b"B")]
    event = UpstreamResponse(attempt=1, status=200, headers=given)  # type: ignore[arg-type]
    assert event.headers == [(b"content-type", b"Application/JSON"), (b"x-a", b"B")]
    start = StartResponse(status=200, headers=((b"X-A", b"B"),))
    assert start.headers == ((b"X-A", b"B"),)  # the exchange's own: checked, not rewritten


def test_a_bytearray_from_h11_becomes_bytes_and_lists_become_tuples() -> None:
    data = RequestData(data=bytearray(b"abc"))  # type: ignore[arg-type]
    assert type(data.data) is bytes and data.data == b"abc"
    answer = QuotaAnswered(query_id=1, admitted=True, decisions=[], spent=[1, 2.5])  # type: ignore[arg-type]
    assert answer.decisions == () and answer.spent == (1.0, 2.5)
    assert type(answer.spent[0]) is float
    charge = QuotaCharge(key="k", limit=Limit(limit=1), amount=1)
    query = AcquireQuota(query_id=1, at=0.0, charges=[charge], timeout=1.0)  # type: ignore[arg-type]
    assert query.charges == (charge,) and query.budgets == ()


# -- (2) a wrong type or an out-of-range value is refused, for every field --------------


@pytest.mark.parametrize(("cls", "field"), FIELDS, ids=lambda x: getattr(x, "__name__", x))
@settings(max_examples=examples(30), deadline=None)
@given(data=st.data())
def test_a_bad_field_is_a_local_protocol_error_naming_it(
    cls: type[Any], field: str, data: st.DataObject
) -> None:
    fields = data.draw(st.fixed_dictionaries({f: s.good for f, s in SPECS[cls].items()}))
    fields[field] = data.draw(SPECS[cls][field].bad, label=field)
    with pytest.raises(LocalProtocolError) as caught:  # never KeyError, TypeError...
        cls(**fields)
    error = caught.value
    assert str(error).startswith(f"{cls.__name__}.{field}: must be ")
    assert (error.error_status_hint, error.error_type) == (500, "server_error")
    assert len(str(error)) < 400  # the value is quoted, but cut short


_CHARGELESS = {"query_id": 1, "at": 0.0, "charges": ()}


def _stable_id(fields: dict[str, Any]) -> str:
    return "-".join(
        f"{k}=memoryview" if isinstance(v, memoryview) else f"{k}={v!r}" for k, v in fields.items()
    )


@pytest.mark.parametrize(
    ("cls", "fields"),
    [
        (UpstreamResponse, {"attempt": 0, "status": 200, "headers": []}),
        (UpstreamResponse, {"attempt": 1, "status": 0, "headers": []}),
        (UpstreamResponse, {"attempt": 1, "status": 200, "headers": {b"a": b"b"}}),
        (UpstreamData, {"attempt": True, "data": b"x"}),
        (UpstreamData, {"attempt": 1, "data": "text"}),
        (UpstreamFailed, {"attempt": 1, "kind": "bogus"}),
        (RequestReceived, {"method": b"", "target": b"/", "headers": []}),
        (RequestReceived, {"method": b"GET", "target": "/", "headers": []}),
        (RequestReceived, {"method": b"GET", "target": b"/", "headers": [(b"a", b"b", b"c")]}),
        (RequestReceived, {"method": b"GET", "target": b"/", "headers": None}),
        (SendBody, {"data": memoryview(b"x")}),
        (Origin, {"scheme": "ftp", "host": "h", "port": 21}),
        (Origin, {"scheme": "http", "host": "", "port": 80}),
        (Origin, {"scheme": "http", "host": "h", "port": 70000}),
        (SpendRecord, {"key": "k", "usd": 1.0, "ttl": -1.0}),
        (SpendRecord, {"key": "k", "usd": NAN, "ttl": None}),
        (WriteTrace, {"directory": "d", "record": {}, "rotate": "week"}),
        (Log, {"level": "fatal", "message": "m", "fields": {}}),
        (AcquireQuota, {**_CHARGELESS, "timeout": 0.0}),
        (AcquireQuota, {**_CHARGELESS, "timeout": INF}),
        (QuotaAnswered, {"query_id": 1, "admitted": 1, "decisions": ()}),
        (QuotaFailed, {"query_id": 0, "message": "down"}),
    ],
    # Stable ids (no object addresses): every worker must collect the same tests.
    ids=lambda x: x.__name__ if isinstance(x, type) else _stable_id(x),
)
def test_the_usual_mistakes(cls: type[Any], fields: dict[str, Any]) -> None:
    with pytest.raises(LocalProtocolError, match=rf"^{cls.__name__}\."):
        cls(**fields)


# -- (3) end to end: a misbuilt event never reaches the exchange -----------------------

CHAT = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'
ANSWER = json.dumps({"id": "x", "object": "chat.completion", "choices": []}).encode()
JSON = [(b"content-type", b"application/json")]


def _waiting_on_upstream() -> Playbook:
    pb = Playbook(upstream_config())
    out = pb.request(b"POST", b"/v1/chat/completions", CHAT)
    assert any(isinstance(c, SendUpstreamRequest) for c in out)
    assert pb.ex.state is State.AWAIT_UPSTREAM
    return pb


def _answer(pb: Playbook) -> None:
    out = pb.feed(
        UpstreamResponse(attempt=1, status=200, headers=JSON),
        UpstreamData(attempt=1, data=ANSWER),
        UpstreamEnded(attempt=1),
    )
    status, _, body, complete = client_view(out)
    assert (status, body, complete) == (200, ANSWER, True)


def test_a_bogus_failure_kind_cannot_even_be_built() -> None:
    pb = _waiting_on_upstream()
    with pytest.raises(LocalProtocolError, match=r"UpstreamFailed\.kind"):
        pb.feed(UpstreamFailed(attempt=1, kind="bogus"))  # type: ignore[arg-type]
    assert pb.ex.state is State.AWAIT_UPSTREAM  # it never saw it
    assert pb.drain() == []
    _answer(pb)


_UPSTREAM_EVENTS = [UpstreamResponse, UpstreamData, UpstreamEnded, UpstreamFailed, ClientGone]
_MISBUILT = st.sampled_from(
    [(cls, field) for cls in _UPSTREAM_EVENTS for field in SPECS[cls]]
).flatmap(
    lambda pick: st.tuples(
        st.just(pick[0]),
        st.fixed_dictionaries({f: s.good for f, s in SPECS[pick[0]].items()}),
        st.just(pick[1]),
        SPECS[pick[0]][pick[1]].bad,
    )
)


@settings(max_examples=examples(100), deadline=None)
@given(st.lists(_MISBUILT, min_size=1, max_size=4))
def test_a_driver_that_misbuilds_events_gets_the_error_and_the_exchange_goes_on(
    misbuilt: list[tuple[type[Any], dict[str, Any], str, Any]],
) -> None:
    pb = _waiting_on_upstream()
    for cls, fields, field, bad in misbuilt:
        with pytest.raises(LocalProtocolError, match=rf"^{cls.__name__}\.{field}: "):
            pb.feed(cls(**{**fields, field: bad}))
        assert pb.ex.state is State.AWAIT_UPSTREAM and pb.drain() == []
    _answer(pb)


class _TextNotBytes:
    """A buggy middleware: its body hook returns text, so the SendBody it causes is misbuilt."""

    def on_response_data(self, exchange: object, data: bytes) -> str:
        return data.decode()


def test_a_command_a_hook_misbuilds_is_the_hooks_bug_not_the_drivers() -> None:
    # The driver did nothing wrong: the response (its head already sent) is cut,
    # the log has the traceback, and the exchange ends instead of raising.
    pb = Playbook(Proxy(upstream_config(), middleware=[_TextNotBytes()]))
    pb.request(b"POST", b"/v1/chat/completions", CHAT)
    out = pb.feed(
        UpstreamResponse(attempt=1, status=200, headers=JSON),
        UpstreamData(attempt=1, data=ANSWER),
    )
    status, _, body, complete = client_view(out)
    assert (status, body, complete) == (200, b"", False)
    logs = [c for c in out if isinstance(c, Log) and c.level == "error"]
    assert len(logs) == 1 and "SendBody.data" in logs[0].message
    assert pb.ex.finished and pb.ex.state is State.DONE and pb.ex.outcome == "error"
