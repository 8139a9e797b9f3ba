"""The client drivers of tests/interop/clients.py, checked against known answers.

Each driver must report what its client really assembled. The answers are known
exactly: the proxy with no configuration serves the built-in mock provider (the
expectation comes from `core.gateway._mock.mock_answer` itself), and a proxy in front of the
project's mock upstream (`--type openai` or `--type anthropic`) relays
`DEFAULT_TEXT`, its usage and its scenarios (a 429, a stream cut or stalled).
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

import pytest

from core.gateway._mock import mock_answer
from tests.interop.clients import (
    CLIENTS,
    STREAM_ONLY,
    ClientResult,
    api_of,
    clients_for,
    parse_sse,
    run_client,
)
from tests.support.mock_upstream import (
    COMPLETION_TOKENS,
    DEFAULT_PIECES,
    DEFAULT_TEXT,
    PROMPT_TOKENS,
    MockUpstream,
)
from tests.support.proxy_process import ProxyProcess, proxy_argv, proxy_env

PROMPT: Final = "Hello there"
# Anthropic's stream from the mock: message_start, content_block_start, one delta a
# piece, content_block_stop, message_delta, message_stop (its ping is not counted).
ANTHROPIC_EVENTS: Final = len(DEFAULT_PIECES) + 5


def _modes(client: str) -> list[tuple[bool, bool]]:
    """(stream, include_usage) pairs that make sense for a client."""
    usage = (False, True) if api_of(client) == "openai" else (False,)
    modes = [(True, include) for include in usage]
    return modes if client in STREAM_ONLY else [(False, False), *modes]


CLIENT_MODES: Final = [
    pytest.param(
        client,
        stream,
        usage,
        id=f"{client}-{'stream' if stream else 'json'}" + ("-usage" if usage else ""),
    )
    for client in CLIENTS
    for stream, usage in _modes(client)
]


@dataclass(frozen=True)
class Expected:
    text: str
    finish_reason: str
    usage: dict[str, int]
    pieces: tuple[str, ...]
    chunks: int  # chunks before [DONE] when include_usage is off


def builtin_expectation(prompt: str, max_tokens: int, model: str = "mock-gpt") -> Expected:
    """What the built-in mock answers, straight from the core's mock provider."""
    request: dict[str, Any] = {
        "model": model,
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": prompt}],
    }
    whole = json.loads(
        mock_answer(
            b"POST",
            b"/v1/chat/completions",
            json.dumps(request).encode(),
            exchange_id="x",
            created=0,
        ).body
    )
    streamed = mock_answer(
        b"POST",
        b"/v1/chat/completions",
        json.dumps({**request, "stream": True}).encode(),
        exchange_id="x",
        created=0,
    )
    chunks = [
        json.loads(block.removeprefix(b"data: "))
        for block in streamed.blocks
        if block.strip() != b"data: [DONE]"
    ]
    pieces = tuple(
        c["choices"][0]["delta"]["content"]
        for c in chunks
        if c["choices"] and c["choices"][0]["delta"].get("content")
    )
    return Expected(
        text=whole["choices"][0]["message"]["content"],
        finish_reason=whole["choices"][0]["finish_reason"],
        usage={
            "input_tokens": whole["usage"]["prompt_tokens"],
            "output_tokens": whole["usage"]["completion_tokens"],
        },
        pieces=pieces,
        chunks=len(chunks),
    )


# -- fixtures: one proxy of each kind for the module ----------------------------------


def _start(*args: str) -> ProxyProcess:
    return ProxyProcess(proxy_argv("h11", list(args), pick_port=True), env=proxy_env()).wait_ready()


@pytest.fixture(scope="module")
def builtin_proxy() -> Iterator[ProxyProcess]:
    """The proxy with no configuration: the built-in mock provider answers."""
    proxy = _start()
    yield proxy
    proxy.close()


@pytest.fixture(scope="module")
def upstream() -> Iterator[MockUpstream]:
    with MockUpstream() as mock:
        yield mock
    if mock.errors:
        pytest.fail(f"the mock upstream raised: {mock.errors!r}", pytrace=False)


@pytest.fixture(scope="module")
def upstream_proxies(upstream: MockUpstream) -> Iterator[dict[str, ProxyProcess]]:
    """A proxy in front of the mock upstream for each API: {"openai": ..., "anthropic": ...}."""
    proxies: dict[str, ProxyProcess] = {}
    try:
        for api in ("openai", "anthropic"):
            proxies[api] = _start("--base-url", upstream.base_url, "--type", api)
        yield proxies
    finally:
        for proxy in proxies.values():
            proxy.close()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _assert_ok(result: ClientResult) -> None:
    assert result.error is None, result
    assert result.status == 200, result


