"""Mesh refinement by score distillation: per-vertex offsets along the normals and the UV
texture of an extracted mesh optimised together at high resolution, regularised by normal
consistency and a Laplacian term. DTC123's fine stage (Yi et al. 2024, section 3.2) refines a
DMTet grid; this stage is the project's stand-in on the already extracted mesh
(``docs/methods.md``), the pattern of Magic3D's and Fantasia3D's mesh stages (threestudio
``systems/magic3d.py`` with ``geometry.fix_geometry: false``;
``models/geometry/tetrahedra_sdf_grid.py`` regularises with ``normal_consistency`` and
``laplacian_smoothness`` the same way).

Runs on both render paths: nvdiffrast on CUDA, the torch rasteriser elsewhere, each giving
vertex gradients inside faces (barycentrics) and at silhouettes (``render.mesh.antialias``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..cameras import Cameras
from ..contracts import CancelToken, Emitter
from ..render.mesh import TexturedMesh, render_mesh
from .gaussians import views_depth_loss
from .mesh_export import rgba_preview
from .progress import PreviewThrottle


@dataclass
class MeshTopology:
    """What the regularisers need of a fixed triangulation, computed once by trimesh.

    Attributes:
        edges: int64 [E, 2], each undirected edge once.
        face_pairs: int64 [A, 2], faces sharing an edge (``trimesh.Trimesh.face_adjacency``).
        degree: float32 [V], each vertex's number of neighbours (at least 1).
    """

    edges: torch.Tensor
    face_pairs: torch.Tensor
    degree: torch.Tensor

    @classmethod
    def of(cls, vertices: np.ndarray | torch.Tensor, faces: np.ndarray | torch.Tensor) -> "MeshTopology":
        """The topology of a triangle mesh (vertices [V, 3], faces [F, 3]) as given (weld UV
        seams first with :func:`weld`)."""
        import trimesh

        v = np.asarray(torch.as_tensor(vertices).detach().cpu(), np.float64)
        f = np.asarray(torch.as_tensor(faces).detach().cpu(), np.int64)
        mesh = trimesh.Trimesh(v, f, process=False)
        edges = torch.from_numpy(np.array(mesh.edges_unique, np.int64))
        degree = torch.bincount(edges.reshape(-1), minlength=len(v)).clamp_min(1).float()
        return cls(edges, torch.from_numpy(np.array(mesh.face_adjacency, np.int64)), degree)

    def to(self, device) -> "MeshTopology":
        return MeshTopology(self.edges.to(device), self.face_pairs.to(device), self.degree.to(device))


def weld(vertices: torch.Tensor, faces: torch.Tensor, decimals: int = 6) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Merge the copies a UV atlas makes of a vertex at its seams (same position to ``decimals``
    places of a metre), so that offsets move both copies together and the regularisers see
    across seams.

    Returns:
        (welded vertices float [W, 3], welded faces int64 [F, 3], index int64 [V]: the welded
        vertex of each original one, so ``welded[index]`` gives back [V, 3]).
    """
    key = np.round(vertices.detach().cpu().numpy().astype(np.float64), decimals)
    _, first, inverse = np.unique(key, axis=0, return_index=True, return_inverse=True)
    index = torch.from_numpy(inverse.reshape(-1).astype(np.int64)).to(vertices.device)
    welded = vertices.detach()[torch.from_numpy(first).to(vertices.device)]
    return welded, index[faces.long()], index


