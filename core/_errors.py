"""The two error families of the core, as in h11.

``LocalProtocolError`` means the driver misused the core (an event in a state
that does not accept it). ``RemoteProtocolError`` means a peer -- the client or
the upstream -- sent data the core cannot accept. Both carry the HTTP status
they map to (``error_status_hint``), an OpenAI error ``type`` and ``code``.
"""

from __future__ import annotations

__all__ = ["LocalProtocolError", "ProtocolError", "RemoteProtocolError"]


class ProtocolError(Exception):
    """Base class of the core's errors. Do not raise it directly."""

    error_status_hint: int
    error_type: str
    code: str | None
    param: str | None

    def __init__(
        self,
        msg: str,
        *,
        error_status_hint: int = 400,
        error_type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        if type(self) is ProtocolError:
            raise TypeError("tried to directly instantiate ProtocolError")
        super().__init__(msg)
        self.error_status_hint = error_status_hint
        self.error_type = error_type
        self.code = code
        self.param = param


class LocalProtocolError(ProtocolError):
    """The driver fed the core something it may not feed in this state."""


class RemoteProtocolError(ProtocolError):
    """A peer (client or upstream) sent data the core cannot accept."""
