"""Structural rules of the backend: methods compose stages instead of importing each other; the
server's side and the add-on import no torch (and no ray)."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHODS = ROOT / "backend" / "pipelines"


def _imports(path: Path) -> set[str]:
    """Every module a file imports, function-level imports included, as absolute names."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[: len(base) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            names.add(prefix)
            names.update(f"{prefix}.{alias.name}" for alias in node.names)
    return names


def test_no_method_module_imports_another():
    methods = {p.stem for p in METHODS.glob("*.py") if p.stem not in ("__init__", "base")}
    assert {"dreamgaussian", "reconstruct", "texture_refine"} <= methods
    for path in METHODS.glob("*.py"):
        if path.stem in ("__init__", "base"):
            continue
        others = {f"backend.pipelines.{m}" for m in methods - {path.stem}}
        assert not (_imports(path) & others), f"{path.name} imports another method: {_imports(path) & others}"


def test_the_server_side_and_the_addon_import_no_torch():
    code = ("import sys\n"
            "import backend.server, backend.jobs, backend.worker, backend.cli, shared_protocol.client\n"
            "from backend.pipelines import load_builtin; load_builtin()\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'bpy', 'diffusers', 'gsplat', 'ray'))\n"
            "assert not bad, bad\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    for path in (ROOT / "blender_addon").glob("*.py"):
        assert not any(name.split(".")[0] == "torch" for name in _imports(path)), path


def test_only_the_cluster_module_imports_ray():
    """Without ``--executor ray`` (and the ``cluster`` extra) nothing imports Ray."""
    importers = {p.relative_to(ROOT).as_posix() for p in (ROOT / "backend").rglob("*.py")
                 if any(name.split(".")[0] == "ray" for name in _imports(p))}
    assert importers == {"backend/cluster.py"}


def test_no_import_circle_in_the_backend():
    """No cycle among the backend's modules, counting function-level imports too."""
    modules = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
               for p in (ROOT / "backend").rglob("*.py")}
    graph = {name: {m for m in _imports(path) if m in modules and m != name} for name, path in modules.items()}
    # A package's __init__ is imported with its submodules: an edge to the parent package counts.
    visiting, done, cycles = set(), set(), []

    def visit(node, path):
        if node in done:
            return
        if node in visiting:
            cycles.append(path[path.index(node):] + [node])
            return
        visiting.add(node)
        for nxt in sorted(graph[node]):
            visit(nxt, path + [node])
        visiting.discard(node)
        done.add(node)

    for name in sorted(graph):
        visit(name, [])
    assert not cycles, cycles
