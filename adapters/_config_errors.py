"""Configuration errors in one style, wherever they are found.

Every problem is one piece of text::

    ORIGIN: path.to[0].field: what is wrong (what is allowed; did you mean 'x'?)

ORIGIN says where the value came from: the config file (as given to
``--config``), a flag (``--port``), an environment variable (``SANSPROXY_PORT``),
or nothing (a default). The path is written as in the YAML the user wrote: dots
between mapping keys, ``[i]`` for list indexes (a model's short form, a list of
deployments, has no ``deployments`` in its path; the mapping form of
``middleware`` is named by key). Several problems are joined with ``; `` so the
whole is one line; ``str(ConfigError)`` is that text, with no prefix (the command
line adds ``PROG: error: `` once).
"""

from __future__ import annotations

import types
from collections.abc import Iterator, Mapping
from typing import Any, Literal, Union, get_args, get_origin

from annotated_types import Ge, Gt, Le, Lt, MinLen
from pydantic import BaseModel, SecretStr, ValidationError
from pydantic_core import ErrorDetails

from core import ProxyConfig
from core._config import ConfigProblem, ModelConfig, format_path, show, suggest, unknown

__all__ = ["ConfigError", "Loc", "Origins", "describe_problem", "describe_validation", "line"]

Loc = tuple[str | int, ...]

#: Fields whose values an error never quotes (a wrong one may still be a secret).
_SECRET_FIELDS = frozenset({"api_key", "redis_url", "headers"})


class ConfigError(Exception):
    """A configuration problem, phrased for the person running the proxy.

    Its ``str()`` is the final text: ``config.yaml: server.port: ...`` (several
    problems joined with ``; ``), without any ``error:`` prefix.
    """


def line(origin: str | None, where: str, message: str) -> str:
    """One problem: ``ORIGIN: path: message``, leaving out what is empty."""
    return ": ".join(part for part in (origin, where, message) if part)


class Origins:
    """Where each value of the merged configuration tree came from.

    Layers are recorded in the order they are merged (environment, file, flags);
    a later layer's value replaces what was recorded under it, as the merge does.
    """

    def __init__(self) -> None:
        self._at: dict[Loc, str] = {}

    def set(self, loc: Loc, value: Any, origin: str) -> None:
        """``value`` (and everything in it) at ``loc`` came from ``origin``."""
        for known in [k for k in self._at if k[: len(loc)] == loc]:
            del self._at[known]
        self._walk(loc, value, origin)

    def _walk(self, loc: Loc, value: Any, origin: str) -> None:
        self._at[loc] = origin
        if isinstance(value, Mapping):
            for key, child in value.items():
                self._walk((*loc, key), child, origin)
        elif isinstance(value, list):
            for index, child in enumerate(value):
                self._walk((*loc, index), child, origin)

    def overlay(self, base: Mapping[str, Any], layer: Mapping[str, Any], origin: str) -> None:
        """``layer`` (from ``origin``) is about to be merged over ``base``."""
        self._overlay(base, layer, origin, ())

    def _overlay(self, base: Any, layer: Mapping[str, Any], origin: str, at: Loc) -> None:
        for key, value in layer.items():
            loc = (*at, key)
            below = base.get(key) if isinstance(base, Mapping) else None
            if isinstance(value, Mapping) and isinstance(below, dict):
                self._at.setdefault(loc, origin)
                self._overlay(below, value, origin, loc)
            else:
                self.set(loc, value, origin)

    def of(self, loc: Loc) -> str | None:
        """The origin of the value at ``loc``, or of the nearest one holding it."""
        for end in range(len(loc), 0, -1):
            if loc[:end] in self._at:
                return self._at[loc[:end]]
        return None


def user_loc(loc: Loc, tree: Any) -> Loc:
    """A model's path as the user wrote it in ``tree``: a list standing for a model
    (a model's short form) skips the field name; a mapping standing for a list (the
    mapping form of ``middleware``) skips the index (its key follows)."""
    out: list[str | int] = []
    node = tree
    for part in loc:
        if isinstance(node, list) and isinstance(part, str):
            continue
        if isinstance(node, Mapping) and isinstance(part, int):
            continue
        out.append(part)
        if isinstance(node, Mapping):
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        else:
            node = None
    return tuple(out)


def describe_problem(
    problem: ConfigProblem, tree: Mapping[str, Any], origins: Origins, at: Loc = ()
) -> str:
    """A problem the core found (``problem.path`` under ``at``), in the one style."""
    loc = user_loc((*at, *problem.path), tree)
    return line(origins.of(loc), format_path(loc), problem.problem)


def describe_validation(exc: ValidationError, tree: Mapping[str, Any], origins: Origins) -> str:
    """Every error of a ``ProxyConfig`` validation, in the one style, joined by ``; ``."""
    lines: list[str] = []
    for error in exc.errors():
        text = _describe_error(error, tree, origins)
        if text not in lines:
            lines.append(text)
    return "; ".join(lines)


