"""Every camera convention, pinned with hand-checked cases."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from backend.cameras import (Cameras, blender_to_gltf, from_blender_camera, to_blender_camera, gltf_to_blender, intrinsics, load_transforms_json,
                             look_at_point, mvp_gl, orbit_cameras, orbit_positions, sample_orbit_cameras,
                             save_transforms_json)


def project(cams: Cameras, points: torch.Tensor) -> torch.Tensor:
    """Pixel coordinates [C, P, 2] and depth [C, P] via gsplat's conventions (viewmats, K)."""
    pc = torch.einsum("cij,pj->cpi", cams.viewmats[:, :3, :3], points) + cams.viewmats[:, None, :3, 3]
    uv = torch.einsum("cij,cpj->cpi", cams.Ks, pc)
    return uv[..., :2] / uv[..., 2:], pc[..., 2]


@pytest.mark.parametrize("el, az", [(0, 0), (30, 45), (-20, 200), (60, -90), (89.9, 10)])
def test_target_projects_to_image_centre_in_front_of_the_camera(el, az):
    cams = orbit_cameras(el, az, 2.5, 49.1, 64, 48)
    px, depth = project(cams, torch.zeros(1, 3))
    assert torch.allclose(px[0, 0], torch.tensor([32.0, 24.0]), atol=1e-4)
    assert depth.item() == pytest.approx(2.5, rel=1e-5)


@pytest.mark.parametrize("az", [0, 90, 180, 270, 33])
def test_world_up_is_up_in_the_image(az):
    cams = orbit_cameras(0, az, 2.0, 49.1, 64, 64)
    px, _ = project(cams, torch.tensor([[0.0, 0.3, 0.0]]))
    assert px[0, 0, 1] < 32 - 5  # row 0 is the top
    assert px[0, 0, 0] == pytest.approx(32, abs=1e-3)


def test_azimuth_and_elevation_conventions():
    pos = orbit_positions([0, 0, 0, 30], [0, 90, 180, 0], 2.0)
    assert torch.allclose(pos[0], torch.tensor([0.0, 0.0, 2.0]), atol=1e-6)  # front: +Z
    assert torch.allclose(pos[1], torch.tensor([2.0, 0.0, 0.0]), atol=1e-6)  # azimuth 90: +X
    assert torch.allclose(pos[2], torch.tensor([0.0, 0.0, -2.0]), atol=1e-6)  # back
    assert pos[3, 1] == pytest.approx(1.0, abs=1e-6)  # positive elevation is above
    # Azimuth 90 looks at the +X side: that side is nearer than the -X side ...
    side = orbit_cameras(0, 90, 2.0, 49.1, 64, 64)
    _, depth = project(side, torch.tensor([[0.3, 0.0, 0.0], [-0.3, 0.0, 0.0]]))
    assert depth[0, 0] < depth[0, 1]
    # ... which is on the right in the front view; and counter-clockwise seen from above:
    front = orbit_cameras(0, 0, 2.0, 49.1, 64, 64)
    px, _ = project(front, torch.tensor([[0.3, 0.0, 0.0]]))
    assert px[0, 0, 0] > 32
    top = orbit_cameras(90, 0, 2.0, 49.1, 64, 64)
    px_top, _ = project(top, orbit_positions([0, 0], [0, 90], 0.5))
    v = torch.stack([px_top[0, :, 0] - 32, 32 - px_top[0, :, 1]], -1)  # y up on the screen
    assert v[0, 0] * v[1, 1] - v[0, 1] * v[1, 0] > 0  # azimuth 0 -> 90 turns counter-clockwise seen from above
    # The camera of positive elevation looks down: the top of an object is visible (nearer).
    above = orbit_cameras(45, 0, 2.0, 49.1, 64, 64)
    _, d = project(above, torch.tensor([[0.0, 0.3, 0.0], [0.0, -0.3, 0.0]]))
    assert d[0, 0] < d[0, 1]


def test_top_view_has_the_front_at_the_bottom():
    top = orbit_cameras(90, 0, 2.0, 49.1, 64, 64)
    px, _ = project(top, torch.tensor([[0.0, 0.0, 0.3], [0.3, 0.0, 0.0]]))
    assert px[0, 0, 1] > 32 + 5  # the front (+Z) is at the bottom, as in Blender's top view
    assert px[0, 1, 0] > 32 + 5  # +X on the right


def test_intrinsics_and_opengl_projection_agree():
    cams = orbit_cameras(20, 40, 2.0, 60.0, 80, 60)
    K = intrinsics(60.0, 80, 60)[0]
    assert K[1, 1] == pytest.approx(30.0 / math.tan(math.radians(30)), rel=1e-6)
    pts = torch.tensor([[0.1, 0.2, -0.3], [-0.2, 0.1, 0.25]])
    px, _ = project(cams, pts)
    clip = torch.einsum("ij,pj->pi", mvp_gl(cams)[0], torch.cat([pts, torch.ones(2, 1)], 1))
    ndc = clip[:, :2] / clip[:, 3:]
    # NDC x right, y up; pixels x right, y down.
    expect = torch.stack([(ndc[:, 0] + 1) * 40, (1 - ndc[:, 1]) * 30], -1)
    assert torch.allclose(px[0], expect, atol=1e-3)


