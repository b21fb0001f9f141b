"""Parameters that every method fitting Gaussians to views with ``stages.reconstruction``
declares alike (``reconstruct``, ``im3d``): learning rates, pruning, mesh and texture. Each
method adds its own (steps, initialisation, losses, densification schedule)."""
from __future__ import annotations

from ..base import Param


def fit_params() -> dict[str, Param]:
    """The shared entries, a new dict each call (3DGS's learning rates; our mesh defaults)."""
    return {
        "sh_degree": Param("int", 0, "spherical-harmonics degree of the colour", min=0, max=3),
        "lr_scales": Param("float", 5e-3, "log-scale learning rate", min=0, max=1),
        "lr_quats": Param("float", 1e-3, "rotation learning rate", min=0, max=1),
        "lr_opacities": Param("float", 5e-2, "opacity learning rate", min=0, max=1),
        "lr_colors": Param("float", 1e-2, "colour learning rate", min=0, max=1),
        "densify_grad": Param("float", 2e-4, "image-plane gradient threshold (gsplat units)", min=0, max=1),
        "prune_opacity": Param("float", 0.01, "Gaussians below this opacity are pruned", min=0, max=1),
        "opacity_reset_every": Param("int", 0, "steps between opacity resets (0: never)", min=0, max=100_000),
        "mesh_resolution": Param("int", 128, "density grid resolution for marching cubes", min=16, max=512),
        "density_threshold": Param("float", 1.0, "iso-level of the density field", min=1e-4, max=100),
        "max_faces": Param("int", 50_000, "face budget of the mesh", min=100, max=1_000_000),
        "texture_size": Param("int", 1024, "texture side, texels", min=64, max=4096),
        "unwrap_time_limit": Param("float", 180.0, "seconds allowed for UV unwrapping", min=1, max=3600),
    }
