"""3D Gaussians: the model, its differentiable renderer, and the 3DGS PLY format.

The renderer follows 3D Gaussian Splatting (Kerbl et al. 2023): EWA projection of each 3D
covariance to a 2D one (Zwicker et al. 2001; 3DGS eq. 5, with the Jacobian clamping and the
0.3 px^2 low-pass of the public code), then front-to-back alpha compositing
C = sum_i c_i alpha_i prod_{j<i} (1 - alpha_j) (3DGS eq. 3), alpha_i clamped to 0.999,
contributions below 1/255 skipped and compositing stopped once transmittance falls below
1e-4, exactly as gsplat 1.5.3's ``rasterization`` does. On CUDA the work is done by
``gsplat.rasterization``; on the CPU by a pure-torch rasteriser written for this project,
because gsplat's kernels need CUDA and no CPU Gaussian rasteriser is available as a library.
Both return the same outputs and the metadata ``gsplat.strategy.DefaultStrategy`` reads, so
densification and pruning run on both devices.

Model parameters follow gsplat's naming so its strategies can edit them in place:
``means`` [N,3], ``scales`` [N,3] (log of the standard deviations, metres), ``quats`` [N,4]
(w, x, y, z; normalised when used), ``opacities`` [N] (logits), ``sh0`` [N,1,3] and
``shN`` [N,(d+1)^2-1,3] (real spherical-harmonics coefficients; colour = SH(d) + 0.5).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..cameras import Cameras
from ..device import cuda_module_available

#: Real spherical-harmonics constants (3DGS, ``utils/sh_utils.py``; Sloan 2008).
SH_C0 = 0.28209479177387814
SH_C1 = 0.4886025119029199
SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
SH_C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
         -0.4570457994644658, 1.445305721320277, -0.5900435899266435)

ALPHA_MIN = 1.0 / 255.0
ALPHA_MAX = 0.999  # gsplat 1.5.3 (the 3DGS reference code uses 0.99)
T_MIN = 1e-4


def rgb_to_sh0(rgb: torch.Tensor) -> torch.Tensor:
    """Colour in [0, 1] -> degree-0 SH coefficient (colour = SH_C0 * sh0 + 0.5)."""
    return (rgb - 0.5) / SH_C0


def sh0_to_rgb(sh0: torch.Tensor) -> torch.Tensor:
    """Degree-0 SH coefficient -> colour (not clamped)."""
    return sh0 * SH_C0 + 0.5


class GaussianModel:
    """A set of 3D Gaussians with SH colour of degree ``sh_degree`` (0..3).

    Attributes:
        params: ``torch.nn.ParameterDict`` with keys means, scales, quats, opacities, sh0, shN.
        sh_degree: the SH degree of the colour (0 = view-independent).
    """

    def __init__(self, params: dict[str, torch.Tensor], sh_degree: int = 0):
        if not 0 <= sh_degree <= 3:
            raise ValueError(f"sh_degree must be 0..3, got {sh_degree}")
        self.sh_degree = sh_degree
        self.params = torch.nn.ParameterDict({k: torch.nn.Parameter(v.detach().clone().float()) for k, v in params.items()})

    @classmethod
    def from_points(cls, points: torch.Tensor, colors: torch.Tensor | None = None, scale: float | torch.Tensor = 0.02,
                    opacity: float = 0.1, sh_degree: int = 0) -> "GaussianModel":
        """Isotropic Gaussians at ``points`` (float [N,3], metres) with ``colors`` (float [N,3]
        in [0,1], default grey), standard deviation ``scale`` (metres, scalar or [N])."""
        n = points.shape[0]
        colors = torch.full((n, 3), 0.5) if colors is None else colors.float()
        scale_t = torch.as_tensor(scale, dtype=torch.float32).reshape(-1, 1).expand(n, 3)
        quats = torch.zeros(n, 4)
        quats[:, 0] = 1.0
        k = (sh_degree + 1) ** 2
        return cls({
            "means": points.float(),
            "scales": torch.log(scale_t),
            "quats": quats,
            "opacities": torch.logit(torch.full((n,), float(opacity))),
            "sh0": rgb_to_sh0(colors)[:, None, :],
            "shN": torch.zeros(n, k - 1, 3),
        }, sh_degree)

    @classmethod
    def init_sphere(cls, n: int, radius: float = 0.5, opacity: float = 0.1, sh_degree: int = 0,
                    generator: torch.Generator | None = None, center=(0.0, 0.0, 0.0)) -> "GaussianModel":
        """DreamGaussian's initialisation (``gs_renderer.py`` ``Renderer.initialize`` and
        ``GaussianModel.create_from_pcd``): ``n`` points uniform in a ball of ``radius`` metres;
        colour SH coefficients ``U(0, 1) / 255`` (so about 0.5 grey); opacity ``opacity``;
        isotropic scale ``sqrt`` of the mean squared distance to the 3 nearest neighbours
        (``simple_knn.distCUDA2``, clamped at 1e-7), computed here with scipy's k-d tree."""
        from scipy.spatial import cKDTree

        direction = torch.nn.functional.normalize(torch.randn(n, 3, generator=generator), dim=-1)
        r = radius * torch.rand(n, 1, generator=generator) ** (1.0 / 3.0)
        points = direction * r + torch.as_tensor(center, dtype=torch.float32)
        sh0 = torch.rand(n, 3, generator=generator) / 255.0
        if n > 1:
            k = min(4, n)  # the point itself and its 3 nearest neighbours
            dist, _ = cKDTree(points.numpy()).query(points.numpy(), k=k)
            dist2 = torch.from_numpy((dist[:, 1:] ** 2).mean(1)).float().clamp_min(1e-7)
        else:
            dist2 = torch.full((n,), 1e-4)
        return cls.from_points(points, sh0_to_rgb(sh0), scale=dist2.sqrt(), opacity=opacity, sh_degree=sh_degree)

    def __len__(self) -> int:
        return self.params["means"].shape[0]

    def to(self, device) -> "GaussianModel":
        self.params = self.params.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return self.params["means"].device

    @property
    def means(self) -> torch.Tensor:
        return self.params["means"]

    @property
    def scales(self) -> torch.Tensor:
        """Standard deviations in metres, [N, 3] (exp of the parameter)."""
        return torch.exp(self.params["scales"])

    @property
    def quats(self) -> torch.Tensor:
        """Unit quaternions (w, x, y, z), [N, 4]."""
        return torch.nn.functional.normalize(self.params["quats"], dim=-1)

    @property
    def opacities(self) -> torch.Tensor:
        """Opacities in (0, 1), [N] (sigmoid of the parameter)."""
        return torch.sigmoid(self.params["opacities"])

    @property
    def sh(self) -> torch.Tensor:
        """All SH coefficients, [N, (d+1)^2, 3]."""
        return torch.cat([self.params["sh0"], self.params["shN"]], dim=1)

    @property
    def base_colors(self) -> torch.Tensor:
        """View-independent colour in [0, 1], [N, 3]."""
        return sh0_to_rgb(self.params["sh0"][:, 0]).clamp(0, 1)

    def parameter_groups(self, lrs: dict[str, float]) -> dict[str, torch.optim.Optimizer]:
        """One Adam optimiser per parameter (the layout gsplat's strategies expect).
        ``lrs`` maps parameter names to learning rates; parameters without one are frozen
        (``requires_grad=False``), as gsplat's strategies require."""
        for k, p in self.params.items():
            p.requires_grad_(k in lrs)
        return {k: torch.optim.Adam([{"params": [self.params[k]], "lr": lr, "name": k}], eps=1e-15)
                for k, lr in lrs.items() if k in self.params}

    # ------------------------------------------------------------------ PLY
    def save_ply(self, path: str | Path) -> None:
        """Write the standard 3DGS PLY (x y z nx ny nz f_dc_* f_rest_* opacity scale_* rot_*;
        binary little-endian float32) that other splat viewers and tools read. Coordinates are
        written as they are (the glTF world of this project)."""
        from plyfile import PlyData, PlyElement

        with torch.no_grad():
            n = len(self)
            means = self.params["means"].cpu().numpy()
            f_dc = self.params["sh0"][:, 0].cpu().numpy()
            # 3DGS stores the rest channel-major: f_rest_{c * (K-1) + k}.
            f_rest = self.params["shN"].transpose(1, 2).reshape(n, -1).cpu().numpy()
            columns = [("x", means[:, 0]), ("y", means[:, 1]), ("z", means[:, 2]),
                       ("nx", np.zeros(n)), ("ny", np.zeros(n)), ("nz", np.zeros(n))]
            columns += [(f"f_dc_{i}", f_dc[:, i]) for i in range(3)]
            columns += [(f"f_rest_{i}", f_rest[:, i]) for i in range(f_rest.shape[1])]
            columns += [("opacity", self.params["opacities"].cpu().numpy())]
            columns += [(f"scale_{i}", self.params["scales"][:, i].cpu().numpy()) for i in range(3)]
            columns += [(f"rot_{i}", self.params["quats"][:, i].cpu().numpy()) for i in range(4)]
        data = np.empty(n, dtype=[(name, "<f4") for name, _ in columns])
        for name, values in columns:
            data[name] = values
        PlyData([PlyElement.describe(data, "vertex")], byte_order="<").write(str(path))

    @classmethod
    def load_ply(cls, path: str | Path) -> "GaussianModel":
        """Read a 3DGS PLY written by this project or by the 3DGS reference code.

        Raises:
            ValueError: the file lacks a 3DGS property, or its f_rest count is not 0, 9, 24 or 45.
        """
        from plyfile import PlyData

        vertex = PlyData.read(str(path))["vertex"]
        names = set(vertex.data.dtype.names)
        need = {"x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
                "rot_0", "rot_1", "rot_2", "rot_3"}
        if not need <= names:
            raise ValueError(f"{path} is not a 3DGS PLY: missing {', '.join(sorted(need - names))}")
        col = lambda name: torch.from_numpy(np.asarray(vertex[name], dtype=np.float32))  # noqa: E731
        n_rest = len([n for n in names if n.startswith("f_rest_")])
        degree = {0: 0, 9: 1, 24: 2, 45: 3}.get(n_rest)
        if degree is None:
            raise ValueError(f"{path}: {n_rest} f_rest properties do not match an SH degree 0..3")
        n = len(vertex.data)
        rest = torch.stack([col(f"f_rest_{i}") for i in range(n_rest)], -1) if n_rest else torch.zeros(n, 0)
        k = (degree + 1) ** 2
        return cls({
            "means": torch.stack([col("x"), col("y"), col("z")], -1),
            "scales": torch.stack([col(f"scale_{i}") for i in range(3)], -1),
            "quats": torch.stack([col(f"rot_{i}") for i in range(4)], -1),
            "opacities": col("opacity"),
            "sh0": torch.stack([col(f"f_dc_{i}") for i in range(3)], -1)[:, None, :],
            "shN": rest.reshape(n, 3, k - 1).transpose(1, 2).contiguous(),
        }, degree)


