"""Third-party upstreams for the interop tests: nginx (+njs), Node's http, aiohttp.web.

Our own mock upstream (tests/support/mock_upstream.py) writes every header name in lower
case and frames bodies one way. These three servers are written on other stacks, and put
on the wire what those stacks put there (``Content-Type``, ``Transfer-Encoding`` as the
stack spells them, their own chunking, their own ``Date``/``Server``), all serving the
same recorded provider answers (tests/interop/payloads/).

The contract every one of them keeps:

``POST /{framing}/{casing}/{delivery}/v1/chat/completions`` and ``.../v1/messages``, with
a JSON body (a proxy's ``base_url`` ends in ``/{framing}/{casing}/{delivery}``):

- framing: ``length`` (``Content-Length``), ``chunked`` (``Transfer-Encoding: chunked``),
  ``close`` (neither; ``Connection: close`` and the body ends when the server closes),
  ``gzip`` (``Content-Encoding: gzip`` whatever the request's ``Accept-Encoding`` says,
  sent chunked).
- casing of header names: ``lower``, ``title`` (the stack's own spelling), ``upper``.
- delivery: ``whole`` (one write), ``event`` (one write per SSE event, or per half of a
  JSON body, a few ms apart: a real LLM API sends an event per read), ``byte`` (one byte
  per write). Under ``chunked`` each write is one HTTP chunk; under ``gzip`` each write
  is the compressed event (the stream is sync-flushed after each).
- ``"stream": true`` -> SSE, ``Content-Type: text/event-stream; charset=utf-8`` and
  ``Cache-Control: no-cache``; with ``stream_options.include_usage`` the chat stream that
  ends with a usage chunk. Else the JSON answer, ``Content-Type: application/json``. The
  request's ``model`` replaces the recorded one (so a test can see routing).
- ``model`` ``status-429`` / ``status-409``: that status, the API's error JSON
  (``errors.json``) and ``Retry-After: 0``; ``reset-mid-stream``: the SSE head and the
  first two events, then an RST (``can_reset``; nginx answers 501 instead);
  ``hold-after-last`` (node only): the whole stream, then the end of body 1.5 s later (a
  client that stops at ``[DONE]`` hangs up first). An unparsable
  body is a 400, a path or variant the server does not offer a 404, both in the API's
  error shape.
- ``GET /health`` -> 200 ``ok``; ``GET /_stats`` -> ``{"requests": N, "paths": {path: n},
  "last_path", "last_headers": {lower-cased name: value}, "last_body"}`` of the POSTs to
  the API paths (``has_stats``).

What each cannot do is declared in `CAPABILITIES` (and said in each server's file):
nginx writes its own ``Content-Type``/``Content-Length``/... (only ``title``), cannot
compress for a request that does not accept gzip, nor abort a response midway; aiohttp
chunks every body of unknown length (no ``close``) and spells ``Transfer-Encoding`` itself.

`start_upstream(name, directory)` runs one as a subprocess and returns a `RunningUpstream`;
`upstream_missing(name)` says why one cannot run here, `require_upstream` turns that into a
skip locally and a failure under CI (``CI`` set), as tests/support/redis_server.py does.
"""

from __future__ import annotations

import itertools
import os
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final

import httpx
import pytest

from tests.support.needs import free_port, require

__all__ = [
    "ALL_CASINGS",
    "ALL_DELIVERIES",
    "ALL_FRAMINGS",
    "CAPABILITIES",
    "INSTALL",
    "NAMES",
    "RunningUpstream",
    "Upstream",
    "capability_variants",
    "nginx_binary",
    "nginx_js_module",
    "require_upstream",
    "start_upstream",
    "upstream_missing",
]

SERVERS_DIR: Final = Path(__file__).resolve().parent
PAYLOADS_DIR: Final = SERVERS_DIR.parent / "payloads"
REPO_ROOT: Final = SERVERS_DIR.parents[2]

ALL_FRAMINGS: Final = ("length", "chunked", "close", "gzip")
ALL_CASINGS: Final = ("lower", "title", "upper")
ALL_DELIVERIES: Final = ("whole", "event", "byte")
NAMES: Final = ("nginx", "node", "aiohttp")

#: How to get each server's binaries on Debian 12 (what CI must run).
INSTALL: Final = {
    "nginx": "apt-get install -y nginx-light libnginx-mod-http-js",
    "node": "apt-get install -y nodejs",
    "aiohttp": "pip install aiohttp",
}

