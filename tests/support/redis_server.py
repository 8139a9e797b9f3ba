"""A real redis-server of the test's own, on a free loopback port, that can be stopped
and started again on the same port (Redis going away mid-test, and coming back).

`redis_missing()` says why one cannot be started here; `require_redis()` turns that
into a skip locally and a failure under CI (``CI`` set), as the README promises.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
from pathlib import Path
from types import TracebackType

import pytest

__all__ = ["RedisServer", "redis_missing", "require_redis"]

_READY = "Ready to accept connections"


def redis_missing() -> str | None:
    """Why no Redis can be started here, or None."""
    if shutil.which("redis-server") is None:
        return "redis-server is not on PATH (Debian: apt-get install redis-server)"
    if importlib.util.find_spec("redis") is None:
        return "the redis package is not installed (pip install redis)"
    return None


def require_redis() -> None:
    """Skip the test without a Redis (with the reason); fail it under CI."""
    reason = redis_missing()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI needs a real Redis: {reason}")
        pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class RedisServer:
    """``redis-server`` on 127.0.0.1; ``stop()`` and ``start()`` keep its port and data dir.

    With ``persist=True`` it saves on stop (``--save`` after each write is not needed:
    a clean SHUTDOWN saves), so data survives a restart like a production Redis's.
    """

    def __init__(self, directory: Path, *, port: int | None = None, persist: bool = True) -> None:
        self.port = port or _free_port()
        self.directory = directory
        self.persist = persist
        self._process: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start it and return once it accepts connections (it says so: no polling)."""
        assert self._process is None, "already running"
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--dir", str(self.directory), "--appendonly", "no"]
        command += ["--save", "3600 1" if self.persist else ""]
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert process.stdout is not None
        log = []
        for line in process.stdout:
            log.append(line)
            if _READY in line:
                break
        else:
            process.wait(timeout=10)
            raise RuntimeError("redis-server did not start:\n" + "".join(log))
        self._process = process

    def stop(self) -> None:
        """SIGTERM: Redis saves its data (when persisting) and exits."""
        process = self._process
        if process is None:
            return
        self._process = None
        process.terminate()
        process.wait(timeout=10)
        assert process.stdout is not None
        process.stdout.close()

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
