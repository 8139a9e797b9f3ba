"""Command line and configuration loading shared by every adapter.

Precedence: CLI flags > ``--config`` YAML > environment (``SANSPROXY_*``) >
defaults. A bad flag or config is one readable message and exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

import yaml
from pydantic import ValidationError

from core import Proxy, ProxyConfig

__all__ = ["ConfigError", "Loaded", "describe_upstream", "load", "parse_args", "setup_logging"]

logger = logging.getLogger("sansproxy")

_ENV_PREFIX = "SANSPROXY_"
# Flat environment names, mirroring the command-line flags.
_ENV_FLAT = {
    "HOST": ("server", "host"),
    "PORT": ("server", "port"),
    "WORKERS": ("server", "workers"),
    "BASE_URL": ("upstream", "base_url"),
    "TYPE": ("upstream", "type"),
    "API_KEY": ("upstream", "api_key"),
    "LOG_LEVEL": ("log_level",),
}
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
# ${VAR} may stand anywhere, even inside a YAML flow mapping ({api_key: ${KEY}}),
# where braces would break the parse: it becomes this plain token first.
_TOKEN = re.compile(r"__sansproxy_env_([A-Za-z_][A-Za-z0-9_]*?)_end__")


class ConfigError(Exception):
    """A configuration problem, phrased for the person running the proxy."""


class Loaded:
    """A validated configuration and the proxy compiled from it."""

    __slots__ = ("config", "proxy")

    def __init__(self, config: ProxyConfig, proxy: Proxy) -> None:
        self.config = config
        self.proxy = proxy


def build_parser(prog: str, description: str, *, workers: bool = False) -> argparse.ArgumentParser:
    """The flags every adapter shares (``--workers`` only where it means something)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog=(
            "With no upstream configured, the built-in mock provider answers "
            "(OpenAI-style chat completions, embeddings and models). Precedence: "
            "flags > --config YAML > SANSPROXY_* environment > defaults. "
            "See config.example.yaml for every option."
        ),
    )
    add = parser.add_argument
    add("--host", help="address to listen on (default 127.0.0.1)")
    add("--port", type=int, help="port to listen on; 0 picks a free one (default 3000)")
    if workers:
        add("--workers", type=int, help="worker processes (default 1)")
    add("--config", metavar="FILE", help="YAML configuration file")
    add("--base-url", metavar="URL", help="upstream base URL, e.g. https://api.openai.com")
    add("--type", choices=["openai", "anthropic"], help="the upstream's API (default openai)")
    add("--api-key", metavar="KEY", help="upstream API key (prefer ${ENV} in YAML or the env)")
    add("--trace-dir", metavar="DIR", help="trace each request: JSON lines, hourly files in DIR")
    add("--log-level", choices=["debug", "info", "warning", "error"], help="default info")
    return parser


def _set(tree: dict[str, Any], path: Sequence[str], value: Any) -> None:
    for key in path[:-1]:
        child = tree.get(key)
        if not isinstance(child, dict):
            child = tree[key] = {}
        tree = child
    tree[path[-1]] = value


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for name, value in environ.items():
        if not name.startswith(_ENV_PREFIX) or name == "SANSPROXY_CONFIG_JSON":
            continue
        key = name[len(_ENV_PREFIX) :]
        if key in _ENV_FLAT:
            _set(tree, _ENV_FLAT[key], value)
        elif "__" in key:
            _set(tree, [part.lower() for part in key.split("__")], value)
        elif key == "TRACE_DIR":
            tree["trace_dir"] = value
    return tree


