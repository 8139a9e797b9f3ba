"""Commands: what the exchange asks its driver to do.

"Commands make it possible for layers to communicate with the outer world."
Every command is a frozen, slotted, keyword-only dataclass; a driver matches on
the exact class and raises ``RuntimeError`` on one it does not know.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from ._events import Headers

__all__ = [
    "CancelUpstream",
    "Command",
    "EndResponse",
    "Log",
    "LogLevel",
    "Origin",
    "SendBody",
    "SendUpstreamRequest",
    "StartResponse",
    "WriteTrace",
]

LogLevel = Literal["debug", "info", "warning", "error"]


class Command:
    """Base class of all commands."""

    __slots__ = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Origin:
    """Where an upstream lives: scheme, host and port."""

    scheme: Literal["http", "https"]
    host: str
    port: int

    def __post_init__(self) -> None:
        if self.scheme not in ("http", "https"):
            raise ValueError(f"unsupported scheme {self.scheme!r}: use 'http' or 'https'")

    def __str__(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"


@dataclass(frozen=True, slots=True, kw_only=True)
class SendUpstreamRequest(Command):
    """Open (or reuse) a connection to ``origin`` and send this request.

    ``headers`` are final (Host and Content-Length included). Feed the outcome
    back as ``UpstreamResponse``/``UpstreamData``/``UpstreamEnded`` or
    ``UpstreamFailed`` with the same ``attempt``.
    """

    attempt: int
    origin: Origin
    method: bytes
    target: bytes
    headers: Headers
    body: bytes
    connect_timeout: float


@dataclass(frozen=True, slots=True, kw_only=True)
class CancelUpstream(Command):
    """Abort the upstream attempt: close its connection at once."""

    attempt: int


@dataclass(frozen=True, slots=True, kw_only=True)
class StartResponse(Command):
    """Send the response head to the client. Once sent, it is final."""

    status: int
    headers: Headers


@dataclass(frozen=True, slots=True, kw_only=True)
class SendBody(Command):
    """Send a chunk of the response body to the client."""

    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class EndResponse(Command):
    """End the response.

    ``complete=False`` means the body is truncated: the driver must close the
    client connection without a clean end, so the client can tell.
    """

    complete: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class WriteTrace(Command):
    """Write one trace record as JSON to ``directory/name``. Fire and forget."""

    directory: str
    name: str
    record: Mapping[str, Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class Log(Command):
    """Emit a log line. ``fields`` never hold secrets."""

    level: LogLevel
    message: str
    fields: Mapping[str, Any]
