"""The mesh rasteriser: a hand-computed triangle, perspective-correct interpolation,
gradients to attributes and textures, the UV flip, and the CUDA path."""
from __future__ import annotations

import pytest
import torch

from backend.cameras import Cameras, look_at, orbit_cameras
from backend.render.mesh import (TexturedMesh, _rasterize_screen, interpolate, rasterize, rasterize_uv, render_mesh,
                                 sample_texture)



def test_hand_computed_triangle():
    xy = torch.tensor([[[1.0, 1.0], [7.0, 1.0], [1.0, 7.0]]])
    tri, bary, depth = _rasterize_screen(xy, torch.ones(1, 3), 8, 8)
    tri = tri.reshape(8, 8)
    # Pixel centres (x + 0.5, y + 0.5) inside x >= 1, y >= 1, x + y <= 8.
    expect = torch.tensor([[1 if (x >= 1 and y >= 1 and x + y + 1 <= 8) else 0 for x in range(8)] for y in range(8)])
    assert torch.equal((tri >= 0).long(), expect)
    b = bary.reshape(8, 8, 3)
    assert torch.allclose(b[1, 1], torch.tensor([5 / 6, 1 / 12, 1 / 12]), atol=1e-6)
    assert torch.allclose(b[3, 3], torch.tensor([1 / 6, 5 / 12, 5 / 12]), atol=1e-6)
    assert torch.allclose(depth.reshape(8, 8)[tri >= 0], torch.ones(int(expect.sum())))


def test_nearest_face_wins_and_depth_is_camera_depth():
    quad = torch.tensor([[-1.0, -1.0, 0.0], [1.0, -1.0, 0.0], [1.0, 1.0, 0.0], [-1.0, 1.0, 0.0]])
    verts = torch.cat([quad, quad + torch.tensor([0.0, 0.0, 0.5])])  # second quad nearer the camera
    faces = torch.tensor([[0, 1, 2], [0, 2, 3], [4, 5, 6], [4, 6, 7]])
    cam = orbit_cameras(0.0, 0.0, 3.0, 40.0, 16, 16)
    r = rasterize(verts, faces, cam)
    assert set(r.tri_id[0, 4:12, 4:12].unique().tolist()) <= {2, 3}
    assert torch.allclose(r.depth[0, 8, 8], torch.tensor(2.5), atol=1e-5)


def test_perspective_correct_interpolation_recovers_world_positions():
    # A slanted plane seen at an angle: interpolated positions must lie on the pixel rays.
    verts = torch.tensor([[-1.0, -0.8, -0.6], [1.2, -0.9, 0.4], [0.1, 1.0, -0.2]])
    faces = torch.tensor([[0, 1, 2]])
    cam = orbit_cameras(20.0, 35.0, 3.0, 50.0, 40, 40)
    r = rasterize(verts, faces, cam)
    pos = interpolate(verts, faces, r)[0][r.mask[0]]
    pc = pos @ cam.viewmats[0, :3, :3].T + cam.viewmats[0, :3, 3]
    K = cam.Ks[0]
    px = K[0, 0] * pc[:, 0] / pc[:, 2] + K[0, 2]
    py = K[1, 1] * pc[:, 1] / pc[:, 2] + K[1, 2]
    ys, xs = torch.nonzero(r.mask[0], as_tuple=True)
    assert torch.allclose(px, xs.float() + 0.5, atol=1e-3) and torch.allclose(py, ys.float() + 0.5, atol=1e-3)
    assert torch.allclose(pc[:, 2], r.depth[0][r.mask[0]], atol=1e-5)


def _quad(uv_flip=False):
    verts = torch.tensor([[-1.0, -1.0, 0.0], [1.0, -1.0, 0.0], [1.0, 1.0, 0.0], [-1.0, 1.0, 0.0]])
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    vuv = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])  # origin bottom-left
    return verts, faces, vuv[faces]


def test_uv_origin_bottom_left_texture_row_zero_top():
    verts, faces, uv = _quad()
    tex = torch.zeros(8, 8, 3)
    tex[:4, :, 0] = 1.0  # top half red
    tex[4:, :, 2] = 1.0  # bottom half blue
    cam = orbit_cameras(0.0, 0.0, 2.5, 60.0, 32, 32)  # +Y up in the image
    out = render_mesh(TexturedMesh(verts, faces, uv, tex), cam, background=0.0)
    assert out.rgb[0, 10, 16, 0] > 0.9 and out.rgb[0, 22, 16, 2] > 0.9
    assert torch.allclose(sample_texture(tex, torch.tensor([[0.5, 0.9], [0.5, 0.1]])),
                          torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]))


