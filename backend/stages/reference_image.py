"""A reference image drawn from a prompt: the first step of the text modes of DreamCraft3D (Sun et
al. 2023, section 3: "we first generate a high-quality 2D image from the text prompt") and of
IM-3D (Melas-Kyriazi et al. 2024, section 3: text-to-3D starts from a generated image).

1. Stable Diffusion draws the prompt asking for one object on a plain white background
   (:data:`OBJECT_ON_WHITE`, and :data:`AVOID` added to the negative prompt), through diffusers'
   own ``StableDiffusionPipeline`` built from the teacher's components
   (``StableDiffusionGuidance.text_to_image``: no second copy of the weights).
2. The object's mask: a matting model's when one is installed with its weights on this machine
   (rembg with U^2-Net, ``images.rembg_available``); else the pixels that differ from white by
   more than ``threshold`` in some channel (the object is drawn on white), cleaned up as
   :func:`mask_from_white` says.
3. The object recentred and rescaled as image mode does (``images.recenter``).

The drawing itself is kept (``reference_drawn.png``) beside the recentred RGBA reference
(``reference.png``) in the job folder.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..contracts import CancelToken, Emitter
from ..geometry.export import texture_to_uint8
from ..images import MaskError, rembg_available, recenter

#: Appended to the prompt: one object, whole, on the plain white background the mask relies on.
OBJECT_ON_WHITE = "a single object, whole and centred, isolated on a plain white background"
#: Appended to the negative prompt.
AVOID = "busy background, scenery, several objects, cropped, cut off, shadow"


@dataclass
class DrawnReference:
    """A reference image drawn from a prompt.

    Attributes:
        drawn: the drawing, uint8 [S, S, 3] (S = the asked size).
        rgba: the object recentred on a transparent square, uint8 [R, R, 4] (R = ``ref_size``),
            straight alpha.
        masked_by: ``"rembg"`` or ``"white"`` (the difference to the white background).
        seed: the drawing's seed.
    """

    drawn: np.ndarray
    rgba: np.ndarray
    masked_by: str
    seed: int


def object_prompt(prompt: str, negative_prompt: str = "") -> tuple[str, str]:
    """(prompt, negative prompt) asking for one object on white: :data:`OBJECT_ON_WHITE` after the
    prompt, :data:`AVOID` after the negative prompt."""
    negative = f"{negative_prompt.strip()}, {AVOID}" if negative_prompt.strip() else AVOID
    return f"{prompt.strip().rstrip('.,')}, {OBJECT_ON_WHITE}", negative


def mask_from_white(rgb: np.ndarray, threshold: float) -> np.ndarray:
    """The object's mask in a drawing of one object on white.

    Pixels whose largest channel distance to white exceeds ``threshold`` (in [0, 1] units of
    the 0-255 range) are foreground; of those, the largest 8-connected component is kept
    (``skimage.measure.label``: stray specks and a second object go) and its holes are filled
    (``scipy.ndimage.binary_fill_holes``: a white pattern inside the object stays the object's).

    Args:
        rgb: uint8 [H, W, 3].
        threshold: in (0, 1).
    Returns:
        bool [H, W]; all False when nothing differs from white.
    """
    from scipy.ndimage import binary_fill_holes
    from skimage.measure import label

    differs = (255.0 - rgb.astype(np.float32)).max(-1) > threshold * 255.0
    if not differs.any():
        return differs
    components = label(differs, connectivity=2)
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    return binary_fill_holes(components == int(sizes.argmax()))


def draw_reference(sd, prompt: str, negative_prompt: str, *, size: int, steps: int, guidance_scale: float, seed: int,
                   ref_size: int, threshold: float, cancel: CancelToken, emit: Emitter,
                   job_dir: Path) -> DrawnReference:
    """Draw the prompt as one object on white and cut it out (module doc).

    Args:
        sd: a ``StableDiffusionGuidance`` (its ``text_to_image``).
        prompt, negative_prompt: the user's; :func:`object_prompt` extends them.
        size: the drawing's side, pixels (a multiple of 8). steps, guidance_scale: its DDIM steps
            and CFG scale. seed: its generator's seed.
        ref_size: the recentred reference's side, pixels.
        threshold: :func:`mask_from_white`'s.
        job_dir: ``reference_drawn.png`` (the drawing) and ``reference.png`` (the recentred RGBA)
            are written here.
    Returns:
        :class:`DrawnReference`.
    Raises:
        MaskError: the drawing is blank (nothing differs from white, or fewer than 16 pixels of
            object): the message says to try another seed or prompt; the drawing stays on disk.
        JobCancelled: through ``cancel``.
    """
    text, negative = object_prompt(prompt, negative_prompt)
    emit.progress("reference", 0, steps, message=f"drawing the reference image (seed {seed})")
    step = 0

    def check() -> None:
        nonlocal step
        cancel.check()
        emit.progress("reference", step, steps, message=f"drawing the reference image (seed {seed})")
        step += 1

    image = sd.text_to_image(text, negative, size, steps, guidance_scale, seed, check=check)
    drawn = texture_to_uint8(image[0].permute(1, 2, 0))
    Image.fromarray(drawn).save(job_dir / "reference_drawn.png")
    masked_by = "white"
    if rembg_available():
        import rembg

        alpha = np.asarray(rembg.remove(Image.fromarray(drawn)).convert("RGBA"))[..., 3] > 127
        masked_by = "rembg"
    else:
        alpha = mask_from_white(drawn, threshold)
    if alpha.sum() < 16:
        raise MaskError(f"the drawn reference image (reference_drawn.png in the job folder) shows no object on its white "
                        f"background (seed {seed}): draw again with another reference_seed or a more concrete prompt")
    rgba = recenter(np.concatenate([drawn, (alpha * 255).astype(np.uint8)[..., None]], -1), ref_size)
    Image.fromarray(rgba).save(job_dir / "reference.png")
    emit.progress("reference", steps, steps, message=f"reference drawn (seed {seed}), object masked by {masked_by}")
    return DrawnReference(drawn, rgba, masked_by, seed)


def on_white(rgba: np.ndarray, device: str | torch.device) -> torch.Tensor:
    """An RGBA uint8 [H, W, 4] reference as float [1, 3, H, W] in [0, 1] composited on white."""
    from ..images import to_white_background

    return torch.from_numpy(to_white_background(rgba)[0]).permute(2, 0, 1)[None].to(device)
