"""DreamGaussian (Tang et al. 2023): image-to-3D and text-to-3D in two stages.

Stage 1 (section 3.1): 3D Gaussians initialised uniformly in a ball, optimised with SDS from
Zero-1-to-3 (image mode, plus the reference-view RGB and mask losses, ramped linearly) or
Stable Diffusion (text mode, view-dependent prompts); timesteps annealed
(``schedules.DreamGaussianAnneal``, or any ``timestep_schedule``); render resolution 128 -> 256 -> 512 at 30% and 60% of
training; random orbit cameras around the input elevation; white or black background at
random; densification and pruning by gsplat's ``DefaultStrategy``.

Mesh (section 3.2): density-field extraction (``geometry.extract``), decimation, xatlas
unwrap, and back-projection of 26 Gaussian renders (8 azimuths x elevations {-45, 0, 45}, top
and bottom) into the texture.

Stage 2 (section 3.3): the texture alone (geometry frozen, texels in logit space as in the
public code's ``raw_albedo``) is optimised with Adam (lr 0.2) for 50 steps: each step renders a random view, asks the teacher to ``refine`` it (SDEdit with
a 50-step DDIM schedule, the noise strength falling from 0.2 to 0.05 over training, i.e. the
public code's 0.8 -> 0.95 in its inverted convention) and minimises the MSE to that target;
in image mode also the reference view's MSE under its mask.

Default numbers are the public code's (configs/image.yaml and text.yaml); every one is a
parameter. The ``fast`` preset shortens everything for the CPU, ``tiny`` uses the tiny random
teachers and runs in seconds. ``teacher="oracle"`` with ``oracle_mesh`` swaps the diffusion
teacher for the verification oracle (DESIGN.md section 5).
"""
from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..cameras import Cameras, orbit_cameras, sample_orbit_cameras
from ..geometry.export import texture_to_uint8, write_glb, write_ply
from ..geometry.extract import extract_mesh
from ..geometry.uv import bake_texture, unwrap
from ..guidance import load_job_teacher
from ..images import load_rgba, recenter, to_white_background
from ..render.gaussians import GaussianModel, render
from ..render.mesh import TexturedMesh, render_mesh
from ..schedules import make_schedule, step_levels
from .base import CancelToken, Emitter, JobRequest, Result
from .specs.dreamgaussian import DreamGaussianSpec
from .reconstruct import PREVIEW_INTERVAL_S, expon_lr, preview_gaussians
from .texture_refine import optimise_texture, rgba_preview


def bake_cameras(radius: float, fovy: float, size: int) -> Cameras:
    """DreamGaussian's 26 baking views: 8 azimuths x elevations {-45, 0, 45}, top and bottom."""
    el = [-45.0] * 8 + [0.0] * 8 + [45.0] * 8 + [89.9, -89.9]
    az = [i * 45.0 for i in range(8)] * 3 + [0.0, 0.0]
    return orbit_cameras(el, az, radius, fovy, size, size)


def elevation_window(p: dict) -> tuple[float, float]:
    """Random cameras' elevation range: the reference elevation +- ``elevation_range``, within +-89."""
    return max(-89.0, p["elevation"] - p["elevation_range"]), min(89.0, p["elevation"] + p["elevation_range"])


