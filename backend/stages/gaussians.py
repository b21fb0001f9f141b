"""Gaussian optimisation parts. The loop belongs to the method (gsplat's ``simple_trainer``
style); this module gives it what every Gaussian method repeats:

- :func:`expon_lr`: the position learning rate's log-linear decay (3DGS
  ``get_expon_lr_func``);
- :class:`Densification`: gsplat's ``DefaultStrategy`` as a policy with two hooks, plus the
  periodic opacity reset that gsplat 1.5.3 never performs (DESIGN.md section 6);
- :func:`step_optimizers`;
- losses: :func:`image_loss` (L1 + MS-SSIM, multi-view fitting), :func:`reference_view_loss`
  (a reference image's RGB and mask), :func:`sds_terms` (SDS from one or more teachers with
  weights);
- :func:`preview_gaussians`: the point-cloud preview.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from ..render.gaussians import GaussianModel, RenderOutput

#: Largest point-cloud preview (a random subset of the Gaussians beyond it).
MAX_PREVIEW_POINTS = 50_000


def expon_lr(step: int, total: int, lr_init: float, lr_final: float) -> float:
    """Log-linear decay from ``lr_init`` to ``lr_final`` over ``total`` steps, constant after
    (3DGS ``utils/general_utils.py`` ``get_expon_lr_func`` without its delay term)."""
    t = min(max(step / max(total, 1), 0.0), 1.0)
    return math.exp(math.log(lr_init) * (1 - t) + math.log(lr_final) * t)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every parameter group of ``optimizer`` to ``lr``."""
    for group in optimizer.param_groups:
        group["lr"] = lr


def step_optimizers(optimizers: dict[str, torch.optim.Optimizer]) -> None:
    """One step of every optimiser, then clear the gradients."""
    for opt in optimizers.values():
        opt.step()
        opt.zero_grad(set_to_none=True)


class Densification:
    """Clone, split and prune Gaussians (3DGS, Kerbl et al. 2023, section 5.2) with gsplat's
    ``DefaultStrategy`` for growing, as the original ``densify_and_prune`` does it:

    - statistics (image-plane gradients, gsplat scaling them by ``width/2 * n_cameras``, the
      original rasteriser's units) are gathered from step ``start`` to ``stop`` and the
      Gaussians are grown at every step in that range divisible by ``every`` (the original's
      ``step >= start``; gsplat's own test is ``step > start``, so it is given ``start - 1``);
    - at each densification, Gaussians below ``prune_opacity`` or larger than ``prune_scale3d
      x scene_scale`` are pruned (``densify_and_prune``'s ``big_points_ws``; gsplat 1.5.3 prunes
      large ones only after its first opacity reset, which it never performs). The original's
      screen-size test is a no-op there (``densification_postfix`` zeroes ``max_radii2D``
      before it), so there is none here;
    - opacities are reset to ``min(opacity, reset_value)`` every ``reset_every`` steps from
      ``start`` to ``stop`` (gsplat 1.5.3's reset condition ``step % reset_every == 0 & step >
      0`` is always false, so the reset is called here).

    Args:
        prune_opacity: Gaussians below this opacity are pruned.
        grad_threshold: image-plane gradient threshold (gsplat units = the original's).
        start, stop, every: densification from step ``start`` to ``stop``, every ``every`` steps.
        reset_every: steps between opacity resets (0: never).
        reset_value: the opacity cap of a reset (default ``2 x prune_opacity``, gsplat's).
        scene_scale: the scene's extent; the two size thresholds are fractions of it.
        grow_scale3d: clone below / split above this fraction (3DGS ``percent_dense``).
        prune_scale3d: Gaussians larger than this fraction are pruned.
        verbose: gsplat's own logging.
    """

    def __init__(self, *, prune_opacity: float, grad_threshold: float, start: int, stop: int, every: int,
                 reset_every: int = 0, reset_value: float | None = None, scene_scale: float = 1.0,
                 grow_scale3d: float = 0.01, prune_scale3d: float = 0.5, verbose: bool = False):
        from gsplat.strategy import DefaultStrategy

        self.strategy = DefaultStrategy(prune_opa=prune_opacity, grow_grad2d=grad_threshold, grow_scale3d=grow_scale3d,
                                        prune_scale3d=prune_scale3d, refine_start_iter=start - 1,
                                        refine_stop_iter=stop + 1, refine_every=every, reset_every=10**9,
                                        verbose=verbose)
        self.state = self.strategy.initialize_state(scene_scale=scene_scale)
        self.start, self.stop, self.every = start, stop, every
        self.reset_every = reset_every
        self.reset_value = 2.0 * prune_opacity if reset_value is None else reset_value
        self.max_scale = prune_scale3d * scene_scale

    def check(self, model: GaussianModel, optimizers: dict[str, torch.optim.Optimizer]) -> None:
        """gsplat's sanity check of the parameter and optimiser layout."""
        self.strategy.check_sanity(model.params, optimizers)

    def active(self, step: int) -> bool:
        """Whether statistics are gathered at ``step``."""
        return self.start <= step <= self.stop

    def before_backward(self, model: GaussianModel, optimizers: dict, step: int, info: dict) -> None:
        """Call after rendering, before ``loss.backward()`` (keeps the 2D means' gradients)."""
        if self.active(step):
            self.strategy.step_pre_backward(model.params, optimizers, self.state, step, info)

    def after_backward(self, model: GaussianModel, optimizers: dict, step: int, info: dict) -> None:
        """Call after the optimiser step: densify and prune when due, reset opacities when due."""
        from gsplat.strategy.ops import remove, reset_opa

        if not self.active(step):
            return
        self.strategy.step_post_backward(model.params, optimizers, self.state, step, info)
        if step % self.every == 0:  # a densification step (active() already holds)
            with torch.no_grad():
                too_big = torch.exp(model.params["scales"]).max(dim=-1).values > self.max_scale
            if too_big.any():
                remove(params=model.params, optimizers=optimizers, state=self.state, mask=too_big)
        if self.reset_every and step % self.reset_every == 0:
            reset_opa(model.params, optimizers, self.state, value=self.reset_value)


