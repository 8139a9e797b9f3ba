"""deploy/sansproxy.service runs: its ExecStart, as systemd would start it, serves and stops.

The unit is parsed by hand (systemd's syntax: sections, ``Key=value``, keys that repeat),
its ``ExecStart`` taken as it is but for three things -- the venv's program becomes
this interpreter's (``bin/sansproxy`` beside ``sys.executable``, or the interpreter
itself), ``/etc/sansproxy/config.yaml`` a copy of config.example.yaml, and ``--port``
0 (a free port, read from the start-up line) -- and run as a real process with the
unit's ``Environment=`` in a scratch working directory. It must answer ``/health`` and
the mock, let a stream in flight finish after SIGTERM, and exit 0 within the unit's
``TimeoutStopSec``. ``systemd-analyze verify`` checks the unit too where it is installed.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import pytest

from core import ProxyConfig
from tests.support.proxy_process import REPO_ROOT, ProxyProcess, proxy_env

from ._helpers import chat_body, chat_content, http_client, iter_events

UNIT: Final = REPO_ROOT / "deploy" / "sansproxy.service"
EXAMPLE: Final = REPO_ROOT / "config.example.yaml"
VENV_BIN: Final = "/opt/sansproxy/venv/bin/"
CONFIG: Final = "/etc/sansproxy/config.yaml"
MOCK: Final = "This is the sansproxy mock. You said: "

Unit = dict[str, dict[str, list[str]]]


def parse_unit(text: str) -> Unit:
    """Sections of ``Key=value`` lines; a key may repeat (each value kept, in order)."""
    unit: Unit = {}
    section: dict[str, list[str]] | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        assert not line.endswith("\\"), f"line {number}: keep each setting on one line"
        if line.startswith("[") and line.endswith("]"):
            section = unit.setdefault(line[1:-1], {})
            continue
        key, equals, value = line.partition("=")
        assert section is not None and equals, f"line {number}: not Key=value: {raw!r}"
        section.setdefault(key.strip(), []).append(value.strip())
    return unit


def one(unit: Unit, section: str, key: str) -> str:
    """The value of a key that must be set once."""
    values = unit.get(section, {}).get(key, [])
    assert len(values) == 1, f"[{section}] {key}= must be set once, not {values!r}"
    return values[0]


_SPAN: Final = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|msec|s|sec|seconds?|m|min|minutes?|h|hr)?")
_UNITS: Final = {"ms": 0.001, "msec": 0.001, "m": 60.0, "min": 60.0, "h": 3600.0, "hr": 3600.0}


def seconds(span: str) -> float:
    """A systemd time span ("30", "30s", "1min 30s") in seconds."""
    parts = _SPAN.findall(span)
    assert parts and _SPAN.sub("", span).strip() == "", f"not a time span: {span!r}"
    total = 0.0
    for value, unit in parts:
        factor = _UNITS.get(unit, 60.0 if unit.startswith("minute") else 1.0)
        total += float(value) * factor
    return total


@pytest.fixture(scope="module")
def unit() -> Unit:
    return parse_unit(UNIT.read_text(encoding="utf-8"))


def local_program(program: str) -> str:
    """The venv's program here: this interpreter, or the script beside it."""
    assert program.startswith(VENV_BIN), f"ExecStart should run from the venv: {program}"
    name = program[len(VENV_BIN) :]
    if name.startswith("python"):
        return sys.executable
    script = Path(sys.executable).parent / name  # a console script, e.g. bin/sansproxy
    if not script.exists():
        pytest.fail(f"{script} is missing: reinstall (pip install -e .)", pytrace=False)
    return str(script)


def local_argv(exec_start: str, config: Path) -> list[str]:
    """ExecStart for this machine: the local program, `config`, and port 0."""
    argv = shlex.split(exec_start)
    argv[0] = local_program(argv[0])
    assert argv.count(CONFIG) == 1 and argv[argv.index(CONFIG) - 1] == "--config", argv
    argv[argv.index(CONFIG)] = str(config)
    assert "--port" in argv, argv
    argv[argv.index("--port") + 1] = "0"
    return argv