# ---------------------------------------------------------------------- maths
def quat_scale_to_covar(quats: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """3D covariances Sigma = R S S^T R^T (3DGS eq. 6), [N, 3, 3], from unit quaternions
    (w, x, y, z) [N, 4] and standard deviations [N, 3]."""
    w, x, y, z = quats.unbind(-1)
    R = torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], -1).reshape(-1, 3, 3)
    M = R * scales[:, None, :]
    return M @ M.transpose(1, 2)


def eval_sh(degree: int, sh: torch.Tensor, dirs: torch.Tensor) -> torch.Tensor:
    """Evaluate real SH of ``degree`` (0..3) with coefficients ``sh`` [..., K>=(d+1)^2, 3] in
    unit directions ``dirs`` [..., 3]; returns [..., 3] (without the +0.5 offset).
    Basis and constants of 3DGS's ``eval_sh``."""
    out = SH_C0 * sh[..., 0, :]
    if degree < 1:
        return out
    x, y, z = (dirs[..., i:i + 1] for i in range(3))
    out = out - SH_C1 * y * sh[..., 1, :] + SH_C1 * z * sh[..., 2, :] - SH_C1 * x * sh[..., 3, :]
    if degree < 2:
        return out
    xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
    out = (out + SH_C2[0] * xy * sh[..., 4, :] + SH_C2[1] * yz * sh[..., 5, :]
           + SH_C2[2] * (2 * zz - xx - yy) * sh[..., 6, :] + SH_C2[3] * xz * sh[..., 7, :]
           + SH_C2[4] * (xx - yy) * sh[..., 8, :])
    if degree < 3:
        return out
    return (out + SH_C3[0] * y * (3 * xx - yy) * sh[..., 9, :] + SH_C3[1] * xy * z * sh[..., 10, :]
            + SH_C3[2] * y * (4 * zz - xx - yy) * sh[..., 11, :]
            + SH_C3[3] * z * (2 * zz - 3 * xx - 3 * yy) * sh[..., 12, :]
            + SH_C3[4] * x * (4 * zz - xx - yy) * sh[..., 13, :] + SH_C3[5] * z * (xx - yy) * sh[..., 14, :]
            + SH_C3[6] * x * (xx - 3 * yy) * sh[..., 15, :])


@dataclass
class Projection:
    """Per-camera screen-space Gaussians ([C, N, ...]); ``radii`` is 0 where culled."""

    means2d: torch.Tensor  # float [C, N, 2] pixels (x right, y down; pixel centres at +0.5)
    conics: torch.Tensor  # float [C, N, 3] (a, b, c) of the inverse 2D covariance
    depths: torch.Tensor  # float [C, N] camera z, metres
    radii: torch.Tensor  # int32 [C, N, 2] half-extent of the bounding box in pixels


def project(means: torch.Tensor, quats: torch.Tensor, scales: torch.Tensor, opacities: torch.Tensor,
            viewmats: torch.Tensor, Ks: torch.Tensor, width: int, height: int,
            near: float = 0.01, far: float = 1e10, eps2d: float = 0.3) -> Projection:
    """EWA projection of 3D Gaussians into C pinhole cameras (3DGS eq. 5; gsplat's
    ``fully_fused_projection`` with its Jacobian clamping and ``eps2d`` low-pass).

    The bounding box half-extent along each axis is where the Gaussian's alpha falls to 1/255:
    sqrt(2 ln(255 o) Sigma2d_xx), capped at 3.33 sigma, as gsplat does.
    """
    R, t = viewmats[:, :3, :3], viewmats[:, :3, 3]
    mc = torch.einsum("cij,nj->cni", R, means) + t[:, None, :]
    x, y, z = mc.unbind(-1)
    covar = quat_scale_to_covar(quats, scales)
    covar_c = torch.einsum("cij,njk,clk->cnil", R, covar, R)
    fx, fy = Ks[:, 0, 0][:, None], Ks[:, 1, 1][:, None]
    cx, cy = Ks[:, 0, 2][:, None], Ks[:, 1, 2][:, None]
    z_safe = torch.where(z > near, z, torch.full_like(z, near))
    tan_fovx, tan_fovy = 0.5 * width / fx, 0.5 * height / fy
    lim_x_pos, lim_x_neg = (width - cx) / fx + 0.3 * tan_fovx, cx / fx + 0.3 * tan_fovx
    lim_y_pos, lim_y_neg = (height - cy) / fy + 0.3 * tan_fovy, cy / fy + 0.3 * tan_fovy
    tx = z_safe * torch.minimum(torch.maximum(x / z_safe, -lim_x_neg), lim_x_pos)
    ty = z_safe * torch.minimum(torch.maximum(y / z_safe, -lim_y_neg), lim_y_pos)
    zero = torch.zeros_like(z)
    J = torch.stack([fx / z_safe, zero, -fx * tx / z_safe**2, zero, fy / z_safe, -fy * ty / z_safe**2], -1)
    J = J.reshape(*z.shape, 2, 3)
    cov2d = J @ covar_c @ J.transpose(-1, -2)
    a = cov2d[..., 0, 0] + eps2d
    b = cov2d[..., 0, 1]
    c = cov2d[..., 1, 1] + eps2d
    det = a * c - b * b
    det_safe = torch.where(det > 0, det, torch.ones_like(det))
    conics = torch.stack([c / det_safe, -b / det_safe, a / det_safe], -1)
    means2d = torch.stack([fx * x / z_safe + cx, fy * y / z_safe + cy], -1)
    with torch.no_grad():
        opa = opacities.detach()[None, :].expand_as(z)
        extend = torch.sqrt(2.0 * torch.log((opa * 255.0).clamp_min(1.0))).clamp_max(3.33)
        rx = torch.ceil(extend * torch.sqrt(a.detach().clamp_min(0)))
        ry = torch.ceil(extend * torch.sqrt(c.detach().clamp_min(0)))
        m = means2d.detach()
        valid = (z > near) & (z < far) & (det > 0) & (opa * 255.0 > 1.0) & (rx > 0) & (ry > 0)
        valid &= (m[..., 0] + rx > 0) & (m[..., 0] - rx < width) & (m[..., 1] + ry > 0) & (m[..., 1] - ry < height)
        radii = torch.stack([torch.where(valid, rx, 0), torch.where(valid, ry, 0)], -1).to(torch.int32)
    return Projection(means2d, conics, z, radii)


class _Composite(torch.autograd.Function):
    """Front-to-back alpha compositing of depth-sorted pixel/Gaussian pairs, with its gradient
    written out (3DGS eq. 3; the backward pass is gsplat's ``rasterize_to_pixels`` backward,
    done here over all pairs at once instead of per tile).

    Forward, for the pairs i of one pixel in depth order:
    alpha_i = min(o_i exp(-sigma_i), ALPHA_MAX), sigma_i = 0.5 (a dx^2 + c dy^2) + b dx dy,
    T_i = prod_{j<i} (1 - alpha_j), w_i = T_i alpha_i [T_i (1 - alpha_i) > T_MIN][alpha_i >= ALPHA_MIN],
    out = sum_i w_i (colour_i, 1, depth_i). Backward, with g_i = dL/dw_i and
    S_i = sum_{k>i} g_k w_k (a reverse segmented cumulative sum):
    dL/dalpha_i = g_i T_i m_i - S_i / (1 - alpha_i), m_i the indicator above (held constant, as
    gsplat does). The backward is written out because autograd's graph of these ~25 elementwise
    ops keeps every intermediate and replays each of them (``bench/render.py`` times the step).

    Tensors are channel-first, a row per attribute: every per-pair attribute is contiguous, and
    the gathers and scatters move whole rows (on the CPU, scattering [P, K] rows of a few floats
    each is several times slower).

    Inputs: ``attrs`` float [7 + n_ch, N] (means2d x, y; conic a, b, c; opacity; depth; colour),
    ``gid`` int64 [P] the Gaussian of each pair, ``fx``, ``fy`` float [P] pixel centres,
    ``pix`` int64 [P] pixel index (sorted), ``is_start`` bool [P] a pixel's first pair,
    ``seg`` int64 [P] the pixel segment of each pair, ``start_idx`` int64 [S] the first pair of
    each segment, ``hw`` the pixel count.
    Output: float [n_ch + 2, hw].
    """

    @staticmethod
    def forward(ctx, attrs, gid, fx, fy, pix, is_start, seg, start_idx, hw):
        n_ch = attrs.shape[0] - 7
        g = attrs[:6].index_select(1, gid)  # what alpha needs, for every pair
        dx = fx - g[0]
        dy = fy - g[1]
        e = torch.exp(-(0.5 * (g[2] * dx * dx + g[4] * dy * dy) + g[3] * dx * dy))
        raw = g[5] * e
        alpha = raw.clamp_max(ALPHA_MAX)
        log1m = torch.log1p(-alpha).double()
        excl = torch.cumsum(log1m, 0) - log1m
        T = torch.exp(excl - excl.index_select(0, start_idx).index_select(0, seg)).to(attrs.dtype)
        # Pairs behind the point where a pixel's transmittance falls to T_MIN have weight 0 and
        # attenuate only pairs behind them, so they get no gradient: the rest is done on the
        # pairs in front (a prefix of each pixel's pairs, its first always among them), which
        # an opaque surface makes a fraction of all.
        keep = torch.nonzero(T * (1.0 - alpha) > T_MIN).squeeze(1)
        if keep.numel() < pix.numel():
            dx, dy, e, raw, alpha, T, gid, pix, seg = (v.index_select(0, keep) for v in (dx, dy, e, raw, alpha, T,
                                                                                         gid, pix, seg))
            start_idx = torch.nonzero(is_start.index_select(0, keep)).squeeze(1)
        g = attrs.index_select(1, gid)  # every attribute, for the pairs that count
        m = alpha >= ALPHA_MIN
        w = T * alpha * m
        values = torch.cat([w * g[7:], w[None], (w * g[6])[None]], 0)
        ctx.save_for_backward(attrs, g, gid, dx, dy, e, raw, alpha, T, m, w, pix, start_idx, seg)
        ctx.n_ch = n_ch
        return torch.zeros(n_ch + 2, hw, device=attrs.device, dtype=attrs.dtype).index_add_(1, pix, values)

    @staticmethod
    def backward(ctx, grad_out):
        attrs, g, gid, dx, dy, e, raw, alpha, T, m, w, pix, start_idx, seg = ctx.saved_tensors
        n_ch = ctx.n_ch
        gp = grad_out.index_select(1, pix)
        g_col, g_acc, g_dep = gp[:n_ch], gp[n_ch], gp[n_ch + 1]
        gw = (g_col * g[7:]).sum(0) + g_acc + g_dep * g[6]
        incl = torch.cumsum((gw * w).double(), 0)
        # The last pair of each pixel's segment: the one before the next segment's start.
        end_idx = torch.cat([start_idx[1:] - 1, start_idx.new_full((1,), pix.numel() - 1)])
        behind = (incl.index_select(0, end_idx).index_select(0, seg) - incl).to(attrs.dtype)  # S_i
        d_alpha = (gw * T * m - behind / (1.0 - alpha)) * (raw <= ALPHA_MAX)
        d_sigma = -d_alpha * raw
        d_dx = d_sigma * (g[2] * dx + g[3] * dy)
        d_dy = d_sigma * (g[4] * dy + g[3] * dx)
        grads = torch.cat([torch.stack([-d_dx, -d_dy, 0.5 * d_sigma * dx * dx, d_sigma * dx * dy,
                                        0.5 * d_sigma * dy * dy, d_alpha * e, w * g_dep], 0), w * g_col], 0)
        d_attrs = torch.zeros_like(attrs).index_add_(1, gid, grads)
        return d_attrs, None, None, None, None, None, None, None, None


def _rasterize_one(means2d: torch.Tensor, conics: torch.Tensor, colors: torch.Tensor, opacities: torch.Tensor,
                   depths: torch.Tensor, radii: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Composite one camera's projected Gaussians.

    Returns float [3 + 2, H*W]: colour, accumulated alpha and accumulated (not normalised)
    depth per pixel. Pixel/Gaussian pairs are enumerated row by row over the exact span of
    each Gaussian's alpha >= 1/255 ellipse (inside its bounding box), sorted by (pixel,
    depth), and composited with a segmented exclusive cumulative sum of log(1 - alpha) in
    float64 by :class:`_Composite`, whose backward is written out; pairs behind the point where
    a pixel's transmittance falls to ``T_MIN`` (gsplat's early stop) take no part in it. All
    per-Gaussian attributes travel in one tensor, so the gradient reaches them in one ``index_add``.
    """
    device = means2d.device
    hw = width * height
    n_ch = colors.shape[-1]
    # [2 + 3 + 1 + 1 + n_ch, N]: means2d, conic, opacity, depth, colour.
    attrs = torch.cat([means2d.T, conics.T, opacities[None], depths[None], colors.T], 0)
    out = torch.zeros(n_ch + 2, hw, device=device)
    vis = torch.nonzero(radii[:, 0] > 0).squeeze(1)
    if vis.numel() == 0:
        return out + 0 * attrs.sum()
    with torch.no_grad():
        # Front to back, so that pairs come out depth-sorted and a stable sort by pixel keeps
        # the depth order within each pixel.
        vis = vis[torch.argsort(depths.detach()[vis])]
        a = attrs.detach().index_select(1, vis)
        mx, my, A, B, Cc = a[0], a[1], a[2], a[3], a[4]
        level = torch.log((a[5] * 255.0).clamp_min(1.0))  # alpha >= 1/255  <=>  sigma <= level
        r = radii.index_select(0, vis).float()
        y0 = torch.ceil(my - r[:, 1] - 0.5).clamp(0, height - 1).long()
        y1 = torch.floor(my + r[:, 1] - 0.5).clamp(0, height - 1).long()
        # Rows of each Gaussian's bounding box...
        n_rows = (y1 - y0 + 1).clamp_min(0)
        row_g = torch.repeat_interleave(torch.arange(vis.numel(), device=device), n_rows)
        row_y = y0.index_select(0, row_g) + (torch.arange(row_g.numel(), device=device)
                                              - (torch.cumsum(n_rows, 0) - n_rows).index_select(0, row_g))
        # ...and in each row the exact span where the ellipse sigma <= level lies, clipped to
        # the box: 0.5 A dx^2 + B dy dx + 0.5 C dy^2 - level <= 0.
        dy = row_y.float() + 0.5 - my.index_select(0, row_g)
        Ar, Br, Cr = A.index_select(0, row_g), B.index_select(0, row_g), Cc.index_select(0, row_g)
        disc = (Br * dy) ** 2 - Ar * (Cr * dy * dy - 2.0 * level.index_select(0, row_g))
        sq = torch.sqrt(disc.clamp_min(0))
        mxr, rxr = mx.index_select(0, row_g), r[:, 0].index_select(0, row_g)
        lo = torch.maximum(mxr + (-Br * dy - sq) / Ar, mxr - rxr)
        hi = torch.minimum(mxr + (-Br * dy + sq) / Ar, mxr + rxr)
        x0 = torch.ceil(lo - 0.5).clamp(0, width).long()
        x1 = torch.floor(hi - 0.5).clamp(-1, width - 1).long()
        n_pix = torch.where(disc >= 0, (x1 - x0 + 1).clamp_min(0), torch.zeros_like(x0))
        # Each pair's pixel index from its row's first one (one gather per pair, not three).
        row_pix = row_y * width + x0 - (torch.cumsum(n_pix, 0) - n_pix)
        pair_row = torch.repeat_interleave(torch.arange(row_g.numel(), device=device), n_pix)
        pix = row_pix.index_select(0, pair_row) + torch.arange(pair_row.numel(), device=device)
        gid = vis.index_select(0, row_g).index_select(0, pair_row)
        pix, order = torch.sort(pix.int(), stable=True)  # int32: a radix sort of half the passes
        pix = pix.long()
        gid = gid.index_select(0, order)
        fy = torch.div(pix, width, rounding_mode="floor")
        fx = (pix - fy * width).float() + 0.5
        fy = fy.float() + 0.5
        is_start = torch.ones_like(pix, dtype=torch.bool)
        is_start[1:] = pix[1:] != pix[:-1]
        seg = torch.cumsum(is_start.long(), 0) - 1
        start_idx = torch.nonzero(is_start).squeeze(1)
    if gid.numel() == 0:
        return out + 0 * attrs.sum()
    return _Composite.apply(attrs, gid, fx, fy, pix, is_start, seg, start_idx, hw)


@dataclass
class RenderOutput:
    """Renders of C cameras, rows top to bottom.

    Attributes:
        rgb: float [C, H, W, 3] composited over the background.
        alpha: float [C, H, W, 1] accumulated opacity in [0, 1].
        depth: float [C, H, W, 1] expected depth (metres along the camera axis; 0 where empty).
        info: the metadata gsplat's strategies read: ``means2d`` [C,N,2] (its ``.grad`` is
            filled by backward), ``radii`` int32 [C,N,2], ``width``, ``height``,
            ``n_cameras``, ``gaussian_ids`` (None: not packed).
    """

    rgb: torch.Tensor
    alpha: torch.Tensor
    depth: torch.Tensor
    info: dict[str, Any]


#: Outcome of :func:`probe_gsplat` per device: None when gsplat renders there, else why not.
_GSPLAT_PROBES: dict[str, str | None] = {}


def _gsplat_probe_render(device: torch.device) -> None:
    """One 16 x 16 render of 8 Gaussians through gsplat and its backward."""
    from gsplat import rasterization

    gen = torch.Generator().manual_seed(0)
    means = (torch.rand(8, 3, generator=gen) - 0.5).to(device).requires_grad_(True)
    quats = torch.tensor([[1.0, 0.0, 0.0, 0.0]], device=device).expand(8, 4)
    scales = torch.full((8, 3), 0.1, device=device)
    opacities = torch.full((8,), 0.5, device=device)
    colors = torch.rand(8, 3, generator=gen).to(device)
    viewmat = torch.eye(4, device=device)[None]
    viewmat[0, 2, 3] = 2.0
    K = torch.tensor([[[16.0, 0.0, 8.0], [0.0, 16.0, 8.0], [0.0, 0.0, 1.0]]], device=device)
    image, _, _ = rasterization(means, quats, scales, opacities, colors, viewmat, K, 16, 16)
    image.sum().backward()
    if means.grad is None or not torch.isfinite(means.grad).all():
        raise RuntimeError("gsplat's backward gave no finite gradient")


def probe_gsplat(device: torch.device | str, render_once=_gsplat_probe_render) -> str | None:
    """Try gsplat for real on a CUDA ``device`` (once per device; the first call compiles
    gsplat's kernels when the wheel has none, which takes minutes). gsplat from PyPI builds its
    CUDA extension on first use; without a CUDA compiler its ``_C`` is None and
    ``rasterization`` raises ``AttributeError``: then every render falls back to this
    project's torch rasteriser, which runs on CUDA tensors too.

    Args:
        device: the device to probe; not CUDA, or gsplat not importable: reported as such.
        render_once: ``render_once(torch.device)`` raises when gsplat cannot render (the test
            suite passes a failing one to simulate a missing compiler).
    Returns:
        None when gsplat renders on ``device``, else one sentence saying why not (also what
        :func:`gsplat_available` answers from then on).
    """
    key = str(torch.device(device))
    if key in _GSPLAT_PROBES:
        return _GSPLAT_PROBES[key]
    if not cuda_module_available(device, "gsplat"):
        return "gsplat needs a CUDA device and the gsplat package"
    try:
        render_once(torch.device(device))
        reason = None
    except Exception as exc:  # noqa: BLE001 - any failure means: use the torch rasteriser
        reason = (f"gsplat cannot render on {key} ({type(exc).__name__}: {str(exc)[:200]}); rendering with the "
                  "torch rasteriser instead (slower). Install a CUDA toolkit matching torch so gsplat can build its "
                  "kernels, or a gsplat wheel built for this torch and CUDA")
    _GSPLAT_PROBES[key] = reason
    return reason


def gsplat_probed(device: torch.device | str) -> bool:
    """Whether :func:`probe_gsplat` already ran for ``device``."""
    return str(torch.device(device)) in _GSPLAT_PROBES


def gsplat_available(device: torch.device | str) -> bool:
    """Whether gsplat's CUDA rasteriser renders on ``device`` (probed once, :func:`probe_gsplat`)."""
    return cuda_module_available(device, "gsplat") and probe_gsplat(device) is None


def render(model: GaussianModel, cameras: Cameras, background: torch.Tensor | tuple | float = 1.0,
           sh_degree: int | None = None, backend: str = "auto") -> RenderOutput:
    """Render Gaussians from C cameras, differentiably.

    Args:
        model: the Gaussians (N of them).
        cameras: C cameras; their ``width`` and ``height`` set the image size.
        background: RGB in [0,1]: a float, a (3,) sequence, or a tensor [3] or [C, 3].
        sh_degree: SH degree to evaluate (default: the model's).
        backend: ``"auto"`` (gsplat on CUDA, else torch), ``"gsplat"`` or ``"torch"``.
    Returns:
        :class:`RenderOutput`; RGB composited over ``background`` and clamped to [0, 1] (as
        DreamGaussian's renderer, ``gs_renderer.py`` line 811).
    Raises:
        RuntimeError: ``backend="gsplat"`` without CUDA and gsplat.
    """
    device = model.device
    cams = cameras.to(device)
    C, W, H = len(cams), cams.width, cams.height
    bg = torch.as_tensor(background, dtype=torch.float32, device=device)
    bg = bg.reshape(-1, 3) if bg.numel() >= 3 else bg.reshape(1, 1).expand(1, 3)
    bg = bg.expand(C, 3)
    degree = model.sh_degree if sh_degree is None else sh_degree
    use_gsplat = backend == "gsplat" or (backend == "auto" and gsplat_available(device))
    if use_gsplat:
        if not gsplat_available(device):
            raise RuntimeError("the gsplat backend needs CUDA and gsplat installed (pip install 'splatsmith[gpu]')")
        from gsplat import rasterization

        colors, alphas, info = rasterization(
            model.means, model.quats, model.scales, model.opacities, model.sh, cams.viewmats, cams.Ks, W, H,
            sh_degree=degree, render_mode="RGB+ED", packed=False,
        )
        rgb, depth = colors[..., :3], colors[..., 3:4]
        rgb = (rgb + (1.0 - alphas) * bg[:, None, None, :]).clamp(0.0, 1.0)  # gs_renderer.py line 811
        return RenderOutput(rgb, alphas, depth, info)
    viewmats, Ks = cams.viewmats, cams.Ks
    opac = model.opacities
    proj = project(model.means, model.quats, model.scales, opac, viewmats, Ks, W, H)
    sh = model.sh[:, : (degree + 1) ** 2]
    if degree > 0:
        dirs = torch.nn.functional.normalize(model.means[None] - cams.centers[:, None, :], dim=-1)
        colors = (eval_sh(degree, sh[None].expand(C, -1, -1, -1), dirs) + 0.5).clamp_min(0.0)
    else:
        colors = (SH_C0 * sh[None, :, 0, :] + 0.5).clamp_min(0.0).expand(C, -1, -1)
    images = [
        _rasterize_one(proj.means2d[c], proj.conics[c], colors[c], opac, proj.depths[c], proj.radii[c], W, H).T.reshape(H, W, -1)
        for c in range(C)
    ]
    image = torch.stack(images)
    rgb, alpha, dep = image[..., :3], image[..., 3:4], image[..., 4:5]
    depth = torch.where(alpha > 0, dep / alpha.clamp_min(1e-10), torch.zeros_like(dep))
    rgb = (rgb + (1.0 - alpha) * bg[:, None, None, :]).clamp(0.0, 1.0)  # as the CUDA path
    info = {"means2d": proj.means2d, "radii": proj.radii, "width": W, "height": H, "n_cameras": C,
            "gaussian_ids": None, "depths": proj.depths, "conics": proj.conics}
    return RenderOutput(rgb, alpha, depth, info)
