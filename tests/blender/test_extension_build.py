"""The extension build script: its zip passes Blender's validation and installs in real Blender."""
from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytest.importorskip("bpy")

from tools import build_extension  # noqa: E402

INSTALL = r"""
import json, os, sys
import bpy
result = bpy.ops.extensions.package_install_files(filepath=sys.argv[1], repo="user_default", enable_on_install=True)
site = os.path.join(bpy.utils.user_resource("EXTENSIONS"), ".local", "lib",
                    f"python{sys.version_info.major}.{sys.version_info.minor}", "site-packages")
print(json.dumps({
    "result": sorted(result),
    "enabled": [a.module for a in bpy.context.preferences.addons if a.module.endswith("splatsmith")],
    "operators": [name for name in ("generate", "fetch_job", "regenerate") if hasattr(bpy.ops.splatsmith, name)],
    "panel": hasattr(bpy.types, "VIEW3D_PT_splatsmith"),
    "site_packages": sorted(os.listdir(site)) if os.path.isdir(site) else [],
}))
"""


@pytest.mark.slow
def test_build_script_zip_validates_and_installs(tmp_path):
    zip_path = build_extension.build(tmp_path / "dist")
    with zipfile.ZipFile(zip_path) as zf:
        names = zf.namelist()
        manifest = zf.read("blender_manifest.toml").decode()
    wheels = [n for n in names if n.startswith("wheels/")]
    # Python 3.11 (Blender 4.2-5.0) and 3.13 (newer; pyzmq's wheel for it is its cp312 stable-ABI one).
    for package, abis in (("pyzmq", ("-cp311-cp311-", "-cp312-abi3-")), ("msgpack", ("-cp311-cp311-", "-cp313-cp313-"))):
        for abi in abis:
            for platform in ("manylinux", "win_amd64", "macosx"):
                assert any(w.startswith(f"wheels/{package}-") and abi in w and platform in w for w in wheels), \
                    (package, abi, platform, wheels)
    assert any("msgpack" in w and "cp313" in w and "arm64" in w for w in wheels)
    assert any(w.startswith("wheels/splatsmith_protocol-") for w in wheels)
    assert all(f'"./{w}"' in manifest for w in wheels) and 'id = "splatsmith"' in manifest
    assert "operators.py" in names and "blender_manifest.toml" in names
    # Real Blender installs it into a fresh user folder, installs its wheels and enables it.
    env = {"BLENDER_USER_RESOURCES": str(tmp_path / "user"), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", INSTALL, str(zip_path)], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=300)
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["result"] == ["FINISHED"] and report["enabled"] == ["bl_ext.user_default.splatsmith"]
    assert report["operators"] == ["generate", "fetch_job", "regenerate"] and report["panel"]
    assert {"zmq", "msgpack", "shared_protocol"} <= set(report["site_packages"])


def test_build_script_rejects_an_unknown_platform(tmp_path):
    with pytest.raises(build_extension.BuildError, match="unknown platform"):
        build_extension.build(tmp_path, platforms=["amiga-68k"])
