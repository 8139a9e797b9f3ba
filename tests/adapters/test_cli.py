"""Configuration loading: precedence CLI > YAML > environment > defaults."""

from __future__ import annotations

import argparse
import pathlib

import pytest

from adapters._cli import ConfigError, build_parser, describe_upstream, load, resolve
from core import ProxyConfig
from core.policies import AuthMiddleware


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
    with pytest.raises(ConfigError, match=r"upstream\.api_key: environment variable MY_KEY"):
        resolve(args("--config", config), {})


def test_trace_dir_flag_overrides_the_yaml_trace_entry(tmp_path: pathlib.Path) -> None:
    config = write(tmp_path, "middleware:\n  - trace: {dir: /a, max_events: 5}\n")
    cfg = resolve(args("--config", config, "--trace-dir", "/b"), {})
    assert cfg.middleware == ({"trace": {"dir": "/b", "max_events": 5}},)


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("upstream: {base_url: ftp://x}\n", "upstream.base_url: must start with http"),
        ("server: {port: 70000}\n", "server.port: Input should be less than or equal to 65535"),
        ("limits: {max_body: 1}\n", "limits.max_body: Extra inputs are not permitted"),
        ("upstream: {type: openai}\n", "without a base URL"),
        ("[1, 2]\n", "the top level must be a mapping"),
        ("server: {port: [\n", "line 2"),
        ("middleware: [nope]\n", "unknown middleware 'nope'"),
    ],
)
def test_bad_configs_are_one_readable_message(
    tmp_path: pathlib.Path, yaml_text: str, message: str
) -> None:
    config = write(tmp_path, yaml_text)
    with pytest.raises(ConfigError, match=message):
        load(args("--config", config), {})


def test_missing_config_file_is_named() -> None:
    with pytest.raises(ConfigError, match="No such file"):
        resolve(args("--config", "/nonexistent/x.yaml"), {})


def test_empty_yaml_is_the_defaults(tmp_path: pathlib.Path) -> None:
    assert resolve(args("--config", write(tmp_path, "")), {}).server.port == 3000


EXAMPLE = pathlib.Path(__file__).resolve().parents[2] / "config.example.yaml"


def test_the_example_config_loads() -> None:
    loaded = load(args("--config", str(EXAMPLE)), {"OPENAI_API_KEY": "sk-x"})
    assert loaded.config.upstream is not None
    assert loaded.config.middleware == ({"trace": {"dir": "./traces"}},)


def _policy(line: str) -> str:
    """Uncomment the example's commented middleware entries (with a real key hash)."""
    if line.startswith("  # - mypackage"):
        return line
    if line.startswith(("  # - ", "  #     ", "  #       ")):
        line = "  " + line[4:]
        return line.replace("<64 hex digits>", "ab" * 32, 1).replace(
            'batch, key_sha256: "abab', 'batch, key_sha256: "cdab'
        )
    return line


def test_the_example_gateway_block_loads(tmp_path: pathlib.Path) -> None:
    # Swap the shorthand for the commented gateway example, as a user would.
    lines = EXAMPLE.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("upstream:"))
    end = next(i for i in range(start + 1, len(lines)) if lines[i] and not lines[i][0].isspace())
    out = lines[:start] + lines[end:]
    text = "\n".join(
        line[2:]
        if line.startswith(("# providers:", "# models:", "# translation:", "#   "))
        else _policy(line)
        for line in out
    )
    env = {"OPENAI_API_KEY": "sk-o", "ANTHROPIC_API_KEY": "sk-a"}
    loaded = load(args("--config", write(tmp_path, text)), env)
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
