"""The Gaussian renderer: analytic values, gradients, gsplat's strategy on the CPU, PLY."""
from __future__ import annotations

import math

import pytest
import torch

from backend.cameras import focal_from_fovy, orbit_cameras
from backend.render.gaussians import GaussianModel, eval_sh, render



def _single(sigma_px: float, opacity: float, size: int = 65, fovy: float = 40.0, dist: float = 2.0):
    f = float(focal_from_fovy(fovy, size))
    scale = math.sqrt(sigma_px**2 - 0.3) * dist / f  # gsplat adds 0.3 px^2 to the 2D covariance
    model = GaussianModel.from_points(torch.zeros(1, 3), torch.tensor([[1.0, 0.2, 0.1]]), scale=scale, opacity=opacity)
    return model, orbit_cameras(0.0, 0.0, dist, fovy, size, size)


def test_single_gaussian_matches_the_analytic_2d_gaussian():
    model, cam = _single(sigma_px=4.0, opacity=0.8)
    out = render(model, cam, background=0.0)
    c = 32  # the mean projects to (32.5, 32.5): the centre of pixel 32
    assert out.alpha[0, c, c, 0].item() == pytest.approx(0.8, abs=1e-5)
    assert out.alpha[0, c, c + 4, 0].item() == pytest.approx(0.8 * math.exp(-0.5), abs=1e-5)  # one sigma
    assert out.alpha[0, c - 4, c, 0].item() == pytest.approx(0.8 * math.exp(-0.5), abs=1e-5)
    assert out.alpha[0, c + 3, c + 3, 0].item() == pytest.approx(0.8 * math.exp(-0.5 * 18 / 16), abs=1e-5)
    assert torch.allclose(out.rgb[0, c, c], torch.tensor([0.8, 0.16, 0.08]), atol=1e-5)
    assert out.depth[0, c, c, 0].item() == pytest.approx(2.0, abs=1e-5)
    # Beyond alpha 1/255 nothing is drawn; the background shows through.
    white = render(model, cam, background=1.0)
    assert torch.allclose(white.rgb[0, 0, 0], torch.ones(3))
    far = int(4.0 * math.sqrt(2 * math.log(0.8 * 255))) + 2
    assert out.alpha[0, c, c + far, 0].item() == 0.0


def test_compositing_order_and_opacity():
    near = GaussianModel.from_points(torch.tensor([[0.0, 0.0, 0.5]]), torch.tensor([[1.0, 0.0, 0.0]]), scale=0.2, opacity=0.6)
    far = GaussianModel.from_points(torch.tensor([[0.0, 0.0, -0.5]]), torch.tensor([[0.0, 0.0, 1.0]]), scale=0.2, opacity=0.6)
    both = GaussianModel({k: torch.cat([far.params[k], near.params[k]]) for k in near.params})
    cam = orbit_cameras(0.0, 0.0, 3.0, 40.0, 33, 33)  # looks along -Z: the +Z Gaussian is in front
    out = render(both, cam, background=0.0)
    rgb = out.rgb[0, 16, 16]
    assert rgb[0].item() == pytest.approx(0.6, abs=1e-4)  # red first
    assert rgb[2].item() == pytest.approx(0.4 * 0.6, abs=1e-4)  # blue behind it
    assert out.alpha[0, 16, 16, 0].item() == pytest.approx(1 - 0.4 * 0.4, abs=1e-4)


