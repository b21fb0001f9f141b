"""Gaussians distilled from a diffusion teacher, then meshed and textured: the stages that
DreamGaussian (Tang et al. 2023) introduced and that DreamTime's method reuses with its own
timestep schedule. Every number comes from the caller's parameters (one vocabulary, see
``backend.pipelines.specs.dreamgaussian`` for the public code's values and sources):

- the reference views (the front image and any further ones, recentred at one scale, or the
  oracle's renders) come from ``stages.reference_views``;
- :func:`elevation_window`: the random cameras' elevation range around the reference view;
- :func:`add_reference_depth`: a monocular depth estimate of the reference view for the depth
  correlation loss (when the estimator's weights are present);
- :func:`distil_gaussians`: stage 1, SDS on Gaussians with any timestep schedule, the reference
  losses in image mode, densification (``stages.gaussians``);
- :func:`mesh_and_texture`: density-field mesh, UV atlas, baked texture and stage 2 (texture
  refinement by the teacher), written as GLB/PNG/PLY;
- :func:`run_distillation`: the whole job (teacher, reference, stage 1 with the parameters'
  timestep schedule, mesh, texture), which a method with these stages runs from its ``run``.

The loop of stage 1 lives here, not in a method module, so that methods compose it instead of
importing each other.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import trimesh

from ..cameras import Cameras, OrbitSampler, orbit_cameras
from ..geometry.export import write_ply
from ..geometry.surface_bake import carry_displacement
from ..geometry.uv import UVMesh, bake_texture
from ..guidance import load_job_teacher, load_teacher
from ..contracts import CancelToken, Emitter, JobRequest, Result, parse_sizes, schedule_kwargs
from ..render.gaussians import GaussianModel, render
from ..render.mesh import TexturedMesh
from ..schedules import Ramp, TimestepSchedule, make_schedule, sds_weighting, step_levels
from .gaussians import Densification, expon_lr, preview_gaussians, reference_view_loss, sds_terms, set_lr, step_optimizers
from .asset_output import write_asset
from .mesh_export import export_mesh, orbit_bake_cameras, render_bake_views
from .progress import PreviewThrottle
from .reference_views import condition_teacher, reference_views
from .texture import optimise_texture

#: Opacity after a reset (DreamGaussian ``gs_renderer.py`` line 418, ``reset_opacity``:
#: min(opacity, 0.01)).
OPACITY_RESET_VALUE = 0.01


def elevation_window(p: dict) -> tuple[float, float]:
    """Random cameras' absolute elevation range, degrees (positive: camera above).

    DreamGaussian's public code (``main.py`` lines 215-217, its elevation negative from above)
    draws an offset ``ver`` from ``[max(min(min_ver, min_ver - el), -80 - el), min(max(max_ver,
    max_ver - el), 80 - el)]`` around its reference elevation ``el``: the views always cover the
    absolute ``[min_ver, max_ver]``, extend to the reference view, and stay within +-80. Here
    ``el = -elevation``, ``min_ver = -elevation_max``, ``max_ver = -elevation_min``, and the
    window is returned in this project's sign convention. In text mode ``elevation`` is 0."""
    el, min_ver, max_ver = -p.get("elevation", 0.0), -p["elevation_max"], -p["elevation_min"]
    lo = max(min(min_ver, min_ver - el), -80.0 - el)
    hi = min(max(max_ver, max_ver - el), 80.0 - el)
    return -(el + hi), -(el + lo)


def image_teacher_and_reference(p: dict, inputs: dict, request: JobRequest, emit: Emitter) -> tuple[object, dict]:
    """The opening of a method that distils from Zero-1-to-3 around reference images (DTC123,
    DreamCraft3D): Zero-1-to-3 (or the oracle) at CFG ``zero123_cfg``, the reference views
    (``stages.reference_views.reference_views``: the front and any further images, ``reference.png``
    and ``reference_k.png`` written) with the teacher's condition encoded from all of them, and,
    with ``lambda_depth`` > 0, their monocular depth (:func:`add_reference_depth`).

    Returns:
        (the teacher, the reference dict).
    """
    device, radius = request.device, p["radius"]
    teacher = load_job_teacher(dict(p, guidance_scale=p["zero123_cfg"]), True, device, cache=request.models,
                               models_dir=request.models_dir)
    ref = reference_views(inputs, p, teacher, radius, request.job_dir, device, emit)
    condition_teacher(teacher, ref, radius)
    if p["lambda_depth"] > 0:
        add_reference_depth(p["weights"], ref, device, emit, models_dir=request.models_dir, cache=request.models)
    return teacher, ref


