"""Virtual keys for the ``auth`` middleware.

    python -m adapters.keys new NAME     a fresh key, printed once, and its config line
    python -m adapters.keys hash         the SHA-256 of a key read from stdin

The proxy stores only the SHA-256 of a key: keep the key itself where your
clients read their secrets; paste the printed line under ``auth: keys:`` (or
the hash as ``admin_key_sha256``).
"""

from __future__ import annotations

import argparse
import hashlib
import re
import secrets
import sys

__all__ = ["PREFIX", "add_commands", "main", "new_key", "run", "sha256_hex"]

#: Every key starts with it, so a leaked one is easy to recognise in a scan.
PREFIX = "sk-sp-"
_NAME = re.compile(r"^[A-Za-z0-9._:@-]+$")


def new_key() -> str:
    """A fresh key: the prefix and 256 random bits, URL-safe."""
    return PREFIX + secrets.token_urlsafe(32)


def sha256_hex(key: str) -> str:
    """What the config stores of a key."""
    return hashlib.sha256(key.encode()).hexdigest()


def add_commands(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``new NAME`` and ``hash`` to ``parser`` (``python -m adapters.keys`` or
    ``sansproxy keys``)."""
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    new = sub.add_parser(
        "new",
        help="make a key for NAME; print it once, with its config line",
        description="Make a key for NAME: print it once, and the config line that accepts it.",
    )
    new.add_argument("name", metavar="NAME", help="who the key is for (letters, digits, ._:@-)")
    sub.add_parser(
        "hash",
        help="print the SHA-256 of a key read from stdin",
        description="Print the SHA-256 of a key read from stdin (for admin_key_sha256).",
    )
    return parser


def run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """Carry out the command ``add_commands`` parsed; a bad NAME or no key exits 2."""
    if args.command == "new":
        if not _NAME.match(args.name):
            parser.error(f"NAME must be letters, digits and . _ : @ - only, not {args.name!r}")
        key = new_key()
        print(f"key (shown once, give it to the client): {key}")
        print("config line (under middleware: - auth: keys:):")
        print(f'  - {{name: {args.name}, key_sha256: "{sha256_hex(key)}"}}')
        return 0
    key = sys.stdin.readline().strip()
    if not key:
        parser.error("hash: no key on stdin")
    print(sha256_hex(key))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m adapters.keys``."""
    parser = add_commands(
        argparse.ArgumentParser(
            prog="python -m adapters.keys", description=__doc__.split("\n\n")[0]
        )
    )
    return run(parser, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
