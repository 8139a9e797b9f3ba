"""Fixtures for the end-to-end suite: the proxy under each adapter, and a mock upstream.

- `adapter`: "h11", "asgi" or "trio"; every test that uses `start_proxy` or `proxy`
  runs once per adapter. Narrow it with ``@pytest.mark.parametrize("adapter", ["h11"])``.
- `mock_upstream`: a fresh `MockUpstream` per test (tests/support/mock_upstream.py).
- `start_proxy(*args, env=None, config=None, ...)`: start the proxy subprocess.
- `proxy`: the proxy for the current adapter, forwarding to `mock_upstream` as openai.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.mock_upstream import MockUpstream
from tests.support.proxy_process import (
    ADAPTER_MODULES,
    START_TIMEOUT,
    ProxyProcess,
    StartProxy,
    proxy_argv,
    proxy_env,
)


@pytest.fixture(params=list(ADAPTER_MODULES))
def adapter(request: pytest.FixtureRequest) -> str:
    """The adapter under test: "h11" (adapters.h11_server), "asgi", "trio"."""
    name: str = request.param
    return name


@pytest.fixture
def mock_upstream() -> Iterator[MockUpstream]:
    """A mock upstream on 127.0.0.1, fresh for each test; fails the test on a mock bug."""
    with MockUpstream() as mock:
        yield mock
    if mock.errors:
        pytest.fail(f"the mock upstream raised: {mock.errors!r}", pytrace=False)


@pytest.fixture
def start_proxy(adapter: str, tmp_path: Path) -> Iterator[StartProxy]:
    """A factory that starts the proxy (the current `adapter` unless told) and kills it after."""
    current = adapter
    started: list[ProxyProcess] = []
    configs = iter(range(1_000_000))

    def start(
        *args: str,
        env: Mapping[str, str | None] | None = None,
        config: Mapping[str, Any] | None = None,
        adapter: str | None = None,
        pick_port: bool = True,
        wait_ready: bool = True,
        timeout: float = START_TIMEOUT,
    ) -> ProxyProcess:
        extra: list[str] = []
        if config is not None:
            path = tmp_path / f"sansproxy-{next(configs)}.yaml"
            path.write_text(yaml.safe_dump(dict(config), sort_keys=False), encoding="utf-8")
            extra = ["--config", str(path)]
        argv = proxy_argv(adapter or current, [*extra, *args], pick_port=pick_port)
        process = ProxyProcess(argv, env=proxy_env(env))
        started.append(process)
        if wait_ready:
            process.wait_ready(timeout)
        return process

    yield start
    for process in started:
        process.close()


@pytest.fixture
def proxy(start_proxy: StartProxy, mock_upstream: MockUpstream) -> ProxyProcess:
    """The proxy for the current adapter: `--base-url <mock_upstream> --type openai`."""
    return start_proxy("--base-url", mock_upstream.base_url, "--type", "openai")
