"""Texture refinement of a given mesh: a new or improved UV texture, the geometry untouched.

The texture is optimised with DreamGaussian's stage-2 refinement (Tang et al. 2023, section
3.3): each step renders random views of the textured mesh, the teacher ``refine``s them (SDEdit
with a DDIM schedule whose noise strength falls from ``strength`` to a quarter of it) and the
texture, kept in logit space as the public code's ``raw_albedo``, follows the MSE to those
targets with Adam. Optionally an SDS term (``lambda_sds``; Poole et al. 2022, eq. 3) is added.
With a reference image, the reference view's MSE under the image's mask is added (DreamGaussian
eq. 6 restricted to RGB) and Zero-1-to-3 is the teacher (conditioned on the reference image at
the reference camera's orbit angles); a prompt alone uses Stable Diffusion.

Frames: the mesh is rendered in the normalised frame of ``stages.mesh_input`` (bounding sphere
radius 0.5, DreamGaussian's object scale) with orbit cameras at ``radius`` around the centre;
the reference camera is mapped into that frame too. The mesh returned is the input mesh: same
vertices, faces and their order.
"""
from __future__ import annotations

import time

import numpy as np
import torch
from PIL import Image

from ..cameras import Cameras, OrbitSampler, orbit_angles, orbit_cameras
from ..geometry.export import texture_to_uint8
from ..geometry.uv import bake_texture, fill_empty_texels
from ..guidance import load_job_teacher
from ..images import load_rgba, recenter, to_white_background
from ..render.mesh import TexturedMesh, render_mesh
from ..schedules import make_schedule
from ..stages.mesh_export import rgba_preview
from ..stages.mesh_input import MeshInput, corner_uv_mesh, prepare_mesh
from ..stages.texture import optimise_texture
from ..contracts import CancelToken, Emitter, JobRequest, Result, schedule_kwargs
from .specs.texture_refine import DEFAULT_REF_FOVY, TextureRefineSpec


