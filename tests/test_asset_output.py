"""The output stage every generating method ends in (``stages.asset_output``): placement and
size, and the normal map baked from the full-resolution surface onto the decimated mesh."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh

from backend.cameras import orbit_cameras
from backend.geometry.extract import decimate
from backend.geometry.surface_bake import FLAT_NORMAL, bake_normal_map, mikktspace_tangents, vertex_normals
from backend.geometry.uv import unwrap
from backend.jobs import JobStore
from backend.pipelines.base import Emitter, ParamError
from backend.pipelines.reconstruct import ReconstructPipeline
from backend.render.mesh import render_shaded
from backend.stages.asset_output import placement
from backend.stages.reconstruction import psnr
from backend.worker import run_local


def _bumpy_sphere(subdivisions: int = 6) -> trimesh.Trimesh:
    """A sphere of radius 0.5 with bumps of 4% (sin 14x sin 14y sin 14z): detail a 2,000-face
    decimation cannot keep in its geometry."""
    s = trimesh.creation.icosphere(subdivisions=subdivisions, radius=0.5)
    v = np.asarray(s.vertices)
    bump = 1 + 0.04 * np.sin(28 * v[:, 0]) * np.sin(28 * v[:, 1]) * np.sin(28 * v[:, 2])
    return trimesh.Trimesh(v * bump[:, None], s.faces, process=False)


def _t(a, dtype=torch.float32) -> torch.Tensor:
    return torch.as_tensor(np.array(a), dtype=dtype)


def test_placement_scales_to_the_height_and_puts_the_origin_at_the_bottom_centre():
    rng = np.random.default_rng(0)
    v = rng.uniform([-0.3, 0.2, -1.0], [0.5, 0.9, 0.4], (500, 3))
    for height in (0.5, 2.0):
        scale, offset = placement(v, height)
        placed = v * scale + offset
        lo, hi = placed.min(0), placed.max(0)
        assert np.isclose(hi[1] - lo[1], height) and np.isclose(lo[1], 0.0)
        assert np.allclose((lo[[0, 2]] + hi[[0, 2]]) / 2, 0.0)
        assert np.isclose(scale, height / 0.7, rtol=0.05)  # uniform: the proportions stay
    with pytest.raises(ValueError, match="flat along \\+Y"):
        placement(np.array([[0, 1, 0], [1, 1, 0], [0, 1, 1]], float), 1.0)


def test_tangents_are_unit_orthogonal_and_follow_the_uvs():
    """Each tangent is a unit vector in the tangent plane pointing along +u; the sign flips where
    the UVs are mirrored (the bitangent then still points along +v)."""
    plane = trimesh.Trimesh([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], [[0, 1, 2], [0, 2, 3]], process=False)
    normals = np.tile([0, 0, 1.0], (4, 1))
    for mirror, sign in ((1.0, 1.0), (-1.0, -1.0)):
        uv = np.asarray(plane.vertices)[:, :2] * [mirror, 1.0]
        tan = mikktspace_tangents(plane.vertices, normals, uv, plane.faces)
        assert np.allclose(tan[:, :3], [mirror, 0, 0], atol=1e-6) and np.all(tan[:, 3] == sign)
        bitangent = np.cross(normals, tan[:, :3]) * tan[:, 3:]
        assert np.allclose(bitangent, [0, 1, 0], atol=1e-6)  # dP/dv
    sphere = _bumpy_sphere(4)
    uvm = unwrap(np.asarray(sphere.vertices, np.float32), np.asarray(sphere.faces), resolution=256)
    n = vertex_normals(uvm.vertices, uvm.faces, uvm.vmapping)
    tan = mikktspace_tangents(uvm.vertices, n, uvm.uv, uvm.faces)
    assert np.allclose(np.linalg.norm(tan[:, :3], axis=1), 1, atol=1e-5)
    assert np.abs((tan[:, :3] * n).sum(1)).max() < 1e-5
    # copies of a vertex along a UV seam share their normal (the surface shades smooth there)
    first = {}
    for i, w in enumerate(uvm.vmapping):
        assert np.allclose(n[i], n[first.setdefault(int(w), i)], atol=1e-6)


def test_the_normal_map_brings_the_decimated_mesh_closer_to_the_full_resolution_shading():
    """Shaded at held-out views (grey Lambert, two lights), the 2,000-face decimation of an
    82k-face bumpy sphere with its baked normal map against the same decimation without it, both
    compared with the full-resolution mesh."""
    high = _bumpy_sphere()
    low = decimate(high, 2000)
    uvm = unwrap(np.asarray(low.vertices, np.float32), np.asarray(low.faces), resolution=512)
    normal_map = bake_normal_map(uvm.vertices, uvm.faces, uvm.uv, high, 512, welded=uvm.vmapping)
    assert normal_map.shape == (512, 512, 3) and normal_map.min() >= 0 and normal_map.max() <= 1
    # a flat region of the map would be the unperturbed normal; the bumps make it vary
    assert np.abs(normal_map - FLAT_NORMAL).reshape(-1, 3).max(0)[:2].min() > 0.05
    g = torch.Generator().manual_seed(5)
    cams = orbit_cameras(torch.empty(8).uniform_(-30, 40, generator=g), torch.empty(8).uniform_(-180, 180, generator=g),
                         1.8, 40.0, 128, 128)
    n = vertex_normals(uvm.vertices, uvm.faces, uvm.vmapping)
    tangents = mikktspace_tangents(uvm.vertices, n, uvm.uv, uvm.faces)
    with torch.no_grad():
        truth = render_shaded(_t(high.vertices), _t(high.faces, torch.long), _t(high.vertex_normals), cams)
        plain = render_shaded(_t(uvm.vertices), _t(uvm.faces, torch.long), _t(n), cams)
        mapped = render_shaded(_t(uvm.vertices), _t(uvm.faces, torch.long), _t(n), cams, uv=_t(uvm.uv),
                               tangents=_t(tangents), normal_map=_t(normal_map))
    without, with_map = psnr(plain, truth), psnr(mapped, truth)
    print(f"normal map: held-out shading PSNR against the 82k-face mesh, 2k faces without the map {without:.2f} dB, "
          f"with it {with_map:.2f} dB")
    assert with_map > without + 2.0, (without, with_map)


def test_a_decimated_reconstruction_is_placed_and_carries_its_normal_map(tmp_path):
    """Through a real method (reconstruct, ``fast`` shortened: a 2,000-face decimation of a finer
    surface): the GLB's normalTexture, ``normal.png``, the arrays, the meta, a height of 0.3 m;
    reconstruct's default height 0 keeps the reconstruction where the object stood; a negative
    height is refused."""
    from backend.pipelines.reconstruct import load_dataset
    from scenes import make_test_object, spiral_views, write_dataset

    mesh, _ = make_test_object(texture_size=128)
    root = tmp_path / "data"
    write_dataset(root, mesh, spiral_views(12, size=64), range(12))
    images, transforms, angle = load_dataset(root, 64)
    inputs = {"images": images, "transforms": transforms}
    params = {"camera_angle_x": angle, "resolution": 64, "iters": 150, "init_points": 2000, "densify_from": 50,
              "densify_every": 50, "densify_until": 100, "max_faces": 2000, "texture_size": 256, "mesh_resolution": 64,
              "height": 0.3}
    job, result = run_local(JobStore(tmp_path / "jobs"), ReconstructPipeline, "fast", params, inputs, 0, Emitter())
    out = result.meta["output"]
    assert out["faces_full_resolution"] > out["faces"] == len(result.arrays["faces"])
    assert out["maps"] == ["base_color", "normal"] and (job.dir / "normal.png").is_file()
    v = result.arrays["vertices"]
    assert np.isclose(v[:, 1].max() - v[:, 1].min(), 0.3, atol=1e-5) and abs(v[:, 1].min()) < 1e-6
    assert result.arrays["normal_map"].shape == (256, 256, 3) and result.arrays["normals"].shape == v.shape
    gltf = trimesh.load(job.dir / "asset.glb", force="mesh")
    assert gltf.visual.material.normalTexture is not None
    kept = {k: v for k, v in params.items() if k != "height"}
    _, as_is = run_local(JobStore(tmp_path / "jobs"), ReconstructPipeline, "fast", kept, inputs, 0, Emitter())
    assert as_is.meta["output"]["origin"] == "job frame" and as_is.meta["output"]["scale"] == 1.0
    lo, hi = as_is.arrays["vertices"].min(0), as_is.arrays["vertices"].max(0)
    glo, ghi = mesh.vertices.min(0).values.numpy(), mesh.vertices.max(0).values.numpy()
    assert np.allclose(lo, glo, atol=0.1) and np.allclose(hi, ghi, atol=0.1), (lo, hi, glo, ghi)
    with pytest.raises(ParamError, match="height"):
        run_local(JobStore(tmp_path / "jobs"), ReconstructPipeline, "fast", dict(params, height=-1), inputs, 0,
                  Emitter())


def test_quads_on_request_carry_the_colour_and_the_normals(tmp_path):
    """remesh=quad on the textured test object: at least 90% of the polygons the client gets are
    quads, the GLB is their triangulation, the colour baked onto the quads renders like the
    source at held-out views, and the normal map is baked."""
    from backend.contracts import CancelToken
    from backend.geometry.export import load_glb
    from backend.geometry.uv import UVMesh
    from backend.render.mesh import TexturedMesh, render_mesh
    from backend.stages.asset_output import write_asset
    from scenes import make_test_object

    mesh, raw = make_test_object(texture_size=256)
    uvm = UVMesh(raw["vertices"].astype(np.float32), raw["faces"].astype(np.int64), raw["uv"].astype(np.float32),
                 np.arange(len(raw["vertices"])))
    texture = mesh.texture.numpy()
    files, arrays, report = write_asset(tmp_path, uvm, texture, "quads", {"texture_size": 256, "height": 0.0,
                                                                         "remesh": "quad", "quad_faces": 3000},
                                        Emitter(), CancelToken())
    sizes = arrays["polygon_sizes"]
    assert set(np.unique(sizes)) <= {3, 4} and sizes.sum() == len(arrays["polygons"])
    assert np.unique(arrays["polygons"]).size == len(arrays["vertices"])  # no loose vertices
    assert report["quad_fraction"] >= 0.9 and 1500 <= report["quads"] <= 6000, report
    assert len(arrays["faces"]) == len(load_glb(files["asset.glb"]).faces) == 2 * report["quads"] + (sizes == 3).sum()
    assert report["maps"] == ["base_color", "normal"] and "normal_map" in arrays
    g = torch.Generator().manual_seed(2)
    cams = orbit_cameras(torch.empty(8).uniform_(-20, 40, generator=g), torch.empty(8).uniform_(-180, 180, generator=g),
                         2.0, 49.1, 128, 128)
    quads = load_glb(files["asset.glb"])
    with torch.no_grad():
        before = render_mesh(mesh, cams, background=1.0).rgb
        after = render_mesh(TexturedMesh(quads.vertices, quads.faces, quads.uv, quads.texture), cams, background=1.0).rgb
    figure = psnr(after, before)
    print(f"quad remesh: {report['quads']} quads ({report['quad_fraction']:.1%} of the polygons), held-out colour "
          f"PSNR against the source {figure:.2f} dB")
    assert figure >= 21.0


def test_pbr_maps_baked_from_the_intrinsics_oracle_match_the_truth(tmp_path):
    """pbr=true with the intrinsics oracle on a test object whose albedo, roughness and metallic
    maps are known (the albedo its texture, the other two smooth patterns in UV space), given a
    base colour with lighting baked in (the albedo darkened): the baked maps against the truth
    at held-out views, each at least 30 dB; the GLB holds the metallicRoughnessTexture."""
    from backend.contracts import CancelToken
    from backend.geometry.export import load_glb, load_metallic_roughness, write_glb
    from backend.geometry.uv import UVMesh
    from backend.render.mesh import TexturedMesh, render_mesh
    from backend.stages.asset_output import write_asset
    from scenes import make_test_object

    mesh, raw = make_test_object(texture_size=256)
    u, v = np.meshgrid(np.linspace(0, 1, 256), np.linspace(1, 0, 256))
    truth_mr = np.stack([np.zeros_like(u), 0.5 + 0.3 * np.sin(2 * np.pi * 2 * u), 0.5 + 0.4 * np.sin(2 * np.pi * 3 * v)],
                        -1).astype(np.float32)
    gt = write_glb(tmp_path / "truth.glb", raw["vertices"], raw["faces"], raw["uv"], (raw["texture"]),
                   metallic_roughness=(truth_mr * 255 + 0.5).astype(np.uint8))
    uvm = UVMesh(raw["vertices"].astype(np.float32), raw["faces"].astype(np.int64), raw["uv"].astype(np.float32),
                 np.arange(len(raw["vertices"])))
    lit = mesh.texture.numpy() * 0.6  # a base colour with shading baked in
    files, arrays, report = write_asset(tmp_path, uvm, lit, "pbr", {"texture_size": 256, "height": 0.0, "pbr": True,
                                                                   "teacher": "oracle", "oracle_mesh": str(gt)},
                                        Emitter(), CancelToken())
    assert report["maps"] == ["base_color (albedo)", "metallic_roughness"] and report["pbr"] == "IntrinsicsOracle"
    assert (tmp_path / "metallic_roughness.png").is_file() and arrays["metallic_roughness"].shape == (256, 256, 3)
    written = load_glb(files["asset.glb"])
    baked_mr = load_metallic_roughness(files["asset.glb"])
    assert baked_mr is not None
    truth_mesh = load_glb(gt)
    truth_mr_t = load_metallic_roughness(gt)
    g = torch.Generator().manual_seed(8)
    cams = orbit_cameras(torch.empty(8).uniform_(-20, 40, generator=g), torch.empty(8).uniform_(-180, 180, generator=g),
                         2.0, 49.1, 128, 128)

    def shown(m, tex, bg):
        return render_mesh(TexturedMesh(m.vertices, m.faces, m.uv, tex), cams, background=bg).rgb

    with torch.no_grad():
        figures = {"albedo": psnr(shown(written, written.texture, 1.0), shown(truth_mesh, truth_mesh.texture, 1.0)),
                   "roughness": psnr(shown(written, baked_mr, 0.0)[..., 1:2], shown(truth_mesh, truth_mr_t, 0.0)[..., 1:2]),
                   "metallic": psnr(shown(written, baked_mr, 0.0)[..., 2:], shown(truth_mesh, truth_mr_t, 0.0)[..., 2:])}
        darkened = psnr(shown(written, torch.from_numpy(lit), 1.0), shown(truth_mesh, truth_mesh.texture, 1.0))
    print("pbr maps against the truth at held-out views: " + ", ".join(f"{k} {v:.2f} dB" for k, v in figures.items())
          + f" (the lit base colour given: {darkened:.2f} dB)")
    assert min(figures.values()) >= 30.0, figures


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_every_generating_method_ends_in_the_output_stage(tmp_path):
    """dreamgaussian, dreamtime, dtc123, dreamcraft3d and im3d (``tiny``, shortened) with
    height=0.4 and pbr=true (the tiny Marigold): each asset is 0.4 m tall on its bottom centre,
    with its PBR maps and its normal map, and its meta says so; then
    with remesh=quad: at least 90% quads with their normal map (reconstruct: the test above)."""
    from backend.images import demo_photo
    from backend.pipelines import load_builtin

    registry = load_builtin()
    rgb, mask = demo_photo()
    photo = {"image": rgb, "mask": mask}
    runs = {"dreamgaussian": ({"mode": "text", "prompt": "a stone", "iters": 20}, {}),
            "dreamtime": ({"mode": "text", "prompt": "a stone", "iters": 20}, {}),
            "dtc123": ({"coarse_iters": 4, "middle_iters": 4, "fine_iters": 2}, photo),
            "dreamcraft3d": ({"mode": "text", "prompt": "a stone"}, {}),
            "im3d": ({"loops": 0, "regen_strength": "", "iters": 10}, photo)}
    for name, (params, inputs) in runs.items():
        _, result = run_local(JobStore(tmp_path / name), registry[name].implementation_class(), "tiny", {**params, "height": 0.4, "pbr": True}, inputs, 0,
                              Emitter())
        v, out = result.arrays["vertices"], result.meta["output"]
        assert np.isclose(v[:, 1].max() - v[:, 1].min(), 0.4, atol=1e-5) and abs(v[:, 1].min()) < 1e-6, name
        assert np.allclose((v[:, [0, 2]].min(0) + v[:, [0, 2]].max(0)) / 2, 0, atol=1e-5), name
        assert out["origin"] == "bottom centre" and out["height"] == 0.4, (name, out)
        assert "metallic_roughness" in out["maps"] and "metallic_roughness" in result.arrays, (name, out)
        # decimated from their marching-cubes surface: its normal map (dtc123 and dreamcraft3d move
        # that surface along with their geometry refinement)
        assert out["faces_full_resolution"] > out["faces"] and "normal" in out["maps"], (name, out)
        # quads on request, the same stage for every method
        _, quads = run_local(JobStore(tmp_path / f"{name}-quads"), registry[name].implementation_class(), "tiny",
                             {**params, "remesh": "quad", "quad_faces": 600}, inputs, 0, Emitter())
        out = quads.meta["output"]
        assert out["quad_fraction"] >= 0.9 and "normal" in out["maps"], (name, out)
        assert int((quads.arrays["polygon_sizes"] == 4).sum()) == out["quads"], name


@pytest.mark.slow
def test_the_cli_takes_the_output_options(tmp_path):
    """``splatsmith generate --param height=0.3 --param remesh=quad``: the GLB is 0.3 m tall on its
    bottom centre, triangles as glTF requires, and the job's meta says quads were made."""
    import json

    from conftest import cli

    out = tmp_path / "stone.glb"
    done = cli("generate", "--prompt", "a stone", "--preset", "tiny", "--param", "height=0.3", "--param", "remesh=quad",
               "--param", "quad_faces=800", "--out", out, "--device", "cpu", "--output-dir", tmp_path / "jobs")
    assert done.exit_code == 0, done.output
    glb = trimesh.load(out, force="mesh")
    lo, hi = glb.bounds
    assert np.isclose(hi[1] - lo[1], 0.3, atol=1e-4) and abs(lo[1]) < 1e-4 and glb.faces.shape[1] == 3
    meta = json.loads(next((tmp_path / "jobs").glob("*/result.json")).read_text())["meta"]["output"]
    assert meta["remesh"] == "quad" and meta["quad_fraction"] >= 0.9, meta


