"""Command line and configuration loading shared by every adapter.

Precedence: CLI flags > ``--config`` YAML > environment (``SANSPROXY_*``) >
defaults. A bad flag or config is one readable message and exit status 2.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import re
import signal
import socket
import sys
import threading
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

from pydantic import ValidationError

from core import Proxy, ProxyConfig
from core._config import ConfigProblem, format_path, show

from ._config_errors import ConfigError, Loc, Origins, describe_problem, describe_validation, line
from ._log_format import configure_logging
from ._store import proxy_for

__all__ = [
    "EPILOG",
    "PROG",
    "ConfigError",
    "Loaded",
    "add_flags",
    "build_parser",
    "cannot_listen",
    "describe_upstream",
    "fail",
    "listen_error",
    "load",
    "load_args",
    "log_startup",
    "parse_args",
    "setup_logging",
    "startup_line",
    "stopped",
]

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
    "LOG_FORMAT": ("log_format",),
    "ACCESS_LOG": ("access_log",),
}
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
# ${VAR} may stand anywhere, even inside a YAML flow mapping ({api_key: ${KEY}}),
# where braces would break the parse: it becomes this plain token first.
_TOKEN = re.compile(r"__sansproxy_env_([A-Za-z_][A-Za-z0-9_]*?)_end__")


class Loaded:
    """A validated configuration and the proxy compiled from it."""

    __slots__ = ("config", "proxy")

    def __init__(self, config: ProxyConfig, proxy: Proxy) -> None:
        self.config = config
        self.proxy = proxy


#: The program name of messages that do not depend on how the proxy was started.
PROG = "sansproxy"
#: What every serving command's ``--help`` ends with.
EPILOG = (
    "With no upstream configured, the built-in mock provider answers "
    "(OpenAI chat completions, embeddings and models; Anthropic messages). Precedence: "
    "flags > --config YAML > SANSPROXY_* environment > defaults. "
    "See config.example.yaml for every option."
)


def build_parser(prog: str, description: str, *, workers: bool = False) -> argparse.ArgumentParser:
    """The flags every adapter shares (``--workers`` only where it means something)."""
    parser = argparse.ArgumentParser(prog=prog, description=description, epilog=EPILOG)
    return add_flags(parser, workers=workers)


def add_flags(
    parser: argparse.ArgumentParser, *, workers: bool = False, config: bool = True
) -> argparse.ArgumentParser:
    """Add the shared flags to ``parser``; ``config=False`` leaves ``--config`` out (for a
    command that takes the file as its argument)."""
    add = parser.add_argument
    add("--host", help="address to listen on (default 127.0.0.1)")
    add("--port", type=int, help="port to listen on; 0 picks a free one (default 3000)")
    if workers:
        add("--workers", type=int, help="worker processes (default 1)")
    if config:
        add("--config", metavar="FILE", help="YAML configuration file")
    add("--base-url", metavar="URL", help="upstream base URL, e.g. https://api.openai.com")
    add("--type", choices=["openai", "anthropic"], help="the upstream's API (default openai)")
    add("--api-key", metavar="KEY", help="upstream API key (prefer ${ENV} in YAML or the env)")
    add("--trace-dir", metavar="DIR", help="trace each request: JSON lines, hourly files in DIR")
    add("--log-level", choices=["debug", "info", "warning", "error"], help="default info")
    add(
        "--log-format",
        choices=["text", "json"],
        help="log lines as text, or one JSON object per line (default text)",
    )
    add(
        "--access-log",
        action=argparse.BooleanOptionalAction,
        help="one log line per exchange, on the sansproxy.access logger (default off)",
    )
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


def _from_env(environ: Mapping[str, str], origins: Origins | None = None) -> dict[str, Any]:
    """The ``SANSPROXY_*`` variables as a tree (``origins`` learns which set what)."""
    tree: dict[str, Any] = {}
    for name, value in sorted(environ.items()):
        if not name.startswith(_ENV_PREFIX) or name == "SANSPROXY_CONFIG_JSON":
            continue
        key = name[len(_ENV_PREFIX) :]
        if key in _ENV_FLAT:
            path: Sequence[str] = _ENV_FLAT[key]
        elif "__" in key:
            path = [part.lower() for part in key.split("__")]
        elif key == "TRACE_DIR":
            path = ["trace_dir"]
        else:
            continue
        _set(tree, path, value)
        if origins is not None:
            for end in range(1, len(path)):
                if origins.of(tuple(path[:end])) is None:
                    origins.set(tuple(path[:end]), {}, name)
            origins.set(tuple(path), value, name)
    return tree


def _substitute(value: Any, environ: Mapping[str, str], path: str, where: Loc = ()) -> Any:
    """``${VAR}`` replaced in every string of the file ``path``'s tree."""
    if isinstance(value, str):

        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in environ:
                message = f"environment variable {name} is not set (set it before starting)"
                raise ConfigError(line(path, format_path(where), message))
            return environ[name]

        return _TOKEN.sub(replace, value)
    if isinstance(value, dict):
        return {k: _substitute(v, environ, path, (*where, k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, environ, path, (*where, i)) for i, v in enumerate(value)]
    return value


def _read_yaml(path: str, environ: Mapping[str, str], origin: str = "--config") -> dict[str, Any]:
    """The file ``path`` (named by ``origin``) as a tree, its ``${VAR}`` replaced."""
    try:
        with open(path, encoding="utf-8") as f:
            text = _VAR.sub(lambda m: f"__sansproxy_env_{m.group(1)}_end__", f.read())
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(line(origin, "", f"cannot read {path} ({reason})")) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(line(path, "", f"not UTF-8 text (byte {exc.start})")) from None
    import yaml  # noqa: PLC0415  (only a configuration file needs it)

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None)
        message = "invalid YAML" + (f" ({_TOKEN.sub(_unmark, problem)})" if problem else "")
        raise ConfigError(line(path, at, message)) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        message = f"invalid value {show(data)} (expected a mapping of options)"
        raise ConfigError(line(path, "", message))
    result = _substitute(data, environ, path)
    assert isinstance(result, dict)
    return result


