"""Tests of the SSE decoder, parser and encoder (core._sse). No sockets."""

from __future__ import annotations

import dataclasses
import itertools
import json

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from core._errors import LocalProtocolError, RemoteProtocolError
from core._render import openai_error_event
from core._sse import SSEDecoder, SSEEvent, parse_block

BOM = b"\xef\xbb\xbf"


# --- helpers -----------------------------------------------------------------


def decode(chunks: list[bytes], *, max_event_size: int = 1 << 20) -> list[bytes]:
    """Feed every chunk, then close; return all the blocks."""
    decoder = SSEDecoder(max_event_size=max_event_size)
    out: list[bytes] = []
    for chunk in chunks:
        out += decoder.feed(chunk)
    out += decoder.close()
    return out


def decode_until_error(
    chunks: list[bytes], *, max_event_size: int
) -> tuple[list[bytes], RemoteProtocolError | None]:
    """Like decode(), but stop at a RemoteProtocolError and return it too."""
    decoder = SSEDecoder(max_event_size=max_event_size)
    out: list[bytes] = []
    try:
        for chunk in chunks:
            out += decoder.feed(chunk)
        out += decoder.close()
    except RemoteProtocolError as exc:
        # The decoder stays broken.
        with pytest.raises(RemoteProtocolError):
            decoder.feed(b"data: x\n\n")
        with pytest.raises(RemoteProtocolError):
            decoder.close()
        return out, exc
    return out, None


def split_at(stream: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted(cuts), len(stream)]
    return [stream[a:b] for a, b in itertools.pairwise(bounds)]


def bytewise(stream: bytes) -> list[bytes]:
    return [stream[i : i + 1] for i in range(len(stream))]


def reference(stream: bytes) -> list[bytes]:
    """An obviously correct, line-by-line framer to check the decoder against."""
    if stream.startswith(BOM):
        stream = stream[3:]
    lines = stream.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
    blocks: list[bytes] = []
    current: list[bytes] = []
    for i, line in enumerate(lines):
        if line:
            current.append(line)
        if current and (not line or i == len(lines) - 1):
            blocks.append(b"".join(x + b"\n" for x in current) + b"\n")
            current = []
    return blocks


# --- strategies --------------------------------------------------------------

line_endings = st.sampled_from(["\n", "\r", "\r\n"])
field_text = st.text(st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=12)
sse_lines = st.one_of(
    st.builds(lambda v: "data: " + v, field_text),
    st.builds(lambda v: "data:" + v, field_text),
    st.just("data"),
    st.builds(lambda v: "event: " + v, field_text),
    st.builds(lambda v: "id: " + v, field_text),
    st.builds(lambda v: "retry: " + v, st.sampled_from(["0", "3000", "x1", "", " 5"])),
    st.builds(lambda v: ":" + v, field_text),
    st.just(""),
    field_text,
)


@st.composite
def sse_streams(draw: st.DrawFn) -> bytes:
    """SSE-like text with mixed line endings, blank-line runs, maybe a BOM."""
    parts = []
    for line in draw(st.lists(sse_lines, max_size=30)):
        parts.append(line + draw(line_endings))
    if draw(st.booleans()):  # last line unterminated
        parts.append(draw(sse_lines))
    prefix = BOM if draw(st.booleans()) else b""
    return prefix + "".join(parts).encode()


binary_streams = st.one_of(
    st.binary(max_size=200),
    st.lists(
        st.one_of(
            st.sampled_from([b"\n", b"\r", b"\r\n", b"\n\n", b":", b" ", b"data", BOM, b"x"]),
            st.binary(max_size=4),
        ),
        max_size=60,
    ).map(b"".join),
)

any_streams = st.one_of(sse_streams(), binary_streams)


@st.composite
def splits(draw: st.DrawFn, stream: bytes) -> list[bytes]:
    cuts = draw(st.lists(st.integers(0, len(stream)), max_size=len(stream) + 1))
    return split_at(stream, cuts)


