"""DreamCraft3D (Sun et al. 2023, arXiv 2310.16818; public code github deepseek-ai/DreamCraft3D):
text -> reference image -> geometry sculpting -> texture boosting.

1. **Reference image** (text mode, ``stages.reference_image``): Stable Diffusion draws the prompt
   as one object on white (``StableDiffusionGuidance.text_to_image``: 512^2, CFG 7.5,
   ``reference_seed``), shown as a ``views`` preview; the object is cut out by rembg when it is
   installed with its weights, else by its difference to the white background (largest
   component, holes filled), and recentred as in image mode (``reference_drawn.png`` and
   ``reference.png`` in the job folder). ``reference_only`` stops after this step, so that the
   artist can keep the image (run again in image mode with it) or draw another
   (``reference_seed``). Image mode starts from the given image; with the oracle teacher its
   front render is the reference.
2. **Geometry sculpting**: Gaussians (``stages.distillation.distil_gaussians``; the public code's
   NeRF -> NeuS) with the hybrid SDS of eq. 6, Stable Diffusion at ``sd_weight`` plus
   Zero-1-to-3 at ``zero123_weight`` (the paper's mu = 2 as their ratio); the reference view's
   RGB, mask and depth correlation losses; t ~ U(0.7, 0.85) T annealed linearly over 200 steps to
   U(0.2, 0.5) T (``schedules.IntervalAnneal``, the configs' min/max_step_percent); views
   widening from the reference view to the whole orbit over 200 steps
   (``cameras.DebiasedAzimuths``, the configs' progressive_until). ``timestep_schedule`` picks
   another schedule for this stage and the geometry refinement (``dreamtime`` with its prior,
   ``dreamgaussian``, ``uniform``, ``dtc`` over [t_min, t_max]); ``interval`` is the configs'. Then the density-field mesh,
   atlas and baked texture, and a geometry refinement of the mesh's vertex offsets and texture
   with the same hybrid SDS at t ~ U(0.02, 0.5) T and 512 px (``stages.geometry.refine_mesh``;
   the code's DMTet stage).
3. **Texture boosting** (eq. 7, Algorithm 1): geometry frozen, Stable Diffusion only; per round
   (2): ``boost_views`` renders, each noised to t' (0.5, then 0.1) and restored by SDEdit (the
   base model in the first round, the DreamBooth model after); a DreamBooth LoRA
   (``stages.dreambooth``) fine-tuned on them with "a <token> <class>, <view>" and prior
   preservation; then the texture optimised with BSD (``guidance.bsd``), the VSD LoRA trained on
   the current renders as it goes. Both adapters sit on the teacher's one UNet and are removed
   when the job ends. The DreamBooth LoRA is saved as ``dreambooth_lora.safetensors``;
   ``reuse_lora`` (an earlier job's id) loads that job's instead of the first round's
   fine-tuning (Regenerate). With the
   oracle, its exact noise stands in for both LoRA terms (BSD becomes its SDS) and nothing is
   fine-tuned.

Stand-ins (``docs/methods.md``): Stable Diffusion 2.1 for DeepFloyd IF (gated, very large);
Gaussians -> mesh for NeRF -> NeuS -> DMTet; LoRA adapters for the code's full UNet copies.
"""
from __future__ import annotations

import re
import time
from pathlib import Path

import torch
from PIL import Image

from ..cameras import DebiasedAzimuths, OrbitSampler, orbit_cameras
from ..contracts import CancelToken, Emitter, JobRequest, Result, schedule_kwargs
from ..geometry.export import texture_to_uint8
from ..guidance import load_job_teacher, load_teacher
from ..guidance.oracle import draw_targets_antialiased
from ..images import MaskError
from ..render.mesh import TexturedMesh, render_mesh
from ..schedules import IntervalAnneal, Uniform, make_schedule, sds_weighting
from ..stages.distillation import (denoiser_evaluations, distil_gaussians, elevation_window, extract_textured_mesh,
                                   image_teacher_and_reference, prompt_teacher, write_refined_asset)
from ..stages.gaussians import sds_terms
from ..stages.geometry import refine_mesh
from ..stages.progress import contact_sheet, teacher_note
from ..stages.reference_image import draw_reference
from ..stages.reference_views import reference_views
from .specs.dreamcraft3d import DREAMBOOTH_LORA_FILE, DreamCraft3DSpec, boost_strengths, parse_interval


