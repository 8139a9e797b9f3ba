"""Self-checks of the mock upstream, talked to directly (no proxy in between)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass

import anthropic
import h11
import httpx
import openai
import pytest

from tests.support.mock_upstream import (
    CASINGS,
    DEFAULT_TEXT,
    EMBEDDING_SIZE,
    FRAMINGS,
    MODELS,
    PROMPT_TOKENS,
    SCENARIO_HEADER,
    WIRE_HEADER,
    MockUpstream,
    WireStyle,
    parse_scenario,
    slow_stream_pieces,
)

CHAT = "/v1/chat/completions"
ANTHROPIC_SEQUENCE = [
    "message_start",
    "content_block_start",
    "ping",
    *["content_block_delta"] * 5,
    "content_block_stop",
    "message_delta",
    "message_stop",
]


@pytest.fixture
def client(mock_upstream: MockUpstream) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=mock_upstream.base_url, trust_env=False, timeout=5) as c:
        yield c


@pytest.fixture
def oai(mock_upstream: MockUpstream) -> openai.OpenAI:
    return openai.OpenAI(base_url=mock_upstream.url("/v1"), api_key="sk-test", max_retries=0)


def chat_body(model: str = "mock-gpt", **extra: object) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}


def sse_data(text: str) -> list[str]:
    """The data of each event of an LF-framed stream."""
    return [
        "\n".join(line[6:] for line in block.split("\n") if line.startswith("data: "))
        for block in text.split("\n\n")
        if block.strip()
    ]


def raw_exchange(mock: MockUpstream, scenario: str) -> socket.socket:
    """A raw socket that has sent one chat request with `scenario`."""
    body = json.dumps(chat_body(stream=True)).encode()
    sock = socket.create_connection(("127.0.0.1", mock.port), timeout=5)
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: mock\r\ncontent-type: application/json\r\n"
        + f"{SCENARIO_HEADER}: {scenario}\r\ncontent-length: {len(body)}\r\n\r\n".encode()
        + body
    )
    return sock


def read_until_reset(sock: socket.socket) -> bytes:
    received = b""
    with pytest.raises(ConnectionResetError):
        while data := sock.recv(65536):
            received += data
    return received


# -- answers --------------------------------------------------------------------------


def test_chat_completion(mock_upstream: MockUpstream, oai: openai.OpenAI) -> None:
    reply = oai.chat.completions.create(
        model="mock-gpt", messages=[{"role": "user", "content": "hi"}]
    )
    assert reply.choices[0].message.content == DEFAULT_TEXT
    assert reply.usage is not None
    assert reply.usage.prompt_tokens == PROMPT_TOKENS
    assert reply.usage.completion_tokens == 5
    (request,) = mock_upstream.requests
    assert (request.method, request.target) == ("POST", CHAT)
    assert request.header("Authorization") == "Bearer sk-test"
    assert all(name == name.lower() for name, _ in request.headers)
    assert request.json()["messages"] == [{"role": "user", "content": "hi"}]
    assert request.scenario == "ok"


@pytest.mark.parametrize("usage", [True, False])
def test_chat_stream(oai: openai.OpenAI, usage: bool) -> None:
    stream = oai.chat.completions.create(
        model="mock-gpt",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": usage},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == DEFAULT_TEXT
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    if usage:
        assert chunks[-1].choices == []
        assert chunks[-1].usage is not None
        assert chunks[-1].usage.total_tokens == PROMPT_TOKENS + 5
    else:
        assert all(c.usage is None for c in chunks)


def test_chat_stream_wire_format(client: httpx.Client) -> None:
    response = client.post(CHAT, json=chat_body(stream=True))
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.text.endswith("data: [DONE]\n\n")
    assert sse_data(response.text)[-1] == "[DONE]"


def test_embeddings(oai: openai.OpenAI, client: httpx.Client) -> None:
    reply = oai.embeddings.create(model="mock-embed", input=["a", "b"])  # base64 on the wire
    assert [len(d.embedding) for d in reply.data] == [EMBEDDING_SIZE] * 2
    floats = client.post("/v1/embeddings", json={"model": "m", "input": ["a", "b"]}).json()
    assert [d.embedding for d in reply.data] == [d["embedding"] for d in floats["data"]]


def test_models(oai: openai.OpenAI) -> None:
    assert [m.id for m in oai.models.list()] == list(MODELS)


def test_anthropic_messages(mock_upstream: MockUpstream) -> None:
    client = anthropic.Anthropic(base_url=mock_upstream.base_url, api_key="ak", max_retries=0)
    message = client.messages.create(
        model="mock-claude", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
    )
    assert message.content[0].type == "text"
    assert message.content[0].text == DEFAULT_TEXT
    raw = client.messages.create(
        model="mock-claude",
        max_tokens=10,
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
    )
    assert [event.type for event in raw] == [e for e in ANTHROPIC_SEQUENCE if e != "ping"]
    with httpx.stream(
        "POST", mock_upstream.url("/v1/messages"), json={"model": "m", "stream": True}
    ) as response:
        names = [line[7:] for line in response.iter_lines() if line.startswith("event: ")]
    assert names == ANTHROPIC_SEQUENCE  # the SDK hides "ping"
    with client.messages.stream(
        model="mock-claude", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        assert stream.get_final_text() == DEFAULT_TEXT
    # anthropic 2.x sends the key as "authorization: Bearer", older versions as "x-api-key".
    sent = mock_upstream.requests[0]
    assert "ak" in (sent.header("x-api-key"), (sent.header("authorization") or "")[7:])


def test_echo(client: httpx.Client) -> None:
    response = client.request(
        "PATCH", "/some/where?a=1&b=2", content=b"\x00raw", headers={"X-A": "1"}
    )
    echo = response.json()
    assert echo["method"] == "PATCH"
    assert echo["target"] == "/some/where?a=1&b=2"
    assert ["x-a", "1"] in echo["headers"]
    assert echo["body_base64"] == "AHJhdw=="


# -- scenarios ------------------------------------------------------------------------


def test_status_by_model_and_header(oai: openai.OpenAI, client: httpx.Client) -> None:
    with pytest.raises(openai.InternalServerError):
        oai.chat.completions.create(model="scenario:status-500", messages=[])
    response = client.post(CHAT, json=chat_body(), headers={SCENARIO_HEADER: "status-429"})
    assert response.status_code == 429
    assert response.headers["retry-after"] == "7"
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    anthropic_error = client.post("/v1/messages", json={"model": "scenario:status-529"})
    assert anthropic_error.json()["type"] == "error"


def test_queue_and_unknown(mock_upstream: MockUpstream, client: httpx.Client) -> None:
    mock_upstream.enqueue("status-503", "ok")
    assert [client.get("/x").status_code for _ in range(3)] == [503, 200, 200]
    unknown = client.get("/x", headers={SCENARIO_HEADER: "no-such-thing"})
    assert unknown.status_code == 400
    assert "unknown mock scenario" in unknown.json()["error"]["message"]
    with pytest.raises(ValueError, match="known"):
        parse_scenario("slow-stream:x:1")


def test_reset_before_head(mock_upstream: MockUpstream) -> None:
    with raw_exchange(mock_upstream, "reset-before-head") as sock:
        assert read_until_reset(sock) == b""
    (conn,) = mock_upstream.connections
    assert mock_upstream.wait_for_close(conn.id, 1.0)
    assert conn.close_reason == "server"


def test_reset_mid_body(mock_upstream: MockUpstream, client: httpx.Client) -> None:
    with raw_exchange(mock_upstream, "reset-mid-body") as sock:
        received = read_until_reset(sock)
    assert received.startswith(b"HTTP/1.1 200 ")
    assert received.count(b"data: ") == 2
    with pytest.raises(httpx.HTTPError):
        client.post(CHAT, json=chat_body(), headers={SCENARIO_HEADER: "reset-mid-body"})


def test_stall_head_then_client_leaves(mock_upstream: MockUpstream) -> None:
    sock = raw_exchange(mock_upstream, "stall-head")
    request = mock_upstream.wait_for_request()
    assert not mock_upstream.connection_closed(request.conn_id).is_set()
    sock.close()
    assert mock_upstream.wait_for_close(request.conn_id, 1.0)
    assert mock_upstream.connection(request.conn_id).close_reason == "eof"


def test_stall_mid_stream_then_client_leaves(
    mock_upstream: MockUpstream, client: httpx.Client
) -> None:
    with client.stream("POST", CHAT, json=chat_body("scenario:stall-mid-stream")) as response:
        # Keep the iterator referenced: dropping it mid-body makes httpx close the connection.
        lines = response.iter_lines()
        events = 0
        while events < 2:
            events += next(lines).startswith("data: ")
        conn_id = int(response.headers["x-mock-connection-id"])
        assert not mock_upstream.connection_closed(conn_id).is_set()
    assert mock_upstream.wait_for_close(conn_id, 1.0)


def test_slow_stream(client: httpx.Client) -> None:
    data = sse_data(client.post(CHAT, json=chat_body("scenario:slow-stream:3:10")).text)
    chunks = [json.loads(d) for d in data[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == "".join(slow_stream_pieces(3)) == "tok0 tok1 tok2 "


@pytest.mark.parametrize(("scenario", "eol"), [("sse-crlf", "\r\n"), ("sse-cr", "\r")])
def test_line_endings(client: httpx.Client, scenario: str, eol: str) -> None:
    text = client.post(CHAT, json=chat_body(), headers={SCENARIO_HEADER: scenario}).text
    assert text.endswith(f"data: [DONE]{eol}{eol}")
    assert sse_data(text.replace(eol, "\n"))[-1] == "[DONE]"
    if eol == "\r":
        assert "\n" not in text


def test_split_bytes(mock_upstream: MockUpstream) -> None:
    with raw_exchange(mock_upstream, "sse-split-bytes") as sock:
        conn = h11.Connection(h11.CLIENT)
        conn.send(
            h11.Request(
                method="POST", target=CHAT, headers=[("host", "mock"), ("content-length", "0")]
            )
        )
        conn.send(h11.EndOfMessage())
        sizes: list[int] = []
        body = b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(sock.recv(65536))
            elif isinstance(event, h11.Data):
                sizes.append(len(event.data))
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
    assert set(sizes) == {1}  # one byte per chunked-encoding chunk
    chunks = [json.loads(d) for d in sse_data(body.decode())[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == DEFAULT_TEXT


def test_huge_event(client: httpx.Client) -> None:
    size = 2 * 1024 * 1024
    text = client.post(CHAT, json=chat_body(f"scenario:sse-huge-event:{size}")).text
    data = sse_data(text)
    assert len(data[1]) == size
    assert json.loads(data[1])["object"] == "chat.completion.chunk"
    assert data[-1] == "[DONE]"


def test_deep_json_answer_and_event(client: httpx.Client) -> None:
    deep = b'"x":' + b"[" * 300 + b"0" + b"]" * 300 + b"}"
    answer = client.post(CHAT, json=chat_body("scenario:deep-json:300")).content
    assert answer.endswith(b"," + deep)
    assert json.loads(answer[: -len(deep) - 1] + b"}")["object"] == "chat.completion"
    messages = client.post("/v1/messages", json=chat_body("scenario:deep-json:300")).content
    assert messages.startswith(b'{"id":"msg_') and messages.endswith(b"," + deep)
    data = sse_data(client.post(CHAT, json=chat_body("scenario:deep-json-event:300")).text)
    assert data[1].endswith("," + deep.decode()) and data[-1] == "[DONE]"
    assert json.loads(data[1][: -len(deep) - 1] + "}")["choices"][0]["delta"] == {
        "content": "Hello"
    }
    with pytest.raises(ValueError, match="deep-json-event:<depth>"):
        parse_scenario("deep-json:-1")


def test_no_final_blank_line(client: httpx.Client) -> None:
    text = client.post(CHAT, json=chat_body("scenario:sse-no-final-blank-line")).text
    assert text.endswith("}\n\ndata: [DONE]\n")
    bare = client.post(CHAT, json=chat_body("scenario:sse-no-final-newline")).text
    assert bare.endswith("}\n\ndata: [DONE]")


def test_sse_extras_parse(oai: openai.OpenAI) -> None:
    stream = oai.chat.completions.create(model="scenario:sse-extras", messages=[], stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == DEFAULT_TEXT


def test_malformed_head(client: httpx.Client) -> None:
    with pytest.raises(httpx.RemoteProtocolError):
        client.get("/x", headers={SCENARIO_HEADER: "malformed-head"})


# -- connections ----------------------------------------------------------------------


def test_keep_alive_and_closing(mock_upstream: MockUpstream, client: httpx.Client) -> None:
    first = {client.get("/x").headers["x-mock-connection-id"] for _ in range(3)}
    assert len(first) == 1
    closing = client.get("/x", headers={SCENARIO_HEADER: "connection-close"})
    assert closing.headers["connection"] == "close"
    after = client.get("/x", headers={SCENARIO_HEADER: "close-after-response"})
    assert after.headers["x-mock-connection-id"] not in first
    conn_id = int(after.headers["x-mock-connection-id"])
    assert mock_upstream.wait_for_close(conn_id, 1.0)
    assert mock_upstream.connection(conn_id).close_reason == "server"
    assert mock_upstream.connection(conn_id).request_count == 1
    assert client.get("/x").headers["x-mock-connection-id"] not in first | {str(conn_id)}


def test_concurrent_connections(mock_upstream: MockUpstream) -> None:
    async def main() -> set[str]:
        async with httpx.AsyncClient(base_url=mock_upstream.base_url, trust_env=False) as c:

            async def one() -> str:
                response = await c.post(CHAT, json=chat_body("scenario:slow-stream:3:20"))
                assert sse_data(response.text)[-1] == "[DONE]"
                return response.headers["x-mock-connection-id"]

            return set(await asyncio.gather(*(one() for _ in range(20))))

    assert len(asyncio.run(main())) == 20
    assert len(mock_upstream.wait_for_requests(20)) == 20
    assert len(mock_upstream.wait_for_connections(20)) == 20


def test_waits_time_out(mock_upstream: MockUpstream) -> None:
    with pytest.raises(TimeoutError, match="0 request"):
        mock_upstream.wait_for_requests(1, timeout=0.01)
    with pytest.raises(TimeoutError):
        mock_upstream.wait_for_request(lambda r: r.method == "GET", timeout=0.01)


# -- wire style -----------------------------------------------------------------------
# Read off a raw socket, so that what is checked is what went on the wire, spelled as
# it was (every HTTP client library would normalise the names or the framing).

JSON_NAMES = ["content-type", "content-length", "x-mock-connection-id", "x-mock-request-index"]
SSE_NAMES = [
    "content-type",
    "transfer-encoding",
    "cache-control",
    "x-mock-connection-id",
    "x-mock-request-index",
]
TITLE = {
    "content-type": "Content-Type",
    "content-length": "Content-Length",
    "transfer-encoding": "Transfer-Encoding",
    "cache-control": "Cache-Control",
    "connection": "Connection",
    "retry-after": "Retry-After",
    "x-mock-connection-id": "X-Mock-Connection-Id",
    "x-mock-request-index": "X-Mock-Request-Index",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class WireResponse:
    """One response exactly as it was on the wire."""

    status: int
    fields: list[tuple[str, str]]  # names as spelled, in order
    body: bytes  # de-chunked
    chunk_sizes: list[int] | None  # None unless chunked
    closed: bool  # the mock closed the connection after the body (if probed, or read to EOF)

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.fields]

    def values(self, name: str) -> list[str]:
        return [value for key, value in self.fields if key.lower() == name]


class WireReader:
    """Requests written and responses parsed by hand on one raw connection."""

    def __init__(self, mock: MockUpstream) -> None:
        self.sock = socket.create_connection(("127.0.0.1", mock.port), timeout=5)
        self.buffer = b""
        self.eof = False

    def __enter__(self) -> WireReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.sock.close()

    def _fill(self) -> bool:
        data = b"" if self.eof else self.sock.recv(65536)
        self.eof = not data
        self.buffer += data
        return bool(data)

    def _take(self, size: int) -> bytes:
        while len(self.buffer) < size:
            assert self._fill(), f"EOF {size - len(self.buffer)} bytes early"
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def _line(self) -> bytes:
        while (end := self.buffer.find(b"\r\n")) < 0:
            assert self._fill(), f"EOF inside a line: {self.buffer!r}"
        line, self.buffer = self.buffer[:end], self.buffer[end + 2 :]
        return line

    def send(self, *, wire: str | None = None, scenario: str = "ok", stream: bool = False) -> None:
        body = json.dumps(chat_body(stream=stream)).encode()
        headers = f"{SCENARIO_HEADER}: {scenario}\r\n"
        if wire is not None:
            headers += f"{WIRE_HEADER}: {wire}\r\n"
        self.sock.sendall(
            f"POST {CHAT} HTTP/1.1\r\nhost: mock\r\ncontent-type: application/json\r\n"
            f"{headers}content-length: {len(body)}\r\n\r\n".encode()
            + body
        )

    def read(self, *, probe_close: bool = False) -> WireResponse:
        """The next response; `probe_close`: wait a moment to see if the mock closes after it."""
        version, status, _ = self._line().decode("latin-1").split(" ", 2)
        assert version == "HTTP/1.1"
        fields: list[tuple[str, str]] = []
        while line := self._line():
            name, colon, value = line.decode("latin-1").partition(": ")
            assert colon, line
            fields.append((name, value))
        framing = {name.lower(): value for name, value in fields}
        chunk_sizes: list[int] | None = None
        if "transfer-encoding" in framing:
            assert framing["transfer-encoding"] == "chunked"
            body, chunk_sizes = b"", []
            while size := int(self._line(), 16):
                chunk_sizes.append(size)
                body += self._take(size)
                assert self._take(2) == b"\r\n"
            assert self._line() == b""
        elif "content-length" in framing:
            body = self._take(int(framing["content-length"]))
        else:
            while self._fill():
                pass
            body, self.buffer = self.buffer, b""
        if probe_close and not self.buffer and not self.eof:
            self.sock.settimeout(0.2)
            with contextlib.suppress(TimeoutError):
                self._fill()
            self.sock.settimeout(5)
        return WireResponse(
            status=int(status),
            fields=fields,
            body=body,
            chunk_sizes=chunk_sizes,
            closed=self.eof and not self.buffer,
        )


def wire_response(
    mock: MockUpstream,
    *,
    wire: str | None = None,
    scenario: str = "ok",
    stream: bool = False,
    probe_close: bool = False,
) -> WireResponse:
    """One response on a fresh connection, closed after it."""
    with WireReader(mock) as reader:
        reader.send(wire=wire, scenario=scenario, stream=stream)
        return reader.read(probe_close=probe_close)


def chat_text(response: WireResponse) -> str:
    """The assistant's text of a chat completion or of its stream."""
    if response.body.startswith(b"{"):
        content: str = json.loads(response.body)["choices"][0]["message"]["content"]
        return content
    chunks = [json.loads(d) for d in sse_data(response.body.decode())[:-1]]
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)


