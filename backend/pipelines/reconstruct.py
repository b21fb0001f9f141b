"""Multi-view reconstruction: posed RGBA images -> Gaussians -> textured mesh.

This is the reconstruction half of IM-3D (Melas-Kyriazi et al. 2024, section 3.2: fitting 3D
Gaussians to the generated views with image-level losses, L1 + MS-SSIM (+ LPIPS), and a mask
loss), usable on its own for NeRF-synthetic datasets. Steps:

1. Gaussians are initialised from the visual hull of the masks (points inside every
   silhouette), coloured by the images.
2. Adam on every Gaussian parameter (one optimiser each, gsplat's layout) against one random
   training view per step, composited over a random background colour; loss
   (1 - w_ssim) L1 + w_ssim (1 - MS-SSIM) + w_mask MSE(alpha, mask) (+ w_lpips LPIPS when its
   weights are present). MS-SSIM from pytorch-msssim.
3. Densification and pruning by ``gsplat.strategy.DefaultStrategy`` on both devices, with the
   opacity reset called here (gsplat 1.5.3 never resets, see DESIGN.md section 6).
4. Mesh extraction with its iso-level calibrated against the Gaussians' silhouettes
   (``backend.geometry.extract.extract_mesh``), UV unwrap, and texture baking from the
   training images, then GLB and 3DGS PLY in the job folder.

Inputs through the server: ``images`` uint8 [N, H, W, 4] (straight alpha, row 0 at the top),
``transforms`` float32 [N, 4, 4] (NeRF ``transform_matrix``: camera-to-world, OpenGL camera
axes, Blender's Z-up world), and the parameter ``camera_angle_x`` (radians).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..cameras import Cameras, blender_to_gltf, fovx_to_fovy, load_transforms_json, look_at_point, orbit_cameras
from ..geometry.export import write_ply
from ..render.gaussians import GaussianModel, render
from ..stages.gaussians import Densification, expon_lr, image_loss, preview_gaussians, set_lr, step_optimizers
from ..stages.mesh_export import bake_from_views, export_mesh, write_textured_asset
from ..stages.progress import PreviewThrottle
from .base import CancelToken, Emitter, JobRequest, ParamError, Result
from .specs.reconstruct import ReconstructSpec



@dataclass
class Views:
    """Posed training views: cameras (glTF world) and float images [N, H, W, 4] in [0, 1]."""

    cameras: Cameras
    images: torch.Tensor


def views_from_arrays(images: np.ndarray, transforms: np.ndarray, camera_angle_x: float, resolution: int,
                      device: str = "cpu") -> Views:
    """Build :class:`Views` from RGBA images and NeRF transform matrices (Blender world),
    resizing the images to ``resolution`` pixels on their longer side (area filter).

    Raises:
        ParamError: counts or shapes disagree, images are not RGBA, or the masks are empty.
    """
    if images.ndim != 4 or images.shape[-1] != 4:
        raise ParamError(f"images must be RGBA uint8 [N, H, W, 4], got shape {images.shape}")
    if transforms.shape != (images.shape[0], 4, 4):
        raise ParamError(f"need one 4x4 transform per image: {images.shape[0]} images, transforms of shape {transforms.shape}")
    h, w = images.shape[1:3]
    scale = resolution / max(h, w)
    H, W = max(1, round(h * scale)), max(1, round(w * scale))
    t = torch.from_numpy(np.ascontiguousarray(images)).float().div(255.0).permute(0, 3, 1, 2)
    # Resize premultiplied colour so edges do not pick up the colour of transparent pixels.
    t = torch.cat([t[:, :3] * t[:, 3:], t[:, 3:]], 1)
    if (H, W) != (h, w):
        t = F.interpolate(t, size=(H, W), mode="area")
    rgb = torch.where(t[:, 3:] > 1e-6, t[:, :3] / t[:, 3:].clamp_min(1e-6), torch.zeros_like(t[:, :3]))
    imgs = torch.cat([rgb.clamp(0, 1), t[:, 3:]], 1).permute(0, 2, 3, 1).contiguous()
    if (imgs[..., 3] > 0.5).sum() == 0:
        raise ParamError("every image is fully transparent: the reconstruction needs RGBA images whose alpha is the object's mask")
    c2w = blender_to_gltf(torch.from_numpy(np.asarray(transforms, np.float32)))
    fovy = fovx_to_fovy(float(camera_angle_x), W, H)
    return Views(Cameras(c2w, torch.full((len(c2w),), fovy), W, H).to(device), imgs.to(device))


def load_dataset(path: str | Path, resolution: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Read a NeRF-synthetic dataset folder (or its transforms.json) into the pipeline's
    inputs: (images uint8 [N, H, W, 4], transforms float32 [N, 4, 4], camera_angle_x).

    Raises:
        FileNotFoundError, ValueError: a missing file, a malformed JSON, images of unequal size.
    """
    import json

    path = Path(path)
    tj = path / "transforms.json" if path.is_dir() else path
    if not tj.is_file():
        raise FileNotFoundError(f"{tj} not found: a dataset folder needs a transforms.json (NeRF-synthetic layout)")
    _, files = load_transforms_json(tj, resolution, resolution)
    meta = json.loads(tj.read_text())
    images = []
    for f in files:
        img = Image.open(f)
        if img.mode != "RGBA":
            img = img.convert("RGBA")
        images.append(np.asarray(img))
    sizes = {im.shape for im in images}
    if len(sizes) != 1:
        raise ValueError(f"{tj}: the images have different sizes {sorted(sizes)}")
    transforms = np.asarray([fr["transform_matrix"] for fr in meta["frames"]], np.float32)
    return np.stack(images), transforms, float(meta["camera_angle_x"])


