"""What real peers do that our own mock never did: playbooks, no sockets.

- nginx, Node and Go spell header names with capitals (``Content-Type``): for
  any casing and order of the upstream's and the client's header names, the
  exchange emits the same commands.
- The openai SDK hangs up as soon as it has read ``data: [DONE]``: usage the
  stream carried counts, and the exchange is complete.
- A client that leaves mid-stream is charged what was consumed (an estimate,
  said so in the trace).
- The retry policy alone decides which statuses are retried.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import zlib
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from core import (
    AcquireQuota,
    ClientGone,
    Command,
    Log,
    Proxy,
    ProxyConfig,
    QuotaAnswered,
    SendBody,
    SendUpstreamRequest,
    SettleQuota,
    StartResponse,
    UpstreamData,
    UpstreamEnded,
    UpstreamFailed,
    UpstreamResponse,
    WriteTrace,
)
from core.gateway._usage import delta_tokens
from core.policies import Decision

from .playbook import Playbook

OAI = {"type": "openai", "base_url": "http://oai.test", "api_key": "sk-oai"}
ANT = {"type": "anthropic", "base_url": "http://ant.test", "api_key": "sk-ant"}
PRICE = {"input": 1.0, "output": 2.0}  # USD per million tokens
USAGE = {"prompt_tokens": 9, "completion_tokens": 5, "total_tokens": 14}


def gateway(*, retry: dict[str, Any] | None = None, budget: float | None = None) -> Proxy:
    middleware: list[Any] = [{"trace": {"dir": "traces"}}]
    if budget is not None:
        key = {
            "name": "team",
            "key_sha256": hashlib.sha256(b"sk-team").hexdigest(),
            "budget": {"usd": budget, "period": "total"},
        }
        middleware += [{"auth": {"keys": [key]}}, "rate_limit"]
    if retry is not None:
        middleware.append({"retry": retry})
    tree = {
        "providers": {"oai": OAI, "claude": ANT},
        "models": {
            "fast": [{"provider": "oai", "model": "gpt-4o-mini", "price": PRICE}],
            "smart": [{"provider": "claude", "model": "claude-sonnet-4-5", "price": PRICE}],
        },
        "middleware": middleware,
    }
    return Proxy(ProxyConfig.model_validate(tree))


def chat(model: str = "fast", **extra: Any) -> bytes:
    body = {"model": model, "messages": [{"role": "user", "content": "Hi"}], **extra}
    return json.dumps(body).encode()


def messages(model: str = "smart", **extra: Any) -> bytes:
    body = {
        "model": model,
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "Hi"}],
        **extra,
    }
    return json.dumps(body).encode()


def chunk(content: str | None = None, **fields: Any) -> bytes:
    delta = {} if content is None else {"content": content}
    data = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
        **fields,
    }
    return b"data: " + json.dumps(data).encode() + b"\n\n"


PIECES = ("Hello", " from", " a", " real", " server.")
OPENAI_STREAM = [
    *(chunk(piece, usage=None) for piece in PIECES),
    b"data: " + json.dumps({"id": "chatcmpl-1", "choices": [], "usage": USAGE}).encode() + b"\n\n",
    b"data: [DONE]\n\n",
]
OPENAI_JSON = json.dumps(
    {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "".join(PIECES)},
                "finish_reason": "stop",
            }
        ],
        "usage": USAGE,
    }
).encode()


def anthropic_event(name: str, **data: Any) -> bytes:
    return f"event: {name}\ndata: {json.dumps({'type': name, **data})}\n\n".encode()


ANTHROPIC_STREAM = [
    anthropic_event(
        "message_start",
        message={
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "content": [],
            "model": "claude-sonnet-4-5",
            "usage": {"input_tokens": 9, "output_tokens": 1},
        },
    ),
    anthropic_event("content_block_start", index=0, content_block={"type": "text", "text": ""}),
    *(
        anthropic_event("content_block_delta", index=0, delta={"type": "text_delta", "text": p})
        for p in PIECES
    ),
    anthropic_event("content_block_stop", index=0),
    anthropic_event("message_delta", delta={"stop_reason": "end_turn"}, usage={"output_tokens": 5}),
    anthropic_event("message_stop"),
]

# What nginx, Node and aiohttp send for a stream, with their capitals.
STREAM_HEAD = [
    (b"Server", b"nginx/1.22.1"),
    (b"Content-Type", b"text/event-stream; charset=utf-8"),
    (b"Transfer-Encoding", b"chunked"),
    (b"Connection", b"keep-alive"),
    (b"Cache-Control", b"no-cache"),
    (b"X-Request-Id", b"req_123"),
    (b"Set-Cookie", b"session=secret"),
]
JSON_HEAD = [
    (b"Server", b"nginx/1.22.1"),
    (b"Content-Type", b"application/json"),
    (b"Content-Length", str(len(OPENAI_JSON)).encode()),
    (b"Connection", b"keep-alive"),
    (b"X-Request-Id", b"req_123"),
]


@st.composite
def respelled(draw: st.DrawFn, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The same headers, each name in any casing, in any order."""
    out = []
    for name, value in headers:
        flips = draw(st.lists(st.booleans(), min_size=len(name), max_size=len(name)))
        spelled = bytes(
            c ^ 0x20 if flip and chr(c).isalpha() else c
            for c, flip in zip(name, flips, strict=True)
        )
        out.append((spelled, value))
    return draw(st.permutations(out))


