"""Fitting 3D Gaussians to posed views with image losses: the reconstruction stage of IM-3D
(Melas-Kyriazi et al. 2024, section 3.2 and appendix A.1), used by the ``reconstruct`` method
(posed images) and by IM-3D's loop (generated views).

- :class:`Views`: posed RGBA views;
- :func:`visual_hull_points`, :func:`knn_scale`: an initialisation from the silhouettes;
- :func:`robust_image_loss`: the losses, ``"l1_ssim"`` ((1 - w_ssim) L1 + w_ssim (1 - MS-SSIM)
  + w_lpips LPIPS-AlexNet, 3DGS's loss with MS-SSIM) or ``"im3d"`` (w_lpips LPIPS-VGG +
  w_ssim (1 - MS-SSIM), the paper's 10 and 0.2, robust to the generated views' small
  inconsistencies; without LPIPS's weights, L1 takes its place and the job's log says so), each
  plus w_mask MSE(alpha, mask);
- :func:`fit_gaussians`: Adam with densification (``stages.gaussians``);
- :func:`calibration_cameras`: orbit views for the mesh's iso-level calibration.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..cameras import Cameras, look_at_point, orbit_cameras
from ..perceptual import BACKBONES, load_lpips
from ..contracts import CancelToken, Emitter, ParamError
from ..render.gaussians import GaussianModel, render
from .gaussians import Densification, expon_lr, image_loss, preview_gaussians, set_lr, step_optimizers
from .progress import PreviewThrottle

#: The losses of :func:`robust_image_loss`.
RECONSTRUCTION_LOSSES = ("l1_ssim", "im3d")


@dataclass
class Views:
    """Posed training views: cameras (glTF world) and float images [N, H, W, 4] in [0, 1]."""

    cameras: Cameras
    images: torch.Tensor


def visual_hull_points(views: Views, n: int, generator: torch.Generator, candidates: int = 1_000_000,
                       mask_threshold: float = 0.5, reach: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Points inside every view's silhouette (space carving), with mean observed colours.

    Samples ``candidates`` points uniformly in the box that the cameras look at (half-side
    ``reach`` metres; default 1.5 x the nearest camera's distance x tan(fovy / 2)), keeps those
    that project inside every mask in whose frame they fall and into the frames of at least
    half of the views (and two), and returns up to ``n`` of them: (points [M, 3], colours
    [M, 3]). The half matters for one orbit (IM-3D's views): the box's corners fall outside
    most frames, and a point no view can carve must not count as inside.

    Raises:
        ParamError: no point survives (masks and poses disagree).
    """
    cams, imgs = views.cameras, views.images
    device = imgs.device
    centres = cams.centers
    target = look_at_point(cams)
    if reach is None:
        reach = (centres - target).norm(dim=-1).min() * math.tan(math.radians(float(cams.fovy.max())) / 2) * 1.5
    pts = (torch.rand(candidates, 3, generator=generator).to(device) * 2 - 1) * reach + target
    inside = torch.ones(candidates, dtype=torch.bool, device=device)
    seen = torch.zeros(candidates, device=device)
    colour = torch.zeros(candidates, 3, device=device)
    w2c, Ks = cams.viewmats, cams.Ks
    H, W = cams.height, cams.width
    for c in range(len(cams)):
        pc = pts @ w2c[c, :3, :3].T + w2c[c, :3, 3]
        z = pc[:, 2].clamp_min(1e-6)
        x = Ks[c, 0, 0] * pc[:, 0] / z + Ks[c, 0, 2]
        y = Ks[c, 1, 1] * pc[:, 1] / z + Ks[c, 1, 2]
        in_frame = (pc[:, 2] > 0) & (x >= 0) & (x < W) & (y >= 0) & (y < H)
        xi, yi = x.long().clamp(0, W - 1), y.long().clamp(0, H - 1)
        pix = imgs[c][yi, xi]
        inside &= ~in_frame | (pix[:, 3] > mask_threshold)
        seen += in_frame.float()
        colour += pix[:, :3] * in_frame[:, None]
    keep = torch.nonzero(inside & (seen >= max(2, math.ceil(len(cams) / 2)))).squeeze(1)
    if keep.numel() == 0:
        raise ParamError("no point lies inside every silhouette: the masks and camera poses do not agree")
    keep = keep[torch.randperm(keep.numel(), generator=generator)[:n].to(device)]
    return pts[keep], (colour[keep] / seen[keep, None]).clamp(0, 1)


