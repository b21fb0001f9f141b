"""Time on Blender's main thread to apply streamed results, against Blender's glTF importer.

Prints figures; asserts nothing. Run: ``python bench/blender_ingest.py`` (needs ``bpy``).

- Preview: a 50k-point Gaussian preview applied to the preview object in place
  (``scene_io.apply_gaussian_preview``: ``foreach_set`` of positions and a colour attribute;
  the geometry-nodes points modifier is evaluated by Blender afterwards, timed separately as
  "depsgraph evaluation").
- Final asset: a 100k-face mesh with per-vertex UVs and a 1024x1024 PNG texture, as the add-on
  applies a ``result`` (``apply_mesh`` + ``packed_image_from_png`` + ``assign_texture``), against
  ``bpy.ops.import_scene.gltf`` of the same asset written as a GLB by the backend's exporter.
"""
from __future__ import annotations

import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import trimesh
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bpy  # noqa: E402

from backend.geometry.export import write_glb  # noqa: E402
from blender_addon import scene_io  # noqa: E402


def sphere_asset(faces: int = 100_000, texture: int = 1024):
    n = int(np.sqrt(faces / 4)) + 1  # uv_sphere(count=[n, n]) has about 4 n^2 faces
    mesh = trimesh.creation.uv_sphere(radius=0.5, count=[n, n])
    v = mesh.vertices.astype(np.float32)
    uv = np.stack([0.5 + np.arctan2(v[:, 0], v[:, 2]) / (2 * np.pi), 0.5 + np.arcsin(np.clip(v[:, 1] / 0.5, -1, 1)) / np.pi], 1)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:texture, 0:texture] / texture
    rgb = np.stack([0.5 + 0.4 * np.sin(12 * xx), 0.5 + 0.4 * np.cos(9 * yy), 0.5 + 0.2 * np.sin(20 * xx * yy)], -1)
    rgb = (np.clip(rgb + rng.normal(0, 0.03, rgb.shape), 0, 1) * 255).astype(np.uint8)
    png = io.BytesIO()
    Image.fromarray(rgb).save(png, format="PNG")
    return v, mesh.faces.astype(np.int32), uv.astype(np.float32), rgb, png.getvalue()


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1000)
    return out


def main() -> None:
    rng = np.random.default_rng(1)
    means = rng.normal(0, 0.3, (50_000, 3)).astype(np.float32)
    rgb = rng.integers(0, 255, (50_000, 3), dtype=np.uint8)
    opacity = rng.uniform(0, 1, 50_000).astype(np.float32)
    scene_io.apply_gaussian_preview("bench preview", means, rgb, opacity)  # creates the object and modifier
    updates = timed(lambda: scene_io.apply_gaussian_preview("bench preview", means + 0.001, rgb, opacity), 10)
    evals = timed(lambda: (bpy.data.objects["bench preview"].data.update(), bpy.context.view_layer.update()), 5)
    print(f"preview, 50k points, update in place: median {statistics.median(updates):.1f} ms "
          f"(min {min(updates):.1f}, max {max(updates):.1f}); depsgraph evaluation of the points modifier "
          f"{statistics.median(evals):.1f} ms")
    scene_io.remove_preview("bench preview")

    verts, faces, uv, texture, png = sphere_asset()
    print(f"final asset: {len(faces)} faces, {len(verts)} vertices, texture {texture.shape[1]}x{texture.shape[0]} "
          f"(PNG {len(png) / 1e6:.1f} MB)")
    ours = []
    for k in range(3):
        start = time.perf_counter()
        obj = scene_io.apply_mesh(f"bench result {k}", verts, faces, uv)
        image = scene_io.packed_image_from_png(f"bench result {k} texture", png)
        scene_io.assign_texture(obj, image, f"bench result {k} material")
        ours.append((time.perf_counter() - start) * 1000)
    with tempfile.TemporaryDirectory() as tmp:
        glb = write_glb(Path(tmp) / "asset.glb", verts, faces, uv, texture)
        gltf = timed(lambda: bpy.ops.import_scene.gltf(filepath=str(glb)), 3)
    ours_ms, gltf_ms = statistics.median(ours), statistics.median(gltf)
    print(f"final asset, add-on ingest: median {ours_ms:.0f} ms ({', '.join(f'{t:.0f}' for t in ours)})")
    print(f"final asset, bpy.ops.import_scene.gltf: median {gltf_ms:.0f} ms ({', '.join(f'{t:.0f}' for t in gltf)})")
    print(f"speed-up: {gltf_ms / ours_ms:.1f}x (target >= 5x); preview target < 20 ms")


if __name__ == "__main__":
    main()