def test_sampled_cameras_stay_in_their_ranges():
    g = torch.Generator().manual_seed(1)
    cams, el, az, r = sample_orbit_cameras(64, (-30, 30), (-180, 180), (2.0, 2.5), 49.1, 32, 32, generator=g)
    assert el.min() >= -30 and el.max() <= 30 and r.min() >= 2.0 and r.max() <= 2.5
    assert torch.allclose(cams.centers.norm(dim=-1), r, atol=1e-5)
    assert torch.allclose(look_at_point(cams), torch.zeros(3), atol=1e-4)


def test_blender_world_conversion():
    # Blender's front view camera stands on -Y looking at +Y; in glTF that is +Z: azimuth 0.
    p = torch.tensor([[0.0, -5.0, 0.0], [0.0, 0.0, 2.0]])
    assert torch.allclose(blender_to_gltf(p), torch.tensor([[0.0, 0.0, 5.0], [0.0, 2.0, 0.0]]))
    assert torch.allclose(gltf_to_blender(blender_to_gltf(p)), p)
    m = orbit_cameras(30, 60, 2.0, 40, 8, 8).c2w
    assert torch.allclose(blender_to_gltf(gltf_to_blender(m)), m, atol=1e-6)


def test_blender_camera_and_transforms_json_round_trip(tmp_path):
    # A Blender camera at (0, -5, 0) rotated 90 degrees about X looks along +Y at the origin.
    mw = np.array([[1, 0, 0, 0], [0, 0, -1, -5], [0, 1, 0, 0], [0, 0, 0, 1]], dtype=np.float32)
    cam = from_blender_camera(mw, lens_mm=50.0, sensor_width_mm=36.0, width=1920, height=1080)
    assert torch.allclose(cam.centers[0], torch.tensor([0.0, 0.0, 5.0]), atol=1e-6)
    fovx = 2 * math.atan(18 / 50)
    assert float(cam.fovy[0]) == pytest.approx(math.degrees(2 * math.atan(math.tan(fovx / 2) * 1080 / 1920)), rel=1e-5)
    px, depth = project(cam, torch.zeros(1, 3))
    assert torch.allclose(px[0, 0], torch.tensor([960.0, 540.0]), atol=1e-3) and depth.item() == pytest.approx(5.0)
    cams = orbit_cameras([10, 20, 30], [0, 120, 240], 2.0, 45.0, 40, 40)
    for i in range(3):
        (tmp_path / f"r_{i}.png").write_bytes(b"")
    save_transforms_json(tmp_path / "transforms.json", cams, [f"./r_{i}" for i in range(3)])
    meta = json.loads((tmp_path / "transforms.json").read_text())
    blender_pos = np.array(meta["frames"][0]["transform_matrix"])[:3, 3]
    assert blender_pos[2] > 0  # elevation 10 is up: +Z in Blender
    back, files = load_transforms_json(tmp_path / "transforms.json", 40, 40)
    assert torch.allclose(back.c2w, cams.c2w, atol=1e-5) and torch.allclose(back.fovy, cams.fovy, atol=1e-4)
    assert files[0].name == "r_0.png"
    with pytest.raises(FileNotFoundError, match="r_9"):
        meta["frames"][0]["file_path"] = "./r_9"
        (tmp_path / "transforms.json").write_text(json.dumps(meta))
        load_transforms_json(tmp_path / "transforms.json", 40, 40)


@pytest.mark.parametrize("w, h", [(64, 48), (48, 64)])
def test_to_blender_camera_inverts_from_blender_camera(w, h):
    cams = orbit_cameras([15, -30], [40, 250], 2.2, 45.0, w, h)
    for i, (matrix_world, lens) in enumerate(to_blender_camera(cams)):
        back = from_blender_camera(matrix_world, lens, 36.0, w, h)
        assert torch.allclose(back.c2w[0], cams.c2w[i], atol=1e-5)
        assert float(back.fovy[0]) == pytest.approx(float(cams.fovy[i]), rel=1e-5)


def test_debiased_azimuths_widen_from_the_reference_and_cover_every_sector_evenly():
    """Issue 16 item 5 (our reading of DTC123's camera de-biasing): the range widens from the
    reference view to the whole orbit, and each block of steps visits every sector once."""
    from backend.cameras import DebiasedAzimuths

    g = torch.Generator().manual_seed(3)
    widening = DebiasedAzimuths(block=8, start_half_width=30.0, widen_steps=200, generator=g)
    early = [widening(s) for s in range(1, 9)]
    assert all(abs(a) <= 30.0 + 150.0 * 8 / 200 for a in early)
    assert widening.half_width(1) == 30.0 and widening.half_width(201) == 180.0 and widening.half_width(500) == 180.0
    full = DebiasedAzimuths(block=8, generator=torch.Generator().manual_seed(4))
    draws = torch.tensor([full(s) for s in range(1, 401)])
    assert float(draws.min()) >= -180.0 and float(draws.max()) <= 180.0
    for b in range(50):  # every block of 8 steps: one draw per 45-degree sector
        sectors = ((draws[b * 8:(b + 1) * 8] + 180.0) // 45.0).clamp(max=7).long()
        assert sorted(sectors.tolist()) == list(range(8)), (b, sectors)
    with pytest.raises(ValueError, match="block >= 1"):
        DebiasedAzimuths(block=0)
