"""The README does what it says: its set-up commands, its snippets and its configs.

- It starts with exactly the two set-up commands, and says "Python ≥ 3.11" once.
- Every ```python block runs: the one in "Embedding the core" in this process, every
  other one (the SDK snippets) as a user would run it, with this interpreter against a
  real proxy started with no configuration (the built-in mock), the block's
  ``127.0.0.1:3000`` rewritten to the proxy's free port and nothing else. Each prints
  what its ``# prints:`` lines say.
- Every ```yaml block is a whole configuration that ``adapters._cli.load`` accepts
  (as ``--config``), with each ``${VAR}`` it uses set.
- The ```nginx block, run by a real nginx in front of a proxy (its certificate, its
  listening address and the proxy's port rewritten, nothing else), relays a stream over
  TLS event by event. Without nginx it skips, and fails under CI.
"""

from __future__ import annotations

import contextlib
import io
import os
import pathlib
import re
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Final

import httpx
import pytest
import trustme

from adapters._cli import build_parser, load
from core.policies import AuthMiddleware, RateLimitMiddleware, RetryMiddleware, TraceMiddleware
from tests.support.proxy_process import ProxyProcess, proxy_argv, proxy_env

README: Final = pathlib.Path(__file__).resolve().parent.parent / "README.md"
SNIPPET_ADDRESS: Final = "127.0.0.1:3000"
EMBEDDING: Final = "Embedding the core"
FENCE: Final = re.compile(r"^```(\w*)\n(.*?)^```$", flags=re.S | re.M)
VAR: Final = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def sections() -> list[tuple[str, str]]:
    """(heading, text) of each ``## `` section; the part before the first is ""."""
    parts = re.split(r"^## (.*)\n", README.read_text(encoding="utf-8"), flags=re.M)
    return [("", parts[0]), *zip(parts[1::2], parts[2::2], strict=True)]


def blocks(language: str) -> list[tuple[str, str]]:
    """(section heading, code) of every fenced block in `language`, in order."""
    return [
        (heading, code)
        for heading, text in sections()
        for lang, code in FENCE.findall(text)
        if lang == language
    ]


def block_id(block: tuple[str, str]) -> str:
    heading, code = block
    return f"{heading or 'top'}: {code.splitlines()[0][:40]}"


SDK_SNIPPETS: Final = [block for block in blocks("python") if block[0] != EMBEDDING]
YAML_BLOCKS: Final = blocks("yaml")


def test_readme_starts_with_exactly_two_setup_commands() -> None:
    text = README.read_text(encoding="utf-8")
    first_section = sections()[0][1]
    first_two = FENCE.findall(text)[:2]  # no code of any kind before them
    assert first_two == [
        ("sh", "pip install -e . && sansproxy serve --port 3000\n"),
        ("sh", "pip install -e '.[test]' && python -m pytest\n"),
    ]
    assert text.count("Python ≥ 3.11") == 1
    assert "python3 -m venv .venv && . .venv/bin/activate" in first_section


def test_the_first_screen_shows_both_sdks() -> None:
    top = [code for heading, code in blocks("python") if heading == ""]
    assert len(top) == 2
    openai_snippet, anthropic_snippet = top
    assert "from openai import OpenAI" in openai_snippet
    assert f'base_url="http://{SNIPPET_ADDRESS}/v1"' in openai_snippet
    assert "import anthropic" in anthropic_snippet
    assert f'base_url="http://{SNIPPET_ADDRESS}"' in anthropic_snippet


def test_embedding_example_runs() -> None:
    (example,) = (code for heading, code in blocks("python") if heading == EMBEDDING)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(example, str(README), "exec"), {"__name__": "readme"})
    assert out.getvalue() == "This is the sansproxy mock. You said: Hi\n"


@pytest.fixture(scope="module")
def mock_proxy() -> Iterator[ProxyProcess]:
    """The proxy as the first set-up command starts it (no config: the mock), on a free port."""
    process = ProxyProcess(proxy_argv("h11", [], pick_port=True), env=proxy_env())
    try:
        yield process.wait_ready()
    finally:
        process.close()