no_newline_text = st.text(st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=10)
events = st.builds(
    SSEEvent,
    data=st.text(st.characters(codec="utf-8", exclude_characters="\r"), max_size=20),
    event=st.none() | no_newline_text,
    id=st.none() | st.text(st.characters(codec="utf-8", exclude_characters="\r\n\0"), max_size=10),
    retry=st.none() | st.integers(0, 10**12),
    comments=st.lists(no_newline_text, max_size=3).map(tuple),
    has_data=st.booleans(),
)


# --- properties --------------------------------------------------------------


@given(st.data(), any_streams)
@example(None, b"data: a\r")
@example(None, b"data: a\r\n\r\n")
@example(None, BOM)
@example(None, b"\xef\xbb")
def test_split_invariance(data: st.DataObject | None, stream: bytes) -> None:
    whole = decode([stream])
    assert whole == reference(stream)
    assert decode(bytewise(stream)) == whole
    if data is not None:
        assert decode(data.draw(splits(stream))) == whole
    # Every block is canonical.
    for block in whole:
        assert block.endswith(b"\n\n")
        assert b"\r" not in block
        assert b"\n\n" not in block[:-1]
        assert not block.startswith(b"\n")


@given(st.data(), any_streams, st.integers(1, 40))
def test_split_invariance_with_limit(data: st.DataObject, stream: bytes, limit: int) -> None:
    full = reference(stream)
    chunks = data.draw(splits(stream))
    for feed in ([stream], bytewise(stream), chunks):
        out, error = decode_until_error(feed, max_event_size=limit)
        too_large = [b for b in full if len(b) - 1 > limit]
        if too_large:
            assert error is not None
            assert error.error_status_hint == 502
            assert error.code == "sse_event_too_large"
            assert out == full[: len(out)]
            assert len(out) <= full.index(too_large[0])
        else:
            assert error is None
            assert out == full


@given(st.data(), binary_streams | sse_streams(), st.integers(1, 64))
def test_arbitrary_bytes_raise_only_remote_protocol_error(
    data: st.DataObject, stream: bytes, limit: int
) -> None:
    decoder = SSEDecoder(max_event_size=limit)
    try:
        for chunk in data.draw(splits(stream)):
            for block in decoder.feed(chunk):
                parse_block(block)
        for block in decoder.close():
            parse_block(block)
    except RemoteProtocolError:
        pass


@given(st.binary(max_size=300))
@example(b"retry: " + b"9" * 5000 + b"\n\n")
@example(b"id: a\x00b\n\n")
def test_parse_block_never_raises(block: bytes) -> None:
    event = parse_block(block)
    # Whatever was parsed can be sent again.
    assert parse_block(event.encode()) == event


@given(st.binary(max_size=60))
@example(b"\xff\xfe")
@example(b"\n:")
def test_single_data_line_fast_path_agrees(value: bytes) -> None:
    block = b"data: " + value + b"\n\n"
    slow = parse_block(b":\n" + block)  # a comment line forces the general path
    # ... and is its first comment (the value may hold more lines, comments too)
    assert parse_block(block) == dataclasses.replace(slow, comments=slow.comments[1:])


@given(st.lists(events, max_size=8), st.data())
def test_round_trip(evs: list[SSEEvent], data: st.DataObject) -> None:
    stream = b"".join(e.encode() for e in evs)
    expected = [e for e in evs if e.encode()]
    blocks = decode(data.draw(splits(stream)))
    assert blocks == [e.encode() for e in expected]  # passthrough: the same bytes
    assert [parse_block(b) for b in blocks] == expected


# --- examples ----------------------------------------------------------------


def test_multi_line_data() -> None:
    blocks = decode([b"data: first\ndata:second\ndata\ndata:  fourth\n\n"])
    assert blocks == [b"data: first\ndata:second\ndata\ndata:  fourth\n\n"]
    event = parse_block(blocks[0])
    assert event.data == "first\nsecond\n\n fourth"
    assert event.has_data


