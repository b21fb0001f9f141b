"""The reference views of an image-conditioned job: the front image and any further images of the
same object, each with its orbit camera (``shared_protocol.views`` has the wire form and the
angle convention).

- :func:`reference_angles`: every reference's (azimuth, elevation), the front first;
- :func:`reference_views`: the views as tensors with their cameras (the images recentred at one
  scale, ``images.recenter_views``; or, with the oracle, its own renders at those cameras), the
  files ``reference.png``, ``reference_1.png``, ... written;
- :func:`condition_teacher`: a view-conditioned teacher's condition from all of them (Zero-1-to-3
  conditions each view on the nearest reference, ``guidance.zero123``).

DreamGaussian, DreamTime, DTC123 and DreamCraft3D add the reference losses at every view
(``stages.gaussians.reference_view_loss``, ``stages.geometry.refine_mesh``,
``stages.texture.optimise_texture``); IM-3D fits the given views with its generated ones.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..cameras import orbit_cameras
from ..contracts import Emitter
from ..geometry.export import texture_to_uint8
from ..images import load_rgba, recenter_views, to_white_background
from ..render.mesh import render_mesh


def reference_angles(p: dict, inputs: dict) -> list[tuple[float, float]]:
    """(azimuth, elevation) in degrees of every reference view: the front (0, ``elevation``), then
    the rows of the input ``reference_views`` (the views of ``image_1`` .. ``image_K``), azimuths
    as given (any turn)."""
    angles = [(0.0, float(p.get("elevation", 0.0)))]
    views = inputs.get("reference_views")
    if views is not None:
        angles += [(float(a), float(e)) for a, e in np.asarray(views, np.float64).reshape(-1, 2)]
    return angles


def reference_file(index: int) -> str:
    """The file a reference view is written to: ``reference.png`` (the front), ``reference_k.png``."""
    return "reference.png" if index == 0 else f"reference_{index}.png"


def reference_views(inputs: dict, p: dict, teacher, radius: float, job_dir: Path, device: str,
                    emit: Emitter | None = None, size: int | None = None) -> dict:
    """The job's reference views.

    The images (``image`` and ``image_1`` .. ``image_K``, each with its ``mask_k`` or alpha) are
    cut out and recentred at one scale (``images.recenter_views``: the front's longer side 80% of
    the frame, every further view scaled so the object's height, or for a view more than 45
    degrees above or below its width, matches the front's). With ``teacher="oracle"`` the
    references are the oracle's renders of the true object (mode 0) at the same cameras instead.

    Args:
        inputs: the job's inputs. p: its parameters (``ref_size``, ``elevation``, ``fovy``,
            ``teacher``). radius: camera distance, metres. size: the side, pixels (default
            ``ref_size``).
        emit: when given, the recentring of further views is logged.
    Returns:
        ``{"rgb": float [N, 3, S, S] over white, "alpha": float [N, 1, S, S], "camera": Cameras
        (N), "azimuths": [N], "elevations": [N] (degrees), "files": [N file names]}``, N >= 1
        (the front first); ``reference.png``, ``reference_1.png``, ... (RGBA) written to
        ``job_dir``.
    Raises:
        backend.images.MaskError: an RGB image without a mask (and no background remover).
        ValueError: an image without object pixels.
    """
    size = size or p["ref_size"]
    angles = reference_angles(p, inputs)
    azimuths = [a for a, _ in angles]
    elevations = [e for _, e in angles]
    cameras = orbit_cameras(torch.tensor(elevations), torch.tensor(azimuths), radius, p["fovy"], size, size)
    if p["teacher"] == "oracle":
        from ..guidance.oracle import render_target

        rgb_t = render_target(teacher, cameras, 1.0).to(device)
        with torch.no_grad():
            alpha_t = render_mesh(teacher.mesh, cameras.to(teacher.device)).alpha.permute(0, 3, 1, 2).to(device)
        rgbas = [np.concatenate([texture_to_uint8(rgb_t[i].permute(1, 2, 0)), texture_to_uint8(alpha_t[i, 0])[..., None]],
                                -1) for i in range(len(angles))]
    else:
        photos = [load_rgba(np.asarray(inputs["image"]), inputs.get("mask"))]
        photos += [load_rgba(np.asarray(inputs[f"image_{k}"]), inputs.get(f"mask_{k}")) for k in range(1, len(angles))]
        rgbas, reports = recenter_views(photos, elevations, size)
        if emit is not None and len(rgbas) > 1:
            emit.log("reference views recentred at the front's scale: " + "; ".join(
                f"view {k} (azimuth {azimuths[k]:g}, elevation {elevations[k]:g}) by its {r['matched']}"
                + ("" if r["fits"] else ", shrunk to fit the frame") for k, r in enumerate(reports) if k))
        pairs = [to_white_background(rgba) for rgba in rgbas]
        rgb_t = torch.from_numpy(np.stack([rgb for rgb, _ in pairs])).permute(0, 3, 1, 2).to(device)
        alpha_t = torch.from_numpy(np.stack([alpha for _, alpha in pairs]))[:, None].to(device)
    files = [reference_file(k) for k in range(len(angles))]
    for rgba, name in zip(rgbas, files):
        Image.fromarray(rgba).save(job_dir / name)
    return {"rgb": rgb_t, "alpha": alpha_t, "camera": cameras.to(device), "azimuths": azimuths,
            "elevations": elevations, "files": files}


def condition_teacher(teacher, ref: dict, radius: float) -> None:
    """Encode every reference view of ``ref`` (:func:`reference_views`) as the teacher's condition
    (Zero-1-to-3: each view to denoise then takes the nearest reference; the oracle ignores it)."""
    teacher.encode_condition(image=ref["rgb"], elevation=ref["elevations"], azimuth=ref["azimuths"], radius=radius)
