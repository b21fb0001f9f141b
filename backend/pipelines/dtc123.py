"""DTC123 (Yi et al., CVPR 2024, arXiv 2404.04562): image-to-3D with a diffusion time-step
curriculum that moves teacher and student together from coarse to fine.

The structure is the paper's (section 3; its code is unreleased):

- **Curriculum** (``schedules.DTCCurriculum``): stages coarse, middle, fine, each with a
  timestep band that moves down; within a stage t anneals from the band's top to its bottom,
  drawn with local randomness and never below the band.
- **Progressive student**: coarse, Gaussians rendered at ``coarse_size`` without densification
  (a low-capacity student); middle, at ``middle_size`` with densification; fine, the extracted
  mesh's per-vertex offsets and texture at ``fine_size`` (``stages.geometry.refine_mesh``,
  our stand-in for the paper's DMTet stage with a progressive tetrahedral grid), regularised by
  normal consistency and a Laplacian.
- **Teacher hand-over** (``schedules.TeacherHandover``): Zero-1-to-3 alone in the coarse stage;
  both in the middle with Stable Diffusion's weight ramping 0 -> ``sd_weight``; Stable Diffusion
  dominant in the fine stage with Zero-1-to-3 at ``zero123_fine_weight``. Each keeps its own
  CFG scale (``zero123_cfg``, ``sd_cfg``). Without a prompt, ``class_name`` gives Stable
  Diffusion "a photo of a <class>"; with neither its weight stays 0 and the job log says so.
- **Reference-view restoration** in every stage: the reference view's RGB and mask losses
  (``lambda_rgb``/``lambda_mask`` on Gaussians, ``fine_lambda_*`` on the mesh), and with
  ``lambda_depth``/``fine_lambda_depth`` > 0 the correlation of the render's inverse depth with
  DPT-Hybrid's estimate (``guidance.depth``) when its weights are present locally; without
  them the run logs that the loss is skipped.
- **Camera de-biasing** (our reading, ``cameras.DebiasedAzimuths``): the views widen from the
  reference view to the whole orbit over ``widen_fraction`` of the coarse stage, and every
  block of ``azimuth_block`` steps visits each sector of the circle once.
- **Prompt augmentation**: view-dependent suffixes on Stable Diffusion's prompt (front, side,
  back, overhead view); the paper enriches prompts with an LLM, none runs here: an enriched
  prompt can be pasted as ``prompt``.

The job folder keeps the Gaussians at the end of each Gaussian stage (``gaussians_coarse.ply``,
``gaussians_middle.ply``; ``gaussians.ply`` is the model the mesh came from) and
``curriculum.json``: per step the stage, t and each teacher's weight
(``splatsmith schedules show --trace JOB/curriculum.json`` plots it); the result meta carries a
per-stage summary of it.

Numbers the paper does not publish, chosen here: the bands 980-650 / 650-300 / 300-20 (contiguous,
so the annealed value is monotone through the whole run), widths 200/150/100, the hand-over
weights, equal stage lengths in ``default`` (1000 steps each, "thousands of iterations on a
single GPU"); see ``docs/methods.md``.
"""
from __future__ import annotations

import json
import time

import torch

from ..cameras import DebiasedAzimuths, OrbitSampler
from ..contracts import CancelToken, Emitter, JobRequest, Result
from ..geometry.export import write_ply
from ..guidance.oracle import draw_targets_antialiased
from ..schedules import CurriculumStage, DTCCurriculum, TeacherHandover
from ..stages.distillation import (denoiser_evaluations, distil_gaussians, elevation_window, extract_textured_mesh,
                                   image_teacher_and_reference, prompt_teacher, write_refined_asset)
from ..stages.gaussians import expon_lr, sds_terms
from ..stages.geometry import refine_mesh
from ..stages.progress import teacher_note
from .specs.dtc123 import STAGES, DTC123Spec, curriculum_numbers


