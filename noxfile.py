"""Developer sessions: ``nox`` (lint, types, tests) and ``nox -s bench``."""

from __future__ import annotations

import os
import shutil

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["lint", "types", "tests"]

PYTHON = "3.11"


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The test suite, with branch coverage of the core."""
    session.install("-e", ".[test]")
    session.run("pytest", "--cov=core", "--cov-branch", "--cov-report=term", *session.posargs)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff."""
    session.install("ruff>=0.7")
    session.run("ruff", "check", ".", *session.posargs)


@nox.session(python=PYTHON)
def types(session: nox.Session) -> None:
    """mypy --strict over the packages pyproject names, and this file."""
    session.install("-e", ".[dev]")
    session.run("mypy", "--strict", *session.posargs)
    session.run("mypy", "--strict", "noxfile.py")


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """The benchmark (not a test), one table: ``nox -s bench -- --duration 3 --adapters
    h11,asgi``; ``-- --no-many-clients`` leaves out the 5,000 streams and 10,000 idle
    connections. Without ``redis-server`` (installed here when run as root) the Redis
    policies row says it was skipped. ``-- --instructions`` adds instruction counts
    under cachegrind (valgrind, installed here as root)."""
    session.install("-e", ".[test]")
    if shutil.which("wrk") is None:
        if os.geteuid() != 0:
            session.error("wrk is not installed: apt-get install wrk (or run this as root)")
        session.run("apt-get", "update", external=True)
        session.run("apt-get", "install", "-y", "wrk", external=True)
    if "--instructions" in session.posargs and shutil.which("valgrind") is None:
        if os.geteuid() != 0:
            session.error("valgrind is not installed: apt-get install valgrind")
        session.run("apt-get", "install", "-y", "valgrind", external=True)
    if shutil.which("redis-server") is None and os.geteuid() == 0:
        # best effort: without it the Redis row is skipped, saying why
        session.run(
            "apt-get", "install", "-y", "redis-server", external=True, success_codes=[0, 100]
        )
    session.run("python", "-m", "tests.bench.run", *session.posargs)


@nox.session(python=PYTHON)
def profile(session: nox.Session) -> None:
    """Where a request's CPU goes (py-spy under wrk, µs per request by layer, file and
    function): ``nox -s profile -- --adapter h11 --mode policies``."""
    session.install("-e", ".[test]", "py-spy")
    if shutil.which("wrk") is None:
        if os.geteuid() != 0:
            session.error("wrk is not installed: apt-get install wrk (or run this as root)")
        session.run("apt-get", "update", external=True)
        session.run("apt-get", "install", "-y", "wrk", external=True)
    session.run("python", "-m", "tests.bench.profile", *session.posargs)


@nox.session(python=PYTHON)
def fuzz(session: nox.Session) -> None:
    """The fuzz-style property tests, 25x longer than in CI (``SANSPROXY_FUZZ_SCALE``)."""
    session.install("-e", ".[test]")
    session.env.setdefault("SANSPROXY_FUZZ_SCALE", os.environ.get("SANSPROXY_FUZZ_SCALE", "25"))
    session.run(
        "pytest",
        "-p",
        "no:cacheprovider",
        "--no-cov",
        "tests/core/test_json_limits.py",
        "tests/core/test_exchange_properties.py",
        *session.posargs,
    )


@nox.session(python=PYTHON)
def soak(session: nox.Session) -> None:
    """Good and hostile traffic, then RSS and descriptors: ``nox -s soak -- --adapter trio``."""
    session.install("-e", ".[test]")
    session.run("python", "-m", "tests.bench.soak", *session.posargs)
