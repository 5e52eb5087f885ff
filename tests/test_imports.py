"""Import discipline: imports sit at the top of their module, no module-level import circle, and an
import inside a function only defers a heavy dependency its module does not already load.

Heavy is measured, not guessed (``python -X importtime`` on this machine): the optional extras
(torch, transformers, PEFT, AIMET, onnxruntime-qnn, onnxscript), ONNX (~0.8 s), ONNX Runtime
(~0.1 s), SQLAlchemy and Alembic (~0.5 s together), numpy and jsonschema (~0.08 s each, against a
~0.02 s interpreter start). They are what ``register`` (benchmarked against ``sha256sum``),
``loramgr show`` (against ``python -c pass``) and ``import loramgr`` in device-side Python must not
pay for; anything lighter is imported at the top.
"""

from __future__ import annotations

import ast
import functools
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "loramgr"
HEAVY = frozenset(
    {
        "torch",
        "transformers",
        "peft",
        "aimet_onnx",
        "aimet_common",
        "onnxruntime_qnn",
        "onnxscript",
        "onnx",
        "onnxruntime",
        "sqlalchemy",
        "alembic",
        "ml_dtypes",
        "numpy",
        "jsonschema",
    }
)


@dataclass(frozen=True)
class Import:
    line: int
    targets: tuple[str, ...]  # modules this statement loads (``from pkg import mod`` loads both)
    text: str


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py")) if "migrations" not in p.parts}


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> tuple[str, ...]:
    if isinstance(node, ast.Import):
        return tuple(a.name for a in node.names)
    if node.level:
        package = module.split(".") if is_package else module.split(".")[:-1]
        base = package[: len(package) - node.level + 1]
        name = ".".join(base + ([node.module] if node.module else []))
    else:
        name = node.module or ""
    return (name, *(f"{name}.{a.name}" for a in node.names if f"{name}.{a.name}" in MODULES))


def split_imports(source: str, module: str, is_package: bool = False) -> tuple[list[Import], list[Import]]:
    """(module-level imports, imports inside functions); ``if TYPE_CHECKING:`` blocks are neither."""
    top: list[Import] = []
    inner: list[Import] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.Import | ast.ImportFrom):
                rec = Import(child.lineno, _targets(child, module, is_package), ast.unparse(child))
                (inner if in_function else top).append(rec)
            visit(child, in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda))

    visit(ast.parse(source), False)
    return top, inner


@functools.cache
def _imports(module: str) -> tuple[list[Import], list[Import]]:
    path = MODULES[module]
    return split_imports(path.read_text(), module, path.name == "__init__.py")


@functools.cache
def loaded_on_import(module: str) -> frozenset[str]:
    """The outside packages (top-level names) that importing ``module`` loads, following module-level
    imports through the package."""
    seen: set[str] = set()
    todo = [module]
    outside: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # parents are imported first
        if name in MODULES:
            todo += [t for imp in _imports(name)[0] for t in imp.targets]
        elif parts[0] != "loramgr":
            outside.add(parts[0])
    return frozenset(outside)


def heavy_on_import(module: str) -> frozenset[str]:
    return loaded_on_import(module) & HEAVY


def test_imports_inside_functions_only_defer_a_heavy_dependency():
    offenders = []
    for module, path in MODULES.items():
        for imp in _imports(module)[1]:
            deferred = set().union(*(heavy_on_import(t) for t in imp.targets)) - heavy_on_import(module)
            if not deferred:
                offenders.append(f"{path.relative_to(ROOT)}:{imp.line}: {imp.text}")
    assert offenders == [], "move to the module top (nothing heavy is deferred):\n" + "\n".join(offenders)


def test_the_rule_sees_a_light_import_inside_a_function():
    top, inner = split_imports(
        "import json\nif TYPE_CHECKING:\n    import torch\n"
        "def f():\n    import numpy\n    from loramgr.errors import UsageError\n",
        "loramgr.example",
    )
    assert [i.targets for i in top] == [("json",)]
    assert [i.targets for i in inner] == [("numpy",), ("loramgr.errors",)]
    assert heavy_on_import("loramgr.errors") == frozenset()  # so the second one would be reported
    assert "sqlalchemy" in heavy_on_import("loramgr.registry.api")  # and a deferred registry would not


def test_no_module_level_import_circle():
    graph = {m: {t for imp in _imports(m)[0] for t in imp.targets if t in MODULES and t != m} for m in MODULES}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    circles: list[list[str]] = []

    def walk(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                circles.append([*path[path.index(t) :], t])
            elif t not in state:
                walk(t, [*path, t])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            walk(m, [m])
    assert circles == []


def _tree(cmd: click.Command, ctx: click.Context) -> list[click.Command]:
    out = [cmd]
    if isinstance(cmd, click.Group):
        for name in cmd.list_commands(ctx):
            sub = cmd.get_command(ctx, name)
            assert sub is not None, name
            out += _tree(sub, click.Context(sub, parent=ctx, info_name=name))
    return out


def test_every_command_is_reachable_through_the_lazy_root():
    import importlib

    from loramgr.cli import cli

    reachable = {id(c) for c in _tree(cli, click.Context(cli, info_name="loramgr"))}
    defined = [
        f"{m}.{name}"
        for m in MODULES
        if m.startswith("loramgr.cli.") and m.endswith("_cmds")
        for name, obj in vars(importlib.import_module(m)).items()
        if isinstance(obj, click.Command) and obj.__module__ == m and id(obj) not in reachable
    ]
    assert defined == [], "defined but not in loramgr.cli.common._COMMANDS"


def test_show_and_help_load_no_registry_onnx_or_numpy():
    code = (
        "import sys, click\n"
        "from loramgr.cli import cli\n"
        "cli.get_command(click.Context(cli), 'show')\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {sorted(HEAVY)!r}))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]"


def test_the_plan_runtime_loads_nothing_heavy():
    """docs/design-notes.md: ``loramgr.runtime`` needs only the standard library (device-side Python)."""
    assert loaded_on_import("loramgr.runtime") - sys.stdlib_module_names - {"__future__"} == frozenset()
    assert heavy_on_import("loramgr.runtime.ort") >= {"numpy"}  # the ORT session adds its own
