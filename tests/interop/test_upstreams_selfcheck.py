"""The interop upstreams check themselves: each variant is on the wire what it claims.

A raw-socket client reads each answer byte for byte (header names as spelled, the
framing, each HTTP chunk, the connection left open or closed), httpx reads them as a
client library would, and the recorded payloads are checked against the constants tests
assert with. Nothing here involves the proxy.
"""

from __future__ import annotations

import gzip
import json
import re
import socket
import zlib
from dataclasses import dataclass, field
from typing import Any, Final

import httpx
import pytest

from tests.interop.payloads import (
    ANTHROPIC_MODEL,
    COMPLETION_TOKENS,
    DELTAS,
    OPENAI_MODEL,
    PROMPT_TOKENS,
    STREAM_EVENT_COUNTS,
    TEXT,
    TOTAL_TOKENS,
    error_body,
    read_payload,
)
from tests.interop.servers import CAPABILITIES, NAMES, Upstream, capability_variants

_TITLE_RE: Final = re.compile(r"^[A-Z][a-z]*(-[A-Z][a-z]*)*$")
_TIMEOUT: Final = 10.0
_CHAT: Final = "/v1/chat/completions"
_MESSAGES: Final = "/v1/messages"


# --- a raw HTTP/1.1 client --------------------------------------------------------------


@dataclass
class RawResponse:
    """One response as it was on the wire."""

    status: int
    headers: list[tuple[str, str]]  # names spelled as sent
    body: bytes = b""  # de-chunked, not decompressed
    chunks: list[bytes] | None = None  # the HTTP chunks, when chunked
    ended_by_close: bool = False  # the server closed to end the body
    reset: bool = False  # the connection was reset before the body ended
    extra: bytes = field(default=b"", repr=False)

    def header(self, name: str) -> str | None:
        values = [v for n, v in self.headers if n.lower() == name.lower()]
        assert len(values) <= 1, f"{name} sent {len(values)} times"
        return values[0] if values else None

    def decoded(self) -> bytes:
        if (self.header("content-encoding") or "").lower() == "gzip":
            return gzip.decompress(self.body)
        return self.body