def test_data_empty_versus_absent() -> None:
    assert parse_block(b"data:\n\n") == SSEEvent(data="", has_data=True)
    assert parse_block(b"event: ping\n\n") == SSEEvent(event="ping")
    assert not parse_block(b"event: ping\n\n").has_data
    assert SSEEvent(data="x").has_data  # implied by non-empty data
    assert SSEEvent(data="", has_data=True).encode() == b"data:\n\n"
    assert SSEEvent().encode() == b""


def test_runs_of_blank_lines_produce_nothing() -> None:
    stream = b"\n\ndata: a\n\n\n\nevent: b\ndata: b\n\n\n\n\ndata: c\n\n\n"
    expected = [b"data: a\n\n", b"event: b\ndata: b\n\n", b"data: c\n\n"]
    assert decode([stream]) == expected
    assert decode(bytewise(stream)) == expected
    assert decode([b"\n\n\n", b"\n"]) == []


def test_comment_only_block_is_relayed() -> None:
    stream = b": keep-alive\n\n:\n\ndata: x\n\n"
    blocks = decode([stream])
    assert blocks == [b": keep-alive\n\n", b":\n\n", b"data: x\n\n"]
    assert parse_block(blocks[0]) == SSEEvent(comments=("keep-alive",))
    assert parse_block(blocks[1]) == SSEEvent(comments=("",))


def test_fields() -> None:
    event = parse_block(b"event: a\nevent: b\nid: 7\nretry: 1500\nfoo: bar\nid\n\n")
    assert event == SSEEvent(event="b", id="", retry=1500)
    assert parse_block(b"id: x\x00y\n\n").id is None
    assert parse_block(b"data:x\r\nevent:y\rid:z\n").event == "y"


@pytest.mark.parametrize("value", [b"abc", b"", b"  5", b"5 ", b"-5", b"1.5", "\u0665".encode()])
def test_retry_not_all_ascii_digits_is_ignored(value: bytes) -> None:
    assert parse_block(b"retry:" + value + b"\ndata: x\n\n").retry is None


def test_last_event_without_blank_line_at_eof() -> None:
    assert decode([b"data: a\n\ndata: b"]) == [b"data: a\n\n", b"data: b\n\n"]
    assert decode([b"data: a\n\ndata: b\n"]) == [b"data: a\n\n", b"data: b\n\n"]
    assert decode([b"data: a\r"]) == [b"data: a\n\n"]
    assert decode([b"data: a\n\n"]) == [b"data: a\n\n"]
    assert decode([b"\n\n\n"]) == []
    assert decode([]) == []


def test_bom_dropped_only_at_start() -> None:
    assert decode([BOM + b"data: a\n\n"]) == [b"data: a\n\n"]
    assert decode([b"\xef", b"\xbb", b"\xbf", b"data: a\n\n"]) == [b"data: a\n\n"]
    assert decode([BOM + BOM + b"data: a\n\n"]) == [BOM + b"data: a\n\n"]
    assert decode([b"data: a\n\n" + BOM + b"data: b\n\n"])[1] == BOM + b"data: b\n\n"
    assert decode([b"\xef\xbb", b"data: a\n\n"]) == [b"\xef\xbbdata: a\n\n"]


def test_cr_split_across_chunks_is_one_line_end() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"\n") == []
    assert decoder.feed(b"") == []
    assert decoder.feed(b"\r") == [b"data: a\n\n"]
    assert decoder.feed(b"\ndata: b\r") == []
    assert decoder.feed(b"\r\n") == [b"data: b\n\n"]
    assert decoder.close() == []


def test_openai_done_terminator() -> None:
    chunk = {"id": "c1", "object": "chat.completion.chunk", "choices": [{"delta": {}}]}
    stream = f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n".encode()
    blocks = decode(bytewise(stream))
    assert [parse_block(b).data for b in blocks] == [json.dumps(chunk), "[DONE]"]


def test_anthropic_content_block_delta() -> None:
    payload = (
        '{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello"}}'
    )
    stream = f"event: content_block_delta\r\ndata: {payload}\r\n\r\n".encode()
    (block,) = decode([stream[:20], stream[20:]])
    assert block == f"event: content_block_delta\ndata: {payload}\n\n".encode()
    event = parse_block(block)
    assert event.event == "content_block_delta"
    assert json.loads(event.data)["delta"]["text"] == "Hello"