def _describe_error(error: ErrorDetails, tree: Mapping[str, Any], origins: Origins) -> str:
    loc: Loc = tuple(error["loc"])
    kind = error["type"]
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, ConfigProblem):
        return describe_problem(cause, tree, origins, loc)
    if loc and loc[-1] == "[key]":  # a mapping key that is not a string
        where = user_loc(loc[:-2], tree)
        message = f"invalid key {show(loc[-2])} (expected a string)"
        return line(origins.of(where), format_path(where), message)
    where = user_loc(loc, tree)
    origin = origins.of(where)
    if kind in ("extra_forbidden", "missing") and loc:
        parent, name = user_loc(loc[:-1], tree), str(loc[-1])
        if kind == "missing":
            message = f"missing option {name!r} (required)"
        else:
            model = _model_at(loc[:-1])
            message = unknown("option", name, model.model_fields if model else ())
        return line(origin, format_path(parent), message)
    if kind == "value_error":
        message = str(cause) if cause is not None else error["msg"]
        return line(origin, format_path(where), message.removeprefix("Value error, "))
    annotation, metadata = _field_at(loc)
    expected = _expected(annotation, metadata) if annotation is not None else None
    if expected is None:  # pydantic's words, in ours: "Input should be a valid ..."
        msg = error["msg"]
        expected = msg.removeprefix("Input should be ") if msg.startswith("Input should") else ""
        if not expected:
            return line(origin, format_path(where), msg)
    value = error["input"]
    secret = any(part in _SECRET_FIELDS for part in loc)
    given = f"invalid value, {_kind(value)}" if secret else f"invalid value {show(value)}"
    hint = ""
    if get_origin(_optional(annotation)[0]) is Literal and isinstance(value, str):
        hint = suggest(value, [str(choice) for choice in get_args(_optional(annotation)[0])])
    return line(origin, format_path(where), f"{given} (expected {expected}{hint})")


def _kind(value: Any) -> str:
    """What a secret's value is, without quoting it."""
    if isinstance(value, bool) or value is None:
        return show(value)
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return show(value)


def _optional(annotation: Any) -> tuple[Any, bool]:
    """``X | None`` as ``(X, True)``; anything else as ``(it, False)``."""
    if get_origin(annotation) in (Union, types.UnionType):
        args = [arg for arg in get_args(annotation) if arg is not type(None)]
        if len(args) == 1:
            return args[0], len(args) < len(get_args(annotation))
    return annotation, False


def _steps(loc: Loc) -> Iterator[tuple[Any, list[Any]]]:
    """The annotation and constraints at each step of ``loc`` from ``ProxyConfig``."""
    annotation: Any = ProxyConfig
    for part in loc:
        inner, _ = _optional(annotation)
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            field = inner.model_fields.get(part) if isinstance(part, str) else None
            if field is None:
                return
            annotation, metadata = field.annotation, list(field.metadata)
        elif get_origin(inner) is dict and not isinstance(part, int):
            annotation, metadata = get_args(inner)[1], []
        elif get_origin(inner) is tuple and isinstance(part, int):
            annotation, metadata = get_args(inner)[0], []
        else:
            return
        yield annotation, metadata


def _field_at(loc: Loc) -> tuple[Any, list[Any]]:
    """The annotation and constraints of the value at ``loc`` (``None`` if unknown)."""
    found: tuple[Any, list[Any]] = (None, [])
    for depth, step in enumerate(_steps(loc), start=1):
        found = step if depth == len(loc) else found
    return found


def _model_at(loc: Loc) -> type[BaseModel] | None:
    """The model whose options live at ``loc``."""
    annotation: Any = ProxyConfig if not loc else _field_at(loc)[0]
    inner, _ = _optional(annotation)
    return inner if isinstance(inner, type) and issubclass(inner, BaseModel) else None


def _number(value: Any) -> str:
    return show(int(value) if isinstance(value, float) and value.is_integer() else value)


def _expected(annotation: Any, metadata: list[Any]) -> str | None:
    """What a field allows, in words: ``an integer from 0 to 65535``."""
    inner, nullable = _optional(annotation)
    if get_origin(inner) is Literal:
        what = "one of " + ", ".join(str(choice) for choice in get_args(inner))
    elif inner is bool:
        what = "true or false"
    elif inner is int:
        what = "an integer"
    elif inner is float:
        what = "a number"
    elif inner in (str, SecretStr):
        what = "a string"
    elif inner is ModelConfig:
        what = "a list of deployments, or a mapping of options"
    elif isinstance(inner, type) and issubclass(inner, BaseModel):
        what = "a mapping of options"
    elif inner is dict or get_origin(inner) is dict:
        what = "a mapping"
    elif get_origin(inner) in (tuple, list):
        what = "a list"
    else:
        return None
    bounds = {type(item): item for item in metadata}
    if Ge in bounds and Le in bounds:
        what += f" from {_number(bounds[Ge].ge)} to {_number(bounds[Le].le)}"
    else:
        limits = [
            f"{sign} {_number(getattr(bounds[cls], name))}"
            for cls, name, sign in (
                (Gt, "gt", ">"),
                (Ge, "ge", ">="),
                (Lt, "lt", "<"),
                (Le, "le", "<="),
            )
            if cls in bounds
        ]
        what += " " + " and ".join(limits) if limits else ""
    if MinLen in bounds and bounds[MinLen].min_length == 1 and what == "a string":
        what = "a non-empty string"
    return f"{what} or null" if nullable else what
