"""Multi-view reconstruction: posed RGBA images -> Gaussians -> textured mesh.

This is the reconstruction half of IM-3D (Melas-Kyriazi et al. 2024, section 3.2: fitting 3D
Gaussians to the generated views with image-level losses, L1 + MS-SSIM (+ LPIPS), and a mask
loss), usable on its own for NeRF-synthetic datasets. Steps:

1. Gaussians are initialised from the visual hull of the masks (points inside every
   silhouette), coloured by the images.
2. Adam on every Gaussian parameter (one optimiser each, gsplat's layout) against one random
   training view per step, composited over a random background colour; loss ``"l1_ssim"``:
   (1 - w_ssim) L1 + w_ssim (1 - MS-SSIM) + w_mask MSE(alpha, mask) (+ w_lpips LPIPS when its
   weights are present), or IM-3D's ``"im3d"`` (``stages.reconstruction.robust_image_loss``).
   MS-SSIM from pytorch-msssim. The fitting is ``stages.reconstruction``'s, shared with IM-3D.
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

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..cameras import Cameras, blender_to_gltf, fovx_to_fovy, load_transforms_json
from ..geometry.export import write_ply
from ..stages.asset_output import write_asset
from ..stages.mesh_export import bake_from_views, export_mesh
from ..stages.reconstruction import Views, calibration_cameras, fit_gaussians
from ..contracts import CancelToken, Emitter, JobRequest, ParamError, Result
from .specs.reconstruct import ReconstructSpec



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


class ReconstructPipeline(ReconstructSpec):
    """Posed RGBA images -> Gaussians -> textured mesh (IM-3D's reconstruction stage)."""

    def run(self, request: JobRequest, emit: Emitter, cancel: CancelToken) -> Result:
        p = request.params
        device = request.device
        generator = torch.Generator().manual_seed(request.seed)
        t0 = time.monotonic()
        views = views_from_arrays(np.asarray(request.inputs["images"]), np.asarray(request.inputs["transforms"]),
                                  p["camera_angle_x"], p["resolution"], device)
        model = fit_gaussians(views, p, emit, cancel, generator, models_dir=request.models_dir)
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
        files, arrays, output = write_asset(job_dir, exported.uvm, exported.texture, "reconstruction", p, emit, cancel,
                                            full=exported.extracted.full, request=request)
        files["gaussians.ply"] = job_dir / "gaussians.ply"
        return Result(files=files, arrays=arrays, meta={
            "gaussians": len(model), "faces": int(len(exported.uvm.faces)), "fit_seconds": round(t_fit, 2),
            "density_level": exported.extracted.level, "silhouette_iou": exported.extracted.silhouette_iou,
            "total_seconds": round(time.monotonic() - t0, 2), "output": output})
