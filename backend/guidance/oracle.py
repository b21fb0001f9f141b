"""The oracle teacher: a verification teacher that knows the ground-truth textured mesh.

Its noise prediction at (x_t, t, camera) is the exact one for the object's render x0 at that
camera (DESIGN.md section 5): eps_hat = (x_t - sqrt(alpha_bar_t) x0) / sqrt(1 - alpha_bar_t),
in pixel space (x0 = 2 * render - 1), with the render composited over the same background as
the student's. Optimising against it must converge to the object, which is how the pipelines'
cameras, renderers, losses, schedules and baking are checked without real weights. There is
nothing to guide, so the CFG scale has no effect. Its alpha_bar_t follow Stable Diffusion's
scaled-linear schedule, so timestep schedules behave as with the real teachers.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..cameras import Cameras
from ..geometry.export import load_glb
from ..render.mesh import TexturedMesh, render_mesh
from .base import Guidance

#: The DDIM scheduler config of Stable Diffusion 2.1 base (diffusers), reused by the oracle.
SD_SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1, "prediction_type": "epsilon",
}


class OracleGuidance(Guidance):
    """A teacher that renders a known mesh.

    Args:
        mesh: the ground-truth object (or a path to a GLB via :meth:`from_glb`).
        device: torch device.
        weighting: see :class:`~backend.guidance.base.Guidance`.
    """

    space = "pixel"

    #: Render targets with silhouette antialiasing (``render.mesh.antialias``). A stage whose
    #: student is an antialiased mesh sets it (DTC123's fine stage): with aliased targets the
    #: mismatch at the silhouettes alone moves a perfect mesh's vertices.
    antialiased: bool = False

    def __init__(self, mesh: TexturedMesh, device: str = "cpu", weighting: str = "sds", guidance_scale: float = 1.0):
        super().__init__(guidance_scale, weighting, device)
        from diffusers import DDIMScheduler

        self.mesh = mesh.to(self.device)
        self._scheduler = DDIMScheduler.from_config(SD_SCHEDULER_CONFIG)
        self._alphas = self._scheduler.alphas_cumprod.to(self.device, torch.float32)
        self.condition = {"mesh": True}  # nothing to encode: the object is the condition

    @classmethod
    def from_glb(cls, path: str | Path, device: str = "cpu", **kwargs: Any) -> "OracleGuidance":
        """Build the oracle from a textured GLB (``--oracle-mesh``).

        Raises:
            FileNotFoundError: no such file. ValueError: it holds no mesh.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"oracle mesh {path} does not exist")
        return cls(load_glb(path, device), device, **kwargs)

    def with_blurred_texture(self, sigma: float) -> "OracleGuidance":
        """Another oracle of the same shape whose texture is blurred by a Gaussian of ``sigma``
        texels (``scipy.ndimage.gaussian_filter`` per channel): a teacher that knows the shape but
        not the texture's detail (DTC123's hand-over check: Zero-1-to-3's stand-in)."""
        from scipy.ndimage import gaussian_filter

        texture = self.mesh.texture.detach().cpu().numpy()
        blurred = torch.from_numpy(gaussian_filter(texture, sigma=(sigma, sigma, 0), mode="nearest"))
        mesh = TexturedMesh(self.mesh.vertices, self.mesh.faces, self.mesh.uv, blurred.to(self.device, torch.float32))
        return OracleGuidance(mesh, str(self.device), self.weighting, self.guidance_scale)

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return self._alphas

    @property
    def scheduler(self):
        return self._scheduler

    def encode_condition(self, **condition: Any) -> None:
        """The oracle's condition is its mesh; other conditions are ignored."""
        self.condition = {"mesh": True}

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return images * 2.0 - 1.0

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        return ((x0 + 1.0) / 2.0).clamp(0, 1)

    def target(self, cameras: Cameras, size: tuple[int, int], background: torch.Tensor | None) -> torch.Tensor:
        """The object's render x0 in [-1, 1], float [B, 3, H, W], over ``background``."""
        H, W = size
        bg = torch.ones(3, device=self.device) if background is None else torch.as_tensor(background, device=self.device, dtype=torch.float32)
        cams = cameras.resized(W, H).to(self.device)
        with torch.no_grad():
            rgb = render_mesh(self.mesh, cams, background=bg.reshape(-1, 3).expand(len(cams), 3),
                              antialiased=self.antialiased).rgb
        return rgb.permute(0, 3, 1, 2) * 2.0 - 1.0

    def predict_noise(self, x_t: torch.Tensor, t: torch.Tensor, cameras: Cameras, background: torch.Tensor | None) -> torch.Tensor:
        x0 = self.target(cameras, tuple(x_t.shape[-2:]), background).to(x_t.dtype)
        ab = self._alphas[t.long()].to(x_t.dtype).view(-1, 1, 1, 1)
        return (x_t - ab.sqrt() * x0) / (1.0 - ab).sqrt()


def draw_targets_antialiased(teachers) -> None:
    """Tell every oracle among ``teachers`` to draw its targets antialiased
    (:attr:`OracleGuidance.antialiased`), for a stage whose student is an antialiased mesh
    (``stages.geometry.refine_mesh``); other teachers are left alone."""
    for teacher in teachers:
        if isinstance(teacher, OracleGuidance):
            teacher.antialiased = True


def render_target(oracle: OracleGuidance, cameras: Cameras, background=1.0) -> torch.Tensor:
    """The oracle's view(s) as images float [B, 3, H, W] in [0, 1] (e.g. the reference image
    of an image-to-3D oracle run)."""
    bg = torch.as_tensor(background, dtype=torch.float32).reshape(-1)
    bg = bg.expand(3) if bg.numel() == 1 else bg
    return (oracle.target(cameras, (cameras.height, cameras.width), bg) + 1.0) / 2.0
