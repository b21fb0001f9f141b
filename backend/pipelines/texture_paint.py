"""Texture painting of a given mesh: a new texture from a prompt, the object's own UVs and
geometry kept (SyncMVD, Liu et al. 2023, arXiv 2311.12891).

N views (a ring and two from above by default, SyncMVD's cameras) are denoised together by a
geometry-conditioned teacher (Stable Diffusion with a depth ControlNet, ``guidance.controlnet``)
and made to agree through the mesh's UV texture at every step (for the first fifth of the
schedule view after view outward from the front view;
:func:`~backend.stages.synchronised_views.synchronised_denoise`); the final views are baked
into the texture (cos^6-weighted, as the last step's synchronisation), texels no view saw are
filled within their UV island and the atlas is padded (``geometry.view_projection.fill_texture``).
An optional short ``texture_refine`` polish follows (``polish_iters``, off by default).

Frames and contract as ``texture_refine``: the mesh is rendered in the normalised frame of
``stages.mesh_input``; the result holds the input's vertices, faces and order, its UVs (or
xatlas's for a mesh without), the texture and a GLB.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from ..cameras import Cameras, OrbitSampler, orbit_cameras
from ..contracts import CancelToken, Emitter, JobRequest, Result
from ..geometry.export import texture_to_uint8
from ..geometry.view_projection import ViewTextureProjection, fill_texture
from ..guidance import ensure_teacher_model, load_job_teacher
from ..guidance.registry import IP_ADAPTER_FILES
from ..images import load_rgba, to_white_background
from ..stages.mesh_export import rgba_preview
from ..stages.mesh_input import MeshInput, prepare_mesh
from ..stages.progress import PreviewThrottle
from ..stages.synchronised_views import SyncSettings, synchronised_denoise
from ..stages.texture import optimise_texture
from .specs.texture_paint import CAP_VIEWS, TexturePaintSpec


def painting_cameras(p: dict, size: int) -> Cameras:
    """The views: ``ring_views`` azimuths evenly from -180 degrees at ``ring_elevation`` (SyncMVD's
    ring: -180, -135, ..., 135 for 8), then the ``cap_views`` at +-``cap_elevation``, all looking at
    the origin from ``radius`` with ``fovy``, ``size`` x ``size`` pixels."""
    n = p["ring_views"]
    el = [float(p["ring_elevation"])] * n
    az = [-180.0 + 360.0 * k / n for k in range(n)]
    for sign, azimuth in CAP_VIEWS[p["cap_views"]]:
        el.append(sign * float(p["cap_elevation"]))
        az.append(azimuth)
    return orbit_cameras(torch.tensor(el), torch.tensor(az), p["radius"], p["fovy"], size, size)


#: Least time between two live texture previews, seconds: each decodes the views and projects them
#: (the views' own preview, a contact sheet, comes at the usual pace).
LIVE_TEXTURE_INTERVAL_S = 2.0


class TexturePaintPipeline(TexturePaintSpec):
    """A new texture for a given mesh from a prompt, by synchronised multi-view diffusion."""

    def run(self, request: JobRequest, emit: Emitter, cancel: CancelToken) -> Result:
        p, device = dict(request.params), request.device
        t0 = time.monotonic()
        gen = torch.Generator().manual_seed(request.seed)
        emit.progress("prepare", 0, 3, message="UV atlas")
        given = prepare_mesh(request.inputs, device, p["texture_size"], p["unwrap_time_limit"], emit, cancel)
        emit.progress("prepare", 1, 3, message="teacher")
        teacher = self._teacher(request, p, given)
        try:
            return self._paint(request, p, given, teacher, t0, gen, emit, cancel)
        finally:
            if hasattr(teacher, "unload_ip_adapter"):
                teacher.unload_ip_adapter()  # the UNet is shared through the model cache

    def _paint(self, request: JobRequest, p: dict, given: MeshInput, teacher, t0: float, gen: torch.Generator,
               emit: Emitter, cancel: CancelToken) -> Result:
        device = request.device
        clock: dict[str, float] = {}
        cancel.check()
        emit.progress("prepare", 2, 3, message="views")
        size = p["view_size"]
        cameras = painting_cameras(p, size).to(device)
        latent_side = size if teacher.space == "pixel" else size // teacher.latent_factor
        rgb_links = ViewTextureProjection.build(given.mesh, cameras, p["texture_size"], cancel=cancel)
        latent_links = rgb_links if teacher.space == "pixel" else ViewTextureProjection.build(
            given.mesh, cameras.resized(latent_side, latent_side), p["latent_texture_size"], cancel=cancel)
        emit.progress("prepare", 3, 3)
        clock["prepare"] = time.monotonic() - t0

        live = PreviewThrottle(LIVE_TEXTURE_INTERVAL_S)

        def on_texture(step, make):  # the texture on the object as it forms, latest wins
            if live.due(step, p["steps"] + 1):  # the filled final texture is the last one
                emit.preview("texture", {"rgba": rgba_preview(self._filled(*make(), rgb_links))}, {"step": step})

        settings = SyncSettings(**{k: p[k] for k in SyncSettings.__dataclass_fields__})
        views = synchronised_denoise(teacher, cameras, latent_links, rgb_links, settings, gen, emit, cancel,
                                     on_texture=on_texture, clock=clock)
        started = time.monotonic()
        emit.progress("fill", 0, 1, message="bake and fill")
        texture, weight = rgb_links.to_texture(views, p["cos_power_end"])
        texture = torch.from_numpy(self._filled(texture, weight, rgb_links)).to(device)
        emit.progress("fill", 1, 1)
        clock["fill"] = time.monotonic() - started
        emit.preview("texture", {"rgba": rgba_preview(texture)}, {"step": p["steps"], "phase": "fill"})
        if p["polish_iters"] > 0:
            started = time.monotonic()
            texture = self._polish(p, given, teacher, texture, gen, emit, cancel)
            clock["polish"] = time.monotonic() - started
        result = self._result(request, given, texture, teacher, t0, clock)
        result.meta.update(views=len(cameras), view_size=size, steps=p["steps"])
        return result

    # ------------------------------------------------------------------ parts
    @staticmethod
    def _teacher(request: JobRequest, p: dict, given: MeshInput):
        """The depth ControlNet teacher with the prompt (and the reference image, through the
        IP-Adapter) encoded and the mesh as its geometry (its views encoded at the view size), or
        the oracle moved into the normalised frame."""
        teacher = load_job_teacher(p, False, request.device, cache=request.models, models_dir=request.models_dir,
                                   kind="sd-depth")
        if p["teacher"] == "oracle":
            teacher.mesh = given.normalise(teacher.mesh)
            return teacher
        teacher.geometry = given.mesh
        teacher.image_size = p["view_size"]
        image = None
        if "image" in request.inputs:
            sub, weight = IP_ADAPTER_FILES[p["weights"]]
            teacher.load_ip_adapter(ensure_teacher_model("ip-adapter", p["weights"], request.models_dir), sub, weight,
                                    p["ip_adapter_scale"])
            image = np.asarray(request.inputs["image"])
            opaque = image.shape[2] == 3 or bool((image[..., 3] == 255).all())
            if "mask" in request.inputs or not opaque:  # the object over white, as a product shot
                rgb, _ = to_white_background(load_rgba(image, request.inputs.get("mask")))
                image = texture_to_uint8(torch.from_numpy(rgb))
            else:  # a photo as it is: the IP-Adapter takes the whole picture
                image = np.ascontiguousarray(image[..., :3])
        try:
            teacher.encode_condition(prompt=p["prompt"], negative_prompt=p["negative_prompt"], image=image)
        except BaseException:
            teacher.unload_ip_adapter()
            raise
        return teacher

    @staticmethod
    def _filled(texture: torch.Tensor, weight: torch.Tensor, links: ViewTextureProjection) -> np.ndarray:
        """The baked texture float [S, S, 3] with its unseen texels filled and its charts padded."""
        seen = (weight > 1e-8).cpu().numpy()
        return np.clip(fill_texture(texture.float().cpu().numpy(), seen, links.covered.cpu().numpy()), 0.0, 1.0)

    @staticmethod
    def _polish(p, given: MeshInput, teacher, texture, gen, emit, cancel):
        """``polish_iters`` steps of DreamGaussian's stage-2 refinement (``stages.texture``) with
        ``texture_refine``'s defaults: SDEdit at strength 0.2 -> 0.05 from random views."""
        side = min(p["view_size"], 512)
        views = OrbitSampler(1, (-20.0, 60.0), p["radius"], p["fovy"], gen, device=str(texture.device))
        return optimise_texture(given.mesh, texture, teacher, lambda step: views(step, side), p["polish_iters"], lr=0.2,
                                strength_start=0.2, strength_end=0.05, refine_steps=p["steps"], ref=None, emit=emit,
                                cancel=cancel, generator=gen, lambda_ref=0.0, lambda_sds=0.0, sds_schedule=None,
                                supersample=False, reference_mask="render+reference")

    @staticmethod
    def _result(request: JobRequest, given: MeshInput, texture: torch.Tensor, teacher, t0: float,
                clock: dict[str, float]) -> Result:
        files, arrays = given.write_textured(request.job_dir, texture, "painted")
        return Result(
            files=files, arrays=arrays,
            meta={"unwrapped": given.unwrapped, "init": "painted", "faces": int(len(given.faces)),
                  "texture_size": int(arrays["texture"].shape[0]), "teacher": type(teacher).__name__,
                  "synchronised": bool(request.params["synchronise"]), "evaluations": teacher.evaluations,
                  "seconds": {k: round(v, 3) for k, v in clock.items()},
                  "total_seconds": round(time.monotonic() - t0, 2)},
        )