def prompt_teacher(p: dict, zero123, request: JobRequest, emit: Emitter, prompt: str, negative_prompt: str = "",
                   absent: str = "", loaded=None):
    """Stable Diffusion beside Zero-1-to-3 (DTC123's hand-over, DreamCraft3D's hybrid SDS): with
    the oracle, the oracle itself; without a ``prompt``, None and the ``absent`` sentence in the
    log; else Stable Diffusion at CFG ``sd_cfg`` (``loaded``, when the job loaded it already),
    view-dependent prompts on (DreamFusion's front / side / back / overhead suffixes), the prompt
    encoded."""
    if p["teacher"] == "oracle":
        return zero123
    if not prompt.strip():
        if absent:
            emit.log(absent)
        return None
    sd = loaded if loaded is not None else load_teacher(
        "stable-diffusion", "tiny" if p["weights"] == "tiny" else "default", request.device, cache=request.models,
        guidance_scale=p["sd_cfg"], models_dir=request.models_dir)
    sd.view_dependent = True
    sd.encode_condition(prompt=prompt, negative_prompt=negative_prompt)
    return sd


def denoiser_evaluations(*teachers) -> int:
    """The denoiser evaluations of a job's teachers, each counted once (the oracle may stand in
    for several); None entries are skipped."""
    unique = {id(t): t for t in teachers if t is not None}
    return sum(t.evaluations for t in unique.values())


def write_refined_asset(job_dir: Path, uvm: UVMesh, mesh: TexturedMesh, name: str, p: dict, emit: Emitter,
                        cancel: CancelToken, request: JobRequest | None = None,
                        full: trimesh.Trimesh | None = None) -> tuple[dict, dict, dict]:
    """The closing of a method that refined its extracted mesh (:func:`extract_textured_mesh`):
    the atlas with the moved vertices and the refined texture through ``stages.asset_output``, and
    ``gaussians.ply`` among the files. ``full``, the full-resolution surface the atlas was
    decimated from (before the refinement), is moved along with it
    (``geometry.surface_bake.carry_displacement``) so that its detail is baked into the normal map
    of the refined shape. Returns (files, arrays, the output report)."""
    after = mesh.vertices.detach().cpu().numpy().astype(np.float32)
    moved = UVMesh(after, uvm.faces, uvm.uv, uvm.vmapping)
    if full is not None and len(full.faces) > len(uvm.faces) and p.get("normal_map", True):
        full = carry_displacement(full, uvm.vertices, after, uvm.faces, cancel=cancel)
    files, arrays, output = write_asset(job_dir, moved, mesh.texture, name, p, emit, cancel, full=full,
                                        request=request)
    files["gaussians.ply"] = job_dir / "gaussians.ply"
    return files, arrays, output


def add_reference_depth(weights: str, ref: dict, device: str, emit: Emitter, *, models_dir=None, cache=None) -> bool:
    """Put the monocular estimate of the reference view's disparity into ``ref["disparity"]``
    (float [1, 1, S, S]; the depth correlation term of :func:`distil_gaussians` and
    ``stages.geometry.refine_mesh``), or log once that the estimator's weights are missing.
    ``weights``: the job's weights variant (``tiny``: the tiny random DPT). Returns whether the
    loss is on."""
    from ..guidance.depth import load_depth_estimator
    from ..guidance.registry import DEPTH

    variant = "tiny" if weights == "tiny" else "default"
    model_id = DEPTH.model(variant)[0]
    estimator = load_depth_estimator(variant, device, models_dir=models_dir, cache=cache)
    if estimator is None:
        emit.log(f"lambda_depth is set but the depth estimator's weights ({model_id}) are not present locally: the "
                 f"depth correlation loss is skipped (`splatsmith models download {model_id}` fetches them)")
        return False
    ref["disparity"] = estimator.disparity(ref["rgb"])
    emit.log(f"reference depth estimated by {model_id}: depth correlation loss on")
    return True


