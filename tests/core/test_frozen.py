"""Events and commands built through their slots: the dataclass's constructor, cheaper."""

from __future__ import annotations

import dataclasses
import inspect
import pickle

import pytest

import core
from core import (
    Command,
    EndResponse,
    Event,
    LocalProtocolError,
    SendUpstreamRequest,
    StartResponse,
    UpstreamData,
)
from core._frozen import fast_init, unchecked

CLASSES = sorted(
    (
        cls
        for cls in vars(core).values()
        if isinstance(cls, type)
        and issubclass(cls, (Event, Command))
        and dataclasses.is_dataclass(cls)
    ),
    key=lambda cls: cls.__name__,
)


def test_every_event_and_command_is_built_through_its_slots() -> None:
    assert {cls.__name__ for cls in CLASSES} >= {"UpstreamData", "SendUpstreamRequest"}
    for cls in CLASSES:
        assert cls.__init__.__qualname__ == f"{cls.__qualname__}.__init__", cls
        assert "__setattr__" not in cls.__init__.__code__.co_names, cls  # the dataclass's own


@pytest.mark.parametrize("cls", CLASSES, ids=lambda cls: cls.__name__)
def test_the_constructor_takes_what_the_dataclass_declares(cls: type) -> None:
    params = list(inspect.signature(cls).parameters.values())
    fields = dataclasses.fields(cls)
    assert [p.name for p in params] == [f.name for f in fields]
    for param, field in zip(params, fields, strict=True):
        assert param.kind is inspect.Parameter.KEYWORD_ONLY
        if field.default is not dataclasses.MISSING:
            assert param.default == field.default
        elif field.default_factory is dataclasses.MISSING:
            assert param.default is inspect.Parameter.empty


def test_the_checks_still_run_and_the_rest_is_the_dataclass() -> None:
    with pytest.raises(LocalProtocolError):
        UpstreamData(attempt=0, data=b"x")
    with pytest.raises(LocalProtocolError):
        StartResponse(status=200, headers=[(b"a", "not bytes")])  # type: ignore[list-item]
    data = UpstreamData(attempt=1, data=bytearray(b"x"))  # type: ignore[arg-type]
    assert type(data.data) is bytes  # __post_init__ normalised it
    assert data == UpstreamData(attempt=1, data=b"x")
    assert hash(data) == hash(UpstreamData(attempt=1, data=b"x"))
    assert dataclasses.replace(data, attempt=2) == UpstreamData(attempt=2, data=b"x")
    assert pickle.loads(pickle.dumps(data)) == data
    assert repr(EndResponse()) == "EndResponse(complete=True)"
    with pytest.raises(dataclasses.FrozenInstanceError):
        data.attempt = 3  # type: ignore[misc]


def test_a_default_factory_is_called_for_each_instance() -> None:
    @fast_init
    @dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
    class Held:
        items: list[int] = dataclasses.field(default_factory=list)
        name: str = "x"

    first, second = Held(), Held(name="y")
    assert first.items == [] and first.items is not second.items
    assert (first.name, second.name) == ("x", "y")


def test_only_frozen_slotted_keyword_only_dataclasses_take_it() -> None:
    @dataclasses.dataclass(slots=True, kw_only=True)
    class Loose:
        a: int

    @dataclasses.dataclass(frozen=True, slots=True)
    class Positional:
        a: int

    with pytest.raises(TypeError, match="frozen, slotted"):
        fast_init(Loose)
    with pytest.raises(TypeError, match="kw-only"):
        fast_init(Positional)


def test_unchecked_builds_the_same_command_without_its_checks() -> None:
    build = unchecked(StartResponse)
    headers = [(b"content-type", b"application/json")]
    assert build(status=200, headers=headers) == StartResponse(status=200, headers=headers)
    assert build(status=7, headers=headers).status == 7  # not checked: the caller's word
    origin = core.Origin(scheme="http", host="up.test", port=80)
    fields = dict(
        attempt=1,
        origin=origin,
        method=b"POST",
        target=b"/v1/x",
        headers=[(b"host", b"up.test")],
        body=b"{}",
        connect_timeout=5.0,
    )
    assert unchecked(SendUpstreamRequest)(**fields) == SendUpstreamRequest(**fields)  # type: ignore[arg-type]
