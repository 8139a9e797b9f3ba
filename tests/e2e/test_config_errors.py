"""Configuration mistakes, as the person starting the proxy sees them.

One style everywhere: ``ORIGIN: path.to[0].field: what is wrong (what is allowed;
did you mean 'x'?)``, ORIGIN the config file (as given), the flag or the
environment variable the value came from; several problems joined with ``; ``.
Through the real command line: exit status 2, one line on stderr
(``PROG: error: `` once, then the text), no traceback. Also: the example config
starts as is, and ``effective_config`` masks every secret.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest
import yaml

from adapters._cli import ConfigError, build_parser, load
from adapters._effective_config import MASK, effective_config
from core import ProxyConfig
from tests.e2e._helpers import CHAT, chat_body, http_client
from tests.support.proxy_process import REPO_ROOT, StartProxy, proxy_env

EXAMPLE = REPO_ROOT / "config.example.yaml"
#: How the proxy may name itself before ``error:`` (the module run, or the console script).
PROGS = ("sansproxy", "python -m adapters.h11_server")

PROVIDERS = "providers:\n  oai: {base_url: 'http://127.0.0.1:9'}\n"
ROOT_OPTIONS = (
    "server, upstream, providers, models, translation, limits, mock, middleware, log_level, "
    "log_format, access_log, metrics, telemetry"
)
TRACE_OPTIONS = "dir, max_body, max_events, rotate, max_age, max_bytes"


def cli_error(
    tmp_path: Path,
    yaml_text: str | None,
    *args: str,
    env: Mapping[str, str | None] | None = None,
) -> str:
    """Start ``python -m adapters.h11_server [--config config.yaml] ARGS`` in ``tmp_path``;
    it must exit 2 with one line on stderr, ``PROG: error: TEXT``: return TEXT."""
    argv = [sys.executable, "-m", "adapters.h11_server"]
    if yaml_text is not None:
        (tmp_path / "config.yaml").write_text(yaml_text, encoding="utf-8")
        argv += ["--config", "config.yaml"]
    environ = proxy_env({"PYTHONPATH": str(REPO_ROOT), **(env or {})})
    done = subprocess.run(
        [*argv, *args],
        cwd=tmp_path,
        env=environ,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr + done.stdout
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    prog, sep, text = lines[0].partition(": error: ")
    assert sep and prog in PROGS, lines[0]
    assert "error:" not in text and not text.startswith("config:"), lines[0]
    return text


@pytest.mark.parametrize(
    ("yaml_text", "args", "env", "expected"),
    [
        pytest.param(
            PROVIDERS + "models:\n  fast:\n    - {provider: oai, model: m, weight: heavy}\n",
            [],
            {},
            "config.yaml: models.fast[0].weight: invalid value 'heavy' (expected a number > 0)",
            id="wrong-type-deep-in-models",
        ),
        pytest.param(
            PROVIDERS + "models:\n  fast:\n    - {provider: oai, model: m}\n"
            "    - {provider: oia, model: n}\n",
            [],
            {},
            "config.yaml: models.fast[1].provider: unknown provider 'oia' "
            "(providers: oai; did you mean 'oai'?)",
            id="list-index",
        ),
        pytest.param(
            PROVIDERS
            + "models:\n  fast:\n    deployments: [{provider: oai, model: m, wieght: 2}]\n",
            [],
            {},
            "config.yaml: models.fast.deployments[0]: unknown option 'wieght' "
            "(options: provider, model, weight, price; did you mean 'weight'?)",
            id="long-form-names-deployments",
        ),
        pytest.param(
            "sever:\n  port: 8080\n",
            [],
            {},
            f"config.yaml: unknown option 'sever' (options: {ROOT_OPTIONS}; "
            "did you mean 'server'?)",
            id="unknown-top-level-key",
        ),
        pytest.param(
            "server:\n  prot: 8080\n",
            [],
            {},
            "config.yaml: server: unknown option 'prot' (options: host, port, workers, "
            "header_timeout, keepalive_timeout, request_timeout, write_timeout, "
            "shutdown_grace; did you mean 'port'?)",
            id="unknown-key-in-a-section",
        ),
        pytest.param(
            "middleware:\n  - trace: {dri: ./traces}\n",
            [],
            {},
            f"config.yaml: middleware[0].trace: unknown option 'dri' (options: {TRACE_OPTIONS}; "
            "did you mean 'dir'?)",
            id="unknown-middleware-option",
        ),
        pytest.param(
            "middleware:\n  trace: {dri: ./traces}\n",
            [],
            {},
            f"config.yaml: middleware.trace: unknown option 'dri' (options: {TRACE_OPTIONS}; "
            "did you mean 'dir'?)",
            id="mapping-form-middleware",
        ),
        pytest.param(
            "middleware:\n  - validate\n  - retires\n",
            [],
            {},
            "config.yaml: middleware[1]: unknown middleware 'retires' (built-ins: trace, auth, "
            "validate, guardrails, rate_limit, retry; custom ones: 'package.module:attr'; "
            "did you mean 'retry'?)",
            id="unknown-middleware",
        ),
        pytest.param(
            "upstream:\n  base_url: http://127.0.0.1:9\n  api_key: ${SANSPROXY_TEST_UNSET}\n",
            [],
            {},
            "config.yaml: upstream.api_key: environment variable SANSPROXY_TEST_UNSET is not "
            "set (set it before starting)",
            id="unset-env-var",
        ),
        pytest.param(
            "upstream:\n  base_url: [unclosed\nlimits: {\n",
            [],
            {},
            "config.yaml: line 3, column 7: invalid YAML (expected ',' or ']', but got ':')",
            id="bad-yaml",
        ),
        pytest.param(
            None,
            [],
            {"SANSPROXY_PORT": "abc"},
            "SANSPROXY_PORT: server.port: invalid value 'abc' "
            "(expected an integer from 0 to 65535)",
            id="bad-env-value",
        ),
        pytest.param(
            "server: {port: 8080}\n",
            ["--port", "70000"],
            {},
            "--port: server.port: invalid value 70000 (expected an integer from 0 to 65535)",
            id="bad-flag-value",
        ),
        pytest.param(
            None,
            ["--base-url", "ftp://example.com"],
            {},
            "--base-url: upstream.base_url: invalid value 'ftp://example.com' "
            "(expected a URL starting with http:// or https://)",
            id="bad-flag-url",
        ),
        pytest.param(
            None,
            ["--config", "missing.yaml"],
            {},
            "--config: cannot read missing.yaml (No such file or directory)",
            id="missing-file",
        ),
        pytest.param(
            "server: {workers: 0}\nlog_level: warn\n",
            [],
            {},
            "config.yaml: server.workers: invalid value 0 (expected an integer >= 1); "
            "config.yaml: log_level: invalid value 'warn' "
            "(expected one of debug, info, warning, error; did you mean 'warning'?)",
            id="several-problems",
        ),
    ],
)
def test_a_bad_config_is_one_line_in_one_style(
    tmp_path: Path,
    yaml_text: str | None,
    args: list[str],
    env: dict[str, str],
    expected: str,
) -> None:
    assert cli_error(tmp_path, yaml_text, *args, env=env) == expected


# -- where a value came from, in process ---------------------------------------------------


def args(*argv: str) -> argparse.Namespace:
    return build_parser("test", "test").parse_args(list(argv))


def problem_text(*argv: str, environ: Mapping[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        load(args(*argv), dict(environ or {}))
    return str(caught.value)


def test_the_origin_is_the_flag_the_variable_or_the_file(tmp_path: Path) -> None:
    config = tmp_path / "sansproxy.yaml"
    config.write_text("middleware:\n  - trace: {rotate: week}\n", encoding="utf-8")
    # The entry is the file's, its dir the flag's: a problem with the entry names the file.
    assert problem_text("--config", str(config), "--trace-dir", "/tmp/t") == (
        f"{config}: middleware[0].trace: 'rotate' must be 'hour' or 'day', not 'week'"
    )
    # A file named by SANSPROXY_CONFIG is named as itself; a missing one by the variable.
    assert problem_text(environ={"SANSPROXY_CONFIG": str(config)}).startswith(f"{config}: ")
    assert problem_text(environ={"SANSPROXY_CONFIG": str(tmp_path / "no.yaml")}) == (
        f"SANSPROXY_CONFIG: cannot read {tmp_path / 'no.yaml'} (No such file or directory)"
    )
    # Nested variables are named, and an upstream without its address names what set it.
    assert problem_text(environ={"SANSPROXY_LIMITS__MAX_BODY_SIZE": "big"}) == (
        "SANSPROXY_LIMITS__MAX_BODY_SIZE: limits.max_body_size: invalid value 'big' "
        "(expected an integer > 0)"
    )
    assert problem_text(environ={"SANSPROXY_API_KEY": "sk-secret"}) == (
        "SANSPROXY_API_KEY: upstream: missing option 'base_url' (required with api_key: the "
        "API's address, from --base-url, SANSPROXY_BASE_URL or upstream.base_url)"
    )


def test_a_secret_is_never_quoted_in_an_error(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("upstream: {base_url: 'http://user:hunter2@h', api_key: 12345}\n")
    text = problem_text("--config", str(config))
    assert "hunter2" not in text and "12345" not in text
    assert text == (
        f"{config}: upstream.base_url: a URL with credentials (not allowed: put the key in "
        f"api_key); {config}: upstream.api_key: invalid value, a number "
        "(expected a string or null)"
    )


# -- the example config starts as is ---------------------------------------------------------


def test_the_example_config_loads_as_the_defaults() -> None:
    loaded = load(args("--config", str(EXAMPLE)), {})
    assert loaded.config == ProxyConfig()
    assert loaded.config.upstream is None and not loaded.config.providers
    assert loaded.proxy.pipeline.middleware == ()


@pytest.mark.parametrize("adapter", ["h11"])
def test_the_example_config_serves_the_mock(start_proxy: StartProxy) -> None:
    # Nothing in the environment (no OPENAI_API_KEY), nothing reachable upstream.
    proxy = start_proxy("--config", str(EXAMPLE), env={"OPENAI_API_KEY": None})
    assert "upstream=mock" in proxy.wait_for_log(r"listening on http://").string
    with http_client(proxy) as client:
        assert client.get("/health").status_code == 200
        response = client.post(CHAT, json=chat_body("mock-gpt", content="hello"))
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["object"] == "chat.completion"
    content = answer["choices"][0]["message"]["content"]
    assert isinstance(content, str) and content


# -- effective_config: the whole configuration, secrets masked ----------------------------------


def test_effective_config_masks_every_secret() -> None:
    config = ProxyConfig.model_validate(
        {
            "providers": {
                "oai": {
                    "base_url": "https://api.openai.com",
                    "api_key": "sk-provider-secret",
                    "headers": {
                        "Authorization": "Bearer header-secret",
                        "X-Api-Key": "xkey-secret",
                        "api-key": "azure-secret",
                        "OpenAI-Organization": "org-9",
                    },
                }
            },
            "models": {"fast": [{"provider": "oai", "model": "gpt-4o-mini"}]},
            "limits": {"backend": "redis", "redis_url": "redis://:redis-secret@h:6379/0"},
            "middleware": [
                {
                    "auth": {
                        "keys": [{"name": "a", "key_sha256": "ab" * 32}],
                        "admin_key_sha256": "cd" * 32,
                    }
                },
                "rate_limit",
                {
                    "tests.e2e.test_config_errors:custom": {
                        "api_key": "custom-secret",
                        "max_tokens": 7,
                    }
                },
            ],
        }
    )
    text = effective_config(config)
    for secret in ("secret", "ab" * 32, "cd" * 32):
        assert secret not in text
    tree = yaml.safe_load(text)
    oai = tree["providers"]["oai"]
    assert oai["api_key"] == MASK
    assert oai["headers"] == {
        "Authorization": MASK,
        "X-Api-Key": MASK,
        "api-key": MASK,
        "OpenAI-Organization": "org-9",
    }
    assert tree["limits"]["redis_url"] == MASK
    auth = tree["middleware"][0]["auth"]
    assert auth == {"keys": [{"name": "a", "key_sha256": MASK}], "admin_key_sha256": MASK}
    assert tree["middleware"][2]["tests.e2e.test_config_errors:custom"] == {
        "api_key": MASK,
        "max_tokens": 7,
    }
    # Everything else, defaults included, as validated.
    assert tree["server"] == ProxyConfig().server.model_dump()
    assert tree["models"] == {
        "fast": {
            "deployments": [
                {"provider": "oai", "model": "gpt-4o-mini", "weight": 1.0, "price": None}
            ],
            "fallbacks": [],
            "limits": None,
        }
    }


def test_effective_config_of_the_defaults_round_trips() -> None:
    text = effective_config(ProxyConfig())
    tree = yaml.safe_load(text)
    assert tree["upstream"] is None and tree["limits"]["redis_url"] is None
    assert ProxyConfig.model_validate(tree) == ProxyConfig()


def custom(**options: object) -> object:
    """A custom middleware factory taking any option (for the masking test)."""
    return argparse.Namespace(**options)
