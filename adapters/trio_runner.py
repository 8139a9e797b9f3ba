"""The h11 server on trio: ``python -m adapters.trio_runner``.

Same flags and behaviour as ``adapters.h11_server``; the code is shared and
runs on anyio's trio backend.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from .h11_server import run

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``python -m adapters.trio_runner``."""
    run(argv, adapter="trio", backend="trio")


if __name__ == "__main__":
    main(sys.argv[1:])
