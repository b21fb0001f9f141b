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


def _lint_imports(cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).with_name("lint-imports"))], cwd=cwd, capture_output=True,
                          text=True, timeout=600)


def test_the_import_linter_contracts_hold():
    """pyproject.toml's contracts (import-linter): the backend's layers (service > methods >
    stages > parts > contracts), no method importing another, the wire and the add-on free of
    the backend and torch, no bpy in the backend, ray only in backend.cluster."""
    done = _lint_imports(ROOT)
    assert done.returncode == 0 and "0 broken" in done.stdout, done.stdout[-3000:]


def test_every_built_in_method_is_in_the_independence_contract():
    """A new method is covered by "no method imports another" as soon as it is built in."""
    import tomllib

    from backend.pipelines import BUILTIN

    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    independent = next(c for c in contracts if c["type"] == "independence")
    assert set(independent["modules"]) == {f"backend.pipelines.{name}" for name in BUILTIN}


def test_a_stage_that_imports_a_method_breaks_the_layers(tmp_path):
    """The contracts see what they are for: the same tree with one stage importing a method's
    module fails the layers contract (and names the import)."""
    import shutil

    for name in ("backend", "shared_protocol", "blender_addon"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    texture = tmp_path / "backend" / "stages" / "texture.py"
    texture.write_text(texture.read_text() + "\nfrom ..pipelines import im3d  # noqa: E402,F401\n")
    done = _lint_imports(tmp_path)
    assert done.returncode != 0 and "BROKEN" in done.stdout, done.stdout[-3000:]
    assert "backend.stages.texture -> backend.pipelines.im3d" in done.stdout


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
