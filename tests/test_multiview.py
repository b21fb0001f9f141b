"""IM-3D's multi-view generator (issue 15, item 1): K views per batched denoiser call, the
oracle's exact views, SDEdit regeneration, the evaluation count, both solvers."""
from __future__ import annotations

import pytest
import torch

from backend.cameras import orbit_cameras
from backend.guidance import load_teacher
from backend.guidance.multiview import MultiViewGenerator
from backend.guidance.oracle import OracleGuidance, render_target
from backend.stages.reconstruction import psnr
from scenes import make_test_object


def _ring(k: int, size: int = 64):
    return orbit_cameras(torch.full((k,), 15.0), torch.arange(k) * 360.0 / k, 2.0, 49.1, size, size)


def _spy_batches(teacher) -> list[int]:
    """The batch size of every denoiser call the real teacher makes."""
    batches: list[int] = []
    inner = teacher.predict_noise

    def predict_noise(x_t, t, cameras, background):
        batches.append(int(x_t.shape[0]))
        return inner(x_t, t, cameras, background)
    teacher.predict_noise = predict_noise
    return batches


@pytest.fixture(scope="module")
def oracle():
    mesh, _ = make_test_object(texture_size=128)
    return OracleGuidance(mesh)


def test_the_oracle_generates_its_exact_views_in_one_call_per_step(oracle):
    cams = _ring(6)
    gen = MultiViewGenerator(oracle)
    batches = _spy_batches(oracle)
    before = gen.evaluations
    views = gen.generate({}, cams, 20, generator=torch.Generator().manual_seed(0))
    truth = render_target(oracle, cams)
    assert views.shape == (6, 3, 64, 64) and batches == [6] * 20 and gen.evaluations - before == 20
    assert psnr(views.permute(0, 2, 3, 1), truth.permute(0, 2, 3, 1)) > 30.0
    # Regeneration of perturbed renders: noised to strength 0.5 of a 10-step schedule, then
    # denoised with the exact score, they come back to the object's views.
    perturbed = (truth + 0.25 * torch.randn(truth.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    batches.clear()
    again = gen.regenerate(perturbed, cams, 0.5, 10, generator=torch.Generator().manual_seed(2))
    assert batches == [6] * 5
    assert psnr(again.permute(0, 2, 3, 1), truth.permute(0, 2, 3, 1)) > psnr(perturbed.permute(0, 2, 3, 1),
                                                                             truth.permute(0, 2, 3, 1)) + 10


@pytest.mark.parametrize("solver", ["ddim", "dpmsolver++"])
def test_zero123_generates_k_views_conditioned_on_the_reference(tmp_path_factory, monkeypatch, solver):
    teacher = load_teacher("zero123", "tiny", "cpu")
    gen = MultiViewGenerator(teacher, solver)
    batches = _spy_batches(teacher)
    reference = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    condition = {"image": reference, "elevation": 15.0, "azimuth": 0.0, "radius": 2.0}
    views = gen.generate(condition, _ring(4), 8, generator=torch.Generator().manual_seed(0))
    assert views.shape == (4, 3, 64, 64) and torch.isfinite(views).all() and 0 <= views.min() <= views.max() <= 1
    assert batches == [4] * 8 and gen.evaluations == 8
    same = gen.generate(condition, _ring(4), 8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(views, same)  # a seed gives the same views
    regenerated = gen.regenerate(views, _ring(4), 0.25, 8, generator=torch.Generator().manual_seed(1))
    assert regenerated.shape == views.shape and gen.evaluations == 16 + 2


def test_bad_generator_use_is_refused(oracle):
    with pytest.raises(ValueError, match="unknown solver 'euler'"):
        MultiViewGenerator(oracle, "euler")
    with pytest.raises(ValueError, match="strength"):
        MultiViewGenerator(oracle).regenerate(torch.zeros(1, 3, 8, 8), _ring(1, 8), 1.5, 10)


def test_the_generated_views_follow_the_reference_image_and_each_views_camera(tmp_path_factory, monkeypatch):
    """Zero-1-to-3's multi-view generation is conditioned (issue 27, item 11): from the same noise,
    another reference image changes every view, and another camera for one view changes that
    view (its relative-camera embedding) while the views of unchanged cameras keep their
    content (each view is conditioned on its own camera only)."""
    gen = MultiViewGenerator(load_teacher("zero123", "tiny", "cpu"))
    g = torch.Generator().manual_seed(0)
    first, second = torch.rand(2, 1, 3, 64, 64, generator=g)

    def views(reference, cameras):
        condition = {"image": reference, "elevation": 15.0, "azimuth": 0.0, "radius": 2.0}
        return gen.generate(condition, cameras, 6, generator=torch.Generator().manual_seed(1))

    ring = _ring(4)
    base = views(first, ring)
    other_reference = views(second, ring)
    per_view = (base - other_reference).abs().flatten(1).mean(1)
    assert (per_view > 1e-3).all(), per_view
    moved = orbit_cameras(torch.tensor([15.0, 15.0, 60.0, 15.0]), torch.tensor([0.0, 90.0, 180.0, 270.0]), 2.0, 49.1,
                          64, 64)
    other_camera = views(first, moved)
    change = (base - other_camera).abs().flatten(1).mean(1)
    assert change[2] > 1e-3 and torch.allclose(base[[0, 1, 3]], other_camera[[0, 1, 3]], atol=1e-5), change
