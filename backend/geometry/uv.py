"""UV atlases (xatlas) and texture baking by back-projection.

Unwrapping runs xatlas in a child process under a time limit (xatlas can run for minutes on
non-manifold meshes; decimate first). Baking is texel-driven: every texel of the atlas is
located on the surface (UV-space rasterisation), projected into each view, tested for
visibility against the view's depth map, and receives the view's colour weighted by the
cosine between the surface normal and the direction to the camera (DreamGaussian, Tang et al.
2023, section 3.2, "texture back-projection"; the cosine weighting follows its public code).
Texels that no view sees are filled from their nearest baked texel (inpainting), and the
atlas is padded past chart borders the same way so bilinear filtering and mip-maps do not
bleed the background into the surface.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from ..cameras import Cameras
from ..render.mesh import TexturedMesh, interpolate, rasterize, rasterize_uv


class UnwrapError(RuntimeError):
    """xatlas failed or ran past its time limit."""


@dataclass
class UVMesh:
    """A mesh split along UV seams, as glTF needs it.

    Attributes:
        vertices: float32 [V', 3] (original vertices duplicated along seams).
        faces: int64 [F, 3] (same face order as the input mesh).
        uv: float32 [V', 2] per-vertex UVs, origin bottom-left.
        vmapping: int64 [V'] index of each vertex in the input mesh.
    """

    vertices: np.ndarray
    faces: np.ndarray
    uv: np.ndarray
    vmapping: np.ndarray

    @property
    def corner_uv(self) -> np.ndarray:
        """Per-corner UVs float32 [F, 3, 2] (for rasterisation in UV space)."""
        return self.uv[self.faces]


def unwrap(vertices: np.ndarray, faces: np.ndarray, resolution: int = 1024, padding: int = 4,
           time_limit: float = 120.0, max_faces: int = 300_000, cancel: Any = None) -> UVMesh:
    """UV-unwrap a triangle mesh with xatlas, in a child process killed after ``time_limit`` s.

    Args:
        vertices: float [V, 3]; faces: int [F, 3].
        resolution: the texture size the charts are packed for (texels).
        padding: texels between charts.
        time_limit: seconds before xatlas is stopped.
        max_faces: larger meshes are refused (decimate first).
        cancel: a ``CancelToken``; xatlas's process is killed within 0.1 s of it firing.
    Returns:
        :class:`UVMesh` whose faces keep the input order (xatlas keeps it; checked).
    Raises:
        JobCancelled: ``cancel`` fired.
        UnwrapError: too many faces, a timeout (the message says to decimate or clean the
            mesh), or an xatlas failure.
    """
    faces = np.asarray(faces)
    if len(faces) > max_faces:
        raise UnwrapError(f"the mesh has {len(faces)} faces; UV unwrapping takes at most {max_faces}. Decimate it first.")
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "in.npz"), os.path.join(tmp, "out.npz")
        np.savez(src, vertices=np.asarray(vertices, np.float32), faces=faces.astype(np.uint32))
        proc = subprocess.Popen(
            [sys.executable, "-m", "backend.geometry.xatlas_worker", src, dst, str(resolution), str(padding)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=str(Path(__file__).resolve().parents[2]),
        )
        end = time.monotonic() + time_limit
        try:
            while proc.poll() is None:
                if cancel is not None and cancel.cancelled:
                    proc.kill()
                    cancel.check()
                if time.monotonic() > end:
                    proc.kill()
                    raise UnwrapError(
                        f"UV unwrapping of {len(faces)} faces did not finish within {time_limit:g} s; the mesh is probably "
                        "non-manifold or too dense. Decimate or clean it first, or raise the time limit."
                    )
                time.sleep(0.05)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            stderr = proc.stderr.read() if proc.stderr else ""
            if proc.stderr:
                proc.stderr.close()
        if proc.returncode != 0:
            raise UnwrapError(f"xatlas failed (exit {proc.returncode}): {stderr.strip()[-500:]}")
        with np.load(dst, allow_pickle=False) as out:
            vmapping, indices, uvs = out["vmapping"].astype(np.int64), out["indices"].astype(np.int64), out["uvs"]
    if indices.shape != faces.shape or not np.array_equal(vmapping[indices], faces):
        raise UnwrapError("xatlas changed the face order; cannot map its UVs back to the mesh")
    return UVMesh(np.asarray(vertices, np.float32)[vmapping], indices, uvs.astype(np.float32), vmapping)


def fill_empty_texels(texture: np.ndarray, filled: np.ndarray) -> np.ndarray:
    """Give every texel where ``filled`` is False the colour of its nearest filled texel
    (scipy's exact Euclidean distance transform). ``texture`` [H, W, C]; ``filled`` bool [H, W]."""
    if filled.all() or not filled.any():
        return texture
    _, (iy, ix) = ndimage.distance_transform_edt(~filled, return_indices=True)
    return texture[iy, ix]


def texel_view_links(pos: torch.Tensor, normal: torch.Tensor, cameras: Cameras, c: int, depth_map: torch.Tensor,
                     min_cos: float = 0.1, depth_tolerance: float = 0.01
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where texels land in view ``c`` and whether it sees them.

    Args:
        pos, normal: float [T, 3], the texels' surface points and unit normals (world).
        cameras: the views; ``c`` the one asked about.
        depth_map: float [H, W], view ``c``'s rasterised camera depth (0 where empty).
        min_cos: the view sees a texel only above this cosine between normal and direction to
            the camera (grazing views are ignored).
        depth_tolerance: relative depth slack of the visibility test.
    Returns:
        (ok bool [T]: inside the image, unoccluded and above ``min_cos``; grid float [T, 2]: the
        texels' pixel positions as ``grid_sample`` coordinates (x right, y down, in [-1, 1],
        align_corners=False), always finite; cos float [T]).
    """
    H, W = depth_map.shape
    cam = cameras[c]  # this view's matrices only (they are derived from c2w on every access)
    w2c, K, centre = cam.viewmats[0], cam.Ks[0], cam.centers[0]
    pc = pos @ w2c[:3, :3].T + w2c[:3, 3]
    z = pc[:, 2]
    x = K[0, 0] * pc[:, 0] / z.clamp_min(1e-6) + K[0, 2]
    y = K[1, 1] * pc[:, 1] / z.clamp_min(1e-6) + K[1, 2]
    inside = (z > 1e-4) & (x >= 0) & (x < W) & (y >= 0) & (y < H)
    d = depth_map[y.long().clamp(0, H - 1), x.long().clamp(0, W - 1)]
    visible = inside & (d > 0) & (z <= d * (1.0 + depth_tolerance) + 1e-4)
    cos = (normal * F.normalize(centre[None] - pos, dim=-1)).sum(-1)
    # Finite by construction; nan_to_num keeps a non-finite coordinate from ever reaching
    # grid_sample, whose CPU backward crashes on NaN (pytorch issue 24823).
    grid = torch.nan_to_num(torch.stack([x / W * 2 - 1, y / H * 2 - 1], -1), 0.0, 1.0, -1.0)
    return visible & (cos > min_cos), grid, cos


#: Views whose depth maps :func:`bake_texture` rasterises at once.
_DEPTH_CHUNK = 8


def bake_texture(mesh: UVMesh, cameras: Cameras, images: torch.Tensor, weights: torch.Tensor | None = None,
                 size: int = 1024, min_cos: float = 0.1, cos_power: float = 2.0,
                 depth_tolerance: float = 0.01, cancel: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Back-project C views onto the UV atlas.

    Args:
        mesh: the unwrapped mesh.
        cameras: C cameras of the views.
        images: float [C, H, W, 3] in [0, 1] (colour without background, i.e. unpremultiplied).
        weights: float [C, H, W] confidence per pixel (e.g. the Gaussian render's alpha), or None.
        size: texture side in texels.
        min_cos: views seeing the surface at a grazing angle (cosine below this) are ignored.
        cos_power: weight = cos^cos_power.
        depth_tolerance: relative depth slack of the visibility test.
        cancel: a ``CancelToken`` checked once per view, or None.
    Returns:
        (texture float32 [size, size, 3] row 0 at the top, texels inpainted and padded;
         seen bool [size, size]: texels that received colour from a view).
    """
    device = images.device
    verts = torch.as_tensor(mesh.vertices, dtype=torch.float32, device=device)
    faces = torch.as_tensor(mesh.faces, dtype=torch.long, device=device)
    corner_uv = torch.as_tensor(mesh.corner_uv, dtype=torch.float32, device=device)
    uv_rast = rasterize_uv(corner_uv, size, cancel=cancel)
    covered = uv_rast.mask[0]
    pos = interpolate(verts, faces, uv_rast)[0][covered]  # [T, 3]
    tm = TexturedMesh(verts, faces)
    normal = tm.face_normals()[uv_rast.tri_id[0][covered]]
    acc = torch.zeros(pos.shape[0], 3, device=device)
    wsum = torch.zeros(pos.shape[0], device=device)
    C, H, W = images.shape[0], images.shape[1], images.shape[2]
    cams = cameras.to(device)
    depth_maps = None
    for c in range(C):
        if cancel is not None:
            cancel.check()
        if c % _DEPTH_CHUNK == 0:  # depth maps a few views at a time, so that a cancel lands between them
            depth_maps = rasterize(verts, faces, cams[c:c + _DEPTH_CHUNK]).depth  # [<=chunk, H, W]
        ok, grid, cos = texel_view_links(pos, normal, cams, c, depth_maps[c % _DEPTH_CHUNK], min_cos, depth_tolerance)
        if not ok.any():
            continue
        grid = grid[ok].reshape(1, -1, 1, 2)
        # Sample premultiplied colour and its weight together, so that pixels of zero weight
        # (e.g. the background next to a silhouette) do not bleed into the texture.
        pw = weights[c] if weights is not None else torch.ones(H, W, device=device)
        stack = torch.cat([images[c] * pw[..., None], pw[..., None]], -1).permute(2, 0, 1)[None]
        sampled = F.grid_sample(stack, grid, mode="bilinear", align_corners=False, padding_mode="border")[0, :, :, 0].T
        conf = sampled[:, 3]
        color = sampled[:, :3] / conf.clamp_min(1e-6)[:, None]
        w = cos[ok] ** cos_power * conf
        acc[ok] += w[:, None] * color
        wsum[ok] += w
    texture = np.zeros((size, size, 3), np.float32)
    seen = np.zeros((size, size), bool)
    cov_np = covered.cpu().numpy()
    has = (wsum > 1e-6).cpu().numpy()
    vals = (acc / wsum.clamp_min(1e-6)[:, None]).cpu().numpy()
    ys, xs = np.nonzero(cov_np)
    texture[ys[has], xs[has]] = vals[has]
    seen[ys[has], xs[has]] = True
    texture = fill_empty_texels(texture, seen)
    return np.clip(texture, 0.0, 1.0), seen
