"""Writing and reading assets: textured GLB (trimesh) and 3DGS PLY.

Conventions: the backend's world is glTF's (+Y up, metres, front +Z), so meshes are written
as they are. UVs are kept with the origin at the bottom-left (OpenGL) in memory; trimesh's
glTF exporter and importer flip V to glTF's top-left origin and back (one place, tested in
``tests/test_geometry.py``). Textures are uint8 RGBA/RGB with row 0 at the top, as glTF's
images are.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import trimesh
from PIL import Image

from ..render.gaussians import GaussianModel
from ..render.mesh import TexturedMesh


def texture_to_uint8(texture: np.ndarray | torch.Tensor) -> np.ndarray:
    """float [H, W, C] in [0, 1] -> uint8 [H, W, C] (rounded)."""
    if isinstance(texture, torch.Tensor):
        texture = texture.detach().cpu().numpy()
    return (np.clip(texture, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def make_trimesh(vertices: np.ndarray, faces: np.ndarray, uv: np.ndarray | None = None,
                 texture: np.ndarray | None = None, name: str = "splatsmith",
                 normal_texture: np.ndarray | None = None, normals: np.ndarray | None = None,
                 metallic_roughness: np.ndarray | None = None) -> trimesh.Trimesh:
    """A trimesh with a PBR material whose base colour is ``texture`` (uint8 [H, W, 3|4]).

    Args:
        vertices: float [V, 3]; faces: int [F, 3].
        uv: float [V, 2] per-vertex UVs (origin bottom-left), required with a texture.
        texture: uint8 [H, W, 3|4], row 0 at the top.
        normal_texture: uint8 [H, W, 3], a tangent-space normal map on the same UVs (glTF's
            ``normalTexture``; tangents are left to the client's MikkTSpace, as glTF allows).
        normals: float [V, 3] unit vertex normals (glTF's ``NORMAL``), e.g. shared across UV
            seams; None: trimesh's own from the faces.
        metallic_roughness: uint8 [H, W, 3], glTF's ``metallicRoughnessTexture`` (G roughness,
            B metallic, linear; the factors are then 1); None: roughness 0.9, metallic 0.
    """
    mesh = trimesh.Trimesh(np.asarray(vertices, np.float32), np.asarray(faces, np.int64), process=False,
                           vertex_normals=None if normals is None else np.asarray(normals, np.float64))
    if texture is not None:
        if uv is None:
            raise ValueError("a texture needs per-vertex UVs")
        material = trimesh.visual.material.PBRMaterial(
            name=f"{name}_material", baseColorTexture=Image.fromarray(np.asarray(texture)),
            metallicFactor=0.0 if metallic_roughness is None else 1.0,
            roughnessFactor=0.9 if metallic_roughness is None else 1.0, doubleSided=False,
            normalTexture=None if normal_texture is None else Image.fromarray(np.asarray(normal_texture)),
            metallicRoughnessTexture=None if metallic_roughness is None else Image.fromarray(np.asarray(metallic_roughness)),
        )
        mesh.visual = trimesh.visual.TextureVisuals(uv=np.asarray(uv, np.float64), material=material)
    mesh.metadata["name"] = name
    return mesh


def write_glb(path: str | Path, vertices: np.ndarray, faces: np.ndarray, uv: np.ndarray | None = None,
              texture: np.ndarray | None = None, name: str = "splatsmith",
              normal_texture: np.ndarray | None = None, normals: np.ndarray | None = None,
              metallic_roughness: np.ndarray | None = None) -> Path:
    """Write a binary glTF with one mesh, its base-colour texture and optionally its normal map
    (:func:`make_trimesh`). Returns the path."""
    mesh = make_trimesh(vertices, faces, uv, texture, name, normal_texture, normals, metallic_roughness)
    path = Path(path)
    path.write_bytes(trimesh.exchange.gltf.export_glb(trimesh.Scene({name: mesh})))
    return path


class MeshFileError(ValueError):
    """A file that is not a readable triangle mesh: one sentence naming it."""


def load_glb(path: str | Path, device: str | torch.device = "cpu") -> TexturedMesh:
    """Read a GLB/glTF (all meshes merged) as a :class:`TexturedMesh` with per-corner UVs and
    a float texture when it has a base-colour texture.

    Raises:
        FileNotFoundError: no such file.
        MeshFileError: the file is not a glTF that trimesh can read, or holds no triangle mesh
            (one sentence naming the file and what it should be).
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"mesh file {path} not found")
    try:
        loaded = trimesh.load(str(path), force="scene")
    except Exception as exc:  # trimesh raises whatever its parsers do on a file that is not a mesh
        raise MeshFileError(f"{path} is not a mesh file that can be read ({type(exc).__name__}): give a glTF binary "
                         "(.glb) or .gltf with triangles") from None
    geoms = [g for g in loaded.dump() if isinstance(g, trimesh.Trimesh) and len(g.faces)]
    if not geoms:
        raise MeshFileError(f"{path} holds no triangle mesh: give a glTF binary (.glb) or .gltf with triangles")
    uv = texture = None
    if len(geoms) == 1 and isinstance(geoms[0].visual, trimesh.visual.TextureVisuals) and geoms[0].visual.uv is not None:
        mesh = geoms[0]
        material = mesh.visual.material
        image = getattr(material, "baseColorTexture", None) or getattr(material, "image", None)
        if image is not None:
            texture = torch.from_numpy(np.asarray(image.convert("RGB"), np.float32) / 255.0)
            uv = torch.from_numpy(np.asarray(mesh.visual.uv, np.float32)[mesh.faces])
    else:
        mesh = trimesh.util.concatenate(geoms)
    return TexturedMesh(torch.from_numpy(np.asarray(mesh.vertices, np.float32)), torch.from_numpy(np.asarray(mesh.faces, np.int64)),
                        uv, texture).to(device)


def load_metallic_roughness(path: str | Path) -> torch.Tensor | None:
    """A GLB's ``metallicRoughnessTexture`` as float [H, W, 3] in [0, 1] (G roughness, B metallic),
    or None when its (single) mesh has none. Raises as :func:`load_glb`."""
    load_glb(path)  # the same checks and messages
    geoms = [g for g in trimesh.load(str(path), force="scene").dump() if isinstance(g, trimesh.Trimesh)]
    material = getattr(geoms[0].visual, "material", None) if len(geoms) == 1 else None
    image = getattr(material, "metallicRoughnessTexture", None)
    if image is None:
        return None
    return torch.from_numpy(np.asarray(image.convert("RGB"), np.float32) / 255.0)


def write_ply(path: str | Path, model: GaussianModel) -> Path:
    """Write Gaussians as a standard 3DGS PLY. Returns the path."""
    model.save_ply(path)
    return Path(path)
