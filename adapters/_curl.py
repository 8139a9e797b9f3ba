"""The OTLP exporter's HTTP transport on libcurl (``pycurl``): a POST that holds no GIL.

The SDK's exporter sends with ``requests`` from the span exporter's thread.
Each of the few system calls of a POST (connect, send, poll, receive) gives
the GIL back, and taking it again from a busy event loop is a contest: under
load each export cost the process ~4 ms of CPU in GIL hand-offs (40,000
``futex`` calls in 4 s, against 0.5 ms for the POST alone), and ~16 µs a
request. ``pycurl``'s ``perform()`` makes the whole exchange in C, the GIL
released throughout.

:class:`CurlTransport` is a transport of the SDK's own client
(``opentelemetry.exporter.http.transport``): the SDK still retries, backs
off, compresses and sets the headers; this only carries a request. It does
what the ``requests`` session it replaces did, read once at start-up: the
proxy the environment names for the endpoint (``HTTP(S)_PROXY``,
``NO_PROXY``), the CA bundle (the SDK's certificate, ``REQUESTS_CA_BUNDLE``,
else ``certifi``'s, as ``requests``), the client certificate, ``.netrc``
credentials. One connection, kept alive between exports.
"""

from __future__ import annotations

import contextlib
import io
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from http import HTTPStatus

import certifi
import pycurl
from opentelemetry.exporter.http.transport._base import BaseHTTPResult, BaseHTTPTransport
from requests.structures import CaseInsensitiveDict

__all__ = ["CurlTransport", "CurlResult"]

# libcurl's errors that mean no answer came back over the connection (the SDK
# retries these at once, then with back-off): couldn't resolve, connect, TLS
# handshake, send or receive; got nothing.
_CONNECTION_ERRORS = frozenset(
    (
        pycurl.E_COULDNT_RESOLVE_PROXY,
        pycurl.E_COULDNT_RESOLVE_HOST,
        pycurl.E_COULDNT_CONNECT,
        pycurl.E_SSL_CONNECT_ERROR,
        pycurl.E_GOT_NOTHING,
        pycurl.E_SEND_ERROR,
        pycurl.E_RECV_ERROR,
    )
)


@dataclass(frozen=True, slots=True)
class CurlResult(BaseHTTPResult):
    """One request's outcome: a status, its reason, body and headers; or an error."""

    body: bytes = b""
    fields: Mapping[str, str] = field(default_factory=dict)

    def content(self) -> bytes:
        return self.body

    def headers(self) -> Mapping[str, str]:
        return self.fields


class CurlTransport(BaseHTTPTransport):
    """Requests over one libcurl handle (used by one thread at a time)."""

    def __init__(
        self,
        *,
        verify: bool | str = True,
        cert: str | tuple[str, str] | None = None,
        proxy: str | None = None,
        credentials: tuple[str, str] | None = None,
    ) -> None:
        curl = self._curl = pycurl.Curl()
        self._lock = threading.Lock()  # close() may come from another thread
        curl.setopt(pycurl.NOSIGNAL, 1)  # timeouts without SIGALRM (threads)
        curl.setopt(pycurl.PROXY, proxy or "")  # "": none, not libcurl's own variables
        if verify is False:
            curl.setopt(pycurl.SSL_VERIFYPEER, 0)
            curl.setopt(pycurl.SSL_VERIFYHOST, 0)
        elif verify is not True and os.path.isdir(verify):  # a directory, as requests takes
            curl.setopt(pycurl.CAPATH, verify)
        else:
            curl.setopt(pycurl.CAINFO, certifi.where() if verify is True else verify)
        if isinstance(cert, tuple):
            curl.setopt(pycurl.SSLCERT, cert[0])
            curl.setopt(pycurl.SSLKEY, cert[1])
        elif cert:
            curl.setopt(pycurl.SSLCERT, cert)
        if credentials is not None:
            curl.setopt(pycurl.USERNAME, credentials[0])
            curl.setopt(pycurl.PASSWORD, credentials[1])
        self._closed = False

    def request(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
        data: bytes | None = None,
    ) -> BaseHTTPResult:
        body = io.BytesIO()
        with self._lock:
            if self._closed:
                return CurlResult(error=RuntimeError("the transport is closed"))
            curl = self._curl
            curl.setopt(pycurl.URL, url)
            curl.setopt(pycurl.CUSTOMREQUEST, method)
            curl.setopt(pycurl.POSTFIELDS, data or b"")
            # No "Expect: 100-continue" round trip before a large body.
            lines = [f"{name}: {value}" for name, value in (headers or {}).items()]
            curl.setopt(pycurl.HTTPHEADER, [*lines, "Expect:"])
            curl.setopt(pycurl.TIMEOUT_MS, max(1, round((timeout or 0) * 1000)) if timeout else 0)
            curl.setopt(pycurl.WRITEDATA, body)  # one call back into Python: the body
        try:
            curl.perform()  # the GIL is released until it returns
        except pycurl.error as exc:
            return CurlResult(error=exc)
        status = int(curl.getinfo(pycurl.RESPONSE_CODE))
        # No header callbacks (each takes the GIL again): of the headers the SDK
        # reads Retry-After alone, which libcurl parses (seconds or an HTTP date).
        retry_after = int(curl.getinfo(pycurl.RETRY_AFTER))
        fields = CaseInsensitiveDict({"retry-after": str(retry_after)} if retry_after > 0 else {})
        try:
            reason: str | None = HTTPStatus(status).phrase
        except ValueError:
            reason = None
        return CurlResult(status_code=status, reason=reason, body=body.getvalue(), fields=fields)

    def is_connection_error(self, exception: Exception | None) -> bool:
        return isinstance(exception, pycurl.error) and exception.args[0] in _CONNECTION_ERRORS

    def close(self) -> None:
        with self._lock:
            self._closed = True
        # A request still running in the export thread is left to end (its timeout).
        with contextlib.suppress(pycurl.error):
            self._curl.close()