# -- the registry ---------------------------------------------------------------------


def test_every_client_has_an_api_and_helpers_stream_only() -> None:
    assert len(set(CLIENTS)) == len(CLIENTS)
    assert set(clients_for("openai")) | set(clients_for("anthropic")) == set(CLIENTS)
    assert not set(clients_for(stream=False)) & STREAM_ONLY
    assert {api_of(c) for c in clients_for("anthropic")} == {"anthropic"}
    with pytest.raises(ValueError, match="unknown client"):
        api_of("lynx")
    with pytest.raises(ValueError, match="streams only"):
        run_client("openai-python-helper", base_url="http://127.0.0.1:1", model="m", stream=False)


# -- successful answers ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("client", "stream", "include_usage"),
    [p for p in CLIENT_MODES if api_of(str(p.values[0])) == "openai"],
)
def test_openai_clients_assemble_the_builtin_mock_answer(
    builtin_proxy: ProxyProcess, client: str, stream: bool, include_usage: bool
) -> None:
    expected = builtin_expectation(PROMPT, 64)
    result = run_client(
        client,
        base_url=builtin_proxy.base_url,
        model="mock-gpt",
        stream=stream,
        include_usage=include_usage,
        prompt=PROMPT,
    )
    _assert_ok(result)
    assert result.text == expected.text
    assert result.text.endswith(f"You said: {PROMPT}")
    assert result.finish_reason == expected.finish_reason == "stop"
    assert result.model == "mock-gpt"
    # The mock's id embeds the exchange id, which the proxy also sends as a header:
    # the driver saw this response's headers.
    assert result.id == f"chatcmpl-mock-{result.headers['x-sansproxy-id']}"
    if stream:
        assert result.headers["content-type"].startswith("text/event-stream")
        assert result.pieces == expected.pieces
        assert result.events == expected.chunks + include_usage
        assert result.usage == (expected.usage if include_usage else None)
    else:
        assert result.headers["content-type"].startswith("application/json")
        assert (result.pieces, result.events) == ((), 0)
        assert result.usage == expected.usage


@pytest.mark.parametrize(
    ("client", "stream"),
    [
        pytest.param(client, stream, id=f"{client}-{'stream' if stream else 'json'}")
        for client in clients_for("openai")
        for stream in (False, True)
        if stream or client not in STREAM_ONLY
    ],
)
def test_openai_clients_report_a_length_finish(
    builtin_proxy: ProxyProcess, client: str, stream: bool
) -> None:
    # The python helper's get_final_completion() raises on "length"; the driver
    # still reports the completion it had accumulated.
    expected = builtin_expectation(PROMPT, 3)
    result = run_client(
        client,
        base_url=builtin_proxy.base_url,
        model="mock-gpt",
        stream=stream,
        include_usage=True,
        prompt=PROMPT,
        max_tokens=3,
    )
    _assert_ok(result)
    assert (result.text, result.finish_reason) == (expected.text, "length")
    assert result.text == "This is the"
    assert (
        result.usage
        == expected.usage
        == {"input_tokens": expected.usage["input_tokens"], "output_tokens": 3}
    )


@pytest.mark.parametrize(
    ("client", "stream", "include_usage"),
    [p for p in CLIENT_MODES if api_of(str(p.values[0])) == "anthropic"],
)
def test_anthropic_clients_assemble_the_mock_upstream_answer(
    upstream_proxies: dict[str, ProxyProcess], client: str, stream: bool, include_usage: bool
) -> None:
    result = run_client(
        client,
        base_url=upstream_proxies["anthropic"].base_url,
        model="claude-mock",
        stream=stream,
        include_usage=include_usage,
    )
    _assert_ok(result)
    assert result.text == DEFAULT_TEXT
    assert result.finish_reason == "end_turn"
    assert result.usage == {"input_tokens": PROMPT_TOKENS, "output_tokens": COMPLETION_TOKENS}
    assert result.model == "claude-mock"
    assert result.id is not None
    assert result.id.startswith("msg_mock_")
    assert "x-sansproxy-id" in result.headers
    if stream:
        assert result.pieces == DEFAULT_PIECES
        assert result.events == ANTHROPIC_EVENTS
    else:
        assert (result.pieces, result.events) == ((), 0)


