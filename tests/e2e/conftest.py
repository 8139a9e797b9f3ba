"""Fixtures for the end-to-end suite: the proxy under each adapter, and a mock upstream.

- `adapter`: "h11", "asgi", "trio" or "httptools"; every test that uses `start_proxy`
  or `proxy` runs once per adapter (httptools: only in `HTTPTOOLS_MODULES`, see
  `pytest_generate_tests`). Narrow it with ``@pytest.mark.parametrize("adapter", ["h11"])``.
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

#: The modules that exercise the wire and the server itself, where the httptools
#: adapter runs too. It shares everything behind its request parser with the h11
#: adapter (``adapters._loop_server``, the callback driver), which runs every module:
#: the rest of the suite (gateway, policies, tracing, config) would test the same
#: code again, for minutes of CI time.
HTTPTOOLS_MODULES = frozenset(
    {
        "test_client_gone",
        "test_failures",
        "test_h11_server",
        "test_imports",
        "test_json_limits",
        "test_no_cycles",
        "test_proxy",
        "test_server_limits",
        "test_spans",  # observability is asked of every adapter
        "test_streaming",
        "test_wire_variants",
    }
)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run each test that uses `adapter` once per adapter, unless it names its own."""
    if "adapter" not in metafunc.fixturenames:
        return
    for marker in metafunc.definition.iter_markers("parametrize"):
        names = marker.args[0]
        if isinstance(names, str):
            names = [name.strip() for name in names.split(",")]
        if "adapter" in names:
            return
    module = metafunc.module.__name__.rsplit(".", 1)[-1]
    metafunc.parametrize(
        "adapter",
        [name for name in ADAPTER_MODULES if name != "httptools" or module in HTTPTOOLS_MODULES],
    )


@pytest.fixture
def adapter(request: pytest.FixtureRequest) -> str:
    """The adapter under test: "h11" (adapters.h11_server), "asgi", "trio", "httptools"
    (parametrized by `pytest_generate_tests`)."""
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
