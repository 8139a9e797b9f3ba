"""Run the proxy under test as a subprocess and watch its output.

`ProxyProcess` starts `python -m adapters.<module> ...` in its own session (so workers
it forks die with it), drains stdout and stderr in background threads (the child never
blocks on a full pipe), and waits for the start-up line
``listening on http://HOST:PORT`` on stderr to learn the port.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Final, Literal, Protocol, TypeVar

__all__ = [
    "ADAPTER_MODULES",
    "LISTENING_RE",
    "REPO_ROOT",
    "ProxyProcess",
    "ProxyStartError",
    "StartProxy",
    "proxy_argv",
    "proxy_env",
]

REPO_ROOT: Final = Path(__file__).resolve().parents[2]
LISTENING_RE: Final = re.compile(r"listening on http://(?P<host>[0-9.]+):(?P<port>\d+)")
ADAPTER_MODULES: Final = {
    "h11": "adapters.h11_server",
    "asgi": "adapters.asgi",
    "trio": "adapters.trio_runner",
    "httptools": "adapters.httptools_server",
}
START_TIMEOUT: Final = 15.0
# How often a wait re-checks whether the child has exited, in case its pipes stay
# open (a grandchild holding them) and no line arrives to wake the waiter.
_POLL: Final = 0.1

Stream = Literal["stdout", "stderr"]
_T = TypeVar("_T")


class ProxyStartError(RuntimeError):
    """The proxy did not log its listening line in time; the message holds its output."""


def proxy_env(overrides: Mapping[str, str | None] | None = None) -> dict[str, str]:
    """This process's environment without SANSPROXY_* variables, plus `overrides`.

    A value of None in `overrides` removes that variable.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("SANSPROXY_")}
    env["PYTHONUNBUFFERED"] = "1"
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    for key, value in (overrides or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


class ProxyProcess:
    """A running proxy subprocess. Call `wait_ready()` before using `port` or `base_url`."""

    def __init__(
        self, argv: Sequence[str], *, env: Mapping[str, str], cwd: Path = REPO_ROOT
    ) -> None:
        self.argv: list[str] = list(argv)
        self._cond = threading.Condition()
        self._lines: list[tuple[Stream, str]] = []
        self._open_pipes = 2
        self._host: str | None = None
        self._port: int | None = None
        self._popen = subprocess.Popen(
            self.argv,
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        assert self._popen.stdout is not None
        assert self._popen.stderr is not None
        self._threads = [
            threading.Thread(target=self._drain, args=(name, pipe), daemon=True, name=name)
            for name, pipe in (("stdout", self._popen.stdout), ("stderr", self._popen.stderr))
        ]
        for thread in self._threads:
            thread.start()

    def __repr__(self) -> str:
        return f"<ProxyProcess pid={self.pid} {self.command!r}>"

    # -- output ----------------------------------------------------------------------

    def _drain(self, name: Stream, pipe: IO[bytes]) -> None:
        try:
            for raw in iter(pipe.readline, b""):
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                with self._cond:
                    self._lines.append((name, line))
                    self._cond.notify_all()
        except (OSError, ValueError):  # the pipe was closed under us at teardown
            pass
        finally:
            with self._cond:
                self._open_pipes -= 1
                self._cond.notify_all()

    def logs(self, stream: Literal["all", "stdout", "stderr"] = "all") -> str:
        """Everything the child has written so far, one line per line, in arrival order."""
        with self._cond:
            return "".join(f"{line}\n" for name, line in self._lines if stream in ("all", name))

    def wait_for_log(self, pattern: str | re.Pattern[str], timeout: float = 5.0) -> re.Match[str]:
        """Wait until a line of output (any stream, past or future) matches `pattern`."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern

        def search() -> re.Match[str] | None:
            return next((m for _, line in self._lines if (m := regex.search(line))), None)

        match = self._wait(search, timeout)
        if match is None:
            raise TimeoutError(
                f"no output line matched {regex.pattern!r} within {timeout} s; "
                f"output so far:\n{self.logs()}"
            )
        return match

    def _wait(self, find: Callable[[], _T], timeout: float) -> _T:
        """Wait (under the lock) until find() is truthy or the child is gone; return it."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not (found := find()):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self._open_pipes == 0 and self._popen.poll() is not None):
                    break
                self._cond.wait(min(remaining, _POLL))
            return found

    # -- start-up --------------------------------------------------------------------

    def wait_ready(self, timeout: float = START_TIMEOUT) -> ProxyProcess:
        """Wait for the listening line on stderr; raise ProxyStartError (and kill) if none."""

        def search() -> re.Match[str] | None:
            return next(
                (
                    m
                    for name, line in self._lines
                    if name == "stderr" and (m := LISTENING_RE.search(line))
                ),
                None,
            )

        match = self._wait(search, timeout)
        if match is None:
            code = self._popen.poll()
            self.close()
            raise ProxyStartError(self._start_failure(code, timeout))
        host = match["host"]
        self._host = "127.0.0.1" if host == "0.0.0.0" else host
        self._port = int(match["port"])
        return self

    def _start_failure(self, code: int | None, timeout: float) -> str:
        module = self.argv[2] if len(self.argv) > 2 else "?"
        why = (
            f"exited with status {code}"
            if code is not None
            else f"was still running after {timeout} s (killed)"
        )
        output = self.logs()
        hints = []
        if "No module named" in output:
            hints.append(
                f"hint: is {module} written yet? (`python -m {module}` from the repo root)"
            )
        if LISTENING_RE.search(self.logs("stdout")):
            hints.append("hint: the listening line went to stdout; it must go to stderr")
        return "\n".join(
            [
                f"the proxy under test did not start: `{self.command}` {why} before logging "
                f"a line matching {LISTENING_RE.pattern!r} on stderr.",
                *hints,
                "--- its output (stdout and stderr) ---",
                output.rstrip() or "(none)",
            ]
        )

    # -- addresses -------------------------------------------------------------------

    @property
    def command(self) -> str:
        """The command line, shell-style, with the interpreter shown as `python`."""
        return " ".join(["python", *self.argv[1:]])

    @property
    def pid(self) -> int:
        return self._popen.pid

    @property
    def host(self) -> str:
        """The host to connect to (from the listening line)."""
        if self._host is None:
            raise RuntimeError("call wait_ready() first")
        return self._host

    @property
    def port(self) -> int:
        """The port the proxy listens on (from the listening line)."""
        if self._port is None:
            raise RuntimeError("call wait_ready() first")
        return self._port

    @property
    def base_url(self) -> str:
        """'http://HOST:PORT', no trailing slash."""
        return f"http://{self.host}:{self.port}"

    def url(self, path: str) -> str:
        """base_url + path, e.g. proxy.url('/v1') for the openai SDK's base_url."""
        return self.base_url + path

    # -- process control -------------------------------------------------------------

    @property
    def returncode(self) -> int | None:
        """The exit status, or None while it runs (negative: killed by that signal)."""
        return self._popen.poll()

    def send_signal(self, sig: int) -> None:
        """Send `sig` to the proxy's main process only."""
        self._popen.send_signal(sig)

    def terminate(self) -> None:
        """SIGTERM to the main process."""
        self._popen.terminate()

    def kill(self) -> None:
        """SIGKILL to the whole process group (the proxy and any workers)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._popen.pid, signal.SIGKILL)

    def wait(self, timeout: float = 10.0) -> int:
        """Wait for the main process to exit and return its status.

        Raises subprocess.TimeoutExpired if it is still running after `timeout`.
        """
        code = self._popen.wait(timeout)
        # Let the drain threads collect the last lines (bounded: a worker may hold the pipes).
        self._wait(lambda: self._open_pipes == 0, 2.0)
        return code

    def close(self) -> None:
        """Kill the process group, reap the child, and stop the drain threads."""
        self.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._popen.wait(10)
        for thread in self._threads:
            thread.join(5)
        for pipe in (self._popen.stdout, self._popen.stderr):
            if pipe is not None and not any(t.is_alive() for t in self._threads):
                pipe.close()


class StartProxy(Protocol):
    """The type of the `start_proxy` fixture."""

    def __call__(
        self,
        *args: str,
        env: Mapping[str, str | None] | None = None,
        config: Mapping[str, Any] | None = None,
        adapter: str | None = None,
        pick_port: bool = True,
        wait_ready: bool = True,
        timeout: float = START_TIMEOUT,
    ) -> ProxyProcess: ...


def proxy_argv(adapter: str, args: Sequence[str], *, pick_port: bool) -> list[str]:
    """`python -m adapters.<module> [--port 0] *args`."""
    try:
        module = ADAPTER_MODULES[adapter]
    except KeyError:
        raise ValueError(f"unknown adapter {adapter!r}; one of {sorted(ADAPTER_MODULES)}") from None
    return [sys.executable, "-m", module, *(["--port", "0"] if pick_port else []), *args]