def unit_environment(unit: Unit) -> dict[str, str]:
    """The unit's ``Environment=`` assignments (each line holds one or more)."""
    env: dict[str, str] = {}
    for line in unit["Service"].get("Environment", []):
        for assignment in shlex.split(line):
            name, _, value = assignment.partition("=")
            env[name] = value
    return env


@pytest.fixture
def service(unit: Unit, tmp_path: Path) -> Iterator[ProxyProcess]:
    """The unit's ExecStart running here, started (its listening line logged)."""
    config = tmp_path / "config.yaml"
    shutil.copyfile(EXAMPLE, config)
    workdir = tmp_path / "state"  # WorkingDirectory=/var/lib/sansproxy
    workdir.mkdir()
    path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    env = proxy_env({**unit_environment(unit), "PYTHONPATH": path})
    process = ProxyProcess(
        local_argv(one(unit, "Service", "ExecStart"), config), env=env, cwd=workdir
    )
    try:
        yield process.wait_ready()
    finally:
        process.close()


def test_the_unit_says_what_a_service_needs(unit: Unit) -> None:
    service = unit["Service"]
    assert one(unit, "Service", "Type") in ("simple", "exec")
    assert one(unit, "Service", "User") not in ("", "root", "0")
    assert one(unit, "Service", "EnvironmentFile").lstrip("-") == "/etc/sansproxy/env"
    assert one(unit, "Service", "Restart") == "on-failure"
    assert "2" in one(unit, "Service", "RestartPreventExitStatus").split()  # a bad config
    assert one(unit, "Service", "KillSignal") == "SIGTERM"
    assert one(unit, "Service", "NoNewPrivileges") == "yes"
    assert one(unit, "Service", "ProtectSystem") == "strict"
    assert one(unit, "Install", "WantedBy") == "multi-user.target"
    argv = shlex.split(one(unit, "Service", "ExecStart"))
    assert argv[argv.index("--host") + 1] == "127.0.0.1"  # behind the TLS reverse proxy
    assert argv[argv.index("--config") + 1] == CONFIG
    # The stop timeout leaves the in-flight responses their whole grace, and some.
    grace = ProxyConfig().server.shutdown_grace
    assert seconds(one(unit, "Service", "TimeoutStopSec")) >= grace + 5.0
    twice = [key for key, values in service.items() if len(values) > 1 and key != "Environment"]
    assert twice == [], f"set more than once: {twice}"


def test_the_units_command_serves_and_stops_on_sigterm(unit: Unit, service: ProxyProcess) -> None:
    stop_timeout = seconds(one(unit, "Service", "TimeoutStopSec"))
    with http_client(service) as client:
        health = client.get("/health")
        assert (health.status_code, health.json()) == (200, {"status": "ok"})
        reply = client.post("/v1/chat/completions", json=chat_body(content="Hi"))
        assert reply.status_code == 200
        assert reply.json()["choices"][0]["message"]["content"] == MOCK + "Hi"
        said = " ".join(f"word{i}" for i in range(30))  # an event per word, 20 ms apart
        body = chat_body(stream=True, content=said)
        with client.stream("POST", "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            events = iter_events(response)
            received = [next(events), next(events)]
            service.send_signal(signal.SIGTERM)  # KillSignal=, to the main process
            service.wait_for_log("received SIGTERM", timeout=5)
            received += list(events)  # the stream in flight finishes
    assert chat_content(received) == MOCK + said
    assert received[-1].data == "[DONE]"
    assert service.wait(stop_timeout) == 0
    assert "Traceback" not in service.logs()


def test_systemd_analyze_verifies_the_unit(unit: Unit, tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    # verify wants ExecStart's program to exist: point it at this interpreter.
    exec_start = one(unit, "Service", "ExecStart")
    program = shlex.split(exec_start)[0]
    copy = tmp_path / UNIT.name
    text = UNIT.read_text(encoding="utf-8")
    copy.write_text(text.replace(f"ExecStart={program}", f"ExecStart={local_program(program)}"))
    result = subprocess.run(
        [analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60, check=False
    )
    about_the_unit = [
        line for line in (result.stdout + result.stderr).splitlines() if copy.name in line
    ]
    assert about_the_unit == [], "\n".join(about_the_unit)
    assert result.returncode == 0, result.stdout + result.stderr
