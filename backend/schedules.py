"""Diffusion timestep schedules and scalar ramps, as data (threestudio style).

A timestep schedule is called as ``schedule(step, total, generator)`` with ``step`` in
[0, total] (the optimisation step, 0-based or 1-based alike) and returns an integer diffusion
timestep t in [0, T-1] (T = 1000 for Stable Diffusion and Zero-1-to-3). Every schedule cites
its source:

- :class:`Uniform`: DreamFusion (Poole et al. 2022), t ~ U[t_min, t_max].
- :class:`DreamGaussianAnneal`: DreamGaussian's public code (Tang et al. 2023),
  t = round((1 - step/total) * T) clipped to [t_min, t_max].
- :class:`DreamTime`: time-prioritised SDS (Huang et al. 2023, TP-SDS, section 4), a
  deterministic non-increasing t(i) that spends optimisation steps in proportion to
  W(t) = W_d(t) W_p(t), the SDS gradient then taken with w(t) = 1 (:func:`sds_weighting`).
- :class:`DTCCurriculum`: DTC123's diffusion time-step curriculum (Yi et al. 2024): stages
  (coarse, middle, fine) whose timestep bands move down, t annealed through each band with
  local randomness and never below the band; :class:`TeacherHandover` gives each teacher's
  weight per stage (Zero-1-to-3 -> Stable Diffusion).

Ramps (:class:`Ramp`) give any scalar (loss weights, resolutions) as a piecewise-linear
function of the training fraction.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol, Sequence

import numpy as np
import torch

from .contracts import TIMESTEP_SCHEDULES

NUM_TRAIN_TIMESTEPS = 1000


class TimestepSchedule(Protocol):
    def __call__(self, step: int, total: int, generator: torch.Generator | None = None) -> int: ...


def scaled_linear_alphas_cumprod(T: int = NUM_TRAIN_TIMESTEPS, beta_start: float = 0.00085,
                                 beta_end: float = 0.012) -> np.ndarray:
    """alpha_bar_t of Stable Diffusion's "scaled_linear" beta schedule (Rombach et al. 2022;
    diffusers ``DDIMScheduler``): betas = linspace(sqrt(b0), sqrt(b1), T)^2,
    alpha_bar_t = prod_{s<=t} (1 - beta_s). float64 [T]."""
    betas = np.linspace(beta_start**0.5, beta_end**0.5, T, dtype=np.float64) ** 2
    return np.cumprod(1.0 - betas)


def _progress(step: int, total: int) -> float:
    return min(max(step / max(total, 1), 0.0), 1.0)


@dataclass(frozen=True)
class Uniform:
    """DreamFusion's SDS timestep: t ~ U{t_min, ..., t_max} each step."""

    t_min: int = 20
    t_max: int = 980

    def __call__(self, step: int, total: int, generator: torch.Generator | None = None) -> int:
        return int(torch.randint(self.t_min, self.t_max + 1, (1,), generator=generator))


@dataclass(frozen=True)
class DreamGaussianAnneal:
    """DreamGaussian's annealed timestep (public code, ``step_ratio``):
    t = round((1 - step/total) * T), clipped to [t_min, t_max]. Deterministic."""

    t_min: int = 20
    t_max: int = 980
    T: int = NUM_TRAIN_TIMESTEPS

    def __call__(self, step: int, total: int, generator: torch.Generator | None = None) -> int:
        return int(np.clip(round((1.0 - _progress(step, total)) * self.T), self.t_min, self.t_max))


@dataclass(frozen=True)
class IntervalAnneal:
    """t ~ U{lo(step), ..., hi(step)} with both bounds moving linearly from ``start`` to ``end``
    over steps ``from_step`` .. ``until_step`` and held outside them: threestudio's
    ``min_step_percent`` / ``max_step_percent`` given as [start_step, start, end, end_step]
    (``systems/base.py`` ``C()``, linear in the step). DreamCraft3D's geometry sculpting
    (``configs/dreamcraft3d-coarse-nerf.yaml``): U(0.7, 0.85) T at step 0 to U(0.2, 0.5) T at
    step 200; its texture boosting (``dreamcraft3d-texture.yaml``): U(0.05, 0.5) T to
    U(0.05, 0.2) T over 5000 steps. Bounds are timesteps (0 .. T-1); ``total`` is ignored:
    the anneal is in absolute steps, as in the public code.

    Raises:
        ValueError: a bound outside [0, T-1], lo > hi, or until_step < from_step.
    """

    start: tuple[int, int] = (700, 850)
    end: tuple[int, int] = (200, 500)
    until_step: int = 200
    from_step: int = 0

    def __post_init__(self):
        for lo, hi in (self.start, self.end):
            if not 0 <= lo <= hi < NUM_TRAIN_TIMESTEPS:
                raise ValueError(f"timestep interval [{lo}, {hi}] must satisfy 0 <= lo <= hi < {NUM_TRAIN_TIMESTEPS}")
        if self.until_step < self.from_step:
            raise ValueError(f"the anneal ends (step {self.until_step}) before it starts (step {self.from_step})")

    def bounds(self, step: int) -> tuple[int, int]:
        """(lo, hi) at ``step``."""
        span = max(self.until_step - self.from_step, 1)
        f = min(max((step - self.from_step) / span, 0.0), 1.0)
        lo = self.start[0] + (self.end[0] - self.start[0]) * f
        hi = self.start[1] + (self.end[1] - self.start[1]) * f
        return int(round(lo)), int(round(hi))

    def __call__(self, step: int, total: int, generator: torch.Generator | None = None) -> int:
        lo, hi = self.bounds(step)
        return int(torch.randint(lo, hi + 1, (1,), generator=generator))


