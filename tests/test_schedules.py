"""Timestep schedules and ramps: formulas, monotonicity, end points, and DreamTime's mass."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from backend.schedules import (CurriculumStage, DreamGaussianAnneal, DreamTime, DTCCurriculum, Ramp, TeacherHandover, Uniform,
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


def reference_tp_sds(N: int, t_min: int, t_max: int, m1=800.0, m2=500.0, s1=300.0, s2=100.0) -> list[int]:
    """TP-SDS written out from its definition (issue 14, DreamTime section 4), in plain Python:
    W(t) = W_d(t) W_p(t) with Stable Diffusion's alpha_bar, restricted to [t_min, t_max] and
    normalised; t(i) = argmin_t |sum_{t'=t}^{t_max} p(t') - i/N| for i = 1..N."""
    betas = [(0.00085 ** 0.5 + (0.012 ** 0.5 - 0.00085 ** 0.5) * k / 999) ** 2 for k in range(1000)]
    alpha_bar, prod = [], 1.0
    for b in betas:
        prod *= 1.0 - b
        alpha_bar.append(prod)
    weights = []
    for t in range(t_min, t_max + 1):
        if t > m1:
            w_p = math.exp(-((t - m1) ** 2) / (2 * s1 ** 2))
        elif t >= m2:
            w_p = 1.0
        else:
            w_p = math.exp(-((t - m2) ** 2) / (2 * s2 ** 2))
        weights.append(math.sqrt((1 - alpha_bar[t]) / alpha_bar[t]) * w_p)
    total = sum(weights)
    tails, acc = [0.0] * len(weights), 0.0
    for k in range(len(weights) - 1, -1, -1):
        acc += weights[k] / total
        tails[k] = acc
    out = []
    for i in range(1, N + 1):
        best = min(range(len(tails)), key=lambda k: abs(tails[k] - i / N))
        out.append(min(max(t_min + best, t_min), t_max))
    return out


def test_dreamtime_prior_weight_pieces():
    t = np.array([100, 300, 400, 500, 650, 800, 900, 1100])
    w = dreamtime_prior_weight(t)
    assert w[3] == w[4] == w[5] == 1.0  # the plateau [m2, m1], both ends included
    assert w[2] == pytest.approx(math.exp(-0.5)) and w[1] == pytest.approx(math.exp(-2.0))  # 1 and 2 s2 below m2
    assert w[7] == pytest.approx(math.exp(-0.5))  # one s1 above m1
    assert w[6] == pytest.approx(math.exp(-(100 ** 2) / (2 * 300 ** 2)))
    assert w[0] < w[1] < w[2] < 1
    other = dreamtime_prior_weight(np.array([550, 700, 760]), m1=700, m2=600, s1=50, s2=20)
    assert other[0] == pytest.approx(math.exp(-(50 ** 2) / (2 * 20 ** 2))) and other[1] == 1.0
    assert other[2] == pytest.approx(math.exp(-(60 ** 2) / (2 * 50 ** 2)))


def test_dreamtime_density_is_w_d_times_w_p_normalised():
    ab = scaled_linear_alphas_cumprod()
    assert ab[0] == pytest.approx(1 - 0.00085) and np.all(np.diff(ab) < 0) and ab[-1] < 0.01
    s = DreamTime(t_min=50, t_max=950)
    t, p = s.density()
    assert t[0] == 50 and t[-1] == 950 and len(t) == 901
    assert p.sum() == pytest.approx(1.0, abs=1e-12) and (p > 0).all()
    w = dreamtime_prior_weight(t) * np.sqrt((1 - ab[t]) / ab[t])
    assert np.allclose(p, w / w.sum(), rtol=1e-12)
    # The plateau's ratios are W_d's alone; W_d grows with t.
    k600, k700 = 600 - 50, 700 - 50
    assert p[k700] / p[k600] == pytest.approx(math.sqrt((1 - ab[700]) / ab[700]) / math.sqrt((1 - ab[600]) / ab[600]))
    plain = DreamTime(t_min=50, t_max=950, diffusion_term=False).density()[1]
    assert np.allclose(plain, dreamtime_prior_weight(t) / dreamtime_prior_weight(t).sum())
    # A teacher's own alpha_bar is used when given.
    flat = np.full(1000, 0.5)
    assert np.allclose(DreamTime(t_min=50, t_max=950, alphas_cumprod=flat).density()[1], plain)


@pytest.mark.parametrize("N", [300, 500, 1000, 2000])
@pytest.mark.parametrize("t_range", [(20, 980), (50, 950)])
def test_schedules_show_dreamtime_json_matches_the_definition(N, t_range):
    """The acceptance check: the CLI's JSON equals the definition within one timestep for at
    least 99% of the iterations, non-increasing, from near t_max to t_min."""
    from typer.testing import CliRunner

    from backend.cli import app

    done = CliRunner().invoke(app, ["schedules", "show", "dreamtime", "--steps", str(N), "--t-min", str(t_range[0]),
                                    "--t-max", str(t_range[1]), "--json"])
    assert done.exit_code == 0, done.output
    ts = json.loads(done.output.strip().splitlines()[-1])
    ref = reference_tp_sds(N, *t_range)
    assert len(ts) == N and all(isinstance(t, int) for t in ts)
    assert np.mean(np.abs(np.array(ts) - np.array(ref)) <= 1) >= 0.99
    assert all(a >= b for a, b in zip(ts, ts[1:]))
    assert ts[-1] == t_range[0]  # the whole mass is above t_min: the last iteration ends there
    assert all(t_range[0] <= t <= t_range[1] for t in ts)
    assert ts[0] >= t_range[1] - 20  # starts coarse (most of W_d W_p's mass is at large t)


def test_dreamtime_spends_iterations_by_mass():
    s = DreamTime(t_min=20, t_max=980)
    N = 2000
    ts = s.table(N)[1:]
    t, p = s.density()
    bins = np.linspace(20, 981, 11)
    hist = np.histogram(ts, bins=bins)[0] / N
    mass = np.array([p[(t >= lo) & (t < hi)].sum() for lo, hi in zip(bins, bins[1:])])
    assert np.abs(hist - mass).max() < 0.01
    assert DreamTime.sds_weighting == "uniform"  # the weight is in the schedule: w(t) = 1 in the gradient


def test_schedules_show_prints_every_iteration_and_plots(tmp_path):
    from typer.testing import CliRunner

    from backend.cli import app

    runner = CliRunner()
    done = runner.invoke(app, ["schedules", "show", "dreamgaussian", "uniform", "--steps", "50", "--plot",
                               str(tmp_path / "s.png")])
    assert done.exit_code == 0, done.output
    lines = [ln for ln in done.output.splitlines() if ln and ln[0].isdigit()]
    assert len(lines) == 50 and lines[0].split()[:2] == ["1", str(DreamGaussianAnneal()(1, 50))]
    from PIL import Image

    assert Image.open(tmp_path / "s.png").size[0] > 500
    bad = runner.invoke(app, ["schedules", "show", "cosine", "--steps", "5"])
    assert bad.exit_code == 1 and "unknown schedule 'cosine'" in bad.output
    two = runner.invoke(app, ["schedules", "show", "uniform", "dtc", "--steps", "5", "--json"])
    assert two.exit_code == 1 and "exactly one name" in two.output
    prior = runner.invoke(app, ["schedules", "show", "dreamtime", "--steps", "5", "--m1", "400", "--m2", "600"])
    assert prior.exit_code == 1 and "m2 <= m1" in prior.output


def test_dtc_curriculum_bands_move_down_with_local_randomness_and_a_floor():
    """Issue 16 item 1: stages coarse/middle/fine with bands that move down; within a stage the
    annealed value falls from the band's top to its bottom; draws are random around it, inside
    the band, never below the stage's lower bound."""
    s = DTCCurriculum()
    assert [st.name for st in s.stages] == ["coarse", "middle", "fine"]
    bands = [(st.t_high, st.t_low) for st in s.stages]
    assert all(a[0] >= b[0] and a[1] >= b[1] for a, b in zip(bands, bands[1:]))
    total = 1000
    g = torch.Generator().manual_seed(0)
    annealed = [s.annealed(i, total) for i in range(total + 1)]
    assert all(a >= b for a, b in zip(annealed, annealed[1:]))  # contiguous default bands: monotone overall
    assert annealed[0] == 980 and annealed[-1] == 20
    for i in range(0, total + 1, 7):
        _, st, _ = s.stage(i, total)
        draws = [s(i, total, g) for _ in range(40)]
        assert all(st.t_low <= t <= st.t_high for t in draws), (i, st, draws)
        assert all(abs(t - s.annealed(i, total)) <= st.width / 2 + 1 for t in draws)
    middle = [s(550, total, g) for _ in range(400)]
    assert len(set(middle)) > 60  # local randomness: about the whole +-75 window
    with pytest.raises(ValueError, match="rises above"):
        DTCCurriculum((CurriculumStage("a", 0.5, 700, 300), CurriculumStage("b", 1.0, 800, 100)))
    with pytest.raises(ValueError, match="t_low <= t_high"):
        DTCCurriculum((CurriculumStage("a", 1.0, 300, 500),))
    with pytest.raises(ValueError, match="end at training fraction 1.0"):
        DTCCurriculum((CurriculumStage("a", 0.5, 900, 500),))


def test_teacher_handover_zero123_first_stable_diffusion_last():
    """Issue 16 item 3: Zero-1-to-3 alone at the start, Stable Diffusion ramping up in the middle,
    dominant at the end."""
    h = TeacherHandover()
    w = [h.at(i, 1000) for i in range(1001)]
    assert w[0] == {"zero123": 1.0, "stable-diffusion": 0.0}
    sd = [x["stable-diffusion"] for x in w]
    assert all(a <= b for a, b in zip(sd, sd[1:]))
    assert w[-1]["stable-diffusion"] > 5 * w[-1]["zero123"] > 0
    with pytest.raises(ValueError, match="2 weight pairs for 3"):
        TeacherHandover(weights={"zero123": ((1, 1), (1, 1))})


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
