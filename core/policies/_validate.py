"""The ``validate`` middleware: refuse malformed requests before they leave.

Its ``on_request`` hook checks the body of ``POST /v1/chat/completions``
(OpenAI Chat Completions) and ``POST /v1/messages`` (Anthropic Messages)
against the API's documented shape, and answers 400 naming the first
``param`` at fault in OpenAI's style (``messages[2].role``, ``temperature``,
``messages[0].content[1].type``) with OpenAI's error codes
(``missing_required_parameter``, ``invalid_type``, ``invalid_value``,
``integer_below_min_value``, ``decimal_above_max_value``, ``empty_array``,
``array_above_max_length`` ...). A body that is not a JSON object is
``invalid_json``. An Anthropic client gets the same error in Anthropic's shape
(the message names the param). Other paths, and every field the models do not
name, pass untouched; the body is never modified.

Chat Completions:

* ``model`` (string) and ``messages`` (a non-empty array) are required;
* a message's ``role`` is ``system``, ``developer``, ``user``, ``assistant``,
  ``tool`` or ``function``; its ``content`` is a string or a non-empty array
  of parts whose ``type`` the role allows: ``text`` (every role),
  ``image_url``, ``input_audio`` and ``file`` (``user``), ``refusal``
  (``assistant``); each part has its fields (``image_url.url``,
  ``input_audio.data`` and ``format`` ...);
* ``tool`` messages need ``tool_call_id``, ``function`` messages ``name``,
  ``assistant`` messages ``content`` unless they carry ``tool_calls``,
  ``function_call`` or ``audio``; ``tool_calls`` are ``function`` or
  ``custom`` calls with their fields;
* ranges: ``max_tokens`` and ``max_completion_tokens`` >= 1, ``n`` in
  [1, 128], ``temperature`` in [0, 2], ``top_p`` in [0, 1],
  ``presence_penalty`` and ``frequency_penalty`` in [-2, 2], ``top_logprobs``
  in [0, 20], ``logit_bias`` values in [-100, 100], ``seed`` a 64-bit
  integer, ``stop`` a string or at most 4 strings, ``metadata`` at most 16
  string pairs (keys up to 64 characters, values up to 512);
* ``tools`` are ``function`` tools (``name`` of letters, digits, ``_`` and
  ``-``, at most 64) or ``custom`` ones; ``tool_choice``, ``functions``,
  ``function_call``, ``response_format``, ``stream_options`` and
  ``prediction`` have their documented shapes; the other known fields their
  types (``stream`` a boolean, ``user`` a string ...).

Messages:

* ``model`` (string), ``max_tokens`` (an integer >= 0: ``0`` pre-warms the
  prompt cache) and ``messages`` (a non-empty array) are required;
* a message's ``role`` is ``user`` or ``assistant`` (the system prompt is the
  top-level ``system``, a string or ``text`` blocks); its ``content`` is a
  string or an array of blocks whose ``type`` is a known one: ``text``,
  ``image``, ``document``, ``search_result``, ``thinking``,
  ``redacted_thinking``, ``tool_use``, ``tool_result``, ``server_tool_use``
  and ``web_search_tool_result`` are checked field by field (an image's
  ``source`` and its ``media_type`` ...); the other server-tool results,
  ``container_upload`` and the beta blocks (``mcp_tool_use``, ``compaction``
  ...) only by their ``type``;
* ranges: ``temperature`` and ``top_p`` in [0, 1], ``top_k`` >= 0,
  ``thinking.budget_tokens`` >= 1024; ``stop_sequences`` strings,
  ``stream`` a boolean; ``tool_choice`` and ``thinking`` have their
  documented shapes; a custom tool (no ``type``, or ``custom``) needs
  ``name`` and ``input_schema``, a server tool only a ``type``.

Optional fields may be ``null`` (clients send that for "not given"). Sets of
values that change often (``reasoning_effort``, ``service_tier``, tool
versions) are checked as strings only: a validator that refuses what the
upstream accepts breaks clients; one that lets through what the upstream
refuses only moves the 400.

Speed: the models are built once, when the first ``validate`` middleware is
made (35 ms; a proxy without it never pays the import), and the body is parsed
and checked in one pass by pydantic-core: 9 us for a 1 KB chat or Messages
request, against 12 us for ``json.loads`` then ``validate_python`` (and 6 us
for ``json.loads`` alone). Unions of objects are discriminated by their
``role`` or ``type`` field, natively; a string-or-array union by a Python
function on the JSON kind, which costs next to nothing for a string (a
``role`` discriminator written that way cost 5 us: pydantic hands the
function each message as Python objects). Fields the models do not name are
ignored rather than kept, 1.5 us less. Only a refused request pays for
finding the param.
"""

from __future__ import annotations

import functools
import json
from types import NoneType, UnionType
from typing import Annotated, Any, Required, Union, get_args, get_origin, get_type_hints

import pydantic
import pydantic_core
from pydantic import Discriminator, Tag, TypeAdapter
from typing_extensions import is_typeddict

from .._endpoints import Endpoint
from .._errors import ValidationError
from .._http import json_error, param_path, parse_json_object
from .._json import MAX_JSON_ITEMS, JSONError, check_items
from .._middleware import Context
from ._schema import ASSISTANT_CONTENT as _ASSISTANT_CONTENT
from ._schema import CUSTOM_TOOL as _CUSTOM_TOOL
from ._schema import KIND_ERROR as _KIND_ERROR
from ._schema import KIND_NAMES as _KIND_NAMES
from ._schema import REQUESTS as _REQUESTS

__all__ = ["ValidateMiddleware"]


#: What is checked, by endpoint: the pydantic validator, and the model (to name a param).
#: The models are in ``_schema``.
@functools.cache
def _checks() -> dict[Endpoint | None, tuple[TypeAdapter[Any], Any]]:
    return {endpoint: (TypeAdapter(model), model) for endpoint, model in _REQUESTS.items()}


# -- from a pydantic error to (param, message, code) ----------------------------------------
#
# pydantic's ``loc`` holds, besides field names and indexes, the tag of every union it
# went through: a ``role`` or ``type`` value, or one of ``_schema``'s kind tags. Which
# item is a tag is known only from the model, so the ``loc`` is walked along it.
# (Walking the data instead would mistake a tag for a field of the same name:
# ``{"type": "image_url", "image_url": ...}``.) This runs for refused requests only.


def _strip(tp: Any) -> Any:
    """``tp`` without ``Required``, ``| None`` and any annotation but a discriminator."""
    while True:
        origin = get_origin(tp)
        if origin is Required:
            tp = get_args(tp)[0]
        elif origin is Annotated:
            if _discriminator(tp) is not None:
                return tp
            tp = get_args(tp)[0]
        elif origin in (Union, UnionType):  # only ever "X | None" here
            tp = next(arg for arg in get_args(tp) if arg is not NoneType)
        else:
            return tp


def _discriminator(tp: Any) -> Discriminator | None:
    return next((m for m in tp.__metadata__ if isinstance(m, Discriminator)), None)


@functools.cache
def _fields(typed_dict: Any) -> dict[str, Any]:
    hints = get_type_hints(typed_dict, include_extras=True)
    return {name: _strip(tp) for name, tp in hints.items()}


def _members(union: Any) -> dict[str, Any]:
    """A discriminated union's members by their tag."""
    discriminator = _discriminator(union)
    assert discriminator is not None
    field = discriminator.discriminator
    members: dict[str, Any] = {}
    for member in get_args(get_args(union)[0]):
        if isinstance(field, str):
            inner = _strip(member)
            members.update(dict.fromkeys(get_args(_fields(inner)[field]), inner))
        else:
            tag = next(m.tag for m in get_args(member)[1:] if isinstance(m, Tag))
            members[tag] = _strip(member)
    return members


def _locate(root: Any, loc: tuple[int | str, ...]) -> tuple[list[int | str], Any]:
    """The path in the request an error's ``loc`` leads to, and the type found there."""
    path: list[int | str] = []
    tp = root
    for item in loc:
        if item == "[key]":  # the error is about the key just passed
            continue
        if get_origin(tp) is Annotated:  # a union: the item is the member's tag
            tp = _members(tp)[str(item)]
        elif is_typeddict(tp):
            path.append(item)
            tp = _fields(tp)[str(item)]
        elif get_origin(tp) is list:
            path.append(item)
            tp = _strip(get_args(tp)[0])
        else:  # a dict: the item is a key
            path.append(item)
            tp = _strip(get_args(tp)[1])
    return path, tp


