"""The transparent proxy, through each adapter: the openai SDK, httpx and raw sockets.

Every test here runs once per adapter (h11, asgi, trio) over real loopback sockets,
against the mock upstream of tests/support/mock_upstream.py.
"""

from __future__ import annotations

import base64
import json
import random
import struct
from collections.abc import Iterator

import anthropic
import openai
import pytest

from tests.e2e._helpers import (
    CHAT,
    RawClient,
    assert_error_shape,
    chat_body,
    closed_port,
    http_client,
    openai_client,
)
from tests.support.mock_upstream import (
    DEFAULT_TEXT,
    EMBEDDING_SIZE,
    MODELS,
    PROMPT_TOKENS,
    SCENARIO_HEADER,
    MockUpstream,
)
from tests.support.proxy_process import ProxyProcess, StartProxy

MOCK_PREFIX = "This is the sansproxy mock. You said: "
HOP_BY_HOP = (
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
)


@pytest.fixture
def oai(proxy: ProxyProcess) -> Iterator[openai.OpenAI]:
    with openai_client(proxy) as client:
        yield client


# -- the openai SDK ---------------------------------------------------------------------


def test_sdk_chat_non_stream(oai: openai.OpenAI, mock_upstream: MockUpstream) -> None:
    completion = oai.chat.completions.create(
        model="mock-gpt", messages=[{"role": "user", "content": "hello there"}]
    )
    assert completion.choices[0].message.content == DEFAULT_TEXT
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == PROMPT_TOKENS
    seen = mock_upstream.wait_for_request()
    assert (seen.method, seen.target) == ("POST", CHAT)
    assert seen.json()["messages"] == [{"role": "user", "content": "hello there"}]
    # No key configured: the client's own credentials pass through.
    assert seen.header("authorization") == "Bearer sk-test"