START_TIMEOUT: Final = 20.0
_LISTENING_RE: Final = re.compile(r"listening on http://(?P<host>[0-9.]+):(?P<port>\d+)")
_POLL_INTERVAL: Final = 0.05
_NGINX_JS_MODULES: Final = (
    "/usr/lib/nginx/modules/ngx_http_js_module.so",
    "/usr/lib64/nginx/modules/ngx_http_js_module.so",
    "/usr/share/nginx/modules/ngx_http_js_module.so",
    "/etc/nginx/modules/ngx_http_js_module.so",
    "/usr/local/nginx/modules/ngx_http_js_module.so",
)
_NODE_MIN_MAJOR: Final = 18  # socket.resetAndDestroy()


@dataclass(frozen=True)
class Upstream:
    """A running third-party upstream: where it listens and what it can do.

    ``fixed_names``: header names the server writes in its own spelling whatever the
    casing asked for (aiohttp's ``Transfer-Encoding``).
    """

    name: str
    port: int
    framings: tuple[str, ...]
    casings: tuple[str, ...]
    deliveries: tuple[str, ...]
    can_reset: bool
    has_stats: bool
    fixed_names: tuple[str, ...] = ()
    host: str = "127.0.0.1"

    @property
    def origin(self) -> str:
        return f"http://{self.host}:{self.port}"

    def supports(self, framing: str, casing: str, delivery: str) -> bool:
        return framing in self.framings and casing in self.casings and delivery in self.deliveries

    def base_url(
        self, framing: str = "chunked", casing: str = "title", delivery: str = "event"
    ) -> str:
        """The base_url a proxy's provider gets: the prefix that picks the variant."""
        if not self.supports(framing, casing, delivery):
            raise ValueError(f"{self.name} does not offer {framing}/{casing}/{delivery}")
        return f"{self.origin}/{framing}/{casing}/{delivery}"

    def variants(self) -> list[tuple[str, str, str]]:
        """Every supported (framing, casing, delivery)."""
        return list(itertools.product(self.framings, self.casings, self.deliveries))

    def stats(self) -> dict[str, Any]:
        """``GET /_stats``: what reached the server (see the module docstring)."""
        if not self.has_stats:
            raise ValueError(f"{self.name} keeps no stats")
        response = httpx.get(f"{self.origin}/_stats", timeout=10)
        response.raise_for_status()
        stats: dict[str, Any] = response.json()
        return stats


@dataclass(frozen=True)
class _Capabilities:
    framings: tuple[str, ...]
    casings: tuple[str, ...]
    deliveries: tuple[str, ...]
    can_reset: bool
    has_stats: bool
    fixed_names: tuple[str, ...] = ()


CAPABILITIES: Final = {
    "nginx": _Capabilities(
        framings=("length", "chunked", "close"),
        casings=("title",),
        deliveries=ALL_DELIVERIES,
        can_reset=False,
        has_stats=True,
    ),
    "node": _Capabilities(
        framings=ALL_FRAMINGS,
        casings=ALL_CASINGS,
        deliveries=ALL_DELIVERIES,
        can_reset=True,
        has_stats=True,
    ),
    "aiohttp": _Capabilities(
        framings=("length", "chunked", "gzip"),
        casings=ALL_CASINGS,
        deliveries=ALL_DELIVERIES,
        can_reset=True,
        has_stats=True,
        fixed_names=("Transfer-Encoding",),
    ),
}


def nginx_js_module() -> Path | None:
    """The njs dynamic module (``NGINX_JS_MODULE`` overrides where it is looked for)."""
    override = os.environ.get("NGINX_JS_MODULE")
    candidates = (override,) if override else _NGINX_JS_MODULES
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def nginx_binary() -> str | None:
    """The nginx executable (Debian puts it in /usr/sbin, off a user's PATH), or None."""
    found = shutil.which("nginx")
    if found is None and Path("/usr/sbin/nginx").is_file():  # not on a user's PATH
        found = "/usr/sbin/nginx"
    return found


def upstream_missing(name: str) -> str | None:
    """Why the upstream ``name`` cannot run here, or None."""
    if name == "nginx":
        if nginx_binary() is None:
            return f"nginx is not installed (Debian: {INSTALL['nginx']})"
        if nginx_js_module() is None:
            return f"the njs module ngx_http_js_module.so is missing ({INSTALL['nginx']})"
        return None
    if name == "node":
        node = shutil.which("node")
        if node is None:
            return f"node is not on PATH (Debian: {INSTALL['node']})"
        version = subprocess.run(
            [node, "--version"], capture_output=True, text=True, timeout=30, check=False
        ).stdout.strip()
        match = re.match(r"v(\d+)\.", version)
        if match is None or int(match.group(1)) < _NODE_MIN_MAJOR:
            return f"node {version or '?'} is too old: {_NODE_MIN_MAJOR} or later is needed"
        return None
    if name == "aiohttp":
        try:
            import aiohttp  # noqa: F401
        except ImportError:
            return f"aiohttp is not installed ({INSTALL['aiohttp']})"
        return None
    raise ValueError(f"no upstream called {name!r}")


