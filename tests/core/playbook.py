"""Playbook helpers: feed an exchange events, get back the exact commands."""

from __future__ import annotations

import dataclasses
from typing import Any

from core import (
    Command,
    EndResponse,
    Event,
    Exchange,
    Log,
    Proxy,
    ProxyConfig,
    RequestData,
    RequestEnded,
    RequestReceived,
    SendBody,
    StartResponse,
)

WALL = 1_700_000_000.0


def config(**kwargs: Any) -> ProxyConfig:
    return ProxyConfig.model_validate(kwargs)


def upstream_config(**kwargs: Any) -> ProxyConfig:
    tree: dict[str, Any] = {
        "upstream": {"base_url": "http://up.test:8080", **kwargs.pop("upstream", {})}
    }
    tree.update(kwargs)
    return ProxyConfig.model_validate(tree)


class Playbook:
    """One exchange, a clock that only moves when told, and its commands."""

    def __init__(self, proxy: Proxy | ProxyConfig, *, exchange_id: str = "ex1") -> None:
        self.proxy = proxy if isinstance(proxy, Proxy) else Proxy(proxy)
        self.now = 0.0
        self.ex: Exchange = self.proxy.exchange(exchange_id=exchange_id, now=0.0, wall_time=WALL)

    def __lshift__(self, event: Event) -> list[Command]:
        return self.feed(event)

    def feed(self, *events: Event, now: float | None = None) -> list[Command]:
        if now is not None:
            self.now = now
        for event in events:
            self.ex.handle(event, now=self.now)
        return self.drain()

    def drain(self) -> list[Command]:
        out = []
        while (cmd := self.ex.next_command()) is not None:
            if dataclasses.is_dataclass(cmd):
                # What the core builds without its checks (core._frozen.unchecked)
                # passes them: built again by the class, it is the same command.
                assert dataclasses.replace(cmd) == cmd
            out.append(cmd)
        return out

    def fire(self, now: float) -> list[Command]:
        self.now = now
        self.ex.handle_timer(now=now)
        return self.drain()

    def request(
        self,
        method: bytes = b"POST",
        target: bytes = b"/v1/chat/completions",
        body: bytes = b"",
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> list[Command]:
        head = RequestReceived(method=method, target=target, headers=headers or [])
        events: list[Event] = [head]
        if body:
            events.append(RequestData(data=body))
        events.append(RequestEnded())
        out = []
        for event in events:
            if self.ex.finished:
                break
            out.extend(self.feed(event))
        return out


def client_view(
    commands: list[Command],
) -> tuple[int | None, list[tuple[bytes, bytes]], bytes, bool | None]:
    """What the client gets: status, headers, body bytes, and whether it ended cleanly."""
    status = None
    headers: list[tuple[bytes, bytes]] = []
    body = b""
    complete = None
    for cmd in commands:
        if isinstance(cmd, StartResponse):
            status, headers = cmd.status, list(cmd.headers)
        elif isinstance(cmd, SendBody):
            body += cmd.data
        elif isinstance(cmd, EndResponse):
            complete = cmd.complete
    return status, headers, body, complete


def without_logs(commands: list[Command]) -> list[Command]:
    return [c for c in commands if not isinstance(c, Log)]


def header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for n, v in headers:
        if n == name:
            return v
    return None
