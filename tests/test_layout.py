"""The package layout as the architecture: no import cycles (module-level or lazy, in
whazing_gateway and in whazing_standin), the stand-in imports nothing of the product, mitmproxy
is met only at the edge (and by replay's capture reader and the log setup), and nothing edits
sys.path. Read from the source with `ast`, so an import
hidden in a function counts too (only `if TYPE_CHECKING:` blocks are left out: they never run).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("whazing_gateway", "whazing_standin")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _runtime_nodes(tree: ast.AST):
    """Every node except those under `if TYPE_CHECKING:`."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack.extend(node.orelse)
            continue
        yield node
        stack.extend(ast.iter_child_nodes(node))


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The project modules a module imports (the most specific known name of each import)."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out: set[str] = set()
    for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names = [f"{base}.{a.name}" for a in node.names] + [base]
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != me:
                out.add(name)
                break
    return out


def graph() -> dict[str, set[str]]:
    paths = [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")]
    known = {module_name(p) for p in paths}
    return {module_name(p): imports_of(p, known) for p in paths}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_in_either_package():
    g = graph()
    assert len(g) > 40 and "whazing_gateway.pipeline.services" in g  # really read the packages
    assert "whazing_gateway.deliver.worker" in g["whazing_gateway.pipeline.services"]  # lazy imports count
    assert cycles(g) == []


def test_the_stand_in_imports_nothing_of_the_product():
    g = graph()
    leaks = {m: sorted(d for d in deps if d.startswith("whazing_gateway"))
             for m, deps in g.items() if m.startswith("whazing_standin")}
    assert {m: d for m, d in leaks.items() if d} == {}


# Beside the edge, two modules meet mitmproxy on purpose: `replay` reads mitmproxy capture files
# into the same raw records as the live hooks, and the log setup detaches mitmdump's own terminal
# handler (our handler renders mitmproxy's records, redacted).
MITMPROXY_OUTSIDE_EDGE = {"whazing_gateway.cli.replay", "whazing_gateway.ops.logs"}


def test_only_the_edge_imports_mitmproxy():
    users = set()
    for path in (ROOT / "whazing_gateway").rglob("*.py"):
        for node in _runtime_nodes(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                if any(m == "mitmproxy" or m.startswith("mitmproxy.") for m in mods):
                    users.add(module_name(path))
    assert any(u.startswith("whazing_gateway.edge.") for u in users)
    assert {u for u in users if not u.startswith("whazing_gateway.edge.")} <= MITMPROXY_OUTSIDE_EDGE, users


def edits_sys_path(source: str) -> bool:
    """`sys.path.insert/append/extend(...)` or an assignment to sys.path (or a slice of it)."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and ast.unparse(node.func.value) == "sys.path" and node.func.attr in ("insert", "append", "extend"):
            return True
        if isinstance(node, (ast.Assign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(ast.unparse(t).startswith("sys.path") for t in targets):
                return True
    return False


def test_the_sys_path_finder_finds_edits():
    assert edits_sys_path("import sys\nsys.path.insert(0, 'x')")
    assert edits_sys_path("import sys\nsys.path[:0] = ['x']")
    assert not edits_sys_path("import sys\nprint(sys.path)")


def test_nothing_edits_sys_path():
    offenders = []
    for path in ROOT.glob("**/*.py"):
        if any(part.startswith(".") or part in ("build", "data") for part in path.relative_to(ROOT).parts):
            continue
        if edits_sys_path(path.read_text(errors="replace")):
            offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []
