"""HTTP request details: the target, the JSON body and where in it a fault is."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ._errors import ValidationError
from ._json import MAX_JSON_ITEMS, JSONError, loads

__all__ = [
    "json_error",
    "over_json_limits",
    "param_path",
    "parse_json_object",
    "split_target",
]

_BAD_ESCAPES = (b"%2e", b"%2f", b"%5c", b"%00")


def _bad_target(reason: str) -> ValidationError:
    return ValidationError(f"invalid request target: {reason}", code="invalid_request_target")


def split_target(target: bytes) -> tuple[bytes, bytes]:
    """Split an origin-form target into (path, query-with-'?').

    Refuses anything that could leave the upstream's base path: absolute or
    authority form, ``.``/``..`` segments, encoded dots, slashes or backslashes.
    """
    if not target.startswith(b"/"):
        raise _bad_target("only origin-form targets (/path?query) are accepted")
    if target.startswith(b"//"):
        raise _bad_target("a target may not start with //")
    if b"#" in target:
        raise _bad_target("a target may not carry a fragment")
    q = target.find(b"?")
    if q >= 0:
        path, query = target[:q], target[q:]
    else:
        path, query = target, b""
    if b"%" in path:
        lowered = path.lower()
        for escape in _BAD_ESCAPES:
            if escape in lowered:
                raise _bad_target("encoded dots, slashes or NULs are not allowed in the path")
    if b"\\" in path:
        raise _bad_target("backslashes are not allowed in the path")
    if b"/." in path:
        for segment in path.split(b"/"):
            if segment in (b".", b".."):
                raise _bad_target("dot segments are not allowed in the path")
    return path, query


def parse_json_object(body: bytes, *, max_items: int = MAX_JSON_ITEMS) -> dict[str, Any]:
    """A request body as a JSON object, or the ``ValidationError`` of :func:`json_error`."""
    try:
        value = loads(body, max_items=max_items)
    except JSONError as exc:
        raise json_error(exc) from exc
    if not isinstance(value, dict):
        raise ValidationError("the request body must be a JSON object", code="invalid_json")
    return value


def json_error(exc: JSONError) -> ValidationError:
    """A request body ``loads`` refused, as the client's error: 400 ``invalid_json``, or
    413 ``request_too_large`` for too many values."""
    if exc.limit == "max_json_items":
        return ValidationError(
            f"the request body holds {exc}", status=413, code="request_too_large"
        )
    if exc.limit == "max_json_depth":
        return ValidationError(f"the request body is {exc}", code="invalid_json")
    return ValidationError("the request body is not valid JSON", code="invalid_json")


def over_json_limits(exc: BaseException) -> bool:
    """Whether ``exc`` refuses a body for the JSON limits (not for being bad JSON)."""
    cause = exc.__cause__
    return isinstance(cause, JSONError) and cause.limit is not None


def param_path(path: Sequence[int | str]) -> str:
    """A place in a JSON body as OpenAI's errors name it: ``messages[2].content``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out
