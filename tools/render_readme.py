"""Render a generated asset with Cycles on the CPU for the README (docs/render.png).

    python -m tools.render_readme [--glb ASSET.glb] [--out docs/render.png] [--samples 32]

Without ``--glb`` it first generates one: DreamGaussian in image mode, ``fast`` preset, with
the oracle teacher built from the test suite's textured object (the only teacher that yields a
likeness on a machine without model weights). The asset is brought into the scene through the
add-on's own ingest (``blender_addon.scene_io``), lit by a sun and a sky, and rendered.
"""
from __future__ import annotations

import argparse
import math
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def generate(workdir: Path) -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    from PIL import Image
    from scenes import make_test_object, render_rgba, write_object_glb

    from backend.cameras import orbit_cameras

    mesh, raw = make_test_object()
    gt = write_object_glb(workdir / "object.glb", raw)
    reference = workdir / "reference.png"  # the front view (elevation 0, azimuth 0), alpha = object
    Image.fromarray(render_rgba(mesh, orbit_cameras([0.0], [0.0], 2.0, 49.1, 256, 256))[0]).save(reference)
    out = workdir / "asset.glb"
    subprocess.run([sys.executable, "-m", "backend.cli", "generate", "--image", str(reference),
                    "--teacher", "oracle", "--oracle-mesh", str(gt),
                    "--preset", "fast", "--seed", "0", "--out", str(out), "--output-dir", str(workdir / "jobs")],
                   check=True, cwd=ROOT)
    return out


def render(glb: Path, out: Path, samples: int) -> None:
    import bpy
    import numpy as np

    from backend.geometry.export import load_glb
    from blender_addon import scene_io

    bpy.ops.wm.read_factory_settings(use_empty=True)
    mesh = load_glb(glb)
    faces = mesh.faces.numpy()
    uv_corner = mesh.uv.numpy()  # per corner [F, 3, 2] -> split vertices so that apply_mesh gets per-vertex UVs
    verts = mesh.vertices.numpy()[faces.ravel()]
    obj = scene_io.apply_mesh("asset", verts, np.arange(len(verts)).reshape(-1, 3), uv_corner.reshape(-1, 2))
    tex = (mesh.texture.clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)
    rgba = np.concatenate([tex, np.full(tex.shape[:2] + (1,), 255, np.uint8)], -1)
    image = scene_io.image_from_rgba("asset texture", rgba)
    image.pack()
    scene_io.assign_texture(obj, image, "asset material")
    bpy.ops.object.select_all(action="DESELECT")
    for poly in obj.data.polygons:
        poly.use_smooth = True
    scene = bpy.context.scene
    camera = bpy.data.objects.new("camera", bpy.data.cameras.new("camera"))
    scene.collection.objects.link(camera)
    camera.location = (1.55, -1.95, 1.05)
    camera.rotation_euler = (math.radians(70), 0.0, math.radians(38))
    scene.camera = camera
    sun = bpy.data.objects.new("sun", bpy.data.lights.new("sun", "SUN"))
    sun.data.energy = 3.0
    sun.rotation_euler = (math.radians(40), math.radians(10), math.radians(-30))
    scene.collection.objects.link(sun)
    world = bpy.data.worlds.new("world")
    world.color = (0.55, 0.6, 0.7)
    scene.world = world
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = samples
    scene.render.resolution_x, scene.render.resolution_y = 640, 480
    scene.render.film_transparent = False
    scene.render.filepath = str(out)
    bpy.ops.render.render(write_still=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.render_readme")
    parser.add_argument("--glb", type=Path)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "render.png")
    parser.add_argument("--samples", type=int, default=32)
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        glb = args.glb or generate(Path(tmp))
        render(glb, args.out.resolve(), args.samples)
    print(args.out)


if __name__ == "__main__":
    main()
