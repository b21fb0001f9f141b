"""The last stage of every method that writes a textured mesh: the asset made ready for a scene.

Every generating method (dreamgaussian, dreamtime, dtc123, dreamcraft3d, im3d, reconstruct)
ends in :func:`write_asset`, with the output parameters of
:data:`backend.pipelines.base.OUTPUT_PARAMS`:

- **Placement and size** (``height``, metres): the asset is scaled uniformly so that its bounding
  box is ``height`` tall (glTF's +Y), and moved so that the origin is the bottom centre of the box
  (x and z centred, the lowest point at y = 0); ``height`` 0 keeps the job's own scale and place
  (``reconstruct``'s default: its poses give the real size and place of what was photographed).
  The front stays +Z (glTF; Blender's importer and the add-on turn it to Blender's -Y, the side
  its front view shows). The texture maps do not depend on the scale.
- **A normal map** (``normal_map``): when the mesh was decimated from a finer surface, that
  surface's shading is baked into a tangent-space normal map on the decimated mesh's UVs
  (``geometry.surface_bake``), written as glTF's ``normalTexture`` and ``normal.png``.
- **Quads** (``remesh="quad"``, ``quad_faces``): the full-resolution surface (or the mesh itself)
  remeshed into about ``quad_faces`` quads by Instant Meshes (``geometry.quad_remesh``), unwrapped
  by xatlas (its triangulation: two triangles per quad), the colour baked from the textured mesh
  and the normals from the surface the quads were made from. The client receives the quads as
  polygons (``polygons`` and ``polygon_sizes``: a quad cut by a UV seam through its diagonal
  becomes its two triangles); the GLB holds the triangles, as glTF requires.
- **PBR maps** (``pbr``): albedo, roughness and metallic estimated in 26 views of the textured
  asset (``guidance.intrinsics``: Marigold's appearance model, or the intrinsics oracle with
  ``teacher=oracle``) and back-projected into its UVs as the colour is (:func:`bake_pbr_maps`);
  the albedo replaces the base colour, glTF's ``metallicRoughnessTexture`` (G roughness, B
  metallic) and ``metallic_roughness.png`` hold the rest.

The meta of the result says what was done (``meta["output"]``: height, the scale and offset
applied (placed = job frame x scale + offset), the origin, faces of the full-resolution surface
and of the asset, quads and their share of the polygons, the maps written, the PBR estimator). ``texture_refine`` and
``texture_paint`` do not come here: they keep their input's geometry and placement.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import trimesh
from PIL import Image

from ..contracts import CancelToken, Emitter, JobRequest
from ..geometry.export import texture_to_uint8, write_glb
from ..geometry.quad_remesh import (RemeshError, keep_quads_whole, quads_on_split_vertices, remesh_quads,
                                    triangulate_quads)
from ..geometry.surface_bake import bake_normal_map, transfer_texture, vertex_normals, weld
from ..geometry.uv import UnwrapError, UVMesh, unwrap


@dataclass(frozen=True)
class OutputOptions:
    """The output parameters of a job (:data:`backend.pipelines.base.OUTPUT_PARAMS`)."""

    height: float = 1.0
    normal_map: bool = True
    remesh: str = "none"
    quad_faces: int = 5000
    pbr: bool = False

    @classmethod
    def from_params(cls, p: dict) -> "OutputOptions":
        return cls(height=float(p.get("height", cls.height)), normal_map=bool(p.get("normal_map", cls.normal_map)),
                   remesh=str(p.get("remesh", cls.remesh)), quad_faces=int(p.get("quad_faces", cls.quad_faces)),
                   pbr=bool(p.get("pbr", cls.pbr)))


def placement(vertices: np.ndarray, height: float) -> tuple[float, np.ndarray]:
    """The uniform scale and the offset that make the asset ``height`` metres tall (+Y) with its
    origin at the bottom centre of its bounding box: placed = vertices * scale + offset.

    Args:
        vertices: float [V, 3] (glTF axes, metres); height: metres, > 0.
    Returns:
        (scale float, offset float64 [3]).
    Raises:
        ValueError: no vertices, or a mesh with no height (all vertices at one y).
    """
    v = np.asarray(vertices, np.float64)
    if len(v) == 0:
        raise ValueError("the mesh has no vertices to place")
    lo, hi = v.min(0), v.max(0)
    extent = hi[1] - lo[1]
    if not extent > 0:
        raise ValueError("the mesh is flat along +Y (no height to scale to); give it some height")
    scale = float(height) / float(extent)
    bottom_centre = np.array([(lo[0] + hi[0]) / 2, lo[1], (lo[2] + hi[2]) / 2])
    return scale, -bottom_centre * scale


def write_asset(job_dir: Path, uvm: UVMesh, texture: np.ndarray | torch.Tensor, name: str, p: dict, emit: Emitter,
                cancel: CancelToken, full: trimesh.Trimesh | None = None, request: JobRequest | None = None,
                ) -> tuple[dict[str, Path], dict[str, np.ndarray], dict]:
    """Make the asset ready for a scene (the module docstring: quads, PBR maps, normal map,
    placement, in that order) and write ``asset.glb`` (glTF axes, the maps embedded),
    ``texture.png``, ``normal.png`` and ``metallic_roughness.png`` (the last two when made).

    Args:
        job_dir: where the files go.
        uvm: the unwrapped mesh (vertices float32 [V, 3] in the job's frame, split along UV seams).
        texture: the base colour float [S, S, 3] in [0, 1], row 0 at the top.
        name: the asset's name in the GLB.
        p: the job's parameters (:class:`OutputOptions` reads its own; ``texture_size`` sizes the
            maps made here; ``teacher``/``oracle_mesh``/``weights`` choose the intrinsics estimator).
        emit: progress (stage ``output``, step/total per part) and the log.
        full: the full-resolution surface ``uvm`` was decimated from, in the same frame (None, or
            no more faces than ``uvm``: no normal map is baked unless the quads replace ``uvm``).
        request: the job (its device, models folder and model cache load the intrinsics
            estimator for ``pbr``).
    Returns:
        (files name -> path; arrays for the client: vertices float32 [V, 3] placed, faces int32
        [F, 3], uv float32 [V, 2], normals float32 [V, 3] (unit, shared by the copies of a vertex
        along UV seams, so the surface shades smooth across them, and the frame the normal map was
        baked in), texture uint8 [S, S, 3], when baked normal_map uint8 [S, S, 3] and
        metallic_roughness uint8 [S, S, 3], with quads polygons int32 [sum of sizes] and
        polygon_sizes int32 [P] (4 or 3) over the same vertices; the output report for
        ``meta["output"]``).
    Raises:
        ValueError: a mesh with no height.
        JobCancelled: ``cancel`` fired. (A quad remesh that fails leaves the asset in triangles,
            said in the log and in ``meta["output"]["remesh"]``.)
    """
    options = OutputOptions.from_params(p)
    texture = texture.detach().cpu().numpy() if isinstance(texture, torch.Tensor) else np.asarray(texture, np.float32)
    size = int(p.get("texture_size", texture.shape[0]))
    report: dict = {"height": options.height, "faces_full_resolution": int(len(full.faces)) if full is not None
                    else int(len(uvm.faces)), "maps": ["base_color"], "remesh": options.remesh}
    polygons = None
    detail = full if full is not None and len(full.faces) > len(uvm.faces) else None
    if options.remesh == "quad":
        surface = full if full is not None else trimesh.Trimesh(*weld(uvm.vertices, uvm.faces, uvm.vmapping), process=False)
        try:
            uvm, texture, polygons = _quads(uvm, texture, surface, options.quad_faces, size, p, emit, cancel)
        except (RemeshError, UnwrapError) as exc:  # the asset is still written, as triangles
            report["remesh"] = f"none (the quad remesh failed: {exc})"
            emit.log(f"remesh=quad: {exc}; the asset is written as triangles")
        else:
            report["quads"] = int((polygons[1] == 4).sum())
            report["quad_fraction"] = round(float((polygons[1] == 4).sum()) / len(polygons[1]), 4)
            detail = surface  # the quads are a new surface: its detail comes from the one they were made from
    report["faces"] = int(len(uvm.faces))
    mr8 = None
    if options.pbr:
        estimator = _intrinsics(p, request)
        if estimator is None:
            report["pbr"] = "skipped: the intrinsics model's weights are not here (splatsmith models download intrinsics)"
            emit.log(f"pbr: {report['pbr']}")
        else:
            emit.progress("output", 0, 1, message="estimating albedo, roughness and metallic")
            texture, metallic_roughness = bake_pbr_maps(uvm, texture, estimator, size, cancel)
            mr8 = texture_to_uint8(metallic_roughness)
            report["maps"] = ["base_color (albedo)", "metallic_roughness"]
            report["pbr"] = type(estimator).__name__
            emit.progress("output", 1, 1)
    tex8 = texture_to_uint8(texture)
    normals = vertex_normals(uvm.vertices, uvm.faces, uvm.vmapping)  # shared across UV seams: smooth shading
    normal8 = None
    if options.normal_map and detail is not None:
        emit.progress("output", 0, 1, message="baking the normal map")
        normal = bake_normal_map(uvm.vertices, uvm.faces, uvm.uv, detail, size, welded=uvm.vmapping, cancel=cancel,
                                 normals=normals)
        normal8 = texture_to_uint8(normal)
        report["maps"].append("normal")
        emit.progress("output", 1, 1)
    cancel.check()
    if options.height > 0:
        scale, offset = placement(uvm.vertices, options.height)
        report["origin"] = "bottom centre"
    else:  # the job's own frame (reconstruct: where the photographed object stood)
        scale, offset = 1.0, np.zeros(3)
        report["origin"] = "job frame"
    vertices = (uvm.vertices.astype(np.float64) * scale + offset).astype(np.float32)
    report.update(scale=scale, offset=[float(x) for x in offset])
    glb = write_glb(job_dir / "asset.glb", vertices, uvm.faces, uvm.uv, tex8, name=name, normal_texture=normal8,
                    normals=normals, metallic_roughness=mr8)
    Image.fromarray(tex8).save(job_dir / "texture.png")
    files = {"asset.glb": glb, "texture.png": job_dir / "texture.png"}
    arrays = {"vertices": vertices, "faces": uvm.faces.astype(np.int32), "uv": uvm.uv.astype(np.float32),
              "texture": tex8, "normals": normals}
    if polygons is not None:  # the quads as polygons over the same vertices (the GLB stays triangles)
        arrays["polygons"], arrays["polygon_sizes"] = polygons
    if normal8 is not None:
        Image.fromarray(normal8).save(job_dir / "normal.png")
        files["normal.png"] = job_dir / "normal.png"
        arrays["normal_map"] = normal8
    if mr8 is not None:
        Image.fromarray(mr8).save(job_dir / "metallic_roughness.png")
        files["metallic_roughness.png"] = job_dir / "metallic_roughness.png"
        arrays["metallic_roughness"] = mr8
    return files, arrays, report


#: The views the PBR maps are estimated in and baked from (DreamGaussian's 26 baking views,
#: ``stages.mesh_export.orbit_bake_cameras``), framing the asset's bounding sphere.
PBR_FOVY = 49.1


def bake_pbr_maps(uvm: UVMesh, texture: np.ndarray, estimator, size: int, cancel: CancelToken
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Albedo, roughness and metallic of the textured asset, estimated in each of 26 views of it
    and back-projected into its atlas the way the colour is baked (``geometry.uv.bake_texture``:
    cos-weighted, visibility-tested, inpainted and padded).

    Args:
        uvm: the unwrapped mesh; texture: its base colour float [S, S, 3].
        estimator: :class:`~backend.guidance.intrinsics.MarigoldIntrinsics` or
            :class:`~backend.guidance.intrinsics.IntrinsicsOracle`.
        size: the maps' side, texels (the views are rendered at ``min(size, 512)``).
    Returns:
        (albedo float32 [size, size, 3] in [0, 1], sRGB; metallic_roughness float32 [size, size, 3]
        in glTF's layout: R 0, G roughness, B metallic).
    Raises:
        JobCancelled: ``cancel`` fired.
    """
    from ..cameras import Cameras
    from ..geometry.uv import bake_texture
    from ..render.mesh import TexturedMesh, render_mesh
    from .mesh_export import orbit_bake_cameras

    v = torch.from_numpy(np.asarray(uvm.vertices, np.float32))
    lo, hi = v.min(0).values, v.max(0).values
    centre, reach = (lo + hi) / 2, float((hi - lo).norm()) / 2
    radius = 1.1 * reach / np.sin(np.radians(PBR_FOVY) / 2)
    view = min(int(size), 512)
    orbit = orbit_bake_cameras(radius, PBR_FOVY, view)
    c2w = orbit.c2w.clone()
    c2w[:, :3, 3] += centre  # looking at the asset's centre, in its own frame
    cams = Cameras(c2w, orbit.fovy, view, view)
    mesh = TexturedMesh(v, torch.from_numpy(np.asarray(uvm.faces, np.int64)),
                        torch.from_numpy(uvm.corner_uv), torch.from_numpy(np.asarray(texture, np.float32)))
    albedo, material, alpha = [], [], []
    for i in range(len(cams)):
        cancel.check()
        with torch.no_grad():
            shown = render_mesh(mesh, cams[i:i + 1], background=1.0)
        out = estimator.estimate(shown.rgb, cams[i:i + 1])
        albedo.append(out["albedo"])
        material.append(torch.stack([torch.zeros_like(out["roughness"]), out["roughness"], out["metallic"]], -1))
        alpha.append(shown.alpha[..., 0])
    weights = torch.cat(alpha)
    maps = [bake_texture(uvm, cams, torch.cat(images), weights, size=size, cancel=cancel)[0]
            for images in (albedo, material)]
    return maps[0], maps[1]