def _substitute(value: Any, environ: Mapping[str, str], where: str) -> Any:
    if isinstance(value, str):

        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in environ:
                raise ConfigError(f"{where}: environment variable {name} is not set")
            return environ[name]

        return _TOKEN.sub(replace, value)
    if isinstance(value, dict):
        return {k: _substitute(v, environ, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, environ, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


def _read_yaml(path: str, environ: Mapping[str, str]) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            text = _VAR.sub(lambda m: f"__sansproxy_env_{m.group(1)}_end__", f.read())
        data = yaml.safe_load(text)
    except OSError as exc:
        raise ConfigError(f"--config {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"--config {path}: {problem}{at}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: the top level must be a mapping")
    result = _substitute(data, environ, path)
    assert isinstance(result, dict)
    return result


def _apply_trace_dir(tree: dict[str, Any], directory: str) -> None:
    middleware = tree.get("middleware") or []
    if not isinstance(middleware, list):
        return  # let validation report it
    for item in middleware:
        if isinstance(item, dict) and "trace" in item:
            options = item["trace"] if isinstance(item["trace"], dict) else {}
            item["trace"] = {**options, "dir": directory}
            break
    else:
        middleware = [*middleware, {"trace": {"dir": directory}}]
    tree["middleware"] = middleware


def _format_validation(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        loc = ".".join(str(part) for part in error["loc"]) or "config"
        message = error["msg"].removeprefix("Value error, ")
        lines.append(f"{loc}: {message}")
    return "; ".join(lines)


def resolve(args: argparse.Namespace, environ: Mapping[str, str]) -> ProxyConfig:
    """Merge flags, YAML, environment and defaults into one validated config."""
    env_tree = _from_env(environ)
    trace_dir = env_tree.pop("trace_dir", None)
    tree = env_tree
    config_path = args.config or environ.get("SANSPROXY_CONFIG")
    if config_path:
        tree = _merge(tree, _read_yaml(config_path, environ))
    cli: dict[str, Any] = {}
    for flag, path in (
        ("host", ("server", "host")),
        ("port", ("server", "port")),
        ("workers", ("server", "workers")),
        ("base_url", ("upstream", "base_url")),
        ("type", ("upstream", "type")),
        ("api_key", ("upstream", "api_key")),
        ("log_level", ("log_level",)),
    ):
        value = getattr(args, flag, None)
        if value is not None:
            _set(cli, path, value)
    tree = _merge(tree, cli)
    trace_dir = args.trace_dir or trace_dir
    if trace_dir:
        _apply_trace_dir(tree, trace_dir)
    upstream = tree.get("upstream")
    if isinstance(upstream, dict) and "base_url" not in upstream:
        given = ", ".join(sorted(upstream))
        raise ConfigError(f"upstream: {given} given without a base URL (--base-url)")
    try:
        return ProxyConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_format_validation(exc)) from None


def load(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Loaded:
    """Validate the configuration and compile the proxy; raises ``ConfigError``."""
    config = resolve(args, os.environ if environ is None else environ)
    try:
        proxy = Proxy(config)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"middleware: {exc}") from None
    return Loaded(config, proxy)


def fail(prog: str, message: str) -> NoReturn:
    """Print one readable line and exit with status 2."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def parse_args(
    prog: str, description: str, argv: Sequence[str] | None = None, *, workers: bool = False
) -> Loaded:
    """Parse the command line and load the configuration, or exit 2 with a message."""
    args = build_parser(prog, description, workers=workers).parse_args(argv)
    try:
        return load(args)
    except ConfigError as exc:
        fail(prog, f"config: {exc}")


def setup_logging(level: str) -> None:
    """One line per record on stderr; uvicorn's loggers follow the same level."""
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("sansproxy").setLevel(level.upper())
    # Where we listen is said whatever the level: with --port 0 it is the only
    # way to learn the port.
    logging.getLogger("sansproxy.startup").setLevel(logging.INFO)


def describe_upstream(config: ProxyConfig) -> str:
    """What the start-up line says about where requests go."""
    if config.providers:
        models = ", ".join(sorted(config.models)) or "none (use provider/model)"
        return f"providers={', '.join(sorted(config.providers))} models={models}"
    if config.upstream is None:
        return "upstream=mock (built-in mock provider; pass --base-url to proxy a real API)"
    return f"upstream={config.upstream.type} {config.upstream.base_url}"
