"""HTTP/1.1 framing without sockets: requests encoded, responses framed.

The framer must tell the same head, body and end whatever the byte splits
and the header names' casing; malformed bytes raise ``UpstreamError`` of the
right kind. The encoder writes what h11 wrote, and refuses what h11 refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import h11
import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters._http1 import ResponseFramer, UpstreamError, encode


@dataclass
class Recorder:
    """A listener that keeps what it was told."""

    heads: list[tuple[int, list[tuple[bytes, bytes]]]] = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)
    pieces: int = 0
    ends: list[bool] = field(default_factory=list)

    def on_head(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        assert len(self.heads) == len(self.ends), "one head a response, before its body"
        self.heads.append((status, headers))

    def on_data(self, data: bytes) -> None:
        assert type(data) is bytes and data
        assert len(self.heads) == len(self.ends) + 1
        self.body += data
        self.pieces += 1

    def on_end(self, keep_alive: bool) -> None:
        self.ends.append(keep_alive)


def frame(
    pieces: list[bytes], method: bytes = b"GET", *, eof: bool = False, max_head: int = 64 * 1024
) -> Recorder:
    recorder = Recorder()
    framer = ResponseFramer(recorder, max_head)
    framer.expect(method)
    for piece in pieces:
        framer.feed(piece)
    if eof:
        framer.feed_eof()
    return recorder


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({cut % (len(data) + 1) for cut in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True) if b > a]


header_names = st.sampled_from([b"x-request-id", b"content-type", b"openai-model", b"x-a"])
casings = st.lists(st.booleans(), min_size=16, max_size=16)


def recase(name: bytes, upper: list[bool]) -> bytes:
    return bytes(c - 32 if 97 <= c <= 122 and upper[i % 16] else c for i, c in enumerate(name))


header_lists = st.lists(
    st.tuples(header_names, st.binary(max_size=20).map(lambda v: v.hex().encode()), casings),
    max_size=6,
)
bodies = st.binary(max_size=300)
cuts = st.lists(st.integers(min_value=0, max_value=10_000), max_size=12)


def head_bytes(status: bytes, headers: list[tuple[bytes, bytes, list[bool]]]) -> bytes:
    lines = b"".join(recase(n, up) + b": " + v + b"\r\n" for n, v, up in headers)
    return b"HTTP/1.1 " + status + b"\r\n" + lines


def expected_headers(headers: list[tuple[bytes, bytes, list[bool]]]) -> list[tuple[bytes, bytes]]:
    return [(n, v) for n, v, _ in headers]


# -- responses: any split, any casing ----------------------------------------------------


@given(headers=header_lists, body=bodies, cuts=cuts, interim=st.booleans())
def test_content_length_body(
    headers: list[tuple[bytes, bytes, list[bool]]], body: bytes, cuts: list[int], interim: bool
) -> None:
    length = (b"Content-Length", b"%d" % len(body), [True] * 16)
    wire = head_bytes(b"200 OK", [*headers, length]) + b"\r\n" + body
    if interim:
        wire = b"HTTP/1.1 100 Continue\r\nX-Interim: 1\r\n\r\n" + wire
    got = frame(split(wire, cuts))
    assert got.heads == [(200, [*expected_headers(headers), (b"content-length", length[1])])]
    assert (bytes(got.body), got.ends) == (body, [True])


@given(
    headers=header_lists,
    chunks=st.lists(st.binary(min_size=1, max_size=80), max_size=5),
    extension=st.sampled_from([b"", b";a=b", b';name="quoted"', b";x"]),
    trailers=st.sampled_from([b"", b"X-Trailer: 1\r\n", b"Checksum: abc\r\nMore: x\r\n"]),
    cuts=cuts,
)
def test_chunked_body(
    headers: list[tuple[bytes, bytes, list[bool]]],
    chunks: list[bytes],
    extension: bytes,
    trailers: bytes,
    cuts: list[int],
) -> None:
    encoding = (b"Transfer-Encoding", b"chunked", [False, True] * 8)
    framed = b"".join(b"%x%s\r\n%s\r\n" % (len(c), extension, c) for c in chunks)
    wire = head_bytes(b"200 OK", [*headers, encoding]) + b"\r\n" + framed + b"0\r\n" + trailers
    got = frame(split(wire + b"\r\n", cuts))
    # trailers are not headers: the head is told as it was
    assert got.heads == [(200, [*expected_headers(headers), (b"transfer-encoding", b"chunked")])]
    assert (bytes(got.body), got.ends) == (b"".join(chunks), [True])


@given(headers=header_lists, body=bodies, cuts=cuts)
def test_close_delimited_body(
    headers: list[tuple[bytes, bytes, list[bool]]], body: bytes, cuts: list[int]
) -> None:
    wire = head_bytes(b"200 OK", headers) + b"\r\n" + body
    got = frame(split(wire, cuts), eof=True)
    assert got.heads == [(200, expected_headers(headers))]
    assert (bytes(got.body), got.ends) == (body, [False])


@given(cuts=cuts, status=st.sampled_from([b"204 No Content", b"304 Not Modified"]))
def test_responses_without_a_body(cuts: list[int], status: bytes) -> None:
    wire = b"HTTP/1.1 " + status + b"\r\nContent-Length: 10\r\n\r\n"
    got = frame(split(wire, cuts))
    assert (got.heads[0][0], bytes(got.body), got.ends) == (int(status[:3]), b"", [True])


@given(cuts=cuts)
def test_head_response_has_no_body(cuts: list[int]) -> None:
    wire = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"
    got = frame(split(wire, cuts), b"HEAD")
    assert (got.heads, bytes(got.body), got.ends) == (
        [(200, [(b"content-length", b"1000")])],
        b"",
        [True],
    )


def test_the_framer_is_reused_response_after_response() -> None:
    recorder = Recorder()
    framer = ResponseFramer(recorder, 1024)
    for method, wire in [
        (b"HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"),
        (b"HEAD", b"HTTP/1.1 204 No Content\r\n\r\n"),
        (
            b"GET",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\nT: 1\r\n\r\n",
        ),
        (b"GET", b"HTTP/1.1 201 OK\r\nContent-Length: 2\r\n\r\ncd"),
    ]:
        framer.expect(method)
        framer.feed(wire)
    assert [status for status, _ in recorder.heads] == [200, 204, 200, 201]
    assert recorder.heads[3][1] == [(b"content-length", b"2")]  # no trailer carried over
    assert (bytes(recorder.body), recorder.ends) == (b"abcd", [True] * 4)


@pytest.mark.parametrize(
    ("wire", "method", "keep_alive"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx", b"GET", True),
        (b"HTTP/1.1 200 OK\r\nConnection: Close\r\nContent-Length: 1\r\n\r\nx", b"GET", False),
        (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\nx", b"GET", False),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nxHTTP/1.1 200 OK\r\n", b"GET", False),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nxgarbage", b"GET", False),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nHTTP/1.1 ", b"HEAD", False),
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 9\r\n\r\n", b"HEAD", False),
        # as h11: the chunks frame a body that also has a Content-Length
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"1\r\nx\r\n0\r\n\r\n",
            b"GET",
            True,
        ),
    ],
    ids=[
        "plain",
        "connection-close",
        "http-1.0",
        "pipelined-junk",
        "garbage-after",
        "head-then-junk",
        "head-close",
        "length-and-chunks",
    ],
)
def test_keep_alive(wire: bytes, method: bytes, keep_alive: bool) -> None:
    got = frame([wire], method)
    assert got.ends == [keep_alive]


def test_a_request_asking_to_close_is_not_kept_alive() -> None:
    recorder = Recorder()
    framer = ResponseFramer(recorder, 1024)
    framer.expect(b"GET", closing=True)
    framer.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx")
    assert recorder.ends == [False]


# -- malformed responses -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("wire", "eof", "kind"),
    [
        (b"SSH-2.0-OpenSSH_9.6\r\n\r\n", False, "protocol"),
        (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", False, "protocol"),
        (b"HTTP/1.1 2000 OK\r\n\r\n", False, "protocol"),
        (b"HTTP/1.1 200 OK\r\nx-big: " + b"a" * 2000, False, "protocol"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nnot hex\r\n", False, "protocol"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", False, "protocol"),
        (
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: foo\r\nConnection: upgrade\r\n\r\n",
            False,
            "protocol",
        ),
        (b"", True, "reset"),
        (b"HTTP/1.1 200 OK\r\nContent-Le", True, "reset"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort", True, "reset"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab", True, "reset"),
    ],
    ids=[
        "not-http",
        "bad-header",
        "bad-status",
        "head-too-big",
        "bad-chunk",
        "bad-length",
        "switched-protocols",
        "eof-before-anything",
        "eof-mid-head",
        "length-lies",
        "eof-mid-chunk",
    ],
)
def test_malformed_response(wire: bytes, eof: bool, kind: str) -> None:
    recorder = Recorder()
    framer = ResponseFramer(recorder, 1024)
    framer.expect(b"GET")
    with pytest.raises(UpstreamError) as caught:
        for piece in split(wire, list(range(0, len(wire), 7))):
            framer.feed(piece)
        if eof:
            framer.feed_eof()
    assert caught.value.kind == kind
    assert recorder.ends == []
    with pytest.raises(UpstreamError):  # broken for good
        framer.feed(b"HTTP/1.1 200 OK\r\n")
    with pytest.raises(UpstreamError):
        framer.feed_eof()


@given(wire=st.binary(max_size=200), cuts=cuts)
def test_any_bytes_frame_or_raise_upstream_error(wire: bytes, cuts: list[int]) -> None:
    recorder = Recorder()
    framer = ResponseFramer(recorder, 1024)
    framer.expect(b"GET")
    try:
        for piece in split(b"HTTP/1.1 200 OK\r\n" + wire, cuts):
            framer.feed(piece)
        framer.feed_eof()
    except UpstreamError as exc:
        assert exc.kind in ("protocol", "reset")
    else:
        assert len(recorder.ends) == 1


def test_feeding_with_no_response_expected_is_refused() -> None:
    framer = ResponseFramer(Recorder(), 1024)
    with pytest.raises(UpstreamError) as caught:
        framer.feed(b"HTTP/1.1 200 OK\r\n")
    assert caught.value.kind == "protocol"
    framer = ResponseFramer(Recorder(), 1024)
    framer.feed_eof()  # an idle connection closing is not a failure
    framer.expect(b"GET")
    with pytest.raises(RuntimeError):
        framer.expect(b"GET")


# -- requests ----------------------------------------------------------------------------


def _encoded(
    method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes
) -> bytes:
    return encode(method, target, headers, body)[0]


def h11_bytes(
    method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes
) -> bytes:
    conn = h11.Connection(h11.CLIENT)
    data = conn.send(h11.Request(method=method, target=target, headers=headers)) or b""
    if body:
        data += conn.send(h11.Data(data=body)) or b""
    return data + (conn.send(h11.EndOfMessage()) or b"")


tokens = st.text(alphabet="abcXYZ-019_", min_size=1, max_size=12).map(str.encode)
values = st.text(alphabet="abc XY/=:;,019", max_size=20).map(lambda v: v.strip().encode())


@given(
    method=st.sampled_from([b"GET", b"POST", b"DELETE", b"PATCH"]),
    target=st.sampled_from([b"/", b"/v1/chat/completions?x=1", b"*"]),
    extra=st.lists(st.tuples(tokens, values), max_size=6),
    host_at=st.integers(min_value=0, max_value=6),
    body=st.binary(max_size=50),
    chunked=st.booleans(),
)
def test_requests_are_what_h11_wrote(
    *,
    method: bytes,
    target: bytes,
    extra: list[tuple[bytes, bytes]],
    host_at: int,
    body: bytes,
    chunked: bool,
) -> None:
    reserved = {b"host", b"content-length", b"transfer-encoding", b"connection"}
    headers = [(n, v) for n, v in extra if n.lower() not in reserved]
    headers.insert(min(host_at, len(headers)), (b"Host", b"api.example"))
    if chunked:
        headers.append((b"Transfer-Encoding", b"Chunked"))
    elif body or method != b"GET":
        headers.append((b"Content-Length", b"%d" % len(body)))
    assert _encoded(method, target, headers, body) == h11_bytes(method, target, headers, body)


@pytest.mark.parametrize(
    "headers",
    [
        [(b"Content-Length", b"3, 3")],
        [(b"Content-Length", b"3"), (b"content-length", b"3")],
    ],
)
def test_repeated_equal_content_length_is_sent_once(headers: list[tuple[bytes, bytes]]) -> None:
    headers = [(b"host", b"h"), *headers]
    assert _encoded(b"POST", b"/", headers, b"abc") == h11_bytes(b"POST", b"/", headers, b"abc")


def test_a_request_without_host_is_refused() -> None:
    with pytest.raises(UpstreamError) as caught:
        encode(b"GET", b"/", [(b"accept", b"*/*")], b"")
    assert caught.value.kind == "protocol"


@pytest.mark.parametrize(
    ("value", "closing"),
    [(b"close", True), (b"Keep-Alive, CLOSE", True), (b"keep-alive", False), (b"closed", False)],
)
def test_encode_says_whether_the_request_closes(value: bytes, closing: bool) -> None:
    assert encode(b"GET", b"/", [(b"host", b"h"), (b"Connection", value)], b"")[1] is closing


@pytest.mark.parametrize(
    ("method", "target", "headers", "body", "message"),
    [
        (b"GET", b"/", [(b"host", b"h"), (b"x", b"sk-secret\r\nx: y")], b"", "values not shown"),
        (b"GET", b"/", [(b"host", b"h"), (b"x: y", b"sk-secret")], b"", "values not shown"),
        (b"GET", b"/", [(b"host", b"h"), (b"x", b" sk-secret")], b"", "values not shown"),
        (b"GET", b"/", [(b"host", b"h"), (b"x", b"sk-\x00secret")], b"", "values not shown"),
        (b"GET", b"/", [(b"host", b"h"), (b"x", b"sk-\x0bsecret")], b"", "values not shown"),
        (b"GET", b"/", [(b"host", b"h"), (b"x", b"sk-\x0csecret")], b"", "values not shown"),
        (b"GET", b"/", [(b"host", b"h"), (b"x", b"sk-\rsecret")], b"", "values not shown"),
        (b"GET", b"/", [(b"host", b"h"), (b"x", b"sk-\nsecret")], b"", "values not shown"),
        (b"GET", b"/", [(b"host", b"h\r\nx: sk-secret")], b"", "values not shown"),
        (b"GET", b"/", [(b"host", b"h"), (b"connection", b"sk-\nsecret")], b"", "values not shown"),
        (b"GET", b"/", [(b"authorization", b"sk-secret")], b"", "values not shown"),
        (b"GET", b"/", [(b"host", b"h"), (b"host", b"sk-secret")], b"", "values not shown"),
        (b"G T", b"/", [(b"host", b"h")], b"", "values not shown"),
        (b"GET", b"/a b", [(b"host", b"h")], b"", "values not shown"),
        (b"GET", b"", [(b"host", b"h")], b"", "values not shown"),
        (b"GET", b"/\x7f", [(b"host", b"h")], b"", "values not shown"),
        (b"GET", b"/\xc3\xa9", [(b"host", b"h")], b"", "values not shown"),
        (
            b"GET",
            b"/",
            [(b"host", b"h"), (b"content-length", b"\xd9\xa1")],
            b"",
            "values not shown",
        ),
        (b"GET", b"/", [(b"host", b"h"), (b"content-length", b"1" * 21)], b"", "values not shown"),
        (b"GET", b"/", [(b"host", b"h"), (b"content-length", b"1, 2")], b"x", "values not shown"),
        (
            b"GET",
            b"/",
            [(b"host", b"h"), (b"content-length", b"1"), (b"Content-Length", b"2")],
            b"x",
            "values not shown",
        ),
        (b"GET", b"/", [(b"host", b"h"), (b"content-length", b"-1")], b"", "values not shown"),
        (b"GET", b"/", [(b"host", b"h"), (b"transfer-encoding", b"gzip")], b"", "values not shown"),
        (b"POST", b"/", [(b"host", b"h"), (b"content-length", b"99")], b"sk-secret", "framing"),
        (b"POST", b"/", [(b"host", b"h")], b"sk-secret", "framing"),
    ],
)
def test_invalid_requests_are_refused_without_quoting_them(
    method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes, message: str
) -> None:
    with pytest.raises(UpstreamError) as caught:
        _encoded(method, target, headers, body)
    assert caught.value.kind == "protocol"
    assert message in str(caught.value)
    assert "sk-secret" not in str(caught.value)
    assert caught.value.__context__ is None and caught.value.__cause__ is None
    with pytest.raises(h11.LocalProtocolError):  # h11 refused each of them too
        h11_bytes(method, target, headers, body)
