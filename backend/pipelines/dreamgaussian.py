"""DreamGaussian (Tang et al. 2023): image-to-3D and text-to-3D in two stages, with the public
code's numbers (github dreamgaussian/dreamgaussian: ``configs/image.yaml``, ``image_sai.yaml``,
``text.yaml``, ``main.py``, ``main2.py``, ``gs_renderer.py``, ``mesh_renderer.py``).

Stage 1 (section 3.1): 5000 Gaussians uniform in a 0.5 m ball, opacity 0.1, grey
(``SH2RGB(random / 255)``), scales from the 3 nearest neighbours (``GaussianModel.init_sphere``);
SDS from Zero-1-to-3 (image mode, plus the reference view's RGB and mask MSE, weights 10000 and
1000, ramped by the step ratio except for stable-zero123) or Stable Diffusion (text mode, the
plain prompt; view-dependent prompts optional); timesteps annealed (``DreamGaussianAnneal``, or
any ``timestep_schedule``); render size 128 -> 256 -> 512 at 30% and 60%; random orbit cameras
whose elevation window always covers [-30, 30] (``elevation_window``); white or black
background at random. Adam per parameter: position 0.01 -> 0.0002 over 500 (image) / 300
(text) steps (``create_from_pcd(pcd, 10)`` scales 0.001 -> 0.00002 by 10), colour 0.01,
opacity 0.05, scale 0.005, rotation 0.005. Densification (``stages.gaussians.Densification``,
``densify_and_prune(0.01, min_opacity=0.01, extent=4, max_screen_size=1)``): from step 100
every 100 (image) or from 0 every 50 (text) until 3000, clone below / split above 0.04,
prune opacity < 0.01 or size > 0.4, opacities reset to at most 0.01 every 700 steps.
Mesh (section 3.2): density-field extraction (``geometry.extract``), decimation, xatlas
unwrap, and back-projection of 26 Gaussian renders (8 azimuths x elevations {-45, 0, 45}, top
and bottom) into the texture.
Stage 2 (section 3.3): the texture alone (geometry frozen, texels in logit space as the public
code's ``raw_albedo``) is optimised with Adam (lr 0.2, torch's default betas) for 50 steps:
each step renders a random view at a random supersampling scale with mipmapped texturing, asks
the teacher to ``refine`` it (SDEdit with a 50-step DDIM schedule, the noise strength falling
from 0.2 to 0.05 over training, i.e. the public code's 0.8 -> 0.95 in its inverted convention)
and minimises the MSE to that target; in image mode also the reference view's MSE where the
mesh faces the camera.
Every number is a parameter. The ``fast`` preset shortens everything for the CPU, ``tiny``
uses the tiny random teachers and runs in seconds. ``teacher="oracle"`` with ``oracle_mesh``
swaps the diffusion teacher for the verification oracle (DESIGN.md section 5).
"""
from __future__ import annotations

import time

import numpy as np
import torch
from PIL import Image

from ..cameras import Cameras, orbit_cameras, sample_orbit_cameras
from ..geometry.export import texture_to_uint8, write_ply
from ..geometry.uv import bake_texture
from ..guidance import load_job_teacher
from ..images import load_rgba, recenter, to_white_background
from ..render.gaussians import GaussianModel, render
from ..render.mesh import TexturedMesh, render_mesh
from ..schedules import Ramp, make_schedule, step_levels
from ..stages.gaussians import Densification, expon_lr, preview_gaussians, reference_view_loss, sds_terms, set_lr, step_optimizers
from ..stages.mesh_export import export_mesh, orbit_bake_cameras, render_bake_views, write_textured_asset
from ..stages.progress import PreviewThrottle
from ..stages.texture import optimise_texture
from .base import CancelToken, Emitter, JobRequest, Result
from .specs.dreamgaussian import DreamGaussianSpec


def elevation_window(p: dict) -> tuple[float, float]:
    """Random cameras' absolute elevation range, degrees (positive: camera above).

    The public code (``main.py`` lines 215-217, its elevation negative from above) draws an
    offset ``ver`` from ``[max(min(min_ver, min_ver - el), -80 - el), min(max(max_ver,
    max_ver - el), 80 - el)]`` around its reference elevation ``el``: the views always cover the
    absolute ``[min_ver, max_ver]``, extend to the reference view, and stay within +-80. Here
    ``el = -elevation``, ``min_ver = -elevation_max``, ``max_ver = -elevation_min``, and the
    window is returned in this project's sign convention."""
    el, min_ver, max_ver = -p["elevation"], -p["elevation_max"], -p["elevation_min"]
    lo = max(min(min_ver, min_ver - el), -80.0 - el)
    hi = min(max(max_ver, max_ver - el), 80.0 - el)
    return -(el + hi), -(el + lo)