def test_passthrough_identity() -> None:
    stream = (
        b": OPENROUTER PROCESSING\n\n"
        b'data: {"choices":[{"delta":{"content":"Hi"}}]}\n\n'
        b"event: ping\nid: 3\nretry: 10\ndata: a\ndata: b\n\n"
        b"data: [DONE]\n\n"
    )
    assert b"".join(decode([stream])) == stream
    assert b"".join(decode(bytewise(stream))) == stream


def test_oversize_event_raises_502() -> None:
    decoder = SSEDecoder(max_event_size=16)
    assert decoder.feed(b"data: 123456789\n\n") == [b"data: 123456789\n\n"]  # 16 + 1 bytes
    with pytest.raises(RemoteProtocolError) as info:
        decoder.feed(b"data: 12345678901")  # incomplete, already too large
    assert info.value.error_status_hint == 502
    assert info.value.error_type == "upstream_error"
    assert info.value.code == "sse_event_too_large"
    with pytest.raises(RemoteProtocolError) as again:
        decoder.feed(b"data: x\n\n")
    assert again.value.code == "sse_event_too_large"
    with pytest.raises(RemoteProtocolError) as again:
        decoder.close()
    assert again.value.code == "sse_event_too_large"


def test_oversize_complete_block_and_at_close() -> None:
    with pytest.raises(RemoteProtocolError):
        SSEDecoder(max_event_size=8).feed(b"data: 1234\n\n")
    decoder = SSEDecoder(max_event_size=8)
    assert decoder.feed(b"data: 12") == []
    with pytest.raises(RemoteProtocolError):
        decoder.close()
    decoder = SSEDecoder(max_event_size=8)
    assert decoder.feed(b"data: 1") == []
    with pytest.raises(RemoteProtocolError):
        decoder.feed(b"2\n\n")  # completes a block of 9 + 1 bytes


def test_misuse_raises_local_protocol_error() -> None:
    decoder = SSEDecoder()
    decoder.close()
    with pytest.raises(LocalProtocolError):
        decoder.feed(b"data: x\n\n")
    with pytest.raises(LocalProtocolError):
        decoder.close()
    with pytest.raises(ValueError, match="max_event_size"):
        SSEDecoder(max_event_size=0)


def test_feed_accepts_bytearray_and_returns_bytes() -> None:
    blocks = SSEDecoder().feed(bytearray(b"data: x\n\ndata"))
    assert blocks == [b"data: x\n\n"]
    assert type(blocks[0]) is bytes


def test_encode_canonical_order() -> None:
    event = SSEEvent(data="a\n\nb", event="delta", id="42", retry=0, comments=("c1", " c2", ""))
    assert event.encode() == (
        b": c1\n:  c2\n:\nevent: delta\nid: 42\nretry: 0\ndata: a\ndata:\ndata: b\n\n"
    )
    assert parse_block(event.encode()) == event
    assert SSEEvent(event="", id="").encode() == b"event:\nid:\n\n"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"data": "a\rb"},
        {"event": "a\nb"},
        {"id": "a\rb"},
        {"id": "a\x00b"},
        {"retry": -1},
        {"comments": ("a\nb",)},
    ],
)
def test_event_that_cannot_be_sent_is_rejected(kwargs: dict[str, object]) -> None:
    with pytest.raises(LocalProtocolError):
        SSEEvent(**kwargs)  # type: ignore[arg-type]


def test_openai_error_event() -> None:
    block = openai_error_event("boom\nline", error_type="upstream_error", code="timeout")
    assert block.endswith(b"\n\n")
    assert decode([block]) == [block]
    event = parse_block(block)
    assert event.event == "error"
    assert json.loads(event.data) == {
        "error": {
            "message": "boom\nline",
            "type": "upstream_error",
            "param": None,
            "code": "timeout",
        }
    }
    assert openai_error_event("x", error_type="server_error") == (
        b'event: error\ndata: {"error":{"message":"x","type":"server_error",'
        b'"param":null,"code":null}}\n\n'
    )