def _apply_trace_dir(
    tree: dict[str, Any], directory: str, origins: Origins | None = None, origin: str = ""
) -> None:
    """Point the trace entry at ``directory`` (adding one if there is none)."""
    middleware = tree.get("middleware") or []
    if isinstance(middleware, dict):  # the mapping form
        options = middleware.get("trace")
        middleware["trace"] = {**(options if isinstance(options, dict) else {}), "dir": directory}
        tree["middleware"] = middleware
        if origins is not None:
            if not isinstance(options, dict):
                origins.set(("middleware", "trace"), {}, origin)
            origins.set(("middleware", "trace", "dir"), directory, origin)
        return
    if not isinstance(middleware, list):
        return  # let validation report it
    for i in range(len(middleware)):
        if middleware[i] == "trace":
            middleware[i] = {"trace": {}}
        item = middleware[i]
        if isinstance(item, dict) and "trace" in item:
            options = item["trace"] if isinstance(item["trace"], dict) else {}
            item["trace"] = {**options, "dir": directory}
            if origins is not None:
                origins.set(("middleware", i, "trace", "dir"), directory, origin)
            break
    else:
        middleware = [*middleware, {"trace": {"dir": directory}}]
        if origins is not None:
            if origins.of(("middleware",)) is None:
                origins.set(("middleware",), [], origin)
            origins.set(("middleware", len(middleware) - 1), middleware[-1], origin)
    tree["middleware"] = middleware


def _unmark(match: re.Match[str]) -> str:
    return f"${{{match.group(1)}}}"


#: OpenTelemetry's standard variables, where sansproxy's own leave a value unset.
_OTEL_ENV = (
    ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", ("telemetry", "otlp_endpoint")),
    ("OTEL_EXPORTER_OTLP_ENDPOINT", ("telemetry", "otlp_endpoint")),
    ("OTEL_SERVICE_NAME", ("telemetry", "service_name")),
)


