"""The geometry chain: extraction, clean-up, decimation, unwrapping, baking, GLB/PLY export."""
from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch
import trimesh

from backend.cameras import orbit_cameras
from backend.geometry.export import load_glb, texture_to_uint8, write_glb
from backend.geometry.extract import (ExtractionError, clean_mesh, decimate, density_grid, ellipsoid_radii, extract_mesh,
                                      marching_cubes)
from backend.geometry.uv import UnwrapError, bake_texture, fill_empty_texels, unwrap
from backend.render.gaussians import GaussianModel
from backend.render.mesh import TexturedMesh, interpolate, rasterize_uv, render_mesh


def _psnr(a, b) -> float:
    return float(-10 * np.log10(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)))


def test_extracted_ellipsoid_matches_its_radii_within_two_percent():
    sig = np.array([0.25, 0.12, 0.18])
    model = GaussianModel.from_points(torch.tensor([[0.1, -0.05, 0.2]]), scale=1.0, opacity=0.9)
    with torch.no_grad():
        model.params["scales"][:] = torch.log(torch.tensor(sig, dtype=torch.float32))
        model.params["quats"][:] = torch.nn.functional.normalize(torch.tensor([[0.9, 0.2, 0.3, 0.1]]), dim=-1)
    level = 0.3
    density, origin, spacing = density_grid(model, 128)
    mesh = marching_cubes(density, level, origin, spacing)
    radii = ellipsoid_radii(sig, 0.9, level)
    R = trimesh.transformations.quaternion_matrix(model.quats[0].detach().numpy())[:3, :3]
    local = (mesh.vertices - np.array([0.1, -0.05, 0.2])) @ R  # into the ellipsoid's axes
    extent = np.abs(local).max(0)
    assert np.all(np.abs(extent / radii - 1) < 0.02), (extent, radii)
    # Every vertex lies on the ellipsoid: sum (x_i / r_i)^2 = 1 within 2%.
    assert np.abs(np.sqrt(((local / radii) ** 2).sum(1)) - 1).max() < 0.02
    assert mesh.is_watertight and mesh.volume > 0  # closed, outward-facing
    with pytest.raises(ExtractionError, match="never crosses"):
        marching_cubes(density, 5.0, origin, spacing)


def test_clean_removes_floaters_and_decimate_meets_the_budget():
    main = trimesh.creation.icosphere(subdivisions=4)
    floater = trimesh.creation.icosphere(subdivisions=0, radius=0.05)
    floater.apply_translation([3, 0, 0])
    cleaned = clean_mesh(trimesh.util.concatenate([main, floater]))
    assert len(cleaned.faces) == len(main.faces)
    small = decimate(cleaned, 1000)
    assert 800 <= len(small.faces) <= 1000
    assert abs(small.volume - main.volume) / main.volume < 0.03


def test_extract_mesh_from_a_cloud_of_gaussians():
    g = torch.Generator().manual_seed(0)
    pts = torch.nn.functional.normalize(torch.randn(3000, 3, generator=g), dim=-1) * 0.4  # a spherical shell
    model = GaussianModel.from_points(pts, scale=0.04, opacity=0.9)
    mesh = extract_mesh(model, resolution=64, threshold=1.0, max_faces=5000).mesh
    r = np.linalg.norm(mesh.vertices, axis=1)
    # One outward surface (the hollow inside is filled), not an inner one as well.
    assert len(mesh.faces) <= 5000 and r.min() > 0.38 and 0.4 < r.mean() < 0.5 and mesh.volume > 0
    # Calibrated against the Gaussians' silhouettes from a few views.
    calibrated = extract_mesh(model, resolution=64, max_faces=5000,
                              calibration_cameras=orbit_cameras([0, 45], [0, 90], 2.0, 49.1, 64, 64))
    assert calibrated.silhouette_iou > 0.95 and calibrated.level in [2.0 ** (k / 2) for k in range(-4, 5)]


