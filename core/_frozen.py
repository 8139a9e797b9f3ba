"""Frozen, slotted, keyword-only dataclasses built at the cost of plain ones.

A frozen dataclass's generated ``__init__`` stores each field with
``object.__setattr__`` (the class's own ``__setattr__`` refuses): ~200 ns a
field here, more than the rest of building an event or a command, and the
core builds several of them per request and two per relayed stream event.

:func:`fast_init` gives such a class the ``__init__`` the dataclass wrote --
the same keyword-only parameters and defaults, ``__post_init__`` called
after -- that stores each field through its slot's descriptor instead.
:func:`unchecked` makes a builder that skips ``__post_init__``: for what the
core assembles from parts already checked (a hook's command is still built
by the class and checked). Nothing else about the class changes: fields,
``replace``, equality, hashing, ``repr`` and pickling are the dataclass's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["fast_init", "unchecked"]

T = TypeVar("T")

_MISSING = object()  # a default_factory's field left out


def _parts(cls: type[Any]) -> tuple[list[str], list[str], dict[str, Any]]:
    """The keyword-only parameters of a function storing ``cls``'s fields into ``self``,
    its body's lines, and its namespace."""
    params = getattr(cls, "__dataclass_params__", None)
    if params is None or not params.frozen or "__slots__" not in cls.__dict__:
        raise TypeError(f"{cls.__name__} is not a frozen, slotted dataclass")
    namespace: dict[str, Any] = {"_MISSING": _MISSING, "_new": object.__new__, "_cls": cls}
    args: list[str] = []
    body: list[str] = []
    for field in dataclasses.fields(cls):
        name = field.name
        if not field.init or not field.kw_only:
            raise TypeError(f"{cls.__name__}.{name}: every field must be an init, kw-only one")
        if field.default is not dataclasses.MISSING:
            namespace[f"_d_{name}"] = field.default
            args.append(f"{name}=_d_{name}")
        elif field.default_factory is not dataclasses.MISSING:
            namespace[f"_f_{name}"] = field.default_factory
            args.append(f"{name}=_MISSING")
            body.append(f"    if {name} is _MISSING:\n        {name} = _f_{name}()")
        else:
            args.append(name)
        namespace[f"_s_{name}"] = cls.__dict__[name].__set__  # the slot's descriptor
        body.append(f"    _s_{name}(self, {name})")
    return args, body, namespace


def _compile(name: str, params: list[str], body: list[str], namespace: dict[str, Any]) -> Any:
    source = f"def {name}({', '.join(params)}):\n" + "\n".join(body or ["    pass"]) + "\n"
    exec(source, namespace)  # noqa: S102 -- our own source, as dataclasses does
    return namespace[name]


def fast_init(cls: type[T]) -> type[T]:
    """Give a frozen, slotted, keyword-only dataclass the same ``__init__``, storing
    through the slots (apply above ``@dataclass``)."""
    args, body, namespace = _parts(cls)
    if hasattr(cls, "__post_init__"):
        body.append("    self.__post_init__()")
    init = _compile("__init__", ["self", "*", *args] if args else ["self"], body, namespace)
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__
    init.__annotations__ = {f.name: f.type for f in dataclasses.fields(cls)} | {"return": None}  # type: ignore[arg-type]
    cls.__init__ = init  # type: ignore[method-assign]
    return cls


def unchecked(cls: type[T]) -> Callable[..., T]:
    """A builder of ``cls`` from the same keyword arguments that skips ``__post_init__``:
    only for values the caller knows pass its checks."""
    args, body, namespace = _parts(cls)
    body = ["    self = _new(_cls)", *body, "    return self"]
    build: Callable[..., T] = _compile("build", ["*", *args] if args else [], body, namespace)
    build.__qualname__ = f"unchecked({cls.__qualname__})"
    return build
