"""Self-checks of the mock upstream, talked to directly (no proxy in between)."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterator

import anthropic
import h11
import httpx
import openai
import pytest

from tests.support.mock_upstream import (
    DEFAULT_TEXT,
    EMBEDDING_SIZE,
    MODELS,
    PROMPT_TOKENS,
    SCENARIO_HEADER,
    MockUpstream,
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
