"""The command line and configuration, observed from outside the process.

Run once (on the h11 server: the loading code is shared), except `--help`, which
every adapter module must answer. Precedence is CLI > YAML > environment >
defaults, each level observed by where requests actually go.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from tests.e2e._helpers import CHAT, chat_body, closed_port, http_client
from tests.support.mock_upstream import DEFAULT_TEXT, MockUpstream
from tests.support.proxy_process import (
    ADAPTER_MODULES,
    REPO_ROOT,
    ProxyProcess,
    StartProxy,
    proxy_env,
)

once = pytest.mark.parametrize("adapter", ["h11"])


def _failed_start(proxy: ProxyProcess) -> str:
    """The exit status must be 2 and stderr one readable line; return that line."""
    assert proxy.wait(10) == 2, proxy.logs()
    stderr = proxy.logs("stderr")
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in proxy.logs()
    return lines[0]


def _answers_from(proxy: ProxyProcess, mock: MockUpstream) -> bool:
    """Whether a chat request through `proxy` is answered by `mock`."""
    before = len(mock.requests)
    with http_client(proxy) as client:
        response = client.post(CHAT, json=chat_body())
    if response.status_code != 200:
        return False
    content = response.json()["choices"][0]["message"]["content"]
    return content == DEFAULT_TEXT and len(mock.requests) == before + 1


def test_help_on_every_adapter(adapter: str) -> None:
    module = ADAPTER_MODULES[adapter]
    done = subprocess.run(
        [sys.executable, "-m", module, "--help"],
        cwd=REPO_ROOT,
        env=proxy_env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    for flag in (
        "--host",
        "--port",
        "--config",
        "--base-url",
        "--type",
        "--api-key",
        "--trace-dir",
        "--log-level",
    ):
        assert flag in done.stdout, flag
    assert ("--workers" in done.stdout) == (adapter == "asgi")
    assert "Traceback" not in done.stderr


@once
@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["--type", "azure"], "--type"),
        (["--port", "eighty"], "--port"),
        (["--log-level", "loud"], "--log-level"),
        (["--port", "70000"], "server.port"),
        (["--base-url", "ftp://example.com"], "upstream.base_url"),
        (["--config", "/nonexistent/sansproxy.yaml"], "/nonexistent/sansproxy.yaml"),
    ],
)
def test_bad_flags_exit_2(args: list[str], words: str, start_proxy: StartProxy) -> None:
    proxy = start_proxy(*args, wait_ready=False)
    assert proxy.wait(10) == 2, proxy.logs()
    stderr = proxy.logs("stderr")
    assert words in stderr
    assert "Traceback" not in stderr


@once
def test_invalid_yaml_exit_2(start_proxy: StartProxy, tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("upstream:\n  base_url: [unclosed\nlimits: {\n", encoding="utf-8")
    line = _failed_start(start_proxy("--config", str(path), wait_ready=False))
    assert str(path) in line


@once
@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"upstream": {"base_url": "ftp://x"}}, "upstream.base_url"),
        ({"upstream": {"base_url": "http://x", "type": "azure"}}, "upstream.type"),
        ({"upstream": {"base_url": "http://x", "read_timeout": -1}}, "upstream.read_timeout"),
        ({"limits": {"max_body_size": "big"}}, "limits.max_body_size"),
        ({"server": {"port": 99999}}, "server.port"),
        ({"server": {"bogus_option": 1}}, "server: unknown option 'bogus_option'"),
        ({"log_level": "loud"}, "log_level"),
        ({"middleware": [{"no.such.module:Factory": {}}]}, "middleware"),
        ({"upstream": {"api_key": "k"}}, "upstream"),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_invalid_value_names_the_field(
    config: dict[str, object], field: str, start_proxy: StartProxy
) -> None:
    # No --port 0 from the fixture: it would override server.port in the YAML.
    line = _failed_start(start_proxy(config=config, pick_port=False, wait_ready=False))
    assert field in line


@once
def test_unset_env_var_in_yaml(start_proxy: StartProxy) -> None:
    config = {"upstream": {"base_url": "http://127.0.0.1:1", "api_key": "${SANSPROXY_TEST_NOPE}"}}
    proxy = start_proxy(config=config, env={"SANSPROXY_TEST_NOPE": None}, wait_ready=False)
    assert "SANSPROXY_TEST_NOPE" in _failed_start(proxy)


@once
def test_env_vars_substituted_in_yaml(start_proxy: StartProxy, mock_upstream: MockUpstream) -> None:
    config = {"upstream": {"base_url": "${E2E_UPSTREAM}", "api_key": "${E2E_KEY}"}}
    proxy = start_proxy(
        config=config, env={"E2E_UPSTREAM": mock_upstream.base_url, "E2E_KEY": "sk-from-env"}
    )
    assert _answers_from(proxy, mock_upstream)
    assert mock_upstream.requests[0].header("authorization") == "Bearer sk-from-env"


@once
def test_yaml_beats_env(start_proxy: StartProxy, mock_upstream: MockUpstream) -> None:
    proxy = start_proxy(
        config={"upstream": {"base_url": mock_upstream.base_url}},
        env={"SANSPROXY_BASE_URL": f"http://127.0.0.1:{closed_port()}"},
    )
    assert _answers_from(proxy, mock_upstream)


@once
def test_cli_beats_yaml(start_proxy: StartProxy, mock_upstream: MockUpstream) -> None:
    proxy = start_proxy(
        "--base-url",
        mock_upstream.base_url,
        config={"upstream": {"base_url": f"http://127.0.0.1:{closed_port()}"}},
        env={"SANSPROXY_BASE_URL": f"http://127.0.0.1:{closed_port()}"},
    )
    assert _answers_from(proxy, mock_upstream)


@once
def test_env_beats_defaults(start_proxy: StartProxy, mock_upstream: MockUpstream) -> None:
    proxy = start_proxy(
        env={
            "SANSPROXY_BASE_URL": mock_upstream.base_url,
            "SANSPROXY_API_KEY": "sk-env",
            "SANSPROXY_LIMITS__MAX_BODY_SIZE": "2000",
            "SANSPROXY_UPSTREAM__READ_TIMEOUT": "0.5",
        }
    )
    assert _answers_from(proxy, mock_upstream)
    assert mock_upstream.requests[0].header("authorization") == "Bearer sk-env"
    with http_client(proxy) as client:
        assert client.post("/v1/x", content=b"a" * 2001).status_code == 413
    with http_client(proxy) as client:
        stalled = client.post(CHAT, json=chat_body("scenario:stall-head"))
        assert stalled.status_code == 504


@once
def test_env_type_anthropic(start_proxy: StartProxy, mock_upstream: MockUpstream) -> None:
    proxy = start_proxy(
        env={
            "SANSPROXY_BASE_URL": mock_upstream.base_url,
            "SANSPROXY_TYPE": "anthropic",
            "SANSPROXY_API_KEY": "sk-ant-env",
        }
    )
    with http_client(proxy) as client:
        client.get("/v1/models", headers={"x-api-key": "client"})
    assert mock_upstream.requests[0].header_values("x-api-key") == ["sk-ant-env"]


@once
def test_nested_env_loses_to_yaml(start_proxy: StartProxy, mock_upstream: MockUpstream) -> None:
    proxy = start_proxy(
        "--base-url",
        mock_upstream.base_url,
        config={"limits": {"max_body_size": 5000}},
        env={"SANSPROXY_LIMITS__MAX_BODY_SIZE": "100"},
    )
    with http_client(proxy) as client:
        assert client.post("/v1/x", content=b"a" * 4000).status_code == 200
        assert client.post("/v1/x", content=b"a" * 5001).status_code == 413


@once
def test_port_precedence(start_proxy: StartProxy) -> None:
    env_port, yaml_port, cli_port = closed_port(), closed_port(), closed_port()
    by_env = start_proxy(pick_port=False, env={"SANSPROXY_PORT": str(env_port)})
    assert by_env.port == env_port
    by_env.close()
    by_yaml = start_proxy(
        pick_port=False,
        config={"server": {"port": yaml_port}},
        env={"SANSPROXY_PORT": str(env_port)},
    )
    assert by_yaml.port == yaml_port
    by_yaml.close()
    by_cli = start_proxy(
        "--port",
        str(cli_port),
        pick_port=False,
        config={"server": {"port": yaml_port}},
        env={"SANSPROXY_PORT": str(env_port)},
    )
    assert by_cli.port == cli_port
    with httpx.Client(trust_env=False) as client:
        assert client.get(f"http://127.0.0.1:{cli_port}/health").status_code == 200


@once
def test_config_file_from_env(
    start_proxy: StartProxy, mock_upstream: MockUpstream, tmp_path: Path
) -> None:
    path = tmp_path / "from-env.yaml"
    path.write_text(yaml.safe_dump({"upstream": {"base_url": mock_upstream.base_url}}))
    proxy = start_proxy(env={"SANSPROXY_CONFIG": str(path)})
    assert _answers_from(proxy, mock_upstream)


@once
def test_startup_line_names_the_mock(start_proxy: StartProxy, mock_upstream: MockUpstream) -> None:
    mock = start_proxy()
    line = mock.wait_for_log(r"listening on http://").string
    assert "mock" in line
    real = start_proxy("--base-url", mock_upstream.base_url)
    line = real.wait_for_log(r"listening on http://").string
    assert mock_upstream.base_url in line
    assert "mock)" not in line and "built-in mock" not in line


@once
def test_example_config_is_valid(start_proxy: StartProxy, tmp_path: Path) -> None:
    # The documented example starts as is: nothing required, the built-in mock answers.
    proxy = start_proxy(
        "--config",
        str(REPO_ROOT / "config.example.yaml"),
        "--trace-dir",
        str(tmp_path / "traces"),
    )
    assert "upstream=mock" in proxy.wait_for_log(r"listening on http://").string


@pytest.mark.parametrize("adapter", ["asgi"])
def test_asgi_workers(start_proxy: StartProxy, mock_upstream: MockUpstream) -> None:
    proxy = start_proxy("--workers", "2", "--base-url", mock_upstream.base_url)
    assert "workers=2" in proxy.wait_for_log(r"listening on http://").string
    for _ in range(4):
        assert _answers_from(proxy, mock_upstream)