def test_sdk_chat_stream(oai: openai.OpenAI, mock_upstream: MockUpstream) -> None:
    stream = oai.chat.completions.create(
        model="mock-gpt",
        messages=[{"role": "user", "content": "stream please"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    text = ""
    usage = None
    finish = None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
    assert text == DEFAULT_TEXT
    assert finish == "stop"
    assert usage is not None and usage.completion_tokens == 5
    assert mock_upstream.wait_for_request().json()["stream"] is True


def test_sdk_embeddings(oai: openai.OpenAI, mock_upstream: MockUpstream) -> None:
    for encoding in ("float", "base64"):
        result = oai.embeddings.create(
            model="mock-embed", input=["one", "two"], encoding_format=encoding
        )
        assert [item.index for item in result.data] == [0, 1]
        for item in result.data:
            # The mock's vectors are (input+1)*(i+1)/8: exact, so compared exactly.
            expected = [(item.index + 1) * (i + 1) / 8 for i in range(EMBEDDING_SIZE)]
            vector = item.embedding
            if isinstance(vector, str):
                vector = list(struct.unpack(f"<{EMBEDDING_SIZE}f", base64.b64decode(vector)))
            assert vector == expected, encoding
    assert [r.json()["encoding_format"] for r in mock_upstream.requests] == ["float", "base64"]


def test_sdk_models_list(oai: openai.OpenAI, mock_upstream: MockUpstream) -> None:
    assert [model.id for model in oai.models.list()] == list(MODELS)
    assert mock_upstream.wait_for_request().target == "/v1/models"


def test_sdk_rate_limit_error(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as caught:
        oai.chat.completions.create(
            model="scenario:status-429", messages=[{"role": "user", "content": "x"}]
        )
    error = caught.value
    assert error.status_code == 429
    assert error.body == {
        "message": "mock upstream error 429",
        "type": "rate_limit_exceeded",
        "param": None,
        "code": "429",
    }
    assert error.response.headers["retry-after"] == "7"


def test_sdk_internal_server_error(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        oai.chat.completions.create(
            model="scenario:status-500", messages=[{"role": "user", "content": "x"}]
        )
    assert caught.value.status_code == 500
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["message"] == "mock upstream error 500"


def test_sdk_connect_refused(start_proxy: StartProxy) -> None:
    proxy = start_proxy("--base-url", f"http://127.0.0.1:{closed_port()}", "--type", "openai")
    with openai_client(proxy) as client, pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code == 502
    assert caught.value.code == "upstream_connect_error"
    assert "Traceback" not in proxy.logs()


def test_sdk_against_builtin_mock_provider(start_proxy: StartProxy) -> None:
    proxy = start_proxy(config={"mock": {"stream_delay": 0.001}})
    with openai_client(proxy) as client:
        completion = client.chat.completions.create(
            model="any-model-name", messages=[{"role": "user", "content": "Hi there"}]
        )
        assert completion.choices[0].message.content == MOCK_PREFIX + "Hi there"
        assert completion.model == "any-model-name"
        assert completion.usage is not None and completion.usage.total_tokens > 0

        text = ""
        for chunk in client.chat.completions.create(
            model="any-model-name",
            messages=[{"role": "user", "content": "Hi there"}],
            stream=True,
        ):
            for choice in chunk.choices:
                text += choice.delta.content or ""
        assert text == MOCK_PREFIX + "Hi there"

        embeddings = client.embeddings.create(
            model="e", input=["a", "b", "c"], encoding_format="float"
        )
        assert [e.index for e in embeddings.data] == [0, 1, 2]
        assert all(len(e.embedding) > 0 for e in embeddings.data)
        again = client.embeddings.create(model="e", input="a", encoding_format="float")
        assert again.data[0].embedding == embeddings.data[0].embedding  # deterministic

        assert len(list(client.models.list())) > 0


# -- transparent forwarding -------------------------------------------------------------


def test_any_method_path_and_query_forwarded(
    proxy: ProxyProcess, mock_upstream: MockUpstream
) -> None:
    targets = [
        ("GET", "/v1/files?limit=2&after=file-1&limit=3"),
        ("POST", "/v1/responses?stream=false"),
        ("PUT", "/some/other/path"),
        ("PATCH", "/v1/fine_tuning/jobs/ft-1?x=%20y&z=a%2Bb"),
        ("DELETE", "/v1/files/file-abc"),
        ("OPTIONS", "/v1/things"),
    ]
    with http_client(proxy) as client:
        for method, target in targets:
            response = client.request(method, target, content=b"{}" if method == "POST" else None)
            assert response.status_code == 200, (method, target, response.text)
            echo = response.json()
            assert (echo["method"], echo["target"]) == (method, target)
    assert [(r.method, r.target) for r in mock_upstream.requests] == targets


def test_head_request_forwarded(proxy: ProxyProcess, mock_upstream: MockUpstream) -> None:
    # A HEAD answer has a Content-Length but no body: nothing may wait for one.
    with http_client(proxy) as client:
        head = client.head("/v1/models")
        assert head.status_code == 200
        assert head.content == b""
        assert client.get("/v1/models").json()["data"][0]["id"] == MODELS[0]
    assert [r.method for r in mock_upstream.requests] == ["HEAD", "GET"]


def test_expect_100_continue(proxy: ProxyProcess, mock_upstream: MockUpstream) -> None:
    # curl sends `Expect: 100-continue` with larger bodies and waits for the go-ahead.
    body = b'{"hello": "world"}'
    with RawClient(proxy) as raw:
        raw.send(
            b"POST /v1/echo HTTP/1.1\r\nhost: p\r\nexpect: 100-continue\r\n"
            + f"content-length: {len(body)}\r\n\r\n".encode()
        )
        interim = b""
        while b"\r\n\r\n" not in interim:
            data = raw.sock.recv(1)
            assert data, "closed before 100 Continue"
            interim += data
        assert interim.startswith(b"HTTP/1.1 100 ")
        raw.send(body)
        response = raw.read_response("POST")
    assert response.status == 200
    assert response.json()["body"] == body.decode()
    seen = mock_upstream.wait_for_request()
    assert seen.body == body
    assert seen.header("expect") is None


def test_body_byte_identical(proxy: ProxyProcess, mock_upstream: MockUpstream) -> None:
    rng = random.Random(20240601)
    sizes = [0, 1, 2, 1023, 65536, 65537, 1_000_003]
    with http_client(proxy) as client:
        for size in sizes:
            body = rng.randbytes(size)
            response = client.post(
                "/v1/upload", content=body, headers={"content-type": "application/octet-stream"}
            )
            assert response.status_code == 200
            assert base64.b64decode(response.json()["body_base64"]) == body, size

        # A chunked request body arrives whole, with its length.
        pieces = [rng.randbytes(n) for n in (10, 70_000, 3)]
        response = client.post("/v1/chunked", content=iter(pieces))
        assert response.status_code == 200
        assert base64.b64decode(response.json()["body_base64"]) == b"".join(pieces)
    bodies = [r.body for r in mock_upstream.requests]
    assert [len(b) for b in bodies] == [*sizes, 70_013]
    last = mock_upstream.requests[-1]
    assert last.header("content-length") == "70013"
    assert last.header("transfer-encoding") is None


def test_hop_by_hop_dropped_and_host_is_upstreams(
    proxy: ProxyProcess, mock_upstream: MockUpstream
) -> None:
    headers = [
        ("connection", "keep-alive, x-per-hop"),
        ("x-per-hop", "must not travel"),
        ("keep-alive", "timeout=5"),
        ("te", "trailers"),
        ("trailer", "x-checksum"),
        ("upgrade", "foo/2"),
        ("proxy-connection", "keep-alive"),
        ("proxy-authorization", "Basic cHJveHk6c2VjcmV0"),
        ("x-end-to-end", "kept"),
        ("openai-organization", "org-1"),
    ]
    with RawClient(proxy) as raw:
        response = raw.request("POST", "/v1/echo", headers=headers, body=b"{}")
    assert response.status == 200, response.body
    seen = mock_upstream.wait_for_request()
    names = [name for name, _ in seen.headers]
    for name in (*HOP_BY_HOP, "x-per-hop"):
        assert name not in names, (name, seen.headers)
    assert seen.header_values("host") == [f"127.0.0.1:{mock_upstream.port}"]
    assert seen.header("x-end-to-end") == "kept"
    assert seen.header("openai-organization") == "org-1"
    # Upstream response headers come back, hop-by-hop ones excepted.
    assert response.header("x-mock-request-index") == "0"
    assert response.header("content-type") == "application/json"


def test_upstream_connection_close_does_not_close_the_client_connection(
    proxy: ProxyProcess, mock_upstream: MockUpstream
) -> None:
    with RawClient(proxy) as raw:
        first = raw.request("GET", "/v1/models", headers=[(SCENARIO_HEADER, "connection-close")])
        assert first.status == 200
        assert first.header("connection") != "close"
        second = raw.request("GET", "/v1/models")
        assert second.status == 200
        assert json.loads(second.body)["data"][0]["id"] == MODELS[0]
    assert len(mock_upstream.requests) == 2


def test_api_key_replaces_client_authorization(
    start_proxy: StartProxy, mock_upstream: MockUpstream
) -> None:
    proxy = start_proxy(
        "--base-url", mock_upstream.base_url, "--type", "openai", "--api-key", "sk-upstream-1"
    )
    with openai_client(proxy, api_key="sk-client-1") as client:
        completion = client.chat.completions.create(
            model="mock-gpt", messages=[{"role": "user", "content": "x"}]
        )
    assert completion.choices[0].message.content == DEFAULT_TEXT
    seen = mock_upstream.wait_for_request()
    assert seen.header_values("authorization") == ["Bearer sk-upstream-1"]
    assert not any("sk-client-1" in value for _, value in seen.headers)


def test_anthropic_api_key_replaces_client_key(
    start_proxy: StartProxy, mock_upstream: MockUpstream
) -> None:
    proxy = start_proxy(
        "--base-url", mock_upstream.base_url, "--type", "anthropic", "--api-key", "sk-ant-up"
    )
    client = anthropic.Anthropic(base_url=proxy.base_url, api_key="sk-ant-client", max_retries=0)
    with client:
        message = client.messages.create(
            model="mock-claude", max_tokens=32, messages=[{"role": "user", "content": "hi"}]
        )
        assert [block.text for block in message.content if block.type == "text"] == [DEFAULT_TEXT]
        with client.messages.stream(
            model="mock-claude", max_tokens=32, messages=[{"role": "user", "content": "hi"}]
        ) as stream:
            assert "".join(stream.text_stream) == DEFAULT_TEXT
    for seen in mock_upstream.requests:
        assert seen.path == "/v1/messages"
        assert seen.header_values("x-api-key") == ["sk-ant-up"]
        assert not any("sk-ant-client" in value for _, value in seen.headers), seen.headers
    assert len(mock_upstream.requests) == 2


def test_client_credentials_pass_through_without_a_key(
    start_proxy: StartProxy, mock_upstream: MockUpstream
) -> None:
    for kind in ("openai", "anthropic"):
        mock_upstream.reset()
        proxy = start_proxy("--base-url", mock_upstream.base_url, "--type", kind)
        with http_client(proxy) as client:
            response = client.get(
                "/v1/models",
                headers={"authorization": "Bearer sk-own", "x-api-key": "own-ant-key"},
            )
        assert response.status_code == 200
        seen = mock_upstream.wait_for_request()
        assert seen.header_values("authorization") == ["Bearer sk-own"], kind
        assert seen.header_values("x-api-key") == ["own-ant-key"], kind


def test_upstream_key_never_leaks(start_proxy: StartProxy, mock_upstream: MockUpstream) -> None:
    secret = "sk-upstream-DO-NOT-LEAK-8f3a"
    proxy = start_proxy(
        "--base-url",
        mock_upstream.base_url,
        "--type",
        "openai",
        "--api-key",
        secret,
        "--log-level",
        "debug",
    )
    seen_by_client: list[str] = []
    with http_client(proxy) as client:
        for scenario in ("ok", "status-401", "status-429", "status-500", "reset-before-head"):
            response = client.post(CHAT, json=chat_body(), headers={SCENARIO_HEADER: scenario})
            seen_by_client += [response.text, str(response.headers)]
        with client.stream("POST", CHAT, json=chat_body(stream=True)) as stream:
            seen_by_client += [stream.read().decode(), str(stream.headers)]
        response = client.get("/health")
        seen_by_client.append(response.text)
    assert mock_upstream.requests[0].header("authorization") == f"Bearer {secret}"
    for text in seen_by_client:
        assert secret not in text
    proxy.terminate()
    proxy.wait(10)
    assert secret not in proxy.logs()


TRAVERSALS = [
    "/v1/../admin",
    "/v1/models/..",
    "/v1/./models",
    "/..",
    "/v1/%2e%2e/admin",
    "/v1/%2E%2E/admin",
    "/v1/.%2e/admin",
    "/v1/%2e/models",
    "/v1%2fmodels",
    "/v1/..%2Fadmin",
    "/v1/..%5cadmin",
    "/v1\\..\\admin",
    "//evil.example/v1/models",
    "http://evil.example/v1/models",
    "https://127.0.0.1/v1/models",
    "*",
]


def test_path_traversal_refused(proxy: ProxyProcess, mock_upstream: MockUpstream) -> None:
    accepted = []
    for target in TRAVERSALS:
        with RawClient(proxy) as raw:
            response = raw.request("GET", target)
        if response.status != 400:
            accepted.append((target, response.status))
            continue
        error = assert_error_shape(response.json(), code="invalid_request_target")
        assert error["type"] == "invalid_request_error", target
    assert accepted == [], "targets leaving the base path were not refused with 400"
    # Nothing reached the upstream.
    with http_client(proxy) as client:
        assert client.get("/v1/models").status_code == 200
    assert [r.target for r in mock_upstream.requests] == ["/v1/models"]


def test_health_answered_by_the_proxy(proxy: ProxyProcess, mock_upstream: MockUpstream) -> None:
    with http_client(proxy) as client:
        response = client.get("/health")
        assert response.status_code == 200
        assert response.json() == {"status": "ok"}
        assert response.headers["content-type"].startswith("application/json")
        assert client.get("/v1/models").status_code == 200  # flushes the ordering
    assert [r.target for r in mock_upstream.requests] == ["/v1/models"]


def test_health_with_an_unreachable_upstream(start_proxy: StartProxy) -> None:
    proxy = start_proxy("--base-url", f"http://127.0.0.1:{closed_port()}")
    with http_client(proxy) as client:
        response = client.get("/health")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})


def test_base_url_path_prefix(start_proxy: StartProxy, mock_upstream: MockUpstream) -> None:
    # A base URL with /v1 is not doubled; another prefix is kept in front of the path.
    proxy = start_proxy("--base-url", mock_upstream.url("/v1"))
    other = start_proxy("--base-url", mock_upstream.url("/openai/"))
    with http_client(proxy) as client, http_client(other) as client2:
        assert client.get("/v1/models?x=1").status_code == 200
        assert client2.get("/v1/files?x=1").status_code == 200
    assert [r.target for r in mock_upstream.requests] == ["/v1/models?x=1", "/openai/v1/files?x=1"]
