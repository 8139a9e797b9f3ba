"""The ``sansproxy`` console script, and how every adapter starts and stops.

The script is the one ``pip install -e .`` put next to this interpreter: a missing
one fails (re-run the install), it is never skipped. Real processes, real sockets;
every wait is on an output line, a port or the process's exit.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e._helpers import CHAT, chat_body, http_client, stream_chat
from tests.support.mock_upstream import MockUpstream
from tests.support.proxy_process import ADAPTER_MODULES, REPO_ROOT, ProxyProcess, proxy_env

ADAPTERS = list(ADAPTER_MODULES)
PORT_IN_USE = re.compile(
    r"^sansproxy: error: cannot listen on 127\.0\.0\.1:(\d+): address already in use$"
)


@pytest.fixture(scope="module")
def sansproxy() -> str:
    """The console script installed next to this interpreter."""
    path = shutil.which("sansproxy", path=str(Path(sys.executable).parent))
    if path is None:
        pytest.fail(
            f"no `sansproxy` script next to {sys.executable}: run `pip install -e .` "
            "(it creates the console script)",
            pytrace=False,
        )
    return path


@pytest.fixture
def processes() -> Iterator[list[ProxyProcess]]:
    """Processes started by a test, killed (with their workers) after it."""
    started: list[ProxyProcess] = []
    yield started
    for process in started:
        process.close()


def run(
    *argv: str, env: Mapping[str, str | None] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv),
        cwd=REPO_ROOT,
        env=proxy_env(env),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    """Exit status 2, nothing on stdout, one line on stderr (no traceback): that line."""
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


# -- the command ---------------------------------------------------------------------


def test_version(sansproxy: str) -> None:
    done = run(sansproxy, "--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"sansproxy {metadata.version('sansproxy')}\n"


def test_help_lists_the_subcommands(sansproxy: str) -> None:
    done = run(sansproxy, "--help")
    assert done.returncode == 0, done.stderr
    for command in ("serve", "keys", "check-config"):
        assert re.search(rf"^\s+{command}\s", done.stdout, flags=re.M), done.stdout
    serve = run(sansproxy, "serve", "--help")
    assert serve.returncode == 0, serve.stderr
    for flag in ("--adapter", "--host", "--port", "--workers", "--config", "--base-url"):
        assert flag in serve.stdout, flag


def test_no_subcommand_is_a_usage_error(sansproxy: str) -> None:
    done = run(sansproxy)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("adapter", [None, *ADAPTERS])
def test_serve_answers_on_every_adapter(
    adapter: str | None, sansproxy: str, processes: list[ProxyProcess]
) -> None:
    choice = [] if adapter is None else ["--adapter", adapter]
    proxy = ProxyProcess([sansproxy, "serve", *choice, "--port", "0"], env=proxy_env())
    processes.append(proxy)
    proxy.wait_ready()
    line = proxy.wait_for_log("listening on http://").string
    # The README's first command is the h11 server: the default.
    assert f" adapter={adapter or 'h11'} workers=1 upstream=mock" in line
    with http_client(proxy) as client:
        assert client.get("/health").status_code == 200
        answer = client.post(CHAT, json=chat_body(content="Hi"))
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["message"]["content"].endswith("You said: Hi")


def test_serve_takes_workers_only_for_asgi(sansproxy: str) -> None:
    done = run(sansproxy, "serve", "--adapter", "trio", "--workers", "2")
    assert done.returncode == 2  # a usage error, as argparse words them: usage, then the error
    assert done.stderr.splitlines()[-1] == (
        "sansproxy serve: error: --workers: only --adapter asgi runs worker processes, not trio"
    )


def test_serve_with_a_bad_config_is_one_line(sansproxy: str) -> None:
    line = one_error_line(run(sansproxy, "serve", "--config", "/nonexistent/sansproxy.yaml"))
    assert line.startswith("sansproxy serve: error: "), line
    assert "/nonexistent/sansproxy.yaml" in line


# -- keys ----------------------------------------------------------------------------


def _shape(text: str) -> str:
    return re.sub(r"[0-9a-f]{64}", "<sha256>", re.sub(r"sk-sp-[A-Za-z0-9_-]{43}", "<key>", text))


def test_keys_new_prints_what_the_module_prints(sansproxy: str) -> None:
    script = run(sansproxy, "keys", "new", "team-a")
    module = run(sys.executable, "-m", "adapters.keys", "new", "team-a")
    assert script.returncode == module.returncode == 0, (script.stderr, module.stderr)
    assert "<key>" in _shape(script.stdout) and "<sha256>" in _shape(script.stdout)
    assert _shape(script.stdout) == _shape(module.stdout)
    assert script.stdout != module.stdout  # a fresh key each time


def test_keys_rejects_a_bad_name(sansproxy: str) -> None:
    done = run(sansproxy, "keys", "new", "no spaces")
    assert done.returncode == 2
    assert "sansproxy keys: error: NAME" in done.stderr
    assert "Traceback" not in done.stderr


# -- check-config --------------------------------------------------------------------


def _effective(stdout: str) -> Any:
    data = yaml.safe_load(stdout)
    assert isinstance(data, dict), stdout
    return data


def test_check_config_of_the_example(sansproxy: str) -> None:
    done = run(sansproxy, "check-config", "config.example.yaml")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    effective = _effective(done.stdout)
    assert effective["server"]["host"] == "127.0.0.1" and effective["server"]["port"] == 3000
    assert effective["upstream"] is None  # every option of the example is commented out


def test_check_config_prints_no_secret(sansproxy: str, tmp_path: Path) -> None:
    secrets = {
        "api": "sk-upstream-secret-0001",
        "header": "Bearer sk-header-secret-0002",
        "redis": "redis-password-0003",
        "key": "ab" * 32,
        "admin": "cd" * 32,
    }
    config = {
        "providers": {
            "oai": {
                "base_url": "https://api.openai.com",
                "api_key": "${TEST_UPSTREAM_KEY}",
                "headers": {"Authorization": secrets["header"], "X-Team": "blue"},
            }
        },
        "models": {"fast": [{"provider": "oai", "model": "gpt-4o-mini"}]},
        "limits": {
            "backend": "redis",
            "redis_url": f"redis://:{secrets['redis']}@127.0.0.1:6379/0",
        },
        "middleware": [
            {
                "auth": {
                    "keys": [{"name": "team-a", "key_sha256": secrets["key"]}],
                    "admin_key_sha256": secrets["admin"],
                }
            }
        ],
    }
    path = tmp_path / "secrets.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    done = run(sansproxy, "check-config", str(path), env={"TEST_UPSTREAM_KEY": secrets["api"]})
    assert done.returncode == 0, done.stderr
    for name, secret in secrets.items():
        assert secret not in done.stdout, name
        assert secret not in done.stderr, name
    effective = _effective(done.stdout)
    provider = effective["providers"]["oai"]
    assert provider["base_url"] == "https://api.openai.com"
    assert provider["headers"]["X-Team"] == "blue"  # not a secret: shown
    assert provider["api_key"] not in (None, secrets["api"])


def test_check_config_takes_the_serve_flags(sansproxy: str) -> None:
    done = run(sansproxy, "check-config", "config.example.yaml", "--port", "4321")
    assert done.returncode == 0, done.stderr
    assert _effective(done.stdout)["server"]["port"] == 4321


def test_check_config_of_a_bad_config_is_one_line(sansproxy: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("server: {port: 99999}\n", encoding="utf-8")
    line = one_error_line(run(sansproxy, "check-config", str(path)))
    assert line.startswith("sansproxy check-config: error: "), line
    assert "server.port" in line


# -- a port in use -------------------------------------------------------------------


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A loopback port another socket listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port: int = sock.getsockname()[1]
        yield port


@pytest.mark.parametrize("adapter", ADAPTERS)
@pytest.mark.parametrize("how", ["script", "module"])
def test_a_port_in_use_is_one_line_and_status_2(
    adapter: str, how: str, busy_port: int, sansproxy: str
) -> None:
    if how == "script":
        argv = [sansproxy, "serve", "--adapter", adapter]
    else:
        argv = [sys.executable, "-m", ADAPTER_MODULES[adapter]]
    line = one_error_line(run(*argv, "--port", str(busy_port)))
    match = PORT_IN_USE.match(line)
    assert match is not None, line
    assert int(match[1]) == busy_port


# -- Ctrl-C twice under the ASGI adapter ---------------------------------------------


def _assert_quiet_exit(proxy: ProxyProcess) -> None:
    assert proxy.wait(10) == 0, proxy.logs()
    assert "Traceback" not in proxy.logs(), proxy.logs()
    assert "KeyboardInterrupt" not in proxy.logs(), proxy.logs()


@pytest.mark.parametrize("workers", [1, 2])
def test_asgi_two_sigints_at_once_after_the_startup_line(
    workers: int, sansproxy: str, processes: list[ProxyProcess]
) -> None:
    # Before uvicorn handles signals (and, with workers, while they import).
    argv = [sansproxy, "serve", "--adapter", "asgi", "--port", "0", "--workers", str(workers)]
    proxy = ProxyProcess(argv, env=proxy_env())
    processes.append(proxy)
    proxy.wait_ready()
    # As a terminal's Ctrl-C: to the whole process group (the workers too).
    os.killpg(proxy.pid, signal.SIGINT)
    os.killpg(proxy.pid, signal.SIGINT)
    _assert_quiet_exit(proxy)


@pytest.mark.parametrize("workers", [1, 2])
def test_asgi_second_sigint_stops_a_stream_in_flight(
    workers: int, sansproxy: str, processes: list[ProxyProcess], tmp_path: Path
) -> None:
    with MockUpstream() as mock:
        config = tmp_path / "grace.yaml"
        config.write_text("server: {shutdown_grace: 30}\n", encoding="utf-8")
        argv = [sansproxy, "serve", "--adapter", "asgi", "--port", "0", "--config", str(config)]
        argv += ["--workers", str(workers), "--base-url", mock.base_url]
        proxy = ProxyProcess(argv, env=proxy_env())
        processes.append(proxy)
        proxy.wait_ready()
        with stream_chat(proxy, "stall-mid-stream") as (response, events):
            assert response.status_code == 200
            next(events)
            next(events)  # the stream is under way, and stalls
            os.killpg(proxy.pid, signal.SIGINT)
            # The graceful stop waits for the stream (grace 30 s) ...
            proxy.wait_for_log("Waiting for connections to close", timeout=10)
            assert proxy.returncode is None
            # ... a second Ctrl-C does not.
            os.killpg(proxy.pid, signal.SIGINT)
            _assert_quiet_exit(proxy)
        assert "second signal: cancelling 1 requests in flight" in proxy.logs()
