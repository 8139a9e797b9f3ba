"""Configuration loading: precedence CLI > YAML > environment > defaults."""

from __future__ import annotations

import argparse
import errno
import pathlib
import socket

import pytest

from adapters._cli import (
    ConfigError,
    build_parser,
    describe_upstream,
    listen_error,
    load,
    resolve,
    startup_line,
)
from adapters._main import build_parser as build_command
from core import ProxyConfig
from core.policies import AuthMiddleware
from tests.core.test_config_and_mock import example_uncommented


def args(*argv: str, workers: bool = False) -> argparse.Namespace:
    return build_parser("test", "test", workers=workers).parse_args(list(argv))


def write(tmp_path: pathlib.Path, text: str) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return str(path)


def test_defaults_serve_the_mock() -> None:
    cfg = resolve(args(), {})
    assert cfg.upstream is None and cfg.server.port == 3000 and cfg.server.host == "127.0.0.1"
    assert "mock" in describe_upstream(cfg)


def test_start_line_names_the_gateway_providers_and_models() -> None:
    cfg = ProxyConfig.model_validate(
        {
            "providers": {"oai": {"base_url": "http://x.test"}},
            "models": {"fast": [{"provider": "oai", "model": "m"}]},
        }
    )
    line = describe_upstream(cfg)
    assert "providers=oai" in line and "models=fast" in line and "mock" not in line


def test_cli_beats_yaml_beats_env_beats_defaults(tmp_path: pathlib.Path) -> None:
    env = {
        "SANSPROXY_PORT": "4001",
        "SANSPROXY_HOST": "0.0.0.0",
        "SANSPROXY_BASE_URL": "http://env.test",
        "SANSPROXY_LOG_LEVEL": "debug",
        "SANSPROXY_LIMITS__MAX_BODY_SIZE": "1234",
    }
    config = write(tmp_path, "server: {port: 4002}\nupstream: {base_url: http://yaml.test}\n")
    cfg = resolve(args("--config", config, "--base-url", "http://cli.test"), env)
    assert cfg.server.port == 4002  # YAML over env
    assert cfg.server.host == "0.0.0.0"  # env over default
    assert cfg.upstream is not None and cfg.upstream.base_url == "http://cli.test"  # CLI over YAML
    assert cfg.log_level == "debug"
    assert cfg.limits.max_body_size == 1234
    cfg = resolve(args("--config", config, "--port", "4003"), env)
    assert cfg.server.port == 4003
    assert cfg.upstream is not None and cfg.upstream.base_url == "http://yaml.test"


def test_env_alone_configures_an_upstream_and_a_trace_dir() -> None:
    env = {
        "SANSPROXY_BASE_URL": "https://api.anthropic.com",
        "SANSPROXY_TYPE": "anthropic",
        "SANSPROXY_API_KEY": "sk-env",
        "SANSPROXY_TRACE_DIR": "/tmp/t",
        "OTHER": "ignored",
    }
    cfg = resolve(args(), env)
    assert cfg.upstream is not None and cfg.upstream.type == "anthropic"
    assert cfg.upstream.api_key is not None and cfg.upstream.api_key.get_secret_value() == "sk-env"
    assert cfg.middleware == ({"trace": {"dir": "/tmp/t"}},)
    assert "sk-env" not in repr(cfg)


def test_yaml_env_vars_are_substituted_and_a_missing_one_is_named(tmp_path: pathlib.Path) -> None:
    config = write(tmp_path, "upstream:\n  base_url: http://h\n  api_key: ${MY_KEY}\n")
    cfg = resolve(args("--config", config), {"MY_KEY": "sk-yaml"})
    assert cfg.upstream is not None and cfg.upstream.api_key is not None
    assert cfg.upstream.api_key.get_secret_value() == "sk-yaml"
    with pytest.raises(ConfigError) as caught:
        resolve(args("--config", config), {})
    assert str(caught.value) == (
        f"{config}: upstream.api_key: environment variable MY_KEY is not set "
        "(set it before starting)"
    )