#: DreamTime's prior W_p(t) defaults (Huang et al. 2023, section 4; DreamWaltz-G
#: ``core/guidance/time_prior.py``, ``normal_weights``): plateau [m2, m1], Gaussian tails.
DREAMTIME_PRIOR = {"m1": 800.0, "m2": 500.0, "s1": 300.0, "s2": 100.0}


def dreamtime_prior_weight(t: np.ndarray, m1: float = 800.0, m2: float = 500.0, s1: float = 300.0,
                           s2: float = 100.0) -> np.ndarray:
    """DreamTime's prior weight W_p(t) (Huang et al. 2023, section 4): exp(-(t-m1)^2 / 2 s1^2)
    for t > m1; 1 for m2 <= t <= m1; exp(-(t-m2)^2 / 2 s2^2) for t < m2.

    Args:
        t: timesteps, any shape (int or float).
        m1, m2: the plateau's upper and lower end, m2 <= m1.
        s1, s2: the upper and lower tail's standard deviation, > 0.
    Returns:
        float64 array of ``t``'s shape, values in (0, 1].
    """
    t = np.asarray(t, dtype=np.float64)
    return np.where(t > m1, np.exp(-((t - m1) ** 2) / (2 * s1**2)),
                    np.where(t >= m2, 1.0, np.exp(-((t - m2) ** 2) / (2 * s2**2))))


def sds_diffusion_weight(alphas_cumprod: np.ndarray, t: np.ndarray) -> np.ndarray:
    """W_d(t) = sqrt((1 - alpha_bar_t) / alpha_bar_t), DreamTime's diffusion term (section 4;
    DreamWaltz-G ``ddpm_weights``), from the teacher's own noise schedule. float64."""
    ab = np.asarray(alphas_cumprod, dtype=np.float64)[np.asarray(t)]
    return np.sqrt((1.0 - ab) / ab)