def test_default_wire_is_title_case(mock_upstream: MockUpstream) -> None:
    answer = wire_response(mock_upstream)
    assert answer.names == [TITLE[name] for name in JSON_NAMES]
    assert answer.values("content-length") == [str(len(answer.body))]
    stream = wire_response(mock_upstream, stream=True)
    assert stream.names == [TITLE[name] for name in SSE_NAMES]
    assert stream.values("content-type") == ["text/event-stream; charset=utf-8"]
    assert stream.chunk_sizes and len(stream.chunk_sizes) == 8  # one chunk an event
    limited = wire_response(mock_upstream, scenario="status-429")
    assert limited.names[-1] == "Retry-After"
    assert limited.values("retry-after") == ["7"]


@pytest.mark.parametrize("casing", CASINGS)
@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_casing(mock_upstream: MockUpstream, casing: str, stream: bool) -> None:
    expected = SSE_NAMES if stream else JSON_NAMES
    response = wire_response(mock_upstream, wire=f"casing={casing}", stream=stream)
    assert [name.lower() for name in response.names] == expected
    if casing == "lower":
        assert response.names == expected
    elif casing == "upper":
        assert response.names == [name.upper() for name in expected]
    elif casing == "title":
        assert response.names == [TITLE[name] for name in expected]
    else:
        for name in response.names:
            assert name not in (name.lower(), name.upper(), TITLE[name.lower()]), name
        # Deterministic: the same seed spells the same, another seed differently.
        again = wire_response(mock_upstream, wire=f"casing={casing}", stream=stream)
        assert again.names == response.names
        other = wire_response(mock_upstream, wire=f"casing={casing};seed=1", stream=stream)
        assert other.names != response.names
    assert chat_text(response) == DEFAULT_TEXT


