"""The layering rule, read from the source (AST): ``dustin`` → ``dustin.passes`` → ``dustin.kernels``, never back;
no import cycles between the library's modules; the library never imports ``benchmarks/``, ``examples/`` or tests.

Every ``import`` statement counts, including those inside functions (a lazy import is still an arrow).
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Folder → import name (pyproject's package-dir) and its layer: an import may only go to the same or a lower layer.
FOLDERS = {"dustin_compile": ("dustin", 2), "passes": ("dustin.passes", 1), "kernels": ("dustin.kernels", 0)}
OUTSIDE = ("benchmarks", "examples", "tests", "texts", "helpers", "conftest")


def library_modules(root: Path) -> dict[str, Path]:
    """Module name → file, for every .py file of the three library folders."""
    modules = {}
    for folder, (package, _) in FOLDERS.items():
        for path in sorted((root / folder).rglob("*.py")):
            parts = list(path.relative_to(root / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join([package, *parts])] = path
    return modules


def layer(module: str) -> int:
    for package, level in sorted((p for p in FOLDERS.values()), key=lambda p: -len(p[0])):
        if module == package or module.startswith(package + "."):
            return level
    raise KeyError(module)


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The library module an import names (the longest known prefix), or None for third-party modules."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, int]]:
    """(imported name, line) for every import in the file, relative imports made absolute; ``from a import b``
    names ``a.b`` when that is a module."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.append((full if full in modules else base, node.lineno))
    return found


def violations(root: Path) -> list[str]:
    """Every import against the layering, every import of a non-library folder, and every import cycle."""
    modules = library_modules(root)
    problems, edges = [], {m: set() for m in modules}
    for module, path in modules.items():
        for name, line in imports_of(module, path, modules):
            where = f"{path.relative_to(root)}:{line}"
            if name.split(".")[0] in OUTSIDE:
                problems.append(f"{where}: library module {module} imports {name} (not part of the library)")
                continue
            target = _resolve(name, modules)
            if target is None or target == module:
                continue
            if layer(target) > layer(module):
                problems.append(f"{where}: {module} imports {target}, against dustin -> dustin.passes -> dustin.kernels")
            edges[module].add(target)
    problems += [f"import cycle: {' -> '.join(cycle)}" for cycle in _cycles(edges)]
    return problems


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected group of modules (depth-first search; the graph is small)."""
    cycles, state, stack = [], {}, []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node)
    return cycles


def test_the_library_follows_the_layering_and_has_no_cycles():
    problems = violations(ROOT)
    assert not problems, "\n".join(problems)


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for folder in FOLDERS:
        (tmp_path / folder).mkdir(exist_ok=True)
        init = tmp_path / folder / "__init__.py"
        if not init.exists():
            init.write_text("")
    return tmp_path


def test_the_checker_finds_a_wrong_arrow_a_cycle_and_a_benchmark_import(tmp_path):
    """The rule itself can fail: a kernel importing a pass, a cycle, and a library import of benchmarks/."""
    root = _tree(tmp_path, {
        "kernels/op/__init__.py": "def f():\n    from dustin.passes.rewrite import plan\n",
        "passes/rewrite.py": "import dustin.kernels\nplan = 1\n",
        "dustin_compile/a.py": "from . import b\n",
        "dustin_compile/b.py": "def g():\n    from dustin.a import x\n",
        "dustin_compile/c.py": "import benchmarks.e2e\n",
    })
    found = "\n".join(violations(root))
    assert "dustin.kernels.op imports dustin.passes.rewrite, against" in found
    assert "import cycle: dustin.a -> dustin.b -> dustin.a" in found
    assert "library module dustin.c imports benchmarks.e2e" in found
    assert os.path.basename(__file__) not in found
