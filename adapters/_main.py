"""The ``sansproxy`` command (installed by ``pip install``).

    sansproxy serve [--adapter h11|asgi|trio|httptools] [flags]
                                            serve (python -m adapters.<adapter>)
    sansproxy keys new NAME | keys hash     virtual keys (python -m adapters.keys)
    sansproxy check-config FILE [flags]     validate; print the effective config
    sansproxy --version

The ``python -m adapters.*`` commands stay as they are; this is one name for them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib import metadata

from . import keys
from ._cli import EPILOG, PROG, add_flags, load_args
from ._effective_config import effective_config

__all__ = ["ADAPTERS", "build_parser", "main"]

#: ``--adapter`` choices; the first is the default (the README's first command).
ADAPTERS = ("h11", "asgi", "trio", "httptools")
_ADAPTER_HELP = (
    "h11: our own HTTP/1.1 server on asyncio (uvloop); asgi: a Starlette app under "
    "uvicorn (the one with --workers); trio: the h11 server on trio; httptools: our "
    "server with llhttp as its request parser, the fastest (default h11)"
)


def version() -> str:
    """The installed distribution's version."""
    try:
        return metadata.version("sansproxy")
    except metadata.PackageNotFoundError:  # run from a source tree, not installed
        return "unknown (not installed: pip install -e .)"


def build_parser() -> argparse.ArgumentParser:
    """``sansproxy`` and its subcommands."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="sansproxy: an LLM API proxy with a sans-IO core.",
        epilog="`sansproxy COMMAND --help` lists a command's flags.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {version()}")
    commands = parser.add_subparsers(dest="subcommand", required=True, metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help=(
            "serve the proxy (what python -m "
            "adapters.h11_server|asgi|trio_runner|httptools_server does)"
        ),
        description="Serve the proxy until SIGINT/SIGTERM.",
        epilog=EPILOG,
    )
    serve.add_argument("--adapter", choices=ADAPTERS, default=ADAPTERS[0], help=_ADAPTER_HELP)
    add_flags(serve, workers=True)
    serve.set_defaults(command_parser=serve)
    keys_parser = commands.add_parser(
        "keys",
        help="virtual keys for the auth middleware: keys new NAME, keys hash",
        description=(keys.__doc__ or "").split("\n\n")[0],
    )
    keys.add_commands(keys_parser)
    keys_parser.set_defaults(command_parser=keys_parser)
    check = commands.add_parser(
        "check-config",
        help="validate a config file; print the effective configuration, secrets masked",
        description=(
            "Validate FILE as `sansproxy serve --config FILE [flags]` would (flags and "
            "SANSPROXY_* environment included) and print the configuration it would run "
            "with, defaults included, secrets masked. A problem is one line and exit status 2."
        ),
    )
    check.add_argument("config", metavar="FILE", help="YAML configuration file")
    add_flags(check, workers=True, config=False)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``sansproxy`` console script."""
    args = build_parser().parse_args(argv)
    try:
        if args.subcommand == "serve":
            _serve(args.command_parser, args)
        elif args.subcommand == "keys":
            sys.exit(keys.run(args.command_parser, args))
        else:
            _check_config(args)
    except KeyboardInterrupt:  # before the server handles signals, or in `keys hash`
        sys.exit(130)


def _serve(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    prog = f"{PROG} serve"
    if args.adapter != "asgi" and args.workers is not None and args.workers != 1:
        parser.error(f"--workers: only --adapter asgi runs worker processes, not {args.adapter}")
    loaded = load_args(prog, args)
    # Imported here: `sansproxy --version` or `keys` need not load uvicorn or trio.
    if args.adapter == "asgi":
        from . import asgi  # noqa: PLC0415

        asgi.start(loaded)
    elif args.adapter == "httptools":
        from . import httptools_server  # noqa: PLC0415

        httptools_server.start(loaded)
    else:
        from . import h11_server  # noqa: PLC0415

        backend = "trio" if args.adapter == "trio" else "asyncio"
        h11_server.start(loaded, adapter=args.adapter, backend=backend)


def _check_config(args: argparse.Namespace) -> None:
    loaded = load_args(f"{PROG} check-config", args)
    print(f"# {args.config}: valid. The effective configuration (secrets masked):")
    print(effective_config(loaded.config), end="")


if __name__ == "__main__":
    main()