def test_retry_after_in_every_casing(mock_upstream: MockUpstream) -> None:
    spelled = set()
    for casing in CASINGS:
        response = wire_response(mock_upstream, wire=f"casing={casing}", scenario="status-429:3")
        assert response.status == 429
        ((name, value),) = [(k, v) for k, v in response.fields if k.lower() == "retry-after"]
        assert value == "3"
        spelled.add(name)
    assert len(spelled) == len(CASINGS)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_order(mock_upstream: MockUpstream, stream: bool) -> None:
    expected = [TITLE[name] for name in (SSE_NAMES if stream else JSON_NAMES)]
    natural = wire_response(mock_upstream, wire="order=natural", stream=stream)
    assert natural.names == expected
    reversed_ = wire_response(mock_upstream, wire="order=reversed", stream=stream)
    assert reversed_.names == expected[::-1]
    orders = set()
    for seed in range(6):
        shuffled = wire_response(mock_upstream, wire=f"order=shuffled;seed={seed}", stream=stream)
        assert sorted(shuffled.names) == sorted(expected)
        again = wire_response(mock_upstream, wire=f"order=shuffled;seed={seed}", stream=stream)
        assert again.names == shuffled.names
        orders.add(tuple(shuffled.names))
        assert chat_text(shuffled) == DEFAULT_TEXT
    assert len(orders) > 1


