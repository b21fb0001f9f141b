"""The prior oracle (guidance/oracle.py): the exact denoiser of a Gaussian-mixture prior around
hue-turned renders of the object. Its closed form against a Monte Carlo posterior mean, K = 1 with
sigma = 0 against the plain oracle, the hue turn, what it does to SDEdit at a low strength, and
its parameters in every method that takes teacher=oracle."""
from __future__ import annotations

import pytest
import torch

from backend.cameras import orbit_cameras
from backend.guidance.oracle import OracleGuidance, hue_rotated, mixture_posterior_mean
from backend.render.mesh import TexturedMesh
from scenes import make_test_object


@pytest.fixture(scope="module")
def object_mesh():
    mesh, _ = make_test_object(128)
    return mesh


def _monte_carlo_posterior_mean(x_t, mus, ab, sigma, n, generator):
    """E[x0 | x_t] by self-normalised importance sampling: x0 drawn from the prior, weighted by
    the likelihood N(x_t; sqrt(ab) x0, (1 - ab) I)."""
    K = mus.shape[0]
    k = torch.randint(0, K, (n,), generator=generator)
    x0 = mus[k] + sigma * torch.randn((n,) + mus.shape[1:], generator=generator, dtype=mus.dtype)
    logw = -((x_t[None] - ab.sqrt() * x0) ** 2).flatten(1).sum(-1) / (2 * (1 - ab))
    w = torch.softmax(logw, 0)
    return (w.reshape((n,) + (1,) * (x0.dim() - 1)) * x0).sum(0)


@pytest.mark.parametrize("ab,sigma", [(0.5, 0.3), (0.9, 0.5), (0.2, 1.0)])
def test_the_closed_form_is_the_posterior_mean(ab, sigma):
    g = torch.Generator().manual_seed(0)
    mus = torch.tensor([[0.6, -0.2, 0.1], [-0.5, 0.4, -0.3]], dtype=torch.float64)  # K = 2 modes, 3 "pixels"
    ab_t = torch.tensor(ab, dtype=torch.float64)
    for x_t in (torch.tensor([0.3, 0.0, 0.1], dtype=torch.float64),     # between the modes
                ab_t.sqrt() * mus[1] + 0.2 * torch.tensor([1.0, -1.0, 0.5], dtype=torch.float64)):  # near one
        closed = mixture_posterior_mean(x_t[None], mus[:, None], ab_t[None], sigma)[0]
        estimate = _monte_carlo_posterior_mean(x_t, mus, ab_t, sigma, 400_000, g)
        assert torch.allclose(closed, estimate, atol=0.01), (closed, estimate)


def test_one_mode_and_no_spread_is_the_plain_oracle(object_mesh):
    plain, prior = OracleGuidance(object_mesh), OracleGuidance(object_mesh, modes=1, sigma=0.0)
    cam = orbit_cameras(15.0, 40.0, 1.8, 49.1, 32, 32)
    g = torch.Generator().manual_seed(1)
    x_t = torch.randn(1, 3, 32, 32, generator=g)
    t = torch.tensor([600])
    x0 = plain.target(cam, (32, 32), None)
    ab = plain.alphas_cumprod[600]
    assert torch.equal(prior.predict_noise(x_t, t, cam, None), (x_t - ab.sqrt() * x0) / (1 - ab).sqrt())
    # The closed form reaches the same point as sigma -> 0 with one mode.
    mus = x0[None]
    assert torch.allclose(mixture_posterior_mean(x_t, mus, ab[None], 0.0), x0)