def distil_gaussians(p: dict, teacher, ref: dict | None, radius: float, schedule: TimestepSchedule, emit: Emitter,
                     cancel: CancelToken, gen: torch.Generator, device: str, timings: dict | None = None,
                     on_step=None, *, teachers: Callable[[int], list] | None = None,
                     cameras: Callable[[int, int], Cameras] | None = None, size: Callable[[int], int] | None = None,
                     model: GaussianModel | None = None, stage: str = "gaussians",
                     note: Callable[[int], str] | None = None) -> GaussianModel:
    """Stage 1: Gaussians optimised by score distillation from ``teacher`` (DreamGaussian
    section 3.1; ``main.py`` ``train_step``).

    Each step: the reference view's RGB and mask MSE (image mode, ``ref`` given; weights
    ``lambda_rgb``/``lambda_mask``, ramped up over training when ``reference_warmup``), then
    ``lambda_depth`` x the depth correlation when ``ref`` holds a ``"disparity"``), then
    ``batch_size`` random orbit views (``cameras``; by default elevations :func:`elevation_window`,
    any azimuth) over a white or (probability ``invert_bg_prob``) black background, SDS (averaged
    over the views, ``Guidance.sds``) at the timestep
    ``schedule(step, iters)`` with the weighting w(t) the schedule prescribes
    (``schedules.sds_weighting``), Adam per parameter group with the position learning rate
    decaying log-linearly, densification (:class:`~backend.stages.gaussians.Densification`).
    Render size switches through ``resolutions`` at 30% and 60% of training.

    Args:
        p: the method's resolved parameters (DreamGaussian's vocabulary: ``iters``,
            ``init_points``, ``lr_*``, ``densify_*``, ``resolutions``, ...).
        teacher: a guidance with its condition encoded.
        ref: ``stages.reference_views.reference_views``' dict (N views, their losses averaged,
            ``stages.gaussians.reference_view_loss``), or None in text mode.
        radius: camera distance, metres.
        schedule: the timestep schedule (``schedules.make_schedule``).
        timings: filled with seconds spent in render/teacher/backward/densify and ``steps``.
        on_step: optional ``callable(step, model)`` after each step (benchmarks evaluate
            intermediate models with it).
        teachers: ``callable(step) -> [(guidance, weight), ...]``, several teachers weighted per
            step (DTC123's hand-over); None: ``[(teacher, 1.0)]``.
        cameras: ``callable(step, side) -> Cameras``, the step's random views (a method's own
            ``cameras.OrbitSampler``, e.g. with ``DebiasedAzimuths``); None: ``batch_size`` views
            in :func:`elevation_window` at any azimuth.
        size: ``callable(step) -> pixels``, the render side; None: ``resolutions`` switching at
            30% and 60% of training.
        model: Gaussians to continue from (a later curriculum stage); None: a new ball of
            ``init_points``.
        stage: the progress stage's name.
        note: ``callable(step) -> str`` appended to each progress message (e.g. the teachers
            and their weights).
    Returns:
        The optimised :class:`GaussianModel` on ``device``.
    """
    iters = p["iters"]
    if model is None:
        model = GaussianModel.init_sphere(p["init_points"], p["init_radius"], p["init_opacity"], p["sh_degree"],
                                          gen).to(device)
    optimizers = model.parameter_groups({
        "means": p["lr_means"], "sh0": p["lr_colors"], "shN": p["lr_colors"] / 20.0, "opacities": p["lr_opacities"],
        "scales": p["lr_scales"], "quats": p["lr_quats"]})
    densify = Densification(
        prune_opacity=p["prune_opacity"], grad_threshold=p["densify_grad"], scene_scale=p["scene_extent"],
        grow_scale3d=p["grow_scale3d"], prune_scale3d=p["prune_scale3d"], start=p["densify_from"],
        every=p["densify_every"], stop=p["densify_until"], reset_every=p["opacity_reset_every"],
        reset_value=OPACITY_RESET_VALUE)
    weighting = sds_weighting(schedule, None)
    # The reference losses ramp up linearly over training (main.py lines 204-208: ``step_ratio *
    # lambda`` when warmup_rgb_loss, constant with stable-zero123's image_sai.yaml).
    if ref is not None:
        ramp = Ramp.linear if p["reference_warmup"] else (lambda start, end: Ramp.constant(end))
        lambda_rgb, lambda_mask = ramp(0.0, p["lambda_rgb"]), ramp(0.0, p["lambda_mask"])
        lambda_depth = ramp(0.0, p.get("lambda_depth", 0.0))
    sizes = parse_sizes(p) if size is None else []
    sampler = cameras if cameras is not None else OrbitSampler(p["batch_size"], elevation_window(p), radius, p["fovy"],
                                                               gen)
    previews = PreviewThrottle()
    clock = timings if timings is not None else {}
    clock.update({"render": 0.0, "teacher": 0.0, "backward": 0.0, "densify": 0.0, "steps": 0})
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)

    def lap(key: str, since: float) -> float:
        sync()
        now = time.perf_counter()
        clock[key] += now - since
        return now
    for step in range(1, iters + 1):
        cancel.check()
        set_lr(optimizers["means"], expon_lr(step, p["lr_means_steps"], p["lr_means"], max(p["lr_means_final"], 1e-12)))
        side = size(step) if size is not None else step_levels(sizes, [0.3, 0.6], step, iters)
        loss = torch.zeros((), device=device)
        mark = time.perf_counter()
        if ref is not None:
            out = render(model, ref["camera"], background=1.0)
            loss = loss + reference_view_loss(out, ref, lambda_rgb.at(step, iters), lambda_mask.at(step, iters),
                                              lambda_depth.at(step, iters))
        cams = sampler(step, side)
        bg = torch.ones(3) if torch.rand(1, generator=gen).item() > p["invert_bg_prob"] else torch.zeros(3)
        out = render(model, cams, background=bg.to(device))
        densify.before_backward(model, optimizers, step, out.info)
        mark = lap("render", mark)
        t = schedule(step, iters, gen)
        terms = teachers(step) if teachers is not None else [(teacher, 1.0)]
        loss = loss + sds_terms(terms, out.rgb.permute(0, 3, 1, 2), cams, t, background=bg.to(device),
                                generator=gen, weighting=weighting)
        mark = lap("teacher", mark)
        loss.backward()
        step_optimizers(optimizers)
        mark = lap("backward", mark)
        densify.after_backward(model, optimizers, step, out.info)
        lap("densify", mark)
        clock["steps"] += 1
        message = f"{len(model)} Gaussians, t={t}, {side}px" + (f", {note(step)}" if note is not None else "")
        emit.progress(stage, step, iters, loss.item(), message=message)
        if previews.due(step, iters):
            emit.preview("gaussians", preview_gaussians(model), {"step": step, "count": len(model)})
        if on_step is not None:
            on_step(step, model)
    return model