@pytest.mark.parametrize("framing", FRAMINGS)
@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_framing(mock_upstream: MockUpstream, framing: str, stream: bool) -> None:
    with WireReader(mock_upstream) as reader:
        reader.send(wire=f"framing={framing}", stream=stream)
        response = reader.read(probe_close=True)
        conn_id = int(response.values("x-mock-connection-id")[0])
        if not response.closed:
            assert not mock_upstream.connection_closed(conn_id).is_set()
    assert response.status == 200
    names = [name.lower() for name in response.names]
    effective = framing if framing != "auto" else ("chunked" if stream else "length")
    if effective == "length":
        assert response.values("content-length") == [str(len(response.body))]
        assert "transfer-encoding" not in names
        assert response.chunk_sizes is None
    elif effective == "chunked":
        assert response.values("transfer-encoding") == ["chunked"]
        assert "content-length" not in names
        assert response.chunk_sizes
    else:
        assert "content-length" not in names and "transfer-encoding" not in names
        assert response.values("connection") == ["close"]
        assert names[-1] == "connection"
    assert response.closed is (effective == "close")
    if effective == "close":
        assert mock_upstream.wait_for_close(conn_id, 1.0)
        assert mock_upstream.connection(conn_id).close_reason == "server"
    else:
        assert "connection" not in names
    assert chat_text(response) == DEFAULT_TEXT
    if stream:
        assert response.body.endswith(b"data: [DONE]\n\n")


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_framed_responses_keep_the_connection(mock_upstream: MockUpstream, framing: str) -> None:
    with WireReader(mock_upstream) as reader:
        for stream in (True, False, True):
            reader.send(wire=f"framing={framing};casing=mixed", stream=stream)
            response = reader.read(probe_close=True)
            assert not response.closed
            assert chat_text(response) == DEFAULT_TEXT
    (conn,) = mock_upstream.connections
    assert conn.request_count == 3


