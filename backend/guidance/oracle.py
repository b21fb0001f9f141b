"""The oracle teacher: a verification teacher that knows the ground-truth textured mesh.

Its noise prediction at (x_t, t, camera) is the exact one for the object's render x0 at that
camera (DESIGN.md section 5): eps_hat = (x_t - sqrt(alpha_bar_t) x0) / sqrt(1 - alpha_bar_t),
in pixel space (x0 = 2 * render - 1), with the render composited over the same background as
the student's. Optimising against it must converge to the object, which is how the pipelines'
cameras, renderers, losses, schedules and baking are checked without real weights. There is
nothing to guide, so the CFG scale has no effect. Its alpha_bar_t follow Stable Diffusion's
scaled-linear schedule, so timestep schedules behave as with the real teachers.

The prior oracle generalises it (``modes`` K, ``sigma``): the exact denoiser of the prior
p(x0) = sum_k (1/K) N(x0; mu_k, sigma^2 I), mu_k the render of the object whose texture's HSV hue
is turned by 360 k / K degrees (k = 0 the truth). Unlike the plain oracle it does not hand back
the truth: with sigma > 0 a lightly noised input keeps its own content (as SDEdit at a low
strength does with a real model), and with K > 1 views denoised apart can settle on different
modes (as a real model's views disagree). K = 1, sigma = 0 is the plain oracle exactly.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..cameras import Cameras
from ..contracts import ORACLE_MAX_MODES, ORACLE_MAX_SIGMA
from ..geometry.export import load_glb
from ..render.mesh import TexturedMesh, render_mesh
from .base import Guidance

#: The DDIM scheduler config of Stable Diffusion 2.1 base (diffusers), reused by the oracle.
SD_SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1, "prediction_type": "epsilon",
}


def hue_rotated(mesh: TexturedMesh, degrees: float) -> TexturedMesh:
    """The same mesh with its colours' HSV hue turned by ``degrees``, per texel (or per vertex
    colour) on the stored sRGB values in [0, 1] (``skimage.color.rgb2hsv``/``hsv2rgb``);
    saturation and value are kept, so greys stay grey."""
    from skimage.color import hsv2rgb, rgb2hsv

    def turn(colours: torch.Tensor | None) -> torch.Tensor | None:
        if colours is None:
            return None
        hsv = rgb2hsv(colours.detach().cpu().numpy().reshape(-1, 1, 3))
        hsv[..., 0] = (hsv[..., 0] + degrees / 360.0) % 1.0
        return torch.from_numpy(hsv2rgb(hsv).reshape(colours.shape)).to(colours.device, torch.float32)

    return TexturedMesh(mesh.vertices, mesh.faces, mesh.uv, turn(mesh.texture), turn(mesh.vertex_colors))


def mixture_posterior_mean(x_t: torch.Tensor, mus: torch.Tensor, alpha_bar: torch.Tensor, sigma: float) -> torch.Tensor:
    """E[x0 | x_t] for the prior p(x0) = sum_k (1/K) N(x0; mu_k, sigma^2 I) and
    x_t = sqrt(ab) x0 + sqrt(1 - ab) eps, per image, in closed form (Bayes' rule for a Gaussian
    mixture prior and a Gaussian likelihood; Bishop, PRML eqs. 2.113-2.117 per component):
    v = ab sigma^2 + 1 - ab, w_k = softmax_k(-||x_t - sqrt(ab) mu_k||^2 / (2 v)) over each image's
    pixels, E[x0 | x_t, k] = mu_k + sqrt(ab) sigma^2 (x_t - sqrt(ab) mu_k) / v, and
    E[x0 | x_t] = sum_k w_k E[x0 | x_t, k].

    Args:
        x_t: float [B, ...] the noised images.
        mus: float [K, B, ...] each mode's mean for each image.
        alpha_bar: float [B] alpha_bar_t of each image, in (0, 1].
        sigma: each mode's standard deviation, >= 0 (in x0's units).
    Returns:
        float [B, ...], x_t's dtype. sigma = 0 and K = 1 gives mu_0.
    """
    K, B = mus.shape[:2]
    shape = (B,) + (1,) * (x_t.dim() - 1)
    ab = alpha_bar.to(x_t.dtype).reshape(shape)
    var = ab * sigma**2 + 1.0 - ab
    resid = x_t[None] - ab.sqrt()[None] * mus  # [K, B, ...]
    # The log-weights in float64: over a whole image the squared distances reach 1e5 and more.
    logw = -(resid.double() ** 2).flatten(2).sum(-1) / (2.0 * var.double().reshape(1, B))
    w = torch.softmax(logw, dim=0).to(x_t.dtype).reshape((K,) + shape)
    return (w * (mus + ab.sqrt()[None] * sigma**2 * resid / var[None])).sum(0)


class OracleGuidance(Guidance):
    """A teacher that renders a known mesh.

    Args:
        mesh: the ground-truth object (or a path to a GLB via :meth:`from_glb`).
        device: torch device.
        weighting: see :class:`~backend.guidance.base.Guidance`.
        modes: K, the prior's number of modes, 1..8 (1: the truth alone).
        sigma: the spread of each mode, in [0, 2] in x0's [-1, 1] units (0: a point).
    Raises:
        ValueError: ``modes`` or ``sigma`` out of range.
    """

    space = "pixel"

    #: Render targets with silhouette antialiasing (``render.mesh.antialias``). A stage whose
    #: student is an antialiased mesh sets it (DTC123's fine stage): with aliased targets the
    #: mismatch at the silhouettes alone moves a perfect mesh's vertices.
    antialiased: bool = False

    def __init__(self, mesh: TexturedMesh, device: str = "cpu", weighting: str = "sds", guidance_scale: float = 1.0,
                 modes: int = 1, sigma: float = 0.0):
        super().__init__(guidance_scale, weighting, device)
        from diffusers import DDIMScheduler

        if not (isinstance(modes, int) and 1 <= modes <= ORACLE_MAX_MODES):
            raise ValueError(f"oracle_modes must be a whole number from 1 to {ORACLE_MAX_MODES}, got {modes!r}")
        if not 0.0 <= float(sigma) <= ORACLE_MAX_SIGMA:
            raise ValueError(f"oracle_sigma must lie in [0, {ORACLE_MAX_SIGMA}], got {sigma!r}")
        self.modes, self.sigma = modes, float(sigma)
        self.mesh = mesh.to(self.device)
        self._scheduler = DDIMScheduler.from_config(SD_SCHEDULER_CONFIG)
        self._alphas = self._scheduler.alphas_cumprod.to(self.device, torch.float32)
        self.condition = {"mesh": True}  # nothing to encode: the object is the condition

    @property
    def mesh(self) -> TexturedMesh:
        """The true object. Setting it (a stage that moves the truth into its own frame) makes
        the prior's modes again."""
        return self._mesh

    @mesh.setter
    def mesh(self, mesh: TexturedMesh) -> None:
        self._mesh = mesh
        self._modes_of = None  # the hue-turned modes are made when first asked for

    @property
    def mode_meshes(self) -> list[TexturedMesh]:
        """The objects of the prior's means: the truth, then its hue turned by 360 k / K degrees
        (made once per truth: a stage that moves the truth after construction pays once)."""
        if self._modes_of is None:
            self._modes_of = [self._mesh] + [hue_rotated(self._mesh, 360.0 * k / self.modes) for k in range(1, self.modes)]
        return self._modes_of

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
        return OracleGuidance(mesh, str(self.device), self.weighting, self.guidance_scale, self.modes, self.sigma)

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

    def target(self, cameras: Cameras, size: tuple[int, int], background: torch.Tensor | None,
               mode: int = 0) -> torch.Tensor:
        """The render x0 in [-1, 1], float [B, 3, H, W], over ``background``, of the true object
        (``mode`` 0) or of the prior's mode ``mode`` (its hue turned by 360 mode / K degrees)."""
        H, W = size
        bg = torch.ones(3, device=self.device) if background is None else torch.as_tensor(background, device=self.device, dtype=torch.float32)
        cams = cameras.resized(W, H).to(self.device)
        with torch.no_grad():
            rgb = render_mesh(self.mode_meshes[mode], cams, background=bg.reshape(-1, 3).expand(len(cams), 3),
                              antialiased=self.antialiased).rgb
        return rgb.permute(0, 3, 1, 2) * 2.0 - 1.0

    def posterior_mean(self, x_t: torch.Tensor, t: torch.Tensor, cameras: Cameras,
                       background: torch.Tensor | None) -> torch.Tensor:
        """E[x0 | x_t] under the prior at these cameras, float [B, 3, H, W]
        (:func:`mixture_posterior_mean` of the K modes' renders)."""
        size = tuple(x_t.shape[-2:])
        if self.modes == 1 and self.sigma == 0.0:
            return self.target(cameras, size, background).to(x_t.dtype)
        mus = torch.stack([self.target(cameras, size, background, k).to(x_t.dtype) for k in range(self.modes)])
        return mixture_posterior_mean(x_t, mus, self._alphas[t.long()].to(x_t.dtype), self.sigma)

    def predict_noise(self, x_t: torch.Tensor, t: torch.Tensor, cameras: Cameras, background: torch.Tensor | None) -> torch.Tensor:
        """eps_hat = (x_t - sqrt(ab) E[x0 | x_t]) / sqrt(1 - ab), float [B, 3, H, W]."""
        x0 = self.posterior_mean(x_t, t, cameras, background)
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