def canonical(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    return [(name.lower(), value) for name, value in headers]


def ordered(commands: list[Command]) -> list[Any]:
    """Commands with header lists sorted: the order the peer sent them in must not matter."""
    out: list[Any] = []
    for cmd in commands:
        if isinstance(cmd, StartResponse):
            out.append(("start", cmd.status, sorted(cmd.headers)))
        elif isinstance(cmd, SendUpstreamRequest):
            out.append(("upstream", cmd.method, cmd.target, sorted(cmd.headers), cmd.body))
        elif isinstance(cmd, WriteTrace):
            record = dict(cmd.record)
            for side in ("request", "response"):
                part = record.get(side)
                if isinstance(part, dict):
                    record[side] = {**part, "headers": sorted(map(tuple, part["headers"]))}
            out.append(("trace", record))
        else:
            out.append(cmd)
    return out


def exchange(
    proxy: Proxy,
    body: bytes,
    *,
    target: bytes = b"/v1/chat/completions",
    request_headers: list[tuple[bytes, bytes]] | None = None,
    status: int = 200,
    head: list[tuple[bytes, bytes]],
    chunks: list[bytes],
    end: bool = True,
) -> tuple[Playbook, list[Command]]:
    pb = Playbook(proxy)
    headers = request_headers or [
        (b"Content-Type", b"application/json"),
        (b"Content-Length", str(len(body)).encode()),
    ]
    out = pb.request(target=target, body=body, headers=headers)
    out += pb.feed(UpstreamResponse(attempt=1, status=status, headers=head), now=0.1)
    for i, data in enumerate(chunks):
        out += pb.feed(UpstreamData(attempt=1, data=data), now=0.2 + i / 100)
    if end:
        out += pb.feed(UpstreamEnded(attempt=1), now=0.5)
    return pb, out


def trace(commands: list[Command]) -> dict[str, Any]:
    (cmd,) = [c for c in commands if isinstance(c, WriteTrace)]
    return dict(cmd.record)


def client_bytes(commands: list[Command]) -> bytes:
    return b"".join(c.data for c in commands if isinstance(c, SendBody))


# -- header names: any casing, any order -----------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    head=respelled(STREAM_HEAD),
    request=respelled(
        [(b"Content-Type", b"application/json"), (b"X-Request-Id", b"abc"), (b"Accept", b"*/*")]
    ),
    split=st.integers(1, 64),
)
def test_stream_commands_do_not_depend_on_header_name_casing_or_order(
    head: list[tuple[bytes, bytes]], request: list[tuple[bytes, bytes]], split: int
) -> None:
    body = chat(stream=True)
    data = b"".join(OPENAI_STREAM)
    chunks = [data[i : i + split] for i in range(0, len(data), split)]
    reference = exchange(
        gateway(),
        body,
        request_headers=canonical(
            [(b"Content-Type", b"application/json"), (b"X-Request-Id", b"abc"), (b"Accept", b"*/*")]
        ),
        head=canonical(STREAM_HEAD),
        chunks=chunks,
    )[1]
    pb, out = exchange(gateway(), body, request_headers=request, head=head, chunks=chunks)
    assert ordered(out) == ordered(reference)
    # ...and those commands are the right ones: a reframed stream with its usage.
    assert pb.ex.is_stream
    assert client_bytes(out).endswith(b"data: [DONE]\n\n")
    record = trace(out)
    assert record["usage"]["output_tokens"] == 5
    assert record["usage"]["estimated"] is False
    assert record["response"]["text"] == "".join(PIECES)
    assert record["cost_usd"] == (9 * 1.0 + 5 * 2.0) / 1e6
    assert ["set-cookie", "[redacted]"] in record["response"]["headers"]


