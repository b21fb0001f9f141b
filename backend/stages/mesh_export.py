"""Mesh export: Gaussians -> surface -> UV atlas -> baked texture (``stages.asset_output``
then places it and writes the GLB and the arrays a client receives).

Steps (DreamGaussian section 3.2, the reconstruction stage of IM-3D): density-field extraction
with marching cubes, clean-up and decimation (``geometry.extract.extract_mesh``), xatlas
unwrapping (``geometry.uv.unwrap``), then baking colour from views onto the atlas
(``geometry.uv.bake_texture``). Where the colour comes from is the method's choice: renders of
the Gaussians (:func:`render_bake_views`) or the training images themselves. Progress is
reported as stage ``mesh``, steps 0-3; previews: the mesh, then the baked texture. Every step
takes the job's cancel token.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..cameras import Cameras, orbit_cameras
from ..geometry.export import texture_to_uint8
from ..geometry.extract import ExtractedMesh, extract_mesh
from ..geometry.uv import UVMesh, bake_texture, unwrap
from ..contracts import CancelToken, Emitter
from ..render.gaussians import GaussianModel, render

#: ``bake(uvm) -> texture float32 [S, S, 3]`` in [0, 1]: the method's source of colour.
Baker = Callable[[UVMesh], np.ndarray]


@dataclass
class MeshExport:
    """The unwrapped mesh and its baked texture.

    Attributes:
        uvm: vertices float32 [V, 3] (split at UV seams), faces int64 [F, 3], uv float32 [V, 2].
        texture: float32 [S, S, 3] in [0, 1], row 0 at the top.
        extracted: the extraction's mesh, iso-level and silhouette IoU.
    """

    uvm: UVMesh
    texture: np.ndarray
    extracted: ExtractedMesh


def orbit_bake_cameras(radius: float, fovy: float, size: int) -> Cameras:
    """DreamGaussian's 26 baking views (``main.py`` ``save_model``): 8 azimuths x elevations
    {-45, 0, 45}, plus top and bottom."""
    el = [-45.0] * 8 + [0.0] * 8 + [45.0] * 8 + [89.9, -89.9]
    az = [i * 45.0 for i in range(8)] * 3 + [0.0, 0.0]
    return orbit_cameras(el, az, radius, fovy, size, size)


def render_bake_views(model: GaussianModel, cameras: Cameras, cancel: CancelToken) -> tuple[torch.Tensor, torch.Tensor]:
    """Render the Gaussians from each camera (one at a time: a cancel lands between views) over
    black. Returns (colour float [C, H, W, 3] un-premultiplied in [0, 1], alpha float [C, H, W])."""
    rgb, alpha = [], []
    with torch.no_grad():
        for i in range(len(cameras)):
            cancel.check()
            view = render(model, cameras[i:i + 1], background=0.0)
            rgb.append(view.rgb)
            alpha.append(view.alpha)
    rgb_t, alpha_t = torch.cat(rgb), torch.cat(alpha)
    return (rgb_t / alpha_t.clamp_min(1e-6)).clamp(0, 1), alpha_t[..., 0]


def export_mesh(model: GaussianModel, bake: Baker, *, resolution: int, density_threshold: float, max_faces: int,
                calibration_cameras: Cameras | None, texture_size: int, unwrap_time_limit: float, emit: Emitter,
                cancel: CancelToken, bake_message: str = "baking the texture", bounds=None) -> MeshExport:
    """Extract, unwrap and bake.

    Args:
        model: the optimised Gaussians.
        bake: the method's colour source for the atlas.
        resolution: density-grid samples per axis; density_threshold: iso-level (calibrated
            against the Gaussians' silhouettes from ``calibration_cameras`` when given).
        max_faces: decimation budget.
        texture_size: atlas side, texels; unwrap_time_limit: seconds for xatlas.
        bounds: (lo [3], hi [3]) metres where the object can be (``geometry.extract.extract_mesh``).
    Raises:
        ExtractionError, UnwrapError: no surface, or unwrapping failed or timed out.
        JobCancelled: the cancel token fired.
    """
    emit.progress("mesh", 0, 3, message="extracting the surface")
    extracted = extract_mesh(model, resolution, density_threshold, max_faces, calibration_cameras=calibration_cameras,
                             cancel=cancel, bounds=bounds)
    mesh = extracted.mesh
    emit.preview("mesh", {"vertices": np.asarray(mesh.vertices, np.float32), "faces": np.asarray(mesh.faces, np.int32)},
                 {"faces": len(mesh.faces)})
    cancel.check()
    emit.progress("mesh", 1, 3, message="UV unwrapping")
    uvm = unwrap(mesh.vertices, mesh.faces, resolution=texture_size, time_limit=unwrap_time_limit, cancel=cancel)
    cancel.check()
    emit.progress("mesh", 2, 3, message=bake_message)
    texture = bake(uvm)
    emit.preview("texture", {"rgba": rgba_preview(texture)}, {"step": 0})
    emit.progress("mesh", 3, 3)
    return MeshExport(uvm, texture, extracted)


def bake_from_views(cameras: Cameras, colour: torch.Tensor, weights: torch.Tensor, size: int,
                    cancel: CancelToken) -> Baker:
    """A :data:`Baker` that back-projects the given views (colour float [C, H, W, 3], weights
    float [C, H, W]) with ``geometry.uv.bake_texture``."""
    return lambda uvm: bake_texture(uvm, cameras, colour, weights, size=size, cancel=cancel)[0]


def rgba_preview(texture: np.ndarray | torch.Tensor) -> np.ndarray:
    """float [H, W, 3] in [0, 1] -> uint8 [H, W, 4] opaque, for ``texture`` previews."""
    tex8 = texture_to_uint8(texture)
    return np.concatenate([tex8, np.full(tex8.shape[:2] + (1,), 255, np.uint8)], -1)
