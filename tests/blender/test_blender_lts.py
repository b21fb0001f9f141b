"""The add-on's Blender tests in the current LTS, Blender 5.2 (Python 3.13), as well as in the
Blender 5.0 of this environment: ``tests/blender_lts/`` runs in the environment
``tools/blender_lts_env.py`` makes (``.ci/run`` makes it first; made here when missing) against a
backend of this environment, with deprecation warnings as errors."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_the_addon_works_in_blender_52_lts_without_deprecation_warnings(tmp_path):
    sys.path.insert(0, str(ROOT))
    from tools.blender_lts_env import ensure

    python = ensure()
    # The add-on from this checkout, shared_protocol from the wheel the environment holds (as the
    # extension zip ships it): a folder with only the add-on in it leads the module path.
    (tmp_path / "blender_addon").symlink_to(ROOT / "blender_addon", target_is_directory=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(SPLATSMITH_BACKEND_PYTHON=sys.executable, PYTHONPATH=str(tmp_path))
    # "-o addopts=": pyproject's -n (pytest-xdist) is the main environment's; this one runs serially.
    done = subprocess.run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=", "-W", "error::DeprecationWarning",
                           "--confcutdir", str(ROOT / "tests" / "blender_lts"), str(ROOT / "tests" / "blender_lts")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=3000)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]
    assert "2 passed" in output, output[-3000:]
    assert "deprecat" not in output.lower(), output[-6000:]  # Blender's own messages, Python warnings or not
