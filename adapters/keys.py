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

__all__ = ["PREFIX", "main", "new_key", "sha256_hex"]

#: Every key starts with it, so a leaked one is easy to recognise in a scan.
PREFIX = "sk-sp-"
_NAME = re.compile(r"^[A-Za-z0-9._:@-]+$")


def new_key() -> str:
    """A fresh key: the prefix and 256 random bits, URL-safe."""
    return PREFIX + secrets.token_urlsafe(32)


def sha256_hex(key: str) -> str:
    """What the config stores of a key."""
    return hashlib.sha256(key.encode()).hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m adapters.keys", description=__doc__.split("\n\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    new = sub.add_parser("new", help="make a key for NAME; print it once, with its config line")
    new.add_argument("name")
    sub.add_parser("hash", help="print the SHA-256 of a key read from stdin")
    args = parser.parse_args(argv)
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


if __name__ == "__main__":
    sys.exit(main())