@dataclass
class DreamTime:
    """Time-prioritised SDS, TP-SDS (Huang et al. 2023, "DreamTime", section 4, Algorithm 1).

    W(t) = W_d(t) W_p(t) (:func:`sds_diffusion_weight` x :func:`dreamtime_prior_weight`) is
    restricted to [t_min, t_max] and normalised to p(t); iteration i of N gets

        t(i) = argmin_t | sum_{t'=t}^{t_max} p(t') - i/N |,

    clamped to [t_min, t_max]: deterministic and non-increasing in i (ties go to the smaller t).
    The author's public implementation (DreamWaltz-G ``core/guidance/time_prior.py``,
    ``PriorFunction('dreamtime')``) takes the first t, from t_max down, whose cumulative mass
    reaches i/N (a bisection); the two differ by at most one timestep.

    Because the prior (W_d included) is carried by how often each t is visited, the SDS
    gradient itself is taken with w(t) = 1 (section 4: the weight moves from the loss into the
    schedule): :attr:`sds_weighting` is ``"uniform"``, and every stage that distils uses it.

    Attributes:
        m1, m2, s1, s2: the prior's plateau and tails (:data:`DREAMTIME_PRIOR`).
        diffusion_term: include W_d (the paper's TP-SDS); False gives W = W_p alone.
        t_min, t_max: the timestep range, 0 <= t_min < t_max < len(alphas_cumprod).
        alphas_cumprod: the teacher's alpha_bar_t, float [T]; None: Stable Diffusion's
            ``scaled_linear`` schedule (also Zero-1-to-3's).
    """

    m1: float = DREAMTIME_PRIOR["m1"]
    m2: float = DREAMTIME_PRIOR["m2"]
    s1: float = DREAMTIME_PRIOR["s1"]
    s2: float = DREAMTIME_PRIOR["s2"]
    diffusion_term: bool = True
    t_min: int = 20
    t_max: int = 980
    alphas_cumprod: np.ndarray | None = None
    _cache: dict = field(default_factory=dict, repr=False)

    sds_weighting = "uniform"

    def __post_init__(self) -> None:
        if not self.m2 <= self.m1:
            raise ValueError(f"DreamTime needs m2 <= m1 (the prior's plateau is [m2, m1]); got m1={self.m1}, m2={self.m2}")
        if self.s1 <= 0 or self.s2 <= 0:
            raise ValueError(f"DreamTime's s1 and s2 must be positive; got s1={self.s1}, s2={self.s2}")

    def density(self) -> tuple[np.ndarray, np.ndarray]:
        """(t, p(t)): int64 [t_max - t_min + 1] ascending, and float64 probabilities summing to 1."""
        t = np.arange(self.t_min, self.t_max + 1)
        w = dreamtime_prior_weight(t, self.m1, self.m2, self.s1, self.s2)
        if self.diffusion_term:
            ab = self.alphas_cumprod if self.alphas_cumprod is not None else scaled_linear_alphas_cumprod()
            w = w * sds_diffusion_weight(ab, t)
        return t, w / w.sum()

    def table(self, total: int) -> np.ndarray:
        """t(i) for i = 0..total, int64 [total + 1] (cached per total)."""
        if total not in self._cache:
            t, p = self.density()
            tail = np.cumsum(p[::-1])[::-1]  # sum_{t' >= t} p(t')
            targets = np.arange(total + 1) / max(total, 1)
            idx = np.abs(tail[None, :] - targets[:, None]).argmin(1)
            self._cache[total] = np.clip(t[idx], self.t_min, self.t_max)
        return self._cache[total]

    def __call__(self, step: int, total: int, generator: torch.Generator | None = None) -> int:
        return int(self.table(total)[min(max(step, 0), total)])


@dataclass(frozen=True)
class CurriculumStage:
    """One stage of :class:`DTCCurriculum`.

    Attributes:
        name: ``"coarse"``, ``"middle"``, ``"fine"`` or any label (the trace names it).
        until: training fraction in (0, 1] at which the stage ends.
        t_high, t_low: the stage's timestep band; the annealed value falls linearly from
            ``t_high`` at the stage's start to ``t_low`` at its end, and no draw leaves the band
            (``t_low`` is the stage's lower bound).
        width: local randomness: a draw is uniform in the annealed value +- ``width`` / 2,
            clipped to the band.
    """

    name: str
    until: float
    t_high: int
    t_low: int
    width: int = 100


#: DTC123's stages as this project chose them (the paper publishes no band; see
#: ``backend/pipelines/dtc123.py`` and ``docs/methods.md`` for the measurement behind them).
DTC_STAGES: tuple[CurriculumStage, ...] = (
    CurriculumStage("coarse", 0.4, 980, 650, 200),
    CurriculumStage("middle", 0.75, 650, 300, 150),
    CurriculumStage("fine", 1.0, 300, 20, 100),
)