def image_loss(pred: torch.Tensor, target: torch.Tensor, w_ssim: float) -> torch.Tensor:
    """(1 - w_ssim) L1 + w_ssim (1 - MS-SSIM) on [B, H, W, 3] images in [0, 1] (3DGS's loss with
    MS-SSIM as in IM-3D section 3.2). MS-SSIM (pytorch-msssim) with a 7-px window needs sides
    above 96 px; below that, single-scale SSIM."""
    from pytorch_msssim import ms_ssim, ssim

    l1 = (pred - target).abs().mean()
    if w_ssim <= 0:
        return l1
    x, y = pred.permute(0, 3, 1, 2), target.permute(0, 3, 1, 2)
    if min(x.shape[-2:]) > 96:
        s = ms_ssim(x, y, data_range=1.0, win_size=7)
    else:
        s = ssim(x, y, data_range=1.0, win_size=min(7, (min(x.shape[-2:]) // 2) * 2 - 1))
    return (1.0 - w_ssim) * l1 + w_ssim * (1.0 - s)


def reference_view_loss(out: RenderOutput, ref: dict, w_rgb: float, w_mask: float, w_depth: float = 0.0) -> torch.Tensor:
    """w_rgb MSE(render, reference RGB) + w_mask MSE(render alpha, reference mask)
    (DreamGaussian's reference-view losses, ``main.py``) + w_depth x the depth correlation
    loss (``guidance.depth.depth_correlation_loss``) over the object when ``ref`` holds a
    monocular ``"disparity"`` (DTC123).

    With N reference views each term is the mean over the views (the MSE over the batch; the
    depth correlation per view, :func:`views_depth_loss`), so N views together weigh what
    DreamGaussian's single view does against the SDS term. Chosen by measurement over summing the
    views' terms (each view at the single view's weight): on the prior oracle (K=2, sigma=0.3,
    the test object, ``fast``, seed 0, front and back) ``bench/multi_reference.py`` printed
    24.66 dB held out with the sum (at commit 061d7e2) and 25.15 dB with the mean; the front-only
    run, where the two agree, 25.25 dB.

    Args:
        out: the render of the reference cameras ([N, H, W, 3] RGB over white, [N, H, W, 1]
            alpha, [N, H, W, 1] depth).
        ref: ``{"rgb": float [N, 3, H, W], "alpha": float [N, 1, H, W]}``, optionally
            ``"disparity": float [N, 1, H, W]``.
    """
    rgb = F.mse_loss(out.rgb.permute(0, 3, 1, 2), ref["rgb"])
    mask = F.mse_loss(out.alpha.permute(0, 3, 1, 2), ref["alpha"])
    loss = w_rgb * rgb + w_mask * mask
    if w_depth > 0 and "disparity" in ref:
        loss = loss + w_depth * views_depth_loss(out.depth.permute(0, 3, 1, 2), ref)
    return loss


def views_depth_loss(depth: torch.Tensor, ref: dict) -> torch.Tensor:
    """The depth correlation loss (``guidance.depth.depth_correlation_loss``) of each reference
    view over its object pixels, averaged over the views (a correlation is scale- and
    shift-invariant per image, so the views' pixels are not pooled). ``depth``: float
    [N, 1, H, W]; ``ref`` holds ``"disparity"`` and ``"alpha"`` [N, 1, H, W]."""
    from ..guidance.depth import depth_correlation_loss

    n = depth.shape[0]
    return sum(depth_correlation_loss(depth[i:i + 1], ref["disparity"][i:i + 1], ref["alpha"][i:i + 1] > 0.5)
               for i in range(n)) / n


def sds_terms(terms: Sequence[tuple[Any, float]], images: torch.Tensor, cameras, t: int, *, background: torch.Tensor,
              generator: torch.Generator | None = None, weighting: str | None = None) -> torch.Tensor:
    """sum_k weight_k * SDS_k (Poole et al. 2022, eq. 3) over ``terms`` = [(teacher, weight), ...]
    (several teachers: DTC123's hand-over, DreamCraft3D's hybrid SDS). Terms of weight 0 are
    skipped. ``images``: float [B, 3, H, W] in [0, 1]; ``weighting``: the w(t) the timestep
    schedule prescribes (``schedules.sds_weighting``; None: each teacher's own)."""
    loss = torch.zeros((), device=images.device)
    for teacher, weight in terms:
        if weight:
            loss = loss + weight * teacher.sds(images, cameras, t, background=background, generator=generator,
                                                   weighting=weighting).loss
    return loss


def preview_gaussians(model: GaussianModel) -> dict:
    """A point-cloud preview: means float32 [M,3], rgb uint8 [M,3], opacity float32 [M],
    M <= 50k (a random subset when there are more, drawn from a generator of its own: previews
    are paced by the clock, so drawing from the job's generator would make a run depend on the
    machine's speed)."""
    with torch.no_grad():
        idx = torch.arange(len(model), device=model.device)
        if len(model) > MAX_PREVIEW_POINTS:
            subset = torch.Generator().manual_seed(len(model))
            idx = torch.randperm(len(model), generator=subset)[:MAX_PREVIEW_POINTS].to(model.device)
        return {
            "means": model.means[idx].float(),
            "rgb": (model.base_colors[idx] * 255 + 0.5).to(torch.uint8),
            "opacity": model.opacities[idx].float(),
        }
