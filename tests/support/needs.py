"""What a test needs of the machine: a real server the project did not write.

Missing, it fails the test under CI (``CI`` set) and skips it elsewhere, saying
how to install it: a test never passes, nor silently skips, in CI without its
real dependency.
"""

from __future__ import annotations

import os
import socket

import pytest

__all__ = ["free_port", "require"]


def require(what: str, reason: str | None) -> None:
    """Go on if ``reason`` is None; else fail (under CI) or skip, saying why."""
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"CI needs {what}: {reason}")
    pytest.skip(reason)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port