class RawConnection:
    """A keep-alive connection that sends requests and reads responses by hand."""

    def __init__(self, upstream: Upstream) -> None:
        self.sock = socket.create_connection((upstream.host, upstream.port), timeout=_TIMEOUT)
        self.buffer = b""
        self.host = f"{upstream.host}:{upstream.port}"

    def close(self) -> None:
        self.sock.close()

    def _recv(self) -> bytes:
        data = self.sock.recv(65536)
        self.buffer += data
        return data

    def _read_until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            if not self._recv():
                raise EOFError(f"connection closed before {marker!r}: {self.buffer!r}")
        head, _, self.buffer = self.buffer.partition(marker)
        return head

    def _read_exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            if not self._recv():
                raise EOFError(f"connection closed with {size - len(self.buffer)} bytes to go")
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def send(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> None:
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}"]
        all_headers = {"Accept-Encoding": "identity", **(headers or {})}
        if body or method == "POST":
            all_headers.setdefault("Content-Type", "application/json")
            all_headers["Content-Length"] = str(len(body))
        lines += [f"{name}: {value}" for name, value in all_headers.items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)

    def read(self) -> RawResponse:
        head = self._read_until(b"\r\n\r\n").decode("latin-1")
        status_line, *header_lines = head.split("\r\n")
        version, status, _ = status_line.split(" ", 2)
        assert version == "HTTP/1.1", status_line
        headers = []
        for line in header_lines:
            name, sep, value = line.partition(":")
            assert sep and name == name.strip(), f"bad header line {line!r}"
            headers.append((name, value.strip()))
        response = RawResponse(status=int(status), headers=headers)
        try:
            self._read_body(response)
        except ConnectionResetError:
            response.reset = True
            response.extra = self.buffer
        return response

    def _read_body(self, response: RawResponse) -> None:
        te = response.header("transfer-encoding")
        length = response.header("content-length")
        if te is not None:
            assert te.lower() == "chunked" and length is None, response.headers
            response.chunks = []
            while True:
                size = int(self._read_until(b"\r\n").split(b";")[0], 16)
                if size == 0:
                    self._read_until(b"\r\n")  # no trailers
                    break
                response.chunks.append(self._read_exactly(size))
                assert self._read_exactly(2) == b"\r\n"
            response.body = b"".join(response.chunks)
        elif length is not None:
            response.body = self._read_exactly(int(length))
        else:
            while self._recv():
                pass
            response.body, self.buffer = self.buffer, b""
            response.ended_by_close = True

    def request(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> RawResponse:
        self.send(method, path, body, headers)
        return self.read()


def raw_request(
    upstream: Upstream,
    path: str,
    payload: dict[str, Any] | bytes,
    headers: dict[str, str] | None = None,
) -> RawResponse:
    """POST ``payload`` on a fresh connection; check it is reusable unless it was closed."""
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    connection = RawConnection(upstream)
    try:
        response = connection.request("POST", path, body, headers)
        if not response.ended_by_close and not response.reset:
            assert response.header("connection") in (None, "keep-alive"), response.headers
            again = connection.request("GET", "/health")
            assert again.status == 200 and again.body == b"ok\n", again
        return response
    finally:
        connection.close()


# --- what the answers hold --------------------------------------------------------------


def sse_events(body: bytes) -> list[bytes]:
    """The SSE events of a body (LF line ends), each with its blank line."""
    assert b"\r" not in body
    assert body.endswith(b"\n\n"), body[-40:]
    return [event + b"\n\n" for event in body[:-2].split(b"\n\n")]


def sse_data(event: bytes) -> str:
    data = [line[6:] for line in event.decode().splitlines() if line.startswith("data: ")]
    assert len(data) == 1, event
    return data[0]


def check_openai_stream(body: bytes, model: str, *, usage: bool) -> None:
    events = sse_events(body)
    assert sse_data(events[-1]) == "[DONE]"
    chunks = [json.loads(sse_data(event)) for event in events[:-1]]
    assert {chunk["object"] for chunk in chunks} == {"chat.completion.chunk"}
    assert {chunk["model"] for chunk in chunks} == {model}
    pieces = [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"]]
    assert "".join(p for p in pieces if p) == TEXT
    assert [p for p in pieces if p] == list(DELTAS)
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finishes[-1] == "stop" and set(finishes[:-1]) == {None}
    if usage:
        assert all("usage" in chunk for chunk in chunks)
        assert [c["usage"] is None for c in chunks] == [True] * (len(chunks) - 1) + [False]
        assert chunks[-1]["choices"] == []
        last = chunks[-1]["usage"]
        assert (last["prompt_tokens"], last["completion_tokens"], last["total_tokens"]) == (
            PROMPT_TOKENS,
            COMPLETION_TOKENS,
            TOTAL_TOKENS,
        )
    else:
        assert not any("usage" in chunk for chunk in chunks)


def check_openai_json(body: bytes, model: str) -> None:
    answer = json.loads(body)
    assert answer["object"] == "chat.completion" and answer["model"] == model
    assert answer["choices"][0]["message"]["content"] == TEXT
    usage = answer["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]) == (
        PROMPT_TOKENS,
        COMPLETION_TOKENS,
        TOTAL_TOKENS,
    )
    assert "prompt_tokens_details" in usage and "completion_tokens_details" in usage


def check_anthropic_stream(body: bytes, model: str) -> None:
    events = sse_events(body)
    names = [event.decode().splitlines()[0].removeprefix("event: ") for event in events]
    data = [json.loads(sse_data(event)) for event in events]
    assert [item["type"] for item in data] == names
    assert names == [
        "message_start",
        "content_block_start",
        "ping",
        *["content_block_delta"] * len(DELTAS),
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert data[0]["message"]["model"] == model
    assert data[0]["message"]["usage"]["input_tokens"] == PROMPT_TOKENS
    deltas = [item["delta"]["text"] for item in data if item["type"] == "content_block_delta"]
    assert deltas == list(DELTAS)
    assert data[-2]["usage"]["output_tokens"] == COMPLETION_TOKENS


def check_anthropic_json(body: bytes, model: str) -> None:
    answer = json.loads(body)
    assert answer["type"] == "message" and answer["model"] == model
    assert answer["content"] == [{"type": "text", "text": TEXT}]
    assert answer["usage"] == {"input_tokens": PROMPT_TOKENS, "output_tokens": COMPLETION_TOKENS}


def check_casing(upstream: Upstream, casing: str, response: RawResponse) -> None:
    for name, _ in response.headers:
        if name in upstream.fixed_names:
            continue
        if casing == "lower":
            assert name == name.lower(), response.headers
        elif casing == "upper":
            assert name == name.upper(), response.headers
        else:
            assert _TITLE_RE.match(name), response.headers


def check_framing(framing: str, delivery: str, response: RawResponse, pieces: int) -> None:
    """``pieces``: how many writes the `event` delivery makes (events, or 2 JSON halves)."""
    encoding = response.header("content-encoding")
    if framing == "gzip":
        assert encoding == "gzip", response.headers
    else:
        assert encoding is None, response.headers
    if framing == "length":
        assert response.header("content-length") is not None and response.chunks is None
    elif framing == "close":
        assert response.ended_by_close and response.chunks is None, response.headers
        assert (response.header("connection") or "").lower() == "close"
    else:
        assert response.chunks is not None, response.headers
        sizes = [len(chunk) for chunk in response.chunks]
        if delivery == "whole":
            assert len(sizes) == 1, sizes
        elif delivery == "event":
            assert len(sizes) == pieces, sizes
        else:
            assert set(sizes) == {1}, sizes[:20]


# --- the payload files ------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [*sorted(STREAM_EVENT_COUNTS), "openai_chat.json", "anthropic_messages.json", "errors.json"],
)
def test_payload_files_are_ascii_with_lf_line_ends(name: str) -> None:
    data = read_payload(name)
    assert b"\r" not in data and data.isascii() and data.endswith(b"\n")


def test_payloads_hold_the_documented_text_and_usage() -> None:
    check_openai_json(read_payload("openai_chat.json"), OPENAI_MODEL)
    check_openai_stream(read_payload("openai_chat_stream.sse"), OPENAI_MODEL, usage=False)
    check_openai_stream(read_payload("openai_chat_stream_usage.sse"), OPENAI_MODEL, usage=True)
    check_anthropic_json(read_payload("anthropic_messages.json"), ANTHROPIC_MODEL)
    check_anthropic_stream(read_payload("anthropic_messages_stream.sse"), ANTHROPIC_MODEL)
    for name, count in STREAM_EVENT_COUNTS.items():
        assert len(sse_events(read_payload(name))) == count
    for api in ("openai", "anthropic"):
        for status in (400, 404, 409, 429, 501):
            body = error_body(api, status)
            error = body["error"]
            assert isinstance(error["message"], str) and error["message"]
            if api == "anthropic":
                assert body["type"] == "error"
            else:
                assert set(error) == {"message", "type", "param", "code"}


# --- every variant of every server, on the wire ----------------------------------------


def _variant_params() -> list[Any]:
    return [
        pytest.param(name, variant, id=f"{name}-{'-'.join(variant)}")
        for name in NAMES
        for variant in capability_variants(name)
    ]


@pytest.mark.parametrize(("name", "variant"), _variant_params())
def test_variant_on_the_wire(
    request: pytest.FixtureRequest, name: str, variant: tuple[str, str, str]
) -> None:
    upstream: Upstream = request.getfixturevalue(f"{name}_upstream")
    framing, casing, delivery = variant
    prefix = "/" + "/".join(variant)
    model = f"routed-{name}-{framing}"

    def check(path: str, payload: dict[str, Any], pieces: int) -> bytes:
        response = raw_request(upstream, prefix + path, payload)
        assert response.status == 200 and not response.reset, response
        check_casing(upstream, casing, response)
        check_framing(framing, delivery, response, pieces)
        stream = payload.get("stream") is True
        expected = "text/event-stream; charset=utf-8" if stream else "application/json"
        assert response.header("content-type") == expected
        if stream:
            assert response.header("cache-control") == "no-cache"
        return response.decoded()

    usage_count = STREAM_EVENT_COUNTS["openai_chat_stream_usage.sse"]
    body = check(
        _CHAT, {"model": model, "stream": True}, STREAM_EVENT_COUNTS["openai_chat_stream.sse"]
    )
    check_openai_stream(body, model, usage=False)
    options = {"model": model, "stream": True, "stream_options": {"include_usage": True}}
    check_openai_stream(check(_CHAT, options, usage_count), model, usage=True)
    check_openai_json(check(_CHAT, {"model": model}, 2), model)
    events = STREAM_EVENT_COUNTS["anthropic_messages_stream.sse"]
    check_anthropic_stream(check(_MESSAGES, {"model": model, "stream": True}, events), model)
    check_anthropic_json(check(_MESSAGES, {"model": model, "max_tokens": 10}, 2), model)


# --- the rest of the contract, per server -----------------------------------------------


def test_health_and_unknown_paths(real_upstream: Upstream) -> None:
    assert httpx.get(f"{real_upstream.origin}/health", timeout=_TIMEOUT).text == "ok\n"
    for path in ("/nope", "/length/title/whole/v1/models", "/nope/title/whole/v1/messages"):
        response = httpx.post(f"{real_upstream.origin}{path}", json={}, timeout=_TIMEOUT)
        assert response.status_code == 404, path
        assert "error" in response.json()


def test_unsupported_variants_are_404(real_upstream: Upstream) -> None:
    missing = [
        (framing, casing, "whole")
        for framing in ("length", "chunked", "close", "gzip")
        for casing in ("lower", "title", "upper")
        if not real_upstream.supports(framing, casing, "whole")
    ]
    for variant in missing:
        url = f"{real_upstream.origin}/{'/'.join(variant)}/v1/messages"
        response = httpx.post(url, json={"model": "m"}, timeout=_TIMEOUT)
        assert response.status_code == 404, variant
        assert response.json()["error"]["type"] == "not_found_error"
    with pytest.raises(ValueError, match="does not offer"):
        real_upstream.base_url("chunked", "sideways", "event")


@pytest.mark.parametrize("status", [429, 409])
@pytest.mark.parametrize("path", [_CHAT, _MESSAGES])
def test_status_models(real_upstream: Upstream, status: int, path: str) -> None:
    for framing, casing, delivery in real_upstream.variants():
        if delivery == "byte":
            continue
        response = raw_request(
            real_upstream,
            f"/{framing}/{casing}/{delivery}{path}",
            {"model": f"status-{status}", "stream": True},
        )
        assert response.status == status
        check_casing(real_upstream, casing, response)
        assert response.header("retry-after") == "0"
        assert response.header("content-type") == "application/json"
        api = "anthropic" if path == _MESSAGES else "openai"
        assert json.loads(response.decoded()) == error_body(api, status)


def test_a_body_that_is_not_json_is_400(real_upstream: Upstream) -> None:
    for path, api in ((_CHAT, "openai"), (_MESSAGES, "anthropic")):
        response = raw_request(real_upstream, "/length/title/whole" + path, b"{not json")
        assert response.status == 400
        assert json.loads(response.body) == error_body(api, 400)


@pytest.mark.parametrize("path", [_CHAT, _MESSAGES])
def test_reset_mid_stream(real_upstream: Upstream, path: str) -> None:
    payload = {"model": "reset-mid-stream", "stream": True}
    if not real_upstream.can_reset:
        response = raw_request(
            real_upstream,
            real_upstream.base_url().removeprefix(real_upstream.origin) + path,
            payload,
        )
        assert response.status == 501
        return
    for framing, casing, delivery in real_upstream.variants():
        response = raw_request(real_upstream, f"/{framing}/{casing}/{delivery}{path}", payload)
        assert response.status == 200 and response.reset, (framing, casing, delivery, response)
        check_casing(real_upstream, casing, response)
        received = response.body if response.chunks is None else b"".join(response.chunks)
        if response.chunks is None:
            received += response.extra
        if framing == "gzip":
            received = zlib.decompressobj(wbits=31).decompress(received)
        # The head and the first two events (however much of them arrived), nothing more.
        events = sse_events(
            read_payload(
                "openai_chat_stream.sse" if path == _CHAT else "anthropic_messages_stream.sse"
            )
        )
        expected = b"".join(events[:2]).replace(
            (OPENAI_MODEL if path == _CHAT else ANTHROPIC_MODEL).encode(), b"reset-mid-stream"
        )
        assert expected.startswith(received), (framing, casing, delivery)


def test_stats_see_what_reached_the_upstream(real_upstream: Upstream) -> None:
    if not real_upstream.has_stats:
        pytest.skip(f"{real_upstream.name} keeps no stats")
    before = real_upstream.stats()
    path = "/length/title/whole" + _CHAT
    body = json.dumps({"model": "stats-check", "messages": []}).encode()
    headers = {
        "Authorization": "Bearer sk-interop",
        "X-Interop-Probe": "1",
        "Accept-Encoding": "identity",
    }
    assert raw_request(real_upstream, path, body, headers).status == 200
    after = real_upstream.stats()
    assert after["requests"] == before["requests"] + 1
    assert after["paths"][path] == before["paths"].get(path, 0) + 1
    assert after["last_path"] == path
    assert after["last_body"] == body.decode()
    seen = after["last_headers"]
    assert seen["authorization"] == "Bearer sk-interop"
    assert seen["x-interop-probe"] == "1"
    assert seen["accept-encoding"] == "identity"
    assert seen["content-length"] == str(len(body))


def test_gzip_is_sent_whatever_the_request_accepts(real_upstream: Upstream) -> None:
    """``gzip`` framing compresses for ``Accept-Encoding: identity`` too; nginx, which
    honours Accept-Encoding, compresses exactly when the request accepts gzip."""
    model = "gz"
    if "gzip" in real_upstream.framings:
        for accept in ("identity", "gzip", None):
            headers: dict[str, str] = {} if accept is None else {"Accept-Encoding": accept}
            response = raw_request(
                real_upstream, "/gzip/title/whole" + _MESSAGES, {"model": model}, headers
            )
            assert response.header("content-encoding") == "gzip"
            check_anthropic_json(response.decoded(), model)
    if real_upstream.name == "nginx":
        for framing in real_upstream.framings:
            for stream in (False, True):
                path = f"/{framing}/title/event{_CHAT}"
                payload = {"model": model, "stream": stream}
                plain = raw_request(real_upstream, path, payload)
                assert plain.header("content-encoding") is None
                packed = raw_request(real_upstream, path, payload, {"Accept-Encoding": "gzip"})
                assert packed.header("content-encoding") == "gzip", (framing, stream)
                assert packed.decoded() == plain.body
                if framing == "length":  # nginx drops the length to compress
                    assert packed.chunks is not None


@pytest.mark.parametrize(
    ("name", "framing"),
    [
        pytest.param(name, framing, id=f"{name}-{framing}")
        for name in NAMES
        for framing in CAPABILITIES[name].framings
    ],
)
def test_httpx_reads_every_framing(request: pytest.FixtureRequest, name: str, framing: str) -> None:
    real_upstream: Upstream = request.getfixturevalue(f"{name}_upstream")
    casing = real_upstream.casings[0]
    base = real_upstream.base_url(framing, casing, "event")
    with httpx.Client(timeout=_TIMEOUT) as client:
        payload = {"model": "hx", "stream": True, "stream_options": {"include_usage": True}}
        with client.stream("POST", base + _CHAT, json=payload) as response:
            assert response.status_code == 200
            assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
            body = b"".join(response.iter_bytes())
        check_openai_stream(body, "hx", usage=True)
        answer = client.post(base + _MESSAGES, json={"model": "hx"})
        assert answer.status_code == 200
        check_anthropic_json(answer.content, "hx")
        limited = client.post(base + _MESSAGES, json={"model": "status-429"})
        assert limited.status_code == 429 and limited.headers["retry-after"] == "0"
        assert limited.json()["error"]["type"] == "rate_limit_error"


def test_the_model_is_echoed_json_escaped(real_upstream: Upstream) -> None:
    model = 'caf\u00e9 "quoted" \U0001f600'
    response = raw_request(real_upstream, "/length/title/whole" + _MESSAGES, {"model": model})
    assert response.body.isascii()
    check_anthropic_json(response.body, model)


def test_the_servers_send_the_same_bytes(request: pytest.FixtureRequest) -> None:
    """Whatever the stack, the same request gets the same body (the payloads, escaped alike)."""
    upstreams: list[Upstream] = [request.getfixturevalue(f"{name}_upstream") for name in NAMES]
    model = "same-\u00e9-\U0001f600"
    requests: list[tuple[str, dict[str, Any]]] = [
        (_CHAT, {"model": model}),
        (_CHAT, {"model": model, "stream": True}),
        (_CHAT, {"model": model, "stream": True, "stream_options": {"include_usage": True}}),
        (_MESSAGES, {"model": model}),
        (_MESSAGES, {"model": model, "stream": True}),
        (_MESSAGES, {"model": "status-429"}),
        (_CHAT, {"model": "status-409"}),
    ]
    for path, payload in requests:
        bodies = {
            u.name: raw_request(u, "/chunked/title/event" + path, payload).body for u in upstreams
        }
        assert len(set(bodies.values())) == 1, (path, payload, bodies)
