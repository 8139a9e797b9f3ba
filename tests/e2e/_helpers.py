"""Helpers shared by the end-to-end tests: request bodies, strict SSE parsing, raw sockets.

Nothing here waits by sleeping: every wait is a socket read with a deadline (trace
files are read by tests/support/traces.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import textwrap
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import h11
import httpx
import openai

from tests.support.mock_upstream import SCENARIO_HEADER
from tests.support.proxy_process import ProxyProcess

__all__ = [
    "stream_chat",
    "CHAT",
    "MESSAGES",
    "READ_TIMEOUT",
    "SSE",
    "RawClient",
    "RawResponse",
    "assert_error_shape",
    "at_exit",
    "chat_body",
    "chat_content",
    "closed_port",
    "http_client",
    "iter_events",
    "openai_client",
    "parse_response_bytes",
    "parse_sse_stream",
    "raw_request",
    "stop",
]

CHAT: Final = "/v1/chat/completions"
MESSAGES: Final = "/v1/messages"
# Generous bounds for one read: a hang fails the test instead of stalling the suite.
READ_TIMEOUT: Final = 5.0


def chat_body(
    model: str = "mock-gpt", *, stream: bool = False, content: str = "Hi", **extra: Any
) -> dict[str, Any]:
    """An OpenAI chat completion request body."""
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": content}]}
    if stream:
        body["stream"] = True
    body.update(extra)
    return body


def closed_port() -> int:
    """A loopback port nothing listens on (bound once, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@contextlib.contextmanager
def stream_chat(
    proxy: ProxyProcess, scenario: str
) -> Iterator[tuple[httpx.Response, Iterator[SSE]]]:
    """A streamed chat completion through the proxy, with the mock playing `scenario`.

    Yields the response and an iterator of its events; leaving closes the connection.
    """
    with (
        http_client(proxy) as client,
        client.stream(
            "POST", CHAT, json=chat_body(stream=True), headers={SCENARIO_HEADER: scenario}
        ) as response,
    ):
        yield response, iter_events(response)


def http_client(proxy: ProxyProcess, *, timeout: float = READ_TIMEOUT) -> httpx.Client:
    """An httpx client for the proxy that ignores any proxy settings in the environment."""
    return httpx.Client(base_url=proxy.base_url, trust_env=False, timeout=timeout)


def openai_client(proxy: ProxyProcess, *, api_key: str = "sk-test") -> openai.OpenAI:
    """The official SDK pointed at the proxy, without retries (a retry would hide failures).

    (It connects straight to loopback unless HTTP_PROXY is set in the test's environment.)
    """
    return openai.OpenAI(base_url=proxy.url("/v1"), api_key=api_key, max_retries=0, timeout=10.0)


def assert_error_shape(body: Any, *, code: str | None) -> dict[str, Any]:
    """Check OpenAI's error shape and the code; return the inner error object."""
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error = body["error"]
    assert isinstance(error, dict), body
    assert set(error) == {"message", "type", "param", "code"}, body
    assert isinstance(error["message"], str) and error["message"], body
    assert isinstance(error["type"], str) and error["type"], body
    assert error["code"] == code, body
    assert "Traceback" not in error["message"], body
    return error


# -- SSE -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class SSE:
    """One event as the client received it."""

    event: str | None
    data: str
    fields: tuple[tuple[str, str], ...] = field(default=())

    def json(self) -> Any:
        return json.loads(self.data)


def _parse_block(block: str) -> SSE:
    """One event's lines (no trailing blank line), parsed strictly."""
    assert "\r" not in block, f"an event with a CR line end reached the client: {block!r}"
    assert block, "an empty event (a stray blank line) reached the client"
    event: str | None = None
    data: list[str] = []
    fields: list[tuple[str, str]] = []
    for line in block.split("\n"):
        assert line, f"a blank line inside an event: {block!r}"
        if line.startswith(":"):
            continue
        name, colon, value = line.partition(":")
        assert colon, f"a line without a colon: {line!r} in {block!r}"
        value = value.removeprefix(" ")
        fields.append((name, value))
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
    return SSE(event=event, data="\n".join(data), fields=tuple(fields))


def parse_sse_stream(raw: bytes) -> list[SSE]:
    """A whole stream as the proxy must send it: LF line ends, each event whole."""
    text = raw.decode("utf-8")
    assert "\r" not in text, f"CR line ends reached the client: {raw[:200]!r}"
    assert text.endswith("\n\n"), f"the stream does not end with a whole event: {raw[-200:]!r}"
    return [_parse_block(block) for block in text[:-2].split("\n\n")]


def iter_events(response: httpx.Response) -> Iterator[SSE]:
    """The events of a streaming response, each yielded as soon as it is whole.

    Fails if the body ends in the middle of an event.
    """
    buffer = b""
    for chunk in response.iter_bytes():
        buffer += chunk
        while (end := buffer.find(b"\n\n")) >= 0:
            block, buffer = buffer[:end], buffer[end + 2 :]
            yield _parse_block(block.decode("utf-8"))
    assert buffer == b"", f"the stream ended in the middle of an event: {buffer!r}"


def chat_content(events: Sequence[SSE]) -> str:
    """The assistant text carried by OpenAI chat chunks."""
    text = ""
    for event in events:
        if event.event is not None or event.data == "[DONE]":
            continue
        for choice in event.json().get("choices", []):
            text += choice.get("delta", {}).get("content") or ""
    return text


# -- raw sockets -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class RawResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        lowered = name.lower()
        return next((v for k, v in self.headers if k == lowered), None)

    def json(self) -> Any:
        return json.loads(self.body)


def raw_request(
    method: str,
    target: str,
    *,
    headers: Sequence[tuple[str, str]] = (),
    body: bytes = b"",
    host: str = "proxy.test",
) -> bytes:
    """The bytes of an HTTP/1.1 request, target sent exactly as given."""
    lines = [f"{method} {target} HTTP/1.1", f"host: {host}", *(f"{k}: {v}" for k, v in headers)]
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"content-length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class RawClient:
    """A client connection on a plain socket; responses are parsed with h11.

    Requests are written as raw bytes (so targets and garbage go out untouched);
    `read_response` parses the next response, whatever was sent.
    """

    def __init__(self, proxy: ProxyProcess, *, timeout: float = READ_TIMEOUT) -> None:
        self.sock = socket.create_connection((proxy.host, proxy.port), timeout=timeout)
        self.timeout = timeout
        self._h11 = h11.Connection(h11.CLIENT)

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def request(self, method: str, target: str, **kwargs: Any) -> RawResponse:
        self.send(raw_request(method, target, **kwargs))
        return self.read_response(method)

    def _recv(self) -> bytes:
        try:
            return self.sock.recv(65536)
        except ConnectionResetError:
            return b""

    def read_response(self, method: str = "GET") -> RawResponse:
        """The next response on the connection (fails on EOF or a timeout)."""
        conn = self._h11
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
        # h11 must believe it sent the request to parse the answer to it.
        conn.send(h11.Request(method=method, target="/", headers=[("host", "proxy.test")]))
        conn.send(h11.EndOfMessage())
        status = 0
        headers: list[tuple[str, str]] = []
        body = b""
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise AssertionError(
                    f"no whole response: {exc} (body so far {body[:200]!r})"
                ) from None
            if event is h11.NEED_DATA:
                conn.receive_data(self._recv())
            elif isinstance(event, h11.Response):
                status = event.status_code
                headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in event.headers]
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return RawResponse(status=status, headers=headers, body=body)
            elif isinstance(event, h11.ConnectionClosed):
                raise AssertionError(f"connection closed before a whole response (got {body!r})")

    def read_until_closed(self, timeout: float | None = None) -> bytes:
        """Everything the server sends until it closes the connection.

        Raises TimeoutError if the connection is still open after `timeout` seconds.
        """
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        received = b""
        while (remaining := deadline - time.monotonic()) > 0:
            self.sock.settimeout(remaining)
            try:
                data = self._recv()
            except TimeoutError:
                break
            if not data:
                return received
            received += data
        raise TimeoutError(f"the connection is still open; received {received[:300]!r}")


