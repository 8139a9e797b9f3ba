"""A connection's transport that can hold its writes, for ``adapters.asgi``'s uvicorn
protocol and the app's sink.

A module of its own: under ``python -m adapters.asgi`` that module is also
``__main__`` (whose protocol uvicorn runs) while uvicorn imports it again for the
app, so a class defined there would be two.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

__all__ = ["CorkedTransport"]


class CorkedTransport:
    """A connection's transport that can hold writes: uvicorn writes a response's
    head and its body separately, two system calls where one will do. Between
    ``hold`` and ``release`` (``_ASGISink`` sending a flush's messages, which
    never wait meanwhile) writes are kept, then go out as one. Anything else
    goes to the transport; ``close`` and ``write_eof`` first write what is held."""

    __slots__ = ("_held", "_transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._held: list[bytes] | None = None

    def write(self, data: bytes) -> None:
        held = self._held
        if held is None:
            self._transport.write(data)
        elif data:
            held.append(data)

    def hold(self) -> None:
        self._held = []

    def release(self) -> None:
        held = self._held
        self._held = None
        if held:
            self._transport.write(held[0] if len(held) == 1 else b"".join(held))

    def drop(self) -> None:
        """Forget what is held (the client is gone)."""
        self._held = None

    def writelines(self, chunks: Iterable[bytes]) -> None:
        self.write(b"".join(chunks))

    def write_eof(self) -> None:
        self.release()
        self._transport.write_eof()

    def close(self) -> None:
        self.release()
        self._transport.close()

    def abort(self) -> None:
        self._held = None
        self._transport.abort()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)