def vertex_normals(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Area-weighted unit vertex normals float [V, 3] of ``vertices`` [V, 3] and
    counter-clockwise ``faces`` [F, 3] (the sum of the incident faces' cross products; a vertex
    of no face gets 0)."""
    v = vertices.detach()
    f = faces.long()
    cross = torch.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]], dim=-1)
    total = torch.zeros_like(v).index_add(0, f.reshape(-1), cross.repeat_interleave(3, dim=0))
    return F.normalize(total, dim=-1)


def laplacian_loss(vertices: torch.Tensor, topology: MeshTopology) -> torch.Tensor:
    """Mean squared uniform Laplacian, mean_i ||v_i - mean_{j ~ i} v_j||^2 (Sorkine 2005's
    uniform weights; threestudio's ``laplacian_smoothness``). ``vertices`` float [V, 3];
    returns a scalar in m^2."""
    a, b = topology.edges[:, 0], topology.edges[:, 1]
    total = torch.zeros_like(vertices).index_add(0, a, vertices[b]).index_add(0, b, vertices[a])
    delta = vertices - total / topology.degree[:, None]
    return (delta ** 2).sum(-1).mean()


def normal_consistency_loss(vertices: torch.Tensor, faces: torch.Tensor, topology: MeshTopology) -> torch.Tensor:
    """mean over faces sharing an edge of 1 - cos(n_i, n_j), in [0, 2] (threestudio's and
    PyTorch3D's ``mesh_normal_consistency``). ``vertices`` float [V, 3], ``faces`` int [F, 3]."""
    v = vertices[faces.long()]
    n = F.normalize(torch.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0], dim=-1), dim=-1)
    pairs = topology.face_pairs
    if pairs.numel() == 0:
        return torch.zeros((), device=vertices.device)
    return (1.0 - (n[pairs[:, 0]] * n[pairs[:, 1]]).sum(-1)).mean()


def refine_mesh(mesh: TexturedMesh, sample_cameras: Callable[[int], Cameras], iters: int, *,
                sds: Callable[[torch.Tensor, Cameras, int], torch.Tensor] | None, ref: dict | None,
                lr_offsets: float, lr_texture: float, lambda_rgb: float, lambda_mask: float,
                lambda_normal: float, lambda_laplacian: float, lambda_depth: float = 0.0, emit: Emitter,
                cancel: CancelToken,
                generator: torch.Generator, stage: str = "fine", backend: str = "auto",
                on_step: Callable[[int, dict], None] | None = None,
                note: Callable[[int], str] | None = None) -> TexturedMesh:
    """Optimise per-vertex offsets and the texture of ``mesh``.

    Each step renders ``sample_cameras(step)`` over white with silhouette antialiasing, adds
    ``sds(images [B, 3, H, W], cameras, step)`` (the caller's teachers, weights and timestep),
    the reference view's RGB MSE (where the reference is the object) and mask MSE (and
    ``lambda_depth`` x the depth correlation when ``ref`` holds a ``"disparity"``), and
    ``lambda_normal`` x normal consistency of the moved mesh + ``lambda_laplacian`` x Laplacian
    of the offsets (a smooth displacement: the extracted shape itself is not flattened). The
    offsets are displacements along the extracted mesh's vertex normals (:func:`vertex_normals`),
    one height per welded vertex (:func:`weld`): tangential motion changes no shape, it only
    slides the baked texture over the surface and folds triangles. Adam steps the heights at
    ``lr_offsets``
    (metres) and the texture's logits at ``lr_texture`` (the logit parametrisation of
    DreamGaussian's stage 2).

    Args:
        mesh: vertices float [V, 3], faces [F, 3], uv [F, 3, 2] and texture float [Ht, Wt, 3]
            in [0, 1] (all on one device).
        sample_cameras: ``callable(step) -> Cameras`` (1-based step).
        lr_offsets: the offsets' learning rate, metres; 0 freezes the geometry (a texture-only
            refinement, e.g. DreamCraft3D's texture boosting).
        iters: optimisation steps (0: ``mesh`` is returned).
        sds: the distillation term, or None (reference and regularisers only).
        ref: ``{"rgb": [N, 3, h, w], "alpha": [N, 1, h, w], "camera": Cameras}`` (N reference views,
            each term their mean as in ``stages.gaussians.reference_view_loss``) (optionally
            ``"disparity": [N, 1, h, w]``) or None.
        on_step: called with (step, {"loss": float, ...}) after each step (traces).
        note: ``callable(step) -> str`` appended to each progress message (e.g. the teachers).
    Returns:
        A new :class:`TexturedMesh` with the moved vertices and the optimised texture
        (detached).
    Raises:
        ValueError: a mesh without UVs or texture.
    """
    if mesh.uv is None or mesh.texture is None:
        raise ValueError("refine_mesh needs a UV-mapped, textured mesh (unwrap and bake it first)")
    if iters == 0:
        return mesh
    device = mesh.vertices.device
    base, welded_faces, index = weld(mesh.vertices, mesh.faces)
    topology = MeshTopology.of(base, welded_faces).to(device)
    normals = vertex_normals(base, welded_faces)
    # lr_offsets 0 freezes the geometry (texture only: no vertex gradients to compute).
    heights = torch.nn.Parameter(torch.zeros(len(base), 1, device=device), requires_grad=lr_offsets > 0)
    raw = torch.nn.Parameter(torch.logit(mesh.texture.detach().clamp(1e-3, 1 - 1e-3)))
    groups = [{"params": [raw], "lr": lr_texture}] + ([{"params": [heights], "lr": lr_offsets}] if lr_offsets > 0 else [])
    opt = torch.optim.Adam(groups)
    previews = PreviewThrottle(first=False)
    for step in range(1, iters + 1):
        cancel.check()
        offsets = heights * normals
        moved = base + offsets
        current = TexturedMesh(moved[index], mesh.faces, mesh.uv, torch.sigmoid(raw))
        cams = sample_cameras(step)
        terms: dict[str, torch.Tensor] = {}
        if sds is not None:
            out = render_mesh(current, cams, background=1.0, backend=backend, antialiased=True)
            terms["sds"] = sds(out.rgb.permute(0, 3, 1, 2), cams, step)
        if ref is not None:
            r = render_mesh(current, ref["camera"], background=1.0, backend=backend, antialiased=True)
            obj = (ref["alpha"] > 0.5).float()
            terms["rgb"] = lambda_rgb * F.mse_loss(r.rgb.permute(0, 3, 1, 2) * obj, ref["rgb"] * obj)
            terms["mask"] = lambda_mask * F.mse_loss(r.alpha.permute(0, 3, 1, 2), ref["alpha"])
            if lambda_depth > 0 and "disparity" in ref:
                terms["depth"] = lambda_depth * views_depth_loss(r.depth.permute(0, 3, 1, 2), ref)
        terms["normal"] = lambda_normal * normal_consistency_loss(moved, welded_faces, topology)
        terms["laplacian"] = lambda_laplacian * laplacian_loss(offsets, topology)
        loss = sum(terms.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        message = (f"mesh offsets up to {float(heights.detach().abs().max()):.3f} m" if lr_offsets > 0
                   else "texture (geometry frozen)")
        emit.progress(stage, step, iters, float(loss.detach()),
                      message=message + (f", {note(step)}" if note is not None else ""))
        if on_step is not None:
            on_step(step, {k: float(v.detach()) for k, v in terms.items()})
        if previews.due(step, iters):
            emit.preview("mesh", {"vertices": moved.detach()[index].float(), "faces": mesh.faces.int(),
                                  "uv": mesh.uv.reshape(-1, 2)}, {"step": step})
            emit.preview("texture", {"rgba": rgba_preview(torch.sigmoid(raw.detach()))}, {"step": step})
    return TexturedMesh((base + heights.detach() * normals)[index], mesh.faces, mesh.uv, torch.sigmoid(raw.detach()))
