"""A real redis-server of the test's own, on a free loopback port, that can be stopped
and started again on the same port (Redis going away mid-test, and coming back), or
paused (SIGSTOP: it hangs without closing anything).

`redis_missing()` says why one cannot be started here; `require_redis()` turns that
into a skip locally and a failure under CI (``CI`` set), as the README promises.
"""

from __future__ import annotations

import importlib.util
import shutil
import signal
import socket
import subprocess
import threading
from pathlib import Path
from types import TracebackType

import pytest
import redis
import trustme

from tests.support.needs import require

__all__ = ["RedisServer", "redis_missing", "require_redis", "self_signed"]

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
    require("a real Redis", redis_missing())


def self_signed(directory: Path) -> tuple[Path, Path, Path]:
    """A CA's certificate, and a certificate for 127.0.0.1 it signed and its key
    (PEM files, made by ``trustme``)."""
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1")
    paths = directory / "ca.crt", directory / "redis.crt", directory / "redis.key"
    ca.cert_pem.write_to_path(str(paths[0]))
    issued.cert_chain_pems[0].write_to_path(str(paths[1]))
    issued.private_key_pem.write_to_path(str(paths[2]))
    return paths


class RedisServer:
    """``redis-server`` on 127.0.0.1; ``stop()``/``start()`` keep its port and data dir.

    ``persist=True``: it saves on a clean stop (SIGTERM), so data survives a restart
    like a production Redis's; else nothing is ever written to disk. ``args`` are
    more ``redis-server`` options (``--requirepass``, say).
    """

    def __init__(self, directory: Path, *args: str, persist: bool = False) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port: int = sock.getsockname()[1]
        self.directory = directory
        self.args = args
        self.persist = persist
        self.process: subprocess.Popen[str] | None = None
        self.log: list[str] = []

    def url(self, password: str | None = None) -> str:
        auth = f":{password}@" if password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def client(self, password: str | None = None) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, password=password, socket_timeout=10)

    def start(self) -> None:
        """Start it; return once it accepts connections (it says so: no polling)."""
        assert self.process is None, "already running"
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--save", "3600 1" if self.persist else "", "--appendonly", "no"]
        command += ["--dir", str(self.directory), *self.args]
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert process.stdout is not None
        for line in process.stdout:
            self.log.append(line)
            if _READY in line:
                break
        else:
            process.wait(timeout=10)
            pytest.fail("redis-server did not start:\n" + "".join(self.log))
        # Keep reading its output, so that a full pipe never blocks it.
        threading.Thread(target=self.log.extend, args=(process.stdout,), daemon=True).start()
        self.process = process

    def pause(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """SIGTERM (after SIGCONT, in case it is paused): it saves if persisting, exits."""
        process, self.process = self.process, None
        if process is not None:
            process.send_signal(signal.SIGCONT)
            process.terminate()
            process.wait(timeout=10)

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