def _textured_cube(size: int = 256):
    cube = trimesh.creation.box(extents=[1.0, 1.0, 1.0]).subdivide().subdivide()
    uvm = unwrap(cube.vertices, cube.faces, resolution=size)
    corner_uv = torch.from_numpy(uvm.corner_uv)
    verts, faces = torch.from_numpy(uvm.vertices), torch.from_numpy(uvm.faces)
    rast = rasterize_uv(corner_uv, size)
    pos = interpolate(verts, faces, rast)[0]
    tex = torch.stack([0.5 + 0.4 * torch.sin(4 * pos[..., 0] + 1), 0.5 + 0.4 * torch.cos(3 * pos[..., 1]),
                       0.5 + 0.4 * torch.sin(5 * pos[..., 2] - pos[..., 0])], -1)
    tex = torch.from_numpy(fill_empty_texels(tex.numpy(), rast.mask[0].numpy()))
    return uvm, TexturedMesh(verts, faces, corner_uv, tex.float()), rast.mask[0].numpy()


def test_unwrapped_cube_rebakes_its_own_texture_above_35_db():
    uvm, mesh, covered = _textured_cube(256)
    cams = orbit_cameras([-45, 0, 45, 0, 0, 0, 0, 90, -90] * 2, [0, 0, 0, 90, 180, 270, 45, 0, 0] * 2, 2.6, 49.1, 384, 384)
    cams = cams[list(range(9))]
    with torch.no_grad():
        views = render_mesh(mesh, cams, background=0.0)
    baked, seen = bake_texture(uvm, cams, views.rgb, views.alpha[..., 0], size=256)
    gt = mesh.texture.numpy()
    inner = covered & seen
    assert inner.mean() > 0.5
    value = _psnr(baked[inner], gt[inner])
    assert value > 35.0, value
    assert np.isfinite(baked).all() and (fill_empty_texels(baked, seen) == baked).all()


def test_unwrap_keeps_face_order_and_enforces_its_time_limit():
    sphere = trimesh.creation.icosphere(subdivisions=3)
    uvm = unwrap(sphere.vertices, sphere.faces, resolution=256)
    assert np.array_equal(uvm.vmapping[uvm.faces], sphere.faces)
    assert np.allclose(uvm.vertices, sphere.vertices[uvm.vmapping])
    assert uvm.uv.min() >= 0 and uvm.uv.max() <= 1
    with pytest.raises(UnwrapError, match="Decimate or clean"):
        unwrap(trimesh.creation.icosphere(subdivisions=6).vertices, trimesh.creation.icosphere(subdivisions=6).faces,
               time_limit=0.05)
    with pytest.raises(UnwrapError, match="Decimate it first"):
        unwrap(sphere.vertices, sphere.faces, max_faces=10)


def _glb_texcoords(path) -> np.ndarray:
    data = open(path, "rb").read()
    json_len = struct.unpack("<I", data[12:16])[0]
    gltf = json.loads(data[20:20 + json_len])
    bin_start = 20 + json_len + 8
    prim = gltf["meshes"][0]["primitives"][0]
    acc = gltf["accessors"][prim["attributes"]["TEXCOORD_0"]]
    view = gltf["bufferViews"][acc["bufferView"]]
    start = bin_start + view.get("byteOffset", 0) + acc.get("byteOffset", 0)
    return np.frombuffer(data[start:start + acc["count"] * 8], np.float32).reshape(-1, 2)


def test_glb_stores_gltf_uvs_and_round_trips(tmp_path):
    uvm, mesh, _ = _textured_cube(128)
    path = write_glb(tmp_path / "cube.glb", uvm.vertices, uvm.faces, uvm.uv, texture_to_uint8(mesh.texture))
    # In the file, V is flipped to glTF's top-left origin (trimesh does it on export).
    stored = _glb_texcoords(path)
    assert np.allclose(np.sort(stored[:, 1]), np.sort(1.0 - uvm.uv[:, 1]), atol=1e-6)
    back = load_glb(path)
    assert torch.allclose(back.vertices, mesh.vertices, atol=1e-6) and torch.equal(back.faces, mesh.faces)
    cams = orbit_cameras([20, -30], [30, 200], 2.5, 49.1, 96, 96)
    with torch.no_grad():
        a, b = render_mesh(mesh, cams).rgb, render_mesh(back, cams).rgb
    assert _psnr(a.numpy(), b.numpy()) > 40  # only 8-bit quantisation differs
    # trimesh reads it as a textured mesh too.
    loaded = trimesh.load(path, force="mesh")
    assert loaded.visual.uv.shape == (len(uvm.vertices), 2)
