"""The one renderer of errors, in every shape a client reads them.

Two APIs, two shapes each: a JSON body for a response not yet begun, an SSE
``error`` event for a stream already flowing.

- OpenAI: ``{"error": {"message", "type", "param", "code"}}``; in a stream,
  ``event: error`` with the same object.
- Anthropic: ``{"type": "error", "error": {"type", "message"}}``; in a stream,
  ``event: error`` with the same object (Anthropic's documented stream error).

The proxy's own errors (:class:`~core.ProtocolError`) go through
:func:`render_error` and :func:`render_error_event`; the translators, which
carry an upstream's error from one API to the other, use the four shape
functions directly. Every JSON the core writes comes from ``core._json.dumps``.
"""

from __future__ import annotations

from collections.abc import Sequence

from ._endpoints import ApiName
from ._errors import ProtocolError
from ._json import dumps

__all__ = [
    "anthropic_error_body",
    "anthropic_error_event",
    "error_headers",
    "openai_error_body",
    "openai_error_event",
    "render_error",
    "render_error_event",
]


def openai_error_body(
    message: str, *, error_type: str, code: str | None = None, param: str | None = None
) -> bytes:
    """An error in OpenAI's shape."""
    return dumps({"error": {"message": message, "type": error_type, "param": param, "code": code}})


def anthropic_error_body(message: str, *, error_type: str) -> bytes:
    """An error in Anthropic's shape."""
    return dumps({"type": "error", "error": {"type": error_type, "message": message}})


def openai_error_event(message: str, *, error_type: str, code: str | None = None) -> bytes:
    """An ``event: error`` SSE block carrying an OpenAI error object."""
    return (
        b"event: error\ndata: "
        + openai_error_body(message, error_type=error_type, code=code)
        + b"\n\n"
    )


def anthropic_error_event(message: str, *, error_type: str) -> bytes:
    """An ``event: error`` SSE block carrying an Anthropic error object."""
    return b"event: error\ndata: " + anthropic_error_body(message, error_type=error_type) + b"\n\n"


def render_error(error: ProtocolError, *, api: ApiName = "openai") -> bytes:
    """``error`` as the JSON body a client of ``api`` reads."""
    if api == "anthropic":
        return anthropic_error_body(str(error), error_type=error.anthropic_type)
    return openai_error_body(
        str(error), error_type=error.error_type, code=error.code, param=error.param
    )


def render_error_event(error: ProtocolError, *, api: ApiName = "openai") -> bytes:
    """``error`` as the SSE ``error`` event a streaming client of ``api`` reads."""
    if api == "anthropic":
        return anthropic_error_event(str(error), error_type=error.anthropic_type)
    return openai_error_event(str(error), error_type=error.error_type, code=error.code)


def error_headers(
    body: bytes, extra: Sequence[tuple[bytes, bytes]] = ()
) -> list[tuple[bytes, bytes]]:
    """Response headers for a JSON error body (``extra``: ``Retry-After`` and the like)."""
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    headers.extend(extra)
    return headers