def _intrinsics(p: dict, request: JobRequest | None):
    """The job's intrinsics estimator: the oracle of ``oracle_mesh`` with ``teacher=oracle`` (its
    base colour as the albedo, its ``metallicRoughnessTexture`` or glTF's default factors),
    else Marigold (``guidance.intrinsics.load_intrinsics``) in the job's weights variant; None
    when those weights are not here."""
    from ..geometry.export import load_glb, load_metallic_roughness
    from ..guidance.intrinsics import IntrinsicsOracle, load_intrinsics

    if p.get("teacher") == "oracle" and p.get("oracle_mesh"):
        return IntrinsicsOracle(load_glb(p["oracle_mesh"]), load_metallic_roughness(p["oracle_mesh"]))
    device = request.device if request is not None else "cpu"
    return load_intrinsics(str(p.get("weights", "default")), device,
                           models_dir=request.models_dir if request is not None else None,
                           cache=request.models if request is not None else None)


def _quads(uvm: UVMesh, texture: np.ndarray, surface: trimesh.Trimesh, quad_faces: int, size: int, p: dict,
           emit: Emitter, cancel: CancelToken) -> tuple[UVMesh, np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """``surface`` remeshed into about ``quad_faces`` quads, unwrapped (quads kept whole across
    seams where the atlas has room) and given ``uvm``'s colour: (the quads' UV mesh, their
    texture float32 [size, size, 3], (polygons, polygon sizes)). Raises RemeshError, UnwrapError,
    JobCancelled."""
    source = trimesh.Trimesh(uvm.vertices, uvm.faces, process=False)
    emit.progress("output", 0, 3, message="remeshing into quads (Instant Meshes)")
    qv, quads = remesh_quads(surface.vertices, surface.faces, quad_faces)
    cancel.check()
    emit.progress("output", 1, 3, message="UV unwrapping the quads")
    remeshed = keep_quads_whole(unwrap(qv, triangulate_quads(quads), resolution=size,
                                       time_limit=float(p.get("unwrap_time_limit", 300.0)), cancel=cancel), size)
    emit.progress("output", 2, 3, message="baking the colour onto the quads")
    colour = transfer_texture(remeshed.vertices, remeshed.faces, remeshed.uv, source, uvm.uv, texture, size,
                              cancel=cancel)
    emit.progress("output", 3, 3)
    return remeshed, colour, quads_on_split_vertices(remeshed.faces)