def _a(value: Any) -> str:
    """What a JSON value is, as OpenAI's errors say it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


def _shown(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return repr(text if len(text) <= 80 else text[:77] + "...")


def _choices(values: Any) -> str:
    quoted = [repr(value) for value in values]
    if len(quoted) < 3:
        return " and ".join(quoted)
    return ", ".join(quoted[:-1]) + ", and " + quoted[-1]


def _number(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


_EXPECTED = {
    "string_type": "a string",
    "int_type": "an integer",
    "float_type": "a decimal",
    "bool_type": "a boolean",
    "list_type": "an array",
    "dict_type": "an object",
}


def _missing(path: list[int | str]) -> ValidationError:
    param = param_path(path)
    return ValidationError(
        f"Missing required parameter: '{param}'.",
        param=param,
        code="missing_required_parameter",
    )


def _invalid_value(path: list[int | str], value: Any, choices: Any) -> ValidationError:
    param = param_path(path)
    return ValidationError(
        f"Invalid value for '{param}': {_shown(value)}. Supported values are: {_choices(choices)}.",
        param=param,
        code="invalid_value",
    )


def _refusal(error: pydantic_core.ErrorDetails, root: Any) -> ValidationError:
    """The 400 for pydantic's ``error`` about a request of type ``root``."""
    path, tp = _locate(root, error["loc"])
    kind = error["type"]
    value = error["input"]
    ctx = error.get("ctx", {})
    param = param_path(path)
    if kind == "missing":
        return _missing(path)
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        field = str(_discriminator(tp).discriminator)  # type: ignore[union-attr]
        if field not in value:
            return _missing([*path, field])
        return _invalid_value([*path, field], value[field], _members(tp))
    if kind == _ASSISTANT_CONTENT:
        return _missing([*path, "content"])
    if kind == _CUSTOM_TOOL:
        return _missing([*path, ctx["field"]])
    if kind == "literal_error":
        return _invalid_value(path, value, get_args(tp))
    if kind == _KIND_ERROR or kind in _EXPECTED:
        expected = (
            " or ".join(_KIND_NAMES[tag] for tag in _members(tp))
            if kind == _KIND_ERROR
            else _EXPECTED[kind]
        )
        return ValidationError(
            f"Invalid type for '{param}': expected {expected}, but got {_a(value)} instead.",
            param=param,
            code="invalid_type",
        )
    noun = "integer" if tp is int else "decimal"
    if kind == "greater_than_equal":
        message = (
            f"{noun} below minimum value. Expected a value >= {_number(ctx['ge'])}, "
            f"but got {_number(value)} instead"
        )
        code = f"{noun}_below_min_value"
    elif kind == "less_than_equal":
        message = (
            f"{noun} above maximum value. Expected a value <= {_number(ctx['le'])}, "
            f"but got {_number(value)} instead"
        )
        code = f"{noun}_above_max_value"
    elif kind == "too_short":  # every minimum length here is 1
        message = (
            f"empty array. Expected an array with minimum length {ctx['min_length']}, "
            "but got an empty array instead"
        )
        code = "empty_array"
    elif kind == "too_long" and isinstance(value, list):
        message = (
            f"array too long. Expected an array with maximum length {ctx['max_length']}, "
            f"but got an array with length {len(value)} instead"
        )
        code = "array_above_max_length"
    elif kind == "too_long":
        message = (
            f"object too large. Expected an object with at most {ctx['max_length']} "
            f"properties, but got {len(value)} instead"
        )
        code = "object_above_max_properties"
    elif kind == "string_too_long":
        message = (
            f"string too long. Expected a string with maximum length {ctx['max_length']}, "
            f"but got a string with length {len(value)} instead"
        )
        code = "string_above_max_length"
    elif kind == "string_pattern_mismatch":
        message = (
            "string does not match pattern. Expected a string that matches the pattern "
            f"{ctx['pattern']!r}"
        )
        code = "invalid_value"
    else:  # finite_number: NaN or Infinity
        message = error["msg"][0].lower() + error["msg"][1:]
        code = "invalid_value"
    return ValidationError(f"Invalid '{param}': {message}.", param=param, code=code)


class ValidateMiddleware:
    """Refuse Chat Completions and Messages requests that break their API's rules.

    No options (``max_json_items`` comes from ``limits``). What is checked, and how
    fast, is in this module's docstring.
    """

    name = "validate"

    __slots__ = ("_checks", "_max_items")

    def __init__(self, *, max_json_items: int = MAX_JSON_ITEMS) -> None:
        self._max_items = max_json_items
        self._checks = _checks()

    def on_request(self, exchange: Context) -> None:
        """Raise ``ValidationError`` for a malformed request; never change it."""
        if exchange.request_method != b"POST":
            return
        check = self._checks.get(exchange.endpoint)
        if check is None:
            return
        adapter, root = check
        raw = exchange.request_body
        try:  # before pydantic parses it all
            check_items(raw, max_items=self._max_items)
        except JSONError as exc:
            raise json_error(exc) from exc
        try:
            adapter.validate_json(raw)
        except pydantic.ValidationError as exc:
            error = exc.errors(include_url=False)[0]
            if error["loc"]:
                raise _refusal(error, root) from None
        else:
            return
        # Not a JSON object, too deep, or JSON only the core's parser reads (UTF-16,
        # a lone surrogate): the same rules as the rest of the core.
        body = parse_json_object(raw, max_items=self._max_items)
        try:
            adapter.validate_python(body)
        except pydantic.ValidationError as exc:
            raise _refusal(exc.errors(include_url=False)[0], root) from None