def parse_response_bytes(data: bytes) -> RawResponse:
    """Parse one complete response from raw bytes."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("host", "proxy.test")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(data)
    conn.receive_data(b"")
    status = 0
    headers: list[tuple[str, str]] = []
    body = b""
    while True:
        event = conn.next_event()
        if isinstance(event, h11.Response):
            status = event.status_code
            headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in event.headers]
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            return RawResponse(status=status, headers=headers, body=body)
        else:
            raise AssertionError(f"not one whole response: {data!r}")


def at_exit(tmp_path: Path, report: str, *, at_start: str = "") -> tuple[dict[str, str], Path]:
    """What makes a proxy started with the returned environment run ``report`` (the body
    of a function writing to the open text file ``out``) when it exits, and
    ``at_start`` when it starts (a ``sitecustomize`` on its path); and the file.

    The proxy runs as users run it; the test reads what it could not see from
    outside (what the process imported, what its garbage collector found).
    """
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    found = tmp_path / "at-exit.txt"
    source = (
        "import atexit, os\n"
        f"{textwrap.dedent(at_start)}\n"
        "def _report():\n"
        f"    with open({str(found)!r}, 'w', encoding='utf-8') as out:\n"
        f"{textwrap.indent(textwrap.dedent(report), '        ')}\n"
        "atexit.register(_report)\n"
    )
    (site / "sitecustomize.py").write_text(source, encoding="utf-8")
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p)
    return {"PYTHONPATH": path}, found


def stop(proxy: ProxyProcess, *, timeout: float = 15.0) -> int:
    """SIGTERM the proxy and return its exit status."""
    proxy.terminate()
    return proxy.wait(timeout)
