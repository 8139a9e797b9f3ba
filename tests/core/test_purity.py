"""DESIGN rule 1: the core does no I/O, reads no clock, draws no random numbers."""

from __future__ import annotations

import ast
import pathlib

import core

FORBIDDEN = {
    "asyncio",
    "trio",
    "anyio",
    "httpx",
    "httpcore",
    "socket",
    "time",
    "random",
    "ssl",
    "selectors",
    "threading",
    "subprocess",
    "os",
    "logging",
}
CORE = pathlib.Path(core.__file__).parent


def imported_modules(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_core_imports_no_io_clock_or_randomness() -> None:
    files = sorted(CORE.rglob("*.py"))
    assert len(files) > 20  # the protocol, core/gateway/ and core/policies/
    offenders = {str(f.relative_to(CORE)): sorted(imported_modules(f) & FORBIDDEN) for f in files}
    assert {name: mods for name, mods in offenders.items() if mods} == {}