def test_trace_dir_flag_overrides_the_yaml_trace_entry(tmp_path: pathlib.Path) -> None:
    config = write(tmp_path, "middleware:\n  - trace: {dir: /a, max_events: 5}\n")
    cfg = resolve(args("--config", config, "--trace-dir", "/b"), {})
    assert cfg.middleware == ({"trace": {"dir": "/b", "max_events": 5}},)


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        (
            "upstream: {base_url: ftp://x}\n",
            "upstream.base_url: invalid value 'ftp://x' "
            "(expected a URL starting with http:// or https://)",
        ),
        (
            "server: {port: 70000}\n",
            "server.port: invalid value 70000 (expected an integer from 0 to 65535)",
        ),
        (
            "limits: {max_body: 1}\n",
            "limits: unknown option 'max_body' (options: max_body_size, max_header_size, "
            "max_sse_event_size, max_trace_body, max_trace_events, max_json_items, backend, "
            "redis_url, redis_timeout, redis_retry_interval, on_backend_error; "
            "did you mean 'max_body_size'?)",
        ),
        (
            "upstream: {type: openai}\n",
            "upstream: missing option 'base_url' (required with type: the API's address, "
            "from --base-url, SANSPROXY_BASE_URL or upstream.base_url)",
        ),
        ("[1, 2]\n", "invalid value a list (expected a mapping of options)"),
        (
            "server: {port: [\n",
            "line 2, column 1: invalid YAML (expected the node content, but found '<stream end>')",
        ),
        (
            "middleware: [nope]\n",
            "middleware[0]: unknown middleware 'nope' (built-ins: trace, auth, validate, "
            "guardrails, rate_limit, retry; custom ones: 'package.module:attr')",
        ),
    ],
)
def test_bad_configs_are_one_readable_message(
    tmp_path: pathlib.Path, yaml_text: str, message: str
) -> None:
    config = write(tmp_path, yaml_text)
    with pytest.raises(ConfigError) as caught:
        load(args("--config", config), {})
    assert str(caught.value) == f"{config}: {message}"


def test_missing_config_file_is_named() -> None:
    with pytest.raises(ConfigError) as caught:
        resolve(args("--config", "/nonexistent/x.yaml"), {})
    assert str(caught.value) == (
        "--config: cannot read /nonexistent/x.yaml (No such file or directory)"
    )


def test_empty_yaml_is_the_defaults(tmp_path: pathlib.Path) -> None:
    assert resolve(args("--config", write(tmp_path, "")), {}).server.port == 3000


EXAMPLE = pathlib.Path(__file__).resolve().parents[2] / "config.example.yaml"


def test_the_example_config_loads() -> None:
    # As it is, every option commented out: the defaults, the mock, nothing required.
    loaded = load(args("--config", str(EXAMPLE)), {})
    assert loaded.config == ProxyConfig()


def test_the_example_gateway_block_loads(tmp_path: pathlib.Path) -> None:
    # Uncomment every option, as a user would, but the shorthand upstream (not both).
    lines = example_uncommented().splitlines()
    start = lines.index("upstream:")
    end = next(i for i in range(start + 1, len(lines)) if lines[i] and not lines[i][0].isspace())
    text = "\n".join(lines[:start] + lines[end:])
    text = text.replace('"<64 hex digits>"', '"' + "ab" * 32 + '"', 1)
    text = text.replace('"<64 hex digits>"', '"' + "cd" * 32 + '"', 1)
    env = {"OPENAI_API_KEY": "sk-o", "ANTHROPIC_API_KEY": "sk-a", "LANGFUSE_SECRET_KEY": "sk-l"}
    loaded = load(args("--config", write(tmp_path, text)), env)
    telemetry = loaded.config.telemetry
    assert telemetry.langfuse is not None and telemetry.enabled
    assert telemetry.langfuse.secret_key.get_secret_value() == "sk-l"
    router = loaded.proxy.router
    assert set(router.models) == {"fast", "smart", "mixed", "tuned", "best"}
    assert router.fallbacks["best"] == ("smart", "fast")
    names = [type(mw).__name__ for mw in loaded.proxy.pipeline.middleware]
    assert names == [
        "TraceMiddleware",
        "AuthMiddleware",
        "ValidateMiddleware",
        "GuardrailsMiddleware",
        "RateLimitMiddleware",
        "RetryMiddleware",
    ]
    (auth,) = (mw for mw in loaded.proxy.pipeline.middleware if isinstance(mw, AuthMiddleware))
    assert [key.name for key in auth.keys] == ["team-a", "batch"]
    assert auth.keys[0].budget is not None and auth.keys[0].budget.period == "day"
    assert router.providers["claude"].type == "anthropic"
    tuned = router.models["tuned"][0]
    assert tuned.price is not None and tuned.price.cached_input == 0.15
    assert loaded.config.translation.default_max_tokens == 4096


def _gateway(providers: dict[str, str], models: list[str]) -> ProxyConfig:
    return ProxyConfig.model_validate(
        {
            "providers": {
                name: {"base_url": "http://x.test", "type": t} for name, t in providers.items()
            },
            "models": {
                name: [{"provider": next(iter(providers)), "model": "m"}] for name in models
            },
        }
    )


