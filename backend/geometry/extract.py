"""From Gaussians to a clean triangle mesh (DreamGaussian, Tang et al. 2023, section 3.2).

:func:`extract_mesh` runs the whole chain; the steps are public for tests and benchmarks.

1. Density field d(x) = sum_i alpha_i exp(-1/2 (x - mu_i)^T Sigma_i^-1 (x - mu_i))
   (DreamGaussian eq. 4) on a regular grid (default 128^3), queried block by block; each block
   only considers the Gaussians whose 3-sigma box meets it ("local culling").
2. Marching cubes at a density threshold (scikit-image's ``marching_cubes``).
3. Clean-up with trimesh: merged vertices, no degenerate or duplicate faces, small connected
   components removed.
4. Decimation to a face budget with fast-simplification (quadric error metric).
"""
from __future__ import annotations

from typing import Any

import math
from dataclasses import dataclass

import numpy as np
import torch
import trimesh

from ..cameras import Cameras
from ..render.gaussians import GaussianModel, quat_scale_to_covar


class ExtractionError(RuntimeError):
    """No surface could be extracted (e.g. the density never reaches the threshold)."""


def density_bounds(model: GaussianModel, padding: float = 0.05, max_sigmas: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned box (lo [3], hi [3], metres) that holds every Gaussian's 3-sigma extent,
    ignoring nearly transparent ones (opacity < 0.005), plus ``padding`` relative margin."""
    with torch.no_grad():
        keep = model.opacities > 0.005
        means = model.means[keep]
        if means.shape[0] == 0:
            raise ExtractionError("every Gaussian is transparent: nothing to extract")
        ext = max_sigmas * model.scales[keep].max(-1).values[:, None]
        lo = (means - ext).min(0).values.cpu().numpy()
        hi = (means + ext).max(0).values.cpu().numpy()
    size = (hi - lo).max()
    return lo - padding * size, hi + padding * size


def density_grid(model: GaussianModel, resolution: int = 128, bounds: tuple[np.ndarray, np.ndarray] | None = None,
                 block: int = 8, chunk: int = 4096, max_sigmas: float = 3.0,
                 cancel: Any = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sample the Gaussians' density on a ``resolution``^3 grid.

    Args:
        model: the Gaussians.
        resolution: samples per axis.
        bounds: (lo, hi) of the grid in metres; default :func:`density_bounds`. The grid is
            cubic (the longest side), centred on the box.
        block: grid samples per block side (8: DreamGaussian's 16 blocks per axis at 128^3).
        chunk: Gaussians evaluated at once per block.
        max_sigmas: Gaussians only contribute within this Mahalanobis radius.
        cancel: a ``CancelToken`` checked once per row of blocks, or None.
    Returns:
        (density float32 [R, R, R] indexed [x, y, z], grid origin [3], spacing [3]).
    Raises:
        JobCancelled: ``cancel`` fired.
    """
    device = model.device
    lo, hi = bounds if bounds is not None else density_bounds(model)
    center, size = (lo + hi) / 2.0, float((hi - lo).max())
    origin = center - size / 2.0
    spacing = np.full(3, size / (resolution - 1))
    with torch.no_grad():
        keep = model.opacities > 0.005
        means, opac = model.means[keep], model.opacities[keep]
        covar = quat_scale_to_covar(model.quats[keep], model.scales[keep])
        precision = torch.linalg.inv(covar.double()).float()
        radius = max_sigmas * model.scales[keep].max(-1).values
        axis = [torch.arange(resolution, device=device, dtype=torch.float32) * float(spacing[i]) + float(origin[i]) for i in range(3)]
        density = torch.zeros(resolution, resolution, resolution, device=device)
        for bx in range(0, resolution, block):
            for by in range(0, resolution, block):
                if cancel is not None:
                    cancel.check()
                for bz in range(0, resolution, block):
                    xs, ys, zs = axis[0][bx:bx + block], axis[1][by:by + block], axis[2][bz:bz + block]
                    blo = torch.stack([xs[0], ys[0], zs[0]])
                    bhi = torch.stack([xs[-1], ys[-1], zs[-1]])
                    near = ((means + radius[:, None] >= blo) & (means - radius[:, None] <= bhi)).all(-1)
                    idx = torch.nonzero(near).squeeze(1)
                    if idx.numel() == 0:
                        continue
                    pts = torch.stack(torch.meshgrid(xs, ys, zs, indexing="ij"), -1).reshape(-1, 3)
                    acc = torch.zeros(pts.shape[0], device=device)
                    for start in range(0, idx.numel(), chunk):
                        sel = idx[start:start + chunk]
                        d = pts[:, None, :] - means[sel][None]  # [P, K, 3]
                        P = precision[sel]  # symmetric: d^T P d = sum_ij P_ij d_i d_j
                        dx, dy, dz = d.unbind(-1)
                        maha = (P[:, 0, 0] * dx * dx + P[:, 1, 1] * dy * dy + P[:, 2, 2] * dz * dz
                                + 2 * (P[:, 0, 1] * dx * dy + P[:, 0, 2] * dx * dz + P[:, 1, 2] * dy * dz))
                        acc += (opac[sel][None] * torch.exp(-0.5 * maha.clamp_max(max_sigmas**2 + 1))
                                * (maha <= max_sigmas**2)).sum(-1)
                    density[bx:bx + block, by:by + block, bz:bz + block] = acc.reshape(len(xs), len(ys), len(zs))
    return density.cpu().numpy(), origin.astype(np.float32), spacing.astype(np.float32)


def marching_cubes(density: np.ndarray, threshold: float, origin: np.ndarray, spacing: np.ndarray) -> trimesh.Trimesh:
    """Iso-surface of ``density`` at ``threshold`` (scikit-image), faces oriented outwards
    (towards lower density), in world coordinates.

    Raises:
        ExtractionError: the density never crosses the threshold.
    """
    from skimage.measure import marching_cubes as sk_marching_cubes

    if not (density.min() < threshold < density.max()):
        raise ExtractionError(
            f"the density (range {density.min():.3g}..{density.max():.3g}) never crosses the threshold {threshold:g}: "
            "the Gaussians are too sparse or transparent; train longer or lower the threshold"
        )
    padded = np.pad(density, 1, constant_values=0.0)  # closes surfaces cut by the grid border
    verts, faces, _, _ = sk_marching_cubes(padded, level=threshold, spacing=tuple(float(s) for s in spacing),
                                           gradient_direction="descent")
    verts = verts - spacing + origin  # undo the padding
    # scikit-image orders corners clockwise seen from the low side; flip to counter-clockwise outward.
    return trimesh.Trimesh(verts.astype(np.float32), faces[:, ::-1].astype(np.int64), process=True)


def clean_mesh(mesh: trimesh.Trimesh, min_component_fraction: float = 0.02) -> trimesh.Trimesh:
    """Merge duplicate vertices, drop degenerate and duplicate faces and unreferenced
    vertices, and remove connected components with fewer than ``min_component_fraction`` of
    the faces (floaters)."""
    mesh = mesh.copy()
    mesh.merge_vertices()
    mesh.update_faces(mesh.nondegenerate_faces())
    mesh.update_faces(mesh.unique_faces())
    mesh.remove_unreferenced_vertices()
    if len(mesh.faces) == 0:
        raise ExtractionError("the extracted surface has no faces left after clean-up")
    parts = mesh.split(only_watertight=False)
    if len(parts) > 1:
        total = sum(len(p.faces) for p in parts)
        kept = [p for p in parts if len(p.faces) >= min_component_fraction * total]
        mesh = trimesh.util.concatenate(kept)
    return mesh


def decimate(mesh: trimesh.Trimesh, max_faces: int) -> trimesh.Trimesh:
    """Simplify to at most ``max_faces`` faces with fast-simplification's quadric decimation;
    meshes already within budget are returned unchanged."""
    if len(mesh.faces) <= max_faces:
        return mesh
    import fast_simplification

    reduction = 1.0 - max_faces / len(mesh.faces)
    verts, faces = fast_simplification.simplify(np.asarray(mesh.vertices, np.float32), np.asarray(mesh.faces, np.int64),
                                                target_reduction=reduction)
    out = trimesh.Trimesh(verts, faces, process=True)
    out.update_faces(out.nondegenerate_faces())
    out.remove_unreferenced_vertices()
    return out


@dataclass
class ExtractedMesh:
    """The result of :func:`extract_mesh`: the mesh (decimated to the face budget), the iso-level
    used, the silhouette IoU of the mesh against the Gaussians' renders (None when not
    calibrated), and the full-resolution surface before decimation (the same object as ``mesh``
    when no decimation was needed), from which a normal map is baked."""

    mesh: trimesh.Trimesh
    level: float
    silhouette_iou: float | None
    full: trimesh.Trimesh | None = None


def extract_mesh(model: GaussianModel, resolution: int = 128, threshold: float = 1.0, max_faces: int = 50_000,
                 min_component_fraction: float = 0.02, calibration_cameras: Cameras | None = None,
                 smooth_voxels: float = 0.75, cancel: Any = None,
                 bounds: tuple[np.ndarray, np.ndarray] | None = None) -> ExtractedMesh:
    """Gaussians -> density grid -> marching cubes -> clean-up -> decimation (DreamGaussian's
    mesh extraction; ``threshold`` is its ``density_thresh``, default 1).

    Two additions make it robust for fitted Gaussians, which often form a shell around an
    empty inside: the inside is filled (scipy ``binary_fill_holes``), so a shell yields one
    outward surface and not an inner one too; and with ``calibration_cameras`` the iso-level
    is chosen among ``threshold`` x 2^(k/2), k = -4..4, as the one whose mesh silhouettes best
    match (IoU) the Gaussians' own rendered silhouettes (alpha > 0.5) from those cameras. The
    density is smoothed by a Gaussian filter of ``smooth_voxels`` voxels against voxel-scale bumps.
    ``cancel`` (a ``CancelToken``) is checked between the steps and inside the density grid.
    ``bounds`` (lo [3], hi [3], metres): where the object can be; the grid spans every
    Gaussian's 3-sigma box (:func:`density_bounds`) clipped to it, so Gaussians that strayed
    outside add nothing and the grid's resolution is spent on the object.

    Raises:
        ExtractionError: no surface at any level tried.
        JobCancelled: ``cancel`` fired.
    """
    from scipy import ndimage

    from ..render.gaussians import render
    from ..render.mesh import rasterize

    def check() -> None:
        if cancel is not None:
            cancel.check()

    if bounds is not None:
        lo, hi = density_bounds(model)
        bounds = (np.maximum(lo, bounds[0]), np.minimum(hi, bounds[1]))
    density, origin, spacing = density_grid(model, resolution, bounds, cancel=cancel)
    check()
    if smooth_voxels > 0:
        density = ndimage.gaussian_filter(density, sigma=smooth_voxels)

    def surface(level: float) -> trimesh.Trimesh:
        check()
        occupied = density > level
        filled = density.copy()
        filled[ndimage.binary_fill_holes(occupied) & ~occupied] = max(float(density.max()), 2.0 * level)
        return clean_mesh(marching_cubes(filled, level, origin, spacing), min_component_fraction)

    if calibration_cameras is None:
        mesh = surface(threshold)
        check()
        return ExtractedMesh(decimate(mesh, max_faces), threshold, None, mesh)
    with torch.no_grad():
        target = render(model, calibration_cameras, background=0.0).alpha[..., 0].cpu() > 0.5
    best: tuple[trimesh.Trimesh, float, float] | None = None
    for level in [threshold * 2.0 ** (k / 2) for k in range(-4, 5)]:
        if not density.min() < level < density.max():
            continue
        mesh = surface(level)
        sil = rasterize(torch.as_tensor(np.asarray(mesh.vertices), dtype=torch.float32),
                        torch.as_tensor(np.asarray(mesh.faces), dtype=torch.long), calibration_cameras.to("cpu")).mask
        iou = float((sil & target).sum()) / max(float((sil | target).sum()), 1.0)
        if best is None or iou > best[2]:
            best = (mesh, level, iou)
    if best is None:
        raise ExtractionError(
            f"the density (range {density.min():.3g}..{density.max():.3g}) crosses none of the levels around {threshold:g}"
        )
    check()
    return ExtractedMesh(decimate(best[0], max_faces), best[1], best[2], best[0])


def ellipsoid_radii(sigmas: np.ndarray, opacity: float, threshold: float) -> np.ndarray:
    """Radii of the level set {d(x) = threshold} of one Gaussian with standard deviations
    ``sigmas``: sigma_i sqrt(2 ln(opacity / threshold))."""
    return np.asarray(sigmas) * math.sqrt(2.0 * math.log(opacity / threshold))
