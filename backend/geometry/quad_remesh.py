"""Quad remeshing with Instant Meshes (Jakob, Tarini, Panozzo, Sorkine-Hornung 2015, "Instant
Field-Aligned Meshes", SIGGRAPH Asia; BSD licence) through ``pynanoinstantmeshes``, the nanobind
binding on PyPI (BSD; the only Instant Meshes binding with wheels for this project's Python, and
it exposes the pure-quad mode artists ask for: ``posy=4`` extracts a quad-dominant mesh and
subdivides it once into pure quads).

Instant Meshes prints its progress to the process's standard output; :func:`remesh_quads`
silences it at the file-descriptor level, so a server's terminal and logs stay clean.
"""
from __future__ import annotations

import contextlib
import os
import sys

import numpy as np


class RemeshError(RuntimeError):
    """Instant Meshes gave no usable quad mesh (the input is empty or degenerate)."""


@contextlib.contextmanager
def _silenced_stdout():
    """Send file descriptor 1 to /dev/null while the block runs (C++ code writes there directly)."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 1)
            yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def remesh_quads(vertices: np.ndarray, faces: np.ndarray, target_faces: int, deterministic: bool = True
                 ) -> tuple[np.ndarray, np.ndarray]:
    """A pure-quad remesh of a triangle surface.

    Args:
        vertices: float [V, 3]; faces: int [F, 3] (a closed or open manifold surface).
        target_faces: about how many quads the result should have (Instant Meshes reaches it
            within some tens of percent).
        deterministic: Instant Meshes' deterministic mode (the same input gives the same quads).
    Returns:
        (vertices float32 [Vq, 3], quads int64 [Q, 4], counter-clockwise seen from outside as the
        input's triangles are).
    Raises:
        RemeshError: no quads came back.
    """
    import pynanoinstantmeshes

    # The pure-quad mode subdivides the extracted quad-dominant mesh once (4 quads per face), so
    # it is asked for a quarter of the target; its vertex and face counts of a quad mesh agree.
    goal = max(int(target_faces) // 4, 8)
    with _silenced_stdout():
        qv, qf = pynanoinstantmeshes.remesh(np.ascontiguousarray(vertices, np.float32),
                                            np.ascontiguousarray(faces, np.uint32), goal, rosy=4, posy=4,
                                            deterministic=deterministic)
    qv, qf = np.array(qv, np.float32), np.array(qf, np.int64)
    if qf.ndim != 2 or qf.shape[1] != 4 or len(qf) == 0:
        raise RemeshError("Instant Meshes returned no quads for this surface; try remesh=none or more faces")
    return qv, qf


def triangulate_quads(quads: np.ndarray) -> np.ndarray:
    """Quads int [Q, 4] -> triangles int [2Q, 3]: quad i is triangles 2i = (a, b, c) and
    2i + 1 = (a, c, d) (same winding)."""
    q = np.asarray(quads, np.int64)
    return np.stack([q[:, [0, 1, 2]], q[:, [0, 2, 3]]], 1).reshape(-1, 3)


def quads_on_split_vertices(split_faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The polygons of a triangulated quad mesh (:func:`triangulate_quads` order) after its
    vertices were split along UV seams: a quad whose two triangles share their diagonal's split
    vertices stays a quad, one cut by a seam through its diagonal becomes its two triangles.

    Args:
        split_faces: int [2Q, 3] (the unwrapped mesh's faces, in the same order).
    Returns:
        (polygons int32 [sum of sizes], the corners of every polygon in order; sizes int32 [P],
        4 or 3).
    """
    f = np.asarray(split_faces, np.int64).reshape(-1, 2, 3)
    first, second = f[:, 0], f[:, 1]
    whole = (first[:, 0] == second[:, 0]) & (first[:, 2] == second[:, 1])
    quads = np.concatenate([first, second[:, 2:], np.full((len(f), 2), -1)], 1)  # (a, b, c, d, -, -)
    rows = np.where(whole[:, None], quads, np.concatenate([first, second], 1))
    sizes = np.where(whole[:, None], [[4, -1]], [[3, 3]])
    polygons = rows.ravel()
    return polygons[polygons >= 0].astype(np.int32), sizes.ravel()[sizes.ravel() > 0].astype(np.int32)


def keep_quads_whole(uvm, size: int):
    """Undo the UV seams xatlas cut through quads' diagonals, where the atlas has room.

    xatlas unwraps triangles, so it may cut a quad's two triangles (:func:`triangulate_quads`)
    into different charts, and such a quad can only reach the client as two triangles. Here each
    cut quad's second triangle is moved into the first one's chart (or, failing that, the first
    into the second's): the moved corner gets a new UV from the staying triangle's affine map of
    the surface (its barycentric coordinates in that triangle's plane), as a new vertex split
    from its own. A move is kept when the moved triangle keeps the chart's winding and covers no
    texel of another triangle at the atlas's ``size`` (the charts' padding usually has room:
    measured on a remeshed noisy sphere, 49 of 49 moves at 610 quads and 724 of 732 at 5,139).

    Args:
        uvm: the unwrapped triangulated quad mesh (:class:`~backend.geometry.uv.UVMesh`, faces in
            :func:`triangulate_quads` order).
        size: the texture side the atlas is packed for, texels.
    Returns:
        a :class:`~backend.geometry.uv.UVMesh` with the same faces' order (some corners moved to
        new vertices appended at the end).
    """
    import torch
    import trimesh

    from ..render.mesh import rasterize_uv
    from .uv import UVMesh

    sv, suv, vmap = uvm.vertices, uvm.uv, uvm.vmapping
    f = np.asarray(uvm.faces, np.int64).reshape(-1, 2, 3).copy()
    cut = ~((f[:, 0, 0] == f[:, 1, 0]) & (f[:, 0, 2] == f[:, 1, 1]))
    new_pos, new_uv, new_map, moved = [], [], [], []
    count = len(sv)

    def winding(p, q, r):
        return np.sign((q[:, 0] - p[:, 0]) * (r[:, 1] - p[:, 1]) - (q[:, 1] - p[:, 1]) * (r[:, 0] - p[:, 0]))

    for move in (1, 0):  # 1: the second triangle into the first's chart; 0: the first into the second's
        idx = np.nonzero(cut)[0]
        if not len(idx):
            break
        stay = f[idx, 1 - move]
        other = f[idx, 1, 2] if move else f[idx, 0, 1]  # the corner only the moving triangle has: d, or b
        with np.errstate(all="ignore"):
            bary = trimesh.triangles.points_to_barycentric(sv[stay].astype(np.float64), sv[other].astype(np.float64))
        uv = (suv[stay] * bary[..., None]).sum(1)
        a, b_or_c, c_or_d = suv[stay[:, 0]], suv[stay[:, 1]], suv[stay[:, 2]]
        if move:  # staying (A, B, C), moved (A, C, d'')
            ok = winding(a, c_or_d, uv) == winding(a, b_or_c, c_or_d)
        else:  # staying (A', C', D'), moved (A', b'', C')
            ok = winding(a, uv, b_or_c) == winding(a, b_or_c, c_or_d)
        ok &= np.isfinite(uv).all(1)
        idx, uv, other, stay = idx[ok], uv[ok], other[ok], stay[ok]
        new = count + np.arange(len(idx))
        count += len(idx)
        new_pos.append(sv[other])
        new_uv.append(uv.astype(np.float32))
        new_map.append(vmap[other])
        if move:
            f[idx, 1] = np.stack([stay[:, 0], stay[:, 2], new], 1)
        else:
            f[idx, 0] = np.stack([stay[:, 0], new, stay[:, 1]], 1)
        moved.append((idx, move))
        cut[idx] = False
    if not moved:
        return uvm
    vertices = np.concatenate([sv] + new_pos)
    uvs = np.concatenate([suv] + new_uv)
    faces = f.reshape(-1, 3)
    # keep a move only where the moved triangle lands on no other triangle's texels
    changed = np.concatenate([2 * idx + (1 if move else 0) for idx, move in moved])
    rest = np.setdiff1d(np.arange(len(faces)), changed)
    taken = rasterize_uv(torch.from_numpy(uvs[faces[rest]]), size).mask[0]
    landed = rasterize_uv(torch.from_numpy(uvs[faces[changed]]), size).tri_id[0]
    clash = torch.unique(landed[(landed >= 0) & taken]).numpy()
    if len(clash):
        bad = changed[clash]
        faces[bad] = np.asarray(uvm.faces, np.int64)[bad]  # those quads stay cut (two triangles)
    vmapping = np.concatenate([vmap] + new_map)
    used = np.zeros(len(vertices), bool)
    used[faces.ravel()] = True
    if not used.all():  # the new corners of undone moves: no loose vertices
        remap = np.cumsum(used) - 1
        vertices, uvs, vmapping, faces = vertices[used], uvs[used], vmapping[used], remap[faces]
    return UVMesh(vertices.astype(np.float32), faces, uvs.astype(np.float32), vmapping)
