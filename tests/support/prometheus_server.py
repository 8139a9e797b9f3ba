"""A real Prometheus server of the test's own (Debian's ``prometheus``), scraping the
proxy under test every second, and queried through its HTTP API as Grafana would.

`prometheus_missing()` says why one cannot be started here; `require_prometheus()`
turns that into a skip locally and a failure under CI (``CI`` set).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import pytest
import yaml

from tests.support.needs import free_port, require

__all__ = ["PrometheusServer", "prometheus_missing", "require_prometheus"]

_START_TIMEOUT = 60.0
_POLL = 0.2  # seconds between two looks at Prometheus (it scrapes every second)


def prometheus_missing() -> str | None:
    """Why no Prometheus can be started here, or None."""
    if shutil.which("prometheus") is None:
        return "prometheus is not on PATH (Debian: apt-get install prometheus)"
    return None


def require_prometheus() -> None:
    """Skip the test without a Prometheus (with the reason); fail it under CI."""
    require("a real Prometheus", prometheus_missing())


class PrometheusServer:
    """``prometheus`` on 127.0.0.1 (a free port), scraping ``target`` (``host:port``)
    at ``metrics_path`` every second; ``bearer`` is sent as its credentials."""

    def __init__(
        self,
        directory: Path,
        target: str,
        *,
        metrics_path: str = "/metrics",
        bearer: str | None = None,
    ) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        job: dict[str, Any] = {
            "job_name": "sansproxy",
            "metrics_path": metrics_path,
            "static_configs": [{"targets": [target]}],
        }
        if bearer is not None:
            job["authorization"] = {"type": "Bearer", "credentials": bearer}
        self.config = directory / "prometheus.yml"
        self.config.write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
                    "scrape_configs": [job],
                }
            ),
            encoding="utf-8",
        )
        self.log = directory / "prometheus.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._client = httpx.Client(base_url=self.url, timeout=5.0, trust_env=False)

    def start(self) -> None:
        """Start it; return once it says it is ready (``/-/ready``)."""
        assert self.process is None, "already running"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    "prometheus",
                    f"--config.file={self.config}",
                    f"--storage.tsdb.path={self.directory / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

        def ready() -> bool:
            try:
                return self._client.get("/-/ready").status_code == 200
            except httpx.TransportError:
                return False

        self._wait(ready, _START_TIMEOUT, "to be ready")

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        self._client.close()

    def __enter__(self) -> PrometheusServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- the HTTP API ------------------------------------------------------------------

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query's result vector (``/api/v1/query``)."""
        response = self._client.get("/api/v1/query", params={"query": promql})
        response.raise_for_status()
        answer = response.json()
        assert answer["status"] == "success", answer
        assert answer["data"]["resultType"] == "vector", answer
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def value(self, promql: str) -> float | None:
        """The one value of a query that yields at most one series (None: no series)."""
        result = self.query(promql)
        assert len(result) <= 1, result
        return float(result[0]["value"][1]) if result else None

    def wait_for_value(self, promql: str, expected: float, timeout: float = 30.0) -> None:
        """Poll until ``promql`` yields ``expected`` (the scrapes catch up with the
        traffic); fail with what it last saw and the scrape's health if it never does."""
        seen: list[float | None] = []

        def arrived() -> bool:
            seen.append(self.value(promql))
            return seen[-1] == expected

        self._wait(
            arrived, timeout, lambda: f"to return {expected} for {promql} (last: {seen[-1]})"
        )

    def targets(self) -> list[dict[str, Any]]:
        """The active scrape targets, with their health and last error."""
        response = self._client.get("/api/v1/targets")
        response.raise_for_status()
        active: list[dict[str, Any]] = response.json()["data"]["activeTargets"]
        return active

    def wait_for_scrape(self, timeout: float = 30.0) -> dict[str, Any]:
        """Wait until the target has been scraped successfully; return it."""
        found: list[dict[str, Any]] = []

        def healthy() -> bool:
            found[:] = [t for t in self.targets() if t["health"] == "up"]
            return bool(found)

        self._wait(healthy, timeout, "to scrape the target successfully")
        return found[0]

    def _wait(
        self, condition: Callable[[], bool], timeout: float, what: str | Callable[[], str]
    ) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            process = self.process
            if process is not None and process.poll() is not None:
                pytest.fail(f"prometheus exited ({process.returncode}):\n{self._log_tail()}")
            if time.monotonic() > deadline:
                try:
                    targets = self.targets()
                except httpx.HTTPError as exc:
                    targets = [f"(none: {exc!r})"]  # type: ignore[list-item]
                if callable(what):
                    what = what()
                pytest.fail(
                    f"waited {timeout} s for prometheus {what}\ntargets: {targets}\n"
                    f"{self._log_tail()}"
                )
            time.sleep(_POLL)  # polling a condition, with a deadline

    def _log_tail(self) -> str:
        try:
            return self.log.read_text(encoding="utf-8", errors="replace")[-4000:]
        except OSError:
            return "(no log)"