@pytest.mark.parametrize("framing", ["length", "close"])
def test_split_bytes_in_other_framings(mock_upstream: MockUpstream, framing: str) -> None:
    response = wire_response(
        mock_upstream, wire=f"framing={framing}", scenario="sse-split-bytes", stream=True
    )
    assert chat_text(response) == DEFAULT_TEXT
    assert response.body.endswith(b"data: [DONE]\n\n")


@pytest.mark.parametrize("framing", FRAMINGS)
def test_connection_close_in_every_framing(mock_upstream: MockUpstream, framing: str) -> None:
    response = wire_response(
        mock_upstream,
        wire=f"framing={framing};casing=upper",
        scenario="connection-close",
        probe_close=True,
    )
    assert response.values("connection") == ["close"]
    assert "CONNECTION" in response.names
    assert response.closed
    assert chat_text(response) == DEFAULT_TEXT


@pytest.mark.parametrize("framing", FRAMINGS)
def test_reset_mid_body_in_every_framing(mock_upstream: MockUpstream, framing: str) -> None:
    for stream in (False, True):
        with WireReader(mock_upstream) as reader:
            reader.send(wire=f"framing={framing}", scenario="reset-mid-body", stream=stream)
            with pytest.raises((AssertionError, ConnectionResetError)):
                reader.read()  # never whole: the announced length or the chunks fall short