@settings(max_examples=40, deadline=None)
@given(head=respelled(JSON_HEAD))
def test_json_commands_do_not_depend_on_header_name_casing_or_order(
    head: list[tuple[bytes, bytes]],
) -> None:
    reference = exchange(gateway(), chat(), head=canonical(JSON_HEAD), chunks=[OPENAI_JSON])[1]
    pb, out = exchange(gateway(), chat(), head=head, chunks=[OPENAI_JSON])
    assert ordered(out) == ordered(reference)
    assert trace(out)["usage"]["input_tokens"] == 9


@settings(max_examples=30, deadline=None)
@given(head=respelled([(b"Content-Type", b"text/event-stream"), (b"Request-Id", b"req_9")]))
def test_a_translated_stream_does_not_depend_on_header_name_casing(
    head: list[tuple[bytes, bytes]],
) -> None:
    # An OpenAI client, an Anthropic upstream (the translator reads the head too).
    reference = exchange(
        gateway(),
        chat("smart", stream=True),
        head=canonical(head),
        chunks=ANTHROPIC_STREAM,
    )[1]
    _, out = exchange(gateway(), chat("smart", stream=True), head=head, chunks=ANTHROPIC_STREAM)
    assert ordered(out) == ordered(reference)
    assert client_bytes(out).endswith(b"data: [DONE]\n\n")
    assert b"Hello" in client_bytes(out)


@settings(max_examples=30, deadline=None)
@given(head=respelled([(b"Content-Type", b"application/json"), (b"Retry-After", b"2")]))
def test_retry_after_is_honoured_in_any_casing(head: list[tuple[bytes, bytes]]) -> None:
    proxy = gateway(retry={"attempts": 2, "backoff": 0.1})
    pb = Playbook(proxy)
    pb.request(body=chat())
    pb.feed(UpstreamResponse(attempt=1, status=429, headers=head), now=0.1)
    assert pb.ex.attempts[0].retry_after == 2.0
    assert pb.ex.get_timer() == 2.1  # waits the upstream's 2 s, not the 0.1 s backoff


def test_an_upper_case_event_stream_type_is_still_a_stream() -> None:
    head = [(b"CONTENT-TYPE", b"TEXT/EVENT-STREAM; CHARSET=UTF-8")]
    # One byte per read, CRLF line ends, no blank line after the last event.
    data = b"".join(OPENAI_STREAM).replace(b"\n", b"\r\n")[:-2]
    body = chat(stream=True, stream_options={"include_usage": True})
    _, out = exchange(gateway(), body, head=head, chunks=[bytes([b]) for b in data])
    sent = [c.data for c in out if isinstance(c, SendBody)]
    assert all(piece.endswith(b"\n\n") and b"\r" not in piece for piece in sent)
    assert b"".join(sent) == b"".join(OPENAI_STREAM)


def test_an_oversized_event_from_a_capitalised_stream_is_an_error_event() -> None:
    proxy = Proxy(
        ProxyConfig.model_validate(
            {
                "providers": {"oai": OAI},
                "models": {"fast": [{"provider": "oai", "model": "m"}]},
                "limits": {"max_sse_event_size": 1024},
            }
        )
    )
    huge = chunk("x" * 2000)
    _, out = exchange(
        proxy, chat(stream=True), head=STREAM_HEAD, chunks=[OPENAI_STREAM[0], huge], end=False
    )
    body = client_bytes(out)
    assert body.startswith(OPENAI_STREAM[0])
    assert b"event: error" in body and b"x" * 1500 not in body
    assert any(isinstance(c, SendBody) for c in out)
    assert out[-1].__class__.__name__ in ("EndResponse", "WriteTrace")


def test_a_reset_mid_stream_is_an_error_event_and_a_clean_end() -> None:
    pb, out = exchange(
        gateway(), chat(stream=True), head=STREAM_HEAD, chunks=OPENAI_STREAM[:2], end=False
    )
    out += pb.feed(UpstreamFailed(attempt=1, kind="reset", message="peer reset"), now=0.4)
    body = client_bytes(out)
    assert body.startswith(OPENAI_STREAM[0] + OPENAI_STREAM[1])
    assert body.endswith(b"\n\n") and b"event: error" in body
    ends = [c for c in out if c.__class__.__name__ == "EndResponse"]
    assert [getattr(e, "complete", None) for e in ends] == [True]


