"""The second test environment: Blender 5.2 LTS (``bpy==5.2.*`` from PyPI, Python 3.13) with what the
add-on needs beside it (pyzmq, msgpack, and a wheel of ``shared_protocol``, as the extension zip
ships them) and pytest. No torch and no backend: the add-on's LTS tests
(``tests/blender_lts/``) drive a backend of the main (Python 3.11) environment over loopback.

    python -m tools.blender_lts_env            # make or refresh .venv-blender-lts, print its python

Idempotent: a stamp in the environment records what was installed; it is rebuilt only when that
changes (the requirements below, or the ``shared_protocol`` sources). ``.ci/run`` calls it, and so
does ``tests/blender/test_blender_lts.py`` when the environment is missing.
"""
from __future__ import annotations

import glob
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENV = ROOT / ".venv-blender-lts"
#: What the environment holds besides the shared_protocol wheel (bpy 5.2 needs numpy >= 2.2).
REQUIREMENTS = ("bpy==5.2.*", "pyzmq>=25", "msgpack>=1.0", "numpy>=2.2,<3", "pytest>=8", "pytest-timeout>=2.3")


class EnvError(RuntimeError):
    """The environment could not be made; the message says which step and why."""


def python313() -> str:
    """A Python 3.13 interpreter: ``$SPLATSMITH_PYTHON313``, ``python3.13`` on PATH when it runs,
    or one of pyenv's 3.13 versions.

    Raises:
        EnvError: none found (the message says how to give one).
    """
    candidates = [os.environ.get("SPLATSMITH_PYTHON313", ""), shutil.which("python3.13") or ""]
    candidates += sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.13*/bin/python3.13")), reverse=True)
    for candidate in filter(None, candidates):
        try:
            done = subprocess.run([candidate, "-c", "import sys; print(sys.version_info[:2] == (3, 13))"],
                                  capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if done.returncode == 0 and done.stdout.strip() == "True":
            return candidate
    raise EnvError("no Python 3.13 found (Blender 5.2 embeds 3.13): install it, or set SPLATSMITH_PYTHON313 to one")


def _stamp() -> str:
    digest = hashlib.sha256("\n".join(REQUIREMENTS).encode())
    for path in sorted((ROOT / "shared_protocol").glob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _run(cmd: list[str], what: str) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise EnvError(f"{what} failed (exit {done.returncode}):\n{(done.stderr + done.stdout)[-2000:]}")


def ensure(env: Path = ENV) -> Path:
    """Make (or refresh) the environment at ``env``; returns its Python.

    Raises:
        EnvError: no Python 3.13, or a step failed (pip's message included).
    """
    from tools.build_extension import build_protocol_wheel

    python = env / "bin" / "python"
    stamp = env / "splatsmith-stamp.txt"
    if python.is_file() and stamp.is_file() and stamp.read_text() == _stamp():
        return python
    shutil.rmtree(env, ignore_errors=True)
    _run([python313(), "-m", "venv", str(env)], "creating the Python 3.13 environment")
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    _run(pip + list(REQUIREMENTS), f"installing {', '.join(REQUIREMENTS)}")
    with tempfile.TemporaryDirectory() as tmp:
        wheel = build_protocol_wheel(Path(tmp))
        _run(pip + ["--no-deps", str(wheel)], "installing the shared_protocol wheel")
    stamp.write_text(_stamp())
    return python


def main() -> int:
    try:
        print(ensure())
    except EnvError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