def test_gradients_match_finite_differences():
    g = torch.Generator().manual_seed(0)
    model = GaussianModel.init_sphere(6, radius=0.3, opacity=0.7, generator=g)
    # Large Gaussians: their alpha = 1/255 contours lie outside the image, so the loss is
    # smooth (pixels entering or leaving a footprint are discontinuities that autograd, like
    # gsplat, does not differentiate).
    model.params["scales"].data[:] = math.log(0.134) + 2.0  # about 1 m
    cam = orbit_cameras(15.0, 30.0, 2.0, 45.0, 24, 24)
    weights = torch.rand(1, 24, 24, 4, generator=g)

    def loss_fn() -> torch.Tensor:
        out = render(model, cam, background=(0.2, 0.3, 0.4))
        return (torch.cat([out.rgb, out.alpha], -1) * weights).sum()

    loss_fn().backward()
    for name in ("means", "scales", "opacities", "sh0", "quats"):
        param = model.params[name]
        analytic = param.grad.clone()
        flat = param.data.view(-1)
        for idx in range(0, flat.numel(), max(1, flat.numel() // 6)):
            old = flat[idx].item()
            eps = 1e-3
            with torch.no_grad():
                flat[idx] = old + eps
                up = loss_fn().item()
                flat[idx] = old - eps
                down = loss_fn().item()
                flat[idx] = old
            numeric = (up - down) / (2 * eps)
            got = analytic.view(-1)[idx].item()
            assert got == pytest.approx(numeric, rel=0.05, abs=0.02), (name, idx, got, numeric)


def test_default_strategy_densifies_and_prunes_on_the_cpu():
    from gsplat.strategy import DefaultStrategy

    g = torch.Generator().manual_seed(0)
    model = GaussianModel.init_sphere(200, radius=0.4, opacity=0.5, generator=g)
    with torch.no_grad():
        model.params["opacities"][:20] = torch.logit(torch.tensor(0.001))  # nearly transparent: pruned
    optimizers = model.parameter_groups({"means": 1e-3, "scales": 5e-3, "quats": 1e-3, "opacities": 5e-2, "sh0": 1e-2})
    strategy = DefaultStrategy(grow_grad2d=1e-6, refine_start_iter=0, refine_every=2, prune_opa=0.005, grow_scale3d=0.05)
    state = strategy.initialize_state(scene_scale=1.0)
    cams = orbit_cameras([0, 30], [0, 90], 2.0, 49.1, 48, 48)
    target = torch.rand(2, 48, 48, 3, generator=g)
    before = len(model)
    for step in range(1, 3):
        out = render(model, cams, background=0.0)
        assert out.info["means2d"].shape == (2, len(model), 2) and out.info["radii"].shape == (2, len(model), 2)
        strategy.step_pre_backward(model.params, optimizers, state, step, out.info)
        ((out.rgb - target) ** 2).mean().backward()
        assert out.info["means2d"].grad is not None and out.info["means2d"].grad.abs().sum() > 0
        for opt in optimizers.values():
            opt.step()
            opt.zero_grad()
        strategy.step_post_backward(model.params, optimizers, state, step, out.info)
    assert len(model) > before - 20  # grown past what was pruned
    assert (model.opacities > 0.005).all()  # the transparent ones are gone
    assert all(opt.param_groups[0]["params"][0] is model.params[k] for k, opt in optimizers.items())


def test_sh_degree_one_changes_colour_with_view_direction():
    model = GaussianModel.from_points(torch.zeros(1, 3), torch.tensor([[0.5, 0.5, 0.5]]), scale=0.3, opacity=0.9, sh_degree=1)
    with torch.no_grad():
        model.params["shN"][0, 1, 0] = 1.0  # coefficient 2, the z-linear term (3DGS basis: +C1 z), on red
    front = render(model, orbit_cameras(0.0, 0.0, 2.0, 40.0, 17, 17), background=0.0).rgb[0, 8, 8, 0]
    back = render(model, orbit_cameras(0.0, 180.0, 2.0, 40.0, 17, 17), background=0.0).rgb[0, 8, 8, 0]
    # Direction from the camera to the Gaussian: -Z for the front camera, +Z for the back one.
    assert back.item() > front.item() + 0.5
    d = torch.tensor([[0.0, 0.0, 1.0]])
    assert eval_sh(1, model.sh.detach(), d)[0, 0].item() == pytest.approx(0.48860251, abs=1e-6)


def test_ply_round_trip_in_the_standard_layout(tmp_path):
    g = torch.Generator().manual_seed(3)
    model = GaussianModel.init_sphere(50, sh_degree=2, generator=g)
    with torch.no_grad():
        model.params["shN"].normal_(generator=g)
    model.save_ply(tmp_path / "g.ply")
    from plyfile import PlyData

    names = PlyData.read(str(tmp_path / "g.ply"))["vertex"].data.dtype.names
    assert names[:9] == ("x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2")
    assert names[9:9 + 24] == tuple(f"f_rest_{i}" for i in range(24))
    assert names[33:] == ("opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3")
    back = GaussianModel.load_ply(tmp_path / "g.ply")
    assert back.sh_degree == 2
    for key in model.params:
        assert torch.equal(back.params[key], model.params[key]), key
    cams = orbit_cameras(10, 20, 2.0, 45, 32, 32)
    assert torch.equal(render(back, cams).rgb, render(model, cams).rgb)


@pytest.mark.cuda
def test_cpu_and_gsplat_paths_agree():
    g = torch.Generator().manual_seed(0)
    model = GaussianModel.init_sphere(3000, radius=0.5, opacity=0.3, sh_degree=1, generator=g)
    with torch.no_grad():
        model.params["shN"].normal_(std=0.2, generator=g)
    cams = orbit_cameras([0, 30, -20], [0, 120, 240], 2.0, 49.1, 96, 80)
    cpu = render(model, cams, background=(1.0, 0.5, 0.0), backend="torch")
    gpu_model = GaussianModel({k: v.detach() for k, v in model.params.items()}, 1).to("cuda")
    gpu = render(gpu_model, cams, background=(1.0, 0.5, 0.0), backend="gsplat")
    assert (cpu.rgb - gpu.rgb.cpu()).abs().max() < 1e-3
    assert (cpu.alpha - gpu.alpha.cpu()).abs().max() < 1e-3
    assert torch.equal(cpu.info["radii"], gpu.info["radii"].cpu())


def test_what_an_opaque_gaussian_hides_adds_nothing():
    """Behind a pixel's T_MIN point nothing is composited (gsplat's rule), so the rasteriser drops
    those pairs: the near Gaussian alone makes the centre pixel, and the hidden colours get no
    gradient from it."""
    colours = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    z = torch.tensor([[0.0, 0.0, 0.4], [0.0, 0.0, 0.0], [0.0, 0.0, -0.4]])  # +Z is nearest the camera
    model = GaussianModel.from_points(z, colours, scale=0.2, opacity=0.99)
    cam = orbit_cameras(0.0, 0.0, 3.0, 40.0, 33, 33)
    out = render(model, cam, background=0.0)
    assert torch.allclose(out.rgb[0, 16, 16], torch.tensor([0.99, 0.0, 0.0]), atol=1e-4)
    assert out.alpha[0, 16, 16, 0].item() == pytest.approx(0.99, abs=1e-4)
    out.rgb[0, 16, 16].sum().backward()
    sh0 = model.params["sh0"].grad.reshape(3, -1)
    assert sh0[0].abs().sum() > 0 and sh0[1:].abs().sum() == 0


def test_the_written_out_backward_is_the_derivative_of_the_compositing():
    """The compositing's hand-written backward against torch's numerical Jacobian, in float64, on
    pairs whose pixels hold one to five Gaussians (the first in front of the rest), opacities up
    to the 0.999 clamp and some alphas under 1/255 (which attenuate but add nothing)."""
    from backend.render.gaussians import _Composite

    g = torch.Generator().manual_seed(3)
    n, n_ch, hw = 7, 3, 6
    attrs = torch.cat([torch.rand(n, 2, generator=g) * 4,                      # means2d, px
                       torch.rand(n, 1, generator=g) * 0.4 + 0.1,              # conic a
                       (torch.rand(n, 1, generator=g) - 0.5) * 0.1,            # conic b
                       torch.rand(n, 1, generator=g) * 0.4 + 0.1,              # conic c
                       torch.tensor([[0.9], [0.5], [0.7], [0.003], [0.8], [0.6], [0.95]]),  # opacity
                       torch.rand(n, 1, generator=g) + 1,                      # depth
                       torch.rand(n, n_ch, generator=g)], 1).T.contiguous().double().requires_grad_(True)
    per_pixel = [1, 3, 5, 2, 4, 0]
    pix = torch.cat([torch.full((k,), p) for p, k in enumerate(per_pixel)]).long()
    gid = torch.cat([torch.randperm(n, generator=g)[:k] for k in per_pixel]).long()
    fx = (pix % 3).double() + 0.5
    fy = (pix // 3).double() + 0.5
    is_start = torch.ones_like(pix, dtype=torch.bool)
    is_start[1:] = pix[1:] != pix[:-1]
    seg = torch.cumsum(is_start.long(), 0) - 1
    start_idx = torch.nonzero(is_start).squeeze(1)

    def composite(a):
        return _Composite.apply(a, gid, fx, fy, pix, is_start, seg, start_idx, hw)

    assert torch.autograd.gradcheck(composite, (attrs,), eps=1e-6, atol=1e-7)
    assert composite(attrs)[:, 5].abs().sum() == 0  # a pixel with no pair stays empty