def test_gradients_reach_texture_and_vertex_colours():
    verts, faces, uv = _quad()
    tex = torch.rand(8, 8, 3, requires_grad=True)
    colours = torch.rand(4, 3, requires_grad=True)
    cam = orbit_cameras(10.0, 20.0, 2.5, 60.0, 24, 24)
    weights = torch.rand(1, 24, 24, 3)
    (render_mesh(TexturedMesh(verts, faces, uv, tex), cam).rgb * weights).sum().backward()
    (render_mesh(TexturedMesh(verts, faces, vertex_colors=colours), cam).rgb * weights).sum().backward()
    assert tex.grad.abs().sum() > 0 and colours.grad.abs().sum() > 0
    # The loss is linear in the texture, so finite differences are exact.
    for (i, j, c) in [(1, 2, 0), (5, 5, 1), (7, 0, 2)]:
        with torch.no_grad():
            base = (render_mesh(TexturedMesh(verts, faces, uv, tex), cam).rgb * weights).sum()
            tex[i, j, c] += 1.0
            bumped = (render_mesh(TexturedMesh(verts, faces, uv, tex), cam).rgb * weights).sum()
            tex[i, j, c] -= 1.0
        assert tex.grad[i, j, c].item() == pytest.approx((bumped - base).item(), rel=1e-3, abs=1e-3)


def test_uv_rasterisation_covers_the_atlas():
    _, _, uv = _quad()
    r = rasterize_uv(uv, 16)
    assert r.mask.all()
    # Texel (row 0, col 0) is the top-left: uv near (0, 1).
    pos = interpolate(uv, torch.zeros(0), r)[0]
    assert torch.allclose(pos[0, 0], torch.tensor([0.5 / 16, 1 - 0.5 / 16]), atol=1e-6)


def test_look_at_from_straight_above_is_well_defined():
    c2w = look_at(torch.tensor([[0.0, 3.0, 0.0]]), torch.zeros(1, 3))
    assert torch.isfinite(c2w).all() and torch.allclose(c2w[0, :3, :3] @ c2w[0, :3, :3].T, torch.eye(3), atol=1e-6)
    cam = Cameras(c2w, torch.tensor([40.0]), 8, 8)
    assert rasterize(torch.tensor([[-1.0, 0, -1], [1, 0, -1], [0, 0, 1.0]]), torch.tensor([[0, 1, 2]]), cam).mask.any()


@pytest.mark.cuda
def test_cpu_and_nvdiffrast_paths_agree():
    pytest.importorskip("nvdiffrast")
    import trimesh

    m = trimesh.creation.icosphere(subdivisions=3)
    verts = torch.tensor(m.vertices, dtype=torch.float32) * 0.6
    faces = torch.tensor(m.faces)
    cams = orbit_cameras([0, 40], [0, 130], 2.0, 49.1, 64, 48)
    cpu = rasterize(verts, faces, cams, backend="torch")
    gpu = rasterize(verts.cuda(), faces.cuda(), cams, backend="nvdiffrast")
    same = (cpu.tri_id == gpu.tri_id.cpu()).float().mean()
    assert same > 0.995  # edge pixels may go to either neighbour
    both = (cpu.tri_id == gpu.tri_id.cpu()) & cpu.mask
    assert (cpu.bary[both] - gpu.bary.cpu()[both]).abs().max() < 1e-3
    assert (cpu.depth[both] - gpu.depth.cpu()[both]).abs().max() < 1e-4


