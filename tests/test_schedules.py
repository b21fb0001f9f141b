"""Timestep schedules and ramps: formulas, monotonicity, end points, and DreamTime's mass."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from backend.schedules import (CurriculumStage, DreamGaussianAnneal, DreamTime, DTCCurriculum, Ramp, Uniform,
                               dreamtime_prior_weight, scaled_linear_alphas_cumprod, step_levels)


def test_uniform_covers_its_range():
    g = torch.Generator().manual_seed(0)
    ts = [Uniform(20, 980)(i, 100, g) for i in range(4000)]
    assert min(ts) == 20 and max(ts) == 980
    assert abs(np.mean(ts) - 500) < 15


def test_dreamgaussian_anneal_formula_and_end_points():
    s = DreamGaussianAnneal()
    assert s(0, 500) == 980 and s(500, 500) == 20  # clipped at both ends
    assert s(250, 500) == 500
    assert s(123, 500) == round((1 - 123 / 500) * 1000)
    ts = [s(i, 500) for i in range(501)]
    assert all(a >= b for a, b in zip(ts, ts[1:]))


def test_dreamtime_prior_weight_pieces():
    t = np.array([100, 400, 500, 650, 800, 900, 999])
    w = dreamtime_prior_weight(t)
    assert w[2] == w[3] == w[4] == 1.0
    assert w[1] == pytest.approx(np.exp(-(100**2) / (2 * 100**2)))
    assert w[5] == pytest.approx(np.exp(-(100**2) / (2 * 300**2)))
    assert w[0] < w[1] < 1 and 1 > w[5] > w[6]


@pytest.mark.parametrize("diffusion_term", [False, True])
def test_dreamtime_is_non_increasing_and_spends_steps_by_mass(diffusion_term):
    s = DreamTime(diffusion_term=diffusion_term)
    N = 2000
    ts = s.table(N)
    assert all(a >= b for a, b in zip(ts, ts[1:]))
    assert ts[0] >= 990 and ts[-1] <= 10  # starts coarse, ends fine
    t, p = s.density()
    flat_mass = p[(t >= 500) & (t <= 800)].sum()
    flat_steps = np.mean((ts >= 500) & (ts <= 800))
    assert flat_steps == pytest.approx(flat_mass, abs=0.01)
    if not diffusion_term:
        assert flat_mass > 0.45  # most steps where W_p is flat
    # Each timestep's share of the steps matches p(t) (histogram in 10 bins).
    bins = np.linspace(0, 1000, 11)
    hist = np.histogram(ts[1:], bins=bins)[0] / N
    mass = np.array([p[(t >= lo) & (t < hi)].sum() for lo, hi in zip(bins, bins[1:])])
    assert np.abs(hist - mass).max() < 0.01


def test_dreamtime_diffusion_term_uses_alpha_bar():
    ab = scaled_linear_alphas_cumprod()
    assert ab[0] == pytest.approx(1 - 0.00085) and np.all(np.diff(ab) < 0) and ab[-1] < 0.01
    plain, weighted = DreamTime().density()[1], DreamTime(diffusion_term=True).density()[1]
    # W_d grows with t, so the weighted schedule puts more mass at large t.
    t = DreamTime().density()[0]
    assert weighted[t > 800].sum() > plain[t > 800].sum()


def test_dtc_curriculum_window_anneals_with_floor_and_jitter():
    s = DTCCurriculum()
    windows = [s.window(i, 1000) for i in range(1001)]
    his = [w[1] for w in windows]
    los = [w[0] for w in windows]
    assert all(a >= b for a, b in zip(his, his[1:])) and all(a >= b for a, b in zip(los, los[1:]))
    assert his[0] == 980 and his[-1] == 50 and min(los) >= 20
    assert s.window(500, 1000) == (200, 500)  # end of the coarse stage: floor 200
    g = torch.Generator().manual_seed(0)
    draws = [s(100, 1000, g) for _ in range(500)]
    lo, hi = s.window(100, 1000)
    assert min(draws) >= lo and max(draws) <= hi and len(set(draws)) > 50  # jitter within the window
    assert s.stage(300, 1000)[0] == 0 and s.stage(700, 1000)[0] == 1
    with pytest.raises(ValueError):
        DTCCurriculum((CurriculumStage(0.5, 500, 800),))
    with pytest.raises(ValueError):
        DTCCurriculum((CurriculumStage(0.5, 900, 500), CurriculumStage(1.0, 700, 100)))


def test_ramps_and_levels():
    r = Ramp.linear(0.0, 1.0)
    assert r.at(0, 100) == 0 and r.at(50, 100) == 0.5 and r.at(100, 100) == 1.0 and r.at(200, 100) == 1.0
    piece = Ramp(((0.0, 10.0), (0.2, 10.0), (0.6, 2.0)))
    assert piece.at(10, 100) == 10 and piece.at(40, 100) == pytest.approx(6.0) and piece.at(90, 100) == 2.0
    assert Ramp.constant(3).at(7, 10) == 3
    assert [step_levels([128, 256, 512], [0.3, 0.6], s, 100) for s in (0, 29, 30, 59, 60, 100)] == [128, 128, 256, 256, 512, 512]
    with pytest.raises(ValueError):
        Ramp(((0.5, 1.0), (0.2, 2.0)))


def test_schedules_by_name_cover_the_parameter_choices():
    from backend.pipelines.base import TIMESTEP_SCHEDULES
    from backend.schedules import SCHEDULE_HELP, make_schedule

    assert set(TIMESTEP_SCHEDULES) == set(SCHEDULE_HELP)
    gen = torch.Generator().manual_seed(0)
    for name in TIMESTEP_SCHEDULES:
        schedule = make_schedule(name, 50, 950)
        ts = [schedule(step, 200, gen) for step in range(201)]
        assert all(isinstance(t, int) and 50 <= t <= 950 for t in ts), name
        if name in ("dreamgaussian", "dreamtime"):
            assert all(a >= b for a, b in zip(ts, ts[1:])), name  # deterministic, non-increasing
    assert make_schedule("dreamgaussian", 20, 980)(0, 100) == 980 and make_schedule("dreamgaussian", 20, 980)(100, 100) == 20
    with pytest.raises(ValueError, match="unknown timestep schedule"):
        make_schedule("cosine")
    with pytest.raises(ValueError, match="t_min < t_max"):
        make_schedule("uniform", 500, 400)
