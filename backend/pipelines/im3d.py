"""IM-3D (Melas-Kyriazi et al. 2024, arXiv 2402.08682): multi-view generation, robust Gaussian
reconstruction, iterated. No score distillation: a generator makes K views of the object, 3D
Gaussians are fitted to them with image-level losses that tolerate the views' small
inconsistencies, and "render the Gaussians -> noise the renders -> regenerate -> refit" runs
``loops`` more times; then the usual mesh, atlas and texture.

The paper's set-up (section 3, appendix A.1), every number a parameter
(``specs/im3d.py``): K = 16 views at 512 x 512, azimuths 360/K apart on one orbit at a fixed
distance, its elevation the input image's (``elevation``; the paper estimates it from the first
frame; ``view_elevations`` offsets the views from it, cycled: our wavy orbit); 5000 Gaussians
at the centre, every view rendered every iteration, loss 10 LPIPS +
0.2 (1 - MS-SSIM) + 1 mask (``stages.reconstruction.robust_image_loss``), densification every
50 steps, 1200 steps; every 500 steps the K views are rendered, noised and regenerated with 10
solver steps, twice; the first generation about 40 denoiser evaluations, the asset at most
about 80.

The generator is :class:`~backend.guidance.multiview.MultiViewGenerator`: Emu Video, the
paper's, is closed; here Zero-1-to-3 (DreamGaussian's weights) conditioned on the reference image
and each view's camera, the oracle (exact renders), or the tiny models. Text mode first draws the
reference image with Stable Diffusion (``stages.reference_image``: one object on white, cut out
and recentred; ``reference_seed``), shown as a preview. The generated views' masks are where
they differ from the white background (``mask_threshold``).

Several reference images (image mode: the front and ``image_1`` .. ``image_7`` with their
``reference_views``, ``stages.reference_views``): Zero-1-to-3 conditions each generated view on
the reference nearest to its camera (the relative camera from that one), and the given views are
fitted beside the generated ones at their own cameras, kept as they are while the generated ones
are regenerated each loop, and baked into the texture with them (our choice: the paper takes one
image). With one image the fit is the paper's, the generated views alone.

The job folder keeps the Gaussians of every fit before its regeneration
(``gaussians_fit1.ply``, ...; the last fit is ``gaussians.ply``), so each loop's gain can be
measured. ``oracle_jitter`` perturbs the oracle's first generation (its cameras jittered) to
verify that the loop repairs inconsistent views.

Our choices where the paper gives none: the regeneration strengths (``regen_strength`` 0.5 then
0.3: the share of the schedule re-run; 10 solver steps run at strength s means a schedule of
10/s steps), and the ``fast`` preset's visual-hull initialisation (``init=hull``: 600 CPU steps
from a ball at the centre do not reach the object's silhouette) and wavy orbit
(``view_elevations`` 0, +25, 0, -25 cycled over 16 views: the paper's flat orbit never sees the
top or the bottom; on the oracle, held-out views within +-25 degrees, the textured mesh reached
23.0 dB with 8 flat views, 25.6 with 8 at +-20, 26.1 with 12 and 26.8 with 16 at 0/+-25),
measured on the oracle with a perturbed first generation (``bench/im3d.py --loop-check``,
``docs/methods.md``).
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from ..cameras import Cameras, orbit_cameras
from ..geometry.export import write_ply
from ..guidance import load_job_teacher, load_teacher
from ..guidance.base import sdedit_start_step
from ..guidance.multiview import MultiViewGenerator
from ..render.gaussians import render
from ..stages.gaussians import preview_gaussians
from ..stages.asset_output import write_asset
from ..stages.mesh_export import bake_from_views, export_mesh
from ..stages.progress import PreviewThrottle, contact_sheet
from ..stages.reference_image import draw_reference, on_white
from ..stages.reconstruction import GaussianFit, Views, calibration_cameras
from ..stages.reference_views import reference_views
from ..contracts import CancelToken, Emitter, JobRequest, Result
from .specs.im3d import IM3DSpec, regen_strengths, view_elevations


def masked_views(images: torch.Tensor, threshold: float) -> torch.Tensor:
    """RGBA float [K, H, W, 4]: the views with alpha 1 where a pixel differs from white by more
    than ``threshold`` in any channel (the generators draw the object on white)."""
    rgb = images.permute(0, 2, 3, 1)
    alpha = ((1.0 - rgb).amax(-1, keepdim=True) > threshold).float()
    return torch.cat([rgb, alpha], -1)


def fixed_views(given: dict, size: int) -> Views:
    """The given reference views (``stages.reference_views``) as fitting views of side ``size``:
    RGBA float [N, size, size, 4] (their RGB over white, their alpha) at their own cameras."""
    rgb = F.interpolate(given["rgb"], (size, size), mode="bilinear", align_corners=False, antialias=True)
    alpha = F.interpolate(given["alpha"], (size, size), mode="bilinear", align_corners=False, antialias=True)
    return Views(given["camera"].resized(size, size), torch.cat([rgb, alpha], 1).permute(0, 2, 3, 1).clamp(0, 1))


def with_fixed(views: Views, fixed: Views | None) -> Views:
    """The generated ``views`` and, after them, the given ones (``fixed``; None: none): with
    several reference images IM-3D fits the given views beside the generated ones, which are
    regenerated each loop while the given ones stay (our choice; the paper takes one image)."""
    if fixed is None:
        return views
    return Views(Cameras.cat([views.cameras, fixed.cameras.to(views.cameras.c2w.device)]),
                 torch.cat([views.images, fixed.images.to(views.images.device, views.images.dtype)]))


def solver_steps(emit: Emitter, cancel: CancelToken, stage: str, total: int, message: str):
    """A solver's per-step callback (``check=``): cancellation, then progress ``stage`` step/total."""
    done = [0]

    def check() -> None:
        cancel.check()
        emit.progress(stage, done[0], total, message=message)
        done[0] += 1
    return check