def _otel_environment(tree: dict[str, Any], environ: Mapping[str, str], origins: Origins) -> None:
    """``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``..._TRACES_ENDPOINT``) turns the spans on,
    ``OTEL_SERVICE_NAME`` names the service: below every sansproxy setting."""
    for name, path in _OTEL_ENV:
        value = environ.get(name)
        section = tree.get(path[0])
        if not value or (isinstance(section, dict) and section.get(path[1]) is not None):
            continue
        if section is not None and not isinstance(section, dict):
            return  # a wrong telemetry value: validation says so
        tree.setdefault(path[0], {})[path[1]] = value
        origins.set(path, value, name)


def _resolve(
    args: argparse.Namespace, environ: Mapping[str, str]
) -> tuple[ProxyConfig, dict[str, Any], Origins]:
    """The validated config, the merged tree it came from, and where each value came from."""
    origins = Origins()
    env_tree = _from_env(environ, origins)
    trace_dir = env_tree.pop("trace_dir", None)
    tree = env_tree
    config_path = args.config or environ.get("SANSPROXY_CONFIG")
    if config_path:
        origin = "--config" if args.config else "SANSPROXY_CONFIG"
        layer = _read_yaml(config_path, environ, origin)
        origins.overlay(tree, layer, config_path)
        tree = _merge(tree, layer)
    for flag, path in (
        ("host", ("server", "host")),
        ("port", ("server", "port")),
        ("workers", ("server", "workers")),
        ("base_url", ("upstream", "base_url")),
        ("type", ("upstream", "type")),
        ("api_key", ("upstream", "api_key")),
        ("log_level", ("log_level",)),
        ("log_format", ("log_format",)),
        ("access_log", ("access_log",)),
    ):
        value = getattr(args, flag, None)
        if value is not None:
            cli: dict[str, Any] = {}
            _set(cli, path, value)
            origins.overlay(tree, cli, "--" + flag.replace("_", "-"))
            tree = _merge(tree, cli)
    if args.trace_dir:
        _apply_trace_dir(tree, args.trace_dir, origins, "--trace-dir")
    elif trace_dir:
        _apply_trace_dir(tree, trace_dir, origins, "SANSPROXY_TRACE_DIR")
    _otel_environment(tree, environ, origins)
    upstream = tree.get("upstream")
    if isinstance(upstream, dict) and "base_url" not in upstream:
        given = sorted(map(str, upstream))
        message = (
            f"missing option 'base_url' (required with {', '.join(given) or 'upstream'}: "
            "the API's address, from --base-url, SANSPROXY_BASE_URL or upstream.base_url)"
        )
        at: Loc = ("upstream", given[0]) if given else ("upstream",)
        raise ConfigError(line(origins.of(at), "upstream", message))
    try:
        return ProxyConfig.model_validate(tree), tree, origins
    except ValidationError as exc:
        raise ConfigError(describe_validation(exc, tree, origins)) from None


def resolve(args: argparse.Namespace, environ: Mapping[str, str]) -> ProxyConfig:
    """Merge flags, YAML, environment and defaults into one validated config."""
    return _resolve(args, environ)[0]