@pytest.mark.parametrize(
    ("config", "adapter", "fields"),
    [
        (ProxyConfig(), "h11", "adapter=h11 workers=1 upstream=mock"),
        (
            _gateway({"oai": "openai", "claude": "anthropic"}, ["smart", "fast"]),
            "h11",
            "adapter=h11 workers=1 providers=claude,oai models=fast,smart",
        ),
        (
            _gateway({"oai": "openai"}, []),
            "trio",
            "adapter=trio workers=1 providers=oai models=none",
        ),
        (
            ProxyConfig.model_validate(
                {"upstream": {"base_url": "https://api.anthropic.com", "type": "anthropic"}}
            ),
            "asgi",
            "adapter=asgi workers=1 upstream=https://api.anthropic.com type=anthropic",
        ),
        # Workers are the ASGI adapter's alone; a value with a space is quoted.
        (
            ProxyConfig.model_validate(
                {"server": {"workers": 4}, "providers": {"my oai": {"base_url": "http://x.test"}}}
            ),
            "asgi",
            'adapter=asgi workers=4 providers="my oai" models=none',
        ),
        (
            ProxyConfig.model_validate({"server": {"workers": 4}}),
            "h11",
            "adapter=h11 workers=1 upstream=mock",
        ),
    ],
)
def test_start_line_is_one_key_value_per_field(
    config: ProxyConfig, adapter: str, fields: str
) -> None:
    line = startup_line(config, adapter=adapter, port=3456)
    assert line == f"sansproxy listening on http://127.0.0.1:3456 {fields}"


def test_start_line_brackets_an_ipv6_host() -> None:
    config = ProxyConfig.model_validate({"server": {"host": "::1"}})
    assert startup_line(config, adapter="h11", port=80).startswith(
        "sansproxy listening on http://[::1]:80 "
    )


def test_cannot_listen_gives_the_os_reason_in_one_wording() -> None:
    # asyncio's socket.create_server decorates the reason; the line does not.
    decorated = OSError(
        errno.EADDRINUSE, "Address already in use (while attempting to bind on address ('x', 1))"
    )
    assert listen_error("127.0.0.1", 3000, decorated) == (
        "cannot listen on 127.0.0.1:3000: address already in use"
    )
    assert listen_error("::1", 80, OSError(errno.EACCES, "Permission denied")) == (
        "cannot listen on [::1]:80: permission denied"
    )
    unknown = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    assert listen_error("nowhere.invalid", 3000, unknown) == (
        "cannot listen on nowhere.invalid:3000: name or service not known"
    )


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {option for action in parser._actions for option in action.option_strings}


def test_sansproxy_serve_takes_every_adapter_flag() -> None:
    command = build_command()
    serve = command.parse_args(["serve"])
    assert serve.adapter == "h11"  # the README's first command
    subparsers = next(a for a in command._actions if isinstance(a, argparse._SubParsersAction))
    assert set(subparsers.choices) == {"serve", "keys", "check-config"}
    flags = _options(build_parser("python -m adapters.asgi", "", workers=True))
    assert _options(subparsers.choices["serve"]) == flags | {"--adapter"}
    assert _options(subparsers.choices["check-config"]) == flags - {"--config"}
    # The same flags mean the same configuration.
    argv = ["--port", "0", "--base-url", "http://up.test", "--type", "anthropic", "--workers", "3"]
    assert resolve(command.parse_args(["serve", *argv]), {}) == resolve(
        build_parser("p", "", workers=True).parse_args(argv), {}
    )


# -- log format and access log ------------------------------------------------------------


def test_log_format_and_access_log_flags() -> None:
    cfg = resolve(args(), {})
    assert (cfg.log_format, cfg.access_log) == ("text", False)
    cfg = resolve(args("--log-format", "json", "--access-log"), {})
    assert (cfg.log_format, cfg.access_log) == ("json", True)
    assert resolve(args("--no-access-log"), {}).access_log is False


def test_log_format_and_access_log_from_env_yaml_and_flags(tmp_path: pathlib.Path) -> None:
    env = {"SANSPROXY_LOG_FORMAT": "json", "SANSPROXY_ACCESS_LOG": "true"}
    cfg = resolve(args(), env)
    assert (cfg.log_format, cfg.access_log) == ("json", True)
    config = write(tmp_path, "log_format: text\naccess_log: false\n")
    cfg = resolve(args("--config", config), env)  # YAML over env
    assert (cfg.log_format, cfg.access_log) == ("text", False)
    cfg = resolve(args("--config", config, "--log-format", "json", "--access-log"), env)
    assert (cfg.log_format, cfg.access_log) == ("json", True)  # flags over YAML


def test_a_bad_log_format_is_one_readable_message(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        args("--log-format", "xml")
    assert exited.value.code == 2
    assert "--log-format: invalid choice: 'xml'" in capsys.readouterr().err
    with pytest.raises(ConfigError) as caught:
        resolve(args(), {"SANSPROXY_LOG_FORMAT": "xml"})
    assert str(caught.value).startswith("SANSPROXY_LOG_FORMAT: log_format: invalid value 'xml'")