def build_curriculum(p: dict) -> tuple[DTCCurriculum, TeacherHandover, int]:
    """The request's curriculum over all three stages' steps, its hand-over and the total step
    count. A stage with 0 steps keeps its band but takes no share of training (its 'until'
    equals the previous stage's)."""
    bands, widths = curriculum_numbers(p)
    lengths = [p[f"{s}_iters"] for s in STAGES]
    total = max(sum(lengths), 1)
    stages, done = [], 0
    for k, (name, (top, bottom), width, n) in enumerate(zip(STAGES, bands, widths, lengths)):
        done += n
        stages.append(CurriculumStage(name, 1.0 if k == len(STAGES) - 1 else done / total, top, bottom, width))
    curriculum = DTCCurriculum(tuple(stages))
    handover = TeacherHandover(curriculum, {
        "zero123": ((1.0, 1.0), (1.0, 1.0), (p["zero123_fine_weight"],) * 2),
        "stable-diffusion": ((0.0, 0.0), (0.0, p["sd_weight"]), (p["sd_weight"],) * 2),
    })
    return curriculum, handover, total


class DTC123Pipeline(DTC123Spec):
    """Image-to-3D with a diffusion time-step curriculum for teacher and student."""

    def run(self, request: JobRequest, emit: Emitter, cancel: CancelToken) -> Result:
        p = dict(request.params)
        device = request.device
        gen = torch.Generator().manual_seed(request.seed)
        radius = p["radius"]
        t0 = time.monotonic()
        clock: dict[str, float] = {}
        zero123, ref = image_teacher_and_reference(p, request.inputs, request, emit)
        # Without a prompt, the class's neutral prompt (the paper's LLM enrichment is left to the user).
        sd_prompt = p["prompt"].strip() or (f"a photo of a {p['class_name'].strip()}" if p["class_name"].strip() else "")
        sd = prompt_teacher(p, zero123, request, emit, sd_prompt, absent=(
            "no prompt and no class_name: Stable Diffusion does not take part (its weight stays 0); give a prompt or "
            "the object's class to let it teach the texture"))
        sd_prompt = "(oracle)" if sd is zero123 else (sd_prompt if sd is not None else "")
        if sd is zero123 and p["oracle_zero123_blur"] > 0:  # two oracles: Zero-1-to-3's knows a blurred texture
            zero123 = zero123.with_blurred_texture(p["oracle_zero123_blur"])
        curriculum, handover, total = build_curriculum(p)
        trace: list[dict] = []

        def weights_at(step: int) -> dict[str, float]:
            w = handover.at(step, total)
            if sd is None:
                w["stable-diffusion"] = 0.0
            return w

        def teachers_at(offset: int):
            def terms(step: int):
                w = weights_at(offset + step)
                out = [(zero123, w["zero123"])]
                if sd is not None:
                    out.append((sd, w["stable-diffusion"]))
                return out
            return terms

        def schedule_at(offset: int):
            def schedule(step: int, _iters: int, generator=None) -> int:
                g = offset + step
                t = curriculum(g, total, generator)
                w = weights_at(g)
                trace.append({"step": g, "stage": curriculum.stage(g, total)[1].name, "t": t,
                              "zero123": round(w["zero123"], 4), "stable_diffusion": round(w["stable-diffusion"], 4)})
                return t
            return schedule

        def note_at(offset: int, with_t: bool = False):
            return lambda step: teacher_note(weights_at(offset + step), trace[-1]["t"] if with_t and trace else None)

        widen = int(round(p["widen_fraction"] * p["coarse_iters"]))
        azimuths = DebiasedAzimuths(p["azimuth_block"], p["start_azimuth"], widen, generator=gen)
        views = OrbitSampler(p["batch_size"], elevation_window(p), radius, p["fovy"], gen, azimuths)
        model = None
        offset = 0
        for name in ("coarse", "middle"):
            iters = p[f"{name}_iters"]
            if iters == 0:
                continue
            mark = time.monotonic()
            until = min(p[f"{name}_densify_until"], iters)
            # One student across the Gaussian stages: the position learning rate continues its
            # decay, and the reference losses' warm-up is not restarted after the coarse stage.
            stage_p = dict(p, iters=iters, densify_until=until,
                           densify_from=p["densify_from"] if until else iters + 1,
                           lr_means=expon_lr(offset, p["lr_means_steps"], p["lr_means"], max(p["lr_means_final"], 1e-12)),
                           lr_means_steps=max(p["lr_means_steps"] - offset, 1),
                           reference_warmup=p["reference_warmup"] and offset == 0)
            model = distil_gaussians(stage_p, zero123, ref, radius, schedule_at(offset), emit, cancel, gen, device,
                                     teachers=teachers_at(offset), size=lambda _s, side=p[f"{name}_size"]: side,
                                     cameras=lambda s, side, o=offset: views(o + s, side), model=model, stage=name,
                                     note=note_at(offset))
            offset += iters
            write_ply(request.job_dir / f"gaussians_{name}.ply", model)
            clock[name] = round(time.monotonic() - mark, 2)
        mark = time.monotonic()
        uvm, mesh, full = extract_textured_mesh(p, model, radius, request.job_dir, emit, cancel, device)
        clock["mesh"] = round(time.monotonic() - mark, 2)
        mark = time.monotonic()
        side = p["fine_size"]
        fine_views = OrbitSampler(p["batch_size"], elevation_window(p), radius, p["fovy"], gen, azimuths, device)

        def sample_cameras(step: int):
            return fine_views(offset + step, side)

        draw_targets_antialiased([zero123, sd])
        fine_schedule = schedule_at(offset)
        fine_terms = teachers_at(offset)
        white = torch.ones(3, device=device)

        def sds(images, cams, step):
            t = fine_schedule(step, p["fine_iters"], gen)
            return sds_terms(fine_terms(step), images, cams, t, background=white, generator=gen)

        refined = refine_mesh(mesh, sample_cameras, p["fine_iters"], sds=sds, ref=ref, lr_offsets=p["lr_offsets"],
                              lr_texture=p["fine_texture_lr"], lambda_rgb=p["fine_lambda_rgb"],
                              lambda_mask=p["fine_lambda_mask"], lambda_normal=p["lambda_normal"],
                              lambda_laplacian=p["lambda_laplacian"], lambda_depth=p["fine_lambda_depth"], emit=emit,
                              cancel=cancel, generator=gen,
                              note=note_at(offset, with_t=True))
        clock["fine"] = round(time.monotonic() - mark, 2)
        files, arrays, output = write_refined_asset(request.job_dir, uvm, refined, "dtc123", p, emit, cancel, request,
                                                    full)
        files.update({name: request.job_dir / name for name in ref["files"]})
        (request.job_dir / "curriculum.json").write_text(json.dumps(
            {"stages": [dict(s.__dict__) for s in curriculum.stages], "total": total, "steps": trace}))
        files["curriculum.json"] = request.job_dir / "curriculum.json"
        evaluations = denoiser_evaluations(zero123, sd)
        return Result(files=files, arrays=arrays, meta={
            "mode": "image", "references": len(ref["files"]), "stable_diffusion_prompt": sd_prompt, "gaussians": len(model),
            "faces": int(len(uvm.faces)), "denoiser_evaluations": evaluations, "seconds": clock,
            "curriculum": summarise(trace), "total_seconds": round(time.monotonic() - t0, 2), "radius": radius,
            "output": output})


def summarise(trace: list[dict]) -> dict:
    """Per stage: steps, first/last t, t range, and each teacher's weight at its first and last
    step."""
    out: dict[str, dict] = {}
    for row in trace:
        s = out.setdefault(row["stage"], {"steps": 0, "t_first": row["t"], "t_min": row["t"], "t_max": row["t"],
                                          "zero123": [row["zero123"], row["zero123"]],
                                          "stable_diffusion": [row["stable_diffusion"], row["stable_diffusion"]]})
        s["steps"] += 1
        s["t_last"] = row["t"]
        s["t_min"], s["t_max"] = min(s["t_min"], row["t"]), max(s["t_max"], row["t"])
        s["zero123"][1], s["stable_diffusion"][1] = row["zero123"], row["stable_diffusion"]
    return out