def class_word(p: dict) -> str:
    """DreamBooth's class word: ``class_name``, else the prompt's last word, else "object"."""
    if p["class_name"].strip():
        return p["class_name"].strip()
    words = re.findall(r"[A-Za-z][A-Za-z-]*", p["prompt"])
    return words[-1].lower() if words else "object"


def reused_lora(p: dict, job_dir) -> "Path | None":
    """The DreamBooth LoRA file of the job ``reuse_lora`` names (a sibling of ``job_dir``), or
    None when none is asked for.

    Raises:
        ValueError: that job has no ``dreambooth_lora.safetensors``.
    """
    if not p["reuse_lora"]:
        return None
    path = job_dir.parent / p["reuse_lora"] / DREAMBOOTH_LORA_FILE
    if not path.is_file():
        raise ValueError(f"job {p['reuse_lora']!r} has no DreamBooth LoRA on this server (a dreamcraft3d job with "
                         "Stable Diffusion saves dreambooth_lora.safetensors); leave reuse_lora empty to train one")
    return path


class DreamCraft3DPipeline(DreamCraft3DSpec):
    """Text -> reference image -> geometry sculpting -> texture boosting."""

    def run(self, request: JobRequest, emit: Emitter, cancel: CancelToken) -> Result:
        p = dict(request.params)
        device, job_dir = request.device, request.job_dir
        gen = torch.Generator().manual_seed(request.seed)
        radius = p["radius"]
        t0 = time.monotonic()
        clock: dict[str, float] = {}
        mark = time.monotonic()
        oracle = p["teacher"] == "oracle"
        weights = "tiny" if p["weights"] == "tiny" else "default"
        sd = None
        inputs = dict(request.inputs)
        files: dict = {}
        reused_lora(p, job_dir)  # a missing LoRA is refused before any work
        drawn_meta: dict = {}
        if p["mode"] == "text" and not oracle:
            sd = load_teacher("stable-diffusion", weights, device, cache=request.models, guidance_scale=p["sd_cfg"],
                              models_dir=request.models_dir)
            seed = request.seed if p["reference_seed"] is None else p["reference_seed"]
            files["reference_drawn.png"] = job_dir / "reference_drawn.png"
            try:
                drawn = draw_reference(sd, p["prompt"], p["negative_prompt"], size=p["reference_size"],
                                       steps=p["reference_steps"], guidance_scale=p["reference_cfg"], seed=seed,
                                       ref_size=p["ref_size"], threshold=p["mask_threshold"], cancel=cancel, emit=emit,
                                       job_dir=job_dir)
            except MaskError as exc:
                if not p["reference_only"]:
                    raise
                emit.log(str(exc))
                return Result(files=files, meta={"mode": "text", "reference_only": True, "masked": False,
                                                 "reference_seed": seed})
            emit.preview("views", {"rgba": contact_sheet(torch.from_numpy(drawn.drawn).permute(2, 0, 1)[None] / 255.0)},
                         {"phase": "reference", "seed": seed})
            inputs = {"image": drawn.rgba}
            drawn_meta = {"reference_seed": seed, "masked_by": drawn.masked_by}
        if p["reference_only"]:
            oracle_view = load_job_teacher(p, True, device, models_dir=request.models_dir) if oracle else None
            written = reference_views(inputs, p, oracle_view, radius, job_dir, device, emit)  # the recentred RGBAs
            files.update({name: job_dir / name for name in written["files"]})
            return Result(files=files, meta={"mode": p["mode"], "reference_only": True, "masked": True, **drawn_meta})
        zero123, ref = image_teacher_and_reference(p, inputs, request, emit)
        files.update({name: job_dir / name for name in ref["files"]})
        emit.preview("views", {"rgba": contact_sheet(ref["rgb"])}, {"phase": "reference"})
        clock["reference"] = round(time.monotonic() - mark, 2)
        sd = prompt_teacher(p, zero123, request, emit, p["prompt"], p["negative_prompt"], loaded=sd, absent=(
            "image mode without a prompt: Stable Diffusion does not take part (hybrid SDS is Zero-1-to-3 alone, and "
            "texture boosting is skipped); give a prompt to use it"))
        if p["lambda_normal_ref"] > 0:
            emit.log("lambda_normal_ref is set but no monocular normal estimator is installed: the reference normal "
                     "loss is skipped")
        if sd is zero123:  # the oracle for both: one evaluation of the summed weight (its score is exact)
            terms = [(zero123, p["zero123_weight"] + p["sd_weight"])]
        else:
            terms = [(zero123, p["zero123_weight"])] + ([(sd, p["sd_weight"])] if sd is not None else [])
        taught = teacher_note({"zero123": p["zero123_weight"], **({"stable-diffusion": p["sd_weight"]} if sd is not None
                                                                     else {})})

        # 2. Geometry sculpting: Gaussians, then the mesh and its refinement.
        mark = time.monotonic()
        schedule = self._schedule(p, "sculpt", zero123)
        azimuths = DebiasedAzimuths(p["azimuth_block"], p["start_azimuth"], p["widen_steps"], generator=gen)
        views = OrbitSampler(p["batch_size"], elevation_window(p), radius, p["fovy"], gen, azimuths)
        model = distil_gaussians(p, zero123, ref, radius, schedule, emit, cancel, gen, device,
                                 teachers=lambda _step: terms, cameras=views, stage="sculpt",
                                 note=lambda _step: taught)
        clock["sculpt"] = round(time.monotonic() - mark, 2)
        mark = time.monotonic()
        uvm, mesh, full = extract_textured_mesh(p, model, radius, job_dir, emit, cancel, device)
        files["gaussians.ply"] = job_dir / "gaussians.ply"
        clock["mesh"] = round(time.monotonic() - mark, 2)
        mark = time.monotonic()
        draw_targets_antialiased([t for t, _ in terms])
        white = torch.ones(3, device=device)
        geometry_t = self._schedule(p, "geometry", zero123)
        geometry_weighting = sds_weighting(geometry_t, None)
        drawn_t: list[int] = []

        def hybrid_sds(images, cams, step):
            drawn_t.append(geometry_t(step, p["geometry_iters"], gen))
            return sds_terms(terms, images, cams, drawn_t[-1], background=white, generator=gen,
                             weighting=geometry_weighting)

        mesh = refine_mesh(mesh, self._cameras(p, p["geometry_size"], gen, device), p["geometry_iters"], sds=hybrid_sds,
                           ref=ref, lr_offsets=p["lr_offsets"], lr_texture=p["geometry_texture_lr"],
                           lambda_rgb=p["fine_lambda_rgb"], lambda_mask=p["fine_lambda_mask"],
                           lambda_normal=p["lambda_normal"], lambda_laplacian=p["lambda_laplacian"], emit=emit,
                           cancel=cancel, generator=gen, stage="geometry",
                           note=lambda _step: f"t={drawn_t[-1]}, {taught}" if drawn_t else taught)
        clock["geometry"] = round(time.monotonic() - mark, 2)
        Image.fromarray(texture_to_uint8(mesh.texture)).save(job_dir / "texture_before_boost.png")
        files["texture_before_boost.png"] = job_dir / "texture_before_boost.png"

        # 3. Texture boosting.
        mark = time.monotonic()
        boost_meta: dict = {"rounds": 0}
        if p["boost_rounds"] > 0:
            if oracle:
                mesh = self._boost_with_oracle(p, mesh, zero123, ref, emit, cancel, gen, device)
                boost_meta = {"rounds": p["boost_rounds"], "teacher": "oracle"}
            elif sd is None:
                emit.log("texture boosting needs Stable Diffusion, which has no prompt here: give a prompt; the texture "
                         "is left as the geometry stage made it")
            else:
                mesh, boost_meta = self._boost(p, mesh, sd, ref, emit, cancel, gen, device, job_dir)
                if (job_dir / DREAMBOOTH_LORA_FILE).is_file():
                    files[DREAMBOOTH_LORA_FILE] = job_dir / DREAMBOOTH_LORA_FILE
        clock["boost"] = round(time.monotonic() - mark, 2)
        asset, arrays, output = write_refined_asset(job_dir, uvm, mesh, "dreamcraft3d", p, emit, cancel, request, full)
        files.update(asset)
        evaluations = denoiser_evaluations(zero123, sd)
        return Result(files=files, arrays=arrays, meta={
            "mode": p["mode"], "references": len(ref["files"]), "timestep_schedule": p["timestep_schedule"],
            "class_name": class_word(p),
            "gaussians": len(model), "faces": int(len(uvm.faces)),
            "denoiser_evaluations": evaluations, "seconds": clock, "boost": boost_meta,
            "total_seconds": round(time.monotonic() - t0, 2), "radius": radius, "output": output, **drawn_meta})

    @staticmethod
    def _schedule(p: dict, stage: str, teacher):
        """The timesteps of the sculpting (``stage="sculpt"``) or geometry refinement
        (``"geometry"``) SDS: with ``timestep_schedule=interval`` the configs' (t ~ U(t_start)
        annealed to U(t_end) over ``t_anneal_steps``; t ~ U(geometry_t)), else the named shared
        schedule over [t_min, t_max] with the teacher's alpha_bar_t and DreamTime's prior
        (``schedules.make_schedule``), run over each stage's own steps."""
        if p["timestep_schedule"] == "interval":
            if stage == "sculpt":
                return IntervalAnneal(parse_interval(p, "t_start"), parse_interval(p, "t_end"), p["t_anneal_steps"])
            return Uniform(*parse_interval(p, "geometry_t"))
        return make_schedule(p["timestep_schedule"], p["t_min"], p["t_max"], alphas_cumprod=teacher.alphas_cumprod,
                             **schedule_kwargs(p))

    @staticmethod
    def _cameras(p: dict, side: int, gen: torch.Generator, device: str):
        """``batch_size`` random orbit views of ``side`` px per step in the elevation window, any
        azimuth."""
        sampler = OrbitSampler(p["batch_size"], elevation_window(p), p["radius"], p["fovy"], gen, device=device)
        return lambda step: sampler(step, side)

    def _boost_with_oracle(self, p, mesh: TexturedMesh, oracle, ref, emit, cancel, gen, device) -> TexturedMesh:
        """Texture boosting with the oracle: its exact noise replaces both LoRA terms, so BSD is
        its SDS; the rounds keep their schedule and learning rates."""
        schedule = IntervalAnneal(parse_interval(p, "boost_t_start"), parse_interval(p, "boost_t_end"),
                                  p["boost_rounds"] * p["boost_iters"])
        white = torch.ones(3, device=device)
        for r in range(p["boost_rounds"]):
            def bsd(images, cams, step, offset=r * p["boost_iters"]):
                t = schedule(offset + step, 0, gen)
                return p["bsd_weight"] * oracle.sds(images, cams, t, background=white, generator=gen).loss
            mesh = self._texture_round(p, mesh, bsd, ref, emit, cancel, gen, device, f"boost {r + 1}")
        return mesh

    def _texture_round(self, p, mesh, bsd, ref, emit, cancel, gen, device, stage: str) -> TexturedMesh:
        return refine_mesh(mesh, self._cameras(p, p["boost_size"], gen, device), p["boost_iters"], sds=bsd, ref=ref,
                           lr_offsets=0.0, lr_texture=p["boost_texture_lr"], lambda_rgb=p["fine_lambda_rgb"],
                           lambda_mask=p["fine_lambda_mask"], lambda_normal=0.0, lambda_laplacian=0.0, emit=emit,
                           cancel=cancel, generator=gen, stage=stage)

    def _boost(self, p, mesh: TexturedMesh, sd, ref, emit, cancel, gen, device, job_dir):
        """Texture boosting with a personalised Stable Diffusion (Algorithm 1)."""
        from ..guidance.bsd import BootstrappedScoreDistillation, personal_prompts
        from ..guidance.stable_diffusion import VIEW_SUFFIXES, view_index
        from ..guidance.lora import add_lora, load_lora, save_lora, use_adapter
        from ..stages.dreambooth import finetune_lora

        cls_word, token = class_word(p), p["token"].strip() or "sks"
        unet = sd.parts.unet
        strengths = boost_strengths(p)
        schedule = IntervalAnneal(parse_interval(p, "boost_t_start"), parse_interval(p, "boost_t_end"),
                                  p["boost_rounds"] * p["boost_iters"])
        window = elevation_window(p)
        k = p["boost_views"]
        elevations = window[0] + (window[1] - window[0]) * torch.rand(k, generator=gen)
        cams = orbit_cameras(elevations, torch.arange(k) * (360.0 / k), p["radius"], p["fovy"], p["boost_size"],
                             p["boost_size"]).to(device)
        views = view_index(elevations, torch.arange(k) * (360.0 / k))
        personal = personal_prompts(token, cls_word)
        prompts = [personal[int(v)] for v in views]
        losses: list[list[float]] = []
        reused = bool(p["reuse_lora"])
        saved = reused_lora(p, job_dir)
        try:
            if reused:
                load_lora(unet, "dreambooth", saved)
                emit.log(f"DreamBooth LoRA of job {p['reuse_lora']} loaded: the first round's fine-tuning is skipped")
            else:
                add_lora(unet, "dreambooth", p["dreambooth_rank"], seed=1)
            add_lora(unet, "lora", p["dreambooth_rank"], seed=2)
            prior = None
            if p["prior_images"] > 0 and not (reused and p["boost_rounds"] == 1):
                # DreamBooth's class images: the base model's own drawings of "a <class>, <view>"
                # from views spread around the orbit.
                n = p["prior_images"]
                prior_azimuths = torch.arange(n) * (360.0 / n)
                prior_cams = orbit_cameras(torch.zeros(n), prior_azimuths, p["radius"], p["fovy"], p["boost_size"],
                                           p["boost_size"]).to(device)
                sd.encode_condition(prompt=f"a {cls_word}", negative_prompt=p["negative_prompt"])
                with use_adapter(unet, None):
                    drawn = sd.refine(torch.full((n, 3, p["boost_size"], p["boost_size"]), 0.5, device=device),
                                      prior_cams, 1.0, p["reference_steps"], generator=gen, check=cancel.check)
                prior = (drawn, [f"a {cls_word}, {VIEW_SUFFIXES[int(v)]}"
                                 for v in view_index(torch.zeros(n), prior_azimuths)])
            bsd = BootstrappedScoreDistillation(sd, p["prompt"], token, cls_word, guidance_scale=p["bsd_cfg"],
                                                lora_lr=p["lora_lr"])
            for r in range(p["boost_rounds"]):
                strength = strengths[min(r, len(strengths) - 1)]
                with torch.no_grad():
                    renders = render_mesh(mesh, cams, background=1.0).rgb.permute(0, 3, 1, 2)
                sd.encode_condition(prompt=p["prompt"], negative_prompt=p["negative_prompt"])
                with use_adapter(unet, None if r == 0 and not reused else "dreambooth"):
                    restored = sd.refine(renders, cams, strength, p["reference_steps"], generator=gen,
                                         check=cancel.check)
                emit.preview("views", {"rgba": contact_sheet(restored)}, {"phase": f"boost {r + 1}", "strength": strength})
                if not (r == 0 and reused) and p["dreambooth_steps"] > 0:
                    steps = p["dreambooth_steps"]
                    losses.append(finetune_lora(
                        sd, "dreambooth", restored, prompts, steps, lr=p["dreambooth_lr"], prior=prior,
                        prior_weight=p["prior_weight"], generator=gen, check=cancel.check,
                        on_step=lambda s, loss, r=r: emit.progress(f"dreambooth {r + 1}", s, steps, loss,
                                                                   message=f"round {r + 1}, t'={strength}")))

                def loss(images, cams_, step, offset=r * p["boost_iters"]):
                    return p["bsd_weight"] * bsd.loss(images, cams_, schedule(offset + step, 0, gen), gen)
                mesh = self._texture_round(p, mesh, loss, ref, emit, cancel, gen, device, f"boost {r + 1}")
            save_lora(unet, "dreambooth", job_dir / DREAMBOOTH_LORA_FILE)
            sd.evaluations += bsd.evaluations
        finally:
            present = [name for name in ("dreambooth", "lora") if name in (getattr(unet, "peft_config", None) or {})]
            if present:
                unet.delete_adapters(present)
        return mesh, {"rounds": p["boost_rounds"], "class_name": cls_word, "token": token,
                      "dreambooth_loss": [[round(x[0], 4), round(x[-1], 4)] for x in losses if x]}