def test_barycentrics_carry_vertex_gradients_inside_faces():
    """With vertices that require grad, the torch path's barycentrics equal the plain ones and
    their gradient with respect to the positions matches finite differences."""
    verts = torch.tensor([[-1.0, -0.8, -0.6], [1.2, -0.9, 0.4], [0.1, 1.0, -0.2]])
    faces = torch.tensor([[0, 1, 2]])
    cam = orbit_cameras(20.0, 35.0, 3.0, 50.0, 32, 32)
    colours = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    plain = rasterize(verts, faces, cam)
    v = verts.clone().requires_grad_(True)
    r = rasterize(v, faces, cam)
    assert torch.equal(r.tri_id, plain.tri_id) and torch.allclose(r.bary, plain.bary, atol=1e-5)
    inside = plain.mask.clone()
    weights = torch.linspace(0.5, 1.5, 32 * 32).reshape(1, 32, 32, 1)

    def value(r_):
        return (interpolate(colours, faces, r_) * weights * inside[..., None]).sum()

    value(r).backward()
    eps = 1e-3
    for i, k in ((0, 0), (1, 1), (2, 2), (1, 0)):
        d = torch.zeros_like(verts)
        d[i, k] = eps
        # Same pixels (the face's coverage held fixed): the interior term only.
        up = value(rasterize((verts + d).requires_grad_(True), faces, cam)).detach()
        down = value(rasterize((verts - d).requires_grad_(True), faces, cam)).detach()
        fd = (up - down) / (2 * eps)
        assert abs(float(v.grad[i, k]) - float(fd)) < 0.05 * abs(float(fd)) + 0.05, (i, k, float(v.grad[i, k]), float(fd))


def test_antialiased_silhouette_moves_with_its_vertices():
    """Laine et al. 2020's antialiasing on the torch path: a quad's coverage grows by about the
    edge's length in pixels per pixel its right edge moves, the gradient says so, and a mask
    loss alone pulls a small quad out to a larger target's silhouette."""
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    cam = orbit_cameras(0.0, 0.0, 3.0, 40.0, 48, 48)
    fpx = float(cam.Ks[0, 0, 0]) / 3.0  # pixels per metre at the quad's depth

    def quad(half_w, half_h):
        return torch.tensor([[-half_w, -half_h, 0.0], [half_w, -half_h, 0.0], [half_w, half_h, 0.0],
                             [-half_w, half_h, 0.0]])

    v = quad(0.5, 0.5).requires_grad_(True)
    out = render_mesh(TexturedMesh(v, faces), cam, antialiased=True)
    coverage = out.alpha.sum()
    coverage.backward()
    # d coverage / d x of the right edge (vertices 1 and 2): the edge's height in pixels, per
    # metre times pixels per metre.
    right = float(v.grad[1, 0] + v.grad[2, 0])
    assert abs(right - (2 * 0.5 * fpx) * fpx) < 0.15 * (fpx * fpx), (right, fpx)
    assert float(v.grad[0, 0] + v.grad[3, 0]) < 0  # moving the left edge right shrinks it
    plain = render_mesh(TexturedMesh(quad(0.5, 0.5), faces), cam)
    assert abs(float(coverage.detach()) - float(plain.alpha.sum())) < 2 * 0.5 * fpx * 4  # blends only at the edges

    target = render_mesh(TexturedMesh(quad(0.7, 0.6), faces), cam).alpha.detach()
    offsets = torch.zeros(4, 2, requires_grad=True)  # in the quad's plane: depth would trade with size
    opt = torch.optim.Adam([offsets], lr=0.01)
    base = quad(0.45, 0.45)
    for _ in range(150):
        moved = base + torch.cat([offsets, torch.zeros(4, 1)], -1)
        alpha = render_mesh(TexturedMesh(moved, faces), cam, antialiased=True).alpha
        loss = ((alpha - target) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    fitted = base[:, :2] + offsets.detach()
    assert torch.allclose(fitted.abs(), torch.tensor([0.7, 0.6]).expand(4, 2), atol=0.03), fitted


@pytest.mark.cuda
def test_cuda_path_gives_the_same_vertex_gradients():
    """nvdiffrast (rasterize backward + dr.antialias) and the torch path agree on the gradient of
    an antialiased render with respect to the vertices."""
    pytest.importorskip("nvdiffrast")
    import trimesh

    m = trimesh.creation.icosphere(subdivisions=2)
    faces = torch.tensor(m.faces)
    cams = orbit_cameras([10.0], [30.0], 2.0, 49.1, 64, 64)
    colours = torch.rand(len(m.vertices), 3, generator=torch.Generator().manual_seed(0))
    grads = []
    for device, backend in (("cpu", "torch"), ("cuda", "nvdiffrast")):
        v = (torch.tensor(m.vertices, dtype=torch.float32) * 0.6).to(device).requires_grad_(True)
        out = render_mesh(TexturedMesh(v, faces.to(device), vertex_colors=colours.to(device)), cams, backend=backend,
                          antialiased=True)
        (out.rgb.sum() + out.alpha.sum()).backward()
        grads.append(v.grad.cpu())
    cos = torch.nn.functional.cosine_similarity(grads[0].reshape(-1), grads[1].reshape(-1), dim=0)
    assert cos > 0.9, float(cos)
