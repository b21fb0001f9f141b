"""A given mesh as the texturing methods take it (``texture_refine``, ``texture_paint``): its UVs
kept or made, a normalised frame to render it in, and the split along UV seams that glTF needs.

Frames: the mesh arrives in glTF axes, object space, metres. It is rendered in a normalised
frame (centred on its bounding box, bounding sphere radius at most 0.5, DreamGaussian's object
scale); the mesh written back is the input mesh: same vertices, faces and their order.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..contracts import CancelToken, Emitter
from ..geometry.export import texture_to_uint8, write_glb
from ..geometry.uv import UVMesh, unwrap
from ..render.mesh import TexturedMesh


def normalising_transform(vertices: np.ndarray) -> tuple[np.ndarray, float]:
    """(centre [3], scale): ``(v - centre) * scale`` puts the bounding box's centre at the origin
    and its half-diagonal (a bound on the bounding sphere) at 0.5."""
    lo, hi = vertices.min(0), vertices.max(0)
    centre = (lo + hi) / 2
    half_diagonal = float(np.linalg.norm(hi - lo)) / 2
    return centre.astype(np.float32), 0.5 / max(half_diagonal, 1e-8)


def corner_uv_mesh(vertices: np.ndarray, faces: np.ndarray, corner_uv: np.ndarray) -> UVMesh:
    """A :class:`UVMesh` (vertices split where their UVs differ) from per-corner UVs
    float [F*3, 2], for baking and for glTF export; face order kept."""
    flat = faces.reshape(-1)
    keys = np.concatenate([flat[:, None].astype(np.float64), np.round(corner_uv.astype(np.float64) * 2**20)], 1)
    _, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    return UVMesh(vertices[flat[first]].astype(np.float32), inverse.reshape(-1, 3).astype(np.int64),
                  corner_uv[first].astype(np.float32), flat[first].astype(np.int64))


@dataclass
class MeshInput:
    """A job's mesh: the arrays as given, its per-corner UVs (given or made by xatlas), and the
    mesh in the normalised frame for rendering.

    Attributes:
        vertices: float32 [V, 3] as given; faces: int64 [F, 3] as given.
        corner_uv: float32 [F*3, 2], origin bottom-left.
        unwrapped: whether xatlas made the UVs.
        centre, scale: the normalising transform (:func:`normalising_transform`).
        mesh: :class:`TexturedMesh` in the normalised frame on the job's device, per-corner UVs.
    """

    vertices: np.ndarray
    faces: np.ndarray
    corner_uv: np.ndarray
    unwrapped: bool
    centre: np.ndarray
    scale: float
    mesh: TexturedMesh

    def write_textured(self, job_dir: Path, texture: np.ndarray | torch.Tensor, name: str
                       ) -> tuple[dict[str, Path], dict[str, np.ndarray]]:
        """Write ``texture.png`` and ``textured.glb`` (this mesh split along its UV seams, with the
        texture float [S, S, 3] in [0, 1]) into ``job_dir``; returns the result's (files, arrays):
        the input's vertices and faces int32 in their order, its per-corner UVs and the texture
        uint8 [S, S, 3]."""
        tex8 = texture_to_uint8(texture)
        Image.fromarray(tex8).save(job_dir / "texture.png")
        split = corner_uv_mesh(self.vertices, self.faces, self.corner_uv)
        glb = write_glb(job_dir / "textured.glb", split.vertices, split.faces, split.uv, tex8, name=name)
        return ({"texture.png": job_dir / "texture.png", "textured.glb": glb},
                {"vertices": self.vertices, "faces": self.faces.astype(np.int32), "uv": self.corner_uv, "texture": tex8})

    def normalise(self, mesh: TexturedMesh) -> TexturedMesh:
        """Another mesh given in this mesh's frame (an oracle's ground truth), moved into the
        normalised frame the same way."""
        c = torch.from_numpy(self.centre).to(mesh.vertices)
        return TexturedMesh((mesh.vertices - c) * self.scale, mesh.faces, mesh.uv, mesh.texture, mesh.vertex_colors)


def prepare_mesh(inputs: dict, device: str, texture_size: int, unwrap_time_limit: float, emit: Emitter,
                 cancel: CancelToken) -> MeshInput:
    """The job's mesh with UVs: the input's ``uv`` when given (kept exactly), else an xatlas atlas
    packed for ``texture_size`` (the new UVs are previewed on the object at once).

    Raises:
        UnwrapError: xatlas failed or ran out of time. JobCancelled: ``cancel`` fired.
    """
    vertices = np.asarray(inputs["vertices"], np.float32)
    faces = np.asarray(inputs["faces"], np.int64)
    centre, scale = normalising_transform(vertices)
    if "uv" in inputs:
        corner_uv, unwrapped = np.asarray(inputs["uv"], np.float32), False
    else:
        uvm = unwrap(vertices, faces, resolution=texture_size, time_limit=unwrap_time_limit, cancel=cancel)
        corner_uv, unwrapped = uvm.corner_uv.reshape(-1, 2).astype(np.float32), True
        emit.preview("mesh", {"vertices": vertices, "faces": faces.astype(np.int32), "uv": corner_uv}, {"unwrapped": True})
    cancel.check()
    mesh = TexturedMesh(torch.from_numpy((vertices - centre) * scale).to(device), torch.from_numpy(faces).to(device),
                        torch.from_numpy(corner_uv.reshape(-1, 3, 2)).to(device))
    return MeshInput(vertices, faces, corner_uv, unwrapped, centre, scale, mesh)


def job_inputs_from_glb(path: str | Path) -> dict[str, np.ndarray]:
    """Input arrays of a texturing job from a GLB/glTF: vertices, faces, and per-corner UVs and
    texture when the file has them (the CLI's ``refine-texture``/``paint-texture MESH.glb``)."""
    from ..geometry.export import load_glb

    mesh = load_glb(path)
    out = {"vertices": mesh.vertices.numpy().astype(np.float32), "faces": mesh.faces.numpy().astype(np.int32)}
    if mesh.uv is not None:
        out["uv"] = mesh.uv.reshape(-1, 2).numpy().astype(np.float32)
    if mesh.texture is not None:
        out["texture"] = texture_to_uint8(mesh.texture)
    return out
