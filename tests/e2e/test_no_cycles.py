"""What a connection and its exchanges made is freed as soon as they end: no cycle.

Garbage in a reference cycle waits for Python's collector, whose full passes
walk every live object while no connection is served (tens of milliseconds
with thousands of streams open); the servers run them rarely because nothing
of theirs needs them (``adapters._cli.freeze_heap``). Each server here runs
as users run it, with the collector told to keep what it finds
(``gc.DEBUG_SAVEALL``), serves answers, streams, upstream failures, a client
that leaves mid-stream, malformed HTTP, on kept-alive and on new connections,
and says at exit what its collector found: nothing of the proxy's, nor of the
libraries it drives.
"""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import pytest

from tests.e2e._helpers import CHAT, at_exit, chat_body, http_client, iter_events, stop
from tests.support.mock_upstream import SCENARIO_HEADER, MockUpstream
from tests.support.proxy_process import ProxyProcess, StartProxy

#: where the types of what an exchange or a connection makes are defined
OURS = ("core", "adapters", "h11", "httptools", "anyio", "uvicorn", "starlette", "trio")

_AT_START = "import gc\ngc.set_debug(gc.DEBUG_SAVEALL)"
_REPORT = """
import gc
gc.collect()
for obj in gc.garbage:
    if isinstance(obj, type):  # a class an import made twice (trio's, with attrs)
        continue
    kind = type(obj)
    out.write(f"{kind.__module__} {kind.__qualname__}\\n")
"""


def _traffic(proxy: ProxyProcess) -> None:
    with http_client(proxy) as client:  # kept alive
        for _ in range(3):
            assert client.post(CHAT, json=chat_body()).status_code == 200
            with client.stream("POST", CHAT, json=chat_body(stream=True)) as stream:
                assert [e.data for e in iter_events(stream)][-1] == "[DONE]"
        failed = client.post(CHAT, json=chat_body(), headers={SCENARIO_HEADER: "reset-before-head"})
        assert failed.status_code == 502
    with http_client(proxy) as client, pytest.raises(httpx.RemoteProtocolError):  # cut short
        client.post(CHAT, json=chat_body(), headers={SCENARIO_HEADER: "reset-mid-body"})
    with http_client(proxy) as client:
        refused = client.post(CHAT, json=chat_body(), headers={SCENARIO_HEADER: "status-500"})
        assert refused.status_code == 500
    for _ in range(3):  # a connection each
        with http_client(proxy) as client:
            assert client.post(CHAT, json=chat_body()).status_code == 200
    with http_client(proxy) as client:  # leaves after the first event
        slow = {SCENARIO_HEADER: "slow-stream:20:50"}
        with client.stream("POST", CHAT, json=chat_body(stream=True), headers=slow) as stream:
            assert next(iter_events(stream)).data.startswith("{")
    with socket.create_connection((proxy.host, proxy.port), timeout=5) as raw:
        raw.sendall(b"NOT HTTP\r\n\r\n")
        assert raw.recv(65536).startswith(b"HTTP/1.1 400")
    with http_client(proxy) as client:  # the proxy is still well
        assert client.get("/health").status_code == 200


def test_a_server_leaves_no_reference_cycle_behind(
    start_proxy: StartProxy, mock_upstream: MockUpstream, tmp_path: Path
) -> None:
    env, found = at_exit(tmp_path, _REPORT, at_start=_AT_START)
    proxy = start_proxy("--base-url", mock_upstream.base_url, env=env)
    _traffic(proxy)
    assert stop(proxy) == 0
    garbage = found.read_text(encoding="utf-8").splitlines()
    ours: dict[str, int] = {}
    for line in garbage:
        if line.split(" ", 1)[0].split(".", 1)[0] in OURS:
            ours[line] = ours.get(line, 0) + 1
    assert not ours, f"left to the garbage collector: {ours}"


@pytest.mark.parametrize("adapter", ["h11"])
def test_the_report_sees_a_cycle(
    start_proxy: StartProxy, mock_upstream: MockUpstream, tmp_path: Path
) -> None:
    """The check above can fail: a cycle made in the server is reported."""
    made = "import core\nloop = core.ProxyConfig.model_construct()\nloop.__dict__['me'] = loop\n"
    env, found = at_exit(tmp_path, _REPORT, at_start=_AT_START + "\n" + made + "del loop")
    proxy = start_proxy("--base-url", mock_upstream.base_url, env=env)
    with httpx.Client(base_url=proxy.base_url, trust_env=False) as client:
        assert client.get("/health").status_code == 200
    assert stop(proxy) == 0
    assert "core._config ProxyConfig" in found.read_text(encoding="utf-8").splitlines()