@pytest.mark.parametrize("snippet", SDK_SNIPPETS, ids=block_id)
def test_sdk_snippet_prints_what_it_says(
    snippet: tuple[str, str], mock_proxy: ProxyProcess, tmp_path: pathlib.Path
) -> None:
    _, code = snippet
    assert code.count(SNIPPET_ADDRESS) == 1, "one address, the proxy's, in each snippet"
    expected = "".join(
        line.removeprefix("# prints: ") + "\n"
        for line in code.splitlines()
        if line.startswith("# prints: ")
    )
    assert expected, "say what the snippet prints, in '# prints: ...' lines"
    local = code.replace(SNIPPET_ADDRESS, f"127.0.0.1:{mock_proxy.port}")
    result = subprocess.run(
        [sys.executable, "-c", local],
        cwd=tmp_path,
        env=proxy_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
    assert result.stdout == expected


def test_every_python_block_is_run() -> None:
    assert len(blocks("python")) == len(SDK_SNIPPETS) + 1  # + the embedding example


@pytest.mark.parametrize("block", YAML_BLOCKS, ids=block_id)
def test_yaml_block_is_a_config_that_loads(block: tuple[str, str], tmp_path: pathlib.Path) -> None:
    _, text = block
    env = {
        name: "redis://127.0.0.1:6379/0" if name.endswith("_URL") else f"test-{name.lower()}"
        for name in VAR.findall(text)
    }
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    args = build_parser("test", "test").parse_args(["--config", str(path)])
    load(args, env)  # raises ConfigError, one line saying what is wrong


def test_the_configuration_example_has_keys_and_limits(tmp_path: pathlib.Path) -> None:
    (text,) = (code for heading, code in YAML_BLOCKS if heading == "Configuration")
    path = tmp_path / "team.yaml"
    path.write_text(text, encoding="utf-8")
    args = build_parser("test", "test").parse_args(["--config", str(path)])
    loaded = load(args, {"OPENAI_API_KEY": "sk-o", "ANTHROPIC_API_KEY": "sk-a"})
    pipeline = loaded.proxy.pipeline.middleware
    assert [type(mw) for mw in pipeline] == [
        TraceMiddleware,
        AuthMiddleware,
        RateLimitMiddleware,
        RetryMiddleware,
    ]
    (auth,) = (mw for mw in pipeline if isinstance(mw, AuthMiddleware))
    limited = [key for key in auth.keys if key.rpm or key.tpm or key.budget]
    assert {key.name for key in limited} == {"team-a", "batch"}
    assert any(key.rpm and key.tpm and key.budget and key.models for key in limited)
    smart = loaded.config.models["smart"]
    assert smart.limits is not None and smart.limits.rpm and smart.limits.tpm
    assert smart.fallbacks == ("fast",)


# -- the nginx block ---------------------------------------------------------------------

NGINX_MAIN: Final = """daemon off;
master_process off;
pid {prefix}/nginx.pid;
error_log stderr warn;
events {{
    worker_connections 64;
}}
http {{
    access_log off;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
{server}
}}
"""
STREAM_DELAY: Final = 0.2  # seconds between the mock's events


def nginx_binary() -> str:
    found = shutil.which("nginx") or (
        "/usr/sbin/nginx" if os.path.isfile("/usr/sbin/nginx") else None
    )
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("CI needs nginx (apt-get install nginx-light)")
        pytest.skip("nginx is not installed")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def rewrite_once(text: str, pattern: str, replacement: str) -> str:
    new, count = re.subn(pattern, replacement, text)
    assert count == 1, f"expected one {pattern!r} in the nginx block"
    return new


@contextlib.contextmanager
def running_nginx(prefix: pathlib.Path, server: str, port: int) -> Iterator[None]:
    conf = prefix / "nginx.conf"
    conf.write_text(NGINX_MAIN.format(prefix=prefix, server=server), encoding="utf-8")
    argv = [nginx_binary(), "-e", "stderr", "-p", str(prefix), "-c", str(conf)]
    log = prefix / "stderr.log"
    with log.open("wb") as errors:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stderr=errors)
    try:
        deadline = time.monotonic() + 10.0
        while True:  # nginx logs nothing once it listens: try to connect
            assert process.poll() is None, f"nginx exited: {log.read_text()}"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
                break
            except OSError:
                assert time.monotonic() < deadline, f"nginx is not listening: {log.read_text()}"
                time.sleep(0.02)
        yield
    finally:
        process.terminate()
        process.wait(10)


def nginx_server(block: str, *, port: int, chain: pathlib.Path, proxy_port: int) -> str:
    """The README's server block, listening on `port` with `chain`, in front of `proxy_port`."""
    server = rewrite_once(block, r"listen 443 ssl;", f"listen 127.0.0.1:{port} ssl;")
    server = rewrite_once(server, r"ssl_certificate +\S+;", f"ssl_certificate {chain};")
    server = rewrite_once(server, r"ssl_certificate_key +\S+;", f"ssl_certificate_key {chain};")
    return rewrite_once(
        server,
        re.escape(f"proxy_pass http://{SNIPPET_ADDRESS};"),
        f"proxy_pass http://127.0.0.1:{proxy_port};",
    )


@pytest.fixture
def slow_mock_proxy(tmp_path: pathlib.Path) -> Iterator[ProxyProcess]:
    """A proxy whose mock sends an event every STREAM_DELAY seconds."""
    config = tmp_path / "slow-mock.yaml"
    config.write_text(f"mock: {{stream_delay: {STREAM_DELAY}}}\n", encoding="utf-8")
    argv = proxy_argv("h11", ["--config", str(config)], pick_port=True)
    process = ProxyProcess(argv, env=proxy_env())
    try:
        yield process.wait_ready()
    finally:
        process.close()


def test_nginx_block_relays_a_stream_over_tls_event_by_event(
    slow_mock_proxy: ProxyProcess, tmp_path: pathlib.Path
) -> None:
    ((_, block),) = blocks("nginx")
    ca = trustme.CA()
    chain = tmp_path / "chain.pem"
    certificate = ca.issue_cert("llm.example.com", "127.0.0.1")
    certificate.private_key_and_cert_chain_pem.write_to_path(str(chain))
    port = free_port()
    server = nginx_server(block, port=port, chain=chain, proxy_port=slow_mock_proxy.port)
    context = ssl.create_default_context()
    ca.configure_trust(context)
    body = {"model": "mock-gpt", "stream": True, "messages": [{"role": "user", "content": "Hi"}]}
    with (
        running_nginx(tmp_path, server, port),
        httpx.Client(verify=context, trust_env=False, timeout=10.0) as client,
        client.stream(
            "POST", f"https://127.0.0.1:{port}/v1/chat/completions", json=body
        ) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        arrivals = [
            (time.monotonic(), line) for line in response.iter_lines() if line.startswith("data:")
        ]
    assert arrivals[-1][1] == "data: [DONE]"
    # Each event left nginx as it came (the first long before the last), not all at the end.
    assert arrivals[-1][0] - arrivals[0][0] > (len(arrivals) - 3) * STREAM_DELAY
