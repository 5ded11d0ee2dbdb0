"""The house without cycles (#24): config < net < lake < transforms < pipeline. A module imports only its own
layer or lower ones, every import of our code is `warta.*` (one import path per module, as Beam pickles
by module path), and no two modules import each other, directly or through others."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

LAYERS = ["config", "net", "lake", "transforms", "pipeline"]
OURS = {*LAYERS, "models", "examples"}


def imports(path: Path) -> set[str]:
    """The `warta.*` modules (or bare names of our folders) that one file imports, at any depth."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m.split(".")[0] in OURS or m.startswith("warta.")}


def modules() -> dict[str, Path]:
    return {f"warta.{p.relative_to(ROOT).with_suffix('').as_posix().replace('/', '.')}": p
            for layer in LAYERS for p in sorted((ROOT / layer).glob("*.py"))}


def test_every_import_of_our_code_is_warta_dotted():
    bare = {(name, m) for name, p in modules().items() for m in imports(p) if not m.startswith("warta.")}
    assert not bare, bare


def test_layers_import_only_downwards():
    wrong = []
    for name, path in modules().items():
        mine = LAYERS.index(name.split(".")[1])
        for m in imports(path):
            parts = m.split(".")
            if len(parts) > 1 and parts[1] in LAYERS and LAYERS.index(parts[1]) > mine:
                wrong.append(f"{name} imports {m}")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles():
    mods = modules()
    graph = {n: {m for m in imports(p) if m in mods and m != n} for n, p in mods.items()}
    seen, stack, cycles = set(), [], []

    def visit(n):
        if n in stack:
            cycles.append(stack[stack.index(n):] + [n])
            return
        if n in seen:
            return
        seen.add(n)
        stack.append(n)
        for m in sorted(graph[n]):
            visit(m)
        stack.pop()
    for n in sorted(graph):
        visit(n)
    assert not cycles, cycles
