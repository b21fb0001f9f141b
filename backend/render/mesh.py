"""Triangle-mesh rasterisation, attribute interpolation and texture sampling.

``rasterize`` returns, per pixel, the visible triangle's id, its perspective-correct
barycentric coordinates and the camera depth. On CUDA with nvdiffrast installed the work is
done by ``nvdiffrast.torch.rasterize`` (its output converted: rows flipped so that row 0 is the
top, ids shifted so that -1 is empty, barycentrics completed to three); otherwise by this
module's pure-torch rasteriser (nvdiffrast is CUDA-only and non-commercial, and no CPU
rasteriser with differentiable interpolation is available as a library). Both give the same
outputs. Gradients flow to vertex attributes (:func:`interpolate`) and textures
(:func:`sample_texture`) on both paths; visibility itself is not differentiated.

Conventions: pixel centres at half-integers; image row 0 at the top; UV origin bottom-left
with texture row 0 at the top (:func:`uv_to_grid` is the one place that maps between them).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..cameras import Cameras, mvp_gl
from ..device import cuda_module_available


@dataclass
class Rasterization:
    """Per-pixel visibility of a mesh in C images.

    Attributes:
        tri_id: int64 [C, H, W], the visible face index, -1 where no face covers the pixel.
        bary: float32 [C, H, W, 3], perspective-correct barycentrics of the face's corners.
        depth: float32 [C, H, W], camera-space depth in metres (0 where empty).
    """

    tri_id: torch.Tensor
    bary: torch.Tensor
    depth: torch.Tensor
    #: nvdiffrast's own outputs (its ``rast`` [C, H, W, 4] and clip positions [C, V, 4], OpenGL row
    #: order) for :func:`antialias` on CUDA; None on the torch path.
    nvdiffrast: tuple | None = None

    @property
    def mask(self) -> torch.Tensor:
        """bool [C, H, W]: covered pixels."""
        return self.tri_id >= 0


@dataclass
class TexturedMesh:
    """A triangle mesh with an optional UV atlas and base-colour texture.

    Attributes:
        vertices: float32 [V, 3], glTF world, metres.
        faces: int64 [F, 3], counter-clockwise seen from outside.
        uv: float32 [F, 3, 2] per-corner UVs in [0, 1], origin bottom-left; or None.
        texture: float32 [Ht, Wt, 3] in [0, 1], row 0 at the top; or None.
        vertex_colors: float32 [V, 3] in [0, 1]; or None.
    """

    vertices: torch.Tensor
    faces: torch.Tensor
    uv: torch.Tensor | None = None
    texture: torch.Tensor | None = None
    vertex_colors: torch.Tensor | None = None

    def to(self, device) -> "TexturedMesh":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return TexturedMesh(move(self.vertices), move(self.faces), move(self.uv), move(self.texture), move(self.vertex_colors))

    def face_normals(self) -> torch.Tensor:
        """Unit face normals [F, 3] (right-hand rule on the corner order)."""
        v = self.vertices[self.faces]
        return F.normalize(torch.linalg.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0]), dim=-1)


def nvdiffrast_available(device: torch.device | str) -> bool:
    """Whether nvdiffrast's CUDA rasteriser can be used on ``device``."""
    return cuda_module_available(device, "nvdiffrast.torch")


_GL_CONTEXTS: dict = {}