@pytest.mark.parametrize("client", clients_for("openai", stream=True))
def test_openai_clients_assemble_the_mock_upstream_stream(
    upstream_proxies: dict[str, ProxyProcess], client: str
) -> None:
    result = run_client(
        client,
        base_url=upstream_proxies["openai"].base_url,
        model="gpt-mock",
        stream=True,
        include_usage=True,
    )
    _assert_ok(result)
    assert (result.text, result.pieces) == (DEFAULT_TEXT, DEFAULT_PIECES)
    assert result.finish_reason == "stop"
    assert result.usage == {"input_tokens": PROMPT_TOKENS, "output_tokens": COMPLETION_TOKENS}
    # role chunk, one a piece, the finish chunk, the usage chunk
    assert result.events == len(DEFAULT_PIECES) + 3
    assert result.model == "gpt-mock"


# -- failures -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("client", "stream", "include_usage"), [p for p in CLIENT_MODES if not p.values[2]]
)
def test_clients_parse_an_error_status(
    upstream_proxies: dict[str, ProxyProcess], client: str, stream: bool, include_usage: bool
) -> None:
    api = api_of(client)
    result = run_client(
        client,
        base_url=upstream_proxies[api].base_url,
        model="scenario:status-429",
        stream=stream,
    )
    assert result.status == 429, result
    assert result.error == (
        {"type": "rate_limit_exceeded", "code": "429", "message": "mock upstream error 429"}
        if api == "openai"
        else {"type": "rate_limit_error", "code": None, "message": "mock upstream error 429"}
    )
    assert result.headers["retry-after"] == "7"
    assert (result.text, result.finish_reason, result.usage, result.events) == ("", None, None, 0)


@pytest.mark.parametrize("client", clients_for("openai", stream=True))
def test_openai_clients_keep_the_text_before_an_error_event(
    upstream_proxies: dict[str, ProxyProcess], client: str
) -> None:
    # The upstream resets after two chunks (role, "Hello"); the proxy has sent its
    # head, so it ends the stream with an error event, which every client raises.
    result = run_client(
        client,
        base_url=upstream_proxies["openai"].base_url,
        model="scenario:reset-mid-body",
        stream=True,
    )
    assert result.status == 200, result
    assert (result.text, result.events, result.finish_reason) == (DEFAULT_PIECES[0], 2, None)
    assert result.error is not None
    assert result.error["type"] == "upstream_error", result.error
    assert isinstance(result.error["message"], str)
    assert result.error["message"]


@pytest.mark.parametrize("client", CLIENTS)
def test_clients_report_a_refused_connection(client: str) -> None:
    result = run_client(
        client, base_url=f"http://127.0.0.1:{_closed_port()}", model="m", stream=True, timeout=5
    )
    assert result.status == 0, result
    assert result.error is not None
    assert result.error["type"] == "client.connection", result.error
    assert (result.text, result.events, result.headers) == ("", 0, {})


@pytest.mark.parametrize("client", CLIENTS)
def test_clients_time_out_on_a_stalled_stream(
    upstream_proxies: dict[str, ProxyProcess], client: str
) -> None:
    # Two events, then silence: every client gives up after `timeout`, keeping them.
    result = run_client(
        client,
        base_url=upstream_proxies[api_of(client)].base_url,
        model="scenario:stall-mid-stream",
        stream=True,
        timeout=0.75,
    )
    assert result.status == 200, result
    assert result.error is not None
    assert result.error["type"] == "client.timeout", result.error
    assert result.events == 2
    assert result.text == (DEFAULT_PIECES[0] if api_of(client) == "openai" else "")


# -- the SSE parser curl's output goes through -----------------------------------------


def test_parse_sse_follows_the_event_stream_rules() -> None:
    body = (
        "\ufeff: a comment\r\n"
        'event: one\r\ndata: {"a":\r\ndata:  1}\r\nid: 7\r\nretry: 10\r\n\r\n'
        "data:no space\rfoo: bar\r\r"
        "event: no data\n\n"
        "data\n\n"
        "data\ndata\ndata\n\n"
        "data: [DONE]\n\n"
        "data: unterminated\n"
    )
    assert parse_sse(body) == [
        ("one", '{"a":\n 1}'),
        (None, "no space"),
        (None, "\n\n"),
        (None, "[DONE]"),
    ]