def load(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Loaded:
    """Validate the configuration and compile the proxy; raises ``ConfigError``."""
    config, tree, origins = _resolve(args, os.environ if environ is None else environ)
    try:
        proxy = proxy_for(config)
    except ConfigProblem as exc:
        raise ConfigError(describe_problem(exc, tree, origins)) from None
    except (ValueError, TypeError) as exc:
        raise ConfigError(line(origins.of(("middleware",)), "middleware", str(exc))) from None
    return Loaded(config, proxy)


def fail(prog: str, message: str) -> NoReturn:
    """Print one readable line and exit with status 2."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def parse_args(
    prog: str, description: str, argv: Sequence[str] | None = None, *, workers: bool = False
) -> Loaded:
    """Parse the command line and load the configuration, or exit 2 with a message."""
    return load_args(prog, build_parser(prog, description, workers=workers).parse_args(argv))


def load_args(prog: str, args: argparse.Namespace) -> Loaded:
    """Load the configuration parsed flags describe, or exit 2 with one line."""
    try:
        return load(args)
    except ConfigError as exc:
        fail(prog, str(exc))


def listen_error(host: str, port: int, exc: OSError) -> str:
    """Why the proxy cannot listen, in the same words on every adapter."""
    if isinstance(exc, socket.gaierror) or exc.errno is None:
        reason = exc.strerror or str(exc)  # a host that does not resolve
    else:
        reason = os.strerror(exc.errno)  # not the message the call decorated
    return f"cannot listen on {_host(host)}:{port}: {reason[:1].lower()}{reason[1:]}"


def cannot_listen(host: str, port: int, exc: OSError) -> NoReturn:
    """``sansproxy: error: cannot listen on HOST:PORT: REASON`` and exit status 2."""
    fail(PROG, listen_error(host, port, exc))


def stopped() -> None:
    """Log that the server stopped; from now on SIGINT and SIGTERM are ignored.

    The process only exits now: a Ctrl-C meanwhile would be a ``KeyboardInterrupt``
    traceback, or (the interpreter resets the handlers as it exits) a death by SIGINT.
    """
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
    logger.info("stopped")


def setup_logging(config: ProxyConfig) -> None:
    """Set up the process's logging (see ``adapters._log_format.configure_logging``)."""
    configure_logging(config)


def describe_upstream(config: ProxyConfig) -> str:
    """What the start-up line says about where requests go, as ``key=value`` fields."""
    if config.providers:
        return _fields(providers=sorted(config.providers), models=sorted(config.models) or "none")
    if config.upstream is None:
        return _fields(upstream="mock")
    return _fields(upstream=config.upstream.base_url, type=config.upstream.type)


def startup_line(config: ProxyConfig, *, adapter: str, port: int) -> str:
    """``sansproxy listening on http://HOST:PORT`` then one ``key=value`` per field."""
    workers = config.server.workers if adapter == "asgi" else 1
    where = f"http://{_host(config.server.host)}:{port}"
    return f"sansproxy listening on {where} {_fields(adapter=adapter, workers=workers)} " + (
        describe_upstream(config)
    )


def log_startup(config: ProxyConfig, *, adapter: str, port: int) -> None:
    """Log the start-up line (whatever the log level), and what a newcomer should know."""
    startup = logging.getLogger("sansproxy.startup")
    startup.info("%s", startup_line(config, adapter=adapter, port=port))
    if config.providers and not config.models:
        startup.info("no public models configured: clients name provider/model")
    elif not config.providers and config.upstream is None:
        startup.info(
            "no upstream configured: the built-in mock provider answers "
            "(--base-url, or providers in --config, to proxy a real API)"
        )


#: Young-generation passes between two full ones (Python's default: 10).
FULL_COLLECTION_EVERY = 100


def freeze_heap() -> None:
    """Start-up is over: what it made (modules, the config, the app) lives as long as
    the process; ``gc.freeze()`` keeps the garbage collector from walking it again at
    each full collection (measured: 1.8 % of a pass-through request's instructions,
    more with records waiting in the sinks' queues).

    An exchange and a connection leave no reference cycle behind (tested): what
    they made is freed by reference counting as soon as they end, and the
    collector has next to nothing to find. A full collection walks every live
    object -- with 5,000 streams open, 300,000 of them, 25 to 70 ms during which
    no connection is served (the bench's many-clients phase: time to first
    event p99 +60 ms, +2 ms with full collections ten times rarer). So they are:
    young generations are still collected as often as Python's defaults say.
    """
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, FULL_COLLECTION_EVERY)


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _fields(**fields: object) -> str:
    """``key=value`` pairs: a list comma-joined, a value with spaces or quotes quoted."""
    out = []
    for key, value in fields.items():
        text = ",".join(map(str, value)) if isinstance(value, list | tuple) else str(value)
        if not text or any(c.isspace() or c in "\"'=\\" for c in text):
            text = json.dumps(text, ensure_ascii=False)
        out.append(f"{key}={text}")
    return " ".join(out)
