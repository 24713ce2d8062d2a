"""The layout keeps its promises (ARCHITECTURE.md, issue #12): no import cycle among the sidecar's modules
(imports inside functions count: they only hide a cycle; imports for annotations only, under TYPE_CHECKING, do
not), no module over about 400 lines unless its docstring says why, no SQL outside sidecar/data (but the embedded
event log, which is its own SQLite file), and nothing outside sidecar/data reaches into the store's or the
catalog's private parts."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "sidecar"
MAX_LINES = 400


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def imports(path: Path, name: str, known: set[str]) -> set[str]:
    """The sidecar modules this one imports, anywhere in it (`from pkg import mod` counts as pkg.mod)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    tree = ast.parse(path.read_text())
    typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
                   for stmt in block.body for n in ast.walk(stmt)}
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}
    return {m for m in found if m in known and m != name}


def test_the_sidecar_has_no_import_cycle():
    mods = modules()
    graph = {name: imports(path, name, set(mods)) for name, path in mods.items()}
    # a package's __init__ re-exporting its modules is not a cycle with them: drop package -> own submodule edges
    graph = {m: {d for d in deps if not d.startswith(m + ".")} for m, deps in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                cycle = stack[stack.index(d):] + [d]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_long_modules_say_why():
    long = []
    for name, path in modules().items():
        lines = len(path.read_text().splitlines())
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        if lines > MAX_LINES and "long" not in doc.lower():
            long.append(f"{name} ({lines} lines)")
    assert not long, f"over {MAX_LINES} lines without a reason in the docstring: {', '.join(long)}"


SQL = re.compile(r"""["'](?:SELECT|INSERT|UPDATE|DELETE|CREATE|ALTER|PRAGMA)\s""")
PRIVATE = re.compile(r"\b(?:catalog|store)\._\w+|\.mirrors\b|\.db\.(?:query|transaction)\(")


def test_only_the_data_package_speaks_sql_or_touches_private_parts():
    offenders = []
    for name, path in modules().items():
        if name.startswith("sidecar.data") or name == "sidecar.pipeline.bus.embedded":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if SQL.search(line) or PRIVATE.search(line):
                offenders.append(f"{path.relative_to(REPO)}:{n}: {line.strip()[:100]}")
    assert not offenders, "\n".join(offenders)