#: Opacity after a reset (``gs_renderer.py`` line 418, ``reset_opacity``: min(opacity, 0.01)).
OPACITY_RESET_VALUE = 0.01


class DreamGaussianPipeline(DreamGaussianSpec):
    """Image- or text-to-3D with Gaussians, a mesh and a refined UV texture."""

    def run(self, request: JobRequest, emit: Emitter, cancel: CancelToken) -> Result:
        p = dict(request.params)
        image_mode = p["mode"] == "image"
        device = request.device
        gen = torch.Generator().manual_seed(request.seed)
        radius = p["radius"]
        t0 = time.monotonic()
        teacher = load_job_teacher(p, image_mode, device, cache=request.models, models_dir=request.models_dir)
        ref = None
        if image_mode:
            ref = self.reference(request, p, teacher, radius)
            teacher.encode_condition(image=ref["rgb"], elevation=p["elevation"], azimuth=0.0, radius=radius)
        else:
            teacher.encode_condition(prompt=p["prompt"], negative_prompt=p["negative_prompt"])
        model = self.stage1(p, teacher, ref, radius, emit, cancel, gen, device)
        write_ply(request.job_dir / "gaussians.ply", model)
        cancel.check()
        bake_cams = orbit_bake_cameras(radius, p["fovy"], p["bake_size"])

        def bake(uvm):
            colour, alpha = render_bake_views(model, bake_cams, cancel)
            return bake_texture(uvm, bake_cams, colour, alpha, size=p["texture_size"], cancel=cancel)[0]

        exported = export_mesh(model, bake, resolution=p["mesh_resolution"], density_threshold=p["density_threshold"],
                               max_faces=p["max_faces"], texture_size=p["texture_size"],
                               calibration_cameras=orbit_bake_cameras(radius, p["fovy"], min(p["bake_size"], 128)),
                               unwrap_time_limit=p["unwrap_time_limit"], emit=emit, cancel=cancel,
                               bake_message="baking 26 views")
        uvm = exported.uvm
        texture = torch.from_numpy(exported.texture).to(device)
        mesh = TexturedMesh(torch.from_numpy(uvm.vertices).to(device), torch.from_numpy(uvm.faces).to(device),
                            torch.from_numpy(uvm.corner_uv).to(device), texture)
        texture = self.stage2(p, teacher, ref, radius, mesh, texture, emit, cancel, gen)
        files, arrays = write_textured_asset(request.job_dir, uvm, texture, "dreamgaussian")
        files["gaussians.ply"] = request.job_dir / "gaussians.ply"
        if image_mode:
            files["reference.png"] = request.job_dir / "reference.png"
        return Result(files=files, arrays=arrays, meta={
            "mode": p["mode"], "gaussians": len(model), "faces": int(len(uvm.faces)),
            "stage1_seconds": {k: round(v, 4) for k, v in self.timings.items()},
            "total_seconds": round(time.monotonic() - t0, 2), "radius": radius})

    @staticmethod
    def reference(request: JobRequest, p: dict, teacher, radius: float) -> dict:
        """The reference view: the input image recentred (or, with the oracle, the oracle's own
        render), as ``{"rgb": [1, 3, S, S] over white, "alpha": [1, 1, S, S], "camera"}``;
        ``reference.png`` is written to the job folder."""
        device, size = request.device, p["ref_size"]
        camera = orbit_cameras(p["elevation"], 0.0, radius, p["fovy"], size, size)
        if p["teacher"] == "oracle":
            from ..guidance.oracle import render_target

            rgb_t = render_target(teacher, camera, 1.0).to(device)
            with torch.no_grad():
                alpha_t = render_mesh(teacher.mesh, camera).alpha.permute(0, 3, 1, 2).to(device)
            rgba = np.concatenate([texture_to_uint8(rgb_t[0].permute(1, 2, 0)), texture_to_uint8(alpha_t[0, 0])[..., None]], -1)
        else:
            rgba = recenter(load_rgba(np.asarray(request.inputs["image"]), request.inputs.get("mask")), size)
            rgb, alpha = to_white_background(rgba)
            rgb_t = torch.from_numpy(rgb).permute(2, 0, 1)[None].to(device)
            alpha_t = torch.from_numpy(alpha)[None, None].to(device)
        Image.fromarray(rgba).save(request.job_dir / "reference.png")
        return {"rgb": rgb_t, "alpha": alpha_t, "camera": camera}

    # ------------------------------------------------------------------ stage 1
    def stage1(self, p, teacher, ref, radius, emit: Emitter, cancel: CancelToken, gen, device) -> GaussianModel:
        image_mode = ref is not None
        iters = p["iters"]
        model = GaussianModel.init_sphere(p["init_points"], p["init_radius"], p["init_opacity"], p["sh_degree"], gen).to(device)
        optimizers = model.parameter_groups({
            "means": p["lr_means"], "sh0": p["lr_colors"], "shN": p["lr_colors"] / 20.0, "opacities": p["lr_opacities"],
            "scales": p["lr_scales"], "quats": p["lr_quats"]})
        densify = Densification(
            prune_opacity=p["prune_opacity"], grad_threshold=p["densify_grad"], scene_scale=p["scene_extent"],
            grow_scale3d=p["grow_scale3d"], prune_scale3d=p["prune_scale3d"], start=p["densify_from"],
            every=p["densify_every"], stop=p["densify_until"], reset_every=p["opacity_reset_every"],
            reset_value=OPACITY_RESET_VALUE)
        schedule = make_schedule(p["timestep_schedule"], p["t_min"], p["t_max"])
        # The reference losses ramp up linearly over training (main.py lines 204-208: ``step_ratio *
        # lambda`` when warmup_rgb_loss, constant with stable-zero123's image_sai.yaml).
        ramp = Ramp.linear if p["reference_warmup"] else (lambda start, end: Ramp.constant(end))
        lambda_rgb, lambda_mask = ramp(0.0, p["lambda_rgb"]), ramp(0.0, p["lambda_mask"])
        sizes = [int(x) for x in p["resolutions"].split(",")]
        previews = PreviewThrottle()
        clock = self.timings = {"render": 0.0, "teacher": 0.0, "backward": 0.0, "densify": 0.0, "steps": 0}
        sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)

        def lap(key: str, since: float) -> float:
            sync()
            now = time.perf_counter()
            clock[key] += now - since
            return now
        for step in range(1, iters + 1):
            cancel.check()
            set_lr(optimizers["means"], expon_lr(step, p["lr_means_steps"], p["lr_means"], max(p["lr_means_final"], 1e-12)))
            size = step_levels(sizes, [0.3, 0.6], step, iters)
            loss = torch.zeros((), device=device)
            mark = time.perf_counter()
            if image_mode:
                out = render(model, ref["camera"], background=1.0)
                loss = loss + reference_view_loss(out, ref, lambda_rgb.at(step, iters), lambda_mask.at(step, iters))
            cams, _, _, _ = sample_orbit_cameras(p["batch_size"], elevation_window(p), (-180.0, 180.0), (radius, radius),
                                                 p["fovy"], size, size, generator=gen)
            bg = torch.ones(3) if torch.rand(1, generator=gen).item() > p["invert_bg_prob"] else torch.zeros(3)
            out = render(model, cams, background=bg.to(device))
            densify.before_backward(model, optimizers, step, out.info)
            mark = lap("render", mark)
            t = schedule(step, iters, gen)
            loss = loss + sds_terms([(teacher, 1.0)], out.rgb.permute(0, 3, 1, 2), cams, t, background=bg.to(device),
                                    generator=gen)
            mark = lap("teacher", mark)
            loss.backward()
            step_optimizers(optimizers)
            mark = lap("backward", mark)
            densify.after_backward(model, optimizers, step, out.info)
            lap("densify", mark)
            clock["steps"] += 1
            emit.progress("gaussians", step, iters, loss.item(), message=f"{len(model)} Gaussians, t={t}, {size}px")
            if previews.due(step, iters):
                emit.preview("gaussians", preview_gaussians(model, gen), {"step": step, "count": len(model)})
        return model

    # ------------------------------------------------------------------ stage 2
    def stage2(self, p, teacher, ref, radius, mesh: TexturedMesh, texture: torch.Tensor, emit: Emitter,
               cancel: CancelToken, gen) -> torch.Tensor:
        size = p["texture_render_size"]

        def sample_cameras(step: int) -> Cameras:
            cams, _, _, _ = sample_orbit_cameras(1, elevation_window(p), (-180.0, 180.0), (radius, radius), p["fovy"], size,
                                                 size, generator=gen)
            return cams.to(texture.device)

        return optimise_texture(mesh, texture, teacher, sample_cameras, p["texture_iters"], lr=p["texture_lr"],
                                strength_start=p["refine_strength_start"], strength_end=p["refine_strength_end"],
                                refine_steps=p["refine_steps"], ref=ref, emit=emit, cancel=cancel, generator=gen,
                                supersample=p["texture_supersample"])