def knn_scale(points: torch.Tensor, k: int = 3) -> torch.Tensor:
    """Initial Gaussian size: the root-mean-square distance to the ``k`` nearest neighbours
    (3DGS's initialisation; scipy's cKDTree). Returns float32 [N]."""
    from scipy.spatial import cKDTree

    pts = points.detach().cpu().numpy()
    dist, _ = cKDTree(pts).query(pts, k=k + 1)
    rms = np.sqrt((dist[:, 1:] ** 2).mean(1)).clip(1e-7)
    return torch.from_numpy(rms.astype(np.float32)).to(points.device)


def robust_image_loss(pred: torch.Tensor, target: torch.Tensor, alpha: torch.Tensor, mask: torch.Tensor, kind: str, *,
                      w_ssim: float, w_mask: float, w_lpips: float, lpips_net=None) -> torch.Tensor:
    """The reconstruction loss of rendered views against targets.

    Args:
        pred, target: float [B, H, W, 3] in [0, 1]. alpha, mask: float [B, H, W] in [0, 1].
        kind: ``"l1_ssim"``: (1 - w_ssim) L1 + w_ssim (1 - MS-SSIM) + w_lpips LPIPS;
            ``"im3d"`` (IM-3D appendix A.1: 10 LPIPS + 0.2 (1 - MS-SSIM) + 1 mask):
            w_lpips LPIPS + w_ssim (1 - MS-SSIM), with w_lpips L1 in LPIPS's place when
            ``lpips_net`` is None. Both add w_mask MSE(alpha, mask).
        lpips_net: ``perceptual.load_lpips``'s network, or None.
    Returns:
        A scalar tensor.
    Raises:
        ValueError: an unknown ``kind``.
    """
    if kind not in RECONSTRUCTION_LOSSES:
        raise ValueError(f"unknown reconstruction loss {kind!r}; use one of {', '.join(RECONSTRUCTION_LOSSES)}")
    mask_term = w_mask * F.mse_loss(alpha, mask)
    perceptual = None
    if lpips_net is not None and w_lpips > 0:
        perceptual = lpips_net(pred.permute(0, 3, 1, 2) * 2 - 1, target.permute(0, 3, 1, 2) * 2 - 1).mean()
    if kind == "l1_ssim":
        return image_loss(pred, target, w_ssim) + mask_term + (w_lpips * perceptual if perceptual is not None else 0.0)
    structure = image_loss(pred, target, 1.0) if w_ssim > 0 else torch.zeros((), device=pred.device)
    first = perceptual if perceptual is not None else (pred - target).abs().mean()
    return w_lpips * first + w_ssim * structure + mask_term


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB of images in [0, 1]."""
    mse = torch.mean((a.float() - b.float()) ** 2).item()
    return float("inf") if mse == 0 else -10.0 * math.log10(mse)


class GaussianFit:
    """Gaussians being fitted to posed RGBA views (module doc): the model, its optimisers and
    densification, advanced one step at a time by :meth:`step` so that a method can change the
    views between steps (IM-3D's loop regenerates them).

    Args:
        views: the training views (:class:`Views`; :attr:`views` may be replaced later).
        p: the parameters: iters, init_points, lr_*, loss, w_ssim, w_mask, w_lpips, densify_*,
            prune_opacity, opacity_reset_every, sh_degree; optional ``views_per_step`` (1: one
            random view per step; K: every view, full-image renders as IM-3D) and
            ``init_radius`` (with ``init="centre"``).
        generator: for the initialisation, view choice and backgrounds.
        emit: where LPIPS's absence is logged.
        init: ``"hull"`` (points inside every silhouette, coloured by the views) or
            ``"centre"`` (IM-3D: ``init_points`` grey points uniform in a ball of
            ``init_radius`` metres at the origin).
        models_dir: where else LPIPS's backbone checkpoint may be (``perceptual.find_backbone``).
        reach: the visual hull's half-side, metres (:func:`visual_hull_points`).
    """

    def __init__(self, views: Views, p: dict, generator: torch.Generator, emit: Emitter, init: str = "hull",
                 models_dir=None, reach: float | None = None):
        self.views, self.p, self.generator = views, p, generator
        device = views.images.device
        if init == "hull":
            points, colours = visual_hull_points(views, p["init_points"], generator, reach=reach)
            extent = float((points.max(0).values - points.min(0).values).max())
            model = GaussianModel.from_points(points, colours, scale=knn_scale(points), opacity=0.5,
                                              sh_degree=p["sh_degree"])
        elif init == "centre":
            model = GaussianModel.init_sphere(p["init_points"], p["init_radius"], 0.1, p["sh_degree"], generator)
            extent = 2.0 * p["init_radius"]
        else:
            raise ValueError(f"unknown initialisation {init!r}; use hull or centre")
        self.model = model.to(device)
        self.lrs = {"means": p["lr_means"] * extent, "scales": p["lr_scales"], "quats": p["lr_quats"],
                    "opacities": p["lr_opacities"], "sh0": p["lr_colors"], "shN": p["lr_colors"] / 20.0}
        self.optimizers = self.model.parameter_groups(self.lrs)
        self.densify = Densification(prune_opacity=p["prune_opacity"], grad_threshold=p["densify_grad"], prune_scale3d=0.2,
                                     start=p["densify_from"], stop=p["densify_until"], every=p["densify_every"],
                                     reset_every=p["opacity_reset_every"], scene_scale=max(extent, 1e-3))
        self.densify.check(self.model, self.optimizers)
        self.kind = p.get("loss", "l1_ssim")
        # Adam ignores a constant factor of the loss but densification's image-plane gradient
        # threshold does not: IM-3D's weights (10 + 0.2) would densify as if densify_grad were
        # ten times lower. The gradient is taken of the loss over its image terms' total weight,
        # so densify_grad means what it means with l1_ssim (whose weights sum to 1).
        self.grad_scale = 1.0 / max(p["w_lpips"] + p["w_ssim"], 1.0) if self.kind == "im3d" else 1.0
        backbone = "vgg" if self.kind == "im3d" else "alex"
        self.lpips_net = load_lpips(device, backbone, models_dir) if p["w_lpips"] > 0 else None
        if p["w_lpips"] > 0 and self.lpips_net is None:
            spec = BACKBONES[backbone]
            emit.log(f"LPIPS off: the lpips package or its {backbone} weights ({spec.file} in the torch hub cache or "
                     f"--models-dir/torchvision) are not present locally" + ("; L1 takes its place" if self.kind == "im3d"
                                                                             else "")
                     + f" (`splatsmith models download {spec.model_id}` fetches them)")

    def step(self, step: int, total: int) -> float:
        """One optimisation step (1-based ``step`` of ``total``); returns the loss."""
        p, model, device = self.p, self.model, self.views.images.device
        set_lr(self.optimizers["means"], expon_lr(step, total, self.lrs["means"], self.lrs["means"] * 0.01))
        n_views = len(self.views.cameras)
        k = min(int(p.get("views_per_step", 1)), n_views)
        if k <= 1:
            idx = torch.randint(n_views, (1,), generator=self.generator)
        elif k >= n_views:
            idx = torch.arange(n_views)
        else:
            idx = torch.randperm(n_views, generator=self.generator)[:k]
        cams = self.views.cameras[idx]
        gt = self.views.images[idx.to(device)]
        bg = torch.rand(3, generator=self.generator).to(device)
        target = gt[..., :3] * gt[..., 3:] + (1 - gt[..., 3:]) * bg
        out = render(model, cams, background=bg)
        self.densify.before_backward(model, self.optimizers, step, out.info)
        loss = robust_image_loss(out.rgb, target, out.alpha[..., 0], gt[..., 3], self.kind, w_ssim=p["w_ssim"],
                                 w_mask=p["w_mask"], w_lpips=p["w_lpips"], lpips_net=self.lpips_net)
        (loss * self.grad_scale).backward()
        step_optimizers(self.optimizers)
        self.densify.after_backward(model, self.optimizers, step, out.info)
        return float(loss.item())


def fit_gaussians(views: Views, p: dict, emit: Emitter, cancel: CancelToken, generator: torch.Generator,
                  stage: str = "fit", models_dir=None) -> GaussianModel:
    """Fit Gaussians to posed RGBA views (:class:`GaussianFit` from the visual hull, ``iters``
    steps), reporting progress as ``stage`` and point-cloud previews."""
    fit = GaussianFit(views, p, generator, emit, models_dir=models_dir)
    previews = PreviewThrottle()
    iters = p["iters"]
    for step in range(1, iters + 1):
        cancel.check()
        loss = fit.step(step, iters)
        emit.progress(stage, step, iters, loss, message=f"{len(fit.model)} Gaussians")
        if previews.due(step, iters):
            emit.preview("gaussians", preview_gaussians(fit.model), {"step": step, "count": len(fit.model)})
    return fit.model


def calibration_cameras(cameras: Cameras, n: int = 8) -> Cameras:
    """``n`` orbit cameras around the point the given cameras look at, at their mean distance
    and field of view, spread in azimuth and in elevation (-20..70 degrees)."""
    target = look_at_point(cameras)
    radius = float((cameras.centers - target).norm(dim=-1).mean())
    az = torch.arange(n, dtype=torch.float32) * (360.0 / n)
    el = torch.tensor([-20.0, 10.0, 40.0, 70.0]).repeat((n + 3) // 4)[:n]
    return orbit_cameras(el, az, radius, float(cameras.fovy[0]), cameras.width, cameras.height,
                         target=tuple(target.tolist()))