class DreamGaussianPipeline(DreamGaussianSpec):
    """Image- or text-to-3D with Gaussians, a mesh and a refined UV texture."""

    # ------------------------------------------------------------------ setup
    def run(self, request: JobRequest, emit: Emitter, cancel: CancelToken) -> Result:
        p = dict(request.params)
        image_mode = p["mode"] == "image"
        device = request.device
        gen = torch.Generator().manual_seed(request.seed)
        radius = p["radius"] if p["radius"] > 0 else (2.0 if image_mode else 2.5)
        t0 = time.monotonic()
        teacher = load_job_teacher(p, image_mode, device, cache=request.models, models_dir=request.models_dir)
        ref = None
        if image_mode:
            size = p["ref_size"]
            camera = orbit_cameras(p["elevation"], 0.0, radius, p["fovy"], size, size)
            if p["teacher"] == "oracle":
                # The oracle's own render of the reference view is the reference image.
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
            ref = {"rgb": rgb_t, "alpha": alpha_t, "camera": camera}
            teacher.encode_condition(image=ref["rgb"], elevation=p["elevation"], azimuth=0.0, radius=radius)
        else:
            teacher.encode_condition(prompt=p["prompt"], negative_prompt=p["negative_prompt"])
        model = self.stage1(p, teacher, ref, radius, emit, cancel, gen, device)
        write_ply(request.job_dir / "gaussians.ply", model)
        cancel.check()
        mesh, uvm, texture = self.make_mesh(p, model, radius, emit, cancel, device)
        texture = self.stage2(p, teacher, ref, radius, mesh, texture, emit, cancel, gen)
        tex8 = texture_to_uint8(texture)
        glb = write_glb(request.job_dir / "asset.glb", uvm.vertices, uvm.faces, uvm.uv, tex8, name="dreamgaussian")
        Image.fromarray(tex8).save(request.job_dir / "texture.png")
        files = {"asset.glb": glb, "gaussians.ply": request.job_dir / "gaussians.ply", "texture.png": request.job_dir / "texture.png"}
        if image_mode:
            files["reference.png"] = request.job_dir / "reference.png"
        return Result(
            files=files,
            arrays={"vertices": uvm.vertices.astype(np.float32), "faces": uvm.faces.astype(np.int32),
                    "uv": uvm.uv.astype(np.float32), "texture": tex8},
            meta={"mode": p["mode"], "gaussians": len(model), "faces": int(len(uvm.faces)),
                  "stage1_seconds": {k: round(v, 4) for k, v in self.timings.items()},
                  "total_seconds": round(time.monotonic() - t0, 2), "radius": radius},
        )

    # ------------------------------------------------------------------ stage 1
    def stage1(self, p, teacher, ref, radius, emit: Emitter, cancel: CancelToken, gen, device) -> GaussianModel:
        from gsplat.strategy import DefaultStrategy
        from gsplat.strategy.ops import reset_opa

        image_mode = ref is not None
        iters = p["iters"]
        model = GaussianModel.init_sphere(p["num_points"], p["init_radius"], p["init_opacity"], p["sh_degree"], gen).to(device)
        lrs = {"means": p["lr_position"], "sh0": p["lr_color"], "shN": p["lr_color"] / 20.0, "opacities": p["lr_opacity"],
               "scales": p["lr_scale"], "quats": p["lr_rotation"]}
        optimizers = model.parameter_groups(lrs)
        d_from = p["densify_from"] if p["densify_from"] >= 0 else (100 if image_mode else 0)
        d_every = p["densify_every"] if p["densify_every"] > 0 else (100 if image_mode else 50)
        strategy = DefaultStrategy(prune_opa=p["prune_opacity"], grow_grad2d=p["densify_grad"], grow_scale3d=0.01,
                                   prune_scale3d=0.5, refine_start_iter=d_from, refine_stop_iter=p["densify_until"],
                                   refine_every=d_every, reset_every=10**9)
        state = strategy.initialize_state(scene_scale=1.0)
        schedule = make_schedule(p["timestep_schedule"], p["t_min"], p["t_max"])
        sizes = [int(x) for x in p["resolutions"].split(",")]
        last_preview = 0.0
        clock = self.timings = {"render": 0.0, "teacher": 0.0, "backward": 0.0, "densify": 0.0, "steps": 0}
        sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)

        def lap(key: str, since: float) -> float:
            sync()
            now = time.perf_counter()
            clock[key] += now - since
            return now
        for step in range(1, iters + 1):
            cancel.check()
            ratio = min(1.0, step / iters)
            for group in optimizers["means"].param_groups:
                group["lr"] = expon_lr(step, iters, p["lr_position"], max(p["lr_position_final"], 1e-12))
            size = step_levels(sizes, [0.3, 0.6], step, iters)
            loss = torch.zeros((), device=device)
            info = None
            mark = time.perf_counter()
            if image_mode:
                out = render(model, ref["camera"], background=1.0)
                image = out.rgb.permute(0, 3, 1, 2)
                loss = loss + p["lambda_rgb"] * ratio * F.mse_loss(image, ref["rgb"])
                loss = loss + p["lambda_mask"] * ratio * F.mse_loss(out.alpha.permute(0, 3, 1, 2), ref["alpha"])
            cams, _, _, _ = sample_orbit_cameras(p["batch_size"], elevation_window(p), (-180.0, 180.0), (radius, radius),
                                                 p["fovy"], size, size, generator=gen)
            bg = torch.ones(3) if torch.rand(1, generator=gen).item() > p["invert_bg_prob"] else torch.zeros(3)
            out = render(model, cams, background=bg.to(device))
            info = out.info
            strategy.step_pre_backward(model.params, optimizers, state, step, info)
            mark = lap("render", mark)
            t = schedule(step, iters, gen)
            sds = teacher.sds(out.rgb.permute(0, 3, 1, 2), cams, t, background=bg.to(device), generator=gen)
            loss = loss + sds.loss
            mark = lap("teacher", mark)
            loss.backward()
            for opt in optimizers.values():
                opt.step()
                opt.zero_grad(set_to_none=True)
            mark = lap("backward", mark)
            strategy.step_post_backward(model.params, optimizers, state, step, info)
            if p["opacity_reset_every"] and step % p["opacity_reset_every"] == 0 and step < p["densify_until"]:
                reset_opa(model.params, optimizers, state, value=p["prune_opacity"] * 2.0)
            lap("densify", mark)
            clock["steps"] += 1
            emit.progress("gaussians", step, iters, loss.item(), message=f"{len(model)} Gaussians, t={t}, {size}px")
            now = time.monotonic()
            if now - last_preview >= PREVIEW_INTERVAL_S or step == iters:
                last_preview = now
                emit.preview("gaussians", preview_gaussians(model, gen), {"step": step, "count": len(model)})
        return model

    # ------------------------------------------------------------------ mesh
    def make_mesh(self, p, model: GaussianModel, radius: float, emit: Emitter, cancel: CancelToken, device):
        emit.progress("mesh", 0, 3, message="extracting the surface")
        calib = bake_cameras(radius, p["fovy"], min(p["bake_size"], 128))
        extracted = extract_mesh(model, p["mesh_resolution"], p["density_threshold"], p["max_faces"],
                                 calibration_cameras=calib, cancel=cancel)
        mesh = extracted.mesh
        emit.preview("mesh", {"vertices": torch.as_tensor(np.asarray(mesh.vertices), dtype=torch.float32),
                              "faces": torch.as_tensor(np.asarray(mesh.faces), dtype=torch.int32)}, {"faces": len(mesh.faces)})
        cancel.check()
        emit.progress("mesh", 1, 3, message="UV unwrapping")
        uvm = unwrap(mesh.vertices, mesh.faces, resolution=p["texture_size"], time_limit=p["unwrap_time_limit"], cancel=cancel)
        cancel.check()
        emit.progress("mesh", 2, 3, message="baking 26 views")
        cams = bake_cameras(radius, p["fovy"], p["bake_size"])
        rgb, alpha = [], []
        with torch.no_grad():
            for i in range(len(cams)):  # one view at a time, so that a cancel lands between views
                cancel.check()
                view = render(model, cams[i:i + 1], background=0.0)
                rgb.append(view.rgb)
                alpha.append(view.alpha)
        rgb, alpha = torch.cat(rgb), torch.cat(alpha)
        colour = (rgb / alpha.clamp_min(1e-6)).clamp(0, 1)
        texture, _ = bake_texture(uvm, cams, colour, alpha[..., 0], size=p["texture_size"], cancel=cancel)
        texture_t = torch.from_numpy(texture).to(device)
        emit.progress("mesh", 3, 3)
        emit.preview("texture", {"rgba": rgba_preview(texture_t)}, {"step": 0})
        textured = TexturedMesh(torch.from_numpy(uvm.vertices).to(device), torch.from_numpy(uvm.faces).to(device),
                                torch.from_numpy(uvm.corner_uv).to(device), texture_t)
        return textured, uvm, texture_t

    # ------------------------------------------------------------------ stage 2
    def stage2(self, p, teacher, ref, radius, mesh: TexturedMesh, texture: torch.Tensor, emit: Emitter,
               cancel: CancelToken, gen) -> torch.Tensor:
        size = p["refine_size"]

        def sample_cameras(step: int) -> Cameras:
            cams, _, _, _ = sample_orbit_cameras(1, elevation_window(p), (-180.0, 180.0), (radius, radius), p["fovy"], size,
                                                 size, generator=gen)
            return cams.to(texture.device)

        return optimise_texture(mesh, texture, teacher, sample_cameras, p["refine_iters"], lr=p["refine_lr"],
                                strength_start=p["refine_strength_start"], strength_end=p["refine_strength_end"],
                                refine_steps=p["refine_steps"], ref=ref, emit=emit, cancel=cancel, generator=gen)
