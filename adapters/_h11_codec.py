"""The h11 codec of the asyncio server (``adapters._loop_server``): h11 parses the
requests and frames the responses of ``python -m adapters.h11_server``.

In a module of its own so that the httptools server never imports h11.
"""

from __future__ import annotations

import contextlib

import h11

from core import RequestData, RequestEnded, RequestReceived
from core._errors import detached

from ._loop_server import CLOSED, NEED_DATA, REASONS, BadRequest, CannotAnswer, RequestEvent

__all__ = ["H11Codec"]

_ENDED = RequestEnded()


def _h11_reason(exc: h11.RemoteProtocolError) -> str:
    # h11's message may quote the offending line, an Authorization header with
    # its key say: only the words before it are logged or sent back.
    return str(exc).split(":", 1)[0].strip() or type(exc).__name__


class H11Codec:
    """Requests parsed and responses framed by h11."""

    __slots__ = ("_conn",)

    def __init__(self, max_header_size: int) -> None:
        self._conn = h11.Connection(h11.SERVER, max_incomplete_event_size=max_header_size)

    def feed(self, data: bytes) -> None:
        with contextlib.suppress(RuntimeError):  # data after the client's EOF: ignored
            self._conn.receive_data(data)

    def next_event(self) -> RequestEvent:
        try:
            event = self._conn.next_event()
        except h11.RemoteProtocolError as exc:
            # h11 raises it from a frame that holds it: a reference cycle, unless
            # its frames go.
            raise BadRequest(exc.error_status_hint, _h11_reason(detached(exc))) from None
        kind = type(event)
        if kind is h11.Data:
            return RequestData(data=event.data)  # type: ignore[union-attr]
        if kind is h11.Request:
            return RequestReceived(
                method=event.method,  # type: ignore[union-attr]
                target=event.target,  # type: ignore[union-attr]
                headers=event.headers,  # type: ignore[union-attr]
            )
        if kind is h11.EndOfMessage:
            return _ENDED
        if kind is h11.ConnectionClosed:
            return CLOSED
        return NEED_DATA  # NEED_DATA, or PAUSED until next_cycle()

    def expects_continue(self) -> bool:
        return self._conn.they_are_waiting_for_100_continue

    def _send(self, event: h11.Event) -> bytes:
        try:
            return self._conn.send(event) or b""
        except h11.LocalProtocolError as exc:
            raise CannotAnswer(str(exc)) from None

    def continue_response(self) -> bytes:
        return self._send(h11.InformationalResponse(status_code=100, headers=[]))

    def response_head(self, status: int, headers: list[tuple[bytes, bytes]]) -> bytes:
        reason = REASONS.get(status, b"")
        return self._send(h11.Response(status_code=status, headers=headers, reason=reason))

    def response_data(self, data: bytes) -> bytes:
        return self._send(h11.Data(data=data))

    def response_end(self) -> bytes:
        return self._send(h11.EndOfMessage())

    def request_done(self) -> bool:
        return self._conn.their_state is h11.DONE

    def reading_body(self) -> bool:
        return self._conn.their_state is h11.SEND_BODY

    def partial(self) -> bool:
        conn = self._conn
        return conn.their_state is h11.SEND_BODY or bool(conn.trailing_data[0])

    def can_answer(self) -> bool:
        return self._conn.our_state in (h11.IDLE, h11.SEND_RESPONSE)

    def reusable(self) -> bool:
        conn = self._conn
        return conn.our_state is h11.DONE and conn.their_state is h11.DONE

    def next_cycle(self) -> None:
        self._conn.start_next_cycle()

    def close(self) -> None:
        pass  # h11's connection holds nothing of this codec
