"""The core's shape, held by tests: layers, no import cycle, a small documented API.

The layers, bottom up (each imports only from its own layer and those below):

1. the protocol: events, commands, states, errors, headers, HTTP, JSON, SSE,
   rendering, endpoints, quotas, config;
2. ``core/gateway/``: routing, planning, translation, mock, usage, prices;
3. the exchange: the middleware protocol (``_middleware``), what hooks see
   (``_context``), one attempt's relay (``_relay``), the record observers see
   (``_record``), the state machine (``_exchange``);
4. ``core/policies/``: the built-in middleware -- beside the exchange, seeing it
   only through ``core.Context``: they may import ``_middleware``, never the
   exchange's modules;
5. ``_proxy`` (the assembly) and the package ``__init__`` files.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pathlib
from collections.abc import Iterator

import pytest

import core
import core.gateway
import core.policies

CORE = pathlib.Path(core.__file__).parent
EXCHANGE = {"core._middleware", "core._context", "core._relay", "core._record", "core._exchange"}
ASSEMBLY = {"core._proxy", "core", "core.gateway", "core.policies"}
#: Modules allowed past ~600 lines, and why.
LONG = {
    "core/policies/_schema.py": "the validate policy's declarative schema tables",
}
MAX_LINES = 600


def module_name(path: pathlib.Path) -> str:
    parts = ["core", *path.relative_to(CORE).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(CORE.rglob("*.py"))}


def layer(module: str) -> int:
    if module in ("core", "core._proxy"):
        return 5
    if module.startswith("core.policies"):
        return 4
    if module in EXCHANGE:
        return 3
    if module.startswith("core.gateway"):
        return 2
    return 1


def core_imports(module: str) -> Iterator[str]:
    """The core modules ``module`` imports (``from .x import y`` resolved; a name
    imported from a package counts as the package)."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if target == "core" or target.startswith("core."):
                if target in MODULES:
                    yield target
                for alias in node.names:  # ``from . import _x``
                    if f"{target}.{alias.name}" in MODULES:
                        yield f"{target}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("core"):
                    yield alias.name


GRAPH = {module: set(core_imports(module)) for module in MODULES}


def test_the_layout_says_what_the_core_is() -> None:
    names = set(MODULES)
    assert {"core._exchange", "core._events", "core._commands", "core._state"} <= names
    assert {m for m in names if m.startswith("core.gateway.")}, "core/gateway/ is missing"
    assert {m for m in names if m.startswith("core.policies.")}, "core/policies/ is missing"
    # h11's habit: every module is private, one __init__ per package re-exports.
    for module in names - ASSEMBLY:
        assert module.rpartition(".")[2].startswith("_"), module


def test_no_import_cycle() -> None:
    seen: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(module: str, path: list[str]) -> None:
        seen[module] = 1
        for target in sorted(GRAPH[module]):
            if seen.get(target) == 1:
                raise AssertionError(" -> ".join([*path, module, target]))
            if target not in seen:
                visit(target, [*path, module])
        seen[module] = 2

    for module in sorted(GRAPH):
        if module not in seen:
            visit(module, [])


def test_layers_import_downward_only() -> None:
    wrong = []
    for module, targets in GRAPH.items():
        for target in targets:
            if layer(target) > layer(module):
                wrong.append(f"{module} (layer {layer(module)}) imports {target}")
            elif layer(module) == 4 and target in EXCHANGE - {"core._middleware"}:
                wrong.append(f"{module} sees the exchange other than through Context: {target}")
            elif layer(module) == 3 and target.startswith("core.policies"):
                wrong.append(f"{module} knows a policy: {target}")
    assert wrong == []


def test_the_protocol_knows_no_policy_and_no_gateway() -> None:
    protocol = {m for m in MODULES if layer(m) == 1}
    assert {"core._events", "core._commands", "core._errors", "core._sse"} <= protocol
    for module in protocol:
        assert not {t for t in GRAPH[module] if layer(t) > 1}, module


def test_no_type_checking_blocks() -> None:
    # Held together by TYPE_CHECKING is an import cycle in disguise (STYLE.md).
    assert [m for m, p in MODULES.items() if "TYPE_CHECKING" in p.read_text()] == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_modules_stay_readable(module: str) -> None:
    path = MODULES[module]
    relative = f"core/{path.relative_to(CORE)}"
    lines = len(path.read_text().splitlines())
    if relative in LONG:
        return
    assert lines <= MAX_LINES, f"{relative}: {lines} lines"
    tree = ast.parse(path.read_text())
    assert ast.get_docstring(tree), f"{relative} says nothing of what it holds"


def test_long_modules_are_the_declared_tables() -> None:
    for relative in LONG:
        assert (CORE.parent / relative).exists(), relative


@pytest.mark.parametrize("package", [core, core.gateway, core.policies])
def test_public_api_is_small_sorted_and_documented(package: object) -> None:
    names: list[str] = package.__all__  # type: ignore[attr-defined]
    # Sorted as ruff keeps it (RUF022): CONSTANTS, then Classes, then functions.
    assert names == sorted(names, key=lambda n: (not n.isupper(), not n[0].isupper(), n))
    assert len(set(names)) == len(names)
    for name in names:
        value = getattr(package, name)
        if inspect.isclass(value) or inspect.isfunction(value):
            doc = inspect.getdoc(value) or ""
            assert doc and doc.splitlines()[0].strip(), f"{name} has no docstring"
            # One line that says what it is (it may go on below).
            assert len(doc.splitlines()[0]) <= 100, name


def test_the_embedders_api_is_about_forty_names() -> None:
    # (Grown by the observers' five: the record, its attempts, its command, and the
    # metrics' command and answer.)
    assert 35 <= len(core.__all__) <= 56
    public = set(core.__all__)
    # What an embedder meets: the exchange, its events and commands, the
    # middleware protocol, the error taxonomy, config, the SSE codec.
    assert {"Proxy", "Exchange", "ProxyConfig", "Context", "Middleware", "Reply"} <= public
    assert {"RequestReceived", "UpstreamResponse", "SendUpstreamRequest", "EndResponse"} <= public
    assert {"SSEDecoder", "parse_block", "ValidationError", "LocalProtocolError"} <= public


def test_what_the_product_does_not_use_is_not_in_core() -> None:
    # Test oracles live in tests/: the product's limiter has no reference model.
    limiter = importlib.import_module("core.policies._limiter")
    assert not hasattr(limiter, "acquire") and not hasattr(limiter, "adjust")
    assert not hasattr(
        importlib.import_module("core.policies._limiter_redis"), "REDIS_ACQUIRE_SCRIPT"
    )


def test_the_readme_names_the_embedders_api() -> None:
    readme = (CORE.parent / "README.md").read_text()
    missing = [name for name in core.__all__ if f"`{name}`" not in readme]
    assert missing == []
