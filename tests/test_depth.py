"""The monocular depth plumbing of DTC123's reference-view restoration: the correlation loss on
real renders, the mesh depth's vertex gradients, the tiny DPT through the real loader, and the
estimator missing (skipped, said once)."""
from __future__ import annotations

import torch

from backend.cameras import orbit_cameras
from backend.guidance.depth import depth_correlation_loss, load_depth_estimator
from backend.render.mesh import TexturedMesh, render_mesh
from scenes import make_test_object


def _object_depth():
    mesh, _ = make_test_object(texture_size=64)
    out = render_mesh(mesh, orbit_cameras(15.0, 30.0, 2.0, 49.1, 96, 96))
    return out.depth.permute(0, 3, 1, 2), out.alpha.permute(0, 3, 1, 2) > 0.5


def test_depth_correlation_is_affine_invariant_in_disparity_and_signed():
    depth, mask = _object_depth()
    assert int(mask.sum()) > 1000
    disparity = torch.where(mask, 1.0 / depth.clamp_min(1e-6), torch.zeros_like(depth))
    assert float(depth_correlation_loss(depth, 3.0 * disparity + 7.0, mask)) < 1e-5
    assert float(depth_correlation_loss(depth, -disparity, mask)) > 1.999
    noise = torch.rand(depth.shape, generator=torch.Generator().manual_seed(0))
    assert 0.8 < float(depth_correlation_loss(depth, noise, mask)) < 1.2
    # A farther object reads as less disparity: depth itself, not its inverse, correlates wrongly.
    assert float(depth_correlation_loss(depth, depth, mask)) > 1.5
    assert float(depth_correlation_loss(depth, disparity, torch.zeros_like(mask))) == 0.0


def test_mesh_depth_has_vertex_gradients_that_match_finite_differences():
    mesh, _ = make_test_object(texture_size=64)
    cams = orbit_cameras(20.0, 40.0, 2.0, 49.1, 64, 64)
    direction = torch.tensor([0.3, -0.2, 0.5])
    weights = torch.rand(1, 64, 64, 1, generator=torch.Generator().manual_seed(1))

    def depth_at(s: float, with_grad: bool = False):
        shift = torch.tensor(s, requires_grad=with_grad)
        moved = TexturedMesh(mesh.vertices + shift * direction, mesh.faces, mesh.uv, mesh.texture)
        return shift, render_mesh(moved, cams, backend="torch").depth

    h = 1e-3
    below, above = depth_at(-h)[1], depth_at(h)[1]
    keep = ((below > 0) & (above > 0)).float() * weights  # pixels covered throughout
    shift, depth = depth_at(0.0, with_grad=True)
    (depth * keep).sum().backward()
    numeric = float(((above - below) * keep).sum() / (2 * h))
    assert abs(numeric) > 1.0
    assert abs(float(shift.grad) - numeric) < 0.02 * abs(numeric)


def test_the_tiny_depth_estimator_loads_through_the_real_loader_and_the_real_one_is_missing(monkeypatch, tmp_path):
    tiny = load_depth_estimator("tiny", "cpu")
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    disparity = tiny.disparity(image)
    assert disparity.shape == (1, 1, 64, 64) and torch.isfinite(disparity).all() and float(disparity.std()) > 0
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    assert load_depth_estimator("default", "cpu", models_dir=tmp_path) is None