def test_a_quad_remesh_that_fails_leaves_the_asset_in_triangles(tmp_path):
    """A surface Instant Meshes cannot remesh (collapsed to a point) does not lose the job's work:
    the asset is written as triangles and the meta and the log say why."""
    from backend.contracts import CancelToken
    from backend.geometry.uv import UVMesh
    from backend.stages.asset_output import write_asset

    logs: list[str] = []

    class Logged(Emitter):
        def _on_log(self, line):
            logs.append(line)

    uvm = UVMesh(np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], np.float32), np.array([[0, 1, 2]]),
                 np.array([[0, 0], [1, 0], [0, 1]], np.float32), np.arange(3))
    collapsed = trimesh.Trimesh(np.zeros((3, 3)), [[0, 1, 2]], process=False)
    files, arrays, report = write_asset(tmp_path, uvm, np.full((64, 64, 3), 0.5, np.float32), "flat",
                                        {"texture_size": 64, "remesh": "quad"}, Logged(), CancelToken(), full=collapsed)
    assert report["remesh"].startswith("none (the quad remesh failed: Instant Meshes returned no quads")
    assert "polygons" not in arrays and len(arrays["faces"]) == 1 and (tmp_path / "asset.glb").is_file()
    assert any("written as triangles" in line for line in logs), logs


def test_the_full_surface_follows_a_refinement_of_its_decimation():
    """DTC123 and DreamCraft3D move the decimated mesh's vertices: the full-resolution surface
    carried along (``carry_displacement``) lands where the moved mesh says, its detail kept (here
    the decimation scaled by 1.1 and shifted: the surface within 2 mm of the same move)."""
    from backend.geometry.surface_bake import carry_displacement

    high = _bumpy_sphere(5)
    low = decimate(high, 2000)
    before = np.asarray(low.vertices)
    after = before * 1.1 + [0.0, 0.05, 0.0]
    moved = carry_displacement(high, before, after, np.asarray(low.faces))
    expected = np.asarray(high.vertices) * 1.1 + [0.0, 0.05, 0.0]
    # each vertex takes the move of its closest point on the decimation, so it is off by 0.1 x its
    # distance to that point (the decimation's own error, about a centimetre here)
    _, distance, _ = trimesh.proximity.closest_point(low, np.asarray(high.vertices))
    error = np.linalg.norm(np.asarray(moved.vertices) - expected, axis=1)
    assert np.all(error <= 0.1 * distance + 1e-6) and error.max() < 2e-3
    assert np.array_equal(moved.faces, high.faces)
