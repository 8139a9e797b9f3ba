"""sansproxy's HTTP/1.1 server with llhttp (``httptools``) as its request parser.

    python -m adapters.httptools_server --port 3000

The same server as ``adapters.h11_server`` on asyncio (``adapters._loop_server``:
``asyncio.Protocol`` callbacks, uvloop when installed), the same flags and
behaviour, but requests are parsed by llhttp, in C, rather than by h11: the
fastest entry point. ``sansproxy serve --adapter httptools`` runs it.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from . import _loop_server
from ._cli import Loaded, parse_args

__all__ = ["main", "start"]


def start(loaded: Loaded) -> None:
    """Serve a loaded configuration until stopped."""
    _loop_server.start(loaded, adapter="httptools", codec=_loop_server.HttptoolsCodec)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``python -m adapters.httptools_server``."""
    start(
        parse_args(
            "python -m adapters.httptools_server",
            "sansproxy: an LLM API proxy (HTTP/1.1 server on asyncio, httptools parser).",
            argv,
        )
    )


if __name__ == "__main__":
    main(sys.argv[1:])