class TextureRefinePipeline(TextureRefineSpec):
    """A new or improved texture for a given mesh, from a prompt and/or a reference image."""

    # ------------------------------------------------------------------ run
    def run(self, request: JobRequest, emit: Emitter, cancel: CancelToken) -> Result:
        p, inputs, device = dict(request.params), request.inputs, request.device
        t0 = time.monotonic()
        gen = torch.Generator().manual_seed(request.seed)
        emit.progress("prepare", 0, 3, message="UV atlas")
        given = prepare_mesh(inputs, device, p["texture_size"], p["unwrap_time_limit"], emit, cancel)
        faces, corner_uv, mesh = given.faces, given.corner_uv, given.mesh
        centre, scale, unwrapped = given.centre, given.scale, given.unwrapped

        emit.progress("prepare", 1, 3, message="teacher")
        ref = self._reference(request, p, centre, scale, mesh, device) if "image" in inputs else None
        teacher = self._teacher(request, p, given, ref, device)
        cancel.check()
        emit.progress("prepare", 2, 3, message="initial texture")
        texture, init = self._initial_texture(p, inputs, mesh, faces, corner_uv, ref, device)
        emit.preview("texture", {"rgba": rgba_preview(texture)}, {"step": 0, "init": init})
        emit.progress("prepare", 3, 3)

        size = p["texture_render_size"]
        views = OrbitSampler(p["views"], (p["elevation_min"], p["elevation_max"]), p["radius"], p["fovy"], gen,
                             device=device)
        texture = optimise_texture(mesh, texture, teacher, lambda step: views(step, size), p["texture_iters"], lr=p["texture_lr"],
                                   strength_start=p["refine_strength_start"], strength_end=p["refine_strength_end"],
                                   refine_steps=p["refine_steps"], ref=ref, emit=emit, cancel=cancel, generator=gen,
                                   lambda_ref=p["lambda_ref"], lambda_sds=p["lambda_sds"],
                                   sds_schedule=make_schedule(p["timestep_schedule"], p["t_min"], p["t_max"],
                                                              alphas_cumprod=teacher.alphas_cumprod, **schedule_kwargs(p)),
                                   supersample=p["texture_supersample"],
                                   reference_mask="render+reference")
        files, arrays = given.write_textured(request.job_dir, texture, "refined")
        if ref is not None:
            files["reference.png"] = request.job_dir / "reference.png"
        return Result(
            files=files, arrays=arrays,
            meta={"unwrapped": unwrapped, "init": init, "faces": int(len(faces)),
                  "texture_size": int(arrays["texture"].shape[0]),
                  "teacher": type(teacher).__name__, "total_seconds": round(time.monotonic() - t0, 2)},
        )

    # ------------------------------------------------------------------ parts
    @staticmethod
    def _reference_camera(p: dict, inputs: dict, centre: np.ndarray, scale: float, width: int, height: int) -> Cameras:
        fovy = float(inputs["ref_fovy"][0]) if "ref_fovy" in inputs else DEFAULT_REF_FOVY
        if "ref_camera" not in inputs:
            return orbit_cameras(0.0, 0.0, p["radius"], fovy, width, height)
        c2w = torch.as_tensor(np.array(inputs["ref_camera"], np.float32))
        rot = c2w[:3, :3]
        c2w[:3, :3] = rot / torch.linalg.norm(rot, dim=0, keepdim=True).clamp_min(1e-12)  # drop any object scale
        c2w[:3, 3] = (c2w[:3, 3] - torch.from_numpy(centre)) * scale
        return Cameras(c2w[None], torch.tensor([fovy]), width, height)

    def _reference(self, request: JobRequest, p: dict, centre: np.ndarray, scale: float, mesh: TexturedMesh,
                   device: str) -> dict:
        """The reference view at the render size (longer side), its camera, and its mask: the
        given mask, the image's alpha, or (an opaque image) the mesh's own silhouette from that camera."""
        inputs = request.inputs
        image = np.asarray(inputs["image"])
        h, w = image.shape[:2]
        k = p["texture_render_size"] / max(h, w)
        rw, rh = max(int(round(w * k)), 8), max(int(round(h * k)), 8)
        camera = self._reference_camera(p, inputs, centre, scale, rw, rh).to(device)
        opaque = image.shape[2] == 3 or bool((image[..., 3] == 255).all())
        if "mask" in inputs or not opaque:
            rgba = load_rgba(image, inputs.get("mask"))
        else:  # no alpha to go by (an RGB photo, or RGBA fully opaque)
            image = image[..., :3]
            with torch.no_grad():
                silhouette = render_mesh(mesh, camera).alpha[0, ..., 0]
            alpha = np.asarray(Image.fromarray(texture_to_uint8(silhouette)).resize((w, h), Image.BILINEAR))
            rgba = np.concatenate([image, alpha[..., None]], -1)
        rgba = np.asarray(Image.fromarray(rgba).resize((rw, rh), Image.BILINEAR))
        Image.fromarray(rgba).save(request.job_dir / "reference.png")
        rgb, alpha = to_white_background(rgba)
        return {"rgb": torch.from_numpy(rgb).permute(2, 0, 1)[None].to(device),
                "alpha": torch.from_numpy(alpha)[None, None].to(device), "camera": camera, "rgba": rgba}

    def _teacher(self, request: JobRequest, p: dict, given: MeshInput, ref: dict | None, device: str):
        """The teacher with its condition encoded: the reference image at its camera's orbit
        angles (Zero-1-to-3), the prompt (Stable Diffusion), or the oracle in the mesh's frame."""
        teacher = load_job_teacher(p, ref is not None, device, cache=request.models, models_dir=request.models_dir)
        if p["teacher"] == "oracle":
            teacher.mesh = given.normalise(teacher.mesh)  # the ground truth is given in the mesh's frame
        elif ref is not None:
            el, az, r = (float(x[0]) for x in orbit_angles(ref["camera"].to("cpu")))
            centred = recenter(ref["rgba"], 256)  # Zero-1-to-3 sees the object centred, as it was trained
            rgb_c, _ = to_white_background(centred)
            teacher.encode_condition(image=torch.from_numpy(rgb_c).permute(2, 0, 1)[None].to(device), elevation=el,
                                     azimuth=az, radius=r)
        else:
            teacher.encode_condition(prompt=p["prompt"], negative_prompt=p["negative_prompt"])
        return teacher

    def _initial_texture(self, p, inputs, mesh: TexturedMesh, faces, corner_uv, ref, device):
        size = p["texture_size"]
        if "texture" in inputs and p["use_existing_texture"]:
            tex = Image.fromarray(np.asarray(inputs["texture"])[..., :3]).resize((size, size), Image.BICUBIC)
            return torch.from_numpy(np.asarray(tex, np.float32) / 255.0).to(device), "existing"
        if ref is not None:
            uvm = corner_uv_mesh(mesh.vertices.cpu().numpy(), faces, corner_uv)
            colour = ref["rgb"].permute(0, 2, 3, 1).cpu()
            baked, seen = bake_texture(uvm, ref["camera"].to("cpu"), colour, ref["alpha"][:, 0].cpu(), size=size)
            if seen.any():
                baked = fill_empty_texels(np.where(seen[..., None], baked, 0.5).astype(np.float32), seen)
                return torch.from_numpy(np.ascontiguousarray(baked)).to(device), "reference bake"
        return torch.full((size, size, 3), 0.5, device=device), "grey"

