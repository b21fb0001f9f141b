"""Build the installable Blender extension zip.

    python -m tools.build_extension [--out dist] [--platform linux-x64 ...] [--python 3.11 ...]

Steps: download the pyzmq and msgpack wheels for every Blender Python version and platform
(``pip download --only-binary=:all:``), build a wheel of ``shared_protocol`` (``pip wheel``),
stage ``blender_addon/`` with a ``wheels/`` folder and the manifest's ``wheels`` and
``platforms`` lists filled in, and let Blender's own extension builder (``blender_ext.py build``,
the code behind ``blender --command extension build``; taken from the installed ``bpy`` or from
the Blender executable given with ``--blender``) validate the manifest and write the zip.

Blender 4.2-5.0 embed Python 3.11, newer releases Python 3.13; Blender installs the wheels
matching its own Python and platform when the extension is installed.
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ADDON = ROOT / "blender_addon"

#: Blender platform name -> pip platform tags, newest first (pip takes any of them).
PLATFORMS: dict[str, tuple[str, ...]] = {
    "linux-x64": ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"),
    "windows-x64": ("win_amd64",),
    "macos-arm64": ("macosx_11_0_arm64", "macosx_10_15_universal2", "macosx_10_9_universal2"),
    "macos-x64": ("macosx_10_15_x86_64", "macosx_10_9_x86_64", "macosx_10_15_universal2", "macosx_10_9_universal2"),
}
#: Python versions embedded by the Blender releases the extension supports.
PYTHONS = ("3.11", "3.13")
#: Third-party packages the add-on imports (through shared_protocol).
PACKAGES = ("pyzmq>=25", "msgpack>=1.0")


class BuildError(RuntimeError):
    """A step of the build failed; the message says which and why."""


def _run(cmd: list[str], what: str) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        detail = (proc.stderr.strip() + "\n" + proc.stdout.strip()).strip()
        raise BuildError(f"{what} failed (exit {proc.returncode}):\n{detail[-2000:]}")
    return proc.stdout


def download_wheels(dest: Path, platforms: list[str], pythons: list[str]) -> list[Path]:
    """pip-download the binary wheels of :data:`PACKAGES` for each platform and Python."""
    for name in platforms:
        for py in pythons:
            cmd = [sys.executable, "-m", "pip", "download", "--only-binary=:all:", "--no-deps", "--disable-pip-version-check",
                   "--python-version", py, "--implementation", "cp", "-d", str(dest)]
            for tag in PLATFORMS[name]:
                cmd += ["--platform", tag]
            _run(cmd + list(PACKAGES), f"downloading {', '.join(PACKAGES)} for {name} / Python {py} (is PyPI reachable?)")
    return sorted(dest.glob("*.whl"))


def protocol_version() -> str:
    text = (ROOT / "pyproject.toml").read_text()
    return re.search(r'^version\s*=\s*"([^"]+)"', text, re.M).group(1)


def build_protocol_wheel(dest: Path) -> Path:
    """A pure-Python wheel ``splatsmith_protocol`` holding the ``shared_protocol`` package."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp)
        shutil.copytree(ROOT / "shared_protocol", src / "shared_protocol", ignore=shutil.ignore_patterns("__pycache__"))
        (src / "pyproject.toml").write_text(
            '[build-system]\nrequires = ["setuptools>=61"]\nbuild-backend = "setuptools.build_meta"\n\n'
            f'[project]\nname = "splatsmith-protocol"\nversion = "{protocol_version()}"\nrequires-python = ">=3.11"\n'
            'description = "The Splatsmith wire protocol (ZeroMQ + msgpack)"\n\n'
            '[tool.setuptools]\npackages = ["shared_protocol"]\n')
        _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--disable-pip-version-check",
              "-w", str(dest), str(src)], "building the shared_protocol wheel")
    return next(dest.glob("splatsmith_protocol-*.whl"))


def write_manifest(stage: Path, wheels: list[Path], platforms: list[str]) -> None:
    """Fill the staged manifest's version, ``wheels`` and ``platforms`` lists."""
    text = (ADDON / "blender_manifest.toml").read_text()
    text = re.sub(r'^version\s*=\s*"[^"]*"', f'version = "{protocol_version()}"', text, flags=re.M)
    text = re.sub(r"^# wheels = .*$", "", text, flags=re.M)
    wheel_lines = ",\n".join(f'  "./wheels/{w.name}"' for w in wheels)
    platform_list = ", ".join(f'"{p}"' for p in platforms)
    top = f"platforms = [{platform_list}]\nwheels = [\n{wheel_lines},\n]\n\n"
    head, sep, tables = text.partition("\n[")  # top-level keys must come before the first table
    (stage / "blender_manifest.toml").write_text(head.rstrip() + "\n" + top + sep.lstrip("\n") + tables)


def blender_ext_command(blender: str | None) -> list[str]:
    """The command that runs Blender's extension builder: ``blender --command extension`` when a
    Blender executable is given, else ``blender_ext.py`` from the installed ``bpy`` module."""
    if blender:
        return [blender, "--factory-startup", "--command", "extension"]
    try:
        import importlib.util

        spec = importlib.util.find_spec("bpy")
    except (ImportError, ValueError):
        spec = None
    if spec is None or spec.origin is None:
        raise BuildError("Blender's extension builder was not found: pass --blender PATH or `pip install bpy==5.0.*`")
    found = sorted(Path(spec.origin).parent.glob("*/scripts/addons_core/bl_pkg/cli/blender_ext.py"))
    if not found:
        raise BuildError(f"no blender_ext.py under {Path(spec.origin).parent}: pass --blender PATH")
    return [sys.executable, str(found[-1])]


def build(out_dir: Path, platforms: list[str] | None = None, pythons: list[str] | None = None,
          blender: str | None = None) -> Path:
    """Build the extension zip into ``out_dir`` and return its path.

    Raises:
        BuildError: an unknown platform, a download or build step failed, or Blender rejected
            the manifest (its message is included).
    """
    platforms = list(platforms or PLATFORMS)
    unknown = [p for p in platforms if p not in PLATFORMS]
    if unknown:
        raise BuildError(f"unknown platform(s) {unknown}; choose from {list(PLATFORMS)}")
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        stage = Path(tmp) / "splatsmith"
        shutil.copytree(ADDON, stage, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "wheels"))
        wheels_dir = stage / "wheels"
        wheels_dir.mkdir()
        wheels = download_wheels(wheels_dir, platforms, list(pythons or PYTHONS))
        wheels.append(build_protocol_wheel(wheels_dir))
        write_manifest(stage, sorted(wheels), platforms)
        target = out_dir / f"splatsmith-{protocol_version()}.zip"
        target.unlink(missing_ok=True)
        cmd = blender_ext_command(blender)
        _run(cmd + ["build", "--source-dir", str(stage), "--output-filepath", str(target)], "Blender's extension build")
        _run(cmd + ["validate", str(target)], "Blender's extension validation")
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.build_extension", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / "dist"), help="output folder (default: dist/)")
    parser.add_argument("--platform", action="append", choices=list(PLATFORMS), help="repeatable; default: all")
    parser.add_argument("--python", action="append", choices=list(PYTHONS), help="repeatable; default: all")
    parser.add_argument("--blender", help="a Blender executable to build with (default: the bpy module's builder)")
    args = parser.parse_args(argv)
    try:
        path = build(Path(args.out), args.platform, args.python, args.blender)
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