# -- a client that hangs up right after the last event --------------------------


def test_usage_counts_when_the_client_leaves_right_after_done() -> None:
    # The openai SDK closes at [DONE]; the upstream's end of body comes later.
    pb, out = exchange(
        gateway(), chat(stream=True), head=STREAM_HEAD, chunks=OPENAI_STREAM, end=False
    )
    out += pb.feed(ClientGone(), now=0.4)
    assert pb.ex.outcome == "completed"
    record = trace(out)
    assert record["outcome"] == "completed"
    assert record["usage"] == {
        "input_tokens": 9,
        "output_tokens": 5,
        "cached_input_tokens": 0,
        "cache_creation_tokens": 0,
        "estimated": False,
    }
    assert record["cost_usd"] == (9 * 1.0 + 5 * 2.0) / 1e6
    assert not any(getattr(c, "message", "") == "client went away" for c in out)


def test_a_client_dropped_for_not_reading_never_had_the_last_event() -> None:
    # The driver was handed [DONE] but could not write it: the client stopped reading.
    pb, out = exchange(
        gateway(), chat(stream=True), head=STREAM_HEAD, chunks=OPENAI_STREAM, end=False
    )
    out += pb.feed(ClientGone(reason="it stopped reading"), now=0.4)
    assert pb.ex.outcome == "client_gone"
    assert trace(out)["outcome"] == "client_gone"
    assert trace(out)["usage"]["output_tokens"] == 5  # what was used still counts
    (said,) = [c for c in out if isinstance(c, Log) and c.level == "warning"]
    assert said.message == "dropped the client: it stopped reading"


def left_after(pieces: list[bytes]) -> dict[str, Any]:
    """The record of a JSON answer relayed as ``pieces``, its client gone before its end."""
    pb, out = exchange(gateway(), chat(), head=JSON_HEAD, chunks=pieces, end=False)
    return trace(out + pb.feed(ClientGone(), now=0.4))


@given(cut=st.integers(min_value=1, max_value=len(OPENAI_JSON) - 1))
def test_a_client_that_leaves_with_the_whole_json_answer_was_served_and_counts(cut: int) -> None:
    # Every byte the Content-Length promised was relayed (in two reads, split
    # anywhere); the client took them and hung up before the driver handed over
    # the upstream's end (a race a loaded server loses now and then).
    record = left_after([OPENAI_JSON[:cut], OPENAI_JSON[cut:]])
    assert record["outcome"] == "completed"
    assert record["usage"]["input_tokens"] == 9
    assert record["usage"]["output_tokens"] == 5
    assert record["usage"]["estimated"] is False
    assert record["cost_usd"] == (9 * 1.0 + 5 * 2.0) / 1e6


@given(cut=st.integers(min_value=0, max_value=len(OPENAI_JSON) - 1))
def test_a_client_that_leaves_before_the_whole_json_answer_is_gone(cut: int) -> None:
    record = left_after([OPENAI_JSON[:cut]] if cut else [])
    assert record["outcome"] == "client_gone"
    assert record["usage"] is None  # a JSON answer counts only once read whole


def test_usage_counts_when_an_anthropic_client_leaves_right_after_message_stop() -> None:
    pb, out = exchange(
        gateway(),
        messages(stream=True),
        target=b"/v1/messages",
        head=[(b"Content-Type", b"text/event-stream")],
        chunks=ANTHROPIC_STREAM,
        end=False,
    )
    out += pb.feed(ClientGone(), now=0.4)
    record = trace(out)
    assert record["outcome"] == "completed"
    assert record["usage"]["input_tokens"] == 9
    assert record["usage"]["output_tokens"] == 5
    assert record["usage"]["estimated"] is False