def extract_textured_mesh(p: dict, model: GaussianModel, radius: float, job_dir: Path, emit: Emitter,
                          cancel: CancelToken, device: str) -> tuple[UVMesh, TexturedMesh]:
    """DreamGaussian section 3.2: ``gaussians.ply``, then the mesh from the Gaussians' density
    field with a UV atlas and a texture baked from 26 renders (``stages.mesh_export``).

    Returns:
        (the unwrapped mesh, the same as a :class:`TexturedMesh` on ``device`` with per-corner
        UVs and the baked texture float [S, S, 3], the full-resolution surface before decimation).
    """
    write_ply(job_dir / "gaussians.ply", model)
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
    return uvm, mesh, exported.extracted.full


def mesh_and_texture(p: dict, model: GaussianModel, teacher, ref: dict | None, radius: float, job_dir: Path,
                     emit: Emitter, cancel: CancelToken, gen: torch.Generator, device: str,
                     name: str, request: JobRequest | None = None) -> tuple[dict, dict, int, dict]:
    """DreamGaussian sections 3.2-3.3: :func:`extract_textured_mesh`, then stage 2
    (:func:`refine_texture`), written as ``<name>`` GLB/PNG (and the PLY).

    Returns:
        (files, arrays for the client, face count, the output report of ``stages.asset_output``).
    """
    uvm, mesh, full = extract_textured_mesh(p, model, radius, job_dir, emit, cancel, device)
    texture = refine_texture(p, teacher, ref, radius, mesh, mesh.texture, emit, cancel, gen)
    files, arrays, output = write_asset(job_dir, uvm, texture, name, p, emit, cancel, full=full, request=request)
    files["gaussians.ply"] = job_dir / "gaussians.ply"
    if ref is not None:
        files.update({name: job_dir / name for name in ref["files"]})
    return files, arrays, int(len(uvm.faces)), output