def _rasterize_screen(xy: torch.Tensor, zinv: torch.Tensor, width: int, height: int,
                      max_pairs: int = 8_000_000, cancel: Any = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rasterise triangles given in pixel coordinates.

    Args:
        xy: float [F, 3, 2] corner positions in pixels (x right, y down).
        zinv: float [F, 3] per-corner 1/depth for perspective correction (ones for an affine
            rasterisation, e.g. in UV space); faces with a non-positive value are skipped.
        width, height: image size.
        max_pairs: pixel/face pairs evaluated at once (bounds memory).
        cancel: a ``CancelToken`` checked once per batch of pairs, or None.
    Returns:
        (tri_id int64 [H*W], bary float32 [H*W, 3], depth float32 [H*W]).
    """
    device = xy.device
    hw = width * height
    best_depth = torch.full((hw,), float("inf"), device=device)
    best_tri = torch.full((hw,), -1, dtype=torch.long, device=device)
    best_bary = torch.zeros(hw, 3, device=device)
    xy, zinv = xy.detach().float(), zinv.detach().float()
    lo, hi = xy.min(1).values, xy.max(1).values
    x0 = torch.ceil(lo[:, 0] - 0.5).clamp(0, width).long()
    x1 = torch.floor(hi[:, 0] - 0.5).clamp(-1, width - 1).long()
    y0 = torch.ceil(lo[:, 1] - 0.5).clamp(0, height).long()
    y1 = torch.floor(hi[:, 1] - 0.5).clamp(-1, height - 1).long()
    bw, bh = (x1 - x0 + 1).clamp_min(0), (y1 - y0 + 1).clamp_min(0)
    ok = (zinv > 0).all(1) & torch.isfinite(xy).all(2).all(1)
    counts = torch.where(ok, bw * bh, torch.zeros_like(bw))
    faces_idx = torch.nonzero(counts).squeeze(1)
    if faces_idx.numel() == 0:
        return best_tri, best_bary, torch.zeros(hw, device=device)
    cum = torch.cumsum(counts[faces_idx], 0)
    start = 0
    while start < faces_idx.numel():
        if cancel is not None:
            cancel.check()
        base = int(cum[start - 1]) if start > 0 else 0
        end = int(torch.searchsorted(cum, base + max_pairs, right=True))
        end = max(end, start + 1)
        chunk = faces_idx[start:end]
        c = counts[chunk]
        fid = torch.repeat_interleave(chunk, c)
        local = torch.arange(fid.numel(), device=device) - torch.repeat_interleave(torch.cumsum(c, 0) - c, c)
        w = bw[fid]
        px = x0[fid] + local % w
        py = y0[fid] + torch.div(local, w, rounding_mode="floor")
        p = torch.stack([px.float() + 0.5, py.float() + 0.5], -1)
        v = xy[fid]
        e0, e1, e2 = _corner_edges(v, p).unbind(-1)
        area = _edge(v[:, 0], v[:, 1], v[:, 2])
        inside = (area.abs() > 1e-12) & (
            ((e0 >= 0) & (e1 >= 0) & (e2 >= 0)) | ((e0 <= 0) & (e1 <= 0) & (e2 <= 0))
        )
        idx = torch.nonzero(inside).squeeze(1)
        if idx.numel():
            lam = torch.stack([e0[idx], e1[idx], e2[idx]], -1) / area[idx, None]
            zi = zinv[fid[idx]]
            denom = (lam * zi).sum(-1)
            bary = lam * zi / denom[:, None]
            depth = 1.0 / denom
            pix = py[idx] * width + px[idx]
            f = fid[idx]
            # Z-buffer: nearest depth wins; ties (shared edges) go to the lowest face id.
            best_depth.scatter_reduce_(0, pix, depth, reduce="amin")
            win = depth <= best_depth.index_select(0, pix)
            pix_w, f_w, bary_w = pix[win], f[win], bary[win]
            # Pixels whose depth improved in this chunk are re-assigned.
            tri_tmp = torch.full((hw,), torch.iinfo(torch.long).max, dtype=torch.long, device=device)
            tri_tmp.scatter_reduce_(0, pix_w, f_w, reduce="amin")
            chosen = tri_tmp.index_select(0, pix_w) == f_w
            best_tri[pix_w[chosen]] = f_w[chosen]
            best_bary[pix_w[chosen]] = bary_w[chosen]
        start = end
    covered = best_tri >= 0
    depth = torch.where(covered, best_depth, torch.zeros_like(best_depth))
    return best_tri, best_bary, depth


def _edge(a: torch.Tensor, b: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Edge function (b - a) x (p - a): twice the signed area of (a, b, p)."""
    return (b[..., 0] - a[..., 0]) * (p[..., 1] - a[..., 1]) - (b[..., 1] - a[..., 1]) * (p[..., 0] - a[..., 0])


def _pixel_centres(index: torch.Tensor, width: int) -> torch.Tensor:
    """Centres (x + 0.5, y + 0.5) of flat pixel indices [P] in images ``width`` wide: float [P, 2]."""
    return torch.stack([(index % width).float() + 0.5, torch.div(index, width, rounding_mode="floor").float() + 0.5], -1)


def _corner_edges(v: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """The three edge functions of triangles ``v`` [P, 3, 2] at points ``p`` [P, 2], each the
    one opposite a corner (unnormalised barycentrics): float [P, 3]."""
    return torch.stack([_edge(v[:, 1], v[:, 2], p), _edge(v[:, 2], v[:, 0], p), _edge(v[:, 0], v[:, 1], p)], -1)


def _project(vertices: torch.Tensor, viewmat: torch.Tensor, K: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pinhole projection of world points [V, 3] with one OpenCV view matrix [4, 4] and
    intrinsics [3, 3]: (pixel positions float [V, 2], x right and y down; camera depth [V])."""
    pc = vertices @ viewmat[:3, :3].T + viewmat[:3, 3]
    z = pc[:, 2]
    return torch.stack([K[0, 0] * pc[:, 0] / z + K[0, 2], K[1, 1] * pc[:, 1] / z + K[1, 2]], -1), z


def rasterize(vertices: torch.Tensor, faces: torch.Tensor, cameras: Cameras, backend: str = "auto",
              near: float = 0.01) -> Rasterization:
    """Rasterise a mesh from C cameras.

    Args:
        vertices: float [V, 3] world positions (metres).
        faces: int [F, 3].
        cameras: C cameras (their width/height set the image size).
        backend: ``"auto"`` (nvdiffrast on CUDA when installed, else torch), ``"nvdiffrast"``
            or ``"torch"``.
        near: faces with a corner closer than this (metres) are not drawn.
    Returns:
        :class:`Rasterization`. When ``vertices`` requires grad, its barycentrics carry the
        gradient with respect to the vertex positions inside each face (on both paths: nvdiffrast's
        own backward, or :func:`_differentiable_bary`); which face covers a pixel, and so the
        silhouette, is not differentiated here (:func:`soft_silhouette` gives that gradient).
    Raises:
        RuntimeError: ``backend="nvdiffrast"`` when it is not usable.
    """
    device = vertices.device
    cams = cameras.to(device)
    W, H, C = cams.width, cams.height, len(cams)
    faces = faces.long()
    use_dr = backend == "nvdiffrast" or (backend == "auto" and nvdiffrast_available(device))
    if use_dr:
        return _rasterize_nvdiffrast(vertices, faces, cams, near)
    w2c = cams.viewmats  # OpenCV axes: z forward
    Ks = cams.Ks
    tri_ids, barys, depths = [], [], []
    for c in range(C):
        xy, z = _project(vertices.detach(), w2c[c], Ks[c])
        xy = torch.where((z > near)[:, None], xy, torch.full_like(xy, float("nan")))[faces]
        zinv = torch.where(z > near, 1.0 / z, torch.full_like(z, -1.0))[faces]
        t, b, d = _rasterize_screen(xy, zinv, W, H)
        if vertices.requires_grad:
            b = _differentiable_bary(vertices, faces, w2c[c], Ks[c], t, W, b)
        tri_ids.append(t.reshape(H, W))
        barys.append(b.reshape(H, W, 3))
        depths.append(d.reshape(H, W))
    return Rasterization(torch.stack(tri_ids), torch.stack(barys), torch.stack(depths))


def _differentiable_bary(vertices: torch.Tensor, faces: torch.Tensor, w2c: torch.Tensor, K: torch.Tensor,
                         tri: torch.Tensor, width: int, bary: torch.Tensor) -> torch.Tensor:
    """The perspective-correct barycentrics of the covered pixels recomputed from ``vertices``
    [V, 3] with autograd (the edge functions at the pixel centres, as :func:`_rasterize_screen`
    evaluates them): equal in value to ``bary`` [H*W, 3], differentiable with respect to the
    vertex positions, which is what nvdiffrast's rasterize backward provides on CUDA.
    ``tri`` int64 [H*W] (-1 empty); ``w2c`` [4, 4] OpenCV axes; ``K`` [3, 3]."""
    covered = torch.nonzero(tri >= 0).squeeze(1)
    if covered.numel() == 0:
        return bary
    xy, z = _project(vertices, w2c, K)
    f = faces[tri[covered]]  # [P, 3]
    v = xy[f]  # [P, 3, 2]
    lam = _corner_edges(v, _pixel_centres(covered, width)) / _edge(v[:, 0], v[:, 1], v[:, 2])[:, None]
    weighted = lam / z[f]
    out = torch.zeros(bary.shape, dtype=vertices.dtype, device=vertices.device)
    return out.index_put((covered,), weighted / weighted.sum(-1, keepdim=True))


def _rasterize_nvdiffrast(vertices: torch.Tensor, faces: torch.Tensor, cams: Cameras, near: float) -> Rasterization:
    import nvdiffrast.torch as dr

    device = vertices.device
    ctx = _GL_CONTEXTS.get(device)
    if ctx is None:
        ctx = _GL_CONTEXTS[device] = dr.RasterizeCudaContext(device=device)
    mvp = mvp_gl(cams, near=near)
    # Positions keep their graph: nvdiffrast's backward turns barycentric gradients into
    # position gradients.
    vh = torch.cat([vertices, torch.ones_like(vertices[:, :1])], -1)
    clip = torch.einsum("cij,vj->cvi", mvp, vh).contiguous()
    raw, _ = dr.rasterize(ctx, clip, faces.int().contiguous(), resolution=[cams.height, cams.width])
    rast = torch.flip(raw, dims=[1])  # OpenGL row 0 is the bottom
    tri = rast[..., 3].long() - 1
    u, v = rast[..., 0], rast[..., 1]
    bary = torch.stack([u, v, 1.0 - u - v], -1) * (tri >= 0)[..., None]
    # Camera depth, interpolated perspective-correctly by nvdiffrast's barycentrics.
    w2c = cams.viewmats
    z = torch.einsum("cj,vj->cv", w2c[:, 2, :3], vertices.detach()) + w2c[:, 2, 3][:, None]
    tri_c = tri.clamp_min(0)
    zf = torch.stack([z[c][faces[tri_c[c]]] for c in range(len(cams))])
    depth = torch.where(tri >= 0, (zf * bary).sum(-1), torch.zeros_like(u))
    return Rasterization(tri, bary, depth, nvdiffrast=(torch.flip(rast, dims=[1]), clip, faces.int().contiguous()))


def rasterize_uv(uv: torch.Tensor, size: int, cancel: Any = None) -> Rasterization:
    """Rasterise a UV atlas: which face (and where in it) each texel of a ``size`` x ``size``
    texture belongs to. ``uv`` is float [F, 3, 2] per-corner, origin bottom-left; texel row 0
    is the top (v = 1). Returns a :class:`Rasterization` with C = 1 (depth 1 where covered).
    ``cancel`` (a ``CancelToken``) is checked between batches; raises JobCancelled."""
    xy = torch.stack([uv[..., 0] * size, (1.0 - uv[..., 1]) * size], -1)
    t, b, d = _rasterize_screen(xy, torch.ones(uv.shape[:2], device=uv.device), size, size, cancel=cancel)
    return Rasterization(t.reshape(1, size, size), b.reshape(1, size, size, 3), d.reshape(1, size, size))


def interpolate(attr: torch.Tensor, faces: torch.Tensor, rast: Rasterization) -> torch.Tensor:
    """Interpolate vertex attributes [V, D] (with ``faces`` [F, 3]) or per-corner attributes
    [F, 3, D] (``faces`` ignored) over the rasterised pixels; differentiable w.r.t. ``attr``.
    Returns float [C, H, W, D], zeros where no face is visible."""
    tri = rast.tri_id.clamp_min(0)
    corner = attr[faces.long()] if attr.ndim == 2 else attr  # [F, 3, D]
    vals = corner[tri]  # [C, H, W, 3, D]
    out = (vals * rast.bary[..., None]).sum(-2)
    return out * rast.mask[..., None]


def uv_to_grid(uv: torch.Tensor) -> torch.Tensor:
    """UV (origin bottom-left, [0,1]) -> ``grid_sample`` coordinates (x right, y down, [-1,1])
    for a texture stored with row 0 at the top. The only place this flip is made."""
    return torch.stack([uv[..., 0] * 2.0 - 1.0, (1.0 - uv[..., 1]) * 2.0 - 1.0], -1)


def sample_texture(texture: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """Bilinearly sample ``texture`` float [Ht, Wt, D] (row 0 at the top) at ``uv`` float
    [..., 2] (origin bottom-left); differentiable w.r.t. the texture. Returns [..., D]."""
    shape = uv.shape[:-1]
    # A non-finite UV must never reach grid_sample: its CPU backward crashes on NaN
    # (pytorch issue 24823). Such corners sample the texture's border instead.
    grid = torch.nan_to_num(uv_to_grid(uv.reshape(1, -1, 1, 2).to(texture.dtype)), 0.0, 1.0, -1.0)
    out = F.grid_sample(texture.permute(2, 0, 1)[None], grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out[0, :, :, 0].T.reshape(*shape, texture.shape[-1])


def mip_pyramid(texture: torch.Tensor) -> list[torch.Tensor]:
    """Mip levels of ``texture`` float [Ht, Wt, D]: level 0 is the texture, each next one a 2x2
    box-filtered half (rounding up), down to one texel; differentiable. Channels-first [1, D, h, w]."""
    levels = [texture.permute(2, 0, 1)[None]]
    while min(levels[-1].shape[-2:]) > 1:
        levels.append(F.avg_pool2d(levels[-1], 2, ceil_mode=True))
    return levels


def uv_footprint(uv: torch.Tensor, mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Texels covered by one pixel: the longer of the UV image's steps to the neighbouring
    pixels in x and y (finite differences of the interpolated UVs where both pixels are
    covered), in texels of a ``size`` = (Ht, Wt) texture. ``uv`` float [C, H, W, 2], ``mask``
    bool [C, H, W]. Returns float [C, H, W] (0 where no neighbour is covered); no gradient."""
    scale = uv.new_tensor([size[1], size[0]])
    uv, m = uv.detach() * scale, mask

    def steps(axis: int) -> torch.Tensor:
        d = (uv.narrow(axis, 1, uv.shape[axis] - 1) - uv.narrow(axis, 0, uv.shape[axis] - 1)).norm(dim=-1)
        ok = m.narrow(axis, 1, m.shape[axis] - 1) & m.narrow(axis, 0, m.shape[axis] - 1)
        d = torch.where(ok, d, torch.zeros_like(d))
        pad_lo, pad_hi = [0, 0] * 2, [0, 0] * 2
        pad_lo[2 * (2 - axis) + 0], pad_hi[2 * (2 - axis) + 1] = 1, 1
        return torch.maximum(F.pad(d, pad_lo), F.pad(d, pad_hi))  # the step to either neighbour

    return torch.maximum(steps(1), steps(2))


def sample_texture_mipmap(texture: torch.Tensor, uv: torch.Tensor, footprint: torch.Tensor) -> torch.Tensor:
    """Trilinear ("linear-mipmap-linear") sampling: bilinear in the two mip levels around
    ``log2(footprint)``, blended linearly (nvdiffrast's ``dr.texture`` filter of that name,
    which DreamGaussian's stage 2 uses, ``mesh_renderer.py`` line 110; here the footprint is a
    finite difference of neighbouring pixels' UVs instead of nvdiffrast's analytic
    derivatives, so that one implementation runs on the CPU and on CUDA tensors).

    Args:
        texture: float [Ht, Wt, D], row 0 at the top.
        uv: float [C, H, W, 2], origin bottom-left.
        footprint: float [C, H, W], texels per pixel (:func:`uv_footprint`).
    Returns:
        float [C, H, W, D]; differentiable w.r.t. ``texture``.
    """
    levels = mip_pyramid(texture)
    lod = torch.log2(footprint.clamp_min(1.0)).clamp(max=len(levels) - 1)
    out = None
    for k in range(int(torch.ceil(lod.max()).item()) + 1 if lod.numel() else 1):
        weight = (1.0 - (lod - k).abs()).clamp_min(0.0)
        if k > 0 and not bool((weight > 0).any()):
            continue
        level = levels[k][0].permute(1, 2, 0)
        term = sample_texture(level, uv) * weight[..., None]
        out = term if out is None else out + term
    return out


def antialias(image: torch.Tensor, rast: Rasterization, vertices: torch.Tensor, faces: torch.Tensor,
              cameras: Cameras, occlusion_ratio: float = 1.02) -> torch.Tensor:
    """Analytic antialiasing of silhouette edges (Laine et al. 2020, "Modular Primitives for
    High-Performance Differentiable Rendering", section 3.3; nvdiffrast's ``antialias``), whose
    point is the gradient it gives the vertex positions where the silhouette moves.

    For every horizontally or vertically adjacent pixel pair drawn by different faces, where one
    pixel is background or a farther surface not sharing an edge with the nearer face, the
    nearer face's edge crossing the segment between the two centres is found (at fraction s
    from the nearer pixel's centre, from the edge functions of the projected corners) and the
    colours blend by how far the edge lies past the midpoint: the far pixel takes
    ``(s - 0.5)`` of the near colour when s > 0.5, the near pixel ``(0.5 - s)`` of the far one
    otherwise. On CUDA with nvdiffrast the rasterisation's own ``dr.antialias`` runs (the same
    method, its silhouette test exact); the torch path is ours because no CPU library gives
    these gradients.

    Args:
        image: float [C, H, W, D] rendered from ``rast`` (row 0 at the top), e.g. RGB plus alpha.
        rast: :func:`rasterize`'s output for ``vertices``/``faces``/``cameras``.
        vertices: float [V, 3] world positions (gradients flow to them).
        faces: int [F, 3].
        cameras: the C cameras.
        occlusion_ratio: a covered neighbour counts as behind when its depth exceeds the near
            pixel's by this factor (and the two faces share no edge).
    Returns:
        float [C, H, W, D], differentiable with respect to ``image`` and ``vertices``.
    """
    if rast.nvdiffrast is not None:
        import nvdiffrast.torch as dr

        raw, clip, tri = rast.nvdiffrast
        out = dr.antialias(torch.flip(image, dims=[1]).contiguous(), raw, clip, tri)
        return torch.flip(out, dims=[1])
    cams = cameras.to(vertices.device)
    faces = faces.long()
    C, H, W, D = image.shape
    flat = image.reshape(C, H * W, D)
    outs = []
    for c in range(C):
        xy, _ = _project(vertices, cams.viewmats[c], cams.Ks[c])
        tri = rast.tri_id[c].reshape(-1)
        depth = rast.depth[c].reshape(-1)
        idx = torch.arange(H * W, device=tri.device).reshape(H, W)
        pairs = torch.cat([torch.stack([idx[:, :-1].reshape(-1), idx[:, 1:].reshape(-1)], -1),
                           torch.stack([idx[:-1, :].reshape(-1), idx[1:, :].reshape(-1)], -1)])
        ta, tb = tri[pairs[:, 0]], tri[pairs[:, 1]]
        pairs = pairs[ta != tb]
        ta, tb = tri[pairs[:, 0]], tri[pairs[:, 1]]
        # The near pixel first: a covered pixel next to background, or the nearer of two surfaces.
        swap = (ta < 0) | ((tb >= 0) & (depth[pairs[:, 1]] < depth[pairs[:, 0]]))
        pairs = torch.where(swap[:, None], pairs.flip(1), pairs)
        near, far = pairs[:, 0], pairs[:, 1]
        fn, ff = tri[near], tri[far]
        shared = (faces[fn.clamp_min(0)][:, :, None] == faces[ff.clamp_min(0)][:, None, :]).sum((1, 2))
        edge = (ff < 0) | ((shared < 2) & (depth[far] > depth[near] * occlusion_ratio))
        near, far, fn = near[edge], far[edge], fn[edge]
        acc = torch.zeros_like(flat[c])
        if near.numel():
            v = xy[faces[fn]]  # [P, 3, 2] the near face's corners in pixels
            sign = torch.sign(_edge(v[:, 0], v[:, 1], v[:, 2]))[:, None]
            ea = sign * _corner_edges(v, _pixel_centres(near, W))
            eb = sign * _corner_edges(v, _pixel_centres(far, W))
            crossing = (ea >= 0) & (eb < 0)
            s_all = torch.where(crossing, ea / (ea - eb).clamp_min(1e-12), torch.full_like(ea, 2.0))
            s = s_all.min(-1).values
            ok = s <= 1.0
            near, far, s = near[ok], far[ok], s[ok]
            ca, cb = flat[c][near], flat[c][far]
            into_far = (s - 0.5).clamp_min(0.0)[:, None]
            into_near = (0.5 - s).clamp_min(0.0)[:, None]
            acc = acc.index_add(0, far, into_far * (ca - cb)).index_add(0, near, into_near * (cb - ca))
        outs.append(flat[c] + acc)
    return torch.stack(outs).reshape(C, H, W, D)


@dataclass
class MeshRender:
    """Rendered images: ``rgb`` float [C,H,W,3] over the background, ``alpha`` float
    [C,H,W,1] (0 or 1), ``depth`` float [C,H,W,1] (differentiable w.r.t. the vertices when they
    require grad, :func:`camera_depth`), and the :class:`Rasterization`."""

    rgb: torch.Tensor
    alpha: torch.Tensor
    depth: torch.Tensor
    rast: Rasterization


def render_mesh(mesh: TexturedMesh, cameras: Cameras, background=1.0, backend: str = "auto",
                texture_filter: str = "linear", antialiased: bool = False) -> MeshRender:
    """Render a mesh's base colour (texture, else vertex colours, else grey), unlit.

    Args:
        mesh: the mesh; differentiable w.r.t. ``mesh.texture`` and ``mesh.vertex_colors``.
        cameras: C cameras.
        background: RGB in [0, 1] (float, (3,) or tensor [C, 3]).
        backend: see :func:`rasterize`.
        texture_filter: ``"linear"`` (bilinear) or ``"linear-mipmap-linear"`` (trilinear,
            :func:`sample_texture_mipmap`).
        antialiased: blend silhouette edges (:func:`antialias`) so that ``rgb`` and ``alpha``
            (then fractional at the edges) carry gradients to ``mesh.vertices`` where the
            silhouette moves; inside faces the barycentrics carry them (:func:`rasterize`).
    Raises:
        ValueError: an unknown ``texture_filter``.
    """
    if texture_filter not in ("linear", "linear-mipmap-linear"):
        raise ValueError(f"unknown texture filter {texture_filter!r}; use linear or linear-mipmap-linear")
    rast = rasterize(mesh.vertices, mesh.faces, cameras, backend=backend)
    if mesh.texture is not None and mesh.uv is not None:
        uv = interpolate(mesh.uv, mesh.faces, rast)
        if texture_filter == "linear":
            color = sample_texture(mesh.texture, uv)
        else:
            color = sample_texture_mipmap(mesh.texture, uv, uv_footprint(uv, rast.mask, tuple(mesh.texture.shape[:2])))
    elif mesh.vertex_colors is not None:
        color = interpolate(mesh.vertex_colors, mesh.faces, rast)
    else:
        color = torch.full((*rast.tri_id.shape, 3), 0.7, device=mesh.vertices.device)
    alpha = rast.mask[..., None].float()
    bg = torch.as_tensor(background, dtype=torch.float32, device=color.device)
    bg = bg.reshape(-1, 3) if bg.numel() >= 3 else bg.reshape(1, 1).expand(1, 3)
    rgb = color * alpha + (1.0 - alpha) * bg.expand(color.shape[0], 3)[:, None, None, :]
    if antialiased:
        both = antialias(torch.cat([rgb, alpha], -1), rast, mesh.vertices, mesh.faces, cameras)
        rgb, alpha = both[..., :3], both[..., 3:]
    depth = rast.depth[..., None]
    if mesh.vertices.requires_grad:
        depth = camera_depth(mesh.vertices, mesh.faces, cameras, rast)
    return MeshRender(rgb, alpha, depth, rast)


def perturbed_normals(normal_map: torch.Tensor, uv: torch.Tensor, normal: torch.Tensor, tangent: torch.Tensor,
                      sign: torch.Tensor) -> torch.Tensor:
    """The shading normals a tangent-space normal map gives (glTF 2.0 section 3.9.3; what
    Blender's Normal Map node computes): n = normalize(x T + y B + z N), B = sign cross(N, T),
    (x, y, z) = 2 map - 1.

    Args:
        normal_map: float [S, S, 3] in [0, 1], row 0 at the top.
        uv: float [..., 2] (origin bottom-left); normal, tangent: float [..., 3] (interpolated,
            not necessarily unit); sign: float [...] (+1 or -1).
    Returns:
        unit float [..., 3].
    """
    n = F.normalize(normal, dim=-1)
    t = F.normalize(tangent - n * (tangent * n).sum(-1, keepdim=True), dim=-1)
    b = torch.linalg.cross(n, t) * sign[..., None]
    local = sample_texture(normal_map, uv) * 2.0 - 1.0
    return F.normalize(local[..., :1] * t + local[..., 1:2] * b + local[..., 2:] * n, dim=-1)


#: Two directional lights (unit vectors towards them, world) and their weights, and the ambient
#: term of :func:`render_shaded`: a key light from the upper front right and a fill from the left.
SHADING_LIGHTS = ((F.normalize(torch.tensor([0.5, 0.8, 0.6]), dim=0), 0.65),
                  (F.normalize(torch.tensor([-0.7, 0.2, -0.3]), dim=0), 0.25))
SHADING_AMBIENT = 0.1


def render_shaded(vertices: torch.Tensor, faces: torch.Tensor, normals: torch.Tensor, cameras: Cameras,
                  background: float = 1.0, uv: torch.Tensor | None = None, tangents: torch.Tensor | None = None,
                  normal_map: torch.Tensor | None = None) -> torch.Tensor:
    """A grey Lambertian render under :data:`SHADING_LIGHTS`, for comparing surfaces' shading
    (a normal map against the geometry it stands for).

    Args:
        vertices: float [V, 3]; faces: int [F, 3]; normals: float [V, 3] (smooth shading).
        cameras: C cameras.
        uv: float [V, 2], tangents: float [V, 4] (xyz, sign) and normal_map float [S, S, 3]: with
            all three, the normals are :func:`perturbed_normals`.
    Returns:
        float [C, H, W, 3] in [0, 1] over ``background``.
    """
    rast = rasterize(vertices, faces, cameras)
    n = interpolate(normals, faces, rast)
    if normal_map is not None:
        sign = interpolate(tangents[:, 3:], faces, rast)[..., 0].sign()
        n = perturbed_normals(normal_map, interpolate(uv, faces, rast), n, interpolate(tangents[:, :3], faces, rast), sign)
    else:
        n = F.normalize(n, dim=-1)
    shade = torch.full(n.shape[:-1], SHADING_AMBIENT, device=n.device)
    for direction, weight in SHADING_LIGHTS:
        shade = shade + weight * (n * direction.to(n.device)).sum(-1).clamp_min(0.0)
    alpha = rast.mask.float()
    return (shade * alpha + (1.0 - alpha) * background)[..., None].expand(*shade.shape, 3).clamp(0, 1)


def camera_depth(vertices: torch.Tensor, faces: torch.Tensor, cameras: Cameras, rast: Rasterization) -> torch.Tensor:
    """Camera-space depth float [C, H, W, 1] (metres, 0 where empty), interpolated from the
    corners' depths with ``rast``'s perspective-correct barycentrics: differentiable w.r.t.
    ``vertices`` [V, 3] (``rast.depth`` is not)."""
    cams = cameras.to(vertices.device)
    out = []
    for c in range(len(cams)):
        _, z = _project(vertices, cams.viewmats[c], cams.Ks[c])
        one = Rasterization(rast.tri_id[c:c + 1], rast.bary[c:c + 1], rast.depth[c:c + 1])
        out.append(interpolate(z[:, None], faces, one))
    return torch.cat(out)