@dataclass(frozen=True)
class DTCCurriculum:
    """DTC123's diffusion time-step curriculum (Yi et al. 2024, section 3.2): training split
    into stages whose timestep bands move down (coarse shape at large t, fine texture at small
    t); within a stage t follows an annealed value from the band's top to its bottom, drawn with
    local randomness around it and never outside the band (the stage's lower bound holds).

    t(step) ~ U[max(a - width/2, t_low), min(a + width/2, t_high)] (integers), with
    a = t_high + (t_low - t_high) u and u the progress through the current stage in [0, 1].

    Args:
        stages: the stages in training order: ``until`` non-decreasing (a stage ending where
            the previous one ends is empty) and ending at 1.0; bands
            non-increasing from stage to stage (neither bound rises); ``t_low <= t_high`` and
            ``width >= 0`` in each.
    Raises:
        ValueError: stages that break those rules (the message names the stage).
    """

    stages: tuple[CurriculumStage, ...] = DTC_STAGES

    def __post_init__(self) -> None:
        if not self.stages:
            raise ValueError("a curriculum needs at least one stage")
        prev = None
        for s in self.stages:
            if not 0 <= s.t_low <= s.t_high < NUM_TRAIN_TIMESTEPS or s.width < 0:
                raise ValueError(f"curriculum stage {s.name!r}: need 0 <= t_low <= t_high < {NUM_TRAIN_TIMESTEPS} and "
                                 f"width >= 0, got band [{s.t_low}, {s.t_high}] width {s.width}")
            if prev is not None and not prev.until <= s.until:
                raise ValueError(f"curriculum stage {s.name!r} must not end before {prev.name!r} ('until' "
                                 "non-decreasing; equal: the stage is empty)")
            if prev is not None and (s.t_high > prev.t_high or s.t_low > prev.t_low):
                raise ValueError(f"curriculum stage {s.name!r}'s band [{s.t_low}, {s.t_high}] rises above "
                                 f"{prev.name!r}'s [{prev.t_low}, {prev.t_high}]: bands must move down")
            prev = s
        if self.stages[-1].until != 1.0:
            raise ValueError("the last curriculum stage must end at training fraction 1.0")

    def stage(self, step: int, total: int) -> tuple[int, CurriculumStage, float]:
        """(stage index, stage, progress within the stage in [0, 1]) at ``step`` of ``total``."""
        r = _progress(step, total)
        begin = 0.0
        for k, s in enumerate(self.stages):
            if r <= s.until or k == len(self.stages) - 1:
                return k, s, min(max((r - begin) / max(s.until - begin, 1e-9), 0.0), 1.0)
            begin = s.until
        raise AssertionError("unreachable")

    def annealed(self, step: int, total: int) -> float:
        """The annealed value a at this step (before the local randomness)."""
        _, s, u = self.stage(step, total)
        return s.t_high + (s.t_low - s.t_high) * u

    def window(self, step: int, total: int) -> tuple[int, int]:
        """(lo, hi): the range a draw at this step can take (inclusive)."""
        _, s, _ = self.stage(step, total)
        a = self.annealed(step, total)
        return (int(min(max(math.ceil(a - s.width / 2), s.t_low), s.t_high)),
                int(max(min(math.floor(a + s.width / 2), s.t_high), s.t_low)))

    def __call__(self, step: int, total: int, generator: torch.Generator | None = None) -> int:
        lo, hi = self.window(step, total)
        return int(torch.randint(lo, hi + 1, (1,), generator=generator))


@dataclass(frozen=True)
class TeacherHandover:
    """DTC123's teacher hand-over (Yi et al. 2024, section 3.3) as data: each teacher's SDS
    weight per curriculum stage, linear from the stage's start to its end.

    ``weights`` maps a teacher name (``"zero123"``, ``"stable-diffusion"``) to one
    ``(start, end)`` pair per stage of ``curriculum``. The default: Zero-1-to-3 alone in the
    coarse stage; both in the middle, Stable Diffusion's weight ramping 0 -> 1; Stable
    Diffusion dominant in the fine stage with Zero-1-to-3 kept small (0.1) to hold the shape.
    The paper publishes no weights; these are our choice (``docs/methods.md``).

    Raises:
        ValueError: a teacher without one pair per stage, or a negative weight.
    """

    curriculum: DTCCurriculum = field(default_factory=DTCCurriculum)
    weights: dict = field(default_factory=lambda: {
        "zero123": ((1.0, 1.0), (1.0, 1.0), (0.1, 0.1)),
        "stable-diffusion": ((0.0, 0.0), (0.0, 1.0), (1.0, 1.0)),
    })

    def __post_init__(self) -> None:
        n = len(self.curriculum.stages)
        for name, pairs in self.weights.items():
            if len(pairs) != n:
                raise ValueError(f"teacher {name!r} has {len(pairs)} weight pairs for {n} curriculum stages")
            if any(w < 0 for pair in pairs for w in pair):
                raise ValueError(f"teacher {name!r} has a negative weight")

    def at(self, step: int, total: int) -> dict[str, float]:
        """Each teacher's weight at ``step`` of ``total``: {name: weight >= 0}."""
        k, _, u = self.curriculum.stage(step, total)
        return {name: pairs[k][0] + (pairs[k][1] - pairs[k][0]) * u for name, pairs in self.weights.items()}


@dataclass(frozen=True)
class Ramp:
    """A scalar as a piecewise-linear function of the training fraction (threestudio's
    ``C(value, epoch, global_step)`` generalised): ``points`` are (fraction, value) pairs with
    increasing fractions; constant before the first and after the last."""

    points: tuple[tuple[float, float], ...]

    @classmethod
    def constant(cls, value: float) -> "Ramp":
        return cls(((0.0, float(value)),))

    @classmethod
    def linear(cls, start: float, end: float, start_frac: float = 0.0, end_frac: float = 1.0) -> "Ramp":
        """From ``start`` at ``start_frac`` to ``end`` at ``end_frac`` of training."""
        return cls(((start_frac, float(start)), (end_frac, float(end))))

    def __post_init__(self) -> None:
        if not self.points or any(b[0] < a[0] for a, b in zip(self.points, self.points[1:])):
            raise ValueError("Ramp points must be non-empty with non-decreasing fractions")

    def at(self, step: int, total: int) -> float:
        """The value at ``step`` of ``total``."""
        r = _progress(step, total)
        xs = [p[0] for p in self.points]
        ys = [p[1] for p in self.points]
        return float(np.interp(r, xs, ys))