def test_stall_mid_stream_framed_by_length(mock_upstream: MockUpstream) -> None:
    with WireReader(mock_upstream) as reader:
        reader.send(wire="framing=length;casing=lower", scenario="stall-mid-stream")
        while reader.buffer.count(b"data: ") < 2:
            assert reader._fill()
        head, _, body = reader.buffer.partition(b"\r\n\r\n")
        announced = int(head.split(b"content-length: ")[1].split(b"\r\n")[0])
        assert announced > len(body)  # the whole stream's length, only 2 events sent
        (request,) = mock_upstream.requests
        assert not mock_upstream.connection_closed(request.conn_id).is_set()
    assert mock_upstream.wait_for_close(request.conn_id, 1.0)


def test_bad_wire_is_a_400(mock_upstream: MockUpstream, client: httpx.Client) -> None:
    for bad in ("casing=camel", "order=sorted", "framing=gzip", "seed=x", "color=red", "title"):
        response = client.post(CHAT, json=chat_body(), headers={WIRE_HEADER: bad})
        assert response.status_code == 400, bad
        message = response.json()["error"]["message"]
        assert "mock wire" in message and "casing=lower|title|upper|mixed" in message, message
    # The 400 is spelled in the mock's default style.
    raw = wire_response(mock_upstream, wire="casing=bogus")
    assert raw.status == 400
    assert raw.names == [TITLE[name] for name in JSON_NAMES]