def require_upstream(name: str) -> None:
    """Skip the test when the upstream cannot run here (with the reason); fail it under CI."""
    require(f"the {name} interop upstream", upstream_missing(name))


class RunningUpstream:
    """One upstream subprocess; its output is drained into `log` (it never blocks)."""

    def __init__(self, name: str, argv: list[str], *, cwd: Path) -> None:
        self.name = name
        self.log: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        self.process = subprocess.Popen(
            argv,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        assert self.process.stdout is not None
        threading.Thread(target=self._drain, args=(self.process.stdout,), daemon=True).start()
        self._upstream: Upstream | None = None

    @property
    def upstream(self) -> Upstream:
        """The running server (set once it answers ``GET /health``)."""
        assert self._upstream is not None, f"the {self.name} upstream has not started"
        return self._upstream

    @upstream.setter
    def upstream(self, value: Upstream) -> None:
        self._upstream = value

    def _drain(self, stream: IO[str]) -> None:
        for line in stream:
            self.log.append(line)
            self._lines.put(line)
        self._lines.put(None)

    def _fail(self, why: str) -> None:
        self.stop()
        pytest.fail(f"the {self.name} upstream {why}:\n{''.join(self.log)}", pytrace=False)

    def wait_listening_line(self, deadline: float) -> int:
        """The port of the child's ``listening on http://HOST:PORT`` line."""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._fail("did not say it was listening in time")
            try:
                line = self._lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                self._fail("exited before it listened")
            else:
                match = _LISTENING_RE.search(line)
                if match is not None:
                    return int(match.group("port"))

    def wait_healthy(self, port: int, deadline: float) -> None:
        """Poll ``GET /health`` (a bounded loop of short attempts) until it answers 200."""
        url = f"http://127.0.0.1:{port}/health"
        while True:
            if self.process.poll() is not None:
                self._fail(f"exited with {self.process.returncode}")
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self._fail("did not answer GET /health in time")
            time.sleep(_POLL_INTERVAL)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def _render_nginx_conf(directory: Path, port: int, js_module: Path) -> Path:
    template = (SERVERS_DIR / "nginx.conf.template").read_text(encoding="utf-8")
    values = {
        "@PREFIX@": str(directory),
        "@PORT@": str(port),
        "@JS_MODULE@": str(js_module),
        "@SERVERS@": str(SERVERS_DIR),
        "@PAYLOADS@": str(PAYLOADS_DIR),
    }
    for placeholder, value in values.items():
        template = template.replace(placeholder, value)
    left = re.findall(r"@[A-Z_]+@", template)
    assert not left, f"nginx.conf.template: {left} left unrendered"
    path = directory / "nginx.conf"
    path.write_text(template, encoding="utf-8")
    return path


def start_upstream(name: str, directory: Path, timeout: float = START_TIMEOUT) -> RunningUpstream:
    """Start the upstream ``name`` (skipping or failing as `require_upstream` says when it
    cannot run here); ``directory`` is its own (nginx's prefix, config, stats).

    Returns once it answers ``GET /health``; the caller `RunningUpstream.stop`s it.
    """
    require_upstream(name)
    deadline = time.monotonic() + timeout
    if name == "nginx":
        nginx = nginx_binary()
        js_module = nginx_js_module()
        assert nginx is not None and js_module is not None
        port = free_port()
        conf = _render_nginx_conf(directory, port, js_module)
        argv = [nginx, "-e", "stderr", "-p", str(directory), "-c", str(conf)]
        running = RunningUpstream(name, argv, cwd=directory)
    elif name == "node":
        node = shutil.which("node")
        assert node is not None
        argv = [node, str(SERVERS_DIR / "node_upstream.js"), "--port", "0"]
        running = RunningUpstream(name, argv, cwd=directory)
        port = running.wait_listening_line(deadline)
    else:
        module = "tests.interop.servers.aiohttp_upstream"
        argv = [sys.executable, "-m", module, "--port", "0"]
        running = RunningUpstream(name, argv, cwd=REPO_ROOT)
        port = running.wait_listening_line(deadline)
    running.wait_healthy(port, deadline)
    caps = CAPABILITIES[name]
    running.upstream = Upstream(
        name=name,
        port=port,
        framings=caps.framings,
        casings=caps.casings,
        deliveries=caps.deliveries,
        can_reset=caps.can_reset,
        has_stats=caps.has_stats,
        fixed_names=caps.fixed_names,
    )
    return running


def capability_variants(name: str) -> list[tuple[str, str, str]]:
    """The variants ``name`` offers, known before it runs (for parametrizing tests)."""
    caps = CAPABILITIES[name]
    return list(itertools.product(caps.framings, caps.casings, caps.deliveries))
