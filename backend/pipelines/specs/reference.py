"""The parameters of ``stages.reference_image`` (a reference image drawn from a prompt), which the
text modes of DreamCraft3D and IM-3D declare alike, and their check. No torch."""
from __future__ import annotations

from ..base import Param, ParamError


def reference_params() -> dict[str, Param]:
    """The shared entries, a new dict each call: seed, size, steps and CFG of the drawing (Stable
    Diffusion 2.1 base draws 512^2; 7.5 is diffusers' ``StableDiffusionPipeline`` default and
    DreamCraft3D's reference images') and the white-background mask's threshold."""
    return {
        "reference_seed": Param("int", None, "seed of the reference image (unset: the job's seed)", min=0,
                                max=2**31 - 1),
        "reference_size": Param("int", 512, "side of the drawn reference image, pixels (Stable Diffusion 2.1 base: "
                                "512; a multiple of 8)", min=32, max=1024),
        "reference_steps": Param("int", 50, "denoising steps of the reference image", min=1, max=500),
        "reference_cfg": Param("float", 7.5, "classifier-free guidance of the reference image (diffusers' default)",
                               min=0, max=100),
        "mask_threshold": Param("float", 0.04, "the drawn reference (and a generator's views) is the object where it "
                                "differs from the white background by more than this (0-1 of full scale); a matting "
                                "model (rembg) is used instead when installed with its weights", min=0.001, max=0.5),
    }


#: The names of :func:`reference_params` that apply in text mode only.
TEXT_ONLY = ("reference_seed", "reference_size", "reference_steps", "reference_cfg")


def check_reference(params: dict) -> None:
    """Raises ParamError when ``reference_size`` is not a multiple of 8 (the VAE's downsampling)."""
    if params["reference_size"] % 8:
        raise ParamError(f"'reference_size' must be a multiple of 8; got {params['reference_size']}")