def test_wire_style_parse_and_default() -> None:
    base = WireStyle(casing="upper", framing="close")
    style = WireStyle.parse(" order=reversed ; seed=9 ;", base)
    assert style == WireStyle(casing="upper", order="reversed", framing="close", seed=9)
    assert WireStyle.parse(str(style)) == style
    assert WireStyle() == WireStyle(casing="title", order="natural", framing="auto", seed=0)
    with pytest.raises(ValueError, match="known: casing="):
        WireStyle(casing="camel")  # type: ignore[arg-type]
    with MockUpstream(wire="casing=lower;framing=chunked") as mock:
        plain = wire_response(mock)
        assert plain.names == ["content-type", "transfer-encoding", *JSON_NAMES[2:]]
        # A request's header overrides only what it names.
        upper = wire_response(mock, wire="casing=upper")
        assert upper.names == [name.upper() for name in plain.names]
        mock.wire = WireStyle(casing="title")
        assert wire_response(mock).names == [TITLE[name] for name in JSON_NAMES]
    assert not mock.errors


@pytest.mark.parametrize(
    "wire", ["casing=mixed;order=shuffled;framing=close", "casing=upper;framing=length"]
)
def test_sdks_read_every_style(mock_upstream: MockUpstream, wire: str) -> None:
    oai = openai.OpenAI(
        base_url=mock_upstream.url("/v1"),
        api_key="sk-test",
        max_retries=0,
        default_headers={WIRE_HEADER: wire},
    )
    reply = oai.chat.completions.create(model="mock-gpt", messages=[])
    assert reply.choices[0].message.content == DEFAULT_TEXT
    stream = oai.chat.completions.create(model="mock-gpt", messages=[], stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == DEFAULT_TEXT
    claude = anthropic.Anthropic(
        base_url=mock_upstream.base_url,
        api_key="ak",
        max_retries=0,
        default_headers={WIRE_HEADER: wire},
    )
    with claude.messages.stream(model="mock-claude", max_tokens=10, messages=[]) as events:
        assert events.get_final_text() == DEFAULT_TEXT