def visual_hull_points(views: Views, n: int, generator: torch.Generator, candidates: int = 1_000_000,
                       mask_threshold: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Points inside every view's silhouette (space carving), with mean observed colours.

    Samples ``candidates`` points uniformly in the box that the cameras look at, keeps those
    that project inside every mask in whose frame they fall (and into at least two frames),
    and returns up to ``n`` of them: (points [M, 3], colours [M, 3]).

    Raises:
        ParamError: no point survives (masks and poses disagree).
    """
    cams, imgs = views.cameras, views.images
    device = imgs.device
    centres = cams.centers
    target = look_at_point(cams)
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
    keep = torch.nonzero(inside & (seen >= 2)).squeeze(1)
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


def load_lpips(device: str):
    """The LPIPS network (Zhang et al. 2018, the ``lpips`` package, AlexNet backbone) when it is
    installed and its backbone weights are in the local torch hub cache; None otherwise (it
    is never downloaded during a job)."""
    try:
        import lpips
    except ImportError:
        return None
    checkpoint = Path(torch.hub.get_dir()) / "checkpoints" / "alexnet-owt-7be5be79.pth"
    if not checkpoint.is_file():
        return None
    net = lpips.LPIPS(net="alex", verbose=False).to(device).eval()
    for param in net.parameters():
        param.requires_grad_(False)
    return net


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB of images in [0, 1]."""
    mse = torch.mean((a.float() - b.float()) ** 2).item()
    return float("inf") if mse == 0 else -10.0 * math.log10(mse)


def fit_gaussians(views: Views, p: dict, emit: Emitter, cancel: CancelToken, generator: torch.Generator,
                  stage: str = "fit") -> GaussianModel:
    """Fit Gaussians to posed RGBA views (module doc, steps 1-3). ``p`` holds the pipeline's
    parameters (iters, init_points, lr_*, w_ssim, w_mask, densify_*, opacity_reset_every, sh_degree)."""
    device = views.images.device
    points, colours = visual_hull_points(views, p["init_points"], generator)
    extent = float((points.max(0).values - points.min(0).values).max())
    model = GaussianModel.from_points(points, colours, scale=knn_scale(points), opacity=0.5, sh_degree=p["sh_degree"]).to(device)
    lrs = {"means": p["lr_means"] * extent, "scales": p["lr_scales"], "quats": p["lr_quats"],
           "opacities": p["lr_opacities"], "sh0": p["lr_colors"], "shN": p["lr_colors"] / 20.0}
    optimizers = model.parameter_groups(lrs)
    iters = p["iters"]
    densify = Densification(prune_opacity=p["prune_opacity"], grad_threshold=p["densify_grad"], prune_scale3d=0.2,
                            start=p["densify_from"], stop=p["densify_until"], every=p["densify_every"],
                            reset_every=p["opacity_reset_every"], scene_scale=extent)
    densify.check(model, optimizers)
    n_views = len(views.cameras)
    previews = PreviewThrottle()
    lpips_net = load_lpips(device) if p["w_lpips"] > 0 else None
    emit.log(f"LPIPS {'on' if lpips_net is not None else 'off (lpips or its AlexNet weights not present locally)'}")
    for step in range(1, iters + 1):
        cancel.check()
        set_lr(optimizers["means"], expon_lr(step, iters, lrs["means"], lrs["means"] * 0.01))
        i = int(torch.randint(n_views, (1,), generator=generator))
        cam = views.cameras[i]
        gt = views.images[i:i + 1]
        bg = torch.rand(3, generator=generator).to(device)
        target = gt[..., :3] * gt[..., 3:] + (1 - gt[..., 3:]) * bg
        out = render(model, cam, background=bg)
        densify.before_backward(model, optimizers, step, out.info)
        loss = image_loss(out.rgb, target, p["w_ssim"]) + p["w_mask"] * F.mse_loss(out.alpha[..., 0], gt[..., 3])
        if lpips_net is not None:
            loss = loss + p["w_lpips"] * lpips_net(out.rgb.permute(0, 3, 1, 2) * 2 - 1, target.permute(0, 3, 1, 2) * 2 - 1).mean()
        loss.backward()
        step_optimizers(optimizers)
        densify.after_backward(model, optimizers, step, out.info)
        emit.progress(stage, step, iters, loss.item(), message=f"{len(model)} Gaussians")
        if previews.due(step, iters):
            emit.preview("gaussians", preview_gaussians(model), {"step": step, "count": len(model)})
    return model


def calibration_cameras(cameras: Cameras, n: int = 8) -> Cameras:
    """``n`` orbit cameras around the point the given cameras look at, at their mean distance
    and field of view, spread in azimuth and in elevation (-20..70 degrees)."""
    target = look_at_point(cameras)
    radius = float((cameras.centers - target).norm(dim=-1).mean())
    az = torch.arange(n, dtype=torch.float32) * (360.0 / n)
    el = torch.tensor([-20.0, 10.0, 40.0, 70.0]).repeat((n + 3) // 4)[:n]
    return orbit_cameras(el, az, radius, float(cameras.fovy[0]), cameras.width, cameras.height,
                         target=tuple(target.tolist()))


class ReconstructPipeline(ReconstructSpec):
    """Posed RGBA images -> Gaussians -> textured mesh (IM-3D's reconstruction stage)."""

    def run(self, request: JobRequest, emit: Emitter, cancel: CancelToken) -> Result:
        p = request.params
        device = request.device
        generator = torch.Generator().manual_seed(request.seed)
        t0 = time.monotonic()
        views = views_from_arrays(np.asarray(request.inputs["images"]), np.asarray(request.inputs["transforms"]),
                                  p["camera_angle_x"], p["resolution"], device)
        model = fit_gaussians(views, p, emit, cancel, generator)
        t_fit = time.monotonic() - t0
        cancel.check()
        job_dir = request.job_dir
        write_ply(job_dir / "gaussians.ply", model)
        # The atlas is baked from the training images themselves, weighted by their masks.
        bake = bake_from_views(views.cameras, views.images[..., :3], views.images[..., 3], p["texture_size"], cancel)
        exported = export_mesh(model, bake, resolution=p["mesh_resolution"], density_threshold=p["density_threshold"],
                               max_faces=p["max_faces"], calibration_cameras=calibration_cameras(views.cameras),
                               texture_size=p["texture_size"], unwrap_time_limit=p["unwrap_time_limit"], emit=emit,
                               cancel=cancel)
        files, arrays = write_textured_asset(job_dir, exported.uvm, exported.texture, "reconstruction")
        files["gaussians.ply"] = job_dir / "gaussians.ply"
        return Result(files=files, arrays=arrays, meta={
            "gaussians": len(model), "faces": int(len(exported.uvm.faces)), "fit_seconds": round(t_fit, 2),
            "density_level": exported.extracted.level, "silhouette_iou": exported.extracted.silhouette_iou,
            "total_seconds": round(time.monotonic() - t0, 2)})