def regen_schedule(regen_steps: int, strength: float) -> int:
    """The length n of the DDIM schedule a regeneration runs at ``strength`` so that it takes
    ``regen_steps`` denoiser steps: SDEdit runs ceil(n * strength) of n
    (``guidance.base.sdedit_start_step``), so n = floor(regen_steps / strength) (at least
    ``regen_steps``; products within 1e-6 of a whole number count as that number)."""
    return max(regen_steps, int(math.floor(regen_steps / strength + 1e-6)))


class IM3DPipeline(IM3DSpec):
    """Image- or text-to-3D by multi-view generation and robust Gaussian reconstruction, iterated."""

    def run(self, request: JobRequest, emit: Emitter, cancel: CancelToken) -> Result:
        p = dict(request.params)
        device = request.device
        gen = torch.Generator().manual_seed(request.seed)
        clock: dict[str, float] = {}
        t0 = mark = time.monotonic()
        evaluations = view_evaluations = 0

        def lap(name: str) -> None:
            nonlocal mark
            now = time.monotonic()
            clock[name] = round(now - mark, 3)
            mark = now

        oracle = p["teacher"] == "oracle"
        drawn_meta = None
        teacher = load_job_teacher(dict(p, view_prompts=False), True, device, cache=request.models,
                                   models_dir=request.models_dir)
        size, ref_size = p["view_size"], p["ref_size"]
        given = None  # the given reference views (image mode, or the oracle's renders at them)
        if oracle or p["mode"] == "image":
            given = reference_views(request.inputs, p, teacher, p["radius"], request.job_dir, device, emit)
            reference = given["rgb"]
        else:
            sd = load_teacher("stable-diffusion", "tiny" if p["weights"] == "tiny" else "default", device,
                              cache=request.models, models_dir=request.models_dir)
            seed = request.seed if p["reference_seed"] is None else p["reference_seed"]
            drawn = draw_reference(sd, p["prompt"], p["negative_prompt"], size=p["reference_size"],
                                   steps=p["reference_steps"], guidance_scale=p["reference_cfg"], seed=seed,
                                   ref_size=ref_size, threshold=p["mask_threshold"], cancel=cancel, emit=emit,
                                   job_dir=request.job_dir)
            evaluations += sd.evaluations
            view_evaluations += sd.view_evaluations
            reference = on_white(drawn.rgba, device)
            drawn_meta = {"seed": seed, "masked_by": drawn.masked_by}
            lap("reference")
        emit.preview("views", {"rgba": contact_sheet(reference)}, {"phase": "reference"})

        k = p["views"]
        elevations = p["elevation"] + torch.tensor(view_elevations(p))
        azimuths = torch.arange(k) * (360.0 / k)
        cams = orbit_cameras(elevations, azimuths, p["radius"], p["fovy"], size, size).to(device)
        generator = MultiViewGenerator(teacher, p["solver"])
        # Several given views: each generated view is conditioned on the nearest one (guidance.zero123).
        condition = {"image": reference, "elevation": given["elevations"] if given else p["elevation"],
                     "azimuth": given["azimuths"] if given else 0.0, "radius": p["radius"]}
        emit.progress("generate", 0, p["gen_steps"], message=f"{k} views")
        gen_cams = cams
        if oracle and p["oracle_jitter"] > 0:
            jitter = (torch.rand(2, k, generator=gen) * 2 - 1) * p["oracle_jitter"]
            gen_cams = orbit_cameras(elevations + jitter[0], azimuths + jitter[1], p["radius"], p["fovy"], size,
                                     size).to(device)
        images = generator.generate(condition, gen_cams, p["gen_steps"], generator=gen,
                                    check=solver_steps(emit, cancel, "generate", p["gen_steps"], f"{k} views"))
        emit.progress("generate", p["gen_steps"], p["gen_steps"], message=f"{k} views")
        emit.preview("views", {"rgba": contact_sheet(images)}, {"phase": "generate"})
        lap("generate")
        fixed = fixed_views(given, size) if given is not None and len(given["files"]) > 1 else None
        views = with_fixed(Views(cams, masked_views(images, p["mask_threshold"])), fixed)
        # The reference fills 80% of its view (images.recenter), so the object lies within
        # +-radius tan(fovy / 2) of the centre, as every method's does: the hull and the mesh stay there.
        extent = p["radius"] * math.tan(math.radians(p["fovy"]) / 2)
        fit = GaussianFit(views, p, gen, emit, init=p["init"], models_dir=request.models_dir, reach=extent)
        strengths = regen_strengths(p)
        iters, every = p["iters"], p["regen_every"]
        loop = 0
        previews = PreviewThrottle()
        for step in range(1, iters + 1):
            cancel.check()
            loss = fit.step(step, iters)
            emit.progress("fit", step, iters, loss, message=f"loop {loop}, {len(fit.model)} Gaussians")
            if previews.due(step, iters):
                emit.preview("gaussians", preview_gaussians(fit.model), {"step": step, "count": len(fit.model)})
            if loop < len(strengths) and step % every == 0 and step < iters:
                lap(f"fit_{loop + 1}")
                write_ply(request.job_dir / f"gaussians_fit{loop + 1}.ply", fit.model)
                with torch.no_grad():
                    renders = render(fit.model, cams, background=1.0).rgb.permute(0, 3, 1, 2)
                strength = strengths[loop]
                schedule = regen_schedule(p["regen_steps"], strength)
                runs = schedule - sdedit_start_step(schedule, strength)
                images = generator.regenerate(renders.clamp(0, 1), cams, strength, schedule, generator=gen,
                                              check=solver_steps(emit, cancel, f"regenerate {loop + 1}", runs,
                                                                 f"{k} views, strength {strength:g}"))
                emit.progress(f"regenerate {loop + 1}", runs, runs, message=f"{k} views, strength {strength:g}")
                fit.views = with_fixed(Views(cams, masked_views(images, p["mask_threshold"])), fixed)
                loop += 1
                emit.preview("views", {"rgba": contact_sheet(images)}, {"phase": f"regenerate {loop}"})
                lap(f"regenerate_{loop}")
        lap(f"fit_{loop + 1}")
        model = fit.model
        write_ply(request.job_dir / "gaussians.ply", model)
        cancel.check()
        final = fit.views
        bake = bake_from_views(final.cameras, final.images[..., :3], final.images[..., 3], p["texture_size"], cancel)
        exported = export_mesh(model, bake, resolution=p["mesh_resolution"], density_threshold=p["density_threshold"],
                               max_faces=p["max_faces"], calibration_cameras=calibration_cameras(final.cameras),
                               texture_size=p["texture_size"], unwrap_time_limit=p["unwrap_time_limit"], emit=emit,
                               cancel=cancel, bounds=(np.full(3, -extent), np.full(3, extent)))
        files, arrays, output = write_asset(request.job_dir, exported.uvm, exported.texture, "im3d", p, emit, cancel,
                                            full=exported.extracted.full, request=request)
        files["gaussians.ply"] = request.job_dir / "gaussians.ply"
        if drawn_meta is not None:
            files.update({name: request.job_dir / name for name in ("reference.png", "reference_drawn.png")})
        elif given is not None:
            files.update({name: request.job_dir / name for name in given["files"]})
        lap("mesh")
        evaluations += generator.evaluations
        view_evaluations += teacher.view_evaluations
        return Result(files=files, arrays=arrays, meta={
            "mode": p["mode"], "views": k, "references": len(given["files"]) if given is not None else 1,
            "fitted_views": len(fit.views.cameras), "view_elevations": [round(float(e), 3) for e in elevations], "loops": loop, "denoiser_evaluations": evaluations,
            "view_evaluations": view_evaluations,
            "gaussians": len(model), "faces": int(len(exported.uvm.faces)), "seconds": clock,
            "total_seconds": round(time.monotonic() - t0, 2), "radius": p["radius"], "output": output,
            **({"reference": drawn_meta} if drawn_meta is not None else {})})