def step_levels(values: Sequence[int], fractions: Sequence[float], step: int, total: int) -> int:
    """A staircase: ``values[k]`` from training fraction ``fractions[k-1]`` on (e.g.
    DreamGaussian's render resolution 128 -> 256 -> 512 at 30% and 60%:
    ``step_levels([128, 256, 512], [0.3, 0.6], step, total)``)."""
    if len(fractions) != len(values) - 1:
        raise ValueError("need one fraction fewer than values")
    r = _progress(step, total)
    return int(values[sum(r >= f for f in fractions)])


def make_schedule(name: str, t_min: int = 20, t_max: int = 980, *, m1: float = DREAMTIME_PRIOR["m1"],
                  m2: float = DREAMTIME_PRIOR["m2"], s1: float = DREAMTIME_PRIOR["s1"], s2: float = DREAMTIME_PRIOR["s2"],
                  alphas_cumprod: np.ndarray | torch.Tensor | None = None) -> TimestepSchedule:
    """The timestep schedule called ``name`` (the ``timestep_schedule`` parameter of every stage
    that distils from a teacher), restricted to [t_min, t_max].

    Args:
        name: ``"dreamgaussian"`` (:class:`DreamGaussianAnneal`), ``"uniform"``
            (:class:`Uniform`), ``"dreamtime"`` (:class:`DreamTime`, TP-SDS with W_d x W_p) or
            ``"dtc"`` (:class:`DTCCurriculum`'s default stages, clipped to the range).
        t_min, t_max: the timestep range, 0 <= t_min < t_max < 1000.
        m1, m2, s1, s2: DreamTime's prior (used by ``"dreamtime"`` only).
        alphas_cumprod: the teacher's alpha_bar_t [T] for DreamTime's W_d (None: Stable
            Diffusion's schedule).
    Returns:
        A callable ``schedule(step, total, generator) -> int``; its ``sds_weighting``
        attribute (see :func:`sds_weighting`) is the w(t) its method prescribes.
    Raises:
        ValueError: an unknown name, an empty range or an invalid DreamTime prior.
    """
    if not 0 <= t_min < t_max < NUM_TRAIN_TIMESTEPS:
        raise ValueError(f"timestep range [{t_min}, {t_max}] must satisfy 0 <= t_min < t_max < {NUM_TRAIN_TIMESTEPS}")
    if name == "dreamgaussian":
        return DreamGaussianAnneal(t_min, t_max)
    if name == "uniform":
        return Uniform(t_min, t_max)
    if name == "dreamtime":
        ab = None if alphas_cumprod is None else np.asarray(torch.as_tensor(alphas_cumprod).detach().cpu(), np.float64)
        return DreamTime(m1, m2, s1, s2, t_min=t_min, t_max=t_max, alphas_cumprod=ab)
    if name == "dtc":
        return ClippedSchedule(DTCCurriculum(), t_min, t_max)
    raise ValueError(f"unknown timestep schedule {name!r}; use one of {', '.join(SCHEDULE_HELP)}")


@dataclass(frozen=True)
class ClippedSchedule:
    """A schedule whose timesteps are clipped to [t_min, t_max]."""

    inner: TimestepSchedule
    t_min: int
    t_max: int

    def __call__(self, step: int, total: int, generator: torch.Generator | None = None) -> int:
        return int(np.clip(self.inner(step, total, generator), self.t_min, self.t_max))


def sds_weighting(schedule: TimestepSchedule, default: str = "sds") -> str:
    """The SDS weighting w(t) a schedule prescribes (``"uniform"`` for DreamTime, whose prior
    is in the schedule), else ``default`` (DreamFusion's w = 1 - alpha_bar_t)."""
    return getattr(schedule, "sds_weighting", default)


def timesteps(schedule: TimestepSchedule, total: int, generator: torch.Generator | None = None) -> list[int]:
    """The timestep of every iteration i = 1..total, as a training loop draws them. int list."""
    return [int(schedule(i, total, generator)) for i in range(1, total + 1)]


#: One line for people per schedule name (the CLI's and the panel's help).
SCHEDULE_HELP = TIMESTEP_SCHEDULES