def admitted_stream(proxy: Proxy, body: bytes, chunks: list[bytes]) -> Playbook:
    """A keyed request the store admits, then the upstream's stream head and ``chunks``."""
    pb = Playbook(proxy)
    out = pb.request(body=body, headers=[(b"Authorization", b"Bearer sk-team")])
    (query,) = [c for c in out if isinstance(c, AcquireQuota)]
    allowed = Decision(
        allowed=True, limit=10**6, remaining=10**6, reset_after=60.0, retry_after=0.0
    )
    pb.feed(
        QuotaAnswered(
            query_id=query.query_id,
            admitted=True,
            decisions=tuple(allowed for _ in query.charges),
            spent=(0.0,),
        ),
        now=0.05,
    )
    pb.feed(UpstreamResponse(attempt=1, status=200, headers=STREAM_HEAD), now=0.1)
    for data in chunks:
        pb.feed(UpstreamData(attempt=1, data=data), now=0.2)
    return pb


def spent(commands: list[Command]) -> list[float]:
    (settle,) = [c for c in commands if isinstance(c, SettleQuota)]
    return [s.usd for s in settle.spends]


def test_the_budget_is_charged_when_the_client_leaves_right_after_done() -> None:
    pb = admitted_stream(gateway(budget=1.0), chat(stream=True), OPENAI_STREAM)
    assert spent(pb.feed(ClientGone(), now=0.3)) == [(9 * 1.0 + 5 * 2.0) / 1e6]


# -- a client that leaves mid-stream --------------------------------------------


