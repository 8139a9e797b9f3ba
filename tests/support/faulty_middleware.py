"""A custom middleware with a bug, named by import path in e2e configs
(``tests.support.faulty_middleware:Faulty``): on a request with ``x-fault: command`` it
emits something that is not a command, which the driver cannot carry out."""

from __future__ import annotations

from typing import Any

from core import Command

__all__ = ["Faulty"]


class _NotACommand(Command):
    __slots__ = ()


class Faulty:
    name = "faulty"

    def on_request(self, exchange: Any) -> None:
        if any(
            name == b"x-fault" and value == b"command" for name, value in exchange.request_headers
        ):
            exchange.emit(_NotACommand())