def test_the_modes_are_the_object_with_its_hue_turned():
    red = TexturedMesh(torch.zeros(3, 3), torch.tensor([[0, 1, 2]]), torch.zeros(1, 3, 2),
                       torch.tensor([[[0.8, 0.2, 0.2], [0.5, 0.5, 0.5]]]))
    turned = hue_rotated(red, 180.0)
    assert torch.allclose(turned.texture[0, 0], torch.tensor([0.2, 0.8, 0.8]), atol=1e-6)  # red -> cyan
    assert torch.allclose(turned.texture[0, 1], torch.tensor([0.5, 0.5, 0.5]), atol=1e-6)  # grey stays grey
    oracle = OracleGuidance(red, modes=3)
    assert len(oracle.mode_meshes) == 3 and oracle.mode_meshes[0] is oracle.mesh
    assert torch.allclose(oracle.mode_meshes[1].texture[0, 0], hue_rotated(red, 120.0).texture[0, 0])
    for bad in ({"modes": 0}, {"modes": 9}, {"sigma": -0.1}, {"sigma": 3.0}):
        with pytest.raises(ValueError, match="oracle_"):
            OracleGuidance(red, **bad)


def test_a_spread_prior_keeps_what_a_light_sdedit_is_given_and_two_modes_split_the_views(object_mesh):
    """The plain oracle hands back the object whatever SDEdit gives it; with sigma = 0.3 a grey
    image refined at strength 0.2 keeps much of its grey (the probability-flow ODE from t keeps
    sigma / sqrt(ab sigma^2 + 1 - ab), about half, of the input's departure from the prior's
    mean), as a real model keeps its input's colours; and with two modes the posterior mean
    follows whichever mode the input is nearer."""
    cam = orbit_cameras(15.0, 40.0, 1.8, 49.1, 32, 32)
    plain = OracleGuidance(object_mesh)
    prior = OracleGuidance(object_mesh, modes=2, sigma=0.3)
    truth = (plain.target(cam, (32, 32), None) + 1) / 2
    other = (prior.target(cam, (32, 32), None, mode=1) + 1) / 2
    assert (truth - other).abs().mean() > 0.05  # the second mode is another texture
    grey = torch.full_like(truth, 0.5)
    kept = {}
    for name, teacher in (("plain", plain), ("prior", prior)):
        refined = teacher.refine(grey, cam, strength=0.2, steps=20, background=torch.ones(3),
                                 generator=torch.Generator().manual_seed(2))
        kept[name] = ((refined - truth).abs().mean() / (grey - truth).abs().mean()).item()
    assert kept["plain"] < 0.1 and kept["prior"] > 0.3, kept  # measured 0.07 and 0.48
    g = torch.Generator().manual_seed(3)
    t = torch.tensor([500])
    ab = prior.alphas_cumprod[500]
    for image, rival in ((truth, other), (other, truth)):
        x0 = image * 2 - 1
        x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * torch.randn(x0.shape, generator=g)
        mean = prior.posterior_mean(x_t, t, cam, None)
        assert (mean - x0).abs().mean() < 0.5 * (mean - (rival * 2 - 1)).abs().mean()


def test_every_method_with_the_oracle_takes_the_prior_and_passes_it_on(tmp_path):
    from backend.guidance import load_job_teacher
    from backend.pipelines.base import REGISTRY
    import backend.pipelines.specs  # noqa: F401  (registers every method)
    from scenes import write_object_glb

    with_oracle = [name for name, cls in REGISTRY.items()
                   if "teacher" in cls.params and "oracle" in (cls.params["teacher"].choices or ())]
    assert {"dreamgaussian", "dreamtime", "dtc123", "dreamcraft3d", "im3d", "texture_refine"} <= set(with_oracle)
    for name in with_oracle:
        params = REGISTRY[name].params
        assert params["oracle_modes"].default == 1 and params["oracle_sigma"].default == 0.0, name
        assert params["oracle_modes"].when == ("teacher", ("oracle",)), name
    _, raw = make_test_object(64)
    glb = write_object_glb(tmp_path / "gt.glb", raw)
    teacher = load_job_teacher({"teacher": "oracle", "oracle_mesh": str(glb), "oracle_modes": 2, "oracle_sigma": 0.3},
                               False, "cpu")
    assert (teacher.modes, teacher.sigma) == (2, 0.3)