def test_a_client_leaving_mid_stream_is_charged_an_estimate() -> None:
    body = chat(stream=True)
    pb, out = exchange(gateway(), body, head=STREAM_HEAD, chunks=OPENAI_STREAM[:3], end=False)
    out += pb.feed(ClientGone(), now=0.4)
    record = trace(out)
    assert record["outcome"] == "client_gone"
    # The prompt's bytes / 4 (as charged up front), and one token for each of
    # the three short deltas relayed.
    prompt = -(-len(body) // 4)
    assert record["usage"] == {
        "input_tokens": prompt,
        "output_tokens": 3,
        "cached_input_tokens": 0,
        "cache_creation_tokens": 0,
        "estimated": True,
    }
    assert record["cost_usd"] == (prompt * 1.0 + 3 * 2.0) / 1e6


def test_an_anthropic_stream_cut_short_keeps_the_input_it_reported() -> None:
    pb, out = exchange(
        gateway(),
        messages(stream=True),
        target=b"/v1/messages",
        head=[(b"Content-Type", b"text/event-stream")],
        chunks=ANTHROPIC_STREAM[:5],  # message_start, block start, three deltas
        end=False,
    )
    out += pb.feed(ClientGone(), now=0.4)
    usage = trace(out)["usage"]
    assert (usage["input_tokens"], usage["output_tokens"], usage["estimated"]) == (9, 3, True)


def test_a_stream_without_usage_is_estimated_from_what_was_relayed() -> None:
    # A pass-through OpenAI-compatible server that reports no usage at all.
    body = chat(stream=True)
    stream = [chunk("word " * 8), chunk("end"), b"data: [DONE]\n\n"]
    _, out = exchange(gateway(), body, head=STREAM_HEAD, chunks=stream)
    usage = trace(out)["usage"]
    assert usage["estimated"] is True
    assert usage["output_tokens"] == (40 + 2) // 4 + 1


def test_the_budget_is_charged_for_an_abandoned_stream() -> None:
    body = chat(stream=True)
    pb = admitted_stream(gateway(budget=1.0), body, [b"".join(OPENAI_STREAM[:4])])
    prompt = -(-len(body) // 4)
    assert spent(pb.feed(ClientGone(), now=0.3)) == [(prompt * 1.0 + 4 * 2.0) / 1e6]


# -- the retry policy decides ----------------------------------------------------


def test_a_status_the_policy_lists_is_retried_whatever_it_is() -> None:
    proxy = gateway(retry={"attempts": 2, "backoff": 0.1, "on_status": [409]})
    pb = Playbook(proxy)
    pb.request(body=chat())
    out = pb.feed(UpstreamResponse(attempt=1, status=409, headers=JSON_HEAD[1:2]), now=0.1)
    assert not any(isinstance(c, StartResponse) for c in out), "a 409 listed is not relayed"
    out = pb.fire(1.0)
    assert [c.attempt for c in out if isinstance(c, SendUpstreamRequest)] == [2]


def test_a_status_the_policy_does_not_list_is_relayed_even_a_500() -> None:
    proxy = gateway(retry={"attempts": 2, "on_status": [409]})
    pb = Playbook(proxy)
    pb.request(body=chat())
    out = pb.feed(UpstreamResponse(attempt=1, status=500, headers=JSON_HEAD[1:2]), now=0.1)
    assert [c.status for c in out if isinstance(c, StartResponse)] == [500]


# -- an upstream that compresses though asked for identity -----------------------


@settings(max_examples=30, deadline=None)
@given(split=st.integers(1, 200), coding=st.sampled_from([b"gzip", b"GZIP", b"x-gzip", b"deflate"]))
def test_a_compressed_stream_is_decoded_reframed_and_read(split: int, coding: bytes) -> None:
    plain = b"".join(OPENAI_STREAM)
    packed = zlib.compress(plain) if coding == b"deflate" else gzip.compress(plain)
    head = [*STREAM_HEAD, (b"Content-Encoding", coding)]
    chunks = [packed[i : i + split] for i in range(0, len(packed), split)]
    body = chat(stream=True, stream_options={"include_usage": True})
    pb, out = exchange(gateway(), body, head=head, chunks=chunks)
    (start,) = [c for c in out if isinstance(c, StartResponse)]
    assert not any(name in (b"content-encoding", b"content-length") for name, _ in start.headers)
    assert client_bytes(out) == plain
    assert trace(out)["usage"]["output_tokens"] == 5


def test_a_compressed_json_answer_is_decoded_and_its_usage_read() -> None:
    head = [(b"Content-Type", b"application/json"), (b"Content-Encoding", b"gzip")]
    _, out = exchange(gateway(), chat(), head=head, chunks=[gzip.compress(OPENAI_JSON)])
    assert client_bytes(out) == OPENAI_JSON
    assert trace(out)["usage"]["input_tokens"] == 9


def test_a_compressed_answer_is_translated() -> None:
    answer = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5",
        "content": [{"type": "text", "text": "Hi there"}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 9, "output_tokens": 3},
    }
    head = [(b"Content-Type", b"application/json"), (b"Content-Encoding", b"gzip")]
    packed = gzip.compress(json.dumps(answer).encode())
    _, out = exchange(gateway(), chat("smart"), head=head, chunks=[packed[:10], packed[10:]])
    reply = json.loads(client_bytes(out))
    assert reply["choices"][0]["message"]["content"] == "Hi there"


def test_a_corrupt_compressed_stream_is_an_error_event() -> None:
    head = [*STREAM_HEAD, (b"Content-Encoding", b"gzip")]
    packed = gzip.compress(b"".join(OPENAI_STREAM))
    corrupt = packed[:40] + b"\xff" * 40 + packed[80:]
    pb, out = exchange(gateway(), chat(stream=True), head=head, chunks=[corrupt], end=False)
    assert b"event: error" in client_bytes(out)
    assert pb.ex.error is not None and pb.ex.error.code == "upstream_protocol_error"


def test_a_decompression_bomb_is_bounded_by_the_event_size_limit() -> None:
    proxy = Proxy(
        ProxyConfig.model_validate(
            {
                "providers": {"oai": OAI},
                "models": {"fast": [{"provider": "oai", "model": "m"}]},
                "limits": {"max_sse_event_size": 1 << 16},
            }
        )
    )
    bomb = gzip.compress(b"data: " + b"x" * (64 << 20))  # 64 MiB in ~64 KiB
    head = [*STREAM_HEAD, (b"Content-Encoding", b"gzip")]
    pb, out = exchange(proxy, chat(stream=True), head=head, chunks=[bomb], end=False)
    assert b"event: error" in client_bytes(out)
    assert pb.ex.finished
    assert sum(len(c.data) for c in out if isinstance(c, SendBody)) < 4096


def test_an_encoding_the_proxy_cannot_decode_is_relayed_untouched() -> None:
    head = [(b"Content-Type", b"text/event-stream"), (b"Content-Encoding", b"br")]
    _, out = exchange(gateway(), chat(stream=True), head=head, chunks=[b"\x0b\x02\x80"])
    (start,) = [c for c in out if isinstance(c, StartResponse)]
    assert (b"content-encoding", b"br") in start.headers
    assert client_bytes(out) == b"\x0b\x02\x80"


def test_a_huge_delta_is_estimated_from_its_size_without_scanning_it() -> None:
    text = b"x" * (1 << 20)
    block = b'data: {"choices":[{"delta":{"content":"' + text + b'"}}]}\n\n'
    assert delta_tokens(block) == len(block) // 4
    small = b'data: {"choices":[{"delta":{"content":"' + b"x" * 400 + b'"}}]}\n\n'
    assert delta_tokens(small) == 100