def refine_texture(p: dict, teacher, ref: dict | None, radius: float, mesh: TexturedMesh, texture: torch.Tensor,
                   emit: Emitter, cancel: CancelToken, gen: torch.Generator) -> torch.Tensor:
    """Stage 2 (DreamGaussian section 3.3): ``stages.texture.optimise_texture`` over random orbit
    views of side ``texture_render_size`` in :func:`elevation_window`. Returns float [H, W, 3]."""
    size = p["texture_render_size"]
    sampler = OrbitSampler(1, elevation_window(p), radius, p["fovy"], gen, device=texture.device)
    return optimise_texture(mesh, texture, teacher, lambda step: sampler(step, size), p["texture_iters"], lr=p["texture_lr"],
                            strength_start=p["refine_strength_start"], strength_end=p["refine_strength_end"],
                            refine_steps=p["refine_steps"], ref=ref, emit=emit, cancel=cancel, generator=gen,
                            supersample=p["texture_supersample"])


def run_distillation(request: JobRequest, emit: Emitter, cancel: CancelToken, asset_name: str,
                     on_step=None) -> Result:
    """A whole job of these stages: the teacher for ``mode`` (``guidance.load_job_teacher``), its
    condition (the prompt, or the reference view in image mode), the parameters' timestep
    schedule (``schedules.make_schedule`` with the teacher's alpha_bar_t and DreamTime's prior),
    :func:`distil_gaussians`, :func:`mesh_and_texture`. Result meta: mode, schedule, Gaussian and
    face counts, denoiser evaluations (``Guidance.evaluations``; ``view_evaluations`` counts each view of a batch), stage-1 timings (seconds), total seconds, camera radius. ``on_step``: see
    :func:`distil_gaussians`."""
    p = dict(request.params)
    device = request.device
    gen = torch.Generator().manual_seed(request.seed)
    radius = p["radius"]
    t0 = time.monotonic()
    teacher = load_job_teacher(p, p["mode"] == "image", device, cache=request.models, models_dir=request.models_dir)
    ref = None
    if p["mode"] == "image":
        ref = reference_views(request.inputs, p, teacher, radius, request.job_dir, device, emit)
        condition_teacher(teacher, ref, radius)
    else:
        teacher.encode_condition(prompt=p["prompt"], negative_prompt=p["negative_prompt"])
    schedule = make_schedule(p["timestep_schedule"], p["t_min"], p["t_max"], alphas_cumprod=teacher.alphas_cumprod,
                             **schedule_kwargs(p))
    timings: dict = {}
    model = distil_gaussians(p, teacher, ref, radius, schedule, emit, cancel, gen, device, timings, on_step)
    files, arrays, faces, output = mesh_and_texture(p, model, teacher, ref, radius, request.job_dir, emit, cancel, gen,
                                                    device, asset_name, request)
    return Result(files=files, arrays=arrays, meta={
        "mode": p["mode"], "references": len(ref["files"]) if ref is not None else 0,
        "timestep_schedule": p["timestep_schedule"], "gaussians": len(model), "faces": faces,
        "denoiser_evaluations": teacher.evaluations, "view_evaluations": teacher.view_evaluations,
        "stage1_seconds": {k: round(v, 4) for k, v in timings.items()},
        "total_seconds": round(time.monotonic() - t0, 2), "radius": radius, "output": output})
