"""Fixtures for the interop suite: third-party upstreams the project did not write.

- `nginx_upstream`, `node_upstream`, `aiohttp_upstream` (session-scoped): the server of
  that name (tests/interop/servers/) as a subprocess on a free loopback port, started once
  it answers ``GET /health`` (within a bounded deadline) and killed after the session. A
  server that cannot run here (no ``nginx``, no njs module, no ``node``, no aiohttp) skips
  its tests, or fails them when ``CI`` is set, with the install command.
- `real_upstream`: each of the three in turn (ids "nginx", "node", "aiohttp").

Each yields an `Upstream` (tests/interop/servers/__init__.py, re-exported here): its port,
what it offers (framings, casings, deliveries, ``can_reset``, ``has_stats``), and
``base_url(framing, casing, delivery)`` for a proxy's provider config, which then reaches
``{base_url}/v1/chat/completions`` or ``{base_url}/v1/messages``. The answers are the
recorded payloads (tests/interop/payloads/: exact text and token counts there).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.interop.servers import NAMES, Upstream, start_upstream

__all__ = ["Upstream"]


def _serve(name: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    running = start_upstream(name, tmp_path_factory.mktemp(f"{name}-upstream"))
    try:
        yield running.upstream
    finally:
        running.stop()


@pytest.fixture(scope="session")
def nginx_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    """nginx + njs: only the ``title`` casing, no ``gzip`` framing, no reset (501)."""
    yield from _serve("nginx", tmp_path_factory)


@pytest.fixture(scope="session")
def node_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    """Node's ``http`` module: every framing, casing and delivery, and the reset."""
    yield from _serve("node", tmp_path_factory)


@pytest.fixture(scope="session")
def aiohttp_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    """aiohttp.web: no ``close`` framing; ``Transfer-Encoding`` always spelled so."""
    yield from _serve("aiohttp", tmp_path_factory)


@pytest.fixture(params=NAMES, ids=NAMES)
def real_upstream(request: pytest.FixtureRequest) -> Upstream:
    """Each third-party upstream in turn."""
    upstream: Upstream = request.getfixturevalue(f"{request.param}_upstream")
    return upstream
